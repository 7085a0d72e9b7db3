//! The server's protective limits, one place for all of them: what the REST API accepts
//! ([`ApiLimits`]), what agent sessions may send and hold ([`SessionLimits`]) and what
//! a job spec may ask for ([`JobLimits`]). They keep the control plane's memory and CPU bounded
//! whatever a client or an agent sends, and every refusal names the limit that was hit.
//!
//! The config file's `[limits.api]`, `[limits.sessions]` and `[limits.jobs]` tables map onto
//! [`LimitsConfig`]; `docs/security.md` explains the defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_core::{ConfigError, HealthCheck, JobSpec, Time, planner::TokenBucket};

/// Largest accepted request body, bytes (1 MiB). A larger body gets `413 payload_too_large`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Requests served at once (512) before new ones are shed with `503 overloaded`. Matches
/// tokio's default blocking-pool size, which the store-touching calls run on.
pub const MAX_CONCURRENT_REQUESTS: usize = 512;
/// Longest a request may take (10 s) before it is answered with `503 timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `wait` of a blocking query on `/v1/services` (9 s: under the request timeout).
pub const MAX_SERVICES_WAIT: Duration = Duration::from_secs(9);

/// The protective limits of the API (`[limits.api]`). [`ApiLimits::default`] is what
/// [`crate::http::router`] and [`crate::http::serve`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Largest request body, bytes (default [`MAX_BODY_BYTES`]).
    pub max_body_bytes: usize,
    /// Requests in flight before new ones are shed (default [`MAX_CONCURRENT_REQUESTS`]).
    pub max_concurrent_requests: usize,
    /// Longest a request may take (default [`REQUEST_TIMEOUT`]).
    #[serde(with = "warden_core::duration_serde")]
    pub request_timeout: Duration,
}

impl ApiLimits {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), warden_core::ConfigError> {
        use warden_core::ConfigError;
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::new("max_body_bytes", "must be at least 1024"));
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                "max_concurrent_requests",
                "must be at least 1",
            ));
        }
        // Blocking queries on /v1/services wait up to 9 s and must end before the timeout.
        if self.request_timeout <= MAX_SERVICES_WAIT {
            return Err(ConfigError::new(
                "request_timeout",
                "must be longer than 9s (blocking queries on /v1/services wait up to 9s)",
            ));
        }
        Ok(())
    }
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: MAX_BODY_BYTES,
            max_concurrent_requests: MAX_CONCURRENT_REQUESTS,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Every limit of the server (`[limits]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The REST API (`[limits.api]`).
    pub api: ApiLimits,
    /// Agent sessions (`[limits.sessions]`).
    pub sessions: SessionLimits,
    /// Job specs (`[limits.jobs]`).
    pub jobs: JobLimits,
}

impl LimitsConfig {
    /// Reject impossible settings, naming the field (`limits.…`). `heartbeat_interval` is the
    /// interval agents are told to use: the heartbeat limit must leave room for it.
    pub fn validate(&self, heartbeat_interval: Duration) -> Result<(), ConfigError> {
        self.api.validate().map_err(|e| e.within("limits.api"))?;
        self.sessions
            .validate(heartbeat_interval)
            .map_err(|e| e.within("limits.sessions"))?;
        self.jobs.validate().map_err(|e| e.within("limits.jobs"))
    }
}

/// Limits on agent sessions (the gRPC side).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionLimits {
    /// Sessions open at once, counting streams that have not said Hello yet (default 10 000).
    /// One more is refused with `RESOURCE_EXHAUSTED`; the agent retries with backoff.
    pub max_sessions: usize,
    /// Largest gRPC message, bytes, in both directions (default 1 MiB). A larger message
    /// ends the session with `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// Messages queued to one agent before further ones are dropped (default 256). Orders
    /// lost that way are sent again by the control loop.
    pub outbound_queue: usize,
    /// Heartbeats per second one session may send on average (default 10, five times the
    /// default 500 ms interval). Beyond it, heartbeats are dropped unread and counted in
    /// `warden_heartbeats_dropped_total`.
    pub heartbeat_rate: f64,
    /// Heartbeats one session may send in a burst above the rate (default 20).
    pub heartbeat_burst: u32,
    /// Every other message (task reports, probe results, leaves, stray Hellos) one session
    /// may send per second on average (default 200). The server never drops these — each
    /// may carry a change it must see — so beyond the rate the session pauses before reading
    /// the next (its own heartbeats wait behind them). Counted in
    /// `warden_session_messages_paced_total`.
    pub message_rate: f64,
    /// Such messages one session may send in a burst above the rate (default 1 000: an agent
    /// reporting hundreds of tasks at once is not slowed).
    pub message_burst: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 10_000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outbound_queue: 256,
            heartbeat_rate: 10.0,
            heartbeat_burst: 20,
            message_rate: 200.0,
            message_burst: 1_000,
        }
    }
}

