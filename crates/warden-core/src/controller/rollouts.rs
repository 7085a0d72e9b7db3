//! Releases and rollouts: numbering each change of a job, storing it with the job's history,
//! and replacing running copies with the new version under [`crate::rollout`]'s checks,
//! reverting on failure.
//!
//! Every write of a job's releases goes through the ordered store writer as
//! [`Write::Release`], a submission's included: a job's releases change only when such a write
//! is applied, in the order they were asked for, so a rollout's phase written by the controller
//! can never overwrite a newer submission. While one is out for a job, the job takes no other
//! submission and its rollout waits.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::hash::{FxHashMap, FxHashSet};
use crate::judge::{self, Group, Judgement, TrafficSample};
use crate::planner::{Action, OperationId, SlotState, StopReason};
use crate::release::{self, DEFAULT_KEEP, JobReleases, Rollout, RolloutPhase};
use crate::rollout::{self, Run, SlotFacts, Verdict};
use crate::time::Time;
use crate::types::{AgentId, FencingToken, JobName, JobSpec, TaskId};

use super::io::{Command, Notice, Refusal, SubmitOutcome, Write, WriteId, WriteOutcome};
use super::{Controller, ms};

/// How an agent's report of a failed health check begins (see `warden_agent::runtime`).
const HEALTH_FAILING: &str = "health check failing";
/// How an agent's report of a passing health check begins.
const HEALTH_PASSING: &str = "health check passing";

/// A rollout under way.
#[derive(Clone, Debug)]
pub(super) struct RolloutRun {
    from: u64,
    to: u64,
    run: Run,
    started: Time,
    started_unix_ms: u64,
    /// Slots chosen for replacement whose new copy is not ordered yet.
    replacing: FxHashSet<u32>,
    /// What was seen of each slot's copy of the new version.
    copies: FxHashMap<u32, NewCopy>,
    /// Requests served in the judge's window: (when reported, by a canary, what).
    traffic: VecDeque<(Time, bool, Group)>,
    /// The judge's last judgement.
    judgement: Option<Judgement>,
}

impl RolloutRun {
    /// `now` as ms since the Unix epoch, by the rollout's own start.
    fn unix_at(&self, now: Time) -> u64 {
        self.started_unix_ms + u64::try_from(ms(now.saturating_since(self.started))).unwrap_or(0)
    }
}

#[derive(Clone, Debug, Default)]
struct NewCopy {
    epoch: FencingToken,
    ordered_at: Option<Time>,
    healthy_since: Option<Time>,
    seen_running: bool,
    /// For a job with a health check: a check of this copy passed (until then the agent's
    /// `healthy` only means "not failed yet").
    check_passed: bool,
    bad: Option<String>,
}

/// A release write asked for and not yet applied.
#[derive(Clone, Debug)]
pub(super) struct PendingRelease {
    id: WriteId,
    spec: Option<JobSpec>,
    releases: JobReleases,
    outcome: SubmitOutcome,
    /// The write failed: ask again at the next round (the controller's own writes only).
    retry: bool,
    /// An operator's submission or revert: a failure is answered, not retried.
    operator: bool,
    /// Put the releases in force once written (a new version); a phase change is in force
    /// already.
    install: bool,
}

/// A rollout as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    /// The job.
    pub job: JobName,
    /// The version copies ran before.
    pub from: u64,
    /// The version rolled out.
    pub to: u64,
    /// A revert (no canary, no checks, every copy at once).
    pub revert: bool,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// Why it ended as it did, or why it waits.
    pub reason: String,
    /// When it began, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Copies the job wants.
    pub copies: u32,
    /// Copies started from the version rolled out.
    pub updated: u32,
    /// Of those, copies running healthy.
    pub healthy: u32,
    /// Copies being replaced.
    pub replacing: u32,
    /// The statistical judge's last judgement, with its evidence (absent: no
    /// `[update.analysis]`, or not judged yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judgement: Option<Judgement>,
    /// Consecutive passing judgements.
    #[serde(default)]
    pub passes: u32,
    /// Consecutive failing judgements.
    #[serde(default)]
    pub failures: u32,
    /// With `[update] traffic_steps`, in the canary phase: the share of the traffic (percent)
    /// the canaries should get now, through the load balancer's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_share: Option<u8>,
    /// The copies that are canaries (`job/index`), when `canary_share` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_tasks: Vec<String>,
    /// During a rollout to a version that declares a new `[service] api_version`: who gets
    /// that API version's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<Cohort>,
}

/// Header-routed cohorts during a rollout that changes a service's `api_version`: requests
/// asking for the new API version go to the new version's copies alone; the others stay on
/// the old copies while the canaries are judged (`exclusive`), and go to every copy after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cohort {
    /// The new API version.
    pub api_version: String,
    /// The copies of the new version (`job/index`).
    pub tasks: Vec<String>,
    /// The new version's copies get no other request (the canary phase).
    pub exclusive: bool,
}

/// Whether a copy started from `version` (0: before versions, taken as the oldest kept) runs
/// what `rel`'s newest release asks for.
fn slot_current(rel: &JobReleases, version: u64) -> bool {
    let v = if version == 0 {
        rel.releases.first().map_or(0, |r| r.version)
    } else {
        version
    };
    rel.is_current(v)
}

impl Controller {
    /// A job's versions and rollout, as stored.
    pub fn releases(&self, job: &JobName) -> Option<&JobReleases> {
        self.releases.get(job)
    }

