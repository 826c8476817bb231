//! One multiplexed connection to one node.
//!
//! A [`Channel`] (for clients, a [`Session`]) runs the handshake, then lets any number of tasks send
//! requests over the same socket at once: each request gets a fresh id, a
//! writer task sends the requests queued by then in one write, a reader
//! task routes every response to the caller waiting for that id, and
//! responses may come back in any order. The full client (seeds, routing,
//! reconnects, retries) is built from sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::ClientError;
use crate::wire::connection::{Connection, ConnectionError, WriteHalf, encode_frame};
use crate::wire::{
    CONNECTION_ERROR_ID, Envelope, Hello, HelloAck, HelloAnswer, MAGIC, PROTOCOL_VERSION, PeerRole,
    Reply, ReplyBody, RequestBody, ResponseBody, frame,
};

/// A client's channel to a node.
pub type Session = Channel<RequestBody, ResponseBody>;

/// Any byte stream a session can run over: a TCP socket, or a simulated
/// one in deterministic tests.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> IoStream for T {}

type Pending<A> = Arc<std::sync::Mutex<Option<HashMap<u64, oneshot::Sender<A>>>>>;

/// A handshaken, multiplexed connection to one node, sending request
/// bodies `Q` and receiving reply bodies `A` (client requests by default;
/// nodes use the same type for their peer protocol).
pub struct Channel<Q, A> {
    outgoing: Outgoing,
    pending: Pending<A>,
    _request: std::marker::PhantomData<fn(Q)>,
    next_id: AtomicU64,
    peer: HelloAck,
    /// The node's wall clock minus ours, from the clocks its answers carry.
    clock: Arc<std::sync::Mutex<ClockOffset>>,
    /// Replies read so far (any request's).
    replies: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

/// How a channel's requests reach its socket.
enum Outgoing {
    /// Each call writes its own request, in turn.
    Direct(Mutex<WriteHalf<Box<dyn IoStream>>>),
    /// Calls queue their requests for a writer task, which sends what is
    /// queued by then in one write.
    Coalesced {
        outbox: mpsc::Sender<Bytes>,
        writer: tokio::task::JoinHandle<()>,
    },
}

/// How a channel writes its requests: [`Writes::Coalesced`] for a client's
/// session, whose application tasks send many requests at once;
/// [`Writes::Direct`] for a node's channel to a peer, where a request
/// rarely has company (a coordinator's requests to one peer are a few at a
/// time), and the writer task's extra wake-up per request cost more CPU
/// than the writes it saved (`docs/performance.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Each call writes its request itself.
    Direct,
    /// Requests queued together leave in one write.
    Coalesced,
}

/// Requests queued for a channel's writer task before a caller waits for
/// room: far more than the calls in flight on one connection at once.
const OUTBOX_FRAMES: usize = 1024;

impl<Q, A> std::fmt::Debug for Channel<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
            .field(
                "open",
                &self.pending.lock().map(|p| p.is_some()).unwrap_or(false),
            )
            .finish_non_exhaustive()
    }
}

/// The node's wall clock minus ours, as a node's answers show it.
///
/// Each answer gives `node clock at sending - our clock at receipt`, which
/// is the true offset less the answer's transit (and queueing) time, so
/// never more than the offset. The estimate is the greatest of the last
/// [`Self::SAMPLES`] answers: a few answers delayed by load do not make it
/// stricter, a node paused mid-request does not bias it (its answers are
/// stamped when they leave), and after a step of either clock it follows
/// within that many answers (erring, backwards, on the lenient side).
#[derive(Debug)]
struct ClockOffset {
    samples: std::collections::VecDeque<i64>,
}

impl ClockOffset {
    const SAMPLES: usize = 32;

    fn new(node_clock_ms: u64) -> Self {
        let mut offset = ClockOffset {
            samples: std::collections::VecDeque::with_capacity(Self::SAMPLES),
        };
        offset.sample(node_clock_ms);
        offset
    }

