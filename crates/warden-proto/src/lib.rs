//! Warden's wire contracts: the agent ↔ server session (`proto/warden/v1/session.proto`),
//! compiled with protox at build time. Wire types are kept apart from `warden-core`'s domain
//! types on purpose; every conversion between the two, both directions, is in [`convert`].
#![forbid(unsafe_code)]

pub mod convert;
pub mod pem;

/// The gRPC metadata key that carries an agent's join token on the session request (see
/// `docs/security.md`). Only the server's hash of the token is ever stored.
pub const JOIN_TOKEN_METADATA: &str = "x-warden-join-token";

/// Version 1 of the session protocol.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("warden.v1");
}

/// Largest session message an agent accepts from the server, and sends, bytes (4 MiB, tonic's
/// default decoding limit, made explicit). The server has its own, configurable limit
/// (`[limits.sessions] max_message_bytes`, 1 MiB by default) in both directions.
pub const AGENT_MAX_MESSAGE_BYTES: usize = 4 << 20;
