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

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warden_core::state::{ReplicaOrder, StateSpec};
use warden_core::{FencingToken, TaskId};
use warden_state::api::{ApiConfig, bind_unix, serve_listener};
use warden_state::repl::{FollowReport, Primaries, follow_forever};
use warden_state::restore::Aligned;
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
    /// A standby's stream from its primary: the primary's address, and how to stop it.
    follower: Option<(String, CancellationToken, Arc<Mutex<FollowReport>>)>,
    /// A primary sealed for a planned switchover: it takes no writes.
    sealed: bool,
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
    /// Socket owners of jobs that run as a user of their own (`--task-uids`).
    job_owners: BTreeMap<String, (u32, u32)>,
    open: HashMap<TaskId, Open>,
    lease_until: Option<std::time::Instant>,
    /// The primaries this agent serves to standbys (its replication listener).
    primaries: Primaries,
    /// This agent's name: what it says when it follows a primary.
    name: String,
    /// Mutual TLS for replication, both ways (`None`: plain TCP).
    tls: Option<Arc<warden_state::tls::ReplTls>>,
    /// The newest role order of each replica copy, by task: (copy epoch, role).
    roles: HashMap<TaskId, (FencingToken, ReplicaOrder)>,
    /// Warm standbys (`mode = "warm"`): their state is open and follows the primary, their
    /// task is not started until promoted. By task: (copy epoch, what to start).
    warm: HashMap<TaskId, (FencingToken, crate::supervisor::TaskSpec)>,
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
            job_owners: BTreeMap::new(),
            open: HashMap::new(),
            lease_until: None,
            primaries: Primaries::default(),
            tls: None,
            name: String::new(),
            roles: HashMap::new(),
            warm: HashMap::new(),
        }
    }

    /// Hold `spec` of a warm standby's copy instead of starting it: its state follows the
    /// primary; [`TaskStates::promoted_warm`] hands the task back once it is promoted.
    pub fn hold_warm(&mut self, spec: crate::supervisor::TaskSpec) {
        self.warm.insert(spec.task.clone(), (spec.epoch, spec));
    }

    /// The task of a warm standby's copy that is now its job's primary, to be started, with
    /// its role and epoch in its environment. `None` while it is a standby, or not warm.
    pub fn promoted_warm(&mut self, task: &TaskId) -> Option<crate::supervisor::TaskSpec> {
        let (epoch, _) = self.warm.get(task)?;
        let open = self.open.get(task).filter(|o| o.epoch == *epoch)?;
        let role = open.store.role();
        if role.role != Role::Primary {
            return None;
        }
        let (_, mut spec) = self.warm.remove(task)?;
        spec.env
            .insert("WARDEN_ROLE".into(), role.role.as_str().into());
        spec.env
            .insert("WARDEN_STATE_EPOCH".into(), role.epoch.to_string());
        Some(spec)
    }

    /// Whether the copy of `task` at `epoch` is a warm standby's (held, not started); a
    /// stop of it is then only the release of its state.
    pub fn is_warm(&self, task: &TaskId, epoch: FencingToken) -> bool {
        self.warm.get(task).is_some_and(|(e, _)| *e == epoch)
    }

    /// The warm standbys' copies: (task, copy epoch).
    pub fn warm_copies(&self) -> Vec<(TaskId, FencingToken)> {
        let mut v: Vec<_> = self
            .warm
            .iter()
            .map(|(t, (e, _))| (t.clone(), *e))
            .collect();
        v.sort();
        v
    }

    /// The sockets of `job`'s tasks belong to this (uid, gid): its own user (`--task-uids`).
    pub fn set_job_owner(&mut self, job: &str, owner: (u32, u32)) {
        self.job_owners.insert(job.to_string(), owner);
    }

    /// Serve replication as agent `name`, over mutual TLS with the agent's identity when
    /// `tls` is given (standbys then follow over TLS too): the registry the replication
    /// listener serves.
    pub fn replicate_as(
        &mut self,
        name: &str,
        tls: Option<Arc<warden_state::tls::ReplTls>>,
    ) -> Primaries {
        self.name = name.to_string();
        self.tls.clone_from(&tls);
        self.primaries.clone().with_tls(tls)
    }

    /// The role the server gave the copy of `task` at `epoch` (from its assignment, or a role
    /// order): kept, and carried out at once when its state is open.
    pub fn set_replica(&mut self, task: &TaskId, epoch: FencingToken, order: ReplicaOrder) {
        if self
            .roles
            .get(task)
            .is_some_and(|(e, o)| *e > epoch || (*e == epoch && o.epoch > order.epoch))
        {
            return; // older than what this agent was told
        }
        self.roles.insert(task.clone(), (epoch, order));
        self.apply_role(task);
    }

    /// The role to open `task`'s state in, at `epoch`: (role, state epoch).
    pub fn role_for(&self, task: &TaskId, epoch: FencingToken) -> Option<(Role, u64)> {
        let (e, o) = self.roles.get(task)?;
        (*e == epoch).then(|| {
            let role = if o.primary {
                Role::Primary
            } else {
                Role::Standby
            };
            (role, o.epoch)
        })
    }

    fn apply_role(&mut self, task: &TaskId) {
        let Some((epoch, order)) = self.roles.get(task).cloned() else {
            return;
        };
        let Some(open) = self.open.get_mut(task).filter(|o| o.epoch == epoch) else {
            return;
        };
        let job = task.job.as_str();
        let now = open.store.role();
        if order.primary {
            if let Some((_, cancel, _)) = open.follower.take() {
                cancel.cancel();
            }
            let fresh = now.role != Role::Primary || now.epoch < order.epoch;
            if fresh {
                match open.store.promote(order.epoch) {
                    Ok(seq) => {
                        info!(task = %task, epoch = order.epoch, seq, "state promoted to primary");
                    }
                    Err(e) => {
                        warn!(task = %task, epoch = order.epoch, error = %e, "promotion refused");
                        return;
                    }
                }
            }
            if order.sealed && !open.sealed {
                // A planned switchover: no more writes (its standby catches up, then is
                // promoted). The write lease ends now.
                open.sealed = true;
                open.store.set_write_lease(Some(std::time::Instant::now()));
                info!(task = %task, epoch = order.epoch, seq = open.store.position().0, "state sealed for a switchover");
            } else if !order.sealed && open.sealed {
                open.sealed = false;
                open.store.set_write_lease(self.lease_until);
                info!(task = %task, epoch = order.epoch, "state unsealed: the switchover was abandoned");
            }
            let (in_sync, roster) = (order.in_sync.clone(), order.standbys.clone());
            if fresh
                || !self
                    .primaries
                    .set_in_sync(job, in_sync.clone(), roster.clone())
            {
                self.primaries.insert(job, open.store.clone(), Vec::new());
                self.primaries.set_in_sync(job, in_sync, roster);
            }
            return;
        }
        // A standby: deposed if it was primary, and following the primary named.
        if open.sealed {
            open.sealed = false;
            open.store.set_write_lease(self.lease_until);
        }
        if now.role == Role::Primary || now.epoch < order.epoch {
            self.primaries.remove(job);
            if let Err(e) = open.store.demote(order.epoch) {
                warn!(task = %task, epoch = order.epoch, error = %e, "demotion refused");
                return;
            }
        }
        let same = open
            .follower
            .as_ref()
            .is_some_and(|(addr, _, _)| *addr == follow_key(&order));
        if same {
            return;
        }
        if let Some((_, cancel, _)) = open.follower.take() {
            cancel.cancel();
        }
        let Ok(addr) = order.primary_addr.parse::<std::net::SocketAddr>() else {
            return; // no primary to follow yet
        };
        let cancel = CancellationToken::new();
        let report = Arc::new(Mutex::new(FollowReport::default()));
        let dial = warden_state::repl::Dial {
            addr,
            tls: self.tls.clone(),
            primary: (!order.primary_agent.is_empty()).then(|| order.primary_agent.clone()),
        };
        tokio::spawn(follow_forever(
            dial,
            job.to_string(),
            self.name.clone(),
            open.store.clone(),
            report.clone(),
            cancel.clone(),
        ));
        info!(task = %task, primary = %addr, epoch = order.epoch, "following the primary");
        open.follower = Some((follow_key(&order), cancel, report));
    }

    /// The standbys the primary copy of `task` waits for (empty unless it is one).
    pub fn in_sync(&self, task: &TaskId) -> Vec<String> {
        if !self.roles.get(task).is_some_and(|(_, o)| o.primary) {
            return Vec::new();
        }
        self.primaries.in_sync(task.job.as_str())
    }

    /// What an assignment of `task` at `epoch` needs: [`Prepared::Ready`] with the task's
    /// variables when its state is open at that epoch; [`Prepared::Open`] with what to open
    /// (off the agent's loop: reading a large log takes a while, and the loop sends the
    /// heartbeats) when it is not; [`Prepared::Opening`] when that is under way already.
    pub fn prepare(&mut self, task: &TaskId, epoch: FencingToken) -> Result<Prepared, String> {
        if let Some(open) = self.open.get(task) {
            if open.epoch == epoch {
                // A restart in place: the role may have changed since the launch.
                let mut env = open.env.clone();
                let role = open.store.role();
                env.insert("WARDEN_ROLE".into(), role.role.as_str().into());
                env.insert("WARDEN_STATE_EPOCH".into(), role.epoch.to_string());
                return Ok(Prepared::Ready(env));
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
    /// `role`: the replica's role and state epoch when the job keeps standbys (see
    /// [`TaskStates::role_for`]); without, the copy is the only replica, primary at its
    /// fencing token.
    ///
    /// A single-replica state (no standbys) is first brought to `data_epoch`, the copy's
    /// version's: a restore point is taken before the data epoch rises, and one put back
    /// when it falls (`warden_state::restore`); a fall with no restore point to go back to
    /// refuses the copy, with the reason. `None` (a server of protocol 3 or older, which
    /// does not say it) leaves the state's data epoch as it is.
    pub fn open_store(
        data: &Path,
        task: &TaskId,
        epoch: FencingToken,
        spec: &StateSpec,
        role: Option<(Role, u64)>,
        data_epoch: Option<u32>,
    ) -> Result<StateStore, String> {
        // Held from here until the store is closed: a store of this directory still
        // closing (a copy stopped a moment ago) finishes first.
        let dir_lock = warden_state::restore::DirLock::acquire(data)
            .map_err(|e| format!("state of {task}: {e}"))?;
        if let Some(data_epoch) = data_epoch.filter(|_| role.is_none() && spec.standbys == 0) {
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            match warden_state::restore::align(data, data_epoch, unix_ms)
                .map_err(|e| format!("state of {task}: {e}"))?
            {
                Aligned::Took { from } => info!(
                    task = %task, from, to = data_epoch,
                    "data epoch rises: took a restore point of the state first"
                ),
                Aligned::Restored {
                    from,
                    point,
                    set_aside,
                } => warn!(
                    task = %task, from, to = data_epoch, point,
                    set_aside = %set_aside.display(),
                    "data epoch falls: put the restore point back; the data written since is set aside"
                ),
                Aligned::Fresh | Aligned::Same | Aligned::Adopted => {}
            }
        }
        let (role, epoch) = role.unwrap_or((Role::Primary, epoch.0));
        let (store, opened) = StateStore::open(data, role, epoch, spec.standbys, Limits::default())
            .map_err(|e| format!("open the state of {task}: {e}"))?;
        store.hold(dir_lock);
        if opened.torn_bytes > 0 {
            warn!(task = %task, bytes = opened.torn_bytes, "cut a torn write at the end of the state log");
        }
        info!(task = %task, epoch, role = role.as_str(), seq = opened.seq, "state open");
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
        let owner = self
            .job_owners
            .get(task.job.as_str())
            .copied()
            .or(self.owner);
        let listener = match bind_unix(&sock, owner) {
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
                store.role().role.as_str().to_string(),
            ),
            (
                "WARDEN_STATE_EPOCH".to_string(),
                store.role().epoch.to_string(),
            ),
        ]);
        self.open.insert(
            task.clone(),
            Open {
                epoch,
                store,
                cancel,
                env: env.clone(),
                follower: None,
                sealed: false,
            },
        );
        self.apply_role(task);
        Ok(Some(env))
    }

    /// The opening of `task`'s state at `epoch` failed, or its copy was stopped meanwhile:
    /// forget it (a store it opens is closed again by [`TaskStates::install`]).
    pub fn forget_opening(&mut self, task: &TaskId, epoch: FencingToken) {
        if self.opening.get(task) == Some(&epoch) {
            self.opening.remove(task);
        }
    }

    /// The agent's lease now runs until `until`: primaries take writes until a little before
    /// (a sealed one takes none).
    pub fn set_lease(&mut self, until: Option<std::time::Instant>) {
        let until = until.map(|u| u.checked_sub(WRITE_LEASE_MARGIN).unwrap_or(u));
        self.lease_until = until;
        for open in self.open.values().filter(|o| !o.sealed) {
            open.store.set_write_lease(until);
        }
    }

    /// The in-sync standbys the primary copy of `task` asks the server to take out of the set
    /// (they held up writes for [`warden_core::state::STANDBY_LAG_LIMIT`]); empty unless it is
    /// the primary.
    pub fn lagging(&self, task: &TaskId) -> Vec<String> {
        if !self.roles.get(task).is_some_and(|(_, o)| o.primary) {
            return Vec::new();
        }
        self.open.get(task).map_or_else(Vec::new, |o| {
            o.store.lagging(warden_core::state::STANDBY_LAG_LIMIT)
        })
    }

    /// What the copy of `task` reports of its replicated state: the last sequence number it
    /// holds (applied: a promotion keeps every entry applied, synced or not; once fenced, a
    /// standby applies no frame of the lost primary's epoch, so every write that primary can
    /// ever have acknowledged with this standby's help is counted), whether it is sealed, the
    /// highest state epoch it has seen and the epoch of its newest entry.
    pub fn progress(&self, task: &TaskId) -> Progress {
        let Some(open) = self
            .open
            .get(task)
            .filter(|_| self.roles.contains_key(task))
        else {
            return Progress::default();
        };
        let role = open.store.role();
        let (seq, last_epoch) = open.store.position();
        Progress {
            seq,
            sealed: role.role == Role::Primary && open.sealed,
            fence: role.epoch,
            last_epoch,
        }
    }

    /// The copy of `task` at `epoch` stopped for good: stop serving its API and close its
    /// state (kept on disk); a state still opening for it is closed once opened.
    pub fn release(&mut self, task: &TaskId, epoch: FencingToken) {
        if self.warm.get(task).is_some_and(|(e, _)| *e <= epoch) {
            self.warm.remove(task);
        }
        if self.opening.get(task) == Some(&epoch) {
            self.opening.remove(task);
        }
        if self.roles.get(task).is_some_and(|(e, _)| *e <= epoch) {
            self.roles.remove(task);
        }
        if self.open.get(task).is_some_and(|o| o.epoch == epoch)
            && let Some(open) = self.open.remove(task)
        {
            close(task, open, &self.primaries);
            info!(task = %task, epoch = epoch.0, "state closed");
        }
    }

    /// Close every state (the agent stops, or its generation ended).
    pub fn close_all(&mut self) {
        self.opening.clear();
        self.warm.clear();
        self.roles.clear();
        for (task, open) in self.open.drain() {
            close(&task, open, &self.primaries);
            info!(task = %task, "state closed");
        }
    }

    /// The store of `task`, if open.
    pub fn store(&self, task: &TaskId) -> Option<&StateStore> {
        self.open.get(task).map(|o| &o.store)
    }
}

