//! The partition table as the disk holds it: the primary GPT (UEFI 2.10, section 5.3), header and entries checked
//! against their CRC32s, read with no tool so that what inspect shows is the disk's own bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_profile::contract;
use serde::Serialize;

const SECTOR: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The most entries read: the table cairn writes has 128, as every GPT tool does.
const MAX_ENTRIES: u32 = 1024;
const MIN_ENTRY_SIZE: u32 = 128;
const MAX_ENTRY_SIZE: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no GPT: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Its entry's position in the table, from 1 (as `sfdisk` and the kernel number them).
    pub number: u32,
    pub name: String,
    pub type_guid: String,
    /// What the type is, for the types cairn writes (the Discoverable Partitions Specification's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_name: Option<&'static str>,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub disk_guid: String,
    /// The disk's size.
    pub size: u64,
    pub partitions: Vec<Partition>,
}

/// What a partition type GUID means, for the ones cairn writes.
pub fn type_name(guid: &str) -> Option<&'static str> {
    [
        (contract::ESP_TYPE, "EFI system"),
        (contract::ROOT_TYPE_AMD64, "root (x86-64)"),
        (contract::ROOT_VERITY_TYPE_AMD64, "root verity (x86-64)"),
        (contract::ROOT_TYPE_ARM64, "root (arm64)"),
        (contract::ROOT_VERITY_TYPE_ARM64, "root verity (arm64)"),
        (contract::VAR_TYPE, "var"),
    ]
    .into_iter()
    .find(|(g, _)| g.eq_ignore_ascii_case(guid))
    .map(|(_, n)| n)
}

/// A GUID in its text form: the first three fields are little-endian on disk.
fn guid(b: &[u8]) -> String {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[..16]);
    u[..4].reverse();
    u[4..6].reverse();
    u[6..8].reverse();
    crate::disk::format_uuid(&u).to_uppercase()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads the primary GPT of the disk image `path`.
pub fn read(path: &Path) -> Result<Table, GptError> {
    let io = |source| GptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |reason: String| GptError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut header = [0u8; SECTOR as usize];
    file.read_exact_at(&mut header, SECTOR)
        .map_err(|_| invalid(format!("{size} bytes is too small for a disk")))?;
    if &header[..8] != SIGNATURE {
        return Err(invalid("no `EFI PART` signature at LBA 1".into()));
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Err(invalid(format!("a header size of {header_size} bytes")));
    }
    let mut zeroed = header[..header_size].to_vec();
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed) != le32(&header, 16) {
        return Err(invalid("the header's CRC32 does not match".into()));
    }
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84);
    if count > MAX_ENTRIES
        || !(MIN_ENTRY_SIZE..=MAX_ENTRY_SIZE).contains(&entry_size)
        || !entry_size.is_multiple_of(8)
    {
        return Err(invalid(format!(
            "{count} entries of {entry_size} bytes is not a table"
        )));
    }
    let mut entries = vec![0u8; count as usize * entry_size as usize];
    let at = entries_lba
        .checked_mul(SECTOR)
        .ok_or_else(|| invalid("the entries are past the disk's end".into()))?;
    file.read_exact_at(&mut entries, at)
        .map_err(|_| invalid("the entries are past the disk's end".into()))?;
    if crc32fast::hash(&entries) != le32(&header, 88) {
        return Err(invalid(
            "the partition entries' CRC32 does not match".into(),
        ));
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first || last.saturating_add(1).saturating_mul(SECTOR) > size {
            return Err(invalid(format!(
                "entry {}: sectors {first} to {last} do not fit in the disk",
                i + 1
            )));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let type_guid = guid(&e[..16]);
        partitions.push(Partition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&units),
            type_name: type_name(&type_guid),
            type_guid,
            uuid: guid(&e[16..32]),
            offset: first * SECTOR,
            size: (last - first + 1) * SECTOR,
        });
    }
    Ok(Table {
        disk_guid: guid(&header[56..72]),
        size,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with one partition, its table written by sfdisk (the builder's own tool) from a script.
    fn disk(dir: &Path) -> PathBuf {
        let path = dir.join("d.raw");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        cairn_profile::command::Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&path)
            .stdin_bytes(format!(
                "label: gpt\nlabel-id: 0A1B2C3D-0000-4000-8000-000000000001\nunit: sectors\n\nstart=2048, size=4096, type={}, uuid=11111111-2222-4333-8444-555555555555, name=\"root-a\"\n",
                contract::ROOT_TYPE_AMD64
            ))
            .run()
            .unwrap();
        path
    }

    #[test]
    fn reads_what_sfdisk_wrote_and_refuses_a_damaged_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path());
        let t = read(&path).unwrap();
        assert_eq!(t.disk_guid, "0A1B2C3D-0000-4000-8000-000000000001");
        assert_eq!(t.size, 8 << 20);
        assert_eq!(
            t.partitions,
            [Partition {
                number: 1,
                name: "root-a".into(),
                type_guid: contract::ROOT_TYPE_AMD64.into(),
                type_name: Some("root (x86-64)"),
                uuid: "11111111-2222-4333-8444-555555555555".into(),
                offset: 2048 * 512,
                size: 4096 * 512,
            }]
        );
        // One byte of the first entry's name changed: the entries' CRC no longer holds.
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(b"X", 1024 + 56).unwrap();
        let e = read(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no GPT: the partition entries' CRC32 does not match",
                path.display()
            )
        );
        f.write_all_at(b"\0", 512).unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .ends_with("no `EFI PART` signature at LBA 1")
        );
    }
}
