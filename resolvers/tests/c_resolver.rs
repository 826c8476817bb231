//! A resolver written in C against the ABI docs alone
//! (`examples/resolvers/c-max`), built with clang and wasm-ld (Debian's
//! `clang` and `lld`, installed by `.ci/run`): it loads, passes the law
//! checker, merges (greatest value; all tombstones: a delete), and refuses
//! input that is not a `MergeInput` with a guest error rather than a trap.

mod common;

use std::path::Path;
use std::process::Command;

use common::small_host;
use isthmus_resolvers::check::{CheckOptions, check};
use isthmus_sdk_wasm::{Merged, Sibling};

/// The module, built by its own build script into a temporary directory;
/// `None` (outside CI) when clang cannot target wasm32 here.
fn build(dir: &Path) -> Option<Vec<u8>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resolvers/c-max/build.sh");
    let out = dir.join("c_max.wasm");
    let run = Command::new("bash").arg(&script).arg(&out).output();
    match run {
        Ok(o) if o.status.success() => Some(std::fs::read(&out).unwrap()),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must build the C resolver (apt-get install clang lld): {why}"
            );
            eprintln!("the C resolver was not built here: {why}");
            None
        }
    }
}

#[test]
fn a_resolver_in_c_builds_passes_the_laws_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let Some(module) = build(dir.path()) else {
        return;
    };
    let host = small_host();
    let resolver = host.load(&module).expect("the C module loads");
    let report = check(
        &host,
        &resolver,
        &CheckOptions {
            seed: Some(7),
            cases_per_size: 32,
            ..CheckOptions::default()
        },
    )
    .unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.rejected, 0, "{report}");
    assert!(report.merges > 100, "{report}");

    let merged = host
        .merge_siblings(
            &resolver,
            b"k",
            &[
                Sibling::of_value(b"pear", 1).with_origin("dc2"),
                Sibling::of_tombstone(2),
                Sibling::of_value(b"apple", 3),
                Sibling::of_value(b"plum", 4),
            ],
        )
        .unwrap();
    assert_eq!(merged, Merged::Value(b"apple".to_vec()));
    let merged = host
        .merge_siblings(
            &resolver,
            b"k",
            &[Sibling::of_tombstone(1), Sibling::of_tombstone(2)],
        )
        .unwrap();
    assert_eq!(merged, Merged::Delete);

    // Bytes that are not a MergeInput: the guest's own error (output
    // variant 2, code 1, its message), not a trap.
    let output = host.merge_raw(&resolver, &[0x05, 0x01]).unwrap();
    assert_eq!(&output[..2], &[2, 1], "not the guest's error: {output:?}");
    assert!(
        String::from_utf8_lossy(&output).contains("not a MergeInput"),
        "{output:?}"
    );
}
