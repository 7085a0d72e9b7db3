//! Seeded synthetic heartbeat traces: what an agent sent, and when (if ever) each heartbeat
//! reached the server.
//!
//! Failure detectors can only be compared on the *same* arrivals, and their interesting
//! behaviour lives in rare events (three losses in a row, a multi-second GC pause), so the
//! evaluation ([`crate::qos`]) needs hours of realistic traffic that is exactly reproducible.
//! This module produces it from a [`TraceConfig`] and a seed: a sender on a fixed schedule
//! that may pause or crash, and a network with base delay, jitter, loss (dropped, or
//! retransmitted TCP-style), congestion bursts and a heavy-tailed delay component. Delivery is
//! in order, as on a TCP connection: a late heartbeat holds back the ones behind it
//! (head-of-line blocking).

use std::time::Duration;

use crate::error::{ConfigError, check_range};
use crate::rng::Rng;
use crate::time::{Time, duration_nanos};

/// What happens to a heartbeat the network loses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossMode {
    /// It never arrives (datagram transport).
    Drop,
    /// It is retransmitted and arrives late (TCP): the first loss costs `rto`, and every
    /// further loss of the same heartbeat doubles the wait (exponential backoff), so a
    /// heartbeat lost `n` times in a row arrives `rto·(2ⁿ − 1)` late. Heartbeats behind it wait
    /// (in-order delivery).
    Retransmit {
        /// Retransmission timeout for the first retry (Linux' minimum is 200 ms).
        rto: Duration,
    },
}

/// Congestion episodes: for a while, every heartbeat is slower and more likely to be lost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bursts {
    /// Probability, per heartbeat sent outside a burst, that a burst starts with it.
    pub probability: f64,
    /// How long a burst lasts.
    pub length: Duration,
    /// Extra one-way delay of every heartbeat sent during a burst (queueing).
    pub extra_delay: Duration,
    /// Loss probability during a burst (replaces [`TraceConfig::loss`]).
    pub loss: f64,
}

/// Sender pauses (GC, CPU starvation, a stopped VM): the agent sends nothing for a while, then
/// sends every heartbeat that fell due during the pause at once — like a timer that fires
/// missed ticks in a burst (tokio's default) — and resumes its schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pauses {
    /// Probability, per scheduled heartbeat outside a pause, that a pause starts before it.
    pub probability: f64,
    /// Shortest pause (the Pareto scale).
    pub min: Duration,
    /// Pareto shape: 1–2 gives a heavy tail (most pauses short, a few very long).
    pub shape: f64,
    /// Longest pause.
    pub cap: Duration,
}

/// A heavy-tailed extra delay on some heartbeats (route flaps, retransmissions below the
/// transport, overloaded middleboxes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeavyTail {
    /// Probability that a heartbeat gets the extra delay.
    pub probability: f64,
    /// Smallest extra delay (the Pareto scale).
    pub min: Duration,
    /// Pareto shape: 1–2 gives a heavy tail.
    pub shape: f64,
    /// Largest extra delay.
    pub cap: Duration,
}

/// How to generate a trace. Start from a preset ([`TraceConfig::lossy`] is the headline
/// scenario) and adjust fields.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// Heartbeat interval: heartbeat `s` (from 1) is scheduled `(s − 1)·interval` after start.
    pub interval: Duration,
    /// Length of the trace.
    pub duration: Duration,
    /// Fixed one-way delay.
    pub base_delay: Duration,
    /// Extra one-way delay, uniform in `[0, jitter)`, independent per heartbeat.
    pub jitter: Duration,
    /// Probability that the network loses a heartbeat (independently per heartbeat).
    pub loss: f64,
    /// What a loss does.
    pub loss_mode: LossMode,
    /// Congestion bursts, if any.
    pub bursts: Option<Bursts>,
    /// Sender pauses, if any.
    pub pauses: Option<Pauses>,
    /// Heavy-tailed delay component, if any.
    pub heavy_tail: Option<HeavyTail>,
    /// When the agent crashes, relative to the start: no heartbeat is sent at or after it.
    pub crash_at: Option<Duration>,
}

