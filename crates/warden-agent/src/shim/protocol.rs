//! The shim's wire protocol, owned here so that the shim and the supervisor share one
//! definition of it.
//!
//! - **Control lines**, agent → shim, on the shim's stdin ([`Control`]): `extend <ms>`,
//!   `stop <grace_ms>`, `detach <ms>`, `signal <n>`, `ping`. End of file on stdin means the agent is gone.
//! - **Status lines**, shim → agent, on the shim's stdout ([`Status`]): `started <pid>`,
//!   `spawn-failed <reason>`, `stopping <grace_ms>`, `fenced`, `killed agent-gone`,
//!   `killed signal <n>`, `oom-killed <n>`, `exited code <n>`, `exited signal <n>`, `pong`,
//!   `detached <ms>`, `signalled <n>`, `error <message>`.
//! - **Reattach**: a shim started with `--socket` listens there; a new agent process that
//!   connects becomes its controller (the same control and status lines, over the socket).
//!   The shim's first line on a new connection is `attached <task> <epoch> <pid> <shim_pid>`
//!   (`pid` 0 when the task has already ended), followed by the terminal lines the previous
//!   agent never read (`exited …`, `fenced`, `oom-killed …`).
//! - **Exit codes** of the shim: see [`TaskExit::shim_exit_code`] and the `EXIT_*` constants.
//!
//! Every line is UTF-8 text ending in `\n`; words are separated by one space; durations are
//! whole milliseconds. Unknown control lines are answered with `error …` and otherwise
//! ignored, so an older shim keeps working with a newer agent.

use std::fmt;
use std::time::Duration;

/// The shim could not run the task at all: bad arguments, a log file that cannot be opened,
/// an agent that was already gone, a deadline already past, or an internal error. The status
/// line before it says which.
pub const EXIT_SHIM_FAILED: u8 = 125;
/// The task's program exists but could not be executed (e.g. permission denied).
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The task's program was not found.
pub const EXIT_NOT_FOUND: u8 = 127;
/// A task killed by signal `n` makes the shim exit with `128 + n`, as a shell does.
pub const EXIT_SIGNAL_BASE: u8 = 128;

/// Longest control or status line accepted, in bytes (without the newline).
pub const MAX_LINE: usize = 4096;

/// An error in a protocol line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad shim protocol line {line:?}: {reason}")]
pub struct ProtocolError {
    /// The offending line.
    pub line: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ProtocolError {
    fn new(line: &str, reason: &'static str) -> Self {
        ProtocolError {
            line: line.to_string(),
            reason,
        }
    }
}

/// A control line, written by the agent to a shim's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `extend <ms>`: the task may run until `now + ms` on the shim's monotonic clock. Sets
    /// the deadline (it may also move it earlier; `extend 0` fences at once). A shim started
    /// without a deadline gets one from its first `extend`.
    Extend(Duration),
    /// `stop <grace_ms>`: SIGTERM the task's process group now, SIGKILL it when the grace
    /// runs out. A second `stop` can only shorten the grace.
    Stop(Duration),
    /// `ping`: the shim answers `pong`.
    Ping,
    /// `detach <ms>`: the agent is about to restart on purpose (a planned restart or an
    /// upgrade). When its control channel closes, the shim keeps the task running — a
    /// fenced task still only until its deadline — and waits up to `ms` for a new agent to
    /// attach through the socket; then it kills the task. Answered with `detached <ms>`.
    Detach(Duration),
    /// `signal <n>`: send signal `n` to the task's main process (not its group): a reload
    /// after its configuration files changed. Answered with `signalled <n>`.
    Signal(i32),
}

