//! Owner + witness sharding of agents over the control plane's replicas: who hears which agent,
//! and how the leader turns one replica's suspicion into a verdict.
//!
//! Every agent keeps two sessions. Its **owner** takes the full heartbeat stream, acknowledges
//! it (the acks renew the agent's lease), and runs the liveness detector; its **witness** takes
//! a lighter stream (every few heartbeat numbers) and answers the leader's questions about it.
//! Both are chosen by rendezvous (highest-random-weight) hashing of the agent over the live
//! replica set, so no per-agent assignment is stored anywhere: the set and its epoch are all
//! that is written, and only when the set changes. Rendezvous ranks every replica for every
//! agent; the owner is the first, the witness the second — so when an owner dies, the agent's
//! witness *is* its next owner, already holding the arrival times it needs.
//!
//! The [`Confirmer`] is the leader's part and stays the only source of verdicts:
//!
//! - an owner's suspicion counts only if it carries the current epoch and comes from the
//!   replica the leader believes owns the agent (a stale owner — removed from the set, or
//!   swapped out — is fenced);
//! - the leader then asks the witness. If the witness has heard a newer heartbeat than the
//!   owner, or the agent answers the witness's probe, the agent is alive and the owner's path
//!   is the problem: the two swap roles and no verdict is written. Only when the witness agrees
//!   (its session closed too, or the agent stays silent to its probe) is the agent declared
//!   dead;
//! - an agent that moves its full stream to its witness (its owner stopped acknowledging) makes
//!   the witness ask to take over; the leader swaps the roles at once.
//!
//! The confirmer is pure: inputs in, outputs out, no clock, no I/O. The server and the
//! simulation ([`crate::sim::scale`]) drive the same code.

use crate::hash::{FxHashMap, FxHashSet};

/// A control-plane replica, by its index in the deployment.
pub type ReplicaId = u32;

