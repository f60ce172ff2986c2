//! The disk's two slots, as the builder lays them out: two root partitions and two root verity partitions of the
//! architecture's DPS types, slot A first. The running slot is the one whose partition GUIDs derive from the
//! running root hash (`cairn.verity=`); an update writes the other one through the whole disk's device, at the
//! partitions' offsets, and never opens the running slot's partitions.
//!
//! A slot being written is named [`EMPTY_NAME`] and keeps GUIDs that no boot entry names; only once its data
//! verified does it get its root's GUIDs and the names `root-a`/`root-b` (and `-verity`), the backup GPT first.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_profile::boot_entry::Slot;
use cairn_profile::contract::{self, RootTypes};
use cairn_profile::gpt::{self, GptError, Table};
use cairn_profile::verity::{self, VerifyError};

use crate::datasources::http::Sink;

/// A slot's partitions' GPT name until an update has written and verified them (systemd-sysupdate's).
pub const EMPTY_NAME: &str = "_empty";

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", .path.display())]
    Gpt { path: PathBuf, source: GptError },
    #[error(
        "no disk holds the running root (partition GUID {uuid}, from cairn.verity=); seen: [{seen}]"
    )]
    NoRunningRoot { uuid: String, seen: String },
    #[error("{}: {found} {what} partitions of this architecture's type, not the 2 of an A/B disk", .path.display())]
    NotAb {
        path: PathBuf,
        what: &'static str,
        found: usize,
    },
    #[error("{}: the running root (GUID {uuid}) is not one of its two root partitions", .path.display())]
    NotRunningHere { path: PathBuf, uuid: String },
    #[error("the {what} of {size} bytes does not fit slot {slot}'s partition of {capacity} bytes")]
    TooBig {
        what: &'static str,
        slot: &'static str,
        size: u64,
        capacity: u64,
    },
    #[error("slot {slot} as written does not verify: {source}")]
    Verify {
        slot: &'static str,
        source: VerifyError,
    },
}

/// One partition: its number and extent in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub number: usize,
    pub start: u64,
    pub len: u64,
    pub name: String,
    /// Upper-case text.
    pub uuid: String,
}

/// A slot's two partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotParts {
    pub slot: Slot,
    pub root: Extent,
    pub verity: Extent,
}

/// The disk an update writes.
pub struct Disk {
    pub path: PathBuf,
    file: File,
    block: u64,
    table: Table,
    pub running: SlotParts,
    pub inactive: SlotParts,
}

fn extent(e: &gpt::Entry, block: u64) -> Extent {
    Extent {
        number: e.number,
        start: e.first_lba * block,
        len: (e.last_lba - e.first_lba + 1) * block,
        name: e.name.clone(),
        uuid: gpt::guid_text(&e.unique_guid),
    }
}

/// The running root's partition GUID, as GPT stores it.
fn running_uuid(root_hash: &[u8; 32]) -> String {
    contract::root_uuids(root_hash).root.to_ascii_uppercase()
}

