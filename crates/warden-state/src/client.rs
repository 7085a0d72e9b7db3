//! A small blocking client of the state API for tasks written in Rust: one kept-alive
//! connection to the socket, no dependencies beyond the standard library and `serde_json`.
//!
//! ```no_run
//! use warden_state::client::StateClient;
//!
//! let mut state = StateClient::from_env()?;
//! let n: u64 = state
//!     .get("counter")?
//!     .map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
//!     .unwrap_or(0);
//! state.put("counter", (n + 1).to_string().as_bytes(), None)?;
//! # Ok::<(), warden_state::client::ClientError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_core::state::AckLevel;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or broke.
    #[error("state socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `WARDEN_*` variable is missing or malformed.
    #[error("{0}")]
    Env(String),
    /// The API refused the request.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code (`fenced`, `not_primary`, `invalid`, …).
        code: String,
        /// What the API said.
        message: String,
    },
    /// The answer did not parse.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl ClientError {
    /// Whether this is a `409 fenced` (or `not_primary`, `lease_expired`): this task's epoch
    /// is over, and it must stop writing.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClientError::Api { status: 409, .. })
    }
}

/// A client of one task's state.
pub struct StateClient {
    path: PathBuf,
    epoch: u64,
    token: Option<String>,
    conn: Option<BufReader<UnixStream>>,
}

/// An answer: status, `Warden-Seq` if present, body.
struct Answer {
    status: u16,
    seq: Option<u64>,
    body: Vec<u8>,
}

/// Read one HTTP/1.1 answer: status line, headers (`Content-Length`, `Warden-Seq`), body.
fn read_answer(conn: &mut BufReader<UnixStream>) -> std::io::Result<Answer> {
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line"))?;
    let mut len = 0usize;
    let mut seq = None;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("warden-seq") {
                seq = v.parse().ok();
            }
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(Answer { status, seq, body })
}

impl StateClient {
    /// A client from the task's environment: `WARDEN_STATE_SOCK`, `WARDEN_STATE_EPOCH` (else
    /// `WARDEN_FENCING_TOKEN`) and `WARDEN_STATE_TOKEN`.
    pub fn from_env() -> Result<StateClient, ClientError> {
        let path = std::env::var_os("WARDEN_STATE_SOCK").ok_or_else(|| {
            ClientError::Env("WARDEN_STATE_SOCK is not set: is [state] in the job spec?".into())
        })?;
        // The state's epoch: WARDEN_STATE_EPOCH (a job with standbys writes under the state
        // epoch its replicas share), else the copy's fencing token.
        let epoch = ["WARDEN_STATE_EPOCH", "WARDEN_FENCING_TOKEN"]
            .iter()
            .find_map(|k| std::env::var(k).ok()?.parse().ok())
            .ok_or_else(|| {
                ClientError::Env(
                    "neither WARDEN_STATE_EPOCH nor WARDEN_FENCING_TOKEN is set to a number".into(),
                )
            })?;
        let token = std::env::var("WARDEN_STATE_TOKEN").ok();
        Ok(StateClient::new(Path::new(&path), epoch, token))
    }

    /// A client of the socket at `path`, writing under `epoch`.
    pub fn new(path: &Path, epoch: u64, token: Option<String>) -> StateClient {
        StateClient {
            path: path.to_path_buf(),
            epoch,
            token,
            conn: None,
        }
    }

