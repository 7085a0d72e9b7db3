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
use crate::state::{Replica, ReplicaOrder, ReplicaReport, primary_index, state_epoch};
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobName, TaskId};

use super::Controller;
use super::io::{Command, CopyReport, Order, Refusal};

/// How often every replica's agent is told its role again.
pub const REPLICA_REFRESH: Duration = Duration::from_secs(1);

/// How long a planned switchover may wait for a standby to catch up with the sealed primary
/// before it is abandoned (the primary takes writes again).
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A planned switchover under way: the primary is sealed (takes no writes); once the target
/// standby holds everything the primary wrote, it is promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Switchover {
    /// The primary's slot and copy.
    primary: (usize, FencingToken),
    /// The standby to promote.
    target: (usize, FencingToken),
    /// Abandoned after this.
    until: Time,
}

/// Whether `c` is the report of the job's primary copy, from the agent it runs on.
fn reported_by_primary(slots: &[TaskView], who: &AgentId, c: &CopyReport) -> bool {
    let i = c.task.index as usize;
    primary_index(replicas(slots)) == Some(i)
        && slots
            .get(i)
            .is_some_and(|t| t.epoch == c.epoch && t.agent.as_ref() == Some(who))
}

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
        if let Some(&fence) = self.fencing.get(&task.job).filter(|f| **f > epoch) {
            // Before a promotion at `quorum`: every replica stops following the lost primary
            // (it refuses its epoch from now on) and reports what it holds.
            return Some(ReplicaOrder {
                epoch: fence,
                ..ReplicaOrder::default()
            });
        }
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
                primary_agent: String::new(),
                in_sync,
                standbys,
                sealed: self.switchovers.contains_key(&task.job),
            });
        }
        let primary_agent = primary.and_then(|p| slots[p].agent.as_ref());
        let primary_addr = primary_agent
            .and_then(|a| self.books.get(a))
            .and_then(|b| b.state_addr.clone())
            .unwrap_or_default();
        Some(ReplicaOrder {
            epoch,
            primary: false,
            primary_addr,
            primary_agent: primary_agent
                .map(|a| a.name.to_string())
                .unwrap_or_default(),
            in_sync: Vec::new(),
            standbys: Vec::new(),
            sealed: false,
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
        let expired: Vec<JobName> = self
            .switchovers
            .iter()
            .filter(|(_, s)| now >= s.until)
            .map(|(j, _)| j.clone())
            .collect();
        for job in expired {
            self.end_switchover(&job, "the standby did not catch up in time", now, out);
        }
        if self
            .last_replica_refresh
            .is_some_and(|t| now.saturating_since(t) < REPLICA_REFRESH)
        {
            return;
        }
        self.last_replica_refresh = Some(now);
        // Reports of replicas whose job keeps no standby now are no longer needed, nor fences
        // a promotion went past.
        let desired = &self.desired;
        self.observed
            .replica_reports
            .retain(|t, _| desired.get(&t.job).is_some_and(|s| s.standbys() > 0));
        let tasks = &self.observed.tasks;
        self.fencing.retain(|job, fence| {
            desired.get(job).is_some_and(|s| s.standbys() > 0)
                && *fence
                    > state_epoch(
                        tasks
                            .get(job)
                            .into_iter()
                            .flatten()
                            .map(|t| t.replica.as_ref()),
                    )
        });
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
        let is_primary = reported_by_primary(slots, who, c);
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
                && !c.lagging.iter().any(|n| **n == *agent.name)
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

    /// A primary's report of in-sync standbys that held up its writes for too long: each is
    /// taken out of the set in the store (then, and only then, the primary stops waiting for
    /// it), as long as another in-sync standby stays. It joins again once caught up.
    pub(super) fn note_lagging(
        &mut self,
        who: &AgentId,
        c: &CopyReport,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let Some(slots) = self.replica_slots(&c.task.job) else {
            return;
        };
        let i = c.task.index as usize;
        let is_primary = reported_by_primary(slots, who, c);
        if !is_primary || self.switchovers.contains_key(&c.task.job) {
            return;
        }
        let epoch = state_epoch(replicas(slots));
        let named = |t: &TaskView| {
            t.agent
                .as_ref()
                .is_some_and(|a| c.lagging.iter().any(|n| **n == *a.name))
        };
        let members = |t: &TaskView| t.replica.is_some_and(|r| r.in_sync && !r.primary);
        let staying = slots
            .iter()
            .enumerate()
            .filter(|(j, t)| *j != i && members(t) && !named(t))
            .count();
        if staying == 0 {
            return; // writes would wait all the same, and the set would hold no one
        }
        let lagging: Vec<(TaskId, FencingToken)> = slots
            .iter()
            .enumerate()
            .filter(|(j, t)| *j != i && members(t) && named(t))
            .filter_map(|(j, t)| {
                Some((
                    TaskId::new(c.task.job.clone(), u32::try_from(j).ok()?),
                    t.epoch,
                ))
            })
            .collect();
        for (task, copy) in lagging {
            if self
                .in_sync_dropped
                .insert(task.clone(), (copy, epoch))
                .is_none()
            {
                let msg = format!(
                    "{task} held up the writes of its primary for {} ms or more: taken out of the \
                     in-sync set until it has caught up",
                    crate::state::STANDBY_LAG_LIMIT.as_millis()
                );
                self.event(out, now, "state.standby_lagging", None, Some(&task), msg);
            }
            self.dirty = true;
        }
    }

    /// A replica's report of what it holds.
    pub(super) fn note_state_seq(&mut self, c: &CopyReport) {
        if self.replica_slots(&c.task.job).is_none() {
            return;
        }
        let seen = ReplicaReport {
            copy: c.epoch,
            fence: c.state_fence,
            last_epoch: c.state_last_epoch,
            seq: c.state_seq,
            sealed: c.sealed,
        };
        if self.observed.replica_reports.insert(c.task.clone(), seen) != Some(seen)
            && (self.switchovers.contains_key(&c.task.job)
                || self.fencing.contains_key(&c.task.job))
        {
            self.dirty = true;
        }
    }

    /// The fences the plan asks for: each replica of the job is told the fence epoch (once;
    /// the periodic refresh repeats it).
    pub(super) fn set_fences(
        &mut self,
        fence: Vec<(JobName, u64)>,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        for (job, epoch) in fence {
            if self.fencing.insert(job.clone(), epoch) != Some(epoch) {
                let msg = format!(
                    "the primary of {job} is lost: its replicas are fenced at state epoch {epoch} \
                     and report what they hold before one is promoted"
                );
                self.event(out, now, "state.fence", None, None, msg);
                self.send_replicas(&job, out);
            }
        }
    }

    /// Whether a planned switchover of `job` may start now: the job keeps standbys, its
    /// primary runs on a live agent, and a standby of the in-sync set does too. Returns the
    /// standby's slot.
    pub fn check_promote(&self, job: &JobName, now: Time) -> Result<TaskId, Refusal> {
        self.writable(now)?;
        if !self.desired.contains_key(job) {
            return Err(Refusal::NotFound(format!("no job {job}")));
        }
        let Some(slots) = self.replica_slots(job) else {
            return Err(Refusal::Invalid(format!(
                "job {job} keeps no standby ([state] standbys = 0, or no [state])"
            )));
        };
        if self.switchovers.contains_key(job) {
            return Err(Refusal::Busy(format!("a switchover of {job} is under way")));
        }
        let live = |t: &TaskView| {
            t.state == SlotState::Running
                && t.agent.as_ref().is_some_and(|a| {
                    self.sessions.get(&a.name).is_some_and(|(s, _)| s == a)
                        && self
                            .fleet
                            .agent(a)
                            .is_some_and(|r| r.state().accepts_work())
                })
        };
        let p = primary_index(replicas(slots))
            .filter(|p| live(&slots[*p]))
            .ok_or_else(|| Refusal::Unavailable(format!("the primary of {job} is not running")))?;
        let target = slots
            .iter()
            .enumerate()
            .find(|(i, t)| *i != p && t.replica.is_some_and(|r| r.in_sync && !r.primary) && live(t))
            .map(|(i, _)| i)
            .ok_or_else(|| {
                Refusal::Unavailable(format!(
                    "no standby of {job} is in the in-sync set and running; try again once one is"
                ))
            })?;
        Ok(TaskId::new(
            job.clone(),
            u32::try_from(target).unwrap_or(u32::MAX),
        ))
    }

    /// Start a planned switchover: seal the primary and wait for the standby.
    pub(super) fn start_switchover(&mut self, job: &JobName, now: Time, out: &mut Vec<Command>) {
        let Ok(target) = self.check_promote(job, now) else {
            return; // checked before, changed since
        };
        let Some(slots) = self.replica_slots(job) else {
            return;
        };
        let Some(p) = primary_index(replicas(slots)) else {
            return;
        };
        let t = target.index as usize;
        let sw = Switchover {
            primary: (p, slots[p].epoch),
            target: (t, slots[t].epoch),
            until: now + SWITCHOVER_TIMEOUT,
        };
        self.switchovers.insert(job.clone(), sw);
        let msg = format!(
            "planned switchover of {job}: primary sealed, promoting {target} once it holds every write"
        );
        self.event(out, now, "state.switchover", None, Some(&target), msg);
        self.send_replicas(job, out);
        self.dirty = true;
    }

    /// End a switchover without a promotion (the primary takes writes again).
    fn end_switchover(&mut self, job: &JobName, why: &str, now: Time, out: &mut Vec<Command>) {
        if self.switchovers.remove(job).is_some() {
            let msg = format!("planned switchover of {job} abandoned: {why}");
            self.event(
                out,
                now,
                "state.switchover_abandoned",
                None,
                None,
                msg.clone(),
            );
            out.push(Command::Notice(super::io::Notice::Alarm(msg)));
            self.send_replicas(job, out);
        }
    }

    /// The promotions of planned switchovers whose standby caught up, as actions of this
    /// round.
    pub(super) fn switchover_actions(
        &mut self,
        actions: &mut Vec<Action>,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let jobs: Vec<JobName> = self.switchovers.keys().cloned().collect();
        for job in jobs {
            let Some(sw) = self.switchovers.get(&job).cloned() else {
                continue;
            };
            let Some(slots) = self.replica_slots(&job) else {
                self.end_switchover(&job, "the job keeps no standby now", now, out);
                continue;
            };
            let epoch = state_epoch(replicas(slots));
            let same = |(i, e): (usize, FencingToken)| slots.get(i).is_some_and(|t| t.epoch == e);
            if primary_index(replicas(slots)) != Some(sw.primary.0)
                || !same(sw.primary)
                || !same(sw.target)
            {
                self.switchovers.remove(&job);
                continue; // a failover or a replacement came first
            }
            let task = |i: usize| TaskId::new(job.clone(), u32::try_from(i).unwrap_or(u32::MAX));
            let reports = &self.observed.replica_reports;
            let sealed = reports
                .get(&task(sw.primary.0))
                .filter(|r| r.copy == sw.primary.1 && r.sealed)
                .map(|r| r.seq);
            let held = reports
                .get(&task(sw.target.0))
                .filter(|r| r.copy == sw.target.1)
                .map(|r| r.seq);
            let (Some(sealed), Some(held)) = (sealed, held) else {
                continue;
            };
            if held < sealed {
                continue;
            }
            let t = task(sw.target.0);
            actions.push(Action::SetReplica {
                op: OperationId(format!("{t}@{}:switchover-{}", sw.target.1, epoch + 1)),
                unclean: false,
                task: t,
                epoch: sw.target.1,
                replica: Replica {
                    epoch: epoch + 1,
                    primary: true,
                    in_sync: false,
                },
            });
        }
    }

    /// The in-sync additions and removals due, as actions of this round.
    pub(super) fn in_sync_actions(&mut self, actions: &mut Vec<Action>) {
        if self.in_sync_wanted.is_empty() && self.in_sync_dropped.is_empty() {
            return;
        }
        let mut wanted: Vec<(TaskId, (FencingToken, u64), bool)> = self
            .in_sync_wanted
            .drain()
            .map(|(t, v)| (t, v, true))
            .chain(self.in_sync_dropped.drain().map(|(t, v)| (t, v, false)))
            .collect();
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        for (task, (copy, epoch), join) in wanted {
            let current = self.slot(&task).and_then(|t| {
                (t.epoch == copy)
                    .then_some(t.replica)
                    .flatten()
                    // Joining: a standby out of the set, or a deposed primary (marked primary at
                    // an older epoch). Leaving: a standby of the set.
                    .filter(|r| {
                        if join {
                            !r.in_sync || r.primary
                        } else {
                            r.in_sync && !r.primary
                        }
                    })
            });
            // Planned actions on the same slot (a replacement, a promotion) go first.
            let planned = actions.iter().any(|a| match a {
                Action::Start { task: t, .. }
                | Action::Reschedule { task: t, .. }
                | Action::Evict { task: t, .. }
                | Action::SetReplica { task: t, .. }
                | Action::Reload { task: t, .. }
                | Action::Stop { task: t, .. } => *t == task,
                Action::Quarantine { .. } | Action::Alarm(_) => false,
            });
            if current.is_none() || planned {
                continue;
            }
            let kind = if join { "in-sync" } else { "lagging" };
            actions.push(Action::SetReplica {
                op: OperationId(format!("{task}@{copy}:{kind}-{epoch}")),
                unclean: false,
                task,
                epoch: copy,
                replica: Replica {
                    epoch,
                    primary: false,
                    in_sync: join,
                },
            });
        }
    }
}
