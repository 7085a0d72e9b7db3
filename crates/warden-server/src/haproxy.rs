//! The HAProxy adapter: keeps the servers of one HAProxy backend in step with one service of
//! the endpoints registry, through HAProxy's runtime API (the admin socket).
//!
//! The backend is pre-sized with a server template (`server-template srv 1-10 127.0.0.1:1
//! disabled`): slot `i` of the backend (servers ordered by id) carries the instance of task
//! index `i`, so a replacement takes its predecessor's server over (`set server … addr … port
//! …`). States map `serving` → `ready`, `draining` → `drain`, `removed` or no instance →
//! `maint`.
//!
//! The adapter remembers what it applied and sends only changes. It forgets all of it — and
//! so resyncs the whole backend — whenever a command fails or HAProxy's process id changes
//! (a restart or reload puts the servers back as the configuration says), so a missed update
//! is never permanent. It checks the process id every `poll` (default 500 ms).
//!
//! With `log` set, the adapter also receives HAProxy's request log (syslog over UDP, the
//! `option httplog` format) and hands the controller, every second, what each copy served:
//! requests, failures (a 5xx answer or none) and response times (`Tr`). Rollouts judge
//! their canaries against baseline copies on it (`[update.analysis]`, docs/releases.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warden_core::judge::{Group, TrafficSample};
use warden_core::{ConfigError, FencingToken, TaskId, duration_serde};

use crate::view::{ControlApi, InstanceInfo, ServiceInfo};

/// One HAProxy backend following one service (`[[haproxy]]` in the server's config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// The service to follow (its name in `GET /v1/services`). Required.
    pub service: String,
    /// Path of HAProxy's admin socket (`stats socket PATH level admin`). Required.
    pub socket: PathBuf,
    /// The backend whose servers carry the service's instances. Required.
    pub backend: String,
    /// How often HAProxy is checked for a restart (default 500 ms).
    #[serde(default = "default_poll", with = "duration_serde")]
    pub poll: Duration,
    /// UDP address to receive HAProxy's request log on (HAProxy: `log ADDR local0` and
    /// `option httplog`), for rollouts' statistical judge. Absent: no request log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<std::net::SocketAddr>,
    /// A second backend, with as many servers as `backend` and named alike, that carries the
    /// new version's copies alone during a rollout that changes the service's `api_version`
    /// (docs/releases.md). Needs `cohort_map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort_backend: Option<String>,
    /// The HAProxy map file (as named in haproxy.cfg) that the frontend looks the requested
    /// API version up in (`use_backend %[req.hdr(x-api-version),map(FILE,web)]`): during such
    /// a rollout the adapter maps the new API version to `cohort_backend`, and clears it after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort_map: Option<PathBuf>,
}

fn default_poll() -> Duration {
    Duration::from_millis(500)
}

impl HaproxyConfig {
    /// Reject settings that can never work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.service.trim().is_empty() {
            return Err(ConfigError::new("haproxy.service", "must not be empty"));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::new("haproxy.socket", "must not be empty"));
        }
        if self.backend.is_empty() || self.backend.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "haproxy.backend",
                "must be a backend name without whitespace",
            ));
        }
        if self.poll.is_zero() {
            return Err(ConfigError::new(
                "haproxy.poll",
                "must be greater than zero",
            ));
        }
        match (&self.cohort_backend, &self.cohort_map) {
            (None, None) => {}
            (Some(b), Some(m)) => {
                if b.is_empty() || b.contains(char::is_whitespace) || *b == self.backend {
                    return Err(ConfigError::new(
                        "haproxy.cohort_backend",
                        "must be another backend's name, without whitespace",
                    ));
                }
                if m.as_os_str().is_empty() || m.to_string_lossy().contains(char::is_whitespace) {
                    return Err(ConfigError::new(
                        "haproxy.cohort_map",
                        "must be the map file's path as haproxy.cfg names it, without whitespace",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "haproxy.cohort_map",
                    "is needed with cohort_backend (the map the frontend routes by)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "haproxy.cohort_backend",
                    "is needed with cohort_map",
                ));
            }
        }
        Ok(())
    }
}

/// Why a runtime API exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The socket could not be reached or the exchange broke (HAProxy down or restarting).
    #[error("runtime API at {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// HAProxy refused a command (no such backend or server, bad argument).
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused {
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
}

