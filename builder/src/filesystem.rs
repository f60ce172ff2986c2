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
}

/// Counts and hashes every byte on its way to the file.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
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

/// Writes `tree` as a tar into `out`. `layer_tars[i]` is the unpacked tar of layer `i`.
pub fn write_tar(
    tree: &Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
    out: &File,
    out_path: &Path,
) -> Result<Written, FilesystemError> {
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
        epoch,
        first_path: vec![None; tree_inodes(tree)],
        entries: 0,
    };
    writer
        .node(tree, tree.root(), b"./".to_vec())
        .map_err(|e| match e {
            WriteFailure::Out(source) => werr(source),
            WriteFailure::In(e) => e,
        })?;
    let mut sink = writer.builder.into_inner().map_err(werr)?;
    sink.flush().map_err(werr)?;
    let Hashing { inner, hash, size } = sink;
    inner
        .into_inner()
        .map_err(|e| werr(e.into_error()))?
        .sync_all()
        .map_err(werr)?;
    Ok(Written {
        size,
        sha256: hex::encode(hash.finalize()),
        entries: writer.entries,
    })
}

fn tree_inodes(tree: &Tree) -> usize {
    let mut max = 0;
    let mut stack = vec![tree.root()];
    while let Some(id) = stack.pop() {
        match tree.node(id) {
            Node::Dir { children, .. } => stack.extend(children.values().copied()),
            Node::File(i) => max = max.max(*i + 1),
            Node::Other { .. } => {}
        }
    }
    max
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
    epoch: u64,
    /// The path each inode was first written at: later paths become hardlinks to it.
    first_path: Vec<Option<Vec<u8>>>,
    entries: u64,
}

impl<W: Write> Writer<'_, W> {
    fn header(&self, meta: &Meta, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(meta.mtime.min(self.epoch));
        h.set_size(size);
        h
    }

    fn xattrs(&mut self, meta: &Meta) -> io::Result<()> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let records: Vec<(String, &[u8])> = meta
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    fn node(&mut self, tree: &Tree, id: NodeId, path: Vec<u8>) -> Result<(), WriteFailure> {
        self.entries += 1;
        match tree.node(id) {
            Node::Dir { meta, children } => {
                self.xattrs(meta)?;
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
                self.xattrs(&inode_ref.meta)?;
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
                self.xattrs(meta)?;
                match special {
                    Special::Symlink(target) => {
                        let mut h = self.header(meta, tar::EntryType::Symlink, 0);
                        self.builder
                            .append_link(&mut h, as_path(&path), as_path(target))?;
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

fn as_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}
