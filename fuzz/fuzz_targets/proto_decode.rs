//! Session messages off the wire: prost decoding of `AgentMessage` and `ServerMessage`, and
//! the server's handling of what an agent may send, on a real control plane over an
//! in-memory store.
//!
//! Input: a sequence of length-delimited `AgentMessage`s (as on a session, the first should
//! be a Hello); the same bytes are also decoded whole as one `AgentMessage` and one
//! `ServerMessage`.
//!
//! Invariants: nothing panics; whatever decodes re-encodes to bytes that decode to the same
//! message; the control plane survives any sequence (admit, heartbeats, task reports, probe
//! results, leave) and still answers its views.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use warden_core::Signals;
use warden_core::controller::ControllerConfig;
use warden_proto::v1::{self, agent_message::Msg};
use warden_server::control::ControlPlane;
use warden_server::view::ControlApi;
use warden_store::MemStore;

/// Re-encoding is stable: the bytes of a decoded message decode to a message with the same
/// bytes. (Compared as bytes, not with `==`: a NaN signal is never equal to itself.)
fn round_trips<M: Message + Default + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("re-encoded bytes decode");
    assert_eq!(back.encode_to_vec(), bytes, "{m:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = v1::AgentMessage::decode(data) {
        round_trips(&m);
    }
    if let Ok(m) = v1::ServerMessage::decode(data) {
        round_trips(&m);
    }

    let cp = ControlPlane::new(Arc::new(MemStore::new()), ControllerConfig::default())
        .expect("control plane");
    let (tx, mut rx) = warden_server::outbox::channel(1024);
    let mut session = None;
    let mut buf = data;
    let mut n = 0;
    while !buf.is_empty() && n < 64 {
        n += 1;
        let Ok(m) = v1::AgentMessage::decode_length_delimited(&mut buf) else {
            break;
        };
        round_trips(&m);
        let Some(msg) = m.msg else { continue };
        match (msg, &session) {
            (Msg::Hello(h), None) => session = cp.admit(&h, tx.clone()).ok(),
            (Msg::Hello(_), Some(_)) => {}
            (Msg::Heartbeat(hb), Some(who)) => {
                if let Some(s) = &hb.signals {
                    let _ = Signals::from(s);
                }
                cp.heartbeat(who, &hb);
            }
            (Msg::TaskReport(r), Some(who)) => cp.task_report(who, &r),
            (Msg::ProbeResult(r), Some(who)) => cp.probe_result(who, &r),
            (Msg::Leave(_), Some(who)) => cp.leave(who),
            (Msg::Restarting(r), Some(who)) => cp.restarting(who, &r),
            (_, None) => {}
        }
        while let Some(out) = rx.try_recv() {
            round_trips(&out.into_message());
        }
    }
    if let Some(who) = &session {
        cp.session_closed(who);
    }
    let _ = cp.agents();
    let _ = cp.tasks();
    let _ = cp.health();
});
