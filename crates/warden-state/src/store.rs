//! One task's state on one agent: the keys and values in memory, the log on disk, the epoch
//! fence, the role, and what is acknowledged at each level.
//!
//! Writes are applied in memory and queued for the log under one short lock; a flusher thread
//! appends and syncs whatever queued while it was syncing (group commit: one `fdatasync` for
//! every write that arrived during the previous one). A caller then waits on a watch channel
//! until its sequence number is acknowledged at the level it asked for. Standbys' progress
//! comes from the replication streams ([`crate::repl`]) through [`StateStore::standby_synced`].

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use warden_core::state::{self, AckLevel, Fence, Fenced, Progress, StandbyProgress};

use crate::codec::{self, BatchOp, Op};
use crate::wal::{Checkpoint, Wal, WalError};

/// Limits on what a task may store (documented in docs/state.md).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest key, bytes.
    pub max_key: usize,
    /// Largest value or record, bytes.
    pub max_value: usize,
    /// Most operations in one batch.
    pub max_batch_ops: usize,
    /// Largest batch, bytes of keys and values.
    pub max_batch_bytes: usize,
    /// Frames kept in memory for standbys that reconnect (older ones are read from disk).
    pub backlog_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: 1024,
            max_value: 1 << 20,
            max_batch_ops: 10_000,
            max_batch_bytes: 16 << 20,
            backlog_bytes: 64 << 20,
        }
    }
}

/// This replica's part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes, ships its log.
    Primary,
    /// Follows a primary's log; refuses writes.
    Standby,
}

impl Role {
    /// The role as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// The role and epoch, as the role long-poll reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RoleState {
    /// Primary or standby.
    pub role: Role,
    /// The epoch (fencing token) of this replica's current term.
    pub epoch: u64,
}

/// Highest sequence numbers acknowledged at each level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Committed {
    /// Synced here.
    pub local: u64,
    /// Synced here and on every in-sync standby.
    pub standby: u64,
    /// Synced on a majority.
    pub quorum: u64,
    /// The log failed: nothing more will be acknowledged.
    pub failed: bool,
}

impl Committed {
    /// The number for `level`.
    pub fn at(&self, level: AckLevel) -> u64 {
        match level {
            AckLevel::Local => self.local,
            AckLevel::Standby => self.standby,
            AckLevel::Quorum => self.quorum,
        }
    }
}

/// Why a write was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The caller's epoch is not the current one.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// This replica is a standby.
    #[error("this replica is a standby (epoch {epoch}); write to the primary")]
    NotPrimary {
        /// The current epoch.
        epoch: u64,
    },
    /// The primary's write lease ran out: it may have been deposed.
    #[error("the write lease ran out: this primary may have been replaced, so it takes no writes")]
    LeaseExpired,
    /// A key, value or batch is out of bounds, or malformed.
    #[error("{0}")]
    Invalid(String),
    /// The job cannot reach this level (e.g. `standby` without standbys).
    #[error("ack level `{level}` needs a standby and this job keeps none")]
    Unreachable {
        /// The level asked for.
        level: AckLevel,
    },
    /// The log could not be written: the state is read-only until the agent restarts it.
    #[error("the state log failed: {0}")]
    Failed(String),
}

/// Why a wait for acknowledgement ended without it.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Not acknowledged in time. The write may still become durable.
    #[error(
        "not acknowledged at `{level}` within {waited:?} (sequence {seq}, acknowledged up to {at})"
    )]
    Timeout {
        /// The level.
        level: AckLevel,
        /// The sequence number waited for.
        seq: u64,
        /// Acknowledged at that level when the wait ended.
        at: u64,
        /// How long the wait was.
        waited: Duration,
    },
    /// The log failed or the store was closed.
    #[error("the state log failed: {0}")]
    Failed(String),
}

/// A standby applying frames refused them.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// From an older epoch than this replica has seen.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// Sequence numbers do not continue this replica's log.
    #[error("frame {found} does not follow {expected_next}")]
    Gap {
        /// The number expected.
        expected_next: u64,
        /// The number received.
        found: u64,
    },
    /// A frame does not decode.
    #[error("bad frame: {0}")]
    Bad(#[from] codec::DecodeError),
    /// This replica is the primary.
    #[error("this replica is the primary")]
    NotStandby,
    /// The log failed.
    #[error("the state log failed: {0}")]
    Failed(String),
}

