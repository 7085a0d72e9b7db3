//! Who may open an agent session: mutual TLS, the agent identity a client certificate proves,
//! and join tokens.
//!
//! - **Transport.** With [`ServerTls`] the gRPC listener speaks TLS only and requires a client
//!   certificate that chains to the configured CA (rustls with ring, through tonic). Expired
//!   certificates, certificates of another CA and clients without one fail the handshake.
//! - **Identity.** An agent's identity is the name its certificate is valid for (its DNS
//!   subject alternative names; wildcards never count). A session whose Hello names another
//!   agent is refused with `PermissionDenied`. A session only ever reports for the agent it was
//!   admitted as (the control plane keys every heartbeat, task report and probe result by the
//!   session's admitted identity), so one agent cannot speak for another.
//! - **Join tokens.** With [`JoinTokens`] every session must present a token (gRPC metadata
//!   [`JOIN_TOKEN_METADATA`]) whose SHA-256 is listed in the tokens file. Only hashes are
//!   kept, compared in constant time; tokens are never logged. A token marked `once` binds to
//!   the first agent name that uses it — durably, in a small file written atomically — so
//!   that agent can reconnect and restart, and no other name can use it.
//!
//! The checks are synchronous (a binding is written to disk before the session is admitted):
//! the session service runs them off the async workers, together with admission.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use warden_proto::pem::{self, PemError};

pub use warden_proto::JOIN_TOKEN_METADATA;

/// The server's TLS identity and the CA its agents' certificates must chain to (PEM).
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Vec<u8>,
    /// The files it was read from (certificate, key, client CA): watched for rotations.
    files: Option<[PathBuf; 3]>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM bytes: the server's certificate chain, its private key, and the CA
    /// certificate(s) agents' certificates must chain to.
    pub fn from_pem(
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
        client_ca_pem: impl Into<Vec<u8>>,
    ) -> Self {
        ServerTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: client_ca_pem.into(),
            files: None,
        }
    }

    /// From PEM files (`--tls-cert`, `--tls-key`, `--tls-client-ca`); errors name the file.
    /// The server watches the files and takes rotated ones without a restart (see
    /// [`crate::tls_reload`]).
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, PemError> {
        Ok(ServerTls {
            cert_pem: pem::read_certificate_chain(cert)?,
            key_pem: pem::read_private_key(key)?,
            client_ca_pem: pem::read_ca_bundle(client_ca)?,
            files: Some([
                cert.to_path_buf(),
                key.to_path_buf(),
                client_ca.to_path_buf(),
            ]),
        })
    }

    /// The PEM bytes: certificate chain, private key, client CA bundle.
    pub fn pem(&self) -> (&[u8], &[u8], &[u8]) {
        (&self.cert_pem, &self.key_pem, &self.client_ca_pem)
    }

    /// The files it was read from (certificate, key, client CA), if any.
    pub fn files(&self) -> Option<&[PathBuf; 3]> {
        self.files.as_ref()
    }
}

/// The optional security settings of the session listener. The default is none: plaintext
/// gRPC, no client identity, no token (for development on loopback only).
#[derive(Debug, Default)]
pub struct SessionSecurity {
    /// Mutual TLS on the gRPC listener.
    pub tls: Option<ServerTls>,
    /// Join tokens required of every session.
    pub join_tokens: Option<JoinTokens>,
    /// Revoked agent certificates (with TLS only).
    pub deny: Option<crate::revoke::DenyList>,
}

