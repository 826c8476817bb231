//! Checks over bytes that arrive from another machine, shared by the
//! cargo-fuzz targets in `core/fuzz` and their proptest twins (this
//! module's tests, in the normal test run).
//!
//! Each function takes arbitrary bytes, decodes them as a node does, and,
//! when decoding succeeds, does what the node would do next that needs no
//! IO: re-encode (the encoding must survive a round trip), judge gossip
//! entries and build rings from them, absorb versions into sets, serve a
//! repair request from in-memory data. A decoder or a step after it that
//! panics, or a broken invariant (which these functions assert), is a bug.
//!
//! Not part of the API: hidden from the docs, and free to change.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use isthmus_client::wire::{Envelope, Reply, decode, encode};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::coordinator::next_dot;
use crate::gossip::membership::{self, Endpoint, Membership, NodeStatus, Receiver, Sender};
use crate::gossip::service::GossipConfig;
use crate::model::{Actor, Clock, Version, VersionSet, key_hash};
use crate::peer::{PeerRequest, PeerResponse};
use crate::repair::exchange::{RepairRequest, RepairResponse, SessionId};
use crate::repair::server::{RepairData, RepairServer};
use crate::repair::tree::{Entry, HashRange, differing_hashes, listing};
use crate::ring::{NodeId, Placement, Ring};
use crate::store::StoreError;

/// The receiver's wall clock in the gossip checks, Unix milliseconds.
pub const NOW_MS: u64 = 1_800_000_000_000;

/// `bytes` with one byte flipped, one inserted, or the tail cut (`how`
/// modulo 3), at `at` modulo its length: how the proptest twins of every
/// fuzz target turn a valid encoding into a near miss. Empty bytes become
/// `[byte]`.
pub fn mutate(mut bytes: Vec<u8>, how: u8, at: usize, byte: u8) -> Vec<u8> {
    if bytes.is_empty() {
        return vec![byte];
    }
    let i = at % bytes.len();
    match how % 3 {
        0 => bytes[i] ^= byte.max(1),
        1 => bytes.insert(i, byte),
        _ => bytes.truncate(i),
    }
    bytes
}

/// A peer message: `bytes` as an `Envelope<PeerRequest>` (what a node
/// reads from a peer connection) and as a `Reply<PeerResponse>` (what it
/// reads back). Whatever decodes re-encodes to the same bytes, and its
/// contents go through the step the node takes next.
pub fn peer_message(bytes: &[u8]) {
    if let Ok(request) = decode::<Envelope<PeerRequest>>(bytes) {
        assert_re_encodes(&request);
        match request.body {
            PeerRequest::Apply { versions, .. } => absorb(versions),
            PeerRequest::ApplyBatch { entries, .. } => {
                for (_, versions) in entries {
                    absorb(versions);
                }
            }
            PeerRequest::Coordinate { context, .. } => {
                // The coordinator issues the write's dot over the context.
                assert_normalised(&context);
                let actor = Actor(1);
                match next_dot(actor, &Clock::new(), &context) {
                    Ok(dot) => {
                        let mut clock = context.clone();
                        clock.add_dot(dot);
                        assert!(context.is_dominated_by(&clock), "a write took no event");
                    }
                    // Over an empty history, any event of the
                    // coordinator's own actor is one it never issued.
                    Err(_) => assert!(context.max_counter(actor) > 0),
                }
            }
            PeerRequest::Gossip { digest, entries } => judge_exchange(&digest, entries),
            PeerRequest::Repair(request) => serve_repair(request),
            // A `Ship` batch's bytes are the bridge's format (the
            // `isthmus-dc-bridge` crate checks them); a read has no body;
            // a scan's numbers are held to their bounds before the store
            // is read (`Coordinator::serve_scan`).
            PeerRequest::Ship { .. } | PeerRequest::Read { .. } | PeerRequest::Scan { .. } => {}
        }
    }
    if let Ok(reply) = decode::<Reply<PeerResponse>>(bytes) {
        assert_re_encodes(&reply);
        match reply.body {
            // The coordinator joins the replicas' answers; a failed
            // condition's set is returned to the client as it is read.
            PeerResponse::Versions(set) | PeerResponse::ConditionFailed(set) => {
                absorb(set.into_versions())
            }
            PeerResponse::Gossip { entries } => judge_exchange(&[], entries),
            PeerResponse::Repair(response) => check_repair_answer(response),
            PeerResponse::Error(_)
            | PeerResponse::Applied
            | PeerResponse::Written
            | PeerResponse::Shipped { .. }
            // Any value is a counter's value, handed on as it is.
            | PeerResponse::Counted(_)
            // Held to the stretch asked for by `Coordinator::scan`.
            | PeerResponse::ScanPart { .. } => {}
        }
    }
}

