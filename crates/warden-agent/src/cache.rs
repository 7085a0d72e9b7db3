//! The agent's local cache: what it must know to carry on without a server.
//!
//! One file in the data directory, `agent-cache.json`: the agent's name and cluster, the
//! servers it was given, its generation, a boot counter, and every copy it holds — the
//! server's order for it (the whole `Assign`, protobuf-encoded), its epoch and its endpoint.
//! It is rewritten, atomically (a temporary file, fsync, rename, fsync of the directory),
//! *before* an order is carried out, and when a copy ends; a crash at any moment leaves either
//! the old or the new file, never half of one.
//!
//! What it is for:
//! - **Agent restarts** (an upgrade, a crash of the agent alone): the new process resumes the
//!   same generation, finds the shims its predecessor left running (their sockets) and takes
//!   their tasks over with the same epochs ([`crate::supervisor::Supervisor::adopt`]).
//! - **Offline operation**: an agent that starts and reaches no server starts the service
//!   copies of its cache again — never a singleton, which needs a lease — and reconciles when
//!   a server answers (the server's view wins).
//! - **Heartbeat numbers**: each process start bumps the boot counter, and heartbeat numbers
//!   start at `boot << 32`, so a restarted process's heartbeats are always newer than its
//!   predecessor's (the server ignores a number it has seen).
//!
//! A file that cannot be read (corrupt, truncated, checksum mismatch), or that belongs to
//! another agent name or cluster, is set aside (`agent-cache.json.rejected`) and the agent
//! starts empty, saying why ([`Loaded::Discarded`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use warden_core::{FencingToken, TaskId};
use warden_proto::v1;

/// File name of the cache in the data directory.
pub const FILE: &str = "agent-cache.json";
/// Version of the file's layout.
const FORMAT: u32 = 1;

/// The cache and where it lives.
#[derive(Debug)]
pub struct AgentCache {
    path: PathBuf,
    state: State,
}

/// The file's content (its first line; the second is a checksum of the first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: u32,
    agent: String,
    cluster: String,
    servers: Vec<String>,
    generation: u64,
    boot: u64,
    copies: BTreeMap<String, Copy>,
}

/// One copy the agent holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    epoch: u64,
    singleton: bool,
    /// `host:port` of a service copy, so that a restart keeps its port.
    endpoint: String,
    /// The server's order, protobuf, hex.
    assign: String,
}

/// A copy from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedCopy {
    /// The task.
    pub task: TaskId,
    /// The order it runs under.
    pub assign: v1::Assign,
    /// Its endpoint, when it serves one.
    pub endpoint: Option<std::net::SocketAddr>,
}

impl CachedCopy {
    /// The copy's epoch.
    pub fn epoch(&self) -> FencingToken {
        FencingToken(self.assign.epoch)
    }
}

/// What [`AgentCache::load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No cache yet: a first start.
    Fresh,
    /// The cache of this agent, with this many copies.
    Loaded {
        /// Copies held.
        copies: usize,
    },
    /// A file was there but could not be used; the agent starts empty. Why, in words that
    /// name the file.
    Discarded {
        /// Why.
        reason: String,
    },
}

