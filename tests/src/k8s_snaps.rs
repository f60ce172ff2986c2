//! The three snaps a Kubernetes node installs, as stand-ins the tests can build: `snapd`, the `core22` base and
//! `k8s` (the double, [`crate::k8s_double::snap`]). Real squashfs snaps (built with [`SnapBuilder`]) that the
//! node's real Debian snapd installs offline; unasserted, since nothing here can sign for the store.
//!
//! - `snapd` (type snapd): Debian's own snapd files repackaged, read out of the Kubernetes node base's layer, so
//!   they are the very bytes the image runs. Offline, Debian's snapd installs no snap with a base before the snapd
//!   snap is installed (shared/notes/canonical-kubernetes.md, "Tried here").
//! - `core22` (type base): the base the real k8s snap names (k8s-snap snap/snapcraft.yaml, `base: core22`); only
//!   its snap.yaml: a classic snap runs on the host's root, so nothing of the base is used.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::rocks::{k8s_node_base_layout, layout_digest};
use crate::snap::{BuiltSnap, SnapBuilder};

/// The base the real k8s snap is built on (canonical/k8s-snap snap/snapcraft.yaml).
pub const K8S_BASE: &str = "core22";

/// What of Debian's snapd package goes into the snapd snap, as paths in the node base's layer: snapd's folder,
/// the `snap` command, and snap-confine's AppArmor profile (installed by the deb as `...snap-confine.real`; the
/// snapd snap carries it as `usr.lib.snapd.snap-confine`).
const SNAPD_DIR: &str = "usr/lib/snapd/";
const SNAP_COMMAND: &str = "usr/bin/snap";
const APPARMOR_DEB: &str = "etc/apparmor.d/usr.lib.snapd.snap-confine.real";
const APPARMOR_SNAP: &str = "etc/apparmor.d/usr.lib.snapd.snap-confine";

/// The node base's one layer blob, from its OCI layout (index → manifest → the layer).
fn base_layer() -> PathBuf {
    let layout = k8s_node_base_layout();
    let digest = layout_digest(&layout, "bookworm-kubernetes");
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&digest)).expect("read the manifest"))
            .expect("manifest json");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(
        layers.len(),
        1,
        "the Kubernetes node base has one layer: {manifest}"
    );
    let layer = &layers[0];
    assert_eq!(
        layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "{manifest}"
    );
    blob(layer["digest"].as_str().expect("layer digest"))
}

/// Debian's snapd files out of the node base's layer: (path in the snap, bytes, mode).
fn debian_snapd_files() -> Vec<(String, Vec<u8>, u32)> {
    let file = std::fs::File::open(base_layer()).expect("open the node base's layer");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = Vec::new();
    for entry in archive.entries().expect("read the layer") {
        let mut entry = entry.expect("a layer entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().expect("entry path").display().to_string();
        let path = path.trim_start_matches("./").to_string();
        let target = if path.starts_with(SNAPD_DIR) || path == SNAP_COMMAND {
            path
        } else if path == APPARMOR_DEB {
            APPARMOR_SNAP.to_string()
        } else {
            continue;
        };
        let mode = entry.header().mode().expect("entry mode");
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read an entry");
        files.push((target, bytes, mode));
    }
    for needed in [
        "usr/lib/snapd/snapd",
        "usr/lib/snapd/info",
        SNAP_COMMAND,
        APPARMOR_SNAP,
    ] {
        assert!(
            files.iter().any(|(p, _, _)| p == needed),
            "the Kubernetes node base has no /{needed}"
        );
    }
    files
}

/// `VERSION=...` of snapd's `usr/lib/snapd/info`.
fn snapd_version(files: &[(String, Vec<u8>, u32)]) -> String {
    let info = files
        .iter()
        .find(|(p, _, _)| p == "usr/lib/snapd/info")
        .map(|(_, b, _)| String::from_utf8_lossy(b).to_string())
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .unwrap_or_else(|| panic!("no VERSION= in usr/lib/snapd/info: {info}"))
        .to_string()
}

/// The snapd snap, repackaged from the node base's Debian snapd.
pub fn snapd_builder() -> SnapBuilder {
    let files = debian_snapd_files();
    let mut b = SnapBuilder::new("snapd")
        .kind("snapd")
        .yaml("summary: Debian's snapd, repackaged as the snapd snap (cairn e2e stand-in)\n");
    b.version = snapd_version(&files);
    b.files = files;
    b
}

/// The stand-in base: its snap.yaml alone.
pub fn base_builder() -> SnapBuilder {
    let mut b = SnapBuilder::new(K8S_BASE)
        .kind("base")
        .yaml("summary: 'stand-in for the core22 base (cairn e2e), no files'\n");
    b.version = "stand-in".into();
    b
}

/// The three snaps, built into `dir`, in the order a profile may list them (the builder orders them anyway).
pub fn build_all(dir: &Path) -> Vec<BuiltSnap> {
    vec![
        crate::k8s_double::snap().build(dir),
        base_builder().build(dir),
        snapd_builder().build(dir),
    ]
}

/// The `[[snap]]` tables for `snaps` (files beside the profile in `profile_dir`), all `unasserted = true`.
pub fn profile_entries(profile_dir: &Path, snaps: &[BuiltSnap]) -> String {
    snaps
        .iter()
        .map(|s| crate::snap::profile_entry(profile_dir, s, None))
        .collect::<Vec<_>>()
        .join("\n")
}
