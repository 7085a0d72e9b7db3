//! The agent's Prometheus metrics, served on its probe listener's `GET /metrics`.
//! `docs/metrics.md` lists every family for users.
//!
//! Counters (heartbeats sent, acks, sessions, local restarts, fencings) are recorded by the
//! runtime as things happen. The gauges that describe the present — tasks by state, the lease
//! left — are read from the [`Supervisor`] at scrape time, so they are never stale, even while
//! the agent is cut off from every server and its session loop is waiting to reconnect.
//!
//! The recorder belongs to one [`AgentMetrics`] (no global recorder), so several agents in one
//! process (tests) keep separate counts.

use std::sync::{Arc, OnceLock};

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::supervisor::{ProcessState, Supervisor};

/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Heartbeats sent to a server.
pub const HEARTBEATS_SENT: &str = "warden_agent_heartbeats_sent_total";
/// Acks received (each renews the lease).
pub const ACKS_RECEIVED: &str = "warden_agent_acks_received_total";
/// Sessions established with a server.
pub const SESSIONS: &str = "warden_agent_sessions_total";
/// 1 while a session is established.
pub const CONNECTED: &str = "warden_agent_connected";
/// The generation this agent runs as (0 before the first Welcome).
pub const GENERATION: &str = "warden_agent_generation";
/// Local restarts of crashed tasks.
pub const TASK_RESTARTS: &str = "warden_agent_task_restarts_total";
/// Tasks the kernel's OOM killer killed (they went past their memory limit).
pub const TASK_OOM_KILLS: &str = "warden_agent_task_oom_kills_total";
/// 1 when tasks run in cgroups with their limits enforced, by `cgroup` version (`v1`, `v2`);
/// 0 with `cgroup="none"` when they run unconfined.
pub const LIMITS_ENFORCED: &str = "warden_agent_task_limits_enforced";
/// Times the lease ran out and the singletons were fenced.
pub const FENCINGS: &str = "warden_agent_fencings_total";
/// Tasks known to the supervisor, by `state`.
pub const TASKS: &str = "warden_agent_tasks";
/// Seconds left on the lease (0 when it ran out or was never granted).
pub const LEASE_REMAINING: &str = "warden_agent_lease_remaining_seconds";
/// Gauge: 1 while the agent runs its cached work without any server (offline mode).
pub const OFFLINE: &str = "warden_agent_offline";
/// Counter: tasks taken over from the shims of a previous agent process.
pub const TASKS_ADOPTED: &str = "warden_agent_tasks_adopted_total";
/// Counter: service copies started again from the local cache while offline.
pub const OFFLINE_STARTS: &str = "warden_agent_offline_starts_total";
/// Counter: cache files that could not be used (corrupt, truncated, another agent or
/// cluster) and were set aside.
pub const CACHE_DISCARDED: &str = "warden_agent_cache_discarded_total";

/// Task states as the `state` label of `warden_agent_tasks` shows them.
const TASK_STATES: [&str; 8] = [
    "starting",
    "running",
    "backing_off",
    "stopping",
    "stopped",
    "completed",
    "fenced",
    "failed",
];

