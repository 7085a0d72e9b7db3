//! Micro-benchmarks of the detectors' hot paths (`cargo bench --bench detectors`): recording a
//! heartbeat and asking for the suspicion level / deadline, on detectors warmed up with a full
//! window of jittery arrivals. The goal is under 100 ns for each. Also the calibrated anomaly
//! detector's `observe`, and `judge` (the verdict alone), which every heartbeat pays once for
//! each signal it carries.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use warden_core::Time;
use warden_core::anomaly::Direction;
use warden_core::detector::{
    Detector, DetectorConfig, FixedTimeout, FixedTimeoutConfig, LivenessDetector, PhiAccrual,
    PhiConfig, TwoWindow, TwoWindowConfig,
};
use warden_core::tail::{TailConfig, TailDetector};

/// Deterministic jitter pattern (ms) so intervals vary like on a real network.
const JITTER_MS: [u64; 16] = [3, 41, 17, 88, 9, 56, 72, 25, 64, 1, 95, 33, 48, 12, 80, 20];

fn arrival(seq: u64) -> u64 {
    seq * 500_000_000 + JITTER_MS[(seq % 16) as usize] * 1_000_000
}

/// Feed 2 000 heartbeats (more than any default window) and return the next sequence number.
fn warm(d: &mut impl LivenessDetector) -> u64 {
    for seq in 1..=2_000 {
        d.heartbeat(seq, Time::from_nanos(arrival(seq)));
    }
    2_001
}

fn bench_detector<D: LivenessDetector + Clone>(c: &mut Criterion, name: &str, fresh: D) {
    let mut group = c.benchmark_group(name);
    let mut d = fresh.clone();
    let mut seq = warm(&mut d);
    group.bench_function("heartbeat", |b| {
        b.iter(|| {
            d.heartbeat(black_box(seq), Time::from_nanos(arrival(seq)));
            seq += 1;
        })
    });
    let mut d = fresh;
    let next = warm(&mut d);
    let now = Time::from_nanos(arrival(next - 1)) + Duration::from_millis(900);
    group.bench_function("suspicion", |b| {
        b.iter(|| black_box(&d).suspicion(black_box(now)))
    });
    group.bench_function("suspect_at", |b| b.iter(|| black_box(&d).suspect_at()));
    group.bench_function("is_suspect", |b| {
        b.iter(|| black_box(&d).is_suspect(black_box(now)))
    });
    group.finish();
}

fn detectors(c: &mut Criterion) {
    bench_detector(
        c,
        "fixed_timeout",
        FixedTimeout::new(FixedTimeoutConfig::default()),
    );
    bench_detector(c, "phi_accrual", PhiAccrual::new(PhiConfig::default()));
    bench_detector(c, "two_window", TwoWindow::new(TwoWindowConfig::default()));
    // Through the enum the runtime stores per agent.
    bench_detector::<Detector>(c, "detector_enum_phi", DetectorConfig::default().build());
}

/// The calibrated anomaly detector on one signal, warmed up with a day of samples at two a
/// second: a noisy one (a CPU share wandering around 0.4) and a flat one (a value that never
/// changes, as an idle agent's memory share).
fn tail(c: &mut Criterion) {
    let mut group = c.benchmark_group("tail");
    let noisy = |i: u32| {
        let x = (f64::from(i) * 12.9898).sin() * 43_758.545;
        0.4 + 0.05 * (2.0 * (x - x.floor()) - 1.0)
    };
    let flat = |_: u32| 0.3;
    for (name, signal) in [("noisy", &noisy as &dyn Fn(u32) -> f64), ("flat", &flat)] {
        let mut d = TailDetector::new(TailConfig::default(), Direction::Above);
        let mut i = 0u32;
        while i < 2 * 86_400 {
            d.observe(f64::from(i) * 0.5, signal(i));
            i += 1;
        }
        group.bench_function(format!("observe_{name}"), |b| {
            b.iter(|| {
                black_box(d.observe(f64::from(i) * 0.5, signal(i)));
                i += 1;
            })
        });
        // What the health model calls: the verdict alone.
        group.bench_function(format!("judge_{name}"), |b| {
            b.iter(|| {
                black_box(d.judge(f64::from(i) * 0.5, signal(i)));
                i += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, detectors, tail);
criterion_main!(benches);
