//! The replica's side of the exchange: sessions over a data source.
//!
//! [`RepairServer`] answers [`RepairRequest`]s from a [`RepairData`]: on
//! `Open` it lists the range once (24 bytes per key) and keeps the listing
//! and the tree it builds from it for the session, so the descent and the
//! leaf listings cost no further scans. Sessions belong to the node that
//! opened them (a peer, or this node's own side of a sync) and are bounded
//! per owner ([`SESSIONS_PER_OWNER_MAX`], that owner's least recently used
//! evicted first), so a stream of syncs from one node never evicts
//! another's; they expire when idle for [`SESSION_IDLE`]. A request naming
//! a forgotten session gets [`RepairError::UnknownSession`] and the
//! initiator retries the range on its next run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::RepairError;
use super::exchange::{
    HASHES_PER_REQUEST, LEAVES_PER_REQUEST, MESSAGE_BYTES_TARGET, NODES_PER_REQUEST, RepairRequest,
    RepairResponse, Replica, SessionId,
};
use super::tree::{DEPTH_MAX, Entry, HashRange, MerkleTree, listing, listing_digest};
use crate::model::{Version, VersionSet, key_hash};
use crate::ring::NodeId;
use crate::store::{LocalStore, StoreError};

/// Sessions a replica keeps at once for one owner (a node runs one repair
/// at a time, a few ranges at once).
pub const SESSIONS_PER_OWNER_MAX: usize = 32;

/// Who opened a session: a peer node, or `None` for this node's own side
/// of a sync it runs.
type Owner = Option<NodeId>;

/// A session unused this long is forgotten.
pub const SESSION_IDLE: Duration = Duration::from_secs(120);

/// Where a replica's repair data comes from, and where repaired versions go.
pub trait RepairData: Send + Sync + 'static {
    /// The canonical listing (see [`listing`]) of every key of `keyspace`
    /// with hash in `range`.
    fn listing(
        &self,
        keyspace: &str,
        range: HashRange,
    ) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send;

    /// Every key of `keyspace` whose hash is `hash`, with its set.
    fn sets(
        &self,
        keyspace: &str,
        hash: u64,
    ) -> impl Future<Output = Result<Vec<(Vec<u8>, VersionSet)>, StoreError>> + Send;

    /// Absorb `versions` into the key's set, merging as every delivery
    /// path does.
    fn absorb(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How repaired versions reach a replica's store.
pub trait Absorb: Send + Sync + 'static {
    /// Absorb `versions` into the key's set.
    fn absorb(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<A: Absorb> Absorb for Arc<A> {
    fn absorb(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).absorb(keyspace, key, versions)
    }
}

/// Repair data from a [`LocalStore`], absorbing through `absorb` (the
/// node's coordinator).
pub struct StoreData<S, A> {
    /// Where sets are read.
    pub store: S,
    /// Where repaired versions go.
    pub absorb: A,
}

impl<S: LocalStore, A: Absorb> RepairData for StoreData<S, A> {
    async fn listing(&self, keyspace: &str, range: HashRange) -> Result<Vec<Entry>, StoreError> {
        let digests = self.store.scan_digests(keyspace, range.bounds()).await?;
        blocking(move || {
            listing(
                digests
                    .into_iter()
                    .map(|(key, digest)| (key_hash(&key), key, digest)),
            )
        })
        .await
    }

    async fn sets(
        &self,
        keyspace: &str,
        hash: u64,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        self.store.scan_hashes(keyspace, hash..=hash).await
    }

    async fn absorb(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.absorb.absorb(keyspace, key, versions).await
    }
}

/// Run CPU-heavy work (hashing a range's keys, building a tree) off the
/// async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Failed {
            reason: format!("repair task failed: {e}"),
        })
}

struct Session {
    range: HashRange,
    listing: Arc<[Entry]>,
    tree: Option<Arc<MerkleTree>>,
    used: Instant,
}

/// Answers repair requests from a data source, keeping each sync's
/// listing and tree for its session.
pub struct RepairServer<D> {
    data: D,
    sessions: Mutex<HashMap<(Owner, SessionId), Session>>,
}

fn bad(reason: impl Into<String>) -> RepairError {
    RepairError::BadRequest {
        reason: reason.into(),
    }
}