/// A gossip exchange: `bytes` as the fields of a
/// [`PeerRequest::Gossip`] (digest, then entries; the same bytes as the
/// message body after its variant tag). Each entry is judged by
/// [`membership::validate`] as a node judges it, from a member and from a
/// stranger, applied when accepted, and the rings are built from the result.
pub fn gossip_exchange(bytes: &[u8]) {
    type Exchange = (Vec<(NodeId, u64, u64)>, Vec<Endpoint>);
    if let Ok(exchange) = decode::<Exchange>(bytes) {
        assert_re_encodes(&exchange);
        let (digest, entries) = exchange;
        judge_exchange(&digest, entries);
    }
}

/// A repair message: `bytes` as a [`RepairRequest`], served by a
/// [`RepairServer`] over a few keys in memory (with the session it names
/// opened first), and as a [`RepairResponse`], checked as the initiator of a
/// sync uses it.
pub fn repair_message(bytes: &[u8]) {
    if let Ok(request) = decode::<RepairRequest>(bytes) {
        assert_re_encodes(&request);
        serve_repair(request);
    }
    if let Ok(response) = decode::<RepairResponse>(bytes) {
        assert_re_encodes(&response);
        check_repair_answer(response);
    }
}

/// `message` encodes to bytes that decode to a message with the very same
/// encoding. (Compared as bytes: postcard accepts over-long varints, so
/// the input itself need not be canonical.)
///
/// # Panics
/// When the round trip changes the encoding.
pub fn assert_re_encodes<T: Serialize + DeserializeOwned>(message: &T) {
    let once = encode(message);
    let again = decode::<T>(&once).expect("a re-encoded message decodes");
    assert_eq!(encode(&again), once, "a round trip changed the encoding");
}

/// Absorb `versions` into a set, as a replica does, and check that the
/// set's encoding is one the storage engine's canonical decode accepts
/// (a set it refused would make the key unreadable).
fn absorb(versions: Vec<Version>) {
    let mut set = VersionSet::new();
    for version in versions {
        assert_normalised(&version.clock);
        set.absorb(version);
    }
    let decoded = VersionSet::decode(&set.encode()).expect("an absorbed set decodes");
    assert_eq!(decoded, set);
    let lub = set.lub();
    assert!(set.versions().iter().all(|v| v.clock.is_covered_by(&lub)));
}

/// A decoded clock keeps the invariant every clock built here keeps.
fn assert_normalised(clock: &Clock) {
    let rebuilt = Clock::from_parts(
        clock.vector().iter().map(|(a, n)| (*a, *n)),
        clock.dots().iter().copied(),
    );
    assert_eq!(&rebuilt, clock, "a decoded clock is not normalised");
}

fn node(id: &str) -> NodeId {
    NodeId(id.into())
}

/// What the receiver of gossip knows: itself (`n1`) and two members.
fn receiver_view() -> Membership {
    let mut view = Membership::new();
    for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
        view.observe(Endpoint {
            id: node(id),
            addr: format!("10.0.0.{}:7401", i + 1),
            placement: Placement {
                dc: "dc1".into(),
                rack: format!("r{i}"),
            },
            vnodes: 8,
            generation: NOW_MS - 60_000,
            version: 5,
            status: NodeStatus::Normal,
            load_bytes: 0,
        });
    }
    view
}

