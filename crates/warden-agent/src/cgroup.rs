//! Resource isolation with Linux control groups.
//!
//! Every task runs in a cgroup of its own, created by its shim before the task's program is
//! executed and removed after the task ended, with the job's declared resources as limits:
//!
//! | limit | cgroup v2 | cgroup v1 |
//! |---|---|---|
//! | `memory_mb` (hard) | `memory.max`, `memory.swap.max = 0` | `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` |
//! | `cpu_millis` (quota per 100 ms period) | `cpu.max` | `cpu.cfs_quota_us`, `cpu.cfs_period_us` |
//! | `cpu_millis` (weight: 1 core = default weight) | `cpu.weight` | `cpu.shares` |
//! | pids (agent flag `--task-pids-max`) | `pids.max` | `pids.max` |
//!
//! The task's whole process tree stays inside: a child forked by the task is born in its
//! cgroup, and leaving it needs privileges the task does not have. A fork bomb hits the pids
//! limit; a process that left the task's process group (`setsid`) is still found and killed
//! through the cgroup when the task ends.
//!
//! **Layout.** Under a base cgroup per agent (by default `warden-<agent name>` inside the
//! cgroup the agent was started in; `--cgroup-parent` sets it):
//!
//! ```text
//! <base>/agent            the agent and its shims: high CPU weight, memory reserved
//! <base>/workloads/<job>.<index>.<epoch>   one task each
//! ```
//!
//! The agent moves itself into `<base>/agent`, so its heartbeats win the CPU against its
//! tasks (cgroup v2 also forbids processes in a cgroup whose children have controllers
//! enabled). Shims are children of the agent and stay with it: the watchdog that fences a
//! task is never throttled or OOM-killed with it.
//!
//! Both hierarchies are behind this one module: cgroup v2 (the unified hierarchy, what
//! current distributions run) and v1 (separate `memory`, `cpu`, `pids` hierarchies, as on
//! hosts with a hybrid layout). [`detect`] picks v1 when the memory controller is mounted as a
//! v1 hierarchy, else v2 when the unified hierarchy offers the controllers, else none.
//!
//! Writing the files needs root (or a delegated subtree). Without them the agent runs tasks
//! unconfined and says "limits not enforced" in its log and `/metrics`, unless told
//! `--cgroups required`, in which case it refuses to start.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which cgroup interface is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The legacy per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The controllers Warden uses.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// One mounted hierarchy Warden uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory` (v1) or `/sys/fs/cgroup` (v2).
    pub mount: PathBuf,
    /// The Warden controllers it carries (v1: usually one; v2: all that are available).
    pub controllers: Vec<String>,
    /// This process's cgroup in it, relative to the mount (`""` for the root).
    pub own: String,
}

/// The cgroup interface of this host, as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// v1 or v2.
    pub version: Version,
    /// v1: one hierarchy per controller (a hierarchy carrying several appears once); v2: one.
    pub hierarchies: Vec<Hierarchy>,
}

/// One line of `/proc/self/mountinfo` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        // id parent major:minor root point options [optional…] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        out.push(Mount {
            root: unescape(left[3]),
            point: PathBuf::from(unescape(left[4])),
            fstype: right[0].to_string(),
            super_options: right[2].split(',').map(str::to_string).collect(),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && let Ok(b) = u8::from_str_radix(octal, 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/self/cgroup`: `(controllers, path)` per line; v2's line has no controllers.
fn parse_self_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some((controllers, path.to_string()))
        })
        .collect()
}

/// `path` relative to a mount whose root is `root`.
fn relative(path: &str, root: &str) -> String {
    let root = root.trim_end_matches('/');
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.trim_matches('/').to_string()
}

/// Work out the layout from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`;
/// `v2_controllers` reads `cgroup.controllers` of a v2 cgroup. Pure, for tests.
pub fn detect_from(
    mountinfo: &str,
    self_cgroup: &str,
    v2_controllers: impl Fn(&Path) -> Option<String>,
) -> Option<Layout> {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_self_cgroup(self_cgroup);
    let mut v1: Vec<Hierarchy> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        let controllers: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| m.super_options.iter().any(|o| o == *c))
            .map(|c| (*c).to_string())
            .collect();
        if controllers.is_empty() || v1.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        let Some((_, path)) = own
            .iter()
            .find(|(cs, _)| cs.iter().any(|c| c == &controllers[0]))
        else {
            continue;
        };
        v1.push(Hierarchy {
            mount: m.point.clone(),
            own: relative(path, &m.root),
            controllers,
        });
    }
    let unified = mounts.iter().find(|m| m.fstype == "cgroup2");
    if v1
        .iter()
        .any(|h| h.controllers.iter().any(|c| c == "memory"))
    {
        // A hybrid host: the unified hierarchy carries no controller, but it has pressure
        // stall information per cgroup. Tasks join it too, for their PSI (and `cgroup.kill`).
        if let Some(u) = unified
            && let Some((_, path)) = own.iter().find(|(cs, _)| cs.is_empty())
        {
            v1.push(Hierarchy {
                mount: u.point.clone(),
                controllers: Vec::new(),
                own: relative(path, &u.root),
            });
        }
        return Some(Layout {
            version: Version::V1,
            hierarchies: v1,
        });
    }
    let unified = unified?;
    let (_, path) = own.iter().find(|(cs, _)| cs.is_empty())?;
    let own = relative(path, &unified.root);
    let available = v2_controllers(&unified.point.join(&own))
        .or_else(|| v2_controllers(&unified.point))
        .unwrap_or_default();
    let controllers: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| (*c).to_string())
        .collect();
    if controllers.is_empty() {
        return None;
    }
    Some(Layout {
        version: Version::V2,
        hierarchies: vec![Hierarchy {
            mount: unified.point.clone(),
            controllers,
            own,
        }],
    })
}

