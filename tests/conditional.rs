//! Conditional writes and overwrites, on in-process clusters (real
//! sockets, real data directories, one process).
//!
//! One DC of three nodes (RF 3): concurrent read-then-`put_if` increments
//! of one key, sent to every node, lose none (the final value is the
//! number of successes, one sibling); `put_if_absent` lets exactly one of
//! many concurrent writers in; concurrent overwrites leave one sibling; a
//! failed condition carries the key's current siblings and context; with
//! the deciding replica stopped, the next one in placement order decides.
//! Two DCs with the pn-counter resolver: concurrent `put_if` increments in
//! both DCs end as siblings the resolver merges, counting every success.
//!
//! The tests take a shared lock: clusters on a small machine at once would
//! only measure the scheduler.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use isthmus_client::wire::{
    Consistency, Context, RequestBody, ResponseBody, Sibling, WriteId, WriteMode,
};
use isthmus_client::{Client, ClientError, Session};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEYSPACE: &str = "carts";

async fn one_dc() -> LocalCluster {
    let spec = ClusterSpec::new(&["dc1"], 3);
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(3, "one dc").await.unwrap();
    cluster
}

async fn connect(cluster: &LocalCluster, dc: &str, seed: &str) -> Client {
    let mut builder = Client::builder()
        .seed(seed.to_owned())
        .local_dc(dc)
        .retries(3)
        .consistency(Consistency::LocalQuorum);
    if let Some(material) = cluster.client_material() {
        builder = builder.tls(material).credentials(
            cluster
                .connect_options("conditional")
                .credentials
                .expect("a TLS cluster logs in"),
        );
    }
    builder.build().await.unwrap()
}

fn number(siblings: &[Sibling]) -> u64 {
    match siblings {
        [] => 0,
        [one] => String::from_utf8_lossy(&one.value).parse().unwrap(),
        many => panic!("a counter written only by put_if has siblings: {many:?}"),
    }
}

