//! End-to-end tests of traffic removal with a real HAProxy (Debian's `/usr/sbin/haproxy`): a
//! Warden cluster on loopback runs a service of the built-in HTTP workload; the server's
//! HAProxy adapter keeps a pre-sized backend in step with the service's endpoints; the test
//! sends a steady request load through HAProxy while it injects faults.
//!
//! HAProxy is started by each test on a free loopback port and killed by PID when its guard is
//! dropped (also when an assertion fails). Without the haproxy binary the tests fail with a
//! message saying what to install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_chaos::cluster::{Cluster, free_port, wait_until};

const LONG: Duration = Duration::from_secs(45);
const HAPROXY: &str = "/usr/sbin/haproxy";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_warden"))
}

/// A running HAProxy, killed by PID on drop.
struct Haproxy {
    child: Child,
    cfg: PathBuf,
    port: u16,
    socket: PathBuf,
}

impl Haproxy {
    fn start(dir: &Path, port: u16) -> Haproxy {
        Haproxy::start_cfg(dir, port, "  default_backend web\n", "")
    }

    /// HAProxy with `frontend` as the frontend's routing lines and `extra` after the `web`
    /// backend.
    fn start_cfg(dir: &Path, port: u16, frontend: &str, extra: &str) -> Haproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: apt-get install haproxy (scripts/test.sh does)"
        );
        let socket = dir.join("haproxy.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  stats socket {sock} mode 600 level admin\n\
                 defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n{frontend}\
                 backend web\n  server-template srv 1-5 127.0.0.1:1 disabled\n{extra}",
                sock = socket.display()
            ),
        )
        .unwrap();
        let mut h = Haproxy {
            child: spawn_haproxy(&cfg),
            cfg,
            port,
            socket,
        };
        h.wait_ready();
        h
    }

    fn wait_ready(&mut self) {
        assert!(
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.socket.exists()
            }),
            "HAProxy did not start"
        );
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn_haproxy(&self.cfg);
        self.wait_ready();
    }

    /// `show servers state web`: (server name, admin state bits, address, port).
    fn servers(&self) -> Vec<(String, u32, String, String)> {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return vec![];
        };
        let _ = s.write_all(b"show servers state web\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 18)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (
                    c[3].to_string(),
                    c[6].parse().unwrap_or(0),
                    c[4].to_string(),
                    c[18].to_string(),
                )
            })
            .collect()
    }

    /// Servers taking new connections, by address:port: their admin state has neither a
    /// maintenance bit (FMAINT 0x01, IMAINT 0x02, RMAINT 0x20) nor a drain bit (0x08, 0x10).
    /// CMAINT (0x04) only records `disabled` in the configuration.
    fn ready(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .servers()
            .into_iter()
            .filter(|(_, admin, _, _)| admin & 0x3b == 0)
            .map(|(_, _, a, p)| format!("{a}:{p}"))
            .collect();
        v.sort();
        v
    }
}

fn spawn_haproxy(cfg: &Path) -> Child {
    Command::new(HAPROXY)
        .arg("-db")
        .arg("-f")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy")
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET through HAProxy; the answering task id, or why it failed.
fn request(port: u16) -> Result<String, String> {
    request_path(port, "/")
}

/// One GET of `path` through HAProxy; the answering task id, or why it failed.
fn request_path(port: u16, path: &str) -> Result<String, String> {
    request_with(port, path, "")
}

/// One GET of `path` with extra header lines (`name: value\r\n` each).
fn request_with(port: u16, path: &str, headers: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out.lines().next().unwrap_or("empty answer").to_string());
    }
    out.lines()
        .find_map(|l| l.strip_prefix("task="))
        .map(|t| t.split_whitespace().next().unwrap_or("").to_string())
        .ok_or_else(|| "no task in the answer".to_string())
}

/// Every request of a load: when it was sent, and the answering task or the failure.
type RequestLog = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

