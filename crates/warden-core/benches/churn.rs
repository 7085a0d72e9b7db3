//! Agent churn through the controller (`cargo bench -p warden-core --bench churn`).
//!
//! A fleet of `--agents` names (default 1,000), each running one generation at a time: the
//! generation opens a session, heartbeats every 500 ms for 5–15 s (simulated), then its
//! process dies (its session resets, its probe port refuses) and the next generation of the
//! name joins. `--generations` (default 1,000,000) generations go through the real
//! [`Controller`], with default settings except the mass-failure brake, which is off (this is
//! steady churn, not a mass failure) and `--forget-after` (default 3600 s, the default
//! retention window).
//!
//! Every `--every` generations (default 50,000) it prints a point of the memory curve: the
//! generations the controller holds (live plus ended within the window), the process's
//! resident memory, and the cost of a controller step. After the first retention window the
//! held count and the memory must stay flat.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warden_core::controller::{
    Command, Controller, ControllerConfig, Copies, Election, Heartbeat, Hello, Input, SessionId,
    Snapshot,
};
use warden_core::lifecycle::{ProbeKind, ProbeOutcome, ProbeReport};
use warden_core::rng::Rng;
use warden_core::{AgentId, Resources, Time};

fn setting(args: &[String], flag: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == flag)
        .and_then(|w| w[1].trim().parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Live {
    id: AgentId,
    seq: u64,
    dies_at: Time,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agents = setting(&args, "--agents", 1_000).max(1) as usize;
    let total = setting(&args, "--generations", 1_000_000).max(1);
    let every = setting(&args, "--every", 50_000).max(1);
    let forget_after = Duration::from_secs(setting(&args, "--forget-after", 3_600).max(1));

    let mut cfg = ControllerConfig {
        forget_after,
        ..ControllerConfig::default()
    };
    cfg.lifecycle.brake_share = 1.0;
    let leader = Election::Leader {
        term: 1,
        since_unix_ms: 0,
        valid_until: None,
    };
    let (mut c, _) = Controller::new(cfg, "bench", leader, Snapshot::default(), Time::ZERO)
        .expect("valid settings");
    let mut rng = Rng::new(1);
    let tick = Duration::from_millis(50);
    let beat_every = 10u64; // ticks: 500 ms
    let mut now = Time::ZERO;
    let mut session = 0u64;
    let mut next_gen: BTreeMap<String, u64> = BTreeMap::new();
    let mut live: Vec<Live> = Vec::with_capacity(agents);
    let mut born = 0u64;
    let mut ended = 0u64;
    let mut steps = 0u64;
    let lifetime = |rng: &mut Rng| Duration::from_millis(rng.range_u64(5_000, 15_000));

    let mut join = |c: &mut Controller,
                    name: String,
                    now: Time,
                    rng: &mut Rng,
                    session: &mut u64,
                    steps: &mut u64|
     -> Live {
        let g = next_gen.entry(name.clone()).or_insert(0);
        *g += 1;
        *session += 1;
        let id = AgentId::new(name.as_str(), *g);
        c.step(
            Input::SessionOpened {
                session: SessionId(*session),
                agent: id.clone(),
                hello: Hello {
                    restore_points: true,
                    reload: true,
                    config_files: true,
                    name,
                    generation: *g,
                    probe_addr: "10.0.0.1:7402".into(),
                    state_addr: String::new(),
                    capacity: Resources::new(4000, 4096),
                    running: vec![],
                    reattach_window: std::time::Duration::ZERO,
                },
            },
            now,
        );
        *steps += 1;
        Live {
            id,
            seq: 0,
            dies_at: now + lifetime(rng),
        }
    };

    for i in 0..agents {
        let l = join(
            &mut c,
            format!("agent-{i}"),
            now,
            &mut rng,
            &mut session,
            &mut steps,
        );
        live.push(l);
        born += 1;
    }

    println!(
        "warden churn: {agents} agents, {total} generations, each alive 5-15 s, retention window {} s (simulated time)",
        forget_after.as_secs()
    );
    println!(
        "{:>12} {:>12} {:>14} {:>10} {:>12}",
        "generations", "simulated", "held by ctrl", "RSS MiB", "ns/step"
    );
    let started = Instant::now();
    let mut window_started = Instant::now();
    let mut window_steps = 0u64;
    let mut ticks = 0u64;
    let mut next_point = every;
    while ended < total {
        now = now + tick;
        ticks += 1;
        let before = steps;
        for (i, l) in live.iter_mut().enumerate() {
            if (ticks + i as u64).is_multiple_of(beat_every) {
                l.seq += 1;
                c.step(
                    Input::Heartbeat {
                        agent: l.id.clone(),
                        beat: Heartbeat {
                            seq: l.seq,
                            signals: None,
                            judged: None,
                            copies: Copies::Listed(vec![]),
                        },
                    },
                    now,
                );
                steps += 1;
            }
        }
        for l in &mut live {
            if l.dies_at > now || ended >= total {
                continue;
            }
            // The process dies: its session resets and its port refuses.
            let id = l.id.clone();
            if let Some((_, s)) = c.session_of(&id.name) {
                let cmds = c.step(
                    Input::SessionClosed {
                        agent: id.clone(),
                        session: s,
                    },
                    now,
                );
                steps += 1;
                for cmd in cmds {
                    if let Command::Probe(round) = cmd {
                        let report = ProbeReport {
                            round: round.round,
                            direct: vec![
                                (ProbeKind::Tcp, ProbeOutcome::Refused),
                                (ProbeKind::Http, ProbeOutcome::Refused),
                            ],
                            indirect: vec![],
                        };
                        c.step(
                            Input::Probes {
                                agent: round.agent,
                                report,
                            },
                            now,
                        );
                        steps += 1;
                    }
                }
            }
            ended += 1;
            let name = id.name.to_string();
            *l = join(&mut c, name, now, &mut rng, &mut session, &mut steps);
            born += 1;
        }
        c.step(Input::Tick, now);
        steps += 1;
        window_steps += steps - before;
        if ended >= next_point {
            next_point += every;
            let ns = window_started.elapsed().as_nanos() as f64 / window_steps.max(1) as f64;
            println!(
                "{:>12} {:>11.0}s {:>14} {:>10.1} {:>12.0}",
                ended,
                now.as_secs_f64(),
                c.generations(),
                rss_mib(),
                ns
            );
            window_started = Instant::now();
            window_steps = 0;
        }
    }
    println!(
        "{born} generations born, {ended} ended, {steps} controller steps in {:.1} s of wall clock; {} generations held at the end",
        started.elapsed().as_secs_f64(),
        c.generations()
    );
}
