//! The GPT as the initrd reads and rewrites it, and `cairn inspect` reads it: the primary header and its entry array, validated before any field
//! is used (signature, header size, header CRC32, entry size and count, entries CRC32, extents), so that a damaged
//! or hostile table is an error, never a panic. Pure: the caller reads the bytes, with the disk's logical block
//! size.

use std::io::{Read, Seek, SeekFrom, Write};

pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header's defined fields end here; the rest of its block is reserved.
const HEADER_MIN: usize = 92;
/// The UEFI revision every GPT tool writes (1.0).
const REVISION: u32 = 0x0001_0000;
/// Entries are 128 bytes times a power of two; tools write 128. Anything above this is not a real table.
const ENTRY_SIZE_MAX: u32 = 4096;
const ENTRY_COUNT_MAX: u32 = 1024;
/// Bounds the entry array read into memory (tools write 128 × 128 bytes = 16 KiB).
const ENTRIES_BYTES_MAX: usize = 1 << 20;
/// The entry's fields: type GUID, unique GUID, first and last LBA, attributes, then the UTF-16 name.
const ENTRY_NAME: std::ops::Range<usize> = 56..128;

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("a logical block of {0} bytes (not a power of two from 512 to 65536)")]
    BlockSize(u64),
    #[error("{0} bytes cannot hold a GPT header")]
    Short(usize),
    #[error("no GPT signature")]
    NoSignature,
    #[error("GPT header size {size} (outside {HEADER_MIN}..={block})")]
    HeaderSize { size: u32, block: usize },
    #[error("GPT header CRC32 {stored:#010x}, its content gives {computed:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("the primary GPT header says it is at LBA {0}, not 1")]
    NotPrimary(u64),
    #[error("GPT entry size {0} (not 128 times a power of two, up to {ENTRY_SIZE_MAX})")]
    EntrySize(u32),
    #[error("GPT entry count {0} (not 1 to {ENTRY_COUNT_MAX})")]
    EntryCount(u32),
    #[error("GPT entry array of {0} bytes (more than {ENTRIES_BYTES_MAX})")]
    EntriesTooBig(usize),
    #[error("GPT entry array at LBA {0} (it must follow the header, within the disk)")]
    EntriesLba(u64),
    #[error("GPT entry array of {got} bytes, the header says {want}")]
    EntriesLength { got: usize, want: usize },
    #[error("GPT entries CRC32 {stored:#010x}, their content gives {computed:#010x}")]
    EntriesCrc { stored: u32, computed: u32 },
    #[error("GPT partition {number}: first LBA {first} after its last LBA {last}")]
    Extent {
        number: usize,
        first: u64,
        last: u64,
    },
    #[error("GPT partition {0} does not exist")]
    NoPartition(usize),
    #[error("GPT partition name {0:?}: longer than 36 UTF-16 units or holding a NUL")]
    Name(String),
    #[error("a GPT whose backup at LBA {backup} leaves no room for its entry array")]
    BackupLba { backup: u64 },
    #[error("reading the GPT: {0}")]
    Io(#[from] std::io::Error),
}

/// The primary GPT header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub header_size: u32,
    pub current_lba: u64,
    pub backup_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: [u8; 16],
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
    /// The header's whole block as read: a rewrite keeps its reserved bytes.
    block: Vec<u8>,
}

/// One used entry of the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based, as the kernel numbers partitions.
    pub number: usize,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// A validated table: the header, its entry array as read and the used entries.
#[derive(Debug, Clone)]
pub struct Table {
    pub header: Header,
    pub entries: Vec<u8>,
    pub parts: Vec<Entry>,
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

fn guid_at(b: &[u8], o: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[o..o + 16]);
    g
}

/// Checks a logical block size as the kernel reports it.
pub fn check_block_size(block: u64) -> Result<u64, GptError> {
    if block.is_power_of_two() && (512..=65536).contains(&block) {
        Ok(block)
    } else {
        Err(GptError::BlockSize(block))
    }
}

