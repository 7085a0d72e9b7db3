//! `warden server --store etcd://…` against a real etcd that requires TLS and client
//! certificates (`--client-cert-auth`): with `--etcd-ca`, `--etcd-cert` and `--etcd-key` the
//! server connects and becomes leader; without a client certificate, or without TLS, it stops
//! with an error that names etcd. The certificates come from Warden's own CA code.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use warden_chaos::cluster::{free_port, wait_until};
use warden_server::pki::{Ca, Validity};

/// A child process killed (and reaped) when dropped, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Files {
    ca: PathBuf,
    etcd_cert: PathBuf,
    etcd_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn certificates(dir: &Path) -> Files {
    let ca = Ca::generate(Validity::days(1)).unwrap();
    // etcd's serving certificate: valid for localhost and 127.0.0.1.
    let etcd = ca.issue_server(&[], Validity::days(1)).unwrap();
    // A client certificate of the same CA (client-auth usage), as etcd requires.
    let client = ca.issue_agent("warden-server", Validity::days(1)).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Files {
        ca: write("ca.pem", ca.cert_pem()),
        etcd_cert: write("etcd.pem", &etcd.cert_pem),
        etcd_key: write("etcd-key.pem", &etcd.key_pem),
        client_cert: write("client.pem", &client.cert_pem),
        client_key: write("client-key.pem", &client.key_pem),
    }
}

/// A one-member etcd serving clients over TLS only and requiring a client certificate.
fn start_etcd(dir: &Path, f: &Files) -> (Killed, u16) {
    let client_port = free_port().unwrap();
    let peer_port = free_port().unwrap();
    let client = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new(warden_store::etcd::testing::etcd_binary())
        .args(["--name", "tls-0", "--data-dir"])
        .arg(dir.join("etcd-data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("tls-0={peer}")])
        .args(["--client-cert-auth", "--trusted-ca-file"])
        .arg(&f.ca)
        .arg("--cert-file")
        .arg(&f.etcd_cert)
        .arg("--key-file")
        .arg(&f.etcd_key)
        .args(["--logger", "zap", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd (Debian package etcd-server)");
    (Killed(child), client_port)
}

fn server(dir: &Path, port: u16, http: u16, extra: &[&Path], flags: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir.join("server"))
        .arg("--store")
        .arg(format!("etcd://127.0.0.1:{port}/tls-test"))
        .arg("--grpc-addr")
        .arg("127.0.0.1:0")
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .args(
            flags
                .iter()
                .zip(extra)
                .flat_map(|(f, p)| [f.as_ref(), p.as_os_str()]),
        )
        .stdin(Stdio::null());
    cmd
}

/// Run a server that is expected to stop by itself; its stderr.
fn failing(mut cmd: Command) -> String {
    let mut child = Killed(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stopped = wait_until(Duration::from_secs(30), || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "the server kept running without access to etcd");
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn the_server_reaches_an_etcd_that_requires_tls_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let f = certificates(dir.path());
    let (_etcd, port) = start_etcd(dir.path(), &f);

    // With the CA and a client certificate: connected, and leader of its control plane.
    let http = free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut cmd = server(
        dir.path(),
        port,
        http,
        &[&f.ca, &f.client_cert, &f.client_key],
        &["--etcd-ca", "--etcd-cert", "--etcd-key"],
    );
    let mut good = Killed(
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client = warden_client::Client::new(&format!("http://127.0.0.1:{http}")).unwrap();
    let leader = wait_until(Duration::from_secs(60), || {
        assert!(
            !matches!(good.0.try_wait(), Ok(Some(_))),
            "the server stopped: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        client
            .get("/v1/leader")
            .is_ok_and(|v| v["role"] == "leader")
    });
    assert!(
        leader,
        "no leader over TLS: {}",
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    );
    drop(good);

    // TLS without a client certificate: etcd refuses the handshake; the error names etcd.
    let err = failing(server(
        dir.path(),
        port,
        free_port().unwrap(),
        &[&f.ca],
        &["--etcd-ca"],
    ));
    assert!(err.contains("no client certificate"), "{err}");
    // Another CA than the one that signed etcd's certificate: etcd is not trusted.
    let other = Ca::generate(Validity::days(1)).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert_pem()).unwrap();
    let err = failing(server(
        dir.path(),
        port,
        free_port().unwrap(),
        &[&other_ca, &f.client_cert, &f.client_key],
        &["--etcd-ca", "--etcd-cert", "--etcd-key"],
    ));
    assert!(err.contains("store unavailable"), "{err}");
    // No TLS at all, to an etcd that only speaks TLS.
    let err = failing(server(dir.path(), port, free_port().unwrap(), &[], &[]));
    assert!(err.contains("plaintext, no --etcd-ca"), "{err}");
    // Settings that do not go together are refused before anything starts.
    let err = failing(server(
        dir.path(),
        port,
        free_port().unwrap(),
        &[&f.client_cert],
        &["--etcd-cert"],
    ));
    assert!(err.contains("--etcd-cert and --etcd-key"), "{err}");
}
