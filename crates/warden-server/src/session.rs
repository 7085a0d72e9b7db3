//! The gRPC session service: one long-lived bidirectional stream per agent.
//!
//! The handler is thin: it decodes each agent message and hands it to the
//! [`ControlPlane`](crate::control::ControlPlane); everything the control plane wants to tell
//! the agent goes out through the session's channel. When the stream ends — cleanly, by a
//! reset, or by an HTTP/2 keepalive failure — the control plane learns that the session was
//! lost. A *silent* partition produces no stream error at all; the liveness detector catches
//! it from the missing heartbeats.
//!
//! Before admission every session passes the [`Gate`]: the agent identity its client
//! certificate proves must be the name in its Hello, and its join token must be valid (when
//! those are configured). Everything the session reports afterwards is attributed to the
//! agent it was admitted as, never to a name it sends later.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};
use warden_proto::v1::agent_message::Msg;
use warden_proto::v1::agent_session_server::AgentSession;
use warden_proto::v1::{AgentMessage, ServerMessage};

use crate::auth::{Gate, JOIN_TOKEN_METADATA};
use crate::control::ControlPlane;
use crate::limits::{HeartbeatLimiter, MessagePacer, SessionLimits};
use crate::outbox;

/// How long an agent has to say Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The `AgentSession` service.
pub struct SessionService {
    cp: Arc<ControlPlane>,
    cancel: CancellationToken,
    gate: Arc<Gate>,
    limits: SessionLimits,
    /// One permit per open stream ([`SessionLimits::max_sessions`]).
    permits: Arc<Semaphore>,
}

impl SessionService {
    /// A service feeding `cp`, whose streams end when `cancel` fires; sessions are admitted
    /// without any check (see [`SessionService::with_gate`]).
    pub fn new(cp: Arc<ControlPlane>, cancel: CancellationToken) -> Self {
        Self::with_gate(cp, cancel, Gate::default())
    }

    /// A service that admits only the sessions `gate` lets through.
    pub fn with_gate(cp: Arc<ControlPlane>, cancel: CancellationToken, gate: Gate) -> Self {
        let limits = SessionLimits::default();
        SessionService {
            cp,
            cancel,
            gate: Arc::new(gate),
            permits: Arc::new(Semaphore::new(limits.max_sessions)),
            limits,
        }
    }

    /// Like [`SessionService::new`], with the given limits.
    pub fn with_limits(
        cp: Arc<ControlPlane>,
        cancel: CancellationToken,
        limits: SessionLimits,
    ) -> Self {
        Self::new(cp, cancel).limited(limits)
    }

