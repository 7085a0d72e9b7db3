//! Built-in workloads for demos and tests, so nothing else needs installing:
//! `warden workload sleep` (runs until stopped, printing its fencing token) and
//! `warden workload http` (serves `/` and `/healthz` on `WARDEN_PORT` or `--port`, answering
//! with the task id that served the request; `/?sleep_ms=N` holds the answer N ms).

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
    /// Serve HTTP on WARDEN_PORT (or --port), answering which task served.
    Http {
        /// Port; default WARDEN_PORT, else 8080.
        #[arg(long)]
        port: Option<u16>,
    },
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
        Workload::Http { port } => {
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
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 2048];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    if let Some(ms) = sleep_ms(&head) {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    let body = format!("{me}\n");
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
