//! Warden's wire contracts: the agent ↔ server session (`proto/warden/v1/session.proto`),
//! compiled with protox at build time. Wire types are kept apart from `warden-core`'s domain
//! types on purpose; conversions live at the edges (server and agent).
#![forbid(unsafe_code)]

pub mod pem;

/// The gRPC metadata key that carries an agent's join token on the session request (see
/// `docs/security.md`). Only the server's hash of the token is ever stored.
pub const JOIN_TOKEN_METADATA: &str = "x-warden-join-token";

/// Version 1 of the session protocol.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("warden.v1");
}
