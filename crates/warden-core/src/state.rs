//! Replicated task state: the rules, with no I/O.
//!
//! A stateful singleton (`[state]` in its job spec) writes through its agent's state API; the
//! agent appends every write to a log, numbered by a *sequence number* that grows by one per
//! write, and ships the log to the job's standbys. This module decides, from numbers alone:
//!
//! - when a write counts as acknowledged at each [`AckLevel`] ([`committed`]);
//! - which standby may be promoted when the primary is lost, so that nothing acknowledged is
//!   lost ([`promotion`]);
//! - which frames and writes a replica must refuse because they come from a deposed epoch
//!   ([`Fence`]).
//!
//! The guarantee rests on one rule, the in-sync set (the rule of Kafka's ISR and Patroni's
//! synchronous mode): at `standby`, a write is acknowledged only when *every* standby of the
//! in-sync set holds it, and a primary stops waiting for a lagging standby only after the server
//! has removed it from the set in its store. Any member of the set the server holds therefore
//! has every write acknowledged at `standby`. At `quorum`, a write is acknowledged when a
//! majority of `standbys + 1` replicas (the primary counts) holds it; a promotion then needs a
//! majority reachable, and takes the one with the highest sequence number, which holds every
//! acknowledged write because two majorities meet.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How durable a write must be before the state API acknowledges it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckLevel {
    /// Written and synced (fsync) on the primary's agent. Lost if that host is lost before
    /// the write was replicated; a deposed primary reports such writes when it rejoins.
    Local,
    /// Synced on the primary and on every standby of the in-sync set (at least one).
    #[default]
    Standby,
    /// Synced on a majority of `standbys + 1` replicas, the primary counting as one.
    Quorum,
}

impl AckLevel {
    /// The level as job specs and the state API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AckLevel::Local => "local",
            AckLevel::Standby => "standby",
            AckLevel::Quorum => "quorum",
        }
    }

    /// Parse the spelling of [`AckLevel::as_str`].
    pub fn parse(s: &str) -> Option<AckLevel> {
        match s {
            "local" => Some(AckLevel::Local),
            "standby" => Some(AckLevel::Standby),
            "quorum" => Some(AckLevel::Quorum),
            _ => None,
        }
    }
}

impl fmt::Display for AckLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a standby runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMode {
    /// The standby's task runs and follows the stream; promotion flips its role.
    #[default]
    Hot,
    /// Only the standby's agent holds the log; promotion starts the task on that state.
    Warm,
}

impl StateMode {
    /// The mode as job specs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            StateMode::Hot => "hot",
            StateMode::Warm => "warm",
        }
    }
}

/// How long an in-sync standby may hold up writes (behind the primary, not catching up) before
/// the primary asks the server to take it out of the in-sync set, when another in-sync standby
/// goes on without it. It rejoins once it has caught up.
pub const STANDBY_LAG_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest number of standbys a job may ask for.
pub const MAX_STANDBYS: u8 = 2;

/// A job's `[state]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Standbys that follow the primary's log: 0 (local state only, lost with the host),
    /// 1 or 2. Default 1.
    #[serde(default = "default_standbys")]
    pub standbys: u8,
    /// Default acknowledgement level of a write (a write may ask for another). Default
    /// `standby`; `local` when `standbys = 0`.
    #[serde(default)]
    pub ack: Option<AckLevel>,
    /// `hot` (default) or `warm`.
    #[serde(default)]
    pub mode: StateMode,
}

fn default_standbys() -> u8 {
    1
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec {
            standbys: 1,
            ack: None,
            mode: StateMode::Hot,
        }
    }
}

impl StateSpec {
    /// The job's default acknowledgement level.
    pub fn ack(&self) -> AckLevel {
        self.ack.unwrap_or(if self.standbys == 0 {
            AckLevel::Local
        } else {
            AckLevel::Standby
        })
    }

    /// Check the table, naming the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.standbys > MAX_STANDBYS {
            return Err(ConfigError::new(
                "state.standbys",
                format!("must be 0, 1 or {MAX_STANDBYS}"),
            ));
        }
        if self.standbys == 0 && self.ack() != AckLevel::Local {
            return Err(ConfigError::new(
                "state.ack",
                format!(
                    "`{}` needs a standby; set state.standbys = 1 or use ack = \"local\"",
                    self.ack()
                ),
            ));
        }
        Ok(())
    }

    /// Whether a write may ask for `level` in this job: a level that needs more replicas than
    /// the job has can never be reached.
    pub fn allows(&self, level: AckLevel) -> bool {
        level == AckLevel::Local || self.standbys > 0
    }
}

