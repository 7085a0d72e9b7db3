//! A deterministic, seeded simulation of the control plane and its agents over a faulty
//! network, checking **at-most-one** and **no-lost-work** on every fault schedule.
//!
//! One [`Controller`](crate::controller::Controller) — the real one, stepped with the times of
//! a simulated clock — runs against a simulated store (compare-and-set on slot epochs, an
//! ordered writer with latency), simulated agents and a simulated [`Network`](net::Network)
//! with `cut`, `heal`, `delay` and `drop`. The agents follow the real agent's safety rules:
//! the lease measured on the agent's own clock (running up to ρ fast or slow) from each
//! acknowledged heartbeat's *send* time; every singleton killed no later than `kill_grace`
//! after its lease ran out, whether the agent runs or is paused (the shim's deadline); no
//! singleton started without a live lease; orders with a stale epoch refused; a `Rejoin` ends
//! the generation. A killed agent's copies die with it and it restarts as a new generation.
//!
//! A [`Schedule`] of faults — kill, pause, cut both ways or one way, delay, drop, a server
//! restart — is drawn from a seed. Each run has two phases, as in openraft's fuzzer: a
//! *safety* phase while faults happen, then a *liveness* phase once every fault has healed.
//! Two checkers judge it:
//!
//! - **at-most-one**: at no instant do two copies of one singleton task run (checked at every
//!   copy start, over every agent's processes, paused ones included);
//! - **no-lost-work**: at the end of the liveness phase every task slot has exactly one live
//!   copy, at the epoch the store holds, on the generation the store names, and no stale copy
//!   runs anywhere.
//!
//! The controller's own consistency ([`Controller::check_invariants`]) is checked after
//! every step. A failing seed replays exactly: `run(&Schedule::generate(seed, &cfg), &cfg)`.
//!
//! [`Controller::check_invariants`]: crate::controller::Controller::check_invariants
//!
//! ```
//! use warden_core::sim::{self, Schedule, SimConfig};
//!
//! let cfg = SimConfig::default();
//! let schedule = Schedule::generate(7, &cfg);
//! let report = sim::run(&schedule, &cfg);
//! assert!(report.violations.is_empty(), "{schedule}\n{:?}", report.violations);
//! ```

pub mod net;
pub mod scale;
mod world;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use crate::controller::ControllerConfig;
use crate::rng::Rng;
use crate::types::TaskId;

/// What a simulation runs: the fleet, the work, the phases.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Agents (one per host).
    pub agents: usize,
    /// Singleton jobs (one copy each).
    pub singletons: u32,
    /// Replicas of the one service job.
    pub service_replicas: u32,
    /// The safety phase: faults start and end within it.
    pub chaos: Duration,
    /// The liveness phase: everything healed, the work must settle.
    pub settle: Duration,
    /// Most faults in one schedule.
    pub max_faults: usize,
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// Agents that ignore their lease (never fence, start singletons without one): a broken
    /// agent, to show that the at-most-one checker catches what it must.
    pub agents_ignore_lease: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            agents: 5,
            singletons: 3,
            service_replicas: 3,
            chaos: Duration::from_secs(20),
            settle: Duration::from_secs(30),
            max_faults: 4,
            controller: ControllerConfig::default(),
            agents_ignore_lease: false,
        }
    }
}

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    /// SIGKILL the agent (its copies die with it); it starts again as a new generation when
    /// the fault ends.
    Kill,
    /// SIGSTOP the agent until the fault ends (its shims keep their deadlines).
    Pause,
    /// Cut the host off both ways (messages are held until the cut heals).
    Cut,
    /// Cut only server → agent.
    CutDown,
    /// Cut only agent → server.
    CutUp,
    /// Add latency both ways.
    Delay(Duration),
    /// Lose this share of the messages both ways.
    Drop(f64),
    /// The server process dies and starts again when the fault ends, from the store.
    ServerRestart,
    /// An operator submits a new version of every job (new arguments): its copies are
    /// replaced in waves while the other faults go on. Not a fault of the fleet, but the
    /// change most outages follow, so it is scheduled like one.
    Update,
}

