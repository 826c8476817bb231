//! Engine behaviour tests over the in-memory file system: a model test
//! against a `BTreeMap` of version sets, power loss, fsync failure, limits
//! and tombstone purging.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::model::{Actor, Clock, Dot, Payload};

fn small_options() -> EngineOptions {
    EngineOptions {
        limits: Limits {
            memtable_bytes_max: 2048,
            ..Limits::default()
        },
        fsync: FsyncPolicy::Always,
        // Versions in these tests carry tiny timestamps; a grace longer
        // than the epoch keeps compaction from purging them.
        tombstone_grace: Duration::from_secs(u64::MAX / 4000),
        block_cache_bytes: 1 << 16,
        compaction_bytes_per_s: 0,
        l0_compaction_trigger: 3,
        table_bytes_target: 4096,
    }
}

fn dir() -> &'static Path {
    Path::new("/db")
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Version),
    Batch(Vec<(u8, Version)>),
    Get(u8),
    Restart,
    Crash,
    Flush,
    Compact,
    Scan(u8, u8),
}

fn version_strategy() -> impl Strategy<Value = Version> {
    (
        proptest::collection::vec((0u64..3, 0u64..4), 0..3),
        proptest::collection::vec((0u64..3, 1u64..7), 0..3),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        0u64..4,
        proptest::option::of(0u64..4),
    )
        .prop_map(|(vector, dots, value, ts, expires_ms)| Version {
            clock: Clock::from_parts(
                vector.into_iter().map(|(a, n)| (Actor(a), n)),
                dots.into_iter().map(|(a, c)| Dot {
                    actor: Actor(a),
                    counter: c,
                }),
            ),
            payload: value.map_or(Payload::Tombstone, Payload::Value),
            timestamp_ms: ts,
            origin_dc: "dc1".into(),
            resolver: None,
            write_id: None,
            expires_ms,
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..12, version_strategy()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => proptest::collection::vec((0u8..12, version_strategy()), 1..4).prop_map(Op::Batch),
        5 => (0u8..12).prop_map(Op::Get),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => (0u8..12, 0u8..12).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

fn check_all(engine: &Engine<MemFs>, model: &BTreeMap<Vec<u8>, VersionSet>) {
    let scanned: Vec<(Vec<u8>, VersionSet)> = engine
        .scan::<Vec<u8>, _>(..)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(Vec<u8>, VersionSet)> =
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(scanned, expected);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0157_1e46),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        let mut fs = MemFs::new();
        let mut engine = Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap();
        let mut model: BTreeMap<Vec<u8>, VersionSet> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    engine.apply(&key(k), v.clone()).unwrap();
                    model.entry(key(k)).or_default().absorb(v);
                }
                Op::Batch(entries) => {
                    engine.apply_batch(entries.iter().map(|(k, v)| (key(*k), v.clone()))).unwrap();
                    for (k, v) in entries {
                        model.entry(key(k)).or_default().absorb(v);
                    }
                }
                Op::Get(k) => {
                    let want = model.get(&key(k)).cloned().unwrap_or_default();
                    // From memory when it can answer: it must agree.
                    if let Some(cached) = engine.get_cached(&key(k)) {
                        prop_assert_eq!(cached.unwrap().encode(), want.encode());
                    }
                    let got = engine.get(&key(k)).unwrap();
                    prop_assert_eq!(got.encode(), want.encode());
                }
                Op::Restart => {
                    engine.close().unwrap();
                    engine = Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap();
                }
                Op::Crash => {
                    // FsyncPolicy::Always: every acknowledged write survives.
                    fs = fs.crash();
                    drop(engine);
                    engine = Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap();
                }
                Op::Flush => engine.flush().unwrap(),
                Op::Compact => engine.compact().unwrap(),
                Op::Scan(a, b) => {
                    let got: Vec<(Vec<u8>, VersionSet)> = engine
                        .scan(key(a)..key(b))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap();
                    let want: Vec<(Vec<u8>, VersionSet)> = model
                        .range(key(a)..key(b))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
        check_all(&engine, &model);
        engine.close().unwrap();
        let engine = Engine::open_with_fs(fs, dir(), small_options()).unwrap();
        check_all(&engine, &model);
    }
}

fn v(actor: u64, counter: u64, value: &[u8], ts: u64) -> Version {
    let mut c = Clock::new();
    c.add_dot(Dot {
        actor: Actor(actor),
        counter,
    });
    Version::value(c, value.to_vec(), ts, "dc1".into())
}

/// An engine on `fs` with a 1 MiB memtable and block cache, holding
/// `k0`..`k199` (all in the memtable), and the options it was opened with.
fn engine_with_keys_k0_to_k199(fs: &MemFs, value: &[u8]) -> (Engine<MemFs>, EngineOptions) {
    let mut options = small_options();
    options.limits.memtable_bytes_max = 1 << 20;
    options.block_cache_bytes = 1 << 20;
    let engine = Engine::open_with_fs(fs.clone(), dir(), options.clone()).unwrap();
    for i in 0..200u64 {
        engine
            .apply(format!("k{i}").as_bytes(), v(1, i + 1, value, i))
            .unwrap();
    }
    (engine, options)
}

#[test]
fn power_loss_keeps_every_acknowledged_write() {
    let fs = MemFs::new();
    let (engine, _) = engine_with_keys_k0_to_k199(&fs, b"value");
    let fs2 = fs.crash();
    drop(engine);
    let engine = Engine::open_with_fs(fs2, dir(), small_options()).unwrap();
    for i in 0..200u64 {
        assert_eq!(
            engine.get(format!("k{i}").as_bytes()).unwrap().len(),
            1,
            "k{i} lost"
        );
    }
}

#[test]
fn interval_policy_keeps_writes_before_the_last_sync() {
    let fs = MemFs::new();
    let opts = EngineOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_options()
    };
    let mut opts_big = opts.clone();
    opts_big.limits.memtable_bytes_max = 1 << 20;
    let engine = Engine::open_with_fs(fs.clone(), dir(), opts_big.clone()).unwrap();
    engine.apply(b"synced", v(1, 1, b"a", 1)).unwrap();
    engine
        .shared
        .log
        .sync_to(engine.shared.log.appended())
        .unwrap();
    engine.apply(b"unsynced", v(1, 2, b"b", 2)).unwrap();
    let fs2 = fs.crash();
    drop(engine);
    let engine = Engine::open_with_fs(fs2, dir(), opts_big).unwrap();
    assert_eq!(engine.get(b"synced").unwrap().len(), 1);
    assert!(engine.get(b"unsynced").unwrap().is_empty());
}

