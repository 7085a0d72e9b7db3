//! `warden server`: flags, `WARDEN_*` environment variables and a TOML config file, with the
//! precedence defaults < file < environment < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warden_server::auth::{AccessPolicy, ApiAuth};
use warden_server::control::ControlConfig;
use warden_server::file_adapter::FileAdapterConfig;
use warden_server::haproxy::HaproxyConfig;
use warden_server::limits::LimitsConfig;
use warden_server::sla::SlaConfig;
use warden_store::RedbStore;

/// `warden server` flags.
#[derive(Clone, Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (see docs/configuration.md, or `--print-config`); flags and WARDEN_*
    /// variables override it.
    #[arg(long, env = "WARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded store [default: ./warden-data]
    #[arg(long, env = "WARDEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for agent sessions (gRPC) [default: 127.0.0.1:7400]
    #[arg(long, env = "WARDEN_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address for the REST API [default: 127.0.0.1:7401]
    #[arg(long, env = "WARDEN_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// REST API token file: lines `role sha256:<hex> [name]`, role `read` or `operator`
    /// (create tokens with `warden token api`). Without it the REST API is open to anyone who
    /// can reach it — for development only. See docs/security.md.
    #[arg(long, env = "WARDEN_API_TOKENS", value_name = "FILE")]
    pub api_tokens: Option<PathBuf>,
    /// With --api-tokens: serve GET /metrics without a token.
    #[arg(long)]
    pub public_metrics: bool,
    /// With --api-tokens: serve the dashboard (GET /, /ui/…) without a token.
    #[arg(long)]
    pub public_dashboard: bool,
    /// Print the effective configuration (defaults < file < environment < flags) as TOML and
    /// exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Directory for the embedded store.
    pub data_dir: Option<PathBuf>,
    /// Address for agent sessions.
    pub grpc_addr: Option<SocketAddr>,
    /// Address for the REST API.
    pub http_addr: Option<SocketAddr>,
    /// REST API token file (`--api-tokens`); none: the API is open (development only).
    pub api_tokens: Option<PathBuf>,
    /// What the REST API serves without a token when tokens are on (`[api]`).
    #[serde(default)]
    pub api: AccessPolicy,
    /// Protective limits (`[limits.api]`, `[limits.sessions]`, `[limits.jobs]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Control-plane tuning.
    #[serde(default)]
    pub control: ControlConfig,
    /// Defaults of the SLA report (`GET /v1/sla`, the dashboard's SLA page).
    #[serde(default)]
    pub sla: SlaConfig,
    /// HAProxy backends kept in step with services (`[[haproxy]]`, none by default).
    #[serde(default)]
    pub haproxy: Vec<HaproxyConfig>,
    /// Files rendered from services, with a reload command (`[[file_adapter]]`, none by default).
    #[serde(default)]
    pub file_adapter: Vec<FileAdapterConfig>,
}

/// Settings after merging.
#[derive(Debug)]
pub struct ServerSettings {
    /// Directory for the embedded store.
    pub data_dir: PathBuf,
    /// Address for agent sessions.
    pub grpc_addr: SocketAddr,
    /// Address for the REST API.
    pub http_addr: SocketAddr,
    /// REST API token file.
    pub api_tokens: Option<PathBuf>,
    /// What is served without a token.
    pub api: AccessPolicy,
    /// Protective limits.
    pub limits: LimitsConfig,
    /// Control-plane tuning.
    pub control: ControlConfig,
    /// SLA report defaults.
    pub sla: SlaConfig,
    /// HAProxy adapters.
    pub haproxy: Vec<HaproxyConfig>,
    /// File adapters.
    pub file_adapter: Vec<FileAdapterConfig>,
}

fn load_file(path: &Path) -> Result<ServerFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

impl ServerArgs {
    /// Merge defaults, file and flags, and validate.
    pub fn settings(&self) -> Result<ServerSettings> {
        let file = match &self.config {
            Some(p) => load_file(p)?,
            None => ServerFile::default(),
        };
        let s = ServerSettings {
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("warden-data")),
            grpc_addr: self
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400))),
            http_addr: self
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7401))),
            api_tokens: self.api_tokens.clone().or(file.api_tokens),
            api: AccessPolicy {
                public_metrics: self.public_metrics || file.api.public_metrics,
                public_dashboard: self.public_dashboard || file.api.public_dashboard,
            },
            limits: file.limits,
            control: file.control,
            sla: file.sla,
            haproxy: file.haproxy,
            file_adapter: file.file_adapter,
        };
        let mut s = s;
        s.control.planner.fencing = s.control.lifecycle.fencing.clone();
        s.control.validate().context("invalid configuration")?;
        s.limits
            .validate(s.control.lifecycle.heartbeat_interval)
            .context("invalid configuration")?;
        s.sla
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid configuration")?;
        for h in &s.haproxy {
            h.validate()
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?;
        }
        for f in &s.file_adapter {
            f.validate()
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?;
        }
        Ok(s)
    }
}

/// Run the server until SIGINT/SIGTERM.
pub async fn run(args: &ServerArgs) -> Result<()> {
    let s = args.settings()?;
    if args.print_config {
        let file = ServerFile {
            data_dir: Some(s.data_dir.clone()),
            grpc_addr: Some(s.grpc_addr),
            http_addr: Some(s.http_addr),
            api_tokens: s.api_tokens.clone(),
            api: s.api,
            limits: s.limits.clone(),
            control: s.control.clone(),
            sla: s.sla.clone(),
            haproxy: s.haproxy.clone(),
            file_adapter: s.file_adapter.clone(),
        };
        print!(
            "{}",
            toml::to_string_pretty(&file).context("render the configuration")?
        );
        return Ok(());
    }
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("create data dir {}", s.data_dir.display()))?;
    let store_dir = s.data_dir.join("store");
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&store_dir))
        .await?
        .context("open the store")?;
    let grpc = tokio::net::TcpListener::bind(s.grpc_addr)
        .await
        .with_context(|| format!("bind gRPC address {}", s.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(s.http_addr)
        .await
        .with_context(|| format!("bind HTTP address {}", s.http_addr))?;
    let api_auth = match &s.api_tokens {
        Some(path) => {
            let auth = ApiAuth::from_file(path, s.api)
                .with_context(|| format!("API token file {}", path.display()))?;
            tracing::info!(file = %path.display(), tokens = auth.tokens().len(), "REST API requires tokens");
            Some(Arc::new(auth))
        }
        None => None,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(crate::shutdown_on_signal(cancel.clone()));
    warden_server::server::run_with(
        Arc::new(store),
        s.control,
        s.sla,
        warden_server::server::Adapters {
            haproxy: s.haproxy,
            files: s.file_adapter,
        },
        warden_server::server::Protection {
            limits: s.limits,
            api_auth,
        },
        grpc,
        http,
        cancel,
    )
    .await?;
    Ok(())
}
