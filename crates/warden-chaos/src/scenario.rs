//! Chaos scenarios: the TOML format `warden chaos run` reads, and its validation.
//!
//! A scenario names a cluster size, a workload (singletons and replicated services running the
//! built-in `warden workload sleep`), and a schedule of faults. Every time is an offset from
//! the moment the workload runs (the *schedule start*):
//!
//! ```toml
//! name = "crash"
//! description = "kill -9 agents"
//! agents = 3           # default 3
//! duration = "45s"     # the schedule's length, settle included
//! settle = "10s"       # quiet time after the last fault ends (default 10s)
//! rto_bound = "10s"    # no-lost-work: every slot runs again this long after the last fault
//!
//! [[workload]]
//! name = "db"
//! kind = "singleton"
//!
//! [[workload]]
//! name = "web"
//! kind = "service"
//! replicas = 2
//!
//! [[fault]]
//! kind = "kill"              # see FaultKind: kill, pause, restart, partition, oneway, flap,
//!                            # loss, delay, cpu, memory, isolate, server-kill, leader-kill,
//!                            # etcd-kill
//! at = "5s"
//! duration = "8s"            # kill: restart after; most others: required
//! target = "singleton-holder" # an agent name, "random" (seeded), "singleton-holder", or
//!                            # "all" (loss, delay, cpu, memory)
//! ```
//!
//! A replicated control plane (cargo feature `etcd` of the `warden` binary) is asked for with a
//! `[cluster]` table: `servers` replicas (default 1) on `store = "etcd"` (default `"redb"`, the
//! embedded store, one server only) with `etcd_members` etcd processes (default 3), all
//! started and stopped by the harness. Its faults:
//! - `leader-kill`: SIGKILL the server that leads at that moment and start it again, as a
//!   standby, after `duration` (required); the report gives the failover time of each (the
//!   kill → the new leader's first reconcile round, `acting_since`);
//! - `etcd-kill`: SIGKILL `count` etcd members (default 1, chosen with the seed) and start
//!   them again after `duration` (required); two of three lose the quorum;
//! - `after_failover` on an agent fault: inject it that long after the new leader of the
//!   latest `leader-kill` started acting (and not before `at`), e.g. to measure detection and
//!   recovery by a leader that has just taken over.
//!
//! Kind-specific fields (an error on any other kind):
//! - `oneway`: `direction = "to-server"` (the agent's packets are lost) or `"from-server"`;
//! - `flap`: `on` and `off` (default 1 s each): cut for `on`, healed for `off`, repeatedly;
//! - `loss`: `probability` (0–1) of dropping each packet, each way; also `delay`/`jitter`;
//! - `delay`: `delay` and/or `jitter` added to every chunk of the agent's session (both ways);
//! - `cpu`: `workers` busy processes (default: one per core); `memory`: `megabytes` held.
//!
//! Unknown fields are errors, and every validation error names the field it is about
//! (`fault[1].duration: …`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Default number of agents.
pub const DEFAULT_AGENTS: usize = 3;
/// Largest number of agents a local scenario may ask for.
pub const MAX_AGENTS: usize = 32;
/// Default quiet time after the last fault.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);
/// Default bound for the no-lost-work checker.
pub const DEFAULT_RTO_BOUND: Duration = Duration::from_secs(10);
/// Default tolerance of the no-false-verdict checker after a fault ends: the lease (2 s) with
/// the server's drift and grace margins (`L·(1+ρ) + kill_grace` ≈ 2.35 s).
pub const DEFAULT_VERDICT_TOLERANCE: Duration = Duration::from_millis(2350);

/// A chaos scenario, as read from TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (used for the output directory).
    pub name: String,
    /// What the scenario exercises.
    #[serde(default)]
    pub description: String,
    /// Agents in the cluster, `agent-1` … `agent-N`.
    #[serde(default = "default_agents")]
    pub agents: usize,
    /// Length of the fault schedule, settle time included.
    #[serde(with = "warden_core::duration_serde")]
    pub duration: Duration,
    /// Quiet time after the last fault ends; the schedule must leave at least this much.
    #[serde(default = "default_settle", with = "warden_core::duration_serde")]
    pub settle: Duration,
    /// Every desired task slot must run (exactly once) within this time after the last fault.
    #[serde(default = "default_rto_bound", with = "warden_core::duration_serde")]
    pub rto_bound: Duration,
    /// A Failed verdict this soon after a fault on that agent ended is not counted as false.
    #[serde(
        default = "default_verdict_tolerance",
        with = "warden_core::duration_serde"
    )]
    pub verdict_tolerance: Duration,
    /// The control plane: servers and store (one server on its embedded store by default).
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// The jobs to run.
    #[serde(default, rename = "workload")]
    pub workloads: Vec<Workload>,
    /// The faults to inject.
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
}

fn default_agents() -> usize {
    DEFAULT_AGENTS
}
fn default_settle() -> Duration {
    DEFAULT_SETTLE
}
fn default_rto_bound() -> Duration {
    DEFAULT_RTO_BOUND
}
fn default_verdict_tolerance() -> Duration {
    DEFAULT_VERDICT_TOLERANCE
}

/// Largest number of server replicas a local scenario may ask for.
pub const MAX_SERVERS: usize = 5;
/// Default number of etcd members of a replicated control plane.
pub const DEFAULT_ETCD_MEMBERS: usize = 3;