/// Judge and apply `entries` as `n1` does (see `Gossiper::on_exchange`),
/// from a member and from a stranger, then answer `digest` and build the
/// rings the node would publish.
fn judge_exchange(digest: &[(NodeId, u64, u64)], entries: Vec<Endpoint>) {
    let me = node("n1");
    let receiver = Receiver {
        me: &me,
        now_ms: NOW_MS,
        bounds: GossipConfig::default().bounds(),
    };
    let initial = receiver_view();
    for (from, member) in [(node("n2"), true), (node("stranger"), false)] {
        let sender = Sender { id: &from, member };
        let mut view = initial.clone();
        for entry in &entries {
            let known = view.get(&entry.id).cloned();
            if let Err(rejection) = membership::validate(entry, &view, &receiver, &sender) {
                assert!(!rejection.to_string().is_empty());
                continue;
            }
            assert!((1..=receiver.bounds.vnodes_max).contains(&entry.vnodes));
            assert!(entry.generation <= NOW_MS + receiver.bounds.generation_skew_max_ms);
            if entry.id == me {
                continue; // only a node writes its own entry
            }
            if known.is_none() {
                assert!(member || entry.id == from, "a stranger vouched for another");
            }
            let newer = known.as_ref().is_none_or(|k| entry.supersedes(k));
            if let Some(k) = known.as_ref().filter(|_| newer && entry.id != from) {
                assert_eq!(
                    (&entry.addr, &entry.placement),
                    (&k.addr, &k.placement),
                    "a third party moved a node"
                );
            }
            assert_eq!(view.observe(entry.clone()), newer);
        }
        assert_eq!(view.get(&me), initial.get(&me), "the receiver's own entry");
        let _answer = view.newer_than(digest);
        publish(&view);
    }
}

/// Build the rings from a view as the gossip worker publishes them, and
/// place a key on them.
fn publish(view: &Membership) {
    let members: Vec<&Endpoint> = view
        .endpoints()
        .values()
        .filter(|e| matches!(e.status, NodeStatus::Normal | NodeStatus::Leaving))
        .collect();
    let ring = Ring::build(members.iter().map(|e| (&e.id, &e.placement, e.vnodes)));
    let dcs: Vec<_> = ring.dcs().cloned().collect();
    for dc in &dcs {
        let replicas = ring.replicas_in_dc(dc, key_hash(b"cart-1"), 3);
        assert_eq!(replicas.len(), ring.node_count(dc).min(3));
        let mut distinct = replicas.clone();
        distinct.sort_by(|a, b| a.0.cmp(&b.0));
        distinct.dedup();
        assert_eq!(distinct.len(), replicas.len(), "a node placed twice");
    }
}

/// A few keys in memory, as a replica's repair data.
struct SampleData {
    sets: Mutex<BTreeMap<Vec<u8>, VersionSet>>,
}

fn sample_sets() -> BTreeMap<Vec<u8>, VersionSet> {
    (0..4u64)
        .map(|i| {
            let clock = Clock::from_parts([(Actor(i + 1), i + 1)], []);
            let version = Version::value(clock, vec![i as u8; 3], 1_000 + i, "dc1".into());
            (
                format!("k{i}").into_bytes(),
                VersionSet::from_versions([version]),
            )
        })
        .collect()
}

fn sample_listing(sets: &BTreeMap<Vec<u8>, VersionSet>, range: HashRange) -> Vec<Entry> {
    listing(
        sets.iter()
            .map(|(key, set)| (key_hash(key), key, set.digest()))
            .filter(|(hash, _, _)| range.contains(*hash)),
    )
}

impl RepairData for SampleData {
    async fn listing(&self, _keyspace: &str, range: HashRange) -> Result<Vec<Entry>, StoreError> {
        Ok(sample_listing(&self.sets.lock(), range))
    }

