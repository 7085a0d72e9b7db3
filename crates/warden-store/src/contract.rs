//! The behaviour every back end must show, as plain functions, so that each back end — and
//! each future one — runs the very same checks.
//!
//! A back end's tests provide a *fixture maker*: a function from [`StoreOptions`] to a fresh,
//! empty [`Fixture`] (a store plus whatever keeps it alive, such as a temporary directory).
//! [`contract_tests!`](crate::contract_tests) turns every contract into its own `#[test]`;
//! [`run_all`] runs them in one go.
//!
//! ```ignore
//! mod contract {
//!     warden_store::contract_tests!(warden_store::contract::TempRedb::with_options);
//! }
//! ```
//!
//! Contracts panic (they are tests); they never leave files behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use warden_core::lifecycle::Cause;
use warden_core::planner::{OperationId, SlotState};
use warden_core::recovery::{Outcome, RecoveryRecord};
use warden_core::release::{JobReleases, Rollout, RolloutPhase};
use warden_core::{AgentId, FencingToken, JobKind, JobName, JobSpec, Resources, TaskId, Time};

use crate::{
    BatchOutcome, CasOutcome, MemStore, NewEvent, RecoveryQuery, RedbStore, Store, StoreError,
    StoreOptions, TaskRecord, WriteOp,
};

/// A store under test and whatever keeps it alive.
pub trait Fixture: Sized {
    /// The store.
    fn store(&self) -> &dyn Store;
    /// Close the store and open it again on the same data, as a restarted server would.
    fn reopen(self) -> Self;
}

impl Fixture for MemStore {
    fn store(&self) -> &dyn Store {
        self
    }

    /// The state lives in the handle, so "reopening" keeps it.
    fn reopen(self) -> Self {
        self
    }
}

/// A [`RedbStore`] in a temporary directory that is removed when the fixture is dropped.
#[derive(Debug)]
pub struct TempRedb {
    store: RedbStore,
    options: StoreOptions,
    dir: tempfile::TempDir,
}

impl TempRedb {
    /// A fresh store with default options.
    pub fn new() -> Self {
        TempRedb::with_options(StoreOptions::default())
    }

    /// A fresh store with `options`.
    pub fn with_options(options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary store directory");
        let store = RedbStore::open_with(dir.path(), options.clone()).expect("open the store");
        TempRedb {
            store,
            options,
            dir,
        }
    }

    /// The store, as its concrete type.
    pub fn redb(&self) -> &RedbStore {
        &self.store
    }
}

impl Default for TempRedb {
    fn default() -> Self {
        TempRedb::new()
    }
}

impl Fixture for TempRedb {
    fn store(&self) -> &dyn Store {
        &self.store
    }

    fn reopen(self) -> Self {
        let TempRedb {
            store,
            options,
            dir,
        } = self;
        store.close().expect("close the store");
        let store = RedbStore::open_with(dir.path(), options.clone()).expect("reopen the store");
        TempRedb {
            store,
            options,
            dir,
        }
    }
}

/// Generate one `#[test]` per contract for the back end made by `$fresh`, a function from
/// [`StoreOptions`] to a [`Fixture`]. Invoke it inside a dedicated module.
#[macro_export]
macro_rules! contract_tests {
    ($fresh:expr $(,)?) => {
        $crate::contract_tests!(@each $fresh;
            job_crud,
            releases_crud,
            a_job_and_its_releases_commit_together,
            batches_touch_each_releases_key_once,
            deleting_a_job_keeps_its_releases,
            cas_creates_and_advances,
            cas_conflict_reports_the_current_record,
            cas_rejects_a_lower_epoch,
            stale_state_report_is_ignored,
            tasks_are_listed_per_job_in_slot_order,
            deleting_job_tasks_keeps_their_epochs,
            batches_are_all_or_nothing,
            batches_touch_each_key_once,
            concurrent_fenced_writes_never_lose_an_update,
            generations_strictly_increase,
            events_are_sequenced,
            event_retention_drops_the_oldest,
            event_batches_are_sequenced_and_bounded,
            recoveries_upsert_in_insertion_order,
            unencodable_values_are_refused,
            data_survives_reopen,
        );
    };
    (@each $fresh:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::contract::$name(&$fresh);
            }
        )+
    };
}

/// Run every contract against fresh fixtures from `fresh`.
pub fn run_all<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    job_crud(fresh);
    releases_crud(fresh);
    a_job_and_its_releases_commit_together(fresh);
    batches_touch_each_releases_key_once(fresh);
    deleting_a_job_keeps_its_releases(fresh);
    cas_creates_and_advances(fresh);
    cas_conflict_reports_the_current_record(fresh);
    cas_rejects_a_lower_epoch(fresh);
    stale_state_report_is_ignored(fresh);
    tasks_are_listed_per_job_in_slot_order(fresh);
    deleting_job_tasks_keeps_their_epochs(fresh);
    batches_are_all_or_nothing(fresh);
    batches_touch_each_key_once(fresh);
    concurrent_fenced_writes_never_lose_an_update(fresh);
    generations_strictly_increase(fresh);
    events_are_sequenced(fresh);
    event_retention_drops_the_oldest(fresh);
    event_batches_are_sequenced_and_bounded(fresh);
    recoveries_upsert_in_insertion_order(fresh);
    unencodable_values_are_refused(fresh);
    data_survives_reopen(fresh);
}

