//! A userspace TCP proxy for network faults on loopback, where the kernel offers no `netem`:
//! put it between an agent and the server, then
//! - [`Proxy::cut`] it to make a *silent* partition: bytes stop flowing both ways, connections
//!   stay open, nobody gets an error — exactly what a dropped link looks like; bytes caught by
//!   a read that began before the cut are held back too, so the cut is exact;
//! - [`Proxy::heal`] it to let them flow again;
//! - [`Proxy::reset`] it to close every open connection at once, discarding whatever is queued
//!   in it (a connection that dies with a message in flight), while it keeps listening so the
//!   peer can reconnect at the same address.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    forward: Arc<AtomicBool>,
    round: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listen on a free loopback port and forward every connection to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let forward = Arc::new(AtomicBool::new(true));
        let round = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, s) = (forward.clone(), round.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(up) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let born = r.load(Ordering::SeqCst);
                for (from, to) in [(&down, &up), (&up, &down)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let (f, r, s) = (f.clone(), r.clone(), s.clone());
                    std::thread::spawn(move || pump(from, to, born, &f, &r, &s));
                }
            }
        });
        Ok(Proxy {
            addr,
            forward,
            round,
            stop,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop forwarding (silently: connections stay open, data waits).
    pub fn cut(&self) {
        self.forward.store(false, Ordering::SeqCst);
    }

    /// Forward again.
    pub fn heal(&self) {
        self.forward.store(true, Ordering::SeqCst);
    }

    /// Close every open connection, discarding whatever waits in it; keep listening.
    pub fn reset(&self) {
        self.round.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    born: u64,
    forward: &AtomicBool,
    round: &AtomicU64,
    stop: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = [0u8; 16 * 1024];
    // Bytes read by a read that began before a cut: held back, never forwarded during the cut.
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) && round.load(Ordering::SeqCst) == born {
        if !forward.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if !held.is_empty() {
            if to.write_all(&held).is_err() {
                break;
            }
            held.clear();
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if forward.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Ok(n) => held.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
