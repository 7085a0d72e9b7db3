//! [`EtcdConfig`]: where the etcd cluster is and how long to wait for it, parsed from an
//! `etcd://host:port[,host:port...][/prefix]` URL.

use std::time::Duration;

use crate::error::{Result, StoreError};

/// Key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "/warden";

/// Default time to establish a connection to an endpoint.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Default deadline of one store call (all its round trips to etcd together).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach the etcd cluster that holds a replicated control plane's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client endpoints, e.g. `http://127.0.0.1:2379`. Requests are balanced over them; one
    /// that is down is skipped.
    pub endpoints: Vec<String>,
    /// Prefix of every key of this control plane, e.g. `/warden`: starts with `/`, no trailing
    /// `/`. Several control planes can share one cluster under different prefixes.
    pub prefix: String,
    /// Time to establish a connection to an endpoint.
    pub dial_timeout: Duration,
    /// Deadline of one store call: past it the call fails with
    /// [`StoreError::Unavailable`], it never hangs.
    pub request_timeout: Duration,
    /// TLS to etcd: the endpoints are then `https://`.
    pub tls: Option<EtcdTls>,
    /// etcd authentication (`etcdctl auth enable`): a user and its password.
    pub user: Option<EtcdUser>,
}

/// TLS settings for etcd, as PEM bytes (the caller reads the files and names them in errors).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate(s) etcd's server certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// A client certificate and its key, for an etcd started with `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "(certificate, key)"),
            )
            .finish()
    }
}

/// An etcd user; the password never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// The user name.
    pub name: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .field("password", &"(hidden)")
            .finish()
    }
}

impl EtcdConfig {
    /// A configuration for `endpoints` (`host:port` or `http://host:port`) under `prefix`,
    /// with the default timeouts.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: None,
            user: None,
        }
    }

    /// The same cluster over TLS: every endpoint becomes `https://`.
    #[must_use]
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.endpoints = self
            .endpoints
            .iter()
            .map(|e| match e.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => e.clone(),
            })
            .collect();
        self.tls = Some(tls);
        self
    }

    /// The same cluster, authenticating as `user`.
    #[must_use]
    pub fn with_user(mut self, user: EtcdUser) -> Self {
        self.user = Some(user);
        self
    }

    /// Parse `etcd://host:port[,host:port...][/prefix]`, e.g.
    /// `etcd://10.0.0.1:2379,10.0.0.2:2379/warden-prod`. The prefix defaults to
    /// [`DEFAULT_PREFIX`]; the timeouts get their defaults. Errors name what is wrong.
    ///
    /// ```
    /// # #[cfg(feature = "etcd")] {
    /// use warden_store::etcd::EtcdConfig;
    /// let cfg = EtcdConfig::parse("etcd://127.0.0.1:2379,127.0.0.1:22379/prod").unwrap();
    /// assert_eq!(cfg.endpoints, ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]);
    /// assert_eq!(cfg.prefix, "/prod");
    /// assert!(EtcdConfig::parse("etcd://127.0.0.1/prod").is_err()); // no port
    /// # }
    /// ```
    pub fn parse(url: &str) -> Result<EtcdConfig> {
        let bad = |reason: String| StoreError::invalid(format!("etcd URL {url:?}"), reason);
        let url = url.trim();
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            bad("must start with etcd:// (etcd://host:port[,host:port...][/prefix])".into())
        })?;
        if rest.contains("://") {
            return Err(bad(
                "endpoints are host:port without a scheme (TLS is set by the etcd TLS \
                 settings, not the URL)"
                    .into(),
            ));
        }
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hosts.is_empty() {
            return Err(bad("names no endpoint; expected etcd://host:port".into()));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            endpoints.push(parse_endpoint(host).map_err(&bad)?);
        }
        let prefix = normalize_prefix(prefix).map_err(bad)?;
        Ok(EtcdConfig::new(endpoints, prefix))
    }

    /// Reject settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(StoreError::invalid(
                "etcd endpoints",
                "at least one is needed",
            ));
        }
        if normalize_prefix(&self.prefix).ok().as_deref() != Some(self.prefix.as_str()) {
            return Err(StoreError::invalid(
                format!("etcd prefix {:?}", self.prefix),
                "must start with /, not end with /, and have no empty segment",
            ));
        }
        for (what, d) in [
            ("etcd dial_timeout", self.dial_timeout),
            ("etcd request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(StoreError::invalid(what, "must be more than 0"));
            }
        }
        Ok(())
    }
}

