//! # warden-client
//!
//! A small blocking HTTP/1.1 client for Warden's REST API, used by the `warden` CLI and the
//! chaos harness: one request per connection, JSON in and out. Both make a handful of
//! requests to one server, so a dependency-free client that is easy to read beats a full HTTP
//! stack. The answers' shapes are the server's typed views (`warden_server::view`); read them
//! with [`Client::get_as`].
//!
//! With a replicated control plane the client may be given every replica
//! (`http://a:7401,http://b:7401`): a request goes to the replica that answered last, and to
//! the next one when that one cannot be reached; a write refused by a standby with `307` and a
//! `Location` is sent again to the leader named there (and the leader is preferred from then
//! on).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The server's REST address, from `WARDEN_ADDR` (default `http://127.0.0.1:7401`), or every
/// replica's, separated by commas; and the API token sent with every request, if any.
#[derive(Clone)]
pub struct Client {
    /// `(host, port)` of every replica given.
    servers: Arc<[(String, u16)]>,
    /// The replica tried first: the one that answered last.
    preferred: Arc<AtomicUsize>,
    /// Sent as `Authorization: Bearer` (to the leader of a redirect too: the replicas of one
    /// control plane share their token file).
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Client")
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A response.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
    /// The `Location` header, if any (a standby's redirect to the leader).
    pub location: Option<String>,
    /// The `X-Warden-Stale` header was `true`: a standby answered from a view it could not
    /// refresh lately (no leader, or the store unreachable).
    pub stale: bool,
}

impl Response {
    /// The body as JSON, or an error carrying the server's message for non-2xx statuses.
    pub fn json(self) -> Result<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_str(&self.body)
            .with_context(|| format!("parse the server's answer (status {})", self.status))?;
        if !(200..300).contains(&self.status) {
            let msg = value
                .pointer("/error/message")
                .and_then(|m| m.as_str())
                .unwrap_or(&self.body)
                .to_string();
            bail!("server answered {}: {msg}", self.status);
        }
        Ok(value)
    }
}

