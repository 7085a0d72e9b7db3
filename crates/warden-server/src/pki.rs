//! A small certificate authority for Warden's agent sessions (`warden tls init`,
//! `warden tls issue-agent`, and `warden dev`): a CA, one server certificate, and one
//! certificate per agent whose identity is the agent's name.
//!
//! Real deployments may bring their own CA instead: the server and the agents only read PEM
//! files. What Warden relies on in a certificate is written in `docs/security.md`.
//!
//! Choices:
//! - ECDSA P-256 keys, signed with ring (the one crypto provider of the binary).
//! - The CA may only sign leaf certificates (path length 0). Server certificates carry the
//!   `serverAuth` extended key usage only and agent certificates `clientAuth` only, so a
//!   server's certificate cannot be presented by a client to join as an agent.
//! - The CA's subject name is derived from its public key (`Warden CA <8 hex digits>`), so a
//!   later `issue-agent` rebuilds the issuer from `ca-key.pem` alone, with no X.509 parser;
//!   every certificate issued is then verified against `ca.pem`, which catches a `ca.pem` that
//!   does not belong to the key.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::{CertificateDer, DnsName, UnixTime};

/// Names every server certificate made here is valid for, besides those asked for: agents on
/// the server's own machine connect to one of these.
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Days a CA made by [`Ca::generate`] is valid at least (it outlives the certificates it
/// signs).
pub const CA_MIN_DAYS: u32 = 3650;

/// What went wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A name cannot be put in a certificate.
    #[error("{0}")]
    InvalidName(String),
    /// The CA files do not hold a usable CA.
    #[error("{0}")]
    BadCa(String),
    /// rcgen failed.
    #[error("make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file that would be overwritten exists.
    #[error("{} exists; {hint}", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
        /// What to do instead.
        hint: &'static str,
    },
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (tolerating clocks a little behind) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// A certificate authority: its key, and the certificate that other parties trust.
pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::BadCa("the system random generator failed".into()))?;
    bytes[0] &= 0x7f; // a positive INTEGER
    Ok(SerialNumber::from_slice(&bytes))
}

/// The CA's parameters, rebuilt from its key alone: the subject name is derived from the key.
fn ca_params(key: &KeyPair, validity: Validity) -> CertificateParams {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    let id: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Warden CA {id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params
}

/// Checks that `name` can be an agent's certificate identity: a DNS name (letters, digits,
/// `-` and `.`), not an IP address, no wildcard.
pub fn check_agent_name(name: &str) -> Result<(), PkiError> {
    if name.parse::<IpAddr>().is_ok() || name.contains('*') || DnsName::try_from(name).is_err() {
        return Err(PkiError::InvalidName(format!(
            "agent name {name:?} cannot be a certificate identity: it must be a DNS name \
             (letters, digits, '-' and '.', e.g. web-1 or web-1.example), which is what the \
             server compares with the agent's --name"
        )));
    }
    Ok(())
}

impl Ca {
    /// A new CA with a fresh key.
    pub fn generate(validity: Validity) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(&key, validity);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            params,
        })
    }

    /// The CA that `warden tls init` wrote: its certificate and key, PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        use rustls_pki_types::pem::PemObject;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::BadCa(format!("the CA key is not a usable key: {e}")))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::BadCa(format!("the CA certificate is not valid PEM: {e}")))?;
        // Only the subject name, key identifier and key usages matter for issuing.
        let params = ca_params(&key, Validity::days(0));
        Ok(Ca {
            key,
            params,
            cert_der,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate, PEM: what servers and agents trust (`--tls-client-ca`, `--tls-ca`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage.clone()];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        let eku = match usage {
            ExtendedKeyUsagePurpose::ServerAuth => webpki::KeyUsage::server_auth(),
            _ => webpki::KeyUsage::client_auth(),
        };
        self.verify(cert.der(), eku, validity)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Checks that `der` chains to this CA's certificate: catches a `ca.pem` that is not the
    /// certificate of `ca-key.pem`.
    fn verify(
        &self,
        der: &CertificateDer<'_>,
        usage: webpki::KeyUsage,
        validity: Validity,
    ) -> Result<(), PkiError> {
        let anchor = webpki::anchor_from_trusted_cert(&self.cert_der)
            .map_err(|e| PkiError::BadCa(format!("the CA certificate is not usable: {e}")))?;
        let leaf = webpki::EndEntityCert::try_from(der)
            .map_err(|e| PkiError::BadCa(format!("issued an unreadable certificate: {e}")))?;
        // Verify at a moment inside the new certificate's validity.
        let at = validity.not_before + Duration::from_secs(60);
        let at = UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            PkiError::BadCa(format!(
                "a certificate signed with the CA key does not verify against the CA \
                 certificate ({e}): the CA certificate and key do not belong together, or the \
                 CA was not made by `warden tls init`, or it is not valid at the new \
                 certificate's start"
            ))
        })?;
        Ok(())
    }

    /// A server certificate valid for `names` (DNS names or IP addresses) and
    /// [`DEFAULT_SERVER_NAMES`].
    pub fn issue_server(&self, names: &[String], validity: Validity) -> Result<Issued, PkiError> {
        let mut all: Vec<String> = names.to_vec();
        for d in DEFAULT_SERVER_NAMES {
            if !all.iter().any(|n| n.eq_ignore_ascii_case(d)) {
                all.push(d.to_string());
            }
        }
        let mut sans = Vec::new();
        for n in &all {
            sans.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    if DnsName::try_from(n.as_str()).is_err() {
                        return Err(PkiError::InvalidName(format!(
                            "server name {n:?} is neither a DNS name nor an IP address"
                        )));
                    }
                    SanType::DnsName(n.as_str().try_into()?)
                }
            });
        }
        let cn = names.first().map_or("warden server", String::as_str);
        self.issue(cn, sans, ExtendedKeyUsagePurpose::ServerAuth, validity)
    }

    /// An agent certificate whose identity is `name` (its only DNS name, and its common
    /// name).
    pub fn issue_agent(&self, name: &str, validity: Validity) -> Result<Issued, PkiError> {
        check_agent_name(name)?;
        self.issue(
            name,
            vec![SanType::DnsName(name.try_into()?)],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )
    }
}

