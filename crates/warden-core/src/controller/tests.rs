//! Controller tests in the engine style: inputs with explicit times in, assertions on the
//! commands out. A small harness plays the store (compare-and-set on slot epochs) and, where
//! asked, obedient agents that run what they are assigned.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::*;
use crate::anomaly::SignalSet;
use crate::lifecycle::{Cause, ProbeKind, ProbeOutcome, ProbeReport};
use crate::release::RolloutPhase;
use crate::types::JobKind;
use crate::types::SignalKind;

const T0: Time = Time::from_millis(1_000_000);

fn leader() -> Election {
    Election::Leader {
        term: 1,
        since_unix_ms: 0,
        valid_until: None,
    }
}

fn job(name: &str, kind: JobKind, replicas: u32) -> JobSpec {
    JobSpec {
        data_epoch: 0,
        name: JobName::new(name),
        kind,
        replicas,
        command: "/bin/sleep".into(),
        args: vec!["1000".into()],
        env: BTreeMap::new(),
        resources: Resources::new(100, 64),
        health: None,
        service: None,
        state: None,
        update: None,
        config: vec![],
    }
}

/// The controller, a store, and the commands seen.
struct H {
    c: Controller,
    now: Time,
    /// The store's slot epochs.
    store: HashMap<TaskId, FencingToken>,
    /// Hold slot writes instead of answering them.
    hold: bool,
    held: Vec<Write>,
    next_session: u64,
    ticks: u64,
    seq: HashMap<AgentId, u64>,
    /// What each agent runs: (task, epoch) → phase, kept by `obey`.
    runs: HashMap<AgentId, BTreeMap<TaskId, (FencingToken, CopyPhase)>>,
    /// The standbys a primary copy reports it waits for (replicated state), by task.
    in_sync: HashMap<TaskId, Vec<String>>,
    /// The newest role each agent was told for each copy.
    roles: HashMap<(AgentId, TaskId), crate::state::ReplicaOrder>,
    /// What each replica copy reports it holds: task → (last sequence number, sealed).
    seqs: HashMap<TaskId, (u64, bool)>,
    /// The standbys a primary copy reports lagging, by task.
    lagging: HashMap<TaskId, Vec<String>>,
    /// Copies of this command fail at once (a bad version).
    failing: Option<String>,
    /// Every assignment sent: (task, epoch, command).
    assigned: Vec<(TaskId, FencingToken, String)>,
    /// Every assignment's agent and data epoch, in order.
    placed: Vec<(AgentId, TaskId, u32)>,
    /// The job version each copy reports (its assignment's, or its last reload's).
    versions: HashMap<(TaskId, FencingToken), u64>,
    /// Every reload order: (task, epoch, version, config file contents).
    reloads: Vec<(TaskId, FencingToken, u64, Vec<String>)>,
    /// Agents ignore reload orders (a lost order).
    ignore_reloads: bool,
}

impl H {
    fn new() -> Self {
        Self::with(ControllerConfig::default(), leader(), Snapshot::default())
    }

    fn with(cfg: ControllerConfig, election: Election, snapshot: Snapshot) -> Self {
        let (c, _) = Controller::new(cfg, "s1", election, snapshot, T0).unwrap();
        H {
            c,
            now: T0,
            store: HashMap::new(),
            hold: false,
            held: Vec::new(),
            next_session: 0,
            ticks: 0,
            seq: HashMap::new(),
            runs: HashMap::new(),
            in_sync: HashMap::new(),
            roles: HashMap::new(),
            seqs: HashMap::new(),
            lagging: HashMap::new(),
            failing: None,
            assigned: Vec::new(),
            placed: Vec::new(),
            versions: HashMap::new(),
            reloads: Vec::new(),
            ignore_reloads: false,
        }
    }

    /// Step, answer the slot writes the way a store would (unless holding them), and apply
    /// the orders to the agents' copies. Returns every command, in order.
    fn step(&mut self, input: Input) -> Vec<Command> {
        let mut all = Vec::new();
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let out = self.c.step(input, self.now);
            for cmd in &out {
                match cmd {
                    Command::Persist(
                        w @ Write::Slot {
                            id,
                            expected,
                            task,
                            record,
                        },
                    ) => {
                        if self.hold {
                            self.held.push(w.clone());
                            continue;
                        }
                        let stored = self.store.get(task).copied().unwrap_or(FencingToken::NONE);
                        let outcome = if stored == *expected {
                            self.store.insert(task.clone(), record.epoch);
                            WriteOutcome::Applied
                        } else {
                            WriteOutcome::Conflict {
                                current: None,
                                stored_epoch: stored,
                            }
                        };
                        queue.insert(
                            0,
                            Input::Persisted {
                                write: *id,
                                outcome,
                            },
                        );
                    }
                    Command::Persist(Write::Release { id, .. }) => {
                        queue.insert(
                            0,
                            Input::Persisted {
                                write: *id,
                                outcome: WriteOutcome::Applied,
                            },
                        );
                    }
                    Command::Send { to, order } => self.obey(to, order),
                    _ => {}
                }
            }
            self.c.check_invariants().unwrap();
            all.extend(out);
        }
        all
    }

    fn obey(&mut self, to: &AgentId, order: &Order) {
        let runs = self.runs.entry(to.clone()).or_default();
        match order {
            Order::Assign(a) => {
                self.assigned
                    .push((a.task.clone(), a.epoch, a.command.clone()));
                self.placed.push((to.clone(), a.task.clone(), a.data_epoch));
                self.versions.insert((a.task.clone(), a.epoch), a.version);
                let phase = if self.failing.as_deref() == Some(a.command.as_str()) {
                    CopyPhase::Failed
                } else {
                    CopyPhase::Running
                };
                runs.insert(a.task.clone(), (a.epoch, phase));
                if let Some(r) = &a.replica {
                    self.roles.insert((to.clone(), a.task.clone()), r.clone());
                }
            }
            Order::Replica { task, replica, .. } => {
                self.roles
                    .insert((to.clone(), task.clone()), replica.clone());
            }
            Order::Stop { task, epoch, .. } => {
                if runs.get(task).is_some_and(|(e, _)| e == epoch) {
                    runs.remove(task);
                }
            }
            Order::Reload(r) => {
                if self.ignore_reloads {
                    return;
                }
                let files = r.config.iter().map(|f| f.content.clone()).collect();
                self.reloads
                    .push((r.task.clone(), r.epoch, r.version, files));
                if runs.get(&r.task).is_some_and(|(e, _)| *e == r.epoch) {
                    self.versions.insert((r.task.clone(), r.epoch), r.version);
                }
            }
            Order::Ack { .. } | Order::Rejoin { .. } => {}
        }
    }

    fn join(&mut self, name: &str, generation: u64) -> AgentId {
        let (id, out) = self.open(name, generation);
        assert!(
            out.iter()
                .any(|c| matches!(c, Command::Welcome { agent, .. } if *agent == id)),
            "{out:?}"
        );
        self.runs.entry(id.clone()).or_default();
        id
    }

    /// Open a session of agent `name` (4 cores, 4 GiB, nothing running): its id and the
    /// commands the controller answered with.
    fn open(&mut self, name: &str, generation: u64) -> (AgentId, Vec<Command>) {
        self.next_session += 1;
        let id = AgentId::new(name, generation);
        let out = self.step(Input::SessionOpened {
            session: SessionId(self.next_session),
            agent: id.clone(),
            hello: Hello {
                restore_points: true,
                reload: true,
                config_files: true,
                name: name.into(),
                generation,
                probe_addr: "127.0.0.1:9".into(),
                state_addr: String::new(),
                capacity: Resources::new(4000, 4096),
                running: vec![],
                reattach_window: std::time::Duration::ZERO,
            },
        });
        (id, out)
    }

    /// A heartbeat from `id` reporting what it runs.
    fn beat(&mut self, id: &AgentId) -> Vec<Command> {
        let seq = self.seq.entry(id.clone()).or_default();
        *seq += 1;
        let seq = *seq;
        let copies = self.runs.get(id).map_or_else(Vec::new, |r| {
            r.iter()
                .map(|(task, (epoch, phase))| CopyReport {
                    version: self
                        .versions
                        .get(&(task.clone(), *epoch))
                        .copied()
                        .unwrap_or(0),
                    task: task.clone(),
                    epoch: *epoch,
                    phase: Some(*phase),
                    healthy: true,
                    endpoint: String::new(),
                    in_sync: self.in_sync.get(task).cloned().unwrap_or_default(),
                    state_seq: self.seqs.get(task).map_or(0, |s| s.0),
                    // A replica refuses older epochs from the moment it is told a newer one.
                    state_fence: self
                        .roles
                        .get(&(id.clone(), task.clone()))
                        .map_or(0, |r| r.epoch),
                    state_last_epoch: 1,
                    lagging: self.lagging.get(task).cloned().unwrap_or_default(),
                    sealed: self.seqs.get(task).is_some_and(|s| s.1),
                })
                .collect()
        });
        self.step(Input::Heartbeat {
            agent: id.clone(),
            beat: Heartbeat {
                seq,
                signals: None,
                judged: None,
                copies: Copies::Listed(copies),
            },
        })
    }

    /// Let `d` pass in 50 ms ticks, with `beating` sending heartbeats every 500 ms.
    fn run(&mut self, d: Duration, beating: &[&AgentId]) -> Vec<Command> {
        let end = self.now + d;
        let mut all = Vec::new();
        while self.now < end {
            self.now = self.now + Duration::from_millis(50);
            self.ticks += 1;
            if self.ticks.is_multiple_of(10) {
                for a in beating {
                    all.extend(self.beat(a));
                }
            }
            all.extend(self.step(Input::Tick));
        }
        all
    }

    fn submit(&mut self, spec: JobSpec) -> Vec<Command> {
        self.c.check_submit(&spec, self.now).unwrap();
        self.step(Input::Submit {
            spec: Box::new(spec),
            unix_ms: 1_000,
            cause: "submit".into(),
            revert: false,
        })
    }

    fn slot(&self, job: &str, i: u32) -> TaskView {
        self.c
            .slot(&TaskId::new(JobName::new(job), i))
            .unwrap()
            .clone()
    }
}

fn assigns(cmds: &[Command]) -> Vec<(AgentId, TaskId, FencingToken)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send {
                to,
                order: Order::Assign(a),
            } => Some((to.clone(), a.task.clone(), a.epoch)),
            _ => None,
        })
        .collect()
}

