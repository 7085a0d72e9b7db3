//! [`RedbStore`]: the store in one embedded redb file, `dir/warden.redb`.
//!
//! ## Why it survives `kill -9`
//!
//! redb is copy-on-write with checksummed pages and a double-buffered commit slot: a commit
//! writes new pages, fsyncs, then flips the slot. A process killed at any point leaves either
//! the old or the new state, never a mix, and the next open repairs the allocator state (it
//! logs a warning while doing so). Every write of this store is its own transaction committed
//! with [`Durability::Immediate`] (set explicitly, never relaxed), so when a call returns `Ok`
//! the data is on disk, which is stronger than `kill -9` needs: it also survives power loss.
//! The crash test (`tests/crash.rs`) kills a writer mid-flight and checks every acknowledged
//! write.
//!
//! ## Why epoch-checked writes are linearizable
//!
//! redb admits one write transaction at a time (others wait in `begin_write`). An epoch-checked write
//! reads the slot's epoch, compares and writes inside that one transaction, so nothing can
//! change between the compare and the commit. Reads use snapshots and never block writes.
//!
//! ## Key layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `schema_version`, `next_event_seq`, `next_recovery_seq` | u64 |
//! | `jobs` | job name | JSON [`JobSpec`] |
//! | `releases` | job name | JSON [`JobReleases`]: the job's versions and rollout |
//! | `tasks` | (job name, slot index) | JSON [`TaskRecord`] |
//! | `retired` | (job name, slot index) | u64: the epoch of a slot whose job's tasks were deleted |
//! | `generations` | agent name | u64: last generation handed out |
//! | `recoveries` | operation id | JSON [`StoredRecovery`] |
//! | `recovery_order` | insertion sequence number | operation id |
//! | `events` | sequence number | JSON [`StoredEvent`] |
//!
//! Tuple keys sort by job name, then numerically by slot, so one job's slots are one range
//! scan. Counters live in `meta` rather than being derived from the last key, so a sequence
//! number is never reused, even after retention has dropped every event.
//!
//! Every open creates the tables a file lacks (in the same transaction that checks the schema
//! version), so a file written before a table existed — `releases` came after the others —
//! opens without a migration and reads as having nothing in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, TableHandle, WriteTransaction,
};
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

/// Name of the store file inside the store directory.
pub const FILE_NAME: &str = "warden.redb";

/// Upper bound of redb's page cache. The whole store is a few MiB to a few tens of MiB
/// (100,000 events dominate), and redb's default of 1 GiB would let a long-running server's
/// memory grow for nothing.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
const TASKS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("tasks");
const RETIRED: TableDefinition<(&str, u32), u64> = TableDefinition::new("retired");
const GENERATIONS: TableDefinition<&str, u64> = TableDefinition::new("generations");
const RECOVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("recoveries");
const RECOVERY_ORDER: TableDefinition<u64, &str> = TableDefinition::new("recovery_order");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

const SCHEMA_KEY: &str = "schema_version";
const NEXT_EVENT_KEY: &str = "next_event_seq";
const NEXT_RECOVERY_KEY: &str = "next_recovery_seq";

/// Map any redb error, with what was being done.
fn db_err<E: Into<redb::Error>>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| from_redb(context, e.into())
}

fn from_redb(context: &'static str, e: redb::Error) -> StoreError {
    match e {
        // redb reports a file that is not a database as invalid data.
        redb::Error::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::corrupt("store file", format!("{context}: {source}"))
        }
        redb::Error::Io(source) => StoreError::Io { context, source },
        redb::Error::Corrupted(reason) => {
            StoreError::corrupt("store file", format!("{context}: {reason}"))
        }
        redb::Error::TableDoesNotExist(ref table)
        | redb::Error::TableIsMultimap(ref table)
        | redb::Error::TableIsNotMultimap(ref table) => {
            StoreError::corrupt(format!("table {table}"), format!("{context}: {e}"))
        }
        redb::Error::ValueTooLarge(len) => {
            StoreError::invalid(context, format!("a value of {len} bytes is too large"))
        }
        other => StoreError::Backend {
            context,
            message: other.to_string(),
        },
    }
}