/// The layout of this host for this process, or `None` when no usable controller is mounted.
pub fn detect() -> Option<Layout> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    detect_from(&mountinfo, &self_cgroup, |dir| {
        std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
    })
}

/// Limits of one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskLimits {
    /// Hard memory limit, bytes (the task is OOM-killed above it).
    pub memory_max: Option<u64>,
    /// Soft memory mark, bytes: above it the task's memory is reclaimed first (v2
    /// `memory.high`, v1 `memory.soft_limit_in_bytes`).
    pub memory_high: Option<u64>,
    /// CPU in millicores: the quota per period, and the weight.
    pub cpu_millis: Option<u64>,
    /// Most processes and threads the task may have at once.
    pub pids_max: Option<u64>,
}

/// The CPU period the quota is measured over.
pub const CPU_PERIOD: Duration = Duration::from_millis(100);

/// The smallest CPU quota the kernel accepts (1 ms).
const MIN_QUOTA_US: u64 = 1_000;

impl TaskLimits {
    /// Limits from a job's declared resources; zero means "not limited".
    pub fn from_resources(cpu_millis: u64, memory_mb: u64, pids_max: Option<u64>) -> TaskLimits {
        TaskLimits {
            memory_max: (memory_mb > 0).then(|| memory_mb.saturating_mul(1024 * 1024)),
            memory_high: None,
            cpu_millis: (cpu_millis > 0).then_some(cpu_millis),
            pids_max,
        }
    }

    /// The same limits with a soft memory mark of `memory_high_mb` MiB (0: none).
    #[must_use]
    pub fn with_memory_high(mut self, memory_high_mb: u64) -> TaskLimits {
        self.memory_high = (memory_high_mb > 0).then(|| memory_high_mb.saturating_mul(1024 * 1024));
        self
    }

    /// `mem=<bytes>,cpu=<millis>,pids=<n>`, the shim's `--limits` value; absent limits are
    /// left out. [`TaskLimits::parse`] reads it back.
    pub fn to_arg(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.memory_max {
            parts.push(format!("mem={m}"));
        }
        if let Some(h) = self.memory_high {
            parts.push(format!("high={h}"));
        }
        if let Some(c) = self.cpu_millis {
            parts.push(format!("cpu={c}"));
        }
        if let Some(p) = self.pids_max {
            parts.push(format!("pids={p}"));
        }
        parts.join(",")
    }

    /// Parse a `--limits` value.
    pub fn parse(text: &str) -> Result<TaskLimits, String> {
        let mut limits = TaskLimits::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("limit {part:?} is not key=value"))?;
            let n: u64 = value
                .parse()
                .map_err(|_| format!("limit {key}={value:?} is not a whole number"))?;
            if n == 0 {
                return Err(format!("limit {key}=0 would stop the task from running"));
            }
            let slot = match key {
                "mem" => &mut limits.memory_max,
                "high" => &mut limits.memory_high,
                "cpu" => &mut limits.cpu_millis,
                "pids" => &mut limits.pids_max,
                other => return Err(format!("unknown limit {other:?}")),
            };
            if slot.replace(n).is_some() {
                return Err(format!("limit {key} given twice"));
            }
        }
        Ok(limits)
    }

    fn quota_us(cpu_millis: u64) -> u64 {
        let period_us = CPU_PERIOD.as_micros() as u64;
        (cpu_millis.saturating_mul(period_us) / 1000).max(MIN_QUOTA_US)
    }

    /// cgroup v2 `cpu.weight` (1–10000, default 100 = one core).
    fn weight_v2(cpu_millis: u64) -> u64 {
        (cpu_millis / 10).clamp(1, 10_000)
    }

    /// cgroup v1 `cpu.shares` (2–262144, default 1024 = one core).
    fn shares_v1(cpu_millis: u64) -> u64 {
        (cpu_millis.saturating_mul(1024) / 1000).clamp(2, 262_144)
    }
}

