//! The task supervisor: the tokio side of task running.
//!
//! A [`Supervisor`] runs every task under its own `warden shim` (see [`crate::shim`]) and
//! owns, per task, one *actor* (a tokio task) that launches the shim, forwards orders to it
//! over its control pipe, reads its status lines, restarts the task with exponential backoff
//! when it crashes, and reports everything as [`TaskEvent`]s on one channel.
//!
//! What it guarantees:
//!
//! - **Stale orders are refused.** Each task carries the epoch ([`FencingToken`]) of its
//!   assignment. A start or stop with an epoch lower than the one the supervisor already has
//!   for that task is refused with [`SupervisorError::StaleEpoch`]; an epoch runs at most once.
//!   A start with a higher epoch replaces the running copy, and the new copy is launched only
//!   after the old one has exited — never two copies of one task on this host.
//! - **Singletons live only under a lease.** A task started with `leased: true` runs in the
//!   shim's deadline mode: its deadline is the agent's lease expiry, moved forward by
//!   [`Supervisor::extend_leases`] on each renewal. When renewals stop, every shim kills
//!   its singleton at the deadline on its own, whatever state the agent is in.
//!   [`Supervisor::fence_now`] does it at once. A task fenced so is never restarted locally.
//! - **Crashes are retried, not forever.** A task that exits non-zero (or is killed by a
//!   signal nobody asked for) is restarted after `initial_backoff · 2^(n-1)` (capped); after
//!   `max_restarts` restarts within `window` it is reported Failed and left alone. A task
//!   that exits 0 has completed and is not restarted.
//! - **The supervisor's death is the tasks' death — unless they may outlive it.** Dropping
//!   the last [`Supervisor`] handle closes every control pipe, and every shim kills its task.
//!   The same happens when the agent process dies, by the pipe and by the parent-death
//!   signal. With a shim directory ([`SupervisorConfig::shim_dir`]) every shim also listens
//!   on a socket there: a service copy then keeps running for
//!   [`SupervisorConfig::reattach_window`] after the agent vanished, and a new agent process
//!   finds it ([`find_shims`]) and takes it over ([`Supervisor::adopt`]). Singletons still
//!   die with their agent, unless it announced its restart ([`Supervisor::detach_all`]).

mod restart;
mod spawner;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use warden_core::{FencingToken, HealthCheck, JobKind, JobSpec, Resources, TaskId};

use crate::health;
use crate::isolation::{SAFE_PATH, TaskUser};
use crate::shim::ShimArgs;
use crate::shim::protocol::{Control, Status, TaskExit};
use restart::{Decision, RestartTracker};
use spawner::Spawner;

/// How the supervisor starts a shim: `program args_prefix… <shim args>`, and as whom the
/// shims run their tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimLauncher {
    /// The executable; in production the `warden` binary itself.
    pub program: PathBuf,
    /// Arguments before the shim's own; in production `["shim"]`.
    pub args_prefix: Vec<String>,
    /// Run tasks (and their exec health checks) as this user; `None`: as the agent's user.
    /// See [`crate::isolation`].
    pub run_as: Option<TaskUser>,
    /// Run each task in a cgroup of its own with its declared resources as limits;
    /// `None`: tasks run unconfined, in the agent's cgroup. See [`crate::cgroup`].
    pub confine: Option<Confinement>,
}

/// How tasks are confined: where their cgroups go, and the limits every task gets besides its
/// declared resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The agent's cgroups; each task's goes under `<base>/workloads`.
    pub cgroups: crate::cgroup::AgentCgroups,
    /// Most processes and threads one task may have at once (`None`: no limit).
    pub pids_max: Option<u64>,
}

impl ShimLauncher {
    /// The production launcher: this very executable, `… shim`, tasks as the agent's user.
    pub fn current_exe() -> io::Result<ShimLauncher> {
        Ok(ShimLauncher {
            program: std::env::current_exe()?,
            args_prefix: vec!["shim".to_string()],
            run_as: None,
            confine: None,
        })
    }

    /// The same launcher, running tasks as `user`.
    #[must_use]
    pub fn run_as(mut self, user: Option<TaskUser>) -> Self {
        self.run_as = user;
        self
    }
}

/// When and how often a crashed task is restarted in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubles with each further restart in the window.
    /// Default 500 ms.
    pub initial_backoff: Duration,
    /// Longest wait between restarts. Default 30 s.
    pub max_backoff: Duration,
    /// Restarts allowed within `window`; one more crash and the task is Failed. Default 5.
    pub max_restarts: u32,
    /// Sliding window over which restarts are counted. Default 10 min.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(600),
        }
    }
}

/// Supervisor settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// How shims are started.
    pub launcher: ShimLauncher,
    /// Local restart policy.
    pub restart: RestartPolicy,
    /// Grace (SIGTERM → SIGKILL) given to a running copy that a start with a newer epoch
    /// replaces. Default 5 s.
    pub replace_grace: Duration,
    /// Directory of the shims' reattach sockets (`<data dir>/shims` in the agent). `None`:
    /// shims listen nowhere and every task dies with its agent.
    pub shim_dir: Option<PathBuf>,
    /// How long a service or daemon copy keeps running after its agent vanished unannounced,
    /// waiting for a new agent process to attach (only with a `shim_dir`). Default 30 s.
    pub reattach_window: Duration,
}

impl SupervisorConfig {
    /// Default settings with the given launcher.
    pub fn new(launcher: ShimLauncher) -> Self {
        SupervisorConfig {
            launcher,
            restart: RestartPolicy::default(),
            replace_grace: Duration::from_secs(5),
            shim_dir: None,
            reattach_window: DEFAULT_REATTACH_WINDOW,
        }
    }
}

/// Default of [`SupervisorConfig::reattach_window`].
pub const DEFAULT_REATTACH_WINDOW: Duration = Duration::from_secs(30);

/// Longest path of a Unix socket (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The reattach socket of copy `epoch` of `task` in `dir`: `<job>.<index>.<epoch>.sock`, or
/// a hash of it when that would make the path too long for a Unix socket.
pub fn shim_socket(dir: &std::path::Path, task: &TaskId, epoch: FencingToken) -> PathBuf {
    let readable = dir.join(format!("{}.{}.{}.sock", task.job, task.index, epoch.0));
    if readable.as_os_str().len() <= MAX_SOCKET_PATH {
        return readable;
    }
    // FNV-1a: stable across builds, so a restarted agent computes the same name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{task}@{}", epoch.0).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    dir.join(format!("{h:016x}.sock"))
}