/// The store in an embedded redb file. See the [module documentation](self).
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    options: StoreOptions,
}

impl RedbStore {
    /// Open (or create) the store in `dir` with default options. Creates `dir` if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        RedbStore::open_with(dir, StoreOptions::default())
    }

    /// Open (or create) the store in `dir` with `options`.
    ///
    /// Fails with [`StoreError::AlreadyOpen`] if another process or handle has the file open,
    /// [`StoreError::SchemaTooNew`] if a newer Warden wrote it, and [`StoreError::Corrupt`] if
    /// it is damaged or not a Warden store. After an unclean shutdown the file is repaired
    /// first (a warning is logged).
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self> {
        options.validate()?;
        create_dir(dir).map_err(|source| StoreError::Io {
            context: "create store directory",
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let mut builder = Database::builder();
        let shown = AtomicBool::new(false);
        let shown_path = path.clone();
        builder
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(options.verify_on_open)
            .set_repair_callback(move |session| {
                if !shown.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %shown_path.display(),
                        progress = session.progress(),
                        "repairing store file after an unclean shutdown"
                    );
                }
            });
        let db = builder.create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: path.clone() },
            e => from_redb("open store file", e.into()),
        })?;
        init_schema(&db)?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(RedbStore { db, path, options })
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close the store, reporting any error (dropping it closes it too, silently).
    pub fn close(self) -> Result<()> {
        self.db.close().map_err(db_err("close store file"))
    }

    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let rtx = self
            .db
            .begin_read()
            .map_err(db_err("begin read transaction"))?;
        f(&rtx)
    }

    /// Run `f` in a write transaction and commit it durably if `f` returns `Ok(Some(_))`;
    /// `Ok(None)` and errors abort it, leaving the store untouched.
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<Commit<T>>) -> Result<T> {
        let mut wtx = self
            .db
            .begin_write()
            .map_err(db_err("begin write transaction"))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(db_err("set transaction durability"))?;
        match f(&wtx)? {
            Commit::Yes(v) => {
                wtx.commit().map_err(db_err("commit write transaction"))?;
                Ok(v)
            }
            Commit::No(v) => {
                wtx.abort().map_err(db_err("abort write transaction"))?;
                Ok(v)
            }
        }
    }
}

/// Create the store directory (and its parents) if missing. Job specs may carry secrets in
/// their environment, so a directory created here is private to the server's user.
fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Whether a write transaction's work should be committed.
enum Commit<T> {
    Yes(T),
    No(T),
}

/// Check the schema version of a freshly opened file, or stamp a new one; create every table
/// (also the ones a file written by an older build lacks).
fn init_schema(db: &Database) -> Result<()> {
    let wtx = db
        .begin_write()
        .map_err(db_err("begin write transaction"))?;
    {
        let existing: Vec<String> = wtx
            .list_tables()
            .map_err(db_err("list tables"))?
            .map(|t| t.name().to_owned())
            .collect();
        let mut meta = wtx.open_table(META).map_err(db_err("open meta table"))?;
        let found = meta
            .get(SCHEMA_KEY)
            .map_err(db_err("read schema version"))?
            .map(|v| v.value());
        match found {
            Some(v) => codec::check_schema(v)?,
            None => {
                if let Some(t) = existing.iter().find(|t| t.as_str() != META.name()) {
                    return Err(StoreError::corrupt(
                        "store file",
                        format!("it has a table {t:?} but no schema version: not a Warden store"),
                    ));
                }
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                    .map_err(db_err("write schema version"))?;
            }
        }
        wtx.open_table(JOBS).map_err(db_err("create jobs table"))?;
        wtx.open_table(RELEASES)
            .map_err(db_err("create releases table"))?;
        wtx.open_table(TASKS)
            .map_err(db_err("create tasks table"))?;
        wtx.open_table(RETIRED)
            .map_err(db_err("create retired table"))?;
        wtx.open_table(GENERATIONS)
            .map_err(db_err("create generations table"))?;
        wtx.open_table(RECOVERIES)
            .map_err(db_err("create recoveries table"))?;
        wtx.open_table(RECOVERY_ORDER)
            .map_err(db_err("create recovery_order table"))?;
        wtx.open_table(EVENTS)
            .map_err(db_err("create events table"))?;
    }
    wtx.commit().map_err(db_err("commit schema"))
}

