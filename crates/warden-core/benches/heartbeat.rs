//! The controller's cost per heartbeat, per tick and per plan at fleet scale
//! (`cargo bench -p warden-core --bench heartbeat`).
//!
//! A controller with `--agents` agents (default 10,000), first with `--small` task slots
//! placed on them (default 100), then with `--large` (default 100,000: ten per agent), every
//! copy running and reported in every heartbeat. It prints the mean cost of one heartbeat step
//! (the agent's copies in it), of one tick, and of one plan, for both: the heartbeat path must
//! cost what the agent's own copies cost, not what the fleet's slots cost — the last line runs
//! the same ten copies per agent on a fleet a tenth the size, for comparison.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warden_core::controller::{
    Command, Controller, ControllerConfig, Copies, CopyPhase, CopyReport, Election, Heartbeat,
    Hello, Input, Order, SessionId, Snapshot, WriteOutcome,
};
use warden_core::{AgentId, FencingToken, JobKind, JobName, JobSpec, Resources, TaskId, Time};

fn service(name: String, replicas: u32) -> JobSpec {
    JobSpec {
        data_epoch: 0,
        name: JobName::new(name),
        kind: JobKind::Service,
        replicas,
        command: "/bin/true".into(),
        args: vec![],
        env: BTreeMap::new(),
        resources: Resources::new(10, 10),
        health: None,
        service: None,
        state: None,
        update: None,
        config: vec![],
    }
}

fn setting(args: &[String], flag: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == flag)
        .and_then(|w| w[1].trim().parse().ok())
        .unwrap_or(default)
}

struct Fleet {
    c: Controller,
    now: Time,
    agents: Vec<AgentId>,
    seq: Vec<u64>,
    /// What each agent runs.
    runs: Vec<Vec<(TaskId, FencingToken)>>,
    index: BTreeMap<AgentId, usize>,
}

impl Fleet {
    fn new(agents: usize) -> Fleet {
        let leader = Election::Leader {
            term: 1,
            since_unix_ms: 0,
            valid_until: None,
        };
        let (c, _) = Controller::new(
            ControllerConfig::default(),
            "bench",
            leader,
            Snapshot::default(),
            Time::ZERO,
        )
        .expect("valid settings");
        let mut f = Fleet {
            c,
            now: Time::from_millis(1),
            agents: Vec::new(),
            seq: vec![0; agents],
            runs: vec![Vec::new(); agents],
            index: BTreeMap::new(),
        };
        for i in 0..agents {
            let id = AgentId::new(format!("agent-{i:05}"), 1);
            f.index.insert(id.clone(), i);
            let hello = Hello {
                restore_points: true,
                reload: true,
                config_files: true,
                name: id.name.to_string(),
                generation: 1,
                probe_addr: "10.0.0.1:7402".into(),
                state_addr: String::new(),
                capacity: Resources::new(4000, 4096),
                running: vec![],
                reattach_window: std::time::Duration::ZERO,
            };
            f.c.step(
                Input::SessionOpened {
                    session: SessionId(i as u64 + 1),
                    agent: id.clone(),
                    hello,
                },
                f.now,
            );
            f.agents.push(id);
        }
        f
    }

