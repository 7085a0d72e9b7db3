//! The semantics of writes, written once for every back end.
//!
//! A batch of [`WriteOp`]s runs in two phases, exactly like an etcd transaction:
//!
//! 1. [`prepare`] checks the batch's shape (each key at most once, no epoch going back), reads
//!    what the conditions need through [`BatchRead`], evaluates every condition against the
//!    state *before* the batch, encodes every value, and returns either the first failed
//!    condition or a list of primitive [`Write`]s;
//! 2. the back end performs those writes and commits them in one transaction.
//!
//! The embedded back end runs both phases inside one redb write transaction (redb admits one
//! writer at a time, so nothing can change between the reads and the commit); the in-memory
//! one under its lock; an etcd back end runs phase 1 on a snapshot and commits phase 2 in a
//! transaction that compares the revisions of everything phase 1 read. All three therefore
//! give the same answers, and an epoch-checked write is linearizable in each.

use std::collections::HashSet;

use warden_core::{FencingToken, TaskId};

use crate::codec::{self, keys};
use crate::error::{Result, StoreError};
use crate::model::{BatchOutcome, StoredRecovery, TaskRecord, WriteOp};

/// What a slot's epoch is made of. Implemented on a back end's snapshot or transaction.
pub(crate) trait SlotRead {
    /// The live record of a slot.
    fn task(&self, job: &str, index: u32) -> Result<Option<TaskRecord>>;
    /// The epoch a slot had when its job's tasks were deleted.
    fn retired(&self, job: &str, index: u32) -> Result<Option<FencingToken>>;
}

/// What phase 1 reads. Implemented on a back end's transaction.
pub(crate) trait BatchRead: SlotRead {
    /// Every live record of a job, by slot.
    fn job_tasks(&self, job: &str) -> Result<Vec<TaskRecord>>;
    /// A stored recovery.
    fn recovery(&self, op: &str) -> Result<Option<StoredRecovery>>;
    /// The insertion sequence number the next new recovery gets.
    fn next_recovery_seq(&self) -> Result<u64>;
}

/// A primitive write, produced by phase 1 and performed by the back end.
#[derive(Debug)]
pub(crate) enum Write {
    PutJob {
        name: String,
        bytes: Vec<u8>,
    },
    DeleteJob {
        name: String,
    },
    PutReleases {
        name: String,
        bytes: Vec<u8>,
    },
    DeleteReleases {
        name: String,
    },
    PutTask {
        job: String,
        index: u32,
        bytes: Vec<u8>,
    },
    DeleteTask {
        job: String,
        index: u32,
    },
    PutRetired {
        job: String,
        index: u32,
        epoch: FencingToken,
    },
    DeleteRetired {
        job: String,
        index: u32,
    },
    /// A recovery; `new` ones also get an entry in the insertion-order index, and the next
    /// sequence number moves past `seq`.
    PutRecovery {
        op: String,
        seq: u64,
        new: bool,
        bytes: Vec<u8>,
    },
}

/// Result of phase 1.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Every condition holds: perform these writes and commit.
    Writes(Vec<Write>),
    /// A condition failed: write nothing.
    Conflict(BatchOutcome),
}

/// A slot's live record and its epoch (live, else retired, else none).
pub(crate) fn slot(
    read: &impl SlotRead,
    job: &str,
    index: u32,
) -> Result<(Option<TaskRecord>, FencingToken)> {
    if let Some(rec) = read.task(job, index)? {
        let epoch = rec.epoch;
        return Ok((Some(rec), epoch));
    }
    Ok((
        None,
        read.retired(job, index)?.unwrap_or(FencingToken::NONE),
    ))
}

/// Reject batches that no back end could run with etcd's semantics, and epochs going back.
fn check_shape(ops: &[WriteOp]) -> Result<()> {
    let mut tasks: HashSet<&TaskId> = HashSet::new();
    let mut cleared: HashSet<&str> = HashSet::new();
    let mut jobs: HashSet<&str> = HashSet::new();
    let mut releases: HashSet<&str> = HashSet::new();
    let mut recoveries: HashSet<&str> = HashSet::new();
    let twice = |what: String| {
        StoreError::invalid(
            "write batch",
            format!("{what} is written twice; a batch may touch each key once"),
        )
    };
    for op in ops {
        match op {
            WriteOp::PutJob(spec) => {
                if !jobs.insert(spec.name.as_str()) {
                    return Err(twice(keys::job(&spec.name)));
                }
            }
            WriteOp::DeleteJob(name) => {
                if !jobs.insert(name.as_str()) {
                    return Err(twice(keys::job(name)));
                }
            }
            WriteOp::PutReleases(r) => {
                if !releases.insert(r.job.as_str()) {
                    return Err(twice(keys::releases(&r.job)));
                }
            }
            WriteOp::DeleteReleases(name) => {
                if !releases.insert(name.as_str()) {
                    return Err(twice(keys::releases(name)));
                }
            }
            WriteOp::DeleteJobTasks(name) => {
                if !cleared.insert(name.as_str()) {
                    return Err(twice(format!("tasks/{name}/*")));
                }
            }
            WriteOp::CasTask { expected, record } => {
                if record.epoch < *expected {
                    return Err(StoreError::EpochRegression {
                        task: record.task.clone(),
                        expected: *expected,
                        proposed: record.epoch,
                    });
                }
                if !tasks.insert(&record.task) {
                    return Err(twice(keys::task(&record.task.job, record.task.index)));
                }
            }
            WriteOp::PutTaskState { task, .. } => {
                if !tasks.insert(task) {
                    return Err(twice(keys::task(&task.job, task.index)));
                }
            }
            WriteOp::UpsertRecovery { record, .. } => {
                if !recoveries.insert(record.op.0.as_str()) {
                    return Err(twice(keys::recovery(&record.op)));
                }
            }
        }
    }
    if let Some(t) = tasks.iter().find(|t| cleared.contains(t.job.as_str())) {
        return Err(twice(keys::task(&t.job, t.index)));
    }
    Ok(())
}

