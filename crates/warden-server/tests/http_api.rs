//! The REST API over real HTTP: a fake in-memory control plane behind `warden_server::http`,
//! served on `127.0.0.1:0`, spoken to by a small HTTP/1.1 client written here (so the tests can
//! also send what no well-behaved client library would: bad bytes, lying headers, huge bodies).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warden_core::{JobSpec, Signals};
use warden_server::api_auth::{AccessPolicy, ApiAuth, Role, TokenEntry, TokenSet, hash_token};
use warden_server::http::{self, HttpConfig, Limits, MAX_BODY_BYTES};
use warden_server::limits::JobLimits;
use warden_server::view::{
    AgentInfo, ApiError, ApiErrorKind, ControlApi, EventInfo, HealthInfo, JobInfo, RecoveryInfo,
    SubmitOutcome, TaskInfo,
};

// ---------------------------------------------------------------------------------------------
// The fake control plane.

#[derive(Default)]
struct FakeState {
    agents: Vec<AgentInfo>,
    tasks: Vec<TaskInfo>,
    jobs: BTreeMap<String, JobSpec>,
    events: Vec<EventInfo>,
    recoveries: Vec<RecoveryInfo>,
    /// Every `submit_job` call that reached the fake.
    submit_calls: usize,
    /// How long a submit takes before it is stored (a real one writes the store).
    submit_delay: Option<Duration>,
    /// The mass-failure brake.
    brake_engaged: bool,
    /// When set, every fallible call fails with it.
    fail_with: Option<ApiError>,
    /// When set, `jobs()` blocks until a message arrives (or the sender is dropped).
    jobs_gate: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
}

#[derive(Default)]
struct Fake {
    state: Mutex<FakeState>,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self) -> Result<(), ApiError> {
        match &self.lock().fail_with {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl ControlApi for Fake {
    fn release_brake(&self) -> Result<bool, ApiError> {
        self.fail()?;
        Ok(std::mem::take(&mut self.lock().brake_engaged))
    }

    fn promote(&self, job: &str) -> Result<warden_server::view::SwitchoverInfo, ApiError> {
        self.fail()?;
        Ok(warden_server::view::SwitchoverInfo {
            job: job.to_string(),
            to: format!("{job}/1"),
        })
    }

    fn metrics(&self) -> String {
        "# TYPE fake_up gauge\nfake_up 1\n".to_string()
    }

    fn agents(&self) -> Vec<AgentInfo> {
        self.lock().agents.clone()
    }

    fn tasks(&self) -> Vec<TaskInfo> {
        self.lock().tasks.clone()
    }

    fn jobs(&self) -> Result<Vec<JobInfo>, ApiError> {
        let gate = self.lock().jobs_gate.clone();
        if let Some(gate) = gate {
            let rx = gate.lock().unwrap_or_else(|p| p.into_inner());
            let _ = rx.recv();
        }
        self.fail()?;
        Ok(self
            .lock()
            .jobs
            .values()
            .map(|spec| JobInfo {
                spec: spec.clone(),
                desired: spec.desired_count(),
                running: 0,
            })
            .collect())
    }

    fn submit_job(&self, spec: JobSpec) -> Result<(SubmitOutcome, Option<u64>), ApiError> {
        let delay = self.lock().submit_delay;
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut state = self.lock();
        state.submit_calls += 1;
        if let Some(e) = &state.fail_with {
            return Err(e.clone());
        }
        let name = spec.name.to_string();
        let outcome = match state.jobs.get(&name) {
            None => SubmitOutcome::Created,
            Some(old) if *old == spec => SubmitOutcome::Unchanged,
            Some(_) => SubmitOutcome::Updated,
        };
        state.jobs.insert(name, spec);
        Ok((outcome, None))
    }

    fn delete_job(&self, name: &str) -> Result<(), ApiError> {
        self.fail()?;
        match self.lock().jobs.remove(name) {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                ApiErrorKind::NotFound,
                format!("no job named {name:?}"),
            )),
        }
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventInfo>, ApiError> {
        self.fail()?;
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect())
    }

    fn recoveries(&self) -> Result<Vec<RecoveryInfo>, ApiError> {
        self.fail()?;
        Ok(self.lock().recoveries.clone())
    }

    fn health(&self) -> HealthInfo {
        HealthInfo {
            status: "ok".into(),
            sessions: self.lock().agents.len(),
            brake_engaged: false,
        }
    }
}

fn agent(name: &str, generation: u64, state: &str) -> AgentInfo {
    AgentInfo {
        name: name.into(),
        generation,
        state: state.into(),
        health_score: 97.5,
        last_heartbeat_ms_ago: Some(120),
        phi: 0.4,
        state_ms: 60_000,
        probe_addr: "10.0.0.7:7071".into(),
        signals: Signals {
            cpu: Some(0.25),
            ..Signals::default()
        },
        anomalies: vec![],
        signals_judged_by_agent: true,
        tasks: vec!["web/0".into()],
        cordoned: false,
    }
}

fn task(job: &str, index: u32, agent: Option<&str>, epoch: u64) -> TaskInfo {
    TaskInfo {
        id: format!("{job}/{index}"),
        job: job.into(),
        agent: agent.map(Into::into),
        generation: agent.map(|_| 3),
        state: if agent.is_some() {
            "running"
        } else {
            "pending"
        }
        .into(),
        epoch,
        failures: 0,
        replica: None,
        version: 0,
    }
}

fn event(seq: u64) -> EventInfo {
    EventInfo {
        seq,
        unix_ms: 1_700_000_000_000 + seq,
        kind: "agent_state".into(),
        agent: Some("node-a".into()),
        task: None,
        message: format!("event {seq}"),
        data: json!({ "n": seq }),
    }
}

