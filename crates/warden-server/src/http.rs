//! The REST API: routes, request parsing, error mapping and the limits that keep a busy or
//! hostile client from hurting the control plane. It owns the HTTP edge only; every answer comes
//! from a [`ControlApi`], and the JSON shapes are those of [`crate::view`]. `docs/api.md` is the
//! user-facing reference.
//!
//! - [`router`] builds the routes with the default [`Limits`]; [`serve`] runs them on a listener
//!   the caller bound, until a shutdown future completes.
//! - `GET /metrics` answers Prometheus text (see [`crate::metrics`]); the dashboard
//!   ([`dashboard`]: `GET /` and `/ui/…`) answers HTML; everything else is JSON.
//! - `GET /v1/sla` answers the SLA report of [`crate::sla`], the same figures the dashboard's
//!   SLA page shows.
//! - Every failure is a JSON error with a stable [`ErrorCode`]; unknown routes (404) and wrong
//!   methods (405) included.
//! - A submitted job spec is parsed and validated before [`ControlApi::submit_job`] is called,
//!   so a rejected request never changes what is stored.
//! - [`ControlApi`] calls that may touch the store run on tokio's blocking pool.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(api: std::sync::Arc<dyn warden_server::view::ControlApi>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7401").await?;
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! warden_server::http::serve(listener, api, shutdown).await
//! # }
//! ```

pub mod dashboard;
pub mod job_body;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Extension, Json, Router, middleware};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;

use crate::api_auth::{self, ApiAuth, Caller};
pub use crate::api_error::{ErrorCode, HttpError};
use crate::history::History;
use crate::limits::JobLimits;
pub use crate::limits::{
    ApiLimits as Limits, MAX_BODY_BYTES, MAX_CONCURRENT_REQUESTS, MAX_SERVICES_WAIT,
    REQUEST_TIMEOUT,
};
use crate::sla::{JobSlots, SlaConfig, SlaQuery, SlaReport};
use crate::view::{
    AgentInfo, BrakeRelease, ControlApi, EventInfo, HealthInfo, JobChange, JobInfo, JobPlan,
    LeaderView, RecoveryInfo, ServiceInfo, ServicesInfo, SubmitOutcome, TaskInfo,
};

/// After shutdown is signalled, how long [`serve`] waits for open connections to finish (15 s:
/// the request timeout plus a margin) before it returns anyway.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
/// Events returned by `GET /v1/events` when `limit` is not given.
pub const DEFAULT_EVENT_LIMIT: usize = 1000;
/// Largest `limit` accepted by `GET /v1/events`.
pub const MAX_EVENT_LIMIT: usize = 10_000;

type Api = Arc<dyn ControlApi>;

/// Everything the REST API is configured with besides its [`ControlApi`].
#[derive(Clone, Debug, Default)]
pub struct HttpConfig {
    /// Request limits.
    pub limits: Limits,
    /// Job spec limits, checked on `POST /v1/jobs`.
    pub jobs: JobLimits,
    /// Defaults of the SLA report.
    pub sla: SlaConfig,
    /// Token authentication; `None` leaves the API open (for development only).
    pub auth: Option<Arc<ApiAuth>>,
}

/// What every handler gets.
#[derive(Clone)]
struct AppState {
    api: Api,
    limits: Limits,
    jobs: JobLimits,
    sla: SlaConfig,
    history: Arc<History>,
    /// Held from the job-count check to the end of the submit, so concurrent creations
    /// cannot all pass a check made before any of them was stored. Async: a waiting request
    /// holds no thread of the blocking pool (session admission uses it too).
    submitting: Arc<tokio::sync::Mutex<()>>,
}

/// The REST API's routes over `api`, with the default [`Limits`] and SLA settings.
pub fn router(api: Arc<dyn ControlApi>) -> Router {
    router_with_limits(api, Limits::default())
}

