//! The Kubernetes manifests (`deploy/kubernetes/`) validate against the
//! Kubernetes API schemas, strictly (no unknown field), with the
//! `kubernetes-validate` tool from PyPI (`pip install kubernetes-validate`;
//! `.ci/run` installs it). Without the tool the test is skipped with a
//! message, except in CI (`CI=true`), where it fails.
//!
//! (The node configuration inside the ConfigMaps is checked by the
//! binary's own tests, `server_cmd`, through the same loader as
//! `isthmus server`.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifests(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
}

#[test]
fn every_kubernetes_manifest_validates_against_the_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files = Vec::new();
    manifests(&root, &mut files);
    files.sort();
    for dc in ["dc1", "dc2"] {
        for kind in [
            "statefulset.yaml",
            "services.yaml",
            "pdb.yaml",
            "configmap.yaml",
            "rbac.yaml",
        ] {
            let want = root.join(dc).join(kind);
            assert!(files.contains(&want), "{} is missing", want.display());
        }
    }
    let run = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(&files)
        .output();
    let output = match run {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "kubernetes-validate is not installed (CI=true): pip install kubernetes-validate"
            );
            eprintln!(
                "SKIPPED: kubernetes-validate is not installed; \
                 `pip install kubernetes-validate` to validate the manifests"
            );
            return;
        }
        Err(e) => panic!("running kubernetes-validate: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubernetes-validate refused a manifest:\n{stdout}\n{stderr}"
    );
    // Every file was judged (an empty or unparsable file is not a pass).
    for file in &files {
        let shown = file.display().to_string();
        assert!(
            stdout.contains(&format!("{shown} passed"))
                || stderr.contains(&format!("{shown} passed")),
            "{shown} was not validated:\n{stdout}\n{stderr}"
        );
    }
}
