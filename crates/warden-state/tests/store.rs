//! The state store on a real disk: recovery, torn tails, checkpoints, fencing, limits.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use warden_core::state::AckLevel;
use warden_state::codec::{BatchOp, Op};
use warden_state::store::{Limits, Role, StateStore, WriteError};

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: Bytes::from(value.to_string()),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn open(dir: &std::path::Path, role: Role, epoch: u64) -> StateStore {
    StateStore::open(dir, role, epoch, 0, Limits::default())
        .expect("open")
        .0
}

#[test]
fn acknowledged_writes_survive_a_reopen_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(dir.path(), Role::Primary, 1);
    let mut last = 0;
    for i in 0..200 {
        last = store
            .write(1, put(&format!("k{i:03}"), &format!("v{i}")))
            .expect("write");
    }
    store
        .write(1, Op::Delete { key: "k007".into() })
        .expect("delete");
    let seq = store
        .write(
            1,
            Op::Batch(vec![
                BatchOp::Put("a".into(), Bytes::from_static(b"1")),
                BatchOp::Delete("k008".into()),
            ]),
        )
        .expect("batch");
    assert_eq!(seq, last + 2);
    rt.block_on(store.wait(seq, AckLevel::Local, Duration::from_secs(30)))
        .expect("synced");
    store.close();

    // A write the host lost half-way: garbage after the last whole frame.
    let seg = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .expect("a segment")
        .path();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .and_then(|mut f| f.write_all(&[40, 0, 0, 0, 1, 2, 3]))
        .expect("tear");

    let (store, opened) =
        StateStore::open(dir.path(), Role::Primary, 1, 0, Limits::default()).expect("reopen");
    assert_eq!(opened.seq, seq);
    assert_eq!(opened.torn_bytes, 7);
    assert_eq!(store.get("k199").0.as_deref(), Some(&b"v199"[..]));
    assert_eq!(store.get("k007").0, None);
    assert_eq!(store.get("k008").0, None);
    assert_eq!(store.get("a").0.as_deref(), Some(&b"1"[..]));
    // Appends continue after the cut.
    let next = store
        .write(1, put("after", "x"))
        .expect("write after reopen");
    assert_eq!(next, seq + 1);
    rt.block_on(store.wait(next, AckLevel::Local, Duration::from_secs(30)))
        .expect("synced");
    store.close();
    let (store, opened) =
        StateStore::open(dir.path(), Role::Primary, 1, 0, Limits::default()).expect("reopen");
    assert_eq!((opened.seq, opened.torn_bytes), (next, 0));
    assert_eq!(store.get("after").0.as_deref(), Some(&b"x"[..]));
    store.close();
}

#[test]
fn a_checkpoint_drops_the_log_before_it_and_recovery_starts_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    // A backlog of one frame: older frames come from disk, or not at all.
    let tiny = Limits {
        backlog_bytes: 1,
        ..Limits::default()
    };
    let store = StateStore::open(dir.path(), Role::Primary, 3, 0, tiny)
        .expect("open")
        .0;
    for i in 0..50 {
        store.write(3, put(&format!("k{i}"), "old")).expect("write");
    }
    store
        .write(3, Op::Record(Bytes::from_static(b"r1")))
        .expect("record");
    let ckpt = store
        .checkpoint(3, Bytes::from_static(b"app-snapshot"))
        .expect("checkpoint");
    assert_eq!(ckpt, 51);
    let seq = store.write(3, put("k0", "new")).expect("write");
    rt.block_on(store.wait(seq, AckLevel::Local, Duration::from_secs(30)))
        .expect("synced");
    // Entries before the checkpoint are gone from the log; after it they stream.
    assert!(store.frames_from(10, 1 << 20).expect("read").is_none());
    assert!(
        !store
            .frames_from(52, 1 << 20)
            .expect("read")
            .expect("kept")
            .is_empty()
    );
    store.close();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("checkpoint-"))
            .count(),
        1,
        "{names:?}"
    );
    let (store, opened) =
        StateStore::open(dir.path(), Role::Primary, 3, 0, Limits::default()).expect("reopen");
    assert_eq!(opened.seq, seq);
    assert_eq!(store.get("k0").0.as_deref(), Some(&b"new"[..]));
    assert_eq!(store.get("k49").0.as_deref(), Some(&b"old"[..]));
    assert_eq!(&store.snapshot().blob[..], b"app-snapshot");
    store.close();
}

