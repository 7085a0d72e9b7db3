//! # warden-state
//!
//! Replicated state for Warden's stateful singletons (`[state]` in a job spec; see
//! `docs/state.md`). The agent runs one [`StateStore`] per stateful task copy it holds,
//! primary or standby:
//!
//! - [`codec`]: the log's frames, the same bytes on disk and on the wire;
//! - [`wal`]: segment files and checkpoints, crash-safe;
//! - [`store`]: keys and values in memory, group commit, the epoch fence, acknowledgement
//!   levels (the rules are `warden_core::state`);
//! - [`api`]: the task's state API, HTTP on a Unix socket;
//! - [`repl`]: replication from a primary to its standbys over TCP;
//! - [`client`]: a small blocking client for tasks written in Rust;
//! - [`pipe`]: the write pipe, many single writes in flight on one connection;
//! - [`restore`]: data restore points taken before a version raises its data epoch;
//! - [`failover`]: failovers in one process, checking that no acknowledged write is lost.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod client;
pub mod codec;
pub mod failover;
pub mod pipe;
pub mod repl;
pub mod restore;
pub mod store;
pub mod tls;
pub mod wal;

pub use store::{Committed, Limits, Role, RoleState, StateStore};