    /// A job's rollout (under way, or the last one) with its copies counted.
    pub fn rollout_view(&self, job: &JobName) -> Option<RolloutView> {
        let rel = self.releases.get(job)?;
        let rollout = rel.rollout.as_ref()?;
        let run = self.rollouts.get(job);
        let spec = self.desired.get(job);
        let wanted: Vec<usize> = spec.map(|s| self.wanted_slots(s)).unwrap_or_default();
        let want = u32::try_from(wanted.len()).unwrap_or(u32::MAX);
        let slots = self.observed.tasks.get(job);
        let (mut updated, mut healthy) = (0u32, 0u32);
        let canary_share = run.and_then(|r| r.run.canary_share(&spec?.update()));
        let mut canary_tasks = Vec::new();
        let api = |v: u64| {
            rel.get(v)
                .and_then(|r| r.spec.service.as_ref())
                .and_then(|s| s.api_version.clone())
        };
        let mut cohort = run
            .filter(|r| !r.run.revert)
            .and_then(|_| api(rollout.to).filter(|to| api(rollout.from).as_ref() != Some(to)))
            .map(|api_version| Cohort {
                api_version,
                tasks: Vec::new(),
                exclusive: matches!(
                    run.map(|r| r.run.phase),
                    Some(RolloutPhase::Canary | RolloutPhase::AwaitingPromotion)
                ),
            });
        for &i in &wanted {
            let Some(t) = slots.and_then(|s| s.get(i)) else {
                continue;
            };
            if t.agent.is_none() || !slot_current(rel, t.version) {
                continue;
            }
            if canary_share.is_some() {
                canary_tasks.push(format!("{job}/{i}"));
            }
            if let Some(c) = cohort.as_mut() {
                c.tasks.push(format!("{job}/{i}"));
            }
            updated += 1;
            let seen_healthy = run
                .and_then(|r| r.copies.get(&u32::try_from(i).unwrap_or(u32::MAX)))
                .is_some_and(|c| c.epoch == t.epoch && c.healthy_since.is_some());
            if t.state == SlotState::Running && (seen_healthy || run.is_none()) {
                healthy += 1;
            }
        }
        Some(RolloutView {
            job: job.clone(),
            from: rollout.from,
            to: rollout.to,
            revert: rollout.revert,
            phase: run.map_or(rollout.phase, |r| r.run.phase),
            reason: rollout.reason.clone(),
            started_unix_ms: rollout.started_unix_ms,
            copies: want,
            updated,
            healthy,
            replacing: run.map_or(0, |r| u32::try_from(r.replacing.len()).unwrap_or(u32::MAX)),
            judgement: run.and_then(|r| r.judgement.clone()),
            passes: run.map_or(0, |r| r.run.passes),
            failures: run.map_or(0, |r| r.run.failures),
            canary_share,
            canary_tasks,
            cohort,
        })
    }

    /// What submitting `spec` would do: the number its version would get, how many running
    /// copies it would change (0 when only the copy count or `[update]` changes), and how many
    /// of those in place, by a reload (`[update] reload_signal`), rather than by a new copy.
    pub fn preview_submit(&self, spec: &JobSpec) -> (u64, u32, u32) {
        let prev = self.releases.get(&spec.name);
        let next = JobReleases::with_release(prev, spec.clone(), 0, String::new(), DEFAULT_KEEP);
        let version = next.current().map_or(1, |r| r.version);
        let Some(prev) = prev.filter(|_| spec.standbys() == 0) else {
            return (version, 0, 0);
        };
        let want = self.slot_count(spec);
        let (mut changes, mut reloads) = (0u32, 0u32);
        for t in self
            .observed
            .tasks
            .get(&spec.name)
            .into_iter()
            .flatten()
            .take(want)
            .filter(|t| t.agent.is_some() && !slot_current(&next, t.version))
        {
            changes += 1;
            let reloadable = t.state == SlotState::Running
                && t.agent
                    .as_ref()
                    .and_then(|a| self.observed.agents.get(a))
                    .is_some_and(|v| v.reload)
                && prev
                    .get(t.version)
                    .and_then(|r| crate::release::reload_only(&r.spec, spec))
                    .is_some();
            if reloadable {
                reloads += 1;
            }
        }
        (version, changes, reloads)
    }

    /// Refuse a change of `job` while another is being stored, or (unless `revert`) while it
    /// rolls out.
    pub(super) fn check_release_free(&self, job: &JobName, revert: bool) -> Result<(), Refusal> {
        if self.new_version_pending(job) {
            return Err(Refusal::Busy(format!(
                "a change of job {job} is being stored; retry in a moment"
            )));
        }
        // The live rollout, not the stored record: a deleted job's rollout ends with it. A
        // revert under way may be replaced by a fix (it could be stuck: no room, or the old
        // version failing too).
        if !revert
            && self.rollouts.contains_key(job)
            && let Some(r) = self.releases.get(job).and_then(JobReleases::active_rollout)
            && !r.revert
        {
            return Err(Refusal::Busy(format!(
                "job {job} is rolling out version {} (phase {}); wait for it to end, promote it \
                 (`warden rollout promote {job}`) or go back (`warden job revert {job}`)",
                r.to,
                r.phase.as_str()
            )));
        }
        Ok(())
    }

    /// Check a revert of `job` to `version` (default: the newest earlier version that runs
    /// something else) and return the spec to submit, with `revert = true`.
    pub fn check_revert(
        &self,
        job: &str,
        version: Option<u64>,
        now: Time,
    ) -> Result<(u64, JobSpec), Refusal> {
        self.writable(now)?;
        let name = JobName::new(job);
        if !self.desired.contains_key(&name) {
            return Err(Refusal::NotFound(format!("no job named {job:?}")));
        }
        self.check_release_free(&name, true)?;
        let Some(rel) = self.releases.get(&name) else {
            return Err(Refusal::NotFound(format!(
                "job {job} has no stored versions to go back to"
            )));
        };
        let current = rel.current().map_or(0, |r| r.version);
        let target = match version {
            Some(v) => rel.get(v).ok_or_else(|| {
                let kept: Vec<String> =
                    rel.releases.iter().map(|r| r.version.to_string()).collect();
                Refusal::NotFound(format!(
                    "job {job} has no version {v} (kept: {})",
                    kept.join(", ")
                ))
            })?,
            None => rel
                .releases
                .iter()
                .rev()
                .find(|r| r.version != current && !rel.is_current(r.version))
                .ok_or_else(|| {
                    Refusal::Invalid(format!(
                        "job {job} has no earlier version that runs something else; name one"
                    ))
                })?,
        };
        if target.version == current {
            return Err(Refusal::Invalid(format!(
                "version {current} is job {job}'s current version already"
            )));
        }
        if let Some(why) = self.data_epoch_refusal(&name, &target.spec, Some(target.version)) {
            return Err(Refusal::Invalid(why));
        }
        Ok((target.version, target.spec.clone()))
    }

