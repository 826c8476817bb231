//! The two hash functions placement rests on, shared by nodes and clients
//! so that a client can send each request straight to a replica.
//!
//! Both are xxh3-64; changing either moves every key, so they are fixed
//! for the life of a cluster.

/// A key's 64-bit position on the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The ring positions (tokens) of a node: `xxh3(node_id ‖ i as u32 BE)`
/// for `i in 0..vnodes`. Deterministic, so every member and every client
/// derives the same ring from the membership alone.
pub fn tokens_for(node_id: &str, vnodes: u32) -> Vec<u64> {
    (0..vnodes)
        .map(|i| {
            let mut buf = Vec::with_capacity(node_id.len() + 4);
            buf.extend_from_slice(node_id.as_bytes());
            buf.extend_from_slice(&i.to_be_bytes());
            xxhash_rust::xxh3::xxh3_64(&buf)
        })
        .collect()
}

/// The owner of a key's primary token in a datacenter: the node whose
/// token is the first at or after the key's hash (wrapping). It is always
/// the first replica of the key's replica walk in that datacenter, so a
/// client that sends a request there saves the coordinator a forward.
/// `tokens` must be sorted by token.
pub fn primary<'a, N>(tokens: &'a [(u64, N)], key: &[u8]) -> Option<&'a N> {
    if tokens.is_empty() {
        return None;
    }
    let hash = key_hash(key);
    let i = tokens.partition_point(|(t, _)| *t < hash) % tokens.len();
    Some(&tokens[i].1)
}

/// The replica walk of one datacenter's ring, shared by nodes and clients
/// so that both list a key's replicas in the same order: from the first
/// token at or after `hash`, clockwise, taking distinct nodes, and nodes
/// on racks not yet used first (as Cassandra's NetworkTopologyStrategy
/// does); a node passed over for its rack comes back, in walk order, once
/// every rack holds one. At most `count` node indices (fewer when the ring
/// has fewer nodes). A shorter walk is a prefix of a longer one, so the
/// first `rf` of a walk over every node are the key's replicas and the
/// rest are the nodes further along the ring, in the order a fallback
/// would take them.
///
/// `tokens` is `(token, node index)` sorted by token (ties by node id);
/// `rack_of(i)` is node `i`'s rack, for `i < nodes`, and `racks` the
/// number of distinct racks among them ([`rack_count`]).
pub fn replica_walk<'r>(
    tokens: &[(u64, usize)],
    nodes: usize,
    racks: usize,
    rack_of: impl Fn(usize) -> &'r str,
    hash: u64,
    count: usize,
) -> Vec<usize> {
    if tokens.is_empty() || count == 0 || nodes == 0 {
        return Vec::new();
    }
    let count = count.min(nodes);
    let start = tokens.partition_point(|&(t, _)| t < hash);
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    if racks <= 1 {
        // One rack: distinct nodes in walk order.
        for step in 0..tokens.len() {
            if chosen.len() == count {
                break;
            }
            let (_, node) = tokens[(start + step) % tokens.len()];
            if !chosen.contains(&node) {
                chosen.push(node);
            }
        }
        return chosen;
    }
    let mut skipped: Vec<usize> = Vec::new();
    // At most one entry per rack, and few racks: a list beats a tree.
    let mut racks_used: Vec<&str> = Vec::with_capacity(racks.min(count));
    for step in 0..tokens.len() {
        if chosen.len() == count {
            break;
        }
        let (_, node) = tokens[(start + step) % tokens.len()];
        if chosen.contains(&node) || skipped.contains(&node) {
            continue;
        }
        let rack = rack_of(node);
        let used = racks_used.contains(&rack);
        if racks_used.len() < racks && used {
            // Rack already holds a replica while others hold none: keep
            // this node for later, in walk order.
            skipped.push(node);
            continue;
        }
        if !used {
            racks_used.push(rack);
        }
        chosen.push(node);
        if racks_used.len() == racks {
            // Every rack used: the nodes passed over come next, in order.
            while chosen.len() < count && !skipped.is_empty() {
                chosen.push(skipped.remove(0));
            }
        }
    }
    chosen
}