/// A failed cgroup operation, naming the file.
#[derive(Debug)]
pub struct CgroupError {
    /// What was being done.
    pub what: String,
    /// The file or directory.
    pub path: PathBuf,
    /// Why it failed.
    pub source: io::Error,
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.what,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for CgroupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn write_file(path: &Path, value: &str, what: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError {
        what: format!("{what}: write {value:?}"),
        path: path.to_path_buf(),
        source,
    })
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError {
            what: "create cgroup".into(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A cgroup directory is a v2 one when it has `cgroup.controllers`.
fn is_v2(dir: &Path) -> bool {
    dir.join("cgroup.controllers").exists()
}

/// One task's cgroup: a directory per hierarchy (one under v2). Created by the shim before
/// the task runs; [`TaskCgroup::remove`] kills what is left in it and removes it.
#[derive(Debug)]
pub struct TaskCgroup {
    dirs: Vec<PathBuf>,
}

impl TaskCgroup {
    /// Create the directories and write `limits` into whichever of them has the controller.
    /// A directory that already exists (left by a shim that died) is reused after killing
    /// what runs in it. Fails, naming the file, when a limit cannot be set: a task that must
    /// be limited is never started unconfined.
    pub fn create(dirs: &[PathBuf], limits: &TaskLimits) -> Result<TaskCgroup, CgroupError> {
        let cgroup = TaskCgroup {
            dirs: dirs.to_vec(),
        };
        for dir in dirs {
            let existed = dir.exists();
            make_dir(dir)?;
            if existed {
                cgroup.kill_all(Duration::from_secs(1));
            }
        }
        if let Err(e) = cgroup.apply(limits) {
            cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn apply(&self, limits: &TaskLimits) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let has = |file: &str| dir.join(file).exists();
            if is_v2(dir) {
                // The controllers this cgroup has: none in a hybrid host's unified hierarchy
                // (joined for pressure information only). Under a v2 host the agent's setup
                // enabled them all, or refused to start.
                let offered =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let on = |c: &str| offered.split_whitespace().any(|x| x == c);
                if !on("memory") && !on("cpu") && !on("pids") {
                    continue;
                }
                if let Some(h) = limits.memory_high {
                    write_file(&dir.join("memory.high"), &h.to_string(), "soft memory mark")?;
                }
                if let Some(m) = limits.memory_max {
                    write_file(&dir.join("memory.max"), &m.to_string(), "memory limit")?;
                    if has("memory.swap.max") {
                        write_file(&dir.join("memory.swap.max"), "0", "swap limit")?;
                    }
                }
                if let Some(c) = limits.cpu_millis {
                    let max = format!("{} {}", TaskLimits::quota_us(c), CPU_PERIOD.as_micros());
                    write_file(&dir.join("cpu.max"), &max, "CPU quota")?;
                    let weight = TaskLimits::weight_v2(c).to_string();
                    write_file(&dir.join("cpu.weight"), &weight, "CPU weight")?;
                }
                if let Some(p) = limits.pids_max {
                    write_file(&dir.join("pids.max"), &p.to_string(), "pids limit")?;
                }
                continue;
            }
            if let Some(m) = limits.memory_max
                && has("memory.limit_in_bytes")
            {
                write_file(
                    &dir.join("memory.limit_in_bytes"),
                    &m.to_string(),
                    "memory limit",
                )?;
                // memory + swap: no swapping around the limit (needs swap accounting).
                if has("memory.memsw.limit_in_bytes") {
                    write_file(
                        &dir.join("memory.memsw.limit_in_bytes"),
                        &m.to_string(),
                        "memory+swap limit",
                    )?;
                }
            }
            if let Some(h) = limits.memory_high
                && has("memory.soft_limit_in_bytes")
            {
                write_file(
                    &dir.join("memory.soft_limit_in_bytes"),
                    &h.to_string(),
                    "soft memory mark",
                )?;
            }
            if let Some(c) = limits.cpu_millis
                && has("cpu.cfs_quota_us")
            {
                let period = CPU_PERIOD.as_micros().to_string();
                write_file(&dir.join("cpu.cfs_period_us"), &period, "CPU period")?;
                let quota = TaskLimits::quota_us(c).to_string();
                write_file(&dir.join("cpu.cfs_quota_us"), &quota, "CPU quota")?;
                let shares = TaskLimits::shares_v1(c).to_string();
                write_file(&dir.join("cpu.shares"), &shares, "CPU shares")?;
            }
            if let Some(p) = limits.pids_max
                && has("pids.max")
            {
                write_file(&dir.join("pids.max"), &p.to_string(), "pids limit")?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to, to join the task's cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Processes still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.dirs.iter().flat_map(|d| read_pids(d)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILL everything in the cgroup, until it is empty or `bound` passed. Uses
    /// `cgroup.kill` where the kernel has it (v2, Linux 5.14+), which cannot miss a process
    /// forked meanwhile; else kills the listed pids in rounds (a task at its pids limit, or
    /// killed, cannot fork any more). Returns whether the cgroup is empty.
    pub fn kill_all(&self, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        let kill_files: Vec<PathBuf> = self
            .dirs
            .iter()
            .map(|d| d.join("cgroup.kill"))
            .filter(|f| f.exists())
            .collect();
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            let killed_by_file =
                !kill_files.is_empty() && kill_files.iter().all(|f| std::fs::write(f, "1").is_ok());
            if !killed_by_file {
                for pid in pids {
                    // A pid read from cgroup.procs stays the cgroup's until it is reaped;
                    // ESRCH just means it is gone already.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if Instant::now() >= until {
                return self.pids().is_empty();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// OOM kills in this cgroup so far (v2 `memory.events`, v1 `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .filter_map(|d| {
                let text = std::fs::read_to_string(d.join("memory.events"))
                    .or_else(|_| std::fs::read_to_string(d.join("memory.oom_control")))
                    .ok()?;
                stat_value(&text, "oom_kill")
            })
            .sum()
    }

    /// Kill what is left and remove the directories (retrying briefly while killed processes
    /// exit). Returns the directories that could not be removed.
    pub fn remove(&self) -> Vec<PathBuf> {
        self.kill_all(Duration::from_secs(2));
        let until = Instant::now() + Duration::from_secs(2);
        let mut left = Vec::new();
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => {
                        left.push(dir.clone());
                        break;
                    }
                }
            }
        }
        left
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == key).then(|| words.next()?.parse().ok())?
    })
}

/// Usage figures of one task's cgroup, read while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// CPU time used so far, microseconds.
    pub cpu_usage_us: u64,
    /// Periods in which the task ran, and those in which it was throttled (CFS bandwidth).
    pub periods: u64,
    /// Periods throttled.
    pub throttled_periods: u64,
    /// OOM kills so far.
    pub oom_kills: u64,
    /// The memory limit, bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// CPU pressure: share of the last 10 s in which some of the task's processes waited for
    /// a CPU (PSI `some avg10`, 0–100), where the kernel keeps it per cgroup.
    pub cpu_pressure: Option<f64>,
    /// Memory pressure: share of the last 10 s in which some of them stalled on memory.
    pub memory_pressure: Option<f64>,
}