struct Inner {
    kv: BTreeMap<String, Bytes>,
    /// The sequence number the next write gets.
    next_seq: u64,
    /// Epoch of the newest entry.
    last_epoch: u64,
    /// `(first seq, epoch)` of each epoch in the log, oldest first (what a standby that
    /// rejoins is checked against).
    epochs: Vec<(u64, u64)>,
    fence: Fence,
    role: Role,
    /// A primary takes no writes at or after this instant (none: no lease, e.g. in tests).
    lease_until: Option<Instant>,
    /// Frames applied but not yet appended to the log, and the first one's number.
    pending: Vec<u8>,
    pending_first: u64,
    /// Recent frames for standbys, by first sequence number.
    backlog: VecDeque<(u64, Bytes)>,
    backlog_bytes: usize,
    durable: u64,
    standbys: BTreeMap<String, StandbyProgress>,
    configured: u8,
    blob: Bytes,
    checkpoint_seq: u64,
    failed: Option<String>,
    closed: bool,
    /// Writes waiting for their acknowledgement, by level (local, standby, quorum) and
    /// sequence number: woken only when their number is reached, not at every change.
    waiters: [BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<bool>>>; 3],
    /// Before-images of the newest entries, by sequence number (at most [`UNDO_ENTRIES`]).
    undo: VecDeque<(u64, Undo)>,
    /// Test-only: `standby` and `quorum` acknowledge what is synced locally (see
    /// [`StateStore::break_acks_for_tests`]).
    broken_acks: bool,
    /// No write up to here may have been acknowledged at `standby` (by this replica as
    /// primary, or by the primaries before it, whose log this one's ends with): where a standby
    /// must have caught up to before it may join the in-sync set.
    acked_floor: u64,
    /// In-sync standbys holding up writes: since when, and the primary's synced position
    /// then (what they must reach to count as caught up again).
    behind: BTreeMap<String, (Instant, u64)>,
}

fn level_index(level: AckLevel) -> usize {
    match level {
        AckLevel::Local => 0,
        AckLevel::Standby => 1,
        AckLevel::Quorum => 2,
    }
}

/// Publish what is acknowledged now: wake the writes it covers (all of them, with `false`,
/// when the log failed), then tell the watchers. Takes the lock's guard and releases it.
fn publish(shared: &Shared, mut g: MutexGuard<'_, Inner>) {
    let c = g.committed();
    g.acked_floor = g
        .acked_floor
        .max(c.at(AckLevel::Standby))
        .max(c.at(AckLevel::Quorum));
    g.note_lag(Instant::now());
    let mut ready = Vec::new();
    for (i, level) in [AckLevel::Local, AckLevel::Standby, AckLevel::Quorum]
        .into_iter()
        .enumerate()
    {
        let map = &mut g.waiters[i];
        if c.failed {
            ready.extend(
                std::mem::take(map)
                    .into_values()
                    .flatten()
                    .map(|w| (w, false)),
            );
            continue;
        }
        let upto = c.at(level);
        while let Some(entry) = map.first_entry() {
            if *entry.key() > upto {
                break;
            }
            ready.extend(entry.remove().into_iter().map(|w| (w, true)));
        }
    }
    drop(g);
    for (w, ok) in ready {
        let _ = w.send(ok);
    }
    shared.committed.send_replace(c);
}

struct Shared {
    inner: Mutex<Inner>,
    wake_flusher: Condvar,
    wal: Mutex<Wal>,
    committed: watch::Sender<Committed>,
    role: watch::Sender<RoleState>,
    /// Highest sequence number applied (what followers of the stream wait on).
    applied: watch::Sender<u64>,
    limits: Limits,
    dir: PathBuf,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The directory's lock, held until the store is closed ([`StateStore::hold`]).
    held: Mutex<Option<crate::restore::DirLock>>,
}

/// One task's state. Cheap to clone; the flusher thread stops when the last clone is closed.
#[derive(Clone)]
pub struct StateStore {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What opening the store found, for the agent's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Highest sequence number recovered.
    pub seq: u64,
    /// Epoch of the newest entry.
    pub epoch: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
}

/// Entries whose before-images are kept, so that a log cut back (a deposed primary's
/// unreplicated tail) is undone in memory; a longer cut rebuilds the state from disk.
const UNDO_ENTRIES: usize = 65_536;

/// The before-images of one entry: each key it touched and its value before (none: absent).
type Undo = Vec<(String, Option<Bytes>)>;

/// Apply `op` and return its before-images.
fn apply_undoable(kv: &mut BTreeMap<String, Bytes>, op: &Op) -> Undo {
    match op {
        Op::Put { key, value } => vec![(key.clone(), kv.insert(key.clone(), value.clone()))],
        Op::Delete { key } => vec![(key.clone(), kv.remove(key))],
        Op::Batch(ops) => ops
            .iter()
            .map(|op| match op {
                BatchOp::Put(k, v) => (k.clone(), kv.insert(k.clone(), v.clone())),
                BatchOp::Delete(k) => (k.clone(), kv.remove(k)),
            })
            .collect(),
        Op::Record(_) | Op::Epoch => Vec::new(),
    }
}

fn apply_op(kv: &mut BTreeMap<String, Bytes>, op: &Op) {
    match op {
        Op::Put { key, value } => {
            kv.insert(key.clone(), value.clone());
        }
        Op::Delete { key } => {
            kv.remove(key);
        }
        Op::Batch(ops) => {
            for op in ops {
                match op {
                    BatchOp::Put(k, v) => {
                        kv.insert(k.clone(), v.clone());
                    }
                    BatchOp::Delete(k) => {
                        kv.remove(k);
                    }
                }
            }
        }
        Op::Record(_) | Op::Epoch => {}
    }
}

