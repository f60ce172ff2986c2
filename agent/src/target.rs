//! The system being configured: the live root `/`, or a root folder (`apply --root DIR`) that is never left.
//!
//! Paths are resolved component by component inside the root, symlinks followed as if the root were `/` (an
//! image's `/home -> /var/home` must land in DIR/var/home, never in the host's). Files are written by temp file,
//! fsync and rename, and only when their content, mode or owner differ, so a second run changes no byte.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::dry::{Change, Pending, Shared};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TargetError {
    pub path: String,
    pub message: String,
}

impl TargetError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> TargetError {
        TargetError {
            path: path.into(),
            message: message.into(),
        }
    }

    fn io(path: &str, e: io::Error) -> TargetError {
        TargetError::new(path, e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    root: PathBuf,
    /// The running system: live calls (hostname, sysctl, modules, systemctl) are allowed.
    live: bool,
    /// A dry run's record: writes are recorded there instead of made (see [`Target::dry`]).
    dry: Option<Shared>,
}

/// Ownership and permissions of a file to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT_0644: Owner = Owner {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
}

const MAX_SYMLINKS: u32 = 40;

impl Target {
    pub fn live() -> Target {
        Target {
            root: PathBuf::from("/"),
            live: true,
            dry: None,
        }
    }

    pub fn root_dir(root: &Path) -> Target {
        Target {
            root: root.to_path_buf(),
            live: false,
            dry: None,
        }
    }