/// `some avg10` of a PSI file.
fn psi_some_avg10(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Read the usage of the task cgroup made of `dirs` (one per hierarchy).
pub fn usage(dirs: &[PathBuf]) -> Usage {
    let mut u = Usage::default();
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    for dir in dirs {
        if let Some(t) =
            read(dir.join("memory.current")).or_else(|| read(dir.join("memory.usage_in_bytes")))
        {
            u.memory_bytes = t.trim().parse().unwrap_or(0);
        }
        if let Some(t) =
            read(dir.join("memory.max")).or_else(|| read(dir.join("memory.limit_in_bytes")))
        {
            // v2 says "max"; v1 an unreachable page-rounded 2^63.
            u.memory_limit = t.trim().parse::<u64>().ok().filter(|l| *l < 1 << 62);
        }
        if let Some(p) = read(dir.join("cpu.pressure"))
            .as_deref()
            .and_then(psi_some_avg10)
        {
            u.cpu_pressure = Some(p);
        }
        if let Some(p) = read(dir.join("memory.pressure"))
            .as_deref()
            .and_then(psi_some_avg10)
        {
            u.memory_pressure = Some(p);
        }
        if let Some(t) = read(dir.join("cpu.stat")) {
            u.periods = stat_value(&t, "nr_periods").unwrap_or(u.periods);
            u.throttled_periods = stat_value(&t, "nr_throttled").unwrap_or(u.throttled_periods);
            if let Some(us) = stat_value(&t, "usage_usec") {
                u.cpu_usage_us = us;
            }
        }
        if let Some(t) = read(dir.join("cpuacct.usage")) {
            u.cpu_usage_us = t.trim().parse::<u64>().unwrap_or(0) / 1000;
        }
        if let Some(t) =
            read(dir.join("memory.events")).or_else(|| read(dir.join("memory.oom_control")))
        {
            u.oom_kills = stat_value(&t, "oom_kill").unwrap_or(0);
        }
    }
    u
}

/// A change worth telling about a running task, from two [`Usage`] samples of its cgroup.
#[derive(Debug, Clone, PartialEq)]
pub enum UsageSignal {
    /// Throttled by its CPU quota in at least 90 % of the periods it ran in since the last
    /// sample (it wants more CPU than it declared).
    Throttled {
        /// Share of periods throttled.
        ratio: f64,
    },
    /// No longer throttled (under 50 % of the periods).
    ThrottledCleared {
        /// Share of periods throttled.
        ratio: f64,
    },
    /// Memory in use reached 90 % of its limit.
    MemoryHigh {
        /// Bytes in use.
        used: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// Some of the task's processes waited for `resource` (`cpu` or `memory`) in at least
    /// half of the last 10 s (pressure stall information): starved, whatever its quota.
    Pressure {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// `some avg10`, percent.
        percent: f64,
    },
    /// Pressure on `resource` back under 20 %.
    PressureCleared {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// `some avg10`, percent.
        percent: f64,
    },
    /// Memory back under 80 % of its limit.
    MemoryCleared {
        /// Bytes in use.
        used: u64,
        /// The limit, bytes.
        limit: u64,
    },
}

impl UsageSignal {
    /// The report message: `throttled: …` or `memory_high: …`, the prefixes the controller
    /// turns into `task.throttled` and `task.memory_high` events.
    pub fn message(&self) -> String {
        let mib = |b: u64| b / (1024 * 1024);
        match self {
            UsageSignal::Throttled { ratio } => format!(
                "throttled: held back by its CPU quota in {:.0} % of periods (it wants more than \
                 its cpu_millis)",
                ratio * 100.0
            ),
            UsageSignal::ThrottledCleared { ratio } => {
                format!("throttled: over ({:.0} % of periods now)", ratio * 100.0)
            }
            UsageSignal::MemoryHigh { used, limit } => format!(
                "memory_high: {} MiB of its {} MiB limit in use (past the limit it is OOM-killed)",
                mib(*used),
                mib(*limit)
            ),
            UsageSignal::Pressure { resource, percent } => format!(
                "pressure: its processes waited for {resource} {percent:.0} % of the last 10 s"
            ),
            UsageSignal::PressureCleared { resource, percent } => {
                format!("pressure: over for {resource} ({percent:.0} % of the last 10 s now)")
            }
            UsageSignal::MemoryCleared { used, limit } => format!(
                "memory_high: over ({} MiB of {} MiB now)",
                mib(*used),
                mib(*limit)
            ),
        }
    }
}

/// Follows the cgroup usage of running tasks between samples and says when one starts or
/// stops being throttled most of the time, or nears its memory limit (with hysteresis, so a
/// task at the edge does not flap).
#[derive(Debug, Default)]
pub struct UsageWatch {
    tasks: std::collections::HashMap<String, Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    last: Usage,
    throttled: bool,
    memory_high: bool,
    /// Under pressure, per resource: cpu, memory.
    pressure: [bool; 2],
}

/// Fewest CPU periods between two samples for a throttling verdict.
const MIN_PERIODS: u64 = 10;

impl UsageWatch {
    /// A watch with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new sample of task `name`'s cgroup; the signals it raises.
    pub fn observe(&mut self, name: &str, now: Usage) -> Vec<UsageSignal> {
        let w = self.tasks.entry(name.to_string()).or_default();
        let mut out = Vec::new();
        let periods = now.periods.saturating_sub(w.last.periods);
        if periods >= MIN_PERIODS {
            let ratio = now
                .throttled_periods
                .saturating_sub(w.last.throttled_periods) as f64
                / periods as f64;
            if !w.throttled && ratio >= 0.9 {
                w.throttled = true;
                out.push(UsageSignal::Throttled { ratio });
            } else if w.throttled && ratio < 0.5 {
                w.throttled = false;
                out.push(UsageSignal::ThrottledCleared { ratio });
            }
        }
        for (i, (resource, value)) in [("cpu", now.cpu_pressure), ("memory", now.memory_pressure)]
            .into_iter()
            .enumerate()
        {
            let Some(percent) = value else { continue };
            if !w.pressure[i] && percent >= 50.0 {
                w.pressure[i] = true;
                out.push(UsageSignal::Pressure { resource, percent });
            } else if w.pressure[i] && percent < 20.0 {
                w.pressure[i] = false;
                out.push(UsageSignal::PressureCleared { resource, percent });
            }
        }
        if let Some(limit) = now.memory_limit.filter(|l| *l > 0) {
            let used = now.memory_bytes;
            if !w.memory_high && used.saturating_mul(10) >= limit.saturating_mul(9) {
                w.memory_high = true;
                out.push(UsageSignal::MemoryHigh { used, limit });
            } else if w.memory_high && used.saturating_mul(10) < limit.saturating_mul(8) {
                w.memory_high = false;
                out.push(UsageSignal::MemoryCleared { used, limit });
            }
        }
        w.last = now;
        out
    }

    /// Forget every task not in `names` (ended copies).
    pub fn retain(&mut self, names: &std::collections::HashSet<String>) {
        self.tasks.retain(|n, _| names.contains(n));
    }
}

/// What the agent asks for itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// CPU kept for the agent, millicores (sets its CPU weight well above its tasks').
    pub cpu_millis: u64,
    /// Memory kept for the agent, MiB (v2 `memory.min`; v1 has no such guarantee).
    pub memory_mb: u64,
}

/// The agent's cgroups: its base, its own leaf, and the parent of its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCgroups {
    /// v1 or v2.
    pub version: Version,
    /// `<base>` per hierarchy.
    bases: Vec<PathBuf>,
    /// Where the agent was before it moved itself (its `cgroup.procs` per hierarchy).
    origin: Vec<PathBuf>,
}

