//! Task health checks: the agent's view of whether a running task does its job, from the
//! job's [`HealthCheck`].
//!
//! Three probes, kept dependency-free on purpose (the agent must stay small):
//!
//! - **HTTP**: a hand-written `GET <path> HTTP/1.0` to `127.0.0.1:<port>`; healthy on a 2xx
//!   status line. Only the status line is read. An application-level answer is the only proof
//!   that a process runs: the kernel completes TCP handshakes for a stopped process too.
//! - **TCP**: a connect to `127.0.0.1:<port>` (weaker, for the reason above).
//! - **Exec**: a command run directly (never through a shell) in its own process group, with
//!   the task's environment and as the task's user; healthy on exit 0; the whole group is
//!   SIGKILLed on timeout.
//!
//! A [`HealthTracker`] turns probe results into verdicts: healthy after a success, unhealthy
//! after `failures` consecutive failures, and reports only changes. [`run`] drives a check on
//! its interval until cancelled.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use warden_core::HealthCheck;

use crate::isolation::TaskUser;

/// Longest HTTP status line read, in bytes.
const MAX_STATUS_LINE: usize = 1024;

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not finish within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Address probed.
        addr: SocketAddr,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed after connecting.
    #[error("HTTP exchange: {0}")]
    Io(#[source] io::Error),
    /// The answer was not an HTTP status line.
    #[error("not an HTTP response: {0:?}")]
    BadResponse(String),
    /// The HTTP status was not 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The exec check's command could not be started.
    #[error("start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The spawn error.
        #[source]
        source: io::Error,
    },
    /// The exec check's command exited unsuccessfully.
    #[error("command {0}")]
    Exit(std::process::ExitStatus),
    /// The exec check has an empty command.
    #[error("empty command")]
    EmptyCommand,
}

/// Counts consecutive failures and reports verdict changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    threshold: u32,
    consecutive_failures: u32,
    healthy: Option<bool>,
}

impl HealthTracker {
    /// A tracker that declares a task unhealthy after `failures` consecutive failed probes
    /// (at least 1).
    pub fn new(failures: u32) -> Self {
        HealthTracker {
            threshold: failures.max(1),
            consecutive_failures: 0,
            healthy: None,
        }
    }

    /// The current verdict; `None` until the first success or `failures` failures.
    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }

    /// Record one probe result; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        let verdict = if ok {
            self.consecutive_failures = 0;
            true
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures < self.threshold {
                return None;
            }
            false
        };
        if self.healthy == Some(verdict) {
            return None;
        }
        self.healthy = Some(verdict);
        Some(verdict)
    }
}

/// Run one probe of `check`, bounded by its timeout. `env` is the environment of an exec
/// check's command (the task's).
pub async fn probe(check: &HealthCheck, env: &BTreeMap<String, String>) -> Result<(), ProbeError> {
    probe_as(check, env, None).await
}

/// [`probe`], running an exec check's command as `user` (the task's user) when given.
pub async fn probe_as(
    check: &HealthCheck,
    env: &BTreeMap<String, String>,
    user: Option<&TaskUser>,
) -> Result<(), ProbeError> {
    let (_, limit, _) = check.timing();
    match check {
        HealthCheck::Http { port, path, .. } => timeout(limit, http_get(*port, path))
            .await
            .map_err(|_| ProbeError::Timeout(limit))?,
        HealthCheck::Tcp { port, .. } => {
            let addr = loopback(*port);
            timeout(limit, TcpStream::connect(addr))
                .await
                .map_err(|_| ProbeError::Timeout(limit))?
                .map(drop)
                .map_err(|source| ProbeError::Connect { addr, source })
        }
        HealthCheck::Exec { command, .. } => exec(command, env, user, limit).await,
    }
}

/// Probe `check` every interval (the first probe one interval after the start, to give the
/// task time to come up) until `cancel`, calling `on_change` with each new verdict.
pub async fn run(
    check: HealthCheck,
    env: BTreeMap<String, String>,
    cancel: CancellationToken,
    on_change: impl FnMut(bool) + Send,
) {
    run_as(check, env, None, cancel, on_change).await;
}

/// [`run`], with exec checks run as `user` (the task's user) when given.
pub async fn run_as(
    check: HealthCheck,
    env: BTreeMap<String, String>,
    user: Option<TaskUser>,
    cancel: CancellationToken,
    mut on_change: impl FnMut(bool) + Send,
) {
    let (interval, _, failures) = check.timing();
    let mut tracker = HealthTracker::new(failures);
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            result = probe_as(&check, &env, user.as_ref()) => result,
        };
        if let Err(e) = &result {
            debug!(error = %e, "health probe failed");
        }
        if let Some(healthy) = tracker.observe(result.is_ok()) {
            on_change(healthy);
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn http_get(port: u16, path: &str) -> Result<(), ProbeError> {
    let addr = loopback(port);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: warden-agent\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut buf).await.map_err(ProbeError::Io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status_line = head
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let code = parse_status_line(&status_line)
        .ok_or_else(|| ProbeError::BadResponse(status_line.clone()))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status(code))
    }
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut words = line.split_ascii_whitespace();
    let version = words.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