/// A stable 64-bit key for an agent name (FNV-1a, then a finalising mix): the same on every
/// replica and every platform, so all replicas rank an agent alike.
pub fn agent_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser: a bijection on `u64` whose output bits each depend on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The rendezvous weight of `replica` for `agent`.
fn weight(agent: u64, replica: ReplicaId) -> u64 {
    mix(agent ^ mix(u64::from(replica).wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// An agent's two replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// Full stream, acks, leases, detection.
    pub owner: ReplicaId,
    /// Light stream; confirms or refutes the owner's suspicion. `None` with a single replica.
    pub witness: Option<ReplicaId>,
}

/// The live replica set and its epoch (stored in the cluster store; bumped on every change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSet {
    epoch: u64,
    members: Vec<ReplicaId>,
}

impl ReplicaSet {
    /// A set at `epoch` (members deduplicated and sorted).
    pub fn new(epoch: u64, members: impl IntoIterator<Item = ReplicaId>) -> Self {
        let mut members: Vec<ReplicaId> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        ReplicaSet { epoch, members }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, sorted.
    pub fn members(&self) -> &[ReplicaId] {
        &self.members
    }

    /// Whether `r` is a member.
    pub fn contains(&self, r: ReplicaId) -> bool {
        self.members.binary_search(&r).is_ok()
    }

    /// The set without `r`, at the next epoch (`None` when `r` is not a member).
    pub fn without(&self, r: ReplicaId) -> Option<ReplicaSet> {
        let i = self.members.binary_search(&r).ok()?;
        let mut members = self.members.clone();
        members.remove(i);
        Some(ReplicaSet {
            epoch: self.epoch + 1,
            members,
        })
    }

    /// The set with `r`, at the next epoch (`None` when `r` is already a member).
    pub fn with(&self, r: ReplicaId) -> Option<ReplicaSet> {
        let i = self.members.binary_search(&r).err()?;
        let mut members = self.members.clone();
        members.insert(i, r);
        Some(ReplicaSet {
            epoch: self.epoch + 1,
            members,
        })
    }

    /// Owner and witness of the agent with key `agent` (see [`agent_key`]): the two members
    /// with the highest rendezvous weight. `None` for an empty set.
    pub fn roles(&self, agent: u64) -> Option<Roles> {
        let mut best: Option<(u64, ReplicaId)> = None;
        let mut second: Option<(u64, ReplicaId)> = None;
        for &r in &self.members {
            let w = (weight(agent, r), r);
            if best.is_none_or(|b| w > b) {
                second = best;
                best = Some(w);
            } else if second.is_none_or(|s| w > s) {
                second = Some(w);
            }
        }
        best.map(|(_, owner)| Roles {
            owner,
            witness: second.map(|(_, r)| r),
        })
    }

    /// Every member, best first, for the agent with key `agent`: where it goes when both its
    /// sessions fail (the first two are its owner and witness).
    pub fn ranking(&self, agent: u64) -> Vec<ReplicaId> {
        let mut ranked: Vec<(u64, ReplicaId)> = self
            .members
            .iter()
            .map(|&r| (weight(agent, r), r))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked.into_iter().map(|(_, r)| r).collect()
    }

    /// The most sessions one replica should accept for a fleet of `agents`: its share of the
    /// owned and the witnessed sessions (two per agent over the members), with `headroom`
    /// (e.g. 1.5) for an uneven hash and for taking over a dead peer's agents.
    pub fn session_limit(&self, agents: usize, headroom: f64) -> usize {
        let n = self.members.len().max(1);
        let sessions = if n == 1 { agents } else { 2 * agents };
        ((sessions as f64 / n as f64) * headroom.max(1.0)).ceil() as usize
    }
}

/// What a replica tells the leader about one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The owner suspects the agent: silent past its detector's deadline, or its session
    /// closed. `last_seq` is the newest heartbeat number the owner heard.
    Suspect {
        /// The epoch the owner holds.
        epoch: u64,
        /// Newest heartbeat the owner heard.
        last_seq: u64,
    },
    /// The witness's answer to [`Output::Ask`].
    Answer {
        /// The epoch of the question.
        epoch: u64,
        /// What the witness found.
        heard: Heard,
    },
    /// The agent moved its full stream to this replica, its witness (its owner stopped
    /// acknowledging): the witness asks to own it.
    Takeover {
        /// The epoch the witness holds.
        epoch: u64,
    },
}

/// What a witness found when asked about an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A heartbeat newer than the owner's, or a reply to the witness's probe: the agent lives,
    /// the owner's path is the problem.
    Alive,
    /// Its session closed too, or the agent did not answer the witness's probe.
    Silent,
    /// The witness cannot tell: it holds no session with the agent (a new witness still
    /// connecting), or its own stream from the agent has been silent for long before the
    /// question (its path, not the agent, may be down).
    Unreachable,
}

/// Why the confirmer ignored a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The report carries an epoch other than the current one.
    StaleEpoch,
    /// The sender does not hold the role the report needs (a swapped-out or removed owner, a
    /// replica that is not the agent's witness).
    NotInRole,
    /// The agent was already declared dead; its next session is a new generation.
    AlreadyDead,
    /// An answer with no question pending.
    Unasked,
}

/// What the leader does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Ask `witness` whether it hears the agent after heartbeat `after_seq`. When the output
    /// follows an [`Heard::Unreachable`] answer, ask after a grace (the time an agent takes to
    /// reach another replica on its own); the next unreachable answer is a verdict.
    Ask {
        /// The agent's key.
        agent: u64,
        /// Who to ask.
        witness: ReplicaId,
        /// The owner's newest heartbeat.
        after_seq: u64,
        /// Ask after a grace, not at once.
        later: bool,
    },
    /// The agent is dead: write the verdict (the only writer is the leader).
    Verdict {
        /// The agent's key.
        agent: u64,
        /// The epoch of the declaration.
        epoch: u64,
    },
    /// The agent's roles changed (a swap after a path problem): tell both replicas.
    Roles {
        /// The agent's key.
        agent: u64,
        /// Its roles from now on.
        roles: Roles,
    },
    /// A report was ignored.
    Refused {
        /// The agent's key.
        agent: u64,
        /// The sender.
        from: ReplicaId,
        /// Why.
        why: Refusal,
    },
}

