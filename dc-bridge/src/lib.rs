//! # isthmus-dc-bridge
//!
//! The asynchronous bridge between datacenters. Every write a node
//! coordinates for a keyspace replicated to other DCs enters the node's
//! durable [`outbox`](outbox::Outbox) before the client hears back.
//! Shippers ([`ship`]), one per remote DC, batch the records by size and
//! time, compress them with lz4 ([`batch`]), and send them over the node's
//! framed peer connections to live nodes of the remote DC, failing over
//! between them. The receiving node applies every version with its
//! original clock at LOCAL_QUORUM in its DC (idempotent: absorbing a
//! version twice changes nothing) and only then acknowledges; the
//! acknowledgement advances a persisted cursor per remote DC, so a
//! restarted node resumes where it stopped. An outbox past its bound cuts
//! the furthest-behind DC loose, which then gets a Merkle full-sync.
//!
//! A record the remote DC refuses for a reason retrying cannot change (a
//! keyspace it does not know, a value over its limit: see
//! [`isthmus_core::bridge::is_permanent`]) does not stall the pair: the
//! receiver applies the rest of the batch and names the refused items,
//! and the shipper keeps their records in the node's
//! [`quarantine`](quarantine::Quarantine) before it moves on. An operator
//! lists, exports and replays them (`isthmus bridge quarantine`).
//!
//! [`wan`] is a userspace WAN: a proxy that adds one-way latency between
//! DCs and can cut and restore the link (tests and the demo).
//!
//! What it is not: the coordinator. Core calls the bridge through
//! [`isthmus_core::bridge::Bridge`]; this crate never sees wasmtime.
#![warn(missing_docs)]

pub mod batch;
#[doc(hidden)]
pub mod fuzzing;
pub mod outbox;
pub mod quarantine;
pub mod ship;
pub mod wan;

use isthmus_core::wall_clock::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use isthmus_client::wire::{ErrorCode, QuarantineRequest, QuarantineResponse, WireError};
use isthmus_core::bridge::{
    BoxFuture, Bridge, BridgeFactory, BridgeFigures, BridgeParts, BridgeReport, Deliver,
    LagHistogram, ShipRefusal, StartedBridge, is_permanent,
};
use isthmus_core::engine::FsyncPolicy;
use isthmus_core::model::{DcName, Version};
use isthmus_core::store::StoreError;
use parking_lot::{Mutex, RwLock};

use crate::batch::decode_batch;
use crate::outbox::{Outbox, OutboxConfig};
use crate::quarantine::Quarantine;
use crate::ship::{ShipStats, Shipper, full_syncer};
use isthmus_core::fs::{Fs, StdFs};

/// Deadline of one record's local-quorum apply on the receiving side.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Bridge settings (the `[bridge]` config table).
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Outbox bound in bytes.
    pub outbox_bytes_max: u64,
    /// Largest batch before compression.
    pub batch_bytes_max: usize,
    /// Longest wait for a small batch to fill.
    pub linger: Duration,
    /// Bound of each remote DC's quarantine, in bytes.
    pub quarantine_bytes_max: u64,
    /// How long a batch waits for its node before the next one gets it too.
    pub failover_after_ms: u64,
}

impl From<&isthmus_core::config::BridgeSection> for BridgeConfig {
    fn from(s: &isthmus_core::config::BridgeSection) -> Self {
        BridgeConfig {
            outbox_bytes_max: s.outbox_bytes_max,
            batch_bytes_max: s.batch_bytes_max as usize,
            linger: Duration::from_millis(s.linger_ms),
            quarantine_bytes_max: s.quarantine_bytes_max,
            failover_after_ms: s.failover_after_ms,
        }
    }
}

/// Builds the bridge of a node (hand it to `NodeTuning::bridge`).
pub struct DcBridgeFactory<F: Fs = StdFs> {
    config: BridgeConfig,
    fs: F,
    started: Mutex<Vec<std::sync::Weak<DcBridge<F>>>>,
}

