//! Ticks and reconcile rounds: verdicts that come with time, the plan, each assignment persisted
//! before it is applied and sent, recovery records, drains, the endpoints registry, and the
//! retention of ended generations.

use std::collections::BTreeSet;

use crate::hash::FxHashMap;
use std::time::Duration;

use crate::endpoints::{CopyFacts, Observation, judge};
use crate::lifecycle::{AgentEvent, AgentState, Cause};
use crate::planner::{Action, PlanAlarm, SlotState, TaskView, apply, plan_next};
use crate::recovery::{Outcome, RecoveryRecord};
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobName, TaskId};

use super::config::{MAX_PLAN_INTERVAL, STALL_HOLD};
use super::io::{Command, Notice, Order, Write, WriteId, WriteOutcome};
use super::{Controller, PendingRecovery, Round};

impl Controller {
    pub(super) fn tick(&mut self, now: Time, out: &mut Vec<Command>) {
        // If the runtime itself was stalled (the server starved of CPU, paused, swapping), the
        // heartbeats of that time may still sit unread in socket buffers: judging agents
        // before reading them would blame them for the server's own pause. Verdicts are held
        // briefly after a stall; holding a verdict only ever delays recovery, never safety.
        if let Some(last) = self.last_tick {
            let gap = now.saturating_since(last);
            if gap > self.cfg.stall_after() {
                self.hold_until = now + STALL_HOLD;
                out.push(Command::Notice(Notice::Stalled { gap }));
            }
        }
        self.last_tick = Some(now);
        self.follow_election(now, out);
        let acting = self.acting_term(now).is_some();
        let mut outs = if now < self.hold_until {
            Vec::new()
        } else {
            self.fleet.tick(now)
        };
        // Agents that did not come back after a (re)start as leader are the leader's to
        // declare lost; a standby's fleet is only an opinion.
        if acting
            && let Some(deadline) = self.restart_deadline
            && now >= deadline
        {
            self.restart_deadline = None;
            let stale: Vec<AgentId> = self
                .fleet
                .agents()
                .filter(|r| r.state() == AgentState::Joining)
                .map(|r| r.id().clone())
                .collect();
            for id in stale {
                outs.extend(self.fleet.step(&id, AgentEvent::LeaseExpired, now));
            }
        }
        self.handle(outs, now, out);
        if acting {
            self.end_drains(now, out);
        }
        self.sync_endpoints(now, out);
        self.forget_ended(now, out);
        if acting {
            self.reconcile(now, out);
            self.refresh_replicas(now, out);
        }
    }