#[derive(Clone, Copy, Debug)]
struct Asked {
    owner: ReplicaId,
    after_seq: u64,
    unreachable: bool,
}

/// The leader's confirmation of suspicions. See the [module docs](self).
#[derive(Debug)]
pub struct Confirmer {
    set: ReplicaSet,
    /// Roles that differ from the rendezvous ones (after a swap), for this epoch only.
    swapped: FxHashMap<u64, Roles>,
    /// Agents whose witness was asked: the suspecting owner, its newest heartbeat, and whether
    /// the witness already answered [`Heard::Unreachable`] once.
    asked: FxHashMap<u64, Asked>,
    /// Agents declared dead and not yet back as a new generation.
    dead: FxHashSet<u64>,
}

impl Confirmer {
    /// A confirmer over `set`.
    pub fn new(set: ReplicaSet) -> Self {
        Confirmer {
            set,
            swapped: FxHashMap::default(),
            asked: FxHashMap::default(),
            dead: FxHashSet::default(),
        }
    }

    /// The replica set.
    pub fn set(&self) -> &ReplicaSet {
        &self.set
    }

    /// The agent's roles as the leader sees them (`None` with no replicas).
    pub fn roles(&self, agent: u64) -> Option<Roles> {
        self.swapped
            .get(&agent)
            .copied()
            .or_else(|| self.set.roles(agent))
    }

    /// Whether the agent was declared dead (and has not come back).
    pub fn is_dead(&self, agent: u64) -> bool {
        self.dead.contains(&agent)
    }

    /// Suspicions waiting for a witness's answer.
    pub fn pending(&self) -> usize {
        self.asked.len()
    }

    /// Record a verdict already in the store (a new leader reads them when it takes over).
    pub fn mark_dead(&mut self, agent: u64) {
        self.dead.insert(agent);
        self.asked.remove(&agent);
    }

    /// The agent came back as a new generation (a new session after its verdict).
    pub fn rejoined(&mut self, agent: u64) {
        self.dead.remove(&agent);
    }

    /// Adopt a new replica set (a replica declared dead; the caller stores it first). Swaps
    /// end; open questions are asked again under the new epoch (of the agent's witness in the
    /// new set); an owner that left takes its suspicions with it (the new owner, its former
    /// witness, detects on its own). Admitting a replica (rebalancing) is not handled yet:
    /// its agents' suspicions would be dropped the same way.
    pub fn set_replicas(&mut self, set: ReplicaSet, out: &mut Vec<Output>) {
        self.set = set;
        // Swaps end with the epoch: every replica adopts the set's ranking (a path still
        // broken is found and swapped again).
        self.swapped.clear();
        let asked: Vec<(u64, Asked)> = self.asked.drain().collect();
        for (agent, q) in asked {
            if self.roles(agent).is_some_and(|r| r.owner == q.owner) {
                // Asked again under the new epoch; a grace already given is not given twice.
                self.ask(agent, q.owner, q.after_seq, q.unreachable, out);
            }
        }
    }

