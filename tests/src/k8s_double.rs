//! The k8s double (tests/k8s-double, crate `cairn-k8s-double`) packaged as the `k8s` snap, and the test rock that
//! shows a booted node's state on its console. A TEST DOUBLE: it runs no Kubernetes and never belongs in
//! `profiles/`.
//!
//! The snap ([`snap`]): the static double at `bin/k8s`, so `/snap/bin/k8s` is the node's `k8s` command, with a
//! `meta/snap.yaml` modelled on the real snap's (canonical/k8s-snap snap/snapcraft.yaml: `confinement: classic`,
//! `base: core22`, the `k8s` command and the daemons with their `daemon`, `install-mode`, ordering and restart
//! keys). Its containerd and kubelet are stand-ins the double starts as k8sd does (`snap start --enable
//! k8s.containerd k8s.kubelet`); the other daemons are declared, never started, and say so if they are.
//!
//! The rock ([`layer`]): two oneshot units ordered after `cairn-kubernetes.service` that print, between marker
//! lines, containerd's `k8s.io` images, and the node's snaps with the state of its containerd units.

use std::path::PathBuf;

use crate::image::{Compression, Image, LayerBuilder};
use crate::push::push_image;
use crate::registry::Registry;
use crate::snap::SnapBuilder;

pub const UNIT_NAME: &str = "k8s-double-images.service";
pub const SNAPS_UNIT_NAME: &str = "k8s-double-snaps.service";
/// The repository the rock is pushed to.
pub const REPOSITORY: &str = "e2e/k8s-double";
pub const TAG: &str = "v1";
/// The cargo command that builds what [`double_bin`] looks for.
pub const BUILD_COMMAND: &str =
    "cargo build --release -p cairn-k8s-double --target x86_64-unknown-linux-musl";

/// The unit: `k8s-double: images`, then `ctr`'s table of the `k8s.io` namespace, then `k8s-double: images end`
/// (only when `ctr` succeeds), on the console.
pub const UNIT: &str = "\
# Test double only (cairn e2e): lists containerd's k8s.io images on the console after cairn's kubernetes phase.
[Unit]
Description=k8s-double: containerd k8s.io images on the console
After=cairn-kubernetes.service

[Service]
Type=oneshot
ExecStartPre=/bin/echo \"k8s-double: images\"
ExecStart=/usr/bin/ctr -n k8s.io images ls
ExecStartPost=/bin/echo \"k8s-double: images end\"
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// The unit: `k8s-double: snaps`, `snap list`'s table, then what systemd knows of Debian's containerd (masked,
/// never started: no invocation id) and of the snap's containerd and kubelet, then `k8s-double: snaps end`.
pub const SNAPS_UNIT: &str = "\
# Test double only (cairn e2e): the node's snaps and containerd units on the console after cairn's kubernetes phase.
[Unit]
Description=k8s-double: snaps and containerd units on the console
After=cairn-kubernetes.service

[Service]
Type=oneshot
ExecStartPre=/bin/echo \"k8s-double: snaps\"
ExecStart=/usr/bin/snap list --unicode=never
ExecStartPost=/bin/systemctl show --property=Id,LoadState,ActiveState,InvocationID containerd.service snap.k8s.containerd.service snap.k8s.kubelet.service
ExecStartPost=/bin/echo \"k8s-double: snaps end\"
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

/// The k8s snap's version: the double's, not Kubernetes'.
pub const SNAP_VERSION: &str = "0.0.0-double";

/// The k8s snap's apps as the real snap declares them (canonical/k8s-snap snap/snapcraft.yaml `apps:`: the same
/// names, `daemon`, `install-mode`, ordering, stop and restart keys), each command a file of the double's snap.
pub const SNAP_APPS: &str = "\
apps:
  k8s:
    command: bin/k8s
  containerd:
    command: bin/containerd
    daemon: notify
    install-mode: disable
    stop-mode: sigterm
    restart-condition: always
    start-timeout: 5m
    before: [kubelet]
  etcd:
    command: bin/not-emulated
    install-mode: disable
    daemon: simple
    before: [kube-apiserver]
  k8sd:
    command: bin/k8sd
    install-mode: enable
    daemon: simple
  kubelet:
    install-mode: disable
    command: bin/kubelet
    daemon: simple
    after: [containerd]
  kube-apiserver:
    install-mode: disable
    command: bin/not-emulated
    daemon: simple
    before: [kubelet, kube-controller-manager, kube-proxy, kube-scheduler]
    stop-timeout: 5s
  kube-controller-manager:
    install-mode: disable
    command: bin/not-emulated
    daemon: simple
    after: [kube-apiserver]
  kube-proxy:
    install-mode: disable
    command: bin/not-emulated
    daemon: simple
    after: [kube-apiserver]
  kube-scheduler:
    install-mode: disable
    command: bin/not-emulated
    daemon: simple
    after: [kube-apiserver]
  k8s-apiserver-proxy:
    install-mode: disable
    command: bin/not-emulated
    daemon: simple
    before: [kubelet, kube-proxy]
";

