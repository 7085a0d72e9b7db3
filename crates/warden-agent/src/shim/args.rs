//! The shim's command line. Parsed by hand (no clap) because the shim is internal, must start
//! fast, and must pass everything after `--` to the task untouched.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use warden_core::{FencingToken, TaskId};

use crate::cgroup::TaskLimits;

/// Usage text for `warden shim`.
pub const USAGE: &str = "usage: warden shim --task <job/index> --epoch <n> --stdout <file> \
--stderr <file> [--deadline-ms <ms>] [--user <uid>:<gid>] [--cgroup <dir>]... \
[--limits mem=<bytes>,cpu=<millis>,pids=<n>] [--socket <path>] [--reattach-ms <ms>] \
-- <program> [args...]";

/// What `warden shim` runs and how. Built by the supervisor ([`ShimArgs::to_args`]) and parsed
/// back by the shim process ([`ShimArgs::from_args`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// The task this shim runs (`--task job/index`).
    pub task: TaskId,
    /// The task's fencing token (`--epoch n`).
    pub epoch: FencingToken,
    /// File the task's stdout is appended to (`--stdout`).
    pub stdout: PathBuf,
    /// File the task's stderr is appended to (`--stderr`).
    pub stderr: PathBuf,
    /// Initial deadline, measured from the shim's start (`--deadline-ms`). Present for
    /// singletons ("fenced" mode): the task is SIGKILLed unless an `extend` arrives before
    /// it. Absent for services, which only die with the agent or on `stop`.
    pub deadline: Option<Duration>,
    /// Run the task as this uid and primary gid (`--user uid:gid`), through
    /// `warden shim-exec`; the shim itself keeps its own user. Absent: the shim's user.
    pub user: Option<(u32, u32)>,
    /// The task's cgroup, one directory per hierarchy (`--cgroup`, repeated): created with
    /// `limits` before the task starts, removed after it ended (see [`crate::cgroup`]).
    /// Empty: the task runs in the shim's own cgroup, unconfined.
    pub cgroups: Vec<PathBuf>,
    /// Limits written into the task's cgroup (`--limits`).
    pub limits: TaskLimits,
    /// Unix socket the shim listens on for a new agent process to reattach (`--socket`);
    /// removed when the shim exits. Absent: no reattach, the task dies with its agent.
    pub socket: Option<PathBuf>,
    /// How long a task without a deadline (a service or daemon copy) keeps running after its
    /// agent vanished unannounced, waiting for a new agent to attach through `socket`
    /// (`--reattach-ms`). Zero (the default): it is killed at once. A fenced task (with a
    /// deadline) is always killed at once on an unannounced loss; a `detach` first makes any
    /// task wait.
    pub reattach: Duration,
    /// Program to run, a path or a name looked up in the shim's `PATH`. Never a shell line.
    pub program: String,
    /// The program's arguments, passed as they are.
    pub args: Vec<String>,
}

