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
