//! Transport security and agent identity, over real sockets on 127.0.0.1: a server
//! (`server::run_with`, in this process) with mutual TLS and join tokens, and test clients that
//! speak the session protocol themselves, through the agent's own endpoint code
//! (`warden_agent::tls`), with certificates made here.
//!
//! Refused: no client certificate, a certificate of another CA, an expired one, a plaintext
//! client, a Hello naming another agent than the certificate, a missing/unknown token, a
//! one-time token used by a second name. And a session admitted as A cannot report for B:
//! not B's tasks, not as B by a second Hello, not a probe result the server asked B for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};
use warden_agent::tls::{ClientTls, JoinToken};
use warden_client::Client;
use warden_core::controller::ControllerConfig;
use warden_proto::v1::agent_message::Msg;
use warden_proto::v1::agent_session_client::AgentSessionClient;
use warden_proto::v1::server_message::Msg as Smsg;
use warden_proto::v1::{self, AgentMessage, ServerMessage};
use warden_server::auth::{JoinTokens, ServerTls, SessionSecurity, add_join_token};
use warden_server::pki::{Ca, Issued, Validity};
use warden_server::revoke::{DenyList, pem_serial};
use warden_server::server::{self, Adapters};
use warden_server::sla::SlaConfig;

const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Certificates and the server.

struct Pki {
    ca: Ca,
    server: Issued,
}

fn pki() -> Pki {
    let ca = Ca::generate(Validity::days(30)).expect("CA");
    let server = ca
        .issue_server(&[], Validity::days(1))
        .expect("server cert");
    Pki { ca, server }
}

impl Pki {
    fn server_tls(&self) -> ServerTls {
        ServerTls::from_pem(
            self.server.cert_pem.clone(),
            self.server.key_pem.clone(),
            self.ca.cert_pem().to_string(),
        )
    }

    fn agent(&self, name: &str) -> ClientTls {
        self.agent_valid(name, Validity::days(1))
    }

    fn agent_valid(&self, name: &str, validity: Validity) -> ClientTls {
        let a = self.ca.issue_agent(name, validity).expect("agent cert");
        ClientTls::from_pem(self.ca.cert_pem().to_string(), a.cert_pem, a.key_pem)
    }
}

/// A server on 127.0.0.1:0, stopped when dropped.
struct TestServer {
    grpc: SocketAddr,
    http: Client,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(security: SessionSecurity, dir: tempfile::TempDir) -> TestServer {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let http_addr = http.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let store = Arc::new(warden_store::MemStore::new());
    tokio::spawn(server::run_with(
        store,
        ControllerConfig::default(),
        SlaConfig::default(),
        Adapters::default(),
        security,
        server::Protection::default(),
        grpc,
        http,
        cancel.clone(),
    ));
    TestServer {
        grpc: grpc_addr,
        http: Client::new(&format!("http://{http_addr}")).expect("client"),
        cancel,
        _dir: dir,
    }
}

impl TestServer {
    async fn get(&self, path: &str) -> Value {
        let c = self.http.clone();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || c.get(&path))
            .await
            .expect("join")
            .expect("GET")
    }

    async fn agent_names(&self) -> Vec<String> {
        self.get("/v1/agents")
            .await
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|a| a["name"].as_str().map(str::to_string))
            .collect()
    }

    async fn task(&self, id: &str) -> Value {
        self.get("/v1/tasks")
            .await
            .as_array()
            .expect("array")
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn submit(&self, toml: &str) {
        let c = self.http.clone();
        let body = toml.to_string();
        tokio::task::spawn_blocking(move || {
            c.request(
                "POST",
                "/v1/jobs",
                Some("application/toml"),
                body.as_bytes(),
            )?
            .json()
        })
        .await
        .expect("join")
        .expect("submit job");
    }

    fn endpoint(&self, tls: Option<&ClientTls>) -> Endpoint {
        warden_agent::tls::endpoint(&self.grpc.to_string(), tls).expect("endpoint")
    }
}

// ---------------------------------------------------------------------------------------------
// A test agent speaking the protocol.

struct Session {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<ServerMessage>,
    generation: u64,
    seq: u64,
    /// What this agent's heartbeats say it runs.
    running: Vec<v1::RunningTask>,
    /// Server messages read while waiting for something else.
    seen: Vec<Smsg>,
}

fn hello(name: &str, generation: u64) -> Msg {
    Msg::Hello(v1::Hello {
        name: name.into(),
        generation,
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
        protocol_max: 0,
        protocol_min: 0,
    })
}