#[test]
fn interval_policy_hands_each_write_to_the_os_before_acknowledging() {
    let fs = MemFs::new();
    let opts = EngineOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_options()
    };
    let engine = Engine::open_with_fs(fs.clone(), dir(), opts).unwrap();
    engine.apply(b"a", v(1, 1, b"x", 1)).unwrap();
    engine.apply_batch([(b"b", v(1, 2, b"y", 2))]).unwrap();
    // No fsync yet, but the file (what a process crash leaves) has both.
    let segment = log::segment_path(dir(), engine.shared.log.segment());
    let bytes = fs.read_all(&segment).unwrap();
    let mut keys = Vec::new();
    log::decode_segment(&bytes, &segment, true, |k, _| keys.push(k)).unwrap();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn a_write_taken_now_is_handed_to_the_os_and_read_back() {
    let fs = MemFs::new();
    let opts = EngineOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_options()
    };
    let engine = Engine::open_with_fs(fs.clone(), dir(), opts).unwrap();
    engine
        .try_apply_now(b"a", v(1, 1, b"x", 1))
        .unwrap()
        .unwrap();
    engine
        .try_apply_now(b"a", v(1, 2, b"y", 2))
        .unwrap()
        .unwrap();
    assert_eq!(engine.get(b"a").unwrap().len(), 2);
    // No fsync, but the file (what a process crash leaves) holds both.
    let segment = log::segment_path(dir(), engine.shared.log.segment());
    let bytes = fs.read_all(&segment).unwrap();
    let mut keys = Vec::new();
    log::decode_segment(&bytes, &segment, true, |k, _| keys.push(k)).unwrap();
    assert_eq!(keys, vec![b"a".to_vec(), b"a".to_vec()]);
    // Limits are typed errors here too, and nothing is written.
    let big = vec![0; Limits::default().value_bytes_max + 1];
    assert!(matches!(
        engine.try_apply_now(b"b", v(1, 3, &big, 3)),
        Ok(Err(EngineError::Limit(_)))
    ));
    assert!(engine.get(b"b").unwrap().is_empty());
}

