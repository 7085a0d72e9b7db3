//! # warden-chaos
//!
//! Warden's fault-injection harness. Built so far:
//!
//! - [`cluster`]: a real local cluster (server and agents as processes on loopback) with
//!   faults — kill, pause/resume, restart, server kill — and ground truth about task
//!   processes read from `/proc`;
//! - [`proxy`]: a userspace TCP proxy that can cut a connection silently;
//! - [`client`]: a small blocking client for the REST API;
//! - [`recovery`]: the recovery benchmark (RTO after an agent is killed or paused).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod cluster;
pub mod proxy;
pub mod recovery;
