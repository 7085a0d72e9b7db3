//! Daemon jobs (`kind = "daemon"`): one copy on every agent.
//!
//! A daemon's slot belongs to an agent by name ([`Observed::daemon_pins`]). Before every plan
//! the pins follow the fleet: an agent that is not gone for good keeps its slot (its copy is
//! restarted there, or on its next generation, never elsewhere); an agent gone for good (Failed
//! or Left, with no live generation) gives its slot up — the planner stops the copy and the
//! slot is reused by the next agent to join; an agent that joins takes the first free slot.
//! A new leader rebuilds the pins from the slots' records (each slot keeps the agent its copy
//! was started on), so copies stay where they are across a take-over.
//!
//! [`Observed::daemon_pins`]: crate::planner::Observed::daemon_pins

use std::sync::Arc;

use crate::hash::FxHashSet;
use crate::types::{JobKind, JobName, JobSpec};

use super::Controller;

impl Controller {
    /// Bring every daemon job's pins in step with the live agents.
    pub(super) fn sync_daemon_pins(&mut self) {
        let daemons: Vec<JobName> = self
            .desired
            .iter()
            .filter(|(_, s)| s.kind == JobKind::Daemon)
            .map(|(n, _)| n.clone())
            .collect();
        self.observed
            .daemon_pins
            .retain(|job, _| daemons.contains(job));
        if daemons.is_empty() {
            return;
        }
        let mut live: Vec<Arc<str>> = self
            .observed
            .agents
            .iter()
            .filter(|(_, v)| !v.state.is_terminal())
            .map(|(id, _)| id.name.clone())
            .collect();
        live.sort();
        live.dedup();
        for job in daemons {
            let slots = self.observed.tasks.get(&job);
            let pins = self.observed.daemon_pins.entry(job).or_insert_with(|| {
                slots
                    .map(|s| {
                        s.iter()
                            .map(|t| t.agent.as_ref().map(|a| a.name.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            let mut held: FxHashSet<Arc<str>> = FxHashSet::default();
            for pin in pins.iter_mut() {
                if let Some(name) = pin
                    && (live.binary_search(name).is_err() || !held.insert(name.clone()))
                {
                    *pin = None;
                }
            }
            for name in &live {
                if held.contains(name) {
                    continue;
                }
                match pins.iter().position(Option::is_none) {
                    Some(free) => pins[free] = Some(name.clone()),
                    None => pins.push(Some(name.clone())),
                }
            }
            while pins.last().is_some_and(Option::is_none) {
                pins.pop();
            }
        }
    }

    /// How many slots `spec` has (a daemon's: up to its last agent's).
    pub(super) fn slot_count(&self, spec: &JobSpec) -> usize {
        match spec.kind {
            JobKind::Daemon => self
                .observed
                .daemon_pins
                .get(&spec.name)
                .map_or(0, Vec::len),
            _ => spec.desired_count() as usize,
        }
    }

    /// The slots `spec` wants a copy in, in order (a daemon's: those of live agents).
    pub(super) fn wanted_slots(&self, spec: &JobSpec) -> Vec<usize> {
        match spec.kind {
            JobKind::Daemon => self
                .observed
                .daemon_pins
                .get(&spec.name)
                .map(|pins| {
                    pins.iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_some())
                        .map(|(i, _)| i)
                        .collect()
                })
                .unwrap_or_default(),
            _ => (0..spec.desired_count() as usize).collect(),
        }
    }

    /// Slots every job wants (a daemon's: one per live agent), for the API.
    pub fn wanted_copies(&self, spec: &JobSpec) -> u32 {
        u32::try_from(self.wanted_slots(spec).len()).unwrap_or(u32::MAX)
    }
}
