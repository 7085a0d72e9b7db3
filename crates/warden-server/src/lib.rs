//! # warden-server
//!
//! The control plane runtime. It feeds `warden-core`'s pure state machines with events from the
//! network and carries out what they decide. Built so far:
//!
//! - [`control`]: the control plane around the core's `Fleet` and `plan()`: admits agents,
//!   renews leases, runs probes (direct and through other agents), reconciles, persists
//!   assignments (fenced) before sending them, and keeps recovery records;
//! - [`session`]: the gRPC session service, one long-lived stream per agent;
//! - [`view`]: the REST API's JSON shapes and the [`view::ControlApi`] trait it calls;
//! - [`metrics`]: the Prometheus metrics served on `GET /metrics`, and [`metrics::TimedStore`]
//!   timing every store operation;
//! - [`http`]: the REST API itself (axum): routes, JSON errors, body/concurrency/time limits;
//! - [`server`]: wiring it all to listeners, with ordered shutdown.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod control;
pub mod http;
pub mod metrics;
pub mod server;
pub mod session;
pub mod view;