/// What one backend server should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerWant {
    /// `(ip, port)` to point it at; `None` leaves its address alone.
    pub addr: Option<(String, u16)>,
    /// `ready`, `drain` or `maint`.
    pub state: &'static str,
    /// Its weight: `None` is the one HAProxy's configuration gives it; set during a rollout
    /// with traffic steps, so that the canaries get their share.
    pub weight: Option<u16>,
}

/// Which instance of `service` each server of the backend (`servers` in id order) carries.
/// One job: server i is slot i. Several jobs behind one service name (blue/green): servers
/// follow the instances in task order.
pub fn placed<'a>(
    servers: &[String],
    service: Option<&'a ServiceInfo>,
) -> Vec<(String, Option<&'a InstanceInfo>)> {
    let mut by_slot: HashMap<usize, &InstanceInfo> = HashMap::new();
    let instances = service.map(|s| s.instances.as_slice()).unwrap_or_default();
    let job = |task: &str| task.rsplit_once('/').map(|(j, _)| j.to_string());
    let one_job = instances
        .iter()
        .map(|i| job(&i.task))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        <= 1;
    let mut sorted: Vec<_> = instances.iter().collect();
    sorted.sort_by(|a, b| a.task.cmp(&b.task));
    for (position, inst) in sorted.into_iter().enumerate() {
        let index = if one_job {
            match inst
                .task
                .rsplit_once('/')
                .and_then(|(_, i)| i.parse::<usize>().ok())
            {
                Some(i) => i,
                None => continue,
            }
        } else {
            position
        };
        by_slot.insert(index, inst);
    }
    servers
        .iter()
        .enumerate()
        .map(|(i, name)| (name.clone(), by_slot.remove(&i)))
        .collect()
}

