//! Replication between two stores over loopback TCP: acknowledgement at `standby`, resuming,
//! seeding from a checkpoint, failover, and a deposed primary's unreplicated writes (its log
//! cut back, and the cut counted).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::state::AckLevel;
use warden_state::codec::Op;
use warden_state::repl::{FollowReport, Primaries, follow_forever};
use warden_state::store::{Limits, Role, StateStore, WaitError, WriteError};

const WAIT: Duration = Duration::from_secs(30);

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: Bytes::from(value.to_string()),
    }
}

struct Node {
    _dir: tempfile::TempDir,
    store: StateStore,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.store.close();
    }
}

fn node(role: Role, epoch: u64, limits: Limits) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = StateStore::open(dir.path(), role, epoch, 1, limits).expect("open");
    Node { _dir: dir, store }
}

/// Serve `store` as the primary of job `j` to standby `b`; returns its address.
async fn serve(store: &StateStore, cancel: &CancellationToken) -> std::net::SocketAddr {
    serve_counted(store, cancel).await.0
}

async fn serve_counted(
    store: &StateStore,
    cancel: &CancellationToken,
) -> (std::net::SocketAddr, Primaries) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let p = Primaries::default();
    p.insert("j", store.clone(), vec!["b".into()]);
    tokio::spawn(p.clone().serve(listener, cancel.clone()));
    (addr, p)
}

struct Follower {
    cancel: CancellationToken,
    report: Arc<Mutex<FollowReport>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(addr: std::net::SocketAddr, store: &StateStore) -> Follower {
        let cancel = CancellationToken::new();
        let report = Arc::new(Mutex::new(FollowReport::default()));
        let task = tokio::spawn(follow_forever(
            warden_state::repl::Dial::plain(addr),
            "j".into(),
            "b".into(),
            store.clone(),
            report.clone(),
            cancel.clone(),
        ));
        Follower {
            cancel,
            report,
            task,
        }
    }

    async fn stop(self) -> FollowReport {
        self.cancel.cancel();
        self.task.await.expect("follower");
        *self.report.lock().expect("report")
    }
}