fn transitions(cmds: &[Command]) -> Vec<(AgentId, AgentState)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Notice(Notice::Transition { transition, .. }) => {
                Some((transition.agent.clone(), transition.to))
            }
            _ => None,
        })
        .collect()
}

fn probe_rounds(cmds: &[Command]) -> Vec<ProbeRound> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Probe(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn report(round: u64, outcome: ProbeOutcome) -> ProbeReport {
    ProbeReport {
        round,
        direct: vec![(ProbeKind::Tcp, outcome), (ProbeKind::Http, outcome)],
        indirect: vec![],
    }
}

/// Two healthy agents and a singleton running on one of them.
fn two_agents_and_a_singleton() -> (H, AgentId, AgentId) {
    let mut h = H::new();
    let a = h.join("a", 1);
    let b = h.join("b", 1);
    h.run(Duration::from_secs(1), &[&a, &b]);
    h.submit(job("cron", JobKind::Singleton, 1));
    h.run(Duration::from_secs(1), &[&a, &b]);
    let slot = h.slot("cron", 0);
    assert_eq!(slot.state, SlotState::Running, "{slot:?}");
    let on = slot.agent.clone().unwrap();
    let other = if on == a { b } else { a };
    (h, on, other)
}

/// A heartbeat from `id` with signals and the agent's own verdicts.
fn judged_beat(h: &mut H, id: &AgentId, seq: u64, anomalous: SignalSet) -> Vec<Command> {
    h.step(Input::Heartbeat {
        agent: id.clone(),
        beat: Heartbeat {
            seq,
            signals: Some(crate::Signals {
                latency_ms: Some(20.0),
                ..Default::default()
            }),
            judged: Some(anomalous),
            copies: Copies::Listed(vec![]),
        },
    })
}

#[test]
fn agents_are_sent_the_anomaly_settings_and_their_verdicts_count_only_if_they_were() {
    for on_agents in [true, false] {
        let mut cfg = ControllerConfig::default();
        cfg.lifecycle.anomaly.on_agents = on_agents;
        let mut h = H::with(cfg.clone(), leader(), Snapshot::default());
        let (id, out) = h.open("a", 1);
        let sent = out.iter().find_map(|c| match c {
            Command::Welcome { welcome, .. } => Some(welcome.anomaly.clone()),
            _ => None,
        });
        assert_eq!(
            sent,
            Some(on_agents.then(|| cfg.lifecycle.anomaly.clone())),
            "on_agents = {on_agents}"
        );
        judged_beat(&mut h, &id, 1, SignalSet::EMPTY);
        judged_beat(&mut h, &id, 2, SignalSet::EMPTY.with(SignalKind::Latency));
        let held = h.c.fleet().agent(&id).unwrap().anomalous_signals();
        if on_agents {
            assert_eq!(held, vec![SignalKind::Latency]);
        } else {
            // The server judges: two ordinary samples are no anomaly, whatever the agent says.
            assert!(held.is_empty(), "{held:?}");
        }
    }
}

#[test]
fn an_assignment_is_sent_only_after_its_write_is_committed() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(1), &[&a]);
    h.hold = true;
    h.submit(job("cron", JobKind::Singleton, 1));
    let out = h.run(Duration::from_millis(200), &[]);
    assert!(assigns(&out).is_empty(), "sent before persisted: {out:?}");
    let Some(Write::Slot {
        id, task, record, ..
    }) = h.held.pop()
    else {
        panic!("no slot write: {out:?}");
    };
    assert_eq!(record.agent.as_ref(), Some(&a));
    // Nothing new is planned while the round's write is out.
    let out = h.run(Duration::from_secs(2), &[]);
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Persist(Write::Slot { .. })))
    );
    h.hold = false;
    let out = h.step(Input::Persisted {
        write: id,
        outcome: WriteOutcome::Applied,
    });
    assert_eq!(assigns(&out), vec![(a.clone(), task, record.epoch)]);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Reconciled { actions: 1, .. })))
    );
}

#[test]
fn a_lost_write_adopts_the_stores_epoch_and_plans_again() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(1), &[&a]);
    // The store already knows epoch 7 for the slot (a job re-created under an old name).
    h.store
        .insert(TaskId::new(JobName::new("cron"), 0), FencingToken(7));
    let out = h.submit(job("cron", JobKind::Singleton, 1));
    let out = [out, h.run(Duration::from_millis(200), &[&a])].concat();
    assert!(out.iter().any(|c| matches!(c, Command::Notice(Notice::WriteLost { stored, .. }) if *stored == FencingToken(7))));
    let sent = assigns(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert!(sent[0].2 > FencingToken(7), "epochs only grow: {sent:?}");
}

#[test]
fn a_killed_agent_is_declared_at_once_and_its_singleton_moves() {
    let (mut h, on, other) = two_agents_and_a_singleton();
    let before = h.slot("cron", 0).epoch;
    // kill -9: the session resets and the probe port refuses.
    let out = h.step(Input::SessionClosed {
        agent: on.clone(),
        session: h.c.session_of(&on.name).unwrap().1,
    });
    let rounds = probe_rounds(&out);
    assert_eq!(rounds.len(), 1, "{out:?}");
    assert_eq!(rounds[0].agent, on);
    assert_eq!(
        rounds[0].helpers,
        vec![other.clone()],
        "the healthy peer helps"
    );
    let out = h.step(Input::Probes {
        agent: on.clone(),
        report: report(rounds[0].round, ProbeOutcome::Refused),
    });
    assert!(
        transitions(&out).contains(&(on.clone(), AgentState::Failed)),
        "{out:?}"
    );
    // After the kill grace (the shims' time to kill what the dead agent ran).
    let out = [out, h.run(Duration::from_millis(400), &[&other])].concat();
    let sent = assigns(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert_eq!(sent[0].0, other);
    assert!(sent[0].2 > before);
    let record = out.iter().find_map(|c| match c {
        Command::Persist(Write::Recovery(r)) => Some(r.clone()),
        _ => None,
    });
    let record = record.expect("a recovery record");
    assert_eq!(record.from, on);
    assert_eq!(record.cause, Cause::ProcessGone);
    // The replacement runs: the recovery ends.
    let out = h.run(Duration::from_secs(1), &[&other]);
    assert!(out.iter().any(|c| matches!(c,
        Command::Persist(Write::Recovery(r)) if r.outcome == crate::recovery::Outcome::Succeeded)));
}

#[test]
fn a_paused_agent_keeps_its_singleton_until_its_lease_surely_ran_out() {
    let (mut h, on, other) = two_agents_and_a_singleton();
    let last_renewal = h.c.observed().agents[&on].last_renewal.unwrap();
    let lease_done =
        h.c.config()
            .lifecycle
            .fencing
            .lease_surely_expired_at(last_renewal);
    // SIGSTOP: silence on an open session; probes time out.
    let mut moved_at = None;
    let mut failed = false;
    while h.now < lease_done + Duration::from_secs(3) && moved_at.is_none() {
        let out = h.run(Duration::from_millis(50), &[&other]);
        for r in probe_rounds(&out) {
            let o = h.step(Input::Probes {
                agent: r.agent.clone(),
                report: ProbeReport {
                    indirect: vec![ProbeOutcome::TimedOut],
                    ..report(r.round, ProbeOutcome::TimedOut)
                },
            });
            failed |= transitions(&o).contains(&(on.clone(), AgentState::Failed));
            if !assigns(&o).is_empty() {
                moved_at = Some(h.now);
            }
        }
        failed |= transitions(&out).contains(&(on.clone(), AgentState::Failed));
        if !assigns(&out).is_empty() {
            moved_at = Some(h.now);
        }
    }
    assert!(failed, "the silent agent was never declared failed");
    let moved_at = moved_at.expect("the singleton never moved");
    assert!(
        moved_at >= lease_done,
        "moved at {moved_at:?}, before the lease surely ran out at {lease_done:?}"
    );
    assert_eq!(h.slot("cron", 0).agent.as_ref(), Some(&other));
}

#[test]
fn a_partitioned_generation_that_comes_back_is_told_to_rejoin() {
    let (mut h, on, other) = two_agents_and_a_singleton();
    let session = h.c.session_of(&on.name).unwrap().1;
    h.step(Input::SessionClosed {
        agent: on.clone(),
        session,
    });
    let out = h.run(Duration::from_secs(6), &[&other]);
    for r in probe_rounds(&out) {
        h.step(Input::Probes {
            agent: r.agent.clone(),
            report: report(r.round, ProbeOutcome::Unreachable),
        });
    }
    h.run(Duration::from_secs(1), &[&other]);
    assert_eq!(
        h.c.fleet().agent(&on).map(|r| r.state()),
        Some(AgentState::Failed)
    );
    // The partition heals: the old generation reconnects and is refused as stale.
    let out = h.c.step(
        Input::SessionOpened {
            session: SessionId(99),
            agent: on.clone(),
            hello: Hello {
                restore_points: true,
                reload: true,
                config_files: true,
                name: on.name.to_string(),
                generation: on.generation,
                probe_addr: "127.0.0.1:9".into(),
                state_addr: String::new(),
                capacity: Resources::new(4000, 4096),
                running: vec![(TaskId::new(JobName::new("cron"), 0), FencingToken(1))],
                reattach_window: std::time::Duration::ZERO,
            },
        },
        h.now,
    );
    assert!(
        matches!(
            out.as_slice(),
            [Command::Refuse {
                refusal: Refusal::Stale(_),
                ..
            }]
        ),
        "{out:?}"
    );
    // The singleton runs once, on the other agent.
    assert_eq!(h.slot("cron", 0).agent.as_ref(), Some(&other));
}

#[test]
fn an_unacted_assignment_is_sent_again_and_at_once_on_a_new_session() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(1), &[&a]);
    h.submit(job("cron", JobKind::Singleton, 1));
    let first = assigns(&h.run(Duration::from_millis(100), &[]));
    assert_eq!(first.len(), 1);
    // The order was lost with the session; the agent reconnects: sent at once, before its
    // first heartbeat.
    h.runs.get_mut(&a).unwrap().clear();
    let session = h.c.session_of(&a.name).unwrap().1;
    h.step(Input::SessionClosed {
        agent: a.clone(),
        session,
    });
    h.next_session += 1;
    let out = h.step(Input::SessionOpened {
        session: SessionId(h.next_session),
        agent: a.clone(),
        hello: Hello {
            restore_points: true,
            reload: true,
            config_files: true,
            name: "a".into(),
            generation: 1,
            probe_addr: "127.0.0.1:9".into(),
            state_addr: String::new(),
            capacity: Resources::new(4000, 4096),
            running: vec![],
            reattach_window: std::time::Duration::ZERO,
        },
    });
    assert!(
        matches!(out.first(), Some(Command::Welcome { .. })),
        "{out:?}"
    );
    assert!(assigns(&out).contains(&first[0]), "{out:?}");
    // Lost again, on a live session: sent again after a second, same epoch.
    h.runs.get_mut(&a).unwrap().clear();
    let again = assigns(&h.run(Duration::from_millis(1600), &[&a]));
    assert!(again.contains(&first[0]), "{again:?}");
    // Once it reports the copy running, nothing more is sent.
    h.run(Duration::from_millis(600), &[&a]);
    let out = h.run(Duration::from_secs(2), &[&a]);
    assert!(assigns(&out).is_empty(), "{out:?}");
    assert_eq!(h.c.book(&a).unwrap().assigns_in_flight(), 0);
}