async fn exec(
    command: &[String],
    env: &BTreeMap<String, String>,
    user: Option<&TaskUser>,
    limit: Duration,
) -> Result<(), ProbeError> {
    let (program, args) = command.split_first().ok_or(ProbeError::EmptyCommand)?;
    let mut cmd = Command::new(program);
    if let Some(u) = user {
        // Supplementary groups are cleared too, as for the task.
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut child = cmd
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: program.clone(),
            source,
        })?;
    match timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(ProbeError::Exit(status)),
        Ok(Err(e)) => Err(ProbeError::Io(e)),
        Err(_) => {
            // Not reaped yet, so its pid still names its group.
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(ProbeError::Timeout(limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn tracker_reports_only_changes() {
        // (probe ok?, expected report)
        let steps = [
            (false, None),
            (false, None),
            (false, Some(false)), // third consecutive failure
            (false, None),
            (true, Some(true)),
            (true, None),
            (false, None),
            (true, None), // the failure streak was broken
            (false, None),
            (false, None),
            (false, Some(false)),
        ];
        let mut tracker = HealthTracker::new(3);
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            assert_eq!(tracker.observe(ok), want, "step {i}");
        }
        assert_eq!(tracker.healthy(), Some(false));
    }

    #[test]
    fn first_success_is_reported_and_threshold_is_at_least_one() {
        let mut tracker = HealthTracker::new(0);
        assert_eq!(tracker.healthy(), None);
        assert_eq!(tracker.observe(true), Some(true));
        assert_eq!(tracker.observe(false), Some(false));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2000 no"), None);
        assert_eq!(parse_status_line(""), None);
    }

    fn http(port: u16, path: &str) -> HealthCheck {
        HealthCheck::Http {
            port,
            path: path.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failures: 1,
        }
    }

    /// A one-shot-per-connection HTTP server on 127.0.0.1:0 answering `/ok` with 200 and
    /// everything else with 500; `/hang` never answers.
    async fn http_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    if request.starts_with("GET /hang ") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let status = if request.starts_with("GET /ok HTTP/1.0\r\n") {
                        "200 OK"
                    } else {
                        "500 Internal Server Error"
                    };
                    let _ = conn
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        port
    }

    /// A port with nothing listening: bind, read the port, close.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn http_probe_wants_2xx() {
        let port = http_server().await;
        let env = BTreeMap::new();
        probe(&http(port, "/ok"), &env).await.expect("healthy");
        assert!(matches!(
            probe(&http(port, "/broken"), &env).await,
            Err(ProbeError::Status(500))
        ));
        let hang = HealthCheck::Http {
            port,
            path: "/hang".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            failures: 1,
        };
        assert!(matches!(
            probe(&hang, &env).await,
            Err(ProbeError::Timeout(_))
        ));
        assert!(matches!(
            probe(&http(closed_port(), "/ok"), &env).await,
            Err(ProbeError::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn tcp_probe_wants_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tcp = |port| HealthCheck::Tcp {
            port,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failures: 1,
        };
        let env = BTreeMap::new();
        probe(&tcp(port), &env).await.expect("healthy");
        assert!(probe(&tcp(closed_port()), &env).await.is_err());
    }

    fn exec_check(command: &[&str], timeout_ms: u64) -> HealthCheck {
        HealthCheck::Exec {
            command: command.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(timeout_ms),
            failures: 1,
        }
    }

    #[tokio::test]
    async fn exec_probe_wants_exit_zero_within_the_timeout() {
        let env: BTreeMap<String, String> = [
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("PROBE".to_string(), "yes".to_string()),
        ]
        .into();
        probe(&exec_check(&["true"], 2000), &env)
            .await
            .expect("true is healthy");
        // The task's environment reaches the command.
        probe(
            &exec_check(&["sh", "-c", "test \"$PROBE\" = yes"], 2000),
            &env,
        )
        .await
        .expect("env passed");
        assert!(matches!(
            probe(&exec_check(&["false"], 2000), &env).await,
            Err(ProbeError::Exit(_))
        ));
        assert!(matches!(
            probe(&exec_check(&["/nonexistent/probe"], 2000), &env).await,
            Err(ProbeError::Spawn { .. })
        ));
        let started = std::time::Instant::now();
        assert!(matches!(
            probe(&exec_check(&["sh", "-c", "sleep 30 & wait"], 200), &env).await,
            Err(ProbeError::Timeout(_))
        ));
        // The group was killed, so waiting did not take the 30 s.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn run_reports_transitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("healthy");
        let check = HealthCheck::Exec {
            command: vec!["test".into(), "-e".into(), flag.display().to_string()],
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(50),
            failures: 2,
        };
        let env: BTreeMap<String, String> =
            [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let runner = tokio::spawn(run(check, env, cancel.clone(), move |h| {
            let _ = tx.send(h);
        }));
        let limit = Duration::from_secs(10);
        assert_eq!(timeout(limit, rx.recv()).await, Ok(Some(false)));
        std::fs::write(&flag, b"").expect("write flag");
        assert_eq!(timeout(limit, rx.recv()).await, Ok(Some(true)));
        std::fs::remove_file(&flag).expect("remove flag");
        assert_eq!(timeout(limit, rx.recv()).await, Ok(Some(false)));
        cancel.cancel();
        timeout(Duration::from_secs(10), runner)
            .await
            .expect("stops when cancelled")
            .expect("no panic");
    }
}