/// Where the control plane keeps its state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded store: one server.
    #[default]
    Redb,
    /// An etcd cluster started by the harness: one or more server replicas, one leads.
    Etcd,
}

/// The control plane of a scenario (`[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSpec {
    /// `warden server` replicas (default 1; more need `store = "etcd"`).
    pub servers: usize,
    /// `redb` (default) or `etcd`.
    pub store: StoreKind,
    /// etcd members when `store = "etcd"` (default 3).
    pub etcd_members: usize,
    /// Give every agent a host of this much CPU, millicores: the agent, its tasks and the
    /// stressors aimed at it run in a cgroup of its own with this quota (root only).
    pub host_cpu_millis: Option<u64>,
    /// Give every agent a host of this much memory, MiB (as `host_cpu_millis`).
    pub host_memory_mb: Option<u64>,
    /// Agents keep their service copies running this long when their process dies, and
    /// take them over when started again (`warden agent --reattach-window-ms`; default 0:
    /// tasks die with their agent). `upgrade` faults need it.
    pub reattach_window_ms: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            servers: 1,
            store: StoreKind::Redb,
            etcd_members: DEFAULT_ETCD_MEMBERS,
            host_cpu_millis: None,
            host_memory_mb: None,
            reattach_window_ms: 0,
        }
    }
}

impl ClusterSpec {
    /// Whether the control plane is replicated on etcd.
    pub fn replicated(&self) -> bool {
        self.store == StoreKind::Etcd
    }
}

/// Kind of a workload job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// At most one copy may ever run.
    Singleton,
    /// `replicas` copies; a brief duplicate is harmless.
    Service,
}

/// One job of the workload (it runs `warden workload sleep`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Job name.
    pub name: String,
    /// Singleton or service.
    pub kind: WorkloadKind,
    /// Copies (services only; a singleton has exactly one).
    #[serde(default = "one")]
    pub replicas: u32,
    /// A stateful singleton: it runs `warden workload counter` on a replicated state instead,
    /// and the **no-lost-ack** checker reads what it acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<WorkloadState>,
}

/// `[workload.state]`: the replicated state of a stateful workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadState {
    /// Standbys (default 1).
    #[serde(default = "default_standbys")]
    pub standbys: u8,
    /// `local` or `standby` (default).
    #[serde(default = "default_ack")]
    pub ack: warden_core::state::AckLevel,
    /// Milliseconds between the counter's increments (default 5).
    #[serde(default = "default_every_ms")]
    pub every_ms: u64,
    /// `hot` (default: every standby runs the counter) or `warm` (a standby's agent holds
    /// the state; the counter starts when it is promoted).
    #[serde(default)]
    pub mode: warden_core::state::StateMode,
}

fn default_standbys() -> u8 {
    1
}

fn default_ack() -> warden_core::state::AckLevel {
    warden_core::state::AckLevel::Standby
}

fn default_every_ms() -> u64 {
    5
}

fn one() -> u32 {
    1
}

impl Workload {
    /// The task ids of this job's slots (`name/0` …; a stateful singleton has one per
    /// replica).
    pub fn slots(&self) -> Vec<String> {
        let n = match self.state {
            Some(st) => 1 + u32::from(st.standbys),
            None => self.replicas,
        };
        (0..n).map(|i| format!("{}/{i}", self.name)).collect()
    }

    /// The job spec submitted to the server (`{exe}` is filled in by the cluster).
    pub fn job_toml(&self) -> String {
        let kind = match self.kind {
            WorkloadKind::Singleton => "singleton",
            WorkloadKind::Service => "service",
        };
        let replicas = match self.kind {
            WorkloadKind::Singleton => String::new(),
            WorkloadKind::Service => format!("replicas = {}\n", self.replicas),
        };
        if let Some(st) = self.state {
            return format!(
                "name = \"{}\"\nkind = \"singleton\"\ncommand = \"{{exe}}\"\n\
                 args = [\"workload\", \"counter\", \"--every-ms\", \"{}\"]\n\
                 [resources]\ncpu_millis = 10\nmemory_mb = 16\n\
                 [state]\nstandbys = {}\nack = \"{}\"\nmode = \"{}\"\n",
                self.name,
                st.every_ms,
                st.standbys,
                st.ack,
                st.mode.as_str()
            );
        }
        format!(
            "name = \"{}\"\nkind = \"{kind}\"\n{replicas}command = \"{{exe}}\"\n\
             args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
             [resources]\ncpu_millis = 10\nmemory_mb = 16\n",
            self.name
        )
    }
}

/// Kind of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the agent; with a `duration`, start it again after that long.
    Kill,
    /// SIGSTOP the agent for `duration`, then SIGCONT.
    Pause,
    /// SIGKILL the agent and start it again at once.
    Restart,
    /// A planned restart in place (SIGHUP: an upgrade): the agent keeps its tasks, the server
    /// holds its verdict. Needs `[cluster] reattach_window_ms`.
    Upgrade,
    /// Cut the agent off from the server, then reboot its host (the agent, its shims and its
    /// tasks SIGKILLed) and start the agent again while still cut off: it runs the services
    /// of its local cache offline. Heal after `duration`. Needs `[cluster]
    /// reattach_window_ms`.
    OfflineRestart,
    /// Cut the agent off from the server, both directions, silently, for `duration`.
    Partition,
    /// Lose one direction only (`direction`) for `duration`.
    Oneway,
    /// Partition on for `on`, off for `off`, repeatedly for `duration`.
    Flap,
    /// Drop each packet of the agent's link with `probability`, for `duration`.
    Loss,
    /// Delay the agent's session by `delay` plus up to `jitter`, for `duration`.
    Delay,
    /// Busy-loop `workers` processes for `duration` (stress-ng, or a built-in burner).
    Cpu,
    /// Hold `megabytes` of memory for `duration` (stress-ng, or a built-in allocator).
    Memory,
    /// Cut every agent off from the server at once (the server's own network fails): the
    /// mass-failure brake must hold.
    Isolate,
    /// SIGKILL the server; start it again after `duration` (default: at once).
    ServerKill,
    /// SIGKILL the leading server of a replicated control plane; start it again (a standby)
    /// after `duration`.
    LeaderKill,
    /// SIGKILL `count` etcd members; start them again after `duration`.
    EtcdKill,
}

