//! The state API a task reaches on its Unix socket (`WARDEN_STATE_SOCK`): HTTP/1.1 with raw
//! values for single keys and JSON elsewhere. Every write names the caller's epoch in the
//! `Warden-Epoch` header (the task's `WARDEN_FENCING_TOKEN`); a stale one is answered `409`
//! with code `fenced` and changes nothing. Every request carries the task's
//! `Warden-Token` (`WARDEN_STATE_TOKEN`): the socket's file mode keeps other users out, the
//! token keeps out other processes of the same user. The routes are listed in
//! `docs/state.md`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warden_core::state::AckLevel;

use crate::codec::{self, BatchOp, Op};
use crate::store::{StateStore, WaitError, WriteError};

/// Longest a request may wait (for an acknowledgement, the stream or the role).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a write waits for its acknowledgement unless it says otherwise.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the API serves one task.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The job's default acknowledgement level.
    pub ack: AckLevel,
    /// The token every request must carry in `Warden-Token` (none: not checked, for tests
    /// and tools on a private socket).
    pub token: Option<String>,
}

#[derive(Clone)]
struct Ctx {
    store: StateStore,
    cfg: Arc<ApiConfig>,
}

/// An error answer, boxed (a `Response` is large to carry in a `Result`).
type Refusal = Box<Response>;

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Refusal {
    Box::new(error(status, code, message))
}

/// An error answer: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn write_error(e: &WriteError) -> Response {
    match e {
        WriteError::Fenced(_) => error(StatusCode::CONFLICT, "fenced", e.to_string()),
        WriteError::NotPrimary { .. } => error(StatusCode::CONFLICT, "not_primary", e.to_string()),
        WriteError::LeaseExpired => error(StatusCode::CONFLICT, "lease_expired", e.to_string()),
        WriteError::Invalid(_) => error(StatusCode::BAD_REQUEST, "invalid", e.to_string()),
        WriteError::Unreachable { .. } => {
            error(StatusCode::BAD_REQUEST, "invalid_ack", e.to_string())
        }
        WriteError::Failed(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "log_failed", e.to_string())
        }
    }
}

fn wait_error(e: &WaitError) -> Response {
    match e {
        WaitError::Timeout { .. } => error(
            StatusCode::GATEWAY_TIMEOUT,
            "not_acknowledged",
            e.to_string(),
        ),
        WaitError::Failed(_) => error(StatusCode::SERVICE_UNAVAILABLE, "log_failed", e.to_string()),
    }
}

fn epoch_of(headers: &HeaderMap) -> Result<u64, Refusal> {
    let Some(v) = headers.get("warden-epoch") else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "missing_epoch",
            "a write must carry the Warden-Epoch header (the task's WARDEN_FENCING_TOKEN)",
        ));
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid_epoch",
                "Warden-Epoch must be a whole number",
            )
        })
}

fn parse_wait(s: Option<&str>, default: Duration, field: &str) -> Result<Duration, Refusal> {
    let Some(s) = s else { return Ok(default) };
    let d = parse_duration(s).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{field} {s:?}: expected a duration like 500ms, 5s or 1m"),
        )
    })?;
    if d > MAX_WAIT {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{field} must be at most {}s", MAX_WAIT.as_secs()),
        ));
    }
    Ok(d)
}

/// `500ms`, `5s`, `1m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    ack: Option<String>,
    timeout: Option<String>,
}

impl WriteQuery {
    fn level(&self, ctx: &Ctx) -> Result<(AckLevel, Duration), Refusal> {
        let level = match &self.ack {
            None => ctx.cfg.ack,
            Some(s) => AckLevel::parse(s).ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_ack",
                    format!("ack {s:?}: expected local, standby or quorum"),
                )
            })?,
        };
        ctx.store
            .reachable(level)
            .map_err(|e| Box::new(write_error(&e)))?;
        let timeout = parse_wait(self.timeout.as_deref(), DEFAULT_ACK_TIMEOUT, "timeout")?;
        Ok((level, timeout))
    }
}

