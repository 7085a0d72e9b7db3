//! `warden job history|diff|plan|revert` and `warden rollout status|promote`: job versions and
//! rollouts, from the server's `/v1/jobs/{name}/versions`, `/rollout`, `/revert` and
//! `/v1/jobs/plan`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use warden_core::controller::RolloutView;
use warden_core::release::{JobReleases, diff as diff_fields};
use warden_server::view::{JobChange, JobPlan, flatten};

use crate::cli::{ApiOpts, OutputFormat, no_html, print_json, table, view};

/// `warden rollout …`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Where a job's rollout stands: versions, phase, copies updated and healthy, and why it
    /// ended or waits.
    Status {
        /// Job name.
        name: String,
        /// Print the status again every second until the rollout ends.
        #[arg(long, short)]
        watch: bool,
    },
    /// Go on from the canaries to every copy (for `[update] auto_promote = false`).
    Promote {
        /// Job name.
        name: String,
    },
}

fn when(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
}

fn versions(client: &warden_client::Client, name: &str) -> Result<JobReleases> {
    client.get_as(&format!("/v1/jobs/{name}/versions"))
}

/// `warden job history NAME`
pub fn history(client: &warden_client::Client, opts: &ApiOpts, name: &str) -> Result<()> {
    let v = client.get(&format!("/v1/jobs/{name}/versions"))?;
    if opts.output == OutputFormat::Json {
        return print_json(&v);
    }
    let rel: JobReleases = view(v, "job versions")?;
    let current = rel.current().map_or(0, |r| r.version);
    let rows: Vec<Vec<String>> = rel
        .releases
        .iter()
        .map(|r| {
            vec![
                if r.version == current {
                    format!("{} *", r.version)
                } else {
                    r.version.to_string()
                },
                when(r.unix_ms),
                r.base.to_string(),
                r.spec.command.clone(),
                match r.restore_point {
                    Some(point) => format!("{} (restore point of {point})", r.spec.data_epoch),
                    None => r.spec.data_epoch.to_string(),
                },
                r.cause.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "VERSION",
                "STORED",
                "RUNS AS",
                "COMMAND",
                "DATA EPOCH",
                "CAUSE"
            ],
            &rows
        )
    );
    if let Some(r) = &rel.rollout {
        let kind = if r.revert { "revert" } else { "rollout" };
        let why = if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        };
        println!(
            "last {kind}: version {} → {}, {}{why}",
            r.from,
            r.to,
            r.phase.as_str()
        );
    }
    Ok(())
}

