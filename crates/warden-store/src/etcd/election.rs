//! [`Election`]: which of several `warden server` replicas on one etcd prefix leads.
//!
//! ## How it works
//!
//! - **Campaign.** A replica grants itself a lease of `ttl` and, in one transaction, puts the
//!   leader key `<prefix>/leader` attached to that lease *if* the key does not exist
//!   (`create_revision == 0`). The value is JSON `{name, since_unix_ms}`. The winner's
//!   **term** is the key's create revision, which only grows across leaders. Before
//!   publishing [`ElectionState::Leader`], the winner sets its store's
//!   [`LeaderGuard`](super::LeaderGuard) to `(key, term)`, so every write it makes from then
//!   on is fenced to its term.
//! - **Keeping it.** The leader renews its lease every `ttl / 4` and checks that the key still
//!   carries its create revision. Its leadership is valid until `valid_until = (send time of
//!   the last renewal acknowledged with TTL > 0) + ttl − margin`. A timer publishes
//!   [`ElectionState::Follower`] at `valid_until` if no renewal came back in time — *before*
//!   etcd could expire the key and let another replica win, and even while every request to
//!   etcd hangs. If etcd answers again and the key still has this replica's create revision
//!   (the lease survived), it resumes with the same term; if the lease or the key is gone,
//!   it campaigns again.
//! - **Following.** The others watch the leader key (and re-read it every `ttl` in case the
//!   watch is silently broken), publish the leader they see, and campaign the moment the key
//!   is deleted: at once when the leader resigns, about `ttl` after a leader is killed (its
//!   lease expires).
//! - **Resigning.** When the run is cancelled, a leader revokes its lease, which deletes the
//!   key, so a successor is elected at once.
//!
//! etcd unreachable or without quorum is never fatal: every request has a deadline, failures
//! are retried with a capped backoff, and logged at `warn` at most once every 10 s (with the
//! number of failures in between), and at `info` when etcd answers again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{LeaderGuard, Shared, from_etcd, resend_unsent};
use crate::error::{Result, StoreError};

/// Default lease of the leader key: etcd's practical minimum.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);

/// Default time before the lease would expire at which a leader stops leading.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(500);

/// Longest pause between two attempts while etcd does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Shortest pause between two failed attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Renewals sent and not yet answered, at most.
const MAX_RENEWALS_IN_FLIGHT: usize = 4;

/// At most one `warn!` per this period while etcd keeps failing.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Who leads, as a follower sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's advertised address (its `--http-addr`).
    pub name: String,
    /// Its term: the leader key's create revision.
    pub term: i64,
    /// When it won, milliseconds since the Unix epoch (its clock).
    pub since_unix_ms: u64,
}

/// The leader key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    /// The leader's advertised address.
    pub name: String,
    /// When it won, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// This replica's part in the election, published on a [`watch`] channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionState {
    /// Another replica leads (or none is known yet).
    Follower {
        /// The leader, when known.
        leader: Option<LeaderInfo>,
    },
    /// This replica leads. Its leadership must be treated as lost at `valid_until` unless renewed.
    Leader {
        /// The term: the leader key's create revision.
        term: i64,
        /// When this replica won, milliseconds since the Unix epoch.
        since_unix_ms: u64,
        /// When leadership is lost unless renewed (a later state moves it forward).
        valid_until: Instant,
    },
}

impl ElectionState {
    /// Whether this replica leads (and `valid_until` has not passed).
    pub fn is_leader(&self) -> bool {
        matches!(self, ElectionState::Leader { valid_until, .. } if Instant::now() < *valid_until)
    }

    /// The leader's term, if this replica leads.
    pub fn term(&self) -> Option<i64> {
        match self {
            ElectionState::Leader { term, .. } => Some(*term),
            ElectionState::Follower { .. } => None,
        }
    }
}

