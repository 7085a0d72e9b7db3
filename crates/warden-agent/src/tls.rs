//! How the agent reaches a server: the one place where the gRPC [`Endpoint`] for a server
//! address is made (plaintext, or mutual TLS with the agent's certificate), and the join token
//! sent on every session request.
//!
//! With TLS the agent verifies the server's certificate against its CA (`--tls-ca`) and
//! presents its own (`--tls-cert`, `--tls-key`), whose name is the agent's identity: the
//! server refuses a session whose Hello names another agent. rustls with ring, through tonic.

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::warn;
use warden_proto::JOIN_TOKEN_METADATA;
use warden_proto::pem::{self, PemError};

/// How long the TLS handshake with a server may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The agent's side of mutual TLS: the CA the server's certificate must chain to, and the
/// agent's own certificate and key (PEM).
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    server_name: Option<String>,
    /// The files it was read from (CA, certificate, key), re-read at every connection.
    files: Option<[std::path::PathBuf; 3]>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From PEM bytes: the CA certificate(s), the agent's certificate chain and its key.
    pub fn from_pem(
        ca_pem: impl Into<Vec<u8>>,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        ClientTls {
            ca_pem: ca_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            server_name: None,
            files: None,
        }
    }

    /// From PEM files (`--tls-ca`, `--tls-cert`, `--tls-key`); errors name the file.
    /// The files are read again at every connection (see [`ClientTls::reloaded`]), so
    /// certificates rotated on disk are used without a restart.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, PemError> {
        let mut tls = Self::from_pem(
            pem::read_ca_bundle(ca)?,
            pem::read_certificate_chain(cert)?,
            pem::read_private_key(key)?,
        );
        tls.files = Some([ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf()]);
        Ok(tls)
    }

    /// The settings as the files hold them now (for settings read from files): a rotated
    /// certificate, key or CA bundle takes effect at the next connection. When a file cannot
    /// be read or parsed (a rotation half done), the settings loaded before are kept, with a
    /// warning.
    pub fn reloaded(&self) -> ClientTls {
        let Some([ca, cert, key]) = &self.files else {
            return self.clone();
        };
        match ClientTls::from_files(ca, cert, key) {
            Ok(mut fresh) => {
                if (&fresh.ca_pem, &fresh.cert_pem, &fresh.key_pem)
                    != (&self.ca_pem, &self.cert_pem, &self.key_pem)
                {
                    tracing::info!(cert = %cert.display(), "TLS files changed: using them from this connection on");
                }
                fresh.server_name = self.server_name.clone();
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS files unreadable; keeping the ones loaded before");
                self.clone()
            }
        }
    }

    /// Verify the server's certificate for `name` instead of the host in its address (e.g.
    /// when connecting through an address the certificate does not list).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The same identity for replication between agents (docs/state.md): mutual TLS with the
    /// agent's certificate on its replication listener and when it follows a primary.
    pub fn repl_tls(&self) -> Result<warden_state::tls::ReplTls, String> {
        warden_state::tls::ReplTls::from_pem(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(n) = &self.server_name {
            c = c.domain_name(n.clone());
        }
        c
    }
}

/// A server address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a usable address.
    #[error("bad server address {server:?}: {detail}")]
    BadAddress {
        /// The address given.
        server: String,
        /// What is wrong.
        detail: String,
    },
    /// The scheme contradicts the TLS settings.
    #[error("server address {server:?}: {detail}")]
    Scheme {
        /// The address given.
        server: String,
        /// What is wrong.
        detail: &'static str,
    },
}

