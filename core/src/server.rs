//! The node server: accepts connections, runs the handshake, decodes
//! requests, hands them to a [`Handler`], and writes the responses back.
//!
//! Shaped after mini-redis's server: `run(listener, handler, config,
//! shutdown)`, one task per connection, semaphores capping connections, and
//! a graceful drain at shutdown. What it adds is hostility-proofing:
//!
//! - three slot pools: connections still in their handshake, client
//!   connections, and peer (node) connections. The role is known only once
//!   the handshake is read, so a socket first takes a handshake slot; a
//!   socket accepted when every handshake slot is taken is closed at once,
//!   so the accept loop never waits for a slot. A handshake whose role's
//!   pool is full is refused with a typed [`ErrorCode::Overloaded`] rather
//!   than left waiting, and clients, however many, never take a peer's
//!   slot (under TLS the peer role needs a node certificate);
//! - a handshake deadline, so idle sockets (a connection flood) give their
//!   slot back quickly;
//! - an idle deadline for the next frame to begin and a read deadline for
//!   a begun frame to end, so a client trickling a frame a byte at a time
//!   (slowloris) loses its connection at the read deadline;
//! - a frame cap and a guarded decoder: a malformed or oversized frame gets
//!   one error response (request id [`CONNECTION_ERROR_ID`]) and closes that
//!   connection only;
//! - per-connection in-flight limit: a client that stops reading its
//!   responses stalls only itself (its requests wait for a slot; nothing is
//!   buffered without bound);
//! - per-connection budget of reply bytes: replies are encoded before they
//!   are queued for the socket, and the queue holds at most
//!   `reply_buffer_bytes_max` bytes of them (a single reply larger than
//!   the budget still goes, alone). A reply waiting for room keeps its
//!   in-flight slot, so a slow reader's connection takes no new request
//!   meanwhile: what it holds is the budget plus the replies of its
//!   requests in flight, not a queue of in-flight count frames on top;
//! - a write deadline: a connection whose queued replies make no progress
//!   onto the socket for `write_timeout` (a client that never reads) is
//!   closed, and its slot freed;
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
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use isthmus_client::wire::connection::{
    Connection, ConnectionError, ReadDeadline, WriteHalf, encode_frame,
};
use isthmus_client::wire::frame::HANDSHAKE_FRAME_BYTES_MAX;
use isthmus_client::wire::{
    CONNECTION_ERROR_ID, Envelope, ErrorCode, Hello, HelloAck, HelloAnswer, MAGIC,
    PROTOCOL_VERSION, PeerRole, Reply, ReplyBody, RequestBody, ResponseBody, WireError,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio::task::JoinSet;

use crate::auth::Principal;
use crate::model::DcName;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;
use crate::wall_clock::now_ms;
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
    /// Client connections served at once; a client whose handshake finds
    /// them all taken is refused with [`ErrorCode::Overloaded`].
    pub connections_max: usize,
    /// Peer (node) connections served at once, a pool of their own so that
    /// clients never lock peers out; a peer whose handshake finds them all
    /// taken is refused with [`ErrorCode::Overloaded`].
    pub peer_connections_max: usize,
    /// Connections in their handshake (TLS included) at once; a socket
    /// accepted when all are taken is closed at once.
    pub handshakes_max: usize,
    /// Largest frame accepted or sent (default
    /// [`FRAME_BYTES_MAX_DEFAULT`](crate::limit::FRAME_BYTES_MAX_DEFAULT));
    /// a node refuses to start with limits whose largest answer exceeds it
    /// ([`Limits::validate`](crate::limit::Limits::validate)).
    pub frame_bytes_max: usize,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// A connection on which no next frame begins for this long is closed.
    pub idle_timeout: Duration,
    /// A frame, once its first byte has arrived, must be whole within this
    /// long, or its connection is closed (a slowloris).
    pub read_timeout: Duration,
    /// A connection whose queued replies make no progress onto the socket
    /// for this long (a client that does not read) is closed.
    pub write_timeout: Duration,
    /// Requests of one connection being served at once.
    pub in_flight_per_connection_max: usize,
    /// Bytes of encoded replies queued for one connection's socket; a
    /// reply waits (holding its in-flight slot) until the queue has room
    /// for it. A single reply larger than this is still sent, alone.
    pub reply_buffer_bytes_max: usize,
    /// Upper bound on any request's deadline, whatever the client asks.
    pub request_deadline_max: Duration,
    /// How long shutdown waits for in-flight requests to finish.
    pub drain_timeout: Duration,
    /// TLS for every connection (the handshake, certificates included,
    /// must complete within `handshake_timeout`); `None` serves plaintext
    /// and believes a peer's claimed node id (`insecure_plaintext`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The server's counters; whoever holds a clone of this `Arc` reads
    /// them while the server runs.
    pub stats: Arc<ServerStats>,
}

