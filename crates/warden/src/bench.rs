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
    /// Score the signal anomaly detectors on labelled series in the Numenta Anomaly
    /// Benchmark's layout (DIR/<category>/<series>.csv plus a window file), with NAB's
    /// scoring: probationary period, scaled-sigmoid windows, first detection per window, one
    /// threshold for the whole corpus, normalised against the null and perfect detectors,
    /// three profiles. Prints each detector's scores, windows hit and false alarms by
    /// category, and its cost (ns per sample, bytes per signal).
    Anomaly {
        /// The series: DIR/<category>/<series>.csv, each `timestamp,value`.
        #[arg(long)]
        data: std::path::PathBuf,
        /// The labelled windows: {"category/series.csv": [["start", "end"], ...], ...}.
        #[arg(long)]
        windows: std::path::PathBuf,
        /// `all`, `tail` (the calibrated detector, alarm level 0.005), `tail-health` (its
        /// health-model defaults), `ewma` (the z-score detector) or `windowed-gaussian`
        /// (NAB's baseline).
        #[arg(long, default_value = "all")]
        detector: String,
        /// Also list every series.
        #[arg(long)]
        per_series: bool,
    },
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
    /// The seeded simulation of a sharded control plane (owner + witness sessions over the
    /// replicas, the leader confirming verdicts): agent crashes, hangs, partitions and broken
    /// paths, replica kills (the leader among them). Prints detection times, false verdicts,
    /// at-most-one violations, re-homing times, store writes and each replica's load.
    /// Deterministic: the same flags give the same figures.
    Shards {
        /// Agents.
        #[arg(long, default_value_t = 100_000)]
        agents: usize,
        /// Replicas (2–8).
        #[arg(long, default_value_t = 5)]
        replicas: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated seconds.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Agents of each fault kind (crash, hang, partition, owner path cut, ack path cut),
        /// at random times after a 15 s warm-up.
        #[arg(long, default_value_t = 200)]
        faults: usize,
        /// Replica kills, `SECONDS:REPLICA` comma-separated (replica 0 leads at the start).
        #[arg(long, default_value = "30:3,45:0")]
        kills: String,
        /// Share of heartbeat packets lost (each loss delays its TCP stream by 200 ms).
        #[arg(long, default_value_t = 0.01)]
        loss: f64,
        /// Messages from agents each replica can handle per second (default: unbounded).
        /// Past it they queue — to see what a given server efficiency sustains.
        #[arg(long)]
        replica_capacity: Option<f64>,
    },
    /// A real server under N simulated agent sessions: heartbeat-to-ack latency, server CPU
    /// and memory.
    Sessions {
        /// Simulated agents. Above the server's default session limit (10,000) the server
        /// is started with a limit that admits them all.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Heartbeat interval of each, milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Warm-up, seconds.
        #[arg(long, default_value_t = 20)]
        warmup: u64,
        /// Measurement window, seconds.
        #[arg(long, default_value_t = 60)]
        measure: u64,
        /// HTTP/2 connections shared by the sessions.
        #[arg(long, default_value_t = 20)]
        connections: usize,
        /// Run the server on a real etcd (one member started by the benchmark, Debian's
        /// `etcd-server`) instead of its embedded store, and count the writes etcd applies
        /// in the measurement window (needs a build with `--features etcd`).
        #[arg(long)]
        etcd: bool,
        /// Task slots to place on the sessions before measuring (service jobs of up to
        /// 1,000 replicas each, the server's default limit); every heartbeat then reports
        /// its agent's copies. 0: none.
        #[arg(long, default_value_t = 0)]
        slots: usize,
        /// Simulated agents report CPU and memory shares that wander as a real host's do
        /// (a different CPU share every heartbeat, memory drifting), instead of values that
        /// never change — which the server's anomaly detectors handle at less cost.
        #[arg(long)]
        varied_signals: bool,
        /// Simulated agents leave their signals to the server's anomaly detectors, as
        /// agents did before they judged them themselves (by default they judge them with
        /// the server's settings and send the verdicts).
        #[arg(long)]
        server_judges: bool,
    },
    /// Replicated task state end to end on this machine: clients write through the state
    /// API's Unix socket to a primary that replicates to standbys over loopback TCP. Reports
    /// writes/s, acknowledgement latency, CPU per 10,000 writes, bytes shipped against the
    /// payload, replication lag, and the time to seed a new standby from a checkpoint.
    State {
        /// Writes in the measurement.
        #[arg(long, default_value_t = 200_000)]
        writes: usize,
        /// Concurrent clients (connections to the socket).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Writes per request: 1 (one PUT each) or an atomic batch of that many puts.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        batch: u64,
        /// Single writes in flight per client on a write pipe (`POST /v1/pipe`); 1: one PUT
        /// request at a time. Not with --batch.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
        pipeline: u64,
        /// Acknowledgement level: local, standby or quorum.
        #[arg(long, default_value = "standby", value_parser = parse_ack)]
        ack: warden_core::state::AckLevel,
        /// Standbys (0 to 2).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
        standbys: u8,
        /// Seed a new standby with this many MiB of state after the measurement (0: skip).
        #[arg(long, default_value_t = 1024)]
        seed_mib: usize,
    },
    /// Failovers of a replicated task state in one process (real disks, loopback TCP, no
    /// control plane): writers write continuously, the primary's streams are cut, the
    /// promotion rule picks a standby, the old primary rejoins as a standby. Reports the
    /// writes acknowledged and lost (the no-lost-ack check), and the time from the start of
    /// the promotion to the first write the new primary acknowledges (detection excluded).
    Failover {
        /// Failovers to inject.
        #[arg(long, default_value_t = 1000)]
        failovers: usize,
        /// Standbys (1 or 2).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        standbys: u8,
        /// Acknowledgement level of the writers: local, standby or quorum.
        #[arg(long, default_value = "standby", value_parser = parse_ack)]
        ack: warden_core::state::AckLevel,
        /// Seed of the schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Failovers of a replicated task state through the whole system: a server and agents
    /// in network namespaces (the chaos harness), `warden workload counter` writing at the
    /// chosen level, and rounds of faults of its primary (kill -9, SIGSTOP, partition, one-way
    /// cut, flapping link) and of its standbys (`state-soak`, see `warden_chaos::scenario::
    /// state_soak`). Prints the chaos report: switchover per fault kind (the fault → the
    /// first write a newer epoch acknowledged), writes acknowledged, and the no-lost-ack
    /// checker's verdict. Seven seconds per fault.
    StateSoak {
        /// Rounds (each: one fault of every kind; 6 faults, 8 with --standbys 2).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Standbys (1 or 2).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        standbys: u8,
        /// Acknowledgement level of the writer: local, standby or quorum.
        #[arg(long, default_value = "standby", value_parser = parse_ack)]
        ack: warden_core::state::AckLevel,
        /// Standbys `hot` (they run the counter) or `warm` (their agents hold the state; the
        /// counter starts on promotion).
        #[arg(long, default_value = "hot", value_parser = parse_mode)]
        mode: warden_core::state::StateMode,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the record and report go.
        #[arg(long, default_value = "chaos-out/state-soak")]
        out: std::path::PathBuf,
        /// `netns` (default) or `loopback`.
        #[arg(long, default_value = "netns")]
        network: String,
    },
    /// The same faults and write load against Warden's replicated state and against Redis
    /// with one replica and three Sentinels (Debian `redis-server`, `redis-sentinel`; tuned
    /// `down-after-milliseconds 1000`, and the default 30 s), side by side in one run: kill -9
    /// and a 4 s SIGSTOP of the primary; switchover (the fault → the first write a new
    /// primary acknowledged) and acknowledged writes lost. Writes wait for one replica
    /// (Warden `ack = "standby"`, Redis `WAIT 1`).
    StateVsRedis {
        /// Faults of each kind for Warden and for tuned Redis.
        #[arg(long, default_value_t = 10)]
        faults: usize,
        /// Faults of each kind for Redis with Sentinel's defaults (each takes over 30 s).
        #[arg(long, default_value_t = 2)]
        default_faults: usize,
        /// Where the chaos run's record and report and Redis's files go.
        #[arg(long, default_value = "chaos-out/state-vs-redis")]
        out: std::path::PathBuf,
    },
    /// A heartbeat storm against a real server: many sessions send heartbeats at `factor`
    /// times the normal rate beside a few well-behaved agents; reports the well-behaved agents'
    /// ack latency and longest ack gap (lease 2 s), whether any left Healthy, the heartbeats
    /// the per-session limit dropped, and the server's memory and CPU.
    Storm {
        /// Well-behaved agents (one heartbeat per 500 ms each).
        #[arg(long, default_value_t = 20)]
        normal: usize,
        /// Storming sessions.
        #[arg(long, default_value_t = 500)]
        storm: usize,
        /// Storm rate, as a multiple of the normal rate (10: 20 heartbeats/s per session).
        #[arg(long, default_value_t = 10)]
        factor: u32,
        /// Storm length, seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Quiet seconds before the storm.
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// HTTP/2 connections the storm sessions share.
        #[arg(long, default_value_t = 10)]
        connections: usize,
        /// Raise the server's heartbeat limit out of reach (for comparison).
        #[arg(long)]
        no_limit: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// False verdicts under CPU stress: N agents with work, CPU burners saturating every
    /// core, for a while; counts Suspect and Failed verdicts (none of the agents is down, so
    /// every Failed is false).
    Stress {
        /// Agents.
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// Seconds under stress.
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// Busy threads per core (with `--noise outside`).
        #[arg(long, default_value_t = 2)]
        per_core: usize,
        /// Where the CPU load comes from: `outside` Warden (burners started by the bench), or
        /// `tasks`: one noisy task per agent, declaring 500 millicores and burning a whole
        /// core (twice its declaration).
        #[arg(long, value_enum, default_value_t = Noise::Outside)]
        noise: Noise,
        /// Busy threads of each noisy task (`--noise tasks`; 1 burns twice its declaration).
        #[arg(long, default_value_t = 1)]
        noise_threads: usize,
        /// Run the agents' tasks in cgroups with their declared limits (`--cgroups
        /// required`; needs root) or unconfined (`--cgroups off`).
        #[arg(long, value_enum, default_value_t = OnOff::Off)]
        isolation: OnOff,
    },
    /// What a task's cgroup costs at start: runs `--count` short tasks (`true`) under real
    /// shims, each with a cgroup and limits (as `warden agent --cgroups required` runs them)
    /// and each without, and reports start latency (start order → task running) and the
    /// whole run (→ exit reported, cgroup removed), p50 and p99. Needs root for the cgroups.
    TaskStart {
        /// Tasks per mode.
        #[arg(long, default_value_t = 200)]
        count: u32,
    },
    /// One agent at idle with two tasks: its CPU share and resident memory. `--loaded`: with
    /// twenty tasks instead (sixteen with an exec health check every second, two stateful
    /// counters writing ten times a second), the footprint to size a DaemonSet's limits by.
    AgentIdle {
        /// Measurement window, seconds.
        #[arg(long, default_value_t = 60)]
        measure: u64,
        /// Twenty tasks with health checks and state instead of two idle ones.
        #[arg(long)]
        loaded: bool,
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
    /// A bad version rolled out over a real cluster of `--copies` copies: abort decision after
    /// the first bad signal, canaries out of traffic, every copy back on the earlier spec
    /// (docs/releases.md).
    Rollout {
        /// Copies of the service.
        #[arg(long, default_value_t = 20)]
        copies: u32,
        /// Agents (real processes).
        #[arg(long, default_value_t = 4)]
        agents: usize,
        /// Repetitions per kind of bad version.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Kinds of bad version.
        #[arg(long, value_delimiter = ',', default_value = "crash,health,late")]
        kind: Vec<crate::bench_rollout::BadKind>,
        /// Instead: a good version rolled out over three servers on etcd, the leader killed
        /// in the middle (needs the `etcd` feature): resumption time, each copy replaced once.
        #[arg(long)]
        leader_kill: bool,
        /// Instead: this many A/A rollouts (versions that differ in nothing that matters) over
        /// a slow, jittery network, counting false aborts.
        #[arg(long)]
        aa: Option<usize>,
        /// With --aa: delay every agent's session by this many ms (and as much jitter).
        #[arg(long, default_value_t = 100)]
        delay_ms: u64,
        /// Roll out over a daemon job (`kind = "daemon"`, one copy on every agent) instead of
        /// a service; `--copies` is ignored (use `--agents 20` for 20 hosts).
        #[arg(long)]
        daemon: bool,
        /// Instead: good changes of a config file alone, rolled out by reloading the copies in
        /// place (`[update] reload_signal`) and by replacing them: time to roll out, copies
        /// whose process changed.
        #[arg(long)]
        config_change: bool,
    },
    /// Failed requests through a real HAProxy while a bad version (crashing 3 s after it
    /// starts) rolls out over 10 copies: Warden's rollout (a canary, checks, automatic
    /// revert) against replacing every copy at once with nothing put back (needs haproxy).
    RolloutTraffic {
        /// Repetitions per strategy (a fresh cluster and HAProxy each).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Requests per second through HAProxy.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Seconds after the submission whose requests are counted.
        #[arg(long, default_value_t = 20)]
        window: u64,
    },
    /// The rollouts' statistical judge on real traffic: a 6-copy service behind a real HAProxy
    /// whose request log the server reads, new versions rolled out with 2 canaries and
    /// `[update.analysis]` at its defaults. `--change errors` (2 % more 500s), `latency`
    /// (+200 ms) or `same` (A/A: every abort is false); `--loss` puts every agent in a network
    /// namespace whose link drops that share of packets (needs root, ip, nft, haproxy).
    RolloutJudge {
        /// What the new version does differently: errors, latency or same.
        #[arg(long, default_value = "errors")]
        change: String,
        /// For `errors`: the share of requests the new version fails.
        #[arg(long, default_value_t = 0.02)]
        error_rate: f64,
        /// For `latency`: ms the new version adds to every answer.
        #[arg(long, default_value_t = 200)]
        delay_ms: u64,
        /// Rollouts (one cluster, one after the other).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Requests per second through HAProxy (a third reaches the canaries).
        #[arg(long, default_value_t = 60)]
        rate: u32,
        /// Packet loss on every agent's link, 0–0.5 (0: loopback, no namespaces).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Traffic steps for the canaries, percent (`--steps 10,50`): reports the share of
        /// answers the canaries gave at each.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<u8>,
        /// Seconds each traffic step lasts.
        #[arg(long, default_value_t = 20)]
        step_time: u64,
    },
    /// Traffic removal with a real HAProxy: failed requests during an agent host crash (kill
    /// -9 or SIGSTOP of the agent and its tasks), HAProxy's own health checks alone (`inter 2s
    /// fall 3`) against Warden's HAProxy adapter, and the time from the crash to the removal.
    Traffic {
        /// Repetitions per fault and mode (a fresh cluster and HAProxy each).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Requests per second through HAProxy.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds after the crash whose requests are counted.
        #[arg(long, default_value_t = 15)]
        window: u64,
    },
    /// What an agent restart costs its work: planned restarts (SIGHUP) of every agent in turn
    /// under HTTP load through a real HAProxy (failed requests, task restarts, singleton
    /// replacements, time away), and the singleton's RTO after kill -9 of its agent with and
    /// without a reattach window (docs/operations.md).
    AgentRestart {
        /// Agents, one service copy each.
        #[arg(long, default_value_t = 5)]
        agents: usize,
        /// Rounds of restarting every agent.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Requests per second through HAProxy.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Kill -9 repetitions per mode (with and without a reattach window).
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// Print the report as JSON.
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
        BenchCommand::Anomaly {
            data,
            windows,
            detector,
            per_series,
        } => crate::bench_anomaly::bench(data, windows, detector, *per_series),
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
        BenchCommand::AgentIdle { measure, loaded } => agent_idle(*measure, *loaded),
        BenchCommand::TaskStart { count } => task_start(*count),
        BenchCommand::Stress {
            agents,
            duration,
            per_core,
            noise,
            noise_threads,
            isolation,
        } => stress(
            *agents,
            *duration,
            *per_core,
            (*noise, *noise_threads),
            *isolation == OnOff::On,
        ),
        BenchCommand::Shards {
            agents,
            replicas,
            seed,
            duration,
            faults,
            kills,
            loss,
            replica_capacity,
        } => shards(
            ShardsArgs {
                agents: *agents,
                replicas: *replicas,
                seed: *seed,
                duration: *duration,
                faults: *faults,
                loss: *loss,
                replica_capacity: *replica_capacity,
            },
            kills,
        ),
        BenchCommand::Sessions {
            sessions,
            interval_ms,
            warmup,
            measure,
            connections,
            etcd,
            slots,
            varied_signals,
            server_judges,
        } => {
            let exe = std::env::current_exe()?;
            let b = crate::bench_sessions::SessionsBench {
                sessions: *sessions,
                interval: std::time::Duration::from_millis(*interval_ms),
                warmup: std::time::Duration::from_secs(*warmup),
                measure: std::time::Duration::from_secs(*measure),
                connections: *connections,
                etcd: *etcd,
                slots: *slots,
                varied_signals: *varied_signals,
                server_judges: *server_judges,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::bench_sessions::run(&exe, &b))
        }
        BenchCommand::State {
            writes,
            clients,
            value_bytes,
            batch,
            pipeline,
            ack,
            standbys,
            seed_mib,
        } => crate::bench_state::run(&crate::bench_state::StateBench {
            batch: usize::try_from(*batch).unwrap_or(1),
            pipeline: usize::try_from(*pipeline).unwrap_or(1),
            writes: *writes,
            clients: (*clients).max(1),
            value_bytes: *value_bytes,
            ack: *ack,
            standbys: *standbys,
            seed_mib: *seed_mib,
        }),
        BenchCommand::Failover {
            failovers,
            standbys,
            ack,
            seed,
        } => crate::bench_state::failovers(*failovers, *standbys, *ack, *seed),
        BenchCommand::StateSoak {
            rounds,
            standbys,
            ack,
            mode,
            seed,
            out,
            network,
        } => {
            let sc = warden_chaos::scenario::Scenario::from_toml(
                &warden_chaos::scenario::state_soak_mode(*rounds, *standbys, *ack, *mode),
            )?;
            crate::chaos::run_scenario(&sc, out, *seed, network).map(drop)
        }
        BenchCommand::StateVsRedis {
            faults,
            default_faults,
            out,
        } => state_vs_redis(*faults, *default_faults, out),
        BenchCommand::Storm {
            normal,
            storm,
            factor,
            duration,
            warmup,
            connections,
            no_limit,
            json,
        } => {
            let exe = std::env::current_exe()?;
            let b = crate::bench_storm::StormBench {
                normal: *normal,
                storm: *storm,
                factor: (*factor).max(1),
                duration: std::time::Duration::from_secs((*duration).max(1)),
                warmup: std::time::Duration::from_secs(*warmup),
                connections: *connections,
                no_limit: *no_limit,
            };
            let report = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::bench_storm::run(&exe, &b))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        BenchCommand::AgentRestart {
            agents,
            rounds,
            rate,
            kills,
            json,
        } => {
            let settings = warden_chaos::restart::Settings {
                agents: (*agents).max(1),
                rounds: (*rounds).max(1),
                rate: (*rate).max(1),
                kills: *kills,
            };
            let exe = std::env::current_exe()?;
            let report = warden_chaos::restart::run(&exe, &settings, |line| eprintln!("  {line}"))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!(
                    "{}",
                    warden_chaos::restart::format_table(&settings, &report)
                );
            }
            Ok(())
        }
        BenchCommand::Rollout {
            copies,
            agents,
            reps,
            kind,
            leader_kill,
            aa,
            delay_ms,
            daemon,
            config_change,
        } => {
            let (copies, agents, reps) = ((*copies).max(1), (*agents).max(1), (*reps).max(1));
            if *config_change {
                return crate::bench_rollout::config_change(copies, agents, reps);
            }
            if let Some(n) = aa {
                let d = std::time::Duration::from_millis(*delay_ms);
                return crate::bench_rollout::aa(copies.min(12), agents, (*n).max(1), d, d);
            }
            if *leader_kill {
                #[cfg(feature = "etcd")]
                return crate::bench_rollout::leader_kill(copies, agents, reps);
                #[cfg(not(feature = "etcd"))]
                anyhow::bail!("--leader-kill needs a build with `--features etcd`");
            }
            crate::bench_rollout::run(copies, agents, reps, kind, *daemon)
        }
        BenchCommand::RolloutJudge {
            change,
            error_rate,
            delay_ms,
            reps,
            rate,
            loss,
            steps,
            step_time,
        } => {
            use warden_chaos::rollout_judge::{Change, Options};
            let change = match change.as_str() {
                "errors" if (0.0..=1.0).contains(error_rate) => Change::Errors(*error_rate),
                "errors" => anyhow::bail!("--error-rate must be between 0 and 1"),
                "latency" => Change::Latency(*delay_ms),
                "same" => Change::Same,
                other => anyhow::bail!("--change {other}: expected errors, latency or same"),
            };
            if !(0.0..=0.5).contains(loss) {
                anyhow::bail!("--loss must be between 0 and 0.5");
            }
            let opts = Options {
                change,
                reps: (*reps).max(1),
                rate: (*rate).max(1),
                loss: *loss,
                steps: steps.clone(),
                step_time: std::time::Duration::from_secs((*step_time).max(1)),
            };
            eprintln!(
                "{} rollouts of a {change:?} version over 6 copies (2 canaries) behind HAProxy at {} req/s{}",
                opts.reps,
                opts.rate,
                if *loss > 0.0 {
                    format!(", {:.1} % packet loss on every agent's link", loss * 100.0)
                } else {
                    String::new()
                }
            );
            let exe = std::env::current_exe()?;
            let samples = warden_chaos::rollout_judge::run(&exe, &opts, |n, s| {
                if s.aborted {
                    eprintln!(
                        "  rollout {n}: aborted {} ms after a canary's first answer ({} canary answers): {}",
                        s.detect_ms.map_or("?".into(), |d| d.to_string()),
                        s.canary_requests,
                        s.reason
                    );
                } else {
                    eprintln!(
                        "  rollout {n}: succeeded ({} canary answers)",
                        s.canary_requests
                    );
                }
                for (step, got) in &s.shares {
                    eprintln!("    traffic step {step} %: the canaries answered {got:.1} %");
                }
            })?;
            let aborted = samples.iter().filter(|s| s.aborted).count();
            let mut detect: Vec<u64> = samples.iter().filter_map(|s| s.detect_ms).collect();
            detect.sort_unstable();
            let pick = |q: f64| {
                detect
                    .get(
                        ((detect.len() as f64 * q).ceil() as usize).clamp(1, detect.len().max(1))
                            - 1,
                    )
                    .copied()
                    .unwrap_or(0)
            };
            println!(
                "rollout-judge {change:?}, loss {:.1} %: {aborted} of {} rollouts aborted ({:.1} %); detection (first canary answer → abort) p50 {} ms, max {} ms",
                loss * 100.0,
                samples.len(),
                100.0 * aborted as f64 / samples.len().max(1) as f64,
                pick(0.5),
                detect.last().copied().unwrap_or(0)
            );
            Ok(())
        }
        BenchCommand::RolloutTraffic { reps, rate, window } => {
            let exe = std::env::current_exe()?;
            let samples = warden_chaos::rollout_traffic::run(
                &exe,
                (*reps).max(1),
                (*rate).max(1),
                std::time::Duration::from_secs((*window).max(1)),
                |s| {
                    eprintln!(
                        "  {:?}: {} of {} requests failed; {} copies ran the bad version",
                        s.strategy, s.failed, s.sent, s.bad_copies
                    );
                },
            )?;
            for strategy in [
                warden_chaos::rollout_traffic::Strategy::Checked,
                warden_chaos::rollout_traffic::Strategy::Plain,
            ] {
                let mine: Vec<_> = samples.iter().filter(|s| s.strategy == strategy).collect();
                let failed: usize = mine.iter().map(|s| s.failed).sum();
                let sent: usize = mine.iter().map(|s| s.sent).sum();
                let bad: usize = mine.iter().map(|s| s.bad_copies).sum();
                println!(
                    "{strategy:?}: {} reps, failed requests {failed} of {sent} ({:.2} %), mean {:.1} per rep; {:.1} copies ran the bad version per rep",
                    mine.len(),
                    100.0 * failed as f64 / sent.max(1) as f64,
                    failed as f64 / mine.len().max(1) as f64,
                    bad as f64 / mine.len().max(1) as f64
                );
            }
            Ok(())
        }
        BenchCommand::Traffic { reps, rate, window } => {
            let settings = warden_chaos::traffic::Settings {
                reps: (*reps).max(1),
                rate: (*rate).max(1),
                window: std::time::Duration::from_secs((*window).max(1)),
            };
            let exe = std::env::current_exe()?;
            eprintln!(
                "{} reps x (kill, pause) x (HAProxy checks, Warden adapter); 3 instances of `warden workload http` on 3 agents; {} req/s",
                settings.reps, settings.rate
            );
            let rows = warden_chaos::traffic::run(&exe, &settings, |s| {
                eprintln!(
                    "  {:?} {:<8?} failed {:>4} of {:>5}   removal {}",
                    s.fault,
                    s.mode,
                    s.failed,
                    s.sent,
                    s.removal_ms.map_or_else(
                        || "not within the window".to_string(),
                        |m| format!("{m:.0} ms")
                    )
                );
            })?;
            print!("{}", warden_chaos::traffic::format_table(&settings, &rows));
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

/// Start a server and one agent running two tasks (twenty when `loaded`); measure the agent's
/// CPU and RSS.
fn agent_idle(measure: u64, loaded: bool) -> Result<()> {
    use std::time::{Duration, Instant};
    use warden_chaos::cluster::{Cluster, cpu_and_rss, wait_until};
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::start(&exe)?;
    cluster.add_agents(1)?;
    for (name, kind) in [("idle-singleton", "singleton"), ("idle-service", "service")] {
        cluster.submit(&format!(
            "name = \"{name}\"\nkind = \"{kind}\"\ncommand = \"{{exe}}\"\nargs = [\"workload\", \"sleep\", \"--every\", \"60\"]\n"
        ))?;
    }
    if loaded {
        for i in 0..16 {
            cluster.submit(&format!(
                "name = \"checked-{i}\"\nkind = \"singleton\"\ncommand = \"{{exe}}\"\nargs = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
                 [health]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\ninterval = \"1s\"\n"
            ))?;
        }
        for i in 0..2 {
            cluster.submit(&format!(
                "name = \"stateful-{i}\"\nkind = \"singleton\"\ncommand = \"{{exe}}\"\nargs = [\"workload\", \"counter\", \"--every-ms\", \"100\"]\n\
                 [state]\nstandbys = 0\n"
            ))?;
        }
    }
    let tasks = if loaded { 20 } else { 2 };
    if !wait_until(Duration::from_secs(60), || {
        cluster.task_procs().len() == tasks
    }) {
        anyhow::bail!(
            "the {tasks} tasks did not start ({} running)",
            cluster.task_procs().len()
        );
    }
    let pid = cluster
        .agent_pid("agent-1")
        .ok_or_else(|| anyhow::anyhow!("no agent"))?;
    std::thread::sleep(Duration::from_secs(5));
    let (c0, _) = cpu_and_rss(pid).ok_or_else(|| anyhow::anyhow!("read /proc"))?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(measure));
    let (c1, rss) = cpu_and_rss(pid).ok_or_else(|| anyhow::anyhow!("read /proc"))?;
    let share = (c1 - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    // The shims (the agent's children, one per task) live in the agent's container too.
    let shims: Vec<u64> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| warden_chaos::cluster::parent_pid(*p) == Some(pid))
        .filter_map(|p| cpu_and_rss(p).map(|(_, r)| r))
        .collect();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let what = if loaded {
        "with 20 tasks (16 exec health checks every 1 s, 2 stateful counters at 10 writes/s)"
    } else {
        "at idle with 2 tasks"
    };
    println!(
        "agent {what}, {measure} s: CPU {:.2}% of a core, RSS {:.1} MiB; its {} shims {:.1} MiB \
         together (the tasks themselves not counted)",
        share * 100.0,
        mib(rss),
        shims.len(),
        mib(shims.iter().sum())
    );
    Ok(())
}

/// `warden bench task-start`.
fn task_start(count: u32) -> Result<()> {
    use warden_agent::cgroup;
    use warden_agent::supervisor::{Confinement, ShimLauncher, Supervisor, SupervisorConfig};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let confined = if nix::unistd::geteuid().is_root() {
        let layout = cgroup::detect()
            .ok_or_else(|| anyhow::anyhow!("no cgroup hierarchy with memory, cpu or pids"))?;
        let parent = format!("warden-bench-{}", std::process::id());
        let cgroups = cgroup::AgentCgroups::setup(
            &layout,
            Some(&parent),
            "bench",
            cgroup::Reservation::default(),
        )?;
        Some((layout, parent, cgroups))
    } else {
        eprintln!("not root: measuring without cgroups only");
        None
    };
    let mut modes: Vec<(&str, Option<Confinement>)> = vec![("without a cgroup", None)];
    if let Some((_, _, cgroups)) = &confined {
        modes.push((
            "with a cgroup",
            Some(Confinement {
                cgroups: cgroups.clone(),
                pids_max: Some(4096),
            }),
        ));
    }
    let result = runtime.block_on(async {
        let mut rows = Vec::new();
        for (name, confine) in modes {
            let launcher = ShimLauncher {
                confine,
                ..ShimLauncher::current_exe()?
            };
            let (sup, mut events) = Supervisor::new(SupervisorConfig::new(launcher))?;
            let (mut start, mut whole) = (Vec::new(), Vec::new());
            for i in 0..count {
                let spec = warden_agent::TaskSpec {
                    task: warden_core::TaskId::new(warden_core::JobName::new("bench"), i),
                    epoch: warden_core::FencingToken(1),
                    command: "true".into(),
                    args: Vec::new(),
                    env: [(
                        "PATH".to_string(),
                        warden_agent::isolation::SAFE_PATH.to_string(),
                    )]
                    .into(),
                    leased: false,
                    log_dir: dir.path().to_path_buf(),
                    health: None,
                    resources: warden_core::Resources::new(100, 32),
                    run_as: None,
                };
                let t0 = tokio::time::Instant::now();
                sup.start(spec)?;
                loop {
                    let ev =
                        tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
                            .await
                            .map_err(|_| anyhow::anyhow!("task {i}: no event within 10 s"))?
                            .ok_or_else(|| anyhow::anyhow!("the supervisor is gone"))?;
                    let ms = (ev.at - t0).as_secs_f64() * 1000.0;
                    match ev.kind {
                        warden_agent::TaskEventKind::Started { .. } => start.push(ms),
                        warden_agent::TaskEventKind::Exited { .. } => {
                            whole.push(ms);
                            break;
                        }
                        warden_agent::TaskEventKind::Failed { reason } => {
                            anyhow::bail!("task {i} failed: {reason}")
                        }
                        _ => {}
                    }
                }
            }
            sup.shutdown(std::time::Duration::from_secs(1)).await;
            rows.push((name, start, whole));
        }
        anyhow::Ok(rows)
    });
    if let Some((layout, parent, cgroups)) = &confined {
        cgroups.teardown();
        cgroup::remove_tree(layout, parent);
    }
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        qos::percentile(v, q).unwrap_or(f64::NAN)
    };
    for (name, mut start, mut whole) in result? {
        println!(
            "{count} tasks {name}: start p50 {:.1} ms p99 {:.1} ms; whole run (start to exit reported) p50 {:.1} ms p99 {:.1} ms",
            pct(&mut start, 0.5),
            pct(&mut start, 0.99),
            pct(&mut whole, 0.5),
            pct(&mut whole, 0.99),
        );
    }
    Ok(())
}

/// `warden bench stress --noise`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Noise {
    /// Burners outside Warden.
    Outside,
    /// A noisy task on every agent.
    Tasks,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `warden_heartbeat_gap_seconds` buckets of the server: `(le, cumulative count)`.
fn gap_buckets(cluster: &warden_chaos::cluster::Cluster) -> Vec<(f64, f64)> {
    let Ok(r) = cluster.client.request("GET", "/metrics", None, b"") else {
        return Vec::new();
    };
    r.body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("warden_heartbeat_gap_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which quantile `q` of the gaps recorded between `before` and
/// `after` lies, and how many gaps there were.
fn gap_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (Option<f64>, f64) {
    let count = |v: &[(f64, f64)], le: f64| {
        v.iter()
            .find(|(l, _)| (*l - le).abs() < 1e-9 || (l.is_infinite() && le.is_infinite()))
            .map_or(0.0, |(_, c)| *c)
    };
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - count(before, *le)))
        .collect();
    let total = deltas.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return (None, 0.0);
    }
    let bound = deltas
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le);
    (bound, total)
}

