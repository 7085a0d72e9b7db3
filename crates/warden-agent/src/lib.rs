//! # warden-agent
//!
//! The task-running half of the Warden agent: everything that starts, watches, restarts,
//! fences and stops the processes the server assigns to this host.
//!
//! - [`shim`]: `warden shim`, the tiny per-task watchdog process. It runs *one* task as its
//!   child in its own process group and kills the whole group when the agent dies (control
//!   pipe EOF, parent-death signal) or stops extending the task's deadline (agent paused, hung
//!   or cut off from the server). It is why a paused agent cannot leave a singleton running.
//!   Its line protocol lives in [`shim::protocol`], shared by both ends.
//! - [`supervisor`]: the tokio side. A [`Supervisor`] runs each task under its own shim,
//!   restarts crashed tasks with exponential backoff, refuses orders carrying a stale
//!   [`FencingToken`](warden_core::FencingToken), extends every singleton's deadline on each
//!   lease renewal, fences them all at once when the lease runs out, and streams
//!   [`TaskEvent`]s.
//! - [`health`]: task health checks (HTTP GET, TCP connect, exec) from
//!   [`warden_core::HealthCheck`], with consecutive-failure counting.
//! - [`runtime`]: the agent itself: the session to the server, heartbeats with signals, the
//!   lease measured from each acknowledged heartbeat's send time, and the server's orders.
//! - [`metrics`]: the agent's Prometheus metrics (heartbeats, acks, sessions, restarts,
//!   fencings, tasks by state, lease left), served on the probe listener's `/metrics`.
//! - [`tls`]: how the agent reaches a server: the gRPC endpoint (plaintext or mutual TLS with
//!   the agent's certificate) and the join token sent with each session.
//! - [`signals`]: host signals read from `/proc` (CPU, memory, pressure stall information).
//! - [`isolation`]: who tasks run as (`--task-user`; `nobody` for a root agent) and their
//!   environment (the job's, the `WARDEN_*` variables and a fixed `PATH`).
//!
//! The safety argument, in one paragraph: a singleton task only runs while its shim's
//! deadline lies in the future, the deadline is only ever moved by the agent on a lease
//! renewal, and it never lies beyond the lease's own expiry on the agent's monotonic clock
//! (plus pipe latency). So when the agent stops renewing — crashed, paused, partitioned —
//! every singleton dies no later than the lease, which is what lets the server start a
//! replacement after `L·(1+ρ) + kill_grace` (see `warden_core::fencing`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cache;
pub mod cgroup;
pub mod health;
pub mod isolation;
pub mod metrics;
pub mod runtime;
pub mod shim;
pub mod signals;
pub mod state;
pub mod supervisor;
pub mod tls;

pub use shim::ShimArgs;
pub use supervisor::{
    ProcessState, RestartPolicy, ShimLauncher, StartOutcome, Supervisor, SupervisorConfig,
    SupervisorError, TaskEvent, TaskEventKind, TaskReport, TaskSpec,
};