#[test]
fn stale_epochs_standbys_and_bad_input_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Role::Primary, 5);
    let before = store.applied();
    assert!(matches!(
        store.write(4, put("k", "v")),
        Err(WriteError::Fenced(_))
    ));
    assert!(matches!(
        store.write(6, put("k", "v")),
        Err(WriteError::Fenced(_))
    ));
    assert!(matches!(
        store.write(5, put("", "v")),
        Err(WriteError::Invalid(_))
    ));
    let long = "k".repeat(2000);
    let err = store.write(5, put(&long, "v")).expect_err("long key");
    assert!(err.to_string().contains("longer than the limit"), "{err}");
    let big = Bytes::from(vec![0u8; (1 << 20) + 1]);
    assert!(matches!(
        store.write(
            5,
            Op::Put {
                key: "k".into(),
                value: big
            }
        ),
        Err(WriteError::Invalid(_))
    ));
    assert!(matches!(
        store.write(5, Op::Batch(vec![])),
        Err(WriteError::Invalid(_))
    ));
    assert_eq!(store.applied(), before);
    assert_eq!(store.get("k").0, None);

    // A lease that ran out: no writes, even local ones.
    store.set_write_lease(Some(std::time::Instant::now()));
    assert!(matches!(
        store.write(5, put("k", "v")),
        Err(WriteError::LeaseExpired)
    ));
    store.set_write_lease(None);

    // Demoted: writes refused; promoted again at a newer epoch: writes under it only.
    store.demote(6).expect("demote");
    assert!(matches!(
        store.write(6, put("k", "v")),
        Err(WriteError::NotPrimary { .. })
    ));
    assert!(
        store.promote(6).is_err(),
        "not newer than the epoch already seen"
    );
    let marker = store.promote(7).expect("promote");
    assert_eq!(store.role().epoch, 7);
    assert!(matches!(
        store.write(6, put("k", "v")),
        Err(WriteError::Fenced(_))
    ));
    assert_eq!(store.write(7, put("k", "v")).expect("write"), marker + 1);
    assert_eq!(store.end_of_epoch(7), Some(marker + 1));
    store.close();
}

#[test]
fn a_rejoining_replica_cuts_its_log_back_and_the_cut_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = open(dir.path(), Role::Primary, 1);
    let mut last = 0;
    for i in 1..=10 {
        last = store.write(1, put(&format!("k{i}"), "v")).expect("write");
    }
    rt.block_on(store.wait(last, AckLevel::Local, Duration::from_secs(30)))
        .expect("synced");
    store.demote(2).expect("demote");
    assert!(
        store.truncate_to(1, 6).is_err(),
        "an older epoch may not cut"
    );
    assert_eq!(store.truncate_to(2, 6).expect("cut"), 4);
    assert_eq!(store.position(), (6, 1));
    assert_eq!(store.get("k6").0.as_deref(), Some(&b"v"[..]));
    assert_eq!(store.get("k7").0, None);
    assert_eq!(store.truncate_to(2, 9).expect("nothing to cut"), 0);
    store.close();
    let (store, opened) =
        StateStore::open(dir.path(), Role::Standby, 2, 0, Limits::default()).expect("reopen");
    assert_eq!(opened.seq, 6);
    assert_eq!(store.get("k7").0, None);
    store.close();
}

#[test]
fn a_standby_that_holds_up_writes_is_named_lagging_only_while_another_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let store = StateStore::open(dir.path(), Role::Primary, 1, 2, Limits::default())
        .expect("open")
        .0;
    store.standby_synced("a", 0, true);
    store.standby_synced("b", 0, true);
    let seq = store.write(1, put("k", "v")).expect("write");
    rt.block_on(store.wait(seq, AckLevel::Local, Duration::from_secs(30)))
        .expect("synced");
    // Both behind: neither is named (nothing would go on without them), nor before the limit.
    assert!(store.lagging(Duration::ZERO).is_empty());
    store.standby_synced("a", seq, true);
    assert!(store.lagging(Duration::from_secs(3600)).is_empty());
    // `a` caught up, `b` holds the write up.
    assert_eq!(store.lagging(Duration::ZERO), vec!["b".to_string()]);
    // Out of the set, `a` no longer counts as going on.
    store.standby_synced("a", seq, false);
    assert!(store.lagging(Duration::ZERO).is_empty());
    // `b` caught up: nobody lags.
    store.standby_synced("a", seq, true);
    store.standby_synced("b", seq, true);
    assert!(store.lagging(Duration::ZERO).is_empty());
    // A standby replica names nobody.
    store.demote(2).expect("demote");
    assert!(store.lagging(Duration::ZERO).is_empty());
    store.close();
}
