//! `warden bench state-vs-redis`: the same faults and the same write load against Warden's
//! replicated task state and against Redis with one replica and three Sentinels (Debian
//! `redis-server`, `redis-sentinel`), side by side in one run on this machine.
//!
//! The write load is a counter: read-increment-write, one at a time, every write waiting for
//! one replica (Warden: `ack = "standby"`; Redis: `INCR` then `WAIT 1 1000`, a write counting
//! as acknowledged only when `WAIT` says one replica has it). The faults hit the primary:
//! `kill -9` and `SIGSTOP`, each for 4 s (then started again, or `SIGCONT`). Reported for
//! each: the switchover and the acknowledged writes lost (acknowledged, then missing from the
//! new primary: its first increment gives a value not above them). The switchover favours
//! Redis: it ends at the first write the new Redis primary *takes* (with one replica, `WAIT`
//! cannot succeed until the old primary is back as its replica), while Warden's ends at the
//! first write acknowledged at `standby` (it places a new standby on a third agent).
//!
//! Redis runs twice: with Sentinel's default `down-after-milliseconds` (30 s) and tuned to
//! 1 s. Every process is started here, on loopback ports picked free, and stopped by PID.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A minimal blocking RESP client.
struct Conn {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            rd: BufReader::new(s.try_clone()?),
            wr: s,
        })
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len());
        for a in args {
            buf.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.wr.write_all(buf.as_bytes())?;
        read_reply(&mut self.rd)
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn read_reply(rd: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    let mut line = String::new();
    if rd.read_line(&mut line)? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1.min(line.len()));
    let num = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad length {rest:?}")))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(num()?),
        "$" => {
            let n = num()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut b = vec![0u8; usize::try_from(n).unwrap_or(0) + 2];
                std::io::Read::read_exact(rd, &mut b)?;
                b.truncate(b.len() - 2);
                Reply::Bulk(Some(b))
            }
        }
        "*" => {
            let n = num()?;
            let mut v = Vec::new();
            for _ in 0..n.max(0) {
                v.push(read_reply(rd)?);
            }
            Reply::Array(v)
        }
        _ => return Err(bad(format!("unknown reply {line:?}"))),
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A process started here, killed by PID when dropped.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .map(Pid::from_raw)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
        self.kill9();
    }
}

fn spawn(cmd: &str, args: &[String], log: &Path) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {cmd} (Debian packages redis-server, redis-sentinel)"))?;
    Ok(Proc { child: Some(child) })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what}: not within {limit:?}")
}

/// A Redis primary and replica with three Sentinels.
struct RedisSet {
    dir: PathBuf,
    ports: [u16; 2],
    servers: [Proc; 2],
    sentinels: Vec<(u16, Proc)>,
}

