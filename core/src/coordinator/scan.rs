//! Scans: one page of a keyspace's live keys, from a cursor.
//!
//! A cursor is a key hash ([`ScanCursor`]): the page goes on from there in
//! hash order, the order of the storage layout, so each replica reads one
//! contiguous stretch of its engine. In the coordinator's datacenter (or,
//! when the keyspace does not replicate there, the first one it names),
//! the page asks one replica of the range holding the cursor for the
//! stretch of consecutive ranges that replica holds ([`stretch`]): this
//! node when it is one, else a live one, else any (the failure detector
//! may not know yet); a replica that fails is passed over for the next
//! ([`candidates`]). The page goes on to the next stretch until it holds
//! `count` keys or [`SCAN_PAGE_BYTES_MAX`] bytes, [`STRETCHES_MAX`]
//! stretches were read, or half the request's time is spent. Each page
//! ends where a hash ends, so its cursor is the next hash, and a page is
//! the same request whichever node serves it: a scan survives the loss of
//! the node that served its last page.
//!
//! Consistency: one replica per range (ONE in the datacenter scanned). A
//! key that replica has not received (a write it missed, not yet brought
//! by hints or repair) is missed; keys written or deleted while a scan
//! runs may or may not appear. While the cluster is stable, every live
//! key is returned at least once.

use std::time::Duration;

use isthmus_client::wire::SCAN_COUNT_MAX;
use tokio::time::Instant;

use super::{Coordinator, CoordinatorError};
use crate::hints::HintSink;
use crate::limit::SCAN_PAGE_BYTES_MAX;
use crate::model::{DcName, KeyspaceConfig};
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::{NodeId, Ring};
use crate::store::{LocalStore, SCAN_KEY_OVERHEAD_BYTES, ScanPart};
use crate::transport::Transport;
use crate::view::ClusterView;

pub use isthmus_client::wire::ScanCursor;

/// How many token ranges one stretch spans at most.
pub const STRETCH_RANGES_MAX: usize = 4096;

/// How many stretches one page reads at most (a page may end with fewer
/// keys than asked for, and the scan goes on).
pub const STRETCHES_MAX: usize = 64;

/// One page of a scan: keys in hash order and the next page's cursor
/// ([`ScanCursor::START`] when the scan is done).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Live keys.
    pub keys: Vec<Vec<u8>>,
    /// Where the next page starts.
    pub cursor: ScanCursor,
}

/// The datacenter a scan of `ks` reads, and its replication factor there:
/// `local` when the keyspace replicates there, else the first it names.
pub fn scanned_dc(ks: &KeyspaceConfig, local: &DcName) -> Option<(DcName, usize)> {
    match ks.replication.get(local) {
        Some(&rf) => Some((local.clone(), rf as usize)),
        None => ks
            .replication
            .iter()
            .next()
            .map(|(dc, &rf)| (dc.clone(), rf as usize)),
    }
}

/// The replicas to ask for the stretch from `from`, best first: `me` when
/// it is one, then the live ones, then the others.
pub fn candidates(
    view: &ClusterView,
    dc: &DcName,
    rf: usize,
    from: u64,
    me: &NodeId,
) -> Vec<NodeId> {
    let replicas = view.ring.replicas_in_dc(dc, from, rf);
    let mut out: Vec<NodeId> = replicas.iter().filter(|n| *n == me).cloned().collect();
    out.extend(
        replicas
            .iter()
            .filter(|n| *n != me && view.alive.contains(*n))
            .cloned(),
    );
    out.extend(
        replicas
            .iter()
            .filter(|n| *n != me && !view.alive.contains(*n))
            .cloned(),
    );
    out
}

/// The last hash of the stretch from `from` that `node`, a replica of the
/// range holding `from`, holds: the end of that range, extended over the
/// next ranges while `node` replicates them too (at most
/// [`STRETCH_RANGES_MAX`] ranges). A range is `(previous token, token]`;
/// the one past the last token wraps to the first, so a stretch that
/// reaches it ends at `u64::MAX` (the scan then ends; hashes at the start
/// of the wrapped range were read first).
pub fn stretch(ring: &Ring, dc: &DcName, rf: usize, from: u64, node: &NodeId) -> u64 {
    let tokens = ring.tokens(dc);
    let mut i = tokens.partition_point(|&t| t < from);
    for _ in 0..STRETCH_RANGES_MAX {
        let Some(&end) = tokens.get(i) else {
            return u64::MAX;
        };
        let Some(next) = end.checked_add(1) else {
            return u64::MAX;
        };
        if !ring.replicas_in_dc(dc, next, rf).contains(node) {
            return end;
        }
        i += 1;
    }
    tokens.get(i.saturating_sub(1)).copied().unwrap_or(u64::MAX)
}

