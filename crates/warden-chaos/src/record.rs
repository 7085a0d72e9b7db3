//! The record of one chaos run: what the harness did (faults), what was true (ground truth
//! about agents and task processes), and what the server said (its events). Checkers and the
//! report read only this, so they can be tested on hand-built records.
//!
//! Every time is in milliseconds since the run started (`t_ms`), on the harness's clock; the
//! server's events are placed on it through their wall-clock stamps (same machine).

use serde::{Deserialize, Serialize};

use crate::scenario::{FaultKind, Scenario};

/// Longest a sampler scan of `/proc` may take (samples are stamped when it begins), in ms.
pub const SCAN_SLACK_MS: u64 = 50;
/// The name truth intervals use for the server.
pub const SERVER: &str = "server";

/// Everything recorded during a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// The scenario run.
    pub scenario: Option<Scenario>,
    /// Seed of the run's random choices.
    pub seed: u64,
    /// `netns` (each agent in its own network namespace) or `loopback`.
    #[serde(default)]
    pub network: String,
    /// Agent names.
    pub agents: Vec<String>,
    /// Task ids of singleton slots.
    pub singletons: Vec<String>,
    /// Task ids of every desired slot.
    pub slots: Vec<String>,
    /// Slots of a replicated state with warm standbys, per job: exactly one of each group
    /// runs a process (the primary's), the others hold the state without one.
    #[serde(default)]
    pub warm_groups: Vec<Vec<String>>,
    /// When the run started on the wall clock, ms since the Unix epoch (every `t_ms` is
    /// counted from it; to line the record up with the processes' logs).
    #[serde(default)]
    pub start_unix_ms: u64,
    /// When the workload ran and the fault schedule started.
    pub schedule_start_ms: u64,
    /// When the last fault ended (its undo done).
    pub faults_end_ms: u64,
    /// When recording stopped.
    pub end_ms: u64,
    /// Bound of the no-lost-work checker, ms.
    pub rto_bound_ms: u64,
    /// Tolerance of the no-false-verdict checker after a fault ends, ms.
    pub verdict_tolerance_ms: u64,
    /// Faults as executed.
    pub faults: Vec<FaultRecord>,
    /// Intervals when an agent (or the [`SERVER`]) was truly not up and reachable.
    pub truth: Vec<TruthInterval>,
    /// Agent processes started (for telling generations apart).
    pub spawns: Vec<Spawn>,
    /// Samples of task processes from `/proc`.
    pub samples: Vec<Sample>,
    /// The server's events about agents.
    pub events: Vec<AgentEvent>,
    /// Things that happened outside the harness's control (e.g. an agent process that died
    /// without a fault); the ground truth was corrected for them.
    #[serde(default)]
    pub anomalies: Vec<String>,
    /// Every `leader-kill` of a replicated control plane and the failover that followed.
    #[serde(default)]
    pub failovers: Vec<Failover>,
    /// Every write the stateful workload acknowledged, as its processes printed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<StateAck>,
}

/// One write the stateful workload (`warden workload counter`) acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAck {
    /// The slot whose copy acknowledged it (`job/index`).
    pub task: String,
    /// The agent it ran on.
    pub agent: String,
    /// The counter's value it wrote.
    pub value: u64,
    /// The state epoch it was written under.
    pub epoch: u64,
    /// The level it was acknowledged at (`local`, `standby`).
    pub ack: String,
    /// When (ms since the run started; from the process's wall-clock stamp).
    pub t_ms: u64,
}

/// Read the acknowledgements the stateful workload `job` printed in the task logs under
/// `dir/<agent>/logs/`, placed on the run's clock (`start_unix_ms`), oldest first.
pub fn read_acks(
    dir: &std::path::Path,
    agents: &[String],
    job: &str,
    start_unix_ms: u64,
) -> Vec<StateAck> {
    let mut out = Vec::new();
    for agent in agents {
        let Ok(entries) = std::fs::read_dir(dir.join(agent).join("logs")) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(index) = name
                .strip_prefix(&format!("{job}."))
                .and_then(|r| r.strip_suffix(".stdout.log"))
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("acked ") else {
                    continue;
                };
                let field = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(k))
                        .map(str::to_string)
                };
                let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
                let (Some(value), Some(epoch), Some(at)) =
                    (num("value="), num("epoch="), num("at_ms="))
                else {
                    continue;
                };
                out.push(StateAck {
                    task: format!("{job}/{index}"),
                    agent: agent.clone(),
                    value,
                    epoch,
                    ack: field("ack=").unwrap_or_default(),
                    t_ms: at.saturating_sub(start_unix_ms),
                });
            }
        }
    }
    out.sort_by_key(|a| (a.t_ms, a.epoch, a.value));
    out
}

