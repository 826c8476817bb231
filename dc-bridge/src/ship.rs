//! Shippers (one per remote DC) and the receiving side.
//!
//! A shipper reads its DC's records from the outbox, from the cursor on,
//! cuts them into batches (by size, waiting up to `linger` for a small
//! batch to fill), and sends up to [`WINDOW`] batches at a time to one
//! live node of the remote DC, failing over to the next live one when a
//! call fails. Batches are acknowledged in order; each acknowledgement
//! advances the persisted cursor. After a failure every batch still in
//! flight is dropped and shipping resumes from the cursor: batches may
//! arrive twice, which is harmless (absorb is idempotent).

use isthmus_core::wall_clock::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use isthmus_core::bridge::FullSync;
use isthmus_core::fs::Fs;
use isthmus_core::model::{DcName, KeyspaceConfig};
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::ring::NodeId;
use isthmus_core::transport::DynTransport;
use isthmus_core::transport::Transport;
use isthmus_core::view::ClusterView;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::batch::{Item, Record, coalesce, encode_batch};
use crate::outbox::Outbox;

/// Batches in flight per remote DC (keeps a long link busy).
pub const WINDOW: usize = 16;

/// Per remote DC counters of the sending side.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Records acknowledged.
    pub records: AtomicU64,
    /// Their encoded bytes before compression.
    pub raw_bytes: AtomicU64,
    /// Compressed bytes sent (acknowledged batches).
    pub wire_bytes: AtomicU64,
    /// Batches that failed (to be resent).
    pub failures: AtomicU64,
}

/// What a shipper needs.
pub(crate) struct Shipper<F: Fs> {
    pub outbox: Arc<Outbox<F>>,
    pub me: NodeId,
    pub dc: DcName,
    pub from_dc: DcName,
    pub transport: Arc<dyn DynTransport>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
    pub batch_bytes_max: usize,
    pub linger: Duration,
    pub stats: Arc<ShipStats>,
    pub call_timeout: Duration,
}

type InFlight = futures_util::future::BoxFuture<'static, (u64, usize, usize, usize, bool)>;

fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> impl Future<Output = bool> {
    let mut stop = stop.clone();
    async move {
        tokio::select! {
            _ = tokio::time::sleep(d) => !*stop.borrow(),
            _ = stop.changed() => false,
        }
    }
}

impl<F: Fs> Shipper<F> {
    fn live_targets(&self) -> Vec<NodeId> {
        let view = self.view.borrow().clone();
        view.ring
            .nodes_in(&self.dc)
            .filter(|n| view.alive.contains(*n) && **n != self.me)
            .cloned()
            .collect()
    }

    fn ships(&self, record: &Record) -> bool {
        self.keyspaces
            .read()
            .get(&record.keyspace)
            .is_some_and(|ks| ks.replication.contains_key(&self.dc))
    }

