//! Failure-detector quality of service, measured on heartbeat traces (Chen, Toueg & Aguilera,
//! "On the Quality of Service of Failure Detectors", 2002).
//!
//! "Detects failures in X seconds" means nothing without "and wrongly suspects a live agent
//! this often", and both depend on the network. This module replays a [`Trace`] through a
//! [`LivenessDetector`] and measures, exactly:
//!
//! - **T_D**, detection time: from the crash to the start of the suspicion that never ends;
//! - **mistakes**: suspicions of a live agent — how many (λ_M, the rate; T_MR, the mean time
//!   between them) and how long each lasts (T_M);
//! - **P_A**, query accuracy: the probability that asking the detector about a live agent at a
//!   random moment gets the right answer;
//! - a **confusion matrix** sampled once per window, for precision/recall/F1 comparisons with
//!   other classifiers.
//!
//! The replay is event-driven: between two arrivals a detector's verdict can only flip once,
//! at its [`suspect_at`](LivenessDetector::suspect_at), so suspicion intervals are exact to
//! the nanosecond and hours of trace cost microseconds — no time stepping.

use std::fmt::Write as _;
use std::time::Duration;

use crate::detector::{DetectorConfig, LivenessDetector};
use crate::rng::Rng;
use crate::time::{Time, duration_nanos};
use crate::trace::{Arrival, Trace, TraceConfig, generate};

/// How to score a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Ignore suspicions that start in the first part of the trace, while the detector is
    /// still learning the network (every detector is bootstrapped from a guess).
    pub warmup: Duration,
    /// Sampling period of the confusion matrix.
    pub window: Duration,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            warmup: Duration::from_secs(10),
            window: Duration::from_secs(1),
        }
    }
}

/// Verdicts sampled at window ends. "Positive" means *suspected*; the truth is "down" from the
/// crash on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Down and suspected.
    pub true_pos: u64,
    /// Up but suspected (a mistake in progress).
    pub false_pos: u64,
    /// Up and trusted.
    pub true_neg: u64,
    /// Down but still trusted (detection in progress).
    pub false_neg: u64,
}

impl Confusion {
    /// Add another matrix's counts to this one.
    pub fn add(&mut self, other: &Confusion) {
        self.true_pos += other.true_pos;
        self.false_pos += other.false_pos;
        self.true_neg += other.true_neg;
        self.false_neg += other.false_neg;
    }

    /// Number of samples.
    pub fn total(&self) -> u64 {
        self.true_pos + self.false_pos + self.true_neg + self.false_neg
    }

    /// Of the samples where the agent was suspected, the fraction where it was down. `None`
    /// when nothing was ever suspected.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_pos, self.true_pos + self.false_pos)
    }

    /// Of the samples where the agent was down, the fraction where it was suspected. `None`
    /// when it was never down.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_pos, self.true_pos + self.false_neg)
    }

    /// Harmonic mean of precision and recall. `None` when either is undefined.
    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        Some(if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        })
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// One wrong suspicion of a live agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mistake {
    /// When the detector started suspecting.
    pub start: Time,
    /// How long until it trusted the agent again (or until the crash made the suspicion
    /// right, or the trace ended).
    pub duration: Duration,
}

/// QoS of one detector on one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceQos {
    /// The trace's crash, if any.
    pub crash_at: Option<Time>,
    /// T_D: from the crash to the start of the final, permanent suspicion; zero when the agent
    /// was already suspected at the crash. `None` without a crash, or if the detector never
    /// suspects (it heard nothing at all).
    pub detection_time: Option<Duration>,
    /// Suspicions that started while the agent was alive, after the warm-up.
    pub mistakes: Vec<Mistake>,
    /// Time the agent was alive and observed: from the end of the warm-up to the crash (or the
    /// end of the trace).
    pub alive_time: Duration,
    /// Verdicts sampled at every window end after the warm-up.
    pub confusion: Confusion,
}

impl TraceQos {
    /// Total time spent wrongly suspecting.
    pub fn mistake_time(&self) -> Duration {
        self.mistakes.iter().map(|m| m.duration).sum()
    }

