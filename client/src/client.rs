//! The application's client: a builder, a session per node opened on
//! demand and reopened after failures, requests routed to a replica of the
//! key in the local datacenter, and retries with backoff and jitter that
//! reuse the write id (so a retried write never adds a sibling).
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;

use crate::error::ClientError;
use crate::placement;
use crate::session::{ConnectOptions, Session};
use crate::tls::TlsMaterial;
use crate::wire::{
    Consistency, Context, Credentials, Expiry, NodeReport, RequestBody, ResponseBody,
    SCAN_COUNT_MAX, ScanCursor, Sibling, WriteId, WriteMode,
};

/// A read: the live siblings (none when absent) and the context to write
/// back over them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Live siblings in canonical order.
    pub siblings: Vec<Sibling>,
    /// Causal context covering every sibling.
    pub context: Context,
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
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("keyspace", &self.keyspace)
            .field("count", &self.count)
            .field("cursor", &self.cursor)
            .field("done", &self.done)
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
            .scan_page(&self.keyspace, self.cursor, self.count)
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

    /// Connect to a seed and learn the cluster.
    pub async fn build(mut self) -> Result<Client, ClientError> {
        if self.seeds.is_empty() {
            return Err(ClientError::Connect {
                addr: String::new(),
                reason: "no seed given".into(),
            });
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
        let client = Client {
            inner: Arc::new(Inner {
                config: self,
                sessions: Mutex::default(),
                topology: Mutex::default(),
            }),
        };
        client.refresh().await?;
        Ok(client)
    }
}

#[derive(Default)]
struct Topology {
    /// Every node known, by id.
    nodes: Vec<NodeReport>,
    /// Sorted (token, addr) of the preferred datacenter's live nodes.
    tokens: Vec<(u64, String)>,
}

struct Inner {
    config: ClientBuilder,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    topology: Mutex<Topology>,
}

