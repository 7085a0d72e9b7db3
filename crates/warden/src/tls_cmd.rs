//! `warden tls`: a CA and certificates for mutual TLS between agents and servers.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use warden_server::{pki, revoke};

/// `warden tls` subcommands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create a CA in DIR, a server certificate and one certificate per --agent. Keys are
    /// written 0600; the CA key (ca-key.pem) is only needed to issue more certificates: keep
    /// it off the servers if you can.
    Init {
        /// Directory for the files (created; must not hold a CA yet).
        #[arg(long)]
        dir: PathBuf,
        /// A name (DNS name or IP address) agents use to reach the server; repeat for several.
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// An agent to issue a certificate for; its name is its identity (must match the
        /// agent's --name). Repeat for several.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Days the server and agent certificates are valid (the CA: at least 10 years).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a certificate for one more agent with the CA in DIR.
    IssueAgent {
        /// Directory made by `warden tls init` (ca.pem and ca-key.pem).
        #[arg(long)]
        dir: PathBuf,
        /// The agent's name (its --name).
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace an existing certificate for this agent (renewal).
        #[arg(long)]
        force: bool,
    },
    /// Revoke agent certificates: append their serial numbers to the deny list a server reads
    /// with --tls-deny (created if missing). The server closes their live sessions within
    /// about a quarter of a second and refuses new ones.
    Revoke {
        /// The deny list file (the server's --tls-deny).
        #[arg(long)]
        deny_file: PathBuf,
        /// Certificate files (PEM) or serial numbers (hex, as `openssl x509 -noout -serial`
        /// prints them).
        #[arg(required = true)]
        certificates: Vec<String>,
    },
}

/// Run a `warden tls` subcommand.
pub fn run(cmd: &TlsCommand) -> Result<()> {
    match cmd {
        TlsCommand::Init {
            dir,
            server_names,
            agents,
            days,
        } => {
            let written = pki::init(dir, server_names, agents, *days)
                .with_context(|| format!("create certificates in {}", dir.display()))?;
            for p in &written {
                println!("wrote {}", p.display());
            }
            let d = dir.display();
            println!(
                "server: warden server --tls-cert {d}/server.pem --tls-key {d}/server-key.pem \
                 --tls-client-ca {d}/ca.pem"
            );
            if let Some(a) = agents.first() {
                println!(
                    "agent:  warden agent --name {a} --tls-cert {d}/agent-{a}.pem --tls-key \
                     {d}/agent-{a}-key.pem --tls-ca {d}/ca.pem"
                );
            }
        }
        TlsCommand::IssueAgent {
            dir,
            name,
            days,
            force,
        } => {
            let written = pki::issue_agent(dir, name, *days, *force)
                .with_context(|| format!("issue a certificate for agent {name}"))?;
            for p in &written {
                println!("wrote {}", p.display());
            }
        }
        TlsCommand::Revoke {
            deny_file,
            certificates,
        } => {
            for (serial, what) in revoke(deny_file, certificates)? {
                println!(
                    "revoked {what} (serial {serial}) in {}",
                    deny_file.display()
                );
            }
        }
    }
    Ok(())
}

/// Append the serial numbers of `certificates` (files or serials) to `deny_file` unless it
/// lists them already; every argument is checked before anything is written. Returns the
/// serials added, with what named them.
fn revoke(deny_file: &Path, certificates: &[String]) -> Result<Vec<(String, String)>> {
    let mut serials = Vec::new();
    for c in certificates {
        let path = Path::new(c);
        let serial = if path.is_file() {
            let pem = std::fs::read(path).with_context(|| format!("read certificate {c}"))?;
            revoke::pem_serial(&pem).with_context(|| {
                format!("{c}: no certificate found (a PEM file with a CERTIFICATE section)")
            })?
        } else {
            revoke::normalise_serial(c).with_context(|| {
                format!("{c:?} is neither a certificate file nor a serial number (hex)")
            })?
        };
        serials.push((serial, c.clone()));
    }
    let existing = match std::fs::read_to_string(deny_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("read deny list {}", deny_file.display()));
        }
    };
    let listed: BTreeSet<String> = existing
        .lines()
        .filter_map(|l| revoke::normalise_serial(l.split('#').next().unwrap_or("")))
        .collect();
    let mut text = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        text.push('\n');
    }
    let mut added = Vec::new();
    for (serial, what) in serials {
        if listed.contains(&serial) || added.iter().any(|(s, _)| *s == serial) {
            println!("{what}: serial {serial} is already revoked");
            continue;
        }
        // What named it, as a comment on the same line.
        text.push_str(&format!("{serial}  # {}\n", what.replace('\n', " ")));
        added.push((serial, what));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(deny_file)
        .with_context(|| format!("open deny list {}", deny_file.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write deny list {}", deny_file.display()))?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn revoke_appends_serials_once_and_names_bad_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let written = pki::init(dir.path(), &[], &["a".to_string()], 1).unwrap();
        let cert = written
            .iter()
            .find(|p| p.ends_with("agent-a.pem"))
            .unwrap()
            .display()
            .to_string();
        let deny = dir.path().join("deny");
        let added = revoke(&deny, &[cert.clone(), "0A:1B".to_string()]).unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(added[1].0, "a1b");
        // Again: nothing added; the file parses as the server reads it.
        assert!(
            revoke(&deny, &[cert, "a1b".to_string()])
                .unwrap()
                .is_empty()
        );
        let list = revoke::DenyList::open(&deny).unwrap();
        assert!(list.is_revoked(&added[0].0) && list.is_revoked("a1b"));

        let e = revoke(&deny, &["not-a-serial".to_string()]).unwrap_err();
        assert!(
            format!("{e:#}").contains("neither a certificate file"),
            "{e:#}"
        );
        let key = dir.path().join("agent-a-key.pem").display().to_string();
        let e = revoke(&deny, &[key]).unwrap_err();
        assert!(format!("{e:#}").contains("no certificate found"), "{e:#}");
    }
}
