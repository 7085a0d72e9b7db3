//! [`EtcdStore`]: the store in an etcd cluster, for a replicated control plane; and
//! [`Election`]: which of several `warden server` replicas leads.
//!
//! Behind the cargo feature `etcd`. Checked against etcd 3.4 (Debian's `etcd-server`).
//!
//! ## Same semantics as the embedded store
//!
//! Every [`Store`] method gives the answers [`RedbStore`] gives (the shared
//! contract suite runs against both). A write batch ([`Store::apply`]) runs the shared batch
//! logic in two phases:
//!
//! 1. one read transaction fetches, at one revision, every key the batch's conditions need
//!    (each fenced slot's record and its job's retired epochs, a job's task range, a recovery,
//!    the recovery counter), and the batch logic evaluates the conditions on that snapshot;
//! 2. one write transaction commits every write *if* each key read in phase 1 still has the
//!    `mod_revision` it had (0: still absent) and no key of a task range read was created or
//!    changed since (`mod_revision < snapshot + 1` over the range). If anything changed, the
//!    batch goes back to phase 1 and is evaluated again on the new state.
//!
//! So an epoch-checked write is linearizable under any number of concurrent writers in any number of
//! processes: it commits only if the slot's epoch is, at commit, the one the condition saw.
//! Counters (agent generations, event and recovery sequence numbers) are incremented the same
//! way: read the value and its `mod_revision`, write `value + 1` if the revision is unchanged,
//! retry otherwise.
//!
//! ## Key layout
//!
//! Under the configured prefix `P` (default `/warden`):
//!
//! | key | value |
//! |---|---|
//! | `P/meta/schema_version` | decimal u64 ([`SCHEMA_VERSION`]), checked at connect |
//! | `P/meta/next_event_seq`, `P/meta/next_recovery_seq` | decimal u64 counters |
//! | `P/jobs/{job}` | JSON [`JobSpec`] |
//! | `P/releases/{job}` | JSON [`JobReleases`]: the job's versions and rollout |
//! | `P/tasks/{job}/{slot:010}` | JSON [`TaskRecord`] (slot zero-padded, so a job's slots sort numerically) |
//! | `P/retired/{job}` | JSON object slot → epoch: the epochs of the job's deleted task slots |
//! | `P/generations/{agent}` | decimal u64: last generation handed out |
//! | `P/recoveries/{op}` | JSON [`StoredRecovery`] |
//! | `P/recovery_order/{seq:020}` | operation id, in insertion order |
//! | `P/events/{seq:020}` | JSON [`StoredEvent`] |
//! | `P/leader` | the [`Election`]'s leader key: JSON `{name, since_unix_ms}`, attached to the leader's lease |
//!
//! A job's retired epochs share one key, and deleting a job's tasks is one range delete, so
//! deleting a job of any size stays within etcd's limit of operations per transaction
//! (`--max-txn-ops`, default 128). A batch needs about two comparisons per epoch-checked write, so
//! keep batches under about 60 writes (the control plane's batches are a handful).
//!
//! ## The leader guard
//!
//! While a [`LeaderGuard`] is set ([`EtcdStore::set_guard`], done by the [`Election`] when it
//! wins), every write transaction also compares `create_revision(guard.key) == guard.term`.
//! When this replica's leader key expired, was deleted, or was created again by another
//! replica, the compare fails, nothing is written and the call returns
//! [`StoreError::NotLeader`]: a deposed leader's late write can never land.
//!
//! ## Calling it from async code
//!
//! [`Store`] is synchronous. The store owns a small tokio runtime (one worker thread,
//! `warden-etcd`) on which the etcd client runs; a call sends its request there and waits on a
//! `std` channel, so it works from any thread, including a tokio worker thread (it then blocks
//! that worker for the call's round trips, a few milliseconds). Every call has a deadline
//! ([`EtcdConfig::request_timeout`], default 2 s) and then fails with
//! [`StoreError::Unavailable`] ([`StoreError::is_unavailable`]): etcd unreachable, no quorum,
//! deadline exceeded. A write that timed out may or may not have been applied; every write
//! of this crate is safe to retry. A request that could not even connect (the client's
//! balancer hands requests to an endpoint that is down now and then) never left, and is sent
//! again within the deadline, so losing one member of three (other than the raft leader) is
//! invisible to callers.

mod config;
mod election;
#[cfg(feature = "etcd-testing")]
pub mod testing;
#[cfg(all(test, feature = "etcd-testing"))]
mod tests;

pub use config::{
    DEFAULT_DIAL_TIMEOUT, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT, EtcdConfig, EtcdTls, EtcdUser,
};
pub use election::{DEFAULT_MARGIN, DEFAULT_TTL, Election, ElectionState, LeaderInfo, LeaderValue};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use tokio::runtime::{Handle, Runtime};
use warden_core::planner::OperationId;
use warden_core::release::JobReleases;
use warden_core::{FencingToken, JobName, JobSpec, TaskId};

