//! Snaps: the profile's `[[snap]]` files verified against their pins, stored read-only in the image with the
//! order the agent installs them in, and what snapd needs on a read-only root.
//!
//! Each `.snap` is copied into the cache's work folder while its sha3-384 is computed, so the bytes that go into
//! the image are the bytes that were checked, and no snap is ever held in memory. Its `.assert` must agree with
//! it: a snap-revision assertion with the pinned digest and the file's size, and a snap-declaration of the same
//! snap id with the name its `meta/snap.yaml` gives. (snapd checks the signatures when the node acknowledges the
//! file; see `assertion.rs`.)

pub mod assertion;
pub mod meta;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use cairn_profile::{Profile, Snap, StoredSnap, contract};
use serde::Serialize;
use sha3::{Digest as _, Sha3_384};
use tempfile::NamedTempFile;
use tracing::info;

use crate::assemble::tree::{Data, Meta, New, Special, Tree, TreeError};
use crate::cache::{Cache, CacheError};
use assertion::AssertionError;
use meta::{Confinement, Kind, MetaError, SnapMeta};

/// Where snapd lives in a root that has it (Debian's package).
const SNAPD: &str = "usr/lib/snapd/snapd";
/// snapd mounts each snap under `/snap`, which a read-only root cannot give it: this unit binds the data
/// partition's `/var/lib/snapd/snap` there before snapd starts.
const SNAP_MOUNT_UNIT: &str = include_str!("../units/snap.mount");
/// The files cairn writes for snapd besides the snaps: the `/snap` mount unit and AppArmor's home folders.
pub const SNAP_MOUNT_PATH: &str = "usr/lib/systemd/system/snap.mount";
pub const APPARMOR_HOME_PATH: &str = "etc/apparmor.d/tunables/home.d/cairn";

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("{key}.file: {}: {source}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{key}.file: {}: its sha3-384 is {actual}, the profile pins {pin}: not the snap the profile names",
        path.display()
    )]
    Mismatch {
        key: String,
        path: PathBuf,
        actual: String,
        pin: String,
    },
    #[error("{key}.file: {}: {source}", path.display())]
    Meta {
        key: String,
        path: PathBuf,
        source: Box<MetaError>,
    },
    #[error("{key}.assert: {}: {source}", path.display())]
    AssertionFormat {
        key: String,
        path: PathBuf,
        source: AssertionError,
    },
    #[error("{key}.assert: {}: {message}", path.display())]
    Assertion {
        key: String,
        path: PathBuf,
        message: String,
    },
    /// The set does not install: a base or snapd missing, a name twice, devmode.
    #[error("{key}: {message}")]
    Set { key: String, message: String },
    #[error(
        "[[snap]]: the image has no snapd (/{SNAPD}): use a base rock with Debian's snapd, such as rocks/node-base built with SNAPD=1"
    )]
    NoSnapd,
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{path}: {source}")]
    Tree { path: String, source: TreeError },
    #[error("/etc/passwd: {0}")]
    Passwd(#[source] crate::filesystem::FilesystemError),
}

impl SnapError {
    /// A finding about the profile's inputs (exit 2), as against a failure of the build (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            SnapError::Mismatch { .. }
            | SnapError::AssertionFormat { .. }
            | SnapError::Assertion { .. }
            | SnapError::Set { .. }
            | SnapError::NoSnapd => true,
            SnapError::Meta { source, .. } => matches!(**source, MetaError::Invalid(_)),
            SnapError::Read { .. }
            | SnapError::Cache(_)
            | SnapError::Tree { .. }
            | SnapError::Passwd(_) => false,
        }
    }
}

/// A snap checked against its pin, its assertion and its own snap.yaml, and copied into the cache's work folder.
#[derive(Debug)]
pub struct Verified {
    pub key: String,
    pub meta: SnapMeta,
    pub revision: String,
    pub sha3_384: String,
    pub size: u64,
    /// The copy whose bytes were hashed: what goes into the image.
    copy: NamedTempFile,
    assert: Option<Arc<[u8]>>,
}

/// What the report says of each snap.
#[derive(Debug, Clone, Serialize)]
pub struct SnapReport {
    pub key: String,
    pub name: String,
    pub version: String,
    pub revision: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub confinement: &'static str,
    pub sha3_384: String,
    pub size: u64,
    /// false only for a snap the profile allowed unasserted (`unasserted = true`): nothing vouches for it.
    pub asserted: bool,
    /// Where it is in the image.
    pub path: String,
}

