//! The connection layer under good and hostile clients: pipelining, bad
//! frames, oversized frames, bad handshakes, floods, clients that never
//! read, and graceful shutdown. A hostile client must only ever hurt its
//! own connection.

use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::{
    CONNECTION_ERROR_ID, Context, ErrorCode, Hello, MAGIC, PROTOCOL_VERSION, PeerRole, Reply,
    ReplyBody, Request, RequestBody, ResponseBody, Sibling, encode,
};
use isthmus_client::{Channel, ClientError, Session};
use isthmus_core::model::VersionSet;
use isthmus_core::peer::{PeerRequest, PeerResponse};

use isthmus_client::tls::CertIdentity;
use isthmus_client::wire::{Credentials, HelloAnswer, WireError};
use isthmus_core::auth::Principal;
use isthmus_core::server::{Handler, PeerIdentity, ServerConfig, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Echoes the key of a `Get` back as a sibling after sleeping `key[0]` ms;
/// the key `huge` is answered with a value of [`HUGE_BYTES`].
struct Echo;

/// The value the key `huge` is answered with: more than the 64 KiB frame
/// cap the reply-size test sets.
const HUGE_BYTES: usize = 256 * 1024;

impl Handler for Echo {
    async fn authenticate(
        &self,
        _credentials: Option<Credentials>,
        _certificate: Option<CertIdentity>,
    ) -> Result<Principal, WireError> {
        Ok(Principal::Anonymous)
    }

    async fn handle(
        &self,
        _principal: &Principal,
        body: RequestBody,
        _deadline: Duration,
    ) -> ResponseBody {
        match body {
            RequestBody::Get { key, .. } if key == b"huge" => ResponseBody::Value {
                siblings: vec![Sibling {
                    value: vec![7; HUGE_BYTES],
                    timestamp_ms: 0,
                    origin_dc: "dc1".into(),
                    expires_ms: None,
                }],
                context: Context::default(),
                merge_failure: None,
            },
            RequestBody::Get { key, .. } => {
                let delay = key.first().copied().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                ResponseBody::Value {
                    siblings: vec![Sibling {
                        value: key,
                        timestamp_ms: 0,
                        origin_dc: "dc1".into(),
                        expires_ms: None,
                    }],
                    context: Context::default(),
                    merge_failure: None,
                }
            }
            _ => ResponseBody::Written,
        }
    }

    async fn handle_peer(
        &self,
        _from: PeerIdentity,
        body: PeerRequest,
        _deadline: Duration,
    ) -> PeerResponse {
        match body {
            PeerRequest::Read { .. } => PeerResponse::Versions(VersionSet::new()),
            _ => PeerResponse::Applied,
        }
    }
}

struct TestServer {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: ServerConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, Arc::new(Echo), config, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task,
    }
}

fn get(key: Vec<u8>) -> RequestBody {
    RequestBody::Get {
        keyspace: "k".into(),
        key,
        consistency: None,
    }
}

async fn echo_ok(session: &Session, key: &[u8]) {
    match session
        .call(get(key.to_vec()), Duration::from_secs(5))
        .await
    {
        Ok(ResponseBody::Value { siblings, .. }) => assert_eq!(siblings[0].value, key),
        other => panic!("expected an echo of {key:?}, got {other:?}"),
    }
}

/// A raw socket that has completed the handshake.
async fn raw_handshaken(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: PeerRole::Client,
        name: "raw".into(),
        credentials: None,
    };
    write_frame(&mut s, &encode(&hello)).await;
    let _ack = read_frame(&mut s).await.expect("handshake answer");
    s
}

async fn write_frame(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(payload).await.unwrap();
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

/// Reads the connection-level error a node sends before closing, then
/// checks that the node did close.
async fn expect_connection_error(s: &mut TcpStream, code: ErrorCode) {
    expect_connection_error_as::<ResponseBody>(s, code).await
}

/// Reads the refusal a node answers a handshake with, then checks that
/// the node closed.
/// The next frame from `s`, within five seconds.
async fn next_frame(s: &mut TcpStream) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), read_frame(s))
        .await
        .unwrap()
        .expect("a frame")
}

/// The node closes `s` (nothing more comes) within five seconds.
async fn expect_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the node must close the connection after the error");
}

