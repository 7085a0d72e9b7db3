//! `warden token …`: credentials for the REST API.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use warden_server::auth::{self, Role};

/// `warden token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a REST API token: print it (the only time it is shown) and append its SHA-256,
    /// role and name to the server's token file (`warden server --api-tokens FILE`). A running
    /// server picks the new line up within a second. Revoke a token by deleting its line.
    Api {
        /// What the token may do: `read` (every GET) or `operator` (also submit and delete
        /// jobs).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A name for the token, logged instead of the token (one word, e.g. `ci-deploy`).
        #[arg(long)]
        name: Option<String>,
        /// The token file (created with mode 0600 if missing).
        #[arg(long, env = "WARDEN_API_TOKENS", value_name = "FILE")]
        file: PathBuf,
    },
}

/// A token's role on the command line.
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

/// Run a `warden token` command.
pub fn run(cmd: &TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Api { role, name, file } => {
            let role = Role::from(*role);
            let token = auth::append_new_token(file, role, name.as_deref())
                .with_context(|| format!("add a token to {}", file.display()))?;
            eprintln!(
                "new {role} token{} appended to {} (only its SHA-256 is stored; this is the \
                 only time it is shown):",
                name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default(),
                file.display()
            );
            println!("{token}");
            Ok(())
        }
    }
}
