//! Failovers of a replicated state, in one process, on real disks and loopback TCP: the
//! replication protocol's safety measured, without the control plane. A writer writes
//! continuously at one acknowledgement level; a fault takes the primary away (its streams are
//! cut at once: frames not yet on the wire are lost with it); the promotion rule
//! ([`warden_core::state::promotion`]) picks a standby from what the standbys hold, which is
//! promoted at a new epoch; the old primary rejoins as a standby of the new one (its
//! unreplicated tail cut and counted). After every failover the **no-lost-ack** check reads
//! every write acknowledged since the previous check back from the new primary; at the end,
//! every write acknowledged in the whole run.
//!
//! The fault: the standbys stop hearing the primary at once (frames on the wire are lost),
//! and the primary, cut off, goes on taking writes for 10 ms (what is left of its write lease)
//! before it stops. Detection is not part of this: the time reported is from the start of the
//! promotion to the first write the new primary acknowledges. The control plane adds its
//! detection time (0.3 s after a crash, about 2 s for a silent agent; docs/benchmarks.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::rng::Rng;
use warden_core::state::{AckLevel, Candidate, promotion};

use crate::codec::Op;
use crate::repl::{FollowReport, Primaries, follow_forever};
use crate::store::{Limits, Role, StateStore};

/// What to run.
#[derive(Clone, Debug)]
pub struct FailoverRun {
    /// Failovers to inject.
    pub failovers: usize,
    /// Standbys (1 or 2).
    pub standbys: u8,
    /// The writer's level.
    pub ack: AckLevel,
    /// Seed of the schedule (how long the writer runs between faults).
    pub seed: u64,
    /// Test-only: acknowledge writes at `standby`/`quorum` once they are synced locally,
    /// before any standby has them — the bug the check must catch.
    pub break_acks: bool,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct FailoverReport {
    /// Failovers done.
    pub failovers: usize,
    /// Writes acknowledged in all.
    pub acked: u64,
    /// Acknowledged writes missing or wrong on the primary after a failover (must be 0).
    pub lost: u64,
    /// Writes acknowledged under an epoch older than one already promoted (must be 0).
    pub stale_acks: u64,
    /// Entries old primaries discarded when they rejoined (writes never acknowledged at the
    /// level, or taken at `local`).
    pub discarded: u64,
    /// Start of the promotion to the first write the new primary acknowledged, per failover.
    pub switchover: Vec<Duration>,
    /// The first few problems found, described.
    pub problems: Vec<String>,
}

struct Replica {
    _dir: tempfile::TempDir,
    name: String,
    store: StateStore,
    addr: SocketAddr,
    serve: CancellationToken,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.serve.cancel();
        self.store.close();
    }
}

struct Follower {
    cancel: CancellationToken,
    report: Arc<Mutex<FollowReport>>,
    task: tokio::task::JoinHandle<()>,
}

const JOB: &str = "failover";

/// How long a cut-off primary goes on taking writes before it is stopped.
const CUT_OFF_WRITES: Duration = Duration::from_millis(10);

async fn serve(replica: &mut Replica, in_sync: Vec<String>) -> std::io::Result<()> {
    replica.serve.cancel();
    let listener = TcpListener::bind(replica.addr).await?;
    replica.serve = CancellationToken::new();
    let p = Primaries::default();
    p.insert(JOB, replica.store.clone(), in_sync);
    tokio::spawn(p.serve(listener, replica.serve.clone()));
    Ok(())
}

fn follow(standby: &Replica, primary: &Replica) -> Follower {
    let cancel = CancellationToken::new();
    let report = Arc::new(Mutex::new(FollowReport::default()));
    let task = tokio::spawn(follow_forever(
        crate::repl::Dial::plain(primary.addr),
        JOB.into(),
        standby.name.clone(),
        standby.store.clone(),
        report.clone(),
        cancel.clone(),
    ));
    Follower {
        cancel,
        report,
        task,
    }
}

