//! Isthmus engine vs fjall 3, side by side, on the same data.
//!
//! `cargo bench -p isthmus-core --bench engine`. Temp dirs are created
//! under `$ISTHMUS_BENCH_DIR` (default: the system temp dir). Sizes can be
//! scaled down with `ISTHMUS_BENCH_KEYS` (default 1,000,000).
//!
//! Settings (fairness):
//! - keys are 16 bytes (8 random bytes from a seeded mix of the index,
//!   then the index), values 100 incompressible pseudo-random bytes;
//!   insertion order is therefore random. Isthmus stores each value inside
//!   a `Version` (clock with one dot, timestamp, origin DC), so it writes
//!   about 20 more bytes per entry than fjall; building that `Version` is
//!   counted in its time.
//! - fill-random: Isthmus `FsyncPolicy::Interval(1s)` (each write handed
//!   to the OS with write(2) before it is acknowledged, fsync every
//!   second); fjall defaults (each write handed to the OS, no fsync). So
//!   both survive a process crash and neither fsyncs per write. Timed from
//!   the first write to the last acknowledgement.
//! - both engines get a 256 MiB block cache; other settings are defaults,
//!   which match where they overlap: 64 MiB memtables (each engine counts
//!   its own per-entry overhead: Isthmus key + encoded set + 72 bytes of
//!   B-tree slot, fjall key + value + its item struct), an L0 compaction
//!   trigger of 4 tables, 64 MiB output tables, level fanout 10, ~1% bloom
//!   false positives (fjall: 0.01% on L0). Isthmus lz4-compresses every
//!   table's blocks (values here are incompressible); fjall compresses
//!   L2 and deeper only. Neither rewrites the first flushed table: Isthmus
//!   flushes into empty L0 and L1 straight to L1, fjall trivially moves a
//!   disjoint L0 into its empty last level; so the 1M-key fill ends with
//!   no compaction in either engine unless one reaches 4 L0 tables.
//! - read-random: after the fill, memtables flushed and compaction
//!   quiesced, a warm-up pass, then random gets of existing keys from one
//!   thread. read-missing: gets of keys never written.
//! - durable-write-8: 8 threads, each write fsynced before it returns:
//!   Isthmus `FsyncPolicy::Always` (group commit), fjall `insert` followed
//!   by `Database::persist(PersistMode::SyncAll)`.
//! - write_amp: bytes the process passed to write(2) (`wchar` in
//!   /proc/self/io: commit log/journal, tables, manifests, from every
//!   thread) during fill + flush + compaction quiescence, divided by the
//!   same user bytes for both (16 + 100 per write; Isthmus's ~20 extra
//!   bytes of `Version` per entry count against it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_core::engine::{Engine, EngineOptions, FsyncPolicy};
use isthmus_core::model::Version;
use isthmus_testkit::version::dotted;

