//! The seeded control-plane simulation at scale (`cargo bench -p warden-core --bench sim`).
//!
//! Runs the fault schedules of seeds `seed..seed + schedules` through `warden_core::sim` (the
//! real controller, simulated store, agents and network; 5 agents, 3 singletons and a service
//! of 3 replicas; 20 s of faults then 30 s to settle, all simulated) and prints how many
//! schedules ran per second of wall clock, what they exercised, and every schedule that broke
//! at-most-one or no-lost-work (none, or the run exits non-zero).
//!
//! Options: `--schedules N` / `WARDEN_SIM_SCHEDULES` (default 5000) and `--seed S` /
//! `WARDEN_SIM_SEED` (default 1).

use std::time::Instant;

use warden_core::sim::{self, Schedule, SimConfig};

fn setting(args: &[String], flag: &str, env: &str, default: u64) -> u64 {
    let from_args = args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    from_args
        .or_else(|| std::env::var(env).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let schedules = setting(&args, "--schedules", "WARDEN_SIM_SCHEDULES", 5000).max(1);
    let seed = setting(&args, "--seed", "WARDEN_SIM_SEED", 1);
    let cfg = SimConfig::default();
    // The schedules are independent: one share of the seeds per core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let started = Instant::now();
    let parts: Vec<sim::Summary> = std::thread::scope(|scope| {
        let cfg = &cfg;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let from = seed + schedules * t / threads;
                let to = seed + schedules * (t + 1) / threads;
                scope.spawn(move || sim::run_many(from, to - from, cfg))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let took = started.elapsed().as_secs_f64();
    let mut s = sim::Summary::default();
    for p in parts {
        s.schedules += p.schedules;
        s.steps += p.steps;
        s.declared_failed += p.declared_failed;
        s.replacements += p.replacements;
        s.fenced += p.fenced;
        s.brakes += p.brakes;
        s.failed.extend(p.failed);
    }
    println!(
        "warden sim: {} schedules (seeds {seed}..{}), {} agents, {} singletons + {} service replicas, {:.0} s of faults + {:.0} s to settle each (simulated)",
        s.schedules,
        seed + schedules,
        cfg.agents,
        cfg.singletons,
        cfg.service_replicas,
        cfg.chaos.as_secs_f64(),
        cfg.settle.as_secs_f64()
    );
    println!(
        "wall clock {took:.2} s on {threads} threads: {:.0} schedules/s, {:.2} M controller steps/s, {:.0} simulated seconds per wall-clock second",
        s.schedules as f64 / took,
        s.steps as f64 / took / 1e6,
        s.schedules as f64 * (cfg.chaos + cfg.settle).as_secs_f64() / took
    );
    println!(
        "exercised: {} generations declared failed, {} replacement copies, {} singleton copies fenced by their lease, {} brake engagements",
        s.declared_failed, s.replacements, s.fenced, s.brakes
    );
    println!(
        "checkers: at-most-one and no-lost-work broken on {} of {} schedules",
        s.failed.len(),
        s.schedules
    );
    for (seed, v) in &s.failed {
        println!("  {}\n    {v}", Schedule::generate(*seed, &cfg));
    }
    if !s.failed.is_empty() {
        std::process::exit(1);
    }
}
