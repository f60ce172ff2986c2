//! Reading what cairn wrote: its tar outputs, entry by entry, as a user would compare them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One entry of an output tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `f` file, `d` directory, `l` symlink, `h` hardlink, `c`/`b` devices, `p` fifo.
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: Vec<u8>,
    /// Symlink or hardlink target.
    pub link: String,
    pub dev: (u32, u32),
    /// PAX `SCHILY.xattr.*` records in archive order, names without the prefix.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// A tar as path → item, and the paths in archive order. Panics on anything malformed, on an entry that appears
/// twice, and on a non-empty user or group name (cairn writes numeric ids only).
pub fn read_tar(path: &Path) -> (Vec<String>, BTreeMap<String, Item>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut archive = tar::Archive::new(file);
    let mut order = Vec::new();
    let mut items = BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        let name = String::from_utf8(entry.path_bytes().into_owned()).expect("utf-8 path");
        let h = entry.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            other => panic!("unexpected entry type {other:?} for {name}"),
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().expect("pax") {
            for ext in pax {
                let ext = ext.expect("pax record");
                if let Some(n) = ext.key().expect("utf-8 key").strip_prefix("SCHILY.xattr.") {
                    xattrs.push((n.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let dev = match kind {
            'c' | 'b' => (
                h.device_major().expect("major").unwrap_or(0),
                h.device_minor().expect("minor").unwrap_or(0),
            ),
            _ => (0, 0),
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("entry data");
        assert_eq!(
            h.username_bytes().unwrap_or_default(),
            b"",
            "{name}: uname must be empty"
        );
        assert_eq!(
            h.groupname_bytes().unwrap_or_default(),
            b"",
            "{name}: gname must be empty"
        );
        let item = Item {
            kind,
            mode: h.mode().expect("mode"),
            uid: h.uid().expect("uid"),
            gid: h.gid().expect("gid"),
            mtime: h.mtime().expect("mtime"),
            data,
            link,
            dev,
            xattrs,
        };
        order.push(name.clone());
        assert!(
            items.insert(name.clone(), item).is_none(),
            "{name} appears twice"
        );
    }
    (order, items)
}

/// The hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every path under `root` (but those in `skip`, relative): content (or link target), mode, owner, and mtime in nanoseconds.
pub fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<String, (Vec<u8>, u32, u32, u32, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .expect("readlink")
                    .display()
                    .to_string()
                    .into_bytes()
            } else if m.is_file() {
                std::fs::read(&p).expect("read")
            } else if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                // Devices and fifos: their type and numbers, not their content.
                format!("special {:o} {}", m.mode() & 0o170000, m.rdev()).into_bytes()
            };
            let mtime = if m.is_dir() {
                0
            } else {
                m.mtime() * 1_000_000_000 + m.mtime_nsec()
            };
            out.insert(rel, (content, m.mode() & 0o7777, m.uid(), m.gid(), mtime));
        }
    }
    out
}
