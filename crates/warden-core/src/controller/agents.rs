//! What agents tell the controller: sessions, heartbeats, task reports; and what the fleet's
//! lifecycle decides about them (lease renewals, transitions, probe rounds, alarms).

use crate::fencing::DeathEvidence;
use crate::hash::FxHashSet;
use crate::lifecycle::{AgentEvent, AgentState, Alarm, Output, Transition};
use crate::planner::SlotState;
use crate::recovery::{Outcome, RecoveryRecord};
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobKind, TaskId};

use super::Controller;

/// Why a singleton copy stopped when its agent fenced it.
const FENCED_BY_AGENT: &str = "fenced by its agent (its lease ran out)";
use super::config::RESEND_AFTER;
use super::io::{
    Assignment, Command, Copies, CopyPhase, CopyReport, Event, Heartbeat, Hello, Notice, Order,
    ProbeRound, Refusal, Reload, SessionId, Welcome, Write,
};

impl Controller {
    pub(super) fn session_opened(
        &mut self,
        session: SessionId,
        id: AgentId,
        hello: Hello,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let refuse = |out: &mut Vec<Command>, refusal| {
            out.push(Command::Refuse { session, refusal });
        };
        // Checked again: another session may have opened since the runtime's check.
        if let Some((open, _)) = self.sessions.get(&id.name)
            && open.generation != id.generation
        {
            let msg = format!(
                "agent {} is already connected as generation {}; agent names must be unique",
                id.name, open.generation
            );
            return refuse(out, Refusal::Busy(msg));
        }
        let stale = |outs: &[Output]| {
            outs.iter()
                .any(|o| matches!(o, Output::StaleGeneration { agent } if *agent == id))
        };
        let mut outs = self.fleet.join(id.clone(), now);
        if stale(&outs) {
            if self.term_now(now).is_some() {
                let msg = format!(
                    "generation {} of {} is over; rejoin",
                    id.generation, id.name
                );
                return refuse(out, Refusal::Stale(msg));
            }
            // Only the leader ends a generation: a standby that took this one as ended (a
            // session it saw drop, its own detector) was wrong, and takes it back.
            outs = self.fleet.reinstate(id.clone(), now);
            if stale(&outs) {
                let msg = format!(
                    "this server is a standby and knows a newer generation of {} than {}; the \
                     leader decides",
                    id.name, id.generation
                );
                return refuse(out, Refusal::NotLeader(msg));
            }
        }
        self.sessions.insert(id.name.clone(), (id.clone(), session));
        self.ensure_generation(&id, hello.capacity, None);
        if let Some(v) = self.observed.agents.get_mut(&id) {
            v.config_files = hello.config_files;
            v.reload = hello.reload;
            v.restore_points = hello.restore_points;
        }
        self.fleet.set_reattach_window(&id, hello.reattach_window);
        if let Some(book) = self.books.get_mut(&id) {
            if let Ok(addr) = hello.probe_addr.parse() {
                book.probe_addr = Some(addr);
            }
            book.state_addr = (!hello.state_addr.is_empty()).then(|| hello.state_addr.clone());
            // A new session: its first heartbeat lists the copies again.
            book.listed = None;
        }
        if let Some(view) = self.observed.agents.get_mut(&id) {
            if view.capacity != hello.capacity || view.running != hello.running {
                self.dirty = true;
            }
            view.capacity = hello.capacity;
            view.running = hello.running.clone();
        }
        // The Welcome goes first: the agent expects it before any order.
        let l = &self.cfg.lifecycle;
        out.push(Command::Welcome {
            session,
            agent: id.clone(),
            welcome: Welcome {
                generation: id.generation,
                lease_ttl: l.fencing.lease_ttl,
                heartbeat_interval: l.heartbeat_interval,
                session_deadline: l.fencing.lease_ttl,
                accepts_unchanged: true,
                anomaly: l.anomaly.on_agents.then(|| l.anomaly.clone()),
            },
        });
        // A new session: whatever was sent on the previous one may be lost.
        self.resend_pending(&id, &hello.running, now, true, out);
        let msg = format!("session opened from {}", hello.probe_addr);
        self.event(out, now, "agent.session", Some(&id), None, msg);
        self.handle(outs, now, out);
        out.push(Command::Notice(Notice::Admitted { agent: id }));
    }

