//! REST API tokens and roles.
//!
//! With `--api-tokens FILE` every request to the REST API needs a bearer token, and the token's
//! role decides what it may do:
//!
//! | role | may |
//! |---|---|
//! | `read` | every `GET` (and `HEAD`): the JSON API, `/metrics`, the dashboard |
//! | `operator` | everything `read` may, and every write (`POST /v1/jobs`, `DELETE /v1/jobs/…`) |
//!
//! `GET /healthz` never needs a token (load balancers and supervisors probe it; it tells only
//! that the server answers). `/metrics` and the dashboard need the `read` role unless the
//! server opens them with [`AccessPolicy::public_metrics`] / [`AccessPolicy::public_dashboard`].
//!
//! **The token file** holds one token per line, never the token itself, only its SHA-256:
//!
//! ```text
//! # role      hash                                                                   name
//! operator sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 deploy-bot
//! read     sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752 prometheus
//! ```
//!
//! Blank lines and lines starting with `#` are ignored; the name is optional (one word, used
//! in logs instead of the token). `warden token api` creates a token and appends its line.
//! The server re-reads the file when it changes (checked at most once a second), so adding or
//! removing a line takes effect without a restart; a file that no longer parses is reported
//! and the previous tokens stay in force.
//!
//! A presented token is hashed and compared with *every* stored hash in constant time, so the
//! time taken reveals neither how much of a hash matched nor which entry did. Tokens are never
//! logged: only a token's name (or its hash prefix when it has none) appears in logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::api_error::ErrorCode;
use crate::api_error::HttpError;

/// What a token may do. `Operator` includes everything `Read` may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only: every `GET`.
    Read,
    /// Job changes: submit, delete, anything that writes; and everything `Read` may.
    Operator,
}

impl Role {
    /// Whether a token of this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// The role as written in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "operator" => Ok(Role::Operator),
            other => Err(format!(
                "unknown role {other:?} (expected \"read\" or \"operator\")"
            )),
        }
    }
}

/// A token's SHA-256.
pub type TokenHash = [u8; 32];

/// The SHA-256 of `token`, the form in which tokens are stored.
pub fn hash_token(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equality of two hashes in time independent of their contents (`subtle`, as for join
/// tokens).
fn ct_eq(a: &TokenHash, b: &TokenHash) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

/// Prefix of every token `warden token api` makes (so a leaked one is recognisable, e.g. by
/// secret scanners). The server accepts any string whose hash is listed.
pub const TOKEN_PREFIX: &str = "warden_api_";

/// A new random token: [`TOKEN_PREFIX`] and 256 bits from the operating system's generator,
/// in hex.
pub fn generate_token() -> Result<String, TokenFileError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenFileError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex(text: &str) -> Option<TokenHash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// One line of the token file.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// What the token may do.
    pub role: Role,
    /// The token's SHA-256.
    pub hash: TokenHash,
    /// The name logged for the token, if it has one.
    pub name: Option<String>,
}

impl TokenEntry {
    /// How logs refer to the token: its name, or the first 8 hex digits of its hash.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("sha256:{}", &hex(&self.hash)[..8]),
        }
    }

    /// The entry as a line of the token file (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = format!("{} sha256:{}", self.role, hex(&self.hash));
        if let Some(name) = &self.name {
            line.push(' ');
            line.push_str(name);
        }
        line.push('\n');
        line
    }
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("role", &self.role)
            .field("token", &self.label())
            .finish()
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;

/// Check a token name: one word of printable ASCII, at most [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters long"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) || name.starts_with('#') {
        return Err("must be one word of printable ASCII, not starting with '#'".into());
    }
    Ok(())
}

/// The tokens of one token file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
}

impl TokenSet {
    /// A set of the given entries.
    pub fn new(entries: Vec<TokenEntry>) -> Self {
        TokenSet { entries }
    }