    /// The same service under `limits`. Each stream holds a permit from the moment it opens
    /// (before its Hello) until its handler ends, an outbound queue of `outbound_queue`
    /// messages, and a heartbeat token bucket: heartbeats beyond it are dropped before they
    /// reach the control plane's lock, so one agent's storm costs the others nothing but the
    /// decoding.
    #[must_use]
    pub fn limited(mut self, limits: SessionLimits) -> Self {
        self.permits = Arc::new(Semaphore::new(limits.max_sessions));
        self.limits = limits;
        self
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentSession for SessionService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "the server holds its maximum of {} sessions (limits.sessions.max_sessions)",
                self.limits.max_sessions
            )));
        };
        let remote = request.remote_addr();
        let peer = self
            .gate
            .peer(request.peer_certs().as_deref().map(Vec::as_slice))
            .inspect_err(|e| warn!(?remote, reason = %e, "agent session refused"))?;
        // Never logged; the metadata value is only read here.
        let token = request
            .metadata()
            .get(JOIN_TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if self.gate.wants_token() {
            let gate = self.gate.clone();
            let presented = token.clone();
            tokio::task::spawn_blocking(move || gate.precheck(presented.as_deref()))
                .await
                .map_err(|e| Status::internal(format!("join token check: {e}")))?
                .inspect_err(|e| warn!(?remote, reason = %e, "agent session refused"))?;
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 5s"))??;
        let hello = match first {
            Some(AgentMessage {
                msg: Some(Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        // No revision of the session protocol in common: refused before anything else, with
        // both ranges named (an old agent, declaring nothing, speaks revision 1).
        let who = format!(
            "agent {:?} (version {:?})",
            hello.name.trim(),
            hello.version
        );
        warden_proto::negotiate(
            warden_proto::declared(hello.protocol_min, hello.protocol_max),
            &who,
        )
        .map_err(|e| {
            warn!(?remote, reason = %e, "agent session refused");
            Status::unimplemented(e)
        })?;
        let serial = peer.as_ref().and_then(|p| p.serial.clone());
        let (tx, rx) = outbox::channel(self.limits.outbound_queue);
        // The gate may record a one-time token's binding and admission may write the store
        // (a new generation is persisted): off the async workers.
        let admitting = self.cp.clone();
        let gate = self.gate.clone();
        let who = tokio::task::spawn_blocking(move || {
            gate.check(peer.as_ref(), token.as_deref(), &hello.name)
                .inspect_err(|e| {
                    warn!(?remote, agent = ?hello.name.trim(), reason = %e, "agent session refused");
                })?;
            admitting.admit(&hello, tx).map_err(Status::from)
        })
        .await
        .map_err(|e| Status::internal(format!("admit: {e}")))??;
        let cp = self.cp.clone();
        let cancel = self.cancel.child_token();
        // A session of a certificate revoked while it lasts is closed by the deny list.
        let watched = match (self.gate.deny_list(), serial) {
            (Some(deny), Some(serial)) => Some(deny.watch(serial, cancel.clone())),
            _ => None,
        };
        let mut heartbeats = HeartbeatLimiter::new(&self.limits, cp.clock().now());
        let mut others = MessagePacer::new(&self.limits, cp.clock().now());
        tokio::spawn(async move {
            let _permit = permit;
            let _watched = watched;
            // Per session, so the gap costs no shared state.
            let mut last_heartbeat: Option<std::time::Instant> = None;
            // One wait for the end, registered once for the whole session (a new one per
            // message would lock the token's node and join its waiters every heartbeat).
            let ended = cancel.cancelled();
            tokio::pin!(ended);
            loop {
                let msg = tokio::select! {
                    () = &mut ended => break,
                    m = inbound.message() => m,
                };
                // Every message but a heartbeat is paced, never dropped: the session pauses
                // before handling one beyond its rate (and reads nothing meanwhile).
                if let Ok(Some(AgentMessage { msg })) = &msg
                    && !matches!(msg, Some(Msg::Heartbeat(_)))
                {
                    let pause = others.pause(cp.clock().now());
                    if !pause.is_zero() {
                        cp.recorder().message_paced();
                        tokio::select! {
                            () = &mut ended => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
                match msg {
                    Ok(Some(AgentMessage { msg: Some(m) })) => match m {
                        Msg::Heartbeat(hb) if heartbeats.admit(cp.clock().now()) => {
                            let now = std::time::Instant::now();
                            if let Some(last) = last_heartbeat.replace(now) {
                                cp.recorder().heartbeat_gap(now - last);
                            }
                            cp.heartbeat(&who, &hb);
                        }
                        Msg::Heartbeat(_) => cp.recorder().heartbeat_dropped(),
                        Msg::TaskReport(r) => cp.task_report(&who, &r),
                        Msg::ProbeResult(r) => cp.probe_result(&who, &r),
                        Msg::Leave(_) => cp.leave(&who),
                        Msg::Restarting(r) => cp.restarting(&who, &r),
                        Msg::Hello(_) => {
                            warn!(agent = %who.id, "second Hello on one session ignored");
                        }
                    },
                    Ok(Some(AgentMessage { msg: None })) => {}
                    Ok(None) => {
                        debug!(agent = %who.id, "session closed by the agent");
                        break;
                    }
                    Err(status) => {
                        debug!(agent = %who.id, %status, "session broke");
                        break;
                    }
                }
            }
            cp.session_closed(&who);
        });
        Ok(Response::new(Box::pin(rx.map(|o| Ok(o.into_message())))))
    }
}
