//! `warden shim` with real processes: the test plays the agent, holding the control pipe and
//! reading the status lines. Every process a test creates is killed by PID when the test
//! ends, pass or fail.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, PidGuard, ShimProc, first_line, is_alive, wait_until, warden_bin};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(10);

/// A task whose shell runs a grandchild and prints its pid to stdout.
const WITH_GRANDCHILD: &[&str] = &["sh", "-c", "sleep 300 & echo $!; wait"];

fn grandchild(shim: &mut ShimProc) -> i32 {
    let line = first_line(&shim.stdout_log, LONG).expect("grandchild pid in the stdout log");
    let pid: i32 = line.trim().parse().expect("pid");
    shim.guards.push(PidGuard::process(pid));
    pid
}

#[test]
fn closing_the_control_pipe_kills_the_task_and_its_grandchild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn(dir.path(), None, WITH_GRANDCHILD);
    let task = shim.task_pid();
    let gc = grandchild(&mut shim);
    assert!(is_alive(task) && is_alive(gc));

    shim.close_control();

    let status = shim
        .wait_exit(LONG)
        .expect("shim exits when the pipe closes");
    assert_eq!(status.code(), Some(137), "task died of SIGKILL");
    assert!(wait_until(LONG, || !is_alive(task) && !is_alive(gc)));
    let lines = shim.drain_lines();
    assert!(
        lines.contains(&"killed agent-gone".to_string()),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("exited signal 9"));
}

#[test]
fn a_missed_extend_fences_the_task_at_the_deadline_and_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deadline = Duration::from_millis(1500);
    let t0 = Instant::now();
    let mut shim = ShimProc::spawn(dir.path(), Some(1500), WITH_GRANDCHILD);
    let task = shim.task_pid();
    let gc = grandchild(&mut shim);

    shim.wait_line("fenced", LONG).expect("fenced line");
    let fenced_after = t0.elapsed();
    // The shim's clock starts after t0, so the lower bound is exact; the upper one generous.
    assert!(fenced_after >= deadline, "fenced after {fenced_after:?}");
    assert!(
        fenced_after < deadline + Duration::from_secs(3),
        "fenced after {fenced_after:?}"
    );
    assert!(wait_until(LONG, || !is_alive(task) && !is_alive(gc)));
    let status = shim.wait_exit(LONG).expect("shim exits");
    assert_eq!(status.code(), Some(137));
}

#[test]
fn extends_keep_a_fenced_task_alive_until_they_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn(dir.path(), Some(1000), &["sleep", "300"]);
    let task = shim.task_pid();
    // Renew every 100 ms for 2.5 s, two and a half times the deadline each renewal sets.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut last_extend = Instant::now();
    while Instant::now() < until {
        // Read the clock before sending: the shim's deadline counts from receipt.
        last_extend = Instant::now();
        shim.send("extend 1000");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(is_alive(task), "task alive while extended");
    assert!(
        shim.wait_line("fenced", Duration::ZERO).is_none(),
        "{:?}",
        shim.seen
    );

    shim.wait_line("fenced", LONG)
        .expect("fenced once extends stop");
    assert!(last_extend.elapsed() >= Duration::from_millis(1000));
    assert!(wait_until(LONG, || !is_alive(task)));
}

#[test]
fn stop_sends_term_then_kill_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    // SIG_IGN survives exec, so the `sleep` ignores TERM too.
    let mut shim = ShimProc::spawn(
        dir.path(),
        None,
        &["sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait"],
    );
    let task = shim.task_pid();
    let gc = grandchild(&mut shim);

    let t0 = Instant::now();
    shim.send("stop 2000");
    shim.wait_line("stopping 2000", LONG)
        .expect("stopping line");
    // TERM is ignored: still alive well into the grace.
    std::thread::sleep(Duration::from_millis(300));
    assert!(is_alive(task) && is_alive(gc), "TERM must not kill it");

    let status = shim.wait_exit(LONG).expect("killed after the grace");
    assert!(
        t0.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(137));
    assert!(wait_until(LONG, || !is_alive(task) && !is_alive(gc)));
    assert_eq!(
        shim.drain_lines().last().map(String::as_str),
        Some("exited signal 9")
    );
}

#[test]
fn stop_lets_a_task_that_honours_term_exit_within_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn(dir.path(), None, &["sleep", "300"]);
    shim.task_pid();
    let t0 = Instant::now();
    shim.send("stop 30000");
    let status = shim.wait_exit(LONG).expect("exits on TERM");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
    assert_eq!(
        shim.drain_lines().last().map(String::as_str),
        Some("exited signal 15")
    );
}

