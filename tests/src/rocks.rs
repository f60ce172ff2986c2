//! The rocks the project's own recipes build (`rocks/`), pushed once per test binary to its shared registry.
//!
//! - the node base (`rocks/node-base/build`): `CAIRN_NODE_BASE_LAYOUT` names its OCI layout;
//! - the Kubernetes node base (`rocks/node-base/build --kubernetes`, with snapd): `CAIRN_K8S_NODE_BASE_LAYOUT`;
//! - the sandbox rock (`rocks/pause/build`): `CAIRN_PAUSE_LAYOUT` names its OCI layout (an index).
//!
//! tests/run.sh builds them and sets the variables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::cairn::run_cairn;
use crate::registry;

fn layout(var: &str, recipe: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} must name the OCI layout {recipe} writes: run the suite with tests/run.sh")
    });
    assert!(
        dir.join("index.json").is_file(),
        "{} holds no OCI layout: run {recipe}",
        dir.display()
    );
    dir
}

/// The node base's OCI layout.
pub fn node_base_layout() -> PathBuf {
    layout("CAIRN_NODE_BASE_LAYOUT", "rocks/node-base/build")
}

/// The Kubernetes node base's OCI layout (snapd, containerd not enabled).
pub fn k8s_node_base_layout() -> PathBuf {
    layout(
        "CAIRN_K8S_NODE_BASE_LAYOUT",
        "rocks/node-base/build --kubernetes",
    )
}

/// The sandbox rock's OCI layout.
pub fn pause_layout() -> PathBuf {
    layout("CAIRN_PAUSE_LAYOUT", "rocks/pause/build")
}

/// The digest tagged `tag` in a layout's index.json.
pub fn layout_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("json");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {}", layout.display()))
        .to_string()
}

/// Copies `layout:tag` unchanged (an index with its manifests) to the shared registry as `repo:tag`; returns
/// the pinned reference.
fn push(layout: &Path, tag: &str, repo: &str) -> String {
    let digest = layout_digest(layout, tag);
    let reference = format!("{}/{repo}:{tag}", registry::shared().addr());
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{reference}"),
    ]));
    format!("{reference}@{digest}")
}

/// The node base rock in this test binary's shared registry, pinned.
pub fn node_base() -> String {
    static PINNED: OnceLock<String> = OnceLock::new();
    PINNED
        .get_or_init(|| push(&node_base_layout(), "bookworm", "cairn/node-base"))
        .clone()
}

/// The Kubernetes node base rock in this test binary's shared registry, pinned.
pub fn k8s_node_base() -> String {
    static PINNED: OnceLock<String> = OnceLock::new();
    PINNED
        .get_or_init(|| {
            push(
                &k8s_node_base_layout(),
                "bookworm-kubernetes",
                "cairn/node-base",
            )
        })
        .clone()
}

/// The sandbox rock in this test binary's shared registry, pinned to its index.
pub fn pause() -> String {
    static PINNED: OnceLock<String> = OnceLock::new();
    PINNED
        .get_or_init(|| push(&pause_layout(), "3.10", "canonical/k8s-snap/pause"))
        .clone()
}

/// `cairn build PROFILE --out OUT --cache CACHE`, which must succeed.
pub fn build_profile(profile: &Path, out: &Path, cache: &Path) {
    let o = run_cairn(crate::cairn::build_args(profile, out, cache), &[]);
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
