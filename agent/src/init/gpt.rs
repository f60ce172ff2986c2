//! Finding partitions by their GPT type GUID: the initrd reads each disk's partition table itself.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Part {
    pub type_guid: String,
    pub name: String,
    /// `/dev/vda2`.
    pub dev: PathBuf,
    /// `MAJ:MIN`.
    pub numbers: String,
    /// The whole disk's kernel name (`vda`) and the partition's number on it (1-based).
    pub disk: String,
    pub number: usize,
}

/// Mixed-endian GUID bytes (as GPT stores them) to the usual text, upper case.
pub fn guid(b: &[u8]) -> String {
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

/// Partitions of every disk the kernel shows in /sys/block.
pub fn scan() -> Vec<Part> {
    let mut out = Vec::new();
    let Ok(disks) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for disk in disks.flatten() {
        let name = disk.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("dm-") {
            continue;
        }
        if let Ok(parts) = read_table(&name) {
            out.extend(parts);
        }
    }
    out
}

fn read_table(disk: &str) -> std::io::Result<Vec<Part>> {
    let sector: u64 =
        std::fs::read_to_string(format!("/sys/block/{disk}/queue/logical_block_size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(512);
    let mut f = std::fs::File::open(format!("/dev/{disk}"))?;
    let mut header = vec![0u8; sector as usize];
    f.seek(SeekFrom::Start(sector))?;
    f.read_exact(&mut header)?;
    if &header[..8] != b"EFI PART" {
        return Ok(Vec::new());
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    let entries_lba = u64::from_le_bytes(header[72..80].try_into().unwrap_or([0; 8]));
    let (count, size) = (u32_at(80) as usize, u32_at(84) as usize);
    if size < 128 || count > 1024 {
        return Ok(Vec::new());
    }
    let mut entries = vec![0u8; count * size];
    f.seek(SeekFrom::Start(entries_lba * sector))?;
    f.read_exact(&mut entries)?;
    // Partition number → kernel device name, from sysfs.
    let mut names = BTreeMap::new();
    for e in std::fs::read_dir(format!("/sys/block/{disk}"))?.flatten() {
        let p = e.path();
        if let Ok(n) = std::fs::read_to_string(p.join("partition")) {
            let dev = std::fs::read_to_string(p.join("dev")).unwrap_or_default();
            names.insert(
                n.trim().parse::<usize>().unwrap_or(0),
                (
                    e.file_name().to_string_lossy().into_owned(),
                    dev.trim().to_string(),
                ),
            );
        }
    }
    let mut out = Vec::new();
    for i in 0..count {
        let e = &entries[i * size..(i + 1) * size];
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let utf16: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        if let Some((dev, numbers)) = names.get(&(i + 1)) {
            out.push(Part {
                type_guid: guid(&e[..16]),
                name: String::from_utf16_lossy(&utf16),
                dev: PathBuf::from(format!("/dev/{dev}")),
                numbers: numbers.clone(),
                disk: disk.to_string(),
                number: i + 1,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mixed_endian_guids() {
        // The ESP type as GPT stores it on disk.
        let b = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(super::guid(&b), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    }
}
