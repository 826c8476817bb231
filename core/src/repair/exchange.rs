//! The repair exchange: the messages two replicas trade, and the
//! initiator's side of one range's sync.
//!
//! ```text
//! initiator (local and remote alike)         replica
//!   Open { session, keyspace, range }   ──►  scan the range, keep its listing
//!                                       ◄──  Opened { keys, digest }
//!   equal digests: done; else depth = depth_for(max(keys, keys'))
//!   Level { session, depth, level, nodes } ─► hashes of those nodes
//!     level 0: [root]; then the children of every node whose hashes differ
//!   Leaves { session, depth, leaves }   ──►  the listings (hash, fingerprint) of those leaves
//!   Fetch { keyspace, hashes }          ──►  the current sets of the keys with those hashes
//!   Push { keyspace, entries }          ──►  absorb versions (through the keyspace's merge)
//!   Close { session }
//! ```
//!
//! The initiator sends the same requests to its own replica (served in
//! process, costing no bytes) and to the remote one, so the algorithm is
//! symmetric: it descends only into subtrees whose hashes differ, compares
//! the two listings of each differing leaf, fetches both sides' sets of the
//! keys whose entries differ, and gives each side the versions of the join
//! that it lacks. Absorbing is a join, so a sync is two-way, idempotent,
//! and safe to run concurrently with writes and with other syncs: at worst
//! it misses a difference born during it, which the next run finds.
//!
//! A session lets the replica scan its range once per sync rather than
//! once per request; sessions are few, bounded and expire (see
//! [`super::server`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::RepairError;
use super::stats::RepairStats;
use super::tree::{Entry, Fingerprint, HashRange, depth_for, differing_hashes};
use crate::model::{Version, VersionSet, key_hash};

/// Node hashes asked for in one [`RepairRequest::Level`] (64 KiB of
/// indices and hashes at most).
pub const NODES_PER_REQUEST: usize = 4096;

/// Leaves asked for in one [`RepairRequest::Leaves`].
pub const LEAVES_PER_REQUEST: usize = 1024;

/// Key hashes asked for in one [`RepairRequest::Fetch`].
pub const HASHES_PER_REQUEST: usize = 256;

/// Target size of one answer or push, in encoded bytes, so large sets
/// travel in several messages; defined with the other size limits in
/// [`crate::limit`], which asserts that this plus one full set fits in a
/// frame.
pub const MESSAGE_BYTES_TARGET: usize = crate::limit::REPAIR_MESSAGE_BYTES_TARGET;

/// Id of one sync's session on each replica, chosen by the initiator.
pub type SessionId = u64;

/// A repair request from the initiator of a sync to a replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RepairRequest {
    /// Scan `range` of `keyspace` and keep its listing for this session.
    Open {
        /// The session.
        session: SessionId,
        /// Keyspace name.
        keyspace: String,
        /// Hashes to compare.
        range: HashRange,
    },
    /// The hashes of `nodes` (indices within `level`) of the session's
    /// tree at `depth`.
    Level {
        /// The session.
        session: SessionId,
        /// Depth of the tree.
        depth: u8,
        /// Level of the nodes (0 is the root).
        level: u8,
        /// Node indices within the level.
        nodes: Vec<u32>,
    },
    /// The listings of `leaves` of the session's tree at `depth`.
    Leaves {
        /// The session.
        session: SessionId,
        /// Depth of the tree.
        depth: u8,
        /// Leaf indices.
        leaves: Vec<u32>,
    },
    /// The current sets of every key whose hash is in `hashes` (read now,
    /// not from the session's scan).
    Fetch {
        /// Keyspace name.
        keyspace: String,
        /// Key hashes, ascending.
        hashes: Vec<u64>,
    },
    /// Absorb versions into keys' sets (through the keyspace's merge).
    Push {
        /// Keyspace name.
        keyspace: String,
        /// Keys and the versions each lacks.
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    },
    /// Forget the session.
    Close {
        /// The session.
        session: SessionId,
    },
}

/// A replica's answer to a [`RepairRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RepairResponse {
    /// The range is scanned.
    Opened {
        /// Keys in the range.
        keys: u64,
        /// Hash of the whole listing ([`listing_digest`](super::tree::listing_digest)): equal on both
        /// sides, the range is in sync and the descent is skipped.
        digest: Fingerprint,
    },
    /// Node hashes, in the order asked.
    Hashes(Vec<Fingerprint>),
    /// Leaf listings, in the order asked: a prefix of the leaves asked for
    /// when the answer would exceed [`MESSAGE_BYTES_TARGET`] (never empty
    /// when something was asked).
    Listings(Vec<Vec<Entry>>),
    /// Keys and sets of the first `served` hashes asked for (all of them
    /// unless the answer would exceed [`MESSAGE_BYTES_TARGET`]; at least
    /// one).
    Sets {
        /// How many of the hashes asked for are answered.
        served: u32,
        /// Their keys and sets, in hash order.
        entries: Vec<(Vec<u8>, VersionSet)>,
    },
    /// The versions are absorbed.
    Pushed,
    /// The session is gone.
    Closed,
}