const VALUE_BYTES: usize = 100;
const CACHE_BYTES: u64 = 256 << 20;
const DURABLE_THREADS: usize = 8;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&splitmix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u64) -> [u8; VALUE_BYTES] {
    let mut v = [0u8; VALUE_BYTES];
    for (j, chunk) in v.chunks_mut(8).enumerate() {
        let x = splitmix(i.wrapping_mul(31).wrapping_add(j as u64)).to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}

fn version(i: u64) -> Version {
    dotted(1, i + 1).at(1_700_000_000_000 + i).value(value(i))
}

fn wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn ops(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Seeded sample of key indexes for reads.
fn read_indexes(n: u64, count: u64, seed: u64) -> Vec<u64> {
    (0..count).map(|j| splitmix(seed ^ j) % n).collect()
}

struct Results {
    fill: f64,
    write_amp: f64,
    read: f64,
    missing: f64,
    durable: f64,
}

fn bench_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

fn isthmus_options(fsync: FsyncPolicy) -> EngineOptions {
    EngineOptions {
        fsync,
        block_cache_bytes: CACHE_BYTES,
        ..EngineOptions::default()
    }
}

fn run_isthmus(base: &Path, n: u64, reads: u64, durable_per_thread: u64) -> Results {
    let dir = bench_dir(base, "isthmus-fill");
    let engine = Engine::open(
        &dir,
        isthmus_options(FsyncPolicy::Interval(Duration::from_secs(1))),
    )
    .expect("open isthmus");
    let w0 = wchar();
    let t = Instant::now();
    for i in 0..n {
        engine.apply(&key(i), version(i)).expect("apply");
    }
    let fill = ops(n, t.elapsed());
    engine.flush().expect("flush");
    // Quiesce: let background compaction finish what the fill triggered.
    while engine.stats().tables_per_level[0] >= EngineOptions::default().l0_compaction_trigger {
        std::thread::sleep(Duration::from_millis(50));
    }
    let write_amp = (wchar() - w0) as f64 / (n * (16 + VALUE_BYTES as u64)) as f64;
    let idx = read_indexes(n, reads, 7);
    for &i in &idx {
        assert!(!engine.get(&key(i)).expect("get").is_empty());
    }
    let t = Instant::now();
    for &i in &idx {
        std::hint::black_box(engine.get(&key(i)).expect("get"));
    }
    let read = ops(reads, t.elapsed());
    let t = Instant::now();
    for j in 0..reads {
        assert!(engine.get(&key(n + 1 + j)).expect("get").is_empty());
    }
    let missing = ops(reads, t.elapsed());
    eprintln!("isthmus stats after reads: {:?}", engine.stats());
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);

    let dir = bench_dir(base, "isthmus-durable");
    let engine = Arc::new(Engine::open(&dir, isthmus_options(FsyncPolicy::Always)).expect("open"));
    let t = Instant::now();
    let threads: Vec<_> = (0..DURABLE_THREADS as u64)
        .map(|th| {
            let e = engine.clone();
            std::thread::spawn(move || {
                for j in 0..durable_per_thread {
                    let i = th * 1_000_000 + j;
                    e.apply(&key(i), version(i)).expect("durable apply");
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("writer");
    }
    let durable = ops(durable_per_thread * DURABLE_THREADS as u64, t.elapsed());
    eprintln!("isthmus durable: log fsyncs {}", engine.stats().log_syncs);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    Results {
        fill,
        write_amp,
        read,
        missing,
        durable,
    }
}

fn run_fjall(base: &Path, n: u64, reads: u64, durable_per_thread: u64) -> Results {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let dir = bench_dir(base, "fjall-fill");
    let db = Database::builder(&dir)
        .cache_size(CACHE_BYTES)
        .open()
        .expect("open fjall");
    let ks = db
        .keyspace("bench", KeyspaceCreateOptions::default)
        .expect("keyspace");
    let w0 = wchar();
    let t = Instant::now();
    for i in 0..n {
        ks.insert(key(i), value(i)).expect("insert");
    }
    let fill = ops(n, t.elapsed());
    db.persist(PersistMode::SyncAll).expect("persist");
    ks.rotate_memtable_and_wait().expect("flush");
    // Quiesce: wait for L0 compactions to settle.
    let mut last = u64::MAX;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        let now = wchar();
        if now == last {
            break;
        }
        last = now;
    }
    let write_amp = (wchar() - w0) as f64 / (n * (16 + VALUE_BYTES as u64)) as f64;
    let idx = read_indexes(n, reads, 7);
    for &i in &idx {
        assert!(ks.get(key(i)).expect("get").is_some());
    }
    let t = Instant::now();
    for &i in &idx {
        std::hint::black_box(ks.get(key(i)).expect("get"));
    }
    let read = ops(reads, t.elapsed());
    let t = Instant::now();
    for j in 0..reads {
        assert!(ks.get(key(n + 1 + j)).expect("get").is_none());
    }
    let missing = ops(reads, t.elapsed());
    eprintln!("fjall tables after reads: {}", ks.table_count());
    drop(ks);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);

    let dir = bench_dir(base, "fjall-durable");
    let db = Database::builder(&dir)
        .cache_size(CACHE_BYTES)
        .open()
        .expect("open fjall");
    let ks = db
        .keyspace("bench", KeyspaceCreateOptions::default)
        .expect("keyspace");
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..DURABLE_THREADS as u64 {
            let (db, ks) = (&db, &ks);
            s.spawn(move || {
                for j in 0..durable_per_thread {
                    let i = th * 1_000_000 + j;
                    ks.insert(key(i), value(i)).expect("insert");
                    db.persist(PersistMode::SyncAll).expect("persist");
                }
            });
        }
    });
    let durable = ops(durable_per_thread * DURABLE_THREADS as u64, t.elapsed());
    drop(ks);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Results {
        fill,
        write_amp,
        read,
        missing,
        durable,
    }
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent; keep
    // that cheap.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("ISTHMUS_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let reads = (n / 2).min(500_000);
    let durable_per_thread = if quick { 50 } else { 1_000 };
    let base = std::env::var_os("ISTHMUS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("isthmus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench base dir");
    let ours = run_isthmus(&base, n, reads, durable_per_thread);
    if std::env::var_os("ISTHMUS_BENCH_ONLY_OURS").is_some() {
        // Profiling aid: skip fjall.
        println!(
            "ours fill={:.0} read={:.0} missing={:.0} durable={:.0} write_amp={:.2}",
            ours.fill, ours.read, ours.missing, ours.durable, ours.write_amp
        );
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    let fj = run_fjall(&base, n, reads, durable_per_thread);
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "write_amp fill-random ours={:.2} fjall={:.2} (wchar bytes / user bytes)",
        ours.write_amp, fj.write_amp
    );
    for (name, a, b) in [
        ("fill-random", ours.fill, fj.fill),
        ("read-random", ours.read, fj.read),
        ("read-missing", ours.missing, fj.missing),
        ("durable-write-8", ours.durable, fj.durable),
    ] {
        println!("ratio {name} {a:.0} {b:.0} {:.2}", a / b);
    }
}
