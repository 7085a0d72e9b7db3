//! `warden server`: flags, `WARDEN_*` environment variables and a TOML config file, with the
//! precedence defaults < file < environment < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::etcd_cmd::{ElectionConfig, EtcdAccess};
use clap::Args;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warden_core::controller::ControllerConfig;
use warden_server::api_auth::{AccessPolicy, ApiAuth};
use warden_server::auth::{JoinTokens, ServerTls, SessionSecurity};
use warden_server::file_adapter::FileAdapterConfig;
use warden_server::haproxy::HaproxyConfig;
use warden_server::leader::Leadership;
use warden_server::limits::LimitsConfig;
use warden_server::revoke::DenyList;
use warden_server::sla::SlaConfig;
use warden_store::{RedbStore, Store};

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
    /// The server's certificate (PEM) for mutual TLS on the agent session listener; needs
    /// --tls-key and --tls-client-ca. `warden tls init` makes one. Without it agent sessions
    /// are plaintext (development only).
    #[arg(long, env = "WARDEN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WARDEN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) agents' certificates must chain to; an agent's identity is the
    /// DNS name in its certificate.
    #[arg(long, env = "WARDEN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Revoked agent certificates: one serial number (hex) per line, as `warden tls revoke`
    /// appends them. Re-read every 250 ms: a revoked certificate's live sessions are closed
    /// and new ones refused. Needs --tls-cert.
    #[arg(long, env = "WARDEN_TLS_DENY")]
    pub tls_deny: Option<PathBuf>,
    /// File of join token hashes, one `sha256:<hex> [once]` per line (`warden token join`
    /// adds one); agents must present one of these tokens. Re-read when it changes. Without
    /// it no token is required.
    #[arg(long, env = "WARDEN_JOIN_TOKENS")]
    pub join_tokens: Option<PathBuf>,
    /// Where the control plane's state lives: `redb` (the embedded store in --data-dir, one
    /// server) or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (a replicated control plane: run
    /// several servers on the same URL; one is elected leader). [default: redb]
    #[arg(long, env = "WARDEN_STORE")]
    pub store: Option<String>,
    /// CA certificate(s) (PEM) etcd's certificate must chain to: the etcd store over TLS.
    #[arg(long, env = "WARDEN_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd started with --client-cert-auth; needs --etcd-key
    /// and --etcd-ca.
    #[arg(long, env = "WARDEN_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, env = "WARDEN_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, for an etcd with authentication enabled; needs --etcd-password-file.
    #[arg(long, env = "WARDEN_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(long, env = "WARDEN_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// The REST address this replica advertises to the others (`GET /v1/leader`, redirects of
    /// writes) [default: --http-addr]
    #[arg(long, env = "WARDEN_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// REST API token file: lines `role sha256:<hex> [name]`, role `read` or `operator`
    /// (`warden token api` adds one; re-read when it changes). Without it the REST API is
    /// open to anyone who can reach it — for development only. See docs/security.md.
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
    /// The server's certificate for agent sessions (PEM); with `tls_key` and `tls_client_ca`
    /// turns on mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) agents' certificates must chain to (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// Revoked agent certificates' serial numbers, one per line (re-read on change).
    pub tls_deny: Option<PathBuf>,
    /// File of join token hashes (`sha256:<hex> [once]` per line); unset: no token required.
    pub join_tokens: Option<PathBuf>,
    /// `redb` or `etcd://HOST:PORT[,...][/PREFIX]`.
    pub store: Option<String>,
    /// The REST address advertised to the other replicas.
    pub advertise_addr: Option<String>,
    /// REST API token file (`--api-tokens`); unset: the API is open (development only).
    pub api_tokens: Option<PathBuf>,
    /// What the REST API serves without a token when tokens are on (`[api]`).
    #[serde(default)]
    pub api: AccessPolicy,
    /// Protective limits (`[limits.api]`, `[limits.sessions]`, `[limits.jobs]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Leader election on etcd (`[election]`).
    #[serde(default)]
    pub election: ElectionConfig,
    /// TLS and authentication to etcd (`[etcd]`).
    #[serde(default, skip_serializing_if = "etcd_unset")]
    pub etcd: EtcdAccess,
    /// Control-plane tuning.
    #[serde(default)]
    pub control: ControllerConfig,
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

