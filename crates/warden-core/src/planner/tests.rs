//! Planner tests: table-style cases asserting on the actions, and property tests of the
//! invariants (idempotence, at most one live copy of a singleton, tokens only grow).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn ms(v: u64) -> Time {
    Time::from_millis(v)
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

fn agent(state: AgentState) -> AgentView {
    AgentView {
        restore_points: true,
        reload: true,
        config_files: true,
        state,
        capacity: Resources::new(4000, 4096),
        allocated: Resources::default(),
        cordoned: false,
        last_renewal: Some(ms(1_000)),
        death: DeathEvidence::None,
        running: vec![],
    }
}

fn aid(name: &str) -> AgentId {
    AgentId::new(name, 1)
}

fn world(agents: &[(&str, AgentState)], jobs: &[JobSpec]) -> (Desired, Observed) {
    let desired = jobs.iter().map(|j| (j.name.clone(), j.clone())).collect();
    let observed = Observed {
        daemon_pins: Default::default(),
        agents: agents.iter().map(|(n, s)| (aid(n), agent(*s))).collect(),
        tasks: Default::default(),
        brake_engaged: false,
        reschedule_budget: 100,
        replica_reports: Default::default(),
    };
    (desired, observed)
}

fn resources(_: &JobName) -> Resources {
    Resources::new(100, 64)
}

fn cfg() -> PlannerConfig {
    PlannerConfig::default()
}

/// Plan and apply until nothing changes; returns all actions.
fn settle(desired: &Desired, obs: &mut Observed, now: Time) -> Vec<Action> {
    let mut all = vec![];
    for _ in 0..5 {
        let actions = plan(&cfg(), desired, obs, now);
        let before = obs.clone();
        apply(obs, &actions, resources);
        all.extend(actions);
        if *obs == before {
            break;
        }
    }
    all
}

fn mark_running(obs: &mut Observed) {
    for slots in obs.tasks.values_mut() {
        for t in slots.iter_mut() {
            if t.state == SlotState::Starting {
                t.state = SlotState::Running;
            }
        }
    }
}

#[test]
fn new_jobs_start_spread_over_healthy_agents_only() {
    let (desired, obs) = world(
        &[
            ("a", AgentState::Healthy),
            ("b", AgentState::Healthy),
            ("c", AgentState::Degraded),
        ],
        &[
            job("web", JobKind::Service, 2),
            job("cron", JobKind::Singleton, 1),
        ],
    );
    let actions = plan(&cfg(), &desired, &obs, ms(0));
    let starts: Vec<(String, String, u64)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                task, agent, epoch, ..
            } => Some((task.to_string(), agent.name.to_string(), epoch.0)),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        vec![
            ("cron/0".to_string(), "a".to_string(), 1),
            ("web/0".to_string(), "b".to_string(), 1),
            ("web/1".to_string(), "a".to_string(), 1),
        ]
    );
    assert_eq!(actions.len(), 3);
}

#[test]
fn singleton_waits_for_the_fencing_rule_and_service_moves_at_once() {
    let (desired, mut obs) = world(
        &[("a", AgentState::Healthy), ("b", AgentState::Healthy)],
        &[
            job("cron", JobKind::Singleton, 1),
            job("web", JobKind::Service, 1),
        ],
    );
    // Both tasks on a.
    for name in ["cron", "web"] {
        obs.tasks.insert(
            JobName::new(name),
            vec![TaskView {
                home: None,
                epoch: FencingToken(1),
                agent: Some(aid("a")),
                state: SlotState::Running,
                failures: 0,
                last_failure_at: None,
                replica: None,
                version: 0,
            }],
        );
    }
    let a = obs.agents.get_mut(&aid("a")).unwrap();
    a.state = AgentState::Failed;
    a.last_renewal = Some(ms(1_000));
    // Lease surely over at 1000 + 2100 + 250 = 3350.
    let actions = plan(&cfg(), &desired, &obs, ms(2_000));
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        matches!(&actions[0], Action::Reschedule { task, from, to, epoch, .. }
        if task.job.as_str() == "web" && from == &aid("a") && to == &aid("b") && *epoch == FencingToken(2))
    );
    let actions = plan(&cfg(), &desired, &obs, ms(3_350));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Reschedule { task, .. } if task.job.as_str() == "cron"))
    );
    // Confirmed death on a live host allows the singleton after the kill grace only.
    obs.agents.get_mut(&aid("a")).unwrap().death = DeathEvidence::ProcessGone { at: ms(1_100) };
    let cron = |acts: &[Action]| {
        acts.iter()
            .any(|a| matches!(a, Action::Reschedule { task, .. } if task.job.as_str() == "cron"))
    };
    assert!(!cron(&plan(&cfg(), &desired, &obs, ms(1_349))));
    assert!(cron(&plan(&cfg(), &desired, &obs, ms(1_350))));
}

