//! Leader election against real etcd clusters: one leader at a time, hand-over on resignation
//! and on a leader's death, stepping down before the lease can expire when etcd loses quorum,
//! and fencing of a deposed leader's writes.
//!
//! Each test starts its own cluster (killed on drop, also on failure). Timings printed with
//! `--nocapture` are the figures quoted in docs/etcd.md.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warden_store::Store;
use warden_store::StoreOptions;
use warden_store::etcd::testing::EtcdCluster;
use warden_store::etcd::{DEFAULT_MARGIN, DEFAULT_TTL, ElectionState, EtcdStore};

/// Generous: a 2-core machine shared with other builds.
const DEADLINE: Duration = Duration::from_secs(20);

/// Every state a replica published, with when.
type History = Arc<Mutex<Vec<(Instant, ElectionState)>>>;

/// One replica: its store, its election's state and history, its runner.
struct Replica {
    name: String,
    store: EtcdStore,
    state: tokio::sync::watch::Receiver<ElectionState>,
    history: History,
    cancel: CancellationToken,
    runner: Option<JoinHandle<()>>,
}

impl Replica {
    fn start(cluster: &EtcdCluster, prefix: &str, name: &str) -> Replica {
        let store = EtcdStore::connect(cluster.config(prefix), StoreOptions::default())
            .expect("connect the store");
        let election = store.election(name.to_owned(), DEFAULT_TTL, DEFAULT_MARGIN);
        let state = election.state();
        let history: History = Arc::new(Mutex::new(vec![(Instant::now(), state.borrow().clone())]));
        let mut rx = election.state();
        let h = Arc::clone(&history);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                h.lock().expect("history").push((Instant::now(), s));
            }
        });
        let cancel = CancellationToken::new();
        let runner = tokio::spawn(election.run(cancel.clone()));
        Replica {
            name: name.to_owned(),
            store,
            state,
            history,
            cancel,
            runner: Some(runner),
        }
    }

    fn current(&self) -> ElectionState {
        self.state.borrow().clone()
    }

    fn leads(&self) -> bool {
        self.current().is_leader()
    }

    fn term(&self) -> Option<i64> {
        self.current().term()
    }

    /// Resign and wait for the runner to finish.
    async fn resign(&mut self) {
        self.cancel.cancel();
        if let Some(r) = self.runner.take() {
            tokio::time::timeout(DEADLINE, r)
                .await
                .expect("the runner stops after cancel")
                .expect("the runner does not panic");
        }
    }

    /// Stop the runner without resigning, as `kill -9` of the server would.
    fn crash(&mut self) {
        if let Some(r) = self.runner.take() {
            r.abort();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(r) = self.runner.take() {
            r.abort();
        }
    }
}