/// `snap.k8s.containerd`: the distribution's containerd is Debian's binary with Debian's config here, so on the
/// snap's socket `/run/containerd/containerd.sock`. The snap's containerd imports side-loaded archives in a
/// goroutine once it is up (its side-load plugin); the stand-in starts the double's import beside it, which waits
/// for containerd to answer. `exec` keeps containerd the unit's main process, the one that notifies systemd.
pub const CONTAINERD_WRAPPER: &str = "\
#!/bin/sh
# Test double only (cairn e2e): the k8s snap's containerd service.
/sbin/modprobe overlay 2>/dev/null
K8S_DOUBLE_MODE=sideload \"$SNAP/bin/k8s\" </dev/null >/dev/null 2>&1 &
exec /usr/bin/containerd
";

/// `snap.k8s.kubelet`: the double's kubelet stand-in (its health endpoint only).
pub const KUBELET_WRAPPER: &str = "\
#!/bin/sh
# Test double only (cairn e2e): the k8s snap's kubelet service, its health endpoint only.
K8S_DOUBLE_MODE=kubelet exec \"$SNAP/bin/k8s\"
";

/// `snap.k8s.k8sd`, enabled at install as the real one is: nothing of k8sd runs, the double answers the CLI.
pub const K8SD_WRAPPER: &str = "\
#!/bin/sh
# Test double only (cairn e2e): the k8s snap's k8sd service. The double's k8s command needs no daemon.
echo \"k8s-double: k8sd stand-in running (the double answers the k8s command itself)\" >/dev/console
exec sleep infinity
";

/// The daemons the double has no stand-in for.
pub const NOT_EMULATED: &str = "\
#!/bin/sh
# Test double only (cairn e2e): a k8s snap daemon the double does not emulate.
echo \"k8s-double: error: $SNAP_NAME.$SNAP_COMMAND_NAME is not emulated\" >&2
exit 1
";

/// What a kubelet with `--protect-kernel-defaults` checks, at the values the hardening presets set: the double
/// refuses to be ready otherwise.
pub const KERNEL_DEFAULTS: &[(&str, &str)] = &[
    ("kernel.keys.root_maxbytes", "25000000"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];

/// The static musl release build of the double: `target/x86_64-unknown-linux-musl/release/k8s` in the target
/// folder of the running test (`target/DIR/deps/test-xxxx` → `target/`), so `CARGO_TARGET_DIR` is followed.
/// `K8S_DOUBLE_BIN` overrides. Panics, naming the cargo command that builds it, when it is missing or not static.
pub fn double_bin() -> PathBuf {
    let bin = match std::env::var_os("K8S_DOUBLE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("the path of the running test binary");
            let mut dir = exe.parent().expect("the test binary has a directory");
            if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
                dir = dir.parent().expect("deps has a parent");
            }
            // target/debug (or target/release) → target
            let target = dir.parent().expect("the profile folder has a parent");
            target.join("x86_64-unknown-linux-musl/release/k8s")
        }
    };
    assert!(
        bin.is_file(),
        "{} is missing: build the k8s double first: {BUILD_COMMAND}",
        bin.display()
    );
    if let Err(why) = cairn::agent::check(&bin, cairn_profile::Arch::Amd64) {
        panic!("{}: {why}: build it with {BUILD_COMMAND}", bin.display());
    }
    bin
}

/// The double packaged as the `k8s` snap (unasserted: see [`crate::k8s_snaps`]).
pub fn snap() -> SnapBuilder {
    let bin = double_bin();
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    let mut b = SnapBuilder::new("k8s")
        .base(crate::k8s_snaps::K8S_BASE)
        .confinement("classic")
        .yaml(
            "summary: TEST DOUBLE of Canonical Kubernetes' k8s snap (cairn e2e), no Kubernetes\ngrade: devel\n",
        )
        .yaml(SNAP_APPS)
        .file("bin/k8s", bytes, 0o755)
        .file("bin/containerd", CONTAINERD_WRAPPER, 0o755)
        .file("bin/kubelet", KUBELET_WRAPPER, 0o755)
        .file("bin/k8sd", K8SD_WRAPPER, 0o755)
        .file("bin/not-emulated", NOT_EMULATED, 0o755);
    b.version = SNAP_VERSION.into();
    b
}

/// The rock's one layer: the two units (0644) and their enabling symlinks, with their folders.
pub fn layer() -> LayerBuilder {
    let system = "usr/lib/systemd/system";
    let mut layer = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .dir("usr/lib/systemd", 0o755)
        .dir(system, 0o755)
        .dir(&format!("{system}/multi-user.target.wants"), 0o755);
    for (name, text) in [(UNIT_NAME, UNIT), (SNAPS_UNIT_NAME, SNAPS_UNIT)] {
        layer = layer
            .file(&format!("{system}/{name}"), 0o644, text)
            .symlink(
                &format!("{system}/multi-user.target.wants/{name}"),
                &format!("../{name}"),
            );
    }
    layer
}

/// The rock: linux/amd64, OCI, one gzip layer.
pub fn image() -> Image {
    Image::builder()
        .layer_from(&layer(), Compression::Gzip)
        .build()
}

/// Pushes the rock to `registry` as `e2e/k8s-double:v1`; returns its pinned reference
/// (`127.0.0.1:PORT/e2e/k8s-double:v1@sha256:...`), ready for a profile's `[[layer]]`.
pub fn push(registry: &Registry) -> String {
    push_image(registry, REPOSITORY, TAG, &image()).reference_by_digest
}