fn task_state(s: &ProcessState) -> &'static str {
    match s {
        ProcessState::Starting => "starting",
        ProcessState::Running { .. } => "running",
        ProcessState::BackingOff { .. } => "backing_off",
        ProcessState::Stopping => "stopping",
        ProcessState::Stopped => "stopped",
        ProcessState::Completed => "completed",
        ProcessState::Fenced => "fenced",
        ProcessState::Failed { .. } => "failed",
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The agent's metrics. Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct AgentMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    /// Set once the runtime has started its supervisor; scrapes before that show no tasks.
    supervisor: OnceLock<Supervisor>,
    /// Set when tasks run in cgroups: their usage is read at every scrape.
    cgroups: OnceLock<crate::cgroup::AgentCgroups>,
    /// Offline mode (see [`AgentMetrics::set_offline`]).
    offline: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Fresh metrics: every family described, counters at zero.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let counters = [
            (HEARTBEATS_SENT, "Heartbeats sent to a server."),
            (
                ACKS_RECEIVED,
                "Heartbeat acks received from a server; each renews the lease.",
            ),
            (SESSIONS, "Sessions established with a server."),
            (
                TASK_RESTARTS,
                "Local restarts of crashed tasks (with backoff) by the supervisor.",
            ),
            (
                FENCINGS,
                "Times the lease ran out and every singleton task was fenced.",
            ),
            (
                TASK_OOM_KILLS,
                "Task runs that ended in an OOM kill: the task went past its memory limit.",
            ),
            (
                TASKS_ADOPTED,
                "Tasks taken over, still running, from the shims of a previous agent process.",
            ),
            (
                OFFLINE_STARTS,
                "Service copies started again from the local cache while no server answered.",
            ),
            (
                CACHE_DISCARDED,
                "Local cache files that could not be used and were set aside (the agent started empty).",
            ),
        ];
        for (name, help) in counters {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                Some(Unit::Count),
                SharedString::const_str(help),
            );
            recorder
                .register_counter(&Key::from_static_name(name), &METADATA)
                .absolute(0);
        }
        let gauges = [
            (CONNECTED, "1 while a session with a server is established."),
            (
                GENERATION,
                "The generation this agent runs as (0 before it joined).",
            ),
            (TASKS, "Tasks known to the supervisor, by state."),
            (
                LIMITS_ENFORCED,
                "1 when tasks run in cgroups with their limits enforced (label cgroup: v1 or v2); \
                 0 with cgroup=\"none\" when they run unconfined.",
            ),
            (
                LEASE_REMAINING,
                "Seconds left on the lease; 0 when it ran out or was never granted.",
            ),
            (
                OFFLINE,
                "1 while the agent runs its cached work without any server (offline mode).",
            ),
        ];
        for (name, help) in gauges {
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        }
        for name in [CONNECTED, GENERATION, LEASE_REMAINING, OFFLINE] {
            recorder
                .register_gauge(&Key::from_static_name(name), &METADATA)
                .set(0.0);
        }
        AgentMetrics {
            inner: Arc::new(Inner {
                recorder,
                supervisor: OnceLock::new(),
                cgroups: OnceLock::new(),
                offline: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether the agent runs offline (its cached work, no server reached since it started).
    pub fn set_offline(&self, offline: bool) {
        self.inner
            .offline
            .store(offline, std::sync::atomic::Ordering::Relaxed);
        self.set(OFFLINE, if offline { 1.0 } else { 0.0 });
    }

    /// Whether the agent runs offline (for the probe listener's `/status`).
    pub fn is_offline(&self) -> bool {
        self.inner
            .offline
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `n` tasks were taken over from a previous agent process's shims.
    pub fn tasks_adopted(&self, n: usize) {
        self.inner
            .recorder
            .register_counter(&Key::from_static_name(TASKS_ADOPTED), &METADATA)
            .increment(n as u64);
    }

    /// A service copy was started again from the cache while offline.
    pub fn offline_start(&self) {
        self.increment(OFFLINE_STARTS);
    }

    /// The cache file could not be used.
    pub fn cache_discarded(&self) {
        self.increment(CACHE_DISCARDED);
    }

    /// Read task states and the lease from `supervisor` at every scrape. The first call wins.
    pub fn attach(&self, supervisor: Supervisor) {
        let _ = self.inner.supervisor.set(supervisor);
    }

    /// Read each running task's cgroup usage at every scrape. The first call wins.
    pub fn attach_cgroups(&self, cgroups: crate::cgroup::AgentCgroups) {
        let _ = self.inner.cgroups.set(cgroups);
    }

    fn increment(&self, name: &'static str) {
        self.inner
            .recorder
            .register_counter(&Key::from_static_name(name), &METADATA)
            .increment(1);
    }

    fn set(&self, name: &'static str, value: f64) {
        self.inner
            .recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
            .set(value);
    }

    /// A heartbeat was sent.
    pub fn heartbeat_sent(&self) {
        self.increment(HEARTBEATS_SENT);
    }

    /// An ack arrived.
    pub fn ack_received(&self) {
        self.increment(ACKS_RECEIVED);
    }

    /// A session was established as `generation`.
    pub fn session_established(&self, generation: u64) {
        self.increment(SESSIONS);
        self.set(CONNECTED, 1.0);
        self.set(GENERATION, generation as f64);
    }

    /// The session ended.
    pub fn session_ended(&self) {
        self.set(CONNECTED, 0.0);
    }

    /// A task run ended in an OOM kill.
    pub fn task_oom_killed(&self) {
        self.increment(TASK_OOM_KILLS);
    }

    /// Whether task limits are enforced, and by which cgroup version (`None`: not enforced).
    pub fn limits_enforced(&self, version: Option<&str>) {
        let key = Key::from_parts(
            LIMITS_ENFORCED,
            vec![Label::new("cgroup", version.unwrap_or("none").to_string())],
        );
        self.inner
            .recorder
            .register_gauge(&key, &METADATA)
            .set(if version.is_some() { 1.0 } else { 0.0 });
    }

    /// The supervisor restarted a crashed task.
    pub fn task_restarted(&self) {
        self.increment(TASK_RESTARTS);
    }

    /// The lease ran out: singletons fenced.
    pub fn fenced(&self) {
        self.increment(FENCINGS);
    }

    /// The exposition, with the supervisor's gauges read now.
    pub fn render(&self) -> String {
        let r = &self.inner.recorder;
        let tasks = self
            .inner
            .supervisor
            .get()
            .map(Supervisor::tasks)
            .unwrap_or_default();
        // Every state is written on every scrape, so a state that emptied shows 0.
        for state in TASK_STATES {
            let n = tasks
                .iter()
                .filter(|t| task_state(&t.state) == state)
                .count();
            r.register_gauge(
                &Key::from_parts(TASKS, vec![Label::from_static_parts("state", state)]),
                &METADATA,
            )
            .set(n as f64);
        }
        let lease = self
            .inner
            .supervisor
            .get()
            .and_then(Supervisor::lease_remaining)
            .map_or(0.0, |d| d.as_secs_f64());
        self.set(LEASE_REMAINING, lease);
        let mut text = r.handle().render();
        if let Some(cgroups) = self.inner.cgroups.get() {
            text.push_str(&task_usage(cgroups, &tasks));
        }
        text
    }
}

/// Memory in use by each running task's cgroup, bytes.
pub const TASK_MEMORY: &str = "warden_agent_task_memory_bytes";
/// Share of CPU periods in which each running task was throttled by its quota.
pub const TASK_THROTTLED: &str = "warden_agent_task_cpu_throttled_ratio";
/// Pressure stall information of each running task (`some avg10`), by `resource`.
pub const TASK_PRESSURE: &str = "warden_agent_task_pressure_ratio";

/// The per-task families, written by hand rather than through the recorder: a series per
/// task would outlive the task there. Only running tasks appear.
fn task_usage(
    cgroups: &crate::cgroup::AgentCgroups,
    tasks: &[crate::supervisor::TaskReport],
) -> String {
    use std::fmt::Write as _;
    let mut memory = String::new();
    let mut throttled = String::new();
    let mut pressure = String::new();
    for t in tasks {
        if !matches!(t.state, ProcessState::Running { .. }) {
            continue;
        }
        let dirs = cgroups.task_dirs(&crate::cgroup::task_cgroup_name(&t.task, t.epoch));
        let u = crate::cgroup::usage(&dirs);
        let label = t.task.to_string().replace(['\\', '"', '\n'], "_");
        let _ = writeln!(
            memory,
            "{TASK_MEMORY}{{task=\"{label}\"}} {}",
            u.memory_bytes
        );
        for (resource, value) in [("cpu", u.cpu_pressure), ("memory", u.memory_pressure)] {
            if let Some(v) = value {
                let _ = writeln!(
                    pressure,
                    "{TASK_PRESSURE}{{task=\"{label}\",resource=\"{resource}\"}} {:.4}",
                    v / 100.0
                );
            }
        }
        if u.periods > 0 {
            let ratio = u.throttled_periods as f64 / u.periods as f64;
            let _ = writeln!(throttled, "{TASK_THROTTLED}{{task=\"{label}\"}} {ratio:.4}");
        }
    }
    format!(
        "# HELP {TASK_MEMORY} Memory in use by a running task's cgroup.\n\
         # TYPE {TASK_MEMORY} gauge\n{memory}\
         # HELP {TASK_THROTTLED} Share of CPU periods in which a running task was throttled by its \
         quota (cpu_millis), since it started; near 1 means it wants more CPU than it declared.\n\
         # TYPE {TASK_THROTTLED} gauge\n{throttled}\
         # HELP {TASK_PRESSURE} Pressure stall information of a running task: share of the last \
         10 s in which some of its processes waited for the resource (cpu, memory).\n\
         # TYPE {TASK_PRESSURE} gauge\n{pressure}"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_exposition_has_every_family_before_and_after_activity() {
        let m = AgentMetrics::new();
        let text = m.render();
        for family in [
            HEARTBEATS_SENT,
            ACKS_RECEIVED,
            SESSIONS,
            CONNECTED,
            GENERATION,
            TASK_RESTARTS,
            FENCINGS,
            TASKS,
            LEASE_REMAINING,
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}:\n{text}"
            );
        }
        assert!(
            text.contains("warden_agent_tasks{state=\"running\"} 0"),
            "{text}"
        );
        m.session_established(7);
        m.heartbeat_sent();
        m.heartbeat_sent();
        m.ack_received();
        m.task_restarted();
        let text = m.render();
        assert!(
            text.contains("warden_agent_heartbeats_sent_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("warden_agent_acks_received_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("warden_agent_task_restarts_total 1\n"),
            "{text}"
        );
        assert!(text.contains("warden_agent_generation 7\n"), "{text}");
        assert!(text.contains("warden_agent_connected 1\n"), "{text}");
        m.session_ended();
        assert!(m.render().contains("warden_agent_connected 0\n"));
    }
}
