//! The `warden` binary: one executable for every part of Warden. `main` only dispatches;
//! each part lives in its library crate.
//!
//! `warden shim` is internal (the agent starts it once per task, see
//! [`warden_agent::shim`]) and is dispatched *before* clap: its arguments after `--` belong
//! to the task and must reach it untouched, and it must start fast. It is not in `--help`.
//! Nor is `warden shim-exec`, which the shim starts in a task's place to switch its user.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use warden_agent::shim::{self, ShimArgs, protocol::EXIT_SHIM_FAILED};

mod agent_cmd;
mod bench;
mod bench_anomaly;
mod bench_redis;
mod bench_rollout;
mod bench_sessions;
mod bench_state;
mod bench_storm;
mod chaos;
mod cli;
mod dev;
mod docs_cmd;
mod etcd_cmd;
mod release_cmd;
mod server_cmd;
mod tls_cmd;
mod token_cmd;
mod workload;

/// Warden keeps a fleet of agents alive and their work running: fast failure detection without
/// false alarms, safe automatic recovery, and figures to prove it.
#[derive(Debug, Parser)]
#[command(name = "warden", version = docs_cmd::VERSION, about, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "WARDEN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a cluster on this machine: a server and N agents on loopback, sample jobs and a
    /// live view, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Run the control plane.
    Server(server_cmd::ServerArgs),
    /// Run an agent on this host.
    Agent(agent_cmd::AgentArgs),
    /// Restart a running agent in place, keeping its tasks (a planned restart, e.g. after an
    /// upgrade): it tells the servers, keeps every task for the new process and executes its
    /// binary again. Sends it SIGHUP. See docs/operations.md.
    AgentRestart(agent_cmd::RestartArgs),
    /// Submit, list and stop jobs.
    Job {
        #[command(subcommand)]
        cmd: cli::JobCommand,
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// Follow and steer a job's rollout (a new version replacing its copies; see
    /// docs/releases.md).
    Rollout {
        #[command(subcommand)]
        cmd: release_cmd::RolloutCommand,
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// List agents with their state and health.
    Agents {
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// List task slots with their state and fencing token.
    Tasks {
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// Print the event log (transitions, recoveries, alarms).
    Events {
        /// Keep printing new events.
        #[arg(long, short)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// The mass-failure brake: when many agents turn Suspect at once the server declares none
    /// of them Failed (the likeliest cause is its own network) and raises an alarm; it
    /// releases by itself once the mass clears. `release` lets the held verdicts through now.
    Brake {
        #[command(subcommand)]
        cmd: cli::BrakeCommand,
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// Reports built from the server's records.
    Report {
        #[command(subcommand)]
        cmd: cli::ReportCommand,
        #[command(flatten)]
        api: cli::ApiOpts,
    },
    /// Certificates for mutual TLS between agents and servers (a small CA).
    Tls {
        #[command(subcommand)]
        cmd: tls_cmd::TlsCommand,
    },
    /// Credentials: join tokens for agents, API tokens for the REST API.
    Token {
        #[command(subcommand)]
        cmd: token_cmd::TokenCommand,
    },
    /// Built-in workloads for demos and tests.
    Workload {
        #[command(subcommand)]
        cmd: workload::Workload,
    },
    /// Measurements of Warden itself.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCommand,
    },
    /// Fault-injection scenarios on a real local cluster, with a detection-quality report.
    Chaos {
        #[command(subcommand)]
        cmd: chaos::ChaosCommand,
    },
    /// Print the version and the commit this binary was built from.
    Version,
    /// Print a shell completion script: `warden completion bash > /etc/bash_completion.d/warden`
    /// (zsh: into a directory of `$fpath` as `_warden`; fish: `~/.config/fish/completions/warden.fish`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command (`warden.1`, `warden-job-run.1`, …), into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long, default_value = "man")]
        out: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let _program = argv.next();
    let rest: Vec<OsString> = argv.collect();
    if rest.first().is_some_and(|a| a == "shim") {
        return run_shim(rest.into_iter().skip(1));
    }
    if rest.first().is_some_and(|a| a == shim::exec_as::SUBCOMMAND) {
        return run_shim_exec(rest.into_iter().skip(1));
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match &cli.command {
        Command::Workload { cmd } => workload::run(cmd),
        Command::Tls { cmd } => tls_cmd::run(cmd),
        Command::Token { cmd } => token_cmd::run(cmd),
        Command::Job { cmd, api } => cli::job(cmd, api),
        Command::Rollout { cmd, api } => release_cmd::rollout(cmd, api),
        Command::Agents { api } => cli::agents(api),
        Command::Tasks { api } => cli::tasks(api),
        Command::Events { follow, since, api } => cli::events(api, *follow, *since),
        Command::Report { cmd, api } => cli::report(cmd, api),
        Command::Brake { cmd, api } => cli::brake(cmd, api),
        Command::Bench { cmd } => bench::run(cmd),
        Command::Chaos { cmd } => chaos::run(cmd),
        Command::Version => {
            println!("warden {}", docs_cmd::VERSION);
            Ok(())
        }
        Command::Completion { shell } => {
            docs_cmd::completion(*shell, &mut Cli::command(), &mut std::io::stdout())
        }
        Command::Man { out } => docs_cmd::man_pages(&Cli::command(), out).map(|n| {
            println!("wrote {n} man pages into {}", out.display());
        }),
        Command::Dev(args) => runtime().and_then(|rt| rt.block_on(dev::run(args))),
        Command::Server(args) => runtime().and_then(|rt| rt.block_on(server_cmd::run(args))),
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(agent_cmd::run(args))),
        Command::AgentRestart(args) => agent_cmd::restart(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Cancel `token` on SIGINT or SIGTERM.
pub(crate) async fn shutdown_on_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run_shim(args: impl Iterator<Item = OsString>) -> ExitCode {
    init_shim_tracing();
    let args: Result<Vec<String>, OsString> = args.map(OsString::into_string).collect();
    let parsed = match args {
        Ok(args) => ShimArgs::from_args(args.into_iter()),
        Err(bad) => Err(format!("argument {bad:?} is not UTF-8")),
    };
    match parsed {
        Ok(args) => shim::main(args),
        Err(e) => {
            // Never panic here, not even on a closed stderr.
            let _ = writeln!(std::io::stderr(), "warden shim: {e}\n{}", shim::USAGE);
            ExitCode::from(EXIT_SHIM_FAILED)
        }
    }
}

/// `warden shim-exec` (internal, started by the shim): switch user and execute the task.
fn run_shim_exec(args: impl Iterator<Item = OsString>) -> ExitCode {
    let args: Result<Vec<String>, OsString> = args.map(OsString::into_string).collect();
    let parsed = match args {
        Ok(args) => shim::exec_as::ExecAs::from_args(args.into_iter()),
        Err(bad) => Err(format!("argument {bad:?} is not UTF-8")),
    };
    match parsed {
        Ok(exec) => shim::exec_as::main(&exec),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "warden shim-exec: {e}\n{}",
                shim::exec_as::USAGE
            );
            ExitCode::from(EXIT_SHIM_FAILED)
        }
    }
}

/// The shim logs to its stderr, which the supervisor points at the task's stderr log. A
/// failed log write must never panic the shim (it would leave its task unwatched), hence no
/// internal-error reporting.
fn init_shim_tracing() {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .log_internal_errors(false)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks of every subcommand (a duplicate argument name, e.g. one
    /// called `version`, only panics when that subcommand is parsed).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
