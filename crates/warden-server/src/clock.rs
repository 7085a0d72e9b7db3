//! The server's clock, and wall-clock helpers.

/// The server's clock: monotonic, expressed as nanoseconds since the Unix epoch at the moment
/// the server started plus the monotonic time elapsed since. Readings are monotonic within
/// one server process and close to wall-clock time, so persisted records stay readable.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
    origin_unix_ns: u64,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            origin: tokio::time::Instant::now(),
            origin_unix_ns: u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Now.
    pub fn now(&self) -> warden_core::Time {
        let elapsed = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        warden_core::Time::from_nanos(self.origin_unix_ns.saturating_add(elapsed))
    }

    /// A reading as (approximate) Unix milliseconds.
    pub fn unix_ms(t: warden_core::Time) -> u64 {
        t.as_nanos() / 1_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock now, ms since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A duration in whole milliseconds.
pub(crate) fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