#[test]
fn unwritten_writes_share_one_write_and_a_dropped_one_is_written_anyway() {
    let fs = MemFs::new();
    let opts = EngineOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_options()
    };
    let engine = Engine::open_with_fs(fs.clone(), dir(), opts).unwrap();
    let segment = log::segment_path(dir(), engine.shared.log.segment());
    let logged = || {
        let bytes = fs.read_all(&segment).unwrap();
        let mut keys = Vec::new();
        log::decode_segment(&bytes, &segment, true, |k, _| keys.push(k)).unwrap();
        keys
    };
    let a = engine
        .try_apply_unwritten(b"a", v(1, 1, b"x", 1))
        .unwrap()
        .unwrap();
    let b = engine
        .try_apply_unwritten(b"b", v(1, 2, b"y", 2))
        .unwrap()
        .unwrap();
    // Absorbed (readable), not yet handed to the OS.
    assert_eq!(engine.get(b"b").unwrap().len(), 1);
    assert!(logged().is_empty());
    let groups = engine.shared.log.bytes_written();
    // The second writer's write(2) carries both records; the first then
    // finds its own already written.
    b.write().unwrap();
    assert_eq!(logged(), vec![b"a".to_vec(), b"b".to_vec()]);
    let after = engine.shared.log.bytes_written();
    a.write().unwrap();
    assert_eq!(engine.shared.log.bytes_written(), after);
    assert!(after > groups);
    // A writer that goes away before writing still gets its record out.
    drop(
        engine
            .try_apply_unwritten(b"c", v(1, 3, b"z", 3))
            .unwrap()
            .unwrap(),
    );
    assert_eq!(logged(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn a_write_that_might_block_is_given_back_untouched() {
    // Fsync per write: never on the caller's thread.
    let engine = Engine::open_with_fs(MemFs::new(), dir(), small_options()).unwrap();
    let back = engine.try_apply_now(b"a", v(1, 1, b"x", 1)).unwrap_err();
    assert_eq!(back, v(1, 1, b"x", 1));
    assert!(engine.get(b"a").unwrap().is_empty());
    // A memtable at its bound: the rotation (an fsync, a new segment) is
    // left to a thread that may block; the write after it goes inline.
    let opts = EngineOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_options()
    };
    let engine = Engine::open_with_fs(MemFs::new(), dir(), opts).unwrap();
    let mut i = 0;
    let back = loop {
        i += 1;
        assert!(i < 1000, "the memtable never reached its bound");
        if let Err(back) = engine.try_apply_now(format!("k{i}").as_bytes(), v(1, i, b"x", i)) {
            break back;
        }
    };
    let segment = engine.shared.log.segment();
    engine.apply(format!("k{i}").as_bytes(), back).unwrap();
    assert!(
        engine.shared.log.segment() > segment,
        "the blocking path rotated"
    );
    engine
        .try_apply_now(b"next", v(1, 9999, b"x", 1))
        .unwrap()
        .unwrap();
    for k in 1..=i {
        assert_eq!(
            engine.get(format!("k{k}").as_bytes()).unwrap().len(),
            1,
            "k{k}"
        );
    }
}

#[test]
fn failed_fsync_poisons_the_engine() {
    let fs = MemFs::new();
    let engine = Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap();
    engine.apply(b"a", v(1, 1, b"x", 1)).unwrap();
    fs.fail_next_sync();
    let err = engine.apply(b"b", v(1, 2, b"y", 2)).unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    // Never retried: every later write is refused, even though the next
    // fsync would succeed.
    let err = engine.apply(b"c", v(1, 3, b"z", 3)).unwrap_err();
    assert!(matches!(err, EngineError::Poisoned), "{err}");
    assert!(matches!(engine.flush(), Err(EngineError::Poisoned)));
    assert!(engine.stats().poisoned);
    // Reads still work; reopening recovers.
    assert_eq!(engine.get(b"a").unwrap().len(), 1);
    drop(engine);
    let engine = Engine::open_with_fs(fs, dir(), small_options()).unwrap();
    assert_eq!(engine.get(b"a").unwrap().len(), 1);
    engine.apply(b"d", v(1, 4, b"w", 4)).unwrap();
}

#[test]
fn limits_are_typed_errors() {
    let fs = MemFs::new();
    let mut opts = small_options();
    opts.limits.key_bytes_max = 4;
    opts.limits.value_bytes_max = 4;
    opts.limits.siblings_max = 2;
    let engine = Engine::open_with_fs(fs, dir(), opts).unwrap();
    let e = engine.apply(b"toolong", v(1, 1, b"x", 1)).unwrap_err();
    assert!(matches!(
        e,
        EngineError::Limit(LimitError::KeyTooLarge { len: 7, max: 4 })
    ));
    let e = engine.apply(b"k", v(1, 1, b"xxxxx", 1)).unwrap_err();
    assert!(matches!(
        e,
        EngineError::Limit(LimitError::ValueTooLarge { .. })
    ));
    engine.apply(b"k", v(1, 1, b"a", 1)).unwrap();
    engine.apply(b"k", v(2, 1, b"b", 1)).unwrap();
    let e = engine.apply(b"k", v(3, 1, b"c", 1)).unwrap_err();
    assert!(matches!(
        e,
        EngineError::Limit(LimitError::TooManySiblings { count: 3, max: 2 })
    ));
    assert_eq!(engine.get(b"k").unwrap().len(), 2);
    // A batch counts its own versions of a key together, on top of what
    // the memtable holds: three concurrent versions of a new key, or one
    // more of a full key, are refused whole.
    let e = engine
        .apply_batch([
            (b"j", v(1, 1, b"a", 1)),
            (b"j", v(2, 1, b"b", 1)),
            (b"j", v(3, 1, b"c", 1)),
        ])
        .unwrap_err();
    assert!(matches!(
        e,
        EngineError::Limit(LimitError::TooManySiblings { count: 3, max: 2 })
    ));
    let e = engine
        .apply_batch([(b"i", v(1, 1, b"a", 1)), (b"k", v(4, 1, b"d", 1))])
        .unwrap_err();
    assert!(matches!(
        e,
        EngineError::Limit(LimitError::TooManySiblings { .. })
    ));
    assert!(engine.get(b"j").unwrap().is_empty());
    assert!(engine.get(b"i").unwrap().is_empty());
    engine
        .apply_batch([(b"j", v(1, 1, b"a", 1)), (b"j", v(2, 1, b"b", 1))])
        .unwrap();
    assert_eq!(engine.get(b"j").unwrap().len(), 2);
}

#[test]
fn reads_join_siblings_across_tables_and_compaction_drops_dominated() {
    let fs = MemFs::new();
    let engine = Engine::open_with_fs(fs, dir(), small_options()).unwrap();
    engine.apply(b"k", v(1, 1, b"a", 1)).unwrap();
    engine.flush().unwrap();
    engine.apply(b"k", v(2, 1, b"b", 2)).unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.get(b"k").unwrap().len(), 2, "siblings in two tables");
    let both = engine.get(b"k").unwrap().lub();
    let mut c = both.clone();
    c.add_dot(Dot {
        actor: Actor(1),
        counter: 2,
    });
    engine
        .apply(b"k", Version::value(c, b"m".to_vec(), 3, "dc1".into()))
        .unwrap();
    assert_eq!(engine.get(b"k").unwrap().len(), 1);
    engine.compact().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.tables_per_level, vec![0, 1]);
    assert_eq!(
        engine.get(b"k").unwrap().versions()[0].value_bytes(),
        Some(&b"m"[..])
    );
}

