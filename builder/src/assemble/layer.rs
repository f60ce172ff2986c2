//! One layer, unpacked once: its blob decompressed to `layer.tar` (checked against the config's diff_id) and an
//! index of its entries with the offset of each file's data in that tar.
//!
//! Both live in the cache keyed by the blob digest, so a warm build reads the index and copies file data by
//! offset, without decompressing anything. No layer is ever held in memory: data streams blob → tar file.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cairn_profile::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cache::{Cache, CacheError};
use crate::resolve::{Compression, Layer};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("layer {digest}: {message}")]
    Invalid { digest: Digest, message: String },
    #[error("layer {digest}: {}: {source}", path.display())]
    Io {
        digest: Digest,
        path: PathBuf,
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// One tar entry of a layer, as the index keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Normalised: no leading `/` or `./`, no `.` or empty components; `..` is refused when indexing.
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Bytes of file data (regular files only).
    pub size: u64,
    /// Where the data starts in `layer.tar`.
    pub offset: u64,
    /// Symlink target as written, or hardlink target normalised like `path`.
    pub link: Option<Vec<u8>>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// PAX `SCHILY.xattr.*` records, names without the prefix, in the order found.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// An unpacked layer: where its tar is and what it holds.
#[derive(Debug)]
pub struct Unpacked {
    pub tar: PathBuf,
    pub entries: Vec<Entry>,
}

/// Loads the unpacked form of `layer` from the cache, making it from the blob first if needed.
pub fn unpack(cache: &Cache, layer: &Layer, blob: &Path) -> Result<Unpacked, LayerError> {
    let dir = cache.unpacked_dir(&layer.digest);
    let index_path = dir.join("index.json");
    let io_err = |path: &Path| {
        let digest = layer.digest.clone();
        let path = path.to_path_buf();
        move |source| LayerError::Io {
            digest,
            path,
            source,
        }
    };
    if !index_path.is_file() {
        let tmp = cache.temp_dir()?;
        let entries = decompress_and_index(layer, blob, &tmp.path().join("layer.tar"))?;
        let tmp_index = tmp.path().join("index.json");
        let file = File::create(&tmp_index).map_err(io_err(&tmp_index))?;
        let mut w = BufWriter::new(file);
        serde_json::to_writer(&mut w, &entries).map_err(|e| io_err(&tmp_index)(e.into()))?;
        w.flush().map_err(io_err(&tmp_index))?;
        w.get_ref().sync_all().map_err(io_err(&tmp_index))?;
        drop(w);
        cache.commit_unpacked(tmp, &layer.digest)?;
        return Ok(Unpacked {
            tar: dir.join("layer.tar"),
            entries,
        });
    }
    let file = File::open(&index_path).map_err(io_err(&index_path))?;
    let entries: Vec<Entry> = serde_json::from_reader(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| io_err(&index_path)(e.into()))?;
    Ok(Unpacked {
        tar: dir.join("layer.tar"),
        entries,
    })
}

/// Passes everything read through to a file and a hash: the decompressed stream is written and checked in the
/// same pass that indexes it.
struct Tee<R> {
    inner: R,
    out: BufWriter<File>,
    hash: Sha256,
    position: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.hash.update(&buf[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

fn decompress_and_index(
    layer: &Layer,
    blob: &Path,
    tar_path: &Path,
) -> Result<Vec<Entry>, LayerError> {
    let invalid = |message: String| LayerError::Invalid {
        digest: layer.digest.clone(),
        message,
    };
    let io_err = |path: &Path, source| LayerError::Io {
        digest: layer.digest.clone(),
        path: path.to_path_buf(),
        source,
    };
    let input = BufReader::with_capacity(1 << 20, File::open(blob).map_err(|e| io_err(blob, e))?);
    let decoder: Box<dyn Read> = match layer.compression {
        Compression::None => Box::new(input),
        // Several gzip members back to back (pigz, eStargz) are one stream.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            Box::new(zstd::Decoder::with_buffer(input).map_err(|e| io_err(blob, e))?)
        }
    };
    let out = BufWriter::with_capacity(
        1 << 20,
        File::create(tar_path).map_err(|e| io_err(tar_path, e))?,
    );
    let tee = Tee {
        inner: decoder,
        out,
        hash: Sha256::new(),
        position: 0,
    };
    let mut archive = tar::Archive::new(tee);
    let mut entries = Vec::new();
    let iter = archive
        .entries()
        .map_err(|e| invalid(format!("not a tar stream: {e}")))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| {
            invalid(format!(
                "bad tar entry after {} entries: {e}",
                entries.len()
            ))
        })?;
        entries.push(index_entry(&mut entry).map_err(invalid)?);
    }
    // The diff_id covers every byte of the uncompressed stream, padding after the end marker included.
    let mut tee = archive.into_inner();
    io::copy(&mut tee, &mut io::sink()).map_err(|e| invalid(format!("decompressing: {e}")))?;
    let diff_id = Digest::from_sha256(&tee.hash.finalize());
    if diff_id != layer.diff_id {
        return Err(invalid(format!(
            "the uncompressed layer has digest {diff_id}, the image config says {}",
            layer.diff_id
        )));
    }
    tee.out.flush().map_err(|e| io_err(tar_path, e))?;
    tee.out
        .get_ref()
        .sync_all()
        .map_err(|e| io_err(tar_path, e))?;
    Ok(entries)
}

/// Normalises a path from a layer, refusing any `..`: nothing may be placed outside the root.
pub fn normalise(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => {
                return Err(format!(
                    "`{}` has a .. component: it could escape the root, refused",
                    String::from_utf8_lossy(raw)
                ));
            }
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

fn index_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Entry, String> {
    let raw_path = entry.path_bytes().into_owned();
    let path = normalise(&raw_path)?;
    let header = entry.header();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::Hardlink,
        tar::EntryType::Char => Kind::Char,
        tar::EntryType::Block => Kind::Block,
        tar::EntryType::Fifo => Kind::Fifo,
        other => return Err(format!("`{shown}`: unsupported tar entry type {other:?}")),
    };
    let field =
        |name: &str, r: io::Result<u64>| r.map_err(|e| format!("`{shown}`: bad {name}: {e}"));
    let mode = field("mode", header.mode().map(u64::from))? as u32 & 0o7777;
    let uid = field("uid", header.uid())?;
    let gid = field("gid", header.gid())?;
    let mtime = field("mtime", header.mtime())?;
    let (dev_major, dev_minor) = match kind {
        Kind::Char | Kind::Block => (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let link = match kind {
        Kind::Symlink => Some(
            entry
                .link_name_bytes()
                .ok_or_else(|| format!("`{shown}`: symlink without a target"))?
                .into_owned(),
        ),
        Kind::Hardlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| format!("`{shown}`: hardlink without a target"))?;
            let normal = normalise(&target).map_err(|e| format!("hardlink `{shown}` → {e}"))?;
            if normal.is_empty() {
                return Err(format!("hardlink `{shown}` points at the root"));
            }
            Some(normal)
        }
        _ => None,
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| format!("`{shown}`: bad PAX header: {e}"))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| format!("`{shown}`: bad PAX record: {e}"))?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| format!("`{shown}`: xattr name not UTF-8"))?;
                xattrs.push((name, ext.value_bytes().to_vec()));
            }
        }
    }
    let size = if kind == Kind::File { entry.size() } else { 0 };
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        size,
        offset: entry.raw_file_position(),
        link,
        dev_major,
        dev_minor,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normalises_and_refuses_dotdot() {
        assert_eq!(normalise(b"./etc//passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalise(b"/usr/bin/").unwrap(), b"usr/bin");
        assert_eq!(normalise(b"./").unwrap(), b"");
        let e = normalise(b"etc/../../x").unwrap_err();
        assert!(e.contains("could escape the root"), "{e}");
    }
}