async fn do_write(ctx: &Ctx, headers: &HeaderMap, q: &WriteQuery, op: Op) -> Response {
    let epoch = match epoch_of(headers) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let (level, timeout) = match q.level(ctx) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let seq = match ctx.store.write(epoch, op) {
        Ok(s) => s,
        Err(e) => return write_error(&e),
    };
    match ctx.store.wait(seq, level, timeout).await {
        Ok(()) => axum::Json(json!({"seq": seq, "ack": level.as_str()})).into_response(),
        Err(e) => wait_error(&e),
    }
}

fn key_of(key: &str) -> Result<String, Refusal> {
    if key.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a key must not be empty",
        ));
    }
    Ok(key.to_string())
}

async fn put_key(
    State(ctx): State<Ctx>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match key_of(&key) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    do_write(&ctx, &headers, &q, Op::Put { key, value: body }).await
}

async fn delete_key(
    State(ctx): State<Ctx>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
) -> Response {
    let key = match key_of(&key) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    do_write(&ctx, &headers, &q, Op::Delete { key }).await
}

async fn get_key(State(ctx): State<Ctx>, UrlPath(key): UrlPath<String>) -> Response {
    let (value, seq) = ctx.store.get(&key);
    let seq_header = HeaderValue::from(seq);
    match value {
        Some(v) => {
            let mut r = v.into_response();
            r.headers_mut().insert("warden-seq", seq_header);
            r
        }
        None => {
            let mut r = error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no key {key:?}"),
            );
            r.headers_mut().insert("warden-seq", seq_header);
            r
        }
    }
}

/// A value in JSON: a string when it is UTF-8, else base64 under `value_b64`.
fn value_json(obj: &mut serde_json::Map<String, Value>, v: &[u8]) {
    match std::str::from_utf8(v) {
        Ok(s) => obj.insert("value".into(), Value::from(s)),
        Err(_) => obj.insert("value_b64".into(), Value::from(B64.encode(v))),
    };
}

/// Keys and values as JSON items: `[{"key", "value" | "value_b64"}]`.
fn items_json(items: &[(String, Bytes)]) -> Vec<Value> {
    items
        .iter()
        .map(|(k, v)| {
            let mut o = serde_json::Map::new();
            o.insert("key".into(), Value::from(k.as_str()));
            value_json(&mut o, v);
            Value::Object(o)
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// Most keys one scan returns.
pub const MAX_SCAN: usize = 10_000;

async fn scan(State(ctx): State<Ctx>, Query(q): Query<ScanQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_SCAN);
    let (items, seq) = ctx.store.scan(&q.prefix, q.after.as_deref(), limit);
    let more = items.len() == limit;
    let last = items.last().map(|(k, _)| k.clone());
    let items = items_json(&items);
    axum::Json(json!({"seq": seq, "items": items, "next_after": if more { last } else { None }}))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    ops: Vec<BatchItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    op: String,
    key: String,
    value: Option<String>,
    value_b64: Option<String>,
}

fn batch_ops(body: &[u8]) -> Result<Vec<BatchOp>, Refusal> {
    let b: BatchBody = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("batch: {e} (expected {{\"ops\": [{{\"op\": \"put\", \"key\": .., \"value\": ..}}, {{\"op\": \"delete\", \"key\": ..}}]}})"),
        )
    })?;
    let mut ops = Vec::with_capacity(b.ops.len());
    for (i, item) in b.ops.into_iter().enumerate() {
        let bad = |m: &str| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("batch op {i}: {m}"),
            )
        };
        match (item.op.as_str(), item.value, item.value_b64) {
            ("put", Some(v), None) => ops.push(BatchOp::Put(item.key, Bytes::from(v))),
            ("put", None, Some(v)) => {
                let v = B64.decode(v).map_err(|_| bad("value_b64 is not base64"))?;
                ops.push(BatchOp::Put(item.key, Bytes::from(v)));
            }
            ("put", _, _) => return Err(bad("a put needs exactly one of value and value_b64")),
            ("delete", None, None) => ops.push(BatchOp::Delete(item.key)),
            ("delete", _, _) => return Err(bad("a delete takes no value")),
            (other, _, _) => {
                return Err(bad(&format!(
                    "unknown op {other:?}: expected put or delete"
                )));
            }
        }
    }
    Ok(ops)
}

async fn batch(
    State(ctx): State<Ctx>,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match batch_ops(&body) {
        Ok(ops) => do_write(&ctx, &headers, &q, Op::Batch(ops)).await,
        Err(r) => *r,
    }
}

