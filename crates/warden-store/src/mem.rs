//! [`MemStore`]: the store in memory, for tests and simulations of other crates.
//!
//! It keeps values in the same encoded form as the durable back ends and runs writes through
//! the same batch logic, so it refuses what they refuse and answers what they answer; only
//! durability differs (the state lives as long as some clone of the handle does). It can also
//! fail writes on demand ([`MemStore::fail_next_writes`]) so callers can test their retry
//! paths.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use warden_core::planner::OperationId;
use warden_core::release::JobReleases;
use warden_core::{FencingToken, JobName, JobSpec, TaskId};

use crate::Store;
use crate::batch::{self, BatchRead, Prepared, SlotRead, Write};
use crate::codec::{self, keys};
use crate::error::{Result, StoreError};
use crate::model::{
    BatchOutcome, NewEvent, RecoveryQuery, StoreOptions, StoredEvent, StoredRecovery, TaskRecord,
    WriteOp,
};

/// The store in memory. Clones share the same state, so a clone stands in for "the same store
/// opened again" in tests.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    options: StoreOptions,
    jobs: BTreeMap<String, Vec<u8>>,
    releases: BTreeMap<String, Vec<u8>>,
    tasks: BTreeMap<(String, u32), Vec<u8>>,
    retired: BTreeMap<(String, u32), FencingToken>,
    generations: BTreeMap<String, u64>,
    recoveries: BTreeMap<String, Vec<u8>>,
    recovery_order: BTreeMap<u64, String>,
    /// Next recovery sequence number minus one (0: none yet).
    last_recovery_seq: u64,
    events: BTreeMap<u64, Vec<u8>>,
    /// Last event sequence number handed out (0: none yet).
    last_event_seq: u64,
    /// Writes still to fail with [`StoreError::Unavailable`].
    fail_writes: u32,
}

impl MemStore {
    /// An empty store with default options.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// An empty store with `options`.
    pub fn with_options(options: StoreOptions) -> Result<Self> {
        options.validate()?;
        Ok(MemStore {
            inner: Arc::new(Mutex::new(Inner {
                options,
                ..Inner::default()
            })),
        })
    }

    /// Make the next `n` writes (batches, generation increments, event appends) fail with a
    /// retryable [`StoreError::Unavailable`] without changing anything.
    pub fn fail_next_writes(&self, n: u32) {
        self.lock().fail_writes = n;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every write mutates only after all its checks passed, and the mutations themselves
        // cannot fail, so a panic elsewhere cannot have left the state half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Store raw bytes as a job's value, as a damaged disk could. For tests of corrupt data.
    #[cfg(test)]
    pub(crate) fn put_raw_job(&self, name: &str, bytes: &[u8]) {
        self.lock().jobs.insert(name.to_owned(), bytes.to_vec());
    }

    /// Store raw bytes as a job's releases, as a damaged disk could. For tests of corrupt data.
    #[cfg(test)]
    pub(crate) fn put_raw_releases(&self, job: &str, bytes: &[u8]) {
        self.lock().releases.insert(job.to_owned(), bytes.to_vec());
    }
}

impl Inner {
    fn injected_failure(&mut self, context: &'static str) -> Result<()> {
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Err(StoreError::Unavailable {
                context,
                message: "failure injected by MemStore::fail_next_writes".into(),
            });
        }
        Ok(())
    }

    fn perform(&mut self, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::PutJob { name, bytes } => {
                    self.jobs.insert(name, bytes);
                }
                Write::DeleteJob { name } => {
                    self.jobs.remove(&name);
                }
                Write::PutReleases { name, bytes } => {
                    self.releases.insert(name, bytes);
                }
                Write::DeleteReleases { name } => {
                    self.releases.remove(&name);
                }
                Write::PutTask { job, index, bytes } => {
                    self.tasks.insert((job, index), bytes);
                }
                Write::DeleteTask { job, index } => {
                    self.tasks.remove(&(job, index));
                }
                Write::PutRetired { job, index, epoch } => {
                    self.retired.insert((job, index), epoch);
                }
                Write::DeleteRetired { job, index } => {
                    self.retired.remove(&(job, index));
                }
                Write::PutRecovery {
                    op,
                    seq,
                    new,
                    bytes,
                } => {
                    if new {
                        self.recovery_order.insert(seq, op.clone());
                        self.last_recovery_seq = self.last_recovery_seq.max(seq);
                    }
                    self.recoveries.insert(op, bytes);
                }
            }
        }
    }

    fn job_range(&self, job: &str) -> impl Iterator<Item = (&(String, u32), &Vec<u8>)> {
        self.tasks.range((
            Bound::Included((job.to_owned(), 0)),
            Bound::Included((job.to_owned(), u32::MAX)),
        ))
    }
}

impl SlotRead for Inner {
    fn task(&self, job: &str, index: u32) -> Result<Option<TaskRecord>> {
        self.tasks
            .get(&(job.to_owned(), index))
            .map(|b| codec::decode_task(job, index, b))
            .transpose()
    }

    fn retired(&self, job: &str, index: u32) -> Result<Option<FencingToken>> {
        Ok(self.retired.get(&(job.to_owned(), index)).copied())
    }
}

impl BatchRead for Inner {
    fn job_tasks(&self, job: &str) -> Result<Vec<TaskRecord>> {
        self.job_range(job)
            .map(|((j, i), b)| codec::decode_task(j, *i, b))
            .collect()
    }

    fn recovery(&self, op: &str) -> Result<Option<StoredRecovery>> {
        self.recoveries
            .get(op)
            .map(|b| codec::decode_recovery(op, b))
            .transpose()
    }

