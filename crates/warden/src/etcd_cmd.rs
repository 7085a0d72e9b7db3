//! `warden server --store etcd://...`: the etcd store and the leader election, wired to the
//! server's [`Leadership`]. Built with the cargo feature `etcd`; without it the option is
//! refused with a clear error.

use std::sync::Arc;

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use warden_server::leader::Leadership;
use warden_store::Store;

use serde::Deserialize;

/// Leader election on etcd: the leader key's lease TTL and the safety margin by which a leader
/// steps down before etcd could expire it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElectionConfig {
    /// TTL of the leader's etcd lease (default 2 s, etcd's practical minimum). A dead leader is
    /// replaced about this long after it died.
    #[serde(with = "warden_core::duration_serde")]
    pub ttl: std::time::Duration,
    /// A leader stops acting at `last keepalive acknowledged + ttl - margin` (default 500 ms).
    #[serde(with = "warden_core::duration_serde")]
    pub margin: std::time::Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            ttl: std::time::Duration::from_secs(2),
            margin: std::time::Duration::from_millis(500),
        }
    }
}

/// How the server reaches etcd securely (`[etcd]` in the config file, `--etcd-*` flags): TLS
/// with the CA that signed etcd's certificate, a client certificate for an etcd started with
/// `--client-cert-auth`, and a user for an etcd with authentication enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdAccess {
    /// CA certificate(s) (PEM) etcd's server certificate must chain to; turns on TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), with `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// etcd user name, with `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// File whose first line is the etcd user's password (never a flag's value: it would show
    /// in `ps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
}

impl EtcdAccess {
    /// Reject settings that do not go together, naming them.
    pub fn validate(&self) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            anyhow::bail!("--etcd-cert and --etcd-key (etcd.cert, etcd.key) go together");
        }
        if self.cert.is_some() && self.ca.is_none() {
            anyhow::bail!(
                "--etcd-cert needs --etcd-ca (etcd.ca): a client certificate is only sent over TLS"
            );
        }
        if self.user.is_some() != self.password_file.is_some() {
            anyhow::bail!(
                "--etcd-user and --etcd-password-file (etcd.user, etcd.password_file) go together"
            );
        }
        Ok(())
    }

    /// How the server reaches etcd, for errors: a failed TLS handshake surfaces from the
    /// client only as "transport error" or "canceled".
    #[cfg(feature = "etcd")]
    pub fn describe(&self) -> String {
        let mut out = match (&self.ca, &self.cert) {
            (None, _) => "plaintext, no --etcd-ca".to_string(),
            (Some(ca), None) => format!("TLS with CA {}, no client certificate", ca.display()),
            (Some(ca), Some(cert)) => format!(
                "TLS with CA {}, client certificate {}",
                ca.display(),
                cert.display()
            ),
        };
        if let Some(u) = &self.user {
            out.push_str(&format!(", user {u}"));
        }
        out
    }

    /// Whether any setting is given.
    pub fn is_set(&self) -> bool {
        *self != EtcdAccess::default()
    }

    /// `cfg` with these settings, the files read (errors name them).
    #[cfg(feature = "etcd")]
    fn apply(
        &self,
        mut cfg: warden_store::etcd::EtcdConfig,
    ) -> Result<warden_store::etcd::EtcdConfig> {
        use anyhow::Context;
        use warden_proto::pem;
        use warden_store::etcd::{EtcdTls, EtcdUser};
        self.validate()?;
        if let Some(ca) = &self.ca {
            let identity = match (&self.cert, &self.key) {
                (Some(c), Some(k)) => {
                    Some((pem::read_certificate_chain(c)?, pem::read_private_key(k)?))
                }
                _ => None,
            };
            cfg = cfg.with_tls(EtcdTls {
                ca_pem: pem::read_ca_bundle(ca)?,
                identity,
            });
        }
        if self.user.is_some() && self.ca.is_none() {
            tracing::warn!(
                "the etcd password travels in plaintext (--etcd-user without --etcd-ca): \
                 anyone on the network path can read it"
            );
        }
        if let (Some(name), Some(file)) = (&self.user, &self.password_file) {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read etcd password file {}", file.display()))?;
            let password = text.lines().next().unwrap_or("").trim_end().to_string();
            if password.is_empty() {
                anyhow::bail!(
                    "etcd password file {}: its first line is empty",
                    file.display()
                );
            }
            cfg = cfg.with_user(EtcdUser {
                name: name.clone(),
                password,
            });
        }
        Ok(cfg)
    }
}

