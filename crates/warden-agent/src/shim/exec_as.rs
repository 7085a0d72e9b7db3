//! `warden shim-exec`: the last step before a task that runs confined or as another user.
//!
//! The shim starts this (its own executable, in the task's place: same process, same group,
//! same file descriptors) when the task must run in a cgroup of its own, or as another user,
//! or both. It first joins the task's cgroup (writing its own pid to each `cgroup.procs` it is
//! given, so everything the task forks is born inside), then drops to the user —
//! supplementary groups cleared, then the primary group, then the uid — and executes the
//! task's program from its argument vector. The shim itself never joins the task's cgroup nor
//! changes user, so the task can neither signal, stop or trace the watchdog that fences it,
//! nor starve it of CPU or memory.
//!
//! Its standard input on arrival is the write end of a close-on-exec pipe from the shim (the
//! "exec status" pipe). It keeps a close-on-exec copy of it, puts `/dev/null` on standard
//! input for the task, and executes. A successful exec closes the copy, and the shim reads end
//! of file; a failed step writes the `errno` (4 bytes, little-endian) and the step (1 byte:
//! [`STEP_EXEC`] or [`STEP_JOIN_CGROUP`]) there first, so the shim reports exactly why the
//! program could not run, as it does for a task it starts itself.
//!
//! `posix_spawn` can neither change user nor cgroup, and `std::process::Command` would pass
//! the shim's blocked signals on to the task: doing both here, in a fresh process started with
//! a clean signal mask, avoids that without `unsafe`. `Command::exec` resets `SIGPIPE` (which
//! the Rust runtime ignores) to its default before the program runs.

use std::io::{self, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use super::protocol::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SHIM_FAILED};

/// The subcommand (`warden shim-exec`), dispatched before the CLI parser like `warden shim`.
pub const SUBCOMMAND: &str = "shim-exec";

/// Usage text.
pub const USAGE: &str = "usage: warden shim-exec [--uid <uid> --gid <gid>] [--join <cgroup.procs>]... \
-- <program> [args...] (internal: started by `warden shim` with the exec status pipe on standard \
input)";

/// The step that failed, as reported on the status pipe: executing the program.
pub const STEP_EXEC: u8 = 0;
/// The step that failed, as reported on the status pipe: joining the task's cgroup.
pub const STEP_JOIN_CGROUP: u8 = 1;

/// What to run, where and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecAs {
    /// User and primary group to switch to; `None`: stay the shim's user.
    pub user: Option<(u32, u32)>,
    /// `cgroup.procs` files to join before anything else (one per cgroup hierarchy).
    pub join: Vec<std::path::PathBuf>,
    /// Program (a path or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl ExecAs {
    /// Parse the arguments after `warden shim-exec`.
    pub fn from_args(args: impl Iterator<Item = String>) -> Result<ExecAs, String> {
        let mut args = args;
        let (mut uid, mut gid) = (None, None);
        let mut join = Vec::new();
        let mut command = None;
        while let Some(arg) = args.next() {
            if arg == "--" {
                command = Some(args.by_ref().collect::<Vec<_>>());
                break;
            }
            if arg == "--join" {
                let value = args.next().ok_or("--join needs a value")?;
                join.push(std::path::PathBuf::from(value));
                continue;
            }
            let slot = match arg.as_str() {
                "--uid" => &mut uid,
                "--gid" => &mut gid,
                other => return Err(format!("unknown argument {other:?}")),
            };
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            let n: u32 = value
                .parse()
                .map_err(|_| format!("{arg} {value:?} is not a whole number"))?;
            if slot.replace(n).is_some() {
                return Err(format!("{arg} given twice"));
            }
        }
        let mut command = command
            .ok_or("missing `--` before the program")?
            .into_iter();
        let program = command
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("missing program")?;
        let user = match (uid, gid) {
            (Some(u), Some(g)) => Some((u, g)),
            (None, None) => None,
            (None, Some(_)) => return Err("missing --uid".into()),
            (Some(_), None) => return Err("missing --gid".into()),
        };
        Ok(ExecAs {
            user,
            join,
            program,
            args: command.collect(),
        })
    }

    /// The arguments that make `warden shim-exec` run this (after the subcommand).
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((uid, gid)) = self.user {
            out.extend(["--uid".to_string(), uid.to_string()]);
            out.extend(["--gid".to_string(), gid.to_string()]);
        }
        for procs in &self.join {
            out.extend(["--join".to_string(), procs.display().to_string()]);
        }
        out.push("--".to_string());
        out.push(self.program.clone());
        out.extend(self.args.iter().cloned());
        out
    }
}