impl DcBridgeFactory {
    /// A factory with these settings, keeping outboxes on the real file
    /// system.
    pub fn new(config: BridgeConfig) -> Self {
        Self::with_fs(config, StdFs)
    }
}

impl<F: Fs> DcBridgeFactory<F> {
    /// A factory with these settings whose outboxes live on `fs` (a
    /// simulated disk in deterministic tests).
    pub fn with_fs(config: BridgeConfig, fs: F) -> Self {
        DcBridgeFactory {
            config,
            fs,
            started: Mutex::default(),
        }
    }

    /// The bridges it started that are still running (benchmarks read
    /// their histograms).
    pub fn bridges(&self) -> Vec<Arc<DcBridge<F>>> {
        let mut started = self.started.lock();
        started.retain(|w| w.strong_count() > 0);
        started.iter().filter_map(|w| w.upgrade()).collect()
    }
}

/// The remote DCs `keyspaces` replicate to, seen from `own`.
fn remote_dcs(keyspaces: &isthmus_core::model::KeyspaceMap, own: &DcName) -> BTreeSet<DcName> {
    keyspaces
        .values()
        .flat_map(|ks| ks.replication.keys())
        .filter(|dc| *dc != own)
        .cloned()
        .collect()
}

impl<F: Fs> BridgeFactory for DcBridgeFactory<F> {
    fn start(&self, parts: BridgeParts) -> Result<StartedBridge, StoreError> {
        let sync_each_append = matches!(parts.fsync, FsyncPolicy::Always);
        let outbox = Arc::new(Outbox::open_with_fs(
            self.fs.clone(),
            &parts.dir,
            OutboxConfig {
                bytes_max: self.config.outbox_bytes_max,
                sync_each_append,
                ..OutboxConfig::default()
            },
        )?);
        let (quarantine, damaged) = Quarantine::open(
            self.fs.clone(),
            &parts.dir.join("quarantine"),
            self.config.quarantine_bytes_max,
        )?;
        let quarantine = Arc::new(quarantine);
        let remotes = remote_dcs(&parts.keyspaces.read(), &parts.dc);
        let mut links = BTreeMap::new();
        let mut tasks = Vec::new();
        for dc in &remotes {
            outbox.register(dc)?;
            if damaged.contains(dc) {
                outbox.owe_full_sync(dc)?;
            }
            let stats = Arc::new(ShipStats::default());
            let syncing = Arc::new(Mutex::new(false));
            let shipper = Shipper {
                outbox: outbox.clone(),
                me: parts.node.clone(),
                dc: dc.clone(),
                from_dc: parts.dc.clone(),
                transport: parts.transport.clone(),
                view: parts.view.clone(),
                keyspaces: parts.keyspaces.clone(),
                batch_bytes_max: self.config.batch_bytes_max,
                linger: self.config.linger,
                stats: stats.clone(),
                call_timeout: Duration::from_secs(15),
                failover_after: Duration::from_millis(self.config.failover_after_ms),
                quarantine: quarantine.clone(),
            };
            tasks.push(("bridge-ship", tokio::spawn(shipper.run(parts.stop.clone()))));
            tasks.push((
                "bridge-full-sync",
                tokio::spawn(full_syncer(
                    outbox.clone(),
                    dc.clone(),
                    parts.full_sync.clone(),
                    parts.view.clone(),
                    syncing,
                    stats.clone(),
                    parts.stop.clone(),
                )),
            ));
            links.insert(dc.clone(), stats);
        }
        if let FsyncPolicy::Interval(every) = parts.fsync {
            let (outbox, mut stop) = (outbox.clone(), parts.stop.clone());
            tasks.push((
                "bridge-sync",
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stop.changed() => return,
                        }
                        let outbox = outbox.clone();
                        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || outbox.sync()).await
                        {
                            tracing::error!(error = %e, "outbox sync failed");
                        }
                    }
                }),
            ));
        }
        let bridge = Arc::new(DcBridge {
            outbox,
            quarantine,
            links,
            lag_in: Mutex::default(),
            keyspaces: parts.keyspaces,
            own: parts.dc,
        });
        self.started.lock().push(Arc::downgrade(&bridge));
        Ok(StartedBridge { bridge, tasks })
    }
}

