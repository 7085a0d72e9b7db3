//! The simulated network between the server and each agent's host: one link per host, two
//! directions, in the style of raft-rs's test `Network` (`cut`, `heal`, `delay`, `drop`).
//!
//! A link behaves like one TCP connection's path: messages in one direction arrive in the order
//! they were sent (a later message never overtakes an earlier one). A *cut* direction does not
//! lose what is sent on it — TCP retransmits — but holds it until the cut heals; whether the
//! receiver still cares (the connection may have been given up meanwhile) is the receiver's
//! business. A *drop* rate loses messages outright, the harshest reading of a lossy path: the
//! controller must stay safe and recover through its resends and full-state heartbeats.

use std::time::Duration;

use crate::rng::Rng;
use crate::time::Time;

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Server to agent.
    Down,
    /// Agent to server.
    Up,
}

/// One direction of a link.
#[derive(Clone, Debug, Default)]
struct Way {
    /// Messages are held, not delivered, until healed.
    cut: bool,
    /// When the last message sent this way arrives (FIFO).
    last_arrival: Time,
    /// Sequence numbers of the messages held by the cut, in order.
    held: Vec<u64>,
}

/// One host's link to the server.
#[derive(Clone, Debug)]
pub struct Link {
    down: Way,
    up: Way,
    /// Latency added to the base one.
    extra: Duration,
    /// Share of messages lost (0–1).
    drop: f64,
}

/// What became of a message handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// It arrives at this instant.
    Arrives(Time),
    /// It is held by a cut, to arrive after the cut heals ([`Network::heal`] returns it).
    Held,
    /// It is lost.
    Lost,
}

/// Every host's link.
#[derive(Clone, Debug)]
pub struct Network {
    links: Vec<Link>,
    /// One-way latency without faults.
    base: Duration,
    /// Uniform jitter added to each message.
    jitter: Duration,
}

impl Network {
    /// `hosts` healthy links with `base` latency and up to `jitter` more per message.
    pub fn new(hosts: usize, base: Duration, jitter: Duration) -> Self {
        let link = Link {
            down: Way::default(),
            up: Way::default(),
            extra: Duration::ZERO,
            drop: 0.0,
        };
        Network {
            links: vec![link; hosts],
            base,
            jitter,
        }
    }

    fn way(&mut self, host: usize, dir: Dir) -> &mut Way {
        let l = &mut self.links[host];
        match dir {
            Dir::Down => &mut l.down,
            Dir::Up => &mut l.up,
        }
    }

    /// Send message number `seq` on `host`'s link at `now`.
    pub fn send(&mut self, host: usize, dir: Dir, seq: u64, now: Time, rng: &mut Rng) -> Fate {
        let drop = self.links[host].drop;
        if drop > 0.0 && rng.bernoulli(drop) {
            return Fate::Lost;
        }
        let latency = self.latency(host, rng);
        let way = self.way(host, dir);
        if way.cut {
            way.held.push(seq);
            return Fate::Held;
        }
        let at = (now + latency).max(way.last_arrival);
        way.last_arrival = at;
        Fate::Arrives(at)
    }

    fn latency(&self, host: usize, rng: &mut Rng) -> Duration {
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rng.below(self.jitter.as_nanos() as u64 + 1))
        };
        self.base + self.links[host].extra + jitter
    }

    /// Cut `host`'s link in one direction, or both.
    pub fn cut(&mut self, host: usize, down: bool, up: bool) {
        if down {
            self.links[host].down.cut = true;
        }
        if up {
            self.links[host].up.cut = true;
        }
    }

    /// Heal every cut of `host`'s link and restore its latency and loss. Returns the held
    /// messages with their arrival times, in order.
    pub fn heal(&mut self, host: usize, now: Time, rng: &mut Rng) -> Vec<(Dir, u64, Time)> {
        self.links[host].extra = Duration::ZERO;
        self.links[host].drop = 0.0;
        let mut out = Vec::new();
        for dir in [Dir::Down, Dir::Up] {
            let latency = self.latency(host, rng);
            let way = self.way(host, dir);
            way.cut = false;
            for seq in std::mem::take(&mut way.held) {
                let at = (now + latency).max(way.last_arrival);
                way.last_arrival = at;
                out.push((dir, seq, at));
            }
        }
        out
    }

    /// Add `extra` latency to `host`'s link.
    pub fn delay(&mut self, host: usize, extra: Duration) {
        self.links[host].extra = extra;
    }

    /// Lose `share` of the messages on `host`'s link.
    pub fn drop_share(&mut self, host: usize, share: f64) {
        self.links[host].drop = share.clamp(0.0, 1.0);
    }

    /// Whether a connection attempt (or probe) from the server reaches `host` and comes back
    /// within `timeout` at `now`.
    pub fn reachable(&self, host: usize, timeout: Duration, rng: &mut Rng) -> bool {
        let l = &self.links[host];
        if l.down.cut || l.up.cut {
            return false;
        }
        if l.drop > 0.0 && rng.bernoulli(l.drop) {
            return false;
        }
        (self.base + l.extra) * 2 < timeout
    }

    /// Whether `host` is cut off in either direction.
    pub fn is_cut(&self, host: usize) -> bool {
        self.links[host].down.cut || self.links[host].up.cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_holds_messages_in_order_and_heal_releases_them() {
        let mut rng = Rng::new(1);
        let mut net = Network::new(1, Duration::from_millis(1), Duration::ZERO);
        let t = Time::from_millis(100);
        assert_eq!(
            net.send(0, Dir::Up, 1, t, &mut rng),
            Fate::Arrives(Time::from_millis(101))
        );
        net.cut(0, false, true);
        assert_eq!(net.send(0, Dir::Up, 2, t, &mut rng), Fate::Held);
        assert_eq!(net.send(0, Dir::Up, 3, t, &mut rng), Fate::Held);
        // The other way still flows.
        assert!(matches!(
            net.send(0, Dir::Down, 4, t, &mut rng),
            Fate::Arrives(_)
        ));
        assert!(!net.reachable(0, Duration::from_millis(500), &mut rng));
        let released = net.heal(0, Time::from_millis(200), &mut rng);
        let seqs: Vec<u64> = released.iter().map(|r| r.1).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert!(released.iter().all(|r| r.2 >= Time::from_millis(201)));
    }

    #[test]
    fn a_delayed_message_is_never_overtaken() {
        let mut rng = Rng::new(2);
        let mut net = Network::new(1, Duration::from_millis(1), Duration::from_millis(5));
        net.delay(0, Duration::from_millis(300));
        let Fate::Arrives(first) = net.send(0, Dir::Down, 1, Time::ZERO, &mut rng) else {
            panic!("lost");
        };
        net.delay(0, Duration::ZERO);
        let Fate::Arrives(second) = net.send(0, Dir::Down, 2, Time::from_millis(1), &mut rng)
        else {
            panic!("lost");
        };
        assert!(second >= first);
    }
}
