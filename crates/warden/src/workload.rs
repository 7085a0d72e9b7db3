//! Built-in workloads for demos and tests, so nothing else needs installing:
//! `warden workload sleep` (runs until stopped, printing its fencing token) and
//! `warden workload http` (serves `/` and `/healthz` on `WARDEN_PORT` or `--port`, answering
//! with the task id that served the request; `/?sleep_ms=N` holds the answer N ms) and
//! `warden workload counter` (a stateful task: increments a counter in its replicated state
//! and reads it back; see docs/state.md), `warden workload burn` (busy threads) and
//! `warden workload alloc` (allocates and holds memory).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;

/// `warden workload …`
#[derive(Debug, Subcommand)]
pub enum Workload {
    /// Run until stopped; print the task's identity every `--every` seconds.
    Sleep {
        /// Seconds between lines.
        #[arg(long, default_value_t = 1)]
        every: u64,
    },
    /// Burn CPU: `--threads` busy loops, for `--seconds` (0: until killed).
    Burn {
        /// Busy threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Stop after this many seconds (0: until killed).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
    /// Allocate memory: `--mb` MiB, every page written, in steps of 8 MiB every `--step-ms`;
    /// then hold it until killed. For memory limits (`oom_killed`) and pressure.
    Alloc {
        /// MiB to allocate.
        #[arg(long, default_value_t = 64)]
        mb: usize,
        /// Milliseconds between steps of 8 MiB.
        #[arg(long, default_value_t = 10)]
        step_ms: u64,
    },
    /// A stateful task (job with `[state]`): increment a counter in the task's replicated
    /// state every `--every-ms`, read it back, and print every acknowledged write as
    /// `acked key=K value=N seq=S epoch=E ack=LEVEL at_ms=T` (T: wall-clock ms since the Unix
    /// epoch). As a standby it waits to be promoted;
    /// fenced, it waits for its next role.
    Counter {
        /// Milliseconds between increments (0: as fast as acknowledgements come).
        #[arg(long, default_value_t = 100)]
        every_ms: u64,
        /// The key to increment.
        #[arg(long, default_value = "counter")]
        key: String,
        /// Stop after this many increments (0: run until stopped).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Serve HTTP on WARDEN_PORT (or --port), answering which task served.
    Http {
        /// Port; default WARDEN_PORT, else 8080.
        #[arg(long)]
        port: Option<u16>,
        /// Exit with status 3 this long after starting (a bad version that crashes under
        /// traffic; `warden bench rollout-traffic`).
        #[arg(long)]
        exit_after_ms: Option<u64>,
        /// Answer this fraction (0–1) of requests to `/` with 500 (a version that fails a
        /// little more; `/healthz` is unaffected).
        #[arg(long, default_value_t = 0.0, value_parser = fraction)]
        error_rate: f64,
        /// Hold every answer to `/` this many ms longer (a slower version; `/healthz` is
        /// unaffected).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
}

fn fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not between 0 and 1"))
    }
}

fn identity() -> String {
    format!(
        "task={} token={}",
        std::env::var("WARDEN_TASK_ID").unwrap_or_else(|_| "-".into()),
        std::env::var("WARDEN_FENCING_TOKEN").unwrap_or_else(|_| "-".into())
    )
}

/// Run a workload.
pub fn run(w: &Workload) -> Result<()> {
    match w {
        Workload::Sleep { every } => loop {
            println!("{} alive", identity());
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs((*every).max(1)));
        },
        Workload::Burn { threads, seconds } => {
            let until =
                (*seconds > 0).then(|| std::time::Instant::now() + Duration::from_secs(*seconds));
            let handles: Vec<_> = (0..(*threads).max(1))
                .map(|_| {
                    std::thread::spawn(move || {
                        let mut x = 0u64;
                        loop {
                            for _ in 0..1_000_000 {
                                x = std::hint::black_box(
                                    x.wrapping_mul(6364136223846793005).wrapping_add(1),
                                );
                            }
                            if until.is_some_and(|u| std::time::Instant::now() >= u) {
                                return;
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                let _ = h.join();
            }
            Ok(())
        }
        Workload::Alloc { mb, step_ms } => {
            const STEP: usize = 8 << 20;
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut total = 0usize;
            while total < mb.saturating_mul(1 << 20) {
                // Written, not just reserved: untouched pages cost nothing.
                held.push(vec![0xA5; STEP]);
                total += STEP;
                println!("{} allocated {} MiB", identity(), total >> 20);
                let _ = std::io::stdout().flush();
                std::thread::sleep(Duration::from_millis(*step_ms));
            }
            loop {
                std::thread::sleep(Duration::from_secs(60));
                std::hint::black_box(&held);
            }
        }
        Workload::Counter {
            every_ms,
            key,
            count,
        } => counter(*every_ms, key, *count),
        Workload::Http {
            port,
            exit_after_ms,
            error_rate,
            delay_ms,
        } => {
            let (error_rate, delay_ms) = (*error_rate, *delay_ms);
            let rng = std::sync::Arc::new(std::sync::Mutex::new(warden_core::rng::Rng::new(
                u64::from(std::process::id()),
            )));
            if let Some(ms) = *exit_after_ms {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    eprintln!("exiting with status 3 after {ms} ms, as asked");
                    std::process::exit(3);
                });
            }
            let port = port
                .or_else(|| {
                    std::env::var("WARDEN_PORT")
                        .ok()
                        .and_then(|p| p.parse().ok())
                })
                .unwrap_or(8080);
            // WARDEN_HOST is the agent's address, where it reports the endpoint.
            let host = std::env::var("WARDEN_HOST").unwrap_or_else(|_| "127.0.0.1".into());
            let listener = TcpListener::bind((host.as_str(), port))
                .with_context(|| format!("bind {host}:{port}"))?;
            let me = identity();
            // A thread per connection, so a held request (`?sleep_ms=`) does not hold others.
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let me = me.clone();
                let rng = rng.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 2048];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    if let Some(ms) = sleep_ms(&head) {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    let health = head.starts_with("GET /healthz");
                    if !health && delay_ms > 0 {
                        std::thread::sleep(Duration::from_millis(delay_ms));
                    }
                    let fail = !health
                        && error_rate > 0.0
                        && rng.lock().is_ok_and(|mut r| r.bernoulli(error_rate));
                    let status = if fail {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    };
                    let body = format!("{me}\n");
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
            Ok(())
        }
    }
}

/// The `sleep_ms` query parameter of a request's first line (`GET /?sleep_ms=500 HTTP/1.1`):
/// how long to hold the answer, at most 60 s.
fn sleep_ms(head: &str) -> Option<u64> {
    let target = head.lines().next()?.split_whitespace().nth(1)?;
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|v| v.min(60_000))
}

/// Wall-clock milliseconds since the Unix epoch (to line acknowledgements up with faults).
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `warden workload counter`.
fn counter(every_ms: u64, key: &str, count: u64) -> Result<()> {
    use warden_state::client::StateClient;
    let mut state =
        StateClient::from_env().context("warden workload counter needs [state] in its job")?;
    let mut epoch = state.epoch();
    let ack = state.status()?["default_ack"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let mut done = 0u64;
    loop {
        // Wait until this replica is the primary of the newest epoch it knows.
        let (role, e) = state.role(None, Duration::ZERO)?;
        if role != "primary" {
            println!("standby at epoch {e}: waiting to be promoted");
            let _ = std::io::stdout().flush();
            state.role(Some((&role, e)), Duration::from_secs(30))?;
            continue;
        }
        if e != epoch {
            println!("primary at epoch {e} at_ms={}", unix_ms());
            epoch = e;
            state.set_epoch(e);
        }
        let current: u64 = match state.get(key)? {
            Some(v) => String::from_utf8_lossy(&v)
                .trim()
                .parse()
                .with_context(|| format!("the value of {key:?} is not a number"))?,
            None => 0,
        };
        let next = current + 1;
        match state.put(key, next.to_string().as_bytes(), None) {
            Ok(seq) => {
                let back = state.get(key)?;
                if back.as_deref() != Some(next.to_string().as_bytes()) {
                    anyhow::bail!("read back {back:?} after writing {next} at {seq}");
                }
                println!(
                    "acked key={key} value={next} seq={seq} epoch={epoch} ack={ack} at_ms={}",
                    unix_ms()
                );
                let _ = std::io::stdout().flush();
                done += 1;
                if count > 0 && done >= count {
                    return Ok(());
                }
            }
            Err(e) if e.is_fenced() => {
                println!("fenced at epoch {epoch}: {e}");
                let _ = std::io::stdout().flush();
                state.role(Some(("primary", epoch)), Duration::from_secs(30))?;
            }
            Err(e) => return Err(e.into()),
        }
        if every_ms > 0 {
            std::thread::sleep(Duration::from_millis(every_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sleep_ms;

    #[test]
    fn sleep_ms_is_read_from_the_query() {
        assert_eq!(
            sleep_ms("GET /?sleep_ms=500 HTTP/1.1\r\nhost: x\r\n"),
            Some(500)
        );
        assert_eq!(sleep_ms("GET /?a=1&sleep_ms=7 HTTP/1.1"), Some(7));
        assert_eq!(sleep_ms("GET / HTTP/1.1"), None);
        assert_eq!(sleep_ms("GET /?sleep_ms=x HTTP/1.1"), None);
        assert_eq!(sleep_ms("GET /?sleep_ms=999999 HTTP/1.1"), Some(60_000));
    }
}
