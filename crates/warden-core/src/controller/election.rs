//! The replica's role: take over when elected (load the store first), stand down when the
//! leadership is lost or its deadline passes, refresh a standby's view every second.

use crate::fencing::DeathEvidence;
use crate::hash::FxHashMap;
use crate::lifecycle::AgentState;
use crate::planner::{Desired, SlotState, TaskView};
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobName, Resources, TaskId};

use super::config::STANDBY_REFRESH;
use super::io::{Command, Load, Notice, Snapshot};
use super::{Acting, Controller, allocations};

impl Controller {
    /// Follow the election at `now`.
    pub(super) fn follow_election(&mut self, now: Time, out: &mut Vec<Command>) {
        match (self.acting, self.term_now(now)) {
            (Acting::Yes { term, .. }, Some(t)) | (Acting::Loading { term }, Some(t))
                if term == t => {}
            (_, Some(t)) => {
                self.acting = Acting::Loading { term: t };
                out.push(Command::Load(Load::TakeOver { term: t }));
            }
            (Acting::Yes { term, .. }, None) => {
                self.acting = Acting::No;
                // Orders in flight are the next leader's to resend.
                for book in self.books.values_mut() {
                    book.clear_orders();
                }
                self.recoveries.clear();
                self.round = None;
                out.push(Command::Notice(Notice::SteppedDown { term }));
            }
            (Acting::Loading { .. }, None) => self.acting = Acting::No,
            (Acting::No, None) => {
                let due = self
                    .refresh_asked
                    .is_none_or(|t| now.saturating_since(t) >= STANDBY_REFRESH);
                if due {
                    self.refresh_asked = Some(now);
                    out.push(Command::Load(Load::Refresh));
                }
            }
        }
    }

    pub(super) fn loaded(
        &mut self,
        load: Load,
        snapshot: Snapshot,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        match load {
            Load::TakeOver { term } => {
                if self.acting != (Acting::Loading { term }) || self.term_now(now) != Some(term) {
                    return; // the election moved on while the store was read
                }
                self.take_over(snapshot, now);
                self.acting = Acting::Yes { term, since: None };
                self.round = None;
                let msg = format!("{} leads (term {term})", self.name);
                self.event(out, now, "leader.elected", None, None, msg);
                out.push(Command::Notice(Notice::TookOver { term }));
            }
            Load::Refresh => {
                if self.acting == Acting::No {
                    self.refresh(snapshot, now);
                }
            }
        }
    }

    /// Take over as leader (or start as a single server) from the store's state.
    ///
    /// Every agent's lease is taken as renewed *now*: the previous leader may have renewed it
    /// until its own leadership ended, which was before this term began, so no copy it kept
    /// alive outlives `now + lease`. Agents known only from task records must reconnect
    /// before their lease could have run out, counted from now; until then their work is
    /// respected.
    pub(super) fn take_over(&mut self, mut snapshot: Snapshot, now: Time) {
        let releases = std::mem::take(&mut snapshot.releases);
        let (desired, tasks) = split(snapshot);
        let alloc = allocations(&desired, &tasks);
        // Persisted, perhaps never delivered: sent again when the agent is back.
        let mut pending: FxHashMap<AgentId, Vec<(TaskId, FencingToken)>> = FxHashMap::default();
        for (job, slots) in &tasks {
            for (i, t) in slots.iter().enumerate() {
                if let (Some(a), SlotState::Starting, Ok(index)) =
                    (&t.agent, t.state, u32::try_from(i))
                {
                    pending
                        .entry(a.clone())
                        .or_default()
                        .push((TaskId::new(job.clone(), index), t.epoch));
                }
            }
        }
        self.desired = desired;
        self.observed.tasks = tasks;
        // Rebuilt from the slots' records at the next plan.
        self.observed.daemon_pins.clear();
        let mut unknown = false;
        let mut ids: Vec<&AgentId> = alloc.keys().collect();
        ids.sort();
        for id in ids {
            // An agent this replica has not heard from (as a standby, or before a restart)
            // must reconnect before its lease could have run out, counted from now.
            if self
                .fleet
                .agent(id)
                .is_none_or(|r| r.state() == AgentState::Joining)
            {
                unknown = true;
            }
            if self.fleet.agent(id).is_none() {
                let outs = self.fleet.join(id.clone(), now);
                if self.fleet.agent(id).is_none() {
                    // A newer generation of the name is known: this one's process is gone.
                    debug_assert!(!outs.is_empty());
                    self.fleet.record_superseded(id.clone(), now);
                }
                self.ensure_generation(id, Resources::default(), Some(now));
                if let Some(v) = self.observed.agents.get_mut(id) {
                    let r = self.fleet.agent(id);
                    v.state = r.map_or(AgentState::Joining, |r| r.state());
                    v.death = r.map_or(DeathEvidence::None, |r| r.death_evidence());
                }
                if let Some(r) = self.fleet.agent(id)
                    && r.state().is_terminal()
                    && let Some(book) = self.books.get_mut(id)
                    && book.ended_at.is_none()
                {
                    book.ended_at = Some(now);
                    self.ended.push_back((now, id.clone()));
                }
            }
        }
        for (id, v) in &mut self.observed.agents {
            v.allocated = alloc.get(id).copied().unwrap_or_default();
            v.last_renewal = Some(now);
        }
        self.restart_deadline =
            unknown.then(|| self.cfg.lifecycle.fencing.lease_surely_expired_at(now));
        for (id, book) in &mut self.books {
            book.clear_orders();
            if let Some(p) = pending.remove(id) {
                for (task, epoch) in p {
                    book.assigns.insert(task, (epoch, Time::ZERO));
                }
            }
        }
        self.recoveries.clear();
        self.draining.clear();
        self.start_versions.clear();
        self.load_releases(releases, now, true);
        self.last_refresh = Some(now);
        self.rebuild_index(now);
        self.dirty = true;
        self.endpoints_dirty = true;
    }

    /// A standby's refresh: the desired and observed state as the leader wrote it.
    fn refresh(&mut self, mut snapshot: Snapshot, now: Time) {
        let releases = std::mem::take(&mut snapshot.releases);
        let (desired, tasks) = split(snapshot);
        let alloc = allocations(&desired, &tasks);
        self.desired = desired;
        self.observed.tasks = tasks;
        // Rebuilt from the slots' records at the next plan.
        self.observed.daemon_pins.clear();
        self.load_releases(releases, now, false);
        for (id, v) in &mut self.observed.agents {
            v.allocated = alloc.get(id).copied().unwrap_or_default();
        }
        self.last_refresh = Some(now);
        self.rebuild_index(now);
        self.dirty = true;
        self.endpoints_dirty = true;
    }
}

/// Jobs by name and slots by job from a snapshot.
fn split(snapshot: Snapshot) -> (Desired, FxHashMap<JobName, Vec<TaskView>>) {
    let desired: Desired = snapshot
        .jobs
        .into_iter()
        .map(|j| (j.name.clone(), j))
        .collect();
    let mut tasks: FxHashMap<JobName, Vec<TaskView>> = FxHashMap::default();
    for (task, view) in snapshot.slots {
        let slots = tasks.entry(task.job.clone()).or_default();
        let i = task.index as usize;
        if slots.len() <= i {
            slots.resize_with(i + 1, TaskView::pending);
        }
        slots[i] = view;
    }
    (desired, tasks)
}
