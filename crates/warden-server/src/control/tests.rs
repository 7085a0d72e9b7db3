#![allow(clippy::unwrap_used)]
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_core::controller::ControllerConfig;
use warden_core::{JobName, JobSpec};
use warden_proto::v1;
use warden_store::Store;

use super::*;
use crate::view::{ApiErrorKind, ControlApi, SubmitOutcome};

fn hello(name: &str, generation: u64) -> v1::Hello {
    v1::Hello {
        name: name.into(),
        generation,
        probe_addr: "127.0.0.1:9".into(),
        capacity: Some(v1::Resources {
            cpu_millis: 1000,
            memory_mb: 1024,
            memory_high_mb: 0,
        }),
        running: vec![],
        version: "test".into(),
        state_addr: String::new(),
        reattach_window_ms: 0,
        protocol_max: 0,
        protocol_min: 0,
    }
}

#[test]
fn a_second_generation_is_refused_while_the_first_session_is_open() {
    let cp = ControlPlane::new(
        Arc::new(warden_store::MemStore::new()),
        ControllerConfig::default(),
    )
    .unwrap();
    let (tx, _rx) = crate::outbox::channel(16);
    let first = cp.admit(&hello("a", 0), tx.clone()).unwrap();
    assert_eq!(first.id.generation, 1);
    // Same name, new process (or a duplicate name): refused, and no generation is burnt.
    let busy = cp.admit(&hello("a", 0), tx.clone()).unwrap_err();
    assert!(matches!(busy, AdmitError::Busy(_)), "{busy:?}");
    assert_eq!(tonic::Status::from(busy).code(), tonic::Code::AlreadyExists);
    // The same generation reconnecting is fine (a dropped session).
    let again = cp.admit(&hello("a", 1), tx.clone()).unwrap();
    assert_eq!(again.id, first.id);
    // Once the session is gone, a restarted agent gets the next generation.
    cp.session_closed(&again);
    let restarted = cp.admit(&hello("a", 0), tx).unwrap();
    assert_eq!(restarted.id.generation, 2);
    // Garbage names are refused as invalid, not as a stale generation.
    let (tx, _rx) = crate::outbox::channel(16);
    let bad = cp.admit(&hello("a/b", 0), tx).unwrap_err();
    assert_eq!(
        tonic::Status::from(bad).code(),
        tonic::Code::InvalidArgument
    );
}

fn acks(rx: &mut crate::outbox::Inbox) -> Vec<u64> {
    let mut ttls = Vec::new();
    while let Some(m) = rx.try_recv() {
        if let Some(v1::server_message::Msg::Ack(a)) = m.into_message().msg {
            ttls.push(a.lease_ttl_ms);
        }
    }
    ttls
}