impl Control {
    /// Parse one control line (without its newline).
    pub fn parse(line: &str) -> Result<Control, ProtocolError> {
        let mut words = line.split_ascii_whitespace();
        let control = match words.next() {
            Some("extend") => Control::Extend(parse_millis(line, words.next())?),
            Some("stop") => Control::Stop(parse_millis(line, words.next())?),
            Some("ping") => Control::Ping,
            Some("detach") => Control::Detach(parse_millis(line, words.next())?),
            Some("signal") => match words.next() {
                Some(n) => match parse_int(line, n)? {
                    n @ 1..=64 => Control::Signal(n),
                    _ => return Err(ProtocolError::new(line, "no such signal")),
                },
                None => return Err(ProtocolError::new(line, "missing signal number")),
            },
            Some(_) => return Err(ProtocolError::new(line, "unknown command")),
            None => return Err(ProtocolError::new(line, "empty line")),
        };
        if words.next().is_some() {
            return Err(ProtocolError::new(line, "trailing words"));
        }
        Ok(control)
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Extend(d) => write!(f, "extend {}", d.as_millis()),
            Control::Stop(d) => write!(f, "stop {}", d.as_millis()),
            Control::Ping => f.write_str("ping"),
            Control::Detach(d) => write!(f, "detach {}", d.as_millis()),
            Control::Signal(n) => write!(f, "signal {n}"),
        }
    }
}

/// How a task's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskExit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl TaskExit {
    /// Whether the task exited with code 0.
    pub fn success(self) -> bool {
        self == TaskExit::Code(0)
    }

    /// The shim's own exit code for this outcome, as a shell reports it: the task's code
    /// (0–255), or `128 + signal` when a signal killed it — whoever sent the signal. A task
    /// that the shim fenced or killed because the agent was gone therefore shows 137
    /// (SIGKILL); the status lines say why.
    pub fn shim_exit_code(self) -> u8 {
        match self {
            TaskExit::Code(code) => (code & 0xff) as u8,
            TaskExit::Signal(sig) => EXIT_SIGNAL_BASE.saturating_add((sig & 0x7f) as u8),
        }
    }
}

impl fmt::Display for TaskExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskExit::Code(code) => write!(f, "code {code}"),
            TaskExit::Signal(sig) => write!(f, "signal {sig}"),
        }
    }
}

/// Why the shim killed its task without being asked to by a `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The agent is gone: the control pipe reached end of file, or the parent-death signal
    /// arrived (the shim's parent changed).
    AgentGone,
    /// The shim itself received this terminating signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT)
    /// while its parent was still there.
    Signal(i32),
}

/// A status line, written by the shim to its stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// `started <pid>`: the task runs as `pid`, which is also its process group id.
    Started {
        /// Process id (and process group id) of the task.
        pid: u32,
    },
    /// `spawn-failed <reason>`: the task's program could not be started; the shim exits 126,
    /// 127 or 125.
    SpawnFailed {
        /// Human-readable cause.
        reason: String,
    },
    /// `stopping <grace_ms>`: SIGTERM sent to the group after a `stop`; SIGKILL follows
    /// after the grace.
    Stopping {
        /// Grace before SIGKILL.
        grace: Duration,
    },
    /// `fenced`: the deadline passed without an extension; the group was SIGKILLed.
    Fenced,
    /// `killed agent-gone` or `killed signal <n>`: the group was SIGKILLed for this reason.
    Killed(KillReason),
    /// `exited code <n>` or `exited signal <n>`: the task's main process was reaped, after
    /// whatever was left of its group was SIGKILLed. Always the last line when a task ran.
    Exited(TaskExit),
    /// `oom-killed <n>`: the kernel's OOM killer killed `n` processes of the task's cgroup
    /// (it went past its memory limit). Sent just before `exited`.
    OomKilled {
        /// How many processes were OOM-killed.
        count: u64,
    },
    /// `pong`: answer to `ping`.
    Pong,
    /// `detached <ms>`: answer to `detach <ms>`.
    Detached {
        /// How long the shim waits for a new agent once its control channel closes.
        window: Duration,
    },
    /// `attached <task> <epoch> <pid> <shim_pid>`: first line on a reattach connection.
    Attached {
        /// The task the shim runs (`job/index`).
        task: String,
        /// Its epoch.
        epoch: u64,
        /// The task's pid (and process group id); 0 when it has already ended (its `exited`
        /// line follows).
        pid: u32,
        /// The shim's own pid.
        shim_pid: u32,
    },
    /// `signalled <n>`: answer to `signal <n>`, the signal was sent.
    Signalled(i32),
    /// `error <message>`: a control line was rejected, or the shim hit an internal error.
    Error(String),
}

