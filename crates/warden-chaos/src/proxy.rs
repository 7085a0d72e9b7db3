//! A userspace TCP proxy for network faults on loopback, where the kernel offers no `netem`:
//! put it between an agent and the server, then
//! - [`Proxy::cut`] it to make a *silent* partition: bytes stop flowing both ways, connections
//!   stay open, nobody gets an error — exactly what a dropped link looks like; bytes caught by
//!   a read that began before the cut are held back too, so the cut is exact;
//! - [`Proxy::heal`] it to let them flow again;
//! - [`Proxy::reset`] it to close every open connection at once, discarding whatever is queued
//!   in it (a connection that dies with a message in flight), while it keeps listening so the
//!   peer can reconnect at the same address;
//! - [`Proxy::cut_one_way`] to stop one direction only;
//! - [`Proxy::set_delay`] to hold every chunk for a fixed delay plus a random jitter, in both
//!   directions (bytes keep their order, as TCP's do: a chunk never overtakes an earlier one).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use warden_core::rng::Rng;

/// What the pumps of one proxy share.
#[derive(Default)]
struct Shared {
    /// Client → target stopped.
    up_cut: AtomicBool,
    /// Target → client stopped.
    down_cut: AtomicBool,
    /// Bumped by [`Proxy::reset`].
    round: AtomicU64,
    /// Fixed delay, µs.
    delay_us: AtomicU64,
    /// Jitter bound, µs.
    jitter_us: AtomicU64,
    /// Seed of the jitter (a new stream per pump).
    seed: AtomicU64,
    stop: AtomicBool,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listen on a free loopback port and forward every connection to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    /// Listen on `bind` (port 0: a free one) and forward every connection to `target`.
    pub fn start_on(bind: SocketAddr, target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        std::thread::spawn(move || {
            let mut pumps = 0u64;
            while !sh.stop.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(up) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let born = sh.round.load(Ordering::SeqCst);
                for (from, to, upward) in [(&down, &up, true), (&up, &down, false)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    pumps += 1;
                    let rng = Rng::stream(sh.seed.load(Ordering::SeqCst), pumps);
                    let sh = sh.clone();
                    std::thread::spawn(move || {
                        let cut = if upward { &sh.up_cut } else { &sh.down_cut };
                        pump(from, to, born, cut, &sh, rng);
                    });
                }
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop forwarding (silently: connections stay open, data waits).
    pub fn cut(&self) {
        self.shared.up_cut.store(true, Ordering::SeqCst);
        self.shared.down_cut.store(true, Ordering::SeqCst);
    }

    /// Stop forwarding one way: client → target when `upward`, else target → client.
    pub fn cut_one_way(&self, upward: bool) {
        let flag = if upward {
            &self.shared.up_cut
        } else {
            &self.shared.down_cut
        };
        flag.store(true, Ordering::SeqCst);
    }

    /// Forward again, both ways.
    pub fn heal(&self) {
        self.shared.up_cut.store(false, Ordering::SeqCst);
        self.shared.down_cut.store(false, Ordering::SeqCst);
    }

    /// Hold every chunk `delay` plus a uniform random `[0, jitter]` (seeded with `seed`), both
    /// ways; zero and zero forward at once again.
    pub fn set_delay(&self, delay: Duration, jitter: Duration, seed: u64) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.shared.seed.store(seed, Ordering::SeqCst);
        self.shared.delay_us.store(us(delay), Ordering::SeqCst);
        self.shared.jitter_us.store(us(jitter), Ordering::SeqCst);
    }

    /// Close every open connection, discarding whatever waits in it; keep listening.
    pub fn reset(&self) {
        self.shared.round.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    born: u64,
    cut: &AtomicBool,
    sh: &Shared,
    mut rng: Rng,
) {
    let tick = Duration::from_millis(10);
    let _ = from.set_read_timeout(Some(tick));
    let mut buf = [0u8; 16 * 1024];
    // Chunks read but not forwarded yet, with the time each may go: held back by a delay, or
    // read by a read that began before a cut (never forwarded during the cut).
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut last_due = Instant::now();
    while !sh.stop.load(Ordering::SeqCst) && sh.round.load(Ordering::SeqCst) == born {
        if cut.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, chunk)) = queue.pop_front() else {
                break;
            };
            if to.write_all(&chunk).is_err() {
                return close(&from, &to);
            }
        }
        // Wake for the next due chunk, or read.
        let wait = queue
            .front()
            .map(|(due, _)| due.saturating_duration_since(now).min(tick))
            .unwrap_or(tick)
            .max(Duration::from_millis(1));
        let _ = from.set_read_timeout(Some(wait));
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let delay = sh.delay_us.load(Ordering::SeqCst);
                let jitter = sh.jitter_us.load(Ordering::SeqCst);
                let hold = delay + if jitter > 0 { rng.below(jitter + 1) } else { 0 };
                // In order: a chunk never goes before the one read ahead of it.
                let due = (Instant::now() + Duration::from_micros(hold)).max(last_due);
                last_due = due;
                if hold == 0 && queue.is_empty() && !cut.load(Ordering::SeqCst) {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                } else {
                    queue.push_back((due, buf[..n].to_vec()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    close(&from, &to);
}

fn close(from: &TcpStream, to: &TcpStream) {
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An echo server on loopback; returns its address.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        addr
    }

    fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Duration {
        let t = Instant::now();
        c.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
        t.elapsed()
    }

    #[test]
    fn delay_holds_bytes_in_order_and_cuts_stop_one_way() {
        let p = Proxy::start(echo()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        round_trip(&mut c, b"warm");
        p.set_delay(Duration::from_millis(100), Duration::from_millis(50), 3);
        // Each way is held at least 100 ms: a round trip takes at least 200 ms.
        let rt = round_trip(&mut c, b"slow");
        assert!(rt >= Duration::from_millis(200), "{rt:?}");
        // Many small writes come back whole and in order despite the jitter.
        let msg: Vec<u8> = (0..200u8).collect();
        for chunk in msg.chunks(10) {
            c.write_all(chunk).unwrap();
        }
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
        p.set_delay(Duration::ZERO, Duration::ZERO, 0);
        // Target → client cut: the echo is held back, not lost.
        p.cut_one_way(false);
        c.write_all(b"held").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 4];
        assert!(c.read(&mut b).is_err(), "nothing may arrive during the cut");
        p.heal();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");
    }
}
