//! # warden-store
//!
//! The control plane's persistent state, behind one [`Store`] trait with the same semantics
//! in every back end:
//!
//! - [`RedbStore`]: an embedded [redb](https://www.redb.org) file (`dir/warden.redb`), the
//!   default for a single server. Every write is its own committed, fsynced transaction, so
//!   whatever a call acknowledged survives `kill -9` and power loss.
//! - [`MemStore`]: the same semantics in memory, for tests and simulations of other crates.
//! - `etcd::EtcdStore` (cargo feature `etcd`): the same semantics in an etcd cluster, for a
//!   replicated control plane, with leader election (`etcd::Election`) and a leader guard
//!   that fences a deposed leader's writes. See `docs/etcd.md`.
//!
//! What it keeps: jobs (desired state), each job's releases (its numbered versions and its
//! rollout, [`JobReleases`]), one [`TaskRecord`] per task slot (observed state, written only
//! through *fenced* writes), a per-agent generation counter, recovery records, and a bounded
//! append-only event log.
//!
//! ```
//! use warden_core::planner::SlotState;
//! use warden_core::{AgentId, FencingToken, JobName, TaskId};
//! use warden_store::{CasOutcome, MemStore, Store, TaskRecord};
//!
//! let store = MemStore::new();
//! let task = TaskId::new(JobName::new("cron"), 0);
//! let assign = |epoch, agent: &str| TaskRecord {
//!     task: task.clone(),
//!     epoch: FencingToken(epoch),
//!     agent: Some(AgentId::new(agent, 1)),
//!     state: SlotState::Starting,
//!     failures: 0,
//!     updated_unix_ms: 0,
//!     replica: None,
//!     version: 0,
//! };
//! // First assignment: the slot has no epoch yet.
//! assert!(store.cas_task(FencingToken::NONE, &assign(1, "a"))?.is_applied());
//! // Rescheduled to b at epoch 2.
//! assert!(store.cas_task(FencingToken(1), &assign(2, "b"))?.is_applied());
//! // A controller working from an old view loses instead of overwriting b's assignment...
//! assert!(matches!(
//!     store.cas_task(FencingToken(1), &assign(2, "c"))?,
//!     CasOutcome::Conflict { stored_epoch: FencingToken(2), .. }
//! ));
//! // ...and a late report from a's copy (epoch 1) is ignored.
//! let report = store.put_task_state(&task, FencingToken(1), SlotState::Failed, 1, 0)?;
//! assert!(!report.is_applied());
//! assert_eq!(store.get_task(&task)?.map(|r| r.epoch), Some(FencingToken(2)));
//! # Ok::<(), warden_store::StoreError>(())
//! ```
//!
//! ## Why a synchronous trait
//!
//! [`Store`] is synchronous, `Send + Sync + 'static`, and dyn-compatible: the server picks a
//! back end from its configuration at run time and holds an `Arc<dyn Store>`, which a trait
//! with `async fn`s or `-> impl Future` methods could not offer without boxing every call.
//! redb is synchronous and a write is one fsync (about a millisecond), so async runtime code
//! calls the store inside `tokio::task::spawn_blocking`; tests, simulations and the pure core's
//! drivers call it directly. The etcd back end owns a small runtime for its client and waits
//! for it on a `std` channel, so it may be called from anywhere, async code included.
//!
//! ## Epoch-checked writes
//!
//! Every task slot has an epoch (its [`FencingToken`]) that only grows. A write of a task
//! record names the epoch it expects to replace ([`Store::cas_task`]); it applies only if the
//! slot's epoch is exactly that, and the new epoch may never be lower ([`StoreError::EpochRegression`]).
//! A state report ([`Store::put_task_state`]) applies only to the assignment it is about, so a
//! report from an agent that lost its task can never overwrite the newer assignment. Deleting
//! a job's tasks ([`Store::delete_job_tasks`]) keeps each slot's last epoch, so a job created
//! again under the same name continues from there ([`Store::task_epoch`]) and an old copy
//! still running somewhere can never be taken for the new one.
//!
//! Several writes can be committed atomically with [`Store::apply`]: every condition is
//! checked against the state before the batch, then all writes commit or none — the semantics
//! of an etcd transaction, which is why a batch may touch each key only once. The
//! single-record methods are that same batch with one write, so they share its semantics in
//! every back end.
//!
//! ## On disk
//!
//! Values are JSON, guarded by one schema version for the whole store ([`SCHEMA_VERSION`]); a
//! store written by a newer schema is refused at open ([`StoreError::SchemaTooNew`]). A value
//! that cannot be read back names its key ([`StoreError::Corrupt`]); nothing read from disk is
//! unwrapped. The key layout is documented in [`redb_store`].
//!
//! ## Contract tests
//!
//! With the `contract-tests` feature, [`contract`] holds the behaviour every back end must
//! show, as plain functions, and [`contract_tests!`] turns them into one `#[test]` each for a
//! given back end. This crate runs them for [`MemStore`] and [`RedbStore`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod codec;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod mem;
pub mod model;
pub mod redb_store;

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;

