//! Against a cluster of in-process nodes on loopback: a hostile or buggy
//! client with valid credentials (what it sends is refused with a typed
//! error, and the keys it aims at keep working for everyone else), and a
//! replica that comes back after its peers dropped the tombstones it
//! missed (nothing deleted returns).

use std::time::Duration;

use isthmus_client::wire::{
    Consistency, Context, ErrorCode, OperationKind, OperationState, RequestBody, ResponseBody,
    WriteId, decode, encode,
};
use isthmus_client::{ClientError, Session};
use isthmus_core::model::{Clock, Dot};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

const WAIT: Duration = Duration::from_secs(5);

async fn cluster() -> LocalCluster {
    LocalCluster::start(ClusterSpec::new(&["dc1"], 3), Root::temporary().unwrap())
        .await
        .unwrap()
}

fn put(key: &[u8], value: &[u8], context: Context) -> RequestBody {
    RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context,
        consistency: None,
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    }
}

/// The live values of `key` and the context covering them.
async fn read(session: &Session, key: &[u8]) -> (Vec<Vec<u8>>, Context) {
    let get = RequestBody::Get {
        keyspace: "carts".into(),
        key: key.to_vec(),
        consistency: None,
    };
    match session.call(get, WAIT).await.unwrap() {
        ResponseBody::Value {
            siblings, context, ..
        } => {
            let mut values: Vec<Vec<u8>> = siblings.into_iter().map(|s| s.value).collect();
            values.sort();
            (values, context)
        }
        other => panic!("a read answered {other:?}"),
    }
}

