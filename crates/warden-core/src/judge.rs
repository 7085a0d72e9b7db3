//! The statistical judge of a rollout: canary copies against baseline copies serving at the
//! same time.
//!
//! The fast checks of [`crate::rollout`] catch a version that crashes or fails its health
//! check. A version that only serves worse — a few more errors, slower answers — passes them;
//! the judge compares what the canaries' requests met with what the baseline's requests met
//! over the same window (`[update.analysis]`, [`AnalysisSpec`]) and fails the rollout when the
//! canaries are worse, both *significantly* and *by enough to matter*:
//!
//! - errors: a one-sided Mann-Whitney U test on the requests' outcomes (0 served, 1 failed) —
//!   with ties this is the two-proportion test — with `p < alpha`, and the canaries' error rate
//!   above the baseline's by at least `max_error_increase`;
//! - latency: a one-sided Mann-Whitney U test on the requests' response times with
//!   `p < alpha`, and the canaries' p99 above the baseline's by at least
//!   `max_latency_increase`.
//!
//! Fewer than `min_samples` requests on either side, no baseline, or only non-finite values:
//! the judgement is [`Judgement::Hold`] — never a pass, never a failure. The rollout counts
//! consecutive failing judgements and aborts at `failure_limit`; it leaves the canary phase
//! only after `passes` consecutive passing ones.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_serde;
use crate::error::ConfigError;

/// `[update.analysis]`: the statistical judge's settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Time between two judgements. Default 10 s.
    #[serde(default = "default_interval", with = "duration_serde")]
    pub interval: Duration,
    /// Requests of the last `window` are judged. Default 30 s.
    #[serde(default = "default_window", with = "duration_serde")]
    pub window: Duration,
    /// Least requests on each side for a judgement; fewer holds. Default 50.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Significance level of the one-sided tests. Default 0.01.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Least increase of the error rate (0–1, absolute) that fails. Default 0.01.
    #[serde(default = "default_error_increase")]
    pub max_error_increase: f64,
    /// Least increase of the p99 response time that fails. Default 100 ms.
    #[serde(default = "default_latency_increase", with = "duration_serde")]
    pub max_latency_increase: Duration,
    /// Consecutive failing judgements that abort the rollout. Default 2.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// Consecutive passing judgements before the canary phase ends. Default 3.
    #[serde(default = "default_passes")]
    pub passes: u32,
    /// Judge and report, never abort nor hold (calibration, A/A runs). Default false.
    #[serde(default)]
    pub dry_run: bool,
}

// Validation refuses non-finite numbers, so equality is an equivalence.
impl Eq for AnalysisSpec {}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_window() -> Duration {
    Duration::from_secs(30)
}
fn default_min_samples() -> u32 {
    50
}
fn default_alpha() -> f64 {
    0.01
}
fn default_error_increase() -> f64 {
    0.01
}
fn default_latency_increase() -> Duration {
    Duration::from_millis(100)
}
fn default_failure_limit() -> u32 {
    2
}
fn default_passes() -> u32 {
    3
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            interval: default_interval(),
            window: default_window(),
            min_samples: default_min_samples(),
            alpha: default_alpha(),
            max_error_increase: default_error_increase(),
            max_latency_increase: default_latency_increase(),
            failure_limit: default_failure_limit(),
            passes: default_passes(),
            dry_run: false,
        }
    }
}

