//! The traffic-removal benchmark (`warden bench traffic`): a real HAProxy (Debian's
//! `/usr/sbin/haproxy`) in front of a service of 3 instances of `warden workload http` on a
//! real local cluster, a steady open-loop request rate through HAProxy, and a host crash of one
//! instance's agent: the agent and its task processes are SIGKILLed (`kill`: connections get
//! RST) or SIGSTOPped (`pause`: no RST, requests hang). Two ways of taking the instance out of
//! traffic, each on a fresh cluster and HAProxy per repetition:
//!
//! - `haproxy`: HAProxy's own health checks alone, at their defaults (`check inter 2s fall 3`,
//!   with `option httpchk GET /healthz` so that a hung process fails its checks too); no Warden
//!   adapter.
//! - `warden`: the server's HAProxy adapter drives a `server-template` backend from the
//!   endpoints registry; no HAProxy health checks.
//!
//! Per repetition it counts the requests sent in the window from the crash on that fail
//! (non-200 answer, reset, or no answer within 2 s) and the time from the crash until HAProxy
//! stops sending new requests to the instance (its server is down, in maintenance or drain).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::Value;
use warden_core::qos::percentile;

use crate::cluster::{Cluster, free_port, wait_until};
use crate::recovery::Fault;

/// Where Debian installs HAProxy.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// How the crashed instance is taken out of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HAProxy's health checks alone (`inter 2s fall 3`).
    Haproxy,
    /// Warden's HAProxy adapter.
    Warden,
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Repetitions per fault and mode.
    pub reps: usize,
    /// Requests per second through HAProxy.
    pub rate: u32,
    /// Requests counted: those sent from the crash until this much later.
    pub window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reps: 5,
            rate: 100,
            window: Duration::from_secs(15),
        }
    }
}

/// One repetition.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Fault.
    pub fault: Fault,
    /// Mode.
    pub mode: Mode,
    /// Requests sent in the window.
    pub sent: usize,
    /// Of which failed.
    pub failed: usize,
    /// Crash → HAProxy stops sending new requests to the instance; `None`: not within the
    /// window.
    pub removal_ms: Option<f64>,
}

/// The figures of one fault and mode.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Fault.
    pub fault: Fault,
    /// Mode.
    pub mode: Mode,
    /// Repetitions.
    pub reps: usize,
    /// Requests sent in the windows, summed.
    pub sent: usize,
    /// Failed requests, summed.
    pub failed: usize,
    /// Crash → removal, median (ms) over the repetitions that removed it.
    pub removal_p50_ms: Option<f64>,
    /// Crash → removal, 99th percentile (ms).
    pub removal_p99_ms: Option<f64>,
    /// Repetitions where the instance was not removed within the window.
    pub not_removed: usize,
}

/// Run both modes for `kill` and `pause`; `progress` sees every sample.
pub fn run(exe: &Path, s: &Settings, mut progress: impl FnMut(&Sample)) -> Result<Vec<Row>> {
    if !Path::new(HAPROXY).exists() {
        bail!("{HAPROXY} is missing: apt-get install haproxy");
    }
    let mut rows = Vec::new();
    for fault in [Fault::Kill, Fault::Pause] {
        for mode in [Mode::Haproxy, Mode::Warden] {
            let mut samples = Vec::with_capacity(s.reps);
            for _ in 0..s.reps {
                let sample =
                    one(exe, s, fault, mode).with_context(|| format!("{fault:?} with {mode:?}"))?;
                progress(&sample);
                samples.push(sample);
            }
            rows.push(summarize(fault, mode, &samples));
        }
    }
    Ok(rows)
}

