//! Transport security through the binary, as an operator uses it: `warden tls init` and
//! `warden token join` make the files, `warden server` and `warden agent` (real processes on
//! 127.0.0.1) take them, a task runs on an agent that joined with its certificate and token,
//! and a second agent cannot reuse a one-time token. Also: bad TLS settings are refused with
//! errors that name the file or the flags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ChildGuard, warden_bin};
use serde_json::Value;
use warden_chaos::cluster::{free_port, wait_until};
use warden_client::Client;

const DEADLINE: Duration = Duration::from_secs(60);

fn warden(args: &[&str]) -> Output {
    Command::new(warden_bin())
        .args(args)
        .env_remove("WARDEN_JOIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run warden")
}

fn ok(args: &[&str]) -> String {
    let out = warden(args);
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn failing(args: &[&str]) -> String {
    let out = warden(args);
    assert!(!out.status.success(), "warden {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Start `warden` with `args` (and `env`), output to `log`.
fn spawn(args: &[String], env: &[(&str, &str)], log: &Path) -> ChildGuard {
    let f = std::fs::File::create(log).expect("log");
    ChildGuard(
        Command::new(warden_bin())
            .args(args)
            .env_remove("WARDEN_JOIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("spawn warden"),
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

struct Setup {
    dir: tempfile::TempDir,
    certs: PathBuf,
    grpc: String,
    http: String,
    api: Client,
}

impl Setup {
    /// Certificates in `certs` (made by `warden tls init`), free ports for a server.
    fn new(dir: tempfile::TempDir, certs: PathBuf) -> Setup {
        let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
        Setup {
            certs,
            grpc: format!("127.0.0.1:{grpc}"),
            http: format!("127.0.0.1:{http}"),
            api: Client::new(&format!("http://127.0.0.1:{http}")).unwrap(),
            dir,
        }
    }

    /// Start a server with mutual TLS (and `extra` flags) and wait until it answers.
    fn server(&self, extra: &[String]) -> ChildGuard {
        // Host-wide CPU signals say nothing about agents that share one (busy) test machine.
        let config = self.dir.path().join("server.toml");
        std::fs::write(&config, warden_chaos::run::SERVER_CONFIG).unwrap();
        let mut args: Vec<String> = vec![
            "server".into(),
            "--config".into(),
            p(&config),
            "--data-dir".into(),
            p(&self.dir.path().join("server")),
            "--grpc-addr".into(),
            self.grpc.clone(),
            "--http-addr".into(),
            self.http.clone(),
            "--tls-cert".into(),
            p(&self.certs.join("server.pem")),
            "--tls-key".into(),
            p(&self.certs.join("server-key.pem")),
            "--tls-client-ca".into(),
            p(&self.certs.join("ca.pem")),
        ];
        args.extend(extra.iter().cloned());
        let server = spawn(&args, &[], &self.log("server"));
        assert!(
            wait_until(DEADLINE, || self.api.get("/healthz").is_ok()),
            "server did not come up: {}",
            self.read_log("server")
        );
        server
    }

    fn agent(
        &self,
        name: &str,
        cert_of: &str,
        token: &[String],
        env: &[(&str, &str)],
    ) -> ChildGuard {
        let mut args = vec![
            "agent".to_string(),
            "--server".into(),
            self.grpc.clone(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            p(&self.dir.path().join(format!("data-{name}"))),
            "--cgroups".into(),
            "off".into(),
            "--tls-cert".into(),
            p(&self.certs.join(format!("agent-{cert_of}.pem"))),
            "--tls-key".into(),
            p(&self.certs.join(format!("agent-{cert_of}-key.pem"))),
            "--tls-ca".into(),
            p(&self.certs.join("ca.pem")),
        ];
        args.extend(token.iter().cloned());
        spawn(&args, env, &self.log(name))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log(name)).unwrap_or_default()
    }

    fn agent_state(&self, name: &str) -> Option<String> {
        self.api
            .get("/v1/agents")
            .ok()?
            .as_array()?
            .iter()
            .find_map(|a| {
                (a["name"] == name).then(|| a["state"].as_str().unwrap_or_default().to_string())
            })
    }
}

#[test]
fn tls_init_output_runs_server_and_agents_with_join_tokens_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = ok(&[
        "tls",
        "init",
        "--dir",
        &p(&certs),
        "--agent",
        "a1",
        "--agent",
        "a2",
    ]);
    assert!(out.contains("agent-a1.pem"), "{out}");
    let tokens = dir.path().join("join-tokens");
    let once = ok(&["token", "join", "--once", "--file", &p(&tokens)])
        .trim()
        .to_string();
    let reusable = ok(&["token", "join", "--file", &p(&tokens)])
        .trim()
        .to_string();
    let token_file = dir.path().join("a1.token");
    std::fs::write(&token_file, format!("{once}\n")).unwrap();

    let s = Setup::new(dir, certs);
    let _server = s.server(&["--join-tokens".into(), p(&tokens)]);

    // a1: its certificate and the one-time token, from a file.
    let _a1 = s.agent(
        "a1",
        "a1",
        &["--join-token-file".into(), p(&token_file)],
        &[],
    );
    assert!(
        wait_until(DEADLINE, || s.agent_state("a1").as_deref()
            == Some("healthy")),
        "a1 did not join: {}",
        s.read_log("a1")
    );
    let job = format!(
        "name = \"tick\"\nkind = \"singleton\"\ncommand = \"{}\"\nargs = [\"workload\", \"sleep\"]\n",
        p(&warden_bin())
    );
    s.api
        .request("POST", "/v1/jobs", Some("application/toml"), job.as_bytes())
        .unwrap()
        .json()
        .unwrap();
    let task = || -> Option<Value> {
        s.api
            .get("/v1/tasks")
            .ok()?
            .as_array()?
            .iter()
            .find(|t| t["id"] == "tick/0")
            .cloned()
    };
    assert!(
        wait_until(DEADLINE, || task()
            .is_some_and(|t| t["state"] == "running" && t["agent"] == "a1")),
        "the task did not run on a1: {:?}\n{}",
        task(),
        s.read_log("a1")
    );

    // a2, with its own valid certificate, tries a1's one-time token: refused.
    let a2 = s.agent(
        "a2",
        "a2",
        &["--join-token-file".into(), p(&token_file)],
        &[],
    );
    assert!(
        wait_until(DEADLINE, || s
            .read_log("a2")
            .contains("already used by another agent")),
        "a2 was not refused: {}",
        s.read_log("a2")
    );
    assert_eq!(s.agent_state("a2"), None);
    drop(a2);
    // With a reusable token (from the environment) a2 joins.
    let _a2 = s.agent("a2", "a2", &[], &[("WARDEN_JOIN_TOKEN", &reusable)]);
    assert!(
        wait_until(DEADLINE, || s.agent_state("a2").as_deref()
            == Some("healthy")),
        "a2 did not join with the reusable token: {}",
        s.read_log("a2")
    );
    assert_eq!(task().unwrap()["agent"], "a1", "the task stayed on a1");

    // Replicated task state between the two agents, over mutual TLS with their certificates:
    // a standby on the other agent catches up and joins the in-sync set.
    let job = format!(
        "name = \"count\"\nkind = \"singleton\"\ncommand = \"{}\"\n\
         args = [\"workload\", \"counter\", \"--every-ms\", \"20\"]\n\
         [state]\nstandbys = 1\nack = \"standby\"\n",
        p(&warden_bin())
    );
    s.api
        .request("POST", "/v1/jobs", Some("application/toml"), job.as_bytes())
        .unwrap()
        .json()
        .unwrap();
    let replica = |id: &str| -> Option<(String, String, bool)> {
        let t = s
            .api
            .get("/v1/tasks")
            .ok()?
            .as_array()?
            .iter()
            .find(|t| t["id"] == id)?
            .clone();
        let r = t.get("replica")?;
        Some((
            t["agent"].as_str()?.to_string(),
            r["role"].as_str()?.to_string(),
            r["in_sync"].as_bool()?,
        ))
    };
    assert!(
        wait_until(DEADLINE, || {
            let (Some(p), Some(b)) = (replica("count/0"), replica("count/1")) else {
                return false;
            };
            p.1 == "primary" && b.1 == "standby" && b.2 && p.0 != b.0
        }),
        "no in-sync standby over TLS: {:?} {:?}\n{}\n{}",
        replica("count/0"),
        replica("count/1"),
        s.read_log("a1"),
        s.read_log("a2")
    );

    // Tokens appear in no log, and the server kept only hashes.
    for log in ["server", "a1", "a2"] {
        let text = s.read_log(log);
        assert!(
            !text.contains(&once) && !text.contains(&reusable),
            "a token leaked into the {log} log"
        );
    }
    let hashes = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        !hashes.contains(&once) && hashes.lines().count() == 2,
        "{hashes}"
    );
    let bindings =
        std::fs::read_to_string(s.dir.path().join("server/join-token-bindings.json")).unwrap();
    assert!(
        bindings.contains("\"a1\"") && !bindings.contains(&once),
        "{bindings}"
    );
}

#[test]
fn bad_tls_settings_are_refused_naming_the_file_or_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ok(&["tls", "init", "--dir", &p(&certs), "--agent", "a1"]);
    let f = |name: &str| p(&certs.join(name));
    let missing = p(&dir.path().join("missing.pem"));
    let data = p(&dir.path().join("data"));
    let server_with = |cert: &str, key: &str, ca: &str, extra: &[&str]| {
        let mut args = vec![
            "server",
            "--data-dir",
            &data,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            ca,
        ];
        args.extend_from_slice(extra);
        failing(&args)
    };
    let server = |cert: &str, key: &str, ca: &str| server_with(cert, key, ca, &[]);
    let e = server(&missing, &f("server-key.pem"), &f("ca.pem"));
    assert!(
        e.contains("read certificate") && e.contains("missing.pem"),
        "{e}"
    );
    // A key where the certificate should be.
    let e = server(&f("server-key.pem"), &f("server-key.pem"), &f("ca.pem"));
    assert!(
        e.contains("server-key.pem") && e.contains("no CERTIFICATE"),
        "{e}"
    );
    // The key of another certificate.
    let e = server(&f("server.pem"), &f("agent-a1-key.pem"), &f("ca.pem"));
    assert!(e.contains("TLS settings"), "{e}");
    let e = failing(&[
        "server",
        "--data-dir",
        &data,
        "--tls-cert",
        &f("server.pem"),
    ]);
    assert!(e.contains("go together"), "{e}");
    // A deny list needs TLS, and a bad line in it is named.
    let deny = dir.path().join("deny");
    std::fs::write(&deny, "0a1b\nnot a serial\n").unwrap();
    let e = failing(&["server", "--data-dir", &data, "--tls-deny", &p(&deny)]);
    assert!(e.contains("needs mutual TLS"), "{e}");
    let e = server_with(
        &f("server.pem"),
        &f("server-key.pem"),
        &f("ca.pem"),
        &["--tls-deny", &p(&deny)],
    );
    assert!(e.contains("deny") && e.contains("line 2"), "{e}");

    let e = failing(&[
        "agent",
        "--data-dir",
        &data,
        "--name",
        "a1",
        "--tls-cert",
        &f("agent-a1.pem"),
        "--tls-key",
        &f("agent-a1-key.pem"),
        "--tls-ca",
        &missing,
    ]);
    assert!(
        e.contains("read CA certificate") && e.contains("missing.pem"),
        "{e}"
    );
    let e = failing(&[
        "agent",
        "--data-dir",
        &data,
        "--server",
        "http://127.0.0.1:7400",
        "--tls-cert",
        &f("agent-a1.pem"),
        "--tls-key",
        &f("agent-a1-key.pem"),
        "--tls-ca",
        &f("ca.pem"),
    ]);
    assert!(e.contains("plaintext"), "{e}");

    // The config file takes the same settings.
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\njoin_tokens = \"/etc/warden/join-tokens\"\n",
            f("server.pem"),
            f("server-key.pem"),
            f("ca.pem")
        ),
    )
    .unwrap();
    let printed = ok(&["server", "--config", &p(&cfg), "--print-config"]);
    assert!(
        printed.contains(&format!("tls_client_ca = \"{}\"", f("ca.pem")))
            && printed.contains("join_tokens = \"/etc/warden/join-tokens\""),
        "{printed}"
    );
}

#[test]
fn a_revoked_agent_certificate_is_replaced_on_disk_and_the_agent_rejoins_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ok(&["tls", "init", "--dir", &p(&certs), "--agent", "a1"]);
    let deny = dir.path().join("deny");
    std::fs::write(&deny, "").unwrap();
    let s = Setup::new(dir, certs);
    let _server = s.server(&["--tls-deny".into(), p(&deny)]);
    let _a1 = s.agent("a1", "a1", &[], &[]);
    let sessions = || s.read_log("a1").matches("session established").count();
    assert!(
        wait_until(DEADLINE, || s.agent_state("a1").as_deref()
            == Some("healthy")),
        "a1 did not join: {}",
        s.read_log("a1")
    );

    // Revoked: the live session is closed and every new one refused.
    let out = ok(&[
        "tls",
        "revoke",
        "--deny-file",
        &p(&deny),
        &p(&s.certs.join("agent-a1.pem")),
    ]);
    assert!(out.contains("revoked"), "{out}");
    assert!(
        wait_until(DEADLINE, || s.read_log("a1").contains("was revoked")),
        "a1 was not refused after the revocation: {}",
        s.read_log("a1")
    );
    assert!(s.read_log("server").contains("its certificate was revoked"));
    let before = sessions();

    // A new certificate for a1, written over the old files: the running agent picks it up at
    // its next connection attempt and joins again.
    ok(&["tls", "issue-agent", "--dir", &p(&s.certs), "a1", "--force"]);
    assert!(
        wait_until(DEADLINE, || sessions() > before),
        "a1 did not rejoin with its new certificate: {}",
        s.read_log("a1")
    );
    assert!(s.read_log("a1").contains("TLS files changed"));
    assert!(
        wait_until(DEADLINE, || s.agent_state("a1").as_deref()
            == Some("healthy")),
        "a1 is not healthy again: {:?}",
        s.agent_state("a1")
    );
}

