//! Repair without IO (trees, diffs, plans) and the exchange between
//! in-memory replicas whose every message goes through postcard, up to the
//! million-key acceptance test.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use isthmus_client::wire::{decode, encode};
use parking_lot::Mutex;

use super::exchange::{RepairRequest, RepairResponse, Replica, sync};
use super::plan::{RANGE_WIDTH_MAX, local_ranges, pieces, remote_ranges};
use super::server::{Absorb, RepairData, RepairServer, StoreData};
use super::tree::*;
use super::{RepairError, RepairStats, Share};
use crate::model::{Actor, Clock, ContentHash, DcName, Dot, Version, VersionSet, key_hash};
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::{NodeId, Placement, Ring};
use crate::store::{LocalStore, MemStore, StoreError};

// ---------------------------------------------------------------- ranges

#[test]
fn parts_tile_the_range_and_agree_with_part_of() {
    let ranges = [
        HashRange::FULL,
        HashRange::new(10, 10).unwrap(),
        HashRange::new(10, 12).unwrap(),
        HashRange::new(1000, 1999).unwrap(),
        HashRange::new(u64::MAX - 6, u64::MAX).unwrap(),
        HashRange::new(0x1234_5678, 0x8000_0000_0000_0000).unwrap(),
    ];
    for range in ranges {
        for depth in [0u8, 1, 3, 7] {
            let parts: Vec<(u32, HashRange)> = (0..1u32 << depth)
                .filter_map(|i| Some((i, range.part(depth, i)?)))
                .collect();
            // Consecutive, non-empty, covering first..=last exactly.
            assert_eq!(parts.first().unwrap().1.first, range.first);
            assert_eq!(parts.last().unwrap().1.last, range.last);
            for w in parts.windows(2) {
                assert_eq!(w[0].1.last + 1, w[1].1.first, "{range} depth {depth}");
            }
            for (i, part) in &parts {
                for h in [
                    part.first,
                    part.last,
                    part.first + (part.last - part.first) / 2,
                ] {
                    assert_eq!(
                        range.part_of(depth, h),
                        *i,
                        "{range} depth {depth} hash {h}"
                    );
                }
            }
            // Node i of level l covers leaves i << (d - l) .. (i + 1) << (d - l).
            if depth >= 2 {
                for (i, part) in &parts {
                    let parent = range.part_of(depth - 2, part.first);
                    assert_eq!(parent, i >> 2);
                }
            }
        }
    }
}

#[test]
fn split_makes_bounded_consecutive_pieces() {
    let pieces = HashRange::FULL.split(1 << 62);
    assert_eq!(pieces.len(), 4);
    assert_eq!(pieces[3].last, u64::MAX);
    let odd = HashRange::new(5, 14).unwrap().split(3);
    assert_eq!(
        odd.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(),
        vec![(5, 7), (8, 10), (11, 13), (14, 14)]
    );
}

#[test]
fn depth_aims_at_a_few_keys_per_leaf() {
    assert_eq!(depth_for(0), 0);
    assert_eq!(depth_for(4), 0);
    assert_eq!(depth_for(5), 1);
    assert_eq!(depth_for(1_000_000), 18);
    assert_eq!(depth_for(u64::MAX), DEPTH_MAX);
    for keys in [10u64, 1000, 123_456] {
        let leaves = 1u64 << depth_for(keys);
        assert!(keys.div_ceil(leaves) <= LEAF_KEYS && keys.div_ceil(leaves / 2) > LEAF_KEYS);
    }
}

#[test]
fn a_reversed_range_does_not_decode() {
    let range = HashRange::new(3, 300).unwrap();
    assert_eq!(decode::<HashRange>(&encode(&range)).unwrap(), range);
    assert_eq!(encode(&range), encode(&(3u64, 300u64)));
    assert!(decode::<HashRange>(&encode(&(300u64, 3u64))).is_err());
}

