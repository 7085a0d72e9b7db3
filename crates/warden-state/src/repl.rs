//! Replication from a primary to its standbys: the standby dials the primary's agent, says
//! which job it follows and where its log ends, and the primary streams the log's frames from
//! there (batched: every frame that queued while the previous batch was on the wire goes in
//! the next one); the standby applies them, syncs, and acknowledges the highest contiguous
//! sequence number it holds.
//!
//! ```text
//! message = kind:u8 len:u32le payload
//! H hello       standby → primary   JSON {job, standby, epoch, last_seq, last_epoch}
//! F frames      primary → standby   epoch:varint crc:u32le first_seq:varint entries (codec::to_wire)
//! C checkpoint  primary → standby   epoch:u64le keep:u64le checkpoint   (seeding; frames follow)
//! A ack         standby → primary   synced:u64le
//! T truncate    primary → standby   epoch:u64le keep:u64le   (cut the log after keep; frames follow)
//! E error       either way          UTF-8 text; the connection closes
//! ```
//!
//! With TLS ([`crate::tls`], the agents' own certificates) every connection is mutual TLS:
//! the primary takes a Hello only from a standby whose certificate names it, and a standby
//! follows only a primary whose certificate names the agent the server said.
//!
//! Resuming: a standby whose newest entry is `(last_seq, last_epoch)` continues after it when
//! the primary's log holds `last_epoch` up to at least `last_seq`. A standby whose log runs
//! past the end of that epoch in the primary's log (a deposed primary's writes that were
//! never replicated) is told to cut its log there (`T`), rebuilds its state from its
//! checkpoint and what is left, says how many entries it discarded, and continues. One that
//! cannot be cut back so far (its checkpoint is later), whose last epoch the primary no longer
//! knows, or that fell behind everything the primary keeps, is seeded from a checkpoint; `keep`
//! in that message is the last of its entries the primary's log holds too (`u64::MAX`: the
//! primary cannot tell).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::store::{Role, StateStore};
use crate::tls::ReplTls;

/// A replication connection: plain TCP or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}
use crate::wal::Checkpoint;

/// Largest message accepted (a batch of frames, or a checkpoint).
pub const MAX_MESSAGE: usize = 2 << 30;
/// Bytes of frames sent in one message, at most (about).
pub const BATCH_BYTES: usize = 1 << 20;

/// What a standby says first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The job whose state it follows.
    pub job: String,
    /// Its name (the agent's), as the primary reports it.
    pub standby: String,
    /// The epoch it knows.
    pub epoch: u64,
    /// Its newest entry.
    pub last_seq: u64,
    /// That entry's epoch.
    pub last_epoch: u64,
    /// Its checkpoint's sequence number: its log cannot be cut back before it.
    #[serde(default)]
    pub base: u64,
}

/// Replication failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The connection failed.
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer said no.
    #[error("refused by the primary: {0}")]
    Refused(String),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The store refused the frames.
    #[error(transparent)]
    Apply(#[from] crate::store::ApplyError),
    /// The log failed.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
}

async fn write_msg<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u8,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    w.write_u8(kind).await?;
    w.write_u32_le(u32::try_from(len).unwrap_or(u32::MAX))
        .await?;
    for p in parts {
        w.write_all(p).await?;
    }
    w.flush().await
}

