//! The agent lifecycle, as the server sees it, for the whole fleet.
//!
//! ```text
//! Joining ──► Healthy ◄──► Degraded
//!               │  ▲          │
//!               ▼  │ refuted  ▼
//!              Suspect ───────► Failed ──► (agent returns: new generation, re-joins)
//! Healthy/Degraded ──► Quarantined (flapping: too many transitions in a window; no new work)
//! any ──► Left (graceful shutdown)
//! ```
//!
//! [`Fleet`] is an I/O-free state machine: the runtime feeds it [`AgentEvent`]s with the time
//! they happened and carries out the [`Output`]s it returns (renew a lease, run probes, record a
//! transition, raise an alarm). It owns one liveness detector, one health score and one anomaly
//! detector per signal for every agent generation.
//!
//! Rules worth knowing:
//! - **Suspect never triggers recovery by itself.** It asks for probes (direct and indirect).
//! - **Failed** needs one of: the process confirmed gone on a live host (session reset *and*
//!   probe port refused), every probe failing with no answer, or the lease surely expired (the
//!   agent has fenced itself by then, whatever the probes say). Only Failed moves work.
//! - A probe that merely *connects* proves nothing (the kernel accepts connections for a
//!   stopped process); only an application-level answer refutes death.
//! - **A hold instead of a verdict** while an agent restarts: when it announced a restart
//!   ([`AgentEvent::Restarting`]), or when its process is gone on a live host and its shims
//!   keep its service copies for a reattach window (it told its window in its Hello), the
//!   generation stays Suspect — its services are not moved — until it comes back or the
//!   window closes (then Failed). Its singletons are released
//!   ([`Output::ReleaseSingletons`]) as soon as they are surely dead: at once after
//!   `kill_grace` for an unannounced process death (the shims kill singletons when their
//!   agent vanishes), only when its lease surely ran out for an announced restart (the
//!   shims keep them until their deadline, for the new agent process to extend).
//! - **Flap damping**: an agent with more than `flap_max_transitions` transitions within
//!   `flap_window` goes to Quarantined instead of Healthy/Degraded, for `quarantine_for`.
//! - **Mass-failure brake**: when at least `brake_min_agents` agents, and more than
//!   `brake_share` of the fleet, turned Suspect within `brake_window`, no agent is declared
//!   Failed and an alarm is raised instead; the likeliest cause is the server's own network.
//!   Suspects keep their evidence and fail normally once the brake releases, which it does
//!   only after the mass has cleared for `brake_hold`: when the server's own network comes
//!   back, agents reconnect one by one, and the last ones must not be failed just because
//!   the first ones already made the count small again.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hash::FxHashMap;

use crate::anomaly::{AnomalyConfig, SignalDetector, SignalSet};
use crate::detector::{Detector, DetectorConfig, LivenessDetector};
use crate::duration_serde;
use crate::error::{ConfigError, check_range};
use crate::fencing::{DeathEvidence, FencingConfig};
use crate::health::{HealthConfig, HealthScore};
use crate::time::Time;
use crate::types::{AgentId, SignalKind, Signals};

/// The lifecycle state of one agent generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Session open, no heartbeat yet.
    Joining,
    /// Alive and healthy: eligible for new work.
    Healthy,
    /// Alive but unhealthy (low score or anomalous signal): no new work.
    Degraded,
    /// Liveness in doubt: being confirmed by probes. No new work, no recovery yet.
    Suspect,
    /// Established dead or lost: its work moves elsewhere. Terminal for this generation.
    Failed,
    /// Flapping: alive but untrusted for a while; no new work.
    Quarantined,
    /// Left gracefully. Terminal for this generation.
    Left,
}

impl AgentState {
    /// Lower-case name used by the API, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Joining => "joining",
            AgentState::Healthy => "healthy",
            AgentState::Degraded => "degraded",
            AgentState::Suspect => "suspect",
            AgentState::Failed => "failed",
            AgentState::Quarantined => "quarantined",
            AgentState::Left => "left",
        }
    }

    /// Whether this generation is over (Failed or Left).
    pub fn is_terminal(self) -> bool {
        matches!(self, AgentState::Failed | AgentState::Left)
    }

    /// Whether the agent may receive new work.
    pub fn accepts_work(self) -> bool {
        matches!(self, AgentState::Healthy)
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the lifecycle. Defaults suit 500 ms heartbeats and a 2 s lease on a LAN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// How often agents send heartbeats (default 500 ms).
    #[serde(with = "duration_serde")]
    pub heartbeat_interval: Duration,
    /// Liveness detector (default: phi accrual).
    pub detector: DetectorConfig,
    /// Health score weights and thresholds.
    pub health: HealthConfig,
    /// Anomaly detection on signals.
    pub anomaly: AnomalyConfig,
    /// Lease and fencing settings.
    pub fencing: FencingConfig,
    /// How often to probe again a Suspect agent that is not yet confirmed (default 1 s).
    #[serde(with = "duration_serde")]
    pub probe_interval: Duration,
    /// Window for counting transitions (default 60 s).
    #[serde(with = "duration_serde")]
    pub flap_window: Duration,
    /// More transitions than this within `flap_window` quarantine the agent (default 6).
    pub flap_max_transitions: u32,
    /// How long a quarantine lasts at least (default 2 min).
    #[serde(with = "duration_serde")]
    pub quarantine_for: Duration,
    /// Share of the fleet (0–1) turning Suspect within `brake_window` that engages the
    /// mass-failure brake (default 0.3).
    pub brake_share: f64,
    /// Fewest Suspect agents that can engage the brake (default 3), so that one crash in a
    /// three-agent fleet is still handled.
    pub brake_min_agents: u32,
    /// Window for the brake's count (default 10 s).
    #[serde(with = "duration_serde")]
    pub brake_window: Duration,
    /// How long the Suspect count must stay below the mass before the brake releases
    /// (default 5 s): time for agents cut off together to reconnect after the network heals.
    #[serde(with = "duration_serde", default = "default_brake_hold")]
    pub brake_hold: Duration,
}

fn default_brake_hold() -> Duration {
    Duration::from_secs(5)
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            heartbeat_interval: Duration::from_millis(500),
            detector: DetectorConfig::default(),
            health: HealthConfig::default(),
            anomaly: AnomalyConfig::default(),
            fencing: FencingConfig::default(),
            probe_interval: Duration::from_secs(1),
            flap_window: Duration::from_secs(60),
            flap_max_transitions: 6,
            quarantine_for: Duration::from_secs(120),
            brake_share: 0.3,
            brake_min_agents: 3,
            brake_window: Duration::from_secs(10),
            brake_hold: default_brake_hold(),
        }
    }
}