impl Header {
    /// Parses and validates the header in `block` (LBA 1, the disk's whole logical block).
    pub fn parse(block: &[u8]) -> Result<Header, GptError> {
        if block.len() < HEADER_MIN {
            return Err(GptError::Short(block.len()));
        }
        if &block[..8] != SIGNATURE {
            return Err(GptError::NoSignature);
        }
        let header_size = u32_at(block, 12);
        let size = header_size as usize;
        if size < HEADER_MIN || size > block.len() {
            return Err(GptError::HeaderSize {
                size: header_size,
                block: block.len(),
            });
        }
        let stored = u32_at(block, 16);
        let computed = header_crc(&block[..size]);
        if stored != computed {
            return Err(GptError::HeaderCrc { stored, computed });
        }
        let header = Header {
            header_size,
            current_lba: u64_at(block, 24),
            backup_lba: u64_at(block, 32),
            first_usable: u64_at(block, 40),
            last_usable: u64_at(block, 48),
            disk_guid: guid_at(block, 56),
            entries_lba: u64_at(block, 72),
            entry_count: u32_at(block, 80),
            entry_size: u32_at(block, 84),
            entries_crc: u32_at(block, 88),
            block: block.to_vec(),
        };
        if header.current_lba != 1 {
            return Err(GptError::NotPrimary(header.current_lba));
        }
        let es = header.entry_size;
        // 128 times a power of two is a power of two from 128 on.
        if !(128..=ENTRY_SIZE_MAX).contains(&es) || !es.is_power_of_two() {
            return Err(GptError::EntrySize(es));
        }
        if header.entry_count == 0 || header.entry_count > ENTRY_COUNT_MAX {
            return Err(GptError::EntryCount(header.entry_count));
        }
        let len = header.entries_len();
        if len > ENTRIES_BYTES_MAX {
            return Err(GptError::EntriesTooBig(len));
        }
        if header.entries_lba < 2 {
            return Err(GptError::EntriesLba(header.entries_lba));
        }
        Ok(header)
    }

    /// The entry array's length in bytes (bounded by [`Header::parse`]).
    pub fn entries_len(&self) -> usize {
        self.entry_count as usize * self.entry_size as usize
    }

    /// The entry array's length in logical blocks.
    pub fn entries_blocks(&self, block: u64) -> u64 {
        (self.entries_len() as u64).div_ceil(block)
    }

    /// The header's block with every field written from `self` and its CRC32 computed.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.block.clone();
        let size = self.header_size as usize;
        if b.len() < size.max(HEADER_MIN) {
            b.resize(size.max(HEADER_MIN), 0);
        }
        b[..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&REVISION.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[20..24].copy_from_slice(&0u32.to_le_bytes());
        b[24..32].copy_from_slice(&self.current_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.backup_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid);
        b[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        b[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        b[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = header_crc(&b[..size.clamp(HEADER_MIN, b.len())]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Validates the entry array read from [`Header::entries_lba`] and returns its used entries.
    pub fn parse_entries(&self, entries: &[u8]) -> Result<Vec<Entry>, GptError> {
        let want = self.entries_len();
        if entries.len() != want {
            return Err(GptError::EntriesLength {
                got: entries.len(),
                want,
            });
        }
        let computed = crc32(entries);
        if computed != self.entries_crc {
            return Err(GptError::EntriesCrc {
                stored: self.entries_crc,
                computed,
            });
        }
        let mut out = Vec::new();
        for (i, e) in entries.chunks_exact(self.entry_size as usize).enumerate() {
            let type_guid = guid_at(e, 0);
            if type_guid == [0; 16] {
                continue;
            }
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            if first > last {
                return Err(GptError::Extent {
                    number: i + 1,
                    first,
                    last,
                });
            }
            let utf16: Vec<u16> = e[ENTRY_NAME]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0)
                .collect();
            out.push(Entry {
                number: i + 1,
                type_guid,
                unique_guid: guid_at(e, 16),
                first_lba: first,
                last_lba: last,
                name: String::from_utf16_lossy(&utf16),
            });
        }
        Ok(out)
    }
}

/// CRC32 of a header with its own CRC field taken as zero.
fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..16]);
    h.update(&[0; 4]);
    h.update(&header[20..]);
    h.finalize()
}

impl Table {
    /// Reads and validates the primary table of a disk whose logical blocks are `block` bytes.
    pub fn read(disk: &mut (impl Read + Seek), block: u64) -> Result<Table, GptError> {
        let block = check_block_size(block)?;
        let mut raw = vec![0u8; block as usize];
        disk.seek(SeekFrom::Start(block))?;
        disk.read_exact(&mut raw)?;
        let header = Header::parse(&raw)?;
        let offset = header
            .entries_lba
            .checked_mul(block)
            .ok_or(GptError::EntriesLba(header.entries_lba))?;
        let mut entries = vec![0u8; header.entries_len()];
        disk.seek(SeekFrom::Start(offset))?;
        disk.read_exact(&mut entries)?;
        let parts = header.parse_entries(&entries)?;
        Ok(Table {
            header,
            entries,
            parts,
        })
    }

