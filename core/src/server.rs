//! The node server: accepts connections, runs the handshake, decodes
//! requests, hands them to a [`Handler`], and writes the responses back.
//!
//! Shaped after mini-redis's server: `run(listener, handler, config,
//! shutdown)`, one task per connection, a semaphore capping connections, and
//! a graceful drain at shutdown. What it adds is hostility-proofing:
//!
//! - a handshake deadline, so idle sockets (a connection flood) give their
//!   slot back quickly;
//! - a frame cap and a guarded decoder: a malformed or oversized frame gets
//!   one error response (request id [`CONNECTION_ERROR_ID`]) and closes that
//!   connection only;
//! - per-connection in-flight limit: a client that stops reading its
//!   responses stalls only itself (its requests wait for a slot; nothing is
//!   buffered without bound);
//! - per-request deadlines, capped by the server;
//! - a reply too large for a frame (or that does not encode) becomes a
//!   typed [`ErrorCode::ReplyTooLarge`] for that request, and the
//!   connection keeps serving; if the socket fails under the writer, the
//!   reader stops too, so no request runs whose answer cannot be sent.
//!
//! What it is not: it does not know what a request means. The coordinator
//! is a `Handler`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::connection::{Connection, ConnectionError, WriteHalf};
use isthmus_client::wire::frame::HANDSHAKE_FRAME_BYTES_MAX;
use isthmus_client::wire::{
    CONNECTION_ERROR_ID, Envelope, ErrorCode, Hello, HelloAck, HelloAnswer, MAGIC,
    PROTOCOL_VERSION, PeerRole, Reply, ReplyBody, RequestBody, ResponseBody, WireError,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::JoinSet;

use crate::auth::Principal;
use crate::model::DcName;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;
use isthmus_client::tls::CertIdentity;
use isthmus_client::wire::Credentials;

/// What serves requests once the connection layer has decoded them.
pub trait Handler: Send + Sync + 'static {
    /// Decide who a client connection is from what its handshake carries:
    /// its credentials and the identity of its TLS client certificate. An
    /// error refuses the connection.
    fn authenticate(
        &self,
        credentials: Option<Credentials>,
        certificate: Option<CertIdentity>,
    ) -> impl Future<Output = Result<Principal, WireError>> + Send;

    /// Serve one request of `principal`. The server enforces the deadline;
    /// the handler may also use it to bound its own waits.
    fn handle(
        &self,
        principal: &Principal,
        body: RequestBody,
        deadline: Duration,
    ) -> impl Future<Output = ResponseBody> + Send;

    /// Serve one request from another node: `from` is who the peer is,
    /// proven by its certificate under TLS. Gossip judges by it who may
    /// change which entry, and a bridge batch's origin must be its DC.
    fn handle_peer(
        &self,
        from: PeerIdentity,
        body: PeerRequest,
        deadline: Duration,
    ) -> impl Future<Output = PeerResponse> + Send;
}

/// Who a peer connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node: the node id its certificate names (which its handshake
    /// must repeat), or on a plaintext link what its handshake claims.
    pub node: NodeId,
    /// Its datacenter as its certificate names it; `None` on a plaintext
    /// link (`insecure_plaintext`), where nothing about the peer is
    /// proven.
    pub dc: Option<DcName>,
}

/// Where connections come from: a TCP listener, or a simulated one in
/// deterministic tests.
pub trait Listener: Send + 'static {
    /// The connection type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Wait for the next connection.
    fn accept(
        &mut self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Stream, SocketAddr)> {
        let (socket, peer) = TcpListener::accept(self).await?;
        // Small request/response frames: latency matters more than packets.
        let _ = socket.set_nodelay(true);
        Ok((socket, peer))
    }
}

