//! The client's placement walk against the node's ring: a client that
//! learned the members lists every key's replicas in the order the nodes
//! themselves do, in every datacenter, at every replication factor.

use isthmus_client::placement::{Member, Rings};
use isthmus_core::model::{DcName, key_hash};
use isthmus_core::ring::{NodeId, Placement, Ring};

#[test]
fn the_clients_replica_order_is_the_rings() {
    // Two DCs, uneven racks and vnodes, ids that sort apart from their
    // insertion order.
    let members: Vec<Member> = [
        ("n5", "dc1", "r1", 16),
        ("n1", "dc1", "r1", 8),
        ("n3", "dc1", "r2", 16),
        ("n2", "dc1", "r3", 32),
        ("n4", "dc1", "r2", 16),
        ("m1", "dc2", "x", 16),
        ("m2", "dc2", "x", 4),
        ("m3", "dc2", "y", 16),
    ]
    .into_iter()
    .map(|(id, dc, rack, vnodes)| Member {
        node_id: id.into(),
        dc: dc.into(),
        rack: rack.into(),
        vnodes,
    })
    .collect();
    let placed: Vec<(NodeId, Placement, u32)> = members
        .iter()
        .map(|m| {
            (
                NodeId(m.node_id.clone()),
                Placement {
                    dc: DcName::from(m.dc.as_str()),
                    rack: m.rack.clone(),
                },
                m.vnodes,
            )
        })
        .collect();
    let ring = Ring::build(placed.iter().map(|(n, p, v)| (n, p, *v)));
    let rings = Rings::build(members.clone());
    let mut compared = 0;
    for i in 0..2_000u32 {
        let key = format!("key-{i}");
        for (dc, nodes) in [("dc1", 5), ("dc2", 3)] {
            for rf in 1..=nodes {
                let server: Vec<String> = ring
                    .replicas_in_dc(&DcName(dc.into()), key_hash(key.as_bytes()), rf)
                    .into_iter()
                    .map(|n| n.0)
                    .collect();
                assert_eq!(
                    rings.walk(dc, key.as_bytes(), rf),
                    server,
                    "{dc} rf {rf} key {key}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 2_000 * 8);
}
