//! Lifecycle tests: each drives a [`Fleet`] with explicit times and asserts on the outputs.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::anomaly::DetectorKind;

const HB: u64 = 500;

fn ms(v: u64) -> Time {
    Time::from_millis(v)
}

fn fleet() -> Fleet {
    Fleet::new(LifecycleConfig::default()).unwrap()
}

fn id(name: &str) -> AgentId {
    AgentId::new(name, 1)
}

fn transitions(out: &[Output]) -> Vec<(AgentState, AgentState)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transition(t) => Some((t.from, t.to)),
            _ => None,
        })
        .collect()
}

fn causes(out: &[Output]) -> Vec<Cause> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transition(t) => Some(t.cause.clone()),
            _ => None,
        })
        .collect()
}

fn probe_round(out: &[Output]) -> Option<u64> {
    out.iter().rev().find_map(|o| match o {
        Output::Probe { round, .. } => Some(*round),
        _ => None,
    })
}

/// Join `name` at 0 and send regular heartbeats up to `until_ms`; returns the last send time.
fn healthy_agent(f: &mut Fleet, name: &str, until_ms: u64) -> u64 {
    f.join(id(name), ms(0));
    let mut t = 0;
    let mut seq = 0;
    while t + HB <= until_ms {
        t += HB;
        seq += 1;
        f.step(&id(name), AgentEvent::Heartbeat { seq }, ms(t));
    }
    t
}

fn heartbeat(f: &mut Fleet, name: &str, at: u64) -> Vec<Output> {
    let seq = f.agent(&id(name)).unwrap().last_seq + 1;
    f.step(&id(name), AgentEvent::Heartbeat { seq }, ms(at))
}

#[test]
fn first_heartbeat_makes_a_joining_agent_healthy_and_renews_its_lease() {
    let mut f = fleet();
    assert!(f.join(id("a"), ms(0)).is_empty());
    assert_eq!(f.agent(&id("a")).unwrap().state(), AgentState::Joining);
    let out = f.step(&id("a"), AgentEvent::Heartbeat { seq: 1 }, ms(100));
    assert_eq!(
        out[0],
        Output::RenewLease {
            agent: id("a"),
            seq: 1
        }
    );
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Joining, AgentState::Healthy)]
    );
    assert_eq!(f.agent(&id("a")).unwrap().last_renewal(), Some(ms(100)));
    // A duplicate or reordered heartbeat renews nothing.
    assert!(
        f.step(&id("a"), AgentEvent::Heartbeat { seq: 1 }, ms(200))
            .is_empty()
    );
}

#[test]
fn bad_signals_degrade_and_recovery_needs_the_margin() {
    let mut f = fleet();
    healthy_agent(&mut f, "a", 2_000);
    let sick = Signals {
        error_rate: Some(0.5),
        ..Signals::default()
    };
    let out = f.step(&id("a"), AgentEvent::Signals(sick), ms(2_100));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Healthy, AgentState::Degraded)]
    );
    assert!(matches!(causes(&out)[0], Cause::LowScore { .. }));
    // 62 is above the threshold but not above threshold + margin.
    let borderline = Signals {
        error_rate: Some(0.01 + 0.19 * (38.0 / 60.0)),
        ..Signals::default()
    };
    let out = f.step(&id("a"), AgentEvent::Signals(borderline), ms(2_200));
    assert!(transitions(&out).is_empty(), "{out:?}");
    let fine = Signals {
        error_rate: Some(0.0),
        ..Signals::default()
    };
    let out = f.step(&id("a"), AgentEvent::Signals(fine), ms(2_300));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Degraded, AgentState::Healthy)]
    );
}