#[test]
fn compaction_purges_expired_tombstones_only() {
    let fs = MemFs::new();
    let mut opts = small_options();
    opts.tombstone_grace = Duration::from_secs(60);
    let engine = Engine::open_with_fs(fs, dir(), opts).unwrap();
    let now = now_ms();
    let mut c = Clock::new();
    c.add_dot(Dot {
        actor: Actor(1),
        counter: 1,
    });
    engine
        .apply(
            b"old",
            Version::tombstone(c.clone(), now - 120_000, "dc1".into()),
        )
        .unwrap();
    engine
        .apply(b"fresh", Version::tombstone(c.clone(), now, "dc1".into()))
        .unwrap();
    engine.apply(b"live", v(1, 1, b"x", now - 120_000)).unwrap();
    engine.compact().unwrap();
    assert!(engine.get(b"old").unwrap().is_empty());
    assert_eq!(engine.get(b"fresh").unwrap().len(), 1);
    assert_eq!(engine.get(b"live").unwrap().len(), 1);
}

#[test]
fn group_commit_shares_fsyncs_between_threads() {
    let fs = MemFs::new();
    // A disk whose fsync takes a millisecond: the writers that append
    // during one fsync share the next.
    fs.set_sync_delay(std::time::Duration::from_millis(1));
    let mut opts = small_options();
    opts.limits.memtable_bytes_max = 64 << 20;
    let engine = Arc::new(Engine::open_with_fs(fs, dir(), opts).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let e = engine.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    e.apply(format!("t{t}-{i}").as_bytes(), v(t, i + 1, b"v", i))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = engine.stats().log_syncs;
    assert!(
        syncs <= 1600 / 3,
        "8 writers share fsyncs, 3 writes or more to one on average: {syncs} for 1600 writes"
    );
    for t in 0..8u64 {
        for i in 0..200u64 {
            assert_eq!(engine.get(format!("t{t}-{i}").as_bytes()).unwrap().len(), 1);
        }
    }
}

#[test]
fn hash_range_scan_partitions_the_keys() {
    let fs = MemFs::new();
    let engine = Engine::open_with_fs(fs, dir(), small_options()).unwrap();
    for i in 0..100u64 {
        engine
            .apply(format!("k{i}").as_bytes(), v(1, i + 1, b"v", i))
            .unwrap();
    }
    engine.flush().unwrap();
    let mid = u64::MAX / 2;
    let lo = engine.scan_hash_range(..mid).unwrap().count();
    let hi = engine.scan_hash_range(mid..).unwrap().count();
    assert_eq!(lo + hi, 100);
    for e in engine.scan_hash_range(mid..).unwrap() {
        assert!(crate::model::key_hash(&e.unwrap().0) >= mid);
    }
}

#[test]
fn leveled_compaction_builds_several_levels_and_loses_nothing() {
    let fs = MemFs::new();
    let opts = EngineOptions {
        limits: Limits {
            memtable_bytes_max: 16 << 10,
            ..Limits::default()
        },
        ..small_options()
    };
    let engine = Engine::open_with_fs(fs.clone(), dir(), opts.clone()).unwrap();
    let key = |i: u64| format!("k{:08}", (i * 7919) % 4000).into_bytes();
    for i in 0..4000u64 {
        engine
            .apply(&key(i), v(1, i + 1, &[i as u8; 100], 1))
            .unwrap();
    }
    // Overwrite a tenth with versions that dominate the first ones.
    for i in (0..4000u64).step_by(10) {
        let mut c = Clock::new();
        c.add_dot(Dot {
            actor: Actor(1),
            counter: i + 1,
        });
        c.add_dot(Dot {
            actor: Actor(2),
            counter: 1,
        });
        let newer = Version::value(c, b"new".to_vec(), 2, "dc1".into());
        engine.apply(&key(i), newer).unwrap();
    }
    engine.flush().unwrap();
    while engine.shared.needs_compaction() {
        // The background thread may take this compaction first; either
        // way the loop ends when no work is left.
        engine.shared.compact(false, None).unwrap();
    }
    let levels = engine.stats().tables_per_level;
    assert!(levels.len() > 2, "expected L2 or deeper: {levels:?}");
    let check = |engine: &Engine<MemFs>| {
        for i in 0..4000u64 {
            let set = engine.get(&key(i)).unwrap();
            assert_eq!(set.len(), 1, "key {i}");
            let want: &[u8] = if i % 10 == 0 { b"new" } else { &[i as u8; 100] };
            assert_eq!(set.versions()[0].value_bytes(), Some(want), "key {i}");
        }
        assert_eq!(engine.scan::<&[u8], _>(..).unwrap().count(), 4000);
    };
    check(&engine);
    // Every run is sorted and non-overlapping.
    for run in &engine.shared.levels.load().runs {
        assert!(
            run.windows(2)
                .all(|w| w[0].meta.max_key < w[1].meta.min_key)
        );
    }
    drop(engine);
    let engine = Engine::open_with_fs(fs, dir(), opts).unwrap();
    check(&engine);
    engine.compact().unwrap();
    check(&engine);
}

#[test]
fn first_flush_goes_to_empty_l1_and_the_next_to_l0() {
    let fs = MemFs::new();
    let opts = EngineOptions {
        l0_compaction_trigger: 8,
        ..small_options()
    };
    let engine = Engine::open_with_fs(fs.clone(), dir(), opts.clone()).unwrap();
    engine.apply(b"a", v(1, 1, b"x", 1)).unwrap();
    engine.apply(b"m", v(1, 2, b"y", 1)).unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.stats().tables_per_level, vec![0, 1]);
    engine.apply(b"c", v(1, 3, b"z", 1)).unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.stats().tables_per_level, vec![1, 1]);
    assert_eq!(engine.stats().compaction_bytes_written, 0);
    engine.close().unwrap();
    let engine = Engine::open_with_fs(fs, dir(), opts).unwrap();
    assert_eq!(engine.stats().tables_per_level, vec![1, 1]);
    for k in [&b"a"[..], b"m", b"c"] {
        assert_eq!(engine.get(k).unwrap().len(), 1);
    }
    assert_eq!(engine.scan::<&[u8], _>(..).unwrap().count(), 3);
}

