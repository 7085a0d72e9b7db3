//! `warden bench anomaly`: the signal anomaly detectors scored on labelled series in the
//! Numenta Anomaly Benchmark's layout, with NAB's scoring ([`warden_core::nab`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use warden_core::Time;
use warden_core::anomaly::{AnomalyConfig, AnomalyDetector, DetectorKind, Direction};
use warden_core::lifecycle::{AgentEvent, AgentState, Cause, Fleet, LifecycleConfig, Output};
use warden_core::nab::{self, ProfileScore, Series};
use warden_core::rng::Rng;
use warden_core::tail::{TailConfig, TailDetector};
use warden_core::types::{AgentId, Signals};

/// The detectors `--detector` can name.
pub const DETECTORS: [&str; 4] = ["tail", "tail-health", "ewma", "windowed-gaussian"];

/// Load every `category/file.csv` under `data` that `windows` names; a CSV the window file
/// does not name is an error (its labels would be missing, silently scoring it as clean).
pub fn load(data: &Path, windows: &Path) -> Result<Vec<Series>> {
    let text = std::fs::read_to_string(windows)
        .with_context(|| format!("read the window file {}", windows.display()))?;
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected {{\"category/file.csv\": [[\"start\", \"end\"], ...]}}",
                windows.display()
            )
        })?;
    let labels =
        nab::parse_windows(raw).map_err(|e| anyhow::anyhow!("{}: {e}", windows.display()))?;
    let mut found = Vec::new();
    let categories = std::fs::read_dir(data)
        .with_context(|| format!("read the data directory {}", data.display()))?;
    for cat in categories {
        let cat = cat?;
        if !cat.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(cat.path())? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "csv") {
                let name = format!(
                    "{}/{}",
                    cat.file_name().to_string_lossy(),
                    file.file_name().unwrap_or_default().to_string_lossy()
                );
                found.push((name, file));
            }
        }
    }
    found.sort();
    if found.is_empty() {
        bail!(
            "no category/*.csv files under {} (the layout is DIR/<category>/<series>.csv)",
            data.display()
        );
    }
    let mut corpus = Vec::with_capacity(found.len());
    for (name, path) in found {
        let Some(w) = labels.get(&name) else {
            bail!(
                "{} has no entry in {}: every series needs its windows (an empty list if none)",
                name,
                windows.display()
            );
        };
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let (timestamps, values) =
            nab::parse_csv(&name, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
        corpus.push(Series {
            name,
            timestamps,
            values,
            windows: w.clone(),
        });
    }
    Ok(corpus)
}

/// The calibrated detector's settings tuned on NAB's 5-minute series (the `tail` detector of
/// this bench); `tail-health` runs the defaults the health model uses.
pub fn nab_settings() -> TailConfig {
    TailConfig {
        alarm: 0.005,
        min_z: 0.0,
        confirm: 1,
        ..TailConfig::default()
    }
}

/// One detector's scores over the corpus, and its cost.
pub struct Run {
    /// The detector's name.
    pub detector: &'static str,
    /// Per profile.
    pub scores: Vec<ProfileScore>,
    /// Nanoseconds per sample (detection only).
    pub ns_per_sample: f64,
    /// Bytes of state per signal.
    pub bytes: usize,
}

/// Score `detector` on `corpus`.
pub fn run(detector: &'static str, corpus: &[Series]) -> Result<Run> {
    let samples: usize = corpus.iter().map(|s| s.values.len()).sum();
    let started = Instant::now();
    let (scores, bytes): (Vec<Vec<f64>>, usize) = match detector {
        "tail" | "tail-health" => {
            let cfg = if detector == "tail" {
                nab_settings()
            } else {
                TailConfig::default()
            };
            let scores = corpus
                .iter()
                .map(|s| {
                    let mut d = TailDetector::new(cfg.clone(), Direction::Both);
                    s.timestamps
                        .iter()
                        .zip(&s.values)
                        .map(|(&t, &x)| d.observe(t as f64, x).score)
                        .collect()
                })
                .collect();
            (scores, TailDetector::BYTES)
        }
        "ewma" => {
            // Scored as it alerts: 1 at the onset of each anomalous verdict, else 0.
            let scores = corpus
                .iter()
                .map(|s| {
                    let mut d =
                        AnomalyDetector::new(AnomalyConfig::default(), Direction::Both, 0.0);
                    s.values
                        .iter()
                        .map(|&x| {
                            let o = d.observe(x);
                            if o.changed && o.anomalous { 1.0 } else { 0.0 }
                        })
                        .collect()
                })
                .collect();
            (scores, std::mem::size_of::<AnomalyDetector>())
        }
        "windowed-gaussian" => (
            corpus
                .iter()
                .map(|s| nab::windowed_gaussian(&s.values))
                .collect(),
            6_500 * std::mem::size_of::<f64>(),
        ),
        other => bail!(
            "--detector {other:?}: expected one of {} or \"all\"",
            DETECTORS.join(", ")
        ),
    };
    let ns_per_sample = started.elapsed().as_nanos() as f64 / samples.max(1) as f64;
    Ok(Run {
        detector,
        scores: nab::score(corpus, &scores, &nab::PROFILES),
        ns_per_sample,
        bytes,
    })
}

