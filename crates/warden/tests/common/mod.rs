//! Helpers shared by the real-process tests: process guards that kill by PID on drop (even
//! when a test fails), liveness checks that count zombies as dead, and condition waits with
//! deadlines.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `warden` binary under test.
pub fn warden_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

/// Start a real cluster's server (no agents yet) with the chaos harness's server
/// configuration (`warden_chaos::run::SERVER_CONFIG`: every agent runs on this one machine, so
/// host CPU and pressure, which say nothing about any one agent, are switched off). The file is
/// written under a unique name, then renamed into place: tests run in parallel processes and
/// must never read a half-written file. `name` keeps each test binary's file apart.
pub fn start_cluster(name: &str) -> warden_chaos::cluster::Cluster {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("warden-e2e-{name}-server.toml"));
    let tmp = dir.join(format!(
        "warden-e2e-{name}-server.toml.{}",
        std::process::id()
    ));
    std::fs::write(&tmp, warden_chaos::run::SERVER_CONFIG).expect("write the server config");
    std::fs::rename(&tmp, &path).expect("put the server config in place");
    let path = path.display().to_string();
    warden_chaos::cluster::Cluster::start_with_env(
        &warden_bin(),
        &[("WARDEN_CONFIG", path.as_str())],
    )
    .expect("start the cluster")
}

// Liveness (zombies count as dead) and condition waits are the chaos harness's own.
pub use warden_chaos::cluster::{is_alive, wait_until};

/// Kills a process (or its whole process group) by id when dropped, if it is still alive.
pub struct PidGuard {
    pid: i32,
    group: bool,
    /// The process's start time (clock ticks since boot) when the guard was made: PIDs are
    /// reused quickly, and a guard must never kill a stranger that got its number.
    start: Option<u64>,
}

/// `(start time, process group)` of a live process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(u64, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state is field 3 of stat, pgrp 5, starttime 22 (1-based).
    Some((fields.get(19)?.parse().ok()?, fields.get(2)?.parse().ok()?))
}

impl PidGuard {
    /// Guard a single process.
    pub fn process(pid: i32) -> Self {
        PidGuard {
            pid,
            group: false,
            start: stat(pid).map(|s| s.0),
        }
    }

    /// Guard the process group led by `pid`.
    pub fn group(pid: i32) -> Self {
        PidGuard {
            pid,
            group: true,
            start: stat(pid).map(|s| s.0),
        }
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        let Some(start) = self.start else { return };
        if !self.group {
            if is_alive(self.pid) && stat(self.pid).map(|s| s.0) == Some(start) {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            }
            return;
        }
        // Members may outlive the leader. Kill the processes of that group that started no
        // earlier than its leader: a group id can only be reused once the group is empty.
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((started, pgrp)) = stat(pid)
                && pgrp == self.pid
                && started >= start
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Kills and reaps a child when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid fits")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A shim run directly by the test, which plays the agent: it holds the control pipe and
/// reads the status lines.
pub struct ShimProc {
    /// Guards of processes learned about while running (task group, grandchildren). Dropped
    /// before the shim.
    pub guards: Vec<PidGuard>,
    child: ChildGuard,
    control: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every status line received so far.
    pub seen: Vec<String>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
}

impl ShimProc {
    /// Start `warden shim` for task `t/0` with logs in `dir`, passing `env` as the whole
    /// environment (plus PATH).
    pub fn spawn(dir: &Path, deadline_ms: Option<u64>, command: &[&str]) -> ShimProc {
        Self::spawn_with_env(dir, deadline_ms, command, &[])
    }

    pub fn spawn_with_env(
        dir: &Path,
        deadline_ms: Option<u64>,
        command: &[&str],
        env: &[(&str, &str)],
    ) -> ShimProc {
        let stdout_log = dir.join("task.stdout.log");
        let stderr_log = dir.join("task.stderr.log");
        let shim_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shim.log"))
            .expect("open shim log");
        let mut cmd = Command::new(warden_bin());
        cmd.arg("shim")
            .args(["--task", "t/0", "--epoch", "3"])
            .arg("--stdout")
            .arg(&stdout_log)
            .arg("--stderr")
            .arg(&stderr_log);
        if let Some(ms) = deadline_ms {
            cmd.args(["--deadline-ms", &ms.to_string()]);
        }
        cmd.arg("--")
            .args(command)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(shim_log);
        let mut child = cmd.spawn().expect("spawn shim");
        let control = child.stdin.take();
        let stdout = child.stdout.take().expect("status pipe");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ShimProc {
            guards: Vec::new(),
            child: ChildGuard(child),
            control,
            lines,
            seen: Vec::new(),
            stdout_log,
            stderr_log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Write one control line.
    pub fn send(&mut self, line: &str) {
        let pipe = self.control.as_mut().expect("control pipe open");
        writeln!(pipe, "{line}").expect("write control line");
    }

    /// Close the control pipe, as a dying agent does.
    pub fn close_control(&mut self) {
        self.control = None;
    }

    /// Wait for a status line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(line.clone());
        }
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
    }

    /// Wait for `started <pid>`, guard the task's group, and return the pid.
    pub fn task_pid(&mut self) -> i32 {
        let line = self
            .wait_line("started ", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no `started` line; saw {:?}", self.seen));
        let pid: i32 = line["started ".len()..].parse().expect("pid");
        self.guards.push(PidGuard::group(pid));
        pid
    }

    /// Wait for the shim to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.0.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }

    /// Collect the remaining status lines (after the shim exited).
    pub fn drain_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        &self.seen
    }
}

impl Drop for ShimProc {
    fn drop(&mut self) {
        // The guards run first (task group, grandchildren), then the shim's ChildGuard.
        self.guards.clear();
    }
}

/// The first line of a file, once it has one.
pub fn first_line(path: &Path, timeout: Duration) -> Option<String> {
    let mut found = None;
    wait_until(timeout, || {
        found = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string));
        found.is_some()
    });
    found
}
