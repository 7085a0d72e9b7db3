//! A deterministic simulation of a whole fleet — 100,000 agents and more — on a sharded control
//! plane ([`crate::shard`]): owner and witness sessions, detection on the owners, confirmation
//! by the leader's [`Confirmer`], replica deaths, agent crashes, hangs, partitions and broken
//! paths. It checks the safety rules and measures what the fleet's operators care about:
//!
//! - **no false verdict**: an agent is declared dead only if it crashed, hung, or was cut off
//!   from every replica — never for a broken path to one replica, a lost packet, or the death
//!   of its owner;
//! - **at most one**: agents hold singleton copies; after a verdict the replacement starts only
//!   when the old copy can no longer run (its lease, renewed only by replicas' grants, has run
//!   out on the agent's own clock, plus the shim's kill grace for a stopped process), checked
//!   at each replacement's start;
//! - detection time of crashes (sessions closed) and of silent failures (hangs, partitions),
//!   the time for a dead replica's agents to be owned again (first lease grant from their new
//!   owner, and the leader's record of it), the messages each replica handles, and the writes
//!   to the cluster store (only replica-set changes; none in steady state).
//!
//! # The model
//!
//! Time is simulated; one event queue orders everything, and every random draw comes from the
//! seed, so a run replays exactly. Each agent↔replica path behaves like one TCP connection:
//! messages arrive in order; a lost packet is retransmitted after 200 ms and holds everything
//! behind it; a cut path holds messages for good. A crashed agent's or killed replica's
//! sessions close (the peer sees the connection end after a path delay); a hung or cut-off one
//! just goes silent. Replica↔replica messages take a fixed LAN delay.
//!
//! An agent sends every heartbeat to its *primary* session (its owner unless it moved) and every
//! `witness_every`-th one to its *secondary*. It moves its full stream to the other session
//! when its primary's connection closes or when nothing acknowledged it for `ack_timeout`.
//! A replica in either role grants the lease for full heartbeats, unless it has said the agent
//! is silent (as owner or as witness) in this generation: it never grants that generation
//! again. The owner runs a [`PhiAccrual`] detector per agent and reports suspicions (or a
//! closed session) to the leader; the leader asks the witness, which answers from what it
//! heard or by probing the agent (`probe_timeout`). A witness receiving the full stream asks to
//! take over. When a replica dies the leader removes it (one store write), the agents' witnesses
//! own them at once with the arrival times they hold, and new witness sessions are opened with
//! jitter, at most `rebuild_rate` a second per replica. A leader's death is noticed by the
//! others at once; the next replica takes over after `election` (its store lease).
//!
//! Not modelled: a replica cut off from its peers but not from its agents (its store lease
//! bounds its grants; the real server must stop granting when it expires), a replica coming
//! back (rebalancing), agents coming back as new generations, and agents' clocks other than a
//! constant rate within ±`drift` of real time.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::time::Duration;

use crate::detector::{LivenessDetector, PhiAccrual, PhiConfig};
use crate::hash::FxHashMap;
use crate::rng::Rng;
use crate::shard::{self, Confirmer, Heard, ReplicaId, ReplicaSet, Report, Roles};
use crate::time::Time;

/// The most replicas the simulation models (per-path state is kept in fixed arrays).
pub const MAX_REPLICAS: usize = 8;

/// What one run simulates.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// Agents in the fleet.
    pub agents: usize,
    /// Control-plane replicas (2 to [`MAX_REPLICAS`]).
    pub replicas: u32,
    /// Seed of every random draw.
    pub seed: u64,
    /// Simulated time in all.
    pub duration: Duration,
    /// Faults start after this (sessions set up, detectors warm).
    pub warmup: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// The witness hears every n-th heartbeat.
    pub witness_every: u64,
    /// One-way agent↔replica delay: this base plus an exponential jitter of this mean.
    pub path_delay: Duration,
    /// Mean of the exponential jitter.
    pub path_jitter: Duration,
    /// Share of packets lost (each loss delays the stream by a 200 ms retransmission).
    pub loss: f64,
    /// Replica↔replica one-way delay.
    pub peer_delay: Duration,
    /// How long a witness waits for the agent to answer its probe.
    pub probe_timeout: Duration,
    /// When the witness cannot reach the agent, the leader asks again after this long (the
    /// agent reaches another replica on its own meanwhile, if it can).
    pub confirm_grace: Duration,
    /// An agent moves its full stream when nothing was acknowledged for this long.
    pub ack_timeout: Duration,
    /// The agent's lease, from the send time of the last granted heartbeat.
    pub lease: Duration,
    /// The shim kills a stopped agent's singleton this long after its lease ran out.
    pub kill_grace: Duration,
    /// Agents' clocks run at a constant rate within ±drift of real time.
    pub drift: f64,
    /// Time for a new leader to take over after the leader dies (its store lease).
    pub election: Duration,
    /// New witness sessions a replica accepts per second when rebuilding redundancy.
    pub rebuild_rate: f64,
    /// Agents spread their new witness sessions over this long.
    pub rebuild_jitter: Duration,
    /// The owners' detector.
    pub detector: PhiConfig,
    /// Share of agents holding a singleton copy.
    pub singleton_share: f64,
    /// Agent faults, each on a distinct agent at a random time after the warm-up.
    pub crashes: usize,
    /// Agents that stop (SIGSTOP) for good.
    pub hangs: usize,
    /// Agents cut off from every replica.
    pub partitions: usize,
    /// Agents whose path to their owner is cut both ways (alive: no verdict allowed).
    pub owner_cuts: usize,
    /// Agents whose owner→agent direction is cut (acks lost; alive).
    pub ack_cuts: usize,
    /// Replicas killed (`kill -9`): at these times from the start, these replicas.
    pub replica_kills: Vec<(Duration, ReplicaId)>,
    /// The leader declares on the owner's word alone, without asking the witness: a broken
    /// rule, to show that the checkers catch what they must.
    pub skip_witness: bool,
    /// Messages from agents a replica handles per second (`None`: as many as come). Past it,
    /// they queue.
    pub replica_capacity: Option<f64>,
    /// The replacement of a declared agent's singleton starts at once, without waiting for
    /// the old copy's lease: another broken rule, for the at-most-one checker.
    pub replace_at_once: bool,
    /// Replicas keep granting after a verdict and agents ignore `Rejoin`: a broken rule, for
    /// the at-most-one checker (with `skip_witness`, live agents are declared and granted on).
    pub ignore_verdicts: bool,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            agents: 100_000,
            replicas: 5,
            seed: 1,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(15),
            heartbeat: Duration::from_millis(500),
            witness_every: 4,
            path_delay: Duration::from_micros(150),
            path_jitter: Duration::from_micros(100),
            loss: 0.01,
            peer_delay: Duration::from_micros(200),
            probe_timeout: Duration::from_millis(250),
            confirm_grace: Duration::from_secs(1),
            ack_timeout: Duration::from_millis(1100),
            lease: Duration::from_secs(2),
            kill_grace: Duration::from_millis(500),
            drift: 1e-3,
            election: Duration::from_secs(2),
            rebuild_rate: 5_000.0,
            rebuild_jitter: Duration::from_secs(2),
            detector: PhiConfig {
                acceptable_pause: Duration::from_millis(250),
                ..PhiConfig::default()
            },
            singleton_share: 0.1,
            crashes: 200,
            hangs: 200,
            partitions: 200,
            owner_cuts: 200,
            ack_cuts: 200,
            replica_kills: vec![(Duration::from_secs(30), 3), (Duration::from_secs(45), 0)],
            skip_witness: false,
            replica_capacity: None,
            replace_at_once: false,
            ignore_verdicts: false,
        }
    }
}

impl ScaleConfig {
    /// Check the settings, naming the offending one.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=MAX_REPLICAS as u32).contains(&self.replicas) {
            return Err(format!(
                "replicas: {} is outside 2..={MAX_REPLICAS}",
                self.replicas
            ));
        }
        let faulty = self.crashes + self.hangs + self.partitions + self.owner_cuts + self.ack_cuts;
        if faulty > self.agents {
            return Err(format!(
                "faults: {faulty} faulty agents but only {} agents",
                self.agents
            ));
        }
        if self.warmup >= self.duration {
            return Err("warmup: must be shorter than duration".into());
        }
        if self.heartbeat.is_zero() || self.witness_every == 0 {
            return Err("heartbeat and witness_every must be positive".into());
        }
        if !(0.0..0.5).contains(&self.loss) {
            return Err(format!("loss: {} is outside [0, 0.5)", self.loss));
        }
        if !(0.0..0.1).contains(&self.drift) {
            return Err(format!("drift: {} is outside [0, 0.1)", self.drift));
        }
        if self
            .replica_capacity
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            return Err("replica_capacity must be a positive number of messages a second".into());
        }
        if self.rebuild_rate <= 0.0 {
            return Err("rebuild_rate must be positive".into());
        }
        for (at, r) in &self.replica_kills {
            if *r >= self.replicas {
                return Err(format!("replica_kills: no replica {r}"));
            }
            if *at >= self.duration {
                return Err(format!("replica_kills: {at:?} is after the end"));
            }
        }
        let kills: Vec<ReplicaId> = self.replica_kills.iter().map(|k| k.1).collect();
        if kills.len() + 1 > self.replicas as usize {
            return Err("replica_kills: at least one replica must survive".into());
        }
        self.detector.validate().map_err(|e| e.to_string())
    }
}