/// The parent of the task cgroups under the agent's base (not `tasks`: every v1 cgroup has a
/// file of that name).
pub const TASKS_DIR: &str = "workloads";

/// The CPU weight of the agent's own cgroup (v2; the tasks' parent has the default 100).
const AGENT_WEIGHT_V2: u64 = 10_000;
/// The CPU shares of the agent's own cgroup (v1; tasks' parent has the default 1024).
const AGENT_SHARES_V1: u64 = 10 * 1024;

/// The name of the cgroup of `task` at `epoch`: `<job>.<index>.<epoch>`.
pub fn task_cgroup_name(task: &warden_core::TaskId, epoch: warden_core::FencingToken) -> String {
    format!("{}.{}.{}", task.job, task.index, epoch.0)
}

/// A name usable as one path component.
pub fn component(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        format!("_{clean}")
    } else {
        clean
    }
}

impl AgentCgroups {
    /// Create the agent's cgroups, move this process into `<base>/agent`, and give it its
    /// weight and reservation. `parent` (relative to each hierarchy's root) overrides the
    /// default base, `warden-<agent>` inside the agent's own cgroup. Leftover task cgroups
    /// of an earlier run are left alone: the tasks of adopted shims still run in them (see
    /// [`AgentCgroups::remove_stale_tasks`]).
    pub fn setup(
        layout: &Layout,
        parent: Option<&str>,
        agent: &str,
        reserve: Reservation,
    ) -> Result<AgentCgroups, CgroupError> {
        let leaf = format!("warden-{}", component(agent));
        let mut bases = Vec::new();
        let mut origin = Vec::new();
        for h in &layout.hierarchies {
            let base = match parent {
                Some(p) => h.mount.join(p.trim_matches('/')),
                None => {
                    // Restarted agent: it is still in `<base>/agent`.
                    let own = h
                        .own
                        .strip_suffix(&format!("{leaf}/agent"))
                        .map_or(h.own.as_str(), |s| s.trim_end_matches('/'));
                    h.mount.join(own).join(&leaf)
                }
            };
            origin.push(h.mount.join(&h.own).join("cgroup.procs"));
            bases.push(base);
        }
        let cgroups = AgentCgroups {
            version: layout.version,
            bases,
            origin,
        };
        for base in &cgroups.bases {
            std::fs::create_dir_all(base).map_err(|source| CgroupError {
                what: "create the agent's cgroup".into(),
                path: base.clone(),
                source,
            })?;
            make_dir(&base.join("agent"))?;
            make_dir(&base.join(TASKS_DIR))?;
            // The agent first, so that under v2 `<base>` holds no process when its
            // controllers are enabled for its children.
            write_file(
                &base.join("agent").join("cgroup.procs"),
                &std::process::id().to_string(),
                "move the agent into its cgroup",
            )?;
        }
        for base in &cgroups.bases {
            match layout.version {
                Version::V2 => {
                    let enable: Vec<String> = layout.hierarchies[0]
                        .controllers
                        .iter()
                        .map(|c| format!("+{c}"))
                        .collect();
                    let enable = enable.join(" ");
                    // The ancestors between the mount and the base must pass the controllers
                    // down too: the agent's own cgroup (empty now that the agent moved out
                    // of it) and any level of --cgroup-parent. Best effort: a level that holds
                    // processes refuses, and then the base's own write below names the
                    // problem.
                    let mount = &layout.hierarchies[0].mount;
                    let mut ancestors: Vec<&Path> = base
                        .ancestors()
                        .skip(1)
                        .take_while(|a| a.starts_with(mount))
                        .collect();
                    ancestors.reverse();
                    for dir in ancestors {
                        let _ = std::fs::write(dir.join("cgroup.subtree_control"), &enable);
                    }
                    for dir in [base.clone(), base.join(TASKS_DIR)] {
                        write_file(
                            &dir.join("cgroup.subtree_control"),
                            &enable,
                            "enable controllers (is the subtree delegated?)",
                        )?;
                    }
                    write_file(
                        &base.join("agent").join("cpu.weight"),
                        &AGENT_WEIGHT_V2.to_string(),
                        "agent CPU weight",
                    )?;
                    if reserve.memory_mb > 0 {
                        write_file(
                            &base.join("agent").join("memory.min"),
                            &(reserve.memory_mb * 1024 * 1024).to_string(),
                            "agent memory reservation",
                        )?;
                    }
                }
                Version::V1 => {
                    let shares = base.join("agent").join("cpu.shares");
                    if shares.exists() {
                        write_file(&shares, &AGENT_SHARES_V1.to_string(), "agent CPU shares")?;
                    }
                }
            }
        }
        Ok(cgroups)
    }

