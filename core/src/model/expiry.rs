//! When a written version expires: the pure decisions, with the time as an
//! argument (the coordinator passes its wall clock; tests pass any).
//!
//! An expiry is an absolute wall-clock time carried in the version
//! ([`Version::expires_ms`]), so every replica in every datacenter agrees
//! on it. A write asks for one as an [`Expiry`]: the node that receives it
//! resolves the keyspace's default and a relative TTL into an absolute
//! time on its own clock ([`resolve`]) before it forwards the write; the
//! replica that issues the version resolves [`Expiry::Keep`] from the set
//! it holds under the key's lock ([`stamp`]).

pub use isthmus_client::wire::Expiry;

use super::set::VersionSet;
use super::version::Version;

/// `expiry` as the coordinator forwards it: the keyspace default
/// (`ttl_s`) and a relative TTL become an absolute time counted from
/// `now_ms`; [`Expiry::Never`], [`Expiry::AtMs`] and [`Expiry::Keep`] stay.
/// Idempotent: resolving a resolved expiry changes nothing.
pub fn resolve(expiry: Expiry, ttl_s: Option<u64>, now_ms: u64) -> Expiry {
    match expiry {
        Expiry::KeyspaceDefault => match ttl_s {
            Some(ttl) => Expiry::AtMs(now_ms.saturating_add(ttl.saturating_mul(1000))),
            None => Expiry::Never,
        },
        Expiry::AfterMs(ms) => Expiry::AtMs(now_ms.saturating_add(ms)),
        other => other,
    }
}

/// The expiry a new version gets, at the replica that issues it, given
/// the set `current` it holds for the key: [`Expiry::Keep`] takes the live
/// siblings' (at `now_ms`): the latest, none if one has none or none is
/// live. A tombstone (`is_value` false) never carries one. The others
/// are resolved as [`resolve`] does.
pub fn stamp(
    expiry: Expiry,
    ttl_s: Option<u64>,
    is_value: bool,
    current: &VersionSet,
    now_ms: u64,
) -> Option<u64> {
    if !is_value {
        return None;
    }
    match resolve(expiry, ttl_s, now_ms) {
        Expiry::AtMs(at) => Some(at),
        Expiry::Keep => kept(current, now_ms),
        Expiry::Never | Expiry::KeyspaceDefault | Expiry::AfterMs(_) => None,
    }
}

/// The expiry of what a read at `now_ms` returns of `set`: the latest of
/// its live siblings', none if one of them has none or none is live.
pub fn kept(set: &VersionSet, now_ms: u64) -> Option<u64> {
    let mut live = set.live_at(now_ms).peekable();
    live.peek()?;
    live.try_fold(0, |latest, v: &Version| {
        v.expires_ms.map(|at| at.max(latest))
    })
}

#[cfg(test)]
mod tests {
    use super::super::clock::{Actor, Clock, Dot};
    use super::*;
    use proptest::prelude::*;

    fn dot(actor: u64, counter: u64) -> Dot {
        Dot {
            actor: Actor(actor),
            counter,
        }
    }

    #[test]
    fn a_relative_expiry_and_the_default_resolve_on_the_coordinators_clock() {
        assert_eq!(
            resolve(Expiry::KeyspaceDefault, Some(5), 1_000),
            Expiry::AtMs(6_000)
        );
        assert_eq!(resolve(Expiry::KeyspaceDefault, None, 1_000), Expiry::Never);
        assert_eq!(
            resolve(Expiry::AfterMs(250), Some(5), 1_000),
            Expiry::AtMs(1_250)
        );
        assert_eq!(resolve(Expiry::Never, Some(5), 1_000), Expiry::Never);
        assert_eq!(resolve(Expiry::Keep, Some(5), 1_000), Expiry::Keep);
        // Resolved once at the coordinator, again where it is issued: the
        // same time.
        let once = resolve(Expiry::AfterMs(7), None, 10);
        assert_eq!(resolve(once, Some(1), 99), once);
        // No overflow from a huge TTL.
        assert_eq!(
            resolve(Expiry::AfterMs(u64::MAX), None, 5),
            Expiry::AtMs(u64::MAX)
        );
        assert_eq!(
            resolve(Expiry::KeyspaceDefault, Some(u64::MAX), 5),
            Expiry::AtMs(u64::MAX)
        );
    }

    #[test]
    fn keep_takes_the_live_value_expiry_and_tombstones_get_none() {
        let with = |at: Option<u64>, a: u64| Version {
            expires_ms: at,
            ..Version::value(
                Clock::from_parts([], [dot(a, 1)]),
                b"v".to_vec(),
                1,
                "dc1".into(),
            )
        };
        let set = VersionSet::from_versions([with(Some(50), 1), with(Some(80), 2)]);
        assert_eq!(stamp(Expiry::Keep, Some(1), true, &set, 10), Some(80));
        // At 60 the first has expired: only the second is live.
        assert_eq!(kept(&set, 60), Some(80));
        // Nothing live: nothing to keep.
        assert_eq!(stamp(Expiry::Keep, None, true, &set, 80), None);
        assert_eq!(stamp(Expiry::Keep, None, true, &VersionSet::new(), 0), None);
        // A live sibling without expiry: none.
        let set = VersionSet::from_versions([with(Some(50), 1), with(None, 3)]);
        assert_eq!(stamp(Expiry::Keep, None, true, &set, 10), None);
        // A delete's tombstone never carries an expiry.
        assert_eq!(stamp(Expiry::AtMs(5), Some(9), false, &set, 0), None);
        assert_eq!(
            stamp(Expiry::KeyspaceDefault, Some(2), true, &set, 0),
            Some(2_000)
        );
    }