/// The wanted state of every server of the backend (`servers` in id order) for `service`.
pub fn wanted(servers: &[String], service: Option<&ServiceInfo>) -> Vec<(String, ServerWant)> {
    placed(servers, service)
        .into_iter()
        .map(|(name, inst)| {
            let addr = inst.and_then(|inst| {
                inst.addr.rsplit_once(':').and_then(|(ip, p)| {
                    Some((ip.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
                })
            });
            let want = match (inst, addr) {
                (Some(inst), Some(addr)) => ServerWant {
                    addr: Some(addr),
                    state: match inst.state.as_str() {
                        "serving" => "ready",
                        "draining" => "drain",
                        _ => "maint",
                    },
                    weight: None,
                },
                _ => ServerWant {
                    addr: None,
                    state: "maint",
                    weight: None,
                },
            };
            (name, want)
        })
        .collect()
}

/// The runtime API commands that bring server `server` of `backend` to `want`.
pub fn commands(backend: &str, server: &str, want: &ServerWant) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((ip, port)) = &want.addr {
        out.push(format!(
            "set server {backend}/{server} addr {ip} port {port}"
        ));
    }
    out.push(format!(
        "set server {backend}/{server} state {}",
        want.state
    ));
    out.push(match want.weight {
        Some(w) => format!("set weight {backend}/{server} {w}"),
        // Back to the configured weight.
        None => format!("set weight {backend}/{server} 100%"),
    });
    out
}

/// Baseline servers' weight while the canaries get a share.
const BASELINE_WEIGHT: f64 = 100.0;
/// HAProxy's largest weight.
const MAX_WEIGHT: f64 = 256.0;

/// The weights (canary, baseline) that give `canaries` servers `share` percent of the traffic
/// against `baseline` servers.
pub fn step_weights(share: u8, canaries: usize, baseline: usize) -> (u16, u16) {
    if share >= 100 {
        return (100, 0);
    }
    let (p, nc, nb) = (f64::from(share), canaries as f64, baseline as f64);
    let mut wc = p * nb * BASELINE_WEIGHT / ((100.0 - p) * nc);
    let mut wb = BASELINE_WEIGHT;
    if wc > MAX_WEIGHT {
        wc = MAX_WEIGHT;
        wb = MAX_WEIGHT * (100.0 - p) * nc / (p * nb);
    }
    let w = |x: f64| x.round().clamp(1.0, MAX_WEIGHT) as u16;
    (w(wc), w(wb))
}

/// Set the weights of `want` (server → wanted state, with the instance it carries) for the
/// rollouts with traffic steps among the instances' jobs.
fn set_step_weights(
    api: &dyn ControlApi,
    placed: &[(String, Option<&InstanceInfo>)],
    want: &mut [(String, ServerWant)],
) {
    let jobs: std::collections::BTreeSet<&str> = placed
        .iter()
        .filter_map(|(_, i)| i.and_then(|i| i.task.rsplit_once('/').map(|(j, _)| j)))
        .collect();
    for job in jobs {
        let Ok(view) = api.rollout(job) else { continue };
        let Some(share) = view.canary_share else {
            continue;
        };
        let of_job = |i: &InstanceInfo| i.task.rsplit_once('/').is_some_and(|(j, _)| j == job);
        let is_canary = |i: &InstanceInfo| view.canary_tasks.contains(&i.task);
        let serving = |i: &&InstanceInfo| of_job(i) && i.state == "serving";
        let live: Vec<&InstanceInfo> = placed
            .iter()
            .filter_map(|(_, i)| *i)
            .filter(serving)
            .collect();
        let nc = live.iter().filter(|i| is_canary(i)).count();
        let nb = live.len() - nc;
        if nc == 0 || nb == 0 {
            continue;
        }
        let (wc, wb) = step_weights(share, nc, nb);
        for ((_, inst), (_, w)) in placed.iter().zip(want.iter_mut()) {
            if let Some(i) = inst.filter(|i| of_job(i)) {
                w.weight = Some(if is_canary(i) { wc } else { wb });
            }
        }
    }
}

/// Run one runtime API command (one connection, non-interactive mode) and return the answer.
pub async fn command(socket: &std::path::Path, cmd: &str) -> Result<String, AdapterError> {
    let io = |source| AdapterError::Io {
        path: socket.display().to_string(),
        source,
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<String, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        .map_err(io)?;
    let lower = answer.to_ascii_lowercase();
    if [
        "no such",
        "unknown command",
        "require",
        "invalid",
        "not allowed",
        "permission denied",
        "unknown map",
        "unable to",
    ]
    .iter()
    .any(|bad| lower.contains(bad))
    {
        return Err(AdapterError::Refused {
            command: cmd.to_string(),
            answer: answer.trim().to_string(),
        });
    }
    Ok(answer)
}

/// HAProxy's process id, from `show info`.
async fn haproxy_pid(socket: &std::path::Path) -> Result<Option<u64>, AdapterError> {
    let info = command(socket, "show info").await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok()))
}

/// The backend's server names in id order, from `show servers state BACKEND`.
async fn backend_servers(
    socket: &std::path::Path,
    backend: &str,
) -> Result<Vec<String>, AdapterError> {
    let cmd = format!("show servers state {backend}");
    let answer = command(socket, &cmd).await?;
    let mut header: Vec<&str> = Vec::new();
    let mut servers: Vec<(u64, String)> = Vec::new();
    for line in answer.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            header = h.split_whitespace().collect();
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .and_then(|i| cols.get(i).copied())
        };
        if let (Some(id), Some(name)) = (col("srv_id"), col("srv_name"))
            && let Ok(id) = id.parse()
        {
            servers.push((id, name.to_string()));
        }
    }
    if servers.is_empty() {
        return Err(AdapterError::Refused {
            command: cmd,
            answer: "no servers in the backend (pre-size it with server-template)".into(),
        });
    }
    servers.sort();
    Ok(servers.into_iter().map(|(_, n)| n).collect())
}

/// What the adapter believes HAProxy holds; cleared to force a full resync.
#[derive(Default)]
struct Applied {
    pid: Option<u64>,
    servers: Vec<String>,
    state: HashMap<String, ServerWant>,
    /// The cohort backend's servers and their state.
    cohort_servers: Vec<String>,
    cohort_state: HashMap<String, ServerWant>,
    /// The API version mapped to the cohort backend (`Some(None)`: the map is empty; `None`:
    /// not known).
    cohort_entry: Option<Option<String>>,
}

/// A copy of the service: its task and fencing token.
type Copy = (TaskId, u64);

