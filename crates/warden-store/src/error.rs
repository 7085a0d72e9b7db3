//! The one error type of the store, shaped for callers to branch on: a lost compare-and-set
//! race ([`StoreError::Conflict`]) calls for a re-read and a new plan, a corrupt value for an
//! operator, an unavailable back end for a retry ([`StoreError::is_retryable`]).
//!
//! Messages carry what was being done as a present-tense verb phrase ("open store file") and
//! name the key involved, so a log line alone says where to look.

use std::io;
use std::path::PathBuf;

use warden_core::{FencingToken, TaskId};

/// Result of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An epoch-checked write lost: the task slot's stored epoch is not the one the caller expected.
    /// Someone else assigned the task in between (or the slot was deleted). Re-read the slot
    /// and plan again; retrying the same write can never succeed.
    #[error("write task {task} expecting epoch {expected}: the store holds epoch {actual}")]
    Conflict {
        /// The task slot.
        task: TaskId,
        /// The epoch the writer expected.
        expected: FencingToken,
        /// The epoch the store holds.
        actual: FencingToken,
    },
    /// An epoch-checked write proposed an epoch lower than the one it expected to replace. Fencing
    /// tokens never go back, so this is a bug in the caller, never a race.
    #[error(
        "write task {task}: proposed epoch {proposed} is lower than expected epoch {expected}; \
         fencing tokens never go back"
    )]
    EpochRegression {
        /// The task slot.
        task: TaskId,
        /// The epoch the writer expected to find.
        expected: FencingToken,
        /// The lower epoch it tried to write.
        proposed: FencingToken,
    },
    /// A record the operation needs does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `task web/0`.
        what: String,
    },
    /// A stored value (or the store file) cannot be read back. Never retried, never ignored:
    /// an operator must look. `what` names the key, e.g. `tasks/web/0`.
    #[error("read {what}: stored data is corrupt: {reason}")]
    Corrupt {
        /// The key or structure that is corrupt.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error from the file system.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `open store file`.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The store was written by a newer Warden with a schema this build does not understand.
    /// Opening it anyway could lose fields the newer version relies on.
    #[error(
        "open store: schema version {found} is newer than this build supports ({supported}); \
         run a Warden release that supports it"
    )]
    SchemaTooNew {
        /// Schema version found in the store.
        found: u64,
        /// Newest schema version this build supports.
        supported: u64,
    },
    /// Another process (or another handle in this process) has the store file open.
    #[error("open store file {path}: it is already open by another process or handle")]
    AlreadyOpen {
        /// Path of the store file.
        path: PathBuf,
    },
    /// The caller asked for something the store cannot do: a value that cannot be encoded so
    /// that it reads back (e.g. an infinite float), a batch touching one key twice, a zero
    /// retention limit.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was rejected.
        what: String,
        /// Why.
        reason: String,
    },
    /// The back end cannot be reached right now (e.g. no etcd quorum, a timeout). The write
    /// may or may not have been applied; every write of this crate is safe to retry.
    #[error("{context}: store unavailable: {message}")]
    Unavailable {
        /// What was being done.
        context: &'static str,
        /// The back end's message.
        message: String,
    },
    /// A replicated back end refused the write because this server no longer leads the
    /// control plane. Stop acting as leader. The embedded back end never returns it.
    #[error("{context}: this server is no longer the leader")]
    NotLeader {
        /// What was being done.
        context: &'static str,
    },
    /// Any other back-end failure.
    #[error("{context}: {message}")]
    Backend {
        /// What was being done.
        context: &'static str,
        /// The back end's message.
        message: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed. A conflict is not retryable: the same
    /// epoch-checked write will lose again; re-read and plan instead.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            StoreError::Conflict { .. }
            | StoreError::EpochRegression { .. }
            | StoreError::NotFound { .. }
            | StoreError::Corrupt { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::AlreadyOpen { .. }
            | StoreError::Invalid { .. }
            | StoreError::NotLeader { .. }
            | StoreError::Backend { .. } => false,
        }
    }

    /// Whether the back end could not be reached or could not decide (etcd unreachable, no
    /// quorum, deadline exceeded): the server goes read-only on it and retries.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Whether a replicated back end refused a write because this server no longer leads.
    pub fn is_not_leader(&self) -> bool {
        matches!(self, StoreError::NotLeader { .. })
    }

    /// Whether this is a lost epoch-checked write ([`StoreError::Conflict`]).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::JobName;

    #[test]
    fn only_transient_failures_are_retryable() {
        let task = TaskId::new(JobName::new("web"), 0);
        let conflict = StoreError::Conflict {
            task,
            expected: FencingToken(1),
            actual: FencingToken(2),
        };
        assert!(!conflict.is_retryable());
        assert!(conflict.is_conflict());
        assert!(
            StoreError::Unavailable {
                context: "commit",
                message: "timeout".into()
            }
            .is_retryable()
        );
        let io = |kind| StoreError::Io {
            context: "open store file",
            source: io::Error::from(kind),
        };
        assert!(io(io::ErrorKind::Interrupted).is_retryable());
        assert!(!io(io::ErrorKind::PermissionDenied).is_retryable());
        assert!(!StoreError::corrupt("jobs/web", "bad json").is_retryable());
    }

    #[test]
    fn messages_name_the_key_and_the_action() {
        let e = StoreError::corrupt("tasks/web/0", "expected value at line 1 column 1");
        assert_eq!(
            e.to_string(),
            "read tasks/web/0: stored data is corrupt: expected value at line 1 column 1"
        );
        let e = StoreError::SchemaTooNew {
            found: 9,
            supported: 1,
        };
        assert!(e.to_string().contains("schema version 9"), "{e}");
    }
}