impl FaultKind {
    /// The name used in TOML and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::Upgrade => "upgrade",
            FaultKind::OfflineRestart => "offline-restart",
            FaultKind::Partition => "partition",
            FaultKind::Oneway => "oneway",
            FaultKind::Flap => "flap",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::Cpu => "cpu",
            FaultKind::Memory => "memory",
            FaultKind::Isolate => "isolate",
            FaultKind::ServerKill => "server-kill",
            FaultKind::LeaderKill => "leader-kill",
            FaultKind::EtcdKill => "etcd-kill",
        }
    }

    /// Whether the fault is aimed at agents (not the server as a whole).
    pub fn has_target(self) -> bool {
        !matches!(
            self,
            FaultKind::ServerKill
                | FaultKind::Isolate
                | FaultKind::LeaderKill
                | FaultKind::EtcdKill
        )
    }

    /// Whether the fault hits the control plane's own processes (servers, etcd), not agents
    /// or their links.
    pub fn hits_control_plane(self) -> bool {
        matches!(
            self,
            FaultKind::ServerKill | FaultKind::LeaderKill | FaultKind::EtcdKill
        )
    }

    /// Whether the agent hit is truly not up and reachable while the fault lasts (so a
    /// Failed verdict then is right). Loss, delay and pressure leave it up: a Failed verdict
    /// under them is a false one.
    pub fn takes_agent_out(self) -> bool {
        !matches!(
            self,
            FaultKind::Loss | FaultKind::Delay | FaultKind::Cpu | FaultKind::Memory
        )
    }

    /// Whether the fault occupies its agent: no second exclusive fault is put on an agent
    /// while one lasts. Pressure (cpu, memory) does not: it loads the host, and a pause or a
    /// partition on top of it is a combination worth running.
    pub fn exclusive(self) -> bool {
        !matches!(self, FaultKind::Cpu | FaultKind::Memory)
    }

    /// Whether the fault may target `all` agents at once.
    pub fn may_target_all(self) -> bool {
        matches!(
            self,
            FaultKind::Loss | FaultKind::Delay | FaultKind::Cpu | FaultKind::Memory
        )
    }

    /// Whether the fault needs network namespaces (root and nft): packet loss cannot be
    /// made by a TCP proxy, which can only cut or delay a byte stream.
    pub fn needs_netns(self) -> bool {
        self == FaultKind::Loss
    }
}

/// Which direction a one-way partition loses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The agent's packets to the server are lost (the server hears nothing; the agent
    /// still hears the server).
    ToServer,
    /// The server's packets to the agent are lost.
    FromServer,
}

/// Whom a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The agent of that name.
    Agent(String),
    /// An agent chosen with the run's seeded generator among those not already faulted.
    Random,
    /// The agent running a singleton at the moment the fault starts.
    SingletonHolder,
    /// The agent running the primary of the stateful workload, as the server names it.
    Primary,
    /// The agent running a standby of the stateful workload (an in-sync one if any).
    Standby,
    /// Every agent (loss, delay, cpu, memory).
    All,
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// What to do.
    pub kind: FaultKind,
    /// When, from the schedule start.
    #[serde(with = "warden_core::duration_serde")]
    pub at: Duration,
    /// How long (kill, server-kill: optional; restart: none; every other kind: required).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    /// `agent-N`, `random` (default), `singleton-holder` or `all`; not for `server-kill`
    /// and `isolate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `oneway`: the direction lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// `flap`: how long each cut lasts (default 1 s).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub on: Option<Duration>,
    /// `flap`: how long the link works between cuts (default 1 s).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub off: Option<Duration>,
    /// `loss`: probability of dropping each packet (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// `delay`, `loss`: fixed delay added to the agent's session, each way.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// `delay`, `loss`: random extra delay, uniform in `[0, jitter]` (order is kept).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// `cpu`: busy processes (default: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// `memory`: MiB to allocate and touch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub megabytes: Option<u64>,
    /// `etcd-kill`: members to kill (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Agent faults: inject this long after the new leader of the latest `leader-kill` started
    /// acting (not before `at`); the fault's `duration` counts from the injection.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub after_failover: Option<Duration>,
}

/// Default length of each cut and each healed spell of a `flap`.
pub const DEFAULT_FLAP: Duration = Duration::from_secs(1);

impl FaultSpec {
    /// A fault of `kind` at `at`, every optional field unset.
    pub fn new(kind: FaultKind, at: Duration) -> FaultSpec {
        FaultSpec {
            kind,
            at,
            duration: None,
            target: None,
            direction: None,
            on: None,
            off: None,
            probability: None,
            delay: None,
            jitter: None,
            workers: None,
            megabytes: None,
            count: None,
            after_failover: None,
        }
    }