    /// Feed commands back: writes applied, assignments run.
    fn absorb(&mut self, cmds: Vec<Command>) {
        let mut queue = cmds;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for cmd in queue {
                match cmd {
                    Command::Persist(
                        warden_core::controller::Write::Slot { id, .. }
                        | warden_core::controller::Write::Release { id, .. },
                    ) => {
                        next.extend(self.c.step(
                            Input::Persisted {
                                write: id,
                                outcome: WriteOutcome::Applied,
                            },
                            self.now,
                        ));
                    }
                    Command::Send {
                        to,
                        order: Order::Assign(a),
                    } => {
                        if let Some(&i) = self.index.get(&to) {
                            self.runs[i].retain(|(t, _)| *t != a.task);
                            self.runs[i].push((a.task.clone(), a.epoch));
                        }
                    }
                    _ => {}
                }
            }
            queue = next;
        }
    }

    fn beat(&mut self, i: usize) -> Duration {
        self.seq[i] += 1;
        let copies = self.runs[i]
            .iter()
            .map(|(task, epoch)| CopyReport {
                version: 0,
                task: task.clone(),
                epoch: *epoch,
                phase: Some(CopyPhase::Running),
                healthy: true,
                endpoint: String::new(),
                in_sync: Vec::new(),
                state_seq: 0,
                state_fence: 0,
                state_last_epoch: 0,
                lagging: Vec::new(),
                sealed: false,
            })
            .collect();
        let input = Input::Heartbeat {
            agent: self.agents[i].clone(),
            beat: Heartbeat {
                seq: self.seq[i],
                signals: None,
                judged: None,
                copies: Copies::Listed(copies),
            },
        };
        let t0 = Instant::now();
        let cmds = self.c.step(input, self.now);
        let took = t0.elapsed();
        self.absorb(cmds);
        took
    }

    /// One round of heartbeats from every agent, then a tick; the time spent in each.
    fn round(&mut self) -> (Duration, Duration) {
        self.now = self.now + Duration::from_millis(500);
        let mut beats = Duration::ZERO;
        for i in 0..self.agents.len() {
            beats += self.beat(i);
        }
        let t0 = Instant::now();
        let cmds = self.c.step(Input::Tick, self.now);
        let tick = t0.elapsed();
        self.absorb(cmds);
        (beats, tick)
    }

    fn place(&mut self, slots: u64) {
        let per_job = 1000u64;
        let mut left = slots;
        let mut j = 0;
        while left > 0 {
            let replicas = left.min(per_job);
            left -= replicas;
            let spec = service(format!("job-{j}"), u32::try_from(replicas).expect("small"));
            j += 1;
            let cmds = self.c.step(
                Input::Submit {
                    spec: Box::new(spec),
                    unix_ms: 0,
                    cause: "submit".into(),
                    revert: false,
                },
                self.now,
            );
            self.absorb(cmds);
            // Plan, persist, assign; then the agents report their copies.
            for _ in 0..3 {
                self.round();
            }
        }
        for _ in 0..5 {
            self.round();
        }
    }
}

fn measure(agents: usize, slots: u64) {
    let mut f = Fleet::new(agents);
    for _ in 0..6 {
        f.round();
    }
    f.place(slots);
    let placed: usize = f.runs.iter().map(Vec::len).sum();
    let rounds = 20;
    let (mut beats, mut ticks) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let (b, t) = f.round();
        beats += b;
        ticks += t;
    }
    // A plan over everything, as the safety net or a change makes one.
    let mut plans = Duration::ZERO;
    let n_plans = 5;
    for _ in 0..n_plans {
        let cmds = f.c.step(
            Input::Submit {
                spec: Box::new(service("nudge".into(), 1)),
                unix_ms: 0,
                cause: "submit".into(),
                revert: false,
            },
            f.now,
        );
        f.absorb(cmds);
        f.now = f.now + Duration::from_millis(50);
        let t0 = Instant::now();
        let cmds = f.c.step(Input::Tick, f.now);
        plans += t0.elapsed();
        f.absorb(cmds);
    }
    let per_beat = beats.as_nanos() as f64 / (rounds * agents) as f64;
    println!(
        "{agents:>7} agents {placed:>7} copies running: heartbeat step {:>7.0} ns ({:.1} copies each)  tick {:>8.0} µs  plan {:>8.1} ms",
        per_beat,
        placed as f64 / agents as f64,
        ticks.as_secs_f64() * 1e6 / f64::from(rounds as u32),
        plans.as_secs_f64() * 1e3 / f64::from(n_plans),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agents = setting(&args, "--agents", 10_000).max(1) as usize;
    let small = setting(&args, "--small", 100);
    let large = setting(&args, "--large", 100_000);
    println!("warden controller cost (one controller step each, no I/O), default settings");
    measure(agents, small);
    measure(agents, large);
    // The same ten copies per agent on a fleet a tenth the size: a heartbeat must cost the same.
    let tenth = (agents / 10).max(1);
    measure(tenth, large / 10);
}
