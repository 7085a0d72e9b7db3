//! Host health signals, read straight from Linux's `/proc`: CPU utilisation (from
//! `/proc/stat` deltas), memory utilisation (`MemAvailable` of `/proc/meminfo`) and pressure
//! stall information (`/proc/pressure/{cpu,memory,io}`, `some avg10`, the largest). Reading
//! a few small files costs microseconds, so the agent samples once per heartbeat. Where a file
//! is missing (another OS, a kernel without PSI) the signal is simply not reported.

//!
//! The agent also judges its own signals when its server asks it to (the server's anomaly
//! settings in the session's Welcome): [`adopt_settings`] keeps one set of detectors for all
//! its sessions, [`JudgeClock`] gives them their time, and each heartbeat carries the
//! verdicts — the server then keeps no detector for this agent.

use std::fs;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use warden_core::Signals;
use warden_core::anomaly::{AnomalyConfig, SignalJudge};

/// Seconds for the anomaly detectors: a clock that does not jump (monotonic), set to the wall
/// clock's reading when the agent started, so that daily and weekly seasons fall on real
/// hours.
#[derive(Debug)]
pub struct JudgeClock {
    start: Instant,
    unix_at_start: f64,
}

impl Default for JudgeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl JudgeClock {
    /// Set from the wall clock now.
    pub fn new() -> Self {
        JudgeClock {
            start: Instant::now(),
            unix_at_start: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// Seconds now.
    pub fn now(&self) -> f64 {
        self.unix_at_start + self.start.elapsed().as_secs_f64()
    }
}

/// Take the anomaly settings `server` sent in its Welcome (`settings`, JSON): returns whether
/// the agent tells that server its own verdicts. Empty settings: that server judges the
/// signals itself. Settings that do not parse or validate are refused with a warning (the
/// server then judges). New settings replace the detectors (which warm up again); the same
/// settings from another session keep them.
pub fn adopt_settings(
    judge: &mut Option<(String, SignalJudge)>,
    settings: &str,
    server: &str,
) -> bool {
    if settings.is_empty() {
        return false;
    }
    if judge.as_ref().is_some_and(|(had, _)| had == settings) {
        return true;
    }
    let parsed = serde_json::from_str::<AnomalyConfig>(settings)
        .map_err(|e| e.to_string())
        .and_then(|cfg| cfg.validate().map(|()| cfg).map_err(|e| e.to_string()));
    match parsed {
        Ok(cfg) => {
            info!(%server, "judging this host's signals with the server's anomaly settings");
            *judge = Some((settings.to_string(), SignalJudge::new(cfg)));
            true
        }
        Err(why) => {
            warn!(%server, %why, "the server's anomaly settings are unusable; it judges the signals itself");
            false
        }
    }
}

/// Samples host signals; keeps the previous CPU counters to compute utilisation over the
/// interval between two samples.
#[derive(Debug, Default)]
pub struct HostSampler {
    last_cpu: Option<(u64, u64)>,
}

impl HostSampler {
    /// A sampler with no history (the first CPU reading is reported from the second sample).
    pub fn new() -> Self {
        Self::default()
    }

    /// Read the host's signals now. Task-level signals (error rate, latency, task success,
    /// restarts) are filled in by the caller.
    pub fn sample(&mut self) -> Signals {
        let cpu = read_cpu().and_then(|(busy, total)| {
            let prev = self.last_cpu.replace((busy, total));
            let (pb, pt) = prev?;
            let dt = total.checked_sub(pt)?;
            (dt > 0).then(|| (busy.saturating_sub(pb)) as f64 / dt as f64)
        });
        Signals {
            cpu: cpu.map(|c| c.clamp(0.0, 1.0)),
            memory: read_memory(),
            pressure: read_pressure(),
            ..Signals::default()
        }
    }
}

/// (busy, total) jiffies from the first line of `/proc/stat`.
fn read_cpu() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    parse_cpu(text.lines().next()?)
}

fn parse_cpu(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// 1 − MemAvailable / MemTotal.
fn read_memory() -> Option<f64> {
    parse_memory(&fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_memory(text: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| (1.0 - available / total).clamp(0.0, 1.0))
}

/// The largest `some avg10` of CPU, memory and I/O pressure, 0–100.
fn read_pressure() -> Option<f64> {
    ["cpu", "memory", "io"]
        .iter()
        .filter_map(|r| fs::read_to_string(format!("/proc/pressure/{r}")).ok())
        .filter_map(|t| parse_pressure(&t))
        .reduce(f64::max)
}

fn parse_pressure(text: &str) -> Option<f64> {
    let some = text.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod adopt_tests {
    #![allow(clippy::unwrap_used)]
    use warden_core::SignalKind;
    use warden_core::anomaly::{AnomalyConfig, SignalJudge};

    use super::{JudgeClock, adopt_settings};

    #[test]
    fn settings_are_adopted_once_kept_across_sessions_and_bad_ones_refused() {
        let mut judge: Option<(String, SignalJudge)> = None;
        assert!(!adopt_settings(&mut judge, "", "a"));
        assert!(judge.is_none());
        assert!(!adopt_settings(&mut judge, "{not json", "a"));
        let invalid = r#"{"tail": {"alarm": 0.0}}"#;
        assert!(!adopt_settings(&mut judge, invalid, "a"));
        assert!(judge.is_none());

        let settings = serde_json::to_string(&AnomalyConfig::default()).unwrap();
        assert!(adopt_settings(&mut judge, &settings, "a"));
        // Warm the detectors, then a second session with the same settings keeps them.
        let clock = JudgeClock::new();
        let calm = warden_core::Signals {
            error_rate: Some(0.0),
            ..Default::default()
        };
        for i in 0..400 {
            let at = clock.now() + f64::from(i) * 0.5;
            assert!(
                judge
                    .as_mut()
                    .unwrap()
                    .1
                    .judge(at, &calm)
                    .iter()
                    .next()
                    .is_none()
            );
        }
        assert!(adopt_settings(&mut judge, &settings, "b"));
        let sick = warden_core::Signals {
            error_rate: Some(0.5),
            ..Default::default()
        };
        let mut flagged = false;
        for i in 400..410 {
            let at = clock.now() + f64::from(i) * 0.5;
            flagged |= judge
                .as_mut()
                .unwrap()
                .1
                .judge(at, &sick)
                .contains(SignalKind::ErrorRate);
        }
        assert!(
            flagged,
            "an error rate jumping from 0 to 0.5 was not judged anomalous"
        );
        // Other settings replace the detectors; the server's JSON names what it changed.
        let other = serde_json::to_string(&AnomalyConfig {
            warmup: 50,
            ..AnomalyConfig::default()
        })
        .unwrap();
        assert!(adopt_settings(&mut judge, &other, "a"));
        assert!(
            judge
                .as_mut()
                .unwrap()
                .1
                .judge(clock.now(), &sick)
                .iter()
                .next()
                .is_none()
        );
        assert_eq!(judge.as_ref().unwrap().1.config().warmup, 50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        assert_eq!(
            parse_cpu("cpu  100 0 100 700 100 0 0 0 0 0"),
            Some((200, 1000))
        );
        assert_eq!(parse_cpu("intr 1 2 3"), None);
        let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_memory(mem), Some(0.75));
        let psi = "some avg10=12.50 avg60=1.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure(psi), Some(12.5));
    }

    #[test]
    fn sampling_this_host_gives_sane_values() {
        let mut s = HostSampler::new();
        let first = s.sample();
        assert!(
            first.cpu.is_none(),
            "no CPU figure without a previous sample"
        );
        let second = s.sample();
        for v in [second.cpu, second.memory].into_iter().flatten() {
            assert!((0.0..=1.0).contains(&v), "{second:?}");
        }
    }
}
