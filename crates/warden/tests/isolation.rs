//! Task isolation with real processes: who a task runs as (read back from `/proc`), what
//! environment it gets, and that no shell ever sees a job's fields.
//!
//! The user switch needs root. Run as root (as CI does), every test checks the switch itself;
//! run as another user, the tests check what such an agent does instead (tasks run as the
//! agent's user, and asking for another user is refused).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ChildGuard, PidGuard, wait_until, warden_bin};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use warden_agent::isolation::{self, SAFE_PATH, TaskUser, TaskUserError};
use warden_agent::{
    ShimLauncher, Supervisor, SupervisorConfig, TaskEvent, TaskEventKind, TaskSpec,
};
use warden_chaos::cluster::free_port;
use warden_core::{FencingToken, HealthCheck, JobSpec};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn nobody() -> TaskUser {
    let u = nix::unistd::User::from_name("nobody")
        .expect("read the user database")
        .expect("this host has a `nobody` user");
    TaskUser {
        name: "nobody".into(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }
}

/// `Uid:`, `Gid:` (real, effective, saved, fs) and `Groups:` of a process.
fn credentials(pid: i32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    (ids("Uid:"), ids("Gid:"), ids("Groups:"))
}

/// A process's environment, from `/proc`.
fn environment(pid: i32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn job(toml: &str) -> JobSpec {
    toml::from_str(toml).expect("job spec")
}

/// A supervisor running shims of this build, tasks as `run_as`.
struct Sup {
    sup: Supervisor,
    events: UnboundedReceiver<TaskEvent>,
    guards: Vec<PidGuard>,
}

impl Sup {
    fn new(run_as: Option<TaskUser>) -> Sup {
        let (sup, events) = Supervisor::new(SupervisorConfig::new(ShimLauncher {
            program: warden_bin(),
            args_prefix: vec!["shim".into()],
            run_as,
            confine: None,
        }))
        .expect("supervisor");
        Sup {
            sup,
            events,
            guards: vec![],
        }
    }

    /// Start `spec` and return its task's pid, or the reason it failed.
    async fn run(&mut self, spec: TaskSpec) -> Result<i32, String> {
        let id = spec.task.clone();
        self.sup.start(spec).expect("start accepted");
        loop {
            let event = timeout(Duration::from_secs(15), self.events.recv())
                .await
                .expect("an event within 15 s")
                .expect("event channel open");
            if event.task != id {
                continue;
            }
            match event.kind {
                TaskEventKind::Started { pid } => {
                    let pid = i32::try_from(pid).expect("pid");
                    self.guards.push(PidGuard::group(pid));
                    return Ok(pid);
                }
                TaskEventKind::Failed { reason } => return Err(reason),
                _ => {}
            }
        }
    }

    /// Wait until `id`'s task exits by itself.
    async fn exited(&mut self, id: &warden_core::TaskId) {
        loop {
            let event = timeout(Duration::from_secs(15), self.events.recv())
                .await
                .expect("an event within 15 s")
                .expect("event channel open");
            if &event.task == id && matches!(event.kind, TaskEventKind::Exited { .. }) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_agents_tasks_run_as_nobody_while_the_shim_stays_root() {
    if !is_root() {
        // Not root: asking for another user is refused, never silently ignored.
        let err = isolation::resolve(Some("nobody")).expect_err("refused");
        assert!(matches!(err, TaskUserError::NotRoot { .. }), "{err}");
        return;
    }
    let choice = isolation::resolve(None).expect("resolve the default");
    assert_eq!(
        choice.switch_to,
        Some(nobody()),
        "root agents default to nobody"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut sup = Sup::new(Some(nobody()));
    let spec = TaskSpec::for_job(
        &job(
            "name = \"iso\"\nkind = \"service\"\ncommand = \"sleep\"\nargs = [\"600\"]\nenv = { JOB_VAR = \"from-job\" }\n",
        ),
        0,
        FencingToken(7),
        dir.path(),
    );
    let pid = sup.run(spec).await.expect("task started");
    let nobody = nobody();
    let (uids, gids, groups) = credentials(pid);
    assert_eq!(
        uids,
        vec![nobody.uid; 4],
        "real, effective, saved and fs uid"
    );
    assert_eq!(gids, vec![nobody.gid; 4]);
    assert!(groups.is_empty(), "no supplementary groups: {groups:?}");
    // The watchdog that fences the task stays root: the task cannot signal or stop it.
    let shim = warden_chaos::cluster::parent_pid(pid).expect("the task's shim");
    assert_eq!(credentials(shim).0, vec![0; 4]);
    let killed = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        None::<nix::sys::signal::Signal>,
    );
    assert!(killed.is_ok(), "the shim is alive");

    // Exactly the job's environment, the WARDEN_* variables and the fixed PATH.
    let env = environment(pid);
    let keys: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "JOB_VAR",
            "PATH",
            "WARDEN_FENCING_TOKEN",
            "WARDEN_JOB",
            "WARDEN_TASK_ID",
            "WARDEN_TASK_INDEX"
        ])
    );
    assert_eq!(env["PATH"], SAFE_PATH);
    assert_eq!(env["JOB_VAR"], "from-job");
    assert_eq!(env["WARDEN_FENCING_TOKEN"], "7");

    sup.sup.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_in_job_fields_reach_the_task_literally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canary = dir.path().join("pwned");
    let c = canary.display();
    let payloads = [
        format!("$(touch {c}-subst)"),
        format!("`touch {c}-backtick`"),
        format!("a; touch {c}-semicolon"),
        format!("a && touch {c}-and"),
        format!("a | tee {c}-pipe"),
        format!("> {c}-redirect"),
        "$HOME ${PATH} * ?".to_string(),
        "'single' \"double\" \\back".to_string(),
    ];
    let mut launchers = vec![None];
    if is_root() {
        launchers.push(Some(nobody()));
    }
    for (i, run_as) in launchers.into_iter().enumerate() {
        let mut sup = Sup::new(run_as.clone());
        let mut args = vec!["%s\\n".to_string()];
        args.extend(payloads.iter().cloned());
        let spec = TaskSpec {
            task: warden_core::TaskId::new(
                warden_core::JobName::new("lit"),
                u32::try_from(i).expect("index"),
            ),
            epoch: FencingToken(1),
            command: "printf".into(),
            args,
            env: [("PATH".to_string(), SAFE_PATH.to_string())].into(),
            leased: false,
            log_dir: dir.path().to_path_buf(),
            health: None,
            resources: Default::default(),
            run_as: None,
        };
        let (id, out) = (spec.task.clone(), spec.stdout_path());
        sup.run(spec).await.expect("printf started");
        sup.exited(&id).await;
        let printed = std::fs::read_to_string(&out).expect("stdout log");
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(
            lines,
            payloads.iter().map(String::as_str).collect::<Vec<_>>(),
            "as {run_as:?}"
        );
        let created: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pwned"))
            .collect();
        assert!(created.is_empty(), "a shell ran: {created:?}");
    }
}

/// `warden shim --user uid:gid -- program`: its status lines and exit code.
fn shim_as(dir: &Path, user: &TaskUser, program: &str) -> (Vec<String>, Option<i32>) {
    let mut child = Command::new(warden_bin())
        .args(["shim", "--task", "t/0", "--epoch", "1", "--stdout"])
        .arg(dir.join("out.log"))
        .arg("--stderr")
        .arg(dir.join("err.log"))
        .args([
            "--user",
            &format!("{}:{}", user.uid, user.gid),
            "--",
            program,
        ])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the shim");
    let stdout = child.stdout.take().expect("status pipe");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let code = child.wait().expect("wait").code();
    (lines, code)
}

#[test]
fn a_program_the_task_user_cannot_run_is_reported_as_a_spawn_failure() {
    if !is_root() {
        let err = isolation::resolve(Some("nobody")).expect_err("refused");
        assert!(err.to_string().contains("only an agent running as root"));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // A script root may run but nobody may not: it lies in a private (0700) directory.
    let script = dir.path().join("private.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
    let nobody = nobody();
    let (lines, code) = shim_as(dir.path(), &nobody, &script.display().to_string());
    assert_eq!(code, Some(126), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("spawn-failed cannot-execute")),
        "{lines:?}"
    );
    let (lines, code) = shim_as(dir.path(), &nobody, "/nonexistent/program");
    assert_eq!(code, Some(127), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("spawn-failed not-found")),
        "{lines:?}"
    );
    let (lines, code) = shim_as(dir.path(), &nobody, "true");
    assert_eq!(code, Some(0), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("started ")), "{lines:?}");
}

#[tokio::test]
async fn exec_health_checks_run_as_the_task_user() {
    let me = nix::unistd::geteuid().as_raw();
    let env: BTreeMap<String, String> = [("PATH".to_string(), SAFE_PATH.to_string())].into();
    let check = |uid: u32| HealthCheck::Exec {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("test \"$(id -u)\" = {uid}"),
        ],
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        failures: 1,
    };
    // Without a task user, the check runs as the agent.
    warden_agent::health::probe_as(&check(me), &env, None)
        .await
        .expect("runs as the agent");
    if is_root() {
        let nobody = nobody();
        warden_agent::health::probe_as(&check(nobody.uid), &env, Some(&nobody))
            .await
            .expect("runs as the task user");
        assert!(
            warden_agent::health::probe_as(&check(0), &env, Some(&nobody))
                .await
                .is_err(),
            "not as root"
        );
    }
}