impl<S: LocalStore, T: Transport, H: HintSink> Coordinator<S, T, H> {
    /// One page of a scan of `keyspace` from `cursor`: at most `count`
    /// live keys (`1..=`[`SCAN_COUNT_MAX`]) and the next page's cursor.
    /// See the module's documentation for what a scan guarantees.
    pub async fn scan(
        &self,
        keyspace: &str,
        cursor: ScanCursor,
        count: u32,
        deadline: Duration,
    ) -> Result<Page, CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        if count == 0 || count > SCAN_COUNT_MAX {
            return Err(CoordinatorError::BadRequest {
                reason: format!("scan count {count} is outside 1..={SCAN_COUNT_MAX}"),
            });
        }
        let started = Instant::now();
        let view = self.view.borrow().clone();
        let no_replicas = || CoordinatorError::NoReplicas {
            dcs: ks
                .replication
                .keys()
                .map(|dc| dc.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            known: view.ring.dcs().map(|dc| view.ring.node_count(dc)).sum(),
        };
        let (dc, rf) = scanned_dc(&ks, &self.config.dc).ok_or_else(no_replicas)?;
        let count = count as usize;
        let mut page = Page::default();
        let mut bytes = 0usize;
        let mut from = cursor.0;
        for _ in 0..STRETCHES_MAX {
            let replicas = candidates(&view, &dc, rf, from, &self.config.node);
            if replicas.is_empty() {
                return Err(no_replicas());
            }
            let want = count - page.keys.len();
            let budget = SCAN_PAGE_BYTES_MAX - bytes;
            let mut last = no_replicas();
            let mut found = None;
            for node in replicas {
                let to = stretch(&view.ring, &dc, rf, from, &node);
                let left = deadline.saturating_sub(started.elapsed());
                match self
                    .scan_part(&node, keyspace, from, to, want, budget, left)
                    .await
                {
                    Ok(part) => {
                        found = Some((part, to));
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "a scan stretch failed; next replica");
                        last = e;
                    }
                }
            }
            let (part, to) = found.ok_or(last)?;
            bytes += part
                .keys
                .iter()
                .map(|k| k.len() + SCAN_KEY_OVERHEAD_BYTES)
                .sum::<usize>();
            page.keys.extend(part.keys);
            from = match part.next.or_else(|| to.checked_add(1)) {
                Some(next) => next,
                None => {
                    page.cursor = ScanCursor::START;
                    return Ok(page);
                }
            };
            if page.keys.len() >= count
                || bytes >= SCAN_PAGE_BYTES_MAX
                || started.elapsed() >= deadline / 2
            {
                break;
            }
        }
        // `from` is past a hash read, so never 0: 0 means done.
        page.cursor = ScanCursor(from);
        Ok(page)
    }

    /// One stretch from `node` (this node's store, or a peer).
    #[allow(clippy::too_many_arguments)]
    async fn scan_part(
        &self,
        node: &NodeId,
        keyspace: &str,
        from: u64,
        to: u64,
        count: usize,
        bytes_max: usize,
        deadline: Duration,
    ) -> Result<ScanPart, CoordinatorError> {
        if *node == self.config.node {
            return Ok(self
                .replica
                .store()
                .scan_keys(keyspace, from, to, count, bytes_max)
                .await?);
        }
        let request = PeerRequest::Scan {
            keyspace: keyspace.to_owned(),
            from,
            to,
            count: count as u32,
            bytes_max: bytes_max as u32,
        };
        match self.transport.call(node, request, deadline).await {
            Ok(PeerResponse::ScanPart { keys, next }) => {
                // A peer's answer is held to what was asked.
                if keys.len() > count || next.is_some_and(|n| n <= from || n > to) {
                    return Err(CoordinatorError::BadRequest {
                        reason: format!("{node} answered a scan out of bounds"),
                    });
                }
                Ok(ScanPart { keys, next })
            }
            Ok(PeerResponse::Error(e)) => Err(CoordinatorError::from_peer(node, e)),
            Ok(other) => Err(CoordinatorError::BadRequest {
                reason: format!("{node} answered a scan with {other:?}"),
            }),
            Err(e) => Err(CoordinatorError::Peer {
                node: node.clone(),
                error: isthmus_client::wire::WireError {
                    code: isthmus_client::wire::ErrorCode::Unavailable,
                    message: e.to_string(),
                    acks: None,
                    needs: None,
                },
            }),
        }
    }

    /// A peer's [`PeerRequest::Scan`], from this node's store.
    pub(super) async fn serve_scan(
        &self,
        keyspace: &str,
        from: u64,
        to: u64,
        count: u32,
        bytes_max: u32,
    ) -> Result<ScanPart, CoordinatorError> {
        if count == 0 || count > SCAN_COUNT_MAX || bytes_max as usize > SCAN_PAGE_BYTES_MAX {
            return Err(CoordinatorError::BadRequest {
                reason: format!(
                    "scan of {count} keys and {bytes_max} bytes is outside \
                     1..={SCAN_COUNT_MAX} keys and {SCAN_PAGE_BYTES_MAX} bytes"
                ),
            });
        }
        Ok(self
            .replica
            .store()
            .scan_keys(keyspace, from, to, count as usize, bytes_max as usize)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Placement;

    fn ring(nodes: &[&str], vnodes: u32) -> (Ring, Vec<NodeId>) {
        let ids: Vec<NodeId> = nodes.iter().map(|n| NodeId((*n).into())).collect();
        let placement = Placement {
            dc: DcName("dc1".into()),
            rack: "r1".into(),
        };
        let ring = Ring::build(ids.iter().map(|n| (n, &placement, vnodes)));
        (ring, ids)
    }

    /// Walking stretches from 0, each from a replica of its start, covers
    /// every hash exactly once, and each stretch's replica holds every
    /// hash in it.
    #[test]
    fn stretches_tile_the_hash_space_with_replicas_of_every_hash() {
        let dc = DcName("dc1".into());
        for (nodes, rf) in [(vec!["a", "b", "c", "d", "e"], 2), (vec!["a", "b", "c"], 3)] {
            let (ring, ids) = ring(&nodes, 8);
            let tokens = ring.tokens(&dc);
            let mut from = 0u64;
            let mut stretches = 0;
            loop {
                let replicas = ring.replicas_in_dc(&dc, from, rf);
                // Take a different replica each time, not always the first.
                let node = &replicas[stretches % replicas.len()];
                let to = stretch(&ring, &dc, rf, from, node);
                assert!(to >= from);
                // Every range boundary inside the stretch is one `node`
                // replicates.
                for &t in tokens.iter().filter(|&&t| t >= from && t <= to) {
                    assert!(ring.replicas_in_dc(&dc, t, rf).contains(node));
                }
                assert!(ring.replicas_in_dc(&dc, to, rf).contains(node));
                stretches += 1;
                match to.checked_add(1) {
                    Some(next) => from = next,
                    None => break,
                }
                assert!(stretches < 10_000, "stretches do not advance");
            }
            if rf == ids.len() {
                // Every node holds everything: one stretch.
                assert_eq!(stretches, 1);
            } else {
                assert!(stretches > 1);
            }
        }
    }

    #[test]
    fn candidates_put_this_node_first_then_the_live() {
        let dc = DcName("dc1".into());
        let (ring, ids) = ring(&["a", "b", "c"], 8);
        let replicas = ring.replicas_in_dc(&dc, 12345, 3);
        let me = replicas[2].clone();
        let dead = replicas[0].clone();
        let view = ClusterView {
            ring,
            alive: ids.iter().filter(|n| **n != dead).cloned().collect(),
            next: Ring::default(),
        };
        let order = candidates(&view, &dc, 3, 12345, &me);
        assert_eq!(order, vec![me, replicas[1].clone(), dead]);
    }

    #[test]
    fn no_ring_no_candidates_and_the_stretch_ends_the_space() {
        let dc = DcName("dc1".into());
        let view = ClusterView::default();
        assert!(candidates(&view, &dc, 3, 0, &NodeId("a".into())).is_empty());
        assert_eq!(
            stretch(&view.ring, &dc, 3, 7, &NodeId("a".into())),
            u64::MAX
        );
    }
}
