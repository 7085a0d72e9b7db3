//! Every conversion between the session protocol and `warden-core`'s domain types, both
//! directions, written once: the server decodes what agents send and encodes the controller's
//! orders here, and the agent does the opposite with the same functions.
//!
//! They live on the protocol's side because only this crate knows both vocabularies (the core
//! knows no wire format, and must not); keeping them in one module means a field added to the
//! protocol is mapped in one place for both ends. Decoding never fails as a whole: an entry
//! that cannot be read (a task id that does not parse, an unknown enum value) is dropped or
//! mapped to "unknown", which the controller treats as saying nothing.

use std::time::Duration;

use warden_core::anomaly::SignalSet;
use warden_core::controller::{
    Assignment, Copies, CopyPhase, CopyReport, Heartbeat, Hello, Order, Welcome,
};
use warden_core::lifecycle::ProbeOutcome;
use warden_core::state::ReplicaOrder;
use warden_core::{FencingToken, Resources, ServicePort, Signals, TaskId};

use crate::v1;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ----- values -----

impl From<&v1::Signals> for Signals {
    fn from(s: &v1::Signals) -> Self {
        Signals {
            cpu: s.cpu,
            memory: s.memory,
            error_rate: s.error_rate,
            latency_ms: s.latency_ms,
            task_success: s.task_success,
            restarts: s.restarts,
            pressure: s.pressure,
        }
    }
}

impl From<&Signals> for v1::Signals {
    fn from(s: &Signals) -> Self {
        v1::Signals {
            cpu: s.cpu,
            memory: s.memory,
            error_rate: s.error_rate,
            latency_ms: s.latency_ms,
            task_success: s.task_success,
            restarts: s.restarts,
            pressure: s.pressure,
        }
    }
}

impl From<&v1::Resources> for Resources {
    fn from(r: &v1::Resources) -> Self {
        Resources {
            memory_high_mb: r.memory_high_mb,
            ..Resources::new(r.cpu_millis, r.memory_mb)
        }
    }
}

impl From<Resources> for v1::Resources {
    fn from(r: Resources) -> Self {
        v1::Resources {
            cpu_millis: r.cpu_millis,
            memory_mb: r.memory_mb,
            memory_high_mb: r.memory_high_mb,
        }
    }
}

/// A wire phase as the core's; `None` for a value this build does not know.
pub fn phase_from_wire(p: i32) -> Option<CopyPhase> {
    match v1::TaskPhase::try_from(p).ok()? {
        v1::TaskPhase::Starting => Some(CopyPhase::Starting),
        v1::TaskPhase::Running => Some(CopyPhase::Running),
        v1::TaskPhase::Stopping => Some(CopyPhase::Stopping),
        v1::TaskPhase::Stopped => Some(CopyPhase::Stopped),
        v1::TaskPhase::Failed => Some(CopyPhase::Failed),
        v1::TaskPhase::Fenced => Some(CopyPhase::Fenced),
        v1::TaskPhase::Unspecified => None,
    }
}

/// The core's phase on the wire.
pub fn phase_to_wire(p: CopyPhase) -> v1::TaskPhase {
    match p {
        CopyPhase::Starting => v1::TaskPhase::Starting,
        CopyPhase::Running => v1::TaskPhase::Running,
        CopyPhase::Stopping => v1::TaskPhase::Stopping,
        CopyPhase::Stopped => v1::TaskPhase::Stopped,
        CopyPhase::Failed => v1::TaskPhase::Failed,
        CopyPhase::Fenced => v1::TaskPhase::Fenced,
    }
}

/// A wire probe outcome as the core's; an unknown value counts as not run.
pub fn outcome_from_wire(o: i32) -> ProbeOutcome {
    match v1::ProbeOutcome::try_from(o) {
        Ok(v1::ProbeOutcome::Answered) => ProbeOutcome::Answered,
        Ok(v1::ProbeOutcome::Connected) => ProbeOutcome::Connected,
        Ok(v1::ProbeOutcome::Refused) => ProbeOutcome::Refused,
        Ok(v1::ProbeOutcome::TimedOut) => ProbeOutcome::TimedOut,
        Ok(v1::ProbeOutcome::Unreachable) => ProbeOutcome::Unreachable,
        Ok(v1::ProbeOutcome::Skipped | v1::ProbeOutcome::Unspecified) | Err(_) => {
            ProbeOutcome::Skipped
        }
    }
}