/// One task to run: what the server assigned, resolved by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The task slot.
    pub task: TaskId,
    /// The assignment's fencing token.
    pub epoch: FencingToken,
    /// Program (a path or a name looked up in `env["PATH"]`); never run through a shell.
    pub command: String,
    /// Arguments, passed as they are.
    pub args: Vec<String>,
    /// The task's whole environment, apart from `WARDEN_TASK_ID`, `WARDEN_JOB`,
    /// `WARDEN_TASK_INDEX` and `WARDEN_FENCING_TOKEN`, which the supervisor sets at each launch
    /// so they always match the running epoch. Nothing else of the agent's environment is
    /// passed. The agent puts the job's variables, `PATH` (the job's, else
    /// [`SAFE_PATH`](crate::isolation::SAFE_PATH)) and e.g. `WARDEN_PORT` here.
    pub env: BTreeMap<String, String>,
    /// Singleton: run under the lease (the shim's deadline is the lease's), never restarted
    /// after it was fenced.
    pub leased: bool,
    /// Directory for the task's `<job>.<index>.stdout.log` and `.stderr.log` (created if
    /// missing). The shim's own diagnostics go to the stderr log too.
    pub log_dir: PathBuf,
    /// Health check run while the task runs.
    pub health: Option<HealthCheck>,
    /// Declared CPU and memory: the task's limits when tasks are confined (zero: none).
    pub resources: Resources,
    /// Run this task (and its exec health check) as this user rather than the launcher's
    /// (`--task-uids`: a user per job).
    pub run_as: Option<TaskUser>,
}

impl TaskSpec {
    /// The spec for slot `index` of `job` at `epoch`: the job's command, arguments, variables
    /// and health check, and `PATH` (the job's own, else the fixed
    /// [`SAFE_PATH`](crate::isolation::SAFE_PATH)); leased when the job is a singleton.
    pub fn for_job(
        job: &JobSpec,
        index: u32,
        epoch: FencingToken,
        log_dir: impl Into<PathBuf>,
    ) -> TaskSpec {
        let mut env = job.env.clone();
        env.entry("PATH".to_string())
            .or_insert_with(|| SAFE_PATH.to_string());
        TaskSpec {
            task: TaskId::new(job.name.clone(), index),
            epoch,
            command: job.command.clone(),
            args: job.args.clone(),
            env,
            leased: job.kind == JobKind::Singleton,
            log_dir: log_dir.into(),
            health: job.health.clone(),
            resources: job.resources,
            run_as: None,
        }
    }

    /// Where the task's stdout is appended.
    pub fn stdout_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}.{}.stdout.log", self.task.job, self.task.index))
    }

    /// Where the task's stderr (and its shim's diagnostics) are appended.
    pub fn stderr_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}.{}.stderr.log", self.task.job, self.task.index))
    }

    /// The environment the task runs with: [`TaskSpec::env`] plus the `WARDEN_*` identity.
    pub fn task_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("WARDEN_TASK_ID".into(), self.task.to_string());
        env.insert("WARDEN_JOB".into(), self.task.job.to_string());
        env.insert("WARDEN_TASK_INDEX".into(), self.task.index.to_string());
        env.insert("WARDEN_FENCING_TOKEN".into(), self.epoch.to_string());
        env
    }

    fn validate(&self) -> Result<(), String> {
        if self.command.is_empty() || self.command.contains('\0') {
            return Err("command must be non-empty and free of NUL bytes".into());
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err("arguments must not contain NUL bytes".into());
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(format!("invalid environment variable {key:?}"));
            }
        }
        let job = self.task.job.as_str();
        if job.is_empty() || job.contains(['/', '\0']) || job.starts_with('.') {
            return Err(format!("job name {job:?} cannot name a log file"));
        }
        Ok(())
    }
}

/// Something that happened to a task, as the supervisor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    /// The task.
    pub task: TaskId,
    /// The epoch of the copy it happened to.
    pub epoch: FencingToken,
    /// When the supervisor observed it (tokio's clock).
    pub at: Instant,
    /// What happened.
    pub kind: TaskEventKind,
}

/// What happened to a task. Per launch: `Started`, then either `Exited` (followed by
/// `Restarting` or `Failed`, or nothing when it exited 0), `Stopped`, or `Fenced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEventKind {
    /// The task runs as `pid` (also its process group id).
    Started {
        /// Process id of the task.
        pid: u32,
    },
    /// The task ended by itself (or was killed by someone other than Warden).
    Exited {
        /// How it ended.
        exit: TaskExit,
        /// The kernel's OOM killer killed it (or one of its processes): it went past its
        /// memory limit. Reported with cause `oom_killed`.
        oom_killed: bool,
    },
    /// The task will be restarted after `after`; restart number `attempt` in the window.
    Restarting {
        /// Restart number within the restart window, from 1.
        attempt: u32,
        /// Backoff before the restart.
        after: Duration,
    },
    /// The task will not be restarted: too many crashes, or it could not be launched.
    /// Terminal.
    Failed {
        /// Why.
        reason: String,
    },
    /// The task was stopped on request. Terminal.
    Stopped,
    /// The task was killed because the lease ran out (or never started for lack of one).
    /// Terminal: a fenced task is never restarted locally.
    Fenced,
    /// The task's health check changed verdict.
    Health {
        /// Healthy after a success; unhealthy after `failures` consecutive failures.
        healthy: bool,
    },
}

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    /// Accepted; waiting for a replaced copy to exit, or its shim is being launched.
    Starting,
    /// Running as `pid`.
    Running {
        /// Process id of the task.
        pid: u32,
    },
    /// Crashed; waiting before restart number `attempt`.
    BackingOff {
        /// Restart number within the restart window.
        attempt: u32,
    },
    /// A stop was sent; waiting for the task to exit.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Exited with code 0.
    Completed,
    /// Killed or not started for lack of a lease.
    Fenced,
    /// Given up on.
    Failed {
        /// Why.
        reason: String,
    },
}

impl ProcessState {
    /// Whether the task runs or will run again (not stopped, completed, fenced or failed).
    pub fn is_active(&self) -> bool {
        match self {
            ProcessState::Starting
            | ProcessState::Running { .. }
            | ProcessState::BackingOff { .. }
            | ProcessState::Stopping => true,
            ProcessState::Stopped
            | ProcessState::Completed
            | ProcessState::Fenced
            | ProcessState::Failed { .. } => false,
        }
    }
}

