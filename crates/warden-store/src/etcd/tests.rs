//! The shared contract suite and the guard's behaviour against a real etcd.
//!
//! Tests running at the same time in one process share one single-member cluster (each on its
//! own prefix); the cluster is killed when the last of them is done, so nothing outlives the
//! test binary. Under nextest every test is its own process and starts its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use etcd_client::Client;
use warden_core::FencingToken;

use super::testing::EtcdCluster;
use super::{EtcdConfig, EtcdStore, LeaderGuard};
use crate::contract::{self, Fixture};
use crate::{BatchOutcome, NewEvent, Store, StoreError, StoreOptions, WriteOp};

static SHARED: Mutex<Weak<EtcdCluster>> = Mutex::new(Weak::new());
static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// The cluster shared by the tests running now (started if there is none).
fn cluster() -> Arc<EtcdCluster> {
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = shared.upgrade() {
        return c;
    }
    let c = Arc::new(EtcdCluster::start(1).expect("start etcd (Debian package etcd-server)"));
    *shared = Arc::downgrade(&c);
    c
}

fn fresh_prefix(name: &str) -> String {
    format!(
        "/t{}-{}-{name}",
        std::process::id(),
        PREFIXES.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store on a fresh prefix of the shared cluster.
struct EtcdFixture {
    store: EtcdStore,
    cfg: EtcdConfig,
    options: StoreOptions,
    // Last: the cluster outlives the store.
    _cluster: Arc<EtcdCluster>,
}

impl EtcdFixture {
    fn new(options: StoreOptions) -> Self {
        let cluster = cluster();
        let cfg = cluster.config(&fresh_prefix("c"));
        let store = EtcdStore::connect(cfg.clone(), options.clone()).expect("connect");
        EtcdFixture {
            store,
            cfg,
            options,
            _cluster: cluster,
        }
    }
}

impl Fixture for EtcdFixture {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn reopen(self) -> Self {
        let EtcdFixture {
            store,
            cfg,
            options,
            _cluster,
        } = self;
        drop(store);
        let store = EtcdStore::connect(cfg.clone(), options.clone()).expect("reconnect");
        EtcdFixture {
            store,
            cfg,
            options,
            _cluster,
        }
    }
}

mod contract_suite {
    crate::contract_tests!(super::EtcdFixture::new);
}

/// A plain etcd client on a runtime of the test's own, to change keys behind the store's back.
struct Raw {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Raw {
    fn new(cluster: &EtcdCluster) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt
            .block_on(Client::connect(cluster.endpoints(), None))
            .expect("connect a raw client");
        Raw { rt, client }
    }

    /// Put `key` (creating it again if absent); returns its create revision.
    fn put(&self, key: &[u8], value: &str) -> i64 {
        let mut c = self.client.clone();
        self.rt.block_on(async {
            c.put(key.to_vec(), value, None).await.expect("put");
            let r = c.get(key.to_vec(), None).await.expect("get");
            r.kvs().first().expect("just put").create_revision()
        })
    }

    fn delete(&self, key: &[u8]) {
        let mut c = self.client.clone();
        self.rt
            .block_on(c.delete(key.to_vec(), None))
            .expect("delete");
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut c = self.client.clone();
        let r = self.rt.block_on(c.get(key.to_vec(), None)).expect("get");
        r.kvs().first().map(|kv| kv.value().to_vec())
    }
}

fn store_on(cluster: &EtcdCluster, prefix: &str) -> EtcdStore {
    EtcdStore::connect(cluster.config(prefix), StoreOptions::default()).expect("connect")
}

#[test]
fn guarded_writes_are_rejected_once_the_guard_key_is_gone_or_recreated() {
    let cluster = cluster();
    let prefix = fresh_prefix("guard");
    let store = store_on(&cluster, &prefix);
    let raw = Raw::new(&cluster);
    let key = store.leader_key();
    let term = raw.put(&key, "{\"name\":\"me\",\"since_unix_ms\":0}");
    store.set_guard(Some(LeaderGuard {
        key: key.clone(),
        term,
    }));

    // While the key carries the term, every kind of write goes through.
    assert_eq!(store.next_generation("a").expect("guarded generation"), 1);
    assert_eq!(
        store
            .append_event(&NewEvent::new(1, "k", "one"))
            .expect("guarded append"),
        1
    );
    store
        .put_job(&contract::job("web", 1))
        .expect("guarded put job");

    // Deleted: nothing is written, and the error says why.
    raw.delete(&key);
    let err = store.next_generation("a").expect_err("key deleted");
    assert!(err.is_not_leader(), "{err}");
    assert!(
        err.to_string().contains("no longer the leader"),
        "the message says why: {err}"
    );
    let err = store
        .append_event(&NewEvent::new(2, "k", "two"))
        .expect_err("key deleted");
    assert!(err.is_not_leader(), "{err}");
    let err = store
        .cas_task(
            FencingToken::NONE,
            &contract::record("web", 0, 1, Some("a")),
        )
        .expect_err("key deleted");
    assert!(err.is_not_leader(), "{err}");
    assert_eq!(store.generation("a").expect("read"), Some(1));
    assert_eq!(store.last_event_seq().expect("read"), 1);
    assert_eq!(
        store.get_task(&contract::tid("web", 0)).expect("read"),
        None
    );

    // Created again (by another replica, say): another create revision, still refused.
    let other = raw.put(&key, "{\"name\":\"other\",\"since_unix_ms\":0}");
    assert!(other > term);
    let err = store
        .delete_job(&contract::job("web", 1).name)
        .expect_err("recreated");
    assert!(err.is_not_leader(), "{err}");
    assert!(
        store
            .get_job(&contract::job("web", 1).name)
            .expect("read")
            .is_some()
    );

    // The new leader's guard passes; no guard at all passes too.
    store.set_guard(Some(LeaderGuard { key, term: other }));
    assert_eq!(store.next_generation("a").expect("new term"), 2);
    store.set_guard(None);
    assert_eq!(store.next_generation("a").expect("unguarded"), 3);
}

#[test]
fn concurrent_fenced_cas_from_two_stores_has_exactly_one_winner() {
    let cluster = cluster();
    let prefix = fresh_prefix("race");
    let stores = [store_on(&cluster, &prefix), store_on(&cluster, &prefix)];
    let task = contract::tid("race", 0);
    for round in 0..20u64 {
        let expected = stores[0].task_epoch(&task).expect("epoch");
        assert_eq!(expected, FencingToken(round));
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (barrier, task) = (&barrier, &task);
                    scope.spawn(move || {
                        let mut rec =
                            contract::record("race", 0, round + 1, Some(&format!("s{i}")));
                        rec.task = task.clone();
                        barrier.wait();
                        s.cas_task(expected, &rec).expect("cas").is_applied()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("writer thread"))
                .collect()
        });
        assert_eq!(
            results.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one writer wins, got {results:?}"
        );
        let stored = stores[1].get_task(&task).expect("read").expect("written");
        let winner = results.iter().position(|w| *w).expect("a winner");
        assert_eq!(&*stored.agent.expect("assigned").name, format!("s{winner}"));
    }
}

#[test]
fn a_batch_spanning_many_slots_and_a_whole_job_is_one_transaction() {
    let cluster = cluster();
    let store = store_on(&cluster, &fresh_prefix("big"));
    // Far more slots than etcd's 128 operations per transaction: deleting them is one range
    // delete and one retired-epochs key.
    for i in 0..300 {
        let rec = contract::record("big", i, 3, Some("a"));
        assert!(
            store
                .cas_task(FencingToken::NONE, &rec)
                .expect("cas")
                .is_applied()
        );
    }
    store
        .delete_job_tasks(&contract::job("big", 1).name)
        .expect("delete 300 slots at once");
    assert!(
        store
            .list_job_tasks(&contract::job("big", 1).name)
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store.task_epoch(&contract::tid("big", 299)).expect("epoch"),
        FencingToken(3)
    );
    // Slots come back one by one from their retired epochs.
    let back = contract::record("big", 7, 4, Some("b"));
    assert!(
        store
            .cas_task(FencingToken(3), &back)
            .expect("cas")
            .is_applied()
    );
    assert_eq!(
        store.task_epoch(&contract::tid("big", 8)).expect("epoch"),
        FencingToken(3)
    );
}

#[test]
fn job_names_that_would_break_the_key_layout_are_refused() {
    let cluster = cluster();
    let store = store_on(&cluster, &fresh_prefix("names"));
    let err = store
        .apply(&[WriteOp::PutJob(contract::job("a/b", 1))])
        .expect_err("slash");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("\"a/b\""), "{err}");
    let err = store
        .put_releases(&contract::releases("a/b", 1))
        .expect_err("slash in releases");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("\"a/b\""), "{err}");
    assert!(store.list_releases().expect("list").is_empty());
}