    /// The used entry numbered `number`.
    pub fn part(&self, number: usize) -> Result<&Entry, GptError> {
        self.parts
            .iter()
            .find(|p| p.number == number)
            .ok_or(GptError::NoPartition(number))
    }

    /// Moves partition `number`'s last LBA, keeping the entry array's CRC32 in the header right.
    pub fn set_last_lba(&mut self, number: usize, last: u64) -> Result<(), GptError> {
        let index = self
            .parts
            .iter()
            .position(|p| p.number == number)
            .ok_or(GptError::NoPartition(number))?;
        let at = (number - 1) * self.header.entry_size as usize + 40;
        self.entries[at..at + 8].copy_from_slice(&last.to_le_bytes());
        self.parts[index].last_lba = last;
        self.header.entries_crc = crc32(&self.entries);
        Ok(())
    }
}

impl Table {
    /// Gives partition `number` a new unique GUID and name (an A/B update marks a slot it writes this way),
    /// keeping the entry array's CRC32 in the header right.
    pub fn set_identity(
        &mut self,
        number: usize,
        unique_guid: [u8; 16],
        name: &str,
    ) -> Result<(), GptError> {
        let index = self
            .parts
            .iter()
            .position(|p| p.number == number)
            .ok_or(GptError::NoPartition(number))?;
        let units: Vec<u16> = name.encode_utf16().collect();
        if units.len() > ENTRY_NAME.len() / 2 || units.contains(&0) {
            return Err(GptError::Name(name.into()));
        }
        let at = (number - 1) * self.header.entry_size as usize;
        let e = &mut self.entries[at..at + self.header.entry_size as usize];
        e[16..32].copy_from_slice(&unique_guid);
        e[ENTRY_NAME].fill(0);
        for (j, c) in units.iter().enumerate() {
            e[ENTRY_NAME.start + 2 * j..ENTRY_NAME.start + 2 * j + 2]
                .copy_from_slice(&c.to_le_bytes());
        }
        self.parts[index].unique_guid = unique_guid;
        self.parts[index].name = name.into();
        self.header.entries_crc = crc32(&self.entries);
        Ok(())
    }

    /// Writes the table where its header says: the backup (its entry array just before its header at the
    /// header's backup LBA) first, then the primary, so that a crash between the two leaves one whole copy.
    /// The caller syncs.
    pub fn write(&self, disk: &mut (impl Write + Seek), block: u64) -> Result<(), GptError> {
        let block = check_block_size(block)?;
        let backup_entries = self
            .header
            .backup_lba
            .checked_sub(self.header.entries_blocks(block))
            .filter(|lba| *lba > self.header.last_usable)
            .ok_or(GptError::BackupLba {
                backup: self.header.backup_lba,
            })?;
        let mut backup = self.header.clone();
        backup.current_lba = self.header.backup_lba;
        backup.backup_lba = 1;
        backup.entries_lba = backup_entries;
        let mut put = |lba: u64, bytes: &[u8]| -> Result<(), GptError> {
            disk.seek(SeekFrom::Start(lba * block))?;
            disk.write_all(bytes)?;
            Ok(())
        };
        put(backup_entries, &self.entries)?;
        put(backup.current_lba, &backup.encode())?;
        put(self.header.entries_lba, &self.entries)?;
        put(1, &self.header.encode())
    }
}

/// GUID text (`8-4-4-4-12` hex digits, either case) to the mixed-endian bytes GPT stores; the inverse of
/// [`guid_text`].
pub fn guid_bytes(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut plain = [0u8; 16];
    for (i, b) in plain.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut out = plain;
    out[0..4].copy_from_slice(&[plain[3], plain[2], plain[1], plain[0]]);
    out[4..6].copy_from_slice(&[plain[5], plain[4]]);
    out[6..8].copy_from_slice(&[plain[7], plain[6]]);
    Some(out)
}

/// Mixed-endian GUID bytes (as GPT stores them) to the usual text, upper case.
pub fn guid_text(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

#[cfg(any(test, feature = "test-support"))]
pub mod fixture;
#[cfg(test)]
mod tests;
