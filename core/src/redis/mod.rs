//! The Redis-protocol front door: a listener speaking RESP2 and RESP3
//! (`HELLO`), over TLS on a node with TLS, whose commands become the
//! node's own client requests (get, put over a context, delete) served
//! by its [`Handler`], with the same authentication (`AUTH`, `HELLO ...
//! AUTH`: the cluster's users) and the same permission check per
//! request. The command table, and what each command means on a
//! multi-datacenter store, is in `docs/redis.md`.
//!
//! - `reply`: what a command answers, encoded in RESP2 or RESP3 with the
//!   `redis-protocol` crate.
//! - `command`: the commands, one function each.
//! - `pattern`: Redis glob patterns (`SCAN ... MATCH`).
//! - `request`: a command as clients send it, an array of bulk strings,
//!   read straight off the connection's buffer (every other frame goes
//!   to the `redis-protocol` crate's decoder).
//! - here: the accept loop and one task per connection. Requests are
//!   decoded as they arrive (pipelining: every complete command in the
//!   buffer is served, and the replies are written together, in order; a
//!   run of plain `GET`s and `SET`s on distinct keys is served at once,
//!   every other command after what came before it); a
//!   request larger than the frame cap, or one that does not decode,
//!   gets an error and closes that connection only; connections beyond
//!   `connections_max` are closed at once.
//!
//! What it is not: a second data path. Every read and write is a
//! [`RequestBody`](isthmus_client::wire::RequestBody) handed to the node's
//! handler, exactly as a native client's would be.

pub mod command;
pub mod pattern;
pub mod reply;
mod request;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::server::Handler;
use command::{Plain, Session};
use reply::Reply;

/// How the front door runs (from the node config's `[redis]` table).
#[derive(Clone, Debug)]
pub struct FrontDoor {
    /// `SELECT n` chooses `databases[n]`; database 0 is where a
    /// connection starts.
    pub databases: Vec<String>,
    /// Each command's deadline.
    pub timeout: Duration,
    /// Connections served at once; one more is closed at once.
    pub connections_max: usize,
    /// The largest request accepted (bytes of one command).
    pub request_bytes_max: usize,
    /// This node, for `INFO`.
    pub node_id: String,
    /// This node's datacenter, for `INFO`.
    pub dc: String,
    /// The keyspaces that hold counters (`counter = true`): `GET` shows
    /// their value, and writes of other values are refused.
    pub counters: std::collections::BTreeSet<String>,
}

/// Serve the front door on `listener` until `shutdown` completes; over
/// TLS with `tls`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<H>,
    door: FrontDoor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let door = Arc::new(door);
    let slots = Arc::new(tokio::sync::Semaphore::new(door.connections_max));
    let ids = Arc::new(AtomicU64::new(1));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "redis front door: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (handler, door, acceptor) = (handler.clone(), door.clone(), acceptor.clone());
        connections.spawn(async move {
            let _slot = slot;
            let addr = peer.to_string();
            match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    let Ok(Ok(tls)) = handshake.await else {
                        return;
                    };
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| isthmus_client::tls::identity_of(cert).ok());
                    connection(tls, handler, door, id, addr, certificate).await;
                }
                None => connection(stream, handler, door, id, addr, None).await,
            }
        });
    }
}

/// One client connection: decode, serve in order, write back.
async fn connection<S, H>(
    mut stream: S,
    handler: Arc<H>,
    door: Arc<FrontDoor>,
    id: u64,
    addr: String,
    certificate: Option<isthmus_client::tls::CertIdentity>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut session = Session::new(handler, door.clone(), id, addr, certificate).await;
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut batch = Batch::default();
    loop {
        // Every complete command already read, in order.
        let (received, broken) = decode_all(&mut input);
        for command in received {
            let args = match command {
                Ok(args) => args,
                Err(reply) => {
                    batch.serve(&mut session, &mut output).await;
                    reply.encode(session.protocol(), &mut output);
                    continue;
                }
            };
            if let Some(plain) = session.plain(&args) {
                if !batch.fits(&plain) {
                    batch.serve(&mut session, &mut output).await;
                }
                batch.push(plain);
                continue;
            }
            batch.serve(&mut session, &mut output).await;
            session
                .run(args)
                .await
                .encode(session.protocol(), &mut output);
            if session.closing() {
                let _ = stream.write_all(&output).await;
                return;
            }
        }
        batch.serve(&mut session, &mut output).await;
        if let Some(error) = broken {
            Reply::Error(format!("ERR Protocol error: {error}"))
                .encode(session.protocol(), &mut output);
            let _ = stream.write_all(&output).await;
            return;
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        if input.len() > door.request_bytes_max {
            Reply::err(format!(
                "Protocol error: a request larger than {} bytes",
                door.request_bytes_max
            ))
            .encode(session.protocol(), &mut output);
            let _ = stream.write_all(&output).await;
            return;
        }
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The most commands of a pipeline served at once.
pub const PLAIN_BATCH_MAX: usize = 64;

/// A pipeline's run of [`Plain`] commands on distinct keys, waiting to be
/// served together.
#[derive(Default)]
struct Batch {
    commands: Vec<Plain>,
    keys: rustc_hash::FxHashSet<Bytes>,
}

impl Batch {
    /// Whether `plain` may join: its key is not in the batch already (a
    /// command must see the effect of an earlier one on its key) and the
    /// batch is not full.
    fn fits(&self, plain: &Plain) -> bool {
        self.commands.len() < PLAIN_BATCH_MAX && !self.keys.contains(plain.key())
    }

    fn push(&mut self, plain: Plain) {
        self.keys.insert(plain.key().clone());
        self.commands.push(plain);
    }

    /// Serve the batch (if any) and append its replies, in order.
    async fn serve<H: Handler>(&mut self, session: &mut Session<H>, output: &mut BytesMut) {
        if self.commands.is_empty() {
            return;
        }
        self.keys.clear();
        let commands = std::mem::take(&mut self.commands);
        for reply in session.run_plain(commands).await {
            reply.encode(session.protocol(), output);
        }
    }
}

/// Take every complete command off the front of `input`: each as its
/// arguments, or the error reply for a frame of the wrong shape; then the
/// protocol error that stopped decoding, if one did (the connection ends
/// after its reply).
fn decode_all(input: &mut BytesMut) -> (Vec<Result<Vec<Bytes>, Reply>>, Option<String>) {
    let mut received = Vec::new();
    loop {
        if input.first().is_some_and(|b| *b != b'*') {
            // An inline command: one line, words split by spaces (as
            // telnet sends, and as `redis-cli --pipe` ends a batch with an
            // empty one).
            let Some(end) = input.iter().position(|b| *b == b'\n') else {
                return (received, None);
            };
            let line = input.split_to(end + 1).freeze();
            let args = command::inline(&line);
            if !args.is_empty() {
                received.push(Ok(args));
            }
            continue;
        }
        match request::take(input) {
            request::Taken::Command(args) => {
                received.push(Ok(args));
                continue;
            }
            request::Taken::Partial => return (received, None),
            request::Taken::Other => {}
        }
        match redis_protocol::resp2::decode::decode_bytes_mut(input) {
            Ok(Some((frame, _, _))) => match command::arguments(frame) {
                Ok(args) if args.is_empty() => {}
                other => received.push(other),
            },
            Ok(None) => return (received, None),
            Err(e) => return (received, Some(e.to_string())),
        }
    }
}
