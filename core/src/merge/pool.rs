//! [`MergePool`]: where a node runs its merges. A resolver is user code
//! that may burn its whole fuel budget on every call; run inline, it would
//! hold one of the async runtime's worker threads (on a small node, half of
//! them) and the key lock while it did. So merges run here instead:
//!
//! - on a bounded set of named threads (`isthmus-merge`), never on the
//!   runtime's workers, fed by a bounded queue (a full queue is
//!   [`FailureClass::Unavailable`]: the siblings are kept);
//! - a keyspace runs at most `threads - 1` merges at once (at least one),
//!   so with two threads or more one keyspace never holds them all;
//!   further merges of that keyspace wait their turn (asynchronously, on
//!   no thread);
//! - each keyspace has a merge-time budget, [`MergeConfig::keyspace_budget`]
//!   of merge time per second of wall-clock time: a token bucket that
//!   holds at most one second's worth, refills continuously, and is charged
//!   the wall-clock time each merge spent on its thread. A merge starts
//!   only while the bucket is not in debt; otherwise it is deferred with
//!   [`FailureClass::BudgetExhausted`]: the siblings are kept (and
//!   returned to readers) and merged once the budget has refilled (see
//!   the retries below). One merge may overdraw the bucket (it is bounded
//!   by the resolver's own deadline); the debt is paid off before the next
//!   starts, so a keyspace's long-run share holds.
//!
//! A merge an apply left that is deferred (or refused for a full queue) is
//! remembered ([`MergePool::defer`], at most [`DEFERRED_KEYS_MAX`] keys)
//! and retried once its keyspace has budget again
//! ([`MergePool::take_ready`], which the node's `merge-retry` worker
//! drains through the replica), so a key written last while its keyspace
//! was over budget still ends merged, as on every other replica.
//!
//! A resolver that burns its whole budget on every merge therefore slows
//! its own keyspace (its writes wait for merge slots, then its siblings
//! pile up to the sibling bound), not gossip, disk IO or other keyspaces.
//!
//! The threads start at the first merge and stop when the pool is dropped
//! (each finishes the merge it is running, which its resolver's deadline
//! bounds; nothing waits for them).
//!
//! What it is not: the merge itself ([`MergeHook`]), or where its result
//! goes ([`Replica`](crate::replica::Replica)).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::tally::ConflictTally;
use super::{FailureClass, MergeFailure, MergeHook};
use crate::model::{Version, VersionSet};

/// Default number of merge threads.
pub const THREADS_DEFAULT: usize = 2;
/// Default bound of merges waiting for a thread.
pub const QUEUE_MAX_DEFAULT: usize = 1024;
/// Default merge time a keyspace may use per second, in milliseconds.
pub const KEYSPACE_BUDGET_MS_PER_S_DEFAULT: u64 = 500;
/// Keys whose deferred merge the pool remembers for a retry; one more is
/// not remembered (counted), and merges at its next apply.
pub const DEFERRED_KEYS_MAX: usize = 65_536;

/// How a node runs its merges (the node config's `[merge]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeConfig {
    /// Threads merges run on.
    pub threads: usize,
    /// Merges that may wait for a thread; one more is refused
    /// ([`FailureClass::Unavailable`]).
    pub queue_max: usize,
    /// Merge time (wall-clock time on a merge thread) one keyspace may use
    /// per second; past it its merges are deferred
    /// ([`FailureClass::BudgetExhausted`]).
    pub keyspace_budget: Duration,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            threads: THREADS_DEFAULT,
            queue_max: QUEUE_MAX_DEFAULT,
            keyspace_budget: Duration::from_millis(KEYSPACE_BUDGET_MS_PER_S_DEFAULT),
        }
    }
}

impl MergeConfig {
    /// Merges one keyspace may run at once: all but one thread, at least
    /// one.
    pub fn keyspace_threads_max(&self) -> usize {
        self.threads.saturating_sub(1).max(1)
    }
}

/// What the pool counted.
#[derive(Debug, Default)]
pub struct MergePoolStats {
    run: AtomicU64,
    deferred: AtomicU64,
    queue_full: AtomicU64,
    run_ns: AtomicU64,
    retry_dropped: AtomicU64,
}

impl MergePoolStats {
    /// Merges that ran on a thread (whatever their outcome).
    pub fn run(&self) -> u64 {
        self.run.load(Ordering::Relaxed)
    }

