//! Replication over mutual TLS with agent certificates from one CA: a standby that is who it
//! says follows; one whose certificate names another agent, one without TLS, and one dialling
//! an impostor at the primary's address get nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::state::AckLevel;
use warden_state::codec::Op;
use warden_state::repl::{Dial, FollowReport, Primaries, follow};
use warden_state::store::{Limits, Role, StateStore};
use warden_state::tls::ReplTls;

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.clone().self_signed(&key).expect("ca").pem();
    Ca { params, key, pem }
}

/// An agent certificate as `warden tls init --agent` makes them: client authentication only.
fn agent(ca: &Ca, name: &str) -> Arc<ReplTls> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    Arc::new(
        ReplTls::from_pem(
            ca.pem.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .expect("tls"),
    )
}

fn store(role: Role) -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = StateStore::open(dir.path(), role, 1, 1, Limits::default()).expect("open");
    (dir, s)
}

async fn serve(
    p: &StateStore,
    tls: Arc<ReplTls>,
    cancel: &CancellationToken,
) -> (std::net::SocketAddr, Primaries) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let primaries = Primaries::default().with_tls(Some(tls));
    primaries.insert("j", p.clone(), vec!["b".into()]);
    tokio::spawn(primaries.clone().serve(listener, cancel.clone()));
    (addr, primaries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_runs_over_mutual_tls_only_between_the_agents_named() {
    let ca = new_ca();
    let cancel = CancellationToken::new();
    let (_pd, p) = store(Role::Primary);
    let (addr, primaries) = serve(&p, agent(&ca, "a"), &cancel).await;
    let report = Mutex::new(FollowReport::default());

    // Without TLS: the handshake fails, nothing is followed.
    let (_sd, s) = store(Role::Standby);
    let plain = follow(&Dial::plain(addr), "j", "b", &s, &report, &cancel).await;
    assert!(plain.is_err(), "a plain-TCP standby was served");

    // A certificate of agent "mallory" saying it is standby "b": refused by name.
    let dial = move |tls: Arc<ReplTls>, primary: &str| Dial {
        addr,
        tls: Some(tls),
        primary: Some(primary.to_string()),
    };
    let err = follow(
        &dial(agent(&ca, "mallory"), "a"),
        "j",
        "b",
        &s,
        &report,
        &cancel,
    )
    .await
    .expect_err("an impostor standby was served");
    assert!(err.to_string().contains("certificate names"), "{err}");

    // A standby expecting another agent at that address: it refuses the primary.
    let err = follow(&dial(agent(&ca, "b"), "c"), "j", "b", &s, &report, &cancel)
        .await
        .expect_err("followed an impostor primary");
    assert!(err.to_string().contains("not agent \"c\""), "{err}");

    // A certificate from another CA: refused.
    let other = new_ca();
    assert!(
        follow(
            &dial(agent(&other, "b"), "a"),
            "j",
            "b",
            &s,
            &report,
            &cancel
        )
        .await
        .is_err()
    );
    assert_eq!(
        s.applied(),
        0,
        "nothing reached the standby from the refused connections"
    );
    assert!(
        primaries
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );

    // The real standby "b" following primary "a": writes are acknowledged at `standby`.
    let follower = {
        let (s, cancel) = (s.clone(), cancel.clone());
        let tls = agent(&ca, "b");
        tokio::spawn(async move {
            let report = Mutex::new(FollowReport::default());
            let _ = follow(&dial(tls, "a"), "j", "b", &s, &report, &cancel).await;
        })
    };
    let mut last = 0;
    for i in 0..100 {
        let op = Op::Put {
            key: format!("k{i}"),
            value: Bytes::from_static(b"v"),
        };
        last = p.write(1, op).expect("write");
    }
    p.wait(last, AckLevel::Standby, Duration::from_secs(30))
        .await
        .expect("acknowledged by the standby over TLS");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.applied() < last {
        assert!(
            Instant::now() < deadline,
            "standby stuck at {}",
            s.applied()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.get("k99").0.as_deref(), Some(&b"v"[..]));
    cancel.cancel();
    let _ = follower.await;
    p.close();
    s.close();
}