impl LifecycleConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::new(
                "heartbeat_interval",
                "must be greater than zero",
            ));
        }
        self.fencing.validate().map_err(|e| e.within("fencing"))?;
        if self.fencing.lease_ttl < self.heartbeat_interval * 2 {
            return Err(ConfigError::new(
                "fencing.lease_ttl",
                format!(
                    "must be at least twice heartbeat_interval ({}), or one late heartbeat would \
                     fence every singleton",
                    duration_serde::format(&self.heartbeat_interval)
                ),
            ));
        }
        self.detector.validate().map_err(|e| e.within("detector"))?;
        self.health.validate()?;
        self.anomaly.validate()?;
        if self.probe_interval.is_zero() {
            return Err(ConfigError::new(
                "probe_interval",
                "must be greater than zero",
            ));
        }
        if self.flap_max_transitions == 0 {
            return Err(ConfigError::new(
                "flap_max_transitions",
                "must be at least 1",
            ));
        }
        if self.flap_window.is_zero() {
            return Err(ConfigError::new("flap_window", "must be greater than zero"));
        }
        if !(self.brake_share.is_finite() && self.brake_share > 0.0 && self.brake_share <= 1.0) {
            return Err(ConfigError::new("brake_share", "must be in (0, 1]"));
        }
        if self.brake_window.is_zero() {
            return Err(ConfigError::new(
                "brake_window",
                "must be greater than zero",
            ));
        }
        check_range(
            "brake_min_agents",
            f64::from(self.brake_min_agents),
            1.0,
            1e9,
        )?;
        // The detector must suspect a silent agent before its lease has surely run out,
        // or suspicion (and confirmation by probes) would always come too late to matter.
        let nominal = self.nominal_detection_delay();
        let lease = self
            .fencing
            .lease_surely_expired_at(Time::ZERO)
            .saturating_since(Time::ZERO);
        if nominal >= lease {
            return Err(ConfigError::new(
                "detector",
                format!(
                    "suspects a silent agent only after {} but its lease has surely expired after \
                     {}: lower the detector's threshold or raise fencing.lease_ttl",
                    duration_serde::format(&round_ms(nominal)),
                    duration_serde::format(&round_ms(lease))
                ),
            ));
        }
        Ok(())
    }

    /// How long after its last heartbeat the detector suspects an agent that had been sending
    /// perfectly regular heartbeats.
    pub fn nominal_detection_delay(&self) -> Duration {
        let mut d = self.detector.build();
        let step = self.heartbeat_interval;
        let mut t = Time::ZERO;
        for seq in 1..=200 {
            t = t + step;
            d.heartbeat(seq, t);
        }
        d.suspect_at()
            .map_or(Duration::MAX, |s| s.saturating_since(t))
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How a probe reached the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// TCP connect to the probe port.
    Tcp,
    /// HTTP `GET /healthz` on the probe port.
    Http,
    /// ICMP echo to the host.
    Icmp,
}

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOutcome {
    /// The agent process answered at the application level: it is alive.
    Answered,
    /// A TCP handshake or ICMP echo succeeded: the host is up. Says nothing about the
    /// process (the kernel answers for a stopped one).
    Connected,
    /// The host actively refused the connection: up, but nothing listens — the process is gone.
    Refused,
    /// No answer in time.
    TimedOut,
    /// No route, host unreachable.
    Unreachable,
    /// Not run (e.g. ICMP not permitted); ignored.
    Skipped,
}

/// The results of one round of probes for a Suspect agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The round this answers ([`Output::Probe`]); reports for older rounds are ignored.
    pub round: u64,
    /// Probes from the server itself.
    pub direct: Vec<(ProbeKind, ProbeOutcome)>,
    /// Probes run on the server's behalf by other healthy agents (SWIM-style); empty when no
    /// healthy helper was available.
    pub indirect: Vec<ProbeOutcome>,
}

impl ProbeReport {
    fn answered(&self) -> bool {
        self.direct
            .iter()
            .any(|(_, o)| *o == ProbeOutcome::Answered)
            || self.indirect.contains(&ProbeOutcome::Answered)
    }

    fn refused(&self) -> bool {
        self.direct
            .iter()
            .any(|(k, o)| *k != ProbeKind::Icmp && *o == ProbeOutcome::Refused)
    }

    fn all_failed(&self) -> bool {
        let ran: Vec<ProbeOutcome> = self
            .direct
            .iter()
            .map(|(_, o)| *o)
            .chain(self.indirect.iter().copied())
            .filter(|o| *o != ProbeOutcome::Skipped)
            .collect();
        // At least one application-level attempt must have been made and failed; a mere
        // Connected counts as a failure to answer.
        !ran.is_empty()
            && self
                .direct
                .iter()
                .any(|(k, o)| *k != ProbeKind::Icmp && *o != ProbeOutcome::Skipped)
            && !ran.contains(&ProbeOutcome::Answered)
    }
}

/// Something that happened to one agent generation.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// The agent (re)opened a session with the same generation, e.g. after a network blip.
    SessionOpened,
    /// Heartbeat number `seq` arrived.
    Heartbeat {
        /// Sequence number, growing by one per heartbeat sent.
        seq: u64,
    },
    /// Health signals arrived (normally with a heartbeat); the fleet judges them with its
    /// anomaly detectors.
    Signals(Signals),
    /// Health signals the agent judged itself with the fleet's anomaly settings: `anomalous`
    /// are its verdicts, and the fleet keeps no detector for this generation.
    JudgedSignals {
        /// The values (for the health score).
        signals: Signals,
        /// The signals the agent's detectors hold anomalous.
        anomalous: SignalSet,
    },
    /// The session broke (stream error, reset, or its deadline passed).
    SessionLost,
    /// Results of a probe round.
    Probes(ProbeReport),
    /// The lease was found expired by an outside lease keeper (the fleet also checks on
    /// every tick from its own record of renewals).
    LeaseExpired,
    /// Graceful shutdown: the agent has stopped its tasks.
    Leave,
    /// The agent is restarting on purpose (an upgrade): hold any verdict for `window`, and
    /// release its singletons only when its lease surely ran out.
    Restarting {
        /// How long its shims keep its tasks for the new process.
        window: Duration,
    },
    /// Time passed.
    Tick,
}

/// Longest hold an agent can ask for.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// A verdict held back while the agent restarts (see the module's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    /// Failed if it has not come back by then.
    until: Time,
    /// Announced by the agent ([`AgentEvent::Restarting`]).
    planned: bool,
}

