//! **no lost work**: after the last fault ends, every desired task slot runs again — exactly
//! one live process per slot — within the RTO bound, and still does at the end of the run.

use std::collections::BTreeMap;

use super::Violation;
use crate::record::{Record, Sample};

/// The checker's name.
pub const NAME: &str = "no-lost-work";

/// Slots of `slots` not running exactly once in `sample`, with their copy counts.
fn wrong_slots<'a>(slots: &'a [String], sample: &Sample) -> Vec<(&'a str, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &sample.procs {
        *counts.entry(p.task.as_str()).or_default() += 1;
    }
    slots
        .iter()
        .map(|s| (s.as_str(), counts.get(s.as_str()).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect()
}

fn describe(wrong: &[(&str, usize)]) -> String {
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
    if !window
        .iter()
        .any(|s| wrong_slots(&record.slots, s).is_empty())
    {
        let last = window.last().map_or_else(
            || "no sample in that time".to_string(),
            |s| describe(&wrong_slots(&record.slots, s)),
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
            let wrong = wrong_slots(&record.slots, s);
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
}
