//! Data restore points of a single-replica state (`[state]` with `standbys = 0`; see
//! `docs/releases.md`, "Data restore points").
//!
//! A job version declares the format of its data with `data_epoch`. The state's directory
//! remembers the data epoch its data was last written under (the file `data-epoch`). Before a
//! copy of a version with a **higher** data epoch opens the state, [`align`] copies the log
//! and checkpoint into `restore/epoch-<old>/`: a restore point of the data as the last
//! version of the old epoch left it. When a copy of a version with a **lower** data epoch
//! opens it (a revert), [`align`] sets the data written since aside
//! (`restore/set-aside-epoch-<new>-<unix ms>/`, kept for the operator, never deleted by
//! Warden) and puts the newest restore point the version can read back in its place.
//!
//! Every step survives a crash: a restore point is complete before it is renamed into place,
//! and a restore is written down first (`restoring`) and finished on the next open.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file holding the data epoch the state's data was last written under.
pub const DATA_EPOCH_FILE: &str = "data-epoch";
/// The directory of restore points and data set aside, inside the state's directory.
pub const RESTORE_DIR: &str = "restore";
/// A restore under way: the restore point and where the data it replaces goes.
const JOURNAL: &str = "restoring";
/// Restore points kept (the newest data epochs); data set aside is never removed.
pub const KEEP_POINTS: usize = 5;

/// What [`align`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Aligned {
    /// A new state: it is written under the copy's data epoch from now on.
    Fresh,
    /// The data is of the copy's data epoch already.
    Same,
    /// A state kept by an agent that did not record data epochs: taken to be of the copy's.
    Adopted,
    /// The data was of data epoch `from`, older: a restore point of it was taken first.
    Took {
        /// The data epoch of the restore point.
        from: u32,
    },
    /// The data was of data epoch `from`, newer than the copy reads: restore point `point`
    /// was put back, the data it replaced set aside in `set_aside`.
    Restored {
        /// The data epoch the data was of.
        from: u32,
        /// The data epoch of the restore point put back.
        point: u32,
        /// Where the replaced data now is.
        set_aside: PathBuf,
    },
}

/// How long [`DirLock::acquire`] waits for the store before to be closed.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// An exclusive lock on a state's directory (`flock` on its `lock` file): taken before the
/// directory is aligned and opened, held by the store until it is closed
/// ([`crate::StateStore::hold`]), so a copy's store still closing, or a checkpoint it was
/// writing, never meets a restore or another store in the same files.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock of `dir` (created if need be), waiting up to [`LOCK_WAIT`] for a store
    /// of the directory to be closed; blocking.
    pub fn acquire(dir: &Path) -> Result<DirLock, String> {
        fs::create_dir_all(dir).map_err(|e| err("create directory", dir, e))?;
        let path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| err("open", &path, e))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(format!(
                        "the state in {} is still held by another store after {} s",
                        dir.display(),
                        LOCK_WAIT.as_secs()
                    ));
                }
                Err(fs::TryLockError::Error(e)) => return Err(err("lock", &path, e)),
            }
        }
    }
}

