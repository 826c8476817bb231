//! [`RegistryKeyspace`]: the [`RegistryRecords`] a node runs its registry on,
//! over core's `_registry` system keyspace
//! ([`SystemKeyspace`]).
//!
//! - `get` and `scan` read the node's own replica (every node replicates
//!   every registry key), synchronously, from the storage engine. A key
//!   that holds siblings (two nodes wrote it concurrently) reads as the
//!   latest sibling by timestamp, then by content digest: the same choice
//!   on every replica that holds the same set. A tombstone read that way
//!   is an absent key.
//! - `put` (and `delete`, a tombstone) writes through the node's coordinator at the system write level
//!   (a local quorum of the node's datacenter; the bridge takes it to the
//!   others), superseding what the local replica holds of the key. It
//!   blocks until the level is reached, so it must run off the runtime's
//!   worker threads (the registry service runs registry operations in
//!   `spawn_blocking`).
//! - `generation` moves whenever a version reaches the node's system
//!   keyspace, by any path (a local write, a peer, the bridge, hints,
//!   repair), which is what lets the merge hook cache bindings.
//!
//! Until the node attaches it ([`RegistryKeyspace::attach`], before the
//! node serves anything), every call fails with a [`RecordsError`].

use std::sync::OnceLock;
use std::time::Duration;

use isthmus_core::model::VersionSet;
use isthmus_core::system_keyspace::{SystemKeyspace, latest};

use crate::registry::{Entry, RecordsError, RegistryRecords};

/// How long a registry write may take to reach its level.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// A [`RegistryRecords`] over a node's registry keyspace.
#[derive(Debug, Default)]
pub struct RegistryKeyspace {
    system: OnceLock<SystemKeyspace>,
}

/// The value a replica's set of a registry key reads as: the latest
/// version by `(timestamp, digest)`; `None` when absent or deleted.
pub fn resolve(set: &VersionSet) -> Option<Vec<u8>> {
    latest(set)?.value_bytes().map(<[u8]>::to_vec)
}

fn failed(e: impl std::fmt::Display) -> RecordsError {
    RecordsError {
        reason: e.to_string(),
    }
}

impl RegistryKeyspace {
    /// A store not yet attached to a node.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach the node's registry keyspace; `false` if one was attached
    /// already (the first stays).
    pub fn attach(&self, store: SystemKeyspace) -> bool {
        self.system.set(store).is_ok()
    }

    /// The node's registry keyspace, once attached.
    pub fn system(&self) -> Option<&SystemKeyspace> {
        self.system.get()
    }

    fn attached(&self) -> Result<&SystemKeyspace, RecordsError> {
        self.system.get().ok_or_else(|| RecordsError {
            reason: "the registry is not attached to a node".into(),
        })
    }
}

impl RegistryRecords for RegistryKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RecordsError> {
        let set = self.attached()?.get(key).map_err(failed)?;
        Ok(resolve(&set))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), RecordsError> {
        self.attached()?
            .write_blocking(key, value.to_vec(), WRITE_DEADLINE)
            .map_err(failed)
    }

    fn delete(&self, key: &[u8]) -> Result<(), RecordsError> {
        self.attached()?
            .delete_blocking(key, WRITE_DEADLINE)
            .map_err(failed)
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, RecordsError> {
        // Only the prefix's sets are kept: listing resolver records holds
        // no module.
        let mut entries: Vec<Entry> = self
            .attached()?
            .scan_prefix(prefix)
            .map_err(failed)?
            .into_iter()
            .filter_map(|(key, set)| Some((key, resolve(&set)?)))
            .collect();
        // The keyspace is stored by key hash; the trait promises key order.
        entries.sort();
        Ok(entries)
    }

    fn generation(&self) -> Option<u64> {
        self.system.get().map(SystemKeyspace::generation)
    }
}