/// `http://host:port` or `host:port` → `(host, port)`.
fn parse_addr(addr: &str) -> Result<(String, u16)> {
    let addr = addr.trim();
    if addr.starts_with("https://") {
        bail!("WARDEN_ADDR {addr:?}: https is not supported yet");
    }
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    // A redirect's Location carries a path: keep the authority only.
    let hostport = rest.split('/').next().unwrap_or_default();
    let (host, port) = hostport
        .rsplit_once(':')
        .with_context(|| format!("WARDEN_ADDR {addr:?} must look like http://host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("WARDEN_ADDR {addr:?}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

impl Client {
    /// A client for `addr` (`http://host:port` or `host:port`), or for every replica of a
    /// replicated control plane, separated by commas.
    pub fn new(addr: &str) -> Result<Self> {
        let servers = addr
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(parse_addr)
            .collect::<Result<Vec<_>>>()?;
        if servers.is_empty() {
            bail!("WARDEN_ADDR {addr:?}: no address");
        }
        Ok(Client {
            servers: servers.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            token: None,
        })
    }

    /// The same client, sending `token` as `Authorization: Bearer` (none: no header).
    pub fn with_token(mut self, token: Option<String>) -> Result<Self> {
        if let Some(t) = &token
            && (t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()))
        {
            bail!("the API token must be one word of printable ASCII (check WARDEN_TOKEN)");
        }
        self.token = token.map(Arc::from);
        Ok(self)
    }

    /// A client for every replica in `addrs` (each `http://host:port` or `host:port`).
    pub fn for_replicas<S: AsRef<str>>(addrs: &[S]) -> Result<Self> {
        let joined: Vec<&str> = addrs.iter().map(AsRef::as_ref).collect();
        Self::new(&joined.join(","))
    }

    /// Send one request: to the replica that answered last, then to the others in turn while
    /// they cannot be reached; a `307` redirect to the leader is followed (at most twice).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        let n = self.servers.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_err = None;
        for k in 0..n {
            let i = (first + k) % n;
            let (host, port) = &self.servers[i];
            // Only a replica that cannot be reached is passed over: a request that reached
            // one is never sent to another (a write must not be applied twice).
            let mut stream = match connect(host, *port) {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let r = exchange(
                &mut stream,
                host,
                *port,
                self.token.as_deref(),
                method,
                path,
                content_type,
                body,
            )?;
            self.preferred.store(i, Ordering::Relaxed);
            return self.follow(r, method, path, content_type, body);
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no server address")))
    }

    /// Follow a standby's redirect to the leader (when one is named), preferring the leader
    /// from then on if it is one of this client's replicas.
    fn follow(
        &self,
        mut r: Response,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        for _ in 0..2 {
            if !matches!(r.status, 307 | 308) {
                break;
            }
            let Some((host, port)) = r.location.as_deref().and_then(|l| parse_addr(l).ok()) else {
                break;
            };
            r = send(
                &host,
                port,
                self.token.as_deref(),
                method,
                path,
                content_type,
                body,
            )?;
            if let Some(i) = self
                .servers
                .iter()
                .position(|(h, p)| *h == host && *p == port)
            {
                self.preferred.store(i, Ordering::Relaxed);
            }
        }
        Ok(r)
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.get_as(path)
    }

    /// `GET path`, read as `T` (one of the server's views); the server's message for non-2xx
    /// statuses, and the path with the parse error when the answer does not have `T`'s shape.
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let value = self.request("GET", path, None, b"")?.json()?;
        serde_json::from_value(value).with_context(|| format!("read the answer to GET {path}"))
    }
}

/// One request to one server.
#[allow(clippy::too_many_arguments)]
fn send(
    host: &str,
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response> {
    let mut stream = connect(host, port)?;
    exchange(
        &mut stream,
        host,
        port,
        token,
        method,
        path,
        content_type,
        body,
    )
}

/// A connection to `host:port`.
fn connect(host: &str, port: u16) -> Result<TcpStream> {
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}:{port}"))?
        .next()
        .with_context(|| format!("resolve {host}:{port}"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
        format!("connect to the Warden server at {addr} (is it running? set WARDEN_ADDR)")
    })
}

/// Send the request on `stream` (with `token` as a bearer token) and read the response.
#[allow(clippy::too_many_arguments)]
fn exchange(
    stream: &mut TcpStream,
    host: &str,
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\nAccept: application/json\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .context("send the request")?;
    stream.write_all(body).context("send the request body")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("read the response")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let mut body = raw[split + 4..].to_vec();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        location: header("location"),
        stale: header("x-warden-stale").is_some_and(|v| v.eq_ignore_ascii_case("true")),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("malformed chunk")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("malformed chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.body.as_str()), (200, "[]"));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
        assert!(Client::new("http://127.0.0.1:7401").is_ok());
        assert!(Client::new("nonsense").is_err());
        let with = Client::new("127.0.0.1:1")
            .and_then(|c| c.with_token(Some("secret-token".into())))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{with:?}").contains("secret-token"));
        assert!(
            Client::new("127.0.0.1:1")
                .and_then(|c| c.with_token(Some("two words".into())))
                .is_err()
        );
        let c =
            Client::new("http://127.0.0.1:7401,127.0.0.1:7402/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.servers.len(), 2);
        assert!(Client::new("http://127.0.0.1:7401,nonsense").is_err());
        let r = parse_response(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/v1/jobs\r\nX-Warden-Stale: true\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.location.as_deref(), Some("http://127.0.0.1:9/v1/jobs"));
        assert!(r.stale);
        assert_eq!(
            parse_addr("http://127.0.0.1:9/v1/jobs").unwrap_or_else(|e| panic!("{e}")),
            ("127.0.0.1".to_string(), 9)
        );
    }
}
