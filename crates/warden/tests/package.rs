//! The Debian package: `scripts/build-deb.sh` builds it around the test's own binary; the test
//! reads its control data and file list, unpacks it into a fresh root and has systemd check
//! its units there (`systemd-analyze verify --root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `systemd-analyze verify` of `units` inside `root`; Ok or its complaints. A setting it
/// cannot parse is only a warning to it (exit status 0), so any output counts as a failure.
fn verify(root: &Path, units: &[PathBuf]) -> Result<(), String> {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .expect("systemd-analyze (package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

#[test]
fn the_debian_package_holds_the_binary_units_config_and_docs_and_its_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let deb = run(Command::new(repo().join("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_warden"))
        .arg("--out")
        .arg(dir.path())
        .args(["--compress", "none"]));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.is_file(), "{}", deb.display());

    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "warden");
    assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
    assert!(field("Depends").contains("adduser"));

    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    for path in [
        "usr/bin/warden",
        "lib/systemd/system/warden-server.service",
        "lib/systemd/system/warden-agent.service",
        "etc/warden/server.toml",
        "etc/warden/agent.env",
        "usr/share/man/man1/warden.1.gz",
        "usr/share/man/man1/warden-server.1.gz",
        "usr/share/man/man1/warden-agent.1.gz",
        "usr/share/bash-completion/completions/warden",
        "usr/share/zsh/vendor-completions/_warden",
        "usr/share/fish/vendor_completions.d/warden.fish",
    ] {
        assert!(
            root.join(path).is_file(),
            "{path} is missing from the package"
        );
    }
    // Edited config files survive upgrades: they are conffiles.
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/warden/server.toml", "/etc/warden/agent.env"]
    );
    // The packaged server config is what the binary itself reads.
    let cfg = root.join("etc/warden/server.toml");
    let printed = run(Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["server", "--print-config", "--config"])
        .arg(&cfg));
    assert!(
        printed.contains("data_dir = \"/var/lib/warden/server\""),
        "{printed}"
    );
    // The maintainer scripts are shell that parses.
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let server_unit =
        std::fs::read_to_string(root.join("lib/systemd/system/warden-server.service")).unwrap();
    for hardening in [
        "User=warden",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=65536",
        "Restart=on-failure",
        "StateDirectory=warden",
    ] {
        assert!(server_unit.contains(hardening), "{hardening}");
    }

    let agent_unit =
        std::fs::read_to_string(root.join("lib/systemd/system/warden-agent.service")).unwrap();
    // The agent manages the cgroups of its tasks below its own (docs/isolation.md).
    assert!(agent_unit.contains("Delegate=yes"), "{agent_unit}");
    assert!(
        !agent_unit.contains("ProtectKernelTunables=yes"),
        "{agent_unit}"
    );

    // dpkg itself takes the package into an empty root: it unpacks every file and registers
    // the package and its conffiles (no maintainer script runs at this stage, so nothing of
    // this machine is touched; `adduser` is not in the empty root, hence --force-depends).
    let fresh = dir.path().join("fresh");
    let admin = fresh.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", fresh.display()))
        .arg(format!("--admindir={}", admin.display()))
        .args(["--force-depends", "--unpack"])
        .arg(&deb));
    let status = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f=${Status} ${Version}\n${Conffiles}\n", "warden"]));
    assert!(
        status.starts_with(&format!(
            "install ok unpacked {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{status}"
    );
    assert!(status.contains("/etc/warden/server.toml"), "{status}");
    assert!(status.contains("/etc/warden/agent.env"), "{status}");
    let listed = run(Command::new("dpkg")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-L", "warden"]));
    // A new conffile waits as `.dpkg-new` until the package is configured.
    for (path, unpacked) in [
        ("/usr/bin/warden", "usr/bin/warden"),
        (
            "/lib/systemd/system/warden-agent.service",
            "lib/systemd/system/warden-agent.service",
        ),
        ("/etc/warden/server.toml", "etc/warden/server.toml.dpkg-new"),
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "{path} not listed:\n{listed}"
        );
        let on_disk = fresh.join(unpacked);
        assert!(on_disk.is_file(), "{} not unpacked", on_disk.display());
    }

    // systemd checks the units against the unpacked root (the executable they name is the
    // package's); the targets they order against come from this machine's systemd.
    let units_dir = root.join("lib/systemd/system");
    for e in std::fs::read_dir("/usr/lib/systemd/system")
        .unwrap()
        .flatten()
    {
        let name = e.file_name();
        let target = units_dir.join(&name);
        if name.to_string_lossy().ends_with(".target") && !target.exists() {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
    let units = [
        units_dir.join("warden-server.service"),
        units_dir.join("warden-agent.service"),
    ];
    verify(&root, &units).unwrap_or_else(|e| panic!("the packaged units do not verify: {e}"));
    // The check can fail: a unit with an unknown setting value is refused.
    let broken = units_dir.join("warden-broken.service");
    std::fs::write(
        &broken,
        server_unit.replace("ProtectSystem=strict", "ProtectSystem=everything"),
    )
    .unwrap();
    assert!(
        verify(&root, &[broken]).is_err(),
        "systemd-analyze accepted a broken unit"
    );
}