    /// The target, parsed (`random` when not given).
    pub fn target(&self) -> Target {
        match self.target.as_deref() {
            None | Some("random") => Target::Random,
            Some("singleton-holder") => Target::SingletonHolder,
            Some("primary") => Target::Primary,
            Some("standby") => Target::Standby,
            Some("all") => Target::All,
            Some(name) => Target::Agent(name.to_string()),
        }
    }

    /// When the fault ends, from the schedule start: `at + duration`, or `at` for faults
    /// without a duration (a restart; a kill that is never undone ends, as far as the
    /// schedule is concerned, when it is done).
    pub fn end(&self) -> Duration {
        self.at + self.duration.unwrap_or_default()
    }

    /// A flap's cuts, as offsets from the schedule start: `(cut, heal)` pairs.
    pub fn flap_cuts(&self) -> Vec<(Duration, Duration)> {
        let on = self.on.unwrap_or(DEFAULT_FLAP);
        let off = self.off.unwrap_or(DEFAULT_FLAP);
        let end = self.end();
        let mut cuts = Vec::new();
        let mut t = self.at;
        while t < end && !on.is_zero() {
            cuts.push((t, (t + on).min(end)));
            t += on + off;
        }
        cuts
    }

    /// The kind-specific fields that are set, by name.
    fn extras(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.direction.is_some() {
            v.push("direction");
        }
        if self.on.is_some() {
            v.push("on");
        }
        if self.off.is_some() {
            v.push("off");
        }
        if self.probability.is_some() {
            v.push("probability");
        }
        if self.delay.is_some() {
            v.push("delay");
        }
        if self.jitter.is_some() {
            v.push("jitter");
        }
        if self.workers.is_some() {
            v.push("workers");
        }
        if self.megabytes.is_some() {
            v.push("megabytes");
        }
        if self.count.is_some() {
            v.push("count");
        }
        if self.after_failover.is_some() && !self.kind.has_target() {
            v.push("after_failover");
        }
        v
    }

    /// Check the kind-specific fields of fault number `i`.
    fn validate_fields(&self, i: usize) -> Result<()> {
        let kind = self.kind.as_str();
        let allowed: &[&str] = match self.kind {
            FaultKind::Oneway => &["direction"],
            FaultKind::Flap => &["on", "off"],
            FaultKind::Loss => &["probability", "delay", "jitter"],
            FaultKind::Delay => &["delay", "jitter"],
            FaultKind::Cpu => &["workers"],
            FaultKind::Memory => &["megabytes"],
            FaultKind::EtcdKill => &["count"],
            _ => &[],
        };
        if let Some(field) = self.extras().into_iter().find(|f| !allowed.contains(f)) {
            bail!("fault[{i}].{field}: not allowed for {kind}");
        }
        match self.kind {
            FaultKind::Oneway if self.direction.is_none() => {
                bail!(
                    "fault[{i}].direction: required for oneway (\"to-server\" or \"from-server\")"
                );
            }
            FaultKind::Loss => match self.probability {
                None => bail!("fault[{i}].probability: required for loss"),
                Some(p) if !(p > 0.0 && p < 1.0) => {
                    bail!("fault[{i}].probability: {p} is out of range (between 0 and 1)");
                }
                _ => {}
            },
            FaultKind::Delay
                if self.delay.unwrap_or_default().is_zero()
                    && self.jitter.unwrap_or_default().is_zero() =>
            {
                bail!("fault[{i}].delay: delay needs a non-zero delay or jitter");
            }
            FaultKind::Cpu if self.workers == Some(0) || self.workers.is_some_and(|w| w > 64) => {
                bail!("fault[{i}].workers: out of range (1 to 64)");
            }
            FaultKind::Memory => match self.megabytes {
                None => bail!("fault[{i}].megabytes: required for memory"),
                Some(m) if m == 0 || m > 65_536 => {
                    bail!("fault[{i}].megabytes: {m} is out of range (1 to 65536)");
                }
                _ => {}
            },
            FaultKind::Flap if self.on.is_some_and(|d| d.is_zero()) => {
                bail!("fault[{i}].on: must be greater than zero");
            }
            _ => {}
        }
        for (name, d) in [("delay", self.delay), ("jitter", self.jitter)] {
            if d.is_some_and(|d| d > Duration::from_secs(10)) {
                bail!("fault[{i}].{name}: at most 10s");
            }
        }
        Ok(())
    }
}

/// `Option<Duration>` in human form.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => warden_core::duration_serde::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        warden_core::duration_serde::deserialize(d).map(Some)
    }
}

impl Scenario {
    /// Parse and validate a scenario.
    pub fn from_toml(text: &str) -> Result<Scenario> {
        let s: Scenario = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        s.validate()?;
        Ok(s)
    }

    /// Read, parse and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read scenario {}", path.display()))?;
        Scenario::from_toml(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Agent names, `agent-1` … `agent-N`.
    pub fn agent_names(&self) -> Vec<String> {
        (1..=self.agents).map(|i| format!("agent-{i}")).collect()
    }

    /// Task ids of singleton slots.
    pub fn singleton_slots(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|w| w.kind == WorkloadKind::Singleton)
            .flat_map(Workload::slots)
            .collect()
    }