impl ShimArgs {
    /// Parse the arguments that follow `warden shim`.
    pub fn from_args(args: impl Iterator<Item = String>) -> Result<ShimArgs, String> {
        let mut args = args;
        let mut task = None;
        let mut epoch = None;
        let mut stdout = None;
        let mut stderr = None;
        let mut deadline = None;
        let mut user = None;
        let mut cgroups = Vec::new();
        let mut limits = None;
        let mut socket = None;
        let mut reattach = None;
        let mut command = None;
        while let Some(arg) = args.next() {
            if arg == "--" {
                command = Some(args.by_ref().collect::<Vec<_>>());
                break;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value)),
                _ => (arg.clone(), None),
            };
            let mut value = || match inline {
                Some(v) => Ok(v.to_string()),
                None => args.next().ok_or_else(|| format!("{flag} needs a value")),
            };
            match flag.as_str() {
                "--task" => {
                    let v = value()?;
                    let id = TaskId::parse(&v)
                        .ok_or_else(|| format!("--task {v:?} is not of the form job/index"))?;
                    set_once(&mut task, id, &flag)?;
                }
                "--epoch" => {
                    let v = value()?;
                    let n = v
                        .parse()
                        .map_err(|_| format!("--epoch {v:?} is not a whole number"))?;
                    set_once(&mut epoch, FencingToken(n), &flag)?;
                }
                "--stdout" => set_once(&mut stdout, PathBuf::from(value()?), &flag)?,
                "--stderr" => set_once(&mut stderr, PathBuf::from(value()?), &flag)?,
                "--deadline-ms" => {
                    let v = value()?;
                    let ms = v
                        .parse()
                        .map_err(|_| format!("--deadline-ms {v:?} is not a whole number"))?;
                    set_once(&mut deadline, Duration::from_millis(ms), &flag)?;
                }
                "--user" => {
                    let v = value()?;
                    let ids = v
                        .split_once(':')
                        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                        .ok_or_else(|| format!("--user {v:?} is not of the form uid:gid"))?;
                    set_once(&mut user, ids, &flag)?;
                }
                "--cgroup" => cgroups.push(PathBuf::from(value()?)),
                "--limits" => {
                    let v = value()?;
                    let parsed = TaskLimits::parse(&v).map_err(|e| format!("--limits: {e}"))?;
                    set_once(&mut limits, parsed, &flag)?;
                }
                "--socket" => set_once(&mut socket, PathBuf::from(value()?), &flag)?,
                "--reattach-ms" => {
                    let v = value()?;
                    let ms = v
                        .parse()
                        .map_err(|_| format!("--reattach-ms {v:?} is not a whole number"))?;
                    set_once(&mut reattach, Duration::from_millis(ms), &flag)?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let mut command = command
            .ok_or("missing `--` before the program")?
            .into_iter();
        let program = command.next().ok_or("missing program after `--`")?;
        if program.is_empty() {
            return Err("the program must not be empty".into());
        }
        if limits.is_some() && cgroups.is_empty() {
            return Err("--limits needs --cgroup: limits are enforced by the task's cgroup".into());
        }
        if reattach.is_some_and(|r| !r.is_zero()) && socket.is_none() {
            return Err("--reattach-ms needs --socket: a new agent attaches through it".into());
        }
        Ok(ShimArgs {
            task: task.ok_or("missing --task")?,
            epoch: epoch.ok_or("missing --epoch")?,
            stdout: stdout.ok_or("missing --stdout")?,
            stderr: stderr.ok_or("missing --stderr")?,
            deadline,
            user,
            cgroups,
            limits: limits.unwrap_or_default(),
            socket,
            reattach: reattach.unwrap_or_default(),
            program,
            args: command.collect(),
        })
    }

    /// The arguments that make `warden shim` run this; [`ShimArgs::from_args`] reads them
    /// back. `OsString` because log paths need not be UTF-8 on the agent's side (the shim
    /// rejects such paths when it parses them).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![
            "--task".into(),
            self.task.to_string().into(),
            "--epoch".into(),
            self.epoch.0.to_string().into(),
            "--stdout".into(),
            self.stdout.clone().into(),
            "--stderr".into(),
            self.stderr.clone().into(),
        ];
        if let Some(deadline) = self.deadline {
            out.push("--deadline-ms".into());
            out.push(deadline.as_millis().to_string().into());
        }
        if let Some((uid, gid)) = self.user {
            out.push("--user".into());
            out.push(format!("{uid}:{gid}").into());
        }
        for dir in &self.cgroups {
            out.push("--cgroup".into());
            out.push(dir.clone().into());
        }
        let limits = self.limits.to_arg();
        if !limits.is_empty() && !self.cgroups.is_empty() {
            out.push("--limits".into());
            out.push(limits.into());
        }
        if let Some(socket) = &self.socket {
            out.push("--socket".into());
            out.push(socket.clone().into());
            if !self.reattach.is_zero() {
                out.push("--reattach-ms".into());
                out.push(self.reattach.as_millis().to_string().into());
            }
        }
        out.push("--".into());
        out.push(self.program.clone().into());
        out.extend(self.args.iter().map(OsString::from));
        out
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, flag: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{flag} given twice"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::JobName;