/// A fault: what, on which host, from when, for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Start, from the beginning of the run.
    pub at: Duration,
    /// The host (ignored by [`FaultKind::ServerRestart`]).
    pub host: usize,
    /// What.
    pub kind: FaultKind,
    /// How long until it heals.
    pub length: Duration,
}

/// The faults of one run, drawn from a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The seed: it determines the faults and every random choice of the run.
    pub seed: u64,
    /// The faults, by start time.
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// Draw a schedule from `seed`: 1 to `max_faults` faults, each starting after the fleet
    /// settled (3 s) and healed before the safety phase ends, never two at once on one host
    /// (nor two server restarts at once).
    pub fn generate(seed: u64, cfg: &SimConfig) -> Self {
        let mut rng = Rng::stream(seed, 0);
        let first = Duration::from_secs(3);
        let last = cfg.chaos.saturating_sub(Duration::from_millis(500));
        let mut faults: Vec<Fault> = Vec::new();
        let n = 1 + rng.below(cfg.max_faults.max(1) as u64) as usize;
        let mut tries = 0;
        while faults.len() < n && tries < 100 && last > first {
            tries += 1;
            let at = Duration::from_millis(
                rng.range_u64(first.as_millis() as u64, last.as_millis() as u64),
            );
            let kind = match rng.below(16) {
                0..=2 => FaultKind::Kill,
                3..=5 => FaultKind::Pause,
                6..=7 => FaultKind::Cut,
                8..=9 => FaultKind::CutDown,
                10..=11 => FaultKind::CutUp,
                12 => FaultKind::Delay(Duration::from_millis(rng.range_u64(50, 3_000))),
                13..=14 => FaultKind::Drop(rng.range_f64(0.1, 0.7)),
                _ => FaultKind::ServerRestart,
            };
            let longest = match kind {
                FaultKind::ServerRestart => 3_000,
                _ => 8_000,
            };
            let length = Duration::from_millis(rng.range_u64(100, longest));
            let length = length.min(last.saturating_sub(at));
            let host = rng.below(cfg.agents.max(1) as u64) as usize;
            let server = kind == FaultKind::ServerRestart;
            let overlaps = faults.iter().any(|f| {
                let same = if server {
                    f.kind == FaultKind::ServerRestart
                } else {
                    f.kind != FaultKind::ServerRestart && f.host == host
                };
                same && at < f.at + f.length + Duration::from_millis(100) && f.at < at + length
            });
            if !overlaps && !length.is_zero() {
                faults.push(Fault {
                    at,
                    host,
                    kind,
                    length,
                });
            }
        }
        // Half the schedules also roll a new version out at some point (drawn from a stream
        // of its own, so that the faults above are those of the same seed before rollouts).
        let mut updates = Rng::stream(seed, 1);
        if last > first && updates.below(2) == 0 {
            let at = Duration::from_millis(
                updates.range_u64(first.as_millis() as u64, last.as_millis() as u64),
            );
            faults.push(Fault {
                at,
                host: 0,
                kind: FaultKind::Update,
                length: Duration::from_millis(1),
            });
        }
        faults.sort_by_key(|f| f.at);
        Schedule { seed, faults }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schedule seed {}:", self.seed)?;
        for x in &self.faults {
            let what = match x.kind {
                FaultKind::Kill => format!("kill agent-{}", x.host),
                FaultKind::Update => "a new version of every job".to_string(),
                FaultKind::Pause => format!("pause agent-{}", x.host),
                FaultKind::Cut => format!("cut agent-{}", x.host),
                FaultKind::CutDown => format!("cut server→agent-{}", x.host),
                FaultKind::CutUp => format!("cut agent-{}→server", x.host),
                FaultKind::Delay(d) => format!("delay agent-{} by {} ms", x.host, d.as_millis()),
                FaultKind::Drop(p) => format!("drop {:.0}% at agent-{}", p * 100.0, x.host),
                FaultKind::ServerRestart => "restart the server".to_string(),
            };
            write!(
                f,
                " [{what} at {:.3}s for {:.3}s]",
                x.at.as_secs_f64(),
                x.length.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// A broken promise.
#[derive(Clone, Debug, PartialEq)]
pub enum Violation {
    /// Two copies of a singleton ran at once.
    TwoLive {
        /// The task.
        task: TaskId,
        /// When the second started (ms into the run).
        at_ms: u64,
        /// The copies: `agent-N#generation@epoch`.
        copies: Vec<String>,
    },
    /// A slot did not end with exactly one live copy at the store's epoch.
    LostWork {
        /// The task.
        task: TaskId,
        /// What was found.
        found: String,
    },
    /// A copy whose slot moved on still ran at the end.
    Orphan {
        /// The task.
        task: TaskId,
        /// The copy.
        copy: String,
    },
    /// The controller's structures disagreed with each other.
    Invariant {
        /// When (ms into the run).
        at_ms: u64,
        /// What.
        what: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TwoLive {
                task,
                at_ms,
                copies,
            } => {
                write!(f, "two live copies of {task} at {at_ms} ms: {copies:?}")
            }
            Violation::LostWork { task, found } => write!(f, "lost work: {task}: {found}"),
            Violation::Orphan { task, copy } => write!(f, "orphan copy of {task}: {copy}"),
            Violation::Invariant { at_ms, what } => write!(f, "invariant at {at_ms} ms: {what}"),
        }
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The schedule's seed.
    pub seed: u64,
    /// Events processed (controller steps and simulated I/O).
    pub events: u64,
    /// Controller steps.
    pub steps: u64,
    /// Agent generations the controller declared Failed.
    pub declared_failed: u32,
    /// Copies started with a newer epoch than a previous copy of their slot (moves and
    /// restarts after fencing).
    pub replacements: u32,
    /// Singleton copies killed by their agent's lease.
    pub fenced: u32,
    /// Times the mass-failure brake engaged.
    pub brakes: u32,
    /// New job versions submitted (each rolled out over its job's copies).
    pub updates: u32,
    /// Rollouts still under way at the end of the run.
    pub rollouts_unfinished: u32,
    /// Every broken promise (empty on a good run).
    pub violations: Vec<Violation>,
}

/// Run `schedule` to its end and judge it.
pub fn run(schedule: &Schedule, cfg: &SimConfig) -> Report {
    world::World::new(schedule, cfg).run()
}

/// Run `schedule` like [`run`], also returning a line per message, order, fault and copy
/// start or end: what to read when a seed fails.
pub fn run_traced(schedule: &Schedule, cfg: &SimConfig) -> (Report, Vec<String>) {
    let mut w = world::World::new(schedule, cfg).traced();
    w.run_to_end();
    let trace = w.take_trace();
    (w.report().clone(), trace)
}

/// Totals over many schedules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Schedules run.
    pub schedules: u64,
    /// Schedules with at least one violation, with their first violation.
    pub failed: Vec<(u64, Violation)>,
    /// Controller steps over all runs.
    pub steps: u64,
    /// Generations declared Failed over all runs.
    pub declared_failed: u64,
    /// Replacement copies over all runs.
    pub replacements: u64,
    /// Fenced singleton copies over all runs.
    pub fenced: u64,
    /// Brake engagements over all runs.
    pub brakes: u64,
    /// New job versions submitted over all runs.
    pub updates: u64,
    /// Runs that ended with a rollout still under way.
    pub rollouts_unfinished: u64,
}

/// Run the schedules of seeds `first..first + count`.
pub fn run_many(first: u64, count: u64, cfg: &SimConfig) -> Summary {
    let mut s = Summary::default();
    for seed in first..first + count {
        let r = run(&Schedule::generate(seed, cfg), cfg);
        s.schedules += 1;
        s.steps += r.steps;
        s.declared_failed += u64::from(r.declared_failed);
        s.replacements += u64::from(r.replacements);
        s.fenced += u64::from(r.fenced);
        s.brakes += u64::from(r.brakes);
        s.updates += u64::from(r.updates);
        s.rollouts_unfinished += u64::from(r.rollouts_unfinished > 0);
        if let Some(v) = r.violations.into_iter().next() {
            s.failed.push((seed, v));
        }
    }
    s
}
