//! The state API's **write pipe**: many single writes in flight on one connection, answered in
//! order. A task that writes one key at a time as fast as it can (a queue position per
//! message, a counter per event) spends most of an HTTP request on the request itself: the
//! kernel's socket calls and wake-ups, the parsing. On a pipe it sends writes back to back
//! without waiting for each answer, the agent reads them in bulk, and the answers come back
//! in bulk as the group commits acknowledge them.
//!
//! Opened with an HTTP/1.1 upgrade on the task's socket:
//!
//! ```text
//! POST /v1/pipe?ack=standby&timeout=5s HTTP/1.1
//! Warden-Token: …            (as every request)
//! Warden-Epoch: 7            (every write on the pipe carries this epoch)
//! Connection: Upgrade
//! Upgrade: warden-pipe
//! ```
//!
//! The answer is `101 Switching Protocols` (or an ordinary error answer, e.g. `400
//! invalid_ack`), and from then on the connection carries binary frames, integers big-endian:
//!
//! - a write: `u32 length` (of what follows), `u8 op` (1 put, 2 delete, 3 log record),
//!   `u16 key length`, the key (UTF-8), the value (the rest; none for a delete, the record for
//!   a log record, whose key is empty);
//! - an answer, one per write, in the order of the writes: `u8 status` (0 acknowledged at the
//!   pipe's level, else an error code, see [`Status`]), `u64 seq` (0 on an error), `u16
//!   message length`, the message (UTF-8, empty when acknowledged).
//!
//! A write the store refuses (`fenced`, `invalid`, …) is answered with its error and the pipe
//! goes on; a frame longer than the limits allow cannot be skipped safely, so it is answered
//! `invalid` and the pipe is closed. Limits are those of the other routes (docs/state.md).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use warden_core::state::AckLevel;

use crate::codec::Op;
use crate::store::{StateStore, WaitError, WriteError};

/// The `Upgrade` token of a pipe.
pub const UPGRADE: &str = "warden-pipe";

/// Writes read ahead of their answers, per pipe (then reading waits).
const IN_FLIGHT: usize = 4096;

/// An answer's status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Acknowledged at the pipe's level.
    Ok = 0,
    /// The epoch is older than the replica's (`409 fenced`).
    Fenced = 1,
    /// This replica is a standby (`409 not_primary`).
    NotPrimary = 2,
    /// The primary's write lease ran out (`409 lease_expired`).
    LeaseExpired = 3,
    /// The write is malformed or over a limit (`400 invalid`).
    Invalid = 4,
    /// Not acknowledged in time (`504 not_acknowledged`); it may still become durable.
    NotAcknowledged = 5,
    /// The log failed (`503 log_failed`).
    LogFailed = 6,
    /// The level cannot be reached in this job (`400 invalid_ack`).
    InvalidAck = 7,
}

impl Status {
    /// The status of a byte from the wire.
    pub fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Fenced,
            2 => Status::NotPrimary,
            3 => Status::LeaseExpired,
            4 => Status::Invalid,
            5 => Status::NotAcknowledged,
            6 => Status::LogFailed,
            7 => Status::InvalidAck,
            _ => return None,
        })
    }

    /// The error code the HTTP routes use for it.
    pub fn code(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fenced => "fenced",
            Status::NotPrimary => "not_primary",
            Status::LeaseExpired => "lease_expired",
            Status::Invalid => "invalid",
            Status::NotAcknowledged => "not_acknowledged",
            Status::LogFailed => "log_failed",
            Status::InvalidAck => "invalid_ack",
        }
    }
}

fn write_status(e: &WriteError) -> Status {
    match e {
        WriteError::Fenced(_) => Status::Fenced,
        WriteError::NotPrimary { .. } => Status::NotPrimary,
        WriteError::LeaseExpired => Status::LeaseExpired,
        WriteError::Invalid(_) => Status::Invalid,
        WriteError::Unreachable { .. } => Status::InvalidAck,
        WriteError::Failed(_) => Status::LogFailed,
    }
}

