//! The dashboard: server-rendered HTML pages (askama templates under `templates/`) over the
//! same [`ControlApi`] view as the REST API, refreshed in place by htmx. `docs/dashboard.md`
//! is the user-facing description.
//!
//! - Pages: `/` (fleet), `/ui/agents/{name}`, `/ui/tasks`, `/ui/jobs`, `/ui/events`,
//!   `/ui/recoveries`, `/ui/sla`.
//! - Live refresh: each page wraps its content in `<div id="live" hx-get=SELF
//!   hx-trigger="every 2s">`; a request carrying htmx's `HX-Request` header gets only that
//!   content (a fragment), not the whole page.
//! - Static files — htmx, uPlot, our CSS and chart script — are compiled into the binary and
//!   served under `/ui/assets/`, so the dashboard works offline and needs no build step.
//! - Everything shown is HTML-escaped by askama; names in links are also URL-encoded.

use std::collections::HashMap;
use std::fmt::Write as _;

use askama::Template;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{
    AppState, ErrorCode, HttpError, SlaParams, api_error, blocking, path_error, query_error,
    sla_report, unix_now_ms,
};
use crate::history::Sample;
use crate::sla::SlaReport;
use crate::view::{AgentInfo, ControlApi, EventInfo, RecoveryInfo, TaskInfo};

/// Rows the fleet and tasks tables show at most (the fleet problems first); filters narrow
/// them down. Keeps a page of a 10,000-agent fleet small enough to refresh every 2 s.
pub const ROWS_SHOWN: usize = 500;
/// Tasks listed per job on the jobs page.
pub const TASKS_PER_JOB_SHOWN: usize = 50;
/// Events shown on the timeline and history sections.
pub const EVENTS_SHOWN: usize = 200;
/// Recoveries listed on the recoveries page (newest first).
pub const RECOVERIES_SHOWN: usize = 200;