    /// The stateful workload, if any (at most one).
    pub fn stateful(&self) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.state.is_some())
    }

    /// Task ids of every desired slot.
    pub fn all_slots(&self) -> Vec<String> {
        self.workloads.iter().flat_map(Workload::slots).collect()
    }

    /// The slots of each replicated state with warm standbys: one process among them.
    pub fn warm_groups(&self) -> Vec<Vec<String>> {
        self.workloads
            .iter()
            .filter(|w| {
                w.state
                    .is_some_and(|s| s.mode == warden_core::state::StateMode::Warm)
            })
            .map(Workload::slots)
            .collect()
    }

    /// Whether the processes `procs` (task ids) run every slot once — one process per group
    /// of [`Scenario::warm_groups`].
    pub fn runs_every_slot(&self, procs: &[&str]) -> bool {
        let groups = self.warm_groups();
        let count = |s: &str| procs.iter().filter(|p| **p == s).count();
        let grouped: Vec<&String> = groups.iter().flatten().collect();
        self.all_slots()
            .iter()
            .filter(|s| !grouped.contains(s))
            .all(|s| count(s) == 1)
            && groups
                .iter()
                .all(|g| g.iter().map(|s| count(s)).sum::<usize>() == 1)
    }

    /// When the last fault ends, from the schedule start (zero without faults).
    pub fn last_fault_end(&self) -> Duration {
        self.faults
            .iter()
            .map(FaultSpec::end)
            .max()
            .unwrap_or_default()
    }

    /// Check everything that TOML types cannot; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            bail!("name: must not be empty");
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "name: {:?} may only contain letters, digits, '-' and '_'",
                self.name
            );
        }
        if self.agents == 0 || self.agents > MAX_AGENTS {
            bail!(
                "agents: {} is out of range (1 to {MAX_AGENTS})",
                self.agents
            );
        }
        if self.duration.is_zero() {
            bail!("duration: must be greater than zero");
        }
        if self.rto_bound.is_zero() {
            bail!("rto_bound: must be greater than zero");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if w.name.is_empty()
                || !w
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "workload[{i}].name: {:?} must be non-empty letters, digits, '-' and '_'",
                    w.name
                );
            }
            if !names.insert(w.name.as_str()) {
                bail!("workload[{i}].name: {:?} is used twice", w.name);
            }
            match w.kind {
                WorkloadKind::Singleton if w.replicas != 1 => {
                    bail!(
                        "workload[{i}].replicas: a singleton has exactly 1 (got {})",
                        w.replicas
                    );
                }
                WorkloadKind::Service if w.replicas == 0 || w.replicas > 100 => {
                    bail!(
                        "workload[{i}].replicas: {} is out of range (1 to 100)",
                        w.replicas
                    );
                }
                _ => {}
            }
            if let Some(st) = w.state {
                if w.kind != WorkloadKind::Singleton {
                    bail!("workload[{i}].state: only a singleton keeps a replicated state");
                }
                if st.standbys == 0 || st.standbys > 2 {
                    bail!(
                        "workload[{i}].state.standbys: {} is out of range (1 or 2)",
                        st.standbys
                    );
                }
                if usize::from(st.standbys) + 1 > self.agents {
                    bail!(
                        "workload[{i}].state.standbys: {} standbys and a primary need {} agents \
                         (the scenario has {})",
                        st.standbys,
                        st.standbys + 1,
                        self.agents
                    );
                }
            }
        }
        if self.workloads.iter().filter(|w| w.state.is_some()).count() > 1 {
            bail!("workload: at most one workload may keep a state");
        }
        let c = &self.cluster;
        if c.servers == 0 || c.servers > MAX_SERVERS {
            bail!(
                "cluster.servers: {} is out of range (1 to {MAX_SERVERS})",
                c.servers
            );
        }
        if c.servers > 1 && !c.replicated() {
            bail!(
                "cluster.servers: {} replicas need a shared store: set cluster.store = \"etcd\"",
                c.servers
            );
        }
        if c.replicated() && (c.etcd_members == 0 || c.etcd_members > 5) {
            bail!(
                "cluster.etcd_members: {} is out of range (1 to 5)",
                c.etcd_members
            );
        }
        let agents = self.agent_names();
        let latest_end = self.duration.saturating_sub(self.settle);
        for (i, f) in self.faults.iter().enumerate() {
            let kind = f.kind.as_str();
            match f.kind {
                FaultKind::LeaderKill if c.servers < 2 => bail!(
                    "fault[{i}].kind: leader-kill needs a replicated control plane \
                     ([cluster] servers = 3, store = \"etcd\")"
                ),
                FaultKind::EtcdKill if !c.replicated() => {
                    bail!("fault[{i}].kind: etcd-kill needs [cluster] store = \"etcd\"")
                }
                FaultKind::EtcdKill
                    if f.count.unwrap_or(1) == 0 || f.count.unwrap_or(1) > c.etcd_members =>
                {
                    bail!(
                        "fault[{i}].count: {} is out of range (1 to cluster.etcd_members = {})",
                        f.count.unwrap_or(1),
                        c.etcd_members
                    )
                }
                FaultKind::ServerKill if c.servers > 1 => bail!(
                    "fault[{i}].kind: server-kill is for a single server; with replicas use \
                     leader-kill"
                ),
                _ => {}
            }
            if f.after_failover.is_some()
                && !self.faults[..i]
                    .iter()
                    .any(|g| g.kind == FaultKind::LeaderKill && g.at <= f.at)
            {
                bail!("fault[{i}].after_failover: needs a leader-kill earlier in the schedule");
            }
            let optional = matches!(f.kind, FaultKind::Kill | FaultKind::ServerKill);
            match (f.kind, f.duration) {
                (FaultKind::Restart | FaultKind::Upgrade, None) => {}
                (_, None) if !optional => {
                    bail!("fault[{i}].duration: required for {kind}");
                }
                (_, Some(d)) if d.is_zero() => {
                    bail!("fault[{i}].duration: must be greater than zero");
                }
                (FaultKind::Restart | FaultKind::Upgrade, Some(_)) => {
                    bail!("fault[{i}].duration: not allowed for {kind} (use kill with a duration)");
                }
                _ => {}
            }
            if matches!(f.kind, FaultKind::Upgrade | FaultKind::OfflineRestart)
                && self.cluster.reattach_window_ms == 0
            {
                bail!(
                    "fault[{i}].kind: {kind} needs [cluster] reattach_window_ms (agents that keep \
                     their tasks across a restart)"
                );
            }
            f.validate_fields(i)?;
            if f.kind == FaultKind::Isolate && self.agents < 3 {
                bail!(
                    "fault[{i}].kind: isolate needs at least 3 agents (the mass-failure brake \
                     engages from 3)"
                );
            }
            if f.kind.has_target() {
                if f.target() == Target::All && !f.kind.may_target_all() {
                    bail!("fault[{i}].target: \"all\" is only for loss, delay, cpu and memory");
                }
                if let Target::Agent(name) = f.target()
                    && !agents.contains(&name)
                {
                    bail!(
                        "fault[{i}].target: {name:?} is not an agent of this scenario \
                         (agent-1 to agent-{}, \"random\", \"singleton-holder\", \"primary\", \
                         \"standby\" or \"all\")",
                        self.agents
                    );
                }
                if f.target() == Target::SingletonHolder && self.singleton_slots().is_empty() {
                    bail!("fault[{i}].target: \"singleton-holder\" needs a singleton workload");
                }
                if matches!(f.target(), Target::Primary | Target::Standby)
                    && self.stateful().is_none()
                {
                    bail!(
                        "fault[{i}].target: \"primary\" and \"standby\" need a workload with \
                         [workload.state]"
                    );
                }
            } else if f.target.is_some() {
                bail!("fault[{i}].target: {kind} has no target");
            }
            if f.end() > latest_end {
                bail!(
                    "fault[{i}].{}: the fault ends at {:?}, later than duration - settle = {:?}",
                    if f.duration.is_some() {
                        "duration"
                    } else {
                        "at"
                    },
                    f.end(),
                    latest_end
                );
            }
        }
        // Two faults on one named agent (or on all) must not overlap (random targets avoid
        // busy agents at run time); nor two faults on the control plane's processes.
        for (i, a) in self.faults.iter().enumerate() {
            for (j, b) in self.faults.iter().enumerate().skip(i + 1) {
                if a.kind.hits_control_plane()
                    && b.kind.hits_control_plane()
                    && a.at <= b.end()
                    && b.at <= a.end()
                {
                    bail!("fault[{j}].at: overlaps fault[{i}] on the control plane");
                }
                let same = match (a.target(), b.target()) {
                    (Target::Agent(x), Target::Agent(y)) => x == y,
                    (Target::All, Target::Agent(_) | Target::All)
                    | (Target::Agent(_), Target::All) => true,
                    _ => false,
                };
                if same
                    && a.at <= b.end()
                    && b.at <= a.end()
                    && a.kind.has_target()
                    && b.kind.has_target()
                    && a.kind.exclusive()
                    && b.kind.exclusive()
                {
                    bail!("fault[{j}].at: overlaps fault[{i}] on the same agent");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
name = "t"
duration = "30s"
settle = "5s"
[[workload]]
name = "db"
kind = "singleton"
[[workload]]
name = "web"
kind = "service"
replicas = 2
[[fault]]
kind = "kill"
at = "2s"
duration = "3s"
target = "singleton-holder"
[[fault]]
kind = "pause"
at = "10s"
duration = "1500ms"
target = "agent-2"
[[fault]]
kind = "server-kill"
at = "20s"
"#;

    #[test]
    fn parses_a_scenario_with_defaults() {
        let s = Scenario::from_toml(GOOD).unwrap();
        assert_eq!(s.agents, 3);
        assert_eq!(s.rto_bound, DEFAULT_RTO_BOUND);
        assert_eq!(s.faults[1].duration, Some(Duration::from_millis(1500)));
        assert_eq!(s.faults[0].target(), Target::SingletonHolder);
        assert_eq!(s.faults[2].target(), Target::Random);
        assert_eq!(s.all_slots(), ["db/0", "web/0", "web/1"]);
        assert_eq!(s.singleton_slots(), ["db/0"]);
        assert_eq!(s.last_fault_end(), Duration::from_secs(20));
        assert!(s.workloads[1].job_toml().contains("replicas = 2"));
    }

    #[test]
    fn every_shipped_scenario_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
        let mut n = 0;
        for dir in [dir.clone(), dir.join("ci")] {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    Scenario::load(&e.path()).unwrap();
                    n += 1;
                }
            }
        }
        assert!(n >= 8, "{n} scenarios");
    }

    #[test]
    fn kind_specific_fields_are_checked() {
        let base = "name = \"t\"\nagents = 3\nduration = \"30s\"\nsettle = \"5s\"\n";
        let with = |fault: &str| format!("{base}[[fault]]\n{fault}\n");
        let ok = |f: &str| Scenario::from_toml(&with(f)).unwrap();
        let s = ok("kind = \"flap\"\nat = \"1s\"\nduration = \"5s\"\non = \"1s\"\noff = \"1s\"");
        assert_eq!(s.faults[0].flap_cuts().len(), 3);
        ok(
            "kind = \"loss\"\nat = \"1s\"\nduration = \"5s\"\nprobability = 0.05\njitter = \"100ms\"\ntarget = \"all\"",
        );
        ok("kind = \"isolate\"\nat = \"1s\"\nduration = \"5s\"");
        let bad = |f: &str, want: &str| {
            let e = format!("{:#}", Scenario::from_toml(&with(f)).unwrap_err());
            assert!(e.contains(want), "{e} should mention {want}");
        };
        bad(
            "kind = \"oneway\"\nat = \"1s\"\nduration = \"5s\"",
            "fault[0].direction",
        );
        bad(
            "kind = \"kill\"\nat = \"1s\"\nprobability = 0.5",
            "fault[0].probability: not allowed for kill",
        );
        bad(
            "kind = \"loss\"\nat = \"1s\"\nduration = \"5s\"\nprobability = 1.5",
            "out of range",
        );
        bad(
            "kind = \"delay\"\nat = \"1s\"\nduration = \"5s\"",
            "fault[0].delay",
        );
        bad(
            "kind = \"pause\"\nat = \"1s\"\nduration = \"5s\"\ntarget = \"all\"",
            "fault[0].target",
        );
        bad(
            "kind = \"isolate\"\nat = \"1s\"\nduration = \"5s\"\ntarget = \"agent-1\"",
            "no target",
        );
        bad(
            "kind = \"memory\"\nat = \"1s\"\nduration = \"5s\"",
            "fault[0].megabytes",
        );
    }

    #[test]
    fn replicated_control_planes_and_their_faults_are_checked() {
        let base = "name = \"t\"\nagents = 3\nduration = \"30s\"\nsettle = \"5s\"\n";
        let ha = "[cluster]\nservers = 3\nstore = \"etcd\"\n";
        let s = Scenario::from_toml(&format!(
            "{base}{ha}[[fault]]\nkind = \"leader-kill\"\nat = \"1s\"\nduration = \"5s\"\n\
             [[fault]]\nkind = \"kill\"\nat = \"2s\"\nafter_failover = \"1s\"\n\
             [[fault]]\nkind = \"etcd-kill\"\nat = \"10s\"\nduration = \"3s\"\ncount = 2\n"
        ))
        .unwrap();
        assert!(s.cluster.replicated());
        assert_eq!(s.cluster.etcd_members, DEFAULT_ETCD_MEMBERS);
        assert_eq!(s.faults[1].after_failover, Some(Duration::from_secs(1)));
        assert!(!FaultKind::LeaderKill.has_target() && FaultKind::EtcdKill.hits_control_plane());
        let bad = |text: String, want: &str| {
            let e = format!("{:#}", Scenario::from_toml(&text).unwrap_err());
            assert!(e.contains(want), "{e} should mention {want}");
        };
        bad(
            format!("{base}[cluster]\nservers = 2\n"),
            "cluster.servers: 2 replicas need a shared store",
        );
        bad(
            format!("{base}[cluster]\nservers = 3\nstore = \"zk\"\n"),
            "zk",
        );
        bad(
            format!("{base}[[fault]]\nkind = \"leader-kill\"\nat = \"1s\"\nduration = \"5s\"\n"),
            "fault[0].kind: leader-kill needs a replicated control plane",
        );
        bad(
            format!("{base}{ha}[[fault]]\nkind = \"leader-kill\"\nat = \"1s\"\n"),
            "fault[0].duration: required for leader-kill",
        );
        bad(
            format!("{base}{ha}[[fault]]\nkind = \"kill\"\nat = \"1s\"\nafter_failover = \"1s\"\n"),
            "fault[0].after_failover: needs a leader-kill earlier",
        );
        bad(
            format!(
                "{base}{ha}[[fault]]\nkind = \"etcd-kill\"\nat = \"1s\"\nduration = \"2s\"\ncount = 4\n"
            ),
            "fault[0].count: 4 is out of range",
        );
        bad(
            format!("{base}{ha}[[fault]]\nkind = \"server-kill\"\nat = \"1s\"\n"),
            "use leader-kill",
        );
        bad(
            format!(
                "{base}{ha}[[fault]]\nkind = \"leader-kill\"\nat = \"1s\"\nduration = \"5s\"\n\
                 [[fault]]\nkind = \"etcd-kill\"\nat = \"3s\"\nduration = \"2s\"\n"
            ),
            "fault[1].at: overlaps fault[0] on the control plane",
        );
    }

    fn err(text: &str) -> String {
        format!("{:#}", Scenario::from_toml(text).unwrap_err())
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&GOOD.replace("settle", "setle")).contains("setle"));
        assert!(
            err(&GOOD.replace("duration = \"1500ms\"", ""))
                .contains("fault[1].duration: required for pause")
        );
        assert!(err(&GOOD.replace("agent-2", "agent-9")).contains("fault[1].target"));
        assert!(err(&GOOD.replace("at = \"20s\"", "at = \"26s\"")).contains("fault[2].at"));
        assert!(err(&GOOD.replace("\"30s\"", "\"soon\"")).contains("duration"));
        assert!(
            err(&GOOD.replace("kind = \"server-kill\"", "kind = \"meteor\"")).contains("meteor")
        );
        assert!(
            err(&GOOD.replace("replicas = 2", "replicas = 0")).contains("workload[1].replicas")
        );
        let overlap = GOOD
            .replace("target = \"singleton-holder\"", "target = \"agent-2\"")
            .replace("at = \"10s\"", "at = \"4s\"");
        assert!(err(&overlap).contains("overlaps"));
    }
}