use crate::Store;
use crate::batch::{self, BatchRead, Prepared, SlotRead, Write};
use crate::codec::{self, SCHEMA_VERSION, keys};
use crate::error::{Result, StoreError};
use crate::model::{
    BatchOutcome, NewEvent, RecoveryQuery, StoreOptions, StoredEvent, StoredRecovery, TaskRecord,
    WriteOp,
};

#[cfg(doc)]
use crate::RedbStore;

/// Events appended in one etcd transaction: one put each, plus the counter, the trim and the
/// guard's compare stay well under etcd's default limit of 128 operations per transaction.
const EVENTS_PER_TXN: usize = 50;

/// Fences this replica's writes to its leadership: see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderGuard {
    /// The leader key (full etcd key, prefix included).
    pub key: Vec<u8>,
    /// The leader key's create revision when this replica won: its term.
    pub term: i64,
}

/// The store in an etcd cluster. See the [module documentation](self).
///
/// Cheap to share: clones (and elections made from it) use the same connection, runtime and
/// guard.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.shared.cfg.endpoints)
            .field("prefix", &self.shared.cfg.prefix)
            .field("guard", &self.shared.guard())
            .finish()
    }
}

/// The runtime the client runs on. Shut down in the background on drop, which (unlike
/// dropping a `Runtime`) is allowed inside another runtime.
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) struct Shared {
    client: Client,
    handle: Handle,
    keys: Keys,
    cfg: EtcdConfig,
    options: StoreOptions,
    guard: Mutex<Option<LeaderGuard>>,
    // Last field: dropped after the client.
    _runtime: OwnedRuntime,
}

impl Shared {
    fn guard(&self) -> Option<LeaderGuard> {
        self.guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_guard(&self, guard: Option<LeaderGuard>) {
        *self.guard.lock().unwrap_or_else(PoisonError::into_inner) = guard;
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.cfg.request_timeout
    }
}

/// Run `fut` on the store's runtime and wait for it on this thread, at most `deadline`.
fn run_on<T, F>(handle: &Handle, deadline: Duration, context: &'static str, fut: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let r = match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                context,
                message: format!("etcd did not answer within {deadline:?}"),
            }),
        };
        // The caller may have given up already.
        let _ = tx.send(r);
    });
    // The task enforces the deadline; this margin only covers a runtime that is gone or stuck.
    match rx.recv_timeout(deadline + Duration::from_millis(500)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(StoreError::Unavailable {
            context,
            message: format!("the etcd client runtime did not answer within {deadline:?}"),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Backend {
            context,
            message: "the etcd client runtime has stopped".into(),
        }),
    }
}

/// An etcd client error as a store error: transient ones are [`StoreError::Unavailable`].
pub(crate) fn from_etcd(context: &'static str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let unavailable = |message: String| StoreError::Unavailable { context, message };
    match e {
        E::GRpcStatus(s) => match s.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::NotFound
            | Code::AlreadyExists => StoreError::Backend {
                context,
                message: format!("etcd refused the request: {}", s.message()),
            },
            code => unavailable(format!("{code:?}: {}", s.message())),
        },
        E::TransportError(e) => unavailable(format!("transport error: {e}")),
        E::IoError(e) => unavailable(format!("I/O error: {e}")),
        E::WatchError(e) => unavailable(format!("watch failed: {e}")),
        E::LeaseKeepAliveError(e) => unavailable(format!("lease keep-alive failed: {e}")),
        other => StoreError::Backend {
            context,
            message: other.to_string(),
        },
    }
}

/// Whether `e` is a failure to connect: the request never left, so sending it again is safe,
/// writes included.
fn never_sent(e: &etcd_client::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        src = err.source();
    }
    false
}

