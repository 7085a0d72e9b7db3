//! `warden agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;
use warden_agent::metrics::AgentMetrics;
use warden_agent::runtime::AgentConfig;
use warden_agent::supervisor::{Confinement, ShimLauncher};
use warden_agent::tls::{ClientTls, JoinToken};
use warden_core::Resources;

/// `warden agent` flags.
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// Server gRPC address, `host:port` (http:// or https:// is added to match the TLS
    /// settings); repeat (or separate with commas) for every replica of a replicated control
    /// plane: the agent keeps a session with each.
    #[arg(
        long = "server",
        env = "WARDEN_SERVER",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400"
    )]
    pub servers: Vec<String>,
    /// Agent name, unique in the fleet [default: the host name]
    #[arg(long, env = "WARDEN_AGENT_NAME")]
    pub name: Option<String>,
    /// Directory for task logs.
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "warden-agent-data")]
    pub data_dir: PathBuf,
    /// Address of the probe listener (`/healthz` and TCP probes); port 0 picks a free one.
    #[arg(long, env = "WARDEN_PROBE_ADDR", default_value = "127.0.0.1:0")]
    pub probe_addr: SocketAddr,
    /// Port of the replication listener (on the probe address's IP), where the standbys of
    /// the stateful primaries this agent runs connect (docs/state.md); 0 picks a free one.
    #[arg(long, env = "WARDEN_STATE_PORT", default_value_t = 0)]
    pub state_port: u16,
    /// CPU offered to tasks, millicores [default: all cores]
    #[arg(long, env = "WARDEN_CPU_MILLIS")]
    pub cpu_millis: Option<u64>,
    /// Memory offered to tasks, MiB [default: physical memory]
    #[arg(long, env = "WARDEN_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// This agent's certificate (PEM) for mutual TLS with the server; its DNS name must be the
    /// agent's --name. Needs --tls-key and --tls-ca. `warden tls init --agent NAME` makes one.
    #[arg(long, env = "WARDEN_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WARDEN_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) the server's certificate must chain to (PEM).
    #[arg(long, env = "WARDEN_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Verify the server's certificate for this name instead of the host in --server.
    #[arg(long, env = "WARDEN_TLS_SERVER_NAME", requires = "tls_cert")]
    pub tls_server_name: Option<String>,
    /// Join token, for servers started with --join-tokens (prefer --join-token-file or the
    /// environment: command lines are visible to other users).
    #[arg(
        long,
        env = "WARDEN_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "join_token_file"
    )]
    pub join_token: Option<Secret>,
    /// File whose first line is the join token.
    #[arg(long, env = "WARDEN_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// User tasks run as. An agent running as root runs them as `nobody` by default, and as
    /// root only when told `--task-user root`; an agent that is not root runs them as itself
    /// and refuses another user. See docs/security.md.
    #[arg(long, env = "WARDEN_TASK_USER", value_name = "NAME")]
    pub task_user: Option<String>,
    /// A user per job: each job's tasks run under a uid of their own from this range
    /// (`FIRST-LAST`, e.g. `200000-265535`; the group is the same number), so one job cannot
    /// signal or read another's processes. The allocation is kept in the data directory.
    /// Needs root; replaces --task-user for tasks. See docs/security.md.
    #[arg(
        long,
        env = "WARDEN_TASK_UIDS",
        value_name = "FIRST-LAST",
        conflicts_with = "task_user"
    )]
    pub task_uids: Option<String>,
    /// Resource isolation: run each task in a cgroup of its own with its declared
    /// `cpu_millis` and `memory_mb` as limits, and the agent in a cgroup that outweighs its
    /// tasks. `auto` does it where this process may (root, or a delegated subtree) and warns
    /// "limits not enforced" otherwise; `required` refuses to start without it; `off` runs
    /// tasks unconfined. See docs/isolation.md.
    #[arg(long, env = "WARDEN_CGROUPS", value_enum, default_value_t = CgroupMode::Auto)]
    pub cgroups: CgroupMode,
    /// The agent's cgroup, relative to the root of each cgroup hierarchy (e.g.
    /// `warden.slice/agent`) [default: `warden-<name>` inside the cgroup the agent starts in]
    #[arg(long, env = "WARDEN_CGROUP_PARENT", value_name = "PATH")]
    pub cgroup_parent: Option<String>,
    /// Most processes and threads one task may have at once (cgroup `pids.max`); stops a
    /// fork bomb. 0: no limit.
    #[arg(long, env = "WARDEN_TASK_PIDS_MAX", default_value_t = 4096)]
    pub task_pids_max: u64,
    /// CPU kept for the agent itself, millicores: subtracted from the capacity it offers.
    #[arg(long, env = "WARDEN_RESERVED_CPU_MILLIS", default_value_t = 100)]
    pub reserved_cpu_millis: u64,
    /// Memory kept for the agent itself, MiB: subtracted from the capacity it offers, and
    /// guaranteed to it under cgroup v2 (`memory.min`).
    #[arg(long, env = "WARDEN_RESERVED_MEMORY_MB", default_value_t = 64)]
    pub reserved_memory_mb: u64,
    /// The cluster this agent belongs to: its local cache (in the data directory) is refused
    /// when it names another cluster or another agent name.
    #[arg(long, env = "WARDEN_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// How long service copies keep running when the agent process vanishes, for a new one
    /// to take them over (an upgrade, a crash of the agent alone); also how long the server
    /// holds its verdict during a planned restart (SIGHUP). Singletons die with the agent
    /// unless it restarts on purpose. 0: every task dies with its agent and nothing is
    /// resumed. See docs/operations.md.
    #[arg(
        long,
        env = "WARDEN_REATTACH_WINDOW_MS",
        default_value_t = 30_000,
        value_name = "MS"
    )]
    pub reattach_window_ms: u64,
    /// Offline mode: when no server answered this long after the start, the agent starts
    /// the service copies of its local cache again (never a singleton) and reports `offline`.
    #[arg(
        long,
        env = "WARDEN_OFFLINE_AFTER_MS",
        default_value_t = 500,
        value_name = "MS"
    )]
    pub offline_after_ms: u64,
}