/// `host:port` (or `http://host:port`) as an `http://host:port` endpoint.
fn parse_endpoint(host: &str) -> std::result::Result<String, String> {
    let h = host.strip_prefix("http://").unwrap_or(host);
    if h.is_empty() {
        return Err("has an empty endpoint (two commas, or a trailing comma?)".into());
    }
    if h.starts_with("https://") {
        return Err(format!(
            "endpoint {host:?}: give host:port; TLS is set by the etcd TLS settings"
        ));
    }
    if let Some(c) = h
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '?' | '#'))
    {
        return Err(format!("endpoint {host:?} contains {c:?}"));
    }
    let (name, port) = match h.rfind(':') {
        // `[::1]:2379`: the port follows the closing bracket.
        Some(i) if !h[..i].contains(':') || h[..i].ends_with(']') => (&h[..i], &h[i + 1..]),
        _ => {
            return Err(format!(
                "endpoint {host:?} has no port; expected host:port, e.g. 127.0.0.1:2379"
            ));
        }
    };
    if name.is_empty() {
        return Err(format!("endpoint {host:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("http://{name}:{p}")),
        _ => Err(format!(
            "endpoint {host:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

/// `""` → the default, `/a/b/` → `/a/b`; refuses empty segments and odd characters.
fn normalize_prefix(p: &str) -> std::result::Result<String, String> {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(DEFAULT_PREFIX.to_owned());
    }
    if !trimmed.starts_with('/') {
        return Err(format!("prefix {p:?} must start with /"));
    }
    if trimmed[1..].split('/').any(str::is_empty) {
        return Err(format!("prefix {p:?} has an empty segment (//)"));
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | ','))
    {
        return Err(format!("prefix {p:?} contains {c:?}"));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        EtcdConfig::parse(url).expect_err(url).to_string()
    }

    #[test]
    fn urls_parse_into_endpoints_and_a_prefix() {
        let c = EtcdConfig::parse("etcd://127.0.0.1:2379").expect("one endpoint");
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let c = EtcdConfig::parse("etcd://a:1,b:2,[::1]:3/x/y/").expect("three endpoints");
        assert_eq!(c.endpoints, ["http://a:1", "http://b:2", "http://[::1]:3"]);
        assert_eq!(c.prefix, "/x/y");
        assert_eq!(
            EtcdConfig::parse("etcd://a:1/").expect("slash").prefix,
            "/warden"
        );
        c.validate().expect("valid");
    }

    #[test]
    fn bad_urls_are_refused_naming_the_problem() {
        assert!(err("http://a:1").contains("must start with etcd://"));
        assert!(err("etcd://").contains("names no endpoint"));
        assert!(err("etcd:///warden").contains("names no endpoint"));
        assert!(err("etcd://a").contains("has no port"));
        assert!(err("etcd://a:1,").contains("empty endpoint"));
        assert!(err("etcd://a:x").contains("port \"x\" is not a number"));
        assert!(err("etcd://a:70000").contains("not a number from 1 to 65535"));
        assert!(err("etcd://:1").contains("has no host"));
        assert!(err("etcd://a:1/x//y").contains("empty segment"));
        assert!(err("etcd://a:1/x y").contains("contains ' '"));
        assert!(err("etcd://https://a:1").contains("TLS"));
        assert!(err("etcd://http://a:1").contains("without a scheme"));
        // The message names the URL.
        assert!(
            err("etcd://a").contains("etcd URL \"etcd://a\""),
            "{}",
            err("etcd://a")
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = EtcdConfig::new(vec!["http://a:1".into()], "/w");
        c.validate().expect("valid");
        c.request_timeout = Duration::ZERO;
        assert!(
            c.validate()
                .expect_err("zero")
                .to_string()
                .contains("request_timeout")
        );
        let c = EtcdConfig::new(vec![], "/w");
        assert!(
            c.validate()
                .expect_err("none")
                .to_string()
                .contains("endpoints")
        );
        let c = EtcdConfig::new(vec!["a:1".into()], "w/");
        assert!(c.validate().is_err());
    }
}
