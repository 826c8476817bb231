//! Durable hinted handoff: versions a replica could not take, kept by the
//! coordinator until that replica returns.
//!
//! One append-only file per target node, `DIR/<node>.hints`, of records:
//!
//! ```text
//! [payload length: u32 LE][crc32c of payload: u32 LE][payload: postcard(HintRecord)]
//! ```
//!
//! Every `add` is fsynced before it returns, so a hint survives the
//! coordinator's crash. Reading stops at a torn or corrupt record (the tail
//! of a crash) and keeps what came before. Hints are bounded twice: a
//! *window* (hints older than it are dropped at replay: a replica down that
//! long is repaired by anti-entropy instead, as in Cassandra) and a byte
//! bound per target (past it new hints are refused and counted, never
//! silently lost: the caller logs, and repair covers them). Replaying is
//! idempotent, because applying a version twice changes nothing, so a file
//! is deleted only after every record in it was acknowledged.
//!
//! [`handoff`] is the worker that replays them. It runs over any
//! [`HintQueue`] and [`Transport`]: the file store and TCP in a node, memory
//! and a simulated network in deterministic tests.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::Version;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;
use crate::store::StoreError;
use crate::transport::Transport;
use crate::view::ClusterView;

/// Keeps versions for a replica that could not take them.
pub trait HintSink: Send + Sync + 'static {
    /// Store durably that `target` must still receive `versions` of the key.
    fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Format version of hint files (the record layout above).
pub const HINT_FORMAT_VERSION: u32 = 1;

/// Largest single hint record accepted when reading (a corrupt length
/// beyond this is treated as the torn tail).
const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One hint as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HintRecord {
    /// When the hint was written, Unix milliseconds.
    pub created_ms: u64,
    /// Keyspace of the key.
    pub keyspace: String,
    /// The key.
    pub key: Vec<u8>,
    /// Versions the target must receive.
    pub versions: Vec<Version>,
}

/// Bounds of the hint store.
#[derive(Clone, Debug)]
pub struct HintConfig {
    /// Hints older than this are dropped rather than replayed.
    pub window: Duration,
    /// Bytes of hints kept per target node.
    pub bytes_per_target_max: u64,
}

impl Default for HintConfig {
    fn default() -> Self {
        HintConfig {
            window: Duration::from_secs(3 * 3600),
            bytes_per_target_max: 1 << 30,
        }
    }
}

/// Counters an operator reads.
#[derive(Debug, Default)]
pub struct HintStats {
    /// Hints written.
    pub stored: AtomicU64,
    /// Hints refused because a target's file was full.
    pub refused: AtomicU64,
    /// Hints delivered by replay.
    pub delivered: AtomicU64,
    /// Hints dropped because they were older than the window.
    pub expired: AtomicU64,
}