    /// The epoch writes carry.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Write under another epoch (after a promotion).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn request(&mut self, method: &str, target: &str, body: &[u8]) -> Result<Answer, ClientError> {
        // One retry on a fresh connection: the server may have closed an idle one.
        match self.try_request(method, target, body) {
            Ok(a) => Ok(a),
            Err(ClientError::Io { .. }) if self.conn.is_none() => {
                self.try_request(method, target, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Result<Answer, ClientError> {
        let fresh = self.conn.is_none();
        if fresh {
            let s = UnixStream::connect(&self.path).map_err(self.io())?;
            s.set_read_timeout(Some(Duration::from_secs(120)))
                .map_err(self.io())?;
            self.conn = Some(BufReader::new(s));
        }
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nhost: task\r\nwarden-epoch: {}\r\ncontent-length: {}\r\n",
            self.epoch,
            body.len()
        );
        if let Some(t) = &self.token {
            head.push_str("warden-token: ");
            head.push_str(t);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let result = (|| -> std::io::Result<Answer> {
            let conn = self.conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
            let s = conn.get_mut();
            s.write_all(head.as_bytes())?;
            s.write_all(body)?;
            read_answer(conn)
        })();
        match result {
            Ok(a) => Ok(a),
            Err(e) => {
                self.conn = None;
                if fresh {
                    Err(self.io()(e))
                } else {
                    // A kept-alive connection the server closed: the caller retries once.
                    Err(ClientError::Io {
                        path: self.path.clone(),
                        source: e,
                    })
                }
            }
        }
    }

    /// Open a write pipe (see [`crate::pipe`]) on a connection of its own: many writes in
    /// flight, answered in order, each acknowledged at `ack` (none: the job's level).
    pub fn pipe(&self, ack: Option<AckLevel>) -> Result<Pipe, ClientError> {
        let s = UnixStream::connect(&self.path).map_err(self.io())?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(self.io())?;
        let mut head = format!(
            "POST /v1/pipe{} HTTP/1.1\r\nhost: task\r\nwarden-epoch: {}\r\nconnection: upgrade\r\n\
             upgrade: {}\r\ncontent-length: 0\r\n",
            Self::ack_query(ack),
            self.epoch,
            crate::pipe::UPGRADE
        );
        if let Some(t) = &self.token {
            head.push_str("warden-token: ");
            head.push_str(t);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut conn = BufReader::with_capacity(64 * 1024, s);
        let answer = (|| -> std::io::Result<Answer> {
            conn.get_mut().write_all(head.as_bytes())?;
            read_answer(&mut conn)
        })()
        .map_err(self.io())?;
        if answer.status != 101 {
            Self::ok(answer)?;
            return Err(ClientError::Malformed(
                "the pipe was not opened (no 101 answer)".into(),
            ));
        }
        let writer = conn.get_ref().try_clone().map_err(self.io())?;
        Ok(Pipe {
            path: self.path.clone(),
            reader: conn,
            writer: std::io::BufWriter::with_capacity(64 * 1024, writer),
            frame: Vec::with_capacity(256),
        })
    }

    fn ok(a: Answer) -> Result<Answer, ClientError> {
        if (200..300).contains(&a.status) {
            return Ok(a);
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        Err(ClientError::Api {
            status: a.status,
            code: v
                .pointer("/error/code")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string(),
            message: v
                .pointer("/error/message")
                .and_then(|c| c.as_str())
                .map_or_else(
                    || String::from_utf8_lossy(&a.body).into_owned(),
                    str::to_string,
                ),
        })
    }

    fn seq_of(a: &Answer) -> Result<u64, ClientError> {
        let v: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|e| ClientError::Malformed(e.to_string()))?;
        v.get("seq")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ClientError::Malformed("no seq".into()))
    }

    fn ack_query(ack: Option<AckLevel>) -> String {
        ack.map(|a| format!("?ack={}", a.as_str()))
            .unwrap_or_default()
    }

    /// Set `key` to `value`, acknowledged at `ack` (none: the job's level). Returns the
    /// write's sequence number.
    pub fn put(
        &mut self,
        key: &str,
        value: &[u8],
        ack: Option<AckLevel>,
    ) -> Result<u64, ClientError> {
        let target = format!("/v1/kv/{}{}", encode_key(key), Self::ack_query(ack));
        let a = Self::ok(self.request("PUT", &target, value)?)?;
        Self::seq_of(&a)
    }

    /// Set several keys at once, atomically (`None`: delete the key): one write, one
    /// acknowledgement. Returns the batch's sequence number.
    pub fn batch(
        &mut self,
        ops: &[(&str, Option<&[u8]>)],
        ack: Option<AckLevel>,
    ) -> Result<u64, ClientError> {
        use base64::Engine as _;
        let items: Vec<serde_json::Value> = ops
            .iter()
            .map(|(key, value)| match value {
                None => serde_json::json!({"op": "delete", "key": key}),
                Some(v) => match std::str::from_utf8(v) {
                    Ok(s) => serde_json::json!({"op": "put", "key": key, "value": s}),
                    Err(_) => serde_json::json!({
                        "op": "put",
                        "key": key,
                        "value_b64": base64::engine::general_purpose::STANDARD.encode(v),
                    }),
                },
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "ops": items }))
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        let a = Self::ok(self.request(
            "POST",
            &format!("/v1/batch{}", Self::ack_query(ack)),
            &body,
        )?)?;
        Self::seq_of(&a)
    }

    /// Remove `key`.
    pub fn delete(&mut self, key: &str, ack: Option<AckLevel>) -> Result<u64, ClientError> {
        let target = format!("/v1/kv/{}{}", encode_key(key), Self::ack_query(ack));
        let a = Self::ok(self.request("DELETE", &target, &[])?)?;
        Self::seq_of(&a)
    }

    /// The value of `key`, if set.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let a = self.request("GET", &format!("/v1/kv/{}", encode_key(key)), &[])?;
        if a.status == 404 && a.seq.is_some() {
            return Ok(None);
        }
        Ok(Some(Self::ok(a)?.body))
    }

    /// Append an opaque record to the task's log.
    pub fn append(&mut self, record: &[u8], ack: Option<AckLevel>) -> Result<u64, ClientError> {
        let a =
            Self::ok(self.request("POST", &format!("/v1/log{}", Self::ack_query(ack)), record)?)?;
        Self::seq_of(&a)
    }

    /// Wait until `seq` is durable at `ack`.
    pub fn sync(&mut self, seq: u64, ack: AckLevel) -> Result<(), ClientError> {
        Self::ok(self.request(
            "POST",
            &format!("/v1/sync?seq={seq}&ack={}", ack.as_str()),
            &[],
        )?)?;
        Ok(())
    }

    /// The state's status (`GET /v1/status`): role, epoch, applied and acknowledged sequence
    /// numbers, the job's default acknowledgement level, the standbys' progress.
    pub fn status(&mut self) -> Result<serde_json::Value, ClientError> {
        let a = Self::ok(self.request("GET", "/v1/status", &[])?)?;
        serde_json::from_slice(&a.body).map_err(|e| ClientError::Malformed(e.to_string()))
    }

    /// `(role, epoch)` now; with `wait`, once it differs from `(role, epoch)` given (a
    /// long-poll: a standby waits here to learn it was promoted).
    pub fn role(
        &mut self,
        changed_from: Option<(&str, u64)>,
        wait: Duration,
    ) -> Result<(String, u64), ClientError> {
        let target = match changed_from {
            Some((role, epoch)) => format!(
                "/v1/role?role={role}&epoch={epoch}&wait={}ms",
                wait.as_millis()
            ),
            None => "/v1/role".to_string(),
        };
        let a = Self::ok(self.request("GET", &target, &[])?)?;
        let v: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let role = v
            .get("role")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_string();
        let epoch = v
            .get("epoch")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_default();
        Ok((role, epoch))
    }
}

/// Percent-encode a key for a URL path (`/` kept: keys may look like paths).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A write pipe ([`StateClient::pipe`]): send writes without waiting, then receive their
/// answers in the same order. Sent writes are buffered until [`Pipe::flush`] (or until the
/// buffer fills).
///
/// ```no_run
/// use warden_state::client::StateClient;
///
/// let state = StateClient::from_env()?;
/// let mut pipe = state.pipe(None)?;
/// for i in 0..100u32 {
///     pipe.put(&format!("k{i}"), b"v")?;
/// }
/// pipe.flush()?;
/// for _ in 0..100 {
///     let seq = pipe.recv()?; // acknowledged, in order
/// }
/// # Ok::<(), warden_state::client::ClientError>(())
/// ```
pub struct Pipe {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: std::io::BufWriter<UnixStream>,
    frame: Vec<u8>,
}

impl Pipe {
    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn send(&mut self, op: u8, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.frame.clear();
        crate::pipe::encode_write(&mut self.frame, op, key, value);
        let frame = std::mem::take(&mut self.frame);
        let r = self.writer.write_all(&frame).map_err(self.io());
        self.frame = frame;
        r
    }

