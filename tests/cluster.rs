//! A five-node cluster of real `isthmus server` processes on 127.0.x.y:
//! writes at LOCAL_QUORUM keep succeeding with one node SIGKILLed, its
//! hints are handed off when it returns, reads at quorum see every
//! acknowledged write, and a retried put adds no sibling; concurrent
//! writers on one cart, through five nodes, leave siblings that the
//! uploaded cart-union module merges to the same bytes on every replica;
//! a sixth node joins and another is decommissioned under writes, with
//! every acknowledged write on each of its replicas afterwards.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Node, all_see, isthmus, local_set, status, text, until, wasm};

use isthmus_client::wire::{
    Consistency, Context, ErrorCode, NodeReport, RequestBody, ResponseBody, WriteId,
};
use isthmus_client::{Client, Session};
use isthmus_core::model::{DcName, key_hash};
use isthmus_core::ring::{NodeId, Placement, Ring};
use isthmus_example_cart_union as cart_union;

/// Tests here run one at a time: each runs five or six nodes, and two
/// clusters at once on a small machine would only measure the scheduler
/// (and trip the failure detectors).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `n` nodes n0.. on 127.0.`subnet`.x, racks r0..r2, seeded by n0;
/// `carts` has three replicas at LOCAL_QUORUM. The nodes listed in
/// `joining` bootstrap into the running ring when spawned.
fn cluster(dir: &Path, subnet: u8, n: usize, joining: &[usize]) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let ip = format!("127.0.{subnet}.{}", i + 2);
            Node::new(dir, &format!("n{i}"), "dc1", &ip)
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        node.write_config(
            dir,
            &format!("r{}", i % 3),
            &[&nodes[0].addr],
            &format!(
                "vnodes = 32\nfsync = \"always\"\nbootstrap = {}",
                joining.contains(&i)
            ),
            "dc1 = 3",
        );
    }
    nodes
}

/// What every node reports of each node's state, when all of them answer.
async fn states(nodes: &[Node]) -> Option<Vec<NodeReport>> {
    let mut all = Vec::new();
    for node in nodes.iter().filter(|n| n.running()) {
        all.extend(status(&node.addr).await?.0);
    }
    Some(all)
}

fn values(read: &isthmus_client::Read) -> Vec<Vec<u8>> {
    read.siblings.iter().map(|s| s.value.clone()).collect()
}