/// Why a session was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// TLS is on but the connection carries no client certificate.
    #[error("a client certificate is required")]
    NoCertificate,
    /// The client certificate names no agent.
    #[error("the client certificate cannot identify an agent: {0}")]
    BadCertificate(String),
    /// The Hello names an agent the certificate is not for.
    #[error(
        "the client certificate identifies agent {}, but the Hello names {claimed:?}: an \
         agent's --name must be the name in its certificate",
        certified.join(", ")
    )]
    WrongIdentity {
        /// The names in the certificate.
        certified: Vec<String>,
        /// The name in the Hello.
        claimed: String,
    },
    /// No token presented.
    #[error("a join token is required (agent flag --join-token or --join-token-file)")]
    TokenMissing,
    /// The token's hash is not in the tokens file.
    #[error("the join token is not valid")]
    TokenUnknown,
    /// A one-time token already bound to another agent name.
    #[error("this one-time join token was already used by another agent")]
    TokenBound {
        /// The name it is bound to (logged by the server, not sent to the client).
        bound_to: String,
    },
    /// The binding of a one-time token could not be recorded.
    #[error("record the use of a one-time join token: {0}")]
    Internal(String),
    /// The client certificate is on the deny list.
    #[error("the client certificate (serial {serial}) was revoked")]
    Revoked {
        /// Its serial number.
        serial: String,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::NoCertificate
            | AuthError::BadCertificate(_)
            | AuthError::TokenMissing
            | AuthError::TokenUnknown
            | AuthError::Revoked { .. } => tonic::Status::unauthenticated(message),
            AuthError::WrongIdentity { .. } | AuthError::TokenBound { .. } => {
                tonic::Status::permission_denied(message)
            }
            AuthError::Internal(_) => tonic::Status::unavailable(message),
        }
    }
}

/// The agent names a client certificate proves: its DNS subject alternative names, without
/// wildcards.
pub fn certificate_names(der: &CertificateDer<'_>) -> Result<Vec<String>, AuthError> {
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    let names: Vec<String> = cert
        .valid_dns_names()
        .filter(|n| !n.contains('*'))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(AuthError::BadCertificate(
            "it has no DNS name (subject alternative name) to serve as the agent name".into(),
        ));
    }
    Ok(names)
}

/// What the TLS layer proved about a session's client, if TLS is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The agent names the client certificate is valid for.
    pub names: Vec<String>,
    /// The certificate's serial number (normalised, see [`crate::revoke::normalise_serial`]).
    pub serial: Option<String>,
}

/// The checks a session passes before admission.
#[derive(Debug, Default)]
pub struct Gate {
    tls: bool,
    tokens: Option<JoinTokens>,
    deny: Option<std::sync::Arc<crate::revoke::DenyList>>,
}

impl Gate {
    /// A gate for these settings; also returns the listener's TLS configuration, if any
    /// (reloaded from its files when they change). Fails when the certificate, key and CA
    /// cannot make a TLS configuration (say, a key that does not match the certificate).
    pub fn new(
        security: SessionSecurity,
    ) -> Result<
        (
            Gate,
            Option<std::sync::Arc<crate::tls_reload::ReloadingTls>>,
        ),
        String,
    > {
        let tls = security
            .tls
            .as_ref()
            .map(crate::tls_reload::ReloadingTls::new)
            .transpose()?
            .map(std::sync::Arc::new);
        Ok((
            Gate {
                tls: tls.is_some(),
                tokens: security.join_tokens,
                deny: security.deny.map(std::sync::Arc::new),
            },
            tls,
        ))
    }

    /// Whether any check is configured.
    pub fn is_open(&self) -> bool {
        !self.tls && self.tokens.is_none()
    }

