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
    name: &str,
    election: &ElectionConfig,
    cancel: CancellationToken,
) -> Result<(Arc<dyn Store>, Leadership)> {
    use anyhow::Context;
    use warden_server::leader::{LeaderInfo, Standing};
    use warden_store::etcd::{ElectionState, EtcdConfig, EtcdStore};

    let cfg = EtcdConfig::parse(url).with_context(|| format!("--store {url}"))?;
    let store = tokio::task::spawn_blocking(move || {
        EtcdStore::connect(cfg, warden_store::StoreOptions::default())
    })
    .await?
    .with_context(|| format!("connect to etcd at {url}"))?;
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
    _name: &str,
    _election: &ElectionConfig,
    _cancel: CancellationToken,
) -> Result<(Arc<dyn Store>, Leadership)> {
    anyhow::bail!(
        "--store {url}: this warden binary was built without etcd support; build it with \
         `cargo build --release -p warden --features etcd` (needs Debian's protobuf-compiler)"
    )
}
