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
    assert_eq!(checkers.len(), 4);
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
