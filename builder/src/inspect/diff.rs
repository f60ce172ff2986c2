//! `cairn diff A B`: what differs between two builds, in rocks (their digests), files (path, kind, mode, owner,
//! size, link target, and content when both listings come from tars), Debian packages and partitions (name,
//! type, size; GUIDs derive from each build's inputs and always differ, so they are not compared).
//!
//! Files come from the same kind of output on both sides when it can be: the tars when both builds wrote one,
//! else both disks' roots (with the factory `/var` in place under `/var`). A tar against a disk compares roots of
//! two layouts (on a disk `/home`, `/root` and `/srv` are links into `/var`, `/tmp` is empty, `/efi` exists) and
//! is said so in a note.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gpt::Partition;
use super::image::Image;
use super::listing::{self, Entry, Listing};
use super::outputs::{Build, Rock};
use super::packages::{self, Package};
use super::{DPKG_STATUS, DPKG_STATUS_IN_VAR, InspectError};

#[derive(Debug, Serialize)]
pub struct Side {
    pub name: String,
    pub version: String,
    pub report: PathBuf,
    /// The output the files and packages were read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_from: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    pub a: Side,
    pub b: Side,
    pub rocks: Vec<RockChange>,
    pub files: FileChanges,
    pub packages: PackageChanges,
    pub partitions: Vec<PartitionChange>,
    pub notes: Vec<String>,
}

impl Diff {
    /// Nothing differs (what the exit status says).
    pub fn same(&self) -> bool {
        self.rocks.is_empty()
            && self.files.added.is_empty()
            && self.files.removed.is_empty()
            && self.files.changed.is_empty()
            && self.packages.added.is_empty()
            && self.packages.removed.is_empty()
            && self.packages.changed.is_empty()
            && self.partitions.is_empty()
    }
}

/// A rock by its profile key: added, removed, or pinned to another digest.
#[derive(Debug, Serialize)]
pub struct RockChange {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<Rock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<Rock>,
}

#[derive(Debug, Serialize)]
pub struct PathEntry {
    pub path: String,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Debug, Serialize)]
pub struct FileChange {
    pub path: String,
    /// What differs: `kind`, `mode`, `owner`, `size`, `target`, `content`.
    pub what: Vec<&'static str>,
    pub a: Entry,
    pub b: Entry,
}

#[derive(Debug, Default, Serialize)]
pub struct FileChanges {
    /// Whether every file's content was compared (both listings from tars). On disks only the factory `/var`'s
    /// files are (they come from a tar).
    pub contents_compared: bool,
    pub added: Vec<PathEntry>,
    pub removed: Vec<PathEntry>,
    pub changed: Vec<FileChange>,
}

#[derive(Debug, Default, Serialize)]
pub struct PackageChanges {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<VersionChange>,
}

#[derive(Debug, Serialize)]
pub struct VersionChange {
    pub name: String,
    pub arch: String,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Serialize)]
pub struct PartitionChange {
    pub name: String,
    /// What differs: `name`, `type`, `size`; type and size for an added or removed partition.
    pub what: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<Partition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<Partition>,
}

