//! Checkers: each reads a [`Record`] and returns the violations it finds, one file per
//! property. A checker that cannot fail is worthless, so each has a unit test with a
//! hand-built record that breaks its property.

use serde::{Deserialize, Serialize};

use crate::record::Record;

pub mod at_most_one;
pub mod brake;
pub mod no_false_verdict;
pub mod no_lost_ack;
pub mod no_lost_work;

/// One broken property.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Checker that found it.
    pub checker: String,
    /// When (ms since the run started).
    pub t_ms: u64,
    /// What happened.
    pub message: String,
}

impl Violation {
    /// A violation found by `checker` at `t_ms`.
    pub fn new(checker: &str, t_ms: u64, message: impl Into<String>) -> Violation {
        Violation {
            checker: checker.to_string(),
            t_ms,
            message: message.into(),
        }
    }
}

/// A checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Checker name.
    pub checker: String,
    /// Whether it found nothing.
    pub passed: bool,
    /// What it found.
    pub violations: Vec<Violation>,
}

/// A checker: its name and its function.
pub type Checker = (&'static str, fn(&Record) -> Vec<Violation>);

/// Every checker.
pub const CHECKERS: [Checker; 5] = [
    (at_most_one::NAME, at_most_one::check),
    (no_lost_work::NAME, no_lost_work::check),
    (no_false_verdict::NAME, no_false_verdict::check),
    (brake::NAME, brake::check),
    (no_lost_ack::NAME, no_lost_ack::check),
];

/// Run every checker.
pub fn all(record: &Record) -> Vec<CheckResult> {
    CHECKERS
        .iter()
        .map(|(name, check)| {
            let violations = check(record);
            CheckResult {
                checker: (*name).to_string(),
                passed: violations.is_empty(),
                violations,
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Hand-built records for the checkers' tests.
    use crate::record::{AgentEvent, ProcSample, Record, Sample};

    /// A record with agents `agent-1`, `agent-2`, singleton `db/0` and service slots
    /// `web/0`, `web/1`; no samples, no events.
    pub fn record() -> Record {
        Record {
            agents: vec!["agent-1".into(), "agent-2".into()],
            singletons: vec!["db/0".into()],
            slots: vec!["db/0".into(), "web/0".into(), "web/1".into()],
            end_ms: 60_000,
            rto_bound_ms: 10_000,
            verdict_tolerance_ms: 2_350,
            ..Record::default()
        }
    }

    /// A process sample.
    pub fn p(task: &str, token: u64, pid: i32, agent: &str) -> ProcSample {
        ProcSample {
            task: task.into(),
            token,
            pid,
            agent: Some(agent.into()),
        }
    }

    /// A sample at `t_ms`.
    pub fn sample(t_ms: u64, procs: Vec<ProcSample>) -> Sample {
        Sample {
            t_ms,
            procs,
            agent_pids: Vec::new(),
        }
    }

    /// A transition event.
    pub fn transition(t_ms: u64, agent: &str, generation: u64, to: &str) -> AgentEvent {
        AgentEvent {
            seq: t_ms,
            t_ms,
            kind: "agent.transition".into(),
            agent: agent.into(),
            generation,
            from: None,
            to: Some(to.into()),
            message: String::new(),
        }
    }
}
