//! The replica side of a node: its copy of the keys it holds. Every path
//! that brings versions to a replica (coordinated writes, peer applies,
//! hint replay, read repair, Merkle repair, the bridge) absorbs them here,
//! and here alone a replica merges siblings with the keyspace's resolver.
//!
//! A merge runs user code, so it never runs on the async runtime's threads
//! nor under a key's lock: an apply absorbs under the lock (checking the
//! sibling bound over the absorbed set) and hands back the siblings it
//! left ([`MergeDue`]); they are merged on the node's [`MergePool`] once
//! the lock is released, and the merged version (its clock the least upper
//! bound of the merged siblings) is absorbed under the lock again, unless
//! the set has moved on so that it would add a sibling (a later apply
//! merges again). The merged version is a version like any other, and
//! absorbing is a join, so a merge landing late, or twice, or not at all
//! leaves every replica able to converge.
//!
//! What it is not: the coordinator. It never talks to another node, picks
//! targets, or issues dots; the coordinator does that, over a replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tokio::sync::{Mutex, MutexGuard};

use crate::bridge::Entries;
use crate::limit::LimitError;
use crate::merge::pool::{MergeConfig, MergePool};
use crate::merge::tally::ConflictTally;
use crate::merge::{FailureClass, MergeFailure, MergeHook};
use crate::model::{Absorbed, Version, VersionSet, key_hash};
use crate::repair::server::Absorb;
use crate::store::{LocalStore, ReadMark, Settle, StoreError};
use crate::system_keyspace;
use crate::wall_clock::now_ms;

/// Key locks: writes to one key serialise their read-issue-apply step,
/// and concurrent deliveries to one key merge one after another.
const KEY_LOCK_STRIPES: usize = 1024;

/// A node's replica: its store, the merge hook, and the key locks.
pub struct Replica<S> {
    store: S,
    merges: MergePool,
    keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    key_locks: Vec<Mutex<()>>,
    system_applies: Arc<AtomicU64>,
    bounds: ReplicaBounds,
    /// Where versions this replica made by collapsing two coordinations
    /// of one write go, to be spread like writes ([`Replica::on_collapse`]).
    collapsed: std::sync::OnceLock<tokio::sync::mpsc::Sender<Collapsed>>,
}

/// A version a replica made by collapsing two coordinations of one write
/// ([`VersionSet::absorb_noting_collapse`]): no other replica was sent it,
/// and one where a later write had already replaced one of the copies
/// cannot make it, so it must travel like a write.
#[derive(Debug, Clone)]
pub struct Collapsed {
    /// Its keyspace.
    pub keyspace: String,
    /// Its key.
    pub key: Vec<u8>,
    /// The collapsed version.
    pub version: Version,
}

/// What a replica refuses to absorb.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaBounds {
    /// Most siblings a key may hold: an apply that would leave more (after
    /// the keyspace's resolver, if any, had its go) is refused, and so is
    /// a delivery carrying more versions of one key than that.
    pub siblings_max: usize,
    /// How far in the future, by this node's clock, a received version
    /// may be stamped.
    pub clock_skew_max_ms: u64,
}

/// Siblings an apply left for the keyspace's resolver: hand them to
/// [`Replica::merge_due`] once the key's lock is released.
#[must_use = "merge the siblings once the key's lock is released (Replica::merge_due)"]
#[derive(Debug)]
pub struct MergeDue {
    keyspace: String,
    key: Vec<u8>,
    siblings: VersionSet,
}

/// A key's lock, held: reads and applies of that key by the holder.
pub struct LockedKey<'a, S> {
    replica: &'a Replica<S>,
    key: &'a [u8],
    _guard: MutexGuard<'a, ()>,
}

