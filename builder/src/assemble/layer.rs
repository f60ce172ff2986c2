//! One layer, unpacked once: its blob decompressed to `layer.tar` (checked against the config's diff_id) and an
//! index of its entries with the offset of each file's data in that tar.
//!
//! Both live in the cache keyed by the blob digest, so a warm build reads the index and copies file data by
//! offset, without decompressing anything. No layer is ever held in memory: data streams blob → tar file, and
//! what the tar controls (records, names, entries) is bounded by [`limits`] before it is read or kept.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cairn_profile::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cache::{Cache, CacheError};
use crate::resolve::{Compression, Layer};

pub mod limits;
mod members;

use limits::{At, Exceeded, Limits};
use members::{Member, MemberError, Members};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(
        "layer {digest}: the uncompressed layer has digest {actual}, the image config says {config}"
    )]
    DiffId {
        digest: Digest,
        actual: Digest,
        config: Digest,
    },
    #[error("layer {digest}: {source}")]
    Entry { digest: Digest, source: EntryError },
    #[error("layer {digest}: {at}: {exceeded}")]
    Limit {
        digest: Digest,
        at: At,
        exceeded: Exceeded,
    },
    #[error("layer {digest}: {what}: {source}")]
    Stream {
        digest: Digest,
        what: String,
        source: io::Error,
    },
    #[error("layer {digest}: {}: {source}", path.display())]
    Io {
        digest: Digest,
        path: PathBuf,
        source: io::Error,
    },
}

