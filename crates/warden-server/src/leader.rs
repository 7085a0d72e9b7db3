//! Who leads the control plane, as this replica sees it.
//!
//! A single server on its embedded store always leads ([`Leadership::single`]). Replicas on a
//! shared etcd cluster take their role from an election ([`Leadership::from_watch`]): one
//! leader, whose leadership is only good until a deadline (`valid_until`: its last etcd
//! keepalive acknowledgement plus the election TTL minus a safety margin). The deadline is
//! checked on every use — a leader whose election runner is stuck still stops acting when it
//! passes, before etcd could elect anyone else.
//!
//! What a role allows:
//!
//! | | leader (valid) | standby |
//! |---|---|---|
//! | heartbeats, detectors | yes | yes (warm state) |
//! | renew agent leases (acks with a TTL) | yes | no: acks carry TTL 0 (session liveness only) |
//! | new generations, assignments, stops, `Rejoin` | yes | no |
//! | store writes (task states, events, recoveries) | yes | no |
//! | REST reads | yes | yes (refreshed from the store every second) |
//! | REST writes | yes | redirected to the leader (307) |

use std::time::Instant;

use tokio::sync::watch;

/// Where this replica stands in the election (not to be confused with the role of an API
/// token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// This replica leads, until `valid_until` (`None`: for ever — a single server).
    Leader {
        /// The term: the election's fencing token (grows with every new leader).
        term: u64,
        /// When this term began, ms since the Unix epoch.
        since_unix_ms: u64,
        /// When the leadership must be taken as lost unless renewed.
        valid_until: Option<Instant>,
    },
    /// Another replica leads, or none is known.
    Follower {
        /// The leader, if known.
        leader: Option<LeaderInfo>,
    },
}

pub use warden_core::controller::LeaderInfo;

/// This replica's view of the election. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    name: String,
    role: watch::Receiver<Standing>,
    /// Keeps the channel open for [`Leadership::single`].
    _keep: Option<std::sync::Arc<watch::Sender<Standing>>>,
}

impl Leadership {
    /// A single server: leader for ever, term 1.
    pub fn single(name: impl Into<String>) -> Self {
        let since = crate::clock::unix_now_ms();
        let (tx, rx) = watch::channel(Standing::Leader {
            term: 1,
            since_unix_ms: since,
            valid_until: None,
        });
        Leadership {
            name: name.into(),
            role: rx,
            _keep: Some(std::sync::Arc::new(tx)),
        }
    }

    /// A replica whose role an election publishes on `role`; `name` is its advertised address.
    pub fn from_watch(name: impl Into<String>, role: watch::Receiver<Standing>) -> Self {
        Leadership {
            name: name.into(),
            role,
            _keep: None,
        }
    }

    /// This replica's advertised address.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The term, if this replica leads *now* (its deadline has not passed).
    pub fn term_now(&self) -> Option<u64> {
        match &*self.role.borrow() {
            Standing::Leader {
                term, valid_until, ..
            } if valid_until.is_none_or(|t| Instant::now() < t) => Some(*term),
            _ => None,
        }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.term_now().is_some()
    }

    /// A receiver of the role as the election publishes it, to follow its changes.
    pub fn watch(&self) -> watch::Receiver<Standing> {
        self.role.clone()
    }

    /// The role as last published (the deadline not applied).
    pub fn role(&self) -> Standing {
        self.role.borrow().clone()
    }

    /// The leader as this replica knows it: itself while it leads, else the published one.
    pub fn leader(&self) -> Option<LeaderInfo> {
        match self.role() {
            Standing::Leader {
                term,
                since_unix_ms,
                valid_until,
            } if valid_until.is_none_or(|t| Instant::now() < t) => Some(LeaderInfo {
                name: self.name.clone(),
                term,
                since_unix_ms,
            }),
            Standing::Leader { .. } => None,
            Standing::Follower { leader } => leader,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_single_server_always_leads() {
        let l = Leadership::single("127.0.0.1:7401");
        assert_eq!(l.term_now(), Some(1));
        assert_eq!(l.leader().unwrap().name, "127.0.0.1:7401");
    }

    #[test]
    fn leadership_ends_at_its_deadline_without_a_new_message() {
        let (tx, rx) = watch::channel(Standing::Leader {
            term: 7,
            since_unix_ms: 1,
            valid_until: Some(Instant::now() + Duration::from_secs(3600)),
        });
        let l = Leadership::from_watch("a", rx);
        assert_eq!(l.term_now(), Some(7));
        tx.send(Standing::Leader {
            term: 7,
            since_unix_ms: 1,
            valid_until: Some(Instant::now()),
        })
        .unwrap();
        assert_eq!(l.term_now(), None, "a passed deadline means no leadership");
        assert_eq!(l.leader(), None);
        tx.send(Standing::Follower {
            leader: Some(LeaderInfo {
                name: "b".into(),
                term: 8,
                since_unix_ms: 2,
            }),
        })
        .unwrap();
        assert!(!l.is_leader());
        assert_eq!(l.leader().unwrap().name, "b");
    }
}
