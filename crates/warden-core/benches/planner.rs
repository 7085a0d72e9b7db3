//! Planning a recovery at fleet scale: 10,000 agents and 100,000 tasks (1,000 services × 90
//! replicas plus 10,000 singletons), one agent Failed. Goal: under 10 ms per plan.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use warden_core::fencing::DeathEvidence;
use warden_core::hash::FxHashMap;
use warden_core::lifecycle::AgentState;
use warden_core::planner::{
    Action, AgentView, Desired, Observed, PlannerConfig, SlotState, TaskView, plan,
};
use warden_core::{AgentId, FencingToken, JobKind, JobName, JobSpec, Resources, Time};

const AGENTS: usize = 10_000;

fn fleet() -> (Desired, Observed) {
    let mut desired: Desired = BTreeMap::new();
    let mut tasks: FxHashMap<JobName, Vec<TaskView>> = FxHashMap::default();
    let ids: Vec<AgentId> = (0..AGENTS)
        .map(|i| AgentId::new(format!("agent-{i:05}"), 1))
        .collect();
    let mut allocated = vec![Resources::default(); AGENTS];
    let mut next_agent = 0usize;
    let res = Resources::new(50, 32);
    let mut add = |name: String, kind: JobKind, replicas: u32| {
        let spec = JobSpec {
            data_epoch: 0,
            name: JobName::new(name),
            kind,
            replicas,
            command: "/usr/bin/worker".into(),
            args: vec![],
            env: BTreeMap::new(),
            resources: res,
            health: None,
            service: None,
            state: None,
            update: None,
            config: vec![],
        };
        let slots = (0..spec.desired_count())
            .map(|_| {
                let a = next_agent % AGENTS;
                next_agent += 1;
                allocated[a] = allocated[a].plus(&res);
                TaskView {
                    home: None,
                    epoch: FencingToken(1),
                    agent: Some(ids[a].clone()),
                    state: SlotState::Running,
                    failures: 0,
                    last_failure_at: None,
                    replica: None,
                    version: 0,
                }
            })
            .collect();
        tasks.insert(spec.name.clone(), slots);
        desired.insert(spec.name.clone(), spec);
    };
    for j in 0..1_000 {
        add(format!("svc-{j:04}"), JobKind::Service, 90);
    }
    for j in 0..10_000 {
        add(format!("single-{j:05}"), JobKind::Singleton, 1);
    }
    let agents = ids
        .iter()
        .zip(allocated)
        .map(|(id, allocated)| {
            (
                id.clone(),
                AgentView {
                    restore_points: true,
                    reload: true,
                    config_files: true,
                    state: AgentState::Healthy,
                    capacity: Resources::new(8_000, 16_384),
                    allocated,
                    cordoned: false,
                    last_renewal: Some(Time::from_millis(1_000)),
                    death: DeathEvidence::None,
                    running: vec![],
                },
            )
        })
        .collect();
    let mut observed = Observed {
        daemon_pins: Default::default(),
        agents,
        tasks,
        brake_engaged: false,
        reschedule_budget: 1_000,
        replica_reports: Default::default(),
    };
    let failed = observed.agents.get_mut(&ids[42]).unwrap();
    failed.state = AgentState::Failed;
    failed.death = DeathEvidence::ProcessGone {
        at: Time::from_millis(1_100),
    };
    (desired, observed)
}

fn bench(c: &mut Criterion) {
    let (desired, observed) = fleet();
    let cfg = PlannerConfig::default();
    let now = Time::from_millis(2_000);
    let actions = plan(&cfg, &desired, &observed, now);
    let moved = actions
        .iter()
        .filter(|a| matches!(a, Action::Reschedule { .. }))
        .count();
    assert_eq!(moved, 10, "the failed agent held 10 tasks");
    eprintln!(
        "fleet: {} agents, {} tasks; one agent failed → {} reschedules",
        observed.agents.len(),
        observed.tasks.values().map(Vec::len).sum::<usize>(),
        moved
    );
    c.bench_function("plan/10k_agents_100k_tasks_one_failed", |b| {
        b.iter(|| black_box(plan(&cfg, black_box(&desired), black_box(&observed), now)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