/// Run the failovers. Must run on a multi-threaded tokio runtime.
pub async fn run(cfg: &FailoverRun) -> anyhow::Result<FailoverReport> {
    anyhow::ensure!(
        (1..=2).contains(&cfg.standbys),
        "failovers need 1 or 2 standbys"
    );
    let mut rng = Rng::new(cfg.seed);
    let n = usize::from(cfg.standbys) + 1;
    let mut epoch = 1u64;
    let mut replicas = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tempfile::Builder::new()
            .prefix("warden-failover-")
            .tempdir()?;
        let role = if i == 0 { Role::Primary } else { Role::Standby };
        let (store, _) =
            StateStore::open(dir.path(), role, epoch, cfg.standbys, Limits::default())?;
        if cfg.break_acks {
            store.break_acks_for_tests();
        }
        // A port of its own, kept across its terms as primary.
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        replicas.push(Replica {
            _dir: dir,
            name: format!("r{i}"),
            store,
            addr,
            serve: CancellationToken::new(),
        });
    }
    let mut primary = 0usize;
    let names = |replicas: &[Replica], p: usize| -> Vec<String> {
        replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != p)
            .map(|(_, r)| r.name.clone())
            .collect()
    };
    let in_sync = names(&replicas, primary);
    serve(&mut replicas[primary], in_sync).await?;
    let mut followers: Vec<Follower> = (0..n)
        .filter(|&i| i != primary)
        .map(|i| follow(&replicas[i], &replicas[primary]))
        .collect();

    let mut report = FailoverReport::default();
    // Every acknowledged write: key number → (value, epoch it was acknowledged under).
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut unchecked: Vec<u64> = Vec::new();
    let mut lost = std::collections::BTreeSet::new();
    let mut promoted_epochs = vec![epoch];
    for round in 0..cfg.failovers as u64 {
        // Keys of a round are its own: round × 10^9 on.
        let next_key = round * 1_000_000_000;
        // Write for a while through the current primary: a few concurrent writers, so that
        // writes are in flight when the fault comes. An acknowledgement is recorded the
        // moment it arrives.
        let store = replicas[primary].store.clone();
        let run_for = Duration::from_millis(20 + rng.next_u64() % 60);
        let writers = 4u64;
        let log: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (store, log) = (store.clone(), log.clone());
            let level = cfg.ack;
            let first = next_key + w;
            tasks.push(tokio::spawn(async move {
                let mut k = first;
                loop {
                    let Ok(seq) = store.write(
                        epoch,
                        Op::Put {
                            key: format!("k{k}"),
                            value: Bytes::from(k.to_string()),
                        },
                    ) else {
                        return;
                    };
                    if store.wait(seq, level, Duration::from_secs(5)).await.is_ok() {
                        log.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((k, epoch));
                    }
                    k += writers;
                }
            }));
        }
        tokio::time::sleep(run_for).await;
        // The fault: the standbys stop hearing the primary (what is on the wire is lost with
        // it), and the primary, cut off, goes on taking writes for a while (the rest of its
        // write lease); then its writers are stopped.
        for f in followers.drain(..) {
            f.cancel.cancel();
            let _ = f.task.await;
            report.discarded += f.report.lock().map(|r| r.discarded).unwrap_or(0);
        }
        replicas[primary].serve.cancel();
        tokio::time::sleep(CUT_OFF_WRITES).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let done = std::mem::take(
            &mut *log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (k, e) in done {
            if promoted_epochs.iter().any(|&p| p > e) {
                report.stale_acks += 1;
            }
            acked.insert(k, e);
            unchecked.push(k);
        }

        // Promote the standby the rule picks, from what each holds on disk.
        let t0 = Instant::now();
        let candidates: Vec<Candidate<usize>> = (0..n)
            .filter(|&i| i != primary)
            .map(|i| Candidate {
                id: i,
                in_sync: true,
                last_epoch: replicas[i].store.position().1,
                synced: replicas[i].store.committed().local,
            })
            .collect();
        let pick = promotion(cfg.ack, cfg.standbys, &candidates)
            .map_err(|e| anyhow::anyhow!("no promotion possible: {e}"))?;
        epoch += 1;
        promoted_epochs.push(epoch);
        let old = primary;
        primary = pick.id;
        replicas[primary].store.promote(epoch)?;
        replicas[old].store.demote(epoch)?;
        let in_sync = names(&replicas, primary);
        serve(&mut replicas[primary], in_sync).await?;
        followers = (0..n)
            .filter(|&i| i != primary)
            .map(|i| follow(&replicas[i], &replicas[primary]))
            .collect();
        // Switchover: the first write the new primary acknowledges.
        let store = replicas[primary].store.clone();
        let seq = store.write(
            epoch,
            Op::Put {
                key: "switchover".into(),
                value: Bytes::from(epoch.to_string()),
            },
        )?;
        store
            .wait(seq, cfg.ack, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("the new primary acknowledged nothing: {e}"))?;
        report.switchover.push(t0.elapsed());

        // No lost ack: what was acknowledged is on the new primary.
        for k in unchecked.drain(..) {
            check(&store, k, &mut lost, &mut report);
        }
        report.failovers += 1;
    }
    // At the end, everything acknowledged in the whole run.
    let store = replicas[primary].store.clone();
    for &k in acked.keys() {
        check(&store, k, &mut lost, &mut report);
    }
    report.acked = acked.len() as u64;
    report.lost = lost.len() as u64;
    for f in followers {
        f.cancel.cancel();
        let _ = f.task.await;
    }
    Ok(report)
}

fn check(
    store: &StateStore,
    k: u64,
    lost: &mut std::collections::BTreeSet<u64>,
    report: &mut FailoverReport,
) {
    let (value, _) = store.get(&format!("k{k}"));
    if value.as_deref() != Some(k.to_string().as_bytes())
        && lost.insert(k)
        && report.problems.len() < 5
    {
        report.problems.push(format!(
            "write k{k} was acknowledged but the primary has {:?}",
            value.map(|v| String::from_utf8_lossy(&v).into_owned())
        ));
    }
}