/// Open a session as `name` through `endpoint`; `Ok` once the Welcome arrived.
async fn open(
    endpoint: Endpoint,
    token: Option<&str>,
    name: &str,
    generation: u64,
) -> Result<Session, Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let token = token.map(|t| JoinToken::new(t).expect("token"));
    let mut client = AgentSessionClient::with_interceptor(
        channel,
        warden_agent::tls::join_token(token.as_ref()),
    );
    let (tx, rx) = mpsc::channel(64);
    tx.send(AgentMessage {
        msg: Some(hello(name, generation)),
    })
    .await
    .expect("queue hello");
    let mut inbound = tokio::time::timeout(DEADLINE, client.session(ReceiverStream::new(rx)))
        .await
        .map_err(|_| Status::deadline_exceeded("no answer"))??
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no welcome"))??;
    match first.and_then(|m| m.msg) {
        Some(Smsg::Welcome(w)) => Ok(Session {
            tx,
            rx: inbound,
            generation: w.generation,
            seq: 0,
            running: Vec::new(),
            seen: Vec::new(),
        }),
        other => Err(Status::internal(format!(
            "expected a Welcome, got {other:?}"
        ))),
    }
}

impl Session {
    async fn send(&self, m: Msg) {
        self.tx
            .send(AgentMessage { msg: Some(m) })
            .await
            .expect("session open");
    }

    /// Send a heartbeat and wait for its ack: every message sent before it has been handled.
    async fn barrier(&mut self) {
        self.seq += 1;
        let seq = self.seq;
        self.send(Msg::Heartbeat(v1::Heartbeat {
            seq,
            signals: None,
            running: self.running.clone(),
            running_as_of: 0,
            ..Default::default()
        }))
        .await;
        self.wait_for(|m| matches!(m, Smsg::Ack(a) if a.seq == seq))
            .await;
    }

    /// Read server messages until one matches; returns it.
    async fn wait_for(&mut self, want: impl Fn(&Smsg) -> bool) -> Smsg {
        if let Some(i) = self.seen.iter().position(&want) {
            return self.seen.remove(i);
        }
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let m = tokio::time::timeout_at(until, self.rx.message())
                .await
                .expect("the awaited server message did not come in time")
                .expect("session broke")
                .and_then(|m| m.msg)
                .expect("session ended");
            if want(&m) {
                return m;
            }
            self.seen.push(m);
        }
    }
}

async fn poll<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `e` is the server refusing the TLS handshake: its alert `alert` when it reaches
/// the client; otherwise the connection failing under the client (the server's close can win
/// the race with its alert), which tonic reports with the transport error as the source —
/// unlike a refusal by the session service, a status the server sent.
fn refused_by_tls(e: &Status, alert: &str) -> bool {
    use std::error::Error;
    e.to_string().contains(alert) || e.source().is_some()
}

