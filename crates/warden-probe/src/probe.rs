//! Direct probes of an agent's probe listener.
//!
//! Two probes, because they prove different things:
//!
//! - **TCP connect**: `Refused` means the host answered and nothing listens — the agent process
//!   is gone. `Connected` proves only that the host's *kernel* is up: the kernel completes the
//!   handshake for a stopped (SIGSTOP) or hung process, so it says nothing about the agent.
//! - **HTTP `GET /healthz`**: only an application-level answer proves the agent runs. A stopped
//!   agent accepts the connection (kernel) but never answers: `TimedOut`.
//!
//! - **ICMP echo**: a reply proves the host is up (`Connected`), nothing more; it is
//!   `Skipped` where ICMP sockets are not permitted.
//!
//! The outcomes map onto [`ProbeOutcome`], which the lifecycle interprets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use warden_core::lifecycle::{ProbeKind, ProbeOutcome};

fn connect_error(e: &std::io::Error) -> ProbeOutcome {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => ProbeOutcome::Refused,
        ErrorKind::TimedOut => ProbeOutcome::TimedOut,
        ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable => ProbeOutcome::Unreachable,
        _ => ProbeOutcome::Unreachable,
    }
}

/// TCP connect to `addr` within `limit`.
pub async fn tcp(addr: SocketAddr, limit: Duration) -> ProbeOutcome {
    match timeout(limit, TcpStream::connect(addr)).await {
        Err(_) => ProbeOutcome::TimedOut,
        Ok(Err(e)) => connect_error(&e),
        Ok(Ok(_)) => ProbeOutcome::Connected,
    }
}

/// `GET /healthz` on `addr` within `limit` (connect, request and status line together).
/// `Answered` only for a `200`–`299` status line; any other answer is `Connected` (something
/// answered at the HTTP level, but not a healthy agent).
pub async fn http(addr: SocketAddr, limit: Duration) -> ProbeOutcome {
    let attempt = async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => return connect_error(&e),
        };
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: warden-probe\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            return ProbeOutcome::Refused;
        }
        // The status line is all we need: "HTTP/1.1 200 ..." fits in the first read.
        let mut buf = [0u8; 64];
        let mut filled = 0;
        while filled < 12 {
            match stream.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(_) => return ProbeOutcome::Refused,
            }
        }
        let head = std::str::from_utf8(&buf[..filled]).unwrap_or("");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200..=299) => ProbeOutcome::Answered,
            Some(_) => ProbeOutcome::Connected,
            None if filled == 0 => ProbeOutcome::Refused,
            None => ProbeOutcome::Connected,
        }
    };
    timeout(limit, attempt)
        .await
        .unwrap_or(ProbeOutcome::TimedOut)
}

/// ICMP echo to `ip` within `limit`. A reply means only that the *host* is up (`Connected`).
/// Where ICMP sockets are not permitted (no root, `net.ipv4.ping_group_range` closed) the
/// probe is `Skipped`, which the lifecycle ignores.
pub async fn icmp(ip: std::net::IpAddr, limit: Duration) -> ProbeOutcome {
    use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence, SurgeError};
    let config = match ip {
        std::net::IpAddr::V4(_) => Config::default(),
        std::net::IpAddr::V6(_) => Config::builder().kind(ICMP::V6).build(),
    };
    let client = match Client::new(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "ICMP not permitted here; skipping the ICMP probe");
            return ProbeOutcome::Skipped;
        }
    };
    // Identifiers only need to differ between concurrent probes of this process.
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut pinger = client.pinger(ip, PingIdentifier(id)).await;
    pinger.timeout(limit);
    match pinger.ping(PingSequence(0), &[0u8; 16]).await {
        Ok(_) => ProbeOutcome::Connected,
        Err(SurgeError::Timeout { .. }) => ProbeOutcome::TimedOut,
        Err(SurgeError::IOError(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            ProbeOutcome::Skipped
        }
        Err(_) => ProbeOutcome::Unreachable,
    }
}

/// Run the direct probes (TCP connect, HTTP `/healthz`, ICMP echo) concurrently.
pub async fn direct(addr: SocketAddr, limit: Duration) -> Vec<(ProbeKind, ProbeOutcome)> {
    let (t, h, i) = tokio::join!(tcp(addr, limit), http(addr, limit), icmp(addr.ip(), limit));
    vec![
        (ProbeKind::Tcp, t),
        (ProbeKind::Http, h),
        (ProbeKind::Icmp, i),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(2);

    async fn serve_once(listener: TcpListener, response: &'static str) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(response.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn a_live_agent_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_once(
            listener,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ));
        assert_eq!(http(addr, LIMIT).await, ProbeOutcome::Answered);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_unhealthy_answer_is_not_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_once(
            listener,
            "HTTP/1.1 503 Service Unavailable\r\n\r\n",
        ));
        assert_eq!(http(addr, LIMIT).await, ProbeOutcome::Connected);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_process_refuses() {
        // Bind, learn the port, close: nothing listens there any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let outcomes = direct(addr, LIMIT).await;
        assert_eq!(
            outcomes[..2],
            [
                (ProbeKind::Tcp, ProbeOutcome::Refused),
                (ProbeKind::Http, ProbeOutcome::Refused)
            ]
        );
        // The host itself is up: ICMP answers where permitted and is skipped where not.
        assert!(
            matches!(
                outcomes[2],
                (
                    ProbeKind::Icmp,
                    ProbeOutcome::Connected | ProbeOutcome::Skipped
                )
            ),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn a_stopped_process_connects_but_never_answers() {
        // A listener that never accepts is what a SIGSTOPped agent looks like from outside:
        // the kernel completes the handshake into the backlog, nobody reads.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let outcomes = direct(addr, Duration::from_millis(300)).await;
        assert_eq!(
            outcomes[..2],
            [
                (ProbeKind::Tcp, ProbeOutcome::Connected),
                (ProbeKind::Http, ProbeOutcome::TimedOut)
            ]
        );
        drop(listener);
    }
}