#[test]
fn an_agent_that_judges_its_signals_is_taken_at_its_word_and_costs_no_detector() {
    let mut f = fleet();
    healthy_agent(&mut f, "a", 1_000);
    let s = Signals {
        latency_ms: Some(20.0),
        ..Signals::default()
    };
    // The fleet judged this agent's first samples itself (an agent that did not judge yet).
    let out = f.step(&id("a"), AgentEvent::Signals(s), ms(1_010));
    assert!(transitions(&out).is_empty(), "{out:?}");
    assert!(!f.agent(&id("a")).unwrap().judges_own_signals());
    let calm = AgentEvent::JudgedSignals {
        signals: s,
        anomalous: SignalSet::EMPTY,
    };
    let out = f.step(&id("a"), calm.clone(), ms(1_020));
    assert!(transitions(&out).is_empty(), "{out:?}");
    assert!(f.agent(&id("a")).unwrap().judges_own_signals());
    // Its verdict alone, on values with a perfect score, degrades it.
    let out = f.step(
        &id("a"),
        AgentEvent::JudgedSignals {
            signals: s,
            anomalous: SignalSet::EMPTY.with(SignalKind::Latency),
        },
        ms(1_030),
    );
    assert_eq!(
        causes(&out),
        vec![Cause::Anomaly {
            signal: SignalKind::Latency
        }]
    );
    assert_eq!(
        f.agent(&id("a")).unwrap().anomalous_signals(),
        vec![SignalKind::Latency]
    );
    // The verdict cleared: healthy again.
    let out = f.step(&id("a"), calm, ms(1_040));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Degraded, AgentState::Healthy)]
    );
    // No detector was kept for it after it began to judge: a jump the fleet's detectors
    // would flag is not flagged while the agent says all is well.
    for i in 0..200 {
        let out = f.step(
            &id("a"),
            AgentEvent::JudgedSignals {
                signals: Signals {
                    latency_ms: Some(if i < 150 { 20.0 } else { 200.0 }),
                    ..Signals::default()
                },
                anomalous: SignalSet::EMPTY,
            },
            ms(1_050 + 10 * i),
        );
        assert!(transitions(&out).is_empty(), "{i}: {out:?}");
    }
}

#[test]
fn an_anomalous_signal_degrades_even_with_a_good_score() {
    for detector in [DetectorKind::Tail, DetectorKind::Ewma] {
        let mut cfg = LifecycleConfig::default();
        cfg.anomaly.detector = detector;
        let mut f = Fleet::new(cfg).unwrap();
        healthy_agent(&mut f, "a", 1_000);
        let mut t = 1_000;
        // Past either detector's warm-up.
        for i in 0..150 {
            t += 10;
            let s = Signals {
                latency_ms: Some(20.0 + f64::from(i % 3)),
                ..Signals::default()
            };
            let out = f.step(&id("a"), AgentEvent::Signals(s), ms(t));
            assert!(transitions(&out).is_empty(), "{detector:?} at {i}: {out:?}");
        }
        let mut seen = vec![];
        for _ in 0..3 {
            t += 10;
            // 200 ms is still a perfect score but far outside this agent's normal.
            let s = Signals {
                latency_ms: Some(200.0),
                ..Signals::default()
            };
            let out = f.step(&id("a"), AgentEvent::Signals(s), ms(t));
            seen.extend(causes(&out));
        }
        assert_eq!(
            seen,
            vec![Cause::Anomaly {
                signal: SignalKind::Latency
            }],
            "{detector:?}"
        );
    }
}

#[test]
fn anomaly_settings_per_signal_are_checked_by_name() {
    let mut cfg = LifecycleConfig::default();
    cfg.anomaly
        .signals
        .insert("latency".into(), crate::tail::TailConfig::default());
    assert!(cfg.validate().is_ok());
    cfg.anomaly
        .signals
        .insert("latncy".into(), crate::tail::TailConfig::default());
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.field, "anomaly.signals.latncy");
    assert!(e.reason.contains("error_rate"), "{e:?}");
}

#[test]
fn silence_makes_suspect_and_a_heartbeat_refutes() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 10_000);
    // A short gap is fine.
    assert!(f.tick(ms(last + 600)).is_empty());
    let out = f.tick(ms(last + 2_100));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Healthy, AgentState::Suspect)]
    );
    assert!(matches!(causes(&out)[0], Cause::Detector { .. }));
    assert!(probe_round(&out).is_some(), "suspicion must ask for probes");
    let out = heartbeat(&mut f, "a", last + 2_200);
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Suspect, AgentState::Healthy)]
    );
    assert_eq!(causes(&out), vec![Cause::HeartbeatResumed]);
}