impl<S: LocalStore> Replica<S> {
    /// A replica over `store`, merging with `merge` (or the keyspace's
    /// configured resolver, when the hook does not know the keyspace) on
    /// a [`MergePool`] of `merging`, within `bounds`.
    pub fn new(
        store: S,
        merge: Arc<dyn MergeHook>,
        merging: MergeConfig,
        keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
        bounds: ReplicaBounds,
    ) -> Self {
        Replica {
            store,
            merges: MergePool::new(merge, merging),
            keyspaces,
            key_locks: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            system_applies: Arc::default(),
            bounds,
            collapsed: std::sync::OnceLock::new(),
        }
    }

    /// Send the versions this replica makes by collapsing two
    /// coordinations of one write to `spread` (the coordinator replicates
    /// them). Without it, or when it is full, they reach the others by
    /// repair.
    pub fn on_collapse(&self, spread: tokio::sync::mpsc::Sender<Collapsed>) {
        let _ = self.collapsed.set(spread);
    }

    fn note_collapsed(&self, keyspace: &str, key: &[u8], made: Vec<Version>) {
        let Some(spread) = self.collapsed.get() else {
            return;
        };
        for version in made {
            let collapsed = Collapsed {
                keyspace: keyspace.to_owned(),
                key: key.to_vec(),
                version,
            };
            if spread.try_send(collapsed).is_err() {
                tracing::debug!("collapsed version not spread (queue full): repair carries it");
            }
        }
    }