    /// Why `spec` (version `version` of `job`, when it is one) must not replace the job's
    /// current version: it reads an older data epoch than the current version declared, so
    /// it could meet data it cannot read. `None` when it may.
    pub(super) fn data_epoch_refusal(
        &self,
        job: &JobName,
        spec: &JobSpec,
        version: Option<u64>,
    ) -> Option<String> {
        let current = self.releases.get(job)?.current()?;
        let (had, wants) = (current.spec.data_epoch, spec.data_epoch);
        if wants >= had || self.restore_point_for(job, spec).is_some() {
            return None;
        }
        let what = version.map_or_else(|| "this spec".to_string(), |v| format!("version {v}"));
        let points = if release::restorable(&current.spec) && release::restorable(spec) {
            format!(
                " (no restore point of data epoch {wants} or before is left by the kept \
                 versions, or the agent holding the state is not known or of a release that \
                 keeps none)"
            )
        } else {
            String::new()
        };
        Some(format!(
            "{what} of {job} reads data epoch {wants}, but version {} declared data epoch {had}: \
             its copies may have written data that {what} cannot read{points}. Roll forward \
             with a fix; or restore the data from before epoch {had}, then submit the spec \
             with data_epoch = {had} to declare the data readable by it",
            current.version
        ))
    }

    /// The restore point a change of `job` to `spec` would put back: `(data epoch, the
    /// version that took it)`, when `spec` reads an older data epoch than the current
    /// version, both keep their data in a single-replica state, the agent holding it is known
    /// and keeps restore points, and by the kept versions it holds one `spec` can read (the
    /// newest such).
    pub(super) fn restore_point_for(&self, job: &JobName, spec: &JobSpec) -> Option<(u32, u64)> {
        let rel = self.releases.get(job)?;
        let current = rel.current()?;
        if spec.data_epoch >= current.spec.data_epoch
            || !release::restorable(&current.spec)
            || !release::restorable(spec)
        {
            return None;
        }
        // The agent holding the state must be known (the copy runs there, or was stopped
        // there) and put restore points back: one of an older release would start the
        // version on data it cannot read.
        let holder = self
            .observed
            .tasks
            .get(job)
            .and_then(|s| s.first())
            .and_then(|t| t.agent.as_ref().map(|a| a.name.clone()).or(t.home.clone()))?;
        let keeps = self
            .observed
            .agents
            .iter()
            .filter(|(id, _)| id.name == holder)
            .max_by_key(|(id, _)| id.generation)
            .is_some_and(|(_, v)| v.restore_points);
        if !keeps {
            return None;
        }
        release::expected_points(&rel.releases)
            .into_iter()
            .filter(|&(e, _)| e <= spec.data_epoch)
            .max_by_key(|&(e, v)| (e, v))
    }

    /// Say, as an event, that a change of `job` to `spec` (version `to`) goes back to a
    /// restore point of its data.
    fn note_restore(
        &mut self,
        job: &JobName,
        spec: &JobSpec,
        to: u64,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let Some((point, took)) = self.restore_point_for(job, spec) else {
            return;
        };
        let had = self
            .releases
            .get(job)
            .and_then(|r| r.current())
            .map_or(0, |r| r.spec.data_epoch);
        let msg = format!(
            "version {to} of {job} reads data epoch {}: its agent puts the state's restore point \
             of data epoch {point} (taken before version {took}) back before the copy starts; \
             the data written under data epoch {had} is set aside on that agent, not deleted",
            spec.data_epoch
        );
        self.event(out, now, "release.restore", None, None, msg);
    }

    /// Check a promotion of `job`'s rollout past its canaries.
    pub fn check_promote_rollout(&self, job: &str, now: Time) -> Result<(), Refusal> {
        self.writable(now)?;
        let name = JobName::new(job);
        match self.rollouts.get(&name) {
            None => Err(Refusal::NotFound(format!(
                "job {job} has no rollout under way"
            ))),
            Some(r) if r.run.revert => Err(Refusal::Invalid(format!(
                "job {job} is reverting; a revert has no canaries"
            ))),
            Some(r) if r.run.phase == RolloutPhase::Rolling => Err(Refusal::Invalid(format!(
                "job {job}'s rollout is past its canaries already"
            ))),
            Some(_) => Ok(()),
        }
    }

    pub(super) fn promote_rollout(&mut self, job: &JobName, now: Time, out: &mut Vec<Command>) {
        if let Some(r) = self.rollouts.get_mut(job) {
            r.run.promoted = true;
            let (msg, phase) = (
                format!("rollout of {job} version {} promoted by an operator", r.to),
                r.run.phase,
            );
            self.dirty = true;
            self.event(out, now, "rollout.promote", None, None, msg);
            // Stored, so that a new leader does not wait for a second promotion.
            if let Some(rollout) = self.releases.get_mut(job).and_then(|r| r.rollout.as_mut()) {
                rollout.promoted = true;
            }
            let reason = self
                .releases
                .get(job)
                .and_then(|r| r.rollout.as_ref())
                .map(|r| r.reason.clone())
                .unwrap_or_default();
            self.persist_rollout(job, phase, reason, None, out);
        }
    }

