//! The API token file parser, the `Authorization` header reader and the access rules.
//!
//! Input (UTF-8): the token file, a line `%%`, the `Authorization` header value, a line `%%`,
//! and the request line `METHOD PATH [m] [d]` (`m`/`d`: public metrics/dashboard).
//!
//! Invariants: nothing panics; the lines `warden token api` would write for the parsed entries
//! parse back to the same set; a request is never allowed beyond its token's role, and a
//! listed token is never refused as unknown.
#![no_main]

use axum::http::{HeaderMap, HeaderValue, Method, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use warden_server::api_auth::{
    AccessPolicy, ApiAuth, Denied, Role, TokenEntry, TokenSet, credentials, hash_token,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, "\n%%\n");
    let file = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let request = parts.next().unwrap_or("GET /");

    if let Ok(set) = TokenSet::parse(file) {
        let lines: String = set.entries().iter().map(TokenEntry::to_line).collect();
        assert_eq!(
            TokenSet::parse(&lines).ok().as_ref(),
            Some(&set),
            "{lines:?}"
        );
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(header) {
        headers.insert(AUTHORIZATION, v);
    }
    let _ = credentials(&headers);

    let mut words = request.split(' ');
    let method =
        Method::from_bytes(words.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let path = words.next().unwrap_or("/");
    let flags: Vec<&str> = words.collect();
    let policy = AccessPolicy {
        public_metrics: flags.contains(&"m"),
        public_dashboard: flags.contains(&"d"),
    };
    let read = "fuzz-read-token";
    let auth = ApiAuth::from_tokens(
        TokenSet::new(vec![TokenEntry {
            role: Role::Read,
            hash: hash_token(read),
            name: Some("reader".into()),
        }]),
        policy,
    );
    let writes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    match auth.authorize(&method, path, &headers) {
        Ok(Some(caller)) => {
            assert_eq!(caller.role, Role::Read);
            assert!(!writes, "a read token was allowed to {method} {path}");
        }
        Ok(None) => assert!(!writes, "{method} {path} needed no token"),
        Err(Denied::Forbidden { needed, .. }) => assert_eq!(needed, Role::Operator),
        Err(Denied::Unauthorized { .. }) => {}
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {read}")).expect("header"),
    );
    match auth.authorize(&method, path, &headers) {
        Ok(_) => assert!(!writes),
        Err(Denied::Forbidden { .. }) => assert!(writes),
        Err(Denied::Unauthorized { .. }) => panic!("a listed token was refused"),
    }
});
