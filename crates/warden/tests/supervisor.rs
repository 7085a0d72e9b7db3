//! The supervisor with real shims (`warden shim` from this build) and real tasks. Every task
//! process is guarded by PID from its `Started` event, and dropping the supervisor closes
//! every control pipe, so a failing test leaves nothing running.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{PidGuard, first_line, is_alive, warden_bin};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout};
use warden_agent::shim::protocol::TaskExit;
use warden_agent::{
    ProcessState, RestartPolicy, ShimLauncher, StartOutcome, Supervisor, SupervisorConfig,
    SupervisorError, TaskEvent, TaskEventKind, TaskSpec,
};
use warden_core::{FencingToken, HealthCheck, JobName, TaskId};

const LONG: Duration = Duration::from_secs(15);

/// A supervisor whose shims are this build's `warden shim`, plus guards for every task pid it
/// reports.
struct Harness {
    sup: Supervisor,
    events: UnboundedReceiver<TaskEvent>,
    /// Every event received so far.
    log: Vec<TaskEvent>,
    guards: Vec<PidGuard>,
}

impl Harness {
    fn new(restart: RestartPolicy) -> Harness {
        let mut config = SupervisorConfig::new(ShimLauncher {
            program: warden_bin(),
            args_prefix: vec!["shim".into()],
            run_as: None,
            confine: None,
        });
        config.restart = restart;
        config.replace_grace = Duration::from_secs(2);
        let (sup, events) = Supervisor::new(config).expect("supervisor");
        Harness {
            sup,
            events,
            log: Vec::new(),
            guards: Vec::new(),
        }
    }