    /// A submission (or revert) checked by the API: number it and ask to store it.
    pub(super) fn submit(
        &mut self,
        spec: JobSpec,
        unix_ms: u64,
        cause: String,
        revert: bool,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        // A phase change still being written may be overtaken: this write, built from the
        // same in-memory record, comes after it in the writer's order and carries it.
        if self.acting_term(now).is_none() || self.new_version_pending(&spec.name) {
            return;
        }
        let job = spec.name.clone();
        let old = self.desired.get(&job);
        let outcome = match old {
            Some(_) => SubmitOutcome::Updated,
            None => SubmitOutcome::Created,
        };
        // A job stored before versions existed: its spec becomes the first version.
        let prev = self.releases.get(&job).cloned().or_else(|| {
            old.map(|o| {
                JobReleases::with_release(
                    None,
                    o.clone(),
                    unix_ms,
                    "stored before versions".into(),
                    DEFAULT_KEEP,
                )
            })
        });
        let from = prev.as_ref().and_then(|p| p.current()).map(|r| r.version);
        let mut releases =
            JobReleases::with_release(prev.as_ref(), spec.clone(), unix_ms, cause, DEFAULT_KEEP);
        let to = releases.current().map_or(0, |r| r.version);
        self.note_restore(&job, &spec, to, now, out);
        let want = self.slot_count(&spec);
        let stale = self.observed.tasks.get(&job).is_some_and(|slots| {
            slots
                .iter()
                .take(want)
                .any(|t| t.agent.is_some() && !slot_current(&releases, t.version))
        });
        if let Some(r) = releases.rollout.as_mut()
            && r.phase.is_active()
        {
            r.phase = RolloutPhase::Superseded;
            r.reason = format!("superseded by version {to}");
        }
        match from {
            Some(from) if stale && spec.standbys() == 0 => {
                let run = Run::new(&spec.update(), revert, now);
                releases.rollout = Some(Rollout {
                    promoted: false,
                    from,
                    to,
                    revert,
                    phase: run.phase,
                    started_unix_ms: unix_ms,
                    ended_unix_ms: None,
                    reason: String::new(),
                });
            }
            Some(_) if stale => {
                let msg = format!(
                    "job {job} version {to}: copies of a job with replicated state are not \
                     rolled out; each takes the new version when it is next started"
                );
                self.event(out, now, "rollout.skipped", None, None, msg);
            }
            _ => {}
        }
        let pending = PendingRelease {
            id: WriteId(0),
            spec: Some(spec),
            releases,
            outcome,
            retry: false,
            operator: true,
            install: true,
        };
        self.ask_release(job, pending, out);
    }

    /// Ask for a release write; the job's rollout waits until it is back.
    fn ask_release(&mut self, job: JobName, mut p: PendingRelease, out: &mut Vec<Command>) {
        p.id = self.next_write_id();
        p.retry = false;
        out.push(Command::Persist(Write::Release {
            id: p.id,
            spec: p.spec.clone().map(Box::new),
            releases: Box::new(p.releases.clone()),
        }));
        self.pending_releases.insert(job, p);
    }

    /// A release write ended; `false` when `write` is not one.
    pub(super) fn release_persisted(
        &mut self,
        write: WriteId,
        outcome: &WriteOutcome,
        now: Time,
        out: &mut Vec<Command>,
    ) -> bool {
        let Some(job) = self
            .pending_releases
            .iter()
            .find(|(_, p)| p.id == write)
            .map(|(j, _)| j.clone())
        else {
            return false;
        };
        if !matches!(outcome, WriteOutcome::Applied) {
            let operator = self.pending_releases.get(&job).is_some_and(|p| p.operator);
            if operator {
                // The operator is told; nothing of it is in force.
                self.pending_releases.remove(&job);
                self.dirty = true;
                return true;
            }
            if let Some(p) = self.pending_releases.get_mut(&job) {
                p.retry = true;
            }
            self.dirty = true;
            let msg = format!("storing job {job}'s versions failed: {outcome:?}; retrying");
            out.push(Command::Notice(Notice::Alarm(msg)));
            return true;
        }
        let Some(p) = self.pending_releases.remove(&job) else {
            return true;
        };
        self.dirty = true;
        if !p.install {
            return true; // a phase change, in force already
        }
        let version = p.releases.current().map_or(0, |r| r.version);
        let cause = p
            .releases
            .current()
            .map(|r| r.cause.clone())
            .unwrap_or_default();
        if let Some(spec) = p.spec {
            self.draining.remove(&job);
            self.desired.insert(job.clone(), spec);
        }
        let msg = format!("job {job} version {version} {:?}: {cause}", p.outcome);
        self.event(out, now, "job.submit", None, None, msg);
        self.install_releases(p.releases, now, out);
        true
    }

