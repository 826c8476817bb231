//! Peer connections over TCP: one multiplexed channel per peer, opened on
//! first use and reopened after a failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::PeerRole;
use isthmus_client::{Channel, ClientError};
use parking_lot::{Mutex, RwLock};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::model::DcName;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;

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
    channels: Mutex<HashMap<NodeId, Arc<PeerChannel>>>,
    connect_timeout: Duration,
    wan: Option<(DcName, String)>,
}

impl TcpTransport {
    /// A transport for node `me` that gives up connecting after
    /// `connect_timeout`.
    pub fn new(me: NodeId, connect_timeout: Duration) -> Self {
        TcpTransport {
            me,
            addrs: RwLock::default(),
            dcs: RwLock::default(),
            channels: Mutex::default(),
            connect_timeout,
            wan: None,
        }
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
            self.channels.lock().remove(node);
        }
    }

    /// Open a one-off channel to an address (seeds, before their id is
    /// known).
    pub async fn connect(&self, addr: &str) -> Result<PeerChannel, ClientError> {
        self.dial(addr, true).await
    }

    async fn dial(&self, addr: &str, remote: bool) -> Result<PeerChannel, ClientError> {
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
        Channel::handshake(
            Box::new(socket),
            addr,
            &self.me.0,
            PeerRole::Node,
            self.connect_timeout,
        )
        .await
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
        let remote = match (&self.wan, self.dcs.read().get(to)) {
            (Some((own, _)), Some(dc)) => dc != own,
            _ => true,
        };
        let fresh = Arc::new(self.dial(&addr, remote).await?);
        let mut channels = self.channels.lock();
        // Another task may have connected meanwhile: keep one channel.
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

impl Transport for TcpTransport {
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
            Err(ClientError::ConnectionClosed | ClientError::Connect { .. })
        ) {
            self.channels.lock().remove(to);
        }
        result
    }
}
