//! Sloppy quorums, on an in-process cluster (real sockets, real data
//! directories): one DC of five nodes, keyspaces at RF 3, two nodes
//! stopped. In `carts` (`sloppy_quorum = true`) every LOCAL_QUORUM write
//! succeeds: for keys with two replicas down, live nodes further along the
//! ring take their copies as hints and count in their place. In `strict`
//! (the default) the same writes of those keys fail. Once the two nodes
//! return, the stand-ins' hints reach them: every key of `carts` is on all
//! three of its replicas, none lost, with no read or repair in between.
//! A request overrides its keyspace's choice either way: a write that asks
//! for a sloppy quorum in `strict` succeeds and is handed off alike, and
//! one that asks for a strict quorum in `carts` fails exactly where
//! `strict` does.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use isthmus_client::wire::Consistency;
use isthmus_client::{Client, RequestOptions};
use isthmus_core::config::NodeConfig;
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

/// `carts` takes sloppy quorums; `strict`, a copy of it, does not.
fn sloppy(config: &mut NodeConfig) {
    let carts = config
        .keyspaces
        .get_mut("carts")
        .expect("the spec's keyspace");
    carts.sloppy_quorum = true;
    let mut strict = carts.clone();
    strict.sloppy_quorum = false;
    config.keyspaces.insert("strict".into(), strict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sloppy_quorum_writes_through_two_replicas_down_and_hands_off() {
    let spec = ClusterSpec {
        configure: Some(sloppy),
        ..ClusterSpec::new(&["dc1"], 5)
    };
    let mut cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(5, "five nodes").await.unwrap();
    let (down_a, down_b) = (cluster.node_id("dc1", 3), cluster.node_id("dc1", 4));
    cluster.stop_node(&down_a).await;
    cluster.stop_node(&down_b).await;
    cluster.wait_alive(3, "two stopped").await.unwrap();

    let addrs: Vec<String> = cluster.addrs("dc1");
    let client = addrs
        .iter()
        .fold(Client::builder(), |b, a| b.seed(a.clone()))
        .local_dc("dc1")
        .retries(1)
        .consistency(Consistency::LocalQuorum)
        .build()
        .await
        .unwrap();
    const KEYS: usize = 200;
    let mut strict_failed = BTreeSet::new();
    let mut asked_strict_failed = BTreeSet::new();
    let asked_sloppy = RequestOptions::new().sloppy(true);
    let asked_strict = RequestOptions::new().sloppy(false);
    for i in 0..KEYS {
        let key = format!("key-{i}").into_bytes();
        let value = format!("value-{i}").into_bytes();
        client
            .put("carts", &key, value.clone(), &Default::default())
            .await
            .unwrap_or_else(|e| panic!("a sloppy write of key-{i} failed: {e}"));
        if client
            .put("strict", &key, value.clone(), &Default::default())
            .await
            .is_err()
        {
            strict_failed.insert(i);
        }
        client
            .put_with(
                "strict",
                &key,
                value.clone(),
                &Default::default(),
                &asked_sloppy,
            )
            .await
            .unwrap_or_else(|e| {
                panic!("a write of key-{i} asking for a sloppy quorum failed: {e}")
            });
        if client
            .put_with("carts", &key, value, &Default::default(), &asked_strict)
            .await
            .is_err()
        {
            asked_strict_failed.insert(i);
        }
    }
    eprintln!(
        "{KEYS} sloppy writes succeeded; {} of the same writes to the strict keyspace failed",
        strict_failed.len()
    );
    // Some keys (37 of 200 in one run) have both stopped nodes among their three
    // replicas: the strict keyspace cannot write those.
    assert!(
        strict_failed.len() >= 20,
        "only {} strict writes failed: the test never needed a stand-in",
        strict_failed.len()
    );
    assert_eq!(
        asked_strict_failed, strict_failed,
        "writes asking for a strict quorum in the sloppy keyspace fail where the strict keyspace's do"
    );

    cluster.start_node("dc1", 3).await.unwrap();
    cluster.start_node("dc1", 4).await.unwrap();
    cluster.wait_alive(5, "back").await.unwrap();
    // Hint handoff (every second) brings each key to its replicas.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut short = Vec::new();
    loop {
        short.clear();
        for keyspace in ["carts", "strict"] {
            for i in 0..KEYS {
                let key = format!("key-{i}").into_bytes();
                let held = cluster
                    .sets_in(keyspace, &key)
                    .await
                    .unwrap()
                    .values()
                    .filter(|set| {
                        set.live()
                            .any(|v| v.value_bytes() == Some(format!("value-{i}").as_bytes()))
                    })
                    .count();
                if held < 3 {
                    short.push((keyspace, i, held));
                }
            }
        }
        if short.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys not on three replicas after the nodes returned: {short:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.shutdown().await;
}
