//! The content-addressed cache: verified blobs, and unpacked layers keyed by their blob digest.
//!
//! Everything enters by a temp file (or temp folder) in the cache's own `tmp/` and a rename, so a killed build
//! never leaves a half blob. Only bytes whose digest was checked are ever renamed into place.
//!
//! Several builds may share a cache. Each keeps its temp files in a work folder of its own under `tmp/`, locked
//! while it runs ([`crate::workdir`]), and sweeps the folders of dead builds when it opens the cache. Each build
//! also holds a shared lock on the cache's `lock` file, which `cairn cache prune` takes exclusively: a prune waits
//! for running builds, and a build for a running prune ([`maintain`]).

pub mod maintain;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use cairn_profile::Digest;
use tempfile::{NamedTempFile, TempDir};
use tracing::info;

use crate::workdir::{self, WorkDir};

/// Bumped whenever the unpacked-layer format changes, so old entries are simply not seen.
const UNPACKED_FORMAT: &str = "v1";
/// The prefix of a build's work folder in `tmp/`.
pub const BUILD_PREFIX: &str = "build-";
/// The file builds lock shared and a prune exclusively.
const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no cache folder: set CAIRN_CACHE, XDG_CACHE_HOME or HOME, or pass --cache")]
    NoHome,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open cache: this build's work folder and its shared hold on the cache, both released on drop.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    work: WorkDir,
    _hold: File,
}

impl Cache {
    /// `--cache` first, then `CAIRN_CACHE`, then `$XDG_CACHE_HOME/cairn`, then `~/.cache/cairn`.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, CacheError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = env("CAIRN_CACHE") {
            return Ok(p);
        }
        if let Some(p) = env("XDG_CACHE_HOME") {
            return Ok(p.join("cairn"));
        }
        env("HOME")
            .map(|h| h.join(".cache/cairn"))
            .ok_or(CacheError::NoHome)
    }

    /// Opens (making it if needed) the cache for a build: waits for a running prune, sweeps what dead builds left
    /// in `tmp/`, and makes this build's work folder there.
    pub fn open(root: PathBuf) -> Result<Cache, CacheError> {
        make_layout(&root)?;
        let hold = hold(&root, Hold::Shared)?;
        let tmp = root.join("tmp");
        workdir::sweep(&tmp, BUILD_PREFIX, true);
        let work = WorkDir::create(&tmp, BUILD_PREFIX).map_err(io_err(&tmp))?;
        Ok(Cache {
            root,
            work,
            _hold: hold,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This build's work folder in `tmp/`, where its temp files are.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        let p = self.blob_path(digest);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::Io { path: p, source: e }),
        }
    }

    /// A temp file on the cache's file system, removed on drop unless committed.
    pub fn temp_file(&self) -> Result<NamedTempFile, CacheError> {
        let dir = self.work.path();
        NamedTempFile::new_in(dir).map_err(io_err(dir))
    }

    pub fn temp_dir(&self) -> Result<TempDir, CacheError> {
        let dir = self.work.path();
        TempDir::new_in(dir).map_err(io_err(dir))
    }

    /// Moves a temp file whose content the caller has verified to be `digest` into the store.
    pub fn commit_blob(&self, file: NamedTempFile, digest: &Digest) -> Result<PathBuf, CacheError> {
        let dest = self.blob_path(digest);
        file.as_file().sync_all().map_err(io_err(file.path()))?;
        file.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Stores small verified bytes (manifests, configs).
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let mut tmp = self.temp_file()?;
        io::Write::write_all(&mut tmp, bytes).map_err(io_err(tmp.path()))?;
        self.commit_blob(tmp, digest)
    }

    /// The folder holding a layer blob unpacked (`layer.tar` and `index.json`); present only when complete.
    pub fn unpacked_dir(&self, blob: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(UNPACKED_FORMAT)
            .join(blob.hex())
    }

    /// Moves a completed temp folder into place as the unpacked form of `blob`.
    pub fn commit_unpacked(&self, dir: TempDir, blob: &Digest) -> Result<PathBuf, CacheError> {
        let dest = self.unpacked_dir(blob);
        let src = dir.keep();
        match fs::rename(&src, &dest) {
            Ok(()) => Ok(dest),
            // Another build unpacked the same layer meanwhile: theirs is as good as ours.
            Err(_) if dest.join("index.json").is_file() => {
                let _ = fs::remove_dir_all(&src);
                Ok(dest)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&src);
                Err(CacheError::Io {
                    path: dest,
                    source: e,
                })
            }
        }
    }
}

fn make_layout(root: &Path) -> Result<(), CacheError> {
    for sub in ["blobs/sha256", "tmp", &format!("layers/{UNPACKED_FORMAT}")] {
        let p = root.join(sub);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// A build: many at once.
    Shared,
    /// A prune: alone.
    Exclusive,
}

/// Takes the cache's lock, saying so when it has to wait.
fn hold(root: &Path, how: Hold) -> Result<File, CacheError> {
    let path = root.join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let tried = match how {
        Hold::Shared => file.try_lock_shared(),
        Hold::Exclusive => file.try_lock(),
    };
    match tried {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        Err(fs::TryLockError::WouldBlock) => {}
    }
    match how {
        Hold::Shared => info!(cache = %root.display(), "waiting for `cairn cache prune` to finish"),
        Hold::Exclusive => info!(cache = %root.display(), "waiting for running builds to finish"),
    }
    match how {
        Hold::Shared => file.lock_shared(),
        Hold::Exclusive => file.lock(),
    }
    .map_err(io_err(&path))?;
    Ok(file)
}
