//! [`CanaryWatch`]: a node's count of the merges its canaries ran, and the
//! judgement of when one must be rolled back.
//!
//! A node counts only the merges it ran with a canary's resolver (so only
//! nodes in the canary's scope count anything), per keyspace, in
//! one-second buckets over the canary's window. Each merge is judged as it
//! is counted: once the window holds at least the guard's `merges_min`
//! merges and more than `failure_rate_max` of them failed, the canary
//! trips, once, and the caller rolls it back by writing the registry
//! ([`Registry::auto_rollback`](crate::Registry::auto_rollback)); if that
//! write fails, [`CanaryWatch::release`] lets the next failing merge trip
//! it again.
//!
//! Failures that say nothing of the module are not counted: the module
//! not yet stored on this node (`missing`, the registry still
//! replicating) and a host with no free instance (`unavailable`).
//!
//! What it is not: a metric (the pool's tally counts every merge for
//! `/metrics`); it holds a window per keyspace with a canary, and
//! forgets a canary when another replaces it.

use std::collections::{HashMap, VecDeque};

use isthmus_core::merge::FailureClass;
use isthmus_core::model::ContentHash;
use parking_lot::Mutex;

use crate::registry::{Canary, PPM, RollbackGuard};

/// A canary whose failure rate passed its guard: what to roll back, and
/// the counts that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tripped {
    /// The keyspace.
    pub keyspace: String,
    /// The canary's resolver.
    pub hash: ContentHash,
    /// The canary's start, which tells it from a later trial of the same
    /// module.
    pub since_ms: u64,
    /// Failed merges in the window.
    pub failures: u64,
    /// Merges attempted in the window.
    pub merges: u64,
}

/// One canary's window.
#[derive(Debug)]
struct Trial {
    hash: ContentHash,
    since_ms: u64,
    guard: RollbackGuard,
    /// (second, merges, failures), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
    tripped: bool,
}

/// Whether a failure of `class` counts against a canary.
pub fn counts_against(class: FailureClass) -> bool {
    !matches!(class, FailureClass::Missing | FailureClass::Unavailable)
}

/// Per keyspace, the window of the canary it runs (see the module docs).
#[derive(Debug, Default)]
pub struct CanaryWatch {
    trials: Mutex<HashMap<String, Trial>>,
}

impl CanaryWatch {
    /// Count one merge of `keyspace` run with `canary`'s resolver at
    /// `now_ms`, failed or not; `Some` when this merge trips the canary
    /// (only once per trial, until [`release`](Self::release)).
    pub fn record(
        &self,
        keyspace: &str,
        canary: &Canary,
        failed: bool,
        now_ms: u64,
    ) -> Option<Tripped> {
        let mut trials = self.trials.lock();
        let same = trials
            .get(keyspace)
            .is_some_and(|t| t.hash == canary.resolver.hash && t.since_ms == canary.since_ms);
        if !same {
            trials.insert(
                keyspace.to_owned(),
                Trial {
                    hash: canary.resolver.hash,
                    since_ms: canary.since_ms,
                    guard: canary.guard.clone(),
                    buckets: VecDeque::new(),
                    tripped: false,
                },
            );
        }
        let trial = trials.get_mut(keyspace)?;
        let second = now_ms / 1000;
        match trial.buckets.back_mut() {
            Some((s, merges, failures)) if *s == second => {
                *merges += 1;
                *failures += u64::from(failed);
            }
            _ => trial.buckets.push_back((second, 1, u64::from(failed))),
        }
        // Whole seconds: the window is at least one (validated), and
        // covers `window_ms` rounded up.
        let oldest = second.saturating_sub(trial.guard.window_ms.div_ceil(1000).saturating_sub(1));
        while trial.buckets.front().is_some_and(|(s, _, _)| *s < oldest) {
            trial.buckets.pop_front();
        }
        let (merges, failures) = trial
            .buckets
            .iter()
            .fold((0, 0), |(m, f), (_, bm, bf)| (m + bm, f + bf));
        let past = u128::from(failures) * u128::from(PPM)
            > u128::from(trial.guard.failure_rate_max_ppm) * u128::from(merges);
        if trial.tripped || merges < trial.guard.merges_min || !past {
            return None;
        }
        trial.tripped = true;
        Some(Tripped {
            keyspace: keyspace.to_owned(),
            hash: trial.hash,
            since_ms: trial.since_ms,
            failures,
            merges,
        })
    }