/// Run `attempt` again while it fails to connect, for at most `budget`. The client's balancer
/// now and then hands a request to an endpoint that is down (its connection error is reported
/// on the next request rather than taking the endpoint out of rotation); another try goes to
/// another endpoint.
pub(crate) async fn resend_unsent<T, Fut>(
    budget: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> std::result::Result<T, etcd_client::Error>
where
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match attempt().await {
            Err(e) if never_sent(&e) && started.elapsed() + pause < budget => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// The key of everything stored, under the prefix. See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, rel: impl fmt::Display) -> Vec<u8> {
        format!("{}/{rel}", self.prefix).into_bytes()
    }
    /// The key relative to the prefix, for messages.
    fn rel(&self, key: &[u8]) -> String {
        let s = String::from_utf8_lossy(key);
        s.strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(&s)
            .to_owned()
    }
    fn all(&self) -> Vec<u8> {
        self.key("")
    }
    fn schema(&self) -> Vec<u8> {
        self.key("meta/schema_version")
    }
    fn next_event(&self) -> Vec<u8> {
        self.key("meta/next_event_seq")
    }
    fn next_recovery(&self) -> Vec<u8> {
        self.key("meta/next_recovery_seq")
    }
    fn job(&self, name: &str) -> Vec<u8> {
        self.key(keys::job(name))
    }
    fn jobs(&self) -> Vec<u8> {
        self.key("jobs/")
    }
    fn releases(&self, job: &str) -> Vec<u8> {
        self.key(keys::releases(job))
    }
    fn all_releases(&self) -> Vec<u8> {
        self.key("releases/")
    }
    fn task(&self, job: &str, index: u32) -> Vec<u8> {
        self.key(format_args!("tasks/{job}/{index:010}"))
    }
    fn job_tasks(&self, job: &str) -> Vec<u8> {
        self.key(format_args!("tasks/{job}/"))
    }
    fn tasks(&self) -> Vec<u8> {
        self.key("tasks/")
    }
    fn retired(&self, job: &str) -> Vec<u8> {
        self.key(format_args!("retired/{job}"))
    }
    fn generation(&self, agent: &str) -> Vec<u8> {
        self.key(keys::generation(agent))
    }
    fn recovery(&self, op: &str) -> Vec<u8> {
        self.key(keys::recovery(op))
    }
    fn recoveries(&self) -> Vec<u8> {
        self.key("recoveries/")
    }
    fn recovery_order(&self, seq: u64) -> Vec<u8> {
        self.key(format_args!("recovery_order/{seq:020}"))
    }
    fn recovery_orders(&self) -> Vec<u8> {
        self.key("recovery_order/")
    }
    fn event(&self, seq: u64) -> Vec<u8> {
        self.key(format_args!("events/{seq:020}"))
    }
    fn events(&self) -> Vec<u8> {
        self.key("events/")
    }
    pub(crate) fn leader(&self) -> Vec<u8> {
        self.key("leader")
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A decimal counter stored under `key`.
fn parse_u64(keys: &Keys, key: &[u8], bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            StoreError::corrupt(
                keys.rel(key),
                format!(
                    "expected a decimal number, found {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            )
        })
}

/// Reject job names that would break the key layout (`tasks/{job}/...`).
fn check_job_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(StoreError::invalid(
            format!("job name {name:?}"),
            "must be non-empty and contain no '/'",
        ));
    }
    Ok(())
}

/// What a batch's conditions read, fetched at one revision (phase 1).
struct Snapshot<'k> {
    keys: &'k Keys,
    revision: i64,
    /// Point reads: value and mod revision, `None` when absent.
    points: HashMap<Vec<u8>, Option<(Vec<u8>, i64)>>,
    /// Task ranges of jobs: (slot, value) in slot order.
    ranges: HashMap<String, Vec<(u32, Vec<u8>)>>,
}

impl Snapshot<'_> {
    fn point(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        match self.points.get(key) {
            Some(v) => Ok(v.as_ref().map(|(b, _)| b.as_slice())),
            None => Err(StoreError::Backend {
                context: "evaluate write batch",
                message: format!("key {} was not read in phase 1", self.keys.rel(key)),
            }),
        }
    }

    fn retired_map(&self, job: &str) -> Result<BTreeMap<u32, u64>> {
        let key = self.keys.retired(job);
        match self.point(&key)? {
            Some(bytes) => codec::decode(&self.keys.rel(&key), bytes),
            None => Ok(BTreeMap::new()),
        }
    }

    /// The comparisons that make the commit conditional on this snapshot.
    fn compares(&self) -> Vec<Compare> {
        let mut out = Vec::with_capacity(self.points.len() + self.ranges.len());
        for (key, v) in &self.points {
            let rev = v.as_ref().map_or(0, |(_, r)| *r);
            out.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        }
        for job in self.ranges.keys() {
            out.push(
                Compare::mod_revision(self.keys.job_tasks(job), CompareOp::Less, self.revision + 1)
                    .with_prefix(),
            );
        }
        out
    }
}

impl SlotRead for Snapshot<'_> {
    fn task(&self, job: &str, index: u32) -> Result<Option<TaskRecord>> {
        let key = self.keys.task(job, index);
        let bytes = match self.points.get(&key) {
            Some(v) => v.as_ref().map(|(b, _)| b.as_slice()),
            None => match self.ranges.get(job) {
                Some(r) => r
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, b)| b.as_slice()),
                None => self.point(&key)?,
            },
        };
        bytes.map(|b| codec::decode_task(job, index, b)).transpose()
    }

    fn retired(&self, job: &str, index: u32) -> Result<Option<FencingToken>> {
        Ok(self.retired_map(job)?.get(&index).map(|e| FencingToken(*e)))
    }
}

impl BatchRead for Snapshot<'_> {
    fn job_tasks(&self, job: &str) -> Result<Vec<TaskRecord>> {
        let range = self.ranges.get(job).ok_or_else(|| StoreError::Backend {
            context: "evaluate write batch",
            message: format!("the tasks of job {job} were not read in phase 1"),
        })?;
        range
            .iter()
            .map(|(i, b)| codec::decode_task(job, *i, b))
            .collect()
    }

    fn recovery(&self, op: &str) -> Result<Option<StoredRecovery>> {
        self.point(&self.keys.recovery(op))?
            .map(|b| codec::decode_recovery(op, b))
            .transpose()
    }

    fn next_recovery_seq(&self) -> Result<u64> {
        let key = self.keys.next_recovery();
        Ok(match self.point(&key)? {
            Some(b) => parse_u64(self.keys, &key, b)?,
            None => 1,
        })
    }
}

