//! **no lost work**: after the last fault ends, every desired task slot runs again — exactly
//! one live process per slot — within the RTO bound, and still does at the end of the run.

use std::collections::BTreeMap;

use super::Violation;
use crate::record::{Record, Sample};

/// The checker's name.
pub const NAME: &str = "no-lost-work";

/// Slots of the record not running exactly once in `sample`, with their copy counts; a
/// group of warm replicas counts as one (named by its first slot and `+`).
fn wrong_slots(record: &Record, sample: &Sample) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &sample.procs {
        *counts.entry(p.task.as_str()).or_default() += 1;
    }
    let count = |s: &str| counts.get(s).copied().unwrap_or(0);
    let grouped = |s: &String| record.warm_groups.iter().flatten().any(|g| g == s);
    let singles = record
        .slots
        .iter()
        .filter(|s| !grouped(s))
        .map(|s| (s.clone(), count(s)));
    let groups = record.warm_groups.iter().map(|g| {
        (
            format!("{} (warm replicas: {})", g.join("+"), "one process"),
            g.iter().map(|s| count(s)).sum(),
        )
    });
    singles.chain(groups).filter(|(_, n)| *n != 1).collect()
}

fn describe(wrong: &[(String, usize)]) -> String {
    wrong
        .iter()
        .map(|(s, n)| format!("{s} has {n} copies"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check the record.
pub fn check(record: &Record) -> Vec<Violation> {
    if record.slots.is_empty() {
        return Vec::new();
    }
    let start = record.faults_end_ms;
    let deadline = start.saturating_add(record.rto_bound_ms);
    let window: Vec<&Sample> = record
        .samples
        .iter()
        .filter(|s| s.t_ms >= start && s.t_ms <= deadline)
        .collect();
    let mut out = Vec::new();
    if !window.iter().any(|s| wrong_slots(record, s).is_empty()) {
        let last = window.last().map_or_else(
            || "no sample in that time".to_string(),
            |s| describe(&wrong_slots(record, s)),
        );
        out.push(Violation::new(
            NAME,
            deadline,
            format!(
                "not every slot ran exactly once within {} ms after the last fault ended: {last}",
                record.rto_bound_ms
            ),
        ));
    }
    match record.samples.last() {
        Some(s) => {
            let wrong = wrong_slots(record, s);
            if !wrong.is_empty() {
                out.push(Violation::new(
                    NAME,
                    s.t_ms,
                    format!("at the end of the run: {}", describe(&wrong)),
                ));
            }
        }
        None => out.push(Violation::new(NAME, record.end_ms, "no samples recorded")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{p, record, sample};

    fn all_running(t: u64, db_token: u64) -> Sample {
        sample(
            t,
            vec![
                p("db/0", db_token, 10 + db_token as i32, "agent-2"),
                p("web/0", 1, 20, "agent-2"),
                p("web/1", 1, 21, "agent-2"),
            ],
        )
    }

    #[test]
    fn recovery_within_the_bound_passes() {
        let mut r = record();
        r.faults_end_ms = 30_000;
        r.samples = vec![
            sample(30_000, vec![p("web/0", 1, 20, "agent-2")]),
            all_running(33_000, 2),
            all_running(50_000, 2),
        ];
        assert_eq!(check(&r), vec![]);
    }

    #[test]
    fn a_slot_missing_past_the_bound_is_caught() {
        let mut r = record();
        r.faults_end_ms = 30_000;
        let missing = sample(
            30_000,
            vec![p("web/0", 1, 20, "agent-2"), p("web/1", 1, 21, "agent-2")],
        );
        r.samples = vec![
            missing.clone(),
            sample(45_000, missing.procs.clone()),
            all_running(50_000, 2),
        ];
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("db/0 has 0 copies"), "{v:?}");
    }

    #[test]
    fn a_duplicate_at_the_end_is_caught() {
        let mut r = record();
        r.faults_end_ms = 30_000;
        let mut end = all_running(50_000, 2);
        end.procs.push(p("web/1", 2, 22, "agent-1"));
        r.samples = vec![all_running(31_000, 2), end];
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("web/1 has 2 copies"), "{v:?}");
    }

    #[test]
    fn warm_replicas_run_one_process_among_them() {
        let mut r = record();
        r.slots = vec!["db/0".into(), "db/1".into(), "web/0".into()];
        r.warm_groups = vec![vec!["db/0".into(), "db/1".into()]];
        r.faults_end_ms = 30_000;
        // The standby (db/1) was promoted and runs; db/0 holds the state without a process.
        let promoted = sample(
            31_000,
            vec![p("db/1", 2, 11, "agent-2"), p("web/0", 1, 20, "agent-2")],
        );
        r.samples = vec![promoted.clone(), sample(50_000, promoted.procs.clone())];
        assert_eq!(check(&r), vec![]);
        // Two processes among the warm replicas is wrong, as is none.
        let both = sample(
            50_000,
            vec![
                p("db/0", 3, 10, "agent-1"),
                p("db/1", 2, 11, "agent-2"),
                p("web/0", 1, 20, "agent-2"),
            ],
        );
        r.samples = vec![promoted, both];
        let v = check(&r);
        assert!(
            v.iter()
                .any(|v| v.message.contains("db/0+db/1") && v.message.contains("2 copies")),
            "{v:?}"
        );
    }
}
