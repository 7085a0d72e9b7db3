//! # warden-core
//!
//! The pure, deterministic heart of Warden. Everything that *decides* lives here:
//!
//! - [`health`]: the multi-signal health score (0–100) of an agent;
//! - [`detector`]: liveness detectors over heartbeat arrivals (fixed timeout, phi accrual,
//!   two-window);
//! - [`anomaly`] and [`tail`]: anomaly detection on signals — the calibrated detector (tail
//!   probabilities of novelty and residual statistics against each signal's own history) and
//!   the EWMA z-score detector; [`nab`] scores them the way the Numenta Anomaly Benchmark does;
//! - [`lifecycle`]: the agent lifecycle state machine, flap damping and the mass-failure brake;
//! - [`fencing`]: when a singleton's replacement may start;
//! - [`placement`]: which agent gets which task;
//! - [`planner`]: `plan(desired, observed, now) -> Vec<Action>`;
//! - [`controller`]: the whole control plane's decisions as one state machine,
//!   `Controller::step(input, now) -> Vec<Command>`, around the fleet and the planner;
//! - [`sim`]: a seeded simulation of a controller and its agents over a faulty network,
//!   checking at-most-one and no-lost-work on every schedule;
//! - [`state`]: replicated task state: acknowledgement levels, the in-sync set, promotion
//!   and epoch fencing;
//! - [`release`] and [`rollout`]: numbered job versions, and how a new one replaces running
//!   copies (canaries, waves, checks, automatic revert);
//! - [`recovery`]: recovery records and RTO;
//! - [`qos`] and [`trace`]: failure-detector quality metrics on seeded heartbeat traces.
//!
//! Nothing here performs I/O, spawns, or reads a clock: time is always an argument
//! ([`Time`]), so every decision can be replayed and tested exactly. The runtime
//! (`warden-server`, `warden-agent`) feeds events in and carries out what comes back.
//!
//! ```
//! use std::time::Duration;
//! use warden_core::detector::{LivenessDetector, PhiAccrual, PhiConfig};
//! use warden_core::Time;
//!
//! let mut phi = PhiAccrual::new(PhiConfig::default());
//! for seq in 1..=20u64 {
//!     phi.heartbeat(seq, Time::from_millis(seq * 500));
//! }
//! let last = Time::from_millis(20 * 500);
//! assert!(!phi.is_suspect(last + Duration::from_millis(600)));
//! assert!(phi.is_suspect(last + Duration::from_secs(5)));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod anomaly;
pub mod controller;
pub mod detector;
pub mod duration_serde;
pub mod endpoints;
pub mod error;
pub mod fencing;
pub mod hash;
pub mod health;
pub mod judge;
pub mod lifecycle;
pub mod nab;
pub mod placement;
pub mod planner;
pub mod qos;
pub mod recovery;
pub mod release;
pub mod rng;
pub mod rollout;
pub mod shard;
pub mod sim;
pub mod state;
pub mod tail;
pub mod time;
pub mod trace;
pub mod types;

pub use error::ConfigError;
pub use time::Time;
pub use types::{
    AgentId, ConfigFile, FencingToken, HealthCheck, JobKind, JobName, JobSpec, Resources,
    ServicePort, ServiceSpec, SignalKind, Signals, TaskId,
};