/// The slot number at the end of a task key.
fn slot_of(keys: &Keys, key: &[u8]) -> Result<u32> {
    let rel = keys.rel(key);
    rel.rsplit_once('/')
        .and_then(|(_, i)| i.parse().ok())
        .ok_or_else(|| StoreError::corrupt(rel.clone(), "the key does not end in a slot number"))
}

impl EtcdStore {
    /// Connect to the cluster of `cfg` and check (or, on an empty prefix, write) the schema
    /// version. Fails with [`StoreError::Unavailable`] if no endpoint answers within
    /// `dial_timeout + request_timeout`, [`StoreError::SchemaTooNew`] for a newer schema, and
    /// [`StoreError::Corrupt`] for a prefix holding keys but no schema version.
    pub fn connect(cfg: EtcdConfig, opts: StoreOptions) -> Result<EtcdStore> {
        cfg.validate()?;
        opts.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("warden-etcd")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                context: "start the etcd client runtime",
                source,
            })?;
        let runtime = OwnedRuntime(Some(runtime));
        let handle = match &runtime.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime was just built"),
        };
        let endpoints = cfg.endpoints.clone();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.dial_timeout)
            .with_require_leader(true);
        if let Some(tls) = &cfg.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(t);
        }
        if let Some(user) = &cfg.user {
            options = options.with_user(user.name.clone(), user.password.clone());
        }
        let client = run_on(
            &handle,
            cfg.dial_timeout + cfg.request_timeout,
            "connect to etcd",
            async move {
                Client::connect(endpoints, Some(options))
                    .await
                    .map_err(|e| from_etcd("connect to etcd", e))
            },
        )?;
        let store = EtcdStore {
            shared: Arc::new(Shared {
                client,
                handle,
                keys: Keys {
                    prefix: cfg.prefix.clone(),
                },
                cfg,
                options: opts,
                guard: Mutex::new(None),
                _runtime: runtime,
            }),
        };
        store.init_schema()?;
        Ok(store)
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.shared.cfg
    }

    /// The key of this prefix's [`Election`]: `<prefix>/leader`.
    pub fn leader_key(&self) -> Vec<u8> {
        self.shared.keys.leader()
    }

    /// Fence every later write to `guard` (see the [module docs](self)), or stop fencing.
    pub fn set_guard(&self, guard: Option<LeaderGuard>) {
        self.shared.set_guard(guard);
    }

    /// The guard in force, if any.
    pub fn guard(&self) -> Option<LeaderGuard> {
        self.shared.guard()
    }

    /// An election on this store's cluster and prefix; `name` is this replica's advertised
    /// address (its `--http-addr`, as given), stored as the leader key's value. `ttl` is the
    /// lease (at least 1 s; etcd counts whole seconds, so it is rounded up for the lease),
    /// `margin` how long before the lease would expire this replica stops leading (at most
    /// `ttl / 2`) ([`DEFAULT_TTL`], [`DEFAULT_MARGIN`]). Run it with [`Election::run`]; it
    /// sets this store's guard when it wins.
    pub fn election(&self, name: String, ttl: Duration, margin: Duration) -> Election {
        Election::new(Arc::clone(&self.shared), name, ttl, margin)
    }

    /// Run `f` on the store's runtime with the call deadline.
    fn call<T, F, Fut>(&self, context: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = f(Arc::clone(&self.shared));
        run_on(
            &self.shared.handle,
            self.shared.cfg.request_timeout,
            context,
            fut,
        )
    }

    fn init_schema(&self) -> Result<()> {
        const CONTEXT: &str = "check the store's schema version";
        self.call(CONTEXT, |s| async move {
            let keys = &s.keys;
            let schema = s.range(keys.schema(), None, CONTEXT).await?;
            if schema.kvs().is_empty() {
                // Keys but no schema version (other than an election's): not a Warden store.
                let leader = keys.leader();
                let options = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(2);
                let some = s.range(keys.all(), Some(options), CONTEXT).await?;
                if let Some(kv) = some.kvs().iter().find(|kv| kv.key() != leader.as_slice()) {
                    return Err(StoreError::corrupt(
                        format!("etcd prefix {}", s.cfg.prefix),
                        format!(
                            "it holds keys (e.g. {}) but no schema version: not a Warden store",
                            String::from_utf8_lossy(kv.key())
                        ),
                    ));
                }
            }
            let create = Txn::new()
                .when([Compare::version(keys.schema(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(keys.schema(), SCHEMA_VERSION.to_string(), None)])
                .or_else([TxnOp::get(keys.schema(), None)]);
            let resp = s.txn(create, CONTEXT).await?;
            if resp.succeeded() {
                return Ok(());
            }
            for r in resp.op_responses() {
                if let TxnOpResponse::Get(g) = r
                    && let Some(kv) = g.kvs().first()
                {
                    return codec::check_schema(parse_u64(keys, kv.key(), kv.value())?);
                }
            }
            Err(StoreError::Backend {
                context: CONTEXT,
                message: "etcd answered the schema check without the schema key".into(),
            })
        })
    }
}

/// A job's retired epochs as this batch leaves them, starting from the snapshot's.
fn retired_entry<'m>(
    retired: &'m mut BTreeMap<String, BTreeMap<u32, u64>>,
    snap: &Snapshot<'_>,
    job: String,
) -> Result<&'m mut BTreeMap<u32, u64>> {
    if !retired.contains_key(&job) {
        let map = snap.retired_map(&job)?;
        retired.insert(job.clone(), map);
    }
    Ok(retired.entry(job).or_default())
}

