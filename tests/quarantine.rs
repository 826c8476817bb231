//! The bridge's quarantine, in-process (the testkit's two-DC cluster): a
//! write to a keyspace the other datacenter does not have is refused
//! there for good. The sending node quarantines it, the DC pair moves on
//! (later writes arrive), `isthmus status` counts it, `isthmus bridge
//! quarantine list|export` show it, and once the keyspace exists in the
//! other datacenter, `replay` delivers it.

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus_client::Session;
use isthmus_client::wire::{
    BridgeReport, Consistency, Context, ErrorCode, QuarantineRequest, QuarantineResponse,
    RequestBody, ResponseBody, WriteId,
};
use isthmus_core::config::{KeyspaceSection, NodeConfig};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

/// A keyspace of both DCs, as the sending DC has it.
fn orders() -> KeyspaceSection {
    isthmus_testkit::config::keyspace(&[("dc1", 1), ("dc2", 1)])
}

/// Node `i` of `dc` as configured, on the address it had, with `orders`.
fn with_orders(cluster: &LocalCluster, dc: &str) -> NodeConfig {
    let id = cluster.node_id(dc, 0);
    let mut config = cluster.node_config(dc, 0);
    config.listen = cluster.node(&id).addr.clone();
    config.keyspaces.insert("orders".into(), orders());
    config
}

async fn restart(cluster: &mut LocalCluster, config: NodeConfig) {
    let id = config.node_id.clone();
    cluster.stop_node(&id).await;
    cluster.start_with(config).await.unwrap();
    cluster
        .wait_alive(2, "the restarted node back")
        .await
        .unwrap();
}

async fn put(session: &Session, keyspace: &str, key: &str, value: &str) {
    let body = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: keyspace.into(),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        context: Context::default(),
        consistency: Some(Consistency::LocalQuorum),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    match session.call(body, Duration::from_secs(5)).await.unwrap() {
        ResponseBody::Written => {}
        other => panic!("put {keyspace}/{key}: {other:?}"),
    }
}

/// The values of `key` a node of `dc` reads at LOCAL_ONE (none when
/// absent or when the node cannot serve the keyspace).
async fn values(session: &Session, keyspace: &str, key: &str) -> Vec<Vec<u8>> {
    let body = RequestBody::Get {
        keyspace: keyspace.into(),
        key: key.as_bytes().to_vec(),
        consistency: Some(Consistency::LocalOne),
    };
    match session.call(body, Duration::from_secs(5)).await {
        Ok(ResponseBody::Value { siblings, .. }) => siblings.into_iter().map(|s| s.value).collect(),
        _ => Vec::new(),
    }
}