async fn expect_handshake_refusal(s: &mut TcpStream, code: ErrorCode) {
    let answer: HelloAnswer = isthmus_client::wire::decode(&next_frame(s).await).unwrap();
    match answer {
        Err(e) => assert_eq!(e.code, code),
        Ok(ack) => panic!("expected refusal {code:?}, got {ack:?}"),
    }
    expect_closed(s).await;
}

async fn expect_connection_error_as<A: ReplyBody + std::fmt::Debug>(
    s: &mut TcpStream,
    code: ErrorCode,
) {
    let reply: Reply<A> = isthmus_client::wire::decode(&next_frame(s).await).unwrap();
    assert_eq!(reply.id, CONNECTION_ERROR_ID);
    match reply.body.into_result() {
        Err(e) => assert_eq!(e.code, code),
        Ok(other) => panic!("expected error {code:?}, got {other:?}"),
    }
    expect_closed(s).await;
}

#[tokio::test]
async fn pipelined_requests_come_back_to_their_callers() {
    let server = start(ServerConfig::default()).await;
    let session = Arc::new(
        Session::connect(&server.addr, "t", Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let mut calls = Vec::new();
    for i in 0..200u32 {
        let s = session.clone();
        // Later requests sleep less, so answers arrive out of order.
        let key = vec![(20 - i % 20) as u8, (i >> 8) as u8, i as u8];
        calls.push(tokio::spawn(async move { echo_ok(&s, &key).await }));
    }
    for c in calls {
        c.await.unwrap();
    }
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_their_connection() {
    let config = ServerConfig {
        frame_bytes_max: 64 * 1024,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let good = Session::connect(&server.addr, "good", Duration::from_secs(5))
        .await
        .unwrap();

    let mut garbage = raw_handshaken(&server.addr).await;
    write_frame(&mut garbage, &[0xff; 37]).await;
    expect_connection_error(&mut garbage, ErrorCode::Malformed).await;

    let mut trailing = raw_handshaken(&server.addr).await;
    let mut bytes = encode(&Request {
        id: 5,
        timeout_ms: 100,
        deadline_ms: 0,
        body: get(vec![1]),
    });
    bytes.push(0);
    write_frame(&mut trailing, &bytes).await;
    expect_connection_error(&mut trailing, ErrorCode::Malformed).await;

    let mut huge = raw_handshaken(&server.addr).await;
    huge.write_all(&(200u32 * 1024 * 1024).to_be_bytes())
        .await
        .unwrap();
    expect_connection_error(&mut huge, ErrorCode::FrameTooLarge).await;

    echo_ok(&good, b"\x00still here").await;
}

#[tokio::test]
async fn a_reply_too_large_for_a_frame_fails_only_its_request() {
    let config = ServerConfig {
        frame_bytes_max: 64 * 1024,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let session = Arc::new(
        Session::connect(&server.addr, "t", Duration::from_secs(5))
            .await
            .unwrap(),
    );
    // Pipelined with ordinary requests on the same connection: the huge
    // answers become typed errors for their own ids, the others arrive.
    let mut calls = Vec::new();
    for i in 0..40u8 {
        let s = session.clone();
        calls.push(tokio::spawn(async move {
            if i % 4 == 0 {
                let answer = s.call(get(b"huge".to_vec()), Duration::from_secs(5)).await;
                match answer {
                    Err(ClientError::Server(e)) => {
                        assert_eq!(e.code, ErrorCode::ReplyTooLarge, "{e:?}");
                        assert!(!e.code.is_retryable());
                    }
                    other => panic!("expected REPLY_TOO_LARGE, got {other:?}"),
                }
            } else {
                echo_ok(&s, &[0, i]).await;
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    assert!(session.is_open());
    echo_ok(&session, b"\x00still served").await;
}

#[tokio::test]
async fn a_request_too_large_for_a_frame_is_not_sent_and_the_session_stays_open() {
    let server = start(ServerConfig::default()).await;
    let session = Session::connect(&server.addr, "t", Duration::from_secs(5))
        .await
        .unwrap();
    let too_big = vec![0u8; isthmus_core::limit::FRAME_BYTES_MAX_DEFAULT + 1];
    match session.call(get(too_big), Duration::from_secs(5)).await {
        Err(ClientError::RequestTooLarge { .. }) => {}
        other => panic!("expected RequestTooLarge, got {other:?}"),
    }
    assert!(session.is_open());
    echo_ok(&session, b"\x00still served").await;
}

#[tokio::test]
async fn wrong_magic_or_version_is_refused() {
    let server = start(ServerConfig::default()).await;
    for (magic, version) in [(*b"HTTP", PROTOCOL_VERSION), (MAGIC, PROTOCOL_VERSION + 1)] {
        let mut s = TcpStream::connect(&server.addr).await.unwrap();
        let hello = Hello {
            magic,
            version,
            role: PeerRole::Client,
            name: "old".into(),
            credentials: None,
        };
        write_frame(&mut s, &encode(&hello)).await;
        expect_handshake_refusal(&mut s, ErrorCode::ProtocolVersion).await;
    }
    let err = match Session::connect("127.0.0.1:1", "t", Duration::from_secs(2)).await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on port 1"),
    };
    assert!(matches!(err, ClientError::Connect { .. }) && err.is_retryable());
}

#[tokio::test]
async fn a_connection_flood_does_not_starve_served_clients() {
    let config = ServerConfig {
        connections_max: 8,
        handshake_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let good = Session::connect(&server.addr, "good", Duration::from_secs(5))
        .await
        .unwrap();
    // Fifty sockets that never say hello.
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    for i in 0..20u8 {
        echo_ok(&good, &[0, i]).await;
    }
    // Idle sockets lose their slots at the handshake deadline, so a new
    // client gets in while the flood sockets are still open.
    let late = Session::connect(&server.addr, "late", Duration::from_secs(20))
        .await
        .unwrap();
    echo_ok(&late, b"\x00late").await;
    drop(flood);
}

#[tokio::test]
async fn a_client_that_never_reads_stalls_only_itself() {
    let config = ServerConfig {
        in_flight_per_connection_max: 4,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let good = Session::connect(&server.addr, "good", Duration::from_secs(5))
        .await
        .unwrap();
    let mut slow = raw_handshaken(&server.addr).await;
    // Push requests with large answers until the socket stops taking them.
    let writer = tokio::spawn(async move {
        for id in 1..20_000u64 {
            let req = Request {
                id,
                timeout_ms: 1000,
                deadline_ms: 0,
                body: get(vec![0; 8 * 1024]),
            };
            let bytes = encode(&req);
            let sent = tokio::time::timeout(Duration::from_secs(2), async {
                slow.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
                slow.write_all(&bytes).await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return (id, slow);
            }
        }
        panic!("a client that never reads was never pushed back");
    });
    let (stalled_at, _slow) = writer.await.unwrap();
    assert!(stalled_at > 1);
    for i in 0..20u8 {
        echo_ok(&good, &[0, i]).await;
    }
}

#[tokio::test]
async fn shutdown_answers_requests_in_flight() {
    let mut server = start(ServerConfig::default()).await;
    let session = Arc::new(
        Session::connect(&server.addr, "t", Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let s = session.clone();
    let slow_call = tokio::spawn(async move { echo_ok(&s, &[200, 1]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop.take().unwrap().send(()).unwrap();
    slow_call.await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(&server.addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn peers_speak_their_own_protocol_on_the_same_port() {
    let server = start(ServerConfig::default()).await;
    let socket = TcpStream::connect(&server.addr).await.unwrap();
    let peer: Channel<PeerRequest, PeerResponse> = Channel::handshake(
        Box::new(socket),
        &server.addr,
        "n2",
        PeerRole::Node,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let answer = peer
        .call(
            PeerRequest::Read {
                keyspace: "k".into(),
                key: b"x".to_vec(),
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(answer, PeerResponse::Versions(VersionSet::new()));
    // A client request body sent on a peer connection does not decode as a
    // peer request: the node closes that connection with Malformed.
    let mut raw = TcpStream::connect(&server.addr).await.unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: PeerRole::Node,
        name: "n3".into(),
        credentials: None,
    };
    write_frame(&mut raw, &encode(&hello)).await;
    read_frame(&mut raw).await.unwrap();
    let wrong = Request {
        id: 1,
        timeout_ms: 100,
        deadline_ms: 0,
        body: get(vec![0; 40]),
    };
    write_frame(&mut raw, &encode(&wrong)).await;
    expect_connection_error_as::<PeerResponse>(&mut raw, ErrorCode::Malformed).await;
}

/// A peer channel to the server at `addr`, handshaken as node `name`.
async fn peer_channel(
    addr: &str,
    name: &str,
) -> Result<Channel<PeerRequest, PeerResponse>, ClientError> {
    let socket = TcpStream::connect(addr).await.unwrap();
    Channel::handshake(
        Box::new(socket),
        addr,
        name,
        PeerRole::Node,
        Duration::from_secs(5),
    )
    .await
}

async fn peer_read_ok(peer: &Channel<PeerRequest, PeerResponse>) {
    let read = PeerRequest::Read {
        keyspace: "k".into(),
        key: b"x".to_vec(),
    };
    let answer = peer.call(read, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, PeerResponse::Versions(VersionSet::new()));
}

#[tokio::test]
async fn clients_filling_their_slots_do_not_lock_peers_out_and_one_more_is_refused() {
    let config = ServerConfig {
        connections_max: 3,
        peer_connections_max: 2,
        ..ServerConfig::default()
    };
    let stats = config.stats.clone();
    let server = start(config).await;
    // Every client slot taken by logged-in connections that stay idle.
    let mut clients = Vec::new();
    for i in 0..3 {
        let name = format!("idle{i}");
        let session = Session::connect(&server.addr, &name, Duration::from_secs(5))
            .await
            .unwrap();
        echo_ok(&session, &[0, i]).await;
        clients.push(session);
    }
    // A peer still completes its handshake and is served.
    let peer = peer_channel(&server.addr, "n2").await.unwrap();
    peer_read_ok(&peer).await;
    // One more client is refused at its handshake with a typed, retryable
    // error, without waiting for a slot (the call's timeout is the
    // handshake's own: a refusal, not a wait, answers it).
    match Session::connect(&server.addr, "extra", Duration::from_secs(5)).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}");
            assert!(e.code.is_retryable());
        }
        Err(other) => panic!("expected OVERLOADED, got {other:?}"),
        Ok(_) => panic!("a fourth client got in past connections_max = 3"),
    }
    assert_eq!(stats.connections_refused(), 1);
    // The peers' pool is its own: one more peer fits, the one after not.
    let second = peer_channel(&server.addr, "n3").await.unwrap();
    peer_read_ok(&second).await;
    match peer_channel(&server.addr, "n4").await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}"),
        Err(other) => panic!("expected OVERLOADED, got {other:?}"),
        Ok(_) => panic!("a third peer got in past peer_connections_max = 2"),
    }
    // The clients already in are still served.
    for (i, session) in clients.iter().enumerate() {
        echo_ok(session, &[0, i as u8, 1]).await;
    }
    // A client slot freed by a closed connection serves the next client.
    drop(clients.pop());
    let mut next = None;
    for _ in 0..100 {
        if let Ok(session) = Session::connect(&server.addr, "next", Duration::from_secs(5)).await {
            next = Some(session);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo_ok(&next.expect("the freed slot is taken"), b"\x00next").await;
}

#[tokio::test]
async fn sockets_beyond_the_handshake_pool_are_closed_at_once() {
    let config = ServerConfig {
        handshakes_max: 2,
        // Long enough that only the pool, not the deadline, can close the
        // third socket within the five seconds `expect_closed` waits.
        handshake_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let stats = config.stats.clone();
    let server = start(config).await;
    let good = Session::connect(&server.addr, "good", Duration::from_secs(5))
        .await
        .unwrap();
    // Two sockets that never say hello hold both handshake slots.
    let _silent = [
        TcpStream::connect(&server.addr).await.unwrap(),
        TcpStream::connect(&server.addr).await.unwrap(),
    ];
    // The accept loop does not wait for a slot: the third socket is
    // closed, not left in the backlog until a silent one times out.
    let mut third = TcpStream::connect(&server.addr).await.unwrap();
    expect_closed(&mut third).await;
    assert!(stats.connections_refused() >= 1);
    // Connections past their handshake are not affected.
    echo_ok(&good, b"\x00still served").await;
}

#[tokio::test]
async fn a_frame_trickled_slower_than_the_read_deadline_is_cut() {
    let config = ServerConfig {
        idle_timeout: Duration::from_secs(60),
        read_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let good = Session::connect(&server.addr, "good", Duration::from_secs(5))
        .await
        .unwrap();
    let request = |id| {
        let mut frame = Vec::new();
        let payload = encode(&Request {
            id,
            timeout_ms: 1000,
            deadline_ms: 0,
            body: get(vec![0; 24]),
        });
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame
    };

    // Idle longer than the read deadline, then a whole frame: the idle
    // deadline is the one that applies between frames, and it is long.
    let mut patient = raw_handshaken(&server.addr).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    patient.write_all(&request(1)).await.unwrap();
    let reply: Reply<ResponseBody> =
        isthmus_client::wire::decode(&next_frame(&mut patient).await).unwrap();
    assert_eq!(reply.id, 1);
    assert!(reply.body.into_result().is_ok());

    // A slowloris: one byte every 200 ms, the frame taking seconds. The
    // node closes the connection before the frame is whole.
    let slowloris = raw_handshaken(&server.addr).await;
    let (mut read, mut write) = slowloris.into_split();
    let frame = request(2);
    let trickle = tokio::spawn(async move {
        for byte in frame {
            if write.write_all(&[byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    });
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the trickled frame must be cut before it is whole: {closed:?}, {} bytes",
        rest.len()
    );
    trickle.abort();
    echo_ok(&good, b"\x00still served").await;
}

#[tokio::test]
async fn a_client_that_never_reads_loses_its_connection_at_the_write_deadline() {
    let config = ServerConfig {
        in_flight_per_connection_max: 4,
        write_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let good = Session::connect(&server.addr, "good", Duration::from_secs(5))
        .await
        .unwrap();
    let slow = raw_handshaken(&server.addr).await;
    let (mut read, mut write) = slow.into_split();
    // Requests with 8 KiB answers until the node stops taking them: its
    // replies fill both sockets' buffers, and its writer stalls.
    let pushed = tokio::spawn(async move {
        for id in 1..20_000u64 {
            let bytes = encode(&Request {
                id,
                timeout_ms: 1000,
                deadline_ms: 0,
                body: get(vec![0; 8 * 1024]),
            });
            let sent = tokio::time::timeout(Duration::from_secs(2), async {
                write.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
                write.write_all(&bytes).await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return (id, write);
            }
        }
        panic!("a client that never reads was never pushed back");
    });
    // Other clients are served meanwhile.
    for i in 0..20u8 {
        echo_ok(&good, &[0, i]).await;
    }
    let (stalled_at, _write) = pushed.await.unwrap();
    assert!(stalled_at > 1);
    // The node closed the connection: reading now finds its end (or a
    // reset) after whatever was buffered, rather than answers for ever.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "the node must close a connection whose replies stall past the write deadline"
    );
    for i in 0..20u8 {
        echo_ok(&good, &[0, i, 1]).await;
    }
}

/// A handshaken raw socket whose receive buffer is small, so that replies
/// it does not read back up into the node soon.
async fn raw_handshaken_small_window(addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr.parse().unwrap()).await.unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: PeerRole::Client,
        name: "small-window".into(),
        credentials: None,
    };
    write_frame(&mut s, &encode(&hello)).await;
    let _ack = read_frame(&mut s).await.expect("handshake answer");
    s
}

#[tokio::test]
async fn reply_bytes_queued_for_a_client_that_does_not_read_stay_within_the_budget() {
    const BUDGET: usize = 1024 * 1024;
    const REQUESTS: u64 = 64;
    let config = ServerConfig {
        in_flight_per_connection_max: REQUESTS as usize,
        reply_buffer_bytes_max: BUDGET,
        ..ServerConfig::default()
    };
    let stats = config.stats.clone();
    let server = start(config).await;
    let mut slow = raw_handshaken_small_window(&server.addr).await;
    // 64 answers of 256 KiB (16 MiB): far more than the sockets' buffers
    // take, so the rest waits in the node.
    for id in 1..=REQUESTS {
        let request = Request {
            id,
            timeout_ms: 30_000,
            deadline_ms: 0,
            body: get(b"huge".to_vec()),
        };
        write_frame(&mut slow, &encode(&request)).await;
    }
    // Wait until the node's queue for this connection has filled.
    for _ in 0..200 {
        if stats.reply_bytes_queued_peak() >= BUDGET / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = stats.reply_bytes_queued_peak();
    assert!(peak >= BUDGET / 2, "the queue never filled: peak {peak}");
    assert!(peak <= BUDGET, "{peak} reply bytes queued, budget {BUDGET}");
    // Nothing was lost: every request is answered once the client reads.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..REQUESTS {
        let reply: Reply<ResponseBody> =
            isthmus_client::wire::decode(&next_frame(&mut slow).await).unwrap();
        match reply.body {
            ResponseBody::Value { siblings, .. } => assert_eq!(siblings[0].value.len(), HUGE_BYTES),
            other => panic!("expected the huge value, got {other:?}"),
        }
        answered.insert(reply.id);
    }
    assert_eq!(answered, (1..=REQUESTS).collect());
    assert!(stats.reply_bytes_queued_peak() <= BUDGET);
}

#[tokio::test]
async fn a_reply_larger_than_the_whole_budget_is_still_sent() {
    let config = ServerConfig {
        reply_buffer_bytes_max: 64 * 1024,
        ..ServerConfig::default()
    };
    let stats = config.stats.clone();
    let server = start(config).await;
    let session = Session::connect(&server.addr, "t", Duration::from_secs(5))
        .await
        .unwrap();
    for _ in 0..3 {
        match session
            .call(get(b"huge".to_vec()), Duration::from_secs(5))
            .await
        {
            Ok(ResponseBody::Value { siblings, .. }) => {
                assert_eq!(siblings[0].value.len(), HUGE_BYTES)
            }
            other => panic!("expected the huge value, got {other:?}"),
        }
    }
    // It went alone: the peak is that one reply.
    assert!(stats.reply_bytes_queued_peak() > HUGE_BYTES);
    assert!(stats.reply_bytes_queued_peak() < 2 * HUGE_BYTES);
    echo_ok(&session, b"\x00small").await;
}

/// The node's wall clock, as the server under test reads it.
fn wall_ms() -> u64 {
    isthmus_core::wall_clock::now_ms()
}

async fn raw_call(s: &mut TcpStream, id: u64, timeout_ms: u32, deadline_ms: u64, key: Vec<u8>) {
    let request = Request {
        id,
        timeout_ms,
        deadline_ms,
        body: get(key),
    };
    write_frame(s, &encode(&request)).await;
}

async fn raw_reply(s: &mut TcpStream) -> Reply<ResponseBody> {
    isthmus_client::wire::decode(&next_frame(s).await).unwrap()
}

#[tokio::test]
async fn a_request_read_after_its_senders_deadline_is_not_started() {
    let config = ServerConfig::default();
    let stats = config.stats.clone();
    let server = start(config).await;
    let mut s = raw_handshaken(&server.addr).await;
    // Its sender stopped waiting a second ago (on the node's clock): the
    // node answers at once, without running it (it would sleep 200 ms).
    let started = std::time::Instant::now();
    raw_call(&mut s, 1, 30_000, wall_ms() - 1_000, vec![200]).await;
    let reply = raw_reply(&mut s).await;
    assert_eq!(reply.id, 1);
    match reply.body.into_result() {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Timeout);
            assert!(e.message.contains("not started"), "{}", e.message);
        }
        Ok(other) => panic!("an expired request must not run, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "answered without the work"
    );
    assert_eq!(stats.requests_expired(), 1);
    assert!(
        reply.clock_ms >= wall_ms() - 5_000,
        "replies carry the node's clock"
    );

    // A deadline nearer than the timeout bounds the work: the 200 ms
    // request times out by it, although the sender named 30 s.
    raw_call(&mut s, 2, 30_000, wall_ms() + 50, vec![200]).await;
    match raw_reply(&mut s).await.body.into_result() {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Timeout);
            assert!(e.message.contains("no answer within"), "{}", e.message);
        }
        Ok(other) => panic!("the deadline must bound the work, got {other:?}"),
    }
    // A deadline ahead, or none (0), and the request runs.
    raw_call(&mut s, 3, 30_000, wall_ms() + 10_000, vec![1]).await;
    assert!(raw_reply(&mut s).await.body.into_result().is_ok());
    raw_call(&mut s, 4, 30_000, 0, vec![1]).await;
    assert!(raw_reply(&mut s).await.body.into_result().is_ok());
    assert_eq!(stats.requests_expired(), 1);

    // The SDK states its deadlines on the node's clock: its requests run.
    let session = Session::connect(&server.addr, "sdk", Duration::from_secs(5))
        .await
        .unwrap();
    echo_ok(&session, b"\x01sdk").await;
    assert_eq!(stats.requests_expired(), 1);
}