    /// A replica's report about an agent.
    pub fn report(&mut self, agent: u64, from: ReplicaId, report: Report, out: &mut Vec<Output>) {
        let epoch = match report {
            Report::Suspect { epoch, .. }
            | Report::Answer { epoch, .. }
            | Report::Takeover { epoch } => epoch,
        };
        let refuse = |why, out: &mut Vec<Output>| out.push(Output::Refused { agent, from, why });
        if epoch != self.set.epoch {
            return refuse(Refusal::StaleEpoch, out);
        }
        if self.dead.contains(&agent) {
            return refuse(Refusal::AlreadyDead, out);
        }
        let Some(roles) = self.roles(agent) else {
            return refuse(Refusal::NotInRole, out);
        };
        match report {
            Report::Suspect { last_seq, .. } => {
                if from != roles.owner {
                    return refuse(Refusal::NotInRole, out);
                }
                // Said again while its question is open: the open question stands (a second
                // one would let its answers be taken out of order).
                if self.asked.get(&agent).is_some_and(|q| q.owner == from) {
                    return;
                }
                self.ask(agent, from, last_seq, false, out);
            }
            Report::Answer { heard, .. } => {
                if roles.witness != Some(from) {
                    return refuse(Refusal::NotInRole, out);
                }
                let Some(q) = self.asked.remove(&agent) else {
                    return refuse(Refusal::Unasked, out);
                };
                match heard {
                    Heard::Alive => self.swap(agent, roles, from, out),
                    Heard::Unreachable if !q.unreachable => {
                        self.ask(agent, q.owner, q.after_seq, true, out)
                    }
                    Heard::Silent | Heard::Unreachable => self.declare(agent, out),
                }
            }
            Report::Takeover { .. } => {
                // The agent reached another member on its own (its owner stopped
                // acknowledging): that member owns it, with the witness it has (or the old
                // owner, when it was the witness itself).
                if from == roles.owner || !self.set.contains(from) {
                    return refuse(Refusal::NotInRole, out);
                }
                self.asked.remove(&agent);
                self.swap(agent, roles, from, out);
            }
        }
    }

    fn ask(
        &mut self,
        agent: u64,
        owner: ReplicaId,
        after_seq: u64,
        later: bool,
        out: &mut Vec<Output>,
    ) {
        match self.roles(agent).and_then(|r| r.witness) {
            Some(witness) => {
                self.asked.insert(
                    agent,
                    Asked {
                        owner,
                        after_seq,
                        unreachable: later,
                    },
                );
                out.push(Output::Ask {
                    agent,
                    witness,
                    after_seq,
                    later,
                });
            }
            // A single replica: its owner's word is all there is.
            None => self.declare(agent, out),
        }
    }

    fn declare(&mut self, agent: u64, out: &mut Vec<Output>) {
        self.dead.insert(agent);
        out.push(Output::Verdict {
            agent,
            epoch: self.set.epoch,
        });
    }