/// Why a transition happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// First heartbeat of a joining agent.
    FirstHeartbeat,
    /// Health score fell under the threshold.
    LowScore {
        /// The score.
        score: f64,
    },
    /// A signal turned anomalous.
    Anomaly {
        /// The signal.
        signal: SignalKind,
    },
    /// Score and signals back to normal.
    Recovered {
        /// The score.
        score: f64,
    },
    /// The liveness detector crossed its threshold.
    Detector {
        /// Suspicion level at that moment.
        suspicion: f64,
    },
    /// The session broke.
    SessionLost,
    /// A heartbeat arrived from a Suspect agent.
    HeartbeatResumed,
    /// Session reset and probe port refused: the process is gone.
    ProcessGone,
    /// Every probe, direct and indirect, failed to get an answer.
    ProbesFailed,
    /// No renewal for longer than the lease surely lasts.
    LeaseExpired,
    /// Too many transitions within the flap window.
    Flapping {
        /// Transitions counted in the window.
        transitions: u32,
    },
    /// Quarantine over.
    QuarantineOver,
    /// A newer generation of the same agent joined: this one's process is gone.
    Superseded {
        /// The newer generation.
        by: u64,
    },
    /// Graceful shutdown.
    Leave,
    /// It was held for its restart (announced, or its process gone with its services kept)
    /// and did not come back within the window.
    NotBackInTime,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::FirstHeartbeat => write!(f, "first heartbeat"),
            Cause::LowScore { score } => write!(f, "health score {score:.1} under threshold"),
            Cause::Anomaly { signal } => write!(f, "anomaly on {}", signal.as_str()),
            Cause::Recovered { score } => write!(f, "recovered (score {score:.1})"),
            Cause::Detector { suspicion } => write!(f, "detector suspicion {suspicion:.2}"),
            Cause::SessionLost => write!(f, "session lost"),
            Cause::HeartbeatResumed => write!(f, "heartbeat resumed"),
            Cause::ProcessGone => write!(f, "process gone (session reset, probe port refused)"),
            Cause::ProbesFailed => write!(f, "all probes failed"),
            Cause::LeaseExpired => write!(f, "lease surely expired"),
            Cause::Flapping { transitions } => write!(f, "flapping ({transitions} transitions)"),
            Cause::QuarantineOver => write!(f, "quarantine over"),
            Cause::Superseded { by } => write!(f, "superseded by generation {by}"),
            Cause::Leave => write!(f, "left gracefully"),
            Cause::NotBackInTime => write!(f, "did not come back within its reattach window"),
        }
    }
}

/// A state change of one agent generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The agent.
    pub agent: AgentId,
    /// State before.
    pub from: AgentState,
    /// State after.
    pub to: AgentState,
    /// When.
    pub at: Time,
    /// Why.
    pub cause: Cause,
}

/// A fleet-wide alarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "alarm", rename_all = "snake_case")]
pub enum Alarm {
    /// The mass-failure brake engaged: no agent will be declared Failed until it releases.
    BrakeEngaged {
        /// When.
        at: Time,
        /// Agents that turned Suspect within the window.
        suspects: u32,
        /// Agents in the fleet.
        fleet: u32,
    },
    /// The brake released.
    BrakeReleased {
        /// When.
        at: Time,
    },
}

/// What the runtime must do or record.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Acknowledge heartbeat `seq`: this renews the agent's lease. The fleet has recorded the
    /// renewal at the heartbeat's arrival time, which is no later than the agent's send time
    /// plus transit, so the server never believes a lease ends earlier than it does.
    RenewLease {
        /// The agent.
        agent: AgentId,
        /// Heartbeat acknowledged.
        seq: u64,
    },
    /// Record (and act on) a transition.
    Transition(Transition),
    /// Probe this agent directly and through up to k healthy agents, then report back with
    /// [`AgentEvent::Probes`] carrying `round`.
    Probe {
        /// The agent.
        agent: AgentId,
        /// Round number to echo in the report.
        round: u64,
    },
    /// Raise or clear an alarm.
    Alarm(Alarm),
    /// The agent is held (restarting) and its singletons are surely dead: they may be
    /// started elsewhere now, while its other copies stay where they are.
    ReleaseSingletons {
        /// The agent.
        agent: AgentId,
        /// Why they are surely dead.
        why: &'static str,
    },
    /// The agent reported under a generation that is over: tell it to stop its old work and
    /// rejoin with a new generation.
    StaleGeneration {
        /// The stale identity.
        agent: AgentId,
    },
}

/// Evidence gathered while an agent is Suspect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Evidence {
    session_lost: bool,
    /// A probe got an application-level answer in the current suspicion.
    answered: bool,
    /// A verdict ready to apply (held back only by the brake).
    pending: Option<PendingFailure>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingFailure {
    ProcessGone { at: Time },
    ProbesFailed,
    LeaseExpired,
}

/// Where one agent generation is in its lifecycle, with the data each state needs.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// See [`AgentState::Joining`].
    Joining {
        /// Since when.
        since: Time,
    },
    /// See [`AgentState::Healthy`].
    Healthy {
        /// Since when.
        since: Time,
    },
    /// See [`AgentState::Degraded`].
    Degraded {
        /// Since when.
        since: Time,
    },
    /// See [`AgentState::Suspect`].
    Suspect {
        /// Since when.
        since: Time,
        /// Evidence so far.
        evidence: SuspectEvidence,
    },
    /// See [`AgentState::Failed`].
    Failed {
        /// When it was declared.
        at: Time,
        /// Evidence of the process's death, for the fencing rule.
        death: DeathEvidence,
    },
    /// See [`AgentState::Quarantined`].
    Quarantined {
        /// Since when.
        since: Time,
    },
    /// See [`AgentState::Left`].
    Left {
        /// When.
        at: Time,
    },
}

/// Evidence gathered while Suspect (opaque outside this module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuspectEvidence(Evidence);

impl Phase {
    /// The state tag.
    pub fn state(&self) -> AgentState {
        match self {
            Phase::Joining { .. } => AgentState::Joining,
            Phase::Healthy { .. } => AgentState::Healthy,
            Phase::Degraded { .. } => AgentState::Degraded,
            Phase::Suspect { .. } => AgentState::Suspect,
            Phase::Failed { .. } => AgentState::Failed,
            Phase::Quarantined { .. } => AgentState::Quarantined,
            Phase::Left { .. } => AgentState::Left,
        }
    }

    /// When the current state began.
    pub fn since(&self) -> Time {
        match self {
            Phase::Joining { since }
            | Phase::Healthy { since }
            | Phase::Degraded { since }
            | Phase::Suspect { since, .. }
            | Phase::Quarantined { since } => *since,
            Phase::Failed { at, .. } | Phase::Left { at } => *at,
        }
    }
}

/// Everything the fleet tracks for one agent generation.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    id: AgentId,
    phase: Phase,
    /// What only a live generation needs (the liveness detector with its window of intervals,
    /// the signals' anomaly detectors): most of a record's memory, dropped when it ends.
    live: Option<Box<Live>>,
    /// The suspicion when it ended, for display.
    ended_suspicion: f64,
    last_seq: u64,
    last_heartbeat: Option<Time>,
    last_renewal: Option<Time>,
    signals: Signals,
    score: HealthScore,
    transitions: VecDeque<Time>,
    quarantined_until: Option<Time>,
    probe_round: u64,
    last_probe_at: Option<Time>,
    joined_at: Time,
    /// When the fleet's tick must next look at this generation (see [`Fleet::tick`]).
    next_due: Option<Time>,
    /// How long the agent's shims keep its service copies when its process vanishes (from
    /// its Hello; zero: they die with it, and so no hold for an unannounced death).
    reattach_window: Duration,
    /// A verdict held back while it restarts.
    hold: Option<Hold>,
}