/// Default [`ServerConfig::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default [`ServerConfig::peer_connections_max`]: a node keeps one
/// channel to each peer, so this is room for a cluster of hundreds.
pub const PEER_CONNECTIONS_MAX_DEFAULT: usize = 512;
/// Default [`ServerConfig::handshakes_max`].
pub const HANDSHAKES_MAX_DEFAULT: usize = 256;
/// Default [`ServerConfig::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default [`ServerConfig::idle_timeout`].
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// Default [`ServerConfig::read_timeout`].
pub const READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default [`ServerConfig::write_timeout`].
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default [`ServerConfig::reply_buffer_bytes_max`]: 4 MiB.
pub const REPLY_BUFFER_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    reply_bytes_queued_peak: AtomicUsize,
    connections_refused: AtomicU64,
    expired: AtomicU64,
    clients_open: AtomicUsize,
    peers_open: AtomicUsize,
}

/// Counts a connection open in its role's pool while it lives.
struct OpenConnection {
    stats: Arc<ServerStats>,
    peer: bool,
}

impl OpenConnection {
    fn new(stats: &Arc<ServerStats>, peer: bool) -> Self {
        stats.open(peer).fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            stats: stats.clone(),
            peer,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open(self.peer).fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServerStats {
    /// The most encoded reply bytes any one connection has had queued for
    /// its socket at once. At most
    /// [`ServerConfig::reply_buffer_bytes_max`], unless a single reply
    /// larger than that was queued alone.
    pub fn reply_bytes_queued_peak(&self) -> usize {
        self.reply_bytes_queued_peak.load(Ordering::Relaxed)
    }

    /// Connections refused for want of a slot: closed at accept (every
    /// handshake slot taken) or refused with [`ErrorCode::Overloaded`] at
    /// the handshake (their role's pool full).
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Requests answered [`ErrorCode::Timeout`] unstarted: read after
    /// their sender's deadline ([`Envelope::deadline_ms`]).
    pub fn requests_expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Client connections past their handshake, open now.
    pub fn clients_open(&self) -> usize {
        self.clients_open.load(Ordering::Relaxed)
    }

    /// Peer (node) connections past their handshake, open now.
    pub fn peers_open(&self) -> usize {
        self.peers_open.load(Ordering::Relaxed)
    }

    fn open(&self, peer: bool) -> &AtomicUsize {
        if peer {
            &self.peers_open
        } else {
            &self.clients_open
        }
    }

    fn refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: "node".into(),
            dc: "dc1".into(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            peer_connections_max: PEER_CONNECTIONS_MAX_DEFAULT,
            handshakes_max: HANDSHAKES_MAX_DEFAULT,
            frame_bytes_max: crate::limit::FRAME_BYTES_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            read_timeout: READ_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            in_flight_per_connection_max: 128,
            reply_buffer_bytes_max: REPLY_BUFFER_BYTES_MAX_DEFAULT,
            request_deadline_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            tls: None,
            stats: Arc::default(),
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
    let pools = Arc::new(Pools {
        handshakes: Arc::new(Semaphore::new(config.handshakes_max.max(1))),
        clients: Arc::new(Semaphore::new(config.connections_max.max(1))),
        peers: Arc::new(Semaphore::new(config.peer_connections_max.max(1))),
    });
    let (stop_tx, _) = broadcast::channel::<()>(1);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
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
        // The loop never waits for a slot: with every handshake slot taken
        // (sockets that do not speak, each gone by its deadline), a new
        // socket is closed now and its client may retry.
        let Ok(handshake) = pools.handshakes.clone().try_acquire_owned() else {
            config.stats.refused();
            tracing::debug!(%peer, "every handshake slot is taken: connection closed");
            drop(socket);
            continue;
        };
        let (handler, config, pools, stop) = (
            handler.clone(),
            config.clone(),
            pools.clone(),
            stop_tx.subscribe(),
        );
        connections.spawn(async move {
            let slots = Slots {
                _handshake: handshake,
                pools,
            };
            if let Err(e) = serve_connection(socket, slots, handler, config, stop).await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
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

/// The slot pools of a server.
struct Pools {
    handshakes: Arc<Semaphore>,
    clients: Arc<Semaphore>,
    peers: Arc<Semaphore>,
}

/// What a connection holds while in its handshake: its handshake slot,
/// and the pools its role slot will come from.
struct Slots {
    /// Held, not read: dropping it gives the slot back.
    _handshake: OwnedSemaphorePermit,
    pools: Arc<Pools>,
}

async fn serve_connection<H: Handler, S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    socket: S,
    slots: Slots,
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    stop: broadcast::Receiver<()>,
) -> Result<(), ConnectionError> {
    let Some(tls) = config.tls.clone() else {
        return serve_handshake(socket, None, slots, handler, config, stop).await;
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
    serve_handshake(stream, Some(identity), slots, handler, config, stop).await
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
    slots: Slots,
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    stop: broadcast::Receiver<()>,
) -> Result<(), ConnectionError> {
    // Counts the bytes the socket takes, for the write deadline.
    let socket = Metered::new(socket);
    let written = socket.written.clone();
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
            dc: Some(DcName::from(dc.as_str())),
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
    // The role is known: take a slot of its pool, or refuse now (before
    // any authentication work) rather than keep the connection waiting.
    let (pool, role, max) = match peer {
        Some(_) => (&slots.pools.peers, "peer", config.peer_connections_max),
        None => (&slots.pools.clients, "client", config.connections_max),
    };
    let Ok(role_slot) = pool.clone().try_acquire_owned() else {
        config.stats.refused();
        let message = format!("this node serves at most {max} {role} connections: retry later");
        tracing::debug!(name = %hello.name, "{message}");
        refuse(&mut conn, ErrorCode::Overloaded, message).await;
        return Ok(());
    };
    let open = OpenConnection::new(&config.stats, peer.is_some());
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
        clock_ms: now_ms(),
    });
    // The handshake slot is given back before the answer goes: once a
    // client reads its acknowledgement, it holds only its role's slot.
    drop(slots);
    conn.write(&answer).await?;
    let served = match (peer, principal) {
        (None, Some(principal)) => {
            serve_requests(
                conn,
                written,
                config,
                stop,
                move |body: RequestBody, deadline| {
                    let (handler, principal) = (handler.clone(), principal.clone());
                    async move { handler.handle(&principal, body, deadline).await }
                },
            )
            .await
        }
        (None, None) => Ok(()),
        (Some(from), _) => {
            serve_requests(
                conn,
                written,
                config,
                stop,
                move |body: PeerRequest, deadline| {
                    let (handler, from) = (handler.clone(), from.clone());
                    async move { handler.handle_peer(from, body, deadline).await }
                },
            )
            .await
        }
    };
    drop(open);
    drop(role_slot);
    served
}

/// A stream that counts the bytes it has written, so that the writer can
/// tell a slow socket (bytes still leaving) from a stalled one.
struct Metered<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

impl<S> Metered<S> {
    fn new(inner: S) -> Self {
        Metered {
            inner,
            written: Arc::default(),
        }
    }

    fn count(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.count(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.count(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The request loop of one connection, for either protocol; `written`
/// counts the bytes its socket has taken.
async fn serve_requests<S, Q, A, F, Fut>(
    conn: Connection<S>,
    written: Arc<AtomicU64>,
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
    let budget = ReplyBudget::new(&config);
    // Room for every request in flight plus the connection error.
    let (tx, mut rx) = mpsc::channel::<Queued>(in_flight + 1);
    // The writer ends only when the queue closes, the socket fails, or the
    // socket takes nothing for `write_timeout`.
    let write_timeout = config.write_timeout;
    let writer_budget = budget.clone();
    let slots = Arc::new(Semaphore::new(in_flight));
    let writer_slots = slots.clone();
    let mut write_task = tokio::spawn(async move {
        // Requests of this connection still being served.
        let serving = || in_flight - writer_slots.available_permits();
        let written = write_replies(&mut writer, &mut rx, &written, write_timeout, serving).await;
        // Requests waiting for room in the queue stop waiting.
        writer_budget.bytes.close();
        written
    });
    let mut writer_ended = None;
    let mut requests = JoinSet::new();
    let frame_bytes_max = config.frame_bytes_max;
    let result = loop {
        let next = tokio::select! {
            _ = stop.recv() => break Ok(()),
            // The writer failed (the socket is gone): stop reading, or the
            // connection would go on executing requests nobody hears of.
            ended = &mut write_task => {
                writer_ended = Some(ended);
                break Ok(());
            }
            next = reader.read_within::<Envelope<Q>>(config.idle_timeout, config.read_timeout) => next,
        };
        let request = match next {
            Err(ReadDeadline::Idle) | Ok(Ok(None)) => break Ok(()),
            Err(ReadDeadline::Frame) => {
                tracing::debug!(
                    read_timeout = ?config.read_timeout,
                    "a frame was not whole in time: connection closed"
                );
                break Ok(());
            }
            Ok(Err(e)) => {
                if let Some(frame) = encode_reply(connection_error::<A>(&e), frame_bytes_max) {
                    let _ = tx.send(Queued { frame, held: None }).await;
                }
                break Err(e);
            }
            Ok(Ok(Some(request))) => request,
        };
        // Backpressure: wait for a slot before reading the next request.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let (tx, budget) = (tx.clone(), budget.clone());
        let Some(deadline) = request_deadline(&request, config.request_deadline_max) else {
            // Read after the sender stopped waiting (this node was paused,
            // or the request queued): it may have been retried elsewhere,
            // so it must not also take effect here, late.
            config.stats.expired.fetch_add(1, Ordering::Relaxed);
            let body = A::from_error(wire_error(
                ErrorCode::Timeout,
                "the request was read after its sender's deadline: not started",
            ));
            queue_reply(request.id, body, frame_bytes_max, &budget, &tx).await;
            drop(slot);
            continue;
        };
        // Boxed: a handler's future is large, and moving it by value into
        // the task would copy all of it for every request.
        let work = Box::pin(serve(request.body, deadline));
        requests.spawn(async move {
            let body = match tokio::time::timeout(deadline, work).await {
                Ok(body) => body,
                Err(_) => A::from_error(wire_error(
                    ErrorCode::Timeout,
                    format!("no answer within {deadline:?}"),
                )),
            };
            queue_reply(request.id, body, frame_bytes_max, &budget, &tx).await;
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

/// An encoded reply on its way to the socket, holding its share of the
/// connection's reply budget (none for a connection error).
struct Queued {
    frame: Bytes,
    held: Option<Held>,
}

/// A connection's budget of reply bytes queued for its socket.
#[derive(Clone)]
struct ReplyBudget {
    bytes: Arc<Semaphore>,
    /// Permits in the whole budget; a larger reply takes them all.
    permits_max: u32,
    /// Bytes queued now (a reply larger than the budget counts whole).
    queued: Arc<AtomicUsize>,
    stats: Arc<ServerStats>,
}

impl ReplyBudget {
    fn new(config: &ServerConfig) -> Self {
        let permits_max = u32::try_from(config.reply_buffer_bytes_max.max(1)).unwrap_or(u32::MAX);
        ReplyBudget {
            bytes: Arc::new(Semaphore::new(permits_max as usize)),
            permits_max,
            queued: Arc::default(),
            stats: config.stats.clone(),
        }
    }

    /// Wait for room for `bytes` (capped at the whole budget, so that any
    /// reply can be sent alone); `None` when the writer has ended.
    async fn take(&self, bytes: usize) -> Option<Held> {
        let permits = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .min(self.permits_max);
        let permit = self.bytes.clone().acquire_many_owned(permits).await.ok()?;
        let queued = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.stats
            .reply_bytes_queued_peak
            .fetch_max(queued, Ordering::Relaxed);
        Some(Held {
            _permit: permit,
            bytes,
            queued: self.queued.clone(),
        })
    }
}

/// A reply's share of the budget, given back when dropped (once the reply
/// is flushed to the socket).
struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Write queued replies until the queue closes, batching whatever is ready
/// into one flush; a reply's budget is given back once it is flushed. Any
/// write that sees the socket take no byte for `stall` fails the writer.
/// `serving` counts the connection's requests not yet answered: while
/// there are some, the writer lets them run before it flushes.
async fn write_replies<S>(
    writer: &mut WriteHalf<S>,
    rx: &mut mpsc::Receiver<Queued>,
    written: &AtomicU64,
    stall: Duration,
    serving: impl Fn() -> usize,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut unflushed = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut yielded = false;
        loop {
            while let Some(queued) = next {
                progressing(stall, written, writer.feed_frame(queued.frame)).await?;
                unflushed.push(queued.held);
                next = rx.try_recv().ok();
            }
            if yielded || serving() == 0 {
                break;
            }
            // Other requests of this connection are being served: let the
            // tasks that are ready to run queue their replies first, so
            // that one flush (one TLS record, one write) carries them all.
            // A reply's wake-up puts this task first in line, which would
            // otherwise flush every reply on its own. (With nothing else
            // being served there is nothing to wait for: no yield, whose
            // cost is a poll of the I/O driver.)
            tokio::task::yield_now().await;
            yielded = true;
            next = rx.try_recv().ok();
        }
        progressing(stall, written, writer.flush()).await?;
        unflushed.clear();
    }
    progressing(stall, written, writer.close()).await
}

/// Run a write `op`, failing it when the socket takes no byte (`written`
/// does not move) for `stall`: a slow reader keeps its connection, one that
/// does not read loses it.
async fn progressing<F>(stall: Duration, written: &AtomicU64, op: F) -> Result<(), ConnectionError>
where
    F: Future<Output = Result<(), ConnectionError>>,
{
    let mut op = pin!(op);
    let mut timer = pin!(tokio::time::sleep(stall));
    let mut seen = written.load(Ordering::Relaxed);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = op.as_mut().poll(cx) {
            return Poll::Ready(done);
        }
        let now = written.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            timer.as_mut().reset(tokio::time::Instant::now() + stall);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the socket took no reply byte for {stall:?}"),
            )))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Encode the answer to request `id`, stamped with this node's clock, and
/// queue it for the writer once the connection's reply budget has room
/// (dropped when the writer is gone).
async fn queue_reply<A: ReplyBody>(
    id: u64,
    body: A,
    frame_bytes_max: usize,
    budget: &ReplyBudget,
    tx: &mpsc::Sender<Queued>,
) {
    let reply = Reply {
        id,
        clock_ms: now_ms(),
        body,
    };
    if let Some(frame) = encode_reply(reply, frame_bytes_max)
        && let Some(held) = budget.take(frame.len()).await
    {
        let _ = tx
            .send(Queued {
                frame,
                held: Some(held),
            })
            .await;
    }
}

/// Encode one reply as a frame. A reply the frame cap cannot carry, or
/// that does not encode, is replaced by a [`ErrorCode::ReplyTooLarge`]
/// error for the same request id: the request fails, the connection goes
/// on. `None` only if even that error does not fit a frame.
fn encode_reply<A: ReplyBody>(reply: Reply<A>, frame_bytes_max: usize) -> Option<Bytes> {
    match encode_frame(&reply, frame_bytes_max) {
        Ok(frame) => Some(frame),
        Err(e) => {
            tracing::warn!(id = reply.id, error = %e, "reply replaced by an error");
            let error = Reply {
                id: reply.id,
                clock_ms: reply.clock_ms,
                body: A::from_error(wire_error(ErrorCode::ReplyTooLarge, e.to_string())),
            };
            match encode_frame(&error, frame_bytes_max) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    tracing::error!(id = reply.id, error = %e, "error reply does not fit a frame");
                    None
                }
            }
        }
    }
}

/// How long a request may run: what its sender waits (`timeout_ms`), and
/// no later than its sender's deadline on this node's clock
/// (`deadline_ms`, when it names one), capped at `cap`. `None` when that
/// deadline has already passed.
fn request_deadline<Q>(request: &Envelope<Q>, cap: Duration) -> Option<Duration> {
    let mut deadline = Duration::from_millis(u64::from(request.timeout_ms)).min(cap);
    if request.deadline_ms != 0 {
        let left = request
            .deadline_ms
            .checked_sub(now_ms())
            .filter(|&ms| ms > 0)?;
        deadline = deadline.min(Duration::from_millis(left));
    }
    Some(deadline)
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
        clock_ms: now_ms(),
        body: A::from_error(wire_error(code, e.to_string())),
    }
}