    /// Parse a token file's text, naming the first bad line.
    pub fn parse(text: &str) -> Result<TokenSet, TokenFileError> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |message: String| TokenFileError::Line { line, message };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut words = content.split_whitespace();
            let role: Role = words
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e: String| bad(e))?;
            let hash_word = words
                .next()
                .ok_or_else(|| bad("missing the token hash (sha256:<64 hex digits>)".into()))?;
            let hash = hash_word
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| {
                    bad(
                        "the hash must be written sha256:<64 hex digits> (the file holds \
                         hashes, never tokens; `warden token api` writes the line)"
                            .into(),
                    )
                })?;
            let name = words.next().map(str::to_string);
            if let Some(n) = &name {
                check_name(n).map_err(|e| bad(format!("name {n:?} {e}")))?;
            }
            if words.next().is_some() {
                return Err(bad(
                    "too many words (expected: role sha256:<hex> [name])".into()
                ));
            }
            if let Some(j) = entries.iter().position(|e| e.hash == hash) {
                return Err(bad(format!(
                    "the same token is already listed (entry {} of the file)",
                    j + 1
                )));
            }
            entries.push(TokenEntry { role, hash, name });
        }
        Ok(TokenSet { entries })
    }

    /// Read and parse a token file.
    pub fn load(path: &Path) -> Result<TokenSet, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set has no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `token`, if it is listed. Every entry is compared, in constant time each,
    /// whether or not an earlier one matched.
    pub fn verify(&self, token: &str) -> Option<&TokenEntry> {
        let hash = hash_token(token);
        let mut found = None;
        for entry in &self.entries {
            if ct_eq(&entry.hash, &hash) && found.is_none() {
                found = Some(entry);
            }
        }
        found
    }
}

/// Create a token of `role` named `name`, append its line to the token file at `path`
/// (created with mode 0600 if missing) and return the token — the only time it is ever
/// shown.
pub fn append_new_token(
    path: &Path,
    role: Role,
    name: Option<&str>,
) -> Result<String, TokenFileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(n) = name {
        check_name(n).map_err(|e| TokenFileError::Line {
            line: 0,
            message: format!("name {n:?} {e}"),
        })?;
    }
    let io = |source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The file must stay parseable after the append: refuse to add to a broken one.
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => {
            TokenSet::parse(&text)?;
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let token = generate_token()?;
    let entry = TokenEntry {
        role,
        hash: hash_token(&token),
        name: name.map(str::to_string),
    };
    let mut line = entry.to_line();
    if !existing.is_empty() && !existing.ends_with('\n') {
        line.insert(0, '\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // One write of one short line: appends from two processes cannot interleave.
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(token)
}

/// Which requests need no token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessPolicy {
    /// Serve `GET /metrics` without a token (default false: Prometheus sends the `read`
    /// token with `authorization: { credentials_file: … }`).
    pub public_metrics: bool,
    /// Serve the dashboard (`GET /`, `/ui/…`) without a token (default false: it shows what
    /// the read API shows, so by default it needs the `read` role too; a browser asks for
    /// it — any user name, the token as password).
    pub public_dashboard: bool,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Public,
    /// At least this role.
    Role(Role),
}

fn is_dashboard(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

impl AccessPolicy {
    /// What `method path` needs: writes need `operator`, reads `read`, `/healthz` nothing.
    pub fn required(&self, method: &Method, path: &str) -> Access {
        let reading = matches!(*method, Method::GET | Method::HEAD);
        if path == "/healthz" && reading {
            return Access::Public;
        }
        if reading
            && ((path == "/metrics" && self.public_metrics)
                || (is_dashboard(path) && self.public_dashboard))
        {
            return Access::Public;
        }
        if reading || *method == Method::OPTIONS {
            Access::Role(Role::Read)
        } else {
            Access::Role(Role::Operator)
        }
    }
}

/// The token a request presents: `Authorization: Bearer <token>`, or for browsers
/// `Authorization: Basic` with the token as the password (any user name).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No `Authorization` header.
    None,
    /// A header that is neither a bearer token nor Basic credentials.
    Malformed,
    /// The token.
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Malformed => f.write_str("Malformed"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Read the credentials of a request's headers.
pub fn credentials(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(text) = value.to_str() else {
        return Credentials::Malformed;
    };
    let text = text.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Credentials::Token(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((_, password)) = decoded.as_deref().and_then(|d| d.split_once(':'))
            && !password.is_empty()
        {
            return Credentials::Token(password.to_string());
        }
    }
    Credentials::Malformed
}

/// Who made a request, put in the request's extensions for handlers that log writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's role.
    pub role: Role,
    /// How logs name the token ([`TokenEntry::label`]).
    pub label: String,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token, or one that is not listed.
    Unauthorized {
        /// A token was presented (and is unknown or malformed).
        presented: bool,
    },
    /// 403: the token's role does not allow the request.
    Forbidden {
        /// The token's role.
        role: Role,
        /// The role needed.
        needed: Role,
        /// The token's label.
        label: String,
    },
}

/// How often the token file is checked for changes, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

struct Loaded {
    tokens: Arc<TokenSet>,
    stamp: Option<FileStamp>,
}

/// The REST API's authentication: the tokens in force and the [`AccessPolicy`].
pub struct ApiAuth {
    file: Option<PathBuf>,
    policy: AccessPolicy,
    loaded: RwLock<Loaded>,
    last_check: Mutex<Instant>,
}

impl fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiAuth")
            .field("file", &self.file)
            .field("policy", &self.policy)
            .field("tokens", &self.tokens().len())
            .finish()
    }
}

