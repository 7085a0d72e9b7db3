//! `warden shim`: the per-task watchdog process.
//!
//! The agent never runs a task directly. It starts `warden shim … -- program args` (the same
//! binary), and the shim runs the task as its only child, in a process group of its own, with
//! stdout and stderr appended to log files. The shim then watches three things and kills the
//! task's *whole group* (so `sh -c` grandchildren die too) when any of them says so:
//!
//! 1. **The control pipe** (its stdin, written by the agent). End of file means the agent
//!    process is gone — crashed, killed, or dropped its [`Supervisor`](crate::Supervisor):
//!    SIGKILL at once.
//! 2. **The deadline** (fenced mode, for singletons). The agent extends it with `extend <ms>`
//!    on each lease renewal; when the monotonic clock passes it, the agent is paused, hung or
//!    cut off and its lease has run out: SIGKILL at once and report `fenced`.
//! 3. **Signals to the shim itself.** `PR_SET_PDEATHSIG` turns the death of the parent into a
//!    SIGUSR1, taken like the end of the pipe (a second, independent path); SIGTERM, SIGINT,
//!    SIGHUP and SIGQUIT all kill the group and end the shim.
//!
//! **Outliving the agent.** A shim given `--socket` listens on that Unix socket, and a new
//! agent process that connects there becomes its controller (the agent restarted: an upgrade,
//! a crash of the agent alone). What happens when the agent goes away depends on the task:
//! a *fenced* task (a singleton) is killed at once, as above — the server's fast "process
//! gone" path relies on it — unless the agent announced its restart with `detach <ms>`; a
//! task without a deadline (a service or daemon copy) keeps running for `--reattach-ms` and
//! is killed only if no agent attached by then. While it waits, a fenced task still dies at
//! its deadline, so a singleton survives a planned restart only if the new agent extends its
//! lease in time. A task that ends while nobody listens has its last status lines kept for
//! the next agent.
//!
//! It is deliberately small, synchronous and single-threaded: one `poll(2)` over the control
//! pipe and a signalfd, with the next timer as timeout. Signals are blocked and read from the
//! signalfd (no handlers, no `unsafe`). The task is started with `posix_spawnp` rather than
//! `std::process::Command`, because std lets a child inherit the signal mask and only
//! `posix_spawn` attributes can give the task an empty mask and default dispositions without
//! `pre_exec`. Without `pre_exec` the task cannot get a parent-death signal of its own either,
//! which is exactly why the shim does the group kill itself.
//!
//! The group is only ever signalled while its leader is alive or an unreaped zombie, so its
//! process-group id cannot have been reused: when the leader exits, the shim SIGKILLs what is
//! left of the group *before* reaping the leader. The shim also makes itself a child
//! subreaper, so orphaned grandchildren are reparented to it and reaped rather than left as
//! zombies. A process that leaves the group on purpose (`setsid`) escapes the group kill,
//! but not the task's cgroup when the agent gives it one (`--cgroup`, see [`crate::cgroup`]):
//! the shim creates the cgroup with the task's limits before the task starts, kills whatever
//! is still in it when the task ends or is killed, reports an OOM kill (`oom-killed`), and
//! removes it.
//!
//! The protocol (argv, stdin lines, stdout lines, exit codes) is in [`protocol`] and
//! [`ShimArgs`].

mod args;
pub mod exec_as;
pub mod protocol;

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{SFlag, fstat};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getppid};
use tracing::{debug, error, info, warn};

pub use args::{ShimArgs, USAGE};
use protocol::{
    Control, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SHIM_FAILED, KillReason, MAX_LINE, Status,
    TaskExit,
};

/// How long the shim keeps reaping adopted orphans after its task's leader exited (they were
/// SIGKILLed with the group and die within milliseconds; the bound only matters for a process
/// that escaped the group).
const ORPHAN_REAP_BOUND: Duration = Duration::from_millis(500);