/// What happened to an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Crash,
    Hang,
    Partition,
    OwnerCut,
    AckCut,
}

impl Fault {
    /// Faults after which a verdict is right.
    fn is_failure(self) -> bool {
        matches!(self, Fault::Crash | Fault::Hang | Fault::Partition)
    }
}

/// Distribution of a set of durations, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spread {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Spread {
    fn of(mut ms: Vec<f64>) -> Spread {
        if ms.is_empty() {
            return Spread::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Spread {
            n: ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.n, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// One replica kill and the re-homing of its agents.
#[derive(Clone, Debug, Default)]
pub struct KillReport {
    /// The replica.
    pub replica: ReplicaId,
    /// When, from the start.
    pub at_s: f64,
    /// Whether it was the leader at the time.
    pub was_leader: bool,
    /// The live agents it owned (without a fault of their own); `grant.n` and `owned.n` of
    /// them were re-homed by the end.
    pub agents: usize,
    /// From the kill to each of its (live) agents' first lease grant from another replica.
    pub grant: Spread,
    /// From the kill to the leader's record naming each agent's new owner.
    pub owned: Spread,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct ScaleReport {
    /// Crashed agents declared, from the crash to the verdict (no replica died from 10 s
    /// before the crash to the verdict).
    pub crash_detection: Spread,
    /// Hung and cut-off agents declared, from the fault to the verdict (likewise).
    pub silent_detection: Spread,
    /// Crashes with a replica's death from 10 s before to the verdict (the agent's owner or
    /// witness may be the one that died, or the leader).
    pub crash_detection_near_kill: Spread,
    /// Silent failures likewise.
    pub silent_detection_near_kill: Spread,
    /// Failed agents never declared by the end.
    pub missed: usize,
    /// Verdicts on agents that had not failed (must be 0).
    pub false_verdicts: usize,
    /// Replacements that started while the old copy could still run (must be 0).
    pub at_most_one_violations: usize,
    /// Replacements started (singletons of declared agents).
    pub replacements: usize,
    /// Each replica kill: the agents it owned, from the kill to their first lease grant from
    /// another replica, and to the leader recording their new owner.
    pub kills: Vec<KillReport>,
    /// Times a lease ran out before its renewal, for agents without a fault of their own
    /// (their singleton stopped meanwhile).
    pub lease_lapses: usize,
    /// Likewise for agents with a broken path of their own (a second fault — their good
    /// replica's death — can leave them without a grant until the leader agrees to a new
    /// owner).
    pub lease_lapses_cut: usize,
    /// Role swaps the leader made (path problems).
    pub swaps: usize,
    /// Suspicions the witness refuted (no verdict).
    pub refuted: usize,
    /// Reports refused (stale epoch, not in role, already dead).
    pub refused: usize,
    /// Writes to the cluster store (replica-set changes).
    pub store_writes: usize,
    /// Store writes in steady state (the last 10 s before the first replica kill).
    pub steady_store_writes: usize,
    /// Messages each replica received per second in steady state (agent and peer traffic).
    pub replica_msgs_per_s: Vec<f64>,
    /// Sessions each replica held at the end (owned + witnessed).
    pub replica_sessions: Vec<usize>,
    /// Sessions per replica just before the first kill (owned + witnessed).
    pub steady_sessions: Vec<usize>,
    /// When redundancy (a witness for every live agent) was whole again after the last kill,
    /// from that kill; `None` if it was not by the end.
    pub redundancy_rebuilt_ms: Option<f64>,
    /// The longest a message from an agent waited in a replica's queue (with a bounded
    /// `replica_capacity`).
    pub max_queue_ms: f64,
    /// Events processed.
    pub events: u64,
}

impl fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "crash detection        {}", self.crash_detection)?;
        writeln!(f, "silent detection       {}", self.silent_detection)?;
        writeln!(
            f,
            "  around a replica kill: crash {}; silent {}",
            self.crash_detection_near_kill, self.silent_detection_near_kill
        )?;
        writeln!(f, "missed failures        {}", self.missed)?;
        writeln!(f, "false verdicts         {}", self.false_verdicts)?;
        writeln!(
            f,
            "at-most-one violations {} (of {} replacements)",
            self.at_most_one_violations, self.replacements
        )?;
        for k in &self.kills {
            let who = if k.was_leader { " (the leader)" } else { "" };
            writeln!(
                f,
                "replica {} killed at {:.1} s{who}: of its {} agents, granted again {}; owned \
                 again in the leader's record {}",
                k.replica, k.at_s, k.agents, k.grant, k.owned
            )?;
        }
        match self.redundancy_rebuilt_ms {
            Some(ms) => writeln!(f, "redundancy rebuilt     {ms:.0} ms after the last kill")?,
            None => writeln!(f, "redundancy rebuilt     not by the end")?,
        }
        writeln!(
            f,
            "lease lapses (a lease ran out before its renewal): agents without a fault {}, \
             with a broken path {}",
            self.lease_lapses, self.lease_lapses_cut
        )?;
        writeln!(
            f,
            "swaps {}, refuted suspicions {}, refused reports {}",
            self.swaps, self.refuted, self.refused
        )?;
        writeln!(
            f,
            "store writes {} ({} in steady state)",
            self.store_writes, self.steady_store_writes
        )?;
        let rates: Vec<String> = self
            .replica_msgs_per_s
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect();
        writeln!(f, "messages/s per replica (steady) {}", rates.join(" "))?;
        writeln!(
            f,
            "sessions per replica (steady) {:?}",
            self.steady_sessions
        )?;
        if self.max_queue_ms > 0.0 {
            writeln!(
                f,
                "longest wait in a replica's queue {:.0} ms",
                self.max_queue_ms
            )?;
        }
        write!(f, "events {}", self.events)
    }
}

/// The kinds of scheduled events.
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// The agent's heartbeat timer.
    Tick { a: u32 },
    /// A heartbeat arrives at a replica.
    Beat {
        a: u32,
        r: u8,
        seq: u64,
        sent: Time,
        full: bool,
    },
    /// A replica's grant (or bare receipt) arrives at the agent.
    Ack {
        a: u32,
        r: u8,
        sent: Time,
        grant: bool,
    },
    /// A replica's detector deadline for an owned agent.
    Check { a: u32, r: u8 },
    /// The agent's session with a replica ended: seen by the replica.
    ClosedAtReplica { a: u32, r: u8 },
    /// ... seen by the agent.
    ClosedAtAgent { a: u32, r: u8 },
    /// A replica's report reaches the leader.
    ToLeader { a: u32, r: u8, report: Report },
    /// The leader asks a witness.
    Ask {
        a: u32,
        r: u8,
        after_seq: u64,
        epoch: u64,
    },
    /// The witness's probe reaches the agent.
    Probe { a: u32, r: u8 },
    /// The agent's reply reaches the witness.
    ProbeReply { a: u32, r: u8 },
    /// The witness gives up on its probe.
    ProbeTimeout { a: u32, r: u8 },
    /// The leader's new roles for an agent reach a replica.
    Roles { a: u32, r: u8, roles: Roles },
    /// A replica tells an agent its roles.
    RolesAtAgent { a: u32, roles: Roles },
    /// An agent's session request reaches a replica (a new witness, or a rescue when the
    /// agent has no working session left).
    Connect { a: u32, r: u8, rescue: bool },
    /// A verdict reaches a replica (it keeps a tombstone: no grant, no session again).
    Dead { a: u32, r: u8 },
    /// A replica tells a declared agent its generation is over.
    Rejoin { a: u32 },
    /// The replacement of a declared agent's singleton starts.
    Replace { a: u32 },
    /// Agent faults.
    Fault { a: u32, fault: FaultTag },
    /// A replica is killed.
    Kill { r: u8 },
    /// A replica learns a replica died (its peer connection closed).
    PeerDown { r: u8, dead: u8 },
    /// The next leader takes over.
    Elect,
    /// A new replica set reaches a replica.
    NewSet { r: u8, epoch: u64 },
    /// Sampling point for steady-state figures.
    Sample,
    /// Whether every live agent has a witness again (after a kill).
    Redundancy,
    /// A replica with a bounded capacity finished handling a message.
    Serve { r: u8 },
}

#[derive(Clone, Copy, Debug)]
enum FaultTag {
    Crash,
    Hang,
    Partition,
    OwnerCut,
    AckCut,
}