/// Write operation codes.
pub mod op {
    /// Set a key.
    pub const PUT: u8 = 1;
    /// Remove a key.
    pub const DELETE: u8 = 2;
    /// Append a log record.
    pub const LOG: u8 = 3;
}

/// Append the frame of one write to `out`.
pub fn encode_write(out: &mut Vec<u8>, op: u8, key: &str, value: &[u8]) {
    let len = 1 + 2 + key.len() + value.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.push(op);
    out.extend_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
}

/// Append the frame of one answer to `out`.
pub fn encode_answer(out: &mut Vec<u8>, status: Status, seq: u64, message: &str) {
    let message = &message.as_bytes()[..message.len().min(usize::from(u16::MAX))];
    out.push(status as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(
        &u16::try_from(message.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
}

/// One frame's write, or why it is refused.
fn decode_write(body: Bytes) -> Result<Op, String> {
    if body.len() < 3 {
        return Err(format!(
            "a write frame needs at least 3 bytes, got {}",
            body.len()
        ));
    }
    let code = body[0];
    let key_len = usize::from(u16::from_be_bytes([body[1], body[2]]));
    if 3 + key_len > body.len() {
        return Err(format!(
            "key length {key_len} runs past the frame ({} bytes)",
            body.len()
        ));
    }
    let key = std::str::from_utf8(&body[3..3 + key_len])
        .map_err(|_| "the key is not UTF-8".to_string())?
        .to_string();
    let value = body.slice(3 + key_len..);
    match code {
        op::PUT | op::DELETE if key.is_empty() => Err("a key must not be empty".into()),
        op::PUT => Ok(Op::Put { key, value }),
        op::DELETE if !value.is_empty() => Err("a delete carries no value".into()),
        op::DELETE => Ok(Op::Delete { key }),
        op::LOG if !key.is_empty() => Err("a log record carries no key".into()),
        op::LOG => Ok(Op::Record(value)),
        other => Err(format!(
            "unknown op {other} (1 put, 2 delete, 3 log record)"
        )),
    }
}

/// What the reader hands the writer, in order.
enum Pending {
    /// Answer this now.
    Now(Status, String),
    /// Answer once `seq` is acknowledged.
    Wait(u64),
    /// Answer this, then close.
    Last(Status, String),
}

/// Most writes taken from the read buffer into one [`StateStore::write_many`].
const BURST: usize = 1024;

/// The next complete frame already in `rd`'s buffer (no read), or `None`: too short yet, or
/// a length over `max_frame` (left for the reading path to refuse).
fn buffered_frame<R: AsyncRead + Unpin>(rd: &mut BufReader<R>, max_frame: usize) -> Option<Bytes> {
    use tokio::io::AsyncBufRead;
    let buf = rd.buffer();
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame || buf.len() < 4 + len {
        return None;
    }
    let body = Bytes::copy_from_slice(&buf[4..4 + len]);
    std::pin::Pin::new(rd).consume(4 + len);
    Some(body)
}

/// Serve one upgraded pipe: writes under `epoch`, answered once acknowledged at `level` (or
/// after `timeout`).
pub async fn serve<S>(io: S, store: StateStore, epoch: u64, level: AckLevel, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Pending>(IN_FLIGHT);
    let writer = tokio::spawn(answer(wr, rx, store.clone(), level, timeout));
    let limits = store.limits();
    let max_frame = 3 + limits.max_key + limits.max_value;
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    // Until the task closes its end.
    'pipe: while let Ok(len) = rd.read_u32().await {
        let len = len as usize;
        if len > max_frame {
            let why = format!(
                "a frame of {len} bytes is over the limit ({max_frame}: a key of {} and a \
                 value of {} bytes); the pipe is closed",
                limits.max_key, limits.max_value
            );
            let _ = tx.send(Pending::Last(Status::Invalid, why)).await;
            break;
        }
        let mut body = vec![0u8; len];
        if rd.read_exact(&mut body).await.is_err() {
            break;
        }
        // This frame and every complete one already read: written under one lock.
        let mut decoded = vec![decode_write(Bytes::from(body))];
        while decoded.len() < BURST {
            match buffered_frame(&mut rd, max_frame) {
                Some(b) => decoded.push(decode_write(b)),
                None => break,
            }
        }
        let ops: Vec<Op> = decoded
            .iter_mut()
            .filter_map(|d| match d {
                Ok(op) => Some(std::mem::replace(op, Op::Epoch)),
                Err(_) => None,
            })
            .collect();
        let mut written = store.write_many(epoch, ops).into_iter();
        for d in decoded {
            let pending = match d {
                Err(why) => Pending::Now(Status::Invalid, why),
                Ok(_) => match written.next() {
                    Some(Ok(seq)) => Pending::Wait(seq),
                    Some(Err(e)) => Pending::Now(write_status(&e), e.to_string()),
                    None => Pending::Now(Status::LogFailed, "the write was not taken".into()),
                },
            };
            if tx.send(pending).await.is_err() {
                break 'pipe;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Answer the writes in order: whatever is acknowledged already without waiting, a
/// buffer's worth per socket write; the wait for one not yet acknowledged after flushing
/// the answers before it.
async fn answer<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Pending>,
    store: StateStore,
    level: AckLevel,
    timeout: Duration,
) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut frame = Vec::with_capacity(64);
    while let Some(mut next) = rx.recv().await {
        loop {
            frame.clear();
            let last = matches!(next, Pending::Last(..));
            match next {
                Pending::Now(status, why) | Pending::Last(status, why) => {
                    encode_answer(&mut frame, status, 0, &why);
                }
                Pending::Wait(seq) => {
                    let done = if store.committed().at(level) >= seq {
                        Ok(())
                    } else {
                        // Not yet: what is answered goes out before the wait.
                        if wr.flush().await.is_err() {
                            return;
                        }
                        store.wait(seq, level, timeout).await
                    };
                    match done {
                        Ok(()) => encode_answer(&mut frame, Status::Ok, seq, ""),
                        Err(e @ WaitError::Timeout { .. }) => {
                            encode_answer(&mut frame, Status::NotAcknowledged, 0, &e.to_string());
                        }
                        Err(e @ WaitError::Failed(_)) => {
                            encode_answer(&mut frame, Status::LogFailed, 0, &e.to_string());
                        }
                    }
                }
            }
            if wr.write_all(&frame).await.is_err() {
                return;
            }
            if last {
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                return;
            }
            // More answers ready: into the same socket write.
            match rx.try_recv() {
                Ok(p) => next = p,
                Err(_) => break,
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_and_bad_ones_are_named() {
        let mut f = Vec::new();
        encode_write(&mut f, op::PUT, "k", b"v1");
        assert!(matches!(
            decode_write(Bytes::from(f[4..].to_vec())),
            Ok(Op::Put { key, value }) if key == "k" && &value[..] == b"v1"
        ));
        let bad = |op: u8, key: &str, value: &[u8]| {
            let mut f = Vec::new();
            encode_write(&mut f, op, key, value);
            decode_write(Bytes::from(f[4..].to_vec())).expect_err("refused")
        };
        assert!(bad(op::PUT, "", b"v").contains("empty"));
        assert!(bad(op::DELETE, "k", b"v").contains("no value"));
        assert!(bad(op::LOG, "k", b"r").contains("no key"));
        assert!(bad(9, "k", b"").contains("unknown op 9"));
        assert!(decode_write(Bytes::from_static(&[1, 0])).is_err());
        assert!(decode_write(Bytes::from_static(&[1, 0, 9, b'k'])).is_err());
        assert!(decode_write(Bytes::from_static(&[1, 0, 1, 0xff])).is_err());
        let mut a = Vec::new();
        encode_answer(&mut a, Status::Fenced, 0, "old");
        assert_eq!(a, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, b'o', b'l', b'd']);
        assert_eq!(Status::from_byte(1), Some(Status::Fenced));
        assert_eq!(Status::from_byte(200), None);
    }
}