impl ApiAuth {
    /// Authentication from the token file at `path`, re-read when it changes.
    pub fn from_file(path: &Path, policy: AccessPolicy) -> Result<ApiAuth, TokenFileError> {
        let before = stamp(path);
        let tokens = TokenSet::load(path)?;
        if tokens.is_empty() {
            tracing::warn!(file = %path.display(), "the API token file lists no token: every request but /healthz will be refused");
        }
        Ok(ApiAuth {
            file: Some(path.to_path_buf()),
            policy,
            loaded: RwLock::new(Loaded {
                tokens: Arc::new(tokens),
                stamp: before,
            }),
            last_check: Mutex::new(Instant::now()),
        })
    }

    /// Authentication with a fixed set of tokens (no file).
    pub fn from_tokens(tokens: TokenSet, policy: AccessPolicy) -> ApiAuth {
        ApiAuth {
            file: None,
            policy,
            loaded: RwLock::new(Loaded {
                tokens: Arc::new(tokens),
                stamp: None,
            }),
            last_check: Mutex::new(Instant::now()),
        }
    }

    /// The access policy.
    pub fn policy(&self) -> AccessPolicy {
        self.policy
    }

    /// The tokens in force, re-reading the file first if it changed (checked at most once
    /// per [`RELOAD_CHECK`]).
    pub fn tokens(&self) -> Arc<TokenSet> {
        self.reload_if_changed();
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tokens
            .clone()
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        {
            let mut last = self
                .last_check
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < RELOAD_CHECK {
                return;
            }
            *last = Instant::now();
        }
        let now = stamp(path);
        let unchanged = self
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stamp
            == now;
        if unchanged {
            return;
        }
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        // Whatever happens, this version of the file is dealt with: an error is logged once.
        loaded.stamp = now;
        match TokenSet::load(path) {
            Ok(tokens) => {
                tracing::info!(file = %path.display(), tokens = tokens.len(), "API tokens reloaded");
                loaded.tokens = Arc::new(tokens);
            }
            Err(e) => tracing::error!(
                file = %path.display(),
                error = %e,
                "cannot reload the API token file; the previous tokens stay in force"
            ),
        }
    }

