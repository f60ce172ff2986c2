//! Looking after a cache: what it holds (`cairn cache du`) and dropping what no given profile needs
//! (`cairn cache prune`).
//!
//! What a profile needs is found offline, from the cache alone: each pinned rock's manifest (or index, and the
//! manifests it lists), its config and its layers, both as blobs and unpacked. A rock whose manifest is not cached
//! needs nothing that is. A prune holds the cache's lock exclusively, so it waits for running builds and they
//! wait for it; `du` and a dry run only read.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use cairn_profile::{Digest, Profile};
use serde::Deserialize;

use super::{BUILD_PREFIX, CacheError, Hold, UNPACKED_FORMAT, hold, io_err};
use crate::workdir::{self, Usage};

/// Manifests and indexes are small; a cached blob bigger than this named as one is not read whole.
const MANIFEST_MAX: u64 = 4 << 20;

/// A count of entries and the disk they use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Amount {
    pub count: u64,
    pub bytes: u64,
}

impl Amount {
    fn add(&mut self, u: Usage) {
        self.count += 1;
        self.bytes += u.bytes;
    }
}

/// What `cairn cache du` shows.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Du {
    pub blobs: Amount,
    /// Unpacked layers of the current format.
    pub unpacked: Amount,
    /// Unpacked layers of older formats, never read again.
    pub stale: Amount,
    /// Work folders of running builds.
    pub running: Amount,
    /// Work folders and temp files left by dead builds.
    pub dead: Amount,
}

impl Du {
    pub fn total(&self) -> u64 {
        self.blobs.bytes
            + self.unpacked.bytes
            + self.stale.bytes
            + self.running.bytes
            + self.dead.bytes
    }
}

/// Measures a cache without changing or locking it (entries that vanish meanwhile count as nothing).
pub fn du(root: &Path) -> Result<Du, CacheError> {
    existing(root)?;
    let mut du = Du::default();
    for path in children(&root.join("blobs/sha256"))? {
        du.blobs.add(workdir::usage(&path));
    }
    for format in children(&root.join("layers"))? {
        let current = format.file_name().is_some_and(|n| n == UNPACKED_FORMAT);
        for path in children(&format)? {
            let u = workdir::usage(&path);
            if current {
                &mut du.unpacked
            } else {
                &mut du.stale
            }
            .add(u);
        }
    }
    for path in children(&root.join("tmp"))? {
        let u = workdir::usage(&path);
        if running_build(&path) {
            &mut du.running
        } else {
            &mut du.dead
        }
        .add(u);
    }
    Ok(du)
}

/// An error unless `root` is a cache folder there is.
fn existing(root: &Path) -> Result<(), CacheError> {
    if root.is_dir() {
        return Ok(());
    }
    Err(CacheError::Io {
        path: root.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no cache here"),
    })
}

/// Whether an entry of `tmp/` is the work folder of a build that still runs.
fn running_build(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(BUILD_PREFIX))
        && workdir::is_live(path)
}

/// What a profile set needs from the cache, and what could not be judged.
#[derive(Debug, Default)]
pub struct Needed {
    pub blobs: BTreeSet<Digest>,
    /// Profile keys of rocks without a digest: a tag means whatever the registry serves now, so nothing cached is
    /// known to belong to them.
    pub unpinned: Vec<String>,
}

/// The blobs `profiles` need, found by walking their pinned manifests in the cache.
pub fn needed(root: &Path, profiles: &[(PathBuf, Profile)]) -> Needed {
    let mut needed = Needed::default();
    for (file, p) in profiles {
        let rocks = p.rocks().chain(p.preload_rocks());
        for rock in rocks {
            match &rock.reference.digest {
                Some(d) => walk(root, d, &mut needed.blobs),
                None => needed
                    .unpinned
                    .push(format!("{}: {}", file.display(), rock.key)),
            }
        }
    }
    needed
}

#[derive(Deserialize)]
struct Described {
    digest: String,
}

/// The fields of an index or a manifest that name other blobs.
#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    manifests: Vec<Described>,
    config: Option<Described>,
    #[serde(default)]
    layers: Vec<Described>,
}

fn walk(root: &Path, digest: &Digest, keep: &mut BTreeSet<Digest>) {
    if !keep.insert(digest.clone()) {
        return;
    }
    let path = root.join("blobs/sha256").join(digest.hex());
    let small = fs::metadata(&path).is_ok_and(|m| m.len() <= MANIFEST_MAX);
    let Some(doc) = small
        .then(|| fs::read(&path).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<Document>(&b).ok())
    else {
        return;
    };
    for m in &doc.manifests {
        if let Ok(d) = Digest::parse(&m.digest) {
            walk(root, &d, keep);
        }
    }
    for d in doc.config.iter().chain(&doc.layers) {
        if let Ok(d) = Digest::parse(&d.digest) {
            keep.insert(d);
        }
    }
}

/// What a prune removed (or, dry, would remove) and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub blobs: Amount,
    pub unpacked: Amount,
    /// Older formats' unpacked layers and dead builds' temp files.
    pub debris: Amount,
    pub kept: Amount,
}

