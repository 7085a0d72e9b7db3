//! The REST read model: what `GET /v1/...` shows, read from the controller under the lock,
//! and the operator's changes, checked by the controller, stored, then fed to it.

use std::collections::BTreeMap;

use tokio::sync::watch;
use warden_core::controller::{Input, Refusal, RolloutView, STANDBY_REFRESH, SubmitOutcome};
use warden_core::lifecycle::AgentRecord;
use warden_core::planner::SlotState;
use warden_core::recovery::{Outcome, RecoveryRecord};
use warden_core::release::JobReleases;
use warden_core::{JobName, JobSpec, Time};

use super::{ControlPlane, lock};
use crate::clock::{Clock, ms, unix_now_ms};
use crate::view::{
    AgentInfo, ApiError, ApiErrorKind, ControlApi, EventInfo, HealthInfo, InstanceInfo, JobInfo,
    JobPlan, LeaderView, RecoveryInfo, ReplicaInfo, ServiceInfo, ServicesInfo, SwitchoverInfo,
    TaskInfo, flatten,
};

fn submit_error(e: super::SubmitError) -> ApiError {
    match e {
        super::SubmitError::Refused(r) => r.into(),
        super::SubmitError::Store(e) => internal(e),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ApiErrorKind::Internal, format!("store: {e}"))
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let kind = match &r {
            Refusal::Invalid(_) => ApiErrorKind::Invalid,
            Refusal::NotFound(_) => ApiErrorKind::NotFound,
            Refusal::Stale(_) | Refusal::Busy(_) => ApiErrorKind::Conflict,
            Refusal::NotLeader(_) => ApiErrorKind::NotLeader,
            Refusal::Unavailable(_) => ApiErrorKind::Unavailable,
        };
        ApiError::new(kind, r.to_string())
    }
}

fn recovery_info(r: &RecoveryRecord) -> RecoveryInfo {
    let split = r.split();
    RecoveryInfo {
        op: r.op.to_string(),
        task: r.task.to_string(),
        epoch: r.epoch.0,
        from: r.from.to_string(),
        to: r.to.as_ref().map(ToString::to_string),
        detected_at_unix_ms: Clock::unix_ms(r.detected_at),
        declared_failed_at_unix_ms: Clock::unix_ms(r.declared_failed_at),
        replacement_ordered_at_unix_ms: Clock::unix_ms(r.replacement_ordered_at),
        replacement_started_at_unix_ms: r.replacement_started_at.map(Clock::unix_ms),
        replacement_healthy_at_unix_ms: r.replacement_healthy_at.map(Clock::unix_ms),
        rto_ms: r.rto().map(ms),
        detection_ms: split.detection.map(ms),
        confirmation_ms: ms(split.confirmation),
        fencing_wait_ms: ms(split.fencing_wait),
        start_up_ms: split.start_up.map(ms),
        outcome: match r.outcome {
            Outcome::InProgress => "in_progress",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Superseded => "superseded",
        }
        .to_string(),
        cause: r.cause.to_string(),
    }
}

/// Phi as shown: rounded, and a large finite number for "certainly dead" (JSON has no ∞).
fn shown_phi(p: f64) -> f64 {
    if p.is_finite() {
        (p * 100.0).round() / 100.0
    } else {
        1e9
    }
}

impl ControlPlane {
    /// Every agent's view; with `tasks`, the list of the tasks on each (what makes the call
    /// cost the fleet's slots, not only its agents).
    fn agent_views(&self, with_tasks: bool) -> Vec<AgentInfo> {
        let now = self.clock.now();
        let st = lock(&self.state);
        let c = &st.ctrl;
        let mut newest: BTreeMap<&str, &AgentRecord> = BTreeMap::new();
        for r in c.fleet().agents() {
            let e = newest.entry(&r.id().name).or_insert(r);
            if r.id().generation > e.id().generation {
                *e = r;
            }
        }
        newest
            .into_values()
            .map(|r| {
                let id = r.id();
                let book = c.book(id);
                let live = |t: &&warden_core::TaskId| {
                    c.observed()
                        .tasks
                        .get(&t.job)
                        .and_then(|s| s.get(t.index as usize))
                        .is_some_and(|s| {
                            matches!(
                                s.state,
                                SlotState::Starting | SlotState::Running | SlotState::Stopping
                            )
                        })
                };
                AgentInfo {
                    name: id.name.to_string(),
                    generation: id.generation,
                    state: r.state().as_str().to_string(),
                    health_score: (r.score().0 * 10.0).round() / 10.0,
                    last_heartbeat_ms_ago: r.last_heartbeat().map(|t| ms(now.saturating_since(t))),
                    phi: shown_phi(r.suspicion(now)),
                    state_ms: ms(now.saturating_since(r.phase().since())),
                    probe_addr: book
                        .and_then(|b| b.probe_addr)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    signals: *r.signals(),
                    anomalies: r
                        .anomalous_signals()
                        .iter()
                        .map(|k| k.as_str().to_string())
                        .collect(),
                    signals_judged_by_agent: r.judges_own_signals(),
                    tasks: book
                        .filter(|_| with_tasks)
                        .map(|b| b.slots().filter(live).map(ToString::to_string).collect())
                        .unwrap_or_default(),
                    cordoned: c.observed().agents.get(id).is_some_and(|v| v.cordoned),
                }
            })
            .collect()
    }
}