#[test]
fn crash_is_confirmed_by_session_reset_plus_refused_probe() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(last + 100));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Healthy, AgentState::Suspect)]
    );
    let round = probe_round(&out).unwrap();
    let report = ProbeReport {
        round,
        direct: vec![
            (ProbeKind::Http, ProbeOutcome::Refused),
            (ProbeKind::Tcp, ProbeOutcome::Refused),
        ],
        indirect: vec![],
    };
    let out = f.step(&id("a"), AgentEvent::Probes(report), ms(last + 110));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Suspect, AgentState::Failed)]
    );
    assert_eq!(causes(&out), vec![Cause::ProcessGone]);
    assert_eq!(
        f.agent(&id("a")).unwrap().death_evidence(),
        DeathEvidence::ProcessGone { at: ms(last + 110) }
    );
    // A Failed generation's heartbeats are refused.
    let out = f.step(&id("a"), AgentEvent::Heartbeat { seq: 999 }, ms(last + 200));
    assert_eq!(out, vec![Output::StaleGeneration { agent: id("a") }]);
}

#[test]
fn a_stopped_agent_that_still_accepts_tcp_is_not_alive() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    let out = f.tick(ms(last + 2_100));
    let round = probe_round(&out).unwrap();
    let report = ProbeReport {
        round,
        direct: vec![
            (ProbeKind::Tcp, ProbeOutcome::Connected),
            (ProbeKind::Http, ProbeOutcome::TimedOut),
            (ProbeKind::Icmp, ProbeOutcome::Skipped),
        ],
        indirect: vec![ProbeOutcome::TimedOut, ProbeOutcome::TimedOut],
    };
    let out = f.step(&id("a"), AgentEvent::Probes(report), ms(last + 2_200));
    assert_eq!(causes(&out), vec![Cause::ProbesFailed]);
    // Probes failing is no proof of death: the fencing rule must wait for the lease.
    assert_eq!(
        f.agent(&id("a")).unwrap().death_evidence(),
        DeathEvidence::None
    );
}

#[test]
fn an_answering_agent_stays_suspect_until_its_lease_runs_out() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    let out = f.tick(ms(last + 2_000));
    let round = probe_round(&out).unwrap();
    let report = ProbeReport {
        round,
        direct: vec![(ProbeKind::Http, ProbeOutcome::TimedOut)],
        indirect: vec![ProbeOutcome::Answered],
    };
    let out = f.step(&id("a"), AgentEvent::Probes(report), ms(last + 2_050));
    assert!(transitions(&out).is_empty());
    // Stale round numbers are ignored.
    let stale = ProbeReport {
        round: round - 1,
        ..ProbeReport::default()
    };
    assert!(
        f.step(&id("a"), AgentEvent::Probes(stale), ms(last + 2_060))
            .is_empty()
    );
    // Lease: last renewal + 2 s · 1.05 + 250 ms = last + 2350.
    assert!(transitions(&f.tick(ms(last + 2_349))).is_empty());
    let out = f.tick(ms(last + 2_350));
    assert_eq!(causes(&out), vec![Cause::LeaseExpired]);
}

#[test]
fn suspect_agents_are_probed_again_each_interval() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(last + 10));
    let r1 = probe_round(&out).unwrap();
    assert!(probe_round(&f.tick(ms(last + 500))).is_none());
    let r2 = probe_round(&f.tick(ms(last + 1_010))).unwrap();
    assert_eq!(r2, r1 + 1);
}

#[test]
fn flapping_agent_is_quarantined_then_released() {
    let mut f = fleet();
    let mut t = healthy_agent(&mut f, "a", 5_000);
    let mut states = vec![];
    for _ in 0..4 {
        // Session blips: Suspect, then a heartbeat refutes.
        f.step(&id("a"), AgentEvent::SessionLost, ms(t + 10));
        f.step(&id("a"), AgentEvent::SessionOpened, ms(t + 20));
        t += 30;
        let out = heartbeat(&mut f, "a", t);
        states.extend(transitions(&out).into_iter().map(|(_, to)| to));
    }
    assert_eq!(states.last(), Some(&AgentState::Quarantined), "{states:?}");
    assert!(!AgentState::Quarantined.accepts_work());
    // Keep it alive; it comes out when the quarantine is over.
    let end = t + 120_000;
    let mut released = false;
    while t < end + 1_000 {
        t += HB;
        heartbeat(&mut f, "a", t);
        let out = f.tick(ms(t));
        if transitions(&out) == vec![(AgentState::Quarantined, AgentState::Healthy)] {
            released = true;
            assert!(t >= end);
            break;
        }
    }
    assert!(released);
}

