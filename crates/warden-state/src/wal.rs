//! The write-ahead log on disk: segment files `wal-<first seq>.log` of frames
//! ([`crate::codec`]), appended and synced by one writer, rotated at a size, dropped once a
//! checkpoint covers them; and checkpoint files `checkpoint-<seq>.ckpt`, written aside and
//! renamed into place.
//!
//! Opening reads the newest valid checkpoint and every frame after it. A frame that does not
//! check at the tail of the last segment is a write the host lost mid-way (it was never
//! acknowledged: acknowledgement follows the sync): the segment is cut there. A bad frame
//! anywhere else is corruption, reported, never skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::codec::{self, DecodeError};

/// Size at which a segment is closed and the next one begun.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A frame in the middle of the log does not check.
    #[error("corrupt log {path} at byte {offset}: {cause}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        cause: DecodeError,
    },
    /// Sequence numbers jump (a segment is missing).
    #[error("log gap: expected sequence {expected}, found {found} in {path}")]
    Gap {
        /// The segment.
        path: PathBuf,
        /// The number that should come next.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// A checkpoint file does not parse.
    #[error("corrupt checkpoint {path}: {cause}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        cause: &'static str,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A full copy of the state at a sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every write up to this number is in it.
    pub seq: u64,
    /// Epoch of the last write in it.
    pub epoch: u64,
    /// Every key and value.
    pub kv: Vec<(String, Bytes)>,
    /// The task's own snapshot of its records (opaque).
    pub blob: Bytes,
}

const CKPT_MAGIC: &[u8; 8] = b"WDNCKPT1";

impl Checkpoint {
    /// The checkpoint as bytes (the file's content, and what seeds a new standby).
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.kv.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let mut out = Vec::with_capacity(40 + size + self.blob.len());
        out.extend_from_slice(CKPT_MAGIC);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out.extend_from_slice(&(self.blob.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.blob);
        let crc = codec::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse [`Checkpoint::encode`]'s bytes.
    pub fn decode(b: Bytes) -> Result<Checkpoint, &'static str> {
        if b.len() < 36 || &b[..8] != CKPT_MAGIC {
            return Err("not a checkpoint");
        }
        let body = b.len() - 4;
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[body..]);
        if codec::crc32(&b[..body]) != u32::from_le_bytes(crc) {
            return Err("checksum mismatch");
        }
        let u64_at = |at: usize| -> Result<u64, &'static str> {
            let s = b.get(at..at + 8).ok_or("truncated")?;
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a))
        };
        let u32_at = |at: usize| -> Result<usize, &'static str> {
            let s = b.get(at..at + 4).ok_or("truncated")?;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        };
        let seq = u64_at(8)?;
        let epoch = u64_at(16)?;
        let count = u64_at(24)?;
        let mut at = 32;
        let mut kv = Vec::with_capacity(usize::try_from(count.min(1 << 20)).unwrap_or(0));
        for _ in 0..count {
            let klen = u32_at(at)?;
            let k = b.get(at + 4..at + 4 + klen).ok_or("truncated key")?;
            let key = String::from_utf8(k.to_vec()).map_err(|_| "key is not UTF-8")?;
            at += 4 + klen;
            let vlen = u32_at(at)?;
            if at + 4 + vlen > body {
                return Err("truncated value");
            }
            kv.push((key, b.slice(at + 4..at + 4 + vlen)));
            at += 4 + vlen;
        }
        let blen = usize::try_from(u64_at(at)?).map_err(|_| "blob length")?;
        at += 8;
        if at.checked_add(blen) != Some(body) {
            return Err("length mismatch");
        }
        Ok(Checkpoint {
            seq,
            epoch,
            kv,
            blob: b.slice(at..body),
        })
    }
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// Every frame after it, in order, as one buffer.
    pub frames: Bytes,
    /// Bytes cut from the tail of the last segment (a torn write).
    pub torn_bytes: u64,
}