/// The part of a record that only a live generation needs.
#[derive(Clone, Debug)]
struct Live {
    detector: Detector,
    /// One per signal kind, made at the signal's first sample: an agent pays only for the
    /// signals it reports (a calibrated detector is about 3 KiB). None for an agent that
    /// judges its signals itself.
    anomalies: [Option<SignalDetector>; SignalKind::ALL.len()],
    /// The verdicts of an agent that judges its signals itself (its last heartbeat's).
    judged: Option<SignalSet>,
}

impl AgentRecord {
    fn new(id: AgentId, cfg: &LifecycleConfig, now: Time) -> Self {
        AgentRecord {
            id,
            phase: Phase::Joining { since: now },
            live: Some(Box::new(Live {
                detector: cfg.detector.build(),
                anomalies: [const { None }; SignalKind::ALL.len()],
                judged: None,
            })),
            ended_suspicion: 0.0,
            last_seq: 0,
            last_heartbeat: None,
            last_renewal: None,
            signals: Signals::default(),
            score: HealthScore::PERFECT,
            transitions: VecDeque::new(),
            quarantined_until: None,
            probe_round: 0,
            last_probe_at: None,
            joined_at: now,
            next_due: None,
            reattach_window: Duration::ZERO,
            hold: None,
        }
    }

    /// The agent's identity.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// Current lifecycle state.
    pub fn state(&self) -> AgentState {
        self.phase.state()
    }

    /// Current phase with its data.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Latest health score.
    pub fn score(&self) -> HealthScore {
        self.score
    }

    /// Latest signals.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Signals currently flagged anomalous.
    pub fn anomalous_signals(&self) -> Vec<SignalKind> {
        if let Some(judged) = self.live.as_ref().and_then(|l| l.judged) {
            return judged.iter().collect();
        }
        SignalKind::ALL
            .into_iter()
            .zip(self.live.iter().flat_map(|l| l.anomalies.iter()))
            .filter(|(_, d)| d.as_ref().is_some_and(SignalDetector::is_anomalous))
            .map(|(k, _)| k)
            .collect()
    }

    /// Whether the agent judges its own signals (its last signals came with its verdicts):
    /// the fleet keeps no anomaly detector for it.
    pub fn judges_own_signals(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.judged.is_some())
    }

    /// When the last heartbeat arrived.
    pub fn last_heartbeat(&self) -> Option<Time> {
        self.last_heartbeat
    }

    /// When the lease was last renewed, on the server's clock (for the fencing rule).
    pub fn last_renewal(&self) -> Option<Time> {
        self.last_renewal
    }

    /// The liveness detector's suspicion at `now` (φ for phi accrual).
    pub fn suspicion(&self, now: Time) -> f64 {
        self.live
            .as_ref()
            .map_or(self.ended_suspicion, |l| l.detector.suspicion(now))
    }

    /// The generation ended: free what only a live generation needs.
    fn retire(&mut self, now: Time) {
        if let Some(l) = self.live.take() {
            self.ended_suspicion = l.detector.suspicion(now);
        }
        self.transitions = VecDeque::new();
    }

    /// When the generation joined.
    pub fn joined_at(&self) -> Time {
        self.joined_at
    }

    /// Evidence of death for the fencing rule (only meaningful once Failed).
    pub fn death_evidence(&self) -> DeathEvidence {
        match self.phase {
            Phase::Failed { death, .. } => death,
            Phase::Joining { .. }
            | Phase::Healthy { .. }
            | Phase::Degraded { .. }
            | Phase::Suspect { .. }
            | Phase::Quarantined { .. }
            | Phase::Left { .. } => DeathEvidence::None,
        }
    }

    fn is_unhealthy(&self, health: &HealthConfig) -> Option<Cause> {
        let degraded = self.state() == AgentState::Degraded;
        if !health.is_healthy(self.score, degraded) {
            return Some(Cause::LowScore {
                score: self.score.0,
            });
        }
        self.anomalous_signals()
            .first()
            .map(|&signal| Cause::Anomaly { signal })
    }

    /// The live state this agent should be in when nothing is wrong with its liveness.
    fn settled_state(&self, cfg: &LifecycleConfig, now: Time) -> (AgentState, Option<Cause>) {
        if self.quarantined_until.is_some_and(|u| now < u) {
            return (AgentState::Quarantined, None);
        }
        match self.is_unhealthy(&cfg.health) {
            Some(c) => (AgentState::Degraded, Some(c)),
            None => (AgentState::Healthy, None),
        }
    }
}

/// The lifecycle of every agent in the fleet. See the module docs.
#[derive(Clone, Debug)]
pub struct Fleet {
    cfg: LifecycleConfig,
    /// Records are boxed: the map's table then holds pointers, so its growth under churn (it
    /// doubles when tombstones fill it) costs a few bytes per generation, not a record's size.
    agents: FxHashMap<AgentId, Box<AgentRecord>>,
    /// The newest generation of each name: the only one that can still be live.
    current: FxHashMap<Arc<str>, u64>,
    suspect_entries: VecDeque<(Time, AgentId)>,
    brake_since: Option<Time>,
    /// While the brake is engaged: since when the Suspect count has been below the mass.
    brake_cleared_at: Option<Time>,
    /// The fleet the brake last counted, and when: the yardstick of a cheap first check
    /// (counted at least once a second, and whenever the brake has a decision to take).
    fleet_at_tick: usize,
    fleet_counted_at: Option<Time>,
    /// Live generations by the slot of time in which the tick must next look at them. An
    /// entry is a hint: one whose generation's `next_due` has moved since is skipped.
    wheel: BTreeMap<u64, Vec<AgentId>>,
}