    /// The identity the connection's client certificate proves (`peer_certs` is what tonic's
    /// `Request::peer_certs` returns); `None` when TLS is off.
    pub fn peer(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Option<PeerIdentity>, AuthError> {
        if !self.tls {
            return Ok(None);
        }
        let leaf = peer_certs
            .and_then(<[_]>::first)
            .ok_or(AuthError::NoCertificate)?;
        let serial = crate::revoke::certificate_serial(leaf.as_ref());
        if let Some(deny) = &self.deny {
            match &serial {
                Some(serial) if deny.is_revoked(serial) => {
                    return Err(AuthError::Revoked {
                        serial: serial.clone(),
                    });
                }
                Some(_) => {}
                // A deny list cannot vouch for a certificate whose serial it cannot read.
                None => {
                    return Err(AuthError::BadCertificate(
                        "its serial number cannot be read (needed to check the deny list)".into(),
                    ));
                }
            }
        }
        Ok(Some(PeerIdentity {
            names: certificate_names(leaf)?,
            serial,
        }))
    }

    /// The deny list of revoked certificates, if any (its watcher closes live sessions).
    pub fn deny_list(&self) -> Option<std::sync::Arc<crate::revoke::DenyList>> {
        self.deny.clone()
    }

    /// Whether sessions must present a join token.
    pub fn wants_token(&self) -> bool {
        self.tokens.is_some()
    }

    /// The checks a session passes before its Hello is awaited: a missing or unknown join
    /// token is refused at once instead of holding a stream (and a session permit) for the
    /// Hello's timeout. Blocking: may re-read the tokens file.
    pub fn precheck(&self, token: Option<&str>) -> Result<(), AuthError> {
        match &self.tokens {
            Some(t) => t.known(token),
            None => Ok(()),
        }
    }

    /// May a session whose client is `peer`, presenting `token`, be admitted as agent
    /// `name`? Blocking: may record a one-time token's binding on disk.
    pub fn check(
        &self,
        peer: Option<&PeerIdentity>,
        token: Option<&str>,
        name: &str,
    ) -> Result<(), AuthError> {
        let name = name.trim();
        if let Some(p) = peer
            && !p.names.iter().any(|n| n == name)
        {
            return Err(AuthError::WrongIdentity {
                certified: p.names.clone(),
                claimed: name.to_string(),
            });
        }
        if let Some(t) = &self.tokens {
            t.admit(token, name)?;
        }
        Ok(())
    }
}

/// A SHA-256 digest.
type Digest = [u8; 32];

fn sha256(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The form a token's hash takes in the tokens file: `sha256:<64 hex digits>`.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex(&sha256(token)))
}

/// A new random join token (256 bits): `wjt_` and 64 hex digits.
pub fn new_join_token() -> Result<String, TokenFileError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenFileError::Random)?;
    Ok(format!("wjt_{}", hex(&bytes)))
}

/// Problems with a tokens file or the bindings file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the tokens file is malformed.
    #[error("join tokens file {}, line {line}: {detail}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The bindings file is corrupt.
    #[error("join token bindings file {}: {detail}", path.display())]
    Bindings {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// One line of the tokens file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    hash: Digest,
    once: bool,
}

/// Parse a tokens file: one `sha256:<hex> [once]` per line; blank lines and `#` comments
/// (whole lines, or after the fields) are ignored.
fn parse_tokens(text: &str, path: &Path) -> Result<Vec<Entry>, TokenFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let err = |detail: String| TokenFileError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            detail,
        };
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        let hash = first
            .strip_prefix("sha256:")
            .and_then(unhex)
            .ok_or_else(|| {
                err(
                    "expected `sha256:<64 hex digits> [once]` (the file holds hashes of tokens, \
                     never tokens; `warden token join --file FILE` adds one)"
                        .into(),
                )
            })?;
        // Unexpected text is not quoted back: it might be a token pasted by mistake, and
        // this message is logged.
        let once = match fields.next() {
            None => false,
            Some("once") => true,
            Some(_) => {
                return Err(err(
                    "unknown option after the hash (the only option is `once`)".into(),
                ));
            }
        };
        if fields.next().is_some() {
            return Err(err("unexpected text at the end of the line".into()));
        }
        out.push(Entry { hash, once });
    }
    Ok(out)
}

/// Add a new random token to the tokens file `path` (created 0600 if missing); returns the
/// token, which exists nowhere else: the file only gets its hash.
pub fn add_join_token(path: &Path, once: bool) -> Result<String, TokenFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what, source| TokenFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    // Refuse to append to a file the server could not read.
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("read join tokens file", e)),
    };
    parse_tokens(&existing, path)?;
    let token = new_join_token()?;
    let mut line = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        line.push('\n');
    }
    line.push_str(&token_hash(&token));
    if once {
        line.push_str(" once");
    }
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("open join tokens file", e))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("write join tokens file", e))?;
    Ok(token)
}

/// The file's identity and size, to notice that it changed.
type Stamp = (u64, u64, Option<SystemTime>);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.ino(), m.len(), m.modified().ok()))
}

#[derive(Debug)]
struct TokenState {
    stamp: Option<Stamp>,
    entries: Vec<Entry>,
    /// One-time token hash (hex) → the agent name it is bound to.
    bindings: BTreeMap<String, String>,
}

/// The join tokens a server accepts: the hashes file (re-read when it changes, so tokens can
/// be added and revoked while the server runs) and the durable bindings of one-time tokens.
#[derive(Debug)]
pub struct JoinTokens {
    file: PathBuf,
    bindings_file: PathBuf,
    state: Mutex<TokenState>,
}