/// The gRPC endpoint of `server` (`host:port`, or a URI with `http://` / `https://`), with
/// mutual TLS when `tls` is given. With TLS a bare address gets `https://`; an explicit
/// `http://` is refused rather than silently sent in plaintext (and `https://` without TLS
/// settings too).
pub fn endpoint(server: &str, tls: Option<&ClientTls>) -> Result<Endpoint, EndpointError> {
    let uri = match (server.split_once("://"), tls) {
        (None, Some(_)) => format!("https://{server}"),
        (None, None) => format!("http://{server}"),
        (Some(("https", _)), Some(_)) | (Some(("http", _)), None) => server.to_string(),
        (Some(("http", _)), Some(_)) => {
            return Err(EndpointError::Scheme {
                server: server.to_string(),
                detail: "http:// would be plaintext but TLS is configured: use https:// or \
                         host:port",
            });
        }
        (Some(("https", _)), None) => {
            return Err(EndpointError::Scheme {
                server: server.to_string(),
                detail: "https:// needs the agent's TLS settings (--tls-ca, --tls-cert, \
                         --tls-key)",
            });
        }
        (Some(_), _) => {
            return Err(EndpointError::Scheme {
                server: server.to_string(),
                detail: "the scheme must be http:// or https://",
            });
        }
    };
    let bad = |detail: String| EndpointError::BadAddress {
        server: server.to_string(),
        detail,
    };
    let mut e = Endpoint::from_shared(uri)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    if let Some(t) = tls {
        e = e.tls_config(t.config()).map_err(|e| bad(e.to_string()))?;
    }
    Ok(e)
}

/// `e` and its sources, `: `-separated: tonic's transport errors say only "transport error"
/// themselves, and a TLS problem (an untrusted server certificate, a refused client
/// certificate) is in the sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether `e` or one of its sources is a TLS handshake failure (rustls reports those, and
/// the alerts it receives, as `InvalidData` I/O errors).
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Why connecting to `server` failed, for the session's log; a TLS failure (the server's
/// certificate not trusted, ours refused) is also logged as a warning at once, since retrying
/// will not fix it. Connection refused and the like stay quiet: servers come and go.
pub fn connect_failed(server: &str, e: &tonic::transport::Error) -> String {
    let reason = format!("connect: {}", error_chain(e));
    if is_tls_failure(e) {
        warn!(server, %reason, "TLS handshake with the server failed");
    }
    reason
}

/// Why the server refused the session, for the session's log; a refusal of the agent's
/// certificate, identity or join token is also logged as a warning, since retrying will not
/// fix it.
pub fn session_refused(server: &str, status: &tonic::Status) -> String {
    let reason = format!("open session: {status}");
    if matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ) {
        warn!(server, code = ?status.code(), message = status.message(), "the server refused this agent");
    } else if is_tls_failure(status) {
        warn!(server, %reason, "the server refused this agent's certificate");
    }
    reason
}

/// A join token (`--join-token`, `WARDEN_JOIN_TOKEN`, `--join-token-file`). Its `Debug` does
/// not show it, so it cannot end up in a log by accident.
#[derive(Clone)]
pub struct JoinToken(AsciiMetadataValue);

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// A join token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// The token file could not be read.
    #[error("read join token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Empty, or characters a gRPC header cannot carry.
    #[error("{0}")]
    Invalid(String),
}

impl JoinToken {
    /// A token given as text (surrounding whitespace is ignored).
    pub fn new(token: &str) -> Result<Self, JoinTokenError> {
        let t = token.trim();
        if t.is_empty() {
            return Err(JoinTokenError::Invalid("the join token is empty".into()));
        }
        let invalid = || {
            JoinTokenError::Invalid(
                "the join token has characters a gRPC header cannot carry (printable ASCII \
                 only)"
                    .into(),
            )
        };
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let mut v: AsciiMetadataValue = t.parse().map_err(|_| invalid())?;
        v.set_sensitive(true);
        Ok(JoinToken(v))
    }

    /// The token in the file `path` (its first line).
    pub fn from_file(path: &Path) -> Result<Self, JoinTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| JoinTokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(text.lines().next().unwrap_or_default()).map_err(|e| {
            JoinTokenError::Invalid(format!("join token file {}: {e}", path.display()))
        })
    }
}

