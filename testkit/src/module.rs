//! The example resolvers' wasm32 modules, as `scripts/build-resolvers.sh`
//! (`cargo build --release --target wasm32-unknown-unknown -p PACKAGE`)
//! leaves them.

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent directory).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where the release wasm32 build of `package` lands in the workspace at
/// `workspace`: under `$CARGO_TARGET_DIR` (a relative one is taken from
/// the workspace) or `<workspace>/target`. The file may not exist.
pub fn built_module(workspace: &Path, package: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    target
        .join("wasm32-unknown-unknown/release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}

/// The bytes of the built module of `package` in this workspace; panics
/// with the command that builds it when it is missing.
pub fn example_module(package: &str) -> Vec<u8> {
    let path = built_module(&workspace(), package);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); build the example resolvers first: \
             bash scripts/build-resolvers.sh",
            path.display()
        )
    })
}