#[test]
fn suspect_agents_keep_their_work() {
    let (desired, mut obs) = world(
        &[("a", AgentState::Suspect), ("b", AgentState::Healthy)],
        &[job("cron", JobKind::Singleton, 1)],
    );
    obs.tasks.insert(
        JobName::new("cron"),
        vec![TaskView {
            home: None,
            epoch: FencingToken(4),
            agent: Some(aid("a")),
            state: SlotState::Running,
            failures: 0,
            last_failure_at: None,
            replica: None,
            version: 0,
        }],
    );
    assert!(plan(&cfg(), &desired, &obs, ms(60_000)).is_empty());
}

#[test]
fn brake_freezes_and_budget_defers_reschedules() {
    let jobs: Vec<JobSpec> = (0..3)
        .map(|i| job(&format!("s{i}"), JobKind::Service, 1))
        .collect();
    let (desired, mut obs) = world(
        &[("a", AgentState::Failed), ("b", AgentState::Healthy)],
        &jobs,
    );
    for j in &jobs {
        obs.tasks.insert(
            j.name.clone(),
            vec![TaskView {
                home: None,
                epoch: FencingToken(1),
                agent: Some(aid("a")),
                state: SlotState::Running,
                failures: 0,
                last_failure_at: None,
                replica: None,
                version: 0,
            }],
        );
    }
    obs.brake_engaged = true;
    assert_eq!(
        plan(&cfg(), &desired, &obs, ms(0)),
        vec![Action::Alarm(PlanAlarm::RescheduleFrozen { tasks: 3 })]
    );
    obs.brake_engaged = false;
    obs.reschedule_budget = 2;
    let actions = plan(&cfg(), &desired, &obs, ms(0));
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Reschedule { .. }))
            .count(),
        2
    );
    assert_eq!(
        actions.last(),
        Some(&Action::Alarm(PlanAlarm::RateLimited { tasks: 1 }))
    );
}

#[test]
fn crash_looping_task_backs_off_exponentially_and_prefers_another_agent() {
    let (desired, mut obs) = world(
        &[("a", AgentState::Healthy), ("b", AgentState::Healthy)],
        &[job("w", JobKind::Service, 1)],
    );
    obs.tasks.insert(
        JobName::new("w"),
        vec![TaskView {
            home: None,
            epoch: FencingToken(3),
            agent: Some(aid("a")),
            state: SlotState::Failed,
            failures: 3,
            last_failure_at: Some(ms(10_000)),
            replica: None,
            version: 0,
        }],
    );
    assert_eq!(cfg().backoff(3), Duration::from_secs(4));
    assert_eq!(cfg().backoff(40), Duration::from_secs(60));
    assert!(plan(&cfg(), &desired, &obs, ms(13_999)).is_empty());
    let actions = plan(&cfg(), &desired, &obs, ms(14_000));
    assert!(
        matches!(&actions[..], [Action::Start { agent, epoch, .. }] if agent == &aid("b") && *epoch == FencingToken(4))
    );
}

