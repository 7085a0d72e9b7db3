//! Host health signals, read straight from Linux's `/proc`: CPU utilisation (from
//! `/proc/stat` deltas), memory utilisation (`MemAvailable` of `/proc/meminfo`) and pressure
//! stall information (`/proc/pressure/{cpu,memory,io}`, `some avg10`, the largest). Reading
//! a few small files costs microseconds, so the agent samples once per heartbeat. Where a file
//! is missing (another OS, a kernel without PSI) the signal is simply not reported.

use std::fs;

use warden_core::Signals;

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