    /// One step of a single key's history against one replica, with the
    /// clock under the test's control.
    #[derive(Clone, Debug)]
    enum Step {
        /// Write a value (over everything seen, or as a sibling) with an
        /// expiry request.
        Put { over: bool, expiry: Expiry },
        /// Delete what was seen.
        Delete,
        /// Let time pass.
        Sleep(u64),
        /// Compaction at the bottom level, with a grace period.
        Compact { grace_ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        let expiry = prop_oneof![
            Just(Expiry::KeyspaceDefault),
            Just(Expiry::Never),
            (0u64..40).prop_map(Expiry::AfterMs),
            (0u64..200).prop_map(Expiry::AtMs),
            Just(Expiry::Keep),
        ];
        prop_oneof![
            4 => (any::<bool>(), expiry).prop_map(|(over, expiry)| Step::Put { over, expiry }),
            1 => Just(Step::Delete),
            3 => (0u64..30).prop_map(Step::Sleep),
            1 => (0u64..30).prop_map(|grace_ms| Step::Compact { grace_ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(0x77_1001), ..ProptestConfig::default() })]

        /// The store (a version set: absorb, reads at a time, compaction's
        /// purge) against a model that keeps every write with its absolute
        /// expiry and says, at any time, which values a read returns: the
        /// written values nothing later superseded and whose expiry has
        /// not come. A purge never changes what any later read returns,
        /// and drops a set only once its newest death is a grace old.
        #[test]
        fn reads_at_any_time_match_a_model_of_expiring_writes(
            steps in proptest::collection::vec(step(), 1..40),
            ttl_s in proptest::option::of(0u64..1),
        ) {
            // `ttl_s` of 0 s or none keeps the default's expiry within the
            // generated times (0 s: expired at once).
            let mut now = 100u64;
            let mut set = VersionSet::new();
            // The model: (id, value?, expiry, superseded).
            let mut model: Vec<(u64, bool, Option<u64>, bool)> = Vec::new();
            let mut counter = 0u64;
            for step in steps {
                match step {
                    Step::Put { over, expiry } => {
                        counter += 1;
                        // Actor 1 writes over what it saw; actor 2+n
                        // writes blind (a sibling of everything).
                        let clock = if over {
                            let mut c = set.lub();
                            c.add_dot(dot(1, counter));
                            c
                        } else {
                            Clock::from_parts([], [dot(1 + counter, 1)])
                        };
                        let model_expiry = match resolve(expiry, ttl_s, now) {
                            Expiry::AtMs(at) => Some(at),
                            Expiry::Keep => {
                                let live: Vec<_> = model.iter().filter(|w| w.1 && !w.3 && w.2.is_none_or(|at| at > now)).collect();
                                if live.is_empty() || live.iter().any(|w| w.2.is_none()) {
                                    None
                                } else {
                                    live.iter().filter_map(|w| w.2).max()
                                }
                            }
                            _ => None,
                        };
                        let at = stamp(expiry, ttl_s, true, &set, now);
                        prop_assert_eq!(at, model_expiry);
                        if over {
                            for w in &mut model {
                                w.3 = true;
                            }
                        }
                        model.push((counter, true, at, false));
                        set.absorb(Version {
                            expires_ms: at,
                            ..Version::value(clock, counter.to_le_bytes().to_vec(), now, "dc1".into())
                        });
                    }
                    Step::Delete => {
                        counter += 1;
                        let mut clock = set.lub();
                        clock.add_dot(dot(1, counter));
                        for w in &mut model {
                            w.3 = true;
                        }
                        model.push((counter, false, None, false));
                        set.absorb(Version::tombstone(clock, now, "dc1".into()));
                    }
                    Step::Sleep(ms) => now += ms,
                    Step::Compact { grace_ms } => {
                        let before = set.clone();
                        if set.purge_expired_tombstones(now.saturating_sub(grace_ms)) {
                            // Every version dead a grace ago: nothing a
                            // read can see now or ever after.
                            for v in before.versions() {
                                let died = if v.is_tombstone() { Some(v.timestamp_ms) } else { v.expires_ms };
                                prop_assert!(died.is_some_and(|d| d + grace_ms < now + 1), "purged {:?} at {}", v, now);
                            }
                            for later in [now, now + 1, now + 1_000] {
                                prop_assert_eq!(before.live_at(later).count(), 0);
                            }
                            // The model forgets nothing: its reads must
                            // still agree (all superseded or expired).
                        }
                    }
                }
                let read: Vec<u64> = set
                    .live_at(now)
                    .map(|v| u64::from_le_bytes(v.value_bytes().unwrap().try_into().unwrap()))
                    .collect();
                let mut want: Vec<u64> = model
                    .iter()
                    .filter(|w| w.1 && !w.3 && w.2.is_none_or(|at| at > now))
                    .map(|w| w.0)
                    .collect();
                let mut got = read.clone();
                got.sort_unstable();
                want.sort_unstable();
                prop_assert_eq!(got, want, "at {} the set is {:?}", now, set);
            }
        }
    }
}