fn recovery() -> RecoveryInfo {
    RecoveryInfo {
        op: "op-1".into(),
        task: "db/0".into(),
        epoch: 4,
        from: "node-a#3".into(),
        to: Some("node-b".into()),
        detected_at_unix_ms: 1_700_000_000_000,
        declared_failed_at_unix_ms: 1_700_000_001_000,
        replacement_ordered_at_unix_ms: 1_700_000_002_000,
        replacement_started_at_unix_ms: Some(1_700_000_002_100),
        replacement_healthy_at_unix_ms: Some(1_700_000_003_000),
        rto_ms: Some(3000),
        detection_ms: Some(900),
        confirmation_ms: 1000,
        fencing_wait_ms: 1000,
        start_up_ms: Some(1000),
        outcome: "succeeded".into(),
        cause: "heartbeats stopped".into(),
    }
}

fn populated() -> Arc<Fake> {
    let fake = Fake::default();
    {
        let mut s = fake.lock();
        s.agents = vec![agent("node-a", 3, "healthy"), agent("node-b", 1, "suspect")];
        s.tasks = vec![
            task("web", 0, Some("node-a"), 2),
            task("web", 1, None, 0),
            task("db", 0, Some("node-b"), 7),
        ];
        s.events = (1..=5).map(event).collect();
        s.recoveries = vec![recovery()];
    }
    Arc::new(fake)
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct Server {
    addr: SocketAddr,
    fake: Arc<Fake>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// `http::serve` with the default limits.
    async fn start(fake: Arc<Fake>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let api: Arc<dyn ControlApi> = fake.clone();
        let task = tokio::spawn(http::serve(listener, api, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            fake,
            shutdown: Some(tx),
            task,
        }
    }

    /// The router with custom limits, served by plain `axum::serve`.
    async fn start_with_limits(fake: Arc<Fake>, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = http::router_with_limits(fake.clone(), limits);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Server {
            addr,
            fake,
            shutdown: Some(tx),
            task,
        }
    }

    /// The router configured by `cfg`, served by plain `axum::serve`.
    async fn start_with_config(fake: Arc<Fake>, cfg: HttpConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = http::router_with_config(
            fake.clone(),
            cfg,
            Arc::new(warden_server::history::History::new()),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Server {
            addr,
            fake,
            shutdown: Some(tx),
            task,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        send(self.addr, "GET", path, &[], None).await
    }

    /// `method path` with `Authorization: auth` (when given) and a TOML body (when given).
    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut headers = vec![];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/toml"));
        }
        send(self.addr, method, path, &headers, body.map(str::as_bytes)).await
    }

    async fn post(&self, content_type: Option<&str>, body: &[u8]) -> Reply {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("Content-Type", ct)])
            .unwrap_or_default();
        send(self.addr, "POST", "/v1/jobs", &headers, Some(body)).await
    }

    async fn post_toml(&self, body: &str) -> Reply {
        self.post(Some("application/toml"), body.as_bytes()).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops after shutdown")
            .expect("server task");
        result.expect("serve returns Ok");
    }

    fn stored_jobs(&self) -> BTreeMap<String, JobSpec> {
        self.fake.lock().jobs.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client: one request per connection.

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of a {} is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Assert this is a JSON error with `status` and `code`; returns the error object.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error replies are JSON"
        );
        let body = self.json();
        let error = body["error"].clone();
        assert_eq!(error["code"], code, "{body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        error
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    exchange(addr, raw).await
}

/// Send `raw` and read the reply to the end. Writing runs beside reading: a server may answer
/// (and close) before it has read a large body, and the reply must still be seen.
async fn exchange(addr: SocketAddr, raw: Vec<u8>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&raw).await;
        // Keep the write half open until the reply is read: dropping it would half-close.
        wr
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A reset after the reply arrived (the server closed with our body unread).
                Err(e) if !buf.is_empty() => {
                    eprintln!("read ended with {e} after {} bytes", buf.len());
                    break;
                }
                Err(e) => panic!("read reply: {e}"),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no reply within 15 s");
    writer.abort();
    parse_reply(&buf)
}