// ----- helpers -----

fn fresh_default<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) -> F {
    fresh(StoreOptions::default())
}

/// A service job.
pub fn job(name: &str, replicas: u32) -> JobSpec {
    JobSpec {
        data_epoch: 0,
        name: JobName::new(name),
        kind: JobKind::Service,
        replicas,
        command: "/bin/sleep".into(),
        args: vec!["infinity".into()],
        env: BTreeMap::from([("MODE".to_string(), "test".to_string())]),
        resources: Resources::new(100, 64),
        health: None,
        service: None,
        state: None,
        update: None,
        config: vec![],
    }
}

/// `name`'s releases: versions 1 to `versions` (at least 1) of [`job`], each with its own
/// template, and the rollout of the newest from the one before it, in its canary phase.
pub fn releases(name: &str, versions: u32) -> JobReleases {
    let mut out: Option<JobReleases> = None;
    for v in 1..=versions.max(1) {
        let mut spec = job(name, v);
        spec.args.push(format!("v{v}"));
        let cause = if v == 1 { "submit" } else { "update" };
        out = Some(JobReleases::with_release(
            out.as_ref(),
            spec,
            1_700_000_000_000 + u64::from(v),
            cause.into(),
            10,
        ));
    }
    let mut out = out.expect("at least one version");
    let newest = out.current().map_or(1, |r| r.version);
    out.rollout = Some(Rollout {
        promoted: false,
        from: newest.saturating_sub(1),
        to: newest,
        revert: false,
        phase: RolloutPhase::Canary,
        started_unix_ms: 1_700_000_000_100,
        ended_unix_ms: None,
        reason: String::new(),
    });
    out
}

/// A task id.
pub fn tid(job: &str, index: u32) -> TaskId {
    TaskId::new(JobName::new(job), index)
}

/// A task record at `epoch` on `agent` (generation 1).
pub fn record(job: &str, index: u32, epoch: u64, agent: Option<&str>) -> TaskRecord {
    TaskRecord {
        task: tid(job, index),
        epoch: FencingToken(epoch),
        agent: agent.map(|a| AgentId::new(a, 1)),
        state: if agent.is_some() {
            SlotState::Starting
        } else {
            SlotState::Pending
        },
        failures: 0,
        updated_unix_ms: 1_700_000_000_000 + epoch,
        replica: None,
        version: 0,
    }
}

/// An in-progress recovery record for operation `op`.
pub fn recovery(op: &str, epoch: u64) -> RecoveryRecord {
    RecoveryRecord {
        op: OperationId(op.into()),
        task: tid("cron", 0),
        epoch: FencingToken(epoch),
        from: AgentId::new("a", 1),
        to: Some(AgentId::new("b", 2)),
        last_heartbeat_at: Some(Time::from_millis(1_000)),
        detected_at: Time::from_millis(1_100),
        declared_failed_at: Time::from_millis(1_150),
        replacement_ordered_at: Time::from_millis(1_400),
        replacement_started_at: None,
        replacement_healthy_at: None,
        outcome: Outcome::InProgress,
        cause: Cause::LeaseExpired,
    }
}

fn applied(outcome: CasOutcome, what: &str) {
    assert_eq!(outcome, CasOutcome::Applied, "{what}");
}

fn names(jobs: &[JobSpec]) -> Vec<&str> {
    jobs.iter().map(|j| j.name.as_str()).collect()
}

fn release_jobs(releases: &[JobReleases]) -> Vec<&str> {
    releases.iter().map(|r| r.job.as_str()).collect()
}

// ----- contracts -----

/// Jobs: put creates or replaces, get, list by name, delete (idempotent).
pub fn job_crud<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let web = JobName::new("web");
    assert_eq!(s.get_job(&web).expect("get"), None);
    assert!(s.list_jobs().expect("list").is_empty());

    s.put_job(&job("web", 1)).expect("put web");
    s.put_job(&job("api", 2)).expect("put api");
    assert_eq!(s.get_job(&web).expect("get"), Some(job("web", 1)));
    assert_eq!(names(&s.list_jobs().expect("list")), ["api", "web"]);

    s.put_job(&job("web", 3)).expect("replace web");
    assert_eq!(s.get_job(&web).expect("get").map(|j| j.replicas), Some(3));
    assert_eq!(s.list_jobs().expect("list").len(), 2);

    s.delete_job(&web).expect("delete");
    assert_eq!(s.get_job(&web).expect("get"), None);
    s.delete_job(&web)
        .expect("deleting an absent job is a no-op");
    assert_eq!(names(&s.list_jobs().expect("list")), ["api"]);
}