struct Scheduled {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One agent.
struct Agent {
    key: u64,
    /// The leader's view of the roles, told to the agent.
    primary: Option<ReplicaId>,
    secondary: Option<ReplicaId>,
    /// Sessions open from the agent's side, by replica bit.
    open: u8,
    /// Replicas whose connection closed on the agent (not tried again in a rescue).
    gone: u8,
    /// Replicas the agent moved away from because nothing came back (until one grants again).
    bad: u8,
    seq: u64,
    /// Send time of the newest acknowledged (granted or received) heartbeat.
    last_acked: Time,
    /// When the primary last changed.
    switched: Time,
    /// Lease end in real time (the agent's clock converted) and the rate of its clock.
    lease_end: Time,
    rate: f64,
    fault: Fault,
    fault_at: Time,
    /// Paths cut, by replica bit: agent→replica, replica→agent.
    cut_up: u8,
    cut_down: u8,
    /// FIFO per path and direction: when the last message arrives.
    up_last: [Time; MAX_REPLICAS],
    down_last: [Time; MAX_REPLICAS],
    singleton: bool,
    /// The store's verdict (the agent does not know it).
    declared: Option<Time>,
    /// When the agent learnt of its verdict (a replica's `Rejoin`) and ended its generation,
    /// killing its copies.
    ended: Option<Time>,
    /// A replica that must be reconnected to as witness (pending connect).
    connecting: bool,
}

impl Agent {
    fn alive(&self) -> bool {
        !matches!(self.fault, Fault::Crash | Fault::Hang)
    }
}

/// A replica's view of one agent it owns or witnesses.
struct Held {
    owner: bool,
    /// The replica is the agent's witness in its own view.
    witness: bool,
    /// Declared dead (this generation): a tombstone.
    dead: bool,
    /// Owner's detector (owners only).
    phi: Option<Box<PhiAccrual>>,
    last_seq: u64,
    last_at: Time,
    /// The replica holds a session with the agent (not only an entry made by a question).
    session: bool,
    /// The agent's session is closed.
    closed: bool,
    /// This replica said the agent is silent (this generation): no more grants.
    said_silent: bool,
    /// The newest heartbeat it had when it said so: one heard after it means the agent was
    /// not silent after all (still no grants, but no suspicion on that word either).
    silent_seq: u64,
    /// A Check event is queued for this instant.
    check_at: Option<Time>,
    /// No suspicion before this (a witness just promoted gives the agent time to move its
    /// full stream over).
    not_before: Time,
    /// When the session opened.
    since: Time,
    /// Asked by the leader: the owner's newest heartbeat and the question's epoch, while the
    /// question is open.
    asked: Option<(u64, u64)>,
    /// Asked to take over (waiting for the leader).
    takeover_sent: bool,
}

impl Held {
    /// Nothing heard, no session: an entry made by a question or a verdict.
    fn blank() -> Held {
        Held {
            owner: false,
            witness: false,
            dead: false,
            phi: None,
            last_seq: 0,
            last_at: Time::ZERO,
            session: false,
            closed: false,
            said_silent: false,
            silent_seq: 0,
            check_at: None,
            not_before: Time::ZERO,
            since: Time::ZERO,
            asked: None,
            takeover_sent: false,
        }
    }

    /// Say the agent is silent (or that it cannot tell): from here on no grants.
    fn say_silent(&mut self) {
        self.said_silent = true;
        self.silent_seq = self.last_seq;
    }

    /// It said the agent is silent and has heard nothing from it since.
    fn still_silent(&self) -> bool {
        self.said_silent && self.last_seq <= self.silent_seq
    }

    /// When the owner's detector suspects the agent, unless a heartbeat comes first.
    fn due(&self) -> Option<Time> {
        self.phi
            .as_ref()
            .and_then(|p| p.suspect_at())
            .map(|t| t.max(self.not_before))
    }
}

struct Replica {
    alive: bool,
    set: ReplicaSet,
    held: FxHashMap<u32, Held>,
    /// Messages received (for the per-replica rate).
    received: u64,
    /// Token bucket for new witness sessions.
    tokens: f64,
    tokens_at: Time,
    /// With a bounded capacity: what agents sent, arrived and waiting to be handled (with
    /// the arrival time), and whether a `Serve` is scheduled.
    queue: std::collections::VecDeque<(Time, Ev)>,
    serving: bool,
}

struct World<'c> {
    cfg: &'c ScaleConfig,
    rng: Rng,
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    agents: Vec<Agent>,
    replicas: Vec<Replica>,
    by_key: FxHashMap<u64, u32>,
    leader: Option<ReplicaId>,
    confirmer: Option<Confirmer>,
    /// The store's replica set (what a new leader reads).
    stored: ReplicaSet,
    out: Vec<shard::Output>,
    report: ScaleReport,
    /// Detection times, undisturbed and around a replica's death.
    crash_ms: [Vec<f64>; 2],
    silent_ms: [Vec<f64>; 2],
    /// Killed replicas: kill time; agents owned by it at the kill, awaiting re-homing.
    kills: Vec<(ReplicaId, Time, bool)>,
    /// Per kill, the agents awaiting re-homing.
    kill_agents: Vec<usize>,
    rehome_wait_grant: FxHashMap<u32, (ReplicaId, usize, Time)>,
    rehome_wait_owned: FxHashMap<u32, (ReplicaId, usize, Time)>,
    rehome_grant_ms: Vec<Vec<f64>>,
    rehome_owned_ms: Vec<Vec<f64>>,
    store_write_times: Vec<Time>,
    /// Received counts at the start and end of the steady window.
    steady: Option<(Time, Vec<u64>)>,
    steady_end: Option<(Time, Vec<u64>)>,
    last_kill: Option<Time>,
}

