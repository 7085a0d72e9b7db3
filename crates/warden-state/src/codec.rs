//! The log's frames: one per write, the same bytes on disk and on the replication stream.
//!
//! ```text
//! frame   = len:u32le crc:u32le payload            (len = payload bytes, crc = CRC-32 of payload)
//! payload = seq:u64le epoch:u64le kind:u8 body
//! kind 1 put     body = klen:varint key value
//! kind 2 delete  body = key
//! kind 3 batch   body = n:varint n × (sub:u8 klen:varint key vlen:varint value)   sub 1 put, 2 delete
//! kind 4 record  body = data
//! kind 5 epoch   body = (none): the first frame a newly promoted primary writes
//! ```
//!
//! (`varint`: LEB128, 7 bits per byte, low first.)
//!
//! On the replication stream the frames travel without their headers ([`to_wire`],
//! [`from_wire`]): a batch names its first sequence number and epoch once, and each entry is
//! `kind:u8 [epoch:varint] len:varint body`, the kind's high bit saying an epoch follows
//! (an entry older than the batch's epoch). The standby rebuilds the frames, checksums
//! included, before it writes them.
//!
//! A frame whose length or checksum does not hold is where the log ends (a torn write at the
//! tail of the last segment) or a corruption (anywhere else); the reader tells which.

use bytes::Bytes;

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;
/// Bytes of a payload before its body.
const PAYLOAD_HEAD: usize = 17;
/// Largest payload accepted when reading (bounds what a corrupt length can make us allocate).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// One change to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Puts and deletes applied together or not at all.
    Batch(Vec<BatchOp>),
    /// An opaque record appended to the task's log.
    Record(Bytes),
    /// A new epoch begins (a promotion).
    Epoch,
}

/// One member of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set a key.
    Put(String, Bytes),
    /// Remove a key.
    Delete(String),
}

/// A decoded log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number: one per write, contiguous from 1.
    pub seq: u64,
    /// Epoch of the primary that wrote it.
    pub epoch: u64,
    /// The change.
    pub op: Op,
}

/// Why bytes are not a frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame says it has (the end of a log, or a torn write).
    #[error("truncated frame")]
    Truncated,
    /// The checksum does not match.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The length field is beyond any frame Warden writes.
    #[error("frame length {0} out of range")]
    Length(usize),
    /// The payload does not parse.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC: [[u32; 256]; 8] = crc_tables();