/// Run one task under watch, and return the shim's exit code: the task's own exit code, or
/// `128 + signal` when a signal killed it, or 125/126/127 when the task could not be run (see
/// [`protocol`]). Never panics on I/O errors: whatever goes wrong, the task's group is killed
/// before the shim returns.
pub fn main(args: ShimArgs) -> ExitCode {
    let out = StatusWriter::stdout();
    ExitCode::from(run(&args, &out))
}

fn run(args: &ShimArgs, out: &StatusWriter) -> u8 {
    // Read the parent first: a change later means the agent died (we were reparented).
    let parent = getppid();
    let signals = match TermSignals::block() {
        Ok(s) => s,
        Err(e) => return fail(out, format!("block signals: {e}")),
    };
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGUSR1) {
        return fail(out, format!("set parent-death signal: {e}"));
    }
    // The agent may have died before the parent-death signal was armed: that race is closed
    // by checking the parent again now that it is.
    if getppid() != parent {
        warn!("agent gone before the task started");
        out.send(&Status::Killed(KillReason::AgentGone));
        return EXIT_SHIM_FAILED;
    }
    if let Err(e) = prctl::set_child_subreaper(true) {
        // Not fatal: orphans are then reaped by init instead.
        warn!(error = %e, "cannot become a child subreaper");
    }

    let started_at = Instant::now();
    let deadline = args.deadline.map(|d| started_at + d);
    if args.deadline == Some(Duration::ZERO) {
        warn!("deadline already passed: not starting the task");
        out.send(&Status::Fenced);
        return EXIT_SHIM_FAILED;
    }

    // The reattach socket, before the task starts: a shim that could not be found again
    // must not run a task that is meant to outlive its agent.
    let listener = match &args.socket {
        None => None,
        Some(path) => match SocketFile::bind(path) {
            Ok(l) => Some(l),
            Err(e) => return fail(out, format!("listen on {}: {e}", path.display())),
        },
    };
    let (stdout, stderr) = match (open_log(&args.stdout), open_log(&args.stderr)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) => return fail(out, format!("open {}: {e}", args.stdout.display())),
        (_, Err(e)) => return fail(out, format!("open {}: {e}", args.stderr.display())),
    };
    let cgroup = if args.cgroups.is_empty() {
        None
    } else {
        match crate::cgroup::TaskCgroup::create(&args.cgroups, &args.limits) {
            Ok(c) => Some(c),
            // Never start a task unconfined that was meant to be limited.
            Err(e) => return fail(out, format!("cannot confine the task: {e}")),
        }
    };
    let leader = match spawn_task(args, cgroup.as_ref(), &stdout, &stderr) {
        Ok(pid) => pid,
        Err(SpawnError::Setup(message)) => {
            if let Some(c) = &cgroup {
                c.remove();
            }
            return fail(out, message);
        }
        Err(SpawnError::Exec(errno)) => {
            let (code, kind) = match errno {
                Errno::ENOENT | Errno::ENOTDIR => (EXIT_NOT_FOUND, "not-found"),
                Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR => {
                    (EXIT_CANNOT_EXECUTE, "cannot-execute")
                }
                _ => (EXIT_SHIM_FAILED, "error"),
            };
            if let Some(c) = &cgroup {
                c.remove();
            }
            error!(program = %args.program, error = %errno, "cannot start the task");
            out.send(&Status::SpawnFailed {
                reason: format!("{kind}: {}", errno.desc()),
            });
            return code;
        }
    };
    drop((stdout, stderr));
    let raw_pid = leader.as_raw();
    let group = Group {
        pgid: leader,
        live: true,
    };
    info!(task = %args.task, epoch = %args.epoch, pid = raw_pid, fenced = deadline.is_some(), "task started");
    out.send(&Status::Started {
        pid: child_pid(raw_pid),
    });

    let mut watch = Watch {
        out,
        signals,
        parent,
        leader,
        group,
        cgroup: cgroup.as_ref(),
        deadline,
        kill_at: None,
        killed: false,
        control_open: true,
        line: Vec::new(),
        discarding: false,
        listener: listener.as_ref(),
        identity: (args.task.to_string(), args.epoch.0),
        reattach: args.reattach,
        detach: None,
        orphan_until: None,
        ended: false,
    };
    let exit = watch.run();
    watch.ended = true;
    if let Some(c) = &cgroup {
        // Whatever escaped the process group (setsid) dies with the task.
        c.kill_all(Duration::from_secs(1));
    }
    watch.reap_orphans();
    if let Some(c) = &cgroup {
        let count = c.oom_kills();
        if count > 0 {
            warn!(task = %args.task, count, "the task went past its memory limit and was OOM-killed");
            out.send(&Status::OomKilled { count });
        }
        let left = c.remove();
        if !left.is_empty() {
            warn!(?left, "cannot remove the task's cgroup");
        }
    }
    info!(task = %args.task, exit = %exit, "task exited");
    out.send(&Status::Exited(exit));
    // Nobody heard it: keep the news for an agent that attaches within the window.
    watch.linger();
    exit.shim_exit_code()
}