    /// The next event, guarding any new task pid.
    async fn next(&mut self) -> TaskEvent {
        let event = timeout(LONG, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event within {LONG:?}; so far: {:#?}", self.log))
            .expect("event channel open");
        if let TaskEventKind::Started { pid } = event.kind {
            self.guards
                .push(PidGuard::group(i32::try_from(pid).expect("pid")));
        }
        self.log.push(event.clone());
        event
    }

    /// Skip events until one of `task` matches `pred`.
    async fn until(&mut self, task: &TaskId, pred: impl Fn(&TaskEventKind) -> bool) -> TaskEvent {
        loop {
            let event = self.next().await;
            if &event.task == task && pred(&event.kind) {
                return event;
            }
        }
    }

    async fn started(&mut self, task: &TaskId) -> i32 {
        match self
            .until(task, |k| matches!(k, TaskEventKind::Started { .. }))
            .await
            .kind
        {
            TaskEventKind::Started { pid } => i32::try_from(pid).expect("pid"),
            _ => unreachable!(),
        }
    }
}

fn task(name: &str) -> TaskId {
    TaskId::new(JobName::new(name), 0)
}

fn spec(dir: &Path, id: &TaskId, epoch: u64, leased: bool, command: &[&str]) -> TaskSpec {
    let env: BTreeMap<String, String> = [(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
    )]
    .into();
    TaskSpec {
        task: id.clone(),
        epoch: FencingToken(epoch),
        command: command[0].to_string(),
        args: command[1..].iter().map(|s| s.to_string()).collect(),
        env,
        leased,
        log_dir: dir.to_path_buf(),
        health: None,
        resources: Default::default(),
        run_as: None,
    }
}

async fn wait_dead(pid: i32) -> bool {
    let until = Instant::now() + LONG;
    while Instant::now() < until {
        if !is_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A copy of `kind` with the pid blanked, for comparing sequences.
fn shape(kind: &TaskEventKind) -> TaskEventKind {
    match kind {
        TaskEventKind::Started { .. } => TaskEventKind::Started { pid: 0 },
        TaskEventKind::Failed { .. } => TaskEventKind::Failed {
            reason: String::new(),
        },
        other => other.clone(),
    }
}

fn is_terminal(kind: &TaskEventKind) -> bool {
    matches!(
        kind,
        TaskEventKind::Failed { .. } | TaskEventKind::Stopped | TaskEventKind::Fenced
    )
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_task_is_restarted_with_backoff_then_reported_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        max_restarts: 3,
        window: Duration::from_secs(60),
    });
    let id = task("crash");
    h.sup
        .start(spec(dir.path(), &id, 1, false, &["sh", "-c", "exit 3"]))
        .expect("start");

    let mut events = Vec::new();
    loop {
        let event = h.next().await;
        let done = is_terminal(&event.kind);
        events.push(event);
        if done {
            break;
        }
    }
    let ms = Duration::from_millis;
    let started = TaskEventKind::Started { pid: 0 };
    let exited = TaskEventKind::Exited {
        exit: TaskExit::Code(3),
        oom_killed: false,
    };
    let restarting = |attempt, after| TaskEventKind::Restarting { attempt, after };
    let shapes: Vec<TaskEventKind> = events.iter().map(|e| shape(&e.kind)).collect();
    assert_eq!(
        shapes,
        vec![
            started.clone(),
            exited.clone(),
            restarting(1, ms(100)),
            started.clone(),
            exited.clone(),
            restarting(2, ms(200)),
            started.clone(),
            exited.clone(),
            restarting(3, ms(300)),
            started,
            exited,
            TaskEventKind::Failed {
                reason: String::new()
            },
        ]
    );
    // Each restart waited its backoff.
    for pair in events.windows(2) {
        if let TaskEventKind::Restarting { after, .. } = pair[0].kind {
            let waited = pair[1].at - pair[0].at;
            assert!(waited >= after, "waited {waited:?} < {after:?}");
        }
    }
    let TaskEventKind::Failed { reason } = &events[events.len() - 1].kind else {
        unreachable!()
    };
    assert!(
        reason.contains("code 3") && reason.contains("3 restarts"),
        "{reason}"
    );
    assert!(matches!(
        h.sup.tasks()[0].state,
        ProcessState::Failed { .. }
    ));
    assert!(h.sup.running().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_refused_and_a_newer_epoch_replaces_the_old_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("svc");
    let sleeper = |epoch| spec(dir.path(), &id, epoch, false, &["sleep", "300"]);

    assert_eq!(
        h.sup.start(sleeper(5)).expect("start"),
        StartOutcome::Started
    );
    let old_pid = h.started(&id).await;
    // A duplicate order changes nothing.
    assert_eq!(
        h.sup.start(sleeper(5)).expect("duplicate"),
        StartOutcome::AlreadyRunning
    );
    match h.sup.start(sleeper(4)) {
        Err(SupervisorError::StaleEpoch { current, got, .. }) => {
            assert_eq!((current, got), (FencingToken(5), FencingToken(4)));
        }
        other => panic!("stale start accepted: {other:?}"),
    }
    assert!(matches!(
        h.sup.stop(&id, FencingToken(4), Duration::ZERO).await,
        Err(SupervisorError::StaleEpoch { .. })
    ));
    assert!(is_alive(old_pid), "a refused order must not touch the task");
    assert_eq!(h.sup.running(), vec![(id.clone(), FencingToken(5))]);

    // A newer epoch: the old copy is stopped first, then the new one starts.
    assert_eq!(
        h.sup.start(sleeper(6)).expect("newer epoch"),
        StartOutcome::Replacing {
            previous: FencingToken(5)
        }
    );
    let stopped = h.next().await;
    assert_eq!(
        (stopped.epoch, stopped.kind),
        (FencingToken(5), TaskEventKind::Stopped)
    );
    let started = h.next().await;
    assert_eq!(started.epoch, FencingToken(6));
    assert!(matches!(started.kind, TaskEventKind::Started { .. }));
    assert!(!is_alive(old_pid), "two copies at once");
    assert_eq!(h.sup.running(), vec![(id.clone(), FencingToken(6))]);

    // An epoch runs at most once.
    h.sup
        .stop(&id, FencingToken(6), Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(h.next().await.kind, TaskEventKind::Stopped);
    assert!(matches!(
        h.sup.start(sleeper(6)),
        Err(SupervisorError::EpochFinished { .. })
    ));

    // A stop for a task never seen is remembered: an older start is stale.
    let other = task("other");
    h.sup
        .stop(&other, FencingToken(9), Duration::ZERO)
        .await
        .expect("stop unknown");
    assert!(matches!(
        h.sup
            .start(spec(dir.path(), &other, 8, false, &["sleep", "300"])),
        Err(SupervisorError::StaleEpoch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_now_kills_singletons_at_once_and_keeps_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let single = task("single");
    let service = task("service");
    assert!(matches!(
        h.sup
            .start(spec(dir.path(), &single, 1, true, &["sleep", "300"])),
        Err(SupervisorError::NoLease { .. })
    ));
    h.sup.extend_leases(Duration::from_secs(60));
    // The refused epoch is over here: a late resend of it is refused even with a lease (the
    // server, told it did not start, may have started it elsewhere). A new epoch starts.
    assert!(matches!(
        h.sup
            .start(spec(dir.path(), &single, 1, true, &["sleep", "300"])),
        Err(SupervisorError::EpochFinished { .. })
    ));
    h.sup
        .start(spec(dir.path(), &single, 2, true, &["sleep", "300"]))
        .expect("start singleton");
    h.sup
        .start(spec(dir.path(), &service, 1, false, &["sleep", "300"]))
        .expect("start service");
    let single_pid = h.started(&single).await;
    let mut service_pid = None;
    for event in &h.log {
        if let (true, TaskEventKind::Started { pid }) = (event.task == service, &event.kind) {
            service_pid = Some(i32::try_from(*pid).expect("pid"));
        }
    }
    let service_pid = match service_pid {
        Some(pid) => pid,
        None => h.started(&service).await,
    };

    let t0 = Instant::now();
    h.sup.fence_now();
    h.until(&single, |k| *k == TaskEventKind::Fenced).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "fencing took {:?}",
        t0.elapsed()
    );
    assert!(wait_dead(single_pid).await);
    assert!(is_alive(service_pid), "a service survives a lost lease");
    assert_eq!(h.sup.running(), vec![(service.clone(), FencingToken(1))]);
    assert!(matches!(
        h.sup
            .start(spec(dir.path(), &task("late"), 1, true, &["sleep", "300"])),
        Err(SupervisorError::NoLease { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_dies_when_the_lease_is_not_extended_and_is_not_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("single");
    let t0 = Instant::now();
    h.sup.extend_leases(Duration::from_millis(1000));
    h.sup
        .start(spec(dir.path(), &id, 1, true, &["sleep", "300"]))
        .expect("start");
    let pid = h.started(&id).await;
    let fenced = h.next().await;
    assert_eq!(fenced.kind, TaskEventKind::Fenced);
    // The shim's deadline is the lease's, rounded down to the millisecond.
    let after = fenced.at - t0;
    assert!(
        after >= Duration::from_millis(999),
        "fenced after {after:?}"
    );
    assert!(after < Duration::from_secs(5), "fenced after {after:?}");
    assert!(wait_dead(pid).await);
    assert_eq!(h.sup.tasks()[0].state, ProcessState::Fenced);
    // No restart follows.
    assert!(
        timeout(Duration::from_millis(500), h.events.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewals_keep_a_singleton_alive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("single");
    let lease = Duration::from_millis(1200);
    h.sup.extend_leases(lease);
    h.sup
        .start(spec(dir.path(), &id, 1, true, &["sleep", "300"]))
        .expect("start");
    let pid = h.started(&id).await;
    // Renew every 200 ms for 3 s, two and a half lease lengths.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        h.sup.extend_leases(lease);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            h.events.try_recv().is_err(),
            "unexpected event while renewed"
        );
    }
    assert!(is_alive(pid));
    let last_renewal = Instant::now();
    h.sup.extend_leases(lease);
    let fenced = h.next().await;
    assert_eq!(fenced.kind, TaskEventKind::Fenced);
    assert!(fenced.at - last_renewal >= lease - Duration::from_millis(1));
    assert!(wait_dead(pid).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_gives_a_term_ignoring_task_its_grace_then_kills_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("stubborn");
    let spec = spec(
        dir.path(),
        &id,
        1,
        false,
        &["sh", "-c", "trap '' TERM; echo ready; sleep 300"],
    );
    h.sup.start(spec.clone()).expect("start");
    let pid = h.started(&id).await;
    // The trap must be in place before the stop, or TERM kills the shell.
    first_line(&spec.stdout_path(), LONG).expect("task ready");
    let grace = Duration::from_millis(700);
    let t0 = Instant::now();
    h.sup.stop(&id, FencingToken(1), grace).await.expect("stop");
    assert!(t0.elapsed() >= grace, "stopped after {:?}", t0.elapsed());
    assert!(!is_alive(pid));
    assert_eq!(h.next().await.kind, TaskEventKind::Stopped);
    assert_eq!(h.sup.tasks()[0].state, ProcessState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_backoff_ends_the_task_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy {
        initial_backoff: Duration::from_secs(60),
        ..RestartPolicy::default()
    });
    let id = task("crash");
    h.sup
        .start(spec(dir.path(), &id, 1, false, &["false"]))
        .expect("start");
    h.until(&id, |k| matches!(k, TaskEventKind::Restarting { .. }))
        .await;
    timeout(
        Duration::from_secs(5),
        h.sup.stop(&id, FencingToken(1), Duration::ZERO),
    )
    .await
    .expect("stop does not wait for the backoff")
    .expect("stop");
    assert_eq!(h.next().await.kind, TaskEventKind::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_supervisor_kills_its_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("orphan");
    h.sup
        .start(spec(
            dir.path(),
            &id,
            1,
            false,
            &["sh", "-c", "sleep 300 & echo $!; wait"],
        ))
        .expect("start");
    let pid = h.started(&id).await;
    let probe = spec(dir.path(), &id, 1, false, &["true"]);
    let grandchild: i32 = first_line(&probe.stdout_path(), LONG)
        .expect("grandchild pid")
        .trim()
        .parse()
        .expect("pid");
    h.guards.push(PidGuard::process(grandchild));
    let Harness { sup, guards, .. } = h;
    drop(sup);
    assert!(wait_dead(pid).await, "task outlived the supervisor");
    assert!(
        wait_dead(grandchild).await,
        "grandchild outlived the supervisor"
    );
    drop(guards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_identity_reach_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("talk");
    let spec = spec(
        dir.path(),
        &id,
        7,
        false,
        &[
            "sh",
            "-c",
            "echo $WARDEN_TASK_ID $WARDEN_JOB $WARDEN_FENCING_TOKEN; echo oops >&2",
        ],
    );
    h.sup.start(spec.clone()).expect("start");
    h.started(&id).await;
    assert_eq!(
        h.next().await.kind,
        TaskEventKind::Exited {
            exit: TaskExit::Code(0),
            oom_killed: false,
        }
    );
    // Exit 0 means done: no restart, nothing running.
    assert!(
        timeout(Duration::from_millis(300), h.events.recv())
            .await
            .is_err()
    );
    assert_eq!(h.sup.tasks()[0].state, ProcessState::Completed);
    let stdout = std::fs::read_to_string(spec.stdout_path()).expect("stdout log");
    assert_eq!(stdout, "talk/0 talk 7\n");
    let stderr = std::fs::read_to_string(spec.stderr_path()).expect("stderr log");
    assert!(stderr.lines().any(|l| l == "oops"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_takes_its_task_along_and_the_task_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy {
        initial_backoff: Duration::from_millis(50),
        ..RestartPolicy::default()
    });
    let id = task("svc");
    h.sup
        .start(spec(dir.path(), &id, 1, false, &["sleep", "300"]))
        .expect("start");
    let pid = h.started(&id).await;
    let shim = parent_of(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let exited = h.next().await;
    assert_eq!(
        exited.kind,
        TaskEventKind::Exited {
            exit: TaskExit::Signal(9),
            oom_killed: false,
        }
    );
    assert!(wait_dead(pid).await, "the unsupervised task was not killed");
    assert!(matches!(
        h.next().await.kind,
        TaskEventKind::Restarting { attempt: 1, .. }
    ));
    let new_pid = h.started(&id).await;
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_transitions_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(RestartPolicy::default());
    let id = task("checked");
    let flag = dir.path().join("healthy");
    let mut spec = spec(dir.path(), &id, 1, false, &["sleep", "300"]);
    spec.health = Some(HealthCheck::Exec {
        command: vec!["test".into(), "-e".into(), flag.display().to_string()],
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        failures: 2,
    });
    h.sup.start(spec).expect("start");
    h.started(&id).await;
    assert_eq!(
        h.next().await.kind,
        TaskEventKind::Health { healthy: false }
    );
    std::fs::write(&flag, b"").expect("flag");
    assert_eq!(h.next().await.kind, TaskEventKind::Health { healthy: true });
    h.sup.shutdown(Duration::from_secs(5)).await;
    assert_eq!(h.next().await.kind, TaskEventKind::Stopped);
    assert!(matches!(
        h.sup.start(spec_for_shutdown(dir.path())),
        Err(SupervisorError::ShutDown)
    ));
}

fn spec_for_shutdown(dir: &Path) -> TaskSpec {
    spec(dir, &task("late"), 1, false, &["true"])
}

fn reattach_config(shims: &Path, window: Duration) -> SupervisorConfig {
    let mut config = SupervisorConfig::new(ShimLauncher {
        program: warden_bin(),
        args_prefix: vec!["shim".into()],
        run_as: None,
        confine: None,
    });
    config.shim_dir = Some(shims.to_path_buf());
    config.reattach_window = window;
    config
}

/// A supervisor that goes away (an agent process dying) leaves its service copies running
/// under their shims and kills its singletons; a second supervisor finds the survivors on
/// their sockets, removes the socket a dead shim left, adopts the task (same pid), and can
/// stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_supervisor_adopts_the_services_a_gone_one_left_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shims = dir.path().join("shims");
    std::fs::create_dir_all(&shims).expect("shims dir");
    // A socket file nobody listens on: a dead shim's.
    drop(std::os::unix::net::UnixListener::bind(shims.join("gone.0.1.sock")).expect("bind"));

    let (web, solo) = (task("web"), task("solo"));
    let mut guards = Vec::new();
    let (web_pid, solo_pid) = {
        let config = reattach_config(&shims, Duration::from_secs(20));
        let (sup, mut events) = Supervisor::new(config).expect("supervisor");
        sup.start(spec(dir.path(), &web, 3, false, &["sleep", "300"]))
            .expect("start web");
        sup.extend_leases(Duration::from_secs(60));
        sup.start(spec(dir.path(), &solo, 4, true, &["sleep", "300"]))
            .expect("start solo");
        let mut pids = BTreeMap::new();
        while pids.len() < 2 {
            let ev = timeout(LONG, events.recv())
                .await
                .expect("event")
                .expect("open");
            if let TaskEventKind::Started { pid } = ev.kind {
                let pid = i32::try_from(pid).expect("pid");
                guards.push(PidGuard::group(pid));
                pids.insert(ev.task.clone(), pid);
            }
        }
        (pids[&web], pids[&solo])
        // The supervisor is dropped here: every control pipe closes.
    };
    assert!(
        wait_dead(solo_pid).await,
        "the singleton outlived its supervisor"
    );
    assert!(is_alive(web_pid), "the service died with its supervisor");

    let found = warden_agent::supervisor::find_shims(&shims).await;
    assert_eq!(found.stale_removed, 1, "{found:?}");
    assert!(!shims.join("gone.0.1.sock").exists());
    assert!(found.errors.is_empty(), "{found:?}");
    let [shim] = <[_; 1]>::try_from(found.shims).expect("one shim answered");
    assert_eq!(
        (shim.task.as_str(), shim.epoch, shim.pid),
        (
            "web/0",
            FencingToken(3),
            u32::try_from(web_pid).expect("pid")
        )
    );

    let (sup, mut events) =
        Supervisor::new(reattach_config(&shims, Duration::from_secs(20))).expect("supervisor");
    sup.adopt(spec(dir.path(), &web, 3, false, &["sleep", "300"]), shim)
        .expect("adopt");
    let ev = timeout(LONG, events.recv())
        .await
        .expect("event")
        .expect("open");
    assert_eq!(
        ev.kind,
        TaskEventKind::Started {
            pid: u32::try_from(web_pid).expect("pid")
        }
    );
    assert_eq!(sup.running(), vec![(web.clone(), FencingToken(3))]);
    // An older order for it is refused; a stop reaches the adopted shim.
    assert!(matches!(
        sup.start(spec(dir.path(), &web, 2, false, &["sleep", "300"])),
        Err(SupervisorError::StaleEpoch { .. })
    ));
    sup.stop(&web, FencingToken(3), Duration::from_millis(500))
        .await
        .expect("stop");
    assert!(
        wait_dead(web_pid).await,
        "the adopted task survived its stop"
    );
    assert!(
        std::fs::read_dir(&shims).expect("dir").next().is_none(),
        "the shim removed its socket"
    );
}
