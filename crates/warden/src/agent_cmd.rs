//! `warden agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;
use warden_agent::metrics::AgentMetrics;
use warden_agent::runtime::AgentConfig;
use warden_agent::supervisor::ShimLauncher;
use warden_core::Resources;

/// `warden agent` flags.
#[derive(Clone, Debug, Args)]
pub struct AgentArgs {
    /// Server gRPC address; repeat (or separate with commas) for every replica of a
    /// replicated control plane: the agent keeps a session with each.
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
    /// CPU offered to tasks, millicores [default: all cores]
    #[arg(long, env = "WARDEN_CPU_MILLIS")]
    pub cpu_millis: Option<u64>,
    /// Memory offered to tasks, MiB [default: physical memory]
    #[arg(long, env = "WARDEN_MEMORY_MB")]
    pub memory_mb: Option<u64>,
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

/// Run the agent until SIGINT/SIGTERM.
pub async fn run(args: &AgentArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data dir {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.probe_addr)
        .await
        .with_context(|| format!("bind probe address {}", args.probe_addr))?;
    let probe_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    tokio::spawn(crate::shutdown_on_signal(cancel.clone()));
    let metrics = AgentMetrics::new();
    let scrape = metrics.clone();
    tokio::spawn(warden_probe::listener::serve(
        listener,
        cancel.child_token(),
        move |path: &str| {
            (path == "/metrics").then(|| (warden_agent::metrics::CONTENT_TYPE, scrape.render()))
        },
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let servers = args
        .servers
        .iter()
        .map(|s| {
            if s.starts_with("http://") || s.starts_with("https://") {
                s.clone()
            } else {
                format!("http://{s}")
            }
        })
        .collect();
    let cfg = AgentConfig {
        servers,
        name: args.name.clone().unwrap_or_else(host_name),
        data_dir: args.data_dir.clone(),
        probe_addr,
        capacity: Resources::new(
            args.cpu_millis.unwrap_or(cores * 1000),
            args.memory_mb.unwrap_or_else(physical_memory_mb),
        ),
        launcher: ShimLauncher::current_exe().context("find the warden executable for shims")?,
        shutdown_grace: Duration::from_secs(5),
        metrics,
    };
    tracing::info!(name = %cfg.name, probe = %probe_addr, "warden agent starting");
    warden_agent::runtime::run(cfg, cancel).await?;
    Ok(())
}
