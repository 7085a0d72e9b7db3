//! Probe rounds: the direct probes of a suspect and the indirect ones asked of its peers,
//! run as tasks of their own; the report goes back to the controller.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;
use warden_core::controller::{Input, ProbeRound};
use warden_core::lifecycle::{ProbeKind, ProbeOutcome, ProbeReport};
use warden_probe::probe;
use warden_proto::v1;

use super::{ControlPlane, Outbox, lock, send};
use crate::clock::ms;

/// A round as the controller asked it, with the helpers' sessions and request ids.
#[derive(Debug)]
pub(super) struct Round {
    pub(super) round: ProbeRound,
    /// Each helper's session, the request id to answer with, and its name (only its session
    /// may answer).
    pub(super) helpers: Vec<(Outbox, u64, Arc<str>)>,
}

impl ControlPlane {
    pub(super) async fn probe(self: Arc<Self>, job: Round) {
        let limit = self.cfg.probe_timeout;
        let target = job.round.target;
        let direct = match target {
            Some(addr) => probe::direct(addr, limit).await,
            None => vec![
                (ProbeKind::Tcp, ProbeOutcome::Skipped),
                (ProbeKind::Http, ProbeOutcome::Skipped),
            ],
        };
        let mut indirect = Vec::new();
        if let Some(addr) = target {
            let mut waits = Vec::new();
            {
                let mut st = lock(&self.state);
                for (tx, id, helper) in &job.helpers {
                    let (wtx, wrx) = oneshot::channel();
                    st.waiters.insert(*id, (helper.clone(), wtx));
                    send(
                        tx,
                        v1::server_message::Msg::Probe(v1::ProbeRequest {
                            request_id: *id,
                            target_addr: addr.to_string(),
                            timeout_ms: ms(limit),
                        }),
                    );
                    waits.push((*id, wrx));
                }
            }
            for (id, w) in waits {
                let outcome = tokio::time::timeout(limit * 2, w)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(ProbeOutcome::TimedOut);
                lock(&self.state).waiters.remove(&id);
                indirect.push(outcome);
            }
        }
        for (kind, outcome) in &direct {
            let kind = match kind {
                ProbeKind::Tcp => "tcp",
                ProbeKind::Http => "http",
                ProbeKind::Icmp => "icmp",
            };
            self.metrics.probe(kind, *outcome);
        }
        for outcome in &indirect {
            self.metrics.probe("indirect", *outcome);
        }
        let report = ProbeReport {
            round: job.round.round,
            direct,
            indirect,
        };
        debug!(agent = %job.round.agent, ?report, "probe round done");
        self.input(Input::Probes {
            agent: job.round.agent,
            report,
        });
    }
}