    /// Take a job's releases as stored; start (or resume) its rollout when one is under way.
    fn install_releases(&mut self, rel: JobReleases, now: Time, out: &mut Vec<Command>) {
        let job = rel.job.clone();
        match rel.active_rollout() {
            Some(r) => {
                let update = self
                    .desired
                    .get(&job)
                    .map(JobSpec::update)
                    .unwrap_or_default();
                let mut run = Run::new(&update, r.revert, now);
                run.phase = r.phase;
                run.promoted = r.promoted || r.phase == RolloutPhase::Rolling;
                let copies = self.desired.get(&job).map_or(0, |s| self.slot_count(s));
                // Copies of an older version already stopped (by this rollout before a new
                // leader took over, most likely) are started again at the new version: they
                // count as the wave they were.
                let replacing: FxHashSet<u32> = self
                    .observed
                    .tasks
                    .get(&job)
                    .map(|slots| {
                        (0..slots.len().min(copies))
                            .filter(|&i| {
                                let t = &slots[i];
                                matches!(t.state, SlotState::Stopping | SlotState::Stopped)
                                    && !slot_current(&rel, t.version)
                            })
                            .filter_map(|i| u32::try_from(i).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                let msg = if r.revert {
                    format!(
                        "revert of {job} to version {} (from {}) over {copies} copies, all at once",
                        r.to, r.from
                    )
                } else {
                    format!(
                        "rollout of {job} version {} (from {}) over {copies} copies: canary {}, \
                         max_parallel {}, min_healthy_time {} ms",
                        r.to,
                        r.from,
                        update.canary,
                        update.max_parallel,
                        ms(update.min_healthy_time)
                    )
                };
                self.rollouts.insert(
                    job.clone(),
                    RolloutRun {
                        from: r.from,
                        to: r.to,
                        run,
                        started: now,
                        started_unix_ms: r.started_unix_ms,
                        replacing,
                        copies: FxHashMap::default(),
                        traffic: VecDeque::new(),
                        judgement: None,
                    },
                );
                self.event(out, now, "rollout.start", None, None, msg);
            }
            None => {
                self.rollouts.remove(&job);
            }
        }
        self.releases.insert(job, rel);
        self.dirty = true;
        self.endpoints_dirty = true;
    }

    /// The store's releases, at a take-over or a standby's refresh: rollouts resume where the
    /// slots' records say they stand.
    pub(super) fn load_releases(&mut self, all: Vec<JobReleases>, now: Time, acting: bool) {
        self.pending_releases.clear();
        self.rollouts.clear();
        self.releases.clear();
        // The resumed rollouts' events are the new leader's `rollout.start`s, not needed: the
        // take-over's own event says a new leader acts.
        let mut sink = Vec::new();
        for rel in all {
            if acting {
                self.install_releases(rel, now, &mut sink);
            } else {
                self.releases.insert(rel.job.clone(), rel);
            }
        }
    }

    /// The version a new copy of `task` is started from: the job's newest stored version,
    /// except for a copy of an older version that is not chosen for replacement while a
    /// rollout is under way, which keeps its version. (While a release write is out for the
    /// job no copy of it is started: see [`Controller::hold_pending_starts`].)
    pub(super) fn wanted_version(&self, task: &TaskId) -> u64 {
        let Some(rel) = self.releases.get(&task.job) else {
            return 0;
        };
        let newest = rel.current().map_or(0, |r| r.version);
        let Some(run) = self.rollouts.get(&task.job) else {
            return newest;
        };
        match self.slot(task) {
            Some(t)
                if t.version != 0
                    && !run.replacing.contains(&task.index)
                    && rel.get(t.version).is_some()
                    && !slot_current(rel, t.version) =>
            {
                t.version
            }
            _ => newest,
        }
    }

    /// The spec of `job` at `version` (the desired one when that version is not kept).
    pub(super) fn version_spec(&self, job: &JobName, version: u64) -> Option<&JobSpec> {
        self.releases
            .get(job)
            .and_then(|r| r.get(version))
            .map(|r| &r.spec)
            .or_else(|| self.desired.get(job))
    }

    /// Whether a new version of `job` (a submission, a revert) is being stored.
    pub(super) fn new_version_pending(&self, job: &JobName) -> bool {
        self.pending_releases.get(job).is_some_and(|p| p.install)
    }

    /// No copy of a job whose release write is out is started this round (its version is
    /// not settled yet); the job is planned again once the write is back.
    pub(super) fn hold_pending_starts(&mut self, actions: &mut Vec<Action>) {
        if self.pending_releases.is_empty() {
            return;
        }
        let before = actions.len();
        let pending = &self.pending_releases;
        actions.retain(|a| match a {
            Action::Start { task, .. } | Action::Reschedule { task, .. } => {
                !pending.get(&task.job).is_some_and(|p| p.install)
            }
            _ => true,
        });
        if actions.len() != before {
            self.dirty = true;
        }
    }

    /// A job was deleted: its rollout ends with it.
    pub(super) fn rollout_job_deleted(&mut self, job: &JobName) {
        self.rollouts.remove(job);
    }

    /// Whether `agent` is gone for good (a copy there is the planner's to move, never the
    /// rollout's to stop).
    fn on_terminal_agent(&self, agent: Option<&crate::types::AgentId>) -> bool {
        agent.is_some_and(|a| {
            self.observed
                .agents
                .get(a)
                .is_none_or(|v| v.state.is_terminal())
        })
    }

    /// Whether the running copy of `task` at `epoch` can become a copy of the job's newest
    /// version in place — the two differ in their `[[config]]` files alone, the new one has
    /// `[update] reload_signal`, and its agent can reload — and if so, its agent and that
    /// version.
    fn reload_to(&self, task: &TaskId, epoch: FencingToken) -> Option<(AgentId, u64)> {
        let t = self.slot(task)?;
        if t.epoch != epoch || t.state != SlotState::Running || t.version == 0 {
            return None;
        }
        let agent = t.agent.clone()?;
        if !self
            .observed
            .agents
            .get(&agent)
            .is_some_and(|v| v.reload && !v.state.is_terminal())
        {
            return None;
        }
        // The copy must have said which version's files it runs — its slot's (a copy started
        // before its agent reported versions says nothing, and its reports could not tell a
        // reloaded copy from one that is not).
        let said = self
            .books
            .get(&agent)
            .and_then(|b| b.versions.get(task))
            .is_some_and(|(e, v)| *e == epoch && *v == t.version);
        if !said {
            return None;
        }
        let rel = self.releases.get(&task.job)?;
        let (from, to) = (rel.get(t.version)?, rel.current()?);
        crate::release::reload_only(&from.spec, &to.spec)?;
        Some((agent, to.version))
    }

    /// The slot write of a reload of `task` was not applied: the slot is no longer being
    /// replaced, and the rollout takes it again at its next step.
    pub(super) fn rollout_reload_lost(&mut self, task: &TaskId) {
        if let Some(run) = self.rollouts.get_mut(&task.job) {
            run.replacing.remove(&task.index);
            self.dirty = true;
        }
    }

    /// A copy of `task` was ordered at `epoch` from `version`.
    pub(super) fn rollout_ordered(
        &mut self,
        task: &TaskId,
        epoch: FencingToken,
        version: u64,
        now: Time,
    ) {
        let Some(run) = self.rollouts.get_mut(&task.job) else {
            return;
        };
        let Some(rel) = self.releases.get(&task.job) else {
            return;
        };
        if slot_current(rel, version) {
            run.replacing.remove(&task.index);
            run.copies.insert(
                task.index,
                NewCopy {
                    epoch,
                    ordered_at: Some(now),
                    ..NewCopy::default()
                },
            );
        }
    }

    /// What an agent said of a copy, for the rollout's checks: `reported` is the phase it
    /// reported, `next` the slot's state after it, `version` the job version whose
    /// configuration it runs (0: not said). A report of a copy not yet reloaded to its slot's
    /// version says nothing of the new version.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rollout_copy_seen(
        &mut self,
        task: &TaskId,
        epoch: FencingToken,
        reported: SlotState,
        next: SlotState,
        healthy: bool,
        message: Option<&str>,
        version: u64,
        now: Time,
    ) {
        let checked = self
            .desired
            .get(&task.job)
            .is_some_and(|s| s.health.is_some());
        let Some(run) = self.rollouts.get_mut(&task.job) else {
            return;
        };
        let (Some(rel), Some(slot)) = (
            self.releases.get(&task.job),
            self.observed
                .tasks
                .get(&task.job)
                .and_then(|s| s.get(task.index as usize)),
        ) else {
            return;
        };
        if slot.epoch != epoch
            || !slot_current(rel, slot.version)
            || (version != 0 && version != slot.version)
        {
            return;
        }
        let c = run.copies.entry(task.index).or_default();
        if c.epoch != epoch {
            *c = NewCopy {
                epoch,
                ..NewCopy::default()
            };
        }
        let before = (c.healthy_since, c.bad.is_some());
        let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
        match (next, reported) {
            (SlotState::Failed, _) => {
                c.bad.get_or_insert_with(|| {
                    format!("{task}@{epoch} of version {} failed{detail}", run.to)
                });
            }
            (SlotState::Running, SlotState::Starting) if c.seen_running => {
                c.bad.get_or_insert_with(|| {
                    format!(
                        "{task}@{epoch} of version {} exited and is being restarted by its agent{detail}",
                        run.to
                    )
                });
            }
            (SlotState::Running, SlotState::Running)
                if message.is_some_and(|m| m.starts_with(super::RELOAD_FAILED)) =>
            {
                c.bad.get_or_insert_with(|| {
                    format!(
                        "{task}@{epoch} could not be reloaded to version {}{detail}",
                        run.to
                    )
                });
            }
            (SlotState::Running, SlotState::Running)
                if !healthy && message.is_some_and(|m| m.starts_with(HEALTH_FAILING)) =>
            {
                // The agent's check failed `failures` times in a row: a verdict, not a copy
                // still starting up.
                c.seen_running = true;
                c.bad.get_or_insert_with(|| {
                    format!(
                        "the health check of {task}@{epoch} of version {} failed",
                        run.to
                    )
                });
            }
            (SlotState::Running, SlotState::Running) => {
                c.seen_running = true;
                if message.is_some_and(|m| m.starts_with(HEALTH_PASSING)) {
                    c.check_passed = true;
                }
                if healthy && (c.check_passed || !checked) {
                    c.healthy_since.get_or_insert(now);
                } else if c.healthy_since.is_some() {
                    c.bad.get_or_insert_with(|| {
                        format!(
                            "the health check of {task}@{epoch} of version {} failed after it had passed",
                            run.to
                        )
                    });
                }
            }
            _ => {}
        }
        if (c.healthy_since, c.bad.is_some()) != before {
            self.dirty = true;
        }
    }

    /// Requests served by copies of jobs in rollout (from a traffic adapter's log), kept for
    /// the statistical judge: a copy counts as a canary when its slot runs the version rolled
    /// out, as baseline otherwise. Samples of a copy that is no longer the slot's running copy
    /// are dropped: a copy being replaced must not count for the one that follows it.
    pub(super) fn traffic_seen(&mut self, samples: Vec<TrafficSample>, now: Time) {
        for sample in samples {
            let Some(run) = self.rollouts.get_mut(&sample.task.job) else {
                continue;
            };
            let Some((window, warm_up)) = self.desired.get(&sample.task.job).and_then(|s| {
                let u = s.update();
                u.analysis.map(|a| (a.window, u.min_healthy_time))
            }) else {
                continue;
            };
            let (Some(rel), Some(slot)) = (
                self.releases.get(&sample.task.job),
                self.observed
                    .tasks
                    .get(&sample.task.job)
                    .and_then(|s| s.get(sample.task.index as usize)),
            ) else {
                continue;
            };
            if slot.epoch != sample.epoch || slot.state != SlotState::Running {
                continue;
            }
            let canary = slot.version != 0 && slot_current(rel, slot.version);
            // A canary's requests count once it is good (healthy for `min_healthy_time`):
            // what a copy meets while it starts is the fast checks' business, and counting it
            // would hold every new copy's first requests against it.
            if canary
                && !run.copies.get(&sample.task.index).is_some_and(|c| {
                    c.epoch == sample.epoch && c.healthy_since.is_some_and(|t| now >= t + warm_up)
                })
            {
                continue;
            }
            while run
                .traffic
                .front()
                .is_some_and(|(t, _, _)| now.saturating_since(*t) > window)
            {
                run.traffic.pop_front();
            }
            run.traffic.push_back((now, canary, sample.group));
        }
    }

    /// The statistical judge, when due for `job`'s rollout: judge the window, count the
    /// outcome, report it. Returns the reason to fail the rollout, when the failure limit is
    /// reached (never in `dry_run`).
    fn judge_rollout(
        &mut self,
        job: &JobName,
        replan_at: &mut Option<Time>,
        now: Time,
        out: &mut Vec<Command>,
    ) -> Option<String> {
        let a = self.desired.get(job)?.update().analysis?;
        let run = self.rollouts.get_mut(job)?;
        if run.run.revert || !run.run.phase.is_active() {
            return None;
        }
        let due = run.run.judged_at.unwrap_or(run.started) + a.interval;
        if now < due {
            *replan_at = Some(replan_at.map_or(due, |r| r.min(due)));
            return None;
        }
        run.run.judged_at = Some(now);
        let next = now + a.interval;
        *replan_at = Some(replan_at.map_or(next, |r| r.min(next)));
        let (mut canary, mut baseline) = (Group::default(), Group::default());
        for (t, is_canary, g) in &run.traffic {
            if now.saturating_since(*t) <= a.window {
                if *is_canary {
                    canary.merge(g);
                } else {
                    baseline.merge(g);
                }
            }
        }
        let j = judge::judge(&a, &canary, &baseline);
        let (kind, outcome) = match &j {
            Judgement::Pass(_) => {
                run.run.passes += 1;
                run.run.failures = 0;
                ("rollout.judged", "pass")
            }
            Judgement::Hold(_) => ("rollout.judged", "hold"),
            Judgement::Fail(_) => {
                run.run.passes = 0;
                run.run.failures += 1;
                ("rollout.judged", "fail")
            }
        };
        let (to, passes, failures) = (run.to, run.run.passes, run.run.failures);
        let evidence = j.evidence().to_string();
        run.judgement = Some(j);
        self.dirty = true;
        let dry = if a.dry_run { " (dry run)" } else { "" };
        let msg = format!(
            "rollout of {job} version {to}: judged {outcome}{dry} ({passes} passing, {failures}              failing in a row): {evidence}"
        );
        self.event(out, now, kind, None, None, msg);
        (!a.dry_run && failures >= a.failure_limit).then(|| {
            format!(
                "the statistical judge failed the canaries {failures} times in a row: {evidence}"
            )
        })
    }

    /// This round's rollout steps: stops of the copies to replace (added to `actions`), phase
    /// changes, verdicts and reverts.
    pub(super) fn rollout_actions(
        &mut self,
        actions: &mut Vec<Action>,
        replan_at: &mut Option<Time>,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let retry: Vec<JobName> = self
            .pending_releases
            .iter()
            .filter(|(_, p)| p.retry)
            .map(|(j, _)| j.clone())
            .collect();
        for job in retry {
            if let Some(p) = self.pending_releases.remove(&job) {
                self.ask_release(job, p, out);
            }
        }
        let mut jobs: Vec<JobName> = self.rollouts.keys().cloned().collect();
        jobs.sort();
        for job in jobs {
            if self.pending_releases.contains_key(&job) {
                continue;
            }
            if !self.desired.contains_key(&job) {
                self.rollouts.remove(&job);
                continue;
            }
            if let Some(reason) = self.judge_rollout(&job, replan_at, now, out) {
                let (from, to) = self.rollouts.get(&job).map_or((0, 0), |r| (r.from, r.to));
                if let Some(run) = self.rollouts.get_mut(&job) {
                    run.run.phase = RolloutPhase::Failed;
                }
                self.rollout_failed(&job, from, to, reason, actions, now, out);
                continue;
            }
            let Some(spec) = self.desired.get(&job) else {
                continue;
            };
            let update = spec.update();
            // The slots the job wants (a daemon's: those of live agents).
            let wanted: Vec<usize> = self.wanted_slots(spec);
            let (Some(rel), Some(run)) = (self.releases.get(&job), self.rollouts.get_mut(&job))
            else {
                continue;
            };
            let slots = self.observed.tasks.get(&job);
            let facts: Vec<SlotFacts> = wanted
                .iter()
                .map(|&i| {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    let Some(t) = slots.and_then(|s| s.get(i)) else {
                        return SlotFacts {
                            replacing: run.replacing.contains(&index),
                            ..SlotFacts::default()
                        };
                    };
                    let current = t.version != 0 && slot_current(rel, t.version);
                    let seen = run.copies.get(&index).filter(|c| c.epoch == t.epoch);
                    SlotFacts {
                        current,
                        replacing: run.replacing.contains(&index),
                        running: t.state == SlotState::Running,
                        ordered_at: seen.and_then(|c| c.ordered_at),
                        healthy_since: seen.and_then(|c| c.healthy_since),
                        bad: seen.and_then(|c| c.bad.clone()),
                    }
                })
                .collect();
            let step = rollout::step(&update, &mut run.run, &facts, now);
            if let Some(w) = step.wake_at {
                *replan_at = Some(replan_at.map_or(w, |r| r.min(w)));
            }
            let (from, to) = (run.from, run.to);
            let mut stops = Vec::new();
            for i in step
                .replace
                .into_iter()
                .filter_map(|k| wanted.get(k).copied())
            {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let task = TaskId::new(job.clone(), index);
                match slots.and_then(|s| s.get(i)) {
                    Some(t)
                        if matches!(
                            t.state,
                            SlotState::Starting | SlotState::Running | SlotState::Stopping
                        ) =>
                    {
                        stops.push((index, task, t.epoch, t.agent.clone()));
                    }
                    _ => {
                        run.replacing.insert(index);
                        self.dirty = true;
                    }
                }
            }
            for (index, task, epoch, agent) in stops {
                // A copy on a lost agent may still run until its lease surely ran out: the
                // planner moves it under the fencing rule, the rollout does not stop it.
                if self.on_terminal_agent(agent.as_ref()) {
                    continue;
                }
                if let Some(run) = self.rollouts.get_mut(&job) {
                    run.replacing.insert(index);
                }
                if let Some((agent, version)) = self.reload_to(&task, epoch) {
                    actions.push(Action::Reload {
                        op: OperationId::task(&task, epoch, &format!("reload-{version}")),
                        task,
                        epoch,
                        agent,
                        version,
                    });
                    self.dirty = true;
                    continue;
                }
                actions.push(Action::Stop {
                    op: OperationId::task(&task, epoch, "update"),
                    task,
                    epoch,
                    agent,
                    reason: StopReason::Update,
                });
                self.dirty = true;
            }
            match step.verdict {
                None => {}
                Some(Verdict::AwaitPromotion) => {
                    let msg = format!(
                        "rollout of {job} version {to}: the canaries are good; waiting for \
                         `warden rollout promote {job}`"
                    );
                    self.event(out, now, "rollout.awaiting_promotion", None, None, msg);
                    self.persist_rollout(
                        &job,
                        RolloutPhase::AwaitingPromotion,
                        String::new(),
                        None,
                        out,
                    );
                }
                Some(Verdict::Step(share)) => {
                    let msg = format!(
                        "rollout of {job} version {to}: the canaries now get {share} % of the traffic"
                    );
                    self.event(out, now, "rollout.step", None, None, msg);
                }
                Some(Verdict::Rolling) => {
                    let msg = format!("rollout of {job} version {to}: past the canaries, rolling");
                    self.event(out, now, "rollout.rolling", None, None, msg);
                    self.persist_rollout(&job, RolloutPhase::Rolling, String::new(), None, out);
                }
                Some(Verdict::Succeeded) => {
                    let took = self
                        .rollouts
                        .get(&job)
                        .map_or(0, |r| ms(now.saturating_since(r.started)));
                    let what = if self.rollouts.get(&job).is_some_and(|r| r.run.revert) {
                        "revert"
                    } else {
                        "rollout"
                    };
                    let msg = format!(
                        "{what} of {job} to version {to} succeeded in {took} ms: every copy runs it"
                    );
                    self.event(out, now, "rollout.succeeded", None, None, msg);
                    let ended = self.rollouts.get(&job).map(|r| r.unix_at(now));
                    self.persist_rollout(&job, RolloutPhase::Succeeded, String::new(), ended, out);
                    self.rollouts.remove(&job);
                }
                Some(Verdict::Failed(reason)) => {
                    self.rollout_failed(&job, from, to, reason, actions, now, out);
                }
            }
        }
    }

    /// A rollout's check failed: take the new version's copies out of traffic at once, then
    /// put the version before back (a revert), or stop for an operator.
    #[allow(clippy::too_many_arguments)]
    fn rollout_failed(
        &mut self,
        job: &JobName,
        from: u64,
        to: u64,
        reason: String,
        actions: &mut Vec<Action>,
        now: Time,
        out: &mut Vec<Command>,
    ) {
        let Some(run) = self.rollouts.remove(job) else {
            return;
        };
        let auto_revert = self
            .desired
            .get(job)
            .is_some_and(|s| s.update().auto_revert);
        let from_spec = self
            .releases
            .get(job)
            .and_then(|r| r.get(from))
            .map(|r| r.spec.clone());
        let msg = format!("rollout of {job} version {to} failed: {reason}");
        self.event(out, now, "rollout.failed", None, None, msg.clone());
        let data_refusal = from_spec
            .as_ref()
            .and_then(|s| self.data_epoch_refusal(job, s, Some(from)));
        match from_spec {
            Some(spec) if auto_revert && data_refusal.is_none() => {
                // Out of traffic first: every copy of the failed version is stopped now; the
                // revert starts the version before in their place.
                if let (Some(rel), Some(slots)) =
                    (self.releases.get(job), self.observed.tasks.get(job))
                {
                    for (i, t) in slots.iter().enumerate() {
                        if t.version != 0
                            && slot_current(rel, t.version)
                            && matches!(t.state, SlotState::Starting | SlotState::Running)
                            && !self.on_terminal_agent(t.agent.as_ref())
                        {
                            let task =
                                TaskId::new(job.clone(), u32::try_from(i).unwrap_or(u32::MAX));
                            actions.push(Action::Stop {
                                op: OperationId::task(&task, t.epoch, "revert"),
                                task,
                                epoch: t.epoch,
                                agent: t.agent.clone(),
                                reason: StopReason::Update,
                            });
                        }
                    }
                }
                let unix_ms = run.unix_at(now);
                let Some(mut rel) = self.releases.get(job).cloned() else {
                    return;
                };
                if let Some(r) = rel.rollout.as_mut() {
                    r.phase = RolloutPhase::Reverted;
                    r.reason = reason.clone();
                }
                let cause = format!("auto-revert of version {to}: {reason}");
                let mut rel = JobReleases::with_release(
                    Some(&rel),
                    spec.clone(),
                    unix_ms,
                    cause,
                    DEFAULT_KEEP,
                );
                let new = rel.current().map_or(0, |r| r.version);
                rel.rollout = Some(Rollout {
                    promoted: false,
                    from: to,
                    to: new,
                    revert: true,
                    phase: RolloutPhase::Rolling,
                    started_unix_ms: unix_ms,
                    ended_unix_ms: None,
                    reason,
                });
                let msg = format!("reverting {job} to version {from}'s spec as version {new}");
                self.event(out, now, "rollout.revert", None, None, msg);
                self.note_restore(job, &spec, new, now, out);
                let pending = PendingRelease {
                    id: WriteId(0),
                    spec: Some(spec),
                    releases: rel,
                    outcome: SubmitOutcome::Updated,
                    retry: false,
                    operator: false,
                    install: true,
                };
                self.ask_release(job.clone(), pending, out);
                self.dirty = true;
            }
            _ => {
                let why = if let Some(refusal) = data_refusal.filter(|_| auto_revert) {
                    format!("{msg}; not reverted: {refusal}")
                } else if auto_revert {
                    format!("{msg}; version {from} is no longer kept, so nothing is reverted")
                } else {
                    format!("{msg}; copies stay as they are (auto_revert = false)")
                };
                out.push(Command::Notice(Notice::Alarm(why)));
                let ended = Some(run.unix_at(now));
                self.persist_rollout(job, RolloutPhase::Failed, reason, ended, out);
            }
        }
    }

    /// Record a rollout's new phase, written in order with every other release write and
    /// asked again until it is stored (a new leader must not resume a rollout that failed).
    fn persist_rollout(
        &mut self,
        job: &JobName,
        phase: RolloutPhase,
        reason: String,
        ended_unix_ms: Option<u64>,
        out: &mut Vec<Command>,
    ) {
        let Some(rel) = self.releases.get_mut(job) else {
            return;
        };
        if let Some(r) = rel.rollout.as_mut() {
            r.phase = phase;
            r.reason = reason;
            if !phase.is_active() && r.ended_unix_ms.is_none() {
                r.ended_unix_ms = ended_unix_ms;
            }
        }
        let pending = PendingRelease {
            id: WriteId(0),
            spec: None,
            releases: rel.clone(),
            outcome: SubmitOutcome::Updated,
            retry: false,
            operator: false,
            install: false,
        };
        self.ask_release(job.clone(), pending, out);
    }
}