    fn next_recovery_seq(&self) -> Result<u64> {
        Ok(self.last_recovery_seq + 1)
    }
}

impl Store for MemStore {
    fn apply(&self, ops: &[WriteOp]) -> Result<BatchOutcome> {
        let mut inner = self.lock();
        inner.injected_failure("apply write batch")?;
        match batch::prepare(&*inner, ops)? {
            Prepared::Conflict(outcome) => Ok(outcome),
            Prepared::Writes(writes) => {
                inner.perform(writes);
                Ok(BatchOutcome::Applied)
            }
        }
    }

    fn get_job(&self, name: &JobName) -> Result<Option<JobSpec>> {
        let inner = self.lock();
        inner
            .jobs
            .get(name.as_str())
            .map(|b| codec::decode_job(name.as_str(), b))
            .transpose()
    }

    fn list_jobs(&self) -> Result<Vec<JobSpec>> {
        let inner = self.lock();
        inner
            .jobs
            .iter()
            .map(|(name, b)| codec::decode_job(name, b))
            .collect()
    }

    fn get_releases(&self, job: &JobName) -> Result<Option<JobReleases>> {
        let inner = self.lock();
        inner
            .releases
            .get(job.as_str())
            .map(|b| codec::decode_releases(job.as_str(), b))
            .transpose()
    }

    fn list_releases(&self) -> Result<Vec<JobReleases>> {
        let inner = self.lock();
        inner
            .releases
            .iter()
            .map(|(job, b)| codec::decode_releases(job, b))
            .collect()
    }

    fn get_task(&self, task: &TaskId) -> Result<Option<TaskRecord>> {
        let (job, index) = codec::task_parts(task);
        self.lock().task(job, index)
    }

    fn task_epoch(&self, task: &TaskId) -> Result<FencingToken> {
        let (job, index) = codec::task_parts(task);
        Ok(batch::slot(&*self.lock(), job, index)?.1)
    }

    fn list_tasks(&self) -> Result<Vec<TaskRecord>> {
        let inner = self.lock();
        inner
            .tasks
            .iter()
            .map(|((j, i), b)| codec::decode_task(j, *i, b))
            .collect()
    }

    fn list_job_tasks(&self, job: &JobName) -> Result<Vec<TaskRecord>> {
        self.lock().job_tasks(job.as_str())
    }

    fn next_generation(&self, agent: &str) -> Result<u64> {
        let mut inner = self.lock();
        inner.injected_failure("increment agent generation")?;
        let current = inner.generations.get(agent).copied().unwrap_or(0);
        let next = current.checked_add(1).ok_or_else(|| {
            StoreError::invalid(keys::generation(agent), "generation counter exhausted")
        })?;
        inner.generations.insert(agent.to_owned(), next);
        Ok(next)
    }

    fn generation(&self, agent: &str) -> Result<Option<u64>> {
        Ok(self.lock().generations.get(agent).copied())
    }

    fn get_recovery(&self, op: &OperationId) -> Result<Option<StoredRecovery>> {
        self.lock().recovery(&op.0)
    }

    fn list_recoveries(&self, query: &RecoveryQuery) -> Result<Vec<StoredRecovery>> {
        let inner = self.lock();
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let order: Box<dyn Iterator<Item = (&u64, &String)>> = if query.newest_first {
            Box::new(inner.recovery_order.iter().rev())
        } else {
            Box::new(inner.recovery_order.iter())
        };
        for (seq, op) in order {
            if out.len() >= limit {
                break;
            }
            let rec = inner.recovery(op)?.ok_or_else(|| {
                StoreError::corrupt(
                    format!("recovery_order/{seq}"),
                    format!("names operation {op}, which is not stored"),
                )
            })?;
            if query.admits(&rec) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn append_event(&self, event: &NewEvent) -> Result<u64> {
        let mut inner = self.lock();
        inner.injected_failure("append event")?;
        let seq = inner.last_event_seq + 1;
        let bytes = codec::encode(&keys::event(seq), &event.stored(seq))?;
        inner.events.insert(seq, bytes);
        inner.last_event_seq = seq;
        let max = inner.options.max_events;
        while inner.events.len() as u64 > max {
            inner.events.pop_first();
        }
        Ok(seq)
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let inner = self.lock();
        inner
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(seq, b)| codec::decode_event(*seq, b))
            .collect()
    }

    fn last_event_seq(&self) -> Result<u64> {
        Ok(self.lock().last_event_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::contract_tests!(|options| MemStore::with_options(options).expect("options are valid"));

    #[test]
    fn injected_failures_are_retryable_and_change_nothing() {
        let store = MemStore::new();
        store.fail_next_writes(2);
        let e = store.next_generation("a").expect_err("first write fails");
        assert!(e.is_retryable(), "{e}");
        let e = store
            .append_event(&NewEvent::new(1, "k", "m"))
            .expect_err("second write fails");
        assert!(e.is_retryable(), "{e}");
        assert_eq!(store.generation("a").expect("read"), None);
        assert_eq!(store.next_generation("a").expect("third write"), 1);
        assert_eq!(store.last_event_seq().expect("read"), 0);
    }

    #[test]
    fn a_corrupt_value_names_its_key() {
        let store = MemStore::new();
        store.put_raw_job("web", b"{\"name\":");
        let err = store
            .get_job(&JobName::new("web"))
            .expect_err("corrupt job");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "jobs/web"),
            "{err}"
        );
        assert!(store.list_jobs().is_err());

        store.put_raw_releases("web", b"[1,2]");
        let err = store
            .get_releases(&JobName::new("web"))
            .expect_err("corrupt releases");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "releases/web"),
            "{err}"
        );
        assert!(store.list_releases().is_err());
    }
}