    /// Let `tripped`'s canary trip again (its rollback could not be
    /// written).
    pub fn release(&self, tripped: &Tripped) {
        if let Some(trial) = self.trials.lock().get_mut(&tripped.keyspace)
            && trial.hash == tripped.hash
            && trial.since_ms == tripped.since_ms
        {
            trial.tripped = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{CanaryScope, ResolverRef};

    fn canary(since_ms: u64, window_ms: u64, merges_min: u64, rate_ppm: u32) -> Canary {
        Canary {
            resolver: ResolverRef {
                name: "c".into(),
                version: 2,
                hash: [2; 32],
            },
            scope: CanaryScope {
                dc: Some("dc1".into()),
                share_ppm: None,
            },
            guard: RollbackGuard {
                window_ms,
                merges_min,
                failure_rate_max_ppm: rate_ppm,
            },
            since_ms,
        }
    }

    #[test]
    fn trips_once_past_the_rate_with_enough_merges() {
        let watch = CanaryWatch::default();
        let c = canary(1, 10_000, 4, 500_000);
        // Three failures: too few merges to judge.
        for t in 0..3 {
            assert_eq!(watch.record("ks", &c, true, 1_000 + t), None);
        }
        let tripped = watch.record("ks", &c, true, 1_500).expect("4 of 4 failed");
        assert_eq!((tripped.failures, tripped.merges), (4, 4));
        assert_eq!(tripped.since_ms, 1);
        // Once.
        assert_eq!(watch.record("ks", &c, true, 1_600), None);
        // Released (the write failed): the next failure trips it again.
        watch.release(&tripped);
        let again = watch.record("ks", &c, true, 1_700).unwrap();
        assert_eq!((again.failures, again.merges), (6, 6));
    }

    #[test]
    fn a_rate_at_the_threshold_does_not_trip_and_old_merges_leave_the_window() {
        let watch = CanaryWatch::default();
        let c = canary(1, 2_000, 4, 500_000);
        // Half failed: at the threshold, not past it.
        for (t, failed) in [(0, true), (1, false), (2, true), (3, false)] {
            assert_eq!(watch.record("ks", &c, failed, 10_000 + t), None);
        }
        // Ten seconds later the old merges are gone: three failures alone
        // are below merges_min.
        for t in 0..3 {
            assert_eq!(watch.record("ks", &c, true, 20_000 + t), None);
        }
        assert!(watch.record("ks", &c, true, 20_500).is_some());
    }

    #[test]
    fn a_new_canary_starts_a_new_window() {
        let watch = CanaryWatch::default();
        let first = canary(1, 10_000, 2, 100_000);
        assert_eq!(watch.record("ks", &first, true, 1_000), None);
        let second = canary(2, 10_000, 2, 100_000);
        assert_eq!(
            watch.record("ks", &second, true, 1_001),
            None,
            "fresh window"
        );
        let tripped = watch.record("ks", &second, true, 1_002).unwrap();
        assert_eq!((tripped.since_ms, tripped.merges), (2, 2));
    }

    #[test]
    fn missing_and_unavailable_do_not_count() {
        assert!(!counts_against(FailureClass::Missing));
        assert!(!counts_against(FailureClass::Unavailable));
        assert!(counts_against(FailureClass::Trap));
        assert!(counts_against(FailureClass::GuestError));
    }
}
