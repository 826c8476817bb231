//! The resolver author's loop, through the `isthmus` binary: `resolver new`
//! scaffolds a crate outside this workspace, `resolver build` builds it to
//! wasm32 and runs the law checker, `resolver call` runs one merge of the
//! built module (printing what it logged), and the scaffold's own
//! `cargo test` runs its unit tests and the native law checker. Bad names
//! and non-empty directories are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::scaffold_target;

fn isthmus(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .output()
        .expect("run isthmus");
    eprintln!(
        "$ isthmus {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk-wasm")
}

#[test]
fn a_scaffolded_resolver_builds_checks_calls_and_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tag-set");
    let dir_s = dir.display().to_string();
    let sdk = sdk_path().display().to_string();

    let out = isthmus(&[
        "resolver",
        "new",
        "tag-set",
        "--dir",
        &dir_s,
        "--sdk-path",
        &sdk,
    ]);
    assert!(out.status.success());
    for f in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "README.md",
    ] {
        assert!(dir.join(f).is_file(), "{f} not written");
    }
    // Use the repository's lock file, so the build resolves the same
    // dependency versions this workspace was tested with.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    // Log from the merge, to see the line come back through `call`.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let logged = source.replacen(
        "    if !any_value {",
        "    isthmus_sdk_wasm::log(\"union of some sets\");\n    if !any_value {",
        1,
    );
    assert_ne!(source, logged, "the scaffold's merge changed shape");
    std::fs::write(&lib, logged).unwrap();

    // Refused: the same directory again, and a bad name.
    let again = isthmus(&["resolver", "new", "tag-set", "--dir", &dir_s]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        text(&again.stderr)
    );
    let other = tmp.path().join("other").display().to_string();
    let bad = isthmus(&["resolver", "new", "2tags", "--dir", &other]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("bad resolver name"),
        "{}",
        text(&bad.stderr)
    );
    assert!(!tmp.path().join("other").exists());

    // Build: wasm32, then the law checker on the module.
    let out = isthmus(&["resolver", "build", "--dir", &dir_s, "--seed", "7"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains("guest log:"), "{stdout}");
    let module = stdout
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .expect("build prints the module's path");
    assert!(module.ends_with("tag_set.wasm"), "{module}");
    let bytes = std::fs::read(module).unwrap();
    assert!(bytes.starts_with(b"\0asm"));

    // Call: one merge of the built module.
    let out = isthmus(&[
        "resolver",
        "call",
        module,
        "--siblings",
        r#"["b\na", "c\nb", null]"#,
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(r#"output: value "a\nb\nc""#), "{stdout}");
    assert!(stdout.contains("log: union of some sets"), "{stdout}");

    // The scaffold's own tests, natively: its unit tests and the law
    // checker on the plain function.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("3 passed"), "{stdout}");
}

#[test]
fn build_fails_with_status_2_where_there_is_no_crate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let out = isthmus(&["resolver", "build", "--dir", &dir]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cargo build failed"),
        "{}",
        text(&out.stderr)
    );
}