impl Fleet {
    /// An empty fleet. Fails when the configuration is impossible.
    pub fn new(cfg: LifecycleConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Fleet {
            cfg,
            agents: FxHashMap::default(),
            current: FxHashMap::default(),
            suspect_entries: VecDeque::new(),
            brake_since: None,
            brake_cleared_at: None,
            fleet_at_tick: 0,
            fleet_counted_at: None,
            wheel: BTreeMap::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }

    /// One agent generation's record.
    pub fn agent(&self, id: &AgentId) -> Option<&AgentRecord> {
        self.agents.get(id).map(|r| &**r)
    }

    /// The newest generation of the agent called `name`.
    pub fn current(&self, name: &str) -> Option<&AgentRecord> {
        let generation = *self.current.get(name)?;
        self.agents
            .get(&AgentId::new(name, generation))
            .map(|r| &**r)
    }

    /// Every generation of every agent held (live, and ended within the retention window), in
    /// no particular order.
    pub fn agents(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values().map(|r| &**r)
    }

    /// Whether the mass-failure brake is engaged.
    pub fn brake_engaged(&self) -> bool {
        self.brake_since.is_some()
    }

    /// Forget one generation entirely, to bound memory once it has ended and nothing refers
    /// to it. When it was the newest of its name, the name is forgotten too: a later Hello of
    /// that name is then judged as after a server restart (a new generation joins; an old one
    /// reconnecting is taken back, and the planner stops any copy of it that was replaced).
    pub fn forget(&mut self, id: &AgentId) {
        self.agents.remove(id);
        if self.current.get(&id.name) == Some(&id.generation) {
            self.current.remove(&id.name);
        }
    }

    /// Record a generation this fleet never saw whose name already has a newer one (found in
    /// the store's task records after a restart): its process is gone, so it is Failed with
    /// that evidence from `now`. A no-op for a known generation.
    pub fn record_superseded(&mut self, id: AgentId, now: Time) {
        if self.agents.contains_key(&id) {
            return;
        }
        let mut rec = AgentRecord::new(id.clone(), &self.cfg, now);
        rec.phase = Phase::Failed {
            at: now,
            death: DeathEvidence::ProcessGone { at: now },
        };
        rec.retire(now);
        self.agents.insert(id, Box::new(rec));
    }

    /// A generation opens its first session. A newer generation supersedes older ones (their
    /// process has restarted, so the old one is gone); an older or equal one is refused with
    /// [`Output::StaleGeneration`].
    pub fn join(&mut self, id: AgentId, now: Time) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(&cur) = self.current.get(&id.name) {
            if id.generation <= cur {
                if id.generation == cur
                    && let Some(rec) = self.agents.get(&id)
                    && !rec.state().is_terminal()
                {
                    // A reconnect that used `join` instead of `SessionOpened`: same thing.
                    return self.step(&id, AgentEvent::SessionOpened, now);
                }
                out.push(Output::StaleGeneration { agent: id });
                return out;
            }
            let old = AgentId::new(id.name.clone(), cur);
            if let Some(rec) = self.agents.get(&old)
                && !rec.state().is_terminal()
            {
                let cause = Cause::Superseded { by: id.generation };
                let death = DeathEvidence::ProcessGone { at: now };
                self.force_failed(&old, cause, death, now, &mut out);
            }
        }
        self.current.insert(id.name.clone(), id.generation);
        self.agents.insert(
            id.clone(),
            Box::new(AgentRecord::new(id.clone(), &self.cfg, now)),
        );
        self.schedule(&id, now);
        out
    }

    /// A standby replica's correction: generation `id` opens a session although this fleet
    /// took it as ended. On a standby the fleet is only an opinion — the leader alone decides
    /// that a generation is over — so the generation gets a fresh record (Joining) and its
    /// heartbeats count again. A generation older than the newest known stays refused
    /// ([`Output::StaleGeneration`]); a new one joins as with [`Fleet::join`].
    pub fn reinstate(&mut self, id: AgentId, now: Time) -> Vec<Output> {
        match self.current.get(&id.name) {
            Some(&cur) if id.generation < cur => vec![Output::StaleGeneration { agent: id }],
            Some(&cur)
                if id.generation == cur
                    && self
                        .agents
                        .get(&id)
                        .is_some_and(|r| r.state().is_terminal()) =>
            {
                self.agents.insert(
                    id.clone(),
                    Box::new(AgentRecord::new(id.clone(), &self.cfg, now)),
                );
                self.schedule(&id, now);
                Vec::new()
            }
            _ => self.join(id, now),
        }
    }

    /// Apply one event to one agent generation.
    pub fn step(&mut self, id: &AgentId, event: AgentEvent, now: Time) -> Vec<Output> {
        let out = self.apply_event(id, event, now);
        self.schedule(id, now);
        out
    }