/// The REST API's routes over `api`, with the given limits.
pub fn router_with_limits(api: Arc<dyn ControlApi>, limits: Limits) -> Router {
    router_with(api, limits, SlaConfig::default(), Arc::new(History::new()))
}

/// The REST API's routes over `api`, with the given limits, SLA settings and the agent
/// history the dashboard charts (fed by the caller, see [`serve_with`]).
pub fn router_with(
    api: Arc<dyn ControlApi>,
    limits: Limits,
    sla: SlaConfig,
    history: Arc<History>,
) -> Router {
    router_with_config(
        api,
        HttpConfig {
            limits,
            sla,
            ..HttpConfig::default()
        },
        history,
    )
}

/// The REST API's routes over `api` as `cfg` says, charting `history` on the dashboard. With
/// `cfg.auth` every request but `GET /healthz` (and what the access policy opens) needs a
/// token of the right role; the check runs before anything else, so a request without one
/// costs a hash and takes no slot of the concurrency limit.
pub fn router_with_config(
    api: Arc<dyn ControlApi>,
    cfg: HttpConfig,
    history: Arc<History>,
) -> Router {
    let HttpConfig {
        limits,
        jobs,
        sla,
        auth,
    } = cfg;
    // Outermost first. `Router::layer` wraps each route separately, so the concurrency limit
    // must be the *global* one (one semaphore shared by every route). Load shedding sits right
    // above it: when no permit is free the request is answered at once instead of queued.
    let protection = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(protection_error))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ))
        .layer(TimeoutLayer::new(limits.request_timeout));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/agents", get(list_agents))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route("/v1/jobs/{name}", get(get_job).delete(delete_job))
        .route("/v1/events", get(list_events))
        .route("/v1/recoveries", get(list_recoveries))
        .route("/v1/sla", get(get_sla))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{name}", get(get_service))
        .route("/v1/leader", get(get_leader))
        .route("/v1/brake/release", post(release_brake))
        .route("/v1/jobs/{name}/promote", post(promote_job))
        .route("/v1/jobs/plan", post(plan_job))
        .route("/v1/jobs/{name}/versions", get(job_versions))
        .route("/v1/jobs/{name}/revert", post(revert_job))
        .route("/v1/jobs/{name}/rollout", get(get_rollout))
        .route("/v1/jobs/{name}/rollout/promote", post(promote_rollout))
        .merge(dashboard::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            leadership,
        ))
        .layer(protection);
    let router = match auth {
        Some(auth) => router.layer(middleware::from_fn_with_state(
            auth,
            api_auth::require_token,
        )),
        None => router,
    };
    router.with_state(AppState {
        api,
        limits,
        jobs,
        sla,
        history,
        submitting: Arc::default(),
    })
}

/// Serve the REST API on `listener` until `shutdown` completes, then stop accepting, let open
/// requests finish and return. The drain is bounded by [`DRAIN_DEADLINE`]: connections still
/// open after it are abandoned (their requests are cut at [`REQUEST_TIMEOUT`] anyway).
///
/// The caller binds the listener, so tests can hand in `127.0.0.1:0`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<dyn ControlApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, api, SlaConfig::default(), shutdown).await
}

/// Like [`serve`], with the server's SLA settings. Also samples the agent view into the
/// dashboard's [`History`] every [`crate::history::SAMPLE_EVERY`] while it serves.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    api: Arc<dyn ControlApi>,
    sla: SlaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cfg = HttpConfig {
        sla,
        ..HttpConfig::default()
    };
    serve_with_config(listener, api, cfg, shutdown).await
}

/// Like [`serve`], configured by `cfg` (limits, SLA settings, authentication).
pub async fn serve_with_config(
    listener: tokio::net::TcpListener,
    api: Arc<dyn ControlApi>,
    cfg: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if cfg.auth.is_none() {
        tracing::warn!(
            "REST API without tokens: anyone who can reach it may change jobs (give --api-tokens outside development)"
        );
    }
    let history = Arc::new(History::new());
    let sampler = tokio::spawn(sample_history(Arc::clone(&api), Arc::clone(&history)));
    let result = serve_router(listener, router_with_config(api, cfg, history), shutdown).await;
    sampler.abort();
    result
}

