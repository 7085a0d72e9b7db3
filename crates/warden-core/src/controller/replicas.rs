//! Replicated task state: which slot of a job with standbys is its primary, the in-sync set,
//! and what each replica's agent is told.
//!
//! A job with `[state] standbys = k` has `k + 1` slots, placed on distinct agents; each slot's
//! record carries its [`Replica`] role. The rules:
//!
//! - the first start names slot 0 the primary at state epoch 1, the others standbys;
//! - a standby joins the in-sync set only when its primary reports it caught up (the primary
//!   already waits for it by then, so the set the store holds never names a standby that lacks
//!   an acknowledged write); it leaves the set when its slot is replaced (the replacement's
//!   record is not in sync), and only then does the primary stop waiting for it; it stays in
//!   the set across a promotion (it held every write acknowledged under the old epoch, and the
//!   new primary waits for it from its first write);
//! - a lost primary is replaced by promoting a standby at the next epoch
//!   ([`crate::planner`]'s promotion rule), persisted before any agent hears of it;
//! - every replica's agent is sent its [`ReplicaOrder`] when its job's roles change, and again
//!   every [`REPLICA_REFRESH`] (an order lost with a session is repaired by the next one).

use std::time::Duration;

use crate::planner::{Action, OperationId, SlotState, TaskView};
use crate::state::{Replica, ReplicaOrder, primary_index, state_epoch};
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobName, TaskId};

use super::Controller;
use super::io::{Command, CopyReport, Order};

/// How often every replica's agent is told its role again.
pub const REPLICA_REFRESH: Duration = Duration::from_secs(1);

fn replicas(slots: &[TaskView]) -> impl Iterator<Item = Option<&Replica>> + Clone {
    slots.iter().map(|t| t.replica.as_ref())
}

impl Controller {
    fn replica_slots(&self, job: &JobName) -> Option<&[TaskView]> {
        let want = self.desired.get(job)?.desired_count() as usize;
        if self.desired.get(job)?.standbys() == 0 {
            return None;
        }
        let slots = self.observed.tasks.get(job)?;
        Some(&slots[..want.min(slots.len())])
    }

    /// The role a new copy of `task` is recorded with: the primary's slot stays the primary
    /// (a restart in place); slot 0 of a job never started is the first primary; every other
    /// copy starts as a standby outside the in-sync set.
    pub(super) fn new_replica(&self, task: &TaskId) -> Option<Replica> {
        let spec = self.desired.get(&task.job)?;
        if spec.standbys() == 0 {
            return None;
        }
        let slots = self
            .observed
            .tasks
            .get(&task.job)
            .map_or(&[][..], Vec::as_slice);
        let epoch = state_epoch(replicas(slots));
        let i = task.index as usize;
        if epoch == 0 {
            return Some(Replica {
                epoch: 1,
                primary: i == 0,
                in_sync: false,
            });
        }
        Some(Replica {
            epoch,
            primary: primary_index(replicas(slots)) == Some(i),
            in_sync: false,
        })
    }

    /// What the agent of `task`'s current copy is told about its role.
    pub(super) fn replica_order(&self, task: &TaskId) -> Option<ReplicaOrder> {
        let slots = self.replica_slots(&task.job)?;
        let i = task.index as usize;
        slots.get(i)?.replica?;
        let epoch = state_epoch(replicas(slots));
        let primary = primary_index(replicas(slots));
        if primary == Some(i) {
            let in_sync = slots
                .iter()
                .enumerate()
                .filter(|(j, t)| *j != i && t.replica.is_some_and(|r| r.in_sync && !r.primary))
                .filter_map(|(_, t)| t.agent.as_ref().map(|a| a.name.to_string()))
                .collect();
            let standbys = slots
                .iter()
                .enumerate()
                .filter(|(j, t)| {
                    *j != i && matches!(t.state, SlotState::Starting | SlotState::Running)
                })
                .filter_map(|(_, t)| t.agent.as_ref().map(|a| a.name.to_string()))
                .collect();
            return Some(ReplicaOrder {
                epoch,
                primary: true,
                primary_addr: String::new(),
                in_sync,
                standbys,
            });
        }
        let primary_addr = primary
            .and_then(|p| slots[p].agent.as_ref())
            .and_then(|a| self.books.get(a))
            .and_then(|b| b.state_addr.clone())
            .unwrap_or_default();
        Some(ReplicaOrder {
            epoch,
            primary: false,
            primary_addr,
            in_sync: Vec::new(),
            standbys: Vec::new(),
        })
    }