#[test]
fn entries_encode_as_24_fixed_bytes() {
    let e = Entry::new(u64::MAX - 1, b"k", &[7; 32]);
    let bytes = encode(&e);
    assert_eq!(bytes.len(), 24);
    assert_eq!(decode::<Entry>(&bytes).unwrap(), e);
}

// ------------------------------------------------------------------ trees

fn keys(n: u32) -> Vec<(u64, Vec<u8>, ContentHash)> {
    (0..n)
        .map(|i| {
            let key = format!("k{i}").into_bytes();
            (key_hash(&key), key, [(i % 251) as u8; 32])
        })
        .collect()
}

#[test]
fn equal_contents_give_equal_trees_in_any_order() {
    let mut ks = keys(1000);
    let a = MerkleTree::from_keys(HashRange::FULL, 8, ks.clone());
    ks.reverse();
    let b = MerkleTree::from_keys(HashRange::FULL, 8, ks.clone());
    assert_eq!(a, b);
    assert_ne!(a.root(), EMPTY);
    let flat = MerkleTree::from_keys(HashRange::FULL, 0, ks.clone());
    assert_eq!(listing_digest(&listing(ks)), flat.root());
    let empty = MerkleTree::from_keys(
        HashRange::FULL,
        8,
        Vec::<(u64, Vec<u8>, ContentHash)>::new(),
    );
    assert_eq!(empty.root(), EMPTY);
    assert_eq!(empty.node(8, 255), Some(EMPTY));
    assert_eq!(empty.node(8, 256), None);
}

#[test]
fn one_changed_key_changes_exactly_its_path() {
    let ks = keys(500);
    let depth = 6;
    let a = MerkleTree::from_keys(HashRange::FULL, depth, ks.clone());
    let mut changed = ks.clone();
    changed[123].2 = [0xee; 32];
    let b = MerkleTree::from_keys(HashRange::FULL, depth, changed);
    let leaf = HashRange::FULL.part_of(depth, ks[123].0);
    for level in 0..=depth {
        for i in 0..1u32 << level {
            let on_path = i == leaf >> (depth - level);
            assert_eq!(
                a.node(level, i) != b.node(level, i),
                on_path,
                "level {level} node {i}"
            );
        }
    }
    // A renamed key with the same digest changes the tree too.
    let mut renamed = ks;
    renamed[5].1 = b"other".to_vec();
    assert_ne!(
        MerkleTree::from_keys(HashRange::FULL, depth, renamed).root(),
        a.root()
    );
}

#[test]
fn trees_ignore_keys_outside_their_range() {
    let ks = keys(300);
    let range = HashRange::new(0, u64::MAX / 2).unwrap();
    let inside: Vec<_> = ks.iter().filter(|k| range.contains(k.0)).cloned().collect();
    assert_eq!(
        MerkleTree::from_keys(range, 5, ks),
        MerkleTree::from_keys(range, 5, inside)
    );
}

#[test]
fn differing_hashes_compares_groups_of_equal_hash() {
    let e = |h: u64, f: u8| Entry {
        hash: h,
        fingerprint: [f; 16],
    };
    let ours = [e(1, 1), e(2, 1), e(3, 1), e(3, 2), e(5, 1)];
    let theirs = [e(1, 1), e(2, 9), e(3, 1), e(4, 1), e(5, 1), e(6, 1)];
    assert_eq!(differing_hashes(&ours, &theirs), vec![2, 3, 4, 6]);
    assert_eq!(differing_hashes(&ours, &ours), Vec::<u64>::new());
    assert_eq!(differing_hashes(&[], &theirs[..2]), vec![1, 2]);
}

// ------------------------------------------------------------------ plans

fn ring(dcs: &[(&str, usize)], vnodes: u32) -> Ring {
    let members: Vec<(NodeId, Placement)> = dcs
        .iter()
        .flat_map(|&(dc, n)| {
            (0..n).map(move |i| {
                (
                    NodeId(format!("{dc}-n{i}")),
                    Placement {
                        dc: dc.into(),
                        rack: format!("r{i}"),
                    },
                )
            })
        })
        .collect();
    Ring::build(members.iter().map(|(n, p)| (n, p, vnodes)))
}