impl Status {
    /// Parse one status line (without its newline).
    pub fn parse(line: &str) -> Result<Status, ProtocolError> {
        let (head, rest) = match line.split_once(' ') {
            Some((h, r)) => (h, Some(r)),
            None => (line, None),
        };
        let status = match (head, rest) {
            ("started", Some(pid)) => Status::Started {
                pid: pid
                    .parse()
                    .map_err(|_| ProtocolError::new(line, "bad pid"))?,
            },
            ("spawn-failed", reason) => Status::SpawnFailed {
                reason: reason.unwrap_or_default().to_string(),
            },
            ("stopping", Some(ms)) => Status::Stopping {
                grace: parse_millis(line, Some(ms))?,
            },
            ("fenced", None) => Status::Fenced,
            ("killed", Some("agent-gone")) => Status::Killed(KillReason::AgentGone),
            ("killed", Some(rest)) => match rest.split_once(' ') {
                Some(("signal", n)) => Status::Killed(KillReason::Signal(parse_int(line, n)?)),
                _ => return Err(ProtocolError::new(line, "bad kill reason")),
            },
            ("exited", Some(rest)) => match rest.split_once(' ') {
                Some(("code", n)) => Status::Exited(TaskExit::Code(parse_int(line, n)?)),
                Some(("signal", n)) => Status::Exited(TaskExit::Signal(parse_int(line, n)?)),
                _ => return Err(ProtocolError::new(line, "bad exit status")),
            },
            ("oom-killed", Some(n)) => Status::OomKilled {
                count: n
                    .parse()
                    .map_err(|_| ProtocolError::new(line, "bad count"))?,
            },
            ("pong", None) => Status::Pong,
            ("detached", Some(ms)) => Status::Detached {
                window: parse_millis(line, Some(ms))?,
            },
            ("attached", Some(rest)) => {
                let words: Vec<&str> = rest.split(' ').collect();
                let [task, epoch, pid, shim_pid] = words[..] else {
                    return Err(ProtocolError::new(
                        line,
                        "expected task, epoch, pid, shim pid",
                    ));
                };
                let number = |w: &str| {
                    w.parse::<u64>()
                        .map_err(|_| ProtocolError::new(line, "expected a whole number"))
                };
                let pid32 = |w: &str| {
                    w.parse::<u32>()
                        .map_err(|_| ProtocolError::new(line, "bad pid"))
                };
                Status::Attached {
                    task: task.to_string(),
                    epoch: number(epoch)?,
                    pid: pid32(pid)?,
                    shim_pid: pid32(shim_pid)?,
                }
            }
            ("signalled", Some(n)) => Status::Signalled(parse_int(line, n)?),
            ("error", message) => Status::Error(message.unwrap_or_default().to_string()),
            _ => return Err(ProtocolError::new(line, "unknown status")),
        };
        Ok(status)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Started { pid } => write!(f, "started {pid}"),
            Status::SpawnFailed { reason } => write!(f, "spawn-failed {}", one_line(reason)),
            Status::Stopping { grace } => write!(f, "stopping {}", grace.as_millis()),
            Status::Fenced => f.write_str("fenced"),
            Status::Killed(KillReason::AgentGone) => f.write_str("killed agent-gone"),
            Status::Killed(KillReason::Signal(sig)) => write!(f, "killed signal {sig}"),
            Status::Exited(exit) => write!(f, "exited {exit}"),
            Status::OomKilled { count } => write!(f, "oom-killed {count}"),
            Status::Pong => f.write_str("pong"),
            Status::Detached { window } => write!(f, "detached {}", window.as_millis()),
            Status::Attached {
                task,
                epoch,
                pid,
                shim_pid,
            } => write!(
                f,
                "attached {} {epoch} {pid} {shim_pid}",
                one_line(task).replace(' ', "_")
            ),
            Status::Signalled(n) => write!(f, "signalled {n}"),
            Status::Error(message) => write!(f, "error {}", one_line(message)),
        }
    }
}

