//! `warden tls`: a CA and certificates for mutual TLS between agents and servers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use warden_server::pki;

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
    }
    Ok(())
}