impl AgentCache {
    /// Read the cache of agent `agent` in cluster `cluster` from `dir`. Never fails: an
    /// unusable file is moved aside and reported, and the agent starts empty.
    pub fn load(dir: &Path, agent: &str, cluster: &str) -> (AgentCache, Loaded) {
        let path = dir.join(FILE);
        let empty = State {
            format: FORMAT,
            agent: agent.to_string(),
            cluster: cluster.to_string(),
            ..State::default()
        };
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return (AgentCache { path, state: empty }, Loaded::Fresh);
            }
            Err(e) => {
                let reason = format!("cannot read {}: {e}", path.display());
                return (
                    AgentCache { path, state: empty },
                    Loaded::Discarded { reason },
                );
            }
        };
        match parse(&text, agent, cluster) {
            Ok(mut state) => {
                // Copies whose order cannot be decoded are dropped one by one.
                state.copies.retain(|_, c| decode(&c.assign).is_some());
                let copies = state.copies.len();
                (AgentCache { path, state }, Loaded::Loaded { copies })
            }
            Err(why) => {
                let aside = path.with_extension("json.rejected");
                let moved = fs::rename(&path, &aside).is_ok();
                let reason = format!(
                    "{} {why}{}; starting with an empty cache",
                    path.display(),
                    if moved {
                        format!(" (kept as {})", aside.display())
                    } else {
                        String::new()
                    }
                );
                (
                    AgentCache { path, state: empty },
                    Loaded::Discarded { reason },
                )
            }
        }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new process of the agent starts: bump and store the boot counter, note the servers,
    /// and return the counter.
    pub fn begin_boot(&mut self, servers: &[String]) -> io::Result<u64> {
        self.state.boot += 1;
        self.state.servers = servers.to_vec();
        self.save()?;
        Ok(self.state.boot)
    }

    /// The generation of the last session (0: none).
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    /// Record the generation the servers gave.
    pub fn set_generation(&mut self, generation: u64) -> io::Result<()> {
        if self.state.generation == generation {
            return Ok(());
        }
        self.state.generation = generation;
        self.save()
    }

    /// Record an order before it is carried out (replacing an older copy of the task).
    pub fn put(
        &mut self,
        task: &TaskId,
        assign: &v1::Assign,
        endpoint: Option<std::net::SocketAddr>,
    ) -> io::Result<()> {
        let copy = Copy {
            epoch: assign.epoch,
            singleton: assign.singleton,
            endpoint: endpoint.map(|e| e.to_string()).unwrap_or_default(),
            assign: hex(&assign.encode_to_vec()),
        };
        match self.state.copies.get(&task.to_string()) {
            Some(c) if *c == copy => return Ok(()),
            // A stale order never replaces a newer copy.
            Some(c) if c.epoch > copy.epoch => return Ok(()),
            _ => {}
        }
        self.state.copies.insert(task.to_string(), copy);
        self.save()
    }

    /// A copy ended: forget it (not a newer copy of the same task).
    pub fn remove(&mut self, task: &TaskId, epoch: FencingToken) -> io::Result<()> {
        let key = task.to_string();
        if self
            .state
            .copies
            .get(&key)
            .is_none_or(|c| c.epoch != epoch.0)
        {
            return Ok(());
        }
        self.state.copies.remove(&key);
        self.save()
    }

    /// The generation is over (the server said so): forget it and every copy.
    pub fn clear(&mut self) -> io::Result<()> {
        self.state.generation = 0;
        self.state.copies.clear();
        self.save()
    }

    /// Every copy held.
    pub fn copies(&self) -> Vec<CachedCopy> {
        self.state
            .copies
            .iter()
            .filter_map(|(task, c)| {
                Some(CachedCopy {
                    task: TaskId::parse(task)?,
                    assign: decode(&c.assign)?,
                    endpoint: c.endpoint.parse().ok(),
                })
            })
            .collect()
    }

    /// Write the file atomically.
    fn save(&self) -> io::Result<()> {
        let body = serde_json::to_string(&self.state).map_err(io::Error::other)?;
        let text = format!("{body}\n{}\n", checksum(body.as_bytes()));
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        File::open(dir)?.sync_all()
    }
}

fn parse(text: &[u8], agent: &str, cluster: &str) -> Result<State, String> {
    let text = std::str::from_utf8(text).map_err(|_| "is not UTF-8 text".to_string())?;
    let mut lines = text.lines();
    let body = lines.next().unwrap_or_default();
    let sum = lines.next().ok_or("is truncated (no checksum line)")?;
    if sum != checksum(body.as_bytes()) {
        return Err("is corrupt (checksum mismatch)".into());
    }
    let state: State = serde_json::from_str(body).map_err(|e| format!("cannot be parsed ({e})"))?;
    if state.format != FORMAT {
        return Err(format!(
            "has format {} (this agent reads {FORMAT})",
            state.format
        ));
    }
    if state.agent != agent {
        return Err(format!("belongs to agent {:?}, not {agent:?}", state.agent));
    }
    if state.cluster != cluster {
        return Err(format!(
            "belongs to cluster {:?}, not {cluster:?}",
            state.cluster
        ));
    }
    Ok(state)
}