async fn read_msg<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Bytes), ReplError> {
    let kind = r.read_u8().await?;
    let len = r.read_u32_le().await? as usize;
    if len > MAX_MESSAGE {
        return Err(ReplError::Protocol(format!("message of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok((kind, Bytes::from(buf)))
}

fn epoch_and_rest(b: &Bytes) -> Result<(u64, Bytes), ReplError> {
    if b.len() < 8 {
        return Err(ReplError::Protocol("message without an epoch".into()));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    Ok((u64::from_le_bytes(a), b.slice(8..)))
}

/// Counters of one stream, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Bytes of frames sent.
    pub frame_bytes: std::sync::atomic::AtomicU64,
    /// Bytes sent in all (frames, headers, checkpoints).
    pub wire_bytes: std::sync::atomic::AtomicU64,
    /// Checkpoints sent (seedings).
    pub seeds: std::sync::atomic::AtomicU64,
    /// Standbys turned away (unknown job, or this replica is not the primary they follow).
    pub refused: std::sync::atomic::AtomicU64,
}

/// The primary side on one agent: the stores it is primary for, by job, and the in-sync set
/// of each.
///
/// The in-sync set a primary waits for is the set the server last ordered, plus the standbys
/// it found caught up since (it reports them; the server adds them to the set it stores). A
/// standby joins only when it holds every write that may have been acknowledged
/// ([`StateStore::standby_join`]), so the set the server stores never names one that lacks an
/// acknowledged write. A member leaves only when the server's set drops it (the server
/// replaced its slot), or, joined here and never stored, when it is no longer a standby of the
/// job.
#[derive(Clone, Default)]
pub struct Primaries {
    jobs: Arc<Mutex<HashMap<String, Served>>>,
    stats: Arc<StreamStats>,
    /// Mutual TLS on every connection (`None`: plain TCP).
    tls: Option<Arc<ReplTls>>,
}

#[derive(Clone)]
struct Served {
    store: StateStore,
    in_sync: Arc<Mutex<InSync>>,
}

#[derive(Default)]
struct InSync {
    /// The server's set.
    ordered: Vec<String>,
    /// Found caught up here, not (yet) in the server's set.
    joined: std::collections::BTreeSet<String>,
    /// The job's standbys (`None`: not told; any standby may join).
    roster: Option<Vec<String>>,
}

impl InSync {
    fn members(&self) -> Vec<String> {
        let mut all: Vec<String> = self.ordered.clone();
        all.extend(
            self.joined
                .iter()
                .filter(|j| !self.ordered.contains(j))
                .cloned(),
        );
        all.sort();
        all
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Primaries {
    /// Serve `job`'s store to standbys; `in_sync` names the standbys (agent names) of the
    /// in-sync set.
    pub fn insert(&self, job: &str, store: StateStore, in_sync: Vec<String>) {
        for s in &in_sync {
            // A member counts from the start, at sequence 0, until it acknowledges more:
            // writes at `standby` wait for it (the in-sync rule).
            store.standby_synced(s, 0, true);
        }
        locked(&self.jobs).insert(
            job.to_string(),
            Served {
                store,
                in_sync: Arc::new(Mutex::new(InSync {
                    ordered: in_sync,
                    ..InSync::default()
                })),
            },
        );
    }

    /// The server's in-sync set for `job` and its standbys (agent names), as last ordered.
    /// Returns false when this agent serves no primary of `job`.
    pub fn set_in_sync(&self, job: &str, ordered: Vec<String>, roster: Vec<String>) -> bool {
        let Some(served) = self.get(job) else {
            return false;
        };
        let mut g = locked(&served.in_sync);
        for gone in g.ordered.iter().filter(|s| !ordered.contains(s)) {
            // Removed by the server (its slot was replaced): stop waiting for it, and forget
            // its progress — a new copy under the same agent name must show what it holds
            // on its own stream before it may join again.
            served.store.standby_removed(gone);
        }
        for s in &ordered {
            if !g.ordered.contains(s) && !g.joined.contains(s) {
                served.store.standby_synced(s, 0, true);
            }
        }
        let removed: Vec<String> = g
            .ordered
            .iter()
            .filter(|s| !ordered.contains(s))
            .cloned()
            .collect();
        g.joined
            .retain(|j| !ordered.contains(j) && !removed.contains(j) && roster.contains(j));
        for (name, p) in served.store.standbys() {
            if !roster.contains(&name) {
                served.store.standby_removed(&name);
            } else if p.in_sync && !ordered.contains(&name) && !g.joined.contains(&name) {
                served.store.standby_synced(&name, p.synced, false);
            } else if !p.in_sync && served.store.standby_join(&name, p.synced) {
                // Caught up before the server named it a standby of the job.
                g.joined.insert(name);
            }
        }
        g.ordered = ordered;
        g.roster = Some(roster);
        true
    }

    /// The standbys `job`'s primary waits for now (agent names, sorted): what it reports.
    pub fn in_sync(&self, job: &str) -> Vec<String> {
        self.get(job)
            .map(|s| locked(&s.in_sync).members())
            .unwrap_or_default()
    }

    /// Stop serving `job`.
    pub fn remove(&self, job: &str) {
        locked(&self.jobs).remove(job);
    }

    /// Counters over every stream served.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    fn get(&self, job: &str) -> Option<Served> {
        locked(&self.jobs).get(job).cloned()
    }

    /// Serve over mutual TLS (see [`crate::tls`]).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<Arc<ReplTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Accept standbys on `listener` until `cancel`.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let conn = tokio::select! {
                () = cancel.cancelled() => return,
                c = listener.accept() => c,
            };
            let Ok((stream, peer)) = conn else { continue };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let result = match &me.tls {
                    None => me.stream_to(Box::new(stream), None, cancel).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok((tls_stream, names)) => {
                            me.stream_to(Box::new(tls_stream), Some(names), cancel)
                                .await
                        }
                        Err(e) => {
                            me.stats
                                .refused
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(%peer, error = %e, "replication connection refused: TLS handshake failed");
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "replication stream ended");
                }
            });
        }
    }

    /// Stream to one standby; `peer_names`: the names its certificate vouches for (TLS).
    async fn stream_to(
        &self,
        stream: Box<dyn Conn>,
        peer_names: Option<Vec<String>>,
        cancel: CancellationToken,
    ) -> Result<(), ReplError> {
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = BufReader::new(rd);
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        let (kind, body) = read_msg(&mut rd).await?;
        if kind != b'H' {
            return Err(ReplError::Protocol("expected hello".into()));
        }
        let hello: Hello = serde_json::from_slice(&body)
            .map_err(|e| ReplError::Protocol(format!("hello: {e}")))?;
        if let Some(names) = &peer_names
            && !names.contains(&hello.standby)
        {
            let msg = format!(
                "the standby says it is {:?} but its certificate names {names:?}",
                hello.standby
            );
            self.stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            write_msg(&mut wr, b'E', &[msg.as_bytes()]).await?;
            return Err(ReplError::Refused(msg));
        }
        let Some(served) = self.get(&hello.job) else {
            let msg = format!("this agent is not the primary of job {:?}", hello.job);
            self.stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            write_msg(&mut wr, b'E', &[msg.as_bytes()]).await?;
            return Err(ReplError::Refused(msg));
        };
        let store = served.store;
        let role = store.role();
        if role.role != Role::Primary || hello.epoch > role.epoch {
            let msg = format!(
                "this replica is not the primary of epoch {} (it is {} at epoch {})",
                hello.epoch,
                role.role.as_str(),
                role.epoch
            );
            self.stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            write_msg(&mut wr, b'E', &[msg.as_bytes()]).await?;
            return Err(ReplError::Refused(msg));
        }
        let epoch = role.epoch;
        let epoch_bytes = epoch.to_le_bytes();
        let mut epoch_varint = Vec::with_capacity(10);
        crate::codec::put_varint(&mut epoch_varint, epoch);
        // Where the standby's log meets ours, and how much of it ours holds too.
        let end = store.end_of_epoch(hello.last_epoch);
        let mut next = match end {
            _ if hello.last_seq == 0 => 1,
            Some(end) if hello.last_seq <= end => hello.last_seq + 1,
            // Its log ran past ours: cut it back where they agree (cheap), unless that is
            // before its checkpoint.
            Some(end) if end >= hello.base => {
                let cut = [&epoch_bytes[..], &end.to_le_bytes()[..]].concat();
                write_msg(&mut wr, b'T', &[&cut]).await?;
                end + 1
            }
            _ => 0, // unknown: seed
        };
        let keep = match end {
            Some(end) => hello.last_seq.min(end),
            None => u64::MAX,
        };
        let standby = hello.standby.clone();
        let in_sync = served.in_sync.clone();
        // Acks come back on the read half.
        // What this stream has given the standby: its consistent prefix, then every batch
        // sent. An ack counts only up to it: a standby whose log ran past ours (a deposed
        // primary's) must not be taken as holding our entries of those numbers.
        let sent_through = Arc::new(std::sync::atomic::AtomicU64::new(next.saturating_sub(1)));
        let acks = {
            let store = store.clone();
            let standby = standby.clone();
            let cancel = cancel.clone();
            let sent_through = sent_through.clone();
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        () = cancel.cancelled() => return,
                        m = read_msg(&mut rd) => m,
                    };
                    match msg {
                        Ok((b'A', b)) if b.len() == 8 => {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(&b);
                            let upto = sent_through.load(std::sync::atomic::Ordering::Acquire);
                            let synced = u64::from_le_bytes(a).min(upto);
                            let mut g = locked(&in_sync);
                            if g.ordered.contains(&standby) {
                                store.standby_synced(&standby, synced, true);
                            } else if g.roster.as_ref().is_none_or(|r| r.contains(&standby)) {
                                if store.standby_join(&standby, synced) {
                                    g.joined.insert(standby.clone());
                                }
                            } else {
                                store.standby_synced(&standby, synced, false);
                            }
                        }
                        Ok((b'E', b)) => {
                            tracing::warn!(standby, error = %String::from_utf8_lossy(&b), "standby refused the stream");
                            return;
                        }
                        _ => return,
                    }
                }
            })
        };
        let mut applied = store.applied_watch();
        let mut wire = Vec::with_capacity(BATCH_BYTES);
        let result: Result<(), ReplError> = async {
            if next != 0 {
                // An empty batch at once: the standby, its prefix accepted, acknowledges what
                // it holds even when there is nothing new to send.
                wire.clear();
                crate::codec::to_wire(&[], epoch, &mut wire);
                let crc = crate::codec::crc32(&wire).to_le_bytes();
                write_msg(&mut wr, b'F', &[&epoch_varint, &crc, &wire]).await?;
            }
            loop {
                if next == 0 {
                    let ckpt = store.snapshot();
                    let bytes = ckpt.encode();
                    write_msg(&mut wr, b'C', &[&epoch_bytes, &keep.to_le_bytes(), &bytes]).await?;
                    self.stats
                        .seeds
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.stats.wire_bytes.fetch_add(
                        bytes.len() as u64 + 21,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    sent_through.store(ckpt.seq, std::sync::atomic::Ordering::Release);
                    next = ckpt.seq + 1;
                    continue;
                }
                let frames = match store.frames_from(next, BATCH_BYTES)? {
                    Some(f) => f,
                    None => {
                        next = 0;
                        continue;
                    }
                };
                if frames.is_empty() {
                    if store.role().epoch != epoch {
                        return Err(ReplError::Refused("this primary was deposed".into()));
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        r = applied.wait_for(|&a| a >= next) => {
                            if r.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    // Let the writes that arrive together go in one batch: one turn of the
                    // scheduler, no timer (no added latency when nothing else is runnable).
                    tokio::task::yield_now().await;
                    continue;
                }
                let last = last_seq(&frames);
                sent_through.store(last, std::sync::atomic::Ordering::Release);
                wire.clear();
                crate::codec::to_wire(&frames, epoch, &mut wire);
                let crc = crate::codec::crc32(&wire).to_le_bytes();
                write_msg(&mut wr, b'F', &[&epoch_varint, &crc, &wire]).await?;
                self.stats
                    .frame_bytes
                    .fetch_add(frames.len() as u64, std::sync::atomic::Ordering::Relaxed);
                self.stats
                    .wire_bytes
                    .fetch_add(wire.len() as u64 + 17, std::sync::atomic::Ordering::Relaxed);
                next = last + 1;
            }
        }
        .await;
        acks.abort();
        result
    }
}

/// The sequence number of the last frame in `frames` (all checked already).
fn last_seq(frames: &[u8]) -> u64 {
    let mut at = 0;
    let mut last = 0;
    while at < frames.len() {
        let Ok(n) = crate::codec::frame_len(&frames[at..]) else {
            break;
        };
        last = crate::codec::seq_epoch(&frames[at..at + n]).0;
        at += n;
    }
    last
}

/// What a standby's stream did, for its agent's log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FollowReport {
    /// Entries discarded when the primary's log showed this replica's tail was never
    /// replicated (a deposed primary's writes).
    pub discarded: u64,
    /// Times the state was seeded from a checkpoint.
    pub seeds: u64,
}