/// Where the control plane's state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded redb file in the data directory: a single server.
    Redb,
    /// An etcd cluster (the URL as given): replicated servers with a leader.
    Etcd(String),
}

impl StoreChoice {
    /// Parse `redb` or `etcd://...`.
    pub fn parse(text: &str) -> Result<StoreChoice> {
        let t = text.trim();
        if t.is_empty() || t == "redb" {
            Ok(StoreChoice::Redb)
        } else if t.starts_with("etcd://") {
            Ok(StoreChoice::Etcd(t.to_string()))
        } else {
            anyhow::bail!(
                "invalid --store {text:?}: expected `redb` or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`"
            )
        }
    }

    /// As written in a config file.
    pub fn as_text(&self) -> String {
        match self {
            StoreChoice::Redb => "redb".into(),
            StoreChoice::Etcd(url) => url.clone(),
        }
    }
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
    /// Mutual TLS: certificate, key, client CA.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The deny list of revoked agent certificates.
    pub tls_deny: Option<PathBuf>,
    /// Join token hashes file.
    pub join_tokens: Option<PathBuf>,
    /// Where the state lives.
    pub store: StoreChoice,
    /// The REST address advertised to the other replicas.
    pub advertise_addr: String,
    /// Leader election settings.
    pub election: ElectionConfig,
    /// TLS and authentication to etcd.
    pub etcd: EtcdAccess,
    /// REST API token file.
    pub api_tokens: Option<PathBuf>,
    /// What the REST API serves without a token.
    pub api: AccessPolicy,
    /// Protective limits.
    pub limits: LimitsConfig,
    /// Control-plane tuning.
    pub control: ControllerConfig,
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
            tls: match (
                self.tls_cert.clone().or(file.tls_cert),
                self.tls_key.clone().or(file.tls_key),
                self.tls_client_ca.clone().or(file.tls_client_ca),
            ) {
                (Some(c), Some(k), Some(ca)) => Some((c, k, ca)),
                (None, None, None) => None,
                _ => bail!(
                    "--tls-cert, --tls-key and --tls-client-ca (tls_cert, tls_key, \
                     tls_client_ca in the config file) go together: the server requires \
                     client certificates whenever it speaks TLS"
                ),
            },
            tls_deny: self.tls_deny.clone().or(file.tls_deny),
            join_tokens: self.join_tokens.clone().or(file.join_tokens),
            store: StoreChoice::parse(
                self.store
                    .as_deref()
                    .or(file.store.as_deref())
                    .unwrap_or("redb"),
            )?,
            advertise_addr: String::new(),
            election: file.election,
            etcd: EtcdAccess {
                ca: self.etcd_ca.clone().or(file.etcd.ca),
                cert: self.etcd_cert.clone().or(file.etcd.cert),
                key: self.etcd_key.clone().or(file.etcd.key),
                user: self.etcd_user.clone().or(file.etcd.user),
                password_file: self.etcd_password_file.clone().or(file.etcd.password_file),
            },
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
        s.advertise_addr = self
            .advertise_addr
            .clone()
            .or(file.advertise_addr)
            .unwrap_or_else(|| s.http_addr.to_string());
        s.election.validate()?;
        s.etcd.validate()?;
        if s.etcd.is_set() && s.store == StoreChoice::Redb {
            anyhow::bail!(
                "the etcd settings (--etcd-*, [etcd]) apply to --store etcd://…; this server \
                 uses the embedded store"
            );
        }
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
            tls_cert: s.tls.as_ref().map(|t| t.0.clone()),
            tls_key: s.tls.as_ref().map(|t| t.1.clone()),
            tls_client_ca: s.tls.as_ref().map(|t| t.2.clone()),
            tls_deny: s.tls_deny.clone(),
            join_tokens: s.join_tokens.clone(),
            store: Some(s.store.as_text()),
            advertise_addr: Some(s.advertise_addr.clone()),
            election: s.election.clone(),
            etcd: s.etcd.clone(),
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
    let security = session_security(&s)?;
    let api_auth = match &s.api_tokens {
        Some(path) => {
            let auth = ApiAuth::from_file(path, s.api)
                .with_context(|| format!("API token file {}", path.display()))?;
            tracing::info!(file = %path.display(), tokens = auth.tokens().len(), "REST API requires tokens");
            Some(Arc::new(auth))
        }
        None => None,
    };
    let grpc = tokio::net::TcpListener::bind(s.grpc_addr)
        .await
        .with_context(|| format!("bind gRPC address {}", s.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(s.http_addr)
        .await
        .with_context(|| format!("bind HTTP address {}", s.http_addr))?;
    // Port 0 picks a free port: advertise the one picked.
    let advertise = match http.local_addr() {
        Ok(bound) if s.advertise_addr == s.http_addr.to_string() => bound.to_string(),
        _ => s.advertise_addr.clone(),
    };
    let cancel = CancellationToken::new();
    let (store, leadership): (Arc<dyn Store>, Leadership) = match &s.store {
        StoreChoice::Redb => {
            std::fs::create_dir_all(&s.data_dir)
                .with_context(|| format!("create data dir {}", s.data_dir.display()))?;
            let store_dir = s.data_dir.join("store");
            let store = tokio::task::spawn_blocking(move || RedbStore::open(&store_dir))
                .await?
                .context("open the store")?;
            (Arc::new(store), Leadership::single(advertise.clone()))
        }
        StoreChoice::Etcd(url) => {
            let lease = s.control.lifecycle.fencing.lease_ttl;
            if lease <= s.election.ttl {
                tracing::warn!(
                    lease_ms = lease.as_millis() as u64,
                    election_ttl_ms = s.election.ttl.as_millis() as u64,
                    "the agent lease is no longer than the election TTL: after a leader dies, \
                     agents fence their singletons before a new leader can renew their leases \
                     (they restart right after); set [control.lifecycle.fencing] lease_ttl above \
                     election.ttl + 1s to ride through failovers (docs/ha.md)"
                );
            }
            crate::etcd_cmd::open(url, &s.etcd, &advertise, &s.election, cancel.child_token())
                .await?
        }
    };
    tokio::spawn(crate::shutdown_on_signal(cancel.clone()));
    warden_server::server::run_replica(
        store,
        s.control,
        s.sla,
        warden_server::server::Adapters {
            haproxy: s.haproxy,
            files: s.file_adapter,
        },
        leadership,
        security,
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

/// Where the server records which agent each one-time join token is bound to.
pub const JOIN_TOKEN_BINDINGS: &str = "join-token-bindings.json";

/// Read the TLS files and the join tokens (errors name the file), and say plainly what is
/// left unprotected.
fn session_security(s: &ServerSettings) -> Result<SessionSecurity> {
    let tls = match &s.tls {
        Some((cert, key, ca)) => Some(ServerTls::from_files(cert, key, ca)?),
        None => None,
    };
    let deny = match (&s.tls_deny, &tls) {
        (Some(f), Some(_)) => Some(DenyList::open(f)?),
        (Some(_), None) => bail!(
            "--tls-deny (tls_deny) revokes client certificates, which needs mutual TLS: \
             give --tls-cert, --tls-key and --tls-client-ca too"
        ),
        (None, _) => None,
    };
    let join_tokens = match &s.join_tokens {
        Some(f) => {
            // One-time token bindings are kept here, whatever the store.
            std::fs::create_dir_all(&s.data_dir)
                .with_context(|| format!("create data dir {}", s.data_dir.display()))?;
            Some(JoinTokens::open(f, &s.data_dir.join(JOIN_TOKEN_BINDINGS))?)
        }
        None => None,
    };
    match (&tls, &join_tokens) {
        (None, None) => tracing::warn!(
            "agent sessions are neither encrypted nor authenticated (no --tls-cert, no \
             --join-tokens): any process that reaches the gRPC address can join as any agent; \
             for development only (see docs/security.md)"
        ),
        (None, Some(_)) => tracing::warn!(
            "join tokens without TLS travel in plaintext: anyone on the network path can \
             read and reuse them (see docs/security.md)"
        ),
        (Some(_), _) => tracing::info!(
            join_tokens = join_tokens.is_some(),
            "agent sessions use mutual TLS"
        ),
    }
    Ok(SessionSecurity {
        tls,
        join_tokens,
        deny,
    })
}

/// Whether the `[etcd]` section has nothing to print.
fn etcd_unset(a: &EtcdAccess) -> bool {
    !a.is_set()
}
