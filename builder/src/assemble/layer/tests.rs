use std::fs::File;
use std::io::Write;

use flate2::write::GzEncoder;

use super::limits::{Limits, MAX_LONG_NAME, MAX_PAX_HEADER};
use super::*;

#[test]
fn normalises_and_refuses_dotdot() {
    assert_eq!(normalise(b"./etc//passwd").unwrap(), b"etc/passwd");
    assert_eq!(normalise(b"/usr/bin/").unwrap(), b"usr/bin");
    assert_eq!(normalise(b"./").unwrap(), b"");
    let e = normalise(b"etc/../../x").unwrap_err().to_string();
    assert!(e.contains("could escape the root"), "{e}");
}

/// A layer blob written header by header, hashed as it goes so its diff_id is right: hostile streams of
/// gigabytes are made without holding them, their data streamed through the encoder.
struct Blob {
    gz: GzEncoder<File>,
    hash: Sha256,
}

impl Blob {
    fn new(path: &Path) -> Blob {
        Blob {
            gz: GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast()),
            hash: Sha256::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.gz.write_all(bytes).unwrap();
        self.hash.update(bytes);
    }

    /// A header of type `kind` for `name` (up to 100 bytes) claiming `size` bytes of data.
    fn header(&mut self, kind: u8, name: &[u8], size: u64) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        self.write(h.as_bytes());
    }

    fn data(&mut self, bytes: &[u8]) {
        self.write(bytes);
        self.pad(bytes.len() as u64);
    }

    fn pad(&mut self, size: u64) {
        self.write(&vec![0; ((512 - size % 512) % 512) as usize]);
    }

    /// `size` zero bytes of data, padded, streamed through the encoder a chunk at a time.
    fn zeros(&mut self, size: u64) {
        let chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            self.gz.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        self.pad(size);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.header(b'0', name.as_bytes(), data.len() as u64);
        self.data(data);
    }

    /// A GNU long name (`L`) or long link (`K`) record with the NUL the tools add.
    fn long(&mut self, kind: u8, value: &[u8]) {
        let mut data = value.to_vec();
        data.push(0);
        self.header(kind, b"././@LongLink", data.len() as u64);
        self.data(&data);
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.header(b'x', b"PaxHeaders/entry", data.len() as u64);
        self.data(&data);
    }

    /// Ends the blob where it is, without an end-of-archive block (and with a diff_id that cannot match).
    fn cut(self, path: &Path) -> Layer {
        self.gz.finish().unwrap();
        let blob = std::fs::read(path).unwrap();
        Layer {
            digest: Digest::from_sha256(&Sha256::digest(&blob)),
            size: blob.len() as u64,
            media_type: String::new(),
            compression: Compression::Gzip,
            diff_id: Digest::from_sha256(&[0; 32]),
        }
    }

    /// Ends the archive; returns the layer as the config would describe it.
    fn finish(mut self, path: &Path) -> Layer {
        self.write(&[0; 1024]);
        self.gz.finish().unwrap();
        let blob = std::fs::read(path).unwrap();
        Layer {
            digest: Digest::from_sha256(&Sha256::digest(&blob)),
            size: blob.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compression: Compression::Gzip,
            diff_id: Digest::from_sha256(&self.hash.finalize()),
        }
    }
}

struct Scratch {
    _dir: tempfile::TempDir,
    cache: Cache,
    blob: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let blob = dir.path().join("blob");
    Scratch {
        _dir: dir,
        cache,
        blob,
    }
}

/// Unpacks a layer that must be refused: returns the message, having checked the cache kept nothing of it.
fn refused(s: &Scratch, layer: &Layer, limits: &Limits) -> String {
    let e = unpack_within(&s.cache, layer, &s.blob, limits).unwrap_err();
    assert!(matches!(e, LayerError::Limit { .. }), "{e:?}");
    assert!(!s.cache.unpacked_dir(&layer.digest).exists());
    // Only the work folder's own lock is left in it.
    let tmp: Vec<_> = std::fs::read_dir(s.cache.work_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(tmp, ["lock"], "the unpack left its temp folder");
    e.to_string()
}

#[test]
fn a_pax_header_of_1_gib_is_refused_before_it_is_read() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.header(b'x', b"PaxHeaders/huge", 1 << 30);
    b.zeros(1 << 30);
    b.file("after", b"x");
    let layer = b.finish(&s.blob);
    assert_eq!(
        refused(&s, &layer, &Limits::DEFAULT),
        format!(
            "layer {}: entry 0 (offset 0): PAX extended header of 1073741824 bytes exceeds the limit of {}",
            layer.digest, MAX_PAX_HEADER
        )
    );
}

#[test]
fn a_gnu_long_name_of_256_mib_is_refused_before_it_is_read() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.file("first", b"abc");
    b.header(b'L', b"././@LongLink", 256 << 20);
    b.zeros(256 << 20);
    b.file("named", b"");
    let layer = b.finish(&s.blob);
    assert_eq!(
        refused(&s, &layer, &Limits::DEFAULT),
        format!(
            "layer {}: entry 1 (offset 1024): GNU long name of 268435456 bytes exceeds the limit of {}",
            layer.digest, MAX_LONG_NAME
        )
    );
}

