//! Releases: every change of a job is a numbered version, kept, and rolled out.
//!
//! A job's [`JobReleases`] holds its last versions ([`Release`], oldest first; the newest is
//! the desired spec) and its rollout ([`Rollout`]: the one in progress, or the last one).
//! Versions are numbered by the leader, 1, 2, 3, ..., and never reused; a revert is a new
//! version carrying an older one's spec, so the history reads in order of what ran.
//!
//! Only a change of what a copy *runs* — its [template](template_eq): command, arguments,
//! environment, resources, health check, service port, replicated state — replaces running
//! copies. A change of anything else (replica count, `[update]`) is a new version with the same
//! [`Release::base`], and copies started from either count as current.
//!
//! How a rollout proceeds is [`crate::rollout`]'s business; this module holds the records and
//! the pure functions around them (numbering, trimming, field-by-field differences).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::judge::AnalysisSpec;
use crate::{JobName, JobSpec, duration_serde};

/// Versions kept per job by default (the newest included).
pub const DEFAULT_KEEP: usize = 10;

/// A job's `[update]` table: how a new version replaces running copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// Copies replaced at a time (each must be healthy for `min_healthy_time` before the next
    /// one is taken). Default 1.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Copies of the new version started first and judged before any other is replaced
    /// (0: no canary phase). Default 0.
    #[serde(default)]
    pub canary: u32,
    /// How long a new copy must run healthy to count as good. Default 5 s.
    #[serde(default = "default_min_healthy", with = "duration_serde")]
    pub min_healthy_time: Duration,
    /// A new copy not healthy this long after it was ordered fails the rollout. Default 60 s.
    #[serde(default = "default_healthy_deadline", with = "duration_serde")]
    pub healthy_deadline: Duration,
    /// A rollout that makes no progress (no new copy turning good) this long fails. Default 10 min.
    #[serde(default = "default_progress_deadline", with = "duration_serde")]
    pub progress_deadline: Duration,
    /// Go on from the canaries to the rest once they are good, without `warden rollout
    /// promote`. Default false.
    #[serde(default)]
    pub auto_promote: bool,
    /// On failure, put the version that ran before back at once (a new version with its spec).
    /// Default true; when false a failed rollout stops where it stands for an operator.
    #[serde(default = "default_true")]
    pub auto_revert: bool,
    /// Least time between two waves. Default 0.
    #[serde(default, with = "duration_serde")]
    pub stagger: Duration,
    /// The statistical judge (`[update.analysis]`): canaries against baseline copies on the
    /// requests they served. Absent: the fast checks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Shares of the traffic (percent) the canaries get in turn, through the load balancer's
    /// weights (`traffic_steps = [1, 10, 50]`), each for `step_time`; the rest of the canary
    /// phase follows the last. Empty: the canaries get their plain share.
    #[serde(default, skip_serializing_if = "TrafficSteps::is_empty")]
    pub traffic_steps: TrafficSteps,
    /// How long each traffic step lasts. Default 30 s.
    #[serde(default = "default_step_time", with = "duration_serde")]
    pub step_time: Duration,
    /// A version that changes only `[[config]]` files is applied to running copies in place:
    /// their agents rewrite the files and send the task this signal (`"SIGHUP"`), instead of
    /// replacing the copies. Absent: every change replaces copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_signal: Option<ReloadSignal>,
}

/// The signal that tells a task to read its configuration files again (`[update]
/// reload_signal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReloadSignal {
    /// `SIGHUP`, the usual one.
    #[serde(rename = "SIGHUP")]
    Hup,
    /// `SIGUSR1`.
    #[serde(rename = "SIGUSR1")]
    Usr1,
    /// `SIGUSR2`.
    #[serde(rename = "SIGUSR2")]
    Usr2,
    /// `SIGWINCH`.
    #[serde(rename = "SIGWINCH")]
    Winch,
}

impl ReloadSignal {
    /// Its name (`SIGHUP`).
    pub fn name(self) -> &'static str {
        match self {
            ReloadSignal::Hup => "SIGHUP",
            ReloadSignal::Usr1 => "SIGUSR1",
            ReloadSignal::Usr2 => "SIGUSR2",
            ReloadSignal::Winch => "SIGWINCH",
        }
    }

    /// The signal named `name` (`SIGHUP` or `HUP`, any case).
    pub fn parse(name: &str) -> Option<ReloadSignal> {
        let up = name.to_ascii_uppercase();
        let up = up.strip_prefix("SIG").unwrap_or(&up);
        [
            ReloadSignal::Hup,
            ReloadSignal::Usr1,
            ReloadSignal::Usr2,
            ReloadSignal::Winch,
        ]
        .into_iter()
        .find(|s| &s.name()[3..] == up)
    }
}