    fn strings(args: &[&str]) -> impl Iterator<Item = String> {
        args.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn sample() -> ShimArgs {
        ShimArgs {
            task: TaskId::new(JobName::new("web"), 3),
            epoch: FencingToken(42),
            stdout: "/tmp/web.3.stdout.log".into(),
            stderr: "/tmp/web.3.stderr.log".into(),
            deadline: Some(Duration::from_millis(1500)),
            user: Some((65534, 65533)),
            cgroups: vec![
                "/sys/fs/cgroup/memory/warden-a/tasks/web.3.42".into(),
                "/sys/fs/cgroup/pids/warden-a/tasks/web.3.42".into(),
            ],
            limits: TaskLimits::from_resources(200, 64, Some(512)),
            socket: Some("/var/lib/warden-agent/shims/0123456789abcdef.sock".into()),
            reattach: Duration::from_secs(30),
            program: "sh".into(),
            // Arguments that look like the shim's own flags and a second `--` must reach the
            // task untouched.
            args: vec!["-c".into(), "echo --task -- x".into(), "--".into()],
        }
    }

    #[test]
    fn round_trips_through_argv() {
        for args in [
            sample(),
            ShimArgs {
                deadline: None,
                user: None,
                cgroups: vec![],
                limits: TaskLimits::default(),
                socket: None,
                reattach: Duration::ZERO,
                args: vec![],
                ..sample()
            },
        ] {
            let argv = args
                .to_args()
                .into_iter()
                .map(|a| a.into_string().expect("utf-8"));
            assert_eq!(ShimArgs::from_args(argv), Ok(args));
        }
    }

    #[test]
    fn accepts_flag_equals_value() {
        let parsed = ShimArgs::from_args(strings(&[
            "--task=db/0",
            "--epoch=7",
            "--stdout=o",
            "--stderr=e",
            "--",
            "true",
        ]))
        .expect("parses");
        assert_eq!(parsed.task, TaskId::new(JobName::new("db"), 0));
        assert_eq!(parsed.epoch, FencingToken(7));
        assert_eq!(parsed.deadline, None);
        assert_eq!(parsed.program, "true");
    }

    #[test]
    fn rejects_what_cannot_work() {
        let base = [
            "--task", "a/1", "--epoch", "1", "--stdout", "o", "--stderr", "e",
        ];
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (base.to_vec(), "missing `--`"),
            ([&base[..], &["--"]].concat(), "missing program"),
            ([&base[2..], &["--", "x"]].concat(), "missing --task"),
            (
                [&base[..], &["--task", "b/2", "--", "x"]].concat(),
                "given twice",
            ),
            ([&["--bogus"][..], &base, &["--", "x"]].concat(), "unknown"),
            (vec!["--task", "nojob", "--", "x"], "job/index"),
            (vec!["--epoch", "-1", "--", "x"], "whole number"),
            (vec!["--deadline-ms"], "needs a value"),
            (vec!["--user", "nobody", "--", "x"], "uid:gid"),
            (
                vec!["--limits", "mem=lots", "--", "x"],
                "not a whole number",
            ),
            (
                [&base[..], &["--limits", "mem=1", "--", "x"]].concat(),
                "needs --cgroup",
            ),
            (
                [&base[..], &["--reattach-ms", "100", "--", "x"]].concat(),
                "needs --socket",
            ),
        ];
        for (argv, want) in cases {
            let err = ShimArgs::from_args(strings(&argv)).expect_err(want);
            assert!(err.contains(want), "{argv:?}: {err}");
        }
    }
}
