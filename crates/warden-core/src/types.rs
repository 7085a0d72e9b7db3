//! Domain types shared by every part of Warden: who an agent is, what a task is, what a job
//! asks for, and the epochs that make stale actors harmless.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_serde;
use crate::error::ConfigError;

/// An agent's identity: its name (normally the host name) and a generation that grows every
/// time the agent process starts. A restarted agent is a *new* agent as far as leases, tasks
/// and reports are concerned: anything its previous generation held is stale.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgentId {
    /// Agent name, unique in the fleet.
    pub name: Arc<str>,
    /// Incarnation counter; a larger value supersedes a smaller one.
    pub generation: u64,
}

impl AgentId {
    /// An agent id from a name and a generation.
    pub fn new(name: impl Into<Arc<str>>, generation: u64) -> Self {
        AgentId {
            name: name.into(),
            generation,
        }
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.generation)
    }
}

/// A job's name. Cheap to clone: every task refers to its job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobName(pub Arc<str>);

impl JobName {
    /// A job name from a string.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        JobName(name.into())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task slot: one instance of a job. A singleton has one slot (index 0); a service with
/// `replicas = n` has slots `0..n`. The slot is stable across reschedules; each placement of
/// it gets a new [`FencingToken`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    /// The job this task belongs to.
    pub job: JobName,
    /// Slot index within the job.
    pub index: u32,
}

impl TaskId {
    /// The task id for slot `index` of `job`.
    pub fn new(job: JobName, index: u32) -> Self {
        TaskId { job, index }
    }

    /// Parse the textual form `job/index`.
    pub fn parse(s: &str) -> Option<TaskId> {
        let (job, index) = s.rsplit_once('/')?;
        if job.is_empty() {
            return None;
        }
        Some(TaskId {
            job: JobName::new(job),
            index: index.parse().ok()?,
        })
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.index)
    }
}

/// The per-task epoch. It grows by one each time the task is (re)assigned, is persisted before
/// the assignment is sent, and is handed to the task as `WARDEN_FENCING_TOKEN` so downstream
/// systems can reject writes from an older incarnation. It never decreases.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token before any assignment.
    pub const NONE: FencingToken = FencingToken(0);

    /// The next token. Saturates rather than wrapping, so a token can never go back.
    #[must_use]
    pub fn next(self) -> FencingToken {
        FencingToken(self.0.saturating_add(1))
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// CPU and memory, as requested by a task or offered by an agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    #[serde(default)]
    pub cpu_millis: u64,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// A task's soft memory mark, MiB (0: none): above it the kernel reclaims the task's
    /// memory first, before the hard limit `memory_mb` OOM-kills it. Not used in placement
    /// (capacity arithmetic leaves it 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_high_mb: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Resources {
    /// Resources from CPU millicores and MiB.
    pub const fn new(cpu_millis: u64, memory_mb: u64) -> Self {
        Resources {
            cpu_millis,
            memory_mb,
            memory_high_mb: 0,
        }
    }

    /// Whether `request` fits in `self`.
    pub fn fits(&self, request: &Resources) -> bool {
        request.cpu_millis <= self.cpu_millis && request.memory_mb <= self.memory_mb
    }

    /// `self + other`, saturating.
    #[must_use]
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            memory_high_mb: 0,
        }
    }

    /// `self - other`, clamped at zero.
    #[must_use]
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            memory_high_mb: 0,
        }
    }
}

/// Whether a job may run more than once at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Exactly one live copy, ever: a replacement starts only when the old copy is surely
    /// fenced (see [`crate::fencing`]).
    Singleton,
    /// `replicas` interchangeable copies; a brief duplicate during recovery is harmless.
    Service,
    /// One copy on every agent (per-host work: collectors, log shippers, node agents). A copy
    /// belongs to its agent: it is restarted there and never moved to another one; an agent
    /// that joins gets one, an agent gone for good takes its copy with it.
    Daemon,
}

impl JobKind {
    /// The kind as job specs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Singleton => "singleton",
            JobKind::Service => "service",
            JobKind::Daemon => "daemon",
        }
    }
}