/// Releases: put creates or replaces a job's whole record (versions and rollout), get, list
/// by job name, delete (idempotent). They are a key space of their own: no job is needed,
/// and they never show among the jobs.
pub fn releases_crud<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let web = JobName::new("web");
    assert_eq!(s.get_releases(&web).expect("get"), None);
    assert!(s.list_releases().expect("list").is_empty());

    s.put_releases(&releases("web", 2)).expect("put web");
    s.put_releases(&releases("api", 1)).expect("put api");
    s.put_releases(&releases("web-2", 1)).expect("put web-2");
    assert_eq!(s.get_releases(&web).expect("get"), Some(releases("web", 2)));
    assert_eq!(
        release_jobs(&s.list_releases().expect("list")),
        ["api", "web", "web-2"]
    );
    assert!(s.list_jobs().expect("list jobs").is_empty());

    let mut replaced = releases("web", 3);
    if let Some(r) = replaced.rollout.as_mut() {
        r.phase = RolloutPhase::Succeeded;
        r.ended_unix_ms = Some(1_700_000_000_200);
        r.reason = "every copy runs version 3".into();
    }
    s.put_releases(&replaced).expect("replace web");
    assert_eq!(s.get_releases(&web).expect("get"), Some(replaced));
    assert_eq!(s.list_releases().expect("list").len(), 3);

    s.delete_releases(&web).expect("delete");
    assert_eq!(s.get_releases(&web).expect("get"), None);
    s.delete_releases(&web)
        .expect("deleting absent releases is a no-op");
    assert_eq!(
        release_jobs(&s.list_releases().expect("list")),
        ["api", "web-2"]
    );
}

/// A job's spec and its releases written in one batch commit together, or not at all when
/// another write's condition fails; removing a job whole is one batch too.
pub fn a_job_and_its_releases_commit_together<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let web = JobName::new("web");
    let submit = [
        WriteOp::PutJob(job("web", 2)),
        WriteOp::PutReleases(releases("web", 1)),
    ];
    assert!(s.apply(&submit).expect("apply").is_applied());
    assert_eq!(s.get_job(&web).expect("get"), Some(job("web", 2)));
    assert_eq!(s.get_releases(&web).expect("get"), Some(releases("web", 1)));

    // A lost epoch-checked write keeps both the spec and the releases as they were.
    applied(
        s.cas_task(FencingToken::NONE, &record("web", 0, 1, Some("a")))
            .expect("cas"),
        "web/0",
    );
    let update = [
        WriteOp::PutJob(job("web", 3)),
        WriteOp::PutReleases(releases("web", 2)),
        WriteOp::CasTask {
            expected: FencingToken::NONE,
            record: record("web", 0, 2, Some("b")),
        },
    ];
    assert!(!s.apply(&update).expect("apply").is_applied());
    assert_eq!(s.get_job(&web).expect("get"), Some(job("web", 2)));
    assert_eq!(s.get_releases(&web).expect("get"), Some(releases("web", 1)));

    let remove = [
        WriteOp::DeleteJob(web.clone()),
        WriteOp::DeleteJobTasks(web.clone()),
        WriteOp::DeleteReleases(web.clone()),
    ];
    assert!(s.apply(&remove).expect("apply").is_applied());
    assert_eq!(s.get_job(&web).expect("get"), None);
    assert_eq!(s.get_releases(&web).expect("get"), None);
    assert!(s.list_job_tasks(&web).expect("list").is_empty());
}

/// A batch may touch a job's releases once, as any other key; otherwise it is refused as a
/// whole, naming the key.
pub fn batches_touch_each_releases_key_once<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let web = JobName::new("web");
    let refused: Vec<Vec<WriteOp>> = vec![
        vec![
            WriteOp::PutReleases(releases("web", 1)),
            WriteOp::PutReleases(releases("web", 2)),
        ],
        vec![
            WriteOp::PutJob(job("web", 1)),
            WriteOp::PutReleases(releases("web", 1)),
            WriteOp::DeleteReleases(web.clone()),
        ],
        vec![
            WriteOp::DeleteReleases(web.clone()),
            WriteOp::DeleteReleases(web.clone()),
        ],
    ];
    for ops in refused {
        let err = s.apply(&ops).expect_err("overlapping batch");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("releases/web"), "{err}");
    }
    assert!(s.list_releases().expect("list").is_empty());
    assert!(s.list_jobs().expect("list").is_empty());
    // Releases of different jobs, and a job's spec with its releases, are fine together.
    let ok = [
        WriteOp::PutReleases(releases("web", 1)),
        WriteOp::PutReleases(releases("api", 1)),
        WriteOp::PutJob(job("web", 1)),
    ];
    assert!(s.apply(&ok).expect("apply").is_applied());
    assert_eq!(
        release_jobs(&s.list_releases().expect("list")),
        ["api", "web"]
    );
}