/// A cluster client; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Start configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    async fn session(&self, addr: &str) -> Result<Arc<Session>, ClientError> {
        if let Some(s) = self.inner.sessions.lock().get(addr).filter(|s| s.is_open()) {
            return Ok(s.clone());
        }
        let fresh = Arc::new(
            Session::connect_with(
                addr,
                &self.inner.config.options,
                self.inner.config.connect_timeout,
            )
            .await?,
        );
        self.inner
            .sessions
            .lock()
            .insert(addr.to_owned(), fresh.clone());
        Ok(fresh)
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

    fn set_topology(&self, nodes: Vec<NodeReport>) {
        let local = self.inner.config.local_dc.clone();
        let preferred: Vec<&NodeReport> = nodes
            .iter()
            .filter(|n| n.up && n.status == "Normal" && local.as_ref().is_none_or(|dc| *dc == n.dc))
            .collect();
        let mut tokens: Vec<(u64, String)> = preferred
            .iter()
            .flat_map(|n| {
                placement::tokens_for(&n.node_id, n.vnodes)
                    .into_iter()
                    .map(|t| (t, n.addr.clone()))
            })
            .collect();
        tokens.sort();
        *self.inner.topology.lock() = Topology { nodes, tokens };
    }

    /// Nodes to try for `key` at `level`, best first: the key's primary
    /// replica in the preferred datacenter, then the other live preferred
    /// nodes, then (when the failover policy lets this level leave the
    /// DC) live nodes elsewhere, then the seeds it may use.
    fn route(&self, key: &[u8], level: Option<Consistency>) -> Vec<String> {
        let topology = self.inner.topology.lock();
        let local = self.inner.config.local_dc.as_ref();
        let leave = match self.inner.config.failover {
            DcFailover::Always => true,
            DcFailover::Never => false,
            DcFailover::NonLocalLevels => level
                .is_some_and(|l| !matches!(l, Consistency::LocalOne | Consistency::LocalQuorum)),
        };
        let allowed = |dc: &str| local.is_none_or(|l| l == dc) || leave;
        let mut out: Vec<String> = Vec::new();
        let mut push = |addr: &String| {
            if !out.contains(addr) {
                out.push(addr.clone());
            }
        };
        if let Some(addr) = placement::primary(&topology.tokens, key) {
            push(addr);
        }
        topology.tokens.iter().for_each(|(_, a)| push(a));
        topology
            .nodes
            .iter()
            .filter(|n| n.up && allowed(&n.dc))
            .for_each(|n| push(&n.addr));
        // A seed whose DC the topology names obeys the policy; one it
        // does not know is tried (it may be the only way in).
        for seed in &self.inner.config.seeds {
            let dc = topology
                .nodes
                .iter()
                .find(|n| n.addr == *seed)
                .map(|n| &n.dc);
            if dc.is_none_or(|dc| allowed(dc)) {
                push(seed);
            }
        }
        out
    }

    /// Send `body` for `key`, retrying retryable failures on the next
    /// node with backoff and jitter.
    async fn call(&self, key: &[u8], body: RequestBody) -> Result<ResponseBody, ClientError> {
        let level = match &body {
            RequestBody::Get { consistency, .. }
            | RequestBody::Put { consistency, .. }
            | RequestBody::Delete { consistency, .. } => *consistency,
            _ => None,
        };
        let route = self.route(key, level);
        let attempts = self.inner.config.retries + 1;
        let mut last = ClientError::Connect {
            addr: String::new(),
            reason: "no node known".into(),
        };
        for attempt in 0..attempts {
            if attempt > 0 {
                let cap = self
                    .inner
                    .config
                    .backoff
                    .saturating_mul(1 << attempt.min(10));
                let sleep = rand::rng().random_range(Duration::ZERO..=cap);
                tokio::time::sleep(sleep).await;
            }
            let Some(addr) = route.get(attempt as usize % route.len().max(1)) else {
                break;
            };
            let result = match self.session(addr).await {
                Ok(s) => s.call(body.clone(), self.inner.config.timeout).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_retryable() => {
                    if matches!(
                        e,
                        ClientError::Connect { .. } | ClientError::ConnectionClosed
                    ) {
                        self.inner.sessions.lock().remove(addr);
                        // Best effort: learn who is up before the next try.
                        let _ = Box::pin(self.refresh()).await;
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Read the live siblings of a key.
    pub async fn get(&self, keyspace: &str, key: &[u8]) -> Result<Read, ClientError> {
        let body = RequestBody::Get {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            consistency: self.inner.config.consistency,
        };
        match self.call(key, body).await? {
            ResponseBody::Value { siblings, context } => Ok(Read { siblings, context }),
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
        self.put_with_id(keyspace, key, value, context, WriteId(rand::random()))
            .await
    }

    /// [`put`](Self::put) as the logical write `write_id`: calling it again
    /// with the same id after an error (a timeout, an unavailable node),
    /// with the same value and context, is the same write, which takes
    /// effect at most once wherever its attempts land. The client's own
    /// retries reuse the id the same way.
    pub async fn put_with_id(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        write_id: WriteId,
    ) -> Result<(), ClientError> {
        let body = RequestBody::Put {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            value,
            context: context.clone(),
            consistency: self.inner.config.consistency,
            write_id,
            mode: WriteMode::Context,
            expiry: Expiry::KeyspaceDefault,
        };
        self.expect_written(key, body).await
    }

    /// [`put`](Self::put) with an expiry for the value, instead of the
    /// keyspace's default: e.g. `Expiry::AfterMs(60_000)` for a minute
    /// from when the coordinator receives it, `Expiry::AtMs` for a wall
    /// clock time, `Expiry::Never`. A read's [`Sibling::expires_ms`]
    /// says when each value expires.
    pub async fn put_with_expiry(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        expiry: Expiry,
    ) -> Result<(), ClientError> {
        let body = RequestBody::Put {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            value,
            context: context.clone(),
            consistency: self.inner.config.consistency,
            write_id: WriteId(rand::random()),
            mode: WriteMode::Context,
            expiry,
        };
        self.expect_written(key, body).await
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
        self.put_mode(keyspace, key, value, context, WriteMode::IfMatch)
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
        self.put_mode(
            keyspace,
            key,
            value,
            &Context::default(),
            WriteMode::IfAbsent,
        )
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
        self.put_mode(
            keyspace,
            key,
            value,
            &Context::default(),
            WriteMode::Overwrite,
        )
        .await
    }

    async fn put_mode(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Vec<u8>,
        context: &Context,
        mode: WriteMode,
    ) -> Result<(), ClientError> {
        let body = RequestBody::Put {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            value,
            context: context.clone(),
            consistency: self.inner.config.consistency,
            write_id: WriteId(rand::random()),
            mode,
            expiry: Expiry::KeyspaceDefault,
        };
        self.expect_written(key, body).await
    }

    /// Delete what `context` saw.
    pub async fn delete(
        &self,
        keyspace: &str,
        key: &[u8],
        context: &Context,
    ) -> Result<(), ClientError> {
        let body = RequestBody::Delete {
            keyspace: keyspace.into(),
            key: key.to_vec(),
            context: context.clone(),
            consistency: self.inner.config.consistency,
            write_id: WriteId(rand::random()),
        };
        self.expect_written(key, body).await
    }

    /// Fetch the siblings, compute the new value (`None` deletes), and
    /// store it over what was read.
    pub async fn update(
        &self,
        keyspace: &str,
        key: &[u8],
        change: impl FnOnce(&[Sibling]) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let read = self.get(keyspace, key).await?;
        match change(&read.siblings) {
            Some(value) => self.put(keyspace, key, value, &read.context).await,
            None => self.delete(keyspace, key, &read.context).await,
        }
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
        let body = RequestBody::Scan {
            keyspace: keyspace.into(),
            cursor: cursor.0,
            count,
        };
        // Routed as a key at the cursor would be: pages spread over nodes.
        match self.call(&cursor.0.to_be_bytes(), body).await? {
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
        Scan {
            client: self.clone(),
            keyspace: keyspace.into(),
            count: count.clamp(1, SCAN_COUNT_MAX),
            cursor: ScanCursor::START,
            done: false,
        }
    }

    async fn expect_written(&self, key: &[u8], body: RequestBody) -> Result<(), ClientError> {
        match self.call(key, body).await? {
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
                sessions: Mutex::default(),
                topology: Mutex::default(),
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
}
