//! How values sit in the store: JSON (serde_json), one value per key, guarded by one schema
//! version for the whole store.
//!
//! JSON because the values are small, rarely written (fsync dominates by far), and readable
//! with `redb`-agnostic tools or `etcdctl get` when something goes wrong. The schema version is
//! a single key rather than a per-value envelope: every value of a store is written by the
//! same schema, and several domain types refuse unknown fields (`deny_unknown_fields`), so a
//! store written by a newer schema must be refused as a whole at open time — not discovered
//! value by value in the middle of a recovery.
//!
//! Every value is checked to read back before it is written ([`encode`]): JSON cannot hold an
//! infinite float, for instance, and a record that cannot be read back would turn into a
//! "corrupt store" error at the worst moment. Every read names its key when it fails
//! ([`decode`]), and checks that the value belongs to the key it was found under.

use serde::Serialize;
use serde::de::DeserializeOwned;
use warden_core::release::JobReleases;
use warden_core::{JobSpec, TaskId};

use crate::error::{Result, StoreError};
use crate::model::{StoredEvent, StoredRecovery, TaskRecord};

/// Schema version written by this build. Bump it (and add a migration in every back end's
/// open) whenever a stored value changes shape incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

/// Check a schema version found in a store against this build's.
pub(crate) fn check_schema(found: u64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        return Err(StoreError::corrupt(
            "meta/schema_version",
            "schema version 0 was never written by Warden",
        ));
    }
    // Versions 1..=SCHEMA_VERSION: nothing to migrate yet.
    Ok(())
}

/// Human-readable key names, used in errors and as the etcd key layout.
pub(crate) mod keys {
    use std::fmt::Display;

    /// `jobs/{name}`
    pub fn job(name: impl Display) -> String {
        format!("jobs/{name}")
    }
    /// `tasks/{job}/{index}`
    pub fn task(job: impl Display, index: u32) -> String {
        format!("tasks/{job}/{index}")
    }
    /// `releases/{job}`
    pub fn releases(job: impl Display) -> String {
        format!("releases/{job}")
    }
    /// `generations/{agent}`
    pub fn generation(agent: impl Display) -> String {
        format!("generations/{agent}")
    }
    /// `recoveries/{op}`
    pub fn recovery(op: impl Display) -> String {
        format!("recoveries/{op}")
    }
    /// `events/{seq}`
    pub fn event(seq: u64) -> String {
        format!("events/{seq}")
    }
}

/// Encode `value` as JSON, refusing values that would not read back.
pub(crate) fn encode<T: Serialize + DeserializeOwned>(what: &str, value: &T) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| StoreError::invalid(format!("encode {what}"), e.to_string()))?;
    serde_json::from_slice::<T>(&bytes).map_err(|e| {
        StoreError::invalid(
            format!("encode {what}"),
            format!("the value would not read back ({e}); non-finite numbers cannot be stored"),
        )
    })?;
    Ok(bytes)
}

/// Decode a JSON value read from `what`.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(what, e.to_string()))
}

/// Decode a job stored under `name`.
pub(crate) fn decode_job(name: &str, bytes: &[u8]) -> Result<JobSpec> {
    let what = keys::job(name);
    let spec: JobSpec = decode(&what, bytes)?;
    if spec.name.as_str() != name {
        return Err(StoreError::corrupt(
            what,
            format!("holds job {:?}", spec.name.as_str()),
        ));
    }
    Ok(spec)
}

/// Decode a job's releases stored under `job`.
pub(crate) fn decode_releases(job: &str, bytes: &[u8]) -> Result<JobReleases> {
    let what = keys::releases(job);
    let releases: JobReleases = decode(&what, bytes)?;
    if releases.job.as_str() != job {
        return Err(StoreError::corrupt(
            what,
            format!("holds the releases of job {:?}", releases.job.as_str()),
        ));
    }
    Ok(releases)
}

/// Decode a task record stored under `job`/`index`.
pub(crate) fn decode_task(job: &str, index: u32, bytes: &[u8]) -> Result<TaskRecord> {
    let what = keys::task(job, index);
    let rec: TaskRecord = decode(&what, bytes)?;
    if rec.task.job.as_str() != job || rec.task.index != index {
        return Err(StoreError::corrupt(
            what,
            format!("holds task {}", rec.task),
        ));
    }
    Ok(rec)
}

/// Decode a recovery stored under `op`.
pub(crate) fn decode_recovery(op: &str, bytes: &[u8]) -> Result<StoredRecovery> {
    let what = keys::recovery(op);
    let rec: StoredRecovery = decode(&what, bytes)?;
    if rec.record.op.0 != op {
        return Err(StoreError::corrupt(
            what,
            format!("holds operation {}", rec.record.op),
        ));
    }
    Ok(rec)
}

/// Decode an event stored under `seq`.
pub(crate) fn decode_event(seq: u64, bytes: &[u8]) -> Result<StoredEvent> {
    let what = keys::event(seq);
    let ev: StoredEvent = decode(&what, bytes)?;
    if ev.seq != seq {
        return Err(StoreError::corrupt(what, format!("holds event {}", ev.seq)));
    }
    Ok(ev)
}

/// The key parts of a task id.
pub(crate) fn task_parts(task: &TaskId) -> (&str, u32) {
    (task.job.as_str(), task.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::planner::SlotState;
    use warden_core::{AgentId, FencingToken, JobName};

    fn task_id(job: &str, index: u32) -> TaskId {
        TaskId::new(JobName::new(job), index)
    }

    fn record() -> TaskRecord {
        TaskRecord {
            task: task_id("web", 3),
            epoch: FencingToken(7),
            agent: Some(AgentId::new("a", 2)),
            state: SlotState::Running,
            failures: 1,
            updated_unix_ms: 1_700_000_000_000,
            replica: None,
            version: 0,
        }
    }

    #[test]
    fn values_round_trip_and_name_their_key_when_corrupt() {
        let bytes = encode("tasks/web/3", &record()).expect("encode");
        assert_eq!(decode_task("web", 3, &bytes).expect("decode"), record());
        let err = decode_task("web", 3, b"{not json").expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == "tasks/web/3"),
            "{err}"
        );
        // A valid value under the wrong key is corrupt too.
        let err = decode_task("web", 4, &bytes).expect_err("misplaced");
        assert!(err.to_string().contains("holds task web/3"), "{err}");
    }

    #[test]
    fn values_that_would_not_read_back_are_refused() {
        let err = encode("x", &f64::INFINITY).expect_err("inf");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    }

    #[test]
    fn schema_versions_newer_than_ours_are_refused() {
        assert!(check_schema(SCHEMA_VERSION).is_ok());
        assert!(matches!(
            check_schema(SCHEMA_VERSION + 1),
            Err(StoreError::SchemaTooNew { found, supported })
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
        assert!(matches!(check_schema(0), Err(StoreError::Corrupt { .. })));
    }
}
