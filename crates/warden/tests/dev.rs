//! `warden dev`, the README's first command: it brings up a server and agents as processes
//! (agent sessions over mutual TLS), runs the sample jobs, and on Ctrl-C (SIGINT) stops every process it started — none is left
//! behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use warden_chaos::cluster::{free_port, wait_until};
use warden_client::Client;

/// Processes whose command line mentions `needle` (our data dir: every process of this dev
/// cluster has it among its arguments, tasks included through their log paths in the shim).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle)
            && warden_chaos::cluster::is_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Every descendant of `root`, with its command line (to recognise it later despite PID reuse).
fn descendants(root: i32) -> Vec<(i32, Vec<u8>)> {
    let mut parent = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent.push((pid, ppid));
        }
    }
    let mut out: Vec<i32> = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.into_iter()
        .skip(1)
        .map(|pid| {
            (
                pid,
                std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
        })
        .collect()
}

struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warden dev` runs the sample jobs on its agents, and SIGINT stops every process it started.
#[test]
fn dev_runs_the_sample_jobs_and_ctrl_c_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev-data");
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["dev", "--agents", "2", "--plain"])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dev = Guard(child);
    let client = Client::new(&format!("http://127.0.0.1:{http}")).unwrap();
    let running = || {
        client
            .get("/v1/tasks")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|tasks| {
                tasks.len() == 3
                    && tasks
                        .iter()
                        .all(|t| t.get("state").and_then(Value::as_str) == Some("running"))
            })
    };
    assert!(
        wait_until(Duration::from_secs(60), running),
        "sample jobs not running: {:?}",
        client.get("/v1/tasks").ok()
    );
    // Its agent sessions use mutual TLS by default, with certificates made for the run.
    assert!(data.join("tls/ca.pem").exists() && data.join("tls/agent-agent-2.pem").exists());
    let needle = data.display().to_string();
    assert!(
        processes_mentioning(&needle).len() >= 3,
        "server and agents should be running"
    );
    // Server, 2 agents, 3 shims and 3 tasks.
    let tree = descendants(i32::try_from(dev.0.id()).unwrap());
    assert!(tree.len() >= 9, "{} processes under warden dev", tree.len());

    kill(
        Pid::from_raw(i32::try_from(dev.0.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            status = dev.0.try_wait().unwrap();
            status.is_some()
        }),
        "warden dev did not stop after SIGINT"
    );
    assert!(status.unwrap().success(), "{status:?}");
    let still_there = || -> Vec<i32> {
        tree.iter()
            .filter(|(pid, cmd)| {
                warden_chaos::cluster::is_alive(*pid)
                    && std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default() == *cmd
            })
            .map(|(pid, _)| *pid)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || processes_mentioning(&needle)
            .is_empty()
            && still_there().is_empty()),
        "left behind: {:?} {:?}",
        processes_mentioning(&needle),
        still_there()
    );
}
