//! Who tasks run as, and with what environment.
//!
//! An agent that runs as root runs its tasks as an unprivileged user: `nobody` unless
//! `--task-user NAME` says otherwise. Tasks run as root only when `--task-user root` is given
//! explicitly. An agent that is not root cannot switch users, so its tasks run as itself; naming
//! another user is refused at start rather than silently ignored.
//!
//! The switch is done by `warden shim-exec` ([`crate::shim::exec_as`]), which the shim starts
//! in the task's place: the shim itself stays privileged, so a task cannot signal or stop the
//! watchdog that fences it. The task gets the user's uid and primary group and *no*
//! supplementary groups.
//!
//! The task's environment is the job's `env`, the `WARDEN_*` variables the agent sets, and
//! `PATH` — the job's own when it sets one, else [`SAFE_PATH`]. Nothing of the agent's
//! environment reaches a task. Commands are executed directly from their argument vector:
//! no shell ever sees a job's fields.

/// `PATH` of a task whose job sets none. Fixed, not the agent's: the agent's `PATH` may
/// contain directories writable by others, or say more about the host than tasks need.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user tasks are switched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    /// The user's name, for logs.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// The default task user of an agent running as root.
pub const DEFAULT_TASK_USER: &str = "nobody";

/// Why the task user cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskUserError {
    /// No such user on this host.
    #[error("--task-user {0:?}: no such user on this host")]
    Unknown(String),
    /// The user database could not be read.
    #[error("--task-user {name:?}: cannot look the user up: {reason}")]
    Lookup {
        /// The user asked for.
        name: String,
        /// Why.
        reason: String,
    },
    /// A non-root agent was asked to run tasks as somebody else.
    #[error(
        "--task-user {name:?}: only an agent running as root can run tasks as another user \
         (this agent runs as uid {euid}); leave --task-user out to run tasks as this user"
    )]
    NotRoot {
        /// The user asked for.
        name: String,
        /// The agent's effective uid.
        euid: u32,
    },
}

/// What [`decide`] settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUserChoice {
    /// The user to switch to; `None` when tasks run as the agent's own user.
    pub switch_to: Option<TaskUser>,
    /// Tasks run as root (the agent is root and `--task-user root` was given).
    pub as_root: bool,
}

/// Decide who tasks run as, given the `--task-user` asked for, the agent's effective uid, and
/// a user lookup (name → uid, gid). Pure, for tests; [`resolve`] uses the real ones.
pub fn decide(
    requested: Option<&str>,
    euid: u32,
    lookup: impl Fn(&str) -> Result<Option<(u32, u32)>, String>,
) -> Result<TaskUserChoice, TaskUserError> {
    let find = |name: &str| -> Result<TaskUser, TaskUserError> {
        match lookup(name) {
            Ok(Some((uid, gid))) => Ok(TaskUser {
                name: name.to_string(),
                uid,
                gid,
            }),
            Ok(None) => Err(TaskUserError::Unknown(name.to_string())),
            Err(reason) => Err(TaskUserError::Lookup {
                name: name.to_string(),
                reason,
            }),
        }
    };
    if euid != 0 {
        let Some(name) = requested else {
            return Ok(TaskUserChoice {
                switch_to: None,
                as_root: false,
            });
        };
        let user = find(name)?;
        if user.uid != euid {
            return Err(TaskUserError::NotRoot {
                name: name.to_string(),
                euid,
            });
        }
        return Ok(TaskUserChoice {
            switch_to: None,
            as_root: false,
        });
    }
    let user = find(requested.unwrap_or(DEFAULT_TASK_USER))?;
    if user.uid == 0 {
        // Only reachable by naming a uid-0 user explicitly: the default is never root.
        return Ok(TaskUserChoice {
            switch_to: None,
            as_root: true,
        });
    }
    Ok(TaskUserChoice {
        switch_to: Some(user),
        as_root: false,
    })
}

/// [`decide`] for this process: its effective uid and the host's user database.
pub fn resolve(requested: Option<&str>) -> Result<TaskUserChoice, TaskUserError> {
    decide(requested, nix::unistd::geteuid().as_raw(), |name| {
        nix::unistd::User::from_name(name)
            .map(|u| u.map(|u| (u.uid.as_raw(), u.gid.as_raw())))
            .map_err(|e| e.to_string())
    })
}

/// The name of this process's effective user, if the user database has it. Development
/// harnesses (`warden dev`, the chaos cluster) pass it as `--task-user`, so that their
/// workloads — often the `warden` binary in a build tree under a private home directory — run
/// as the person who started them.
pub fn current_user_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A user per job (`warden agent --task-uids FIRST-LAST`): each job's tasks run under a uid
/// of their own from the range (its primary group the same number), so one job's tasks
/// cannot signal, trace or read the processes of another's. The uid a job gets is kept in
/// `<data dir>/task-uids.json`, written (atomically, synced) before a task runs under it, so
/// a job keeps its uid across agent restarts and its files stay its own. Uids are never given
/// to a second job.
#[derive(Debug)]
pub struct TaskUids {
    first: u32,
    last: u32,
    file: std::path::PathBuf,
    by_job: std::collections::BTreeMap<String, u32>,
}

/// Parse `FIRST-LAST` (inclusive; uid 0 and ranges of more than 2^24 uids refused).
pub fn parse_uid_range(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("--task-uids {text:?}: expected FIRST-LAST, e.g. 200000-265535"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("--task-uids {text:?}: {s:?} is not a uid"))
    };
    let (first, last) = (num(a)?, num(b)?);
    if first == 0 {
        return Err(format!(
            "--task-uids {text:?}: uid 0 is root, never a task's"
        ));
    }
    if last < first {
        return Err(format!("--task-uids {text:?}: the range is empty"));
    }
    if last - first >= 1 << 24 {
        return Err(format!("--task-uids {text:?}: more than 16,777,216 uids"));
    }
    Ok((first, last))
}