fn parse_reply(buf: &[u8]) -> Reply {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&raw[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Job specs.

const WEB_TOML: &str = r#"
name = "web"
kind = "service"
replicas = 3
command = "/usr/bin/web-server"
args = ["--port", "8080"]

[env]
RUST_LOG = "info"

[resources]
cpu_millis = 500
memory_mb = 256

[health]
kind = "http"
port = 8080
path = "/healthz"
interval = "2s"
timeout = "500ms"
failures = 3
"#;

fn toml_with(extra_top: &str) -> String {
    format!("name = \"api\"\nkind = \"service\"\ncommand = \"/bin/api\"\n{extra_top}\n")
}

// ---------------------------------------------------------------------------------------------
// GET routes.

#[tokio::test]
async fn healthz_reports_the_fake() {
    let server = Server::start(populated()).await;
    let reply = server.get("/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "sessions": 2, "brake_engaged": false})
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = Server::start(populated()).await;
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        "# TYPE fake_up gauge\nfake_up 1\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn agents_are_listed_with_documented_fields() {
    let server = Server::start(populated()).await;
    let reply = server.get("/v1/agents").await;
    assert_eq!(reply.status, 200);
    let agents = reply.json();
    let agents = agents.as_array().expect("array");
    assert_eq!(agents.len(), 2);
    let a = &agents[0];
    assert_eq!(a["name"], "node-a");
    assert_eq!(a["generation"], 3);
    assert_eq!(a["state"], "healthy");
    assert_eq!(a["health_score"], 97.5);
    assert_eq!(a["last_heartbeat_ms_ago"], 120);
    assert_eq!(a["probe_addr"], "10.0.0.7:7071");
    assert_eq!(a["signals"]["cpu"], 0.25);
    assert_eq!(a["tasks"], json!(["web/0"]));
    assert_eq!(a["cordoned"], false);
    assert_eq!(agents[1]["state"], "suspect");
    server.stop().await;
}

#[tokio::test]
async fn tasks_are_listed_and_filtered_by_job() {
    let server = Server::start(populated()).await;
    let all = server.get("/v1/tasks").await;
    assert_eq!(all.status, 200);
    let all = all.json();
    assert_eq!(all.as_array().map(Vec::len), Some(3));
    let t = &all[0];
    assert_eq!(t["id"], "web/0");
    assert_eq!(t["job"], "web");
    assert_eq!(t["agent"], "node-a");
    assert_eq!(t["state"], "running");
    assert_eq!(t["epoch"], 2);
    assert_eq!(all[1]["agent"], Value::Null);

    let db = server.get("/v1/tasks?job=db").await.json();
    assert_eq!(db.as_array().map(Vec::len), Some(1));
    assert_eq!(db[0]["id"], "db/0");
    assert_eq!(db[0]["epoch"], 7);

    let none = server.get("/v1/tasks?job=nope").await.json();
    assert_eq!(none, json!([]));

    server
        .get("/v1/tasks?jbo=db")
        .await
        .assert_error(400, "invalid_query");
    server.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_and_fetched_by_name() {
    let server = Server::start(populated()).await;
    assert_eq!(server.get("/v1/jobs").await.json(), json!([]));
    assert_eq!(server.post_toml(WEB_TOML).await.status, 201);

    let jobs = server.get("/v1/jobs").await.json();
    assert_eq!(jobs.as_array().map(Vec::len), Some(1));
    assert_eq!(jobs[0]["desired"], 3);
    assert_eq!(jobs[0]["running"], 0);
    let spec = &jobs[0]["spec"];
    assert_eq!(spec["name"], "web");
    assert_eq!(spec["kind"], "service");
    assert_eq!(
        spec["resources"],
        json!({"cpu_millis": 500, "memory_mb": 256})
    );
    assert_eq!(spec["health"]["kind"], "http");
    assert_eq!(spec["health"]["timeout"], "500ms");

    let one = server.get("/v1/jobs/web").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), jobs[0]);

    server
        .get("/v1/jobs/nope")
        .await
        .assert_error(404, "not_found");
    server.stop().await;
}

#[tokio::test]
async fn events_honour_since_and_limit() {
    let server = Server::start(populated()).await;
    let seqs = |v: Value| -> Vec<u64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    };
    let all = server.get("/v1/events").await.json();
    assert_eq!(seqs(all.clone()), vec![1, 2, 3, 4, 5]);
    let e = &all[0];
    assert_eq!(e["unix_ms"], 1_700_000_000_001u64);
    assert_eq!(e["kind"], "agent_state");
    assert_eq!(e["agent"], "node-a");
    assert_eq!(e["message"], "event 1");
    assert_eq!(e["data"], json!({"n": 1}));

    assert_eq!(
        seqs(server.get("/v1/events?since=3").await.json()),
        vec![4, 5]
    );
    assert_eq!(
        seqs(server.get("/v1/events?since=1&limit=2").await.json()),
        vec![2, 3]
    );
    assert_eq!(
        seqs(server.get("/v1/events?since=5").await.json()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(server.get("/v1/events?limit=10000").await.json()).len(),
        5
    );

    for bad in [
        "/v1/events?since=abc",
        "/v1/events?since=-1",
        "/v1/events?since=99999999999999999999999",
        "/v1/events?limit=0",
        "/v1/events?limit=10001",
        "/v1/events?limit=",
        "/v1/events?sinse=3",
        "/v1/events?since=1&since=2",
    ] {
        let reply = server.get(bad).await;
        let error = reply.assert_error(400, "invalid_query");
        eprintln!("{bad}: {}", error["message"]);
    }
    server.stop().await;
}

#[tokio::test]
async fn recoveries_are_listed() {
    let server = Server::start(populated()).await;
    let reply = server.get("/v1/recoveries").await;
    assert_eq!(reply.status, 200);
    let r = reply.json();
    assert_eq!(r[0]["op"], "op-1");
    assert_eq!(r[0]["task"], "db/0");
    assert_eq!(r[0]["from"], "node-a#3");
    assert_eq!(r[0]["rto_ms"], 3000);
    assert_eq!(r[0]["outcome"], "succeeded");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Submitting and deleting jobs.

#[tokio::test]
async fn toml_submit_creates_then_is_unchanged_then_updated() {
    let server = Server::start(populated()).await;
    let created = server.post_toml(WEB_TOML).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.json(), json!({"job": "web", "outcome": "created"}));
    assert_eq!(created.header("location"), Some("/v1/jobs/web"));

    let again = server.post_toml(WEB_TOML).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), json!({"job": "web", "outcome": "unchanged"}));

    let changed = server
        .post_toml(&WEB_TOML.replace("replicas = 3", "replicas = 4"))
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json(), json!({"job": "web", "outcome": "updated"}));
    assert_eq!(server.stored_jobs()["web"].replicas, 4);

    // No Content-Type and text/plain are TOML too.
    let plain = server.post(None, toml_with("").as_bytes()).await;
    assert_eq!(plain.status, 201, "{:?}", plain.json());
    let text = server
        .post(
            Some("text/plain; charset=utf-8"),
            toml_with("replicas = 2").as_bytes(),
        )
        .await;
    assert_eq!(text.json()["outcome"], "updated");
    server.stop().await;
}

#[tokio::test]
async fn json_submit_works_and_round_trips() {
    let server = Server::start(populated()).await;
    let body = json!({
        "name": "db",
        "kind": "singleton",
        "command": "/usr/bin/postgres",
        "args": ["-D", "/var/lib/pg"],
        "env": {"PGPORT": "5432"},
        "resources": {"cpu_millis": 2000, "memory_mb": 4096},
        "health": {"kind": "tcp", "port": 5432, "interval": "1s", "timeout": "250ms"}
    });
    let reply = server
        .post(Some("application/json"), body.to_string().as_bytes())
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json(), json!({"job": "db", "outcome": "created"}));

    let stored = server.get("/v1/jobs/db").await.json();
    assert_eq!(stored["spec"]["replicas"], 1);
    assert_eq!(stored["spec"]["health"]["failures"], 3);
    // What GET returns can be submitted again as it is.
    let again = server
        .post(
            Some("application/json; charset=utf-8"),
            stored["spec"].to_string().as_bytes(),
        )
        .await;
    assert_eq!(again.json()["outcome"], "unchanged");
    server.stop().await;
}