/// Two replicas on one store: the standby keeps warm state but renews no lease, hands out
/// no generation and refuses changes; once it is elected it takes over from the store.
#[tokio::test]
async fn a_standby_renews_nothing_and_gives_no_orders_until_it_leads() {
    use crate::leader::{LeaderInfo, Leadership, Standing};
    let store: Arc<dyn Store> = Arc::new(warden_store::MemStore::new());
    let far = std::time::Instant::now() + Duration::from_secs(3600);
    let (a_role, a_rx) = watch::channel(Standing::Leader {
        term: 5,
        since_unix_ms: 1,
        valid_until: Some(far),
    });
    let leader_b = LeaderInfo {
        name: "a:7401".into(),
        term: 5,
        since_unix_ms: 1,
    };
    let (b_role, b_rx) = watch::channel(Standing::Follower {
        leader: Some(leader_b),
    });
    let a = ControlPlane::with_leadership(
        store.clone(),
        ControllerConfig::default(),
        Leadership::from_watch("a:7401", a_rx),
    )
    .unwrap();
    let b = ControlPlane::with_leadership(
        store.clone(),
        ControllerConfig::default(),
        Leadership::from_watch("b:7401", b_rx),
    )
    .unwrap();

    // A new generation only from the leader.
    let (btx, mut brx) = crate::outbox::channel(64);
    let refused = b.admit(&hello("x", 0), btx.clone()).unwrap_err();
    assert!(
        matches!(refused, AdmitError::NotLeader(ref m) if m.contains("a:7401")),
        "{refused:?}"
    );
    let (atx, mut arx) = crate::outbox::channel(64);
    let on_a = a.admit(&hello("x", 0), atx).unwrap();
    let on_b = b.admit(&hello("x", on_a.id.generation), btx).unwrap();
    assert_eq!(on_a.id, on_b.id);

    // Both judge the agent; only the leader's acks carry a lease.
    for seq in 1..=3 {
        a.heartbeat(&on_a, &heartbeat(seq));
        b.heartbeat(&on_b, &heartbeat(seq));
    }
    let (from_a, from_b) = (acks(&mut arx), acks(&mut brx));
    assert!(
        !from_a.is_empty() && from_a.iter().all(|t| *t > 0),
        "{from_a:?}"
    );
    assert!(
        !from_b.is_empty() && from_b.iter().all(|t| *t == 0),
        "{from_b:?}"
    );
    assert_eq!(
        b.agents()[0].state,
        "healthy",
        "the standby's detector is warm"
    );

    // Changes go to the leader.
    let spec: JobSpec =
        toml::from_str("name = \"cron\"\nkind = \"singleton\"\ncommand = \"/bin/true\"").unwrap();
    let err = b.submit_job(spec.clone()).unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::NotLeader);
    assert!(err.message.contains("a:7401"), "{err}");
    // The leader stores it through its ordered writer, which runs with its loop.
    let cancel_a = CancellationToken::new();
    let running_a = tokio::spawn(a.clone().run(cancel_a.clone()));
    let a2 = a.clone();
    let submitted = tokio::task::spawn_blocking(move || a2.submit_job(spec))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(submitted, (SubmitOutcome::Created, Some(1)));
    cancel_a.cancel();
    running_a.await.unwrap();
    assert_eq!(b.leader().role, "standby");
    assert_eq!(b.leader().leader.as_deref(), Some("a:7401"));

    // The leader's deadline passes: it stops renewing at once, with no new message.
    a_role
        .send(Standing::Leader {
            term: 5,
            since_unix_ms: 1,
            valid_until: Some(std::time::Instant::now()),
        })
        .unwrap();
    a.heartbeat(&on_a, &heartbeat(4));
    assert_eq!(
        acks(&mut arx),
        vec![0],
        "a leader past its deadline renews nothing"
    );
    assert!(
        a.submit_job(
            toml::from_str("name = \"x\"\nkind = \"singleton\"\ncommand = \"/bin/true\"").unwrap()
        )
        .is_err()
    );

    // B is elected: it takes over from the store (the job A accepted) and renews leases.
    let cancel = CancellationToken::new();
    let running = tokio::spawn(b.clone().run(cancel.clone()));
    let elected = b.clock.now();
    b_role
        .send(Standing::Leader {
            term: 6,
            since_unix_ms: 2,
            valid_until: Some(far),
        })
        .unwrap();
    // Awaited as a condition (bounded): the take-over reads the store on the run loop.
    let mut took_over = false;
    for _ in 0..1000 {
        if b.leader().role == "leader" {
            took_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(took_over, "B never took over: {:?}", b.leader());
    {
        let st = lock(&b.state);
        assert!(st.ctrl.desired().contains_key(&JobName::new("cron")));
        let renewed = st.ctrl.observed().agents[&on_b.id].last_renewal;
        assert!(
            renewed.is_some_and(|t| t >= elected),
            "the old leader's renewals are respected"
        );
    }
    b.heartbeat(&on_b, &heartbeat(5));
    let from_b = acks(&mut brx);
    assert!(
        !from_b.is_empty() && from_b.iter().all(|t| *t > 0),
        "{from_b:?}"
    );
    cancel.cancel();
    running.await.unwrap();
}

fn heartbeat(seq: u64) -> v1::Heartbeat {
    v1::Heartbeat {
        seq,
        signals: None,
        running: vec![],
        running_as_of: 0,
        ..Default::default()
    }
}

/// The lines of `text` that start with `prefix`.
fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn the_exposition_has_every_family_and_no_series_of_ended_generations() {
    let cp = ControlPlane::new(
        Arc::new(warden_store::MemStore::new()),
        ControllerConfig::default(),
    )
    .unwrap();
    let (tx, _rx) = crate::outbox::channel(64);
    let a = cp.admit(&hello("a", 0), tx.clone()).unwrap();
    // A name that needs escaping in a label value.
    let odd = cp.admit(&hello("q\"x\\y", 0), tx.clone()).unwrap();
    for seq in 1..=3 {
        cp.heartbeat(&a, &heartbeat(seq));
    }
    cp.heartbeat(&odd, &heartbeat(1));
    let text = cp.metrics();

    for family in [
        "warden_heartbeats_received_total",
        "warden_lifecycle_transitions_total",
        "warden_recoveries_started_total",
        "warden_recoveries_total",
        "warden_recovery_rto_seconds",
        "warden_detection_seconds",
        "warden_reconcile_duration_seconds",
        "warden_store_operation_seconds",
        "warden_agents",
        "warden_agent_health_score",
        "warden_agent_phi",
        "warden_sessions",
        "warden_brake_engaged",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family} in\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no help for {family} in\n{text}"
        );
    }
    assert_eq!(
        lines(&text, "warden_heartbeats_received_total "),
        ["warden_heartbeats_received_total 4"]
    );
    assert_eq!(
        lines(
            &text,
            "warden_lifecycle_transitions_total{from=\"joining\",to=\"healthy\"}"
        ),
        ["warden_lifecycle_transitions_total{from=\"joining\",to=\"healthy\"} 2"]
    );
    assert_eq!(
        lines(&text, "warden_agents{state=\"healthy\"}"),
        ["warden_agents{state=\"healthy\"} 2"]
    );
    assert_eq!(
        lines(&text, "warden_agents{state=\"left\"}"),
        ["warden_agents{state=\"left\"} 0"]
    );
    assert_eq!(lines(&text, "warden_sessions "), ["warden_sessions 2"]);
    assert_eq!(
        lines(&text, "warden_brake_engaged "),
        ["warden_brake_engaged 0"]
    );
    assert_eq!(
        lines(&text, "warden_recoveries_total{outcome=\"succeeded\"}"),
        ["warden_recoveries_total{outcome=\"succeeded\"} 0"]
    );
    assert_eq!(
        lines(&text, "warden_agent_phi{agent=\"a\"}").len(),
        1,
        "{text}"
    );
    assert_eq!(
        lines(&text, "warden_agent_health_score{agent=\"a\"}"),
        ["warden_agent_health_score{agent=\"a\"} 100"]
    );
    assert_eq!(
        lines(&text, r#"warden_agent_phi{agent="q\"x\\y"}"#).len(),
        1,
        "{text}"
    );
    // Generations were handed out by the store, timed.
    assert_eq!(
        lines(
            &text,
            "warden_store_operation_seconds_count{op=\"next_generation\"}"
        ),
        ["warden_store_operation_seconds_count{op=\"next_generation\"} 2"]
    );
    // Histograms are histograms (buckets), not summaries.
    assert!(
        text.contains("warden_recovery_rto_seconds_bucket{le=\"+Inf\"} 0"),
        "{text}"
    );

    // The generation ends: its per-agent series go at the next scrape, the counts stay.
    cp.leave(&a);
    cp.session_closed(&a);
    let text = cp.metrics();
    assert!(
        lines(&text, "warden_agent_phi{agent=\"a\"}").is_empty(),
        "{text}"
    );
    assert!(
        lines(&text, "warden_agent_health_score{agent=\"a\"}").is_empty(),
        "{text}"
    );
    assert_eq!(
        lines(&text, "warden_agents{state=\"left\"}"),
        ["warden_agents{state=\"left\"} 1"]
    );
    assert_eq!(lines(&text, "warden_sessions "), ["warden_sessions 1"]);
    assert_eq!(
        lines(
            &text,
            "warden_lifecycle_transitions_total{from=\"healthy\",to=\"left\"}"
        ),
        ["warden_lifecycle_transitions_total{from=\"healthy\",to=\"left\"} 1"]
    );
    assert_eq!(
        lines(&text, r#"warden_agent_phi{agent="q\"x\\y"}"#).len(),
        1,
        "{text}"
    );
}
