//! A real Warden cluster on this machine: one server and N agents as separate OS processes on
//! loopback, each in a temporary directory, with faults a test or benchmark can inject — kill
//! (SIGKILL), pause (SIGSTOP) and resume (SIGCONT), restart — and ground truth read from the
//! processes themselves.
//!
//! With the cargo feature `etcd`, [`Cluster::start_replicated`] runs a replicated control
//! plane instead: a real etcd cluster (`warden_store::etcd::testing::EtcdCluster`) and several
//! `warden server` replicas on it, each reaching every etcd member through a
//! [`Proxy`](crate::proxy::Proxy) of its
//! own, so that one replica can be cut off from etcd ([`Cluster::cut_store`]) while the others
//! keep their access. Agents are given every replica. The cluster's [`Client`] knows every
//! replica too (it follows a standby's redirect to the leader, and moves on from a replica
//! that is down).
//!
//! Ground truth about tasks comes from `/proc`: every job the harness submits carries the
//! cluster's unique marker in its environment, so the harness finds the task processes that
//! belong to *this* cluster (and their `WARDEN_FENCING_TOKEN`) without trusting the server.
//!
//! Every process is stopped when the [`Cluster`] is dropped — also when a test fails — and the
//! temporary directory removed. Only processes this cluster started are ever signalled, by PID.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