/// Which keys a batch's conditions read: point keys and jobs whose task range is read.
fn plan(keys: &Keys, ops: &[WriteOp]) -> Result<(BTreeSet<Vec<u8>>, BTreeSet<String>)> {
    let mut points = BTreeSet::new();
    let mut ranges = BTreeSet::new();
    for op in ops {
        match op {
            WriteOp::PutJob(spec) => check_job_name(spec.name.as_str())?,
            WriteOp::DeleteJob(_) => {}
            WriteOp::PutReleases(r) => check_job_name(r.job.as_str())?,
            WriteOp::DeleteReleases(_) => {}
            WriteOp::CasTask { record, .. } => {
                let job = record.task.job.as_str();
                check_job_name(job)?;
                points.insert(keys.task(job, record.task.index));
                points.insert(keys.retired(job));
            }
            WriteOp::PutTaskState { task, .. } => {
                let job = task.job.as_str();
                check_job_name(job)?;
                points.insert(keys.task(job, task.index));
                points.insert(keys.retired(job));
            }
            WriteOp::DeleteJobTasks(job) => {
                check_job_name(job.as_str())?;
                ranges.insert(job.as_str().to_owned());
                points.insert(keys.retired(job.as_str()));
            }
            WriteOp::UpsertRecovery { record, .. } => {
                points.insert(keys.recovery(&record.op.0));
                points.insert(keys.next_recovery());
            }
        }
    }
    Ok((points, ranges))
}

impl Shared {
    /// How long one request is sent again while it cannot connect.
    fn resend_budget(&self) -> Duration {
        self.cfg.request_timeout * 3 / 4
    }

    /// A transaction.
    async fn txn(&self, txn: Txn, context: &'static str) -> Result<TxnResponse> {
        resend_unsent(self.resend_budget(), || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| from_etcd(context, e))
    }

    /// A range read.
    async fn range(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
        context: &'static str,
    ) -> Result<GetResponse> {
        resend_unsent(self.resend_budget(), || {
            let mut kv = self.client.kv_client();
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
        .map_err(|e| from_etcd(context, e))
    }

    /// Phase 1: read what `ops` need at one revision.
    async fn snapshot(&self, ops: &[WriteOp], context: &'static str) -> Result<Snapshot<'_>> {
        let (points, jobs) = plan(&self.keys, ops)?;
        self.read_snapshot(points, jobs, context).await
    }

    async fn read_snapshot(
        &self,
        points: BTreeSet<Vec<u8>>,
        jobs: BTreeSet<String>,
        context: &'static str,
    ) -> Result<Snapshot<'_>> {
        let mut snap = Snapshot {
            keys: &self.keys,
            revision: 0,
            points: HashMap::new(),
            ranges: HashMap::new(),
        };
        if points.is_empty() && jobs.is_empty() {
            return Ok(snap);
        }
        let mut reads: Vec<TxnOp> = points.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
        reads.extend(jobs.iter().map(|j| {
            TxnOp::get(
                self.keys.job_tasks(j),
                Some(GetOptions::new().with_prefix()),
            )
        }));
        let resp = self.txn(Txn::new().and_then(reads), context).await?;
        snap.revision = resp.header().map_or(0, |h| h.revision());
        let mut answers = resp.op_responses().into_iter();
        let mut next = || match answers.next() {
            Some(TxnOpResponse::Get(g)) => Ok(g),
            _ => Err(StoreError::Backend {
                context,
                message: "etcd answered a read transaction with fewer reads than asked".into(),
            }),
        };
        for key in points {
            let g = next()?;
            let v = g
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.mod_revision()));
            snap.points.insert(key, v);
        }
        for job in jobs {
            let g = next()?;
            let mut range = Vec::with_capacity(g.kvs().len());
            for kv in g.kvs() {
                range.push((slot_of(&self.keys, kv.key())?, kv.value().to_vec()));
            }
            snap.ranges.insert(job, range);
        }
        Ok(snap)
    }