/// The log directory of one task's state.
pub struct Wal {
    dir: PathBuf,
    /// Segments as (first seq, path), oldest first; the last is open for appending.
    segments: Vec<(u64, PathBuf)>,
    file: File,
    written: u64,
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

fn checkpoint_name(seq: u64) -> String {
    format!("checkpoint-{seq:020}.ckpt")
}

fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

impl Wal {
    /// Open (or create) the log in `dir`.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered), WalError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut recovered = Recovered::default();
        // The newest checkpoint (older ones are removed once a newer one is in place, so an
        // older one left over is never needed). One that does not parse is an error: the
        // log before it is gone.
        if let Some((_, path)) = numbered(dir, "checkpoint-", ".ckpt")?.last() {
            let bytes = fs::read(path).map_err(io_err("read checkpoint", path))?;
            let c =
                Checkpoint::decode(Bytes::from(bytes)).map_err(|cause| WalError::Checkpoint {
                    path: path.clone(),
                    cause,
                })?;
            recovered.checkpoint = Some(c);
        }
        let after = recovered.checkpoint.as_ref().map_or(0, |c| c.seq);
        let segments = numbered(dir, "wal-", ".log")?;
        let mut frames = Vec::new();
        let mut expected = after + 1;
        let last = segments.len().saturating_sub(1);
        for (i, (_, path)) in segments.iter().enumerate() {
            let mut buf = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io_err("read log", path))?;
            let mut at = 0usize;
            while at < buf.len() {
                match codec::check(&buf[at..]) {
                    Ok(n) => {
                        let (seq, _) = codec::seq_epoch(&buf[at..at + n]);
                        if seq >= expected {
                            if seq != expected {
                                return Err(WalError::Gap {
                                    path: path.clone(),
                                    expected,
                                    found: seq,
                                });
                            }
                            frames.extend_from_slice(&buf[at..at + n]);
                            expected += 1;
                        }
                        at += n;
                    }
                    Err(cause) if i == last => {
                        // A torn tail: cut it, so appends continue from a clean end.
                        let _ = cause;
                        recovered.torn_bytes = (buf.len() - at) as u64;
                        let f = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(io_err("open log", path))?;
                        f.set_len(at as u64).map_err(io_err("truncate log", path))?;
                        f.sync_all().map_err(io_err("sync log", path))?;
                        break;
                    }
                    Err(cause) => {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset: at as u64,
                            cause,
                        });
                    }
                }
            }
        }
        recovered.frames = Bytes::from(frames);
        let mut segments = segments;
        if segments.is_empty() {
            let path = dir.join(segment_name(expected));
            segments.push((expected, path));
        }
        let path = &segments[segments.len() - 1].1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err("open log", path))?;
        let written = file.metadata().map_err(io_err("stat log", path))?.len();
        sync_dir(dir)?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                segments,
                file,
                written,
            },
            recovered,
        ))
    }

    /// Append frames (not yet synced). `first_seq` is the sequence number of the first of
    /// them: a full segment is closed and a new one named after it begun first.
    pub fn append(&mut self, first_seq: u64, frames: &[u8]) -> Result<(), WalError> {
        if self.written >= SEGMENT_BYTES {
            self.rotate(first_seq)?;
        }
        let path = &self.segments[self.segments.len() - 1].1;
        self.file
            .write_all(frames)
            .map_err(io_err("append to log", path))?;
        self.written += frames.len() as u64;
        Ok(())
    }

    /// Make everything appended durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let path = &self.segments[self.segments.len() - 1].1;
        self.file.sync_data().map_err(io_err("sync log", path))
    }

    /// Close the current segment and begin one whose first frame is `next_seq`.
    pub fn rotate(&mut self, next_seq: u64) -> Result<(), WalError> {
        self.sync()?;
        let path = self.dir.join(segment_name(next_seq));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open log", &path))?;
        self.segments.push((next_seq, path));
        self.written = 0;
        sync_dir(&self.dir)
    }

    /// Write `checkpoint` (aside, synced, renamed into place), begin a new segment after it,
    /// and remove the segments and older checkpoints it covers.
    pub fn checkpoint(&mut self, checkpoint: &Checkpoint, next_seq: u64) -> Result<(), WalError> {
        self.checkpoint_bytes(checkpoint.seq, &checkpoint.encode(), next_seq)
    }

    /// [`Wal::checkpoint`] with the checkpoint of `seq` already encoded (a standby writes the
    /// bytes it received as they are).
    pub fn checkpoint_bytes(
        &mut self,
        seq: u64,
        bytes: &[u8],
        next_seq: u64,
    ) -> Result<(), WalError> {
        let checkpoint = Checkpoint {
            seq,
            ..Checkpoint::default()
        };
        let name = checkpoint_name(checkpoint.seq);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        {
            let mut f = File::create(&tmp).map_err(io_err("create checkpoint", &tmp))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(io_err("write checkpoint", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err("rename checkpoint", &path))?;
        sync_dir(&self.dir)?;
        self.rotate(next_seq)?;
        // Segments wholly before the checkpoint: every one whose successor starts at or
        // below `checkpoint.seq + 1`.
        let keep_from = self
            .segments
            .iter()
            .rposition(|(first, _)| *first <= checkpoint.seq + 1)
            .unwrap_or(0);
        for (_, old) in self.segments.drain(..keep_from) {
            fs::remove_file(&old).map_err(io_err("remove log", &old))?;
        }
        for (seq, old) in numbered(&self.dir, "checkpoint-", ".ckpt")? {
            if seq < checkpoint.seq {
                fs::remove_file(&old).map_err(io_err("remove checkpoint", &old))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Cut the log after frame `keep`, and read it again (what opening would find). Frames
    /// before the newest checkpoint are not touched.
    pub fn truncate_after(&mut self, keep: u64) -> Result<Recovered, WalError> {
        self.cut_after(keep)?;
        let (wal, recovered) = Wal::open(&self.dir)?;
        *self = wal;
        Ok(recovered)
    }

    /// Cut the log after frame `keep`: later segments are removed, the one holding `keep` is
    /// truncated after it, and appends continue there.
    pub fn cut_after(&mut self, keep: u64) -> Result<(), WalError> {
        self.sync()?;
        // Segments that start after `keep` go entirely (newest first: a crash half-way leaves
        // a shorter log, never a gap).
        while self.segments.len() > 1
            && self.segments.last().is_some_and(|(first, _)| *first > keep)
        {
            if let Some((_, path)) = self.segments.pop() {
                fs::remove_file(&path).map_err(io_err("remove log", &path))?;
            }
        }
        let path = self.segments[self.segments.len() - 1].1.clone();
        let buf = fs::read(&path).map_err(io_err("read log", &path))?;
        let mut at = 0usize;
        while at < buf.len() {
            let Ok(n) = codec::check(&buf[at..]) else {
                break;
            };
            if codec::seq_epoch(&buf[at..at + n]).0 > keep {
                break;
            }
            at += n;
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open log", &path))?;
        f.set_len(at as u64)
            .map_err(io_err("truncate log", &path))?;
        f.sync_all().map_err(io_err("sync log", &path))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open log", &path))?;
        self.written = at as u64;
        Ok(())
    }

    /// The sequence number of the oldest frame still on disk.
    pub fn first_seq(&self) -> u64 {
        self.segments.first().map_or(1, |(s, _)| *s)
    }

    /// Frames from `from` on, read from disk, stopping after about `max_bytes`: what a
    /// standby that fell behind the memory backlog catches up from. Empty when `from` is
    /// before the oldest segment.
    pub fn read_from(&self, from: u64, max_bytes: usize) -> Result<Vec<u8>, WalError> {
        let mut out = Vec::new();
        let start = self
            .segments
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        for (_, path) in &self.segments[start..] {
            let buf = fs::read(path).map_err(io_err("read log", path))?;
            let mut at = 0;
            while at < buf.len() {
                let Ok(n) = codec::check(&buf[at..]) else {
                    break;
                };
                let (seq, _) = codec::seq_epoch(&buf[at..at + n]);
                if seq >= from {
                    out.extend_from_slice(&buf[at..at + n]);
                    if out.len() >= max_bytes {
                        return Ok(out);
                    }
                }
                at += n;
            }
        }
        Ok(out)
    }
}