/// Receiving-side figures per origin DC.
struct Inbound {
    lag_ms: Histogram<u64>,
    /// The same lags in `/metrics`' fixed buckets, never reset.
    buckets: LagHistogram,
    applied: u64,
}

/// One node's bridge.
pub struct DcBridge<F: Fs = StdFs> {
    outbox: Arc<Outbox<F>>,
    quarantine: Arc<Quarantine<F>>,
    links: BTreeMap<DcName, Arc<ShipStats>>,
    lag_in: Mutex<BTreeMap<DcName, Inbound>>,
    keyspaces: Arc<RwLock<isthmus_core::model::KeyspaceMap>>,
    own: DcName,
}

impl<F: Fs> DcBridge<F> {
    /// The lag histogram (milliseconds) of writes applied here from
    /// `from`, since the last call; resets it.
    pub fn take_lag(&self, from: &DcName) -> Option<Histogram<u64>> {
        let mut all = self.lag_in.lock();
        let inbound = all.get_mut(from)?;
        let taken = inbound.lag_ms.clone();
        inbound.lag_ms.reset();
        Some(taken)
    }

    /// Record the lags of writes applied here from `from`; only for a DC
    /// some keyspace replicates to (on a plaintext link a batch's origin
    /// is whatever it claims, and each name would hold a histogram).
    fn record_lag(&self, from: &DcName, lags: &[u64]) {
        let configured = self
            .keyspaces
            .read()
            .values()
            .any(|ks| ks.replication.contains_key(from));
        if !configured {
            return;
        }
        let mut all = self.lag_in.lock();
        let inbound = all.entry(from.clone()).or_insert_with(|| Inbound {
            lag_ms: Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid bounds"),
            buckets: LagHistogram {
                from_dc: from.clone(),
                ..LagHistogram::default()
            },
            applied: 0,
        });
        for &lag in lags {
            inbound.lag_ms.saturating_record(lag.max(1));
            inbound.buckets.record(lag);
        }
        inbound.applied += lags.len() as u64;
    }
}

