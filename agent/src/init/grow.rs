//! Growing /var to the disk: a raw image written to a bigger disk (or a qcow2 enlarged with `qemu-img resize`)
//! has free space after its last partition. The GPT is rewritten with the data partition reaching the end (and
//! the backup header moved there), the kernel is told the new size (BLKPG), and ext4 is resized online once
//! mounted. Every step checks first, so it is safe to run on every boot. Every LBA is in the disk's logical
//! blocks; sysfs sizes are in 512-byte units whatever the disk (the kernel's convention).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

use super::partitions::Part;
use super::sys;
use cairn_profile::gpt::{GptError, Table};

/// Partitions end on 1 MiB boundaries.
const ALIGN_BYTES: u64 = 1 << 20;
/// The unit of /sys/block/NAME/size.
const SYSFS_SECTOR: u64 = 512;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;
// _IOW('f', 16, __u64)
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("/sys/block/{0}/size is not a number")]
    DiskSize(String),
    #[error("/dev/{disk}: {source}")]
    Gpt { disk: String, source: GptError },
    #[error("/dev/{disk}: a GPT of {entries} entry blocks does not fit a disk of {blocks} blocks")]
    Geometry {
        disk: String,
        blocks: u64,
        entries: u64,
    },
    #[error("telling the kernel the new size: {0}")]
    Blkpg(std::io::Error),
}

/// The rewritten table: what goes where, in logical blocks.
#[derive(Debug)]
struct Plan {
    primary: Vec<u8>,
    backup: Vec<u8>,
    backup_lba: u64,
    backup_entries_lba: u64,
    entries: Vec<u8>,
    /// The partition's first and new last block.
    first: u64,
    last: u64,
}

/// How `table` changes for partition `number` to reach the end of a disk of `disk_blocks` blocks of `block` bytes,
/// or None when it is not the last partition or there is no room worth taking.
fn plan(
    mut table: Table,
    disk: &str,
    disk_blocks: u64,
    block: u64,
    number: usize,
) -> Result<Option<Plan>, GrowError> {
    let gpt = |source| GrowError::Gpt {
        disk: disk.into(),
        source,
    };
    let entry_blocks = table.header.entries_blocks(block);
    let geometry = || GrowError::Geometry {
        disk: disk.into(),
        blocks: disk_blocks,
        entries: entry_blocks,
    };
    // The backup header in the last block, its entry array just before it.
    let backup_lba = disk_blocks.checked_sub(1).ok_or_else(geometry)?;
    let backup_entries_lba = backup_lba.checked_sub(entry_blocks).ok_or_else(geometry)?;
    let last_usable = backup_entries_lba.checked_sub(1).ok_or_else(geometry)?;
    let align = (ALIGN_BYTES / block).max(1);
    let Some(new_last) = ((last_usable + 1) / align * align).checked_sub(1) else {
        return Ok(None);
    };
    let part = table.part(number).map_err(gpt)?.clone();
    let is_last = table.parts.iter().all(|p| p.last_lba <= part.last_lba);
    if !is_last || new_last <= part.last_lba {
        return Ok(None);
    }
    table.set_last_lba(number, new_last).map_err(gpt)?;

    let mut header = table.header.clone();
    header.backup_lba = backup_lba;
    header.last_usable = last_usable;
    let primary = header.encode();
    header.current_lba = backup_lba;
    header.backup_lba = 1;
    header.entries_lba = backup_entries_lba;
    let backup = header.encode();
    Ok(Some(Plan {
        primary,
        backup,
        backup_lba,
        backup_entries_lba,
        entries: table.entries,
        first: part.first_lba,
        last: new_last,
    }))
}

/// Grows `part` to the end of its disk when it is the last partition and there is room; returns its new size in
/// bytes, or None when nothing changed.
pub fn grow_partition(part: &Part) -> Result<Option<u64>, String> {
    grow(part).map_err(|e| e.to_string())
}

fn grow(part: &Part) -> Result<Option<u64>, GrowError> {
    let block = part.block_size;
    let size_path = format!("/sys/block/{}/size", part.disk);
    let sysfs_sectors: u64 = std::fs::read_to_string(&size_path)
        .map_err(|source| GrowError::Io {
            path: size_path.clone(),
            source,
        })?
        .trim()
        .parse()
        .map_err(|_| GrowError::DiskSize(part.disk.clone()))?;
    let disk_blocks = sysfs_sectors.saturating_mul(SYSFS_SECTOR) / block;
    let path = format!("/dev/{}", part.disk);
    let io = |source| GrowError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let table = Table::read(&mut f, block).map_err(|source| GrowError::Gpt {
        disk: part.disk.clone(),
        source,
    })?;
    let entries_lba = table.header.entries_lba;
    let Some(plan) = plan(table, &part.disk, disk_blocks, block, part.number)? else {
        return Ok(None);
    };

    // The backup at the new end first: a crash before the primary is rewritten leaves a valid backup.
    let mut write = |lba: u64, bytes: &[u8]| -> Result<(), GrowError> {
        f.seek(SeekFrom::Start(lba * block))
            .and_then(|_| f.write_all(bytes))
            .map_err(io)
    };
    write(plan.backup_entries_lba, &plan.entries)?;
    write(plan.backup_lba, &plan.backup)?;
    write(entries_lba, &plan.entries)?;
    write(1, &plan.primary)?;
    // The protective MBR covers the whole disk (up to what 32 bits can say), in blocks.
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut mbr))
        .map_err(io)?;
    if mbr[450] == 0xEE {
        let covered = u32::try_from(plan.backup_lba).unwrap_or(u32::MAX);
        mbr[458..462].copy_from_slice(&covered.to_le_bytes());
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&mbr))
            .map_err(io)?;
    }
    f.sync_all().map_err(io)?;

    // Tell the kernel, without rereading the whole table (the root's partitions are in use). Offsets in bytes.
    let start = plan.first * block;
    let new_size = (plan.last - plan.first + 1) * block;
    let mut part_arg = vec![0u8; 8 + 8 + 4 + 64 + 64];
    part_arg[0..8].copy_from_slice(&i64::try_from(start).unwrap_or(i64::MAX).to_ne_bytes());
    part_arg[8..16].copy_from_slice(&i64::try_from(new_size).unwrap_or(i64::MAX).to_ne_bytes());
    part_arg[16..20].copy_from_slice(&i32::try_from(part.number).unwrap_or(i32::MAX).to_ne_bytes());
    let mut arg = vec![0u8; 24];
    arg[0..4].copy_from_slice(&BLKPG_RESIZE_PARTITION.to_ne_bytes());
    arg[8..12].copy_from_slice(&(part_arg.len() as i32).to_ne_bytes());
    arg[16..24].copy_from_slice(&(part_arg.as_mut_ptr() as usize as u64).to_ne_bytes());
    sys::ioctl(f.as_raw_fd(), BLKPG, &mut arg).map_err(GrowError::Blkpg)?;
    Ok(Some(new_size))
}

