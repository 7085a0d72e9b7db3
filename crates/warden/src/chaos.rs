//! `warden chaos …`: run fault-injection scenarios on a real local cluster and report how
//! Warden detected and recovered (see `docs/chaos.md`). The work is in `warden_chaos`; this
//! module parses the command line, writes the output files and sets the exit code.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use warden_chaos::report::Report;
use warden_chaos::run::{self, RunOptions};
use warden_chaos::scenario::Scenario;

/// `warden chaos …`
#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Run a scenario: start a server and agents on loopback, run the workload, inject the
    /// faults, check the safety and liveness properties and write a report. Exits non-zero
    /// when a checker found a violation.
    Run {
        /// The scenario file (TOML, see scenarios/).
        scenario: PathBuf,
        /// Output directory (report.json, report.html, record.json, logs/); default
        /// chaos-out/NAME.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of random choices (random fault targets, jitter).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the cluster's network lives: `netns` puts the server and every agent in
        /// network namespaces of their own joined by veth links, so partitions and packet
        /// loss are real (needs root, `ip` and `nft`); `loopback` runs everything on
        /// 127.0.0.1 and skips packet loss; `auto` picks netns when it can.
        #[arg(long, default_value = "auto", value_parser = ["auto", "netns", "loopback"])]
        network: String,
    },
    /// Check scenario files without running them: parse, validate, and print each one's
    /// faults. Exits non-zero at the first invalid file, naming the field at fault.
    Validate {
        /// Scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

/// Run a chaos command.
pub fn run(cmd: &ChaosCommand) -> Result<()> {
    match cmd {
        ChaosCommand::Validate { scenarios } => {
            for path in scenarios {
                let sc = Scenario::load(path)?;
                let kinds: Vec<&str> = sc.faults.iter().map(|f| f.kind.as_str()).collect();
                println!(
                    "{}: ok — {} agents, {:?}, {} faults ({})",
                    path.display(),
                    sc.agents,
                    sc.duration,
                    sc.faults.len(),
                    kinds.join(", ")
                );
            }
            Ok(())
        }
        ChaosCommand::Run {
            scenario,
            out,
            seed,
            network,
        } => {
            let sc = Scenario::load(scenario)?;
            let out = out
                .clone()
                .unwrap_or_else(|| PathBuf::from("chaos-out").join(&sc.name));
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            let opts = RunOptions {
                exe: std::env::current_exe()?,
                seed: *seed,
                logs_to: Some(out.join("logs")),
                cancel: cancel_on_signal(),
                network: run::NetworkMode::parse(network)?,
            };
            eprintln!(
                "chaos: scenario {} ({} faults, {:?}), seed {seed}, output {}",
                sc.name,
                sc.faults.len(),
                sc.duration,
                out.display()
            );
            let record = run::run(&sc, &opts, &mut |line| eprintln!("  {line}"))?;
            let report = Report::build(&record);
            std::fs::write(out.join("record.json"), serde_json::to_vec(&record)?)?;
            std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
            std::fs::write(
                out.join("report.html"),
                warden_chaos::html::render(&record, &report),
            )?;
            println!("{}", report.summary());
            println!(
                "report: {} (and report.html, record.json, logs/)",
                out.join("report.json").display()
            );
            if report.violations > 0 {
                bail!(
                    "{} checker violation(s); see {}",
                    report.violations,
                    out.join("report.json").display()
                );
            }
            Ok(())
        }
    }
}

/// A flag set on SIGINT or SIGTERM, so that the run stops early *and cleans up*: without it
/// the signal would end this process at once and leave its cluster (a paused agent, task
/// processes) behind.
fn cancel_on_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let token = tokio_util::sync::CancellationToken::new();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(crate::shutdown_on_signal(token));
        set.store(true, Ordering::SeqCst);
    });
    flag
}
