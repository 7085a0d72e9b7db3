//! REST API tokens end to end with the real binary: `warden token api` makes tokens,
//! `warden server --api-tokens` enforces their roles, the CLI sends `WARDEN_TOKEN`, a token
//! added while the server runs is picked up, and no token ever appears in the server's log
//! (traced at the most verbose level).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ChildGuard, wait_until, warden_bin};
use warden_chaos::cluster::free_port;

fn token(file: &Path, role: &str, name: Option<&str>) -> String {
    let mut cmd = Command::new(warden_bin());
    cmd.args(["token", "api", "--role", role, "--file"])
        .arg(file);
    if let Some(n) = name {
        cmd.args(["--name", n]);
    }
    let out = cmd.output().expect("run warden token api");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_string();
    assert!(token.starts_with("warden_api_"), "{token}");
    token
}

/// `warden ARGS` against the server at `addr` with `WARDEN_TOKEN` set (or removed).
fn cli(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(warden_bin());
    cmd.args(args)
        .env("WARDEN_ADDR", addr)
        .env_remove("WARDEN_TOKEN");
    if let Some(t) = token {
        cmd.env("WARDEN_TOKEN", t);
    }
    cmd.output().expect("run the CLI")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tokens_gate_the_cli_by_role_and_are_never_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("api-tokens");
    let operator = token(&file, "operator", Some("deploy"));
    let read = token(&file, "read", None);
    let stored = std::fs::read_to_string(&file).expect("token file");
    assert!(!stored.contains(&operator) && !stored.contains(&read));
    assert_eq!(stored.lines().count(), 2);

    let http = free_port().expect("port");
    let grpc = free_port().expect("port");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = Command::new(warden_bin())
        .args(["server", "--api-tokens"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .env("WARDEN_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the server");
    let server = ChildGuard(server);
    let addr = format!("http://127.0.0.1:{http}");
    assert!(
        wait_until(Duration::from_secs(20), || cli(
            &addr,
            Some(&read),
            &["agents"]
        )
        .status
        .success()),
        "the server did not come up: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    // No token: refused with a message saying what to do.
    let out = cli(&addr, None, &["agents"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("401") && stderr(&out).contains("WARDEN_TOKEN"),
        "{}",
        stderr(&out)
    );

    // The read token reads and may not write.
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        "name = \"sleeper\"\nkind = \"service\"\ncommand = \"sleep\"\nargs = [\"600\"]\n",
    )
    .expect("write spec");
    let spec = spec.to_string_lossy().into_owned();
    let out = cli(&addr, Some(&read), &["job", "run", &spec]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    // The operator token writes; the read token sees the result.
    let out = cli(&addr, Some(&operator), &["job", "run", &spec]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&addr, Some(&read), &["job", "ls", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sleeper"));

    // Releasing the mass-failure brake is an operator's act.
    let out = cli(&addr, Some(&read), &["brake", "release"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    let out = cli(&addr, Some(&operator), &["brake", "release"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not engaged"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(&addr, Some(&operator), &["brake", "release", "-o", "json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"was_engaged\": false"));

    // A token added while the server runs works once the file is re-read (within a second or
    // two), without a restart.
    let late = token(&file, "operator", Some("late"));
    assert!(
        wait_until(Duration::from_secs(10), || cli(
            &addr,
            Some(&late),
            &["job", "stop", "sleeper"]
        )
        .status
        .success()),
        "the token added later was not accepted"
    );

    drop(server);
    let log = std::fs::read_to_string(&log_path).expect("server log");
    assert!(
        log.contains("job submitted"),
        "the log has the request trace"
    );
    assert!(
        log.contains("deploy"),
        "writes are logged with the token's name"
    );
    for t in [&operator, &read, &late] {
        assert!(
            !log.contains(t.as_str()),
            "a token appeared in the server log"
        );
        // Not even its random part.
        assert!(!log.contains(&t["warden_api_".len()..]));
    }
}