/// One side of a sync: something that answers repair requests.
pub trait Replica: Send + Sync {
    /// Answer `request`; also returns the bytes the exchange took on the
    /// wire (0 for a replica served in process).
    fn call(
        &self,
        request: RepairRequest,
    ) -> impl Future<Output = Result<(RepairResponse, u64), RepairError>> + Send;
}

fn unexpected(what: &str, got: &RepairResponse) -> RepairError {
    RepairError::Protocol {
        reason: format!("expected {what}, got {got:?}"),
    }
}

/// One side of a sync, with the bytes its answers cost.
struct Side<'a, R> {
    replica: &'a R,
    bytes: u64,
}

impl<R: Replica> Side<'_, R> {
    async fn call(&mut self, request: RepairRequest) -> Result<RepairResponse, RepairError> {
        let (response, bytes) = self.replica.call(request).await?;
        self.bytes += bytes;
        Ok(response)
    }

    async fn open(
        &mut self,
        session: SessionId,
        keyspace: &str,
        range: HashRange,
    ) -> Result<(u64, Fingerprint), RepairError> {
        let request = RepairRequest::Open {
            session,
            keyspace: keyspace.to_owned(),
            range,
        };
        match self.call(request).await? {
            RepairResponse::Opened { keys, digest } => Ok((keys, digest)),
            other => Err(unexpected("Opened", &other)),
        }
    }

    async fn level(
        &mut self,
        session: SessionId,
        depth: u8,
        level: u8,
        nodes: &[u32],
    ) -> Result<Vec<Fingerprint>, RepairError> {
        let mut out = Vec::with_capacity(nodes.len());
        for chunk in nodes.chunks(NODES_PER_REQUEST) {
            let request = RepairRequest::Level {
                session,
                depth,
                level,
                nodes: chunk.to_vec(),
            };
            match self.call(request).await? {
                RepairResponse::Hashes(h) if h.len() == chunk.len() => out.extend(h),
                other => return Err(unexpected("one hash per node", &other)),
            }
        }
        Ok(out)
    }

    async fn leaves(
        &mut self,
        session: SessionId,
        depth: u8,
        leaves: &[u32],
    ) -> Result<Vec<Vec<Entry>>, RepairError> {
        let mut out = Vec::with_capacity(leaves.len());
        while out.len() < leaves.len() {
            let rest = &leaves[out.len()..];
            let request = RepairRequest::Leaves {
                session,
                depth,
                leaves: rest[..rest.len().min(LEAVES_PER_REQUEST)].to_vec(),
            };
            match self.call(request).await? {
                RepairResponse::Listings(l) if !l.is_empty() && l.len() <= rest.len() => {
                    out.extend(l)
                }
                other => return Err(unexpected("leaf listings", &other)),
            }
        }
        Ok(out)
    }

    async fn fetch(
        &mut self,
        keyspace: &str,
        hashes: &[u64],
    ) -> Result<BTreeMap<Vec<u8>, VersionSet>, RepairError> {
        let mut out = BTreeMap::new();
        let mut done = 0;
        while done < hashes.len() {
            let rest = &hashes[done..];
            let request = RepairRequest::Fetch {
                keyspace: keyspace.to_owned(),
                hashes: rest[..rest.len().min(HASHES_PER_REQUEST)].to_vec(),
            };
            match self.call(request).await? {
                RepairResponse::Sets { served, entries }
                    if served > 0 && served as usize <= rest.len() =>
                {
                    // Only keys of the hashes asked for: a confused partner
                    // cannot make repair move keys outside the range.
                    let asked = &rest[..served as usize];
                    done += asked.len();
                    out.extend(
                        entries
                            .into_iter()
                            .filter(|(key, _)| asked.contains(&key_hash(key))),
                    );
                }
                other => return Err(unexpected("sets", &other)),
            }
        }
        Ok(out)
    }

    async fn push(
        &mut self,
        keyspace: &str,
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    ) -> Result<(), RepairError> {
        for batch in batches(entries) {
            let request = RepairRequest::Push {
                keyspace: keyspace.to_owned(),
                entries: batch,
            };
            match self.call(request).await? {
                RepairResponse::Pushed => {}
                other => return Err(unexpected("Pushed", &other)),
            }
        }
        Ok(())
    }

    async fn close(&mut self, session: SessionId) {
        if let Err(e) = self.call(RepairRequest::Close { session }).await {
            tracing::debug!(error = %e, "closing a repair session failed; it will expire");
        }
    }
}

/// Split pushes into messages of about [`MESSAGE_BYTES_TARGET`].
fn batches(entries: Vec<(Vec<u8>, Vec<Version>)>) -> Vec<Vec<(Vec<u8>, Vec<Version>)>> {
    let mut out: Vec<Vec<_>> = Vec::new();
    let mut size = 0;
    for entry in entries {
        let bytes = postcard::experimental::serialized_size(&entry).unwrap_or(0);
        if out.is_empty() || size + bytes > MESSAGE_BYTES_TARGET {
            out.push(Vec::new());
            size = 0;
        }
        size += bytes;
        out.last_mut().expect("a batch was just pushed").push(entry);
    }
    out
}