// ----- typed access shared by read-only and write tables -----

fn get_task(
    t: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    job: &str,
    index: u32,
) -> Result<Option<TaskRecord>> {
    let v = t.get((job, index)).map_err(db_err("read task record"))?;
    v.map(|v| codec::decode_task(job, index, v.value()))
        .transpose()
}

fn get_retired(
    t: &impl ReadableTable<(&'static str, u32), u64>,
    job: &str,
    index: u32,
) -> Result<Option<FencingToken>> {
    let v = t
        .get((job, index))
        .map_err(db_err("read retired task epoch"))?;
    Ok(v.map(|v| FencingToken(v.value())))
}

fn job_tasks(
    t: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    job: &str,
) -> Result<Vec<TaskRecord>> {
    let range = t
        .range((job, 0u32)..=(job, u32::MAX))
        .map_err(db_err("scan task records"))?;
    let mut out = Vec::new();
    for entry in range {
        let (k, v) = entry.map_err(db_err("scan task records"))?;
        let (j, i) = k.value();
        out.push(codec::decode_task(j, i, v.value())?);
    }
    Ok(out)
}

fn get_recovery(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    op: &str,
) -> Result<Option<StoredRecovery>> {
    let v = t.get(op).map_err(db_err("read recovery record"))?;
    v.map(|v| codec::decode_recovery(op, v.value())).transpose()
}

fn meta_counter(t: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64> {
    let v = t.get(key).map_err(db_err("read counter"))?;
    Ok(v.map(|v| v.value()).unwrap_or(1))
}

/// The tables a write batch touches, open in one write transaction.
struct BatchTables<'t> {
    meta: Table<'t, &'static str, u64>,
    jobs: Table<'t, &'static str, &'static [u8]>,
    releases: Table<'t, &'static str, &'static [u8]>,
    tasks: Table<'t, (&'static str, u32), &'static [u8]>,
    retired: Table<'t, (&'static str, u32), u64>,
    recoveries: Table<'t, &'static str, &'static [u8]>,
    recovery_order: Table<'t, u64, &'static str>,
}

impl<'t> BatchTables<'t> {
    fn open(wtx: &'t WriteTransaction) -> Result<Self> {
        Ok(BatchTables {
            meta: wtx.open_table(META).map_err(db_err("open meta table"))?,
            jobs: wtx.open_table(JOBS).map_err(db_err("open jobs table"))?,
            releases: wtx
                .open_table(RELEASES)
                .map_err(db_err("open releases table"))?,
            tasks: wtx.open_table(TASKS).map_err(db_err("open tasks table"))?,
            retired: wtx
                .open_table(RETIRED)
                .map_err(db_err("open retired table"))?,
            recoveries: wtx
                .open_table(RECOVERIES)
                .map_err(db_err("open recoveries table"))?,
            recovery_order: wtx
                .open_table(RECOVERY_ORDER)
                .map_err(db_err("open recovery_order table"))?,
        })
    }