/// The fault kinds of the replicated-state soak ([`state_soak`]), in the order each round
/// injects them.
pub const STATE_SOAK_FAULTS: [&str; 6] = [
    "kill",
    "pause",
    "partition",
    "oneway",
    "flap",
    "standby-kill",
];

/// A soak of the replicated state: `rounds` rounds of faults of the stateful workload's
/// primary — kill -9, SIGSTOP, partition, one-way cut (both directions in turn), a flapping
/// link — and the loss of a standby; with `standbys = 2`, each round also loses the primary
/// and a standby at once. Every fault lasts 3 s (longer than the lease: each fault of the
/// primary ends in a promotion) and the next starts 4 s after it ended (a new standby catches
/// up and joins the in-sync set in that time). As TOML, for `warden chaos run`.
pub fn state_soak(rounds: usize, standbys: u8, ack: warden_core::state::AckLevel) -> String {
    state_soak_mode(rounds, standbys, ack, warden_core::state::StateMode::Hot)
}

/// [`state_soak`] with hot or warm standbys.
pub fn state_soak_mode(
    rounds: usize,
    standbys: u8,
    ack: warden_core::state::AckLevel,
    mode: warden_core::state::StateMode,
) -> String {
    let mut kinds: Vec<&str> = STATE_SOAK_FAULTS.to_vec();
    if standbys == 2 {
        kinds.push("both");
    }
    state_faults(rounds, standbys, ack, &kinds, 3).replacen(
        "every_ms = 5\n",
        &format!("every_ms = 5\nmode = \"{}\"\n", mode.as_str()),
        1,
    )
}