/// Default largest gRPC message (1 MiB), both directions.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

impl SessionLimits {
    fn validate(&self, heartbeat_interval: Duration) -> Result<(), ConfigError> {
        if self.max_sessions == 0 {
            return Err(ConfigError::new("max_sessions", "must be at least 1"));
        }
        if self.max_message_bytes < 4096 {
            return Err(ConfigError::new(
                "max_message_bytes",
                "must be at least 4096 (a Hello listing running tasks needs room)",
            ));
        }
        if self.max_message_bytes > warden_proto::AGENT_MAX_MESSAGE_BYTES {
            return Err(ConfigError::new(
                "max_message_bytes",
                format!(
                    "must be at most {} (agents accept no larger message from the server)",
                    warden_proto::AGENT_MAX_MESSAGE_BYTES
                ),
            ));
        }
        if self.outbound_queue == 0 {
            return Err(ConfigError::new("outbound_queue", "must be at least 1"));
        }
        // A well-behaved agent sends one heartbeat per interval and a few more when it
        // reconnects; the limit must never drop those, or the agent would lose its lease.
        let normal = 1.0 / heartbeat_interval.as_secs_f64().max(1e-3);
        if !(self.heartbeat_rate.is_finite() && self.heartbeat_rate >= 2.0 * normal) {
            return Err(ConfigError::new(
                "heartbeat_rate",
                format!(
                    "must be at least twice the agents' heartbeat rate ({:.1}/s for a {} ms \
                     interval), or healthy agents would have heartbeats dropped",
                    2.0 * normal,
                    heartbeat_interval.as_millis()
                ),
            ));
        }
        if self.heartbeat_burst < 2 {
            return Err(ConfigError::new("heartbeat_burst", "must be at least 2"));
        }
        if !(self.message_rate.is_finite() && self.message_rate >= 1.0) {
            return Err(ConfigError::new(
                "message_rate",
                format!(
                    "must be a number of messages per second, at least 1 (got {})",
                    self.message_rate
                ),
            ));
        }
        if self.message_burst < 1 {
            return Err(ConfigError::new("message_burst", "must be at least 1"));
        }
        Ok(())
    }
}

/// Per-session heartbeat admission: a token bucket of [`SessionLimits::heartbeat_rate`] and
/// [`SessionLimits::heartbeat_burst`]. Pure: the caller passes the time.
#[derive(Clone, Debug)]
pub struct HeartbeatLimiter {
    bucket: TokenBucket,
}

impl HeartbeatLimiter {
    /// A full bucket at `now`.
    pub fn new(limits: &SessionLimits, now: Time) -> Self {
        HeartbeatLimiter {
            bucket: TokenBucket::new(limits.heartbeat_rate, limits.heartbeat_burst, now),
        }
    }

    /// Whether a heartbeat arriving at `now` may be processed (and spend a token if so).
    pub fn admit(&mut self, now: Time) -> bool {
        if self.bucket.available(now) == 0 {
            return false;
        }
        self.bucket.take(1, now);
        true
    }
}

/// Per-session pacing of every message but heartbeats: a token bucket of
/// [`SessionLimits::message_rate`] and [`SessionLimits::message_burst`] that may go into
/// debt, each message beyond the burst waiting for its token. Pure: the caller passes the
/// time and does the waiting.
#[derive(Clone, Debug)]
pub struct MessagePacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Time,
}

/// Longest single pause (a clock that stands still must not make them grow without bound).
const MAX_PAUSE: Duration = Duration::from_secs(1);

impl MessagePacer {
    /// A full bucket at `now`.
    pub fn new(limits: &SessionLimits, now: Time) -> Self {
        let burst = f64::from(limits.message_burst.max(1));
        MessagePacer {
            rate: limits.message_rate.max(1e-3),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// A message arrived at `now`: how long the session must pause before handling it (zero
    /// within the rate). It is never dropped.
    pub fn pause(&mut self, now: Time) -> Duration {
        let dt = now.saturating_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate).min(MAX_PAUSE)
        }
    }
}

