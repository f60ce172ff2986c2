//! Tables made in memory for tests, here and in the crates that read disks (the agent's /var growth).

use super::{Header, crc32};

/// One entry to lay out: type GUID, unique GUID, first and last LBA, name.
pub type Spec<'a> = ([u8; 16], [u8; 16], u64, u64, &'a str);

pub fn header(block: u64, count: u32, size: u32, disk_blocks: u64) -> Header {
    let entries_blocks = (u64::from(count) * u64::from(size)).div_ceil(block);
    Header {
        header_size: 92,
        current_lba: 1,
        backup_lba: disk_blocks - 1,
        first_usable: 2 + entries_blocks,
        last_usable: disk_blocks - 2 - entries_blocks,
        disk_guid: [7; 16],
        entries_lba: 2,
        entry_count: count,
        entry_size: size,
        entries_crc: 0,
        block: vec![0; block as usize],
    }
}

pub fn entries(specs: &[Spec<'_>], count: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; count as usize * size as usize];
    for (i, (t, u, first, last, name)) in specs.iter().enumerate() {
        let e = &mut out[i * size as usize..(i + 1) * size as usize];
        e[..16].copy_from_slice(t);
        e[16..32].copy_from_slice(u);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, c) in name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    out
}

/// A whole disk of `disk_blocks` blocks of `block` bytes with a valid primary GPT of 128 entries.
pub fn disk(block: u64, disk_blocks: u64, specs: &[Spec<'_>]) -> Vec<u8> {
    let mut h = header(block, 128, 128, disk_blocks);
    let e = entries(specs, 128, 128);
    h.entries_crc = crc32(&e);
    let mut d = vec![0u8; (block * disk_blocks) as usize];
    d[block as usize..2 * block as usize].copy_from_slice(&h.encode());
    d[2 * block as usize..2 * block as usize + e.len()].copy_from_slice(&e);
    d
}
