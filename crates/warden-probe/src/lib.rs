//! # warden-probe
//!
//! Probing an agent from outside, and answering such probes:
//!
//! - [`probe`]: TCP connect and HTTP `GET /healthz`, which tell a live agent from a dead
//!   process and from a stopped one (the server runs them directly; agents run them on the
//!   server's behalf as indirect probes);
//! - [`listener`]: the agent's probe listener that answers them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod listener;
pub mod probe;