#[test]
fn mass_suspicion_engages_the_brake_and_blocks_failed_verdicts() {
    let mut f = fleet();
    let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    for n in &names {
        healthy_agent(&mut f, n, 5_000);
    }
    let mut alarms = vec![];
    let mut rounds = vec![];
    for n in &names[..4] {
        let out = f.step(&id(n), AgentEvent::SessionLost, ms(5_100));
        alarms.extend(
            out.iter()
                .filter(|o| matches!(o, Output::Alarm(_)))
                .cloned(),
        );
        rounds.push(probe_round(&out).unwrap());
    }
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert!(matches!(
        alarms[0],
        Output::Alarm(Alarm::BrakeEngaged {
            suspects: 4,
            fleet: 10,
            ..
        })
    ));
    assert!(f.brake_engaged());
    // Even conclusive probes do not fail anybody while the brake holds.
    for (n, round) in names[..4].iter().zip(&rounds) {
        let report = ProbeReport {
            round: *round,
            direct: vec![(ProbeKind::Http, ProbeOutcome::Refused)],
            indirect: vec![],
        };
        assert!(transitions(&f.step(&id(n), AgentEvent::Probes(report), ms(5_200))).is_empty());
    }
    // Nor does the lease running out.
    let mut t = 5_000;
    while t < 9_000 {
        t += HB;
        for n in &names[4..] {
            heartbeat(&mut f, n, t);
        }
        let out = f.tick(ms(t));
        assert!(
            !transitions(&out).contains(&(AgentState::Suspect, AgentState::Failed)),
            "{out:?}"
        );
    }
    // Three come back: the one left is no longer a mass. The brake holds for `brake_hold`
    // (agents cut off together reconnect one by one), then releases and the last one fails.
    let mut out = vec![];
    for n in &names[..3] {
        f.step(&id(n), AgentEvent::SessionOpened, ms(t + 10));
        out.extend(heartbeat(&mut f, n, t + 10));
    }
    out.extend(f.tick(ms(t + 20)));
    assert!(f.brake_engaged(), "released before the hold: {out:?}");
    assert_eq!(f.agent(&id("n3")).unwrap().state(), AgentState::Suspect);
    let hold = u64::try_from(f.config().brake_hold.as_millis()).unwrap();
    let released_by = t + 20 + hold + HB;
    while t < released_by {
        t += HB;
        for n in names.iter().filter(|n| *n != "n3") {
            heartbeat(&mut f, n, t);
        }
        out.extend(f.tick(ms(t)));
    }
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Alarm(Alarm::BrakeReleased { .. }))),
        "{out:?}"
    );
    assert!(!f.brake_engaged());
    assert_eq!(f.agent(&id("n3")).unwrap().state(), AgentState::Failed);
    assert_eq!(
        f.agent(&id("n3")).unwrap().death_evidence(),
        DeathEvidence::ProcessGone { at: ms(5_200) }
    );
}

#[test]
fn one_crash_in_a_small_fleet_is_not_a_mass_failure() {
    let mut f = fleet();
    for n in ["a", "b", "c"] {
        healthy_agent(&mut f, n, 3_000);
    }
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(3_100));
    assert!(!f.brake_engaged());
    let report = ProbeReport {
        round: probe_round(&out).unwrap(),
        direct: vec![(ProbeKind::Http, ProbeOutcome::Refused)],
        indirect: vec![ProbeOutcome::TimedOut],
    };
    let out = f.step(&id("a"), AgentEvent::Probes(report), ms(3_120));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Suspect, AgentState::Failed)]
    );
}