/// Limits and deadlines of the connection layer.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This node's id and datacenter, announced in the handshake.
    pub node_id: String,
    /// This node's datacenter.
    pub dc: String,
    /// Connections served at once; further connections wait in the accept
    /// backlog until a slot frees.
    pub connections_max: usize,
    /// Largest frame accepted or sent (default
    /// [`FRAME_BYTES_MAX_DEFAULT`](crate::limit::FRAME_BYTES_MAX_DEFAULT));
    /// a node refuses to start with limits whose largest answer exceeds it
    /// ([`Limits::validate`](crate::limit::Limits::validate)).
    pub frame_bytes_max: usize,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// A connection with no complete frame for this long is closed.
    pub idle_timeout: Duration,
    /// Requests of one connection being served at once.
    pub in_flight_per_connection_max: usize,
    /// Upper bound on any request's deadline, whatever the client asks.
    pub request_deadline_max: Duration,
    /// How long shutdown waits for in-flight requests to finish.
    pub drain_timeout: Duration,
    /// TLS for every connection (the handshake, certificates included,
    /// must complete within `handshake_timeout`); `None` serves plaintext
    /// and believes a peer's claimed node id (`insecure_plaintext`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: "node".into(),
            dc: "dc1".into(),
            connections_max: 1024,
            frame_bytes_max: crate::limit::FRAME_BYTES_MAX_DEFAULT,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            in_flight_per_connection_max: 128,
            request_deadline_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

fn wire_error(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError {
        code,
        message: message.into(),
        acks: None,
        needs: None,
    }
}

/// Serve connections from `listener` until `shutdown` completes, then stop
/// accepting, tell every connection to finish, and wait (up to
/// `drain_timeout`) for in-flight requests to be answered.
pub async fn run<H: Handler, L: Listener>(
    mut listener: L,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.connections_max.max(1)));
    let (stop_tx, _) = broadcast::channel::<()>(1);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (handler, config, stop) = (handler.clone(), config.clone(), stop_tx.subscribe());
        connections.spawn(async move {
            if let Err(e) = serve_connection(socket, handler, config, stop).await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection<H: Handler, S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    socket: S,
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    stop: broadcast::Receiver<()>,
) -> Result<(), ConnectionError> {
    let Some(tls) = config.tls.clone() else {
        return serve_handshake(socket, None, handler, config, stop).await;
    };
    // The TLS handshake counts against the same deadline as ours: a
    // connection that never finishes it gives its slot back.
    let started = tokio::time::Instant::now();
    let accepted = tokio::time::timeout(
        config.handshake_timeout,
        tokio_rustls::TlsAcceptor::from(tls).accept(socket),
    )
    .await;
    let stream = match accepted {
        Err(_) => return Ok(()),
        Ok(Err(e)) => {
            // A plaintext client, a certificate from another CA, an
            // expired one: rustls has sent its alert; nothing else to do.
            tracing::debug!(error = %e, "TLS handshake refused");
            return Ok(());
        }
        Ok(Ok(stream)) => stream,
    };
    let identity = match isthmus_client::tls::peer_identity(stream.get_ref().1.peer_certificates())
    {
        None => Authenticated::Anonymous,
        Some(Ok(identity)) => Authenticated::Certificate(identity),
        Some(Err(e)) => Authenticated::Refused(e.to_string()),
    };
    let config = Arc::new(ServerConfig {
        handshake_timeout: config.handshake_timeout.saturating_sub(started.elapsed()),
        ..(*config).clone()
    });
    serve_handshake(stream, Some(identity), handler, config, stop).await
}

/// What TLS proved about the other end of a connection.
enum Authenticated {
    /// No client certificate (a client that logs in another way).
    Anonymous,
    /// A certificate from a trusted CA, naming this identity.
    Certificate(isthmus_client::tls::CertIdentity),
    /// A certificate from a trusted CA whose identity cannot be read.
    Refused(String),
}

/// Refuse a handshake with `code` and close.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
    code: ErrorCode,
    message: String,
) {
    let answer: HelloAnswer = Err(wire_error(code, message));
    let _ = conn.write(&answer).await;
}

