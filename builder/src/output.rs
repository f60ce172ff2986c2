//! Outputs: the files of a build, committed as a set. Each output (tar, raw, qcow2, the report) is written into a
//! staging folder inside the output folder and synced there; only once every one of them is complete are they
//! renamed into place, the report last. A build that fails or is killed leaves every previous output and its
//! report as they were, and no half file under a final name. The staging folder is a locked work folder
//! ([`crate::workdir`]): a build sweeps the staging folders that killed builds left in the same output folder.

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
use crate::workdir::{self, WorkDir};

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

/// Makes `out` if needed and proves it writable, before any work: a wrong `--out` is bad input, found early.
pub fn check_folder(out: &Path) -> Result<(), OutputError> {
    create_folder(out)?;
    tempfile::Builder::new()
        .prefix(".cairn-probe-")
        .tempfile_in(out)
        .map(drop)
        .map_err(|source| OutputError::Folder {
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

/// The prefix of a staging folder in `--out`.
pub const STAGE_PREFIX: &str = ".cairn-stage-";

/// The outputs of one build, staged until [`Stage::commit`]; dropped without a commit, they are removed.
pub struct Stage {
    dir: WorkDir,
    out: PathBuf,
    /// Final file names, in the order they are committed.
    files: Vec<String>,
}

impl Stage {
    /// A staging folder in `out` (created if needed): the same file system, so committing is a rename.
    pub fn new(out: &Path) -> Result<Stage, OutputError> {
        create_folder(out)?;
        workdir::sweep(out, STAGE_PREFIX, false);
        let dir = WorkDir::create(out, STAGE_PREFIX).map_err(|source| OutputError::WorkFolder {
            dir: out.to_path_buf(),
            source,
        })?;
        Ok(Stage {
            dir,
            out: out.to_path_buf(),
            files: Vec::new(),
        })
    }

    /// Where staged files and an output's work pieces go.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stages a finished file (in this folder's file system) as `file`, and describes it.
    pub fn add(
        &mut self,
        from: &Path,
        format: &'static str,
        file: String,
    ) -> Result<Output, OutputError> {
        let staged = self.dir.path().join(&file);
        let (size, sha256) = hash_file(from)?;
        sync_and_open_up(from)?;
        std::fs::rename(from, &staged).map_err(|source| OutputError::Rename {
            dest: staged.clone(),
            source,
        })?;
        self.files.push(file.clone());
        Ok(Output {
            format,
            file,
            size,
            sha256,
        })
    }

    /// Stages a small document that is one of the build's outputs (the SBOM), and describes it.
    pub fn add_document(
        &mut self,
        file: &str,
        format: &'static str,
        bytes: &[u8],
    ) -> Result<Output, OutputError> {
        self.add_bytes(file, bytes)?;
        Ok(Output {
            format,
            file: file.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    }

    /// Stages a small file (the report).
    pub fn add_bytes(&mut self, file: &str, bytes: &[u8]) -> Result<(), OutputError> {
        let staged = self.dir.path().join(file);
        let mut f = std::fs::File::create(&staged).map_err(io_err(&staged))?;
        f.write_all(bytes).map_err(io_err(&staged))?;
        drop(f);
        sync_and_open_up(&staged)?;
        self.files.push(file.to_string());
        Ok(())
    }

    /// Renames every staged file into the output folder, in the order staged, and syncs the folder.
    pub fn commit(self) -> Result<(), OutputError> {
        for file in &self.files {
            let dest = self.out.join(file);
            std::fs::rename(self.dir.path().join(file), &dest)
                .map_err(|source| OutputError::Rename { dest, source })?;
        }
        std::fs::File::open(&self.out)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.out))?;
        Ok(())
    }
}

fn hash_file(path: &Path) -> Result<(u64, String), OutputError> {
    let mut hash = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hash.finalize())))
}

/// Syncs a staged file and gives it an ordinary file's mode (temp files are 0600).
fn sync_and_open_up(path: &Path) -> Result<(), OutputError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io_err(path))
}

/// Stages the tree as `NAME.tar`.
pub fn tar(
    tree: &Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
    stage: &mut Stage,
    name: &str,
) -> Result<Output, OutputError> {
    let t = Instant::now();
    let file = format!("{name}.tar");
    let staged = stage.path().join(&file);
    let out = std::fs::File::create(&staged).map_err(io_err(&staged))?;
    let opts = TarOptions {
        epoch,
        drop_xattrs: &[],
    };
    let (written, handle) =
        filesystem::write_tar(tree, tree.root(), layer_tars, opts, out, &staged)?;
    handle.sync_all().map_err(io_err(&staged))?;
    drop(handle);
    sync_and_open_up(&staged)?;
    stage.files.push(file.clone());
    info!(file = %file, bytes = written.size, entries = written.entries, ms = t.elapsed().as_millis() as u64, "wrote");
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
