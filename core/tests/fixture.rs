//! Old-format fixture: an engine directory written once by an earlier
//! build (manifest format 2, table format 1, log format 1) and committed
//! under `tests/fixtures/engine-v2/`. Every later build must open it and
//! read the same data, so a format change that forgets to keep reading
//! (or to bump a version and refuse clearly) fails here.
//!
//! The directory holds keys in an L1 run (compacted), in an L0 table
//! (flushed) and only in the commit log (never flushed), so opening it
//! exercises table reads and log replay.
//!
//! Regenerate (only when deliberately adding a new fixture version, never
//! to make this test pass): `ISTHMUS_WRITE_FIXTURE=1 cargo test -p
//! isthmus-core --test fixture`.

use std::path::{Path, PathBuf};

use isthmus_core::engine::{Engine, EngineOptions, FsyncPolicy};
use isthmus_testkit::version::dotted;

const FIXTURE: &str = "tests/fixtures/engine-v2";

/// Every fixture version's timestamp.
const FIXTURE_TS: u64 = 1_700_000_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

fn options() -> EngineOptions {
    EngineOptions {
        fsync: FsyncPolicy::Always,
        ..EngineOptions::default()
    }
}

/// One version as (actor, counter, value).
type Written = (u64, u64, String);

/// (key, versions it holds), as written.
fn expected() -> Vec<(String, Vec<Written>)> {
    let mut out = Vec::new();
    for i in 0..50u64 {
        out.push((
            format!("l1-{i:03}"),
            vec![(1, i + 1, format!("compacted {i}"))],
        ));
        out.push((
            format!("l0-{i:03}"),
            vec![(2, i + 1, format!("flushed {i}"))],
        ));
        out.push((
            format!("log-{i:03}"),
            vec![(3, i + 1, format!("logged {i}"))],
        ));
    }
    // Concurrent siblings, split across a table and the log.
    out.push((
        "siblings".to_owned(),
        vec![(4, 1, "left".to_owned()), (5, 1, "right".to_owned())],
    ));
    out
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let engine = Engine::open(dir, options()).expect("open");
    let all = expected();
    let put = |prefix: &str| {
        for (k, vs) in all.iter().filter(|(k, _)| k.starts_with(prefix)) {
            for (a, c, v) in vs {
                engine
                    .apply(k.as_bytes(), dotted(*a, *c).at(FIXTURE_TS).value(v))
                    .expect("apply");
            }
        }
    };
    put("l1-");
    engine
        .apply(b"siblings", dotted(4, 1).at(FIXTURE_TS).value("left"))
        .expect("apply");
    engine.compact().expect("compact");
    put("l0-");
    engine.flush().expect("flush");
    put("log-");
    engine
        .apply(b"siblings", dotted(5, 1).at(FIXTURE_TS).value("right"))
        .expect("apply");
    // Closing syncs the log but does not flush: the last writes stay
    // only in the log.
    engine.close().expect("close");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[test]
fn fixture_from_an_earlier_build_opens_and_reads() {
    if std::env::var_os("ISTHMUS_WRITE_FIXTURE").is_some() {
        write_fixture(&fixture_dir());
    }
    // Opening replays and rewrites: work on a copy.
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture_dir(), tmp.path());
    let engine = Engine::open(tmp.path(), options()).expect("open the fixture");
    for (k, want) in expected() {
        let set = engine.get(k.as_bytes()).expect("get");
        let mut got: Vec<Written> = set
            .versions()
            .iter()
            .map(|v| {
                // One actor per clock here; normalisation may hold it as
                // a vector entry or as a dot.
                let (actor, counter) = match v.clock.vector().iter().next() {
                    Some((a, n)) => (*a, *n),
                    None => {
                        let d = v.clock.dots().iter().next().expect("a dot");
                        (d.actor, d.counter)
                    }
                };
                let value = String::from_utf8(v.value_bytes().expect("value").to_vec());
                (actor.0, counter, value.expect("utf8"))
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{k}");
    }
    assert_eq!(
        engine.scan::<&[u8], _>(..).expect("scan").count(),
        expected().len()
    );
    engine.close().expect("close");
}