    /// Send a put of `key`.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.send(crate::pipe::op::PUT, key, value)
    }

    /// Send a delete of `key`.
    pub fn delete(&mut self, key: &str) -> Result<(), ClientError> {
        self.send(crate::pipe::op::DELETE, key, &[])
    }

    /// Send a log record.
    pub fn append(&mut self, record: &[u8]) -> Result<(), ClientError> {
        self.send(crate::pipe::op::LOG, "", record)
    }

    /// Push what was sent to the socket.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.writer.flush().map_err(self.io())
    }

    /// The answer to the oldest write not answered yet: its sequence number once
    /// acknowledged, or the API's refusal (`ClientError::Api` with the HTTP status and code
    /// the other routes would give).
    pub fn recv(&mut self) -> Result<u64, ClientError> {
        let mut head = [0u8; 11];
        self.reader.read_exact(&mut head).map_err(self.io())?;
        let status = crate::pipe::Status::from_byte(head[0])
            .ok_or_else(|| ClientError::Malformed(format!("pipe status {}", head[0])))?;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[1..9]);
        let seq = u64::from_be_bytes(seq);
        let len = usize::from(u16::from_be_bytes([head[9], head[10]]));
        let mut message = vec![0u8; len];
        self.reader.read_exact(&mut message).map_err(self.io())?;
        use crate::pipe::Status;
        let http = match status {
            Status::Ok => return Ok(seq),
            Status::Fenced | Status::NotPrimary | Status::LeaseExpired => 409,
            Status::Invalid | Status::InvalidAck => 400,
            Status::NotAcknowledged => 504,
            Status::LogFailed => 503,
        };
        Err(ClientError::Api {
            status: http,
            code: status.code().to_string(),
            message: String::from_utf8_lossy(&message).into_owned(),
        })
    }
}