    /// Plan and start executing a round, unless one is still out or nothing is due.
    fn reconcile(&mut self, now: Time, out: &mut Vec<Command>) {
        if self.round.is_some() {
            return;
        }
        let due = self.dirty
            || self.replan_at.is_some_and(|t| now >= t)
            || self
                .last_plan
                .is_none_or(|t| now.saturating_since(t) >= MAX_PLAN_INTERVAL);
        if !due {
            return;
        }
        self.dirty = false;
        self.last_plan = Some(now);
        self.observed.brake_engaged = self.fleet.brake_engaged();
        self.observed.reschedule_budget = self.bucket.available(now);
        self.sync_daemon_pins();
        let planned = plan_next(&self.cfg.planner, &self.desired, &self.observed, now);
        let mut replan_at = planned.wake_at;
        let mut actions = planned.actions;
        self.set_fences(planned.fence, now, out);
        self.in_sync_actions(&mut actions);
        self.switchover_actions(&mut actions, now, out);
        self.rollout_actions(&mut actions, &mut replan_at, now, out);
        self.hold_pending_starts(&mut actions);
        if actions.is_empty() {
            self.standing_alarms.clear();
            self.replan_at = replan_at;
            self.round_done(now, now, 0, out);
            return;
        }
        // Standing alarms are noticed when they appear, not on every round.
        let alarms: BTreeSet<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Alarm(a) => Some(alarm_text(a)),
                _ => None,
            })
            .collect();
        for msg in alarms.difference(&self.standing_alarms) {
            out.push(Command::Notice(Notice::Alarm(msg.clone())));
            self.event(out, now, "alarm.plan", None, None, msg.clone());
        }
        if let Some(deferred) = actions.iter().find_map(|a| match a {
            Action::Alarm(PlanAlarm::RateLimited { tasks }) => Some(*tasks),
            _ => None,
        }) {
            // Deferred by the rate limit: plan again once the bucket has refilled for a share
            // of what waits (at most 250 ms on), not at every token: a plan costs the whole
            // fleet's slots, and the rate stays what it is either way.
            let rate = self.cfg.reschedule_rate;
            let secs = (f64::from(deferred) / rate).clamp(1.0 / rate, 0.25);
            let at = now + Duration::from_secs_f64(secs);
            replan_at = Some(replan_at.map_or(at, |w| w.min(at)));
        }
        self.replan_at = replan_at;
        self.standing_alarms = alarms;
        let moved = actions
            .iter()
            .filter(|a| matches!(a, Action::Reschedule { .. } | Action::Evict { .. }))
            .count();
        self.bucket
            .take(u32::try_from(moved).unwrap_or(u32::MAX), now);
        let mut round = Round {
            started: now,
            actions: actions.len(),
            pending: FxHashMap::default(),
        };
        for action in actions {
            self.execute(action, now, &mut round, out);
        }
        if round.pending.is_empty() {
            self.round_done(round.started, now, round.actions, out);
        } else {
            self.round = Some(round);
        }
    }

    /// First half of executing an action: assignments and evictions are persisted (and wait
    /// for their outcome); stops and cordons take effect at once.
    fn execute(&mut self, action: Action, now: Time, round: &mut Round, out: &mut Vec<Command>) {
        let slot_epoch =
            |c: &Controller, task: &TaskId| c.slot(task).map_or(FencingToken::NONE, |t| t.epoch);
        match &action {
            Action::Start {
                task, epoch, agent, ..
            }
            | Action::Reschedule {
                task,
                epoch,
                to: agent,
                ..
            } => {
                let failures = self.slot(task).map_or(0, |t| t.failures);
                let version = self.wanted_version(task);
                self.start_versions.insert(task.clone(), version);
                let write = Write::Slot {
                    id: self.next_write_id(),
                    expected: slot_epoch(self, task),
                    task: task.clone(),
                    record: TaskView {
                        home: None,
                        epoch: *epoch,
                        agent: Some(agent.clone()),
                        state: SlotState::Starting,
                        failures,
                        last_failure_at: None,
                        replica: self.new_replica(task),
                        version,
                    },
                };
                self.persist_then(write, action, round, out);
            }
            Action::SetReplica {
                task,
                epoch,
                replica,
                ..
            } => {
                let (task, epoch, replica) = (task.clone(), *epoch, Some(*replica));
                self.rewrite_copy(&task, epoch, |t| t.replica = replica, action, round, out);
            }
            Action::Reload {
                task,
                epoch,
                version,
                ..
            } => {
                let (task, epoch, version) = (task.clone(), *epoch, *version);
                if !self.rewrite_copy(&task, epoch, |t| t.version = version, action, round, out) {
                    self.rollout_reload_lost(&task);
                }
            }
            Action::Evict { task, epoch, .. } => {
                let write = Write::Slot {
                    id: self.next_write_id(),
                    expected: slot_epoch(self, task),
                    task: task.clone(),
                    record: TaskView {
                        epoch: *epoch,
                        ..TaskView::pending()
                    },
                };
                self.persist_then(write, action, round, out);
            }
            Action::Stop { .. } | Action::Quarantine { .. } | Action::Alarm(_) => {
                self.applied(action, now, out);
            }
        }
    }

    /// Persist a change of the record of `task`'s current copy at `epoch` (the slot keeps its
    /// epoch), then apply `action`; nothing (false) when the copy changed since the plan.
    fn rewrite_copy(
        &mut self,
        task: &TaskId,
        epoch: FencingToken,
        change: impl FnOnce(&mut TaskView),
        action: Action,
        round: &mut Round,
        out: &mut Vec<Command>,
    ) -> bool {
        let Some(mut record) = self.slot(task).filter(|t| t.epoch == epoch).cloned() else {
            return false;
        };
        change(&mut record);
        let write = Write::Slot {
            id: self.next_write_id(),
            expected: epoch,
            task: task.clone(),
            record,
        };
        self.persist_then(write, action, round, out);
        true
    }

    fn persist_then(
        &mut self,
        write: Write,
        action: Action,
        round: &mut Round,
        out: &mut Vec<Command>,
    ) {
        if let Write::Slot { id, .. } = &write {
            round.pending.insert(*id, action);
        }
        out.push(Command::Persist(write));
    }

    /// An epoch-checked write of this round ended.
    pub(super) fn persisted(
        &mut self,
        write: WriteId,
        outcome: WriteOutcome,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        if self.release_persisted(write, &outcome, now, out) {
            return;
        }
        let Some(round) = self.round.as_mut() else {
            return; // a round of an earlier term, or of before a reload
        };
        let Some(action) = round.pending.remove(&write) else {
            return;
        };
        let finished = round
            .pending
            .is_empty()
            .then_some((round.started, round.actions));
        if let (Action::Reload { task, .. }, false) =
            (&action, matches!(outcome, WriteOutcome::Applied))
        {
            // Not reloaded: the rollout chooses the slot again.
            self.rollout_reload_lost(task);
        }
        match outcome {
            WriteOutcome::Applied => self.applied(action, now, out),
            WriteOutcome::Conflict {
                current,
                stored_epoch,
            } => {
                // Our view was stale (e.g. a job re-created under an old name keeps its slots'
                // epochs): adopt the store's and plan again.
                if let Some(task) = action_task(&action).cloned() {
                    out.push(Command::Notice(Notice::WriteLost {
                        task: task.clone(),
                        stored: stored_epoch,
                    }));
                    let view = current.unwrap_or(TaskView {
                        epoch: stored_epoch,
                        ..TaskView::pending()
                    });
                    self.replace_slot(&task, view);
                }
                self.dirty = true;
            }
            WriteOutcome::Failed(error) => {
                if let Some(task) = action_task(&action).cloned() {
                    out.push(Command::Notice(Notice::WriteFailed { task, error }));
                }
                self.dirty = true;
            }
        }
        if let Some((started, actions)) = finished {
            self.round = None;
            self.round_done(started, now, actions, out);
        }
    }

    fn round_done(&mut self, started: Time, now: Time, actions: usize, out: &mut Vec<Command>) {
        out.push(Command::Notice(Notice::Reconciled {
            took: now.saturating_since(started),
            actions,
        }));
        if let super::Acting::Yes { term, since: None } = self.acting {
            self.acting = super::Acting::Yes {
                term,
                since: Some(now),
            };
            let msg = format!("leader {} (term {term}) reconciled", self.name);
            self.event(out, now, "leader.acting", None, None, msg);
            out.push(Command::Notice(Notice::Acting { term }));
        }
    }

    /// Put the store's view of a slot in place of ours.
    fn replace_slot(&mut self, task: &TaskId, view: TaskView) {
        let slots = self.observed.tasks.entry(task.job.clone()).or_default();
        let i = task.index as usize;
        if slots.len() <= i {
            slots.resize_with(i + 1, TaskView::pending);
        }
        let before = slots[i].agent.clone();
        let after = view.agent.clone();
        slots[i] = view;
        self.reindex(task, before.as_ref(), after.as_ref());
        self.endpoints_dirty = true;
    }

    /// Second half of executing an action (for assignments: once persisted): the in-memory
    /// view, the orders, the events and the recovery records.
    fn applied(&mut self, action: Action, now: Time, out: &mut Vec<Command>) {
        let task = action_task(&action).cloned();
        let before = task
            .as_ref()
            .and_then(|t| self.slot(t))
            .and_then(|s| s.agent.clone());
        // A new copy of a replica slot takes the role its record was written with.
        let replica = match &action {
            Action::Start { task, .. } | Action::Reschedule { task, .. } => self.new_replica(task),
            _ => None,
        };
        let desired = &self.desired;
        apply(
            &mut self.observed,
            std::slice::from_ref(&action),
            |j: &JobName| desired.get(j).map(|s| s.resources).unwrap_or_default(),
        );
        if let Action::Start { task, epoch, .. } | Action::Reschedule { task, epoch, .. } = &action
        {
            let version = self.start_versions.remove(task).unwrap_or(0);
            if let Some(slot) = self
                .observed
                .tasks
                .get_mut(&task.job)
                .and_then(|s| s.get_mut(task.index as usize))
            {
                slot.version = version;
            }
            self.rollout_ordered(task, *epoch, version, now);
        }
        if let (Some(r), Some(task)) = (replica, &task)
            && let Some(slot) = self
                .observed
                .tasks
                .get_mut(&task.job)
                .and_then(|s| s.get_mut(task.index as usize))
        {
            slot.replica = Some(r);
        }
        if let Some(task) = &task {
            let after = self.slot(task).and_then(|s| s.agent.clone());
            self.reindex(task, before.as_ref(), after.as_ref());
        }
        // An alarm changes nothing the plan depends on: taking it for a change would plan
        // again at once, and again, for as long as it stands (a job with no room kept the
        // server's control loop at a full core).
        if !matches!(action, Action::Alarm(_)) {
            self.dirty = true;
        }
        self.endpoints_dirty = true;
        // Every replica of a replicated state hears of a change in its job's roles at once.
        let replicated = task
            .as_ref()
            .filter(|t| self.desired.get(&t.job).is_some_and(|s| s.standbys() > 0))
            .map(|t| t.job.clone());
        self.applied_action(action, now, out);
        if let Some(job) = replicated {
            self.send_replicas(&job, out);
        }
    }

    fn applied_action(&mut self, action: Action, now: Time, out: &mut Vec<Command>) {
        match action {
            Action::SetReplica {
                task,
                replica,
                unclean,
                ..
            } => {
                if unclean {
                    let quorum = self
                        .desired
                        .get(&task.job)
                        .and_then(|s| s.state)
                        .is_some_and(|s| s.ack() == crate::state::AckLevel::Quorum);
                    let msg = if quorum {
                        format!(
                            "{task} promoted at state epoch {} without a quorum of its replicas: \
                             a majority was lost, and writes acknowledged at quorum that only \
                             they held are lost with them",
                            replica.epoch
                        )
                    } else {
                        format!(
                            "{task} promoted at state epoch {} although it is not in the in-sync \
                             set: every in-sync replica was lost, and writes acknowledged at \
                             standby that only they held are lost with them",
                            replica.epoch
                        )
                    };
                    out.push(Command::Notice(Notice::Alarm(msg.clone())));
                    let agent = self.slot(&task).and_then(|t| t.agent.clone());
                    self.event(
                        out,
                        now,
                        "state.promote_unclean",
                        agent.as_ref(),
                        Some(&task),
                        msg,
                    );
                }
                if replica.primary {
                    // A promotion ends any switchover of the job (it was one, or a failover
                    // came first).
                    self.switchovers.remove(&task.job);
                }
                let agent = self.slot(&task).and_then(|t| t.agent.clone());
                let (kind, msg) = if replica.primary {
                    (
                        "state.promote",
                        format!(
                            "{task} promoted to primary at state epoch {}",
                            replica.epoch
                        ),
                    )
                } else {
                    (
                        "state.in_sync",
                        format!(
                            "{task} joined the in-sync set at state epoch {}",
                            replica.epoch
                        ),
                    )
                };
                self.event(out, now, kind, agent.as_ref(), Some(&task), msg);
            }
            Action::Start {
                task, epoch, agent, ..
            } => {
                let msg = format!("start {task}@{epoch} on {agent}");
                self.event(out, now, "task.start", Some(&agent), Some(&task), msg);
                // The replacement of a singleton released from a restarting agent.
                if let Some(p) = self.recoveries.get_mut(&task)
                    && p.record.to.is_none()
                    && p.record.epoch < epoch
                {
                    p.record.epoch = epoch;
                    p.record.to = Some(agent.clone());
                    p.record.replacement_ordered_at = now;
                    let record = p.record.clone();
                    self.persist_recovery(record, now, out);
                }
                self.send_assign(&task, epoch, &agent, now, out);
            }
            Action::Reschedule {
                op,
                task,
                epoch,
                from,
                to,
                ..
            } => {
                let book = self.books.get(&from);
                let detected = book.and_then(|b| b.suspect_since).unwrap_or(now);
                let (failed, cause) = book
                    .and_then(|b| b.failed.clone())
                    .unwrap_or((now, Cause::Leave));
                let last_hb = self.fleet.agent(&from).and_then(|r| r.last_heartbeat());
                let has_health_check = self
                    .desired
                    .get(&task.job)
                    .is_some_and(|j| j.health.is_some());
                let record = RecoveryRecord {
                    op,
                    task: task.clone(),
                    epoch,
                    from: from.clone(),
                    to: Some(to.clone()),
                    last_heartbeat_at: last_hb,
                    detected_at: detected,
                    declared_failed_at: failed,
                    replacement_ordered_at: now,
                    replacement_started_at: None,
                    replacement_healthy_at: None,
                    outcome: Outcome::InProgress,
                    cause,
                };
                let pending = PendingRecovery {
                    record: record.clone(),
                    has_health_check,
                };
                if let Some(old) = self.recoveries.insert(task.clone(), pending) {
                    let mut old = old.record;
                    old.outcome = Outcome::Superseded;
                    self.persist_recovery(old, now, out);
                }
                self.persist_recovery(record, now, out);
                let msg = format!("reschedule {task}@{epoch} from {from} to {to}");
                self.event(out, now, "task.reschedule", Some(&from), Some(&task), msg);
                out.push(Command::Notice(Notice::Rescheduled {
                    task: task.clone(),
                    from,
                    to: to.clone(),
                    epoch,
                }));
                self.send_assign(&task, epoch, &to, now, out);
            }
            Action::Evict {
                task, epoch, from, ..
            } => {
                let msg = format!("{task}@{epoch} evicted from {from}: no agent has room");
                self.event(out, now, "task.evict", Some(&from), Some(&task), msg);
            }
            Action::Stop {
                task,
                epoch,
                agent,
                reason,
                ..
            } => {
                // A stop already out for this copy is sent again by `resend_pending` if the
                // agent keeps reporting the copy; the planner asking again changes nothing.
                if let Some(a) = &agent {
                    let key = (task.clone(), epoch);
                    if self
                        .books
                        .get(a)
                        .is_some_and(|b| b.stops.contains_key(&key))
                    {
                        return;
                    }
                    if let Some(book) = self.books.get_mut(a) {
                        book.stops.insert(key, now);
                    }
                    if self.sessions.get(&a.name).is_some_and(|(s, _)| s == a) {
                        out.push(Command::Send {
                            to: a.clone(),
                            order: Order::Stop {
                                task: task.clone(),
                                epoch,
                                grace: self.cfg.stop_grace,
                            },
                        });
                    }
                }
                let msg = format!("stop {task}@{epoch}: {reason:?}");
                self.event(out, now, "task.stop", agent.as_ref(), Some(&task), msg);
                if let Some(slot) = self.slot(&task)
                    && slot.epoch == epoch
                {
                    let write = Write::SlotState {
                        task: task.clone(),
                        epoch,
                        state: slot.state,
                        failures: slot.failures,
                    };
                    self.persist(out, now, write);
                }
            }
            Action::Reload {
                task,
                epoch,
                agent,
                version,
                ..
            } => {
                self.rollout_ordered(&task, epoch, version, now);
                let msg =
                    format!("{task}@{epoch} reloads version {version}'s configuration in place");
                self.event(out, now, "task.reload", Some(&agent), Some(&task), msg);
                self.send_reload(&task, epoch, &agent, now, out);
            }
            Action::Quarantine { agent, .. } => {
                let msg = format!("{agent} cordoned: flapping");
                self.event(out, now, "agent.cordon", Some(&agent), None, msg);
            }
            Action::Alarm(_) => {
                // Noticed once per round by `reconcile`.
            }
        }
    }

    /// Feed the endpoints registry with the service copies when they changed (and at least
    /// once a second: removed instances expire); wake its watchers when it changed.
    fn sync_endpoints(&mut self, now: Time, out: &mut Vec<Command>) {
        let due = self.endpoints_dirty
            || self
                .last_endpoints_sync
                .is_none_or(|t| now.saturating_since(t) >= Duration::from_secs(1));
        if !due {
            return;
        }
        self.endpoints_dirty = false;
        self.last_endpoints_sync = Some(now);
        let mut declared = Vec::new();
        let mut observed = Vec::new();
        for (job, spec) in &self.desired {
            let Some(service) = spec.service_name() else {
                continue;
            };
            declared.push(service.to_string());
            let Some(slots) = self.observed.tasks.get(job) else {
                continue;
            };
            // A replicated state serves from its primary only.
            let primary = (spec.standbys() > 0)
                .then(|| crate::state::primary_index(slots.iter().map(|t| t.replica.as_ref())));
            for (i, slot) in slots.iter().enumerate() {
                let Some(agent) = &slot.agent else { continue };
                if primary.is_some_and(|p| p != Some(i)) {
                    continue;
                }
                let Ok(index) = u32::try_from(i) else {
                    continue;
                };
                let task = TaskId::new(job.clone(), index);
                let Some((epoch, addr, healthy)) = self.endpoints_seen.get(&task) else {
                    continue;
                };
                if *epoch != slot.epoch {
                    continue;
                }
                let agent_state = self
                    .fleet
                    .agent(agent)
                    .map_or(AgentState::Failed, |r| r.state());
                let (state, reason) = judge(CopyFacts {
                    agent: agent_state,
                    task: slot.state,
                    healthy: *healthy,
                    stopping: self.draining.contains_key(job),
                });
                observed.push(Observation {
                    service: service.to_string(),
                    task,
                    epoch: *epoch,
                    agent: agent.clone(),
                    addr: addr.clone(),
                    state,
                    reason,
                });
            }
        }
        declared.sort();
        declared.dedup();
        let desired = &self.desired;
        self.endpoints_seen
            .retain(|t, _| desired.contains_key(&t.job));
        if self.registry.sync(&declared, observed, now) {
            out.push(Command::ServicesChanged {
                index: self.registry.index(),
            });
        }
    }

    /// Stop the deleted jobs whose drain is over: they leave `desired`, so this round's plan
    /// stops their tasks.
    fn end_drains(&mut self, now: Time, out: &mut Vec<Command>) {
        let mut over: Vec<JobName> = self
            .draining
            .iter()
            .filter(|(_, until)| now >= **until)
            .map(|(job, _)| job.clone())
            .collect();
        over.sort();
        for job in over {
            self.draining.remove(&job);
            self.desired.remove(&job);
            self.dirty = true;
            self.endpoints_dirty = true;
            let msg = format!("job {job} drained; stopping its tasks");
            self.event(out, now, "job.drained", None, None, msg);
            out.push(Command::Notice(Notice::DrainOver { job }));
        }
    }

    /// Forget the generations that ended more than `forget_after` ago, once no slot refers to
    /// them. A generation still named by a slot waits (its copy must be judged by the planner).
    fn forget_ended(&mut self, now: Time, out: &mut Vec<Command>) {
        let keep = self.cfg.forget_after;
        let mut forgotten = 0usize;
        let mut blocked = Vec::new();
        while let Some((at, _)) = self.ended.front() {
            if now.saturating_since(*at) < keep {
                break;
            }
            let Some((_, id)) = self.ended.pop_front() else {
                break;
            };
            let Some(book) = self.books.get(&id) else {
                continue; // already gone
            };
            if !book.slots.is_empty() {
                blocked.push(id);
                continue;
            }
            self.forget_generation(&id);
            forgotten += 1;
        }
        // Looked at again one retention window later (a slot moves off it long before).
        for id in blocked {
            self.ended.push_back((now, id));
        }
        if forgotten > 0 {
            self.dirty = true;
            out.push(Command::Notice(Notice::Forgot {
                generations: forgotten,
            }));
        }
    }

    pub(super) fn job_deleted(&mut self, job: JobName, now: Time, out: &mut Vec<Command>) {
        let drain = self
            .desired
            .get(&job)
            .and_then(|s| s.service.as_ref())
            .map_or(Duration::ZERO, |s| s.drain);
        // A service with `drain` keeps running, out of new traffic, for that long; deleting it
        // again while it drains stops it at once.
        let msg = if drain > Duration::ZERO && !self.draining.contains_key(&job) {
            let msg = format!(
                "job {job} deleted; draining for {} ms before stopping its tasks",
                super::ms(drain)
            );
            self.draining.insert(job, now + drain);
            msg
        } else {
            self.draining.remove(&job);
            self.desired.remove(&job);
            self.rollout_job_deleted(&job);
            format!("job {job} deleted; stopping its tasks")
        };
        self.dirty = true;
        self.endpoints_dirty = true;
        self.event(out, now, "job.delete", None, None, msg);
    }
}

fn action_task(a: &Action) -> Option<&TaskId> {
    match a {
        Action::Start { task, .. }
        | Action::Reschedule { task, .. }
        | Action::Evict { task, .. }
        | Action::SetReplica { task, .. }
        | Action::Reload { task, .. }
        | Action::Stop { task, .. } => Some(task),
        Action::Quarantine { .. } | Action::Alarm(_) => None,
    }
}

/// The text of a plan alarm.
pub fn alarm_text(a: &PlanAlarm) -> String {
    match a {
        PlanAlarm::RescheduleFrozen { tasks } => {
            format!("{tasks} reschedules held by the mass-failure brake")
        }
        PlanAlarm::RateLimited { tasks } => {
            format!("{tasks} reschedules deferred by the rate limit")
        }
        PlanAlarm::NoCapacity { job, tasks } => {
            format!("no agent has room for {tasks} task(s) of {job}")
        }
    }
}