    /// `to` owns the agent from now on; its witness is the old owner when `to` was the
    /// witness, else the witness stays.
    fn swap(&mut self, agent: u64, roles: Roles, to: ReplicaId, out: &mut Vec<Output>) {
        let witness = if roles.witness == Some(to) {
            Some(roles.owner)
        } else {
            roles.witness
        };
        let swapped = Roles { owner: to, witness };
        if self.set.roles(agent) == Some(swapped) {
            self.swapped.remove(&agent);
        } else {
            self.swapped.insert(agent, swapped);
        }
        out.push(Output::Roles {
            agent,
            roles: swapped,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five() -> ReplicaSet {
        ReplicaSet::new(1, 0..5)
    }

    #[test]
    fn rendezvous_spreads_agents_evenly_and_a_dead_owners_witness_takes_over() {
        let set = five();
        let mut owned = [0usize; 5];
        let n = 100_000u64;
        for i in 0..n {
            let key = agent_key(&format!("agent-{i}"));
            let roles = set.roles(key).expect("roles");
            assert_ne!(Some(roles.owner), roles.witness);
            let ranking = set.ranking(key);
            assert_eq!(ranking.len(), 5);
            assert_eq!(
                (Some(ranking[0]), ranking.get(1).copied()),
                (Some(roles.owner), roles.witness)
            );
            owned[roles.owner as usize] += 1;
            // Without the owner, the witness owns; the new witness is someone else alive.
            let after = set.without(roles.owner).expect("member");
            let next = after.roles(key).expect("roles");
            assert_eq!(Some(next.owner), roles.witness);
            assert!(next.witness.is_some_and(|w| w != roles.owner));
            // An agent whose roles do not involve the dead replica keeps them.
            let other = (0..5).find(|r| Some(*r) != roles.witness && *r != roles.owner);
            let keep = set.without(other.expect("a third")).expect("member");
            assert_eq!(keep.roles(key), Some(roles));
        }
        for c in owned {
            let share = c as f64 / n as f64;
            assert!((0.19..0.21).contains(&share), "{owned:?}");
        }
    }

    #[test]
    fn keys_are_stable_and_sets_are_normalised() {
        assert_eq!(agent_key("a"), agent_key("a"));
        assert_ne!(agent_key("a"), agent_key("b"));
        let s = ReplicaSet::new(3, [4, 1, 4, 2]);
        assert_eq!(s.members(), &[1, 2, 4]);
        assert!(s.without(3).is_none());
        assert!(s.with(2).is_none());
        assert_eq!(s.with(3).expect("new").epoch(), 4);
        assert_eq!(ReplicaSet::new(1, [7]).roles(9).expect("one").witness, None);
        assert_eq!(ReplicaSet::new(1, []).roles(9), None);
        assert_eq!(five().session_limit(100_000, 1.5), 60_000);
        assert_eq!(ReplicaSet::new(1, [0]).session_limit(10, 1.0), 10);
    }

    fn roles_of(c: &Confirmer, agent: u64) -> Roles {
        c.roles(agent).expect("roles")
    }

    fn suspect(epoch: u64, last_seq: u64) -> Report {
        Report::Suspect { epoch, last_seq }
    }

    fn answer(epoch: u64, heard: Heard) -> Report {
        Report::Answer { epoch, heard }
    }

    #[test]
    fn a_suspicion_becomes_a_verdict_only_when_the_witness_agrees() {
        let mut c = Confirmer::new(five());
        let mut out = Vec::new();
        let a = agent_key("a");
        let r = roles_of(&c, a);
        let w = r.witness.expect("witness");
        c.report(a, r.owner, suspect(1, 9), &mut out);
        assert_eq!(
            out,
            vec![Output::Ask {
                agent: a,
                witness: w,
                after_seq: 9,
                later: false
            }]
        );
        out.clear();
        c.report(a, w, answer(1, Heard::Silent), &mut out);
        assert_eq!(out, vec![Output::Verdict { agent: a, epoch: 1 }]);
        assert!(c.is_dead(a));
        out.clear();
        // A second suspicion of a dead agent writes nothing.
        c.report(a, r.owner, suspect(1, 9), &mut out);
        assert!(matches!(
            out[..],
            [Output::Refused {
                why: Refusal::AlreadyDead,
                ..
            }]
        ));
        c.rejoined(a);
        assert!(!c.is_dead(a));
    }

    #[test]
    fn a_witness_that_hears_the_agent_swaps_roles_instead_of_a_verdict() {
        let mut c = Confirmer::new(five());
        let mut out = Vec::new();
        let a = agent_key("b");
        let r = roles_of(&c, a);
        let w = r.witness.expect("witness");
        c.report(a, r.owner, suspect(1, 3), &mut out);
        out.clear();
        c.report(a, w, answer(1, Heard::Alive), &mut out);
        let swapped = Roles {
            owner: w,
            witness: Some(r.owner),
        };
        assert_eq!(
            out,
            vec![Output::Roles {
                agent: a,
                roles: swapped
            }]
        );
        assert_eq!(roles_of(&c, a), swapped);
        out.clear();
        // The swapped-out owner's suspicion is fenced; the new owner's is heard.
        c.report(a, r.owner, suspect(1, 4), &mut out);
        assert!(matches!(
            out[..],
            [Output::Refused {
                why: Refusal::NotInRole,
                ..
            }]
        ));
        out.clear();
        // A takeover back (the path healed the other way) restores the rendezvous roles.
        c.report(a, r.owner, Report::Takeover { epoch: 1 }, &mut out);
        assert_eq!(roles_of(&c, a), r);
        assert!(c.swapped.is_empty());
    }

    #[test]
    fn an_unreachable_witness_gets_a_grace_and_a_third_replica_can_take_over() {
        let mut c = Confirmer::new(five());
        let mut out = Vec::new();
        let a = agent_key("e");
        let r = roles_of(&c, a);
        let w = r.witness.expect("witness");
        let suspect = suspect(1, 2);
        let unreachable = answer(1, Heard::Unreachable);
        c.report(a, r.owner, suspect, &mut out);
        out.clear();
        // The first "cannot tell" asks again later; the second is a verdict.
        c.report(a, w, unreachable, &mut out);
        assert_eq!(
            out,
            vec![Output::Ask {
                agent: a,
                witness: w,
                after_seq: 2,
                later: true
            }]
        );
        out.clear();
        c.report(a, w, unreachable, &mut out);
        assert_eq!(out, vec![Output::Verdict { agent: a, epoch: 1 }]);

        // Another agent reaches a third member on its own: that member owns it and the
        // witness stays; the suspicion pending on the old owner is dropped.
        let b = agent_key("f");
        let rb = roles_of(&c, b);
        let third = (0..5)
            .find(|x| *x != rb.owner && Some(*x) != rb.witness)
            .expect("third");
        out.clear();
        c.report(b, rb.owner, suspect, &mut out);
        assert_eq!(c.pending(), 1);
        out.clear();
        c.report(b, third, Report::Takeover { epoch: 1 }, &mut out);
        let moved = Roles {
            owner: third,
            witness: rb.witness,
        };
        assert_eq!(
            out,
            vec![Output::Roles {
                agent: b,
                roles: moved
            }]
        );
        assert_eq!(c.pending(), 0);
        // When the owner that asked leaves the set, its question goes with it.
        let d = agent_key("g");
        let rd = roles_of(&c, d);
        c.report(d, rd.owner, suspect, &mut out);
        assert_eq!(c.pending(), 1);
        out.clear();
        let set = c.set().without(rd.owner).expect("member");
        c.set_replicas(set, &mut out);
        assert_eq!(c.pending(), 0);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Ask { agent, .. } if *agent == d))
        );
    }

