//! Real etcd clusters for tests (cargo feature `etcd-testing`): [`EtcdCluster`] starts 1 or 3
//! `etcd` processes (Debian's `etcd-server`, `/usr/bin/etcd`; another binary through
//! `WARDEN_ETCD_BIN`) on free 127.0.0.1 ports, with data directories in a temporary directory,
//! and kills them when dropped — also when a test panics.
//!
//! ```no_run
//! use warden_store::etcd::testing::EtcdCluster;
//! use warden_store::etcd::EtcdStore;
//! use warden_store::{Store, StoreOptions};
//!
//! let cluster = EtcdCluster::start(3)?;
//! let store = EtcdStore::connect(cluster.config("/test"), StoreOptions::default())?;
//! assert_eq!(store.next_generation("a")?, 1);
//! cluster.kill(0); // SIGKILL one member; two still have quorum
//! assert_eq!(store.next_generation("a")?, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! It only ever signals the processes it started, by their PID (through their `Child`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::EtcdConfig;

/// How long [`EtcdCluster::start`] waits for a healthy cluster.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary: `WARDEN_ETCD_BIN`, else `etcd` on the `PATH`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("WARDEN_ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster of test members. See the [module documentation](self).
pub struct EtcdCluster {
    members: Mutex<Vec<Member>>,
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// `n` distinct ports that were free a moment ago.
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// One HTTP/1.0 exchange with the member on `port`: the response body, if it answered.
fn http(port: u16, request: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// Whether the member answering on `port` reports itself healthy (it has a leader).
fn healthy(port: u16) -> bool {
    http(port, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_some_and(|body| body.contains("\"health\":\"true\""))
}

/// `(member id, raft leader's member id)` as the member on `port` reports them.
fn status(port: u16) -> Option<(String, String)> {
    let body = http(
        port,
        "POST /v3/maintenance/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let member = v.get("header")?.get("member_id")?.as_str()?.to_owned();
    let leader = v.get("leader")?.as_str()?.to_owned();
    Some((member, leader))
}

impl EtcdCluster {
    /// Start `members` etcd processes (1 or 3; any n ≥ 1 works) as one new cluster and wait
    /// until every member is healthy (at most [`START_TIMEOUT`]). Retries with other ports if
    /// a port was taken in between.
    pub fn start(members: usize) -> io::Result<EtcdCluster> {
        if members == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an etcd cluster needs at least one member",
            ));
        }
        let mut last = None;
        for _ in 0..3 {
            match EtcdCluster::try_start(members) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn try_start(n: usize) -> io::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("warden-etcd-").tempdir()?;
        let ports = free_ports(2 * n)?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "warden-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let cluster = EtcdCluster {
            members: Mutex::new(members),
            initial_cluster,
            token,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(START_TIMEOUT)?;
        Ok(cluster)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The tail of a member's log, for error messages.
    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    fn spawn(&self, i: usize) -> io::Result<()> {
        let mut members = self.lock();
        let m = members
            .get_mut(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such member"))?;
        if m.child.is_some() {
            return Ok(());
        }
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&m.name))?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let data = self.dir.path().join(&m.name);
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "start {} (Debian package etcd-server; or set WARDEN_ETCD_BIN): {e}",
                        etcd_binary().display()
                    ),
                )
            })?;
        m.child = Some(child);
        Ok(())
    }

    /// Wait until every running member reports itself healthy (has a leader), at most
    /// `timeout`. Fails early, with the end of its log, if a member exited.
    pub fn wait_healthy(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            {
                let mut members = self.lock();
                for m in members.iter_mut() {
                    let Some(child) = m.child.as_mut() else {
                        continue;
                    };
                    if let Some(status) = child.try_wait()? {
                        m.child = None;
                        let name = m.name.clone();
                        drop(members);
                        return Err(io::Error::other(format!(
                            "etcd member {name} exited ({status}); its log ends:\n{}",
                            self.log_tail(&name)
                        )));
                    }
                    pending.push((m.name.clone(), m.client_port));
                }
            }
            pending.retain(|(_, port)| !healthy(*port));
            let Some((name, _)) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "etcd member {name} not healthy within {timeout:?}; its log ends:\n{}",
                        self.log_tail(name)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the member that is the raft leader now, if a running member knows one.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<(usize, u16)> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .map(|(i, m)| (i, m.client_port))
            .collect();
        let statuses: Vec<(usize, (String, String))> = running
            .into_iter()
            .filter_map(|(i, port)| status(port).map(|s| (i, s)))
            .collect();
        let (_, (_, leader)) = statuses.first()?;
        statuses
            .iter()
            .find(|(_, (member, _))| member == leader)
            .map(|(i, _)| *i)
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cluster has no member (never: [`EtcdCluster::start`] refuses 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Client endpoints of every member, running or not: `http://127.0.0.1:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd://127.0.0.1:p1,...[/prefix]` for every member, as `warden server --store` takes.
    pub fn url(&self, prefix: &str) -> String {
        let hosts = self
            .lock()
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",");
        let prefix = prefix.trim_start_matches('/');
        if prefix.is_empty() {
            format!("etcd://{hosts}")
        } else {
            format!("etcd://{hosts}/{prefix}")
        }
    }

    /// An [`EtcdConfig`] for every member under `prefix` (default timeouts).
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        let prefix = format!("/{}", prefix.trim_matches('/'));
        EtcdConfig::new(self.endpoints(), prefix)
    }

    /// PID of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.lock()
            .get(i)
            .and_then(|m| m.child.as_ref())
            .map(Child::id)
    }

    /// Kill member `i` with SIGKILL and reap it. A no-op if it is not running.
    pub fn kill(&self, i: usize) {
        let child = self.lock().get_mut(i).and_then(|m| m.child.take());
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start member `i` again on its data directory and ports (after [`EtcdCluster::kill`]).
    /// Does not wait for it: see [`EtcdCluster::wait_healthy`] (a lone member of three never
    /// becomes healthy).
    pub fn restart(&self, i: usize) -> io::Result<()> {
        self.spawn(i)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let n = self.lock().len();
        for i in 0..n {
            self.kill(i);
        }
        // The temporary directory (data and logs) is removed by its own drop.
    }
}
