//! The dashboard in a real browser: headless Chromium (Debian package `chromium`) loads the
//! pages of a real cluster — the `warden` binary of this build as a server and three agents,
//! each its own process on loopback (`warden_chaos::cluster::Cluster`) — and the test reads the
//! DOM Chromium ends up with (`--dump-dom`, after the page's scripts ran).
//!
//! It checks that the fleet page shows every agent, SIGKILLs one, and polls the page (bounded
//! deadline, no bare sleeps) until the browser shows that agent as failed; then that the
//! recoveries and SLA pages show the recovery.
//!
//! With `WARDEN_SCREENSHOT_DIR=DIR` it also saves 1280×900 screenshots of the pages there
//! (that is how `docs/img/dashboard-*.png` are made); without it, one screenshot goes to a
//! temporary directory to check that the page renders at all.
//!
//! Every process is stopped by PID when its guard drops (Chromium's whole process group; the
//! cluster by its own `Drop`), also when an assertion fails. Chromium profiles live in
//! temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use warden_chaos::cluster::{Cluster, wait_until};

/// Deadline for anything the cluster must do by itself (detection, recovery).
const LONG: Duration = Duration::from_secs(60);
/// Longest one Chromium run may take before it is killed.
const BROWSER_DEADLINE: Duration = Duration::from_secs(45);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_warden"))
}

/// The chaos harness's server configuration (host CPU and pressure switched off: every agent
/// shares this machine), with an SLA objective set to show that the `[sla]` table is read.
fn server_config() -> String {
    format!(
        "{}\n[sla]\nobjective_rto = \"7s\"\n",
        warden_chaos::run::SERVER_CONFIG
    )
}

/// The Chromium executable, or a failure that says which package to install.
fn chromium() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join("chromium");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "chromium is not installed: this test needs headless Chromium, from the Debian package \
         `chromium` (`apt-get install chromium`; scripts/test.sh installs it)"
    );
}

/// A running Chromium, killed with its whole process group (renderers, GPU and zygote
/// helpers) when dropped.
struct Browser {
    child: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Run headless Chromium on `url` with `extra` flags, in a fresh temporary profile; return its
/// stdout. Fails (with stderr) when it exits badly or outlives [`BROWSER_DEADLINE`].
fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::Builder::new()
        .prefix("warden-chromium-")
        .tempdir()
        .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        // Let the page's scripts (htmx, the charts) run before the DOM is dumped.
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&stdout_path).unwrap())
    .stderr(std::fs::File::create(&stderr_path).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut browser = Browser {
        child: cmd.spawn().expect("start chromium"),
    };
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let status = loop {
        if let Some(status) = browser.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not finish {url} within {BROWSER_DEADLINE:?}; stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(browser);
    assert!(
        status.success(),
        "chromium failed on {url} ({status}); stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout_path).unwrap()
}

/// The DOM of `url` after its scripts ran.
fn dump_dom(url: &str) -> String {
    run_chromium(url, &["--dump-dom".to_string()])
}

/// Save a 1280×900 screenshot of `url` to `path`.
fn screenshot(url: &str, path: &Path) {
    run_chromium(
        url,
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,900".to_string(),
        ],
    );
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1_000, "screenshot {} is empty", path.display());
}

fn agent_row(name: &str, state: &str) -> String {
    format!("data-agent=\"{name}\" data-state=\"{state}\"")
}

fn service(name: &str, replicas: u32) -> String {
    format!(
        "name = \"{name}\"\nkind = \"service\"\nreplicas = {replicas}\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n"
    )
}

fn singleton(name: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"singleton\"\ncommand = \"{{exe}}\"\n\
         args = [\"workload\", \"sleep\", \"--every\", \"60\"]\n\
         [resources]\ncpu_millis = 10\nmemory_mb = 16\n"
    )
}

