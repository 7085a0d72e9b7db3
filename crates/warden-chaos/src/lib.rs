//! # warden-chaos
//!
//! Warden's fault-injection harness. Built so far:
//!
//! - [`cluster`]: a real local cluster (server and agents as processes on loopback) with
//!   faults — kill, pause/resume, restart, server kill — and ground truth about task
//!   processes read from `/proc`;
//! - [`proxy`]: a userspace TCP proxy that can cut a connection silently;
//! - [`client`]: a small blocking client for the REST API;
//! - [`recovery`]: the recovery benchmark (RTO after an agent is killed or paused);
//! - `warden chaos`: [`scenario`] (the TOML format), [`run`] (runs one on a cluster of
//!   agents behind proxies, recording ground truth and the server's verdicts into a
//!   [`record::Record`]), [`check`] (one checker per property) and [`report`] (detection
//!   times, RTOs, confusion matrix, checker verdicts; [`html`] renders it as a page with an SVG
//!   timeline).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod check;
pub mod client;
pub mod cluster;
pub mod html;
pub mod netns;
pub mod proxy;
pub mod record;
pub mod recovery;
pub mod report;
pub mod run;
pub mod scenario;
