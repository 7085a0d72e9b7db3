//! `warden token`: credentials for joining a Warden cluster (join tokens) and for its REST API
//! (API tokens).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use warden_server::api_auth::{self, Role};

/// `warden token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new random join token: print it once, and append its SHA-256 hash to FILE (the
    /// server's --join-tokens file, re-read by a running server). The token itself is stored
    /// nowhere: hand it to the agent (--join-token-file or WARDEN_JOIN_TOKEN).
    Join {
        /// The server's join tokens file (created 0600 if missing).
        #[arg(long)]
        file: PathBuf,
        /// A one-time token: it binds to the first agent name that uses it; that agent may
        /// reconnect and restart with it, no other name may use it.
        #[arg(long)]
        once: bool,
    },
    /// Make a new REST API token: print it once, and append its SHA-256, role and name to
    /// FILE (the server's --api-tokens file; a running server picks the new line up within a
    /// second). Revoke a token by deleting its line. Clients send it as `Authorization:
    /// Bearer` (the CLI reads WARDEN_TOKEN).
    Api {
        /// What the token may do: `read` (every GET) or `operator` (also submit and delete
        /// jobs).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A name for the token, logged instead of the token (one word, e.g. `ci-deploy`).
        #[arg(long)]
        name: Option<String>,
        /// The server's API tokens file (created 0600 if missing).
        #[arg(long, env = "WARDEN_API_TOKENS", value_name = "FILE")]
        file: PathBuf,
    },
}

/// An API token's role on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read-only.
    Read,
    /// Job changes and reads.
    Operator,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Read => Role::Read,
            RoleArg::Operator => Role::Operator,
        }
    }
}

/// Run a `warden token` subcommand.
pub fn run(cmd: &TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Join { file, once } => {
            let token =
                warden_server::auth::add_join_token(file, *once).context("add a join token")?;
            eprintln!(
                "added the hash of a new {}join token to {}; the token (shown only now):",
                if *once { "one-time " } else { "" },
                file.display()
            );
            println!("{token}");
        }
        TokenCommand::Api { role, name, file } => {
            let role = Role::from(*role);
            let token = api_auth::append_new_token(file, role, name.as_deref())
                .with_context(|| format!("add an API token to {}", file.display()))?;
            eprintln!(
                "added the hash of a new {role} API token{} to {}; the token (shown only now):",
                name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default(),
                file.display()
            );
            println!("{token}");
        }
    }
    Ok(())
}