/// `warden job diff NAME A [B]`
pub fn diff(
    client: &warden_client::Client,
    opts: &ApiOpts,
    name: &str,
    a: u64,
    b: Option<u64>,
) -> Result<()> {
    let rel = versions(client, name)?;
    let b = b.unwrap_or_else(|| rel.current().map_or(0, |r| r.version));
    let kept = || {
        rel.releases
            .iter()
            .map(|r| r.version.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec = |v: u64| {
        rel.get(v)
            .map(|r| &r.spec)
            .with_context(|| format!("job {name} has no version {v} (kept: {})", kept()))
    };
    let changes = diff_fields(&flatten(spec(a)?), &flatten(spec(b)?));
    if opts.output == OutputFormat::Json {
        return print_json(&serde_json::to_value(&changes)?);
    }
    if changes.is_empty() {
        println!("versions {a} and {b} of {name} are the same");
        return Ok(());
    }
    print_changes(&changes);
    Ok(())
}

fn print_changes(changes: &[warden_core::release::FieldChange]) {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| vec![c.field.clone(), show(&c.before), show(&c.after)])
        .collect();
    print!("{}", table(&["FIELD", "BEFORE", "AFTER"], &rows));
}

/// A job file as the server takes it, with its content type: a TOML file's `[[config]]`
/// entries that name a `file` (relative to the job file) get that file's text as `content`.
pub fn job_body(file: &Path) -> Result<(Vec<u8>, &'static str)> {
    let body = std::fs::read(file).with_context(|| format!("read job file {}", file.display()))?;
    if file.extension().is_some_and(|e| e == "json") {
        return Ok((body, "application/json"));
    }
    let text =
        String::from_utf8(body).with_context(|| format!("{} is not UTF-8", file.display()))?;
    let mut doc: toml::Table = match toml::from_str(&text) {
        Ok(doc) => doc,
        // The server names the error in the spec.
        Err(_) => return Ok((text.into_bytes(), "application/toml")),
    };
    let Some(toml::Value::Array(configs)) = doc.get_mut("config") else {
        return Ok((text.into_bytes(), "application/toml"));
    };
    let base = file.parent().unwrap_or_else(|| Path::new("."));
    let mut changed = false;
    for (i, c) in configs.iter_mut().enumerate() {
        let Some(table) = c.as_table_mut() else {
            continue;
        };
        let Some(toml::Value::String(name)) = table.remove("file") else {
            continue;
        };
        if table.contains_key("content") {
            bail!("config[{i}] has both `file` and `content`; keep one");
        }
        let path = base.join(&name);
        let content = std::fs::read_to_string(&path)
            .with_context(|| format!("config[{i}].file: read {}", path.display()))?;
        table.insert("content".into(), toml::Value::String(content));
        changed = true;
    }
    if !changed {
        return Ok((text.into_bytes(), "application/toml"));
    }
    Ok((toml::to_string(&doc)?.into_bytes(), "application/toml"))
}

/// `warden job plan FILE`
pub fn plan(client: &warden_client::Client, opts: &ApiOpts, file: &Path) -> Result<()> {
    let (body, ct) = job_body(file)?;
    let v = client
        .request("POST", "/v1/jobs/plan", Some(ct), &body)?
        .json()?;
    if opts.output == OutputFormat::Json {
        return print_json(&v);
    }
    let p: JobPlan = view(v, "plan")?;
    match (p.outcome.as_str(), p.version) {
        ("unchanged", _) => println!("job {}: no change", p.job),
        ("created", v) => println!(
            "job {} would be created as version {}",
            p.job,
            v.unwrap_or(1)
        ),
        (_, v) if p.reloads > 0 => println!(
            "job {} would become version {}; {} running {} changed: {} reloaded in place \
             (new config files and a signal), {} replaced",
            p.job,
            v.unwrap_or(0),
            p.replaces,
            if p.replaces == 1 { "copy" } else { "copies" },
            p.reloads,
            p.replaces.saturating_sub(p.reloads)
        ),
        (_, v) => println!(
            "job {} would become version {}; {} running {} replaced",
            p.job,
            v.unwrap_or(0),
            p.replaces,
            if p.replaces == 1 { "copy" } else { "copies" }
        ),
    }
    if !p.changes.is_empty() {
        print_changes(&p.changes);
    }
    if let Some(why) = &p.refused {
        println!("a submission now would be refused: {why}");
    }
    Ok(())
}

/// `warden job revert NAME [VERSION]`
pub fn revert(
    client: &warden_client::Client,
    opts: &ApiOpts,
    name: &str,
    version: Option<u64>,
) -> Result<()> {
    let body = match version {
        Some(v) => serde_json::json!({ "version": v }).to_string(),
        None => String::new(),
    };
    let v = client
        .request(
            "POST",
            &format!("/v1/jobs/{name}/revert"),
            Some("application/json"),
            body.as_bytes(),
        )?
        .json()?;
    if opts.output == OutputFormat::Json {
        return print_json(&v);
    }
    let done: JobChange = view(v, "answer to the revert")?;
    println!(
        "job {} reverted: version {} runs the earlier spec; every copy is replaced at once \
         (`warden rollout status {}`)",
        done.job,
        done.version.unwrap_or(0),
        done.job
    );
    Ok(())
}

fn print_rollout(r: &RolloutView) {
    let kind = if r.revert { "revert" } else { "rollout" };
    println!(
        "{kind} of {}: version {} → {}, {}",
        r.job,
        r.from,
        r.to,
        r.phase.as_str()
    );
    println!(
        "copies: {} wanted, {} on version {} ({} healthy), {} being replaced",
        r.copies, r.updated, r.to, r.healthy, r.replacing
    );
    if let Some(share) = r.canary_share {
        println!(
            "traffic: the canaries ({}) get {share} % of the requests",
            r.canary_tasks.join(", ")
        );
    }
    if let Some(c) = &r.cohort {
        println!(
            "cohort: requests for API version {} go to {} alone{}",
            c.api_version,
            if c.tasks.is_empty() {
                "no copy yet".to_string()
            } else {
                c.tasks.join(", ")
            },
            if c.exclusive {
                "; every other request to the old copies"
            } else {
                ""
            }
        );
    }
    if let Some(j) = &r.judgement {
        let outcome = match j {
            warden_core::judge::Judgement::Hold(_) => "hold",
            warden_core::judge::Judgement::Pass(_) => "pass",
            warden_core::judge::Judgement::Fail(_) => "fail",
        };
        println!(
            "judge: {outcome} ({} passing, {} failing in a row): {}",
            r.passes,
            r.failures,
            j.evidence()
        );
    }
    if !r.reason.is_empty() {
        println!("reason: {}", r.reason);
    }
}

/// `warden rollout …`
pub fn rollout(cmd: &RolloutCommand, opts: &ApiOpts) -> Result<()> {
    no_html(opts, "warden rollout")?;
    let client = opts.client()?;
    match cmd {
        RolloutCommand::Status { name, watch } => {
            // A watch is bounded: a rollout that has not ended in a day is for a human anyway.
            let deadline = Instant::now() + Duration::from_secs(86_400);
            loop {
                let v = client.get(&format!("/v1/jobs/{name}/rollout"))?;
                if opts.output == OutputFormat::Json {
                    print_json(&v)?;
                } else {
                    let r: RolloutView = view(v.clone(), "rollout")?;
                    print_rollout(&r);
                }
                let r: RolloutView = view(v, "rollout")?;
                if !*watch || !r.phase.is_active() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
                println!();
            }
        }
        RolloutCommand::Promote { name } => {
            let v = client
                .request(
                    "POST",
                    &format!("/v1/jobs/{name}/rollout/promote"),
                    None,
                    b"",
                )?
                .json()?;
            if opts.output == OutputFormat::Json {
                return print_json(&v);
            }
            let r: RolloutView = view(v, "rollout")?;
            if r.phase == warden_core::release::RolloutPhase::AwaitingPromotion {
                bail!("the rollout of {name} is still awaiting promotion");
            }
            print_rollout(&r);
        }
    }
    Ok(())
}