/// Feed the dashboard's history from the agent view, forever (the caller aborts it).
async fn sample_history(api: Api, history: Arc<History>) {
    let mut tick = tokio::time::interval(crate::history::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let agents = api.agent_health();
        history.record(&agents, unix_now_ms());
    }
}

pub(crate) use crate::clock::unix_now_ms;

async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "REST API listening");
    }
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("REST API shutting down: draining open requests");
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .into_future();
    let drain_deadline = async move {
        match signalled_rx.await {
            Ok(()) => tokio::time::sleep(DRAIN_DEADLINE).await,
            // The signal future was dropped without firing: the server ended by itself.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!(
                deadline_ms = DRAIN_DEADLINE.as_millis() as u64,
                "REST API drain deadline passed; abandoning open connections"
            );
            Ok(())
        }
    }
}

/// Answer for errors raised by the protection layers (shed load, timeout).
async fn protection_error(err: BoxError) -> HttpError {
    if err.is::<tower::load_shed::error::Overloaded>() {
        HttpError::new(
            ErrorCode::Overloaded,
            "too many requests in flight; retry later",
        )
    } else if err.is::<tower::timeout::error::Elapsed>() {
        HttpError::new(
            ErrorCode::Timeout,
            "the request took too long; a write may still have been applied, retry to be sure",
        )
    } else {
        tracing::error!(error = %err, "REST API middleware failed");
        HttpError::new(ErrorCode::Internal, format!("request failed: {err}"))
    }
}

async fn unknown_route(request: Request) -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> HttpError {
    HttpError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}; see the Allow header",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Run `f` on tokio's blocking pool: it may wait on the store, which must not stall the
/// runtime's worker threads.
async fn blocking<T, F>(api: &Api, f: F) -> Result<T, HttpError>
where
    T: Send + 'static,
    F: FnOnce(&dyn ControlApi) -> Result<T, HttpError> + Send + 'static,
{
    let api = Arc::clone(api);
    match tokio::task::spawn_blocking(move || f(api.as_ref())).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => {
            tracing::error!(error = %join, "control plane call panicked");
            Err(HttpError::new(
                ErrorCode::Internal,
                "the control plane failed while serving the request",
            ))
        }
        Err(_) => Err(HttpError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        )),
    }
}

fn query_error(rejection: QueryRejection) -> HttpError {
    HttpError::new(ErrorCode::InvalidQuery, rejection.body_text())
}

fn path_error(rejection: PathRejection) -> HttpError {
    HttpError::new(ErrorCode::InvalidPath, rejection.body_text())
}

fn api_error(err: crate::view::ApiError) -> HttpError {
    HttpError::from_api(err, ErrorCode::InvalidRequest)
}

fn no_such_job(name: &str) -> HttpError {
    HttpError::new(ErrorCode::NotFound, format!("no job named {name:?}"))
}

// In-memory reads (infallible by their signature) are answered on the worker thread.

async fn get_leader(State(AppState { api, .. }): State<AppState>) -> Json<LeaderView> {
    Json(api.leader())
}

/// Marks reads a standby may serve stale (`X-Warden-Stale: true`), and points a write refused
/// by a standby at the leader (`307` with `Location`: the same method, path and query there).
async fn leadership(
    State(api): State<Api>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let read = request.method() == axum::http::Method::GET && target.starts_with("/v1/");
    let mut response = next.run(request).await;
    if response.status() == StatusCode::TEMPORARY_REDIRECT
        && !response.headers().contains_key(LOCATION)
        && let Some(leader) = api.leader().leader
    {
        let base = if leader.contains("://") {
            leader
        } else {
            format!("http://{leader}")
        };
        if let Ok(v) = HeaderValue::try_from(format!("{}{target}", base.trim_end_matches('/'))) {
            response.headers_mut().insert(LOCATION, v);
        }
    }
    if read && api.leader().stale {
        response
            .headers_mut()
            .insert("x-warden-stale", HeaderValue::from_static("true"));
    }
    response
}