#[test]
fn corrupt_releases_name_their_key() {
    let cluster = cluster();
    let prefix = fresh_prefix("corrupt");
    let store = store_on(&cluster, &prefix);
    let raw = Raw::new(&cluster);
    let web = warden_core::JobName::new("web");
    raw.put(format!("{prefix}/releases/web").as_bytes(), "{not json");
    let err = store.get_releases(&web).expect_err("corrupt releases");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what == "releases/web"),
        "{err}"
    );
    let err = store.list_releases().expect_err("corrupt releases");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what == "releases/web"),
        "{err}"
    );
    // Another job's releases under this key are corrupt too.
    let api = serde_json::to_string(&contract::releases("api", 1)).expect("encode");
    raw.put(format!("{prefix}/releases/web").as_bytes(), &api);
    let err = store.get_releases(&web).expect_err("misplaced releases");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what == "releases/web"),
        "{err}"
    );
}

#[test]
fn a_prefix_with_foreign_keys_is_not_taken_for_a_store() {
    let cluster = cluster();
    let prefix = fresh_prefix("foreign");
    let raw = Raw::new(&cluster);
    raw.put(format!("{prefix}/something").as_bytes(), "else");
    let err = EtcdStore::connect(cluster.config(&prefix), StoreOptions::default())
        .expect_err("foreign keys");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not a Warden store"), "{err}");
}