    fn sample(&mut self, node_clock_ms: u64) {
        // A node that sends no clock (0) or an absurd one gives no sample.
        let Ok(node) = i64::try_from(node_clock_ms) else {
            return;
        };
        if node == 0 {
            return;
        }
        if self.samples.len() == Self::SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(node - wall_clock_ms());
    }

    /// When a wait of `timeout_ms` from now ends, on the node's clock; 0
    /// (no bound) when the node's clock is unknown.
    fn deadline_ms(&self, timeout_ms: u32) -> u64 {
        let Some(offset) = self.samples.iter().max() else {
            return 0;
        };
        let deadline = wall_clock_ms()
            .saturating_add(*offset)
            .saturating_add(i64::from(timeout_ms));
        u64::try_from(deadline).unwrap_or(0)
    }
}

/// This machine's wall clock, milliseconds since the Unix epoch.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How a client connects to a node: the name it gives (for the node's
/// logs) and, unless the cluster runs without it, TLS.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Name announced in the handshake.
    pub name: String,
    /// TLS configuration ([`TlsMaterial::client_config`](crate::tls::TlsMaterial::client_config));
    /// `None` speaks plaintext, which only a node configured with
    /// `insecure_plaintext` accepts.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User and password to log in with; sent only over TLS.
    pub credentials: Option<crate::wire::Credentials>,
}

impl ConnectOptions {
    /// Plaintext, as `name`.
    pub fn plaintext(name: &str) -> Self {
        ConnectOptions {
            name: name.to_owned(),
            tls: None,
            credentials: None,
        }
    }
}

impl<Q: serde::Serialize + Send, A: ReplyBody> Channel<Q, A> {
    /// Connect to `addr` over plaintext TCP and run the handshake within
    /// `timeout` (nodes configured with `insecure_plaintext` only; see
    /// [`Channel::connect_with`]).
    pub async fn connect(addr: &str, name: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with(addr, &ConnectOptions::plaintext(name), timeout).await
    }