#[test]
fn a_new_generation_supersedes_the_old_one() {
    let mut f = fleet();
    healthy_agent(&mut f, "a", 2_000);
    let out = f.join(AgentId::new("a", 2), ms(2_100));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Healthy, AgentState::Failed)]
    );
    assert_eq!(causes(&out), vec![Cause::Superseded { by: 2 }]);
    assert_eq!(f.current("a").unwrap().id().generation, 2);
    // An older generation cannot come back.
    assert_eq!(
        f.join(AgentId::new("a", 1), ms(2_200)),
        vec![Output::StaleGeneration { agent: id("a") }]
    );
    // Forgetting an old generation keeps the newest.
    f.forget(&id("a"));
    assert!(f.agent(&id("a")).is_none());
    assert!(f.current("a").is_some());
    // Forgetting the newest forgets the name: the next generation joins as after a restart.
    f.forget(&AgentId::new("a", 2));
    assert!(f.current("a").is_none());
    assert!(f.join(AgentId::new("a", 3), ms(2_300)).is_empty());
    // A generation older than the newest, never seen, is recorded as gone.
    f.record_superseded(AgentId::new("a", 1), ms(2_400));
    let old = f.agent(&id("a")).unwrap();
    assert_eq!(old.state(), AgentState::Failed);
    assert!(matches!(
        old.death_evidence(),
        DeathEvidence::ProcessGone { .. }
    ));
    assert_eq!(f.current("a").unwrap().id().generation, 3);
}

#[test]
fn a_standby_reinstates_a_generation_it_took_as_ended() {
    let mut f = fleet();
    f.join(id("a"), ms(0));
    // A fresh generation whose session dropped before its first heartbeat, and whose port
    // then refused, ends here...
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(10));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Joining, AgentState::Suspect)]
    );
    let report = ProbeReport {
        round: probe_round(&out).unwrap(),
        direct: vec![(ProbeKind::Tcp, ProbeOutcome::Refused)],
        indirect: vec![],
    };
    f.step(&id("a"), AgentEvent::Probes(report), ms(15));
    assert!(f.agent(&id("a")).unwrap().state().is_terminal());
    assert_eq!(
        f.join(id("a"), ms(20)),
        vec![Output::StaleGeneration { agent: id("a") }]
    );
    // ...but on a standby that is only an opinion: the agent comes back and counts again.
    assert!(f.reinstate(id("a"), ms(30)).is_empty());
    assert_eq!(f.agent(&id("a")).unwrap().state(), AgentState::Joining);
    assert_eq!(
        transitions(&heartbeat(&mut f, "a", 500)),
        vec![(AgentState::Joining, AgentState::Healthy)]
    );
    // A newer generation joins as usual; an older one stays refused.
    assert!(f.reinstate(AgentId::new("a", 2), ms(600)).len() == 1);
    assert_eq!(f.current("a").unwrap().id().generation, 2);
    assert_eq!(
        f.reinstate(id("a"), ms(700)),
        vec![Output::StaleGeneration { agent: id("a") }]
    );
}

#[test]
fn a_joining_generation_whose_session_drops_is_suspected_not_declared() {
    // Known only from the task records after a restart, it may hold work and a lease: a
    // dropped session (the agent gave a connection up) proves nothing about its process.
    let mut f = fleet();
    f.join(id("a"), ms(0));
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(10));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Joining, AgentState::Suspect)]
    );
    let report = ProbeReport {
        round: probe_round(&out).unwrap(),
        direct: vec![
            (ProbeKind::Tcp, ProbeOutcome::Connected),
            (ProbeKind::Http, ProbeOutcome::Answered),
        ],
        indirect: vec![],
    };
    let out = f.step(&id("a"), AgentEvent::Probes(report), ms(20));
    assert!(transitions(&out).is_empty());
    // It reconnects and heartbeats: back to normal, never declared.
    f.step(&id("a"), AgentEvent::SessionOpened, ms(30));
    let out = heartbeat(&mut f, "a", 40);
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Suspect, AgentState::Healthy)]
    );
}

