//! The content-addressed cache: verified blobs, and unpacked layers keyed by their blob digest.
//!
//! Everything enters by a temp file (or temp folder) in the cache's own `tmp/` and a rename, so a killed build
//! never leaves a half blob. Only bytes whose digest was checked are ever renamed into place.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cairn_profile::Digest;
use tempfile::{NamedTempFile, TempDir};

/// Bumped whenever the unpacked-layer format changes, so old entries are simply not seen.
const UNPACKED_FORMAT: &str = "v1";

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

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
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

    pub fn open(root: PathBuf) -> Result<Cache, CacheError> {
        for sub in ["blobs/sha256", "tmp", &format!("layers/{UNPACKED_FORMAT}")] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
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
        let dir = self.root.join("tmp");
        NamedTempFile::new_in(&dir).map_err(io_err(&dir))
    }

    pub fn temp_dir(&self) -> Result<TempDir, CacheError> {
        let dir = self.root.join("tmp");
        TempDir::new_in(&dir).map_err(io_err(&dir))
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