/// What one server carries, as last applied to HAProxy: its copy, since when, and the copy it
/// carried before (requests connected before the change were served by that one).
#[derive(Clone, Debug)]
struct CarriedBy {
    copy: Copy,
    since: tokio::time::Instant,
    before: Option<Copy>,
}

/// Which copy each server carries.
type Carried = Arc<std::sync::Mutex<HashMap<String, CarriedBy>>>;

/// The copy that served a request to `server` whose connection to it opened `connected_ago`
/// before `now`: a request logged after the server was pointed at a new copy may still have
/// been served by the old one (HAProxy writes the line when the request ends, and a killed copy
/// whose reset was lost is logged only at `timeout server`).
fn served_by(
    carried: &HashMap<String, CarriedBy>,
    server: &str,
    now: tokio::time::Instant,
    connected_ago: Duration,
) -> Option<Copy> {
    let c = carried.get(server)?;
    match now.checked_sub(connected_ago) {
        Some(at) if at >= c.since => Some(c.copy.clone()),
        // Connected before the change (or earlier than the clock reaches): the previous copy.
        _ => c.before.clone(),
    }
}

/// Keep `cfg.backend` in step with `cfg.service` until `cancel` fires.
pub async fn run(cfg: HaproxyConfig, api: Arc<dyn ControlApi>, cancel: CancellationToken) {
    let mut watch = api.watch_services();
    let mut applied = Applied::default();
    let carried: Carried = Arc::default();
    if let Some(addr) = cfg.log {
        tokio::spawn(receive_log(
            addr,
            cfg.backend.clone(),
            cfg.cohort_backend.clone(),
            carried.clone(),
            api.clone(),
            cancel.child_token(),
        ));
    }
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    info!(service = %cfg.service, backend = %cfg.backend, socket = %cfg.socket.display(), "HAProxy adapter started");
    loop {
        match sync_once(&cfg, api.as_ref(), &mut applied, &carried).await {
            Ok(changed) => {
                if failing || changed > 0 {
                    info!(backend = %cfg.backend, changed, "HAProxy backend in step");
                }
                failing = false;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                if !failing {
                    warn!(backend = %cfg.backend, error = %e, "HAProxy out of step; will resync");
                }
                failing = true;
                applied = Applied::default();
            }
        }
        let pause = if failing { backoff } else { cfg.poll };
        if failing {
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        let changed = async {
            match watch.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
            () = changed, if !failing => {}
        }
    }
}

/// One round: detect a restart, then send what differs. Returns the servers changed.
async fn sync_once(
    cfg: &HaproxyConfig,
    api: &dyn ControlApi,
    applied: &mut Applied,
    carried: &Carried,
) -> Result<usize, AdapterError> {
    let pid = haproxy_pid(&cfg.socket).await?;
    if pid.is_none() || pid != applied.pid || applied.servers.is_empty() {
        if applied.pid.is_some() {
            info!(backend = %cfg.backend, "HAProxy restarted; resyncing the whole backend");
        }
        *applied = Applied {
            pid,
            servers: backend_servers(&cfg.socket, &cfg.backend).await?,
            ..Applied::default()
        };
    }
    let services = api.services();
    let service = services.services.iter().find(|s| s.name == cfg.service);
    let mut changed = 0;
    let mut want = wanted(&applied.servers, service);
    let placed_now = placed(&applied.servers, service);
    set_step_weights(api, &placed_now, &mut want);
    let cohort = cfg
        .cohort_backend
        .as_ref()
        .and_then(|_| cohort_of(api, &placed_now));
    if let Some(c) = cohort.as_ref().filter(|c| c.exclusive) {
        // Through the canary phase the new version answers its cohort alone.
        for ((_, inst), (_, w)) in placed_now.iter().zip(want.iter_mut()) {
            if inst.is_some_and(|i| c.tasks.contains(&i.task)) {
                w.state = "maint";
                w.weight = None;
            }
        }
    }
    let copies: HashMap<String, Copy> = placed_now
        .iter()
        .filter_map(|(server, inst)| {
            let inst = (*inst)?;
            Some((server.clone(), (TaskId::parse(&inst.task)?, inst.epoch)))
        })
        .collect();
    for (server, want) in want {
        if applied.state.get(&server) == Some(&want) {
            continue;
        }
        // Noted before the commands go out: a request connected from here on may reach the
        // new copy; one connected before reached the old.
        note_carried(carried, &server, copies.get(&server));
        for cmd in commands(&cfg.backend, &server, &want) {
            command(&cfg.socket, &cmd).await?;
        }
        applied.state.insert(server, want);
        changed += 1;
    }
    for (server, copy) in &copies {
        note_carried(carried, server, Some(copy));
    }
    if let (Some(backend), Some(map)) = (&cfg.cohort_backend, &cfg.cohort_map) {
        changed += sync_cohort(cfg, backend, map, service, cohort.as_ref(), applied).await?;
    }
    Ok(changed)
}

/// The cohort of a rollout of one of the jobs whose instances `placed` holds, if any.
fn cohort_of(
    api: &dyn ControlApi,
    placed: &[(String, Option<&InstanceInfo>)],
) -> Option<warden_core::controller::Cohort> {
    let jobs: std::collections::BTreeSet<&str> = placed
        .iter()
        .filter_map(|(_, i)| i.and_then(|i| i.task.rsplit_once('/').map(|(j, _)| j)))
        .collect();
    jobs.into_iter()
        .find_map(|job| api.rollout(job).ok().and_then(|v| v.cohort))
}

/// Keep the cohort backend carrying the new version's copies alone (every server in
/// maintenance without a cohort), and the map sending the new API version's requests there.
async fn sync_cohort(
    cfg: &HaproxyConfig,
    backend: &str,
    map: &std::path::Path,
    service: Option<&ServiceInfo>,
    cohort: Option<&warden_core::controller::Cohort>,
    applied: &mut Applied,
) -> Result<usize, AdapterError> {
    if applied.cohort_servers.is_empty() {
        applied.cohort_servers = backend_servers(&cfg.socket, backend).await?;
    }
    let mut changed = 0;
    let entry = cohort.map(|c| c.api_version.clone());
    // A cohort that ends leaves the map first (its requests go back to the main backend)
    // before its servers go into maintenance; a new one gets its servers first.
    if entry.is_none() {
        changed += sync_cohort_map(cfg, backend, map, entry.clone(), applied).await?;
    }
    let mut want = wanted(&applied.cohort_servers, service);
    for ((_, inst), (_, w)) in placed(&applied.cohort_servers, service)
        .iter()
        .zip(want.iter_mut())
    {
        let member = cohort.is_some_and(|c| inst.is_some_and(|i| c.tasks.contains(&i.task)));
        if !member {
            w.state = "maint";
        }
    }
    for (server, want) in want {
        if applied.cohort_state.get(&server) == Some(&want) {
            continue;
        }
        for cmd in commands(backend, &server, &want) {
            command(&cfg.socket, &cmd).await?;
        }
        applied.cohort_state.insert(server, want);
        changed += 1;
    }
    changed += sync_cohort_map(cfg, backend, map, entry, applied).await?;
    Ok(changed)
}

/// Keep the cohort map holding `entry → backend` alone: the new key added before the old one
/// goes (no moment without it), everything cleared first when what it holds is not known.
async fn sync_cohort_map(
    cfg: &HaproxyConfig,
    backend: &str,
    map: &std::path::Path,
    entry: Option<String>,
    applied: &mut Applied,
) -> Result<usize, AdapterError> {
    if applied.cohort_entry.as_ref() == Some(&entry) {
        return Ok(0);
    }
    let map = map.display();
    let before = match applied.cohort_entry.take() {
        Some(before) => before,
        None => {
            command(&cfg.socket, &format!("clear map {map}")).await?;
            None
        }
    };
    if let Some(v) = &entry {
        command(&cfg.socket, &format!("add map {map} {v} {backend}")).await?;
        info!(api_version = %v, %backend, "requests for the new API version go to the cohort backend");
    }
    if let Some(old) = before.filter(|old| Some(old) != entry.as_ref()) {
        command(&cfg.socket, &format!("del map {map} {old}")).await?;
    }
    applied.cohort_entry = Some(entry);
    Ok(1)
}

/// Record that `server` carries `copy` (none: nothing), keeping the copy it carried before.
fn note_carried(carried: &Carried, server: &str, copy: Option<&Copy>) {
    let Ok(mut c) = carried.lock() else { return };
    match copy {
        None => {
            c.remove(server);
        }
        Some(copy) => {
            if c.get(server).map(|by| &by.copy) == Some(copy) {
                return;
            }
            let before = c.get(server).map(|by| by.copy.clone());
            c.insert(
                server.to_string(),
                CarriedBy {
                    copy: copy.clone(),
                    since: tokio::time::Instant::now(),
                    before,
                },
            );
        }
    }
}

/// One request of HAProxy's log: failed (5xx or no answer), and the server's response time.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedRequest {
    /// The server that served it.
    pub server: String,
    /// A 5xx answer, or none at all.
    pub failed: bool,
    /// `Tr`, ms (absent when the server never answered).
    pub response_ms: Option<f64>,
    /// How long before the line was written the connection to the server opened, ms:
    /// `Ta − TR − Tw − Tc` (the timers that did not happen, −1, count as 0).
    pub connected_ms_ago: u64,
}

