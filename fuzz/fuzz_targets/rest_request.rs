//! Whole REST requests through the real router, with token authentication on, over a real
//! control plane on an in-memory store: routing, path and query decoding, authentication,
//! body reading and job spec handling, and the control plane's own submit/delete.
//!
//! Input: a request line `METHOD PATH`, a line naming the token (`none`, `read`, `operator`,
//! or anything else, sent as it is), a line with the `Content-Type` (empty: none), and the
//! body (the rest).
//!
//! Invariants: nothing panics; no answer is a 500; a request without a token is refused
//! (401) unless it is the public `GET /healthz`; a read token never changes anything.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use warden_core::controller::ControllerConfig;
use warden_server::api_auth::{AccessPolicy, ApiAuth, Role, TokenEntry, TokenSet, hash_token};
use warden_server::control::ControlPlane;
use warden_server::history::History;
use warden_server::http::{HttpConfig, router_with_config};
use warden_server::view::ControlApi;
use warden_store::MemStore;

const READ: &str = "fuzz-read";
const OPERATOR: &str = "fuzz-operator";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn auth() -> Arc<ApiAuth> {
    static AUTH: OnceLock<Arc<ApiAuth>> = OnceLock::new();
    AUTH.get_or_init(|| {
        Arc::new(ApiAuth::from_tokens(
            TokenSet::new(vec![
                TokenEntry {
                    role: Role::Read,
                    hash: hash_token(READ),
                    name: Some("reader".into()),
                },
                TokenEntry {
                    role: Role::Operator,
                    hash: hash_token(OPERATOR),
                    name: Some("operator".into()),
                },
            ]),
            AccessPolicy::default(),
        ))
    })
    .clone()
}

fn job_names(api: &dyn ControlApi) -> Vec<String> {
    api.jobs()
        .expect("list jobs")
        .into_iter()
        .map(|j| j.spec.name.to_string())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(4, |&b| b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    let token_line = lines.next().unwrap_or_default();
    let content_type = lines.next().unwrap_or_default();
    let body = lines.next().unwrap_or_default().to_vec();
    let Ok(request_line) = std::str::from_utf8(request_line) else {
        return;
    };
    let (method, path) = request_line
        .split_once(' ')
        .unwrap_or(("GET", request_line));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let mut builder = Request::builder().method(method.clone()).uri(path);
    let token = match token_line {
        b"none" => None,
        b"read" => Some(READ.as_bytes()),
        b"operator" => Some(OPERATOR.as_bytes()),
        other => Some(other),
    };
    if let Some(t) = token {
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(t);
        builder = builder.header("authorization", value);
    }
    if !content_type.is_empty() {
        builder = builder.header("content-type", content_type);
    }
    let Ok(request) = builder.body(Body::from(body)) else {
        return;
    };
    let uri_path = request.uri().path().to_string();

    let cp = ControlPlane::new(Arc::new(MemStore::new()), ControllerConfig::default())
        .expect("control plane");
    // Its loop runs: a submission is stored by its ordered writer.
    let (stop, running) = cp.run_on(runtime().handle());
    let api: Arc<dyn ControlApi> = cp;
    let router = router_with_config(
        api.clone(),
        HttpConfig {
            auth: Some(auth()),
            ..HttpConfig::default()
        },
        Arc::new(History::new()),
    );
    let before = job_names(api.as_ref());
    let (status, text) = runtime().block_on(async move {
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    });
    stop.cancel();
    let _ = runtime().block_on(running);
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    let public = matches!(method, Method::GET | Method::HEAD) && uri_path == "/healthz";
    if token.is_none() && !public {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
    }
    if token != Some(OPERATOR.as_bytes()) {
        assert_eq!(
            job_names(api.as_ref()),
            before,
            "changed without the operator token"
        );
    }
});