/// What one build's outputs hold, as diff compares them.
struct Snapshot {
    side: Side,
    rocks: Vec<Rock>,
    listing: Option<Listing>,
    packages: Vec<Package>,
    partitions: Option<Vec<Partition>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FilesFrom {
    Tar,
    Disk,
}

fn has_disk(b: &Build) -> bool {
    b.has("raw") || b.has("qcow2")
}

/// Compares the builds `a` and `b` name (see [`Build::open`]).
pub fn diff(a: &Path, b: &Path) -> Result<Diff, InspectError> {
    let (ba, bb) = (Build::open(a)?, Build::open(b)?);
    let mut notes = Vec::new();
    let both = |f: fn(&Build) -> bool| f(&ba) && f(&bb);
    let prefer = if both(|b| b.has("tar")) {
        Some(FilesFrom::Tar)
    } else if both(has_disk) {
        Some(FilesFrom::Disk)
    } else {
        None
    };
    if prefer.is_none() {
        notes.push(
            "one build has only a tar and the other only a disk: their roots have different layouts (on a disk \
             /home, /root and /srv are links into /var, /tmp is empty and /efi exists), and contents are compared only \
             under /var"
                .into(),
        );
    }
    let sa = snapshot(&ba, prefer)?;
    let sb = snapshot(&bb, prefer)?;
    let files = match (&sa.listing, &sb.listing) {
        (Some(la), Some(lb)) => compare_files(la, lb),
        _ => {
            notes.push("a build has no tar, raw or qcow2 output: files were not compared".into());
            FileChanges::default()
        }
    };
    let partitions = match (&sa.partitions, &sb.partitions) {
        (Some(pa), Some(pb)) => compare_partitions(pa, pb),
        (None, None) => Vec::new(),
        _ => {
            notes.push("only one build wrote a disk: partitions were not compared".into());
            Vec::new()
        }
    };
    Ok(Diff {
        rocks: compare_rocks(&sa.rocks, &sb.rocks),
        files,
        packages: compare_packages(&sa.packages, &sb.packages),
        partitions,
        notes,
        a: sa.side,
        b: sb.side,
    })
}

fn snapshot(build: &Build, prefer: Option<FilesFrom>) -> Result<Snapshot, InspectError> {
    let from = match prefer {
        Some(f) => f,
        None if build.has("tar") => FilesFrom::Tar,
        None => FilesFrom::Disk,
    };
    let mut image = Image::open(build, from == FilesFrom::Tar, true)?;
    let mut listing = None;
    let mut status = None;
    let mut files_from = None;
    if let (FilesFrom::Tar, Some(tar)) = (from, &image.tar) {
        let read = read_tar(tar, DPKG_STATUS)?;
        status = read.files.get(DPKG_STATUS).cloned();
        listing = Some(read.listing);
        files_from = Some(tar.clone());
    } else if let Some(disk) = &image.disk {
        let mut l = disk.root()?.listing()?;
        files_from = Some(disk.output.clone());
        if let Some(var) = image.factory_var()? {
            let read = read_tar(&var, DPKG_STATUS_IN_VAR)?;
            status = read.files.get(DPKG_STATUS_IN_VAR).cloned();
            for (path, e) in read.listing {
                let under = if path == "/" {
                    "/var".to_string()
                } else {
                    format!("/var{path}")
                };
                l.insert(under, e);
            }
        }
        listing = Some(l);
    }
    let r = &build.report;
    Ok(Snapshot {
        side: Side {
            name: r.name.clone(),
            version: r.version.clone(),
            report: build.report_path.clone(),
            files_from,
        },
        rocks: r.rocks.clone(),
        listing,
        packages: status
            .map(|s| packages::from_status(&s))
            .unwrap_or_default(),
        partitions: image.disk.as_ref().map(|d| d.table.partitions.clone()),
    })
}

fn read_tar(path: &Path, status: &str) -> Result<listing::TarRead, InspectError> {
    let file = File::open(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(listing::read_tar(
        BufReader::with_capacity(1 << 20, file),
        &path.display().to_string(),
        true,
        &[status],
        crate::sbom::dpkg::MAX_STATUS,
    )?)
}

fn compare_rocks(a: &[Rock], b: &[Rock]) -> Vec<RockChange> {
    let by_key = |rocks: &[Rock]| -> BTreeMap<String, Rock> {
        rocks.iter().map(|r| (r.key.clone(), r.clone())).collect()
    };
    let (ma, mb) = (by_key(a), by_key(b));
    // In the profiles' order: a's rocks, then those only b has.
    let keys: Vec<&String> = a
        .iter()
        .map(|r| &r.key)
        .chain(b.iter().map(|r| &r.key).filter(|k| !ma.contains_key(*k)))
        .collect();
    keys.into_iter()
        .filter_map(|k| {
            let (ra, rb) = (ma.get(k), mb.get(k));
            let same = matches!((ra, rb), (Some(x), Some(y))
                if x.manifest_digest == y.manifest_digest && x.index_digest == y.index_digest);
            (!same).then(|| RockChange {
                key: k.clone(),
                a: ra.cloned(),
                b: rb.cloned(),
            })
        })
        .collect()
}

/// What differs between two entries of one path; contents when both have a hash.
pub fn entry_changes(a: &Entry, b: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    if a.kind != b.kind {
        what.push("kind");
    }
    if a.mode != b.mode {
        what.push("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        what.push("owner");
    }
    if a.size != b.size {
        what.push("size");
    }
    if a.target != b.target {
        what.push("target");
    }
    if let (Some(x), Some(y)) = (&a.sha256, &b.sha256)
        && x != y
    {
        what.push("content");
    }
    what
}

pub fn compare_files(a: &Listing, b: &Listing) -> FileChanges {
    let hashed = |l: &Listing| {
        l.values()
            .filter(|e| e.kind == listing::Kind::File)
            .all(|e| e.sha256.is_some())
    };
    let mut out = FileChanges {
        contents_compared: hashed(a) && hashed(b),
        ..FileChanges::default()
    };
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for path in paths {
        match (a.get(path), b.get(path)) {
            (Some(x), None) => out.removed.push(PathEntry {
                path: path.clone(),
                entry: x.clone(),
            }),
            (None, Some(y)) => out.added.push(PathEntry {
                path: path.clone(),
                entry: y.clone(),
            }),
            (Some(x), Some(y)) => {
                let what = entry_changes(x, y);
                if !what.is_empty() {
                    out.changed.push(FileChange {
                        path: path.clone(),
                        what,
                        a: x.clone(),
                        b: y.clone(),
                    });
                }
            }
            (None, None) => {}
        }
    }
    out
}

pub fn compare_packages(a: &[Package], b: &[Package]) -> PackageChanges {
    let by_key = |l: &[Package]| -> BTreeMap<(String, String), Package> {
        l.iter()
            .map(|p| ((p.name.clone(), p.arch.clone()), p.clone()))
            .collect()
    };
    let (ma, mb) = (by_key(a), by_key(b));
    let mut out = PackageChanges::default();
    for (k, p) in &ma {
        match mb.get(k) {
            None => out.removed.push(p.clone()),
            Some(q) if q.version != p.version => out.changed.push(VersionChange {
                name: p.name.clone(),
                arch: p.arch.clone(),
                a: p.version.clone(),
                b: q.version.clone(),
            }),
            Some(_) => {}
        }
    }
    out.added = mb
        .iter()
        .filter(|(k, _)| !ma.contains_key(*k))
        .map(|(_, p)| p.clone())
        .collect();
    out
}

/// Partitions compared by their number in the table: slot B's two are both named `_empty`.
pub fn compare_partitions(a: &[Partition], b: &[Partition]) -> Vec<PartitionChange> {
    let mut out = Vec::new();
    for p in a {
        match b.iter().find(|q| q.number == p.number) {
            None => out.push(PartitionChange {
                name: p.name.clone(),
                what: vec!["type", "size"],
                a: Some(p.clone()),
                b: None,
            }),
            Some(q) => {
                let mut what = Vec::new();
                if p.name != q.name {
                    what.push("name");
                }
                if !p.type_guid.eq_ignore_ascii_case(&q.type_guid) {
                    what.push("type");
                }
                if p.size != q.size {
                    what.push("size");
                }
                if !what.is_empty() {
                    out.push(PartitionChange {
                        name: p.name.clone(),
                        what,
                        a: Some(p.clone()),
                        b: Some(q.clone()),
                    });
                }
            }
        }
    }
    for q in b.iter().filter(|q| !a.iter().any(|p| p.number == q.number)) {
        out.push(PartitionChange {
            name: q.name.clone(),
            what: vec!["type", "size"],
            a: None,
            b: Some(q.clone()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::listing::Kind;

    fn file(size: u64, sha: &str) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            target: None,
            sha256: Some(sha.into()),
        }
    }

    #[test]
    fn lists_exactly_what_differs() {
        let a: Listing = [
            ("/etc/motd".to_string(), file(3, "aa")),
            ("/etc/same".to_string(), file(1, "s")),
            ("/old".to_string(), file(1, "o")),
        ]
        .into();
        let mut moded = file(1, "s");
        moded.mode = 0o600;
        let b: Listing = [
            ("/etc/motd".to_string(), file(3, "bb")),
            ("/etc/same".to_string(), moded),
            ("/new".to_string(), file(2, "n")),
        ]
        .into();
        let d = compare_files(&a, &b);
        assert!(d.contents_compared);
        let added: Vec<&str> = d.added.iter().map(|p| p.path.as_str()).collect();
        let removed: Vec<&str> = d.removed.iter().map(|p| p.path.as_str()).collect();
        let changed: Vec<(&str, &[&str])> = d
            .changed
            .iter()
            .map(|c| (c.path.as_str(), c.what.as_slice()))
            .collect();
        assert_eq!(added, ["/new"]);
        assert_eq!(removed, ["/old"]);
        assert_eq!(
            changed,
            [
                ("/etc/motd", &["content"][..]),
                ("/etc/same", &["mode"][..])
            ]
        );

        let pkg = |n: &str, v: &str| Package {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
        };
        let p = compare_packages(
            &[pkg("bash", "5.2"), pkg("gone", "1")],
            &[pkg("bash", "5.3"), pkg("new", "2")],
        );
        assert_eq!(p.added, [pkg("new", "2")]);
        assert_eq!(p.removed, [pkg("gone", "1")]);
        assert_eq!(
            (
                p.changed[0].name.as_str(),
                p.changed[0].a.as_str(),
                p.changed[0].b.as_str()
            ),
            ("bash", "5.2", "5.3")
        );
    }
}
