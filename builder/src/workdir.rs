//! Work folders that say whether their build is alive, so that any later build can sweep what a killed one left.
//!
//! A build's temp files live in a folder of its own (in the cache's `tmp/`, and a staging folder in `--out`)
//! holding a `lock` file that the build keeps locked (flock, exclusive) for as long as it runs. The kernel drops
//! the lock when the process dies however it dies, so a folder whose lock can be taken belongs to a dead build and
//! may go. A pid marker would not do: pids are reused, and a container's pid means nothing outside it.
//!
//! A folder is made under a `.new-` name, locked, and only then renamed to its final name, so a sweeper never sees
//! a live folder without its lock.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{debug, info};

const LOCK: &str = "lock";
const NEW: &str = ".new-";
/// A `.new-` folder older than this was left by a build killed in the instant between making and naming it.
const NEW_GRACE: Duration = Duration::from_secs(600);

/// A work folder, locked while this value lives and removed with it.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Held for the folder's life; `None` only once abandoned (tests).
    lock: Option<File>,
}

impl WorkDir {
    /// Makes `parent/PREFIXxxxxxx`, locked.
    pub fn create(parent: &Path, prefix: &str) -> io::Result<WorkDir> {
        let fresh = tempfile::Builder::new()
            .prefix(NEW)
            .tempdir_in(parent)?
            .keep();
        let made = (|| {
            let lock = File::create(fresh.join(LOCK))?;
            lock.lock()?;
            let name = fresh
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(NEW))
                .map(|suffix| format!("{prefix}{suffix}"))
                .ok_or_else(|| io::Error::other("temp folder name"))?;
            let path = parent.join(name);
            fs::rename(&fresh, &path)?;
            Ok(WorkDir {
                path,
                lock: Some(lock),
            })
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&fresh);
        }
        made
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock and leaves the folder, as a killed build leaves it.
    #[cfg(test)]
    pub fn abandon(mut self) -> PathBuf {
        self.lock = None;
        self.path.clone()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: what stays is swept by the next build.
        if self.lock.is_some() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Whether a work folder's build still runs.
pub fn is_live(dir: &Path) -> bool {
    match File::open(dir.join(LOCK)) {
        // Taking the lock proves nobody holds it; it is released when `f` drops.
        Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// What a sweep found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub folders: u64,
    pub bytes: u64,
}

/// Removes the folders named `PREFIX*` in `parent` whose build is dead, and stale `.new-` folders. With `others`,
/// every other entry of `parent` goes too (the cache's `tmp/`, which holds nothing but work folders; older cairn
/// versions put bare temp files there). Errors are logged, never fatal: sweeping is housekeeping.
pub fn sweep(parent: &Path, prefix: &str, others: bool) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(parent) else {
        return swept;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let dead = if name.starts_with(prefix) {
            !is_live(&path)
        } else if name.starts_with(NEW) {
            older_than(&path, NEW_GRACE)
        } else {
            others && older_than(&path, NEW_GRACE)
        };
        if !dead {
            continue;
        }
        let bytes = usage(&path).bytes;
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => {
                swept.folders += 1;
                swept.bytes += bytes;
            }
            // Another build may be sweeping the same folder.
            Err(e) => debug!(path = %path.display(), error = %e, "not swept"),
        }
    }
    if swept.folders > 0 {
        info!(folder = %parent.display(), entries = swept.folders, bytes = swept.bytes, "swept what killed builds left");
    }
    swept
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d > age)
}

/// Disk usage of a tree, as du counts it: allocated blocks, each inode once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub files: u64,
    pub bytes: u64,
}

pub fn usage(path: &Path) -> Usage {
    let mut seen = std::collections::HashSet::new();
    let mut total = Usage::default();
    add_usage(path, &mut seen, &mut total);
    total
}

fn add_usage(path: &Path, seen: &mut std::collections::HashSet<(u64, u64)>, total: &mut Usage) {
    // Entries vanish under a concurrent build's rename or sweep: what is gone counts as nothing.
    let Ok(m) = fs::symlink_metadata(path) else {
        return;
    };
    if seen.insert((m.dev(), m.ino())) {
        total.bytes += m.blocks() * 512;
        if m.is_file() {
            total.files += 1;
        }
    }
    if m.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for e in entries.flatten() {
            add_usage(&e.path(), seen, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_folder_is_kept_and_a_dead_one_swept() {
        let parent = tempfile::tempdir().expect("tempdir");
        let live = WorkDir::create(parent.path(), "build-").expect("live");
        let dead = WorkDir::create(parent.path(), "build-").expect("dead");
        fs::write(dead.path().join("blob"), vec![1u8; 100_000]).expect("write");
        let dead_path = dead.abandon();
        assert!(is_live(live.path()));
        assert!(!is_live(&dead_path));

        let swept = sweep(parent.path(), "build-", false);
        assert_eq!(swept.folders, 1);
        assert!(swept.bytes >= 100_000, "{swept:?}");
        assert!(!dead_path.exists());
        assert!(live.path().join(LOCK).is_file());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists(), "a finished build removes its folder");
    }

    #[test]
    fn entries_of_other_names_go_only_when_asked_and_old() {
        let parent = tempfile::tempdir().expect("tempdir");
        let old = parent.path().join(".tmpOLD");
        let young = parent.path().join(".tmpYOUNG");
        fs::write(&old, b"x").expect("write");
        fs::write(&young, b"x").expect("write");
        let past = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(past))
            .expect("mtime");
        assert_eq!(sweep(parent.path(), "build-", false).folders, 0);
        assert!(old.exists());
        assert_eq!(sweep(parent.path(), "build-", true).folders, 1);
        assert!(!old.exists());
        assert!(
            young.exists(),
            "a young entry may be a running older cairn's"
        );
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a"), vec![7u8; 64 * 1024]).expect("write");
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link");
        let u = usage(dir.path());
        assert_eq!(u.files, 1);
        assert!(u.bytes >= 64 * 1024 && u.bytes < 2 * 64 * 1024, "{u:?}");
    }
}
