//! The agent's probe listener: answers `GET /healthz` with `200 ok` from the agent's own
//! runtime, so an answer proves the agent process is running (not just its host's kernel).
//! Other `GET` paths go to the caller's `extra` handler (the agent serves `/metrics` there);
//! what it does not answer gets `404`. Connections are handled one request each, bounded in
//! size and time, so a misbehaving client cannot tie the agent up.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

const READ_LIMIT: usize = 8 * 1024;
const CONN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve probes on `listener` until `cancel` fires. `extra` answers other paths (e.g.
/// `/metrics`) with `(content type, body)`, or `None` for 404.
pub async fn serve<F>(listener: TcpListener, cancel: CancellationToken, extra: F)
where
    F: Fn(&str) -> Option<(&'static str, String)> + Send + Sync + Clone + 'static,
{
    loop {
        let conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let extra = extra.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONN_TIMEOUT, answer(stream, extra)).await;
                });
            }
            Err(e) => {
                debug!(error = %e, "accept probe connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn answer<F>(mut stream: TcpStream, extra: F)
where
    F: Fn(&str) -> Option<(&'static str, String)>,
{
    let mut buf = vec![0u8; READ_LIMIT];
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..filled]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", p) => match extra(p) {
            Some((ctype, body)) => ("200 OK", ctype, body),
            None => ("404 Not Found", "text/plain", "not found\n".to_string()),
        },
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::probe;
    use warden_core::lifecycle::ProbeOutcome;

    #[tokio::test]
    async fn the_listener_answers_healthz_and_probes_see_it_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, cancel.clone(), |p: &str| {
            (p == "/metrics").then(|| ("text/plain", "x 1\n".to_string()))
        }));
        assert_eq!(
            probe::http(addr, Duration::from_secs(2)).await,
            ProbeOutcome::Answered
        );
        assert_eq!(
            probe::tcp(addr, Duration::from_secs(2)).await,
            ProbeOutcome::Connected
        );
        cancel.cancel();
        server.await.unwrap();
        // Once the listener is gone the port refuses: the process is "dead".
        assert_eq!(
            probe::http(addr, Duration::from_secs(2)).await,
            ProbeOutcome::Refused
        );
    }
}