#[test]
fn a_fenced_copy_restarts_without_counting_a_failure() {
    let (mut h, on, _other) = two_agents_and_a_singleton();
    let slot = h.slot("cron", 0);
    let out = h.step(Input::TaskReport {
        agent: on.clone(),
        copy: CopyReport {
            version: 0,
            task: TaskId::new(JobName::new("cron"), 0),
            epoch: slot.epoch,
            phase: Some(CopyPhase::Fenced),
            healthy: false,
            endpoint: String::new(),
            in_sync: Vec::new(),
            state_seq: 0,
            state_fence: 0,
            state_last_epoch: 0,
            lagging: Vec::new(),
            sealed: false,
        },
        message: "lease ran out".into(),
    });
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Persist(Write::SlotState {
            state: SlotState::Stopped,
            ..
        })
    )));
    h.runs.get_mut(&on).unwrap().clear();
    let out = h.run(Duration::from_millis(200), &[]);
    let sent = assigns(&out);
    assert_eq!(sent.len(), 1, "started again at once: {out:?}");
    assert!(sent[0].2 > slot.epoch);
    assert_eq!(
        h.slot("cron", 0).failures,
        slot.failures,
        "no failure counted"
    );
}

#[test]
fn a_singleton_that_vanished_from_the_heartbeat_is_taken_as_fenced() {
    let (mut h, on, other) = two_agents_and_a_singleton();
    let epoch = h.slot("cron", 0).epoch;
    h.runs.get_mut(&on).unwrap().clear();
    let out = h.beat(&on);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::AppendEvent(e) if e.message.contains("fenced")))
    );
    let out = h.run(Duration::from_millis(200), &[&on, &other]);
    let sent = assigns(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert!(sent[0].2 > epoch);
}

#[test]
fn an_unchanged_heartbeat_stands_for_the_last_list_of_its_session() {
    let (mut h, on, _) = two_agents_and_a_singleton();
    let unchanged = |h: &mut H, seq: u64, since: u64| {
        h.step(Input::Heartbeat {
            agent: on.clone(),
            beat: Heartbeat {
                seq,
                signals: None,
                judged: None,
                copies: Copies::Unchanged { since },
            },
        })
    };
    let fenced = |out: &[Command]| {
        out.iter()
            .any(|c| matches!(c, Command::AppendEvent(e) if e.message.contains("fenced")))
    };
    // The session's last list had the singleton: "unchanged since" it keeps it running.
    let listed_at = h.seq[&on];
    let out = unchanged(&mut h, 1_000, listed_at);
    assert!(!fenced(&out), "{out:?}");
    assert_eq!(h.slot("cron", 0).state, SlotState::Running);
    // "Unchanged since" a list this controller never read (that heartbeat was dropped) says
    // nothing, even with the singleton gone meanwhile.
    h.runs.get_mut(&on).unwrap().clear();
    let out = unchanged(&mut h, 1_000, listed_at + 1);
    assert!(!fenced(&out), "{out:?}");
    assert_eq!(h.slot("cron", 0).state, SlotState::Running);
    // A new session of the same generation: no list on it yet, so "unchanged" says nothing —
    // in particular not that the singleton vanished.
    h.next_session += 1;
    h.step(Input::SessionOpened {
        session: SessionId(h.next_session),
        agent: on.clone(),
        hello: Hello {
            restore_points: true,
            reload: true,
            config_files: true,
            name: on.name.to_string(),
            generation: on.generation,
            probe_addr: "127.0.0.1:9".into(),
            state_addr: String::new(),
            capacity: Resources::new(4000, 4096),
            running: vec![],
            reattach_window: std::time::Duration::ZERO,
        },
    });
    let out = unchanged(&mut h, 1_001, listed_at);
    assert!(!fenced(&out), "{out:?}");
    assert_eq!(h.slot("cron", 0).state, SlotState::Running);
    // Its first list does.
    h.seq.insert(on.clone(), 1_001);
    let out = h.beat(&on);
    assert!(fenced(&out), "{out:?}");
}

#[test]
fn the_brake_holds_verdicts_until_an_operator_releases_it() {
    let mut cfg = ControllerConfig::default();
    cfg.lifecycle.brake_min_agents = 3;
    let mut h = H::with(cfg, leader(), Snapshot::default());
    let ids: Vec<AgentId> = (0..6).map(|i| h.join(&format!("a{i}"), 1)).collect();
    let all: Vec<&AgentId> = ids.iter().collect();
    h.run(Duration::from_secs(2), &all);
    // Half the fleet goes silent at once (a switch, not six crashes).
    let out = h.run(Duration::from_secs(4), &all[..3]);
    assert!(h.c.brake_engaged(), "{:?}", transitions(&out));
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Alarm(m)) if m.contains("brake engaged")))
    );
    assert!(
        !transitions(&out)
            .iter()
            .any(|(_, s)| *s == AgentState::Failed),
        "{:?}",
        transitions(&out)
    );
    let out = h.step(Input::ReleaseBrake);
    assert!(!h.c.brake_engaged(), "{out:?}");
}

#[test]
fn a_standby_acks_without_a_lease_and_writes_nothing() {
    let follower = Election::Follower { leader: None };
    let mut h = H::with(ControllerConfig::default(), follower, Snapshot::default());
    let a = h.join("a", 3);
    let out = [h.beat(&a), h.run(Duration::from_secs(2), &[&a])].concat();
    let acks: Vec<Duration> = out
        .iter()
        .filter_map(|c| match c {
            Command::Send {
                order: Order::Ack { lease_ttl, .. },
                ..
            } => Some(*lease_ttl),
            _ => None,
        })
        .collect();
    assert!(
        !acks.is_empty() && acks.iter().all(Duration::is_zero),
        "{acks:?}"
    );
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Persist(_) | Command::AppendEvent(_)))
    );
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Load(Load::Refresh)))
    );
    assert!(h.c.writable(h.now).is_err());
}

#[test]
fn a_new_leader_respects_the_old_leases_and_waits_for_agents_it_never_heard() {
    let task = TaskId::new(JobName::new("cron"), 0);
    let gone = AgentId::new("gone", 4);
    let snapshot = Snapshot {
        jobs: vec![job("cron", JobKind::Singleton, 1)],
        slots: vec![(
            task.clone(),
            TaskView {
                home: None,
                epoch: FencingToken(3),
                agent: Some(gone.clone()),
                state: SlotState::Running,
                failures: 0,
                last_failure_at: None,
                replica: None,
                version: 0,
            },
        )],
        releases: vec![],
    };
    let mut h = H::with(ControllerConfig::default(), leader(), snapshot);
    h.store.insert(task.clone(), FencingToken(3));
    let b = h.join("b", 1);
    let deadline = h.c.config().lifecycle.fencing.lease_surely_expired_at(T0);
    let mut moved_at = None;
    while h.now < deadline + Duration::from_secs(2) && moved_at.is_none() {
        let out = h.run(Duration::from_millis(50), &[&b]);
        if assigns(&out)
            .iter()
            .any(|(to, t, _)| *to == b && *t == task)
        {
            moved_at = Some(h.now);
        }
    }
    let moved_at = moved_at.expect("never moved");
    assert!(moved_at >= deadline, "{moved_at:?} < {deadline:?}");
    assert!(h.slot("cron", 0).epoch > FencingToken(3));
}

#[test]
fn ended_generations_are_forgotten_after_the_retention_window() {
    let cfg = ControllerConfig {
        forget_after: Duration::from_secs(5),
        ..ControllerConfig::default()
    };
    let mut h = H::with(cfg, leader(), Snapshot::default());
    let keep = h.join("keep", 1);
    for i in 0..20 {
        let a = h.join(&format!("x{i}"), 1);
        h.beat(&a);
        h.step(Input::Leave { agent: a.clone() });
        let session = h.c.session_of(&a.name).unwrap().1;
        h.step(Input::SessionClosed { agent: a, session });
    }
    assert_eq!(h.c.generations(), 21);
    h.run(Duration::from_secs(4), &[&keep]);
    assert_eq!(h.c.generations(), 21, "kept within the window");
    let out = h.run(Duration::from_secs(2), &[&keep]);
    assert_eq!(h.c.generations(), 1, "{out:?}");
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Forgot { generations: 20 })))
    );
    assert_eq!(h.c.fleet().agents().count(), 1);
    assert_eq!(h.c.observed().agents.len(), 1);
}