/// Poll `cond` every 20 ms until it holds or `DEADLINE` passes.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn leaders(replicas: &[&Replica]) -> usize {
    replicas.iter().filter(|r| r.leads()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_exactly_one_leader_who_keeps_it_through_a_member_loss() {
    let cluster = EtcdCluster::start(3).expect("start etcd");
    let a = Replica::start(&cluster, "/one", "10.0.0.1:8080");
    let b = Replica::start(&cluster, "/one", "10.0.0.2:8080");
    wait_for("a leader", || leaders(&[&a, &b]) == 1).await;
    let (leader, follower) = if a.leads() { (&a, &b) } else { (&b, &a) };
    let term = leader.term().expect("leader term");
    wait_for("the follower to know the leader", || {
        matches!(follower.current(), ElectionState::Follower { leader: Some(ref l) }
            if l.name == leader.name && l.term == term)
    })
    .await;
    // The winner fenced its store to its term before publishing; the follower did not.
    let guard = leader.store.guard().expect("the leader's store is guarded");
    assert_eq!((guard.term, guard.key), (term, leader.store.leader_key()));
    assert_eq!(follower.store.guard(), None);
    // Renewals keep it leading well past one lease, also while an etcd member of three that
    // is not the raft leader is down.
    let raft_leader = cluster.leader().expect("a raft leader");
    cluster.kill((raft_leader + 1) % 3);
    let until = Instant::now() + DEFAULT_TTL * 2;
    while Instant::now() < until {
        assert_eq!(leaders(&[&a, &b]), 1, "exactly one leader at all times");
        assert!(leader.leads(), "the leader keeps its lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leader.term(), Some(term), "same term throughout");

    // Then, with all three back, the raft leader: while the other two elect a new one, this
    // replica may step down for a moment (it cannot renew), but never two replicas lead, and
    // the lease survives (a new raft leader renews every lease): the same replica leads
    // again, with the same term.
    cluster.restart((raft_leader + 1) % 3).expect("restart");
    tokio::task::block_in_place(|| cluster.wait_healthy(DEADLINE)).expect("healthy");
    let raft_leader = cluster.leader().expect("a raft leader");
    cluster.kill(raft_leader);
    let until = Instant::now() + DEFAULT_TTL * 2;
    while Instant::now() < until {
        assert!(leaders(&[&a, &b]) <= 1, "never two leaders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the same leader again", || leader.leads()).await;
    assert_eq!(
        leader.term(),
        Some(term),
        "same term after the raft leader change"
    );
    assert!(!follower.leads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigning_leader_hands_over_at_once_with_a_higher_term() {
    let cluster = EtcdCluster::start(3).expect("start etcd");
    let mut a = Replica::start(&cluster, "/handover", "a:1");
    wait_for("a to lead", || a.leads()).await;
    let b = Replica::start(&cluster, "/handover", "b:1");
    wait_for("b to follow a", || {
        matches!(b.current(), ElectionState::Follower { leader: Some(ref l) } if l.name == "a:1")
    })
    .await;
    let old_term = a.term().expect("a's term");
    assert_eq!(
        a.store
            .next_generation("x")
            .expect("a writes while leading"),
        1
    );

    let started = Instant::now();
    a.resign().await;
    wait_for("b to lead", || b.leads()).await;
    let handover = started.elapsed();
    println!("hand-over after resignation: {handover:?}");
    assert!(
        handover < Duration::from_secs(1),
        "resigning revokes the lease, so b leads at once (took {handover:?})"
    );
    assert!(b.term().expect("b's term") > old_term);
    assert_eq!(a.current(), ElectionState::Follower { leader: None });
    // a's late writes are refused; b's go through.
    let err = a.store.next_generation("x").expect_err("a no longer leads");
    assert!(err.is_not_leader(), "{err}");
    assert_eq!(b.store.next_generation("x").expect("b leads"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_about_one_ttl_later() {
    let cluster = EtcdCluster::start(3).expect("start etcd");
    let mut a = Replica::start(&cluster, "/crash", "a:1");
    wait_for("a to lead", || a.leads()).await;
    let b = Replica::start(&cluster, "/crash", "b:1");
    wait_for("b to follow a", || {
        matches!(b.current(), ElectionState::Follower { leader: Some(_) })
    })
    .await;
    let old_term = a.term().expect("a's term");
    let started = Instant::now();
    a.crash();
    wait_for("b to lead", || b.leads()).await;
    let took = started.elapsed();
    println!("successor elected {took:?} after the leader stopped renewing (ttl {DEFAULT_TTL:?})");
    // The lease outlives the last renewal by up to ttl; etcd's expiry runs every 500 ms.
    assert!(
        took < DEFAULT_TTL + Duration::from_millis(1500),
        "successor within about ttl (took {took:?})"
    );
    assert!(b.term().expect("b's term") > old_term);
    // a's store still carries its old guard: its writes are refused.
    let err = a.store.next_generation("x").expect_err("a was replaced");
    assert!(err.is_not_leader(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_steps_the_leader_down_in_time_and_its_writes_never_land() {
    let cluster = EtcdCluster::start(3).expect("start etcd");
    let a = Replica::start(&cluster, "/quorum", "a:1");
    wait_for("a to lead", || a.leads()).await;
    let b = Replica::start(&cluster, "/quorum", "b:1");
    wait_for("b to follow", || {
        matches!(b.current(), ElectionState::Follower { leader: Some(_) })
    })
    .await;
    let old_term = a.term().expect("a's term");
    // Let a renew a few times so valid_until comes from a renewal, not the grant.
    let first_valid = match a.current() {
        ElectionState::Leader { valid_until, .. } => valid_until,
        other => panic!("a leads: {other:?}"),
    };
    wait_for("a renewal", || {
        matches!(a.current(), ElectionState::Leader { valid_until, .. } if valid_until > first_valid)
    })
    .await;

    // Kill the majority: no quorum, no renewal can succeed.
    let killed_at = Instant::now();
    cluster.kill(1);
    cluster.kill(2);
    // The history is written by a task of its own: wait until it holds the step-down.
    wait_for("a to step down", || {
        let h = a.history.lock().expect("history");
        matches!(h.last(), Some((at, ElectionState::Follower { .. })) if *at > killed_at)
    })
    .await;

    // The last Leader state before the kill bounds when a had to step down.
    let history = a.history.lock().expect("history").clone();
    let (stepped_down_at, _) = history
        .iter()
        .rev()
        .find(|(_, s)| matches!(s, ElectionState::Follower { .. }))
        .cloned()
        .expect("a published Follower");
    let last_valid = history
        .iter()
        .filter(|(at, _)| *at < stepped_down_at)
        .filter_map(|(_, s)| match s {
            ElectionState::Leader { valid_until, .. } => Some(*valid_until),
            ElectionState::Follower { .. } => None,
        })
        .max()
        .expect("a was leader");
    let late = stepped_down_at.saturating_duration_since(last_valid);
    println!(
        "stepped down {:?} after the majority was killed, {late:?} after valid_until",
        stepped_down_at - killed_at
    );
    assert!(
        late < Duration::from_millis(250),
        "the timer steps down at valid_until, not later (late by {late:?})"
    );
    // valid_until is (send time of the last acknowledged renewal) + ttl - margin, so the step
    // down comes less than ttl after that renewal came back: before etcd could expire the key.
    let last_renewal_at = history
        .iter()
        .filter(|(at, s)| *at < stepped_down_at && matches!(s, ElectionState::Leader { .. }))
        .map(|(at, _)| *at)
        .max()
        .expect("a renewal");
    let since_renewal = stepped_down_at - last_renewal_at;
    println!("stepped down {since_renewal:?} after its last acknowledged renewal");
    assert!(
        since_renewal <= DEFAULT_TTL - DEFAULT_MARGIN + Duration::from_millis(250),
        "stepped down about ttl - margin after the last renewal ({since_renewal:?})"
    );

    // A's guarded writes fail while there is no quorum, and never land later.
    let store = a.store.clone();
    let err = tokio::task::spawn_blocking(move || store.next_generation("outage"))
        .await
        .expect("join")
        .expect_err("no quorum");
    assert!(err.is_unavailable() || err.is_not_leader(), "{err}");
    assert_eq!(leaders(&[&a, &b]), 0, "nobody leads without quorum");

    // Majority back: a leader again (a, if its lease survived, else b or a with a new term).
    let restarted_at = Instant::now();
    cluster.restart(1).expect("restart member 1");
    cluster.restart(2).expect("restart member 2");
    tokio::task::block_in_place(|| cluster.wait_healthy(DEADLINE)).expect("healthy again");
    wait_for("a leader again", || leaders(&[&a, &b]) == 1).await;
    println!(
        "a leader again {:?} after the restart",
        restarted_at.elapsed()
    );
    let leader = if a.leads() { &a } else { &b };
    println!(
        "{} leads with term {:?} (a's term before the outage: {old_term})",
        leader.name,
        leader.term()
    );
    let store = leader.store.clone();
    let (outage, next) = tokio::task::spawn_blocking(move || {
        (store.generation("outage"), store.next_generation("after"))
    })
    .await
    .expect("join");
    assert_eq!(
        outage.expect("read"),
        None,
        "the write made without quorum never landed"
    );
    assert_eq!(next.expect("the new leader writes"), 1);
}