/// Free text on one line: newlines would split a status line in two.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn parse_millis(line: &str, word: Option<&str>) -> Result<Duration, ProtocolError> {
    let word = word.ok_or_else(|| ProtocolError::new(line, "missing milliseconds"))?;
    let ms: u64 = word
        .parse()
        .map_err(|_| ProtocolError::new(line, "milliseconds must be a whole number"))?;
    Ok(Duration::from_millis(ms))
}

fn parse_int(line: &str, word: &str) -> Result<i32, ProtocolError> {
    word.parse()
        .map_err(|_| ProtocolError::new(line, "expected an integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_round_trip() {
        for control in [
            Control::Extend(Duration::from_millis(1500)),
            Control::Extend(Duration::ZERO),
            Control::Stop(Duration::from_secs(10)),
            Control::Ping,
            Control::Detach(Duration::from_secs(30)),
            Control::Signal(1),
        ] {
            assert_eq!(Control::parse(&control.to_string()), Ok(control));
        }
        assert_eq!(
            Control::parse("  extend   20 "),
            Ok(Control::Extend(Duration::from_millis(20)))
        );
    }

    #[test]
    fn bad_control_lines_are_rejected() {
        for (line, reason) in [
            ("", "empty line"),
            ("launch", "unknown command"),
            ("extend", "missing milliseconds"),
            ("extend -5", "milliseconds must be a whole number"),
            ("stop 1.5", "milliseconds must be a whole number"),
            ("ping pong", "trailing words"),
            ("signal", "missing signal number"),
            ("signal 0", "no such signal"),
            ("signal 99", "no such signal"),
            ("signal HUP", "expected an integer"),
        ] {
            assert_eq!(Control::parse(line).map_err(|e| e.reason), Err(reason));
        }
    }

    #[test]
    fn status_lines_round_trip() {
        for status in [
            Status::Started { pid: 4242 },
            Status::SpawnFailed {
                reason: "not-found: No such file or directory (os error 2)".into(),
            },
            Status::Stopping {
                grace: Duration::from_millis(500),
            },
            Status::Fenced,
            Status::Killed(KillReason::AgentGone),
            Status::Killed(KillReason::Signal(15)),
            Status::Exited(TaskExit::Code(3)),
            Status::Exited(TaskExit::Signal(9)),
            Status::OomKilled { count: 2 },
            Status::Pong,
            Status::Detached {
                window: Duration::from_secs(30),
            },
            Status::Attached {
                task: "web/3".into(),
                epoch: 42,
                pid: 4242,
                shim_pid: 4241,
            },
            Status::Signalled(10),
            Status::Error("bad shim protocol line".into()),
        ] {
            assert_eq!(Status::parse(&status.to_string()), Ok(status));
        }
        assert_eq!(
            Status::Error("two\nlines".into()).to_string(),
            "error two lines"
        );
        assert!(Status::parse("exited maybe").is_err());
        assert!(Status::parse("started x").is_err());
        assert!(Status::parse("attached web/3 42 4242").is_err());
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(TaskExit::Code(0).shim_exit_code(), 0);
        assert_eq!(TaskExit::Code(7).shim_exit_code(), 7);
        assert_eq!(TaskExit::Code(256 + 3).shim_exit_code(), 3);
        assert_eq!(TaskExit::Signal(9).shim_exit_code(), 137);
        assert_eq!(TaskExit::Signal(15).shim_exit_code(), 143);
        assert!(TaskExit::Code(0).success());
        assert!(!TaskExit::Signal(0).success());
    }
}