/// Parse one syslog line of HAProxy's `option httplog` format for `backend`:
/// `… frontend backend/server TR/Tw/Tc/Tr/Ta status …`. Other lines (other backends, no server,
/// HAProxy's own messages) are `None`.
pub fn parse_log_line(line: &str, backend: &str) -> Option<LoggedRequest> {
    let mut words = line.split_ascii_whitespace();
    let server = words.by_ref().find_map(|w| {
        let (b, s) = w.split_once('/')?;
        (b == backend && !s.is_empty() && !s.starts_with('<')).then_some(s)
    })?;
    let timers: Vec<i64> = words
        .next()?
        .split('/')
        .map(|t| t.trim_start_matches('+').parse().ok())
        .collect::<Option<_>>()?;
    if timers.len() != 5 {
        return None;
    }
    let status: i64 = words.next()?.parse().ok()?;
    let tr = timers[3];
    let before_connect: i64 = timers[..3].iter().map(|t| (*t).max(0)).sum();
    Some(LoggedRequest {
        server: server.to_string(),
        failed: !(100..500).contains(&status) || tr < 0,
        response_ms: (tr >= 0 && status < 500).then_some(tr as f64),
        connected_ms_ago: u64::try_from(timers[4].max(0) - before_connect).unwrap_or(0),
    })
}

