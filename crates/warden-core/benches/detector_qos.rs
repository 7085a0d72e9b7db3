//! Detector QoS comparison on seeded heartbeat traces (`cargo bench --bench detector_qos`).
//!
//! Prints, per network preset, one table row per detector: detection time percentiles,
//! mistakes, P_A and a sampled confusion matrix (see `warden_core::qos`). The headline preset
//! is `lossy` (500 ms heartbeats, 5% loss, 100 ms jitter), the one the defaults are tuned for.
//!
//! Options: `--traces N` / `WARDEN_QOS_TRACES` (default 1000 traces of 10 minutes per preset)
//! and `--seed S` / `WARDEN_QOS_SEED` (default 1).

use std::time::{Duration, Instant};

use warden_core::detector::{DetectorConfig, FixedTimeoutConfig, PhiConfig, TwoWindowConfig};
use warden_core::qos::{QosSummary, compare, format_table};
use warden_core::trace::TraceConfig;

/// Read `--name value` from the arguments, else the environment variable, else the default.
fn setting(args: &[String], flag: &str, env: &str, default: u64) -> u64 {
    let from_args = args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    from_args
        .or_else(|| std::env::var(env).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let traces = setting(&args, "--traces", "WARDEN_QOS_TRACES", 1000).max(1) as usize;
    let seed = setting(&args, "--seed", "WARDEN_QOS_SEED", 1);

    let detectors = [
        DetectorConfig::PhiAccrual(PhiConfig::default()),
        DetectorConfig::TwoWindow(TwoWindowConfig::default()),
        DetectorConfig::FixedTimeout(FixedTimeoutConfig::default()),
    ];
    // The classic baseline: 5 s heartbeats, suspect after 3 missed. It runs on its own traces
    // with 5 s heartbeats, the same network settings and the same crash times.
    let baseline = DetectorConfig::FixedTimeout(FixedTimeoutConfig {
        interval: Duration::from_secs(5),
        missed: 3,
    });

    let presets = [
        (
            "lossy: 500 ms heartbeats, 5% loss (dropped), 2 ms + U[0,100) ms delay",
            TraceConfig::lossy(),
        ),
        (
            "bursty: 20 ms jitter, 1% loss, 5 s bursts of +400 ms / 20% loss every ~100 s",
            TraceConfig::bursty(),
        ),
        (
            "heavy_tailed: 5% Pareto(20 ms, 1.5) extra delay, 1% loss retransmitted (TCP)",
            TraceConfig::heavy_tailed(),
        ),
        (
            "gc_pauses: sender pauses Pareto(100 ms, 1.2) up to 10 s every ~100 s",
            TraceConfig::gc_pauses(),
        ),
    ];

    println!(
        "warden detector QoS: {traces} traces x {} min per preset, seed {seed}; crash at a random \
         time in each trace's second half; 10 s warm-up; confusion sampled every 1 s.",
        TraceConfig::lossy().duration.as_secs() / 60
    );
    println!(
        "Rows 1-3 see 500 ms heartbeats; 'fixed 3x5s' sees its own traces with 5 s heartbeats \
         (same network settings and crash times).\n"
    );
    let started = Instant::now();
    let mut headline: Option<QosSummary> = None;
    for (i, (title, cfg)) in presets.iter().enumerate() {
        let mut rows = compare(&detectors, cfg, traces, seed);
        let slow = TraceConfig {
            interval: Duration::from_secs(5),
            ..cfg.clone()
        };
        rows.extend(compare(
            std::slice::from_ref(&baseline),
            &slow,
            traces,
            seed,
        ));
        if i == 0 {
            headline = rows.first().map(|(_, s)| s.clone());
        }
        println!("== {title}");
        println!("{}", format_table(&rows));
    }
    if let Some(phi) = headline {
        let p99 = phi.td_p99.unwrap_or(Duration::MAX);
        let ok_td = p99 < Duration::from_secs(2);
        let ok_pa = phi.query_accuracy >= 0.9999;
        println!(
            "goal (lossy, phi defaults): T_D p99 {:.3}s < 2s: {}; P_A {:.6} >= 0.9999: {}",
            p99.as_secs_f64(),
            if ok_td { "yes" } else { "NO" },
            phi.query_accuracy,
            if ok_pa { "yes" } else { "NO" },
        );
    }
    println!("done in {:.2?}", started.elapsed());
}