/// The bench's report.
pub fn report(corpus: &[Series], runs: &[Run], per_series: bool) -> String {
    let mut out = String::new();
    let samples: usize = corpus.iter().map(|s| s.values.len()).sum();
    let windows: usize = corpus.iter().map(|s| s.windows.len()).sum();
    let _ = writeln!(
        out,
        "NAB scoring: {} series, {samples} samples, {windows} labelled windows",
        corpus.len()
    );
    let _ = writeln!(
        out,
        "\n{:<18} {:>9} {:>11} {:>11} {:>11} {:>9}",
        "detector", "standard", "low FP", "low FN", "ns/sample", "bytes"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<18} {:>9.1} {:>11.1} {:>11.1} {:>11.0} {:>9}",
            r.detector,
            r.scores[0].normalized,
            r.scores[1].normalized,
            r.scores[2].normalized,
            r.ns_per_sample,
            r.bytes
        );
    }
    for r in runs {
        let _ = writeln!(out, "\n{}:", r.detector);
        for p in &r.scores {
            let _ = writeln!(out, "  {p}");
        }
        let standard = &r.scores[0];
        let mut rows = |title: &str, width: usize, tallies: &BTreeMap<String, nab::Tally>| {
            let _ = writeln!(out, "  standard profile, by {title}:");
            for (name, t) in tallies {
                let _ = writeln!(
                    out,
                    "    {name:<width$} windows hit {:>2}/{:<2}  false alarms {:>3}  raw {:>7.2}",
                    t.windows_hit, t.windows, t.false_alarms, t.raw
                );
            }
        };
        rows("category", 24, &standard.by_category);
        if per_series {
            rows("series", 58, &standard.by_series);
        }
    }
    out
}

/// What the health model made of simulated agents' signals with one detector.
pub struct HealthTrial {
    /// The detector.
    pub detector: DetectorKind,
    /// Agent-hours of clean signals.
    pub agent_hours: f64,
    /// Degraded verdicts on clean signals, by anomaly.
    pub false_anomalies: u32,
    /// The same, by signal.
    pub false_by_signal: BTreeMap<&'static str, u32>,
    /// Per agent, milliseconds from its error rate's jump to Degraded, and why (`None`: not
    /// within 30 s).
    pub detections: Vec<Option<(u64, Cause)>>,
}