    /// Merges deferred because their keyspace had used its budget.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
    }

    /// Merges refused because the queue was full.
    pub fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Deferred merges not remembered for a retry (too many keys waiting).
    pub fn retry_dropped(&self) -> u64 {
        self.retry_dropped.load(Ordering::Relaxed)
    }

    /// Total time merges spent on the threads.
    pub fn run_time(&self) -> Duration {
        Duration::from_nanos(self.run_ns.load(Ordering::Relaxed))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A keyspace's share of the pool: its merge slots and its budget.
struct KeyspaceShare {
    slots: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

/// A token bucket of merge time, in nanoseconds (negative: in debt).
struct Bucket {
    balance_ns: i128,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, budget: Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        let cap = budget.as_nanos() as i128;
        let earned = elapsed.as_nanos() as i128 * cap / 1_000_000_000;
        self.balance_ns = (self.balance_ns + earned).min(cap);
    }
}

impl KeyspaceShare {
    fn new(budget: Duration, slots: usize) -> Self {
        KeyspaceShare {
            slots: Arc::new(Semaphore::new(slots)),
            bucket: Mutex::new(Bucket {
                balance_ns: budget.as_nanos() as i128,
                at: Instant::now(),
            }),
        }
    }

    /// Whether the bucket is out of debt now.
    fn has_budget(&self, budget: Duration) -> bool {
        let mut bucket = self.bucket.lock();
        bucket.refill(budget, Instant::now());
        bucket.balance_ns > 0
    }

    fn charge(&self, budget: Duration, spent: Duration) {
        let mut bucket = self.bucket.lock();
        bucket.refill(budget, Instant::now());
        bucket.balance_ns -= spent.as_nanos() as i128;
    }
}

/// A node's merge threads, and each keyspace's share of them.
pub struct MergePool {
    hook: Arc<dyn MergeHook>,
    config: MergeConfig,
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
    shares: Mutex<HashMap<String, Arc<KeyspaceShare>>>,
    retries: Mutex<BTreeSet<(String, Vec<u8>)>>,
    stats: Arc<MergePoolStats>,
    tally: Arc<ConflictTally>,
}

impl std::fmt::Debug for MergePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergePool")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MergePool {
    /// A pool running `hook`'s merges within `config` (no thread starts
    /// before the first merge).
    pub fn new(hook: Arc<dyn MergeHook>, config: MergeConfig) -> Self {
        MergePool {
            hook,
            config,
            jobs: Mutex::new(None),
            shares: Mutex::default(),
            retries: Mutex::default(),
            stats: Arc::default(),
            tally: Arc::default(),
        }
    }

    /// The hook merges run.
    pub fn hook(&self) -> &Arc<dyn MergeHook> {
        &self.hook
    }

    /// The pool's bounds.
    pub fn config(&self) -> &MergeConfig {
        &self.config
    }

    /// What the pool counted.
    pub fn stats(&self) -> &MergePoolStats {
        &self.stats
    }

    /// The node's conflict counts: merges and failures by keyspace,
    /// resolver and class (counted here, for every merge the pool is
    /// asked for), and siblings created (counted by the replica).
    pub fn tally(&self) -> &ConflictTally {
        &self.tally
    }

    /// Remember `key` of `keyspace` for a retry of its merge (a deferred
    /// or refused one); `false` when too many keys wait already.
    pub fn defer(&self, keyspace: &str, key: &[u8]) -> bool {
        let mut retries = self.retries.lock();
        if retries.len() >= DEFERRED_KEYS_MAX {
            self.stats.retry_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        retries.insert((keyspace.to_owned(), key.to_vec()));
        true
    }

    /// Keys waiting for a retry.
    pub fn deferred_keys(&self) -> usize {
        self.retries.lock().len()
    }

    /// Up to `max` remembered keys whose keyspace has budget now, no
    /// longer remembered: the caller merges them (and defers them again if
    /// need be).
    pub fn take_ready(&self, max: usize) -> Vec<(String, Vec<u8>)> {
        let mut retries = self.retries.lock();
        let budget = self.config.keyspace_budget;
        let mut ready = Vec::new();
        let mut has_budget: HashMap<String, bool> = HashMap::new();
        for entry in retries.iter() {
            if ready.len() >= max {
                break;
            }
            let ok = *has_budget
                .entry(entry.0.clone())
                .or_insert_with(|| self.share(&entry.0).has_budget(budget));
            if ok {
                ready.push(entry.clone());
            }
        }
        for entry in &ready {
            retries.remove(entry);
        }
        ready
    }

    fn share(&self, keyspace: &str) -> Arc<KeyspaceShare> {
        let mut shares = self.shares.lock();
        if let Some(share) = shares.get(keyspace) {
            return share.clone();
        }
        let share = Arc::new(KeyspaceShare::new(
            self.config.keyspace_budget,
            self.config.keyspace_threads_max(),
        ));
        shares.insert(keyspace.to_owned(), share.clone());
        share
    }

    fn failure(keyspace: &str, class: FailureClass, detail: String) -> MergeFailure {
        MergeFailure {
            keyspace: keyspace.into(),
            resolver: None,
            resolver_name: None,
            class,
            detail,
        }
    }

    fn deferred(&self, keyspace: &str) -> MergeFailure {
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        Self::failure(
            keyspace,
            FailureClass::BudgetExhausted,
            format!(
                "keyspace {keyspace:?} used its merge budget of {} ms per second; the merge is deferred",
                self.config.keyspace_budget.as_millis()
            ),
        )
    }

    /// The sender of the job queue, starting the threads at first use.
    fn sender(&self) -> Result<mpsc::SyncSender<Job>, String> {
        let mut jobs = self.jobs.lock();
        if let Some(tx) = jobs.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(self.config.queue_max);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.config.threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("isthmus-merge-{i}"))
                .spawn(move || {
                    loop {
                        // One idle thread waits on the queue, the others on
                        // the lock; a closed queue stops them all.
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| format!("cannot start a merge thread: {e}"))?;
        }
        *jobs = Some(tx.clone());
        Ok(tx)
    }

    /// Merge `siblings` of `key` with the hook, on a merge thread, within
    /// the keyspace's share (see the module docs). `Ok(None)`: nothing to
    /// merge; `Err`: the siblings are to be kept. Counted in the
    /// [`tally`](Self::tally) either way.
    pub async fn merge(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure> {
        let result = self.merge_uncounted(keyspace, key, siblings).await;
        match &result {
            Ok(Some(merged)) => self.tally.merged(keyspace, merged),
            Ok(None) => {}
            Err(failure) => self
                .tally
                .failed(keyspace, failure.resolver.as_ref(), failure.class),
        }
        result
    }

    async fn merge_uncounted(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure> {
        if siblings.len() < 2 {
            return Ok(None);
        }
        let budget = self.config.keyspace_budget;
        let share = self.share(keyspace);
        if !share.has_budget(budget) {
            return Err(self.deferred(keyspace));
        }
        let permit: OwnedSemaphorePermit =
            share.slots.clone().acquire_owned().await.map_err(|_| {
                Self::failure(keyspace, FailureClass::Unavailable, "pool closed".into())
            })?;
        // The wait may have been long: check again.
        if !share.has_budget(budget) {
            return Err(self.deferred(keyspace));
        }
        let tx = self
            .sender()
            .map_err(|e| Self::failure(keyspace, FailureClass::Unavailable, e))?;
        let (done, result) = oneshot::channel();
        let job: Job = {
            let (hook, stats, share) = (self.hook.clone(), self.stats.clone(), share.clone());
            let tally = self.tally.clone();
            let (keyspace, key, siblings) = (keyspace.to_owned(), key.to_vec(), siblings.clone());
            Box::new(move || {
                // Held until the merge ends, even if the caller gave up.
                let _permit = permit;
                let started = Instant::now();
                let (merged, metered) = hook.merge_metered(&keyspace, &key, &siblings);
                let spent = started.elapsed();
                // A merge the resolver ran: it produced a version, or the
                // hook metered it (a failure to load or find the module
                // ran nothing).
                let ran = match &merged {
                    Ok(Some(version)) => version.resolver,
                    Ok(None) => None,
                    Err(failure) => failure.resolver.filter(|_| metered.fuel.is_some()),
                };
                if let Some(resolver) = ran {
                    tally.cost(&keyspace, &resolver, spent, &metered);
                }
                share.charge(budget, spent);
                stats.run.fetch_add(1, Ordering::Relaxed);
                stats.run_ns.fetch_add(
                    u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                let _ = done.send(merged);
            })
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(Self::failure(
                    keyspace,
                    FailureClass::Unavailable,
                    format!(
                        "{} merges are waiting for a thread already",
                        self.config.queue_max
                    ),
                ));
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(Self::failure(
                    keyspace,
                    FailureClass::Unavailable,
                    "the merge threads stopped".into(),
                ));
            }
        }
        result.await.map_err(|_| {
            Self::failure(
                keyspace,
                FailureClass::Unavailable,
                "the merge thread died".into(),
            )
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::NoMerge;
    use crate::model::{Actor, Clock, Dot, Payload};

    /// Sleeps `cost` on every merge (a stand-in for a resolver burning its
    /// fuel), then merges by concatenation; records the threads it ran on.
    struct Slow {
        cost: Duration,
        threads: Mutex<Vec<String>>,
    }

    impl MergeHook for Slow {
        fn merge(
            &self,
            _: &str,
            _: &[u8],
            set: &VersionSet,
        ) -> Result<Option<Version>, MergeFailure> {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            self.threads.lock().push(name);
            std::thread::sleep(self.cost);
            let bytes = set.live().flat_map(|v| v.value_bytes().unwrap()).copied();
            Ok(set.merged(Payload::Value(bytes.collect()), [1; 32]))
        }
    }

    fn siblings() -> VersionSet {
        let dot = |a| {
            Clock::from_parts(
                [],
                [Dot {
                    actor: Actor(a),
                    counter: 1,
                }],
            )
        };
        VersionSet::from_versions([
            Version::value(dot(1), b"a".to_vec(), 1, "dc1".into()),
            Version::value(dot(2), b"b".to_vec(), 2, "dc2".into()),
        ])
    }

    fn slow(cost: Duration) -> Arc<Slow> {
        Arc::new(Slow {
            cost,
            threads: Mutex::default(),
        })
    }

    #[tokio::test]
    async fn merges_run_on_the_merge_threads() {
        let hook = slow(Duration::ZERO);
        let pool = MergePool::new(hook.clone(), MergeConfig::default());
        let merged = pool.merge("ks", b"k", &siblings()).await.unwrap().unwrap();
        assert_eq!(merged.value_bytes(), Some(&b"ab"[..]));
        assert_eq!(merged.clock, siblings().lub());
        let threads = hook.threads.lock().clone();
        assert_eq!(threads.len(), 1);
        assert!(threads[0].starts_with("isthmus-merge-"), "{threads:?}");
        assert_eq!(pool.stats().run(), 1);
        // One version: nothing to merge, no thread.
        let one = VersionSet::from_versions([siblings().versions()[0].clone()]);
        assert_eq!(pool.merge("ks", b"k", &one).await, Ok(None));
        assert_eq!(pool.stats().run(), 1);
        let none = MergePool::new(Arc::new(NoMerge), MergeConfig::default());
        assert_eq!(none.merge("ks", b"k", &siblings()).await, Ok(None));
    }

    #[tokio::test]
    async fn a_keyspace_past_its_budget_is_deferred_and_others_are_not() {
        let hook = slow(Duration::from_millis(60));
        let config = MergeConfig {
            keyspace_budget: Duration::from_millis(50),
            ..MergeConfig::default()
        };
        let pool = MergePool::new(hook, config);
        // The first merge starts with a full bucket and overdraws it.
        assert!(pool.merge("hot", b"k", &siblings()).await.is_ok());
        let err = pool.merge("hot", b"k", &siblings()).await.unwrap_err();
        assert_eq!(err.class, FailureClass::BudgetExhausted, "{err}");
        assert_eq!(err.keyspace, "hot");
        assert_eq!(pool.stats().deferred(), 1);
        // Another keyspace has its own budget.
        assert!(pool.merge("cold", b"k", &siblings()).await.is_ok());
        // The debt (about 10 ms, more on a busy machine) is paid off at
        // 50 ms per second; then "hot" merges again.
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match pool.merge("hot", b"k", &siblings()).await {
                Ok(_) => break,
                Err(e) => assert_eq!(e.class, FailureClass::BudgetExhausted),
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never refilled"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_keyspace_never_holds_every_thread() {
        let hook = slow(Duration::from_millis(300));
        let config = MergeConfig {
            threads: 2,
            keyspace_budget: Duration::from_secs(10),
            ..MergeConfig::default()
        };
        let pool = Arc::new(MergePool::new(hook, config));
        // Two merges of "hot" at once: the second waits for the first's
        // slot, so a thread stays free for "cold".
        let hot: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.merge("hot", b"k", &siblings()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        assert!(pool.merge("cold", b"k", &siblings()).await.is_ok());
        let cold = started.elapsed();
        assert!(
            cold < Duration::from_millis(550),
            "cold waited {cold:?} behind hot"
        );
        for h in hot {
            assert!(h.await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_unavailable() {
        let hook = slow(Duration::from_millis(200));
        let config = MergeConfig {
            threads: 1,
            queue_max: 1,
            keyspace_budget: Duration::from_secs(10),
        };
        let pool = Arc::new(MergePool::new(hook, config));
        // One running (keyspace a), one queued (b), the third (c) refused.
        let mut running = Vec::new();
        for ks in ["a", "b"] {
            let pool = pool.clone();
            running.push(tokio::spawn(async move {
                pool.merge(ks, b"k", &siblings()).await
            }));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let err = pool.merge("c", b"k", &siblings()).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Unavailable, "{err}");
        assert_eq!(pool.stats().queue_full(), 1);
        for r in running {
            assert!(r.await.unwrap().is_ok());
        }
    }
}