/// One task as reported to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReport {
    /// The task.
    pub task: TaskId,
    /// The epoch of its current (or last) copy.
    pub epoch: FencingToken,
    /// Whether it runs under the lease.
    pub leased: bool,
    /// Its state.
    pub state: ProcessState,
}

/// What [`Supervisor::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// A new task is being launched.
    Started,
    /// This epoch of the task is already running: nothing done (orders are idempotent).
    AlreadyRunning,
    /// The copy at `previous` is being stopped; this one launches once it has exited.
    Replacing {
        /// Epoch of the copy being replaced.
        previous: FencingToken,
    },
}

/// Why the supervisor refused an order.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The order's epoch is older than one the supervisor already has for the task.
    #[error("stale order for task {task}: epoch {got} is older than {current}")]
    StaleEpoch {
        /// The task.
        task: TaskId,
        /// The epoch the supervisor has.
        current: FencingToken,
        /// The epoch of the refused order.
        got: FencingToken,
    },
    /// This epoch of the task already ran and ended; an epoch runs at most once.
    #[error("task {task} epoch {epoch} has already ended")]
    EpochFinished {
        /// The task.
        task: TaskId,
        /// Its epoch.
        epoch: FencingToken,
    },
    /// A singleton cannot start: the agent holds no live lease.
    #[error("task {task} runs under the lease and the agent holds no live lease")]
    NoLease {
        /// The task.
        task: TaskId,
    },
    /// The spec cannot be run.
    #[error("invalid spec for task {task}: {reason}")]
    InvalidSpec {
        /// The task.
        task: TaskId,
        /// What is wrong.
        reason: String,
    },
    /// [`Supervisor::shutdown`] was called.
    #[error("the supervisor is shutting down")]
    ShutDown,
    /// [`Supervisor::new`] was called outside a tokio runtime.
    #[error("the supervisor needs a tokio runtime")]
    NoRuntime,
    /// The shim spawner thread could not be started.
    #[error("start the shim spawner thread: {0}")]
    Spawner(#[source] io::Error),
    /// The copy is not running (not started, restarting, stopping or ended).
    #[error("task {task} epoch {epoch} is not running")]
    NotRunning {
        /// The task.
        task: TaskId,
        /// The epoch asked for.
        epoch: FencingToken,
    },
}

/// Handle to the supervisor; clones share it. When the last handle is dropped every task's
/// control pipe closes and every shim kills its task.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    launcher: Arc<ShimLauncher>,
    policy: RestartPolicy,
    replace_grace: Duration,
    shim_dir: Option<PathBuf>,
    reattach_window: Duration,
    events: mpsc::UnboundedSender<TaskEvent>,
    spawner: Spawner,
    runtime: Handle,
    cancel: CancellationToken,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// State shared by the handle and the actors.
struct Shared {
    tasks: Mutex<HashMap<TaskId, Entry>>,
    /// The lease's expiry on the agent's clock; every leased task's actor watches it.
    lease: watch::Sender<Option<Instant>>,
    next_gen: AtomicU64,
}

struct Entry {
    /// Highest epoch seen in any order for this task.
    epoch: FencingToken,
    leased: bool,
    state: ProcessState,
    /// The actor of the current copy, while it runs.
    run: Option<Run>,
}

struct Run {
    /// Tells the actor of this copy from a replaced one.
    generation: u64,
    epoch: FencingToken,
    orders: mpsc::UnboundedSender<Order>,
    /// Cancelled when the actor has finished (its shim has exited).
    done: CancellationToken,
}