#[test]
fn a_flushed_table_takes_over_reads_from_memory() {
    let fs = MemFs::new();
    let (engine, _) = engine_with_keys_k0_to_k199(&fs, b"x");
    engine.flush().unwrap();
    assert!(engine.stats().tables_per_level.iter().sum::<usize>() >= 1);
    // Every key is answered from memory right after the flush: the new
    // table's reader is open and its blocks are cached.
    for i in 0..200 {
        let k = format!("k{i}");
        let set = engine.get_cached(k.as_bytes());
        assert_eq!(set.map(|s| s.unwrap().len()), Some(1), "{k}");
    }
}

#[test]
fn a_flush_caches_no_more_blocks_than_the_cache_has_room_for() {
    let fs = MemFs::new();
    let mut options = small_options();
    options.limits.memtable_bytes_max = 1 << 20;
    options.block_cache_bytes = 16 << 10;
    // No compaction reading the table meanwhile: its reads count too.
    options.table_bytes_target = 64 << 20;
    options.l0_compaction_trigger = 8;
    let engine = Engine::open_with_fs(fs, dir(), options).unwrap();
    // Incompressible values, so that the table's blocks are as large as
    // the data.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    for i in 0..200u64 {
        let mut value = vec![0u8; 1000];
        rand::RngCore::fill_bytes(&mut rng, &mut value);
        engine
            .apply(format!("k{i:03}").as_bytes(), v(1, i + 1, &value, i))
            .unwrap();
    }
    engine.flush().unwrap();
    // About 200 KB of blocks, a 16 KiB cache: the warm-up stops once the
    // cache is full instead of reading the whole table through it.
    let read = engine.stats().table_bytes_read;
    assert!(read < 64 << 10, "{read} bytes read by the flush");
    for i in (0..200u64).step_by(37) {
        assert_eq!(engine.get(format!("k{i:03}").as_bytes()).unwrap().len(), 1);
    }
}

#[test]
fn a_cold_read_goes_to_the_file_and_then_memory_answers() {
    let fs = MemFs::new();
    let (engine, options) = engine_with_keys_k0_to_k199(&fs, b"x");
    // In the memtable: memory answers.
    assert_eq!(engine.get_cached(b"k7").unwrap().unwrap().len(), 1);
    engine.flush().unwrap();
    engine.close().unwrap();
    // Reopened: no filter, handle or block in memory yet.
    let engine = Engine::open_with_fs(fs, dir(), options).unwrap();
    assert!(engine.get_cached(b"k7").is_none());
    assert_eq!(engine.get(b"k7").unwrap().len(), 1);
    assert_eq!(engine.get_cached(b"k7").unwrap().unwrap().len(), 1);
    // A key of a block never read: its filter is loaded now, its block not.
    let other = (0..200)
        .map(|i| format!("k{i}"))
        .find(|k| engine.get_cached(k.as_bytes()).is_none());
    assert!(other.is_some(), "the table has more than one block");
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_when_space_returns() {
    let fs = MemFs::new();
    let engine = Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap();
    engine.apply(b"a", v(1, 1, b"x", 1)).unwrap();
    // Room for part of the next record only: it is refused, typed.
    fs.set_space(Some(10));
    let err = engine.apply(b"b", v(1, 2, b"y", 2)).unwrap_err();
    assert!(matches!(err, EngineError::DiskFull { .. }), "{err}");
    // Refused at once while the disk stays full; not poisoned; reads go on.
    for i in 0..3 {
        let err = engine.apply(b"c", v(1, 3 + i, b"z", 3)).unwrap_err();
        assert!(matches!(err, EngineError::DiskFull { .. }), "{err}");
        std::thread::sleep(Duration::from_millis(120));
    }
    let stats = engine.stats();
    assert!(stats.disk_full && !stats.poisoned, "{stats:?}");
    assert_eq!(engine.get(b"a").unwrap().len(), 1);
    // Room again: writes resume on their own.
    fs.set_space(None);
    std::thread::sleep(Duration::from_millis(120));
    engine.apply(b"d", v(1, 9, b"w", 9)).unwrap();
    engine.apply(b"e", v(1, 10, b"u", 10)).unwrap();
    assert!(!engine.stats().disk_full);
    // After a power cut, what was acknowledged is there: the cut partial
    // record hides nothing written after it.
    let after = fs.crash();
    drop(engine);
    let engine = Engine::open_with_fs(after, dir(), small_options()).unwrap();
    for key in [&b"a"[..], b"d", b"e"] {
        assert_eq!(engine.get(key).unwrap().len(), 1, "{key:?} lost");
    }
    assert!(
        engine.get(b"b").unwrap().is_empty(),
        "a refused write was persisted"
    );
}

#[test]
fn a_flush_without_room_waits_for_it_rather_than_poisoning() {
    let fs = MemFs::new();
    let engine = Arc::new(Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap());
    // Under the memtable's bound: no flush of its own before this one.
    for i in 0..10u64 {
        engine
            .apply(format!("k{i}").as_bytes(), v(1, i + 1, b"value", i))
            .unwrap();
    }
    assert_eq!(engine.stats().flushes, 0);
    // Room for a new log segment, not for the table.
    fs.set_space(Some(64));
    let flushing = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.flush())
    };
    std::thread::sleep(Duration::from_millis(300));
    let stats = engine.stats();
    assert!(stats.disk_full && !stats.poisoned, "{stats:?}");
    assert_eq!(stats.flushes, 0);
    assert_eq!(
        engine.get(b"k3").unwrap().len(),
        1,
        "reads go on from memory"
    );
    fs.set_space(None);
    flushing.join().unwrap().unwrap();
    assert!(engine.stats().flushes >= 1);
    engine.apply(b"later", v(1, 100, b"x", 100)).unwrap();
    assert_eq!(engine.get(b"k3").unwrap().len(), 1);
}

