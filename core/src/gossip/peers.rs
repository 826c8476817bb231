//! The peers a node remembers across restarts.
//!
//! Membership lives in memory and is learnt again through the seeds after a
//! restart. When the seeds are down too (the node that is everyone's seed,
//! or a whole datacenter), a restarted node would find nobody, refuse every
//! request and stay alone. So each node keeps the addresses of the peers it
//! knows in `data_dir/peers`, rewritten when they change, and gossips to
//! them as extra seeds when it starts.
//!
//! The file is a hint, not state: one `host:port` per line, replaced with
//! [`Fs::write_atomic`] (temporary file, fsync, rename, directory fsync).
//! An unreadable or damaged file costs only the hint (a warning, and the
//! configured seeds alone); a line that is not an address is skipped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::membership::NodeStatus;
use super::service::{GossipTransport, Gossiper};
use crate::fs::{Fs, StdFs};
use crate::worker::WorkerHandle;

/// The file's name in the data directory.
pub const FILE: &str = "peers";

/// Most addresses kept: a cluster larger than this still finds the rest
/// through any one of them.
pub const PEERS_MAX: usize = 1024;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The addresses remembered in `dir`, minus `own`; empty when there is no
/// file or it cannot be read.
pub fn load(dir: &Path, own: &str) -> Vec<String> {
    let text = match std::fs::read(path(dir)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the remembered peers; using the seeds alone");
            return Vec::new();
        }
    };
    let text = String::from_utf8_lossy(&text);
    let mut peers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.len() > 300 || !is_addr(line) {
            tracing::warn!(line, "skipping a remembered peer that is not host:port");
            continue;
        }
        if line != own && !peers.iter().any(|p| p == line) && peers.len() < PEERS_MAX {
            peers.push(line.to_owned());
        }
    }
    peers
}

/// `host:port` with a port number (an IP or a host name).
fn is_addr(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
        None => false,
    }
}

/// Write `peers` to `dir` atomically and durably ([`Fs::write_atomic`]).
pub fn store(dir: &Path, peers: &BTreeSet<String>) -> std::io::Result<()> {
    let mut text = String::new();
    for peer in peers.iter().take(PEERS_MAX) {
        text.push_str(peer);
        text.push('\n');
    }
    StdFs.write_atomic(&path(dir), text.as_bytes())
}

/// Every `interval` until `stop`, write the addresses of the members the
/// gossiper knows (itself and nodes that left excepted) when they changed.
pub async fn keep<T: GossipTransport>(
    gossiper: Arc<Gossiper<T>>,
    dir: PathBuf,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    worker: WorkerHandle,
) {
    let mut written: Option<BTreeSet<String>> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let me = gossiper.id();
        let peers: BTreeSet<String> = gossiper
            .membership()
            .endpoints()
            .values()
            .filter(|e| e.id != me && e.status != NodeStatus::Left)
            .map(|e| e.addr.clone())
            .collect();
        if peers.is_empty() || written.as_ref() == Some(&peers) {
            continue;
        }
        let (d, p) = (dir.clone(), peers.clone());
        worker.busy();
        match tokio::task::spawn_blocking(move || store(&d, &p)).await {
            Ok(Ok(())) => {
                written = Some(peers);
                worker.idle();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot remember the peers");
                worker.failed(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remember the peers");
                worker.failed(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip_and_damage_costs_only_the_hint() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "a:1").is_empty());
        let peers: BTreeSet<String> = ["10.0.0.2:7401", "node-3.dc1:7401", "[::1]:7401"]
            .into_iter()
            .map(String::from)
            .collect();
        store(dir.path(), &peers).unwrap();
        let mut got = load(dir.path(), "10.0.0.2:7401");
        got.sort();
        assert_eq!(got, vec!["[::1]:7401", "node-3.dc1:7401"]);
        std::fs::write(
            dir.path().join(FILE),
            b"10.0.0.9:1\n\xff\xfe garbage\nno-port\nhost:99999\n\n10.0.0.9:1\n",
        )
        .unwrap();
        assert_eq!(load(dir.path(), "x:1"), vec!["10.0.0.9:1"]);
    }
}