    /// Phase 2's writes as etcd operations; each key once.
    fn translate(&self, snap: &Snapshot<'_>, writes: Vec<Write>) -> Result<Vec<TxnOp>> {
        let keys = &self.keys;
        let mut ops = Vec::with_capacity(writes.len() + 2);
        let mut retired: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        let mut cleared = BTreeSet::new();
        let mut next_recovery: Option<u64> = None;
        for w in writes {
            match w {
                Write::PutJob { name, bytes } => ops.push(TxnOp::put(keys.job(&name), bytes, None)),
                Write::DeleteJob { name } => ops.push(TxnOp::delete(keys.job(&name), None)),
                Write::PutReleases { name, bytes } => {
                    ops.push(TxnOp::put(keys.releases(&name), bytes, None));
                }
                Write::DeleteReleases { name } => {
                    ops.push(TxnOp::delete(keys.releases(&name), None));
                }
                Write::PutTask { job, index, bytes } => {
                    ops.push(TxnOp::put(keys.task(&job, index), bytes, None));
                }
                Write::DeleteTask { job, .. } => {
                    cleared.insert(job);
                }
                Write::PutRetired { job, index, epoch } => {
                    retired_entry(&mut retired, snap, job)?.insert(index, epoch.0);
                }
                Write::DeleteRetired { job, index } => {
                    retired_entry(&mut retired, snap, job)?.remove(&index);
                }
                Write::PutRecovery {
                    op,
                    seq,
                    new,
                    bytes,
                } => {
                    ops.push(TxnOp::put(keys.recovery(&op), bytes, None));
                    if new {
                        ops.push(TxnOp::put(keys.recovery_order(seq), op, None));
                        let after = seq.saturating_add(1);
                        next_recovery = Some(next_recovery.map_or(after, |n| n.max(after)));
                    }
                }
            }
        }
        // Every live task of a cleared job is deleted (the batch logic read the whole range,
        // and the commit compares it), so one range delete does it.
        for job in cleared {
            ops.push(TxnOp::delete(
                keys.job_tasks(&job),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        for (job, map) in retired {
            let key = keys.retired(&job);
            if map.is_empty() {
                ops.push(TxnOp::delete(key, None));
            } else {
                let bytes = codec::encode(&keys.rel(&key), &map)?;
                ops.push(TxnOp::put(key, bytes, None));
            }
        }
        if let Some(n) = next_recovery {
            ops.push(TxnOp::put(keys.next_recovery(), n.to_string(), None));
        }
        Ok(ops)
    }

    /// Commit `writes` if every comparison (and the guard, when set) holds. `Ok(false)`: a
    /// comparison of the data failed, read again.
    async fn commit(
        &self,
        mut compares: Vec<Compare>,
        writes: Vec<TxnOp>,
        guard: Option<&LeaderGuard>,
        context: &'static str,
    ) -> Result<bool> {
        let mut failure = Vec::new();
        if let Some(g) = guard {
            compares.push(Compare::create_revision(
                g.key.clone(),
                CompareOp::Equal,
                g.term,
            ));
            failure.push(TxnOp::get(g.key.clone(), None));
        }
        let resp = self
            .txn(
                Txn::new().when(compares).and_then(writes).or_else(failure),
                context,
            )
            .await?;
        if resp.succeeded() {
            return Ok(true);
        }
        if let Some(g) = guard {
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.create_revision())),
                _ => None,
            });
            if holder.flatten() != Some(g.term) {
                return Err(StoreError::NotLeader { context });
            }
        }
        Ok(false)
    }

    async fn apply(&self, ops: &[WriteOp]) -> Result<BatchOutcome> {
        const CONTEXT: &str = "apply write batch";
        let guard = self.guard();
        loop {
            let snap = self.snapshot(ops, CONTEXT).await?;
            let writes = match batch::prepare(&snap, ops)? {
                Prepared::Conflict(outcome) => return Ok(outcome),
                Prepared::Writes(writes) => writes,
            };
            let compares = snap.compares();
            let writes = self.translate(&snap, writes)?;
            drop(snap);
            if self
                .commit(compares, writes, guard.as_ref(), CONTEXT)
                .await?
            {
                return Ok(BatchOutcome::Applied);
            }
        }
    }

    /// A counter's value (0 when absent) and mod revision (0 when absent).
    async fn counter(&self, key: &[u8], context: &'static str) -> Result<(u64, i64)> {
        let resp = self.range(key.to_vec(), None, context).await?;
        match resp.kvs().first() {
            Some(kv) => Ok((parse_u64(&self.keys, key, kv.value())?, kv.mod_revision())),
            None => Ok((0, 0)),
        }
    }

    async fn next_generation(&self, agent: &str) -> Result<u64> {
        const CONTEXT: &str = "increment agent generation";
        let guard = self.guard();
        let key = self.keys.generation(agent);
        loop {
            let (current, rev) = self.counter(&key, CONTEXT).await?;
            let next = current.checked_add(1).ok_or_else(|| {
                StoreError::invalid(keys::generation(agent), "generation counter exhausted")
            })?;
            let cmp = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)];
            let put = vec![TxnOp::put(key.clone(), next.to_string(), None)];
            if self.commit(cmp, put, guard.as_ref(), CONTEXT).await? {
                return Ok(next);
            }
        }
    }

    async fn append_events(&self, batch: &[NewEvent]) -> Result<u64> {
        let mut last = 0;
        for chunk in batch.chunks(EVENTS_PER_TXN) {
            last = self.append_chunk(chunk).await?;
        }
        Ok(last)
    }

    /// Append `chunk` (not empty, at most [`EVENTS_PER_TXN`]) in one transaction.
    async fn append_chunk(&self, chunk: &[NewEvent]) -> Result<u64> {
        const CONTEXT: &str = "append event";
        let guard = self.guard();
        let key = self.keys.next_event();
        let max = self.options.max_events;
        loop {
            let (stored, rev) = self.counter(&key, CONTEXT).await?;
            let first = stored.max(1);
            let mut writes = Vec::with_capacity(chunk.len() + 2);
            let mut seq = first;
            let mut last = first;
            for event in chunk {
                let bytes = codec::encode(&keys::event(seq), &event.stored(seq))?;
                writes.push(TxnOp::put(self.keys.event(seq), bytes, None));
                last = seq;
                seq = seq
                    .checked_add(1)
                    .ok_or_else(|| StoreError::invalid(CONTEXT, "sequence numbers exhausted"))?;
            }
            writes.push(TxnOp::put(key.clone(), seq.to_string(), None));
            // Sequence numbers are dense, so keeping `max` events means keeping (last - max, last].
            let cutoff = last.saturating_sub(max);
            if cutoff > 0 {
                writes.push(TxnOp::delete(
                    self.keys.events(),
                    Some(DeleteOptions::new().with_range(self.keys.event(cutoff + 1))),
                ));
            }
            let cmp = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)];
            if self.commit(cmp, writes, guard.as_ref(), CONTEXT).await? {
                return Ok(last);
            }
        }
    }

    async fn get(&self, key: Vec<u8>, context: &'static str) -> Result<Option<Vec<u8>>> {
        let mut resp = self.range(key, None, context).await?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    async fn get_prefix(
        &self,
        prefix: Vec<u8>,
        context: &'static str,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut resp = self
            .range(prefix, Some(GetOptions::new().with_prefix()), context)
            .await?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .map(|kv| kv.into_key_value())
            .collect())
    }
}

