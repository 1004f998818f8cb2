//! The CRDs in `deploy/kustomize/base/crds/` are exactly what the Rust types generate.

mod common;

use std::path::PathBuf;

use static_macvlan_operator::crd::{crd_files, crds_yaml, CRD_DIR, REGENERATE};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_types() {
    let dir = repo_root().join(CRD_DIR);
    let mut drift = Vec::new();
    for (name, want) in crd_files().expect("render CRDs") {
        let path = dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => drift.push(format!("{} differs", path.display())),
            Err(e) => drift.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        drift.is_empty(),
        "the CRD files are out of date with the Rust types:\n  {}\nregenerate them from the repository root with:\n  {REGENERATE}",
        drift.join("\n  ")
    );
}

#[test]
fn crds_command_prints_all_four() {
    let r = common::run(&["crds"], None, &[]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, crds_yaml().unwrap());
    assert_eq!(
        r.stdout.matches("kind: CustomResourceDefinition").count(),
        4
    );
    for plural in [
        "vlansubnets",
        "macpools",
        "allocationrules",
        "macvlanendpoints",
    ] {
        assert!(
            r.stdout
                .contains(&format!("name: {plural}.staticmacvlan.io")),
            "{plural}"
        );
    }
}

#[test]
fn write_dir_writes_the_generated_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("crds");
    let r = common::run(
        &["crds", "--write-dir", target.to_str().unwrap()],
        None,
        &[],
    );
    assert_eq!(r.code, 0, "{r}");
    for (name, want) in crd_files().unwrap() {
        assert_eq!(
            std::fs::read_to_string(target.join(&name)).unwrap(),
            want,
            "{name}"
        );
    }
}

/// kustomize must accept the directory. Needs `kubectl`; skipped (with a note) without it, as
/// it is a deployment tool rather than a build dependency.
#[test]
fn kustomize_builds_the_crd_directory() {
    let out = match std::process::Command::new("kubectl")
        .args(["kustomize", repo_root().join(CRD_DIR).to_str().unwrap()])
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("kubectl not installed: kustomize check skipped");
            return;
        }
        Err(e) => panic!("run kubectl: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("kind: CustomResourceDefinition").count(),
        4,
        "{stdout}"
    );
}
