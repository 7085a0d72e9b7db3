//! # warden-chaos
//!
//! Warden's fault-injection harness:
//!
//! - [`cluster`]: a real local cluster (server and agents as processes) with faults — kill,
//!   pause/resume, restart, server kill — and ground truth about task processes read from
//!   `/proc`;
//! - [`netns`]: network namespaces (as root): the server and every agent in their own,
//!   joined by veth links, with partitions, one-way cuts and packet loss as nftables rules;
//! - [`proxy`]: a userspace TCP proxy that cuts (both ways or one), resets, and delays with
//!   jitter (this kernel has no netem);
//! - [`recovery`]: the recovery benchmark (RTO after an agent is killed or paused);
//! - `warden chaos`: [`scenario`] (the TOML format), [`run`] (runs one on a cluster, in
//!   namespaces or on loopback, recording ground truth and the server's verdicts into a
//!   [`record::Record`]), [`check`] (one checker per property: at-most-one, no lost work, no
//!   false verdict, brake) and [`report`] (detection times, RTOs, recovery success, confusion
//!   matrix, λ_M/T_M/T_MR/P_A, checker verdicts; [`html`] renders it as a page with an SVG
//!   timeline).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod check;
pub mod cluster;
pub mod html;
pub mod netns;
pub mod proxy;
pub mod record;
pub mod recovery;
pub mod report;
pub mod restart;
pub mod rollout_judge;
pub mod rollout_traffic;
pub mod run;
pub mod scenario;
pub mod traffic;