    /// The cgroup directories of task `name` (`<job>.<index>.<epoch>`), one per hierarchy.
    pub fn task_dirs(&self, name: &str) -> Vec<PathBuf> {
        let name = component(name);
        self.bases
            .iter()
            .map(|b| b.join(TASKS_DIR).join(&name))
            .collect()
    }

    /// `<base>` per hierarchy.
    pub fn bases(&self) -> &[PathBuf] {
        &self.bases
    }

    /// Kill and remove every task cgroup but those named in `keep` (`<job>.<index>.<epoch>`,
    /// see [`task_cgroup_name`]): left by an earlier agent process whose shims are gone.
    pub fn remove_stale_tasks(&self, keep: &std::collections::HashSet<String>) {
        for base in &self.bases {
            let Ok(entries) = std::fs::read_dir(base.join(TASKS_DIR)) else {
                continue;
            };
            for entry in entries.flatten() {
                let kept = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| keep.iter().any(|k| component(k) == n));
                if entry.path().is_dir() && !kept {
                    let stale = TaskCgroup {
                        dirs: vec![entry.path()],
                    };
                    let _ = stale.remove();
                }
            }
        }
    }

    /// On a clean exit: move the agent back where it came from and remove its cgroups
    /// (tasks first; a cgroup still holding a process stays). Returns what stayed.
    pub fn teardown(&self) -> Vec<PathBuf> {
        let pid = std::process::id().to_string();
        for procs in &self.origin {
            let _ = std::fs::write(procs, &pid);
        }
        self.remove_stale_tasks(&std::collections::HashSet::new());
        let mut left = Vec::new();
        for base in &self.bases {
            for dir in [base.join(TASKS_DIR), base.join("agent"), base.clone()] {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => left.push(dir),
                }
            }
        }
        left
    }
}