impl RedisSet {
    fn start(dir: &Path, down_after_ms: u64) -> Result<RedisSet> {
        std::fs::create_dir_all(dir)?;
        let ports = [free_port()?, free_port()?];
        let s0 = Self::server(dir, 0, ports[0], None)?;
        let s1 = Self::server(dir, 1, ports[1], Some(ports[0]))?;
        let mut set = RedisSet {
            dir: dir.to_path_buf(),
            ports,
            servers: [s0, s1],
            sentinels: Vec::new(),
        };
        set.wait_synced(ports[1])?;
        for i in 0..3 {
            let port = free_port()?;
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor m 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds m {down_after_ms}\n\
                     sentinel failover-timeout m 10000\n",
                    dir.display(),
                    ports[0]
                ),
            )?;
            let p = spawn(
                "redis-sentinel",
                &[conf.display().to_string()],
                &dir.join(format!("sentinel-{i}.log")),
            )?;
            set.sentinels.push((port, p));
        }
        // Every Sentinel knows the replica and the other Sentinels.
        let sentinels: Vec<u16> = set.sentinels.iter().map(|(p, _)| *p).collect();
        wait_for("sentinels see each other", Duration::from_secs(30), || {
            sentinels.iter().all(|p| {
                Conn::open(addr(*p), Duration::from_secs(1))
                    .and_then(|mut c| c.call(&["SENTINEL", "MASTER", "m"]))
                    .map(|r| {
                        field(&r, "num-other-sentinels") == Some("2".into())
                            && field(&r, "num-slaves") == Some("1".into())
                    })
                    .unwrap_or(false)
            })
        })?;
        Ok(set)
    }

    fn server(dir: &Path, i: usize, port: u16, replica_of: Option<u16>) -> Result<Proc> {
        let d = dir.join(format!("redis-{i}"));
        std::fs::create_dir_all(&d)?;
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            d.display().to_string(),
        ];
        if let Some(p) = replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        let p = spawn("redis-server", &args, &dir.join(format!("redis-{i}.log")))?;
        wait_for("redis-server answers", Duration::from_secs(10), || {
            Conn::open(addr(port), Duration::from_secs(1))
                .and_then(|mut c| c.call(&["PING"]))
                .is_ok()
        })?;
        Ok(p)
    }

    fn wait_synced(&self, replica: u16) -> Result<()> {
        wait_for("replica in sync", Duration::from_secs(60), || {
            Conn::open(addr(replica), Duration::from_secs(1))
                .and_then(|mut c| c.call(&["INFO", "replication"]))
                .map(|r| match r {
                    Reply::Bulk(Some(b)) => {
                        String::from_utf8_lossy(&b).contains("master_link_status:up")
                    }
                    _ => false,
                })
                .unwrap_or(false)
        })
    }

    /// The primary's port as the Sentinels say (the first that answers).
    fn master(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(p, _)| master_of(*p))
    }

    fn index_of(&self, port: u16) -> usize {
        usize::from(self.ports[1] == port)
    }
}