/// `--cgroups`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupMode {
    /// Confine tasks where possible; warn when limits cannot be enforced.
    Auto,
    /// Confine tasks, or refuse to start.
    Required,
    /// Run tasks unconfined.
    Off,
}

/// Set up the agent's cgroups as `--cgroups` says: the confinement its shims apply to tasks,
/// or `None` (after a warning, or with an error under `required`).
fn confinement(
    args: &AgentArgs,
    name: &str,
    metrics: &AgentMetrics,
) -> Result<Option<(Confinement, warden_agent::cgroup::AgentCgroups)>> {
    use warden_agent::cgroup;
    if args.cgroups == CgroupMode::Off {
        tracing::warn!("--cgroups off: task limits not enforced; tasks run unconfined");
        metrics.limits_enforced(None);
        return Ok(None);
    }
    let reserve = cgroup::Reservation {
        cpu_millis: args.reserved_cpu_millis,
        memory_mb: args.reserved_memory_mb,
    };
    let set_up = cgroup::detect()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no cgroup hierarchy with the memory, cpu or pids controller is mounted"
            )
        })
        .and_then(|layout| {
            let cgroups =
                cgroup::AgentCgroups::setup(&layout, args.cgroup_parent.as_deref(), name, reserve)?;
            Ok((layout, cgroups))
        });
    match set_up {
        Ok((layout, cgroups)) => {
            let controllers: Vec<String> = layout
                .hierarchies
                .iter()
                .flat_map(|h| h.controllers.clone())
                .collect();
            tracing::info!(
                cgroup = %layout.version,
                controllers = %controllers.join(","),
                base = %cgroups.bases()[0].display(),
                "task limits enforced: every task runs in a cgroup of its own"
            );
            metrics.limits_enforced(Some(&layout.version.to_string()));
            metrics.attach_cgroups(cgroups.clone());
            let confine = Confinement {
                cgroups: cgroups.clone(),
                pids_max: (args.task_pids_max > 0).then_some(args.task_pids_max),
            };
            Ok(Some((confine, cgroups)))
        }
        Err(e) if args.cgroups == CgroupMode::Required => {
            Err(e.context("--cgroups required: cannot set up the task cgroups"))
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "task limits not enforced: tasks run unconfined (run as root or in a delegated cgroup, or pass --cgroups off to silence this)");
            metrics.limits_enforced(None);
            Ok(None)
        }
    }
}