/// The core's probe outcome on the wire.
pub fn outcome_to_wire(o: ProbeOutcome) -> v1::ProbeOutcome {
    match o {
        ProbeOutcome::Answered => v1::ProbeOutcome::Answered,
        ProbeOutcome::Connected => v1::ProbeOutcome::Connected,
        ProbeOutcome::Refused => v1::ProbeOutcome::Refused,
        ProbeOutcome::TimedOut => v1::ProbeOutcome::TimedOut,
        ProbeOutcome::Unreachable => v1::ProbeOutcome::Unreachable,
        ProbeOutcome::Skipped => v1::ProbeOutcome::Skipped,
    }
}

// ----- agent → server -----

/// A copy as a heartbeat carries it; `None` when its task id does not parse.
pub fn copy_from_wire(r: &v1::RunningTask) -> Option<CopyReport> {
    Some(CopyReport {
        task: TaskId::parse(&r.task)?,
        epoch: FencingToken(r.epoch),
        phase: phase_from_wire(r.phase),
        healthy: r.healthy,
        endpoint: r.endpoint.clone(),
        in_sync: r.in_sync.clone(),
        state_seq: r.state_seq,
        sealed: r.sealed,
        state_fence: r.state_fence,
        state_last_epoch: r.state_last_epoch,
        lagging: r.lagging.clone(),
        version: r.version,
    })
}

/// A copy as the agent reports it.
pub fn copy_to_wire(c: &CopyReport) -> v1::RunningTask {
    v1::RunningTask {
        task: c.task.to_string(),
        epoch: c.epoch.0,
        phase: c.phase.map_or(v1::TaskPhase::Unspecified, phase_to_wire) as i32,
        restarts: 0,
        healthy: c.healthy,
        endpoint: c.endpoint.clone(),
        in_sync: c.in_sync.clone(),
        state_seq: c.state_seq,
        sealed: c.sealed,
        state_fence: c.state_fence,
        state_last_epoch: c.state_last_epoch,
        lagging: c.lagging.clone(),
        version: c.version,
    }
}

impl From<&v1::Hello> for Hello {
    fn from(h: &v1::Hello) -> Self {
        Hello {
            name: h.name.clone(),
            generation: h.generation,
            probe_addr: h.probe_addr.clone(),
            state_addr: h.state_addr.clone(),
            capacity: h.capacity.as_ref().map(Resources::from).unwrap_or_default(),
            running: h
                .running
                .iter()
                .filter_map(|r| Some((TaskId::parse(&r.task)?, FencingToken(r.epoch))))
                .collect(),
            reattach_window: std::time::Duration::from_millis(h.reattach_window_ms),
            config_files: crate::declared(h.protocol_min, h.protocol_max).1 >= 2,
            reload: crate::declared(h.protocol_min, h.protocol_max).1 >= 3,
            restore_points: crate::declared(h.protocol_min, h.protocol_max).1 >= 4,
        }
    }
}

impl From<&v1::Heartbeat> for Heartbeat {
    fn from(hb: &v1::Heartbeat) -> Self {
        Heartbeat {
            seq: hb.seq,
            signals: hb.signals.as_ref().map(Signals::from),
            judged: hb.judged.then(|| SignalSet::from_bits(hb.anomalous)),
            copies: if hb.running_as_of != 0 {
                Copies::Unchanged {
                    since: hb.running_as_of,
                }
            } else {
                Copies::Listed(hb.running.iter().filter_map(copy_from_wire).collect())
            },
        }
    }
}

/// A task report as a copy report and its message; `None` when its task id does not parse.
pub fn report_from_wire(r: &v1::TaskReport) -> Option<(CopyReport, String)> {
    let copy = CopyReport {
        task: TaskId::parse(&r.task)?,
        epoch: FencingToken(r.epoch),
        phase: phase_from_wire(r.phase),
        healthy: r.healthy,
        endpoint: r.endpoint.clone(),
        in_sync: Vec::new(),
        state_seq: 0,
        state_fence: 0,
        state_last_epoch: 0,
        lagging: Vec::new(),
        sealed: false,
        version: r.version,
    };
    Some((copy, r.message.clone()))
}