/// A task-level health check run by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthCheck {
    /// `GET http://127.0.0.1:{port}{path}` must answer 2xx.
    Http {
        /// Port on loopback.
        port: u16,
        /// Request path, default `/healthz`.
        #[serde(default = "default_health_path")]
        path: String,
        /// Check period, default 2 s.
        #[serde(default = "default_check_interval", with = "duration_serde")]
        interval: Duration,
        /// Per-check timeout, default 1 s.
        #[serde(default = "default_check_timeout", with = "duration_serde")]
        timeout: Duration,
        /// Consecutive failures before the task counts as unhealthy, default 3.
        #[serde(default = "default_check_failures")]
        failures: u32,
    },
    /// A TCP connect to `127.0.0.1:{port}` must succeed.
    Tcp {
        /// Port on loopback.
        port: u16,
        /// Check period, default 2 s.
        #[serde(default = "default_check_interval", with = "duration_serde")]
        interval: Duration,
        /// Per-check timeout, default 1 s.
        #[serde(default = "default_check_timeout", with = "duration_serde")]
        timeout: Duration,
        /// Consecutive failures before the task counts as unhealthy, default 3.
        #[serde(default = "default_check_failures")]
        failures: u32,
    },
    /// A command that must exit 0 (run directly, never through a shell).
    Exec {
        /// Program and arguments.
        command: Vec<String>,
        /// Check period, default 2 s.
        #[serde(default = "default_check_interval", with = "duration_serde")]
        interval: Duration,
        /// Per-check timeout, default 1 s.
        #[serde(default = "default_check_timeout", with = "duration_serde")]
        timeout: Duration,
        /// Consecutive failures before the task counts as unhealthy, default 3.
        #[serde(default = "default_check_failures")]
        failures: u32,
    },
}

fn default_health_path() -> String {
    "/healthz".to_string()
}
fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_check_failures() -> u32 {
    3
}

impl HealthCheck {
    /// `(interval, timeout, failures)` of the check.
    pub fn timing(&self) -> (Duration, Duration, u32) {
        match self {
            HealthCheck::Http {
                interval,
                timeout,
                failures,
                ..
            }
            | HealthCheck::Tcp {
                interval,
                timeout,
                failures,
                ..
            }
            | HealthCheck::Exec {
                interval,
                timeout,
                failures,
                ..
            } => (*interval, *timeout, *failures),
        }
    }
}

/// What a job asks for. This is the document users submit (TOML; see `docs/jobs.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique job name: letters, digits, `-`, `_`, `.`; 1–63 characters.
    pub name: JobName,
    /// `singleton` or `service`.
    pub kind: JobKind,
    /// Number of copies for a service (default 1); must be 1 (or absent) for a singleton.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Program to run (a path or a name looked up in `PATH`); never run through a shell.
    pub command: String,
    /// Arguments, passed as they are.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables for the task (nothing else of the agent's environment is passed,
    /// apart from `PATH` and the `WARDEN_*` variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resources reserved on the agent.
    #[serde(default)]
    pub resources: Resources,
    /// Optional health check run by the agent.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Optional service endpoint: the port the task serves on, under a service name that load
    /// balancers follow (`GET /v1/services/{name}`).
    #[serde(default)]
    pub service: Option<ServiceSpec>,
    /// Optional replicated state (`[state]`, singletons only): the task writes through its
    /// agent's state API and standbys follow (see `docs/state.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::state::StateSpec>,
    /// How a new version replaces running copies (`[update]`; see `docs/releases.md`). Absent:
    /// the defaults of [`crate::release::UpdateSpec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::release::UpdateSpec>,
    /// Configuration files written for each copy before it starts (`[[config]]`), in a
    /// directory of its own named by `WARDEN_CONFIG_DIR`. Part of the version: a change of a
    /// file rolls out and rolls back like a change of the binary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigFile>,
    /// The format of the data this version keeps (default 0). Raise it with a version whose
    /// data the versions before cannot read: Warden then refuses to go back past it — a
    /// revert, automatic or asked for, would run an older version on data it cannot read.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub data_epoch: u32,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// One configuration file of a job (`[[config]]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where, relative to the copy's config directory (`app.toml`, `conf.d/limits.conf`).
    pub path: String,
    /// The file's text (`warden job run` reads `file = "..."` entries into it).
    pub content: String,
}

