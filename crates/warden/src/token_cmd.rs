//! `warden token`: credentials for joining a Warden cluster.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

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
    }
    Ok(())
}