    async fn sets(
        &self,
        _keyspace: &str,
        hash: u64,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        Ok(self
            .sets
            .lock()
            .iter()
            .filter(|(key, _)| key_hash(key) == hash)
            .map(|(key, set)| (key.clone(), set.clone()))
            .collect())
    }

    async fn absorb(
        &self,
        _keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        let mut sets = self.sets.lock();
        let set = sets.entry(key.to_vec()).or_default();
        for version in versions {
            set.absorb(version);
        }
        Ok(())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// The range a session is opened over: the session id picks it, so the
/// inputs reach narrow, wide and one-hash ranges.
fn session_range(session: SessionId) -> HashRange {
    HashRange::new(session.min(!session), session.max(!session)).expect("min <= max")
}

/// Serve `request` as a replica does, on a fresh server over
/// [`SampleData`], after opening the session it names; check the answer
/// against what was asked.
fn serve_repair(request: RepairRequest) {
    let server = RepairServer::new(SampleData {
        sets: Mutex::new(sample_sets()),
    });
    runtime().block_on(async {
        let session = match &request {
            RepairRequest::Level { session, .. }
            | RepairRequest::Leaves { session, .. }
            | RepairRequest::Close { session } => Some(*session),
            _ => None,
        };
        if let Some(session) = session {
            let open = RepairRequest::Open {
                session,
                keyspace: "ks".into(),
                range: session_range(session),
            };
            let opened = server.serve(open).await;
            assert!(matches!(opened, Ok(RepairResponse::Opened { .. })));
        }
        let answer = match server.serve(request.clone()).await {
            Ok(answer) => answer,
            Err(error) => {
                assert!(!error.to_string().is_empty());
                return;
            }
        };
        assert_re_encodes(&answer);
        match (request, answer) {
            (RepairRequest::Open { .. }, RepairResponse::Opened { .. })
            | (RepairRequest::Push { .. }, RepairResponse::Pushed)
            | (RepairRequest::Close { .. }, RepairResponse::Closed) => {}
            (RepairRequest::Level { nodes, .. }, RepairResponse::Hashes(hashes)) => {
                assert_eq!(hashes.len(), nodes.len());
            }
            (RepairRequest::Leaves { leaves, .. }, RepairResponse::Listings(listings)) => {
                assert!(listings.len() <= leaves.len());
                assert_eq!(listings.is_empty(), leaves.is_empty());
            }
            (RepairRequest::Fetch { hashes, .. }, RepairResponse::Sets { served, entries }) => {
                let asked = &hashes[..served as usize];
                assert!(served >= 1);
                assert!(
                    entries
                        .iter()
                        .all(|(key, _)| asked.contains(&key_hash(key)))
                );
            }
            (request, answer) => panic!("{request:?} answered with {answer:?}"),
        }
    });
}

/// Use `response` as the initiator of a sync does: compare listings with
/// its own, join fetched sets into its own.
fn check_repair_answer(response: RepairResponse) {
    let ours = sample_sets();
    match response {
        RepairResponse::Listings(listings) => {
            let mine = sample_listing(&ours, HashRange::FULL);
            for theirs in &listings {
                let differing = differing_hashes(&mine, theirs);
                assert!(differing.windows(2).all(|w| w[0] < w[1]) || !is_sorted(theirs));
            }
        }
        RepairResponse::Sets { entries, .. } => {
            for (key, set) in entries {
                let mut joined = ours.get(&key).cloned().unwrap_or_default();
                let _ = key_hash(&key);
                joined.join(set);
                absorb(joined.into_versions());
            }
        }
        RepairResponse::Opened { .. }
        | RepairResponse::Hashes(_)
        | RepairResponse::Pushed
        | RepairResponse::Closed => {}
    }
}

fn is_sorted(entries: &[Entry]) -> bool {
    entries.windows(2).all(|w| w[0].hash <= w[1].hash)
}

#[cfg(test)]
mod tests;