/// A conditional put through `session`: `Ok(None)` once written, or the
/// key's current siblings and context when the condition failed.
async fn put_mode(
    session: &Session,
    key: &[u8],
    value: Vec<u8>,
    context: Context,
    mode: WriteMode,
) -> Option<(Vec<Sibling>, Context)> {
    let body = RequestBody::Put {
        mode,
        keyspace: KEYSPACE.into(),
        key: key.to_vec(),
        value,
        context,
        consistency: Some(Consistency::LocalQuorum),
        write_id: WriteId(rand_id()),
        expiry: Default::default(),
        sloppy: None,
    };
    match session.call(body, Duration::from_secs(10)).await.unwrap() {
        ResponseBody::Written => None,
        ResponseBody::ConditionFailed { siblings, context } => Some((siblings, context)),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn rand_id() -> [u8; 16] {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [7u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8..].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    id
}

async fn read_all(session: &Session, key: &[u8]) -> (Vec<Sibling>, Context) {
    let body = RequestBody::Get {
        keyspace: KEYSPACE.into(),
        key: key.to_vec(),
        consistency: Some(Consistency::All),
    };
    match session.call(body, Duration::from_secs(10)).await.unwrap() {
        ResponseBody::Value {
            siblings, context, ..
        } => (siblings, context),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_put_if_increments_through_every_node_lose_none() {
    let _serial = SERIAL.lock().await;
    let cluster = one_dc().await;
    let addrs = cluster.addrs("dc1");
    const WORKERS: usize = 6;
    const STEPS: u64 = 20;
    let key = b"counter".to_vec();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        // Each worker talks to its own node: every node receives
        // conditional writes and forwards them to the deciding replica.
        let session = cluster
            .session(&addrs[w % addrs.len()], &format!("w{w}"))
            .await
            .unwrap();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let (mut successes, mut failures) = (0u64, 0u64);
            let (mut siblings, mut context) = read_all(&session, &key).await;
            while successes < STEPS {
                let next = (number(&siblings) + 1).to_string().into_bytes();
                match put_mode(
                    &session,
                    &key,
                    next.clone(),
                    context.clone(),
                    WriteMode::IfMatch,
                )
                .await
                {
                    None => {
                        successes += 1;
                        // Read again: another worker may be first next time.
                        (siblings, context) = read_all(&session, &key).await;
                    }
                    // Retry over what the failure says the key holds.
                    Some(now) => {
                        failures += 1;
                        (siblings, context) = now;
                    }
                }
            }
            (successes, failures)
        }));
    }
    let (mut successes, mut failures) = (0, 0);
    for t in tasks {
        let (s, f) = t.await.unwrap();
        successes += s;
        failures += f;
    }
    let session = cluster.session(&addrs[0], "check").await.unwrap();
    let (siblings, _) = read_all(&session, &key).await;
    assert_eq!(successes, WORKERS as u64 * STEPS);
    assert_eq!(
        number(&siblings),
        successes,
        "every success is a distinct step ({failures} condition failures retried)"
    );
    assert!(
        failures > 0,
        "the workers never raced: the test shows nothing"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sdk_writes_conditionally_and_overwrites_without_siblings() {
    let _serial = SERIAL.lock().await;
    let cluster = one_dc().await;
    let addrs = cluster.addrs("dc1");
    let client = connect(&cluster, "dc1", &addrs[0]).await;

    // put_if_absent: many writers at once, exactly one gets in; the others
    // are told what the key holds.
    let mut tasks = Vec::new();
    for w in 0..8u8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.put_if_absent(KEYSPACE, b"lock", vec![w]).await
        }));
    }
    let mut winners = Vec::new();
    for (w, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(()) => winners.push(w as u8),
            Err(ClientError::ConditionFailed { siblings, .. }) => {
                assert_eq!(siblings.len(), 1, "{siblings:?}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let read = client.get(KEYSPACE, b"lock").await.unwrap();
    assert_eq!(read.siblings.len(), 1);
    assert_eq!(read.siblings[0].value, vec![winners[0]]);
    // Deleted, it is absent again.
    client
        .delete(KEYSPACE, b"lock", &read.context)
        .await
        .unwrap();
    client
        .put_if_absent(KEYSPACE, b"lock", b"again".to_vec())
        .await
        .unwrap();

    // put_if over a stale context fails with the current value and its
    // context, over which it then succeeds.
    client
        .put(KEYSPACE, b"cas", b"one".to_vec(), &Context::default())
        .await
        .unwrap();
    let stale = client.get(KEYSPACE, b"cas").await.unwrap();
    client
        .put_if(KEYSPACE, b"cas", b"two".to_vec(), &stale.context)
        .await
        .unwrap();
    let failed = client
        .put_if(KEYSPACE, b"cas", b"three".to_vec(), &stale.context)
        .await
        .unwrap_err();
    let ClientError::ConditionFailed { siblings, context } = failed else {
        panic!("expected a condition failure, got {failed:?}");
    };
    assert_eq!(siblings.len(), 1);
    assert_eq!(siblings[0].value, b"two");
    client
        .put_if(KEYSPACE, b"cas", b"three".to_vec(), &context)
        .await
        .unwrap();
    assert_eq!(
        client.get(KEYSPACE, b"cas").await.unwrap().siblings[0].value,
        b"three"
    );
    // An empty context on a key that holds a value is stale too.
    assert!(matches!(
        client
            .put_if(KEYSPACE, b"cas", b"x".to_vec(), &Context::default())
            .await,
        Err(ClientError::ConditionFailed { .. })
    ));

    // Overwrites from many clients at once, through every node: one
    // sibling, where blind writes over no context leave one each.
    let mut tasks = Vec::new();
    for w in 0..12usize {
        let c = connect(&cluster, "dc1", &addrs[w % 3]).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                c.overwrite(KEYSPACE, b"hot", format!("{w}-{i}").into_bytes())
                    .await
                    .unwrap();
                // A few blind writes (within the sibling bound) for contrast.
                if w < 4 && i == 0 {
                    c.put(KEYSPACE, b"blind", vec![w as u8, i], &Context::default())
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sets = cluster.sets(b"hot").await.unwrap();
    for (node, set) in &sets {
        assert_eq!(set.live().count(), 1, "{node} holds {set:?}");
    }
    let blind = cluster.sets(b"blind").await.unwrap();
    assert!(
        blind.values().any(|s| s.live().count() > 1),
        "blind writes left no siblings: the overwrite check shows nothing"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_deciding_replica_down_the_next_one_decides() {
    let _serial = SERIAL.lock().await;
    let mut cluster = one_dc().await;
    let addrs = cluster.addrs("dc1");
    let key = b"failover".to_vec();
    let session = cluster.session(&addrs[0], "f").await.unwrap();
    assert!(
        put_mode(
            &session,
            &key,
            b"1".to_vec(),
            Context::default(),
            WriteMode::IfMatch
        )
        .await
        .is_none()
    );
    // The deciding replica is the one whose actor issued the dot.
    let actors: Vec<(String, isthmus_core::model::Actor)> = cluster
        .ids("dc1")
        .into_iter()
        .map(|id| {
            let actor = cluster.node(&id).coordinator().config().actor;
            (id, actor)
        })
        .collect();
    let issued_by = |set: &isthmus_core::model::VersionSet, value: &[u8]| -> Vec<String> {
        let v = set
            .live()
            .find(|v| v.value_bytes() == Some(value))
            .expect("the value is held");
        actors
            .iter()
            .filter(|(_, a)| v.clock.max_counter(*a) > 0)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let sets = cluster.sets(&key).await.unwrap();
    let first = issued_by(sets.values().next().unwrap(), b"1");
    assert_eq!(first.len(), 1, "{first:?}");
    let first = first[0].clone();
    cluster.stop_node(&first).await;
    cluster
        .wait_alive(2, "deciding replica down")
        .await
        .unwrap();
    let other_addr = cluster.addrs("dc1")[0].clone();
    let session = cluster.session(&other_addr, "f2").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (siblings, context) = loop {
        let body = RequestBody::Get {
            keyspace: KEYSPACE.into(),
            key: key.clone(),
            consistency: Some(Consistency::LocalQuorum),
        };
        if let Ok(ResponseBody::Value {
            siblings, context, ..
        }) = session.call(body, Duration::from_secs(5)).await
        {
            break (siblings, context);
        }
        assert!(Instant::now() < deadline, "no read with a replica down");
    };
    assert_eq!(number(&siblings), 1);
    assert!(
        put_mode(
            &session,
            &key,
            b"2".to_vec(),
            context.clone(),
            WriteMode::IfMatch
        )
        .await
        .is_none(),
        "the next replica decides while the first is down"
    );
    // And it checks: the same stale context fails there.
    assert!(
        put_mode(&session, &key, b"3".to_vec(), context, WriteMode::IfMatch)
            .await
            .is_some()
    );
    let sets = cluster.sets(&key).await.unwrap();
    let live: Vec<_> = sets
        .values()
        .filter(|s| s.live().any(|v| v.value_bytes() == Some(b"2".as_slice())))
        .collect();
    assert!(!live.is_empty(), "{sets:?}");
    let issuers = issued_by(live[0], b"2");
    assert_eq!(issuers.len(), 2, "{issuers:?}");
    assert!(issuers.contains(&first), "{issuers:?}");
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Two DCs

fn counter_module() -> Vec<u8> {
    std::fs::read(common::wasm("isthmus-example-pn-counter")).unwrap()
}

/// A pn-counter's value: the sum of its per-actor increments (no
/// decrements here).
fn counter_value(bytes: &[u8]) -> u64 {
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    json["p"]
        .as_object()
        .map_or(0, |p| p.values().map(|v| v.as_u64().unwrap()).sum())
}

fn counter_with(mut totals: BTreeMap<String, u64>, actor: &str) -> Vec<u8> {
    *totals.entry(actor.to_owned()).or_default() += 1;
    serde_json::to_vec(&serde_json::json!({ "n": {}, "p": totals })).unwrap()
}

fn totals(siblings: &[Sibling]) -> BTreeMap<String, u64> {
    // Siblings not merged yet: the per-actor maximum, as the resolver does.
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for s in siblings {
        let json: serde_json::Value = serde_json::from_slice(&s.value).unwrap();
        if let Some(p) = json["p"].as_object() {
            for (actor, n) in p {
                let n = n.as_u64().unwrap();
                let e = out.entry(actor.clone()).or_default();
                *e = (*e).max(n);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_if_in_two_dcs_makes_siblings_the_counter_resolver_merges() {
    let _serial = SERIAL.lock().await;
    let spec = ClusterSpec {
        keyspace: KEYSPACE.into(),
        resolver: Some(("pn-counter".into(), counter_module())),
        ..ClusterSpec::new(&["dc1", "dc2"], 3)
    };
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(6, "two dcs").await.unwrap();
    const PER_WORKER: u64 = 15;
    let key = b"hits".to_vec();
    let mut tasks = Vec::new();
    for dc in ["dc1", "dc2"] {
        for w in 0..3 {
            let c = connect(&cluster, dc, &cluster.addrs(dc)[w]).await;
            let key = key.clone();
            let actor = format!("{dc}-{w}");
            tasks.push(tokio::spawn(async move {
                let (mut done, mut failed) = (0u64, 0u64);
                let mut read = c.get(KEYSPACE, &key).await.unwrap();
                let (mut siblings, mut context) = (read.siblings, read.context);
                while done < PER_WORKER {
                    let next = counter_with(totals(&siblings), &actor);
                    match c.put_if(KEYSPACE, &key, next, &context).await {
                        Ok(()) => {
                            done += 1;
                            read = c.get(KEYSPACE, &key).await.unwrap();
                            (siblings, context) = (read.siblings, read.context);
                        }
                        Err(ClientError::ConditionFailed {
                            siblings: s,
                            context: x,
                        }) => {
                            failed += 1;
                            (siblings, context) = (s, x);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (done, failed)
            }));
        }
    }
    let mut successes = 0;
    for t in tasks {
        successes += t.await.unwrap().0;
    }
    assert_eq!(successes, 6 * PER_WORKER);
    // Both DCs converge on one merged counter holding every success.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut values = Vec::new();
        for dc in ["dc1", "dc2"] {
            let c = connect(&cluster, dc, &cluster.addrs(dc)[0]).await;
            let read = c.get(KEYSPACE, &key).await.unwrap();
            values.push(
                read.siblings
                    .iter()
                    .map(|s| counter_value(&s.value))
                    .collect::<Vec<_>>(),
            );
        }
        if values.iter().all(|v| v == &vec![successes]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the DCs never agreed on {successes}: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.merges() > 0,
        "no merge ran: the DCs' conditional writes never met as siblings"
    );
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Counters

/// The node config of a counter keyspace: `carts` holds counters.
fn counters(config: &mut isthmus_core::config::NodeConfig) {
    for ks in config.keyspaces.values_mut() {
        ks.counter = true;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn additions_in_two_dcs_all_count_once() {
    let _serial = SERIAL.lock().await;
    let spec = ClusterSpec {
        keyspace: KEYSPACE.into(),
        resolver: Some(("pn-counter".into(), counter_module())),
        configure: Some(counters),
        ..ClusterSpec::new(&["dc1", "dc2"], 3)
    };
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(6, "two dcs").await.unwrap();
    const PER_WORKER: i64 = 20;
    let key = b"hits".to_vec();
    let mut tasks = Vec::new();
    for dc in ["dc1", "dc2"] {
        for w in 0..3 {
            // Every worker through a different node: most forward to the
            // key's deciding replica.
            let c = connect(&cluster, dc, &cluster.addrs(dc)[w]).await;
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..PER_WORKER {
                    seen.push(c.add(KEYSPACE, &key, 1).await.unwrap());
                }
                (dc, seen)
            }));
        }
    }
    let mut answered: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for t in tasks {
        let (dc, seen) = t.await.unwrap();
        answered.entry(dc).or_default().extend(seen);
    }
    // Within a DC, additions are serialised at the deciding replica: each
    // +1 answered a value no other +1 of that DC answered.
    for (dc, values) in &answered {
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len(), "{dc}: {values:?}");
    }
    // Subtractions count as well: three in each DC, at once.
    let mut takes = Vec::new();
    for dc in ["dc1", "dc2"] {
        for w in 0..3 {
            let c = connect(&cluster, dc, &cluster.addrs(dc)[w]).await;
            let key = key.clone();
            takes.push(tokio::spawn(async move { c.add(KEYSPACE, &key, -1).await }));
        }
    }
    for t in takes {
        t.await.unwrap().unwrap();
    }
    let total = 6 * (PER_WORKER - 1);
    // Both DCs converge on one counter holding every addition, once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut values = Vec::new();
        for dc in ["dc1", "dc2"] {
            let c = connect(&cluster, dc, &cluster.addrs(dc)[1]).await;
            values.push(c.counter(KEYSPACE, &key).await.unwrap());
        }
        if values.iter().all(|v| *v == i128::from(total)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the DCs never agreed on {total}: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An addition is refused where it cannot be one, with the reason.
    let c = connect(&cluster, "dc1", &cluster.addrs("dc1")[0]).await;
    c.overwrite(KEYSPACE, b"text", b"not a counter".to_vec())
        .await
        .unwrap();
    let err = c.add(KEYSPACE, b"text", 1).await.unwrap_err();
    assert!(err.to_string().contains("not a counter"), "{err}");
    assert!(matches!(
        c.counter(KEYSPACE, b"text").await,
        Err(ClientError::NotACounter(_))
    ));
    let err = c.add("nope", b"k", 1).await.unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let err = c.add(KEYSPACE, b"hits", i64::MAX).await.unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
    assert_eq!(
        c.counter(KEYSPACE, &key).await.unwrap(),
        i128::from(total),
        "a refused addition changed the counter"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn additions_need_a_counter_keyspace_with_a_resolver() {
    let _serial = SERIAL.lock().await;
    // Counters, but no resolver bound: siblings from two places would
    // never merge, so the addition is refused.
    let spec = ClusterSpec {
        configure: Some(counters),
        ..ClusterSpec::new(&["dc1"], 1)
    };
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(1, "one node").await.unwrap();
    let c = connect(&cluster, "dc1", &cluster.addrs("dc1")[0]).await;
    let err = c.add(KEYSPACE, b"k", 1).await.unwrap_err();
    assert!(err.to_string().contains("no resolver bound"), "{err}");
    cluster.shutdown().await;
    // A resolver, but values that are not counters.
    let spec = ClusterSpec {
        keyspace: KEYSPACE.into(),
        resolver: Some(("pn-counter".into(), counter_module())),
        ..ClusterSpec::new(&["dc1"], 1)
    };
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(1, "one node").await.unwrap();
    let c = connect(&cluster, "dc1", &cluster.addrs("dc1")[0]).await;
    let err = c.add(KEYSPACE, b"k", 1).await.unwrap_err();
    assert!(err.to_string().contains("does not hold counters"), "{err}");
    cluster.shutdown().await;
}
