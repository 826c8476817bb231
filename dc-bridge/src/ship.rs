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
//!
//! A batch the receiver applied except for items it refused for good
//! (`PeerResponse::Shipped`) settles in order like any other: the
//! records of the refused items go to the [`Quarantine`] first, durably,
//! then the cursor moves past the batch ([`settle`]). A record the
//! quarantine has no room for makes a full sync owed to the DC, durably,
//! before the cursor moves. Architecture invariant: the cursor never
//! moves past a record that is neither applied in the remote DC, nor
//! durable in the quarantine, nor owed there by a full sync.

use isthmus_core::wall_clock::now_ms;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use isthmus_core::bridge::{FullSync, is_permanent};
use isthmus_core::fs::Fs;
use isthmus_core::model::DcName;
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::ring::NodeId;
use isthmus_core::transport::DynTransport;
use isthmus_core::transport::Transport;
use isthmus_core::view::ClusterView;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::batch::{Item, Record, coalesce, encode_batch};
use crate::outbox::Outbox;
use crate::quarantine::{Quarantine, Refused};
use isthmus_core::store::StoreError;

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
    /// Batches also sent to another node of the DC because the first had
    /// not answered within `failover_after` (a stalled, not dead, node).
    pub failovers: AtomicU64,
    /// Full syncs with the DC completed since the node started.
    pub full_syncs: AtomicU64,
}

/// How a batch ended.
pub(crate) struct Settled {
    /// The cursor's next position once it (and every one before it) is
    /// settled.
    after: u64,
    count: usize,
    raw: usize,
    wire: usize,
    /// `None`: not applied (resend); `Some`: applied, but for these
    /// records, refused for good.
    refused: Option<Vec<Refused>>,
}

/// Settle an acknowledged batch, blocking: keep its `refused` records in
/// `dc`'s quarantine (durable), owe `dc` a full sync for any it had no
/// room for (durable), and only then move `dc`'s cursor to `after`. An
/// error leaves the cursor where it was (the batch is shipped again).
pub fn settle<F: Fs>(
    outbox: &Outbox<F>,
    quarantine: &Quarantine<F>,
    dc: &DcName,
    after: u64,
    refused: &[Refused],
) -> Result<(), StoreError> {
    if !refused.is_empty() {
        let added = quarantine.add(dc, refused)?;
        tracing::warn!(%dc, kept = added.kept, overflowed = added.overflowed,
            "records refused for good by the remote DC were quarantined");
        if added.overflowed > 0 {
            tracing::error!(%dc, records = added.overflowed,
                "quarantine full: refused records not kept; a full sync is owed");
            outbox.owe_full_sync(dc)?;
        }
    }
    outbox.acknowledge(dc, after)
}

/// What a shipper needs.
pub(crate) struct Shipper<F: Fs> {
    pub outbox: Arc<Outbox<F>>,
    pub me: NodeId,
    pub dc: DcName,
    pub from_dc: DcName,
    pub transport: Arc<dyn DynTransport>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub keyspaces: Arc<RwLock<isthmus_core::model::KeyspaceMap>>,
    pub batch_bytes_max: usize,
    pub linger: Duration,
    pub stats: Arc<ShipStats>,
    pub call_timeout: Duration,
    /// How long a batch waits for its node before it is also sent to the
    /// next live node of the DC (delivery is idempotent).
    pub failover_after: Duration,
    pub quarantine: Arc<Quarantine<F>>,
}

