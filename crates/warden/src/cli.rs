//! The operator's commands: `job`, `agents`, `tasks`, `events`, `report`. They talk to the
//! server's REST API (`WARDEN_ADDR`, default `http://127.0.0.1:7401`) and print tables for
//! people or JSON for scripts (`--output json`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;

use warden_client::Client;
use warden_server::sla::SlaReport;
use warden_server::view::{
    AgentInfo, BrakeRelease, EventInfo, JobChange, JobInfo, RecoveryInfo, TaskInfo,
};

/// How to print results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
    /// A self-contained HTML file (only `warden report sla`).
    Html,
}

/// Refuse `--output html` for commands that have no HTML form.
pub(crate) fn no_html(opts: &ApiOpts, command: &str) -> Result<()> {
    if opts.output == OutputFormat::Html {
        anyhow::bail!(
            "`{command}` has no html output (use table or json; html is for `warden report sla`)"
        );
    }
    Ok(())
}

/// Options every API command takes.
#[derive(Clone, Debug, Args)]
pub struct ApiOpts {
    /// REST address of the Warden server; with a replicated control plane, every replica
    /// separated by commas (reads go to one that answers, writes follow the redirect to the
    /// leader).
    #[arg(
        long,
        env = "WARDEN_ADDR",
        default_value = "http://127.0.0.1:7401",
        global = true
    )]
    pub addr: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    /// API token, sent as `Authorization: Bearer` (servers started with --api-tokens need
    /// one: `read` to look, `operator` to change jobs). Prefer the environment variable: a
    /// flag is visible to other users in the process list.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl ApiOpts {
    /// A client for the server, with the token if one is given.
    pub fn client(&self) -> Result<Client> {
        Client::new(&self.addr)?.with_token(self.token.clone().filter(|t| !t.is_empty()))
    }
}

/// `warden job …`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (TOML; see docs/jobs.md). Creates the job or updates it.
    Run {
        /// The job file.
        file: PathBuf,
    },
    /// List jobs.
    Ls,
    /// Stop a job's tasks and remove it.
    Stop {
        /// Job name.
        name: String,
    },
    /// The job's kept versions (the last 10), newest last, with the rollout of each change.
    History {
        /// Job name.
        name: String,
    },
    /// What changed between two versions of a job, field by field.
    Diff {
        /// Job name.
        name: String,
        /// The older version.
        a: u64,
        /// The newer version (default: the version in force).
        b: Option<u64>,
    },
    /// What submitting a job file would change — the fields, the version it would get, the
    /// running copies it would replace — without changing anything.
    Plan {
        /// The job file.
        file: PathBuf,
    },
    /// Go back to an earlier version: its spec (binary, arguments, environment, config)
    /// becomes a new version, rolled out to every copy at once, without canaries or checks.
    /// Without VERSION, the newest earlier version that runs something else.
    Revert {
        /// Job name.
        name: String,
        /// The version to go back to.
        #[arg(value_name = "VERSION")]
        target: Option<u64>,
    },
    /// Planned switchover of a stateful job (`[state]` with standbys, docs/state.md): its
    /// primary stops taking writes, an in-sync standby catches up with every write, and is
    /// promoted; the old primary follows it as a standby. No write is lost at any
    /// acknowledgement level. Abandoned (the primary takes writes again) if the standby has
    /// not caught up within 10 s.
    Promote {
        /// Job name.
        name: String,
        /// Return once the switchover started, without waiting for the promotion.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `warden brake …`
#[derive(Debug, Subcommand)]
pub enum BrakeCommand {
    /// Release the mass-failure brake now (needs the `operator` role): the Suspect agents it
    /// holds are judged at once, and those found dead or past their lease are declared
    /// Failed and their work moved. Use it when you know the mass suspicion is real (a rack
    /// lost power), not a network fault of the server's own.
    Release,
}

/// `warden report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Every recovery with its RTO and where the time went, and a summary.
    Recoveries,
    /// Service levels over a window: recovery success rate, RTO percentiles against an
    /// objective, availability per job, and the slowest recoveries with where their time went.
    Sla(SlaArgs),
}