/// The shim's listening socket; the file is removed when the shim exits.
struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
}

impl SocketFile {
    fn bind(path: &Path) -> io::Result<SocketFile> {
        // A file left by a dead shim of this name: nobody listens on it any more.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(SocketFile {
            listener,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum SpawnError {
    /// Preparing the spawn failed (attributes, a NUL byte in an argument…).
    Setup(String),
    /// The program could not be executed.
    Exec(Errno),
}

/// Start the task with `posix_spawnp`: in its own process group, with an empty signal mask
/// and default dispositions for the signals the shim blocks or std ignores, stdin on
/// `/dev/null`, stdout and stderr on the log files, and exactly the shim's environment. With
/// `--user`, the shim's own executable is started in the task's place as `warden shim-exec`,
/// which switches user and executes the task (see [`exec_as`]).
///
/// Not `std::process::Command`: it lets the child inherit the caller's signal mask, and the
/// shim blocks SIGTERM (to read it from a signalfd), so the task would never see a stop's
/// SIGTERM. Changing the mask in the child would need `pre_exec`, i.e. `unsafe`.
fn spawn_task(
    args: &ShimArgs,
    cgroup: Option<&crate::cgroup::TaskCgroup>,
    stdout: &File,
    stderr: &File,
) -> Result<Pid, SpawnError> {
    if args.user.is_none() && cgroup.is_none() {
        let program = cstring(args.program.clone().into_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in &args.args {
            argv.push(cstring(arg.clone().into_bytes())?);
        }
        let devnull = File::open("/dev/null")
            .map_err(|e| SpawnError::Setup(format!("open /dev/null: {e}")))?;
        return spawn_with(&program, &argv, devnull.as_raw_fd(), stdout, stderr);
    }
    let helper = exec_as::ExecAs {
        user: args.user,
        join: cgroup.map(|c| c.procs_files()).unwrap_or_default(),
        program: args.program.clone(),
        args: args.args.clone(),
    };
    let exe = cstring(b"/proc/self/exe".to_vec())?;
    let mut argv = vec![
        cstring(b"warden".to_vec())?,
        cstring(exec_as::SUBCOMMAND.as_bytes().to_vec())?,
    ];
    for arg in helper.to_args() {
        argv.push(cstring(arg.into_bytes())?);
    }
    // The exec status pipe: the helper gets the write end as its stdin and keeps a
    // close-on-exec copy; end of file means the task's program is running.
    let (status_rd, status_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::Setup(format!("create the exec status pipe: {e}")))?;
    let pid = spawn_with(&exe, &argv, status_wr.as_raw_fd(), stdout, stderr)?;
    drop(status_wr);
    // errno (4 bytes) and the step that failed (1 byte).
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&status_rd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the exec status pipe; assuming the task started");
                break;
            }
        }
    }
    if got < 4 {
        return Ok(pid);
    }
    // The helper could not execute the program and is exiting: reap it, report why.
    let _ = waitpid(pid, None);
    let errno = Errno::from_raw(i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
    if got == 5 && buf[4] == exec_as::STEP_JOIN_CGROUP {
        return Err(SpawnError::Setup(format!(
            "cannot confine the task: join its cgroup: {}",
            errno.desc()
        )));
    }
    Err(SpawnError::Exec(errno))
}

fn cstring(bytes: Vec<u8>) -> Result<CString, SpawnError> {
    CString::new(bytes)
        .map_err(|_| SpawnError::Setup("NUL byte in the command line or environment".into()))
}

/// `posix_spawnp(program, argv)` with the shim's environment, in a new process group with a
/// clean signal mask, `stdin` on fd 0 and the logs on 1 and 2.
fn spawn_with(
    program: &CString,
    argv: &[CString],
    stdin: std::os::fd::RawFd,
    stdout: &File,
    stderr: &File,
) -> Result<Pid, SpawnError> {
    let setup = |what: &str, e: Errno| SpawnError::Setup(format!("{what}: {e}"));
    let mut envp = Vec::new();
    for (key, value) in std::env::vars_os() {
        let mut pair = key.into_vec();
        pair.push(b'=');
        pair.extend(value.into_vec());
        envp.push(cstring(pair)?);
    }

    let mut attr = PosixSpawnAttr::init().map_err(|e| setup("posix_spawnattr_init", e))?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(|e| setup("set spawn flags", e))?;
    attr.set_pgroup(Pid::from_raw(0))
        .map_err(|e| setup("set process group", e))?;
    attr.set_sigmask(&SigSet::empty())
        .map_err(|e| setup("set signal mask", e))?;
    let mut defaults = TermSignals::mask();
    defaults.add(Signal::SIGPIPE);
    attr.set_sigdefault(&defaults)
        .map_err(|e| setup("set signal defaults", e))?;

    let mut actions =
        PosixSpawnFileActions::init().map_err(|e| setup("posix_spawn_file_actions_init", e))?;
    for (fd, target) in [(stdin, 0), (stdout.as_raw_fd(), 1), (stderr.as_raw_fd(), 2)] {
        actions
            .add_dup2(fd, target)
            .map_err(|e| setup("add dup2", e))?;
    }
    posix_spawnp(program, &actions, &attr, argv, &envp).map_err(SpawnError::Exec)
}

fn child_pid(raw: i32) -> u32 {
    u32::try_from(raw).unwrap_or_default()
}

fn fail(out: &StatusWriter, message: String) -> u8 {
    error!("{message}");
    out.send(&Status::Error(message));
    EXIT_SHIM_FAILED
}

fn open_log(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The task's process group. Signals go to it only while `live`: while its leader is alive or
/// an unreaped zombie, which pins the group id so it cannot name someone else's group.
struct Group {
    pgid: Pid,
    live: bool,
}

impl Group {
    /// Send `signal` to the group's leader alone (the task's main process), while it is
    /// alive or an unreaped zombie (so its pid cannot have been reused). False when it is not.
    fn signal_leader(&self, signal: Signal) -> bool {
        if !self.live {
            return false;
        }
        match nix::sys::signal::kill(self.pgid, signal) {
            Ok(()) => true,
            Err(e) => {
                error!(pid = self.pgid.as_raw(), error = %e, "cannot signal the task");
                false
            }
        }
    }

    fn kill(&self, signal: Signal) {
        if !self.live {
            return;
        }
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => error!(pgid = self.pgid.as_raw(), error = %e, "cannot signal the task group"),
        }
    }
}

impl Drop for Group {
    /// Last line of defence: should the shim ever unwind with its task alive, take the task
    /// with it.
    fn drop(&mut self) {
        self.kill(Signal::SIGKILL);
    }
}

/// The terminating signals the shim handles, plus SIGCHLD, blocked and read from a signalfd.
struct TermSignals {
    fd: SignalFd,
}

impl TermSignals {
    fn mask() -> SigSet {
        let mut mask = SigSet::empty();
        for sig in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
        ] {
            mask.add(sig);
        }
        mask
    }

