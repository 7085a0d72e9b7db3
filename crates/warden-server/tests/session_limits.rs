//! The session service's limits on a real server on `127.0.0.1:0`, spoken to by raw gRPC
//! sessions: the number of sessions, the per-session heartbeat rate, and the message size;
//! and what its Welcome hands an agent that judges its own signals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use warden_core::controller::ControllerConfig;
use warden_proto::v1::{self, agent_message, server_message};
use warden_server::limits::{LimitsConfig, SessionLimits};
use warden_server::server::{self, Adapters, Protection, ServerError};
use warden_server::sla::SlaConfig;
use warden_store::MemStore;

struct TestServer {
    grpc: SocketAddr,
    http: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    async fn start(sessions: SessionLimits) -> TestServer {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let (grpc_addr, http_addr) = (
            grpc.local_addr().expect("addr"),
            http.local_addr().expect("addr"),
        );
        let cancel = CancellationToken::new();
        let protection = Protection {
            limits: LimitsConfig {
                sessions,
                ..LimitsConfig::default()
            },
            api_auth: None,
        };
        let task = tokio::spawn(server::run_with(
            Arc::new(MemStore::new()),
            ControllerConfig::default(),
            SlaConfig::default(),
            Adapters::default(),
            warden_server::auth::SessionSecurity::default(),
            protection,
            grpc,
            http,
            cancel.clone(),
        ));
        TestServer {
            grpc: grpc_addr,
            http: http_addr,
            cancel,
            task: Some(task),
        }
    }

    /// `GET path`: the whole response, headers included.
    async fn get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(self.http).await.expect("connect HTTP");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        );
        stream.write_all(req.as_bytes()).await.expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    /// `GET /metrics`, one sample's value.
    async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Session {
    tx: mpsc::Sender<v1::AgentMessage>,
    inbound: Streaming<v1::ServerMessage>,
}

fn msg(m: agent_message::Msg) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

fn heartbeat(seq: u64) -> v1::AgentMessage {
    msg(agent_message::Msg::Heartbeat(v1::Heartbeat {
        seq,
        signals: None,
        running: vec![],
        running_as_of: 0,
        ..Default::default()
    }))
}

/// Open a session as `name` and wait for its Welcome (an agent of the release before the
/// protocol negotiation: its Hello declares no protocol revision).
async fn open(addr: SocketAddr, name: &str) -> Result<Session, tonic::Status> {
    open_speaking(addr, name, (0, 0)).await.map(|(s, _)| s)
}

/// Open a session as `name` declaring the protocol revisions `protocol`; returns the Welcome.
async fn open_speaking(
    addr: SocketAddr,
    name: &str,
    protocol: (u32, u32),
) -> Result<(Session, v1::Welcome), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = v1::agent_session_client::AgentSessionClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    tx.send(msg(agent_message::Msg::Hello(v1::Hello {
        name: name.into(),
        generation: 0,
        probe_addr: "127.0.0.1:9".into(),
        capacity: Some(v1::Resources {
            cpu_millis: 1000,
            memory_mb: 1024,
            memory_high_mb: 0,
        }),
        running: vec![],
        version: "test".into(),
        state_addr: String::new(),
        reattach_window_ms: 0,
        protocol_min: protocol.0,
        protocol_max: protocol.1,
    })))
    .await
    .expect("queue Hello");
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(v1::ServerMessage {
            msg: Some(server_message::Msg::Welcome(w)),
        }) => Ok((Session { tx, inbound }, w)),
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