fn read_bindings(path: &Path) -> Result<BTreeMap<String, String>, TokenFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| TokenFileError::Bindings {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(TokenFileError::Io {
            what: "read join token bindings file",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replace `path` with `contents` atomically: a temporary file beside it, fsynced, renamed
/// over it, and the directory fsynced.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn lock(m: &Mutex<TokenState>) -> MutexGuard<'_, TokenState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JoinTokens {
    /// Load the tokens file `file` (`--join-tokens`) and the bindings of one-time tokens kept
    /// in `bindings_file` (in the server's data directory).
    pub fn open(file: &Path, bindings_file: &Path) -> Result<JoinTokens, TokenFileError> {
        let text = std::fs::read_to_string(file).map_err(|source| TokenFileError::Io {
            what: "read join tokens file",
            path: file.to_path_buf(),
            source,
        })?;
        let entries = parse_tokens(&text, file)?;
        let bindings = read_bindings(bindings_file)?;
        if entries.is_empty() {
            warn!(file = %file.display(), "the join tokens file lists no token: no agent can join until one is added");
        }
        Ok(JoinTokens {
            file: file.to_path_buf(),
            bindings_file: bindings_file.to_path_buf(),
            state: Mutex::new(TokenState {
                stamp: stamp(file).ok(),
                entries,
                bindings,
            }),
        })
    }

    /// How many tokens are accepted right now.
    pub fn len(&self) -> usize {
        let mut st = lock(&self.state);
        self.refresh(&mut st);
        st.entries.len()
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-read the tokens file if it changed. A file that cannot be read or parsed leaves
    /// the tokens as they were (logged), so a half-written edit locks nobody out.
    fn refresh(&self, st: &mut TokenState) {
        let now = match stamp(&self.file) {
            Ok(s) => s,
            Err(e) => {
                if st.stamp.is_some() {
                    warn!(file = %self.file.display(), error = %e, "join tokens file unreadable; keeping the tokens loaded before");
                    st.stamp = None;
                }
                return;
            }
        };
        if st.stamp == Some(now) {
            return;
        }
        let parsed = std::fs::read_to_string(&self.file)
            .map_err(|source| TokenFileError::Io {
                what: "read join tokens file",
                path: self.file.clone(),
                source,
            })
            .and_then(|t| parse_tokens(&t, &self.file));
        match parsed {
            Ok(entries) => {
                info!(file = %self.file.display(), tokens = entries.len(), "join tokens reloaded");
                st.entries = entries;
                st.stamp = Some(now);
            }
            Err(e) => {
                warn!(error = %e, "join tokens file invalid; keeping the tokens loaded before");
                st.stamp = Some(now);
            }
        }
    }

    /// The entry `token` matches, in a state just refreshed from the file.
    fn find(st: &TokenState, token: Option<&str>) -> Result<Entry, AuthError> {
        let token = token.ok_or(AuthError::TokenMissing)?;
        let presented = sha256(token);
        // Every entry is compared, each in constant time: how long this takes says nothing
        // about how close the presented token came to a valid one.
        let mut found: Option<Entry> = None;
        for e in &st.entries {
            let eq: bool = e.hash.ct_eq(&presented).into();
            found = if eq { Some(*e) } else { found };
        }
        found.ok_or(AuthError::TokenUnknown)
    }

    /// Is `token` present and listed? The check a session passes before it may send its
    /// Hello (who it binds to is [`JoinTokens::admit`]'s business).
    pub fn known(&self, token: Option<&str>) -> Result<(), AuthError> {
        let mut st = lock(&self.state);
        self.refresh(&mut st);
        JoinTokens::find(&st, token).map(|_| ())
    }

    /// May agent `name` join with `token`? Binds a one-time token to `name` on its first use,
    /// durably, before saying yes.
    pub fn admit(&self, token: Option<&str>, name: &str) -> Result<(), AuthError> {
        let mut st = lock(&self.state);
        self.refresh(&mut st);
        let entry = JoinTokens::find(&st, token)?;
        if !entry.once {
            return Ok(());
        }
        let key = hex(&entry.hash);
        match st.bindings.get(&key) {
            Some(bound) if bound == name => Ok(()),
            Some(bound) => {
                warn!(agent = ?name, bound_to = ?bound, "one-time join token presented by a second agent name");
                Err(AuthError::TokenBound {
                    bound_to: bound.clone(),
                })
            }
            None => {
                let mut next = st.bindings.clone();
                next.insert(key.clone(), name.to_string());
                let json = serde_json::to_vec_pretty(&next)
                    .map_err(|e| AuthError::Internal(e.to_string()))?;
                write_atomically(&self.bindings_file, &json).map_err(|e| {
                    warn!(file = %self.bindings_file.display(), error = %e, "record a one-time join token's binding");
                    AuthError::Internal(format!("{}: {e}", self.bindings_file.display()))
                })?;
                st.bindings = next;
                info!(agent = ?name, "one-time join token bound to its first agent");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_file_lines_are_parsed_and_bad_lines_named() {
        let p = Path::new("tokens");
        let h = token_hash("x");
        let text = format!("# comment\n\n{h}\n{h} once # for web-1\n");
        let e = parse_tokens(&text, p).unwrap();
        assert_eq!(e.len(), 2);
        assert!(!e[0].once && e[1].once);
        assert_eq!(e[0].hash, sha256("x"));
        for (bad, want) in [
            ("x".to_string(), "expected `sha256:"),
            ("sha256:abc".to_string(), "expected `sha256:"),
            (format!("{h} wjt_secret"), "unknown option after the hash"),
            (format!("{h} once wjt_secret"), "unexpected text"),
        ] {
            let err = parse_tokens(&format!("\n{bad}\n"), p)
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 2") && err.contains(want), "{bad}: {err}");
            assert!(!err.contains("wjt_secret"), "{err}");
        }
    }

    #[test]
    fn tokens_admit_by_hash_and_one_time_tokens_bind_durably() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("tokens");
        let bindings = tmp.path().join("data").join("bindings.json");
        std::fs::create_dir_all(bindings.parent().unwrap()).unwrap();
        let many = add_join_token(&file, false).unwrap();
        let once = add_join_token(&file, true).unwrap();
        assert!(many.starts_with("wjt_") && many.len() == 68);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&many) && !text.contains(&once), "{text}");

        let t = JoinTokens::open(&file, &bindings).unwrap();
        assert_eq!(t.len(), 2);
        t.admit(Some(&many), "a").unwrap();
        t.admit(Some(&many), "b").unwrap();
        assert!(matches!(t.admit(None, "a"), Err(AuthError::TokenMissing)));
        assert!(matches!(
            t.admit(Some("wjt_nope"), "a"),
            Err(AuthError::TokenUnknown)
        ));
        t.admit(Some(&once), "a").unwrap();
        t.admit(Some(&once), "a").unwrap();
        let e = t.admit(Some(&once), "b").unwrap_err();
        assert!(matches!(&e, AuthError::TokenBound { bound_to } if bound_to == "a"));
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::PermissionDenied);

        // Durable: a new server process (a fresh JoinTokens) keeps the binding.
        let t2 = JoinTokens::open(&file, &bindings).unwrap();
        t2.admit(Some(&once), "a").unwrap();
        assert!(t2.admit(Some(&once), "b").is_err());

        // Tokens added while the server runs are picked up; a broken file keeps the old set.
        let third = add_join_token(&file, false).unwrap();
        t2.admit(Some(&third), "c").unwrap();
        std::fs::write(&file, "garbage\n").unwrap();
        t2.admit(Some(&third), "c").unwrap();
        // Revoking (rewriting the file without the line) takes effect.
        std::fs::write(&file, format!("{}\n", token_hash(&many))).unwrap();
        assert!(matches!(
            t2.admit(Some(&third), "c"),
            Err(AuthError::TokenUnknown)
        ));
        t2.admit(Some(&many), "c").unwrap();
    }

    #[test]
    fn refusals_map_to_grpc_codes() {
        let wrong = AuthError::WrongIdentity {
            certified: vec!["a".into()],
            claimed: "b".into(),
        };
        let s = tonic::Status::from(wrong);
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("identifies agent a") && s.message().contains("\"b\""));
        assert_eq!(
            tonic::Status::from(AuthError::TokenUnknown).code(),
            tonic::Code::Unauthenticated
        );
    }
}