/// Limits on job specs (`POST /v1/jobs`). A spec over a limit is refused before anything is
/// stored, with `422 limit_exceeded` naming the field (or `413` for its size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobLimits {
    /// Jobs the server holds at once (default 10 000). Updating an existing job is always
    /// allowed.
    pub max_jobs: usize,
    /// Largest submitted job spec, bytes (default 64 KiB).
    pub max_spec_bytes: usize,
    /// Largest `replicas` of a service (default 1 000).
    pub max_replicas: u32,
    /// Most `env` entries (default 128).
    pub max_env: usize,
    /// Most `args` (default 256).
    pub max_args: usize,
    /// Largest command line, bytes: `command` plus every argument (default 16 KiB). The same
    /// bound applies to an exec health check's `command`.
    pub max_command_bytes: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_jobs: 10_000,
            max_spec_bytes: 64 * 1024,
            max_replicas: 1000,
            max_env: 128,
            max_args: 256,
            max_command_bytes: 16 * 1024,
        }
    }
}

/// A job spec over one of the [`JobLimits`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct LimitError {
    /// The spec's field, dotted (`replicas`, `env`, `health.command`).
    pub field: &'static str,
    /// What is over which limit.
    pub message: String,
}

impl JobLimits {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_jobs", self.max_jobs),
            ("max_spec_bytes", self.max_spec_bytes),
            ("max_replicas", self.max_replicas as usize),
            ("max_command_bytes", self.max_command_bytes),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Check `spec` against the limits (not its size, which is checked on the raw body, nor
    /// the number of jobs, which needs the store).
    pub fn check(&self, spec: &JobSpec) -> Result<(), LimitError> {
        let over = |field: &'static str, what: String| {
            Err(LimitError {
                field,
                message: what,
            })
        };
        if spec.replicas > self.max_replicas {
            return over(
                "replicas",
                format!(
                    "is {}; this server allows at most {} (limits.jobs.max_replicas)",
                    spec.replicas, self.max_replicas
                ),
            );
        }
        if spec.env.len() > self.max_env {
            return over(
                "env",
                format!(
                    "has {} entries; this server allows at most {} (limits.jobs.max_env)",
                    spec.env.len(),
                    self.max_env
                ),
            );
        }
        if spec.args.len() > self.max_args {
            return over(
                "args",
                format!(
                    "has {} entries; this server allows at most {} (limits.jobs.max_args)",
                    spec.args.len(),
                    self.max_args
                ),
            );
        }
        let line = spec.command.len() + spec.args.iter().map(String::len).sum::<usize>();
        if line > self.max_command_bytes {
            return over(
                "command",
                format!(
                    "and its args are {line} bytes long; this server allows at most {} \
                     (limits.jobs.max_command_bytes)",
                    self.max_command_bytes
                ),
            );
        }
        if let Some(HealthCheck::Exec { command, .. }) = &spec.health {
            let line: usize = command.iter().map(String::len).sum();
            if line > self.max_command_bytes || command.len() > self.max_args {
                return over(
                    "health.command",
                    format!(
                        "is {line} bytes in {} arguments; this server allows at most {} bytes \
                         and {} arguments",
                        command.len(),
                        self.max_command_bytes,
                        self.max_args
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        toml::from_str(&format!(
            "name = \"a\"\nkind = \"service\"\ncommand = \"/bin/true\"\n{extra}"
        ))
        .expect("spec parses")
    }

    #[test]
    fn defaults_validate_and_print() {
        let limits = LimitsConfig::default();
        limits
            .validate(Duration::from_millis(500))
            .expect("defaults are valid");
        let text = toml::to_string(&limits).expect("serialize");
        let back: LimitsConfig = toml::from_str(&text).expect("parse back");
        assert_eq!(back, limits);
    }

    #[test]
    fn impossible_settings_name_their_field() {
        type Change = Box<dyn Fn(&mut LimitsConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "limits.sessions.heartbeat_rate",
                Box::new(|l| l.sessions.heartbeat_rate = 3.0),
            ),
            (
                "limits.sessions.heartbeat_rate",
                Box::new(|l| l.sessions.heartbeat_rate = f64::NAN),
            ),
            (
                "limits.sessions.message_rate",
                Box::new(|l| l.sessions.message_rate = 0.5),
            ),
            (
                "limits.sessions.message_rate",
                Box::new(|l| l.sessions.message_rate = f64::INFINITY),
            ),
            (
                "limits.sessions.message_burst",
                Box::new(|l| l.sessions.message_burst = 0),
            ),
            (
                "limits.sessions.max_sessions",
                Box::new(|l| l.sessions.max_sessions = 0),
            ),
            (
                "limits.sessions.max_message_bytes",
                Box::new(|l| l.sessions.max_message_bytes = 100),
            ),
            (
                "limits.sessions.max_message_bytes",
                Box::new(|l| l.sessions.max_message_bytes = 64 << 20),
            ),
            (
                "limits.jobs.max_replicas",
                Box::new(|l| l.jobs.max_replicas = 0),
            ),
            (
                "limits.api.max_concurrent_requests",
                Box::new(|l| l.api.max_concurrent_requests = 0),
            ),
        ];
        for (field, change) in cases {
            let mut limits = LimitsConfig::default();
            change(&mut limits);
            let err = limits
                .validate(Duration::from_millis(500))
                .expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn heartbeat_limiter_admits_the_rate_and_drops_the_excess() {
        let limits = SessionLimits {
            heartbeat_rate: 10.0,
            heartbeat_burst: 5,
            ..SessionLimits::default()
        };
        let t0 = Time::from_millis(1_000);
        let mut limiter = HeartbeatLimiter::new(&limits, t0);
        // A burst is admitted up to `burst`, then dropped.
        let burst: Vec<bool> = (0..8).map(|_| limiter.admit(t0)).collect();
        assert_eq!(burst, [true, true, true, true, true, false, false, false]);
        // A storm at 100/s for 10 s gets the rate through, not more.
        let mut admitted = 0;
        for i in 1..=1000u64 {
            if limiter.admit(Time::from_millis(1_000 + i * 10)) {
                admitted += 1;
            }
        }
        assert!((99..=101).contains(&admitted), "admitted {admitted}");
        // A normal agent (2/s) is never dropped.
        let mut limiter = HeartbeatLimiter::new(&limits, t0);
        assert!((0..100u64).all(|i| limiter.admit(Time::from_millis(1_000 + i * 500))));
    }

    #[test]
    fn the_message_pacer_passes_a_burst_then_paces_to_the_rate() {
        let limits = SessionLimits {
            message_rate: 20.0,
            message_burst: 4,
            ..SessionLimits::default()
        };
        let t0 = Time::from_millis(1_000);
        let mut pacer = MessagePacer::new(&limits, t0);
        let pauses: Vec<Duration> = (0..6).map(|_| pacer.pause(t0)).collect();
        assert_eq!(&pauses[..4], &[Duration::ZERO; 4]);
        assert_eq!(
            &pauses[4..],
            &[Duration::from_millis(50), Duration::from_millis(100)]
        );
        // A session that waits as told handles messages at the rate: 200 in 10 s.
        let mut now = t0 + Duration::from_millis(100);
        let mut handled = 0;
        while now < t0 + Duration::from_secs(10) {
            now = now + pacer.pause(now);
            handled += 1;
        }
        assert!((198..=202).contains(&handled), "handled {handled}");
        // A clock that stands still makes no pause longer than a second.
        assert!((0..100).all(|_| pacer.pause(now) <= Duration::from_secs(1)));
        // One within the rate is never paused.
        let mut pacer = MessagePacer::new(&limits, t0);
        assert!((0..100u64).all(|i| pacer.pause(Time::from_millis(1_000 + i * 100)).is_zero()));
    }

    #[test]
    fn specs_over_a_limit_name_the_field() {
        let limits = JobLimits {
            max_replicas: 3,
            max_env: 2,
            max_args: 2,
            max_command_bytes: 20,
            ..JobLimits::default()
        };
        limits
            .check(&spec("replicas = 3\nargs = [\"x\"]\nenv = { A = \"1\" }"))
            .expect("within limits");
        let cases = [
            ("replicas = 4", "replicas"),
            ("env = { A = \"1\", B = \"2\", C = \"3\" }", "env"),
            ("args = [\"1\", \"2\", \"3\"]", "args"),
            ("args = [\"0123456789abcdef\"]", "command"),
            (
                "[health]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"0123456789abcdef\"]",
                "health.command",
            ),
        ];
        for (extra, field) in cases {
            let err = limits.check(&spec(extra)).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains("at most"), "{err}");
        }
    }
}
