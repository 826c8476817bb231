//! The application's client: a builder, a session per node opened on
//! demand and reopened after failures, requests routed along the key's
//! replica walk (its primary in the local datacenter first, then its other
//! replicas, in the order the nodes place them), members re-learned in the
//! background, and retries with backoff and jitter that reuse the write id
//! (so a retried write never adds a sibling), within an optional overall
//! deadline ([`RequestOptions`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), isthmus_client::ClientError> {
//! use isthmus_client::Client;
//! let client = Client::builder().seed("127.0.0.1:7401").local_dc("dc1").build().await?;
//! let read = client.get("carts", b"alice").await?;
//! client.put("carts", b"alice", br#"{"apple":1}"#.to_vec(), &read.context).await?;
//! // Fetch-modify-store in one call, retried on conflict-free failures:
//! client.update("carts", b"alice", |siblings| Some(siblings.first()?.value.clone())).await?;
//! # Ok(()) }
//! ```
//!
//! Conditional writes hold within a datacenter only: a write carries the
//! context it supersedes, and the store keeps concurrent writes from other
//! datacenters as siblings rather than refusing them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;

use crate::error::ClientError;
use crate::options::{Defaults, RequestOptions, Resolved, Use};
use crate::placement::{Member, Rings};
use crate::pool::ChannelPool;
use crate::session::{ConnectOptions, Session};
use crate::tls::TlsMaterial;
use crate::wire::{
    Consistency, Context, Credentials, Expiry, MergeFailureInfo, NodeReport, RequestBody,
    ResponseBody, SCAN_COUNT_MAX, ScanCursor, Sibling, WriteId, WriteMode,
};

/// A read: the live siblings (none when absent) and the context to write
/// back over them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Live siblings in canonical order.
    pub siblings: Vec<Sibling>,
    /// Causal context covering every sibling.
    pub context: Context,
    /// Set when the keyspace's resolver did not merge these siblings
    /// (it failed, its merge was deferred, or its binding is paused): the
    /// class and the resolver. `None` when they were merged, needed no
    /// merge, or the keyspace has no resolver.
    pub merge_failure: Option<MergeFailureInfo>,
}

/// One page of a scan: live keys and where the next page starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The page's keys (possibly none, even when the scan goes on).
    pub keys: Vec<Vec<u8>>,
    /// The next page's cursor; [`ScanCursor::START`] when the scan is done.
    pub cursor: ScanCursor,
}

/// A scan of a keyspace, page by page ([`Client::scan`]).
#[derive(Clone)]
pub struct Scan {
    client: Client,
    keyspace: String,
    count: u32,
    cursor: ScanCursor,
    done: bool,
    opts: RequestOptions,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("keyspace", &self.keyspace)
            .field("count", &self.count)
            .field("cursor", &self.cursor)
            .field("done", &self.done)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Scan {
    /// The next page's keys, or `None` once the scan is done. A failed
    /// page (after the client's retries on other nodes) can be asked for
    /// again: the cursor moves only on success.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .client
            .scan_page_with(&self.keyspace, self.cursor, self.count, &self.opts)
            .await?;
        self.cursor = page.cursor;
        self.done = page.cursor.is_end();
        Ok(Some(page.keys))
    }

    /// Where the next page starts (to resume this scan later with
    /// [`Client::scan_page`]).
    pub fn cursor(&self) -> ScanCursor {
        self.cursor
    }

    /// Every remaining key, page by page.
    pub async fn collect(mut self) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut keys = Vec::new();
        while let Some(page) = self.next_page().await? {
            keys.extend(page);
        }
        Ok(keys)
    }
}

/// When requests may go to nodes outside the client's local datacenter.
///
/// A coordinator in another DC serves a LOCAL_* level in *its* DC, so a
/// LOCAL_QUORUM write that fails over is no longer acknowledged by the
/// client's DC; the policy makes that trade explicit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DcFailover {
    /// Only nodes of the local datacenter: with all of them down,
    /// requests fail.
    Never,
    /// Requests at levels that are not DC-local (ONE, QUORUM,
    /// EACH_QUORUM, ALL) may go to other datacenters; LOCAL_ONE and
    /// LOCAL_QUORUM (and the keyspace default, which is usually one of
    /// them) stay local.
    #[default]
    NonLocalLevels,
    /// Any request may go to another datacenter when the local one is
    /// unreachable.
    Always,
}

/// Configures a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    seeds: Vec<String>,
    local_dc: Option<String>,
    failover: DcFailover,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
    backoff: Duration,
    consistency: Option<Consistency>,
    name: String,
    tls: Option<TlsMaterial>,
    credentials: Option<Credentials>,
    deadline: Option<Duration>,
    refresh_interval: Duration,
    options: ConnectOptions,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            seeds: Vec::new(),
            local_dc: None,
            failover: DcFailover::default(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            retries: 3,
            backoff: Duration::from_millis(20),
            consistency: None,
            name: "isthmus-client".into(),
            tls: None,
            credentials: None,
            deadline: None,
            refresh_interval: Duration::from_secs(30),
            options: ConnectOptions::default(),
        }
    }
}