impl<D: RepairData> RepairServer<D> {
    /// A server over `data`.
    pub fn new(data: D) -> Self {
        RepairServer {
            data,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The data source.
    pub fn data(&self) -> &D {
        &self.data
    }

    /// Sessions currently kept.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Answer one request of this node's own side of a sync.
    pub async fn serve(&self, request: RepairRequest) -> Result<RepairResponse, RepairError> {
        self.serve_as(None, request).await
    }

    /// Answer one request of peer `from`.
    pub async fn serve_peer(
        &self,
        from: &NodeId,
        request: RepairRequest,
    ) -> Result<RepairResponse, RepairError> {
        self.serve_as(Some(from.clone()), request).await
    }

    async fn serve_as(
        &self,
        owner: Owner,
        request: RepairRequest,
    ) -> Result<RepairResponse, RepairError> {
        match request {
            RepairRequest::Open {
                session,
                keyspace,
                range,
            } => {
                let listing: Arc<[Entry]> = self.data.listing(&keyspace, range).await?.into();
                let keys = listing.len() as u64;
                let digest = {
                    let listing = listing.clone();
                    blocking(move || listing_digest(&listing)).await?
                };
                self.insert(
                    (owner, session),
                    Session {
                        range,
                        listing,
                        tree: None,
                        used: Instant::now(),
                    },
                );
                Ok(RepairResponse::Opened { keys, digest })
            }
            RepairRequest::Level {
                session,
                depth,
                level,
                nodes,
            } => {
                if level > depth || nodes.len() > NODES_PER_REQUEST {
                    return Err(bad(format!(
                        "level {level} of depth {depth}, {} nodes",
                        nodes.len()
                    )));
                }
                let tree = self.tree(&(owner, session), depth).await?;
                nodes
                    .iter()
                    .map(|&n| {
                        tree.node(level, n)
                            .ok_or_else(|| bad(format!("no node {n} at level {level}")))
                    })
                    .collect::<Result<_, _>>()
                    .map(RepairResponse::Hashes)
            }
            RepairRequest::Leaves {
                session,
                depth,
                leaves,
            } => {
                if depth > DEPTH_MAX || leaves.len() > LEAVES_PER_REQUEST {
                    return Err(bad(format!("depth {depth}, {} leaves asked", leaves.len())));
                }
                let (range, listing) = self.listing(&(owner, session))?;
                let mut out = Vec::with_capacity(leaves.len());
                let mut size = 0;
                for leaf in leaves {
                    if leaf >= 1 << depth {
                        return Err(bad(format!("no leaf {leaf} at depth {depth}")));
                    }
                    let entries = match range.part(depth, leaf) {
                        Some(part) => {
                            let lo = listing.partition_point(|e| e.hash < part.first);
                            let hi = listing.partition_point(|e| e.hash <= part.last);
                            listing[lo..hi].to_vec()
                        }
                        None => Vec::new(),
                    };
                    size += 1 + entries.len() * 24;
                    if !out.is_empty() && size > MESSAGE_BYTES_TARGET {
                        break;
                    }
                    out.push(entries);
                }
                Ok(RepairResponse::Listings(out))
            }
            RepairRequest::Fetch { keyspace, hashes } => {
                if hashes.is_empty() || hashes.len() > HASHES_PER_REQUEST {
                    return Err(bad(format!("{} hashes asked", hashes.len())));
                }
                let mut entries = Vec::new();
                let (mut served, mut size) = (0u32, 0usize);
                for hash in hashes {
                    let sets = self.data.sets(&keyspace, hash).await?;
                    size += postcard::experimental::serialized_size(&sets).unwrap_or(0);
                    if served > 0 && size > MESSAGE_BYTES_TARGET {
                        break;
                    }
                    entries.extend(sets);
                    served += 1;
                }
                Ok(RepairResponse::Sets { served, entries })
            }
            RepairRequest::Push { keyspace, entries } => {
                for (key, versions) in entries {
                    self.data.absorb(&keyspace, &key, versions).await?;
                }
                Ok(RepairResponse::Pushed)
            }
            RepairRequest::Close { session } => {
                self.sessions.lock().remove(&(owner, session));
                Ok(RepairResponse::Closed)
            }
        }
    }

    fn insert(&self, id: (Owner, SessionId), session: Session) {
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.used) < SESSION_IDLE);
        loop {
            let owned = sessions.iter().filter(|((owner, _), _)| *owner == id.0);
            if owned.clone().count() < SESSIONS_PER_OWNER_MAX || sessions.contains_key(&id) {
                break;
            }
            let Some(oldest) = owned.min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) else {
                break;
            };
            tracing::debug!(owner = ?oldest.0, session = oldest.1, "repair session evicted");
            sessions.remove(&oldest);
        }
        sessions.insert(id, session);
    }

    fn listing(&self, id: &(Owner, SessionId)) -> Result<(HashRange, Arc<[Entry]>), RepairError> {
        let mut sessions = self.sessions.lock();
        let session = sessions
            .get_mut(id)
            .ok_or(RepairError::UnknownSession { session: id.1 })?;
        session.used = Instant::now();
        Ok((session.range, session.listing.clone()))
    }

    /// The session's tree at `depth`, built on first use.
    async fn tree(
        &self,
        id: &(Owner, SessionId),
        depth: u8,
    ) -> Result<Arc<MerkleTree>, RepairError> {
        if depth > DEPTH_MAX {
            return Err(bad(format!("depth {depth} exceeds {DEPTH_MAX}")));
        }
        let (range, listing) = {
            let mut sessions = self.sessions.lock();
            let session = sessions
                .get_mut(id)
                .ok_or(RepairError::UnknownSession { session: id.1 })?;
            session.used = Instant::now();
            if let Some(tree) = session.tree.as_ref().filter(|t| t.depth() == depth) {
                return Ok(tree.clone());
            }
            (session.range, session.listing.clone())
        };
        let tree = Arc::new(blocking(move || MerkleTree::build(range, depth, &listing)).await?);
        if let Some(session) = self.sessions.lock().get_mut(id) {
            session.tree = Some(tree.clone());
        }
        Ok(tree)
    }
}

/// A server answers its own node's side of a sync in process: no bytes.
impl<D: RepairData> Replica for RepairServer<D> {
    async fn call(&self, request: RepairRequest) -> Result<(RepairResponse, u64), RepairError> {
        Ok((self.serve(request).await?, 0))
    }
}