/// `warden report sla` options.
#[derive(Debug, Args)]
pub struct SlaArgs {
    /// Window ending now, e.g. 30m, 24h or 168h (units: ms, s, m, h) [default: the server's
    /// `[sla] window`, 24h unless configured].
    #[arg(long, value_parser = parse_window)]
    pub since: Option<Duration>,
    /// Recovery time objective, e.g. 5s or 1500ms [default: the server's
    /// `[sla] objective_rto`, 5s unless configured].
    #[arg(long, value_parser = parse_window)]
    pub objective_rto: Option<Duration>,
}

/// Parse a positive duration such as `24h`, `30m`, `5s` or `1500ms`.
pub fn parse_window(text: &str) -> std::result::Result<Duration, String> {
    let d = warden_core::duration_serde::parse(text)
        .map_err(|e| format!("{e}; expected a number with a unit: ms, s, m or h (e.g. 24h)"))?;
    if d.is_zero() {
        return Err(format!(
            "{text:?} is zero; give a positive duration such as 24h"
        ));
    }
    if d > warden_server::http::MAX_SLA_WINDOW {
        return Err(format!("{text:?} is longer than 366 days"));
    }
    Ok(d)
}

/// Print `rows` under `headers`, columns aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub(crate) fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// An answer read as the server's typed view (`warden_server::view`); JSON output prints the
/// answer as it came, tables are made from the view.
pub(crate) fn view<T: DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).with_context(|| format!("read the server's {what}"))
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

/// Phi as a person reads it: `inf` for "certainly dead" (the API sends a large finite
/// number, JSON having no infinity).
fn shown_phi(phi: f64) -> String {
    if phi >= 1e6 || phi.is_infinite() {
        "inf".to_string()
    } else {
        format!("{phi:.2}")
    }
}

/// Rows of `GET /v1/agents` for a table.
pub fn agent_rows(agents: &[AgentInfo]) -> Vec<Vec<String>> {
    agents
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.generation.to_string(),
                a.state.clone(),
                format!("{}", a.health_score),
                a.last_heartbeat_ms_ago
                    .map_or("-".into(), |m| format!("{m} ms")),
                shown_phi(a.phi),
                a.tasks.len().to_string(),
            ]
        })
        .collect()
}

/// Headers matching [`agent_rows`].
pub const AGENT_HEADERS: [&str; 7] = [
    "NAME",
    "GEN",
    "STATE",
    "SCORE",
    "LAST HEARTBEAT",
    "PHI",
    "TASKS",
];

/// Rows of `GET /v1/tasks` for a table.
pub fn task_rows(tasks: &[TaskInfo]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.state.clone(),
                dash(t.agent.as_ref()),
                t.epoch.to_string(),
                t.failures.to_string(),
            ]
        })
        .collect()
}

/// Headers matching [`task_rows`].
pub const TASK_HEADERS: [&str; 5] = ["TASK", "STATE", "AGENT", "EPOCH", "FAILURES"];

/// Rows of `GET /v1/recoveries` for a table.
pub fn recovery_rows(recoveries: &[RecoveryInfo]) -> Vec<Vec<String>> {
    recoveries
        .iter()
        .map(|r| {
            vec![
                r.task.clone(),
                r.from.clone(),
                dash(r.to.as_ref()),
                r.outcome.clone(),
                dash(r.rto_ms),
                dash(r.detection_ms),
                r.confirmation_ms.to_string(),
                r.fencing_wait_ms.to_string(),
                dash(r.start_up_ms),
                r.cause.clone(),
            ]
        })
        .collect()
}

/// Headers matching [`recovery_rows`].
pub const RECOVERY_HEADERS: [&str; 10] = [
    "TASK", "FROM", "TO", "OUTCOME", "RTO ms", "DETECT", "CONFIRM", "FENCE", "START", "CAUSE",
];