    /// Decide on a request: `Ok(None)` for a public one, `Ok(Some(caller))` for an allowed
    /// one, `Err` with the reason otherwise.
    pub fn authorize(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Caller>, Denied> {
        let needed = match self.policy.required(method, path) {
            Access::Public => return Ok(None),
            Access::Role(r) => r,
        };
        let token = match credentials(headers) {
            Credentials::Token(t) => t,
            Credentials::None => return Err(Denied::Unauthorized { presented: false }),
            Credentials::Malformed => return Err(Denied::Unauthorized { presented: true }),
        };
        let tokens = self.tokens();
        let entry = tokens
            .verify(&token)
            .ok_or(Denied::Unauthorized { presented: true })?;
        if !entry.role.allows(needed) {
            return Err(Denied::Forbidden {
                role: entry.role,
                needed,
                label: entry.label(),
            });
        }
        Ok(Some(Caller {
            role: entry.role,
            label: entry.label(),
        }))
    }
}

/// The error response for a refused request, with its `WWW-Authenticate` challenge.
pub fn denied_response(denied: &Denied, method: &Method, path: &str) -> Response {
    let realm = "realm=\"warden\"";
    let (err, challenges) = match denied {
        Denied::Unauthorized { presented: false } => (
            HttpError::new(
                ErrorCode::Unauthorized,
                "this server requires an API token: send `Authorization: Bearer <token>` \
                 (the warden CLI reads WARDEN_TOKEN or --token)",
            ),
            vec![format!("Bearer {realm}")],
        ),
        Denied::Unauthorized { presented: true } => (
            HttpError::new(
                ErrorCode::Unauthorized,
                "the API token is not valid (unknown, revoked or malformed)",
            ),
            vec![format!("Bearer {realm}, error=\"invalid_token\"")],
        ),
        Denied::Forbidden {
            role,
            needed,
            label,
        } => (
            HttpError::new(
                ErrorCode::Forbidden,
                format!("token {label} has role {role}; {method} {path} needs role {needed}"),
            ),
            vec![format!(
                "Bearer {realm}, error=\"insufficient_scope\", scope=\"{needed}\""
            )],
        ),
    };
    let mut challenges = challenges;
    // A browser only prompts for credentials on a Basic challenge: offer one on the
    // dashboard's pages.
    if is_dashboard(path) && matches!(denied, Denied::Unauthorized { .. }) {
        challenges.push(format!("Basic {realm}, charset=\"UTF-8\""));
    }
    let mut response = err.into_response();
    for c in challenges {
        if let Ok(v) = HeaderValue::try_from(c) {
            response.headers_mut().append(WWW_AUTHENTICATE, v);
        }
    }
    response
}

/// axum middleware: refuse requests without the role they need; put the [`Caller`] in the
/// request's extensions otherwise.
pub async fn require_token(
    State(auth): State<Arc<ApiAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match auth.authorize(&method, &path, request.headers()) {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err(denied) => {
            if let Denied::Forbidden { label, .. } = &denied {
                tracing::info!(token = %label, %method, %path, "request forbidden for the token's role");
            }
            denied_response(&denied, &method, &path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).expect("header"));
        }
        h
    }

    fn set() -> (TokenSet, String, String) {
        let (op, rd) = ("op-secret".to_string(), "read-secret".to_string());
        let text = format!(
            "# comment\n\noperator sha256:{} deploy\nread   sha256:{}\n",
            hex(&hash_token(&op)),
            hex(&hash_token(&rd)).to_uppercase()
        );
        (TokenSet::parse(&text).expect("parses"), op, rd)
    }

