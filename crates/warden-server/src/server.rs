//! `warden server`: wires the store, the control plane, the gRPC session service and the REST
//! API together. The server never binds its own sockets: it is handed listeners (tests pass
//! `127.0.0.1:0`) and a cancellation token, and shuts down in order when it fires.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::info;
use warden_proto::v1::agent_session_server::AgentSessionServer;
use warden_store::Store;

use crate::auth::{Gate, SessionSecurity};
use crate::control::{ControlPlane, StartError};
use crate::leader::Leadership;
use crate::session::SessionService;
use crate::sla::SlaConfig;
use crate::view::ControlApi;
use warden_core::controller::ControllerConfig;

/// Errors running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The gRPC listener failed.
    #[error("serve gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The TLS settings are unusable (e.g. the key does not match the certificate).
    #[error("TLS settings (--tls-cert, --tls-key, --tls-client-ca): {0}")]
    Tls(String),
    /// The HTTP listener failed.
    #[error("serve HTTP: {0}")]
    Http(#[from] std::io::Error),
}

/// Accepted connections with Nagle's algorithm off: acks are small and latency-critical, and
/// tonic's own `tcp_nodelay` only applies to sockets it accepts itself.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    })
}

/// The load-balancer adapters a server runs.
#[derive(Clone, Debug, Default)]
pub struct Adapters {
    /// HAProxy backends (`[[haproxy]]`).
    pub haproxy: Vec<crate::haproxy::HaproxyConfig>,
    /// Rendered files (`[[file_adapter]]`).
    pub files: Vec<crate::file_adapter::FileAdapterConfig>,
}

/// The server's protections besides session security: its limits and the REST API's token
/// authentication.
#[derive(Clone, Debug, Default)]
pub struct Protection {
    /// Every limit (`[limits]`).
    pub limits: crate::limits::LimitsConfig,
    /// REST API tokens; `None` leaves the API open (for development only).
    pub api_auth: Option<Arc<crate::api_auth::ApiAuth>>,
}

/// Run a server on `store` until `cancel` fires, with the default SLA settings.
pub async fn run(
    store: Arc<dyn Store>,
    cfg: ControllerConfig,
    grpc: TcpListener,
    http: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    run_with(
        store,
        cfg,
        SlaConfig::default(),
        Adapters::default(),
        SessionSecurity::default(),
        Protection::default(),
        grpc,
        http,
        cancel,
    )
    .await
}

/// Run a server on `store` until `cancel` fires; `sla` sets the defaults of the SLA report
/// (`GET /v1/sla`, the dashboard's SLA page); every `adapters.haproxy` entry runs an HAProxy
/// adapter ([`crate::haproxy`]) and every `adapters.files` entry a file adapter
/// ([`crate::file_adapter`]) until `cancel` fires. `security` turns on mutual TLS and join
/// tokens for agent sessions ([`crate::auth`]; the default is neither); `protection` sets the
/// limits of sessions and of the REST API, and the API's tokens.
#[allow(clippy::too_many_arguments)]
pub async fn run_with(
    store: Arc<dyn Store>,
    cfg: ControllerConfig,
    sla: SlaConfig,
    adapters: Adapters,
    security: SessionSecurity,
    protection: Protection,
    grpc: TcpListener,
    http: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    let name = http
        .local_addr()
        .map_or_else(|_| "local".to_string(), |a| a.to_string());
    run_replica(
        store,
        cfg,
        sla,
        adapters,
        Leadership::single(name),
        security,
        protection,
        grpc,
        http,
        cancel,
    )
    .await
}

/// Like [`run_with`], as one replica of a replicated control plane whose role `leadership`
/// tells (see [`crate::leader`]).
#[allow(clippy::too_many_arguments)]
pub async fn run_replica(
    store: Arc<dyn Store>,
    cfg: ControllerConfig,
    sla: SlaConfig,
    adapters: Adapters,
    leadership: Leadership,
    security: SessionSecurity,
    protection: Protection,
    grpc: TcpListener,
    http: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    let Protection { limits, api_auth } = protection;
    limits
        .validate(cfg.lifecycle.heartbeat_interval)
        .map_err(StartError::from)?;
    let cp = ControlPlane::with_leadership(store, cfg, leadership)?;
    let (gate, tls) = Gate::new(security).map_err(ServerError::Tls)?;
    if let Some(deny) = gate.deny_list() {
        tokio::spawn(deny.run_watcher(cancel.child_token()));
    }
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().run_watcher(cancel.child_token()));
    }
    let builder = tonic::transport::Server::builder();
    info!(grpc = ?grpc.local_addr().ok(), http = ?http.local_addr().ok(), "warden server listening");
    let control = tokio::spawn(cp.clone().run(cancel.child_token()));
    let max_message = limits.sessions.max_message_bytes;
    let service = AgentSessionServer::new(
        SessionService::with_gate(cp.clone(), cancel.child_token(), gate)
            .limited(limits.sessions.clone()),
    )
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let grpc_cancel = cancel.clone();
    let router = builder
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .tcp_nodelay(true)
        .add_service(service);
    let grpc_task = async move {
        match tls {
            // The listener does the handshakes, with certificates reloaded on change.
            Some(tls) => {
                let incoming = crate::tls_reload::incoming(grpc, tls, grpc_cancel.child_token());
                router
                    .serve_with_incoming_shutdown(incoming, grpc_cancel.cancelled_owned())
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(nodelay(grpc), grpc_cancel.cancelled_owned())
                    .await
            }
        }
    };
    let api: Arc<dyn ControlApi> = cp.clone();
    let Adapters { haproxy, files } = adapters;
    let mut adapters: Vec<_> = haproxy
        .into_iter()
        .map(|h| tokio::spawn(crate::haproxy::run(h, api.clone(), cancel.child_token())))
        .collect();
    adapters.extend(files.into_iter().map(|f| {
        tokio::spawn(crate::file_adapter::run(
            f,
            api.clone(),
            cancel.child_token(),
        ))
    }));
    let http_cancel = cancel.clone();
    let http_cfg = crate::http::HttpConfig {
        limits: limits.api,
        jobs: limits.jobs,
        sla,
        auth: api_auth,
    };
    let http_task =
        crate::http::serve_with_config(http, api, http_cfg, http_cancel.cancelled_owned());
    let (g, h) = tokio::join!(grpc_task, http_task);
    cancel.cancel();
    let _ = control.await;
    for a in adapters {
        let _ = a.await;
    }
    g?;
    h?;
    info!("warden server stopped");
    Ok(())
}
