//! `warden dev`: a whole cluster on this machine in one command — a server and N agents as
//! separate processes on loopback, the embedded store under a data directory, two sample jobs,
//! and a live table until Ctrl-C, after which every process is stopped (SIGTERM, then SIGKILL
//! after a deadline) and none is left behind. Agent sessions use mutual TLS with certificates
//! made for the run (`--no-tls` turns that off).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::cli;
use warden_client::Client;
use warden_server::view::{AgentInfo, RecoveryInfo, TaskInfo};

/// `warden dev` flags.
#[derive(Clone, Debug, Args)]
pub struct DevArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 3)]
    pub agents: u32,
    /// Directory for the store, agent data and every process's log, kept after the run.
    /// Without it they go to a new temporary directory, removed when the cluster stops
    /// (and kept, with a message saying where, when it stops on an error).
    #[arg(long, env = "WARDEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Server address for agent sessions.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub grpc_addr: SocketAddr,
    /// Server address for the REST API.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub http_addr: SocketAddr,
    /// Do not submit the sample jobs.
    #[arg(long)]
    pub no_jobs: bool,
    /// Print one status line every few seconds instead of a live table.
    #[arg(long)]
    pub plain: bool,
    /// Stop by itself after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// Plaintext agent sessions. By default they use mutual TLS with a CA and certificates
    /// made afresh under DATA_DIR/tls at every start.
    #[arg(long)]
    pub no_tls: bool,
}

/// Fresh certificates for the dev cluster under `dir` (replacing any from an earlier run);
/// returns the extra server flags and, per agent, the extra agent flags.
fn dev_certificates(dir: &Path, agents: &[String]) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    use warden_server::pki::files;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    warden_server::pki::init(dir, &[], agents, 30)
        .with_context(|| format!("create certificates in {}", dir.display()))?;
    let path = |f: &str| dir.join(f).display().to_string();
    let server = vec![
        "--tls-cert".into(),
        path(files::SERVER),
        "--tls-key".into(),
        path(files::SERVER_KEY),
        "--tls-client-ca".into(),
        path(files::CA),
    ];
    let agents = agents
        .iter()
        .map(|a| {
            vec![
                "--tls-cert".into(),
                path(&files::agent(a)),
                "--tls-key".into(),
                path(&files::agent_key(a)),
                "--tls-ca".into(),
                path(files::CA),
            ]
        })
        .collect();
    Ok((server, agents))
}

const SAMPLE_JOBS: [(&str, &str); 2] = [
    (
        "ticker",
        "name = \"ticker\"\nkind = \"singleton\"\ncommand = \"{exe}\"\nargs = [\"workload\", \"sleep\"]\n[resources]\ncpu_millis = 100\nmemory_mb = 32\n",
    ),
    (
        "web",
        "name = \"web\"\nkind = \"service\"\nreplicas = 2\ncommand = \"{exe}\"\nargs = [\"workload\", \"sleep\", \"--every\", \"5\"]\n[resources]\ncpu_millis = 100\nmemory_mb = 32\n",
    ),
];

struct Proc {
    name: String,
    child: Child,
}

fn spawn(exe: &Path, name: &str, args: &[String], logs: &Path) -> Result<Proc> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))
        .with_context(|| format!("create log for {name}"))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    Ok(Proc {
        name: name.to_string(),
        child,
    })
}

async fn stop_all(procs: &mut Vec<Proc>) {
    // Agents first (they stop their tasks), then the server.
    for p in procs.iter().rev() {
        if let Some(pid) = p.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut().rev() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, p.child.wait()).await.is_err() {
            eprintln!("{} did not stop in time; killing it", p.name);
            let _ = p.child.kill().await;
        }
    }
    procs.clear();
}

async fn wait_healthy(client: &Client, server: &mut Proc) -> Result<()> {
    for _ in 0..100 {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("the server exited ({status}); see its log");
        }
        let c = client.clone();
        if tokio::task::spawn_blocking(move || c.get("/healthz"))
            .await?
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not answer /healthz within 10 s")
}

fn render(client: &Client) -> Result<String> {
    let agents: Vec<AgentInfo> = client.get_as("/v1/agents")?;
    let tasks: Vec<TaskInfo> = client.get_as("/v1/tasks")?;
    let recoveries: Vec<RecoveryInfo> = client.get_as("/v1/recoveries")?;
    let mut out = String::new();
    out.push_str("AGENTS\n");
    out.push_str(&cli::table(&cli::AGENT_HEADERS, &cli::agent_rows(&agents)));
    out.push_str("\nTASKS\n");
    out.push_str(&cli::table(&cli::TASK_HEADERS, &cli::task_rows(&tasks)));
    let rows = cli::recovery_rows(&recoveries);
    let recent: Vec<Vec<String>> = rows.iter().rev().take(5).rev().cloned().collect();
    out.push_str(&format!("\nRECOVERIES ({} in all, latest 5)\n", rows.len()));
    out.push_str(&cli::table(&cli::RECOVERY_HEADERS, &recent));
    Ok(out)
}