/// CRC-32 (IEEE) of `data`, eight bytes at a step (slicing-by-8).
pub fn crc32(data: &[u8]) -> u32 {
    let t = &CRC;
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        c = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Append `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read a LEB128 varint at `*at`, advancing it.
pub fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_len(out: &mut Vec<u8>, v: usize) {
    put_varint(out, v as u64);
}

/// Append the frame of `seq`, `epoch`, `op` to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, epoch: u64, op: &Op) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    match op {
        Op::Put { key, value } => {
            out.push(1);
            put_len(out, key.len());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(value);
        }
        Op::Delete { key } => {
            out.push(2);
            out.extend_from_slice(key.as_bytes());
        }
        Op::Batch(ops) => {
            out.push(3);
            put_len(out, ops.len());
            for op in ops {
                let (sub, key, value): (u8, &str, &[u8]) = match op {
                    BatchOp::Put(k, v) => (1, k, v),
                    BatchOp::Delete(k) => (2, k, &[]),
                };
                out.push(sub);
                put_len(out, key.len());
                out.extend_from_slice(key.as_bytes());
                put_len(out, value.len());
                out.extend_from_slice(value);
            }
        }
        Op::Record(data) => {
            out.push(4);
            out.extend_from_slice(data);
        }
        Op::Epoch => out.push(5),
    }
    let len = out.len() - start - HEADER;
    let crc = crc32(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// The length of the frame at the start of `buf` (header included), checked: `Truncated` when
/// `buf` holds less.
pub fn frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let len = u32_at(buf, 0).ok_or(DecodeError::Truncated)?;
    if !(PAYLOAD_HEAD..=MAX_PAYLOAD).contains(&len) {
        return Err(DecodeError::Length(len));
    }
    if buf.len() < HEADER + len {
        return Err(DecodeError::Truncated);
    }
    Ok(HEADER + len)
}

/// `(seq, epoch)` of a frame already checked by [`frame_len`] and [`check`].
pub fn seq_epoch(frame: &[u8]) -> (u64, u64) {
    (
        u64_at(frame, HEADER).unwrap_or(0),
        u64_at(frame, HEADER + 8).unwrap_or(0),
    )
}

/// Check the frame at the start of `buf`: its length and checksum. Returns its length.
pub fn check(buf: &[u8]) -> Result<usize, DecodeError> {
    let n = frame_len(buf)?;
    let crc = u32_at(buf, 4).ok_or(DecodeError::Truncated)? as u32;
    if crc32(&buf[HEADER..n]) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok(n)
}

/// Decode the frame at the start of `frame` (a shared buffer: values are slices of it, not
/// copies). Returns the entry and the frame's length.
pub fn decode(frame: &Bytes) -> Result<(Entry, usize), DecodeError> {
    let n = check(frame)?;
    let p = frame.slice(HEADER..n);
    let seq = u64_at(&p, 0).ok_or(DecodeError::Truncated)?;
    let epoch = u64_at(&p, 8).ok_or(DecodeError::Truncated)?;
    let body = p.slice(PAYLOAD_HEAD..);
    let key_of = |b: &[u8]| -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("key is not UTF-8"))
    };
    let op = match p[16] {
        1 => {
            let mut at = 0;
            let klen = get_varint(&body, &mut at).ok_or(DecodeError::Malformed("put"))?;
            let kend = usize::try_from(klen)
                .ok()
                .and_then(|k| at.checked_add(k))
                .filter(|&e| e <= body.len())
                .ok_or(DecodeError::Malformed("put key length"))?;
            Op::Put {
                key: key_of(&body[at..kend])?,
                value: body.slice(kend..),
            }
        }
        2 => Op::Delete {
            key: key_of(&body)?,
        },
        3 => {
            let mut at = 0;
            let count = get_varint(&body, &mut at).ok_or(DecodeError::Malformed("batch"))?;
            let mut ops = Vec::with_capacity(usize::try_from(count.min(1024)).unwrap_or(0));
            let len_at = |at: &mut usize, what: &'static str| -> Result<usize, DecodeError> {
                get_varint(&body, at)
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or(DecodeError::Malformed(what))
            };
            for _ in 0..count {
                let sub = *body.get(at).ok_or(DecodeError::Malformed("batch op"))?;
                at += 1;
                let klen = len_at(&mut at, "batch key")?;
                let kstart = at;
                let kend = kstart
                    .checked_add(klen)
                    .filter(|&e| e <= body.len())
                    .ok_or(DecodeError::Malformed("batch key length"))?;
                let mut vat = kend;
                let vlen = len_at(&mut vat, "batch value")?;
                let vstart = vat;
                let vend = vstart
                    .checked_add(vlen)
                    .filter(|&e| e <= body.len())
                    .ok_or(DecodeError::Malformed("batch value length"))?;
                let key = key_of(&body[kstart..kend])?;
                ops.push(match sub {
                    1 => BatchOp::Put(key, body.slice(vstart..vend)),
                    2 => BatchOp::Delete(key),
                    _ => return Err(DecodeError::Malformed("batch op kind")),
                });
                at = vend;
            }
            if at != body.len() {
                return Err(DecodeError::Malformed("bytes after the batch"));
            }
            Op::Batch(ops)
        }
        4 => Op::Record(body),
        5 => Op::Epoch,
        _ => return Err(DecodeError::Malformed("unknown kind")),
    };
    Ok((Entry { seq, epoch, op }, n))
}

/// The entries of `frames` (whole, checked frames) in the stream's form, appended to `out`:
/// `first_seq:varint` then the entries (see the module's description). Entries whose epoch is
/// not `epoch` carry theirs. Returns how many entries there were.
pub fn to_wire(frames: &[u8], epoch: u64, out: &mut Vec<u8>) -> usize {
    let mut at = 0;
    let mut n = 0;
    let first = if frames.len() >= HEADER + PAYLOAD_HEAD {
        seq_epoch(frames).0
    } else {
        0
    };
    put_varint(out, first);
    while at < frames.len() {
        let Ok(len) = frame_len(&frames[at..]) else {
            break;
        };
        let f = &frames[at..at + len];
        let (_, e) = seq_epoch(f);
        let kind = f[HEADER + 16];
        let body = &f[HEADER + PAYLOAD_HEAD..];
        if e == epoch {
            out.push(kind);
        } else {
            out.push(kind | 0x80);
            put_varint(out, e);
        }
        put_len(out, body.len());
        out.extend_from_slice(body);
        at += len;
        n += 1;
    }
    n
}

/// Rebuild whole frames (headers and checksums) from the stream's form written by
/// [`to_wire`] for a batch of `epoch`.
pub fn from_wire(wire: &[u8], epoch: u64) -> Result<Vec<u8>, DecodeError> {
    let mut at = 0;
    let first = get_varint(wire, &mut at).ok_or(DecodeError::Truncated)?;
    let mut seq = first;
    let mut out = Vec::with_capacity(wire.len() + wire.len() / 4);
    while at < wire.len() {
        let kind = wire[at];
        at += 1;
        let e = if kind & 0x80 != 0 {
            get_varint(wire, &mut at).ok_or(DecodeError::Truncated)?
        } else {
            epoch
        };
        let len = get_varint(wire, &mut at)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or(DecodeError::Truncated)?;
        let end = at
            .checked_add(len)
            .filter(|&end| end <= wire.len())
            .ok_or(DecodeError::Truncated)?;
        if len + PAYLOAD_HEAD > MAX_PAYLOAD {
            return Err(DecodeError::Length(len));
        }
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER]);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.push(kind & 0x7F);
        out.extend_from_slice(&wire[at..end]);
        let plen = out.len() - start - HEADER;
        let crc = crc32(&out[start + HEADER..]);
        out[start..start + 4].copy_from_slice(&(plen as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
        seq += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_op() -> impl Strategy<Value = Op> {
        let key = "[a-z/]{0,12}";
        let value = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (key, value.clone()).prop_map(|(key, value)| Op::Put { key, value }),
            key.prop_map(|key| Op::Delete { key }),
            proptest::collection::vec(
                prop_oneof![
                    (key, value.clone()).prop_map(|(k, v)| BatchOp::Put(k, v)),
                    key.prop_map(BatchOp::Delete),
                ],
                0..5
            )
            .prop_map(Op::Batch),
            value.prop_map(Op::Record),
            Just(Op::Epoch),
        ]
    }

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // Every length around the 8-byte steps agrees with the one-byte-at-a-time form.
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..data.len() {
            let mut c = !0u32;
            for &b in &data[..n] {
                c = CRC[0][((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
            }
            assert_eq!(crc32(&data[..n]), !c, "length {n}");
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip(ops in proptest::collection::vec(arb_op(), 1..8), epoch in 0u64..9) {
            let mut buf = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                encode(&mut buf, i as u64 + 1, epoch, op);
            }
            let mut rest = Bytes::from(buf);
            for (i, op) in ops.iter().enumerate() {
                let (e, n) = decode(&rest).expect("decodes");
                prop_assert_eq!(e.seq, i as u64 + 1);
                prop_assert_eq!(e.epoch, epoch);
                prop_assert_eq!(&e.op, op);
                prop_assert_eq!(seq_epoch(&rest[..n]), (e.seq, epoch));
                rest = rest.slice(n..);
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn the_stream_form_rebuilds_the_same_frames(
            ops in proptest::collection::vec((arb_op(), 1u64..4), 1..8),
            epoch in 1u64..4,
        ) {
            let mut frames = Vec::new();
            for (i, (op, e)) in ops.iter().enumerate() {
                encode(&mut frames, 10 + i as u64, (*e).min(epoch), op);
            }
            let mut wire = Vec::new();
            prop_assert_eq!(to_wire(&frames, epoch, &mut wire), ops.len());
            prop_assert_eq!(from_wire(&wire, epoch).expect("rebuilds"), frames);
        }

        #[test]
        fn damaged_frames_are_refused_not_misread(op in arb_op(), cut in 0usize..200, flip in 0usize..200) {
            let mut buf = Vec::new();
            encode(&mut buf, 7, 2, &op);
            let whole = buf.len();
            if cut < whole {
                let short = Bytes::from(buf[..cut].to_vec());
                prop_assert!(decode(&short).is_err());
            }
            if flip < whole {
                buf[flip] ^= 0x40;
                // A flipped bit is caught by the length or the checksum.
                prop_assert!(decode(&Bytes::from(buf)).is_err());
            }
        }
    }
}