fn bit(r: ReplicaId) -> u8 {
    1u8 << r
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<'c> World<'c> {
    fn at(&mut self, at: Time, ev: Ev) {
        let at = at.max(self.now);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq, ev }));
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let at = self.now + d;
        self.at(at, ev);
    }

    /// When a message sent now on the agent's path to/from `r` arrives, or `None` if the path
    /// is cut (held for good).
    fn path(&mut self, a: u32, r: ReplicaId, up: bool) -> Option<Time> {
        let mut d = dur_ns(self.cfg.path_delay)
            + (self
                .rng
                .exponential(self.cfg.path_jitter.as_secs_f64() * 1e9)) as u64;
        if self.rng.bernoulli(self.cfg.loss) {
            d += 200_000_000;
        }
        let ag = &mut self.agents[a as usize];
        let (cut, last) = if up {
            (ag.cut_up, &mut ag.up_last[r as usize])
        } else {
            (ag.cut_down, &mut ag.down_last[r as usize])
        };
        if cut & bit(r) != 0 {
            return None;
        }
        let arrive = Time::from_nanos(self.now.as_nanos() + d).max(*last);
        *last = arrive;
        Some(arrive)
    }

    fn send_up(&mut self, a: u32, r: ReplicaId, ev: Ev) {
        if let Some(at) = self.path(a, r, true) {
            self.at(at, ev);
        }
    }

    fn send_down(&mut self, a: u32, r: ReplicaId, ev: Ev) {
        if let Some(at) = self.path(a, r, false) {
            self.at(at, ev);
        }
    }

    fn peer(&mut self, ev: Ev) {
        self.after(self.cfg.peer_delay, ev);
    }

    fn setup(&mut self) {
        let cfg = self.cfg;
        let hb = dur_ns(cfg.heartbeat);
        for i in 0..cfg.agents {
            let key = shard::agent_key(&format!("agent-{i:06}"));
            let roles = self.stored.roles(key).expect("replicas");
            let rate = 1.0 + self.rng.range_f64(-cfg.drift, cfg.drift);
            let singleton = self.rng.bernoulli(cfg.singleton_share);
            let mut open = bit(roles.owner);
            if let Some(w) = roles.witness {
                open |= bit(w);
            }
            self.by_key.insert(key, i as u32);
            self.agents.push(Agent {
                key,
                primary: Some(roles.owner),
                secondary: roles.witness,
                open,
                gone: 0,
                bad: 0,
                seq: 0,
                last_acked: Time::ZERO,
                switched: Time::ZERO,
                lease_end: Time::ZERO,
                rate,
                fault: Fault::None,
                fault_at: Time::ZERO,
                cut_up: 0,
                cut_down: 0,
                up_last: [Time::ZERO; MAX_REPLICAS],
                down_last: [Time::ZERO; MAX_REPLICAS],
                singleton,
                declared: None,
                ended: None,
                connecting: false,
            });
            for (r, owner) in [(Some(roles.owner), true), (roles.witness, false)] {
                let Some(r) = r else { continue };
                let held = self.new_held(owner, None);
                self.replicas[r as usize].held.insert(i as u32, held);
            }
            // Heartbeat phases spread over the first interval.
            let first = self.rng.below(hb);
            self.at(Time::from_nanos(first), Ev::Tick { a: i as u32 });
        }
        // Faults on distinct agents.
        let mut ids: Vec<u32> = (0..cfg.agents as u32).collect();
        for i in (1..ids.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            ids.swap(i, j);
        }
        let tags = [
            (cfg.crashes, FaultTag::Crash),
            (cfg.hangs, FaultTag::Hang),
            (cfg.partitions, FaultTag::Partition),
            (cfg.owner_cuts, FaultTag::OwnerCut),
            (cfg.ack_cuts, FaultTag::AckCut),
        ];
        let lo = dur_ns(cfg.warmup);
        // Faults end early enough to be detected before the run ends.
        let hi = dur_ns(cfg.duration)
            .saturating_sub(10_000_000_000)
            .max(lo + 1);
        let mut next = ids.into_iter();
        for (n, tag) in tags {
            for _ in 0..n {
                let a = next.next().expect("validated");
                let at = Time::from_nanos(self.rng.range_u64(lo, hi));
                self.at(at, Ev::Fault { a, fault: tag });
            }
        }
        for &(at, r) in &cfg.replica_kills {
            self.at(Time::from_nanos(dur_ns(at)), Ev::Kill { r: r as u8 });
        }
        // Steady-state window: the 10 s before the first kill (or the end).
        let first_kill = cfg
            .replica_kills
            .iter()
            .map(|k| dur_ns(k.0))
            .min()
            .unwrap_or(dur_ns(cfg.duration));
        let start = first_kill.saturating_sub(10_000_000_000).max(lo / 2);
        self.at(Time::from_nanos(start), Ev::Sample);
        self.at(Time::from_nanos(first_kill.saturating_sub(1)), Ev::Sample);
    }

    fn new_held(&self, owner: bool, warm_from: Option<(u64, Time)>) -> Held {
        let (last_seq, last_at) = warm_from.unwrap_or((0, Time::ZERO));
        Held {
            owner,
            witness: !owner,
            phi: owner.then(|| Box::new(self.warm_phi(warm_from))),
            last_seq,
            last_at,
            session: true,
            ..Held::blank()
        }
    }

    /// A detector for an agent a replica takes over: the heartbeat it last heard counts as
    /// the last arrival, so a silent agent is suspected on time.
    fn warm_phi(&self, warm_from: Option<(u64, Time)>) -> PhiAccrual {
        let mut phi = PhiAccrual::new(self.cfg.detector.clone());
        if let Some((seq, at)) = warm_from.filter(|w| w.0 > 0) {
            phi.heartbeat(seq, at);
        }
        phi
    }

    fn run(&mut self) {
        let end = Time::from_nanos(dur_ns(self.cfg.duration));
        while let Some(Reverse(s)) = self.queue.pop() {
            if s.at > end {
                break;
            }
            self.now = s.at;
            self.report.events += 1;
            self.step(s.ev);
        }
    }

    fn step(&mut self, ev: Ev) {
        // A replica with a bounded capacity handles what agents send one at a time, in the
        // order it arrives: past its capacity a queue builds and every message waits in it.
        if let Some(per_s) = self.cfg.replica_capacity {
            let to = match ev {
                Ev::Beat { r, .. }
                | Ev::ClosedAtReplica { r, .. }
                | Ev::ProbeReply { r, .. }
                | Ev::Connect { r, .. } => Some(r),
                _ => None,
            };
            if let Some(r) = to {
                let now = self.now;
                let rep = &mut self.replicas[r as usize];
                rep.queue.push_back((now, ev));
                if !rep.serving {
                    rep.serving = true;
                    self.after(Duration::from_secs_f64(1.0 / per_s), Ev::Serve { r });
                }
                return;
            }
        }
        self.dispatch(ev);
    }

    /// The replica finished handling the message at the head of its queue.
    fn serve(&mut self, r: u8) {
        let per_s = self.cfg.replica_capacity.unwrap_or(f64::INFINITY);
        let now = self.now;
        let rep = &mut self.replicas[r as usize];
        let Some((arrived, ev)) = rep.queue.pop_front() else {
            rep.serving = false;
            return;
        };
        if rep.queue.is_empty() {
            rep.serving = false;
        } else {
            self.after(Duration::from_secs_f64(1.0 / per_s), Ev::Serve { r });
        }
        let wait = now.saturating_since(arrived).as_secs_f64() * 1e3;
        if wait > self.report.max_queue_ms {
            self.report.max_queue_ms = wait;
        }
        self.dispatch(ev);
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { a } => self.tick(a),
            Ev::Beat {
                a,
                r,
                seq,
                sent,
                full,
            } => self.beat(a, r as ReplicaId, seq, sent, full),
            Ev::Ack { a, r, sent, grant } => self.ack(a, r as ReplicaId, sent, grant),
            Ev::Check { a, r } => self.check(a, r as ReplicaId),
            Ev::ClosedAtReplica { a, r } => self.closed_at_replica(a, r as ReplicaId),
            Ev::ClosedAtAgent { a, r } => self.closed_at_agent(a, r as ReplicaId),
            Ev::ToLeader { a, r, report } => self.leader_receives(a, r as ReplicaId, report),
            Ev::Ask {
                a,
                r,
                after_seq,
                epoch,
            } => self.ask(a, r as ReplicaId, after_seq, epoch),
            Ev::Probe { a, r } => {
                let ag = &self.agents[a as usize];
                if ag.alive() && ag.open & bit(r as ReplicaId) != 0 {
                    self.send_up(a, r as ReplicaId, Ev::ProbeReply { a, r });
                }
            }
            Ev::ProbeReply { a, r } => self.probe_done(a, r as ReplicaId, true),
            Ev::ProbeTimeout { a, r } => self.probe_done(a, r as ReplicaId, false),
            Ev::Roles { a, r, roles } => self.roles_at_replica(a, r as ReplicaId, roles),
            Ev::RolesAtAgent { a, roles } => self.roles_at_agent(a, roles),
            Ev::Connect { a, r, rescue } => self.connect(a, r as ReplicaId, rescue),
            Ev::Dead { a, r } => self.dead_at_replica(a, r as ReplicaId),
            Ev::Rejoin { a } => {
                // The agent learns its generation is over and kills its copies (a stopped
                // agent learns nothing).
                let ag = &mut self.agents[a as usize];
                if ag.alive() && ag.ended.is_none() && !self.cfg.ignore_verdicts {
                    ag.ended = Some(self.now);
                }
            }
            Ev::Replace { a } => self.replace(a),
            Ev::Fault { a, fault } => self.fault(a, fault),
            Ev::Kill { r } => self.kill(r as ReplicaId),
            Ev::PeerDown { r, dead } => self.peer_down(r as ReplicaId, dead as ReplicaId),
            Ev::Elect => self.elect(),
            Ev::NewSet { r, epoch } => self.new_set(r as ReplicaId, epoch),
            Ev::Sample => self.sample(),
            Ev::Redundancy => self.redundancy(),
            Ev::Serve { r } => self.serve(r),
        }
    }

    // ---- agents ----

    fn tick(&mut self, a: u32) {
        let hb = self.cfg.heartbeat;
        let ag = &self.agents[a as usize];
        if ag.fault == Fault::Crash {
            return;
        }
        // The timer runs on the agent's clock.
        let next = Duration::from_secs_f64(hb.as_secs_f64() / ag.rate);
        let idle = ag.fault == Fault::Hang || ag.ended.is_some();
        self.after(next, Ev::Tick { a });
        if idle {
            return;
        }
        // Nothing acknowledged for too long: move the full stream to the other session.
        let ag = &self.agents[a as usize];
        let quiet = self.now.saturating_since(ag.last_acked.max(ag.switched));
        if quiet >= self.cfg.ack_timeout {
            // Not back to a session it already left for want of grants.
            if let Some(s) = ag
                .secondary
                .filter(|s| ag.open & bit(*s) != 0 && ag.bad & bit(*s) == 0)
            {
                let ag = &mut self.agents[a as usize];
                if let Some(p) = ag.primary {
                    ag.bad |= bit(p);
                }
                ag.secondary = ag.primary;
                ag.primary = Some(s);
                ag.switched = self.now;
            } else {
                self.rescue(a);
            }
        }
        self.send_beat(a);
    }

    /// No working session to move to: reach the next replica of the agent's ranking at once
    /// (not jittered: this agent is about to lose its lease).
    fn rescue(&mut self, a: u32) {
        // It leaves its primary for want of grants, as when it switches: not back to it.
        let ag = &mut self.agents[a as usize];
        if let Some(p) = ag.primary {
            ag.bad |= bit(p);
        }
        let (primary, skip, key) = (ag.primary, ag.open | ag.gone | ag.bad, ag.key);
        let next = self
            .stored
            .ranking(key)
            .into_iter()
            .find(|r| Some(*r) != primary && skip & bit(*r) == 0);
        if let Some(r) = next {
            let ag = &mut self.agents[a as usize];
            ag.secondary = Some(r);
            ag.connecting = true;
            ag.switched = self.now;
            self.send_up(
                a,
                r,
                Ev::Connect {
                    a,
                    r: r as u8,
                    rescue: true,
                },
            );
        }
    }

    fn send_beat(&mut self, a: u32) {
        let every = self.cfg.witness_every;
        let ag = &mut self.agents[a as usize];
        ag.seq += 1;
        let (seq, primary, secondary, open) = (ag.seq, ag.primary, ag.secondary, ag.open);
        let sent = self.now;
        if let Some(p) = primary.filter(|p| open & bit(*p) != 0) {
            let ev = Ev::Beat {
                a,
                r: p as u8,
                seq,
                sent,
                full: true,
            };
            self.send_up(a, p, ev);
        }
        if seq % every == 0
            && let Some(s) = secondary.filter(|s| open & bit(*s) != 0)
        {
            let ev = Ev::Beat {
                a,
                r: s as u8,
                seq,
                sent,
                full: false,
            };
            self.send_up(a, s, ev);
        }
    }

    fn ack(&mut self, a: u32, r: ReplicaId, sent: Time, grant: bool) {
        if grant
            && let Some((dead, k, at)) = self.rehome_wait_grant.get(&a).copied()
            && dead != r
            && self.agents[a as usize].alive()
        {
            self.rehome_wait_grant.remove(&a);
            self.rehome_grant_ms[k].push(self.now.saturating_since(at).as_secs_f64() * 1e3);
        }
        let lease = self.cfg.lease;
        let ag = &mut self.agents[a as usize];
        if !ag.alive() || ag.ended.is_some() {
            return;
        }
        if grant {
            // Only a grant counts: a replica that merely receives the stream (it may have
            // stopped granting) does not keep the agent on it.
            ag.last_acked = ag.last_acked.max(sent);
            ag.bad &= !bit(r);
            if ag.lease_end != Time::ZERO && self.now > ag.lease_end {
                match ag.fault {
                    Fault::None => self.report.lease_lapses += 1,
                    Fault::OwnerCut | Fault::AckCut => self.report.lease_lapses_cut += 1,
                    _ => {}
                }
            }
            let end = sent + Duration::from_secs_f64(lease.as_secs_f64() / ag.rate);
            ag.lease_end = ag.lease_end.max(end);
        }
    }

    fn closed_at_agent(&mut self, a: u32, r: ReplicaId) {
        let ag = &mut self.agents[a as usize];
        if !ag.alive() || ag.open & bit(r) == 0 {
            return;
        }
        ag.open &= !bit(r);
        ag.gone |= bit(r);
        if ag.primary == Some(r) {
            // The owner is gone: the full stream goes to the witness at once — or, when the
            // agent already left that session because nothing came back on it, to a replica
            // it has no session with yet.
            ag.primary = ag.secondary.take().filter(|s| ag.open & bit(*s) != 0);
            ag.switched = self.now;
            let dead_end = ag.primary.is_none_or(|p| ag.bad & bit(p) != 0);
            if ag.ended.is_none() && ag.fault != Fault::Hang {
                if dead_end {
                    self.rescue(a);
                }
                if self.agents[a as usize].primary.is_some() {
                    self.send_beat(a);
                }
            }
        } else if ag.secondary == Some(r) {
            ag.secondary = None;
        }
        // Its next witness is the best-ranked replica it has no session with and has not
        // seen die — what the leader's next set will say, computed without waiting for it
        // (an election may be under way). Jittered, like every rebuilt session.
        let ag = &self.agents[a as usize];
        if ag.secondary.is_none() && !ag.connecting && ag.ended.is_none() {
            let (primary, skip) = (ag.primary, ag.open | ag.gone);
            let next = self
                .stored
                .ranking(ag.key)
                .into_iter()
                .find(|x| Some(*x) != primary && skip & bit(*x) == 0);
            if let Some(w) = next {
                self.agents[a as usize].secondary = Some(w);
                self.rebuild(a, w);
            }
        }
    }

    /// Open a session with the agent's new witness after a random delay.
    fn rebuild(&mut self, a: u32, w: ReplicaId) {
        self.agents[a as usize].connecting = true;
        let jitter = self.rng.below(dur_ns(self.cfg.rebuild_jitter).max(1));
        self.after(
            Duration::from_nanos(jitter),
            Ev::Connect {
                a,
                r: w as u8,
                rescue: false,
            },
        );
    }

    fn roles_at_agent(&mut self, a: u32, roles: Roles) {
        let ag = &mut self.agents[a as usize];
        if !ag.alive() || ag.ended.is_some() {
            return;
        }
        let moved = ag.primary != Some(roles.owner);
        ag.primary = Some(roles.owner);
        ag.secondary = roles.witness;
        // Named owner just now: its grants get a full ack timeout to arrive.
        ag.switched = self.now;
        // A witness without a session: open one, jittered.
        if let Some(w) = roles.witness
            && ag.open & bit(w) == 0
            && !ag.connecting
        {
            self.rebuild(a, w);
        }
        if moved && self.agents[a as usize].open & bit(roles.owner) != 0 {
            self.send_beat(a);
        }
    }

    fn connect(&mut self, a: u32, r: ReplicaId, rescue: bool) {
        let ag = &self.agents[a as usize];
        // Already open (a rescue got there first) — or it cannot get through.
        let open = ag.open & bit(r) != 0 && !rescue;
        if open || !ag.alive() || ag.ended.is_some() || ag.cut_up & bit(r) != 0 {
            self.agents[a as usize].connecting = false;
            return;
        }
        if ag.secondary != Some(r) && ag.primary != Some(r) {
            self.agents[a as usize].connecting = false;
            return;
        }
        let rate = self.cfg.rebuild_rate;
        let now = self.now;
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            self.agents[a as usize].connecting = false;
            return;
        }
        rep.tokens =
            (rep.tokens + now.saturating_since(rep.tokens_at).as_secs_f64() * rate).min(rate);
        rep.tokens_at = now;
        if rep.tokens < 1.0 && !rescue {
            // Refused for now: try again later, jittered.
            let wait = 500_000_000 + self.rng.below(1_000_000_000);
            self.after(
                Duration::from_nanos(wait),
                Ev::Connect {
                    a,
                    r: r as u8,
                    rescue,
                },
            );
            return;
        }
        rep.tokens = (rep.tokens - 1.0).max(0.0);
        rep.received += 1;
        if rep.held.get(&a).is_some_and(|h| h.dead) {
            // Declared: the session is refused and the agent told to end its generation.
            self.agents[a as usize].connecting = false;
            self.send_down(a, r, Ev::Rejoin { a });
            return;
        }
        // Its role is the replica's own view (the set's ranking, or a swap the leader
        // sent): a replica the agent reached on its own holds neither until the leader
        // agrees to its takeover, and grants nothing meanwhile.
        let key = self.agents[a as usize].key;
        let roles = self.replicas[r as usize].set.roles(key);
        let owner = roles.is_some_and(|x| x.owner == r);
        let witness = roles.is_some_and(|x| x.witness == Some(r));
        let ag = &mut self.agents[a as usize];
        ag.connecting = false;
        ag.open |= bit(r);
        let warm = self.new_held(owner, None);
        self.replicas[r as usize]
            .held
            .entry(a)
            .and_modify(|h| {
                h.session = true;
                h.since = now;
            })
            .or_insert(Held {
                since: now,
                witness,
                ..warm
            });
        if rescue {
            // The agent's full stream goes to the session it just opened.
            let ag = &mut self.agents[a as usize];
            ag.secondary = ag.primary;
            ag.primary = Some(r);
            ag.switched = self.now;
            self.send_beat(a);
        }
    }

    fn fault(&mut self, a: u32, tag: FaultTag) {
        let now = self.now;
        let ag = &mut self.agents[a as usize];
        ag.fault_at = now;
        match tag {
            FaultTag::Crash => {
                ag.fault = Fault::Crash;
                let open = ag.open;
                ag.open = 0;
                for r in 0..MAX_REPLICAS as ReplicaId {
                    if open & bit(r) != 0 {
                        // The kernel closes the connections; the FIN/RST goes the path's way.
                        self.send_up(a, r, Ev::ClosedAtReplica { a, r: r as u8 });
                    }
                }
            }
            FaultTag::Hang => ag.fault = Fault::Hang,
            FaultTag::Partition => {
                ag.fault = Fault::Partition;
                ag.cut_up = u8::MAX;
                ag.cut_down = u8::MAX;
            }
            FaultTag::OwnerCut => {
                if let Some(p) = ag.primary {
                    ag.fault = Fault::OwnerCut;
                    ag.cut_up |= bit(p);
                    ag.cut_down |= bit(p);
                }
            }
            FaultTag::AckCut => {
                if let Some(p) = ag.primary {
                    ag.fault = Fault::AckCut;
                    ag.cut_down |= bit(p);
                }
            }
        }
    }

    // ---- replicas ----

    fn beat(&mut self, a: u32, r: ReplicaId, seq: u64, sent: Time, full: bool) {
        let now = self.now;
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        rep.received += 1;
        let epoch = rep.set.epoch();
        let Some(h) = rep.held.get_mut(&a) else {
            return;
        };
        if seq <= h.last_seq {
            return;
        }
        h.last_seq = seq;
        h.last_at = now;
        let mut arm = None;
        if let Some(phi) = h.phi.as_mut() {
            phi.heartbeat(seq, now);
            if h.check_at.is_none() && !h.still_silent() {
                arm = h.due();
                h.check_at = arm;
            }
        }
        // A question open on this agent: a newer heartbeat answers it.
        let answer = h.asked.filter(|(after, _)| seq > *after).map(|(_, e)| e);
        if answer.is_some() {
            h.asked = None;
        }
        // Grants come only from the agent's owner or witness (in this replica's view), and
        // never after this replica said the agent is silent or learnt of its verdict.
        let grant = (h.owner || h.witness) && !h.said_silent && !h.dead;
        let takeover = full && !h.owner && !h.takeover_sent && !h.said_silent && !h.dead;
        let rejoin = h.dead && full;
        if takeover {
            h.takeover_sent = true;
        }
        if let Some(at) = arm {
            self.at(at, Ev::Check { a, r: r as u8 });
        }
        if let Some(epoch) = answer {
            self.send_to_leader(
                a,
                r,
                Report::Answer {
                    epoch,
                    heard: Heard::Alive,
                },
            );
        }
        if takeover {
            self.send_to_leader(a, r, Report::Takeover { epoch });
        }
        if rejoin {
            self.send_down(a, r, Ev::Rejoin { a });
        } else if full {
            self.send_down(
                a,
                r,
                Ev::Ack {
                    a,
                    r: r as u8,
                    sent,
                    grant,
                },
            );
        }
    }

    fn dead_at_replica(&mut self, a: u32, r: ReplicaId) {
        if self.cfg.ignore_verdicts {
            return;
        }
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        rep.received += 1;
        let h = rep.held.entry(a).or_insert_with(Held::blank);
        h.dead = true;
        h.say_silent();
        h.owner = false;
        h.witness = false;
        h.phi = None;
        h.asked = None;
        if self.agents[a as usize].open & bit(r) != 0 {
            self.send_down(a, r, Ev::Rejoin { a });
        }
    }

    fn check(&mut self, a: u32, r: ReplicaId) {
        let now = self.now;
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        let epoch = rep.set.epoch();
        let Some(h) = rep.held.get_mut(&a) else {
            return;
        };
        h.check_at = None;
        if !h.owner || h.still_silent() {
            return;
        }
        let Some(due) = h.due() else {
            return;
        };
        if now < due {
            h.check_at = Some(due);
            self.at(due, Ev::Check { a, r: r as u8 });
            return;
        }
        h.say_silent();
        let last_seq = h.last_seq;
        self.send_to_leader(a, r, Report::Suspect { epoch, last_seq });
    }

    fn closed_at_replica(&mut self, a: u32, r: ReplicaId) {
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        rep.received += 1;
        let epoch = rep.set.epoch();
        let Some(h) = rep.held.get_mut(&a) else {
            return;
        };
        h.closed = true;
        let mut reports = Vec::new();
        // Unless it said so already and has heard nothing since.
        if h.owner && !h.still_silent() {
            h.say_silent();
            reports.push(Report::Suspect {
                epoch,
                last_seq: h.last_seq,
            });
        }
        if let Some((_, epoch)) = h.asked.take() {
            h.say_silent();
            reports.push(Report::Answer {
                epoch,
                heard: Heard::Silent,
            });
        }
        for report in reports {
            self.send_to_leader(a, r, report);
        }
    }

    fn ask(&mut self, a: u32, r: ReplicaId, after_seq: u64, epoch: u64) {
        let now = self.now;
        // Its own stream from the agent silent for three of its intervals: the witness's path
        // may be what is down.
        let stale = dur_ns(self.cfg.heartbeat) * self.cfg.witness_every * 3;
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        rep.received += 1;
        let h = rep.held.entry(a).or_insert_with(Held::blank);
        if h.dead {
            return;
        }
        let heard = if h.last_seq > after_seq {
            Some(Heard::Alive)
        } else if h.closed {
            h.say_silent();
            Some(Heard::Silent)
        } else if !h.session
            || now
                .as_nanos()
                .saturating_sub(h.last_at.max(h.since).as_nanos())
                > stale
        {
            // "Cannot tell" can end in a verdict: from here on this replica grants nothing.
            h.say_silent();
            Some(Heard::Unreachable)
        } else {
            None
        };
        match heard {
            Some(heard) => self.send_to_leader(a, r, Report::Answer { epoch, heard }),
            None => {
                h.asked = Some((after_seq, epoch));
                self.send_down(a, r, Ev::Probe { a, r: r as u8 });
                self.after(self.cfg.probe_timeout, Ev::ProbeTimeout { a, r: r as u8 });
            }
        }
    }

    fn probe_done(&mut self, a: u32, r: ReplicaId, alive: bool) {
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        if alive {
            rep.received += 1;
        }
        let Some(h) = rep.held.get_mut(&a) else {
            return;
        };
        let Some((_, epoch)) = h.asked.take() else {
            return;
        };
        let heard = if alive {
            Heard::Alive
        } else {
            h.say_silent();
            Heard::Silent
        };
        // Promoted to owner while the question was open (the owner that asked died): the
        // answer's epoch is gone, so it suspects the agent in its own right.
        let suspect = (!alive && h.owner).then_some(h.last_seq);
        let current = rep.set.epoch();
        self.send_to_leader(a, r, Report::Answer { epoch, heard });
        if let Some(last_seq) = suspect {
            self.send_to_leader(
                a,
                r,
                Report::Suspect {
                    epoch: current,
                    last_seq,
                },
            );
        }
    }

    fn roles_at_replica(&mut self, a: u32, r: ReplicaId, roles: Roles) {
        let now = self.now;
        let rep = &mut self.replicas[r as usize];
        if !rep.alive {
            return;
        }
        rep.received += 1;
        let mut arm = None;
        let mut suspect = None;
        // The agent moves its full stream on its own when its owner's connection closes; a
        // promoted witness gives it an interval and the detector's pause to arrive.
        let grace = self.cfg.heartbeat + self.cfg.detector.acceptable_pause;
        if roles.owner == r {
            let cfg_phi = self.cfg.detector.clone();
            if let Some(h) = rep.held.get_mut(&a) {
                h.witness = false;
            }
            if let Some(h) = rep.held.get_mut(&a)
                && !h.owner
                && !h.dead
            {
                h.owner = true;
                let mut phi = PhiAccrual::new(cfg_phi);
                if h.last_seq > 0 {
                    phi.heartbeat(h.last_seq, h.last_at.max(Time::from_nanos(1)));
                }
                h.takeover_sent = false;
                h.not_before = now + grace;
                h.phi = Some(Box::new(phi));
                if h.still_silent() {
                    // It already found the agent silent as its witness (and has not heard it
                    // since: an agent heard after "cannot tell" is suspected afresh only by
                    // the detector).
                    suspect = Some((rep.set.epoch(), h.last_seq));
                } else {
                    arm = h.due();
                    h.check_at = arm;
                }
            }
            // The owner tells the agent (over the session it has).
            if self.agents[a as usize].open & bit(r) != 0 {
                self.send_down(a, r, Ev::RolesAtAgent { a, roles });
            }
        } else if let Some(h) = rep.held.get_mut(&a) {
            h.owner = false;
            h.witness = roles.witness == Some(r) && !h.dead;
            h.phi = None;
            h.check_at = None;
        }
        if let Some(at) = arm {
            self.at(at, Ev::Check { a, r: r as u8 });
        }
        if let Some((epoch, last_seq)) = suspect {
            self.send_to_leader(a, r, Report::Suspect { epoch, last_seq });
        }
    }

    fn send_to_leader(&mut self, a: u32, from: ReplicaId, report: Report) {
        self.peer(Ev::ToLeader {
            a,
            r: from as u8,
            report,
        });
    }

    // ---- the leader ----

    fn leader_receives(&mut self, a: u32, from: ReplicaId, report: Report) {
        let Some(leader) = self.leader else {
            // No leader: the replica keeps the report and sends it again once one is elected.
            self.after(
                Duration::from_millis(100),
                Ev::ToLeader {
                    a,
                    r: from as u8,
                    report,
                },
            );
            return;
        };
        if !self.replicas[leader as usize].alive {
            return;
        }
        self.replicas[leader as usize].received += 1;
        let key = self.agents[a as usize].key;
        if self.cfg.skip_witness
            && matches!(report, Report::Suspect { .. })
            && self
                .confirmer
                .as_ref()
                .and_then(|c| c.roles(key))
                .is_some_and(|r| r.owner == from)
        {
            return self.verdict(a);
        }
        let mut out = std::mem::take(&mut self.out);
        if let Some(c) = self.confirmer.as_mut() {
            let refuted = matches!(
                report,
                Report::Answer {
                    heard: Heard::Alive,
                    ..
                }
            );
            let before = out.len();
            c.report(key, from, report, &mut out);
            if refuted
                && out[before..]
                    .iter()
                    .any(|o| matches!(o, shard::Output::Roles { .. }))
            {
                self.report.refuted += 1;
            }
        }
        self.apply(&mut out);
        self.out = out;
    }

    fn apply(&mut self, out: &mut Vec<shard::Output>) {
        for o in out.drain(..) {
            match o {
                shard::Output::Ask {
                    agent,
                    witness,
                    after_seq,
                    later,
                } => {
                    let a = self.by_key[&agent];
                    let epoch = self.stored.epoch();
                    let ev = Ev::Ask {
                        a,
                        r: witness as u8,
                        after_seq,
                        epoch,
                    };
                    if later {
                        self.after(self.cfg.confirm_grace + self.cfg.peer_delay, ev);
                    } else {
                        self.peer(ev);
                    }
                }
                shard::Output::Verdict { agent, .. } => {
                    let a = self.by_key[&agent];
                    self.verdict(a);
                }
                shard::Output::Roles { agent, roles } => {
                    let a = self.by_key[&agent];
                    self.report.swaps += 1;
                    self.owned_again(a, roles.owner);
                    // Every member hears of it, the displaced owner among them (a takeover by a
                    // third replica displaces one that is neither of the new pair).
                    let members = self.stored.members().to_vec();
                    for r in members {
                        self.peer(Ev::Roles {
                            a,
                            r: r as u8,
                            roles,
                        });
                    }
                }
                shard::Output::Refused { .. } => self.report.refused += 1,
            }
        }
    }

    fn verdict(&mut self, a: u32) {
        let now = self.now;
        let ag = &mut self.agents[a as usize];
        if ag.declared.is_some() {
            return;
        }
        ag.declared = Some(now);
        let since = now.saturating_since(ag.fault_at).as_secs_f64() * 1e3;
        // A replica died around the failure (from 10 s before it — the redundancy is being
        // rebuilt — to the verdict): its detection is reported apart.
        let from = Time::from_nanos(ag.fault_at.as_nanos().saturating_sub(10_000_000_000));
        let disturbed = self.kills.iter().any(|k| k.1 >= from && k.1 <= now);
        let d = usize::from(disturbed);
        match ag.fault {
            Fault::Crash => self.crash_ms[d].push(since),
            Fault::Hang | Fault::Partition => self.silent_ms[d].push(since),
            _ => {
                self.report.false_verdicts += 1;
            }
        }
        if ag.singleton {
            let wait = if self.cfg.replace_at_once {
                0.0
            } else {
                (self.cfg.lease + self.cfg.kill_grace).as_secs_f64() / (1.0 - self.cfg.drift)
            };
            self.after(Duration::from_secs_f64(wait), Ev::Replace { a });
        }
        for r in 0..self.cfg.replicas {
            self.peer(Ev::Dead { a, r: r as u8 });
        }
    }

    /// The replacement of a declared agent's singleton starts: the old copy must be gone.
    fn replace(&mut self, a: u32) {
        self.report.replacements += 1;
        let ag = &self.agents[a as usize];
        // A crashed agent's copies died with it; otherwise the copy is killed at the latest a
        // grace after the lease the agent last received (by the agent, or by its shim when
        // the agent is stopped — a stopped agent processes no grant).
        let shim =
            ag.lease_end + Duration::from_secs_f64(self.cfg.kill_grace.as_secs_f64() / ag.rate);
        let stopped = match ag.fault {
            Fault::Crash => ag.fault_at,
            _ => ag.ended.map_or(shim, |e| e.min(shim)),
        };
        if stopped > self.now {
            self.report.at_most_one_violations += 1;
        }
    }

    fn owned_again(&mut self, a: u32, owner: ReplicaId) {
        if let Some((dead, k, at)) = self.rehome_wait_owned.get(&a).copied()
            && owner != dead
        {
            self.rehome_wait_owned.remove(&a);
            self.rehome_owned_ms[k].push(self.now.saturating_since(at).as_secs_f64() * 1e3);
        }
    }

    fn kill(&mut self, r: ReplicaId) {
        let now = self.now;
        let k = self.kills.len();
        self.kills.push((r, now, self.leader == Some(r)));
        self.rehome_grant_ms.push(Vec::new());
        self.rehome_owned_ms.push(Vec::new());
        self.last_kill = Some(now);
        self.at(now + Duration::from_millis(100), Ev::Redundancy);
        let rep = &mut self.replicas[r as usize];
        rep.alive = false;
        let held: Vec<(u32, bool)> = rep.held.drain().map(|(a, h)| (a, h.owner)).collect();
        self.kill_agents.push(0);
        for (a, owner) in held {
            // Agents with a broken path are left out (their lease lapses are counted).
            if owner && self.agents[a as usize].fault == Fault::None {
                self.rehome_wait_grant.insert(a, (r, k, now));
                self.kill_agents[k] += 1;
                self.rehome_wait_owned.insert(a, (r, k, now));
            }
            if self.agents[a as usize].open & bit(r) != 0 {
                self.send_down(a, r, Ev::ClosedAtAgent { a, r: r as u8 });
            }
        }
        // Its peers see its connections close.
        for p in 0..self.cfg.replicas {
            if p != r && self.replicas[p as usize].alive {
                self.peer(Ev::PeerDown {
                    r: p as u8,
                    dead: r as u8,
                });
            }
        }
        if self.leader == Some(r) {
            self.leader = None;
            self.confirmer = None;
            self.after(self.cfg.election, Ev::Elect);
        }
    }

    fn peer_down(&mut self, r: ReplicaId, dead: ReplicaId) {
        // Only the leader acts: it removes the dead replica from the set (one store write).
        if self.leader != Some(r) || !self.replicas[r as usize].alive {
            return;
        }
        self.remove_replica(dead);
    }

    fn remove_replica(&mut self, dead: ReplicaId) {
        let Some(next) = self.stored.without(dead) else {
            return;
        };
        self.stored = next.clone();
        self.store_write_times.push(self.now);
        let mut out = std::mem::take(&mut self.out);
        if let Some(c) = self.confirmer.as_mut() {
            c.set_replicas(next.clone(), &mut out);
        }
        self.apply(&mut out);
        self.out = out;
        // The leader's record now names the new owners of the dead replica's agents.
        let waiting: Vec<u32> = self.rehome_wait_owned.keys().copied().collect();
        for a in waiting {
            if let Some(roles) = self
                .confirmer
                .as_ref()
                .and_then(|c| c.roles(self.agents[a as usize].key))
            {
                self.owned_again(a, roles.owner);
            }
        }
        for p in next.members().to_vec() {
            self.peer(Ev::NewSet {
                r: p as u8,
                epoch: next.epoch(),
            });
        }
    }

    fn elect(&mut self) {
        // The next replica (lowest id alive) wins the store's lease and reads the set.
        let Some(l) = (0..self.cfg.replicas).find(|r| self.replicas[*r as usize].alive) else {
            return;
        };
        self.leader = Some(l);
        // It reads the set and the verdicts from the store.
        let mut c = Confirmer::new(self.stored.clone());
        for ag in self.agents.iter().filter(|ag| ag.declared.is_some()) {
            c.mark_dead(ag.key);
        }
        self.confirmer = Some(c);
        // Replicas the store still lists but that are gone: removed now.
        let gone: Vec<ReplicaId> = self
            .stored
            .members()
            .iter()
            .copied()
            .filter(|r| !self.replicas[*r as usize].alive)
            .collect();
        for r in gone {
            self.remove_replica(r);
        }
    }

    fn new_set(&mut self, r: ReplicaId, epoch: u64) {
        if !self.replicas[r as usize].alive || self.stored.epoch() != epoch {
            return;
        }
        let set = self.stored.clone();
        let rep = &mut self.replicas[r as usize];
        rep.received += 1;
        let old = std::mem::replace(&mut rep.set, set.clone());
        // Agents this replica holds whose roles changed: a witness that now owns is promoted
        // (its detector starts from the heartbeat it last heard) and tells the agent, an owner
        // tells its agent the new witness, a swapped-in owner steps back. What the old epoch
        // fenced is said again.
        let ids: Vec<u32> = rep.held.keys().copied().collect();
        let mut changes = Vec::new();
        let mut resend = Vec::new();
        for a in ids {
            let key = self.agents[a as usize].key;
            let Some(roles) = set.roles(key) else {
                continue;
            };
            let h = &self.replicas[r as usize].held[&a];
            if h.dead {
                continue;
            }
            // The set's roles replace any swap (the leader drops swaps with the epoch too).
            let owner_changed = (roles.owner == r) != h.owner;
            let witness_changed = (roles.witness == Some(r)) != h.witness;
            let new_witness = roles.owner == r && old.roles(key) != Some(roles);
            if owner_changed || witness_changed || new_witness {
                changes.push((a, roles));
            }
            if roles.owner == r && h.still_silent() {
                resend.push((
                    a,
                    Report::Suspect {
                        epoch,
                        last_seq: h.last_seq,
                    },
                ));
            } else if roles.owner != r && h.takeover_sent {
                resend.push((a, Report::Takeover { epoch }));
            }
        }
        for (a, roles) in changes {
            self.roles_at_replica(a, r, roles);
        }
        for (a, report) in resend {
            self.send_to_leader(a, r, report);
        }
    }

    fn redundancy(&mut self) {
        let whole = self.agents.iter().all(|ag| {
            !ag.alive()
                || ag.declared.is_some()
                || ag.fault != Fault::None
                || ag.secondary.is_some_and(|s| ag.open & bit(s) != 0)
        });
        match (whole, self.last_kill) {
            (true, Some(at)) => {
                self.report.redundancy_rebuilt_ms =
                    Some(self.now.saturating_since(at).as_secs_f64() * 1e3);
            }
            _ => {
                self.report.redundancy_rebuilt_ms = None;
                self.after(Duration::from_millis(100), Ev::Redundancy);
            }
        }
    }

    fn sample(&mut self) {
        let counts: Vec<u64> = self.replicas.iter().map(|r| r.received).collect();
        if self.steady.is_none() {
            self.steady = Some((self.now, counts));
        } else if self.steady_end.is_none() {
            self.report.steady_sessions = self
                .replicas
                .iter()
                .map(|r| r.held.values().filter(|h| h.session && !h.dead).count())
                .collect();
            self.steady_end = Some((self.now, counts));
        }
    }

    fn finish(mut self) -> ScaleReport {
        let now = self.now;
        let mut missed = 0;
        for ag in &self.agents {
            if ag.fault.is_failure() && ag.declared.is_none() {
                missed += 1;
            }
            // A live agent whose lease ran out and was never granted again.
            if ag.declared.is_none() && ag.lease_end != Time::ZERO && ag.lease_end < self.now {
                match ag.fault {
                    Fault::None => self.report.lease_lapses += 1,
                    Fault::OwnerCut | Fault::AckCut => self.report.lease_lapses_cut += 1,
                    _ => {}
                }
            }
        }
        self.report.missed = missed;
        let [crash, crash_near] = std::mem::take(&mut self.crash_ms);
        let [silent, silent_near] = std::mem::take(&mut self.silent_ms);
        self.report.crash_detection = Spread::of(crash);
        self.report.silent_detection = Spread::of(silent);
        self.report.crash_detection_near_kill = Spread::of(crash_near);
        self.report.silent_detection_near_kill = Spread::of(silent_near);
        let grants = std::mem::take(&mut self.rehome_grant_ms);
        let owned = std::mem::take(&mut self.rehome_owned_ms);
        self.report.kills = self
            .kills
            .iter()
            .zip(grants.into_iter().zip(owned))
            .zip(&self.kill_agents)
            .map(
                |((&(replica, at, was_leader), (g, o)), &agents)| KillReport {
                    replica,
                    at_s: at.as_secs_f64(),
                    was_leader,
                    agents,
                    grant: Spread::of(g),
                    owned: Spread::of(o),
                },
            )
            .collect();
        self.report.store_writes = self.store_write_times.len();
        if let (Some((t0, c0)), Some((t1, c1))) = (&self.steady, &self.steady_end) {
            let secs = t1.saturating_since(*t0).as_secs_f64().max(1e-9);
            self.report.steady_store_writes = self
                .store_write_times
                .iter()
                .filter(|t| **t >= *t0 && **t <= *t1)
                .count();
            self.report.replica_msgs_per_s = c0
                .iter()
                .zip(c1)
                .map(|(a, b)| (b - a) as f64 / secs)
                .collect();
        }
        self.report.replica_sessions = self
            .replicas
            .iter()
            .map(|r| if r.alive { r.held.len() } else { 0 })
            .collect();
        let _ = now;
        self.report
    }
}