/// The durable hint store of one node.
pub struct HintStore {
    dir: PathBuf,
    config: HintConfig,
    files: Mutex<BTreeMap<NodeId, Arc<Mutex<()>>>>,
    stats: Arc<HintStats>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io_failed(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Failed {
        reason: format!("hint file {}: {e}", path.display()),
    }
}

impl HintStore {
    /// Open (creating) the hint directory.
    pub fn open(dir: &Path, config: HintConfig) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_failed(dir, e))?;
        Ok(HintStore {
            dir: dir.to_owned(),
            config,
            files: Mutex::default(),
            stats: Arc::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<HintStats> {
        &self.stats
    }

    fn path(&self, target: &NodeId) -> PathBuf {
        // Node ids are config strings; keep file names tame.
        let safe: String = target
            .0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.hints"))
    }

    fn lock(&self, target: &NodeId) -> Arc<Mutex<()>> {
        self.files.lock().entry(target.clone()).or_default().clone()
    }

    /// Targets that have hints waiting, with their file sizes.
    pub fn pending(&self) -> Vec<(NodeId, u64)> {
        let known: Vec<NodeId> = self.files.lock().keys().cloned().collect();
        known
            .into_iter()
            .filter_map(|t| {
                let len = fs::metadata(self.path(&t)).ok()?.len();
                (len > 0).then_some((t, len))
            })
            .collect()
    }

    /// Register targets whose hint files exist on disk (after a restart).
    pub fn discover(&self, targets: impl IntoIterator<Item = NodeId>) {
        let mut files = self.files.lock();
        for t in targets {
            if self.path(&t).exists() {
                files.entry(t).or_default();
            }
        }
    }

    /// Append one hint for `target`, durably.
    pub fn add_blocking(&self, target: &NodeId, record: &HintRecord) -> Result<(), StoreError> {
        let payload = postcard::to_allocvec(record).map_err(|e| StoreError::Failed {
            reason: e.to_string(),
        })?;
        let lock = self.lock(target);
        let _guard = lock.lock();
        let path = self.path(target);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len + payload.len() as u64 + 8 > self.config.bytes_per_target_max {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Failed {
                reason: format!(
                    "hints for {target} exceed {} bytes; repair will cover it",
                    self.config.bytes_per_target_max
                ),
            });
        }
        let mut buf = Vec::with_capacity(payload.len() + 8);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_failed(&path, e))?;
        file.write_all(&buf).map_err(|e| io_failed(&path, e))?;
        file.sync_data().map_err(|e| io_failed(&path, e))?;
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every readable hint for `target`, oldest first (stops at a torn or
    /// corrupt record).
    pub fn read(&self, target: &NodeId) -> Result<Vec<HintRecord>, StoreError> {
        let path = self.path(target);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| io_failed(&path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_failed(&path, e)),
        }
        Ok(decode_records(&bytes))
    }

    /// Hand every hint for `target` to `deliver` (oldest first, dropping
    /// those past the window); delete the file only if all were delivered.
    /// Returns how many were delivered.
    pub async fn replay<F, Fut>(&self, target: &NodeId, mut deliver: F) -> Result<usize, StoreError>
    where
        F: FnMut(HintRecord) -> Fut,
        Fut: Future<Output = bool>,
    {
        let lock = self.lock(target);
        let records = self.read(target)?;
        let processed = records.len();
        let cutoff = now_ms().saturating_sub(self.config.window.as_millis() as u64);
        let mut delivered = 0;
        for record in records {
            if record.created_ms < cutoff {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !deliver(record).await {
                return Ok(delivered);
            }
            delivered += 1;
            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        }
        // Everything went through: drop the file, unless new hints arrived
        // meanwhile (then the next round replays them all again, harmlessly).
        let _guard = lock.lock();
        let path = self.path(target);
        if self.read(target)?.len() == processed {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_failed(&path, e)),
            }
        }
        Ok(delivered)
    }
}

/// Decode records until the first torn or corrupt one.
fn decode_records(bytes: &[u8]) -> Vec<HintRecord> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if len > RECORD_BYTES_MAX || crc32c::crc32c(payload) != crc {
            break;
        }
        match postcard::from_bytes::<HintRecord>(payload) {
            Ok(record) => out.push(record),
            Err(_) => break,
        }
        at += 8 + len;
    }
    out
}

/// Hints waiting for their targets, as the [`handoff`] worker sees them.
pub trait HintQueue: Send + Sync + 'static {
    /// Targets that have hints waiting, with the bytes waiting for each.
    fn pending(&self) -> Vec<(NodeId, u64)>;

    /// Hand every hint for `target` to `deliver`, oldest first, stopping
    /// at the first it refuses; forget them only when all were delivered.
    /// Returns how many were delivered.
    fn replay<F, Fut>(
        &self,
        target: &NodeId,
        deliver: F,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send
    where
        F: FnMut(HintRecord) -> Fut + Send,
        Fut: Future<Output = bool> + Send;
}

impl HintQueue for HintStore {
    fn pending(&self) -> Vec<(NodeId, u64)> {
        HintStore::pending(self)
    }