fn default_step_time() -> Duration {
    Duration::from_secs(30)
}

/// Up to 8 increasing traffic shares, percent (`[update] traffic_steps`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct TrafficSteps {
    len: u8,
    pct: [u8; 8],
}

impl TrafficSteps {
    /// No steps.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The shares, in order.
    pub fn as_slice(&self) -> &[u8] {
        &self.pct[..usize::from(self.len)]
    }
}

impl TryFrom<Vec<u8>> for TrafficSteps {
    type Error = String;
    fn try_from(v: Vec<u8>) -> Result<Self, String> {
        if v.len() > 8 {
            return Err(format!("at most 8 traffic steps, got {}", v.len()));
        }
        let mut pct = [0u8; 8];
        pct[..v.len()].copy_from_slice(&v);
        Ok(TrafficSteps {
            len: u8::try_from(v.len()).unwrap_or(8),
            pct,
        })
    }
}

impl From<TrafficSteps> for Vec<u8> {
    fn from(s: TrafficSteps) -> Vec<u8> {
        s.as_slice().to_vec()
    }
}

fn default_max_parallel() -> u32 {
    1
}
fn default_min_healthy() -> Duration {
    Duration::from_secs(5)
}
fn default_healthy_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}
fn default_true() -> bool {
    true
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            max_parallel: default_max_parallel(),
            canary: 0,
            min_healthy_time: default_min_healthy(),
            healthy_deadline: default_healthy_deadline(),
            progress_deadline: default_progress_deadline(),
            auto_promote: false,
            auto_revert: true,
            stagger: Duration::ZERO,
            analysis: None,
            traffic_steps: TrafficSteps::default(),
            step_time: default_step_time(),
            reload_signal: None,
        }
    }
}

/// Longest `min_healthy_time`, `healthy_deadline`, `progress_deadline` or `stagger` accepted.
pub const MAX_UPDATE_WAIT: Duration = Duration::from_secs(24 * 3600);

impl UpdateSpec {
    /// Check the values, naming the field at fault.
    pub fn validate(&self, replicas: u32) -> Result<(), ConfigError> {
        if self.max_parallel == 0 {
            return Err(ConfigError::new(
                "update.max_parallel",
                "must be at least 1 (copies replaced at a time)",
            ));
        }
        if self.canary > replicas {
            return Err(ConfigError::new(
                "update.canary",
                format!("must be at most the job's copies ({replicas})"),
            ));
        }
        for (field, d) in [
            ("update.min_healthy_time", self.min_healthy_time),
            ("update.healthy_deadline", self.healthy_deadline),
            ("update.progress_deadline", self.progress_deadline),
            ("update.stagger", self.stagger),
        ] {
            if d > MAX_UPDATE_WAIT {
                return Err(ConfigError::new(field, "must be at most 24h"));
            }
        }
        if self.healthy_deadline <= self.min_healthy_time {
            return Err(ConfigError::new(
                "update.healthy_deadline",
                format!(
                    "must be longer than min_healthy_time ({}): a copy could never count as good in time",
                    duration_serde::format(&self.min_healthy_time)
                ),
            ));
        }
        if self.progress_deadline < self.healthy_deadline {
            return Err(ConfigError::new(
                "update.progress_deadline",
                "must be at least healthy_deadline",
            ));
        }
        if let Some(a) = &self.analysis {
            a.validate()?;
        }
        let steps = self.traffic_steps.as_slice();
        if !steps.is_empty() {
            if self.canary == 0 {
                return Err(ConfigError::new(
                    "update.traffic_steps",
                    "needs canary copies to send the traffic to (set update.canary)",
                ));
            }
            if steps.iter().any(|p| *p == 0 || *p > 100) || steps.windows(2).any(|w| w[0] >= w[1]) {
                return Err(ConfigError::new(
                    "update.traffic_steps",
                    "must be increasing percentages between 1 and 100",
                ));
            }
        }
        if self.step_time.is_zero() || self.step_time > MAX_UPDATE_WAIT {
            return Err(ConfigError::new(
                "update.step_time",
                "must be greater than zero and at most 24h",
            ));
        }
        Ok(())
    }
}

