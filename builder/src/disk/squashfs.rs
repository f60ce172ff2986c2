//! The root filesystem: the tree streamed as a tar into `mksquashfs -tar`, zstd at level 3, every time the epoch.
//!
//! Level 3 by measurement: on the node base, mksquashfs' default zstd level took 52 s for 153 MB, level 3 took
//! 2.3 s for 172 MB. squashfs cannot hold POSIX ACLs (`system.posix_acl_*`): they are left out of the tar and named
//! in the build report instead of being dropped silently.

use std::path::{Path, PathBuf};

use cairn_profile::command::CommandError;

use super::tools::Tool;
use crate::assemble::tree::Tree;
use crate::filesystem::{self, FilesystemError, TarOptions, Written};

pub const UNSUPPORTED_XATTRS: &[&str] = &["system.posix_acl_"];

#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("streaming the root to mksquashfs: {0}")]
    Stream(#[from] FilesystemError),
}

pub fn make(
    tree: &Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
    out: &Path,
) -> Result<Written, SquashfsError> {
    let opts = TarOptions {
        epoch,
        drop_xattrs: UNSUPPORTED_XATTRS,
    };
    let (written, _) = Tool::Mksquashfs
        .command()
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
        // it already), -root-mode the root's mode. (It refuses these options when SOURCE_DATE_EPOCH is set: the
        // runner never passes the caller's environment on.)
        .args([
            "-mkfs-time",
            &epoch.to_string(),
            "-all-time",
            &epoch.to_string(),
            "-root-mode",
            "0755",
        ])
        .run_with_stdin(|stdin| {
            filesystem::write_tar(tree, tree.root(), layer_tars, opts, stdin, out).map(|(w, _)| w)
        })?;
    Ok(written?)
}
