//! The replica side of a node: its copy of the keys it holds. Every path
//! that brings versions to a replica (coordinated writes, peer applies,
//! hint replay, read repair, Merkle repair, the bridge) absorbs them here,
//! and here alone a replica merges siblings with the keyspace's resolver.
//!
//! What it is not: the coordinator. It never talks to another node, picks
//! targets, or issues dots; the coordinator does that, over a replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::{Mutex, MutexGuard};

use crate::bridge::Entries;
use crate::limit::LimitError;
use crate::merge::{MergeHook, merge_into};
use crate::model::{Absorbed, KeyspaceConfig, Version, VersionSet, key_hash};
use crate::repair::server::Absorb;
use crate::store::{LocalStore, StoreError};
use crate::system_keyspace;
use crate::wall_clock::now_ms;

/// Key locks: writes to one key serialise their read-issue-apply step,
/// and concurrent deliveries to one key merge one after another.
const KEY_LOCK_STRIPES: usize = 1024;

/// A node's replica: its store, the merge hook, and the key locks.
pub struct Replica<S> {
    store: S,
    merge: Arc<dyn MergeHook>,
    keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
    key_locks: Vec<Mutex<()>>,
    system_applies: Arc<AtomicU64>,
    clock_skew_max_ms: u64,
}

/// A key's lock, held: reads and applies of that key by the holder.
pub struct LockedKey<'a, S> {
    replica: &'a Replica<S>,
    key: &'a [u8],
    _guard: MutexGuard<'a, ()>,
}

impl<S: LocalStore> Replica<S> {
    /// A replica over `store`, merging with `merge` (or the keyspace's
    /// configured resolver, when the hook does not know the keyspace),
    /// refusing versions stamped more than `clock_skew_max_ms` ahead of
    /// this node's clock.
    pub fn new(
        store: S,
        merge: Arc<dyn MergeHook>,
        keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
        clock_skew_max_ms: u64,
    ) -> Self {
        Replica {
            store,
            merge,
            keyspaces,
            key_locks: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            system_applies: Arc::default(),
            clock_skew_max_ms,
        }
    }

    /// Refuse versions stamped further ahead of this node's clock than
    /// the bound: they would win last-writer-wins against every
    /// concurrent write until the clocks caught up.
    fn check_clock<'a>(
        &self,
        versions: impl IntoIterator<Item = &'a Version>,
    ) -> Result<(), StoreError> {
        let latest = versions.into_iter().map(|v| v.timestamp_ms).max();
        let now = now_ms();
        match latest {
            Some(at) if at > now.saturating_add(self.clock_skew_max_ms) => {
                Err(StoreError::Limit(LimitError::TimestampAhead {
                    ahead_ms: at - now,
                    max_ms: self.clock_skew_max_ms,
                }))
            }
            _ => Ok(()),
        }
    }

    /// The store under this replica.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The merge hook.
    pub fn merge_hook(&self) -> &Arc<dyn MergeHook> {
        &self.merge
    }

    /// Counts the versions applied to this replica's system keyspaces
    /// (bumped after each apply), so readers of those keyspaces can cache
    /// what they decoded until it moves.
    pub fn system_applies(&self) -> &Arc<AtomicU64> {
        &self.system_applies
    }

    /// Whether siblings of `keyspace` are merged: the merge hook decides
    /// when it knows (run-time bindings), else the keyspace's configured
    /// resolver. System keyspaces never merge.
    pub fn has_resolver(&self, keyspace: &str) -> bool {
        if system_keyspace::is_system(keyspace) {
            return false;
        }
        self.merge.bound(keyspace).unwrap_or_else(|| {
            self.keyspaces
                .read()
                .get(keyspace)
                .is_some_and(|k| k.resolver.is_some())
        })
    }

    fn applied(&self, keyspace: &str) {
        if system_keyspace::is_system(keyspace) {
            self.system_applies.fetch_add(1, Ordering::Release);
        }
    }

    /// Take the key's lock (a stripe of [`KEY_LOCK_STRIPES`]).
    pub async fn lock<'a>(&'a self, key: &'a [u8]) -> LockedKey<'a, S> {
        let stripe = (key_hash(key) as usize) % KEY_LOCK_STRIPES;
        LockedKey {
            replica: self,
            key,
            _guard: self.key_locks[stripe].lock().await,
        }
    }

    /// Absorb versions into this replica's copy of the key, then let the
    /// keyspace's resolver merge any siblings. A failed merge keeps the
    /// siblings (and is counted by the hook). Holds the key's lock, so the
    /// last of concurrent deliveries to one key sees every sibling.
    /// Versions stamped too far ahead of this node's clock are refused
    /// (`LimitError::TimestampAhead`), the whole delivery with them.
    pub async fn apply(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.check_clock(&versions)?;
        self.lock(key).await.apply(keyspace, versions).await
    }

    /// Absorb many keys' versions: one engine batch, or key by key (each
    /// merged) when the keyspace has a resolver.
    pub async fn apply_many(&self, keyspace: &str, entries: Entries) -> Result<(), StoreError> {
        self.check_clock(entries.iter().flat_map(|(_, versions)| versions))?;
        if self.has_resolver(keyspace) {
            for (key, versions) in entries {
                self.apply(keyspace, &key, versions).await?;
            }
        } else {
            self.store.apply_many(keyspace, entries).await?;
            self.applied(keyspace);
        }
        Ok(())
    }

    /// This replica's copy of a key.
    pub async fn read(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        self.store.get(keyspace, key).await
    }
}

impl<S: LocalStore> LockedKey<'_, S> {
    /// The locked key's set.
    pub async fn read(&self, keyspace: &str) -> Result<VersionSet, StoreError> {
        self.replica.store.get(keyspace, self.key).await
    }

    /// [`Replica::apply`] under this lock.
    pub async fn apply(&self, keyspace: &str, versions: Vec<Version>) -> Result<(), StoreError> {
        let replica = self.replica;
        replica.store.apply(keyspace, self.key, versions).await?;
        replica.applied(keyspace);
        if replica.has_resolver(keyspace) {
            let mut set = replica.store.get(keyspace, self.key).await?;
            if set.len() > 1 {
                match merge_into(replica.merge.as_ref(), keyspace, self.key, &mut set) {
                    Ok(Absorbed::Changed) => {
                        replica
                            .store
                            .apply(keyspace, self.key, set.into_versions())
                            .await?;
                    }
                    Ok(Absorbed::Unchanged) => {}
                    Err(failure) => tracing::warn!(%failure, "merge failed; siblings kept"),
                }
            }
        }
        Ok(())
    }
}

/// Repair absorbs through [`Replica::apply`], the one path by which
/// versions reach a replica (it runs the keyspace's merge).
impl<S: LocalStore> Absorb for Replica<S> {
    fn absorb(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.apply(keyspace, key, versions)
    }
}
