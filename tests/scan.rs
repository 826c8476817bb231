//! A scan of a whole keyspace on a cluster of in-process nodes: 100,000
//! keys on three nodes at RF 2 (so a range's pages come from a replica
//! that may be another node than the one serving the page), some deleted;
//! a node stopped in the middle of the scan. The scan still returns every
//! live key, and no deleted one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use isthmus_client::Client;
use isthmus_client::wire::{Context, ScanCursor};
use isthmus_testkit::{ClusterSpec, LocalCluster, NodeKind, Root};

const KEYS: usize = 100_000;
const WRITERS: usize = 64;
const PAGE: u32 = 1_000;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// Keys deleted after they were written (tombstones the scan skips).
fn deleted(i: usize) -> bool {
    i % 1_000 == 7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_100k_keys_returns_every_key_with_a_node_stopped_midway() {
    let spec = ClusterSpec {
        kind: NodeKind::Bare,
        configure: Some(|c| {
            for ks in c.keyspaces.values_mut() {
                ks.replication = [("dc1".to_owned(), 2)].into_iter().collect();
            }
        }),
        ..ClusterSpec::new(&["dc1"], 3)
    };
    let mut cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    let client = Client::builder()
        .seed(cluster.seed())
        .local_dc("dc1")
        .timeout(Duration::from_secs(10))
        .retries(6)
        .build()
        .await
        .unwrap();

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            for i in (w..KEYS).step_by(WRITERS) {
                client
                    .put("carts", &key(i), b"v".to_vec(), &Context::default())
                    .await
                    .unwrap_or_else(|e| panic!("writing key {i}: {e}"));
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let wrote = started.elapsed();
    for i in (0..KEYS).filter(|&i| deleted(i)) {
        let read = client.get("carts", &key(i)).await.unwrap();
        client
            .delete("carts", &key(i), &read.context)
            .await
            .unwrap();
    }
    let live: BTreeSet<Vec<u8>> = (0..KEYS).filter(|&i| !deleted(i)).map(key).collect();

    let started = Instant::now();
    let mut scan = client.scan("carts", PAGE);
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    let (mut returned, mut pages) = (0usize, 0usize);
    let mut stopped = None;
    while let Some(page) = scan.next_page().await.unwrap() {
        pages += 1;
        returned += page.len();
        seen.extend(page);
        if stopped.is_none() && returned >= KEYS / 3 {
            let id = cluster.node_id("dc1", 1);
            cluster.stop_node(&id).await;
            stopped = Some((id, returned));
        }
    }
    let scanned = started.elapsed();
    assert!(scan.cursor() == ScanCursor::START, "the scan ended at 0");
    let (id, at) = stopped.expect("the scan got a third of the way");
    println!(
        "{KEYS} keys written by {WRITERS} writers in {:.1} s; scanned in {:.1} s: \
         {pages} pages, {returned} keys returned ({} distinct), node {id} stopped after {at}",
        wrote.as_secs_f64(),
        scanned.as_secs_f64(),
        seen.len()
    );
    let missing: Vec<_> = live.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} live keys missing, such as {missing:?}",
        live.difference(&seen).count()
    );
    let back: Vec<_> = seen.difference(&live).take(5).collect();
    assert!(
        back.is_empty(),
        "deleted or unknown keys returned: {back:?}"
    );
    cluster.shutdown().await;
}