    /// Check a delivery before any of it is absorbed: no key may carry
    /// more versions than a set may hold (absorbing is quadratic in them),
    /// and no version may be stamped further ahead of this node's clock
    /// than the bound (it would win last-writer-wins against every
    /// concurrent write until the clocks caught up).
    fn check_delivery<'a>(
        &self,
        per_key: impl IntoIterator<Item = &'a [Version]>,
    ) -> Result<(), StoreError> {
        let max = self.bounds.siblings_max;
        let mut latest = 0;
        for versions in per_key {
            if versions.len() > max {
                return Err(StoreError::Limit(LimitError::TooManySiblings {
                    count: versions.len(),
                    max,
                }));
            }
            latest = versions
                .iter()
                .map(|v| v.timestamp_ms)
                .fold(latest, u64::max);
        }
        let now = now_ms();
        let skew = self.bounds.clock_skew_max_ms;
        if latest > now.saturating_add(skew) {
            return Err(StoreError::Limit(LimitError::TimestampAhead {
                ahead_ms: latest - now,
                max_ms: skew,
            }));
        }
        Ok(())
    }

    /// The store under this replica.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The merge hook.
    pub fn merge_hook(&self) -> &Arc<dyn MergeHook> {
        self.merges.hook()
    }

    /// The pool this replica's merges run on.
    pub fn merge_pool(&self) -> &MergePool {
        &self.merges
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
        self.merges.hook().bound(keyspace).unwrap_or_else(|| {
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

    /// Absorb versions into this replica's copy of the key under the
    /// key's lock, then let the keyspace's resolver merge any siblings,
    /// on the merge pool with the lock released ([`Self::merge_due`]). A
    /// failed or deferred merge keeps the siblings (and is counted). The
    /// delivery is refused whole when it breaks a bound
    /// ([`ReplicaBounds`]).
    pub async fn apply(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.check_delivery([versions.as_slice()])?;
        // Kept for a second try when the keyspace merges (deliveries are
        // small: one version, or a few concurrent ones).
        let again = self.has_resolver(keyspace).then(|| versions.clone());
        // The key's lock is released at the end of this statement, before
        // the write is settled.
        let first = self.lock(key).await.apply(keyspace, versions).await;
        let (due, settle) = match (first, again) {
            (Err(StoreError::Limit(LimitError::TooManySiblings { .. })), Some(versions)) => {
                self.apply_merged_first(keyspace, key, versions).await?
            }
            (first, _) => first?,
        };
        settle.settle().await?;
        self.merge_due(due).await;
        Ok(())
    }

    /// A delivery that would leave the key past its sibling bound, in a
    /// keyspace that merges: merge what the key would hold on the merge
    /// pool (no lock held), then apply the delivery together with that
    /// merge, which dominates every sibling it replaced. A failed or
    /// deferred merge leaves the bound to refuse it, as before.
    async fn apply_merged_first(
        &self,
        keyspace: &str,
        key: &[u8],
        mut versions: Vec<Version>,
    ) -> Result<(Option<MergeDue>, Settle), StoreError> {
        let mut would = self.read(keyspace, key).await?;
        for v in &versions {
            would.absorb(v.clone());
        }
        match self.merges.merge(keyspace, key, &would).await {
            Ok(Some(merged)) => versions.push(merged),
            Ok(None) => {}
            Err(failure) => log_failure(&failure),
        }
        self.lock(key).await.apply(keyspace, versions).await
    }

    /// Merge the siblings the key holds now, as [`Self::merge_due`] does
    /// (a store error reading them is logged: they stay).
    pub async fn merge_held(&self, keyspace: &str, key: &[u8]) {
        match self.read(keyspace, key).await {
            Ok(siblings) if siblings.len() > 1 => {
                self.merge_due(Some(MergeDue {
                    keyspace: keyspace.to_owned(),
                    key: key.to_vec(),
                    siblings,
                }))
                .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading a key's siblings to merge failed"),
        }
    }

    /// Merge the siblings an apply left, on the merge pool (no lock held),
    /// then absorb the merged version under the key's lock: unless the set
    /// moved on meanwhile so that it would add a sibling (the apply that
    /// moved it merges again), or the merge failed or was deferred (the
    /// siblings are kept; logged and counted). Errors of the store are
    /// logged: the siblings stay, which is what a failed merge leaves.
    pub async fn merge_due(&self, due: Option<MergeDue>) {
        let Some(MergeDue {
            keyspace,
            key,
            siblings,
        }) = due
        else {
            return;
        };
        let merged = match self.merges.merge(&keyspace, &key, &siblings).await {
            Ok(Some(merged)) => merged,
            Ok(None) => return,
            Err(failure) => {
                log_failure(&failure);
                if matches!(
                    failure.class,
                    FailureClass::BudgetExhausted | FailureClass::Unavailable
                ) {
                    // Not the resolver's fault: merged again once the
                    // keyspace has budget (`retry_deferred`).
                    self.merges.defer(&keyspace, &key);
                }
                return;
            }
        };
        let _locked = self.lock(&key).await;
        let result = async {
            let mut current = self.store.get(&keyspace, &key).await?;
            let before = current.len();
            if current.absorb(merged.clone()) == Absorbed::Changed && current.len() <= before {
                self.store.apply(&keyspace, &key, vec![merged]).await?;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(error) = result.await {
            tracing::warn!(keyspace, %error, "storing a merged version failed; siblings kept");
        }
    }

    /// Merge again, up to `max` at a time, the keys whose merge was
    /// deferred (or refused for a full queue) and whose keyspace has budget
    /// now; returns how many were tried. The node's `merge-retry` worker
    /// calls it.
    pub async fn retry_deferred(&self, max: usize) -> usize {
        let ready = self.merges.take_ready(max);
        let tried = ready.len();
        for (keyspace, key) in ready {
            let siblings = match self.store.get(&keyspace, &key).await {
                Ok(set) => set,
                Err(error) => {
                    tracing::warn!(keyspace, %error, "reading a key to merge failed");
                    continue;
                }
            };
            if siblings.len() > 1 && self.has_resolver(&keyspace) {
                self.merge_due(Some(MergeDue {
                    keyspace,
                    key,
                    siblings,
                }))
                .await;
            }
        }
        tried
    }

    /// `set` merged by the keyspace's resolver on the merge pool, when it
    /// has siblings and the keyspace merges; as it was otherwise. A failed
    /// or deferred merge is logged and counted, and returned beside the
    /// unmerged set, so that the reader can say so. For readers: nothing
    /// is stored.
    pub async fn merged(
        &self,
        keyspace: &str,
        key: &[u8],
        mut set: VersionSet,
    ) -> (VersionSet, Option<MergeFailure>) {
        if set.len() < 2 || !self.has_resolver(keyspace) {
            return (set, None);
        }
        match self.merges.merge(keyspace, key, &set).await {
            Ok(Some(merged)) => {
                set.absorb(merged);
                (set, None)
            }
            Ok(None) => (set, None),
            Err(failure) => {
                log_failure(&failure);
                (set, Some(failure))
            }
        }
    }

    /// Absorb many keys' versions: one engine batch, or key by key (each
    /// merged) when the keyspace has a resolver. Without one, each key is
    /// read first: the sibling bound holds over its whole set (memtables
    /// and tables), and collapsed coordinations of a write are noted for
    /// spreading. The read is unlocked, so a concurrent write can slip past
    /// the bound by its own siblings; the engine still counts a batch's
    /// versions of one key together.
    pub async fn apply_many(&self, keyspace: &str, entries: Entries) -> Result<(), StoreError> {
        self.check_delivery(entries.iter().map(|(_, versions)| versions.as_slice()))?;
        if self.has_resolver(keyspace) {
            for (key, versions) in entries {
                self.apply(keyspace, &key, versions).await?;
            }
        } else {
            // Each key as the batch would leave it, whole (memtables and
            // tables): the sibling bound holds across them, and a version
            // collapsed with another coordination of its write is noted.
            let max = self.bounds.siblings_max;
            let mut made = Vec::new();
            let mut created = Vec::new();
            for (key, versions) in &entries {
                let mut set = self.store.get(keyspace, key).await?;
                let before = set.len();
                for v in versions {
                    if let Some(version) = set.absorb_noting_collapse(v.clone()) {
                        made.push((key.clone(), version));
                    }
                }
                if set.len() > max && set.len() > before {
                    return Err(StoreError::Limit(LimitError::TooManySiblings {
                        count: set.len(),
                        max,
                    }));
                }
                created.extend(ConflictTally::new_siblings(before, &set, versions));
            }
            self.store.apply_many(keyspace, entries).await?;
            self.applied(keyspace);
            self.merges.tally().siblings_created(keyspace, created);
            for (key, version) in made {
                self.note_collapsed(keyspace, &key, vec![version]);
            }
        }
        Ok(())
    }

    /// This replica's copy of a key.
    pub async fn read(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        self.store.get(keyspace, key).await
    }
}

impl<S: LocalStore> LockedKey<'_, S> {
    /// The locked key's set, and where the store found it (for
    /// [`Self::apply_over`]).
    pub async fn read(&self, keyspace: &str) -> Result<(VersionSet, ReadMark), StoreError> {
        self.replica.store.get_marked(keyspace, self.key).await
    }

    /// [`Replica::apply`]'s part under this lock: the key's set with
    /// `versions` absorbed must hold at most `siblings_max` siblings (or
    /// no more than it held before), whatever the resolver's state: bound,
    /// missing, failing, deferred or detached. Otherwise nothing is
    /// applied (`TooManySiblings`). Siblings a merge has not replaced yet
    /// count. Returns the siblings to merge, when the keyspace merges,
    /// and the write's [`Settle`]: once this lock is dropped, settle it
    /// (before acknowledging the write) and pass the siblings to
    /// [`Replica::merge_due`].
    pub async fn apply(
        &self,
        keyspace: &str,
        versions: Vec<Version>,
    ) -> Result<(Option<MergeDue>, Settle), StoreError> {
        let (set, mark) = self.read(keyspace).await?;
        self.apply_over(keyspace, set, mark, versions).await
    }

    /// [`Self::apply`] for a caller that read the key's set under this
    /// lock already (the coordinator issuing a write): no second read.
    /// The store is handed the set with `versions` absorbed, which it may
    /// keep as it is ([`LocalStore::apply_unsettled_over`]).
    pub async fn apply_over(
        &self,
        keyspace: &str,
        mut set: VersionSet,
        mark: ReadMark,
        versions: Vec<Version>,
    ) -> Result<(Option<MergeDue>, Settle), StoreError> {
        let replica = self.replica;
        let before = set.len();
        let mut made = Vec::new();
        for v in &versions {
            made.extend(set.absorb_noting_collapse(v.clone()));
        }
        let max = replica.bounds.siblings_max;
        if set.len() > max && set.len() > before {
            return Err(StoreError::Limit(LimitError::TooManySiblings {
                count: set.len(),
                max,
            }));
        }
        let created = ConflictTally::new_siblings(before, &set, &versions);
        let settle = replica
            .store
            .apply_unsettled_over(keyspace, self.key, versions, mark, &set)
            .await?;
        replica.applied(keyspace);
        replica.merges.tally().siblings_created(keyspace, created);
        replica.note_collapsed(keyspace, self.key, made);
        let due = (set.len() > 1 && replica.has_resolver(keyspace)).then(|| MergeDue {
            keyspace: keyspace.to_owned(),
            key: self.key.to_vec(),
            siblings: set,
        });
        Ok((due, settle))
    }
}

fn log_failure(failure: &MergeFailure) {
    if matches!(
        failure.class,
        FailureClass::BudgetExhausted | FailureClass::Paused
    ) {
        // Counted by the pool; at warn it would log every deferred merge
        // (or every merge of a paused binding).
        tracing::debug!(%failure, "merge deferred; siblings kept");
    } else {
        tracing::warn!(%failure, "merge failed; siblings kept");
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::merge::FailureClass;
    use crate::model::{Actor, Clock, Dot, KeyspaceConfig, Payload};
    use crate::store::MemStore;

    /// Sleeps `cost` in every merge (a resolver burning its fuel), then
    /// concatenates the live values.
    struct Slow(Duration);

    impl MergeHook for Slow {
        fn merge(
            &self,
            _: &str,
            _: &[u8],
            set: &VersionSet,
        ) -> Result<Option<Version>, MergeFailure> {
            std::thread::sleep(self.0);
            let bytes = set.live().flat_map(|v| v.value_bytes().unwrap()).copied();
            Ok(set.merged(Payload::Value(bytes.collect()), [1; 32]))
        }
    }

    fn replica(cost: Duration, budget: Duration) -> Arc<Replica<MemStore>> {
        let keyspaces = BTreeMap::from([(
            "ks".to_owned(),
            KeyspaceConfig {
                replication: BTreeMap::from([("dc1".into(), 1)]),
                resolver: Some(("slow".into(), 1)),
                ..KeyspaceConfig::default()
            },
        )]);
        Arc::new(Replica::new(
            MemStore::new(),
            Arc::new(Slow(cost)),
            MergeConfig {
                keyspace_budget: budget,
                ..MergeConfig::default()
            },
            Arc::new(RwLock::new(crate::model::keyspace_map(keyspaces))),
            ReplicaBounds {
                siblings_max: 16,
                clock_skew_max_ms: 60_000,
            },
        ))
    }

    /// A version of actor `a`'s first write, covering `covers` (actor,
    /// counter) pairs.
    fn version(a: u64, covers: &[(u64, u64)], value: &[u8]) -> Version {
        let clock = Clock::from_parts(
            covers.iter().map(|&(actor, n)| (Actor(actor), n)),
            [Dot {
                actor: Actor(a),
                counter: 1,
            }],
        );
        Version::value(clock, value.to_vec(), now_ms(), "dc1".into())
    }

    #[tokio::test]
    async fn a_merge_holds_neither_the_key_lock_nor_a_runtime_thread() {
        // One runtime thread: a merge run on it would stop everything.
        let replica = replica(Duration::from_millis(500), Duration::from_secs(10));
        let apply = {
            let replica = replica.clone();
            tokio::spawn(async move {
                let versions = vec![version(1, &[], b"a"), version(2, &[], b"b")];
                replica.apply("ks", b"k", versions).await
            })
        };
        // While the merge runs (500 ms), timers fire on time and the
        // key's lock is free.
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(replica.lock(b"k").await);
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(350),
            "the runtime or the key's lock was held: 100 ms took {waited:?}"
        );
        apply.await.unwrap().unwrap();
        // Once the apply returns, the merged version is stored.
        let set = replica.read("ks", b"k").await.unwrap();
        assert_eq!(set.len(), 1, "{set:?}");
        let lub = VersionSet::from_versions([version(1, &[], b"a"), version(2, &[], b"b")]).lub();
        assert_eq!(set.versions()[0].clock, lub);
        assert_eq!(set.versions()[0].value_bytes().map(<[u8]>::len), Some(2));
        assert_eq!(replica.merge_pool().stats().run(), 1);
    }

    #[tokio::test]
    async fn past_its_budget_a_keyspace_keeps_its_siblings_and_readers_see_them() {
        let replica = replica(Duration::from_millis(80), Duration::from_millis(50));
        replica
            .apply(
                "ks",
                b"k1",
                vec![version(1, &[], b"a"), version(2, &[], b"b")],
            )
            .await
            .unwrap();
        assert_eq!(replica.read("ks", b"k1").await.unwrap().len(), 1);
        // The first merge overdrew the budget: the next is deferred.
        replica
            .apply(
                "ks",
                b"k2",
                vec![version(1, &[], b"a"), version(2, &[], b"b")],
            )
            .await
            .unwrap();
        let set = replica.read("ks", b"k2").await.unwrap();
        assert_eq!(set.len(), 2, "siblings kept");
        assert_eq!(replica.merge_pool().stats().deferred(), 1);
        assert_eq!(replica.merged("ks", b"k2", set.clone()).await.0, set);
        assert_eq!(replica.merge_pool().stats().deferred(), 2);
        // Once the debt is paid (about 30 ms at 50 ms/s, more on a busy
        // machine, where the 80 ms merge takes longer), a read merges again.
        let started = Instant::now();
        let merged = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let merged = replica.merged("ks", b"k2", set.clone()).await.0;
            if merged.len() == 1 || started.elapsed() > Duration::from_secs(20) {
                break merged;
            }
        };
        assert_eq!(merged.len(), 1);
        let err = replica
            .merges
            .merge("ks", b"k2", &replica.read("ks", b"k2").await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::BudgetExhausted);
    }

    #[tokio::test]
    async fn a_delivery_past_the_bound_is_merged_first_when_the_keyspace_merges() {
        let mut merging = replica(Duration::ZERO, Duration::from_secs(10));
        Arc::get_mut(&mut merging).unwrap().bounds.siblings_max = 3;
        merging
            .apply("ks", b"k", vec![version(1, &[], b"a")])
            .await
            .unwrap();
        // Three more concurrent versions: four siblings before a merge.
        let delivery = vec![
            version(2, &[], b"b"),
            version(3, &[], b"c"),
            version(4, &[], b"d"),
        ];
        merging.apply("ks", b"k", delivery.clone()).await.unwrap();
        let set = merging.read("ks", b"k").await.unwrap();
        assert_eq!(set.len(), 1, "{set:?}");
        let mut all = VersionSet::from_versions(delivery);
        all.absorb(version(1, &[], b"a"));
        assert_eq!(set.versions()[0].clock, all.lub());
        // Where merges are deferred, the bound refuses it: one merge of
        // another key overdraws the budget, then nothing merges.
        let mut throttled = replica(Duration::from_millis(50), Duration::from_millis(10));
        Arc::get_mut(&mut throttled).unwrap().bounds.siblings_max = 3;
        throttled
            .apply(
                "ks",
                b"x",
                vec![version(1, &[], b"a"), version(2, &[], b"b")],
            )
            .await
            .unwrap();
        throttled
            .apply(
                "ks",
                b"k",
                vec![version(1, &[], b"a"), version(2, &[], b"b")],
            )
            .await
            .unwrap();
        let err = throttled
            .apply(
                "ks",
                b"k",
                vec![version(3, &[], b"c"), version(4, &[], b"d")],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Limit(LimitError::TooManySiblings { count: 4, max: 3 })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_deferred_merge_is_retried_once_the_budget_refills() {
        let replica = replica(Duration::from_millis(50), Duration::from_millis(10));
        // One merge overdraws the budget; the next key's merge is deferred.
        for key in [&b"k1"[..], b"k2"] {
            replica
                .apply(
                    "ks",
                    key,
                    vec![version(1, &[], b"a"), version(2, &[], b"b")],
                )
                .await
                .unwrap();
        }
        assert_eq!(replica.read("ks", b"k2").await.unwrap().len(), 2);
        assert_eq!(replica.merge_pool().deferred_keys(), 1);
        // Nothing writes k2 again: the retry merges it once the budget
        // has refilled (about 4 s at 10 ms per second, more when busy).
        let started = Instant::now();
        while replica.read("ks", b"k2").await.unwrap().len() > 1 {
            assert!(started.elapsed() < Duration::from_secs(30), "never merged");
            tokio::time::sleep(Duration::from_millis(100)).await;
            replica.retry_deferred(64).await;
        }
        assert_eq!(replica.merge_pool().deferred_keys(), 0);
    }

    #[tokio::test]
    async fn a_merge_that_would_add_a_sibling_is_not_stored() {
        let replica = replica(Duration::ZERO, Duration::from_secs(10));
        let (a, b) = (version(1, &[], b"a"), version(2, &[], b"b"));
        let (due, settle) = replica
            .lock(b"k")
            .await
            .apply("ks", vec![a, b])
            .await
            .unwrap();
        settle.settle().await.unwrap();
        assert!(due.is_some(), "two siblings are due for a merge");
        // Before the merge lands, each sibling is superseded on its own.
        let locked = replica.lock(b"k").await;
        let later = vec![version(3, &[(1, 1)], b"c"), version(4, &[(2, 1)], b"d")];
        let _not_merged_here = locked.apply("ks", later).await.unwrap();
        drop(locked);
        let before = replica.read("ks", b"k").await.unwrap();
        assert_eq!(before.len(), 2);
        // The merge of {a, b} would sit beside {c, d}: not stored.
        replica.merge_due(due).await;
        assert_eq!(replica.read("ks", b"k").await.unwrap(), before);
        assert_eq!(replica.merge_pool().stats().run(), 1);
    }

    #[tokio::test]
    async fn a_batch_delivery_keeps_the_sibling_bound_over_what_the_key_already_holds() {
        let keyspaces = BTreeMap::from([(
            "plain".to_owned(),
            KeyspaceConfig {
                replication: BTreeMap::from([("dc1".into(), 1)]),
                ..KeyspaceConfig::default()
            },
        )]);
        let replica = Replica::new(
            MemStore::new(),
            Arc::new(crate::merge::NoMerge),
            MergeConfig::default(),
            Arc::new(RwLock::new(crate::model::keyspace_map(keyspaces))),
            ReplicaBounds {
                siblings_max: 4,
                clock_skew_max_ms: 60_000,
            },
        );
        for a in 1..=4 {
            replica
                .apply("plain", b"k", vec![version(a, &[], b"v")])
                .await
                .unwrap();
        }
        // One more concurrent version in a batch (the bridge's path) would
        // make five: refused, typed, and nothing of the batch stored.
        let batch = vec![
            (b"j".to_vec(), vec![version(9, &[], b"other key")]),
            (b"k".to_vec(), vec![version(5, &[], b"v")]),
        ];
        match replica.apply_many("plain", batch).await {
            Err(StoreError::Limit(LimitError::TooManySiblings { count: 5, max: 4 })) => {}
            other => panic!("a fifth sibling was taken: {other:?}"),
        }
        assert_eq!(replica.read("plain", b"k").await.unwrap().len(), 4);
        assert!(replica.read("plain", b"j").await.unwrap().is_empty());
    }
}
