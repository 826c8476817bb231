//! Peer connections over TCP: one multiplexed channel per peer, opened on
//! first use and replaced after a failure: a closed connection, or a call
//! that timed out (one poisoned channel must not make every later request
//! between two nodes time out).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::pool::ChannelPool;
use isthmus_client::session::IoStream;
use isthmus_client::tls::CertIdentity;
use isthmus_client::wire::PeerRole;
use isthmus_client::{Channel, ClientError};
use parking_lot::RwLock;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::model::DcName;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;
use futures_util::future::BoxFuture;

type PeerChannel = Channel<PeerRequest, PeerResponse>;

/// Sends peer requests to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Send `request` to `to` and wait up to `timeout` for the answer.
    fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<PeerResponse, ClientError>> + Send;
}

/// A [`Transport`] as a trait object, for parts that plug into a node
/// through one (the cross-DC bridge): every transport is one, and
/// `dyn DynTransport` is a [`Transport`] again.
pub trait DynTransport: Send + Sync + 'static {
    /// [`Transport::call`], boxed.
    fn call_boxed<'a>(
        &'a self,
        to: &'a NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PeerResponse, ClientError>>;
}

impl<T: Transport> DynTransport for T {
    fn call_boxed<'a>(
        &'a self,
        to: &'a NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PeerResponse, ClientError>> {
        Box::pin(self.call(to, request, timeout))
    }
}

impl Transport for dyn DynTransport {
    async fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ClientError> {
        self.call_boxed(to, request, timeout).await
    }
}

/// The first line a node sends to a WAN proxy: which datacenter it dials
/// from and where the proxy must connect, `WAN1 <dc> <host:port>\n`.
pub fn wan_preface(from_dc: &DcName, target: &str) -> Vec<u8> {
    format!("{WAN_PREFACE_MAGIC} {} {target}\n", from_dc.0).into_bytes()
}

/// First word of a [`wan_preface`].
pub const WAN_PREFACE_MAGIC: &str = "WAN1";