impl Disk {
    /// The running system's disk: the one whose GPT holds the running root's partition.
    pub fn find_live(
        root_hash: &[u8; 32],
        types: RootTypes,
        write: bool,
    ) -> Result<Disk, SlotError> {
        let uuid = running_uuid(root_hash);
        let scan = crate::init::partitions::scan();
        let part = scan
            .parts
            .iter()
            .find(|p| {
                p.uuid.eq_ignore_ascii_case(&uuid) && p.type_guid.eq_ignore_ascii_case(types.root)
            })
            .ok_or_else(|| SlotError::NoRunningRoot {
                uuid: uuid.clone(),
                seen: scan
                    .parts
                    .iter()
                    .map(|p| p.to_string())
                    .chain(scan.unreadable.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        Disk::open(
            Path::new(&format!("/dev/{}", part.disk)),
            Some(part.block_size),
            root_hash,
            types,
            write,
        )
    }

    /// A disk (a block device or an image file) given by path; `block` is its logical block size when known
    /// (a device's is asked, an image's is 512). Opened for writing only when `write`.
    pub fn open(
        path: &Path,
        block: Option<u64>,
        root_hash: &[u8; 32],
        types: RootTypes,
        write: bool,
    ) -> Result<Disk, SlotError> {
        let io = |source| SlotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(write)
            .open(path)
            .map_err(io)?;
        let block = match block {
            Some(b) => b,
            None if file.metadata().map_err(io)?.file_type().is_file() => 512,
            None => {
                crate::init::partitions::block_size(&file).map_err(|source| SlotError::Gpt {
                    path: path.to_path_buf(),
                    source,
                })?
            }
        };
        let table = Table::read(&mut file, block).map_err(|source| SlotError::Gpt {
            path: path.to_path_buf(),
            source,
        })?;
        let of_type = |t: &str| -> Vec<&gpt::Entry> {
            table
                .parts
                .iter()
                .filter(|p| gpt::guid_text(&p.type_guid).eq_ignore_ascii_case(t))
                .collect()
        };
        let (roots, verities) = (of_type(types.root), of_type(types.verity));
        for (what, found) in [("root", roots.len()), ("root verity", verities.len())] {
            if found != 2 {
                return Err(SlotError::NotAb {
                    path: path.into(),
                    what,
                    found,
                });
            }
        }
        let slot_parts = |i: usize, slot: Slot| SlotParts {
            slot,
            root: extent(roots[i], block),
            verity: extent(verities[i], block),
        };
        let (a, b) = (slot_parts(0, Slot::A), slot_parts(1, Slot::B));
        let uuid = running_uuid(root_hash);
        let (running, inactive) = if a.root.uuid == uuid {
            (a, b)
        } else if b.root.uuid == uuid {
            (b, a)
        } else {
            return Err(SlotError::NotRunningHere {
                path: path.into(),
                uuid,
            });
        };
        Ok(Disk {
            path: path.into(),
            file,
            block,
            table,
            running,
            inactive,
        })
    }

    fn io(&self) -> impl Fn(io::Error) -> SlotError + '_ {
        |source| SlotError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Renames the inactive slot's partitions and gives them GUIDs (written first: the backup, then the primary
    /// table), then syncs the disk.
    fn set_identity(
        &mut self,
        root: ([u8; 16], String),
        verity: ([u8; 16], String),
    ) -> Result<(), SlotError> {
        let gpt_err = |source| SlotError::Gpt {
            path: self.path.clone(),
            source,
        };
        let (r, v) = (self.inactive.root.number, self.inactive.verity.number);
        self.table
            .set_identity(r, root.0, &root.1)
            .map_err(gpt_err)?;
        self.table
            .set_identity(v, verity.0, &verity.1)
            .map_err(gpt_err)?;
        self.table
            .write(&mut self.file, self.block)
            .map_err(|source| SlotError::Gpt {
                path: self.path.clone(),
                source,
            })?;
        self.file.sync_all().map_err(self.io())?;
        for (ext, (guid, name)) in [
            (&mut self.inactive.root, root),
            (&mut self.inactive.verity, verity),
        ] {
            ext.uuid = gpt::guid_text(&guid);
            ext.name = name;
        }
        Ok(())
    }

    /// Marks the inactive slot as being written: [`EMPTY_NAME`], and GUIDs no root hash gives (derived from the
    /// running root's with the slot's letter), so that no boot entry can name what is half written.
    pub fn mark_empty(&mut self) -> Result<(), SlotError> {
        let guid = |of: &str, salt: u8| {
            let mut g = gpt::guid_bytes(of).unwrap_or([0; 16]);
            g[15] ^= 0x5a ^ salt;
            // The variant and version bits of a random (v4) GUID: never one a root hash's half reads as.
            g[7] = (g[7] & 0x0f) | 0x40;
            g[8] = (g[8] & 0x3f) | 0x80;
            g
        };
        let root = (guid(&self.running.root.uuid, 1), EMPTY_NAME.to_string());
        let verity = (guid(&self.running.verity.uuid, 2), EMPTY_NAME.to_string());
        self.set_identity(root, verity)
    }

    /// Names the written slot for its root hash: the GUIDs the initrd looks for, and `root-SLOT[-verity]`.
    pub fn mark_written(&mut self, root_hash: &[u8; 32]) -> Result<(), SlotError> {
        let uuids = contract::root_uuids(root_hash);
        let letter = self.inactive.slot.letter();
        let root = (
            gpt::guid_bytes(&uuids.root).unwrap_or([0; 16]),
            format!("root-{letter}"),
        );
        let verity = (
            gpt::guid_bytes(&uuids.verity).unwrap_or([0; 16]),
            format!("root-{letter}-verity"),
        );
        self.set_identity(root, verity)
    }

    /// A sink writing the inactive slot's root (or verity) partition from its start.
    pub fn writer(
        &self,
        verity: bool,
        what: &'static str,
        size: u64,
    ) -> Result<PartWriter<'_>, SlotError> {
        let ext = if verity {
            &self.inactive.verity
        } else {
            &self.inactive.root
        };
        if size > ext.len {
            return Err(SlotError::TooBig {
                what,
                slot: self.inactive.slot.letter(),
                size,
                capacity: ext.len,
            });
        }
        Ok(PartWriter {
            file: &self.file,
            start: ext.start,
            len: ext.len,
            at: 0,
        })
    }

    /// Syncs what was written, drops it from the page cache and reads the slot back from the disk: its tree must
    /// be the one on its hash partition and give `root_hash`.
    pub fn verify_inactive(&self, root_hash: &str) -> Result<u64, SlotError> {
        self.file.sync_all().map_err(self.io())?;
        for ext in [&self.inactive.root, &self.inactive.verity] {
            drop_cache(&self.file, ext.start, ext.len);
        }
        let reader = |ext: &Extent| {
            BufReader::with_capacity(
                1 << 20,
                PartReader {
                    file: &self.file,
                    at: ext.start,
                    end: ext.start + ext.len,
                },
            )
        };
        verity::verify(
            &mut reader(&self.inactive.root),
            &mut reader(&self.inactive.verity),
            root_hash,
        )
        .map_err(|source| SlotError::Verify {
            slot: self.inactive.slot.letter(),
            source,
        })
    }

    pub fn sync(&self) -> Result<(), SlotError> {
        self.file.sync_all().map_err(self.io())
    }
}

fn drop_cache(file: &File, start: u64, len: u64) {
    // SAFETY: advice on an open descriptor; a failure only leaves pages cached.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            i64::try_from(start).unwrap_or(0),
            i64::try_from(len).unwrap_or(0),
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Writes a partition's bytes from its start, never past its end.
pub struct PartWriter<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    at: u64,
}

impl Sink for PartWriter<'_> {
    fn restart(&mut self) -> io::Result<()> {
        self.at = 0;
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let end = self.at + data.len() as u64;
        if end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the partition's {} bytes", self.len),
            ));
        }
        self.file.write_all_at(data, self.start + self.at)?;
        self.at = end;
        Ok(())
    }
}

struct PartReader<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.at);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.at)?;
        self.at += got as u64;
        Ok(got)
    }
}
