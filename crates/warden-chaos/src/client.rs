//! A small blocking HTTP/1.1 client for the CLI: one request per connection, JSON in and out.
//! The CLI makes a handful of requests to one server, so a dependency-free client that is easy
//! to read beats a full HTTP stack.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The server's REST address, from `WARDEN_ADDR` (default `http://127.0.0.1:7401`), and the
/// API token sent with every request, if any.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A response.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
    /// The `Location` header, if any.
    pub location: Option<String>,
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

impl Client {
    /// A client for `addr` (`http://host:port` or `host:port`).
    pub fn new(addr: &str) -> Result<Self> {
        let rest = addr.strip_prefix("http://").unwrap_or(addr);
        if addr.starts_with("https://") {
            bail!("WARDEN_ADDR {addr:?}: https is not supported yet");
        }
        let hostport = rest.trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .with_context(|| format!("WARDEN_ADDR {addr:?} must look like http://host:port"))?;
        let port = port
            .parse()
            .with_context(|| format!("WARDEN_ADDR {addr:?}: bad port"))?;
        Ok(Client {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
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
        self.token = token;
        Ok(self)
    }

    /// Send one request. A `307`/`308` redirect (a standby of a replicated control plane
    /// pointing at its leader) is followed once, with the same method and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        let response = self.request_once(method, path, content_type, body)?;
        if matches!(response.status, 307 | 308)
            && let Some(location) = &response.location
        {
            let (base, target) = split_location(location)
                .with_context(|| format!("follow the redirect to {location:?}"))?;
            // The same token: replicas of one control plane share their token file.
            let leader = Client::new(base)?.with_token(self.token.clone())?;
            return leader.request_once(method, target, content_type, body);
        }
        Ok(response)
    }

    fn request_once(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolve {}:{}", self.host, self.port))?
            .next()
            .with_context(|| format!("resolve {}:{}", self.host, self.port))?;
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
                format!("connect to the Warden server at {addr} (is it running? set WARDEN_ADDR)")
            })?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nContent-Length: {}\r\nAccept: application/json\r\n",
            self.host,
            self.port,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(token) = &self.token {
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

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.request("GET", path, None, b"")?.json()
    }
}

/// `http://host:port/path?query` as (`http://host:port`, `/path?query`).
fn split_location(location: &str) -> Option<(&str, &str)> {
    let rest = location.strip_prefix("http://")?;
    let slash = rest
        .find('/')
        .map_or(location.len(), |i| i + "http://".len());
    let (base, target) = location.split_at(slash);
    Some((base, if target.is_empty() { "/" } else { target }))
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
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        body = dechunk(&body)?;
    }
    let location = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_string())
    });
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        location,
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
    }

    #[test]
    fn redirects_are_split_into_server_and_target() {
        let r = parse_response(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:7411/v1/jobs?x=1\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 307);
        let location = r.location.unwrap_or_default();
        assert_eq!(
            split_location(&location),
            Some(("http://127.0.0.1:7411", "/v1/jobs?x=1"))
        );
        assert_eq!(split_location("http://h:1"), Some(("http://h:1", "/")));
        assert_eq!(split_location("https://h:1/x"), None);
    }
}
