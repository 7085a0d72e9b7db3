//! `warden bench …`: measurements of Warden itself.

use anyhow::Result;
use clap::Subcommand;
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
    }
}
