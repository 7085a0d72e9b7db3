//! # warden-server
//!
//! The control plane runtime: the thin executor around `warden-core`'s pure
//! [`Controller`](warden_core::controller::Controller). It turns what the network says into the
//! controller's inputs and carries out the commands it returns:
//!
//! - [`control`]: the control loop and executor: steps the controller, sends its orders on the
//!   sessions, writes through one ordered store writer, runs probe rounds and store reads, and
//!   serves the REST read model; [`clock`]: the monotonic clock the controller's times come from;
//! - [`leader`]: this replica's standing in the election, as the control loop follows it;
//! - [`session`]: the gRPC session service, one long-lived stream per agent;
//! - [`auth`]: who may open a session: mutual TLS, agent identity, join tokens;
//!   [`pki`]: the small CA behind `warden tls init`;
//! - [`view`]: the REST API's JSON shapes and the [`view::ControlApi`] trait it calls;
//! - [`metrics`]: the Prometheus metrics served on `GET /metrics`, and [`metrics::TimedStore`]
//!   timing every store operation;
//! - [`http`]: the REST API itself (axum): routes, body/concurrency/time limits, and the
//!   dashboard ([`http::dashboard`]); [`api_error`]: its JSON errors and their stable codes;
//! - [`sla`]: the SLA figures (success rate, RTO against an objective, availability);
//! - [`history`]: the bounded per-agent history the dashboard charts;
//! - [`haproxy`]: the HAProxy adapter, keeping a backend in step with a service's endpoints;
//! - [`api_auth`]: REST API bearer tokens (hashes in a file) and the `read`/`operator` roles;
//! - [`limits`]: every protective limit in one config (`[limits]`): API, sessions, job specs;
//! - [`server`]: wiring it all to listeners, with ordered shutdown.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api_auth;
pub mod api_error;
pub mod auth;
pub mod clock;
pub mod control;
pub mod file_adapter;
pub mod haproxy;
pub mod history;
pub mod http;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod pki;
pub mod revoke;
pub mod server;
pub mod session;
pub mod sla;
pub mod tls_reload;
pub mod view;