#[test]
fn a_newer_schema_is_refused_at_connect() {
    let cluster = cluster();
    let prefix = fresh_prefix("schema");
    drop(store_on(&cluster, &prefix));
    let raw = Raw::new(&cluster);
    let key = format!("{prefix}/meta/schema_version");
    assert_eq!(raw.get(key.as_bytes()).as_deref(), Some(b"1".as_slice()));
    raw.put(key.as_bytes(), "99");
    let err = EtcdStore::connect(cluster.config(&prefix), StoreOptions::default())
        .expect_err("newer schema");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn an_unreachable_cluster_fails_fast_and_clearly_even_inside_a_runtime() {
    // A cluster of our own: it is killed halfway.
    let cluster = EtcdCluster::start(1).expect("start etcd");
    let mut cfg = cluster.config("/down");
    cfg.request_timeout = Duration::from_millis(500);
    let store = EtcdStore::connect(cfg.clone(), StoreOptions::default()).expect("connect");
    let store: Arc<dyn Store> = Arc::new(store);

    // Called straight from async code on a runtime worker thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let s = Arc::clone(&store);
    let g = rt
        .block_on(async move { tokio::spawn(async move { s.next_generation("a") }).await })
        .expect("task");
    assert_eq!(g.expect("generation from async code"), 1);

    cluster.kill(0);
    for _ in 0..3 {
        let s = Arc::clone(&store);
        let started = Instant::now();
        let r = rt
            .block_on(async move { tokio::spawn(async move { s.next_generation("a") }).await })
            .expect("task");
        let took = started.elapsed();
        let err = r.expect_err("etcd is down");
        assert!(err.is_unavailable(), "{err}");
        assert!(err.is_retryable(), "{err}");
        assert!(
            took < cfg.request_timeout + Duration::from_millis(900),
            "a call gives up at its deadline; took {took:?}"
        );
    }
    let err = store.list_jobs().expect_err("etcd is down");
    assert!(err.is_unavailable(), "{err}");

    // Connecting to a cluster that is down fails the same way, within dial + request timeout.
    let started = Instant::now();
    let err = EtcdStore::connect(cfg.clone(), StoreOptions::default()).expect_err("down");
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() < cfg.dial_timeout + cfg.request_timeout + Duration::from_secs(1));

    // Back up: the same handle works again.
    cluster.restart(0).expect("restart");
    cluster
        .wait_healthy(Duration::from_secs(20))
        .expect("healthy again");
    let deadline = Instant::now() + Duration::from_secs(20);
    let g = loop {
        match store.next_generation("a") {
            Ok(g) => break g,
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {}
            Err(e) => panic!("etcd is back, yet: {e}"),
        }
    };
    assert!(g >= 2, "generations never go back: {g}");
    // Dropping the store inside a runtime is fine too.
    rt.block_on(async move { drop(store) });
}