/// A version as releases before expiries defined it (storage formats log
/// 1 and table 2, protocol 5): the fixture of the old encoding.
#[derive(serde::Serialize)]
struct LegacyVersion {
    clock: Clock,
    payload: Payload,
    timestamp_ms: u64,
    origin_dc: crate::model::DcName,
    resolver: Option<[u8; 32]>,
    write_id: Option<[u8; 16]>,
}

#[test]
fn a_log_written_before_expiries_existed_replays_after_the_upgrade() {
    let fs = MemFs::new();
    fs.create_dir_all(dir()).unwrap();
    let clock = |a| Clock::from_parts([(Actor(a), 1)], []);
    let legacy = [
        (
            b"v".to_vec(),
            LegacyVersion {
                clock: clock(1),
                payload: Payload::Value(b"old bytes".to_vec()),
                timestamp_ms: 7,
                origin_dc: "dc1".into(),
                resolver: Some([3; 32]),
                write_id: Some([9; 16]),
            },
        ),
        (
            b"t".to_vec(),
            LegacyVersion {
                clock: clock(2),
                payload: Payload::Tombstone,
                timestamp_ms: 8,
                origin_dc: "dc2".into(),
                resolver: None,
                write_id: None,
            },
        ),
    ];
    // A format 1 segment, as the previous release wrote it.
    let mut payload = Vec::new();
    super::codec::put_varint(&mut payload, legacy.len() as u64);
    for (key, v) in &legacy {
        super::codec::put_varint(&mut payload, key.len() as u64);
        payload.extend_from_slice(key);
        let bytes = postcard::to_allocvec(v).unwrap();
        super::codec::put_varint(&mut payload, bytes.len() as u64);
        payload.extend_from_slice(&bytes);
    }
    let mut segment = Vec::new();
    segment.extend_from_slice(&log::LOG_MAGIC.to_le_bytes());
    segment.extend_from_slice(&1u32.to_le_bytes());
    segment.extend_from_slice(&1u64.to_le_bytes());
    log::frame_record(&mut segment, &payload);
    let file = fs.create(&log::segment_path(dir(), 1)).unwrap();
    file.append(&segment).unwrap();
    file.sync().unwrap();
    drop(file);
    fs.sync_dir(dir()).unwrap();

    let engine = Engine::open_with_fs(fs.clone(), dir(), small_options()).unwrap();
    let check = |engine: &Engine<MemFs>| {
        let v = engine.get(b"v").unwrap();
        assert_eq!(v.len(), 1);
        let v = &v.versions()[0];
        assert_eq!(v.value_bytes(), Some(&b"old bytes"[..]));
        assert_eq!(
            (v.timestamp_ms, v.resolver, v.write_id, v.expires_ms),
            (7, Some([3; 32]), Some([9; 16]), None)
        );
        // Unchanged bytes, so unchanged digests: Merkle roots of old data
        // do not move across the upgrade.
        assert_eq!(v.encode(), postcard::to_allocvec(&legacy[0].1).unwrap());
        let t = engine.get(b"t").unwrap();
        assert!(t.versions()[0].is_tombstone());
        assert_eq!(t.versions()[0].expires_ms, None);
    };
    check(&engine);
    // Replayed into a table of the current format, and read back from it.
    engine.compact().unwrap();
    drop(engine);
    let engine = Engine::open_with_fs(fs, dir(), small_options()).unwrap();
    check(&engine);
}

fn expiring(actor: u64, counter: u64, value: &[u8], expires_ms: u64) -> Version {
    Version {
        expires_ms: Some(expires_ms),
        ..v(actor, counter, value, expires_ms.saturating_sub(1_000))
    }
}

