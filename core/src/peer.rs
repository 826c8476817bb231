//! The node-to-node protocol: what one node asks of another.
//!
//! Peers speak over the same framed connections as clients (handshake with
//! role [`PeerRole::Node`](isthmus_client::wire::PeerRole::Node)), in
//! [`Envelope`](isthmus_client::wire::Envelope)s of [`PeerRequest`] answered
//! by [`Reply`](isthmus_client::wire::Reply)s of [`PeerResponse`]. Every
//! write between nodes carries whole versions with their clocks, so
//! applying one twice, or out of order, changes nothing (absorb is a join).

use isthmus_client::wire::{ReplyBody, WireError};
use serde::{Deserialize, Serialize};

use crate::gossip::membership::Endpoint;
use crate::model::{Clock, Consistency, Version, VersionSet};
use crate::repair::exchange::{RepairRequest, RepairResponse};
use crate::ring::NodeId;

/// A request from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Absorb `versions` into the key's set (replica write, read repair,
    /// hint replay). With `hint_for`, the receiver is standing in for that
    /// node (sloppy quorum): it keeps the versions as a durable hint to
    /// hand over when that node returns, apart from its own data.
    Apply {
        /// Keyspace name.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Versions to absorb.
        versions: Vec<Version>,
        /// The intended replica, when this is a hinted write.
        hint_for: Option<NodeId>,
    },
    /// Absorb the versions of many keys of one keyspace (a bridge batch
    /// delivered to this DC's replicas): one engine batch, one answer.
    ApplyBatch {
        /// Keyspace name.
        keyspace: String,
        /// Keys and the versions each must absorb.
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    },
    /// Return the local version set of a key.
    Read {
        /// Keyspace name.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Coordinate a client write (the receiver must be a replica of the
    /// key: write dots are issued by replicas, from the key's own history,
    /// so that each actor's counters for a key stay contiguous).
    Coordinate {
        /// Keyspace name.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value, or `None` for a delete.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// The causal context the client wrote over.
        context: Clock,
        /// The client's retry identity.
        write_id: [u8; 16],
        /// Level to reach.
        consistency: Consistency,
        /// Overwrite or condition (the receiver then checks it under the
        /// key's lock).
        mode: isthmus_client::wire::WriteMode,
        /// A sloppy or a strict quorum; `None`: the keyspace's default.
        sloppy: Option<bool>,
        /// When the value expires, as the first node the write reached
        /// resolved it (an absolute time, never, or `Keep`).
        expiry: isthmus_client::wire::Expiry,
    },
    /// A batch of writes from the bridge of a node in `from_dc`: an
    /// lz4-compressed, postcard-encoded list of records (the bridge's
    /// format). The receiver applies every version at LOCAL_QUORUM in its
    /// DC and answers [`PeerResponse::Applied`] once all are, or
    /// [`PeerResponse::Shipped`] once all but those it refused for good
    /// are.
    Ship {
        /// The sender's datacenter.
        from_dc: crate::model::DcName,
        /// The compressed batch.
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// One gossip exchange: the sender's own entry, a digest of its view,
    /// and the entries it believes the receiver lacks.
    Gossip {
        /// Digest `(node, generation, version)` of the sender's view.
        digest: Vec<(NodeId, u64, u64)>,
        /// Entries newer than what the sender believes the receiver holds.
        entries: Vec<Endpoint>,
    },
    /// One step of a Merkle repair exchange (see [`crate::repair`]).
    Repair(RepairRequest),
    /// One stretch of a client's scan, from a replica of it: the live keys
    /// of `keyspace` hashed in `from..=to`, at most `count` keys and
    /// `bytes_max` bytes of them (see
    /// [`LocalStore::scan_keys`](crate::store::LocalStore::scan_keys)),
    /// answered [`PeerResponse::ScanPart`]. (Appended last: variants are
    /// encoded by position.)
    Scan {
        /// Keyspace name.
        keyspace: String,
        /// First key hash.
        from: u64,
        /// Last key hash.
        to: u64,
        /// Keys at most, `1..=`[`SCAN_COUNT_MAX`](isthmus_client::wire::SCAN_COUNT_MAX).
        count: u32,
        /// Bytes of keys at most, up to
        /// [`SCAN_PAGE_BYTES_MAX`](crate::limit::SCAN_PAGE_BYTES_MAX).
        bytes_max: u32,
    },
}

/// A node's answer to a [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The versions were absorbed (or stored as a hint) durably, per the
    /// receiver's fsync policy.
    Applied,
    /// A coordinated write reached its level.
    Written,
    /// The local set of the key asked for.
    Versions(VersionSet),
    /// Entries the receiver holds newer than the sender's digest.
    Gossip {
        /// Newer entries.
        entries: Vec<Endpoint>,
    },
    /// The request failed.
    Error(WireError),
    /// The answer to a [`PeerRequest::Repair`].
    Repair(RepairResponse),
    /// A [`PeerRequest::Ship`] batch was applied at LOCAL_QUORUM except
    /// for the items refused for a reason retrying cannot change (see
    /// [`crate::bridge::is_permanent`]). (Appended last: variants are
    /// encoded by position; a batch with no refusal is answered
    /// [`PeerResponse::Applied`], as before.)
    Shipped {
        /// The refused items, by position in the batch.
        refused: Vec<ShipRefusal>,
    },
    /// A forwarded conditional write's condition did not hold: the key's
    /// set at the replica that checked it. (Appended last.)
    ConditionFailed(VersionSet),
    /// The answer to a [`PeerRequest::Scan`]. (Appended last.)
    ScanPart {
        /// Live keys, in hash order.
        keys: Vec<Vec<u8>>,
        /// The first hash not read, or `None` when the stretch was read
        /// through `to`.
        next: Option<u64>,
    },
    /// A forwarded addition to a counter reached its level: the counter's
    /// value where it was added. (Appended last.)
    Counted(i64),
}

/// One item of a bridge batch the receiving datacenter refused for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipRefusal {
    /// Its position among the batch's items.
    pub item: u32,
    /// Why (code and message, as the receiver's coordinator gave them).
    pub error: WireError,
}

impl ReplyBody for PeerResponse {
    fn from_error(error: WireError) -> Self {
        PeerResponse::Error(error)
    }

    fn into_result(self) -> Result<Self, WireError> {
        match self {
            PeerResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot};
    use isthmus_client::wire::{Envelope, decode, encode};

    #[test]
    fn peer_messages_round_trip_through_the_guarded_decoder() {
        let mut clock = Clock::new();
        clock.add_dot(Dot {
            actor: Actor(3),
            counter: 1,
        });
        let request = Envelope {
            id: 9,
            timeout_ms: 100,
            deadline_ms: 0,
            body: PeerRequest::Apply {
                keyspace: "carts".into(),
                key: b"k".to_vec(),
                versions: vec![Version::value(clock, b"v".to_vec(), 5, "dc1".into())],
                hint_for: Some(NodeId("n2".into())),
            },
        };
        assert_eq!(
            decode::<Envelope<PeerRequest>>(&encode(&request)).unwrap(),
            request
        );
        let mut bytes = encode(&request);
        bytes.truncate(bytes.len() - 1);
        assert!(decode::<Envelope<PeerRequest>>(&bytes).is_err());
    }
}
