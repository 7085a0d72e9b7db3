//! The endpoints registry: for every service, its instances (task copies with a `host:port`)
//! and whether each should get traffic — `Serving`, `Draining` (no new connections) or
//! `Removed`. Load balancers and client libraries follow it through the REST API and the
//! adapters (HAProxy, file).
//!
//! Pure, like the rest of the core: the control plane observes its copies each round, [`judge`]
//! says what each copy deserves, and [`Registry::sync`] records the changes, bumping a
//! modification index that watchers block on (like Consul's blocking queries: "answer when the
//! index passes N").

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lifecycle::AgentState;
use crate::planner::SlotState;
use crate::time::Time;
use crate::types::{AgentId, FencingToken, TaskId};

/// Whether an instance gets traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Gets new connections.
    Serving,
    /// Gets no new connections; connections open may finish.
    Draining,
    /// Out of traffic.
    Removed,
}

impl InstanceState {
    /// Lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Serving => "serving",
            InstanceState::Draining => "draining",
            InstanceState::Removed => "removed",
        }
    }
}

/// What [`judge`] looks at for one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyFacts {
    /// The state of the agent running the copy.
    pub agent: AgentState,
    /// The copy's state, as the control plane tracks it.
    pub task: SlotState,
    /// Its health check passes (true when it has none).
    pub healthy: bool,
    /// Its job is being stopped and the copy drains before its stop.
    pub stopping: bool,
}

/// What a copy deserves, and why (a short phrase for people).
pub fn judge(f: CopyFacts) -> (InstanceState, &'static str) {
    match f.agent {
        AgentState::Failed => return (InstanceState::Removed, "agent failed"),
        AgentState::Left => return (InstanceState::Removed, "agent left"),
        AgentState::Suspect => return (InstanceState::Draining, "agent suspect"),
        AgentState::Joining
        | AgentState::Healthy
        | AgentState::Degraded
        | AgentState::Quarantined => {}
    }
    match f.task {
        SlotState::Running => {}
        SlotState::Pending | SlotState::Starting => {
            return (InstanceState::Removed, "task not running");
        }
        SlotState::Stopping | SlotState::Stopped => {
            return (InstanceState::Removed, "task stopped");
        }
        SlotState::Failed => return (InstanceState::Removed, "task failed"),
    }
    if f.stopping {
        (InstanceState::Draining, "job stopping")
    } else if !f.healthy {
        (InstanceState::Draining, "health check failing")
    } else {
        (InstanceState::Serving, "running")
    }
}

/// One copy of a service as observed in a round, with its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Service name.
    pub service: String,
    /// The task slot.
    pub task: TaskId,
    /// The copy's fencing token.
    pub epoch: FencingToken,
    /// The agent running it.
    pub agent: AgentId,
    /// `host:port` it serves on.
    pub addr: String,
    /// Its state and why.
    pub state: InstanceState,
    /// Why it is in that state.
    pub reason: &'static str,
}

/// One instance in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The task slot (one instance per slot; a replacement takes the slot over).
    pub task: TaskId,
    /// The copy's fencing token.
    pub epoch: FencingToken,
    /// The agent running it.
    pub agent: AgentId,
    /// `host:port`.
    pub addr: String,
    /// Traffic state.
    pub state: InstanceState,
    /// Why it is in that state.
    pub reason: String,
    /// When it entered that state.
    pub since: Time,
}

/// One service in the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Modification index: the registry's index at this service's last change.
    pub index: u64,
    /// Instances by task slot.
    pub instances: BTreeMap<TaskId, Instance>,
}

/// How long a removed instance stays listed so followers see its removal (default 60 s).
pub const KEEP_REMOVED: Duration = Duration::from_secs(60);

/// The endpoints of every service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    index: u64,
    services: BTreeMap<String, Service>,
}

impl Registry {
    /// An empty registry (index 0).
    pub fn new() -> Self {
        Registry::default()
    }