/// A flag value that must never be printed (its `Debug` hides it).
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl AgentArgs {
    /// The TLS settings and join token, read and checked (errors name the file).
    fn security(&self) -> Result<(Option<ClientTls>, Option<JoinToken>)> {
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                let t = ClientTls::from_files(ca, cert, key)?;
                Some(match &self.tls_server_name {
                    Some(n) => t.with_server_name(n),
                    None => t,
                })
            }
            (None, None, None) => None,
            _ => bail!("--tls-cert, --tls-key and --tls-ca go together"),
        };
        let token = match (&self.join_token, &self.join_token_file) {
            (Some(t), None) => Some(JoinToken::new(&t.0).context("--join-token")?),
            (None, Some(f)) => Some(JoinToken::from_file(f)?),
            (None, None) => None,
            (Some(_), Some(_)) => bail!("give --join-token or --join-token-file, not both"),
        };
        Ok((tls, token))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

fn physical_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(1024, |kb| kb / 1024)
}

/// Run the agent until SIGINT/SIGTERM (stops every task and leaves), or SIGHUP (a planned
/// restart: tells the servers, keeps every task, and executes the agent's binary again in
/// place — after an upgrade, the new one).
pub async fn run(args: &AgentArgs) -> Result<()> {
    let users = warden_agent::isolation::resolve(args.task_user.as_deref())?;
    match &users.switch_to {
        Some(u) => {
            tracing::info!(user = %u.name, uid = u.uid, gid = u.gid, "tasks run as an unprivileged user")
        }
        None if users.as_root => tracing::warn!("tasks run as root (--task-user root)"),
        None => tracing::info!("tasks run as the agent's user"),
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data dir {}", args.data_dir.display()))?;
    // For `warden agent-restart`.
    let pid_file = args.data_dir.join(PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("write {}", pid_file.display()))?;
    let task_uids = match &args.task_uids {
        None => None,
        Some(range) => {
            let range =
                warden_agent::isolation::parse_uid_range(range).map_err(anyhow::Error::msg)?;
            if !nix::unistd::geteuid().is_root() {
                bail!("--task-uids: only an agent running as root can run tasks as other users");
            }
            let uids = warden_agent::isolation::TaskUids::load(&args.data_dir, range)
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                first = range.0,
                last = range.1,
                "tasks run as a user of their job's own"
            );
            Some(std::sync::Arc::new(std::sync::Mutex::new(uids)))
        }
    };
    let listener = tokio::net::TcpListener::bind(args.probe_addr)
        .await
        .with_context(|| format!("bind probe address {}", args.probe_addr))?;
    let probe_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    tokio::spawn(crate::shutdown_on_signal(cancel.clone()));
    let restart = CancellationToken::new();
    tokio::spawn(restart_on_hangup(restart.clone()));
    let metrics = AgentMetrics::new();
    let scrape = metrics.clone();
    tokio::spawn(warden_probe::listener::serve(
        listener,
        cancel.child_token(),
        move |path: &str| match path {
            "/metrics" => Some((warden_agent::metrics::CONTENT_TYPE, scrape.render())),
            // `online` with a session or before the offline check; `offline` while running
            // the cached work with no server.
            "/status" => Some((
                "text/plain; charset=utf-8",
                if scrape.is_offline() {
                    "offline\n"
                } else {
                    "online\n"
                }
                .to_string(),
            )),
            _ => None,
        },
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let (tls, join_token) = args.security()?;
    // Refuse unusable addresses now rather than retrying them forever.
    for s in &args.servers {
        warden_agent::tls::endpoint(s, tls.as_ref())?;
    }
    let name = args.name.clone().unwrap_or_else(host_name);
    let confined = confinement(args, &name, &metrics)?;
    let capacity = Resources::new(
        args.cpu_millis.unwrap_or(cores * 1000),
        args.memory_mb.unwrap_or_else(physical_memory_mb),
    );
    let reserved = Resources::new(args.reserved_cpu_millis, args.reserved_memory_mb);
    let offered = capacity.minus(&reserved);
    if offered.cpu_millis == 0 || offered.memory_mb == 0 {
        bail!(
            "the reservation for the agent (--reserved-cpu-millis {}, --reserved-memory-mb {}) \
             leaves nothing of the capacity ({} millicores, {} MiB) for tasks",
            reserved.cpu_millis,
            reserved.memory_mb,
            capacity.cpu_millis,
            capacity.memory_mb
        );
    }
    let cfg = AgentConfig {
        servers: args.servers.clone(),
        tls,
        join_token,
        name,
        data_dir: args.data_dir.clone(),
        probe_addr,
        state_port: args.state_port,
        capacity: offered,
        launcher: ShimLauncher {
            confine: confined.as_ref().map(|(c, _)| c.clone()),
            ..ShimLauncher::current_exe()
                .context("find the warden executable for shims")?
                .run_as(users.switch_to)
        },
        shutdown_grace: Duration::from_secs(5),
        metrics,
        task_uids,
        cluster: args.cluster.clone(),
        reattach_window: Duration::from_millis(args.reattach_window_ms),
        offline_after: Duration::from_millis(args.offline_after_ms),
        restart,
    };
    tracing::info!(name = %cfg.name, probe = %probe_addr, tls = cfg.tls.is_some(), join_token = cfg.join_token.is_some(), "warden agent starting");
    let result = warden_agent::runtime::run(cfg, cancel).await;
    if let Ok(warden_agent::runtime::Exit::Restart) = result {
        // The tasks run on in their cgroups, for the new process to take over.
        return Err(reexec());
    }
    if let Some((_, cgroups)) = confined {
        let left = cgroups.teardown();
        if !left.is_empty() {
            tracing::warn!(?left, "cgroups left behind (still in use)");
        }
    }
    result?;
    Ok(())
}

/// SIGHUP: a planned restart.
async fn restart_on_hangup(token: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    hup.recv().await;
    tracing::info!("SIGHUP: restarting in place");
    token.cancel();
}

/// Execute the agent's binary again, in this process (same pid, arguments and environment):
/// the shims stay its children. After an upgrade replaced the file, the new binary runs.
/// Returns only if that failed.
fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return anyhow::anyhow!("restart: cannot find the warden executable: {e}"),
    };
    // A replaced binary shows as "<path> (deleted)": run what is at the path now.
    let exe = exe
        .to_str()
        .and_then(|s| s.strip_suffix(" (deleted)"))
        .map_or(exe.clone(), PathBuf::from);
    tracing::info!(exe = %exe.display(), "executing the agent again");
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("restart: cannot execute {}: {err}", exe.display())
}