    fn replay<F, Fut>(
        &self,
        target: &NodeId,
        deliver: F,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send
    where
        F: FnMut(HintRecord) -> Fut + Send,
        Fut: Future<Output = bool> + Send,
    {
        HintStore::replay(self, target, deliver)
    }
}

/// The hint-replay worker: every second, hand the hints of each target the
/// detector believes alive to it, until `stop` fires.
pub async fn handoff<Q: HintQueue, T: Transport>(
    hints: Arc<Q>,
    transport: Arc<T>,
    view: watch::Receiver<Arc<ClusterView>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let alive = view.borrow().alive.clone();
        for (target, _) in hints.pending() {
            if !alive.contains(&target) {
                continue;
            }
            let transport = transport.clone();
            let result = hints
                .replay(&target, |record| {
                    let (transport, target) = (transport.clone(), target.clone());
                    async move {
                        let request = PeerRequest::Apply {
                            keyspace: record.keyspace,
                            key: record.key,
                            versions: record.versions,
                            hint_for: None,
                        };
                        matches!(
                            transport
                                .call(&target, request, Duration::from_secs(5))
                                .await,
                            Ok(PeerResponse::Applied)
                        )
                    }
                })
                .await;
            match result {
                Ok(n) if n > 0 => tracing::info!(%target, delivered = n, "hints handed off"),
                Ok(_) => {}
                Err(e) => tracing::warn!(%target, error = %e, "hint replay failed"),
            }
        }
    }
}

impl HintSink for Arc<HintStore> {
    async fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        let record = HintRecord {
            created_ms: now_ms(),
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            versions,
        };
        let (store, target) = (self.clone(), target.clone());
        tokio::task::spawn_blocking(move || store.add_blocking(&target, &record))
            .await
            .map_err(|e| StoreError::Failed {
                reason: format!("hint task failed: {e}"),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot};

    fn record(i: u8, created_ms: u64) -> HintRecord {
        let clock = Clock::from_parts(
            [],
            [Dot {
                actor: Actor(1),
                counter: u64::from(i) + 1,
            }],
        );
        HintRecord {
            created_ms,
            keyspace: "carts".into(),
            key: vec![i],
            versions: vec![Version::value(clock, vec![i; 10], 1, "dc1".into())],
        }
    }

    #[tokio::test]
    async fn hints_survive_reopen_replay_in_order_and_are_deleted_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let target = NodeId("n2".into());
        {
            let store = HintStore::open(dir.path(), HintConfig::default()).unwrap();
            for i in 0..5 {
                store.add_blocking(&target, &record(i, now_ms())).unwrap();
            }
        }
        let store = HintStore::open(dir.path(), HintConfig::default()).unwrap();
        store.discover([target.clone(), NodeId("n3".into())]);
        assert_eq!(store.pending().len(), 1);
        // The target fails midway: nothing is deleted.
        let mut seen = Vec::new();
        let n = store.replay(&target, |r| {
            seen.push(r.key[0]);
            async move { r.key[0] < 2 }
        });
        assert_eq!(n.await.unwrap(), 2);
        assert_eq!(store.read(&target).unwrap().len(), 5);
        let delivered = store.replay(&target, |_| async { true }).await.unwrap();
        assert_eq!(delivered, 5);
        assert!(store.read(&target).unwrap().is_empty());
        assert!(store.pending().is_empty());
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn torn_tails_are_ignored_expired_hints_dropped_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let target = NodeId("n/../2".into());
        let config = HintConfig {
            window: Duration::from_secs(60),
            bytes_per_target_max: 400,
        };
        let store = HintStore::open(dir.path(), config).unwrap();
        store.add_blocking(&target, &record(0, 1)).unwrap(); // long expired
        store.add_blocking(&target, &record(1, now_ms())).unwrap();
        let mut refused = 0;
        for i in 2..20 {
            if store.add_blocking(&target, &record(i, now_ms())).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0 && store.stats().refused.load(Ordering::Relaxed) == refused);
        let kept = store.read(&target).unwrap().len();
        // A torn tail: half a record appended.
        let path = store.path(&target);
        assert!(
            path.starts_with(dir.path()),
            "node ids cannot escape the hint directory"
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        assert_eq!(store.read(&target).unwrap().len(), kept);
        let delivered = store.replay(&target, |_| async { true }).await.unwrap();
        assert_eq!(delivered, kept - 1);
        assert_eq!(store.stats().expired.load(Ordering::Relaxed), 1);
    }
}
