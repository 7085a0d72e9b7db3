//! Built-in workloads for demos and tests, so nothing else needs installing:
//! `warden workload sleep` (runs until stopped, printing its fencing token) and
//! `warden workload http` (serves `/` and `/healthz` on `WARDEN_PORT` or `--port`, answering
//! with the task id that served the request).

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
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let body = format!("{me}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            Ok(())
        }
    }
}