    /// The same system for a dry run: it reads what is there, and records each write, folder, link, removal or
    /// copy it would make instead of making it ([`Target::take_changes`]); later reads see the recorded writes.
    pub fn dry(&self) -> Target {
        Target {
            dry: Some(Shared::default()),
            ..self.clone()
        }
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn is_dry(&self) -> bool {
        self.dry.is_some()
    }

    /// Whether calls that change the running system (its hostname, sysctls, systemctl) are made: on the live
    /// system, outside a dry run.
    pub fn changes_live(&self) -> bool {
        self.live && self.dry.is_none()
    }

    /// A dry run's changes since the last call; always none outside a dry run.
    pub fn take_changes(&self) -> Vec<Change> {
        self.dry.as_ref().map(Shared::take).unwrap_or_default()
    }

    /// Records a change said in words, in a dry run; nothing otherwise.
    pub fn say(&self, change: impl Into<String>) {
        if let Some(d) = &self.dry {
            d.record(Change::Said(change.into()), None);
        }
    }

    /// A dry run's view of `host`, when a recorded change touched it.
    fn pending(&self, host: &Path) -> Option<Pending> {
        self.dry.as_ref().and_then(|d| d.pending(host))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path for an absolute path inside the target, every symlink resolved inside the root. The last
    /// component may be missing (it is about to be created); it is not followed when it is a symlink and
    /// `follow_last` is false.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<PathBuf, TargetError> {
        let mut hops = 0;
        let mut stack: Vec<std::ffi::OsString> = Vec::new();
        let mut todo: Vec<std::ffi::OsString> = Path::new(path)
            .components()
            .rev()
            .filter_map(component_name)
            .collect();
        while let Some(c) = todo.pop() {
            if c == ".." {
                stack.pop();
                continue;
            }
            let mut candidate = self.root.clone();
            candidate.extend(&stack);
            candidate.push(&c);
            let is_last = todo.is_empty();
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(TargetError::new(path, "too many levels of symbolic links"));
                    }
                    let link = fs::read_link(&candidate).map_err(|e| TargetError::io(path, e))?;
                    if link.is_absolute() {
                        stack.clear();
                    }
                    todo.extend(link.components().rev().filter_map(component_name));
                }
                _ => stack.push(c),
            }
        }
        let mut out = self.root.clone();
        out.extend(&stack);
        Ok(out)
    }

    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TargetError> {
        let host = self.resolve(path, true)?;
        match self.pending(&host) {
            Some(Pending::File(bytes, _)) => return Ok(Some(bytes)),
            Some(Pending::Gone) => return Ok(None),
            _ => {}
        }
        match fs::read(&host) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TargetError::io(path, e)),
        }
    }

    pub fn read_string(&self, path: &str) -> Result<Option<String>, TargetError> {
        match self.read(path)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| TargetError::new(path, "not UTF-8 text")),
        }
    }

    /// Creates a directory and its missing parents (parents root-owned 0755); sets the last one's owner.
    pub fn ensure_dir(&self, path: &str, owner: Owner) -> Result<bool, TargetError> {
        let mut changed = false;
        let mut so_far = String::new();
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (i, c) in parts.iter().enumerate() {
            so_far.push('/');
            so_far.push_str(c);
            let host = self.resolve(&so_far, true)?;
            let want = if i + 1 == parts.len() {
                owner
            } else {
                Owner {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                }
            };
            if let Some(dry) = &self.dry {
                changed |= self.dry_dir(dry, &host, &so_far, want, i + 1 == parts.len())?;
                continue;
            }
            match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => {
                    if i + 1 == parts.len() {
                        changed |= set_owner(&host, &so_far, want, &m)?;
                    }
                }
                Ok(_) => return Err(TargetError::new(&so_far, "exists and is not a directory")),
                Err(_) => {
                    fs::create_dir(&host).map_err(|e| TargetError::io(&so_far, e))?;
                    let m = fs::symlink_metadata(&host).map_err(|e| TargetError::io(&so_far, e))?;
                    set_owner(&host, &so_far, want, &m)?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Writes a file atomically when its content or ownership differ; returns whether anything changed.
    pub fn write(&self, path: &str, content: &[u8], owner: Owner) -> Result<bool, TargetError> {
        let parent = Path::new(path)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("/");
        if parent != "/" {
            self.ensure_parent(parent)?;
        }
        let host = self.resolve(path, true)?;
        if let Some(dry) = &self.dry {
            return Ok(self.dry_write(dry, &host, path, content, owner));
        }
        if let Ok(m) = fs::symlink_metadata(&host)
            && m.is_file()
            && fs::read(&host).is_ok_and(|old| old == content)
        {
            return set_owner(&host, path, owner, &m);
        }
        replace(&host, path, owner, |f| f.write_all(content))?;
        Ok(true)
    }

    /// Copies a host file into `path` by streaming (an image archive may be hundreds of megabytes): temp file,
    /// fsync, rename, like [`Target::write`]. The parent folder must exist.
    pub fn copy_in(&self, from: &Path, path: &str, owner: Owner) -> Result<(), TargetError> {
        let host = self.resolve(path, true)?;
        if let Some(dry) = &self.dry {
            let bytes = fs::metadata(from)
                .map_err(|e| TargetError::io(path, e))?
                .len();
            let change = Change::Copy {
                path: path.into(),
                from: from.to_path_buf(),
                bytes,
            };
            dry.record(change, None);
            return Ok(());
        }
        let mut src = fs::File::open(from).map_err(|e| TargetError::io(path, e))?;
        replace(&host, path, owner, |f| io::copy(&mut src, f).map(|_| ()))
    }

    fn ensure_parent(&self, parent: &str) -> Result<(), TargetError> {
        let host = self.resolve(parent, true)?;
        if host.is_dir() || matches!(self.pending(&host), Some(Pending::Dir(_))) {
            return Ok(());
        }
        self.ensure_dir(
            parent,
            Owner {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .map(|_| ())
    }

    /// Makes `path` a symlink to `target`, replacing a file or another link; returns whether it changed.
    pub fn symlink(&self, path: &str, target: &str) -> Result<bool, TargetError> {
        let parent = Path::new(path)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("/");
        if parent != "/" {
            self.ensure_parent(parent)?;
        }
        let host = self.resolve(path, false)?;
        if let Some(dry) = &self.dry {
            let old = match self.pending(&host) {
                Some(Pending::Link(to)) => Some(to),
                Some(Pending::Gone) => None,
                Some(_) => Some("a file".into()),
                None => match fs::read_link(&host) {
                    Ok(to) => Some(to.display().to_string()),
                    Err(_) if fs::symlink_metadata(&host).is_ok() => Some("a file".into()),
                    Err(_) => None,
                },
            };
            if old.as_deref() == Some(target) {
                return Ok(false);
            }
            let change = Change::Symlink {
                path: path.into(),
                to: target.into(),
                old,
            };
            dry.record(change, Some((host, Pending::Link(target.into()))));
            return Ok(true);
        }
        if fs::read_link(&host).is_ok_and(|t| t == Path::new(target)) {
            return Ok(false);
        }
        let dir = host.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".cairn-link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| TargetError::io(path, e))?;
        fs::rename(&tmp, &host).map_err(|e| TargetError::io(path, e))?;
        sync_dir(dir);
        Ok(true)
    }

    /// Removes a file or symlink if present; returns whether it was there.
    pub fn remove(&self, path: &str) -> Result<bool, TargetError> {
        let host = self.resolve(path, false)?;
        if let Some(dry) = &self.dry {
            let there = match self.pending(&host) {
                Some(Pending::Gone) => false,
                Some(_) => true,
                None => fs::symlink_metadata(&host).is_ok(),
            };
            if there {
                dry.record(
                    Change::Remove { path: path.into() },
                    Some((host, Pending::Gone)),
                );
            }
            return Ok(there);
        }
        match fs::remove_file(&host) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(TargetError::io(path, e)),
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path, false)
            .is_ok_and(|p| match self.pending(&p) {
                Some(Pending::Gone) => false,
                Some(_) => true,
                None => fs::symlink_metadata(p).is_ok(),
            })
    }

    /// A dry [`Target::write`]: what the file is (recorded earlier, or on disk) against what it would be.
    fn dry_write(
        &self,
        dry: &Shared,
        host: &Path,
        path: &str,
        content: &[u8],
        owner: Owner,
    ) -> bool {
        let now = match self.pending(host) {
            Some(Pending::File(bytes, o)) => Some((bytes, o)),
            Some(_) => None,
            None => match fs::symlink_metadata(host) {
                Ok(m) if m.is_file() => fs::read(host).ok().map(|b| (b, owner_of(&m))),
                _ => None,
            },
        };
        let change = match now {
            Some((bytes, o)) if bytes == content => {
                if o == owner {
                    return false;
                }
                Change::Owner {
                    path: path.into(),
                    old: o,
                    new: owner,
                }
            }
            old => Change::Write {
                path: path.into(),
                old,
                new: content.to_vec(),
                owner,
            },
        };
        let pending = Pending::File(content.to_vec(), owner);
        dry.record(change, Some((host.to_path_buf(), pending)));
        true
    }

    /// A dry [`Target::ensure_dir`] for one folder on the way (`last`: the one whose owner is set).
    fn dry_dir(
        &self,
        dry: &Shared,
        host: &Path,
        shown: &str,
        want: Owner,
        last: bool,
    ) -> Result<bool, TargetError> {
        let now = match self.pending(host) {
            Some(Pending::Dir(o)) => Some(o),
            Some(Pending::Gone) => None,
            Some(_) => return Err(TargetError::new(shown, "exists and is not a directory")),
            None => match fs::symlink_metadata(host) {
                Ok(m) if m.is_dir() => Some(owner_of(&m)),
                Ok(_) => return Err(TargetError::new(shown, "exists and is not a directory")),
                Err(_) => None,
            },
        };
        let change = match now {
            Some(o) if !last || o == want => return Ok(false),
            Some(o) => Change::Owner {
                path: shown.into(),
                old: o,
                new: want,
            },
            None => Change::MakeDir {
                path: shown.into(),
                owner: want,
            },
        };
        dry.record(change, Some((host.to_path_buf(), Pending::Dir(want))));
        Ok(true)
    }
}

fn owner_of(m: &fs::Metadata) -> Owner {
    Owner {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    }
}

fn component_name(c: Component<'_>) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

fn set_owner(host: &Path, shown: &str, want: Owner, m: &fs::Metadata) -> Result<bool, TargetError> {
    let mut changed = false;
    if m.uid() != want.uid || m.gid() != want.gid {
        std::os::unix::fs::chown(host, Some(want.uid), Some(want.gid))
            .map_err(|e| TargetError::io(shown, e))?;
        changed = true;
    }
    // chown clears setuid bits: set the mode after it.
    if m.mode() & 0o7777 != want.mode || changed {
        fs::set_permissions(host, fs::Permissions::from_mode(want.mode))
            .map_err(|e| TargetError::io(shown, e))?;
        changed |= m.mode() & 0o7777 != want.mode;
    }
    Ok(changed)
}

/// Makes a rename durable; failure only weakens durability, so it is not an error.
/// Puts what `fill` writes at `host` atomically: a temp file beside it, its owner and mode, fsync, rename, and
/// the folder synced, so a crash leaves the old file or the new one, never half of it.
fn replace(
    host: &Path,
    shown: &str,
    owner: Owner,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> Result<(), TargetError> {
    let dir = host.parent().unwrap_or(Path::new("/"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-")
        .tempfile_in(dir)
        .map_err(|e| TargetError::io(shown, e))?;
    fill(tmp.as_file_mut()).map_err(|e| TargetError::io(shown, e))?;
    let m = tmp
        .as_file()
        .metadata()
        .map_err(|e| TargetError::io(shown, e))?;
    set_owner(tmp.path(), shown, owner, &m)?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| TargetError::io(shown, e))?;
    tmp.persist(host)
        .map_err(|e| TargetError::io(shown, e.error))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::root_dir(dir.path());
        fs::create_dir_all(dir.path().join("var/home")).unwrap();
        std::os::unix::fs::symlink("/var/home", dir.path().join("home")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", dir.path().join("var/up")).unwrap();
        assert_eq!(
            t.resolve("/home/ops/.ssh", true).unwrap(),
            dir.path().join("var/home/ops/.ssh")
        );
        assert_eq!(
            t.resolve("/var/up/passwd", true).unwrap(),
            dir.path().join("etc/passwd")
        );
        assert_eq!(t.resolve("/home", false).unwrap(), dir.path().join("home"));
    }

    #[test]
    fn writes_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::root_dir(dir.path());
        assert!(t.write("/etc/x/y", b"one", Owner::ROOT_0644).unwrap());
        assert!(!t.write("/etc/x/y", b"one", Owner::ROOT_0644).unwrap());
        assert!(
            t.write(
                "/etc/x/y",
                b"one",
                Owner {
                    mode: 0o600,
                    uid: 0,
                    gid: 0
                }
            )
            .unwrap()
        );
        assert_eq!(
            fs::metadata(dir.path().join("etc/x/y")).unwrap().mode() & 0o7777,
            0o600
        );
        assert!(t.symlink("/etc/l", "/usr/share/zoneinfo/UTC").unwrap());
        assert!(!t.symlink("/etc/l", "/usr/share/zoneinfo/UTC").unwrap());
        assert!(t.remove("/etc/l").unwrap());
        assert!(!t.remove("/etc/l").unwrap());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("etc/x")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp files left");
    }

    #[test]
    fn a_dry_target_records_instead_of_writing() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/kept"), "same").unwrap();
        fs::set_permissions(
            dir.path().join("etc/kept"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let t = Target::root_dir(dir.path()).dry();
        let before: Vec<_> = walk(dir.path());
        let m = fs::metadata(dir.path().join("etc/kept")).unwrap();
        let kept = Owner {
            mode: 0o644,
            uid: m.uid(),
            gid: m.gid(),
        };
        assert!(!t.write("/etc/kept", b"same", kept).unwrap());
        assert!(t.write("/etc/x/y", b"one", Owner::ROOT_0644).unwrap());
        // A later read sees the write, and the same write again changes nothing more.
        assert_eq!(t.read("/etc/x/y").unwrap().as_deref(), Some(&b"one"[..]));
        assert!(!t.write("/etc/x/y", b"one", Owner::ROOT_0644).unwrap());
        assert!(t.exists("/etc/x"));
        assert!(t.symlink("/etc/l", "/usr/share/zoneinfo/UTC").unwrap());
        assert!(t.remove("/etc/kept").unwrap());
        assert!(!t.exists("/etc/kept"));
        assert!(!t.remove("/etc/kept").unwrap());
        assert_eq!(
            t.take_changes(),
            [
                Change::MakeDir {
                    path: "/etc/x".into(),
                    owner: Owner {
                        mode: 0o755,
                        uid: 0,
                        gid: 0
                    }
                },
                Change::Write {
                    path: "/etc/x/y".into(),
                    old: None,
                    new: b"one".to_vec(),
                    owner: Owner::ROOT_0644
                },
                Change::Symlink {
                    path: "/etc/l".into(),
                    to: "/usr/share/zoneinfo/UTC".into(),
                    old: None
                },
                Change::Remove {
                    path: "/etc/kept".into()
                },
            ]
        );
        assert!(t.take_changes().is_empty());
        assert_eq!(walk(dir.path()), before, "a dry target wrote");
    }

    /// Every path under `root` with its metadata's mode and mtime.
    fn walk(root: &Path) -> Vec<(PathBuf, u32, i64)> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    todo.push(p.clone());
                }
                out.push((p, m.mode(), m.mtime_nsec() + m.mtime() * 1_000_000_000));
            }
        }
        out.sort();
        out
    }
}