impl Default for TraceConfig {
    /// The [`lan`](TraceConfig::lan) preset.
    fn default() -> Self {
        TraceConfig::lan()
    }
}

/// The length of every preset: long enough for rare events to show, short enough that
/// hundreds of traces replay in well under a second.
const PRESET_DURATION: Duration = Duration::from_secs(600);

impl TraceConfig {
    /// A healthy LAN: 500 ms heartbeats, 0.2 ms delay, 2 ms jitter, 0.1% loss.
    pub fn lan() -> Self {
        TraceConfig {
            interval: Duration::from_millis(500),
            duration: PRESET_DURATION,
            base_delay: Duration::from_micros(200),
            jitter: Duration::from_millis(2),
            loss: 0.001,
            loss_mode: LossMode::Drop,
            bursts: None,
            pauses: None,
            heavy_tail: None,
            crash_at: None,
        }
    }

    /// The headline scenario detectors are tuned for: 500 ms heartbeats, 5% independent
    /// loss (dropped), 2 ms base delay and 100 ms of uniform jitter. Two losses in a row
    /// (a 1.5 s gap) happen about 17 times an hour, three in a row (2 s) about once an hour.
    pub fn lossy() -> Self {
        TraceConfig {
            base_delay: Duration::from_millis(2),
            jitter: Duration::from_millis(100),
            loss: 0.05,
            ..TraceConfig::lan()
        }
    }

    /// Mostly calm (20 ms jitter, 1% loss) with congestion bursts about every 100 s: 5 s of
    /// +400 ms delay and 20% loss.
    pub fn bursty() -> Self {
        TraceConfig {
            base_delay: Duration::from_millis(2),
            jitter: Duration::from_millis(20),
            loss: 0.01,
            bursts: Some(Bursts {
                probability: 0.005,
                length: Duration::from_secs(5),
                extra_delay: Duration::from_millis(400),
                loss: 0.2,
            }),
            ..TraceConfig::lan()
        }
    }

    /// A TCP connection with heavy-tailed delays: 5% of heartbeats get an extra Pareto delay
    /// (from 20 ms, shape 1.5, capped at 5 s), 1% are lost and retransmitted after 200 ms, and
    /// a late heartbeat holds back the ones behind it.
    pub fn heavy_tailed() -> Self {
        TraceConfig {
            base_delay: Duration::from_millis(2),
            jitter: Duration::from_millis(20),
            loss: 0.01,
            loss_mode: LossMode::Retransmit {
                rto: Duration::from_millis(200),
            },
            heavy_tail: Some(HeavyTail {
                probability: 0.05,
                min: Duration::from_millis(20),
                shape: 1.5,
                cap: Duration::from_secs(5),
            }),
            ..TraceConfig::lan()
        }
    }

    /// A calm network (10 ms jitter, 0.1% loss) and a sender that stalls: a pause starts
    /// before ~0.5% of heartbeats (every ~100 s), Pareto-distributed from 100 ms (shape 1.2,
    /// capped at 10 s) — mostly harmless, occasionally longer than any sane timeout.
    pub fn gc_pauses() -> Self {
        TraceConfig {
            base_delay: Duration::from_millis(2),
            jitter: Duration::from_millis(10),
            loss: 0.001,
            pauses: Some(Pauses {
                probability: 0.005,
                min: Duration::from_millis(100),
                shape: 1.2,
                cap: Duration::from_secs(10),
            }),
            ..TraceConfig::lan()
        }
    }