/// Deleting a job's spec and its tasks leaves its releases (a separate key), alone or in one
/// batch; only [`WriteOp::DeleteReleases`] removes them.
pub fn deleting_a_job_keeps_its_releases<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let (web, api) = (JobName::new("web"), JobName::new("api"));
    for name in ["web", "api"] {
        s.put_job(&job(name, 1)).expect("put job");
        s.put_releases(&releases(name, 2)).expect("put releases");
        applied(
            s.cas_task(FencingToken::NONE, &record(name, 0, 1, Some("a")))
                .expect("cas"),
            "slot 0",
        );
    }

    s.delete_job(&web).expect("delete job");
    s.delete_job_tasks(&web).expect("delete tasks");
    let batch = [
        WriteOp::DeleteJob(api.clone()),
        WriteOp::DeleteJobTasks(api.clone()),
    ];
    assert!(s.apply(&batch).expect("apply").is_applied());
    assert!(s.list_jobs().expect("list").is_empty());
    assert!(s.list_tasks().expect("list").is_empty());
    assert_eq!(s.get_releases(&web).expect("get"), Some(releases("web", 2)));
    assert_eq!(
        release_jobs(&s.list_releases().expect("list")),
        ["api", "web"]
    );

    s.delete_releases(&web).expect("delete releases");
    assert_eq!(s.get_releases(&web).expect("get"), None);
    assert_eq!(s.get_releases(&api).expect("get"), Some(releases("api", 2)));
}

/// An epoch-checked write creates a slot from epoch NONE, then advances it; the same epoch may be
/// written again (an update of the same assignment).
pub fn cas_creates_and_advances<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let t = tid("web", 0);
    assert_eq!(s.task_epoch(&t).expect("epoch"), FencingToken::NONE);
    assert_eq!(s.get_task(&t).expect("get"), None);

    let r1 = record("web", 0, 1, Some("a"));
    applied(s.cas_task(FencingToken::NONE, &r1).expect("cas"), "create");
    assert_eq!(s.get_task(&t).expect("get"), Some(r1));
    assert_eq!(s.task_epoch(&t).expect("epoch"), FencingToken(1));

    let r2 = record("web", 0, 2, Some("b"));
    applied(s.cas_task(FencingToken(1), &r2).expect("cas"), "advance");
    assert_eq!(s.get_task(&t).expect("get"), Some(r2.clone()));

    let running = TaskRecord {
        state: SlotState::Running,
        ..r2
    };
    applied(
        s.cas_task(FencingToken(2), &running).expect("cas"),
        "same epoch",
    );
    assert_eq!(s.get_task(&t).expect("get"), Some(running));
}

/// An epoch-checked write with the wrong expectation changes nothing and reports what is stored.
pub fn cas_conflict_reports_the_current_record<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let t = tid("web", 0);
    let r2 = record("web", 0, 2, Some("b"));
    applied(
        s.cas_task(FencingToken::NONE, &record("web", 0, 1, Some("a")))
            .expect("cas"),
        "create",
    );
    applied(s.cas_task(FencingToken(1), &r2).expect("cas"), "advance");

    // A controller that still believes epoch 1 loses.
    let stale = s
        .cas_task(FencingToken(1), &record("web", 0, 3, Some("c")))
        .expect("cas");
    assert_eq!(
        stale,
        CasOutcome::Conflict {
            current: Some(r2.clone()),
            stored_epoch: FencingToken(2)
        }
    );
    // So does one that believes the slot was never assigned.
    let fresh_view = s
        .cas_task(FencingToken::NONE, &record("web", 0, 5, Some("c")))
        .expect("cas");
    assert!(!fresh_view.is_applied());
    assert_eq!(s.get_task(&t).expect("get"), Some(r2));
    match stale.into_result(&t, FencingToken(1)) {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (FencingToken(1), FencingToken(2)));
        }
        other => panic!("expected a conflict error, got {other:?}"),
    }

    // Expecting an epoch on a slot that was never assigned: nothing to replace.
    let t7 = tid("web", 7);
    let outcome = s
        .cas_task(FencingToken(4), &record("web", 7, 5, Some("a")))
        .expect("cas");
    assert_eq!(
        outcome,
        CasOutcome::Conflict {
            current: None,
            stored_epoch: FencingToken::NONE
        }
    );
    assert!(matches!(
        outcome.into_result(&t7, FencingToken(4)),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_task(&t7).expect("get"), None);
}

/// A write whose epoch is lower than the one it expects is an error, whatever is stored.
pub fn cas_rejects_a_lower_epoch<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let t = tid("web", 0);
    let r3 = record("web", 0, 3, Some("a"));
    applied(
        s.cas_task(FencingToken::NONE, &r3).expect("cas"),
        "jump to 3",
    );

    let err = s
        .cas_task(FencingToken(3), &record("web", 0, 2, Some("b")))
        .expect_err("lower epoch");
    match err {
        StoreError::EpochRegression {
            task,
            expected,
            proposed,
        } => {
            assert_eq!(task, t);
            assert_eq!((expected, proposed), (FencingToken(3), FencingToken(2)));
        }
        other => panic!("expected EpochRegression, got {other}"),
    }
    // Also when the expectation is wrong anyway: a regression is a bug, reported as such.
    assert!(matches!(
        s.cas_task(FencingToken(9), &record("web", 0, 4, Some("b"))),
        Err(StoreError::EpochRegression { .. })
    ));
    assert_eq!(s.get_task(&t).expect("get"), Some(r3));
}