/// The agent's pid, in its data directory.
const PID_FILE: &str = "agent.pid";

/// `warden agent-restart` flags.
#[derive(Clone, Debug, Args)]
pub struct RestartArgs {
    /// The agent's process id [default: read from <data-dir>/agent.pid]
    #[arg(long)]
    pub pid: Option<i32>,
    /// The agent's data directory (where it wrote agent.pid).
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = "warden-agent-data")]
    pub data_dir: PathBuf,
}

/// `warden agent-restart`: SIGHUP to the agent, after checking that the pid is a `warden
/// agent` process (a stale pid file must not signal a stranger).
pub fn restart(args: &RestartArgs) -> Result<()> {
    let pid = match args.pid {
        Some(p) => p,
        None => {
            let path = args.data_dir.join(PID_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "read {} (is an agent running with this --data-dir?)",
                    path.display()
                )
            })?;
            text.trim()
                .parse()
                .with_context(|| format!("{} does not hold a process id", path.display()))?
        }
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("no process {pid}: is the agent running?"))?;
    let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_agent = words.first().is_some_and(|w| w.ends_with(b"warden"))
        && words.get(1) == Some(&b"agent".as_slice());
    if !is_agent {
        bail!("process {pid} is not a `warden agent`; not signalling it");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("signal the agent (pid {pid})"))?;
    println!("agent {pid} is restarting in place; its tasks keep running");
    Ok(())
}
