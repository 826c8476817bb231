//! One function per peer request (gossip, repair, bridge batches); the
//! data requests (apply, read, coordinate) are the coordinator's.

use std::time::Duration;

use isthmus_client::wire::{ErrorCode, WireError};

use super::NodeHandler;
use crate::gossip::membership::Endpoint;
use crate::gossip::service::GossipTransport;
use crate::hints::{HintQueue, HintSink};
use crate::model::DcName;
use crate::peer::{PeerRequest, PeerResponse};
use crate::repair::RepairRequest;
use crate::ring::NodeId;
use crate::server::PeerIdentity;
use crate::store::LocalStore;

/// `Gossip`: a push-pull exchange with `from` (the node id its handshake
/// named); answers what the peer lacks.
pub fn gossip<S, T, H>(
    node: &NodeHandler<S, T, H>,
    from: &NodeId,
    digest: &[(NodeId, u64, u64)],
    entries: Vec<Endpoint>,
) -> PeerResponse
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    PeerResponse::Gossip {
        entries: node.gossiper.on_exchange(from, digest, entries),
    }
}

/// `Repair`: one step of a peer's Merkle sync with this replica (its
/// sessions counted against `from`'s share).
pub async fn repair<S, T, H>(
    node: &NodeHandler<S, T, H>,
    from: &NodeId,
    request: RepairRequest,
) -> PeerResponse
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    node.repairer.serve(from, request).await
}

/// `Ship`: a bridge batch from another datacenter, applied at a local
/// quorum of each key's replicas here. The origin it names must be the
/// sender's datacenter as its certificate names it (on a TLS link): a
/// node of one datacenter cannot pass its writes off as another's.
pub async fn ship<S, T, H>(
    node: &NodeHandler<S, T, H>,
    from: &PeerIdentity,
    from_dc: &DcName,
    batch: &[u8],
) -> PeerResponse
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    if let Some(proven) = from.dc.as_ref().filter(|dc| *dc != from_dc) {
        tracing::warn!(node = %from.node, claimed = %from_dc, certificate = %proven, "bridge batch refused: origin is not the sender's datacenter");
        return PeerResponse::Error(WireError {
            code: ErrorCode::Unauthenticated,
            message: format!(
                "a batch from {from_dc} sent by node {} of {proven}",
                from.node
            ),
            acks: None,
            needs: None,
        });
    }
    match node.coordinator.bridge() {
        Some(bridge) => match bridge
            .receive(from_dc, batch, node.coordinator.as_ref())
            .await
        {
            Ok(refused) if refused.is_empty() => PeerResponse::Applied,
            Ok(refused) => PeerResponse::Shipped { refused },
            Err(e) => PeerResponse::Error(e),
        },
        None => PeerResponse::Error(WireError {
            code: ErrorCode::BadRequest,
            message: "this node runs no cross-DC bridge".into(),
            acks: None,
            needs: None,
        }),
    }
}

/// `Apply`, `ApplyBatch`, `Read`, `Coordinate`: the coordinator's.
pub async fn data<S, T, H>(
    node: &NodeHandler<S, T, H>,
    request: PeerRequest,
    deadline: Duration,
) -> PeerResponse
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    node.coordinator.serve_peer(request, deadline).await
}