/// `POST /v1/pipe` with `Upgrade: warden-pipe`: see [`crate::pipe`].
async fn open_pipe(
    State(ctx): State<Ctx>,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
    mut req: Request,
) -> Response {
    let upgrade = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case(crate::pipe::UPGRADE)) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a pipe is opened with `Connection: Upgrade` and `Upgrade: warden-pipe` (docs/state.md)",
        );
    }
    let epoch = match epoch_of(&headers) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let (level, timeout) = match q.level(&ctx) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let store = ctx.store.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            crate::pipe::serve(io, store, epoch, level, timeout).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, crate::pipe::UPGRADE)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "response"))
}

async fn append(
    State(ctx): State<Ctx>,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    do_write(&ctx, &headers, &q, Op::Record(body)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    seq: u64,
    ack: Option<String>,
    timeout: Option<String>,
}

async fn sync(State(ctx): State<Ctx>, Query(q): Query<SyncQuery>) -> Response {
    let wq = WriteQuery {
        ack: q.ack,
        timeout: q.timeout,
    };
    let (level, timeout) = match wq.level(&ctx) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    if q.seq > ctx.store.applied() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "sequence {} was never written (the state is at {})",
                q.seq,
                ctx.store.applied()
            ),
        );
    }
    match ctx.store.wait(q.seq, level, timeout).await {
        Ok(()) => axum::Json(json!({"seq": q.seq, "ack": level.as_str()})).into_response(),
        Err(e) => wait_error(&e),
    }
}

async fn checkpoint(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let epoch = match epoch_of(&headers) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let store = ctx.store.clone();
    match tokio::task::spawn_blocking(move || store.checkpoint(epoch, body)).await {
        Ok(Ok(seq)) => axum::Json(json!({"seq": seq})).into_response(),
        Ok(Err(e)) => write_error(&e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "checkpoint task failed",
        ),
    }
}

