//! Outputs: files in the output folder, each written to a temp file (or a work folder) beside its destination,
//! synced and renamed into place, so an interrupted build never leaves half an output under its final name.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};
use tempfile::{NamedTempFile, TempDir};
use tracing::info;

use crate::assemble::tree::Tree;
use crate::filesystem::{self, FilesystemError, TarOptions};
use crate::report::Output;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("creating output folder {}: {source}", path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating a temp file in {}: {source}", dir.display())]
    TempFile {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("creating a work folder in {}: {source}", dir.display())]
    WorkFolder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("renaming into {}: {source}", dest.display())]
    Rename {
        dest: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tar(#[from] FilesystemError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn create_folder(out: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(out).map_err(|source| OutputError::Folder {
        path: out.to_path_buf(),
        source,
    })
}

/// A folder for an output's pieces, on the output folder's file system (so the result can be renamed out of it),
/// removed on drop.
pub fn work_folder(out: &Path) -> Result<TempDir, OutputError> {
    TempDir::new_in(out).map_err(|source| OutputError::WorkFolder {
        dir: out.to_path_buf(),
        source,
    })
}

/// Writes the tree as `NAME.tar` in `out`.
pub fn tar(
    tree: &Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
    out: &Path,
    name: &str,
) -> Result<Output, OutputError> {
    let t = Instant::now();
    let file = format!("{name}.tar");
    let dest = out.join(&file);
    let tmp = temp_in(out)?;
    let opts = TarOptions {
        epoch,
        drop_xattrs: &[],
    };
    let (written, handle) =
        filesystem::write_tar(tree, tree.root(), layer_tars, opts, tmp.as_file(), &dest)?;
    handle.sync_all().map_err(io_err(&dest))?;
    persist(tmp, &dest)?;
    info!(file = %dest.display(), bytes = written.size, entries = written.entries, ms = t.elapsed().as_millis() as u64, "wrote");
    Ok(Output {
        format: "tar",
        file,
        size: written.size,
        sha256: written.sha256,
    })
}

fn temp_in(dir: &Path) -> Result<NamedTempFile, OutputError> {
    NamedTempFile::new_in(dir).map_err(|source| OutputError::TempFile {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Moves a finished output from a work folder into `out` as `file` (same file system) and describes it.
pub fn place(
    from: &Path,
    out: &Path,
    format: &'static str,
    file: String,
) -> Result<Output, OutputError> {
    let dest = out.join(&file);
    let mut hash = Sha256::new();
    let mut f = std::fs::File::open(from).map_err(io_err(from))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(from))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    f.sync_all().map_err(io_err(from))?;
    std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o644)).map_err(io_err(from))?;
    std::fs::rename(from, &dest).map_err(|source| OutputError::Rename {
        dest: dest.clone(),
        source,
    })?;
    Ok(Output {
        format,
        file,
        size,
        sha256: hex::encode(hash.finalize()),
    })
}

fn persist(tmp: NamedTempFile, dest: &Path) -> Result<(), OutputError> {
    // Temp files are 0600; an output is an ordinary file.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(tmp.path()))?;
    tmp.persist(dest).map_err(|e| OutputError::Rename {
        dest: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Writes a small file by temp file, fsync and rename.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = temp_in(dir)?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    persist(tmp, dest)
}