/// A leader killed, and who took over when (times in ms since the run started; the servers'
/// stamps are wall-clock, placed on the run's clock like events).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The `leader-kill` fault's position in the schedule.
    pub fault: usize,
    /// The server killed (`server-<i>`).
    pub killed: String,
    /// Its term.
    pub old_term: u64,
    /// When it was killed.
    pub kill_ms: u64,
    /// The replica that took over, once seen.
    pub new_leader: Option<String>,
    /// Its term.
    pub new_term: Option<u64>,
    /// When it won the election (`since` of `GET /v1/leader`).
    pub elected_ms: Option<u64>,
    /// When it ran its first reconcile round of the term (`acting_since`): the failover is
    /// complete.
    pub acting_ms: Option<u64>,
}

impl Failover {
    /// Kill → the new leader acting.
    pub fn failover_ms(&self) -> Option<u64> {
        self.acting_ms.map(|t| t.saturating_sub(self.kill_ms))
    }

    /// Kill → the new leader elected.
    pub fn election_ms(&self) -> Option<u64> {
        self.elected_ms.map(|t| t.saturating_sub(self.kill_ms))
    }
}

/// A fault as executed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Position in the scenario's schedule.
    pub index: usize,
    /// Kind.
    pub kind: FaultKind,
    /// The agent hit (`server` for a server kill; empty when skipped before a target was
    /// found).
    pub target: String,
    /// When it began.
    pub start_ms: u64,
    /// When it was undone (`None`: never, e.g. a kill without duration).
    pub end_ms: Option<u64>,
    /// Why it was not injected, if it was not.
    pub skipped: Option<String>,
    /// For a fault injected `after_failover`: how long after the new leader started acting
    /// it was injected.
    #[serde(default)]
    pub since_failover_ms: Option<u64>,
}

/// How an agent was not up and reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruthState {
    /// No process (killed, or between kill and restart).
    Down,
    /// Stopped by SIGSTOP.
    Paused,
    /// Alive but its session cut off.
    Cut,
}

/// An interval of ground truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthInterval {
    /// Agent name (or [`SERVER`]).
    pub agent: String,
    /// How it was not up.
    pub state: TruthState,
    /// Start.
    pub start_ms: u64,
    /// End (`None`: until the end of the run).
    pub end_ms: Option<u64>,
}

impl TruthInterval {
    /// Whether `t` lies in the interval extended by `tail` after its end.
    pub fn covers(&self, t: u64, tail: u64, run_end: u64) -> bool {
        let end = self.end_ms.unwrap_or(run_end).saturating_add(tail);
        self.start_ms <= t && t <= end
    }
}

/// An agent process was started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    /// Agent name.
    pub agent: String,
    /// Its PID.
    pub pid: i32,
    /// When.
    pub t_ms: u64,
}

/// One task process seen in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSample {
    /// Task id (`job/slot`).
    pub task: String,
    /// Its fencing token.
    pub token: u64,
    /// Its PID.
    pub pid: i32,
    /// The agent it runs under (its shim's parent), if known.
    pub agent: Option<String>,
}

/// Every live task process at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When.
    pub t_ms: u64,
    /// Live task processes.
    pub procs: Vec<ProcSample>,
    /// PIDs of the agent processes alive at that moment.
    #[serde(default)]
    pub agent_pids: Vec<i32>,
}

/// One server event about an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// The server's sequence number.
    pub seq: u64,
    /// When (from the server's wall-clock stamp).
    pub t_ms: u64,
    /// Event kind (`agent.transition`, …).
    pub kind: String,
    /// Agent name.
    pub agent: String,
    /// Agent generation.
    pub generation: u64,
    /// For transitions: the state left.
    pub from: Option<String>,
    /// For transitions: the state entered (`suspect`, `failed`, `healthy`, …).
    pub to: Option<String>,
    /// The server's message.
    pub message: String,
}

impl Record {
    /// The truth intervals of `agent`.
    pub fn truth_of<'a>(&'a self, agent: &'a str) -> impl Iterator<Item = &'a TruthInterval> {
        self.truth.iter().filter(move |t| t.agent == agent)
    }

    /// Whether `agent` was truly not up and reachable at `t` (or within `tail` after such an
    /// interval ended).
    pub fn truly_out(&self, agent: &str, t: u64, tail: u64) -> bool {
        self.truth_of(agent).any(|i| i.covers(t, tail, self.end_ms))
    }

    /// When the server first mentioned generation `generation` of `agent`.
    pub fn first_seen(&self, agent: &str, generation: u64) -> Option<u64> {
        self.events
            .iter()
            .filter(|e| e.agent == agent && e.generation == generation)
            .map(|e| e.t_ms)
            .min()
    }

    /// The latest start of `agent`'s process at or before `t`.
    pub fn last_spawn_before(&self, agent: &str, t: u64) -> Option<u64> {
        self.spawns
            .iter()
            .filter(|s| s.agent == agent && s.t_ms <= t)
            .map(|s| s.t_ms)
            .max()
    }

    /// The server's verdict on `agent` at `t`: the state of the newest generation it had
    /// mentioned by then (`None` before any transition).
    pub fn verdict_at(&self, agent: &str, t: u64) -> Option<&str> {
        let newest = self
            .events
            .iter()
            .filter(|e| e.agent == agent && e.t_ms <= t)
            .map(|e| e.generation)
            .max()?;
        self.events
            .iter()
            .filter(|e| e.agent == agent && e.generation == newest && e.t_ms <= t)
            .filter_map(|e| e.to.as_deref())
            .next_back()
    }