    fn perform(&mut self, writes: Vec<Write>) -> Result<()> {
        for w in writes {
            match w {
                Write::PutJob { name, bytes } => {
                    self.jobs
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(db_err("write job"))?;
                }
                Write::DeleteJob { name } => {
                    self.jobs
                        .remove(name.as_str())
                        .map_err(db_err("delete job"))?;
                }
                Write::PutReleases { name, bytes } => {
                    self.releases
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(db_err("write releases"))?;
                }
                Write::DeleteReleases { name } => {
                    self.releases
                        .remove(name.as_str())
                        .map_err(db_err("delete releases"))?;
                }
                Write::PutTask { job, index, bytes } => {
                    self.tasks
                        .insert((job.as_str(), index), bytes.as_slice())
                        .map_err(db_err("write task record"))?;
                }
                Write::DeleteTask { job, index } => {
                    self.tasks
                        .remove((job.as_str(), index))
                        .map_err(db_err("delete task record"))?;
                }
                Write::PutRetired { job, index, epoch } => {
                    self.retired
                        .insert((job.as_str(), index), epoch.0)
                        .map_err(db_err("write retired task epoch"))?;
                }
                Write::DeleteRetired { job, index } => {
                    self.retired
                        .remove((job.as_str(), index))
                        .map_err(db_err("delete retired task epoch"))?;
                }
                Write::PutRecovery {
                    op,
                    seq,
                    new,
                    bytes,
                } => {
                    self.recoveries
                        .insert(op.as_str(), bytes.as_slice())
                        .map_err(db_err("write recovery record"))?;
                    if new {
                        self.recovery_order
                            .insert(seq, op.as_str())
                            .map_err(db_err("write recovery order"))?;
                        let next = seq.saturating_add(1);
                        if next > meta_counter(&self.meta, NEXT_RECOVERY_KEY)? {
                            self.meta
                                .insert(NEXT_RECOVERY_KEY, next)
                                .map_err(db_err("write recovery counter"))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl SlotRead for BatchTables<'_> {
    fn task(&self, job: &str, index: u32) -> Result<Option<TaskRecord>> {
        get_task(&self.tasks, job, index)
    }

    fn retired(&self, job: &str, index: u32) -> Result<Option<FencingToken>> {
        get_retired(&self.retired, job, index)
    }
}

impl BatchRead for BatchTables<'_> {
    fn job_tasks(&self, job: &str) -> Result<Vec<TaskRecord>> {
        job_tasks(&self.tasks, job)
    }

    fn recovery(&self, op: &str) -> Result<Option<StoredRecovery>> {
        get_recovery(&self.recoveries, op)
    }

    fn next_recovery_seq(&self) -> Result<u64> {
        meta_counter(&self.meta, NEXT_RECOVERY_KEY)
    }
}

/// A slot's tables in a read transaction, for [`batch::slot`].
struct SlotView<'a, T, R> {
    tasks: &'a T,
    retired: &'a R,
}

impl<T, R> SlotRead for SlotView<'_, T, R>
where
    T: ReadableTable<(&'static str, u32), &'static [u8]>,
    R: ReadableTable<(&'static str, u32), u64>,
{
    fn task(&self, job: &str, index: u32) -> Result<Option<TaskRecord>> {
        get_task(self.tasks, job, index)
    }

    fn retired(&self, job: &str, index: u32) -> Result<Option<FencingToken>> {
        get_retired(self.retired, job, index)
    }
}

impl Store for RedbStore {
    fn apply(&self, ops: &[WriteOp]) -> Result<BatchOutcome> {
        self.write(|wtx| {
            let mut tables = BatchTables::open(wtx)?;
            match batch::prepare(&tables, ops)? {
                Prepared::Conflict(outcome) => Ok(Commit::No(outcome)),
                Prepared::Writes(writes) => {
                    tables.perform(writes)?;
                    Ok(Commit::Yes(BatchOutcome::Applied))
                }
            }
        })
    }

    fn get_job(&self, name: &JobName) -> Result<Option<JobSpec>> {
        self.read(|rtx| {
            let t = rtx.open_table(JOBS).map_err(db_err("open jobs table"))?;
            let v = t.get(name.as_str()).map_err(db_err("read job"))?;
            v.map(|v| codec::decode_job(name.as_str(), v.value()))
                .transpose()
        })
    }

    fn list_jobs(&self) -> Result<Vec<JobSpec>> {
        self.read(|rtx| {
            let t = rtx.open_table(JOBS).map_err(db_err("open jobs table"))?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(db_err("scan jobs"))? {
                let (k, v) = entry.map_err(db_err("scan jobs"))?;
                out.push(codec::decode_job(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    fn get_releases(&self, job: &JobName) -> Result<Option<JobReleases>> {
        self.read(|rtx| {
            let t = rtx
                .open_table(RELEASES)
                .map_err(db_err("open releases table"))?;
            let v = t.get(job.as_str()).map_err(db_err("read releases"))?;
            v.map(|v| codec::decode_releases(job.as_str(), v.value()))
                .transpose()
        })
    }

    fn list_releases(&self) -> Result<Vec<JobReleases>> {
        self.read(|rtx| {
            let t = rtx
                .open_table(RELEASES)
                .map_err(db_err("open releases table"))?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(db_err("scan releases"))? {
                let (k, v) = entry.map_err(db_err("scan releases"))?;
                out.push(codec::decode_releases(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    fn get_task(&self, task: &TaskId) -> Result<Option<TaskRecord>> {
        let (job, index) = codec::task_parts(task);
        self.read(|rtx| {
            let t = rtx.open_table(TASKS).map_err(db_err("open tasks table"))?;
            get_task(&t, job, index)
        })
    }

    fn task_epoch(&self, task: &TaskId) -> Result<FencingToken> {
        let (job, index) = codec::task_parts(task);
        self.read(|rtx| {
            let tasks = rtx.open_table(TASKS).map_err(db_err("open tasks table"))?;
            let retired = rtx
                .open_table(RETIRED)
                .map_err(db_err("open retired table"))?;
            let view = SlotView {
                tasks: &tasks,
                retired: &retired,
            };
            Ok(batch::slot(&view, job, index)?.1)
        })
    }

    fn list_tasks(&self) -> Result<Vec<TaskRecord>> {
        self.read(|rtx| {
            let t = rtx.open_table(TASKS).map_err(db_err("open tasks table"))?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(db_err("scan task records"))? {
                let (k, v) = entry.map_err(db_err("scan task records"))?;
                let (job, index) = k.value();
                out.push(codec::decode_task(job, index, v.value())?);
            }
            Ok(out)
        })
    }

    fn list_job_tasks(&self, job: &JobName) -> Result<Vec<TaskRecord>> {
        self.read(|rtx| {
            let t = rtx.open_table(TASKS).map_err(db_err("open tasks table"))?;
            job_tasks(&t, job.as_str())
        })
    }

    fn next_generation(&self, agent: &str) -> Result<u64> {
        self.write(|wtx| {
            let mut t = wtx
                .open_table(GENERATIONS)
                .map_err(db_err("open generations table"))?;
            let current = t
                .get(agent)
                .map_err(db_err("read agent generation"))?
                .map(|v| v.value())
                .unwrap_or(0);
            let next = current.checked_add(1).ok_or_else(|| {
                StoreError::invalid(keys::generation(agent), "generation counter exhausted")
            })?;
            t.insert(agent, next)
                .map_err(db_err("write agent generation"))?;
            Ok(Commit::Yes(next))
        })
    }

    fn generation(&self, agent: &str) -> Result<Option<u64>> {
        self.read(|rtx| {
            let t = rtx
                .open_table(GENERATIONS)
                .map_err(db_err("open generations table"))?;
            let v = t.get(agent).map_err(db_err("read agent generation"))?;
            Ok(v.map(|v| v.value()))
        })
    }

    fn get_recovery(&self, op: &OperationId) -> Result<Option<StoredRecovery>> {
        self.read(|rtx| {
            let t = rtx
                .open_table(RECOVERIES)
                .map_err(db_err("open recoveries table"))?;
            get_recovery(&t, &op.0)
        })
    }

    fn list_recoveries(&self, query: &RecoveryQuery) -> Result<Vec<StoredRecovery>> {
        self.read(|rtx| {
            let records = rtx
                .open_table(RECOVERIES)
                .map_err(db_err("open recoveries table"))?;
            let order = rtx
                .open_table(RECOVERY_ORDER)
                .map_err(db_err("open recovery_order table"))?;
            let limit = query.limit.unwrap_or(usize::MAX);
            let range = order.iter().map_err(db_err("scan recovery order"))?;
            let range: Box<dyn Iterator<Item = _>> = if query.newest_first {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            let mut out = Vec::new();
            for entry in range {
                if out.len() >= limit {
                    break;
                }
                let (seq, op) = entry.map_err(db_err("scan recovery order"))?;
                let (seq, op) = (seq.value(), op.value());
                let rec = get_recovery(&records, op)?.ok_or_else(|| {
                    StoreError::corrupt(
                        format!("recovery_order/{seq}"),
                        format!("names operation {op}, which is not stored"),
                    )
                })?;
                if rec.seq != seq {
                    return Err(StoreError::corrupt(
                        format!("recovery_order/{seq}"),
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

    fn append_events(&self, batch: &[NewEvent]) -> Result<u64> {
        if batch.is_empty() {
            return self.last_event_seq();
        }
        let max = self.options.max_events;
        self.write(|wtx| {
            let mut meta = wtx.open_table(META).map_err(db_err("open meta table"))?;
            let mut events = wtx
                .open_table(EVENTS)
                .map_err(db_err("open events table"))?;
            let mut seq = meta_counter(&meta, NEXT_EVENT_KEY)?;
            let mut last = seq;
            for event in batch {
                let bytes = codec::encode(&keys::event(seq), &event.stored(seq))?;
                events
                    .insert(seq, bytes.as_slice())
                    .map_err(db_err("write event"))?;
                last = seq;
                seq = seq.checked_add(1).ok_or_else(|| {
                    StoreError::invalid("append event", "sequence numbers exhausted")
                })?;
            }
            meta.insert(NEXT_EVENT_KEY, seq)
                .map_err(db_err("write event counter"))?;
            // Sequence numbers are dense, so keeping `max` events means keeping (last - max, last].
            let cutoff = last.saturating_sub(max);
            loop {
                let first = events
                    .first()
                    .map_err(db_err("read oldest event"))?
                    .map(|(k, _)| k.value());
                match first {
                    Some(k) if k <= cutoff => {
                        events.remove(k).map_err(db_err("drop oldest event"))?;
                    }
                    _ => break,
                }
            }
            Ok(Commit::Yes(last))
        })
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        self.read(|rtx| {
            let t = rtx
                .open_table(EVENTS)
                .map_err(db_err("open events table"))?;
            let Some(from) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for entry in t.range(from..).map_err(db_err("scan events"))? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = entry.map_err(db_err("scan events"))?;
                out.push(codec::decode_event(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    fn last_event_seq(&self) -> Result<u64> {
        self.read(|rtx| {
            let t = rtx.open_table(META).map_err(db_err("open meta table"))?;
            Ok(meta_counter(&t, NEXT_EVENT_KEY)?.saturating_sub(1))
        })
    }
}

impl RedbStore {
    /// Number of events currently kept (for tests and metrics).
    pub fn event_count(&self) -> Result<u64> {
        self.read(|rtx| {
            let t = rtx
                .open_table(EVENTS)
                .map_err(db_err("open events table"))?;
            t.len().map_err(db_err("count events"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::TempRedb;

    crate::contract_tests!(TempRedb::with_options);

    fn raw_write(path: &Path, f: impl FnOnce(&WriteTransaction)) {
        let db = Database::create(path).expect("open raw");
        let wtx = db.begin_write().expect("begin");
        f(&wtx);
        wtx.commit().expect("commit");
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        RedbStore::open(dir.path())
            .expect("create")
            .close()
            .expect("close");
        raw_write(&dir.path().join(FILE_NAME), |wtx| {
            let mut meta = wtx.open_table(META).expect("meta");
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION + 1).expect("insert");
        });
        let err = RedbStore::open(dir.path()).expect_err("newer schema");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, supported }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_warden_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        raw_write(&dir.path().join(FILE_NAME), |wtx| {
            let def: TableDefinition<u64, u64> = TableDefinition::new("someone_else");
            wtx.open_table(def)
                .expect("table")
                .insert(1, 2)
                .expect("insert");
        });
        let err = RedbStore::open(dir.path()).expect_err("foreign file");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("not a Warden store"), "{err}");
    }

    #[test]
    fn garbage_in_the_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), vec![0xa5; 64 * 1024]).expect("write");
        let err = RedbStore::open(dir.path()).expect_err("garbage");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "store file"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_values_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        RedbStore::open(dir.path())
            .expect("create")
            .close()
            .expect("close");
        raw_write(&dir.path().join(FILE_NAME), |wtx| {
            let mut jobs = wtx.open_table(JOBS).expect("jobs");
            jobs.insert("web", b"{\"name\":".as_slice())
                .expect("insert");
            let mut tasks = wtx.open_table(TASKS).expect("tasks");
            tasks.insert(("web", 2), b"[]".as_slice()).expect("insert");
            let mut releases = wtx.open_table(RELEASES).expect("releases");
            releases
                .insert("web", b"{\"job\":\"web\"}".as_slice())
                .expect("insert");
        });
        let store = RedbStore::open(dir.path()).expect("reopen");
        let err = store
            .get_job(&JobName::new("web"))
            .expect_err("corrupt job");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "jobs/web"),
            "{err}"
        );
        let err = store.list_tasks().expect_err("corrupt task");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "tasks/web/2"),
            "{err}"
        );
        let err = store
            .get_releases(&JobName::new("web"))
            .expect_err("corrupt releases");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "releases/web"),
            "{err}"
        );
        let err = store.list_releases().expect_err("corrupt releases");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "releases/web"),
            "{err}"
        );
        // An epoch-checked write on the corrupt slot fails cleanly and writes nothing.
        let task = TaskId::new(JobName::new("web"), 2);
        let err = store
            .put_task_state(
                &task,
                FencingToken(1),
                warden_core::planner::SlotState::Running,
                0,
                0,
            )
            .expect_err("corrupt slot");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_file_written_before_the_releases_table_opens_and_gains_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("create");
        store.put_job(&crate::contract::job("web", 1)).expect("put");
        store.close().expect("close");
        // What a build from before releases left behind: every other table, no `releases`.
        raw_write(&dir.path().join(FILE_NAME), |wtx| {
            assert!(wtx.delete_table(RELEASES).expect("delete table"));
        });
        let store = RedbStore::open(dir.path()).expect("open an older file");
        let web = JobName::new("web");
        assert_eq!(store.get_releases(&web).expect("get"), None);
        assert!(store.list_releases().expect("list").is_empty());
        assert!(store.get_job(&web).expect("get").is_some());
        let releases =
            JobReleases::with_release(None, crate::contract::job("web", 1), 1, "submit".into(), 10);
        store.put_releases(&releases).expect("put releases");
        store.close().expect("close");
        let store = RedbStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get_releases(&web).expect("get"), Some(releases));
    }

    #[cfg(unix)]
    #[test]
    fn a_new_store_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("state").join("store");
        let store = RedbStore::open(&dir).expect("open");
        assert_eq!(store.path(), dir.join(FILE_NAME));
        let mode = fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_second_handle_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = RedbStore::open(dir.path()).expect("first");
        let err = RedbStore::open(dir.path()).expect_err("second");
        assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
    }

    #[test]
    fn lowering_the_event_bound_trims_on_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open");
        for i in 0..10 {
            store
                .append_event(&NewEvent::new(i, "k", "m"))
                .expect("append");
        }
        store.close().expect("close");
        let options = StoreOptions {
            max_events: 3,
            ..StoreOptions::default()
        };
        let store = RedbStore::open_with(dir.path(), options).expect("reopen");
        assert_eq!(store.event_count().expect("count"), 10);
        assert_eq!(
            store
                .append_event(&NewEvent::new(11, "k", "m"))
                .expect("append"),
            11
        );
        assert_eq!(store.event_count().expect("count"), 3);
        let seqs: Vec<u64> = store
            .events_since(0, 100)
            .expect("read")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![9, 10, 11]);
    }
}
