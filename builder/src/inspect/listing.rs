//! An image's file listing: each path with its kind, mode, owner, size and link target, from a tar (the `tar`
//! output, or the factory `/var` archive), with each file's sha256, or from the squashfs root (`unsquashfs -lln`),
//! without: squashfs keeps no content hashes, and reading every file back would cost a full extraction.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("{file}: {message}")]
    Tar { file: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// A regular file's size; 0 for anything else.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A regular file's content hash, when the listing came from a tar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Absolute path → entry.
pub type Listing = BTreeMap<String, Entry>;

/// `./etc/motd`, `etc/motd`, `etc/` → `/etc/motd`, `/etc`; the root is `/`.
fn absolute(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_matches('/');
    if p.is_empty() || p == "." {
        "/".into()
    } else {
        format!("/{p}")
    }
}

/// What [`read_tar`] found: the listing (when asked) and the files asked for, whole.
#[derive(Debug, Default)]
pub struct TarRead {
    pub listing: Listing,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads a tar: every entry into the listing when `list` (with content hashes), and the regular files named in
/// `want` (absolute, at most `max` bytes each; a larger one is cut) into `files`. `file` names the tar in errors.
/// A hardlink is listed as the file it links to.
pub fn read_tar(
    reader: impl Read,
    file: &str,
    list: bool,
    want: &[&str],
    max: usize,
) -> Result<TarRead, ListingError> {
    let bad = |e: std::io::Error| ListingError::Tar {
        file: file.to_string(),
        message: e.to_string(),
    };
    let mut out = TarRead::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = absolute(&String::from_utf8_lossy(&entry.path_bytes()));
        let h = entry.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Char => Kind::Char,
            tar::EntryType::Block => Kind::Block,
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|l| absolute(&String::from_utf8_lossy(&l)))
                    .unwrap_or_default();
                if let Some(e) = out.listing.get(&target).cloned() {
                    out.listing.insert(path.clone(), e);
                }
                if let Some(bytes) = out.files.get(&target).cloned()
                    && want.contains(&path.as_str())
                {
                    out.files.insert(path, bytes);
                }
                continue;
            }
            _ => continue,
        };
        let mode = h.mode().map_err(bad)? & 0o7777;
        let (uid, gid) = (h.uid().map_err(bad)?, h.gid().map_err(bad)?);
        let target = (kind == Kind::Symlink).then(|| {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        });
        let size = if kind == Kind::File { entry.size() } else { 0 };
        let wanted = kind == Kind::File && want.contains(&path.as_str());
        let mut sha256 = None;
        if kind == Kind::File && (list || wanted) {
            let mut hash = Sha256::new();
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = entry.read(&mut buf).map_err(bad)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                if wanted && kept.len() < max {
                    let room = max - kept.len();
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            sha256 = Some(hex::encode(hash.finalize()));
            if wanted {
                out.files.insert(path.clone(), kept);
            }
        }
        if list {
            out.listing.insert(
                path,
                Entry {
                    kind,
                    mode,
                    uid,
                    gid,
                    size,
                    target,
                    sha256,
                },
            );
        }
    }
    Ok(out)
}

/// Parses `unsquashfs -lln`'s lines: `MODE UID/GID SIZE DATE TIME squashfs-root/PATH[ -> TARGET]` (a device's
/// SIZE is `MAJOR, MINOR`). A name with a newline continues on the next line, which does not start with a mode.
/// A symlink whose own name holds ` -> ` is cut at the first one: unsquashfs's listing cannot tell.
pub fn parse_unsquashfs(text: &[u8]) -> Listing {
    let text = String::from_utf8_lossy(text);
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        match lines.last_mut() {
            Some(last) if !looks_like_entry(line) && !line.is_empty() => {
                last.push('\n');
                last.push_str(line);
            }
            _ if line.is_empty() => {}
            _ => lines.push(line.to_string()),
        }
    }
    let mut out = Listing::new();
    for line in lines {
        let Some((fields, path)) = split_at_root(&line) else {
            continue;
        };
        let f: Vec<&str> = fields.split_whitespace().collect();
        let Some(mode) = f.first().and_then(|m| parse_mode(m)) else {
            continue;
        };
        let (kind, mode) = mode;
        let (uid, gid) = f
            .get(1)
            .and_then(|o| o.split_once('/'))
            .map(|(u, g)| (u.parse().unwrap_or(0), g.parse().unwrap_or(0)))
            .unwrap_or((0, 0));
        let size = if kind == Kind::File {
            f.get(2).and_then(|s| s.parse().ok()).unwrap_or(0)
        } else {
            0
        };
        let (path, target) = match (kind, path.split_once(" -> ")) {
            (Kind::Symlink, Some((p, t))) => (p, Some(t.to_string())),
            _ => (path, None),
        };
        out.insert(
            absolute(path),
            Entry {
                kind,
                mode,
                uid,
                gid,
                size,
                target,
                sha256: None,
            },
        );
    }
    out
}

const ROOT_NAME: &str = "squashfs-root";

/// `(fields, path below the root)`: the path starts at the first ` squashfs-root`, which no field before it holds.
fn split_at_root(line: &str) -> Option<(&str, &str)> {
    let at = line.find(&format!(" {ROOT_NAME}"))?;
    let rest = &line[at + 1 + ROOT_NAME.len()..];
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some((&line[..at], rest))
}