/// One numbered version of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Its number (1, 2, ...; never reused).
    pub version: u64,
    /// The first version with this release's template: copies started from any version with
    /// the same base run the same thing.
    pub base: u64,
    /// The spec.
    pub spec: JobSpec,
    /// When it was stored, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Why it exists: `submit`, `revert to 3`, `auto-revert of 4: ...`.
    pub cause: String,
    /// The data epoch of the restore point taken before this version's copies first open
    /// the job's state: set when the version raises `data_epoch` on a job whose `[state]`
    /// keeps no standby (its agent copies the state aside first; a revert puts it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<u32>,
}

/// Whether `spec`'s data lives in a single-replica Warden state (`[state]`, no standbys):
/// the kind of data an agent keeps restore points of.
pub fn restorable(spec: &JobSpec) -> bool {
    spec.state.is_some_and(|s| s.standbys == 0)
}

/// The restore points the agent holding a job's state keeps after `releases` ran in order,
/// as `(data epoch, the version that took it)`, by the agent's rules
/// (`warden_state::restore::align`): a rise from `e` takes a point of `e`; a fall puts back
/// the newest point it can read, sets the points above it aside, and takes the point again
/// when it is older than the version's epoch. What ran before the oldest kept version is not
/// known, and counts as nothing (a revert it would allow is refused).
pub fn expected_points(releases: &[Release]) -> Vec<(u32, u64)> {
    let mut points: Vec<(u32, u64)> = Vec::new();
    for pair in releases.windows(2) {
        let [before, r] = pair else { continue };
        if !(restorable(&before.spec) && restorable(&r.spec)) {
            points.clear();
            continue;
        }
        let (had, to) = (before.spec.data_epoch, r.spec.data_epoch);
        if to > had {
            points.retain(|&(e, _)| e != had);
            points.push((had, r.version));
        } else if to < had {
            match points.iter().map(|&(e, _)| e).filter(|&e| e <= to).max() {
                Some(back) => {
                    points.retain(|&(e, _)| e < back);
                    if back < to {
                        points.push((back, r.version));
                    }
                }
                None => points.clear(),
            }
        }
    }
    points
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Canary copies of the new version run and are judged; nothing else is replaced.
    Canary,
    /// The canaries are good; waiting for `warden rollout promote` (`auto_promote = false`).
    AwaitingPromotion,
    /// Replacing the remaining copies, `max_parallel` at a time.
    Rolling,
    /// Every copy runs the new version and counted as good.
    Succeeded,
    /// Stopped by a failed check; a revert to the version before followed (`auto_revert`).
    Reverted,
    /// Stopped by a failed check; copies stay as they are for an operator (no `auto_revert`).
    Failed,
    /// Replaced by a newer version (a revert, or a submission after it failed).
    Superseded,
}

impl RolloutPhase {
    /// Whether the rollout still acts.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutPhase::Canary | RolloutPhase::AwaitingPromotion | RolloutPhase::Rolling
        )
    }

    /// Its name, as in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Canary => "canary",
            RolloutPhase::AwaitingPromotion => "awaiting_promotion",
            RolloutPhase::Rolling => "rolling",
            RolloutPhase::Succeeded => "succeeded",
            RolloutPhase::Reverted => "reverted",
            RolloutPhase::Failed => "failed",
            RolloutPhase::Superseded => "superseded",
        }
    }
}

/// A rollout of one version over a job's copies. Which copies run which version is in the
/// slots' records (each slot keeps the version its copy was started from), so a new leader
/// resumes a rollout from the store without repeating or skipping a copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version the copies ran before.
    pub from: u64,
    /// The version rolled out.
    pub to: u64,
    /// A revert: no canary, no checks, every copy at once.
    pub revert: bool,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// When it began, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// When it ended, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
    /// Why it ended the way it did (the failed check and its evidence), or why it waits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// An operator promoted it past its canaries (`warden rollout promote`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted: bool,
}

/// A job's versions and its rollout, as stored (`releases/<job>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReleases {
    /// The job.
    pub job: JobName,
    /// Its last versions, oldest first; the newest is the desired spec.
    pub releases: Vec<Release>,
    /// The rollout in progress, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