/// The files of a certificate directory made by [`init`].
pub mod files {
    /// The CA certificate.
    pub const CA: &str = "ca.pem";
    /// The CA's key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// The server's certificate.
    pub const SERVER: &str = "server.pem";
    /// The server's key.
    pub const SERVER_KEY: &str = "server-key.pem";

    /// Agent `name`'s certificate.
    pub fn agent(name: &str) -> String {
        format!("agent-{name}.pem")
    }

    /// Agent `name`'s key.
    pub fn agent_key(name: &str) -> String {
        format!("agent-{name}-key.pem")
    }
}

/// Write `contents` to a new file `path` (`mode`; never through an existing file or link).
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Write a certificate (0644) and its key (0600) as `cert` and `key` in `dir`; with
/// `replace`, existing files are replaced (the new ones are written beside them first).
fn write_pair(
    dir: &Path,
    cert: &str,
    key: &str,
    issued: &Issued,
    replace: bool,
) -> Result<[PathBuf; 2], PkiError> {
    let (cert_path, key_path) = (dir.join(cert), dir.join(key));
    if !replace {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(PkiError::Exists {
                    path: p.clone(),
                    hint: "remove it first, or pass --force to replace it",
                });
            }
        }
        write_new(&key_path, &issued.key_pem, 0o600)?;
        write_new(&cert_path, &issued.cert_pem, 0o644)?;
        return Ok([cert_path, key_path]);
    }
    for (path, text, mode) in [
        (&key_path, &issued.key_pem, 0o600),
        (&cert_path, &issued.cert_pem, 0o644),
    ] {
        let tmp = path.with_extension("pem.new");
        let _ = std::fs::remove_file(&tmp);
        write_new(&tmp, text, mode)?;
        std::fs::rename(&tmp, path).map_err(|source| PkiError::Io {
            what: "replace",
            path: path.clone(),
            source,
        })?;
    }
    Ok([cert_path, key_path])
}