    /// Intervals in which the server held `agent` (its newest generation) Suspect or Failed:
    /// `(start, end, state)`, split where the state changes; the last one may run to the end
    /// of the run.
    pub fn verdict_intervals(&self, agent: &str) -> Vec<(u64, u64, String)> {
        let mut times: Vec<u64> = self
            .events
            .iter()
            .filter(|e| e.agent == agent)
            .map(|e| e.t_ms)
            .collect();
        times.sort_unstable();
        times.dedup();
        let mut out: Vec<(u64, u64, String)> = Vec::new();
        let mut open: Option<(u64, String)> = None;
        for t in times {
            let now = self
                .verdict_at(agent, t)
                .filter(|v| matches!(*v, "suspect" | "failed"))
                .map(str::to_string);
            if open.as_ref().map(|(_, s)| s) != now.as_ref() {
                if let Some((start, state)) = open.take() {
                    out.push((start, t, state));
                }
                open = now.map(|s| (t, s));
            }
        }
        if let Some((start, state)) = open {
            out.push((start, self.end_ms.max(start), state));
        }
        out
    }

    /// Correct the ground truth with what `/proc` saw: an agent process that died although
    /// the harness did not kill it (another program killed it, or it crashed) was down from
    /// its last sample alive until the agent was next started. Each such death is added as a
    /// `down` interval and noted in [`Record::anomalies`].
    pub fn reconcile_deaths(&mut self) {
        let mut added = Vec::new();
        for spawn in &self.spawns {
            let mut last_alive = None;
            let mut death = None;
            for s in self.samples.iter().filter(|s| s.t_ms >= spawn.t_ms) {
                if s.agent_pids.contains(&spawn.pid) {
                    last_alive = Some(s.t_ms);
                } else if let Some(alive) = last_alive {
                    death = Some((alive, s.t_ms));
                    break;
                }
            }
            let Some((alive, seen_dead)) = death else {
                continue;
            };
            // A sample is stamped when its scan of /proc begins, so a kill made during the scan
            // can be seen "before" the fault's own timestamp: allow the scan's duration.
            let explained = self.truth_of(&spawn.agent).any(|i| {
                i.state == TruthState::Down
                    && i.start_ms >= spawn.t_ms
                    && i.start_ms <= seen_dead + SCAN_SLACK_MS
            });
            if explained {
                continue;
            }
            let next = self
                .spawns
                .iter()
                .filter(|n| n.agent == spawn.agent && n.t_ms > spawn.t_ms)
                .map(|n| n.t_ms)
                .min();
            added.push((
                TruthInterval {
                    agent: spawn.agent.clone(),
                    state: TruthState::Down,
                    start_ms: alive,
                    end_ms: next,
                },
                format!(
                    "{} (pid {}) died between {alive} and {seen_dead} ms without a fault from \
                     the harness (killed by another program, or crashed)",
                    spawn.agent, spawn.pid
                ),
            ));
        }
        for (interval, note) in added {
            self.truth.push(interval);
            self.anomalies.push(note);
        }
    }

    /// The last sample whose scan surely ended before `t`: what ran just before a fault
    /// injected at `t`.
    pub fn sample_before(&self, t: u64) -> Option<&Sample> {
        self.sample_at(t.saturating_sub(SCAN_SLACK_MS + 1))
    }

    /// The sample at or just before `t`.
    pub fn sample_at(&self, t: u64) -> Option<&Sample> {
        let i = self.samples.partition_point(|s| s.t_ms <= t);
        i.checked_sub(1).and_then(|i| self.samples.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexplained_agent_death_becomes_truth_and_an_anomaly() {
        let mut r = Record {
            end_ms: 1_000,
            spawns: vec![
                Spawn {
                    agent: "agent-1".into(),
                    pid: 10,
                    t_ms: 0,
                },
                Spawn {
                    agent: "agent-2".into(),
                    pid: 20,
                    t_ms: 0,
                },
                Spawn {
                    agent: "agent-1".into(),
                    pid: 11,
                    t_ms: 600,
                },
            ],
            // agent-2 was killed by the harness at 300 ms: explained.
            truth: vec![TruthInterval {
                agent: "agent-2".into(),
                state: TruthState::Down,
                start_ms: 300,
                end_ms: None,
            }],
            ..Record::default()
        };
        let s = |t_ms, agent_pids: Vec<i32>| Sample {
            t_ms,
            procs: vec![],
            agent_pids,
        };
        r.samples = vec![
            s(0, vec![]),
            s(100, vec![10, 20]),
            s(200, vec![10, 20]),
            s(320, vec![]),
            s(700, vec![11]),
        ];
        r.reconcile_deaths();
        assert_eq!(r.anomalies.len(), 1, "{:?}", r.anomalies);
        assert!(r.anomalies[0].starts_with("agent-1 (pid 10) died between 200 and 320 ms"));
        assert!(r.truly_out("agent-1", 250, 0));
        assert!(!r.truly_out("agent-1", 650, 0));
    }
}