    #[test]
    fn stale_epochs_strangers_and_unasked_answers_are_refused() {
        let mut c = Confirmer::new(five());
        let mut out = Vec::new();
        let a = agent_key("c");
        let r = roles_of(&c, a);
        let w = r.witness.expect("witness");
        let stranger = (0..5)
            .find(|x| *x != r.owner && Some(*x) != r.witness)
            .expect("third");
        let cases = [
            (r.owner, suspect(0, 1), Refusal::StaleEpoch),
            (stranger, suspect(1, 1), Refusal::NotInRole),
            (w, answer(1, Heard::Silent), Refusal::Unasked),
            (9, Report::Takeover { epoch: 1 }, Refusal::NotInRole),
            (r.owner, Report::Takeover { epoch: 1 }, Refusal::NotInRole),
        ];
        for (from, report, why) in cases {
            out.clear();
            c.report(a, from, report, &mut out);
            assert_eq!(
                out,
                vec![Output::Refused {
                    agent: a,
                    from,
                    why
                }],
                "{report:?}"
            );
        }
        assert!(!c.is_dead(a));
    }

    #[test]
    fn a_new_epoch_fences_the_dead_owner_and_reasks_a_dead_witness_question() {
        let mut c = Confirmer::new(five());
        let mut out = Vec::new();
        let a = agent_key("d");
        let r = roles_of(&c, a);
        let w = r.witness.expect("witness");
        c.report(a, r.owner, suspect(1, 5), &mut out);
        out.clear();
        // The witness dies before answering: the question goes to the new witness.
        let set = c.set().without(w).expect("member");
        c.set_replicas(set, &mut out);
        let r2 = roles_of(&c, a);
        assert_eq!(r2.owner, r.owner);
        assert_eq!(
            out,
            vec![Output::Ask {
                agent: a,
                witness: r2.witness.expect("witness"),
                after_seq: 5,
                later: false
            }]
        );
        out.clear();
        // The old witness's late answer carries the old epoch.
        c.report(a, w, answer(1, Heard::Silent), &mut out);
        assert!(matches!(
            out[..],
            [Output::Refused {
                why: Refusal::StaleEpoch,
                ..
            }]
        ));
        assert!(!c.is_dead(a));
        // A single replica's suspicion is a verdict at once.
        let mut solo = Confirmer::new(ReplicaSet::new(1, [0]));
        out.clear();
        solo.report(a, 0, suspect(1, 1), &mut out);
        assert_eq!(out, vec![Output::Verdict { agent: a, epoch: 1 }]);
    }
}
