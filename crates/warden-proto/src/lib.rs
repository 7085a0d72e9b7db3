//! Warden's wire contracts: the agent ↔ server session (`proto/warden/v1/session.proto`),
//! compiled with protox at build time. Wire types are kept apart from `warden-core`'s domain
//! types on purpose; every conversion between the two, both directions, is in [`convert`].
#![forbid(unsafe_code)]

pub mod codec;
pub mod convert;
pub mod pem;

/// The gRPC metadata key that carries an agent's join token on the session request (see
/// `docs/security.md`). Only the server's hash of the token is ever stored.
pub const JOIN_TOKEN_METADATA: &str = "x-warden-join-token";

/// The oldest revision of the session protocol this build speaks.
pub const PROTOCOL_OLDEST: u32 = 1;
/// The newest revision of the session protocol this build speaks. Revisions: 1, the first
/// (no negotiation); 2, protocol ranges in Hello and Welcome, configuration files in Assign;
/// 3, job versions in Assign and copy reports, and ReloadTask (a config change applied in
/// place with a signal); 4, data epochs in Assign (restore points of single-replica task
/// state).
pub const PROTOCOL_NEWEST: u32 = 4;

/// The range of revisions a peer declared: `(0, 0)` — a peer from before the negotiation —
/// speaks revision 1 only.
pub fn declared(min: u32, max: u32) -> (u32, u32) {
    if max == 0 { (1, 1) } else { (min.max(1), max) }
}

/// The newest revision this build and a peer declaring `theirs` both speak, or why there is
/// none, naming both ranges (`who`: the peer, for the message).
pub fn negotiate(theirs: (u32, u32), who: &str) -> Result<u32, String> {
    let (lo, hi) = (theirs.0.max(PROTOCOL_OLDEST), theirs.1.min(PROTOCOL_NEWEST));
    if theirs.0 > theirs.1 || lo > hi {
        let advice = if theirs.0 > PROTOCOL_NEWEST {
            "it is newer than this build: upgrade this side"
        } else {
            "it is older than this build supports: upgrade it"
        };
        return Err(format!(
            "{who} speaks session protocol {}-{}, this build {PROTOCOL_OLDEST}-{PROTOCOL_NEWEST}: \
             no revision in common ({advice}; servers are upgraded before agents)",
            theirs.0, theirs.1
        ));
    }
    Ok(hi)
}

/// Version 1 of the session protocol.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("warden.v1");
}

/// Largest session message an agent accepts from the server, and sends, bytes (4 MiB, tonic's
/// default decoding limit, made explicit). The server has its own, configurable limit
/// (`[limits.sessions] max_message_bytes`, 1 MiB by default) in both directions.
pub const AGENT_MAX_MESSAGE_BYTES: usize = 4 << 20;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn both_sides_take_the_newest_revision_in_common() {
        assert_eq!(
            negotiate(declared(0, 0), "old"),
            Ok(1),
            "a peer from before negotiation"
        );
        assert_eq!(negotiate(declared(1, 4), "same"), Ok(PROTOCOL_NEWEST));
        assert_eq!(negotiate(declared(1, 3), "the release before"), Ok(3));
        assert_eq!(negotiate(declared(1, 2), "two releases before"), Ok(2));
        assert_eq!(
            negotiate(declared(1, 9), "newer, compatible"),
            Ok(PROTOCOL_NEWEST)
        );
        let e = negotiate(declared(6, 7), "agent a (version 9.0)").unwrap_err();
        assert!(
            e.contains("agent a (version 9.0) speaks session protocol 6-7"),
            "{e}"
        );
        assert!(
            e.contains(&format!("this build {PROTOCOL_OLDEST}-{PROTOCOL_NEWEST}")),
            "{e}"
        );
        assert!(e.contains("upgrade this side"), "{e}");
        assert!(negotiate(declared(3, 2), "confused").is_err());
    }

    /// The bytes of a Hello and a Welcome as the release before the negotiation wrote them
    /// (its fields only) decode to revision 1, which this build speaks.
    #[test]
    fn the_previous_releases_wire_format_is_understood() {
        // A Hello of the previous release: name, generation, probe address, capacity,
        // version, reattach window; tags 1, 2, 3, 4, 6, 8 only.
        let old = v1::Hello {
            name: "a".into(),
            generation: 7,
            probe_addr: "127.0.0.1:9".into(),
            capacity: Some(v1::Resources {
                cpu_millis: 1000,
                memory_mb: 512,
                memory_high_mb: 0,
            }),
            running: vec![],
            version: "0.1.0".into(),
            state_addr: String::new(),
            reattach_window_ms: 30_000,
            protocol_min: 0,
            protocol_max: 0,
        };
        let bytes = old.encode_to_vec();
        assert!(
            !bytes.iter().any(|&b| b == (9 << 3) || b == (10 << 3)),
            "the old format has no tags 9 and 10"
        );
        let hello = v1::Hello::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            negotiate(declared(hello.protocol_min, hello.protocol_max), "agent a"),
            Ok(1)
        );
        let welcome = v1::Welcome {
            generation: 7,
            lease_ttl_ms: 2000,
            heartbeat_interval_ms: 500,
            session_deadline_ms: 2000,
            accepts_running_as_of: true,
            protocol_min: 0,
            protocol_max: 0,
            anomaly_settings: String::new(),
        };
        let w = v1::Welcome::decode(welcome.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            negotiate(declared(w.protocol_min, w.protocol_max), "server"),
            Ok(1)
        );
    }
}