    /// The registry's modification index: grows by one on every [`Registry::sync`] that
    /// changed anything.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Every service, by name.
    pub fn services(&self) -> &BTreeMap<String, Service> {
        &self.services
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// Record a round of observations. `declared` are the services of current jobs (listed
    /// even with no instance). An instance not observed any more turns `Removed` ("gone");
    /// removed instances are forgotten after [`KEEP_REMOVED`], and services neither declared
    /// nor holding instances are dropped. Returns whether anything changed.
    pub fn sync(&mut self, declared: &[String], observed: Vec<Observation>, now: Time) -> bool {
        let next = self.index + 1;
        let mut changed: BTreeMap<String, bool> = BTreeMap::new();
        let mut seen: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
        for name in declared {
            if !self.services.contains_key(name) {
                self.services.insert(name.clone(), Service::default());
                changed.insert(name.clone(), true);
            }
        }
        for o in observed {
            seen.entry(o.service.clone())
                .or_default()
                .push(o.task.clone());
            let svc = self.services.entry(o.service.clone()).or_default();
            let fresh = Instance {
                task: o.task.clone(),
                epoch: o.epoch,
                agent: o.agent,
                addr: o.addr,
                state: o.state,
                reason: o.reason.to_string(),
                since: now,
            };
            let differs = match svc.instances.get(&o.task) {
                None => true,
                Some(old) => {
                    old.epoch != fresh.epoch
                        || old.addr != fresh.addr
                        || old.agent != fresh.agent
                        || old.state != fresh.state
                        || old.reason != fresh.reason
                }
            };
            if differs {
                let keep_since = svc
                    .instances
                    .get(&o.task)
                    .filter(|old| old.state == fresh.state && old.epoch == fresh.epoch)
                    .map(|old| old.since);
                let mut fresh = fresh;
                if let Some(since) = keep_since {
                    fresh.since = since;
                }
                svc.instances.insert(o.task, fresh);
                changed.insert(o.service, true);
            }
        }
        for (name, svc) in &mut self.services {
            let seen_here = seen.get(name);
            for inst in svc.instances.values_mut() {
                let observed_now = seen_here.is_some_and(|s| s.contains(&inst.task));
                if !observed_now && inst.state != InstanceState::Removed {
                    inst.state = InstanceState::Removed;
                    inst.reason = "gone".to_string();
                    inst.since = now;
                    changed.insert(name.clone(), true);
                }
            }
            let before = svc.instances.len();
            svc.instances.retain(|_, i| {
                i.state != InstanceState::Removed || now.saturating_since(i.since) < KEEP_REMOVED
            });
            if svc.instances.len() != before {
                changed.insert(name.clone(), true);
            }
        }
        let before = self.services.len();
        self.services
            .retain(|name, svc| declared.contains(name) || !svc.instances.is_empty());
        let dropped = self.services.len() != before;
        if changed.is_empty() && !dropped {
            return false;
        }
        self.index = next;
        for name in changed.keys() {
            if let Some(svc) = self.services.get_mut(name) {
                svc.index = next;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::JobName;

    fn facts(agent: AgentState, task: SlotState, healthy: bool, stopping: bool) -> CopyFacts {
        CopyFacts {
            agent,
            task,
            healthy,
            stopping,
        }
    }

    #[test]
    fn judge_table() {
        use AgentState as A;
        use InstanceState as I;
        use SlotState as T;
        let cases = [
            (facts(A::Healthy, T::Running, true, false), I::Serving),
            (facts(A::Degraded, T::Running, true, false), I::Serving),
            (facts(A::Quarantined, T::Running, true, false), I::Serving),
            (facts(A::Joining, T::Running, true, false), I::Serving),
            (facts(A::Healthy, T::Running, false, false), I::Draining),
            (facts(A::Healthy, T::Running, true, true), I::Draining),
            (facts(A::Suspect, T::Running, true, false), I::Draining),
            (facts(A::Failed, T::Running, true, false), I::Removed),
            (facts(A::Left, T::Running, true, false), I::Removed),
            (facts(A::Healthy, T::Starting, true, false), I::Removed),
            (facts(A::Healthy, T::Stopping, true, true), I::Removed),
            (facts(A::Healthy, T::Failed, true, false), I::Removed),
            // A failed agent outranks a draining job: its copy is gone.
            (facts(A::Failed, T::Running, true, true), I::Removed),
        ];
        for (f, want) in cases {
            assert_eq!(judge(f).0, want, "{f:?}");
        }
    }

    fn obs(index: u32, epoch: u64, port: u16, state: InstanceState) -> Observation {
        Observation {
            service: "web".into(),
            task: TaskId::new(JobName::new("web"), index),
            epoch: FencingToken(epoch),
            agent: AgentId::new("a", 1),
            addr: format!("127.0.0.1:{port}"),
            state,
            reason: "r",
        }
    }

    #[test]
    fn the_index_grows_only_on_change() {
        let mut r = Registry::new();
        let web = vec!["web".to_string()];
        let t = Time::from_millis(1000);
        assert!(r.sync(&web, vec![], t));
        assert_eq!(r.index(), 1);
        assert!(r.service("web").is_some_and(|s| s.instances.is_empty()));
        assert!(!r.sync(&web, vec![], t));
        assert!(r.sync(&web, vec![obs(0, 1, 80, InstanceState::Serving)], t));
        assert_eq!(r.index(), 2);
        assert!(!r.sync(&web, vec![obs(0, 1, 80, InstanceState::Serving)], t));
        assert_eq!(r.index(), 2);
        assert!(r.sync(&web, vec![obs(0, 1, 80, InstanceState::Draining)], t));
        assert_eq!(r.service("web").map(|s| s.index), Some(3));
    }

    #[test]
    fn a_vanished_instance_is_removed_then_forgotten() {
        let mut r = Registry::new();
        let web = vec!["web".to_string()];
        let t0 = Time::from_millis(0);
        r.sync(
            &web,
            vec![
                obs(0, 1, 80, InstanceState::Serving),
                obs(1, 1, 81, InstanceState::Serving),
            ],
            t0,
        );
        let t1 = Time::from_millis(10);
        assert!(r.sync(&web, vec![obs(0, 1, 80, InstanceState::Serving)], t1));
        let gone = r
            .service("web")
            .and_then(|s| s.instances.values().nth(1).cloned());
        assert_eq!(
            gone.map(|i| (i.state, i.reason)),
            Some((InstanceState::Removed, "gone".into()))
        );
        assert!(!r.sync(&web, vec![obs(0, 1, 80, InstanceState::Serving)], t1));
        let later = t1 + KEEP_REMOVED;
        assert!(r.sync(&web, vec![obs(0, 1, 80, InstanceState::Serving)], later));
        assert_eq!(r.service("web").map(|s| s.instances.len()), Some(1));
    }

    #[test]
    fn a_replacement_takes_its_slot_over() {
        let mut r = Registry::new();
        let web = vec!["web".to_string()];
        r.sync(
            &web,
            vec![obs(0, 1, 80, InstanceState::Serving)],
            Time::ZERO,
        );
        r.sync(
            &web,
            vec![obs(0, 1, 80, InstanceState::Removed)],
            Time::ZERO,
        );
        r.sync(
            &web,
            vec![obs(0, 2, 90, InstanceState::Serving)],
            Time::ZERO,
        );
        let i = r
            .service("web")
            .and_then(|s| s.instances.values().next().cloned());
        assert_eq!(
            i.map(|i| (i.epoch, i.addr, i.state)),
            Some((
                FencingToken(2),
                "127.0.0.1:90".into(),
                InstanceState::Serving
            ))
        );
    }

    #[test]
    fn an_undeclared_service_goes_once_its_instances_are_forgotten() {
        let mut r = Registry::new();
        r.sync(
            &["web".to_string()],
            vec![obs(0, 1, 80, InstanceState::Serving)],
            Time::ZERO,
        );
        r.sync(&[], vec![], Time::ZERO);
        assert!(r.service("web").is_some());
        r.sync(&[], vec![], Time::ZERO + KEEP_REMOVED);
        assert!(r.service("web").is_none());
    }
}