#[test]
fn compaction_purges_an_expired_value_after_the_grace_and_only_at_the_bottom() {
    let fs = MemFs::new();
    let mut opts = small_options();
    opts.tombstone_grace = Duration::from_secs(60);
    let engine = Engine::open_with_fs(fs, dir(), opts).unwrap();
    let now = now_ms();
    // An old value of `k` that never expires, in the deepest level.
    engine.apply(b"k", v(1, 1, b"old", now - 300_000)).unwrap();
    engine.flush().unwrap();
    let first = engine.shared.levels.load().runs[0][0].clone();
    engine.shared.install_move(&first, 1).unwrap();
    assert_eq!(engine.stats().tables_per_level, vec![0, 0, 1]);
    // Over it, a version that expired past the grace (it dominates the old
    // one: same actor, next counter), and keys expired within the grace,
    // not expired, and expired past the grace with nothing below.
    let over_old = Version {
        clock: Clock::from_parts([(Actor(1), 2)], []),
        ..expiring(1, 2, b"new", now - 120_000)
    };
    engine.apply(b"k", over_old).unwrap();
    assert_eq!(engine.get(b"k").unwrap().len(), 1);
    engine
        .apply(b"recent", expiring(1, 1, b"r", now - 10_000))
        .unwrap();
    engine
        .apply(b"future", expiring(1, 1, b"f", now + 600_000))
        .unwrap();
    engine
        .apply(b"gone", expiring(1, 1, b"g", now - 120_000))
        .unwrap();
    engine.flush().unwrap();
    // In L1 (empty, so the flush went there), above the old value's
    // table in L2.
    assert_eq!(engine.stats().tables_per_level, vec![0, 1, 1]);
    // A compaction of L0 tables into L1, over the old value's level:
    // nothing may be purged there, or the old value (which never
    // expires) would come back.
    for key in [&b"a"[..], b"z", b"zz"] {
        engine.apply(key, v(2, 1, b"x", now)).unwrap();
        engine.flush().unwrap();
    }
    while engine.shared.needs_compaction() {
        engine.shared.compact(false, None).unwrap();
    }
    let k = engine.get(b"k").unwrap();
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k.versions()[0].value_bytes(), Some(&b"new"[..]));
    assert_eq!(k.live_at(now).count(), 0, "expired: a read sees nothing");
    // The full compaction reaches the bottom: what expired past the
    // grace goes, with the version it superseded; the rest stays.
    engine.compact().unwrap();
    assert!(engine.get(b"k").unwrap().is_empty());
    assert!(engine.get(b"gone").unwrap().is_empty());
    assert_eq!(engine.get(b"recent").unwrap().len(), 1);
    assert_eq!(engine.get(b"future").unwrap().len(), 1);
    assert_eq!(engine.get(b"a").unwrap().len(), 1);
}

/// The live values of `k`, in the set's order.
fn live_values(engine: &Engine<MemFs>, k: &[u8]) -> Vec<Vec<u8>> {
    engine
        .get(k)
        .unwrap()
        .live()
        .map(|v| v.value_bytes().unwrap().to_vec())
        .collect()
}

/// Write `v` to `k` the way a replica holding the key's lock does: a
/// marked read, then the set it computed handed back with the version.
/// `between` is written (unlocked, as a batch delivery does) after the
/// read. Falls back to [`Engine::apply`] where the inline path declines,
/// as the store does.
fn write_over(engine: &Engine<MemFs>, k: &[u8], v: Version, between: Option<Version>) {
    let (read, mark) = match engine.get_cached_marked(k) {
        Some(answer) => answer.unwrap(),
        None => {
            engine.apply(k, v).unwrap();
            if let Some(w) = between {
                engine.apply(k, w).unwrap();
            }
            return;
        }
    };
    if let Some(w) = between {
        engine.apply(k, w).unwrap();
    }
    let mut full = read;
    full.absorb(v.clone());
    match engine.try_apply_unwritten_over(k, v, Some((mark, &full))) {
        Ok(taken) => taken.unwrap().write().unwrap(),
        Err(v) => engine.apply(k, v).unwrap(),
    }
}

fn interval_options() -> EngineOptions {
    EngineOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_options()
    }
}

#[derive(Clone, Debug)]
enum OverOp {
    Over(u8, Version, Option<Version>),
    Put(u8, Version),
    Get(u8),
    Flush,
    Compact,
    Restart,
}

fn over_op_strategy() -> impl Strategy<Value = OverOp> {
    prop_oneof![
        8 => (0u8..6, version_strategy(), proptest::option::weighted(0.3, version_strategy()))
            .prop_map(|(k, v, w)| OverOp::Over(k, v, w)),
        3 => (0u8..6, version_strategy()).prop_map(|(k, v)| OverOp::Put(k, v)),
        4 => (0u8..6).prop_map(OverOp::Get),
        1 => Just(OverOp::Flush),
        1 => Just(OverOp::Compact),
        1 => Just(OverOp::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0157_1e47),
        ..ProptestConfig::default()
    })]

    /// Writes over a marked read, with unlocked writes slipping in between
    /// read and write, flushes (a new memtable) and restarts (the memtable
    /// rebuilt from the log, which holds only the versions): every read
    /// equals the join of everything written.
    #[test]
    fn writes_over_a_marked_read_match_the_model(
        ops in proptest::collection::vec(over_op_strategy(), 1..80)
    ) {
        let fs = MemFs::new();
        let mut engine = Engine::open_with_fs(fs.clone(), dir(), interval_options()).unwrap();
        let mut model: BTreeMap<Vec<u8>, VersionSet> = BTreeMap::new();
        for op in ops {
            match op {
                OverOp::Over(k, v, between) => {
                    write_over(&engine, &key(k), v.clone(), between.clone());
                    let set = model.entry(key(k)).or_default();
                    set.absorb(v);
                    if let Some(w) = between {
                        set.absorb(w);
                    }
                }
                OverOp::Put(k, v) => {
                    engine.apply(&key(k), v.clone()).unwrap();
                    model.entry(key(k)).or_default().absorb(v);
                }
                OverOp::Get(k) => {
                    let want = model.get(&key(k)).cloned().unwrap_or_default();
                    let got = engine.get(&key(k)).unwrap();
                    prop_assert_eq!(got.encode(), want.encode());
                }
                OverOp::Flush => engine.flush().unwrap(),
                OverOp::Compact => engine.compact().unwrap(),
                OverOp::Restart => {
                    engine.close().unwrap();
                    engine = Engine::open_with_fs(fs.clone(), dir(), interval_options()).unwrap();
                }
            }
        }
        check_all(&engine, &model);
        engine.close().unwrap();
        let engine = Engine::open_with_fs(fs, dir(), interval_options()).unwrap();
        check_all(&engine, &model);
    }
}