pub use codec::SCHEMA_VERSION;
pub use error::{Result, StoreError};
pub use mem::MemStore;
pub use model::{
    BatchOutcome, CasOutcome, DEFAULT_MAX_EVENTS, NewEvent, RecoveryQuery, StoreOptions,
    StoredEvent, StoredRecovery, TaskRecord, WriteOp,
};
pub use redb_store::RedbStore;

use warden_core::planner::{OperationId, SlotState};
use warden_core::recovery::RecoveryRecord;
use warden_core::release::JobReleases;
use warden_core::{FencingToken, JobName, JobSpec, TaskId};

/// The control plane's persistent state. See the [crate documentation](crate) for the
/// semantics every back end shares.
///
/// Every method is one atomic, durable operation: when it returns `Ok`, the write is
/// committed and survives a crash of the server. Listings are consistent snapshots.
pub trait Store: Send + Sync + 'static {
    // ----- atomic batches -----

    /// Commit several writes atomically: every condition is checked against the state before
    /// the batch, then all writes are committed or none. Fails with
    /// [`StoreError::EpochRegression`] if a task write lowers its epoch, and
    /// [`StoreError::Invalid`] if the batch touches one key twice.
    fn apply(&self, ops: &[WriteOp]) -> Result<BatchOutcome>;

    // ----- jobs (desired state) -----

    /// Create or replace a job.
    fn put_job(&self, spec: &JobSpec) -> Result<()> {
        let outcome = self.apply(&[WriteOp::PutJob(spec.clone())])?;
        unconditional(outcome, "put job")
    }

    /// A job by name.
    fn get_job(&self, name: &JobName) -> Result<Option<JobSpec>>;

    /// Every job, by name.
    fn list_jobs(&self) -> Result<Vec<JobSpec>>;

    /// Delete a job's spec; a no-op when absent. Its task records stay until
    /// [`Store::delete_job_tasks`], and its releases until [`Store::delete_releases`].
    fn delete_job(&self, name: &JobName) -> Result<()> {
        let outcome = self.apply(&[WriteOp::DeleteJob(name.clone())])?;
        unconditional(outcome, "delete job")
    }

    // ----- job releases (versions and rollouts) -----

    /// Create or replace a job's releases (`releases/<job>`).
    fn put_releases(&self, r: &JobReleases) -> Result<()> {
        let outcome = self.apply(&[WriteOp::PutReleases(r.clone())])?;
        unconditional(outcome, "put releases")
    }

    /// A job's releases.
    fn get_releases(&self, job: &JobName) -> Result<Option<JobReleases>>;

    /// Every job's releases, by job name.
    fn list_releases(&self) -> Result<Vec<JobReleases>>;

    /// Delete a job's releases; a no-op when absent. Deleting the job's spec
    /// ([`Store::delete_job`]) leaves them in place: they go only with this, or with a
    /// [`WriteOp::DeleteReleases`] in a batch.
    fn delete_releases(&self, job: &JobName) -> Result<()> {
        let outcome = self.apply(&[WriteOp::DeleteReleases(job.clone())])?;
        unconditional(outcome, "delete releases")
    }

    // ----- task slots (observed state, fenced) -----

    /// The live record of a task slot.
    fn get_task(&self, task: &TaskId) -> Result<Option<TaskRecord>>;

    /// The slot's epoch: its live record's, else the one it had when its job's tasks were
    /// deleted, else [`FencingToken::NONE`]. An epoch-checked write must expect exactly this.
    fn task_epoch(&self, task: &TaskId) -> Result<FencingToken>;

    /// Every live task record, by job then slot.
    fn list_tasks(&self) -> Result<Vec<TaskRecord>>;

    /// The live task records of one job, by slot.
    fn list_job_tasks(&self, job: &JobName) -> Result<Vec<TaskRecord>>;

    /// Epoch-checked write of a task record: applies only if the slot's epoch
    /// ([`Store::task_epoch`]) equals `expected`, and fails with
    /// [`StoreError::EpochRegression`] if `record.epoch < expected`.
    fn cas_task(&self, expected: FencingToken, record: &TaskRecord) -> Result<CasOutcome> {
        let op = WriteOp::CasTask {
            expected,
            record: record.clone(),
        };
        Ok(single(self.apply(&[op])?))
    }

    /// A task state report: applies only if the slot has a live record at exactly `epoch`
    /// (agent and epoch are kept), so a report about an older assignment is ignored.
    fn put_task_state(
        &self,
        task: &TaskId,
        epoch: FencingToken,
        state: SlotState,
        failures: u32,
        updated_unix_ms: u64,
    ) -> Result<CasOutcome> {
        let op = WriteOp::PutTaskState {
            task: task.clone(),
            epoch,
            state,
            failures,
            updated_unix_ms,
        };
        Ok(single(self.apply(&[op])?))
    }

    /// Delete every task record of a job, remembering each slot's epoch.
    fn delete_job_tasks(&self, job: &JobName) -> Result<()> {
        let outcome = self.apply(&[WriteOp::DeleteJobTasks(job.clone())])?;
        unconditional(outcome, "delete job tasks")
    }

    // ----- agent generations -----

    /// Increment and return the agent's generation counter (the first is 1). Durable before it
    /// returns, so a restarted agent always gets a larger generation, even across a crash of
    /// the server.
    fn next_generation(&self, agent: &str) -> Result<u64>;

    /// The last generation handed to an agent, if any.
    fn generation(&self, agent: &str) -> Result<Option<u64>>;

    // ----- recovery records -----

    /// Insert or update a recovery record by operation id, at wall-clock `unix_ms`.
    fn upsert_recovery(&self, record: &RecoveryRecord, unix_ms: u64) -> Result<()> {
        let op = WriteOp::UpsertRecovery {
            record: Box::new(record.clone()),
            unix_ms,
        };
        let outcome = self.apply(&[op])?;
        unconditional(outcome, "upsert recovery")
    }

    /// A recovery record by operation id.
    fn get_recovery(&self, op: &OperationId) -> Result<Option<StoredRecovery>>;

    /// Recovery records in insertion order (or newest first), filtered and limited by `query`.
    fn list_recoveries(&self, query: &RecoveryQuery) -> Result<Vec<StoredRecovery>>;

    // ----- event log -----

    /// Append an event and return its sequence number. Drops the oldest events beyond the
    /// configured bound in the same transaction.
    fn append_event(&self, event: &NewEvent) -> Result<u64>;

    /// Append several events in order and return the sequence number of the last (the last
    /// event's sequence number so far when `events` is empty). Back ends write them in as few
    /// transactions as they can — one each for the embedded store, one per 50 for etcd — so a
    /// burst of events (ten thousand agents joining) costs a few writes, not one per event.
    /// Each transaction is atomic; a failure leaves the events before it appended.
    fn append_events(&self, events: &[NewEvent]) -> Result<u64> {
        let mut last = None;
        for e in events {
            last = Some(self.append_event(e)?);
        }
        match last {
            Some(seq) => Ok(seq),
            None => self.last_event_seq(),
        }
    }

    /// Up to `limit` events with a sequence number greater than `after`, oldest first. Poll
    /// with the last sequence number seen; start from 0.
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;

    /// The sequence number of the newest event ever appended (0 if none).
    fn last_event_seq(&self) -> Result<u64>;
}

/// A one-write batch's outcome as an epoch-checked write's.
fn single(outcome: BatchOutcome) -> CasOutcome {
    match outcome {
        BatchOutcome::Applied => CasOutcome::Applied,
        BatchOutcome::Conflict {
            current,
            stored_epoch,
            ..
        } => CasOutcome::Conflict {
            current,
            stored_epoch,
        },
    }
}

/// The outcome of a write that has no condition.
fn unconditional(outcome: BatchOutcome, context: &'static str) -> Result<()> {
    match outcome {
        BatchOutcome::Applied => Ok(()),
        BatchOutcome::Conflict { .. } => Err(StoreError::Backend {
            context,
            message: "a write without a condition reported a conflict".into(),
        }),
    }
}
