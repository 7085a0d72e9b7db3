//! `warden server --store etcd://...`: the etcd store and the leader election, wired to the
//! server's [`Leadership`]. Built with the cargo feature `etcd`; without it the option is
//! refused with a clear error.

use std::sync::Arc;

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use warden_server::leader::Leadership;
use warden_store::Store;

use crate::server_cmd::ElectionConfig;

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
    use warden_server::leader::{LeaderInfo, Role};
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
    let (role_tx, role_rx) = tokio::sync::watch::channel(Role::Follower { leader: None });
    tokio::spawn(campaign.run(cancel));
    tokio::spawn(async move {
        loop {
            let role = match &*states.borrow_and_update() {
                ElectionState::Leader {
                    term,
                    since_unix_ms,
                    valid_until,
                } => Role::Leader {
                    term: u64::try_from(*term).unwrap_or(0),
                    since_unix_ms: *since_unix_ms,
                    valid_until: Some(*valid_until),
                },
                ElectionState::Follower { leader } => Role::Follower {
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