impl AnalysisSpec {
    /// Reject settings that can never work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let hour = Duration::from_secs(3600);
        if self.interval < Duration::from_secs(1) || self.interval > hour {
            return Err(ConfigError::new(
                "update.analysis.interval",
                "must be between 1s and 1h",
            ));
        }
        if self.window < self.interval || self.window > hour {
            return Err(ConfigError::new(
                "update.analysis.window",
                "must be at least interval and at most 1h",
            ));
        }
        if self.min_samples < 10 {
            return Err(ConfigError::new(
                "update.analysis.min_samples",
                "must be at least 10 (fewer cannot show a difference)",
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 0.2) {
            return Err(ConfigError::new(
                "update.analysis.alpha",
                "must be a number in (0, 0.2]",
            ));
        }
        if !(self.max_error_increase.is_finite()
            && self.max_error_increase > 0.0
            && self.max_error_increase <= 1.0)
        {
            return Err(ConfigError::new(
                "update.analysis.max_error_increase",
                "must be a number in (0, 1]",
            ));
        }
        if self.max_latency_increase.is_zero() || self.max_latency_increase > hour {
            return Err(ConfigError::new(
                "update.analysis.max_latency_increase",
                "must be greater than zero and at most 1h",
            ));
        }
        if self.failure_limit == 0 || self.failure_limit > 100 {
            return Err(ConfigError::new(
                "update.analysis.failure_limit",
                "must be between 1 and 100",
            ));
        }
        if self.passes == 0 || self.passes > 100 {
            return Err(ConfigError::new(
                "update.analysis.passes",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }
}

/// What one side (the canaries, or the baseline) served in the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// Requests answered or failed.
    pub requests: u64,
    /// Of those, failed (5xx answer, or none).
    pub errors: u64,
    /// Response times of the answered requests, ms (a bounded sample of them).
    pub latencies_ms: Vec<f64>,
}

impl Group {
    /// Add another group's requests.
    pub fn merge(&mut self, other: &Group) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latencies_ms.extend_from_slice(&other.latencies_ms);
    }

    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What one copy served since the last sample (from a traffic adapter).
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficSample {
    /// The copy's slot.
    pub task: crate::types::TaskId,
    /// The copy (its fencing token).
    pub epoch: crate::types::FencingToken,
    /// What it served.
    pub group: Group,
}

/// A judgement, with its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "evidence", rename_all = "lowercase")]
pub enum Judgement {
    /// Not enough to judge on; neither pass nor fail.
    Hold(String),
    /// The canaries are not worse.
    Pass(String),
    /// The canaries are worse: errors or latency.
    Fail(String),
}

impl Judgement {
    /// The evidence.
    pub fn evidence(&self) -> &str {
        match self {
            Judgement::Hold(e) | Judgement::Pass(e) | Judgement::Fail(e) => e,
        }
    }
}

/// Judge the canaries against the baseline (see the module's documentation).
pub fn judge(spec: &AnalysisSpec, canary: &Group, baseline: &Group) -> Judgement {
    let min = u64::from(spec.min_samples);
    if baseline.requests == 0 {
        return Judgement::Hold(format!(
            "no baseline requests in the last {} (no copy of the version before serves)",
            duration_serde::format(&spec.window)
        ));
    }
    if canary.requests < min || baseline.requests < min {
        return Judgement::Hold(format!(
            "too few requests to judge in the last {}: canaries {}, baseline {} (min_samples {min})",
            duration_serde::format(&spec.window),
            canary.requests,
            baseline.requests
        ));
    }
    let (rc, rb) = (canary.error_rate(), baseline.error_rate());
    let p_err = fisher_greater(
        canary.errors.min(canary.requests),
        canary.requests,
        baseline.errors.min(baseline.requests),
        baseline.requests,
    );
    let mut evidence = format!(
        "errors: canaries {:.2} % of {}, baseline {:.2} % of {} (exact test p = {})",
        100.0 * rc,
        canary.requests,
        100.0 * rb,
        baseline.requests,
        fmt_p(p_err)
    );
    let errors_bad = p_err < spec.alpha && rc - rb >= spec.max_error_increase;
    // A pass must rule the harmful increase out, not merely fail to show it: the upper
    // confidence bound of the difference stays below the bound.
    let upper = error_increase_upper_bound(canary, baseline, PASS_LEVEL);
    let errors_unsettled = !errors_bad && upper >= spec.max_error_increase;
    evidence.push_str(&format!(", increase at most {:+.2} points", 100.0 * upper));

    let finite = |g: &Group| -> Vec<f64> {
        g.latencies_ms
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect()
    };
    let (lc, lb) = (finite(canary), finite(baseline));
    let mut latency_bad = false;
    let bound = self::ms(spec.max_latency_increase);
    if (lc.len() as u64) < min || (lb.len() as u64) < min {
        evidence.push_str(&format!(
            "; latency: too few answered requests (canaries {}, baseline {})",
            lc.len(),
            lb.len()
        ));
    } else {
        let p_lat = mann_whitney_greater(&lc, &lb);
        let (pc, pb) = (p99(&lc), p99(&lb));
        latency_bad = p_lat < spec.alpha && pc - pb >= bound;
        evidence.push_str(&format!(
            "; p99 latency: canaries {pc:.0} ms, baseline {pb:.0} ms (U test p = {})",
            fmt_p(p_lat)
        ));
    }
    if errors_bad || latency_bad {
        let mut what = Vec::new();
        if errors_bad {
            what.push(format!(
                "error rate +{:.2} points (bound {:.2})",
                100.0 * (rc - rb),
                100.0 * spec.max_error_increase
            ));
        }
        if latency_bad {
            what.push(format!("p99 latency up by at least {bound:.0} ms"));
        }
        Judgement::Fail(format!("canaries worse: {}; {evidence}", what.join(", ")))
    } else if errors_unsettled {
        Judgement::Hold(format!(
            "too few requests to rule out an error-rate increase of {:.2} points yet; {evidence}",
            100.0 * spec.max_error_increase
        ))
    } else {
        Judgement::Pass(evidence)
    }
}

/// The confidence with which a pass must rule the error-rate increase out.
const PASS_LEVEL: f64 = 0.95;

/// A one-sided upper confidence bound (at `level`) of the canaries' error rate minus the
/// baseline's, by the Agresti-Caffo interval (one error and one success added to each side,
/// which keeps it honest at zero errors).
fn error_increase_upper_bound(canary: &Group, baseline: &Group, level: f64) -> f64 {
    let adj = |g: &Group| {
        let n = g.requests as f64 + 2.0;
        ((g.errors.min(g.requests) as f64 + 1.0) / n, n)
    };
    let ((pc, nc), (pb, nb)) = (adj(canary), adj(baseline));
    let se = (pc * (1.0 - pc) / nc + pb * (1.0 - pb) / nb).sqrt();
    (pc - pb) + normal_quantile(level) * se
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9),
/// for `p` in (0, 1).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.024_25 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_p(p: f64) -> String {
    if p < 0.0001 {
        "< 0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

/// The 99th percentile (nearest rank) of a non-empty sample.
fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((s.len() as f64) * 0.99).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// One-sided Fisher exact test on outcomes: the p-value of "`a_err` of `a_n` requests failed
/// against `b_err` of `b_n`" arising by chance when both fail alike — the chance of `a_err` or
/// more of the `a_err + b_err` failures landing among `a`'s requests. This is the U test on 0/1
/// outcomes made exact: the U test's normal approximation is too eager at a handful of errors.
pub fn fisher_greater(a_err: u64, a_n: u64, b_err: u64, b_n: u64) -> f64 {
    let (n, k, draws) = (a_n + b_n, a_err + b_err, a_n);
    if n == 0 || k == 0 {
        return 1.0;
    }
    let hi = k.min(draws);
    if a_err > hi {
        return 0.0;
    }
    // log P(X = x) for the hypergeometric law, x failures among `draws` of `n` with `k`.
    let ln_choose = |n: u64, r: u64| ln_factorial(n) - ln_factorial(r) - ln_factorial(n - r);
    let ln_p = |x: u64| ln_choose(k, x) + ln_choose(n - k, draws - x) - ln_choose(n, draws);
    let lo = a_err.max((k + draws).saturating_sub(n));
    let p: f64 = (lo..=hi).map(|x| ln_p(x).exp()).sum();
    p.clamp(0.0, 1.0)
}

/// ln(n!), exact sums below 256 and Stirling's series above.
fn ln_factorial(n: u64) -> f64 {
    if n < 256 {
        (2..=n).map(|i| (i as f64).ln()).sum()
    } else {
        let x = n as f64;
        x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
            - 1.0 / (360.0 * x * x * x)
    }
}

/// One-sided Mann-Whitney U test: the p-value of "values of `a` tend to be greater than
/// values of `b`", by the normal approximation with tie correction and continuity correction.
/// 1 when either sample is empty or every value is the same.
pub fn mann_whitney_greater(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let (mut rank_sum_a, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let rank = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_a += rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let nn = n as f64;
    let var = n1 * n2 / 12.0 * ((nn + 1.0) - ties / (nn * (nn - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = (u - n1 * n2 / 2.0 - 0.5) / var.sqrt();
    crate::nab::q_function(z)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn group(rng: &mut Rng, n: u64, error: f64, base_ms: f64, extra_ms: f64) -> Group {
        let mut g = Group::default();
        for _ in 0..n {
            g.requests += 1;
            if rng.bernoulli(error) {
                g.errors += 1;
            } else {
                g.latencies_ms
                    .push(base_ms * rng.normal(0.0, 0.3).exp() + extra_ms);
            }
        }
        g
    }

    #[test]
    fn normal_quantile_matches_known_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.644_853_6),
            (0.99, 2.326_347_9),
            (0.01, -2.326_347_9),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-6,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn a_pass_needs_enough_requests_to_rule_the_increase_out() {
        let s = AnalysisSpec::default();
        let clean = |n: u64| Group {
            requests: n,
            errors: 0,
            latencies_ms: vec![10.0; usize::try_from(n).unwrap()],
        };
        // 60 clean requests cannot rule out one point more errors: hold.
        let j = judge(&s, &clean(60), &clean(600));
        assert!(matches!(j, Judgement::Hold(_)), "{j:?}");
        assert!(j.evidence().contains("rule out"), "{j:?}");
        // 800 can.
        let j = judge(&s, &clean(800), &clean(1600));
        assert!(matches!(j, Judgement::Pass(_)), "{j:?}");
        // 1 % of 400 against none: neither shown worse nor ruled out.
        let some = Group {
            errors: 4,
            ..clean(400)
        };
        assert!(matches!(judge(&s, &some, &clean(800)), Judgement::Hold(_)));
    }

    #[test]
    fn a_two_point_increase_is_almost_never_passed() {
        // A canary really failing 2 % more is failed or held, not passed, but for a rare draw
        // far below its true rate (1 error in 400 where 8 are expected).
        let s = AnalysisSpec::default();
        let mut rng = Rng::new(3);
        let mut passed = 0;
        for _ in 0..1000 {
            let c = group(&mut rng, 400, 0.02, 20.0, 0.0);
            let b = group(&mut rng, 800, 0.0, 20.0, 0.0);
            if matches!(judge(&s, &c, &b), Judgement::Pass(_)) {
                passed += 1;
            }
        }
        assert!(passed <= 10, "{passed} of 1000 passed");
    }

    #[test]
    fn u_test_separates_shifted_samples_and_not_equal_ones() {
        let a: Vec<f64> = (0..100).map(|i| f64::from(i) + 30.0).collect();
        let b: Vec<f64> = (0..100).map(f64::from).collect();
        assert!(mann_whitney_greater(&a, &b) < 0.001);
        assert!(mann_whitney_greater(&b, &a) > 0.99);
        let p = mann_whitney_greater(&b, &b);
        assert!((0.4..=0.6).contains(&p), "p = {p}");
        assert_eq!(mann_whitney_greater(&[1.0; 20], &[1.0; 30]), 1.0);
        assert_eq!(mann_whitney_greater(&[], &b), 1.0);
    }

    #[test]
    fn exact_test_matches_known_values_and_the_u_test_on_many_outcomes() {
        // The tea-tasting table: 3 of 4 against 1 of 4, one-sided p = 17/70.
        assert!((fisher_greater(3, 4, 1, 4) - 17.0 / 70.0).abs() < 1e-9);
        assert!((fisher_greater(0, 10, 5, 10) - 1.0).abs() < 1e-9);
        assert_eq!(fisher_greater(0, 10, 0, 10), 1.0);
        // 10 % vs 2 % of 300 each: both tests agree it is no accident.
        let mk = |n: usize, e: usize| -> Vec<f64> {
            (0..n).map(|i| if i < e { 1.0 } else { 0.0 }).collect()
        };
        assert!(mann_whitney_greater(&mk(300, 30), &mk(300, 6)) < 0.0001);
        assert!(fisher_greater(30, 300, 6, 300) < 0.0001);
        assert!(fisher_greater(6, 300, 6, 300) > 0.4);
        // Large counts go through Stirling's series.
        let p = fisher_greater(400, 20_000, 200, 20_000);
        assert!(p < 1e-6, "p = {p}");
    }

    #[test]
    fn too_few_requests_or_no_baseline_hold_never_pass_or_fail() {
        let s = AnalysisSpec::default();
        let mut rng = Rng::new(1);
        let bad = group(&mut rng, 40, 0.5, 20.0, 500.0);
        let base = group(&mut rng, 400, 0.0, 20.0, 0.0);
        assert!(matches!(judge(&s, &bad, &base), Judgement::Hold(_)));
        assert!(matches!(
            judge(&s, &group(&mut rng, 400, 0.5, 20.0, 0.0), &Group::default()),
            Judgement::Hold(_)
        ));
        // Every canary request failed: no latency to judge, errors still decide.
        let all_failed = Group {
            requests: 200,
            errors: 200,
            latencies_ms: vec![f64::NAN; 3],
        };
        let j = judge(&s, &all_failed, &base);
        assert!(matches!(j, Judgement::Fail(_)), "{j:?}");
        assert!(j.evidence().contains("too few answered"), "{j:?}");
    }

    #[test]
    fn two_points_more_errors_fail_and_the_evidence_says_so() {
        let s = AnalysisSpec::default();
        let mut rng = Rng::new(7);
        let canary = group(&mut rng, 600, 0.021, 20.0, 0.0);
        let base = group(&mut rng, 1800, 0.001, 20.0, 0.0);
        let j = judge(&s, &canary, &base);
        assert!(matches!(j, Judgement::Fail(_)), "{j:?}");
        assert!(j.evidence().contains("error rate"), "{j:?}");
    }

    #[test]
    fn two_hundred_ms_slower_fails_on_latency() {
        let s = AnalysisSpec::default();
        let mut rng = Rng::new(9);
        let canary = group(&mut rng, 300, 0.0, 20.0, 200.0);
        let base = group(&mut rng, 900, 0.0, 20.0, 0.0);
        let j = judge(&s, &canary, &base);
        assert!(matches!(j, Judgement::Fail(_)), "{j:?}");
        assert!(j.evidence().contains("p99 latency up"), "{j:?}");
    }

    #[test]
    fn a_significant_but_small_difference_passes_the_effect_bound() {
        // 0.5 points more errors over many requests: significant, below the 1-point bound.
        let s = AnalysisSpec::default();
        let canary = Group {
            requests: 20_000,
            errors: 200,
            latencies_ms: vec![],
        };
        let base = Group {
            requests: 20_000,
            errors: 100,
            latencies_ms: vec![],
        };
        assert!(matches!(judge(&s, &canary, &base), Judgement::Pass(_)));
    }

    #[test]
    fn identical_versions_fail_rarely() {
        // A/A: 1,000 judgements of identical distributions, noisy (1 % errors, heavy tail).
        let s = AnalysisSpec::default();
        let mut rng = Rng::new(42);
        let mut failed = 0;
        for _ in 0..1000 {
            let c = group(&mut rng, 200, 0.01, 20.0, 0.0);
            let b = group(&mut rng, 600, 0.01, 20.0, 0.0);
            if matches!(judge(&s, &c, &b), Judgement::Fail(_)) {
                failed += 1;
            }
        }
        // Each needs p < 0.01 and the effect bound: far below 1 % of judgements.
        assert!(failed <= 10, "{failed} of 1000 A/A judgements failed");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = [
            AnalysisSpec {
                alpha: f64::NAN,
                ..AnalysisSpec::default()
            },
            AnalysisSpec {
                min_samples: 3,
                ..AnalysisSpec::default()
            },
            AnalysisSpec {
                window: Duration::from_secs(1),
                ..AnalysisSpec::default()
            },
            AnalysisSpec {
                failure_limit: 0,
                ..AnalysisSpec::default()
            },
        ];
        for (s, field) in bad
            .iter()
            .zip(["alpha", "min_samples", "window", "failure_limit"])
        {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(AnalysisSpec::default().validate().is_ok());
    }
}