async fn healthz(State(AppState { api, .. }): State<AppState>) -> Json<HealthInfo> {
    Json(api.health())
}

/// Prometheus text, not JSON: the one exception to the API's conventions.
async fn metrics(State(AppState { api, .. }): State<AppState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        api.metrics(),
    )
        .into_response()
}

async fn list_agents(State(AppState { api, .. }): State<AppState>) -> Json<Vec<AgentInfo>> {
    Json(api.agents())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TasksQuery {
    /// Only the tasks of this job.
    job: Option<String>,
}

async fn list_tasks(
    State(AppState { api, .. }): State<AppState>,
    query: Result<Query<TasksQuery>, QueryRejection>,
) -> Result<Json<Vec<TaskInfo>>, HttpError> {
    let Query(query) = query.map_err(query_error)?;
    let mut tasks = api.tasks();
    if let Some(job) = &query.job {
        tasks.retain(|t| &t.job == job);
    }
    Ok(Json(tasks))
}

async fn list_jobs(
    State(AppState { api, .. }): State<AppState>,
) -> Result<Json<Vec<JobInfo>>, HttpError> {
    blocking(&api, |api| api.jobs().map_err(api_error))
        .await
        .map(Json)
}

async fn get_job(
    State(AppState { api, .. }): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<JobInfo>, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    blocking(&api, move |api| {
        let jobs = api.jobs().map_err(api_error)?;
        jobs.into_iter()
            .find(|j| j.spec.name.as_str() == name)
            .ok_or_else(|| no_such_job(&name))
    })
    .await
    .map(Json)
}

/// What `POST /v1/jobs` and `DELETE /v1/jobs/{name}` answer.
async fn submit_job(
    State(AppState {
        api,
        limits,
        jobs,
        submitting,
        ..
    }): State<AppState>,
    request: Request,
) -> Result<Response, HttpError> {
    let caller = caller_label(&request);
    let format = job_body::body_format(request.headers())?;
    // Refuse an announced oversized body before reading any of it (a client that sent
    // `Expect: 100-continue` then never has to send it). The body limit catches the rest.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = limits.max_body_bytes;
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| body_error(rejection, limit))?;
    let _one_at_a_time = submitting.lock().await;
    let (name, outcome) = blocking(&api, move |api| {
        let spec = job_body::decode_job_spec(format, &body, &jobs)?;
        let name = spec.name.to_string();
        check_job_count(api, &name, jobs.max_jobs)?;
        let outcome = api
            .submit_job(spec)
            .map_err(|e| HttpError::from_api(e, ErrorCode::InvalidJobSpec))?;
        Ok((name, outcome))
    })
    .await?;
    let (outcome, version) = outcome;
    let (status, outcome) = match outcome {
        SubmitOutcome::Created => (StatusCode::CREATED, "created"),
        SubmitOutcome::Updated => (StatusCode::OK, "updated"),
        SubmitOutcome::Unchanged => (StatusCode::OK, "unchanged"),
    };
    tracing::info!(job = %name, outcome, by = %caller, "job submitted");
    // The name passed validation (ASCII letters, digits, '-', '_', '.'), so it is a valid
    // header value and needs no escaping in a path.
    let location = HeaderValue::try_from(format!("/v1/jobs/{name}")).ok();
    let change = JobChange {
        job: name,
        outcome: outcome.to_string(),
        version,
    };
    let mut response = (status, Json(change)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/jobs/plan`: what submitting the body would change; nothing is stored.
async fn plan_job(
    State(AppState {
        api, limits, jobs, ..
    }): State<AppState>,
    request: Request,
) -> Result<Json<JobPlan>, HttpError> {
    let format = job_body::body_format(request.headers())?;
    let limit = limits.max_body_bytes;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| body_error(rejection, limit))?;
    blocking(&api, move |api| {
        let spec = job_body::decode_job_spec(format, &body, &jobs)?;
        api.plan_job(spec)
            .map(Json)
            .map_err(|e| HttpError::from_api(e, ErrorCode::InvalidJobSpec))
    })
    .await
}

/// `GET /v1/jobs/{name}/versions`: the kept versions, oldest first, and the rollout.
async fn job_versions(
    State(AppState { api, .. }): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<warden_core::release::JobReleases>, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    blocking(&api, move |api| {
        api.job_versions(&name).map(Json).map_err(api_error)
    })
    .await
}

/// The body of `POST /v1/jobs/{name}/revert`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevertBody {
    /// The version to go back to (default: the newest earlier one that runs something else).
    #[serde(default)]
    version: Option<u64>,
}

/// `POST /v1/jobs/{name}/revert`: an earlier version's spec as a new version, rolled out at
/// once.
async fn revert_job(
    State(AppState { api, .. }): State<AppState>,
    caller: Option<Extension<Caller>>,
    name: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<JobChange>, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    let by = caller.map_or_else(|| "anonymous".to_string(), |Extension(c)| c.label);
    let body: RevertBody = if body.iter().all(u8::is_ascii_whitespace) {
        RevertBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            HttpError::new(
                ErrorCode::MalformedBody,
                format!("expected {{\"version\": N}} or an empty body: {e}"),
            )
        })?
    };
    blocking(&api, move |api| {
        let version = api.revert_job(&name, body.version).map_err(api_error)?;
        tracing::warn!(job = %name, version, %by, "job reverted by an operator");
        Ok(Json(JobChange {
            job: name,
            outcome: "reverted".to_string(),
            version: Some(version),
        }))
    })
    .await
}

/// `GET /v1/jobs/{name}/rollout`: the rollout under way, or the last one.
async fn get_rollout(
    State(AppState { api, .. }): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<warden_core::controller::RolloutView>, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    blocking(&api, move |api| {
        api.rollout(&name).map(Json).map_err(api_error)
    })
    .await
}

/// `POST /v1/jobs/{name}/rollout/promote`: past the canaries.
async fn promote_rollout(
    State(AppState { api, .. }): State<AppState>,
    caller: Option<Extension<Caller>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<warden_core::controller::RolloutView>, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    let by = caller.map_or_else(|| "anonymous".to_string(), |Extension(c)| c.label);
    blocking(&api, move |api| {
        api.promote_rollout(&name).map_err(api_error)?;
        tracing::info!(job = %name, %by, "rollout promoted by an operator");
        api.rollout(&name).map(Json).map_err(api_error)
    })
    .await
}

/// How logs name who made a request: its token's label, or "anonymous" on an open API.
fn caller_label(request: &Request) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_string(), |c| c.label.clone())
}

/// Refuse a new job when the server already holds `max_jobs` (updates always pass). Called
/// under the submit lock, so concurrent creations cannot overshoot it.
fn check_job_count(api: &dyn ControlApi, name: &str, max_jobs: usize) -> Result<(), HttpError> {
    let jobs = api
        .jobs()
        .map_err(|e| HttpError::from_api(e, ErrorCode::InvalidJobSpec))?;
    if jobs.len() >= max_jobs && !jobs.iter().any(|j| j.spec.name.as_str() == name) {
        return Err(HttpError::new(
            ErrorCode::LimitExceeded,
            format!(
                "the server already holds {} jobs, its limit (limits.jobs.max_jobs = {max_jobs}); \
                 delete one first",
                jobs.len()
            ),
        )
        .with_field("name"));
    }
    Ok(())
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
    )
}

fn body_error(rejection: BytesRejection, limit: usize) -> HttpError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        HttpError::new(ErrorCode::MalformedBody, rejection.body_text())
    }
}

async fn delete_job(
    State(AppState { api, .. }): State<AppState>,
    caller: Option<Extension<Caller>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<JobChange>, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    let by = caller.map_or_else(|| "anonymous".to_string(), |Extension(c)| c.label);
    blocking(&api, move |api| {
        api.delete_job(&name).map_err(api_error)?;
        tracing::info!(job = %name, %by, "job deleted");
        Ok(Json(JobChange {
            job: name,
            outcome: "deleted".to_string(),
            version: None,
        }))
    })
    .await
}

async fn release_brake(
    State(AppState { api, .. }): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<BrakeRelease>, HttpError> {
    let by = caller.map_or_else(|| "anonymous".to_string(), |Extension(c)| c.label);
    blocking(&api, move |api| {
        let was_engaged = api.release_brake().map_err(api_error)?;
        tracing::warn!(%by, was_engaged, "mass-failure brake released by an operator");
        Ok(Json(BrakeRelease { was_engaged }))
    })
    .await
}

async fn promote_job(
    State(AppState { api, .. }): State<AppState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<crate::view::SwitchoverInfo>, HttpError> {
    let by = caller.map_or_else(|| "anonymous".to_string(), |Extension(c)| c.label);
    blocking(&api, move |api| {
        let info = api.promote(&name).map_err(api_error)?;
        tracing::info!(job = %name, to = %info.to, %by, "planned switchover started");
        Ok(Json(info))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events with a larger sequence number.
    #[serde(default)]
    since: u64,
    /// At most this many events.
    #[serde(default = "default_event_limit")]
    limit: usize,
}

fn default_event_limit() -> usize {
    DEFAULT_EVENT_LIMIT
}

async fn list_events(
    State(AppState { api, .. }): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<EventInfo>>, HttpError> {
    let Query(query) = query.map_err(query_error)?;
    if !(1..=MAX_EVENT_LIMIT).contains(&query.limit) {
        return Err(HttpError::new(
            ErrorCode::InvalidQuery,
            format!("limit must be between 1 and {MAX_EVENT_LIMIT}"),
        ));
    }
    blocking(&api, move |api| {
        api.events(query.since, query.limit).map_err(api_error)
    })
    .await
    .map(Json)
}

async fn list_recoveries(
    State(AppState { api, .. }): State<AppState>,
) -> Result<Json<Vec<RecoveryInfo>>, HttpError> {
    blocking(&api, |api| api.recoveries().map_err(api_error))
        .await
        .map(Json)
}

/// Longest window `GET /v1/sla` accepts (366 days).
pub const MAX_SLA_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlaParams {
    /// Window length, e.g. "24h" (default: the server's `[sla] window`).
    since: Option<String>,
    /// Recovery time objective, e.g. "5s" (default: the server's `[sla] objective_rto`).
    objective_rto: Option<String>,
}

/// Parse a duration parameter of the SLA query, naming it in the error.
fn sla_duration(name: &str, value: Option<&str>, default: Duration) -> Result<Duration, HttpError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let d = warden_core::duration_serde::parse(text).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidQuery,
            format!("{name}: {e} (expected e.g. \"30m\", \"24h\" or \"5s\")"),
        )
        .with_field(name)
    })?;
    if d.is_zero() {
        return Err(HttpError::new(
            ErrorCode::InvalidQuery,
            format!("{name} must be greater than zero"),
        )
        .with_field(name));
    }
    if d > MAX_SLA_WINDOW {
        return Err(HttpError::new(
            ErrorCode::InvalidQuery,
            format!("{name} must be at most 366 days"),
        )
        .with_field(name));
    }
    Ok(d)
}

impl SlaParams {
    fn query(&self, cfg: &SlaConfig, now_unix_ms: u64) -> Result<SlaQuery, HttpError> {
        Ok(SlaQuery {
            now_unix_ms,
            window: sla_duration("since", self.since.as_deref(), cfg.window)?,
            objective_rto: sla_duration(
                "objective_rto",
                self.objective_rto.as_deref(),
                cfg.objective_rto,
            )?,
        })
    }
}

/// The SLA report for `q`, from the API's recovery records and jobs.
fn sla_report(api: &dyn ControlApi, q: &SlaQuery) -> Result<SlaReport, HttpError> {
    let records = api.recoveries().map_err(api_error)?;
    let jobs: Vec<JobSlots> = api
        .jobs()
        .map_err(api_error)?
        .into_iter()
        .map(|j| JobSlots {
            job: j.spec.name.to_string(),
            slots: j.desired,
        })
        .collect();
    Ok(crate::sla::compute(q, &records, &jobs))
}

async fn get_sla(
    State(AppState { api, sla, .. }): State<AppState>,
    params: Result<Query<SlaParams>, QueryRejection>,
) -> Result<Json<SlaReport>, HttpError> {
    let Query(params) = params.map_err(query_error)?;
    let q = params.query(&sla, unix_now_ms())?;
    blocking(&api, move |api| sla_report(api, &q))
        .await
        .map(Json)
}

/// Header carrying the registry index an answer reflects (pass it back as `?index=`).
pub const INDEX_HEADER: &str = "x-warden-index";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchParams {
    /// Answer once the index is greater than this (a blocking query); absent: at once.
    index: Option<u64>,
    /// Longest to block, e.g. "5s" (default and maximum [`MAX_SERVICES_WAIT`]).
    wait: Option<String>,
}

impl WatchParams {
    fn wait(&self) -> Result<Duration, HttpError> {
        let Some(text) = self.wait.as_deref() else {
            return Ok(MAX_SERVICES_WAIT);
        };
        let d = warden_core::duration_serde::parse(text).map_err(|e| {
            HttpError::new(
                ErrorCode::InvalidQuery,
                format!("wait: {e} (expected e.g. \"5s\" or \"500ms\")"),
            )
            .with_field("wait")
        })?;
        if d > MAX_SERVICES_WAIT {
            return Err(HttpError::new(
                ErrorCode::InvalidQuery,
                "wait must be at most 9s (the request timeout is 10s)",
            )
            .with_field("wait"));
        }
        Ok(d)
    }
}

/// Block until `current(api)` reports an index above `params.index`, or the wait ends; then
/// answer what it reports, with the index in [`INDEX_HEADER`].
async fn blocking_query<T: Serialize>(
    api: &Api,
    params: &WatchParams,
    current: impl Fn(&dyn ControlApi) -> Result<(u64, T), HttpError>,
) -> Result<Response, HttpError> {
    let wait = params.wait()?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut watch = api.watch_services();
    loop {
        if let Some(rx) = watch.as_mut() {
            rx.borrow_and_update();
        }
        let (index, body) = current(api.as_ref())?;
        let blocked = params.index.is_some_and(|n| index <= n);
        let Some(rx) = watch.as_mut().filter(|_| blocked) else {
            let mut response = Json(body).into_response();
            response
                .headers_mut()
                .insert(INDEX_HEADER, HeaderValue::from(index));
            return Ok(response);
        };
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // Timed out or the control plane is gone: answer what stands.
            Ok(Err(_)) | Err(_) => watch = None,
        }
    }
}

async fn list_services(
    State(AppState { api, .. }): State<AppState>,
    params: Result<Query<WatchParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(query_error)?;
    blocking_query(&api, &params, |api| {
        let all: ServicesInfo = api.services();
        Ok((all.index, all))
    })
    .await
}

async fn get_service(
    State(AppState { api, .. }): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<WatchParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Path(name) = name.map_err(path_error)?;
    let Query(params) = params.map_err(query_error)?;
    blocking_query(&api, &params, |api| {
        let service: ServiceInfo = api
            .services()
            .services
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                HttpError::new(ErrorCode::NotFound, format!("no service named {name:?}"))
            })?;
        Ok((service.index, service))
    })
    .await
}
