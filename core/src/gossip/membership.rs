//! Membership state as gossip spreads it: one [`Endpoint`] per node, and
//! the rule for merging two views of it.
//!
//! Each node owns its own entry and is the only one that changes it. A node
//! bumps `generation` at every start (it is the start time in milliseconds,
//! so it grows across restarts without any stored state) and `heartbeat` on
//! every gossip round. Between two entries for the same node, the one with
//! the greater `(generation, version)` is newer, where `version` grows with
//! every change a node makes to its entry (heartbeat or status). Merging
//! views is therefore a join, like everything else that replicates here.
//!
//! Nothing of an entry that arrives through gossip is applied before
//! [`validate`] has judged it: its bounds (vnodes, how far its generation
//! is ahead of the receiver's clock), and whether the node that sent it
//! may say what it says (an entry claiming to be the receiver, an address
//! or placement change relayed by a third party, a node unknown to the
//! receiver announced by a non-member). A refused entry changes nothing
//! and comes back as a typed [`GossipRejection`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::DcName;
use crate::ring::{NodeId, Placement};

/// A node's lifecycle status as it announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Streaming in the ranges it will own; not yet a read replica.
    Joining,
    /// Owns its ranges.
    Normal,
    /// Streaming its ranges out before leaving the ring.
    Leaving,
    /// Has left; kept so that the departure spreads.
    Left,
}

/// What gossip knows of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The node.
    pub id: NodeId,
    /// `host:port` it serves on.
    pub addr: String,
    /// Datacenter and rack.
    pub placement: Placement,
    /// Tokens it takes on its datacenter's ring.
    pub vnodes: u32,
    /// Start time of the incarnation, in Unix milliseconds.
    pub generation: u64,
    /// Grows with every change the node makes to this entry.
    pub version: u64,
    /// Lifecycle status.
    pub status: NodeStatus,
    /// Bytes of data on its disk, refreshed every round.
    pub load_bytes: u64,
}

impl Endpoint {
    /// Is `self` a newer view of the same node than `other`?
    pub fn supersedes(&self, other: &Endpoint) -> bool {
        (self.generation, self.version) > (other.generation, other.version)
    }

    /// The node's datacenter.
    pub fn dc(&self) -> &DcName {
        &self.placement.dc
    }
}

/// One node's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    endpoints: BTreeMap<NodeId, Endpoint>,
}

impl Membership {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every known endpoint, by node id.
    pub fn endpoints(&self) -> &BTreeMap<NodeId, Endpoint> {
        &self.endpoints
    }

    /// The entry for `id`, if known.
    pub fn get(&self, id: &NodeId) -> Option<&Endpoint> {
        self.endpoints.get(id)
    }

    /// Take `entry` if it is newer than what is known; returns whether the
    /// view changed.
    pub fn observe(&mut self, entry: Endpoint) -> bool {
        match self.endpoints.get(&entry.id) {
            Some(known) if !entry.supersedes(known) => false,
            _ => {
                self.endpoints.insert(entry.id.clone(), entry);
                true
            }
        }
    }

    /// Join another view into this one; returns the ids whose entry changed.
    pub fn merge(&mut self, other: &Membership) -> Vec<NodeId> {
        other
            .endpoints
            .values()
            .filter(|e| self.observe((*e).clone()))
            .map(|e| e.id.clone())
            .collect()
    }

    /// A digest of the view: `(id, generation, version)` per node, what a
    /// gossip round sends first so that only newer entries travel.
    pub fn digest(&self) -> Vec<(NodeId, u64, u64)> {
        self.endpoints
            .values()
            .map(|e| (e.id.clone(), e.generation, e.version))
            .collect()
    }

    /// Entries of ours newer than what `digest` says the peer has.
    pub fn newer_than(&self, digest: &[(NodeId, u64, u64)]) -> Vec<Endpoint> {
        let theirs: BTreeMap<&NodeId, (u64, u64)> =
            digest.iter().map(|(id, g, v)| (id, (*g, *v))).collect();
        self.endpoints
            .values()
            .filter(|e| {
                theirs
                    .get(&e.id)
                    .is_none_or(|&gv| (e.generation, e.version) > gv)
            })
            .cloned()
            .collect()
    }
}