enum Order {
    Stop {
        grace: Duration,
    },
    /// Tell the shim the agent restarts on purpose; `done` fires once the line is written.
    Detach {
        window: Duration,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Send the task's main process this signal (a reload), then run its health checks
    /// afresh: the next verdict is the reloaded task's. `answer` gets the shim's answer.
    Signal {
        signal: i32,
        answer: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// The answer to [`Supervisor::signal`]: `Ok` once the shim sent the signal (or the copy is
/// between two runs, whose next run reads the new files), else why not. A dropped sender means
/// the copy ended first.
pub type SignalAnswer = tokio::sync::oneshot::Receiver<Result<(), String>>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Entry>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease_remaining(&self) -> Option<Duration> {
        let deadline = (*self.lease.borrow())?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        (!remaining.is_zero()).then_some(remaining)
    }

    /// Update the state of the copy `generation` of `task`, unless it was replaced.
    fn set_state(&self, task: &TaskId, generation: u64, state: ProcessState, finished: bool) {
        let mut tasks = self.lock();
        if let Some(entry) = tasks.get_mut(task)
            && entry
                .run
                .as_ref()
                .is_some_and(|r| r.generation == generation)
        {
            entry.state = state;
            if finished {
                entry.run = None;
            }
        }
    }
}

impl Supervisor {
    /// A supervisor and the receiving end of its event stream. Must be called inside a tokio
    /// runtime, which then runs the task actors.
    ///
    /// The event channel is unbounded on purpose: an actor must never wait for a slow
    /// consumer, because it is what enforces fencing; events are few (backoff and health
    /// transitions bound their rate).
    pub fn new(
        config: SupervisorConfig,
    ) -> Result<(Supervisor, mpsc::UnboundedReceiver<TaskEvent>), SupervisorError> {
        let runtime = Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        let spawner = Spawner::start(runtime.clone()).map_err(SupervisorError::Spawner)?;
        let (events, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            shared: Arc::new(Shared {
                tasks: Mutex::new(HashMap::new()),
                lease: watch::Sender::new(None),
                next_gen: AtomicU64::new(1),
            }),
            launcher: Arc::new(config.launcher),
            policy: config.restart,
            replace_grace: config.replace_grace,
            shim_dir: config.shim_dir,
            reattach_window: config.reattach_window,
            events,
            spawner,
            runtime,
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
        };
        Ok((
            Supervisor {
                inner: Arc::new(inner),
            },
            rx,
        ))
    }

    /// Start a task, or do nothing if this epoch of it already runs. Refused when an order
    /// with a newer epoch was seen for the task, when this epoch already ended, or (for a
    /// leased task) when the agent holds no live lease — call
    /// [`Supervisor::extend_leases`] first. A newer epoch replaces the running copy: the
    /// old one gets a stop with the configured `replace_grace` and the new one launches once
    /// it has exited.
    pub fn start(&self, spec: TaskSpec) -> Result<StartOutcome, SupervisorError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShutDown);
        }
        spec.validate()
            .map_err(|reason| SupervisorError::InvalidSpec {
                task: spec.task.clone(),
                reason,
            })?;
        if spec.leased && inner.shared.lease_remaining().is_none() {
            let mut tasks = inner.shared.lock();
            if let Some(entry) = tasks.get(&spec.task)
                && entry.run.as_ref().is_some_and(|r| r.epoch == spec.epoch)
            {
                // A resend of what runs: it dies with the lease, and says so then.
                return Ok(StartOutcome::AlreadyRunning);
            }
            // The epoch is over for this agent: a resend of the same order that arrives once
            // a lease is back is refused too. Otherwise the server, told that the copy did not
            // start, could start it elsewhere while a late resend starts it here.
            let newer = tasks.get(&spec.task).is_none_or(|e| e.epoch < spec.epoch);
            let idle = tasks.get(&spec.task).is_none_or(|e| e.run.is_none());
            if newer && idle {
                tasks.insert(
                    spec.task.clone(),
                    Entry {
                        epoch: spec.epoch,
                        leased: true,
                        state: ProcessState::Fenced,
                        run: None,
                    },
                );
            }
            return Err(SupervisorError::NoLease { task: spec.task });
        }
        let mut tasks = inner.shared.lock();
        let mut predecessor = None;
        let mut outcome = StartOutcome::Started;
        if let Some(entry) = tasks.get_mut(&spec.task) {
            if spec.epoch < entry.epoch {
                return Err(SupervisorError::StaleEpoch {
                    task: spec.task,
                    current: entry.epoch,
                    got: spec.epoch,
                });
            }
            if spec.epoch == entry.epoch {
                return match &entry.run {
                    Some(run) if run.epoch == spec.epoch => Ok(StartOutcome::AlreadyRunning),
                    _ => Err(SupervisorError::EpochFinished {
                        task: spec.task,
                        epoch: spec.epoch,
                    }),
                };
            }
            if let Some(run) = entry.run.take() {
                info!(task = %spec.task, old = %run.epoch, new = %spec.epoch, "newer epoch replaces the running copy");
                // If the actor is already gone the stop is moot; its `done` is then cancelled.
                let _ = run.orders.send(Order::Stop {
                    grace: inner.replace_grace,
                });
                outcome = StartOutcome::Replacing {
                    previous: run.epoch,
                };
                predecessor = Some(run.done);
            }
        }
        let generation = inner.shared.next_gen.fetch_add(1, Ordering::Relaxed);
        let (orders_tx, orders_rx) = mpsc::unbounded_channel();
        let done = CancellationToken::new();
        let span = info_span!("task", task = %spec.task, epoch = %spec.epoch);
        tasks.insert(
            spec.task.clone(),
            Entry {
                epoch: spec.epoch,
                leased: spec.leased,
                state: ProcessState::Starting,
                run: Some(Run {
                    generation,
                    epoch: spec.epoch,
                    orders: orders_tx,
                    done: done.clone(),
                }),
            },
        );
        drop(tasks);
        let actor = self.actor(spec, generation, orders_rx, predecessor, None);
        inner.runtime.spawn(actor.run(done).instrument(span));
        Ok(outcome)
    }

    fn actor(
        &self,
        spec: TaskSpec,
        generation: u64,
        orders: mpsc::UnboundedReceiver<Order>,
        predecessor: Option<CancellationToken>,
        adopted: Option<ShimConn>,
    ) -> Actor {
        let inner = &self.inner;
        Actor {
            lease: inner.shared.lease.subscribe(),
            spec,
            generation,
            shared: inner.shared.clone(),
            events: inner.events.clone(),
            orders,
            orders_open: true,
            spawner: inner.spawner.clone(),
            launcher: inner.launcher.clone(),
            policy: inner.policy,
            cancel: inner.cancel.child_token(),
            predecessor,
            adopted,
            shim_dir: inner.shim_dir.clone(),
            reattach_window: inner.reattach_window,
        }
    }

    /// Take over a shim that a previous agent process started ([`find_shims`]), for `spec`
    /// (the copy it runs, from the agent's cache). The task keeps running, with its pid and
    /// epoch; from now on it is supervised, restarted and stopped like one this supervisor
    /// started. Refused when the supervisor already has this task (at any epoch).
    pub fn adopt(&self, spec: TaskSpec, shim: FoundShim) -> Result<(), SupervisorError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShutDown);
        }
        spec.validate()
            .map_err(|reason| SupervisorError::InvalidSpec {
                task: spec.task.clone(),
                reason,
            })?;
        let mut tasks = inner.shared.lock();
        if let Some(entry) = tasks.get(&spec.task) {
            return Err(SupervisorError::StaleEpoch {
                task: spec.task,
                current: entry.epoch,
                got: shim.epoch,
            });
        }
        let generation = inner.shared.next_gen.fetch_add(1, Ordering::Relaxed);
        let (orders_tx, orders_rx) = mpsc::unbounded_channel();
        let done = CancellationToken::new();
        let span = info_span!("task", task = %spec.task, epoch = %spec.epoch);
        let state = match shim.pid {
            0 => ProcessState::Starting,
            pid => ProcessState::Running { pid },
        };
        tasks.insert(
            spec.task.clone(),
            Entry {
                epoch: spec.epoch,
                leased: spec.leased,
                state,
                run: Some(Run {
                    generation,
                    epoch: spec.epoch,
                    orders: orders_tx,
                    done: done.clone(),
                }),
            },
        );
        drop(tasks);
        info!(task = %spec.task, epoch = %spec.epoch, pid = shim.pid, shim = shim.shim_pid, "adopted a running task from its shim");
        let actor = self.actor(spec, generation, orders_rx, None, Some(shim.conn));
        inner.runtime.spawn(actor.run(done).instrument(span));
        Ok(())
    }

    /// The agent is about to restart on purpose: tell every shim to keep its task for a new
    /// agent process for `window` (singletons still die at their lease's deadline unless the
    /// new process extends it). Resolves once every shim was told, or after `limit`.
    pub async fn detach_all(&self, window: Duration, limit: Duration) {
        let waits: Vec<tokio::sync::oneshot::Receiver<()>> = {
            let tasks = self.inner.shared.lock();
            tasks
                .values()
                .filter_map(|entry| entry.run.as_ref())
                .filter_map(|run| {
                    let (done, rx) = tokio::sync::oneshot::channel();
                    run.orders.send(Order::Detach { window, done }).ok()?;
                    Some(rx)
                })
                .collect()
        };
        let _ = tokio::time::timeout(limit, async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await;
    }

    /// Stop a task: SIGTERM its process group, SIGKILL after `grace`; resolves once it has
    /// exited. Refused when `epoch` is older than the one the supervisor has for the task. A
    /// stop for an unknown task, or a newer epoch than the running one, is remembered, so a
    /// late start with an older epoch is refused too.
    pub async fn stop(
        &self,
        task: &TaskId,
        epoch: FencingToken,
        grace: Duration,
    ) -> Result<(), SupervisorError> {
        let done = {
            let mut tasks = self.inner.shared.lock();
            let Some(entry) = tasks.get_mut(task) else {
                tasks.insert(
                    task.clone(),
                    Entry {
                        epoch,
                        leased: false,
                        state: ProcessState::Stopped,
                        run: None,
                    },
                );
                return Ok(());
            };
            if epoch < entry.epoch {
                return Err(SupervisorError::StaleEpoch {
                    task: task.clone(),
                    current: entry.epoch,
                    got: epoch,
                });
            }
            entry.epoch = epoch;
            match &entry.run {
                Some(run) => {
                    let _ = run.orders.send(Order::Stop { grace });
                    run.done.clone()
                }
                None => return Ok(()),
            }
        };
        done.cancelled().await;
        Ok(())
    }

    /// Send `signal` to the main process of the running copy of `task` at `epoch` (its shim
    /// sends it; a reload after its configuration files changed), and start its health
    /// checks afresh, so that the next verdict reported is the reloaded task's.
    pub fn signal(
        &self,
        task: &TaskId,
        epoch: FencingToken,
        signal: i32,
    ) -> Result<SignalAnswer, SupervisorError> {
        let tasks = self.inner.shared.lock();
        let not_running = || SupervisorError::NotRunning {
            task: task.clone(),
            epoch,
        };
        let entry = tasks.get(task).ok_or_else(not_running)?;
        // A copy between two runs (restarting after a crash) gets no signal: its next run
        // reads the new files.
        match &entry.run {
            Some(run) if run.epoch == epoch => {
                let (answer, rx) = tokio::sync::oneshot::channel();
                run.orders
                    .send(Order::Signal { signal, answer })
                    .map_err(|_| not_running())?;
                Ok(rx)
            }
            _ => Err(not_running()),
        }
    }

    /// The lease was renewed and now runs out `remaining` from now: every leased task may run
    /// until then (each shim gets `extend <ms>`, computed when it is written so that a
    /// delay in between never pushes a deadline past the lease). Fenced tasks started later
    /// get the same deadline.
    pub fn extend_leases(&self, remaining: Duration) {
        self.inner
            .shared
            .lease
            .send_replace(Some(Instant::now() + remaining));
    }

    /// The lease ran out: kill every leased task at once (their shims get `extend 0` and
    /// report `fenced`) and refuse to start or restart leased tasks until the next
    /// [`Supervisor::extend_leases`]. Services keep running.
    pub fn fence_now(&self) {
        warn!("lease lost: fencing every singleton task");
        self.inner.shared.lease.send_replace(Some(Instant::now()));
    }

    /// Time left on the lease as last extended, if it has not run out.
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.inner.shared.lease_remaining()
    }

    /// Every task the supervisor knows, with the epoch of its current or last copy, sorted.
    pub fn tasks(&self) -> Vec<TaskReport> {
        let tasks = self.inner.shared.lock();
        let mut reports: Vec<TaskReport> = tasks
            .iter()
            .map(|(task, entry)| TaskReport {
                task: task.clone(),
                epoch: entry.run.as_ref().map_or(entry.epoch, |r| r.epoch),
                leased: entry.leased,
                state: entry.state.clone(),
            })
            .collect();
        reports.sort_by(|a, b| a.task.cmp(&b.task));
        reports
    }

    /// The tasks that run or will run again, with their epochs, sorted.
    pub fn running(&self) -> Vec<(TaskId, FencingToken)> {
        self.tasks()
            .into_iter()
            .filter(|r| r.state.is_active())
            .map(|r| (r.task, r.epoch))
            .collect()
    }

    /// Stop every task with `grace` and wait until all have exited; refuse starts from now
    /// on. For the agent's graceful shutdown.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let waits: Vec<CancellationToken> = {
            let tasks = self.inner.shared.lock();
            tasks
                .values()
                .filter_map(|entry| entry.run.as_ref())
                .map(|run| {
                    let _ = run.orders.send(Order::Stop { grace });
                    run.done.clone()
                })
                .collect()
        };
        for done in waits {
            done.cancelled().await;
        }
    }
}