/// `warden job …`
pub fn job(cmd: &JobCommand, opts: &ApiOpts) -> Result<()> {
    no_html(opts, "warden job")?;
    let client = opts.client()?;
    match cmd {
        JobCommand::History { name } => crate::release_cmd::history(&client, opts, name)?,
        JobCommand::Diff { name, a, b } => crate::release_cmd::diff(&client, opts, name, *a, *b)?,
        JobCommand::Plan { file } => crate::release_cmd::plan(&client, opts, file)?,
        JobCommand::Revert { name, target } => {
            crate::release_cmd::revert(&client, opts, name, *target)?;
        }
        JobCommand::Run { file } => {
            let (body, ct) = crate::release_cmd::job_body(file)?;
            let v = client
                .request("POST", "/v1/jobs", Some(ct), &body)?
                .json()?;
            match opts.output {
                OutputFormat::Json => print_json(&v)?,
                OutputFormat::Table | OutputFormat::Html => {
                    let done: JobChange = view(v, "answer to the submission")?;
                    match done.version {
                        Some(version) => {
                            println!("job {} {} (version {version})", done.job, done.outcome);
                        }
                        None => println!("job {} {}", done.job, done.outcome),
                    }
                }
            }
        }
        JobCommand::Ls => {
            let v = client.get("/v1/jobs")?;
            match opts.output {
                OutputFormat::Json => print_json(&v)?,
                OutputFormat::Table | OutputFormat::Html => {
                    let jobs: Vec<JobInfo> = view(v, "job list")?;
                    let rows: Vec<Vec<String>> = jobs
                        .iter()
                        .map(|j| {
                            vec![
                                j.spec.name.to_string(),
                                j.spec.kind.as_str().to_string(),
                                j.desired.to_string(),
                                j.running.to_string(),
                                j.spec.command.clone(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(&["NAME", "KIND", "DESIRED", "RUNNING", "COMMAND"], &rows)
                    );
                }
            }
        }
        JobCommand::Promote { name, no_wait } => {
            let v = client
                .request("POST", &format!("/v1/jobs/{name}/promote"), None, b"")?
                .json()?;
            let to = v
                .get("to")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !*no_wait {
                // Promoted: the standby's slot is the primary of a newer state epoch.
                let role = |client: &warden_client::Client| -> Option<(String, u64)> {
                    let tasks = client.get("/v1/tasks").ok()?;
                    let t = tasks
                        .as_array()?
                        .iter()
                        .find(|t| t.get("id").and_then(serde_json::Value::as_str) == Some(&to))?;
                    let r = t.get("replica")?;
                    Some((
                        r.get("role")?.as_str()?.to_string(),
                        r.get("state_epoch")?.as_u64()?,
                    ))
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
                loop {
                    if role(&client).is_some_and(|(r, _)| r == "primary") {
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        anyhow::bail!(
                            "{to} was not promoted within 15 s; the switchover is abandoned after \
                             10 s if the standby does not catch up (see `warden events`)"
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            match opts.output {
                OutputFormat::Json => print_json(&v)?,
                OutputFormat::Table | OutputFormat::Html if *no_wait => {
                    println!(
                        "switchover of {name} started: {to} is promoted once it holds every write"
                    );
                }
                OutputFormat::Table | OutputFormat::Html => {
                    println!("{to} is the primary of {name}")
                }
            }
        }
        JobCommand::Stop { name } => {
            let v = client
                .request("DELETE", &format!("/v1/jobs/{name}"), None, b"")?
                .json()?;
            match opts.output {
                OutputFormat::Json => print_json(&v)?,
                OutputFormat::Table | OutputFormat::Html => println!("job {name} stopped"),
            }
        }
    }
    Ok(())
}

/// `warden brake …`
pub fn brake(cmd: &BrakeCommand, opts: &ApiOpts) -> Result<()> {
    no_html(opts, "warden brake")?;
    match cmd {
        BrakeCommand::Release => {
            let v = opts
                .client()?
                .request("POST", "/v1/brake/release", None, b"")?
                .json()?;
            match opts.output {
                OutputFormat::Json => print_json(&v)?,
                OutputFormat::Table | OutputFormat::Html => {
                    let done: BrakeRelease = view(v, "answer")?;
                    if done.was_engaged {
                        println!("brake released: held verdicts are judged now");
                    } else {
                        println!("the brake was not engaged; nothing changed");
                    }
                }
            }
        }
    }
    Ok(())
}

/// `warden agents`
pub fn agents(opts: &ApiOpts) -> Result<()> {
    no_html(opts, "warden agents")?;
    let v = opts.client()?.get("/v1/agents")?;
    match opts.output {
        OutputFormat::Json => print_json(&v),
        OutputFormat::Table | OutputFormat::Html => {
            let agents: Vec<AgentInfo> = view(v, "agent list")?;
            print!("{}", table(&AGENT_HEADERS, &agent_rows(&agents)));
            Ok(())
        }
    }
}

/// `warden tasks`
pub fn tasks(opts: &ApiOpts) -> Result<()> {
    no_html(opts, "warden tasks")?;
    let v = opts.client()?.get("/v1/tasks")?;
    match opts.output {
        OutputFormat::Json => print_json(&v),
        OutputFormat::Table | OutputFormat::Html => {
            let tasks: Vec<TaskInfo> = view(v, "task list")?;
            print!("{}", table(&TASK_HEADERS, &task_rows(&tasks)));
            Ok(())
        }
    }
}

/// `warden events [--follow] [--since N]`
pub fn events(opts: &ApiOpts, follow: bool, since: u64) -> Result<()> {
    no_html(opts, "warden events")?;
    let client = opts.client()?;
    let mut since = since;
    loop {
        let v = client.get(&format!("/v1/events?since={since}&limit=1000"))?;
        let raw: Vec<Value> = view(v, "event log")?;
        for e in raw {
            let event: EventInfo = view(e.clone(), "event")?;
            since = since.max(event.seq);
            match opts.output {
                OutputFormat::Json => println!("{}", serde_json::to_string(&e)?),
                OutputFormat::Table | OutputFormat::Html => println!(
                    "{:>6}  {}  {:<18}  {:<16}  {}",
                    event.seq,
                    fmt_unix_ms(event.unix_ms),
                    event.kind,
                    event
                        .agent
                        .as_deref()
                        .or(event.task.as_deref())
                        .unwrap_or("-"),
                    event.message
                ),
            }
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `warden report …`
pub fn report(cmd: &ReportCommand, opts: &ApiOpts) -> Result<()> {
    match cmd {
        ReportCommand::Recoveries => report_recoveries(opts),
        ReportCommand::Sla(args) => report_sla(args, opts),
    }
}

/// The query string of `GET /v1/sla` for `args`.
pub fn sla_path(args: &SlaArgs) -> String {
    let mut path = String::from("/v1/sla");
    let mut sep = '?';
    for (key, d) in [("since", args.since), ("objective_rto", args.objective_rto)] {
        if let Some(d) = d {
            path.push(sep);
            path.push_str(key);
            path.push('=');
            path.push_str(&warden_server::http::dashboard::fmt_window(
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            ));
            sep = '&';
        }
    }
    path
}

/// `warden report sla`: the server computes (`GET /v1/sla`), this prints.
fn report_sla(args: &SlaArgs, opts: &ApiOpts) -> Result<()> {
    let v = opts
        .client()?
        .get(&sla_path(args))
        .context("get the SLA report")?;
    match opts.output {
        OutputFormat::Json => print_json(&v),
        OutputFormat::Html => {
            let report: SlaReport = view(v, "SLA report")?;
            let html = warden_server::http::dashboard::sla_report_html(&report)
                .context("render the HTML report")?;
            println!("{html}");
            Ok(())
        }
        OutputFormat::Table => {
            let report: SlaReport = view(v, "SLA report")?;
            print!("{}", sla_table(&report));
            Ok(())
        }
    }
}

fn ms_text(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |m| format!("{m} ms"))
}

/// The SLA report as text for people.
pub fn sla_table(r: &SlaReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let d = warden_server::http::dashboard::fmt_window;
    let pct = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0));
    let _ = writeln!(
        out,
        "SLA over the last {} (since {} UTC), objective RTO {}\n",
        d(r.window_ms),
        warden_server::http::dashboard::fmt_unix_ms(r.since_unix_ms),
        d(r.objective_rto_ms)
    );
    let _ = writeln!(
        out,
        "recoveries      {} ({} succeeded, {} failed, {} in progress, {} superseded)",
        r.recoveries, r.succeeded, r.failed, r.in_progress, r.superseded
    );
    let _ = writeln!(out, "success rate    {}", pct(r.success_rate));
    let _ = writeln!(
        out,
        "RTO             p50 {}  p95 {}  p99 {}  max {}  ({} measured)",
        ms_text(r.rto.p50_ms),
        ms_text(r.rto.p95_ms),
        ms_text(r.rto.p99_ms),
        ms_text(r.rto.max_ms),
        r.rto.count
    );
    let verdict = match r.rto.meets_objective {
        Some(true) => "met (p99 <= objective)",
        Some(false) => "MISSED (p99 > objective)",
        None => "no recoveries to judge",
    };
    let _ = writeln!(
        out,
        "objective       {verdict}; {} of {} within it ({})\n",
        r.rto.within_objective,
        r.rto.count,
        pct(r.rto.within_objective_rate)
    );
    let rows: Vec<Vec<String>> = r
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.job.clone(),
                j.slots.to_string(),
                format!("{:.3}%", j.availability * 100.0),
                format!("{} ms", j.downtime_ms),
                j.recoveries.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["JOB", "SLOTS", "AVAILABILITY", "DOWNTIME", "RECOVERIES"],
        &rows,
    ));
    if !r.slowest.is_empty() {
        out.push_str("\nslowest recoveries (ms):\n");
        let rows: Vec<Vec<String>> = r
            .slowest
            .iter()
            .map(|s| {
                let n = |v: Option<u64>| v.map_or_else(|| "-".into(), |m| m.to_string());
                vec![
                    s.task.clone(),
                    s.from.clone(),
                    s.to.clone().unwrap_or_else(|| "-".into()),
                    n(s.rto_ms),
                    n(s.detection_ms),
                    s.confirmation_ms.to_string(),
                    s.fencing_wait_ms.to_string(),
                    n(s.start_up_ms),
                    s.cause.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "TASK", "FROM", "TO", "RTO", "DETECT", "CONFIRM", "FENCE", "START", "CAUSE",
            ],
            &rows,
        ));
    }
    out
}

/// `warden report recoveries`
fn report_recoveries(opts: &ApiOpts) -> Result<()> {
    no_html(opts, "warden report recoveries")?;
    let v = opts.client()?.get("/v1/recoveries")?;
    if opts.output == OutputFormat::Json {
        return print_json(&v);
    }
    let recoveries: Vec<RecoveryInfo> = view(v, "recoveries")?;
    print!("{}", table(&RECOVERY_HEADERS, &recovery_rows(&recoveries)));
    let mut rtos: Vec<u64> = recoveries.iter().filter_map(|r| r.rto_ms).collect();
    rtos.sort_unstable();
    let ended = recoveries
        .iter()
        .filter(|r| matches!(r.outcome.as_str(), "succeeded" | "failed"))
        .count();
    let ok = recoveries
        .iter()
        .filter(|r| r.outcome == "succeeded")
        .count();
    let pct =
        |q: f64| warden_core::qos::percentile(&rtos, q).map_or("-".into(), |m| format!("{m} ms"));
    println!(
        "\n{} recoveries, success rate {}, RTO p50 {}, p99 {}, max {}",
        recoveries.len(),
        if ended == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * ok as f64 / ended as f64)
        },
        pct(0.5),
        pct(0.99),
        rtos.last().map_or("-".into(), |m| format!("{m} ms"))
    );
    Ok(())
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn fmt_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn phi_of_a_dead_agent_reads_inf() {
        assert_eq!(shown_phi(1e9), "inf");
        assert_eq!(shown_phi(f64::INFINITY), "inf");
        assert_eq!(shown_phi(0.5), "0.50");
        assert_eq!(shown_phi(7.123), "7.12");
    }

    #[test]
    fn sla_windows_parse_with_clear_errors() {
        assert_eq!(parse_window("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_window("1500ms"), Ok(Duration::from_millis(1500)));
        let e = parse_window("7d").unwrap_err();
        assert!(e.contains("unknown unit") && e.contains("24h"), "{e}");
        assert!(parse_window("0s").unwrap_err().contains("zero"));
        assert!(
            parse_window("yesterday")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_window("9000h").unwrap_err().contains("366 days"));
        let args = SlaArgs {
            since: Some(Duration::from_secs(3600)),
            objective_rto: Some(Duration::from_millis(1500)),
        };
        assert_eq!(sla_path(&args), "/v1/sla?since=1h&objective_rto=1500ms");
        let none = SlaArgs {
            since: None,
            objective_rto: None,
        };
        assert_eq!(sla_path(&none), "/v1/sla");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
        assert_eq!(fmt_unix_ms(3_723_004), "01:02:03.004");
    }
}