/// What a replica copy reports of its state in the heartbeats ([`TaskStates::progress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last sequence number it holds (applied).
    pub seq: u64,
    /// A primary sealed for a planned switchover.
    pub sealed: bool,
    /// The highest state epoch it has seen (its role's epoch): it refuses older frames.
    pub fence: u64,
    /// The epoch of its newest entry.
    pub last_epoch: u64,
}

fn close(task: &TaskId, open: Open, primaries: &Primaries) {
    if let Some((_, cancel, _)) = open.follower {
        cancel.cancel();
    }
    if open.store.role().role == Role::Primary {
        primaries.remove(task.job.as_str());
    }
    open.cancel.cancel();
    open.store.close();
}

/// What a follower follows: the primary's address and agent (a new primary agent at the same
/// address is a new follow).
fn follow_key(order: &ReplicaOrder) -> String {
    format!("{}@{}", order.primary_agent, order.primary_addr)
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
        let store = TaskStates::open_store(&data, &t, e, &spec, None, Some(0)).unwrap();
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
        let store =
            TaskStates::open_store(&data, &t, FencingToken(4), &spec, None, Some(0)).unwrap();
        assert_eq!(
            states.install(&t, FencingToken(4), &spec, store).unwrap(),
            None
        );
        assert!(states.store(&t).is_none());
        states.close_all();
    }

    #[test]
    fn a_data_epoch_is_acted_on_only_when_the_server_says_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ledger");
        let spec = StateSpec {
            standbys: 0,
            ..StateSpec::default()
        };
        let t = task();
        TaskStates::open_store(&data, &t, FencingToken(1), &spec, None, Some(2))
            .unwrap()
            .close();
        // A server of protocol 3 says no data epoch: the state is opened as it is, not
        // taken for a fall to data epoch 0.
        TaskStates::open_store(&data, &t, FencingToken(2), &spec, None, None)
            .unwrap()
            .close();
        assert_eq!(warden_state::restore::recorded(&data).unwrap(), Some(2));
        // A fall the agent holds no restore point for refuses the copy, naming both epochs.
        let Err(why) = TaskStates::open_store(&data, &t, FencingToken(3), &spec, None, Some(1))
        else {
            panic!("a fall without a restore point must be refused");
        };
        assert!(
            why.contains("data epoch 2") && why.contains("data epoch 1"),
            "{why}"
        );
    }
}