#[test]
fn a_claimed_size_is_refused_even_when_the_stream_ends_before_it() {
    // Nothing after the header: reading the record first would fail on the short stream instead.
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.header(b'x', b"PaxHeaders/huge", 1 << 40);
    let layer = b.cut(&s.blob);
    let e = refused(&s, &layer, &Limits::DEFAULT);
    assert!(
        e.ends_with("PAX extended header of 1099511627776 bytes exceeds the limit of 1048576"),
        "{e}"
    );
}

#[test]
fn a_long_link_over_the_limit_is_refused() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.header(b'K', b"././@LongLink", MAX_LONG_NAME + 1);
    b.zeros(MAX_LONG_NAME + 1);
    b.header(b'2', b"link", 0);
    let layer = b.finish(&s.blob);
    assert_eq!(
        refused(&s, &layer, &Limits::DEFAULT),
        format!(
            "layer {}: entry 0 (offset 0): GNU long link name of 65537 bytes exceeds the limit of 65536",
            layer.digest
        )
    );
}

#[test]
fn too_many_entries_are_refused() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    for i in 0..11 {
        b.file(&format!("f{i}"), b"");
    }
    let layer = b.finish(&s.blob);
    let limits = Limits {
        entries: 10,
        ..Limits::DEFAULT
    };
    assert_eq!(
        refused(&s, &layer, &limits),
        format!(
            "layer {}: entry 10 (offset 5120, `f10`): more than 10 entries",
            layer.digest
        )
    );
    // Ten is the limit, not one past it.
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    for i in 0..10 {
        b.file(&format!("f{i}"), b"");
    }
    let layer = b.finish(&s.blob);
    let unpacked = unpack_within(&s.cache, &layer, &s.blob, &limits).unwrap();
    assert_eq!(unpacked.entries.len(), 10);
}

/// `count` components of `len` bytes joined by `/`: a path of `count * (len + 1) - 1` bytes.
fn long_path(count: usize, len: usize) -> Vec<u8> {
    let component = vec![b'c'; len];
    vec![component; count].join(&b'/')
}

#[test]
fn over_long_paths_and_components_are_refused() {
    // 16 components of 255 bytes: 4095 bytes, the most there may be.
    let mut longest = long_path(16, 255);
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.long(b'L', &longest);
    b.header(b'0', b"truncated-name", 0);
    let layer = b.finish(&s.blob);
    let unpacked = unpack(&s.cache, &layer, &s.blob).unwrap();
    assert_eq!(unpacked.entries[0].path, longest);

    longest.push(b'c');
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.file("ok", b"");
    b.long(b'L', &longest);
    b.header(b'0', b"truncated-name", 0);
    let layer = b.finish(&s.blob);
    let e = refused(&s, &layer, &Limits::DEFAULT);
    let shown = format!("{}…", "c".repeat(128));
    assert_eq!(
        e,
        format!(
            "layer {}: entry 1 (offset 512, `{shown}`): path of 4096 bytes exceeds the limit of 4095",
            layer.digest
        )
    );

    let s = scratch();
    let mut b = Blob::new(&s.blob);
    let mut name = b"dir/".to_vec();
    name.extend(vec![b'n'; 256]);
    b.pax(&[("path", &name)]);
    b.header(b'0', b"short", 0);
    let layer = b.finish(&s.blob);
    let e = refused(&s, &layer, &Limits::DEFAULT);
    assert!(
        e.ends_with("path component of 256 bytes exceeds the limit of 255"),
        "{e}"
    );
    assert!(e.contains("entry 0 (offset 0, `dir/nnn"), "{e}");
}

#[test]
fn a_long_name_just_under_the_record_limit_is_read() {
    // A record of exactly the limit (NUL included), mostly `./` that normalising drops.
    let tail = b"usr/share/name";
    let mut name = b"./".repeat((MAX_LONG_NAME as usize - 1 - tail.len()) / 2);
    if name.len() + tail.len() + 1 < MAX_LONG_NAME as usize {
        name.push(b'/');
    }
    name.extend_from_slice(tail);
    assert_eq!(name.len() + 1, MAX_LONG_NAME as usize);
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.long(b'L', &name);
    b.header(b'0', b"truncated", 4);
    b.data(b"data");
    let layer = b.finish(&s.blob);
    let unpacked = unpack(&s.cache, &layer, &s.blob).unwrap();
    assert_eq!(unpacked.entries.len(), 1);
    assert_eq!(unpacked.entries[0].path, tail);
    assert_eq!(unpacked.entries[0].size, 4);
    // Data right after the record's header, its padding and the file's header.
    assert_eq!(unpacked.entries[0].offset, 512 + MAX_LONG_NAME + 512);
}