    #[test]
    fn sha256_matches_the_known_vector() {
        assert_eq!(
            hex(&hash_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn token_file_lines_parse_and_bad_ones_are_named() {
        let (tokens, op, rd) = set();
        assert_eq!(tokens.len(), 2);
        let entry = tokens.verify(&op).expect("operator token");
        assert_eq!(
            (entry.role, entry.label().as_str()),
            (Role::Operator, "deploy")
        );
        let entry = tokens.verify(&rd).expect("read token");
        assert_eq!(entry.role, Role::Read);
        assert!(entry.label().starts_with("sha256:"));
        assert!(tokens.verify("other").is_none());
        assert!(tokens.verify("").is_none());
        // The label and Debug never contain the token.
        assert!(!format!("{entry:?}").contains(&rd));

        let h = hex(&hash_token("x"));
        let cases = [
            (format!("admin sha256:{h}"), "line 1", "unknown role"),
            ("read".to_string(), "line 1", "missing the token hash"),
            ("read x-secret".to_string(), "line 1", "sha256:"),
            (format!("read sha256:{}", &h[..10]), "line 1", "sha256:"),
            (format!("read sha256:{h} a b"), "line 1", "too many words"),
            (
                format!("\nread sha256:{h}\noperator sha256:{h}"),
                "line 3",
                "already listed",
            ),
            (
                format!("read sha256:{h} {}", "n".repeat(65)),
                "line 1",
                "name",
            ),
        ];
        for (text, line, what) in cases {
            let err = TokenSet::parse(&text).expect_err(what).to_string();
            assert!(
                err.starts_with(line) && err.contains(what),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn roles_order_and_access_rules() {
        assert!(Role::Operator.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Operator));
        let closed = AccessPolicy::default();
        let open = AccessPolicy {
            public_metrics: true,
            public_dashboard: true,
        };
        let read = Access::Role(Role::Read);
        let op = Access::Role(Role::Operator);
        let cases = [
            (Method::GET, "/healthz", Access::Public, Access::Public),
            (Method::GET, "/metrics", read, Access::Public),
            (Method::GET, "/", read, Access::Public),
            (Method::GET, "/ui/agents/x", read, Access::Public),
            (Method::GET, "/uix", read, read),
            (Method::GET, "/v1/jobs", read, read),
            (Method::HEAD, "/v1/agents", read, read),
            (Method::POST, "/v1/jobs", op, op),
            (Method::DELETE, "/v1/jobs/a", op, op),
            (Method::PUT, "/v1/jobs/a", op, op),
            (Method::POST, "/healthz", op, op),
            (Method::POST, "/", op, op),
        ];
        for (method, path, want_closed, want_open) in cases {
            assert_eq!(
                closed.required(&method, path),
                want_closed,
                "{method} {path}"
            );
            assert_eq!(open.required(&method, path), want_open, "{method} {path}");
        }
    }

    #[test]
    fn credentials_are_read_from_bearer_and_basic() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let cases = [
            (None, Credentials::None),
            (
                Some("Bearer abc".to_string()),
                Credentials::Token("abc".into()),
            ),
            (
                Some("bearer   abc ".to_string()),
                Credentials::Token("abc".into()),
            ),
            (Some("Bearer".to_string()), Credentials::Malformed),
            (Some("Token abc".to_string()), Credentials::Malformed),
            (Some(basic("any:abc")), Credentials::Token("abc".into())),
            (Some(basic(":a:b")), Credentials::Token("a:b".into())),
            (Some(basic("user:")), Credentials::Malformed),
            (Some("Basic !!!".to_string()), Credentials::Malformed),
        ];
        for (header, want) in cases {
            assert_eq!(credentials(&headers(header.as_deref())), want, "{header:?}");
        }
        assert_eq!(
            format!("{:?}", Credentials::Token("abc".into())),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn authorize_decides_by_role() {
        let (tokens, op, rd) = set();
        let auth = ApiAuth::from_tokens(tokens, AccessPolicy::default());
        let bearer = |t: &str| headers(Some(&format!("Bearer {t}")));
        assert_eq!(
            auth.authorize(&Method::GET, "/healthz", &headers(None)),
            Ok(None)
        );
        assert_eq!(
            auth.authorize(&Method::GET, "/v1/jobs", &headers(None)),
            Err(Denied::Unauthorized { presented: false })
        );
        assert_eq!(
            auth.authorize(&Method::GET, "/v1/jobs", &bearer("nope")),
            Err(Denied::Unauthorized { presented: true })
        );
        let caller = auth
            .authorize(&Method::GET, "/v1/jobs", &bearer(&rd))
            .expect("read may read")
            .expect("a caller");
        assert_eq!(caller.role, Role::Read);
        assert!(matches!(
            auth.authorize(&Method::POST, "/v1/jobs", &bearer(&rd)),
            Err(Denied::Forbidden {
                role: Role::Read,
                needed: Role::Operator,
                ..
            })
        ));
        let caller = auth
            .authorize(&Method::DELETE, "/v1/jobs/x", &bearer(&op))
            .expect("operator may write")
            .expect("a caller");
        assert_eq!(caller.label, "deploy");
    }

    #[test]
    fn new_tokens_are_appended_and_the_file_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        let first = append_new_token(&path, Role::Read, Some("prom")).expect("append");
        assert!(first.starts_with(TOKEN_PREFIX) && first.len() == TOKEN_PREFIX.len() + 64);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&first), "the file holds hashes only");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let auth = ApiAuth::from_file(&path, AccessPolicy::default()).expect("load");
        assert_eq!(
            auth.tokens().verify(&first).map(|e| e.role),
            Some(Role::Read)
        );

        // A line without its newline, then a new token: still one entry per line.
        std::fs::write(&path, text.trim_end()).expect("rewrite");
        let second = append_new_token(&path, Role::Operator, None).expect("append");
        let set = TokenSet::load(&path).expect("load");
        assert_eq!(set.len(), 2);
        assert_ne!(first, second);
        // The running server sees the new token once the reload check comes round.
        *auth.last_check.lock().expect("lock") = Instant::now() - RELOAD_CHECK;
        assert_eq!(
            auth.tokens().verify(&second).map(|e| e.role),
            Some(Role::Operator)
        );
        // A broken file is refused for appending and keeps the loaded tokens in force.
        std::fs::write(&path, "garbage\n").expect("break");
        assert!(append_new_token(&path, Role::Read, None).is_err());
        *auth.last_check.lock().expect("lock") = Instant::now() - RELOAD_CHECK;
        assert!(auth.tokens().verify(&second).is_some());
        assert!(append_new_token(&path, Role::Read, Some("two words")).is_err());
    }
}
