//! The k8s test rock: the static `k8s` double (tests/k8s-double, crate `cairn-k8s-double`) as
//! `/usr/local/bin/k8s`; the units of its service stand-ins, which the double starts itself after a bootstrap or
//! join (none is enabled): the distribution's containerd (Debian's binary under a unit of its own, standing for the
//! snap's `snap.k8s.containerd`), the kubelet's health endpoint and the background image import; plus a oneshot
//! unit that lists containerd's `k8s.io` images on the boot console once `cairn-kubernetes.service` is done. A
//! TEST DOUBLE: it runs no Kubernetes and never belongs in `profiles/`.

use std::path::PathBuf;

use crate::image::{Compression, Image, LayerBuilder};
use crate::push::push_image;
use crate::registry::Registry;

/// Where the double lands in the image (on the agent's PATH, before any real `k8s`).
pub const BIN_PATH: &str = "/usr/local/bin/k8s";
pub const UNIT_NAME: &str = "k8s-double-images.service";
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

/// The distribution's containerd, as the double starts it (`systemctl start`, waited for) after a bootstrap or
/// join: Debian's binary with Debian's config, so on the snap's socket `/run/containerd/containerd.sock`. Not
/// Debian's `containerd.service`, which cairn masks on a Kubernetes node.
pub const CONTAINERD_UNIT_NAME: &str = "k8s-double-containerd.service";
pub const CONTAINERD_UNIT: &str = "\
# Test double only (cairn e2e): stands for the snap's snap.k8s.containerd service.
[Unit]
Description=k8s-double: the distribution's containerd (stand-in for snap.k8s.containerd)
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNOFILE=infinity
";

/// The kubelet's health endpoint (`127.0.0.1:10248/healthz`), started with `--no-block` after containerd.
pub const KUBELET_UNIT_NAME: &str = "k8s-double-kubelet.service";
pub const KUBELET_UNIT: &str = "\
# Test double only (cairn e2e): the kubelet's health endpoint, nothing else of a kubelet.
[Unit]
Description=k8s-double: kubelet stand-in (health endpoint only)
After=k8s-double-containerd.service

[Service]
Environment=K8S_DOUBLE_MODE=kubelet
ExecStart=/usr/local/bin/k8s
Restart=on-failure
RestartSec=2
";

/// The side-load import, in the background of the bootstrap or join (`--no-block`), after a delay.
pub const SIDELOAD_UNIT_NAME: &str = "k8s-double-sideload.service";
pub const SIDELOAD_UNIT: &str = "\
# Test double only (cairn e2e): the snap containerd's side-load plugin, run once after it starts.
[Unit]
Description=k8s-double: side-loaded images imported in the background
After=k8s-double-containerd.service
Wants=k8s-double-containerd.service

[Service]
Type=oneshot
Environment=K8S_DOUBLE_MODE=sideload
ExecStart=/usr/local/bin/k8s
TimeoutStartSec=infinity
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

/// The rock's one layer: the double (0755), the units (0644) and the images unit's enabling symlink, with their
/// folders.
pub fn layer() -> LayerBuilder {
    let bin = double_bin();
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    let system = "usr/lib/systemd/system";
    LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/local", 0o755)
        .dir("usr/local/bin", 0o755)
        .file(BIN_PATH.trim_start_matches('/'), 0o755, bytes)
        .dir("usr/lib", 0o755)
        .dir("usr/lib/systemd", 0o755)
        .dir(system, 0o755)
        .file(&format!("{system}/{UNIT_NAME}"), 0o644, UNIT)
        .file(
            &format!("{system}/{CONTAINERD_UNIT_NAME}"),
            0o644,
            CONTAINERD_UNIT,
        )
        .file(
            &format!("{system}/{KUBELET_UNIT_NAME}"),
            0o644,
            KUBELET_UNIT,
        )
        .file(
            &format!("{system}/{SIDELOAD_UNIT_NAME}"),
            0o644,
            SIDELOAD_UNIT,
        )
        .dir(&format!("{system}/multi-user.target.wants"), 0o755)
        .symlink(
            &format!("{system}/multi-user.target.wants/{UNIT_NAME}"),
            &format!("../{UNIT_NAME}"),
        )
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
