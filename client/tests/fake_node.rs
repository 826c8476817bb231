//! The client against a stand-in node on loopback that speaks the wire
//! protocol and holds its answers back as a test needs: a batch's
//! requests are pipelined on the node's session (the node answers none
//! until it holds a hundred), answers come back in input order with one
//! result per item, a request's overall deadline bounds its retries, and
//! `connect_all` opens a session to every node the status lists.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use isthmus_client::wire::connection::Connection;
use isthmus_client::wire::frame::FRAME_BYTES_MAX_DEFAULT;
use isthmus_client::wire::{
    Context, ErrorCode, Hello, HelloAck, HelloAnswer, MAGIC, NodeReport, PROTOCOL_VERSION, Reply,
    Request, RequestBody, ResponseBody, Sibling, WireError,
};
use isthmus_client::{Client, ClientError, PutItem, RequestOptions};
use tokio::net::TcpListener;

/// How the stand-in node answers data requests.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Hold answers until this many data requests are outstanding, then
    /// answer them and every later one at once.
    HoldUntil(usize),
    /// Never answer a data request.
    Silent,
}

/// A stand-in node: its address and the most data requests it held
/// unanswered at once.
struct FakeNode {
    addr: String,
    most_outstanding: Arc<AtomicUsize>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The answer to a data request: a get reads its key back as its value;
/// the key `bad` is refused.
fn answer(body: &RequestBody) -> ResponseBody {
    let key = match body {
        RequestBody::Get { key, .. } | RequestBody::Put { key, .. } => key.clone(),
        other => panic!("unexpected request {other:?}"),
    };
    if key == b"bad" {
        return ResponseBody::Error(WireError {
            code: ErrorCode::KeyTooLarge,
            message: "refused by the test".into(),
            acks: None,
            needs: None,
        });
    }
    match body {
        RequestBody::Get { .. } => ResponseBody::Value {
            siblings: vec![Sibling {
                value: key,
                timestamp_ms: 1,
                origin_dc: "dc1".into(),
                expires_ms: None,
            }],
            context: Context(vec![]),
            merge_failure: None,
        },
        _ => ResponseBody::Written,
    }
}

/// The status a node answers: itself (as `fake`, the id its handshake
/// gives), then `others`, all up.
fn status(me: &str, others: &[String]) -> ResponseBody {
    let report = |i: usize, addr: &str| NodeReport {
        node_id: if i == 0 {
            "fake".into()
        } else {
            format!("fake-{i}")
        },
        addr: addr.into(),
        dc: "dc1".into(),
        rack: "r1".into(),
        vnodes: 8,
        up: true,
        status: "Normal".into(),
        load_bytes: 0,
        hint_bytes: 0,
        ownership: 1.0,
    };
    ResponseBody::Status {
        nodes: std::iter::once(me)
            .chain(others.iter().map(String::as_str))
            .enumerate()
            .map(|(i, addr)| report(i, addr))
            .collect(),
        bridges: vec![],
    }
}

async fn fake_node(behaviour: Behaviour) -> FakeNode {
    fake_node_listing(behaviour, Vec::new()).await
}

/// A stand-in node whose status lists `others` as well as itself.
async fn fake_node_listing(behaviour: Behaviour, others: Vec<String>) -> FakeNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let most_outstanding = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (me, most, count) = (addr.clone(), most_outstanding.clone(), accepted.clone());
    let others = Arc::new(others);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            let (me, most, others) = (me.clone(), most.clone(), others.clone());
            tokio::spawn(async move {
                let mut conn = Connection::new(stream, FRAME_BYTES_MAX_DEFAULT);
                let Ok(Some(_hello)) = conn.read::<Hello>().await else {
                    return;
                };
                let ack: HelloAnswer = Ok(HelloAck {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    node_id: "fake".into(),
                    dc: "dc1".into(),
                    clock_ms: now_ms(),
                });
                conn.write(&ack).await.unwrap();
                let mut held: Vec<Request> = Vec::new();
                let mut released = false;
                while let Ok(Some(request)) = conn.read::<Request>().await {
                    let mut replies = Vec::new();
                    match (&request.body, behaviour) {
                        (RequestBody::Status, _) => {
                            replies.push((request.id, status(&me, &others)))
                        }
                        (_, Behaviour::Silent) => {}
                        (_, Behaviour::HoldUntil(n)) if !released => {
                            held.push(request);
                            most.fetch_max(held.len(), Ordering::Relaxed);
                            if held.len() >= n {
                                released = true;
                                replies.extend(held.drain(..).map(|r| (r.id, answer(&r.body))));
                            }
                        }
                        (body, Behaviour::HoldUntil(_)) => replies.push((request.id, answer(body))),
                    }
                    for (id, body) in replies {
                        let reply = Reply {
                            id,
                            clock_ms: now_ms(),
                            body,
                        };
                        if conn.write(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    FakeNode {
        addr,
        most_outstanding,
        accepted,
    }
}

#[tokio::test]
async fn connect_all_opens_a_session_to_every_local_node_and_names_the_unreachable() {
    let other = fake_node(Behaviour::Silent).await;
    // An address nothing listens on.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let seed = fake_node_listing(Behaviour::Silent, vec![other.addr.clone(), dead.clone()]).await;
    let client = Client::builder()
        .seed(&seed.addr)
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    assert_eq!(client.nodes().len(), 3);
    // Sessions are opened on first use: only the seed's so far.
    assert_eq!(other.accepted.load(Ordering::Relaxed), 0);
    let failed = client.connect_all().await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, dead);
    assert!(
        matches!(failed[0].1, ClientError::Connect { .. }),
        "{:?}",
        failed[0].1
    );
    assert_eq!(other.accepted.load(Ordering::Relaxed), 1);
    // The seed's session was reused, and a second call dials nobody new.
    client.connect_all().await;
    assert_eq!(seed.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(other.accepted.load(Ordering::Relaxed), 1);
    // A client whose local datacenter is another one opens none of them
    // ahead of use (the dead address included).
    let remote = Client::builder()
        .seed(&seed.addr)
        .local_dc("dc2")
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    assert!(remote.connect_all().await.is_empty());
    assert_eq!(other.accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_batch_is_pipelined_and_answers_in_input_order_per_item() {
    let node = fake_node(Behaviour::HoldUntil(100)).await;
    let client = Client::builder()
        .seed(&node.addr)
        .timeout(Duration::from_secs(5))
        .retries(0)
        .build()
        .await
        .unwrap();
    let mut keys: Vec<Vec<u8>> = (0..300).map(|i| format!("key-{i}").into_bytes()).collect();
    keys[137] = b"bad".to_vec();
    let reads = client.get_many("ks", &keys).await.unwrap();
    assert_eq!(reads.len(), keys.len());
    for (i, (key, read)) in keys.iter().zip(&reads).enumerate() {
        if i == 137 {
            let e = read.as_ref().unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::KeyTooLarge), "{e}");
        } else {
            let read = read.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
            assert_eq!(read.siblings[0].value, *key, "item {i} out of order");
        }
    }
    // A client that waited for each answer would have had one request
    // outstanding, and the node would never have answered.
    assert!(node.most_outstanding.load(Ordering::Relaxed) >= 100);

    let items: Vec<PutItem> = keys
        .iter()
        .map(|k| PutItem::new(k.clone(), b"v".to_vec(), Context::default()))
        .collect();
    let written = client.put_many("ks", &items).await.unwrap();
    assert_eq!(written.len(), items.len());
    assert!(written[137].is_err());
    assert_eq!(written.iter().filter(|r| r.is_ok()).count(), 299);
}

#[tokio::test]
async fn the_overall_deadline_bounds_every_retry() {
    let node = fake_node(Behaviour::Silent).await;
    let client = Client::builder()
        .seed(&node.addr)
        .backoff(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    let opts = RequestOptions::new()
        .timeout(Duration::from_millis(200))
        .retries(20)
        .deadline(Duration::from_millis(500));
    let started = Instant::now();
    let e = client.get_with("ks", b"k", &opts).await.unwrap_err();
    let took = started.elapsed();
    // 21 attempts of 200 ms would take over 4 s; the deadline stops them.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
    match e {
        ClientError::DeadlineExceeded { after, last } => {
            assert_eq!(after, Duration::from_millis(500));
            assert!(matches!(*last, ClientError::Timeout { .. }), "{last}");
        }
        other => panic!("expected DeadlineExceeded, got {other}"),
    }
    // Without a deadline, the per-attempt timeout alone applies.
    let started = Instant::now();
    let e = client
        .get_with(
            "ks",
            b"k",
            &RequestOptions::new()
                .timeout(Duration::from_millis(100))
                .retries(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A zero timeout is refused by name, before anything is sent.
    let e = client
        .get_with("ks", b"k", &RequestOptions::new().timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::InvalidOption {
                field: "timeout",
                ..
            }
        ),
        "{e}"
    );
}