/// A replica slot's part in its job's replicated state, as the controller records it with the
/// slot. A job with `standbys = k` has `k + 1` slots on distinct agents; the job's *state
/// epoch* is the highest `epoch` among them, and its primary is the slot marked `primary` at
/// that epoch (a slot still marked primary at an older epoch was deposed and is a standby).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// The job's state epoch when the slot got this role.
    pub epoch: u64,
    /// The slot is the primary of that epoch.
    pub primary: bool,
    /// A standby in the in-sync set: it holds every write acknowledged at `standby`.
    #[serde(default)]
    pub in_sync: bool,
}

/// The state epoch of a job whose slots carry `replicas`: the highest among them (0 before
/// the first primary was chosen).
pub fn state_epoch<'a>(replicas: impl IntoIterator<Item = Option<&'a Replica>>) -> u64 {
    replicas
        .into_iter()
        .flatten()
        .map(|r| r.epoch)
        .max()
        .unwrap_or(0)
}

/// The index of the primary among `replicas` (the slot marked primary at the state epoch).
pub fn primary_index<'a>(
    replicas: impl IntoIterator<Item = Option<&'a Replica>> + Clone,
) -> Option<usize> {
    let epoch = state_epoch(replicas.clone());
    replicas
        .into_iter()
        .position(|r| r.is_some_and(|r| r.primary && r.epoch == epoch))
}

/// What an agent is told about one replica copy: its role and where its peers are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaOrder {
    /// The job's state epoch: the primary writes under it, standbys refuse older frames.
    pub epoch: u64,
    /// This copy is the primary.
    pub primary: bool,
    /// For a standby: the replication address (`host:port`) of the primary's agent; empty
    /// while the primary has none (being replaced).
    #[serde(default)]
    pub primary_addr: String,
    /// For a standby: the primary's agent name, which its TLS certificate must carry when
    /// replication runs over mutual TLS; empty while there is no primary.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub primary_agent: String,
    /// For the primary: the agent names of the standbys in the in-sync set.
    #[serde(default)]
    pub in_sync: Vec<String>,
    /// For the primary: the agent names of all the job's standbys (a standby it finds caught
    /// up may join the set only while it is one of them).
    #[serde(default)]
    pub standbys: Vec<String>,
    /// For the primary: take no more writes (a planned switchover waits for a standby to
    /// hold everything, then promotes it).
    #[serde(default)]
    pub sealed: bool,
}

/// What a replica copy last reported of its state (in its agent's heartbeats): what a
/// promotion at `quorum` compares, and what a planned switchover waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplicaReport {
    /// The copy it is about (its fencing token).
    pub copy: crate::types::FencingToken,
    /// The highest state epoch the replica has seen: once above the lost primary's epoch it
    /// refuses that primary's frames, so `seq` and `last_epoch` are final for it.
    pub fence: u64,
    /// The epoch of its newest entry.
    pub last_epoch: u64,
    /// The last sequence number it holds (applied: a primary has written it, a standby received it).
    pub seq: u64,
    /// A primary sealed for a planned switchover.
    pub sealed: bool,
}

/// Replicas (the primary plus its standbys) that must hold a write at [`AckLevel::Quorum`].
pub fn majority(standbys: u8) -> usize {
    let replicas = usize::from(standbys) + 1;
    replicas / 2 + 1
}

/// What the primary knows of its replicas when it decides what is acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest sequence number synced on the primary itself.
    pub local: u64,
    /// Highest contiguous sequence number each standby reported synced, with whether the
    /// server's in-sync set (as last read by the primary) holds it.
    pub standbys: Vec<StandbyProgress>,
}

/// One standby's progress as the primary sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyProgress {
    /// Highest contiguous sequence number it reported synced.
    pub synced: u64,
    /// Whether it is in the in-sync set.
    pub in_sync: bool,
}