/// Sync `range` of `keyspace` between `local` and `remote`, both ways.
///
/// `session` names the sync on both replicas; it must be unique among
/// their open sessions (a random 64-bit id is). The returned stats count
/// one range, and the bytes of `remote`'s messages.
pub async fn sync<L: Replica, R: Replica>(
    local: &L,
    remote: &R,
    keyspace: &str,
    range: HashRange,
    session: SessionId,
) -> Result<RepairStats, RepairError> {
    let mut ours = Side {
        replica: local,
        bytes: 0,
    };
    let mut theirs = Side {
        replica: remote,
        bytes: 0,
    };
    let result = sync_open(&mut ours, &mut theirs, keyspace, range, session).await;
    ours.close(session).await;
    theirs.close(session).await;
    let mut stats = result?;
    stats.ranges = 1;
    stats.bytes = ours.bytes + theirs.bytes;
    Ok(stats)
}

async fn sync_open<L: Replica, R: Replica>(
    ours: &mut Side<'_, L>,
    theirs: &mut Side<'_, R>,
    keyspace: &str,
    range: HashRange,
    session: SessionId,
) -> Result<RepairStats, RepairError> {
    let (a, b) = tokio::join!(
        ours.open(session, keyspace, range),
        theirs.open(session, keyspace, range)
    );
    let ((a, a_digest), (b, b_digest)) = (a?, b?);
    let mut stats = RepairStats::default();
    if a_digest == b_digest {
        return Ok(stats);
    }
    let depth = depth_for(a.max(b));
    let leaves = if a == 0 || b == 0 {
        // One side holds nothing: every non-empty leaf differs, and the
        // descent would only confirm it.
        (0..1u32 << depth).collect()
    } else {
        differing_leaves(ours, theirs, session, depth).await?
    };
    for chunk in leaves.chunks(LEAVES_PER_REQUEST) {
        let (a, b) = tokio::join!(
            ours.leaves(session, depth, chunk),
            theirs.leaves(session, depth, chunk)
        );
        let (a, b) = (a?, b?);
        let hashes: Vec<u64> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| differing_hashes(x, y))
            .collect();
        for batch in hashes.chunks(HASHES_PER_REQUEST * 4) {
            reconcile(ours, theirs, keyspace, batch, &mut stats).await?;
        }
    }
    Ok(stats)
}

/// Descend from the root into the subtrees whose hashes differ; the
/// differing leaves.
async fn differing_leaves<L: Replica, R: Replica>(
    ours: &mut Side<'_, L>,
    theirs: &mut Side<'_, R>,
    session: SessionId,
    depth: u8,
) -> Result<Vec<u32>, RepairError> {
    let mut nodes = vec![0u32];
    for level in 0..=depth {
        let (a, b) = tokio::join!(
            ours.level(session, depth, level, &nodes),
            theirs.level(session, depth, level, &nodes)
        );
        let (a, b) = (a?, b?);
        let differing: Vec<u32> = nodes
            .iter()
            .zip(a.iter().zip(&b))
            .filter(|(_, (x, y))| x != y)
            .map(|(n, _)| *n)
            .collect();
        if level == depth || differing.is_empty() {
            return Ok(differing);
        }
        nodes = differing.iter().flat_map(|&n| [2 * n, 2 * n + 1]).collect();
    }
    unreachable!("the loop returns at level == depth")
}

/// Bring the keys with `hashes` to the join of both sides' sets.
async fn reconcile<L: Replica, R: Replica>(
    ours: &mut Side<'_, L>,
    theirs: &mut Side<'_, R>,
    keyspace: &str,
    hashes: &[u64],
    stats: &mut RepairStats,
) -> Result<(), RepairError> {
    let (a, b) = tokio::join!(ours.fetch(keyspace, hashes), theirs.fetch(keyspace, hashes));
    let (mut a, mut b) = (a?, b?);
    let keys: std::collections::BTreeSet<Vec<u8>> = a.keys().chain(b.keys()).cloned().collect();
    let (mut pull, mut push) = (Vec::new(), Vec::new());
    for key in keys {
        let mine = a.remove(&key).unwrap_or_default();
        let yours = b.remove(&key).unwrap_or_default();
        if mine == yours {
            continue;
        }
        stats.keys_differing += 1;
        let mut joined = mine.clone();
        joined.join(yours.clone());
        let lacking = |have: &VersionSet| -> Vec<Version> {
            joined
                .versions()
                .iter()
                .filter(|v| !have.versions().contains(v))
                .cloned()
                .collect()
        };
        let (for_us, for_them) = (lacking(&mine), lacking(&yours));
        if !for_us.is_empty() {
            pull.push((key.clone(), for_us));
        }
        if !for_them.is_empty() {
            push.push((key, for_them));
        }
    }
    stats.keys_pulled += pull.len() as u64;
    stats.keys_pushed += push.len() as u64;
    let (a, b) = tokio::join!(ours.push(keyspace, pull), theirs.push(keyspace, push));
    a?;
    b
}
