//! The two-window failure detector, 2W-FD (Tomsic, Sens, Garcia, Arantes & Sopena, 2015).
//!
//! It predicts *when* the next heartbeat should arrive with Chen's estimator (Chen, Toueg &
//! Aguilera, 2002): heartbeat `s` is sent at about `Δ·s` on the agent's schedule, so
//! `A_i − Δ·s_i` (arrival time minus scheduled send offset) is the agent's clock offset plus
//! the network delay, and its mean over recent beats predicts the next arrival:
//!
//! ```text
//! EA_{l+1} = Δ·(l + 1) + mean_i (A_i − Δ·s_i)      (l = highest sequence number received)
//! ```
//!
//! 2W-FD computes that mean over a short window (`n1`, reacts within a few beats to a delay
//! burst) and a long one (`n2`, remembers the network's long-run behaviour), takes the *later*
//! of the two predictions, and suspects at `EA + α`. Because the estimate is anchored on
//! sequence numbers, a lost heartbeat leaves a gap in `s` but does not bias the prediction —
//! unlike φ accrual, which sees a loss as one long interval and widens its timeout for the
//! rest of its window.
//!
//! All arithmetic is in integer nanoseconds relative to the first accepted beat (the anchor),
//! so the running sums are exact: no drift, no recomputation, O(1) per heartbeat.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LivenessDetector;
use crate::error::ConfigError;
use crate::time::{Time, duration_nanos};

/// Settings of [`TwoWindow`].
///
/// # Why these defaults
///
/// `short_window = 5` and `long_window = 1000` are the paper's. The margin α is tuned like
/// [`PhiConfig`](super::PhiConfig)'s defaults: for 500 ms heartbeats with 5% loss and 100 ms
/// jitter, T_D p99 under 2 s and P_A ≥ 0.9999 (`cargo bench --bench detector_qos`). After `k`
/// lost heartbeats the next one arrives about `k·Δ` after the expected arrival EA, so
/// α = 1.3 s covers two losses in a row (1.0 s, plus jitter) with ~250 ms to spare, turns
/// three (1.5 s, about once an hour) into a ~0.2 s mistake, and bounds detection at
/// T_D ≤ Δ + delay + α ≈ 1.9 s. Because EA comes from the schedule rather than from the last
/// arrival, the last heartbeat's jitter does not add to T_D, which is why 2W-FD gets slightly
/// faster detection than φ for the same accuracy. Over 40 seeds × 200 traces × 10 minutes:
/// T_D p99 ≤ 1.87 s, P_A ≥ 0.99993. For another heartbeat interval, scale `interval` and
/// `margin` with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwoWindowConfig {
    /// The agents' heartbeat interval Δ: heartbeat `s` is expected about `Δ·s` after the
    /// first. Must match what the agents actually use.
    #[serde(with = "crate::duration_serde")]
    pub interval: Duration,
    /// Beats in the short window `n1`: how fast the estimate follows a change in delay.
    pub short_window: usize,
    /// Beats in the long window `n2`: how much history keeps the estimate from dropping right
    /// after a burst.
    pub long_window: usize,
    /// Safety margin α added to the expected arrival: the lateness tolerated before suspecting.
    #[serde(with = "crate::duration_serde")]
    pub margin: Duration,
}

impl Default for TwoWindowConfig {
    fn default() -> Self {
        TwoWindowConfig {
            interval: Duration::from_millis(500),
            short_window: 5,
            long_window: 1000,
            margin: Duration::from_millis(1300),
        }
    }
}

/// Largest window accepted (bounds memory per agent and keeps the i64 sums exact).
const MAX_WINDOW: usize = 65_536;
/// Largest interval or margin accepted.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Offsets `A_i − Δ·s_i − anchor` are clamped to ±2⁴⁶ ns (about 19.5 hours) so that a window
/// of up to 2¹⁶ of them sums without overflowing an i64.
const MAX_OFFSET: i64 = 1 << 46;

impl TwoWindowConfig {
    /// Check the settings, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::new(
                "two_window.interval",
                "must be greater than zero",
            ));
        }
        if self.interval > MAX_DURATION {
            return Err(ConfigError::new(
                "two_window.interval",
                "must be at most 1h",
            ));
        }
        if self.short_window == 0 {
            return Err(ConfigError::new(
                "two_window.short_window",
                "must be at least 1",
            ));
        }
        if self.long_window > MAX_WINDOW {
            return Err(ConfigError::new(
                "two_window.long_window",
                format!("must be at most {MAX_WINDOW}, got {}", self.long_window),
            ));
        }
        if self.short_window > self.long_window {
            return Err(ConfigError::new(
                "two_window.short_window",
                format!(
                    "must not exceed long_window ({}), got {}",
                    self.long_window, self.short_window
                ),
            ));
        }
        if self.margin > MAX_DURATION {
            return Err(ConfigError::new("two_window.margin", "must be at most 1h"));
        }
        Ok(())
    }
}