/// Join the cgroup, switch user and execute; returns only when that failed, with 127 (not found), 126 (cannot
/// execute) or 125 (anything else), after telling the shim why on the status pipe.
pub fn main(exec: &ExecAs) -> ExitCode {
    // The status pipe arrives as standard input; keep a close-on-exec copy of it.
    let status = match nix::unistd::dup(io::stdin()) {
        Ok(fd) => fd,
        Err(e) => return fail(None, e as i32, &format!("take the status pipe: {e}")),
    };
    if let Err(e) = fcntl(&status, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        return fail(
            Some(&status),
            e as i32,
            &format!("mark the status pipe: {e}"),
        );
    }
    let devnull = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            return fail(
                Some(&status),
                e.raw_os_error().unwrap_or(0),
                &format!("open /dev/null: {e}"),
            );
        }
    };
    let pid = std::process::id().to_string();
    for procs in &exec.join {
        if let Err(e) = std::fs::write(procs, &pid) {
            return fail_at(
                Some(&status),
                STEP_JOIN_CGROUP,
                e.raw_os_error().unwrap_or(0),
                &format!("cannot join the task's cgroup ({}): {e}", procs.display()),
            );
        }
    }
    let mut command = Command::new(&exec.program);
    command.args(&exec.args).stdin(Stdio::from(devnull));
    // With a uid set, std clears the supplementary groups, sets the group, then the user,
    // and fails the exec if any of those fails.
    if let Some((uid, gid)) = exec.user {
        command.uid(uid).gid(gid);
    }
    let err = command.exec();
    let errno = err.raw_os_error().unwrap_or(0);
    let who = exec
        .user
        .map(|(u, g)| format!(" as uid {u} gid {g}"))
        .unwrap_or_default();
    fail(
        Some(&status),
        errno,
        &format!("cannot run {:?}{who}: {err}", exec.program),
    )
}

fn fail(status: Option<&std::os::fd::OwnedFd>, errno: i32, message: &str) -> ExitCode {
    fail_at(status, STEP_EXEC, errno, message)
}

fn fail_at(status: Option<&std::os::fd::OwnedFd>, step: u8, errno: i32, message: &str) -> ExitCode {
    let _ = writeln!(io::stderr(), "warden shim-exec: {message}");
    if let Some(fd) = status {
        let mut report = errno.to_le_bytes().to_vec();
        report.push(step);
        let _ = nix::unistd::write(fd, &report);
    }
    if step == STEP_JOIN_CGROUP {
        return ExitCode::from(EXIT_SHIM_FAILED);
    }
    ExitCode::from(match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => EXIT_NOT_FOUND,
        nix::errno::Errno::EACCES
        | nix::errno::Errno::EPERM
        | nix::errno::Errno::ENOEXEC
        | nix::errno::Errno::EISDIR => EXIT_CANNOT_EXECUTE,
        _ => EXIT_SHIM_FAILED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> impl Iterator<Item = String> {
        a.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn round_trips_and_passes_arguments_untouched() {
        let exec = ExecAs {
            user: Some((65534, 65534)),
            join: vec!["/sys/fs/cgroup/memory/w/tasks/a.0.1/cgroup.procs".into()],
            program: "sh".into(),
            args: vec!["-c".into(), "echo $(id) ; --uid".into(), "--".into()],
        };
        assert_eq!(
            ExecAs::from_args(exec.to_args().into_iter()),
            Ok(exec.clone())
        );
        let plain = ExecAs {
            user: None,
            join: Vec::new(),
            ..exec
        };
        assert_eq!(plain.to_args()[0], "--");
        assert_eq!(ExecAs::from_args(plain.to_args().into_iter()), Ok(plain));
    }

    #[test]
    fn rejects_what_cannot_work() {
        let cases: [(&[&str], &str); 7] = [
            (&["--join"], "--join needs a value"),
            (&["--uid", "1", "--gid", "1"], "missing `--`"),
            (&["--uid", "1", "--gid", "1", "--"], "missing program"),
            (&["--gid", "1", "--", "x"], "missing --uid"),
            (&["--uid", "-1", "--gid", "1", "--", "x"], "whole number"),
            (&["--uid", "1", "--uid", "2", "--", "x"], "given twice"),
            (&["--user", "1", "--", "x"], "unknown argument"),
        ];
        for (argv, want) in cases {
            let err = ExecAs::from_args(strings(argv)).expect_err(want);
            assert!(err.contains(want), "{argv:?}: {err}");
        }
    }
}