/// The number of distinct racks among `racks` (what [`replica_walk`]
/// takes; a ring computes it once, when built).
pub fn rack_count<'r>(racks: impl IntoIterator<Item = &'r str>) -> usize {
    racks
        .into_iter()
        .collect::<std::collections::BTreeSet<&str>>()
        .len()
}

/// A member as placement needs it: id, datacenter, rack, vnodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's id (its tokens derive from it).
    pub node_id: String,
    /// Its datacenter.
    pub dc: String,
    /// Its rack.
    pub rack: String,
    /// Its number of tokens.
    pub vnodes: u32,
}

/// Every datacenter's ring, built from the members that own ranges, as
/// the client learns them from a node's status; [`Rings::walk`] lists a
/// key's nodes in the order the nodes' own ring (`isthmus_core::ring`)
/// lists its replicas.
#[derive(Clone, Debug, Default)]
pub struct Rings {
    dcs: std::collections::BTreeMap<String, DcRing>,
}

#[derive(Clone, Debug, Default)]
struct DcRing {
    /// (token, index into `nodes`), sorted by token, ties by node id.
    tokens: Vec<(u64, usize)>,
    /// (node id, rack).
    nodes: Vec<(String, String)>,
    /// Distinct racks among `nodes`.
    racks: usize,
}

impl Rings {
    /// Build the rings of `members` (those that own ranges).
    pub fn build(members: impl IntoIterator<Item = Member>) -> Rings {
        let mut dcs: std::collections::BTreeMap<String, DcRing> = Default::default();
        for m in members {
            let ring = dcs.entry(m.dc).or_default();
            let index = ring.nodes.len();
            ring.tokens.extend(
                tokens_for(&m.node_id, m.vnodes)
                    .into_iter()
                    .map(|t| (t, index)),
            );
            ring.nodes.push((m.node_id, m.rack));
        }
        for ring in dcs.values_mut() {
            let nodes = &ring.nodes;
            ring.tokens
                .sort_by(|a, b| a.0.cmp(&b.0).then_with(|| nodes[a.1].0.cmp(&nodes[b.1].0)));
            ring.racks = rack_count(nodes.iter().map(|(_, rack)| rack.as_str()));
        }
        Rings { dcs }
    }

    /// The datacenters with at least one node, by name.
    pub fn dcs(&self) -> impl Iterator<Item = &str> {
        self.dcs.keys().map(String::as_str)
    }

    /// The first `count` nodes (ids) of `key`'s replica walk in `dc`.
    pub fn walk(&self, dc: &str, key: &[u8], count: usize) -> Vec<&str> {
        let Some(ring) = self.dcs.get(dc) else {
            return Vec::new();
        };
        replica_walk(
            &ring.tokens,
            ring.nodes.len(),
            ring.racks,
            |i| ring.nodes[i].1.as_str(),
            key_hash(key),
            count,
        )
        .into_iter()
        .map(|i| ring.nodes[i].0.as_str())
        .collect()
    }

    /// Every node of `dc` in `key`'s walk order: its replicas first.
    pub fn walk_all(&self, dc: &str, key: &[u8]) -> Vec<&str> {
        self.walk(dc, key, usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, rack: &str) -> Member {
        Member {
            node_id: id.into(),
            dc: "dc1".into(),
            rack: rack.into(),
            vnodes: 16,
        }
    }

    #[test]
    fn a_walk_lists_every_node_once_and_shorter_walks_are_prefixes() {
        let rings = Rings::build([
            member("a1", "r1"),
            member("a2", "r1"),
            member("b1", "r2"),
            member("c1", "r3"),
        ]);
        for i in 0..500u32 {
            let key = i.to_be_bytes();
            let all = rings.walk_all("dc1", &key);
            let mut sorted = all.clone();
            sorted.sort();
            assert_eq!(sorted, ["a1", "a2", "b1", "c1"]);
            for n in 0..=4 {
                assert_eq!(rings.walk("dc1", &key, n), all[..n]);
            }
            // Three racks: the first three replicas are on three racks.
            let racks: std::collections::BTreeSet<char> = all[..3]
                .iter()
                .map(|id| id.chars().next().unwrap())
                .collect();
            assert_eq!(racks.len(), 3, "{all:?}");
        }
        assert!(rings.walk_all("dc2", b"k").is_empty());
    }
}