/// Response times kept per server and second (a uniform sample of them beyond).
const LATENCIES_PER_SECOND: usize = 256;

/// Receive HAProxy's request log on `addr` and hand the controller, every second, what each
/// copy served.
async fn receive_log(
    addr: std::net::SocketAddr,
    backend: String,
    cohort: Option<String>,
    carried: Carried,
    api: Arc<dyn ControlApi>,
    cancel: CancellationToken,
) {
    let sock = match tokio::net::UdpSocket::bind(addr).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%addr, error = %e, "cannot receive HAProxy's request log; rollouts of this service get no statistical judge");
            return;
        }
    };
    info!(%addr, %backend, "receiving HAProxy's request log");
    let mut buf = vec![0u8; 16 * 1024];
    let mut per_copy: HashMap<Copy, (Group, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut rng = warden_core::rng::Rng::new(u64::from(addr.port()));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                let samples: Vec<TrafficSample> = per_copy
                    .drain()
                    .map(|((task, epoch), (group, _))| TrafficSample {
                        task,
                        epoch: FencingToken(epoch),
                        group,
                    })
                    .collect();
                if !samples.is_empty() {
                    api.traffic(samples);
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let Ok(line) = std::str::from_utf8(&buf[..n]) else { continue };
                let Some(req) = parse_log_line(line, &backend)
                    .or_else(|| cohort.as_deref().and_then(|b| parse_log_line(line, b)))
                else {
                    continue;
                };
                let now = tokio::time::Instant::now();
                let ago = Duration::from_millis(req.connected_ms_ago);
                let Some(copy) = carried.lock().ok().and_then(|c| served_by(&c, &req.server, now, ago)) else {
                    continue;
                };
                let (group, seen) = per_copy.entry(copy).or_default();
                group.requests += 1;
                if req.failed {
                    group.errors += 1;
                }
                if let Some(ms) = req.response_ms {
                    // Reservoir sampling: every answer equally likely to be kept.
                    *seen += 1;
                    if group.latencies_ms.len() < LATENCIES_PER_SECOND {
                        group.latencies_ms.push(ms);
                    } else {
                        let k = rng.below(*seen);
                        if let Some(slot) = usize::try_from(k).ok().and_then(|k| group.latencies_ms.get_mut(k)) {
                            *slot = ms;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::InstanceInfo;

    fn inst(task: &str, addr: &str, state: &str) -> InstanceInfo {
        InstanceInfo {
            task: task.into(),
            epoch: 1,
            agent: "a#1".into(),
            addr: addr.into(),
            state: state.into(),
            reason: String::new(),
            since_unix_ms: 0,
        }
    }

    #[test]
    fn several_jobs_behind_one_service_fill_servers_in_task_order() {
        let svc = ServiceInfo {
            name: "web".into(),
            index: 3,
            instances: vec![
                inst("web-green/0", "127.0.0.1:5000", "serving"),
                inst("web-blue/1", "127.0.0.1:4001", "draining"),
                inst("web-blue/0", "127.0.0.1:4000", "draining"),
            ],
        };
        let servers: Vec<String> = ["srv1", "srv2", "srv3", "srv4"].map(String::from).into();
        let w = wanted(&servers, Some(&svc));
        let got: Vec<(Option<u16>, &str)> = w
            .iter()
            .map(|(_, w)| (w.addr.as_ref().map(|a| a.1), w.state))
            .collect();
        assert_eq!(
            got,
            [
                (Some(4000), "drain"),
                (Some(4001), "drain"),
                (Some(5000), "ready"),
                (None, "maint")
            ]
        );
    }

    #[test]
    fn slots_follow_task_indexes_and_states_map() {
        let svc = ServiceInfo {
            name: "web".into(),
            index: 3,
            instances: vec![
                inst("web/0", "127.0.0.1:4000", "serving"),
                inst("web/2", "127.0.0.1:4002", "draining"),
                inst("web/1", "127.0.0.1:4001", "removed"),
                inst("web/9", "127.0.0.1:4009", "serving"),
            ],
        };
        let servers: Vec<String> = ["srv1", "srv2", "srv3", "srv4"].map(String::from).into();
        let w = wanted(&servers, Some(&svc));
        let states: Vec<(&str, &str)> = w.iter().map(|(s, w)| (s.as_str(), w.state)).collect();
        assert_eq!(
            states,
            [
                ("srv1", "ready"),
                ("srv2", "maint"),
                ("srv3", "drain"),
                ("srv4", "maint")
            ]
        );
        assert_eq!(
            commands("be", "srv1", &w[0].1),
            [
                "set server be/srv1 addr 127.0.0.1 port 4000",
                "set server be/srv1 state ready",
                "set weight be/srv1 100%"
            ]
        );
        assert_eq!(
            commands("be", "srv4", &w[3].1),
            ["set server be/srv4 state maint", "set weight be/srv4 100%"]
        );
        assert!(
            wanted(&servers, None)
                .iter()
                .all(|(_, w)| w.state == "maint")
        );
    }

    #[test]
    fn request_log_lines_give_server_outcome_and_response_time() {
        let line = |srv: &str, timers: &str, status: &str| {
            format!(
                "<134>Dec  7 02:10:01 haproxy[1234]: 127.0.0.1:45678 [07/Dec/2026:02:10:01.123] \
                 fe web/{srv} {timers} {status} 123 - - ---- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\""
            )
        };
        assert_eq!(
            parse_log_line(&line("srv3", "2/0/1/17/20", "200"), "web"),
            Some(LoggedRequest {
                server: "srv3".into(),
                failed: false,
                response_ms: Some(17.0),
                connected_ms_ago: 17,
            })
        );
        let r = parse_log_line(&line("srv1", "0/0/0/5/5", "503"), "web").expect("a request line");
        assert!(r.failed && r.response_ms.is_none());
        // No answer from the server (Tr = -1, HAProxy's own 502).
        let r =
            parse_log_line(&line("srv1", "0/0/1/-1/2003", "502"), "web").expect("a request line");
        assert!(r.failed && r.response_ms.is_none());
        assert_eq!(r.connected_ms_ago, 2002);
        // Never connected (Tc = -1): the whole time counts.
        let r =
            parse_log_line(&line("srv1", "0/0/-1/-1/1001", "503"), "web").expect("a request line");
        assert_eq!(r.connected_ms_ago, 1001);
        // Another backend, no server, not a request line: nothing.
        assert_eq!(
            parse_log_line(&line("srv1", "0/0/0/5/5", "200"), "api"),
            None
        );
        assert_eq!(
            parse_log_line(&line("<NOSRV>", "0/-1/-1/-1/0", "503"), "web"),
            None
        );
        assert_eq!(
            parse_log_line("<133>haproxy[1]: Proxy web started.", "web"),
            None
        );
        assert_eq!(parse_log_line("web/srv1 a/b/c 200", "web"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_connected_before_a_change_counts_for_the_copy_before() {
        let carried: Carried = Arc::default();
        let old = (TaskId::parse("web/0").expect("task"), 3);
        let new = (TaskId::parse("web/0").expect("task"), 4);
        note_carried(&carried, "srv0", Some(&old));
        tokio::time::advance(Duration::from_secs(60)).await;
        note_carried(&carried, "srv0", Some(&new));
        note_carried(&carried, "srv0", Some(&new)); // unchanged: keeps its `since`
        tokio::time::advance(Duration::from_secs(10)).await;
        let c = carried.lock().expect("lock").clone();
        let now = tokio::time::Instant::now();
        // Logged now, after `timeout server` on a copy killed 10 s ago: the old copy's.
        assert_eq!(
            served_by(&c, "srv0", now, Duration::from_millis(10_500)),
            Some(old.clone())
        );
        assert_eq!(
            served_by(&c, "srv0", now, Duration::from_millis(20)),
            Some(new.clone())
        );
        assert_eq!(served_by(&c, "srv9", now, Duration::ZERO), None);
        note_carried(&carried, "srv0", None);
        assert!(carried.lock().expect("lock").is_empty());
    }

    #[test]
    fn step_weights_give_the_canaries_their_share() {
        for (share, nc, nb) in [
            (1u8, 1usize, 4usize),
            (10, 2, 4),
            (50, 1, 9),
            (90, 1, 9),
            (5, 2, 18),
        ] {
            let (wc, wb) = step_weights(share, nc, nb);
            let got = 100.0 * (f64::from(wc) * nc as f64)
                / (f64::from(wc) * nc as f64 + f64::from(wb) * nb as f64);
            assert!(
                (got - f64::from(share)).abs() <= f64::from(share).max(1.0) * 0.15,
                "{share} % with {nc}/{nb}: weights {wc}/{wb} give {got:.2} %"
            );
            assert!((1..=256).contains(&wc) && (1..=256).contains(&wb));
        }
        assert_eq!(step_weights(100, 2, 3), (100, 0));
        assert_eq!(
            commands(
                "web",
                "srv1",
                &ServerWant {
                    addr: None,
                    state: "ready",
                    weight: Some(7)
                }
            )
            .last()
            .map(String::as_str),
            Some("set weight web/srv1 7")
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        let ok = HaproxyConfig {
            cohort_map: None,
            cohort_backend: None,
            service: "web".into(),
            socket: "/run/haproxy.sock".into(),
            backend: "web".into(),
            poll: default_poll(),
            log: None,
        };
        assert!(ok.validate().is_ok());
        let bad = HaproxyConfig {
            backend: "a b".into(),
            ..ok.clone()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.field).err().as_deref(),
            Some("haproxy.backend")
        );
        let bad = HaproxyConfig {
            service: String::new(),
            ..ok.clone()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.field).err().as_deref(),
            Some("haproxy.service")
        );
        let cohort = HaproxyConfig {
            cohort_backend: Some("web_next".into()),
            cohort_map: Some("/etc/haproxy/web.map".into()),
            ..ok.clone()
        };
        assert!(cohort.validate().is_ok());
        for (bad, field) in [
            (
                HaproxyConfig {
                    cohort_map: None,
                    ..cohort.clone()
                },
                "haproxy.cohort_map",
            ),
            (
                HaproxyConfig {
                    cohort_backend: Some("web".into()),
                    ..cohort.clone()
                },
                "haproxy.cohort_backend",
            ),
            (
                HaproxyConfig {
                    cohort_backend: None,
                    ..cohort
                },
                "haproxy.cohort_backend",
            ),
        ] {
            assert_eq!(
                bad.validate().map_err(|e| e.field).err().as_deref(),
                Some(field)
            );
        }
    }
}
