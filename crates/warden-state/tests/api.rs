//! The state API on a real Unix socket, through the Rust client and raw HTTP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warden_core::state::AckLevel;
use warden_state::api::{ApiConfig, serve_unix};
use warden_state::client::StateClient;
use warden_state::store::{Limits, Role, StateStore};

struct Served {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    store: StateStore,
    cancel: CancellationToken,
    rt: tokio::runtime::Runtime,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.store.close();
    }
}

const TOKEN: &str = "s3cret";

fn serve(epoch: u64) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("state.sock");
    let (store, _) = StateStore::open(
        &dir.path().join("data"),
        Role::Primary,
        epoch,
        0,
        Limits::default(),
    )
    .expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cancel = CancellationToken::new();
    let cfg = ApiConfig {
        ack: AckLevel::Local,
        token: Some(TOKEN.into()),
    };
    let (s, c, p) = (store.clone(), cancel.clone(), sock.clone());
    rt.spawn(async move { serve_unix(&p, s, cfg, c).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "socket never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    Served {
        _dir: dir,
        sock,
        store,
        cancel,
        rt,
    }
}

/// One raw request; returns (status, body).
fn raw(sock: &Path, req: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_task_writes_reads_and_streams_its_state() {
    let s = serve(4);
    let mut c = StateClient::new(&s.sock, 4, Some(TOKEN.into()));
    assert_eq!(c.get("counter").expect("get"), None);
    let s1 = c.put("counter", b"1", None).expect("put");
    let s2 = c
        .put("dir/a b", b"\xff\x00", Some(AckLevel::Local))
        .expect("put binary");
    assert_eq!(s2, s1 + 1);
    assert_eq!(c.get("counter").expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(
        c.get("dir/a b").expect("get").as_deref(),
        Some(&b"\xff\x00"[..])
    );
    let s3 = c.append(b"event-1", None).expect("append");
    c.sync(s3, AckLevel::Local).expect("sync");
    c.delete("counter", None).expect("delete");
    assert_eq!(c.get("counter").expect("get"), None);

    // Batches, scans and the stream, over raw HTTP (what curl sends).
    let body = r#"{"ops":[{"op":"put","key":"x/1","value":"one"},{"op":"put","key":"x/2","value_b64":"dHdv"},{"op":"delete","key":"dir/a b"}]}"#;
    let (status, text) = raw(
        &s.sock,
        &format!(
            "POST /v1/batch HTTP/1.1\r\nhost: t\r\nwarden-token: {TOKEN}\r\nwarden-epoch: 4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw(
        &s.sock,
        &format!(
            "GET /v1/kv?prefix=x/ HTTP/1.1\r\nhost: t\r\nwarden-token: {TOKEN}\r\nconnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{text}");
    assert_eq!(items[1]["value"], "two");
    let (status, text) = raw(
        &s.sock,
        &format!(
            "GET /v1/stream?from={s3} HTTP/1.1\r\nhost: t\r\nwarden-token: {TOKEN}\r\nconnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ops: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["op"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ops, ["record", "delete", "batch"], "{text}");
    assert_eq!(v["entries"][0]["value"], "event-1");
}

#[test]
fn stale_epochs_strangers_and_bad_input_get_clear_errors_and_change_nothing() {
    let s = serve(9);
    let mut good = StateClient::new(&s.sock, 9, Some(TOKEN.into()));
    good.put("k", b"kept", None).expect("put");
    let applied = s.store.applied();

    let mut stale = StateClient::new(&s.sock, 8, Some(TOKEN.into()));
    let err = stale.put("k", b"lost", None).expect_err("stale epoch");
    assert!(err.is_fenced(), "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");

    let mut stranger = StateClient::new(&s.sock, 9, Some("guess".into()));
    let err = stranger.put("k", b"x", None).expect_err("wrong token");
    assert!(err.to_string().contains("401"), "{err}");
    let mut no_token = StateClient::new(&s.sock, 9, None);
    assert!(no_token.get("k").is_err());

    let big = vec![b'v'; (1 << 20) + 1];
    let err = good.put("big", &big, None).expect_err("oversize");
    assert!(err.to_string().contains("limit"), "{err}");
    let err = good
        .put("k", b"x", Some(AckLevel::Standby))
        .expect_err("no standby");
    assert!(err.to_string().contains("needs a standby"), "{err}");

    let req = |method: &str, target: &str, epoch: Option<u64>, body: &str| {
        let epoch = epoch
            .map(|e| format!("warden-epoch: {e}\r\n"))
            .unwrap_or_default();
        format!(
            "{method} {target} HTTP/1.1\r\nhost: t\r\nwarden-token: {TOKEN}\r\n{epoch}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (req, want) in [
        (req("PUT", "/v1/kv/k", None, "x"), "missing_epoch"),
        (req("PUT", "/v1/kv/k?ack=all", Some(9), "x"), "invalid_ack"),
        (req("POST", "/v1/batch", Some(9), r#"{"ops":1}"#), "invalid"),
        (
            req(
                "POST",
                "/v1/batch",
                Some(9),
                r#"{"ops":[{"op":"merge","key":"k"}]}"#,
            ),
            "unknown op",
        ),
        (
            req(
                "POST",
                "/v1/batch",
                Some(9),
                r#"{"ops":[{"op":"put","key":"k"}]}"#,
            ),
            "exactly one of",
        ),
        (req("GET", "/v1/nothing", None, ""), "no_route"),
    ] {
        let (status, body) = raw(&s.sock, &req);
        assert!((400..500).contains(&status), "{req}: {status} {body}");
        assert!(body.contains(want), "{req}: {body}");
    }
    assert_eq!(
        s.store.applied(),
        applied,
        "a refused request wrote something"
    );
    assert_eq!(good.get("k").expect("get").as_deref(), Some(&b"kept"[..]));
}

#[test]
fn the_role_long_poll_answers_when_the_replica_is_promoted() {
    let s = serve(2);
    s.store.demote(3).expect("demote");
    let mut c = StateClient::new(&s.sock, 3, Some(TOKEN.into()));
    assert_eq!(
        c.role(None, Duration::ZERO).expect("role"),
        ("standby".into(), 3)
    );
    let err = c
        .put("k", b"v", None)
        .expect_err("a standby takes no writes");
    assert!(err.to_string().contains("not_primary"), "{err}");
    let store = s.store.clone();
    let promoter = s.rt.spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.promote(4).expect("promote");
    });
    let started = Instant::now();
    let (role, epoch) = c
        .role(Some(("standby", 3)), Duration::from_secs(30))
        .expect("long-poll");
    assert_eq!((role.as_str(), epoch), ("primary", 4));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the poll waited out its time"
    );
    s.rt.block_on(promoter).expect("promoter");
    c.set_epoch(4);
    c.put("k", b"v", None).expect("write as the new primary");
}

#[test]
fn a_pipe_takes_many_writes_in_flight_and_answers_each_in_order() {
    let s = serve(3);
    let client = StateClient::new(&s.sock, 3, Some(TOKEN.into()));
    let mut pipe = client.pipe(None).expect("pipe");
    for i in 0..2_000u32 {
        pipe.put(&format!("k{i:04}"), format!("v{i}").as_bytes())
            .expect("send");
    }
    pipe.append(b"a record").expect("send");
    pipe.delete("k0000").expect("send");
    pipe.flush().expect("flush");
    let mut last = 0;
    for _ in 0..2_002 {
        let seq = pipe.recv().expect("acknowledged");
        assert!(seq > last, "answers in order: {seq} after {last}");
        last = seq;
    }
    let mut reader = StateClient::new(&s.sock, 3, Some(TOKEN.into()));
    assert_eq!(
        reader.get("k1999").expect("get").as_deref(),
        Some(&b"v1999"[..])
    );
    assert_eq!(reader.get("k0000").expect("get"), None);
    // A refused write is answered with its error, and the pipe goes on.
    pipe.put("", b"no key").expect("send");
    pipe.put("after", b"1").expect("send");
    pipe.flush().expect("flush");
    let err = pipe.recv().expect_err("empty key");
    assert!(err.to_string().contains("invalid"), "{err}");
    assert!(pipe.recv().expect("goes on") > last);
    // A value over the limit is refused like on the other routes; the pipe goes on.
    let limits = Limits::default();
    pipe.put("big", &vec![b'x'; limits.max_value + 1])
        .expect("send");
    pipe.flush().expect("flush");
    let err = pipe.recv().expect_err("value over the limit");
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    // A frame longer than any write can be is refused and the pipe closed (it cannot be
    // skipped safely); nothing was stored.
    let huge = vec![b'x'; limits.max_key + limits.max_value + 1];
    // The agent closes the pipe once it has read the length: sending the rest may fail.
    let _ = pipe.put("huge", &huge).and_then(|()| pipe.flush());
    let err = pipe.recv().expect_err("over the limit");
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(pipe.recv().is_err(), "the pipe is closed");
    assert_eq!(reader.get("huge").expect("get"), None);
    assert_eq!(reader.get("big").expect("get"), None);
}

#[test]
fn a_pipe_of_a_deposed_epoch_is_fenced_and_a_bad_opening_is_refused() {
    let s = serve(5);
    let stale = StateClient::new(&s.sock, 4, Some(TOKEN.into()));
    let mut pipe = stale.pipe(None).expect("pipe");
    pipe.put("k", b"old").expect("send");
    pipe.flush().expect("flush");
    let err = pipe.recv().expect_err("fenced");
    assert!(
        err.is_fenced() && err.to_string().contains("fenced"),
        "{err}"
    );
    let mut reader = StateClient::new(&s.sock, 5, Some(TOKEN.into()));
    assert_eq!(reader.get("k").expect("get"), None);
    // Without the upgrade, with a level the job cannot reach, or without the token.
    let (status, body) = raw(
        &s.sock,
        &format!(
            "POST /v1/pipe HTTP/1.1\r\nhost: t\r\nwarden-token: {TOKEN}\r\nwarden-epoch: 5\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Upgrade: warden-pipe"), "{body}");
    let err = StateClient::new(&s.sock, 5, Some(TOKEN.into()))
        .pipe(Some(AckLevel::Standby))
        .err()
        .expect("no standby in this job");
    assert!(err.to_string().contains("invalid_ack"), "{err}");
    let err = StateClient::new(&s.sock, 5, None)
        .pipe(None)
        .err()
        .expect("no token");
    assert!(err.to_string().contains("401"), "{err}");
}