/// How a standby reaches its primary.
#[derive(Clone, Debug)]
pub struct Dial {
    /// The primary agent's replication address.
    pub addr: std::net::SocketAddr,
    /// Mutual TLS (`None`: plain TCP).
    pub tls: Option<Arc<ReplTls>>,
    /// The primary's agent name, which its certificate must carry (TLS; `None`: any
    /// certificate of the CA).
    pub primary: Option<String>,
}

impl Dial {
    /// Plain TCP to `addr`.
    pub fn plain(addr: std::net::SocketAddr) -> Dial {
        Dial {
            addr,
            tls: None,
            primary: None,
        }
    }
}

/// Follow the primary at `dial` for `job` as standby `name`, until `cancel` or an error (the
/// caller reconnects). `report` is updated as it goes.
pub async fn follow(
    dial: &Dial,
    job: &str,
    name: &str,
    store: &StateStore,
    report: &Mutex<FollowReport>,
    cancel: &CancellationToken,
) -> Result<(), ReplError> {
    let tcp = TcpStream::connect(dial.addr).await?;
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Conn> = match &dial.tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(tls.connect(tcp, dial.primary.as_deref()).await?),
    };
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::new(wr);
    let (last_seq, last_epoch) = store.position();
    let hello = Hello {
        job: job.to_string(),
        standby: name.to_string(),
        epoch: store.role().epoch,
        last_seq,
        last_epoch,
        base: store.checkpoint_seq(),
    };
    let body = serde_json::to_vec(&hello).map_err(|e| ReplError::Protocol(e.to_string()))?;
    write_msg(&mut wr, b'H', &[&body]).await?;
    // Acks: whenever what is synced here grows, from the first message of the primary on
    // (before it, this log may hold entries the primary's does not: a deposed primary's).
    let ready = Arc::new(tokio::sync::Notify::new());
    let acker = {
        let mut committed = store.committed_watch();
        let cancel = cancel.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = ready.notified() => {}
            }
            let mut sent = 0u64;
            loop {
                let local = committed.borrow_and_update().local;
                if local > sent {
                    if write_msg(&mut wr, b'A', &[&local.to_le_bytes()])
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent = local;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = committed.changed() => if r.is_err() { return },
                }
            }
        })
    };
    let result = async {
        loop {
            let (kind, body) = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                m = read_msg(&mut rd) => m?,
            };
            match kind {
                b'F' => {
                    let mut at = 0;
                    let epoch = crate::codec::get_varint(&body, &mut at)
                        .ok_or_else(|| ReplError::Protocol("frames without an epoch".into()))?;
                    let rest = &body[at..];
                    if rest.len() < 4 {
                        return Err(ReplError::Protocol("frames without a checksum".into()));
                    }
                    let mut crc = [0u8; 4];
                    crc.copy_from_slice(&rest[..4]);
                    let wire = &rest[4..];
                    if crate::codec::crc32(wire) != u32::from_le_bytes(crc) {
                        return Err(ReplError::Protocol("frame batch checksum mismatch".into()));
                    }
                    let frames = crate::codec::from_wire(wire, epoch)
                        .map_err(|e| ReplError::Protocol(format!("frames: {e}")))?;
                    store.apply_frames(epoch, Bytes::from(frames))?;
                    ready.notify_one();
                }
                b'C' => {
                    let (epoch, rest) = epoch_and_rest(&body)?;
                    let (keep, bytes) = epoch_and_rest(&rest)?;
                    let store = store.clone();
                    let held = tokio::task::spawn_blocking(move || {
                        let ckpt = Checkpoint::decode(bytes.clone())
                            .map_err(|e| ReplError::Protocol(format!("checkpoint: {e}")))?;
                        store.reseed_encoded(epoch, ckpt, &bytes).map_err(ReplError::from)
                    })
                        .await
                        .map_err(|e| ReplError::Protocol(e.to_string()))??;
                    if keep == u64::MAX && held > 0 {
                        tracing::warn!(
                            job,
                            held,
                            "seeded again; the primary's log no longer shows whether this replica held writes it never had"
                        );
                    }
                    let discarded = if keep == u64::MAX {
                        0
                    } else {
                        held.saturating_sub(keep)
                    };
                    let mut r = report
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    r.seeds += 1;
                    ready.notify_one();
                    if discarded > 0 {
                        r.discarded += discarded;
                        tracing::warn!(
                            job,
                            discarded,
                            first_seq = keep + 1,
                            last_seq = held,
                            "discarded writes this replica took as primary and never replicated"
                        );
                    }
                }
                b'T' => {
                    let (epoch, rest) = epoch_and_rest(&body)?;
                    let (keep, _) = epoch_and_rest(&rest)?;
                    let store = store.clone();
                    let discarded =
                        tokio::task::spawn_blocking(move || store.truncate_to(epoch, keep))
                            .await
                            .map_err(|e| ReplError::Protocol(e.to_string()))??;
                    if discarded > 0 {
                        report
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .discarded += discarded;
                        tracing::warn!(
                            job,
                            discarded,
                            first_seq = keep + 1,
                            last_seq = keep + discarded,
                            "discarded writes this replica took as primary and never replicated"
                        );
                    }
                }
                b'E' => {
                    return Err(ReplError::Refused(
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                }
                other => return Err(ReplError::Protocol(format!("unknown message {other}"))),
            }
        }
    }
    .await;
    acker.abort();
    result
}

/// [`follow`] again and again (with a short pause after an error) until `cancel`.
pub async fn follow_forever(
    dial: Dial,
    job: String,
    name: String,
    store: StateStore,
    report: Arc<Mutex<FollowReport>>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        if let Err(e) = follow(&dial, &job, &name, &store, &report, &cancel).await {
            tracing::debug!(job, error = %e, "replication from the primary broke; reconnecting");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