#[test]
fn the_browser_shows_the_fleet_and_a_killed_agent_turning_failed() {
    chromium();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("server.toml");
    std::fs::write(&config, server_config()).unwrap();
    let config = config.display().to_string();
    let mut c = Cluster::start_with_env(exe(), &[("WARDEN_CONFIG", config.as_str())]).unwrap();
    c.add_agents(3).unwrap();
    c.submit(&service("web", 3)).unwrap();
    c.submit(&singleton("ledger")).unwrap();
    let base = format!("http://{}", c.http_addr);
    assert!(
        wait_until(LONG, || {
            c.client.get("/v1/tasks").is_ok_and(|v| {
                v.as_array().is_some_and(|ts| {
                    ts.len() == 4 && ts.iter().all(|t| t["state"].as_str() == Some("running"))
                })
            })
        }),
        "tasks did not all run: {:?}",
        c.client.get("/v1/tasks").ok()
    );

    let dom = dump_dom(&format!("{base}/"));
    for name in ["agent-1", "agent-2", "agent-3"] {
        assert!(
            dom.contains(&agent_row(name, "healthy")),
            "the fleet page does not show {name} healthy:\n{dom}"
        );
    }
    // htmx loaded and wired the live region (it adds its own classes/attributes at runtime).
    assert!(dom.contains("hx-trigger=\"every 2s\""), "{dom}");

    let shots = std::env::var_os("WARDEN_SCREENSHOT_DIR").map(PathBuf::from);
    let shot_tmp = tempfile::tempdir().unwrap();
    let shot_dir = shots
        .clone()
        .unwrap_or_else(|| shot_tmp.path().to_path_buf());
    screenshot(&format!("{base}/"), &shot_dir.join("dashboard-fleet.png"));

    // The victim is whichever agent runs the singleton, so the recovery moves it.
    let victim = c
        .task("ledger/0")
        .and_then(|t| t["agent"].as_str().map(str::to_string))
        .expect("the singleton runs somewhere");
    if shots.is_some() {
        // Let the history ring gather a few buckets so the charts have lines to draw.
        let page = format!("{base}/ui/agents/{victim}");
        assert!(wait_until(LONG, || {
            c.client
                .request("GET", &format!("/ui/agents/{victim}"), None, b"")
                .is_ok_and(|r| samples_shown(&r.body) >= 6)
        }));
        screenshot(&page, &shot_dir.join("dashboard-agent.png"));
    }

    c.kill_agent(&victim).unwrap();
    let deadline = Instant::now() + LONG;
    let mut dumps = 0;
    let last = loop {
        let dom = dump_dom(&format!("{base}/"));
        dumps += 1;
        if dom.contains(&agent_row(&victim, "failed")) {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "after {dumps} page loads the browser never showed {victim} as failed; last DOM:\n{dom}\n\
             server log:\n{}",
            c.log("server")
        );
    };
    // The other two stay healthy.
    for name in ["agent-1", "agent-2", "agent-3"] {
        if name != victim {
            assert!(last.contains(&agent_row(name, "healthy")), "{name}: {last}");
        }
    }

    // The recovery shows up on the recoveries page and in the SLA figures.
    assert!(
        wait_until(LONG, || {
            c.client.get("/v1/recoveries").is_ok_and(|v| {
                v.as_array().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r["task"].as_str() == Some("ledger/0")
                            && r["outcome"].as_str() == Some("succeeded")
                    })
                })
            })
        }),
        "the singleton was not recovered: {:?}",
        c.client.get("/v1/recoveries").ok()
    );
    let dom = dump_dom(&format!("{base}/ui/recoveries"));
    assert!(
        dom.contains("ledger/0") && dom.contains("succeeded"),
        "{dom}"
    );
    let dom = dump_dom(&format!("{base}/ui/sla"));
    assert!(dom.contains("100.0%"), "one recovery, succeeded: {dom}");
    assert!(
        dom.contains("objective 7s"),
        "the [sla] objective is used: {dom}"
    );
    assert!(dom.contains("data-job=\"ledger\""), "{dom}");

    // The CLI reports the same figures (`warden report sla`, which asks `GET /v1/sla`).
    let report = |args: &[&str]| {
        let out = Command::new(exe())
            .args(["report", "sla"])
            .args(args)
            .env("WARDEN_ADDR", &base)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, err) = report(&["--since", "1h", "--objective-rto", "2s"]);
    println!("{table}");
    assert!(ok, "{err}");
    assert!(table.contains("objective RTO 2s"), "{table}");
    assert!(table.contains("success rate    100.00%"), "{table}");
    assert!(table.contains("ledger/0"), "{table}");
    let (ok, html, err) = report(&["-o", "html"]);
    assert!(ok, "{err}");
    assert!(
        html.starts_with("<!doctype html>") && html.contains("objective 7s"),
        "{html}"
    );
    let (ok, _, err) = report(&["--since", "7d"]);
    assert!(
        !ok && err.contains("unknown unit") && err.contains("24h"),
        "{err}"
    );

    if let Some(dir) = &shots {
        for (page, file) in [
            ("/", "dashboard-fleet-failed.png"),
            ("/ui/recoveries", "dashboard-recoveries.png"),
            ("/ui/sla", "dashboard-sla.png"),
            ("/ui/tasks", "dashboard-tasks.png"),
            ("/ui/events", "dashboard-events.png"),
        ] {
            screenshot(&format!("{base}{page}"), &dir.join(file));
        }
    }
}

/// The "N samples" count the agent page states.
fn samples_shown(page: &str) -> usize {
    page.split(" samples, one per")
        .next()
        .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
