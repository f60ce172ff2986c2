//! The root filesystem: the tree streamed as a tar into `mksquashfs -tar`, zstd at level 3, every time the epoch.
//!
//! Level 3 by measurement: on the node base, mksquashfs' default zstd level took 52 s for 153 MB, level 3 took
//! 2.3 s for 172 MB. squashfs cannot hold POSIX ACLs (`system.posix_acl_*`): they are left out of the tar and named
//! in the build report instead of being dropped silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::DiskError;
use crate::assemble::tree::Tree;
use crate::filesystem::{self, TarOptions, Written};

pub const UNSUPPORTED_XATTRS: &[&str] = &["system.posix_acl_"];

pub fn make(
    tree: &Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
    out: &Path,
) -> Result<Written, DiskError> {
    let mut child = Command::new("mksquashfs")
        .arg("-")
        .arg(out)
        .args([
            "-tar",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "3",
        ])
        // In tar mode (4.5) mksquashfs gives the root folder the current time and mode 0777, whatever the tar
        // says, and -root-time is not honoured: -all-time pins every time to the epoch (the tar's are clamped to
        // it already), -root-mode the root's mode.
        .args([
            "-mkfs-time",
            &epoch.to_string(),
            "-all-time",
            &epoch.to_string(),
            "-root-mode",
            "0755",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            DiskError(format!(
                "running mksquashfs (rocks/setup-host installs squashfs-tools): {e}"
            ))
        })?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| DiskError("mksquashfs has no stdin".into()))?;
    let opts = TarOptions {
        epoch,
        drop_xattrs: UNSUPPORTED_XATTRS,
    };
    let written = filesystem::write_tar(tree, tree.root(), layer_tars, opts, stdin, out);
    // Close stdin (end of the tar) before waiting, whatever happened.
    let written = written.map(|(w, stdin)| {
        drop(stdin);
        w
    });
    let output = child
        .wait_with_output()
        .map_err(|e| DiskError(format!("mksquashfs: {e}")))?;
    if !output.status.success() {
        return Err(DiskError(format!(
            "mksquashfs failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    written.map_err(|e| DiskError(format!("streaming the root to mksquashfs: {e}")))
}