/// A steady request load in a thread.
struct Load {
    stop: Arc<AtomicBool>,
    log: RequestLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        Load::start_path(port, "/", 1)
    }

    /// `threads` request loops, each sending GET `path` one after the other.
    fn start_path(port: u16, path: &'static str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let loops: Vec<_> = (0..threads)
            .map(|i| {
                let (s, l) = (stop.clone(), log.clone());
                std::thread::spawn(move || {
                    // Stagger the loops so held requests are in flight at every moment.
                    std::thread::sleep(Duration::from_millis(100 * i as u64));
                    while !s.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let r = request_path(port, path);
                        l.lock().unwrap().push((at, r));
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        let thread = std::thread::spawn(move || {
            for t in loops {
                let _ = t.join();
            }
        });
        Load {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Stop sending and wait for the requests in flight; the whole log.
    fn finish(mut self) -> Vec<(Instant, Result<String, String>)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.log.lock().unwrap().clone()
    }

    fn since(&self, t: Instant) -> Vec<Result<String, String>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(haproxy_socket: &Path, dir: &Path) -> Cluster {
    start_jobs(
        haproxy_socket,
        dir,
        &[
            "name = \"web\"\nkind = \"service\"\nreplicas = 3\ncommand = \"{exe}\"\n\
             args = [\"workload\", \"http\"]\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
             [service]\nport = \"dynamic\"\n",
        ],
    )
}

fn start_jobs(haproxy_socket: &Path, dir: &Path, jobs: &[&str]) -> Cluster {
    start_adapted(haproxy_socket, dir, "", jobs)
}

/// A cluster whose HAProxy adapter has `extra` lines in its `[[haproxy]]` table.
fn start_adapted(haproxy_socket: &Path, dir: &Path, extra: &str, jobs: &[&str]) -> Cluster {
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control.lifecycle.health.cpu]\ngood = 0.85\nbad = 0.98\nweight = 0.0\n\n\
             [control.lifecycle.health.pressure]\ngood = 10.0\nbad = 60.0\nweight = 0.0\n\n\
             [[haproxy]]\nservice = \"web\"\nsocket = \"{}\"\nbackend = \"web\"\npoll = \"200ms\"\n{extra}",
            haproxy_socket.display()
        ),
    )
    .unwrap();
    let path = cfg.display().to_string();
    let mut c = Cluster::start_with_env(exe(), &[("WARDEN_CONFIG", path.as_str())]).unwrap();
    c.add_agents(3).unwrap();
    for job in jobs {
        c.submit(job).unwrap();
    }
    c
}

fn instances(c: &Cluster) -> Vec<Value> {
    c.client
        .get("/v1/services/web")
        .ok()
        .and_then(|v| v.get("instances").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn serving(c: &Cluster) -> Vec<String> {
    let mut v: Vec<String> = instances(c)
        .iter()
        .filter(|i| i["state"] == "serving")
        .map(|i| i["addr"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_killed_agent_is_removed_from_haproxy_and_later_requests_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let haproxy = Haproxy::start(dir.path(), free_port().unwrap());
    let mut c = start(&haproxy.socket, dir.path());
    assert!(
        wait_until(LONG, || serving(&c).len() == 3
            && haproxy.ready() == serving(&c)),
        "3 instances serving in HAProxy; registry {:?}, HAProxy {:?}\n{}",
        instances(&c),
        haproxy.servers(),
        c.log("server")
    );
    let load = Load::start(haproxy.port);
    assert!(wait_until(LONG, || load
        .since(Instant::now() - Duration::from_secs(1))
        .len()
        > 20));
    // The victim: the agent serving web/0.
    let victim_inst = instances(&c)
        .into_iter()
        .find(|i| i["task"] == "web/0")
        .unwrap();
    let victim_addr = victim_inst["addr"].as_str().unwrap().to_string();
    let victim = victim_inst["agent"]
        .as_str()
        .unwrap()
        .split('#')
        .next()
        .unwrap()
        .to_string();
    let killed = Instant::now();
    c.kill_agent(&victim).unwrap();
    assert!(
        wait_until(LONG, || !haproxy.ready().contains(&victim_addr)),
        "{victim_addr} still in HAProxy: {:?}",
        haproxy.servers()
    );
    let removed = Instant::now();
    eprintln!("kill -9 → out of HAProxy: {:?}", removed - killed);
    // Every request sent after the removal succeeds, while the replacement comes and joins.
    assert!(
        wait_until(LONG, || serving(&c).len() == 3
            && !serving(&c).contains(&victim_addr)
            && haproxy.ready() == serving(&c)),
        "a replacement serves; registry {:?}, HAProxy {:?}",
        instances(&c),
        haproxy.servers()
    );
    let settle = Instant::now();
    assert!(wait_until(LONG, || load.since(settle).len() > 50));
    let after = load.since(removed);
    let failed: Vec<_> = after.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed after the removal: {failed:?}",
        failed.len(),
        after.len()
    );
    let during = load.since(killed);
    eprintln!(
        "requests since the kill: {}, failed: {}",
        during.len(),
        during.iter().filter(|r| r.is_err()).count()
    );
}

#[test]
fn the_adapter_resyncs_after_haproxy_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut haproxy = Haproxy::start(dir.path(), free_port().unwrap());
    let c = start(&haproxy.socket, dir.path());
    assert!(
        wait_until(LONG, || serving(&c).len() == 3
            && haproxy.ready() == serving(&c)),
        "3 instances serving in HAProxy; registry {:?}, HAProxy {:?}",
        instances(&c),
        haproxy.servers()
    );
    // A restart brings the configuration's servers back: all in maintenance.
    haproxy.restart();
    assert!(
        wait_until(LONG, || haproxy.ready() == serving(&c)),
        "not resynced after the restart: registry {:?}, HAProxy {:?}\n{}",
        instances(&c),
        haproxy.servers(),
        c.log("server")
    );
    let tasks: std::collections::BTreeSet<String> =
        (0..30).filter_map(|_| request(haproxy.port).ok()).collect();
    assert_eq!(tasks.len(), 3, "every instance answers: {tasks:?}");
}

/// One color of the service `web`: a job of 2 replicas.
fn color_job(name: &str, drain: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"service\"\nreplicas = 2\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"http\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
         [service]\nname = \"web\"\nport = \"dynamic\"\ndrain = \"{drain}\"\n"
    )
}

#[test]
fn a_stopped_job_drains_before_its_stop_and_no_request_fails() {
    let dir = tempfile::tempdir().unwrap();
    let haproxy = Haproxy::start(dir.path(), free_port().unwrap());
    let blue = color_job("web-blue", "3s");
    let green = color_job("web-green", "0s");
    let c = start_jobs(&haproxy.socket, dir.path(), &[&blue, &green]);
    assert!(
        wait_until(LONG, || serving(&c).len() == 4
            && haproxy.ready() == serving(&c)),
        "4 instances serving in HAProxy; registry {:?}, HAProxy {:?}\n{}",
        instances(&c),
        haproxy.servers(),
        c.log("server")
    );
    let blue_addrs: Vec<String> = instances(&c)
        .iter()
        .filter(|i| i["task"].as_str().unwrap_or("").starts_with("web-blue/"))
        .map(|i| i["addr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(blue_addrs.len(), 2);
    // Quick requests, and requests held 800 ms by the workload: some are in flight at every
    // moment, including when the job is stopped.
    let quick = Load::start(haproxy.port);
    let slow = Load::start_path(haproxy.port, "/?sleep_ms=800", 8);
    assert!(wait_until(LONG, || quick
        .since(Instant::now() - Duration::from_secs(1))
        .len()
        > 20));
    let deleted = Instant::now();
    let r = c
        .client
        .request("DELETE", "/v1/jobs/web-blue", None, b"")
        .unwrap();
    assert!(r.status < 300, "delete: {}", r.status);
    // At once: blue leaves new traffic (draining, HAProxy `drain`) but keeps running.
    assert!(
        wait_until(Duration::from_secs(2), || {
            let inst = instances(&c);
            let draining = inst
                .iter()
                .filter(|i| {
                    i["state"] == "draining"
                        && blue_addrs.contains(&i["addr"].as_str().unwrap_or("").to_string())
                })
                .count();
            draining == 2 && haproxy.ready().iter().all(|a| !blue_addrs.contains(a))
        }),
        "blue draining; registry {:?}, HAProxy {:?}",
        instances(&c),
        haproxy.servers()
    );
    let drained = Instant::now();
    // Then, after the drain, blue is stopped and removed.
    assert!(
        wait_until(LONG, || instances(&c).iter().all(|i| {
            !blue_addrs.contains(&i["addr"].as_str().unwrap_or("").to_string())
                || i["state"] == "removed"
        })),
        "blue removed; registry {:?}",
        instances(&c)
    );
    let removed = Instant::now();
    assert!(
        removed - deleted >= Duration::from_millis(2800),
        "blue removed {:?} after the delete: the drain was skipped",
        removed - deleted
    );
    // Let requests run on green alone for a while.
    std::thread::sleep(Duration::from_secs(2));
    let quick = quick.finish();
    let slow = slow.finish();
    let blue_in_flight = slow
        .iter()
        .filter(|(at, r)| {
            *at < drained
                && *at + Duration::from_millis(800) > deleted
                && r.as_ref().is_ok_and(|t| t.starts_with("web-blue/"))
        })
        .count();
    eprintln!(
        "delete → draining in HAProxy: {:?}; delete → removed: {:?}; {} quick and {} held requests; \
         {blue_in_flight} held requests on blue in flight at the delete",
        drained - deleted,
        removed - deleted,
        quick.len(),
        slow.len()
    );
    let failed: Vec<_> = quick
        .iter()
        .chain(slow.iter())
        .filter(|(_, r)| r.is_err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    assert!(
        blue_in_flight > 0,
        "no held request was on blue when it was stopped"
    );
}

/// `api_version` cohorts through a real HAProxy: while a version declaring API version 2 is
/// in its canary phase, requests asking for it (`x-api-version: 2`, routed by the map the
/// adapter keeps) reach the canary alone and every other request the old copies alone; once
/// promoted and rolled out, the map is cleared and every copy serves everyone.
#[test]
fn requests_for_a_new_api_version_reach_its_canary_alone_until_the_rollout_ends() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("cohort.map");
    std::fs::write(&map, "").unwrap();
    let haproxy = Haproxy::start_cfg(
        dir.path(),
        free_port().unwrap(),
        &format!(
            "  use_backend %[req.hdr(x-api-version),map({},web)]\n  default_backend web\n",
            map.display()
        ),
        "backend web_next\n  server-template srv 1-5 127.0.0.1:1 disabled\n",
    );
    let job = |api: &str, args: &str| {
        format!(
            "name = \"web\"\nkind = \"service\"\nreplicas = 3\ncommand = \"{{exe}}\"\n\
             args = [\"workload\", \"http\"{args}]\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
             [service]\nport = \"dynamic\"\napi_version = \"{api}\"\n\
             [update]\ncanary = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"\n"
        )
    };
    let c = start_adapted(
        &haproxy.socket,
        dir.path(),
        &format!(
            "cohort_backend = \"web_next\"\ncohort_map = \"{}\"\n",
            map.display()
        ),
        &[&job("1", "")],
    );
    assert!(
        wait_until(LONG, || serving(&c).len() == 3
            && haproxy.ready().len() == 3),
        "{:?}\n{}",
        serving(&c),
        c.log("server")
    );
    c.submit(&job("2", ", \"--delay-ms\", \"1\"")).unwrap();
    let rollout = || c.client.get("/v1/jobs/web/rollout").unwrap_or(Value::Null);
    assert!(
        wait_until(LONG, || rollout()["phase"] == "awaiting_promotion"),
        "{}\n{}",
        rollout(),
        c.log("server")
    );
    let canary: Vec<String> = rollout()["cohort"]["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(canary.len(), 1, "{}", rollout());
    assert_eq!(rollout()["cohort"]["api_version"], "2");
    let status = Command::new(exe())
        .args(["rollout", "status", "web"])
        .env("WARDEN_ADDR", format!("http://{}", c.http_addr))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!(
            "cohort: requests for API version 2 go to {} alone; every other request to the old copies",
            canary[0]
        )),
        "{status}"
    );
    // The adapter applies the cohort within its poll; then the routing holds every time.
    let cohort_only = || {
        (0..10).all(|_| {
            request_with(haproxy.port, "/", "x-api-version: 2\r\n") == Ok(canary[0].clone())
        })
    };
    assert!(wait_until(LONG, cohort_only), "{}", c.log("server"));
    for _ in 0..30 {
        let old = request(haproxy.port).expect("a request without the header");
        assert_ne!(
            old, canary[0],
            "the canary served a request outside its cohort"
        );
        assert_eq!(
            request_with(haproxy.port, "/", "x-api-version: 2\r\n"),
            Ok(canary[0].clone())
        );
        // Another API version is not the cohort.
        let other = request_with(haproxy.port, "/", "x-api-version: 1\r\n").expect("v1");
        assert_ne!(other, canary[0]);
    }
    c.client
        .request("POST", "/v1/jobs/web/rollout/promote", None, b"")
        .expect("promote");
    assert!(
        wait_until(LONG, || rollout()["phase"] == "succeeded"),
        "{}\n{}",
        rollout(),
        c.log("server")
    );
    assert!(rollout().get("cohort").is_none(), "{}", rollout());
    // Every copy now serves every request, with or without the header.
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        wait_until(LONG, || {
            for h in ["", "x-api-version: 2\r\n"] {
                match request_with(haproxy.port, "/", h) {
                    Ok(t) => {
                        seen.insert(t);
                    }
                    Err(_) => return false,
                }
            }
            seen.len() == 3
        }),
        "{seen:?}\n{}",
        c.log("server")
    );
}