const HTMX_JS: &[u8] = include_bytes!("../../assets/htmx.min.js");
const UPLOT_JS: &[u8] = include_bytes!("../../assets/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("../../assets/uPlot.min.css");
const DASHBOARD_JS: &[u8] = include_bytes!("../../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");

/// The dashboard's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet))
        .route("/ui", get(fleet))
        .route("/ui/agents/{name}", get(agent))
        .route("/ui/tasks", get(tasks))
        .route("/ui/jobs", get(jobs))
        .route("/ui/events", get(events))
        .route("/ui/recoveries", get(recoveries))
        .route("/ui/sla", get(sla))
        .route("/ui/assets/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ct): (&'static [u8], &'static str) = match file.as_str() {
        "htmx.min.js" => (HTMX_JS, "text/javascript; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "dashboard.css" => (DASHBOARD_CSS.as_bytes(), "text/css; charset=utf-8"),
        _ => {
            return HttpError::new(ErrorCode::NotFound, format!("no asset named {file:?}"))
                .into_response();
        }
    };
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(ct)),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/// A duration in ms for people: "850 ms", "4.2 s", "3 m 20 s", "2 h 5 m".
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} m {} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {} m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn fmt_opt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_string(), fmt_ms)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in ms.
pub fn fmt_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A window or objective as it is typed: "24h", "30m", "5s", "1500ms".
pub fn fmt_window(ms: u64) -> String {
    match ms {
        0 => "0s".to_string(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ => warden_core::duration_serde::format(&std::time::Duration::from_millis(ms)),
    }
}

fn fmt_pct(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(
        || "-".to_string(),
        |v| format!("{:.*}%", decimals, v * 100.0),
    )
}

// ---------------------------------------------------------------------------------------------
// The page frame.

const NAV: [(&str, &str); 7] = [
    ("/", "Fleet"),
    ("/ui/tasks", "Tasks"),
    ("/ui/jobs", "Jobs"),
    ("/ui/events", "Events"),
    ("/ui/recoveries", "Recoveries"),
    ("/ui/sla", "SLA"),
    ("/metrics", "Metrics"),
];

/// What `_head.html` and `_foot.html` need.
struct Layout {
    title: String,
    /// The nav link to highlight.
    active: &'static str,
    nav: &'static [(&'static str, &'static str)],
    /// What htmx polls (this page, with its query).
    refresh_url: String,
    /// Only the live content, for htmx.
    fragment: bool,
    /// Load uPlot.
    charts: bool,
    generated: String,
}

impl Layout {
    fn new(
        title: impl Into<String>,
        active: &'static str,
        refresh_url: String,
        h: &HeaderMap,
    ) -> Self {
        Layout {
            title: title.into(),
            active,
            nav: &NAV,
            refresh_url,
            fragment: h.contains_key("hx-request"),
            charts: false,
            generated: fmt_unix_ms(unix_now_ms()),
        }
    }
}

fn render(t: &impl Template, status: StatusCode) -> Result<Response, HttpError> {
    let html = t.render().map_err(|e| {
        tracing::error!(error = %e, "render dashboard page");
        HttpError::new(ErrorCode::Internal, format!("render page: {e}"))
    })?;
    // One URL answers both the page and its htmx fragment: never cache either, and say so.
    Ok((
        status,
        [
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (VARY, HeaderValue::from_static("HX-Request")),
        ],
        Html(html),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Fleet.

struct AgentRow {
    name: String,
    generation: u64,
    state: String,
    score: String,
    score_pct: u32,
    phi: String,
    last_heartbeat: String,
    in_state: String,
    tasks: Vec<String>,
    anomalies: Vec<String>,
    cordoned: bool,
}

fn fmt_phi(phi: f64) -> String {
    if phi >= 1e6 {
        "∞".to_string()
    } else {
        format!("{phi:.2}")
    }
}

impl AgentRow {
    fn of(a: &AgentInfo) -> Self {
        AgentRow {
            name: a.name.clone(),
            generation: a.generation,
            state: a.state.clone(),
            score: format!("{:.1}", a.health_score),
            score_pct: a.health_score.clamp(0.0, 100.0).round() as u32,
            phi: fmt_phi(a.phi),
            last_heartbeat: a
                .last_heartbeat_ms_ago
                .map_or_else(|| "never".to_string(), |ms| format!("{} ago", fmt_ms(ms))),
            in_state: fmt_ms(a.state_ms),
            tasks: a.tasks.clone(),
            anomalies: a.anomalies.clone(),
            cordoned: a.cordoned,
        }
    }
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    layout: Layout,
    agents: Vec<AgentRow>,
    /// Agents in the view, before filters.
    total: usize,
    /// Said when the table does not show every agent.
    note: Option<String>,
    counts: Vec<(&'static str, usize)>,
    sessions: usize,
    brake: bool,
}

const STATES: [&str; 7] = [
    "healthy",
    "degraded",
    "joining",
    "suspect",
    "quarantined",
    "failed",
    "left",
];

/// Problems first: the order of the fleet table.
fn severity(state: &str) -> u8 {
    match state {
        "failed" => 0,
        "suspect" => 1,
        "quarantined" => 2,
        "degraded" => 3,
        "joining" => 4,
        "healthy" => 5,
        _ => 6,
    }
}

/// Filters of the list pages (`/?state=failed&q=web`, `/ui/tasks?job=web`). Unknown
/// parameters are ignored: these are pages for people, not an API.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    /// Only agents in this state.
    state: Option<String>,
    /// Only agents whose name contains this.
    q: Option<String>,
    /// Only the tasks of this job.
    job: Option<String>,
}

/// `path?k=v&…` of the given parameters, percent-encoded.
fn with_query(path: &str, params: &[(&str, Option<&String>)]) -> String {
    let mut url = path.to_string();
    let mut sep = '?';
    for (k, v) in params {
        if let Some(v) = v {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                    url.push(char::from(b));
                } else {
                    let _ = write!(url, "%{b:02X}");
                }
            }
            sep = '&';
        }
    }
    url
}

async fn fleet(
    State(st): State<AppState>,
    h: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(query_error)?;
    let mut agents = st.api.agents();
    let health = st.api.health();
    let counts = STATES
        .iter()
        .map(|s| (*s, agents.iter().filter(|a| a.state == *s).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total = agents.len();
    agents.retain(|a| {
        params.state.as_ref().is_none_or(|s| &a.state == s)
            && params
                .q
                .as_ref()
                .is_none_or(|q| a.name.contains(q.as_str()))
    });
    agents.sort_by(|a, b| {
        severity(&a.state)
            .cmp(&severity(&b.state))
            .then_with(|| a.name.cmp(&b.name))
    });
    let matching = agents.len();
    agents.truncate(ROWS_SHOWN);
    let note = (matching < total || matching > ROWS_SHOWN).then(|| {
        format!(
            "Showing {} of {matching} matching agents ({total} in all), problems first.",
            agents.len()
        )
    });
    let refresh = with_query(
        "/",
        &[("state", params.state.as_ref()), ("q", params.q.as_ref())],
    );
    let page = FleetPage {
        layout: Layout::new("Fleet", "/", refresh, &h),
        agents: agents.iter().map(AgentRow::of).collect(),
        total,
        note,
        counts,
        sessions: health.sessions,
        brake: health.brake_engaged,
    };
    render(&page, StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------
// Events (shared by several pages).

struct EventRow {
    seq: u64,
    time: String,
    kind: String,
    /// CSS class: transition, recovery, alarm, task, job, other.
    class: &'static str,
    agent: String,
    task: String,
    message: String,
}

impl EventRow {
    fn of(e: &EventInfo) -> Self {
        let class = match e.kind.split('.').next().unwrap_or_default() {
            _ if e.kind == "agent.transition" => "transition",
            "recovery" => "recovery",
            "alarm" => "alarm",
            "task" => "task",
            "job" => "job",
            _ => "other",
        };
        EventRow {
            seq: e.seq,
            time: fmt_unix_ms(e.unix_ms),
            kind: e.kind.clone(),
            class,
            agent: e.agent.clone().unwrap_or_default(),
            task: e.task.clone().unwrap_or_default(),
            message: e.message.clone(),
        }
    }
}

/// The newest events passing `keep`, newest first, at most [`EVENTS_SHOWN`].
fn recent_events(
    api: &dyn ControlApi,
    scan: usize,
    keep: impl Fn(&EventInfo) -> bool,
) -> Result<Vec<EventRow>, HttpError> {
    let events = api.recent_events(scan).map_err(api_error)?;
    Ok(events
        .iter()
        .rev()
        .filter(|e| keep(e))
        .take(EVENTS_SHOWN)
        .map(EventRow::of)
        .collect())
}

/// Whether an event's agent ("name#generation") is `name`.
fn is_agent(e: &EventInfo, name: &str) -> bool {
    e.agent
        .as_deref()
        .is_some_and(|a| a.rsplit_once('#').map_or(a, |(n, _)| n) == name)
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    layout: Layout,
    events: Vec<EventRow>,
}

async fn events(State(st): State<AppState>, h: HeaderMap) -> Result<Response, HttpError> {
    let events = blocking(&st.api, |api| recent_events(api, EVENTS_SHOWN, |_| true)).await?;
    let page = EventsPage {
        layout: Layout::new("Events", "/ui/events", "/ui/events".into(), &h),
        events,
    };
    render(&page, StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------
// Agent.

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentPage {
    layout: Layout,
    name: String,
    agent: Option<AgentRow>,
    probe_addr: String,
    signals: Vec<(&'static str, String)>,
    samples: usize,
    /// Columns for uPlot: unix_s, score, phi, cpu, memory, error_rate, latency_ms, pressure.
    history_json: String,
    tasks: Vec<TaskInfo>,
    events: Vec<EventRow>,
}

fn history_json(samples: &[Sample]) -> String {
    let col = |f: fn(&Sample) -> serde_json::Value| -> Vec<serde_json::Value> {
        samples.iter().map(f).collect()
    };
    let columns = vec![
        col(|s| s.unix_s.into()),
        col(|s| json_f32(s.score)),
        col(|s| json_f32(s.phi)),
        col(|s| json_f32(s.cpu)),
        col(|s| json_f32(s.memory)),
        col(|s| json_f32(s.error_rate)),
        col(|s| json_f32(s.latency_ms)),
        col(|s| json_f32(s.pressure)),
    ];
    serde_json::to_string(&columns).unwrap_or_else(|_| "[]".into())
}

/// A sample value as JSON, rounded to 3 decimals; NaN (not reported) as `null`.
fn json_f32(x: f32) -> serde_json::Value {
    let v = (f64::from(x) * 1000.0).round() / 1000.0;
    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

async fn agent(
    State(st): State<AppState>,
    h: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    let info = st.api.agents().into_iter().find(|a| a.name == name);
    let tasks: Vec<TaskInfo> = st
        .api
        .tasks()
        .into_iter()
        .filter(|t| t.agent.as_deref() == Some(name.as_str()))
        .collect();
    let who = name.clone();
    let events = blocking(&st.api, move |api| {
        recent_events(api, 5_000, |e| {
            is_agent(e, &who)
                && matches!(
                    e.kind.as_str(),
                    "agent.transition" | "agent.session" | "agent.cordon"
                )
        })
    })
    .await?;
    let samples = st.history.samples(&name);
    let mut refresh = String::from("/ui/agents/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            refresh.push(char::from(b));
        } else {
            let _ = write!(refresh, "%{b:02X}");
        }
    }
    let signals = info.as_ref().map_or_else(Vec::new, |a| {
        let s = &a.signals;
        let f = |v: Option<f64>, unit: &str| {
            v.map_or_else(|| "-".to_string(), |x| format!("{x:.3}{unit}"))
        };
        vec![
            ("cpu", f(s.cpu, "")),
            ("memory", f(s.memory, "")),
            ("error rate", f(s.error_rate, "")),
            ("latency p99", f(s.latency_ms, " ms")),
            ("task success", f(s.task_success, "")),
            ("restarts", f(s.restarts, "")),
            ("pressure", f(s.pressure, "")),
        ]
    });
    let status = if info.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let mut layout = Layout::new(format!("Agent {name}"), "/", refresh, &h);
    layout.charts = true;
    let page = AgentPage {
        layout,
        probe_addr: info
            .as_ref()
            .map(|a| a.probe_addr.clone())
            .unwrap_or_default(),
        agent: info.as_ref().map(AgentRow::of),
        name,
        signals,
        samples: samples.len(),
        history_json: history_json(&samples),
        tasks,
        events,
    };
    render(&page, status)
}

// ---------------------------------------------------------------------------------------------
// Tasks and jobs.

struct TaskRow {
    id: String,
    job: String,
    state: String,
    agent: Option<String>,
    generation: String,
    epoch: u64,
    failures: u32,
    /// Recoveries that moved it.
    moves: usize,
}

#[derive(Template)]
#[template(path = "tasks.html")]
struct TasksPage {
    layout: Layout,
    tasks: Vec<TaskRow>,
    /// Said when the table does not show every slot.
    note: Option<String>,
    events: Vec<EventRow>,
}

async fn tasks(
    State(st): State<AppState>,
    h: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(query_error)?;
    let mut tasks = st.api.tasks();
    let total = tasks.len();
    if let Some(job) = &params.job {
        tasks.retain(|t| &t.job == job);
    }
    let matching = tasks.len();
    tasks.truncate(ROWS_SHOWN);
    let job = params.job.clone();
    let (moves, events) = blocking(&st.api, move |api| {
        let mut moves: HashMap<String, usize> = HashMap::new();
        for r in api.recoveries().map_err(api_error)? {
            *moves.entry(r.task).or_default() += 1;
        }
        let e = recent_events(api, 5_000, |e| {
            e.task.as_deref().is_some_and(|t| {
                job.as_deref()
                    .is_none_or(|j| t.rsplit_once('/').is_some_and(|(tj, _)| tj == j))
            })
        })?;
        Ok((moves, e))
    })
    .await?;
    let note = (matching < total || matching > ROWS_SHOWN).then(|| {
        format!(
            "Showing {} of {matching} matching task slots ({total} in all).",
            tasks.len().min(ROWS_SHOWN)
        )
    });
    let rows = tasks
        .into_iter()
        .map(|t| TaskRow {
            moves: moves.get(&t.id).copied().unwrap_or(0),
            generation: t.generation.map_or_else(String::new, |g| g.to_string()),
            id: t.id,
            job: t.job,
            state: t.state,
            agent: t.agent,
            epoch: t.epoch,
            failures: t.failures,
        })
        .collect();
    let refresh = with_query("/ui/tasks", &[("job", params.job.as_ref())]);
    let page = TasksPage {
        layout: Layout::new("Tasks", "/ui/tasks", refresh, &h),
        tasks: rows,
        note,
        events,
    };
    render(&page, StatusCode::OK)
}

struct JobTask {
    id: String,
    state: String,
    agent: String,
    epoch: u64,
}

struct JobRow {
    /// Task slots not listed (beyond [`TASKS_PER_JOB_SHOWN`]; `/ui/tasks?job=` lists them).
    more: usize,
    name: String,
    kind: String,
    desired: u32,
    running: u32,
    tasks: Vec<JobTask>,
    command: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    jobs: Vec<JobRow>,
    rollouts: Vec<RolloutRow>,
    events: Vec<EventRow>,
}

/// A job's rollout (under way, or the last one), as the jobs page shows it.
struct RolloutRow {
    job: String,
    from: u64,
    to: u64,
    phase: String,
    /// A CSS class for the row: ok, short (under way) or failed.
    class: &'static str,
    copies: String,
    traffic: String,
    judge: String,
    reason: String,
}

fn rollout_row(v: &warden_core::controller::RolloutView) -> RolloutRow {
    let phase = if v.revert {
        format!("{} (revert)", v.phase.as_str())
    } else {
        v.phase.as_str().to_string()
    };
    let class = if v.phase.is_active() {
        "short"
    } else if matches!(
        v.phase,
        warden_core::release::RolloutPhase::Failed | warden_core::release::RolloutPhase::Reverted
    ) {
        "failed"
    } else {
        "ok"
    };
    let judge = v.judgement.as_ref().map_or(String::new(), |j| {
        let outcome = match j {
            warden_core::judge::Judgement::Hold(_) => "hold",
            warden_core::judge::Judgement::Pass(_) => "pass",
            warden_core::judge::Judgement::Fail(_) => "fail",
        };
        format!(
            "{outcome} ({} passing, {} failing in a row): {}",
            v.passes,
            v.failures,
            j.evidence()
        )
    });
    RolloutRow {
        job: v.job.to_string(),
        from: v.from,
        to: v.to,
        phase,
        class,
        copies: format!(
            "{} of {} updated, {} healthy, {} being replaced",
            v.updated, v.copies, v.healthy, v.replacing
        ),
        traffic: v
            .canary_share
            .map_or(String::new(), |p| format!("canaries {p} %")),
        judge,
        reason: v.reason.clone(),
    }
}

async fn jobs(State(st): State<AppState>, h: HeaderMap) -> Result<Response, HttpError> {
    let tasks = st.api.tasks();
    let (jobs, rollouts, events) = blocking(&st.api, |api| {
        let j = api.jobs().map_err(api_error)?;
        let r: Vec<RolloutRow> = j
            .iter()
            .filter_map(|j| api.rollout(j.spec.name.as_str()).ok())
            .map(|v| rollout_row(&v))
            .collect();
        let e = recent_events(api, 5_000, |e| {
            e.kind.starts_with("job.")
                || e.kind.starts_with("recovery.")
                || e.kind.starts_with("rollout.")
                || e.kind == "task.reschedule"
        })?;
        Ok((j, r, e))
    })
    .await?;
    let mut by_job: HashMap<&str, Vec<JobTask>> = HashMap::new();
    let mut more: HashMap<&str, usize> = HashMap::new();
    for t in &tasks {
        let shown = by_job.entry(t.job.as_str()).or_default();
        if shown.len() >= TASKS_PER_JOB_SHOWN {
            *more.entry(t.job.as_str()).or_default() += 1;
            continue;
        }
        shown.push(JobTask {
            id: t.id.clone(),
            state: t.state.clone(),
            agent: t.agent.clone().unwrap_or_else(|| "-".into()),
            epoch: t.epoch,
        });
    }
    let rows = jobs
        .into_iter()
        .map(|j| {
            let name = j.spec.name.to_string();
            let kind = serde_json::to_value(j.spec.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let mut command = j.spec.command.clone();
            for a in &j.spec.args {
                command.push(' ');
                command.push_str(a);
            }
            JobRow {
                more: more.get(name.as_str()).copied().unwrap_or(0),
                tasks: by_job.remove(name.as_str()).unwrap_or_default(),
                name,
                kind,
                desired: j.desired,
                running: j.running,
                command,
            }
        })
        .collect();
    let page = JobsPage {
        layout: Layout::new("Jobs", "/ui/jobs", "/ui/jobs".into(), &h),
        jobs: rows,
        rollouts,
        events,
    };
    render(&page, StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------
// Recoveries.

struct RecoveryRow {
    detected: String,
    task: String,
    from: String,
    to: String,
    outcome: String,
    rto: String,
    epoch: u64,
    cause: String,
    /// (CSS class, % of the total) of detection, confirmation, fencing wait, start-up.
    split: Vec<(&'static str, String)>,
    split_text: String,
}

fn split_of(r: &RecoveryInfo) -> (Vec<(&'static str, String)>, String) {
    let parts = [
        ("detection", r.detection_ms),
        ("confirmation", Some(r.confirmation_ms)),
        ("fencing", Some(r.fencing_wait_ms)),
        ("startup", r.start_up_ms),
    ];
    let total: u64 = parts.iter().filter_map(|(_, v)| *v).sum();
    let bars = parts
        .iter()
        .filter_map(|(c, v)| {
            let v = (*v)?;
            (total > 0).then(|| (*c, format!("{:.1}", 100.0 * v as f64 / total as f64)))
        })
        .collect();
    let text = format!(
        "detect {} · confirm {} · fence {} · start {}",
        fmt_opt_ms(r.detection_ms),
        fmt_ms(r.confirmation_ms),
        fmt_ms(r.fencing_wait_ms),
        fmt_opt_ms(r.start_up_ms)
    );
    (bars, text)
}

#[derive(Template)]
#[template(path = "recoveries.html")]
struct RecoveriesPage {
    layout: Layout,
    rows: Vec<RecoveryRow>,
}

async fn recoveries(State(st): State<AppState>, h: HeaderMap) -> Result<Response, HttpError> {
    let records = blocking(&st.api, |api| api.recoveries().map_err(api_error)).await?;
    let rows = records
        .iter()
        .rev()
        .take(RECOVERIES_SHOWN)
        .map(|r| {
            let (split, split_text) = split_of(r);
            RecoveryRow {
                detected: fmt_unix_ms(r.detected_at_unix_ms),
                task: r.task.clone(),
                from: r.from.clone(),
                to: r.to.clone().unwrap_or_else(|| "-".into()),
                outcome: r.outcome.clone(),
                rto: fmt_opt_ms(r.rto_ms),
                epoch: r.epoch,
                cause: r.cause.clone(),
                split,
                split_text,
            }
        })
        .collect();
    let page = RecoveriesPage {
        layout: Layout::new("Recoveries", "/ui/recoveries", "/ui/recoveries".into(), &h),
        rows,
    };
    render(&page, StatusCode::OK)
}

// ---------------------------------------------------------------------------------------------
// SLA.

struct JobAvailRow {
    job: String,
    slots: u32,
    availability: String,
    downtime: String,
    recoveries: u32,
}

struct SlowRow {
    task: String,
    from: String,
    to: String,
    rto: String,
    detection: String,
    confirmation: String,
    fencing_wait: String,
    start_up: String,
    cause: String,
}

/// The SLA report as `_sla_body.html` shows it.
struct SlaView {
    show_form: bool,
    since: String,
    objective: String,
    window_text: String,
    counts: String,
    success_rate: String,
    p50: String,
    p95: String,
    p99: String,
    max: String,
    within: String,
    /// "yes", "no" or "-".
    meets: &'static str,
    jobs: Vec<JobAvailRow>,
    slowest: Vec<SlowRow>,
}

impl SlaView {
    fn of(r: &SlaReport, show_form: bool) -> Self {
        let d =
            |ms: u64| warden_core::duration_serde::format(&std::time::Duration::from_millis(ms));
        SlaView {
            show_form,
            since: d(r.window_ms),
            objective: d(r.objective_rto_ms),
            window_text: format!(
                "{} → {} UTC ({})",
                fmt_unix_ms(r.since_unix_ms),
                fmt_unix_ms(r.now_unix_ms),
                fmt_ms(r.window_ms)
            ),
            counts: format!(
                "{} ({} succeeded, {} failed, {} in progress, {} superseded)",
                r.recoveries, r.succeeded, r.failed, r.in_progress, r.superseded
            ),
            success_rate: fmt_pct(r.success_rate, 1),
            p50: fmt_opt_ms(r.rto.p50_ms),
            p95: fmt_opt_ms(r.rto.p95_ms),
            p99: fmt_opt_ms(r.rto.p99_ms),
            max: fmt_opt_ms(r.rto.max_ms),
            within: match r.rto.within_objective_rate {
                Some(rate) => format!(
                    "{} of {} ({:.1}%)",
                    r.rto.within_objective,
                    r.rto.count,
                    rate * 100.0
                ),
                None => "-".into(),
            },
            meets: match r.rto.meets_objective {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            jobs: r
                .jobs
                .iter()
                .map(|j| JobAvailRow {
                    job: j.job.clone(),
                    slots: j.slots,
                    availability: fmt_pct(Some(j.availability), 3),
                    downtime: fmt_ms(j.downtime_ms),
                    recoveries: j.recoveries,
                })
                .collect(),
            slowest: r
                .slowest
                .iter()
                .map(|s| SlowRow {
                    task: s.task.clone(),
                    from: s.from.clone(),
                    to: s.to.clone().unwrap_or_else(|| "-".into()),
                    rto: fmt_opt_ms(s.rto_ms),
                    detection: fmt_opt_ms(s.detection_ms),
                    confirmation: fmt_ms(s.confirmation_ms),
                    fencing_wait: fmt_ms(s.fencing_wait_ms),
                    start_up: fmt_opt_ms(s.start_up_ms),
                    cause: s.cause.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "sla.html")]
struct SlaPage {
    layout: Layout,
    v: SlaView,
}

async fn sla(
    State(st): State<AppState>,
    h: HeaderMap,
    params: Result<Query<SlaParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(query_error)?;
    let q = params.query(&st.sla, unix_now_ms())?;
    let report = blocking(&st.api, move |api| sla_report(api, &q)).await?;
    let mut refresh = String::from("/ui/sla");
    let mut sep = '?';
    for (k, v) in [
        ("since", &params.since),
        ("objective_rto", &params.objective_rto),
    ] {
        if let Some(v) = v {
            // Durations are digits, '.', and unit letters; anything else was rejected above.
            let v: String = v
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            let _ = write!(refresh, "{sep}{k}={v}");
            sep = '&';
        }
    }
    let page = SlaPage {
        layout: Layout::new("SLA", "/ui/sla", refresh, &h),
        v: SlaView::of(&report, true),
    };
    render(&page, StatusCode::OK)
}

#[derive(Template)]
#[template(path = "sla_report.html")]
struct SlaReportPage<'a> {
    css: &'a str,
    generated: String,
    v: SlaView,
}

/// A self-contained HTML file of an SLA report (inline CSS, no scripts), as
/// `warden report sla --output html` writes it.
pub fn sla_report_html(report: &SlaReport) -> Result<String, askama::Error> {
    SlaReportPage {
        css: DASHBOARD_CSS,
        generated: fmt_unix_ms(report.now_unix_ms),
        v: SlaView::of(report, false),
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_ms(850), "850 ms");
        assert_eq!(fmt_ms(4_200), "4.2 s");
        assert_eq!(fmt_ms(200_000), "3 m 20 s");
        assert_eq!(fmt_ms(7_500_000), "2 h 5 m");
        assert_eq!(fmt_unix_ms(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_unix_ms(1_780_000_000_000), "2026-05-28 20:26:40");
        assert_eq!(fmt_unix_ms(951_782_400_000), "2000-02-29 00:00:00");
    }
}
