//! Three real `isthmus server` processes on 127.0.42.x: three concurrent
//! 1 MiB blind writes to one key of a keyspace without a resolver leave
//! three siblings, a read at ALL returns all three byte for byte, and
//! the coordinator they went through keeps serving other writes and reads
//! at ALL within seconds (its peer channels were not poisoned by the
//! large answers), with every replica holding the three siblings.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, all_see, local_set, until};

use isthmus_client::Client;
use isthmus_client::wire::{Consistency, Context, RequestBody, ResponseBody, WriteId};
use isthmus_core::limit::VALUE_BYTES_MAX_DEFAULT;

/// Tests here run one at a time, like every cluster test binary's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three nodes n0..n2 on 127.0.42.x, racks r0..r2, seeded by n0; `carts`
/// (no resolver) has three replicas.
fn cluster(dir: &Path) -> Vec<Node> {
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::new(dir, &format!("n{i}"), "dc1", &format!("127.0.42.{}", i + 2)))
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        node.write_config(
            dir,
            &format!("r{i}"),
            &[&nodes[0].addr],
            "vnodes = 32\nfsync = \"interval\"",
            "dc1 = 3",
        );
    }
    nodes
}

fn put(key: &[u8], value: Vec<u8>, consistency: Consistency) -> RequestBody {
    RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.to_vec(),
        value,
        context: Context::default(),
        consistency: Some(consistency),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    }
}

fn get(key: &[u8], consistency: Consistency) -> RequestBody {
    RequestBody::Get {
        keyspace: "carts".into(),
        key: key.to_vec(),
        consistency: Some(consistency),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_one_mib_siblings_are_read_at_all_and_the_coordinator_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    for node in nodes.iter_mut() {
        node.spawn();
    }
    until("three nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 3).await
    })
    .await;

    // Three concurrent blind writes (empty context) of the largest value
    // allowed, at ALL, through one coordinator: three siblings, 3 MiB of
    // values on every replica.
    let coordinator = Arc::new(
        common::session(&nodes[0].addr, "large", Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let key = b"big-cart".to_vec();
    let values: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            (0..VALUE_BYTES_MAX_DEFAULT)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let writes: Vec<_> = values
        .iter()
        .map(|value| {
            let (session, body) = (
                coordinator.clone(),
                put(&key, value.clone(), Consistency::All),
            );
            tokio::spawn(async move { session.call(body, Duration::from_secs(10)).await })
        })
        .collect();
    for write in writes {
        match write.await.unwrap() {
            Ok(ResponseBody::Written) => {}
            other => {
                common::dump_logs(&nodes);
                panic!("a 1 MiB write failed: {other:?}");
            }
        }
    }
    eprintln!("three concurrent 1 MiB writes took {:?}", start.elapsed());

    // A read at ALL through the client SDK returns all three, byte for
    // byte (3 MiB: more than the old 2.1 MiB frame cap could carry).
    let client = Client::builder()
        .tls(common::pki().material())
        .seed(nodes[0].addr.clone())
        .consistency(Consistency::All)
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    let read = client.get("carts", &key).await.unwrap();
    eprintln!(
        "read of three 1 MiB siblings at ALL took {:?}",
        start.elapsed()
    );
    let mut got: Vec<Vec<u8>> = read.siblings.iter().map(|s| s.value.clone()).collect();
    got.sort();
    let mut want = values.clone();
    want.sort();
    assert_eq!(got.len(), 3, "three siblings");
    assert!(
        got == want,
        "the siblings are the three values, byte for byte"
    );
    // The same through the coordinator the writes went through.
    match coordinator
        .call(get(&key, Consistency::All), Duration::from_secs(10))
        .await
    {
        Ok(ResponseBody::Value { siblings, .. }) => assert_eq!(siblings.len(), 3),
        other => panic!("read at ALL through n0: {other:?}"),
    }

    // The coordinator keeps serving: 50 writes at ALL (every replica must
    // answer, so every peer channel of n0 is exercised), each read back at
    // ALL, each within a few seconds.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..50u32 {
        let small = format!("after-{i}").into_bytes();
        let op = Instant::now();
        let written = coordinator
            .call(
                put(&small, small.clone(), Consistency::All),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(written, Ok(ResponseBody::Written)),
            "write {i} after the large siblings: {written:?}"
        );
        let read = coordinator
            .call(get(&small, Consistency::All), Duration::from_secs(5))
            .await;
        match read {
            Ok(ResponseBody::Value { siblings, .. }) => {
                assert_eq!(siblings.len(), 1);
                assert_eq!(siblings[0].value, small);
            }
            other => panic!("read {i} after the large siblings: {other:?}"),
        }
        slowest = slowest.max(op.elapsed());
    }
    let total = start.elapsed();
    eprintln!("50 writes and reads at ALL through n0 took {total:?} (slowest pair {slowest:?})");
    assert!(
        slowest < Duration::from_secs(3),
        "slowest pair took {slowest:?}"
    );

    // Every replica holds the three siblings (asked over the peer
    // protocol: no coordinator, no read repair).
    let transport = common::probe("inspector");
    for node in &nodes {
        let set = local_set(&transport, &node.addr, "carts", &key)
            .await
            .unwrap_or_else(|| panic!("{} answers a peer read", node.id));
        let mut held: Vec<Vec<u8>> = set
            .live()
            .map(|v| v.value_bytes().unwrap_or_default().to_vec())
            .collect();
        held.sort();
        assert_eq!(held.len(), 3, "{} holds three siblings", node.id);
        assert!(held == want, "{} holds the three values", node.id);
    }
}