/// `context` with every counter it names replaced by `counter`.
fn with_counters(context: &Context, counter: u64) -> Context {
    let clock: Clock = decode(&context.0).unwrap();
    let vector = clock.vector().keys().map(|&a| (a, counter));
    let dots = clock.dots().iter().map(|d| Dot {
        actor: d.actor,
        counter,
    });
    Context(encode(&Clock::from_parts(vector, dots)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_context_is_refused_and_the_key_keeps_taking_writes() {
    let cluster = cluster().await;
    let addr = cluster.node(&cluster.node_id("dc1", 0)).addr.clone();
    let session = cluster.session(&addr, "t").await.unwrap();
    assert_eq!(
        session
            .call(put(b"k", b"v1", Context::default()), WAIT)
            .await
            .unwrap(),
        ResponseBody::Written
    );
    let (values, context) = read(&session, b"k").await;
    assert_eq!(values, vec![b"v1".to_vec()]);

    // The context of a real read, with its counters pushed to the largest
    // there is (the next event would wrap to 0), or far past any real
    // history; and bytes that are no context at all.
    let forged = [
        with_counters(&context, u64::MAX),
        with_counters(&context, 1 << 60),
        Context(vec![0xff; 40]),
    ];
    for context in forged {
        match session
            .call(put(b"k", b"forged", context.clone()), WAIT)
            .await
        {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidContext, "{e:?}");
                assert!(!e.code.is_retryable());
            }
            other => panic!("a forged context {context:?} was taken: {other:?}"),
        }
    }

    // The key is intact and still takes writes: a blind write is a
    // sibling of the first value, a write over the read context
    // supersedes both, on every replica.
    assert_eq!(
        session
            .call(put(b"k", b"v2", Context::default()), WAIT)
            .await
            .unwrap(),
        ResponseBody::Written
    );
    let (values, context) = read(&session, b"k").await;
    assert_eq!(values, vec![b"v1".to_vec(), b"v2".to_vec()]);
    assert_eq!(
        session.call(put(b"k", b"v3", context), WAIT).await.unwrap(),
        ResponseBody::Written
    );
    for node in cluster.nodes.values() {
        let other = cluster.session(&node.addr, "t").await.unwrap();
        assert_eq!(read(&other, b"k").await.0, vec![b"v3".to_vec()]);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_past_the_tombstone_grace_brings_no_deleted_value_back() {
    const KEYS: usize = 20;
    let spec = ClusterSpec {
        configure: Some(|c| {
            c.tombstone_grace_ms = 2_000;
            c.hint_window_ms = 500;
        }),
        ..ClusterSpec::new(&["dc1"], 3)
    };
    let mut cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    let key = |i: usize| format!("deleted-{i}").into_bytes();
    let addr = cluster.node(&cluster.node_id("dc1", 0)).addr.clone();
    let session = cluster.session(&addr, "t").await.unwrap();
    for i in 0..KEYS {
        let mut at_all = put(&key(i), b"old", Context::default());
        if let RequestBody::Put { consistency, .. } = &mut at_all {
            *consistency = Some(Consistency::All);
        }
        assert_eq!(
            session.call(at_all, WAIT).await.unwrap(),
            ResponseBody::Written
        );
    }
    // One replica goes down; every key is deleted on the other two; the
    // hints for it outlive their window and the tombstones their grace,
    // and compaction drops them.
    let away = cluster.node_id("dc1", 2);
    cluster.stop_node(&away).await;
    for i in 0..KEYS {
        let (_, context) = read(&session, &key(i)).await;
        let delete = RequestBody::Delete {
            keyspace: "carts".into(),
            key: key(i),
            context,
            consistency: None,
            write_id: WriteId(rand::random()),
            sloppy: None,
        };
        assert_eq!(
            session.call(delete, WAIT).await.unwrap(),
            ResponseBody::Written
        );
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for node in cluster.nodes.values() {
        node.store().engine().compact().unwrap();
    }
    for (node, set) in cluster.sets(&key(0)).await.unwrap() {
        assert!(
            set.is_empty(),
            "{node} kept the tombstone past its grace: {set:?}"
        );
    }

    // The replica comes back with the old values on its disk. Whatever
    // then runs (hint handoff, read repair, a full repair on every node),
    // no deleted value returns.
    cluster.start_node("dc1", 2).await.unwrap();
    cluster.wait_alive(3, "the replica is back").await.unwrap();
    let owed = cluster.root().join(&away).join("REBUILD");
    let started = std::time::Instant::now();
    while owed.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rebuild never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in cluster.nodes.values() {
        node.repair(None, None).await.unwrap();
    }
    for node in cluster.nodes.values() {
        let session = cluster.session(&node.addr, "t").await.unwrap();
        for i in 0..KEYS {
            assert_eq!(
                read(&session, &key(i)).await.0,
                Vec::<Vec<u8>>::new(),
                "key {i} came back"
            );
        }
    }
    for i in 0..KEYS {
        for (node, set) in cluster.sets(&key(i)).await.unwrap() {
            assert!(
                set.live().next().is_none(),
                "{node} holds deleted key {i}: {set:?}"
            );
        }
    }
    // The stale data is set aside for the operator, not destroyed.
    let aside = std::fs::read_dir(cluster.root().join(&away))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("data.stale-"));
    assert!(aside, "the stale data was not kept aside");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_decommission_leaves_the_node_a_normal_member() {
    let cluster = LocalCluster::start(ClusterSpec::new(&["dc1"], 4), Root::temporary().unwrap())
        .await
        .unwrap();
    let leaving = cluster.node(&cluster.node_id("dc1", 3)).addr.clone();
    let session = std::sync::Arc::new(cluster.session(&leaving, "admin").await.unwrap());
    let decommission = {
        let session = session.clone();
        tokio::spawn(async move {
            session
                .call(RequestBody::Decommission, Duration::from_secs(30))
                .await
        })
    };
    // Once it is under way, a second administrative request is refused
    // (one at a time), and a cancel stops it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    loop {
        let repair = RequestBody::Repair {
            keyspace: None,
            remote_dc: None,
        };
        match session.call(repair, WAIT).await {
            Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => break,
            other => {
                assert!(
                    started.elapsed() < WAIT,
                    "the decommission never started: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(
        session.call(RequestBody::Cancel, WAIT).await.unwrap(),
        ResponseBody::Cancelled {
            operation: Some("a decommission".into())
        }
    );
    // The decommission's request answered at once with its operation,
    // which ends cancelled.
    let s = session.clone();
    let cancelled = isthmus_testkit::operation::finished(
        move |b| {
            let s = s.clone();
            async move { s.call(b, WAIT).await }
        },
        decommission.await.unwrap(),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled, "{cancelled:?}");
    assert_eq!(cancelled.kind, OperationKind::Decommission);
    assert!(
        cancelled
            .error
            .as_deref()
            .unwrap_or("")
            .contains("cancelled"),
        "{cancelled:?}"
    );
    // Back to normal in every node's eyes, still a member, and the slot is
    // free: nothing to cancel, and a repair runs.
    for node in cluster.nodes.values() {
        let other = cluster.session(&node.addr, "t").await.unwrap();
        let started = std::time::Instant::now();
        loop {
            let Ok(ResponseBody::Status { nodes, .. }) =
                other.call(RequestBody::Status, WAIT).await
            else {
                panic!("no status from {}", node.addr);
            };
            let me = nodes
                .iter()
                .find(|n| n.addr == leaving)
                .expect("still a member");
            if me.status == "Normal" {
                break;
            }
            assert!(started.elapsed() < WAIT, "{} sees {}", node.addr, me.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        session.call(RequestBody::Cancel, WAIT).await.unwrap(),
        ResponseBody::Cancelled { operation: None }
    );
    let repair = RequestBody::Repair {
        keyspace: None,
        remote_dc: None,
    };
    assert!(matches!(
        session.call(repair, WAIT).await.unwrap(),
        ResponseBody::Started(_)
    ));
    cluster.shutdown().await;
}