    /// Connect to `addr` over TCP, with TLS when `options` say so, and run
    /// the handshake, all within `timeout`.
    pub async fn connect_with(
        addr: &str,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let unreachable = |reason: String| ClientError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let socket = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = socket.set_nodelay(true);
        if options.credentials.is_some() && options.tls.is_none() {
            return Err(ClientError::Tls {
                addr: addr.to_owned(),
                reason: "credentials are sent only over TLS; configure TLS".into(),
            });
        }
        let stream: Box<dyn IoStream> = match &options.tls {
            None => Box::new(socket),
            Some(config) => {
                let (tls, _) = tokio::time::timeout(
                    timeout,
                    crate::tls::connect(config.clone(), socket, None),
                )
                .await
                .map_err(|_| unreachable(format!("no TLS handshake within {timeout:?}")))?
                .map_err(|e| ClientError::Tls {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                })?;
                Box::new(tls)
            }
        };
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: PeerRole::Client,
            name: options.name.clone(),
            credentials: options.credentials.clone(),
        };
        Self::handshake_with(stream, addr, hello, timeout, Writes::Coalesced).await
    }

    /// Run the handshake over an already connected `stream` (TCP or
    /// simulated) as `role`, within `timeout`.
    pub async fn handshake(
        stream: Box<dyn IoStream>,
        addr: &str,
        name: &str,
        role: PeerRole,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role,
            name: name.to_owned(),
            credentials: None,
        };
        Self::handshake_with(stream, addr, hello, timeout, Writes::Direct).await
    }

    /// Run the handshake with `hello` over `stream` within `timeout`; the
    /// channel then writes its requests as `writes` says.
    pub async fn handshake_with(
        stream: Box<dyn IoStream>,
        addr: &str,
        hello: Hello,
        timeout: Duration,
        writes: Writes,
    ) -> Result<Self, ClientError> {
        let attempt = async {
            let mut conn = Connection::new(stream, frame::FRAME_BYTES_MAX_DEFAULT);
            conn.write(&hello).await.map_err(|e| ClientError::Connect {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
            match conn.read::<HelloAnswer>().await {
                Ok(Some(Ok(ack))) if ack.magic == MAGIC => Ok((conn, ack)),
                Ok(Some(Ok(_))) => Err(ClientError::Handshake {
                    reason: "bad magic in the node's answer".into(),
                }),
                Ok(Some(Err(refusal))) => Err(ClientError::from_wire(refusal)),
                Ok(None) => Err(ClientError::Handshake {
                    reason: "node closed the connection".into(),
                }),
                // A TLS record (an alert) read as a frame length: the
                // node speaks TLS and this side did not.
                Err(ConnectionError::FrameTooLarge { .. }) => Err(ClientError::Handshake {
                    reason: "the node answered with something other than the Isthmus handshake \
                             (a node that requires TLS? connect with TLS)"
                        .into(),
                }),
                Err(e) => Err(ClientError::Handshake {
                    reason: e.to_string(),
                }),
            }
        };
        let (conn, peer) =
            tokio::time::timeout(timeout, attempt)
                .await
                .map_err(|_| ClientError::Connect {
                    addr: addr.to_owned(),
                    reason: format!("no handshake within {timeout:?}"),
                })??;
        let clock = Arc::new(std::sync::Mutex::new(ClockOffset::new(peer.clock_ms)));
        let samples = clock.clone();
        let (mut read_half, write_half) = conn.split();
        let pending: Pending<A> = Arc::new(std::sync::Mutex::new(Some(HashMap::new())));
        let routes = pending.clone();
        let replies = Arc::new(AtomicU64::new(0));
        let heard = replies.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(response)) = read_half.read::<Reply<A>>().await {
                if response.id == CONNECTION_ERROR_ID {
                    break;
                }
                heard.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut clock) = samples.lock() {
                    clock.sample(response.clock_ms);
                }
                let waiter = routes
                    .lock()
                    .ok()
                    .and_then(|mut p| p.as_mut()?.remove(&response.id));
                if let Some(tx) = waiter {
                    let _ = tx.send(response.body);
                }
            }
            // Closed: fail every waiter by dropping its sender.
            if let Ok(mut p) = routes.lock() {
                p.take();
            }
        });
        let outgoing = match writes {
            Writes::Direct => Outgoing::Direct(Mutex::new(write_half)),
            Writes::Coalesced => {
                let (outbox, queued) = mpsc::channel(OUTBOX_FRAMES);
                let writer = tokio::spawn(write_requests(
                    write_half,
                    queued,
                    pending.clone(),
                    reader.abort_handle(),
                ));
                Outgoing::Coalesced { outbox, writer }
            }
        };
        Ok(Channel {
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            peer,
            clock,
            replies,
            reader,
            _request: std::marker::PhantomData,
        })
    }

    /// What the node said about itself in the handshake.
    pub fn peer(&self) -> &HelloAck {
        &self.peer
    }

    /// Is the connection still usable?
    pub fn is_open(&self) -> bool {
        self.pending.lock().map(|p| p.is_some()).unwrap_or(false)
    }

    /// How many replies the channel has read, to any request: a call that
    /// timed out while this moved waited on a channel that works (the
    /// node is slow, not gone).
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// Send one request and wait up to `timeout` for its response.
    pub async fn call(&self, body: Q, timeout: Duration) -> Result<A, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| ClientError::ConnectionClosed)?;
            pending
                .as_mut()
                .ok_or(ClientError::ConnectionClosed)?
                .insert(id, tx);
        }
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // When we stop waiting, on the node's clock.
        let deadline_ms = self
            .clock
            .lock()
            .map_or(0, |clock| clock.deadline_ms(timeout_ms));
        let request = Envelope {
            id,
            timeout_ms,
            deadline_ms,
            body,
        };
        let frame = match encode_frame(&request, frame::FRAME_BYTES_MAX_DEFAULT) {
            Ok(frame) => frame,
            Err(e) => {
                // Nothing reached the socket: the channel is still good.
                self.forget(id);
                return Err(ClientError::RequestTooLarge {
                    reason: e.to_string(),
                });
            }
        };
        let answer = async {
            self.send(frame).await?;
            rx.await.map_err(|_| ClientError::ConnectionClosed)
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(body)) => body.into_result().map_err(ClientError::from_wire),
            Ok(Err(e)) => {
                self.forget(id);
                Err(e)
            }
            Err(_) => {
                self.forget(id);
                Err(ClientError::Timeout {
                    after: timeout,
                    acks: None,
                })
            }
        }
    }

    /// Send one encoded request. A write that fails closes the channel (the
    /// stream may hold part of a frame): every call waiting on it fails.
    async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        match &self.outgoing {
            Outgoing::Direct(writer) => {
                let mut writer = writer.lock().await;
                let sent = match writer.feed_frame(frame).await {
                    Ok(()) => writer.flush().await,
                    Err(e) => Err(e),
                };
                sent.map_err(|e| {
                    self.close();
                    ClientError::Connect {
                        addr: self.peer.node_id.clone(),
                        reason: e.to_string(),
                    }
                })
            }
            // The writer task sends it with whatever else is queued by then.
            Outgoing::Coalesced { outbox, .. } => outbox
                .send(frame)
                .await
                .map_err(|_| ClientError::ConnectionClosed),
        }
    }

    /// Stop using the connection: every waiting call fails with
    /// [`ClientError::ConnectionClosed`], [`Self::is_open`] turns false, and
    /// the reader stops. Calls that hold the channel fail from then on.
    pub fn close(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.take();
        }
        self.reader.abort();
        if let Outgoing::Coalesced { writer, .. } = &self.outgoing {
            writer.abort();
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock()
            && let Some(map) = p.as_mut()
        {
            map.remove(&id);
        }
    }
}

