//! The operations listener of every node of a two-DC cluster (in one
//! process, nodes composed as `isthmus server` composes them, the bridge
//! over the simulated WAN): `/metrics` under a little load shows requests
//! counted by operation, keyspace, level and outcome, the bridge's shipped
//! records and a filled lag histogram in the other DC, gossip's members
//! and peer connections; `/healthz` answers 200; `/readyz` answers 200 on
//! a joined node, 503 with its reason on a node that has heard from no
//! peer, and 503 on a decommissioned node. It prints how long a scrape of
//! a busy node takes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use isthmus_client::wire::{
    Consistency, Context, RegistryRequest, RegistryResponse, RequestBody, ResponseBody, WriteId,
};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr` over HTTP/1.1: the status, the headers and the
/// body.
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8(answer).expect("utf-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_owned(), body.to_owned())
}

/// A scrape's samples: series (name and labels, as written) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, head, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "an OpenMetrics scrape ends with # EOF"
    );
    samples(&body)
}

/// The sum of every series of `name` whose labels include all of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(
    cluster: &LocalCluster,
    addr: &str,
    key: &[u8],
    keyspace: &str,
) -> Result<ResponseBody, isthmus_client::ClientError> {
    let session = cluster.session(addr, "ops-test").await.expect("session");
    let put = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: keyspace.into(),
        key: key.to_vec(),
        value: b"v".to_vec(),
        context: Context::default(),
        consistency: Some(Consistency::LocalQuorum),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    session.call(put, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_health_and_readiness_of_every_node_of_two_dcs() {
    let mut cluster = LocalCluster::start(
        ClusterSpec::new(&["dc1", "dc2"], 2),
        Root::temporary().unwrap(),
    )
    .await
    .unwrap();
    let ids: Vec<String> = cluster.nodes.keys().cloned().collect();
    for id in &ids {
        let addr = cluster.ops_addr(id).to_owned();
        assert_ne!(
            addr,
            cluster.node(id).addr,
            "a port apart from the data port"
        );
        let (status, _, body) = get(&addr, "/healthz").await;
        assert_eq!(status, 200, "{id} /healthz: {body}");
        until(&format!("{id} ready"), async || {
            get(&addr, "/readyz").await.0 == 200
        })
        .await;
    }

    // A little load through one node of dc1.
    let coordinator = cluster.node("dc1-n0").addr.clone();
    const WRITES: usize = 40;
    for i in 0..WRITES {
        let answer = put(&cluster, &coordinator, format!("k{i}").as_bytes(), "carts").await;
        assert!(matches!(answer, Ok(ResponseBody::Written)), "{answer:?}");
    }
    let unknown = put(&cluster, &coordinator, b"k", "no-such-keyspace").await;
    assert!(unknown.is_err(), "{unknown:?}");

    let ops = |id: &str| cluster.ops_addr(id).to_owned();
    let m = scrape(&ops("dc1-n0")).await;
    let ok_puts = "isthmus_requests_total{op=\"put\",keyspace=\"carts\",level=\"LOCAL_QUORUM\",outcome=\"ok\"}";
    assert_eq!(m.get(ok_puts), Some(&(WRITES as f64)), "{m:#?}");
    assert_eq!(
        sum(
            &m,
            "isthmus_request_duration_seconds_count",
            &["op=\"put\"", "keyspace=\"carts\""]
        ),
        WRITES as f64
    );
    assert!(
        sum(
            &m,
            "isthmus_request_duration_seconds_bucket",
            &["op=\"put\"", "le=\"+Inf\""]
        ) >= WRITES as f64
    );
    assert_eq!(
        sum(
            &m,
            "isthmus_requests_total",
            &["keyspace=\"-\"", "op=\"put\""]
        ),
        1.0,
        "an unknown keyspace is counted under `-`, not as a label of its own"
    );
    assert!(!m.keys().any(|s| s.contains("no-such-keyspace")));
    assert!(sum(&m, "isthmus_engine_user_written_bytes_total", &[]) > 0.0);
    assert_eq!(
        sum(
            &m,
            "isthmus_gossip_members",
            &["dc=\"dc2\"", "status=\"normal\"", "up=\"true\""]
        ),
        2.0
    );
    assert!(sum(&m, "isthmus_connections", &["role=\"peer\""]) >= 1.0);
    assert_eq!(sum(&m, "isthmus_node_ready", &[]), 1.0);
    assert!(sum(&m, "isthmus_workers", &["name=\"gossip\""]) == 1.0);

    // The JSON API: this node's view of both DCs.
    let (status, head, body) = get(&ops("dc1-n0"), "/api/v1/overview").await;
    assert_eq!(status, 200, "{head}");
    let overview: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(overview["node"]["id"], "dc1-n0");
    assert_eq!(overview["node"]["ready"], true);
    let dcs = overview["dcs"].as_array().expect("dcs");
    let names: Vec<&str> = dcs.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["dc1", "dc2"]);
    for dc in dcs {
        let nodes = dc["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 2, "{dc}");
        assert!(
            nodes
                .iter()
                .all(|n| n["up"] == true && n["status"] == "Normal"),
            "{dc}"
        );
    }
    assert_eq!(overview["bridges"][0]["remote_dc"], "dc2");
    let (status, head, page) = get(&ops("dc2-n1"), "/").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(page.contains("api/v1/overview"), "the page reads the API");

    // Across the WAN: dc1 ships, dc2 applies and records the lag.
    until("dc1 ships every write to dc2", async || {
        let mut shipped = 0.0;
        for id in ["dc1-n0", "dc1-n1"] {
            shipped += sum(
                &scrape(&ops(id)).await,
                "isthmus_bridge_shipped_records_total",
                &["remote_dc=\"dc2\""],
            );
        }
        shipped >= WRITES as f64
    })
    .await;
    until("dc2 records the lag of dc1's writes", async || {
        let mut lagged = 0.0;
        for id in ["dc2-n0", "dc2-n1"] {
            lagged += sum(
                &scrape(&ops(id)).await,
                "isthmus_bridge_lag_seconds_count",
                &["from_dc=\"dc1\"", "to_dc=\"dc2\""],
            );
        }
        lagged >= 1.0
    })
    .await;
    let dc2 = scrape(&ops("dc2-n0")).await;
    let bucket_le_5s = sum(
        &dc2,
        "isthmus_bridge_lag_seconds_bucket",
        &["from_dc=\"dc1\"", "le=\"5.0\""],
    );
    let count = sum(
        &dc2,
        "isthmus_bridge_lag_seconds_count",
        &["from_dc=\"dc1\""],
    );
    assert!(bucket_le_5s <= count, "buckets are cumulative");

    // How long a scrape of a busy node takes: writes keep coming while
    // the node is scraped.
    let busy = ops("dc1-n0");
    let session = std::sync::Arc::new(cluster.session(&coordinator, "ops-load").await.unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let (session, stop) = (session.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let put = RequestBody::Put {
                        mode: isthmus_client::wire::WriteMode::Context,
                        keyspace: "carts".into(),
                        key: format!("load{w}-{i}").into_bytes(),
                        value: vec![7; 100],
                        context: Context::default(),
                        consistency: Some(Consistency::LocalQuorum),
                        write_id: WriteId(rand::random()),
                        expiry: Default::default(),
                        sloppy: None,
                    };
                    let _ = session.call(put, Duration::from_secs(5)).await;
                    i += 1;
                }
                i
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut took = Vec::new();
    let mut bytes = 0;
    for _ in 0..50 {
        let started = Instant::now();
        let (status, _, body) = get(&busy, "/metrics").await;
        took.push(started.elapsed());
        assert_eq!(status, 200);
        bytes = body.len();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await.unwrap();
    }
    took.sort();
    println!(
        "scrape of a busy node (8 writers, {writes} writes in all, {bytes} bytes of text): \
         median {:?}, p90 {:?}, max {:?} over {} scrapes",
        took[took.len() / 2],
        took[took.len() * 9 / 10],
        took[took.len() - 1],
        took.len()
    );

    // A node that has heard from no peer is alive but not ready.
    let mut lonely = cluster.node_config("dc1", 5);
    lonely.seeds = vec!["127.0.0.1:9".into()];
    let lonely_ops = {
        let node = cluster.start_with(lonely).await.unwrap();
        node.ops_addr.clone().expect("an ops listener")
    };
    assert_eq!(get(&lonely_ops, "/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _, body) = get(&lonely_ops, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"ready\":false") && body.contains("not joined"),
        "{body}"
    );
    assert_eq!(
        sum(&scrape(&lonely_ops).await, "isthmus_node_ready", &[]),
        0.0
    );
    cluster.stop_node("dc1-n5").await;

    // A decommissioned node is not ready either.
    cluster.start_node("dc1", 2).await.unwrap();
    cluster.wait_alive(5, "a third node in dc1").await.unwrap();
    let leaving = cluster.ops_addr("dc1-n2").to_owned();
    until("dc1-n2 ready", async || {
        get(&leaving, "/readyz").await.0 == 200
    })
    .await;
    let admin = cluster
        .session(&cluster.node("dc1-n2").addr.clone(), "ops-admin")
        .await
        .unwrap();
    let started = admin
        .call(RequestBody::Decommission, Duration::from_secs(60))
        .await;
    // While it runs, and after, the operations listener lists it.
    let a = &admin;
    let done = isthmus_testkit::operation::finished(
        move |b| a.call(b, Duration::from_secs(5)),
        started,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        done.state,
        isthmus_client::wire::OperationState::Done,
        "{done:?}"
    );
    let (status, _, body) = get(&leaving, "/api/v1/operations").await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = listed["operations"].as_array().expect("an array");
    let decommission = listed
        .iter()
        .find(|o| o["id"] == done.id)
        .unwrap_or_else(|| panic!("{} not listed in {body}", done.id));
    assert_eq!(decommission["kind"], "decommission", "{body}");
    assert_eq!(decommission["state"], "done", "{body}");
    assert_eq!(decommission["ranges_total"], done.ranges_total, "{body}");
    assert_eq!(
        decommission["progress"]["ranges"], done.progress.ranges,
        "{body}"
    );
    let (status, _, body) = get(&leaving, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("decommissioned"), "{body}");
    cluster.shutdown().await;
}

/// A blind put of `value` to `key` of `carts` through `addr`.
async fn put_value(cluster: &LocalCluster, addr: &str, key: &[u8], value: &[u8]) {
    let session = cluster
        .session(addr, "ops-conflicts")
        .await
        .expect("session");
    let put = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context: Context::default(),
        consistency: Some(Consistency::LocalQuorum),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    let answer = session.call(put, Duration::from_secs(10)).await;
    assert!(matches!(answer, Ok(ResponseBody::Written)), "{answer:?}");
}

/// The sum of `name` with `labels` over every node of the cluster.
async fn cluster_sum(cluster: &LocalCluster, name: &str, labels: &[&str]) -> f64 {
    let mut total = 0.0;
    for id in cluster.nodes.keys() {
        total += sum(&scrape(cluster.ops_addr(id)).await, name, labels);
    }
    total
}

/// Concurrent writes of the same keys in two DCs are counted as siblings
/// per origin-DC pair on every replica, exactly once each; a resolver
/// that traps, bound afterwards, has its failures counted by class and
/// resolver on the nodes that tried to merge, and no merge is counted
/// for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicts_merges_and_merge_failures_are_counted_per_dc_pair_and_class() {
    let cluster = LocalCluster::start(
        ClusterSpec::new(&["dc1", "dc2"], 2),
        Root::temporary().unwrap(),
    )
    .await
    .unwrap();
    let dc1 = cluster.node("dc1-n0").addr.clone();
    let dc2 = cluster.node("dc2-n0").addr.clone();
    // Two replicas per DC, so every node holds every key; each ends with
    // one sibling from each DC, created once on each node.
    const KEYS: usize = 12;
    for i in 0..KEYS {
        let key = format!("conflict{i}");
        put_value(&cluster, &dc1, key.as_bytes(), b"from dc1").await;
        put_value(&cluster, &dc2, key.as_bytes(), b"from dc2").await;
    }
    let cross = async || {
        cluster_sum(
            &cluster,
            "isthmus_conflict_siblings_total",
            &[
                "keyspace=\"carts\"",
                "origin_dc=\"dc1\"",
                "sibling_dc=\"dc2\"",
            ],
        )
        .await
            + cluster_sum(
                &cluster,
                "isthmus_conflict_siblings_total",
                &[
                    "keyspace=\"carts\"",
                    "origin_dc=\"dc2\"",
                    "sibling_dc=\"dc1\"",
                ],
            )
            .await
    };
    let expected = (KEYS * cluster.nodes.len()) as f64;
    until(
        "every node counts each key's cross-DC sibling",
        async || cross().await >= expected,
    )
    .await;
    // Settled (the bridge's deliveries and read repair may still arrive:
    // they change nothing and must count nothing).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cross().await, expected, "once per key and node");
    for dc in ["dc1", "dc2"] {
        let same = format!("origin_dc=\"{dc}\"");
        let beside = format!("sibling_dc=\"{dc}\"");
        assert_eq!(
            cluster_sum(
                &cluster,
                "isthmus_conflict_siblings_total",
                &[same.as_str(), beside.as_str()],
            )
            .await,
            0.0,
            "no sibling within {dc}"
        );
    }

    // A resolver that traps on every merge, bound to the keyspace: reads
    // of the keys try to merge their siblings and fail, counted by class.
    let trap = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64) unreachable))"#,
    )
    .expect("WAT parses");
    let hash: String = isthmus_resolvers::host::module_hash(&trap)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let session = cluster.session(&dc1, "ops-registry").await.unwrap();
    let registry = |request| RequestBody::Registry(request);
    let uploaded = session
        .call(
            registry(RegistryRequest::Upload {
                name: "trap".into(),
                version: 1,
                module: trap,
                force: true,
            }),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(
            uploaded,
            Ok(ResponseBody::Registry(RegistryResponse::Uploaded(_)))
        ),
        "{uploaded:?}"
    );
    let attached = session
        .call(
            registry(RegistryRequest::Attach {
                keyspace: "carts".into(),
                name: "trap".into(),
                version: 1,
            }),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        matches!(
            attached,
            Ok(ResponseBody::Registry(RegistryResponse::Bound(_)))
        ),
        "{attached:?}"
    );
    let trap_label = format!("resolver=\"{hash}\"");
    let ops = cluster.ops_addr("dc1-n0").to_owned();
    until("dc1-n0 counts the resolver's traps", async || {
        for i in 0..KEYS {
            let get = RequestBody::Get {
                keyspace: "carts".into(),
                key: format!("conflict{i}").into_bytes(),
                consistency: Some(Consistency::LocalQuorum),
            };
            let answer = session.call(get, Duration::from_secs(10)).await;
            assert!(
                matches!(answer, Ok(ResponseBody::Value { .. })),
                "{answer:?}"
            );
        }
        let m = scrape(&ops).await;
        sum(
            &m,
            "isthmus_merge_failures_total",
            &["keyspace=\"carts\"", "class=\"trap\"", trap_label.as_str()],
        ) >= KEYS as f64
    })
    .await;
    let m = scrape(&ops).await;
    assert_eq!(
        sum(&m, "isthmus_merges_total", &[trap_label.as_str()]),
        0.0,
        "a resolver that traps merges nothing"
    );
    cluster.shutdown().await;
}