/// Most configuration files per job.
pub const MAX_CONFIG_FILES: usize = 64;
/// Most bytes of configuration per job, all files together (64 KiB: a job's last ten
/// versions are stored in one record, which must stay well under etcd's 1.5 MiB requests).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Whether `path` is a safe relative file path for a config file: no root, no `..`, no empty
/// or `.` component, no NUL, at most 255 bytes.
pub fn valid_config_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Which port a service instance listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServicePort {
    /// The agent picks a free port for each instance (written `"dynamic"`).
    Dynamic,
    /// This port on every agent (two instances on one agent collide).
    Fixed(u16),
}

impl Serialize for ServicePort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ServicePort::Dynamic => s.serialize_str("dynamic"),
            ServicePort::Fixed(p) => s.serialize_u16(*p),
        }
    }
}

impl<'de> Deserialize<'de> for ServicePort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ServicePort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"dynamic\" or a port number 1-65535")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServicePort, E> {
                if v == "dynamic" {
                    Ok(ServicePort::Dynamic)
                } else {
                    Err(E::custom(format!(
                        "invalid port {v:?}: expected \"dynamic\" or a port number 1-65535"
                    )))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ServicePort, E> {
                u16::try_from(v).map(ServicePort::Fixed).map_err(|_| {
                    E::custom(format!(
                        "invalid port {v}: expected \"dynamic\" or a port number 1-65535"
                    ))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ServicePort, E> {
                u64::try_from(v).map_or_else(
                    |_| {
                        Err(E::custom(format!(
                            "invalid port {v}: expected \"dynamic\" or a port number 1-65535"
                        )))
                    },
                    |v| self.visit_u64(v),
                )
            }
        }
        d.deserialize_any(V)
    }
}

/// A job's service endpoint (`[service]` in a job spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name load balancers follow; same rules as a job name (default: the job name).
    #[serde(default)]
    pub name: Option<String>,
    /// `"dynamic"` (the agent picks a free port, passed as `WARDEN_PORT`) or a fixed port.
    pub port: ServicePort,
    /// How long an instance drains (no new connections) before its task is stopped when the
    /// job is stopped (default 0 s: stop at once).
    #[serde(default, with = "duration_serde")]
    pub drain: Duration,
    /// The API version this version of the service speaks (`"2"`, `"2024-06"`). During a
    /// rollout to a version that declares a new one, a load balancer with a cohort backend
    /// sends the requests that ask for it (a header) to the new version's copies alone, and
    /// keeps every other request on the old copies through the canary phase
    /// (docs/releases.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// Whether `v` is a usable API version: 1–32 characters, letters, digits, `.`, `_`, `-`.
pub fn valid_api_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Longest `service.drain` accepted (10 minutes).
pub const MAX_DRAIN: Duration = Duration::from_secs(600);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn default_replicas() -> u32 {
    1
}

/// Largest number of copies one job may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

impl JobSpec {
    /// Its `[update]` settings, defaults filled in.
    pub fn update(&self) -> crate::release::UpdateSpec {
        self.update.unwrap_or_default()
    }

    /// Number of task slots this job wants: a singleton with replicated state has one slot per
    /// replica (the primary and its standbys, on distinct agents). A daemon's slots follow the
    /// fleet (one per agent, [`crate::planner::Observed::daemon_pins`]): 0 here.
    pub fn desired_count(&self) -> u32 {
        match self.kind {
            JobKind::Singleton => 1 + u32::from(self.standbys()),
            JobKind::Service => self.replicas,
            JobKind::Daemon => 0,
        }
    }

    /// Standbys its `[state]` keeps (0 without one).
    pub fn standbys(&self) -> u8 {
        self.state.map_or(0, |s| s.standbys)
    }

    /// Task ids of every slot of this job.
    pub fn task_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        (0..self.desired_count()).map(|i| TaskId::new(self.name.clone(), i))
    }

    /// The name of the service this job's instances serve, if it declares one.
    pub fn service_name(&self) -> Option<&str> {
        self.service
            .as_ref()
            .map(|s| s.name.as_deref().unwrap_or(self.name.as_str()))
    }

    /// Check the spec for values that can never work, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.name.as_str();
        if name.is_empty() || name.len() > 63 {
            return Err(ConfigError::new("name", "must be 1 to 63 characters long"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::new(
                "name",
                "may contain only ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        if self.command.trim().is_empty() {
            return Err(ConfigError::new("command", "must not be empty"));
        }
        if self.command.contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
            return Err(ConfigError::new("command", "must not contain NUL bytes"));
        }
        match self.kind {
            JobKind::Singleton if self.replicas != 1 => {
                return Err(ConfigError::new(
                    "replicas",
                    "a singleton runs exactly one copy; remove `replicas` or use kind = \"service\"",
                ));
            }
            JobKind::Daemon if self.replicas != 1 => {
                return Err(ConfigError::new(
                    "replicas",
                    "a daemon runs one copy on every agent; remove `replicas`",
                ));
            }
            JobKind::Service if self.replicas == 0 || self.replicas > MAX_REPLICAS => {
                return Err(ConfigError::new(
                    "replicas",
                    format!("must be between 1 and {MAX_REPLICAS}"),
                ));
            }
            _ => {}
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ConfigError::new(
                    "env",
                    format!("invalid variable name {key:?}"),
                ));
            }
            if key.starts_with("WARDEN_") {
                return Err(ConfigError::new(
                    "env",
                    format!("{key} is reserved: WARDEN_* variables are set by the agent"),
                ));
            }
        }
        // Generous sanity bounds: no single host offers more, so such a request can never be
        // placed and is certainly a typo (e.g. memory in bytes instead of MiB).
        if self.resources.cpu_millis > 1_024_000 {
            return Err(ConfigError::new(
                "resources.cpu_millis",
                "more than 1024 cores requested; the unit is millicores (1000 = one core)",
            ));
        }
        if self.resources.memory_mb > 64 * 1024 * 1024 {
            return Err(ConfigError::new(
                "resources.memory_mb",
                "more than 64 TiB requested; the unit is MiB",
            ));
        }
        let r = &self.resources;
        if r.memory_high_mb > 0 && r.memory_mb > 0 && r.memory_high_mb > r.memory_mb {
            return Err(ConfigError::new(
                "resources.memory_high_mb",
                format!(
                    "the soft mark ({} MiB) is above the hard limit memory_mb ({} MiB): the \
                     task would be OOM-killed before it is ever reclaimed",
                    r.memory_high_mb, r.memory_mb
                ),
            ));
        }
        if let Some(service) = &self.service {
            if let Some(name) = &service.name
                && !valid_name(name)
            {
                return Err(ConfigError::new(
                    "service.name",
                    "must be 1 to 63 of ASCII letters, digits, '-', '_' and '.'",
                ));
            }
            if service.port == ServicePort::Fixed(0) {
                return Err(ConfigError::new(
                    "service.port",
                    "must not be 0; write port = \"dynamic\" to let the agent pick one",
                ));
            }
            if service.drain > MAX_DRAIN {
                return Err(ConfigError::new("service.drain", "must be at most 10m"));
            }
            if let Some(v) = &service.api_version
                && !valid_api_version(v)
            {
                return Err(ConfigError::new(
                    "service.api_version",
                    format!("{v:?}: use 1-32 letters, digits, '.', '_' or '-'"),
                ));
            }
        }
        if let Some(update) = &self.update {
            let copies = match self.kind {
                JobKind::Daemon => MAX_REPLICAS,
                _ => self.desired_count(),
            };
            update.validate(copies)?;
            if !update.traffic_steps.is_empty() && self.service.is_none() {
                return Err(ConfigError::new(
                    "update.traffic_steps",
                    "needs a [service]: traffic steps set load-balancer weights",
                ));
            }
            if update.reload_signal.is_some() && self.config.is_empty() {
                return Err(ConfigError::new(
                    "update.reload_signal",
                    "needs [[config]] files: it applies a change of them in place",
                ));
            }
        }
        if self.config.len() > MAX_CONFIG_FILES {
            return Err(ConfigError::new(
                "config",
                format!(
                    "{} files; a job may carry at most {MAX_CONFIG_FILES}",
                    self.config.len()
                ),
            ));
        }
        let mut total = 0usize;
        let mut paths = std::collections::BTreeSet::new();
        for (i, f) in self.config.iter().enumerate() {
            if !valid_config_path(&f.path) {
                return Err(ConfigError::new(
                    format!("config[{i}].path"),
                    format!(
                        "{:?} is not a relative file path (no leading '/', no '..' or '.' \
                         parts, at most 255 bytes)",
                        f.path
                    ),
                ));
            }
            if !paths.insert(f.path.as_str()) {
                return Err(ConfigError::new(
                    format!("config[{i}].path"),
                    format!("{:?} is written twice", f.path),
                ));
            }
            total += f.content.len();
        }
        if total > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                "config",
                format!(
                    "the config files total {total} bytes, more than the {MAX_CONFIG_BYTES} a job \
                     may carry; ship large data with the program, not in the job"
                ),
            ));
        }
        if let Some(state) = &self.state {
            if self.kind != JobKind::Singleton {
                return Err(ConfigError::new(
                    "state",
                    "only a singleton keeps replicated state; use kind = \"singleton\"",
                ));
            }
            state.validate()?;
        }
        if let Some(check) = &self.health {
            let (interval, timeout, failures) = check.timing();
            if interval.is_zero() {
                return Err(ConfigError::new(
                    "health.interval",
                    "must be greater than zero",
                ));
            }
            if timeout.is_zero() || timeout > interval {
                return Err(ConfigError::new(
                    "health.timeout",
                    "must be greater than zero and at most health.interval",
                ));
            }
            if failures == 0 {
                return Err(ConfigError::new("health.failures", "must be at least 1"));
            }
            match check {
                HealthCheck::Http { port, path, .. } => {
                    if *port == 0 {
                        return Err(ConfigError::new("health.port", "must not be 0"));
                    }
                    if !path.starts_with('/') {
                        return Err(ConfigError::new("health.path", "must start with '/'"));
                    }
                }
                HealthCheck::Tcp { port, .. } if *port == 0 => {
                    return Err(ConfigError::new("health.port", "must not be 0"));
                }
                HealthCheck::Exec { command, .. } if command.is_empty() => {
                    return Err(ConfigError::new("health.command", "must not be empty"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Health signals an agent reports with its heartbeats. Every field is optional: an agent
/// reports what its platform offers, and the health score weighs only what is present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signals {
    /// CPU utilisation of the host, 0.0–1.0.
    pub cpu: Option<f64>,
    /// Memory utilisation of the host, 0.0–1.0.
    pub memory: Option<f64>,
    /// Share of failed requests or operations reported by tasks, 0.0–1.0.
    pub error_rate: Option<f64>,
    /// Request latency (p99) reported by tasks, milliseconds.
    pub latency_ms: Option<f64>,
    /// Share of task health checks that passed over the last window, 0.0–1.0.
    pub task_success: Option<f64>,
    /// Local task restarts over the last window.
    pub restarts: Option<f64>,
    /// Linux pressure stall information, `some avg10` of CPU/memory/io, the largest, 0–100.
    pub pressure: Option<f64>,
}

impl Signals {
    /// The signals as (kind, value) pairs, present ones only.
    pub fn iter(&self) -> impl Iterator<Item = (SignalKind, f64)> + '_ {
        SignalKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
    }

    /// One signal's value, if reported and a finite number.
    pub fn get(&self, kind: SignalKind) -> Option<f64> {
        let v = match kind {
            SignalKind::Cpu => self.cpu,
            SignalKind::Memory => self.memory,
            SignalKind::ErrorRate => self.error_rate,
            SignalKind::Latency => self.latency_ms,
            SignalKind::TaskSuccess => self.task_success,
            SignalKind::Restarts => self.restarts,
            SignalKind::Pressure => self.pressure,
        };
        v.filter(|x| x.is_finite())
    }
}

/// The kinds of health signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Host CPU utilisation.
    Cpu,
    /// Host memory utilisation.
    Memory,
    /// Task error rate.
    ErrorRate,
    /// Task request latency.
    Latency,
    /// Task health-check success rate.
    TaskSuccess,
    /// Local task restarts.
    Restarts,
    /// Linux pressure stall information.
    Pressure,
}

impl SignalKind {
    /// Every signal kind, in a fixed order.
    pub const ALL: [SignalKind; 7] = [
        SignalKind::Cpu,
        SignalKind::Memory,
        SignalKind::ErrorRate,
        SignalKind::Latency,
        SignalKind::TaskSuccess,
        SignalKind::Restarts,
        SignalKind::Pressure,
    ];

    /// Lower-case name used in APIs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Cpu => "cpu",
            SignalKind::Memory => "memory",
            SignalKind::ErrorRate => "error_rate",
            SignalKind::Latency => "latency",
            SignalKind::TaskSuccess => "task_success",
            SignalKind::Restarts => "restarts",
            SignalKind::Pressure => "pressure",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: JobKind, replicas: u32) -> JobSpec {
        JobSpec {
            data_epoch: 0,
            name: JobName::new("web"),
            kind,
            replicas,
            command: "/bin/true".into(),
            args: vec![],
            env: BTreeMap::new(),
            resources: Resources::new(100, 64),
            health: None,
            service: None,
            state: None,
            update: None,
            config: vec![],
        }
    }

    #[test]
    fn service_port_reads_dynamic_or_a_number() {
        #[derive(Deserialize)]
        struct W {
            port: ServicePort,
        }
        let read = |t: &str| serde_json::from_str::<W>(t).map(|w| w.port);
        assert_eq!(
            read(r#"{"port": "dynamic"}"#).ok(),
            Some(ServicePort::Dynamic)
        );
        assert_eq!(
            read(r#"{"port": 8080}"#).ok(),
            Some(ServicePort::Fixed(8080))
        );
        for bad in [
            r#"{"port": "auto"}"#,
            r#"{"port": 70000}"#,
            r#"{"port": -1}"#,
        ] {
            let err = read(bad).expect_err(bad).to_string();
            assert!(err.contains("dynamic"), "{bad}: {err}");
        }
        let json = serde_json::to_string(&ServiceSpec {
            api_version: None,
            name: None,
            port: ServicePort::Dynamic,
            drain: Duration::from_secs(2),
        })
        .ok();
        assert_eq!(
            json.as_deref(),
            Some(r#"{"name":null,"port":"dynamic","drain":"2s"}"#)
        );
    }

    #[test]
    fn fencing_tokens_only_grow() {
        assert_eq!(FencingToken(3).next(), FencingToken(4));
        assert_eq!(FencingToken(u64::MAX).next(), FencingToken(u64::MAX));
    }

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::new(JobName::new("a/b"), 7);
        assert_eq!(id.to_string(), "a/b/7");
        assert_eq!(TaskId::parse("a/b/7"), Some(id));
        assert_eq!(TaskId::parse("nope"), None);
        assert_eq!(TaskId::parse("/3"), None);
    }

    #[test]
    fn spec_validation_names_the_field() {
        let cases: Vec<(JobSpec, &str)> = vec![
            (spec(JobKind::Singleton, 2), "replicas"),
            (spec(JobKind::Service, 0), "replicas"),
            (
                JobSpec {
                    name: JobName::new("bad name"),
                    ..spec(JobKind::Service, 1)
                },
                "name",
            ),
            (
                JobSpec {
                    command: " ".into(),
                    ..spec(JobKind::Service, 1)
                },
                "command",
            ),
            (
                JobSpec {
                    resources: Resources::new(5_000_000, 1),
                    ..spec(JobKind::Service, 1)
                },
                "resources.cpu_millis",
            ),
            (
                JobSpec {
                    resources: Resources {
                        memory_high_mb: 256,
                        ..Resources::new(100, 128)
                    },
                    ..spec(JobKind::Service, 1)
                },
                "resources.memory_high_mb",
            ),
            (
                JobSpec {
                    env: [("WARDEN_TASK_ID".to_string(), "x".to_string())].into(),
                    ..spec(JobKind::Service, 1)
                },
                "env",
            ),
            (
                JobSpec {
                    health: Some(HealthCheck::Tcp {
                        port: 80,
                        interval: Duration::from_secs(1),
                        timeout: Duration::from_secs(2),
                        failures: 3,
                    }),
                    ..spec(JobKind::Service, 1)
                },
                "health.timeout",
            ),
            (
                JobSpec {
                    service: Some(ServiceSpec {
                        api_version: None,
                        name: Some("bad name".into()),
                        port: ServicePort::Dynamic,
                        drain: Duration::ZERO,
                    }),
                    ..spec(JobKind::Service, 1)
                },
                "service.name",
            ),
            (
                JobSpec {
                    service: Some(ServiceSpec {
                        api_version: None,
                        name: None,
                        port: ServicePort::Fixed(0),
                        drain: Duration::ZERO,
                    }),
                    ..spec(JobKind::Service, 1)
                },
                "service.port",
            ),
        ];
        for (s, field) in cases {
            let err = s.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        assert!(spec(JobKind::Service, 3).validate().is_ok());
        assert_eq!(spec(JobKind::Service, 3).task_ids().count(), 3);
        assert_eq!(spec(JobKind::Singleton, 1).desired_count(), 1);
    }
}
