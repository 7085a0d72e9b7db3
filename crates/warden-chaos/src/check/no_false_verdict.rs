//! **no false verdict**: the server never declares an agent Failed while that agent is truly
//! up and reachable — not killed, not paused, not cut off, and not within the tolerance (the
//! lease with its margins, 2.35 s by default) after such a fault ended.
//!
//! A Failed verdict about an *older generation* of an agent whose process has been replaced
//! since (it was killed and started again) is right, whatever the new process is doing: the
//! generation's process is gone. A generation belongs to the current process when the server
//! first mentioned it after that process was started.

use super::Violation;
use crate::record::Record;

/// The checker's name.
pub const NAME: &str = "no-false-verdict";

/// Check the record.
pub fn check(record: &Record) -> Vec<Violation> {
    let mut out = Vec::new();
    for e in &record.events {
        if e.kind != "agent.transition" || e.to.as_deref() != Some("failed") {
            continue;
        }
        if record.truly_out(&e.agent, e.t_ms, record.verdict_tolerance_ms) {
            continue;
        }
        let replaced = match (
            record.first_seen(&e.agent, e.generation),
            record.last_spawn_before(&e.agent, e.t_ms),
        ) {
            (Some(seen), Some(spawned)) => seen < spawned,
            _ => false,
        };
        if replaced {
            continue;
        }
        out.push(Violation::new(
            NAME,
            e.t_ms,
            format!(
                "{}#{} declared Failed while up and reachable: {}",
                e.agent, e.generation, e.message
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{record, transition};
    use crate::record::{Spawn, TruthInterval, TruthState};

    fn paused(start_ms: u64, end_ms: u64) -> TruthInterval {
        TruthInterval {
            agent: "agent-1".into(),
            state: TruthState::Paused,
            start_ms,
            end_ms: Some(end_ms),
        }
    }

    #[test]
    fn failed_during_or_just_after_a_fault_passes() {
        let mut r = record();
        r.truth = vec![paused(10_000, 15_000)];
        r.events = vec![
            transition(1_000, "agent-1", 1, "healthy"),
            transition(12_500, "agent-1", 1, "failed"),
            // Within the tolerance after the pause ended.
            transition(16_000, "agent-1", 1, "failed"),
        ];
        assert_eq!(check(&r), vec![]);
    }

    #[test]
    fn failed_about_a_replaced_generation_passes() {
        let mut r = record();
        r.spawns = vec![
            Spawn {
                agent: "agent-1".into(),
                pid: 1,
                t_ms: 0,
            },
            Spawn {
                agent: "agent-1".into(),
                pid: 2,
                t_ms: 20_000,
            },
        ];
        r.events = vec![
            transition(1_000, "agent-1", 1, "healthy"),
            transition(21_000, "agent-1", 2, "healthy"),
            transition(30_000, "agent-1", 1, "failed"),
        ];
        assert_eq!(check(&r), vec![]);
    }

    #[test]
    fn failed_while_up_is_caught() {
        let mut r = record();
        r.truth = vec![paused(10_000, 15_000)];
        r.spawns = vec![Spawn {
            agent: "agent-1".into(),
            pid: 1,
            t_ms: 0,
        }];
        r.events = vec![
            transition(1_000, "agent-1", 1, "healthy"),
            transition(20_000, "agent-1", 1, "failed"),
            transition(20_000, "agent-2", 1, "failed"),
        ];
        let v = check(&r);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].message.contains("agent-1#1 declared Failed"));
        assert!(v[1].message.contains("agent-2#1"));
    }
}