impl ControlApi for ControlPlane {
    fn agents(&self) -> Vec<AgentInfo> {
        self.agent_views(true)
    }

    fn agent_health(&self) -> Vec<AgentInfo> {
        self.agent_views(false)
    }

    fn tasks(&self) -> Vec<TaskInfo> {
        let st = lock(&self.state);
        let mut jobs: Vec<_> = st.ctrl.observed().tasks.iter().collect();
        jobs.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (job, slots) in jobs {
            let replicas = || slots.iter().map(|t| t.replica.as_ref());
            let primary = warden_core::state::primary_index(replicas());
            let state_epoch = warden_core::state::state_epoch(replicas());
            for (i, t) in slots.iter().enumerate() {
                let replica = t.replica.map(|r| {
                    let is_primary = primary == Some(i);
                    ReplicaInfo {
                        role: if is_primary { "primary" } else { "standby" }.to_string(),
                        state_epoch,
                        in_sync: r.in_sync && !r.primary,
                    }
                });
                out.push(TaskInfo {
                    replica,
                    id: format!("{job}/{i}"),
                    job: job.to_string(),
                    agent: t.agent.as_ref().map(|a| a.name.to_string()),
                    generation: t.agent.as_ref().map(|a| a.generation),
                    state: t.state.as_str().to_string(),
                    epoch: t.epoch.0,
                    failures: t.failures,
                    version: t.version,
                });
            }
        }
        out
    }

    fn jobs(&self) -> Result<Vec<JobInfo>, ApiError> {
        let st = lock(&self.state);
        let c = &st.ctrl;
        Ok(c.desired()
            .values()
            .map(|spec| {
                let running = c.observed().tasks.get(&spec.name).map_or(0, |s| {
                    s.iter().filter(|t| t.state == SlotState::Running).count()
                });
                JobInfo {
                    spec: spec.clone(),
                    desired: c.wanted_copies(spec),
                    running: u32::try_from(running).unwrap_or(u32::MAX),
                }
            })
            .collect())
    }

    fn submit_job(&self, spec: JobSpec) -> Result<(SubmitOutcome, Option<u64>), ApiError> {
        let outcome = {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            self.follow_election(&mut st, now);
            st.ctrl.check_submit(&spec, now)?
        };
        if outcome == SubmitOutcome::Unchanged {
            let version = lock(&self.state)
                .ctrl
                .releases(&spec.name)
                .and_then(|r| r.current())
                .map(|r| r.version);
            return Ok((outcome, version));
        }
        // Stored (the spec with its new version, atomically) before the answer: a job the API
        // acknowledged survives a crash.
        let version = self
            .submit_release(spec, "submit".into(), false)
            .map_err(submit_error)?;
        Ok((outcome, Some(version)))
    }

    fn plan_job(&self, spec: JobSpec) -> Result<JobPlan, ApiError> {
        let st = lock(&self.state);
        let now = self.clock.now();
        let (outcome, refused) = match st.ctrl.check_submit(&spec, now) {
            Ok(o) => (o, None),
            Err(Refusal::Busy(m)) => (SubmitOutcome::Updated, Some(m)),
            Err(e) => return Err(e.into()),
        };
        let before = st
            .ctrl
            .desired()
            .get(&spec.name)
            .map(flatten)
            .unwrap_or_default();
        let changes = warden_core::release::diff(&before, &flatten(&spec));
        let (version, replaces, reloads) = st.ctrl.preview_submit(&spec);
        Ok(JobPlan {
            job: spec.name.to_string(),
            outcome: match outcome {
                SubmitOutcome::Created => "created",
                SubmitOutcome::Updated => "updated",
                SubmitOutcome::Unchanged => "unchanged",
            }
            .to_string(),
            version: (outcome != SubmitOutcome::Unchanged).then_some(version),
            changes,
            replaces,
            reloads,
            refused,
        })
    }