    fn block() -> nix::Result<TermSignals> {
        let mask = Self::mask();
        // The shim is single-threaded, so the process mask is the thread mask.
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(TermSignals { fd })
    }
}

/// The status channel: the shim's stdout, or the socket of an agent that attached. Best effort
/// and never blocking, so that a paused agent that does not read its end cannot stall the shim
/// past a deadline, and a dead agent (EPIPE) cannot make it fail. Terminal lines written while
/// no agent listens are kept and replayed to the next one that attaches.
struct StatusWriter {
    stdout: io::Stdout,
    /// The stdout pipe still reaches the agent that started the shim.
    pipe: Cell<bool>,
    /// The connection of an agent that attached through the socket.
    conn: RefCell<Option<UnixStream>>,
    /// Lines nobody heard that the next agent must know.
    unheard: RefCell<Vec<Status>>,
}

impl StatusWriter {
    fn stdout() -> StatusWriter {
        let stdout = io::stdout();
        // Only a pipe is made non-blocking: on a terminal the flag would be shared with the
        // user's shell.
        let is_pipe = fstat(&stdout).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO
        });
        if is_pipe && let Ok(flags) = fcntl(&stdout, FcntlArg::F_GETFL) {
            let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
            if let Err(e) = fcntl(&stdout, FcntlArg::F_SETFL(flags)) {
                warn!(error = %e, "cannot make the status pipe non-blocking");
            }
        }
        StatusWriter {
            stdout,
            pipe: Cell::new(true),
            conn: RefCell::new(None),
            unheard: RefCell::new(Vec::new()),
        }
    }

    fn send(&self, status: &Status) {
        let line = format!("{status}\n");
        // One write(2) straight to the descriptor, bypassing std's line buffer (which could
        // keep half a line and glue it to the next). Lines are far below PIPE_BUF, so on a
        // pipe the write is all or nothing, even when non-blocking.
        let delivered = if let Some(conn) = self.conn.borrow().as_ref() {
            write_line(conn, &line, status)
        } else if self.pipe.get() {
            let ok = write_line(&self.stdout, &line, status);
            if !ok {
                // EPIPE: the agent that started the shim is gone.
                self.pipe.set(false);
            }
            ok
        } else {
            false
        };
        if !delivered && keep_for_next_agent(status) {
            self.unheard.borrow_mut().push(status.clone());
        }
    }

    /// The attached agent's connection closed.
    fn conn_closed(&self) {
        self.conn.borrow_mut().take();
    }

    /// A new agent attached: it hears `first`, then what nobody heard, then everything after.
    fn attach(&self, conn: UnixStream, first: &Status) {
        self.pipe.set(false);
        *self.conn.borrow_mut() = Some(conn);
        self.send(first);
        let unheard = std::mem::take(&mut *self.unheard.borrow_mut());
        for status in &unheard {
            self.send(status);
        }
    }
}

