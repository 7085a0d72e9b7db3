//! **at-most-one**: a singleton never has two live processes at one sampled moment, and no
//! task process runs with a fencing token older than one already seen for its slot.
//!
//! The token rule, precisely: once a process with token `n` has been seen for a slot,
//! - a *singleton* process with a token below `n` still alive is a violation (the old copy
//!   outlived the start of its replacement — the fencing rule failed);
//! - *any* process (singleton or service) that first appears with a token below `n` is a
//!   violation (a stale order was carried out).
//!
//! A service's old replica may keep running for a while next to its replacement (on an agent
//! that is cut off: services keep running offline by design), so for services only the second
//! rule applies.

use std::collections::{BTreeMap, BTreeSet};

use super::Violation;
use crate::record::Record;

/// The checker's name.
pub const NAME: &str = "at-most-one";

/// Check the record.
pub fn check(record: &Record) -> Vec<Violation> {
    let singletons: BTreeSet<&str> = record.singletons.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    let mut max_token: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen_pids: BTreeSet<i32> = BTreeSet::new();
    let mut reported_stale: BTreeSet<i32> = BTreeSet::new();
    let mut doubled: BTreeSet<&str> = BTreeSet::new();
    for sample in &record.samples {
        let mut copies: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for p in &sample.procs {
            if singletons.contains(p.task.as_str()) {
                copies.entry(p.task.as_str()).or_default().push(format!(
                    "pid {} token {} on {}",
                    p.pid,
                    p.token,
                    p.agent.as_deref().unwrap_or("?")
                ));
            }
            let max = max_token.get(p.task.as_str()).copied().unwrap_or(0);
            let fresh = !seen_pids.contains(&p.pid);
            let stale_singleton = singletons.contains(p.task.as_str()) && p.token < max;
            if (stale_singleton || (fresh && p.token < max)) && reported_stale.insert(p.pid) {
                out.push(Violation::new(
                    NAME,
                    sample.t_ms,
                    format!(
                        "{}: pid {} {} with token {} after token {max} had started",
                        p.task,
                        p.pid,
                        if fresh { "started" } else { "still runs" },
                        p.token
                    ),
                ));
            }
        }
        for p in &sample.procs {
            seen_pids.insert(p.pid);
            let m = max_token.entry(p.task.as_str()).or_insert(0);
            *m = (*m).max(p.token);
        }
        // One violation per episode of two live copies, not one per sample.
        let now_doubled: BTreeSet<&str> = copies
            .iter()
            .filter(|(_, c)| c.len() > 1)
            .map(|(t, _)| *t)
            .collect();
        for task in now_doubled.difference(&doubled) {
            out.push(Violation::new(
                NAME,
                sample.t_ms,
                format!(
                    "singleton {task} has {} live copies: {}",
                    copies[task].len(),
                    copies[task].join(", ")
                ),
            ));
        }
        doubled = now_doubled;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{p, record, sample};

    #[test]
    fn a_clean_handover_passes() {
        let mut r = record();
        r.samples = vec![
            sample(
                0,
                vec![p("db/0", 1, 10, "agent-1"), p("web/0", 1, 11, "agent-1")],
            ),
            sample(20, vec![p("web/0", 1, 11, "agent-1")]),
            sample(
                40,
                vec![p("db/0", 2, 12, "agent-2"), p("web/0", 1, 11, "agent-1")],
            ),
            // A service's old replica next to its replacement is allowed.
            sample(
                60,
                vec![
                    p("db/0", 2, 12, "agent-2"),
                    p("web/0", 2, 13, "agent-2"),
                    p("web/0", 1, 11, "agent-1"),
                ],
            ),
        ];
        assert_eq!(check(&r), vec![]);
    }

    #[test]
    fn two_live_singleton_copies_are_caught_once_per_episode() {
        let mut r = record();
        r.samples = vec![
            sample(0, vec![p("db/0", 1, 10, "agent-1")]),
            sample(
                20,
                vec![p("db/0", 1, 10, "agent-1"), p("db/0", 2, 12, "agent-2")],
            ),
            sample(
                40,
                vec![p("db/0", 1, 10, "agent-1"), p("db/0", 2, 12, "agent-2")],
            ),
        ];
        let v = check(&r);
        assert!(
            v.iter()
                .any(|v| v.t_ms == 20 && v.message.contains("2 live copies")),
            "{v:?}"
        );
        assert_eq!(
            v.iter()
                .filter(|v| v.message.contains("live copies"))
                .count(),
            1
        );
        // The old copy still running after the newer token started is the token rule too.
        assert!(
            v.iter()
                .any(|v| v.message.contains("pid 10 still runs with token 1")),
            "{v:?}"
        );
    }

    #[test]
    fn a_stale_token_starting_later_is_caught() {
        let mut r = record();
        r.samples = vec![
            sample(0, vec![p("web/1", 3, 10, "agent-1")]),
            sample(20, vec![]),
            sample(40, vec![p("web/1", 2, 11, "agent-2")]),
        ];
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("pid 11 started with token 2 after token 3")
        );
    }
}