#[tokio::test]
async fn malformed_toml_names_the_line() {
    let server = Server::start(populated()).await;
    let reply = server
        .post_toml("name = \"web\"\nkind = \"service\"\ncommand = \"/bin/x\nreplicas = 2\n")
        .await;
    let error = reply.assert_error(400, "malformed_body");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 3"), "{message}");

    let reply = server.post(Some("application/json"), b"{\"name\": ").await;
    let error = reply.assert_error(400, "malformed_body");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("line 1"),
        "{error}"
    );

    // Well-formed but not a job spec: a missing field, a wrong type, an unknown kind.
    for body in [
        "name = \"web\"\nkind = \"service\"\n",
        "name = \"web\"\nkind = \"service\"\ncommand = 7\n",
        "name = \"web\"\nkind = \"cronjob\"\ncommand = \"x\"\n",
    ] {
        server
            .post_toml(body)
            .await
            .assert_error(400, "malformed_body");
    }
    assert!(server.stored_jobs().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn unknown_field_is_named() {
    let server = Server::start(populated()).await;
    let reply = server.post_toml(&toml_with("colour = \"red\"")).await;
    let error = reply.assert_error(400, "unknown_field");
    assert_eq!(error["field"], "colour");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("colour") && message.contains("line 4"),
        "{message}"
    );

    let reply = server
        .post_toml(&toml_with("[resources]\ncpu_millis = 100\ngpus = 1"))
        .await;
    assert_eq!(reply.assert_error(400, "unknown_field")["field"], "gpus");

    let reply = server
        .post(
            Some("application/json"),
            br#"{"name": "api", "kind": "service", "command": "/bin/api", "replica": 2}"#,
        )
        .await;
    assert_eq!(reply.assert_error(400, "unknown_field")["field"], "replica");
    assert!(server.stored_jobs().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn impossible_specs_are_422_naming_the_field_and_store_nothing() {
    let server = Server::start(populated()).await;
    assert_eq!(server.post_toml(WEB_TOML).await.status, 201);
    let before = server.stored_jobs();
    let calls_before = server.fake.lock().submit_calls;

    let cases = [
        (
            "name = \"solo\"\nkind = \"singleton\"\nreplicas = 3\ncommand = \"/bin/x\"\n"
                .to_string(),
            "replicas",
        ),
        (
            WEB_TOML.replace("cpu_millis = 500", "cpu_millis = 5000000"),
            "resources.cpu_millis",
        ),
        (
            WEB_TOML.replace("memory_mb = 256", "memory_mb = 999999999999"),
            "resources.memory_mb",
        ),
        (
            WEB_TOML.replace("replicas = 3", "replicas = 1000000"),
            "replicas",
        ),
        (WEB_TOML.replace("replicas = 3", "replicas = 0"), "replicas"),
        (
            WEB_TOML.replace("name = \"web\"", "name = \"no spaces\""),
            "name",
        ),
        (
            WEB_TOML.replace("timeout = \"500ms\"", "timeout = \"5s\""),
            "health.timeout",
        ),
        (WEB_TOML.replace("RUST_LOG", "WARDEN_TASK_ID"), "env"),
        (WEB_TOML.replace("port = 8080", "port = 0"), "health.port"),
    ];
    for (body, field) in cases {
        let reply = server.post_toml(&body).await;
        let error = reply.assert_error(422, "invalid_job_spec");
        assert_eq!(error["field"], field, "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field),
            "{error}"
        );
    }
    assert_eq!(server.stored_jobs(), before, "nothing stored changed");
    assert_eq!(
        server.fake.lock().submit_calls,
        calls_before,
        "rejected before the control plane saw it"
    );
    server.stop().await;
}

#[tokio::test]
async fn control_plane_errors_map_to_statuses() {
    let server = Server::start(populated()).await;
    let cases = [
        (
            ApiErrorKind::Invalid,
            422,
            "invalid_request",
            "invalid_job_spec",
        ),
        (ApiErrorKind::NotFound, 404, "not_found", "not_found"),
        (ApiErrorKind::Conflict, 409, "conflict", "conflict"),
        (ApiErrorKind::Unavailable, 503, "unavailable", "unavailable"),
        (ApiErrorKind::Internal, 500, "internal", "internal"),
    ];
    for (kind, status, code, submit_code) in cases {
        server.fake.lock().fail_with = Some(ApiError::new(kind, "the fake says no"));
        for path in ["/v1/jobs", "/v1/events", "/v1/recoveries", "/v1/jobs/web"] {
            let error = server.get(path).await.assert_error(status, code);
            assert_eq!(error["message"], "the fake says no");
        }
        server
            .post_toml(WEB_TOML)
            .await
            .assert_error(status, submit_code);
        let reply = send(server.addr, "DELETE", "/v1/jobs/web", &[], None).await;
        reply.assert_error(status, code);
    }
    server.fake.lock().fail_with = None;
    assert!(server.stored_jobs().is_empty());
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn delete_removes_a_job_and_404s_an_unknown_one() {
    let server = Server::start(populated()).await;
    assert_eq!(server.post_toml(WEB_TOML).await.status, 201);
    let reply = send(server.addr, "DELETE", "/v1/jobs/web", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"job": "web", "outcome": "deleted"}));
    assert!(server.stored_jobs().is_empty());

    let reply = send(server.addr, "DELETE", "/v1/jobs/web", &[], None).await;
    reply.assert_error(404, "not_found");
    let reply = send(server.addr, "DELETE", "/v1/jobs/never-was", &[], None).await;
    reply.assert_error(404, "not_found");
    server.stop().await;
}

#[tokio::test]
async fn releasing_the_brake_says_whether_it_was_engaged() {
    let fake = populated();
    fake.lock().brake_engaged = true;
    let server = Server::start(fake).await;
    let reply = send(server.addr, "POST", "/v1/brake/release", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"was_engaged": true}));
    assert!(!server.fake.lock().brake_engaged);
    let reply = send(server.addr, "POST", "/v1/brake/release", &[], None).await;
    assert_eq!(reply.json(), json!({"was_engaged": false}));
    let reply = send(server.addr, "GET", "/v1/brake/release", &[], None).await;
    reply.assert_error(405, "method_not_allowed");
    server.stop().await;
}