/// Run the dev cluster.
pub async fn run(args: &DevArgs) -> Result<()> {
    if args.agents == 0 || args.agents > 64 {
        bail!("--agents must be between 1 and 64");
    }
    let exe = std::env::current_exe().context("find the warden executable")?;
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("warden-dev-")
                .tempdir()
                .context("create a temporary data directory (or give --data-dir)")?,
        ),
    };
    let data_dir = match (&args.data_dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory is made when none is given"),
    };
    let result = run_in(args, &exe, &data_dir).await;
    if let Some(temp) = temp {
        if result.is_err() {
            let kept = temp.keep();
            eprintln!("data and logs kept in {}", kept.display());
        } else {
            println!(
                "removing {} (--data-dir keeps the data and logs)",
                data_dir.display()
            );
        }
    }
    result
}

async fn run_in(args: &DevArgs, exe: &Path, data_dir: &Path) -> Result<()> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let mut procs = Vec::new();
    let names: Vec<String> = (1..=args.agents).map(|i| format!("agent-{i}")).collect();
    let (tls_server, tls_agents) = if args.no_tls {
        (Vec::new(), vec![Vec::new(); names.len()])
    } else {
        dev_certificates(&data_dir.join("tls"), &names)?
    };
    let mut server_args = vec![
        "server".to_string(),
        "--data-dir".into(),
        data_dir.join("server").display().to_string(),
        "--grpc-addr".into(),
        args.grpc_addr.to_string(),
        "--http-addr".into(),
        args.http_addr.to_string(),
    ];
    server_args.extend(tls_server);
    procs.push(spawn(exe, "server", &server_args, &logs)?);
    let client = Client::new(&format!("http://{}", args.http_addr))?;
    let result = async {
        wait_healthy(&client, &mut procs[0]).await?;
        for (name, tls) in names.iter().zip(&tls_agents) {
            let mut a = vec![
                "agent".to_string(),
                "--server".into(),
                args.grpc_addr.to_string(),
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data_dir.join(name).display().to_string(),
                "--cpu-millis".into(),
                "2000".into(),
                "--memory-mb".into(),
                "2048".into(),
                // The sample jobs' token resources would throttle them; a development
                // cluster leaves the host's cgroups alone.
                "--cgroups".into(),
                "off".into(),
            ];
            a.extend(tls.iter().cloned());
            // The sample jobs run this very binary, perhaps from a build tree `nobody` cannot
            // reach: a development cluster runs its tasks as the user who started it.
            if let Some(user) = warden_agent::isolation::current_user_name() {
                a.extend(["--task-user".to_string(), user]);
            }
            procs.push(spawn(exe, name, &a, &logs)?);
        }
        // Submit the jobs once every agent is in, so the first placement can spread them.
        let want = args.agents as usize;
        for _ in 0..100 {
            let c = client.clone();
            let healthy = tokio::task::spawn_blocking(move || c.get("/v1/agents"))
                .await?
                .map_or(0, |v| {
                    v.as_array().map_or(0, |a| {
                        a.iter()
                            .filter(|x| x.get("state").and_then(|s| s.as_str()) == Some("healthy"))
                            .count()
                    })
                });
            if healthy >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !args.no_jobs {
            for (name, spec) in SAMPLE_JOBS {
                let body = spec.replace(
                    "{exe}",
                    &exe.display()
                        .to_string()
                        .replace('\\', "\\\\")
                        .replace('"', "\\\""),
                );
                let c = client.clone();
                tokio::task::spawn_blocking(move || {
                    c.request(
                        "POST",
                        "/v1/jobs",
                        Some("application/toml"),
                        body.as_bytes(),
                    )?
                    .json()
                })
                .await?
                .with_context(|| format!("submit sample job {name}"))?;
            }
        }
        println!(
            "warden dev: server on {} (REST) / {} (agents), {} agents, data and logs in {}",
            args.http_addr,
            args.grpc_addr,
            args.agents,
            data_dir.display()
        );
        if args.no_tls {
            println!("agent sessions: plaintext (--no-tls)");
        } else {
            println!(
                "agent sessions: mutual TLS, certificates in {}",
                data_dir.join("tls").display()
            );
        }
        println!("dashboard: http://{}/", args.http_addr);
        println!(
            "try: WARDEN_ADDR=http://{} warden agents   — Ctrl-C stops everything",
            args.http_addr
        );
        let live = !args.plain && std::io::stdout().is_terminal();
        let started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = tokio::time::sleep(Duration::from_secs(if live { 1 } else { 5 })) => {}
            }
            if args.duration > 0 && started.elapsed() >= Duration::from_secs(args.duration) {
                break;
            }
            for p in &mut procs {
                if let Ok(Some(status)) = p.child.try_wait() {
                    eprintln!(
                        "{} exited ({status}); see {}",
                        p.name,
                        logs.join(format!("{}.log", p.name)).display()
                    );
                }
            }
            let c = client.clone();
            let view = tokio::task::spawn_blocking(move || render(&c)).await?;
            match (view, live) {
                (Ok(text), true) => {
                    print!("\x1b[2J\x1b[H{text}\nCtrl-C to stop\n");
                    let _ = std::io::stdout().flush();
                }
                (Ok(text), false) => println!("{text}"),
                (Err(e), _) => eprintln!("status: {e:#}"),
            }
        }
        Ok(())
    }
    .await;
    println!("stopping the cluster…");
    stop_all(&mut procs).await;
    result
}