    /// λ_M: mistakes per second of alive time (0 when nothing was observed).
    pub fn mistake_rate(&self) -> f64 {
        let secs = self.alive_time.as_secs_f64();
        if secs > 0.0 {
            self.mistakes.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// T_MR: mean alive time per mistake (`1/λ_M`). `None` without mistakes.
    pub fn mistake_recurrence(&self) -> Option<Duration> {
        per(self.alive_time, self.mistakes.len() as u64)
    }

    /// T_M: mean duration of a mistake. `None` without mistakes.
    pub fn mean_mistake_duration(&self) -> Option<Duration> {
        per(self.mistake_time(), self.mistakes.len() as u64)
    }

    /// P_A: `1 − mistake time / alive time` (1 when nothing was observed).
    pub fn query_accuracy(&self) -> f64 {
        accuracy(self.mistake_time(), self.alive_time)
    }
}

fn per(total: Duration, count: u64) -> Option<Duration> {
    (count > 0).then(|| Duration::from_nanos((total.as_nanos() / u128::from(count)) as u64))
}

fn accuracy(mistake_time: Duration, alive_time: Duration) -> f64 {
    if alive_time.is_zero() {
        1.0
    } else {
        1.0 - mistake_time.as_secs_f64() / alive_time.as_secs_f64()
    }
}

/// A suspicion interval `[start, end)`; `end = None` means it never ends.
type Suspicion = (Time, Option<Time>);

/// Replay `arrivals` through `detector` and return its suspicion intervals, in order and
/// disjoint. Arrivals with the same timestamp are applied together before the verdict at that
/// instant is taken (a heartbeat arriving exactly at the deadline saves the agent).
fn suspicions(detector: &mut impl LivenessDetector, arrivals: &[Arrival]) -> Vec<Suspicion> {
    let mut out = Vec::new();
    let mut open: Option<Time> = None;
    let mut prev: Option<Time> = None;
    let mut i = 0;
    while i < arrivals.len() {
        // Out-of-order input is clamped to keep time moving forward.
        let a = prev.map_or(arrivals[i].at, |p| arrivals[i].at.max(p));
        // Verdict on [prev, a) under the state left by the previous arrival.
        if let (Some(p), Some(s)) = (prev, detector.suspect_at())
            && s < a
            && open.is_none()
        {
            open = Some(s.max(p));
        }
        while i < arrivals.len() && arrivals[i].at <= a {
            detector.heartbeat(arrivals[i].seq, a);
            i += 1;
        }
        if detector.suspect_at().is_none_or(|s| s > a)
            && let Some(start) = open.take()
        {
            out.push((start, Some(a)));
        }
        prev = Some(a);
    }
    if let (Some(p), Some(s)) = (prev, detector.suspect_at())
        && open.is_none()
    {
        open = Some(s.max(p));
    }
    if let Some(start) = open {
        out.push((start, None));
    }
    out
}

/// Replay `trace` through `detector` (which should be fresh) and measure its QoS.
pub fn evaluate(
    detector: &mut impl LivenessDetector,
    trace: &Trace,
    opts: EvalOptions,
) -> TraceQos {
    let intervals = suspicions(detector, &trace.arrivals);
    let crash = trace.crash_at;
    let observed_from = trace.start + opts.warmup;
    let alive_until = crash.map_or(trace.end, |c| c.min(trace.end));

    // A suspicion that starts while the agent is alive is a mistake, and it lasts until trust
    // returns or the crash makes it right.
    let mistakes: Vec<Mistake> = intervals
        .iter()
        .filter(|(s, _)| *s >= observed_from && *s < alive_until)
        .map(|&(s, e)| Mistake {
            start: s,
            duration: e.map_or(alive_until, |e| e.min(alive_until)) - s,
        })
        .collect();

    let detection_time = crash.and_then(|c| match intervals.last() {
        Some(&(start, None)) => Some(start.saturating_since(c)),
        _ => None,
    });

    let mut confusion = Confusion::default();
    if !opts.window.is_zero() {
        let mut idx = 0;
        let mut at = observed_from + opts.window;
        while at <= trace.end {
            while idx < intervals.len() && intervals[idx].1.is_some_and(|e| e <= at) {
                idx += 1;
            }
            let suspected = idx < intervals.len() && intervals[idx].0 <= at;
            let down = crash.is_some_and(|c| c <= at);
            match (down, suspected) {
                (true, true) => confusion.true_pos += 1,
                (false, true) => confusion.false_pos += 1,
                (false, false) => confusion.true_neg += 1,
                (true, false) => confusion.false_neg += 1,
            }
            at = at + opts.window;
        }
    }

    TraceQos {
        crash_at: crash,
        detection_time,
        mistakes,
        alive_time: alive_until.saturating_since(observed_from),
        confusion,
    }
}

/// The nearest-rank percentile of an ascending slice: the smallest value with at least a
/// fraction `q` of the samples at or below it (`q` in `[0, 1]`; 0 gives the minimum, 1 the
/// maximum). `None` for an empty slice. Nearest-rank always returns an observed value — no
/// interpolation between, say, a 1.8 s and a "never" detection.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // The small epsilon keeps e.g. 0.99 × 200 = 198.00000000000003 from rounding up to 199.
    let rank = (q.clamp(0.0, 1.0) * n as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// QoS of one detector over many traces.
#[derive(Clone, Debug, PartialEq)]
pub struct QosSummary {
    /// Traces evaluated.
    pub traces: usize,
    /// Traces with a crash.
    pub crashes: usize,
    /// Crashes never detected (they count as infinitely slow in the percentiles).
    pub undetected: usize,
    /// Median detection time (`Duration::MAX` stands for "never").
    pub td_p50: Option<Duration>,
    /// 95th percentile detection time.
    pub td_p95: Option<Duration>,
    /// 99th percentile detection time.
    pub td_p99: Option<Duration>,
    /// Slowest detection.
    pub td_max: Option<Duration>,
    /// Total mistakes.
    pub mistakes: u64,
    /// Total time spent in mistakes.
    pub mistake_time: Duration,
    /// Total observed alive time.
    pub alive_time: Duration,
    /// λ_M: mistakes per hour of alive time.
    pub mistakes_per_hour: f64,
    /// T_MR: mean alive time between mistakes (`None` without mistakes).
    pub mistake_recurrence: Option<Duration>,
    /// T_M: mean mistake duration (`None` without mistakes).
    pub mean_mistake_duration: Option<Duration>,
    /// P_A over all traces: `1 − total mistake time / total alive time`.
    pub query_accuracy: f64,
    /// Summed confusion matrix.
    pub confusion: Confusion,
}

impl QosSummary {
    /// Aggregate per-trace results. Rates and P_A are pooled (total mistakes over total time),
    /// not averages of per-trace ratios, so short traces do not weigh more than long ones.
    pub fn from_results(results: &[TraceQos]) -> Self {
        let mut tds: Vec<Duration> = results
            .iter()
            .filter(|r| r.crash_at.is_some())
            .map(|r| r.detection_time.unwrap_or(Duration::MAX))
            .collect();
        tds.sort_unstable();
        let mistakes: u64 = results.iter().map(|r| r.mistakes.len() as u64).sum();
        let mistake_time: Duration = results.iter().map(TraceQos::mistake_time).sum();
        let alive_time: Duration = results.iter().map(|r| r.alive_time).sum();
        let mut confusion = Confusion::default();
        for r in results {
            confusion.add(&r.confusion);
        }
        let hours = alive_time.as_secs_f64() / 3600.0;
        QosSummary {
            traces: results.len(),
            crashes: tds.len(),
            undetected: tds.iter().filter(|&&d| d == Duration::MAX).count(),
            td_p50: percentile(&tds, 0.50),
            td_p95: percentile(&tds, 0.95),
            td_p99: percentile(&tds, 0.99),
            td_max: tds.last().copied(),
            mistakes,
            mistake_time,
            alive_time,
            mistakes_per_hour: if hours > 0.0 {
                mistakes as f64 / hours
            } else {
                0.0
            },
            mistake_recurrence: per(alive_time, mistakes),
            mean_mistake_duration: per(mistake_time, mistakes),
            query_accuracy: accuracy(mistake_time, alive_time),
            confusion,
        }
    }
}

/// A short human label for a detector configuration, for report rows.
pub fn label(cfg: &DetectorConfig) -> String {
    match cfg {
        DetectorConfig::FixedTimeout(c) => {
            format!(
                "fixed {}x{}",
                c.missed,
                crate::duration_serde::format(&c.interval)
            )
        }
        DetectorConfig::PhiAccrual(c) => format!("phi {}", c.threshold),
        DetectorConfig::TwoWindow(c) => format!(
            "2w-fd {}/{} +{}",
            c.short_window,
            c.long_window,
            crate::duration_serde::format(&c.margin)
        ),
    }
}

/// Trace number `index` of a [`compare`] run: `cfg` with a crash at a seeded random time in
/// the second half. The crash time depends only on `(seed, index, cfg.duration)`, so configs
/// that differ in anything else (e.g. the heartbeat interval) crash at the same moments.
pub fn crashing_trace(cfg: &TraceConfig, seed: u64, index: u64) -> Trace {
    let half = cfg.duration / 2;
    let crash =
        half + Duration::from_nanos(Rng::stream(seed, 2 * index).below(duration_nanos(half)));
    let trace_seed = Rng::stream(seed, 2 * index + 1).next_u64();
    generate(
        &TraceConfig {
            crash_at: Some(crash),
            ..cfg.clone()
        },
        trace_seed,
    )
}

/// Evaluate every detector on the same `traces` seeded traces of `cfg` (see
/// [`crashing_trace`]), with default [`EvalOptions`]; one labelled summary per detector, in
/// input order.
pub fn compare(
    detectors: &[DetectorConfig],
    cfg: &TraceConfig,
    traces: usize,
    seed: u64,
) -> Vec<(String, QosSummary)> {
    let opts = EvalOptions::default();
    let mut results: Vec<Vec<TraceQos>> = detectors
        .iter()
        .map(|_| Vec::with_capacity(traces))
        .collect();
    for i in 0..traces {
        let trace = crashing_trace(cfg, seed, i as u64);
        for (d, out) in detectors.iter().zip(results.iter_mut()) {
            out.push(evaluate(&mut d.build(), &trace, opts));
        }
    }
    detectors
        .iter()
        .zip(results)
        .map(|(d, r)| (label(d), QosSummary::from_results(&r)))
        .collect()
}

fn fmt_td(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(Duration::MAX) => "never".into(),
        Some(d) => format!("{:.3}s", d.as_secs_f64()),
    }
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.4}"))
}

/// Render summaries as an aligned text table, one row per detector.
pub fn format_table(rows: &[(String, QosSummary)]) -> String {
    const HEADER: [&str; 13] = [
        "detector",
        "traces",
        "T_D p50",
        "T_D p95",
        "T_D p99",
        "T_D max",
        "mistakes",
        "λ_M/h",
        "T_M mean",
        "P_A",
        "precision",
        "recall",
        "F1",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                s.traces.to_string(),
                fmt_td(s.td_p50),
                fmt_td(s.td_p95),
                fmt_td(s.td_p99),
                fmt_td(s.td_max),
                s.mistakes.to_string(),
                format!("{:.3}", s.mistakes_per_hour),
                fmt_td(s.mean_mistake_duration),
                format!("{:.6}", s.query_accuracy),
                fmt_ratio(s.confusion.precision()),
                fmt_ratio(s.confusion.recall()),
                fmt_ratio(s.confusion.f1()),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: &[String]| {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                text.push_str(c);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str("  ");
                text.push_str(&" ".repeat(pad));
                text.push_str(c);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&HEADER.map(String::from));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule);
    for row in &cells {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{FixedTimeout, FixedTimeoutConfig};

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    /// A trace of heartbeats every 500 ms (delivered instantly), minus `lost` sequence
    /// numbers, up to `last_seq`.
    fn hand_trace(end_ms: u64, crash_ms: Option<u64>, last_seq: u64, lost: &[u64]) -> Trace {
        let arrivals = (1..=last_seq)
            .filter(|s| !lost.contains(s))
            .map(|s| Arrival {
                seq: s,
                sent: ms((s - 1) * 500),
                at: ms((s - 1) * 500),
            })
            .collect();
        Trace {
            interval: Duration::from_millis(500),
            start: Time::ZERO,
            end: ms(end_ms),
            crash_at: crash_ms.map(ms),
            sent: last_seq,
            arrivals,
        }
    }

    fn fixed() -> FixedTimeout {
        FixedTimeout::new(FixedTimeoutConfig::default()) // 3 × 500 ms
    }

    const OPTS: EvalOptions = EvalOptions {
        warmup: Duration::from_secs(2),
        window: Duration::from_secs(1),
    };

    #[test]
    fn exact_qos_on_a_hand_built_trace() {
        // Beats at 0, 0.5, …, 14.5 s; 11–14 (5.0–6.5 s) lost; crash at 15 s; end at 20 s.
        // Last beat before the gap at 4.5 s → suspected 6.0 s until beat 15 at 7.0 s: one
        // 1 s mistake. Last beat at 14.5 s → suspected from 16 s: T_D = 1 s.
        let trace = hand_trace(20_000, Some(15_000), 30, &[11, 12, 13, 14]);
        let q = evaluate(&mut fixed(), &trace, OPTS);
        assert_eq!(q.detection_time, Some(Duration::from_secs(1)));
        assert_eq!(
            q.mistakes,
            vec![Mistake {
                start: ms(6_000),
                duration: Duration::from_secs(1)
            }]
        );
        assert_eq!(q.alive_time, Duration::from_secs(13));
        assert_eq!(q.mistake_time(), Duration::from_secs(1));
        assert!((q.query_accuracy() - 12.0 / 13.0).abs() < 1e-12);
        assert!((q.mistake_rate() - 1.0 / 13.0).abs() < 1e-12);
        assert_eq!(q.mistake_recurrence(), Some(Duration::from_secs(13)));
        assert_eq!(q.mean_mistake_duration(), Some(Duration::from_secs(1)));
        // Samples at 3, 4, …, 20 s: up at 3–14 (12), down at 15–20 (6). Suspected at 6 s (FP);
        // at 7 s the beat arrived (TN). Down but trusted at 15 s (FN); suspected 16–20 (TP).
        assert_eq!(
            q.confusion,
            Confusion {
                true_pos: 5,
                false_pos: 1,
                true_neg: 11,
                false_neg: 1
            }
        );
        assert_eq!(q.confusion.precision(), Some(5.0 / 6.0));
        assert_eq!(q.confusion.recall(), Some(5.0 / 6.0));
        let f1 = q.confusion.f1().expect("defined");
        assert!((f1 - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn suspicion_before_the_crash_means_zero_detection_time_and_a_mistake() {
        // Beats up to 4.5 s, crash at 6.5 s: suspected from 6.0 s, so T_D = 0 and the half
        // second before the crash was a mistake.
        let trace = hand_trace(10_000, Some(6_500), 10, &[]);
        let q = evaluate(&mut fixed(), &trace, OPTS);
        assert_eq!(q.detection_time, Some(Duration::ZERO));
        assert_eq!(
            q.mistakes,
            vec![Mistake {
                start: ms(6_000),
                duration: Duration::from_millis(500)
            }]
        );
        assert_eq!(q.alive_time, Duration::from_millis(4_500));
        assert!((q.query_accuracy() - (1.0 - 0.5 / 4.5)).abs() < 1e-12);
    }

    #[test]
    fn warmup_mistakes_are_ignored_and_late_arrivals_after_the_crash_count() {
        // Gap at the very start (beats 2–4 lost: suspected 1.5–2.0 s) falls in the warm-up.
        let mut trace = hand_trace(10_000, Some(5_000), 10, &[2, 3, 4]);
        // Beat 10 was sent at 4.5 s but arrives at 5.3 s, after the crash: it still resets the
        // detector, so detection is at 6.8 s.
        if let Some(a) = trace.arrivals.last_mut() {
            a.at = ms(5_300);
        }
        let q = evaluate(&mut fixed(), &trace, OPTS);
        assert!(q.mistakes.is_empty(), "{:?}", q.mistakes);
        assert_eq!(q.detection_time, Some(Duration::from_millis(1_800)));
        assert_eq!(q.query_accuracy(), 1.0);
    }

    #[test]
    fn simultaneous_arrivals_and_the_exact_deadline() {
        // Beats 1 at 0; 2 and 3 both at 1.5 s — exactly the deadline: the arrival wins, no
        // suspicion. Then nothing: suspected from 3.0 s.
        let trace = Trace {
            interval: Duration::from_millis(500),
            start: Time::ZERO,
            end: ms(5_000),
            crash_at: None,
            sent: 3,
            arrivals: vec![
                Arrival {
                    seq: 1,
                    sent: ms(0),
                    at: ms(0),
                },
                Arrival {
                    seq: 2,
                    sent: ms(500),
                    at: ms(1_500),
                },
                Arrival {
                    seq: 3,
                    sent: ms(1_000),
                    at: ms(1_500),
                },
            ],
        };
        let q = evaluate(
            &mut fixed(),
            &trace,
            EvalOptions {
                warmup: Duration::ZERO,
                ..OPTS
            },
        );
        assert_eq!(
            q.mistakes,
            vec![Mistake {
                start: ms(3_000),
                duration: Duration::from_secs(2)
            }]
        );
        assert_eq!(q.detection_time, None, "no crash, no detection time");
        assert_eq!(
            q.confusion,
            Confusion {
                true_pos: 0,
                false_pos: 3,
                true_neg: 2,
                false_neg: 0
            }
        );
        assert_eq!(q.confusion.recall(), None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=200).collect();
        assert_eq!(percentile(&v, 0.99), Some(198));
        assert_eq!(percentile(&v, 0.50), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 1.0), Some(200));
        assert_eq!(percentile(&[7, 9, 10], 0.5), Some(9));
        assert_eq!(percentile(&[7, 9, 10, 12], 0.95), Some(12));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
    }

    #[test]
    fn summary_pools_traces() {
        let a = evaluate(
            &mut fixed(),
            &hand_trace(20_000, Some(15_000), 30, &[11, 12, 13, 14]),
            OPTS,
        );
        let b = evaluate(
            &mut fixed(),
            &hand_trace(10_000, Some(6_500), 10, &[]),
            OPTS,
        );
        let c = evaluate(&mut fixed(), &hand_trace(10_000, None, 20, &[]), OPTS);
        let s = QosSummary::from_results(&[a, b, c]);
        assert_eq!((s.traces, s.crashes, s.undetected), (3, 2, 0));
        assert_eq!(s.td_p50, Some(Duration::ZERO));
        assert_eq!(s.td_max, Some(Duration::from_secs(1)));
        assert_eq!(s.mistakes, 2);
        assert_eq!(s.mistake_time, Duration::from_millis(1_500));
        assert_eq!(s.alive_time, Duration::from_millis(13_000 + 4_500 + 8_000));
        assert_eq!(s.mean_mistake_duration, Some(Duration::from_millis(750)));
        assert!((s.query_accuracy - (1.0 - 1.5 / 25.5)).abs() < 1e-12);
        assert!((s.mistakes_per_hour - 2.0 / (25.5 / 3600.0)).abs() < 1e-9);
        let table = format_table(&[("fixed".into(), s)]);
        assert!(
            table.lines().count() == 3 && table.contains("P_A") && table.contains("0.941176"),
            "{table}"
        );
    }

    #[test]
    fn compare_runs_every_detector_on_the_same_traces() {
        let dets = [
            DetectorConfig::FixedTimeout(FixedTimeoutConfig::default()),
            DetectorConfig::PhiAccrual(crate::detector::PhiConfig::default()),
            DetectorConfig::TwoWindow(crate::detector::TwoWindowConfig::default()),
        ];
        let cfg = TraceConfig {
            duration: Duration::from_secs(120),
            ..TraceConfig::lossy()
        };
        let rows = compare(&dets, &cfg, 5, 42);
        assert_eq!(rows.len(), 3);
        for (name, s) in &rows {
            assert_eq!((s.traces, s.crashes, s.undetected), (5, 5, 0), "{name}");
            // Crashes fall in the second half: 10 s warm-up to ≥ 60 s of alive time each.
            assert!(s.alive_time >= Duration::from_secs(5 * 50), "{name}");
            assert!(
                s.td_max.is_some_and(|d| d < Duration::from_secs(3)),
                "{name}: {:?}",
                s.td_max
            );
        }
        assert_eq!(rows, compare(&dets, &cfg, 5, 42), "deterministic");
        // Same crash times whatever the interval.
        let slow = TraceConfig {
            interval: Duration::from_secs(5),
            ..cfg.clone()
        };
        for i in 0..5 {
            assert_eq!(
                crashing_trace(&cfg, 42, i).crash_at,
                crashing_trace(&slow, 42, i).crash_at
            );
        }
        let table = format_table(&rows);
        assert!(
            table.contains("phi 8") && table.contains("fixed 3x500ms"),
            "{table}"
        );
    }
}