#[tokio::test]
async fn unsupported_content_types_are_415() {
    let server = Server::start(populated()).await;
    for ct in [
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
        "multipart/form-data; boundary=x",
    ] {
        server
            .post(Some(ct), WEB_TOML.as_bytes())
            .await
            .assert_error(415, "unsupported_media_type");
    }
    assert!(server.stored_jobs().is_empty());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Body size.

#[tokio::test]
async fn body_over_one_mib_is_413() {
    // The job spec limit (64 KiB by default) raised to the body limit, so that the body limit
    // itself is what is tested here.
    let cfg = HttpConfig {
        jobs: JobLimits {
            max_spec_bytes: MAX_BODY_BYTES,
            ..JobLimits::default()
        },
        ..HttpConfig::default()
    };
    let server = Server::start_with_config(populated(), cfg).await;

    // Exactly at the limit: accepted (a valid spec padded with a comment).
    let spec = toml_with("");
    let padding = MAX_BODY_BYTES - spec.len() - 2;
    let at_limit = format!("{spec}#{}\n", "x".repeat(padding));
    assert_eq!(at_limit.len(), MAX_BODY_BYTES);
    assert_eq!(server.post_toml(&at_limit).await.status, 201);

    // One byte over, with Content-Length.
    let over = format!("{spec}#{}\n", "x".repeat(padding + 1));
    server
        .post_toml(&over)
        .await
        .assert_error(413, "payload_too_large");

    // Announced as huge and never sent: refused from the headers alone.
    let reply = send(
        server.addr,
        "POST",
        "/v1/jobs",
        &[
            ("Content-Type", "application/toml"),
            ("Content-Length", "1073741824"),
            ("Expect", "100-continue"),
        ],
        None,
    )
    .await;
    reply.assert_error(413, "payload_too_large");

    // Chunked, without a length: cut off once the limit is passed.
    let mut raw = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/toml\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    )
    .into_bytes();
    let chunk = vec![b'#'; 64 * 1024];
    for _ in 0..20 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    exchange(server.addr, raw)
        .await
        .assert_error(413, "payload_too_large");

    assert_eq!(server.stored_jobs().len(), 1);
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Routing.

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let server = Server::start(populated()).await;
    for path in [
        "/ui/nope",
        "/v1/nope",
        "/v1/jobs/web/extra",
        "/v2/agents",
        "/v1/agents/",
    ] {
        server.get(path).await.assert_error(404, "not_found");
    }
    let reply = send(server.addr, "PUT", "/v1/jobs", &[], Some(b"x")).await;
    reply.assert_error(405, "method_not_allowed");
    let allow = reply.header("allow").unwrap_or_default().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");

    let reply = send(server.addr, "POST", "/v1/agents", &[], Some(b"")).await;
    reply.assert_error(405, "method_not_allowed");
    let reply = send(server.addr, "DELETE", "/v1/jobs", &[], None).await;
    reply.assert_error(405, "method_not_allowed");
    let reply = send(server.addr, "PATCH", "/v1/jobs/web", &[], None).await;
    reply.assert_error(405, "method_not_allowed");

    // A name that percent-decodes to something that is not UTF-8.
    server
        .get("/v1/jobs/%FF%FE")
        .await
        .assert_error(400, "invalid_path");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The dashboard and the SLA report.

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A 200 HTML page; its text.
    fn html(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.text());
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/html"), "{ct}");
        self.text()
    }
}

#[tokio::test]
async fn dashboard_pages_render_the_view() {
    let server = Server::start(populated()).await;
    let fleet = server.get("/").await.html();
    for needle in [
        "<title>Fleet · Warden</title>",
        "data-agent=\"node-a\" data-state=\"healthy\"",
        "data-agent=\"node-b\" data-state=\"suspect\"",
        "href=\"/ui/agents/node-a\"",
        "97.5",
        "hx-trigger=\"every 2s\"",
        "/ui/assets/htmx.min.js",
    ] {
        assert!(
            fleet.contains(needle),
            "fleet page lacks {needle:?}:\n{fleet}"
        );
    }

    let page = server.get("/ui/agents/node-a").await.html();
    for needle in [
        "Agent node-a",
        "10.0.0.7:7071",
        "class=\"chart\"",
        "uPlot.iife.min.js",
        "web/0",
    ] {
        assert!(
            page.contains(needle),
            "agent page lacks {needle:?}:\n{page}"
        );
    }
    let missing = server.get("/ui/agents/nobody").await;
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("No agent named"));

    let sla = server.get("/ui/sla?since=1h&objective_rto=2s").await.html();
    for needle in [
        "recovery success rate",
        "Availability per job",
        "objective 2s",
        "Slowest recoveries",
    ] {
        assert!(sla.contains(needle), "SLA page lacks {needle:?}:\n{sla}");
    }
    let tasks = server.get("/ui/tasks").await.html();
    assert!(tasks.contains("db/0") && tasks.contains(">7<"), "{tasks}");
    let recoveries = server.get("/ui/recoveries").await.html();
    assert!(recoveries.contains("heartbeats stopped") && recoveries.contains("3.0 s"));
    let events = server.get("/ui/events").await.html();
    assert!(events.contains("event 5"));
    server.get("/ui/jobs").await.html();

    // Filters: by state, by name.
    let suspect = server.get("/?state=suspect").await.html();
    assert!(
        suspect.contains("data-agent=\"node-b\"") && !suspect.contains("data-agent=\"node-a\"")
    );
    assert!(
        suspect.contains("hx-get=\"/?state=suspect\""),
        "the refresh keeps the filter"
    );
    let named = server.get("/?q=de-a").await.html();
    assert!(named.contains("data-agent=\"node-a\"") && !named.contains("data-agent=\"node-b\""));
    let web = server.get("/ui/tasks?job=web").await.html();
    assert!(
        web.contains("web/1") && !web.contains("<td>db/0</td>"),
        "{web}"
    );

    // htmx polls get the live content only, not the whole page.
    let frag = send(server.addr, "GET", "/", &[("HX-Request", "true")], None).await;
    let frag = frag.html();
    assert!(frag.contains("node-a") && !frag.contains("<html"), "{frag}");

    // The vendored files are served from the binary.
    let js = server.get("/ui/assets/htmx.min.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap_or_default()
            .starts_with("text/javascript")
    );
    assert!(js.body.len() > 10_000);
    assert_eq!(server.get("/ui/assets/uPlot.iife.min.js").await.status, 200);
    server
        .get("/ui/assets/nope.js")
        .await
        .assert_error(404, "not_found");
    server.stop().await;
}