/// An election on one etcd prefix. Made by [`EtcdStore::election`](super::EtcdStore::election);
/// see the [`etcd` module](super) and `docs/etcd.md`.
pub struct Election {
    shared: Arc<Shared>,
    name: String,
    key: Vec<u8>,
    ttl: Duration,
    margin: Duration,
    state: watch::Sender<ElectionState>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("ttl", &self.ttl)
            .field("margin", &self.margin)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

/// How a campaign ended.
enum Campaign {
    Won {
        lease: i64,
        term: i64,
        since_unix_ms: u64,
        /// When the lease grant was sent: the lease is alive at least `ttl` from then.
        granted_at: Instant,
    },
    Lost,
}

/// How leading ended.
enum LeadEnd {
    Cancelled,
    Lost,
}

/// How following ended.
enum FollowEnd {
    Cancelled,
    Vacant,
}

/// Logs failures at `warn` without flooding: the first, then at most one per [`WARN_EVERY`].
#[derive(Default)]
struct Throttle {
    failing_since: Option<Instant>,
    last_warn: Option<Instant>,
    suppressed: u32,
}

impl Throttle {
    fn fail(&mut self, what: &str, e: &StoreError) {
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            warn!(
                error = %e,
                similar_failures_not_logged = self.suppressed,
                "leader election: {what} failed; retrying"
            );
            self.last_warn = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
            debug!(error = %e, "leader election: {what} failed; retrying");
        }
    }

    fn ok(&mut self) {
        if let Some(since) = self.failing_since.take() {
            info!(
                after = ?since.elapsed(),
                "leader election: etcd answers again"
            );
        }
        self.last_warn = None;
        self.suppressed = 0;
    }
}

/// Doubling pause between failed attempts, capped.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(MIN_BACKOFF)
    }
    fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        d
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Await the future in `slot`, or forever when there is none (for `select!` branches).
async fn in_flight<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn timed_out(context: &'static str, after: Duration) -> StoreError {
    StoreError::Unavailable {
        context,
        message: format!("etcd did not answer within {after:?}"),
    }
}

/// The leader described by the leader key's value.
fn leader_info(value: &[u8], create_revision: i64) -> LeaderInfo {
    match serde_json::from_slice::<LeaderValue>(value) {
        Ok(v) => LeaderInfo {
            name: v.name,
            term: create_revision,
            since_unix_ms: v.since_unix_ms,
        },
        Err(_) => LeaderInfo {
            name: String::from_utf8_lossy(value).into_owned(),
            term: create_revision,
            since_unix_ms: 0,
        },
    }
}

impl Election {
    pub(super) fn new(shared: Arc<Shared>, name: String, ttl: Duration, margin: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        // A margin of half the lease or more would leave no time to lead.
        let margin = margin.min(ttl / 2);
        let key = shared.keys().leader();
        let (state, _) = watch::channel(ElectionState::Follower { leader: None });
        Election {
            shared,
            name,
            key,
            ttl,
            margin,
            state,
        }
    }