/// How an actor's task ended for good.
enum Outcome {
    Stopped,
    Fenced,
    Completed,
    Failed(String),
    /// The supervisor is gone; nobody is listening.
    Cancelled,
}

/// How one shim run ended.
enum RunEnd {
    Exited {
        exit: TaskExit,
        detail: String,
        oom_killed: bool,
    },
    Stopped,
    Fenced,
    Cancelled,
}

enum LaunchError {
    NoLease,
    Io(io::Error),
}

/// What the status lines of one shim run said.
#[derive(Default)]
struct Observed {
    pid: Option<u32>,
    fenced: bool,
    exit: Option<TaskExit>,
    /// The last `spawn-failed`, `killed` or `error` line, for the Failed reason.
    detail: Option<String>,
    /// Processes of the task the OOM killer killed (`oom-killed`).
    oom_kills: u64,
}

/// The tokio task that runs one copy (one epoch) of one task.
struct Actor {
    spec: TaskSpec,
    generation: u64,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<TaskEvent>,
    orders: mpsc::UnboundedReceiver<Order>,
    orders_open: bool,
    lease: watch::Receiver<Option<Instant>>,
    spawner: Spawner,
    launcher: Arc<ShimLauncher>,
    policy: RestartPolicy,
    cancel: CancellationToken,
    /// The replaced copy, which must have exited before this one launches.
    predecessor: Option<CancellationToken>,
    /// A shim of a previous agent process, taken over instead of the first launch.
    adopted: Option<ShimConn>,
    shim_dir: Option<PathBuf>,
    reattach_window: Duration,
}