/// Puts the join token, if any, on every request of the session client.
#[derive(Clone, Debug)]
pub struct JoinTokenInterceptor(Option<JoinToken>);

impl Interceptor for JoinTokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let v: MetadataValue<_> = t.0.clone();
            req.metadata_mut().insert(JOIN_TOKEN_METADATA, v);
        }
        Ok(req)
    }
}

/// The interceptor that sends `token` with the session request.
pub fn join_token(token: Option<&JoinToken>) -> JoinTokenInterceptor {
    JoinTokenInterceptor(token.cloned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tls() -> ClientTls {
        ClientTls::from_pem("", "", "")
    }

    #[test]
    fn addresses_get_the_scheme_their_tls_settings_call_for() {
        let plain = endpoint("127.0.0.1:7400", None).unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        endpoint("http://127.0.0.1:7400", None).unwrap();
        let e = endpoint("https://127.0.0.1:7400", None).unwrap_err();
        assert!(e.to_string().contains("--tls-ca"), "{e}");
        let e = endpoint("http://127.0.0.1:7400", Some(&tls())).unwrap_err();
        assert!(e.to_string().contains("plaintext"), "{e}");
        let e = endpoint("ftp://x:1", None).unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");
        let e = endpoint("not an address", None).unwrap_err();
        assert!(e.to_string().contains("bad server address"), "{e}");
    }

    #[test]
    fn settings_from_files_follow_a_rotation_and_survive_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let pem_of = |name: &str, body: &str| {
            format!("-----BEGIN {name}-----\n{body}\n-----END {name}-----\n")
        };
        // Any DER parses as PEM here only if it is a certificate: use real ones.
        let ca = rcgen::KeyPair::generate().unwrap();
        let cert = |cn: &str| {
            rcgen::CertificateParams::new(vec![cn.to_string()])
                .unwrap()
                .self_signed(&ca)
                .unwrap()
                .pem()
        };
        let (ca_p, cert_p, key_p) = (
            dir.path().join("ca.pem"),
            dir.path().join("agent.pem"),
            dir.path().join("agent-key.pem"),
        );
        std::fs::write(&ca_p, cert("ca")).unwrap();
        std::fs::write(&cert_p, cert("a")).unwrap();
        std::fs::write(&key_p, ca.serialize_pem()).unwrap();
        let loaded = ClientTls::from_files(&ca_p, &cert_p, &key_p)
            .unwrap()
            .with_server_name("warden");
        let rotated = cert("a-renewed");
        std::fs::write(&cert_p, &rotated).unwrap();
        let now = loaded.reloaded();
        assert_eq!(now.cert_pem, rotated.as_bytes());
        assert_eq!(now.server_name.as_deref(), Some("warden"));
        // Half a rotation (the certificate file is not a certificate): the old settings stay.
        std::fs::write(&cert_p, pem_of("PRIVATE KEY", "AAAA")).unwrap();
        assert_eq!(now.reloaded().cert_pem, rotated.as_bytes());
        // Settings given as bytes are never re-read.
        let fixed = ClientTls::from_pem("a", "b", "c");
        assert_eq!(fixed.reloaded().cert_pem, b"b");
    }

    #[test]
    fn join_tokens_are_trimmed_checked_and_never_shown() {
        let t = JoinToken::new("  wjt_abc\n").unwrap();
        assert_eq!(format!("{t:?}"), "JoinToken(<redacted>)");
        let mut i = join_token(Some(&t));
        let req = i.call(tonic::Request::new(())).unwrap();
        let v = req.metadata().get(JOIN_TOKEN_METADATA).unwrap();
        assert_eq!(v.to_str().unwrap(), "wjt_abc");
        assert!(!format!("{:?}", req.metadata()).contains("wjt_abc"));
        assert!(JoinToken::new(" ").is_err());
        assert!(JoinToken::new("tök").is_err());
        let e = JoinToken::from_file(Path::new("/nonexistent/token")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/token"), "{e}");
    }
}
