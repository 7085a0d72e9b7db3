//! Placement: which agent gets a task.
//!
//! Rules, in order:
//! 1. only agents that accept work (Healthy, not cordoned) and have room for the request;
//! 2. spread: an agent holding fewer copies of the same job wins — so two replicas of one job
//!    share an agent only when no other agent fits;
//! 3. least allocated: the agent with the most free capacity (as a share of its capacity) wins,
//!    which spreads load and leaves room on busy agents;
//! 4. ties break on the agent id, so the same input always gives the same answer.
//!
//! A [`Placer`] reserves what it places, so one planning pass never overfills an agent.

use crate::hash::FxHashMap;
use crate::types::{AgentId, Resources};

/// An agent as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The agent.
    pub id: AgentId,
    /// Total capacity it offers.
    pub capacity: Resources,
    /// Already reserved by its tasks.
    pub allocated: Resources,
    /// It writes a job's `[[config]]` files (see [`Placer::only_config_files`]).
    pub config_files: bool,
}

impl Node {
    fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }

    /// Share of capacity still free, 0–1, the scarcer resource counting.
    fn free_share(&self) -> f64 {
        let share = |free: u64, cap: u64| {
            if cap == 0 {
                0.0
            } else {
                free as f64 / cap as f64
            }
        };
        let free = self.free();
        share(free.cpu_millis, self.capacity.cpu_millis)
            .min(share(free.memory_mb, self.capacity.memory_mb))
    }
}

/// Places tasks on a fixed set of eligible nodes, reserving as it goes.
/// A node's free share as a total order for the placement index: lower is better (more free).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Taken(f64);

impl Eq for Taken {}

impl PartialOrd for Taken {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Taken {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Places tasks on nodes, reserving what it places. See the module documentation.
///
/// Most placements are of a copy that has no sibling on the best node, so the nodes are kept
/// ordered by (free share, id): the first node in that order that fits, is not avoided and
/// holds no copy of the job is the answer, usually among the first few. Only when no such node
/// exists (more copies than nodes, say) does it fall back to looking at every node. Either way
/// the choice is the one the rules above make.
#[derive(Clone, Debug)]
pub struct Placer {
    nodes: Vec<Node>,
    /// The nodes by (free share taken, id, index); built on the first placement.
    order: Option<std::collections::BTreeSet<(Taken, AgentId, usize)>>,
    /// Place only on nodes that write configuration files (set per job).
    config_only: bool,
}

impl Placer {
    /// A placer over `nodes` (only agents that accept work).
    pub fn new(nodes: Vec<Node>) -> Self {
        Placer {
            nodes,
            order: None,
            config_only: false,
        }
    }

    /// From now on, place only on nodes that write a job's `[[config]]` files (`true`: the
    /// next placements are for a job that has some), or on any (`false`).
    pub fn only_config_files(&mut self, yes: bool) {
        self.config_only = yes;
    }

    fn usable(&self, i: usize) -> bool {
        !self.config_only || self.nodes[i].config_files
    }

    /// The nodes with what this placer reserved on them.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn key(&self, i: usize) -> (Taken, AgentId, usize) {
        // `+ 0.0` makes -0.0 (no free room) equal to 0.0, as the comparison of the rules does.
        let taken = -self.nodes[i].free_share() + 0.0;
        (Taken(taken), self.nodes[i].id.clone(), i)
    }

    /// Pick the node for one copy of a job needing `request`, given how many copies of the job
    /// each node already holds (`copies`, updated), avoiding `avoid` unless nothing else fits.
    /// `apart`: only a node holding no copy of the job, never `avoid` (the replicas of a
    /// replicated state). `None` when nothing fits.
    pub fn place(
        &mut self,
        request: &Resources,
        copies: &mut FxHashMap<AgentId, u32>,
        avoid: Option<&AgentId>,
        apart: bool,
    ) -> Option<AgentId> {
        if self.order.is_none() {
            let order = (0..self.nodes.len()).map(|i| self.key(i)).collect();
            self.order = Some(order);
        }
        let fast = self.order.as_ref().and_then(|order| {
            order
                .iter()
                .find(|(_, id, i)| {
                    self.usable(*i)
                        && self.nodes[*i].free().fits(request)
                        && avoid != Some(id)
                        && copies.get(id).is_none_or(|c| *c == 0)
                })
                .map(|(_, _, i)| *i)
        });
        let i = match fast {
            Some(i) => i,
            None if apart => return None,
            None => self.best_of_all(request, copies, avoid)?,
        };
        Some(self.take(i, request, copies))
    }