fn write_line(fd: impl AsFd, line: &str, status: &Status) -> bool {
    match nix::unistd::write(fd, line.as_bytes()) {
        Ok(n) if n == line.len() => true,
        Ok(n) => {
            debug!(written = n, status = %status, "status line cut short");
            true
        }
        Err(e) => {
            debug!(error = %e, status = %status, "status line not delivered");
            false
        }
    }
}

/// The lines that tell how a task ended: a new agent must hear them.
fn keep_for_next_agent(status: &Status) -> bool {
    matches!(
        status,
        Status::Exited(_) | Status::Fenced | Status::OomKilled { .. } | Status::Killed(_)
    )
}

/// The running watch over one task.
struct Watch<'a> {
    out: &'a StatusWriter,
    signals: TermSignals,
    parent: Pid,
    leader: Pid,
    group: Group,
    /// The task's cgroup, when it has one: a kill also reaches what left the group.
    cgroup: Option<&'a crate::cgroup::TaskCgroup>,
    /// Fenced mode: SIGKILL the group when the monotonic clock passes this.
    deadline: Option<Instant>,
    /// After a `stop`: SIGKILL the group when the grace runs out.
    kill_at: Option<Instant>,
    /// SIGKILL has been sent to the group; nothing can undo it.
    killed: bool,
    /// Whether the control pipe can still be read.
    control_open: bool,
    /// Partial control line.
    line: Vec<u8>,
    /// Dropping the rest of an over-long control line.
    discarding: bool,
    /// Where a new agent attaches (`--socket`).
    listener: Option<&'a SocketFile>,
    /// The task and epoch, for the `attached` line.
    identity: (String, u64),
    /// `--reattach-ms`: how long a task without a deadline waits for a new agent.
    reattach: Duration,
    /// The agent announced a restart (`detach`): wait this long for the next one, whatever
    /// the task.
    detach: Option<Duration>,
    /// The agent is gone and the task kept: kill it when this passes with nobody attached.
    orphan_until: Option<Instant>,
    /// The task's leader has been reaped.
    ended: bool,
}