impl Inner {
    /// Take the state `r` rebuilt from disk (or from a checkpoint) as this replica's.
    fn reset(&mut self, r: Rebuilt) {
        self.kv = r.kv;
        self.next_seq = r.next_seq;
        self.pending_first = r.next_seq;
        self.last_epoch = r.last_epoch;
        self.epochs = r.epochs;
        self.blob = r.blob;
        self.checkpoint_seq = r.checkpoint_seq;
        self.undo.clear();
    }

    fn remember(&mut self, seq: u64, undo: Undo) {
        if self.undo.len() >= UNDO_ENTRIES {
            self.undo.pop_front();
        }
        self.undo.push_back((seq, undo));
    }

    /// Undo every entry after `keep` in memory, if their before-images are all kept.
    fn undo_after(&mut self, keep: u64) -> bool {
        if self.undo.front().is_none_or(|&(first, _)| first > keep + 1) {
            return false;
        }
        while self.undo.back().is_some_and(|&(seq, _)| seq > keep) {
            if let Some((_, images)) = self.undo.pop_back() {
                for (k, before) in images.into_iter().rev() {
                    match before {
                        Some(v) => {
                            self.kv.insert(k, v);
                        }
                        None => {
                            self.kv.remove(&k);
                        }
                    }
                }
            }
        }
        self.next_seq = keep + 1;
        self.pending_first = self.next_seq;
        while self.epochs.last().is_some_and(|&(first, _)| first > keep) {
            self.epochs.pop();
        }
        self.last_epoch = self.epochs.last().map_or(0, |&(_, e)| e);
        true
    }

    /// Track which in-sync standbys hold up writes: one whose synced position is behind the
    /// primary's is behind from that moment until it reaches the position the primary had
    /// then.
    fn note_lag(&mut self, now: Instant) {
        let durable = self.durable;
        let standbys = &self.standbys;
        self.behind
            .retain(|name, _| standbys.get(name).is_some_and(|p| p.in_sync));
        for (name, p) in standbys.iter().filter(|(_, p)| p.in_sync) {
            if p.synced >= durable {
                self.behind.remove(name);
                continue;
            }
            // Updated in place: this runs at every publish of a busy primary.
            match self.behind.get_mut(name) {
                Some(b) if p.synced >= b.1 => *b = (now, durable),
                Some(_) => {}
                None => {
                    self.behind.insert(name.clone(), (now, durable));
                }
            }
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            local: self.durable,
            standbys: self.standbys.values().copied().collect(),
        }
    }

    fn committed(&self) -> Committed {
        if self.broken_acks {
            return Committed {
                local: self.durable,
                standby: self.durable,
                quorum: self.durable,
                failed: self.failed.is_some(),
            };
        }
        let p = self.progress();
        Committed {
            local: state::committed(AckLevel::Local, &p, self.configured),
            standby: state::committed(AckLevel::Standby, &p, self.configured),
            quorum: state::committed(AckLevel::Quorum, &p, self.configured),
            failed: self.failed.is_some(),
        }
    }

    /// Queue one frame (already applied) for the log and the standbys.
    fn queue(&mut self, seq: u64, frame: &[u8], limits: &Limits) {
        if self.pending.is_empty() {
            self.pending_first = seq;
        }
        self.pending.extend_from_slice(frame);
        self.backlog.push_back((seq, Bytes::copy_from_slice(frame)));
        self.backlog_bytes += frame.len();
        while self.backlog_bytes > limits.backlog_bytes && self.backlog.len() > 1 {
            if let Some((_, f)) = self.backlog.pop_front() {
                self.backlog_bytes -= f.len();
            }
        }
    }

    fn note_epoch(&mut self, seq: u64, epoch: u64) {
        if self.epochs.last().is_none_or(|&(_, e)| e != epoch) {
            self.epochs.push((seq, epoch));
        }
        self.last_epoch = epoch;
    }
}

/// The state rebuilt from what [`Wal::open`] found.
struct Rebuilt {
    kv: BTreeMap<String, Bytes>,
    next_seq: u64,
    last_epoch: u64,
    epochs: Vec<(u64, u64)>,
    blob: Bytes,
    checkpoint_seq: u64,
}

impl From<crate::wal::Recovered> for Rebuilt {
    fn from(recovered: crate::wal::Recovered) -> Rebuilt {
        let mut r = Rebuilt {
            kv: BTreeMap::new(),
            next_seq: 1,
            last_epoch: 0,
            epochs: Vec::new(),
            blob: Bytes::new(),
            checkpoint_seq: 0,
        };
        if let Some(c) = recovered.checkpoint {
            r.kv.extend(c.kv);
            r.next_seq = c.seq + 1;
            r.last_epoch = c.epoch;
            r.blob = c.blob;
            r.checkpoint_seq = c.seq;
            r.epochs.push((c.seq, c.epoch));
        }
        let mut rest = recovered.frames;
        while !rest.is_empty() {
            let Ok((entry, n)) = codec::decode(&rest) else {
                break;
            };
            apply_op(&mut r.kv, &entry.op);
            r.next_seq = entry.seq + 1;
            if r.epochs.last().is_none_or(|&(_, e)| e != entry.epoch) {
                r.epochs.push((entry.seq, entry.epoch));
            }
            r.last_epoch = entry.epoch;
            rest = rest.slice(n..);
        }
        r
    }
}