impl JobReleases {
    /// The newest release (the desired spec).
    pub fn current(&self) -> Option<&Release> {
        self.releases.last()
    }

    /// The release numbered `version`, if still kept.
    pub fn get(&self, version: u64) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }

    /// The base of `version` (its template's first version); `None` when no longer kept.
    pub fn base_of(&self, version: u64) -> Option<u64> {
        self.get(version).map(|r| r.base)
    }

    /// Whether a copy started from `version` runs what the newest release asks for.
    pub fn is_current(&self, version: u64) -> bool {
        match (self.current(), self.base_of(version)) {
            (Some(cur), Some(base)) => cur.base == base,
            (Some(cur), None) => cur.version == version,
            (None, _) => true,
        }
    }

    /// The rollout, while it acts.
    pub fn active_rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref().filter(|r| r.phase.is_active())
    }

    /// These releases with `spec` as a new version (numbered after the newest), trimmed to the
    /// last `keep` — but never dropping `from`, the version copies run now, while its rollout
    /// may need it back.
    pub fn with_release(
        prev: Option<&JobReleases>,
        spec: JobSpec,
        unix_ms: u64,
        cause: String,
        keep: usize,
    ) -> JobReleases {
        let mut next = prev.cloned().unwrap_or_else(|| JobReleases {
            job: spec.name.clone(),
            releases: Vec::new(),
            rollout: None,
        });
        let version = next.current().map_or(1, |r| r.version + 1);
        // The same template as an existing release keeps that release's base, so copies of it
        // count as current (a revert, or a change of the replica count).
        let base = next
            .releases
            .iter()
            .rev()
            .find(|r| template_eq(&r.spec, &spec))
            .map_or(version, |r| r.base);
        let restore_point = next
            .current()
            .map(|r| &r.spec)
            .filter(|prev| restorable(prev) && restorable(&spec))
            .map(|prev| prev.data_epoch)
            .filter(|&had| had < spec.data_epoch);
        next.releases.push(Release {
            version,
            base,
            spec,
            unix_ms,
            cause,
            restore_point,
        });
        let keep = keep.max(2);
        while next.releases.len() > keep {
            next.releases.remove(0);
        }
        next
    }
}

/// Whether two specs run the same thing in each copy (a change of anything else replaces no
/// running copy).
pub fn template_eq(a: &JobSpec, b: &JobSpec) -> bool {
    a.kind == b.kind
        && a.command == b.command
        && a.args == b.args
        && a.env == b.env
        && a.resources == b.resources
        && a.health == b.health
        && a.service.as_ref().map(|s| s.port) == b.service.as_ref().map(|s| s.port)
        && a.state == b.state
        && a.config == b.config
        // A single-replica state's data epoch decides what its agent does to the data before
        // the copy starts (a restore point, or one put back): a change of it alone is a new
        // copy, so it takes effect in the rollout, not at some later restart.
        && (a.data_epoch == b.data_epoch || !restorable(a))
}

/// Whether a copy started from `from` can become a copy of `to` by a reload: the two run the
/// same thing but for their `[[config]]` files, and `to` asks for reloads
/// (`[update] reload_signal`). Returns the signal.
pub fn reload_only(from: &JobSpec, to: &JobSpec) -> Option<ReloadSignal> {
    let signal = to.update.and_then(|u| u.reload_signal)?;
    // A copy started without files has no directory to reload from (nor knows of one).
    if from.config.is_empty() || to.config.is_empty() {
        return None;
    }
    // The whole service the same too: a new `api_version` routes requests by version, which
    // needs copies that are the new version from their start.
    if from.service != to.service {
        return None;
    }
    let mut from = from.clone();
    from.config.clone_from(&to.config);
    template_eq(&from, to).then_some(signal)
}

/// One field that differs between two specs, with both values in the spec's own notation
/// (JSON); `None` where the field is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path (`env.LOG_LEVEL`, `update.max_parallel`).
    pub field: String,
    /// The value before.
    pub before: Option<String>,
    /// The value after.
    pub after: Option<String>,
}

/// A spec flattened into dotted paths and their values, for [`diff`]. The caller serializes
/// the spec (the core has no JSON library): `flatten` takes any tree of maps and leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flat(pub BTreeMap<String, String>);

