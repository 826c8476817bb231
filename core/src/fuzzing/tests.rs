//! The proptest twins of the `peer`, `gossip` and `repair` fuzz targets:
//! the same checks, over random bytes and over valid messages with bytes
//! flipped, inserted or cut.

use proptest::prelude::*;

use super::*;
use crate::model::{Consistency, Dot};

fn clock(actor: u64, counter: u64) -> Clock {
    Clock::from_parts([(Actor(actor), counter)], [])
}

fn versions() -> Vec<Version> {
    vec![
        Version::value(clock(1, 2), b"a".to_vec(), 10, "dc1".into()),
        Version::tombstone(clock(2, 1), 11, "dc2".into()),
    ]
}

fn endpoint(id: &str, generation: u64, version: u64) -> Endpoint {
    let mut entry = receiver_view()
        .get(&node("n2"))
        .cloned()
        .expect("n2 is known");
    entry.id = node(id);
    entry.generation = generation;
    entry.version = version;
    entry
}

fn gossip_entries() -> Vec<Endpoint> {
    vec![
        endpoint("n2", NOW_MS - 60_000, 9),
        endpoint("n4", NOW_MS - 1_000, 1),
        endpoint("n1", NOW_MS - 60_000, 5),
    ]
}

fn repair_requests() -> Vec<RepairRequest> {
    let hashes = sample_sets().keys().map(|k| key_hash(k)).collect();
    vec![
        RepairRequest::Open {
            session: 3,
            keyspace: "ks".into(),
            range: HashRange::FULL,
        },
        RepairRequest::Level {
            session: 0,
            depth: 3,
            level: 2,
            nodes: vec![0, 1, 3],
        },
        RepairRequest::Leaves {
            session: 0,
            depth: 2,
            leaves: vec![0, 1, 2, 3],
        },
        RepairRequest::Fetch {
            keyspace: "ks".into(),
            hashes,
        },
        RepairRequest::Push {
            keyspace: "ks".into(),
            entries: vec![(b"k1".to_vec(), versions())],
        },
        RepairRequest::Close { session: 0 },
    ]
}

fn repair_responses() -> Vec<RepairResponse> {
    let sets = sample_sets();
    vec![
        RepairResponse::Listings(vec![sample_listing(&sets, HashRange::FULL), Vec::new()]),
        RepairResponse::Sets {
            served: 2,
            entries: vec![(b"k1".to_vec(), VersionSet::from_versions(versions()))],
        },
        RepairResponse::Hashes(vec![[7; 16]]),
    ]
}

/// Valid encodings of every kind of message the three checks decode.
fn samples() -> Vec<Vec<u8>> {
    let envelope = |body| {
        encode(&Envelope {
            id: 7,
            timeout_ms: 500,
            deadline_ms: 0,
            body,
        })
    };
    let reply = |body| {
        encode(&Reply {
            id: 7,
            clock_ms: 1,
            body,
        })
    };
    let mut out = vec![
        envelope(PeerRequest::Apply {
            keyspace: "ks".into(),
            key: b"k".to_vec(),
            versions: versions(),
            hint_for: Some(node("n3")),
        }),
        envelope(PeerRequest::ApplyBatch {
            keyspace: "ks".into(),
            entries: vec![(b"k".to_vec(), versions())],
        }),
        envelope(PeerRequest::Coordinate {
            keyspace: "ks".into(),
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            context: clock(1, 4),
            write_id: [1; 16],
            consistency: Consistency::LocalQuorum,
            mode: isthmus_client::wire::WriteMode::IfMatch,
            sloppy: Some(true),
            expiry: isthmus_client::wire::Expiry::AtMs(9),
        }),
        envelope(PeerRequest::Gossip {
            digest: vec![(node("n2"), 1, 2)],
            entries: gossip_entries(),
        }),
        reply(PeerResponse::Versions(
            VersionSet::from_versions(versions()),
        )),
        reply(PeerResponse::Gossip {
            entries: gossip_entries(),
        }),
        encode(&(vec![(node("n3"), 1u64, 2u64)], gossip_entries())),
    ];
    for request in repair_requests() {
        out.push(encode(&request));
        out.push(envelope(PeerRequest::Repair(request)));
    }
    for response in repair_responses() {
        out.push(encode(&response));
        out.push(reply(PeerResponse::Repair(response)));
    }
    out
}

/// Every check on every sample: the valid messages decode and pass.
#[test]
fn valid_messages_pass_every_check() {
    assert!(decode::<Envelope<PeerRequest>>(&samples()[0]).is_ok());
    for bytes in samples() {
        peer_message(&bytes);
        gossip_exchange(&bytes);
        repair_message(&bytes);
    }
}

/// The repair server answers the sample requests with what was asked
/// (not an error), so the twins reach past it.
#[test]
fn the_sample_repair_requests_are_served() {
    let server = RepairServer::new(SampleData {
        sets: Mutex::new(sample_sets()),
    });
    runtime().block_on(async {
        for request in repair_requests() {
            if let RepairRequest::Level { session, .. } | RepairRequest::Leaves { session, .. } =
                request
            {
                let open = RepairRequest::Open {
                    session,
                    keyspace: "ks".into(),
                    range: session_range(session),
                };
                server.serve(open).await.unwrap();
            }
            server.serve(request.clone()).await.unwrap();
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1571_00f2),
        ..ProptestConfig::default()
    })]

    /// Twin of the `peer`, `gossip` and `repair` fuzz targets over random
    /// bytes.
    #[test]
    fn arbitrary_bytes_pass_the_peer_gossip_and_repair_checks(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        peer_message(&bytes);
        gossip_exchange(&bytes);
        repair_message(&bytes);
    }

    /// Twin of the same targets over valid messages with a byte flipped,
    /// inserted or cut.
    #[test]
    fn mutated_messages_pass_the_peer_gossip_and_repair_checks(
        which in any::<prop::sample::Index>(),
        how in any::<u8>(),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let samples = samples();
        let bytes = mutate(samples[which.index(samples.len())].clone(), how, at, byte);
        peer_message(&bytes);
        gossip_exchange(&bytes);
        repair_message(&bytes);
    }
}

/// A context at the last event of the coordinator's actor is refused with
/// a typed error: the next counter used to be computed with a plain `+ 1`,
/// which overflows (a panic in a debug build, a write that takes no event
/// in a release build).
#[test]
fn a_context_at_the_last_event_of_an_actor_is_refused() {
    let context = clock(1, u64::MAX);
    let refused = next_dot(Actor(1), &Clock::new(), &context);
    assert!(matches!(
        refused,
        Err(crate::coordinator::CoordinatorError::InvalidContext { .. })
    ));
    assert_eq!(
        next_dot(Actor(2), &Clock::new(), &context).unwrap(),
        Dot {
            actor: Actor(2),
            counter: 1
        }
    );
    peer_message(&encode(&Envelope {
        id: 1,
        timeout_ms: 100,
        deadline_ms: 0,
        body: PeerRequest::Coordinate {
            keyspace: "ks".into(),
            key: b"k".to_vec(),
            value: None,
            context,
            write_id: [0; 16],
            consistency: Consistency::One,
            mode: isthmus_client::wire::WriteMode::Context,
            sloppy: None,
            expiry: isthmus_client::wire::Expiry::Keep,
        },
    }));
}