    /// Check the settings, naming the offending field (`trace.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::new(
                "trace.interval",
                "must be greater than zero",
            ));
        }
        if self.duration.is_zero() {
            return Err(ConfigError::new(
                "trace.duration",
                "must be greater than zero",
            ));
        }
        check_range("trace.loss", self.loss, 0.0, 1.0)?;
        if let LossMode::Retransmit { rto } = self.loss_mode
            && rto.is_zero()
        {
            return Err(ConfigError::new(
                "trace.loss_mode.rto",
                "must be greater than zero",
            ));
        }
        if let Some(b) = &self.bursts {
            check_range("trace.bursts.probability", b.probability, 0.0, 1.0)?;
            check_range("trace.bursts.loss", b.loss, 0.0, 1.0)?;
        }
        if let Some(p) = &self.pauses {
            check_range("trace.pauses.probability", p.probability, 0.0, 1.0)?;
            check_range("trace.pauses.shape", p.shape, 0.01, 100.0)?;
            if p.cap < p.min {
                return Err(ConfigError::new(
                    "trace.pauses.cap",
                    "must be at least `min`",
                ));
            }
        }
        if let Some(h) = &self.heavy_tail {
            check_range("trace.heavy_tail.probability", h.probability, 0.0, 1.0)?;
            check_range("trace.heavy_tail.shape", h.shape, 0.01, 100.0)?;
            if h.cap < h.min {
                return Err(ConfigError::new(
                    "trace.heavy_tail.cap",
                    "must be at least `min`",
                ));
            }
        }
        Ok(())
    }
}

/// One heartbeat that reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Sequence number (1, 2, 3, … in send order; gaps are lost heartbeats).
    pub seq: u64,
    /// When the agent sent it.
    pub sent: Time,
    /// When it arrived.
    pub at: Time,
}

/// A generated trace. `arrivals` are in arrival order, which is also sequence order (in-order
/// delivery). A heartbeat sent shortly before `end` may arrive after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Heartbeat interval the agent used.
    pub interval: Duration,
    /// First scheduled heartbeat.
    pub start: Time,
    /// End of the observation.
    pub end: Time,
    /// When the agent crashed, if it did before `end`.
    pub crash_at: Option<Time>,
    /// Heartbeats the agent sent, delivered or not.
    pub sent: u64,
    /// Delivered heartbeats.
    pub arrivals: Vec<Arrival>,
}

/// Retransmissions after which a TCP sender gives up on a segment (Linux' `tcp_retries2`).
const MAX_RETRANSMITS: u32 = 15;

fn pareto_duration(rng: &mut Rng, min: Duration, shape: f64, cap: Duration) -> Duration {
    let nanos = rng.pareto(duration_nanos(min) as f64, shape.max(0.01));
    // `as` saturates (and maps NaN to 0), so no panic; then cap.
    Duration::from_nanos(nanos as u64).min(cap)
}

