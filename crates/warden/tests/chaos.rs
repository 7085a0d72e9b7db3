//! `warden chaos run` end to end: the shipped crash scenario runs through the real binary
//! (a real server and agents, real kill -9s) and must pass every checker, with every fault
//! detected. The checkers' ability to fail is tested in `warden-chaos` on hand-built records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn crash_scenario_passes_its_checkers_and_detects_every_fault() {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/crash.toml");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["chaos", "run"])
        .arg(&scenario)
        .arg("--out")
        .arg(out.path())
        .args(["--seed", "7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let logs = || {
        let mut s = String::new();
        for name in ["server", "agent-1", "agent-2", "agent-3"] {
            let text = std::fs::read_to_string(out.path().join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!(
                "--- {name} (tail) ---\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
        s
    };
    assert!(
        run.status.success(),
        "chaos run failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        run.status,
        logs()
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["violations"], 0, "{stdout}");
    let checkers = report["checkers"].as_array().unwrap();
    assert_eq!(checkers.len(), 5);
    assert!(checkers.iter().all(|c| c["passed"] == true), "{stdout}");
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 3, "{stdout}");
    for f in faults {
        assert!(f["skipped"].is_null(), "fault skipped: {f}\n{stdout}");
        assert!(
            f["detected_ms"].as_u64().is_some(),
            "fault not detected: {f}\n{stdout}\n{}",
            logs()
        );
    }
    // The singleton holder was killed: its singleton must have been replaced.
    let first = &faults[0];
    assert!(
        first["recoveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["singleton"] == true && r["rto_ms"].as_u64().is_some()),
        "no singleton recovery after killing its holder: {first}\n{stdout}"
    );
    assert!(report["samples"].as_u64().unwrap() > 100, "{stdout}");
}

/// A run whose checker finds a violation exits non-zero and says so: here the RTO bound
/// (1 ms) cannot be met after the singleton's agent is killed for good.
#[test]
fn a_violation_makes_the_run_fail() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("impossible.toml");
    std::fs::write(
        &scenario,
        r#"
name = "impossible"
agents = 2
duration = "6s"
settle = "4s"
rto_bound = "1ms"
[[workload]]
name = "db"
kind = "singleton"
[[fault]]
kind = "kill"
at = "1s"
target = "singleton-holder"
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["chaos", "run"])
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("checker violation"), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let lost = report["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["checker"] == "no-lost-work")
        .unwrap();
    assert_eq!(lost["passed"], false, "{stdout}");
    // The other properties still hold.
    assert!(
        report["checkers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["checker"] != "no-lost-work")
            .all(|c| c["passed"] == true),
        "{stdout}"
    );
}

/// Run `warden chaos run` on `scenario` with `env`; returns whether it succeeded, the parsed
/// report, and a description (stdout, stderr, log tails) for failure messages.
fn run_scenario(scenario: &Path, seed: u64, env: &[(&str, &str)]) -> (bool, Value, String) {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(["chaos", "run"])
        .arg(scenario)
        .arg("--out")
        .arg(out.path())
        .args(["--seed", &seed.to_string()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = cmd.output().unwrap();
    let mut text = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}\n",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    if let Ok(entries) = std::fs::read_dir(out.path().join("logs")) {
        for e in entries.flatten() {
            let log = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "--- {} (tail) ---\n{}\n",
                e.file_name().to_string_lossy(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            ));
        }
    }
    let report = std::fs::read(out.path().join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (run.status.success(), report, text)
}

fn ci_scenario(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../scenarios/{name}.toml"))
}

/// Whether this machine runs chaos clusters in network namespaces (root with `ip` and
/// `nft`); the test command installs nftables, and CI runs as root.
fn netns_expected() -> bool {
    warden_chaos::netns::unavailable().is_none()
}

/// Every checker passed and every fault was injected (none skipped).
fn assert_clean(ok: bool, report: &Value, text: &str) {
    assert!(ok, "chaos run failed\n{text}");
    assert_eq!(report["violations"], 0, "{text}");
    assert!(
        report["checkers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["passed"] == true),
        "{text}"
    );
    for f in report["faults"].as_array().unwrap() {
        assert!(f["skipped"].is_null(), "fault skipped: {f}\n{text}");
    }
    if netns_expected() {
        assert_eq!(report["network"], "netns", "{text}");
    }
}

/// The detection time of fault `i`, which must have been detected.
fn detected_ms(report: &Value, i: usize, text: &str) -> u64 {
    report["faults"][i]["detected_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("fault {i} not detected\n{text}"))
}

#[test]
fn ci_pause_scenario_detects_the_long_pause_and_ignores_the_short_one() {
    let (ok, report, text) = run_scenario(&ci_scenario("ci/pause"), 3, &[]);
    assert_clean(ok, &report, &text);
    // The long pause is detected and its singleton replaced; the 800 ms one is not failed.
    detected_ms(&report, 0, &text);
    assert!(report["faults"][1]["failed_ms"].is_null(), "{text}");
    assert!(
        report["faults"][0]["recoveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["singleton"] == true && r["rto_ms"].as_u64().is_some()),
        "{text}"
    );
}

#[test]
fn ci_hosts_scenario_keeps_pressure_inside_one_agents_host_without_false_verdicts() {
    if !nix::unistd::geteuid().is_root() {
        return; // host cgroups need root; CI runs as root
    }
    let (ok, report, text) = run_scenario(&ci_scenario("ci/hosts"), 7, &[]);
    assert_clean(ok, &report, &text);
    assert!(
        text.contains("every agent in a host cgroup of its own"),
        "{text}"
    );
    // Nothing was down: no fault may end in a Failed verdict.
    for (i, f) in report["faults"].as_array().unwrap().iter().enumerate() {
        assert!(
            f["failed_ms"].is_null(),
            "fault {i} led to a Failed verdict\n{text}"
        );
    }
    // The hosts' cgroups are gone with the cluster.
    let layout = warden_agent::cgroup::detect().expect("cgroups");
    for h in &layout.hierarchies {
        let left: Vec<String> = std::fs::read_dir(&h.mount)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.to_lowercase().starts_with("warden_cluster_") && n.ends_with("-cg"))
            .collect();
        assert!(left.is_empty(), "{left:?} left in {}", h.mount.display());
    }
}

#[test]
fn ci_partition_scenario_detects_full_and_one_way_cuts_without_two_copies() {
    let (ok, report, text) = run_scenario(&ci_scenario("ci/partition"), 5, &[]);
    assert_clean(ok, &report, &text);
    detected_ms(&report, 0, &text);
    detected_ms(&report, 1, &text);
}

#[test]
fn ci_lossy_scenario_declares_nobody_failed() {
    let (ok, report, text) = run_scenario(&ci_scenario("ci/lossy"), 1, &[]);
    assert_clean(ok, &report, &text);
    // No agent was down, so no transition to Failed may appear in the run.
    let failed = report["faults"][0]["false_verdicts"].as_u64().unwrap_or(0);
    assert_eq!(failed, 0, "{text}");
}

#[test]
fn isolation_scenario_holds_the_brake_and_recovers_every_slot() {
    let (ok, report, text) = run_scenario(&ci_scenario("isolation"), 1, &[]);
    assert_clean(ok, &report, &text);
}

/// A checker that cannot fail is worthless: with self-fencing deliberately broken (a
/// test-only switch of debug builds), a partitioned agent keeps its singleton while the
/// server replaces it, and the at-most-one checker must say so.
#[test]
fn at_most_one_catches_a_broken_fencing_rule() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("broken.toml");
    std::fs::write(
        &scenario,
        r#"
name = "broken-fencing"
agents = 3
duration = "20s"
settle = "10s"
[[workload]]
name = "db"
kind = "singleton"
[[fault]]
kind = "partition"
at = "1s"
duration = "8s"
target = "singleton-holder"
"#,
    )
    .unwrap();
    let (ok, report, text) = run_scenario(&scenario, 1, &[("WARDEN_TEST_BREAK_FENCING", "1")]);
    assert!(!ok, "the run must fail\n{text}");
    let amo = report["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["checker"] == "at-most-one")
        .unwrap();
    assert_eq!(amo["passed"], false, "{text}");
    assert!(
        amo["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("db/0"),
        "{text}"
    );
}

/// The replicated control plane under its own faults: the leading server is killed twice,
/// and each time, one second after the new leader starts acting, the singleton's agent. Every
/// checker passes, every failover completes (a replica other than the killed one leads with a
/// higher term), and the new leader detects the killed agents and runs their work again.
#[cfg(feature = "etcd")]
#[test]
fn ci_leader_failover_scenario_fails_over_and_recovers_agents_after_it() {
    let (ok, report, text) = run_scenario(&ci_scenario("ci/leader-failover"), 1, &[]);
    assert_clean(ok, &report, &text);
    let failovers = report["failovers"].as_array().unwrap();
    assert_eq!(failovers.len(), 2, "{text}");
    for f in failovers {
        assert!(
            f["acting_ms"].as_u64().is_some(),
            "incomplete failover {f}\n{text}"
        );
        assert!(
            f["new_term"].as_u64().unwrap() > f["old_term"].as_u64().unwrap(),
            "{f}\n{text}"
        );
        assert_ne!(f["new_leader"], f["killed"], "{f}\n{text}");
    }
    assert_eq!(report["after_failover"]["faults"], 2, "{text}");
    for i in [1, 3] {
        detected_ms(&report, i, &text);
        assert!(
            report["faults"][i]["recoveries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["rto_ms"].as_u64().is_some()),
            "fault {i}: a slot of the killed agent did not run again\n{text}"
        );
    }
}

/// Run a stateful CI scenario: every checker passes (no-lost-ack among them), writes were
/// acknowledged, and each kill, pause and partition of the primary ended in a promotion.
fn assert_state_scenario_fails_over(name: &str) {
    let (ok, report, text) = run_scenario(&ci_scenario(name), 1, &[]);
    assert_clean(ok, &report, &text);
    let state = &report["state"];
    assert!(state["acked"].as_u64().unwrap_or(0) > 100, "{text}");
    for kind in ["kill", "pause", "partition"] {
        let k = state["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} on the primary\n{text}"));
        assert_eq!(k["switched"], k["faults"], "{kind}\n{text}");
    }
}

#[test]
fn ci_state_scenario_fails_over_without_losing_an_acknowledged_write() {
    assert_state_scenario_fails_over("ci/state");
}

#[test]
fn ci_quorum_scenario_with_warm_standbys_fails_over_without_losing_an_acknowledged_write() {
    assert_state_scenario_fails_over("ci/state-quorum");
}

#[test]
fn ci_upgrade_scenario_keeps_every_task_through_planned_restarts() {
    let (ok, report, text) = run_scenario(&ci_scenario("ci/upgrade"), 1, &[]);
    assert_clean(ok, &report, &text);
    let faults = report["faults"].as_array().unwrap();
    for f in faults.iter().filter(|f| f["kind"] == "upgrade") {
        // Nothing the upgraded agent ran was lost or replaced, and it was never failed.
        assert!(f["failed_ms"].is_null(), "{f}\n{text}");
        for r in f["recoveries"].as_array().unwrap() {
            assert_eq!(r["lost"], false, "{r}\n{text}");
            assert!(r["new_token"].is_null(), "{r}\n{text}");
        }
    }
    // The kill: the singleton moved (a new token); the service copy outlived its agent.
    let kill = faults.iter().find(|f| f["kind"] == "kill").unwrap();
    let recs = kill["recoveries"].as_array().unwrap();
    assert!(
        recs.iter()
            .any(|r| r["singleton"] == true && r["lost"] == true && r["new_token"].is_u64()),
        "{text}"
    );
    assert!(
        recs.iter()
            .filter(|r| r["singleton"] == false)
            .all(|r| r["lost"] == false),
        "{text}"
    );
}