impl ElectionConfig {
    /// Reject impossible settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.ttl < std::time::Duration::from_secs(1) {
            anyhow::bail!(
                "invalid configuration: election.ttl must be at least 1s (etcd leases are whole seconds)"
            );
        }
        if self.ttl.subsec_nanos() != 0 {
            anyhow::bail!(
                "invalid configuration: election.ttl must be whole seconds (etcd leases are)"
            );
        }
        if self.margin.is_zero() || self.margin >= self.ttl {
            anyhow::bail!(
                "invalid configuration: election.margin must be greater than 0 and less than election.ttl"
            );
        }
        Ok(())
    }
}

/// Connect to etcd at `url`, start campaigning as `name` (this replica's advertised REST
/// address) and return the store and this replica's view of the election. The election runs
/// until `cancel` fires, then resigns so that another replica takes over at once.
#[cfg(feature = "etcd")]
pub async fn open(
    url: &str,
    access: &EtcdAccess,
    name: &str,
    election: &ElectionConfig,
    cancel: CancellationToken,
) -> Result<(Arc<dyn Store>, Leadership)> {
    use anyhow::Context;
    use warden_server::leader::{LeaderInfo, Standing};
    use warden_store::etcd::{ElectionState, EtcdConfig, EtcdStore};

    let cfg = EtcdConfig::parse(url).with_context(|| format!("--store {url}"))?;
    let cfg = access.apply(cfg)?;
    let store = tokio::task::spawn_blocking(move || {
        EtcdStore::connect(cfg, warden_store::StoreOptions::default())
    })
    .await?
    .with_context(|| format!("connect to etcd at {url} ({})", access.describe()))?;
    let store = Arc::new(store);
    let campaign = store.election(name.to_string(), election.ttl, election.margin);
    let mut states = campaign.state();
    let (role_tx, role_rx) = tokio::sync::watch::channel(Standing::Follower { leader: None });
    tokio::spawn(campaign.run(cancel));
    tokio::spawn(async move {
        loop {
            let role = match &*states.borrow_and_update() {
                ElectionState::Leader {
                    term,
                    since_unix_ms,
                    valid_until,
                } => Standing::Leader {
                    term: u64::try_from(*term).unwrap_or(0),
                    since_unix_ms: *since_unix_ms,
                    valid_until: Some(*valid_until),
                },
                ElectionState::Follower { leader } => Standing::Follower {
                    leader: leader.as_ref().map(|l| LeaderInfo {
                        name: l.name.clone(),
                        term: u64::try_from(l.term).unwrap_or(0),
                        since_unix_ms: l.since_unix_ms,
                    }),
                },
            };
            if role_tx.send(role).is_err() || states.changed().await.is_err() {
                break;
            }
        }
    });
    Ok((store, Leadership::from_watch(name, role_rx)))
}

/// Without the `etcd` feature: a clear refusal.
#[cfg(not(feature = "etcd"))]
pub async fn open(
    url: &str,
    _access: &EtcdAccess,
    _name: &str,
    _election: &ElectionConfig,
    _cancel: CancellationToken,
) -> Result<(Arc<dyn Store>, Leadership)> {
    anyhow::bail!(
        "--store {url}: this warden binary was built without etcd support; build it with \
         `cargo build --release -p warden --features etcd` (needs Debian's protobuf-compiler)"
    )
}