    pub(super) fn session_closed(
        &mut self,
        id: &AgentId,
        session: SessionId,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let current = self
            .sessions
            .get(&id.name)
            .is_some_and(|(a, s)| a == id && *s == session);
        if !current {
            return; // a newer session of this agent took over
        }
        self.sessions.remove(&id.name);
        let outs = self.fleet.step(id, AgentEvent::SessionLost, now);
        self.handle(outs, now, out);
    }

    pub(super) fn heartbeat(
        &mut self,
        who: &AgentId,
        beat: Heartbeat,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let mut outs = self
            .fleet
            .step(who, AgentEvent::Heartbeat { seq: beat.seq }, now);
        if let Some(signals) = beat.signals {
            // The agent's own verdicts count only when this server asked agents to judge.
            let event = match beat.judged {
                Some(anomalous) if self.cfg.lifecycle.anomaly.on_agents => {
                    AgentEvent::JudgedSignals { signals, anomalous }
                }
                Some(_) | None => AgentEvent::Signals(signals),
            };
            outs.extend(self.fleet.step(who, event, now));
        }
        let (as_of, listed) = match beat.copies {
            Copies::Listed(c) => (beat.seq, c),
            Copies::Unchanged { since } => {
                let kept = self.books.get_mut(who).and_then(|b| b.listed.take());
                match kept {
                    Some((seq, c)) if seq == since => (seq, c),
                    // Not the list it refers to (that heartbeat never reached this replica):
                    // this heartbeat says nothing about copies.
                    kept => {
                        if let Some(b) = self.books.get_mut(who) {
                            b.listed = kept;
                        }
                        return self.handle(outs, now, out);
                    }
                }
            }
        };
        self.copies_seen(who, &listed, now, out);
        if let Some(b) = self.books.get_mut(who) {
            b.listed = Some((as_of, listed));
        }
        self.handle(outs, now, out);
    }