    /// Place one copy on the node of agent `name` (any generation offered), if it fits: a
    /// daemon's copy belongs to its agent. `None` when that agent is not offered or is full.
    pub fn place_on(
        &mut self,
        request: &Resources,
        copies: &mut FxHashMap<AgentId, u32>,
        name: &str,
    ) -> Option<AgentId> {
        let i =
            self.nodes.iter().enumerate().position(|(i, n)| {
                &*n.id.name == name && n.free().fits(request) && self.usable(i)
            })?;
        if self.order.is_none() {
            let order = (0..self.nodes.len()).map(|i| self.key(i)).collect();
            self.order = Some(order);
        }
        Some(self.take(i, request, copies))
    }

    /// Reserve `request` on node `i` for one more copy of the job counted in `copies`.
    fn take(
        &mut self,
        i: usize,
        request: &Resources,
        copies: &mut FxHashMap<AgentId, u32>,
    ) -> AgentId {
        let before = self.key(i);
        let node = &mut self.nodes[i];
        node.allocated = node.allocated.plus(request);
        *copies.entry(node.id.clone()).or_insert(0) += 1;
        let after = self.key(i);
        if let Some(order) = self.order.as_mut() {
            order.remove(&before);
            order.insert(after);
        }
        self.nodes[i].id.clone()
    }