    fn job_versions(&self, name: &str) -> Result<JobReleases, ApiError> {
        let st = lock(&self.state);
        st.ctrl
            .releases(&JobName::new(name))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ApiErrorKind::NotFound,
                    format!("no versions of a job named {name:?}"),
                )
            })
    }

    fn revert_job(&self, name: &str, version: Option<u64>) -> Result<u64, ApiError> {
        let (target, spec) = {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            self.follow_election(&mut st, now);
            st.ctrl.check_revert(name, version, now)?
        };
        self.submit_release(spec, format!("revert to {target}"), true)
            .map_err(submit_error)
    }

    fn rollout(&self, name: &str) -> Result<RolloutView, ApiError> {
        lock(&self.state)
            .ctrl
            .rollout_view(&JobName::new(name))
            .ok_or_else(|| {
                ApiError::new(
                    ApiErrorKind::NotFound,
                    format!("job {name:?} has had no rollout"),
                )
            })
    }

    fn promote_rollout(&self, name: &str) -> Result<(), ApiError> {
        Ok(ControlPlane::promote_rollout(self, name)?)
    }

    fn traffic(&self, samples: Vec<warden_core::judge::TrafficSample>) {
        self.input(Input::Traffic { samples });
    }

    fn delete_job(&self, name: &str) -> Result<(), ApiError> {
        let job = {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            self.follow_election(&mut st, now);
            st.ctrl.check_delete(name, now)?
        };
        self.store.delete_job(&job).map_err(internal)?;
        self.input(Input::JobDeleted { job });
        Ok(())
    }

    fn release_brake(&self) -> Result<bool, ApiError> {
        Ok(ControlPlane::release_brake(self)?)
    }

    fn promote(&self, job: &str) -> Result<SwitchoverInfo, ApiError> {
        let to = ControlPlane::promote(self, job)?;
        Ok(SwitchoverInfo {
            job: job.to_string(),
            to: to.to_string(),
        })
    }

    fn events(&self, since: u64, limit: usize) -> Result<Vec<EventInfo>, ApiError> {
        self.store.events_since(since, limit).map_err(internal)
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<EventInfo>, ApiError> {
        let last = self.store.last_event_seq().map_err(internal)?;
        let since = last.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX));
        self.store.events_since(since, limit).map_err(internal)
    }

    fn recoveries(&self) -> Result<Vec<RecoveryInfo>, ApiError> {
        let stored = self
            .store
            .list_recoveries(&warden_store::RecoveryQuery::all())
            .map_err(internal)?;
        Ok(stored.iter().map(|s| recovery_info(&s.record)).collect())
    }

    fn metrics(&self) -> String {
        self.metrics.render(self)
    }

    fn services(&self) -> ServicesInfo {
        let st = lock(&self.state);
        let registry = st.ctrl.registry();
        let origin = self.clock.now();
        let wall = unix_now_ms();
        let unix_ms = |t: Time| wall.saturating_sub(ms(origin.saturating_since(t)));
        ServicesInfo {
            index: registry.index(),
            services: registry
                .services()
                .iter()
                .map(|(name, svc)| ServiceInfo {
                    name: name.clone(),
                    index: svc.index,
                    instances: svc
                        .instances
                        .values()
                        .map(|i| InstanceInfo {
                            task: i.task.to_string(),
                            epoch: i.epoch.0,
                            agent: i.agent.to_string(),
                            addr: i.addr.clone(),
                            state: i.state.as_str().to_string(),
                            reason: i.reason.clone(),
                            since_unix_ms: unix_ms(i.since),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn watch_services(&self) -> Option<watch::Receiver<u64>> {
        Some(self.services_index.subscribe())
    }

    fn leader(&self) -> LeaderView {
        let mut st = lock(&self.state);
        let now = self.clock.now();
        self.follow_election(&mut st, now);
        let c = &st.ctrl;
        let known = c.leader(now);
        let leads = c.acting_term(now).is_some();
        let fresh = c
            .last_refresh()
            .is_some_and(|t| now.saturating_since(t) <= STANDBY_REFRESH * 3);
        LeaderView {
            leader: known.as_ref().map(|l| l.name.clone()),
            term: known.as_ref().map(|l| l.term),
            since: known.as_ref().map(|l| l.since_unix_ms),
            acting_since: if leads {
                c.acting_since().map(Clock::unix_ms)
            } else {
                None
            },
            role: if leads { "leader" } else { "standby" }.into(),
            this: self.leadership.name().to_string(),
            stale: !leads && (known.is_none() || !fresh),
        }
    }

    fn health(&self) -> HealthInfo {
        let st = lock(&self.state);
        HealthInfo {
            status: "ok".to_string(),
            sessions: st.ctrl.sessions(),
            brake_engaged: st.ctrl.brake_engaged(),
        }
    }
}
