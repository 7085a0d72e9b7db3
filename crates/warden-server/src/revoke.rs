//! Revocation of agent certificates: a deny list of certificate serial numbers.
//!
//! The file (`--tls-deny FILE`) holds one serial per line, in hex as `openssl x509 -serial`
//! or `warden tls revoke` prints it (`serial=` prefix, colons and case do not matter, nor do
//! leading zeros); blank lines and `#` comments are allowed. A malformed line stops the server
//! at start, naming the file and line; a later change that does not parse is logged and the
//! list loaded before stays in force.
//!
//! A revoked certificate is refused at the next session it opens (before its Hello), and the
//! live sessions it holds are closed: a watcher re-reads the file every
//! [`DenyList::POLL`] and cancels them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A deny list file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DenyListError {
    /// The file could not be read.
    #[error("read certificate deny list {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// A line is not a serial number.
    #[error("certificate deny list {}, line {line}: {detail}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        detail: String,
    },
}

/// A certificate's serial number as the deny list compares it: lowercase hex, no leading
/// zeros (`0` for zero).
pub fn normalise_serial(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text
        .strip_prefix("serial=")
        .or_else(|| text.strip_prefix("SERIAL="))
        .unwrap_or(text);
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 128 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0').to_ascii_lowercase();
    Some(if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed
    })
}

/// The serial number of a DER certificate, normalised ([`normalise_serial`]); `None` when
/// the bytes are not a certificate.
pub fn certificate_serial(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //                                                      serialNumber INTEGER, ... }, ... }
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (mut tag, mut field, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, field, _) = tlv(rest)?;
    }
    if tag != 0x02 || field.is_empty() {
        return None;
    }
    let hex: String = field.iter().map(|b| format!("{b:02x}")).collect();
    normalise_serial(&hex)
}

/// The serial number of the first certificate in PEM text (a holder's own, in a chain).
pub fn pem_serial(pem: &[u8]) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let first = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    certificate_serial(first.as_ref())
}

/// One DER tag-length-value: (tag, content, what follows). Single-byte tags only (all a
/// certificate's outer fields use).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn parse(text: &str, path: &Path) -> Result<BTreeSet<String>, DenyListError> {
    let mut serials = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let serial = normalise_serial(line).ok_or_else(|| DenyListError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            detail: format!(
                "{line:?} is not a certificate serial number (hex digits, colons allowed, \
                 as `openssl x509 -noout -serial` or `warden tls revoke` prints it)"
            ),
        })?;
        serials.insert(serial);
    }
    Ok(serials)
}

#[derive(Debug, Default)]
struct Live {
    next: u64,
    /// Open sessions: id → (their certificate's serial, what closes them).
    sessions: HashMap<u64, (String, CancellationToken)>,
}

/// The serials refused, re-read when the file changes, and the live sessions to close when
/// their certificate is revoked.
#[derive(Debug)]
pub struct DenyList {
    path: PathBuf,
    serials: Mutex<(String, BTreeSet<String>)>,
    live: Arc<Mutex<Live>>,
}

