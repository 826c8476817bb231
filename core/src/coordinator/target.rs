//! Which replicas a request goes to, which of them count toward its level,
//! and whether this node coordinates a write or forwards it. Pure functions
//! of the cluster view: no IO, so every rule here is unit-tested over every
//! level, and reads, writes and bridge deliveries share them.
//!
//! The rule, decided once:
//!
//! - A level a single datacenter can win (`ONE`, `LOCAL_ONE`,
//!   `LOCAL_QUORUM`) is served in the coordinator's datacenter: reads ask
//!   its replicas only, and writes go to its replicas only when a bridge
//!   carries them to the other datacenters. `ONE` alone may leave: when no
//!   local replica is alive, it asks every datacenter (a read) or is
//!   forwarded to a live remote replica (a write).
//! - `QUORUM`, `EACH_QUORUM` and `ALL` ask every datacenter's replicas.
//! - Without a bridge a write goes to every datacenter's replicas whatever
//!   its level: nothing else would carry it there.
//! - Quorums are majorities of the *configured* replication factors, never
//!   of the replicas this node's view can name (a node that just restarted
//!   must not take a majority of what it knows for a quorum).
//! - Writes (and bridge deliveries, which are writes) also go to the
//!   pending owners in the coordinator's datacenter, the replicas the next
//!   ring adds while a range moves; their acknowledgements count for
//!   nothing.
//! - A write is coordinated by a replica of its key in the coordinator's
//!   datacenter (it issues the write's dot from the key's history); any
//!   other node forwards it, to the first live local replica in placement
//!   order, else the first live replica of any datacenter.
//! - An overwrite or a conditional write (`WriteMode::is_checked`) is
//!   coordinated by one replica only: the first live replica of its key in
//!   the coordinator's datacenter in placement order (else the first live
//!   one of any datacenter), so its check and its dot are one step under
//!   that replica's key lock ([`route_checked`]). Every other node,
//!   replicas included, forwards it there.

use std::collections::BTreeMap;

use crate::model::{Consistency, DcName};
use crate::quorum::QuorumTracker;
use crate::ring::NodeId;
use crate::view::ClusterView;

/// What kind of request the targets are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A read: every answer is counted; nothing goes to pending owners.
    Read,
    /// A write (a client's, or a bridge delivery applied at a local
    /// quorum): pending owners get it too.
    Write,
}

/// The request's setting: everything but the key.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The consistency level asked for.
    pub level: Consistency,
    /// The keyspace's configured replicas per datacenter.
    pub replication: &'a BTreeMap<DcName, u32>,
    /// The coordinator's datacenter.
    pub local_dc: &'a DcName,
    /// Whether a bridge ships this node's writes to the other datacenters.
    pub bridged: bool,
}

/// The replicas a request goes to.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Replicas asked, with their datacenter, in placement order per
    /// datacenter; `tracker` counts their answers.
    pub replicas: Vec<(NodeId, DcName)>,
    /// Pending owners in the coordinator's datacenter that are not already
    /// in `replicas` (writes only): sent the write, never counted.
    pub pending: Vec<NodeId>,
    /// Counts the answers of `replicas` toward the level.
    pub tracker: QuorumTracker,
}

/// Who coordinates a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node: it is a replica of the key in its own datacenter.
    Here,
    /// Forward to this live replica.
    Forward(NodeId),
    /// No replica is alive to take the write.
    Unavailable {
        /// Acknowledgements the level needs.
        required: u32,
    },
}

/// Every replica of the key at `hash`, `(node, dc)`, in placement order per
/// datacenter.
pub fn replicas(
    view: &ClusterView,
    replication: &BTreeMap<DcName, u32>,
    hash: u64,
) -> Vec<(NodeId, DcName)> {
    let mut all = Vec::with_capacity(replication.values().map(|&n| n as usize).sum());
    view.ring.replicas_flat(replication, hash, &mut all);
    all
}

