//! Crash test of the embedded back end: a writer process is killed with SIGKILL in the middle
//! of its writes, several times over the same store; after each kill the store must open
//! cleanly and hold every write the writer acknowledged, and its counters must never go back.
//!
//! The writer is this very test binary, re-executed with [`CHILD_DIR_ENV`] set and filtered
//! to run [`crash_child_writer`] only. It prints `ack i generation seq` after each iteration's
//! writes have all returned `Ok`; the parent counts those lines, then kills it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use warden_core::lifecycle::Cause;
use warden_core::planner::{OperationId, SlotState};
use warden_core::recovery::{Outcome, RecoveryRecord};
use warden_core::{AgentId, FencingToken, JobKind, JobName, JobSpec, Resources, TaskId, Time};
use warden_store::{NewEvent, RedbStore, Store, TaskRecord, WriteOp};

/// Set in the writer process: the store directory to write to.
const CHILD_DIR_ENV: &str = "WARDEN_STORE_CRASH_CHILD_DIR";

fn task() -> TaskId {
    TaskId::new(JobName::new("crash"), 0)
}

fn job(i: u64) -> JobSpec {
    JobSpec {
        data_epoch: 0,
        name: JobName::new(format!("job-{i}")),
        kind: JobKind::Singleton,
        replicas: 1,
        command: "/bin/true".into(),
        args: vec![format!("{i}")],
        env: Default::default(),
        resources: Resources::new(10, 10),
        health: None,
        service: None,
        state: None,
        update: None,
        config: vec![],
    }
}

fn op(i: u64) -> OperationId {
    OperationId(format!("crash/0@{i}:reschedule"))
}

fn recovery(i: u64) -> RecoveryRecord {
    RecoveryRecord {
        op: op(i),
        task: task(),
        epoch: FencingToken(i),
        from: AgentId::new("a", 1),
        to: Some(AgentId::new("b", 1)),
        last_heartbeat_at: None,
        detected_at: Time::from_millis(i),
        declared_failed_at: Time::from_millis(i),
        replacement_ordered_at: Time::from_millis(i),
        replacement_started_at: None,
        replacement_healthy_at: None,
        outcome: Outcome::InProgress,
        cause: Cause::ProcessGone,
    }
}

/// One acknowledged iteration of the writer.
#[derive(Clone, Copy, Debug)]
struct Ack {
    i: u64,
    generation: u64,
    seq: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut words = line.strip_prefix("ack ")?.split(' ');
    let mut next = || words.next()?.parse().ok();
    Some(Ack {
        i: next()?,
        generation: next()?,
        seq: next()?,
    })
}

/// The writer. A no-op in a normal test run; the body of the child process when
/// [`CHILD_DIR_ENV`] is set. Each iteration commits four transactions: a job, an atomic batch
/// (fenced task write and recovery record), a generation increment, an event.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = RedbStore::open(Path::new(&dir)).expect("child: open store");
    let mut epoch = store.task_epoch(&task()).expect("child: read epoch");
    let mut out = std::io::stdout().lock();
    loop {
        let i = epoch.0 + 1;
        store.put_job(&job(i)).expect("child: put job");
        let record = TaskRecord {
            task: task(),
            epoch: FencingToken(i),
            agent: Some(AgentId::new("b", i)),
            state: SlotState::Starting,
            failures: 0,
            updated_unix_ms: i,
            replica: None,
            version: 0,
        };
        let batch = [
            WriteOp::CasTask {
                expected: epoch,
                record,
            },
            WriteOp::UpsertRecovery {
                record: Box::new(recovery(i)),
                unix_ms: i,
            },
        ];
        assert!(
            store.apply(&batch).expect("child: apply").is_applied(),
            "child: the only writer lost an epoch-checked write"
        );
        epoch = FencingToken(i);
        let generation = store.next_generation("agent").expect("child: generation");
        let seq = store
            .append_event(&NewEvent::new(i, "crash.write", format!("write {i}")))
            .expect("child: append event");
        writeln!(out, "ack {i} {generation} {seq}").expect("child: report");
        out.flush().expect("child: flush");
    }
}

/// Run the writer until it has acknowledged `target` iterations, then SIGKILL it. Returns
/// every iteration it acknowledged, including those reported between the count and the kill.
fn run_and_kill(dir: &Path, target: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([
            "crash_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("writer stdout");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(ack) = parse_ack(&line)
                && tx.send(ack).is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acks = Vec::new();
    while acks.len() < target {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ack) => acks.push(ack),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait for the writer");
                panic!(
                    "the writer stopped after {} acknowledgements; stderr:\n{}",
                    acks.len(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap the writer");
    reader.join().expect("stdout reader");
    acks.extend(rx.try_iter());
    acks
}

/// Reopen the store and check every acknowledged write.
fn verify(dir: &Path, acks: &[Ack]) {
    let store = RedbStore::open(dir).expect("the store opens cleanly after kill -9");
    let last = acks.last().expect("some acknowledgements");
    assert!(
        store.task_epoch(&task()).expect("epoch") >= FencingToken(last.i),
        "the task's epoch went back"
    );
    let jobs: std::collections::HashSet<String> = store
        .list_jobs()
        .expect("list jobs")
        .into_iter()
        .map(|j| j.name.to_string())
        .collect();
    for a in acks {
        assert!(jobs.contains(&format!("job-{}", a.i)), "lost job {}", a.i);
        let rec = store
            .get_recovery(&op(a.i))
            .expect("read recovery")
            .unwrap_or_else(|| panic!("lost recovery {}", a.i));
        assert_eq!(rec.record, recovery(a.i));
    }
    assert!(store.generation("agent").expect("generation") >= Some(last.generation));
    let first_seq = acks.first().map_or(0, |a| a.seq);
    let events = store
        .events_since(first_seq.saturating_sub(1), usize::MAX)
        .expect("read events");
    let by_seq: std::collections::HashMap<u64, String> =
        events.into_iter().map(|e| (e.seq, e.message)).collect();
    for a in acks {
        assert_eq!(
            by_seq.get(&a.seq).map(String::as_str),
            Some(format!("write {}", a.i).as_str()),
            "lost event {}",
            a.seq
        );
    }
    // Counters never go back across crashes: each acknowledgement is larger than the last.
    for w in acks.windows(2) {
        assert!(w[0].i < w[1].i, "task epoch reused: {w:?}");
        assert!(
            w[0].generation < w[1].generation,
            "generation reused: {w:?}"
        );
        assert!(w[0].seq < w[1].seq, "event sequence number reused: {w:?}");
    }
    store.close().expect("close");
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut acks = Vec::new();
    // Different counts put the kill at different points of the writer's cycle.
    for target in [40, 117, 73] {
        acks.extend(run_and_kill(dir.path(), target));
        verify(dir.path(), &acks);
    }
    // The store still takes writes, and a restarted agent still gets a larger generation.
    let store = RedbStore::open(dir.path()).expect("reopen");
    let last = acks.last().expect("acknowledgements");
    assert!(store.next_generation("agent").expect("generation") > last.generation);
}