impl<F: Fs> Bridge for DcBridge<F> {
    fn enqueue<'a>(
        &'a self,
        keyspace: &'a str,
        key: &'a [u8],
        version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let ships = self
            .keyspaces
            .read()
            .get(keyspace)
            .is_some_and(|ks| ks.replication.keys().any(|dc| *dc != self.own));
        if !ships {
            return Box::pin(async { Ok(()) });
        }
        let (outbox, keyspace, key, version) = (
            self.outbox.clone(),
            keyspace.to_owned(),
            key.to_vec(),
            version.clone(),
        );
        Box::pin(async move {
            tokio::task::spawn_blocking(move || outbox.append(&keyspace, &key, &version))
                .await
                .map_err(|e| StoreError::Failed {
                    reason: format!("outbox append: {e}"),
                })?
                .map(|_| ())
        })
    }

    fn receive<'a>(
        &'a self,
        from_dc: &'a DcName,
        batch: &'a [u8],
        deliver: &'a dyn Deliver,
    ) -> BoxFuture<'a, Result<Vec<ShipRefusal>, WireError>> {
        Box::pin(async move {
            let records = decode_batch(batch).map_err(|e| WireError {
                code: ErrorCode::BadRequest,
                message: e.to_string(),
                acks: None,
                needs: None,
            })?;
            let total = records.len();
            let mut refused = Vec::new();
            let mut by_keyspace: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
            for (i, item) in records.into_iter().enumerate() {
                let item_no = i as u32;
                // What this node can tell alone is refused before any
                // replica is asked (no hint is kept for it).
                if let Err(e) = deliver.admit(&item.keyspace, &item.key, &item.versions) {
                    let error = e.to_wire();
                    if is_permanent(error.code) {
                        refused.push(ShipRefusal {
                            item: item_no,
                            error,
                        });
                        continue;
                    }
                }
                by_keyspace
                    .entry(item.keyspace)
                    .or_default()
                    .push(Delivery {
                        item: item_no,
                        enqueued_ms: item.enqueued_ms,
                        key: item.key,
                        versions: item.versions,
                    });
            }
            let results = futures_util::future::join_all(
                by_keyspace
                    .into_iter()
                    .map(|(keyspace, items)| deliver_keyspace(deliver, keyspace, items)),
            )
            .await;
            let mut failed = None;
            for result in results {
                let now = now_ms();
                let lags: Vec<u64> = result
                    .applied
                    .iter()
                    .map(|t| now.saturating_sub(*t))
                    .collect();
                self.record_lag(from_dc, &lags);
                refused.extend(result.refused);
                if let Some(e) = result.failed {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                return Err(WireError {
                    code: ErrorCode::Timeout,
                    message: format!("batch of {total} keys not applied at LOCAL_QUORUM: {e}"),
                    acks: None,
                    needs: None,
                });
            }
            if !refused.is_empty() {
                tracing::warn!(%from_dc, refused = refused.len(), first = %refused[0].error.message,
                    "bridge batch items refused for good; the sender quarantines them");
            }
            refused.sort_by_key(|r| r.item);
            Ok(refused)
        })
    }

    fn quarantine(
        &self,
        request: QuarantineRequest,
    ) -> BoxFuture<'_, Result<QuarantineResponse, WireError>> {
        Box::pin(async move {
            let (outbox, quarantine) = (self.outbox.clone(), self.quarantine.clone());
            let known: BTreeSet<DcName> = self.links.keys().cloned().collect();
            tokio::task::spawn_blocking(move || {
                serve_quarantine(&outbox, &quarantine, &known, request)
            })
            .await
            .map_err(|e| internal(format!("quarantine task: {e}")))?
        })
    }

    fn report(&self) -> Vec<BridgeReport> {
        let cursors = self.outbox.cursors();
        let head = self.outbox.head();
        let bytes = self.outbox.bytes();
        let lag_in = self.lag_in.lock();
        let quarantined = self.quarantine.stats();
        let mut dcs: BTreeSet<DcName> = self.links.keys().cloned().collect();
        dcs.extend(lag_in.keys().cloned());
        dcs.extend(quarantined.keys().cloned());
        dcs.into_iter()
            .map(|dc| {
                let cursor = cursors.get(&dc).cloned().unwrap_or_default();
                let stats = self.links.get(&dc);
                let load = |f: fn(&ShipStats) -> &std::sync::atomic::AtomicU64| {
                    stats.map_or(0, |s| f(s).load(Ordering::Relaxed))
                };
                let inbound = lag_in.get(&dc);
                let held = quarantined.get(&dc).copied().unwrap_or_default();
                BridgeReport {
                    remote_dc: dc.0.to_string(),
                    outbox_records: if self.links.contains_key(&dc) {
                        head.saturating_sub(cursor.next)
                    } else {
                        0
                    },
                    outbox_bytes: bytes,
                    shipped_records: load(|s| &s.records),
                    raw_bytes: load(|s| &s.raw_bytes),
                    shipped_bytes: load(|s| &s.wire_bytes),
                    overflows: cursor.overflows,
                    full_sync_pending: cursor.full_sync_pending,
                    lag_in_p50_ms: inbound.map_or(0.0, |i| i.lag_ms.value_at_quantile(0.5) as f64),
                    lag_in_p99_ms: inbound.map_or(0.0, |i| i.lag_ms.value_at_quantile(0.99) as f64),
                    applied_in: inbound.map_or(0, |i| i.applied),
                    quarantined: held.quarantined,
                    quarantine_held: held.held,
                    quarantine_bytes: held.bytes,
                    quarantine_overflows: held.overflows,
                }
            })
            .collect()
    }

    fn figures(&self) -> BridgeFigures {
        let per_dc = |f: fn(&ShipStats) -> &std::sync::atomic::AtomicU64| {
            self.links
                .iter()
                .map(|(dc, s)| (dc.clone(), f(s).load(Ordering::Relaxed)))
                .collect()
        };
        BridgeFigures {
            lag_in: self
                .lag_in
                .lock()
                .values()
                .map(|i| i.buckets.clone())
                .collect(),
            failovers: per_dc(|s| &s.failovers),
            full_syncs: per_dc(|s| &s.full_syncs),
        }
    }
}