/// Whether `level` is served in the coordinator's datacenter alone (for
/// writes: when a bridge carries them on).
fn stays_local(level: Consistency) -> bool {
    matches!(
        level,
        Consistency::One | Consistency::LocalOne | Consistency::LocalQuorum
    )
}

/// The replicas a request for the key at `hash` goes to, and its tracker.
pub fn targets(op: Operation, scope: &Scope<'_>, view: &ClusterView, hash: u64) -> Targets {
    targets_of(
        op,
        scope,
        view,
        hash,
        replicas(view, scope.replication, hash),
    )
}

/// [`targets`] from `all`, the key's [`replicas`] in `view` (a request
/// walks the ring once for its check, route and targets).
pub fn targets_of(
    op: Operation,
    scope: &Scope<'_>,
    view: &ClusterView,
    hash: u64,
    all: Vec<(NodeId, DcName)>,
) -> Targets {
    let local: Vec<(NodeId, DcName)> = all
        .iter()
        .filter(|(_, dc)| dc == scope.local_dc)
        .cloned()
        .collect();
    let local_alive = local.iter().any(|(n, _)| view.alive.contains(n));
    let only_local = match op {
        Operation::Read => match scope.level {
            Consistency::One => local_alive,
            level => stays_local(level),
        },
        Operation::Write => scope.bridged && stays_local(scope.level),
    };
    let chosen = if only_local { local } else { all };
    let tracker =
        QuorumTracker::for_replication(scope.level, &chosen, scope.local_dc, scope.replication);
    let pending = match op {
        Operation::Read => Vec::new(),
        // Nothing moving in this datacenter: the next ring's replicas
        // are the chosen ones (every local replica is chosen).
        Operation::Write if view.next.same_in_dc(&view.ring, scope.local_dc) => Vec::new(),
        Operation::Write => {
            let local_rf = scope.replication.get(scope.local_dc).copied().unwrap_or(0);
            view.next
                .replicas_in_dc(scope.local_dc, hash, local_rf as usize)
                .into_iter()
                .filter(|p| !chosen.iter().any(|(n, _)| n == p))
                .collect()
        }
    };
    Targets {
        replicas: chosen,
        pending,
        tracker,
    }
}

/// Who coordinates a write of the key at `hash` arriving at node `me`.
pub fn route(scope: &Scope<'_>, view: &ClusterView, hash: u64, me: &NodeId) -> Route {
    route_of(scope, view, &replicas(view, scope.replication, hash), me)
}

/// [`route`] from `all`, the key's [`replicas`] in `view`.
pub fn route_of(
    scope: &Scope<'_>,
    view: &ClusterView,
    all: &[(NodeId, DcName)],
    me: &NodeId,
) -> Route {
    if all.iter().any(|(n, dc)| n == me && dc == scope.local_dc) {
        return Route::Here;
    }
    let alive = |(n, _): &&(NodeId, DcName)| view.alive.contains(n);
    let local = all
        .iter()
        .filter(|(_, dc)| dc == scope.local_dc)
        .find(alive);
    match local.or_else(|| all.iter().find(alive)) {
        Some((node, _)) => Route::Forward(node.clone()),
        None => Route::Unavailable {
            required: QuorumTracker::for_replication(
                scope.level,
                all,
                scope.local_dc,
                scope.replication,
            )
            .required() as u32,
        },
    }
}

/// Who coordinates an overwrite or a conditional write: the first live
/// replica of the key in the coordinator's datacenter, in placement order
/// (else the first live replica of any datacenter), whoever `me` is. Every
/// node with the same view picks the same replica, so the condition is
/// checked, and the dot issued, at one place.
pub fn route_checked(scope: &Scope<'_>, view: &ClusterView, hash: u64, me: &NodeId) -> Route {
    route_checked_of(scope, view, &replicas(view, scope.replication, hash), me)
}

