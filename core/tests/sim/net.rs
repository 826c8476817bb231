//! The simulated network: the node's peer transport and listener over
//! turmoil's TCP, speaking the real framed protocol (`Channel` and the
//! node server).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::PeerRole;
use isthmus_client::{Channel, ClientError};
use isthmus_core::gossip::service::GossipTransport;
use isthmus_core::model::DcName;
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::ring::NodeId;
use isthmus_core::server::Listener;
use isthmus_core::transport::Transport;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

/// The port every simulated node listens on.
pub const PORT: u16 = 7000;

type PeerChannel = Channel<PeerRequest, PeerResponse>;

/// Open a turmoil TCP connection to `addr` and run the handshake as
/// `role`, all within `timeout`.
pub async fn dial<Q, A>(
    addr: &str,
    name: &str,
    role: PeerRole,
    timeout: Duration,
) -> Result<Channel<Q, A>, ClientError>
where
    Q: Serialize + Send,
    A: isthmus_client::wire::ReplyBody,
{
    let unreachable = |reason: String| ClientError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, turmoil::net::TcpStream::connect(addr.to_owned()))
        .await
        .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    Channel::handshake(Box::new(stream), addr, name, role, timeout).await
}

/// A node's channels to its peers, by node id; addresses come from
/// gossip. The simulated twin of `TcpTransport`.
pub struct SimTransport {
    me: NodeId,
    addrs: RwLock<HashMap<NodeId, String>>,
    channels: Mutex<HashMap<NodeId, Arc<PeerChannel>>>,
    connect_timeout: Duration,
}

impl SimTransport {
    pub fn new(me: NodeId, connect_timeout: Duration) -> Self {
        SimTransport {
            me,
            addrs: RwLock::default(),
            channels: Mutex::default(),
            connect_timeout,
        }
    }

    async fn channel(&self, to: &NodeId) -> Result<Arc<PeerChannel>, ClientError> {
        if let Some(ch) = self.channels.lock().get(to).filter(|c| c.is_open()) {
            return Ok(ch.clone());
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
        let fresh = Arc::new(dial(&addr, &self.me.0, PeerRole::Node, self.connect_timeout).await?);
        let mut channels = self.channels.lock();
        let kept = match channels.get(to) {
            Some(existing) if existing.is_open() => existing.clone(),
            _ => {
                channels.insert(to.clone(), fresh.clone());
                fresh
            }
        };
        Ok(kept)
    }
}

impl Transport for SimTransport {
    async fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, ClientError> {
        let channel = self.channel(to).await?;
        let result = channel.call(request, timeout).await;
        if matches!(
            result,
            Err(ClientError::ConnectionClosed
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. })
        ) {
            // As `TcpTransport` does: a timed-out channel is replaced.
            let mut channels = self.channels.lock();
            if channels.get(to).is_some_and(|c| Arc::ptr_eq(c, &channel)) {
                channels.remove(to);
            }
        }
        result
    }
}

impl GossipTransport for SimTransport {
    fn set_addr(&self, node: &NodeId, addr: &str) {
        let changed = self
            .addrs
            .write()
            .insert(node.clone(), addr.to_owned())
            .is_some_and(|old| old != addr);
        if changed {
            self.channels.lock().remove(node);
        }
    }

    fn set_dc(&self, _node: &NodeId, _dc: &DcName) {}

    async fn connect(&self, addr: &str) -> Result<PeerChannel, ClientError> {
        dial(addr, &self.me.0, PeerRole::Node, self.connect_timeout).await
    }
}

/// The node server's listener on turmoil's TCP.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }
}