/// The bounds every gossip entry must keep to, whoever sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryBounds {
    /// Most vnodes an entry may claim (a node builds its rings from every
    /// entry's vnodes, under its state lock).
    pub vnodes_max: u32,
    /// How far, in milliseconds, a generation may be ahead of the
    /// receiver's wall clock (generations are start times, and a
    /// generation far in the future could never be superseded).
    pub generation_skew_max_ms: u64,
}

/// What the receiver brings to the judgement of an entry.
#[derive(Clone, Copy, Debug)]
pub struct Receiver<'a> {
    /// The receiving node.
    pub me: &'a NodeId,
    /// Its wall clock, in Unix milliseconds.
    pub now_ms: u64,
    /// The bounds it enforces.
    pub bounds: EntryBounds,
}

/// Who sent the entries being judged.
#[derive(Clone, Copy, Debug)]
pub struct Sender<'a> {
    /// The node at the other end of the exchange: the id its handshake
    /// named (the node that called us, the node we called, or the seed
    /// that answered). Until connections are authenticated by
    /// certificate, this is the id the peer claims.
    pub id: &'a NodeId,
    /// Whether it may tell the receiver about nodes the receiver does not
    /// know: it was a member of the receiver's view before this exchange
    /// (known and not `Left`), or it is a seed the receiver chose to ask.
    pub member: bool,
}

/// Why a gossip entry was refused. A refused entry changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GossipRejection {
    /// Its vnodes are outside `1..=max`.
    #[error("entry for {node} claims {vnodes} vnodes, outside 1..={max}")]
    VnodesOutOfBounds {
        /// The node the entry is about.
        node: NodeId,
        /// The vnodes it claims.
        vnodes: u32,
        /// The receiver's bound.
        max: u32,
    },
    /// Its generation is further ahead of the receiver's clock than the
    /// skew bound.
    #[error(
        "entry for {node} has generation {generation}, more than {skew_max_ms} ms ahead of {now_ms}"
    )]
    GenerationAhead {
        /// The node the entry is about.
        node: NodeId,
        /// The generation it claims.
        generation: u64,
        /// The receiver's clock.
        now_ms: u64,
        /// The receiver's skew bound.
        skew_max_ms: u64,
    },
    /// Another node sent an entry for the receiver itself that is not an
    /// older copy of its own: only a node writes its own entry.
    #[error("{from} sent an entry for the receiver {node} that is not a copy of its own")]
    ClaimsReceiver {
        /// The receiver.
        node: NodeId,
        /// The sender.
        from: NodeId,
    },
    /// A third party relayed a new address for a known node: an address
    /// change is taken only from the node itself.
    #[error("{from} relayed a new address {claimed:?} for {node} (known at {known:?})")]
    AddressFromThirdParty {
        /// The node the entry is about.
        node: NodeId,
        /// The sender.
        from: NodeId,
        /// The address the receiver knows.
        known: String,
        /// The address the entry claims.
        claimed: String,
    },
    /// A third party relayed a new datacenter or rack for a known node: a
    /// placement change is taken only from the node itself.
    #[error("{from} relayed a new placement {claimed:?} for {node} (known in {known:?})")]
    PlacementFromThirdParty {
        /// The node the entry is about.
        node: NodeId,
        /// The sender.
        from: NodeId,
        /// The placement the receiver knows.
        known: Box<Placement>,
        /// The placement the entry claims.
        claimed: Box<Placement>,
    },
    /// A sender that is not a member told of a node the receiver does not
    /// know: a non-member may announce only itself.
    #[error("{from}, not a member, announced the unknown node {node}")]
    UnknownFromNonMember {
        /// The node the entry is about.
        node: NodeId,
        /// The sender.
        from: NodeId,
    },
}

/// The kinds of [`GossipRejection`], for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectionKind {
    /// [`GossipRejection::VnodesOutOfBounds`].
    VnodesOutOfBounds,
    /// [`GossipRejection::GenerationAhead`].
    GenerationAhead,
    /// [`GossipRejection::ClaimsReceiver`].
    ClaimsReceiver,
    /// [`GossipRejection::AddressFromThirdParty`].
    AddressFromThirdParty,
    /// [`GossipRejection::PlacementFromThirdParty`].
    PlacementFromThirdParty,
    /// [`GossipRejection::UnknownFromNonMember`].
    UnknownFromNonMember,
}