/// Channels to peers, by node id; addresses come from gossip.
pub struct TcpTransport {
    me: NodeId,
    addrs: RwLock<HashMap<NodeId, String>>,
    dcs: RwLock<HashMap<NodeId, DcName>>,
    channels: ChannelPool<NodeId, PeerChannel>,
    connect_timeout: Duration,
    wan: Option<(DcName, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl TcpTransport {
    /// A transport for node `me` that gives up connecting after
    /// `connect_timeout`.
    pub fn new(me: NodeId, connect_timeout: Duration) -> Self {
        TcpTransport {
            me,
            addrs: RwLock::default(),
            dcs: RwLock::default(),
            channels: ChannelPool::new(PeerChannel::is_open),
            connect_timeout,
            wan: None,
            tls: None,
        }
    }

    /// Dial peers over TLS with `config` (this node's certificate goes
    /// along; the peer's must name the node dialled).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Dial nodes outside `own_dc` (and seeds, whose datacenter is not yet
    /// known) through the WAN proxy at `proxy`.
    pub fn with_wan_proxy(mut self, own_dc: DcName, proxy: String) -> Self {
        self.wan = Some((own_dc, proxy));
        self
    }

    /// Learn which datacenter `node` is in.
    pub fn set_dc(&self, node: &NodeId, dc: &DcName) {
        if self.dcs.read().get(node) != Some(dc) {
            self.dcs.write().insert(node.clone(), dc.clone());
        }
    }

    /// Learn (or update) where `node` listens; a changed address drops the
    /// old channel.
    pub fn set_addr(&self, node: &NodeId, addr: &str) {
        let changed = self
            .addrs
            .write()
            .insert(node.clone(), addr.to_owned())
            .is_some_and(|old| old != addr);
        if changed {
            self.channels.remove(node);
        }
    }

    /// Open a one-off channel to an address (seeds, before their id is
    /// known): whichever node answers, as its certificate proves.
    pub async fn connect(&self, addr: &str) -> Result<PeerChannel, ClientError> {
        self.dial(addr, true, None).await
    }

    /// Dial `addr`; with `expected` set, the node that answers must be that
    /// node (its certificate under TLS, and its handshake either way), or
    /// the channel is refused: an address gossip learnt may have been
    /// reused by another node since.
    async fn dial(
        &self,
        addr: &str,
        remote: bool,
        expected: Option<&NodeId>,
    ) -> Result<PeerChannel, ClientError> {
        let unreachable = |reason: String| ClientError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let proxy = self.wan.as_ref().filter(|_| remote);
        let dial_addr = proxy.map_or(addr, |(_, p)| p.as_str());
        let mut socket = tokio::time::timeout(self.connect_timeout, TcpStream::connect(dial_addr))
            .await
            .map_err(|_| unreachable(format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = socket.set_nodelay(true);
        if let Some((dc, _)) = proxy {
            socket
                .write_all(&wan_preface(dc, addr))
                .await
                .map_err(|e| unreachable(format!("WAN proxy: {e}")))?;
        }
        let (stream, proven): (Box<dyn IoStream>, Option<String>) = match &self.tls {
            None => (Box::new(socket), None),
            Some(config) => {
                let want = expected.map(|n| n.0.as_str());
                let connected = tokio::time::timeout(
                    self.connect_timeout,
                    isthmus_client::tls::connect(config.clone(), socket, want),
                )
                .await
                .map_err(|_| unreachable(format!("no TLS within {:?}", self.connect_timeout)))?
                .map_err(|e| ClientError::Tls {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                })?;
                let node = match connected.1 {
                    CertIdentity::Node { node_id, .. } => node_id,
                    other => {
                        return Err(ClientError::Tls {
                            addr: addr.to_owned(),
                            reason: format!("{other} answered, not a node"),
                        });
                    }
                };
                (Box::new(connected.0), Some(node))
            }
        };
        let channel = Channel::handshake(
            stream,
            addr,
            &self.me.0,
            PeerRole::Node,
            self.connect_timeout,
        )
        .await?;
        let answered = &channel.peer().node_id;
        let mismatch = expected
            .map(|n| &n.0)
            .into_iter()
            .chain(proven.as_ref())
            .find(|want| *want != answered);
        if let Some(want) = mismatch {
            return Err(ClientError::Handshake {
                reason: format!("expected node {want} at {addr}, node {answered} answered"),
            });
        }
        Ok(channel)
    }

    /// The channel to `to`: the open one, or one dial shared by every
    /// caller that finds none.
    async fn channel(&self, to: &NodeId) -> Result<Arc<PeerChannel>, ClientError> {
        if let Some(channel) = self.channels.get(to) {
            return Ok(channel);
        }
        let addr = self
            .addrs
            .read()
            .get(to)
            .cloned()
            .ok_or_else(|| ClientError::Connect {
                addr: to.0.clone(),
                reason: "address unknown".into(),
            })?;
        let remote = match (&self.wan, self.dcs.read().get(to)) {
            (Some((own, _)), Some(dc)) => dc != own,
            _ => true,
        };
        self.channels
            .get_or_dial(to, || self.dial(&addr, remote, Some(to)))
            .await
    }
}

impl Transport for TcpTransport {
    async fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ClientError> {
        let channel = self.channel(to).await?;
        let heard = channel.replies();
        let result = channel.call(request, timeout).await;
        let broken = match &result {
            Err(ClientError::ConnectionClosed | ClientError::Connect { .. }) => true,
            // A peer answers every request by its deadline (the server
            // caps them and answers `Timeout` itself), so a call that
            // hears nothing on a channel that heard nothing else either
            // points at the channel: a stuck socket, or a peer that
            // stopped answering on it. A channel that answered other
            // calls meanwhile works; its peer is slow, and dropping it
            // would only add handshakes to that peer's load.
            Err(ClientError::Timeout { .. }) => channel.replies() == heard,
            _ => false,
        };
        if broken {
            // The next call dials a fresh one; calls still in flight keep
            // the old channel until they end. Only this channel is
            // dropped, not one another task put in its place meanwhile.
            self.channels.remove_if_same(to, &channel);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use isthmus_client::wire::connection::Connection;
    use isthmus_client::wire::{
        Envelope, Hello, HelloAck, MAGIC, PROTOCOL_VERSION, Reply, WireError,
    };
    use tokio::net::TcpListener;

    use super::*;
    use crate::limit::FRAME_BYTES_MAX_DEFAULT;

    /// Read a node's hello on `socket` and answer as node `peer`.
    async fn answer_hello(
        socket: tokio::net::TcpStream,
    ) -> Option<Connection<tokio::net::TcpStream>> {
        let mut conn = Connection::new(socket, FRAME_BYTES_MAX_DEFAULT);
        conn.read::<Hello>().await.ok()??;
        let ack = HelloAck {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node_id: "peer".into(),
            dc: "dc1".into(),
            clock_ms: 1,
        };
        conn.write(&Ok::<_, WireError>(ack)).await.ok()?;
        Some(conn)
    }

    /// A peer whose first connection reads requests and never answers (as
    /// a connection whose writer died would), while later connections
    /// answer every request with `Applied`.
    async fn stuck_then_good_peer(listener: TcpListener, accepted: Arc<AtomicUsize>) {
        let mut held = Vec::new();
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let n = accepted.fetch_add(1, Ordering::SeqCst);
            let task = tokio::spawn(async move {
                let Some(mut conn) = answer_hello(socket).await else {
                    return;
                };
                while let Ok(Some(request)) = conn.read::<Envelope<PeerRequest>>().await {
                    if n == 0 {
                        continue;
                    }
                    let reply = Reply {
                        id: request.id,
                        clock_ms: 1,
                        body: PeerResponse::Applied,
                    };
                    if conn.write(&reply).await.is_err() {
                        return;
                    }
                }
            });
            held.push(task);
        }
    }

    /// A peer that answers `Read`s of key `slow` after a second and every
    /// other request at once, all on one connection.
    async fn slow_key_peer(listener: TcpListener, accepted: Arc<AtomicUsize>) {
        let mut held = Vec::new();
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let task = tokio::spawn(async move {
                let Some(conn) = answer_hello(socket).await else {
                    return;
                };
                let (mut reader, mut writer) = conn.split();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
                tokio::spawn(async move {
                    while let Some(id) = rx.recv().await {
                        let reply = Reply {
                            id,
                            clock_ms: 1,
                            body: PeerResponse::Applied,
                        };
                        if writer.write(&reply).await.is_err() {
                            return;
                        }
                    }
                });
                while let Ok(Some(request)) = reader.read::<Envelope<PeerRequest>>().await {
                    let slow =
                        matches!(&request.body, PeerRequest::Read { key, .. } if key == b"slow");
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if slow {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        let _ = tx.send(request.id);
                    });
                }
            });
            held.push(task);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_answer_on_a_channel_that_answers_others_keeps_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peer_task = tokio::spawn(slow_key_peer(listener, accepted.clone()));
        let transport = Arc::new(TcpTransport::new(
            NodeId("me".into()),
            Duration::from_secs(2),
        ));
        let peer = NodeId("peer".into());
        transport.set_addr(&peer, &addr);

        let slow = {
            let (transport, peer) = (transport.clone(), peer.clone());
            tokio::spawn(async move {
                let read = PeerRequest::Read {
                    keyspace: "ks".into(),
                    key: b"slow".to_vec(),
                };
                transport
                    .call(&peer, read, Duration::from_millis(300))
                    .await
            })
        };
        // Other calls are answered on the same channel while the slow one
        // waits.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let answer = transport
                .call(&peer, gossip(), Duration::from_secs(2))
                .await;
            assert_eq!(answer, Ok(PeerResponse::Applied));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let slow = slow.await.unwrap();
        assert!(matches!(slow, Err(ClientError::Timeout { .. })), "{slow:?}");
        let answer = transport
            .call(&peer, gossip(), Duration::from_secs(2))
            .await;
        assert_eq!(answer, Ok(PeerResponse::Applied));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the channel that answered others was kept"
        );
        peer_task.abort();
    }

    fn gossip() -> PeerRequest {
        PeerRequest::Gossip {
            digest: Vec::new(),
            entries: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_channel_whose_peer_stops_answering_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peer_task = tokio::spawn(stuck_then_good_peer(listener, accepted.clone()));
        let transport = TcpTransport::new(NodeId("me".into()), Duration::from_secs(2));
        let peer = NodeId("peer".into());
        transport.set_addr(&peer, &addr);

        let first = transport
            .call(&peer, gossip(), Duration::from_millis(200))
            .await;
        assert!(
            matches!(first, Err(ClientError::Timeout { .. })),
            "the stuck channel times out: {first:?}"
        );
        // Before, the stuck channel stayed in place and every later call
        // timed out too; now the next call dials afresh and is answered.
        let start = Instant::now();
        for _ in 0..3 {
            let answer = transport
                .call(&peer, gossip(), Duration::from_secs(2))
                .await;
            assert_eq!(answer, Ok(PeerResponse::Applied));
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one fresh channel, reused"
        );
        peer_task.abort();
    }
}