/// The highest sequence number acknowledged at `level`: every write up to it may be answered.
///
/// - `local`: synced on the primary.
/// - `standby`: synced on the primary and on every in-sync standby; nothing while the in-sync
///   set is empty (the write waits, the server has to restore a standby first).
/// - `quorum`: synced on a majority of `configured + 1` replicas.
pub fn committed(level: AckLevel, progress: &Progress, configured: u8) -> u64 {
    match level {
        AckLevel::Local => progress.local,
        AckLevel::Standby => {
            let mut in_sync = progress.standbys.iter().filter(|s| s.in_sync).peekable();
            if in_sync.peek().is_none() {
                return 0;
            }
            in_sync.fold(progress.local, |low, s| low.min(s.synced))
        }
        AckLevel::Quorum => {
            let need = majority(configured);
            let mut all: Vec<u64> = std::iter::once(progress.local)
                .chain(progress.standbys.iter().map(|s| s.synced))
                .collect();
            if all.len() < need {
                return 0;
            }
            all.sort_unstable_by(|a, b| b.cmp(a));
            all[need - 1]
        }
    }
}

/// A replica the server could promote, as it reported itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<Id> {
    /// Who it is.
    pub id: Id,
    /// Whether the server's in-sync set holds it.
    pub in_sync: bool,
    /// The epoch of the newest entry it holds: a log that ends in a newer epoch holds that
    /// epoch's writes, whatever its length (an older epoch's tail, never replicated, can be
    /// longer).
    pub last_epoch: u64,
    /// Highest contiguous sequence number it holds (its log is sealed there on promotion).
    pub synced: u64,
}

impl<Id> Candidate<Id> {
    /// How much of the history it holds: `(last_epoch, synced)`, compared in that order (the
    /// rule of Raft's vote).
    pub fn holds(&self) -> (u64, u64) {
        (self.last_epoch, self.synced)
    }
}

/// Why no replica may be promoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoPromotion {
    /// No reachable replica is in the in-sync set: promoting any other could lose writes
    /// acknowledged at `standby`.
    #[error("no reachable standby is in the in-sync set")]
    NoneInSync,
    /// Fewer replicas answered than a quorum needs to be sure of the highest acknowledged write.
    #[error("{reachable} of {configured} standbys reachable; a quorum promotion needs {need}")]
    NoQuorum {
        /// Standbys that answered.
        reachable: usize,
        /// Standbys the job has.
        configured: u8,
        /// Standbys that must answer (the primary being lost).
        need: usize,
    },
    /// The job keeps no standby.
    #[error("the job keeps no standby")]
    NoStandby,
}

/// Which standby to promote when the primary is lost, for a job writing at `level` with
/// `configured` standbys, among the `reachable` ones. Ties go to the first candidate.
///
/// - `standby` (and `local`): an in-sync standby, the one that holds the most (each holds
///   every write acknowledged at `standby`; the highest also holds the most `local` writes).
/// - `quorum`: the standbys that answered must, with the lost primary counted as not
///   answering, still meet every possible write quorum: `configured + 1 - majority + 1` of
///   them; the one that holds the most ([`Candidate::holds`]) holds every acknowledged
///   write. Their numbers must be final: each must have stopped taking frames of the lost
///   primary's epoch before it reported them (see [`ReplicaReport::fence`]).
pub fn promotion<Id: Clone>(
    level: AckLevel,
    configured: u8,
    reachable: &[Candidate<Id>],
) -> Result<Candidate<Id>, NoPromotion> {
    if configured == 0 {
        return Err(NoPromotion::NoStandby);
    }
    let best = |it: &mut dyn Iterator<Item = &Candidate<Id>>| holding_most(it);
    match level {
        AckLevel::Local | AckLevel::Standby => {
            best(&mut reachable.iter().filter(|c| c.in_sync)).ok_or(NoPromotion::NoneInSync)
        }
        AckLevel::Quorum => {
            let replicas = usize::from(configured) + 1;
            let need = replicas - majority(configured) + 1;
            if reachable.len() < need {
                return Err(NoPromotion::NoQuorum {
                    reachable: reachable.len(),
                    configured,
                    need,
                });
            }
            best(&mut reachable.iter()).ok_or(NoPromotion::NoQuorum {
                reachable: 0,
                configured,
                need,
            })
        }
    }
}

/// The candidate that holds the most ([`Candidate::holds`]); ties go to the first.
pub fn holding_most<'a, Id: Clone + 'a>(
    candidates: impl IntoIterator<Item = &'a Candidate<Id>>,
) -> Option<Candidate<Id>> {
    candidates
        .into_iter()
        .fold(None::<&Candidate<Id>>, |best, c| match best {
            Some(b) if b.holds() >= c.holds() => Some(b),
            _ => Some(c),
        })
        .cloned()
}