#[test]
fn graceful_leave_is_terminal_and_not_a_failure() {
    let mut f = fleet();
    healthy_agent(&mut f, "a", 1_000);
    let out = f.step(&id("a"), AgentEvent::Leave, ms(1_100));
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Healthy, AgentState::Left)]
    );
    assert!(f.tick(ms(60_000)).is_empty());
}

#[test]
fn lease_expiry_from_outside_goes_through_suspect() {
    let mut f = fleet();
    healthy_agent(&mut f, "a", 1_000);
    let out = f.step(&id("a"), AgentEvent::LeaseExpired, ms(1_100));
    assert_eq!(
        transitions(&out),
        vec![
            (AgentState::Healthy, AgentState::Suspect),
            (AgentState::Suspect, AgentState::Failed)
        ]
    );
}

#[test]
fn config_validation_names_the_field() {
    let cfg = LifecycleConfig {
        fencing: FencingConfig {
            lease_ttl: Duration::from_millis(600),
            ..FencingConfig::default()
        },
        ..LifecycleConfig::default()
    };
    assert_eq!(Fleet::new(cfg).unwrap_err().field, "fencing.lease_ttl");
    let cfg = LifecycleConfig {
        brake_share: 0.0,
        ..LifecycleConfig::default()
    };
    assert_eq!(Fleet::new(cfg).unwrap_err().field, "brake_share");
    let cfg = LifecycleConfig {
        heartbeat_interval: Duration::ZERO,
        ..LifecycleConfig::default()
    };
    assert_eq!(Fleet::new(cfg).unwrap_err().field, "heartbeat_interval");
    // A detector that would suspect only after the lease has surely expired is useless.
    let cfg = LifecycleConfig {
        fencing: FencingConfig {
            lease_ttl: Duration::from_millis(1_000),
            ..FencingConfig::default()
        },
        ..LifecycleConfig::default()
    };
    assert_eq!(Fleet::new(cfg).unwrap_err().field, "detector");
    assert!(LifecycleConfig::default().validate().is_ok());
    assert!(LifecycleConfig::default().nominal_detection_delay() < Duration::from_millis(2_350));
}

#[test]
fn a_host_killed_twice_is_one_suspect_and_one_that_came_back_is_none() {
    // Three agents; one is killed, comes back as a new generation, is killed again; another
    // is killed and comes back. No mass here: the brake must stay off.
    let mut f = fleet();
    for n in ["a", "b", "c"] {
        healthy_agent(&mut f, n, 3_000);
    }
    let lose = |f: &mut Fleet, id: &AgentId, at: u64| {
        let out = f.step(id, AgentEvent::SessionLost, ms(at));
        let report = ProbeReport {
            round: probe_round(&out).unwrap(),
            direct: vec![(ProbeKind::Tcp, ProbeOutcome::Refused)],
            indirect: vec![],
        };
        f.step(id, AgentEvent::Probes(report), ms(at + 1));
    };
    lose(&mut f, &id("a"), 3_100);
    let a2 = AgentId::new("a", 2);
    f.join(a2.clone(), ms(3_200));
    f.step(&a2, AgentEvent::Heartbeat { seq: 1 }, ms(3_300));
    lose(&mut f, &id("b"), 3_400);
    let b2 = AgentId::new("b", 2);
    f.join(b2.clone(), ms(3_500));
    f.step(&b2, AgentEvent::Heartbeat { seq: 1 }, ms(3_600));
    let out = f.step(&a2, AgentEvent::SessionLost, ms(3_700));
    assert!(!f.brake_engaged(), "{out:?}");
    assert_eq!(f.agent(&a2).unwrap().state(), AgentState::Suspect);
}

fn refused(round: u64) -> ProbeReport {
    ProbeReport {
        round,
        direct: vec![
            (ProbeKind::Http, ProbeOutcome::Refused),
            (ProbeKind::Tcp, ProbeOutcome::Refused),
        ],
        indirect: vec![],
    }
}

fn released(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::ReleaseSingletons { .. }))
        .count()
}

/// Ticks every 10 ms from `from` to `to`; all outputs.
fn ticks(f: &mut Fleet, from: u64, to: u64) -> Vec<Output> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= to {
        out.extend(f.tick(ms(t)));
        t += 10;
    }
    out
}

