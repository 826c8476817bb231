//! Expiries across datacenters, on an in-process cluster (real sockets,
//! real data directories, the bridge over the simulated WAN): a value
//! written in DC1 with a TTL reaches DC2 with the same absolute expiry on
//! every replica, and is gone from both DCs once it passes (get, scan,
//! `put_if_absent`), while a value written without one stays.

use std::time::{Duration, Instant};

use isthmus_client::wire::{Consistency, Context, Expiry};
use isthmus_client::{Client, ClientError};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

const KEYSPACE: &str = "carts";

async fn connect(cluster: &LocalCluster, dc: &str) -> Client {
    let mut builder = Client::builder()
        .seed(cluster.addrs(dc)[0].clone())
        .local_dc(dc)
        .retries(3)
        .consistency(Consistency::LocalQuorum);
    if let Some(material) = cluster.client_material() {
        builder = builder.tls(material).credentials(
            cluster
                .connect_options("ttl")
                .credentials
                .expect("a TLS cluster logs in"),
        );
    }
    builder.build().await.unwrap()
}

async fn scan_all(client: &Client) -> Vec<Vec<u8>> {
    let mut scan = client.scan(KEYSPACE, 100);
    let mut keys = Vec::new();
    while let Some(page) = scan.next_page().await.unwrap() {
        keys.extend(page);
    }
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_written_with_a_ttl_in_dc1_expires_in_dc2_too() {
    let spec = ClusterSpec::new(&["dc1", "dc2"], 3);
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(6, "two dcs").await.unwrap();
    let dc1 = connect(&cluster, "dc1").await;
    let dc2 = connect(&cluster, "dc2").await;
    const TTL_MS: u64 = 4_000;
    let written = Instant::now();
    dc1.put_with_expiry(
        KEYSPACE,
        b"short",
        b"gone soon".to_vec(),
        &Context::default(),
        Expiry::AfterMs(TTL_MS),
    )
    .await
    .unwrap();
    dc1.put(KEYSPACE, b"forever", b"stays".to_vec(), &Context::default())
        .await
        .unwrap();
    let in_dc1 = dc1.get(KEYSPACE, b"short").await.unwrap();
    assert_eq!(in_dc1.siblings.len(), 1, "{:?}", in_dc1.siblings);
    let expires = in_dc1.siblings[0]
        .expires_ms
        .expect("the read shows the expiry");
    let now = isthmus_core::wall_clock::now_ms();
    assert!(
        expires > now && expires <= now + TTL_MS,
        "expiry {expires} not within the TTL of {now}"
    );

    // DC2 receives it through the bridge, with the same absolute expiry
    // on every replica of both DCs.
    loop {
        let sets = cluster.sets(b"short").await.unwrap();
        let holding: Vec<Option<u64>> = sets
            .values()
            .filter(|s| !s.is_empty())
            .map(|s| s.versions()[0].expires_ms)
            .collect();
        if holding.len() == 6 {
            assert!(holding.iter().all(|&e| e == Some(expires)), "{sets:?}");
            break;
        }
        assert!(
            written.elapsed() < Duration::from_millis(TTL_MS - 500),
            "DC2 did not receive the value before it expired: {sets:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_dc2 = dc2.get(KEYSPACE, b"short").await.unwrap();
    assert_eq!(in_dc2.siblings.len(), 1);
    assert_eq!(in_dc2.siblings[0].expires_ms, Some(expires));
    assert!(scan_all(&dc2).await.contains(&b"short".to_vec()));

    // Past the expiry: gone in both DCs, to reads, scans and put_if_absent
    // alike; the value without an expiry stays.
    let left = expires.saturating_sub(isthmus_core::wall_clock::now_ms());
    tokio::time::sleep(Duration::from_millis(left + 100)).await;
    for (dc, client) in [("dc1", &dc1), ("dc2", &dc2)] {
        let read = client.get(KEYSPACE, b"short").await.unwrap();
        assert!(
            read.siblings.is_empty(),
            "{dc} still reads {:?}",
            read.siblings
        );
        let forever = client.get(KEYSPACE, b"forever").await.unwrap();
        assert_eq!(forever.siblings.len(), 1, "{dc}");
        assert_eq!(forever.siblings[0].expires_ms, None);
        assert_eq!(scan_all(client).await, vec![b"forever".to_vec()], "{dc}");
    }
    // The replicas still hold the expired version (compaction purges it
    // only after the tombstone grace); a write in DC2 that needs the key
    // absent goes in.
    match dc2
        .put_if_absent(KEYSPACE, b"short", b"again".to_vec())
        .await
    {
        Ok(()) => {}
        Err(ClientError::ConditionFailed { siblings, .. }) => {
            panic!("an expired value counted as present: {siblings:?}")
        }
        Err(e) => panic!("{e}"),
    }
    let again = dc2.get(KEYSPACE, b"short").await.unwrap();
    assert_eq!(again.siblings.len(), 1);
    assert_eq!(again.siblings[0].value, b"again");
    assert_eq!(again.siblings[0].expires_ms, None);
    cluster.shutdown().await;
}