/// The epoch check every replica applies. The epoch is the task's fencing token: it grows at
/// every promotion, and a replica that has seen epoch `e` refuses anything older.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// Highest epoch seen.
    pub epoch: u64,
}

/// A write or frame from a deposed epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fenced: epoch {got} is older than the current epoch {current}")]
pub struct Fenced {
    /// The epoch the caller sent.
    pub got: u64,
    /// The epoch this replica holds.
    pub current: u64,
}

impl Fence {
    /// Admit `epoch`: an older one is refused; a newer one becomes the current epoch.
    pub fn admit(&mut self, epoch: u64) -> Result<(), Fenced> {
        if epoch < self.epoch {
            return Err(Fenced {
                got: epoch,
                current: self.epoch,
            });
        }
        self.epoch = epoch;
        Ok(())
    }

    /// Check `epoch` for a write on the primary: exactly the current epoch may write (a newer
    /// one means this replica has not been told it was promoted, and must not guess).
    pub fn check_write(&self, epoch: u64) -> Result<(), Fenced> {
        if epoch != self.epoch {
            return Err(Fenced {
                got: epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn progress(local: u64, standbys: &[(u64, bool)]) -> Progress {
        Progress {
            local,
            standbys: standbys
                .iter()
                .map(|&(synced, in_sync)| StandbyProgress { synced, in_sync })
                .collect(),
        }
    }

    #[test]
    fn spec_defaults_and_errors_name_the_field() {
        let spec: StateSpec = serde_json::from_str("{}").expect("empty table");
        assert_eq!(spec, StateSpec::default());
        assert_eq!(spec.ack(), AckLevel::Standby);
        let local: StateSpec = serde_json::from_str(r#"{"standbys": 0}"#).expect("local");
        assert_eq!(local.ack(), AckLevel::Local);
        assert!(local.validate().is_ok());
        assert!(!local.allows(AckLevel::Standby));

        let err = StateSpec {
            standbys: 3,
            ..StateSpec::default()
        }
        .validate()
        .expect_err("3 standbys");
        assert_eq!(err.field, "state.standbys");
        let err = StateSpec {
            standbys: 0,
            ack: Some(AckLevel::Quorum),
            ..StateSpec::default()
        }
        .validate()
        .expect_err("quorum without standby");
        assert_eq!(err.field, "state.ack");
        assert!(serde_json::from_str::<StateSpec>(r#"{"ack": "all"}"#).is_err());
        assert!(serde_json::from_str::<StateSpec>(r#"{"replicas": 2}"#).is_err());
    }

    #[test]
    fn standby_level_waits_for_every_in_sync_standby() {
        assert_eq!(committed(AckLevel::Local, &progress(9, &[]), 1), 9);
        // One in-sync standby behind: it holds the line.
        let p = progress(9, &[(5, true), (8, true)]);
        assert_eq!(committed(AckLevel::Standby, &p, 2), 5);
        // A standby out of the set no longer holds it.
        let p = progress(9, &[(5, false), (8, true)]);
        assert_eq!(committed(AckLevel::Standby, &p, 2), 8);
        // The primary itself must have synced too.
        let p = progress(4, &[(8, true)]);
        assert_eq!(committed(AckLevel::Standby, &p, 1), 4);
        // Nothing is acknowledged while the set is empty.
        let p = progress(9, &[(9, false)]);
        assert_eq!(committed(AckLevel::Standby, &p, 1), 0);
    }

    #[test]
    fn quorum_counts_the_primary() {
        assert_eq!(majority(1), 2);
        assert_eq!(majority(2), 2);
        // Two standbys: primary + the faster standby is a majority.
        let p = progress(9, &[(3, false), (7, true)]);
        assert_eq!(committed(AckLevel::Quorum, &p, 2), 7);
        // A primary behind its standbys: the two standbys form the majority.
        let p = progress(2, &[(6, true), (7, true)]);
        assert_eq!(committed(AckLevel::Quorum, &p, 2), 6);
        // One standby configured, not connected: no majority.
        assert_eq!(committed(AckLevel::Quorum, &progress(9, &[]), 1), 0);
    }

    #[test]
    fn promotion_takes_the_highest_in_sync_standby() {
        let c = |id: &'static str, in_sync, synced| Candidate {
            id,
            in_sync,
            last_epoch: 1,
            synced,
        };
        let pick = promotion(
            AckLevel::Standby,
            2,
            &[c("a", true, 5), c("b", false, 9), c("c", true, 7)],
        );
        assert_eq!(pick.map(|c| c.id), Ok("c"));
        assert_eq!(
            promotion(AckLevel::Standby, 1, &[c("b", false, 9)]),
            Err(NoPromotion::NoneInSync)
        );
        assert_eq!(
            promotion::<&str>(AckLevel::Standby, 0, &[]),
            Err(NoPromotion::NoStandby)
        );
        // Quorum with two standbys: both must answer (a majority of 3 without the primary).
        assert!(matches!(
            promotion(AckLevel::Quorum, 2, &[c("a", true, 5)]),
            Err(NoPromotion::NoQuorum { need: 2, .. })
        ));
        let pick = promotion(AckLevel::Quorum, 2, &[c("a", false, 5), c("b", true, 4)]);
        assert_eq!(pick.map(|c| c.id), Ok("a"));
        // A longer log that ends in an older epoch (a tail never replicated) loses to a
        // shorter one of the newer epoch.
        let old_tail = Candidate {
            last_epoch: 1,
            ..c("old", false, 50)
        };
        let newer = Candidate {
            last_epoch: 2,
            ..c("new", false, 30)
        };
        let pick = promotion(AckLevel::Quorum, 2, &[old_tail, newer]);
        assert_eq!(pick.map(|c| c.id), Ok("new"));
    }

    #[test]
    fn fence_refuses_older_epochs_and_writes_outside_the_current_one() {
        let mut f = Fence::default();
        assert!(f.admit(3).is_ok());
        assert_eq!(f.admit(2), Err(Fenced { got: 2, current: 3 }));
        assert!(f.admit(3).is_ok());
        assert!(f.check_write(3).is_ok());
        assert!(f.check_write(4).is_err());
        assert!(f.admit(4).is_ok());
        assert_eq!(f.check_write(3), Err(Fenced { got: 3, current: 4 }));
        assert_eq!(
            Fenced { got: 3, current: 4 }.to_string(),
            "fenced: epoch 3 is older than the current epoch 4"
        );
    }

    /// The whole point: a write acknowledged at a level survives the loss of the primary (and,
    /// at `standby`, of every standby but one in-sync one; at `quorum`, of a minority), when
    /// the promotion rule picks the new primary. Standbys' synced numbers only grow; the
    /// in-sync set only loses a member after the primary stopped counting it.
    #[test]
    fn acknowledged_writes_survive_promotion() {
        proptest!(ProptestConfig::with_cases(2000), |(
            configured in 1u8..=2,
            quorum in any::<bool>(),
            steps in proptest::collection::vec((0usize..3, 0u64..4, any::<bool>()), 1..40),
            lost in proptest::collection::vec(any::<bool>(), 2),
        )| {
            let level = if quorum { AckLevel::Quorum } else { AckLevel::Standby };
            let n = usize::from(configured);
            let mut p = Progress {
                local: 0,
                standbys: vec![StandbyProgress { synced: 0, in_sync: true }; n],
            };
            let mut acked = 0u64;
            for (who, grow, drop_from_set) in steps {
                // The primary writes ahead; standbys follow, never past it.
                if who == 0 || who > n {
                    p.local += grow;
                } else {
                    let s = &mut p.standbys[who - 1];
                    s.synced = (s.synced + grow).min(p.local);
                    if drop_from_set && p.standbys.iter().filter(|s| s.in_sync).count() > 1 {
                        p.standbys[who - 1].in_sync = false;
                    }
                }
                acked = acked.max(committed(level, &p, configured));
            }
            // Lose the primary and the standbys `lost` names; promote among the rest.
            let reachable: Vec<Candidate<usize>> = p
                .standbys
                .iter()
                .enumerate()
                .filter(|(i, _)| !lost[*i])
                .map(|(i, s)| Candidate { id: i, in_sync: s.in_sync, last_epoch: 1, synced: s.synced })
                .collect();
            if let Ok(new) = promotion(level, configured, &reachable) {
                prop_assert!(new.synced >= acked, "promoted {new:?} lacks acked {acked}: {p:?}");
            }
        });
    }
}
