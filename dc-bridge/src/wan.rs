//! A userspace WAN between datacenters: a TCP proxy that adds one-way
//! latency to traffic between DCs and can cut and restore the link.
//!
//! Nodes configured with `wan_proxy` dial every node of another DC (and
//! every seed) through it, first sending one line, `WAN1 <from dc>
//! <host:port>\n` (see `isthmus_core::transport::wan_preface`). The proxy
//! knows which DC each node address belongs to ([`WanProxy::register`]);
//! between different DCs it delays every chunk by the one-way latency in
//! each direction (bandwidth is not throttled) and, while that DC pair is
//! cut, refuses new connections and closes open ones. Traffic within a DC
//! passes without delay.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use isthmus_core::transport::WAN_PREFACE_MAGIC;
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest preface line accepted.
const PREFACE_BYTES_MAX: usize = 512;

struct Shared {
    one_way: RwLock<Duration>,
    dc_of: RwLock<HashMap<String, String>>,
    cut: RwLock<BTreeSet<(String, String)>>,
    /// Bumped on every cut, so open connections re-check.
    cuts: watch::Sender<u64>,
    cross_bytes: AtomicU64,
}

impl Shared {
    fn is_cut(&self, a: &str, b: &str) -> bool {
        let pair = ordered(a, b);
        self.cut.read().contains(&pair)
    }
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// A running WAN proxy; dropping it stops it.
pub struct WanProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl WanProxy {
    /// Listen on `listen` with `one_way` latency between DCs.
    pub async fn start(listen: &str, one_way: Duration) -> std::io::Result<WanProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            one_way: RwLock::new(one_way),
            dc_of: RwLock::default(),
            cut: RwLock::default(),
            cuts: watch::channel(0).0,
            cross_bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(WanProxy { addr, shared, task })
    }

    /// Where nodes dial it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Declare that the node listening on `addr` is in `dc`.
    pub fn register(&self, addr: &str, dc: &str) {
        self.shared
            .dc_of
            .write()
            .insert(addr.to_owned(), dc.to_owned());
    }

    /// Change the one-way latency between DCs.
    pub fn set_latency(&self, one_way: Duration) {
        *self.shared.one_way.write() = one_way;
    }

    /// Cut the link between two DCs: open connections close, new ones are
    /// refused, until [`WanProxy::heal`].
    pub fn cut(&self, a: &str, b: &str) {
        self.shared.cut.write().insert(ordered(a, b));
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Restore the link between two DCs.
    pub fn heal(&self, a: &str, b: &str) {
        self.shared.cut.write().remove(&ordered(a, b));
    }

    /// Bytes carried between different DCs so far (both directions).
    pub fn cross_dc_bytes(&self) -> u64 {
        self.shared.cross_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(socket, shared).await {
                tracing::debug!(error = %e, "WAN proxy connection ended");
            }
        });
    }
}

async fn read_preface(socket: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < PREFACE_BYTES_MAX {
        socket.read_exact(&mut byte).await?;
        if byte[0] == b'\n' {
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut parts = text.split(' ');
            return match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(WAN_PREFACE_MAGIC), Some(dc), Some(target), None) => {
                    Ok((dc.to_owned(), target.to_owned()))
                }
                _ => Err(std::io::Error::other(format!("bad preface {text:?}"))),
            };
        }
        line.push(byte[0]);
    }
    Err(std::io::Error::other("preface too long"))
}

async fn relay(mut inbound: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (from_dc, target) =
        tokio::time::timeout(Duration::from_secs(5), read_preface(&mut inbound))
            .await
            .map_err(|_| std::io::Error::other("no preface"))??;
    let to_dc = shared.dc_of.read().get(&target).cloned();
    let cross = to_dc.as_ref().filter(|dc| **dc != from_dc).cloned();
    if let Some(dc) = &cross
        && shared.is_cut(&from_dc, dc)
    {
        return Ok(()); // dropped: the link is down
    }
    let outbound = TcpStream::connect(&target).await?;
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let pair = cross.map(|dc| (from_dc, dc));
    let up = tokio::spawn(pump(in_read, out_write, shared.clone(), pair.clone()));
    let down = tokio::spawn(pump(out_read, in_write, shared, pair));
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Copy one direction, delaying each chunk by the one-way latency when the
/// connection crosses DCs; stop when either side closes or the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    pair: Option<(String, String)>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let mut cuts = shared.cuts.subscribe();
    let cut_now = {
        let (shared, pair) = (shared.clone(), pair.clone());
        move || pair.as_ref().is_some_and(|(a, b)| shared.is_cut(a, b))
    };
    let writer_cut = cut_now.clone();
    let mut writer_cuts = shared.cuts.subscribe();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = writer_cuts.changed() => {
                    if writer_cut() { break; }
                    tokio::time::sleep_until(due).await;
                }
            }
            if writer_cut() || to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let delay = pair.is_some();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = cuts.changed() => { if cut_now() { break; } continue; }
        };
        if delay {
            shared.cross_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        let due = Instant::now()
            + if delay {
                *shared.one_way.read()
            } else {
                Duration::ZERO
            };
        if tx.send((due, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(tx);
    if cut_now() {
        writer.abort();
    } else {
        let _ = writer.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn dial(proxy: &WanProxy, from_dc: &str, target: &str) -> TcpStream {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(format!("{WAN_PREFACE_MAGIC} {from_dc} {target}\n").as_bytes())
            .await
            .unwrap();
        s
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<Duration> {
        let start = Instant::now();
        s.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await?;
        assert_eq!(&back, b"ping");
        Ok(start.elapsed())
    }

    #[tokio::test]
    async fn cross_dc_traffic_is_delayed_and_local_traffic_is_not() {
        let target = echo_server().await;
        let proxy = WanProxy::start("127.0.0.1:0", Duration::from_millis(500))
            .await
            .unwrap();
        proxy.register(&target, "dc2");
        let mut remote = dial(&proxy, "dc1", &target).await;
        let rtt = round_trip(&mut remote).await.unwrap();
        assert!(rtt >= Duration::from_millis(1000), "{rtt:?}");
        // The same target from its own DC: no added latency (one way
        // alone would be 500 ms).
        let mut local = dial(&proxy, "dc2", &target).await;
        let rtt = round_trip(&mut local).await.unwrap();
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
        assert!(proxy.cross_dc_bytes() >= 8);
    }

    #[tokio::test]
    async fn a_cut_closes_the_link_and_a_heal_restores_it() {
        let target = echo_server().await;
        let proxy = WanProxy::start("127.0.0.1:0", Duration::from_millis(1))
            .await
            .unwrap();
        proxy.register(&target, "dc2");
        let mut open = dial(&proxy, "dc1", &target).await;
        round_trip(&mut open).await.unwrap();
        proxy.cut("dc2", "dc1");
        assert!(
            tokio::time::timeout(Duration::from_secs(2), round_trip(&mut open))
                .await
                .map_or(true, |r| r.is_err()),
            "an open connection must not carry traffic across a cut"
        );
        let mut refused = dial(&proxy, "dc1", &target).await;
        assert!(round_trip(&mut refused).await.is_err());
        proxy.heal("dc1", "dc2");
        let mut again = dial(&proxy, "dc1", &target).await;
        round_trip(&mut again).await.unwrap();
    }
}
