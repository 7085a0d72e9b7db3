//! The simulation's own tests: quiet runs settle, each fault alone on the singleton's host is
//! survived, many seeded schedules pass both checkers, and the checkers do catch a broken
//! agent.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

fn one(kind: FaultKind, host: usize, at_ms: u64, length_ms: u64) -> Schedule {
    Schedule {
        seed: 11,
        faults: vec![Fault {
            at: Duration::from_millis(at_ms),
            host,
            kind,
            length: Duration::from_millis(length_ms),
        }],
    }
}

fn assert_clean(schedule: &Schedule, cfg: &SimConfig) -> Report {
    let r = run(schedule, cfg);
    assert!(
        r.violations.is_empty(),
        "{schedule}\n{}",
        r.violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    r
}

#[test]
fn a_quiet_run_places_all_work_and_moves_nothing() {
    let cfg = SimConfig::default();
    let r = assert_clean(
        &Schedule {
            seed: 1,
            faults: vec![],
        },
        &cfg,
    );
    assert_eq!(r.declared_failed, 0);
    assert_eq!(r.replacements, 0);
    assert_eq!(r.fenced, 0);
    assert!(r.steps > 1000, "{r:?}");
}

#[test]
fn every_fault_kind_alone_is_survived_on_every_host() {
    let cfg = SimConfig {
        chaos: Duration::from_secs(15),
        ..SimConfig::default()
    };
    let kinds = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Cut,
        FaultKind::CutDown,
        FaultKind::CutUp,
        FaultKind::Delay(Duration::from_millis(1500)),
        FaultKind::Drop(0.5),
        FaultKind::ServerRestart,
        FaultKind::Update,
    ];
    let mut moved = 0;
    for kind in kinds {
        for host in 0..cfg.agents {
            let r = assert_clean(&one(kind, host, 4_000, 6_000), &cfg);
            moved += r.replacements;
        }
    }
    // Some of those faults took singletons' hosts away long enough to move them.
    assert!(moved > 0);
}

#[test]
fn a_killed_singleton_host_has_its_work_moved() {
    let cfg = SimConfig {
        agents: 2,
        singletons: 1,
        service_replicas: 0,
        ..SimConfig::default()
    };
    let mut moved = false;
    for host in 0..2 {
        let r = assert_clean(&one(FaultKind::Kill, host, 4_000, 10_000), &cfg);
        moved |= r.replacements > 0;
        assert!(r.declared_failed >= 1, "{r:?}");
    }
    assert!(moved, "the singleton was on one of the two hosts");
}

#[test]
fn seeded_schedules_keep_at_most_one_and_lose_no_work() {
    let cfg = SimConfig::default();
    let s = run_many(1_000, 200, &cfg);
    assert_eq!(s.schedules, 200);
    let failed: Vec<String> = s
        .failed
        .iter()
        .map(|(seed, v)| format!("{}\n  {v}", Schedule::generate(*seed, &cfg)))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The schedules did exercise recovery, and rollouts under faults.
    assert!(
        s.declared_failed > 0 && s.replacements > 0 && s.fenced > 0 && s.updates > 0,
        "{s:?}"
    );
    assert_eq!(
        s.rollouts_unfinished, 0,
        "every rollout ended by the settle phase: {s:?}"
    );
}

#[test]
fn a_run_replays_exactly_from_its_seed() {
    let cfg = SimConfig::default();
    let schedule = Schedule::generate(42, &cfg);
    assert_eq!(schedule, Schedule::generate(42, &cfg));
    assert_eq!(run(&schedule, &cfg), run(&schedule, &cfg));
}

#[test]
fn the_checker_catches_agents_that_ignore_their_lease() {
    let cfg = SimConfig {
        agents_ignore_lease: true,
        agents: 2,
        singletons: 1,
        service_replicas: 0,
        ..SimConfig::default()
    };
    // A cut host keeps running its singleton while the server, rightly, starts it elsewhere.
    let mut caught = false;
    for host in 0..2 {
        let r = run(&one(FaultKind::Cut, host, 4_000, 8_000), &cfg);
        caught |= r
            .violations
            .iter()
            .any(|v| matches!(v, Violation::TwoLive { .. }));
    }
    assert!(caught);
}

#[test]
fn the_checker_catches_work_that_did_not_settle() {
    let cfg = SimConfig {
        settle: Duration::from_millis(1),
        ..SimConfig::default()
    };
    // A host is killed at the very end: nothing can have moved yet.
    let end = cfg.chaos.as_millis() as u64;
    let lost = (0..cfg.agents).any(|host| {
        run(&one(FaultKind::Kill, host, end - 20, 10), &cfg)
            .violations
            .iter()
            .any(|v| matches!(v, Violation::LostWork { .. }))
    });
    assert!(lost);
}

#[test]
fn schedules_stay_inside_the_safety_phase() {
    let cfg = SimConfig::default();
    for seed in 0..500 {
        let s = Schedule::generate(seed, &cfg);
        let faults = s
            .faults
            .iter()
            .filter(|f| f.kind != FaultKind::Update)
            .count();
        assert!(faults >= 1 && faults <= cfg.max_faults, "{s}");
        for f in &s.faults {
            assert!(f.at >= Duration::from_secs(3), "{s}");
            assert!(f.at + f.length <= cfg.chaos, "{s}");
            assert!(f.host < cfg.agents);
        }
    }
}
#[test]
fn the_schedules_that_found_bugs_stay_fixed() {
    // 629: after a server restart, a reconnecting agent gave a connection up before its first
    // heartbeat; a Joining generation's lost session was taken as proof of death and its
    // singleton started elsewhere while it ran. 3700 and 2070: a singleton refused for lack
    // of a lease (reported failed) was started by a late resend of the same order after the
    // server had moved it.
    let cfg = SimConfig::default();
    for seed in [629, 2070, 3700] {
        assert_clean(&Schedule::generate(seed, &cfg), &cfg);
    }
}

#[test]
fn a_rollout_during_a_kill_or_a_server_restart_keeps_at_most_one_and_finishes() {
    let cfg = SimConfig {
        chaos: Duration::from_secs(15),
        ..SimConfig::default()
    };
    for (kind, length) in [
        (FaultKind::Kill, 6_000),
        (FaultKind::ServerRestart, 2_000),
        (FaultKind::Cut, 5_000),
    ] {
        for host in 0..cfg.agents {
            let mut schedule = one(kind, host, 5_000, length);
            schedule.faults.insert(
                0,
                Fault {
                    at: Duration::from_millis(4_000),
                    host: 0,
                    kind: FaultKind::Update,
                    length: Duration::from_millis(1),
                },
            );
            let r = assert_clean(&schedule, &cfg);
            assert!(r.updates > 0, "{r:?}");
            assert_eq!(r.rollouts_unfinished, 0, "{kind:?} on host {host}: {r:?}");
        }
    }
}
