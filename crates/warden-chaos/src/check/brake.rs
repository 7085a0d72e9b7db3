//! **brake**: when the server itself is cut off from the fleet, no mass rescheduling happens.
//!
//! An `isolate` fault cuts every agent off from the server at once — from the server's side it
//! looks exactly like the whole fleet dying together. The likeliest cause of such a wave is the
//! server's own network, not the agents, so the lifecycle's mass-failure brake
//! (`warden_core::lifecycle`) holds every verdict back: when at least `brake_min_agents` (3)
//! agents, and more than `brake_share` (30 %) of the fleet, turn Suspect within `brake_window`,
//! no agent is declared Failed. Moving the whole fleet's work would only start copies on
//! agents the server cannot reach either, and stampede the fleet when the network returns.
//!
//! The rule, for every injected `isolate` fault, in the window from its start to its end (or
//! the end of the run) plus the verdict tolerance:
//! - every `agent.transition` to `failed` is a violation;
//! - a new task process — a `(task, token)` pair seen in a sample of the window but in no
//!   sample taken before the fault started — is a violation when it starts while the server
//!   is still cut off, or after the heal *while an older copy of that task still runs* (live
//!   work moved, the symptom of rescheduling on false verdicts). A process the agent already
//!   ran keeps its pair and is not counted; a singleton that fenced itself while cut off and is
//!   started again after the heal (its old copy gone) is a recovery, not a reschedule.

use std::collections::BTreeSet;

use super::Violation;
use crate::record::Record;
use crate::scenario::FaultKind;

/// The checker's name.
pub const NAME: &str = "brake";

/// Check the record.
pub fn check(record: &Record) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in record
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::Isolate && f.skipped.is_none())
    {
        let (start, end) = (
            f.start_ms,
            f.end_ms
                .unwrap_or(record.end_ms)
                .saturating_add(record.verdict_tolerance_ms),
        );
        let within = |t: u64| start <= t && t <= end;
        for e in record.events.iter().filter(|e| {
            e.kind == "agent.transition" && e.to.as_deref() == Some("failed") && within(e.t_ms)
        }) {
            out.push(Violation::new(
                NAME,
                e.t_ms,
                format!(
                    "{}#{} declared Failed at {} ms while the server was cut off (isolate \
                     fault {} from {start} ms)",
                    e.agent, e.generation, e.t_ms, f.index
                ),
            ));
        }
        let mut seen: BTreeSet<(&str, u64)> = record
            .samples
            .iter()
            .filter(|s| s.t_ms < start)
            .flat_map(|s| s.procs.iter().map(|p| (p.task.as_str(), p.token)))
            .collect();
        let cut_until = f.end_ms.unwrap_or(record.end_ms);
        for s in record.samples.iter().filter(|s| within(s.t_ms)) {
            for p in &s.procs {
                let older_alive = s
                    .procs
                    .iter()
                    .any(|q| q.task == p.task && q.token < p.token);
                if seen.insert((p.task.as_str(), p.token)) && (s.t_ms <= cut_until || older_alive) {
                    out.push(Violation::new(
                        NAME,
                        s.t_ms,
                        format!(
                            "{} started with token {} (pid {}, on {}) at {} ms {} (isolate \
                             fault {} from {start} ms)",
                            p.task,
                            p.token,
                            p.pid,
                            p.agent.as_deref().unwrap_or("an unknown agent"),
                            s.t_ms,
                            if s.t_ms <= cut_until {
                                "while the server was cut off"
                            } else {
                                "right after the heal, while an older copy still ran"
                            },
                            f.index
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{p, record, sample, transition};
    use crate::record::FaultRecord;

    /// Three agents, the server isolated from 10 s to 20 s; every slot running before.
    fn isolated() -> Record {
        let mut r = record();
        r.agents.push("agent-3".into());
        r.faults = vec![FaultRecord {
            index: 0,
            kind: FaultKind::Isolate,
            target: "server".into(),
            start_ms: 10_000,
            end_ms: Some(20_000),
            skipped: None,
            since_failover_ms: None,
        }];
        let running = vec![
            p("db/0", 1, 10, "agent-1"),
            p("web/0", 1, 11, "agent-2"),
            p("web/1", 1, 12, "agent-3"),
        ];
        r.samples = vec![
            sample(9_000, running.clone()),
            // The singleton fenced itself while cut off: gone, but not moved.
            sample(15_000, running[1..].to_vec()),
            // Back on its agent with its old token after the heal.
            sample(21_000, running),
        ];
        r.events = ["agent-1", "agent-2", "agent-3"]
            .into_iter()
            .flat_map(|a| {
                [
                    transition(1_000, a, 1, "healthy"),
                    transition(12_000, a, 1, "suspect"),
                    transition(20_500, a, 1, "healthy"),
                ]
            })
            .collect();
        r
    }

    #[test]
    fn suspect_without_failing_or_moving_passes() {
        assert_eq!(check(&isolated()), vec![]);
    }

    #[test]
    fn a_failed_verdict_while_isolated_is_caught() {
        let mut r = isolated();
        // Within the tolerance after the heal still counts; long after does not.
        r.events.push(transition(21_500, "agent-2", 1, "failed"));
        r.events.push(transition(40_000, "agent-3", 1, "failed"));
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].t_ms, 21_500);
        assert!(
            v[0].message
                .contains("agent-2#1 declared Failed at 21500 ms")
        );
    }

    #[test]
    fn a_process_started_while_isolated_is_caught() {
        let mut r = isolated();
        // db/0 rescheduled with a new token: reported once, at its first sample.
        r.samples[1].procs.push(p("db/0", 2, 20, "agent-3"));
        r.samples[2].procs.push(p("db/0", 2, 20, "agent-3"));
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].t_ms, 15_000);
        assert!(
            v[0].message
                .contains("db/0 started with token 2 (pid 20, on agent-3) at 15000 ms")
        );
    }

    #[test]
    fn after_the_heal_only_a_move_of_live_work_is_caught() {
        // The fenced singleton started again after the heal, its old copy gone: a recovery.
        let mut r = isolated();
        r.samples[2].procs[0] = p("db/0", 2, 20, "agent-2");
        assert_eq!(check(&r), vec![]);
        // A new copy of web/0 while the old one still runs: work moved on a false verdict.
        let mut r = isolated();
        r.samples[2].procs.push(p("web/0", 2, 21, "agent-1"));
        let v = check(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("web/0 started with token 2"), "{v:?}");
    }

    #[test]
    fn a_skipped_isolate_is_not_judged() {
        let mut r = isolated();
        r.faults[0].skipped = Some("some agent is already under a fault".into());
        r.events.push(transition(15_000, "agent-1", 1, "failed"));
        assert_eq!(check(&r), vec![]);
    }
}
