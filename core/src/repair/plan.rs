//! Which ranges a node repairs, and with whom. No IO: functions of the
//! rings and the live set.
//!
//! The hash space is cut after every token of the rings involved (one
//! datacenter's for in-DC repair, the union of both for a cross-DC sync).
//! Within a piece no ring changes owner, so the replicas of its last hash
//! are the replicas of all of it. Adjacent pieces with the same partners
//! are merged, and pieces wider than [`RANGE_WIDTH_MAX`] are split, so
//! one sync's listing stays a bounded share of the node's keys.

use std::collections::BTreeSet;

use super::Share;
use super::tree::HashRange;
use crate::model::DcName;
use crate::ring::{NodeId, Ring};

/// Widest range synced at once: a 64th of the ring.
pub const RANGE_WIDTH_MAX: u128 = 1 << 58;

/// The whole hash space cut after each boundary, in order. Every piece
/// ends at a boundary or at `u64::MAX`, and holds no other boundary.
pub fn pieces(boundaries: impl IntoIterator<Item = u64>) -> Vec<HashRange> {
    let cuts: BTreeSet<u64> = boundaries.into_iter().collect();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut first = 0u64;
    for cut in cuts {
        out.push(HashRange { first, last: cut });
        match cut.checked_add(1) {
            Some(next) => first = next,
            None => return out,
        }
    }
    out.push(HashRange {
        first,
        last: u64::MAX,
    });
    out
}

/// Merge adjacent pieces with equal labels up to `width_max`, then split
/// any range still wider than it.
fn merge<T: PartialEq + Clone>(
    labelled: Vec<(HashRange, T)>,
    width_max: u128,
) -> Vec<(HashRange, T)> {
    let mut merged: Vec<(HashRange, T)> = Vec::new();
    for (range, label) in labelled {
        if let Some((last, last_label)) = merged.last_mut()
            && *last_label == label
            && last.last.checked_add(1) == Some(range.first)
            && last.width() + range.width() <= width_max
        {
            last.last = range.last;
            continue;
        }
        merged.push((range, label));
    }
    merged
        .into_iter()
        .flat_map(|(range, label)| {
            range
                .split(width_max)
                .into_iter()
                .map(move |r| (r, label.clone()))
        })
        .collect()
}

/// The ranges `me` replicates in its datacenter `dc` at replication
/// factor `rf`, each with its replicas in placement order (`me` among
/// them).
pub fn local_ranges(
    ring: &Ring,
    dc: &DcName,
    rf: usize,
    me: &NodeId,
) -> Vec<(HashRange, Vec<NodeId>)> {
    if rf == 0 {
        return Vec::new();
    }
    let labelled: Vec<(HashRange, Vec<NodeId>)> = pieces(ring.tokens(dc))
        .into_iter()
        .map(|piece| (piece, ring.replicas_in_dc(dc, piece.last, rf)))
        .filter(|(_, replicas)| replicas.contains(me))
        .collect();
    merge(labelled, RANGE_WIDTH_MAX)
}

/// Range movement in `dc` from the ring `now` to the ring `next` (a node
/// joining or leaving): every piece cut at both rings' tokens, with its
/// replicas now and next.
pub fn movement(
    now: &Ring,
    next: &Ring,
    dc: &DcName,
    rf: usize,
) -> Vec<(HashRange, Vec<NodeId>, Vec<NodeId>)> {
    pieces(now.tokens(dc).into_iter().chain(next.tokens(dc)))
        .into_iter()
        .map(|p| {
            (
                p,
                now.replicas_in_dc(dc, p.last, rf),
                next.replicas_in_dc(dc, p.last, rf),
            )
        })
        .collect()
}

/// Cross-datacenter ranges: pieces of the union of both rings that `me`
/// replicates in `local` (with [`Share::Primary`], only those on which it
/// is the first live local replica: the primary while it is up), each with
/// the first live replica of `remote`, with which to sync it (`None` where
/// `remote` has no live replica).
#[allow(clippy::too_many_arguments)]
pub fn remote_ranges(
    ring: &Ring,
    local: &DcName,
    local_rf: usize,
    remote: &DcName,
    remote_rf: usize,
    alive: &BTreeSet<NodeId>,
    me: &NodeId,
    share: Share,
) -> Vec<(HashRange, Option<NodeId>)> {
    if local_rf == 0 || remote_rf == 0 {
        return Vec::new();
    }
    let first_live = |dc: &DcName, rf: usize, hash: u64| {
        ring.replicas_in_dc(dc, hash, rf)
            .into_iter()
            .find(|n| alive.contains(n))
    };
    let labelled: Vec<(HashRange, Option<NodeId>)> =
        pieces(ring.tokens(local).into_iter().chain(ring.tokens(remote)))
            .into_iter()
            .filter(|piece| match share {
                Share::Primary => first_live(local, local_rf, piece.last).as_ref() == Some(me),
                Share::Replicated | Share::Owned => ring
                    .replicas_in_dc(local, piece.last, local_rf)
                    .contains(me),
            })
            .map(|piece| (piece, first_live(remote, remote_rf, piece.last)))
            .collect();
    merge(labelled, RANGE_WIDTH_MAX)
}
