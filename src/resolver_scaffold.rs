//! `isthmus resolver new` and `isthmus resolver build`: a resolver crate
//! that builds as it stands, and its build to wasm32 followed by the law
//! checker.
//!
//! The scaffold is a standalone crate (its own empty `[workspace]` table,
//! so it builds anywhere, inside another workspace's tree too): the SDK as
//! a version dependency (`--sdk-path` writes a path dependency instead),
//! `crate-type = ["cdylib", "rlib"]`, a release profile for small modules,
//! `.cargo/config.toml` with a 16 KiB shadow stack (see the stack advice in
//! `isthmus_sdk_wasm`'s docs), a set-union merge with a sampler, a unit test
//! running the native law checker, and a README.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why `resolver new` refused.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not usable as a crate and resolver name.
    #[error("bad resolver name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory exists and holds something.
    #[error("{} exists and is not empty; choose another --dir", path.display())]
    DirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// Writing a file failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why `resolver build` did not produce a checked module.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `cargo` could not be started.
    #[error("cannot run {cargo}: {source}")]
    Spawn {
        /// The cargo binary tried.
        cargo: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `cargo build` failed (its output went to the terminal).
    #[error("cargo build failed ({status})")]
    Failed {
        /// Cargo's exit status.
        status: std::process::ExitStatus,
    },
    /// The build succeeded but produced no `.wasm` (not a `cdylib`?).
    #[error("the build produced no .wasm file (does Cargo.toml say crate-type = [\"cdylib\", …]?)")]
    NoModule,
}

/// Longest accepted name (the registry's names are short, too).
const NAME_BYTES_MAX: usize = 64;

/// Names cargo refuses for a package, or that would shadow a standard
/// crate in `use` paths.
const RESERVED: &[&str] = &[
    "alloc",
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
];

/// A name that is both a cargo package name and a resolver name: an ASCII
/// letter, then letters, digits, `-` or `_`, at most 64 bytes.
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let bad = |reason| {
        Err(ScaffoldError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return bad("it is longer than 64 bytes");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("it must start with an ASCII letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad("only ASCII letters, digits, '-' and '_' are allowed");
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        return bad("it is a Rust keyword or a standard crate's name");
    }
    Ok(())
}

/// Where the scaffold takes the SDK from.
#[derive(Debug, Clone)]
pub enum SdkSource {
    /// `isthmus-sdk-wasm = "0.1"` from the registry.
    Version,
    /// A path dependency on a local checkout's `sdk-wasm`.
    Path(PathBuf),
}

/// Write a new resolver crate named `name` into `dir` (created if missing;
/// refused if it exists and is not empty). Returns the files written,
/// relative to `dir`.
pub fn scaffold(
    name: &str,
    dir: &Path,
    sdk: &SdkSource,
) -> Result<Vec<&'static str>, ScaffoldError> {
    validate_name(name)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ScaffoldError::Io { path, source }
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ScaffoldError::DirNotEmpty { path: dir.into() });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let crate_name = name.replace('-', "_");
    let sdk_dep = match sdk {
        SdkSource::Version => "isthmus-sdk-wasm = \"0.1\"".to_owned(),
        SdkSource::Path(p) => {
            let p = std::path::absolute(p).map_err(io(p))?;
            format!(
                "isthmus-sdk-wasm = {{ path = {:?} }}",
                p.display().to_string()
            )
        }
    };
    let files: [(&'static str, String); 5] = [
        ("Cargo.toml", cargo_toml(name, &sdk_dep)),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        ("src/lib.rs", LIB_RS.to_owned()),
        ("README.md", readme(name, &crate_name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(files.iter().map(|(rel, _)| *rel).collect())
}

fn cargo_toml(name: &str, sdk_dep: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A cdylib is the .wasm module; the rlib lets `cargo test` call `merge`
# natively.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
{sdk_dep}

# Resolver modules are uploaded to clusters and capped in size; every basic
# block also pays fuel accounting, so inlining across crates pays.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
debug = false

# A crate of its own: it builds wherever it lies, inside another
# workspace's tree too.
[workspace]
"#
    )
}

const CARGO_CONFIG: &str = r#"# A 16 KiB shadow stack instead of rustc's 1 MiB: the stack sits first in
# linear memory, so a small one keeps what a merge touches within the pages
# the host keeps resident between merges (see the isthmus-sdk-wasm docs,
# "Stack size"). Raise it if a merge recurses deeply; overflowing it traps,
# it never corrupts the heap.
[target.wasm32-unknown-unknown]
rustflags = ["-C", "link-arg=-zstack-size=16384"]
"#;

const LIB_RS: &str = r#"//! An Isthmus resolver: the merged value is the union of the siblings'
//! sets, a set being newline-separated items (kept sorted, without
//! duplicates). A union is a join (commutative, associative, idempotent),
//! so replicas that merge different subsets in different orders agree.
//! A tombstone sibling is ignored (a delete never wins over concurrent
//! adds); when every sibling is a tombstone, the merge is a delete.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use isthmus_sdk_wasm::{MergeError, Merged, Sibling, export_merge};

/// The union of the siblings' item sets.
pub fn merge(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
    let mut items: BTreeSet<&[u8]> = BTreeSet::new();
    let mut any_value = false;
    for value in siblings.iter().filter_map(Sibling::value) {
        any_value = true;
        items.extend(value.split(|&b| b == b'\n').filter(|item| !item.is_empty()));
    }
    if !any_value {
        return Ok(Merged::Delete);
    }
    Ok(Merged::Value(encode(items)))
}

/// Items joined by newlines, in order.
fn encode<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(item);
    }
    out
}