fn looks_like_entry(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|m| parse_mode(m).is_some())
        && split_at_root(line).is_some()
}

/// `-rwsr-xr-x` → (file, 0o4755).
fn parse_mode(m: &str) -> Option<(Kind, u32)> {
    let b = m.as_bytes();
    if b.len() != 10 {
        return None;
    }
    let kind = match b[0] {
        b'-' => Kind::File,
        b'd' => Kind::Dir,
        b'l' => Kind::Symlink,
        b'c' => Kind::Char,
        b'b' => Kind::Block,
        b'p' => Kind::Fifo,
        b's' => Kind::Socket,
        _ => return None,
    };
    let mut mode = 0u32;
    for (i, special) in [(0usize, 0o4000u32), (1, 0o2000), (2, 0o1000)] {
        let t = &b[1 + i * 3..4 + i * 3];
        let shift = 6 - i * 3;
        match t[0] {
            b'r' => mode |= 4 << shift,
            b'-' => {}
            _ => return None,
        }
        match t[1] {
            b'w' => mode |= 2 << shift,
            b'-' => {}
            _ => return None,
        }
        // The third letter also carries setuid, setgid or sticky: lower case when the x bit is set too.
        let (exec, set) = match (t[2], i) {
            (b'x', _) => (true, false),
            (b'-', _) => (false, false),
            (b's', 0 | 1) | (b't', 2) => (true, true),
            (b'S', 0 | 1) | (b'T', 2) => (false, true),
            _ => return None,
        };
        if exec {
            mode |= 1 << shift;
        }
        if set {
            mode |= special;
        }
    }
    Some((kind, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unsquashfs_listings_with_every_kind() {
        let text = b"drwxr-xr-x 0/0                      59 2026-12-02 07:35 squashfs-root\n\
drwxrwxrwt 0/0                      38 2026-12-02 07:35 squashfs-root/tmp\n\
-rwsr-xr-x 0/0                       3 2026-12-02 07:35 squashfs-root/d/a\n\
-rw-r--r-- 1000/1001                 4 2026-12-02 07:35 squashfs-root/d/sp ace\n\
-rw-r--r-- 0/0                       2 2026-12-02 07:35 squashfs-root/new\nline\n\
crw-r--r-- 0/0                   1,  3 2026-12-02 07:35 squashfs-root/dev/null\n\
prw-r--r-- 0/0                       0 2026-12-02 07:35 squashfs-root/fifo\n\
lrwxrwxrwx 0/0                       3 2026-12-02 07:35 squashfs-root/lnk -> d/a\n";
        let l = parse_unsquashfs(text);
        let got: Vec<String> = l
            .iter()
            .map(|(p, e)| {
                let target = e.target.as_deref().unwrap_or("-");
                let (kind, mode, uid, size) = (e.kind.name(), e.mode, e.uid, e.size);
                format!("{p:?} {kind} {mode:o} {uid} {size} {target}")
            })
            .collect();
        assert_eq!(
            got,
            [
                r#""/" dir 755 0 0 -"#,
                r#""/d/a" file 4755 0 3 -"#,
                r#""/d/sp ace" file 644 1000 4 -"#,
                r#""/dev/null" char 644 0 0 -"#,
                r#""/fifo" fifo 644 0 0 -"#,
                r#""/lnk" symlink 777 0 0 d/a"#,
                r#""/new\nline" file 644 0 2 -"#,
                r#""/tmp" dir 1777 0 0 -"#,
            ]
        );
        assert_eq!(l["/d/sp ace"].gid, 1001);
        assert_eq!(parse_mode("-rwSr-sr-T"), Some((Kind::File, 0o7654)));
        assert_eq!(parse_mode("-rwxr-xr-q"), None);
    }

    #[test]
    fn reads_a_tar_with_hashes_hardlinks_and_wanted_files() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o640);
            h.set_uid(3);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            b.append_data(&mut h, path, data).unwrap();
        };
        add("./", tar::EntryType::Directory, b"", None);
        add(
            "var/lib/dpkg/status",
            tar::EntryType::Regular,
            b"Package: a\n",
            None,
        );
        add(
            "var/hard",
            tar::EntryType::Link,
            b"",
            Some("var/lib/dpkg/status"),
        );
        add("var/sym", tar::EntryType::Symlink, b"", Some("lib"));
        let bytes = b.into_inner().unwrap();
        let r = read_tar(&bytes[..], "t.tar", true, &["/var/lib/dpkg/status"], 4).unwrap();
        assert_eq!(r.files["/var/lib/dpkg/status"], b"Pack", "cut at max");
        let status = &r.listing["/var/lib/dpkg/status"];
        assert_eq!(
            (status.kind, status.mode, status.uid, status.size),
            (Kind::File, 0o640, 3, 11)
        );
        assert_eq!(
            status.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"Package: a\n")).as_str())
        );
        assert_eq!(&r.listing["/var/hard"], status);
        assert_eq!(r.listing["/var/sym"].target.as_deref(), Some("lib"));
        assert_eq!(r.listing["/"].kind, Kind::Dir);
        let e = read_tar(&bytes[..700], "t.tar", true, &[], 0).unwrap_err();
        assert!(e.to_string().starts_with("t.tar: "), "{e}");
    }
}