/// A copy report on the wire, with its message and, when its process ended, its exit code.
pub fn report_to_wire(c: &CopyReport, message: String, exit_code: Option<i32>) -> v1::TaskReport {
    v1::TaskReport {
        task: c.task.to_string(),
        epoch: c.epoch.0,
        phase: c.phase.map_or(v1::TaskPhase::Unspecified, phase_to_wire) as i32,
        exit_code,
        message,
        healthy: c.healthy,
        endpoint: c.endpoint.clone(),
        version: c.version,
    }
}

// ----- server → agent -----

impl From<&Welcome> for v1::Welcome {
    fn from(w: &Welcome) -> Self {
        v1::Welcome {
            generation: w.generation,
            lease_ttl_ms: ms(w.lease_ttl),
            heartbeat_interval_ms: ms(w.heartbeat_interval),
            session_deadline_ms: ms(w.session_deadline),
            accepts_running_as_of: w.accepts_unchanged,
            protocol_min: crate::PROTOCOL_OLDEST,
            protocol_max: crate::PROTOCOL_NEWEST,
            anomaly_settings: w
                .anomaly
                .as_ref()
                .and_then(|a| serde_json::to_string(a).ok())
                .unwrap_or_default(),
        }
    }
}

impl From<&Assignment> for v1::Assign {
    fn from(a: &Assignment) -> Self {
        v1::Assign {
            task: a.task.to_string(),
            epoch: a.epoch.0,
            singleton: a.singleton,
            command: a.command.clone(),
            args: a.args.clone(),
            env: a.env.clone().into_iter().collect(),
            resources: Some(a.resources.into()),
            health_json: a
                .health
                .as_ref()
                .and_then(|h| serde_json::to_string(h).ok())
                .unwrap_or_default(),
            service: a.service.map(|p| v1::ServicePort {
                port: match p {
                    ServicePort::Dynamic => 0,
                    ServicePort::Fixed(p) => u32::from(p),
                },
            }),
            state_json: a
                .state
                .as_ref()
                .and_then(|s| serde_json::to_string(s).ok())
                .unwrap_or_default(),
            replica_json: a
                .replica
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok())
                .unwrap_or_default(),
            config: config_to_wire(&a.config),
            version: a.version,
            data_epoch: Some(a.data_epoch),
        }
    }
}

/// A job's configuration files on the wire.
fn config_to_wire(files: &[warden_core::ConfigFile]) -> Vec<v1::ConfigFile> {
    files
        .iter()
        .map(|f| v1::ConfigFile {
            path: f.path.clone(),
            content: f.content.clone(),
        })
        .collect()
}

/// Why an assignment could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    /// The task id does not parse.
    #[error("invalid task id {0:?}")]
    Task(String),
    /// The health check is not valid JSON of a health check.
    #[error("invalid health check of {task}: {error}")]
    Health {
        /// The task.
        task: String,
        /// The parser's error.
        error: String,
    },
    /// The state table is not valid JSON of a `[state]` table.
    #[error("invalid state table of {task}: {error}")]
    State {
        /// The task.
        task: String,
        /// The parser's error.
        error: String,
    },
    /// The replica role is not valid JSON of a role.
    #[error("invalid replica role of {task}: {error}")]
    Replica {
        /// The task.
        task: String,
        /// The parser's error.
        error: String,
    },
    /// The service port is out of range.
    #[error("invalid service port {port} for {task}")]
    Port {
        /// The task.
        task: String,
        /// The port sent.
        port: u32,
    },
}

impl TryFrom<&v1::Assign> for Assignment {
    type Error = AssignError;

