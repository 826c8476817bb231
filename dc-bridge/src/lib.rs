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
pub mod ship;
pub mod wan;

use isthmus_core::wall_clock::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use isthmus_client::wire::{ErrorCode, WireError};
use isthmus_core::bridge::{
    BoxFuture, Bridge, BridgeFactory, BridgeParts, BridgeReport, Deliver, StartedBridge,
};
use isthmus_core::engine::FsyncPolicy;
use isthmus_core::model::{DcName, KeyspaceConfig, Version};
use isthmus_core::store::StoreError;
use parking_lot::{Mutex, RwLock};

use crate::batch::decode_batch;
use crate::outbox::{Outbox, OutboxConfig};
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
}

impl From<&isthmus_core::config::BridgeSection> for BridgeConfig {
    fn from(s: &isthmus_core::config::BridgeSection) -> Self {
        BridgeConfig {
            outbox_bytes_max: s.outbox_bytes_max,
            batch_bytes_max: s.batch_bytes_max as usize,
            linger: Duration::from_millis(s.linger_ms),
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
fn remote_dcs(keyspaces: &BTreeMap<String, KeyspaceConfig>, own: &DcName) -> BTreeSet<DcName> {
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
        let remotes = remote_dcs(&parts.keyspaces.read(), &parts.dc);
        let mut links = BTreeMap::new();
        let mut tasks = Vec::new();
        for dc in &remotes {
            outbox.register(dc)?;
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
    applied: u64,
}

/// One node's bridge.
pub struct DcBridge<F: Fs = StdFs> {
    outbox: Arc<Outbox<F>>,
    links: BTreeMap<DcName, Arc<ShipStats>>,
    lag_in: Mutex<BTreeMap<DcName, Inbound>>,
    keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
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
            applied: 0,
        });
        for &lag in lags {
            inbound.lag_ms.saturating_record(lag.max(1));
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
    ) -> BoxFuture<'a, Result<(), WireError>> {
        Box::pin(async move {
            let records = decode_batch(batch).map_err(|e| WireError {
                code: ErrorCode::BadRequest,
                message: e.to_string(),
                acks: None,
                needs: None,
            })?;
            let total = records.len();
            let mut by_keyspace: BTreeMap<String, (Vec<u64>, isthmus_core::bridge::Entries)> =
                BTreeMap::new();
            for item in records {
                let (times, entries) = by_keyspace.entry(item.keyspace).or_default();
                times.push(item.enqueued_ms);
                entries.push((item.key, item.versions));
            }
            let results = futures_util::future::join_all(by_keyspace.into_iter().map(
                |(keyspace, (times, entries))| async move {
                    let result = deliver.deliver(&keyspace, entries, APPLY_DEADLINE).await;
                    (times, result)
                },
            ))
            .await;
            let mut failed = None;
            for (times, result) in results {
                match result {
                    Ok(()) => {
                        let now = now_ms();
                        let lags: Vec<u64> = times.iter().map(|t| now.saturating_sub(*t)).collect();
                        self.record_lag(from_dc, &lags);
                    }
                    Err(e) => failed = Some(e),
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
            Ok(())
        })
    }

    fn report(&self) -> Vec<BridgeReport> {
        let cursors = self.outbox.cursors();
        let head = self.outbox.head();
        let bytes = self.outbox.bytes();
        let lag_in = self.lag_in.lock();
        let mut dcs: BTreeSet<DcName> = self.links.keys().cloned().collect();
        dcs.extend(lag_in.keys().cloned());
        dcs.into_iter()
            .map(|dc| {
                let cursor = cursors.get(&dc).cloned().unwrap_or_default();
                let stats = self.links.get(&dc);
                let load = |f: fn(&ShipStats) -> &std::sync::atomic::AtomicU64| {
                    stats.map_or(0, |s| f(s).load(Ordering::Relaxed))
                };
                let inbound = lag_in.get(&dc);
                BridgeReport {
                    remote_dc: dc.0.clone(),
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
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use isthmus_core::fs::MemFs;

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
        DcBridge {
            outbox: Arc::new(outbox),
            links: BTreeMap::new(),
            lag_in: Mutex::default(),
            keyspaces: Arc::new(RwLock::new(BTreeMap::from([("carts".into(), carts)]))),
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
            bridge.record_lag(&DcName(format!("forged-{i}")), &[1]);
        }
        assert_eq!(bridge.lag_in.lock().len(), 1);
        assert!(bridge.take_lag(&"forged-1".into()).is_none());
        assert_eq!(bridge.take_lag(&"dc2".into()).unwrap().len(), 2);
    }
}