/// Removes every blob and unpacked layer not in `keep`, every unpacked layer of an older format and everything
/// in `tmp/`. Waits for running builds first (and holds them off meanwhile). With `dry`, only counts, unlocked.
pub fn prune(root: &Path, keep: &BTreeSet<Digest>, dry: bool) -> Result<Pruned, CacheError> {
    existing(root)?;
    let _hold = if dry {
        None
    } else {
        Some(hold(root, Hold::Exclusive)?)
    };
    let mut pruned = Pruned::default();
    let kept = |path: &Path| {
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            .is_some_and(|d| keep.contains(&d))
    };
    let remove = |path: &Path, into: &mut Amount| -> Result<(), CacheError> {
        into.add(workdir::usage(path));
        if dry {
            return Ok(());
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        removed.map_err(io_err(path))
    };
    for path in children(&root.join("blobs/sha256"))? {
        if kept(&path) {
            pruned.kept.add(workdir::usage(&path));
        } else {
            remove(&path, &mut pruned.blobs)?;
        }
    }
    for format in children(&root.join("layers"))? {
        let current = format.file_name().is_some_and(|n| n == UNPACKED_FORMAT);
        for path in children(&format)? {
            if current && kept(&path) {
                pruned.kept.add(workdir::usage(&path));
            } else if current {
                remove(&path, &mut pruned.unpacked)?;
            } else {
                remove(&path, &mut pruned.debris)?;
            }
        }
    }
    // With the lock held no build runs, so all of tmp/ is debris; a dry run leaves running builds' folders out.
    for path in children(&root.join("tmp"))? {
        if !(dry && running_build(&path)) {
            remove(&path, &mut pruned.debris)?;
        }
    }
    Ok(pruned)
}

/// The entries of a folder, sorted; none when it does not exist.
fn children(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            Ok(paths)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`: sizes as people read them.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;

    fn digest_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(&sha2::Sha256::digest(bytes))
    }

    fn doc(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("json")
    }

    #[test]
    fn needed_follows_an_index_to_manifests_configs_and_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path().to_path_buf()).expect("cache");
        let layer = digest_of(b"layer");
        let config = digest_of(b"config");
        let manifest = doc(serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": config.as_str(), "size": 6},
            "layers": [{"digest": layer.as_str(), "size": 5}],
        }));
        let m = digest_of(&manifest);
        cache.put_blob(&m, &manifest).expect("put");
        let index = doc(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"digest": m.as_str(), "size": manifest.len()},
                          {"digest": digest_of(b"not cached").as_str(), "size": 1}],
        }));
        let i = digest_of(&index);
        cache.put_blob(&i, &index).expect("put");
        let mut keep = BTreeSet::new();
        walk(dir.path(), &i, &mut keep);
        assert!(keep.contains(&i) && keep.contains(&m));
        assert!(keep.contains(&config) && keep.contains(&layer));
        assert_eq!(keep.len(), 5, "{keep:?}");
    }

    #[test]
    fn prune_keeps_what_is_needed_and_sweeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let cache = Cache::open(root.clone()).expect("cache");
        let keep_me = digest_of(b"keep");
        let drop_me = digest_of(b"drop");
        cache.put_blob(&keep_me, b"keep").expect("put");
        cache.put_blob(&drop_me, b"drop").expect("put");
        for d in [&keep_me, &drop_me] {
            fs::create_dir_all(cache.unpacked_dir(d)).expect("mkdir");
            fs::write(cache.unpacked_dir(d).join("index.json"), b"{}").expect("write");
        }
        fs::create_dir_all(root.join("layers/v0/abc")).expect("mkdir");
        drop(cache);
        let keep: BTreeSet<Digest> = [keep_me.clone()].into();

        let dry = prune(&root, &keep, true).expect("dry");
        assert_eq!(dry.blobs.count, 1);
        assert_eq!(dry.unpacked.count, 1);
        assert_eq!(dry.debris.count, 1);
        assert!(
            root.join("blobs/sha256").join(drop_me.hex()).is_file(),
            "a dry run removed"
        );

        let done = prune(&root, &keep, false).expect("prune");
        assert_eq!(done, dry);
        assert!(root.join("blobs/sha256").join(keep_me.hex()).is_file());
        assert!(!root.join("blobs/sha256").join(drop_me.hex()).exists());
        let cache = Cache::open(root.clone()).expect("cache");
        assert!(cache.unpacked_dir(&keep_me).is_dir());
        assert!(!cache.unpacked_dir(&drop_me).exists());
        assert!(!root.join("layers/v0").join("abc").exists());
    }

    #[test]
    fn a_prune_waits_for_a_running_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let cache = Cache::open(root.clone()).expect("cache");
        let tmp = cache.temp_file().expect("temp");
        let (tx, rx) = std::sync::mpsc::channel();
        let pruning = {
            let root = root.clone();
            std::thread::spawn(move || {
                let r = prune(&root, &BTreeSet::new(), false);
                tx.send(()).expect("send");
                r
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "prune ran during a build");
        assert!(
            tmp.path().is_file(),
            "prune touched a running build's temp file"
        );
        drop(tmp);
        drop(cache);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("prune went on once the build ended");
        pruning.join().expect("thread").expect("prune");
    }

    #[test]
    fn du_tells_running_from_dead_builds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let cache = Cache::open(root.clone()).expect("cache");
        let dead = crate::workdir::WorkDir::create(&root.join("tmp"), BUILD_PREFIX)
            .expect("dead")
            .abandon();
        fs::write(dead.join("partial"), vec![0u8; 8192]).expect("write");
        let d = du(&root).expect("du");
        assert_eq!(d.running.count, 1);
        assert_eq!(d.dead.count, 1);
        assert!(d.dead.bytes >= 8192);
        drop(cache);
        // The next build sweeps it.
        let _next = Cache::open(root.clone()).expect("cache");
        assert!(!dead.exists());
    }

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