    fn try_from(a: &v1::Assign) -> Result<Self, AssignError> {
        let task = TaskId::parse(&a.task).ok_or_else(|| AssignError::Task(a.task.clone()))?;
        let health = if a.health_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&a.health_json).map_err(|e| AssignError::Health {
                    task: a.task.clone(),
                    error: e.to_string(),
                })?,
            )
        };
        let state = if a.state_json.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&a.state_json).map_err(|e| AssignError::State {
                    task: a.task.clone(),
                    error: e.to_string(),
                })?,
            )
        };
        let replica = if a.replica_json.is_empty() {
            None
        } else {
            Some(replica_from_json(&a.task, &a.replica_json)?)
        };
        let service = match &a.service {
            None => None,
            Some(s) if s.port == 0 => Some(ServicePort::Dynamic),
            Some(s) => Some(ServicePort::Fixed(u16::try_from(s.port).map_err(|_| {
                AssignError::Port {
                    task: a.task.clone(),
                    port: s.port,
                }
            })?)),
        };
        Ok(Assignment {
            task,
            data_epoch: a.data_epoch.unwrap_or(0),
            epoch: FencingToken(a.epoch),
            singleton: a.singleton,
            command: a.command.clone(),
            args: a.args.clone(),
            env: a.env.clone().into_iter().collect(),
            resources: a
                .resources
                .as_ref()
                .map(Resources::from)
                .unwrap_or_default(),
            health,
            service,
            state,
            replica,
            config: a
                .config
                .iter()
                .map(|f| warden_core::ConfigFile {
                    path: f.path.clone(),
                    content: f.content.clone(),
                })
                .collect(),
            version: a.version,
        })
    }
}

fn replica_from_json(task: &str, json: &str) -> Result<ReplicaOrder, AssignError> {
    serde_json::from_str(json).map_err(|e| AssignError::Replica {
        task: task.to_string(),
        error: e.to_string(),
    })
}

/// A role order as the agent reads it: the copy and its role.
pub fn replica_from_wire(
    r: &v1::ReplicaRole,
) -> Result<(TaskId, FencingToken, ReplicaOrder), AssignError> {
    let task = TaskId::parse(&r.task).ok_or_else(|| AssignError::Task(r.task.clone()))?;
    Ok((
        task,
        FencingToken(r.epoch),
        replica_from_json(&r.task, &r.replica_json)?,
    ))
}