#[test]
fn no_capacity_evicts_and_alarms() {
    let (desired, mut obs) = world(
        &[("a", AgentState::Failed), ("b", AgentState::Healthy)],
        &[job("big", JobKind::Service, 1)],
    );
    obs.agents.get_mut(&aid("b")).unwrap().capacity = Resources::new(10, 10);
    obs.tasks.insert(
        JobName::new("big"),
        vec![TaskView {
            home: None,
            epoch: FencingToken(1),
            agent: Some(aid("a")),
            state: SlotState::Running,
            failures: 0,
            last_failure_at: None,
            replica: None,
            version: 0,
        }],
    );
    let actions = plan(&cfg(), &desired, &obs, ms(0));
    assert!(matches!(&actions[0], Action::Evict { epoch, .. } if *epoch == FencingToken(2)));
    assert_eq!(
        actions[1],
        Action::Alarm(PlanAlarm::NoCapacity {
            job: JobName::new("big"),
            tasks: 1
        })
    );
}

#[test]
fn removed_and_scaled_down_jobs_are_stopped_and_stale_copies_killed() {
    let (mut desired, mut obs) = world(
        &[("a", AgentState::Healthy), ("b", AgentState::Healthy)],
        &[
            job("web", JobKind::Service, 3),
            job("old", JobKind::Service, 1),
        ],
    );
    settle(&desired, &mut obs, ms(0));
    mark_running(&mut obs);
    desired.remove(&JobName::new("old"));
    desired.get_mut(&JobName::new("web")).unwrap().replicas = 2;
    // b also reports a copy of web/0 with an old epoch (it came back after a move).
    obs.agents
        .get_mut(&aid("b"))
        .unwrap()
        .running
        .push((TaskId::new(JobName::new("web"), 0), FencingToken::NONE));
    let actions = plan(&cfg(), &desired, &obs, ms(10));
    let stops: Vec<(String, StopReason)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { task, reason, .. } => Some((task.to_string(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        stops,
        vec![
            ("web/2".to_string(), StopReason::ScaledDown),
            ("old/0".to_string(), StopReason::JobRemoved),
            ("web/0".to_string(), StopReason::Superseded),
        ]
    );
    apply(&mut obs, &actions, resources);
    // Stops on live agents wait for confirmation, and are not re-issued meanwhile.
    assert_eq!(
        obs.tasks[&JobName::new("old")][0].state,
        SlotState::Stopping
    );
    assert!(plan(&cfg(), &desired, &obs, ms(20)).is_empty());
}

#[test]
fn quarantined_agent_is_cordoned_once() {
    let (desired, mut obs) = world(&[("a", AgentState::Quarantined)], &[]);
    let actions = plan(&cfg(), &desired, &obs, ms(0));
    assert!(matches!(&actions[..], [Action::Quarantine { agent, .. }] if agent == &aid("a")));
    apply(&mut obs, &actions, resources);
    assert!(plan(&cfg(), &desired, &obs, ms(0)).is_empty());
}

#[test]
fn config_validation_names_the_field() {
    let c = PlannerConfig {
        backoff_max: Duration::from_millis(1),
        ..cfg()
    };
    assert_eq!(c.validate().unwrap_err().field, "backoff_max");
    let c = PlannerConfig {
        fencing: FencingConfig {
            lease_ttl: Duration::ZERO,
            ..FencingConfig::default()
        },
        ..cfg()
    };
    assert_eq!(c.validate().unwrap_err().field, "fencing.lease_ttl");
}

#[test]
fn token_bucket_refills_at_its_rate() {
    let mut b = TokenBucket::new(2.0, 5, ms(0));
    assert_eq!(b.available(ms(0)), 5);
    b.take(5, ms(0));
    assert_eq!(b.available(ms(499)), 0);
    assert_eq!(b.available(ms(1_000)), 2);
    assert_eq!(b.available(ms(100_000)), 5);
}

// ---- property tests -------------------------------------------------------------------------

/// A step of a randomly generated history.
#[derive(Clone, Debug)]
enum Step {
    /// Agent i's process is killed (session reset, port refused).
    Kill(usize),
    /// Agent i is cut off (alive, silent): the server learns nothing more.
    Partition(usize),
    /// The server declares agent i Failed (as the lifecycle would, after suspicion).
    DeclareFailed(usize),
    /// Agent i comes back as a new generation.
    Return(usize),
    /// Advance time by ms.
    Advance(u64),
    /// Remove / re-add the singleton job.
    ToggleJob,
    /// Agents confirm every start and stop they received.
    Confirm,
}

fn step_strategy(agents: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..agents).prop_map(Step::Kill),
        (0..agents).prop_map(Step::Partition),
        (0..agents).prop_map(Step::DeclareFailed),
        (0..agents).prop_map(Step::Return),
        (1u64..3_000).prop_map(Step::Advance),
        Just(Step::ToggleJob),
        Just(Step::Confirm),
    ]
}

