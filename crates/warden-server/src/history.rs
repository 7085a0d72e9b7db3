//! Recent health history per agent, for the dashboard's charts: a small ring of decimated
//! samples per agent name, bounded in time and in memory whatever the fleet size.
//!
//! The server samples the agent view ([`crate::view::ControlApi::agents`]) every
//! [`SAMPLE_EVERY`] and folds each reading into a bucket of [`BUCKET`]; the ring keeps the last
//! [`BUCKETS`] buckets (10 minutes). A bucket keeps the *worst* score and phi seen in it and
//! the highest of each signal, so a short dip between two buckets is not averaged away.
//!
//! Memory: a ring keeps its buckets packed in 20 bytes each (the readings as 16-bit fixed
//! point, finer than a chart shows: a score to 0.01, a utilisation to 0.0001, a latency to the
//! millisecond up to 65 s) and grows as buckets arrive, to exactly [`BUCKETS`]: an agent costs
//! at most 120 × 20 B ≈ 2.3 KiB plus its name and a map entry — about 25 MB for 10,000
//! agents. Rings of names that leave the view are dropped at the next sample.
//! Nothing here is persisted; a restarted server starts with empty charts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::view::AgentInfo;

/// How often the agent view is sampled (2 s, the dashboard's refresh period).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Width of one bucket of the ring (5 s).
pub const BUCKET: Duration = Duration::from_secs(5);
/// Buckets kept per agent (120 × 5 s = 10 minutes).
pub const BUCKETS: usize = 120;

/// One bucket of an agent's history. Signals not reported are NaN (uPlot draws a gap).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Start of the bucket, Unix seconds.
    pub unix_s: u32,
    /// Lowest health score in the bucket, 0–100.
    pub score: f32,
    /// Highest suspicion (phi) in the bucket.
    pub phi: f32,
    /// Highest CPU utilisation, 0–1.
    pub cpu: f32,
    /// Highest memory utilisation, 0–1.
    pub memory: f32,
    /// Highest error rate, 0–1.
    pub error_rate: f32,
    /// Highest task latency p99, ms.
    pub latency_ms: f32,
    /// Highest pressure stall (PSI some avg10), 0–100.
    pub pressure: f32,
}

fn f(v: Option<f64>) -> f32 {
    v.map_or(f32::NAN, |x| x as f32)
}

/// The larger of two readings, a NaN (not reported) losing to any number.
fn worst(a: f32, b: f32) -> f32 {
    if a.is_nan() { b } else { a.max(b) }
}

impl Sample {
    fn of(a: &AgentInfo, unix_s: u32) -> Self {
        Sample {
            unix_s,
            score: a.health_score as f32,
            // The view reports "never heard of" as a huge phi; cap it so charts stay readable.
            phi: (a.phi as f32).min(1_000.0),
            cpu: f(a.signals.cpu),
            memory: f(a.signals.memory),
            error_rate: f(a.signals.error_rate),
            latency_ms: f(a.signals.latency_ms),
            pressure: f(a.signals.pressure),
        }
    }

    fn fold(&mut self, o: &Sample) {
        self.score = self.score.min(o.score);
        self.phi = worst(self.phi, o.phi);
        self.cpu = worst(self.cpu, o.cpu);
        self.memory = worst(self.memory, o.memory);
        self.error_rate = worst(self.error_rate, o.error_rate);
        self.latency_ms = worst(self.latency_ms, o.latency_ms);
        self.pressure = worst(self.pressure, o.pressure);
    }
}

/// Not reported (a NaN reading), packed.
const ABSENT: u16 = u16::MAX;

/// A reading in 16-bit fixed point: `v × scale`, rounded, held below [`ABSENT`].
fn pack(v: f32, scale: f32) -> u16 {
    if v.is_nan() {
        ABSENT
    } else {
        (v * scale).round().clamp(0.0, f32::from(ABSENT - 1)) as u16
    }
}

fn unpack(v: u16, scale: f32) -> f32 {
    if v == ABSENT {
        f32::NAN
    } else {
        f32::from(v) / scale
    }
}

/// Scales of the packed readings.
const SCORE: f32 = 100.0;
const PHI: f32 = 50.0;
const SHARE: f32 = 10_000.0;
const MS: f32 = 1.0;

/// A [`Sample`] as a ring keeps it (20 bytes instead of 32).
#[derive(Clone, Copy, Debug)]
struct Packed {
    unix_s: u32,
    score: u16,
    phi: u16,
    cpu: u16,
    memory: u16,
    error_rate: u16,
    latency_ms: u16,
    pressure: u16,
}

impl Packed {
    fn of(s: &Sample) -> Packed {
        Packed {
            unix_s: s.unix_s,
            score: pack(s.score, SCORE),
            phi: pack(s.phi, PHI),
            cpu: pack(s.cpu, SHARE),
            memory: pack(s.memory, SHARE),
            error_rate: pack(s.error_rate, SHARE),
            latency_ms: pack(s.latency_ms, MS),
            pressure: pack(s.pressure, SCORE),
        }
    }

    fn sample(&self) -> Sample {
        Sample {
            unix_s: self.unix_s,
            score: unpack(self.score, SCORE),
            phi: unpack(self.phi, PHI),
            cpu: unpack(self.cpu, SHARE),
            memory: unpack(self.memory, SHARE),
            error_rate: unpack(self.error_rate, SHARE),
            latency_ms: unpack(self.latency_ms, MS),
            pressure: unpack(self.pressure, SCORE),
        }
    }
}