fn err(what: &str, path: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn is_data_file(name: &str) -> bool {
    (name.starts_with("wal-") || name.starts_with("checkpoint-")) && !name.ends_with(".tmp")
}

/// The state's data files in `dir` (log segments and checkpoints), by name.
fn data_files(dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(err("read directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| err("read directory", dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && is_data_file(name)
        {
            out.push(name.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync directory", dir, e))
}

/// Write `content` to `dir/name` atomically (a temporary file, synced, renamed, the
/// directory synced).
fn write_atomic(dir: &Path, name: &str, content: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| err("rename into", &path, e))?;
    sync_dir(dir)
}

/// The data epoch recorded in `dir`, if any.
pub fn recorded(dir: &Path) -> Result<Option<u32>, String> {
    let path = dir.join(DATA_EPOCH_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{} does not hold a data epoch: {s:?}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("read", &path, e)),
    }
}

/// The restore points in `dir`, by data epoch, oldest first.
pub fn points(dir: &Path) -> Result<Vec<u32>, String> {
    let restore = dir.join(RESTORE_DIR);
    let entries = match fs::read_dir(&restore) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err("read directory", &restore, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err("read directory", &restore, e))?;
        if let Some(e) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push(e);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn point_dir(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(RESTORE_DIR).join(format!("epoch-{epoch}"))
}

/// Bring the state in `dir` (closed: no store has it open) to data epoch `data_epoch` before
/// a copy of a version declaring it opens it: take a restore point before the data epoch
/// rises, put one back when it falls. An error names what is missing or failed; the state is
/// then as it was (or a restore under way is finished on the next call).
///
/// A fall puts back the newest restore point at `data_epoch` or before; the restore points
/// above it belong to the history being undone and go aside with the data. When the point
/// put back is older than `data_epoch`, the rise to it follows at once (a new restore point
/// of the data put back), so the directory always records the epoch its data is written in.
pub fn align(dir: &Path, data_epoch: u32, unix_ms: u64) -> Result<Aligned, String> {
    fs::create_dir_all(dir).map_err(|e| err("create directory", dir, e))?;
    // A restore cut short by a crash is finished first.
    let mut restored = finish_restore(dir)?;
    let Some(had) = recorded(dir)? else {
        let fresh = data_files(dir)?.is_empty();
        write_atomic(dir, DATA_EPOCH_FILE, &data_epoch.to_string())?;
        return Ok(if fresh {
            Aligned::Fresh
        } else {
            Aligned::Adopted
        });
    };
    if had > data_epoch {
        let have = points(dir)?;
        let Some(&point) = have.iter().rev().find(|&&e| e <= data_epoch) else {
            let kept = if have.is_empty() {
                "none".to_string()
            } else {
                have.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(format!(
                "the state in {} was written under data epoch {had}, which this version (data \
                 epoch {data_epoch}) cannot read, and this agent keeps no restore point at data \
                 epoch {data_epoch} or before (restore points kept: {kept})",
                dir.display()
            ));
        };
        let aside = new_aside(dir, had, unix_ms)?;
        write_atomic(dir, JOURNAL, &format!("{point} {had} {aside} discard"))?;
        restored = finish_restore(dir)?;
        if restored.is_none() {
            return Err(format!("restore in {} did not run", dir.display()));
        }
    }
    let now = recorded(dir)?.unwrap_or(data_epoch);
    let took = now < data_epoch;
    if took {
        take_point(dir, now)?;
        write_atomic(dir, DATA_EPOCH_FILE, &data_epoch.to_string())?;
        prune(dir)?;
    }
    Ok(match restored {
        Some((point, from, set_aside)) => Aligned::Restored {
            from,
            point,
            set_aside,
        },
        None if took => Aligned::Took { from: now },
        None => Aligned::Same,
    })
}

/// A new, empty directory for the data a restore sets aside (never one that exists: two
/// restores in one millisecond, or a clock stepped back, get their own).
fn new_aside(dir: &Path, had: u32, unix_ms: u64) -> Result<String, String> {
    let restore = dir.join(RESTORE_DIR);
    fs::create_dir_all(&restore).map_err(|e| err("create directory", &restore, e))?;
    for n in 0u32..1000 {
        let name = if n == 0 {
            format!("set-aside-epoch-{had}-{unix_ms}")
        } else {
            format!("set-aside-epoch-{had}-{unix_ms}-{n}")
        };
        let path = restore.join(&name);
        match fs::create_dir(&path) {
            Ok(()) => {
                sync_dir(&restore)?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err("create directory", &path, e)),
        }
    }
    Err(format!(
        "no free name for the data to set aside in {}",
        restore.display()
    ))
}

/// Copy the data files into a new restore point of data epoch `epoch` (replacing an older
/// one of the same epoch once complete).
fn take_point(dir: &Path, epoch: u32) -> Result<(), String> {
    let restore = dir.join(RESTORE_DIR);
    fs::create_dir_all(&restore).map_err(|e| err("create directory", &restore, e))?;
    let tmp = restore.join(format!(".epoch-{epoch}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| err("remove", &tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| err("create directory", &tmp, e))?;
    for name in data_files(dir)? {
        let (from, to) = (dir.join(&name), tmp.join(&name));
        fs::copy(&from, &to).map_err(|e| err("copy", &from, e))?;
        File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|e| err("sync", &to, e))?;
    }
    sync_dir(&tmp)?;
    let point = point_dir(dir, epoch);
    if point.exists() {
        fs::remove_dir_all(&point).map_err(|e| err("remove", &point, e))?;
    }
    fs::rename(&tmp, &point).map_err(|e| err("rename into", &point, e))?;
    sync_dir(&restore)
}

/// Keep the [`KEEP_POINTS`] restore points of the newest data epochs.
fn prune(dir: &Path) -> Result<(), String> {
    let have = points(dir)?;
    for &e in have.iter().take(have.len().saturating_sub(KEEP_POINTS)) {
        let p = point_dir(dir, e);
        fs::remove_dir_all(&p).map_err(|e| err("remove", &p, e))?;
    }
    Ok(())
}

/// Finish a restore written down in the journal, if any: `Some((point, from, set_aside))`
/// once done. Each phase can run again after a crash: `discard` moves every data file, and
/// the restore points above the one put back, aside; `install` moves the restore point's
/// files in.
fn finish_restore(dir: &Path) -> Result<Option<(u32, u32, PathBuf)>, String> {
    let journal = dir.join(JOURNAL);
    let text = match fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("read", &journal, e)),
    };
    let not_journal = || format!("{} is not a restore journal", journal.display());
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [point, from, aside, phase] = parts.as_slice() else {
        return Err(not_journal());
    };
    let (Ok(point), Ok(from)) = (point.parse::<u32>(), from.parse::<u32>()) else {
        return Err(not_journal());
    };
    if aside.contains('/') || !aside.starts_with("set-aside-") {
        return Err(not_journal());
    }
    let restore = dir.join(RESTORE_DIR);
    let source = point_dir(dir, point);
    let set_aside = restore.join(aside);
    match *phase {
        "discard" => {
            fs::create_dir_all(&set_aside).map_err(|e| err("create directory", &set_aside, e))?;
            for name in data_files(dir)? {
                let (a, b) = (dir.join(&name), set_aside.join(&name));
                fs::rename(&a, &b).map_err(|e| err("move aside", &a, e))?;
            }
            for e in points(dir)?.into_iter().filter(|&e| e > point) {
                let (a, b) = (point_dir(dir, e), set_aside.join(format!("epoch-{e}")));
                fs::rename(&a, &b).map_err(|e| err("move aside", &a, e))?;
            }
            sync_dir(&set_aside)?;
            sync_dir(&restore)?;
            sync_dir(dir)?;
            write_atomic(dir, JOURNAL, &format!("{point} {from} {aside} install"))?;
        }
        "install" => {}
        _ => return Err(not_journal()),
    }
    for name in data_files(&source)? {
        let (a, b) = (source.join(&name), dir.join(&name));
        fs::rename(&a, &b).map_err(|e| err("restore", &a, e))?;
    }
    sync_dir(dir)?;
    write_atomic(dir, DATA_EPOCH_FILE, &point.to_string())?;
    if source.exists() {
        fs::remove_dir_all(&source).map_err(|e| err("remove", &source, e))?;
    }
    fs::remove_file(&journal).map_err(|e| err("remove", &journal, e))?;
    sync_dir(&restore)?;
    sync_dir(dir)?;
    Ok(Some((point, from, set_aside)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::codec::Op;
    use crate::store::{Limits, Role, StateStore};
    use bytes::Bytes;

    fn put(dir: &Path, epoch: u64, key: &str, value: &str) {
        let (store, _) = StateStore::open(dir, Role::Primary, epoch, 0, Limits::default()).unwrap();
        store
            .write(
                epoch,
                Op::Put {
                    key: key.into(),
                    value: Bytes::from(value.to_string()),
                },
            )
            .unwrap();
        // Closing writes and syncs what is queued.
        store.close();
    }

    fn get(dir: &Path, key: &str) -> Option<String> {
        let (store, _) = StateStore::open(dir, Role::Primary, 100, 0, Limits::default()).unwrap();
        let v = store
            .get(key)
            .0
            .map(|b| String::from_utf8(b.to_vec()).unwrap());
        store.close();
        v
    }

    /// `k` written as `e0` under data epoch 0, then as `e1` under data epoch 1.
    fn written_at_epochs_0_and_1(dir: &Path) {
        align(dir, 0, 1).unwrap();
        put(dir, 1, "k", "e0");
        align(dir, 1, 2).unwrap();
        put(dir, 2, "k", "e1");
    }

    #[test]
    fn a_rise_takes_a_restore_point_and_a_fall_puts_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        assert_eq!(align(&dir, 0, 1).unwrap(), Aligned::Fresh);
        put(&dir, 1, "format", "v0");
        assert_eq!(align(&dir, 0, 2).unwrap(), Aligned::Same);
        assert_eq!(align(&dir, 1, 3).unwrap(), Aligned::Took { from: 0 });
        assert_eq!(points(&dir).unwrap(), vec![0]);
        put(&dir, 2, "format", "v1");
        put(&dir, 2, "only-v1", "x");
        assert_eq!(get(&dir, "format").as_deref(), Some("v1"));
        let Aligned::Restored {
            from,
            point,
            set_aside,
        } = align(&dir, 0, 4).unwrap()
        else {
            panic!("expected a restore");
        };
        assert_eq!((from, point), (1, 0));
        assert_eq!(get(&dir, "format").as_deref(), Some("v0"));
        assert_eq!(get(&dir, "only-v1"), None);
        assert_eq!(recorded(&dir).unwrap(), Some(0));
        // The data written under epoch 1 is kept, and opens as it was.
        assert_eq!(get(&set_aside, "only-v1").as_deref(), Some("x"));
        // The restore point was used up; the next rise takes a new one.
        assert!(points(&dir).unwrap().is_empty());
        assert_eq!(align(&dir, 1, 5).unwrap(), Aligned::Took { from: 0 });
    }

    #[test]
    fn a_fall_without_a_restore_point_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        assert_eq!(align(&dir, 2, 1).unwrap(), Aligned::Fresh);
        put(&dir, 1, "k", "v2");
        let why = align(&dir, 1, 2).unwrap_err();
        assert!(why.contains("data epoch 2"), "{why}");
        assert!(why.contains("no restore point"), "{why}");
        assert_eq!(recorded(&dir).unwrap(), Some(2));
        assert_eq!(get(&dir, "k").as_deref(), Some("v2"));
    }

    #[test]
    fn a_fall_takes_the_newest_point_it_can_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        written_at_epochs_0_and_1(&dir);
        align(&dir, 3, 3).unwrap();
        put(&dir, 3, "k", "e3");
        assert_eq!(points(&dir).unwrap(), vec![0, 1]);
        let got = align(&dir, 2, 4).unwrap();
        assert!(
            matches!(
                got,
                Aligned::Restored {
                    from: 3,
                    point: 1,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(get(&dir, "k").as_deref(), Some("e1"));
        // Put back at data epoch 1, then risen to 2 at once: the directory records the
        // epoch its data is written in from now on, with a restore point of what came back.
        assert_eq!(recorded(&dir).unwrap(), Some(2));
        assert_eq!(points(&dir).unwrap(), vec![0, 1]);
    }

    #[test]
    fn a_fall_sets_the_undone_history_aside_with_its_restore_points() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        written_at_epochs_0_and_1(&dir);
        align(&dir, 2, 3).unwrap();
        put(&dir, 3, "k", "e2");
        assert_eq!(points(&dir).unwrap(), vec![0, 1]);
        // Back to 0: point 1 belongs to the history undone, and goes aside with it.
        let Aligned::Restored { set_aside, .. } = align(&dir, 0, 4).unwrap() else {
            panic!("expected a restore");
        };
        assert!(points(&dir).unwrap().is_empty());
        assert!(set_aside.join("epoch-1").is_dir());
        put(&dir, 4, "k", "e0-again");
        align(&dir, 2, 5).unwrap();
        put(&dir, 5, "k", "e2-again");
        // A fall to 1 now finds no point of the undone history: it goes back to what
        // epoch 0 wrote since, not to the old epoch-1 data.
        let got = align(&dir, 1, 6).unwrap();
        assert!(
            matches!(
                got,
                Aligned::Restored {
                    from: 2,
                    point: 0,
                    ..
                }
            ),
            "{got:?}"
        );
        assert_eq!(get(&dir, "k").as_deref(), Some("e0-again"));
        assert_eq!(recorded(&dir).unwrap(), Some(1));
    }

    #[test]
    fn a_restore_cut_short_is_finished_on_the_next_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        written_at_epochs_0_and_1(&dir);
        // A crash after the data was moved aside, before the point was put back.
        let aside = "set-aside-epoch-1-9";
        let set_aside = dir.join(RESTORE_DIR).join(aside);
        fs::create_dir_all(&set_aside).unwrap();
        for name in data_files(&dir).unwrap() {
            fs::rename(dir.join(&name), set_aside.join(&name)).unwrap();
        }
        write_atomic(&dir, JOURNAL, &format!("0 1 {aside} install")).unwrap();
        assert_eq!(
            align(&dir, 0, 3).unwrap(),
            Aligned::Restored {
                from: 1,
                point: 0,
                set_aside: set_aside.clone()
            }
        );
        assert_eq!(get(&dir, "k").as_deref(), Some("e0"));
        assert_eq!(get(&set_aside, "k").as_deref(), Some("e1"));
        assert!(!dir.join(JOURNAL).exists());
    }

    #[test]
    fn a_restore_cut_short_while_setting_aside_is_finished_on_the_next_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        written_at_epochs_0_and_1(&dir);
        // A crash after the journal was written and one data file moved aside.
        let aside = new_aside(&dir, 1, 9).unwrap();
        let set_aside = dir.join(RESTORE_DIR).join(&aside);
        write_atomic(&dir, JOURNAL, &format!("0 1 {aside} discard")).unwrap();
        let first = data_files(&dir).unwrap().remove(0);
        fs::rename(dir.join(&first), set_aside.join(&first)).unwrap();
        assert!(matches!(
            align(&dir, 0, 10).unwrap(),
            Aligned::Restored {
                from: 1,
                point: 0,
                ..
            }
        ));
        assert_eq!(get(&dir, "k").as_deref(), Some("e0"));
        assert_eq!(get(&set_aside, "k").as_deref(), Some("e1"));
        // A second restore in the same millisecond gets a directory of its own.
        assert_ne!(new_aside(&dir, 1, 9).unwrap(), aside);
    }

    #[test]
    fn a_state_without_a_recorded_epoch_is_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        put(&dir, 1, "k", "v");
        assert_eq!(align(&dir, 3, 1).unwrap(), Aligned::Adopted);
        assert_eq!(recorded(&dir).unwrap(), Some(3));
        assert_eq!(get(&dir, "k").as_deref(), Some("v"));
    }

    #[test]
    fn only_the_newest_points_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        align(&dir, 0, 1).unwrap();
        put(&dir, 1, "k", "v");
        for e in 1..=7 {
            align(&dir, e, u64::from(e)).unwrap();
        }
        assert_eq!(points(&dir).unwrap(), vec![2, 3, 4, 5, 6]);
    }
}