/// Ground truth of one agent generation, as the test world knows it.
#[derive(Clone, Debug)]
struct Truth {
    id: AgentId,
    /// Process killed at.
    killed_at: Option<Time>,
    /// Cut off since (its lease is no longer renewed after this).
    cut_at: Option<Time>,
    /// Copies it was told to run: (task, epoch) → started at.
    copies: Vec<(TaskId, FencingToken)>,
}

/// Whether a copy on `t` can still be running at `now`, judged from the truth: a killed
/// process's shim kills the task within the grace; a cut-off agent fences itself when its lease
/// runs out on its own clock — at worst L·(1+ρ) after the last renewal, plus the grace.
fn copy_may_live(t: &Truth, now: Time, fencing: &FencingConfig) -> bool {
    if let Some(k) = t.killed_at
        && now >= k + fencing.kill_grace
    {
        return false;
    }
    if let Some(c) = t.cut_at
        && now >= fencing.lease_surely_expired_at(c)
    {
        return false;
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens, a singleton never has two copies that may both be running, and its
    /// fencing token never goes back.
    #[test]
    fn singleton_never_has_two_live_copies(steps in proptest::collection::vec(step_strategy(3), 1..60)) {
        let spec = job("cron", JobKind::Singleton, 1);
        let mut desired: Desired = [(spec.name.clone(), spec.clone())].into();
        let names = ["a", "b", "c"];
        let mut truth: Vec<Truth> = names.iter().map(|n| Truth { id: aid(n), killed_at: None, cut_at: None, copies: vec![] }).collect();
        let (_, mut obs) = world(&[("a", AgentState::Healthy), ("b", AgentState::Healthy), ("c", AgentState::Healthy)], &[]);
        let mut now = ms(1_000);
        let mut last_token = FencingToken::NONE;
        let fencing = cfg().fencing;
        for step in steps {
            match step {
                Step::Kill(i) => {
                    let t = &mut truth[i];
                    if t.killed_at.is_none() {
                        t.killed_at = Some(now);
                        let v = obs.agents.get_mut(&t.id).unwrap();
                        if !v.state.is_terminal() {
                            v.state = AgentState::Failed;
                            v.death = DeathEvidence::ProcessGone { at: now };
                        }
                    }
                }
                Step::Partition(i) => {
                    let t = &mut truth[i];
                    if t.cut_at.is_none() && t.killed_at.is_none() {
                        t.cut_at = Some(now);
                    }
                }
                Step::DeclareFailed(i) => {
                    // The lifecycle declares Failed only for silent agents.
                    let t = &truth[i];
                    if t.cut_at.is_some() || t.killed_at.is_some() {
                        let v = obs.agents.get_mut(&t.id).unwrap();
                        if !v.state.is_terminal() {
                            v.state = AgentState::Failed;
                        }
                    }
                }
                Step::Return(i) => {
                    // Only an agent whose old generation is over comes back (restart after
                    // kill, or rejoin after being declared Failed).
                    let old = truth[i].clone();
                    let failed = obs.agents[&old.id].state == AgentState::Failed;
                    if old.killed_at.is_some() || failed {
                        let id = AgentId::new(old.id.name.clone(), old.id.generation + 1);
                        let v = obs.agents.get_mut(&old.id).unwrap();
                        // A restarted process means the old one is gone: the lifecycle records
                        // the supersession as a process death.
                        if !v.state.is_terminal() {
                            v.state = AgentState::Failed;
                        }
                        // A cut-off old process lives on until its lease fences it; the new
                        // generation does not restart old work, so the lease rule still binds.
                        let mut fresh = agent(AgentState::Healthy);
                        fresh.last_renewal = Some(now);
                        obs.agents.insert(id.clone(), fresh);
                        // The old generation's copies keep their fate (killed or fencing).
                        truth.push(Truth { id: id.clone(), killed_at: None, cut_at: None, copies: vec![] });
                        let last = truth.len() - 1;
                        truth.swap(i, last);
                    }
                }
                Step::Advance(d) => {
                    now = now + Duration::from_millis(d);
                    for t in &truth {
                        if t.cut_at.is_none() && t.killed_at.is_none()
                            && let Some(v) = obs.agents.get_mut(&t.id)
                            && !v.state.is_terminal()
                        {
                            v.last_renewal = Some(now);
                        }
                    }
                }
                Step::ToggleJob => {
                    if desired.remove(&spec.name).is_none() {
                        desired.insert(spec.name.clone(), spec.clone());
                    }
                }
                Step::Confirm => {
                    for slots in obs.tasks.values_mut() {
                        for t in slots.iter_mut() {
                            let reachable = t.agent.as_ref().and_then(|a| truth.iter().find(|x| &x.id == a))
                                .is_some_and(|x| x.cut_at.is_none() && x.killed_at.is_none());
                            if reachable {
                                match t.state {
                                    SlotState::Starting => t.state = SlotState::Running,
                                    SlotState::Stopping => { t.state = SlotState::Stopped; t.agent = None; }
                                    _ => {}
                                }
                            }
                        }
                    }
                    for x in truth.iter_mut().filter(|x| x.cut_at.is_none() && x.killed_at.is_none()) {
                        let current: Vec<(TaskId, FencingToken)> = x.copies.iter().filter(|(task, e)| {
                            obs.tasks.get(&task.job).and_then(|s| s.get(task.index as usize))
                                .is_some_and(|t| t.epoch == *e && t.agent.as_ref() == Some(&x.id) && t.state != SlotState::Stopped)
                        }).cloned().collect();
                        x.copies = current;
                    }
                }
            }
            let actions = plan(&cfg(), &desired, &obs, now);
            for a in &actions {
                match a {
                    Action::Start { task, epoch, agent, .. } | Action::Reschedule { task, epoch, to: agent, .. } => {
                        prop_assert!(*epoch > last_token, "token went back: {epoch} after {last_token}");
                        last_token = *epoch;
                        // The safety check: no other copy may still be running.
                        for x in &truth {
                            for (t, e) in &x.copies {
                                if t == task && copy_may_live(x, now, &fencing) {
                                    prop_assert!(false, "{task}@{epoch} started on {agent} while {task}@{e} may run on {} at {now}", x.id);
                                }
                            }
                        }
                        let x = truth.iter_mut().find(|x| &x.id == agent).unwrap();
                        x.copies.push((task.clone(), *epoch));
                    }
                    _ => {}
                }
            }
            apply(&mut obs, &actions, resources);
        }
    }

    /// Applying a plan twice changes nothing the second time.
    #[test]
    fn applying_a_plan_twice_equals_applying_it_once(
        states in proptest::collection::vec(0usize..7, 1..6),
        jobs in proptest::collection::vec((any::<bool>(), 1u32..5), 0..6),
        tasks in proptest::collection::vec((0usize..6, 0usize..6, 0usize..6, 0u64..5), 0..20),
        budget in 0u32..10,
        brake in any::<bool>(),
        now in 0u64..10_000,
    ) {
        const STATES: [AgentState; 7] = [AgentState::Joining, AgentState::Healthy, AgentState::Degraded, AgentState::Suspect, AgentState::Failed, AgentState::Quarantined, AgentState::Left];
        const TASK_STATES: [SlotState; 6] = [SlotState::Pending, SlotState::Starting, SlotState::Running, SlotState::Stopping, SlotState::Stopped, SlotState::Failed];
        let names: Vec<String> = (0..states.len()).map(|i| format!("n{i}")).collect();
        let agents: Vec<(&str, AgentState)> = names.iter().zip(&states).map(|(n, s)| (n.as_str(), STATES[*s])).collect();
        let specs: Vec<JobSpec> = jobs.iter().enumerate().map(|(i, (single, r))| {
            if *single { job(&format!("j{i}"), JobKind::Singleton, 1) } else { job(&format!("j{i}"), JobKind::Service, *r) }
        }).collect();
        let (desired, mut obs) = world(&agents, &specs);
        obs.brake_engaged = brake;
        obs.reschedule_budget = budget;
        for (j, a, s, e) in tasks {
            let name = JobName::new(format!("j{j}"));
            let slots = obs.tasks.entry(name).or_default();
            slots.push(TaskView {
                home: None,
                epoch: FencingToken(e),
                agent: if TASK_STATES[s] == SlotState::Pending { None } else { Some(aid(&names[a % names.len()])) },
                state: TASK_STATES[s],
                failures: 1,
                last_failure_at: Some(ms(0)),
                replica: None,
                version: 0,
            });
        }
        let actions = plan(&cfg(), &desired, &obs, ms(now));
        let mut once = obs.clone();
        apply(&mut once, &actions, resources);
        let mut twice = once.clone();
        apply(&mut twice, &actions, resources);
        prop_assert_eq!(&once, &twice);
        // Operation ids are unique within a plan.
        let mut ops: Vec<&OperationId> = actions.iter().filter_map(Action::op).collect();
        let n = ops.len();
        ops.sort();
        ops.dedup();
        prop_assert_eq!(ops.len(), n);
    }
}

#[test]
fn a_single_replica_state_starts_again_where_its_copy_was_stopped() {
    let mut ledger = job("ledger", JobKind::Singleton, 1);
    ledger.state = Some(crate::state::StateSpec {
        standbys: 0,
        ..Default::default()
    });
    let plain = job("plain", JobKind::Singleton, 1);
    let (desired, mut obs) = world(
        &[("a", AgentState::Healthy), ("b", AgentState::Healthy)],
        &[ledger, plain],
    );
    // b is the busier agent: placement alone would pick a.
    obs.agents.get_mut(&aid("b")).unwrap().allocated = Resources::new(2000, 2048);
    let stopped_on_b = TaskView {
        home: Some("b".into()),
        state: SlotState::Stopped,
        epoch: FencingToken(3),
        ..TaskView::pending()
    };
    obs.tasks
        .insert(JobName::new("ledger"), vec![stopped_on_b.clone()]);
    obs.tasks.insert(JobName::new("plain"), vec![stopped_on_b]);
    let actions = plan(&cfg(), &desired, &obs, ms(2_000));
    let started = |job: &str| {
        actions.iter().find_map(|a| match a {
            Action::Start { task, agent, .. } if task.job.as_str() == job => Some(agent.clone()),
            _ => None,
        })
    };
    // The state is on b: the ledger goes back there, though a is freer.
    assert_eq!(started("ledger"), Some(aid("b")));
    // A job without state is placed afresh, on the freer agent.
    assert_eq!(started("plain"), Some(aid("a")));
    // With b gone, the ledger is placed elsewhere rather than not at all.
    obs.agents.remove(&aid("b"));
    let actions = plan(&cfg(), &desired, &obs, ms(2_000));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Start { task, agent, .. } if task.job.as_str() == "ledger" && agent == &aid("a")))
    );
}