/// A ring of buckets, oldest first, grown as buckets arrive up to [`BUCKETS`].
#[derive(Debug)]
struct Ring {
    buf: Vec<Packed>,
    /// Index of the oldest sample once the ring is full.
    head: usize,
}

impl Ring {
    fn new() -> Self {
        Ring {
            buf: Vec::new(),
            head: 0,
        }
    }

    fn newest_mut(&mut self) -> Option<&mut Packed> {
        let n = self.buf.len();
        if n == 0 {
            return None;
        }
        let i = if n < BUCKETS {
            n - 1
        } else {
            (self.head + BUCKETS - 1) % BUCKETS
        };
        self.buf.get_mut(i)
    }

    fn push(&mut self, s: Packed) {
        if self.buf.len() < BUCKETS {
            // Twelve buckets (a minute) at a time, never past the ring's size.
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve_exact(12.min(BUCKETS - self.buf.len()));
            }
            self.buf.push(s);
        } else {
            self.buf[self.head] = s;
            self.head = (self.head + 1) % BUCKETS;
        }
    }

    fn samples(&self) -> Vec<Sample> {
        let (a, b) = self.buf.split_at(self.head.min(self.buf.len()));
        b.iter().chain(a).map(Packed::sample).collect()
    }
}

/// Every agent's recent history. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<HashMap<String, Ring>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fold one reading of the whole agent view, taken at `unix_ms`, into the rings, and drop
    /// the rings of names no longer in the view.
    pub fn record(&self, agents: &[AgentInfo], unix_ms: u64) {
        let bucket_s = BUCKET.as_secs().max(1);
        let unix_s = u32::try_from(unix_ms / 1000).unwrap_or(u32::MAX);
        let start = unix_s - unix_s % bucket_s as u32;
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        if rings.len() > agents.len() {
            let names: std::collections::HashSet<&str> =
                agents.iter().map(|a| a.name.as_str()).collect();
            rings.retain(|name, _| names.contains(name.as_str()));
        }
        for a in agents {
            let sample = Sample::of(a, start);
            let ring = rings.entry(a.name.clone()).or_insert_with(Ring::new);
            match ring.newest_mut() {
                // The same bucket, or a clock step backwards (the ring stays in time order
                // by folding into the last).
                Some(last) if last.unix_s >= start => {
                    let mut folded = last.sample();
                    folded.fold(&sample);
                    *last = Packed::of(&folded);
                }
                _ => ring.push(Packed::of(&sample)),
            }
        }
    }

    /// One agent's samples, oldest first (empty when unknown).
    pub fn samples(&self, name: &str) -> Vec<Sample> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.get(name).map(Ring::samples).unwrap_or_default()
    }

    /// Agents with a ring.
    pub fn len(&self) -> usize {
        self.rings.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no agent has a ring.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use warden_core::Signals;

    fn agent(name: &str, score: f64, phi: f64, cpu: Option<f64>) -> AgentInfo {
        AgentInfo {
            name: name.into(),
            generation: 1,
            state: "healthy".into(),
            health_score: score,
            last_heartbeat_ms_ago: Some(10),
            phi,
            state_ms: 0,
            probe_addr: String::new(),
            signals: Signals {
                cpu,
                ..Signals::default()
            },
            anomalies: vec![],
            signals_judged_by_agent: false,
            tasks: vec![],
            cordoned: false,
        }
    }

    #[test]
    fn a_bucket_keeps_the_worst_reading() {
        let h = History::new();
        h.record(&[agent("a", 90.0, 0.5, None)], 1_000_000);
        h.record(&[agent("a", 40.0, 0.2, Some(0.3))], 1_002_000);
        h.record(&[agent("a", 80.0, 3.0, Some(0.1))], 1_004_000);
        let s = h.samples("a");
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].score, s[0].phi, s[0].cpu), (40.0, 3.0, 0.3));
        assert!(s[0].memory.is_nan());
        h.record(&[agent("a", 100.0, 0.1, None)], 1_005_000);
        assert_eq!(h.samples("a").len(), 2);
    }

    #[test]
    fn the_ring_is_bounded_and_in_time_order() {
        let h = History::new();
        for i in 0..(BUCKETS as u64 * 3) {
            h.record(&[agent("a", i as f64, 0.0, None)], i * 5_000);
        }
        let s = h.samples("a");
        assert_eq!(s.len(), BUCKETS);
        assert!(s.windows(2).all(|w| w[0].unix_s < w[1].unix_s));
        assert_eq!(s[BUCKETS - 1].score, (BUCKETS * 3 - 1) as f32);
        assert_eq!(std::mem::size_of::<Sample>(), 32);
        assert_eq!(std::mem::size_of::<Packed>(), 20);
        assert!(h.rings.lock().unwrap()["a"].buf.capacity() <= BUCKETS);
    }

    #[test]
    fn rings_of_vanished_agents_are_dropped() {
        let h = History::new();
        h.record(&[agent("a", 1.0, 0.0, None), agent("b", 1.0, 0.0, None)], 0);
        assert_eq!(h.len(), 2);
        h.record(&[agent("b", 1.0, 0.0, None)], 5_000);
        assert_eq!(h.len(), 1);
        assert!(h.samples("a").is_empty());
    }
}
