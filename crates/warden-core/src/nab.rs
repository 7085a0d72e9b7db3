//! Scoring of anomaly detectors the way the Numenta Anomaly Benchmark (NAB, Lavin & Ahmad
//! 2015) does, written from its published description, so that Warden's detectors can be
//! measured on labelled real metrics (`warden bench anomaly`).
//!
//! A detector sees each series once, in order, and gives every sample a score in `[0, 1]`.
//! One threshold, the same for every series, turns scores into detections:
//!
//! - the first 15 % of a series (at most 750 samples) is a *probationary period*: not scored;
//! - inside a labelled window only the first detection counts, weighted by a scaled sigmoid of
//!   its position (≈ `tp` at the window's start, ≈ 0 at its end); a window without any costs
//!   `−fn`;
//! - a detection outside every window costs up to `−fp`, by a scaled sigmoid of its distance
//!   after the end of the window before it (little right after a window, the full weight far
//!   from any or before the first);
//! - the threshold is the one that maximises the total over all series (here an exact sweep
//!   over every distinct score, not a local search);
//! - the total is normalised per profile: `100 × (raw − null) / (perfect − null)`, where
//!   *null* never detects (`−fn` per window) and *perfect* detects every window at its start
//!   (`+tp` per window).
//!
//! Pure: no I/O. Parsing helpers take the text of NAB's CSV and window files.

use std::collections::BTreeMap;
use std::fmt;

/// A scoring profile: the weights of a true positive, a missed window and a false positive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    /// The profile's name.
    pub name: &'static str,
    /// Weight of a detection at a window's start.
    pub tp: f64,
    /// Cost of a window without a detection.
    pub fn_: f64,
    /// Cost of a detection far from every window.
    pub fp: f64,
}

/// NAB's three profiles: standard, reward low false positives, reward low false negatives.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.11,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fn_: 1.0,
        fp: 0.22,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fn_: 2.0,
        fp: 0.11,
    },
];

/// One labelled series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// `category/file.csv`.
    pub name: String,
    /// Seconds since the Unix epoch, in file order (mostly increasing: real exports repeat or
    /// step back at a clock change).
    pub timestamps: Vec<i64>,
    /// The values.
    pub values: Vec<f64>,
    /// Labelled windows, `[start, end]` in seconds, inclusive, in order and not overlapping
    /// (as [`parse_windows`] returns them).
    pub windows: Vec<(i64, i64)>,
}

impl Series {
    /// The folder part of the name (NAB's category).
    pub fn category(&self) -> &str {
        self.name.split_once('/').map_or("", |(c, _)| c)
    }
}

/// A malformed input, naming where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct ParseError {
    /// The file and line (or key).
    pub what: String,
    /// What is wrong.
    pub why: String,
}

