//! [`ChannelPool`]: one open channel per destination, dialled once however
//! many tasks want it at the same moment.
//!
//! Without it, every task that finds no open channel dials its own, and
//! all but one of those connections are thrown away. Under load that is a
//! storm: a burst of requests after a channel closes opens a burst of TCP
//! (and TLS) handshakes, each costing both sides CPU that the requests
//! needed. Here the first task dials and the others wait for its answer,
//! success or error; the next task after a failed dial tries again.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::error::ClientError;

/// A dial in progress, shared by every task waiting for it.
type Attempt<C> = Arc<OnceCell<Result<Arc<C>, ClientError>>>;

/// Open channels by destination, with at most one dial in flight per
/// destination.
pub struct ChannelPool<K, C> {
    open: Mutex<HashMap<K, Arc<C>>>,
    dialing: Mutex<HashMap<K, Attempt<C>>>,
    usable: fn(&C) -> bool,
}

impl<K, C> std::fmt::Debug for ChannelPool<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPool")
            .field("open", &self.open.lock().len())
            .field("dialing", &self.dialing.lock().len())
            .finish()
    }
}

impl<K: Clone + Eq + Hash, C> ChannelPool<K, C> {
    /// An empty pool; a channel for which `usable` is false is dialled
    /// again.
    pub fn new(usable: fn(&C) -> bool) -> Self {
        ChannelPool {
            open: Mutex::default(),
            dialing: Mutex::default(),
            usable,
        }
    }

    /// The open channel to `key`, if there is one.
    pub fn get(&self, key: &K) -> Option<Arc<C>> {
        self.open
            .lock()
            .get(key)
            .filter(|c| (self.usable)(c))
            .cloned()
    }

    /// The open channel to `key`, or the one `dial` makes. Tasks that
    /// arrive while a dial to `key` is in flight wait for it and share its
    /// outcome; only the task that runs the dial calls its `dial`. When
    /// that task is cancelled mid-dial, a waiting task dials instead.
    pub async fn get_or_dial<F, Fut>(&self, key: &K, dial: F) -> Result<Arc<C>, ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, ClientError>>,
    {
        if let Some(channel) = self.get(key) {
            return Ok(channel);
        }
        let attempt = self.dialing.lock().entry(key.clone()).or_default().clone();
        attempt
            .get_or_init(|| async {
                // A dial that finished just before this one was queued may
                // have left an open channel.
                let result = match self.get(key) {
                    Some(channel) => Ok(channel),
                    None => dial().await.map(Arc::new),
                };
                if let Ok(channel) = &result {
                    self.open.lock().insert(key.clone(), channel.clone());
                }
                // Tasks arriving from now on find the channel open, or,
                // after a failure, dial afresh; those already waiting get
                // this result.
                let mut dialing = self.dialing.lock();
                if dialing.get(key).is_some_and(|a| Arc::ptr_eq(a, &attempt)) {
                    dialing.remove(key);
                }
                result
            })
            .await
            .clone()
    }

    /// Forget the channel to `key` (the next call dials).
    pub fn remove(&self, key: &K) {
        self.open.lock().remove(key);
    }

    /// Forget `channel` if it is still the one kept for `key`: a caller
    /// that saw it fail must not drop a fresh one another task dialled.
    pub fn remove_if_same(&self, key: &K, channel: &Arc<C>) {
        let mut open = self.open.lock();
        if open.get(key).is_some_and(|c| Arc::ptr_eq(c, channel)) {
            open.remove(key);
        }
    }

    /// The destinations with a channel kept (open or not yet found closed).
    pub fn keys(&self) -> Vec<K> {
        self.open.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    struct Conn {
        open: std::sync::atomic::AtomicBool,
    }

    fn conn() -> Conn {
        Conn { open: true.into() }
    }

    fn pool() -> Arc<ChannelPool<String, Conn>> {
        Arc::new(ChannelPool::new(|c: &Conn| c.open.load(Ordering::SeqCst)))
    }

    /// `callers` tasks at once wanting a channel to `a`, whose dial takes
    /// 50 ms and ends with `outcome`; what each got.
    async fn dial_at_once(
        pool: &Arc<ChannelPool<String, Conn>>,
        dials: &Arc<AtomicUsize>,
        callers: usize,
        outcome: fn() -> Result<Conn, ClientError>,
    ) -> Vec<Result<Arc<Conn>, ClientError>> {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (pool, dials) = (pool.clone(), dials.clone());
                tokio::spawn(async move {
                    pool.get_or_dial(&"a".to_owned(), || async {
                        dials.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        outcome()
                    })
                    .await
                })
            })
            .collect();
        let mut got = Vec::new();
        for task in tasks {
            got.push(task.await.unwrap());
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_dial() {
        let pool = pool();
        let dials = Arc::new(AtomicUsize::new(0));
        let mut got = Vec::new();
        for result in dial_at_once(&pool, &dials, 64, || Ok(conn())).await {
            got.push(result.unwrap());
        }
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        assert!(got.iter().all(|c| Arc::ptr_eq(c, &got[0])));

        // Closed: the next caller dials a new one.
        got[0].open.store(false, Ordering::SeqCst);
        let fresh = pool
            .get_or_dial(&"a".to_owned(), || async {
                dials.fetch_add(1, Ordering::SeqCst);
                Ok(conn())
            })
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&fresh, &got[0]));
        assert_eq!(dials.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_dial_is_shared_by_its_waiters_then_tried_again() {
        let pool = pool();
        let dials = Arc::new(AtomicUsize::new(0));
        let refused = || {
            Err(ClientError::Connect {
                addr: "a".into(),
                reason: "refused".into(),
            })
        };
        for result in dial_at_once(&pool, &dials, 16, refused).await {
            assert!(matches!(result, Err(ClientError::Connect { .. })));
        }
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        let again = pool
            .get_or_dial(&"a".to_owned(), || async { Ok(conn()) })
            .await;
        assert!(again.is_ok());
        assert_eq!(pool.keys(), vec!["a".to_owned()]);
    }

    #[tokio::test]
    async fn a_cancelled_dial_is_taken_over_by_a_waiter() {
        let pool = pool();
        let key = "a".to_owned();
        // The first caller gives up mid-dial.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            pool.get_or_dial(&key, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(conn())
            }),
        )
        .await;
        assert!(gave_up.is_err());
        let next = pool.get_or_dial(&key, || async { Ok(conn()) }).await;
        assert!(next.is_ok());
    }

    #[tokio::test]
    async fn a_failed_channel_is_dropped_only_if_still_kept() {
        let pool = pool();
        let key = "a".to_owned();
        let old = pool
            .get_or_dial(&key, || async { Ok(conn()) })
            .await
            .unwrap();
        pool.remove(&key);
        let new = pool
            .get_or_dial(&key, || async { Ok(conn()) })
            .await
            .unwrap();
        pool.remove_if_same(&key, &old);
        assert!(Arc::ptr_eq(&pool.get(&key).unwrap(), &new));
        pool.remove_if_same(&key, &new);
        assert!(pool.get(&key).is_none());
    }
}
