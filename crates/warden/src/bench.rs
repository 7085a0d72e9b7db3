//! `warden bench …`: measurements of Warden itself.

use anyhow::Result;
use clap::Subcommand;
use warden_chaos::recovery::{self, Fault};
use warden_core::detector::{DetectorConfig, FixedTimeoutConfig, PhiConfig, TwoWindowConfig};
use warden_core::qos;
use warden_core::trace::TraceConfig;

/// `warden bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Compare the liveness detectors on seeded heartbeat traces (lossy, bursty, heavy-tailed,
    /// GC pauses): detection time, mistakes, query accuracy, confusion matrix.
    Detectors {
        /// Traces per preset (10 minutes each).
        #[arg(long, default_value_t = 200)]
        traces: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Singleton RTO on a real local cluster: kill -9 (or SIGSTOP) the agent running a
    /// singleton, measure until its replacement process runs, check the old copy was gone
    /// first; repeat.
    Recovery {
        /// Fault to inject.
        #[arg(long, value_enum, default_value_t = FaultArg::Kill)]
        fault: FaultArg,
        /// Repetitions.
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// Agents in the cluster.
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Faults for `bench recovery`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultArg {
    /// SIGKILL the agent.
    Kill,
    /// SIGSTOP the agent.
    Pause,
}

/// Run a benchmark.
pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Detectors { traces, seed } => {
            let detectors = [
                DetectorConfig::PhiAccrual(PhiConfig::default()),
                DetectorConfig::TwoWindow(TwoWindowConfig::default()),
                DetectorConfig::FixedTimeout(FixedTimeoutConfig::default()),
            ];
            let presets = [
                (
                    "lossy: 500 ms heartbeats, 5% loss, 100 ms jitter",
                    TraceConfig::lossy(),
                ),
                ("bursty", TraceConfig::bursty()),
                ("heavy-tailed", TraceConfig::heavy_tailed()),
                ("gc pauses", TraceConfig::gc_pauses()),
            ];
            println!(
                "{traces} traces x 10 min per preset, seed {seed}; crash at a random time in each trace's second half"
            );
            for (name, preset) in presets {
                println!("\n== {name}");
                let rows = qos::compare(&detectors, &preset, *traces, *seed);
                print!("{}", qos::format_table(&rows));
            }
            println!(
                "\nThe full comparison, with the 3 x 5 s baseline on its own traces: cargo bench -p warden-core --bench detector_qos"
            );
            Ok(())
        }
        BenchCommand::Recovery {
            fault,
            reps,
            agents,
            json,
        } => {
            let fault = match fault {
                FaultArg::Kill => Fault::Kill,
                FaultArg::Pause => Fault::Pause,
            };
            let exe = std::env::current_exe()?;
            eprintln!(
                "{reps} x {fault:?} of the agent running a singleton, {agents} agents on loopback (heartbeat 500 ms, lease 2 s)"
            );
            let summary = recovery::run(&exe, fault, *reps, *agents, |s| {
                eprintln!(
                    "  {:<8} RTO {:>7.1} ms   old copy gone after {:>7.1} ms{}",
                    s.agent,
                    s.rto_ms,
                    s.old_gone_ms,
                    if s.overlap { "   TWO COPIES ALIVE" } else { "" }
                );
            })?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{:?}: {} reps, singleton RTO p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; two live copies: {}",
                    summary.fault,
                    summary.reps,
                    summary.rto_p50_ms,
                    summary.rto_p99_ms,
                    summary.rto_max_ms,
                    summary.overlaps
                );
            }
            if summary.overlaps > 0 {
                anyhow::bail!("at-most-one violated in {} repetitions", summary.overlaps);
            }
            Ok(())
        }
    }
}
