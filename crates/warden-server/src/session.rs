//! The gRPC session service: one long-lived bidirectional stream per agent.
//!
//! The handler is thin: it decodes each agent message and hands it to the
//! [`ControlPlane`](crate::control::ControlPlane); everything the control plane wants to tell
//! the agent goes out through the session's channel. When the stream ends — cleanly, by a
//! reset, or by an HTTP/2 keepalive failure — the control plane learns that the session was
//! lost. A *silent* partition produces no stream error at all; the liveness detector catches
//! it from the missing heartbeats.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};
use warden_proto::v1::agent_message::Msg;
use warden_proto::v1::agent_session_server::AgentSession;
use warden_proto::v1::{AgentMessage, ServerMessage};

use crate::control::ControlPlane;
use crate::limits::{HeartbeatLimiter, SessionLimits};

/// How long an agent has to say Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The `AgentSession` service.
pub struct SessionService {
    cp: Arc<ControlPlane>,
    cancel: CancellationToken,
    limits: SessionLimits,
    /// One permit per open stream ([`SessionLimits::max_sessions`]).
    permits: Arc<Semaphore>,
}

impl SessionService {
    /// A service feeding `cp`, whose streams end when `cancel` fires, with the default limits.
    pub fn new(cp: Arc<ControlPlane>, cancel: CancellationToken) -> Self {
        Self::with_limits(cp, cancel, SessionLimits::default())
    }

    /// Like [`SessionService::new`], with the given limits. Each stream holds a permit from
    /// the moment it opens (before its Hello) until its handler ends, an outbound queue of
    /// `outbound_queue` messages, and a heartbeat token bucket: heartbeats beyond it are
    /// dropped before they reach the control plane's lock, so one agent's storm costs the
    /// others nothing but the decoding.
    pub fn with_limits(
        cp: Arc<ControlPlane>,
        cancel: CancellationToken,
        limits: SessionLimits,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_sessions));
        SessionService {
            cp,
            cancel,
            limits,
            permits,
        }
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
        let (tx, rx) = mpsc::channel(self.limits.outbound_queue);
        // Admission may write the store (a new generation is persisted): off the async workers.
        let admitting = self.cp.clone();
        let who = tokio::task::spawn_blocking(move || admitting.admit(&hello, tx))
            .await
            .map_err(|e| Status::internal(format!("admit: {e}")))?
            .map_err(Status::from)?;
        let cp = self.cp.clone();
        let cancel = self.cancel.child_token();
        let mut heartbeats = HeartbeatLimiter::new(&self.limits, cp.clock().now());
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let msg = tokio::select! {
                    () = cancel.cancelled() => break,
                    m = inbound.message() => m,
                };
                match msg {
                    Ok(Some(AgentMessage { msg: Some(m) })) => match m {
                        Msg::Heartbeat(hb) if heartbeats.admit(cp.clock().now()) => {
                            cp.heartbeat(&who, &hb);
                        }
                        Msg::Heartbeat(_) => cp.recorder().heartbeat_dropped(),
                        Msg::TaskReport(r) => cp.task_report(&who, &r),
                        Msg::ProbeResult(r) => cp.probe_result(&r),
                        Msg::Leave(_) => cp.leave(&who),
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
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