async fn until(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

/// dc1's node's report on dc2.
fn toward_dc2(cluster: &LocalCluster) -> BridgeReport {
    let id = cluster.node_id("dc1", 0);
    cluster
        .node(&id)
        .coordinator()
        .bridge()
        .unwrap()
        .report()
        .into_iter()
        .find(|r| r.remote_dc == "dc2")
        .unwrap()
}

/// `isthmus ARGS...` (plaintext: the cluster runs without TLS), run to
/// completion off the async runtime; exit status, stdout, stderr.
async fn isthmus(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(args)
            .env_remove("ISTHMUS_CA")
            .env_remove("ISTHMUS_CERT")
            .env_remove("ISTHMUS_KEY")
            .output()
            .expect("running isthmus")
    })
    .await
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn cli(addr: &str, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["bridge", "quarantine"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    all.extend(["--addr".into(), addr.into(), "--insecure-plaintext".into()]);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_the_other_dc_refuses_is_quarantined_and_replayed_once_fixed() {
    let spec = ClusterSpec::new(&["dc1", "dc2"], 1);
    let mut cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    // dc1 gains keyspace `orders`, replicated to dc2, which lacks it.
    let config = with_orders(&cluster, "dc1");
    restart(&mut cluster, config).await;
    let (dc1, dc2) = (
        cluster.node(&cluster.node_id("dc1", 0)).addr.clone(),
        cluster.node(&cluster.node_id("dc2", 0)).addr.clone(),
    );
    let s1 = cluster.session(&dc1, "writer").await.unwrap();
    let s2 = cluster.session(&dc2, "reader").await.unwrap();

    put(&s1, "orders", "o1", "first order").await;
    put(&s1, "carts", "c1", "after the refused one").await;

    // The pair moves on: the cursor passes the refused record (before the
    // quarantine it never did: the batch was shipped again forever and
    // the backlog stayed at 2), and the later write arrives in dc2.
    until(
        "the cursor toward dc2 passes the refused record",
        30,
        async || cluster.backlog("dc2") == 0,
    )
    .await;
    until(
        "a write behind the refused one reaches dc2",
        30,
        async || values(&s2, "carts", "c1").await == vec![b"after the refused one".to_vec()],
    )
    .await;
    until("the refused record is counted", 10, async || {
        toward_dc2(&cluster).quarantine_held == 1
    })
    .await;
    let report = toward_dc2(&cluster);
    assert_eq!(report.quarantined, 1);
    assert_eq!(report.quarantine_overflows, 0);
    assert!(!report.full_sync_pending);
    // A write shipped in a later batch arrives too.
    put(&s1, "carts", "c2", "later still").await;
    until("a later batch reaches dc2", 30, async || {
        values(&s2, "carts", "c2").await == vec![b"later still".to_vec()]
    })
    .await;

    // Listed through the wire protocol...
    let list = RequestBody::Quarantine(QuarantineRequest::List {
        dc: None,
        after: None,
        records: false,
    });
    let records = match s1.call(list, Duration::from_secs(5)).await.unwrap() {
        ResponseBody::Quarantine(QuarantineResponse::Listing { records, next }) => {
            assert_eq!(next, None);
            records
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(records.len(), 1);
    let held = &records[0];
    assert_eq!(
        (
            held.dc.as_str(),
            held.keyspace.as_str(),
            held.key.as_slice()
        ),
        ("dc2", "orders", b"o1".as_slice())
    );
    assert_eq!(held.code, ErrorCode::BadRequest);
    assert!(held.message.contains("orders"), "{}", held.message);
    assert_eq!(held.value_bytes, "first order".len() as u64);

    // ...and by the command line: list, export, status.
    let (ok, listing, err) = isthmus(cli(&dc1, &["list"])).await;
    assert!(ok, "{err}");
    assert!(
        listing.contains("orders") && listing.contains("o1") && listing.contains("BAD_REQUEST"),
        "{listing}"
    );
    let export = cluster.root().join("quarantine.jsonl");
    let (ok, _, err) = isthmus(cli(
        &dc1,
        &["export", "--dc", "dc2", "--out", export.to_str().unwrap()],
    ))
    .await;
    assert!(ok, "{err}");
    let lines = std::fs::read_to_string(&export).unwrap();
    let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(line["keyspace"], "orders");
    assert_eq!(line["key"], "o1");
    assert!(line["record_hex"].as_str().is_some_and(|h| h.len() > 40));
    let (ok, out, err) = isthmus(vec![
        "status".into(),
        "--addr".into(),
        dc1.clone(),
        "--insecure-plaintext".into(),
        "--json".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dc2_link: BTreeMap<String, serde_json::Value> = status["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["remote_dc"].as_str().unwrap().to_owned(), b.clone()))
        .collect();
    assert_eq!(dc2_link["dc2"]["quarantine_held"], 1);

    // The operator creates the keyspace in dc2 and replays.
    let config = with_orders(&cluster, "dc2");
    restart(&mut cluster, config).await;
    assert!(
        values(&s2_session(&cluster).await, "orders", "o1")
            .await
            .is_empty()
    );
    let (ok, out, err) = isthmus(cli(&dc1, &["replay", "--dc", "dc2", "--all"])).await;
    assert!(ok, "{err}");
    assert_eq!(out, "replayed 1 record(s) to dc2\n");
    let s2 = s2_session(&cluster).await;
    until("the replayed record reaches dc2", 30, async || {
        values(&s2, "orders", "o1").await == vec![b"first order".to_vec()]
    })
    .await;
    let report = toward_dc2(&cluster);
    assert_eq!(report.quarantine_held, 0);
    assert_eq!(report.quarantined, 1);
    let (_, out, _) = isthmus(cli(&dc1, &["list"])).await;
    assert_eq!(out, "no quarantined records\n");
    cluster.shutdown().await;
}

async fn s2_session(cluster: &LocalCluster) -> Session {
    let addr = cluster.node(&cluster.node_id("dc2", 0)).addr.clone();
    cluster.session(&addr, "reader").await.unwrap()
}