#[test]
fn an_agent_refuses_an_unknown_task_user_at_start() {
    let out = Command::new(warden_bin())
        .args([
            "agent",
            "--task-user",
            "no-such-user-warden-test",
            "--server",
            "127.0.0.1:1",
        ])
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such user"), "{stderr}");
}

#[test]
fn agent_tasks_get_the_job_environment_only() {
    // A server from the chaos harness; the agent is started here, as an operator would,
    // without --task-user, and with an environment of its own that must not leak.
    let cluster = common::start_cluster("isolation");
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = free_port().expect("port");
    let agent = Command::new(warden_bin())
        .args(["agent", "--name", "iso-agent", "--server"])
        .arg(cluster.grpc_addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .args(["--probe-addr", &format!("127.0.0.1:{probe}")])
        .args(["--cgroups", "off"])
        .env_remove("WARDEN_TASK_USER")
        .env("AGENT_SECRET", "must-not-leak")
        .env("PATH", "/opt/agent-only/bin:/usr/bin:/bin")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let _agent = ChildGuard(agent);
    // The harness adds its marker variable to the job's env, to find the task in /proc.
    cluster
        .submit("name = \"iso\"\nkind = \"singleton\"\ncommand = \"sleep\"\nargs = [\"600\"]\n")
        .expect("submit");
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            // Once it runs `sleep` (before that it may be `warden shim-exec`, still root).
            pid = cluster.task_procs().first().map(|t| t.pid).filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            });
            pid.is_some()
        }),
        "the task did not start"
    );
    let pid = pid.expect("pid");
    let _task = PidGuard::group(pid);
    let env = environment(pid);
    assert!(!env.contains_key("AGENT_SECRET"), "{env:?}");
    assert_eq!(env["PATH"], SAFE_PATH, "the fixed PATH, not the agent's");
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !k.starts_with("WARDEN_") && *k != "PATH" && !k.starts_with("CLUSTER_MARKER_"))
        .collect();
    assert!(extra.is_empty(), "unexpected variables {extra:?}");
    let want_uid = if is_root() {
        nobody().uid
    } else {
        nix::unistd::geteuid().as_raw()
    };
    assert_eq!(credentials(pid).0, vec![want_uid; 4]);
}