/// One item of a received batch, to deliver.
struct Delivery {
    item: u32,
    enqueued_ms: u64,
    key: Vec<u8>,
    versions: Vec<Version>,
}

/// How one keyspace's part of a batch went.
#[derive(Default)]
struct KeyspaceResult {
    /// When each applied item was queued at its origin.
    applied: Vec<u64>,
    refused: Vec<ShipRefusal>,
    /// A transient failure (the whole batch is resent).
    failed: Option<String>,
}

/// Keys delivered at once while finding which keys of a part a replica
/// refused for good.
const ISOLATE_CONCURRENCY: usize = 16;

/// Deliver one keyspace's items. When the delivery is refused for good
/// (a replica refused some key of it: its sibling bound, a limit lower
/// than this node's), each key is delivered alone to find which keys it
/// refused; the rest are applied.
async fn deliver_keyspace(
    deliver: &dyn Deliver,
    keyspace: String,
    items: Vec<Delivery>,
) -> KeyspaceResult {
    let entries = items
        .iter()
        .map(|d| (d.key.clone(), d.versions.clone()))
        .collect();
    let mut result = KeyspaceResult::default();
    match deliver.deliver(&keyspace, entries, APPLY_DEADLINE).await {
        Ok(()) => {
            result.applied = items.iter().map(|d| d.enqueued_ms).collect();
            return result;
        }
        Err(e) if !is_permanent(e.to_wire().code) => {
            result.failed = Some(e.to_string());
            return result;
        }
        Err(_) => {}
    }
    let keyspace = &keyspace;
    let mut alone = futures_util::stream::iter(items)
        .map(|d| async move {
            let entry = vec![(d.key, d.versions)];
            (
                d.item,
                d.enqueued_ms,
                deliver.deliver(keyspace, entry, APPLY_DEADLINE).await,
            )
        })
        .buffer_unordered(ISOLATE_CONCURRENCY);
    while let Some((item, enqueued_ms, answer)) = alone.next().await {
        match answer {
            Ok(()) => result.applied.push(enqueued_ms),
            Err(e) => {
                let error = e.to_wire();
                if is_permanent(error.code) {
                    result.refused.push(ShipRefusal { item, error });
                } else {
                    result.failed = Some(e.to_string());
                }
            }
        }
    }
    result
}

fn internal(message: String) -> WireError {
    WireError {
        code: ErrorCode::Internal,
        message,
        acks: None,
        needs: None,
    }
}

fn bad_request(message: String) -> WireError {
    WireError {
        code: ErrorCode::BadRequest,
        message,
        acks: None,
        needs: None,
    }
}

/// Most records one replay request puts back (a bigger quarantine is
/// replayed in several requests: each holds its records in memory, at
/// most this many values, and stays well inside a request deadline).
pub const REPLAY_RECORDS_MAX: usize = 64;