fn master_of(sentinel: u16) -> Option<u16> {
    let mut c = Conn::open(addr(sentinel), Duration::from_millis(300)).ok()?;
    match c.call(&["SENTINEL", "get-master-addr-by-name", "m"]).ok()? {
        Reply::Array(v) if v.len() == 2 => match &v[1] {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A field of a `SENTINEL MASTER` reply (a flat array of names and values).
fn field(r: &Reply, name: &str) -> Option<String> {
    let Reply::Array(v) = r else { return None };
    v.chunks(2).find_map(|kv| match kv {
        [Reply::Bulk(Some(k)), Reply::Bulk(Some(val))] if k == name.as_bytes() => {
            Some(String::from_utf8_lossy(val).to_string())
        }
        _ => None,
    })
}

/// One write a primary took: its value, which primary, when, and whether `WAIT 1` said a
/// replica has it (acknowledged).
#[derive(Clone, Copy, Debug)]
struct Ack {
    value: i64,
    port: u16,
    at: Instant,
    replicated: bool,
}

/// The writer: INCR then WAIT 1 1000 against whichever primary the Sentinels name.
fn writer(sentinels: Vec<u16>, acks: Arc<Mutex<Vec<Ack>>>, stop: Arc<AtomicBool>) {
    let mut conn: Option<(u16, Conn)> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some((port, c)) = conn.as_mut() else {
            let Some(port) = sentinels.iter().find_map(|p| master_of(*p)) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if let Ok(mut c) = Conn::open(addr(port), Duration::from_secs(2)) {
                // Only a primary takes writes (a demoted one answers READONLY anyway).
                if let Ok(Reply::Array(r)) = c.call(&["ROLE"])
                    && r.first() == Some(&Reply::Bulk(Some(b"master".to_vec())))
                {
                    conn = Some((port, c));
                    continue;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let port = *port;
        let v = match c.call(&["INCR", "counter"]) {
            Ok(Reply::Int(v)) => v,
            _ => {
                conn = None;
                continue;
            }
        };
        let at = Instant::now();
        let replicated = match c.call(&["WAIT", "1", "1000"]) {
            Ok(Reply::Int(n)) => n >= 1,
            _ => {
                conn = None;
                false
            }
        };
        if let Ok(mut a) = acks.lock() {
            a.push(Ack {
                value: v,
                port,
                at,
                replicated,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What one failover of Redis gave.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// The fault → the first write a new primary took (`INCR` answered; `WAIT 1` may still
    /// say no replica has it: with one replica, none does until the old primary is back).
    pub switchover: Option<Duration>,
    /// The fault → the first write any primary took (the old one, when there was no
    /// failover).
    pub first_write: Option<Duration>,
    /// Acknowledged writes the new primary lacked.
    pub lost: u64,
}

/// Inject `faults` faults of `kind` (`kill` or `pause`) into the Redis primary, one at a
/// time, with Sentinel's `down-after-milliseconds` at `down_after_ms`.
pub fn redis_failovers(
    dir: &Path,
    kind: &str,
    faults: usize,
    down_after_ms: u64,
) -> Result<(Vec<Outcome>, u64)> {
    let mut set = RedisSet::start(dir, down_after_ms)?;
    let acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sentinels: Vec<u16> = set.sentinels.iter().map(|(p, _)| *p).collect();
    let w = {
        let (acks, stop) = (acks.clone(), stop.clone());
        std::thread::spawn(move || writer(sentinels, acks, stop))
    };
    let limit = Duration::from_millis(down_after_ms * 3 + 30_000);
    let mut out = Vec::new();
    let result = (|| -> Result<()> {
        for _ in 0..faults {
            // Writing, on a primary with a synced replica.
            let old = set.master().context("no primary")?;
            let other = set.ports[1 - set.index_of(old)];
            set.wait_synced(other)?;
            let replicated = |acks: &Mutex<Vec<Ack>>| {
                acks.lock()
                    .map_or(0, |a| a.iter().filter(|x| x.replicated).count())
            };
            let n0 = replicated(&acks);
            wait_for("writes acknowledged", Duration::from_secs(30), || {
                replicated(&acks) > n0 + 50
            })?;
            let i = set.index_of(old);
            let t = Instant::now();
            match kind {
                "kill" => set.servers[i].kill9(),
                _ => {
                    if let Some(pid) = set.servers[i].pid() {
                        kill(pid, Signal::SIGSTOP)?;
                    }
                }
            }
            let mut resumed = false;
            // Until a new primary takes a write; a pause also ends when the old primary, resumed
            // after 4 s, takes writes again without a failover (Sentinel's default 30 s).
            let pause = Duration::from_secs(4);
            let mut first_any = None;
            let first_new = {
                let mut found = None;
                let deadline = Instant::now() + limit;
                while Instant::now() < deadline {
                    if kind != "kill" && !resumed && t.elapsed() >= pause {
                        if let Some(pid) = set.servers[i].pid() {
                            kill(pid, Signal::SIGCONT)?;
                        }
                        resumed = true;
                    }
                    let (new, any) = acks.lock().map_or((None, None), |a| {
                        (
                            a.iter().find(|x| x.at >= t && x.port != old).copied(),
                            a.iter().find(|x| x.at >= t).copied(),
                        )
                    });
                    first_any = any;
                    found = new;
                    if found.is_some() {
                        break;
                    }
                    if resumed && down_after_ms >= 4_000 && any.is_some_and(|a| a.at >= t + pause) {
                        break; // no failover: the paused primary is back
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                found
            };
            if !resumed {
                if kind == "kill" {
                    // Started again once a new primary took over: Sentinel makes it a replica.
                    set.servers[i] = RedisSet::server(&set.dir, i, old, first_new.map(|f| f.port))?;
                } else if let Some(pid) = set.servers[i].pid() {
                    kill(pid, Signal::SIGCONT)?;
                }
            }
            let lost = first_new.map_or(0, |f| {
                acks.lock().map_or(0, |a| {
                    a.iter()
                        .filter(|x| x.replicated && x.port == old && x.value >= f.value)
                        .count() as u64
                })
            });
            out.push(Outcome {
                switchover: first_new.map(|f| f.at - t),
                first_write: first_any.map(|f| f.at - t),
                lost,
            });
            if first_new.is_none() && first_any.is_none() {
                bail!("no primary took a write within {limit:?}");
            }
            // The old primary is (or becomes) a replica of the new one; without a failover
            // the replica is the one it was.
            set.wait_synced(if first_new.is_some() { old } else { other })?;
        }
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    let _ = w.join();
    let total = acks.lock().map_or(0, |a| a.len() as u64);
    result?;
    Ok((out, total))
}