/// Field-by-field differences from `before` to `after`, in path order.
pub fn diff(before: &Flat, after: &Flat) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = before.0.keys().chain(after.0.keys()).collect();
    for k in keys {
        let (b, a) = (before.0.get(k), after.0.get(k));
        if b != a {
            out.push(FieldChange {
                field: k.clone(),
                before: b.cloned(),
                after: a.cloned(),
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::JobKind;

    fn spec(cmd: &str, replicas: u32) -> JobSpec {
        JobSpec {
            data_epoch: 0,
            name: JobName::new("web"),
            kind: JobKind::Service,
            replicas,
            command: cmd.into(),
            args: vec![],
            env: BTreeMap::new(),
            resources: Default::default(),
            health: None,
            service: None,
            state: None,
            update: None,
            config: vec![],
        }
    }

    #[test]
    fn restore_points_follow_the_agents_rules_through_a_history() {
        let ledger = |data_epoch: u32| JobSpec {
            data_epoch,
            state: Some(crate::state::StateSpec {
                standbys: 0,
                ..Default::default()
            }),
            ..spec("ledger", 1)
        };
        let mut rel: Option<JobReleases> = None;
        let mut after = Vec::new();
        for e in [0, 1, 2, 0, 2, 1] {
            let next = JobReleases::with_release(rel.as_ref(), ledger(e), 1, "s".into(), 10);
            after.push(expected_points(&next.releases));
            rel = Some(next);
        }
        assert_eq!(after[1], vec![(0, 2)]);
        assert_eq!(after[2], vec![(0, 2), (1, 3)]);
        // Back to 0: point 0 is used up, point 1 goes aside with the history undone.
        assert_eq!(after[3], vec![]);
        assert_eq!(after[4], vec![(0, 5)]);
        // Back to 1 finds point 0 of the new history (not the old point 1), puts it back and
        // takes it again on the way up to 1.
        assert_eq!(after[5], vec![(0, 6)]);
        let rel = rel.unwrap();
        // What each version recorded taking, for `warden job history`.
        assert_eq!(rel.get(3).unwrap().restore_point, Some(1));
        assert_eq!(rel.get(4).unwrap().restore_point, None);
        // A change of the data epoch alone is a new template for such a job, not for others.
        assert!(!template_eq(&ledger(0), &ledger(1)));
        assert!(template_eq(
            &JobSpec {
                data_epoch: 1,
                ..spec("a", 1)
            },
            &spec("a", 1)
        ));
    }

    #[test]
    fn versions_are_numbered_and_bases_follow_the_template() {
        let r1 = JobReleases::with_release(None, spec("a", 2), 1, "submit".into(), 10);
        assert_eq!(r1.current().map(|r| (r.version, r.base)), Some((1, 1)));
        // Scaling keeps the template: same base, copies of 1 stay current.
        let r2 = JobReleases::with_release(Some(&r1), spec("a", 5), 2, "submit".into(), 10);
        assert_eq!(r2.current().map(|r| (r.version, r.base)), Some((2, 1)));
        assert!(r2.is_current(1));
        // A new command is a new template.
        let r3 = JobReleases::with_release(Some(&r2), spec("b", 5), 3, "submit".into(), 10);
        assert_eq!(r3.current().map(|r| (r.version, r.base)), Some((3, 3)));
        assert!(!r3.is_current(2));
        // Back to "a": a new version with the old base.
        let r4 = JobReleases::with_release(Some(&r3), spec("a", 5), 4, "revert to 2".into(), 10);
        assert_eq!(r4.current().map(|r| (r.version, r.base)), Some((4, 1)));
        assert!(r4.is_current(1) && r4.is_current(2) && !r4.is_current(3));
    }

    #[test]
    fn a_config_file_is_part_of_the_template() {
        let mut a = spec("a", 1);
        let mut b = a.clone();
        assert!(template_eq(&a, &b));
        b.config.push(crate::ConfigFile {
            path: "app.toml".into(),
            content: "x = 1".into(),
        });
        assert!(!template_eq(&a, &b), "a new file replaces copies");
        a.config = b.config.clone();
        a.config[0].content = "x = 2".into();
        assert!(!template_eq(&a, &b), "a changed file replaces copies");
    }

    #[test]
    fn config_files_are_checked_and_bounded() {
        let with = |files: Vec<(&str, usize)>| {
            let mut s = spec("a", 1);
            s.config = files
                .into_iter()
                .map(|(p, n)| crate::ConfigFile {
                    path: p.into(),
                    content: "x".repeat(n),
                })
                .collect();
            s.validate()
        };
        assert!(with(vec![("app.toml", 10), ("conf.d/b.conf", 10)]).is_ok());
        for bad in ["/etc/x", "../x", "a/./b", "a//b", ""] {
            let e = with(vec![(bad, 1)]).unwrap_err();
            assert_eq!(e.field, "config[0].path", "{bad:?}");
        }
        let e = with(vec![("a", 1), ("a", 1)]).unwrap_err();
        assert!(e.reason.contains("twice"), "{e}");
        let e = with(vec![("a", crate::types::MAX_CONFIG_BYTES), ("b", 1)]).unwrap_err();
        assert_eq!(e.field, "config");
        assert!(e.reason.contains("more than"), "{e}");
    }

    #[test]
    fn only_a_change_of_config_files_with_a_reload_signal_reloads() {
        let with = |cmd: &str, text: &str, signal: Option<ReloadSignal>| {
            let mut s = spec(cmd, 1);
            if !text.is_empty() {
                s.config = vec![crate::ConfigFile {
                    path: "app.conf".into(),
                    content: text.into(),
                }];
            }
            s.update = Some(UpdateSpec {
                reload_signal: signal,
                ..UpdateSpec::default()
            });
            s
        };
        let hup = Some(ReloadSignal::Hup);
        let v1 = with("a", "x", hup);
        assert_eq!(
            reload_only(&v1, &with("a", "y", hup)),
            Some(ReloadSignal::Hup)
        );
        // The new version's own setting decides; anything else changed replaces the copy.
        assert_eq!(reload_only(&v1, &with("a", "y", None)), None);
        assert_eq!(reload_only(&v1, &with("b", "y", hup)), None);
        // A copy started without files has no directory to reload.
        assert_eq!(
            reload_only(&with("a", "", None), &with("a", "y", hup)),
            None
        );
        assert_eq!(ReloadSignal::parse("hup"), Some(ReloadSignal::Hup));
        assert_eq!(ReloadSignal::parse("SIGUSR2"), Some(ReloadSignal::Usr2));
        assert_eq!(ReloadSignal::parse("SIGKILL"), None);
        // A reload signal needs files to reload.
        let e = with("a", "", hup).validate().unwrap_err();
        assert_eq!(e.field, "update.reload_signal");
        let bad: Result<UpdateSpec, _> = serde_json::from_str("{\"reload_signal\": \"SIGKILL\"}");
        assert!(bad.unwrap_err().to_string().contains("SIGKILL"));
    }

    #[test]
    fn history_is_trimmed_to_keep() {
        let mut r = None;
        for i in 0..15u64 {
            r = Some(JobReleases::with_release(
                r.as_ref(),
                spec(&format!("c{i}"), 1),
                i,
                "submit".into(),
                10,
            ));
        }
        let r = r.unwrap();
        assert_eq!(r.releases.len(), 10);
        assert_eq!(r.releases[0].version, 6);
        assert_eq!(r.current().map(|c| c.version), Some(15));
    }

    #[test]
    fn update_validation_names_the_field() {
        let bad = UpdateSpec {
            max_parallel: 0,
            ..UpdateSpec::default()
        };
        assert_eq!(bad.validate(3).unwrap_err().field, "update.max_parallel");
        let bad = UpdateSpec {
            canary: 4,
            ..UpdateSpec::default()
        };
        assert_eq!(bad.validate(3).unwrap_err().field, "update.canary");
        let bad = UpdateSpec {
            healthy_deadline: Duration::from_secs(1),
            ..UpdateSpec::default()
        };
        assert_eq!(
            bad.validate(3).unwrap_err().field,
            "update.healthy_deadline"
        );
        assert!(UpdateSpec::default().validate(1).is_ok());
    }

    #[test]
    fn diff_lists_changed_added_and_removed_fields() {
        let flat = |pairs: &[(&str, &str)]| {
            Flat(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            )
        };
        let a = flat(&[("command", "\"a\""), ("env.X", "\"1\""), ("replicas", "2")]);
        let b = flat(&[("command", "\"b\""), ("replicas", "2"), ("env.Y", "\"2\"")]);
        let d = diff(&a, &b);
        let fields: Vec<&str> = d.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["command", "env.X", "env.Y"]);
        assert_eq!(d[1].after, None);
        assert_eq!(d[2].before, None);
    }
}