#[test]
fn events_are_trimmed_in_the_append_transaction() {
    let cluster = cluster();
    let cfg = cluster.config(&fresh_prefix("trim"));
    let store = EtcdStore::connect(
        cfg,
        StoreOptions {
            max_events: 2,
            ..StoreOptions::default()
        },
    )
    .expect("connect");
    for i in 1..=5 {
        assert_eq!(
            store
                .append_event(&NewEvent::new(i, "k", "m"))
                .expect("append"),
            i
        );
    }
    let raw = Raw::new(&cluster);
    let kept: Vec<u64> = store
        .events_since(0, 10)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(kept, [4, 5]);
    let first = format!("{}/events/{:020}", store.config().prefix, 1);
    assert_eq!(raw.get(first.as_bytes()), None);
    assert!(matches!(
        store.apply(&[]).expect("empty batch"),
        BatchOutcome::Applied
    ));
}

#[test]
fn losing_a_follower_member_is_invisible_and_losing_the_raft_leader_brief() {
    let cluster = EtcdCluster::start(3).expect("start etcd");
    let store = store_on(&cluster, "/minority");
    assert_eq!(store.next_generation("a").expect("all up"), 1);

    // A member that is not the raft leader: calls keep succeeding on the other two, also when
    // the client's balancer hands a request to the dead member's endpoint now and then.
    let leader = cluster.leader().expect("a raft leader");
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    for i in 2..=60 {
        assert_eq!(store.next_generation("a").expect("quorum of two"), i);
        assert!(
            store
                .list_jobs()
                .expect("read with quorum of two")
                .is_empty()
        );
    }
    cluster.restart(follower).expect("restart");
    cluster
        .wait_healthy(Duration::from_secs(20))
        .expect("healthy again");

    // The raft leader: writes fail (retryably) until the other two elect a new one, about an
    // election timeout; generations still never repeat.
    let leader = cluster.leader().expect("a raft leader");
    cluster.kill(leader);
    let started = Instant::now();
    let mut last = 60;
    let mut failures = 0;
    while last < 120 {
        match store.next_generation("a") {
            Ok(g) => {
                assert!(g > last, "generations strictly increase: {g} after {last}");
                last = g;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                failures += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "writes resume after a raft election: {e}"
                );
            }
        }
    }
    println!(
        "{failures} failed calls while the raft leader was replaced; 60 increments took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_user_and_password_reach_an_etcd_with_authentication_and_others_are_refused() {
    // A cluster of its own: authentication is cluster-wide.
    let cluster = EtcdCluster::start(1).expect("start etcd (Debian package etcd-server)");
    cluster
        .wait_healthy(Duration::from_secs(20))
        .expect("healthy");
    let raw = Raw::new(&cluster);
    let mut c = raw.client.clone();
    raw.rt.block_on(async {
        c.user_add("root", "s3cret-pw", None)
            .await
            .expect("user add");
        c.user_grant_role("root", "root").await.expect("grant root");
        c.auth_enable().await.expect("auth enable");
    });
    let cfg = cluster.config("/auth");
    let as_root = |password: &str| {
        cfg.clone().with_user(super::EtcdUser {
            name: "root".into(),
            password: password.into(),
        })
    };
    // The right password: connected, and the schema version written under the prefix.
    let store = EtcdStore::connect(as_root("s3cret-pw"), StoreOptions::default()).expect("connect");
    assert_eq!(store.next_generation("a").expect("a write"), 1);
    // A wrong password, and none at all, are refused with etcd's reason.
    let e = EtcdStore::connect(as_root("wrong"), StoreOptions::default())
        .expect_err("a wrong password");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    let e = EtcdStore::connect(cfg.clone(), StoreOptions::default()).expect_err("no user");
    assert!(
        e.to_string().contains("user name is empty") || e.to_string().contains("permission"),
        "{e}"
    );
    // The password is not in the configuration's Debug output (it goes to logs).
    assert!(!format!("{:?}", as_root("s3cret-pw")).contains("s3cret-pw"));
}
