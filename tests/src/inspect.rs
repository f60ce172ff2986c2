//! Running `cairn inspect` and `cairn diff` and reading what they print, for the tests of both.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::LayerBuilder;
use crate::cairn::{assert_ok, build_args, run_cairn};

/// The version string [`fake_kernel`] carries.
pub const KERNEL_VERSION: &str = "6.1.0-test (cairn@e2e) #1 SMP";

/// Enough of an x86 kernel for its version to be found: the boot header's `HdrS` and the version's offset.
pub fn fake_kernel() -> Vec<u8> {
    let mut k = vec![0u8; 0x2000];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x20e..0x210].copy_from_slice(&0x1000u16.to_le_bytes());
    k[0x1200..0x1200 + KERNEL_VERSION.len()].copy_from_slice(KERNEL_VERSION.as_bytes());
    k
}

/// dpkg's status file listing `packages` (name, version) as installed.
pub fn status(packages: &[(&str, &str)]) -> String {
    packages
        .iter()
        .map(|(n, v)| {
            format!(
                "Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a disk build needs of a base rock, and no more: a kernel, its module lists, systemd-boot and systemd-stub
/// (tiny PE files, enough to assemble and sign a UKI from), os-release, a tool and a hostname. Nothing boots it;
/// inspect and push read it.
pub fn bootable_base() -> LayerBuilder {
    LayerBuilder::new()
        .file("boot/vmlinuz-6.1.0-test", 0o644, fake_kernel())
        .file("usr/lib/modules/6.1.0-test/modules.dep", 0o644, "")
        .file(
            "usr/lib/modules/6.1.0-test/modules.builtin",
            0o644,
            "kernel/drivers/md/dm-verity.ko\nkernel/fs/squashfs/squashfs.ko\nkernel/fs/overlayfs/overlay.ko\n",
        )
        .file(
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            0o644,
            cairn_profile::uki::fixture::tiny_pe(),
        )
        .file(
            "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            0o644,
            cairn_profile::uki::fixture::tiny_pe(),
        )
        .file(
            "usr/lib/os-release",
            0o644,
            "PRETTY_NAME=\"Test OS\"\nNAME=\"Test OS\"\nID=test\nVERSION_ID=1\n",
        )
        .file("usr/bin/tool", 0o755, vec![7u8; 100_000])
        .file("etc/hostname", 0o644, "base\n")
}

/// `cairn build PROFILE --out OUT --cache CACHE [--format F]...`, which must succeed.
pub fn build(profile: &Path, out: &Path, cache: &Path, formats: &[&str]) {
    let mut args = build_args(profile, out, cache);
    for f in formats {
        args.extend(["--format".as_ref(), OsStr::new(f)]);
    }
    assert_ok(
        &run_cairn(args, &[]),
        &format!("build {}", profile.display()),
    );
}

/// `cairn ARGS`, with no environment added.
pub fn cairn(args: &[&OsStr]) -> Output {
    run_cairn(args, &[])
}

/// A command's stdout as JSON.
pub fn json(o: &Output, what: &str) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `cairn inspect TARGET --json`, which must succeed.
pub fn inspect_json(target: &Path) -> Value {
    let o = cairn(&["inspect".as_ref(), target.as_os_str(), "--json".as_ref()]);
    assert_ok(&o, "inspect --json");
    json(&o, "inspect --json")
}

/// The build report `OUT/NAME.manifest.json`.
pub fn report(out: &Path, name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(out.join(format!("{name}.manifest.json"))).expect("report"),
    )
    .expect("json")
}

/// The string `key` of each object of the array `v`.
pub fn strings(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x[key].as_str().unwrap_or_default().to_string())
        .collect()
}
