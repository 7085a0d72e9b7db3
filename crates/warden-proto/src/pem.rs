//! Reading the PEM files of the session's transport security (certificates, private keys,
//! CA bundles), with errors that name the file and say what is wrong with it.
//!
//! Both ends use these before handing the bytes to tonic: tonic's own errors do not name the
//! file, and it silently skips CA certificates it cannot parse (leaving an empty trust store).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Something is wrong with a PEM file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("read {what} {}: {reason}", path.display())]
    Read {
        /// What the file should hold ("certificate", "private key", "CA certificate").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a `source`: a chain would print it twice).
        reason: std::io::Error,
    },
    /// The file holds no PEM section of the expected kind.
    #[error("{what} {}: no {section} PEM section found", path.display())]
    Missing {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM section looked for, e.g. `CERTIFICATE`.
        section: &'static str,
    },
    /// The file is not valid PEM, or a section does not hold what it says.
    #[error("{what} {}: {detail}", path.display())]
    Invalid {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|reason| PemError::Read {
        what,
        path: path.to_path_buf(),
        reason,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let invalid = |detail: String| PemError::Invalid {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PemError::Missing {
            what,
            path: path.to_path_buf(),
            section: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Read a certificate chain (the first certificate is the holder's own) from `path`; returns
/// the file's bytes once every certificate in it parses as X.509.
pub fn read_certificate_chain(path: &Path) -> Result<Vec<u8>, PemError> {
    const WHAT: &str = "certificate";
    let bytes = read(WHAT, path)?;
    for (i, cert) in certificates(WHAT, path, &bytes)?.iter().enumerate() {
        webpki::EndEntityCert::try_from(cert).map_err(|e| PemError::Invalid {
            what: WHAT,
            path: path.to_path_buf(),
            detail: format!(
                "certificate #{} is not a valid X.509 certificate: {e}",
                i + 1
            ),
        })?;
    }
    Ok(bytes)
}

/// Read the CA certificates a peer's certificate must chain to from `path`; returns the file's
/// bytes once every certificate in it is usable as a trust anchor.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, PemError> {
    const WHAT: &str = "CA certificate";
    let bytes = read(WHAT, path)?;
    for (i, cert) in certificates(WHAT, path, &bytes)?.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| PemError::Invalid {
            what: WHAT,
            path: path.to_path_buf(),
            detail: format!("certificate #{} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    Ok(bytes)
}

/// Read a private key (PKCS#8, PKCS#1 or SEC1 PEM) from `path`; returns the file's bytes.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, PemError> {
    const WHAT: &str = "private key";
    let bytes = read(WHAT, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Ok(bytes),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(PemError::Missing {
            what: WHAT,
            path: path.to_path_buf(),
            section: "PRIVATE KEY",
        }),
        Err(e) => Err(PemError::Invalid {
            what: WHAT,
            path: path.to_path_buf(),
            detail: format!("not valid PEM: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let missing = dir.join("nope.pem");
        let e = read_certificate_chain(&missing).unwrap_err();
        // As error reporters print it: the message, then every source in the chain.
        let mut chained = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chained = format!("{chained}: {s}");
            source = s.source();
        }
        assert!(
            chained.contains("nope.pem") && chained.contains("read certificate"),
            "{chained}"
        );
        // The reason is said once, even by a reporter that prints the whole chain.
        assert_eq!(chained.matches("os error 2").count(), 1, "{chained}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = read_private_key(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PRIVATE KEY"),
            "{e}"
        );
        let e = read_ca_bundle(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no CERTIFICATE"),
            "{e}"
        );

        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_certificate_chain(&garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("not a valid X.509"),
            "{e}"
        );
        let truncated = dir.join("truncated.pem");
        std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let e = read_certificate_chain(&truncated).unwrap_err().to_string();
        assert!(
            e.contains("truncated.pem") && e.contains("not valid PEM"),
            "{e}"
        );
    }
}