/// A state report applies to its own assignment only: a late report from an older epoch
/// never overwrites a newer assignment, and a report never creates a slot.
pub fn stale_state_report_is_ignored<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let t = tid("cron", 0);
    applied(
        s.cas_task(FencingToken::NONE, &record("cron", 0, 1, Some("a")))
            .expect("cas"),
        "assign to a",
    );
    applied(
        s.put_task_state(&t, FencingToken(1), SlotState::Running, 0, 10)
            .expect("report"),
        "report from a",
    );
    let got = s.get_task(&t).expect("get").expect("present");
    assert_eq!(got.state, SlotState::Running);
    assert_eq!(got.agent, Some(AgentId::new("a", 1)));
    assert_eq!(got.updated_unix_ms, 10);

    let r2 = record("cron", 0, 2, Some("b"));
    applied(s.cas_task(FencingToken(1), &r2).expect("cas"), "move to b");

    let late = s
        .put_task_state(&t, FencingToken(1), SlotState::Failed, 3, 20)
        .expect("late report");
    assert_eq!(
        late,
        CasOutcome::Conflict {
            current: Some(r2.clone()),
            stored_epoch: FencingToken(2)
        }
    );
    let future = s
        .put_task_state(&t, FencingToken(3), SlotState::Running, 0, 20)
        .expect("report from the future");
    assert!(!future.is_applied());
    assert_eq!(s.get_task(&t).expect("get"), Some(r2));

    let never = tid("cron", 1);
    let outcome = s
        .put_task_state(&never, FencingToken(1), SlotState::Running, 0, 20)
        .expect("report about an unknown slot");
    assert!(matches!(
        outcome.into_result(&never, FencingToken(1)),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_task(&never).expect("get"), None);
}

/// Listing by job returns that job's slots only, in numeric slot order, even when job names
/// are prefixes of each other.
pub fn tasks_are_listed_per_job_in_slot_order<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let slots = [
        ("web", 10),
        ("web", 2),
        ("web", 0),
        ("we", 1),
        ("web2", 0),
        ("web.x", 3),
    ];
    for (job, index) in slots {
        applied(
            s.cas_task(FencingToken::NONE, &record(job, index, 1, Some("a")))
                .expect("cas"),
            "create",
        );
    }
    let web: Vec<u32> = s
        .list_job_tasks(&JobName::new("web"))
        .expect("list web")
        .iter()
        .map(|r| r.task.index)
        .collect();
    assert_eq!(web, [0, 2, 10]);
    assert!(
        s.list_job_tasks(&JobName::new("nope"))
            .expect("list")
            .is_empty()
    );
    let all: Vec<(String, u32)> = s
        .list_tasks()
        .expect("list all")
        .iter()
        .map(|r| (r.task.job.to_string(), r.task.index))
        .collect();
    let mut expected: Vec<(String, u32)> = slots.iter().map(|(j, i)| (j.to_string(), *i)).collect();
    expected.sort();
    assert_eq!(all, expected);
}

/// Deleting a job's tasks removes its records but keeps each slot's epoch, so a job created
/// again continues from there: tokens never go back.
pub fn deleting_job_tasks_keeps_their_epochs<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let web0 = tid("web", 0);
    applied(
        s.cas_task(FencingToken::NONE, &record("web", 0, 3, Some("a")))
            .expect("cas"),
        "web/0",
    );
    applied(
        s.cas_task(FencingToken::NONE, &record("web", 1, 1, Some("a")))
            .expect("cas"),
        "web/1",
    );
    let api0 = record("api", 0, 1, Some("a"));
    applied(s.cas_task(FencingToken::NONE, &api0).expect("cas"), "api/0");

    s.delete_job_tasks(&JobName::new("web")).expect("delete");
    assert!(
        s.list_job_tasks(&JobName::new("web"))
            .expect("list")
            .is_empty()
    );
    assert_eq!(s.get_task(&web0).expect("get"), None);
    assert_eq!(s.list_tasks().expect("list"), [api0]);
    assert_eq!(s.task_epoch(&web0).expect("epoch"), FencingToken(3));
    assert_eq!(
        s.task_epoch(&tid("web", 1)).expect("epoch"),
        FencingToken(1)
    );

    // A controller that believes the slot is new loses, and learns the epoch to continue from.
    let outcome = s
        .cas_task(FencingToken::NONE, &record("web", 0, 1, Some("b")))
        .expect("cas");
    assert_eq!(
        outcome,
        CasOutcome::Conflict {
            current: None,
            stored_epoch: FencingToken(3)
        }
    );
    assert!(
        outcome
            .into_result(&web0, FencingToken::NONE)
            .expect_err("conflict")
            .is_conflict()
    );
    let r4 = record("web", 0, 4, Some("b"));
    applied(s.cas_task(FencingToken(3), &r4).expect("cas"), "continue");
    assert_eq!(s.get_task(&web0).expect("get"), Some(r4));

    s.delete_job_tasks(&JobName::new("web")).expect("delete");
    assert_eq!(s.task_epoch(&web0).expect("epoch"), FencingToken(4));
    s.delete_job_tasks(&JobName::new("none"))
        .expect("deleting the tasks of a job without tasks is a no-op");
}