impl ClientBuilder {
    /// Add a node to learn the cluster from (`host:port`).
    pub fn seed(mut self, addr: impl Into<String>) -> Self {
        self.seeds.push(addr.into());
        self
    }

    /// The datacenter to prefer (requests go to its nodes while any is up).
    pub fn local_dc(mut self, dc: impl Into<String>) -> Self {
        self.local_dc = Some(dc.into());
        self
    }

    /// When requests may leave the local datacenter (without
    /// [`ClientBuilder::local_dc`], every node is local).
    pub fn dc_failover(mut self, policy: DcFailover) -> Self {
        self.failover = policy;
        self
    }

    /// Deadline of each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries after the first attempt, for retryable errors only.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Base of the exponential backoff between retries (with full jitter).
    pub fn backoff(mut self, base: Duration) -> Self {
        self.backoff = base;
        self
    }

    /// Level of requests that name none (`None`: the keyspace default).
    pub fn consistency(mut self, level: Consistency) -> Self {
        self.consistency = Some(level);
        self
    }

    /// Name announced in the handshake (for node logs).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Connect over TLS, trusting the CAs of `material` (and presenting
    /// its certificate, if it has one). Without it the client speaks
    /// plaintext, which only nodes configured with `insecure_plaintext`
    /// accept.
    pub fn tls(mut self, material: TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// Log in as `credentials` on every connection (needs
    /// [`ClientBuilder::tls`]: a password never travels in plaintext).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// A default overall deadline for every request, across its retries
    /// (none by default: a call ends after its retries). Per request:
    /// [`RequestOptions::deadline`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How often the client re-learns the cluster's members in the
    /// background (30 s by default), so that a node added or gone is
    /// routed to, or around, without a failure first. A reply that shows
    /// a member set other than the one known, or a node the client does
    /// not know answering, refreshes at once.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Connect to a seed and learn the cluster.
    pub async fn build(mut self) -> Result<Client, ClientError> {
        if self.seeds.is_empty() {
            return Err(ClientError::Connect {
                addr: String::new(),
                reason: "no seed given".into(),
            });
        }
        for (field, value) in [
            ("timeout", Some(self.timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
            ("deadline", self.deadline),
            ("refresh_interval", Some(self.refresh_interval)),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(ClientError::InvalidOption {
                    field,
                    reason: "must be more than zero".into(),
                });
            }
        }
        let tls = match &self.tls {
            Some(material) => Some(material.client_config().map_err(|e| ClientError::Tls {
                addr: String::new(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        self.options = ConnectOptions {
            name: self.name.clone(),
            tls,
            credentials: self.credentials.clone(),
        };
        let interval = self.refresh_interval;
        let client = Client {
            inner: Arc::new(Inner {
                config: self,
                sessions: ChannelPool::new(Session::is_open),
                topology: Mutex::default(),
                refresher: Mutex::default(),
                membership_moved: Arc::default(),
            }),
        };
        client.refresh().await?;
        // The background refresh holds the client weakly: it ends when
        // the last handle is dropped (and is aborted then, see `Drop`).
        let weak = Arc::downgrade(&client.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let Some(moved) = weak.upgrade().map(|i| Arc::clone(&i.membership_moved)) else {
                    return;
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = moved.notified() => tick.reset(),
                }
                let Some(inner) = weak.upgrade() else { return };
                // Failures are retried at the next tick; requests still
                // route on what was known.
                let _ = Client { inner }.refresh().await;
            }
        });
        *client.inner.refresher.lock() = Some(task.abort_handle());
        Ok(client)
    }
}

/// What the client knows of the cluster.
#[derive(Debug, Default)]
struct Topology {
    /// Every node known, as the last status reported it.
    nodes: Vec<NodeReport>,
    /// Each datacenter's ring, of the members that own ranges (up or not:
    /// liveness does not move replicas).
    rings: Rings,
    /// Bumped whenever the member set (ids, addresses, statuses) changes.
    generation: u64,
}

/// The members that own ranges: what the nodes' rings are built from.
fn owns_ranges(status: &str) -> bool {
    matches!(status, "Normal" | "Leaving")
}

/// What identifies a member set: a change in it means the rings moved.
fn member_set(nodes: &[NodeReport]) -> BTreeSet<(&str, &str, &str, &str)> {
    nodes
        .iter()
        .map(|n| {
            (
                n.node_id.as_str(),
                n.addr.as_str(),
                n.dc.as_str(),
                n.status.as_str(),
            )
        })
        .collect()
}

struct Inner {
    config: ClientBuilder,
    sessions: ChannelPool<String, Session>,
    topology: Mutex<Topology>,
    refresher: Mutex<Option<tokio::task::AbortHandle>>,
    /// Wakes the background refresh before its tick: a node the client
    /// did not know answered.
    membership_moved: Arc<tokio::sync::Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.lock().take() {
            task.abort();
        }
    }
}

/// A cluster client; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = self.inner.topology.lock();
        let mut sessions: Vec<String> = self.inner.sessions.keys();
        sessions.sort();
        f.debug_struct("Client")
            .field("seeds", &self.inner.config.seeds)
            .field("local_dc", &self.inner.config.local_dc)
            .field("nodes", &topology.nodes.len())
            .field("generation", &topology.generation)
            .field("sessions", &sessions)
            .finish()
    }
}

impl Client {
    /// Start configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn defaults(&self) -> Defaults {
        let c = &self.inner.config;
        Defaults {
            consistency: c.consistency,
            timeout: c.timeout,
            deadline: c.deadline,
            retries: c.retries,
        }
    }

    /// The session to `addr`: the open one, or one connection shared by
    /// every task that finds none.
    pub(crate) async fn session(&self, addr: &str) -> Result<Arc<Session>, ClientError> {
        if let Some(session) = self.inner.sessions.get(&addr.to_owned()) {
            return Ok(session);
        }
        let connect = || async {
            let fresh = Session::connect_with(
                addr,
                &self.inner.config.options,
                self.inner.config.connect_timeout,
            )
            .await?;
            let known = {
                let topology = self.inner.topology.lock();
                topology.nodes.is_empty()
                    || topology
                        .nodes
                        .iter()
                        .any(|n| n.node_id == fresh.peer().node_id)
            };
            if !known {
                // A node the client has not heard of answered: the members
                // changed (or an address moved). Learn them now.
                self.inner.membership_moved.notify_one();
            }
            Ok(fresh)
        };
        self.inner
            .sessions
            .get_or_dial(&addr.to_owned(), connect)
            .await
    }

    /// Open a session to every node the client knows as up (in its
    /// local datacenter, when one is set), all at once, so that the first
    /// requests routed to each do not wait for its connection, TLS
    /// handshake and login (which checks the password: tens of
    /// milliseconds). Sessions are otherwise opened on first use, as
    /// those to other datacenters still are. Returns the nodes that could
    /// not be reached, each with its error; requests routed to them dial
    /// again.
    pub async fn connect_all(&self) -> Vec<(String, ClientError)> {
        let local = self.inner.config.local_dc.as_ref();
        let addrs: Vec<String> = self
            .inner
            .topology
            .lock()
            .nodes
            .iter()
            .filter(|n| n.up && local.is_none_or(|dc| n.dc == *dc))
            .map(|n| n.addr.clone())
            .collect();
        let dials = addrs
            .iter()
            .map(|addr| async move { self.session(addr).await.err().map(|e| (addr.clone(), e)) });
        futures_util::future::join_all(dials)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Re-learn the cluster's nodes from any reachable node.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let mut candidates: Vec<String> = self
            .inner
            .topology
            .lock()
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.addr.clone())
            .collect();
        candidates.extend(self.inner.config.seeds.iter().cloned());
        let mut last = ClientError::Connect {
            addr: String::new(),
            reason: "no node reachable".into(),
        };
        for addr in candidates {
            let answer = match self.session(&addr).await {
                Ok(s) => s.call(RequestBody::Status, self.inner.config.timeout).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(ResponseBody::Status { nodes, .. }) => {
                    self.set_topology(nodes);
                    return Ok(());
                }
                Ok(other) => {
                    last = ClientError::Handshake {
                        reason: format!("unexpected status answer {other:?}"),
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The nodes the client knows, as the last status it learned reported
    /// them (refreshed every [`ClientBuilder::refresh_interval`]).
    pub fn nodes(&self) -> Vec<NodeReport> {
        self.inner.topology.lock().nodes.clone()
    }

    /// How many times the member set the client knows has changed.
    pub fn topology_generation(&self) -> u64 {
        self.inner.topology.lock().generation
    }

    fn set_topology(&self, nodes: Vec<NodeReport>) {
        let rings = Rings::build(
            nodes
                .iter()
                .filter(|n| owns_ranges(&n.status))
                .map(|n| Member {
                    node_id: n.node_id.clone(),
                    dc: n.dc.clone(),
                    rack: n.rack.clone(),
                    vnodes: n.vnodes,
                }),
        );
        let mut topology = self.inner.topology.lock();
        let changed = member_set(&topology.nodes) != member_set(&nodes);
        let generation = topology.generation + u64::from(changed);
        *topology = Topology {
            nodes,
            rings,
            generation,
        };
    }

    /// The addresses a request for `key` at `level` tries, best first.
    /// In the preferred datacenter, the live nodes in the key's replica
    /// walk, the same walk the nodes place replicas by: the key's replicas
    /// first (its primary, then the others), then the nodes further along
    /// the ring. Then, when the failover policy lets this level leave the
    /// datacenter, the live nodes of the others, each in the key's walk
    /// of its datacenter; then the seeds the policy allows; nodes known to
    /// be down last.
    pub fn route(&self, key: &[u8], level: Option<Consistency>) -> Vec<String> {
        let topology = self.inner.topology.lock();
        let local = self.inner.config.local_dc.as_ref();
        let leave = match self.inner.config.failover {
            DcFailover::Always => true,
            DcFailover::Never => false,
            DcFailover::NonLocalLevels => level
                .is_some_and(|l| !matches!(l, Consistency::LocalOne | Consistency::LocalQuorum)),
        };
        let allowed = |dc: &str| local.is_none_or(|l| l == dc) || leave;
        let node = |id: &str| topology.nodes.iter().find(|n| n.node_id == id);
        let mut out: Vec<String> = Vec::new();
        let mut down: Vec<String> = Vec::new();
        let mut push = |n: &NodeReport, out: &mut Vec<String>| {
            if out.contains(&n.addr) || down.contains(&n.addr) {
                return;
            }
            if n.up {
                out.push(n.addr.clone());
            } else {
                down.push(n.addr.clone());
            }
        };
        // The preferred DC first (every DC when none is), then the others.
        let mut dcs: Vec<&str> = topology.rings.dcs().collect();
        dcs.sort_by_key(|dc| local.is_some_and(|l| l != dc));
        for dc in dcs.into_iter().filter(|dc| allowed(dc)) {
            for id in topology.rings.walk_all(dc, key) {
                if let Some(n) = node(id) {
                    push(n, &mut out);
                }
            }
        }
        // Nodes that own no range yet (joining) can still coordinate.
        for n in topology.nodes.iter().filter(|n| allowed(&n.dc)) {
            push(n, &mut out);
        }
        // A seed whose DC the topology names obeys the policy; one it
        // does not know is tried (it may be the only way in).
        for seed in &self.inner.config.seeds {
            let dc = topology
                .nodes
                .iter()
                .find(|n| n.addr == *seed)
                .map(|n| &n.dc);
            if dc.is_none_or(|dc| allowed(dc)) && !out.contains(seed) && !down.contains(seed) {
                out.push(seed.clone());
            }
        }
        out.extend(down);
        out
    }

    /// Send `body` for `key` under `opts`, retrying retryable failures on
    /// the next node of the key's route with backoff and jitter, within the
    /// overall deadline.
    pub(crate) async fn call(
        &self,
        key: &[u8],
        body: RequestBody,
        opts: &Resolved,
    ) -> Result<ResponseBody, ClientError> {
        let route = self.route(key, opts.consistency);
        let attempts = opts.retries.saturating_add(1);
        let mut last = ClientError::Connect {
            addr: String::new(),
            reason: "no node known".into(),
        };
        let past_deadline = |last: ClientError| match opts.budget {
            Some(after) => ClientError::DeadlineExceeded {
                after,
                last: Box::new(last),
            },
            None => last,
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                let cap = self
                    .inner
                    .config
                    .backoff
                    .saturating_mul(1 << attempt.min(10));
                let sleep = rand::rng().random_range(Duration::ZERO..=cap);
                if opts.remaining().is_some_and(|left| left <= sleep) {
                    return Err(past_deadline(last));
                }
                tokio::time::sleep(sleep).await;
            }
            let Some(addr) = route.get(attempt as usize % route.len().max(1)) else {
                break;
            };
            let timeout = opts.attempt_timeout();
            if timeout.is_zero() {
                return Err(past_deadline(last));
            }
            // The session this attempt used, if it got one: the one to
            // forget if it failed (not a fresh one another call dialled
            // meanwhile).
            let mut used = None;
            let attempt = async {
                let session = self.session(addr).await?;
                used = Some(session.clone());
                session.call(body.clone(), timeout).await
            };
            // The connect too is bounded by what is left of the deadline.
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout {
                    after: timeout,
                    acks: None,
                }),
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_retryable() => {
                    if matches!(
                        e,
                        ClientError::Connect { .. } | ClientError::ConnectionClosed
                    ) {
                        if let Some(session) = &used {
                            self.inner
                                .sessions
                                .remove_if_same(&addr.to_owned(), session);
                        }
                        // Best effort: learn who is up before the next try,
                        // within the deadline.
                        let refresh = Box::pin(self.refresh());
                        match opts.remaining() {
                            Some(left) => {
                                let _ = tokio::time::timeout(left, refresh).await;
                            }
                            None => {
                                let _ = refresh.await;
                            }
                        }
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        if opts.remaining().is_some_and(|left| left.is_zero()) {
            return Err(past_deadline(last));
        }
        Err(last)
    }

    /// Read the live siblings of a key.
    pub async fn get(&self, keyspace: &str, key: &[u8]) -> Result<Read, ClientError> {
        self.get_with(keyspace, key, &RequestOptions::default())
            .await
    }

    /// [`get`](Self::get) with per-request options (level, timeout,
    /// overall deadline, retries).
    pub async fn get_with(
        &self,
        keyspace: &str,
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<Read, ClientError> {
        let opts = opts.resolve_for(&self.defaults(), Use::Read)?;
        self.get_resolved(keyspace, key, &opts).await
    }

    pub(crate) async fn get_resolved(
        &self,
        keyspace: &str,
        key: &[u8],
        opts: &Resolved,
    ) -> Result<Read, ClientError> {
        let body = RequestBody::Get {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            consistency: opts.consistency,
        };
        match self.call(key, body, opts).await? {
            ResponseBody::Value {
                siblings,
                context,
                merge_failure,
            } => Ok(Read {
                siblings,
                context,
                merge_failure,
            }),
            other => Err(ClientError::Handshake {
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// Write `value` superseding what `context` saw.
    pub async fn put(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
    ) -> Result<(), ClientError> {
        self.put_with(keyspace, key, value, context, &RequestOptions::default())
            .await
    }

    /// [`put`](Self::put) with per-request options (level, timeout,
    /// overall deadline, retries, a sloppy or strict quorum, the value's
    /// expiry, the write's id). Every attempt carries the same write id.
    pub async fn put_with(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        self.put_mode(keyspace, key, value, context, WriteMode::Context, opts)
            .await
    }

    /// [`put`](Self::put) as the logical write `write_id`: calling it again
    /// with the same id after an error (a timeout, an unavailable node),
    /// with the same value and context, is the same write, which takes
    /// effect at most once wherever its attempts land. The client's own
    /// retries reuse the id the same way. (The same as
    /// [`put_with`](Self::put_with) with [`RequestOptions::write_id`].)
    pub async fn put_with_id(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        write_id: WriteId,
    ) -> Result<(), ClientError> {
        let opts = RequestOptions::new().write_id(write_id);
        self.put_with(keyspace, key, value, context, &opts).await
    }

    /// [`put`](Self::put) with an expiry for the value, instead of the
    /// keyspace's default: e.g. `Expiry::AfterMs(60_000)` for a minute
    /// from when the coordinator receives it, `Expiry::AtMs` for a wall
    /// clock time, `Expiry::Never`. A read's [`Sibling::expires_ms`]
    /// says when each value expires. (The same as
    /// [`put_with`](Self::put_with) with [`RequestOptions::expiry`].)
    pub async fn put_with_expiry(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        expiry: Expiry,
    ) -> Result<(), ClientError> {
        let opts = RequestOptions::new().expiry(expiry);
        self.put_with(keyspace, key, value, context, &opts).await
    }

    /// Write `value` only if nothing was written to the key since the read
    /// that returned `context` (compare-and-set): the key's replica that
    /// decides checks that `context` covers every version it holds, and
    /// writes, in one step under the key's lock. Otherwise
    /// [`ClientError::ConditionFailed`] carries the key's current
    /// siblings and context, to decide again and retry over. An empty
    /// context succeeds only on a key never written.
    pub async fn put_if(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
    ) -> Result<(), ClientError> {
        self.put_if_with(keyspace, key, value, context, &RequestOptions::default())
            .await
    }

    /// [`put_if`](Self::put_if) with per-request options.
    pub async fn put_if_with(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        self.put_mode(keyspace, key, value, context, WriteMode::IfMatch, opts)
            .await
    }

    /// Write `value` only if the key holds no live value (never written,
    /// or deleted); otherwise [`ClientError::ConditionFailed`] with what it
    /// holds.
    pub async fn put_if_absent(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.put_if_absent_with(keyspace, key, value, &RequestOptions::default())
            .await
    }

    /// [`put_if_absent`](Self::put_if_absent) with per-request options.
    pub async fn put_if_absent_with(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        let context = Context::default();
        self.put_mode(keyspace, key, value, &context, WriteMode::IfAbsent, opts)
            .await
    }

    /// Write `value` over whatever the key holds, without a read first:
    /// within a datacenter, concurrent overwrites of one key leave no
    /// siblings (the last one its deciding replica issued wins). Writes
    /// from another datacenter that had not arrived yet stay as siblings.
    pub async fn overwrite(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.overwrite_with(keyspace, key, value, &RequestOptions::default())
            .await
    }

    /// [`overwrite`](Self::overwrite) with per-request options.
    pub async fn overwrite_with(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        let context = Context::default();
        self.put_mode(keyspace, key, value, &context, WriteMode::Overwrite, opts)
            .await
    }

    /// Add `delta` (negative: subtract) to the counter at `key`, in a
    /// keyspace that holds counters (`counter = true`, with a resolver
    /// that merges counters bound): the key's deciding replica adds it on
    /// behalf of its own actor over every counter it holds, in one step
    /// under the key's lock ([`WriteMode::Add`]). Answers the counter's
    /// value there just after. A retry carries the same write id, so an
    /// addition counts once however often it is sent; additions made
    /// concurrently in two datacenters both count once their counters
    /// meet and merge ([`crate::counter`]).
    pub async fn add(&self, keyspace: &str, key: &[u8], delta: i64) -> Result<i64, ClientError> {
        self.add_with(keyspace, key, delta, &RequestOptions::default())
            .await
    }

    /// [`add`](Self::add) with per-request options (the counter keeps the
    /// expiry it has unless [`RequestOptions::expiry`] is set).
    pub async fn add_with(
        &self,
        keyspace: &str,
        key: &[u8],
        delta: i64,
        opts: &RequestOptions,
    ) -> Result<i64, ClientError> {
        let opts = opts.resolve_for(&self.defaults(), Use::Write)?;
        let body = put_body(
            keyspace,
            key,
            Vec::new(),
            &Context::default(),
            WriteMode::Add(delta),
            // A counter keeps the expiry it has, as Redis's INCR does.
            Expiry::Keep,
            &opts,
        );
        match self.call(key, body, &opts).await? {
            ResponseBody::Counted { value } => Ok(value),
            other => Err(ClientError::Handshake {
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// The value of the counter at `key`: the join of its siblings (0 when
    /// absent). [`ClientError::NotACounter`] when a sibling is not one.
    pub async fn counter(&self, keyspace: &str, key: &[u8]) -> Result<i128, ClientError> {
        self.counter_with(keyspace, key, &RequestOptions::default())
            .await
    }

    /// [`counter`](Self::counter) with per-request options (a read's).
    pub async fn counter_with(
        &self,
        keyspace: &str,
        key: &[u8],
        opts: &RequestOptions,
    ) -> Result<i128, ClientError> {
        let read = self.get_with(keyspace, key, opts).await?;
        crate::counter::Counter::join_all(read.siblings.iter().map(|s| &s.value[..]))
            .map(|c| c.value())
            .map_err(ClientError::NotACounter)
    }

    async fn put_mode(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        mode: WriteMode,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        let opts = opts.resolve_for(&self.defaults(), Use::Write)?;
        let body = put_body(
            keyspace,
            key,
            value,
            context,
            mode,
            Expiry::KeyspaceDefault,
            &opts,
        );
        self.expect_written(key, body, &opts).await
    }

    /// Delete what `context` saw.
    pub async fn delete(
        &self,
        keyspace: &str,
        key: &[u8],
        context: &Context,
    ) -> Result<(), ClientError> {
        self.delete_with(keyspace, key, context, &RequestOptions::default())
            .await
    }

    /// [`delete`](Self::delete) with per-request options (every write
    /// option but an expiry).
    pub async fn delete_with(
        &self,
        keyspace: &str,
        key: &[u8],
        context: &Context,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        let opts = opts.resolve_for(&self.defaults(), Use::Delete)?;
        let body = delete_body(keyspace, key, context, &opts);
        self.expect_written(key, body, &opts).await
    }

    /// Fetch the siblings, compute the new value (`None` deletes), and
    /// store it over what was read.
    pub async fn update(
        &self,
        keyspace: &str,
        key: &[u8],
        change: impl FnOnce(&[Sibling]) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.update_with(keyspace, key, change, &RequestOptions::default())
            .await
    }

    /// [`update`](Self::update) with per-request options: the read takes
    /// the level, timeouts and retries; the write takes those and the
    /// write options (an expiry is refused if the change deletes).
    pub async fn update_with(
        &self,
        keyspace: &str,
        key: &[u8],
        change: impl FnOnce(&[Sibling]) -> Option<Vec<u8>>,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        // Resolved once: a bad option sends nothing, and the deadline
        // spans the read and the write.
        let opts = opts.resolve_for(&self.defaults(), Use::Write)?;
        let read_opts = Resolved {
            sloppy: None,
            expiry: None,
            write_id: None,
            ..opts.clone()
        };
        let read = self.get_resolved(keyspace, key, &read_opts).await?;
        let body = match change(&read.siblings) {
            Some(value) => put_body(
                keyspace,
                key,
                value,
                &read.context,
                WriteMode::Context,
                Expiry::KeyspaceDefault,
                &opts,
            ),
            None if opts.expiry.is_some() => {
                return Err(ClientError::InvalidOption {
                    field: "expiry",
                    reason: "the change deleted the key, and a delete has no expiry".into(),
                });
            }
            None => delete_body(keyspace, key, &read.context, &opts),
        };
        self.expect_written(key, body, &opts).await
    }

    /// One page of a scan of `keyspace`'s live keys from `cursor`
    /// ([`ScanCursor::START`] to begin), at most `count` keys
    /// (`1..=`[`SCAN_COUNT_MAX`]). Any node can serve any page: a page
    /// whose node fails goes to the next, as every request does. What a
    /// scan guarantees is on [`ScanCursor`].
    pub async fn scan_page(
        &self,
        keyspace: &str,
        cursor: ScanCursor,
        count: u32,
    ) -> Result<ScanPage, ClientError> {
        self.scan_page_with(keyspace, cursor, count, &RequestOptions::default())
            .await
    }

    /// [`scan_page`](Self::scan_page) with per-request options (timeout,
    /// deadline, retries; a scan reads each replica set at ONE, so a level
    /// is refused, as are write options).
    pub async fn scan_page_with(
        &self,
        keyspace: &str,
        cursor: ScanCursor,
        count: u32,
        opts: &RequestOptions,
    ) -> Result<ScanPage, ClientError> {
        if opts.get_consistency().is_some() {
            return Err(ClientError::InvalidOption {
                field: "consistency",
                reason: "a scan page is read at ONE".into(),
            });
        }
        let opts = opts.resolve_for(&self.defaults(), Use::Read)?;
        let body = RequestBody::Scan {
            keyspace: keyspace.into(),
            cursor: cursor.0,
            count,
        };
        // Routed as a key at the cursor would be: pages spread over nodes.
        match self.call(&cursor.0.to_be_bytes(), body, &opts).await? {
            ResponseBody::ScanPage { keys, cursor } => Ok(ScanPage {
                keys,
                cursor: ScanCursor(cursor),
            }),
            other => Err(ClientError::Handshake {
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// A scan of `keyspace` from the start, `count` keys a page at most
    /// (clamped to `1..=`[`SCAN_COUNT_MAX`]).
    pub fn scan(&self, keyspace: &str, count: u32) -> Scan {
        self.scan_with(keyspace, count, RequestOptions::default())
    }

    /// [`scan`](Self::scan) whose every page takes `opts`
    /// ([`scan_page_with`](Self::scan_page_with)).
    pub fn scan_with(&self, keyspace: &str, count: u32, opts: RequestOptions) -> Scan {
        Scan {
            client: self.clone(),
            keyspace: keyspace.into(),
            count: count.clamp(1, SCAN_COUNT_MAX),
            cursor: ScanCursor::START,
            done: false,
            opts,
        }
    }

    pub(crate) async fn expect_written(
        &self,
        key: &[u8],
        body: RequestBody,
        opts: &Resolved,
    ) -> Result<(), ClientError> {
        match self.call(key, body, opts).await? {
            ResponseBody::Written => Ok(()),
            ResponseBody::ConditionFailed { siblings, context } => {
                Err(ClientError::ConditionFailed { siblings, context })
            }
            other => Err(ClientError::Handshake {
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }
}

/// A delete's request body: `opts`' level, quorum choice and write id.
fn delete_body(keyspace: &str, key: &[u8], context: &Context, opts: &Resolved) -> RequestBody {
    RequestBody::Delete {
        keyspace: keyspace.into(),
        key: key.to_vec(),
        context: context.clone(),
        consistency: opts.consistency,
        write_id: opts.write_id.unwrap_or_else(|| WriteId(rand::random())),
        sloppy: opts.sloppy,
    }
}

/// A put's request body: `opts`' level, quorum choice and write id (a
/// fresh one if unset), and its expiry or else `default_expiry`.
pub(crate) fn put_body(
    keyspace: &str,
    key: &[u8],
    value: Vec<u8>,
    context: &Context,
    mode: WriteMode,
    default_expiry: Expiry,
    opts: &Resolved,
) -> RequestBody {
    RequestBody::Put {
        keyspace: keyspace.into(),
        key: key.to_vec(),
        value,
        context: context.clone(),
        consistency: opts.consistency,
        write_id: opts.write_id.unwrap_or_else(|| WriteId(rand::random())),
        mode,
        expiry: opts.expiry.unwrap_or(default_expiry),
        sloppy: opts.sloppy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, dc: &str, up: bool) -> NodeReport {
        NodeReport {
            node_id: id.into(),
            addr: format!("{id}:1"),
            dc: dc.into(),
            rack: "r".into(),
            vnodes: 8,
            up,
            status: "Normal".into(),
            load_bytes: 0,
            hint_bytes: 0,
            ownership: 0.0,
        }
    }

    fn client(policy: DcFailover) -> Client {
        let config = Client::builder()
            .seed("a1:1")
            .seed("unknown:1")
            .local_dc("dc1")
            .dc_failover(policy);
        let client = Client {
            inner: Arc::new(Inner {
                config,
                sessions: ChannelPool::new(Session::is_open),
                topology: Mutex::default(),
                refresher: Mutex::default(),
                membership_moved: Arc::default(),
            }),
        };
        client.set_topology(vec![
            node("a1", "dc1", false),
            node("a2", "dc1", true),
            node("b1", "dc2", true),
        ]);
        client
    }

    #[test]
    fn failover_policy_decides_which_levels_may_leave_the_local_dc() {
        let never = client(DcFailover::Never);
        for level in [
            None,
            Some(Consistency::LocalQuorum),
            Some(Consistency::Quorum),
        ] {
            let route = never.route(b"k", level);
            assert_eq!(route[0], "a2:1");
            assert!(!route.contains(&"b1:1".to_string()), "{level:?}: {route:?}");
            assert!(
                route.contains(&"a1:1".to_string()),
                "local seeds stay usable"
            );
            assert!(route.contains(&"unknown:1".to_string()));
        }
        let default = client(DcFailover::NonLocalLevels);
        assert!(
            !default
                .route(b"k", Some(Consistency::LocalQuorum))
                .contains(&"b1:1".to_string())
        );
        assert!(!default.route(b"k", None).contains(&"b1:1".to_string()));
        let quorum = default.route(b"k", Some(Consistency::EachQuorum));
        assert_eq!(
            quorum[0], "a2:1",
            "local first even when leaving is allowed"
        );
        assert!(quorum.contains(&"b1:1".to_string()));
        let always = client(DcFailover::Always);
        assert!(
            always
                .route(b"k", Some(Consistency::LocalOne))
                .contains(&"b1:1".to_string())
        );
    }

    #[test]
    fn a_route_follows_the_keys_replica_walk_not_the_token_order() {
        let config = Client::builder()
            .seed("a0:1")
            .local_dc("dc1")
            .dc_failover(DcFailover::Always);
        let client = Client {
            inner: Arc::new(Inner {
                config,
                sessions: ChannelPool::new(Session::is_open),
                topology: Mutex::default(),
                refresher: Mutex::default(),
                membership_moved: Arc::default(),
            }),
        };
        let mut nodes: Vec<NodeReport> = (0..5)
            .map(|i| NodeReport {
                rack: format!("r{}", i % 3),
                ..node(&format!("a{i}"), "dc1", i != 3)
            })
            .chain((0..3).map(|i| node(&format!("b{i}"), "dc2", true)))
            .collect();
        // A joining node owns no range: it is tried after the walks.
        nodes.push(NodeReport {
            status: "Joining".into(),
            ..node("a9", "dc1", true)
        });
        client.set_topology(nodes.clone());
        let rings = Rings::build(
            nodes
                .iter()
                .filter(|n| n.status == "Normal")
                .map(|n| Member {
                    node_id: n.node_id.clone(),
                    dc: n.dc.clone(),
                    rack: n.rack.clone(),
                    vnodes: n.vnodes,
                }),
        );
        let addr = |id: &str| format!("{id}:1");
        let mut differs_from_token_order = 0;
        for i in 0..200u32 {
            let key = i.to_be_bytes();
            let route = client.route(&key, None);
            let mut expected: Vec<String> = rings
                .walk_all("dc1", &key)
                .into_iter()
                .filter(|id| *id != "a3")
                .map(addr)
                .collect();
            expected.extend(rings.walk_all("dc2", &key).into_iter().map(addr));
            expected.push(addr("a9"));
            expected.push(addr("a3"));
            assert_eq!(route, expected, "key {i}");
            // The old route: the primary, then every node in the order of
            // its first token on the ring, ignoring racks.
            let tokens: Vec<(u64, &str)> = {
                let mut t: Vec<(u64, &str)> = nodes[..5]
                    .iter()
                    .flat_map(|n| {
                        crate::placement::tokens_for(&n.node_id, n.vnodes)
                            .into_iter()
                            .map(|t| (t, n.node_id.as_str()))
                    })
                    .collect();
                t.sort();
                t
            };
            let mut by_token: Vec<&str> = Vec::new();
            let start = tokens.partition_point(|(t, _)| *t < crate::placement::key_hash(&key));
            for (_, id) in tokens[start..].iter().chain(&tokens[..start]) {
                if !by_token.contains(id) {
                    by_token.push(id);
                }
            }
            if by_token != rings.walk_all("dc1", &key) {
                differs_from_token_order += 1;
            }
        }
        // Racks make the walk differ from a plain clockwise walk.
        assert!(differs_from_token_order > 0);
    }
}