/// An operator's quarantine request, blocking. A replay appends the
/// records to the outbox for `dc` only, makes them durable there, and
/// only then removes them from the quarantine: a crash in between ships
/// them twice, which is harmless.
fn serve_quarantine<F: Fs>(
    outbox: &Outbox<F>,
    quarantine: &Quarantine<F>,
    known: &BTreeSet<DcName>,
    request: QuarantineRequest,
) -> Result<QuarantineResponse, WireError> {
    let failed = |e: StoreError| WireError {
        code: ErrorCode::StorageFailed,
        message: e.to_string(),
        acks: None,
        needs: None,
    };
    match request {
        QuarantineRequest::List { dc, after, records } => {
            let dc = dc.map(DcName::from);
            let (records, next) = quarantine
                .list(dc.as_ref(), after.as_ref(), records)
                .map_err(failed)?;
            Ok(QuarantineResponse::Listing { records, next })
        }
        QuarantineRequest::Replay { dc, ids } => {
            let dc = DcName::from(dc);
            if !known.contains(&dc) {
                return Err(bad_request(format!(
                    "this node ships to no datacenter {dc} (no keyspace replicates there)"
                )));
            }
            let wanted: Option<BTreeSet<u64>> =
                (!ids.is_empty()).then(|| ids.iter().copied().collect());
            if wanted
                .as_ref()
                .is_some_and(|w| w.len() > REPLAY_RECORDS_MAX)
            {
                return Err(bad_request(format!(
                    "at most {REPLAY_RECORDS_MAX} records per replay"
                )));
            }
            let (entries, _) = quarantine
                .entries(&dc, 0, wanted.as_ref(), REPLAY_RECORDS_MAX, usize::MAX)
                .map_err(failed)?;
            for e in &entries {
                let r = &e.record;
                outbox
                    .append_for(Some(&dc), &r.keyspace, &r.key, &r.version)
                    .map_err(failed)?;
            }
            outbox.sync().map_err(failed)?;
            let done: BTreeSet<u64> = entries.iter().map(|e| e.id).collect();
            quarantine.remove(&dc, &done).map_err(failed)?;
            if !entries.is_empty() {
                tracing::info!(%dc, records = entries.len(), "quarantined records replayed");
            }
            let missing = wanted
                .map(|w| w.difference(&done).copied().collect())
                .unwrap_or_default();
            Ok(QuarantineResponse::Replayed {
                replayed: done.len() as u64,
                missing,
            })
        }
    }
}