/// A batch whose condition fails writes nothing; one whose conditions hold writes everything;
/// a regression anywhere fails the whole batch.
pub fn batches_are_all_or_nothing<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let web0 = record("web", 0, 1, Some("a"));
    applied(s.cas_task(FencingToken::NONE, &web0).expect("cas"), "web/0");

    let batch = |web_expected: u64| {
        vec![
            WriteOp::PutJob(job("x", 1)),
            WriteOp::CasTask {
                expected: FencingToken::NONE,
                record: record("x", 0, 1, Some("b")),
            },
            WriteOp::CasTask {
                expected: FencingToken(web_expected),
                record: record("web", 0, 2, Some("b")),
            },
            WriteOp::UpsertRecovery {
                record: Box::new(recovery("web/0@2:reschedule", 2)),
                unix_ms: 5,
            },
        ]
    };
    let outcome = s.apply(&batch(0)).expect("apply");
    assert_eq!(
        outcome,
        BatchOutcome::Conflict {
            index: 2,
            current: Some(web0.clone()),
            stored_epoch: FencingToken(1)
        }
    );
    assert_eq!(s.get_job(&JobName::new("x")).expect("get"), None);
    assert_eq!(s.get_task(&tid("x", 0)).expect("get"), None);
    assert_eq!(s.get_task(&tid("web", 0)).expect("get"), Some(web0));
    assert!(
        s.list_recoveries(&RecoveryQuery::all())
            .expect("list")
            .is_empty()
    );

    assert!(s.apply(&batch(1)).expect("apply").is_applied());
    assert_eq!(
        s.get_job(&JobName::new("x")).expect("get"),
        Some(job("x", 1))
    );
    assert_eq!(s.task_epoch(&tid("x", 0)).expect("epoch"), FencingToken(1));
    assert_eq!(
        s.task_epoch(&tid("web", 0)).expect("epoch"),
        FencingToken(2)
    );
    assert_eq!(
        s.list_recoveries(&RecoveryQuery::all())
            .expect("list")
            .len(),
        1
    );

    let regress = [
        WriteOp::PutJob(job("y", 1)),
        WriteOp::CasTask {
            expected: FencingToken(2),
            record: record("web", 0, 1, Some("c")),
        },
    ];
    assert!(matches!(
        s.apply(&regress),
        Err(StoreError::EpochRegression { .. })
    ));
    assert_eq!(s.get_job(&JobName::new("y")).expect("get"), None);
    assert!(s.apply(&[]).expect("empty batch").is_applied());
}

/// A batch may touch each key once (the rule of an etcd transaction); otherwise it is
/// refused as a whole.
pub fn batches_touch_each_key_once<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let cas = |job: &str, index, epoch| WriteOp::CasTask {
        expected: FencingToken::NONE,
        record: record(job, index, epoch, Some("a")),
    };
    let refused: Vec<Vec<WriteOp>> = vec![
        vec![
            cas("web", 0, 1),
            WriteOp::PutTaskState {
                task: tid("web", 0),
                epoch: FencingToken(1),
                state: SlotState::Running,
                failures: 0,
                updated_unix_ms: 0,
            },
        ],
        vec![cas("web", 0, 1), cas("web", 0, 2)],
        vec![
            WriteOp::DeleteJobTasks(JobName::new("web")),
            cas("web", 1, 1),
        ],
        vec![
            WriteOp::PutJob(job("web", 1)),
            WriteOp::DeleteJob(JobName::new("web")),
        ],
        vec![
            WriteOp::UpsertRecovery {
                record: Box::new(recovery("op", 1)),
                unix_ms: 1,
            },
            WriteOp::UpsertRecovery {
                record: Box::new(recovery("op", 1)),
                unix_ms: 2,
            },
        ],
    ];
    for ops in refused {
        let err = s.apply(&ops).expect_err("overlapping batch");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    }
    assert!(s.list_tasks().expect("list").is_empty());
    assert!(s.list_jobs().expect("list").is_empty());
    assert!(
        s.list_recoveries(&RecoveryQuery::all())
            .expect("list")
            .is_empty()
    );
    // Different slots of one job, and a job's spec with its tasks, are fine together.
    let ok = [
        cas("web", 0, 1),
        cas("web", 1, 1),
        WriteOp::PutJob(job("web", 2)),
    ];
    assert!(s.apply(&ok).expect("apply").is_applied());
}

/// Racing epoch-checked writers never lose an update: each applied write advances the epoch by
/// exactly one, so the final epoch equals the number of writes that won. Generations handed
/// out concurrently are all distinct.
pub fn concurrent_fenced_writes_never_lose_an_update<F: Fixture>(
    fresh: &impl Fn(StoreOptions) -> F,
) {
    const THREADS: usize = 4;
    const ROUNDS: usize = 12;
    let f = fresh_default(fresh);
    let s = f.store();
    let t = tid("race", 0);
    let won = AtomicU64::new(0);
    let generations = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for w in 0..THREADS {
            let (won, generations, t) = (&won, &generations, &t);
            scope.spawn(move || {
                let agent = format!("w{w}");
                for _ in 0..ROUNDS {
                    let e = s.task_epoch(t).expect("epoch");
                    let mut r = record("race", 0, e.0 + 1, Some(&agent));
                    r.failures = u32::try_from(w).unwrap_or(u32::MAX);
                    if s.cas_task(e, &r).expect("cas").is_applied() {
                        won.fetch_add(1, Ordering::SeqCst);
                    }
                    let g = s.next_generation("shared").expect("generation");
                    generations.lock().expect("lock").push(g);
                }
            });
        }
    });
    let won = won.load(Ordering::SeqCst);
    assert!(won >= 1);
    assert_eq!(s.task_epoch(&t).expect("epoch"), FencingToken(won));
    let mut generations = generations.into_inner().expect("lock");
    generations.sort_unstable();
    let expected: Vec<u64> = (1..=(THREADS * ROUNDS) as u64).collect();
    assert_eq!(generations, expected);
}