/// Phase 1: check, read, evaluate and encode.
pub(crate) fn prepare(read: &impl BatchRead, ops: &[WriteOp]) -> Result<Prepared> {
    check_shape(ops)?;
    let mut writes = Vec::with_capacity(ops.len() + 1);
    let mut next_recovery_seq = None;
    for (index, op) in ops.iter().enumerate() {
        match op {
            WriteOp::PutJob(spec) => {
                let name = spec.name.as_str();
                writes.push(Write::PutJob {
                    name: name.to_owned(),
                    bytes: codec::encode(&keys::job(name), spec)?,
                });
            }
            WriteOp::DeleteJob(name) => writes.push(Write::DeleteJob {
                name: name.as_str().to_owned(),
            }),
            WriteOp::PutReleases(value) => {
                let name = value.job.as_str();
                writes.push(Write::PutReleases {
                    name: name.to_owned(),
                    bytes: codec::encode(&keys::releases(name), value)?,
                });
            }
            WriteOp::DeleteReleases(name) => writes.push(Write::DeleteReleases {
                name: name.as_str().to_owned(),
            }),
            WriteOp::DeleteJobTasks(name) => {
                for rec in read.job_tasks(name.as_str())? {
                    let (job, i) = codec::task_parts(&rec.task);
                    let floor = read.retired(job, i)?.unwrap_or(FencingToken::NONE);
                    writes.push(Write::DeleteTask {
                        job: job.to_owned(),
                        index: i,
                    });
                    writes.push(Write::PutRetired {
                        job: job.to_owned(),
                        index: i,
                        epoch: rec.epoch.max(floor),
                    });
                }
            }
            WriteOp::CasTask { expected, record } => {
                let (job, i) = codec::task_parts(&record.task);
                let (current, stored_epoch) = slot(read, job, i)?;
                if stored_epoch != *expected {
                    return Ok(Prepared::Conflict(BatchOutcome::Conflict {
                        index,
                        current,
                        stored_epoch,
                    }));
                }
                writes.push(Write::PutTask {
                    job: job.to_owned(),
                    index: i,
                    bytes: codec::encode(&keys::task(job, i), record)?,
                });
                if current.is_none() && stored_epoch != FencingToken::NONE {
                    // The slot comes back to life: its live record carries the epoch now.
                    writes.push(Write::DeleteRetired {
                        job: job.to_owned(),
                        index: i,
                    });
                }
            }
            WriteOp::PutTaskState {
                task,
                epoch,
                state,
                failures,
                updated_unix_ms,
            } => {
                let (job, i) = codec::task_parts(task);
                let (current, stored_epoch) = slot(read, job, i)?;
                let mut rec = match current {
                    Some(rec) if rec.epoch == *epoch => rec,
                    current => {
                        return Ok(Prepared::Conflict(BatchOutcome::Conflict {
                            index,
                            current,
                            stored_epoch,
                        }));
                    }
                };
                rec.state = *state;
                rec.failures = *failures;
                rec.updated_unix_ms = *updated_unix_ms;
                writes.push(Write::PutTask {
                    job: job.to_owned(),
                    index: i,
                    bytes: codec::encode(&keys::task(job, i), &rec)?,
                });
            }
            WriteOp::UpsertRecovery { record, unix_ms } => {
                let op = record.op.0.as_str();
                let (seq, recorded_unix_ms, new) = match read.recovery(op)? {
                    Some(old) => (old.seq, old.recorded_unix_ms, false),
                    None => {
                        let seq = match next_recovery_seq {
                            Some(s) => s,
                            None => read.next_recovery_seq()?,
                        };
                        next_recovery_seq = Some(seq.checked_add(1).ok_or_else(|| {
                            StoreError::invalid("upsert recovery", "sequence numbers exhausted")
                        })?);
                        (seq, *unix_ms, true)
                    }
                };
                let stored = StoredRecovery {
                    seq,
                    recorded_unix_ms,
                    updated_unix_ms: *unix_ms,
                    record: (**record).clone(),
                };
                writes.push(Write::PutRecovery {
                    op: op.to_owned(),
                    seq,
                    new,
                    bytes: codec::encode(&keys::recovery(op), &stored)?,
                });
            }
        }
    }
    Ok(Prepared::Writes(writes))
}