fn tls_only(p: &Pki) -> SessionSecurity {
    SessionSecurity {
        tls: Some(p.server_tls()),
        join_tokens: None,
        deny: None,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_of_our_ca_are_refused() {
    let p = pki();
    let s = start(tls_only(&p), tmp()).await;
    let ca = Certificate::from_pem(p.ca.cert_pem());

    // No client certificate at all.
    let bare = Endpoint::from_shared(format!("https://{}", s.grpc))
        .expect("uri")
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
        .expect("tls");
    let e = open(bare, None, "a", 0)
        .await
        .err()
        .expect("no certificate: refused");
    assert!(refused_by_tls(&e, "CertificateRequired"), "{e}");

    // A certificate for the right name from another CA.
    let other = pki();
    let foreign = other.ca.issue_agent("a", Validity::days(1)).expect("cert");
    let foreign = ClientTls::from_pem(
        p.ca.cert_pem().to_string(),
        foreign.cert_pem,
        foreign.key_pem,
    );
    let e = open(s.endpoint(Some(&foreign)), None, "a", 0)
        .await
        .err()
        .expect("another CA: refused");
    assert!(refused_by_tls(&e, "UnknownCA"), "{e}");

    // Our CA, but expired.
    let now = SystemTime::now();
    let expired = p.agent_valid(
        "a",
        Validity {
            not_before: now - Duration::from_secs(10 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        },
    );
    let e = open(s.endpoint(Some(&expired)), None, "a", 0)
        .await
        .err()
        .expect("expired: refused");
    assert!(refused_by_tls(&e, "CertificateExpired"), "{e}");

    // Plaintext to the TLS listener.
    let e = open(s.endpoint(None), None, "a", 0)
        .await
        .err()
        .expect("plaintext: refused");
    assert_ne!(e.code(), Code::Ok, "{e}");

    assert!(s.agent_names().await.is_empty(), "nobody was admitted");
    // The same listener admits a good certificate: the refusals above were about the
    // certificates, not a broken server.
    let good = open(s.endpoint(Some(&p.agent("a"))), None, "a", 0)
        .await
        .expect("a valid certificate is admitted");
    assert_eq!(good.generation, 1);
    assert_eq!(s.agent_names().await, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_a_cannot_open_a_session_as_b_nor_report_for_b() {
    let p = pki();
    let s = start(tls_only(&p), tmp()).await;
    let cert_a = p.agent("a");

    let e = open(s.endpoint(Some(&cert_a)), None, "b", 0)
        .await
        .err()
        .expect("a's certificate cannot be b");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("identifies agent a") && e.message().contains("\"b\""),
        "{e}"
    );

    // b joins with its own certificate and gets a singleton.
    let mut b = open(s.endpoint(Some(&p.agent("b"))), None, "b", 0)
        .await
        .expect("b joins");
    b.barrier().await;
    s.submit("name = \"j\"\nkind = \"singleton\"\ncommand = \"/bin/true\"\n")
        .await;
    let Smsg::Assign(assign) = b
        .wait_for(|m| matches!(m, Smsg::Assign(a) if a.task == "j/0"))
        .await
    else {
        unreachable!()
    };
    let epoch = assign.epoch;
    let report = |phase: v1::TaskPhase| {
        Msg::TaskReport(v1::TaskReport {
            version: 0,
            task: "j/0".into(),
            epoch,
            phase: phase as i32,
            exit_code: (phase == v1::TaskPhase::Failed).then_some(1),
            message: String::new(),
            healthy: true,
            endpoint: String::new(),
        })
    };
    b.running = vec![v1::RunningTask {
        version: 0,
        task: "j/0".into(),
        epoch,
        phase: v1::TaskPhase::Running as i32,
        restarts: 0,
        healthy: true,
        endpoint: String::new(),
        in_sync: Vec::new(),
        state_seq: 0,
        state_fence: 0,
        state_last_epoch: 0,
        lagging: Vec::new(),
        sealed: false,
    }];
    b.send(report(v1::TaskPhase::Running)).await;
    b.barrier().await;
    poll("j/0 running on b", || async {
        let t = s.task("j/0").await;
        t["state"] == "running" && t["agent"] == "b"
    })
    .await;

    // a, admitted as itself, says everything it can about b's task and as b.
    let mut a = open(s.endpoint(Some(&cert_a)), None, "a", 0)
        .await
        .expect("a joins as itself");
    a.send(report(v1::TaskPhase::Failed)).await;
    a.send(report(v1::TaskPhase::Stopped)).await;
    a.send(hello("b", b.generation)).await;
    a.send(Msg::Heartbeat(v1::Heartbeat {
        seq: 1_000,
        signals: None,
        running: vec![v1::RunningTask {
            version: 0,
            task: "j/0".into(),
            epoch,
            phase: v1::TaskPhase::Failed as i32,
            restarts: 9,
            healthy: false,
            endpoint: String::new(),
            in_sync: Vec::new(),
            state_seq: 0,
            state_fence: 0,
            state_last_epoch: 0,
            lagging: Vec::new(),
            sealed: false,
        }],
        running_as_of: 0,
        ..Default::default()
    }))
    .await;
    a.seq = 1_000;
    a.barrier().await; // everything above has been handled
    let t = s.task("j/0").await;
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["agent"], "b", "{t}");
    assert_eq!(t["epoch"], epoch, "{t}");
    assert_eq!(t["failures"], 0, "{t}");
    let mut names = s.agent_names().await;
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // The same report on b's own session is taken: the check above is not vacuous.
    b.send(report(v1::TaskPhase::Failed)).await;
    b.barrier().await;
    poll("b's own failure report to count", || async {
        let t = s.task("j/0").await;
        t["failures"].as_u64().unwrap_or(0) >= 1 || t["epoch"].as_u64() > Some(epoch)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_its_live_session_and_cannot_open_another() {
    let p = pki();
    let dir = tmp();
    let deny = dir.path().join("deny");
    std::fs::write(&deny, "# revoked agent certificates\n").expect("write");
    let s = start(
        SessionSecurity {
            tls: Some(p.server_tls()),
            join_tokens: None,
            deny: Some(DenyList::open(&deny).expect("deny list")),
        },
        dir,
    )
    .await;
    let issued = p.ca.issue_agent("a", Validity::days(1)).expect("cert");
    let serial = pem_serial(issued.cert_pem.as_bytes()).expect("serial");
    let a = ClientTls::from_pem(p.ca.cert_pem().to_string(), issued.cert_pem, issued.key_pem);
    let b = p.agent("b");
    let mut sa = open(s.endpoint(Some(&a)), None, "a", 0)
        .await
        .expect("a joins");
    let mut sb = open(s.endpoint(Some(&b)), None, "b", 0)
        .await
        .expect("b joins");
    sa.barrier().await;

    std::fs::write(&deny, format!("serial={}\n", serial.to_uppercase())).expect("revoke");
    let revoked_at = Instant::now();
    // a's stream ends (the server closed it); b's is untouched.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match sa.rx.message().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked certificate's session stayed open"
    );
    eprintln!(
        "revoked session closed {:?} after the file changed",
        revoked_at.elapsed()
    );
    sb.barrier().await;

    let e = open(s.endpoint(Some(&a)), None, "a", 1)
        .await
        .err()
        .expect("a revoked certificate: refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("revoked"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_required_checked_and_one_time_tokens_bind_to_one_name() {
    let p = pki();
    let dir = tmp();
    let file = dir.path().join("tokens");
    let many = add_join_token(&file, false).expect("token");
    let once = add_join_token(&file, true).expect("token");
    let tokens = JoinTokens::open(&file, &dir.path().join("bindings.json")).expect("tokens");
    let s = start(
        SessionSecurity {
            tls: Some(p.server_tls()),
            join_tokens: Some(tokens),
            deny: None,
        },
        dir,
    )
    .await;
    let (ca, cb) = (p.agent("a"), p.agent("b"));

    let e = open(s.endpoint(Some(&ca)), None, "a", 0)
        .await
        .err()
        .expect("no token: refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("join token is required"), "{e}");
    let e = open(s.endpoint(Some(&ca)), Some("wjt_not-a-token"), "a", 0)
        .await
        .err()
        .expect("unknown token: refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(
        !e.message().contains("wjt_"),
        "the token is not echoed: {e}"
    );
    assert!(s.agent_names().await.is_empty());

    // A stream without a token is refused before any Hello: it does not hold a session for
    // the Hello's timeout (that would end with DeadlineExceeded, "no Hello within 5s").
    let channel = s.endpoint(Some(&ca)).connect().await.expect("connect");
    let mut client = AgentSessionClient::new(channel);
    let (_silent, rx) = mpsc::channel::<AgentMessage>(1);
    let Err(e) = tokio::time::timeout(DEADLINE, client.session(ReceiverStream::new(rx)))
        .await
        .expect("an answer to a stream that never says Hello")
    else {
        panic!("a stream without a token was accepted");
    };
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("join token is required"), "{e}");

    // A one-time token: a uses it first; a may come back, b may not.
    let first = open(s.endpoint(Some(&ca)), Some(&once), "a", 0)
        .await
        .expect("a joins with the one-time token");
    let e = open(s.endpoint(Some(&cb)), Some(&once), "b", 0)
        .await
        .err()
        .expect("b cannot use a's one-time token");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("already used by another agent"), "{e}");
    // a reconnects (same generation) while its old stream lingers, then restarts.
    let again = open(s.endpoint(Some(&ca)), Some(&once), "a", first.generation)
        .await
        .expect("a reconnects with its one-time token");
    drop((first, again));
    let until = Instant::now() + DEADLINE;
    let restarted = loop {
        match open(s.endpoint(Some(&ca)), Some(&once), "a", 0).await {
            Ok(sess) => break sess.generation,
            // The old session's end may not have been noticed yet.
            Err(e) if e.code() == Code::AlreadyExists && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a restarting with its one-time token: {e}"),
        }
    };
    assert_eq!(restarted, 2);

    // A reusable token works for any name.
    open(s.endpoint(Some(&cb)), Some(&many), "b", 0)
        .await
        .expect("b joins with the reusable token");
    let mut names = s.agent_names().await;
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

/// Keeps a session alive in the background: heartbeats every 200 ms, and hands the probe
/// requests it gets to the test. Dropping it ends the session.
struct Driver {
    tx: mpsc::Sender<AgentMessage>,
    probes: mpsc::UnboundedReceiver<v1::ProbeRequest>,
    stop: CancellationToken,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn drive(mut s: Session) -> Driver {
    let (probes_tx, probes) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let tx = s.tx.clone();
    let cancel = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    s.seq += 1;
                    let hb = Msg::Heartbeat(v1::Heartbeat { seq: s.seq, signals: None, running: vec![], running_as_of: 0, ..Default::default() });
                    if s.tx.send(AgentMessage { msg: Some(hb) }).await.is_err() {
                        break;
                    }
                }
                m = s.rx.message() => match m {
                    Ok(Some(ServerMessage { msg: Some(Smsg::Probe(p)) })) => {
                        let _ = probes_tx.send(p);
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                },
            }
        }
    });
    Driver { tx, probes, stop }
}

async fn next_probe(d: &mut Driver) -> v1::ProbeRequest {
    tokio::time::timeout(DEADLINE, d.probes.recv())
        .await
        .expect("a probe request in time")
        .expect("session open")
}

/// `warden_probes_total{kind="indirect",result=...}` as the server's `/metrics` shows it.
async fn indirect_probes(s: &TestServer, result: &str) -> u64 {
    let c = s.http.clone();
    let text = tokio::task::spawn_blocking(move || c.request("GET", "/metrics", None, b""))
        .await
        .expect("join")
        .expect("GET /metrics")
        .body;
    text.lines()
        .filter(|l| {
            l.starts_with("warden_probes_total{")
                && l.contains("kind=\"indirect\"")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_result_counts_only_from_the_agent_that_was_asked() {
    let p = pki();
    let s = start(tls_only(&p), tmp()).await;
    let mut a = drive(
        open(s.endpoint(Some(&p.agent("a"))), None, "a", 0)
            .await
            .expect("a joins"),
    );
    let mut b = drive(
        open(s.endpoint(Some(&p.agent("b"))), None, "b", 0)
            .await
            .expect("b joins"),
    );
    let c = drive(
        open(s.endpoint(Some(&p.agent("c"))), None, "c", 0)
            .await
            .expect("c joins"),
    );
    poll("a, b and c healthy", || async {
        let agents = s.get("/v1/agents").await;
        agents
            .as_array()
            .is_some_and(|v| v.len() == 3 && v.iter().all(|x| x["state"] == "healthy"))
    })
    .await;
    // c's session ends: the server asks a and b to probe it.
    drop(c);
    let ask_a = next_probe(&mut a).await;
    let ask_b = next_probe(&mut b).await;
    assert_ne!(ask_a.request_id, ask_b.request_id);
    // a answers its own request, and b's too; b stays silent.
    for id in [ask_a.request_id, ask_b.request_id] {
        a.tx.send(AgentMessage {
            msg: Some(Msg::ProbeResult(v1::ProbeResult {
                request_id: id,
                outcome: v1::ProbeOutcome::Answered as i32,
            })),
        })
        .await
        .expect("a's session");
    }
    poll("the indirect probes of the round to be counted", || async {
        indirect_probes(&s, "answered").await + indirect_probes(&s, "timed_out").await >= 2
    })
    .await;
    assert_eq!(indirect_probes(&s, "answered").await, 1, "a vouched for b");
    assert_eq!(indirect_probes(&s, "timed_out").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_the_server_certificate_and_its_name() {
    let p = pki();
    let s = start(tls_only(&p), tmp()).await;
    let a = p.ca.issue_agent("a", Validity::days(1)).expect("cert");

    // An agent that trusts another CA does not talk to this server.
    let other = pki();
    let wrong_ca = ClientTls::from_pem(
        other.ca.cert_pem().to_string(),
        a.cert_pem.clone(),
        a.key_pem.clone(),
    );
    let e = open(s.endpoint(Some(&wrong_ca)), None, "a", 0)
        .await
        .err()
        .expect("untrusted server: no session");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // The server certificate is checked for the name the agent expects.
    let ours = ClientTls::from_pem(p.ca.cert_pem().to_string(), a.cert_pem, a.key_pem);
    let e = open(
        s.endpoint(Some(&ours.clone().with_server_name("elsewhere.example"))),
        None,
        "a",
        0,
    )
    .await
    .err()
    .expect("a name the certificate does not have: no session");
    assert!(e.to_string().contains("NotValidForName"), "{e}");
    open(
        s.endpoint(Some(&ours.with_server_name("localhost"))),
        None,
        "a",
        0,
    )
    .await
    .expect("localhost is in the server certificate");
    assert_eq!(s.agent_names().await, ["a"]);
}