/// A live session's place on the watch list; dropping it takes the session off.
#[derive(Debug)]
pub struct Watched {
    id: u64,
    live: Arc<Mutex<Live>>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        lock(&self.live).sessions.remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DenyList {
    /// How often the watcher re-reads the file.
    pub const POLL: Duration = Duration::from_millis(250);

    /// Read the list at `path` (it must exist and parse).
    pub fn open(path: &Path) -> Result<DenyList, DenyListError> {
        let text = std::fs::read_to_string(path).map_err(|reason| DenyListError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let serials = parse(&text, path)?;
        info!(file = %path.display(), revoked = serials.len(), "certificate deny list loaded");
        Ok(DenyList {
            path: path.to_path_buf(),
            serials: Mutex::new((text, serials)),
            live: Arc::default(),
        })
    }

    /// Whether `serial` (normalised) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        lock(&self.serials).1.contains(serial)
    }

    /// Watch a live session of the certificate with `serial`: `close` is cancelled if it is
    /// revoked while the session lasts.
    pub fn watch(&self, serial: String, close: CancellationToken) -> Watched {
        // The list is read under its lock before the session is registered (the order
        // `reload` takes them in): a revocation that landed between the session's first
        // check and now closes it here, and one that lands later finds it registered.
        let serials = lock(&self.serials);
        if serials.1.contains(&serial) {
            warn!(serial = %serial, "closing a session: its certificate was revoked");
            close.cancel();
        }
        let mut live = lock(&self.live);
        live.next += 1;
        let id = live.next;
        live.sessions.insert(id, (serial, close));
        drop(live);
        drop(serials);
        Watched {
            id,
            live: self.live.clone(),
        }
    }

    /// Re-read the file; when it changed and parses, take the new list and close the live
    /// sessions of every certificate it revokes. Returns how many were closed.
    pub fn reload(&self) -> usize {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "certificate deny list unreadable; keeping the list loaded before");
                return 0;
            }
        };
        let mut current = lock(&self.serials);
        if current.0 == text {
            return 0;
        }
        match parse(&text, &self.path) {
            Ok(serials) => {
                info!(file = %self.path.display(), revoked = serials.len(), "certificate deny list reloaded");
                *current = (text, serials);
            }
            Err(e) => {
                warn!(error = %e, "certificate deny list invalid; keeping the list loaded before");
                // Not retried until the file changes again.
                current.0 = text;
                return 0;
            }
        }
        let live = lock(&self.live);
        let mut closed = 0;
        for (serial, close) in live.sessions.values() {
            if current.1.contains(serial) && !close.is_cancelled() {
                warn!(serial = %serial, "closing a session: its certificate was revoked");
                close.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Re-read the file every [`DenyList::POLL`] until `cancel`.
    pub async fn run_watcher(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Self::POLL) => {}
            }
            let me = self.clone();
            // File I/O off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serials_are_compared_in_one_form() {
        assert_eq!(normalise_serial("serial=00A1:B2").as_deref(), Some("a1b2"));
        assert_eq!(normalise_serial(" 0a1b2 ").as_deref(), Some("a1b2"));
        assert_eq!(normalise_serial("000").as_deref(), Some("0"));
        assert_eq!(normalise_serial("xyz"), None);
        assert_eq!(normalise_serial(""), None);
    }

    #[test]
    fn a_certificates_serial_is_read_from_its_der() {
        let mut params = rcgen::CertificateParams::new(vec!["agent-1".to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x9f, 0x01, 0x02]));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_serial(cert.der()).as_deref(), Some("9f0102"));
        assert_eq!(pem_serial(cert.pem().as_bytes()).as_deref(), Some("9f0102"));
        assert_eq!(pem_serial(b"no PEM here"), None);
        assert_eq!(certificate_serial(b"not a certificate"), None);
        assert_eq!(certificate_serial(&cert.der()[..20]), None);
    }

    #[test]
    fn a_bad_line_is_named_and_a_bad_reload_keeps_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny");
        std::fs::write(&path, "# revoked\n\nserial=0A1B\nnot-hex\n").unwrap();
        let e = DenyList::open(&path).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("not-hex"), "{e}");

        std::fs::write(&path, "0a1b # laptop of web-1\n").unwrap();
        let list = DenyList::open(&path).unwrap();
        assert!(list.is_revoked("a1b"));
        std::fs::write(&path, "0a1b\nzz\n").unwrap();
        assert_eq!(list.reload(), 0);
        assert!(
            list.is_revoked("a1b"),
            "an invalid change keeps the old list"
        );
    }

    #[test]
    fn revoking_closes_only_the_sessions_of_that_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny");
        std::fs::write(&path, "").unwrap();
        let list = DenyList::open(&path).unwrap();
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let _wa = list.watch("a1".into(), a.clone());
        let wb = list.watch("b2".into(), b.clone());
        assert_eq!(list.reload(), 0, "unchanged file");
        std::fs::write(&path, "a1\n").unwrap();
        assert_eq!(list.reload(), 1);
        assert!(a.is_cancelled() && !b.is_cancelled());
        // A session registered after its certificate was revoked is closed at once.
        let late = CancellationToken::new();
        let _wl = list.watch("a1".into(), late.clone());
        assert!(late.is_cancelled());
        // A session that ended is no longer watched.
        drop(wb);
        std::fs::write(&path, "a1\nb2\n").unwrap();
        assert_eq!(list.reload(), 0);
        assert!(!b.is_cancelled());
        assert!(list.is_revoked("b2"));
    }
}