fn sample_hashes() -> impl Iterator<Item = u64> {
    (0..4000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .chain([0, u64::MAX])
}

#[test]
fn pieces_cut_after_each_boundary() {
    assert_eq!(pieces([]), vec![HashRange::FULL]);
    assert_eq!(
        pieces([5, u64::MAX, 5]),
        vec![
            HashRange::new(0, 5).unwrap(),
            HashRange::new(6, u64::MAX).unwrap()
        ]
    );
}

#[test]
fn local_ranges_cover_exactly_what_the_node_replicates() {
    let r = ring(&[("dc1", 5)], 16);
    let dc = DcName::from("dc1");
    for me in (0..5).map(|i| NodeId(format!("dc1-n{i}"))) {
        let ranges = local_ranges(&r, &dc, 3, &me);
        assert!(
            ranges
                .iter()
                .all(|(range, _)| range.width() <= RANGE_WIDTH_MAX)
        );
        for h in sample_hashes() {
            let replicas = r.replicas_in_dc(&dc, h, 3);
            let found: Vec<_> = ranges
                .iter()
                .filter(|(range, _)| range.contains(h))
                .collect();
            if replicas.contains(&me) {
                assert_eq!(found.len(), 1, "hash {h:x} of {me}");
                assert_eq!(found[0].1, replicas);
            } else {
                assert!(found.is_empty(), "{me} does not replicate {h:x}");
            }
        }
    }
    // Every node replicates everything at RF = nodes: the ring in 64 pieces.
    let small = ring(&[("dc1", 3)], 16);
    let all = local_ranges(&small, &dc, 3, &NodeId("dc1-n0".into()));
    let width: u128 = all.iter().map(|(r, _)| r.width()).sum();
    assert_eq!(width, HashRange::FULL.width());
}

#[test]
fn remote_ranges_give_each_piece_to_the_first_live_local_replica() {
    let r = ring(&[("dc1", 3), ("dc2", 4)], 16);
    let (dc1, dc2) = (DcName::from("dc1"), DcName::from("dc2"));
    let mut alive: BTreeSet<NodeId> = (0..3)
        .map(|i| NodeId(format!("dc1-n{i}")))
        .chain((0..4).map(|i| NodeId(format!("dc2-n{i}"))))
        .collect();
    alive.remove(&NodeId("dc1-n1".into()));
    alive.remove(&NodeId("dc2-n2".into()));
    type Plan = Vec<(HashRange, Option<NodeId>)>;
    let plans: Vec<(NodeId, Plan)> = (0..3)
        .map(|i| NodeId(format!("dc1-n{i}")))
        .map(|me| {
            let ranges = remote_ranges(&r, &dc1, 2, &dc2, 3, &alive, &me, Share::Primary);
            (me, ranges)
        })
        .collect();
    for h in sample_hashes() {
        let owners: Vec<_> = plans
            .iter()
            .flat_map(|(me, rs)| {
                rs.iter()
                    .filter(|(range, _)| range.contains(h))
                    .map(move |(_, p)| (me, p))
            })
            .collect();
        assert_eq!(owners.len(), 1, "hash {h:x} synced by exactly one node");
        let local = r.replicas_in_dc(&dc1, h, 2);
        let remote = r.replicas_in_dc(&dc2, h, 3);
        assert_eq!(
            owners[0].0,
            local.iter().find(|n| alive.contains(n)).unwrap()
        );
        assert_eq!(
            owners[0].1.as_ref(),
            remote.iter().find(|n| alive.contains(n))
        );
    }
    // Its whole share: every piece a node replicates, whoever is primary.
    for i in 0..3 {
        let me = NodeId(format!("dc1-n{i}"));
        let ranges = remote_ranges(&r, &dc1, 2, &dc2, 3, &alive, &me, Share::Replicated);
        for h in sample_hashes() {
            let found = ranges.iter().filter(|(range, _)| range.contains(h)).count();
            let replicates = r.replicas_in_dc(&dc1, h, 2).contains(&me);
            assert_eq!(found, usize::from(replicates), "{me} hash {h:x}");
        }
    }
}

// ------------------------------------------------------------- exchanges

/// Every message through the guarded postcard codec as a peer message,
/// counting its encoded bytes (what [`super::PeerReplica`] counts).
struct Wire<R> {
    inner: R,
    bytes: Mutex<u64>,
}

impl<R> Wire<R> {
    fn new(inner: R) -> Self {
        Wire {
            inner,
            bytes: Mutex::new(0),
        }
    }
}

impl<R: Replica> Replica for Wire<R> {
    async fn call(&self, request: RepairRequest) -> Result<(RepairResponse, u64), RepairError> {
        let sent = encode(&PeerRequest::Repair(request));
        let Ok(PeerRequest::Repair(request)) = decode::<PeerRequest>(&sent) else {
            panic!("a repair request does not survive its encoding");
        };
        let (response, _) = self.inner.call(request).await?;
        let answered = encode(&PeerResponse::Repair(response));
        let Ok(PeerResponse::Repair(response)) = decode::<PeerResponse>(&answered) else {
            panic!("a repair answer does not survive its encoding");
        };
        let bytes = (sent.len() + answered.len()) as u64;
        *self.bytes.lock() += bytes;
        Ok((response, bytes))
    }
}

fn version(actor: u64, counter: u64, dotted: bool, value: &[u8], ts: u64) -> Version {
    let clock = if dotted {
        Clock::from_parts(
            [],
            [Dot {
                actor: Actor(actor),
                counter,
            }],
        )
    } else {
        Clock::from_parts([(Actor(actor), counter)], [])
    };
    Version::value(clock, value.to_vec(), ts, "dc1".into())
}

/// Absorbs straight into a memory store (the node absorbs through its
/// coordinator; here there is no merge to run).
struct Direct(MemStore);

impl Absorb for Direct {
    async fn absorb(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.0.apply(keyspace, key, versions).await
    }
}

fn store_server(store: &MemStore) -> RepairServer<StoreData<MemStore, Direct>> {
    RepairServer::new(StoreData {
        store: store.clone(),
        absorb: Direct(store.clone()),
    })
}

async fn all(store: &MemStore, keyspace: &str) -> Vec<(Vec<u8>, VersionSet)> {
    store.scan_hashes(keyspace, ..).await.unwrap()
}

#[tokio::test]
async fn stores_converge_both_ways_and_a_second_sync_finds_nothing() {
    let (a, b) = (MemStore::new(), MemStore::new());
    for i in 0..3000u32 {
        let key = format!("key{i}").into_bytes();
        let base = version(1, 1, false, b"base", 10);
        match i % 100 {
            0 => a.apply("ks", &key, vec![base]).await.unwrap(),
            1 => b.apply("ks", &key, vec![base]).await.unwrap(),
            2 => {
                a.apply(
                    "ks",
                    &key,
                    vec![base.clone(), version(2, 1, true, b"x", 11)],
                )
                .await
                .unwrap();
                b.apply("ks", &key, vec![base, version(3, 1, true, b"y", 12)])
                    .await
                    .unwrap();
            }
            3 => {
                a.apply("ks", &key, vec![base]).await.unwrap();
                b.apply("ks", &key, vec![version(1, 2, false, b"newer", 13)])
                    .await
                    .unwrap();
            }
            _ => {
                a.apply("ks", &key, vec![base.clone()]).await.unwrap();
                b.apply("ks", &key, vec![base]).await.unwrap();
            }
        }
        // Another keyspace that must not be touched.
        a.apply("other", &key, vec![version(9, 1, false, b"o", 1)])
            .await
            .unwrap();
    }
    let (sa, sb) = (store_server(&a), Wire::new(store_server(&b)));
    let stats = sync(&sa, &sb, "ks", HashRange::FULL, 1).await.unwrap();
    assert_eq!(
        (
            stats.ranges,
            stats.keys_differing,
            stats.keys_pulled,
            stats.keys_pushed
        ),
        (1, 120, 90, 60),
        "{stats:?}"
    );
    assert_eq!(stats.bytes, *sb.bytes.lock());
    assert_eq!(all(&a, "ks").await, all(&b, "ks").await);
    assert_eq!(all(&a, "ks").await.len(), 3000);
    assert!(all(&b, "other").await.is_empty());
    let siblings = a.get("ks", b"key2").await.unwrap();
    assert_eq!(siblings.len(), 3, "base and two concurrent writes");
    assert_eq!(
        sa.sessions() + sb.inner.sessions(),
        0,
        "sessions are closed"
    );

    let again = sync(&sa, &sb, "ks", HashRange::FULL, 2).await.unwrap();
    assert_eq!(again.keys_differing, 0);
    assert!(again.bytes < 200, "in-sync ranges cost a root: {again:?}");
}

#[tokio::test]
async fn an_empty_replica_gets_everything_and_sub_ranges_stay_apart() {
    let (a, b) = (MemStore::new(), MemStore::new());
    for i in 0..500u32 {
        let key = i.to_be_bytes();
        a.apply("ks", &key, vec![version(1, 1, false, &key, 1)])
            .await
            .unwrap();
    }
    let (sa, sb) = (store_server(&a), Wire::new(store_server(&b)));
    let half = HashRange::new(0, u64::MAX / 2).unwrap();
    let stats = sync(&sa, &sb, "ks", half, 7).await.unwrap();
    let moved = all(&a, "ks")
        .await
        .iter()
        .filter(|(k, _)| half.contains(key_hash(k)))
        .count();
    assert_eq!(stats.keys_pushed as usize, moved);
    assert_eq!(all(&b, "ks").await.len(), moved);
    let rest = HashRange::new(u64::MAX / 2 + 1, u64::MAX).unwrap();
    sync(&sb, &sa, "ks", rest, 8).await.unwrap();
    assert_eq!(all(&a, "ks").await, all(&b, "ks").await);
}

#[tokio::test]
async fn a_forgotten_session_is_a_typed_error() {
    let server = store_server(&MemStore::new());
    let err = server
        .serve(RepairRequest::Level {
            session: 42,
            depth: 0,
            level: 0,
            nodes: vec![0],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RepairError::UnknownSession { session: 42 }));
    server
        .serve(RepairRequest::Open {
            session: 1,
            keyspace: "ks".into(),
            range: HashRange::FULL,
        })
        .await
        .unwrap();
    let err = server
        .serve(RepairRequest::Level {
            session: 1,
            depth: 2,
            level: 1,
            nodes: vec![2],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RepairError::BadRequest { .. }), "{err}");
}

/// A stream of sessions opened by one peer evicts only that peer's own
/// oldest sessions: a sync another node is running keeps its session, and
/// two owners' equal session ids are two sessions.
#[tokio::test]
async fn a_stream_of_sessions_from_one_peer_never_evicts_anothers() {
    use crate::repair::server::SESSIONS_PER_OWNER_MAX;
    use crate::ring::NodeId;
    let server = store_server(&MemStore::new());
    let (scheduled, flood) = (NodeId("n2".into()), NodeId("n3".into()));
    let open = |session| RepairRequest::Open {
        session,
        keyspace: "ks".into(),
        range: HashRange::FULL,
    };
    let level = |session| RepairRequest::Level {
        session,
        depth: 0,
        level: 0,
        nodes: vec![0],
    };
    server.serve_peer(&scheduled, open(1)).await.unwrap();
    for session in 0..(4 * SESSIONS_PER_OWNER_MAX as u64) {
        server.serve_peer(&flood, open(session)).await.unwrap();
    }
    assert!(server.serve_peer(&scheduled, level(1)).await.is_ok());
    // The flood's oldest were evicted, its newest kept.
    assert!(matches!(
        server.serve_peer(&flood, level(0)).await,
        Err(RepairError::UnknownSession { session: 0 })
    ));
    let newest = 4 * SESSIONS_PER_OWNER_MAX as u64 - 1;
    assert!(server.serve_peer(&flood, level(newest)).await.is_ok());
    assert_eq!(server.sessions(), 1 + SESSIONS_PER_OWNER_MAX);
    // Session 1 of the flood is not the scheduled sync's session 1.
    server
        .serve_peer(&flood, RepairRequest::Close { session: 1 })
        .await
        .unwrap();
    assert!(server.serve_peer(&scheduled, level(1)).await.is_ok());
}

// ------------------------------------------------- the million-key test

/// A replica of `KEYS` keys that keeps only a listing row per key: every
/// key starts with the same one-version set (so one digest serves all),
/// and only keys whose set differs from it are held as sets.
struct Sim {
    base: Arc<Base>,
    changed: Mutex<HashMap<u32, Option<VersionSet>>>,
}

struct Base {
    /// (hash, key index, fingerprint of the key with the base set), by hash.
    rows: Vec<(u64, u32, Fingerprint)>,
    set: VersionSet,
}

fn sim_key(i: u32) -> Vec<u8> {
    format!("user:{i:08}").into_bytes()
}

fn sim_index(key: &[u8]) -> u32 {
    std::str::from_utf8(&key[5..]).unwrap().parse().unwrap()
}

impl Base {
    fn new(keys: u32) -> Base {
        let set = VersionSet::from_versions([version(1, 1, false, b"v1", 1000)]);
        let digest = set.digest();
        let mut rows: Vec<(u64, u32, Fingerprint)> = (0..keys)
            .map(|i| {
                let key = sim_key(i);
                let hash = key_hash(&key);
                (hash, i, Entry::new(hash, &key, &digest).fingerprint)
            })
            .collect();
        rows.sort_unstable_by_key(|r| r.0);
        Base { rows, set }
    }
}

impl Sim {
    fn new(base: &Arc<Base>) -> Sim {
        Sim {
            base: base.clone(),
            changed: Mutex::new(HashMap::new()),
        }
    }

    fn current(&self, i: u32) -> Option<VersionSet> {
        match self.changed.lock().get(&i) {
            Some(set) => set.clone(),
            None => Some(self.base.set.clone()),
        }
    }
}

impl RepairData for Sim {
    async fn listing(&self, _: &str, range: HashRange) -> Result<Vec<Entry>, StoreError> {
        let rows = &self.base.rows;
        let lo = rows.partition_point(|r| r.0 < range.first);
        let hi = rows.partition_point(|r| r.0 <= range.last);
        let changed = self.changed.lock();
        let mut out: Vec<Entry> = rows[lo..hi]
            .iter()
            .filter_map(|&(hash, i, fingerprint)| match changed.get(&i) {
                None => Some(Entry { hash, fingerprint }),
                Some(None) => None,
                Some(Some(set)) => Some(Entry::new(hash, &sim_key(i), &set.digest())),
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    async fn sets(&self, _: &str, hash: u64) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        let rows = &self.base.rows;
        let lo = rows.partition_point(|r| r.0 < hash);
        Ok(rows[lo..]
            .iter()
            .take_while(|r| r.0 == hash)
            .filter_map(|&(_, i, _)| Some((sim_key(i), self.current(i)?)))
            .collect())
    }

    async fn absorb(&self, _: &str, key: &[u8], versions: Vec<Version>) -> Result<(), StoreError> {
        let i = sim_index(key);
        let mut set = self.current(i).unwrap_or_default();
        for v in versions {
            set.absorb(v);
        }
        self.changed.lock().insert(i, Some(set));
        Ok(())
    }
}

/// Acceptance: a million keys on two replicas, a thousand of them
/// divergent (missing on either side, a concurrent sibling on one side,
/// a newer version on the other). One sync makes every key's set equal
/// on both, moving at most 2% of the bytes of a naive listing of every
/// key with a 32-byte digest.
#[tokio::test]
async fn a_million_keys_with_a_thousand_divergent_converge_for_under_two_percent() {
    const KEYS: u32 = 1_000_000;
    const DIVERGENT: u32 = 1_000;
    let started = std::time::Instant::now();
    let base = Arc::new(Base::new(KEYS));
    let (a, b) = (Sim::new(&base), Sim::new(&base));
    let concurrent = version(2, 1, true, b"extra", 2000);
    let newer = version(1, 2, false, b"newer", 3000);
    let divergent: Vec<u32> = (0..DIVERGENT).map(|k| (k * 999_983) % KEYS).collect();
    for (k, &i) in divergent.iter().enumerate() {
        match k % 4 {
            0 => {
                a.changed.lock().insert(i, None);
            }
            1 => {
                b.changed.lock().insert(i, None);
            }
            2 => {
                let set =
                    VersionSet::from_versions([base.set.versions()[0].clone(), concurrent.clone()]);
                a.changed.lock().insert(i, Some(set));
            }
            _ => {
                b.changed
                    .lock()
                    .insert(i, Some(VersionSet::from_versions([newer.clone()])));
            }
        }
    }
    let built = started.elapsed();
    let (local, remote) = (RepairServer::new(a), Wire::new(RepairServer::new(b)));
    let stats = sync(&local, &remote, "ks", HashRange::FULL, 1)
        .await
        .unwrap();
    let synced = started.elapsed() - built;

    let naive: u64 = (0..KEYS).map(|i| sim_key(i).len() as u64 + 32).sum();
    println!(
        "1M keys, {DIVERGENT} divergent: repair exchanged {} bytes, naive listing {naive} bytes ({:.3}%); {stats:?}; setup {built:?}, sync {synced:?}",
        stats.bytes,
        100.0 * stats.bytes as f64 / naive as f64
    );
    assert_eq!(stats.bytes, *remote.bytes.lock());
    assert_eq!(
        stats,
        RepairStats {
            ranges: 1,
            ranges_failed: 0,
            keys_differing: u64::from(DIVERGENT),
            keys_pulled: u64::from(DIVERGENT) / 2,
            keys_pushed: u64::from(DIVERGENT) / 2,
            bytes: stats.bytes,
        }
    );
    assert!(
        stats.bytes * 50 <= naive,
        "{} bytes exceed 2% of {naive}",
        stats.bytes
    );

    // Every key's set is the same on both sides, and the one expected.
    let (a, b) = (local.data(), remote.inner.data());
    let (la, lb) = (
        a.listing("ks", HashRange::FULL).await.unwrap(),
        b.listing("ks", HashRange::FULL).await.unwrap(),
    );
    assert_eq!(la.len(), KEYS as usize);
    assert!(la == lb, "listings differ after repair");
    let both = VersionSet::from_versions([base.set.versions()[0].clone(), concurrent]);
    for (k, &i) in divergent.iter().enumerate() {
        let want = match k % 4 {
            0 | 1 => base.set.clone(),
            2 => both.clone(),
            _ => VersionSet::from_versions([newer.clone()]),
        };
        assert_eq!(
            a.current(i).unwrap().digest(),
            want.digest(),
            "key {i} on a"
        );
        assert_eq!(
            b.current(i).unwrap().digest(),
            want.digest(),
            "key {i} on b"
        );
    }
    let again = sync(&local, &remote, "ks", HashRange::FULL, 2)
        .await
        .unwrap();
    assert_eq!(again.keys_differing, 0);
}