    /// Ship until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut target = 0usize;
        let mut backoff = Duration::from_millis(100);
        'outer: loop {
            if *stop.borrow() {
                return;
            }
            let Some(cursor) = self.outbox.cursor(&self.dc) else {
                return;
            };
            let mut next = cursor.next;
            let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
            // The first record of the batch last waited for: a batch waits
            // for more records once. (After one `linger` its first record
            // is old anyway; remembering it keeps a clock that moves slower
            // than tokio's, a simulation's, from holding a batch back.)
            let mut lingered: Option<u64> = None;
            loop {
                // Registered before reading, so an append after the read
                // still wakes this loop while batches are in flight.
                let arrived = self.outbox.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                // Fill the window.
                while in_flight.len() < WINDOW {
                    let (records, bytes) = match self.take(next).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(dc = %self.dc, error = %e, "outbox read failed");
                            if !sleep_or_stop(&mut stop, backoff).await {
                                return;
                            }
                            continue 'outer;
                        }
                    };
                    let Some(last) = records.last() else { break };
                    let after = last.seq + 1;
                    // Small and young: wait for more, unless the link is busy
                    // anyway (then the batch goes when a slot frees).
                    let young = lingered != Some(records[0].seq)
                        && records[0].enqueued_ms + self.linger.as_millis() as u64 > now_ms();
                    if in_flight.is_empty() && bytes < self.batch_bytes_max / 2 && young {
                        lingered = Some(records[0].seq);
                        tokio::time::sleep(self.linger).await;
                        let (more, _) = match self.take(next).await {
                            Ok(r) => r,
                            Err(_) => (records.clone(), bytes),
                        };
                        if more.len() > records.len() {
                            continue;
                        }
                    }
                    let shipped = coalesce(records.iter().map(|r| &**r).filter(|r| self.ships(r)));
                    let targets = self.live_targets();
                    if shipped.is_empty() {
                        next = after;
                        in_flight.push_back(Box::pin(async move { (after, 0, 0, 0, true) }));
                        continue;
                    }
                    if targets.is_empty() {
                        break;
                    }
                    next = after;
                    let to = targets[target % targets.len()].clone();
                    in_flight.push_back(self.send(&shipped, records.len(), after, to));
                }
                if in_flight.is_empty() {
                    if !self.idle(&mut stop, &mut backoff).await {
                        return;
                    }
                    continue 'outer;
                }
                let done = tokio::select! {
                    done = in_flight.next() => done,
                    _ = &mut arrived, if in_flight.len() < WINDOW => continue,
                    _ = stop.changed() => return,
                };
                let Some((after, count, raw, wire, ok)) = done else {
                    continue;
                };
                if !ok {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    target = target.wrapping_add(1);
                    if !sleep_or_stop(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue 'outer;
                }
                backoff = Duration::from_millis(100);
                self.acknowledged(after, count, raw, wire).await;
            }
        }
    }

    /// Caught up, or nobody to ship to: wait for records (or, with no
    /// live node in the DC, back off). `false` once the node stops.
    async fn idle(&self, stop: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
        let arrived = self.outbox.arrived.notified();
        let nobody = self.live_targets().is_empty();
        let wait = if nobody {
            *backoff
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            _ = arrived, if !nobody => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return false,
        }
        if nobody {
            *backoff = (*backoff * 2).min(Duration::from_secs(2));
        }
        true
    }

    /// Ship one batch of `count` records (coalesced into `shipped`) to
    /// `to`; the future answers `(after, count, raw bytes, wire bytes,
    /// acknowledged)`, `after` being the sequence number the cursor moves
    /// to once this batch and every one before it are acknowledged.
    fn send(&self, shipped: &[Item], count: usize, after: u64, to: NodeId) -> InFlight {
        let (batch, raw) = encode_batch(shipped);
        let wire = batch.len();
        let transport = self.transport.clone();
        let from_dc = self.from_dc.clone();
        let timeout = self.call_timeout;
        Box::pin(async move {
            let request = PeerRequest::Ship { from_dc, batch };
            let ok = match transport.call(&to, request, timeout).await {
                Ok(PeerResponse::Applied) => true,
                Ok(other) => {
                    tracing::debug!(node = %to, answer = ?other, "batch refused");
                    false
                }
                Err(e) => {
                    tracing::debug!(node = %to, error = %e, "batch not delivered");
                    false
                }
            };
            (after, count, raw, wire, ok)
        })
    }

    /// A batch was acknowledged, and every batch before it: count it and
    /// move the persisted cursor past it.
    async fn acknowledged(&self, after: u64, count: usize, raw: usize, wire: usize) {
        self.stats
            .records
            .fetch_add(count as u64, Ordering::Relaxed);
        self.stats
            .raw_bytes
            .fetch_add(raw as u64, Ordering::Relaxed);
        self.stats
            .wire_bytes
            .fetch_add(wire as u64, Ordering::Relaxed);
        let outbox = self.outbox.clone();
        let dc = self.dc.clone();
        let acked = tokio::task::spawn_blocking(move || outbox.acknowledge(&dc, after))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = acked {
            tracing::error!(dc = %self.dc, error = %e, "cursor not persisted");
        }
    }

    /// The next batch's records from `from`, and their encoded size.
    async fn take(&self, from: u64) -> Result<(Vec<Arc<Record>>, usize), String> {
        let outbox = self.outbox.clone();
        let bytes_max = self.batch_bytes_max;
        let records = tokio::task::spawn_blocking(move || outbox.read(from, bytes_max, 16_384))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let bytes = records.iter().map(|r| crate::batch::record_bytes(r)).sum();
        Ok((records, bytes))
    }
}

/// Runs full-syncs owed after the outbox bound cut a DC loose.
pub(crate) async fn full_syncer<F: Fs>(
    outbox: Arc<Outbox<F>>,
    dc: DcName,
    sync: Arc<dyn FullSync>,
    view: watch::Receiver<Arc<ClusterView>>,
    running: Arc<Mutex<bool>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if !sleep_or_stop(&mut stop, Duration::from_secs(1)).await {
            return;
        }
        let Some(cursor) = outbox.cursor(&dc) else {
            return;
        };
        if !cursor.full_sync_pending {
            continue;
        }
        let reachable = {
            let view = view.borrow();
            view.ring.nodes_in(&dc).any(|n| view.alive.contains(n))
        };
        if !reachable {
            continue;
        }
        *running.lock() = true;
        tracing::info!(%dc, "full-sync with a DC the outbox could not keep up with");
        let result = tokio::select! {
            r = sync.full_sync(&dc) => r,
            _ = stop.changed() => return,
        };
        *running.lock() = false;
        match result {
            Ok(()) => {
                let (outbox, dc2) = (outbox.clone(), dc.clone());
                let done = tokio::task::spawn_blocking(move || {
                    outbox.full_sync_done(&dc2, cursor.overflows)
                })
                .await;
                if let Ok(Err(e)) = done {
                    tracing::error!(%dc, error = %e, "full-sync flag not cleared");
                }
                tracing::info!(%dc, "full-sync complete");
            }
            Err(e) => {
                tracing::warn!(%dc, error = %e, "full-sync failed; retrying");
                if !sleep_or_stop(&mut stop, Duration::from_secs(5)).await {
                    return;
                }
            }
        }
    }
}