impl Watch<'_> {
    /// Watch until the leader exits; returns how it exited.
    fn run(&mut self) -> TaskExit {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(exit) = self.reap() {
                return exit;
            }
            let now = Instant::now();
            self.fire_timers(now);
            let timeout = match self.next_timer() {
                None => PollTimeout::NONE,
                // Round up: waking a little late is harmless (the timer is re-checked against
                // the clock), waking early would spin.
                Some(at) => {
                    let ms = at.saturating_duration_since(now).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };

            let stdin = io::stdin();
            let conn = self
                .out
                .conn
                .borrow()
                .as_ref()
                .and_then(|c| c.try_clone().ok());
            let mut fds = vec![PollFd::new(self.signals.fd.as_fd(), PollFlags::POLLIN)];
            let control_at = if let Some(c) = &conn {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            } else if self.control_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            } else {
                None
            };
            let listen_at = self.listener.map(|l| {
                fds.push(PollFd::new(l.listener.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    // Cannot watch any more: fail safe.
                    error!(error = %e, "poll failed; killing the task");
                    self.kill_now();
                    return self.reap_blocking();
                }
            }
            let ready = |fd: Option<&PollFd>| {
                fd.and_then(PollFd::revents).is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            };
            let signal_ready = ready(fds.first());
            let control_ready = ready(control_at.and_then(|i| fds.get(i)));
            let listen_ready = ready(listen_at.and_then(|i| fds.get(i)));
            drop(fds);

            if signal_ready {
                self.drain_signals();
            }
            if control_ready {
                // Err(None): nothing to read after all; try again.
                let read = match &conn {
                    Some(c) => {
                        let mut c: &UnixStream = c;
                        c.read(&mut buf).map_err(|e| match e.kind() {
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                            _ => Some(e.to_string()),
                        })
                    }
                    None => nix::unistd::read(&stdin, &mut buf).map_err(|e| match e {
                        Errno::EAGAIN | Errno::EINTR => None,
                        e => Some(e.to_string()),
                    }),
                };
                match read {
                    Ok(0) => self.control_closed("end of file"),
                    Ok(n) => self.control_bytes(&buf[..n]),
                    Err(None) => {}
                    // An unreadable control channel means we can no longer hear the agent.
                    Err(Some(e)) => self.control_closed(&e),
                }
            }
            if listen_ready {
                self.accept();
            }
        }
    }

    /// A new agent connects: it becomes the controller (superseding any other).
    fn accept(&mut self) {
        let Some(listener) = self.listener else {
            return;
        };
        let stream = match listener.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!(error = %e, "accept on the reattach socket");
                return;
            }
        };
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(error = %e, "reattach connection refused: cannot make it non-blocking");
            return;
        }
        if self.control_open {
            info!("a new agent attached while the old control pipe is open; it is no longer heard");
            self.control_open = false;
        }
        self.line.clear();
        self.discarding = false;
        self.orphan_until = None;
        self.detach = None;
        let pid = if self.ended {
            0
        } else {
            child_pid(self.leader.as_raw())
        };
        info!(pid, "an agent attached");
        self.out.attach(
            stream,
            &Status::Attached {
                task: self.identity.0.clone(),
                epoch: self.identity.1,
                pid,
                shim_pid: std::process::id(),
            },
        );
    }

    /// After the task ended with nobody listening while the shim waited for a new agent:
    /// keep waiting, until the window closes, for one to hear how it ended.
    fn linger(&mut self) {
        while self.out.conn.borrow().is_none() {
            let Some(until) = self.orphan_until else {
                return;
            };
            let Some(listener) = self.listener else {
                return;
            };
            let now = Instant::now();
            if now >= until {
                return;
            }
            let ms = until
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000);
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(listener.listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
            self.accept();
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        if self.killed {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            warn!("deadline passed without extension: fencing the task");
            self.out.send(&Status::Fenced);
            self.kill_now();
        } else if self.kill_at.is_some_and(|k| now >= k) {
            info!("stop grace over: killing the task");
            self.kill_now();
        } else if self.orphan_until.is_some_and(|o| now >= o) {
            warn!("no agent attached within the reattach window: killing the task");
            self.orphan_until = None;
            self.out.send(&Status::Killed(KillReason::AgentGone));
            self.kill_now();
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        if self.killed {
            return None;
        }
        [self.deadline, self.kill_at, self.orphan_until]
            .into_iter()
            .flatten()
            .min()
    }

    fn kill_now(&mut self) {
        self.group.kill(Signal::SIGKILL);
        if let Some(c) = self.cgroup {
            c.kill_all(Duration::ZERO);
        }
        self.killed = true;
        self.kill_at = None;
    }

    fn drain_signals(&mut self) {
        loop {
            match self.signals.fd.read_signal() {
                Ok(Some(info)) => {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or_default();
                    if signo == Signal::SIGCHLD as i32 {
                        continue; // reaped at the top of the loop
                    }
                    if signo == Signal::SIGUSR1 as i32 {
                        // The parent-death signal: the agent (or the thread that started
                        // this shim) is gone.
                        self.agent_gone("parent-death signal");
                        continue;
                    }
                    if self.killed {
                        continue;
                    }
                    let reason = if getppid() != self.parent {
                        KillReason::AgentGone
                    } else {
                        KillReason::Signal(signo)
                    };
                    warn!(signal = signo, ?reason, "shim signalled: killing the task");
                    self.out.send(&Status::Killed(reason));
                    self.kill_now();
                }
                Ok(None) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    error!(error = %e, "cannot read the signalfd; killing the task");
                    self.kill_now();
                    return;
                }
            }
        }
    }

    fn control_closed(&mut self, why: &str) {
        if self.out.conn.borrow().is_some() {
            self.out.conn_closed();
        } else {
            self.control_open = false;
        }
        self.agent_gone(why);
    }

    /// The controlling agent is gone (its channel closed, or the parent-death signal). A task
    /// is kept for a new agent when the agent announced its restart (`detach`), or when it
    /// has no deadline and a reattach window; otherwise it is killed at once.
    fn agent_gone(&mut self, why: &str) {
        if self.out.conn.borrow().is_some() {
            // A parent-death signal after a new agent attached: that agent is the one heard.
            return;
        }
        if self.killed || self.orphan_until.is_some() {
            return;
        }
        let window = match self.detach.take() {
            Some(w) => Some(w),
            None if self.deadline.is_none() && !self.reattach.is_zero() => Some(self.reattach),
            None => None,
        };
        match window {
            Some(w) if self.listener.is_some() => {
                warn!(
                    why,
                    window_ms = w.as_millis() as u64,
                    "the agent is gone; keeping the task for a new agent to attach"
                );
                self.orphan_until = Some(Instant::now() + w);
            }
            _ => {
                warn!(why, "the agent is gone; killing the task");
                self.out.send(&Status::Killed(KillReason::AgentGone));
                self.kill_now();
            }
        }
    }

    fn control_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if std::mem::take(&mut self.discarding) {
                    self.out.send(&Status::Error(format!(
                        "control line longer than {MAX_LINE} bytes"
                    )));
                    continue;
                }
                self.control_line(&String::from_utf8_lossy(&line));
            } else if self.line.len() >= MAX_LINE {
                self.discarding = true;
                self.line.clear();
            } else if !self.discarding {
                self.line.push(b);
            }
        }
    }

    fn control_line(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let control = match Control::parse(line) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "bad control line");
                self.out.send(&Status::Error(e.to_string()));
                return;
            }
        };
        let now = Instant::now();
        match control {
            Control::Ping => self.out.send(&Status::Pong),
            // Once SIGKILL is sent nothing can bring the task back; later orders are moot.
            _ if self.killed => debug!(%control, "ignored: task already killed"),
            Control::Extend(d) => {
                debug!(ms = d.as_millis(), "deadline extended");
                self.deadline = Some(now + d);
            }
            Control::Detach(window) => {
                info!(
                    window_ms = window.as_millis() as u64,
                    "the agent is restarting: the task is kept for the next one"
                );
                self.detach = Some(window);
                self.out.send(&Status::Detached { window });
            }
            Control::Signal(n) => match Signal::try_from(n) {
                Ok(sig) if self.group.signal_leader(sig) => {
                    info!(signal = %sig, "signalled the task");
                    self.out.send(&Status::Signalled(n));
                }
                Ok(_) => self.out.send(&Status::Error(format!(
                    "signal {n} not sent: the task is not running"
                ))),
                Err(_) => self.out.send(&Status::Error(format!("no signal {n} here"))),
            },
            Control::Stop(grace) => {
                let kill_at = now + grace;
                if self.kill_at.is_none() {
                    info!(grace_ms = grace.as_millis(), "stopping the task");
                    self.out.send(&Status::Stopping { grace });
                    self.group.kill(Signal::SIGTERM);
                }
                self.kill_at = Some(self.kill_at.map_or(kill_at, |k| k.min(kill_at)));
            }
        }
    }

    /// Reap whatever child has exited without blocking. Adopted orphans are simply reaped;
    /// when the leader has exited, the rest of its group is SIGKILLed while the zombie leader
    /// still pins the group id, then the leader is reaped and its exit returned.
    fn reap(&mut self) -> Option<TaskExit> {
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    error!(error = %e, "waitid failed");
                    return None;
                }
                Ok(status) => {
                    let pid = status.pid()?;
                    if pid == self.leader {
                        return Some(self.reap_leader(status));
                    }
                    // An orphan adopted as subreaper.
                    debug!(pid = pid.as_raw(), "reaping an adopted orphan");
                    if let Err(e) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        debug!(pid = pid.as_raw(), error = %e, "reap orphan");
                    }
                }
            }
        }
    }

    fn reap_leader(&mut self, peeked: WaitStatus) -> TaskExit {
        self.group.kill(Signal::SIGKILL);
        let status = loop {
            match waitpid(self.leader, None) {
                Err(Errno::EINTR) => {}
                Ok(status) => break status,
                Err(e) => {
                    error!(error = %e, "reap the task");
                    break peeked;
                }
            }
        };
        self.group.live = false;
        match status {
            WaitStatus::Exited(_, code) => TaskExit::Code(code),
            WaitStatus::Signaled(_, sig, _) => TaskExit::Signal(sig as i32),
            other => {
                error!(?other, "unexpected wait status for the task");
                TaskExit::Signal(Signal::SIGKILL as i32)
            }
        }
    }

    /// After a fatal error: wait for the (SIGKILLed) leader.
    fn reap_blocking(&mut self) -> TaskExit {
        loop {
            match waitid(
                Id::Pid(self.leader),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ) {
                Err(Errno::EINTR) => {}
                Ok(status) => return self.reap_leader(status),
                Err(e) => {
                    error!(error = %e, "cannot wait for the task");
                    self.group.live = false;
                    return TaskExit::Signal(Signal::SIGKILL as i32);
                }
            }
        }
    }

    /// Reap the grandchildren that were SIGKILLed with the group and reparented to the shim,
    /// for a bounded time.
    fn reap_orphans(&mut self) {
        let until = Instant::now() + ORPHAN_REAP_BOUND;
        loop {
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Err(Errno::ECHILD) => return,
                Ok(WaitStatus::StillAlive) => {
                    let now = Instant::now();
                    if now >= until {
                        debug!("children still alive after the task exited; leaving them");
                        return;
                    }
                    let ms = until.saturating_duration_since(now).as_millis();
                    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
                    let mut fds = [PollFd::new(self.signals.fd.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, timeout);
                    while let Ok(Some(_)) = self.signals.fd.read_signal() {}
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}