impl TaskUids {
    /// The allocation kept in `data_dir`, for the uids `first..=last`. A file that cannot be
    /// read or parsed is an error naming it (never silently replaced: a job could get a uid
    /// whose files belong to another); uids outside the range in it are kept as they are.
    pub fn load(data_dir: &std::path::Path, (first, last): (u32, u32)) -> Result<TaskUids, String> {
        let file = data_dir.join("task-uids.json");
        let by_job = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: not a job → uid map ({e}); move it away to start afresh (jobs may then \
                     get other uids than their files have)",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(format!("read {}: {e}", file.display())),
        };
        Ok(TaskUids {
            first,
            last,
            file,
            by_job,
        })
    }

    /// The uid of `job`: the one it has, or the lowest free one in the range, recorded on
    /// disk before it is returned.
    pub fn uid_for(&mut self, job: &str) -> Result<u32, String> {
        if let Some(uid) = self.by_job.get(job) {
            return Ok(*uid);
        }
        let used: std::collections::BTreeSet<u32> = self.by_job.values().copied().collect();
        let uid = (self.first..=self.last)
            .find(|u| !used.contains(u))
            .ok_or_else(|| {
                format!(
                    "every uid of --task-uids {}-{} is taken by another job",
                    self.first, self.last
                )
            })?;
        self.by_job.insert(job.to_string(), uid);
        if let Err(e) = self.save() {
            self.by_job.remove(job);
            return Err(e);
        }
        Ok(uid)
    }

    fn save(&self) -> Result<(), String> {
        use std::io::Write as _;
        let tmp = self.file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&self.by_job).unwrap_or_default())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)?;
            if let Some(dir) = self.file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("write {}: {e}", self.file.display()))
    }

    /// The task user of `job`.
    pub fn user_for(&mut self, job: &str) -> Result<TaskUser, String> {
        let uid = self.uid_for(job)?;
        Ok(TaskUser {
            name: format!("uid {uid} (job {job})"),
            uid,
            gid: uid,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn users(name: &str) -> Result<Option<(u32, u32)>, String> {
        Ok(match name {
            "root" => Some((0, 0)),
            "nobody" => Some((65534, 65534)),
            "svc" => Some((1001, 1001)),
            "broken" => return Err("I/O error".into()),
            _ => None,
        })
    }

    fn switch(uid: u32) -> TaskUserChoice {
        TaskUserChoice {
            switch_to: users_named(uid),
            as_root: false,
        }
    }

    fn users_named(uid: u32) -> Option<TaskUser> {
        let name = match uid {
            65534 => "nobody",
            1001 => "svc",
            _ => return None,
        };
        Some(TaskUser {
            name: name.into(),
            uid,
            gid: uid,
        })
    }

    #[test]
    fn every_job_gets_a_uid_of_its_own_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let range = parse_uid_range("300000-300001").unwrap();
        let mut uids = TaskUids::load(dir.path(), range).unwrap();
        assert_eq!(uids.uid_for("web"), Ok(300000));
        assert_eq!(uids.uid_for("db"), Ok(300001));
        assert_eq!(uids.uid_for("web"), Ok(300000));
        let full = uids.uid_for("cache").expect_err("range exhausted");
        assert!(
            full.contains("every uid of --task-uids 300000-300001"),
            "{full}"
        );
        // A restarted agent reads the same allocation.
        let mut again = TaskUids::load(dir.path(), range).unwrap();
        assert_eq!(again.uid_for("db"), Ok(300001));
        assert_eq!(again.user_for("web").unwrap().gid, 300000);
        // A corrupt file is refused, naming it.
        std::fs::write(dir.path().join("task-uids.json"), "{ half").unwrap();
        let err = TaskUids::load(dir.path(), range).expect_err("corrupt");
        assert!(err.contains("task-uids.json"), "{err}");
        for (bad, want) in [
            ("1000", "expected FIRST-LAST"),
            ("0-10", "uid 0 is root"),
            ("10-5", "empty"),
            ("x-5", "not a uid"),
            ("1-20000000", "more than"),
        ] {
            let err = parse_uid_range(bad).expect_err(bad);
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn root_agents_run_tasks_unprivileged_unless_told_root() {
        assert_eq!(decide(None, 0, users), Ok(switch(65534)));
        assert_eq!(decide(Some("svc"), 0, users), Ok(switch(1001)));
        assert_eq!(
            decide(Some("root"), 0, users),
            Ok(TaskUserChoice {
                switch_to: None,
                as_root: true
            })
        );
        assert_eq!(
            decide(Some("ghost"), 0, users),
            Err(TaskUserError::Unknown("ghost".into()))
        );
        assert!(matches!(
            decide(Some("broken"), 0, users),
            Err(TaskUserError::Lookup { .. })
        ));
    }

    #[test]
    fn other_agents_run_tasks_as_themselves_and_refuse_another_user() {
        let none = TaskUserChoice {
            switch_to: None,
            as_root: false,
        };
        assert_eq!(decide(None, 1001, users), Ok(none.clone()));
        assert_eq!(decide(Some("svc"), 1001, users), Ok(none));
        let err = decide(Some("nobody"), 1001, users).expect_err("not root");
        assert!(matches!(err, TaskUserError::NotRoot { euid: 1001, .. }));
        assert!(err.to_string().contains("only an agent running as root"));
    }
}