    /// Tell every replica of `job` whose copy is placed on a connected agent its role.
    pub(super) fn send_replicas(&mut self, job: &JobName, out: &mut Vec<Command>) {
        let Some(slots) = self.replica_slots(job) else {
            return;
        };
        let copies: Vec<(TaskId, FencingToken, AgentId)> = slots
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t.state, SlotState::Starting | SlotState::Running))
            .filter_map(|(i, t)| {
                let agent = t.agent.clone()?;
                let index = u32::try_from(i).ok()?;
                Some((TaskId::new(job.clone(), index), t.epoch, agent))
            })
            .collect();
        for (task, epoch, agent) in copies {
            if self
                .sessions
                .get(&agent.name)
                .is_none_or(|(a, _)| *a != agent)
            {
                continue;
            }
            if let Some(replica) = self.replica_order(&task) {
                out.push(Command::Send {
                    to: agent,
                    order: Order::Replica {
                        task,
                        epoch,
                        replica,
                    },
                });
            }
        }
    }

    /// Every [`REPLICA_REFRESH`], every replica's role again.
    pub(super) fn refresh_replicas(&mut self, now: Time, out: &mut Vec<Command>) {
        if self
            .last_replica_refresh
            .is_some_and(|t| now.saturating_since(t) < REPLICA_REFRESH)
        {
            return;
        }
        self.last_replica_refresh = Some(now);
        let jobs: Vec<JobName> = self
            .desired
            .iter()
            .filter(|(_, s)| s.standbys() > 0)
            .map(|(j, _)| j.clone())
            .collect();
        for job in jobs {
            self.send_replicas(&job, out);
        }
    }

    /// A primary's report of the standbys it waits for: those not yet in the store's in-sync
    /// set are added at the next round.
    pub(super) fn note_in_sync(&mut self, who: &AgentId, c: &CopyReport) {
        let Some(slots) = self.replica_slots(&c.task.job) else {
            return;
        };
        let i = c.task.index as usize;
        let is_primary = primary_index(replicas(slots)) == Some(i)
            && slots
                .get(i)
                .is_some_and(|t| t.epoch == c.epoch && t.agent.as_ref() == Some(who));
        if !is_primary {
            return;
        }
        let epoch = state_epoch(replicas(slots));
        let mut wanted = Vec::new();
        for (j, t) in slots.iter().enumerate() {
            let (Some(agent), Some(r)) = (&t.agent, t.replica) else {
                continue;
            };
            if j != i
                && !r.in_sync
                && t.state == SlotState::Running
                && c.in_sync.iter().any(|n| **n == *agent.name)
                && let Ok(index) = u32::try_from(j)
            {
                wanted.push((TaskId::new(c.task.job.clone(), index), t.epoch, epoch));
            }
        }
        for (task, copy, epoch) in wanted {
            self.in_sync_wanted.insert(task, (copy, epoch));
            self.dirty = true;
        }
    }

    /// The in-sync additions due, as actions of this round.
    pub(super) fn in_sync_actions(&mut self, actions: &mut Vec<Action>) {
        if self.in_sync_wanted.is_empty() {
            return;
        }
        let mut wanted: Vec<(TaskId, (FencingToken, u64))> = self.in_sync_wanted.drain().collect();
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        for (task, (copy, epoch)) in wanted {
            let current = self.slot(&task).and_then(|t| {
                (t.epoch == copy)
                    .then_some(t.replica)
                    .flatten()
                    .filter(|r| !r.in_sync || r.primary)
            });
            // Planned actions on the same slot (a replacement, a promotion) go first.
            let planned = actions.iter().any(|a| match a {
                Action::Start { task: t, .. }
                | Action::Reschedule { task: t, .. }
                | Action::Evict { task: t, .. }
                | Action::SetReplica { task: t, .. }
                | Action::Stop { task: t, .. } => *t == task,
                Action::Quarantine { .. } | Action::Alarm(_) => false,
            });
            if current.is_none() || planned {
                continue;
            }
            actions.push(Action::SetReplica {
                op: OperationId(format!("{task}@{copy}:in-sync-{epoch}")),
                task,
                epoch: copy,
                replica: Replica {
                    epoch,
                    primary: false,
                    in_sync: true,
                },
            });
        }
    }
}
