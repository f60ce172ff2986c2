//! The partition table as the disk holds it: the primary GPT (UEFI 2.10, section 5.3), read with no tool so that
//! what inspect shows is the disk's own bytes.

use std::fs::File;
use std::path::{Path, PathBuf};

use cairn_profile::{contract, gpt};
use serde::Serialize;

/// The logical block size cairn's disks are made with (sfdisk's default for an image file).
const SECTOR: u64 = 512;

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

/// Reads the primary GPT of the disk image `path`, with the parser the initrd uses (cairn_profile::gpt): header
/// and entries checked against their CRC32s, every extent within the disk.
pub fn read(path: &Path) -> Result<Table, GptError> {
    let io = |source| GptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |reason: String| GptError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let table = match gpt::Table::read(&mut file, SECTOR) {
        Ok(t) => t,
        Err(gpt::GptError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(invalid(format!(
                "{size} bytes: the table is cut off at the disk's end"
            )));
        }
        Err(gpt::GptError::Io(e)) => return Err(io(e)),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let mut partitions = Vec::new();
    for e in &table.parts {
        if e.last_lba.saturating_add(1).saturating_mul(SECTOR) > size {
            return Err(invalid(format!(
                "partition {}: sectors {} to {} do not fit in the disk",
                e.number, e.first_lba, e.last_lba
            )));
        }
        let type_guid = gpt::guid_text(&e.type_guid);
        partitions.push(Partition {
            number: e.number as u32,
            name: e.name.clone(),
            type_name: type_name(&type_guid),
            type_guid,
            uuid: gpt::guid_text(&e.unique_guid),
            offset: e.first_lba * SECTOR,
            size: (e.last_lba - e.first_lba + 1) * SECTOR,
        });
    }
    Ok(Table {
        disk_guid: gpt::guid_text(&table.header.disk_guid),
        size,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

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
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: no GPT: GPT entries CRC32 0x", path.display())),
            "{e}"
        );
        f.write_all_at(b"\0", 512).unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .ends_with("no GPT: no GPT signature")
        );
    }
}
