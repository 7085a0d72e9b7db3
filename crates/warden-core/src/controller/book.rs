//! [`AgentBook`]: what the controller keeps about one agent generation beside its lifecycle
//! record (in the [`Fleet`](crate::lifecycle::Fleet)) and its planner view (in
//! [`Observed`](crate::planner::Observed)). The three are created together when a generation
//! is first seen and dropped together when it is forgotten; nothing else adds or removes them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::controller::io::CopyReport;
use crate::lifecycle::Cause;
use crate::time::Time;
use crate::types::{FencingToken, TaskId};

/// One agent generation's facts: where to probe it, when it was suspected and failed and why,
/// the orders in flight to it, and the slots whose current copy is on it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentBook {
    /// Its probe listener, as its Hello said.
    pub probe_addr: Option<SocketAddr>,
    /// Its replication listener (`host:port`), as its Hello said: where the standbys of the
    /// primaries it runs connect.
    pub state_addr: Option<String>,
    /// When it last turned Suspect (kept once Failed: recovery records need it).
    pub suspect_since: Option<Time>,
    /// When it was declared Failed, and why.
    pub failed: Option<(Time, Cause)>,
    /// When it ended (Failed or Left); the retention window counts from here.
    pub ended_at: Option<Time>,
    /// Assignments sent and not yet seen running: task → (epoch, when sent). An order lost in
    /// flight (a dropped session, a server crash after persisting it) is sent again from here.
    pub(crate) assigns: BTreeMap<TaskId, (FencingToken, Time)>,
    /// Stops sent and not yet confirmed: (task, epoch) → when sent.
    pub(crate) stops: BTreeMap<(TaskId, FencingToken), Time>,
    /// The job version whose files each copy here last said it runs: task → (epoch, version).
    pub(crate) versions: BTreeMap<TaskId, (FencingToken, u64)>,
    /// Reloads sent and not yet reported done: task → (epoch, version, when sent; `None`
    /// once the agent reported it failed: not sent again).
    pub(crate) reloads: BTreeMap<TaskId, (FencingToken, u64, Option<Time>)>,
    /// Slots whose current assignment is on this generation (whatever its state): the index
    /// that keeps the heartbeat path proportional to the copies of one agent.
    pub(crate) slots: BTreeSet<TaskId>,
    /// The copies the last heartbeat of the current session that listed them listed, and
    /// that heartbeat's number: what a heartbeat that says "unchanged since" it reports.
    pub(crate) listed: Option<(u64, Vec<CopyReport>)>,
}

impl AgentBook {
    /// Assignments in flight (sent, not yet seen running).
    pub fn assigns_in_flight(&self) -> usize {
        self.assigns.len()
    }

    /// Stops in flight (sent, not yet confirmed).
    pub fn stops_in_flight(&self) -> usize {
        self.stops.len()
    }

    /// The slots whose current assignment is on this generation.
    pub fn slots(&self) -> impl Iterator<Item = &TaskId> {
        self.slots.iter()
    }

    /// Forget every order in flight (the generation ended, or this replica stopped leading).
    pub(crate) fn clear_orders(&mut self) {
        self.assigns.clear();
        self.stops.clear();
        self.reloads.clear();
    }
}
