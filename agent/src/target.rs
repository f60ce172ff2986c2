//! The system being configured: the live root `/`, or a root folder (`apply --root DIR`) that is never left.
//!
//! Paths are resolved component by component inside the root, symlinks followed as if the root were `/` (an
//! image's `/home -> /var/home` must land in DIR/var/home, never in the host's). Files are written by temp file,
//! fsync and rename, and only when their content, mode or owner differ, so a second run changes no byte.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

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
        }
    }

    pub fn root_dir(root: &Path) -> Target {
        Target {
            root: root.to_path_buf(),
            live: false,
        }
    }

    pub fn is_live(&self) -> bool {
        self.live
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
        let mut src = fs::File::open(from).map_err(|e| TargetError::io(path, e))?;
        replace(&host, path, owner, |f| io::copy(&mut src, f).map(|_| ()))
    }

    fn ensure_parent(&self, parent: &str) -> Result<(), TargetError> {
        let host = self.resolve(parent, true)?;
        if host.is_dir() {
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
        match fs::remove_file(&host) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(TargetError::io(path, e)),
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path, false)
            .is_ok_and(|p| fs::symlink_metadata(p).is_ok())
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
}