async fn snapshot(State(ctx): State<Ctx>) -> Response {
    let s = ctx.store.snapshot();
    let items = items_json(&s.kv);
    axum::Json(json!({
        "seq": s.seq,
        "epoch": s.epoch,
        "items": items,
        "blob_b64": B64.encode(&s.blob),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    from: u64,
    limit: Option<usize>,
    wait: Option<String>,
}

fn entry_json(e: &codec::Entry) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("seq".into(), Value::from(e.seq));
    o.insert("epoch".into(), Value::from(e.epoch));
    match &e.op {
        Op::Put { key, value } => {
            o.insert("op".into(), Value::from("put"));
            o.insert("key".into(), Value::from(key.as_str()));
            value_json(&mut o, value);
        }
        Op::Delete { key } => {
            o.insert("op".into(), Value::from("delete"));
            o.insert("key".into(), Value::from(key.as_str()));
        }
        Op::Batch(ops) => {
            o.insert("op".into(), Value::from("batch"));
            let ops: Vec<Value> = ops
                .iter()
                .map(|op| {
                    let mut m = serde_json::Map::new();
                    match op {
                        BatchOp::Put(k, v) => {
                            m.insert("op".into(), Value::from("put"));
                            m.insert("key".into(), Value::from(k.as_str()));
                            value_json(&mut m, v);
                        }
                        BatchOp::Delete(k) => {
                            m.insert("op".into(), Value::from("delete"));
                            m.insert("key".into(), Value::from(k.as_str()));
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            o.insert("ops".into(), Value::from(ops));
        }
        Op::Record(data) => {
            o.insert("op".into(), Value::from("record"));
            value_json(&mut o, data);
        }
        Op::Epoch => {
            o.insert("op".into(), Value::from("epoch"));
        }
    }
    Value::Object(o)
}

async fn stream(State(ctx): State<Ctx>, Query(q): Query<StreamQuery>) -> Response {
    let wait = match parse_wait(q.wait.as_deref(), Duration::ZERO, "wait") {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let from = q.from.max(1);
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_SCAN);
    if ctx.store.applied() < from && !wait.is_zero() {
        let mut rx = ctx.store.applied_watch();
        let _ = tokio::time::timeout(wait, rx.wait_for(|&a| a >= from)).await;
    }
    let frames = match ctx.store.frames_from(from, 4 << 20) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return error(
                StatusCode::GONE,
                "compacted",
                format!(
                    "entries before the checkpoint are gone; read GET /v1/snapshot and stream from after its seq (asked from {from})"
                ),
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "log_failed", e.to_string()),
    };
    let mut entries = Vec::new();
    let mut rest = frames;
    let mut next = from;
    while !rest.is_empty() && entries.len() < limit {
        let Ok((e, n)) = codec::decode(&rest) else {
            break;
        };
        next = e.seq + 1;
        entries.push(entry_json(&e));
        rest = rest.slice(n..);
    }
    axum::Json(json!({"entries": entries, "next": next})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleQuery {
    /// Answer only once the role or epoch differs from these (a long-poll).
    role: Option<String>,
    epoch: Option<u64>,
    wait: Option<String>,
}

async fn role(State(ctx): State<Ctx>, Query(q): Query<RoleQuery>) -> Response {
    let wait = match parse_wait(q.wait.as_deref(), Duration::ZERO, "wait") {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let mut rx = ctx.store.role_watch();
    if !wait.is_zero() && (q.role.is_some() || q.epoch.is_some()) {
        let same = |r: &crate::store::RoleState| {
            q.role.as_deref().is_none_or(|x| x == r.role.as_str())
                && q.epoch.is_none_or(|e| e == r.epoch)
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| !same(r))).await;
    }
    let r = ctx.store.role();
    axum::Json(json!({"role": r.role.as_str(), "epoch": r.epoch})).into_response()
}

async fn status(State(ctx): State<Ctx>) -> Response {
    let r = ctx.store.role();
    let c = ctx.store.committed();
    let standbys: Vec<Value> = ctx
        .store
        .standbys()
        .into_iter()
        .map(|(id, p)| json!({"id": id, "synced": p.synced, "in_sync": p.in_sync}))
        .collect();
    axum::Json(json!({
        "role": r.role.as_str(),
        "epoch": r.epoch,
        "applied": ctx.store.applied(),
        "acknowledged": {"local": c.local, "standby": c.standby, "quorum": c.quorum},
        "default_ack": ctx.cfg.ack.as_str(),
        "standbys": standbys,
    }))
    .into_response()
}

async fn check_token(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if let Some(want) = &ctx.cfg.token {
        let got = req
            .headers()
            .get("warden-token")
            .and_then(|v| v.to_str().ok());
        // Compared in constant time: the token is a secret.
        let ok = got.is_some_and(|g| {
            g.len() == want.len()
                && g.bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong Warden-Token (the task's WARDEN_STATE_TOKEN)",
            );
        }
    }
    next.run(req).await
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see docs/state.md for the state API",
    )
}

/// The state API's router for one task's store.
pub fn router(store: StateStore, cfg: ApiConfig) -> Router {
    let limits = store.limits();
    let ctx = Ctx {
        store,
        cfg: Arc::new(cfg),
    };
    Router::new()
        .route("/v1/kv", get(scan))
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/batch", post(batch))
        .route("/v1/log", post(append))
        .route("/v1/pipe", post(open_pipe))
        .route("/v1/sync", post(sync))
        .route("/v1/checkpoint", post(checkpoint))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/stream", get(stream))
        .route("/v1/role", get(role))
        .route("/v1/status", get(status))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), check_token))
        .layer(DefaultBodyLimit::max(
            limits.max_batch_bytes.max(limits.max_value) + 4096,
        ))
        .with_state(ctx)
}

/// Bind the state API's Unix socket at `path` (an old socket file there is replaced): mode
/// 0600, owned by `owner` (uid, gid) when given (the task's user, when the agent runs tasks
/// as another user). Bound before the task starts, so its first request finds the socket.
pub fn bind_unix(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Serve the state API on `listener` until `cancel`.
pub async fn serve_listener(
    listener: tokio::net::UnixListener,
    store: StateStore,
    cfg: ApiConfig,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, cfg))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Serve the state API on a Unix socket at `path` (see [`bind_unix`]) until `cancel`.
pub async fn serve_unix(
    path: &Path,
    store: StateStore,
    cfg: ApiConfig,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = bind_unix(path, None)?;
    serve_listener(listener, store, cfg, cancel).await
}