    /// What a heartbeat says about the agent's copies: every copy it runs.
    fn copies_seen(
        &mut self,
        who: &AgentId,
        listed: &[CopyReport],
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let copies: Vec<(TaskId, FencingToken)> =
            listed.iter().map(|c| (c.task.clone(), c.epoch)).collect();
        for c in listed {
            self.note_endpoint(&c.task, c.epoch, &c.endpoint, c.healthy);
            if !c.in_sync.is_empty() {
                self.note_in_sync(who, c);
            }
            if !c.lagging.is_empty() {
                self.note_lagging(who, c, now, out);
            }
            if c.state_seq > 0 || c.sealed || c.state_fence > 0 {
                self.note_state_seq(c);
            }
            self.note_copy_version(who, c, now, out);
        }
        self.resend_pending(who, &copies, now, false, out);
        // A copy the server saw running here that the agent no longer reports has ended
        // without a report reaching the server — typically fenced by the agent while its
        // session was down (its lease ran out) and the agent came back as the same generation.
        // Without this the slot would look Running forever and never be started again. Only
        // the slots indexed on this generation are looked at.
        let reported = Reported::new(&copies);
        // What this agent listed before: a copy being stopped that it listed and lists no
        // more has stopped; one it never listed may not have started yet (its order still
        // on the way), and is left to the agent's report.
        let listed_before: FxHashSet<(TaskId, FencingToken)> = self
            .observed
            .agents
            .get(who)
            .map(|v| v.running.iter().cloned().collect())
            .unwrap_or_default();
        let gone: Vec<(TaskId, FencingToken, SlotState)> = self
            .books
            .get(who)
            .map(|b| {
                b.slots
                    .iter()
                    .filter_map(|task| {
                        let t = self.slot(task)?;
                        let stopped = t.state == SlotState::Stopping
                            && listed_before.contains(&(task.clone(), t.epoch));
                        ((t.state == SlotState::Running || stopped) && !reported.has(task, t.epoch))
                            .then(|| (task.clone(), t.epoch, t.state))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (task, epoch, state) in gone {
            if state == SlotState::Stopping {
                // A stop was ordered and the agent no longer runs the copy: it is stopped,
                // whether or not the report of it arrived.
                let why = "stopped (no longer listed by its agent)";
                self.task_seen(
                    who,
                    &task,
                    epoch,
                    SlotState::Stopped,
                    false,
                    Some(why),
                    0,
                    now,
                    out,
                );
            } else if self.is_singleton(&task.job) {
                // Only singletons are fenced: most likely this one was, and the report of it
                // was lost (it reached a standby that has taken over since).
                self.copy_fenced(who, &task, epoch, FENCED_BY_AGENT, now, out);
            } else {
                let why = "no longer running on its agent (ended while the session was down)";
                self.task_seen(
                    who,
                    &task,
                    epoch,
                    SlotState::Stopped,
                    false,
                    Some(why),
                    0,
                    now,
                    out,
                );
            }
        }
        if let Some(v) = self.observed.agents.get_mut(who)
            && v.running != copies
        {
            v.running = copies;
            self.dirty = true;
        }
        for c in listed {
            if let Some(state) = c.phase.and_then(CopyPhase::slot_state) {
                let v = c.version;
                self.task_seen(who, &c.task, c.epoch, state, c.healthy, None, v, now, out);
            }
        }
    }

    pub(super) fn task_report(
        &mut self,
        who: &AgentId,
        copy: CopyReport,
        message: &str,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        if let Some((prefix, kind)) = super::TASK_SIGNALS
            .iter()
            .find(|(prefix, _)| message.starts_with(&format!("{prefix}:")))
            && self
                .slot_mut(&copy.task)
                .is_some_and(|s| s.epoch == copy.epoch)
        {
            let detail = &message[prefix.len()..];
            let msg = format!("{}@{} {prefix}{detail}", copy.task, copy.epoch);
            self.event(out, now, kind, Some(who), Some(&copy.task), msg);
        }
        match copy.phase {
            Some(CopyPhase::Fenced) => {
                self.copy_fenced(who, &copy.task, copy.epoch, FENCED_BY_AGENT, now, out);
            }
            None => {}
            Some(phase) => {
                self.note_endpoint(&copy.task, copy.epoch, &copy.endpoint, copy.healthy);
                if message.starts_with(super::RELOAD_FAILED) {
                    self.reload_failed(who, &copy, message, now, out);
                } else {
                    self.note_copy_version(who, &copy, now, out);
                }
                if let Some(state) = phase.slot_state() {
                    let msg = Some(message);
                    self.task_seen(
                        who,
                        &copy.task,
                        copy.epoch,
                        state,
                        copy.healthy,
                        msg,
                        copy.version,
                        now,
                        out,
                    );
                }
            }
        }
    }

    /// A singleton copy its agent fenced: its lease ran out while no leader renewed it (its
    /// session was down, or the control plane was failing over to a new leader). That is no
    /// failure of the task: the slot is marked stopped — no crash count, no backoff — and the
    /// planner starts it again at once. Also for a singleton copy the agent no longer reports
    /// without any report of its end having reached this replica.
    fn copy_fenced(
        &mut self,
        agent: &AgentId,
        task: &TaskId,
        epoch: FencingToken,
        why: &str,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let Some(slot) = self.slot_mut(task) else {
            return;
        };
        if slot.epoch != epoch
            || slot.agent.as_ref() != Some(agent)
            || !matches!(
                slot.state,
                SlotState::Starting | SlotState::Running | SlotState::Stopping
            )
        {
            return;
        }
        let before = slot.state;
        slot.state = SlotState::Stopped;
        slot.home = slot.agent.take().map(|a| a.name);
        let failures = slot.failures;
        self.reindex(task, Some(agent), None);
        self.dirty = true;
        self.endpoints_dirty = true;
        let msg = format!("{task}@{epoch} {} → stopped: {why}", before.as_str());
        self.event(out, now, "task.state", Some(agent), Some(task), msg);
        let write = Write::SlotState {
            task: task.clone(),
            epoch,
            state: SlotState::Stopped,
            failures,
        };
        self.persist(out, now, write);
    }

    /// Record what an agent says about a task copy.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn task_seen(
        &mut self,
        agent: &AgentId,
        task: &TaskId,
        epoch: FencingToken,
        phase: SlotState,
        healthy: bool,
        message: Option<&str>,
        version: u64,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let in_rollout = self.rollouts.contains_key(&task.job);
        let Some(slot) = self.slot_mut(task) else {
            return;
        };
        if slot.epoch != epoch || slot.agent.as_ref() != Some(agent) {
            return; // a stale copy; the planner stops it
        }
        let before = slot.state;
        let next = match (before, phase) {
            (SlotState::Starting, SlotState::Running) => SlotState::Running,
            (SlotState::Stopping, SlotState::Stopped) => SlotState::Stopped,
            (SlotState::Starting | SlotState::Running, SlotState::Failed) => SlotState::Failed,
            (SlotState::Starting | SlotState::Running, SlotState::Stopped) => SlotState::Failed,
            (s, _) => s,
        };
        if next == SlotState::Failed && before != SlotState::Failed {
            slot.failures = slot.failures.saturating_add(1);
            slot.last_failure_at = Some(now);
        }
        if next == SlotState::Running && healthy {
            slot.failures = 0;
        }
        let changed = next != before;
        slot.state = next;
        if next == SlotState::Stopped {
            slot.home = slot.agent.take().map(|a| a.name);
        }
        let failures = slot.failures;
        if next == SlotState::Stopped {
            self.reindex(task, Some(agent), None);
        }
        if changed {
            self.dirty = true;
            self.endpoints_dirty = true;
            let msg = format!(
                "{task}@{epoch} {} → {}{}",
                before.as_str(),
                next.as_str(),
                message.map(|m| format!(": {m}")).unwrap_or_default()
            );
            self.event(out, now, "task.state", Some(agent), Some(task), msg);
            let write = Write::SlotState {
                task: task.clone(),
                epoch,
                state: next,
                failures,
            };
            self.persist(out, now, write);
        }
        if in_rollout {
            self.rollout_copy_seen(task, epoch, phase, next, healthy, message, version, now);
        }
        if next == SlotState::Running
            && let Some(p) = self.recoveries.get_mut(task)
            && p.record.epoch == epoch
        {
            p.record.started(now, p.has_health_check);
            if healthy {
                p.record.healthy(now);
            }
            if p.record.outcome == Outcome::Succeeded {
                let record = p.record.clone();
                self.recoveries.remove(task);
                self.persist_recovery(record, now, out);
            }
        }
    }

    pub(super) fn persist_recovery(
        &mut self,
        record: RecoveryRecord,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        if self.acting_term(now).is_none() {
            return;
        }
        if record.outcome == Outcome::Succeeded {
            let rto = record.rto().map(super::ms).unwrap_or_default();
            let to = record
                .to
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let msg = format!("{} recovered on {to} (RTO {rto} ms)", record.task);
            self.event(
                out,
                now,
                "recovery.succeeded",
                Some(&record.from),
                Some(&record.task),
                msg,
            );
        }
        out.push(Command::Notice(Notice::Recovery(Box::new(record.clone()))));
        out.push(Command::Persist(Write::Recovery(Box::new(record))));
    }

    /// Remember the endpoint an agent reports for a copy (only copies that serve one).
    fn note_endpoint(&mut self, task: &TaskId, epoch: FencingToken, endpoint: &str, healthy: bool) {
        if endpoint.is_empty() {
            return;
        }
        match self.endpoints_seen.get_mut(task) {
            Some(seen) if seen.0 > epoch => {}
            Some(seen) => {
                if seen.0 != epoch || seen.1 != endpoint || seen.2 != healthy {
                    *seen = (epoch, endpoint.to_string(), healthy);
                    self.endpoints_dirty = true;
                }
            }
            None => {
                self.endpoints_seen
                    .insert(task.clone(), (epoch, endpoint.to_string(), healthy));
                self.endpoints_dirty = true;
            }
        }
    }

    /// Carry out the fleet's outputs.
    pub(super) fn handle(&mut self, outs: Vec<Output>, now: Time, out: &mut Vec<Command>) {
        for o in outs {
            match o {
                Output::RenewLease { agent, seq } => {
                    // Only a leader renews leases; a standby's ack (TTL 0) only tells the
                    // agent that the session is alive.
                    let lease_ttl = if self.term_now(now).is_some() {
                        self.cfg.lifecycle.fencing.lease_ttl
                    } else {
                        std::time::Duration::ZERO
                    };
                    if self
                        .sessions
                        .get(&agent.name)
                        .is_some_and(|(a, _)| *a == agent)
                    {
                        out.push(Command::Send {
                            to: agent.clone(),
                            order: Order::Ack { seq, lease_ttl },
                        });
                    }
                    if let Some(v) = self.observed.agents.get_mut(&agent) {
                        v.last_renewal = Some(now);
                    }
                }
                Output::Transition(t) => self.transition(t, now, out),
                Output::ReleaseSingletons { agent, why } => {
                    // Only the leader moves work; a standby's fleet is an opinion.
                    if self.term_now(now).is_none() {
                        continue;
                    }
                    // Repeated while the hold lasts: only singletons still placed here move.
                    let singletons: Vec<(TaskId, FencingToken)> = self
                        .books
                        .get(&agent)
                        .map(|b| {
                            b.slots
                                .iter()
                                .filter(|t| self.is_singleton(&t.job))
                                .filter_map(|t| {
                                    let s = self.slot(t)?;
                                    (s.agent.as_ref() == Some(&agent)
                                        && matches!(
                                            s.state,
                                            SlotState::Starting
                                                | SlotState::Running
                                                | SlotState::Stopping
                                        ))
                                    .then(|| (t.clone(), s.epoch))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if singletons.is_empty() {
                        continue;
                    }
                    let msg = format!(
                        "agent {agent} is held while it restarts; its singletons move: {why}"
                    );
                    self.event(
                        out,
                        now,
                        "agent.singletons_released",
                        Some(&agent),
                        None,
                        msg,
                    );
                    let detected = self
                        .books
                        .get(&agent)
                        .and_then(|b| b.suspect_since)
                        .unwrap_or(now);
                    let last_hb = self.fleet.agent(&agent).and_then(|r| r.last_heartbeat());
                    for (task, epoch) in singletons {
                        let running = self.slot(&task).is_some_and(|s| {
                            s.agent.as_ref() == Some(&agent)
                                && matches!(s.state, SlotState::Starting | SlotState::Running)
                        });
                        self.copy_fenced(&agent, &task, epoch, why, now, out);
                        if !running {
                            continue;
                        }
                        // A recovery like any other: its replacement (the planner's next
                        // start of the slot) completes the record.
                        let has_health_check = self
                            .desired
                            .get(&task.job)
                            .is_some_and(|j| j.health.is_some());
                        let record = RecoveryRecord {
                            op: crate::planner::OperationId::task(&task, epoch, "release"),
                            task: task.clone(),
                            epoch,
                            from: agent.clone(),
                            to: None,
                            last_heartbeat_at: last_hb,
                            detected_at: detected,
                            declared_failed_at: now,
                            replacement_ordered_at: now,
                            replacement_started_at: None,
                            replacement_healthy_at: None,
                            outcome: Outcome::InProgress,
                            cause: crate::lifecycle::Cause::ProcessGone,
                        };
                        let pending = super::PendingRecovery {
                            record,
                            has_health_check,
                        };
                        if let Some(old) = self.recoveries.insert(task.clone(), pending) {
                            let mut old = old.record;
                            old.outcome = Outcome::Superseded;
                            self.persist_recovery(old, now, out);
                        }
                    }
                }
                Output::Probe { agent, round } => {
                    // The session may be gone; where it listened is remembered.
                    let target = self.books.get(&agent).and_then(|b| b.probe_addr);
                    // The first `indirect_probes` Healthy agents with a session, by name (a
                    // stable choice), kept in a small sorted list: no sort of the fleet.
                    let k = self.cfg.indirect_probes;
                    let mut helpers: Vec<&AgentId> = Vec::with_capacity(k + 1);
                    for (id, _) in self.sessions.values() {
                        if id.name == agent.name
                            || helpers.len() == k && helpers.last().is_some_and(|l| id >= *l)
                        {
                            continue;
                        }
                        if self
                            .fleet
                            .agent(id)
                            .is_some_and(|r| r.state() == AgentState::Healthy)
                        {
                            let at = helpers.partition_point(|h| *h < id);
                            helpers.insert(at, id);
                            helpers.truncate(k);
                        }
                    }
                    let helpers = helpers.into_iter().cloned().collect();
                    out.push(Command::Probe(ProbeRound {
                        agent,
                        round,
                        target,
                        helpers,
                    }));
                }
                Output::Alarm(a) => {
                    self.dirty = true;
                    let (kind, msg) = match &a {
                        Alarm::BrakeEngaged {
                            suspects, fleet, ..
                        } => (
                            "alarm.brake_engaged",
                            format!(
                                "mass-failure brake engaged: {suspects} of {fleet} agents \
                                 suspect; no agent will be declared failed"
                            ),
                        ),
                        Alarm::BrakeReleased { .. } => (
                            "alarm.brake_released",
                            "mass-failure brake released".to_string(),
                        ),
                    };
                    out.push(Command::Notice(Notice::Alarm(msg.clone())));
                    self.event(out, now, kind, None, None, msg);
                }
                Output::StaleGeneration { agent } => {
                    // A standby's verdicts are its own opinion until it leads.
                    if self.term_now(now).is_none() {
                        continue;
                    }
                    if self
                        .sessions
                        .get(&agent.name)
                        .is_some_and(|(a, _)| *a == agent)
                    {
                        let reason = format!("generation {} is over", agent.generation);
                        out.push(Command::Send {
                            to: agent,
                            order: Order::Rejoin { reason },
                        });
                    }
                }
            }
        }
    }

    fn transition(&mut self, t: Transition, now: Time, out: &mut Vec<Command>) {
        let record = self.fleet.agent(&t.agent);
        let death = record.map_or(DeathEvidence::None, |r| r.death_evidence());
        let detection = match t.to {
            AgentState::Failed => record
                .and_then(|r| r.last_heartbeat())
                .map(|last| t.at.saturating_since(last)),
            _ => None,
        };
        if let Some(v) = self.observed.agents.get_mut(&t.agent) {
            v.state = t.to;
            v.death = death;
        }
        if let Some(book) = self.books.get_mut(&t.agent) {
            match t.to {
                AgentState::Suspect => book.suspect_since = Some(t.at),
                AgentState::Failed => {
                    // Its orders die with it: a new generation starts from a clean slate.
                    book.clear_orders();
                    book.failed = Some((t.at, t.cause.clone()));
                    book.suspect_since.get_or_insert(t.at);
                }
                AgentState::Healthy | AgentState::Degraded | AgentState::Quarantined => {
                    book.suspect_since = None;
                }
                AgentState::Joining | AgentState::Left => {}
            }
            if t.to.is_terminal() && book.ended_at.is_none() {
                book.ended_at = Some(t.at);
                self.ended.push_back((t.at, t.agent.clone()));
            }
        }
        if t.to.is_terminal() {
            self.drop_view_if_idle(&t.agent);
        }
        if t.to == AgentState::Healthy
            && let Some(v) = self.observed.agents.get_mut(&t.agent)
        {
            // A quarantine that ended releases its cordon.
            v.cordoned = false;
        }
        self.dirty = true;
        self.endpoints_dirty = true;
        if self.acting_term(now).is_some() {
            out.push(Command::AppendEvent(Event {
                at: now,
                kind: "agent.transition",
                agent: Some(t.agent.clone()),
                task: None,
                message: format!("{} → {}: {}", t.from, t.to, t.cause),
                transition: Some((t.from, t.to, t.cause.clone())),
            }));
        }
        out.push(Command::Notice(Notice::Transition {
            transition: t,
            detection,
        }));
    }

    /// Send again the orders `agent` has not acted on: assignments it does not report running
    /// (after a second, or at once on a new session) and stops of copies it still reports
    /// (after the stop grace plus a second, or at once on a new session). Orders are
    /// idempotent on the agent (same epoch), so a duplicate is harmless.
    pub(super) fn resend_pending(
        &mut self,
        agent: &AgentId,
        running: &[(TaskId, FencingToken)],
        now: Time,
        new_session: bool,
        out: &mut Vec<Command>,
    ) {
        if self.acting_term(now).is_none() {
            return; // only the leader gives orders
        }
        let reported = Reported::new(running);
        let Some(book) = self.books.get(agent) else {
            return;
        };
        let mut resend = Vec::new();
        let mut done = Vec::new();
        for (task, (epoch, at)) in &book.assigns {
            let still_ours = self.slot(task).is_some_and(|t| {
                t.epoch == *epoch
                    && t.agent.as_ref() == Some(agent)
                    && t.state == SlotState::Starting
            });
            if !still_ours || reported.has(task, *epoch) {
                done.push(task.clone());
            } else if new_session || now.saturating_since(*at) >= RESEND_AFTER {
                resend.push((task.clone(), *epoch));
            }
        }
        if let Some(book) = self.books.get_mut(agent) {
            for t in done {
                book.assigns.remove(&t);
            }
        }
        for (task, epoch) in resend {
            self.send_assign(&task, epoch, agent, now, out);
        }
        let connected = self
            .sessions
            .get(&agent.name)
            .is_some_and(|(a, _)| a == agent);
        if !connected {
            return;
        }
        let grace = self.cfg.stop_grace + RESEND_AFTER;
        let stop_grace = self.cfg.stop_grace;
        if let Some(book) = self.books.get_mut(agent) {
            book.stops
                .retain(|(task, epoch), _| reported.has(task, *epoch));
            for ((task, epoch), at) in &mut book.stops {
                if new_session || now.saturating_since(*at) >= grace {
                    *at = now;
                    out.push(Command::Send {
                        to: agent.clone(),
                        order: Order::Stop {
                            task: task.clone(),
                            epoch: *epoch,
                            grace: stop_grace,
                        },
                    });
                }
            }
        }
    }

    /// The job version whose configuration a copy runs, as its agent reports it: a reload
    /// done is no longer in flight; one not done yet (lost with a session, or ordered by a
    /// leader before this one) is sent again after [`RESEND_AFTER`].
    fn note_copy_version(
        &mut self,
        who: &AgentId,
        c: &CopyReport,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        if c.version == 0 {
            return;
        }
        if let Some(b) = self.books.get_mut(who)
            && b.versions.get(&c.task) != Some(&(c.epoch, c.version))
        {
            b.versions.insert(c.task.clone(), (c.epoch, c.version));
        }
        let Some(slot) = self.slot(&c.task) else {
            return;
        };
        if slot.epoch != c.epoch || slot.agent.as_ref() != Some(who) || slot.version == 0 {
            return;
        }
        let (target, running) = (slot.version, slot.state == SlotState::Running);
        if c.version == target {
            if let Some(b) = self.books.get_mut(who) {
                b.reloads.remove(&c.task);
            }
            return;
        }
        if !running || self.acting_term(now).is_none() {
            return;
        }
        let due = self.books.get(who).is_some_and(|b| {
            b.reloads.get(&c.task).is_none_or(|(e, v, at)| {
                *e != c.epoch
                    || *v != target
                    || at.is_some_and(|at| now.saturating_since(at) >= RESEND_AFTER)
            })
        });
        if due {
            self.send_reload(&c.task, c.epoch, who, now, out);
        }
    }

    /// The agent could not reload a copy: not sent again (a rollout counts the copy as bad and
    /// reverts; without one an operator is told).
    fn reload_failed(
        &mut self,
        who: &AgentId,
        c: &CopyReport,
        message: &str,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let Some(b) = self.books.get_mut(who) else {
            return;
        };
        match b.reloads.get_mut(&c.task) {
            Some((e, v, at)) if *e == c.epoch && *v == c.version && at.is_some() => *at = None,
            _ => return, // already known, or another order's
        }
        let msg = format!(
            "{}@{} was not reloaded to version {}: {message}",
            c.task, c.epoch, c.version
        );
        self.event(
            out,
            now,
            "task.reload_failed",
            Some(who),
            Some(&c.task),
            msg.clone(),
        );
        if !self.rollouts.contains_key(&c.task.job) {
            out.push(Command::Notice(Notice::Alarm(format!(
                "{msg}; the copy runs its earlier files: submit a fix or revert the job"
            ))));
        }
    }

    /// Whether `agent` (this generation) has an open session here.
    fn has_session(&self, agent: &AgentId) -> bool {
        self.sessions
            .get(&agent.name)
            .is_some_and(|(a, _)| a == agent)
    }

    /// Order `agent` to move the copy of `task` at `epoch` to its slot's version in place:
    /// rewrite its configuration files, signal it.
    pub(super) fn send_reload(
        &mut self,
        task: &TaskId,
        epoch: FencingToken,
        agent: &AgentId,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let version = self.slot(task).map_or(0, |t| t.version);
        if let Some(book) = self.books.get_mut(agent) {
            book.reloads
                .insert(task.clone(), (epoch, version, Some(now)));
        }
        let Some(spec) = self.version_spec(&task.job, version) else {
            return;
        };
        let Some(signal) = spec.update().reload_signal else {
            return;
        };
        if !self.has_session(agent) {
            return;
        }
        out.push(Command::Send {
            to: agent.clone(),
            order: Order::Reload(Box::new(Reload {
                task: task.clone(),
                epoch,
                version,
                signal,
                config: spec.config.clone(),
            })),
        });
    }

    pub(super) fn send_assign(
        &mut self,
        task: &TaskId,
        epoch: FencingToken,
        agent: &AgentId,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        if let Some(book) = self.books.get_mut(agent) {
            book.assigns.insert(task.clone(), (epoch, now));
        }
        let version = self.slot(task).map_or(0, |t| t.version);
        let Some(spec) = self.version_spec(&task.job, version) else {
            return;
        };
        if !self.has_session(agent) {
            return;
        }
        out.push(Command::Send {
            to: agent.clone(),
            order: Order::Assign(Box::new(Assignment {
                task: task.clone(),
                epoch,
                singleton: spec.kind == JobKind::Singleton,
                command: spec.command.clone(),
                args: spec.args.clone(),
                env: spec.env.clone(),
                resources: spec.resources,
                health: spec.health.clone(),
                service: spec.service.as_ref().map(|s| s.port),
                state: spec.state,
                replica: self.replica_order(task),
                config: spec.config.clone(),
                version,
                data_epoch: spec.data_epoch,
            })),
        });
    }
}

/// The copies a heartbeat reports, looked up in constant time when there are many.
struct Reported<'a> {
    list: &'a [(TaskId, FencingToken)],
    set: Option<FxHashSet<(&'a TaskId, FencingToken)>>,
}

impl<'a> Reported<'a> {
    fn new(list: &'a [(TaskId, FencingToken)]) -> Self {
        let set = (list.len() > 16).then(|| list.iter().map(|(t, e)| (t, *e)).collect());
        Reported { list, set }
    }

    fn has(&self, task: &TaskId, epoch: FencingToken) -> bool {
        match &self.set {
            Some(s) => s.contains(&(task, epoch)),
            None => self.list.iter().any(|(t, e)| t == task && *e == epoch),
        }
    }
}