type InFlight = futures_util::future::BoxFuture<'static, Settled>;

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
        record.only.as_ref().is_none_or(|only| *only == self.dc)
            && self
                .keyspaces
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
                    let count = records.len();
                    let records: Vec<Arc<Record>> =
                        records.into_iter().filter(|r| self.ships(r)).collect();
                    let shipped = coalesce(records.iter().map(|r| &**r));
                    let targets = self.live_targets();
                    if shipped.is_empty() {
                        next = after;
                        in_flight.push_back(Box::pin(async move {
                            Settled {
                                after,
                                count: 0,
                                raw: 0,
                                wire: 0,
                                refused: Some(Vec::new()),
                            }
                        }));
                        continue;
                    }
                    if targets.is_empty() {
                        break;
                    }
                    next = after;
                    // The node to ship to, then the others in turn, for a
                    // batch its node leaves unanswered.
                    let order: Vec<NodeId> = (0..targets.len())
                        .map(|i| targets[(target + i) % targets.len()].clone())
                        .collect();
                    in_flight.push_back(self.send(shipped, records, count, after, order));
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
                let Some(settled) = done else {
                    continue;
                };
                if !self.acknowledged(settled).await {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    target = target.wrapping_add(1);
                    if !sleep_or_stop(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue 'outer;
                }
                backoff = Duration::from_millis(100);
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

    /// Ship one batch of `count` records (those that ship to this DC,
    /// `records`, coalesced into `shipped`) to `to`; the future answers
    /// how it ended, `after` being the sequence number the cursor moves
    /// to once this batch and every one before it are settled.
    fn send(
        &self,
        shipped: Vec<Item>,
        records: Vec<Arc<Record>>,
        count: usize,
        after: u64,
        nodes: Vec<NodeId>,
    ) -> InFlight {
        let (batch, raw) = encode_batch(&shipped);
        let wire = batch.len();
        let transport = self.transport.clone();
        let from_dc = self.from_dc.clone();
        let timeout = self.call_timeout;
        let failover_after = self.failover_after;
        let stats = self.stats.clone();
        Box::pin(async move {
            let shipped = &shipped;
            let records = &records;
            let attempt = |to: NodeId| {
                let request = PeerRequest::Ship {
                    from_dc: from_dc.clone(),
                    batch: batch.clone(),
                };
                let transport = transport.clone();
                async move {
                    match transport.call(&to, request, timeout).await {
                        Ok(PeerResponse::Applied) => Some(Vec::new()),
                        Ok(PeerResponse::Shipped { refused }) => refused_records(
                            shipped, records, refused,
                        )
                        .map_err(
                            |why| tracing::warn!(node = %to, why, "batch answer not understood"),
                        )
                        .ok(),
                        Ok(other) => {
                            tracing::debug!(node = %to, answer = ?other, "batch refused");
                            None
                        }
                        Err(e) => {
                            tracing::debug!(node = %to, error = %e, "batch not delivered");
                            None
                        }
                    }
                }
            };
            // The first node's answer, unless it fails, or gives none within
            // `failover_after`: then the next node gets the batch too, and
            // the first answer that settles it wins.
            let mut waiting = futures_util::stream::FuturesUnordered::new();
            let mut rest = nodes.into_iter();
            if let Some(first) = rest.next() {
                waiting.push(attempt(first));
            }
            let refused = loop {
                let hedge = tokio::time::sleep(failover_after);
                tokio::pin!(hedge);
                let more = rest.len() > 0;
                tokio::select! {
                    answer = waiting.next(), if !waiting.is_empty() => match answer {
                        Some(Some(refused)) => break Some(refused),
                        _ => match rest.next() {
                            Some(next) => waiting.push(attempt(next)),
                            None if waiting.is_empty() => break None,
                            None => {}
                        },
                    },
                    _ = &mut hedge, if more => {
                        if let Some(next) = rest.next() {
                            stats.failovers.fetch_add(1, Ordering::Relaxed);
                            waiting.push(attempt(next));
                        }
                    }
                    else => break None,
                }
            };
            Settled {
                after,
                count,
                raw,
                wire,
                refused,
            }
        })
    }

    /// A batch ended, and every batch before it: when it was applied,
    /// quarantine what it refused, count it and move the persisted cursor
    /// past it. `false`: not applied, or not settled (it is resent).
    async fn acknowledged(&self, settled: Settled) -> bool {
        let Settled {
            after,
            count,
            raw,
            wire,
            refused,
        } = settled;
        let Some(refused) = refused else {
            return false;
        };
        let (outbox, quarantine, dc) = (
            self.outbox.clone(),
            self.quarantine.clone(),
            self.dc.clone(),
        );
        let done =
            tokio::task::spawn_blocking(move || settle(&outbox, &quarantine, &dc, after, &refused))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = done {
            tracing::error!(dc = %self.dc, error = %e, "batch not settled; shipping it again");
            return false;
        }
        self.stats
            .records
            .fetch_add(count as u64, Ordering::Relaxed);
        self.stats
            .raw_bytes
            .fetch_add(raw as u64, Ordering::Relaxed);
        self.stats
            .wire_bytes
            .fetch_add(wire as u64, Ordering::Relaxed);
        true
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

/// The records behind the items a receiver refused for good: every
/// record of the batch with the item's keyspace and key. An answer that
/// names no item of the batch, or a refusal that is not permanent, is not
/// understood (the batch is resent).
fn refused_records(
    shipped: &[Item],
    records: &[Arc<Record>],
    refused: Vec<isthmus_core::peer::ShipRefusal>,
) -> Result<Vec<Refused>, String> {
    let mut out = Vec::new();
    for r in refused {
        let item = shipped
            .get(r.item as usize)
            .ok_or_else(|| format!("item {} of a batch of {}", r.item, shipped.len()))?;
        if !is_permanent(r.error.code) {
            return Err(format!("item {} refused with {:?}", r.item, r.error.code));
        }
        out.extend(
            records
                .iter()
                .filter(|rec| rec.keyspace == item.keyspace && rec.key == item.key)
                .map(|rec| Refused {
                    record: rec.clone(),
                    code: r.error.code,
                    message: r.error.message.clone(),
                }),
        );
    }
    Ok(out)
}

/// Runs full-syncs owed after the outbox bound cut a DC loose.
pub(crate) async fn full_syncer<F: Fs>(
    outbox: Arc<Outbox<F>>,
    dc: DcName,
    sync: Arc<dyn FullSync>,
    view: watch::Receiver<Arc<ClusterView>>,
    running: Arc<Mutex<bool>>,
    stats: Arc<ShipStats>,
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
                stats.full_syncs.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use isthmus_client::wire::ErrorCode;
    use isthmus_core::fs::MemFs;
    use isthmus_core::model::{Actor, Clock, Dot, KeyspaceConfig, Version};

    use super::*;
    use crate::outbox::OutboxConfig;

    fn version(n: u64) -> Version {
        let mut clock = Clock::new();
        clock.add_dot(Dot {
            actor: Actor(1),
            counter: n,
        });
        Version::value(clock, vec![b'x'; 100], n, "dc1".into())
    }

    /// Power cut at every sync point of a run in which every third record
    /// is refused for good and the quarantine fills up part-way: after
    /// recovery, every record the cursor moved past that was refused is
    /// in the quarantine, or a full sync is owed to the DC.
    #[test]
    fn power_loss_never_lets_the_cursor_pass_a_refused_record_not_kept() {
        let dc2 = DcName("dc2".into());
        let config = OutboxConfig {
            segment_bytes: 2048,
            tail_cache_bytes: 8192,
            ..OutboxConfig::default()
        };
        let (outbox_dir, q_dir) = (Path::new("/bridge"), Path::new("/bridge/quarantine"));
        // Room for about ten refused records of the twenty.
        let q_max = 2048;
        let mut overflowed_somewhere = false;
        for n in 0.. {
            let fs = MemFs::new();
            fs.eager_removals();
            let outbox = Outbox::open_with_fs(fs.clone(), outbox_dir, config.clone()).unwrap();
            let (q, _) = Quarantine::open(fs.clone(), q_dir, q_max).unwrap();
            outbox.register(&dc2).unwrap();
            fs.fail_sync_after(n);
            let mut refused_seqs = Vec::new();
            let mut completed = true;
            'run: for batch in 0..15u64 {
                let mut refused = Vec::new();
                let mut last = 0;
                for i in 0..4 {
                    let Ok(seq) = outbox.append("orders", b"k", &version(batch * 4 + i + 1)) else {
                        completed = false;
                        break 'run;
                    };
                    last = seq;
                    if seq % 3 == 0 {
                        let record = outbox.read(seq, usize::MAX, 1).unwrap().remove(0);
                        refused.push(Refused {
                            record,
                            code: ErrorCode::BadRequest,
                            message: "unknown keyspace".into(),
                        });
                    }
                }
                refused_seqs.extend(refused.iter().map(|r| r.record.seq));
                if settle(&outbox, &q, &dc2, last + 1, &refused).is_err() {
                    completed = false;
                    break;
                }
            }
            let fs = fs.crash();
            drop((outbox, q));
            let outbox = Outbox::open_with_fs(fs.clone(), outbox_dir, config.clone()).unwrap();
            let (q, damaged) = Quarantine::open(fs, q_dir, q_max).unwrap();
            assert!(damaged.is_empty(), "sync {n}: damage after a power cut");
            let cursor = outbox.cursor(&dc2).unwrap();
            if cursor.full_sync_pending {
                overflowed_somewhere = true;
                if completed {
                    break;
                }
                continue;
            }
            let kept: BTreeMap<u64, ()> = q
                .list(Some(&dc2), None, false)
                .unwrap()
                .0
                .iter()
                .map(|r| (r.seq, ()))
                .collect();
            for seq in refused_seqs.iter().filter(|&&s| s < cursor.next) {
                assert!(
                    kept.contains_key(seq),
                    "sync {n}: the cursor ({}) passed refused record {seq}, neither kept nor owed a full sync",
                    cursor.next
                );
            }
            assert!(!completed, "the run fills the quarantine");
        }
        assert!(overflowed_somewhere);
    }

    /// A DC of two nodes: `stalled` takes a batch and never answers (a
    /// paused process); `good` applies every batch. Counts what `good` got.
    struct TwoNodes {
        good_batches: AtomicU64,
    }

    impl Transport for TwoNodes {
        async fn call(
            &self,
            to: &NodeId,
            _request: PeerRequest,
            timeout: Duration,
        ) -> Result<PeerResponse, isthmus_client::ClientError> {
            if to.0 == "a-stalled" {
                tokio::time::sleep(timeout).await;
                return Err(isthmus_client::ClientError::Timeout {
                    after: timeout,
                    acks: None,
                });
            }
            self.good_batches.fetch_add(1, Ordering::Relaxed);
            Ok(PeerResponse::Applied)
        }
    }

    #[tokio::test]
    async fn a_stalled_receiver_holds_the_stream_only_until_the_failover_bound() {
        let (me, dc1, dc2) = (
            NodeId("me".into()),
            DcName("dc1".into()),
            DcName("dc2".into()),
        );
        let placement = |dc: &DcName| isthmus_core::ring::Placement {
            dc: dc.clone(),
            rack: "r".into(),
        };
        // Named so the stalled node is the first the shipper picks.
        let (stalled, good) = (NodeId("a-stalled".into()), NodeId("b-good".into()));
        let members = [
            (&me, placement(&dc1)),
            (&stalled, placement(&dc2)),
            (&good, placement(&dc2)),
        ];
        let ring = isthmus_core::ring::Ring::build(members.iter().map(|(id, p)| (*id, p, 8)));
        let view = ClusterView {
            ring: ring.clone(),
            alive: [me.clone(), stalled.clone(), good.clone()].into(),
            next: ring,
        };
        let (_view_tx, view_rx) = watch::channel(Arc::new(view));
        let keyspaces = BTreeMap::from([(
            "orders".to_owned(),
            KeyspaceConfig {
                replication: [(dc1.clone(), 1), (dc2.clone(), 2)].into(),
                ..KeyspaceConfig::default()
            },
        )]);
        let fs = MemFs::new();
        let outbox = Arc::new(
            Outbox::open_with_fs(fs.clone(), Path::new("/bridge"), OutboxConfig::default())
                .unwrap(),
        );
        outbox.register(&dc2).unwrap();
        let (quarantine, _) = Quarantine::open(fs, Path::new("/bridge/q"), 1 << 20).unwrap();
        let transport = Arc::new(TwoNodes {
            good_batches: AtomicU64::new(0),
        });
        let stats = Arc::new(ShipStats::default());
        let shipper = Shipper {
            outbox: outbox.clone(),
            me,
            dc: dc2.clone(),
            from_dc: dc1,
            transport: transport.clone(),
            view: view_rx,
            keyspaces: Arc::new(RwLock::new(isthmus_core::model::keyspace_map(keyspaces))),
            batch_bytes_max: 1 << 20,
            linger: Duration::from_millis(1),
            stats: stats.clone(),
            call_timeout: Duration::from_secs(30),
            failover_after: Duration::from_millis(200),
            quarantine: Arc::new(quarantine),
        };
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(shipper.run(stop));
        let started = std::time::Instant::now();
        for n in 0..20 {
            outbox
                .append("orders", format!("k{n}").as_bytes(), &version(n + 1))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Batches sent to the stalled node (the shipper starts with either)
        // are resent to the good one after the bound, not after the call's
        // 30 s timeout: everything is acknowledged within seconds.
        while outbox.cursor(&dc2).unwrap().next < 20 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the stream stalled behind a paused node: cursor at {}",
                outbox.cursor(&dc2).unwrap().next
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(transport.good_batches.load(Ordering::Relaxed) > 0);
        assert!(
            stats.failovers.load(Ordering::Relaxed) > 0,
            "no batch went to the stalled node first"
        );
        let _ = stop_tx.send(true);
        let _ = task.await;
    }

    #[test]
    fn only_refusals_of_items_in_the_batch_with_permanent_codes_are_understood() {
        let record = |seq: u64, key: &[u8]| {
            Arc::new(Record {
                seq,
                enqueued_ms: 0,
                keyspace: "orders".into(),
                key: key.to_vec(),
                version: version(seq + 1),
                only: None,
            })
        };
        let records = vec![record(0, b"a"), record(1, b"b"), record(2, b"a")];
        let shipped = coalesce(records.iter().map(|r| &**r));
        let refusal = |item: u32, code: ErrorCode| isthmus_core::peer::ShipRefusal {
            item,
            error: isthmus_client::wire::WireError {
                code,
                message: "no".into(),
                acks: None,
                needs: None,
            },
        };
        // Item 0 is key "a": both its records.
        let found = refused_records(
            &shipped,
            &records,
            vec![refusal(0, ErrorCode::ValueTooLarge)],
        )
        .unwrap();
        let seqs: Vec<u64> = found.iter().map(|r| r.record.seq).collect();
        assert_eq!(seqs, vec![0, 2]);
        assert!(
            refused_records(&shipped, &records, vec![refusal(5, ErrorCode::BadRequest)]).is_err()
        );
        assert!(
            refused_records(&shipped, &records, vec![refusal(1, ErrorCode::ClockSkew)]).is_err()
        );
    }
}