/// 100 blind writes of `PHASE-i` through `client`, each read back at once
/// through `quorum` (W + R > N: a quorum read after a quorum write sees it).
async fn write_and_read_back(client: &Client, quorum: &Client, phase: &str) {
    for i in 0..100u32 {
        let key = format!("{phase}-{i}");
        client
            .put(
                "carts",
                key.as_bytes(),
                key.as_bytes().to_vec(),
                &Context::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            values(&quorum.get("carts", key.as_bytes()).await.unwrap()),
            vec![key.into_bytes()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_survive_a_sigkill_and_hand_off_hints() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 0, 5, &[]);
    for node in nodes.iter_mut() {
        node.spawn();
    }
    until("five nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 5).await
    })
    .await;

    let client = Client::builder()
        .tls(common::pki().material())
        .seed(nodes[0].addr.clone())
        .seed(nodes[1].addr.clone())
        .retries(5)
        .build()
        .await
        .unwrap();
    let quorum = Client::builder()
        .tls(common::pki().material())
        .seed(nodes[1].addr.clone())
        .consistency(Consistency::LocalQuorum)
        .build()
        .await
        .unwrap();
    write_and_read_back(&client, &quorum, "before").await;

    // SIGKILL one node; writes at LOCAL_QUORUM go on.
    nodes[3].kill();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.running()).collect();
    assert_eq!(survivors.len(), 4);
    until("n3 is seen down", &nodes, 60, async || {
        all_see(&nodes, 4).await
    })
    .await;
    write_and_read_back(&client, &quorum, "during").await;
    let mut hinted = 0;
    for node in nodes.iter().filter(|n| n.running()) {
        let (reports, _) = status(&node.addr).await.unwrap();
        hinted += reports
            .iter()
            .find(|r| r.node_id == "n3")
            .map_or(0, |r| r.hint_bytes);
    }
    assert!(hinted > 0, "writes n3 missed must be kept as hints");

    // n3 returns; every node hands its hints off.
    nodes[3].spawn();
    until(
        "n3 is back and every hint for it is handed off",
        &nodes,
        60,
        async || {
            if !all_see(&nodes, 5).await {
                return false;
            }
            for node in &nodes {
                let Some((reports, _)) = status(&node.addr).await else {
                    return false;
                };
                if reports
                    .iter()
                    .any(|r| r.node_id == "n3" && r.hint_bytes > 0)
                {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Every acknowledged write, read from all three replicas.
    let all = Client::builder()
        .tls(common::pki().material())
        .seed(nodes[3].addr.clone())
        .consistency(Consistency::All)
        .build()
        .await
        .unwrap();
    for phase in ["before", "during"] {
        for i in 0..100u32 {
            let key = format!("{phase}-{i}");
            assert_eq!(
                values(&all.get("carts", key.as_bytes()).await.unwrap()),
                vec![key.into_bytes()],
                "lost {phase}-{i}"
            );
        }
    }

    // A put retried with the same write id adds no sibling.
    let session = common::session(&nodes[2].addr, "retry", Duration::from_secs(2))
        .await
        .unwrap();
    for _ in 0..3 {
        let body = RequestBody::Put {
            mode: isthmus_client::wire::WriteMode::Context,
            keyspace: "carts".into(),
            key: b"retried".to_vec(),
            value: b"once".to_vec(),
            context: Context::default(),
            consistency: None,
            write_id: WriteId([42; 16]),
            expiry: Default::default(),
            sloppy: None,
        };
        assert_eq!(
            session.call(body, Duration::from_secs(2)).await.unwrap(),
            ResponseBody::Written
        );
    }
    assert_eq!(
        values(&all.get("carts", b"retried").await.unwrap()),
        vec![b"once".to_vec()]
    );
}

/// `isthmus resolver ARGS...`, which must succeed; its stdout.
async fn resolver_cli(args: &[&str]) -> String {
    let mut all = vec!["resolver".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let out = isthmus(all).await;
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_carts_merge_to_the_same_bytes_on_every_replica() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 1, 5, &[]);
    for node in nodes.iter_mut() {
        // The merge budget charges a merge's wall-clock time on its
        // thread. Five nodes (debug builds under `cargo test`) sharing a
        // small machine's CPUs with the test stretch that time (a merge
        // thread waits for a CPU mid-merge), so the default budget defers
        // merges of the shared cart until it reaches the sibling bound and
        // writes are refused. The budget has tests of its own (the merge
        // pool's); this one is about convergence: the most the pool allows.
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str("\n[merge]\nthreads = 2\nkeyspace_budget_ms_per_s = 2000\n");
        std::fs::write(&node.config, config).unwrap();
        node.spawn();
    }
    until("five nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 5).await
    })
    .await;

    // cart-union is uploaded through n0 and attached through n2, as an
    // operator would; the binding reaches every node.
    let module = wasm("isthmus-example-cart-union");
    let module = module.display().to_string();
    let out = resolver_cli(&[
        "upload",
        "--addr",
        &nodes[0].addr,
        "--name",
        "cart-union",
        "--version",
        "1",
        &module,
    ])
    .await;
    assert!(out.contains("law check: passed"), "{out}");
    resolver_cli(&[
        "attach",
        "--addr",
        &nodes[2].addr,
        "--keyspace",
        "carts",
        "cart-union@1",
    ])
    .await;
    let mut hash = None;
    until("every node holds the binding", &nodes, 60, async || {
        for node in &nodes {
            let out = isthmus(vec![
                "resolver".into(),
                "list".into(),
                "--addr".into(),
                node.addr.clone(),
                "--json".into(),
            ])
            .await;
            let Ok(listing) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            let current = &listing["bindings"][0]["current"];
            if current["name"] != "cart-union" {
                return false;
            }
            hash = current["hash"].as_str().map(str::to_owned);
        }
        true
    })
    .await;

    // Five writers, one through each node, race on one cart: four write
    // blind (no context: every write is concurrent with all the others),
    // the fifth reads, adds its item and writes back over what it read.
    const ITEMS: u64 = 30;
    let mut writers = Vec::new();
    for (w, node) in nodes.iter().enumerate().take(4) {
        let addr = node.addr.clone();
        writers.push(tokio::spawn(async move {
            let session = common::session(&addr, "writer", Duration::from_secs(2))
                .await
                .unwrap();
            for i in 0..ITEMS {
                let cart = BTreeMap::from([(format!("w{w}-item{i}"), w as u64 + 1)]);
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: "carts".into(),
                    key: b"shared-cart".to_vec(),
                    value: cart_union::encode(&cart),
                    context: Context::default(),
                    consistency: None,
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                match session.call(put, Duration::from_secs(5)).await {
                    Ok(ResponseBody::Written) => {}
                    other => return Err(format!("w{w}-item{i}: {other:?}")),
                }
            }
            Ok(())
        }));
    }
    let updater = Client::builder()
        .tls(common::pki().material())
        .seed(nodes[4].addr.clone())
        .retries(5)
        .build()
        .await
        .unwrap();
    writers.push(tokio::spawn(async move {
        for i in 0..ITEMS {
            updater
                .update("carts", b"shared-cart", |siblings| {
                    // Siblings not yet merged are merged here the same
                    // way (pointwise max), so nothing read is dropped.
                    let mut cart = cart_union::Cart::new();
                    for s in siblings {
                        for (item, qty) in cart_union::parse(&s.value).unwrap() {
                            let q = cart.entry(item).or_insert(0);
                            *q = (*q).max(qty);
                        }
                    }
                    cart.insert(format!("u-item{i}"), 9);
                    Some(cart_union::encode(&cart))
                })
                .await
                .map_err(|e| format!("u-item{i}: {e}"))?;
        }
        Ok(())
    }));
    for w in writers {
        if let Err(e) = w.await.unwrap() {
            common::dump_logs(&nodes);
            panic!("a writer failed: {e}");
        }
    }
    // One more blind write, concurrent with whatever the updater wrote
    // last: the final version is the resolver's, not a client's.
    let last = BTreeMap::from([("last".to_owned(), 1)]);
    let put = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: b"shared-cart".to_vec(),
        value: cart_union::encode(&last),
        context: Context::default(),
        consistency: None,
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    assert_eq!(
        common::call(&nodes[3].addr, put).await.unwrap(),
        ResponseBody::Written
    );

    // Every replica ends with one version: the union of all 151 items,
    // merged by the uploaded module, byte-identical (value, clock,
    // resolver hash) on all three replicas.
    let mut union = cart_union::Cart::new();
    for w in 0..4u64 {
        for i in 0..ITEMS {
            union.insert(format!("w{w}-item{i}"), w + 1);
        }
    }
    for i in 0..ITEMS {
        union.insert(format!("u-item{i}"), 9);
    }
    union.insert("last".to_owned(), 1);
    let union = cart_union::encode(&union);
    let probe = common::probe("probe");
    let mut held = Vec::new();
    until(
        "the three replicas hold the same merged cart",
        &nodes,
        60,
        async || {
            held.clear();
            for node in &nodes {
                match local_set(&probe, &node.addr, "carts", b"shared-cart").await {
                    Some(set) if set.is_empty() => {}
                    Some(set) => held.push(set),
                    None => return false,
                }
            }
            held.len() == 3
                && held.windows(2).all(|w| w[0] == w[1])
                && held[0].len() == 1
                && held[0].versions()[0].value_bytes() == Some(&union[..])
        },
    )
    .await;
    let merged_by = held[0].versions()[0]
        .resolver
        .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert!(hash.is_some());
    assert_eq!(merged_by, hash, "the merged version names its resolver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_another_is_decommissioned_with_nothing_lost() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 2, 6, &[5]);
    for node in nodes.iter_mut().take(5) {
        node.spawn();
    }
    until("five nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 5).await
    })
    .await;
    let client = Client::builder()
        .tls(common::pki().material())
        .seed(nodes[1].addr.clone())
        .retries(5)
        .build()
        .await
        .unwrap();
    let mut acked: Vec<Vec<u8>> = Vec::new();
    for i in 0..300u32 {
        let key = format!("before-{i}").into_bytes();
        client
            .put("carts", &key, key.clone(), &Context::default())
            .await
            .unwrap();
        acked.push(key);
    }

    // Writers keep going through n1..n4 while n5 joins and n0 leaves:
    // ranges in motion must miss none of their acknowledged writes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, node) in nodes[1..5].iter().enumerate() {
        let (addr, stop) = (node.addr.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut session: Option<Session> = None;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if session.as_ref().is_none_or(|s| !s.is_open()) {
                    session = common::session(&addr, "writer", Duration::from_secs(2))
                        .await
                        .ok();
                }
                let Some(s) = &session else { continue };
                let key = format!("during-{w}-{i}").into_bytes();
                i += 1;
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: "carts".into(),
                    key: key.clone(),
                    value: key.clone(),
                    context: Context::default(),
                    consistency: None,
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                // Only acknowledged writes are audited; one that times
                // out while ranges move was never promised.
                if let Ok(ResponseBody::Written) = s.call(put, Duration::from_secs(5)).await {
                    acked.push(key);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }

    // n5 bootstraps: Joining while it pulls the ranges it will own, then
    // Normal on every node.
    nodes[5].spawn();
    until("every node sees n5 Normal", &nodes, 90, async || {
        let Some(reports) = states(&nodes).await else {
            return false;
        };
        let n5: Vec<_> = reports.iter().filter(|r| r.node_id == "n5").collect();
        n5.len() == 6 && n5.iter().all(|r| r.up && r.status == "Normal")
    })
    .await;

    // With nothing running, the CLI's cancel says so.
    let out = isthmus(vec![
        "decommission".into(),
        "--addr".into(),
        nodes[0].addr.clone(),
        "--cancel".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("nothing was running"),
        "{}",
        text(&out.stdout)
    );

    // n0 is decommissioned with the CLI: it pushes every range it holds to
    // the next owners, then is Left on every node, and is stopped.
    let out = isthmus(vec![
        "decommission".into(),
        "--addr".into(),
        nodes[0].addr.clone(),
        "--json".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ranges_failed"], 0, "{report}");
    assert!(report["ranges"].as_u64().unwrap() > 0, "{report}");
    // The decommission is the node's operation, done, with what it moved.
    let out = isthmus(vec![
        "decommission".into(),
        "status".into(),
        "--addr".into(),
        nodes[0].addr.clone(),
        "--json".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["kind"], "decommission");
    assert_eq!(listed[0]["state"], "done");
    assert_eq!(listed[0]["progress"]["ranges"], report["ranges"]);
    until("every node sees n0 Left", &nodes, 60, async || {
        let Some(reports) = states(&nodes).await else {
            return false;
        };
        let n0: Vec<_> = reports.iter().filter(|r| r.node_id == "n0").collect();
        n0.len() == 6 && n0.iter().all(|r| r.status == "Left")
    })
    .await;
    nodes[0].kill();
    // Writes go on a moment without n0, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let during = acked.len() - 300;
    assert!(during > 100, "only {during} writes during the moves");

    // The ring is now n1..n5. Every acknowledged write must be in the own
    // store of each of its three replicas there (asked directly: no read
    // repair helps). The last writes' third copies may still be in
    // flight, so look again for a while before calling anything lost.
    let (reports, _) = status(&nodes[1].addr).await.unwrap();
    let members: Vec<(NodeId, Placement, u32)> = reports
        .iter()
        .filter(|r| r.status == "Normal")
        .map(|r| {
            let placement = Placement {
                dc: DcName::from(r.dc.as_str()),
                rack: r.rack.clone(),
            };
            (NodeId(r.node_id.clone()), placement, r.vnodes)
        })
        .collect();
    assert_eq!(members.len(), 5, "{reports:?}");
    let ring = Ring::build(members.iter().map(|(n, p, v)| (n, p, *v)));
    let addr_of: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.id.clone(), n.addr.clone()))
        .collect();
    let probe = common::probe("probe");
    let dc1 = DcName("dc1".into());
    let mut missing: Vec<(Vec<u8>, NodeId)> = acked
        .iter()
        .flat_map(|key| {
            ring.replicas_in_dc(&dc1, key_hash(key), 3)
                .into_iter()
                .map(move |replica| (key.clone(), replica))
        })
        .collect();
    assert_eq!(missing.len(), acked.len() * 3);
    let mut on_n5 = 0;
    for _ in 0..50 {
        let mut still = Vec::new();
        for (key, replica) in missing {
            let set = local_set(&probe, &addr_of[&replica.0], "carts", &key).await;
            match set {
                Some(set)
                    if set.len() == 1 && set.versions()[0].value_bytes() == Some(&key[..]) =>
                {
                    on_n5 += usize::from(replica.0 == "n5");
                }
                _ => still.push((key, replica)),
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown: Vec<String> = missing
        .iter()
        .take(5)
        .map(|(k, r)| format!("{} on {r}", String::from_utf8_lossy(k)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} replica copies of {} acknowledged writes missing, e.g. {shown:?}",
        missing.len(),
        acked.len() * 3,
        acked.len()
    );
    assert!(on_n5 > acked.len() / 4, "n5 holds {on_n5} keys");
    eprintln!(
        "join+decommission: acknowledged={} ({during} during the moves) lost=0, n5 holds {on_n5}",
        acked.len()
    );
}

/// A tmpfs of a few MiB mounted at a node's data directory: a disk that
/// fills. Unmounted when dropped. Mounting needs root (as the CI runs).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let size = format!("size={mib}m");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs at {} failed: this test needs root",
            path.display()
        );
        SmallDisk {
            path: path.to_owned(),
        }
    }

    /// Make room: the same filesystem, `mib` MiB large.
    fn grow(&self, mib: u64) {
        let options = format!("remount,size={mib}m");
        let status = std::process::Command::new("mount")
            .args(["-o", &options])
            .arg(&self.path)
            .status()
            .expect("running mount");
        assert!(status.success(), "growing the tmpfs failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A blind write of `value` to `key` at ONE: the coordinator's own replica
/// is the one acknowledgement.
async fn put_at_one(
    session: &Session,
    key: &str,
    value: &[u8],
) -> Result<ResponseBody, isthmus_client::ClientError> {
    let put = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        context: Context::default(),
        consistency: Some(Consistency::One),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    session.call(put, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_refuses_writes_serves_reads_and_recovers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, 3, &[]);
    let disk = SmallDisk::mount(&dir.path().join("n2"), 12);
    for node in nodes.iter_mut() {
        node.spawn();
    }
    until("three nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 3).await
    })
    .await;
    let full = &nodes[2];
    let session = common::session(&full.addr, "t", Duration::from_secs(5))
        .await
        .unwrap();
    // Writes through the node at ONE (its own disk is the one that counts)
    // until its disk is full: then a typed refusal, again and again.
    let value = vec![7u8; 64 * 1024];
    let mut acked: Vec<String> = Vec::new();
    let mut refusals = 0;
    for i in 0..2_000 {
        let key = format!("fill-{i}");
        match put_at_one(&session, &key, &value).await {
            Ok(ResponseBody::Written) => {
                assert_eq!(refusals, 0, "a write was taken after the disk was full");
                acked.push(key);
            }
            Err(isthmus_client::ClientError::Server(e)) if e.code == ErrorCode::DiskFull => {
                assert!(e.code.is_retryable());
                refusals += 1;
                if refusals == 5 {
                    break;
                }
            }
            other => panic!("write {i}: expected success or DISK_FULL, got {other:?}"),
        }
    }
    assert_eq!(
        refusals,
        5,
        "the disk never filled ({} writes taken)",
        acked.len()
    );
    eprintln!("disk full after {} writes of 64 KiB", acked.len());
    // Reads go on: the node's own replica answers, and so does the node.
    let probe = common::probe("audit");
    for key in [&acked[0], acked.last().unwrap()] {
        let set = local_set(&probe, &full.addr, "carts", key.as_bytes())
            .await
            .unwrap();
        assert_eq!(set.len(), 1, "{key} on the full node");
    }
    let get = RequestBody::Get {
        keyspace: "carts".into(),
        key: acked[0].as_bytes().to_vec(),
        consistency: Some(Consistency::LocalQuorum),
    };
    assert!(matches!(
        session.call(get, Duration::from_secs(5)).await,
        Ok(ResponseBody::Value { siblings, .. }) if siblings.len() == 1
    ));
    // Room again: the node takes writes by itself, no restart.
    disk.grow(256);
    let mut after = Vec::new();
    let started = std::time::Instant::now();
    while after.len() < 20 {
        let key = format!("after-{}", after.len());
        match put_at_one(&session, &key, &value).await {
            Ok(ResponseBody::Written) => after.push(key),
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no recovery once there was room: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // A power cut (SIGKILL) and a restart: everything the node
    // acknowledged is on its own disk, and it opens cleanly.
    nodes[2].kill();
    nodes[2].spawn();
    until("the node is back", &nodes, 60, async || {
        all_see(&nodes, 3).await
    })
    .await;
    let full = &nodes[2];
    for key in acked.iter().chain(&after) {
        let set = local_set(&probe, &full.addr, "carts", key.as_bytes())
            .await
            .unwrap();
        assert_eq!(
            set.len(),
            1,
            "{key}, acknowledged at ONE, is not on the node's disk"
        );
    }
    for node in nodes.iter_mut() {
        node.kill();
    }
    drop(disk);
}