#[test]
fn task_output_is_appended_to_the_log_files_not_to_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    for run in 1..=2 {
        let mut shim = ShimProc::spawn(
            dir.path(),
            None,
            &["sh", "-c", "echo out-$0; echo err-$0 >&2", &run.to_string()],
        );
        shim.wait_exit(LONG).expect("exits");
        let lines = shim.drain_lines();
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("out-") && !l.contains("err-")),
            "{lines:?}"
        );
        assert_eq!(lines.last().map(String::as_str), Some("exited code 0"));
    }
    let stdout = std::fs::read_to_string(dir.path().join("task.stdout.log")).expect("stdout log");
    let stderr = std::fs::read_to_string(dir.path().join("task.stderr.log")).expect("stderr log");
    assert_eq!(stdout, "out-1\nout-2\n");
    assert_eq!(stderr, "err-1\nerr-2\n");
}

#[test]
fn the_exit_code_mirrors_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], i32, &str); 4] = [
        (&["sh", "-c", "exit 7"], 7, "exited code 7"),
        (&["true"], 0, "exited code 0"),
        (&["sh", "-c", "kill -USR1 $$"], 128 + 10, "exited signal 10"),
        (&["/nonexistent/program"], 127, "spawn-failed not-found"),
    ];
    for (command, code, line) in cases {
        let mut shim = ShimProc::spawn(dir.path(), None, command);
        let status = shim.wait_exit(LONG).expect("exits");
        assert_eq!(status.code(), Some(code), "{command:?}");
        let lines = shim.drain_lines();
        assert!(
            lines.iter().any(|l| l.starts_with(line)),
            "{command:?}: {lines:?}"
        );
    }
}

#[test]
fn the_task_gets_exactly_the_shims_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn_with_env(
        dir.path(),
        None,
        &["env"],
        &[("WARDEN_FENCING_TOKEN", "3"), ("FOO", "bar baz")],
    );
    assert_eq!(shim.wait_exit(LONG).and_then(|s| s.code()), Some(0));
    let out = std::fs::read_to_string(&shim.stdout_log).expect("stdout log");
    let mut vars: Vec<&str> = out.lines().collect();
    vars.sort_unstable();
    let path = format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    assert_eq!(vars, vec!["FOO=bar baz", &path, "WARDEN_FENCING_TOKEN=3"]);
}

#[test]
fn the_task_starts_with_no_blocked_or_ignored_signals() {
    // The shim blocks its signals to read them from a signalfd, and Rust ignores SIGPIPE; the
    // task must inherit neither, or a stop's SIGTERM would never reach it. Checked on a
    // program run directly: a shell would hide it by resetting its own mask.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn(dir.path(), None, &["grep", "^Sig", "/proc/self/status"]);
    assert_eq!(shim.wait_exit(LONG).and_then(|s| s.code()), Some(0));
    let out = std::fs::read_to_string(&shim.stdout_log).expect("stdout log");
    let mask = |name: &str| {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"));
        u64::from_str_radix(line[name.len()..].trim(), 16).expect("hex mask")
    };
    assert_eq!(mask("SigBlk:"), 0, "{out}");
    // SIGHUP, SIGINT, SIGQUIT, SIGPIPE, SIGTERM, SIGCHLD
    let ours = [1u32, 2, 3, 13, 15, 17]
        .iter()
        .fold(0u64, |m, s| m | 1 << (s - 1));
    assert_eq!(mask("SigIgn:") & ours, 0, "{out}");
}