/// Read acks until `window` has passed; returns their sequence numbers.
async fn acks_for(session: &mut Session, window: Duration) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + window;
    let mut seqs = vec![];
    while let Ok(Ok(Some(m))) = tokio::time::timeout_at(deadline, session.inbound.message()).await {
        if let Some(server_message::Msg::Ack(a)) = m.msg {
            seqs.push(a.seq);
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gets_the_anomaly_settings_and_its_verdicts_degrade_it() {
    let server = TestServer::start(SessionLimits::default()).await;
    let (mut s, welcome) = open_speaking(server.grpc, "judge", (0, 0))
        .await
        .expect("session");
    let settings: warden_core::anomaly::AnomalyConfig =
        serde_json::from_str(&welcome.anomaly_settings).expect("the Welcome's settings parse");
    assert_eq!(settings, warden_core::anomaly::AnomalyConfig::default());
    let judged = |seq: u64, anomalous: u32| {
        msg(agent_message::Msg::Heartbeat(v1::Heartbeat {
            seq,
            signals: Some(v1::Signals {
                latency_ms: Some(20.0),
                ..Default::default()
            }),
            judged: true,
            anomalous,
            ..Default::default()
        }))
    };
    let latency = warden_core::anomaly::SignalSet::EMPTY
        .with(warden_core::SignalKind::Latency)
        .bits();
    s.tx.send(judged(1, 0)).await.expect("send");
    s.tx.send(judged(2, latency)).await.expect("send");
    let acked = acks_for(&mut s, Duration::from_millis(500)).await;
    assert!(acked.contains(&2), "{acked:?}");
    // The agent's word, on a perfect score: degraded, for its latency.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = server.get("/v1/agents").await;
        if agents.contains("\"degraded\"") && agents.contains("\"latency\"") {
            assert!(
                agents.contains("\"signals_judged_by_agent\":true"),
                "{agents}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not degraded: {agents}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_limit_are_refused_until_one_closes() {
    let server = TestServer::start(SessionLimits {
        max_sessions: 2,
        ..SessionLimits::default()
    })
    .await;
    let a = open(server.grpc, "a").await.expect("first session");
    let _b = open(server.grpc, "b").await.expect("second session");
    let refused = match open(server.grpc, "c").await {
        Ok(_) => panic!("a third session was admitted"),
        Err(status) => status,
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("max_sessions"), "{refused}");

    // Closing a session frees its place.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(server.grpc, "c").await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("the freed place was not given to a new session: {s}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_storm_is_dropped_and_counted_without_hurting_a_calm_agent() {
    let limits = SessionLimits {
        heartbeat_rate: 10.0,
        heartbeat_burst: 20,
        ..SessionLimits::default()
    };
    let server = TestServer::start(limits).await;
    let mut storm = open(server.grpc, "storm").await.expect("storm session");
    let mut calm = open(server.grpc, "calm").await.expect("calm session");

    // The calm agent beats every 250 ms (4/s, under the limit) while the storm sends 400
    // heartbeats as fast as it can.
    let calm_tx = calm.tx.clone();
    let calm_beats = tokio::spawn(async move {
        for seq in 1..=8u64 {
            calm_tx.send(heartbeat(seq)).await.expect("calm send");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let started = Instant::now();
    for seq in 1..=400u64 {
        storm.tx.send(heartbeat(seq)).await.expect("storm send");
    }
    let storm_acks = acks_for(&mut storm, Duration::from_millis(2500)).await;
    let elapsed = started.elapsed().as_secs_f64();
    calm_beats.await.expect("calm beats");
    let calm_acks = acks_for(&mut calm, Duration::from_millis(500)).await;

    assert_eq!(
        calm_acks,
        (1..=8).collect::<Vec<_>>(),
        "every calm heartbeat is acked"
    );
    let allowed = 20.0 + 10.0 * elapsed + 2.0;
    assert!(
        !storm_acks.is_empty() && (storm_acks.len() as f64) <= allowed,
        "storm: {} acks in {elapsed:.2} s (at most {allowed:.0} allowed)",
        storm_acks.len()
    );
    let dropped = server.metric("warden_heartbeats_dropped_total").await;
    assert!(
        dropped >= (400 - storm_acks.len()) as f64 * 0.9,
        "dropped {dropped}, acked {}",
        storm_acks.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_messages_beyond_their_rate_are_paced_not_dropped() {
    let server = TestServer::start(SessionLimits {
        message_rate: 20.0,
        message_burst: 10,
        ..SessionLimits::default()
    })
    .await;
    let mut chatty = open(server.grpc, "chatty").await.expect("session");
    let started = Instant::now();
    for _ in 0..50 {
        chatty
            .tx
            .send(msg(agent_message::Msg::ProbeResult(
                v1::ProbeResult::default(),
            )))
            .await
            .expect("send");
    }
    // A heartbeat behind them is handled once they all were: the session paced them and
    // is still open.
    chatty.tx.send(heartbeat(1)).await.expect("send");
    let ack = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match chatty.inbound.message().await {
                Ok(Some(v1::ServerMessage {
                    msg: Some(server_message::Msg::Ack(a)),
                })) => return Some(a.seq),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("no ack within 20 s");
    assert_eq!(ack, Some(1), "the heartbeat behind the paced messages");
    // 40 messages beyond the burst at 20/s take about 2 s: a lower bound, not a timing goal.
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    let paced = server.metric("warden_session_messages_paced_total").await;
    assert!(paced >= 30.0, "paced {paced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_only_its_own_session() {
    let server = TestServer::start(SessionLimits {
        max_message_bytes: 4096,
        ..SessionLimits::default()
    })
    .await;
    let mut big = open(server.grpc, "big").await.expect("session");
    let mut fine = open(server.grpc, "fine").await.expect("session");
    let huge = msg(agent_message::Msg::Heartbeat(v1::Heartbeat {
        seq: 1,
        signals: None,
        running: vec![v1::RunningTask {
            task: "x".repeat(8192),
            ..Default::default()
        }],
        running_as_of: 0,
        ..Default::default()
    }));
    big.tx.send(huge).await.expect("send");
    // The server drops the session: its stream to the agent ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = big.inbound.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the oversized session was not closed");
    // The other session is untouched.
    fine.tx.send(heartbeat(1)).await.expect("send");
    let acks = acks_for(&mut fine, Duration::from_secs(2)).await;
    assert_eq!(acks, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_old_and_new_are_welcomed_and_one_with_no_revision_in_common_is_refused() {
    let server = TestServer::start(SessionLimits::default()).await;
    // An agent of the previous release (no revisions declared) and a current one.
    let (_old, w) = open_speaking(server.grpc, "old", (0, 0))
        .await
        .expect("old agent");
    assert_eq!(
        (w.protocol_min, w.protocol_max),
        (warden_proto::PROTOCOL_OLDEST, warden_proto::PROTOCOL_NEWEST),
        "the Welcome names the server's revisions"
    );
    let now = (warden_proto::PROTOCOL_OLDEST, warden_proto::PROTOCOL_NEWEST);
    let (_new, _) = open_speaking(server.grpc, "new", now)
        .await
        .expect("current agent");
    // A newer agent that still speaks this server's newest revision is welcomed too.
    let later = (
        warden_proto::PROTOCOL_NEWEST,
        warden_proto::PROTOCOL_NEWEST + 3,
    );
    let (_later, _) = open_speaking(server.grpc, "later", later)
        .await
        .expect("newer agent");
    // One from far in the future is refused, naming both ranges.
    let future = (
        warden_proto::PROTOCOL_NEWEST + 5,
        warden_proto::PROTOCOL_NEWEST + 6,
    );
    let Err(refused) = open_speaking(server.grpc, "future", future).await else {
        panic!("an agent with no revision in common was welcomed");
    };
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let m = refused.message();
    assert!(m.contains("agent \"future\""), "{m}");
    assert!(
        m.contains(&format!("{}-{}", future.0, future.1))
            && m.contains(&format!("{}-{}", now.0, now.1)),
        "{m}"
    );
}