/// Agents under CPU stress: count verdicts.
fn stress(
    agents: usize,
    duration: u64,
    per_core: usize,
    (noise, noise_threads): (Noise, usize),
    isolation: bool,
) -> Result<()> {
    use std::time::{Duration, Instant};
    use warden_chaos::cluster::Cluster;
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster::start(&exe)?;
    if isolation {
        cluster.confine_tasks();
    }
    cluster.add_agents(agents)?;
    cluster.submit("name = \"stress-singleton\"\nkind = \"singleton\"\ncommand = \"{exe}\"\nargs = [\"workload\", \"sleep\", \"--every\", \"10\"]\n")?;
    cluster.submit(&format!(
        "name = \"stress-service\"\nkind = \"service\"\nreplicas = {agents}\ncommand = \"{{exe}}\"\nargs = [\"workload\", \"sleep\", \"--every\", \"10\"]\n"
    ))?;
    let since = cluster
        .client
        .get("/v1/events?since=0&limit=10000")?
        .as_array()
        .and_then(|a| {
            a.last()
                .and_then(|e| e.get("seq"))
                .and_then(serde_json::Value::as_u64)
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (mut burner, load) = match noise {
        Noise::Outside => {
            let threads = cores * per_core.max(1);
            let burner = std::process::Command::new(&exe)
                .args([
                    "workload",
                    "burn",
                    "--threads",
                    &threads.to_string(),
                    "--seconds",
                    &duration.to_string(),
                ])
                .spawn()?;
            (
                Some(burner),
                format!("{threads} busy threads outside Warden on {cores} cores"),
            )
        }
        Noise::Tasks => {
            cluster.submit(&format!(
                "name = \"stress-noise\"\nkind = \"service\"\nreplicas = {agents}\ncommand = \"{{exe}}\"\n\
                 args = [\"workload\", \"burn\", \"--threads\", \"{noise_threads}\"]\n\
                 [resources]\ncpu_millis = 500\nmemory_mb = 64\n"
            ))?;
            let running = || {
                cluster
                    .task_procs()
                    .iter()
                    .filter(|t| t.task.starts_with("stress-noise/"))
                    .count()
            };
            if !warden_chaos::cluster::wait_until(Duration::from_secs(30), || running() >= agents) {
                anyhow::bail!(
                    "the noisy tasks did not all start ({} of {agents})",
                    running()
                );
            }
            (
                None,
                format!(
                    "{agents} noisy tasks (500 millicores declared, {noise_threads} busy \
                     thread(s) each) on {cores} cores, isolation {}",
                    if isolation { "on" } else { "off" }
                ),
            )
        }
    };
    let gaps_before = gap_buckets(&cluster);
    eprintln!("{agents} agents, {load}, for {duration} s…");
    let t0 = Instant::now();
    let mut suspects = 0usize;
    let mut failed = 0usize;
    let mut seq = since;
    while t0.elapsed() < Duration::from_secs(duration) {
        std::thread::sleep(Duration::from_secs(5));
        if let Ok(v) = cluster
            .client
            .get(&format!("/v1/events?since={seq}&limit=10000"))
        {
            for e in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                seq = seq.max(
                    e.get("seq")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(seq),
                );
                if e.get("kind").and_then(serde_json::Value::as_str) == Some("agent.transition") {
                    match e.pointer("/data/to").and_then(serde_json::Value::as_str) {
                        Some("suspect") => suspects += 1,
                        Some("failed") => {
                            failed += 1;
                            eprintln!(
                                "  false verdict: {}",
                                e.get("message")
                                    .and_then(serde_json::Value::as_str)
                                    .unwrap_or("")
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let gaps_after = gap_buckets(&cluster);
    if let Some(b) = burner.as_mut() {
        let _ = b.kill();
        let _ = b.wait();
    }
    let (p99, gaps) = gap_quantile(&gaps_before, &gaps_after, 0.99);
    let (p50, _) = gap_quantile(&gaps_before, &gaps_after, 0.5);
    let le = |v: Option<f64>| v.map_or_else(|| "-".into(), |s| format!("≤ {:.0} ms", s * 1000.0));
    println!(
        "{agents} agents under CPU stress ({load}) for {duration} s: \
         false Failed verdicts {failed}, Suspect verdicts {suspects}; \
         heartbeat gap p50 {} p99 {} over {gaps:.0} gaps",
        le(p50),
        le(p99)
    );
    Ok(())
}

fn parse_ack(s: &str) -> std::result::Result<warden_core::state::AckLevel, String> {
    warden_core::state::AckLevel::parse(s)
        .ok_or_else(|| format!("{s:?}: expected local, standby or quorum"))
}

fn parse_mode(s: &str) -> std::result::Result<warden_core::state::StateMode, String> {
    match s {
        "hot" => Ok(warden_core::state::StateMode::Hot),
        "warm" => Ok(warden_core::state::StateMode::Warm),
        _ => Err(format!("{s:?}: expected hot or warm")),
    }
}

/// `warden bench state-vs-redis`.
fn state_vs_redis(faults: usize, default_faults: usize, out: &std::path::Path) -> Result<()> {
    use warden_chaos::report::Stats;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
    let stats = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        Stats {
            count: v.len(),
            p50_ms: warden_core::qos::percentile(&v, 0.5),
            p95_ms: warden_core::qos::percentile(&v, 0.95),
            p99_ms: warden_core::qos::percentile(&v, 0.99),
            max_ms: v.last().copied(),
        }
    };
    let sc = warden_chaos::scenario::Scenario::from_toml(&warden_chaos::scenario::state_faults(
        faults,
        1,
        warden_core::state::AckLevel::Standby,
        &["kill", "pause"],
        4,
    ))?;
    let report = crate::chaos::run_scenario(&sc, &out.join("warden"), 1, "netns")?;
    let st = report.state.clone().unwrap_or_default();
    // label, faults, failovers, switchover, first write after the fault, acknowledged lost
    let mut rows: Vec<(String, usize, usize, Stats, Stats, u64)> = Vec::new();
    for kind in ["kill", "pause"] {
        if let Some(k) = st.kinds.iter().find(|k| k.kind == kind) {
            rows.push((
                format!("warden {kind}"),
                k.faults,
                k.switched,
                k.switchover.clone(),
                k.write_gap.clone(),
                0,
            ));
        }
    }
    let lost_warden = report
        .checkers
        .iter()
        .find(|c| c.checker == "no-lost-ack")
        .map_or(0, |c| c.violations.len());
    for (label, down_after, n) in [
        ("redis tuned (1 s)", 1000, faults),
        ("redis default (30 s)", 30_000, default_faults),
    ] {
        if n == 0 {
            continue;
        }
        for kind in ["kill", "pause"] {
            let dir = out.join(format!("redis-{down_after}-{kind}"));
            eprintln!("bench: {label}, {n} x {kind}");
            let (outcomes, total) = crate::bench_redis::redis_failovers(&dir, kind, n, down_after)?;
            let lost: u64 = outcomes.iter().map(|o| o.lost).sum();
            eprintln!("bench: {label} {kind}: {total} writes, {lost} acknowledged writes lost");
            let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
            rows.push((
                format!("{label} {kind}"),
                outcomes.len(),
                outcomes.iter().filter(|o| o.switchover.is_some()).count(),
                stats(outcomes.iter().filter_map(|o| secs(o.switchover)).collect()),
                stats(
                    outcomes
                        .iter()
                        .filter_map(|o| secs(o.first_write))
                        .collect(),
                ),
                lost,
            ));
        }
    }
    println!(
        "writes wait for one replica (warden ack = standby; redis INCR + WAIT 1); kill -9 and 4 s SIGSTOP of the primary"
    );
    println!(
        "switchover: the fault -> the first write a new primary acknowledged (warden) or took (redis)"
    );
    println!(
        "{:<28} {:>6} {:>9}  {:>20}  {:>20}  {:>10}",
        "", "faults", "failovers", "switchover p50/p99", "first write p50/p99", "acked lost"
    );
    for (label, n, switched, sw, first, lost) in &rows {
        println!(
            "{label:<28} {n:>6} {switched:>9}  {:>20}  {:>20}  {lost:>10}",
            format!("{} / {}", ms(sw.p50_ms), ms(sw.p99_ms)),
            format!("{} / {}", ms(first.p50_ms), ms(first.p99_ms)),
        );
    }
    println!(
        "warden: {} writes acknowledged, no-lost-ack violations {lost_warden}",
        st.acked
    );
    let p99 = |label: &str| rows.iter().find(|r| r.0 == label).and_then(|r| r.3.p99_ms);
    for kind in ["kill", "pause"] {
        let w = p99(&format!("warden {kind}"));
        for redis in ["redis tuned (1 s)", "redis default (30 s)"] {
            if let (Some(w), Some(r)) = (w, p99(&format!("{redis} {kind}"))) {
                println!(
                    "{kind}: {redis} switchover p99 / warden p99 = {:.1}x",
                    r / w
                );
            }
        }
    }
    Ok(())
}

struct ShardsArgs {
    agents: usize,
    replicas: u32,
    seed: u64,
    duration: u64,
    faults: usize,
    loss: f64,
    replica_capacity: Option<f64>,
}

fn shards(a: ShardsArgs, kills: &str) -> Result<()> {
    let ShardsArgs {
        agents,
        replicas,
        seed,
        duration,
        faults,
        loss,
        replica_capacity,
    } = a;
    use std::time::{Duration, Instant};
    use warden_core::sim::scale::{self, ScaleConfig};
    let mut replica_kills = Vec::new();
    for part in kills.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (at, r) = part
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--kills: `{part}` is not SECONDS:REPLICA"))?;
        let at: f64 = at
            .parse()
            .map_err(|_| anyhow::anyhow!("--kills: `{at}` is not a number of seconds"))?;
        let r: u32 = r
            .parse()
            .map_err(|_| anyhow::anyhow!("--kills: `{r}` is not a replica number"))?;
        if !(at.is_finite() && at >= 0.0) {
            anyhow::bail!("--kills: `{at}` is not a time");
        }
        replica_kills.push((Duration::from_secs_f64(at), r));
    }
    let cfg = ScaleConfig {
        agents,
        replicas,
        seed,
        duration: Duration::from_secs(duration),
        loss,
        crashes: faults,
        hangs: faults,
        partitions: faults,
        owner_cuts: faults,
        ack_cuts: faults,
        replica_kills,
        replica_capacity,
        ..ScaleConfig::default()
    };
    // Bad flags are named before anything is said to run.
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("bench shards: {e}"))?;
    eprintln!(
        "simulating {agents} agents over {replicas} replicas for {duration} s (seed {seed})…"
    );
    let started = Instant::now();
    let report = scale::run(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{report}");
    println!(
        "wall time {:.1} s for {} simulated seconds",
        started.elapsed().as_secs_f64(),
        duration
    );
    Ok(())
}