/// Generations start at 1 and strictly increase, per agent name.
pub fn generations_strictly_increase<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    assert_eq!(s.generation("a").expect("read"), None);
    assert_eq!(s.next_generation("a").expect("next"), 1);
    assert_eq!(s.next_generation("a").expect("next"), 2);
    assert_eq!(s.next_generation("b").expect("next"), 1);
    assert_eq!(s.next_generation("a").expect("next"), 3);
    assert_eq!(s.generation("a").expect("read"), Some(3));
    assert_eq!(s.generation("b").expect("read"), Some(1));
    assert_eq!(s.generation("c").expect("read"), None);
}

/// Events get strictly increasing sequence numbers from 1 and read back whole, in pages.
pub fn events_are_sequenced<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    assert_eq!(s.last_event_seq().expect("last"), 0);
    assert!(s.events_since(0, 10).expect("read").is_empty());
    let events: Vec<NewEvent> = (0..5u64)
        .map(|i| {
            NewEvent::new(1_000 + i, "agent.transition", format!("event {i}"))
                .agent(AgentId::new("a", 1))
                .task(tid("web", 0))
                .data(serde_json::json!({ "i": i, "to": "suspect" }))
        })
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(s.append_event(e).expect("append"), i as u64 + 1);
    }
    let all = s.events_since(0, 100).expect("read");
    assert_eq!(all.len(), 5);
    for (stored, e) in all.iter().zip(&events) {
        assert_eq!(stored, &e.stored(stored.seq));
        assert_eq!(stored.agent.as_deref(), Some("a#1"));
        assert_eq!(stored.task.as_deref(), Some("web/0"));
    }
    let page: Vec<u64> = s
        .events_since(2, 2)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, [3, 4]);
    assert!(s.events_since(5, 10).expect("read").is_empty());
    assert!(s.events_since(u64::MAX, 10).expect("read").is_empty());
    assert!(s.events_since(0, 0).expect("read").is_empty());
    assert_eq!(s.last_event_seq().expect("last"), 5);
}

/// Beyond `max_events`, each append drops the oldest; sequence numbers keep growing.
pub fn event_retention_drops_the_oldest<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh(StoreOptions {
        max_events: 3,
        ..StoreOptions::default()
    });
    let s = f.store();
    for i in 1..=5u64 {
        assert_eq!(
            s.append_event(&NewEvent::new(i, "k", "m")).expect("append"),
            i
        );
    }
    let seqs: Vec<u64> = s
        .events_since(0, 100)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(s.last_event_seq().expect("last"), 5);
    assert_eq!(
        s.append_event(&NewEvent::new(6, "k", "m")).expect("append"),
        6
    );
    assert_eq!(s.events_since(0, 100).expect("read").len(), 3);
}

/// A batch of events gets consecutive sequence numbers after the ones before it, in order;
/// retention holds across batches, also one larger than the bound or than one etcd
/// transaction.
pub fn event_batches_are_sequenced_and_bounded<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh(StoreOptions {
        max_events: 70,
        ..StoreOptions::default()
    });
    let s = f.store();
    assert_eq!(s.append_events(&[]).expect("empty batch"), 0);
    assert_eq!(
        s.append_event(&NewEvent::new(1, "k", "first"))
            .expect("append"),
        1
    );
    let batch: Vec<NewEvent> = (0..120u64)
        .map(|i| NewEvent::new(i, "k", format!("b{i}")))
        .collect();
    assert_eq!(s.append_events(&batch).expect("batch"), 121);
    assert_eq!(s.append_events(&[]).expect("empty batch"), 121);
    let kept = s.events_since(0, 1000).expect("read");
    let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (52..=121).collect::<Vec<u64>>());
    let messages: Vec<&str> = kept.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.first(), Some(&"b50"));
    assert_eq!(messages.last(), Some(&"b119"));
    assert_eq!(s.last_event_seq().expect("last"), 121);
}