#[tokio::test]
async fn a_large_fleet_page_is_capped_problems_first() {
    let fake = Fake::default();
    {
        let mut s = fake.lock();
        s.agents = (0..600)
            .map(|i| {
                agent(
                    &format!("n{i:04}"),
                    1,
                    if i == 599 { "failed" } else { "healthy" },
                )
            })
            .collect();
    }
    let server = Server::start(Arc::new(fake)).await;
    let page = server.get("/").await.html();
    assert_eq!(
        page.matches("<tr class=\"state-").count(),
        http::dashboard::ROWS_SHOWN
    );
    assert!(
        page.contains("Showing 500 of 600 matching agents"),
        "{page}"
    );
    // The failed one comes first although its name sorts last.
    let first = page.find("data-agent=").expect("a row");
    assert!(page[first..].starts_with("data-agent=\"n0599\" data-state=\"failed\""));
    server.stop().await;
}

#[tokio::test]
async fn dashboard_escapes_hostile_names() {
    let fake = populated();
    let evil = "<script>alert('x')</script>\"&";
    {
        let mut s = fake.lock();
        let mut a = agent(evil, 1, "failed");
        a.anomalies = vec!["<img src=x onerror=alert(1)>".into()];
        a.tasks = vec![format!("{evil}/0")];
        s.agents.push(a);
        s.tasks.push(task(evil, 0, Some(evil), 1));
        let mut r = recovery();
        r.task = format!("{evil}/0");
        r.cause = evil.into();
        r.detected_at_unix_ms = now_ms() - 60_000;
        s.recoveries.push(r);
        let mut e = event(6);
        e.message = evil.into();
        s.events.push(e);
    }
    let server = Server::start(fake).await;
    let encoded = "%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%22%26";
    let pages = [
        "/".to_string(),
        format!("/ui/agents/{encoded}"),
        "/ui/tasks".into(),
        "/ui/events".into(),
        "/ui/recoveries".into(),
        "/ui/sla".into(),
    ];
    for path in &pages {
        let page = server.get(path).await.html();
        assert!(
            !page.contains("<script>alert"),
            "{path} shows raw markup:\n{page}"
        );
        assert!(!page.contains("<img src=x"), "{path} shows raw markup");
        assert!(
            page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"),
            "{path}:\n{page}"
        );
    }
    // The link to the agent page is URL-encoded as well.
    let fleet = server.get("/").await.html();
    assert!(fleet.contains("/ui/agents/%3Cscript%3E"), "{fleet}");
    server.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn sla_endpoint_reports_and_rejects_bad_windows() {
    let fake = populated();
    {
        let mut s = fake.lock();
        let mut r = recovery();
        r.detected_at_unix_ms = now_ms() - 60_000;
        r.replacement_healthy_at_unix_ms = Some(r.detected_at_unix_ms + 3_000);
        s.recoveries = vec![r];
    }
    let server = Server::start(fake).await;
    let v = server.get("/v1/sla?since=1h&objective_rto=2s").await.json();
    assert_eq!(v["window_ms"], 3_600_000);
    assert_eq!(v["objective_rto_ms"], 2_000);
    assert_eq!(v["succeeded"], 1);
    assert_eq!(v["success_rate"], 1.0);
    assert_eq!(v["rto"]["p99_ms"], 3_000);
    assert_eq!(v["rto"]["meets_objective"], false);
    assert_eq!(v["slowest"][0]["task"], "db/0");
    let v = server.get("/v1/sla").await.json();
    assert_eq!(v["window_ms"], 86_400_000, "the default window is 24h");
    assert_eq!(v["objective_rto_ms"], 5_000, "the default objective is 5s");
    for bad in [
        "since=7d",
        "since=0s",
        "since=yesterday",
        "objective_rto=-1s",
        "since=9000h",
        "window=1h",
    ] {
        let reply = server.get(&format!("/v1/sla?{bad}")).await;
        reply.assert_error(400, "invalid_query");
    }
    let reply = server.get("/v1/sla?since=7d").await.json();
    let msg = reply["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("since") && msg.contains("unknown unit"),
        "{reply}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile input.

#[tokio::test]
async fn hostile_inputs_are_4xx_and_the_server_keeps_serving() {
    let server = Server::start(populated()).await;
    let deep_json_array = format!(
        "{{\"name\": \"x\", \"kind\": \"service\", \"command\": \"x\", \"args\": {}{}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let deep_json_object = format!(
        "{{\"health\": {}1{}}}",
        "{\"kind\": ".repeat(50_000),
        "}".repeat(50_000)
    );
    let deep_toml_array = format!(
        "{}\nargs = {}{}\n",
        toml_with(""),
        "[".repeat(300_000),
        "]".repeat(300_000)
    );
    let deep_toml_table = format!(
        "{}\nenv = {}1{}\n",
        toml_with(""),
        "{a = ".repeat(100_000),
        "}".repeat(100_000)
    );
    let deep_toml_keys = format!("{}\n[{}]\n", toml_with(""), vec!["a"; 200_000].join("."));

    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "replicas beyond u32",
            None,
            toml_with("replicas = 4294967296").into_bytes(),
        ),
        (
            "replicas beyond i64",
            None,
            toml_with("replicas = 99999999999999999999999").into_bytes(),
        ),
        (
            "negative replicas",
            None,
            toml_with("replicas = -1").into_bytes(),
        ),
        (
            "float replicas",
            None,
            toml_with("replicas = 1e400").into_bytes(),
        ),
        (
            "huge replicas in JSON",
            Some("application/json"),
            br#"{"name":"a","kind":"service","command":"x","replicas":18446744073709551616}"#
                .to_vec(),
        ),
        (
            "raw NUL byte in TOML",
            None,
            b"name = \"a\0b\"\nkind = \"service\"\ncommand = \"x\"\n".to_vec(),
        ),
        (
            "escaped NUL in command",
            None,
            b"name = \"a\"\nkind = \"service\"\ncommand = \"/bin/x\\u0000y\"\n".to_vec(),
        ),
        (
            "escaped NUL in an arg (JSON)",
            Some("application/json"),
            br#"{"name":"a","kind":"service","command":"x","args":["a\u0000"]}"#.to_vec(),
        ),
        (
            "escaped NUL in an env value",
            None,
            toml_with("env = { A = \"x\\u0000\" }").into_bytes(),
        ),
        (
            "NUL in the name",
            Some("application/json"),
            br#"{"name":"a\u0000","kind":"service","command":"x"}"#.to_vec(),
        ),
        (
            "non-UTF-8 TOML",
            None,
            b"name = \"\xff\xfe\"\nkind = \"service\"\ncommand = \"x\"\n".to_vec(),
        ),
        (
            "non-UTF-8 JSON",
            Some("application/json"),
            b"{\"name\": \"\xc3\x28\"}".to_vec(),
        ),
        ("only garbage", None, vec![0xff; 4096]),
        ("empty TOML", None, Vec::new()),
        ("empty JSON", Some("application/json"), Vec::new()),
        (
            "JSON array",
            Some("application/json"),
            b"[1, 2, 3]".to_vec(),
        ),
        (
            "deeply nested JSON array",
            Some("application/json"),
            deep_json_array.into_bytes(),
        ),
        (
            "deeply nested JSON object",
            Some("application/json"),
            deep_json_object.into_bytes(),
        ),
        (
            "deeply nested TOML array",
            None,
            deep_toml_array.into_bytes(),
        ),
        (
            "deeply nested TOML inline table",
            None,
            deep_toml_table.into_bytes(),
        ),
        (
            "very long dotted TOML key",
            None,
            deep_toml_keys.into_bytes(),
        ),
        (
            "long name",
            None,
            format!(
                "name = \"{}\"\nkind = \"service\"\ncommand = \"x\"\n",
                "n".repeat(100_000)
            )
            .into_bytes(),
        ),
    ];
    for (what, content_type, body) in cases {
        let reply = server.post(content_type, &body).await;
        assert!(
            (400..500).contains(&reply.status),
            "{what}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let error = reply.json();
        assert!(error["error"]["code"].is_string(), "{what}: {error}");
        assert!(
            reply.body.len() < 2048,
            "{what}: the error reply stays small, not an echo of the input ({} bytes)",
            reply.body.len()
        );
        eprintln!("{what}: {} {}", reply.status, error["error"]);
        assert_eq!(
            server.get("/healthz").await.status,
            200,
            "alive after {what}"
        );
    }
    assert!(
        server.stored_jobs().is_empty(),
        "{:?}",
        server.stored_jobs()
    );

    // Garbage that is not HTTP at all, then a valid request on a new connection.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let _ = stream.write_all(b"\x00\x01\x02 not http\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Limits and shutdown.

#[tokio::test]
async fn slow_calls_time_out_as_503() {
    let fake = populated();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    fake.lock().jobs_gate = Some(Arc::new(Mutex::new(gate)));
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = Server::start_with_limits(fake, limits).await;
    let started = std::time::Instant::now();
    server.get("/v1/jobs").await.assert_error(503, "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(release);
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_shed() {
    let fake = populated();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    fake.lock().jobs_gate = Some(Arc::new(Mutex::new(gate)));
    let limits = Limits {
        max_concurrent_requests: 1,
        ..Limits::default()
    };
    let server = Server::start_with_limits(fake, limits).await;
    let addr = server.addr;
    let stuck = tokio::spawn(async move { send(addr, "GET", "/v1/jobs", &[], None).await });
    // Wait until the first request holds the only permit, i.e. is blocked inside the fake.
    let mut shed = None;
    for _ in 0..100 {
        let reply = server.get("/healthz").await;
        if reply.status == 503 {
            shed = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("a request was shed while the first one held the permit");
    shed.assert_error(503, "overloaded");
    assert_eq!(
        shed.header("retry-after"),
        Some("1"),
        "503 says when to retry"
    );
    release.send(()).expect("release the first request");
    let first = stuck.await.expect("first request");
    assert_eq!(first.status, 200);
    server.fake.lock().jobs_gate = None;
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let server = Server::start(populated()).await;
    assert_eq!(server.get("/healthz").await.status, 200);
    let addr = server.addr;
    server.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

// ---------------------------------------------------------------------------------------------
// API tokens and job limits.

const OPERATOR_TOKEN: &str = "warden_api_operator-for-tests";
const READ_TOKEN: &str = "warden_api_read-for-tests";

fn auth(policy: AccessPolicy) -> Arc<ApiAuth> {
    let tokens = TokenSet::new(vec![
        TokenEntry {
            role: Role::Operator,
            hash: hash_token(OPERATOR_TOKEN),
            name: Some("deploy".into()),
        },
        TokenEntry {
            role: Role::Read,
            hash: hash_token(READ_TOKEN),
            name: None,
        },
    ]);
    Arc::new(ApiAuth::from_tokens(tokens, policy))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn tokens_gate_the_api_by_role() {
    let cfg = HttpConfig {
        auth: Some(auth(AccessPolicy::default())),
        ..HttpConfig::default()
    };
    let server = Server::start_with_config(populated(), cfg).await;
    let (op, read) = (bearer(OPERATOR_TOKEN), bearer(READ_TOKEN));

    // Liveness stays open.
    assert_eq!(server.call("GET", "/healthz", None, None).await.status, 200);

    // No token: 401 with a Bearer challenge, on known and unknown routes alike.
    for path in ["/v1/agents", "/metrics", "/v1/nothing-here"] {
        let reply = server.call("GET", path, None, None).await;
        reply.assert_error(401, "unauthorized");
        assert_eq!(
            reply.headers_named("www-authenticate"),
            ["Bearer realm=\"warden\""],
            "{path}"
        );
    }
    // An unknown or malformed token: 401 invalid_token.
    for bad in ["Bearer not-a-token", "Token xyz", "Bearer"] {
        let reply = server.call("GET", "/v1/agents", Some(bad), None).await;
        reply.assert_error(401, "unauthorized");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{bad}: {challenge}"
        );
    }

    // A read token reads, metrics included, and may not write.
    assert_eq!(
        server
            .call("GET", "/v1/agents", Some(&read), None)
            .await
            .status,
        200
    );
    let metrics = server.call("GET", "/metrics", Some(&read), None).await;
    assert_eq!(metrics.status, 200);
    let reply = server
        .call("POST", "/v1/jobs", Some(&read), Some(WEB_TOML))
        .await;
    let error = reply.assert_error(403, "forbidden");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("needs role operator"),
        "{error}"
    );
    assert!(
        reply
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("insufficient_scope")
    );
    assert_eq!(
        server.fake.lock().submit_calls,
        0,
        "a refused write never reaches the control plane"
    );

    // An operator token writes.
    let created = server
        .call("POST", "/v1/jobs", Some(&op), Some(WEB_TOML))
        .await;
    assert_eq!(
        created.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&created.body)
    );
    server
        .call("DELETE", "/v1/jobs/web", Some(&read), None)
        .await
        .assert_error(403, "forbidden");
    assert!(server.stored_jobs().contains_key("web"));
    assert_eq!(
        server
            .call("DELETE", "/v1/jobs/web", Some(&op), None)
            .await
            .status,
        200
    );
    assert!(server.stored_jobs().is_empty());

    // The dashboard needs the read role too, and offers browsers a Basic challenge; the token
    // is the password, any user name.
    let page = server.call("GET", "/", None, None).await;
    page.assert_error(401, "unauthorized");
    let challenges = page.headers_named("www-authenticate");
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic ")),
        "{challenges:?}"
    );
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("me:{READ_TOKEN}"))
    );
    let page = server.call("GET", "/", Some(&basic), None).await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    server.stop().await;
}

#[tokio::test]
async fn the_access_policy_can_open_metrics_and_the_dashboard() {
    let cfg = HttpConfig {
        auth: Some(auth(AccessPolicy {
            public_metrics: true,
            public_dashboard: true,
        })),
        ..HttpConfig::default()
    };
    let server = Server::start_with_config(populated(), cfg).await;
    assert_eq!(server.call("GET", "/metrics", None, None).await.status, 200);
    assert_eq!(server.call("GET", "/", None, None).await.status, 200);
    assert_eq!(server.call("GET", "/ui/jobs", None, None).await.status, 200);
    // The JSON API is still closed.
    server
        .call("GET", "/v1/jobs", None, None)
        .await
        .assert_error(401, "unauthorized");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_count_limit_holds_under_concurrent_creations() {
    let cfg = HttpConfig {
        jobs: JobLimits {
            max_jobs: 3,
            ..JobLimits::default()
        },
        ..HttpConfig::default()
    };
    let fake = Fake::default();
    // Slow enough that every request's count check runs while others are being stored.
    fake.lock().submit_delay = Some(Duration::from_millis(50));
    let server = Arc::new(Server::start_with_config(Arc::new(fake), cfg).await);
    let posts: Vec<_> = (0..16)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                let spec = format!("name = \"j{i}\"\nkind = \"service\"\ncommand = \"/bin/x\"\n");
                server.post_toml(&spec).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.expect("post task"));
    }
    let created = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 422).count();
    assert_eq!((created, refused), (3, 13), "{statuses:?}");
    assert_eq!(server.fake.lock().submit_calls, 3);
    let server = Arc::into_inner(server).expect("every post finished");
    server.stop().await;
}

#[tokio::test]
async fn job_limits_refuse_specs_naming_the_field() {
    let cfg = HttpConfig {
        jobs: JobLimits {
            max_jobs: 2,
            max_spec_bytes: 2048,
            max_replicas: 5,
            max_env: 2,
            max_args: 3,
            max_command_bytes: 100,
        },
        ..HttpConfig::default()
    };
    let server = Server::start_with_config(Arc::new(Fake::default()), cfg).await;
    let cases = [
        ("replicas = 6", "replicas"),
        ("env = { A = \"1\", B = \"2\", C = \"3\" }", "env"),
        ("args = [\"1\", \"2\", \"3\", \"4\"]", "args"),
        (&*format!("args = [\"{}\"]", "x".repeat(120)), "command"),
    ];
    for (extra, field) in cases {
        let reply = server.post_toml(&toml_with(extra)).await;
        let error = reply.assert_error(422, "limit_exceeded");
        assert_eq!(error["field"], field, "{extra}: {error}");
    }
    // Larger than max_spec_bytes (but far below the body limit): 413.
    let big = toml_with(&format!("# {}", "x".repeat(3000)));
    let error = server
        .post_toml(&big)
        .await
        .assert_error(413, "payload_too_large");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_spec_bytes")
    );
    assert_eq!(server.fake.lock().submit_calls, 0);

    // At most two jobs; updating one of them is still allowed.
    for name in ["a", "b"] {
        let spec = format!("name = \"{name}\"\nkind = \"service\"\ncommand = \"/bin/x\"\n");
        assert_eq!(server.post_toml(&spec).await.status, 201);
    }
    let third = "name = \"c\"\nkind = \"service\"\ncommand = \"/bin/x\"\n";
    let error = server
        .post_toml(third)
        .await
        .assert_error(422, "limit_exceeded");
    assert_eq!(error["field"], "name");
    let update = "name = \"a\"\nkind = \"service\"\ncommand = \"/bin/y\"\n";
    assert_eq!(server.post_toml(update).await.status, 200);
    server.stop().await;
}