// A listing page fits a frame: its entries' bytes (at most the page's
// bound, or one entry past it), each summary at most twice its entry (the
// key and message again beside the record) plus fixed fields.
const _: () = {
    use isthmus_core::limit::*;
    let entry_max = KEY_BYTES_MAX_DEFAULT + VALUE_BYTES_MAX_DEFAULT + VERSION_OVERHEAD_BYTES;
    assert!(
        2 * (quarantine::PAGE_BYTES_MAX + entry_max + quarantine::MESSAGE_BYTES_MAX)
            + quarantine::PAGE_RECORDS_MAX * 256
            + ENVELOPE_OVERHEAD_BYTES
            <= FRAME_BYTES_MAX_DEFAULT
    );
};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use isthmus_core::fs::MemFs;
    use isthmus_core::model::KeyspaceConfig;

    use super::*;

    /// A bridge of dc1 whose one keyspace replicates to dc1 and dc2.
    fn bridge() -> DcBridge<MemFs> {
        let outbox =
            Outbox::open_with_fs(MemFs::new(), Path::new("/outbox"), OutboxConfig::default())
                .unwrap();
        let carts = KeyspaceConfig {
            replication: BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 3)]),
            ..KeyspaceConfig::default()
        };
        let (quarantine, _) =
            Quarantine::open(MemFs::new(), Path::new("/quarantine"), 1 << 20).unwrap();
        DcBridge {
            outbox: Arc::new(outbox),
            quarantine: Arc::new(quarantine),
            links: BTreeMap::new(),
            lag_in: Mutex::default(),
            keyspaces: Arc::new(RwLock::new(BTreeMap::from([(
                "carts".into(),
                Arc::new(carts),
            )]))),
            own: "dc1".into(),
        }
    }

    /// Batches claiming a thousand made-up origins (a plaintext link
    /// believes whatever origin a batch names) hold no histogram each; a
    /// configured DC's lag is kept.
    #[test]
    fn lag_is_kept_only_for_configured_datacenters() {
        let bridge = bridge();
        bridge.record_lag(&"dc2".into(), &[5, 7]);
        for i in 0..1000 {
            bridge.record_lag(&DcName::from(format!("forged-{i}")), &[1]);
        }
        assert_eq!(bridge.lag_in.lock().len(), 1);
        assert!(bridge.take_lag(&"forged-1".into()).is_none());
        assert_eq!(bridge.take_lag(&"dc2".into()).unwrap().len(), 2);
    }

    /// Delivers in keyspace `carts` only: key `big` is refused by a
    /// replica for good (a sibling bound), key `flaky` misses its quorum
    /// (transient); keyspace `gone` is unknown here.
    #[derive(Default)]
    struct Fake {
        applied: Mutex<Vec<Vec<u8>>>,
    }

    impl Deliver for Fake {
        fn deliver<'a>(
            &'a self,
            _keyspace: &'a str,
            entries: isthmus_core::bridge::Entries,
            _deadline: Duration,
        ) -> BoxFuture<'a, Result<(), isthmus_core::coordinator::CoordinatorError>> {
            use isthmus_core::coordinator::CoordinatorError;
            Box::pin(async move {
                if entries.iter().any(|(k, _)| k == b"big") {
                    return Err(CoordinatorError::Peer {
                        node: isthmus_core::ring::NodeId("n2".into()),
                        error: WireError {
                            code: ErrorCode::TooManySiblings,
                            message: "key holds 17 siblings".into(),
                            acks: None,
                            needs: None,
                        },
                    });
                }
                if entries.iter().any(|(k, _)| k == b"flaky") {
                    return Err(CoordinatorError::QuorumLost {
                        required: 2,
                        acked: 1,
                    });
                }
                self.applied
                    .lock()
                    .extend(entries.into_iter().map(|(k, _)| k));
                Ok(())
            })
        }

        fn admit(
            &self,
            keyspace: &str,
            _key: &[u8],
            _versions: &[Version],
        ) -> Result<(), isthmus_core::coordinator::CoordinatorError> {
            match keyspace {
                "carts" => Ok(()),
                other => Err(
                    isthmus_core::coordinator::CoordinatorError::UnknownKeyspace {
                        name: other.into(),
                    },
                ),
            }
        }
    }

    fn batch(items: &[(&str, &str)]) -> Vec<u8> {
        let records: Vec<crate::batch::Record> = items
            .iter()
            .enumerate()
            .map(|(i, (keyspace, key))| {
                let mut clock = isthmus_core::model::Clock::new();
                clock.add_dot(isthmus_core::model::Dot {
                    actor: isthmus_core::model::Actor(1),
                    counter: i as u64 + 1,
                });
                crate::batch::Record {
                    seq: i as u64,
                    enqueued_ms: now_ms(),
                    keyspace: (*keyspace).into(),
                    key: key.as_bytes().to_vec(),
                    version: Version::value(clock, b"v".to_vec(), now_ms(), "dc2".into()),
                    only: None,
                }
            })
            .collect();
        crate::batch::encode_batch(&crate::batch::coalesce(&records)).0
    }

    /// A batch with a record for a keyspace unknown here and one a
    /// replica refuses for good: the rest is applied and those two are
    /// named, with their codes; a transient failure fails the batch.
    #[tokio::test]
    async fn a_batch_is_applied_but_for_the_items_refused_for_good() {
        let bridge = bridge();
        let fake = Fake::default();
        let shipped = batch(&[
            ("carts", "a"),
            ("gone", "x"),
            ("carts", "big"),
            ("carts", "b"),
        ]);
        let refused = bridge
            .receive(&"dc2".into(), &shipped, &fake)
            .await
            .unwrap();
        let named: Vec<(u32, ErrorCode)> = refused.iter().map(|r| (r.item, r.error.code)).collect();
        assert_eq!(
            named,
            vec![(1, ErrorCode::BadRequest), (2, ErrorCode::TooManySiblings)]
        );
        let mut applied = fake.applied.lock().clone();
        applied.sort();
        applied.dedup();
        assert_eq!(applied, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(bridge.take_lag(&"dc2".into()).unwrap().len(), 2);

        let shipped = batch(&[("carts", "big"), ("carts", "flaky")]);
        let failed = bridge.receive(&"dc2".into(), &shipped, &fake).await;
        assert_eq!(failed.unwrap_err().code, ErrorCode::Timeout);
    }

    #[test]
    fn refusals_are_permanent_only_when_retrying_cannot_help() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::KeyTooLarge,
            ErrorCode::ValueTooLarge,
            ErrorCode::TooManySiblings,
        ] {
            assert!(is_permanent(code), "{code:?}");
        }
        for code in [
            ErrorCode::ClockSkew,
            ErrorCode::DiskFull,
            ErrorCode::StorageFailed,
            ErrorCode::Timeout,
            ErrorCode::Unavailable,
            ErrorCode::Overloaded,
            ErrorCode::Unauthenticated,
            ErrorCode::Internal,
        ] {
            assert!(!is_permanent(code), "{code:?}");
        }
    }

    /// A replay puts the records back in the outbox for that DC only and
    /// removes them from the quarantine.
    #[test]
    fn a_replay_enqueues_for_that_datacenter_only_and_empties_the_quarantine() {
        let bridge = bridge();
        bridge.outbox.register(&"dc2".into()).unwrap();
        bridge.outbox.register(&"dc3".into()).unwrap();
        let record = Arc::new(crate::batch::Record {
            seq: 0,
            enqueued_ms: 1,
            keyspace: "carts".into(),
            key: b"k".to_vec(),
            version: Version::tombstone(isthmus_core::model::Clock::new(), 3, "dc1".into()),
            only: None,
        });
        let refused = crate::quarantine::Refused {
            record,
            code: ErrorCode::BadRequest,
            message: "unknown keyspace".into(),
        };
        bridge.quarantine.add(&"dc2".into(), &[refused]).unwrap();
        let known: BTreeSet<DcName> = ["dc2".into(), "dc3".into()].into();
        let replay = |dc: &str| QuarantineRequest::Replay {
            dc: dc.into(),
            ids: vec![],
        };
        let answer =
            serve_quarantine(&bridge.outbox, &bridge.quarantine, &known, replay("dc2")).unwrap();
        assert_eq!(
            answer,
            QuarantineResponse::Replayed {
                replayed: 1,
                missing: vec![]
            }
        );
        let queued = bridge.outbox.read(0, usize::MAX, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].only, Some("dc2".into()));
        assert_eq!(queued[0].key, b"k");
        assert_eq!(bridge.quarantine.stats()[&DcName::from("dc2")].held, 0);
        let unknown = serve_quarantine(&bridge.outbox, &bridge.quarantine, &known, replay("dc9"));
        assert_eq!(unknown.unwrap_err().code, ErrorCode::BadRequest);
        let missing = QuarantineRequest::Replay {
            dc: "dc2".into(),
            ids: vec![41],
        };
        let answer = serve_quarantine(&bridge.outbox, &bridge.quarantine, &known, missing).unwrap();
        assert_eq!(
            answer,
            QuarantineResponse::Replayed {
                replayed: 0,
                missing: vec![41]
            }
        );
    }
}