    fn apply_event(&mut self, id: &AgentId, event: AgentEvent, now: Time) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(rec) = self.agents.get_mut(id) else {
            out.push(Output::StaleGeneration { agent: id.clone() });
            return out;
        };
        let state = rec.state();
        match (state, event) {
            (AgentState::Failed | AgentState::Left, AgentEvent::Heartbeat { .. })
            | (AgentState::Failed | AgentState::Left, AgentEvent::SessionOpened)
            | (
                AgentState::Failed | AgentState::Left,
                AgentEvent::Signals(_) | AgentEvent::JudgedSignals { .. },
            ) => {
                out.push(Output::StaleGeneration { agent: id.clone() });
            }
            (
                AgentState::Failed | AgentState::Left,
                AgentEvent::SessionLost
                | AgentEvent::Probes(_)
                | AgentEvent::LeaseExpired
                | AgentEvent::Leave
                | AgentEvent::Restarting { .. }
                | AgentEvent::Tick,
            ) => {}
            (_, AgentEvent::SessionOpened) => {
                if let Phase::Suspect { evidence, .. } = &mut rec.phase {
                    evidence.0.session_lost = false;
                }
            }
            (_, AgentEvent::Heartbeat { seq }) => {
                if seq <= rec.last_seq {
                    return out;
                }
                rec.last_seq = seq;
                if let Some(l) = rec.live.as_mut() {
                    l.detector.heartbeat(seq, now);
                }
                rec.last_heartbeat = Some(now);
                rec.last_renewal = Some(now);
                // Back (a new process resumed the generation): nothing is held any more.
                rec.hold = None;
                out.push(Output::RenewLease {
                    agent: id.clone(),
                    seq,
                });
                match state {
                    AgentState::Joining => {
                        let (to, _) = rec.settled_state(&self.cfg, now);
                        self.transition(id, to, Cause::FirstHeartbeat, now, &mut out);
                    }
                    AgentState::Suspect => {
                        let (to, _) = rec.settled_state(&self.cfg, now);
                        self.transition(id, to, Cause::HeartbeatResumed, now, &mut out);
                    }
                    AgentState::Healthy
                    | AgentState::Degraded
                    | AgentState::Quarantined
                    | AgentState::Failed
                    | AgentState::Left => {}
                }
            }
            (_, event @ (AgentEvent::Signals(_) | AgentEvent::JudgedSignals { .. })) => {
                let (signals, judged) = match event {
                    AgentEvent::JudgedSignals { signals, anomalous } => (signals, Some(anomalous)),
                    AgentEvent::Signals(signals) => (signals, None),
                    _ => return out,
                };
                rec.signals = signals;
                rec.score = self.cfg.health.score(&signals);
                if let Some(live) = rec.live.as_mut() {
                    match judged {
                        // The agent's word: no detector kept (those kept from before the agent
                        // judged are dropped when it starts).
                        Some(set) => {
                            if live.judged.replace(set).is_none() {
                                live.anomalies = [const { None }; SignalKind::ALL.len()];
                            }
                        }
                        None => {
                            live.judged = None;
                            for (kind, det) in SignalKind::ALL.into_iter().zip(&mut live.anomalies)
                            {
                                if let Some(v) = signals.get(kind) {
                                    det.get_or_insert_with(|| {
                                        SignalDetector::for_signal(&self.cfg.anomaly, kind)
                                    })
                                    .judge(now.as_secs_f64(), v);
                                }
                            }
                        }
                    }
                }
                match state {
                    AgentState::Healthy => {
                        if let Some(cause) = rec.is_unhealthy(&self.cfg.health) {
                            self.transition(id, AgentState::Degraded, cause, now, &mut out);
                        }
                    }
                    AgentState::Degraded => {
                        if rec.is_unhealthy(&self.cfg.health).is_none() {
                            let cause = Cause::Recovered { score: rec.score.0 };
                            self.transition(id, AgentState::Healthy, cause, now, &mut out);
                        }
                    }
                    AgentState::Joining
                    | AgentState::Suspect
                    | AgentState::Quarantined
                    | AgentState::Failed
                    | AgentState::Left => {}
                }
            }
            // A Joining generation has not heartbeated *to this replica*, but it may hold
            // work and a lease all the same: one known from the task records after a restart
            // or a change of leader, or one that reconnected as itself. A session that drops
            // is no proof that its process is gone (the agent may just have given the
            // connection up): it is suspected and probed like any other.
            (
                AgentState::Joining
                | AgentState::Healthy
                | AgentState::Degraded
                | AgentState::Quarantined,
                AgentEvent::SessionLost,
            ) => {
                self.suspect(id, Cause::SessionLost, now, &mut out);
                if let Some(rec) = self.agents.get_mut(id)
                    && let Phase::Suspect { evidence, .. } = &mut rec.phase
                {
                    evidence.0.session_lost = true;
                }
            }
            (AgentState::Suspect, AgentEvent::SessionLost) => {
                if let Phase::Suspect { evidence, .. } = &mut rec.phase
                    && !evidence.0.session_lost
                {
                    evidence.0.session_lost = true;
                    // New evidence: probe again now rather than at the next interval.
                    self.request_probe(id, now, &mut out);
                }
            }
            (AgentState::Suspect, AgentEvent::Probes(report)) => {
                if report.round != rec.probe_round {
                    return out;
                }
                let Phase::Suspect { evidence, .. } = &mut rec.phase else {
                    return out;
                };
                let ev = &mut evidence.0;
                if report.answered() {
                    // Alive. It stays Suspect until heartbeats resume or the lease runs out.
                    ev.answered = true;
                } else if report.refused() && ev.session_lost {
                    ev.pending = Some(PendingFailure::ProcessGone { at: now });
                } else if report.all_failed() && ev.pending.is_none() {
                    ev.pending = Some(PendingFailure::ProbesFailed);
                }
                self.apply_pending(id, now, &mut out);
            }
            (
                AgentState::Joining
                | AgentState::Healthy
                | AgentState::Degraded
                | AgentState::Quarantined,
                AgentEvent::Probes(_),
            ) => {}
            (_, AgentEvent::LeaseExpired) => self.lease_expired(id, now, &mut out, true),
            (_, AgentEvent::Leave) => {
                self.transition(id, AgentState::Left, Cause::Leave, now, &mut out);
            }
            (_, AgentEvent::Restarting { window }) => {
                rec.hold = Some(Hold {
                    until: now + window.min(MAX_HOLD),
                    planned: true,
                });
            }
            (_, AgentEvent::Tick) => {
                self.tick_agent(id, now, &mut out);
                self.apply_pending(id, now, &mut out);
            }
        }
        out
    }

    /// Let time pass for every agent: detector deadlines, lease expiry, probe retries,
    /// quarantine ends, and the brake.
    pub fn tick(&mut self, now: Time) -> Vec<Output> {
        let mut out = Vec::new();
        self.update_brake(now, &mut out);
        // Only the generations due now are looked at: a live generation is due when its
        // detector would suspect it, its lease would surely have run out or its quarantine
        // ends; a Suspect one at every tick. So a tick costs what is due, not the fleet.
        let slot = self.wheel_slot(now);
        let mut due: Vec<AgentId> = Vec::new();
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > slot {
                break;
            }
            due.extend(entry.remove());
        }
        let mut seen = crate::hash::FxHashSet::default();
        let mut later = Vec::new();
        due.retain(|id| match self.agents.get(id).and_then(|r| r.next_due) {
            Some(d) if d <= now => seen.insert(id.clone()),
            // Due later in this same slot: filed again below.
            Some(d) if self.wheel_slot(d) == slot => {
                later.push(id.clone());
                false
            }
            // Moved (a newer entry stands) or no longer live.
            Some(_) | None => false,
        });
        for id in later {
            self.wheel.entry(slot).or_default().push(id);
        }
        // First every due agent's news — suspicions, leases run out — then the brake counts
        // them all, then the verdicts: a mass of leases running out in one tick (the server
        // itself was starved, say) engages the brake before anybody is declared Failed.
        for id in &due {
            self.tick_agent(id, now, &mut out);
        }
        if due.len() > 1 {
            self.update_brake(now, &mut out);
        }
        for id in due {
            self.apply_pending(&id, now, &mut out);
            // Its wheel entry was taken: file it again even if its due time stands.
            if let Some(r) = self.agents.get_mut(&id) {
                r.next_due = None;
            }
            self.schedule(&id, now);
        }
        out
    }

    /// The wheel's slot of `t` (one per 10 ms).
    fn wheel_slot(&self, t: Time) -> u64 {
        t.as_nanos() / 10_000_000
    }

    /// Work out when `id` is next due and file it in the wheel.
    fn schedule(&mut self, id: &AgentId, now: Time) {
        let Some(rec) = self.agents.get_mut(id) else {
            return;
        };
        let lease = rec
            .last_renewal
            .map(|r| self.cfg.fencing.lease_surely_expired_at(r));
        let own = match rec.state() {
            AgentState::Failed | AgentState::Left => {
                rec.next_due = None;
                return;
            }
            AgentState::Suspect => Some(now),
            AgentState::Joining => None,
            AgentState::Healthy | AgentState::Degraded => {
                rec.live.as_ref().and_then(|l| l.detector.suspect_at())
            }
            AgentState::Quarantined => {
                let suspect = rec.live.as_ref().and_then(|l| l.detector.suspect_at());
                match (suspect, rec.quarantined_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        let due = match (own, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if rec.next_due == due {
            return;
        }
        rec.next_due = due;
        if let Some(d) = due {
            let slot = d.as_nanos() / 10_000_000;
            self.wheel.entry(slot).or_default().push(id.clone());
        }
    }

    /// Release the brake by hand (operator override). It engages again only on a new wave of
    /// suspicion.
    pub fn release_brake(&mut self, now: Time) -> Vec<Output> {
        let mut out = Vec::new();
        if self.brake_since.take().is_some() {
            self.brake_cleared_at = None;
            self.suspect_entries.clear();
            out.push(Output::Alarm(Alarm::BrakeReleased { at: now }));
        }
        out
    }

    fn tick_agent(&mut self, id: &AgentId, now: Time, out: &mut Vec<Output>) {
        let Some(rec) = self.agents.get(id) else {
            return;
        };
        if rec
            .last_renewal
            .is_some_and(|r| now >= self.cfg.fencing.lease_surely_expired_at(r))
        {
            self.lease_expired(id, now, out, false);
            return;
        }
        match rec.state() {
            AgentState::Healthy | AgentState::Degraded | AgentState::Quarantined => {
                if let Some(l) = rec.live.as_ref()
                    && l.detector.is_suspect(now)
                {
                    let suspicion = l.detector.suspicion(now);
                    self.suspect(id, Cause::Detector { suspicion }, now, out);
                } else if rec.state() == AgentState::Quarantined
                    && rec.quarantined_until.is_some_and(|u| now >= u)
                {
                    let (to, _) = rec.settled_state(&self.cfg, now);
                    self.transition(id, to, Cause::QuarantineOver, now, out);
                }
            }
            AgentState::Suspect => {
                if rec
                    .last_probe_at
                    .is_none_or(|t| now >= t + self.cfg.probe_interval)
                {
                    self.request_probe(id, now, out);
                }
            }
            AgentState::Joining | AgentState::Failed | AgentState::Left => {}
        }
    }

    /// The lease surely ran out. With `apply`, the verdict is applied at once (unless the
    /// brake holds it); without, it is only recorded, for the caller to apply once it has
    /// counted every suspicion of the moment (a tick, see [`Fleet::tick`]).
    fn lease_expired(&mut self, id: &AgentId, now: Time, out: &mut Vec<Output>, apply: bool) {
        let Some(rec) = self.agents.get(id) else {
            return;
        };
        match rec.state() {
            AgentState::Joining => {
                let death = DeathEvidence::None;
                self.force_failed(id, Cause::LeaseExpired, death, now, out);
            }
            AgentState::Healthy | AgentState::Degraded | AgentState::Quarantined => {
                self.suspect(id, Cause::LeaseExpired, now, out);
                self.set_pending(id, PendingFailure::LeaseExpired);
                if apply {
                    self.apply_pending(id, now, out);
                }
            }
            AgentState::Suspect => {
                self.set_pending(id, PendingFailure::LeaseExpired);
                if apply {
                    self.apply_pending(id, now, out);
                }
            }
            AgentState::Failed | AgentState::Left => {}
        }
    }

    fn set_pending(&mut self, id: &AgentId, p: PendingFailure) {
        if let Some(rec) = self.agents.get_mut(id)
            && let Phase::Suspect { evidence, .. } = &mut rec.phase
        {
            // Keep the strongest evidence: a confirmed process death beats the rest.
            match evidence.0.pending {
                Some(PendingFailure::ProcessGone { .. }) => {}
                _ => evidence.0.pending = Some(p),
            }
        }
    }

    /// Declare Failed if evidence is complete and the brake allows it.
    fn apply_pending(&mut self, id: &AgentId, now: Time, out: &mut Vec<Output>) {
        let Some(rec) = self.agents.get(id) else {
            return;
        };
        let Phase::Suspect { evidence, .. } = rec.phase else {
            return;
        };
        let Some(pending) = evidence.0.pending else {
            return;
        };
        if self.brake_since.is_some() {
            return;
        }
        if self.held(id, pending, now, out) {
            return;
        }
        let held_over = self
            .agents
            .get(id)
            .is_some_and(|r| r.hold.is_some_and(|h| now >= h.until));
        let (cause, death) = match pending {
            PendingFailure::ProcessGone { at } => {
                (Cause::ProcessGone, DeathEvidence::ProcessGone { at })
            }
            PendingFailure::ProbesFailed => {
                // Probes failing is not proof that the process is gone; the fencing rule will
                // wait for the lease.
                (Cause::ProbesFailed, DeathEvidence::None)
            }
            PendingFailure::LeaseExpired => (Cause::LeaseExpired, DeathEvidence::None),
        };
        let cause = if held_over {
            Cause::NotBackInTime
        } else {
            cause
        };
        self.force_failed(id, cause, death, now, out);
    }

    /// Whether the verdict on `id` is held back (see the module's rules); releases its
    /// singletons when they are surely dead.
    fn held(
        &mut self,
        id: &AgentId,
        pending: PendingFailure,
        now: Time,
        out: &mut Vec<Output>,
    ) -> bool {
        let kill_grace = self.cfg.fencing.kill_grace;
        let lease_out = |r: &AgentRecord| {
            r.last_renewal
                .is_none_or(|t| now >= self.cfg.fencing.lease_surely_expired_at(t))
        };
        let Some(rec) = self.agents.get(id) else {
            return false;
        };
        let lease_over = lease_out(rec);
        let Some(rec) = self.agents.get_mut(id) else {
            return false;
        };
        // An unannounced process death on a live host: its shims keep its service copies
        // for its reattach window.
        if let PendingFailure::ProcessGone { at } = pending
            && rec.hold.is_none()
            && !rec.reattach_window.is_zero()
        {
            rec.hold = Some(Hold {
                until: at + rec.reattach_window.min(MAX_HOLD),
                planned: false,
            });
        }
        let Some(hold) = rec.hold.as_mut() else {
            return false;
        };
        if now >= hold.until {
            return false;
        }
        // Given at every look while it applies (not once): only the leader acts on it, and a
        // replica that becomes leader during the hold must act too. The controller moves only
        // singletons still placed on the agent, so a repeat changes nothing.
        {
            let why = match pending {
                PendingFailure::ProcessGone { at } if !hold.planned && now >= at + kill_grace => {
                    Some("its agent's process is gone and its shim killed it")
                }
                _ if lease_over => Some("its agent's lease surely ran out while it restarted"),
                _ => None,
            };
            if let Some(why) = why {
                out.push(Output::ReleaseSingletons {
                    agent: id.clone(),
                    why,
                });
            }
        }
        true
    }

    /// The reattach window the agent's Hello declared (see [`Output::ReleaseSingletons`]).
    pub fn set_reattach_window(&mut self, id: &AgentId, window: Duration) {
        if let Some(rec) = self.agents.get_mut(id) {
            rec.reattach_window = window;
        }
    }

    /// Whether a verdict on `id` is being held while it restarts, and until when.
    pub fn held_until(&self, id: &AgentId) -> Option<Time> {
        self.agents.get(id)?.hold.map(|h| h.until)
    }

    fn suspect(&mut self, id: &AgentId, cause: Cause, now: Time, out: &mut Vec<Output>) {
        self.transition(id, AgentState::Suspect, cause, now, out);
        self.suspect_entries.push_back((now, id.clone()));
        self.brake_on_suspicion(now, out);
        self.request_probe(id, now, out);
    }

    fn request_probe(&mut self, id: &AgentId, now: Time, out: &mut Vec<Output>) {
        if let Some(rec) = self.agents.get_mut(id) {
            rec.probe_round += 1;
            rec.last_probe_at = Some(now);
            out.push(Output::Probe {
                agent: id.clone(),
                round: rec.probe_round,
            });
        }
    }

    fn force_failed(
        &mut self,
        id: &AgentId,
        cause: Cause,
        death: DeathEvidence,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let Some(rec) = self.agents.get_mut(id) else {
            return;
        };
        let from = rec.state();
        if from.is_terminal() {
            return;
        }
        rec.phase = Phase::Failed { at: now, death };
        rec.retire(now);
        out.push(Output::Transition(Transition {
            agent: id.clone(),
            from,
            to: AgentState::Failed,
            at: now,
            cause,
        }));
    }

    /// Move to `to` (a non-Failed state), applying flap damping.
    fn transition(
        &mut self,
        id: &AgentId,
        mut to: AgentState,
        mut cause: Cause,
        now: Time,
        out: &mut Vec<Output>,
    ) {
        let window = self.cfg.flap_window;
        let max = self.cfg.flap_max_transitions;
        let quarantine_for = self.cfg.quarantine_for;
        let Some(rec) = self.agents.get_mut(id) else {
            return;
        };
        let from = rec.state();
        if from == to || from.is_terminal() {
            return;
        }
        if to != AgentState::Left {
            while rec
                .transitions
                .front()
                .is_some_and(|&t| now.saturating_since(t) > window)
            {
                rec.transitions.pop_front();
            }
            rec.transitions.push_back(now);
            let count = u32::try_from(rec.transitions.len()).unwrap_or(u32::MAX);
            if count > max && matches!(to, AgentState::Healthy | AgentState::Degraded) {
                rec.quarantined_until = Some(now + quarantine_for);
                to = AgentState::Quarantined;
                cause = Cause::Flapping { transitions: count };
                if from == to {
                    return;
                }
            }
        }
        rec.phase = match to {
            AgentState::Joining => Phase::Joining { since: now },
            AgentState::Healthy => Phase::Healthy { since: now },
            AgentState::Degraded => Phase::Degraded { since: now },
            AgentState::Suspect => Phase::Suspect {
                since: now,
                evidence: SuspectEvidence::default(),
            },
            AgentState::Quarantined => Phase::Quarantined { since: now },
            AgentState::Left => Phase::Left { at: now },
            AgentState::Failed => Phase::Failed {
                at: now,
                death: DeathEvidence::None,
            },
        };
        if to == AgentState::Healthy || to == AgentState::Degraded {
            rec.quarantined_until = rec.quarantined_until.filter(|&u| now < u);
        }
        if to.is_terminal() {
            rec.retire(now);
        }
        out.push(Output::Transition(Transition {
            agent: id.clone(),
            from,
            to,
            at: now,
            cause,
        }));
    }

    /// Engage or release the mass-failure brake.
    /// The brake's check when one more agent turns Suspect: cheap unless the suspicions in the
    /// window could be a mass, so that a mass event (every session of the fleet lost at once)
    /// costs O(fleet) per tick, not per suspicion. Release is judged on ticks only.
    fn brake_on_suspicion(&mut self, now: Time, out: &mut Vec<Output>) {
        if self.brake_since.is_some() {
            return;
        }
        self.prune_suspicions(now);
        // Entries count an agent once per suspicion, so they bound the distinct suspects
        // from above; the fleet was counted at the last tick.
        let entries = self.suspect_entries.len();
        if entries < self.cfg.brake_min_agents as usize
            || entries as f64 <= self.cfg.brake_share * self.fleet_at_tick as f64
        {
            return;
        }
        self.update_brake(now, out);
    }

    /// Drop the suspicions older than the brake's window.
    fn prune_suspicions(&mut self, now: Time) {
        let window = self.cfg.brake_window;
        while self
            .suspect_entries
            .front()
            .is_some_and(|(t, _)| now.saturating_since(*t) > window)
        {
            self.suspect_entries.pop_front();
        }
    }

    fn update_brake(&mut self, now: Time, out: &mut Vec<Output>) {
        self.prune_suspicions(now);
        let window = self.cfg.brake_window;
        // Agents (names), not generations: a host whose process was killed twice in the
        // window is one suspect, and one that came back as a new generation is none.
        let recent: crate::hash::FxHashSet<&str> = self
            .suspect_entries
            .iter()
            .map(|(_, id)| id)
            .filter(|id| {
                self.current.get(&id.name) == Some(&id.generation)
                    && self.agents.get(*id).is_some_and(|r| {
                        matches!(r.state(), AgentState::Suspect | AgentState::Failed)
                    })
            })
            .map(|id| &*id.name)
            .collect();
        let suspects = recent.len();
        let quiet = self.brake_since.is_none() && suspects < self.cfg.brake_min_agents as usize;
        let counted_lately = self
            .fleet_counted_at
            .is_some_and(|t| now.saturating_since(t) < Duration::from_secs(1));
        if quiet && counted_lately {
            return; // too few to be a mass, whatever the fleet's size
        }
        // The newest generation of each name: the only ones that can be live.
        let newest = || {
            self.current
                .iter()
                .filter_map(|(name, g)| self.agents.get(&AgentId::new(name.clone(), *g)))
        };
        let fleet = newest()
            .filter(|r| match r.phase {
                Phase::Left { .. } => false,
                Phase::Failed { at, .. } => now.saturating_since(at) <= window,
                Phase::Joining { .. } => false,
                Phase::Healthy { .. }
                | Phase::Degraded { .. }
                | Phase::Suspect { .. }
                | Phase::Quarantined { .. } => true,
            })
            .count();
        self.fleet_at_tick = fleet;
        self.fleet_counted_at = Some(now);
        let (min, share) = (self.cfg.brake_min_agents as usize, self.cfg.brake_share);
        let over = move |n: usize| n >= min && n as f64 > share * fleet as f64;
        match self.brake_since {
            None if over(suspects) => {
                self.brake_since = Some(now);
                out.push(Output::Alarm(Alarm::BrakeEngaged {
                    at: now,
                    suspects: u32::try_from(suspects).unwrap_or(u32::MAX),
                    fleet: u32::try_from(fleet).unwrap_or(u32::MAX),
                }));
            }
            Some(_) => {
                // Release once the agents still Suspect have not been a mass for `brake_hold`.
                let still = newest()
                    .filter(|r| r.state() == AgentState::Suspect)
                    .count();
                if over(still) {
                    self.brake_cleared_at = None;
                } else {
                    let since = *self.brake_cleared_at.get_or_insert(now);
                    if now.saturating_since(since) >= self.cfg.brake_hold {
                        self.brake_since = None;
                        self.brake_cleared_at = None;
                        self.suspect_entries.clear();
                        out.push(Output::Alarm(Alarm::BrakeReleased { at: now }));
                    }
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