impl RejectionKind {
    /// Every kind, in a fixed order.
    pub const ALL: [RejectionKind; 6] = [
        RejectionKind::VnodesOutOfBounds,
        RejectionKind::GenerationAhead,
        RejectionKind::ClaimsReceiver,
        RejectionKind::AddressFromThirdParty,
        RejectionKind::PlacementFromThirdParty,
        RejectionKind::UnknownFromNonMember,
    ];

    /// A short stable name (for logs and metrics).
    pub fn name(self) -> &'static str {
        match self {
            RejectionKind::VnodesOutOfBounds => "vnodes_out_of_bounds",
            RejectionKind::GenerationAhead => "generation_ahead",
            RejectionKind::ClaimsReceiver => "claims_receiver",
            RejectionKind::AddressFromThirdParty => "address_from_third_party",
            RejectionKind::PlacementFromThirdParty => "placement_from_third_party",
            RejectionKind::UnknownFromNonMember => "unknown_from_non_member",
        }
    }
}

impl GossipRejection {
    /// Its kind.
    pub fn kind(&self) -> RejectionKind {
        match self {
            GossipRejection::VnodesOutOfBounds { .. } => RejectionKind::VnodesOutOfBounds,
            GossipRejection::GenerationAhead { .. } => RejectionKind::GenerationAhead,
            GossipRejection::ClaimsReceiver { .. } => RejectionKind::ClaimsReceiver,
            GossipRejection::AddressFromThirdParty { .. } => RejectionKind::AddressFromThirdParty,
            GossipRejection::PlacementFromThirdParty { .. } => {
                RejectionKind::PlacementFromThirdParty
            }
            GossipRejection::UnknownFromNonMember { .. } => RejectionKind::UnknownFromNonMember,
        }
    }
}