fn summarize(fault: Fault, mode: Mode, samples: &[Sample]) -> Row {
    let mut removals: Vec<f64> = samples.iter().filter_map(|s| s.removal_ms).collect();
    removals.sort_by(f64::total_cmp);
    Row {
        fault,
        mode,
        reps: samples.len(),
        sent: samples.iter().map(|s| s.sent).sum(),
        failed: samples.iter().map(|s| s.failed).sum(),
        removal_p50_ms: percentile(&removals, 0.5),
        removal_p99_ms: percentile(&removals, 0.99),
        not_removed: samples.iter().filter(|s| s.removal_ms.is_none()).count(),
    }
}

/// The table: per fault, both modes side by side, and the ratio of failed requests.
pub fn format_table(s: &Settings, rows: &[Row]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
    let mut out = format!(
        "{} reps per cell, {} req/s through HAProxy, failed = requests sent within {} s of the crash\n\n",
        s.reps,
        s.rate,
        s.window.as_secs()
    );
    out.push_str(
        "| fault | failed (a) HAProxy checks | failed (b) Warden | ratio b/a | removal p50 (a) | removal p99 (a) | removal p50 (b) | removal p99 (b) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for fault in [Fault::Kill, Fault::Pause] {
        let find = |m| rows.iter().find(|r| r.fault == fault && r.mode == m);
        let (Some(a), Some(b)) = (find(Mode::Haproxy), find(Mode::Warden)) else {
            continue;
        };
        let ratio = if a.failed == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * b.failed as f64 / a.failed as f64)
        };
        let never = |r: &Row| {
            if r.not_removed > 0 {
                format!(" ({} not removed)", r.not_removed)
            } else {
                String::new()
            }
        };
        out.push_str(&format!(
            "| {} | {} of {} | {} of {} | {ratio} | {} | {}{} | {} | {}{} |\n",
            match fault {
                Fault::Kill => "kill -9 (RST)",
                Fault::Pause => "SIGSTOP (no RST)",
            },
            a.failed,
            a.sent,
            b.failed,
            b.sent,
            ms(a.removal_p50_ms),
            ms(a.removal_p99_ms),
            never(a),
            ms(b.removal_p50_ms),
            ms(b.removal_p99_ms),
            never(b),
        ));
    }
    out
}

const JOB: &str = "name = \"web\"\nkind = \"service\"\nreplicas = 3\ncommand = \"{exe}\"\n\
    args = [\"workload\", \"http\"]\n[resources]\ncpu_millis = 10\nmemory_mb = 16\n\
    [service]\nport = \"dynamic\"\n";