#[test]
fn a_generation_named_by_a_slot_is_kept_past_the_window() {
    // A standby does not plan: the slots it refreshed from the store keep naming the
    // generation its own detector took as failed.
    let cfg = ControllerConfig {
        forget_after: Duration::from_secs(2),
        ..ControllerConfig::default()
    };
    let a = AgentId::new("a", 1);
    let snapshot = Snapshot {
        jobs: vec![job("cron", JobKind::Singleton, 1)],
        slots: vec![(
            TaskId::new(JobName::new("cron"), 0),
            TaskView {
                home: None,
                epoch: FencingToken(1),
                agent: Some(a.clone()),
                state: SlotState::Running,
                failures: 0,
                last_failure_at: None,
                replica: None,
                version: 0,
            },
        )],
        releases: vec![],
    };
    let follower = Election::Follower { leader: None };
    let mut h = H::with(cfg, follower, snapshot);
    h.join("a", 1);
    let copy = (FencingToken(1), CopyPhase::Running);
    h.runs
        .get_mut(&a)
        .unwrap()
        .insert(TaskId::new(JobName::new("cron"), 0), copy);
    h.run(Duration::from_secs(1), &[&a]);
    let session = h.c.session_of(&a.name).unwrap().1;
    let out = h.step(Input::SessionClosed {
        agent: a.clone(),
        session,
    });
    for r in probe_rounds(&out) {
        h.step(Input::Probes {
            agent: r.agent,
            report: report(r.round, ProbeOutcome::Refused),
        });
    }
    assert_eq!(
        h.c.fleet().agent(&a).map(|r| r.state()),
        Some(AgentState::Failed)
    );
    h.run(Duration::from_secs(10), &[]);
    assert!(h.c.book(&a).is_some(), "forgotten while a slot names it");
}

#[test]
fn the_heartbeat_path_looks_only_at_the_agents_own_slots() {
    let mut h = H::new();
    let a = h.join("a", 1);
    let b = h.join("b", 1);
    h.run(Duration::from_secs(1), &[&a, &b]);
    h.submit(job("web", JobKind::Service, 8));
    h.run(Duration::from_secs(1), &[&a, &b]);
    let on_a = h.c.book(&a).unwrap().slots().count();
    let on_b = h.c.book(&b).unwrap().slots().count();
    assert_eq!(on_a + on_b, 8);
    assert!(on_a > 0 && on_b > 0, "spread: {on_a} + {on_b}");
    for t in h.c.book(&a).unwrap().slots() {
        assert_eq!(h.c.slot(t).unwrap().agent.as_ref(), Some(&a));
    }
}

fn stateful(name: &str, standbys: u8) -> JobSpec {
    JobSpec {
        state: Some(crate::state::StateSpec {
            standbys,
            ..crate::state::StateSpec::default()
        }),
        ..job(name, JobKind::Singleton, 1)
    }
}

/// Job `db` with two standbys writing at `quorum`, on agents `a`, `b`, `c`; every standby in
/// the in-sync set.
fn quorum_job() -> (H, Vec<AgentId>, [AgentId; 3]) {
    let mut h = H::new();
    let ids: Vec<AgentId> = ["a", "b", "c"].iter().map(|n| h.join(n, 1)).collect();
    let refs: Vec<&AgentId> = ids.iter().collect();
    h.run(Duration::from_secs(1), &refs);
    let mut spec = stateful("db", 2);
    spec.state = Some(crate::state::StateSpec {
        standbys: 2,
        ack: Some(crate::state::AckLevel::Quorum),
        mode: crate::state::StateMode::Hot,
    });
    h.submit(spec);
    h.run(Duration::from_secs(1), &refs);
    let agents = [0, 1, 2].map(|i| h.slot("db", i).agent.unwrap());
    h.in_sync.insert(
        db(0),
        vec![agents[1].name.to_string(), agents[2].name.to_string()],
    );
    h.run(Duration::from_secs(1), &refs);
    assert!(h.slot("db", 1).replica.unwrap().in_sync);
    assert!(h.slot("db", 2).replica.unwrap().in_sync);
    (h, ids, agents)
}

/// Agents `a`, `b`, `c` (and `d` with `four`) and job `db` with `standbys` standbys, placed.
fn replicated(standbys: u8, four: bool) -> (H, Vec<AgentId>) {
    let mut h = H::new();
    let mut ids: Vec<AgentId> = ["a", "b", "c"].iter().map(|n| h.join(n, 1)).collect();
    if four {
        ids.push(h.join("d", 1));
    }
    let refs: Vec<&AgentId> = ids.iter().collect();
    h.run(Duration::from_secs(1), &refs);
    h.submit(stateful("db", standbys));
    h.run(Duration::from_secs(1), &refs);
    (h, ids)
}

/// Slot `i` of job `db`.
fn db(i: u32) -> TaskId {
    TaskId::new(JobName::new("db"), i)
}

/// The primary of `db` reports its standby in slot 1 caught up; a second passes. Returns the
/// agents of the primary and of that standby.
fn standby_in_sync(h: &mut H, ids: &[AgentId]) -> (AgentId, AgentId) {
    let (pa, sa) = (
        h.slot("db", 0).agent.unwrap(),
        h.slot("db", 1).agent.unwrap(),
    );
    h.in_sync.insert(db(0), vec![sa.name.to_string()]);
    let refs: Vec<&AgentId> = ids.iter().collect();
    h.run(Duration::from_secs(1), &refs);
    (pa, sa)
}

fn kill(h: &mut H, agent: &AgentId) -> Vec<Command> {
    let out = h.step(Input::SessionClosed {
        agent: agent.clone(),
        session: h.c.session_of(&agent.name).unwrap().1,
    });
    let rounds = probe_rounds(&out);
    let out2 = h.step(Input::Probes {
        agent: agent.clone(),
        report: report(rounds[0].round, ProbeOutcome::Refused),
    });
    [out, out2].concat()
}

#[test]
fn replicas_are_placed_apart_and_a_caught_up_standby_joins_the_in_sync_set() {
    let (mut h, ids) = replicated(1, false);
    let (p, s) = (h.slot("db", 0), h.slot("db", 1));
    assert_eq!(
        (p.state, s.state),
        (SlotState::Running, SlotState::Running),
        "{p:?} {s:?}"
    );
    assert_ne!(p.agent, s.agent, "replicas on distinct agents");
    let pr = p.replica.unwrap();
    assert!(pr.primary && pr.epoch == 1, "{pr:?}");
    let sr = s.replica.unwrap();
    assert!(!sr.primary && !sr.in_sync, "{sr:?}");
    // The standby is told where its primary is; the primary, its standbys.
    let (pa, sa) = (p.agent.unwrap(), s.agent.unwrap());
    let task = db;
    let told = h.roles[&(pa.clone(), task(0))].clone();
    assert!(
        told.primary && told.standbys == vec![sa.name.to_string()],
        "{told:?}"
    );
    assert!(!h.roles[&(sa.clone(), task(1))].primary);
    // The primary reports the standby caught up: the store's set gets it, then the primary.
    h.in_sync.insert(task(0), vec![sa.name.to_string()]);
    let refs: Vec<&AgentId> = ids.iter().collect();
    h.run(Duration::from_secs(1), &refs);
    assert!(h.slot("db", 1).replica.unwrap().in_sync);
    assert_eq!(h.roles[&(pa, task(0))].in_sync, vec![sa.name.to_string()]);
    // Someone reporting for a slot that is not the primary changes nothing.
    h.in_sync.insert(task(1), vec!["c".into()]);
    h.run(Duration::from_secs(1), &refs);
    assert!(!h.slot("db", 0).replica.unwrap().in_sync);
}

#[test]
fn a_lost_primary_is_replaced_by_promoting_its_in_sync_standby() {
    let (mut h, ids) = replicated(1, false);
    let task = db;
    let (pa, sa) = standby_in_sync(&mut h, &ids);
    let third = ids.iter().find(|a| **a != pa && **a != sa).unwrap().clone();
    let mut out = kill(&mut h, &pa);
    out.extend(h.run(Duration::from_millis(600), &[&sa, &third]));
    // Promoted at the next epoch, persisted before the agent hears of it; a clean promotion.
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Alarm(_)))),
        "{out:?}"
    );
    let s = h.slot("db", 1).replica.unwrap();
    assert!(s.primary && s.epoch == 2, "{s:?}");
    let persisted = out.iter().position(|c| {
        matches!(c,
        Command::Persist(Write::Slot { task: t, record, .. })
            if *t == task(1) && record.replica.is_some_and(|r| r.primary))
    });
    let told = out.iter().position(|c| {
        matches!(c,
        Command::Send { to, order: Order::Replica { task: t, replica, .. } }
            if *to == sa && *t == task(1) && replica.primary && replica.epoch == 2)
    });
    assert!(
        persisted.is_some() && told.is_some() && persisted < told,
        "{out:?}"
    );
    // The old primary's slot comes back as a standby of the new one, on the third agent.
    let old = h.slot("db", 0);
    assert_eq!(old.agent.as_ref(), Some(&third));
    let r = old.replica.unwrap();
    assert!(!r.primary && !r.in_sync && r.epoch == 2, "{r:?}");
    let standby_told = h.roles[&(third, task(0))].clone();
    assert!(
        !standby_told.primary && standby_told.epoch == 2,
        "{standby_told:?}"
    );
}

#[test]
fn no_standby_outside_the_in_sync_set_is_promoted_while_an_in_sync_one_may_come_back() {
    let (mut h, ids) = replicated(2, false);
    let task = db;
    let agents: Vec<AgentId> = (0..3).map(|i| h.slot("db", i).agent.unwrap()).collect();
    // Slot 1 is in sync, slot 2 is not.
    h.in_sync.insert(task(0), vec![agents[1].name.to_string()]);
    let refs: Vec<&AgentId> = ids.iter().collect();
    h.run(Duration::from_secs(1), &refs);
    assert!(h.slot("db", 1).replica.unwrap().in_sync);
    assert!(!h.slot("db", 2).replica.unwrap().in_sync);
    // The in-sync standby's agent goes silent (paused) and is suspected; then the primary's
    // agent dies.
    let state = |h: &H| h.c.fleet().agent(&agents[1]).map(|r| r.state());
    for _ in 0..80 {
        if state(&h) == Some(AgentState::Suspect) {
            break;
        }
        h.run(Duration::from_millis(50), &[&agents[0], &agents[2]]);
    }
    assert_eq!(state(&h), Some(AgentState::Suspect));
    kill(&mut h, &agents[0]);
    h.run(Duration::from_millis(500), &[&agents[2]]);
    assert!(
        !h.slot("db", 2).replica.unwrap().primary,
        "a standby lacking acknowledged writes was promoted while the in-sync one may return"
    );
    // Once the silent one is surely gone (its lease ran out), the other is the best left:
    // an unclean promotion, said out loud.
    let out = h.run(Duration::from_secs(4), &[&agents[2]]);
    let r = h.slot("db", 2).replica.unwrap();
    assert!(r.primary && r.epoch == 2, "{r:?}");
    assert!(
        out.iter().any(|c| matches!(c,
            Command::Notice(Notice::Alarm(m)) if m.contains("not in the in-sync set"))),
        "{out:?}"
    );
}