/// Simulated agents reporting signals twice a second through the health model (a real
/// [`Fleet`] with default settings but the detector): `minutes` of clean, noisy signals (a
/// daily CPU cycle, lognormal latency, occasional errors and failed checks), then each
/// agent's error rate jumps from about 0 to 8 % (below the health score's "bad" mark).
pub fn health_trial(detector: DetectorKind, agents: u32, minutes: u64, seed: u64) -> HealthTrial {
    let mut cfg = LifecycleConfig::default();
    cfg.anomaly.detector = detector;
    let mut fleet = Fleet::new(cfg).expect("default settings are valid");
    let ids: Vec<AgentId> = (0..agents)
        .map(|i| AgentId::new(format!("agent-{i}"), 1))
        .collect();
    let mut rngs: Vec<Rng> = (0..agents)
        .map(|i| Rng::stream(seed, u64::from(i)))
        .collect();
    let step_ms = 500u64;
    let mut now = Time::from_millis(0);
    for id in &ids {
        fleet.join(id.clone(), now);
    }
    let signals = |rng: &mut Rng, t: Time, error: f64| {
        let day = (t.as_secs_f64() / 86_400.0 * std::f64::consts::TAU).sin();
        Signals {
            cpu: Some((0.35 + 0.1 * day + rng.normal(0.0, 0.03)).clamp(0.0, 1.0)),
            memory: Some((0.5 + rng.normal(0.0, 0.01)).clamp(0.0, 1.0)),
            error_rate: Some(if rng.bernoulli(0.01) { 0.01 } else { error }),
            latency_ms: Some(20.0 * rng.normal(0.0, 0.3).exp()),
            task_success: Some(if rng.bernoulli(0.005) { 0.9 } else { 1.0 }),
            restarts: Some(0.0),
            pressure: Some((5.0 + rng.normal(0.0, 1.0)).max(0.0)),
        }
    };
    let mut seq = 0u64;
    let mut false_anomalies = 0u32;
    let mut false_by_signal = BTreeMap::new();
    let clean_steps = minutes * 60_000 / step_ms;
    for _ in 0..clean_steps {
        now = now + std::time::Duration::from_millis(step_ms);
        seq += 1;
        for (id, rng) in ids.iter().zip(&mut rngs) {
            fleet.step(id, AgentEvent::Heartbeat { seq }, now);
            let out = fleet.step(id, AgentEvent::Signals(signals(rng, now, 0.0)), now);
            for o in &out {
                if let Output::Transition(t) = o
                    && t.to == AgentState::Degraded
                    && let Cause::Anomaly { signal } = t.cause
                {
                    false_anomalies += 1;
                    *false_by_signal.entry(signal.as_str()).or_default() += 1;
                }
            }
        }
    }
    // Then every agent's error rate jumps to 8 %: the time to its next Degraded verdict is its
    // detection time (an agent still Degraded from a false alarm above counts once that
    // verdict has cleared and a new one risen).
    let mut detections = Vec::with_capacity(ids.len());
    let start = now;
    let mut pending: Vec<Option<(u64, Cause)>> = vec![None; ids.len()];
    let mut done = vec![false; ids.len()];
    for _ in 0..(30_000 / step_ms) {
        now = now + std::time::Duration::from_millis(step_ms);
        seq += 1;
        for (i, (id, rng)) in ids.iter().zip(&mut rngs).enumerate() {
            fleet.step(id, AgentEvent::Heartbeat { seq }, now);
            let out = fleet.step(id, AgentEvent::Signals(signals(rng, now, 0.08)), now);
            for o in out {
                if let Output::Transition(t) = o
                    && t.to == AgentState::Degraded
                    && !done[i]
                {
                    done[i] = true;
                    pending[i] = Some((now.saturating_since(start).as_millis() as u64, t.cause));
                }
            }
        }
    }
    detections.extend(pending);
    HealthTrial {
        detector,
        agent_hours: f64::from(agents) * minutes as f64 / 60.0,
        false_anomalies,
        false_by_signal,
        detections,
    }
}

/// The health trial's report.
pub fn health_report(trials: &[HealthTrial]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "
On agent signals (simulated, 2 samples/s, health model defaults):"
    );
    let _ = writeln!(
        out,
        "{:<8} {:>12} {:>16} {:>10} {:>10} {:>10}  causes",
        "detector", "agent-hours", "false/agent-h", "detected", "p50 ms", "max ms"
    );
    for t in trials {
        let mut ms: Vec<u64> = t.detections.iter().flatten().map(|(m, _)| *m).collect();
        ms.sort_unstable();
        let mut causes: BTreeMap<String, u32> = BTreeMap::new();
        for (_, c) in t.detections.iter().flatten() {
            let name = match c {
                Cause::Anomaly { signal } => format!("anomaly on {}", signal.as_str()),
                Cause::LowScore { .. } => "low score".to_string(),
                other => format!("{other}"),
            };
            *causes.entry(name).or_default() += 1;
        }
        let causes: Vec<String> = causes.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
        let false_by: Vec<String> = t
            .false_by_signal
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<8} {:>12.0} {:>16.3} {:>6}/{:<3} {:>10} {:>10}  {}",
            format!("{:?}", t.detector).to_lowercase(),
            t.agent_hours,
            f64::from(t.false_anomalies) / t.agent_hours.max(f64::MIN_POSITIVE),
            ms.len(),
            t.detections.len(),
            ms.get(ms.len() / 2).map_or("-".into(), u64::to_string),
            ms.last().map_or("-".into(), u64::to_string),
            causes.join(", ")
        );
        if !false_by.is_empty() {
            let _ = writeln!(
                out,
                "         false verdicts by signal: {}",
                false_by.join(", ")
            );
        }
    }
    out
}

