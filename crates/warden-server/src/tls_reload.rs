//! Mutual TLS on the session listener, with the certificate, key and client CA re-read from
//! disk when they change: a rotated server certificate (or a CA bundle with a new CA added)
//! is used for new connections without a restart.
//!
//! The listener does the TLS handshakes itself (tokio-rustls with ring, as tonic would), each
//! in a task of its own under a timeout, and hands tonic the established streams; tonic still
//! sees the client's certificate chain (`Request::peer_certs`), which the session's identity
//! checks and the deny list use as before. The rustls configuration lives behind a lock and
//! is swapped whole: a handshake uses the configuration current when it began.
//!
//! A watcher compares the files' size and modification time every
//! [`CHECK_EVERY`]. On a change it reads and checks all three (each must parse, the key must
//! match the certificate); a half-written rotation or a broken file is logged and the old
//! configuration kept, and the next change is tried again. Established sessions are not cut:
//! they stay on the connection they were admitted on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::ServerTls;

/// How often the files are checked for a change.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Established TLS connections waiting for tonic to take them.
const ACCEPTED_BACKLOG: usize = 256;

/// Size and modification time of each watched file.
type Stamp = Vec<Option<(u64, SystemTime)>>;

/// The server's rustls configuration, reloaded when its files change.
pub struct ReloadingTls {
    config: RwLock<Arc<ServerConfig>>,
    /// Certificate, key and client CA files; `None` when built from bytes (nothing to watch).
    files: Option<[PathBuf; 3]>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.len(), m.modified().ok()?))
        })
        .collect()
}

/// A rustls server configuration from PEM bytes: this identity, client certificates required
/// and verified against `client_ca_pem`, HTTP/2 only.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("certificate: no CERTIFICATE section".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        let ca = ca.map_err(|e| format!("client CA: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("client CA: not a usable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client CA: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

impl ReloadingTls {
    /// From the server's TLS settings; its files (when it was read from files) are watched.
    pub fn new(tls: &ServerTls) -> Result<ReloadingTls, String> {
        let (cert, key, ca) = tls.pem();
        let config = server_config(cert, key, ca)?;
        let files = tls.files().cloned();
        let stamp = files.as_ref().map(|f| stamp(f)).unwrap_or_default();
        Ok(ReloadingTls {
            config: RwLock::new(config),
            files,
            stamp: Mutex::new(stamp),
        })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-read the files if they changed since the last look: `None` when they did not,
    /// else whether the new ones were taken (the error says which file is wrong).
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let files = self.files.as_ref()?;
        let now = stamp(files);
        {
            let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
            if *last == now {
                return None;
            }
            *last = now;
        }
        let loaded = ServerTls::from_files(&files[0], &files[1], &files[2])
            .map_err(|e| e.to_string())
            .and_then(|tls| {
                let (cert, key, ca) = tls.pem();
                server_config(cert, key, ca)
            });
        Some(loaded.map(|config| {
            *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        }))
    }

    /// Check the files every [`CHECK_EVERY`] until `cancel`.
    pub async fn run_watcher(self: Arc<Self>, cancel: CancellationToken) {
        if self.files.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Some(Ok(()))) => {
                    info!("server TLS files changed: reloaded; new connections use them");
                }
                Ok(Some(Err(e))) => warn!(
                    error = %e,
                    "server TLS files changed but cannot be used; keeping the previous ones"
                ),
                Ok(None) | Err(_) => {}
            }
        }
    }
}

/// Accept connections on `listener` and complete their TLS handshakes with the current
/// configuration of `tls`, each in a task of its own (a slow or silent client holds up no
/// one); yields the established streams until `cancel`. Failed handshakes are logged and
/// dropped: a client without a valid certificate never reaches tonic.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    cancel: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    warn!(error = %e, "accept on the session listener failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