#[test]
fn a_planned_switchover_seals_the_primary_and_promotes_once_the_standby_holds_everything() {
    let (mut h, ids) = replicated(1, false);
    let task = db;
    let refs: Vec<&AgentId> = ids.iter().collect();
    // Refused while no standby is in sync: there is no one to hand over to.
    assert!(matches!(
        h.c.check_promote(&JobName::new("db"), h.now),
        Err(Refusal::Unavailable(_))
    ));
    assert!(matches!(
        h.c.check_promote(&JobName::new("nope"), h.now),
        Err(Refusal::NotFound(_))
    ));
    let (pa, sa) = standby_in_sync(&mut h, &ids);
    assert_eq!(h.c.check_promote(&JobName::new("db"), h.now), Ok(task(1)));
    h.step(Input::Promote {
        job: JobName::new("db"),
    });
    assert!(
        h.roles[&(pa.clone(), task(0))].sealed,
        "the primary is sealed"
    );
    // The primary sealed at 120; the standby holds 100: nothing yet.
    h.seqs.insert(task(0), (120, true));
    h.seqs.insert(task(1), (100, false));
    h.run(Duration::from_secs(1), &refs);
    assert!(!h.slot("db", 1).replica.unwrap().primary);
    // It caught up: promoted at the next epoch; the old primary is told it is a standby.
    h.seqs.insert(task(1), (120, false));
    h.run(Duration::from_secs(1), &refs);
    let r = h.slot("db", 1).replica.unwrap();
    assert!(r.primary && r.epoch == 2, "{r:?}");
    let old = h.roles[&(pa, task(0))].clone();
    assert!(!old.primary && old.epoch == 2 && !old.sealed, "{old:?}");
    assert!(h.roles[&(sa, task(1))].primary);
    // The old primary's copy stays where it is, now a standby: nothing was restarted.
    assert_eq!(h.slot("db", 0).state, SlotState::Running);
}

#[test]
fn a_switchover_whose_standby_never_catches_up_is_abandoned_and_the_primary_unsealed() {
    let (mut h, ids) = replicated(1, false);
    let task = db;
    let refs: Vec<&AgentId> = ids.iter().collect();
    let (pa, _) = standby_in_sync(&mut h, &ids);
    h.step(Input::Promote {
        job: JobName::new("db"),
    });
    h.seqs.insert(task(0), (120, true));
    h.seqs.insert(task(1), (100, false));
    let out = h.run(SWITCHOVER_TIMEOUT + Duration::from_secs(1), &refs);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Alarm(m)) if m.contains("abandoned"))),
        "{out:?}"
    );
    assert!(
        !h.roles[&(pa, task(0))].sealed,
        "the primary takes writes again"
    );
    assert!(h.slot("db", 0).replica.unwrap().primary);
}

#[test]
fn a_quorum_promotion_fences_the_standbys_then_promotes_the_one_holding_the_most() {
    let (mut h, _, agents) = quorum_job();
    let task = db;
    // Slot 2 holds more than slot 1 (slot 1 reports first: the rule must wait for both).
    h.seqs.insert(task(1), (100, false));
    h.seqs.insert(task(2), (120, false));
    let mut out = kill(&mut h, &agents[0]);
    out.extend(h.run(Duration::from_millis(400), &[&agents[1]]));
    // Both standbys were told the fence epoch, with no primary to follow; nothing promoted
    // while slot 2 has not reported under it.
    for (i, a) in [(1, &agents[1]), (2, &agents[2])] {
        let told = &h.roles[&(a.clone(), task(i))];
        assert!(
            !told.primary && told.epoch == 2 && told.primary_addr.is_empty(),
            "{told:?}"
        );
    }
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::AppendEvent(e) if e.kind == "state.fence")),
        "{out:?}"
    );
    assert!(!h.slot("db", 1).replica.unwrap().primary);
    assert!(!h.slot("db", 2).replica.unwrap().primary);
    // Slot 2 reports: it holds the most, and is promoted at the epoch after the fence, clean.
    let out = h.run(Duration::from_secs(1), &[&agents[1], &agents[2]]);
    let r = h.slot("db", 2).replica.unwrap();
    assert!(r.primary && r.epoch == 3, "{r:?}");
    assert!(!h.slot("db", 1).replica.unwrap().primary);
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Alarm(m)) if m.contains("promoted"))),
        "{out:?}"
    );
    let told = &h.roles[&(agents[1].clone(), task(1))];
    assert!(
        !told.primary && told.epoch == 3 && told.primary_agent == agents[2].name.to_string(),
        "{told:?}"
    );
}

#[test]
fn a_quorum_promotion_waits_for_a_standby_that_may_come_back_then_is_unclean() {
    let (mut h, _, agents) = quorum_job();
    h.seqs.insert(db(1), (100, false));
    h.seqs.insert(db(2), (120, false));
    // Slot 2's agent goes silent and is suspected; then the primary's agent dies.
    let state = |h: &H| h.c.fleet().agent(&agents[2]).map(|r| r.state());
    for _ in 0..80 {
        if state(&h) == Some(AgentState::Suspect) {
            break;
        }
        h.run(Duration::from_millis(50), &[&agents[0], &agents[1]]);
    }
    assert_eq!(state(&h), Some(AgentState::Suspect));
    kill(&mut h, &agents[0]);
    h.run(Duration::from_millis(500), &[&agents[1]]);
    assert!(
        !h.slot("db", 1).replica.unwrap().primary,
        "promoted without a quorum while the silent standby may hold more"
    );
    // Once the silent one is surely gone, the only one left is promoted, and said to be
    // unclean: a majority of the replicas was lost.
    let out = h.run(Duration::from_secs(4), &[&agents[1]]);
    let r = h.slot("db", 1).replica.unwrap();
    assert!(r.primary && r.epoch == 3, "{r:?}");
    assert!(
        out.iter().any(|c| matches!(c,
            Command::Notice(Notice::Alarm(m)) if m.contains("without a quorum"))),
        "{out:?}"
    );
}

#[test]
fn a_lagging_standby_leaves_the_in_sync_set_while_another_stays_and_joins_again() {
    let (mut h, ids) = replicated(2, false);
    let refs: Vec<&AgentId> = ids.iter().collect();
    let agents: Vec<AgentId> = (0..3).map(|i| h.slot("db", i).agent.unwrap()).collect();
    let names: Vec<String> = agents.iter().map(|a| a.name.to_string()).collect();
    h.in_sync
        .insert(db(0), vec![names[1].clone(), names[2].clone()]);
    h.run(Duration::from_secs(1), &refs);
    assert!(h.slot("db", 1).replica.unwrap().in_sync);
    assert!(h.slot("db", 2).replica.unwrap().in_sync);
    // The primary reports slot 2 lagging: it leaves the set in the store, and the primary is
    // told the set without it (only then does it stop waiting).
    h.lagging.insert(db(0), vec![names[2].clone()]);
    let out = h.run(Duration::from_secs(1), &refs);
    assert!(!h.slot("db", 2).replica.unwrap().in_sync);
    assert!(h.slot("db", 1).replica.unwrap().in_sync);
    assert_eq!(
        h.roles[&(agents[0].clone(), db(0))].in_sync,
        vec![names[1].clone()]
    );
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::AppendEvent(e) if e.kind == "state.standby_lagging")),
        "{out:?}"
    );
    // The last in-sync standby is never taken out for lagging: writes would wait anyway.
    h.in_sync.insert(db(0), vec![names[1].clone()]);
    h.lagging.insert(db(0), vec![names[1].clone()]);
    h.run(Duration::from_secs(1), &refs);
    assert!(h.slot("db", 1).replica.unwrap().in_sync);
    // Caught up, slot 2 is reported in sync again and joins.
    h.lagging.remove(&db(0));
    h.in_sync
        .insert(db(0), vec![names[1].clone(), names[2].clone()]);
    h.run(Duration::from_secs(1), &refs);
    assert!(h.slot("db", 2).replica.unwrap().in_sync);
}

// ----- releases and rollouts -----

fn web(cmd: &str, replicas: u32, update: crate::release::UpdateSpec) -> JobSpec {
    JobSpec {
        command: cmd.into(),
        update: Some(update),
        ..job("web", JobKind::Service, replicas)
    }
}

fn fast_update(max_parallel: u32) -> crate::release::UpdateSpec {
    crate::release::UpdateSpec {
        max_parallel,
        min_healthy_time: Duration::from_secs(1),
        healthy_deadline: Duration::from_secs(10),
        progress_deadline: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Four copies of web (version 1, `/bin/v1`) running on two agents.
fn web_running() -> (H, AgentId, AgentId) {
    let mut h = H::new();
    let a = h.join("a", 1);
    let b = h.join("b", 1);
    h.run(Duration::from_secs(2), &[&a, &b]);
    h.submit(web("/bin/v1", 4, fast_update(2)));
    h.run(Duration::from_secs(3), &[&a, &b]);
    for i in 0..4 {
        let s = h.slot("web", i);
        assert_eq!((s.state, s.version), (SlotState::Running, 1), "slot {i}");
    }
    (h, a, b)
}

fn events_of<'a>(cmds: &'a [Command], kind: &str) -> Vec<&'a str> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::AppendEvent(e) if e.kind == kind => Some(e.message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_version_replaces_copies_in_waves_and_succeeds() {
    let (mut h, a, b) = web_running();
    let out = h.submit(web("/bin/v2", 4, fast_update(2)));
    assert!(events_of(&out, "job.submit")[0].contains("version 2"));
    let view = h.c.rollout_view(&JobName::new("web")).unwrap();
    assert_eq!(
        (view.from, view.to, view.phase),
        (1, 2, RolloutPhase::Rolling)
    );
    // Never more than max_parallel copies of version 2 in flight: count copies not running
    // version 2 healthy, or not running at all, at each step.
    let mut all = Vec::new();
    let mut worst_down = 0;
    for _ in 0..300 {
        all.extend(h.run(Duration::from_millis(100), &[&a, &b]));
        let down = (0..4)
            .filter(|&i| h.slot("web", i).state != SlotState::Running)
            .count();
        worst_down = worst_down.max(down);
        if !h.c.rollouts.contains_key(&JobName::new("web")) {
            break;
        }
    }
    assert!(
        worst_down <= 2,
        "at most max_parallel copies down: {worst_down}"
    );
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    for i in 0..4 {
        let s = h.slot("web", i);
        assert_eq!((s.state, s.version), (SlotState::Running, 2), "slot {i}");
    }
    // Every copy was started again with the new command, once.
    let v2: Vec<&TaskId> = h
        .assigned
        .iter()
        .filter(|(_, _, c)| c == "/bin/v2")
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(v2.len(), 4, "{:?}", h.assigned);
    let rel = h.c.releases(&JobName::new("web")).unwrap();
    assert_eq!(rel.rollout.as_ref().unwrap().phase, RolloutPhase::Succeeded);
}

