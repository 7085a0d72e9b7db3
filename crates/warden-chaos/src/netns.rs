//! Network namespaces for chaos runs: real links that can really fail.
//!
//! As root with `ip` (iproute2) and `nft` (nftables) at hand, a run puts the server in a
//! namespace of its own and every agent in another, each agent joined to the server's by a
//! veth pair on a /24 of its own:
//!
//! ```text
//!  server namespace (…s)                        agent namespace (…aK)
//!  lo 127.0.0.1  (server's gRPC and REST)
//!  sK 10.77.K.1/24  ◄──────── veth ────────►   eth0 10.77.K.2/24, default route via .1
//!  ip_forward=1 (agents reach each other through it, for indirect probes)
//! ```
//!
//! Every address lives inside namespaces the run created, so no packet of a run touches the
//! host's own network, and concurrent runs cannot clash. The harness's own thread joins the
//! server namespace for the run (threads it starts later follow it), so it talks to the server
//! on its loopback; agents are started through `ip netns exec`, which keeps their PID.
//!
//! Faults are nftables rules in a table `inet chaos` inside the agent's namespace:
//! - partition: drop everything from and to the server's address (both ways, or one);
//! - loss: drop each packet on `eth0` with a probability (`numgen random`), each way;
//!
//! other agents still reach a partitioned agent (as in a real partition between one host and
//! the control plane), so indirect probes can tell "cut off" from "dead".
//!
//! [`Netns`] removes every namespace it made when dropped (the veth pairs go with them), and
//! returns the thread to its own namespace. Namespaces left by a run that was killed outright
//! are removed by the next run (their names carry the creating process's PID).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::cluster::is_alive;
use crate::scenario::Direction;