#[test]
fn the_server_takes_a_rotated_certificate_and_ca_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ok(&["tls", "init", "--dir", &p(&certs), "--agent", "a1"]);
    // A second CA, with its own server certificate and an agent certificate for a2.
    let next = dir.path().join("next");
    ok(&["tls", "init", "--dir", &p(&next), "--agent", "a2"]);
    let s = Setup::new(dir, certs);
    let _server = s.server(&[]);
    let _a1 = s.agent("a1", "a1", &[], &[]);
    assert!(
        wait_until(DEADLINE, || s.agent_state("a1").as_deref()
            == Some("healthy")),
        "a1 did not join: {}",
        s.read_log("a1")
    );

    // Rotate everything the server reads: its certificate and key, and the CA its agents'
    // certificates must chain to. a2's files go next to them.
    for f in [
        "server.pem",
        "server-key.pem",
        "ca.pem",
        "agent-a2.pem",
        "agent-a2-key.pem",
    ] {
        // Written aside and renamed, as a careful operator (or cert-manager) does.
        let tmp = s.certs.join(format!("{f}.tmp"));
        std::fs::copy(next.join(f), &tmp).unwrap();
        std::fs::rename(&tmp, s.certs.join(f)).unwrap();
    }
    assert!(
        wait_until(DEADLINE, || s
            .read_log("server")
            .contains("server TLS files changed: reloaded")),
        "the server did not reload: {}",
        s.read_log("server")
    );
    // a2 trusts only the new CA and holds a certificate of it: it joins, so the server now
    // presents the new certificate and verifies agents against the new CA.
    let _a2 = s.agent("a2", "a2", &[], &[]);
    assert!(
        wait_until(DEADLINE, || s.agent_state("a2").as_deref()
            == Some("healthy")),
        "a2 did not join after the rotation: {}",
        s.read_log("a2")
    );
    // a1's session, established before, was not cut.
    assert_eq!(s.agent_state("a1").as_deref(), Some("healthy"));
    assert_eq!(
        s.read_log("a1").matches("session established").count(),
        1,
        "{}",
        s.read_log("a1")
    );
}

#[test]
fn a_broken_rotation_keeps_the_server_on_its_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ok(&["tls", "init", "--dir", &p(&certs), "--agent", "a1"]);
    let s = Setup::new(dir, certs);
    let _server = s.server(&[]);
    // A half-written key: the server says so and keeps serving with the old files.
    std::fs::write(
        s.certs.join("server-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA",
    )
    .unwrap();
    assert!(
        wait_until(DEADLINE, || s
            .read_log("server")
            .contains("cannot be used; keeping the previous ones")),
        "no warning about the broken key: {}",
        s.read_log("server")
    );
    let _a1 = s.agent("a1", "a1", &[], &[]);
    assert!(
        wait_until(DEADLINE, || s.agent_state("a1").as_deref()
            == Some("healthy")),
        "a1 could not join on the old certificate: {}",
        s.read_log("a1")
    );
}
