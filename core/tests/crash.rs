//! Process-crash test: a child process writes from several threads and
//! prints every acknowledged key; the parent SIGKILLs it at seeded random
//! moments, reopens the store, and requires every acknowledged key to be
//! there. It runs once with `FsyncPolicy::Always` and once with
//! `FsyncPolicy::Interval`: SIGKILL is a process crash, not a power loss,
//! so even a write acknowledged before any fsync must survive it (the OS
//! still has it).
//!
//! The child is this same test binary, re-executed with
//! `ISTHMUS_CRASH_CHILD=<dir>` to run only `crash_child_writer`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use isthmus_core::engine::{Engine, EngineOptions, FsyncPolicy};
use isthmus_core::limit::Limits;
use isthmus_testkit::version::dotted;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "ISTHMUS_CRASH_CHILD";
const ROUND_ENV: &str = "ISTHMUS_CRASH_ROUND";
/// "always" or "interval": the child's fsync policy.
const POLICY_ENV: &str = "ISTHMUS_CRASH_POLICY";
const THREADS: u64 = 4;
const SEED: u64 = 0x15_7405_c4a5;

fn options(policy: &str) -> EngineOptions {
    EngineOptions {
        limits: Limits {
            // Small memtables so that kills also land in flushes and
            // compactions, not only in log appends.
            memtable_bytes_max: 64 * 1024,
            ..Limits::default()
        },
        fsync: match policy {
            // Never fsynced by the interval thread during a round.
            "interval" => FsyncPolicy::Interval(Duration::from_secs(3600)),
            _ => FsyncPolicy::Always,
        },
        l0_compaction_trigger: 3,
        compaction_bytes_per_s: 0,
        ..EngineOptions::default()
    }
}

/// Child mode: write until killed. A no-op in a normal test run.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let policy = std::env::var(POLICY_ENV).unwrap_or_default();
    let engine = Arc::new(Engine::open(Path::new(&dir), options(&policy)).expect("child open"));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = engine.clone();
            std::thread::spawn(move || {
                let actor = round * 100 + t + 1;
                for i in 0..1_000_000u64 {
                    let key = format!("r{round}-t{t}-{i}");
                    e.apply(key.as_bytes(), dotted(actor, i + 1).value([b'v'; 64]))
                        .expect("apply");
                    // println! takes the stdout lock for the whole line.
                    println!("ack {key}");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn crash_rounds_lose_no_acknowledged_write() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    crash_rounds("always", 24);
}

#[test]
fn crash_rounds_lose_no_acknowledged_write_with_interval_fsync() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    crash_rounds("interval", 12);
}

fn crash_rounds(policy: &str, default_rounds: u64) {
    let rounds: u64 = std::env::var("ISTHMUS_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default_rounds);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut acked: Vec<String> = Vec::new();
    let mut lost = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .env(POLICY_ENV, policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut keys = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut by the kill was never fully acknowledged.
                if line.ends_with(b"\n")
                    && let Some(k) = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|l| l.trim_end().strip_prefix("ack "))
                {
                    keys.push(k.to_owned());
                }
            }
            keys
        });
        let wait_ms = rng.random_range(40..400);
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().expect("SIGKILL child");
        let _ = child.wait();
        let round_keys = reader.join().expect("reader thread");
        acked.extend(round_keys);
        let engine = Engine::open(dir.path(), options(policy))
            .unwrap_or_else(|e| panic!("reopen after round {round} (seed {SEED:#x}): {e}"));
        for k in &acked {
            let set = engine.get(k.as_bytes()).expect("get");
            if set.is_empty() {
                lost += 1;
                eprintln!("lost {k} after round {round} (seed {SEED:#x})");
            }
        }
        engine.close().expect("close");
    }
    println!(
        "crash {policy}: rounds={rounds} acked={} lost={lost}",
        acked.len()
    );
    assert!(
        acked.len() as u64 > rounds,
        "the child acknowledged too little to test"
    );
    assert_eq!(
        lost, 0,
        "acknowledged writes lost ({policy}, seed {SEED:#x})"
    );
}