/// Prefix of every namespace a chaos run creates.
pub const PREFIX: &str = "wdc";
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Why network namespaces cannot be used here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` not found (Debian package {package})"));
        }
    }
    None
}

/// One agent's namespace.
#[derive(Clone, Debug)]
pub struct AgentNet {
    /// Namespace name.
    pub ns: String,
    /// The agent's address (its `eth0`).
    pub agent_ip: Ipv4Addr,
    /// The server namespace's address on this agent's link.
    pub server_ip: Ipv4Addr,
}

/// The namespaces of one run; removed when dropped.
pub struct Netns {
    server_ns: String,
    agents: BTreeMap<String, AgentNet>,
    created: Vec<String>,
    /// The thread's namespace before it joined the server's.
    home: Option<File>,
}

fn run_cmd(cmd: &mut Command, input: Option<&str>) -> Result<()> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("run {what}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("write to {what}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Run `ip` commands from `script`, in namespace `ns` if given.
fn ip_batch(ns: Option<&str>, script: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    run_cmd(cmd.args(["-batch", "-"]), Some(script))
}

/// Remove namespaces left by chaos runs whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != i32::try_from(std::process::id()).unwrap_or(0) && !is_alive(pid) {
            let _ = run_cmd(Command::new("ip").args(["netns", "del", &name]), None);
        }
    }
}

impl Netns {
    /// Create the server's namespace and one per agent (at most 250), and move the calling
    /// thread into the server's.
    pub fn create(agents: &[String]) -> Result<Netns> {
        if agents.len() > 250 {
            bail!("at most 250 agents in network namespaces");
        }
        remove_stale();
        let prefix = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        let mut net = Netns {
            server_ns: format!("{prefix}s"),
            agents: BTreeMap::new(),
            created: Vec::new(),
            home: None,
        };
        // Created one by one, so that a failure leaves a list of what to remove.
        for ns in std::iter::once(net.server_ns.clone())
            .chain((1..=agents.len()).map(|k| format!("{prefix}a{k}")))
        {
            run_cmd(Command::new("ip").args(["netns", "add", &ns]), None)?;
            net.created.push(ns);
        }
        let srv = net.server_ns.clone();
        // `ip -batch` takes no per-line namespace: one batch for the links, one per namespace.
        let mut links = String::new();
        let mut server_side = String::from("link set lo up\n");
        for (i, name) in agents.iter().enumerate() {
            let k = u8::try_from(i + 1).context("too many agents")?;
            let ns = format!("{prefix}a{k}");
            let server_ip = Ipv4Addr::new(10, 77, k, 1);
            let agent_ip = Ipv4Addr::new(10, 77, k, 2);
            links.push_str(&format!(
                "link add s{k} netns {srv} type veth peer name eth0 netns {ns}\n"
            ));
            server_side.push_str(&format!(
                "addr add {server_ip}/24 dev s{k}\nlink set s{k} up\n"
            ));
            net.agents.insert(
                name.clone(),
                AgentNet {
                    ns,
                    agent_ip,
                    server_ip,
                },
            );
        }
        ip_batch(None, &links).context("create the veth links")?;
        ip_batch(Some(&srv), &server_side).context("set up the server's side")?;
        for a in net.agents.values() {
            ip_batch(
                Some(&a.ns),
                &format!(
                    "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n\
                     route add default via {}\n",
                    a.agent_ip, a.server_ip
                ),
            )
            .with_context(|| format!("set up {}", a.ns))?;
        }
        run_cmd(
            Command::new("ip").args([
                "netns",
                "exec",
                &srv,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]),
            None,
        )?;
        for a in net.agents.values() {
            net.nft(
                &a.ns,
                "add table inet chaos\n\
                 add chain inet chaos input { type filter hook input priority 0 ; policy accept ; }\n\
                 add chain inet chaos output { type filter hook output priority 0 ; policy accept ; }\n",
            )?;
        }
        let home = File::open("/proc/thread-self/ns/net").context("open this thread's netns")?;
        let target = File::open(format!("{NETNS_DIR}/{srv}"))
            .with_context(|| format!("open namespace {srv}"))?;
        setns(&target, CloneFlags::CLONE_NEWNET).context("join the server's namespace")?;
        net.home = Some(home);
        Ok(net)
    }

    fn nft(&self, ns: &str, script: &str) -> Result<()> {
        run_cmd(
            Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
            Some(script),
        )
        .with_context(|| format!("nft in {ns}"))
    }

    fn agent(&self, name: &str) -> Result<&AgentNet> {
        self.agents
            .get(name)
            .with_context(|| format!("no network namespace for {name}"))
    }

    /// The agent's namespace and addresses.
    pub fn agent_net(&self, name: &str) -> Option<&AgentNet> {
        self.agents.get(name)
    }

    /// The command prefix that runs a program in the agent's namespace.
    pub fn wrapper(&self, name: &str) -> Result<Vec<String>> {
        let a = self.agent(name)?;
        Ok(vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            a.ns.clone(),
        ])
    }

    /// Where the agent should bind its probe listener (any free port on its address).
    pub fn probe_addr(&self, name: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::from((self.agent(name)?.agent_ip, 0)))
    }

    /// Drop the agent's traffic with the server: both ways (`None`) or one.
    pub fn partition(&self, name: &str, direction: Option<Direction>) -> Result<()> {
        let a = self.agent(name)?;
        let srv = a.server_ip;
        let mut script =
            String::from("flush chain inet chaos input\nflush chain inet chaos output\n");
        if direction != Some(Direction::ToServer) {
            script.push_str(&format!("add rule inet chaos input ip saddr {srv} drop\n"));
        }
        if direction != Some(Direction::FromServer) {
            script.push_str(&format!("add rule inet chaos output ip daddr {srv} drop\n"));
        }
        self.nft(&a.ns, &script)
    }

    /// Drop each packet of the agent's link with probability `p`, each way.
    pub fn loss(&self, name: &str, p: f64) -> Result<()> {
        let a = self.agent(name)?;
        // Parts per million, so that small probabilities keep their precision.
        let ppm = (p.clamp(0.0, 1.0) * 1e6).round();
        let script = format!(
            "flush chain inet chaos input\nflush chain inet chaos output\n\
             add rule inet chaos input iifname \"eth0\" numgen random mod 1000000 < {ppm} drop\n\
             add rule inet chaos output oifname \"eth0\" numgen random mod 1000000 < {ppm} drop\n"
        );
        self.nft(&a.ns, &script)
    }

    /// Remove every drop rule of the agent's namespace.
    pub fn heal(&self, name: &str) -> Result<()> {
        let a = self.agent(name)?;
        self.nft(
            &a.ns,
            "flush chain inet chaos input\nflush chain inet chaos output\n",
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let _ = setns(&home, CloneFlags::CLONE_NEWNET);
        }
        for ns in self.created.drain(..).rev() {
            let _ = run_cmd(Command::new("ip").args(["netns", "del", &ns]), None);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    /// Whether a TCP connection from the agent's namespace to `addr` succeeds.
    fn connects_from(net: &Netns, agent: &str, addr: SocketAddr) -> bool {
        // `timeout` bounds a connect into a silent drop.
        Command::new("timeout")
            .arg("2")
            .args(net.wrapper(agent).unwrap())
            .args(["bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn namespaces_link_agents_to_the_server_and_partition_them() {
        if let Some(why) = unavailable() {
            eprintln!("skipped: network namespaces unavailable ({why})");
            return;
        }
        let names = vec!["agent-1".to_string(), "agent-2".to_string()];
        // The test thread joins the server's namespace: a listener bound here is the server.
        let net = Netns::create(&names).unwrap();
        let ns_a1 = net.agent_net("agent-1").unwrap().ns.clone();
        assert!(std::path::Path::new(NETNS_DIR).join(&ns_a1).exists());
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = SocketAddr::from((net.agent_net("agent-1").unwrap().server_ip, port));
        assert!(connects_from(&net, "agent-1", srv));
        net.partition("agent-1", None).unwrap();
        assert!(!connects_from(&net, "agent-1", srv), "partitioned");
        // agent-2 is not affected, and reaches agent-1's side of the server.
        assert!(connects_from(
            &net,
            "agent-2",
            SocketAddr::from((net.agent_net("agent-2").unwrap().server_ip, port))
        ));
        net.heal("agent-1").unwrap();
        assert!(connects_from(&net, "agent-1", srv), "healed");
        // A one-way cut of the agent's packets also breaks a handshake.
        net.partition("agent-1", Some(Direction::ToServer)).unwrap();
        assert!(!connects_from(&net, "agent-1", srv));
        net.heal("agent-1").unwrap();
        drop(l);
        drop(net);
        assert!(!std::path::Path::new(NETNS_DIR).join(&ns_a1).exists());
    }
}