/// A value in this resolver's domain (a canonical set of one to three
/// items) derived from `seed`: the law checker merges these instead of
/// random bytes.
pub fn sample(seed: u64) -> Vec<u8> {
    let mut items = BTreeSet::new();
    for i in 0..seed % 3 + 1 {
        let n = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(i as u32 * 7) % 8;
        items.insert([b'a' + n as u8]);
    }
    encode(items.iter().map(|i| &i[..]))
}

export_merge!(merge, sample = sample);

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_sdk_wasm::laws::{Options, check};

    #[test]
    fn the_union_keeps_every_item_once() {
        let s = [Sibling::of_value(b"b\na", 1), Sibling::of_value(b"c\na", 2)];
        assert_eq!(merge(b"k", &s).unwrap(), Merged::Value(b"a\nb\nc".to_vec()));
    }

    #[test]
    fn tombstones_alone_make_a_delete() {
        let s = [Sibling::of_tombstone(1), Sibling::of_tombstone(2)];
        assert_eq!(merge(b"k", &s).unwrap(), Merged::Delete);
    }

    /// The same laws, cases and seeds `isthmus resolver check` runs on the
    /// built module, here on the native function.
    #[test]
    fn the_merge_obeys_the_laws() {
        let report = check(merge, Some(sample), &Options::default());
        assert!(report.passed(), "{report}");
    }
}
"#;

fn readme(name: &str, crate_name: &str) -> String {
    format!(
        r#"# {name}

An Isthmus resolver (merge function): the union of newline-separated item
sets. Edit `merge` in `src/lib.rs`; keep it a join (commutative,
associative, idempotent) or replicas will not agree.

## Test

    cargo test

runs the unit tests natively, the law checker (`isthmus_sdk_wasm::laws`)
among them.

## Build and check

    isthmus resolver build

builds the module (`cargo build --release --target wasm32-unknown-unknown`,
which needs `rustup target add wasm32-unknown-unknown`), runs the law
checker on it in the same host a node runs, and prints where the module is:
`target/wasm32-unknown-unknown/release/{crate_name}.wasm`. To check a built
module again: `isthmus resolver check target/wasm32-unknown-unknown/release/{crate_name}.wasm`.

## Call it once

    isthmus resolver call target/wasm32-unknown-unknown/release/{crate_name}.wasm --siblings '["a\nb", "b\nc"]'

prints the merged value, the fuel used, the time and any lines the module
logged (`isthmus_sdk_wasm::log`).

## Upload and attach

    isthmus resolver upload --addr NODE:7401 --name {name} --version 1 target/wasm32-unknown-unknown/release/{crate_name}.wasm
    isthmus resolver attach --addr NODE:7401 --keyspace KEYSPACE {name}@1

The node runs the law checker again at upload and refuses a module that
fails it. A name and version hold one module forever: upload a change as a
new version, attach it, and `isthmus resolver rollback --keyspace KEYSPACE`
to return to the previous one.
"#
    )
}

/// The cargo binary: `$CARGO` when set (cargo sets it for the processes
/// it runs), else `cargo` from the `PATH`.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo build --release --target wasm32-unknown-unknown` in the crate at
/// `dir`; cargo's diagnostics go to stderr. Returns the `.wasm` it built.
pub fn build(dir: &Path) -> Result<PathBuf, BuildError> {
    let cargo = cargo();
    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BuildError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(BuildError::Failed {
            status: output.status,
        });
    }
    wasm_artifact(&String::from_utf8_lossy(&output.stdout)).ok_or(BuildError::NoModule)
}

/// The last `.wasm` file among the compiler-artifact messages of a
/// `cargo build --message-format=json` run (the crate's own comes last).
fn wasm_artifact(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .find_map(|m| {
            m["filenames"]
                .as_array()?
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_and_resolver_names() {
        for good in ["cart", "my-cart", "set_union2", "A"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "2cart", "-x", "a.b", "a b", "café", "test", "self", "std",
        ] {
            assert!(
                matches!(validate_name(bad), Err(ScaffoldError::BadName { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn a_non_empty_dir_is_refused_and_an_empty_one_filled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = scaffold("cart", dir.path(), &SdkSource::Version).unwrap_err();
        assert!(matches!(err, ScaffoldError::DirNotEmpty { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
        assert!(!dir.path().join("Cargo.toml").exists());

        let empty = tempfile::tempdir().unwrap();
        let files = scaffold("cart", empty.path(), &SdkSource::Version).unwrap();
        assert!(files.contains(&"src/lib.rs"));
        let manifest = std::fs::read_to_string(empty.path().join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("isthmus-sdk-wasm = \"0.1\""),
            "{manifest}"
        );
        assert!(manifest.contains("[workspace]"), "{manifest}");
        let config = std::fs::read_to_string(empty.path().join(".cargo/config.toml")).unwrap();
        assert!(config.contains("-zstack-size=16384"), "{config}");
    }

    #[test]
    fn the_built_wasm_is_found_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","filenames":["/t/libpostcard.rlib"]}
{"reason":"compiler-artifact","filenames":["/t/cart.wasm","/t/libcart.rlib"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(wasm_artifact(messages), Some(PathBuf::from("/t/cart.wasm")));
        assert_eq!(wasm_artifact("not json\n"), None);
    }
}