#[test]
fn with_task_uids_every_job_runs_as_a_user_of_its_own() {
    if !is_root() {
        // Not root: the agent refuses at start rather than running every job as itself.
        let out = Command::new(warden_bin())
            .args([
                "agent",
                "--task-uids",
                "230000-230099",
                "--server",
                "127.0.0.1:1",
            ])
            .env_remove("WARDEN_TASK_USER")
            .output()
            .expect("run the agent");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("only an agent running as root"), "{stderr}");
        return;
    }
    let cluster = common::start_cluster("isolation");
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = free_port().expect("port");
    let data = dir.path().join("agent");
    let agent = Command::new(warden_bin())
        .args(["agent", "--name", "uids-agent", "--server"])
        .arg(cluster.grpc_addr.to_string())
        .arg("--data-dir")
        .arg(&data)
        .args(["--probe-addr", &format!("127.0.0.1:{probe}")])
        .args(["--cgroups", "off", "--task-uids", "230000-230099"])
        .env_remove("WARDEN_TASK_USER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let _agent = ChildGuard(agent);
    for job in ["uid-a", "uid-b"] {
        cluster
            .submit(&format!(
                "name = \"{job}\"\nkind = \"service\"\nreplicas = 1\ncommand = \"sleep\"\nargs = [\"600\"]\n"
            ))
            .expect("submit");
    }
    let mut uids: BTreeMap<String, u32> = BTreeMap::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            for t in cluster.task_procs() {
                let running_sleep = std::fs::read_to_string(format!("/proc/{}/comm", t.pid))
                    .is_ok_and(|c| c.trim() == "sleep");
                if running_sleep {
                    let (ids, _, _) = credentials(t.pid);
                    uids.insert(t.task.clone(), ids[0]);
                }
            }
            uids.len() == 2
        }),
        "the tasks did not both start: {uids:?}"
    );
    let guards: Vec<PidGuard> = cluster
        .task_procs()
        .iter()
        .map(|t| PidGuard::group(t.pid))
        .collect();
    let (a, b) = (uids["uid-a/0"], uids["uid-b/0"]);
    assert_ne!(a, b, "two jobs share a uid");
    for uid in [a, b] {
        assert!(
            (230000..=230099).contains(&uid),
            "uid {uid} outside the range"
        );
    }
    // The allocation is on disk, so a restarted agent gives each job the same uid.
    let kept = std::fs::read_to_string(data.join("task-uids.json")).expect("allocation file");
    let kept: BTreeMap<String, u32> = serde_json::from_str(&kept).expect("json");
    assert_eq!(kept.get("uid-a"), Some(&a));
    assert_eq!(kept.get("uid-b"), Some(&b));
    drop(guards);
}
