//! The state of the stateful task copies this agent runs (jobs with `[state]`; see
//! `docs/state.md`): one [`StateStore`] per copy in `<data dir>/state/<job>/`, its API served
//! on `<data dir>/state/<job>/api.sock` (inside the state's directory: no job name can
//! collide with it), kept open across restarts of the task in place and closed
//! when the copy stops for good. A primary's write lease follows the agent's lease, a little
//! shorter, so a primary whose agent lost the server refuses writes before anyone else may be
//! promoted.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warden_core::state::StateSpec;
use warden_core::{FencingToken, TaskId};
use warden_state::api::{ApiConfig, bind_unix, serve_listener};
use warden_state::store::{Limits, Role, StateStore};

/// How much shorter than the agent's lease a primary's write lease is.
pub const WRITE_LEASE_MARGIN: Duration = Duration::from_millis(100);

/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

struct Open {
    epoch: FencingToken,
    store: StateStore,
    cancel: CancellationToken,
    env: BTreeMap<String, String>,
}

/// What an assignment's state needs (see [`TaskStates::prepare`]).
#[derive(Debug)]
pub enum Prepared {
    /// Open at this epoch: the task's variables.
    Ready(BTreeMap<String, String>),
    /// To open, in this directory.
    Open(PathBuf),
    /// Being opened already (a repeated order).
    Opening,
}

/// The open states, by task.
pub struct TaskStates {
    dir: PathBuf,
    /// States being opened off the loop, by task, with the epoch.
    opening: HashMap<TaskId, FencingToken>,
    /// The tasks' user (uid, gid), when the agent runs them as another user: their sockets
    /// are theirs.
    owner: Option<(u32, u32)>,
    open: HashMap<TaskId, Open>,
    lease_until: Option<std::time::Instant>,
}