    /// The rules applied to every node.
    fn best_of_all(
        &self,
        request: &Resources,
        copies: &FxHashMap<AgentId, u32>,
        avoid: Option<&AgentId>,
    ) -> Option<usize> {
        let mut best: Option<(usize, (bool, u32, f64))> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.free().fits(request) || !self.usable(i) {
                continue;
            }
            // Lower is better on every component; the id breaks ties.
            let key = (
                avoid == Some(&node.id),
                if copies.is_empty() {
                    0
                } else {
                    copies.get(&node.id).copied().unwrap_or(0)
                },
                -node.free_share(),
            );
            let better = match &best {
                None => true,
                Some((b, bkey)) => match key.partial_cmp(bkey) {
                    Some(std::cmp::Ordering::Less) => true,
                    Some(std::cmp::Ordering::Equal) => node.id < self.nodes[*b].id,
                    Some(std::cmp::Ordering::Greater) | None => false,
                },
            };
            if better {
                best = Some((i, key));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hash::FxHashMap;
    use proptest::prelude::*;

    fn node(name: &str, cpu: u64, mem: u64, used_cpu: u64) -> Node {
        Node {
            config_files: true,
            id: AgentId::new(name, 1),
            capacity: Resources::new(cpu, mem),
            allocated: Resources::new(used_cpu, 0),
        }
    }

    #[test]
    fn a_job_with_config_files_goes_only_to_agents_that_write_them() {
        let old = Node {
            config_files: false,
            ..node("old", 4000, 4000, 0)
        };
        let mut p = Placer::new(vec![old, node("new", 1000, 1000, 0)]);
        let req = Resources::new(600, 100);
        let mut copies = FxHashMap::default();
        p.only_config_files(true);
        let first = p.place(&req, &mut copies, None, false).unwrap();
        assert_eq!(&*first.name, "new");
        // The new agent is full: nothing else, however much room the old one has.
        assert_eq!(p.place(&req, &mut copies, None, false), None);
        assert_eq!(p.place_on(&req, &mut copies, "old"), None);
        p.only_config_files(false);
        assert_eq!(
            p.place(&req, &mut copies, None, false)
                .map(|a| a.name.to_string()),
            Some("old".to_string())
        );
    }

    #[test]
    fn spreads_replicas_then_packs_only_when_forced() {
        let mut p = Placer::new(vec![node("a", 1000, 1000, 0), node("b", 1000, 1000, 0)]);
        let req = Resources::new(100, 100);
        let mut copies = FxHashMap::default();
        let first = p.place(&req, &mut copies, None, false).unwrap();
        let second = p.place(&req, &mut copies, None, false).unwrap();
        assert_ne!(first, second);
        let third = p.place(&req, &mut copies, None, false).unwrap();
        assert!(third == first || third == second);
    }

    #[test]
    fn prefers_least_allocated_and_breaks_ties_by_id() {
        let mut p = Placer::new(vec![
            node("b", 1000, 1000, 0),
            node("a", 1000, 1000, 0),
            node("c", 1000, 1000, 500),
        ]);
        assert_eq!(
            p.place(
                &Resources::new(10, 10),
                &mut FxHashMap::default(),
                None,
                false
            )
            .unwrap()
            .name
            .as_ref(),
            "a"
        );
        assert_eq!(
            p.place(
                &Resources::new(10, 10),
                &mut FxHashMap::default(),
                None,
                false
            )
            .unwrap()
            .name
            .as_ref(),
            "b"
        );
    }

    #[test]
    fn avoids_a_node_when_another_fits() {
        let mut p = Placer::new(vec![node("a", 1000, 1000, 0), node("b", 1000, 1000, 900)]);
        let a = AgentId::new("a", 1);
        assert_eq!(
            p.place(
                &Resources::new(50, 50),
                &mut FxHashMap::default(),
                Some(&a),
                false
            )
            .unwrap()
            .name
            .as_ref(),
            "b"
        );
        assert_eq!(
            p.place(
                &Resources::new(500, 50),
                &mut FxHashMap::default(),
                Some(&a),
                false
            )
            .unwrap(),
            a
        );
    }

    #[test]
    fn refuses_what_fits_nowhere() {
        let mut p = Placer::new(vec![node("a", 1000, 100, 0)]);
        assert_eq!(
            p.place(
                &Resources::new(100, 200),
                &mut FxHashMap::default(),
                None,
                false
            ),
            None
        );
        assert_eq!(
            p.place(
                &Resources::new(2000, 10),
                &mut FxHashMap::default(),
                None,
                false
            ),
            None
        );
    }

    proptest! {
        /// The ordered index chooses exactly what the rules applied to every node choose.
        #[test]
        fn the_index_chooses_what_the_rules_choose(
            caps in proptest::collection::vec((0u64..4000, 0u64..4000, 0u64..2000), 1..12),
            reqs in proptest::collection::vec((0u64..1500, 0u64..1500, 0usize..3, 0usize..12), 0..60),
        ) {
            let nodes: Vec<Node> = caps.iter().enumerate()
                .map(|(i, (c, m, used))| Node {
                    config_files: true,
                    id: AgentId::new(format!("n{}", i % 7), i as u64),
                    capacity: Resources::new(*c, *m),
                    allocated: Resources::new((*used).min(*c), 0),
                })
                .collect();
            let mut fast = Placer::new(nodes.clone());
            let mut slow = Placer::new(nodes.clone());
            let mut jobs_fast: Vec<FxHashMap<AgentId, u32>> = vec![FxHashMap::default(); 3];
            let mut jobs_slow = jobs_fast.clone();
            for (c, m, job, avoid) in &reqs {
                let req = Resources::new(*c, *m);
                let avoid = nodes.get(*avoid).map(|n| n.id.clone());
                let a = fast.place(&req, &mut jobs_fast[*job], avoid.as_ref(), false);
                // The reference: the rules over every node, reserving the same way.
                let b = slow.best_of_all(&req, &jobs_slow[*job], avoid.as_ref()).map(|i| {
                    let n = &mut slow.nodes[i];
                    n.allocated = n.allocated.plus(&req);
                    *jobs_slow[*job].entry(n.id.clone()).or_insert(0) += 1;
                    n.id.clone()
                });
                prop_assert_eq!(a, b);
            }
        }

        #[test]
        fn never_exceeds_capacity_and_is_deterministic(
            caps in proptest::collection::vec((0u64..4000, 0u64..4000), 1..8),
            reqs in proptest::collection::vec((0u64..1500, 0u64..1500), 0..40),
        ) {
            let nodes: Vec<Node> = caps.iter().enumerate()
                .map(|(i, (c, m))| Node { config_files: true, id: AgentId::new(format!("n{i}"), 1), capacity: Resources::new(*c, *m), allocated: Resources::default() })
                .collect();
            let run = |nodes: Vec<Node>| {
                let mut p = Placer::new(nodes);
                let picks: Vec<Option<AgentId>> = reqs.iter().map(|(c, m)| p.place(&Resources::new(*c, *m), &mut FxHashMap::default(), None, false)).collect();
                (picks, p)
            };
            let (picks, p) = run(nodes.clone());
            for n in p.nodes() {
                prop_assert!(n.capacity.fits(&n.allocated), "{n:?} overfilled");
            }
            let mut reversed = nodes;
            reversed.reverse();
            prop_assert_eq!(picks, run(reversed).0);
        }
    }
}