/// Our handshake over an established stream; `tls` is what TLS proved
/// (`None`: a plaintext link).
async fn serve_handshake<H: Handler, S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    socket: S,
    tls: Option<Authenticated>,
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    stop: broadcast::Receiver<()>,
) -> Result<(), ConnectionError> {
    // The handshake is read under a small cap: a connection that has not
    // said who it is cannot make the node hold a frame-cap-sized buffer.
    let mut conn = Connection::new(
        socket,
        HANDSHAKE_FRAME_BYTES_MAX.min(config.frame_bytes_max),
    );
    let hello = match tokio::time::timeout(config.handshake_timeout, conn.read::<Hello>()).await {
        Err(_) | Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let code = connection_error::<ResponseBody>(&e);
            if let ResponseBody::Error(error) = code.body {
                refuse(&mut conn, error.code, error.message).await;
            }
            return Err(e);
        }
        Ok(Ok(Some(hello))) => hello,
    };
    if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
        let message = format!("this node speaks protocol {PROTOCOL_VERSION} with magic ISTH");
        refuse(&mut conn, ErrorCode::ProtocolVersion, message).await;
        return Ok(());
    }
    // The peer role is bound to the certificate: only a node certificate
    // from a trusted CA gets it, and only for the node id it names.
    let peer = match (hello.role, &tls) {
        (PeerRole::Client, _) => None,
        (PeerRole::Node, None) => Some(PeerIdentity {
            node: NodeId(hello.name.clone()),
            dc: None,
        }),
        (
            PeerRole::Node,
            Some(Authenticated::Certificate(isthmus_client::tls::CertIdentity::Node {
                node_id,
                dc,
            })),
        ) if *node_id == hello.name => Some(PeerIdentity {
            node: NodeId(node_id.clone()),
            dc: Some(DcName(dc.clone())),
        }),
        (PeerRole::Node, Some(proof)) => {
            let shown = match proof {
                Authenticated::Anonymous => "no certificate".to_owned(),
                Authenticated::Certificate(identity) => format!("a certificate for {identity}"),
                Authenticated::Refused(reason) => format!("an unreadable certificate ({reason})"),
            };
            let message = format!(
                "the peer role needs a node certificate naming node {:?}; this connection has {shown}",
                hello.name
            );
            tracing::warn!(claimed = %hello.name, "{message}");
            refuse(&mut conn, ErrorCode::Unauthenticated, message).await;
            return Ok(());
        }
    };
    let principal = match peer {
        Some(_) => None,
        None => {
            let certificate = match tls {
                Some(Authenticated::Certificate(identity)) => Some(identity),
                _ => None,
            };
            let judged = tokio::time::timeout(
                config.handshake_timeout,
                handler.authenticate(hello.credentials, certificate),
            )
            .await;
            match judged {
                Ok(Ok(principal)) => Some(Arc::new(principal)),
                Ok(Err(refusal)) => {
                    let answer: HelloAnswer = Err(refusal);
                    let _ = conn.write(&answer).await;
                    return Ok(());
                }
                Err(_) => {
                    let message = "authentication did not finish in time".to_owned();
                    refuse(&mut conn, ErrorCode::Unauthenticated, message).await;
                    return Ok(());
                }
            }
        }
    };
    conn.set_frame_bytes_max(config.frame_bytes_max);
    let answer: HelloAnswer = Ok(HelloAck {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node_id: config.node_id.clone(),
        dc: config.dc.clone(),
    });
    conn.write(&answer).await?;
    match (peer, principal) {
        (None, Some(principal)) => {
            serve_requests(conn, config, stop, move |body: RequestBody, deadline| {
                let (handler, principal) = (handler.clone(), principal.clone());
                async move { handler.handle(&principal, body, deadline).await }
            })
            .await
        }
        (None, None) => Ok(()),
        (Some(from), _) => {
            serve_requests(conn, config, stop, move |body: PeerRequest, deadline| {
                let (handler, from) = (handler.clone(), from.clone());
                async move { handler.handle_peer(from, body, deadline).await }
            })
            .await
        }
    }
}