impl Store for EtcdStore {
    fn apply(&self, ops: &[WriteOp]) -> Result<BatchOutcome> {
        let ops = ops.to_vec();
        self.call("apply write batch", |s| async move { s.apply(&ops).await })
    }

    fn get_job(&self, name: &JobName) -> Result<Option<JobSpec>> {
        let name = name.as_str().to_owned();
        self.call("read job", |s| async move {
            s.get(s.keys.job(&name), "read job")
                .await?
                .map(|b| codec::decode_job(&name, &b))
                .transpose()
        })
    }

    fn list_jobs(&self) -> Result<Vec<JobSpec>> {
        self.call("list jobs", |s| async move {
            let jobs = s.get_prefix(s.keys.jobs(), "list jobs").await?;
            jobs.iter()
                .map(|(k, v)| {
                    let rel = s.keys.rel(k);
                    let name = rel.strip_prefix("jobs/").unwrap_or(&rel);
                    codec::decode_job(name, v)
                })
                .collect()
        })
    }

    fn get_releases(&self, job: &JobName) -> Result<Option<JobReleases>> {
        let job = job.as_str().to_owned();
        self.call("read releases", |s| async move {
            s.get(s.keys.releases(&job), "read releases")
                .await?
                .map(|b| codec::decode_releases(&job, &b))
                .transpose()
        })
    }

    fn list_releases(&self) -> Result<Vec<JobReleases>> {
        self.call("list releases", |s| async move {
            let all = s.get_prefix(s.keys.all_releases(), "list releases").await?;
            all.iter()
                .map(|(k, v)| {
                    let rel = s.keys.rel(k);
                    let job = rel.strip_prefix("releases/").unwrap_or(&rel);
                    codec::decode_releases(job, v)
                })
                .collect()
        })
    }

    fn get_task(&self, task: &TaskId) -> Result<Option<TaskRecord>> {
        let (job, index) = codec::task_parts(task);
        let job = job.to_owned();
        self.call("read task", |s| async move {
            s.get(s.keys.task(&job, index), "read task")
                .await?
                .map(|b| codec::decode_task(&job, index, &b))
                .transpose()
        })
    }

    fn task_epoch(&self, task: &TaskId) -> Result<FencingToken> {
        let (job, index) = codec::task_parts(task);
        let job = job.to_owned();
        self.call("read task epoch", |s| async move {
            let points = BTreeSet::from([s.keys.task(&job, index), s.keys.retired(&job)]);
            let snap = s
                .read_snapshot(points, BTreeSet::new(), "read task epoch")
                .await?;
            Ok(batch::slot(&snap, &job, index)?.1)
        })
    }

    fn list_tasks(&self) -> Result<Vec<TaskRecord>> {
        self.call("list tasks", |s| async move {
            let all = s.get_prefix(s.keys.tasks(), "list tasks").await?;
            let mut out = Vec::with_capacity(all.len());
            for (k, v) in &all {
                let rel = s.keys.rel(k);
                let job = rel
                    .strip_prefix("tasks/")
                    .and_then(|r| r.rsplit_once('/'))
                    .map(|(job, _)| job)
                    .ok_or_else(|| StoreError::corrupt(rel.clone(), "not a task key"))?;
                out.push(codec::decode_task(job, slot_of(&s.keys, k)?, v)?);
            }
            // Keys sort bytewise ("a-b/" before "a/"); the contract is by job name, then slot.
            out.sort_by(|a, b| a.task.cmp(&b.task));
            Ok(out)
        })
    }