#[cfg(feature = "etcd")]
use crate::proxy::Proxy;
use warden_client::Client;

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Poll `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

/// The parent of a process (`None` when it is gone).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state, then the parent's PID.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) a process has used so far, and its resident set size in bytes.
pub fn cpu_and_rss(pid: i32) -> Option<(Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3 of stat, utime 14, stime 15 (1-based).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let ticks = 100; // USER_HZ on Linux
    let cpu = Duration::from_millis((utime + stime) * 1000 / ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, rss_kb * 1024))
}

/// One task process found in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskProc {
    /// Process id.
    pub pid: i32,
    /// `WARDEN_TASK_ID`.
    pub task: String,
    /// `WARDEN_FENCING_TOKEN`.
    pub token: u64,
}

/// A managed process.
struct Proc {
    child: Child,
    /// Command prefix the process runs under (e.g. `ip netns exec NS`), may be empty.
    wrapper: Vec<String>,
    args: Vec<String>,
}

impl Proc {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }
}

/// One `warden server` of the cluster.
struct ServerSlot {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    /// `--store`: `None` for the embedded store in the server's data directory.
    store: Option<String>,
    proc: Option<Proc>,
}

/// The etcd cluster of a replicated control plane, and each server's way to it.
#[cfg(feature = "etcd")]
struct EtcdBackend {
    /// `proxies[i][m]`: server `i`'s proxy to etcd member `m`.
    proxies: Vec<Vec<Proxy>>,
    /// Dropped after the proxies: the members are killed last.
    cluster: warden_store::etcd::testing::EtcdCluster,
}

/// Prefix of the control plane's keys in a cluster's etcd.
pub const ETCD_PREFIX: &str = "/warden";

/// A local cluster.
pub struct Cluster {
    exe: PathBuf,
    dir: tempfile::TempDir,
    marker: String,
    servers: Vec<ServerSlot>,
    agents: BTreeMap<String, Proc>,
    /// Where agent sessions connect: the first server's gRPC address.
    pub grpc_addr: SocketAddr,
    /// The first server's REST API.
    pub http_addr: SocketAddr,
    /// The API client (every server; see the module documentation).
    pub client: Client,
    env: Vec<(String, String)>,
    /// The cgroup tree of this cluster's agents (relative to each hierarchy's root), when
    /// [`Cluster::confine_tasks`] or [`Cluster::host_cgroups`] asked for one; removed on
    /// shutdown.
    cgroup_prefix: Option<String>,
    /// Agents run with `--cgroups required --cgroup-parent <prefix>/<agent>`.
    confine: bool,
    /// Every agent runs inside `<prefix>/<agent>` with these limits: a host of that size.
    host_limits: Option<warden_agent::cgroup::TaskLimits>,
    /// Extra flags for every agent started from now on ([`Cluster::set_agent_args`]).
    agent_args: Vec<String>,
    /// `--reattach-window-ms` of agents started from now on ([`Cluster::set_reattach_window`]).
    reattach_window_ms: u64,
    /// Declared last: dropped after [`Cluster::shutdown`] stopped the servers.
    #[cfg(feature = "etcd")]
    etcd: Option<EtcdBackend>,
}

impl Cluster {
    /// Start a server (no agents yet) using the `warden` executable `exe`.
    pub fn start(exe: &Path) -> Result<Cluster> {
        Self::start_with_env(exe, &[])
    }

    /// Like [`Cluster::start`], with extra environment variables for every process.
    pub fn start_with_env(exe: &Path, env: &[(&str, &str)]) -> Result<Cluster> {
        let mut c = Self::prepare(exe, env, 1)?;
        c.start_server()?;
        Ok(c)
    }

    /// The cluster's directory, addresses and client, no process started yet.
    fn prepare(exe: &Path, env: &[(&str, &str)], servers: usize) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("warden-cluster-")
            .tempdir()?;
        let mut slots = Vec::new();
        for _ in 0..servers.max(1) {
            slots.push(ServerSlot {
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                http_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                store: None,
                proc: None,
            });
        }
        let marker = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "warden-cluster".into());
        let https: Vec<String> = slots
            .iter()
            .map(|s| format!("http://{}", s.http_addr))
            .collect();
        Ok(Cluster {
            exe: exe.to_path_buf(),
            client: Client::for_replicas(&https)?,
            dir,
            marker,
            grpc_addr: slots[0].grpc_addr,
            http_addr: slots[0].http_addr,
            servers: slots,
            agents: BTreeMap::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cgroup_prefix: None,
            confine: false,
            host_limits: None,
            agent_args: Vec::new(),
            reattach_window_ms: 0,
            #[cfg(feature = "etcd")]
            etcd: None,
        })
    }

    /// Run the tasks of agents added from now on in cgroups with their declared limits
    /// (`--cgroups required`), each agent under a cgroup of its own below a prefix unique to
    /// this cluster, removed with everything in it on shutdown. Needs root.
    pub fn confine_tasks(&mut self) {
        self.confine = true;
        self.cgroup_prefix
            .get_or_insert_with(|| format!("{}-cg", sanitize(&self.marker)));
    }

    /// Run every agent added from now on — and what it starts, and the chaos harness's
    /// stressors aimed at it — inside a cgroup of its own, `<prefix>/<agent>`, limited to
    /// `cpu_millis` and `memory_mb` (0: unlimited): each agent gets a host of that size, and a
    /// CPU or memory fault loads that host, not the whole machine. Needs root.
    pub fn host_cgroups(&mut self, cpu_millis: u64, memory_mb: u64) {
        self.host_limits = Some(warden_agent::cgroup::TaskLimits::from_resources(
            cpu_millis, memory_mb, None,
        ));
        self.cgroup_prefix
            .get_or_insert_with(|| format!("{}-cg", sanitize(&self.marker)));
    }

    /// The `cgroup.procs` files (one per hierarchy) of a cgroup for stressors inside agent
    /// `name`'s host: `<prefix>/<agent>/stress`, created if missing, no limits of its own
    /// (the host's apply). A hog of the host in a cgroup of its own, as a service on a
    /// systemd host is, beside the agent rather than inside the agent's cgroup. `None`
    /// without host cgroups.
    pub fn host_stress_cgroup(&self, name: &str) -> Option<Vec<PathBuf>> {
        self.host_limits?;
        let parent = self.agent_cgroup(name)?;
        let layout = warden_agent::cgroup::detect()?;
        let mut procs = Vec::new();
        for h in &layout.hierarchies {
            let dir = h.mount.join(&parent).join("stress");
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(_) => return None,
            }
            procs.push(dir.join("cgroup.procs"));
        }
        Some(procs)
    }

    /// `warden shim-exec --join … --`: the wrapper that starts a process in agent `name`'s
    /// host cgroup, which it creates with the host limits; `None` without host cgroups.
    fn host_wrapper(&self, name: &str) -> Result<Option<Vec<String>>> {
        let (Some(limits), Some(parent)) = (self.host_limits, self.agent_cgroup(name)) else {
            return Ok(None);
        };
        let layout = warden_agent::cgroup::detect()
            .context("host cgroups: no cgroup hierarchy with memory, cpu or pids")?;
        let dirs: Vec<PathBuf> = layout
            .hierarchies
            .iter()
            .map(|h| h.mount.join(&parent))
            .collect();
        for d in &dirs {
            if let Some(up) = d.parent() {
                std::fs::create_dir_all(up)
                    .with_context(|| format!("create cgroup {}", up.display()))?;
            }
        }
        let host = warden_agent::cgroup::TaskCgroup::create(&dirs, &limits)
            .map_err(|e| anyhow::anyhow!("host cgroup of {name}: {e}"))?;
        let mut wrapper = vec![self.exe.display().to_string(), "shim-exec".into()];
        for procs in host.procs_files() {
            wrapper.push("--join".into());
            wrapper.push(procs.display().to_string());
        }
        wrapper.push("--".into());
        Ok(Some(wrapper))
    }

    /// Agents started from now on keep their service copies running for `window` when their
    /// process dies, and take them over when started again (`--reattach-window-ms`; default
    /// 0: tasks die with their agent).
    pub fn set_reattach_window(&mut self, window: Duration) {
        self.reattach_window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    }

    /// Extra `warden agent` flags for every agent started from now on.
    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.agent_args = args.iter().map(|a| (*a).to_string()).collect();
    }

    /// The cgroup parent of agent `name` (relative to each hierarchy's root), when tasks are
    /// confined.
    pub fn agent_cgroup(&self, name: &str) -> Option<String> {
        self.cgroup_prefix
            .as_ref()
            .map(|p| format!("{p}/{}", sanitize(name)))
    }

    /// Start a replicated control plane: an etcd cluster of `etcd_members` real `etcd`
    /// processes, then `servers` `warden server` replicas on it (each through its own proxies
    /// to every member), and wait until one of them leads. `exe` must be built with the
    /// feature `etcd`; `env` goes to every Warden process.
    ///
    /// Ports are picked free and bound moments later by the processes; another process on
    /// this machine (a parallel test) may take one in between. A start that fails with
    /// "Address already in use" is torn down and tried again with new ports, twice at most.
    #[cfg(feature = "etcd")]
    pub fn start_replicated(
        exe: &Path,
        env: &[(&str, &str)],
        servers: usize,
        etcd_members: usize,
    ) -> Result<Cluster> {
        let mut attempt = 0;
        loop {
            match Self::start_replicated_once(exe, env, servers, etcd_members) {
                Err(e) if attempt < 2 && format!("{e:#}").contains("Address already in use") => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    #[cfg(feature = "etcd")]
    fn start_replicated_once(
        exe: &Path,
        env: &[(&str, &str)],
        servers: usize,
        etcd_members: usize,
    ) -> Result<Cluster> {
        let mut c = Self::prepare(exe, env, servers)?;
        let etcd = warden_store::etcd::testing::EtcdCluster::start(etcd_members)
            .context("start the etcd cluster (Debian package etcd-server)")?;
        let members: Vec<SocketAddr> = etcd
            .endpoints()
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .parse::<SocketAddr>()
                    .with_context(|| format!("etcd endpoint {e}"))
            })
            .collect::<Result<_>>()?;
        let mut proxies = Vec::new();
        for slot in &mut c.servers {
            let mine = members
                .iter()
                .map(|m| Proxy::start(*m))
                .collect::<Result<Vec<Proxy>>>()?;
            let hosts: Vec<String> = mine.iter().map(|p| p.addr().to_string()).collect();
            slot.store = Some(format!("etcd://{}{ETCD_PREFIX}", hosts.join(",")));
            proxies.push(mine);
        }
        c.etcd = Some(EtcdBackend {
            proxies,
            cluster: etcd,
        });
        for i in 0..c.servers.len() {
            c.start_server_at(i)?;
        }
        if !wait_until(Duration::from_secs(30), || c.leader().is_some()) {
            bail!(
                "no server became leader; log of server-0:\n{}",
                c.log("server-0")
            );
        }
        Ok(c)
    }

    /// The etcd cluster of a replicated control plane.
    #[cfg(feature = "etcd")]
    pub fn etcd(&self) -> Option<&warden_store::etcd::testing::EtcdCluster> {
        self.etcd.as_ref().map(|e| &e.cluster)
    }

    /// Cut server `i` off from etcd: its proxies to every member stop forwarding, silently
    /// (connections stay open, nothing arrives), as a network partition would.
    #[cfg(feature = "etcd")]
    pub fn cut_store(&self, i: usize) -> Result<()> {
        let e = self
            .etcd
            .as_ref()
            .context("not a replicated control plane")?;
        for p in e.proxies.get(i).with_context(|| format!("no server {i}"))? {
            p.cut();
        }
        Ok(())
    }

    /// Let server `i` reach etcd again.
    #[cfg(feature = "etcd")]
    pub fn heal_store(&self, i: usize) -> Result<()> {
        let e = self
            .etcd
            .as_ref()
            .context("not a replicated control plane")?;
        for p in e.proxies.get(i).with_context(|| format!("no server {i}"))? {
            p.heal();
        }
        Ok(())
    }

    /// The etcd members running now (indices); none without etcd.
    pub fn etcd_running(&self) -> Vec<usize> {
        #[cfg(feature = "etcd")]
        if let Some(e) = &self.etcd {
            return (0..e.cluster.len())
                .filter(|m| e.cluster.pid(*m).is_some())
                .collect();
        }
        Vec::new()
    }

    /// SIGKILL etcd member `m`.
    pub fn kill_etcd(&self, m: usize) -> Result<()> {
        #[cfg(feature = "etcd")]
        if let Some(e) = &self.etcd {
            e.cluster.kill(m);
            return Ok(());
        }
        bail!("etcd member {m}: this cluster has no etcd")
    }

    /// Start etcd member `m` again (same data and ports); does not wait for it to be healthy.
    pub fn restart_etcd(&self, m: usize) -> Result<()> {
        #[cfg(feature = "etcd")]
        if let Some(e) = &self.etcd {
            e.cluster
                .restart(m)
                .with_context(|| format!("restart etcd member {m}"))?;
            return Ok(());
        }
        bail!("etcd member {m}: this cluster has no etcd")
    }

    /// Number of server replicas.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Server `i`'s gRPC address (agent sessions).
    pub fn server_grpc(&self, i: usize) -> Option<SocketAddr> {
        self.servers.get(i).map(|s| s.grpc_addr)
    }

    /// Every server's gRPC address.
    pub fn grpc_addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.grpc_addr).collect()
    }

    /// Server `i`'s REST address.
    pub fn server_http(&self, i: usize) -> Option<SocketAddr> {
        self.servers.get(i).map(|s| s.http_addr)
    }

    /// A client of server `i` alone.
    pub fn server_client(&self, i: usize) -> Result<Client> {
        let addr = self
            .server_http(i)
            .with_context(|| format!("no server {i}"))?;
        Client::new(&format!("http://{addr}"))
    }

    /// Whether server `i`'s process runs (started and not killed by the cluster).
    pub fn server_running(&self, i: usize) -> bool {
        self.servers.get(i).is_some_and(|s| s.proc.is_some())
    }

    /// `GET /v1/leader` of every running server: `(index, answer)`.
    pub fn leader_views(&self) -> Vec<(usize, Value)> {
        (0..self.servers.len())
            .filter(|i| self.server_running(*i))
            .filter_map(|i| Some((i, self.server_client(i).ok()?.get("/v1/leader").ok()?)))
            .collect()
    }

    /// The server that says it leads and acts (`role` leader), with its `GET /v1/leader`;
    /// the one with the highest term if several say so (a deposed leader that has not noticed
    /// yet).
    pub fn leader(&self) -> Option<(usize, Value)> {
        self.leader_views()
            .into_iter()
            .filter(|(_, v)| v.get("role").and_then(Value::as_str) == Some("leader"))
            .max_by_key(|(_, v)| v.get("term").and_then(Value::as_u64).unwrap_or(0))
    }

    /// The `warden` executable the cluster runs.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The cluster's directory (store, agent data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The marker put in every submitted job's environment.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Start `warden ARGS` under `wrapper` (a command prefix such as `ip netns exec NS`, which
    /// must exec the command so that the PID is the process's own).
    fn spawn_wrapped(&self, name: &str, wrapper: &[String], args: &[String]) -> Result<Proc> {
        let logs = self.dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        Ok(Proc {
            child,
            wrapper: wrapper.to_vec(),
            args: args.to_vec(),
        })
    }

    /// The log name of server `i`: `server` for a single server, else `server-<i>`.
    pub fn server_name(&self, i: usize) -> String {
        if self.servers.len() == 1 {
            "server".to_string()
        } else {
            format!("server-{i}")
        }
    }

    /// (Re)start the (first) server process on the same addresses and data.
    pub fn start_server(&mut self) -> Result<()> {
        self.start_server_at(0)
    }

    /// (Re)start server `i` on the same addresses and data (or etcd), and wait until it
    /// answers on its REST address.
    pub fn start_server_at(&mut self, i: usize) -> Result<()> {
        let name = self.server_name(i);
        let slot = self
            .servers
            .get(i)
            .with_context(|| format!("no server {i}"))?;
        let mut args = vec![
            "server".to_string(),
            "--data-dir".into(),
            self.dir.path().join(&name).display().to_string(),
            "--grpc-addr".into(),
            slot.grpc_addr.to_string(),
            "--http-addr".into(),
            slot.http_addr.to_string(),
        ];
        if let Some(store) = &slot.store {
            args.extend(["--store".to_string(), store.clone()]);
        }
        // A profiler around the server (`heaptrack`, `perf record -g --`): the command prefix
        // in WARDEN_SERVER_WRAPPER, split at white space.
        let wrapper: Vec<String> = std::env::var("WARDEN_SERVER_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let proc = self.spawn_wrapped(&name, &wrapper, &args)?;
        self.servers[i].proc = Some(proc);
        let client = self.server_client(i)?;
        if !wait_until(Duration::from_secs(20), || client.get("/healthz").is_ok()) {
            bail!("{name} did not come up; log: {}", self.log(&name));
        }
        Ok(())
    }

    /// SIGKILL the (first) server.
    pub fn kill_server(&mut self) -> Result<()> {
        self.kill_server_at(0)
    }

    /// SIGKILL server `i` and reap it.
    pub fn kill_server_at(&mut self, i: usize) -> Result<()> {
        if let Some(mut p) = self.servers.get_mut(i).and_then(|s| s.proc.take()) {
            p.child.kill()?;
            p.child.wait()?;
        }
        Ok(())
    }

    /// Start an agent called `name` connecting to `server` (default: the cluster's server).
    pub fn add_agent_via(&mut self, name: &str, server: SocketAddr) -> Result<()> {
        self.add_agent_in(name, server, &[], None)
    }

    /// Start an agent called `name` connecting to `server`, under the command prefix
    /// `wrapper` (e.g. `ip netns exec NS`), with its probe listener on `probe_addr` (default:
    /// a free loopback port).
    pub fn add_agent_in(
        &mut self,
        name: &str,
        server: SocketAddr,
        wrapper: &[String],
        probe_addr: Option<SocketAddr>,
    ) -> Result<()> {
        self.add_agent_with(name, &[server], wrapper, probe_addr)
    }

    /// Start an agent called `name` with a session to each of `servers` (every replica of a
    /// replicated control plane, or proxies in front of them), under the command prefix
    /// `wrapper`, with its probe listener on `probe_addr` (default: a free loopback port).
    pub fn add_agent_with(
        &mut self,
        name: &str,
        servers: &[SocketAddr],
        wrapper: &[String],
        probe_addr: Option<SocketAddr>,
    ) -> Result<()> {
        let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
        let mut args = vec![
            "agent".to_string(),
            "--server".into(),
            servers.join(","),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            self.dir.path().join(name).display().to_string(),
            "--cpu-millis".into(),
            "4000".into(),
            "--memory-mb".into(),
            "4096".into(),
        ];
        if let Some(probe) = probe_addr {
            args.extend(["--probe-addr".to_string(), probe.to_string()]);
        }
        match self.agent_cgroup(name).filter(|_| self.confine) {
            Some(parent) => args.extend([
                "--cgroups".to_string(),
                "required".into(),
                "--cgroup-parent".into(),
                parent,
            ]),
            // Scenario jobs declare token resources (10 millicores): confining them would
            // measure the limits, not the detector.
            None => args.extend(["--cgroups".to_string(), "off".into()]),
        }
        // Agents of a harness cluster die with their tasks by default (the detection figures
        // are about hosts and agents failing together); scenarios about agent restarts give
        // them a reattach window.
        args.extend([
            "--reattach-window-ms".to_string(),
            self.reattach_window_ms.to_string(),
        ]);
        args.extend(self.agent_args.iter().cloned());
        // Workloads run as the harness's user (explicitly root when it is root): they are
        // this build's `warden` binary, which need not be reachable by `nobody`. Task
        // isolation has its own tests.
        if let Some(user) = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
        {
            args.extend(["--task-user".to_string(), user]);
        }
        // The host cgroup is joined first: `ip netns exec` mounts a sysfs of the namespace's,
        // without the cgroup file systems.
        let wrapper = match self.host_wrapper(name)? {
            Some(mut host) => {
                host.extend(wrapper.iter().cloned());
                host
            }
            None => wrapper.to_vec(),
        };
        let p = self.spawn_wrapped(name, &wrapper, &args)?;
        self.agents.insert(name.to_string(), p);
        Ok(())
    }

    /// Start an agent called `name`, with a session to every server.
    pub fn add_agent(&mut self, name: &str) -> Result<()> {
        let servers = self.grpc_addrs();
        self.add_agent_with(name, &servers, &[], None)
    }

    /// Start agents `agent-1` … `agent-n` and wait until all are healthy.
    pub fn add_agents(&mut self, n: usize) -> Result<()> {
        for i in 1..=n {
            self.add_agent(&format!("agent-{i}"))?;
        }
        let names: Vec<String> = (1..=n).map(|i| format!("agent-{i}")).collect();
        if !wait_until(Duration::from_secs(20), || {
            names
                .iter()
                .all(|n| self.agent_state(n).as_deref() == Some("healthy"))
        }) {
            bail!(
                "agents did not all turn healthy: {:?}",
                self.client.get("/v1/agents").ok()
            );
        }
        Ok(())
    }

    /// PID of the (first) server process.
    pub fn server_pid(&self) -> Option<i32> {
        self.server_pid_at(0)
    }

    /// PID of server `i`.
    pub fn server_pid_at(&self, i: usize) -> Option<i32> {
        self.servers
            .get(i)
            .and_then(|s| s.proc.as_ref())
            .map(Proc::pid)
    }

    /// PID of an agent process.
    pub fn agent_pid(&self, name: &str) -> Option<i32> {
        self.agents.get(name).map(Proc::pid)
    }

    /// Send `signal` to agent `name`.
    pub fn signal_agent(&self, name: &str, signal: Signal) -> Result<()> {
        let pid = self
            .agent_pid(name)
            .with_context(|| format!("no agent {name}"))?;
        kill(Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// SIGKILL agent `name` and reap it.
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        if let Some(p) = self.agents.get_mut(name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        Ok(())
    }

    /// A host reboot of agent `name`: SIGKILL the agent, then every shim it left running
    /// (found on their sockets in its data directory) with its task's process group, then
    /// start the agent again with the same arguments (and wrapper: a network namespace stays
    /// as it is, cut or not).
    pub fn reboot_agent(&mut self, name: &str) -> Result<()> {
        self.kill_agent(name)?;
        let shims = self.dir.path().join(name).join("shims");
        if let Ok(entries) = std::fs::read_dir(&shims) {
            for e in entries.flatten() {
                let Ok(stream) = std::os::unix::net::UnixStream::connect(e.path()) else {
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut first = String::new();
                let _ =
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut first);
                // `attached <task> <epoch> <pid> <shim_pid>`
                let words: Vec<&str> = first.split_whitespace().collect();
                if let (Some(pid), Some(shim)) = (
                    words.get(3).and_then(|p| p.parse::<i32>().ok()),
                    words.get(4).and_then(|p| p.parse::<i32>().ok()),
                ) {
                    let _ = kill(Pid::from_raw(shim), Signal::SIGKILL);
                    if pid > 0 {
                        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
        self.restart_agent(name)
    }

    /// Start agent `name` again with the same arguments (after a kill).
    pub fn restart_agent(&mut self, name: &str) -> Result<()> {
        let (wrapper, args) = self
            .agents
            .get(name)
            .map(|p| (p.wrapper.clone(), p.args.clone()))
            .with_context(|| format!("no agent {name}"))?;
        self.kill_agent(name)?;
        let p = self.spawn_wrapped(name, &wrapper, &args)?;
        self.agents.insert(name.to_string(), p);
        Ok(())
    }

    /// The agent's state as the server reports it.
    pub fn agent_state(&self, name: &str) -> Option<String> {
        self.agent(name)
            .and_then(|a| a.get("state").and_then(Value::as_str).map(str::to_string))
    }

    /// The agent's entry of `GET /v1/agents`.
    pub fn agent(&self, name: &str) -> Option<Value> {
        let v = self.client.get("/v1/agents").ok()?;
        v.as_array()?
            .iter()
            .find(|a| a.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    }

    /// A job spec as [`Cluster::submit`] sends it (for `warden job plan` and the like).
    pub fn render(&self, toml: &str) -> String {
        let body = toml.replace("{exe}", &self.exe.display().to_string());
        format!(
            "{body}\n[env]\nCLUSTER_MARKER_{} = \"1\"\n",
            sanitize(&self.marker)
        )
    }

    /// Submit a job (TOML without an `[env]` table). `{exe}` is replaced by the `warden`
    /// executable; the cluster's marker is added to its environment so its task processes can
    /// be found in `/proc`.
    pub fn submit(&self, toml: &str) -> Result<Value> {
        let body = self.render(toml);
        self.client
            .request(
                "POST",
                "/v1/jobs",
                Some("application/toml"),
                body.as_bytes(),
            )?
            .json()
    }

    /// Events with a sequence number above `since` (`GET /v1/events`), oldest first; empty
    /// when the server does not answer.
    pub fn events_since(&self, since: u64) -> Vec<Value> {
        self.client
            .get(&format!("/v1/events?since={since}&limit=10000"))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The sequence number of the newest event (0: none).
    pub fn last_event_seq(&self) -> u64 {
        let mut since = 0;
        loop {
            let page = self.events_since(since);
            match page.last().and_then(|e| e["seq"].as_u64()) {
                Some(s) => since = s,
                None => return since,
            }
        }
    }

    /// The task's entry of `GET /v1/tasks`.
    pub fn task(&self, id: &str) -> Option<Value> {
        let v = self.client.get("/v1/tasks").ok()?;
        v.as_array()?
            .iter()
            .find(|t| t.get("id").and_then(Value::as_str) == Some(id))
            .cloned()
    }

    /// Task processes of this cluster that exist now (running or stopped, not zombies).
    pub fn task_procs(&self) -> Vec<TaskProc> {
        scan_task_procs(&self.marker)
    }

    /// The PID of every agent process this cluster started (name → PID; the process may have
    /// been killed since).
    pub fn agent_pids(&self) -> BTreeMap<String, i32> {
        self.agents
            .iter()
            .map(|(name, p)| (name.clone(), p.pid()))
            .collect()
    }

    /// A process's log so far (for failure messages).
    pub fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stop everything: SIGCONT (a paused process cannot exit), then SIGTERM, then SIGKILL
    /// after a deadline.
    pub fn shutdown(&mut self) {
        let mut procs: Vec<Proc> = std::mem::take(&mut self.agents).into_values().collect();
        procs.extend(self.servers.iter_mut().filter_map(|s| s.proc.take()));
        for p in &procs {
            let _ = kill(Pid::from_raw(p.pid()), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(p.pid()), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // Task processes die with their shims; make sure none of ours outlives the cluster.
        let _ = wait_until(Duration::from_secs(5), || self.task_procs().is_empty());
        for t in self.task_procs() {
            let _ = kill(Pid::from_raw(t.pid), Signal::SIGKILL);
        }
        // Shims of killed agents wait for a new agent for their reattach window: ours go now.
        for pid in scan_shim_pids(&self.marker) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(prefix) = self.cgroup_prefix.take()
            && let Some(layout) = warden_agent::cgroup::detect()
        {
            let left = warden_agent::cgroup::remove_tree(&layout, &prefix);
            if !left.is_empty() {
                eprintln!("cgroups left behind: {left:?}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Every process carrying the cluster's marker `marker` in its environment: its pid, its
/// environment variables, and whether it is a shim (shims carry their task's environment).
fn marked_procs(marker: &str) -> Vec<(i32, Vec<u8>, bool)> {
    let key = format!("CLUSTER_MARKER_{}=1", sanitize(marker));
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == key.as_bytes()) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let shim = cmdline.split(|b| *b == 0).nth(1) == Some(b"shim".as_slice());
        out.push((pid, environ, shim));
    }
    out
}

/// Shim processes of the cluster whose marker is `marker`.
pub fn scan_shim_pids(marker: &str) -> Vec<i32> {
    marked_procs(marker)
        .into_iter()
        .filter_map(|(pid, _, shim)| shim.then_some(pid))
        .collect()
}

/// Task processes that exist now (running or stopped, not zombies) of the cluster whose
/// marker is `marker` (see [`Cluster::marker`]). A free function so that a sampler thread can
/// read the ground truth while another thread injects faults into the [`Cluster`].
pub fn scan_task_procs(marker: &str) -> Vec<TaskProc> {
    let mut out = Vec::new();
    // The shim carries its task's environment too; only the task itself counts.
    for (pid, environ, _) in marked_procs(marker).into_iter().filter(|p| !p.2) {
        let get = |name: &str| {
            environ.split(|b| *b == 0).find_map(|v| {
                let s = std::str::from_utf8(v).ok()?;
                s.strip_prefix(name)?.strip_prefix('=').map(str::to_string)
            })
        };
        if !is_alive(pid) {
            continue;
        }
        if let (Some(task), Some(token)) = (get("WARDEN_TASK_ID"), get("WARDEN_FENCING_TOKEN")) {
            out.push(TaskProc {
                pid,
                task,
                token: token.parse().unwrap_or(0),
            });
        }
    }
    out.sort_by_key(|t| t.pid);
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
