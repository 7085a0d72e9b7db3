//! The Kubernetes manifests in deploy/kubernetes: linted (yamllint) and validated against the
//! Kubernetes API schemas (kubernetes-validate, strict: no unknown fields), both from PyPI,
//! pinned and installed by scripts/test.sh into target/pyenv. The server settings the
//! ConfigMap is made from are read by the binary itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes version the manifests are checked against.
const KUBERNETES: &str = "1.30.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifests() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// A tool of the test virtualenv (or, failing that, of PATH).
fn tool(name: &str) -> PathBuf {
    let venv = repo().join("target/pyenv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!("{name} not found: ./scripts/test.sh installs it into target/pyenv")
    })
}

fn check(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

fn resources() -> Vec<PathBuf> {
    ["namespace.yaml", "etcd.yaml", "server.yaml", "agent.yaml"]
        .iter()
        .map(|f| manifests().join(f))
        .collect()
}

fn validate(files: &[PathBuf]) -> Result<String, String> {
    check(
        Command::new(tool("kubernetes-validate"))
            .args(["--strict", "-k", KUBERNETES])
            .args(files),
    )
}

#[test]
fn the_manifests_lint_and_validate_against_the_kubernetes_schemas() {
    let dir = manifests();
    check(
        Command::new(tool("yamllint"))
            .arg("-c")
            .arg(dir.join(".yamllint"))
            .arg(&dir),
    )
    .unwrap_or_else(|e| panic!("yamllint: {e}"));
    let said = validate(&resources()).unwrap_or_else(|e| panic!("kubernetes-validate: {e}"));
    for kind in [
        "statefulset/etcd",
        "statefulset/warden-server",
        "daemonset/warden-agent",
        "poddisruptionbudget/warden-server",
    ] {
        assert!(said.contains(&format!("{kind} against")), "{kind}: {said}");
    }
    // Every file kustomize applies is one of those checked.
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    for f in resources() {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(kustomization.contains(&format!("- {name}")), "{name}");
    }
}

#[test]
fn the_validator_refuses_a_broken_manifest() {
    // The check can fail: an unknown field and a wrong type are refused.
    let dir = tempfile::tempdir().unwrap();
    let agent = std::fs::read_to_string(manifests().join("agent.yaml")).unwrap();
    let broken = dir.path().join("agent.yaml");
    std::fs::write(
        &broken,
        agent.replace("hostNetwork: true", "hostNetwrk: true"),
    )
    .unwrap();
    assert!(
        validate(std::slice::from_ref(&broken)).is_err(),
        "an unknown field passed"
    );
    std::fs::write(
        &broken,
        agent.replace("maxUnavailable: 1", "maxUnavailable: [1]"),
    )
    .unwrap();
    assert!(validate(&[broken]).is_err(), "a wrong type passed");
}

#[test]
fn the_server_config_map_is_read_by_the_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["server", "--print-config", "--config"])
        .arg(manifests().join("server.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("grpc_addr = \"0.0.0.0:7400\""), "{text}");
    assert!(text.contains("public_metrics = true"), "{text}");
}