/// Recoveries: upsert by operation id keeps the first insertion's place and wall-clock time;
/// listings go in insertion order, newest first, since a wall-clock time, with a limit.
pub fn recoveries_upsert_in_insertion_order<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let ops = ["c/0@2:reschedule", "a/0@5:reschedule", "b/0@1:reschedule"];
    for (i, op) in ops.iter().enumerate() {
        s.upsert_recovery(&recovery(op, 2), 1_000 * (i as u64 + 1))
            .expect("insert");
    }
    let mut done = recovery(ops[0], 2);
    done.started(Time::from_millis(1_500), false);
    s.upsert_recovery(&done, 4_000).expect("update");

    let got = s
        .get_recovery(&OperationId(ops[0].into()))
        .expect("get")
        .expect("present");
    assert_eq!(
        (got.seq, got.recorded_unix_ms, got.updated_unix_ms),
        (1, 1_000, 4_000)
    );
    assert_eq!(got.record, done);
    assert_eq!(got.record.outcome, Outcome::Succeeded);
    assert_eq!(
        s.get_recovery(&OperationId("nope".into())).expect("get"),
        None
    );

    let list = |q: RecoveryQuery| -> Vec<String> {
        s.list_recoveries(&q)
            .expect("list")
            .into_iter()
            .map(|r| r.record.op.0)
            .collect()
    };
    assert_eq!(list(RecoveryQuery::all()), ops);
    assert_eq!(list(RecoveryQuery::latest(2)), [ops[2], ops[1]]);
    let since = RecoveryQuery {
        since_unix_ms: Some(2_000),
        ..RecoveryQuery::default()
    };
    assert_eq!(list(since.clone()), [ops[1], ops[2]]);
    assert_eq!(
        list(RecoveryQuery {
            limit: Some(1),
            ..since
        }),
        [ops[1]]
    );
    assert!(
        list(RecoveryQuery {
            limit: Some(0),
            ..RecoveryQuery::default()
        })
        .is_empty()
    );
}

/// A value that would not read back (JSON has no infinity) is refused before anything is
/// written, also inside a batch.
pub fn unencodable_values_are_refused<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let s = f.store();
    let mut bad = recovery("web/0@2:reschedule", 2);
    bad.cause = Cause::Detector {
        suspicion: f64::INFINITY,
    };
    let err = s.upsert_recovery(&bad, 1).expect_err("infinite float");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert_eq!(s.get_recovery(&bad.op).expect("get"), None);

    let batch = [
        WriteOp::CasTask {
            expected: FencingToken::NONE,
            record: record("web", 0, 2, Some("b")),
        },
        WriteOp::UpsertRecovery {
            record: Box::new(bad),
            unix_ms: 1,
        },
    ];
    assert!(matches!(s.apply(&batch), Err(StoreError::Invalid { .. })));
    assert_eq!(s.get_task(&tid("web", 0)).expect("get"), None);
    assert!(
        s.list_recoveries(&RecoveryQuery::all())
            .expect("list")
            .is_empty()
    );
}

/// Everything survives closing and reopening the store (jobs, releases, tasks, ...), and every
/// counter continues where it was: generations, event and recovery sequence numbers, retired epochs.
pub fn data_survives_reopen<F: Fixture>(fresh: &impl Fn(StoreOptions) -> F) {
    let f = fresh_default(fresh);
    let (web0, api0);
    {
        let s = f.store();
        s.put_job(&job("web", 2)).expect("put");
        s.put_releases(&releases("web", 2)).expect("put releases");
        web0 = record("web", 0, 2, Some("a"));
        applied(s.cas_task(FencingToken::NONE, &web0).expect("cas"), "web/0");
        api0 = record("api", 0, 7, Some("b"));
        applied(s.cas_task(FencingToken::NONE, &api0).expect("cas"), "api/0");
        applied(
            s.cas_task(FencingToken::NONE, &record("old", 0, 9, None))
                .expect("cas"),
            "old/0",
        );
        s.delete_job_tasks(&JobName::new("old")).expect("retire");
        assert_eq!(s.next_generation("a").expect("gen"), 1);
        assert_eq!(s.next_generation("a").expect("gen"), 2);
        s.upsert_recovery(&recovery("r1", 2), 100).expect("upsert");
        assert_eq!(
            s.append_event(&NewEvent::new(1, "k", "one"))
                .expect("append"),
            1
        );
        assert_eq!(
            s.append_event(&NewEvent::new(2, "k", "two"))
                .expect("append"),
            2
        );
    }
    let f = f.reopen();
    let s = f.store();
    assert_eq!(names(&s.list_jobs().expect("list")), ["web"]);
    assert_eq!(s.list_releases().expect("list"), [releases("web", 2)]);
    assert_eq!(s.list_tasks().expect("list"), [api0, web0]);
    assert_eq!(
        s.task_epoch(&tid("old", 0)).expect("epoch"),
        FencingToken(9)
    );
    assert_eq!(s.generation("a").expect("gen"), Some(2));
    assert_eq!(s.next_generation("a").expect("gen"), 3);
    let recs = s.list_recoveries(&RecoveryQuery::all()).expect("list");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].record, recovery("r1", 2));
    s.upsert_recovery(&recovery("r2", 3), 200).expect("upsert");
    let r2 = s
        .get_recovery(&OperationId("r2".into()))
        .expect("get")
        .expect("present");
    assert_eq!(r2.seq, 2);
    assert_eq!(s.last_event_seq().expect("last"), 2);
    let messages: Vec<String> = s
        .events_since(0, 10)
        .expect("read")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(messages, ["one", "two"]);
    assert_eq!(
        s.append_event(&NewEvent::new(3, "k", "three"))
            .expect("append"),
        3
    );
}