impl<Q, A> Drop for Channel<Q, A> {
    fn drop(&mut self) {
        self.reader.abort();
        if let Outgoing::Coalesced { writer, .. } = &self.outgoing {
            writer.abort();
        }
    }
}

/// A channel's writer task: send queued requests until the channel is
/// dropped, every request queued by the time of a write in that one write
/// (one TLS record, one system call). When the socket fails, close the
/// channel: calls waiting on it fail, and the reader stops.
async fn write_requests<A>(
    mut writer: WriteHalf<Box<dyn IoStream>>,
    mut queued: mpsc::Receiver<Bytes>,
    pending: Pending<A>,
    reader: tokio::task::AbortHandle,
) {
    // Calls waiting for an answer on the channel, this batch's among them
    // (a call is waiting from before it queues its request).
    let in_flight = || {
        pending
            .lock()
            .map_or(0, |p| p.as_ref().map_or(0, HashMap::len))
    };
    let sent: Result<(), ConnectionError> = async {
        while let Some(first) = queued.recv().await {
            let mut next = Some(first);
            let mut batch = 0;
            let mut yielded = false;
            loop {
                while let Some(frame) = next {
                    writer.feed_frame(frame).await?;
                    batch += 1;
                    next = queued.try_recv().ok();
                }
                // Other calls are in flight on this channel: let the tasks
                // that are ready to run queue their requests first, so that
                // one write carries them all. (A caller's wake-up puts this
                // task first in line, which would otherwise write every
                // request on its own; with no other call in flight there is
                // nothing to wait for.)
                if yielded || in_flight() <= batch {
                    break;
                }
                tokio::task::yield_now().await;
                yielded = true;
                next = queued.try_recv().ok();
            }
            writer.flush().await?;
        }
        Ok(())
    }
    .await;
    if sent.is_err() {
        if let Ok(mut p) = pending.lock() {
            p.take();
        }
        reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        u64::try_from(wall_clock_ms()).unwrap()
    }

    /// The client's end of an in-memory stream, counting the writes that
    /// reach it and failing them once told to.
    struct Counted {
        inner: tokio::io::DuplexStream,
        writes: Arc<AtomicU64>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.fail.load(Ordering::Relaxed) {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A channel to a node that answers every request `Written`, over a
    /// [`Counted`] stream; with the stream's write count and failure switch.
    async fn counted_channel(
        writes: Writes,
    ) -> (
        Channel<u32, ResponseBody>,
        Arc<AtomicU64>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (near, far) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut conn = Connection::new(far, frame::FRAME_BYTES_MAX_DEFAULT);
            let Ok(Some(hello)) = conn.read::<Hello>().await else {
                return;
            };
            let ack = HelloAck {
                magic: hello.magic,
                version: hello.version,
                node_id: "n1".into(),
                dc: "dc1".into(),
                clock_ms: 0,
            };
            let _ = conn.write(&Ok::<_, crate::wire::WireError>(ack)).await;
            while let Ok(Some(request)) = conn.read::<Envelope<u32>>().await {
                let reply = Reply {
                    id: request.id,
                    clock_ms: 0,
                    body: ResponseBody::Written,
                };
                let _ = conn.write(&reply).await;
            }
        });
        let count = Arc::new(AtomicU64::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = Counted {
            inner: near,
            writes: count.clone(),
            fail: fail.clone(),
        };
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: PeerRole::Client,
            name: "test".into(),
            credentials: None,
        };
        let channel = Channel::handshake_with(
            Box::new(stream),
            "n1:1",
            hello,
            Duration::from_secs(5),
            writes,
        )
        .await
        .unwrap();
        (channel, count, fail)
    }

    #[tokio::test]
    async fn requests_queued_together_leave_in_one_write() {
        let (channel, writes, _) = counted_channel(Writes::Coalesced).await;
        let before = writes.load(Ordering::Relaxed);
        let calls = (0..8).map(|n| channel.call(n, Duration::from_secs(5)));
        for answer in futures_util::future::join_all(calls).await {
            assert!(matches!(answer, Ok(ResponseBody::Written)), "{answer:?}");
        }
        // Eight requests queued in one poll: one write carries them all.
        assert_eq!(writes.load(Ordering::Relaxed) - before, 1);
        // A request alone is written at once, not held for company.
        let alone = channel.call(9, Duration::from_secs(5)).await;
        assert!(matches!(alone, Ok(ResponseBody::Written)), "{alone:?}");
        assert_eq!(writes.load(Ordering::Relaxed) - before, 2);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_waiting_calls_and_closes_the_channel() {
        for writes in [Writes::Direct, Writes::Coalesced] {
            let (channel, _, fail) = counted_channel(writes).await;
            fail.store(true, Ordering::Relaxed);
            let calls = (0..3).map(|n| channel.call(n, Duration::from_secs(30)));
            let answers = tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::future::join_all(calls),
            )
            .await
            .expect("the calls failed at once, not at their timeout");
            for answer in answers {
                assert!(
                    matches!(
                        answer,
                        Err(ClientError::ConnectionClosed | ClientError::Connect { .. })
                    ),
                    "{writes:?}: {answer:?}"
                );
            }
            assert!(!channel.is_open(), "{writes:?}");
            let later = channel.call(4, Duration::from_secs(30)).await;
            assert!(
                matches!(later, Err(ClientError::ConnectionClosed)),
                "{writes:?}: {later:?}"
            );
        }
    }

    #[test]
    fn deadlines_are_stated_on_the_nodes_clock() {
        // A node an hour ahead: the deadline is an hour ahead too.
        let hour = 3_600_000;
        let ahead = ClockOffset::new(now() + hour);
        let deadline = ahead.deadline_ms(1_000);
        assert!(
            deadline.abs_diff(now() + hour + 1_000) < 1_000,
            "{deadline}"
        );
        // Answers delayed in transit read as a smaller offset: they do not
        // make the estimate stricter.
        let mut delayed = ClockOffset::new(now());
        for _ in 0..10 {
            delayed.sample(now() - 5_000);
        }
        assert!(delayed.deadline_ms(1_000) >= now() + 900);
        // After the node's clock steps back, the estimate follows once the
        // window has only new answers.
        let mut stepped = ClockOffset::new(now() + hour);
        for _ in 0..ClockOffset::SAMPLES {
            stepped.sample(now());
        }
        assert!(stepped.deadline_ms(1_000).abs_diff(now() + 1_000) < 1_000);
        // A node that gives no clock: no deadline.
        assert_eq!(ClockOffset::new(0).deadline_ms(1_000), 0);
    }
}