/// What is wrong with one tar entry of a layer; `path` is the entry's path as written.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("`{path}` has a .. component: it could escape the root, refused")]
    Escapes { path: String },
    #[error("`{path}`: unsupported tar entry type {kind}")]
    Unsupported { path: String, kind: String },
    #[error("`{path}`: bad {field}: {source}")]
    Field {
        path: String,
        field: &'static str,
        source: io::Error,
    },
    #[error("`{path}`: {kind} without a target")]
    NoTarget { path: String, kind: &'static str },
    #[error("hardlink `{path}` → {source}")]
    HardlinkTarget {
        path: String,
        source: Box<EntryError>,
    },
    #[error("hardlink `{path}` points at the root")]
    HardlinkToRoot { path: String },
    #[error("`{path}`: bad PAX {what}: {source}")]
    Pax {
        path: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("`{path}`: xattr name not UTF-8")]
    XattrName { path: String },
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

impl Entry {
    /// Bytes of the entry's path, link target and xattrs: what [`limits::MAX_METADATA`] bounds for a layer.
    fn metadata_len(&self) -> u64 {
        let xattrs: usize = self.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        (self.path.len() + self.link.as_ref().map_or(0, Vec::len) + xattrs) as u64
    }
}

/// An unpacked layer: where its tar is and what it holds.
#[derive(Debug)]
pub struct Unpacked {
    pub tar: PathBuf,
    pub entries: Vec<Entry>,
}

/// Loads the unpacked form of `layer` from the cache, making it from the blob first if needed, within the
/// [`limits`].
pub fn unpack(cache: &Cache, layer: &Layer, blob: &Path) -> Result<Unpacked, LayerError> {
    unpack_within(cache, layer, blob, &Limits::DEFAULT)
}

/// [`unpack`] with other bounds than the default ones.
pub fn unpack_within(
    cache: &Cache,
    layer: &Layer,
    blob: &Path,
    limits: &Limits,
) -> Result<Unpacked, LayerError> {
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
        let entries = decompress_and_index(layer, blob, &tmp.path().join("layer.tar"), limits)?;
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
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn decompress_and_index(
    layer: &Layer,
    blob: &Path,
    tar_path: &Path,
    limits: &Limits,
) -> Result<Vec<Entry>, LayerError> {
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
    };
    let stream = |what: String| {
        let digest = layer.digest.clone();
        move |source| LayerError::Stream {
            digest,
            what,
            source,
        }
    };
    let limit = |at, exceeded| LayerError::Limit {
        digest: layer.digest.clone(),
        at,
        exceeded,
    };
    let mut members = Members::new(tee, *limits);
    let mut entries: Vec<Entry> = Vec::new();
    let mut metadata = 0u64;
    loop {
        let member = match members.next_member() {
            Ok(Some(member)) => member,
            Ok(None) => break,
            Err(MemberError::Io(e)) => {
                return Err(stream(format!(
                    "bad tar entry after {} entries",
                    entries.len()
                ))(e));
            }
            Err(MemberError::Limit { start, exceeded }) => {
                return Err(limit(At::new(entries.len(), start, None), exceeded));
            }
        };
        let at = || At::new(entries.len(), member.start, Some(&member.path_bytes()));
        if entries.len() >= limits.entries {
            return Err(limit(
                at(),
                Exceeded::Entries {
                    limit: limits.entries,
                },
            ));
        }
        let entry = match index_entry(&member, limits) {
            Ok(entry) => entry,
            Err(Refused::Entry(source)) => {
                return Err(LayerError::Entry {
                    digest: layer.digest.clone(),
                    source,
                });
            }
            Err(Refused::Limit(exceeded)) => return Err(limit(at(), exceeded)),
        };
        metadata += entry.metadata_len();
        if metadata > limits.metadata {
            return Err(limit(
                at(),
                Exceeded::Metadata {
                    limit: limits.metadata,
                },
            ));
        }
        entries.push(entry);
    }
    // The diff_id covers every byte of the uncompressed stream, padding after the end marker included.
    let mut tee = members.into_inner();
    io::copy(&mut tee, &mut io::sink()).map_err(stream("decompressing".into()))?;
    let diff_id = Digest::from_sha256(&tee.hash.finalize());
    if diff_id != layer.diff_id {
        return Err(LayerError::DiffId {
            digest: layer.digest.clone(),
            actual: diff_id,
            config: layer.diff_id.clone(),
        });
    }
    tee.out.flush().map_err(|e| io_err(tar_path, e))?;
    tee.out
        .get_ref()
        .sync_all()
        .map_err(|e| io_err(tar_path, e))?;
    Ok(entries)
}

/// Normalises a path from a layer, refusing any `..`: nothing may be placed outside the root.
pub fn normalise(raw: &[u8]) -> Result<Vec<u8>, EntryError> {
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => {
                return Err(EntryError::Escapes {
                    path: String::from_utf8_lossy(raw).into_owned(),
                });
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

/// Why an entry is not indexed: it is wrong, or beyond a limit.
enum Refused {
    Entry(EntryError),
    Limit(Exceeded),
}

impl From<EntryError> for Refused {
    fn from(e: EntryError) -> Self {
        Refused::Entry(e)
    }
}

/// Refuses a normalised path longer than the limits allow, or with a longer component.
fn check_path(path: &[u8], limits: &Limits) -> Result<(), Exceeded> {
    if path.len() > limits.path {
        return Err(Exceeded::Path {
            len: path.len(),
            limit: limits.path,
        });
    }
    match path.split(|b| *b == b'/').map(<[u8]>::len).max() {
        Some(len) if len > limits.component => Err(Exceeded::Component {
            len,
            limit: limits.component,
        }),
        _ => Ok(()),
    }
}

fn index_entry(member: &Member, limits: &Limits) -> Result<Entry, Refused> {
    let raw_path = member.path_bytes();
    let path = normalise(&raw_path)?;
    check_path(&path, limits).map_err(Refused::Limit)?;
    let header = &member.header;
    let shown = || String::from_utf8_lossy(&raw_path).into_owned();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::Hardlink,
        tar::EntryType::Char => Kind::Char,
        tar::EntryType::Block => Kind::Block,
        tar::EntryType::Fifo => Kind::Fifo,
        other => {
            return Err(EntryError::Unsupported {
                path: shown(),
                kind: format!("{other:?}"),
            }
            .into());
        }
    };
    let field = |field: &'static str, r: io::Result<u64>| {
        r.map_err(|source| EntryError::Field {
            path: shown(),
            field,
            source,
        })
    };
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
    let no_target = |kind| EntryError::NoTarget {
        path: shown(),
        kind,
    };
    let link_limit = |len: usize| {
        if len > limits.link_target {
            Err(Refused::Limit(Exceeded::LinkTarget {
                len,
                limit: limits.link_target,
            }))
        } else {
            Ok(())
        }
    };
    let link = match kind {
        Kind::Symlink => {
            let target = member
                .link_name_bytes()
                .ok_or_else(|| no_target("symlink"))?;
            link_limit(target.len())?;
            Some(target.into_owned())
        }
        Kind::Hardlink => {
            let target = member
                .link_name_bytes()
                .ok_or_else(|| no_target("hardlink"))?;
            let normal = normalise(&target).map_err(|e| EntryError::HardlinkTarget {
                path: shown(),
                source: Box::new(e),
            })?;
            if normal.is_empty() {
                return Err(EntryError::HardlinkToRoot { path: shown() }.into());
            }
            link_limit(normal.len())?;
            Some(normal)
        }
        _ => None,
    };
    let mut xattrs = Vec::new();
    for ext in member.pax_extensions().into_iter().flatten() {
        let ext = ext.map_err(|source| EntryError::Pax {
            path: shown(),
            what: "record",
            source,
        })?;
        if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            if name.len() > limits.xattr_name {
                return Err(Refused::Limit(Exceeded::XattrName {
                    len: name.len(),
                    limit: limits.xattr_name,
                }));
            }
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| EntryError::XattrName { path: shown() })?;
            let value = ext.value_bytes();
            if value.len() > limits.xattr_value {
                return Err(Refused::Limit(Exceeded::XattrValue {
                    name,
                    len: value.len(),
                    limit: limits.xattr_value,
                }));
            }
            xattrs.push((name, value.to_vec()));
        }
    }
    let size = if kind == Kind::File { member.size } else { 0 };
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        size,
        offset: member.data,
        link,
        dev_major,
        dev_minor,
        xattrs,
    })
}

#[cfg(test)]
mod tests;