/// A random token for a task's socket: 128 bits from the kernel, in hex.
fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl TaskStates {
    /// States under `<data_dir>/state`, with sockets owned by `owner` (uid, gid) when the
    /// tasks run as another user.
    pub fn new(data_dir: &Path, owner: Option<(u32, u32)>) -> TaskStates {
        TaskStates {
            dir: data_dir.join("state"),
            opening: HashMap::new(),
            owner,
            open: HashMap::new(),
            lease_until: None,
        }
    }

    /// What an assignment of `task` at `epoch` needs: [`Prepared::Ready`] with the task's
    /// variables when its state is open at that epoch; [`Prepared::Open`] with what to open
    /// (off the agent's loop: reading a large log takes a while, and the loop sends the
    /// heartbeats) when it is not; [`Prepared::Opening`] when that is under way already.
    pub fn prepare(&mut self, task: &TaskId, epoch: FencingToken) -> Result<Prepared, String> {
        if let Some(open) = self.open.get(task) {
            if open.epoch == epoch {
                return Ok(Prepared::Ready(open.env.clone()));
            }
            if open.epoch > epoch {
                return Err(format!(
                    "state of {task} is open at epoch {}, newer than {epoch}",
                    open.epoch
                ));
            }
            self.release(task, open.epoch);
        }
        if let Some(&e) = self.opening.get(task) {
            if e >= epoch {
                return Ok(Prepared::Opening);
            }
            return Err(format!(
                "state of {task} is being opened at epoch {e}; the assignment at {epoch} will be taken when it is sent again"
            ));
        }
        let job = task.job.as_str();
        if job.is_empty() || job.contains(['/', '\0']) || job.starts_with('.') {
            return Err(format!("job name {job:?} cannot name a state directory"));
        }
        let data = self.dir.join(job);
        let sock = data.join("api.sock");
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "state socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --data-dir",
                sock.display()
            ));
        }
        self.opening.insert(task.clone(), epoch);
        Ok(Prepared::Open(data))
    }

    /// Open the state in `data` (blocking: run it off the agent's loop).
    pub fn open_store(
        data: &Path,
        task: &TaskId,
        epoch: FencingToken,
        spec: &StateSpec,
    ) -> Result<StateStore, String> {
        let (store, opened) = StateStore::open(
            data,
            Role::Primary,
            epoch.0,
            spec.standbys,
            Limits::default(),
        )
        .map_err(|e| format!("open the state of {task}: {e}"))?;
        if opened.torn_bytes > 0 {
            warn!(task = %task, bytes = opened.torn_bytes, "cut a torn write at the end of the state log");
        }
        info!(task = %task, epoch = epoch.0, seq = opened.seq, "state open");
        Ok(store)
    }

    /// The state [`TaskStates::open_store`] opened for `task` at `epoch`: serve its API and
    /// return the task's variables. `None` when the copy was stopped (or superseded) while
    /// its state opened: the store is closed again. Must run inside a tokio runtime.
    pub fn install(
        &mut self,
        task: &TaskId,
        epoch: FencingToken,
        spec: &StateSpec,
        store: StateStore,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        if self.opening.get(task) != Some(&epoch) {
            store.close();
            return Ok(None);
        }
        self.opening.remove(task);
        let sock = store.dir().join("api.sock");
        store.set_write_lease(self.lease_until);
        let token = match new_token() {
            Ok(t) => t,
            Err(e) => {
                store.close();
                return Err(format!("make a state token: {e}"));
            }
        };
        let listener = match bind_unix(&sock, self.owner) {
            Ok(l) => l,
            Err(e) => {
                store.close();
                return Err(format!("bind the state socket {}: {e}", sock.display()));
            }
        };
        let cancel = CancellationToken::new();
        let cfg = ApiConfig {
            ack: spec.ack(),
            token: Some(token.clone()),
        };
        {
            let (store, cancel, sock, task) =
                (store.clone(), cancel.clone(), sock.clone(), task.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_listener(listener, store, cfg, cancel).await {
                    warn!(task = %task, socket = %sock.display(), error = %e, "state API stopped");
                }
            });
        }
        let env = BTreeMap::from([
            ("WARDEN_STATE_SOCK".to_string(), sock.display().to_string()),
            ("WARDEN_STATE_TOKEN".to_string(), token),
            (
                "WARDEN_ROLE".to_string(),
                Role::Primary.as_str().to_string(),
            ),
        ]);
        self.open.insert(
            task.clone(),
            Open {
                epoch,
                store,
                cancel,
                env: env.clone(),
            },
        );
        Ok(Some(env))
    }

    /// The opening of `task`'s state at `epoch` failed, or its copy was stopped meanwhile:
    /// forget it (a store it opens is closed again by [`TaskStates::install`]).
    pub fn forget_opening(&mut self, task: &TaskId, epoch: FencingToken) {
        if self.opening.get(task) == Some(&epoch) {
            self.opening.remove(task);
        }
    }

    /// The agent's lease now runs until `until`: primaries take writes until a little before.
    pub fn set_lease(&mut self, until: Option<std::time::Instant>) {
        let until = until.map(|u| u.checked_sub(WRITE_LEASE_MARGIN).unwrap_or(u));
        self.lease_until = until;
        for open in self.open.values() {
            open.store.set_write_lease(until);
        }
    }

    /// The copy of `task` at `epoch` stopped for good: stop serving its API and close its
    /// state (kept on disk); a state still opening for it is closed once opened.
    pub fn release(&mut self, task: &TaskId, epoch: FencingToken) {
        if self.opening.get(task) == Some(&epoch) {
            self.opening.remove(task);
        }
        if self.open.get(task).is_some_and(|o| o.epoch == epoch)
            && let Some(open) = self.open.remove(task)
        {
            open.cancel.cancel();
            open.store.close();
            info!(task = %task, epoch = epoch.0, "state closed");
        }
    }

    /// Close every state (the agent stops, or its generation ended).
    pub fn close_all(&mut self) {
        self.opening.clear();
        for (task, open) in self.open.drain() {
            open.cancel.cancel();
            open.store.close();
            info!(task = %task, "state closed");
        }
    }

    /// The store of `task`, if open.
    pub fn store(&self, task: &TaskId) -> Option<&StateStore> {
        self.open.get(task).map(|o| &o.store)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use warden_core::JobName;

    fn task() -> TaskId {
        TaskId::new(JobName::new("ledger"), 0)
    }

    #[tokio::test]
    async fn a_state_opens_once_and_a_stop_while_it_opens_closes_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut states = TaskStates::new(dir.path(), None);
        let spec = StateSpec {
            standbys: 0,
            ..StateSpec::default()
        };
        let (t, e) = (task(), FencingToken(3));
        let Prepared::Open(data) = states.prepare(&t, e).unwrap() else {
            panic!("a first assignment opens the state");
        };
        // The order sent again while the state opens: nothing more to do.
        assert!(matches!(states.prepare(&t, e).unwrap(), Prepared::Opening));
        let store = TaskStates::open_store(&data, &t, e, &spec).unwrap();
        let env = states.install(&t, e, &spec, store).unwrap().unwrap();
        assert!(env["WARDEN_STATE_SOCK"].ends_with("ledger/api.sock"));
        assert_eq!(env["WARDEN_ROLE"], "primary");
        assert!(matches!(states.prepare(&t, e).unwrap(), Prepared::Ready(_)));
        // An older epoch is refused; a newer one closes this state and opens again.
        assert!(states.prepare(&t, FencingToken(2)).is_err());
        let Prepared::Open(data) = states.prepare(&t, FencingToken(4)).unwrap() else {
            panic!("a newer epoch opens the state again");
        };
        assert!(states.store(&t).is_none());
        // Stopped while opening: the opened store is closed, the task is not started.
        states.forget_opening(&t, FencingToken(4));
        let store = TaskStates::open_store(&data, &t, FencingToken(4), &spec).unwrap();
        assert_eq!(
            states.install(&t, FencingToken(4), &spec, store).unwrap(),
            None
        );
        assert!(states.store(&t).is_none());
        states.close_all();
    }
}