fn perr(what: impl Into<String>, why: impl Into<String>) -> ParseError {
    ParseError {
        what: what.into(),
        why: why.into(),
    }
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DD HH:MM:SS[.ffffff]` (NAB's timestamps) into seconds since the epoch
/// (fractions dropped).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let time = time.split_once('.').map_or(time, |(t, _)| t);
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi) = (t.next()??, t.next()??);
    let se = t.next().unwrap_or(Some(0))?;
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=month_days).contains(&da)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..=60).contains(&se)
    {
        return None;
    }
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3_600 + mi * 60 + se)
}

/// Parse a NAB series file (`timestamp,value` with a header line).
pub fn parse_csv(name: &str, text: &str) -> Result<(Vec<i64>, Vec<f64>), ParseError> {
    let mut ts = Vec::new();
    let mut vs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("timestamp")) {
            continue;
        }
        let at = || format!("{name}:{}", i + 1);
        let (t, v) = line
            .split_once(',')
            .ok_or_else(|| perr(at(), "expected `timestamp,value`"))?;
        let t = parse_time(t).ok_or_else(|| perr(at(), format!("bad timestamp {t:?}")))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| perr(at(), format!("bad value {v:?}")))?;
        if !v.is_finite() {
            return Err(perr(at(), "value is not finite"));
        }
        ts.push(t);
        vs.push(v);
    }
    if ts.is_empty() {
        return Err(perr(name, "no samples"));
    }
    Ok((ts, vs))
}

/// The windows of NAB's window file (`{"category/file.csv": [["start", "end"], ...], ...}`,
/// as the caller decoded it), in seconds.
pub fn parse_windows(
    raw: BTreeMap<String, Vec<(String, String)>>,
) -> Result<BTreeMap<String, Vec<(i64, i64)>>, ParseError> {
    let mut out = BTreeMap::new();
    for (file, ws) in raw {
        let mut parsed = Vec::with_capacity(ws.len());
        for (a, b) in ws {
            let a_t = parse_time(&a).ok_or_else(|| perr(&file, format!("bad start {a:?}")))?;
            let b_t = parse_time(&b).ok_or_else(|| perr(&file, format!("bad end {b:?}")))?;
            if b_t < a_t {
                return Err(perr(
                    &file,
                    format!("window [{a}, {b}] ends before it starts"),
                ));
            }
            parsed.push((a_t, b_t));
        }
        parsed.sort_unstable();
        if let Some(w) = parsed.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(perr(
                &file,
                format!(
                    "windows overlap (one ends at {}, the next starts at {})",
                    w[0].1, w[1].0
                ),
            ));
        }
        out.insert(file, parsed);
    }
    Ok(out)
}

/// Samples of a series of `n` that are not scored.
pub fn probationary(n: usize) -> usize {
    ((n as f64 * 0.15).floor() as usize).min(750)
}

fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * position).exp()) - 1.0
    }
}

/// A scored sample: the detector's score, what a detection there is worth (before the
/// profile's weights), and its window (an index into the corpus's windows).
#[derive(Clone, Copy, Debug)]
struct Point {
    score: f64,
    /// In a window: the sigmoid of the position (≈ 0.987 at the start). Outside: the
    /// (negative) sigmoid of the distance past the previous window.
    weight: f64,
    window: Option<u32>,
}

/// What one series contributes: its scorable points and its windows.
#[derive(Clone, Debug, Default)]
struct Prepared {
    points: Vec<Point>,
    /// Windows with at least one scorable sample, as global indices.
    windows: Vec<u32>,
}

fn prepare(series: &Series, scores: &[f64], first_window: u32) -> Prepared {
    let n = series.timestamps.len();
    let prob = probationary(n);
    let max_tp = scaled_sigmoid(-1.0);
    let mut out = Prepared::default();
    // Each window as sample indices [first, last]: from the first sample at or after its
    // start to the last before the first sample past its end (the file's order rules, as
    // timestamps may repeat at a clock change); windows that hold no sample are dropped.
    let ts = &series.timestamps;
    let spans: Vec<(usize, usize)> = series
        .windows
        .iter()
        .filter_map(|&(a, b)| {
            let first = ts.iter().position(|&t| t >= a)?;
            let end = ts[first..]
                .iter()
                .position(|&t| t > b)
                .map_or(ts.len(), |k| first + k);
            (end > first).then(|| (first, end - 1))
        })
        .collect();
    let mut w = 0usize;
    let mut prev: Option<(usize, f64)> = None; // (right index, width) of the last window
    for i in 0..n {
        while w < spans.len() && spans[w].1 < i {
            let (l, r) = spans[w];
            prev = Some((r, (r - l + 1) as f64));
            w += 1;
        }
        let inside = spans.get(w).filter(|(l, _)| *l <= i);
        let (weight, window) = match inside {
            Some(&(l, r)) => {
                let width = (r - l + 1) as f64;
                let pos = -((r - i + 1) as f64) / width;
                (scaled_sigmoid(pos) / max_tp, Some(first_window + w as u32))
            }
            None => {
                let w = match prev {
                    None => -1.0, // before every window: as far as can be
                    // NAB divides by the window's width less one; a window of one sample
                    // would divide by zero, so its width counts as two here.
                    Some((r, width)) => scaled_sigmoid((i - r) as f64 / (width - 1.0).max(1.0)),
                };
                (w, None)
            }
        };
        if i < prob {
            continue;
        }
        if let Some(win) = window
            && out.windows.last() != Some(&win)
        {
            out.windows.push(win);
        }
        out.points.push(Point {
            // A non-finite score is no detection (and would not sort).
            score: scores
                .get(i)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0),
            weight,
            window,
        });
    }
    out
}

/// Counts of one series (or category, or corpus) at a threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// Windows with a detection.
    pub windows_hit: u32,
    /// Windows.
    pub windows: u32,
    /// Detections outside every window.
    pub false_alarms: u32,
    /// Raw score under the profile.
    pub raw: f64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.windows_hit += o.windows_hit;
        self.windows += o.windows;
        self.false_alarms += o.false_alarms;
        self.raw += o.raw;
    }
}

/// A detector's result under one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileScore {
    /// The profile.
    pub profile: Profile,
    /// The threshold that maximised the raw total.
    pub threshold: f64,
    /// `100 × (raw − null) / (perfect − null)`.
    pub normalized: f64,
    /// The corpus's counts at the threshold.
    pub total: Tally,
    /// Counts by category at the threshold.
    pub by_category: BTreeMap<String, Tally>,
    /// Counts by series at the threshold.
    pub by_series: BTreeMap<String, Tally>,
}

impl fmt::Display for ProfileScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} {:>6.1}  (threshold {:.6}, windows hit {}/{}, false alarms {})",
            self.profile.name,
            self.normalized,
            self.threshold,
            self.total.windows_hit,
            self.total.windows,
            self.total.false_alarms
        )
    }
}

/// Scores of a detector over a corpus, one `scores[i]` per `corpus[i]` sample, under each
/// profile.
///
/// # Panics
///
/// If `scores` and `corpus` differ in length, or a series and its scores do.
pub fn score(corpus: &[Series], scores: &[Vec<f64>], profiles: &[Profile]) -> Vec<ProfileScore> {
    assert_eq!(corpus.len(), scores.len(), "one score list per series");
    let mut prepared = Vec::with_capacity(corpus.len());
    let mut next = 0u32;
    for (s, sc) in corpus.iter().zip(scores) {
        assert_eq!(
            s.values.len(),
            sc.len(),
            "one score per sample of {}",
            s.name
        );
        let p = prepare(s, sc, next);
        next += s.windows.len() as u32;
        prepared.push(p);
    }
    profiles
        .iter()
        .map(|p| score_profile(corpus, &prepared, *p))
        .collect()
}

fn score_profile(corpus: &[Series], prepared: &[Prepared], profile: Profile) -> ProfileScore {
    // Every scorable point of the corpus, highest score first: lowering the threshold past a
    // score turns all points with that score into detections at once.
    let mut all: Vec<&Point> = prepared.iter().flat_map(|p| &p.points).collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    let windows: usize = prepared.iter().map(|p| p.windows.len()).sum();
    let total_windows = prepared
        .iter()
        .flat_map(|p| &p.windows)
        .max()
        .map_or(0, |m| *m as usize + 1);
    // Best value reached so far by each window (−fn until detected).
    let mut best = vec![-profile.fn_; total_windows];
    let mut raw = -profile.fn_ * windows as f64;
    let mut best_raw = raw;
    let mut best_threshold = f64::INFINITY;
    let mut i = 0;
    while i < all.len() {
        let s = all[i].score;
        while i < all.len() && all[i].score == s {
            let p = all[i];
            match p.window {
                Some(w) => {
                    let v = p.weight * profile.tp;
                    let b = &mut best[w as usize];
                    if v > *b {
                        raw += v - *b;
                        *b = v;
                    }
                }
                None => raw += p.weight * profile.fp,
            }
            i += 1;
        }
        if raw > best_raw {
            best_raw = raw;
            best_threshold = s;
        }
    }
    let null = -profile.fn_ * windows as f64;
    let perfect = profile.tp * windows as f64;
    let normalized = if perfect > null {
        100.0 * (best_raw - null) / (perfect - null)
    } else {
        0.0
    };
    let mut by_series = BTreeMap::new();
    let mut by_category: BTreeMap<String, Tally> = BTreeMap::new();
    let mut total = Tally::default();
    for (s, p) in corpus.iter().zip(prepared) {
        let t = tally(p, best_threshold, profile);
        *by_category.entry(s.category().to_string()).or_default() += t;
        total += t;
        by_series.insert(s.name.clone(), t);
    }
    ProfileScore {
        profile,
        threshold: best_threshold,
        normalized,
        total,
        by_category,
        by_series,
    }
}

fn tally(p: &Prepared, threshold: f64, profile: Profile) -> Tally {
    let mut best: BTreeMap<u32, f64> = p.windows.iter().map(|w| (*w, -profile.fn_)).collect();
    let mut t = Tally {
        windows: p.windows.len() as u32,
        ..Tally::default()
    };
    let mut fp = 0.0;
    for pt in p.points.iter().filter(|pt| pt.score >= threshold) {
        match pt.window {
            Some(w) => {
                let b = best.entry(w).or_insert(-profile.fn_);
                *b = b.max(pt.weight * profile.tp);
            }
            None => {
                t.false_alarms += 1;
                fp += pt.weight * profile.fp;
            }
        }
    }
    t.windows_hit = best.values().filter(|v| **v > -profile.fn_).count() as u32;
    t.raw = best.values().sum::<f64>() + fp;
    t
}

/// NAB's windowed Gaussian baseline: the tail probability of each value under a Gaussian
/// fitted to the last 6,400 values (moved on in steps of 100). Its score is
/// `1 − Q(|x − μ| / σ)`.
pub fn windowed_gaussian(values: &[f64]) -> Vec<f64> {
    const WINDOW: usize = 6_400;
    const STEP: usize = 100;
    let mut window: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut pending = Vec::with_capacity(STEP);
    let (mut mean, mut std) = (0.0, 1.0);
    let refit = |w: &std::collections::VecDeque<f64>| {
        let n = w.len() as f64;
        let m = w.iter().sum::<f64>() / n;
        let v = w.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
        let s = v.sqrt();
        (m, if s == 0.0 { 1e-6 } else { s })
    };
    let mut out = Vec::with_capacity(values.len());
    for &x in values {
        let score = if window.is_empty() {
            0.0
        } else {
            1.0 - q_function((x - mean).abs() / std)
        };
        out.push(score);
        if window.len() < WINDOW {
            window.push_back(x);
            (mean, std) = refit(&window);
        } else {
            pending.push(x);
            if pending.len() == STEP {
                window.drain(..STEP);
                window.extend(pending.drain(..));
                (mean, std) = refit(&window);
            }
        }
    }
    out
}

/// The Gaussian tail `Q(z) = P(Z > z)`, by the complementary error function.
pub fn q_function(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (W. J. Cody's rational Chebyshev approximations as
/// given in Numerical Recipes' `erfcc`: relative error below 1.2e-7 everywhere).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn series(n: usize, windows: &[(usize, usize)]) -> Series {
        let timestamps: Vec<i64> = (0..n as i64).map(|i| 1_000 + i * 300).collect();
        Series {
            name: "cat/s.csv".into(),
            windows: windows
                .iter()
                .map(|&(a, b)| (timestamps[a], timestamps[b]))
                .collect(),
            timestamps,
            values: vec![0.0; n],
        }
    }

    fn standard(s: &Series, scores: Vec<f64>) -> ProfileScore {
        score(std::slice::from_ref(s), &[scores], &PROFILES[..1]).remove(0)
    }

    #[test]
    fn times_parse_like_nab_writes_them() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_time("2014-04-10 07:15:00.000000"),
            Some(1_397_114_100)
        );
        assert_eq!(parse_time("2016-02-29 00:00"), Some(1_456_704_000));
        assert_eq!(parse_time("2014-02-29 00:00:00"), None);
        assert_eq!(parse_time("2014-04-31 00:00:00"), None);
        assert_eq!(parse_time("2014-13-01 00:00:00"), None);
        assert_eq!(parse_time("99999999999999999-01-01 00:00:00"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn csv_and_windows_errors_name_the_place() {
        let e = parse_csv("a.csv", "timestamp,value\n2014-01-01 00:00:00,1\nx,2\n").unwrap_err();
        assert_eq!(e.what, "a.csv:3");
        // Real exports repeat or step back a timestamp at a clock change: kept, in file order.
        let (ts, _) = parse_csv(
            "a.csv",
            "timestamp,value\n2014-01-02 00:00:00,1\n2014-01-01 00:00:00,2\n",
        )
        .unwrap();
        assert!(ts[1] < ts[0]);
        assert!(parse_csv("a.csv", "timestamp,value\n").is_err());
        let raw = BTreeMap::from([(
            "a.csv".to_string(),
            vec![(
                "2014-01-02 00:00:00".to_string(),
                "2014-01-01 00:00:00".to_string(),
            )],
        )]);
        let e = parse_windows(raw).unwrap_err();
        assert!(e.why.contains("before it starts"), "{e}");
    }

    #[test]
    fn null_and_perfect_detectors_score_0_and_100() {
        let s = series(2_000, &[(900, 999), (1_500, 1_599)]);
        let null = standard(&s, vec![0.0; 2_000]);
        // Never detecting at any threshold above 0: the best is to detect nothing.
        assert!(null.normalized.abs() < 1e-9, "{null}");
        let mut perfect = vec![0.0; 2_000];
        perfect[900] = 1.0;
        perfect[1_500] = 1.0;
        let p = standard(&s, perfect);
        assert!((p.normalized - 100.0).abs() < 1e-9, "{p}");
        assert_eq!(p.total.windows_hit, 2);
        assert_eq!(p.total.false_alarms, 0);
    }

    #[test]
    fn only_the_first_detection_in_a_window_counts_and_late_is_worth_less() {
        let s = series(2_000, &[(900, 999)]);
        let mut early = vec![0.0; 2_000];
        early[900] = 1.0;
        early[950] = 1.0;
        let mut late = vec![0.0; 2_000];
        late[990] = 1.0;
        let e = standard(&s, early);
        let l = standard(&s, late);
        assert!((e.normalized - 100.0).abs() < 1e-9, "{e}");
        assert!(l.normalized > 50.0 && l.normalized < e.normalized, "{l}");
    }

    #[test]
    fn false_alarms_cost_more_far_from_a_window_and_probation_is_free() {
        let s = series(2_000, &[(900, 999)]);
        let base = |extra: usize| {
            let mut v = vec![0.0; 2_000];
            v[900] = 1.0;
            v[extra] = 1.0;
            standard(&s, v)
        };
        let just_after = base(1_001);
        let far = base(1_900);
        let before = base(500);
        let probation = base(100); // within the first 15 %
        assert!(just_after.normalized > far.normalized);
        assert!((far.normalized - before.normalized).abs() < 1e-6);
        assert!((probation.normalized - 100.0).abs() < 1e-9, "{probation}");
        assert_eq!(far.total.false_alarms, 1);
        // A false alarm far away costs fp (0.11) of a window's 2 points of range.
        assert!(
            (far.normalized - (100.0 - 100.0 * 0.11 / 2.0)).abs() < 1e-6,
            "{far}"
        );
    }

    #[test]
    fn the_threshold_is_the_best_one_over_the_whole_corpus() {
        // Series A: its window's sample scores 0.6, a false alarm at 0.8. Series B: its
        // window's sample 0.9. Best threshold: 0.6 (both windows, one false alarm: 2 − 0.11)
        // beats 0.9 (one window: 1 − 1).
        let a = series(2_000, &[(900, 999)]);
        let mut b = series(2_000, &[(1_200, 1_299)]);
        b.name = "cat/b.csv".into();
        let mut sa = vec![0.0; 2_000];
        sa[900] = 0.6;
        sa[1_900] = 0.8;
        let mut sb = vec![0.0; 2_000];
        sb[1_200] = 0.9;
        let r = score(&[a, b], &[sa, sb], &PROFILES[..1]).remove(0);
        assert!((r.threshold - 0.6).abs() < 1e-12, "{r}");
        assert_eq!(r.total.windows_hit, 2);
        assert_eq!(r.by_category["cat"].false_alarms, 1);
        assert!(
            (r.normalized - 100.0 * (2.0 - 0.11 + 2.0) / 4.0).abs() < 1e-6,
            "{r}"
        );
    }

    #[test]
    fn non_finite_scores_are_no_detection_and_do_not_hang_the_sweep() {
        let s = series(2_000, &[(900, 999)]);
        let mut v = vec![f64::NAN; 2_000];
        v[900] = 1.0;
        v[1_500] = f64::INFINITY;
        let r = standard(&s, v);
        assert!((r.normalized - 100.0).abs() < 1e-9, "{r}");
        assert_eq!(r.total.false_alarms, 0);
    }

    #[test]
    fn a_false_alarm_right_after_a_window_costs_its_sigmoid() {
        // Window [900, 999] (width 100); a detection at 1,009 is 10 samples past its end:
        // position 10 / 99, weight 2 / (1 + e^(5 · 10/99)) − 1, times fp.
        let s = series(2_000, &[(900, 999)]);
        let mut v = vec![0.0; 2_000];
        v[900] = 1.0;
        v[1_009] = 1.0;
        let r = standard(&s, v);
        let w = 2.0 / (1.0 + (5.0 * 10.0 / 99.0f64).exp()) - 1.0;
        let want = 100.0 * (1.0 + 0.11 * w + 1.0) / 2.0;
        assert!((r.normalized - want).abs() < 1e-9, "{r} vs {want}");
        assert_eq!(r.total.false_alarms, 1);
    }

    #[test]
    fn overlapping_windows_are_refused() {
        let raw = BTreeMap::from([(
            "a.csv".to_string(),
            vec![
                (
                    "2014-01-01 00:00:00".to_string(),
                    "2014-01-02 00:00:00".to_string(),
                ),
                (
                    "2014-01-01 12:00:00".to_string(),
                    "2014-01-03 00:00:00".to_string(),
                ),
            ],
        )]);
        assert!(parse_windows(raw).unwrap_err().why.contains("overlap"));
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (2.0, 0.004_677_735),
            (-1.0, 1.842_700_793),
        ] {
            assert!((erfc(x) - want).abs() < 1e-6, "erfc({x}) = {}", erfc(x));
        }
    }

    #[test]
    fn windowed_gaussian_scores_an_outlier_near_one() {
        let mut v: Vec<f64> = (0..500).map(|i| f64::from(i % 10)).collect();
        v.push(1_000.0);
        let s = windowed_gaussian(&v);
        assert!(s[500] > 0.999_999, "{}", s[500]);
        assert!(s[250] < 0.99, "{}", s[250]);
    }
}