    fn list_job_tasks(&self, job: &JobName) -> Result<Vec<TaskRecord>> {
        let job = job.as_str().to_owned();
        self.call("list job tasks", |s| async move {
            if job.contains('/') {
                return Ok(Vec::new());
            }
            let all = s
                .get_prefix(s.keys.job_tasks(&job), "list job tasks")
                .await?;
            all.iter()
                .map(|(k, v)| codec::decode_task(&job, slot_of(&s.keys, k)?, v))
                .collect()
        })
    }

    fn next_generation(&self, agent: &str) -> Result<u64> {
        let agent = agent.to_owned();
        self.call("increment agent generation", |s| async move {
            s.next_generation(&agent).await
        })
    }

    fn generation(&self, agent: &str) -> Result<Option<u64>> {
        let agent = agent.to_owned();
        self.call("read agent generation", |s| async move {
            let key = s.keys.generation(&agent);
            s.get(key.clone(), "read agent generation")
                .await?
                .map(|b| parse_u64(&s.keys, &key, &b))
                .transpose()
        })
    }

    fn get_recovery(&self, op: &OperationId) -> Result<Option<StoredRecovery>> {
        let op = op.0.clone();
        self.call("read recovery", |s| async move {
            s.get(s.keys.recovery(&op), "read recovery")
                .await?
                .map(|b| codec::decode_recovery(&op, &b))
                .transpose()
        })
    }

    fn list_recoveries(&self, query: &RecoveryQuery) -> Result<Vec<StoredRecovery>> {
        const CONTEXT: &str = "list recoveries";
        let query = query.clone();
        self.call(CONTEXT, |s| async move {
            // Both ranges at one revision, so the order and the records agree.
            let prefix = || Some(GetOptions::new().with_prefix());
            let resp = s
                .txn(
                    Txn::new().and_then([
                        TxnOp::get(s.keys.recovery_orders(), prefix()),
                        TxnOp::get(s.keys.recoveries(), prefix()),
                    ]),
                    CONTEXT,
                )
                .await?;
            let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            });
            let (Some(order), Some(records)) = (gets.next(), gets.next()) else {
                return Err(StoreError::Backend {
                    context: CONTEXT,
                    message: "etcd answered with fewer reads than asked".into(),
                });
            };
            let records: HashMap<&[u8], &[u8]> = records
                .kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value()))
                .collect();
            let limit = query.limit.unwrap_or(usize::MAX);
            let order: Box<dyn Iterator<Item = _>> = if query.newest_first {
                Box::new(order.kvs().iter().rev())
            } else {
                Box::new(order.kvs().iter())
            };
            let mut out = Vec::new();
            for kv in order {
                if out.len() >= limit {
                    break;
                }
                let rel = s.keys.rel(kv.key());
                let seq: u64 = rel
                    .rsplit_once('/')
                    .and_then(|(_, n)| n.parse().ok())
                    .ok_or_else(|| StoreError::corrupt(rel.clone(), "not a sequence number"))?;
                let op = String::from_utf8_lossy(kv.value()).into_owned();
                let bytes = records
                    .get(s.keys.recovery(&op).as_slice())
                    .ok_or_else(|| {
                        StoreError::corrupt(
                            rel.clone(),
                            format!("names operation {op}, which is not stored"),
                        )
                    })?;
                let rec = codec::decode_recovery(&op, bytes)?;
                if rec.seq != seq {
                    return Err(StoreError::corrupt(
                        rel,
                        format!("names operation {op}, stored with sequence {}", rec.seq),
                    ));
                }
                if query.admits(&rec) {
                    out.push(rec);
                }
            }
            Ok(out)
        })
    }

    fn append_event(&self, event: &NewEvent) -> Result<u64> {
        self.append_events(std::slice::from_ref(event))
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<u64> {
        if events.is_empty() {
            return self.last_event_seq();
        }
        let events = events.to_vec();
        self.call(
            "append event",
            |s| async move { s.append_events(&events).await },
        )
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        const CONTEXT: &str = "read events";
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.call(CONTEXT, |s| async move {
            let options = GetOptions::new()
                .with_range(prefix_end(&s.keys.events()))
                .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            let resp = s.range(s.keys.event(from), Some(options), CONTEXT).await?;
            resp.kvs()
                .iter()
                .map(|kv| {
                    let rel = s.keys.rel(kv.key());
                    let seq = rel
                        .rsplit_once('/')
                        .and_then(|(_, n)| n.parse().ok())
                        .ok_or_else(|| StoreError::corrupt(rel.clone(), "not a sequence number"))?;
                    codec::decode_event(seq, kv.value())
                })
                .collect()
        })
    }

    fn last_event_seq(&self) -> Result<u64> {
        self.call("read event counter", |s| async move {
            let (next, _) = s
                .counter(&s.keys.next_event(), "read event counter")
                .await?;
            Ok(next.saturating_sub(1))
        })
    }
}