/// Generate a trace. The same config and seed always give the same trace. The config is
/// expected to be valid ([`TraceConfig::validate`]); a zero interval is treated as 1 µs so
/// generation always terminates.
pub fn generate(cfg: &TraceConfig, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let start = Time::ZERO;
    let end = start + cfg.duration;
    let crash_at = cfg.crash_at.map(|c| start + c).filter(|&c| c < end);
    let stop = crash_at.unwrap_or(end);
    let interval = cfg.interval.max(Duration::from_micros(1));
    let interval_ns = duration_nanos(interval);
    let jitter_ns = duration_nanos(cfg.jitter);
    let mut arrivals = Vec::with_capacity(
        usize::try_from(duration_nanos(cfg.duration) / interval_ns + 1)
            .unwrap_or(0)
            .min(1 << 24),
    );

    let mut sent = 0u64;
    let mut pause_end = start;
    let mut burst_end = start;
    let mut last_arrival = start;
    for seq in 1u64.. {
        let scheduled = Time::from_nanos(
            start
                .as_nanos()
                .saturating_add((seq - 1).saturating_mul(interval_ns)),
        );
        if scheduled >= end {
            break;
        }
        // Sender: a pause may start before this heartbeat; a heartbeat due during a pause goes
        // out when the pause ends.
        if let Some(p) = &cfg.pauses
            && scheduled >= pause_end
            && rng.bernoulli(p.probability)
        {
            pause_end = scheduled + pareto_duration(&mut rng, p.min, p.shape, p.cap);
        }
        let send = scheduled.max(pause_end);
        if send >= stop {
            if scheduled >= stop {
                break;
            }
            continue;
        }
        sent += 1;

        // Network: congestion state, then delay, then loss.
        let mut loss = cfg.loss;
        let mut delay = duration_nanos(cfg.base_delay) + rng.below(jitter_ns.max(1));
        if let Some(b) = &cfg.bursts {
            if send >= burst_end && rng.bernoulli(b.probability) {
                burst_end = send + b.length;
            }
            if send < burst_end {
                delay += duration_nanos(b.extra_delay);
                loss = b.loss;
            }
        }
        if let Some(h) = &cfg.heavy_tail
            && rng.bernoulli(h.probability)
        {
            delay += duration_nanos(pareto_duration(&mut rng, h.min, h.shape, h.cap));
        }
        match cfg.loss_mode {
            LossMode::Drop => {
                if rng.bernoulli(loss) {
                    continue;
                }
            }
            LossMode::Retransmit { rto } => {
                let mut wait = duration_nanos(rto);
                let mut tries = 0;
                while tries < MAX_RETRANSMITS && rng.bernoulli(loss) {
                    delay = delay.saturating_add(wait);
                    wait = wait.saturating_mul(2);
                    tries += 1;
                }
                if tries == MAX_RETRANSMITS {
                    continue; // the connection would be reset: the heartbeat is gone
                }
            }
        }
        // In-order delivery: nothing overtakes an earlier heartbeat.
        let at = Time::from_nanos(send.as_nanos().saturating_add(delay)).max(last_arrival);
        last_arrival = at;
        arrivals.push(Arrival {
            seq,
            sent: send,
            at,
        });
    }
    Trace {
        interval,
        start,
        end,
        crash_at,
        sent,
        arrivals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_and_seeds_differ() {
        for cfg in [
            TraceConfig::lan(),
            TraceConfig::lossy(),
            TraceConfig::bursty(),
            TraceConfig::heavy_tailed(),
            TraceConfig::gc_pauses(),
        ] {
            assert_eq!(cfg.validate(), Ok(()));
            let a = generate(&cfg, 7);
            assert_eq!(a, generate(&cfg, 7));
            assert_ne!(a.arrivals, generate(&cfg, 8).arrivals);
        }
    }

    #[test]
    fn lossy_preset_loses_about_five_percent_and_delivers_in_order() {
        let cfg = TraceConfig {
            duration: Duration::from_secs(3600),
            ..TraceConfig::lossy()
        };
        let t = generate(&cfg, 1);
        assert_eq!(t.sent, 7200);
        let lost = t.sent - t.arrivals.len() as u64;
        let rate = lost as f64 / t.sent as f64;
        // 7200 Bernoulli(0.05) trials: σ ≈ 0.26%.
        assert!((0.04..0.06).contains(&rate), "loss rate {rate}");
        for w in t.arrivals.windows(2) {
            assert!(w[0].seq < w[1].seq);
            assert!(w[0].at <= w[1].at);
        }
        for a in &t.arrivals {
            let delay = a.at - a.sent;
            assert!(delay >= Duration::from_millis(2) && delay < Duration::from_millis(102));
            assert_eq!(a.sent, Time::ZERO + cfg.interval * (a.seq as u32 - 1));
        }
    }

    #[test]
    fn crash_stops_heartbeats() {
        let cfg = TraceConfig {
            crash_at: Some(Duration::from_secs(100)),
            ..TraceConfig::lossy()
        };
        let t = generate(&cfg, 3);
        assert_eq!(t.crash_at, Some(Time::from_millis(100_000)));
        assert_eq!(t.sent, 200, "heartbeats at 0, 0.5, …, 99.5 s");
        assert!(
            t.arrivals
                .iter()
                .all(|a| a.sent < Time::from_millis(100_000))
        );
        // A crash after the end is no crash.
        let late = TraceConfig {
            crash_at: Some(Duration::from_secs(10_000)),
            ..TraceConfig::lossy()
        };
        assert_eq!(generate(&late, 3).crash_at, None);
    }

    #[test]
    fn retransmission_delays_instead_of_dropping_and_blocks_the_line() {
        let cfg = TraceConfig {
            loss: 0.3,
            jitter: Duration::ZERO,
            base_delay: Duration::from_millis(1),
            loss_mode: LossMode::Retransmit {
                rto: Duration::from_millis(200),
            },
            ..TraceConfig::lan()
        };
        let t = generate(&cfg, 11);
        assert_eq!(t.arrivals.len() as u64, t.sent, "nothing is dropped");
        let mut late = 0;
        for w in t.arrivals.windows(2) {
            assert!(w[0].at <= w[1].at);
            let d = w[1].at - w[1].sent;
            if d > Duration::from_millis(1) {
                late += 1;
                let own = d.as_millis();
                // Late by 200·(2ⁿ − 1) ms of its own, or held back behind the previous one.
                assert!(
                    [201, 601, 1401, 3001, 6201].contains(&own) || w[1].at == w[0].at,
                    "delay {own} ms"
                );
            }
        }
        assert!(
            late > 200,
            "30% loss must delay many heartbeats, got {late}"
        );
    }

    #[test]
    fn pauses_hold_heartbeats_back_then_flush_them() {
        let cfg = TraceConfig {
            pauses: Some(Pauses {
                probability: 0.01,
                min: Duration::from_secs(2),
                shape: 1.5,
                cap: Duration::from_secs(4),
            }),
            loss: 0.0,
            ..TraceConfig::lan()
        };
        let t = generate(&cfg, 5);
        // Paused heartbeats are late, not lost (only a pause running past the end loses some).
        assert!(t.sent >= 1190, "{}", t.sent);
        assert_eq!(t.arrivals.len() as u64, t.sent);
        let flushed = t
            .arrivals
            .windows(2)
            .filter(|w| w[0].sent == w[1].sent)
            .count();
        assert!(
            flushed > 0,
            "a pause of ≥ 2 s flushes several due heartbeats at once"
        );
        let max_gap = t
            .arrivals
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default();
        assert!(max_gap >= Duration::from_secs(2) && max_gap <= Duration::from_millis(4_600));
    }

    #[test]
    fn bursts_and_heavy_tails_add_delay() {
        let calm = generate(
            &TraceConfig {
                bursts: None,
                ..TraceConfig::bursty()
            },
            2,
        );
        let bursty = generate(&TraceConfig::bursty(), 2);
        let slow = |t: &Trace| {
            t.arrivals
                .iter()
                .filter(|a| a.at - a.sent > Duration::from_millis(300))
                .count()
        };
        assert_eq!(slow(&calm), 0);
        assert!(slow(&bursty) > 10, "{}", slow(&bursty));
        let tail = generate(&TraceConfig::heavy_tailed(), 2);
        let max = tail
            .arrivals
            .iter()
            .map(|a| a.at - a.sent)
            .max()
            .unwrap_or_default();
        assert!(max > Duration::from_millis(500), "{max:?}");
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: TraceConfig| c.validate().map_err(|e| e.field.into_owned());
        assert_eq!(
            field(TraceConfig {
                interval: Duration::ZERO,
                ..TraceConfig::lan()
            }),
            Err("trace.interval".into())
        );
        assert_eq!(
            field(TraceConfig {
                loss: 1.5,
                ..TraceConfig::lan()
            }),
            Err("trace.loss".into())
        );
        assert_eq!(
            field(TraceConfig {
                loss_mode: LossMode::Retransmit {
                    rto: Duration::ZERO
                },
                ..TraceConfig::lan()
            }),
            Err("trace.loss_mode.rto".into())
        );
        let mut bad = TraceConfig::gc_pauses();
        if let Some(p) = bad.pauses.as_mut() {
            p.cap = Duration::from_millis(1);
        }
        assert_eq!(field(bad), Err("trace.pauses.cap".into()));
        // Even an invalid config generates (and terminates).
        let t = generate(
            &TraceConfig {
                interval: Duration::ZERO,
                duration: Duration::from_millis(1),
                ..TraceConfig::lan()
            },
            1,
        );
        assert_eq!(t.sent, 1000);
    }
}