/// Judge `entry`, sent by `from`, against the receiver's `view`, before
/// any field of it is applied. Pure: no IO, the clock passed in.
///
/// - Bounds, whatever the entry's age: vnodes within
///   `1..=bounds.vnodes_max`; a generation at most
///   `bounds.generation_skew_max_ms` ahead of `receiver.now_ms`.
/// - An entry for the receiver is accepted (and then ignored: only a node
///   writes its own entry) only as a copy of its own entry or an older
///   one; anything else is someone speaking for it.
/// - A newer entry for a known node that changes its address or placement
///   is accepted only from that node itself. (Older entries are not
///   judged on this: they are not applied, and stale copies with an old
///   address are ordinary after a node moved.)
/// - An entry for a node the receiver does not know is accepted from the
///   node itself, or from a member.
pub fn validate(
    entry: &Endpoint,
    view: &Membership,
    receiver: &Receiver<'_>,
    from: &Sender<'_>,
) -> Result<(), GossipRejection> {
    let bounds = &receiver.bounds;
    if entry.vnodes == 0 || entry.vnodes > bounds.vnodes_max {
        return Err(GossipRejection::VnodesOutOfBounds {
            node: entry.id.clone(),
            vnodes: entry.vnodes,
            max: bounds.vnodes_max,
        });
    }
    if entry.generation
        > receiver
            .now_ms
            .saturating_add(bounds.generation_skew_max_ms)
    {
        return Err(GossipRejection::GenerationAhead {
            node: entry.id.clone(),
            generation: entry.generation,
            now_ms: receiver.now_ms,
            skew_max_ms: bounds.generation_skew_max_ms,
        });
    }
    let known = view.get(&entry.id);
    if entry.id == *receiver.me {
        return match known {
            Some(own) if own == entry || own.supersedes(entry) => Ok(()),
            _ => Err(GossipRejection::ClaimsReceiver {
                node: entry.id.clone(),
                from: from.id.clone(),
            }),
        };
    }
    let by_itself = entry.id == *from.id;
    match known {
        Some(known) if !by_itself && entry.supersedes(known) => {
            if entry.addr != known.addr {
                return Err(GossipRejection::AddressFromThirdParty {
                    node: entry.id.clone(),
                    from: from.id.clone(),
                    known: known.addr.clone(),
                    claimed: entry.addr.clone(),
                });
            }
            if entry.placement != known.placement {
                return Err(GossipRejection::PlacementFromThirdParty {
                    node: entry.id.clone(),
                    from: from.id.clone(),
                    known: Box::new(known.placement.clone()),
                    claimed: Box::new(entry.placement.clone()),
                });
            }
            Ok(())
        }
        None if !by_itself && !from.member => Err(GossipRejection::UnknownFromNonMember {
            node: entry.id.clone(),
            from: from.id.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, generation: u64, version: u64, status: NodeStatus) -> Endpoint {
        Endpoint {
            id: NodeId(id.into()),
            addr: format!("127.0.0.1:{}", 7000 + id.len()),
            placement: Placement {
                dc: "dc1".into(),
                rack: "r1".into(),
            },
            vnodes: 16,
            generation,
            version,
            status,
            load_bytes: 0,
        }
    }

    const NOW_MS: u64 = 1_700_000_000_000;

    fn judge(
        entry: &Endpoint,
        view: &Membership,
        from: &str,
        member: bool,
    ) -> Result<(), RejectionKind> {
        let me = NodeId("me".into());
        let receiver = Receiver {
            me: &me,
            now_ms: NOW_MS,
            bounds: EntryBounds {
                vnodes_max: 4096,
                generation_skew_max_ms: 300_000,
            },
        };
        let from = NodeId(from.into());
        let sender = Sender { id: &from, member };
        validate(entry, view, &receiver, &sender).map_err(|r| r.kind())
    }

    /// A view of `me`, `a` and `b`, all at generation `NOW_MS - 1000`.
    fn view() -> Membership {
        let mut m = Membership::new();
        for id in ["me", "a", "b"] {
            m.observe(ep(id, NOW_MS - 1000, 5, NodeStatus::Normal));
        }
        m
    }

    #[test]
    fn validate_refuses_entries_out_of_bounds_whoever_sends_them() {
        let m = view();
        let mut huge = ep("a", NOW_MS, 1, NodeStatus::Normal);
        huge.vnodes = u32::MAX;
        let mut none = huge.clone();
        none.vnodes = 0;
        let forever = ep("a", u64::MAX, 1, NodeStatus::Left);
        let ahead = ep("a", NOW_MS + 300_001, 1, NodeStatus::Normal);
        for from in ["a", "b"] {
            for (entry, kind) in [
                (&huge, RejectionKind::VnodesOutOfBounds),
                (&none, RejectionKind::VnodesOutOfBounds),
                (&forever, RejectionKind::GenerationAhead),
                (&ahead, RejectionKind::GenerationAhead),
            ] {
                assert_eq!(judge(entry, &m, from, true), Err(kind), "from {from}");
            }
        }
        // At the bounds: taken.
        let mut edge = ep("a", NOW_MS + 300_000, 1, NodeStatus::Normal);
        edge.vnodes = 4096;
        assert_eq!(judge(&edge, &m, "b", true), Ok(()));
    }

    #[test]
    fn validate_refuses_an_entry_for_the_receiver_unless_it_is_a_copy_of_its_own() {
        let m = view();
        let own = m.get(&NodeId("me".into())).unwrap().clone();
        assert_eq!(judge(&own, &m, "a", true), Ok(()));
        let older = ep("me", NOW_MS - 1000, 4, NodeStatus::Normal);
        assert_eq!(judge(&older, &m, "a", true), Ok(()));
        let newer = ep("me", NOW_MS - 1000, 6, NodeStatus::Left);
        assert_eq!(
            judge(&newer, &m, "a", true),
            Err(RejectionKind::ClaimsReceiver)
        );
        let mut forged = own.clone();
        forged.status = NodeStatus::Left;
        assert_eq!(
            judge(&forged, &m, "a", true),
            Err(RejectionKind::ClaimsReceiver)
        );
    }

    #[test]
    fn validate_takes_an_address_or_placement_change_only_from_the_node_itself() {
        let m = view();
        let mut moved = ep("a", NOW_MS, 1, NodeStatus::Normal);
        moved.addr = "10.0.0.9:7000".into();
        assert_eq!(
            judge(&moved, &m, "b", true),
            Err(RejectionKind::AddressFromThirdParty)
        );
        assert_eq!(judge(&moved, &m, "a", true), Ok(()));
        let mut other_dc = ep("a", NOW_MS, 1, NodeStatus::Normal);
        other_dc.placement.dc = "dc2".into();
        assert_eq!(
            judge(&other_dc, &m, "b", true),
            Err(RejectionKind::PlacementFromThirdParty)
        );
        assert_eq!(judge(&other_dc, &m, "a", true), Ok(()));
        // A stale copy with an old address is not applied, and not a
        // refusal: it is what third parties hold after a node moved.
        let mut stale = ep("a", NOW_MS - 2000, 9, NodeStatus::Normal);
        stale.addr = "10.0.0.1:7000".into();
        assert_eq!(judge(&stale, &m, "b", true), Ok(()));
        // A restart (new generation) at the same address, relayed: taken.
        let restarted = ep("a", NOW_MS + 1000, 1, NodeStatus::Joining);
        assert_eq!(judge(&restarted, &m, "b", true), Ok(()));
        // A DNS name is an address like any other: a third party cannot
        // swap a node's IP for a name, nor its name for another.
        let mut named = ep("a", NOW_MS, 1, NodeStatus::Normal);
        named.addr = "a.isthmus.dc1.svc:7000".into();
        assert_eq!(
            judge(&named, &m, "b", true),
            Err(RejectionKind::AddressFromThirdParty)
        );
        assert_eq!(judge(&named, &m, "a", true), Ok(()));
        let mut by_name = Membership::new();
        by_name.observe(named.clone());
        let mut renamed = named.clone();
        renamed.version += 1;
        renamed.addr = "evil.example:7000".into();
        assert_eq!(
            judge(&renamed, &by_name, "b", true),
            Err(RejectionKind::AddressFromThirdParty)
        );
        // A pod restarted at a new IP keeps its name: its new incarnation,
        // relayed, changes no address and is taken.
        let mut back = named.clone();
        back.generation += 5000;
        assert_eq!(judge(&back, &by_name, "b", true), Ok(()));
    }

    #[test]
    fn validate_takes_unknown_nodes_from_members_or_from_themselves() {
        let m = view();
        let stranger = ep("c", NOW_MS, 1, NodeStatus::Normal);
        assert_eq!(judge(&stranger, &m, "c", false), Ok(()));
        assert_eq!(judge(&stranger, &m, "a", true), Ok(()));
        assert_eq!(
            judge(&stranger, &m, "d", false),
            Err(RejectionKind::UnknownFromNonMember)
        );
    }

    #[test]
    fn newer_generation_wins_over_higher_version() {
        let mut m = Membership::new();
        assert!(m.observe(ep("a", 1, 50, NodeStatus::Normal)));
        assert!(!m.observe(ep("a", 1, 49, NodeStatus::Leaving)));
        assert!(m.observe(ep("a", 2, 1, NodeStatus::Joining)));
        assert_eq!(
            m.get(&NodeId("a".into())).unwrap().status,
            NodeStatus::Joining
        );
    }

    #[test]
    fn merge_is_order_insensitive_and_digests_select_newer_entries() {
        let x = [
            ep("a", 1, 3, NodeStatus::Normal),
            ep("b", 1, 1, NodeStatus::Normal),
        ];
        let y = [
            ep("a", 1, 2, NodeStatus::Normal),
            ep("b", 2, 1, NodeStatus::Normal),
            ep("c", 1, 1, NodeStatus::Joining),
        ];
        let (mut m1, mut m2) = (Membership::new(), Membership::new());
        x.iter().chain(y.iter()).for_each(|e| {
            m1.observe(e.clone());
        });
        y.iter().chain(x.iter()).rev().for_each(|e| {
            m2.observe(e.clone());
        });
        assert_eq!(m1, m2);
        let mut old = Membership::new();
        x.iter().for_each(|e| {
            old.observe(e.clone());
        });
        let newer: Vec<_> = m1
            .newer_than(&old.digest())
            .into_iter()
            .map(|e| e.id.0)
            .collect();
        assert_eq!(newer, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(old.merge(&m1), vec![NodeId("b".into()), NodeId("c".into())]);
        assert_eq!(old, m1);
    }
}