fn with_config(spec: JobSpec, text: &str) -> JobSpec {
    let mut update = spec.update.unwrap_or_default();
    update.reload_signal = Some(crate::release::ReloadSignal::Hup);
    JobSpec {
        config: vec![crate::types::ConfigFile {
            path: "app.conf".into(),
            content: text.into(),
        }],
        update: Some(update),
        ..spec
    }
}

#[test]
fn a_config_only_change_with_a_reload_signal_reloads_copies_in_place() {
    let mut h = H::new();
    let a = h.join("a", 1);
    let b = h.join("b", 1);
    h.run(Duration::from_secs(2), &[&a, &b]);
    h.submit(with_config(web("/bin/v1", 4, fast_update(2)), "level=info"));
    h.run(Duration::from_secs(3), &[&a, &b]);
    let before: Vec<FencingToken> = (0..4).map(|i| h.slot("web", i).epoch).collect();
    // A reload order lost on the way is sent again until the copy reports the version.
    h.ignore_reloads = true;
    h.submit(with_config(
        web("/bin/v1", 4, fast_update(2)),
        "level=debug",
    ));
    let mut all = h.run(Duration::from_secs(3), &[&a, &b]);
    assert!(h.reloads.is_empty());
    assert!(
        events_of(&all, "rollout.succeeded").is_empty(),
        "a copy that never reloaded does not count: {all:?}"
    );
    h.ignore_reloads = false;
    for _ in 0..300 {
        all.extend(h.run(Duration::from_millis(100), &[&a, &b]));
        if !h.c.rollouts.contains_key(&JobName::new("web")) {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    for i in 0..4 {
        let s = h.slot("web", i);
        assert_eq!(
            (s.state, s.epoch, s.version),
            (SlotState::Running, before[i as usize], 2),
            "slot {i} kept its copy and moved to version 2"
        );
        assert!(
            h.reloads.iter().any(|(t, e, v, f)| t.index == i
                && *e == s.epoch
                && *v == 2
                && f == &["level=debug"]),
            "{:?}",
            h.reloads
        );
    }
    assert_eq!(events_of(&all, "task.reload").len(), 4, "{all:?}");
    // No copy was stopped or started again.
    assert!(h.assigned.iter().all(|(_, e, _)| *e == FencingToken(1)));
    // A change of anything else replaces copies as before.
    let out = h.submit(with_config(
        web("/bin/v2", 4, fast_update(2)),
        "level=debug",
    ));
    assert!(events_of(&out, "job.submit")[0].contains("version 3"));
    let mut all = Vec::new();
    for _ in 0..300 {
        all.extend(h.run(Duration::from_millis(100), &[&a, &b]));
        if !h.c.rollouts.contains_key(&JobName::new("web")) {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    assert!(events_of(&all, "task.reload").is_empty());
    assert!((0..4).all(|i| h.slot("web", i).epoch > before[i as usize]));
}

#[test]
fn a_reload_the_agent_could_not_carry_out_is_not_sent_again_and_fails_the_rollout() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(2), &[&a]);
    let update = crate::release::UpdateSpec {
        max_parallel: 1,
        ..fast_update(1)
    };
    h.submit(with_config(web("/bin/v1", 2, update), "level=info"));
    h.run(Duration::from_secs(3), &[&a]);
    h.ignore_reloads = true;
    h.submit(with_config(web("/bin/v1", 2, update), "level=debug"));
    let mut all = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..20 {
        let out = h.run(Duration::from_millis(100), &[&a]);
        sent.extend(out.iter().filter_map(|c| match c {
            Command::Send {
                order: Order::Reload(r),
                ..
            } => Some((r.task.clone(), r.epoch)),
            _ => None,
        }));
        all.extend(out);
    }
    let (task, epoch) = sent.first().cloned().expect("a reload order");
    // The agent says it could not write the files.
    all.extend(h.step(Input::TaskReport {
        agent: a.clone(),
        copy: CopyReport {
            version: 2,
            ..CopyReport::new(
                task.clone(),
                epoch,
                CopyPhase::Running,
                false,
                String::new(),
            )
        },
        message: format!("{RELOAD_FAILED}: create app.conf: read-only file system"),
    }));
    let before = sent.len();
    for _ in 0..100 {
        let out = h.run(Duration::from_millis(100), &[&a]);
        sent.extend(out.iter().filter_map(|c| match c {
            Command::Send {
                order: Order::Reload(r),
                ..
            } if r.task == task && r.epoch == epoch => Some((r.task.clone(), r.epoch)),
            _ => None,
        }));
        all.extend(out);
    }
    assert_eq!(sent.len(), before, "sent again after it failed: {sent:?}");
    assert_eq!(events_of(&all, "task.reload_failed").len(), 1, "{all:?}");
    let failed = events_of(&all, "rollout.failed");
    assert!(
        failed.len() == 1 && failed[0].contains("could not be reloaded"),
        "{all:?}"
    );
    // Reverted: the copy that ran the earlier files was replaced by a new one.
    assert!(h.slot("web", task.index).epoch > epoch);
}

#[test]
fn a_change_of_replicas_alone_replaces_no_copy() {
    let (mut h, a, b) = web_running();
    let out = h.submit(web("/bin/v1", 5, fast_update(2)));
    assert!(events_of(&out, "rollout.start").is_empty());
    h.run(Duration::from_secs(2), &[&a, &b]);
    for i in 0..4 {
        assert_eq!(
            h.slot("web", i).epoch,
            FencingToken(1),
            "slot {i} untouched"
        );
    }
    assert_eq!(h.slot("web", 4).version, 2);
    assert_eq!(h.slot("web", 4).state, SlotState::Running);
}

#[test]
fn a_failing_version_is_reverted_at_once_and_every_copy_runs_the_old_spec() {
    let (mut h, a, b) = web_running();
    h.failing = Some("/bin/bad".into());
    h.submit(web("/bin/bad", 4, fast_update(2)));
    // A second change while it rolls out is refused with a clear reason.
    let busy =
        h.c.check_submit(&web("/bin/v3", 4, fast_update(2)), h.now)
            .unwrap_err();
    assert!(busy.to_string().contains("rolling out version 2"), "{busy}");
    let mut all = Vec::new();
    for _ in 0..200 {
        all.extend(h.run(Duration::from_millis(100), &[&a, &b]));
        if events_of(&all, "rollout.succeeded").len() == 1 {
            break;
        }
    }
    let failed = events_of(&all, "rollout.failed");
    assert_eq!(failed.len(), 1, "{all:?}");
    assert!(failed[0].contains("failed"), "{failed:?}");
    assert_eq!(events_of(&all, "rollout.revert").len(), 1);
    assert!(events_of(&all, "rollout.succeeded")[0].contains("revert"));
    // Only the first wave ever ran the bad version.
    let bad = h
        .assigned
        .iter()
        .filter(|(_, _, c)| c == "/bin/bad")
        .count();
    assert_eq!(bad, 2, "{:?}", h.assigned);
    let rel = h.c.releases(&JobName::new("web")).unwrap();
    let current = rel.current().unwrap();
    assert_eq!(current.version, 3);
    assert_eq!(current.spec.command, "/bin/v1");
    assert!(
        current.cause.starts_with("auto-revert of version 2"),
        "{}",
        current.cause
    );
    for i in 0..4 {
        let s = h.slot("web", i);
        assert_eq!(s.state, SlotState::Running, "slot {i}");
        assert!(
            rel.is_current(s.version),
            "slot {i} runs version {}",
            s.version
        );
    }
    // The copies that never ran the bad version were not touched.
    let restarted: std::collections::BTreeSet<u32> = h
        .assigned
        .iter()
        .filter(|(_, e, _)| *e > FencingToken(1))
        .map(|(t, _, _)| t.index)
        .collect();
    assert_eq!(restarted.len(), 2, "{:?}", h.assigned);
}

#[test]
fn a_version_that_raised_the_data_epoch_is_never_reverted_past() {
    let (mut h, a, b) = web_running();
    h.failing = Some("/bin/bad".into());
    h.submit(JobSpec {
        data_epoch: 1,
        ..web("/bin/bad", 4, fast_update(2))
    });
    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(h.run(Duration::from_millis(100), &[&a, &b]));
        if !events_of(&all, "rollout.failed").is_empty() {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.failed").len(), 1, "{all:?}");
    all.extend(h.run(Duration::from_secs(2), &[&a, &b]));
    // No automatic revert: an alarm says why.
    assert!(events_of(&all, "rollout.revert").is_empty(), "{all:?}");
    assert!(
        all.iter()
            .any(|c| matches!(c, Command::Notice(Notice::Alarm(m))
            if m.contains("not reverted") && m.contains("data epoch 1"))),
        "{all:?}"
    );
    let current =
        h.c.releases(&JobName::new("web"))
            .unwrap()
            .current()
            .unwrap()
            .version;
    assert_eq!(current, 2);
    // Nor by hand, nor by submitting the old spec again; declaring the data readable works.
    let err = h.c.check_revert("web", Some(1), h.now).unwrap_err();
    assert!(err.to_string().contains("reads data epoch 0"), "{err}");
    let err =
        h.c.check_submit(&web("/bin/v1", 4, fast_update(2)), h.now)
            .unwrap_err();
    assert!(err.to_string().contains("declared data epoch 1"), "{err}");
    let fix = JobSpec {
        data_epoch: 1,
        ..web("/bin/v1", 4, fast_update(2))
    };
    assert_eq!(
        h.c.check_submit(&fix, h.now).unwrap(),
        SubmitOutcome::Updated
    );
}

#[test]
fn a_failed_rise_of_the_data_epoch_goes_back_to_its_restore_point_on_the_same_agent() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(2), &[&a]);
    let ledger = |cmd: &str, data_epoch: u32| JobSpec {
        command: cmd.into(),
        data_epoch,
        state: Some(crate::state::StateSpec {
            standbys: 0,
            ..Default::default()
        }),
        update: Some(fast_update(1)),
        ..job("ledger", JobKind::Singleton, 1)
    };
    h.submit(ledger("/bin/v1", 0));
    h.run(Duration::from_secs(3), &[&a]);
    let home = h.slot("ledger", 0).agent.unwrap();
    // An empty agent joins: placement alone would now pick it.
    let b = h.join("b", 1);
    h.run(Duration::from_secs(1), &[&a, &b]);
    h.failing = Some("/bin/bad".into());
    let mut all = h.submit(ledger("/bin/bad", 1));
    for _ in 0..200 {
        all.extend(h.run(Duration::from_millis(100), &[&a, &b]));
        if !events_of(&all, "rollout.failed").is_empty() {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.failed").len(), 1, "{all:?}");
    all.extend(h.run(Duration::from_secs(4), &[&a, &b]));
    // Reverted, not refused: version 2 took a restore point of data epoch 0.
    let rel = h.c.releases(&JobName::new("ledger")).unwrap();
    assert_eq!(rel.get(2).unwrap().restore_point, Some(0));
    assert_eq!(rel.get(1).unwrap().restore_point, None);
    let current = rel.current().unwrap();
    assert_eq!((current.version, current.spec.data_epoch), (3, 0));
    let restore = events_of(&all, "release.restore");
    assert_eq!(restore.len(), 1, "{all:?}");
    assert!(
        restore[0].contains("data epoch 0 (taken before version 2)"),
        "{}",
        restore[0]
    );
    let s = h.slot("ledger", 0);
    assert_eq!((s.state, s.version), (SlotState::Running, 3));
    // Every copy ran where the state is, told the data epoch of its version.
    let epochs: Vec<u32> = h.placed.iter().map(|(_, _, e)| *e).collect();
    assert_eq!(epochs.first(), Some(&0));
    assert_eq!(epochs.last(), Some(&0));
    assert!(epochs.contains(&1), "{:?}", h.placed);
    assert!(
        h.placed.iter().all(|(to, _, _)| *to == home),
        "{:?}",
        h.placed
    );
}

#[test]
fn a_revert_to_a_restore_point_needs_an_agent_that_keeps_them() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(2), &[&a]);
    let ledger = |data_epoch: u32| JobSpec {
        data_epoch,
        state: Some(crate::state::StateSpec {
            standbys: 0,
            ..Default::default()
        }),
        update: Some(fast_update(1)),
        args: vec![data_epoch.to_string()],
        ..job("ledger", JobKind::Singleton, 1)
    };
    h.submit(ledger(0));
    h.run(Duration::from_secs(3), &[&a]);
    h.submit(ledger(1));
    h.run(Duration::from_secs(4), &[&a]);
    assert_eq!(h.slot("ledger", 0).version, 2);
    h.c.check_revert("ledger", Some(1), h.now).unwrap();
    // The same agent, of a release that keeps no restore points.
    h.c.observed.agents.get_mut(&a).unwrap().restore_points = false;
    let err = h.c.check_revert("ledger", Some(1), h.now).unwrap_err();
    assert!(err.to_string().contains("keeps none"), "{err}");
}

#[test]
fn canaries_wait_for_an_operator_and_revert_names_a_version() {
    let (mut h, a, b) = web_running();
    let update = crate::release::UpdateSpec {
        canary: 1,
        ..fast_update(4)
    };
    h.submit(web("/bin/v2", 4, update));
    let mut all = h.run(Duration::from_secs(4), &[&a, &b]);
    assert_eq!(
        events_of(&all, "rollout.awaiting_promotion").len(),
        1,
        "{all:?}"
    );
    let on_v2 = (0..4).filter(|&i| h.slot("web", i).version == 2).count();
    assert_eq!(on_v2, 1, "one canary only");
    // Unknown versions and promotions of nothing are refused with clear errors.
    let err = h.c.check_revert("web", Some(9), h.now).unwrap_err();
    assert!(err.to_string().contains("no version 9"), "{err}");
    assert!(h.c.check_promote_rollout("nope", h.now).is_err());
    h.c.check_promote_rollout("web", h.now).unwrap();
    all.extend(h.step(Input::PromoteRollout {
        job: JobName::new("web"),
    }));
    // The promotion is stored with the rollout: a new leader would not wait for another.
    let stored = |h: &H| {
        h.c.releases(&JobName::new("web"))
            .and_then(|r| r.rollout.clone())
            .unwrap()
    };
    assert!(stored(&h).promoted);
    assert_eq!(stored(&h).ended_unix_ms, None);
    all.extend(h.run(Duration::from_secs(5), &[&a, &b]));
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    assert!(stored(&h).ended_unix_ms.is_some());
    // Back to version 1 by hand: a revert, every copy at once.
    let (v, spec) = h.c.check_revert("web", None, h.now).unwrap();
    assert_eq!((v, spec.command.as_str()), (1, "/bin/v1"));
    h.step(Input::Submit {
        spec: Box::new(spec),
        unix_ms: 2_000,
        cause: format!("revert to {v}"),
        revert: true,
    });
    let out = h.run(Duration::from_secs(3), &[&a, &b]);
    assert!(
        events_of(&out, "rollout.succeeded")[0].contains("revert"),
        "{out:?}"
    );
    let rel = h.c.releases(&JobName::new("web")).unwrap();
    assert_eq!(rel.current().map(|r| (r.version, r.base)), Some((3, 1)));
}

/// Traffic for the judge: every copy of web served 100 requests in the last second; copies
/// on version 2 failed `canary_errors` of them.
fn web_traffic(h: &H, canary_errors: u64) -> Input {
    let samples = (0..4)
        .map(|i| {
            let s = h.slot("web", i);
            let errors = if s.version == 2 { canary_errors } else { 0 };
            crate::judge::TrafficSample {
                task: TaskId::new(JobName::new("web"), i),
                epoch: s.epoch,
                group: crate::judge::Group {
                    requests: 100,
                    errors,
                    latencies_ms: (0..100 - errors).map(|k| 20.0 + (k % 7) as f64).collect(),
                },
            }
        })
        .collect();
    Input::Traffic { samples }
}

fn judged_update() -> crate::release::UpdateSpec {
    crate::release::UpdateSpec {
        canary: 1,
        auto_promote: true,
        analysis: Some(crate::judge::AnalysisSpec {
            interval: Duration::from_secs(2),
            window: Duration::from_secs(4),
            ..Default::default()
        }),
        ..fast_update(4)
    }
}

#[test]
fn the_judge_fails_a_canary_serving_more_errors_and_the_version_before_comes_back() {
    let (mut h, a, b) = web_running();
    h.submit(web("/bin/v2", 4, judged_update()));
    let mut all = Vec::new();
    for _ in 0..20 {
        all.extend(h.run(Duration::from_secs(1), &[&a, &b]));
        all.extend(h.step(web_traffic(&h, 10)));
        if !events_of(&all, "rollout.failed").is_empty() {
            break;
        }
    }
    let failed = events_of(&all, "rollout.failed");
    assert_eq!(failed.len(), 1, "{all:?}");
    assert!(failed[0].contains("statistical judge"), "{failed:?}");
    assert!(failed[0].contains("error rate"), "{failed:?}");
    let judged = events_of(&all, "rollout.judged");
    assert!(
        judged.iter().any(|e| e.contains("judged fail")),
        "{judged:?}"
    );
    all.extend(h.run(Duration::from_secs(5), &[&a, &b]));
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    for i in 0..4 {
        assert_eq!(h.slot("web", i).state, SlotState::Running);
    }
    // Only the canary ever ran version 2.
    assert_eq!(
        h.assigned.iter().filter(|(_, _, c)| c == "/bin/v2").count(),
        1
    );
}

#[test]
fn without_requests_the_judge_holds_past_every_deadline_and_a_good_canary_passes() {
    let (mut h, a, b) = web_running();
    h.submit(web("/bin/v2", 4, judged_update()));
    // No traffic at all for longer than progress_deadline (30 s): hold, neither pass nor fail.
    let mut all = h.run(Duration::from_secs(40), &[&a, &b]);
    assert!(events_of(&all, "rollout.failed").is_empty(), "{all:?}");
    assert!(events_of(&all, "rollout.rolling").is_empty(), "{all:?}");
    let judged = events_of(&all, "rollout.judged");
    assert!(
        !judged.is_empty() && judged.iter().all(|e| e.contains("judged hold")),
        "{judged:?}"
    );
    let view = h.c.rollout_view(&JobName::new("web")).unwrap();
    assert_eq!(view.phase, RolloutPhase::Canary);
    assert!(matches!(
        view.judgement,
        Some(crate::judge::Judgement::Hold(_))
    ));
    // Identical service from the canary: three passes, then the rest rolls.
    for _ in 0..30 {
        all.extend(h.run(Duration::from_secs(1), &[&a, &b]));
        all.extend(h.step(web_traffic(&h, 0)));
        if !events_of(&all, "rollout.succeeded").is_empty() {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    assert!(
        events_of(&all, "rollout.failed").is_empty(),
        "{:?}",
        events_of(&all, "rollout.failed")
    );
    assert!(
        events_of(&all, "rollout.judged")
            .iter()
            .filter(|e| e.contains("judged pass"))
            .count()
            >= 3
    );
}

#[test]
fn a_new_leader_resumes_a_rollout_from_the_stores_records() {
    let (mut h, a, b) = web_running();
    let update = crate::release::UpdateSpec {
        canary: 1,
        ..fast_update(1)
    };
    h.submit(web("/bin/v2", 4, update));
    h.run(Duration::from_secs(4), &[&a, &b]);
    // What the store holds: the slots and the releases, the rollout awaiting promotion.
    let rel = h.c.releases(&JobName::new("web")).unwrap().clone();
    assert_eq!(
        rel.rollout.as_ref().unwrap().phase,
        RolloutPhase::AwaitingPromotion
    );
    let slots: Vec<(TaskId, TaskView)> = (0..4)
        .map(|i| (TaskId::new(JobName::new("web"), i), h.slot("web", i)))
        .collect();
    let snapshot = Snapshot {
        jobs: vec![h.c.desired().get(&JobName::new("web")).unwrap().clone()],
        slots,
        releases: vec![rel],
    };
    let (c2, _) =
        Controller::new(ControllerConfig::default(), "s2", leader(), snapshot, h.now).unwrap();
    let view = c2.rollout_view(&JobName::new("web")).unwrap();
    assert_eq!(view.phase, RolloutPhase::AwaitingPromotion);
    assert_eq!(
        (view.updated, view.copies),
        (1, 4),
        "the canary stays; nothing repeated"
    );
    assert!(c2.check_promote_rollout("web", h.now).is_ok());
}

#[test]
fn a_rollout_never_stops_a_singleton_whose_lost_agent_may_still_run_it() {
    let (mut h, on, other) = two_agents_and_a_singleton();
    let last_renewal = h.c.observed().agents[&on].last_renewal.unwrap();
    let lease_done =
        h.c.config()
            .lifecycle
            .fencing
            .lease_surely_expired_at(last_renewal);
    let mut moved_at = None;
    let mut submitted = false;
    while h.now < lease_done + Duration::from_secs(3) && moved_at.is_none() {
        let mut out = h.run(Duration::from_millis(50), &[&other]);
        for r in probe_rounds(&out.clone()) {
            out.extend(h.step(Input::Probes {
                agent: r.agent.clone(),
                report: ProbeReport {
                    indirect: vec![ProbeOutcome::TimedOut],
                    ..report(r.round, ProbeOutcome::TimedOut)
                },
            }));
        }
        if !submitted && transitions(&out).contains(&(on.clone(), AgentState::Failed)) {
            // Declared lost while its lease may still run: a new version arrives now.
            assert!(
                h.now < lease_done,
                "the test needs a verdict before the lease ends"
            );
            submitted = true;
            out.extend(h.submit(JobSpec {
                args: vec!["2000".into()],
                ..job("cron", JobKind::Singleton, 1)
            }));
        }
        if !assigns(&out).is_empty() {
            moved_at = Some(h.now);
        }
    }
    assert!(submitted, "the silent agent was never declared failed");
    let moved_at = moved_at.expect("the singleton never moved");
    assert!(
        moved_at >= lease_done,
        "started elsewhere at {moved_at:?}, before the lost copy's lease surely ran out at \
         {lease_done:?}"
    );
}

#[test]
fn a_copy_being_stopped_that_its_agent_never_listed_is_not_taken_as_stopped() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(1), &[&a]);
    h.submit(job("cron", JobKind::Service, 1));
    // The assignment goes out; the agent has not carried it out yet when a stop follows.
    h.hold = true;
    h.run(Duration::from_millis(200), &[]);
    h.hold = false;
    let held: Vec<Write> = std::mem::take(&mut h.held);
    for w in held {
        if let Write::Slot { id, .. } = w {
            h.step(Input::Persisted {
                write: id,
                outcome: WriteOutcome::Applied,
            });
        }
    }
    let slot = h.slot("cron", 0);
    assert_eq!(slot.state, SlotState::Starting, "{slot:?}");
    // The agent's copies: none yet (the order is still on its way), so a heartbeat lists none.
    h.runs.get_mut(&a).unwrap().clear();
    // The job is deleted: the copy is to be stopped.
    let job = h.c.check_delete("cron", h.now).unwrap();
    h.step(Input::JobDeleted { job });
    h.run(Duration::from_millis(200), &[]);
    assert_eq!(h.slot("cron", 0).state, SlotState::Stopping);
    h.beat(&a);
    assert_eq!(
        h.slot("cron", 0).state,
        SlotState::Stopping,
        "a copy never listed may still start: only its agent's report ends it"
    );
}

#[test]
fn a_job_with_no_room_raises_its_alarm_without_planning_again_at_once() {
    let mut h = H::new();
    let a = h.join("a", 1);
    h.run(Duration::from_secs(1), &[&a]);
    let mut big = job("big", JobKind::Service, 2);
    big.resources = Resources::new(900_000, 16);
    h.submit(big);
    let out = h.run(Duration::from_millis(500), &[&a]);
    assert!(
        out.iter().any(
            |c| matches!(c, Command::Notice(Notice::Alarm(m)) if m.contains("no agent has room"))
        ),
        "{out:?}"
    );
    // The standing alarm is no change: nothing asks for a plan before its time.
    assert!(!h.c.plan_due(), "an alarm alone made planning due again");
    let rounds = |cmds: &[Command]| {
        cmds.iter()
            .filter(|c| matches!(c, Command::Notice(Notice::Reconciled { .. })))
            .count()
    };
    let out = h.run(Duration::from_secs(2), &[&a]);
    assert!(rounds(&out) <= 4, "{} rounds in 2 s", rounds(&out));
}

/// Where each slot of `job` runs: (slot, agent name, state).
fn placed(h: &H, job: &str) -> Vec<(u32, String, SlotState)> {
    h.c.observed()
        .tasks
        .get(&JobName::new(job))
        .map(|slots| {
            slots
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    (
                        u32::try_from(i).unwrap(),
                        t.agent
                            .as_ref()
                            .map_or(String::new(), |a| a.name.to_string()),
                        t.state,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_daemon_runs_one_copy_on_every_agent_and_follows_the_fleet() {
    let mut h = H::new();
    let a = h.join("a", 1);
    let b = h.join("b", 1);
    h.submit(job("node-exporter", JobKind::Daemon, 1));
    h.run(Duration::from_secs(2), &[&a, &b]);
    let mut on: Vec<(String, SlotState)> = placed(&h, "node-exporter")
        .into_iter()
        .map(|(_, agent, state)| (agent, state))
        .collect();
    on.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        on,
        vec![
            ("a".to_string(), SlotState::Running),
            ("b".to_string(), SlotState::Running)
        ]
    );
    // An agent that joins gets a copy; the others are not touched.
    let c = h.join("c", 1);
    h.run(Duration::from_secs(2), &[&a, &b, &c]);
    let p = placed(&h, "node-exporter");
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().all(|(_, _, s)| *s == SlotState::Running), "{p:?}");
    assert_eq!(
        p.iter()
            .map(|(_, a, _)| a.as_str())
            .collect::<BTreeSet<_>>(),
        ["a", "b", "c"].into_iter().collect()
    );
    assert!(
        h.assigned.iter().all(|(_, e, _)| *e == FencingToken(1)),
        "no copy restarted: {:?}",
        h.assigned
    );
    // An agent that dies takes its copy with it: nothing moves to the others.
    h.step(Input::SessionClosed {
        agent: b.clone(),
        session: h.c.session_of(&b.name).unwrap().1,
    });
    let all = h.run(Duration::from_secs(30), &[&a, &c]);
    assert!(
        all.iter()
            .all(|cmd| !matches!(cmd, Command::Notice(Notice::Alarm(m)) if m.contains("no room"))),
        "{all:?}"
    );
    let p = placed(&h, "node-exporter");
    let running: Vec<&str> = p
        .iter()
        .filter(|(_, _, s)| *s == SlotState::Running)
        .map(|(_, a, _)| a.as_str())
        .collect();
    assert_eq!(running.len(), 2, "{p:?}");
    assert!(!running.contains(&"b"), "{p:?}");
    let per_agent = |h: &H, name: &str| {
        placed(h, "node-exporter")
            .iter()
            .filter(|(_, a, s)| a == name && *s == SlotState::Running)
            .count()
    };
    assert_eq!(per_agent(&h, "a"), 1);
    assert_eq!(per_agent(&h, "c"), 1);
    // It comes back (a new generation): it gets a copy again, still one per agent.
    let b2 = h.join("b", 2);
    h.run(Duration::from_secs(3), &[&a, &b2, &c]);
    for name in ["a", "b", "c"] {
        assert_eq!(
            per_agent(&h, name),
            1,
            "{name}: {:?}",
            placed(&h, "node-exporter")
        );
    }
    let jobs = h.c.desired();
    assert_eq!(h.c.wanted_copies(&jobs[&JobName::new("node-exporter")]), 3);
}

#[test]
fn a_daemon_rolls_out_host_by_host_and_a_failing_version_comes_back_everywhere() {
    let mut h = H::new();
    let agents: Vec<AgentId> = (0..5).map(|i| h.join(&format!("h{i}"), 1)).collect();
    let refs: Vec<&AgentId> = agents.iter().collect();
    let daemon = |cmd: &str| JobSpec {
        command: cmd.into(),
        update: Some(crate::release::UpdateSpec {
            canary: 1,
            auto_promote: true,
            ..fast_update(2)
        }),
        ..job("collector", JobKind::Daemon, 1)
    };
    h.submit(daemon("/bin/v1"));
    h.run(Duration::from_secs(2), &refs);
    assert_eq!(placed(&h, "collector").len(), 5);
    // A good version: every host in waves, one copy per host throughout.
    h.submit(daemon("/bin/v2"));
    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(h.run(Duration::from_millis(200), &refs));
        let per_host = placed(&h, "collector")
            .iter()
            .filter(|(_, _, s)| matches!(s, SlotState::Running | SlotState::Starting))
            .map(|(_, a, _)| a.clone())
            .collect::<Vec<_>>();
        let distinct: BTreeSet<&String> = per_host.iter().collect();
        assert_eq!(
            distinct.len(),
            per_host.len(),
            "two copies on one host: {per_host:?}"
        );
        if !events_of(&all, "rollout.succeeded").is_empty() {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.succeeded").len(), 1, "{all:?}");
    assert_eq!(
        h.assigned.iter().filter(|(_, _, c)| c == "/bin/v2").count(),
        5
    );
    // A failing one: caught on the canary host, every host back on v2.
    h.failing = Some("/bin/bad".into());
    h.submit(daemon("/bin/bad"));
    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(h.run(Duration::from_millis(200), &refs));
        if events_of(&all, "rollout.succeeded").len() == 1 {
            break;
        }
    }
    assert_eq!(events_of(&all, "rollout.failed").len(), 1, "{all:?}");
    assert!(events_of(&all, "rollout.succeeded")[0].contains("revert"));
    let p = placed(&h, "collector");
    assert_eq!(p.len(), 5);
    let rel = h.c.releases(&JobName::new("collector")).unwrap();
    for (i, _, s) in &p {
        assert_eq!(*s, SlotState::Running);
        let v = h.slot("collector", *i).version;
        assert!(rel.is_current(v) && v != 3, "slot {i} on version {v}");
    }
    assert_eq!(
        h.assigned
            .iter()
            .filter(|(_, _, c)| c == "/bin/bad")
            .count(),
        1,
        "only the canary host ran it"
    );
}
