//! `warden chaos …`: run fault-injection scenarios on a real local cluster and report how
//! Warden detected and recovered (see `docs/chaos.md`). The work is in `warden_chaos`; this
//! module parses the command line, writes the output files and sets the exit code.

use std::path::{Path, PathBuf};
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
        /// The scenario file (TOML, see scenarios/ and docs/chaos.md). A scenario with a
        /// replicated control plane (`[cluster] store = "etcd"`, e.g.
        /// scenarios/leader-failover.toml) needs a warden built with `--features etcd` and
        /// Debian's etcd-server.
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
    /// Build the report again from a run's record.json (e.g. with newer checkers) and write
    /// report.json and report.html next to it. Exits non-zero when a checker finds a
    /// violation.
    Report {
        /// The record.json of a run.
        record: PathBuf,
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
        ChaosCommand::Report { record } => {
            let text =
                std::fs::read(record).with_context(|| format!("read {}", record.display()))?;
            let rec: warden_chaos::record::Record = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a chaos record", record.display()))?;
            let report = Report::build(&rec);
            let dir = record.parent().unwrap_or_else(|| std::path::Path::new("."));
            std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
            std::fs::write(
                dir.join("report.html"),
                warden_chaos::html::render(&rec, &report),
            )?;
            println!("{}", report.summary());
            if report.violations > 0 {
                bail!("{} checker violation(s)", report.violations);
            }
            Ok(())
        }
        ChaosCommand::Validate { scenarios } => {
            for path in scenarios {
                let sc = Scenario::load(path)?;
                let mut kinds: Vec<&str> = sc.faults.iter().map(|f| f.kind.as_str()).collect();
                kinds.sort_unstable();
                kinds.dedup();
                let control = if sc.cluster.replicated() {
                    format!(
                        "{} servers on {} etcd members",
                        sc.cluster.servers, sc.cluster.etcd_members
                    )
                } else {
                    "1 server".to_string()
                };
                println!(
                    "{}: ok — {control}, {} agents, {:?}, {} faults ({})",
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
            run_scenario(&sc, &out, *seed, network).map(drop)
        }
    }
}

/// Run `sc`, write its record and report under `out` and print the summary; an error when a
/// checker found a violation.
pub fn run_scenario(sc: &Scenario, out: &Path, seed: u64, network: &str) -> Result<Report> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let opts = RunOptions {
        exe: std::env::current_exe()?,
        seed,
        logs_to: Some(out.join("logs")),
        cancel: cancel_on_signal(),
        network: run::NetworkMode::parse(network)?,
        clock: Arc::new(run::ScheduleClock::default()),
    };
    eprintln!(
        "chaos: scenario {} ({} faults, {:?}), seed {seed}, output {}",
        sc.name,
        sc.faults.len(),
        sc.duration,
        out.display()
    );
    let bar = ProgressBar::start(opts.clock.clone());
    let record = run::run(sc, &opts, &mut |line| bar.line(line));
    drop(bar);
    let record = record?;
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
    Ok(report)
}

/// The phases as lines on stderr and, on a terminal, a bar for the fault schedule below them.
struct ProgressBar {
    tty: bool,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(clock: Arc<run::ScheduleClock>) -> ProgressBar {
        use std::io::IsTerminal as _;
        let tty = std::io::stderr().is_terminal();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = tty.then(|| {
            std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    if let Some((done, total)) = clock.position() {
                        eprint!("\r\x1b[K{}", bar(done, total));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                eprint!("\r\x1b[K");
            })
        });
        ProgressBar { tty, stop, thread }
    }

    fn line(&self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("  {line}");
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `  [##########··········]  12.3 s / 35.0 s  fault schedule`
fn bar(done: std::time::Duration, total: std::time::Duration) -> String {
    const WIDTH: usize = 30;
    let frac = if total.is_zero() {
        1.0
    } else {
        (done.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
    };
    let filled = (frac * WIDTH as f64).round() as usize;
    format!(
        "  [{}{}] {:>6.1} s / {:.1} s  fault schedule",
        "#".repeat(filled),
        "·".repeat(WIDTH - filled),
        done.as_secs_f64(),
        total.as_secs_f64()
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bar_fills_with_the_schedule() {
        let empty = bar(Duration::ZERO, Duration::from_secs(30));
        assert!(
            !empty.contains('#') && empty.contains("0.0 s / 30.0 s"),
            "{empty}"
        );
        let half = bar(Duration::from_secs(15), Duration::from_secs(30));
        assert_eq!(half.matches('#').count(), 15, "{half}");
        let full = bar(Duration::from_secs(31), Duration::from_secs(30));
        assert_eq!(full.matches('#').count(), 30, "{full}");
        assert!(!bar(Duration::ZERO, Duration::ZERO).contains('·'));
    }
}
