//! The client SDK against in-process clusters (real sockets, real data
//! directories, one process): the runnable programs under
//! `client/examples/` (each example's `run`, the function its `main`
//! calls, compiled here from the example's own file), batches of 300 keys
//! on three nodes, and a node added to the cluster that the client routes
//! to without any request having failed.
//!
//! The tests take a shared lock: clusters on a small machine at once would
//! only measure the scheduler.

use std::time::{Duration, Instant};

use isthmus_client::placement::{Member, Rings};
use isthmus_client::wire::Context;
use isthmus_client::{Client, PutItem, RequestOptions};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)]
#[path = "../client/examples/cart.rs"]
mod cart;
#[allow(dead_code)]
#[path = "../client/examples/conditional.rs"]
mod conditional;
#[allow(dead_code)]
#[path = "../client/examples/counter.rs"]
mod counter;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEYSPACE: &str = "carts";

async fn one_dc(nodes: usize) -> LocalCluster {
    let spec = ClusterSpec::new(&["dc1"], nodes);
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(nodes, "one dc").await.unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_against_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = one_dc(3).await;
    let seed = cluster.seed().to_owned();
    cart::run(&seed, KEYSPACE).await.expect("the cart example");
    counter::run(&seed, KEYSPACE)
        .await
        .expect("the counter example");
    conditional::run(&seed, KEYSPACE)
        .await
        .expect("the conditional example");
    // And they fail when the cluster does not hold what they expect: a
    // keyspace that does not exist.
    assert!(cart::run(&seed, "no-such-keyspace").await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_300_keys_on_three_nodes_answer_in_input_order() {
    let _serial = SERIAL.lock().await;
    let cluster = one_dc(3).await;
    let client = Client::builder()
        .seed(cluster.seed())
        .local_dc("dc1")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("batch-{i}").into_bytes())
        .collect();
    // The batch's keys go to every node first (their primaries differ).
    let firsts: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|k| client.route(k, None)[0].clone())
        .collect();
    assert_eq!(firsts.len(), 3, "{firsts:?}");

    let mut items: Vec<PutItem> = keys
        .iter()
        .map(|k| {
            PutItem::new(
                k.clone(),
                k.iter().rev().copied().collect(),
                Context::default(),
            )
        })
        .collect();
    // One item too large for the node: it fails alone.
    items[150].key = vec![b'k'; 64 * 1024];
    let started = Instant::now();
    let written = client.put_many(KEYSPACE, &items).await.unwrap();
    let put_took = started.elapsed();
    assert_eq!(written.len(), 300);
    for (i, result) in written.iter().enumerate() {
        if i == 150 {
            assert!(result.is_err(), "an oversized key is refused");
        } else {
            result.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
        }
    }
    let started = Instant::now();
    let reads = client
        .get_many_with(
            KEYSPACE,
            &keys,
            &RequestOptions::new().deadline(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let get_took = started.elapsed();
    assert_eq!(reads.len(), 300);
    for (i, (key, read)) in keys.iter().zip(&reads).enumerate() {
        let read = read.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
        if i == 150 {
            assert!(read.siblings.is_empty(), "the refused write left nothing");
        } else {
            let expected: Vec<u8> = key.iter().rev().copied().collect();
            assert_eq!(read.siblings.len(), 1, "item {i}");
            assert_eq!(read.siblings[0].value, expected, "item {i} out of order");
        }
    }
    // For comparison (printed, not asserted): the same reads one by one.
    let started = Instant::now();
    for key in &keys {
        client.get(KEYSPACE, key).await.unwrap();
    }
    let one_by_one = started.elapsed();
    println!(
        "300 keys on 3 nodes: put_many {put_took:?}, get_many {get_took:?}, \
         300 sequential gets {one_by_one:?}"
    );
    cluster.shutdown().await;
}

/// `GET path` on an operations listener (plain HTTP in these clusters).
async fn http_get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8(answer).unwrap()
}

/// Reads a node coordinated, from its metrics.
async fn gets_coordinated(cluster: &LocalCluster, id: &str) -> f64 {
    http_get(cluster.ops_addr(id), "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("isthmus_requests_total{") && l.contains("op=\"get\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_the_cluster_is_used_without_a_failure_first() {
    let _serial = SERIAL.lock().await;
    let mut cluster = one_dc(3).await;
    let client = Client::builder()
        .seed(cluster.seed())
        .local_dc("dc1")
        .refresh_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    for i in 0..20u8 {
        client
            .put(KEYSPACE, &[i], vec![i], &Context::default())
            .await
            .unwrap();
    }
    assert_eq!(client.nodes().len(), 3);
    let generation = client.topology_generation();

    // A fourth node joins; the client makes no request meanwhile.
    let added = cluster.start_node("dc1", 3).await.unwrap().addr.clone();
    let id = cluster.node_id("dc1", 3);
    let started = Instant::now();
    loop {
        let normal = client
            .nodes()
            .iter()
            .any(|n| n.node_id == id && n.up && n.status == "Normal");
        if normal {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the client never learned of {id}: {:?}",
            client.nodes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client.topology_generation() > generation);

    // Keys whose primary replica is now the new node go to it first.
    let keys: Vec<Vec<u8>> = (0..400u32)
        .map(|i| format!("after-{i}").into_bytes())
        .filter(|k| client.route(k, None)[0] == added)
        .collect();
    assert!(!keys.is_empty(), "the new node is no key's primary");
    let before = gets_coordinated(&cluster, &id).await;
    for key in &keys {
        client.get(KEYSPACE, key).await.unwrap();
    }
    let after = gets_coordinated(&cluster, &id).await;
    assert!(
        after - before >= keys.len() as f64,
        "{id} coordinated {} of {} reads routed to it",
        after - before,
        keys.len()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_keys_primary_down_its_next_replica_in_walk_order_serves_it() {
    let _serial = SERIAL.lock().await;
    let mut cluster = one_dc(4).await;
    let client = Client::builder()
        .seed(cluster.seed())
        .local_dc("dc1")
        .timeout(Duration::from_secs(5))
        .retries(4)
        .build()
        .await
        .unwrap();
    let id_of = |addr: &str| {
        client
            .nodes()
            .into_iter()
            .find(|n| n.addr == addr)
            .map(|n| n.node_id)
            .unwrap()
    };
    // The nodes' own replica order (core's placement test shows the
    // client's `Rings` walk is the ring's), independent of the client's
    // routing: keys whose primary is one node (not the seed, which stays
    // up), each with its second replica.
    let rings = Rings::build(client.nodes().into_iter().map(|n| Member {
        node_id: n.node_id,
        dc: n.dc,
        rack: n.rack,
        vnodes: n.vnodes,
    }));
    let seed_id = id_of(cluster.seed());
    let all: Vec<Vec<u8>> = (0..400u32)
        .map(|i| format!("failover-{i}").into_bytes())
        .collect();
    let down = all
        .iter()
        .map(|k| rings.walk_all("dc1", k)[0].to_owned())
        .find(|id| *id != seed_id)
        .unwrap();
    let keys: Vec<(Vec<u8>, String)> = all
        .iter()
        .filter_map(|k| {
            let walk = rings.walk_all("dc1", k);
            (walk[0] == down).then(|| (k.clone(), walk[1].to_owned()))
        })
        .collect();
    for (key, _) in &keys {
        client
            .put(KEYSPACE, key, b"v".to_vec(), &Context::default())
            .await
            .unwrap();
    }
    let live: Vec<String> = client
        .nodes()
        .into_iter()
        .map(|n| n.node_id)
        .filter(|id| *id != down)
        .collect();
    cluster.stop_node(&down).await;
    let mut before = std::collections::BTreeMap::new();
    for id in &live {
        before.insert(id.clone(), gets_coordinated(&cluster, id).await);
    }
    for (key, _) in &keys {
        let read = client.get(KEYSPACE, key).await.unwrap();
        assert_eq!(read.siblings.len(), 1);
    }
    // Each read went to its key's second replica in walk order: every
    // node coordinated exactly the reads whose second replica it is.
    for id in &live {
        let expected = keys.iter().filter(|(_, second)| second == id).count() as f64;
        let got = gets_coordinated(&cluster, id).await - before[id];
        assert_eq!(got, expected, "{id}: {got} reads, {expected} expected");
    }
    cluster.shutdown().await;
}