/// The 2W-FD detector. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct TwoWindow {
    cfg: TwoWindowConfig,
    delta: i128,
    margin: u64,
    n1: usize,
    /// Ring of offsets `A_i − Δ·s_i − anchor` in nanoseconds; capacity `n2`. `head` is the
    /// next slot to write; the short window is the `n1` newest entries.
    ring: Box<[i64]>,
    head: usize,
    len: usize,
    sum_short: i64,
    sum_long: i64,
    /// `A_1 − Δ·s_1` of the first accepted beat; keeps stored offsets small.
    anchor: i128,
    last_seq: Option<u64>,
    last_arrival: Option<Time>,
    deadline: Option<Time>,
}

impl TwoWindow {
    /// A detector with these settings. Expects a validated config; out-of-range values are
    /// clamped into range rather than panicking.
    pub fn new(cfg: TwoWindowConfig) -> Self {
        let n2 = cfg.long_window.clamp(1, MAX_WINDOW);
        let n1 = cfg.short_window.clamp(1, n2);
        TwoWindow {
            delta: i128::from(duration_nanos(
                cfg.interval.clamp(Duration::from_nanos(1), MAX_DURATION),
            )),
            margin: duration_nanos(cfg.margin.min(MAX_DURATION)),
            n1,
            ring: vec![0; n2].into_boxed_slice(),
            head: 0,
            len: 0,
            sum_short: 0,
            sum_long: 0,
            anchor: 0,
            last_seq: None,
            last_arrival: None,
            deadline: None,
            cfg,
        }
    }

    /// The settings this detector was built with.
    pub fn config(&self) -> &TwoWindowConfig {
        &self.cfg
    }

    /// Expected arrival time of the next heartbeat (`max(EA_short, EA_long)`), if any beat has
    /// been seen.
    pub fn expected_arrival(&self) -> Option<Time> {
        let last = self.last_seq?;
        Some(clamp_time(self.expected_arrival_nanos(last)))
    }

    fn expected_arrival_nanos(&self, last_seq: u64) -> i128 {
        let short = self.sum_short as f64 / self.len.min(self.n1).max(1) as f64;
        let long = self.sum_long as f64 / self.len.max(1) as f64;
        // Offsets are exact integers; only the mean is rounded (to the nearest nanosecond).
        let mean = short.max(long).round() as i128;
        self.anchor + self.delta * (i128::from(last_seq) + 1) + mean
    }

    fn push(&mut self, x: i64) {
        let cap = self.ring.len();
        // The entry leaving the short window is the n1-th newest before this push.
        if self.len >= self.n1 {
            let idx = (self.head + cap - self.n1) % cap;
            self.sum_short -= self.ring[idx];
        }
        if self.len == cap {
            self.sum_long -= self.ring[self.head];
        } else {
            self.len += 1;
        }
        self.ring[self.head] = x;
        self.sum_short += x;
        self.sum_long += x;
        self.head += 1;
        if self.head == cap {
            self.head = 0;
        }
    }
}