/// Like [`state_soak`], with the fault kinds of each round (`kill`, `pause`, `partition`,
/// `oneway`, `flap`, `standby-kill`, `both`) and how long each fault lasts, in seconds.
pub fn state_faults(
    rounds: usize,
    standbys: u8,
    ack: warden_core::state::AckLevel,
    kinds: &[&str],
    fault_s: u64,
) -> String {
    use std::fmt::Write as _;
    let per_round = kinds.len();
    let period_s = fault_s + 4;
    let faults = rounds * per_round;
    let settle_s = 12u64;
    let duration_s = 2 + faults as u64 * period_s + settle_s;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "name = \"state-soak\"\ndescription = \"{rounds} rounds of faults of a replicated \
         state's primary and standbys ({faults} faults)\"\nagents = {}\nduration = \"{duration_s}s\"\n\
         settle = \"{settle_s}s\"\nrto_bound = \"15s\"\n\n[[workload]]\nname = \"ledger\"\n\
         kind = \"singleton\"\n[workload.state]\nstandbys = {standbys}\nack = \"{ack}\"\n\
         every_ms = 5\n",
        usize::from(standbys) + 3
    );
    let mut at = 2u64;
    for round in 0..rounds {
        for &kind in kinds {
            let fault = |t: &mut String, kind: &str, target: &str, extra: &str| {
                let _ = writeln!(
                    t,
                    "[[fault]]\nkind = \"{kind}\"\nat = \"{at}s\"\nduration = \"{fault_s}s\"\n\
                     target = \"{target}\"\n{extra}"
                );
            };
            match kind {
                "oneway" => {
                    let dir = if round % 2 == 0 {
                        "to-server"
                    } else {
                        "from-server"
                    };
                    fault(
                        &mut t,
                        "oneway",
                        "primary",
                        &format!("direction = \"{dir}\"\n"),
                    );
                }
                "flap" => fault(
                    &mut t,
                    "flap",
                    "primary",
                    "on = \"2500ms\"\noff = \"500ms\"\n",
                ),
                "standby-kill" => fault(&mut t, "kill", "standby", ""),
                "both" => {
                    fault(&mut t, "kill", "primary", "");
                    fault(&mut t, "kill", "standby", "");
                }
                k => fault(&mut t, k, "primary", ""),
            }
            at += period_s;
        }
    }
    t
}

#[cfg(test)]
mod soak_tests {
    use super::*;

    #[test]
    fn the_state_soak_is_a_valid_scenario_with_every_fault_kind() {
        for standbys in [1, 2] {
            let sc = Scenario::from_toml(&state_soak(
                2,
                standbys,
                warden_core::state::AckLevel::Standby,
            ))
            .unwrap_or_else(|e| panic!("standbys {standbys}: {e:#}"));
            let per = STATE_SOAK_FAULTS.len() + usize::from(standbys == 2) * 2;
            assert_eq!(sc.faults.len(), 2 * per);
            assert!(sc.faults.iter().any(|f| f.kind == FaultKind::Flap));
            assert!(sc.faults.iter().any(|f| f.target() == Target::Standby));
            assert_eq!(
                sc.stateful().and_then(|w| w.state).map(|s| s.standbys),
                Some(standbys)
            );
        }
    }
}
