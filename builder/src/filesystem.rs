//! Filesystem: the assembled tree written as one deterministic tar.
//!
//! Entries in byte-wise sorted depth-first order (a directory before what it holds), numeric ids with empty
//! user and group names, xattrs as sorted PAX `SCHILY.xattr.*` records, mtimes clamped to the build epoch, and
//! each hardlinked inode's data written once, at its first path. The same tree gives the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::assemble::tree::{Data, Meta, Node, NodeId, Special, Tree};

#[derive(Debug, thiserror::Error)]
pub enum FilesystemError {
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("reading the data of {entry} from {}: {source}", from.display())]
    Read {
        entry: String,
        from: PathBuf,
        source: io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
    pub entries: u64,
    /// (path, xattr name) left out by [`TarOptions::drop_xattrs`].
    pub dropped_xattrs: Vec<(String, String)>,
}

/// Counts and hashes every byte on its way to the file (or from it, when reading).
pub(crate) struct Hashing<W> {
    pub(crate) inner: W,
    pub(crate) hash: Sha256,
    pub(crate) size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a range of a file by position, so one open layer tar serves every entry.
struct Range<'a> {
    file: &'a File,
    offset: u64,
    remaining: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its index says",
            ));
        }
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// How a tar is written.
#[derive(Debug, Clone, Copy)]
pub struct TarOptions<'a> {
    /// mtimes are clamped to it.
    pub epoch: u64,
    /// xattrs whose name starts with one of these are left out (and reported): what the target filesystem
    /// cannot hold.
    pub drop_xattrs: &'a [&'a str],
}

