//! Mutual TLS for replication, agent to agent, with the identities the agents already have
//! (`warden tls init --agent NAME`: a certificate from the cluster's CA whose DNS name is the
//! agent's name).
//!
//! - The primary's replication listener requires a client certificate from the CA, and takes
//!   a standby's Hello only when the standby's name is one of its certificate's names: one
//!   agent cannot follow a job as another.
//! - A standby verifies the primary's certificate against the CA and, when the server named
//!   the primary's agent (`ReplicaOrder::primary_agent`), that the certificate is that
//!   agent's: a standby never applies frames from an impostor listening at the primary's
//!   address.
//!
//! Agent certificates are issued for client authentication only; the primary presents its own
//! as a TLS *server*, so the standby's verifier checks the chain for the client-auth usage
//! (a standard server verifier would refuse it) and checks the name itself.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

/// How long a replication handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// An agent's TLS for replication: its certificate and key, and the CA its peers' must chain
/// to.
#[derive(Clone)]
pub struct ReplTls {
    server: Arc<ServerConfig>,
    ca: Arc<Vec<CertificateDer<'static>>>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ReplTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplTls").finish_non_exhaustive()
    }
}

impl ReplTls {
    /// From PEM: the CA certificate(s), the agent's certificate chain, its private key.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<ReplTls, String> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        if certs.is_empty() {
            return Err("certificate: no CERTIFICATE section".into());
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
        let ca = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| format!("CA: not a usable CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("CA: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("certificate and key: {e}"))?;
        Ok(ReplTls {
            server: Arc::new(server),
            ca: Arc::new(ca),
            certs,
            key: Arc::new(key),
            provider,
        })
    }

    /// The primary's side: the handshake of a standby that connected, and the names its
    /// certificate vouches for.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Vec<String>)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        let names = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(names_of)
            .unwrap_or_default();
        Ok((stream, names))
    }

    /// The standby's side: the handshake with the primary, whose certificate must chain to
    /// the CA and, when `primary` is given, name that agent.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        primary: Option<&str>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let verifier = AgentVerifier {
            ca: self.ca.clone(),
            expected: primary.map(str::to_string),
            algs: self.provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(std::io::Error::other)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        // The name is checked by the verifier; SNI carries it for diagnostics only.
        let sni = ServerName::try_from(primary.unwrap_or("warden-agent").to_string())
            .unwrap_or_else(|_| ServerName::try_from("warden-agent").expect("a valid name"));
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(sni, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }
}

/// The DNS names a certificate is valid for (empty when it cannot be read).
fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(der)
        .map(|c| c.valid_dns_names().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Verifies a primary agent's certificate: the chain to the CA for client authentication
/// (agent certificates carry no server-auth usage) and, when known, the agent's name.
#[derive(Debug)]
struct AgentVerifier {
    ca: Arc<Vec<CertificateDer<'static>>>,
    expected: Option<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |why: String| rustls::Error::General(why);
        let anchors: Vec<_> = self
            .ca
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
        cert.verify_for_usage(
            self.algs.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            bad(format!(
                "the primary's certificate does not chain to the CA: {e}"
            ))
        })?;
        if let Some(expected) = &self.expected {
            let names: Vec<&str> = cert.valid_dns_names().collect();
            if !names.iter().any(|n| n == expected) {
                return Err(bad(format!(
                    "the certificate at the primary's address is {names:?}'s, not agent {expected:?}'s"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