#[test]
fn killing_the_shims_parent_kills_the_task_even_with_the_pipe_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status_file = dir.path().join("status");
    let stdout_log = dir.path().join("task.stdout.log");
    // An intermediate agent stand-in: `sh` starts the shim with its control pipe fed by a
    // `sleep`, which outlives `sh`, so the pipe stays open and only the parent-death signal
    // can tell the shim.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"sleep 1000 | "$WARDEN_BIN" shim "$@" > "$STATUS""#)
        .arg("sh")
        .args(["--task", "t/0", "--epoch", "1", "--stdout"])
        .arg(&stdout_log)
        .arg("--stderr")
        .arg(dir.path().join("task.stderr.log"))
        .arg("--")
        .args(WITH_GRANDCHILD)
        .env("WARDEN_BIN", warden_bin())
        .env("STATUS", &status_file)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let parent = ChildGuard(cmd.spawn().expect("spawn intermediate"));
    // Kills the intermediate's group (the `sleep` and the shim) by its id; dropped first.
    let _parent_group = PidGuard::group(parent.pid());

    let started = first_line(&status_file, LONG).expect("started line");
    let task: i32 = started
        .strip_prefix("started ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first status line {started:?}"));
    let _task_group = PidGuard::group(task);
    let gc: i32 = first_line(&stdout_log, LONG)
        .expect("grandchild pid")
        .trim()
        .parse()
        .expect("pid");
    let _gc = PidGuard::process(gc);
    assert!(is_alive(task) && is_alive(gc));

    kill(Pid::from_raw(parent.pid()), Signal::SIGKILL).expect("kill the shim's parent");

    assert!(
        wait_until(LONG, || !is_alive(task) && !is_alive(gc)),
        "task outlived its agent"
    );
    assert!(wait_until(LONG, || {
        std::fs::read_to_string(&status_file).is_ok_and(|s| s.contains("exited signal 9"))
    }));
    let status = std::fs::read_to_string(&status_file).expect("status file");
    assert!(status.contains("killed agent-gone"), "{status}");
}

#[test]
fn sigterm_to_the_shim_kills_the_task_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn(dir.path(), None, WITH_GRANDCHILD);
    let task = shim.task_pid();
    let gc = grandchild(&mut shim);
    kill(Pid::from_raw(shim.pid()), Signal::SIGTERM).expect("signal the shim");
    let status = shim.wait_exit(LONG).expect("shim exits");
    assert_eq!(status.code(), Some(137));
    assert!(
        status.signal().is_none(),
        "the shim handles SIGTERM, it does not die of it"
    );
    assert!(wait_until(LONG, || !is_alive(task) && !is_alive(gc)));
    let lines = shim.drain_lines();
    assert!(lines.contains(&"killed signal 15".to_string()), "{lines:?}");
}

#[test]
fn what_is_left_of_the_group_dies_with_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The shell exits at once and leaves its background `sleep` behind in the group.
    let mut shim = ShimProc::spawn(dir.path(), None, &["sh", "-c", "sleep 300 & echo $!"]);
    let gc = grandchild(&mut shim);
    let status = shim.wait_exit(LONG).expect("shim exits with its task");
    assert_eq!(status.code(), Some(0));
    assert!(
        wait_until(LONG, || !is_alive(gc)),
        "orphaned grandchild survived"
    );
}

#[test]
fn ping_is_answered_and_bad_lines_do_not_hurt_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shim = ShimProc::spawn(dir.path(), None, &["sleep", "300"]);
    let task = shim.task_pid();
    shim.send("ping");
    shim.wait_line("pong", LONG).expect("pong");
    shim.send("launch missiles");
    shim.wait_line("error ", LONG).expect("error line");
    shim.send(&"x".repeat(10_000));
    shim.send("ping");
    assert!(
        shim.wait_line("error control line longer", LONG).is_some(),
        "{:?}",
        shim.seen
    );
    shim.seen.retain(|l| l != "pong");
    shim.wait_line("pong", LONG).expect("still answering");
    assert!(is_alive(task));
    shim.close_control();
    assert_eq!(shim.wait_exit(LONG).and_then(|s| s.code()), Some(137));
}

#[test]
fn signal_reaches_the_main_process_alone_and_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The shell traps SIGUSR1 and prints a line; its `sleep` child would die of it.
    let mut shim = ShimProc::spawn(
        dir.path(),
        None,
        &[
            "sh",
            "-c",
            "trap 'echo reloaded' USR1; sleep 300 & echo $!; while :; do wait; done",
        ],
    );
    let task = shim.task_pid();
    let gc = grandchild(&mut shim);
    shim.send(&format!("signal {}", Signal::SIGUSR1 as i32));
    shim.wait_line(&format!("signalled {}", Signal::SIGUSR1 as i32), LONG)
        .expect("signalled line");
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&shim.stdout_log)
            .is_ok_and(|s| s.contains("reloaded"))),
        "the task's trap did not run"
    );
    assert!(
        is_alive(task) && is_alive(gc),
        "only the main process got it"
    );
    shim.send("signal 0");
    shim.wait_line("error ", LONG).expect("error line");
    assert!(is_alive(task));
    shim.close_control();
    assert_eq!(shim.wait_exit(LONG).and_then(|s| s.code()), Some(137));
}