/// The agent's two channels to one shim: its status lines, its control lines, and the
/// process to wait for.
pub(crate) struct ShimConn {
    lines: Lines<BufReader<Box<dyn AsyncRead + Send + Unpin>>>,
    control: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    shim: ShimProcess,
}

enum ShimProcess {
    /// Started by this supervisor.
    Child(Child),
    /// Started by a previous agent process: pid, and the task's pid when it still ran.
    Adopted { shim_pid: u32, task_pid: u32 },
}

/// A shim found on its socket, left running by a previous agent process.
pub struct FoundShim {
    /// The task it runs (as it says).
    pub task: String,
    /// The copy's epoch.
    pub epoch: FencingToken,
    /// The task's pid; 0 when the task has already ended (how follows on the connection).
    pub pid: u32,
    /// The shim's pid.
    pub shim_pid: u32,
    /// Its socket file.
    pub path: PathBuf,
    conn: ShimConn,
}

impl std::fmt::Debug for FoundShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoundShim")
            .field("task", &self.task)
            .field("epoch", &self.epoch)
            .field("pid", &self.pid)
            .field("shim_pid", &self.shim_pid)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What [`find_shims`] found in a shim directory.
#[derive(Debug, Default)]
pub struct ShimsFound {
    /// Shims that answered.
    pub shims: Vec<FoundShim>,
    /// Socket files nobody listened on (left by a dead shim), removed.
    pub stale_removed: usize,
    /// Sockets that could not be used, with why.
    pub errors: Vec<String>,
}

/// Connect to every shim socket in `dir`, left by a previous agent process: each shim that
/// answers becomes the caller's to adopt ([`Supervisor::adopt`]) or stop; a socket file
/// nobody listens on is removed. A missing directory finds nothing.
pub async fn find_shims(dir: &std::path::Path) -> ShimsFound {
    let mut found = ShimsFound::default();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(2), connect_shim(&path)).await {
            Ok(Ok(shim)) => found.shims.push(shim),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                debug!(path = %path.display(), "removing the socket of a dead shim");
                if tokio::fs::remove_file(&path).await.is_ok() {
                    found.stale_removed += 1;
                }
            }
            Ok(Err(e)) => found.errors.push(format!("{}: {e}", path.display())),
            Err(_) => found
                .errors
                .push(format!("{}: no answer within 2s", path.display())),
        }
    }
    found
}

async fn connect_shim(path: &std::path::Path) -> io::Result<FoundShim> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    let (read, write) = stream.into_split();
    let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(read);
    let mut lines = BufReader::new(reader).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a word"))?;
    let Ok(Status::Attached {
        task,
        epoch,
        pid,
        shim_pid,
    }) = Status::parse(&first)
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected first line {first:?}"),
        ));
    };
    Ok(FoundShim {
        task,
        epoch: FencingToken(epoch),
        pid,
        shim_pid,
        path: path.to_path_buf(),
        conn: ShimConn {
            lines,
            control: Some(Box::new(write)),
            shim: ShimProcess::Adopted {
                shim_pid,
                task_pid: pid,
            },
        },
    })
}

impl FoundShim {
    /// Stop the task this shim runs (a copy nobody wants any more) and wait, up to `limit`,
    /// until the shim has ended.
    pub async fn stop(mut self, grace: Duration, limit: Duration) {
        send(&mut self.conn.control, Control::Stop(grace)).await;
        let _ = tokio::time::timeout(limit, async {
            while let Ok(Some(_)) = self.conn.lines.next_line().await {}
        })
        .await;
        reap_adopted(self.shim_pid).await;
    }
}

