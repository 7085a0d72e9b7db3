//! A heartbeat storm against a real server process (`warden bench storm`): 100 sessions send
//! heartbeats at ten times the normal rate for 10 s beside 10 well-behaved agents. The bounds
//! are generous — the figures themselves are the benchmark's output (docs/benchmarks.md) — but
//! they catch a storm that starves others: a well-behaved agent whose lease would lapse, or
//! that leaves Healthy, or server memory that grows with the storm.

mod common;

use std::process::Command;

use common::warden_bin;
use serde_json::Value;

#[test]
fn a_heartbeat_storm_does_not_starve_well_behaved_agents() {
    let out = Command::new(warden_bin())
        .args([
            "bench",
            "storm",
            "--normal",
            "10",
            "--storm",
            "100",
            "--factor",
            "10",
            "--duration",
            "10",
            "--warmup",
            "2",
            "--json",
        ])
        .output()
        .expect("run warden bench storm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    eprintln!("{r:#}");
    let f = |path: &str| r.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN);

    // The well-behaved agents keep their leases and stay Healthy.
    assert!(f("/normal/acked") >= 10.0 * 2.0 * 10.0 * 0.8, "acks: {r}");
    assert!(
        f("/normal/max_ack_gap_ms") < 2000.0,
        "an ack gap reached the lease: {r}"
    );
    assert!(f("/normal/ack_p99_ms") < 1000.0, "{r}");
    assert_eq!(f("/normal/not_healthy"), 0.0, "{r}");
    // The limit did its work: what the storm sent beyond it was dropped, not processed.
    assert!(f("/storm/dropped") > 0.0, "{r}");
    assert!(
        f("/storm/acked") + f("/storm/dropped") <= f("/storm/sent") + 100.0,
        "{r}"
    );
    assert!(
        f("/storm/acked") <= 100.0 * (10.0 * f("/duration_s") + 20.0) * 1.1,
        "more acks than the limit allows: {r}"
    );
    // Memory stays bounded.
    assert!(f("/server/rss_growth_mib") < 128.0, "{r}");
}