/// An order as the message that carries it.
pub fn order_to_wire(o: &Order) -> v1::server_message::Msg {
    use v1::server_message::Msg;
    match o {
        Order::Ack { seq, lease_ttl } => Msg::Ack(v1::Ack {
            seq: *seq,
            lease_ttl_ms: ms(*lease_ttl),
        }),
        Order::Assign(a) => Msg::Assign(a.as_ref().into()),
        Order::Stop { task, epoch, grace } => Msg::Stop(v1::StopTask {
            task: task.to_string(),
            epoch: epoch.0,
            grace_ms: ms(*grace),
        }),
        Order::Rejoin { reason } => Msg::Rejoin(v1::Rejoin {
            reason: reason.clone(),
        }),
        Order::Replica {
            task,
            epoch,
            replica,
        } => Msg::Replica(v1::ReplicaRole {
            task: task.to_string(),
            epoch: epoch.0,
            replica_json: serde_json::to_string(replica).unwrap_or_default(),
        }),
        Order::Reload(r) => Msg::Reload(v1::ReloadTask {
            task: r.task.to_string(),
            epoch: r.epoch.0,
            version: r.version,
            signal: r.signal.name().to_string(),
            config: config_to_wire(&r.config),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;
    use warden_core::JobName;

    #[test]
    fn an_assignment_survives_the_round_trip() {
        let a = Assignment {
            version: 4,
            data_epoch: 2,
            task: TaskId::new(JobName::new("web"), 3),
            epoch: FencingToken(7),
            singleton: false,
            command: "/bin/web".into(),
            args: vec!["--port".into(), "$(x)".into()],
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            resources: Resources::new(100, 64),
            health: None,
            service: Some(ServicePort::Fixed(8080)),
            state: Some(warden_core::state::StateSpec::default()),
            replica: Some(ReplicaOrder {
                epoch: 2,
                primary: false,
                primary_addr: "127.0.0.1:7001".into(),
                primary_agent: "a1".into(),
                in_sync: Vec::new(),
                standbys: Vec::new(),
                sealed: false,
            }),
            config: vec![],
        };
        let wire = v1::Assign::from(&a);
        assert_eq!(Assignment::try_from(&wire).unwrap(), a);
        let bad = v1::Assign {
            replica_json: "{\"epoch\": -1}".into(),
            ..wire.clone()
        };
        assert!(matches!(
            Assignment::try_from(&bad),
            Err(AssignError::Replica { .. })
        ));
        let bad = v1::Assign {
            task: "no-slot".into(),
            ..wire.clone()
        };
        assert!(matches!(
            Assignment::try_from(&bad),
            Err(AssignError::Task(_))
        ));
        let bad = v1::Assign {
            health_json: "{".into(),
            ..wire
        };
        assert!(matches!(
            Assignment::try_from(&bad),
            Err(AssignError::Health { .. })
        ));
    }

    #[test]
    fn phases_and_outcomes_map_both_ways() {
        for p in [
            CopyPhase::Starting,
            CopyPhase::Running,
            CopyPhase::Stopping,
            CopyPhase::Stopped,
            CopyPhase::Failed,
            CopyPhase::Fenced,
        ] {
            assert_eq!(phase_from_wire(phase_to_wire(p) as i32), Some(p));
        }
        assert_eq!(phase_from_wire(0), None);
        assert_eq!(phase_from_wire(99), None);
        for o in [
            ProbeOutcome::Answered,
            ProbeOutcome::Connected,
            ProbeOutcome::Refused,
            ProbeOutcome::TimedOut,
            ProbeOutcome::Unreachable,
            ProbeOutcome::Skipped,
        ] {
            assert_eq!(outcome_from_wire(outcome_to_wire(o) as i32), o);
        }
        assert_eq!(outcome_from_wire(42), ProbeOutcome::Skipped);
    }

    #[test]
    fn an_agents_verdicts_and_the_servers_anomaly_settings_cross_the_wire() {
        let mut hb = v1::Heartbeat {
            seq: 1,
            judged: true,
            anomalous: 0b10 | 1 << 20,
            ..Default::default()
        };
        // Bits beyond the known signal kinds are ignored.
        let set = Heartbeat::from(&hb).judged.unwrap();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![warden_core::SignalKind::Memory]
        );
        hb.judged = false;
        assert_eq!(Heartbeat::from(&hb).judged, None);

        let mut welcome = Welcome {
            generation: 1,
            lease_ttl: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(500),
            session_deadline: Duration::from_secs(2),
            accepts_unchanged: true,
            anomaly: None,
        };
        assert_eq!(v1::Welcome::from(&welcome).anomaly_settings, "");
        let mut cfg = warden_core::anomaly::AnomalyConfig::default();
        cfg.tail.warmup = 42;
        welcome.anomaly = Some(cfg.clone());
        let wire = v1::Welcome::from(&welcome).anomaly_settings;
        let back: warden_core::anomaly::AnomalyConfig = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unreadable_copies_are_dropped_not_fatal() {
        let hb = v1::Heartbeat {
            seq: 4,
            signals: Some(v1::Signals {
                cpu: Some(0.5),
                ..Default::default()
            }),
            running: vec![
                v1::RunningTask {
                    version: 0,
                    task: "web/0".into(),
                    epoch: 2,
                    phase: v1::TaskPhase::Running as i32,
                    restarts: 0,
                    healthy: true,
                    endpoint: String::new(),
                    in_sync: vec!["b".into()],
                    state_seq: 9,
                    state_fence: 0,
                    state_last_epoch: 0,
                    lagging: Vec::new(),
                    sealed: true,
                },
                v1::RunningTask {
                    task: "garbage".into(),
                    ..Default::default()
                },
            ],
            running_as_of: 0,
            judged: false,
            anomalous: 0,
        };
        let beat = Heartbeat::from(&hb);
        let Copies::Listed(copies) = &beat.copies else {
            panic!("listed copies read as {:?}", beat.copies);
        };
        assert_eq!(copies.len(), 1);
        assert_eq!(beat.signals.unwrap().cpu, Some(0.5));
        assert_eq!(copy_to_wire(&copies[0]), hb.running[0]);
        // "Unchanged" is read as such, whatever the list holds.
        let same = v1::Heartbeat {
            running_as_of: 3,
            ..hb
        };
        assert_eq!(
            Heartbeat::from(&same).copies,
            Copies::Unchanged { since: 3 }
        );
    }
}
