//! A hostile or buggy client with valid credentials, against a cluster of
//! in-process nodes on loopback: what it sends is refused with a typed
//! error, and the keys it aims at keep working for everyone else.

use std::time::Duration;

use isthmus_client::wire::{
    Context, ErrorCode, RequestBody, ResponseBody, WriteId, decode, encode,
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
        keyspace: "carts".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context,
        consistency: None,
        write_id: WriteId(rand::random()),
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
        ResponseBody::Value { siblings, context } => {
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