impl StateStore {
    /// Open the state in `dir` as `role` at `epoch`, keeping `standbys` standbys.
    pub fn open(
        dir: &Path,
        role: Role,
        epoch: u64,
        standbys: u8,
        limits: Limits,
    ) -> Result<(StateStore, Opened), WalError> {
        let (wal, recovered) = Wal::open(dir)?;
        let torn_bytes = recovered.torn_bytes;
        let Rebuilt {
            kv,
            next_seq,
            last_epoch,
            epochs,
            blob,
            checkpoint_seq,
        } = Rebuilt::from(recovered);
        let durable = next_seq - 1;
        let opened = Opened {
            seq: durable,
            epoch: last_epoch,
            torn_bytes,
        };
        let inner = Inner {
            kv,
            next_seq,
            last_epoch,
            epochs,
            fence: Fence {
                epoch: epoch.max(last_epoch),
            },
            role,
            lease_until: None,
            pending: Vec::new(),
            pending_first: next_seq,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            durable,
            standbys: BTreeMap::new(),
            behind: BTreeMap::new(),
            configured: standbys,
            blob,
            checkpoint_seq,
            failed: None,
            closed: false,
            waiters: Default::default(),
            broken_acks: false,
            undo: VecDeque::new(),
            acked_floor: durable,
        };
        let committed = inner.committed();
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            wake_flusher: Condvar::new(),
            wal: Mutex::new(wal),
            committed: watch::Sender::new(committed),
            role: watch::Sender::new(RoleState {
                role,
                epoch: epoch.max(last_epoch),
            }),
            applied: watch::Sender::new(durable),
            limits,
            dir: dir.to_path_buf(),
            flusher: Mutex::new(None),
            held: Mutex::new(None),
        });
        let flusher = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("warden-state-flush".into())
            .spawn(move || flush_loop(&flusher))
            .map_err(|source| WalError::Io {
                what: "start flusher thread",
                path: dir.to_path_buf(),
                source,
            })?;
        *lock(&shared.flusher) = Some(handle);
        Ok((StateStore { shared }, opened))
    }

    /// **Test-only.** Acknowledge writes at `standby` and `quorum` as soon as they are synced
    /// here, before any standby holds them: the bug the failover check must catch
    /// ([`crate::failover`]). Never called by the agent.
    #[doc(hidden)]
    pub fn break_acks_for_tests(&self) {
        let mut g = lock(&self.shared.inner);
        g.broken_acks = true;
        publish(&self.shared, g);
    }

    /// The directory the state lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Stop the flusher after it has written what is queued, and wait for it and for a
    /// checkpoint under way: once this returns, nothing more is written to the directory (it
    /// may be opened again). Further writes and checkpoints fail.
    pub fn close(&self) {
        lock(&self.shared.inner).closed = true;
        self.shared.wake_flusher.notify_all();
        let handle = lock(&self.shared.flusher).take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
        // A checkpoint under way holds the log: wait for it (later ones see `closed`).
        drop(lock(&self.shared.wal));
        // Nothing more is written: the directory is free for the next store (or restore).
        lock(&self.shared.held).take();
    }

    /// Keep the directory's lock until the store is closed (see
    /// [`DirLock`](crate::restore::DirLock)).
    pub fn hold(&self, dir_lock: crate::restore::DirLock) {
        *lock(&self.shared.held) = Some(dir_lock);
    }

    fn check_op(&self, op: &Op) -> Result<(), WriteError> {
        let l = &self.shared.limits;
        let key_ok = |k: &str| -> Result<(), WriteError> {
            if k.is_empty() {
                return Err(WriteError::Invalid("a key must not be empty".into()));
            }
            if k.len() > l.max_key {
                return Err(WriteError::Invalid(format!(
                    "key of {} bytes is longer than the limit of {} bytes",
                    k.len(),
                    l.max_key
                )));
            }
            Ok(())
        };
        let value_ok = |n: usize| -> Result<(), WriteError> {
            if n > l.max_value {
                return Err(WriteError::Invalid(format!(
                    "value of {n} bytes is larger than the limit of {} bytes",
                    l.max_value
                )));
            }
            Ok(())
        };
        match op {
            Op::Put { key, value } => {
                key_ok(key)?;
                value_ok(value.len())
            }
            Op::Delete { key } => key_ok(key),
            Op::Record(data) => value_ok(data.len()),
            Op::Epoch => Ok(()),
            Op::Batch(ops) => {
                if ops.is_empty() {
                    return Err(WriteError::Invalid("a batch must hold an operation".into()));
                }
                if ops.len() > l.max_batch_ops {
                    return Err(WriteError::Invalid(format!(
                        "batch of {} operations exceeds the limit of {}",
                        ops.len(),
                        l.max_batch_ops
                    )));
                }
                let mut bytes = 0usize;
                for op in ops {
                    match op {
                        BatchOp::Put(k, v) => {
                            key_ok(k)?;
                            value_ok(v.len())?;
                            bytes += k.len() + v.len();
                        }
                        BatchOp::Delete(k) => {
                            key_ok(k)?;
                            bytes += k.len();
                        }
                    }
                }
                if bytes > l.max_batch_bytes {
                    return Err(WriteError::Invalid(format!(
                        "batch of {bytes} bytes exceeds the limit of {} bytes",
                        l.max_batch_bytes
                    )));
                }
                Ok(())
            }
        }
    }

    /// Apply a write from the task, under `epoch`. Returns its sequence number; it is durable
    /// at a level once [`StateStore::wait`] says so.
    pub fn write(&self, epoch: u64, op: Op) -> Result<u64, WriteError> {
        self.write_many(epoch, vec![op])
            .pop()
            .unwrap_or(Err(WriteError::Invalid("no write".into())))
    }

    /// Apply several writes from the task, each on its own (not atomically: each is checked,
    /// numbered and answered by itself, as if written one after the other), under one lock
    /// and one wake-up of the flusher. Returns each one's sequence number or refusal, in order.
    pub fn write_many(&self, epoch: u64, ops: Vec<Op>) -> Vec<Result<u64, WriteError>> {
        let mut out = Vec::with_capacity(ops.len());
        let mut frame = Vec::with_capacity(64);
        let mut last = None;
        {
            let mut g = lock(&self.shared.inner);
            for op in ops {
                let r = self.check_op(&op).and_then(|()| {
                    if let Some(e) = &g.failed {
                        return Err(WriteError::Failed(e.clone()));
                    }
                    if g.closed {
                        return Err(WriteError::Failed("the state is closed".into()));
                    }
                    g.fence.check_write(epoch)?;
                    if g.role != Role::Primary {
                        return Err(WriteError::NotPrimary {
                            epoch: g.fence.epoch,
                        });
                    }
                    if g.lease_until.is_some_and(|t| Instant::now() >= t) {
                        return Err(WriteError::LeaseExpired);
                    }
                    let seq = g.next_seq;
                    frame.clear();
                    codec::encode(&mut frame, seq, epoch, &op);
                    let undo = apply_undoable(&mut g.kv, &op);
                    g.remember(seq, undo);
                    g.next_seq += 1;
                    g.note_epoch(seq, epoch);
                    g.queue(seq, &frame, &self.shared.limits);
                    Ok(seq)
                });
                if let Ok(seq) = r {
                    last = Some(seq);
                }
                out.push(r);
            }
        }
        if let Some(seq) = last {
            self.shared.wake_flusher.notify_one();
            self.shared.applied.send_replace(seq);
        }
        out
    }

    /// Wait until `seq` is acknowledged at `level`, for at most `timeout`.
    pub async fn wait(
        &self,
        seq: u64,
        level: AckLevel,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let rx = {
            let mut g = lock(&self.shared.inner);
            if let Some(e) = &g.failed {
                return Err(WaitError::Failed(e.clone()));
            }
            if g.committed().at(level) >= seq {
                return Ok(());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let map = &mut g.waiters[level_index(level)];
            // Waits that timed out leave their senders behind; drop them now and then.
            if map.len() > 10_000 {
                map.retain(|_, ws| {
                    ws.retain(|w| !w.is_closed());
                    !ws.is_empty()
                });
            }
            map.entry(seq).or_default().push(tx);
            rx
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(true)) => Ok(()),
            Ok(_) => Err(WaitError::Failed(
                lock(&self.shared.inner)
                    .failed
                    .clone()
                    .unwrap_or_else(|| "the state is closed".into()),
            )),
            Err(_) => Err(WaitError::Timeout {
                level,
                seq,
                at: self.shared.committed.borrow().at(level),
                waited: timeout,
            }),
        }
    }

    /// Whether a write may ask for `level` here.
    pub fn reachable(&self, level: AckLevel) -> Result<(), WriteError> {
        let configured = lock(&self.shared.inner).configured;
        if level != AckLevel::Local && configured == 0 {
            return Err(WriteError::Unreachable { level });
        }
        Ok(())
    }

    /// The value of `key`, and the sequence number the state is at.
    pub fn get(&self, key: &str) -> (Option<Bytes>, u64) {
        let g = lock(&self.shared.inner);
        (g.kv.get(key).cloned(), g.next_seq - 1)
    }

    /// Keys starting with `prefix` (at most `limit`, from `after` exclusive), and the sequence
    /// number the state is at.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, Bytes)>, u64) {
        let g = lock(&self.shared.inner);
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let items =
            g.kv.range((start, std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        (items, g.next_seq - 1)
    }

    /// A full copy of the state as it is now (not necessarily durable).
    pub fn snapshot(&self) -> Checkpoint {
        let g = lock(&self.shared.inner);
        Checkpoint {
            seq: g.next_seq - 1,
            epoch: g.last_epoch,
            kv: g.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            blob: g.blob.clone(),
        }
    }

    /// Write a checkpoint of the state with the task's own snapshot `blob` of its records,
    /// under `epoch`; the log before it is dropped. Returns the checkpoint's sequence number.
    pub fn checkpoint(&self, epoch: u64, blob: Bytes) -> Result<u64, WriteError> {
        if blob.len() > self.shared.limits.max_batch_bytes {
            return Err(WriteError::Invalid(format!(
                "checkpoint of {} bytes exceeds the limit of {} bytes",
                blob.len(),
                self.shared.limits.max_batch_bytes
            )));
        }
        let mut wal = lock(&self.shared.wal);
        let (ckpt, pending) = {
            let mut g = lock(&self.shared.inner);
            // Closed: the directory may be another store's (or a restore's) now.
            if g.closed {
                return Err(WriteError::Failed("the state is closed".into()));
            }
            g.fence.check_write(epoch)?;
            if g.role != Role::Primary {
                return Err(WriteError::NotPrimary {
                    epoch: g.fence.epoch,
                });
            }
            g.blob = blob.clone();
            let pending = (g.pending_first, std::mem::take(&mut g.pending));
            let ckpt = Checkpoint {
                seq: g.next_seq - 1,
                epoch: g.last_epoch,
                kv: g.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                blob,
            };
            (ckpt, pending)
        };
        let result = (|| {
            if !pending.1.is_empty() {
                wal.append(pending.0, &pending.1)?;
            }
            wal.checkpoint(&ckpt, ckpt.seq + 1)
        })();
        drop(wal);
        let mut g = lock(&self.shared.inner);
        match result {
            Ok(()) => {
                g.checkpoint_seq = ckpt.seq;
                g.durable = g.durable.max(ckpt.seq);
                publish(&self.shared, g);
                Ok(ckpt.seq)
            }
            Err(e) => {
                let msg = e.to_string();
                g.failed = Some(msg.clone());
                Err(WriteError::Failed(msg))
            }
        }
    }

    /// Highest sequence number applied here.
    pub fn applied(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// A receiver of the applied sequence number (stream readers wait on it).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// A receiver of the acknowledged sequence numbers.
    pub fn committed_watch(&self) -> watch::Receiver<Committed> {
        self.shared.committed.subscribe()
    }

    /// The acknowledged sequence numbers now.
    pub fn committed(&self) -> Committed {
        *self.shared.committed.borrow()
    }

    /// A receiver of the role and epoch (the role long-poll waits on it).
    pub fn role_watch(&self) -> watch::Receiver<RoleState> {
        self.shared.role.subscribe()
    }

    /// The role and epoch now.
    pub fn role(&self) -> RoleState {
        *self.shared.role.borrow()
    }

    /// Extend (or set) the primary's write lease: no write is taken at or after `until`.
    pub fn set_write_lease(&self, until: Option<Instant>) {
        lock(&self.shared.inner).lease_until = until;
    }

    /// Become primary at `epoch` (a promotion): the log is sealed where it is, and the first
    /// entry of the new epoch marks the boundary. Refused for an epoch not newer than every
    /// epoch this replica has seen, unless it already is primary at it.
    pub fn promote(&self, epoch: u64) -> Result<u64, WriteError> {
        let seq = {
            let mut g = lock(&self.shared.inner);
            if g.role == Role::Primary && g.fence.epoch == epoch {
                return Ok(g.next_seq - 1);
            }
            // Strictly newer: the epoch a standby followed belongs to the primary it followed.
            if epoch <= g.fence.epoch {
                return Err(WriteError::Fenced(Fenced {
                    got: epoch,
                    current: g.fence.epoch,
                }));
            }
            g.fence.admit(epoch)?;
            g.role = Role::Primary;
            g.standbys.clear();
            let seq = g.next_seq;
            // Everything before the new epoch may have been acknowledged by earlier primaries.
            g.acked_floor = g.acked_floor.max(seq);
            let mut frame = Vec::with_capacity(32);
            codec::encode(&mut frame, seq, epoch, &Op::Epoch);
            g.next_seq += 1;
            g.note_epoch(seq, epoch);
            g.queue(seq, &frame, &self.shared.limits);
            seq
        };
        self.shared.wake_flusher.notify_one();
        self.shared.applied.send_replace(seq);
        self.shared.role.send_replace(RoleState {
            role: Role::Primary,
            epoch,
        });
        Ok(seq)
    }

    /// Become a standby under `epoch` (a deposed primary, or a new standby).
    pub fn demote(&self, epoch: u64) -> Result<(), Fenced> {
        {
            let mut g = lock(&self.shared.inner);
            g.fence.admit(epoch)?;
            g.role = Role::Standby;
            g.standbys.clear();
            publish(&self.shared, g);
        }
        self.shared.role.send_replace(RoleState {
            role: Role::Standby,
            epoch,
        });
        Ok(())
    }

    /// Record a standby's progress (from its acks) and whether it is in the in-sync set.
    pub fn standby_synced(&self, standby: &str, synced: u64, in_sync: bool) {
        let mut g = lock(&self.shared.inner);
        let p = g.standbys.entry(standby.to_string()).or_default();
        p.synced = p.synced.max(synced);
        p.in_sync = in_sync;
        publish(&self.shared, g);
    }

    /// A standby that acknowledged `synced` joins the in-sync set if it holds every write
    /// that may have been acknowledged at `standby` (by this primary or the ones before it);
    /// from then on writes wait for it. Returns whether it is in the set.
    pub fn standby_join(&self, standby: &str, synced: u64) -> bool {
        let mut g = lock(&self.shared.inner);
        if g.role != Role::Primary {
            return false;
        }
        let floor = g.acked_floor;
        let p = g.standbys.entry(standby.to_string()).or_default();
        p.synced = p.synced.max(synced);
        if !p.in_sync && p.synced >= floor {
            p.in_sync = true;
        }
        let member = p.in_sync;
        publish(&self.shared, g);
        member
    }

    /// Forget a standby (the server removed it from the job).
    pub fn standby_removed(&self, standby: &str) {
        let mut g = lock(&self.shared.inner);
        g.standbys.remove(standby);
        publish(&self.shared, g);
    }

    /// The in-sync standbys that have held up writes for `limit` or longer (behind the
    /// primary's synced position, not caught up with it since), when at least one other
    /// in-sync standby is not: what the primary asks the server to take out of the in-sync
    /// set, so that writes at `standby` go on with the others. Empty on a standby.
    pub fn lagging(&self, limit: std::time::Duration) -> Vec<String> {
        let g = lock(&self.shared.inner);
        if g.role != Role::Primary {
            return Vec::new();
        }
        let now = Instant::now();
        let slow: Vec<String> = g
            .behind
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= limit)
            .map(|(name, _)| name.clone())
            .collect();
        let members = g.standbys.values().filter(|p| p.in_sync).count();
        if slow.len() >= members {
            return Vec::new(); // nothing would go on without them
        }
        slow
    }

    /// Each standby's progress as the primary sees it.
    pub fn standbys(&self) -> Vec<(String, StandbyProgress)> {
        lock(&self.shared.inner)
            .standbys
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The last sequence number of `epoch` in this log, if the log holds that epoch: where a
    /// standby whose newest entry has `epoch` must cut its log to match this one.
    pub fn end_of_epoch(&self, epoch: u64) -> Option<u64> {
        let g = lock(&self.shared.inner);
        let i = g.epochs.iter().rposition(|&(_, e)| e == epoch)?;
        Some(match g.epochs.get(i + 1) {
            Some(&(next_first, _)) => next_first - 1,
            None => g.next_seq - 1,
        })
    }

    /// `(last seq, its epoch)`: what a standby tells the primary it holds.
    pub fn position(&self) -> (u64, u64) {
        let g = lock(&self.shared.inner);
        (g.next_seq - 1, g.last_epoch)
    }

    /// Frames from `from` on, at most about `max_bytes`: from memory when the backlog still
    /// holds `from`, else from disk. `None` when `from` is older than anything kept (the
    /// standby must be seeded from a checkpoint).
    pub fn frames_from(&self, from: u64, max_bytes: usize) -> Result<Option<Bytes>, WalError> {
        {
            let g = lock(&self.shared.inner);
            if from >= g.next_seq {
                return Ok(Some(Bytes::new()));
            }
            if let Some(&(first, _)) = g.backlog.front()
                && from >= first
            {
                let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
                let mut out = Vec::new();
                for (_, f) in g.backlog.iter().skip(skip) {
                    out.extend_from_slice(f);
                    if out.len() >= max_bytes {
                        break;
                    }
                }
                return Ok(Some(Bytes::from(out)));
            }
            if from <= g.checkpoint_seq {
                return Ok(None);
            }
        }
        let wal = lock(&self.shared.wal);
        if from < wal.first_seq() {
            return Ok(None);
        }
        let out = wal.read_from(from, max_bytes)?;
        Ok(Some(Bytes::from(out)))
    }

    /// Apply frames a primary of `epoch` sent (a standby). Frames already held are skipped.
    /// Returns the highest sequence number now applied.
    pub fn apply_frames(&self, epoch: u64, mut frames: Bytes) -> Result<u64, ApplyError> {
        let last = {
            let mut g = lock(&self.shared.inner);
            if let Some(e) = &g.failed {
                return Err(ApplyError::Failed(e.clone()));
            }
            if g.role != Role::Standby {
                return Err(ApplyError::NotStandby);
            }
            g.fence.admit(epoch)?;
            while !frames.is_empty() {
                let (entry, n) = codec::decode(&frames)?;
                if entry.seq >= g.next_seq {
                    if entry.seq != g.next_seq {
                        return Err(ApplyError::Gap {
                            expected_next: g.next_seq,
                            found: entry.seq,
                        });
                    }
                    if entry.epoch > epoch {
                        return Err(ApplyError::Bad(codec::DecodeError::Malformed(
                            "frame from a newer epoch than its stream",
                        )));
                    }
                    let undo = apply_undoable(&mut g.kv, &entry.op);
                    g.remember(entry.seq, undo);
                    g.next_seq += 1;
                    g.note_epoch(entry.seq, entry.epoch);
                    let frame = frames.slice(..n);
                    g.queue(entry.seq, &frame, &self.shared.limits);
                }
                frames = frames.slice(n..);
            }
            g.next_seq - 1
        };
        self.shared.wake_flusher.notify_one();
        self.shared.applied.send_replace(last);
        Ok(last)
    }

    /// Replace this standby's whole state with `checkpoint` (seeding, or cutting a log that
    /// ran past the primary's). Returns the sequence number this replica held before.
    pub fn reseed(&self, epoch: u64, checkpoint: Checkpoint) -> Result<u64, ApplyError> {
        let bytes = checkpoint.encode();
        self.reseed_encoded(epoch, checkpoint, &bytes)
    }

    /// [`StateStore::reseed`] with the checkpoint's encoding at hand (what the primary sent),
    /// written to disk as it is.
    pub fn reseed_encoded(
        &self,
        epoch: u64,
        checkpoint: Checkpoint,
        bytes: &[u8],
    ) -> Result<u64, ApplyError> {
        let mut wal = lock(&self.shared.wal);
        let mut g = lock(&self.shared.inner);
        if g.role != Role::Standby {
            return Err(ApplyError::NotStandby);
        }
        g.fence.admit(epoch)?;
        let had = g.next_seq - 1;
        g.pending.clear();
        wal.checkpoint_bytes(checkpoint.seq, bytes, checkpoint.seq + 1)
            .map_err(|e| ApplyError::Failed(e.to_string()))?;
        let seq = checkpoint.seq;
        g.reset(Rebuilt::from(crate::wal::Recovered {
            checkpoint: Some(checkpoint),
            ..Default::default()
        }));
        g.backlog.clear();
        g.backlog_bytes = 0;
        g.durable = seq;
        publish(&self.shared, g);
        drop(wal);
        self.shared.applied.send_replace(seq);
        Ok(had)
    }
}

impl StateStore {
    /// The sequence number of this replica's checkpoint (0: none): a log can be cut back to
    /// no earlier than it.
    pub fn checkpoint_seq(&self) -> u64 {
        lock(&self.shared.inner).checkpoint_seq
    }

    /// Cut this standby's log after `keep` (a deposed primary's tail that the new primary of
    /// `epoch` does not hold): the log on disk is truncated, the state rebuilt from the
    /// checkpoint and what is left. Returns how many entries were discarded. Refused when
    /// `keep` is before this replica's checkpoint (it must be seeded instead).
    pub fn truncate_to(&self, epoch: u64, keep: u64) -> Result<u64, ApplyError> {
        let mut wal = lock(&self.shared.wal);
        let mut g = lock(&self.shared.inner);
        if g.role != Role::Standby {
            return Err(ApplyError::NotStandby);
        }
        g.fence.admit(epoch)?;
        let had = g.next_seq - 1;
        if keep >= had {
            return Ok(0);
        }
        if keep < g.checkpoint_seq {
            return Err(ApplyError::Gap {
                expected_next: g.checkpoint_seq + 1,
                found: keep + 1,
            });
        }
        // What is queued goes to disk first, so the cut sees the whole log.
        let pending = std::mem::take(&mut g.pending);
        let fail = |g: &mut Inner, e: WalError| {
            let msg = e.to_string();
            g.failed = Some(msg.clone());
            ApplyError::Failed(msg)
        };
        if !pending.is_empty()
            && let Err(e) = wal
                .append(g.pending_first, &pending)
                .and_then(|()| wal.sync())
        {
            return Err(fail(&mut g, e));
        }
        if g.undo_after(keep) {
            // Cheap: the tail undone in memory, the log file cut.
            if let Err(e) = wal.cut_after(keep) {
                return Err(fail(&mut g, e));
            }
        } else {
            match wal.truncate_after(keep) {
                Ok(recovered) => g.reset(Rebuilt::from(recovered)),
                Err(e) => return Err(fail(&mut g, e)),
            }
        }
        while g.backlog.back().is_some_and(|&(seq, _)| seq > keep) {
            if let Some((_, f)) = g.backlog.pop_back() {
                g.backlog_bytes -= f.len();
            }
        }
        g.durable = g.next_seq - 1;
        let now = g.next_seq - 1;
        publish(&self.shared, g);
        drop(wal);
        self.shared.applied.send_replace(now);
        Ok(had - now)
    }
}

fn flush_loop(shared: &Shared) {
    loop {
        {
            let mut g = lock(&shared.inner);
            while g.pending.is_empty() && !g.closed {
                g = shared
                    .wake_flusher
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if g.pending.is_empty() && g.closed {
                return;
            }
        }
        let mut wal = lock(&shared.wal);
        let (first, buf, last) = {
            let mut g = lock(&shared.inner);
            let buf = std::mem::take(&mut g.pending);
            (g.pending_first, buf, g.next_seq - 1)
        };
        if buf.is_empty() {
            continue;
        }
        let result = wal.append(first, &buf).and_then(|()| wal.sync());
        // Still holding the log: a reseed cannot slip in between the sync and this update
        // (it would be overwritten by a number from the log it replaced).
        let mut g = lock(&shared.inner);
        drop(wal);
        match result {
            Ok(()) => {
                g.durable = g.durable.max(last);
                publish(shared, g);
            }
            Err(e) => {
                tracing::error!(error = %e, "state log write failed; the state is read-only now");
                g.failed = Some(e.to_string());
                g.closed = true;
                // Wake every waiter so it sees the failure rather than a timeout.
                publish(shared, g);
                return;
            }
        }
    }
}
