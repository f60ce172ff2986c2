//! Free space, checked once the manifests are known and before any blob is pulled: a build that cannot fit is
//! refused at once (bad input, exit 2) instead of failing minutes later with a half-filled disk.
//!
//! What is checked is a lower bound, so that no build that would fit is ever refused:
//! - the cache needs each missing layer's blob (its size, from the manifest) and, for a layer not yet unpacked,
//!   its decompressed tar, which is never smaller than the compressed blob;
//! - the output folder stages every output at once: the tar and the disk's root each hold at least the root's
//!   compressed layers and the preloads; a disk needs its pieces and the raw image beside them (twice that), a
//!   qcow2 once more.
//!
//! When the cache and the output folder share a file system, their needs add up.

use std::path::{Path, PathBuf};

use cairn_profile::Format;

use crate::cache::Cache;
use crate::cache::maintain::human;
use crate::preload::ResolvedPreload;
use crate::resolve::ResolvedRock;

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error(
        "not enough free space in {}: {} free, and this build needs at least {} there ({}); free some (`cairn cache prune`) or choose another {}",
        path.display(), human(*free), human(*needed), what, option
    )]
    TooLittle {
        path: PathBuf,
        free: u64,
        needed: u64,
        /// What the space is for.
        what: String,
        /// The option that moves it: `--out` or `--cache`.
        option: &'static str,
    },
    #[error("checking the free space of {}: {source}", path.display())]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The least each folder needs, in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub cache: u64,
    pub out: u64,
}

pub fn needs(
    cache: &Cache,
    rocks: &[ResolvedRock],
    preloads: &[ResolvedPreload],
    formats: &[Format],
) -> Needs {
    let mut seen = std::collections::BTreeSet::new();
    let mut n = Needs::default();
    let mut root = 0u64;
    for l in rocks.iter().flat_map(|r| &r.layers) {
        root = root.saturating_add(l.size);
        if !seen.insert(&l.digest) {
            continue;
        }
        if !cache.unpacked_dir(&l.digest).join("index.json").is_file() {
            if !cache.has_blob(&l.digest) {
                n.cache = n.cache.saturating_add(l.size);
            }
            n.cache = n.cache.saturating_add(l.size);
        }
    }
    for l in preloads.iter().flat_map(|p| &p.rock.layers) {
        root = root.saturating_add(l.size);
        if seen.insert(&l.digest) && !cache.has_blob(&l.digest) {
            n.cache = n.cache.saturating_add(l.size);
        }
    }
    let disk = formats.contains(&Format::Raw) || formats.contains(&Format::Qcow2);
    let copies = u64::from(formats.contains(&Format::Tar))
        + if disk { 2 } else { 0 }
        + u64::from(formats.contains(&Format::Qcow2));
    n.out = root.saturating_mul(copies);
    n
}

/// Refuses the build when `out` or the cache has less free space than it needs.
pub fn check(out: &Path, cache: &Path, needs: &Needs) -> Result<(), SpaceError> {
    let out_fs = stat(out)?;
    let cache_fs = stat(cache)?;
    if out_fs.id == cache_fs.id {
        let what = format!(
            "{} for the outputs and {} for the cache, on one file system",
            human(needs.out),
            human(needs.cache)
        );
        let needed = needs.out.saturating_add(needs.cache);
        return fits(out, &out_fs, needed, what, "--out or --cache");
    }
    fits(
        cache,
        &cache_fs,
        needs.cache,
        "the layers to pull and unpack".into(),
        "--cache",
    )?;
    fits(
        out,
        &out_fs,
        needs.out,
        "the outputs, staged together".into(),
        "--out",
    )
}

/// `needed` bytes in the file system `fs` of `path`, or the error saying what they are for.
fn fits(
    path: &Path,
    fs: &Fs,
    needed: u64,
    what: String,
    option: &'static str,
) -> Result<(), SpaceError> {
    if needed <= fs.free {
        return Ok(());
    }
    Err(SpaceError::TooLittle {
        path: path.to_path_buf(),
        free: fs.free,
        needed,
        what,
        option,
    })
}

struct Fs {
    id: u64,
    free: u64,
}

fn stat(path: &Path) -> Result<Fs, SpaceError> {
    let err = |source: std::io::Error| SpaceError::Stat {
        path: path.to_path_buf(),
        source,
    };
    let v = rustix::fs::statvfs(path).map_err(|e| err(e.into()))?;
    let meta = std::fs::metadata(path).map_err(err)?;
    Ok(Fs {
        id: std::os::unix::fs::MetadataExt::dev(&meta),
        // What an unprivileged writer may use; root's reserve is not counted on.
        free: v.f_bavail.saturating_mul(v.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_on_a_full_file_system_is_refused_with_both_figures() {
        let dir = tempfile::tempdir().expect("tmp");
        let needs = Needs {
            cache: 0,
            out: u64::MAX / 2,
        };
        let e = check(dir.path(), dir.path(), &needs).expect_err("cannot fit");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "not enough free space in {}: ",
                dir.path().display()
            )),
            "{text}"
        );
        assert!(
            text.contains("for the outputs and 0 B for the cache"),
            "{text}"
        );
        assert!(check(dir.path(), dir.path(), &Needs::default()).is_ok());
    }
}