/// `warden bench anomaly`.
pub fn bench(data: &Path, windows: &Path, detector: &str, per_series: bool) -> Result<()> {
    let corpus = load(data, windows)?;
    let names: Vec<&'static str> = if detector == "all" {
        DETECTORS.to_vec()
    } else {
        match DETECTORS.iter().find(|d| **d == detector) {
            Some(d) => vec![*d],
            None => bail!(
                "--detector {detector:?}: expected one of {} or \"all\"",
                DETECTORS.join(", ")
            ),
        }
    };
    let runs = names
        .into_iter()
        .map(|d| run(d, &corpus))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", report(&corpus, &runs, per_series));
    let trials: Vec<HealthTrial> = [DetectorKind::Tail, DetectorKind::Ewma]
        .into_iter()
        .map(|d| health_trial(d, 100, 120, 1))
        .collect();
    print!("{}", health_report(&trials));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    /// A small corpus written by the test: one series with a level shift inside its window,
    /// one clean series.
    fn corpus(dir: &Path) -> (PathBuf, PathBuf) {
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("synthetic")).unwrap();
        let mut shifted = String::from("timestamp,value\n");
        let mut clean = String::from("timestamp,value\n");
        let start = nab::parse_time("2014-01-01 00:00:00").unwrap();
        let stamp = |i: i64| {
            let t = start + i * 300;
            let (d, s) = (t.div_euclid(86_400), t.rem_euclid(86_400));
            // Days from 2014-01-01 stay within January for this test's 2,000 samples.
            let day = 1 + (d - start / 86_400);
            format!(
                "2014-01-{day:02} {:02}:{:02}:{:02}",
                s / 3_600,
                s / 60 % 60,
                s % 60
            )
        };
        for i in 0..2_000i64 {
            let wobble = ((i * 7919) % 13) as f64 / 13.0;
            let level = if i >= 1_500 { 50.0 } else { 10.0 };
            let _ = writeln!(shifted, "{},{}", stamp(i), level + wobble);
            let _ = writeln!(clean, "{},{}", stamp(i), 10.0 + wobble);
        }
        std::fs::write(data.join("synthetic/shift.csv"), shifted).unwrap();
        std::fs::write(data.join("synthetic/clean.csv"), clean).unwrap();
        let windows = dir.join("windows.json");
        std::fs::write(
            &windows,
            format!(
                "{{\"synthetic/shift.csv\": [[\"{}\", \"{}\"]], \"synthetic/clean.csv\": []}}",
                stamp(1_450),
                stamp(1_549)
            ),
        )
        .unwrap();
        (data, windows)
    }

    #[test]
    fn a_level_shift_in_its_window_is_found_by_every_detector() {
        let dir = tempfile::tempdir().unwrap();
        let (data, windows) = corpus(dir.path());
        let corpus = load(&data, &windows).unwrap();
        assert_eq!(corpus.len(), 2);
        for d in DETECTORS {
            let r = run(d, &corpus).unwrap();
            let standard = &r.scores[0];
            assert_eq!(standard.total.windows_hit, 1, "{d}: {standard}");
            assert!(standard.normalized > 50.0, "{d}: {standard}");
        }
        let text = report(&corpus, &[run("tail", &corpus).unwrap()], true);
        assert!(text.contains("synthetic/shift.csv"), "{text}");
    }

    #[test]
    fn the_health_trial_finds_every_jump_and_counts_false_verdicts() {
        for d in [DetectorKind::Tail, DetectorKind::Ewma] {
            let t = health_trial(d, 3, 10, 7);
            assert_eq!(t.detections.len(), 3);
            assert!(
                t.detections.iter().all(Option::is_some),
                "{d:?}: a jump unseen"
            );
            assert!((t.agent_hours - 0.5).abs() < 1e-9);
        }
        let text = health_report(&[health_trial(DetectorKind::Tail, 2, 5, 1)]);
        assert!(
            text.lines()
                .any(|l| l.starts_with("tail ") && l.contains("anomaly on error_rate")),
            "{text}"
        );
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (data, windows) = corpus(dir.path());
        std::fs::write(&windows, "{\"synthetic/shift.csv\": []}").unwrap();
        let e = load(&data, &windows).unwrap_err().to_string();
        assert!(e.contains("synthetic/clean.csv has no entry"), "{e}");
        std::fs::write(&windows, "[1, 2]").unwrap();
        let e = format!("{:#}", load(&data, &windows).unwrap_err());
        assert!(e.contains("expected {"), "{e}");
        std::fs::write(&windows, "{}").unwrap();
        let e = load(&dir.path().join("missing"), &windows)
            .unwrap_err()
            .to_string();
        assert!(e.contains("read the data directory"), "{e}");
        assert!(run("nope", &[]).is_err());
    }
}