/// [`route_checked`] from `all`, the key's [`replicas`] in `view`.
pub fn route_checked_of(
    scope: &Scope<'_>,
    view: &ClusterView,
    all: &[(NodeId, DcName)],
    me: &NodeId,
) -> Route {
    let alive = |(n, _): &&(NodeId, DcName)| view.alive.contains(n) || n == me;
    let local = all
        .iter()
        .filter(|(_, dc)| dc == scope.local_dc)
        .find(alive);
    match local.or_else(|| all.iter().find(alive)) {
        Some((node, _)) if node == me => Route::Here,
        Some((node, _)) => Route::Forward(node.clone()),
        None => route_of(scope, view, all, me),
    }
}

/// Stand-ins for a sloppy write of the key at `hash` to `replicas`: for
/// each replica, the live node of its datacenter that takes its copy as a
/// hint when it cannot (down, or failing), and counts toward the level in
/// its place. Stand-ins are the nodes further along the datacenter's ring
/// walk than the key's replicas, live ones only, each standing in for one
/// replica at most: the replicas the view holds down get the first of
/// them, in placement order, then the live ones (should they fail), but
/// never `me`, the coordinator, which holds its copy already.
pub fn fallbacks(
    view: &ClusterView,
    hash: u64,
    replicas: &[(NodeId, DcName)],
    me: &NodeId,
) -> BTreeMap<NodeId, NodeId> {
    let mut out = BTreeMap::new();
    let dcs: std::collections::BTreeSet<&DcName> = replicas.iter().map(|(_, dc)| dc).collect();
    for dc in dcs {
        let mut walk = view
            .ring
            .replicas_in_dc(dc, hash, usize::MAX)
            .into_iter()
            .filter(|n| view.alive.contains(n) && !replicas.iter().any(|(r, _)| r == n));
        let in_dc = replicas
            .iter()
            .filter(|(n, d)| d == dc && n != me)
            .map(|(n, _)| n);
        let (down, up): (Vec<&NodeId>, Vec<&NodeId>) =
            in_dc.partition(|n| !view.alive.contains(*n));
        for replica in down.into_iter().chain(up) {
            match walk.next() {
                Some(stand_in) => {
                    out.insert(replica.clone(), stand_in);
                }
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::quorum::Outcome;
    use crate::ring::{Placement, Ring};

    const LEVELS: [Consistency; 6] = Consistency::ALL_LEVELS;

    /// Three nodes in dc1 (a1..a3), three in dc2 (b1..b3), all alive.
    fn view() -> ClusterView {
        let members: Vec<(NodeId, Placement)> = ["a1", "a2", "a3", "b1", "b2", "b3"]
            .iter()
            .map(|id| {
                let dc = if id.starts_with('a') { "dc1" } else { "dc2" };
                (
                    NodeId((*id).to_owned()),
                    Placement {
                        dc: DcName::from(dc),
                        rack: (*id).to_owned(),
                    },
                )
            })
            .collect();
        let ring = Ring::build(members.iter().map(|(id, p)| (id, p, 16)));
        ClusterView {
            alive: members.iter().map(|(id, _)| id.clone()).collect(),
            next: ring.clone(),
            ring,
        }
    }

    fn replication() -> BTreeMap<DcName, u32> {
        BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 3)])
    }

    fn dcs(t: &Targets) -> BTreeSet<String> {
        t.replicas.iter().map(|(_, dc)| dc.0.to_string()).collect()
    }

    fn ack_all(t: &Targets) -> Outcome {
        let mut tracker = t.tracker.clone();
        let mut outcome = tracker.outcome();
        for (n, _) in &t.replicas {
            outcome = tracker.ack(n);
        }
        outcome
    }

    #[test]
    fn levels_a_single_dc_can_win_stay_local_and_the_others_ask_every_dc() {
        let (view, replication, local) = (view(), replication(), DcName::from("dc1"));
        for level in LEVELS {
            for op in [Operation::Read, Operation::Write] {
                let scope = Scope {
                    level,
                    replication: &replication,
                    local_dc: &local,
                    bridged: true,
                };
                let t = targets(op, &scope, &view, 42);
                let expect: BTreeSet<String> = if stays_local(level) {
                    BTreeSet::from(["dc1".to_owned()])
                } else {
                    BTreeSet::from(["dc1".to_owned(), "dc2".to_owned()])
                };
                assert_eq!(dcs(&t), expect, "{level:?} {op:?}");
                assert_eq!(t.replicas.len(), 3 * expect.len(), "{level:?} {op:?}");
                // What is asked can always win the level when all answer.
                assert_eq!(ack_all(&t), Outcome::Won, "{level:?} {op:?}");
                let required = t.tracker.required();
                let expect_required = match level {
                    Consistency::One | Consistency::LocalOne => 1,
                    Consistency::LocalQuorum => 2,
                    Consistency::Quorum => 4,
                    Consistency::EachQuorum => 4,
                    Consistency::All => 6,
                };
                assert_eq!(required, expect_required, "{level:?} {op:?}");
            }
        }
    }

    #[test]
    fn reads_and_writes_agree_on_every_level() {
        let (view, replication, local) = (view(), replication(), DcName::from("dc2"));
        for level in LEVELS {
            let scope = Scope {
                level,
                replication: &replication,
                local_dc: &local,
                bridged: true,
            };
            let read = targets(Operation::Read, &scope, &view, 7);
            let write = targets(Operation::Write, &scope, &view, 7);
            assert_eq!(read.replicas, write.replicas, "{level:?}");
            assert_eq!(read.tracker.required(), write.tracker.required());
        }
    }

    #[test]
    fn without_a_bridge_writes_reach_every_dc_but_reads_stay_local() {
        let (view, replication, local) = (view(), replication(), DcName::from("dc1"));
        for level in [
            Consistency::One,
            Consistency::LocalOne,
            Consistency::LocalQuorum,
        ] {
            let scope = Scope {
                level,
                replication: &replication,
                local_dc: &local,
                bridged: false,
            };
            let write = targets(Operation::Write, &scope, &view, 9);
            assert_eq!(write.replicas.len(), 6, "{level:?}");
            let read = targets(Operation::Read, &scope, &view, 9);
            assert_eq!(dcs(&read), BTreeSet::from(["dc1".to_owned()]));
        }
    }

    #[test]
    fn one_leaves_the_dc_only_when_no_local_replica_is_alive() {
        let (mut view, replication, local) = (view(), replication(), DcName::from("dc1"));
        let scope = |level| Scope {
            level,
            replication: &replication,
            local_dc: &local,
            bridged: true,
        };
        view.alive.retain(|n| !n.0.starts_with('a'));
        let one = targets(Operation::Read, &scope(Consistency::One), &view, 3);
        assert_eq!(one.replicas.len(), 6);
        let local_one = targets(Operation::Read, &scope(Consistency::LocalOne), &view, 3);
        assert_eq!(dcs(&local_one), BTreeSet::from(["dc1".to_owned()]));
        // A write at ONE arriving at a1 (itself a replica) stays here; at a
        // node that is no replica it goes to a live remote replica.
        let a1 = NodeId("a1".into());
        assert_eq!(route(&scope(Consistency::One), &view, 3, &a1), Route::Here);
        let stranger = NodeId("zz".into());
        match route(&scope(Consistency::One), &view, 3, &stranger) {
            Route::Forward(n) => assert!(n.0.starts_with('b'), "{n}"),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    #[test]
    fn quorums_count_the_configured_factor_not_the_view() {
        // A view that knows only one node of dc1 (just restarted).
        let mut view = view();
        let only_a1 = Ring::build(
            [(
                NodeId("a1".into()),
                Placement {
                    dc: "dc1".into(),
                    rack: "r".into(),
                },
            )]
            .iter()
            .map(|(id, p)| (id, p, 16)),
        );
        view.ring = only_a1.clone();
        view.next = only_a1;
        let (replication, local) = (replication(), DcName::from("dc1"));
        let scope = Scope {
            level: Consistency::LocalQuorum,
            replication: &replication,
            local_dc: &local,
            bridged: true,
        };
        let t = targets(Operation::Write, &scope, &view, 11);
        assert_eq!(t.replicas.len(), 1);
        assert_eq!(t.tracker.required(), 2);
        assert_eq!(ack_all(&t), Outcome::Lost);
        // A write arriving at a node that is no replica, with none alive:
        // its unavailability reports the same requirement.
        view.alive.clear();
        assert_eq!(
            route(&scope, &view, 11, &NodeId("zz".into())),
            Route::Unavailable { required: 2 }
        );
    }

    #[test]
    fn pending_owners_get_writes_uncounted_and_no_reads() {
        let mut view = view();
        // The next ring adds a4 to dc1.
        let members: Vec<(NodeId, Placement)> = ["a1", "a2", "a3", "a4", "b1", "b2", "b3"]
            .iter()
            .map(|id| {
                let dc = if id.starts_with('a') { "dc1" } else { "dc2" };
                (
                    NodeId((*id).to_owned()),
                    Placement {
                        dc: dc.into(),
                        rack: (*id).to_owned(),
                    },
                )
            })
            .collect();
        view.next = Ring::build(members.iter().map(|(id, p)| (id, p, 16)));
        let (replication, local) = (replication(), DcName::from("dc1"));
        let scope = Scope {
            level: Consistency::LocalQuorum,
            replication: &replication,
            local_dc: &local,
            bridged: true,
        };
        let a4 = NodeId("a4".into());
        let hash = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .find(|&h| {
                view.next
                    .replicas_in_dc(&local, h, 3)
                    .contains(&NodeId("a4".into()))
            })
            .expect("a4 owns some key");
        let write = targets(Operation::Write, &scope, &view, hash);
        assert_eq!(write.pending, vec![a4.clone()]);
        assert!(!write.replicas.iter().any(|(n, _)| *n == a4));
        let mut tracker = write.tracker.clone();
        assert_eq!(
            tracker.ack(&a4),
            Outcome::Pending,
            "pending acks count for nothing"
        );
        let read = targets(Operation::Read, &scope, &view, hash);
        assert!(read.pending.is_empty());
    }

    #[test]
    fn a_local_replica_coordinates_and_others_forward_locally_first() {
        let (view, replication) = (view(), replication());
        let local = DcName::from("dc1");
        let scope = Scope {
            level: Consistency::LocalQuorum,
            replication: &replication,
            local_dc: &local,
            bridged: true,
        };
        let hash = 1234;
        let reps = replicas(&view, &replication, hash);
        let (first_local, _) = reps.iter().find(|(_, dc)| *dc == local).unwrap();
        assert_eq!(route(&scope, &view, hash, first_local), Route::Here);
        // A node of dc1 that is no replica of this key: dc1 has only three
        // nodes, all replicas, so ask from a stranger.
        let stranger = NodeId("zz".into());
        assert_eq!(
            route(&scope, &view, hash, &stranger),
            Route::Forward(first_local.clone())
        );
        // A dc2 node is a replica in its own DC.
        let (first_remote, _) = reps.iter().find(|(_, dc)| *dc != local).unwrap();
        let scope2 = Scope {
            local_dc: &DcName::from("dc2"),
            ..scope
        };
        assert_eq!(route(&scope2, &view, hash, first_remote), Route::Here);
    }

    #[test]
    fn checked_writes_go_to_the_first_live_local_replica_from_every_node() {
        let (mut view, replication) = (view(), replication());
        let local = DcName::from("dc1");
        let scope = Scope {
            level: Consistency::LocalQuorum,
            replication: &replication,
            local_dc: &local,
            bridged: true,
        };
        let hash = 1234;
        let reps = replicas(&view, &replication, hash);
        let locals: Vec<&NodeId> = reps
            .iter()
            .filter(|(_, dc)| *dc == local)
            .map(|(n, _)| n)
            .collect();
        let (first, second) = (locals[0].clone(), locals[1].clone());
        // Every local replica and a stranger send it to the first one.
        assert_eq!(route_checked(&scope, &view, hash, &first), Route::Here);
        for me in locals[1..].iter().copied().chain([&NodeId("zz".into())]) {
            assert_eq!(
                route_checked(&scope, &view, hash, me),
                Route::Forward(first.clone()),
                "from {me}"
            );
            // A context write stays wherever a local replica received it.
            if me != &NodeId("zz".into()) {
                assert_eq!(route(&scope, &view, hash, me), Route::Here);
            }
        }
        // The first one down: the next in placement order takes over.
        view.alive.remove(&first);
        assert_eq!(route_checked(&scope, &view, hash, &second), Route::Here);
        assert_eq!(
            route_checked(&scope, &view, hash, &NodeId("zz".into())),
            Route::Forward(second.clone())
        );
        // No local replica alive: the first live one of another DC.
        for n in &locals {
            view.alive.remove(*n);
        }
        match route_checked(&scope, &view, hash, &NodeId("zz".into())) {
            Route::Forward(n) => assert!(n.0.starts_with('b'), "{n}"),
            other => panic!("expected a forward to dc2, got {other:?}"),
        }
    }

    /// Five nodes of dc1 on five racks, `down` of them not alive.
    fn five(down: &[&str]) -> ClusterView {
        let members: Vec<(NodeId, Placement)> = ["a1", "a2", "a3", "a4", "a5"]
            .iter()
            .map(|id| {
                let placement = Placement {
                    dc: DcName::from("dc1"),
                    rack: (*id).to_owned(),
                };
                (NodeId((*id).to_owned()), placement)
            })
            .collect();
        let ring = Ring::build(members.iter().map(|(id, p)| (id, p, 16)));
        ClusterView {
            alive: members
                .iter()
                .map(|(id, _)| id.clone())
                .filter(|id| !down.contains(&id.0.as_str()))
                .collect(),
            next: ring.clone(),
            ring,
        }
    }

    #[test]
    fn stand_ins_are_live_non_replicas_further_along_the_ring() {
        let replication = BTreeMap::from([(DcName::from("dc1"), 3)]);
        for hash in [0, 42, u64::MAX / 3, u64::MAX] {
            let all = replicas(&five(&[]), &replication, hash);
            let names: Vec<&str> = all.iter().map(|(n, _)| n.0.as_str()).collect();
            // Two replicas down: each has its own live stand-in, not a
            // replica; the live replica gets none (no node is left).
            let view = five(&names[1..]);
            let me = &all[0].0;
            let stand_ins = fallbacks(&view, hash, &all, me);
            assert_eq!(stand_ins.len(), 2, "{hash}: {stand_ins:?}");
            let mut used = BTreeSet::new();
            for down in &all[1..] {
                let s = &stand_ins[&down.0];
                assert!(view.alive.contains(s), "{s} is down");
                assert!(!all.iter().any(|(n, _)| n == s), "{s} is a replica");
                assert!(used.insert(s.clone()), "{s} stands in twice");
            }
            // In ring order: the walk after the replicas.
            let walk = view.ring.replicas_in_dc(&DcName::from("dc1"), hash, 5);
            let expect: Vec<&NodeId> = walk[3..].iter().collect();
            let got: Vec<&NodeId> = all[1..].iter().map(|(n, _)| &stand_ins[n]).collect();
            assert_eq!(got, expect, "{hash}");
            // Everything up: the replicas in placement order get the two,
            // the coordinator none.
            let stand_ins = fallbacks(&five(&[]), hash, &all, &all[1].0);
            assert_eq!(stand_ins.len(), 2);
            assert!(stand_ins.contains_key(&all[0].0) && stand_ins.contains_key(&all[2].0));
            // Every other node down too: no stand-in at all.
            let others: Vec<&str> = walk[3..].iter().map(|n| n.0.as_str()).collect();
            let mut down = names[1..].to_vec();
            down.extend(others);
            assert!(fallbacks(&five(&down), hash, &all, me).is_empty());
        }
    }
}