/// Writes the tree below `start` (the tree's root, or a detached folder) as a tar into `out`; `layer_tars[i]` is
/// the unpacked tar of layer `i`. Returns what was written and `out`, flushed, for the caller to sync or close.
pub fn write_tar<W: Write>(
    tree: &Tree,
    start: NodeId,
    layer_tars: &[PathBuf],
    opts: TarOptions<'_>,
    out: W,
    out_path: &Path,
) -> Result<(Written, W), FilesystemError> {
    let werr = |source| FilesystemError::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let layers = layer_tars
        .iter()
        .map(|p| {
            File::open(p).map_err(|source| FilesystemError::Read {
                entry: "layer".into(),
                from: p.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sink = Hashing {
        inner: BufWriter::with_capacity(1 << 20, out),
        hash: Sha256::new(),
        size: 0,
    };
    let mut writer = Writer {
        builder: tar::Builder::new(sink),
        layers: &layers,
        layer_tars,
        opts,
        first_path: vec![None; tree.inode_count()],
        entries: 0,
        dropped: Vec::new(),
    };
    writer
        .node(tree, start, b"./".to_vec())
        .map_err(|e| match e {
            WriteFailure::Out(source) => werr(source),
            WriteFailure::In(e) => e,
        })?;
    let mut sink = writer.builder.into_inner().map_err(werr)?;
    sink.flush().map_err(werr)?;
    let Hashing { inner, hash, size } = sink;
    let out = inner.into_inner().map_err(|e| werr(e.into_error()))?;
    let written = Written {
        size,
        sha256: hex::encode(hash.finalize()),
        entries: writer.entries,
        dropped_xattrs: writer.dropped,
    };
    Ok((written, out))
}

enum WriteFailure {
    Out(io::Error),
    In(FilesystemError),
}

impl From<io::Error> for WriteFailure {
    fn from(e: io::Error) -> Self {
        WriteFailure::Out(e)
    }
}

struct Writer<'a, W: Write> {
    builder: tar::Builder<Hashing<W>>,
    layers: &'a [File],
    layer_tars: &'a [PathBuf],
    opts: TarOptions<'a>,
    /// The path each inode was first written at: later paths become hardlinks to it.
    first_path: Vec<Option<Vec<u8>>>,
    entries: u64,
    dropped: Vec<(String, String)>,
}

impl<W: Write> Writer<'_, W> {
    fn header(&self, meta: &Meta, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime.min(self.opts.epoch));
        h.set_size(size);
        h
    }

    fn xattrs(&mut self, meta: &Meta, path: &[u8]) -> io::Result<()> {
        let mut records: Vec<(String, &[u8])> = Vec::new();
        for (k, v) in &meta.xattrs {
            if self.opts.drop_xattrs.iter().any(|p| k.starts_with(p)) {
                self.dropped.push((
                    format!(
                        "/{}",
                        String::from_utf8_lossy(path).trim_start_matches("./")
                    ),
                    k.clone(),
                ));
            } else {
                records.push((format!("SCHILY.xattr.{k}"), v.as_slice()));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    fn node(&mut self, tree: &Tree, id: NodeId, path: Vec<u8>) -> Result<(), WriteFailure> {
        self.entries += 1;
        match tree.node(id) {
            Node::Dir { meta, children } => {
                self.xattrs(meta, &path)?;
                let mut h = self.header(meta, tar::EntryType::Directory, 0);
                self.builder
                    .append_data(&mut h, as_path(&path), io::empty())?;
                for (name, child) in children {
                    // The root is `./`; everything below it is relative, without a `./` prefix.
                    let mut p = if path == b"./" {
                        Vec::new()
                    } else {
                        [path.as_slice(), b"/"].concat()
                    };
                    p.extend_from_slice(name);
                    self.node(tree, *child, p)?;
                }
            }
            Node::File(inode) => {
                let inode_ref = tree.inode(*inode);
                if let Some(first) = &self.first_path[*inode] {
                    let mut h = self.header(&inode_ref.meta, tar::EntryType::Link, 0);
                    let first = first.clone();
                    self.builder
                        .append_link(&mut h, as_path(&path), as_path(&first))?;
                    return Ok(());
                }
                self.first_path[*inode] = Some(path.clone());
                self.xattrs(&inode_ref.meta, &path)?;
                let size = inode_ref.data.size();
                let mut h = self.header(&inode_ref.meta, tar::EntryType::Regular, size);
                let shown = || format!("/{}", String::from_utf8_lossy(&path));
                match &inode_ref.data {
                    Data::Layer { layer, offset, .. } => {
                        let mut range = Range {
                            file: &self.layers[*layer],
                            offset: *offset,
                            remaining: size,
                        };
                        let from = self.layer_tars[*layer].clone();
                        self.append_checked(&mut h, &path, &mut range, &from, shown)?;
                    }
                    Data::Bytes(bytes) => {
                        self.builder
                            .append_data(&mut h, as_path(&path), &bytes[..])?
                    }
                    Data::Host { path: host, .. } => {
                        let file = File::open(host).map_err(|source| {
                            WriteFailure::In(FilesystemError::Read {
                                entry: shown(),
                                from: host.clone(),
                                source,
                            })
                        })?;
                        let mut range = Range {
                            file: &file,
                            offset: 0,
                            remaining: size,
                        };
                        self.append_checked(&mut h, &path, &mut range, host, shown)?;
                    }
                }
            }
            Node::Other { meta, special } => {
                self.xattrs(meta, &path)?;
                match special {
                    Special::Symlink(target) => {
                        let mut h = self.header(meta, tar::EntryType::Symlink, 0);
                        self.append_symlink(&mut h, &path, target)?;
                    }
                    Special::Char(major, minor) | Special::Block(major, minor) => {
                        let kind = if matches!(special, Special::Char(..)) {
                            tar::EntryType::Char
                        } else {
                            tar::EntryType::Block
                        };
                        let mut h = self.header(meta, kind, 0);
                        h.set_device_major(*major)?;
                        h.set_device_minor(*minor)?;
                        self.builder
                            .append_data(&mut h, as_path(&path), io::empty())?;
                    }
                    Special::Fifo => {
                        let mut h = self.header(meta, tar::EntryType::Fifo, 0);
                        self.builder
                            .append_data(&mut h, as_path(&path), io::empty())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends a symlink whose target is written byte for byte. `append_link` would rebuild the target from its
    /// path components (`/` → `//`, `a/./b` → `a/b`); a symlink must say exactly what the layer said.
    fn append_symlink(
        &mut self,
        h: &mut tar::Header,
        path: &[u8],
        target: &[u8],
    ) -> io::Result<()> {
        if target.len() > LINK_NAME_FIELD {
            // GNU long link record: the target, NUL-terminated, as the data of a `K` entry before the symlink.
            let mut long = tar::Header::new_gnu();
            if let Some(gnu) = long.as_gnu_mut() {
                gnu.name[..LONG_LINK_NAME.len()].copy_from_slice(LONG_LINK_NAME);
            }
            long.set_entry_type(tar::EntryType::GNULongLink);
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            long.set_size(target.len() as u64 + 1);
            long.set_cksum();
            self.builder
                .append(&long, [target, b"\0"].concat().as_slice())?;
        } else {
            h.set_link_name_literal(target)?;
        }
        self.builder.append_data(h, as_path(path), io::empty())
    }

    /// Appends file data read from `range`, telling a failing read (our input) from a failing write (the output).
    fn append_checked(
        &mut self,
        h: &mut tar::Header,
        path: &[u8],
        range: &mut Range<'_>,
        from: &Path,
        shown: impl Fn() -> String,
    ) -> Result<(), WriteFailure> {
        let mut failed_read = None;
        let mut reader = ReadTracker {
            inner: range,
            failed: &mut failed_read,
        };
        let result = self.builder.append_data(h, as_path(path), &mut reader);
        if let Some(source) = failed_read {
            return Err(WriteFailure::In(FilesystemError::Read {
                entry: shown(),
                from: from.to_path_buf(),
                source,
            }));
        }
        result.map_err(WriteFailure::Out)
    }
}

struct ReadTracker<'a, 'b> {
    inner: &'a mut Range<'b>,
    failed: &'a mut Option<io::Error>,
}

impl Read for ReadTracker<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|e| *self.failed = Some(io::Error::new(e.kind(), e.to_string())))
    }
}

/// The size of a tar header's link name field; longer targets go in a GNU long link record.
const LINK_NAME_FIELD: usize = 100;
/// The name GNU tar gives its long name and long link records.
const LONG_LINK_NAME: &[u8] = b"././@LongLink";

fn as_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

/// The bytes of the regular file at `path` (normalised, relative) in the tree: for what a disk format copies out
/// of the root (the kernel, the boot loader).
pub fn read_file(
    tree: &Tree,
    layer_tars: &[PathBuf],
    path: &str,
) -> Result<Option<Vec<u8>>, FilesystemError> {
    let Some(id) = tree.lookup(path.as_bytes()) else {
        return Ok(None);
    };
    let Node::File(inode) = tree.node(id) else {
        return Ok(None);
    };
    let data = &tree.inode(*inode).data;
    let read_err = |from: &Path, source| FilesystemError::Read {
        entry: format!("/{path}"),
        from: from.to_path_buf(),
        source,
    };
    match data {
        Data::Bytes(b) => Ok(Some(b.to_vec())),
        Data::Host { path: host, .. } => {
            std::fs::read(host).map(Some).map_err(|e| read_err(host, e))
        }
        Data::Layer {
            layer,
            offset,
            size,
        } => {
            let from = &layer_tars[*layer];
            let file = File::open(from).map_err(|e| read_err(from, e))?;
            let mut bytes = Vec::with_capacity(*size as usize);
            Range {
                file: &file,
                offset: *offset,
                remaining: *size,
            }
            .read_to_end(&mut bytes)
            .map_err(|e| read_err(from, e))?;
            Ok(Some(bytes))
        }
    }
}