/// `warden tls init`: make a CA in `dir` (which must not hold one yet), a server
/// certificate for `server_names` (plus [`DEFAULT_SERVER_NAMES`]) and one certificate per
/// agent name, each valid for `days`. Returns the files written.
pub fn init(
    dir: &Path,
    server_names: &[String],
    agents: &[String],
    days: u32,
) -> Result<Vec<PathBuf>, PkiError> {
    for a in agents {
        check_agent_name(a)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        what: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    for f in [files::CA, files::CA_KEY] {
        let p = dir.join(f);
        if p.exists() {
            return Err(PkiError::Exists {
                path: p,
                hint: "this directory has a CA already: use `warden tls issue-agent` to add \
                       agents, or choose another --dir",
            });
        }
    }
    let ca = Ca::generate(Validity::days(days.max(CA_MIN_DAYS)))?;
    let validity = Validity::days(days);
    // Issue everything before writing anything, so a bad name leaves no half-made directory.
    let server = ca.issue_server(server_names, validity)?;
    let agent_certs = agents
        .iter()
        .map(|a| Ok((a, ca.issue_agent(a, validity)?)))
        .collect::<Result<Vec<_>, PkiError>>()?;
    let mut written = Vec::new();
    write_new(&dir.join(files::CA_KEY), &ca.key_pem(), 0o600)?;
    written.push(dir.join(files::CA_KEY));
    write_new(&dir.join(files::CA), ca.cert_pem(), 0o644)?;
    written.push(dir.join(files::CA));
    written.extend(write_pair(
        dir,
        files::SERVER,
        files::SERVER_KEY,
        &server,
        false,
    )?);
    for (a, issued) in agent_certs {
        written.extend(write_pair(
            dir,
            &files::agent(a),
            &files::agent_key(a),
            &issued,
            false,
        )?);
    }
    Ok(written)
}

/// `warden tls issue-agent`: issue a certificate for agent `name` with the CA in `dir`;
/// `replace` overwrites an existing one. Returns the certificate and key files.
pub fn issue_agent(
    dir: &Path,
    name: &str,
    days: u32,
    replace: bool,
) -> Result<[PathBuf; 2], PkiError> {
    check_agent_name(name)?;
    let read = |f: &str| {
        let path = dir.join(f);
        std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
            what: "read",
            path,
            source,
        })
    };
    let ca = Ca::load(&read(files::CA)?, &read(files::CA_KEY)?)?;
    let issued = ca.issue_agent(name, Validity::days(days))?;
    write_pair(
        dir,
        &files::agent(name),
        &files::agent_key(name),
        &issued,
        replace,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(der_pem: &str) -> Vec<String> {
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(der_pem.as_bytes()).unwrap();
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        cert.valid_dns_names().map(str::to_string).collect()
    }

    #[test]
    fn agent_certificates_name_the_agent_and_chain_to_the_ca() {
        let ca = Ca::generate(Validity::days(CA_MIN_DAYS)).unwrap();
        let a = ca.issue_agent("web-1", Validity::days(1)).unwrap();
        assert_eq!(names(&a.cert_pem), ["web-1"]);
        let s = ca
            .issue_server(&["warden.example".into()], Validity::days(1))
            .unwrap();
        assert_eq!(names(&s.cert_pem), ["warden.example", "localhost"]);
        // A CA rebuilt from its files issues certificates that verify against the original.
        let again = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        again.issue_agent("web-2", Validity::days(1)).unwrap();
        // A CA certificate that is not the key's is caught.
        let other = Ca::generate(Validity::days(1)).unwrap();
        let mixed = Ca::load(other.cert_pem(), &ca.key_pem()).unwrap();
        let e = mixed
            .issue_agent("web-3", Validity::days(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not belong together"), "{e}");
    }

    #[test]
    fn names_that_cannot_be_identities_are_refused() {
        for bad in ["", "a b", "*.x", "10.0.0.1", "a/b", "é"] {
            let e = check_agent_name(bad).unwrap_err().to_string();
            assert!(e.contains("DNS name"), "{bad}: {e}");
        }
        check_agent_name("agent-1").unwrap();
        check_agent_name("a.b.c").unwrap();
    }

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_overwrite_a_ca() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let written = init(&dir, &[], &["a1".into(), "a2".into()], 30).unwrap();
        assert_eq!(written.len(), 8);
        for p in &written {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let key = p.to_string_lossy().ends_with("-key.pem");
            assert_eq!(mode, if key { 0o600 } else { 0o644 }, "{}", p.display());
        }
        let e = init(&dir, &[], &[], 30).unwrap_err().to_string();
        assert!(e.contains("ca.pem exists"), "{e}");
        issue_agent(&dir, "a3", 30, false).unwrap();
        let e = issue_agent(&dir, "a3", 30, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        let before = std::fs::read_to_string(dir.join("agent-a3.pem")).unwrap();
        issue_agent(&dir, "a3", 30, true).unwrap();
        assert_ne!(
            before,
            std::fs::read_to_string(dir.join("agent-a3.pem")).unwrap()
        );
        assert_eq!(names(&before), ["a3"]);
    }
}