    /// Follow this replica's part in the election.
    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.state.subscribe()
    }

    /// Campaign, keep the lease alive, watch the leader; on `cancel`, resign (revoke the lease)
    /// so a successor is elected at once. Runs until cancelled; never fails (etcd being
    /// unreachable is retried).
    pub async fn run(self, cancel: CancellationToken) {
        let mut throttle = Throttle::default();
        let mut backoff = Backoff::new();
        loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.campaign() => r,
            };
            match attempt {
                Ok(Campaign::Won {
                    lease,
                    term,
                    since_unix_ms,
                    granted_at,
                }) => {
                    throttle.ok();
                    backoff.reset();
                    self.shared.set_guard(Some(LeaderGuard {
                        key: self.key.clone(),
                        term,
                    }));
                    info!(name = %self.name, term, "leader election: won; leading");
                    let end = self
                        .lead(
                            lease,
                            term,
                            since_unix_ms,
                            granted_at,
                            &cancel,
                            &mut throttle,
                        )
                        .await;
                    self.publish(ElectionState::Follower { leader: None });
                    // Resign: the key goes with the lease, so a successor is elected at once.
                    // After a loss the lease may still be alive (e.g. the key was deleted).
                    self.revoke(lease).await;
                    match end {
                        LeadEnd::Cancelled => {
                            info!(term, "leader election: resigned");
                            return;
                        }
                        LeadEnd::Lost => info!(term, "leader election: lost the leadership"),
                    }
                }
                Ok(Campaign::Lost) => {
                    throttle.ok();
                    backoff.reset();
                    match self.follow(&cancel, &mut throttle).await {
                        FollowEnd::Cancelled => return,
                        FollowEnd::Vacant => {}
                    }
                }
                Err(e) => {
                    throttle.fail("campaign", &e);
                    let pause = backoff.next();
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    fn publish(&self, state: ElectionState) {
        self.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state;
                true
            }
        });
    }

    fn request_timeout(&self) -> Duration {
        self.shared.request_timeout()
    }

    /// Lease length in whole seconds (etcd's unit), at least `ttl`.
    fn lease_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
    }

    /// Try to create the leader key.
    async fn campaign(&self) -> Result<Campaign> {
        const CONTEXT: &str = "campaign for leader";
        let deadline = self.request_timeout();
        let budget = deadline / 2;
        let attempt = async {
            let granted_at = Instant::now();
            let secs = self.lease_secs();
            let lease = resend_unsent(budget, || {
                let mut client = self.shared.client();
                async move { client.lease_grant(secs, None).await }
            })
            .await
            .map_err(|e| from_etcd(CONTEXT, e))?
            .id();
            let since_unix_ms = unix_ms_now();
            let value = serde_json::to_vec(&LeaderValue {
                name: self.name.clone(),
                since_unix_ms,
            })
            .map_err(|e| StoreError::invalid("leader key value", e.to_string()))?;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let sent = resend_unsent(budget, || {
                let mut client = self.shared.client();
                let txn = txn.clone();
                async move { client.txn(txn).await }
            });
            let resp = match sent.await {
                Ok(resp) => resp,
                Err(e) => {
                    self.revoke_in_background(lease);
                    return Err(from_etcd(CONTEXT, e));
                }
            };
            if resp.succeeded() {
                let term = resp.header().map_or(0, |h| h.revision());
                return Ok(Campaign::Won {
                    lease,
                    term,
                    since_unix_ms,
                    granted_at,
                });
            }
            self.revoke_in_background(lease);
            for r in resp.op_responses() {
                if let TxnOpResponse::Get(g) = r
                    && let Some(kv) = g.kvs().first()
                {
                    let leader = leader_info(kv.value(), kv.create_revision());
                    self.publish(ElectionState::Follower {
                        leader: Some(leader),
                    });
                }
            }
            Ok(Campaign::Lost)
        };
        tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or_else(|_| Err(timed_out(CONTEXT, deadline)))
    }

    /// Revoke a lease we no longer need, without waiting for etcd.
    fn revoke_in_background(&self, lease: i64) {
        let shared = Arc::clone(&self.shared);
        let deadline = self.request_timeout();
        self.shared.handle.spawn(async move {
            let revoke = resend_unsent(deadline, || {
                let mut client = shared.client();
                async move { client.lease_revoke(lease).await }
            });
            let _ = tokio::time::timeout(deadline, revoke).await;
        });
    }

    /// Revoke our lease (deleting the leader key if it is still ours), waiting at most the
    /// request timeout.
    async fn revoke(&self, lease: i64) {
        let deadline = self.request_timeout();
        let revoke = resend_unsent(deadline, || {
            let mut client = self.shared.client();
            async move { client.lease_revoke(lease).await }
        });
        match tokio::time::timeout(deadline, revoke).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(error = %e, "leader election: revoking the lease failed"),
            Err(_) => debug!("leader election: revoking the lease timed out"),
        }
    }

    /// One lease renewal: its send time, and whether etcd acknowledged it with TTL > 0.
    /// An expired lease is an error here too (the client reports TTL 0 as one); the key
    /// check that runs beside renewals then finds the key gone and ends the leadership.
    fn renew(&self, lease: i64) -> BoxFuture<(Instant, Result<()>)> {
        const CONTEXT: &str = "renew the leader lease";
        let shared = Arc::clone(&self.shared);
        let deadline = (self.ttl / 2).min(self.request_timeout());
        Box::pin(async move {
            let sent = Instant::now();
            let renew = resend_unsent(deadline, || {
                let mut client = shared.client();
                async move { client.lease_keep_alive(lease).await }
            });
            let r = match tokio::time::timeout(deadline, renew).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(from_etcd(CONTEXT, e)),
                Err(_) => Err(timed_out(CONTEXT, deadline)),
            };
            (sent, r)
        })
    }

    /// The leader key's create revision (`None`: no key).
    fn check_key(&self) -> BoxFuture<Result<Option<i64>>> {
        const CONTEXT: &str = "read the leader key";
        let shared = Arc::clone(&self.shared);
        let key = self.key.clone();
        let deadline = (self.ttl / 2).min(self.request_timeout());
        Box::pin(async move {
            let read = resend_unsent(deadline, || {
                let mut client = shared.client();
                let key = key.clone();
                async move { client.get(key, None).await }
            });
            match tokio::time::timeout(deadline, read).await {
                Ok(Ok(resp)) => Ok(resp.kvs().first().map(|kv| kv.create_revision())),
                Ok(Err(e)) => Err(from_etcd(CONTEXT, e)),
                Err(_) => Err(timed_out(CONTEXT, deadline)),
            }
        })
    }

    /// Lead until cancelled or the leadership is lost for good.
    async fn lead(
        &self,
        lease: i64,
        term: i64,
        since_unix_ms: u64,
        granted_at: Instant,
        cancel: &CancellationToken,
        throttle: &mut Throttle,
    ) -> LeadEnd {
        let valid_for = self.ttl - self.margin;
        let mut valid_until = granted_at + valid_for;
        let mut leading = true;
        let leader = |valid_until| ElectionState::Leader {
            term,
            since_unix_ms,
            valid_until,
        };
        self.publish(leader(valid_until));
        let mut tick = tokio::time::interval((self.ttl / 4).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Renewals overlap: a new one every tick, each with its own deadline, so one stuck on
        // an etcd member that just died does not hold back the next (sent to another).
        let mut renewals: JoinSet<(Instant, Result<()>)> = JoinSet::new();
        let mut check: Option<BoxFuture<Result<Option<i64>>>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return LeadEnd::Cancelled,
                _ = tokio::time::sleep_until(valid_until.into()), if leading => {
                    leading = false;
                    warn!(
                        term,
                        "leader election: the lease was not renewed in time; stepping down \
                         (resuming if etcd answers again and the lease survived)"
                    );
                    self.publish(ElectionState::Follower { leader: None });
                }
                _ = tick.tick() => {
                    if renewals.len() < MAX_RENEWALS_IN_FLIGHT {
                        renewals.spawn(self.renew(lease));
                    }
                    if check.is_none() {
                        check = Some(self.check_key());
                    }
                }
                Some(done) = renewals.join_next() => {
                    let Ok((sent, r)) = done else {
                        continue;
                    };
                    match r {
                        Ok(()) => {
                            throttle.ok();
                            valid_until = valid_until.max(sent + valid_for);
                            if leading {
                                self.publish(leader(valid_until));
                            }
                        }
                        Err(e) => throttle.fail("renewing the leader lease", &e),
                    }
                }
                r = in_flight(&mut check) => {
                    check = None;
                    match r {
                        Ok(Some(rev)) if rev == term => {
                            if !leading && Instant::now() < valid_until {
                                leading = true;
                                info!(term, "leader election: the lease survived; leading again");
                                self.publish(leader(valid_until));
                            }
                        }
                        Ok(_) => {
                            warn!(
                                term,
                                "leader election: the leader key was deleted or belongs to another \
                                 term"
                            );
                            return LeadEnd::Lost;
                        }
                        Err(e) => throttle.fail("reading the leader key", &e),
                    }
                }
            }
        }
    }

    /// Follow the leader until the key is deleted (or cancelled).
    async fn follow(&self, cancel: &CancellationToken, throttle: &mut Throttle) -> FollowEnd {
        const CONTEXT: &str = "watch the leader key";
        let mut backoff = Backoff::new();
        let deadline = self.request_timeout();
        loop {
            let read = resend_unsent(deadline, || {
                let mut client = self.shared.client();
                let key = self.key.clone();
                async move { client.get(key, None).await }
            });
            let read = tokio::select! {
                _ = cancel.cancelled() => return FollowEnd::Cancelled,
                r = tokio::time::timeout(deadline, read) => r,
            };
            let revision = match read {
                Ok(Ok(resp)) => {
                    throttle.ok();
                    let Some(kv) = resp.kvs().first() else {
                        return FollowEnd::Vacant;
                    };
                    self.publish(ElectionState::Follower {
                        leader: Some(leader_info(kv.value(), kv.create_revision())),
                    });
                    resp.header().map_or(0, |h| h.revision())
                }
                Ok(Err(e)) => {
                    throttle.fail("reading the leader key", &from_etcd(CONTEXT, e));
                    if self.pause(&mut backoff, cancel).await {
                        return FollowEnd::Cancelled;
                    }
                    continue;
                }
                Err(_) => {
                    throttle.fail("reading the leader key", &timed_out(CONTEXT, deadline));
                    continue;
                }
            };
            let options = WatchOptions::new().with_start_revision(revision + 1);
            let watch = resend_unsent(deadline, || {
                let mut client = self.shared.client();
                let (key, options) = (self.key.clone(), options.clone());
                async move { client.watch(key, Some(options)).await }
            });
            let watch = tokio::select! {
                _ = cancel.cancelled() => return FollowEnd::Cancelled,
                w = tokio::time::timeout(deadline, watch) => w,
            };
            let mut stream = match watch {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    throttle.fail("watching the leader key", &from_etcd(CONTEXT, e));
                    if self.pause(&mut backoff, cancel).await {
                        return FollowEnd::Cancelled;
                    }
                    continue;
                }
                Err(_) => {
                    throttle.fail("watching the leader key", &timed_out(CONTEXT, deadline));
                    continue;
                }
            };
            backoff.reset();
            // Re-read now and then in any case: a watch can break without a word.
            let reread = tokio::time::sleep(self.ttl);
            tokio::pin!(reread);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return FollowEnd::Cancelled,
                    _ = &mut reread => break,
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.canceled() {
                                break;
                            }
                            for ev in resp.events() {
                                match (ev.event_type(), ev.kv()) {
                                    (EventType::Delete, _) => {
                                        // Logged for failover profiles: the time from here to
                                        // "won" is the campaign's; before it, the lease's.
                                        info!("leader election: the leader key is gone; campaigning");
                                        return FollowEnd::Vacant;
                                    }
                                    (EventType::Put, Some(kv)) => {
                                        self.publish(ElectionState::Follower {
                                            leader: Some(leader_info(
                                                kv.value(),
                                                kv.create_revision(),
                                            )),
                                        });
                                    }
                                    (EventType::Put, None) => {}
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            throttle.fail("watching the leader key", &from_etcd(CONTEXT, e));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Sleep the next backoff; `true` when cancelled meanwhile.
    async fn pause(&self, backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(backoff.next()) => false,
        }
    }
}