/// Verifies every `[[snap]]` and puts them in install order: snapd, then bases, then the rest as the profile
/// lists them. Refuses a set that cannot install offline.
pub fn verify_all(profile: &Profile, cache: &Cache) -> Result<Vec<Verified>, SnapError> {
    let mut verified = Vec::with_capacity(profile.snaps.len());
    for snap in &profile.snaps {
        let t = Instant::now();
        let v = verify(snap, cache)?;
        info!(snap = %v.meta.name, revision = %v.revision, bytes = v.size, ms = t.elapsed().as_millis() as u64, "snap verified");
        verified.push(v);
    }
    check_set(&verified)?;
    verified.sort_by_key(|v| v.meta.kind);
    Ok(verified)
}

fn verify(snap: &Snap, cache: &Cache) -> Result<Verified, SnapError> {
    let read_err = |source| SnapError::Read {
        key: snap.key.clone(),
        path: snap.file.clone(),
        source,
    };
    let mut copy = cache.temp_file()?;
    let (size, digest) = copy_hashing(&snap.file, copy.as_file_mut()).map_err(read_err)?;
    let actual = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    if actual != snap.sha3_384 {
        return Err(SnapError::Mismatch {
            key: snap.key.clone(),
            path: snap.file.clone(),
            actual,
            pin: snap.sha3_384.clone(),
        });
    }
    let meta = meta::read(copy.path()).map_err(|source| SnapError::Meta {
        key: snap.key.clone(),
        path: snap.file.clone(),
        source: Box::new(source),
    })?;
    let (revision, assert) = match &snap.assert {
        None => ("x1".to_string(), None),
        Some(path) => {
            let bytes =
                read_bounded(path, assertion::MAX_FILE).map_err(|source| SnapError::Read {
                    key: format!("{}.assert", snap.key),
                    path: path.clone(),
                    source,
                })?;
            let revision = check_assertions(snap, path, &bytes, &meta, size)?;
            (revision, Some(Arc::from(bytes)))
        }
    };
    Ok(Verified {
        key: snap.key.clone(),
        meta,
        revision,
        sha3_384: snap.sha3_384.clone(),
        size,
        copy,
        assert,
    })
}

/// Copies `from` into `to`, returning its size and sha3-384.
fn copy_hashing(from: &Path, to: &mut std::fs::File) -> io::Result<(u64, Vec<u8>)> {
    let mut input = std::fs::File::open(from)?;
    let mut out = io::BufWriter::with_capacity(1 << 20, to);
    let mut hash = Sha3_384::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.flush()?;
    Ok((size, hash.finalize().to_vec()))
}