async fn wait_applied(store: &StateStore, seq: u64) {
    let deadline = Instant::now() + WAIT;
    while store.applied() < seq {
        assert!(
            Instant::now() < deadline,
            "standby stuck at {}",
            store.applied()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_acks_wait_for_the_in_sync_standby_and_a_reconnect_resumes() {
    let cancel = CancellationToken::new();
    let p = node(Role::Primary, 1, Limits::default());
    let s = node(Role::Standby, 1, Limits::default());
    let addr = serve(&p.store, &cancel).await;
    let f = Follower::start(addr, &s.store);
    let mut last = 0;
    for i in 0..1000 {
        last = p.store.write(1, put(&format!("k{i}"), "v")).expect("write");
    }
    p.store
        .wait(last, AckLevel::Standby, WAIT)
        .await
        .expect("acknowledged by the standby");
    assert_eq!(s.store.get("k999").0.as_deref(), Some(&b"v"[..]));
    assert!(
        s.store.committed().local >= last,
        "the standby synced what it acked"
    );

    // The standby goes away: a write at `standby` is not acknowledged (it stays in the set).
    f.stop().await;
    let seq = p.store.write(1, put("during", "cut")).expect("write");
    p.store
        .wait(seq, AckLevel::Local, WAIT)
        .await
        .expect("local is independent of the standby");
    let err = p
        .store
        .wait(seq, AckLevel::Standby, Duration::from_millis(300))
        .await
        .expect_err("no standby, no ack");
    assert!(matches!(err, WaitError::Timeout { .. }), "{err}");

    // It comes back: resumes after what it holds, no seeding, and the write is acknowledged.
    let f = Follower::start(addr, &s.store);
    p.store
        .wait(seq, AckLevel::Standby, WAIT)
        .await
        .expect("acknowledged after the reconnect");
    let report = f.stop().await;
    assert_eq!(report.seeds, 0, "resumed from its sequence number");
    assert_eq!(s.store.get("during").0.as_deref(), Some(&b"cut"[..]));
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_acknowledged_writes_and_the_deposed_primary_reports_the_rest() {
    let cancel = CancellationToken::new();
    let a = node(Role::Primary, 1, Limits::default());
    let b = node(Role::Standby, 1, Limits::default());
    let addr_a = serve(&a.store, &cancel).await;
    let f = Follower::start(addr_a, &b.store);
    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("acked{i}");
        let seq = a.store.write(1, put(&key, "1")).expect("write");
        a.store
            .wait(seq, AckLevel::Standby, WAIT)
            .await
            .expect("acked");
        acked.push(key);
    }
    // A partition: the primary keeps taking `local` writes that never reach the standby.
    f.stop().await;
    for i in 0..5 {
        let seq = a
            .store
            .write(1, put(&format!("local{i}"), "1"))
            .expect("write");
        a.store
            .wait(seq, AckLevel::Local, WAIT)
            .await
            .expect("local");
    }

    // The server promotes B at epoch 2 and tells A it is a standby now.
    b.store.promote(2).expect("promote");
    a.store.demote(2).expect("demote");
    assert!(matches!(
        a.store.write(1, put("late", "x")),
        Err(WriteError::Fenced(_))
    ));
    assert!(matches!(
        a.store.write(2, put("late", "x")),
        Err(WriteError::NotPrimary { .. })
    ));
    let seq = b.store.write(2, put("new", "2")).expect("write at epoch 2");

    // A follows B: its unreplicated tail is cut (and counted), then it catches up.
    let addr_b = serve(&b.store, &cancel).await;
    let f = Follower::start(addr_b, &a.store);
    b.store
        .wait(seq, AckLevel::Standby, WAIT)
        .await
        .expect("A acks the new primary");
    let report = f.stop().await;
    assert_eq!(report.discarded, 5, "{report:?}");
    assert_eq!(report.seeds, 0, "cut back, not seeded again: {report:?}");
    for key in &acked {
        assert_eq!(b.store.get(key).0.as_deref(), Some(&b"1"[..]), "{key}");
        assert_eq!(a.store.get(key).0.as_deref(), Some(&b"1"[..]), "{key}");
    }
    assert_eq!(a.store.get("local0").0, None, "the deposed tail is gone");
    assert_eq!(a.store.get("new").0.as_deref(), Some(&b"2"[..]));
    assert_eq!(a.store.position(), b.store.position());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_standby_is_seeded_from_a_checkpoint_plus_the_tail() {
    let cancel = CancellationToken::new();
    let small = Limits {
        backlog_bytes: 1,
        ..Limits::default()
    };
    let p = node(Role::Primary, 3, small);
    for i in 0..500 {
        p.store
            .write(3, put(&format!("k{i}"), "old"))
            .expect("write");
    }
    p.store
        .checkpoint(3, Bytes::from_static(b"blob"))
        .expect("checkpoint");
    let mut last = 0;
    for i in 0..10 {
        last = p
            .store
            .write(3, put(&format!("k{i}"), "new"))
            .expect("write");
    }
    let s = node(Role::Standby, 3, Limits::default());
    let addr = serve(&p.store, &cancel).await;
    let f = Follower::start(addr, &s.store);
    wait_applied(&s.store, last).await;
    p.store
        .wait(last, AckLevel::Standby, WAIT)
        .await
        .expect("acked");
    let report = f.stop().await;
    assert_eq!(report.seeds, 1);
    assert_eq!(s.store.get("k0").0.as_deref(), Some(&b"new"[..]));
    assert_eq!(s.store.get("k499").0.as_deref(), Some(&b"old"[..]));
    assert_eq!(&s.store.snapshot().blob[..], b"blob");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_saw_a_newer_epoch_refuses_an_old_primary() {
    let cancel = CancellationToken::new();
    let old = node(Role::Primary, 2, Limits::default());
    old.store.write(2, put("k", "v")).expect("write");
    let s = node(Role::Standby, 3, Limits::default());
    let (addr, primaries) = serve_counted(&old.store, &cancel).await;
    let f = Follower::start(addr, &s.store);
    let deadline = Instant::now() + WAIT;
    while primaries
        .stats()
        .refused
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the old primary never turned the standby away"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.stop().await;
    assert_eq!(
        s.store.applied(),
        0,
        "nothing from the deposed epoch was applied"
    );
    assert_eq!(s.store.get("k").0, None);
    cancel.cancel();
}

/// The in-sync rules on the primary's side: a standby the server has not named joins only once
/// it holds every write that may have been acknowledged, and only while it is one of the job's
/// standbys; once it joined, writes wait for it; the server's removal stops the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_joins_the_in_sync_set_once_caught_up_and_leaves_only_when_the_server_removes_it()
{
    let cancel = CancellationToken::new();
    let p = node(Role::Primary, 1, Limits::default());
    let s = node(Role::Standby, 1, Limits::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let primaries = Primaries::default();
    // The server names no member yet; `b` is not (yet) one of the job's standbys.
    primaries.insert("j", p.store.clone(), Vec::new());
    assert!(primaries.set_in_sync("j", Vec::new(), Vec::new()));
    tokio::spawn(primaries.clone().serve(listener, cancel.clone()));
    let f = Follower::start(addr, &s.store);
    let seq = p.store.write(1, put("a", "1")).expect("write");
    wait_applied(&s.store, seq).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        primaries.in_sync("j").is_empty(),
        "a standby outside the job's roster never joins"
    );
    assert!(
        p.store
            .wait(seq, AckLevel::Standby, Duration::from_millis(200))
            .await
            .is_err(),
        "no member, no acknowledgement at standby"
    );
    // Named a standby of the job: it holds everything, so it joins, and the write is
    // acknowledged once it does.
    assert!(primaries.set_in_sync("j", Vec::new(), vec!["b".into()]));
    p.store
        .wait(seq, AckLevel::Standby, WAIT)
        .await
        .expect("acknowledged once the caught-up standby joined");
    assert_eq!(primaries.in_sync("j"), vec!["b".to_string()]);
    // The server stores it; then the standby goes away: writes wait for it...
    primaries.set_in_sync("j", vec!["b".into()], vec!["b".into()]);
    f.stop().await;
    let seq = p.store.write(1, put("b", "2")).expect("write");
    assert!(
        p.store
            .wait(seq, AckLevel::Standby, Duration::from_millis(200))
            .await
            .is_err(),
        "a member that went away is still waited for"
    );
    // ...until the server removes it (its slot replaced): the wait ends, nothing is
    // acknowledged without a member, and its old progress does not let it back in.
    primaries.set_in_sync("j", Vec::new(), vec!["b".into()]);
    assert!(
        primaries.in_sync("j").is_empty(),
        "{:?}",
        primaries.in_sync("j")
    );
    assert!(
        p.store
            .wait(seq, AckLevel::Standby, Duration::from_millis(200))
            .await
            .is_err()
    );
    cancel.cancel();
}