/// FNV-1a 64 of the body, in hex: catches a torn or altered file (not an attacker: the data
/// directory is the agent's own).
fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn decode(text: &str) -> Option<v1::Assign> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    v1::Assign::decode(bytes?.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::JobName;

    fn assign(task: &str, epoch: u64, singleton: bool) -> v1::Assign {
        v1::Assign {
            task: task.into(),
            epoch,
            singleton,
            command: "sleep".into(),
            args: vec!["300".into()],
            ..v1::Assign::default()
        }
    }

    fn web(i: u32) -> TaskId {
        TaskId::new(JobName::new("web"), i)
    }

    #[test]
    fn round_trips_and_keeps_generation_boot_and_endpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut c, loaded) = AgentCache::load(dir.path(), "a1", "prod");
        assert_eq!(loaded, Loaded::Fresh);
        assert_eq!(c.begin_boot(&["s:1".into()]).expect("boot"), 1);
        c.set_generation(7).expect("gen");
        let ep: std::net::SocketAddr = "127.0.0.1:4321".parse().expect("addr");
        c.put(&web(0), &assign("web/0", 3, false), Some(ep))
            .expect("put");
        c.put(&web(1), &assign("web/1", 4, true), None)
            .expect("put");
        c.remove(&web(1), FencingToken(3))
            .expect("older epoch: no-op");

        let (mut again, loaded) = AgentCache::load(dir.path(), "a1", "prod");
        assert_eq!(loaded, Loaded::Loaded { copies: 2 });
        assert_eq!(again.generation(), 7);
        assert_eq!(again.begin_boot(&[]).expect("boot"), 2);
        let copies = again.copies();
        assert_eq!(copies[0].task, web(0));
        assert_eq!(copies[0].endpoint, Some(ep));
        assert_eq!(copies[0].assign, assign("web/0", 3, false));
        assert_eq!(copies[1].epoch(), FencingToken(4));
        again.remove(&web(1), FencingToken(4)).expect("remove");
        again.clear().expect("clear");
        let (last, _) = AgentCache::load(dir.path(), "a1", "prod");
        assert_eq!(last.generation(), 0);
        assert!(last.copies().is_empty());
    }

    #[test]
    fn bad_files_are_set_aside_with_a_reason_and_the_agent_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut c, _) = AgentCache::load(dir.path(), "a1", "prod");
        c.put(&web(0), &assign("web/0", 3, false), None)
            .expect("put");
        let good = fs::read_to_string(dir.path().join(FILE)).expect("read");

        let cases: Vec<(String, &str, &str, &str)> = vec![
            (
                good[..good.len() / 2].to_string(),
                "a1",
                "prod",
                "truncated",
            ),
            (
                good.replace("\"singleton\":false", "\"singleton\":true"),
                "a1",
                "prod",
                "corrupt",
            ),
            (
                good.replacen("\"epoch\":3", "\"epoch\":9", 1),
                "a1",
                "prod",
                "corrupt",
            ),
            ("not json\n".into(), "a1", "prod", "truncated"),
            (good.clone(), "a2", "prod", "belongs to agent \"a1\""),
            (good.clone(), "a1", "staging", "belongs to cluster \"prod\""),
        ];
        for (text, agent, cluster, want) in cases {
            fs::write(dir.path().join(FILE), &text).expect("write");
            let (c, loaded) = AgentCache::load(dir.path(), agent, cluster);
            let Loaded::Discarded { reason } = loaded else {
                panic!("{want}: loaded {loaded:?}");
            };
            assert!(reason.contains(want), "{want}: {reason}");
            assert!(reason.contains(FILE), "names the file: {reason}");
            assert!(c.copies().is_empty());
            assert!(dir.path().join("agent-cache.json.rejected").exists());
            assert!(!dir.path().join(FILE).exists(), "moved aside");
        }
    }
}