fn read_bounded(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The assertions must describe this very file; returns the revision they give it.
fn check_assertions(
    snap: &Snap,
    path: &Path,
    bytes: &[u8],
    meta: &SnapMeta,
    size: u64,
) -> Result<String, SnapError> {
    let key = &snap.key;
    let all = assertion::parse(bytes).map_err(|source| SnapError::AssertionFormat {
        key: key.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    let wrong = |message: String| SnapError::Assertion {
        key: key.clone(),
        path: path.to_path_buf(),
        message,
    };
    let revision = all
        .iter()
        .find(|a| a.kind() == "snap-revision" && a.header("snap-sha3-384") == Some(&snap.sha3_384))
        .ok_or_else(|| {
            wrong(format!(
                "no snap-revision assertion for sha3-384 {}: this .assert belongs to another snap or revision",
                snap.sha3_384
            ))
        })?;
    let asserted_size = revision.header("snap-size").unwrap_or("");
    if asserted_size != size.to_string() {
        return Err(wrong(format!(
            "the snap-revision assertion gives snap-size {asserted_size}, the file has {size} bytes"
        )));
    }
    let number = revision.header("snap-revision").unwrap_or("");
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.starts_with('0') {
        return Err(wrong(format!(
            "the snap-revision assertion gives revision `{}`",
            number.escape_debug()
        )));
    }
    let id = revision.header("snap-id").unwrap_or("");
    let declaration = all
        .iter()
        .find(|a| a.kind() == "snap-declaration" && a.header("snap-id") == Some(id))
        .ok_or_else(|| {
            wrong(format!(
                "no snap-declaration for snap id `{}`",
                id.escape_debug()
            ))
        })?;
    let declared = declaration.header("snap-name").unwrap_or("");
    if declared != meta.name {
        return Err(wrong(format!(
            "declares the snap `{}`, but the file's meta/snap.yaml names `{}`",
            declared.escape_debug(),
            meta.name
        )));
    }
    Ok(number.to_string())
}

/// Offline, snapd installs a snap that has a base only once the snapd snap is installed, and only when its base
/// is; and one name can be installed once.
fn check_set(snaps: &[Verified]) -> Result<(), SnapError> {
    let set_err = |key: &str, message: String| SnapError::Set {
        key: key.to_string(),
        message,
    };
    let mut names = BTreeSet::new();
    for s in snaps {
        if !names.insert(s.meta.name.as_str()) {
            return Err(set_err(
                &s.key,
                format!("the snap `{}` is named twice", s.meta.name),
            ));
        }
        if s.meta.confinement == Confinement::Devmode {
            return Err(set_err(
                &s.key,
                format!(
                    "`{}` is a devmode snap: its confinement is off, which a node image does not ship",
                    s.meta.name
                ),
            ));
        }
    }
    let bases: BTreeSet<&str> = snaps
        .iter()
        .filter(|s| s.meta.kind == Kind::Base)
        .map(|s| s.meta.name.as_str())
        .collect();
    let has_snapd = snaps.iter().any(|s| s.meta.kind == Kind::Snapd);
    for s in snaps.iter().filter(|s| s.meta.kind == Kind::App) {
        // An app without `base` runs on `core`, the oldest base.
        let base = s.meta.base.as_deref().unwrap_or("core");
        if base != "none" && !bases.contains(base) {
            return Err(set_err(
                &s.key,
                format!(
                    "`{}` needs the base snap `{base}`, which no [[snap]] gives: add its .snap and .assert (`snap download {base}`)",
                    s.meta.name
                ),
            ));
        }
        if !has_snapd {
            return Err(set_err(
                &s.key,
                format!(
                    "`{}` installs offline only once the snapd snap is installed: add its .snap and .assert (`snap download snapd`)",
                    s.meta.name
                ),
            ));
        }
    }
    Ok(())
}

/// Puts the snaps, their assertions and the install plan in the image, and what snapd needs on a read-only
/// root: `/snap` bound from the data partition at boot, and root's home where snap-confine can reach it. Refuses
/// an image without snapd.
pub fn add_to_tree(
    tree: &mut Tree,
    layer_tars: &[PathBuf],
    snaps: &[Verified],
    epoch: u64,
) -> Result<Vec<SnapReport>, SnapError> {
    if snaps.is_empty() {
        return Ok(Vec::new());
    }
    if tree.lookup(SNAPD.as_bytes()).is_none() {
        return Err(SnapError::NoSnapd);
    }
    let meta = |mode| {
        let mut m = Meta::new(mode, 0, 0);
        m.mtime = epoch;
        m
    };
    let mut put = |path: &str, new: New| {
        tree.put(path.trim_start_matches('/').as_bytes(), new)
            .map_err(|source| SnapError::Tree {
                path: path.to_string(),
                source,
            })
    };
    put(contract::SNAPS_DIR_IN_ROOT, New::Dir(meta(0o755)))?;
    let mut plan = Vec::with_capacity(snaps.len());
    let mut reports = Vec::with_capacity(snaps.len());
    for s in snaps {
        let stem = format!("{}/{}_{}", contract::SNAPS_DIR, s.meta.name, s.revision);
        let file = format!("{stem}.snap");
        put(
            &file,
            New::File(
                meta(0o644),
                Data::Host {
                    path: s.copy.path().to_path_buf(),
                    size: s.size,
                },
            ),
        )?;
        let assert = match &s.assert {
            Some(bytes) => {
                let path = format!("{stem}.assert");
                put(
                    &path,
                    New::File(meta(0o644), Data::Bytes(Arc::clone(bytes))),
                )?;
                Some(path)
            }
            None => None,
        };
        plan.push(StoredSnap {
            name: s.meta.name.clone(),
            revision: s.revision.clone(),
            kind: s.meta.kind.name().to_string(),
            file: file.clone(),
            assert,
            classic: s.meta.confinement == Confinement::Classic,
            sha3_384: s.sha3_384.clone(),
        });
        reports.push(SnapReport {
            key: s.key.clone(),
            name: s.meta.name.clone(),
            version: s.meta.version.clone(),
            revision: s.revision.clone(),
            kind: s.meta.kind.name(),
            base: s.meta.base.clone(),
            confinement: s.meta.confinement.name(),
            sha3_384: s.sha3_384.clone(),
            size: s.size,
            asserted: s.assert.is_some(),
            path: file,
        });
    }
    let mut json = serde_json::to_vec_pretty(&plan).unwrap_or_default();
    json.push(b'\n');
    put(
        contract::SNAPS_PLAN_IN_ROOT,
        New::File(meta(0o644), Data::Bytes(Arc::from(json))),
    )?;
    put("var/lib/snapd/snap", New::Dir(meta(0o755)))?;
    put(
        SNAP_MOUNT_PATH,
        New::File(
            meta(0o644),
            Data::Bytes(Arc::from(SNAP_MOUNT_UNIT.as_bytes())),
        ),
    )?;
    put(
        "usr/lib/systemd/system/local-fs.target.wants/snap.mount",
        New::Other(meta(0o777), Special::Symlink(b"../snap.mount".to_vec())),
    )?;
    root_home_under_var(tree, layer_tars, epoch)?;
    Ok(reports)
}

/// Where root's home is on a node: `/root` is a symlink to it there (disk/root.rs).
const ROOT_HOME: &str = "/var/root";

/// Gives root the home `/var/root` in `/etc/passwd`. Running a snap's command, snap-confine makes the user's data
/// folder (`$HOME/snap/NAME/REV`) one component at a time with `O_NOFOLLOW`, so under the `/root` symlink every
/// command of a snap run as root dies ("cannot create user data directory: /root/snap/k8s/x1: Not a
/// directory", seen on the first booted node). The same folder, reached without a symlink, works.
fn root_home_under_var(
    tree: &mut Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
) -> Result<(), SnapError> {
    let Some(bytes) =
        crate::filesystem::read_file(tree, layer_tars, "etc/passwd").map_err(SnapError::Passwd)?
    else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&bytes);
    let Some(changed) = with_root_home(&text, ROOT_HOME) else {
        return Ok(());
    };
    tree.set_file_data(b"etc/passwd", Data::Bytes(Arc::from(changed.into_bytes())));
    // snap-confine's AppArmor profile lets it write `@{HOME}/snap/...` only, and @{HOME} is `/home/*/ /root/`:
    // without this the same command fails "Permission denied" on /var/root/snap (seen on the second boot).
    if tree.lookup(APPARMOR_HOME_D.as_bytes()).is_some() {
        let mut m = Meta::new(0o644, 0, 0);
        m.mtime = epoch;
        tree.put(
            APPARMOR_HOME_PATH.as_bytes(),
            New::File(m, Data::Bytes(Arc::from(APPARMOR_HOME.as_bytes()))),
        )
        .map_err(|source| SnapError::Tree {
            path: format!("/{APPARMOR_HOME_PATH}"),
            source,
        })?;
    }
    Ok(())
}

/// AppArmor's folder for site-specific home folders.
const APPARMOR_HOME_D: &str = "etc/apparmor.d/tunables/home.d";
const APPARMOR_HOME: &str = "# Written by cairn: root's home is /var/root on a node (/root is a symlink to it).\n@{HOME}+=/var/root/\n";

/// `passwd` with the home of the user whose uid is 0 and home `/root` set to `home`; `None` when nothing changes.
fn with_root_home(passwd: &str, home: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = passwd
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.len() == 7 && fields[2] == "0" && fields[5] == "/root" {
                fields[5] = home;
                changed = true;
                fields.join(":")
            } else {
                line.to_string()
            }
        })
        .collect();
    changed.then(|| {
        let mut out = lines.join("\n");
        if passwd.ends_with('\n') {
            out.push('\n');
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_gets_its_home_under_var_and_nothing_else_changes() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        assert_eq!(
            with_root_home(passwd, ROOT_HOME).as_deref(),
            Some(
                "root:x:0:0:root:/var/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
            )
        );
        // Already elsewhere, or not uid 0: left alone.
        assert_eq!(
            with_root_home("root:x:0:0:root:/var/root:/bin/sh\n", ROOT_HOME),
            None
        );
        assert_eq!(
            with_root_home("toor:x:1000:0::/root:/bin/sh", ROOT_HOME),
            None
        );
        assert_eq!(with_root_home("", ROOT_HOME), None);
    }
}