/// The request loop of one connection, for either protocol.
async fn serve_requests<S, Q, A, F, Fut>(
    conn: Connection<S>,
    config: Arc<ServerConfig>,
    mut stop: broadcast::Receiver<()>,
    serve: F,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Q: DeserializeOwned + Send + 'static,
    A: ReplyBody,
    F: Fn(Q, Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = A> + Send + 'static,
{
    let (mut reader, mut writer) = conn.split();
    let in_flight = config.in_flight_per_connection_max.max(1);
    let (tx, mut rx) = mpsc::channel::<Reply<A>>(in_flight);
    // The writer ends only when the queue closes or the socket fails; a
    // reply it cannot send becomes an error reply for that request.
    let mut write_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            feed_reply(&mut writer, reply).await?;
            // Batch whatever else is ready into the same flush.
            while let Ok(more) = rx.try_recv() {
                feed_reply(&mut writer, more).await?;
            }
            writer.flush().await?;
        }
        writer.close().await
    });
    let mut writer_ended = None;
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut requests = JoinSet::new();
    let result = loop {
        let next = tokio::select! {
            _ = stop.recv() => break Ok(()),
            // The writer failed (the socket is gone): stop reading, or the
            // connection would go on executing requests nobody hears of.
            ended = &mut write_task => {
                writer_ended = Some(ended);
                break Ok(());
            }
            next = tokio::time::timeout(config.idle_timeout, reader.read::<Envelope<Q>>()) => next,
        };
        let request = match next {
            Err(_) | Ok(Ok(None)) => break Ok(()),
            Ok(Err(e)) => {
                let _ = tx.send(connection_error(&e)).await;
                break Err(e);
            }
            Ok(Ok(Some(request))) => request,
        };
        // Backpressure: wait for a slot before reading the next request.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let deadline =
            Duration::from_millis(u64::from(request.timeout_ms)).min(config.request_deadline_max);
        // Boxed: a handler's future is large, and moving it by value into
        // the task would copy all of it for every request.
        let work = Box::pin(serve(request.body, deadline));
        let tx = tx.clone();
        requests.spawn(async move {
            let body = match tokio::time::timeout(deadline, work).await {
                Ok(body) => body,
                Err(_) => A::from_error(wire_error(
                    ErrorCode::Timeout,
                    format!("no answer within {deadline:?}"),
                )),
            };
            let _ = tx
                .send(Reply {
                    id: request.id,
                    body,
                })
                .await;
            drop(slot);
        });
        while requests.try_join_next().is_some() {}
    };
    // Answer what is in flight, then close the write side.
    while requests.join_next().await.is_some() {}
    drop(tx);
    let ended = match writer_ended {
        Some(ended) => ended,
        None => write_task.await,
    };
    match ended {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => return Err(e),
    }
    result
}

/// Queue one reply on the writer. A reply the frame cap cannot carry, or
/// that does not encode, is replaced by a [`ErrorCode::ReplyTooLarge`]
/// error for the same request id: the request fails, the connection goes
/// on. Only an IO error ends the writer.
async fn feed_reply<S, A>(writer: &mut WriteHalf<S>, reply: Reply<A>) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: ReplyBody,
{
    match writer.feed(&reply).await {
        Err(e @ (ConnectionError::MessageTooLarge { .. } | ConnectionError::Encode { .. })) => {
            tracing::warn!(id = reply.id, error = %e, "reply replaced by an error");
            let error = Reply {
                id: reply.id,
                body: A::from_error(wire_error(ErrorCode::ReplyTooLarge, e.to_string())),
            };
            writer.feed(&error).await
        }
        other => other,
    }
}

fn connection_error<A: ReplyBody>(e: &ConnectionError) -> Reply<A> {
    let code = match e {
        ConnectionError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
        ConnectionError::MessageTooLarge { .. } | ConnectionError::Encode { .. } => {
            ErrorCode::ReplyTooLarge
        }
        ConnectionError::Decode(_) | ConnectionError::Io(_) => ErrorCode::Malformed,
    };
    Reply {
        id: CONNECTION_ERROR_ID,
        body: A::from_error(wire_error(code, e.to_string())),
    }
}