/// Which path a write over a marked read took, seen in the active
/// memtable: the writer's whole set when nothing wrote the key since the
/// read; the absorbed version alone (plus what the memtable held) when a
/// write came in between or the memtable was replaced.
#[test]
fn a_write_over_a_marked_read_stores_the_set_only_if_the_key_did_not_move() {
    let engine = Engine::open_with_fs(MemFs::new(), dir(), interval_options()).unwrap();
    let active = |k: &[u8]| {
        engine
            .shared
            .mem
            .read()
            .active
            .get(k)
            .map_or(0, |set| set.len())
    };
    // In a table: the set read is {a}; the new sibling b is stored with it.
    engine.apply(b"k", v(1, 1, b"a", 1)).unwrap();
    engine.flush().unwrap();
    write_over(&engine, b"k", v(2, 1, b"b", 2), None);
    assert_eq!(active(b"k"), 2, "the whole set is stored");
    assert_eq!(engine.get(b"k").unwrap().len(), 2);

    // A write between read and write: absorbed instead, and kept.
    engine.apply(b"j", v(1, 1, b"a", 1)).unwrap();
    engine.flush().unwrap();
    write_over(&engine, b"j", v(2, 1, b"b", 2), Some(v(3, 1, b"c", 3)));
    assert_eq!(active(b"j"), 2, "b absorbed beside c, not {{a, b}} stored");
    let values = live_values(&engine, b"j");
    assert_eq!(values.len(), 3, "{values:?}");

    // A new memtable between read and write: absorbed there.
    engine.apply(b"m", v(1, 1, b"a", 1)).unwrap();
    engine.flush().unwrap();
    let (read, mark) = engine.get_cached_marked(b"m").unwrap().unwrap();
    // (A flush of an empty memtable keeps it: write another key first.)
    engine.apply(b"other", v(1, 1, b"o", 1)).unwrap();
    engine.flush().unwrap();
    let mut full = read;
    full.absorb(v(2, 1, b"b", 2));
    engine
        .try_apply_unwritten_over(b"m", v(2, 1, b"b", 2), Some((mark, &full)))
        .unwrap()
        .unwrap()
        .write()
        .unwrap();
    assert_eq!(active(b"m"), 1, "absorbed into the new memtable");
    assert_eq!(engine.get(b"m").unwrap().len(), 2);

    // An overwrite (it saw a, b and c): the one version left.
    let clock = Clock::from_parts(
        [],
        (1..=4).map(|actor| Dot {
            actor: Actor(actor),
            counter: 1,
        }),
    );
    let over = Version::value(clock, b"d".to_vec(), 4, "dc1".into());
    write_over(&engine, b"k", over.clone(), None);
    assert_eq!(engine.get(b"k").unwrap().versions(), [over]);
}

/// A key past the sibling bound (bounds are held per apply, and unlocked
/// batch deliveries can race past them) takes, over a marked read, every
/// write the absorbing path takes: a write that replaces one sibling and
/// adds one does not grow the set, and the writer (a replica, which
/// refuses only growth past the bound) has allowed it.
#[test]
fn a_write_over_a_marked_read_is_refused_no_more_than_one_absorbed() {
    let mut opts = interval_options();
    opts.limits.siblings_max = 2;
    let engine = Engine::open_with_fs(MemFs::new(), dir(), opts).unwrap();
    // Three siblings: two in a table, one in the memtable.
    engine.apply(b"k", v(1, 1, b"a", 1)).unwrap();
    engine.apply(b"k", v(2, 1, b"b", 2)).unwrap();
    engine.flush().unwrap();
    engine.apply(b"k", v(3, 1, b"c", 3)).unwrap();
    assert_eq!(engine.get(b"k").unwrap().len(), 3);
    // Supersedes c (it saw actor 3's first event), concurrent with a, b.
    let clock = Clock::from_parts(
        [],
        [3, 4].map(|actor| Dot {
            actor: Actor(actor),
            counter: 1,
        }),
    );
    let d = Version::value(clock, b"d".to_vec(), 4, "dc1".into());
    let (read, mark) = engine.get_cached_marked(b"k").unwrap().unwrap();
    let mut full = read;
    full.absorb(d.clone());
    assert_eq!(full.len(), 3, "one replaced, one added");
    engine
        .try_apply_unwritten_over(b"k", d, Some((mark, &full)))
        .unwrap()
        .unwrap()
        .write()
        .unwrap();
    let values = live_values(&engine, b"k");
    assert_eq!(values.len(), 3, "{values:?}");
    assert!(values.contains(&b"d".to_vec()) && !values.contains(&b"c".to_vec()));
}