/// Remove the cgroup `rel` (relative to each hierarchy's root) and everything under it, in
/// every hierarchy of `layout`: processes still inside are killed, directories removed
/// bottom-up (retrying for a while as killed processes exit). For harnesses that gave agents
/// a `--cgroup-parent` of their own. Returns the directories that could not be removed.
pub fn remove_tree(layout: &Layout, rel: &str) -> Vec<PathBuf> {
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    collect(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let rel = rel.trim_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    let mut left = Vec::new();
    for h in &layout.hierarchies {
        let top = h.mount.join(rel);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect(&top, &mut dirs);
        // Children come before their parents.
        for dir in dirs {
            let cgroup = TaskCgroup {
                dirs: vec![dir.clone()],
            };
            left.extend(cgroup.remove());
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory
32 25 0:30 / /sys/fs/cgroup/pids rw shared:16 - cgroup cgroup rw,pids
";
    const HYBRID_SELF: &str = "\
12:pids:/system.slice/warden-agent.service
5:memory:/system.slice/warden-agent.service
3:cpu,cpuacct:/system.slice/warden-agent.service
1:name=systemd:/system.slice/warden-agent.service
0::/system.slice/warden-agent.service
";

    #[test]
    fn hybrid_hosts_use_the_v1_hierarchies() {
        let layout =
            detect_from(HYBRID_MOUNTINFO, HYBRID_SELF, |_| Some(String::new())).expect("layout");
        assert_eq!(layout.version, Version::V1);
        let names: Vec<_> = layout
            .hierarchies
            .iter()
            .map(|h| (h.mount.display().to_string(), h.controllers.join(",")))
            .collect();
        assert_eq!(
            names,
            [
                ("/sys/fs/cgroup/cpu,cpuacct".to_string(), "cpu".to_string()),
                ("/sys/fs/cgroup/memory".into(), "memory".into()),
                ("/sys/fs/cgroup/pids".into(), "pids".into()),
                // For pressure information only.
                ("/sys/fs/cgroup/unified".into(), String::new()),
            ]
        );
        assert_eq!(
            psi_some_avg10("some avg10=12.50 avg60=3.00 avg300=0.00 total=9\nfull avg10=1.00"),
            Some(12.5)
        );
        assert!(
            layout
                .hierarchies
                .iter()
                .all(|h| h.own == "system.slice/warden-agent.service")
        );
    }

    #[test]
    fn unified_hosts_use_v2_with_the_controllers_offered() {
        let mountinfo =
            "25 30 0:23 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = detect_from(mountinfo, "0::/user.slice/x.scope\n", |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/user.slice/x.scope"));
            Some("cpuset cpu io memory pids\n".into())
        })
        .expect("layout");
        assert_eq!(layout.version, Version::V2);
        assert_eq!(layout.hierarchies[0].controllers, ["memory", "cpu", "pids"]);
        assert_eq!(layout.hierarchies[0].own, "user.slice/x.scope");
        // No controller offered: nothing usable.
        assert_eq!(
            detect_from(mountinfo, "0::/\n", |_| Some("io\n".into())),
            None
        );
    }

    #[test]
    fn a_mount_of_a_subtree_gives_paths_relative_to_it() {
        let mountinfo =
            "31 25 0:29 /kubepods/pod1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let layout =
            detect_from(mountinfo, "5:memory:/kubepods/pod1/ctr\n", |_| None).expect("layout");
        assert_eq!(layout.hierarchies[0].own, "ctr");
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    #[test]
    fn limits_round_trip_and_refuse_nonsense() {
        let limits = TaskLimits::from_resources(200, 64, Some(512)).with_memory_high(48);
        assert_eq!(limits.memory_max, Some(64 << 20));
        assert_eq!(limits.memory_high, Some(48 << 20));
        assert_eq!(TaskLimits::parse(&limits.to_arg()), Ok(limits));
        assert_eq!(TaskLimits::from_resources(0, 0, None).to_arg(), "");
        assert_eq!(TaskLimits::parse(""), Ok(TaskLimits::default()));
        for (bad, want) in [
            ("mem", "not key=value"),
            ("mem=x", "not a whole number"),
            ("cpu=0", "would stop the task"),
            ("swap=1", "unknown limit"),
            ("pids=1,pids=2", "given twice"),
        ] {
            let err = TaskLimits::parse(bad).expect_err(bad);
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_millis_map_to_quota_weight_and_shares() {
        assert_eq!(TaskLimits::quota_us(200), 20_000);
        assert_eq!(TaskLimits::quota_us(1), MIN_QUOTA_US);
        assert_eq!(TaskLimits::quota_us(2_500), 250_000);
        assert_eq!(TaskLimits::weight_v2(1000), 100);
        assert_eq!(TaskLimits::weight_v2(1), 1);
        assert_eq!(TaskLimits::shares_v1(1000), 1024);
        assert_eq!(TaskLimits::shares_v1(1), 2);
    }

    #[test]
    fn the_usage_watch_raises_and_clears_with_hysteresis() {
        let mib = 1024 * 1024;
        let sample = |periods, throttled, memory| Usage {
            periods,
            throttled_periods: throttled,
            memory_bytes: memory * mib,
            memory_limit: Some(64 * mib),
            ..Usage::default()
        };
        let mut w = UsageWatch::new();
        assert_eq!(w.observe("a", sample(0, 0, 10)), []);
        // 95 of 100 periods throttled.
        assert_eq!(
            w.observe("a", sample(100, 95, 10)),
            [UsageSignal::Throttled { ratio: 0.95 }]
        );
        // Still throttled at 70 %: no change.
        assert_eq!(w.observe("a", sample(200, 165, 10)), []);
        // Too few periods to judge (an idle task).
        assert_eq!(w.observe("a", sample(205, 165, 10)), []);
        assert_eq!(
            w.observe("a", sample(305, 175, 10)),
            [UsageSignal::ThrottledCleared { ratio: 0.1 }]
        );
        // Memory: 58 of 64 MiB is past 90 %; 55 keeps it (hysteresis); 40 clears it.
        let high = w.observe("a", sample(305, 175, 58));
        assert!(
            matches!(high[..], [UsageSignal::MemoryHigh { .. }]),
            "{high:?}"
        );
        assert!(
            high[0]
                .message()
                .starts_with("memory_high: 58 MiB of its 64 MiB")
        );
        assert_eq!(w.observe("a", sample(305, 175, 55)), []);
        assert!(matches!(
            w.observe("a", sample(305, 175, 40))[..],
            [UsageSignal::MemoryCleared { .. }]
        ));
        // Pressure: raised at half the time, cleared under a fifth.
        let pressed = |cpu| Usage {
            cpu_pressure: Some(cpu),
            ..Usage::default()
        };
        assert!(matches!(
            w.observe("c", pressed(62.0))[..],
            [UsageSignal::Pressure {
                resource: "cpu",
                ..
            }]
        ));
        assert_eq!(w.observe("c", pressed(30.0)), []);
        let over = w.observe("c", pressed(5.0));
        assert!(
            matches!(over[..], [UsageSignal::PressureCleared { .. }]),
            "{over:?}"
        );
        assert!(over[0].message().starts_with("pressure: over for cpu"));
        // No limit: no memory signal.
        let unlimited = Usage {
            memory_bytes: u64::MAX / 2,
            ..Usage::default()
        };
        assert_eq!(w.observe("b", unlimited), []);
        w.retain(&["b".to_string()].into());
        assert!(!w.tasks.contains_key("a"));
        assert!(
            UsageSignal::Throttled { ratio: 0.93 }
                .message()
                .starts_with("throttled: held back by its CPU quota in 93 %")
        );
    }

    /// `setup` on a v2 layout, against a plain directory standing in for the cgroup
    /// filesystem (the kernel would create the interface files; here the writes do): what it
    /// writes where.
    #[test]
    fn v2_setup_passes_the_controllers_down_and_weights_the_agent() {
        let fs = tempfile::tempdir().expect("tempdir");
        let mount = fs.path().to_path_buf();
        let own = "system.slice/warden-agent.service";
        std::fs::create_dir_all(mount.join(own)).expect("own cgroup");
        let layout = Layout {
            version: Version::V2,
            hierarchies: vec![Hierarchy {
                mount: mount.clone(),
                controllers: vec!["memory".into(), "cpu".into(), "pids".into()],
                own: own.into(),
            }],
        };
        let reserve = Reservation {
            cpu_millis: 100,
            memory_mb: 64,
        };
        let cg = AgentCgroups::setup(&layout, None, "node 1", reserve).expect("setup");
        let base = mount.join(own).join("warden-node_1");
        assert_eq!(cg.bases(), std::slice::from_ref(&base));
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("written");
        assert_eq!(
            read(base.join("agent/cgroup.procs")),
            std::process::id().to_string()
        );
        for dir in [
            mount.join("system.slice"),
            mount.join(own),
            base.clone(),
            base.join(TASKS_DIR),
        ] {
            assert_eq!(
                read(dir.join("cgroup.subtree_control")),
                "+memory +cpu +pids",
                "{}",
                dir.display()
            );
        }
        assert_eq!(read(base.join("agent/cpu.weight")), "10000");
        assert_eq!(
            read(base.join("agent/memory.min")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            cg.task_dirs("web.0.7"),
            [base.join(TASKS_DIR).join("web.0.7")]
        );
        // A restarted agent (already in <base>/agent) finds the same base.
        let again = Layout {
            hierarchies: vec![Hierarchy {
                own: format!("{own}/warden-node_1/agent"),
                ..layout.hierarchies[0].clone()
            }],
            ..layout
        };
        let cg2 = AgentCgroups::setup(&again, None, "node 1", reserve).expect("setup again");
        assert_eq!(cg2.bases(), [base]);
    }

    #[test]
    fn flat_keyed_files_are_read() {
        let events = "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\n";
        assert_eq!(stat_value(events, "oom_kill"), Some(1));
        assert_eq!(stat_value(events, "oom"), Some(2));
        assert_eq!(stat_value(events, "absent"), None);
        assert_eq!(component("web/0 x"), "web_0_x");
        assert_eq!(component(".."), "_..");
    }
}