/// Run the simulation `cfg` describes.
pub fn run(cfg: &ScaleConfig) -> Result<ScaleReport, String> {
    cfg.validate()?;
    let set = ReplicaSet::new(1, 0..cfg.replicas);
    let replicas = (0..cfg.replicas)
        .map(|_| Replica {
            alive: true,
            set: set.clone(),
            held: FxHashMap::default(),
            received: 0,
            tokens: cfg.rebuild_rate,
            tokens_at: Time::ZERO,
            queue: std::collections::VecDeque::new(),
            serving: false,
        })
        .collect();
    let mut w = World {
        cfg,
        rng: Rng::new(cfg.seed),
        now: Time::ZERO,
        queue: BinaryHeap::with_capacity(cfg.agents * 3),
        next_seq: 0,
        agents: Vec::with_capacity(cfg.agents),
        replicas,
        by_key: FxHashMap::default(),
        leader: Some(0),
        confirmer: Some(Confirmer::new(set.clone())),
        stored: set,
        out: Vec::new(),
        report: ScaleReport::default(),
        crash_ms: [Vec::new(), Vec::new()],
        silent_ms: [Vec::new(), Vec::new()],
        kills: Vec::new(),
        kill_agents: Vec::new(),
        rehome_wait_grant: FxHashMap::default(),
        rehome_wait_owned: FxHashMap::default(),
        rehome_grant_ms: Vec::new(),
        rehome_owned_ms: Vec::new(),
        store_write_times: Vec::new(),
        steady: None,
        steady_end: None,
        last_kill: None,
    };
    w.setup();
    w.run();
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> ScaleConfig {
        ScaleConfig {
            agents: 3_000,
            seed,
            duration: Duration::from_secs(50),
            warmup: Duration::from_secs(10),
            crashes: 20,
            hangs: 20,
            partitions: 20,
            owner_cuts: 20,
            ack_cuts: 20,
            replica_kills: vec![(Duration::from_secs(25), 3), (Duration::from_secs(32), 0)],
            ..ScaleConfig::default()
        }
    }

    #[test]
    fn failures_are_declared_without_false_verdicts_or_two_copies_through_replica_deaths() {
        for seed in 1..=3 {
            let r = run(&small(seed)).expect("valid");
            let ctx = format!("seed {seed}:\n{r}");
            assert_eq!(r.false_verdicts, 0, "{ctx}");
            assert_eq!(r.at_most_one_violations, 0, "{ctx}");
            assert_eq!(r.missed, 0, "{ctx}");
            assert_eq!(r.lease_lapses, 0, "{ctx}");
            assert_eq!(
                r.crash_detection.n + r.crash_detection_near_kill.n,
                20,
                "{ctx}"
            );
            assert_eq!(
                r.silent_detection.n + r.silent_detection_near_kill.n,
                40,
                "{ctx}"
            );
            assert!(r.replacements > 0, "{ctx}");
            // Loose bounds: the figures themselves come from `warden bench shards`.
            assert!(r.crash_detection.max_ms < 1_000.0, "{ctx}");
            assert!(r.silent_detection.max_ms < 3_000.0, "{ctx}");
            // Both killed replicas' agents were served again by another replica, and the
            // leader's record names their new owners (after the election for the leader).
            assert_eq!(r.kills.len(), 2, "{ctx}");
            for k in &r.kills {
                assert!(k.grant.n > 400 && k.owned.n == k.grant.n, "{ctx}");
                assert!(k.grant.p50_ms < 50.0, "{ctx}");
            }
            assert!(!r.kills[0].was_leader && r.kills[1].was_leader, "{ctx}");
            assert!(r.kills[0].owned.max_ms < 50.0, "{ctx}");
            assert!(r.kills[1].owned.p50_ms >= 2_000.0, "{ctx}");
            assert!(r.redundancy_rebuilt_ms.is_some(), "{ctx}");
            // The store is written only when the set changes.
            assert_eq!((r.store_writes, r.steady_store_writes), (2, 0), "{ctx}");
            // Broken paths were worked around by moving agents, not by verdicts.
            assert!(r.swaps > 0, "{ctx}");
            // Every agent holds two sessions, owned + witnessed, spread over the replicas
            // (declared agents' are dropped).
            let sessions: usize = r.steady_sessions.iter().sum();
            assert!((5_800..=6_000).contains(&sessions), "{ctx}");
            assert!(
                r.steady_sessions.iter().all(|s| (1_000..1_400).contains(s)),
                "{ctx}"
            );
        }
    }

    #[test]
    fn a_run_replays_exactly_from_its_seed() {
        let cfg = ScaleConfig {
            agents: 500,
            duration: Duration::from_secs(30),
            replica_kills: vec![(Duration::from_secs(20), 1)],
            ..small(9)
        };
        let a = run(&cfg).expect("valid");
        let b = run(&cfg).expect("valid");
        assert_eq!(a.events, b.events);
        assert_eq!(format!("{a}"), format!("{b}"));
    }

    #[test]
    fn the_checkers_catch_a_leader_that_skips_the_witness_or_the_lease() {
        // At 20 % loss owners suspect live agents now and then; their witnesses refute it.
        let r = run(&ScaleConfig {
            loss: 0.2,
            ..small(1)
        })
        .expect("valid");
        assert!(r.refuted > 0, "{r}");
        assert_eq!((r.false_verdicts, r.at_most_one_violations), (0, 0), "{r}");
        // On the owner's word alone, live agents are declared.
        let r = run(&ScaleConfig {
            skip_witness: true,
            loss: 0.2,
            ..small(1)
        })
        .expect("valid");
        // Live agents whose owner stream lost a run of packets are declared. The verdict fences
        // them: every replica keeps a tombstone and tells the agent to end its generation,
        // so no grant extends the lease it holds.
        assert!(r.false_verdicts > 0, "{r}");
        assert_eq!(r.at_most_one_violations, 0, "{r}");
        // Without that fence, the live agents declared keep being granted by the replica they
        // move to, and keep their copies: the checker sees two copies.
        let r = run(&ScaleConfig {
            skip_witness: true,
            ignore_verdicts: true,
            loss: 0.2,
            singleton_share: 1.0,
            ..small(1)
        })
        .expect("valid");
        assert!(r.false_verdicts > 0, "{r}");
        assert!(r.at_most_one_violations > 0, "{r}");
        let r = run(&ScaleConfig {
            replace_at_once: true,
            ..small(1)
        })
        .expect("valid");
        assert_eq!(r.false_verdicts, 0, "{r}");
        assert!(r.at_most_one_violations > 0, "{r}");
    }

    #[test]
    fn overloaded_replicas_lose_liveness_but_never_run_two_copies() {
        // Each replica gets ~1,500 messages a second here; it can handle 1,200.
        let r = run(&ScaleConfig {
            replica_capacity: Some(1_200.0),
            ..small(2)
        })
        .expect("valid");
        assert!(r.max_queue_ms > 1_000.0, "{r}");
        assert!(r.false_verdicts > 0, "{r}");
        assert_eq!(r.at_most_one_violations, 0, "{r}");
        // With room to spare, the queue stays short and nothing is lost.
        let r = run(&ScaleConfig {
            replica_capacity: Some(3_000.0),
            ..small(2)
        })
        .expect("valid");
        assert!(r.max_queue_ms < 500.0, "{r}");
        assert_eq!((r.false_verdicts, r.at_most_one_violations), (0, 0), "{r}");
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let bad = [
            (
                ScaleConfig {
                    replicas: 1,
                    ..small(1)
                },
                "replicas",
            ),
            (
                ScaleConfig {
                    agents: 10,
                    ..small(1)
                },
                "faults",
            ),
            (
                ScaleConfig {
                    replica_kills: vec![(Duration::from_secs(1), 9)],
                    ..small(1)
                },
                "replica_kills",
            ),
            (
                ScaleConfig {
                    loss: 0.9,
                    ..small(1)
                },
                "loss",
            ),
        ];
        for (cfg, field) in bad {
            let e = run(&cfg).expect_err(field);
            assert!(e.starts_with(field), "{e}");
        }
    }
}