#[test]
fn an_agent_whose_process_is_gone_is_held_for_its_reattach_window_and_its_singletons_move() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    f.set_reattach_window(&id("a"), Duration::from_secs(30));
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(last + 100));
    let round = probe_round(&out).unwrap();
    let gone_at = last + 110;
    let out = f.step(&id("a"), AgentEvent::Probes(refused(round)), ms(gone_at));
    // Not Failed: its shims keep its services; the singletons wait for kill_grace (250 ms).
    assert!(transitions(&out).is_empty(), "{out:?}");
    assert_eq!(released(&out), 0);
    let early = ticks(&mut f, gone_at + 10, gone_at + 200);
    assert_eq!(released(&early), 0, "released before kill_grace");
    let out = ticks(&mut f, gone_at + 260, gone_at + 5_000);
    assert!(released(&out) >= 1, "{out:?}");
    assert!(transitions(&out).is_empty(), "{out:?}");
    assert_eq!(f.agent(&id("a")).unwrap().state(), AgentState::Suspect);
    assert_eq!(f.held_until(&id("a")), Some(ms(gone_at + 30_000)));
    // A new process resumes the generation within the window: healthy, nothing held.
    f.step(&id("a"), AgentEvent::SessionOpened, ms(gone_at + 6_000));
    let out = heartbeat(&mut f, "a", gone_at + 6_010);
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Suspect, AgentState::Healthy)]
    );
    assert_eq!(f.held_until(&id("a")), None);
}

#[test]
fn an_agent_not_back_within_its_reattach_window_is_failed() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    f.set_reattach_window(&id("a"), Duration::from_secs(2));
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(last + 100));
    let round = probe_round(&out).unwrap();
    f.step(&id("a"), AgentEvent::Probes(refused(round)), ms(last + 110));
    let out = ticks(&mut f, last + 120, last + 2_200);
    assert!(released(&out) >= 1);
    assert_eq!(causes(&out), vec![Cause::NotBackInTime], "{out:?}");
    assert_eq!(f.agent(&id("a")).unwrap().state(), AgentState::Failed);
}

#[test]
fn a_planned_restart_holds_the_verdict_and_releases_singletons_only_after_the_lease() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    let out = f.step(
        &id("a"),
        AgentEvent::Restarting {
            window: Duration::from_secs(30),
        },
        ms(last + 50),
    );
    assert!(out.is_empty(), "{out:?}");
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(last + 60));
    let round = probe_round(&out).unwrap();
    // The old process is gone (re-executing): no verdict, and its singletons live on under
    // their lease for the new process.
    let out = f.step(&id("a"), AgentEvent::Probes(refused(round)), ms(last + 70));
    assert!(transitions(&out).is_empty());
    let lease_out = f
        .config()
        .fencing
        .lease_surely_expired_at(ms(last))
        .as_nanos()
        / 1_000_000;
    let before = ticks(&mut f, last + 80, lease_out - 20);
    assert_eq!(released(&before), 0, "released before the lease ran out");
    let after = ticks(&mut f, lease_out, lease_out + 500);
    assert!(released(&after) >= 1);
    assert!(transitions(&after).is_empty());
    // Back within the window: healthy again.
    f.step(&id("a"), AgentEvent::SessionOpened, ms(last + 4_000));
    let out = heartbeat(&mut f, "a", last + 4_010);
    assert_eq!(
        transitions(&out),
        vec![(AgentState::Suspect, AgentState::Healthy)]
    );
}

#[test]
fn without_a_reattach_window_a_gone_process_is_failed_at_once_as_before() {
    let mut f = fleet();
    let last = healthy_agent(&mut f, "a", 5_000);
    let out = f.step(&id("a"), AgentEvent::SessionLost, ms(last + 100));
    let round = probe_round(&out).unwrap();
    let out = f.step(&id("a"), AgentEvent::Probes(refused(round)), ms(last + 110));
    assert_eq!(causes(&out), vec![Cause::ProcessGone]);
    assert_eq!(released(&out), 0);
}
