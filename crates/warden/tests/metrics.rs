//! End-to-end tests of `GET /metrics` on a real cluster (the `warden` binary as server and
//! agents, separate processes on loopback): the exposition of the server and of an agent passes
//! `promtool check metrics`, and a real Prometheus server scrapes the server and an agent.
//!
//! Both tools come from the Debian package `prometheus` (`scripts/test.sh` installs it). When
//! they are missing the tests fail, naming the package: a silent pass would hide that the
//! exposition was never checked.
//!
//! Every process is killed by PID when its guard drops, also when an assertion fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use warden_chaos::cluster::{Cluster, free_port, wait_until};
use warden_client::Client;

use common::ChildGuard;

/// Deadline for anything the cluster or Prometheus must do by itself; far above what a healthy
/// run needs, it only matters when a test fails.
const LONG: Duration = Duration::from_secs(45);

fn start_cluster() -> Cluster {
    common::start_cluster("metrics")
}

/// A tool of the `prometheus` package, or a failure saying how to get it.
fn tool(name: &str) -> &'static str {
    let path: &'static str = match name {
        "promtool" => "/usr/bin/promtool",
        "prometheus" => "/usr/bin/prometheus",
        other => panic!("unknown tool {other}"),
    };
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package `prometheus` \
         (apt-get install prometheus; scripts/test.sh does it)"
    );
    path
}

/// `GET path` on `addr`, as text.
fn get_text(addr: &str, path: &str) -> String {
    let r = Client::new(addr)
        .unwrap()
        .request("GET", path, None, b"")
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e:#}"));
    assert_eq!(r.status, 200, "GET {path} on {addr}: {}", r.body);
    r.body
}

/// Run `promtool check metrics` on `text`; fail with its complaints.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejected the {what}'s exposition ({}):\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The value of the one sample `series` (name and labels exactly as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The probe listener (`host:port`) of `agent`, from `GET /v1/agents`.
fn probe_addr(c: &Cluster, agent: &str) -> String {
    let a = c.agent(agent).expect("agent listed");
    a["probe_addr"].as_str().expect("probe_addr").to_string()
}

#[test]
fn promtool_accepts_the_server_and_agent_expositions_after_a_recovery() {
    tool("promtool");
    let mut c = start_cluster();
    c.add_agents(2).unwrap();
    c.submit(
        "name = \"db\"\nkind = \"singleton\"\ncommand = \"{exe}\"\n\
         args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n",
    )
    .unwrap();
    let mut holder = String::new();
    assert!(
        wait_until(LONG, || {
            c.task("db/0").is_some_and(|t| {
                holder = t["agent"].as_str().unwrap_or_default().to_string();
                t["state"] == "running"
            })
        }),
        "db/0 never ran: {:?}",
        c.client.get("/v1/tasks").ok()
    );
    // Kill its agent: detection, a failure, a recovery — every histogram gets a sample.
    c.kill_agent(&holder).unwrap();
    assert!(
        wait_until(LONG, || {
            c.client.get("/v1/recoveries").ok().is_some_and(|r| {
                r.as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r["outcome"] == "succeeded"))
            })
        }),
        "no successful recovery: {:?}",
        c.client.get("/v1/recoveries").ok()
    );
    let server = c.http_addr.to_string();
    let text = get_text(&server, "/metrics");
    promtool_check("server", &text);
    assert!(
        sample(&text, "warden_recoveries_total{outcome=\"succeeded\"}") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "warden_recovery_rto_seconds_count") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "warden_detection_seconds_count") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "warden_heartbeats_received_total") > Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "warden_agents{state=\"failed\"}"),
        Some(1.0),
        "{text}"
    );
    // The failed generation has no per-agent series left; the survivor has.
    let survivor = if holder == "agent-1" {
        "agent-2"
    } else {
        "agent-1"
    };
    assert!(!text.contains(&format!("agent=\"{holder}\"")), "{text}");
    assert!(
        text.contains(&format!("warden_agent_phi{{agent=\"{survivor}\"}}")),
        "{text}"
    );

    let agent_text = get_text(&probe_addr(&c, survivor), "/metrics");
    promtool_check("agent", &agent_text);
    assert!(
        sample(&agent_text, "warden_agent_heartbeats_sent_total") > Some(0.0),
        "{agent_text}"
    );
    assert_eq!(
        sample(&agent_text, "warden_agent_tasks{state=\"running\"}"),
        Some(1.0),
        "the survivor runs db/0 now:\n{agent_text}"
    );
    assert!(
        sample(&agent_text, "warden_agent_lease_remaining_seconds") > Some(0.0),
        "{agent_text}"
    );
}

#[test]
fn a_real_prometheus_scrapes_the_server_and_an_agent() {
    let prometheus = tool("prometheus");
    let mut c = start_cluster();
    c.add_agents(1).unwrap();
    let agent = probe_addr(&c, "agent-1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n\
             \x20 - job_name: warden-server\n    static_configs:\n      - targets: ['{}']\n\
             \x20 - job_name: warden-agent\n    static_configs:\n      - targets: ['{agent}']\n",
            c.http_addr
        ),
    )
    .unwrap();
    let port = free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    // Killed by PID (and reaped) when the test ends, however it ends.
    let _prometheus = ChildGuard(child);
    let api = Client::new(&format!("127.0.0.1:{port}")).unwrap();
    let value_of = |query: &str| -> Option<f64> {
        let v: Value = api.get(&format!("/api/v1/query?query={query}")).ok()?;
        v["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    let mut server_beats = None;
    let mut agent_beats = None;
    let scraped = wait_until(LONG, || {
        server_beats = value_of("warden_heartbeats_received_total");
        agent_beats = value_of("warden_agent_heartbeats_sent_total");
        server_beats > Some(0.0) && agent_beats > Some(0.0)
    });
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        scraped,
        "Prometheus never had heartbeats (server {server_beats:?}, agent {agent_beats:?}); \
         targets: {:?}\n--- prometheus log ---\n{log}",
        api.get("/api/v1/targets").ok()
    );
    // Both targets are up, and the server's state gauges arrived too.
    assert_eq!(value_of("sum(up)"), Some(2.0), "{log}");
    assert_eq!(
        value_of("warden_agents%7Bstate%3D%22healthy%22%7D"),
        Some(1.0),
        "{log}"
    );
}