fn clamp_time(nanos: i128) -> Time {
    Time::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

impl LivenessDetector for TwoWindow {
    fn heartbeat(&mut self, seq: u64, at: Time) {
        if self.last_seq.is_some_and(|last| seq <= last) {
            return;
        }
        let v = i128::from(at.as_nanos()) - self.delta * i128::from(seq);
        if self.last_seq.is_none() {
            self.anchor = v;
        }
        let offset = (v - self.anchor).clamp(-i128::from(MAX_OFFSET), i128::from(MAX_OFFSET));
        // In range by the clamp above.
        self.push(offset as i64);
        self.last_seq = Some(seq);
        self.last_arrival = Some(at);
        // The prediction can fall before this very arrival (the beat that just came was much
        // later than its predecessors, e.g. right after a sender pause). Suspecting an agent in
        // the instant it proved alive is never right, so the margin counts from the later of
        // the two.
        let ea = self
            .expected_arrival_nanos(seq)
            .max(i128::from(at.as_nanos()));
        self.deadline = Some(clamp_time(ea + i128::from(self.margin)));
    }

    /// Elapsed silence as a fraction of the current deadline (`1.0` is the suspicion point).
    fn suspicion(&self, now: Time) -> f64 {
        let (Some(last), Some(deadline)) = (self.last_arrival, self.deadline) else {
            return 0.0;
        };
        let elapsed = now.as_nanos().saturating_sub(last.as_nanos());
        let budget = deadline.as_nanos().saturating_sub(last.as_nanos());
        if budget == 0 {
            // Zero margin and a late beat: suspect from the arrival itself.
            return if elapsed == 0 { 1.0 } else { f64::INFINITY };
        }
        elapsed as f64 / budget as f64
    }

    fn suspect_at(&self) -> Option<Time> {
        self.deadline
    }

    fn name(&self) -> &'static str {
        "two_window"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    fn cfg(short: usize, long: usize, margin_ms: u64) -> TwoWindowConfig {
        TwoWindowConfig {
            interval: Duration::from_millis(500),
            short_window: short,
            long_window: long,
            margin: Duration::from_millis(margin_ms),
        }
    }

    #[test]
    fn suspects_after_expected_arrival_plus_margin() {
        struct Case {
            name: &'static str,
            cfg: TwoWindowConfig,
            /// (seq, arrival ms)
            beats: Vec<(u64, u64)>,
            now_ms: u64,
            suspect: bool,
        }
        // Beats sent every 500 ms, arriving 20 ms later.
        let regular: Vec<(u64, u64)> = (1..=20).map(|s| (s, s * 500 + 20)).collect();
        let cases = [
            // Next beat (21) expected at 10 520; +200 ms margin.
            Case {
                name: "regular before",
                cfg: cfg(5, 100, 200),
                beats: regular.clone(),
                now_ms: 10_719,
                suspect: false,
            },
            Case {
                name: "regular at",
                cfg: cfg(5, 100, 200),
                beats: regular.clone(),
                now_ms: 10_720,
                suspect: true,
            },
            // A single beat: expected one interval later.
            Case {
                name: "first beat",
                cfg: cfg(5, 100, 100),
                beats: vec![(1, 1_000)],
                now_ms: 1_599,
                suspect: false,
            },
            Case {
                name: "first beat at",
                cfg: cfg(5, 100, 100),
                beats: vec![(1, 1_000)],
                now_ms: 1_600,
                suspect: true,
            },
            // Beats 18 and 19 lost: the estimate for 21 is unchanged by the gap.
            Case {
                name: "losses",
                cfg: cfg(5, 100, 200),
                beats: regular
                    .iter()
                    .copied()
                    .filter(|&(s, _)| s != 18 && s != 19)
                    .collect(),
                now_ms: 10_719,
                suspect: false,
            },
            // Duplicates/reordering ignored: a stale seq 3 at 10 600 must not extend anything.
            Case {
                name: "stale seq",
                cfg: cfg(5, 100, 200),
                beats: regular.iter().copied().chain([(3, 10_600)]).collect(),
                now_ms: 10_720,
                suspect: true,
            },
            // Nothing heard: no verdict.
            Case {
                name: "empty",
                cfg: cfg(5, 100, 200),
                beats: vec![],
                now_ms: 100_000,
                suspect: false,
            },
        ];
        for c in cases {
            let mut d = TwoWindow::new(c.cfg);
            for &(s, a) in &c.beats {
                d.heartbeat(s, ms(a));
            }
            let now = ms(c.now_ms);
            assert_eq!(
                d.is_suspect(now),
                c.suspect,
                "{}: suspect_at {:?}",
                c.name,
                d.suspect_at()
            );
            assert_eq!(d.suspicion(now) >= 1.0, c.suspect, "{} suspicion", c.name);
        }
    }

    #[test]
    fn takes_the_later_of_short_and_long_estimates() {
        // Long history at +20 ms delay, then five beats at +220 ms: the short window has moved,
        // the long one has barely, and the later (short) estimate wins.
        let mut d = TwoWindow::new(cfg(5, 1000, 0));
        for s in 1..=200u64 {
            d.heartbeat(s, ms(s * 500 + 20));
        }
        for s in 201..=205u64 {
            d.heartbeat(s, ms(s * 500 + 220));
        }
        assert_eq!(d.expected_arrival(), Some(ms(206 * 500 + 220)));
        // Back to +20 ms: the short window drops back after five beats, the long window
        // (mean still a little above +20 ms) now dominates.
        for s in 206..=210u64 {
            d.heartbeat(s, ms(s * 500 + 20));
        }
        let ea = d.expected_arrival().expect("beats seen").as_nanos();
        let base = ms(211 * 500 + 20).as_nanos();
        assert!(
            ea > base && ea < base + 10_000_000,
            "long window keeps a memory of the burst"
        );
    }

    #[test]
    fn lost_heartbeats_do_not_move_the_deadline() {
        // Same arrivals except that every 5th beat is lost in one run: Chen's estimator uses
        // the sequence numbers, so the prediction for the next beat is identical.
        let mut all = TwoWindow::new(TwoWindowConfig::default());
        let mut lossy = TwoWindow::new(TwoWindowConfig::default());
        for s in 1..=1_000u64 {
            let at = ms(s * 500 + (s * 37) % 100);
            all.heartbeat(s, at);
            if s % 5 != 0 || s == 1_000 {
                lossy.heartbeat(s, at);
            }
        }
        let (a, b) = (
            all.suspect_at().expect("seen"),
            lossy.suspect_at().expect("seen"),
        );
        let diff = a.as_nanos().abs_diff(b.as_nanos());
        assert!(diff < 5_000_000, "deadlines differ by {diff} ns");
        // And when the next beat does not come, the lossy run suspects on schedule.
        let last = ms(1_000 * 500); // beat 1000 has no jitter: (1000 · 37) % 100 = 0
        assert!(lossy.is_suspect(
            last + Duration::from_millis(500) + lossy.config().margin + Duration::from_millis(100)
        ));
    }

    #[test]
    fn never_suspects_at_the_arrival_itself() {
        // A sender pause: beats 1..=20 on time, then beat 21 arrives 5 s late. The estimate
        // (mean of offsets) lies before that arrival; the deadline counts from the arrival.
        let mut d = TwoWindow::new(cfg(5, 100, 300));
        for s in 1..=20u64 {
            d.heartbeat(s, ms(s * 500));
        }
        let late = ms(21 * 500 + 5_000);
        d.heartbeat(21, late);
        assert!(!d.is_suspect(late));
        assert_eq!(d.suspect_at(), Some(late + Duration::from_millis(300)));
        let mut zero = TwoWindow::new(cfg(5, 100, 0));
        for s in 1..=20u64 {
            zero.heartbeat(s, ms(s * 500));
        }
        zero.heartbeat(21, late);
        assert_eq!(zero.suspicion(late), 1.0);
        assert!(
            zero.suspicion(late + Duration::from_millis(1))
                .is_infinite()
        );
    }

    #[test]
    fn windows_evict_correctly_over_many_wraps() {
        // Against a brute-force recomputation over the last n1 / n2 offsets.
        let c = cfg(3, 7, 0);
        let mut d = TwoWindow::new(c);
        let mut offsets: Vec<i64> = Vec::new();
        for s in 1..=100u64 {
            let at = s * 500 + (s * s * 13) % 250;
            d.heartbeat(s, ms(at));
            offsets.push(at as i64 * 1_000_000 - 500_000_000 * s as i64);
            let anchor = offsets[0];
            let rel: Vec<i64> = offsets.iter().map(|o| o - anchor).collect();
            let tail = |n: usize| {
                rel[rel.len().saturating_sub(n)..].iter().sum::<i64>() as f64
                    / rel.len().min(n) as f64
            };
            let mean = tail(3).max(tail(7)).round() as i64;
            let expected = anchor + 500_000_000 * (s as i64 + 1) + mean;
            assert_eq!(
                d.expected_arrival().map(|t| t.as_nanos() as i64),
                Some(expected),
                "seq {s}"
            );
        }
    }

    /// Heartbeat arrival (ms) for a sender on a 500 ms schedule with 5–45 ms of delay.
    fn on_time(seq: u64) -> u64 {
        seq * 500 + 5 + (seq * 13) % 40
    }

    #[test]
    fn recovers_from_a_burst_faster_than_phi() {
        use crate::detector::{PhiAccrual, PhiConfig};
        // A burst: after 600 regular beats the sender stalls for 6 s, then flushes the 12 beats
        // that fell due, then goes back to normal. φ records one 6.5 s interval and eleven
        // ~0 ms ones, and its σ — hence its deadline — stays inflated (by ~20%, measured)
        // until they leave its 1000-interval window. 2W-FD's prediction is back on the
        // schedule once its 5-beat short window has moved past the burst; only its long
        // window keeps a small memory of the late beats (~+3%).
        let mut phi = PhiAccrual::new(PhiConfig::default());
        let mut two = TwoWindow::new(TwoWindowConfig::default());
        let deadline = |d: &dyn LivenessDetector, last: u64| {
            d.suspect_at().expect("beats seen").as_nanos() as f64 / 1e6 - last as f64
        };
        let mut seq = 0;
        let feed = |phi: &mut PhiAccrual, two: &mut TwoWindow, s: u64, at: u64| {
            phi.heartbeat(s, ms(at));
            two.heartbeat(s, ms(at));
        };
        for _ in 0..600 {
            seq += 1;
            feed(&mut phi, &mut two, seq, on_time(seq));
        }
        let (phi_before, two_before) = (deadline(&phi, on_time(seq)), deadline(&two, on_time(seq)));
        let flush = on_time(seq) + 6_500;
        for _ in 0..12 {
            seq += 1;
            feed(&mut phi, &mut two, seq, flush);
        }
        // Both tolerate the flush itself; now back to normal for a few beats.
        let mut last = flush;
        for _ in 0..10 {
            seq += 1;
            last = on_time(seq);
            feed(&mut phi, &mut two, seq, last);
        }
        let two_after = deadline(&two, last);
        assert!(
            (two_after - two_before).abs() < 0.05 * two_before,
            "2W back to normal after 10 beats: {two_before:.0} → {two_after:.0} ms"
        );
        // 200 beats (100 s) later φ still waits much longer than before the burst.
        for _ in 0..200 {
            seq += 1;
            last = on_time(seq);
            feed(&mut phi, &mut two, seq, last);
        }
        let phi_after = deadline(&phi, last);
        assert!(
            phi_after > 1.15 * phi_before,
            "φ still inflated after 200 beats: {phi_before:.0} → {phi_after:.0} ms"
        );
        assert!((deadline(&two, last) - two_before).abs() < 0.05 * two_before);
    }

    #[test]
    fn short_window_follows_a_delay_step_that_the_long_window_alone_misses() {
        // Delay steps up by 400 ms and stays there. Chen's estimator over the long window only
        // (n1 = n2) keeps predicting the old arrival time — every beat looks 400 ms late —
        // while 2W-FD has caught up five beats later.
        let mut two = TwoWindow::new(TwoWindowConfig::default());
        let mut long_only = TwoWindow::new(TwoWindowConfig {
            short_window: 1000,
            ..TwoWindowConfig::default()
        });
        for s in 1..=500u64 {
            two.heartbeat(s, ms(on_time(s)));
            long_only.heartbeat(s, ms(on_time(s)));
        }
        for s in 501..=505u64 {
            two.heartbeat(s, ms(on_time(s) + 400));
            long_only.heartbeat(s, ms(on_time(s) + 400));
        }
        let actual = on_time(506) + 400;
        let err = |d: &TwoWindow| {
            d.expected_arrival().expect("seen").as_nanos() as f64 / 1e6 - actual as f64
        };
        assert!(err(&two).abs() < 30.0, "2W-FD error {:.0} ms", err(&two));
        assert!(
            err(&long_only) < -350.0,
            "long window error {:.0} ms",
            err(&long_only)
        );
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: TwoWindowConfig| c.validate().map_err(|e| e.field.into_owned());
        let d = TwoWindowConfig::default;
        assert_eq!(field(d()), Ok(()));
        assert_eq!(
            field(TwoWindowConfig {
                interval: Duration::ZERO,
                ..d()
            }),
            Err("two_window.interval".into())
        );
        assert_eq!(
            field(TwoWindowConfig {
                short_window: 0,
                ..d()
            }),
            Err("two_window.short_window".into())
        );
        assert_eq!(
            field(TwoWindowConfig {
                short_window: 50,
                long_window: 10,
                ..d()
            }),
            Err("two_window.short_window".into())
        );
        assert_eq!(
            field(TwoWindowConfig {
                long_window: 1 << 20,
                ..d()
            }),
            Err("two_window.long_window".into())
        );
        assert_eq!(
            field(TwoWindowConfig {
                margin: Duration::from_secs(4000),
                ..d()
            }),
            Err("two_window.margin".into())
        );
        // Invalid settings still build a working detector.
        let mut wild = TwoWindow::new(TwoWindowConfig {
            interval: Duration::ZERO,
            short_window: 0,
            long_window: 0,
            ..d()
        });
        wild.heartbeat(1, ms(10));
        wild.heartbeat(2, ms(20));
        assert!(wild.suspect_at().is_some());
    }
}
