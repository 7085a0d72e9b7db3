//! What the binary says about itself: its version and commit, shell completions and man
//! pages, all generated from the command-line definition so they never drift from it.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// The package version and the commit it was built from (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WARDEN_COMMIT"),
    ")"
);

/// Write `shell`'s completion script for `cmd` to `out`.
pub fn completion(
    shell: clap_complete::Shell,
    cmd: &mut clap::Command,
    out: &mut dyn Write,
) -> Result<()> {
    // Rendered into memory first: the generator panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, "warden", &mut script);
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("write the completion script")
}

/// Write a man page for `cmd` and for every subcommand below it (hidden ones and `help`
/// excepted) into `dir`; returns how many.
pub fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut cmd = cmd.clone();
    cmd.build();
    write_pages(&cmd, "warden", dir)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<usize> {
    let page = cmd.clone().name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .with_context(|| format!("render the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("write {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        n += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("warden")
            .version(VERSION)
            .subcommand(
                clap::Command::new("job")
                    .about("Jobs")
                    .subcommand(clap::Command::new("run").about("Submit a job"))
                    .subcommand(clap::Command::new("secret").hide(true)),
            )
            .subcommand(clap::Command::new("agents").about("List agents"))
    }

    #[test]
    fn the_recorded_commit_is_one_word() {
        // What build.rs found: a commit id (or "unknown"), never git's error text.
        let commit = env!("WARDEN_COMMIT");
        assert!(
            !commit.is_empty()
                && commit
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{commit:?}"
        );
    }

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let n = man_pages(&cli(), dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "warden-agents.1",
                "warden-job-run.1",
                "warden-job.1",
                "warden.1"
            ]
        );
        assert_eq!(n, 4);
        let page = std::fs::read_to_string(dir.path().join("warden-job-run.1")).unwrap();
        assert!(page.contains(".TH warden-job-run"), "{page}");
        assert!(page.contains("Submit a job"), "{page}");
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completion(shell, &mut cli(), &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("agents") && text.contains("run"),
                "{shell}: {text}"
            );
        }
    }

    #[test]
    fn the_bash_script_parses() {
        let mut out = Vec::new();
        completion(clap_complete::Shell::Bash, &mut cli(), &mut out).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("warden.bash");
        std::fs::write(&script, out).unwrap();
        let status = std::process::Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success(), "bash -n refused the completion script");
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = man_pages(&cli(), &file.join("man")).unwrap_err();
        assert!(format!("{e:#}").contains("file/man"), "{e:#}");
    }
}