/// Reap an adopted shim if it is this process's child (the agent re-executed itself, so the
/// shims it had started are still its children); otherwise its new parent reaps it.
async fn reap_adopted(shim_pid: u32) {
    let Ok(raw) = i32::try_from(shim_pid) else {
        return;
    };
    let pid = Pid::from_raw(raw);
    for _ in 0..50 {
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
}

impl Actor {
    async fn run(mut self, done: CancellationToken) {
        let _done = done.drop_guard();
        let (state, event) = match self.lifecycle().await {
            Outcome::Stopped => (ProcessState::Stopped, Some(TaskEventKind::Stopped)),
            Outcome::Fenced => (ProcessState::Fenced, Some(TaskEventKind::Fenced)),
            Outcome::Completed => (ProcessState::Completed, None),
            Outcome::Failed(reason) => {
                warn!(%reason, "task failed");
                (
                    ProcessState::Failed {
                        reason: reason.clone(),
                    },
                    Some(TaskEventKind::Failed { reason }),
                )
            }
            Outcome::Cancelled => return,
        };
        self.shared
            .set_state(&self.spec.task, self.generation, state, true);
        if let Some(kind) = event {
            self.emit(kind);
        }
    }

    fn emit(&self, kind: TaskEventKind) {
        info!(event = ?kind, "task event");
        let _ = self.events.send(TaskEvent {
            task: self.spec.task.clone(),
            epoch: self.spec.epoch,
            at: Instant::now(),
            kind,
        });
    }

    fn set_state(&self, state: ProcessState) {
        self.shared
            .set_state(&self.spec.task, self.generation, state, false);
    }

    async fn lifecycle(&mut self) -> Outcome {
        if let Some(predecessor) = self.predecessor.take() {
            tokio::select! {
                () = predecessor.cancelled() => {}
                outcome = self.interrupted() => {
                    if matches!(outcome, Outcome::Cancelled) {
                        return outcome;
                    }
                    // Stopped (or fenced) before launching; still report only once the
                    // replaced copy is gone, so "stopped" means nothing of the task runs.
                    tokio::select! {
                        () = predecessor.cancelled() => return outcome,
                        () = self.cancel.cancelled() => return Outcome::Cancelled,
                    }
                }
            }
        }
        let mut restarts = RestartTracker::new(self.policy);
        loop {
            let conn = match self.adopted.take() {
                Some(conn) => conn,
                None => match self.launch().await {
                    Ok(conn) => conn,
                    Err(LaunchError::NoLease) => return Outcome::Fenced,
                    Err(LaunchError::Io(e)) => {
                        return Outcome::Failed(format!("launch the shim: {e}"));
                    }
                },
            };
            let (exit, detail, oom_killed) = match self.supervise(conn).await {
                RunEnd::Exited {
                    exit,
                    detail,
                    oom_killed,
                } => (exit, detail, oom_killed),
                RunEnd::Stopped => return Outcome::Stopped,
                RunEnd::Fenced => return Outcome::Fenced,
                RunEnd::Cancelled => return Outcome::Cancelled,
            };
            self.emit(TaskEventKind::Exited { exit, oom_killed });
            if exit.success() {
                return Outcome::Completed;
            }
            match restarts.on_crash(Instant::now()) {
                Decision::GiveUp { restarts } => {
                    return Outcome::Failed(format!(
                        "{detail}; gave up after {restarts} restarts within {:?}",
                        self.policy.window
                    ));
                }
                Decision::Restart { attempt, after } => {
                    warn!(%detail, attempt, after_ms = after.as_millis(), "task crashed; restarting");
                    self.set_state(ProcessState::BackingOff { attempt });
                    self.emit(TaskEventKind::Restarting { attempt, after });
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        outcome = self.interrupted() => return outcome,
                    }
                    self.set_state(ProcessState::Starting);
                }
            }
        }
    }

    /// Resolves when something ends the task while no shim runs: a stop, the supervisor's
    /// end, or (leased tasks) the lease running out.
    async fn interrupted(&mut self) -> Outcome {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Outcome::Cancelled,
                order = self.orders.recv(), if self.orders_open => match order {
                    Some(Order::Stop { .. }) => return Outcome::Stopped,
                    Some(Order::Detach { done, .. }) => {
                        let _ = done.send(());
                    }
                    // Between two runs: the next one reads the new files anyway.
                    Some(Order::Signal { answer, .. }) => {
                        let _ = answer.send(Ok(()));
                    }
                    None => self.orders_open = false,
                },
                changed = self.lease.changed(), if self.spec.leased => {
                    if changed.is_err() || self.shared.lease_remaining().is_none() {
                        return Outcome::Fenced;
                    }
                }
            }
        }
    }

    /// Who the task runs as: its own user, else the launcher's.
    fn run_as(&self) -> Option<&TaskUser> {
        self.spec.run_as.as_ref().or(self.launcher.run_as.as_ref())
    }

    /// Launch the shim. For a leased task its initial deadline is the lease's, read last
    /// thing before the spawn so that it is as fresh as it can be.
    async fn launch(&mut self) -> Result<ShimConn, LaunchError> {
        tokio::fs::create_dir_all(&self.spec.log_dir)
            .await
            .map_err(LaunchError::Io)?;
        let shim_stderr = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spec.stderr_path())
            .await
            .map_err(LaunchError::Io)?
            .into_std()
            .await;
        let deadline = if self.spec.leased {
            self.lease.borrow_and_update();
            Some(self.shared.lease_remaining().ok_or(LaunchError::NoLease)?)
        } else {
            None
        };
        let args = ShimArgs {
            task: self.spec.task.clone(),
            epoch: self.spec.epoch,
            stdout: self.spec.stdout_path(),
            stderr: self.spec.stderr_path(),
            // Rounded down, so the shim's deadline is never later than the lease.
            deadline: deadline
                .map(|d| Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))),
            user: self.run_as().map(|u| (u.uid, u.gid)),
            cgroups: self.launcher.confine.as_ref().map_or_else(Vec::new, |c| {
                c.cgroups.task_dirs(&crate::cgroup::task_cgroup_name(
                    &self.spec.task,
                    self.spec.epoch,
                ))
            }),
            limits: self.launcher.confine.as_ref().map_or_else(
                crate::cgroup::TaskLimits::default,
                |c| {
                    crate::cgroup::TaskLimits::from_resources(
                        self.spec.resources.cpu_millis,
                        self.spec.resources.memory_mb,
                        c.pids_max,
                    )
                    .with_memory_high(self.spec.resources.memory_high_mb)
                },
            ),
            socket: self
                .shim_dir
                .as_ref()
                .map(|dir| shim_socket(dir, &self.spec.task, self.spec.epoch)),
            // Singletons die with their agent (unless it detached them first).
            reattach: if self.shim_dir.is_some() && !self.spec.leased {
                self.reattach_window
            } else {
                Duration::ZERO
            },
            program: self.spec.command.clone(),
            args: self.spec.args.clone(),
        };
        let mut command = Command::new(&self.launcher.program);
        command
            .args(&self.launcher.args_prefix)
            .args(args.to_args())
            .env_clear()
            .envs(self.spec.task_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_stderr));
        let mut child = self.spawner.spawn(command).await.map_err(LaunchError::Io)?;
        let control: Option<Box<dyn AsyncWrite + Send + Unpin>> = child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
        let stdout = child.stdout.take().ok_or_else(|| {
            LaunchError::Io(io::Error::other("shim launched without a status pipe"))
        })?;
        let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(stdout);
        Ok(ShimConn {
            lines: BufReader::new(reader).lines(),
            control,
            shim: ShimProcess::Child(child),
        })
    }

    /// Follow one shim from launch (or adoption) to exit.
    async fn supervise(&mut self, conn: ShimConn) -> RunEnd {
        let ShimConn {
            mut lines,
            control: mut stdin,
            shim,
        } = conn;
        let mut seen = Observed::default();
        // Health checks run from `started` until this run ends.
        let mut health = self.cancel.child_token();
        let mut _health = health.clone().drop_guard();
        if let ShimProcess::Adopted { task_pid, .. } = &shim
            && *task_pid != 0
        {
            let pid = *task_pid;
            seen.pid = Some(pid);
            self.set_state(ProcessState::Running { pid });
            self.emit(TaskEventKind::Started { pid });
            self.start_health_checks(&health);
        }
        let mut stopping = false;
        let mut signalled: Option<tokio::sync::oneshot::Sender<Result<(), String>>> = None;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        // The answer to a signal: `signalled`, or an error (an older shim
                        // does not know the line; a task not running).
                        if signalled.is_some() {
                            match Status::parse(&line) {
                                Ok(Status::Signalled(_)) => {
                                    if let Some(a) = signalled.take() {
                                        let _ = a.send(Ok(()));
                                    }
                                }
                                Ok(Status::Error(why)) => {
                                    if let Some(a) = signalled.take() {
                                        let _ = a.send(Err(format!("its shim: {why}")));
                                    }
                                }
                                _ => {}
                            }
                        }
                        self.on_status(&line, &mut seen, &health)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "read the shim's status pipe");
                        break;
                    }
                },
                order = self.orders.recv(), if self.orders_open => match order {
                    Some(Order::Stop { grace }) => {
                        stopping = true;
                        self.set_state(ProcessState::Stopping);
                        send(&mut stdin, Control::Stop(grace)).await;
                    }
                    Some(Order::Detach { window, done }) => {
                        send(&mut stdin, Control::Detach(window)).await;
                        let _ = done.send(());
                    }
                    // Before the task started it reads the new files anyway.
                    Some(Order::Signal { signal, answer }) if seen.pid.is_some() => {
                        send(&mut stdin, Control::Signal(signal)).await;
                        signalled = Some(answer);
                        if !stopping {
                            health = self.cancel.child_token();
                            _health = health.clone().drop_guard();
                            self.start_health_checks(&health);
                        }
                    }
                    Some(Order::Signal { answer, .. }) => {
                        let _ = answer.send(Ok(()));
                    }
                    None => self.orders_open = false,
                },
                changed = self.lease.changed(), if self.spec.leased => {
                    // A closed lease channel cannot happen while `shared` lives; treat it
                    // as a lost lease all the same.
                    let remaining = match changed {
                        Ok(()) => self.shared.lease_remaining().unwrap_or_default(),
                        Err(_) => Duration::ZERO,
                    };
                    send(&mut stdin, Control::Extend(floor_millis(remaining))).await;
                }
                () = self.cancel.cancelled() => {
                    // The supervisor is gone: closing the control pipe makes the shim kill
                    // its task. tokio reaps the shim in the background.
                    drop(stdin);
                    return RunEnd::Cancelled;
                }
            }
        }
        drop(stdin);
        let status = match shim {
            ShimProcess::Child(mut child) => Some(child.wait().await),
            ShimProcess::Adopted { shim_pid, .. } => {
                reap_adopted(shim_pid).await;
                None
            }
        };
        let exit = match seen.exit {
            Some(exit) => exit,
            None => {
                // The shim ended without reporting its task's end: it was killed, so its
                // task may live on unsupervised. Its group id is still the task's pid unless
                // the task is gone too.
                if let Some(pid) = seen.pid.and_then(|p| i32::try_from(p).ok()) {
                    warn!(
                        pid,
                        "shim died without reporting its task; killing the task's group"
                    );
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let exit = match &status {
                    Some(Ok(s)) => shim_status_to_exit(s),
                    Some(Err(_)) | None => TaskExit::Signal(Signal::SIGKILL as i32),
                };
                seen.detail.get_or_insert_with(|| match &status {
                    Some(Ok(s)) => format!("shim ended ({s}) without reporting the task's exit"),
                    Some(Err(e)) => format!("wait for the shim: {e}"),
                    None => "the adopted shim ended without reporting the task's exit".into(),
                });
                exit
            }
        };
        if seen.fenced {
            return RunEnd::Fenced;
        }
        if stopping {
            return RunEnd::Stopped;
        }
        if seen.oom_kills > 0 {
            let limit = match self.spec.resources.memory_mb {
                0 => String::new(),
                mb => format!(" of {mb} MiB"),
            };
            seen.detail = Some(format!(
                "oom_killed: went past its memory limit{limit} ({} process(es) killed, exited with {exit})",
                seen.oom_kills
            ));
        }
        RunEnd::Exited {
            exit,
            detail: seen.detail.unwrap_or_else(|| format!("exited with {exit}")),
            oom_killed: seen.oom_kills > 0,
        }
    }

    fn on_status(&self, line: &str, seen: &mut Observed, health: &CancellationToken) {
        let status = match Status::parse(line) {
            Ok(status) => status,
            Err(e) => {
                warn!(error = %e, "unreadable status line from the shim");
                return;
            }
        };
        debug!(%status, "shim status");
        match status {
            Status::Started { pid } => {
                seen.pid = Some(pid);
                self.set_state(ProcessState::Running { pid });
                self.emit(TaskEventKind::Started { pid });
                self.start_health_checks(health);
            }
            Status::Fenced => seen.fenced = true,
            Status::Exited(exit) => seen.exit = Some(exit),
            Status::SpawnFailed { reason } => seen.detail = Some(format!("spawn failed: {reason}")),
            Status::Killed(reason) => {
                seen.detail = Some(format!("shim killed the task: {reason:?}"))
            }
            Status::Error(message) => {
                warn!(%message, "shim reported an error");
                seen.detail = Some(format!("shim error: {message}"));
            }
            Status::OomKilled { count } => {
                warn!(count, "task OOM-killed: it went past its memory limit");
                seen.oom_kills += count;
            }
            Status::Attached { pid, .. } if pid != 0 => seen.pid = Some(pid),
            Status::Signalled(n) => info!(signal = n, "task signalled"),
            Status::Stopping { .. }
            | Status::Pong
            | Status::Detached { .. }
            | Status::Attached { .. } => {}
        }
    }

    fn start_health_checks(&self, cancel: &CancellationToken) {
        let Some(check) = self.spec.health.clone() else {
            return;
        };
        let events = self.events.clone();
        let task = self.spec.task.clone();
        let epoch = self.spec.epoch;
        let report = move |healthy: bool| {
            info!(healthy, "task health changed");
            let _ = events.send(TaskEvent {
                task: task.clone(),
                epoch,
                at: Instant::now(),
                kind: TaskEventKind::Health { healthy },
            });
        };
        tokio::spawn(
            health::run_as(
                check,
                self.spec.task_env(),
                self.run_as().cloned(),
                cancel.clone(),
                report,
            )
            .instrument(tracing::Span::current()),
        );
    }
}

/// Write a control line; a failure means the shim is gone, which its status pipe reports.
async fn send(stdin: &mut Option<Box<dyn AsyncWrite + Send + Unpin>>, control: Control) {
    let Some(pipe) = stdin.as_mut() else {
        return;
    };
    let line = format!("{control}\n");
    if let Err(e) = pipe.write_all(line.as_bytes()).await {
        debug!(error = %e, %control, "control line not delivered");
        *stdin = None;
    }
}

fn floor_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

fn shim_status_to_exit(status: &std::process::ExitStatus) -> TaskExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => TaskExit::Code(code),
        (None, Some(sig)) => TaskExit::Signal(sig),
        (None, None) => TaskExit::Signal(Signal::SIGKILL as i32),
    }
}