/// Grows the mounted ext4 at `mount` to `bytes` (its partition's size) when it is smaller.
pub fn grow_ext4(mount: &str, bytes: u64) -> Result<bool, String> {
    let dir = std::fs::File::open(mount).map_err(|e| format!("{mount}: {e}"))?;
    // SAFETY: statvfs into a zeroed struct of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(mount).map_err(|e| e.to_string())?;
    // SAFETY: a valid path and a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let current = st.f_blocks as u64 * st.f_frsize as u64;
    let blocks = bytes / 4096;
    // ext4's own overhead keeps f_blocks under the device size: only a real difference is worth a resize.
    if current + (16 << 20) >= bytes {
        return Ok(false);
    }
    let mut arg = blocks.to_ne_bytes();
    sys::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut arg)
        .map_err(|e| format!("resizing ext4 at {mount}: {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use cairn_profile::gpt::Header;
    use cairn_profile::gpt::fixture::disk;

    const ESP: [u8; 16] = [1; 16];
    const VAR: [u8; 16] = [2; 16];

    /// A disk of `blocks` blocks with an ESP and a var partition at the end of the image, read back.
    fn table(block: u64, blocks: u64) -> Table {
        let mib = (1 << 20) / block;
        let d = disk(
            block,
            blocks,
            &[
                (ESP, [3; 16], mib, 2 * mib - 1, "esp"),
                (VAR, [4; 16], 2 * mib, 3 * mib - 1, "var"),
            ],
        );
        Table::read(&mut Cursor::new(d), block).unwrap()
    }

    #[test]
    fn the_last_partition_reaches_the_aligned_end_at_both_block_sizes() {
        for block in [512u64, 4096] {
            let mib = (1 << 20) / block;
            // The image is 4 MiB, the disk 10 MiB.
            let t = table(block, 4 * mib);
            let disk_blocks = 10 * mib;
            let p = plan(t, "vda", disk_blocks, block, 2).unwrap().unwrap();
            assert_eq!(p.first, 2 * mib);
            // The backup GPT takes the end: the last whole MiB before it.
            assert_eq!(p.last, 9 * mib - 1, "{block}");
            assert_eq!(p.backup_lba, disk_blocks - 1);
            let entry_blocks = (128u64 * 128).div_ceil(block);
            assert_eq!(p.backup_entries_lba, disk_blocks - 1 - entry_blocks);
            let primary = Header::parse(&p.primary).unwrap();
            assert_eq!(primary.backup_lba, disk_blocks - 1);
            assert_eq!(primary.last_usable, disk_blocks - 2 - entry_blocks);
            let parts = primary.parse_entries(&p.entries).unwrap();
            assert_eq!(parts[1].last_lba, p.last);
            assert_eq!(parts[0].last_lba, 2 * mib - 1);
            // The backup names itself and the primary; it validates but for its LBA.
            assert!(matches!(
                Header::parse(&p.backup),
                Err(GptError::NotPrimary(l)) if l == disk_blocks - 1
            ));
        }
    }

    #[test]
    fn nothing_changes_without_room_or_for_another_partition() {
        for block in [512u64, 4096] {
            let mib = (1 << 20) / block;
            assert!(
                plan(table(block, 4 * mib), "vda", 4 * mib, block, 2)
                    .unwrap()
                    .is_none()
            );
            assert!(
                plan(table(block, 4 * mib), "vda", 10 * mib, block, 1)
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn a_disk_smaller_than_its_table_is_an_error() {
        let t = table(512, 8192);
        for blocks in [0, 1, 20] {
            assert!(matches!(
                plan(t.clone(), "vda", blocks, 512, 2),
                Err(GrowError::Geometry { .. })
            ));
        }
    }

    #[test]
    fn a_missing_partition_is_an_error() {
        assert!(matches!(
            plan(table(512, 8192), "vda", 20480, 512, 7),
            Err(GrowError::Gpt {
                source: GptError::NoPartition(7),
                ..
            })
        ));
    }
}