#[test]
fn symlink_targets_over_the_limit_are_refused() {
    let target = vec![b't'; 4095];
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.long(b'K', &target);
    b.header(b'2', b"link", 0);
    let layer = b.finish(&s.blob);
    let unpacked = unpack(&s.cache, &layer, &s.blob).unwrap();
    assert_eq!(unpacked.entries[0].link.as_deref(), Some(&target[..]));

    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.pax(&[("linkpath", &[b't'; 4096])]);
    b.header(b'2', b"link", 0);
    let layer = b.finish(&s.blob);
    assert_eq!(
        refused(&s, &layer, &Limits::DEFAULT),
        format!(
            "layer {}: entry 0 (offset 0, `link`): link target of 4096 bytes exceeds the limit of 4095",
            layer.digest
        )
    );
}

#[test]
fn xattrs_over_the_limits_are_refused() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.pax(&[("SCHILY.xattr.user.big", &[b'v'; (64 << 10) + 1])]);
    b.file("f", b"");
    let layer = b.finish(&s.blob);
    assert!(
        refused(&s, &layer, &Limits::DEFAULT)
            .ends_with("xattr `user.big`: value of 65537 bytes exceeds the limit of 65536")
    );

    let s = scratch();
    let mut b = Blob::new(&s.blob);
    let name = format!("SCHILY.xattr.user.{}", "n".repeat(251));
    b.pax(&[(&name, b"v")]);
    b.file("f", b"");
    let layer = b.finish(&s.blob);
    assert!(
        refused(&s, &layer, &Limits::DEFAULT)
            .ends_with("xattr name of 256 bytes exceeds the limit of 255")
    );
}

#[test]
fn a_layers_metadata_is_bounded_as_a_whole() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    for i in 0..4 {
        b.pax(&[("SCHILY.xattr.user.v", &[b'v'; 1000])]);
        b.file(&format!("f{i}"), b"");
    }
    let layer = b.finish(&s.blob);
    // Each entry: 2 bytes of path, 6 of xattr name, 1000 of value; 2560 bytes of tar (PAX header and record,
    // file header).
    let limits = Limits {
        metadata: 3 * 1008,
        ..Limits::DEFAULT
    };
    let e = refused(&s, &layer, &limits);
    assert!(
        e.ends_with(
            "entry 3 (offset 7680, `f3`): paths, link targets and xattrs total more than the limit of 3024 bytes"
        ),
        "{e}"
    );
}

#[test]
fn pax_size_and_ids_apply_to_the_next_member_only() {
    // The tar crate's rule, kept: PAX `size` overrides the header's (files of 8 GiB and more), PAX ids replace
    // the header's, and a PAX `path` names the entry.
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.pax(&[
        ("size", b"5"),
        ("uid", b"4000000"),
        ("gid", b"7"),
        ("path", b"real/name"),
        ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
    ]);
    b.header(b'0', b"header-name", 0);
    b.data(b"12345");
    b.file("next", b"ab");
    let layer = b.finish(&s.blob);
    let unpacked = unpack(&s.cache, &layer, &s.blob).unwrap();
    let [first, next] = &unpacked.entries[..] else {
        panic!("{:?}", unpacked.entries)
    };
    assert_eq!(first.path, b"real/name");
    assert_eq!((first.size, first.offset), (5, 1536));
    assert_eq!((first.uid, first.gid), (4_000_000, 7));
    assert_eq!(
        first.xattrs,
        [(
            "security.capability".to_string(),
            b"\x01\x00\x00\x02".to_vec()
        )]
    );
    assert_eq!((next.path.as_slice(), next.size), (&b"next"[..], 2));
    assert_eq!((next.uid, next.gid, next.offset), (0, 0, 2560));
    assert!(next.xattrs.is_empty());
    // The index was committed, and reads back the same.
    let again = unpack(&s.cache, &layer, &s.blob).unwrap();
    assert_eq!(again.entries.len(), 2);
    assert_eq!(again.entries[0].path, b"real/name");
}

#[test]
fn two_long_names_for_one_member_are_refused() {
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.long(b'L', b"one");
    b.long(b'L', b"two");
    b.file("f", b"");
    let layer = b.finish(&s.blob);
    let e = unpack(&s.cache, &layer, &s.blob).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "bad tar entry after 0 entries: two long name entries describing the same member"
        ),
        "{e}"
    );
}

#[test]
fn a_global_pax_header_is_refused_unread() {
    // Refused as an unsupported entry, as before; its claimed size is never read (nothing follows the header).
    let s = scratch();
    let mut b = Blob::new(&s.blob);
    b.header(b'g', b"pax_global_header", 1 << 40);
    let layer = b.cut(&s.blob);
    let e = unpack(&s.cache, &layer, &s.blob).unwrap_err().to_string();
    assert!(
        e.ends_with("`pax_global_header`: unsupported tar entry type XGlobalHeader"),
        "{e}"
    );
    assert!(!s.cache.unpacked_dir(&layer.digest).exists());
}