fn one(exe: &Path, s: &Settings, fault: Fault, mode: Mode) -> Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("warden-traffic-")
        .tempdir()?;
    let port = free_port()?;
    let socket = dir.path().join("haproxy.sock");
    let mut server_cfg = String::from(
        "[control.lifecycle.health.cpu]\ngood = 0.85\nbad = 0.98\nweight = 0.0\n\n\
         [control.lifecycle.health.pressure]\ngood = 10.0\nbad = 60.0\nweight = 0.0\n",
    );
    if mode == Mode::Warden {
        server_cfg.push_str(&format!(
            "\n[[haproxy]]\nservice = \"web\"\nsocket = \"{}\"\nbackend = \"web\"\npoll = \"200ms\"\n",
            socket.display()
        ));
    }
    let cfg_path = dir.path().join("server.toml");
    std::fs::write(&cfg_path, server_cfg)?;
    let cfg_str = cfg_path.display().to_string();
    let mut cluster = Cluster::start_with_env(exe, &[("WARDEN_CONFIG", cfg_str.as_str())])?;
    cluster.add_agents(3)?;
    cluster.submit(JOB)?;
    let serving = |c: &Cluster| -> Vec<Value> {
        c.client
            .get("/v1/services/web")
            .ok()
            .and_then(|v| v.get("instances").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i["state"] == "serving")
            .collect()
    };
    if !wait_until(Duration::from_secs(45), || serving(&cluster).len() == 3) {
        bail!("3 instances not serving:\n{}", cluster.log("server"));
    }
    let instances = serving(&cluster);
    let backend = match mode {
        Mode::Warden => "  server-template srv 1-5 127.0.0.1:1 disabled\n".to_string(),
        Mode::Haproxy => {
            let mut b = String::from("  option httpchk GET /healthz\n");
            for (n, i) in instances.iter().enumerate() {
                b.push_str(&format!(
                    "  server s{n} {} check inter 2s fall 3\n",
                    i["addr"].as_str().unwrap_or("")
                ));
            }
            b
        }
    };
    let haproxy = Haproxy::start(dir.path(), port, &socket, &backend)?;
    // Every instance answers through HAProxy.
    if !wait_until(Duration::from_secs(30), || {
        haproxy.taking().len() == 3
            && (0..12)
                .filter_map(|_| request(port).ok())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 3
    }) {
        bail!(
            "not every instance answers through HAProxy: {:?}",
            haproxy.servers()
        );
    }
    // The victim: the instance of web/0, on its agent.
    let victim = instances
        .iter()
        .find(|i| i["task"] == "web/0")
        .context("no web/0")?;
    let victim_addr = victim["addr"].as_str().unwrap_or("").to_string();
    let agent = victim["agent"]
        .as_str()
        .unwrap_or("")
        .split('#')
        .next()
        .unwrap_or("")
        .to_string();
    let tasks_on_agent: Vec<String> = cluster
        .client
        .get("/v1/tasks")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| {
            t["agent"]
                .as_str()
                .is_some_and(|a| a.split('#').next() == Some(agent.as_str()))
        })
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let pids: Vec<i32> = cluster
        .task_procs()
        .into_iter()
        .filter(|p| tasks_on_agent.contains(&p.task))
        .map(|p| p.pid)
        .collect();
    if pids.is_empty() {
        bail!("no task process found on {agent} ({tasks_on_agent:?})");
    }
    let load = Load::start(port, s.rate);
    std::thread::sleep(Duration::from_secs(1));
    // The host crash: the agent and its task processes at once.
    let signal = match fault {
        Fault::Kill => Signal::SIGKILL,
        Fault::Pause => Signal::SIGSTOP,
    };
    let crashed = Instant::now();
    cluster.signal_agent(&agent, signal)?;
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
    let mut removal = None;
    let end = crashed + s.window;
    while Instant::now() < end {
        if removal.is_none() && !haproxy.taking().contains(&victim_addr) {
            removal = Some(crashed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = load.finish();
    let in_window: Vec<&Result<String, String>> = log
        .iter()
        .filter(|(at, _)| *at >= crashed && *at < end)
        .map(|(_, r)| r)
        .collect();
    // Let the stopped processes go, so the cluster can shut down.
    if fault == Fault::Pause {
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = cluster.signal_agent(&agent, Signal::SIGCONT);
    }
    drop(haproxy);
    drop(cluster);
    Ok(Sample {
        fault,
        mode,
        sent: in_window.len(),
        failed: in_window.iter().filter(|r| r.is_err()).count(),
        removal_ms: removal.map(|d| d.as_secs_f64() * 1000.0),
    })
}

/// A running HAProxy, killed on drop.
pub(crate) struct Haproxy {
    child: Child,
    socket: PathBuf,
}

impl Haproxy {
    pub(crate) fn start(dir: &Path, port: u16, socket: &Path, backend: &str) -> Result<Haproxy> {
        Self::start_logged(dir, port, socket, backend, None)
    }

    /// Like [`Haproxy::start`], sending the request log (`option httplog`) to UDP
    /// `127.0.0.1:log_port` when given.
    pub(crate) fn start_logged(
        dir: &Path,
        port: u16,
        socket: &Path,
        backend: &str,
        log_port: Option<u16>,
    ) -> Result<Haproxy> {
        let cfg = dir.join("haproxy.cfg");
        let (global_log, defaults_log) = match log_port {
            Some(p) => (
                format!("  log 127.0.0.1:{p} local0 info\n"),
                "  log global\n  option httplog\n",
            ),
            None => (String::new(), ""),
        };
        std::fs::write(
            &cfg,
            format!(
                "global\n  stats socket {sock} mode 600 level admin\n{global_log}\
                 defaults\n  mode http\n{defaults_log}  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend web\n\
                 backend web\n{backend}",
                sock = socket.display()
            ),
        )?;
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start haproxy")?;
        let h = Haproxy {
            child,
            socket: socket.to_path_buf(),
        };
        if !wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && h.socket.exists()
        }) {
            bail!("HAProxy did not start");
        }
        Ok(h)
    }

    /// `show servers state web`: (address:port, operational state, admin state bits).
    fn servers(&self) -> Vec<(String, u32, u32)> {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return vec![];
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(b"show servers state web\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 18)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (
                    format!("{}:{}", c[4], c[18]),
                    c[5].parse().unwrap_or(0),
                    c[6].parse().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Servers taking new requests: up (operational state not 0) and neither in maintenance
    /// (admin bits 0x01, 0x02, 0x20) nor draining (0x08, 0x10).
    pub(crate) fn taking(&self) -> Vec<String> {
        self.servers()
            .into_iter()
            .filter(|(_, op, admin)| *op != 0 && admin & 0x3b == 0)
            .map(|(a, _, _)| a)
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET through HAProxy: the answering copy (`job/index@token`), or why it failed (no
/// answer within 2 s fails).
pub(crate) fn request(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out.lines().next().unwrap_or("empty answer").to_string());
    }
    out.lines()
        .find_map(|l| l.strip_prefix("task="))
        .map(|t| {
            let mut w = t.split_whitespace();
            let task = w.next().unwrap_or("");
            match w.next().and_then(|k| k.strip_prefix("token=")) {
                Some(token) => format!("{task}@{token}"),
                None => task.to_string(),
            }
        })
        .ok_or_else(|| "no task in the answer".to_string())
}

type Log = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

/// An open-loop request load: a request every 1/rate s, each on its own thread, so hung
/// requests do not slow the rate.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    log: Log,
    thread: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<()>>>>,
}

impl Load {
    pub(crate) fn start(port: u16, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let (st, lg) = (stop.clone(), log.clone());
        let every = Duration::from_secs(1) / rate.max(1);
        let thread = std::thread::spawn(move || {
            let mut handles = Vec::new();
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let lg = lg.clone();
                let at = Instant::now();
                handles.push(std::thread::spawn(move || {
                    let r = request(port);
                    if let Ok(mut l) = lg.lock() {
                        l.push((at, r));
                    }
                }));
                handles.retain(|h| !h.is_finished());
                next += every;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            handles
        });
        Load {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Every request answered so far, with when it was sent.
    pub(crate) fn snapshot(&self) -> Vec<(Instant, Result<String, String>)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stop sending, wait for the requests in flight; every request with when it was sent.
    pub(crate) fn finish(mut self) -> Vec<(Instant, Result<String, String>)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && let Ok(handles) = t.join()
        {
            for h in handles {
                let _ = h.join();
            }
        }
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_both_modes_side_by_side() {
        let s = Settings::default();
        let row = |mode, failed, p50| Row {
            fault: Fault::Kill,
            mode,
            reps: 5,
            sent: 6000,
            failed,
            removal_p50_ms: Some(p50),
            removal_p99_ms: Some(p50 + 10.0),
            not_removed: 0,
        };
        let t = format_table(
            &s,
            &[
                row(Mode::Haproxy, 400, 4100.0),
                row(Mode::Warden, 20, 120.0),
            ],
        );
        assert!(
            t.contains("| kill -9 (RST) | 400 of 6000 | 20 of 6000 | 5.0% | 4100 ms | 4110 ms | 120 ms | 130 ms |"),
            "{t}"
        );
    }
}
