//! Growing /var to the disk: a raw image written to a bigger disk (or a qcow2 enlarged with `qemu-img resize`)
//! has free space after its last partition. The GPT is rewritten with the data partition reaching the end (and
//! the backup header moved there), the kernel is told the new size (BLKPG), and ext4 is resized online once
//! mounted. Every step checks first, so it is safe to run on every boot.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

use super::gpt::Part;
use super::sys;

const ALIGN_SECTORS: u64 = 2048;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;
// _IOW('f', 16, __u64)
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

/// Grows `part` to the end of its disk when it is the last partition and there is room; returns its new size in
/// bytes, or None when nothing changed.
pub fn grow_partition(part: &Part) -> Result<Option<u64>, String> {
    let sector = 512u64;
    let disk_sectors: u64 = std::fs::read_to_string(format!("/sys/block/{}/size", part.disk))
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "unreadable disk size".to_string())?;
    let path = format!("/dev/{}", part.disk);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut header = vec![0u8; sector as usize];
    f.seek(SeekFrom::Start(sector))
        .and_then(|_| f.read_exact(&mut header))
        .map_err(|e| e.to_string())?;
    let header_size = u32_at(&header, 12) as usize;
    let entries_lba = u64_at(&header, 72);
    let (count, size) = (u32_at(&header, 80) as usize, u32_at(&header, 84) as usize);
    let entry_bytes = count * size;
    let entry_sectors = (entry_bytes as u64).div_ceil(sector);
    let mut entries = vec![0u8; entry_bytes];
    f.seek(SeekFrom::Start(entries_lba * sector))
        .and_then(|_| f.read_exact(&mut entries))
        .map_err(|e| e.to_string())?;

    let last_usable = disk_sectors - 1 - entry_sectors - 1;
    let new_last = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS - 1;
    let e = (part.number - 1) * size;
    let (first, last) = (u64_at(&entries, e + 32), u64_at(&entries, e + 40));
    let is_last = (0..count).all(|i| u64_at(&entries, i * size + 40) <= last);
    if !is_last || new_last <= last {
        return Ok(None);
    }
    entries[e + 40..e + 48].copy_from_slice(&new_last.to_le_bytes());
    let entries_crc = crc32(&entries);

    // Primary header, then the backup at the disk's new end.
    let backup_lba = disk_sectors - 1;
    let backup_entries = backup_lba - entry_sectors;
    let mut primary = header.clone();
    primary[32..40].copy_from_slice(&backup_lba.to_le_bytes());
    primary[48..56].copy_from_slice(&last_usable.to_le_bytes());
    primary[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    primary[16..20].copy_from_slice(&0u32.to_le_bytes());
    let crc = crc32(&primary[..header_size]);
    primary[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&backup_lba.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
    backup[16..20].copy_from_slice(&0u32.to_le_bytes());
    let crc = crc32(&backup[..header_size]);
    backup[16..20].copy_from_slice(&crc.to_le_bytes());

    let write = |f: &mut std::fs::File, lba: u64, bytes: &[u8]| -> Result<(), String> {
        f.seek(SeekFrom::Start(lba * sector))
            .and_then(|_| f.write_all(bytes))
            .map_err(|e| e.to_string())
    };
    write(&mut f, backup_entries, &entries)?;
    write(&mut f, backup_lba, &backup)?;
    write(&mut f, entries_lba, &entries)?;
    write(&mut f, 1, &primary)?;
    // The protective MBR covers the whole disk (up to what 32 bits can say).
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_exact(&mut mbr))
        .map_err(|e| e.to_string())?;
    if mbr[450] == 0xEE {
        let covered = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
        mbr[458..462].copy_from_slice(&covered.to_le_bytes());
        write(&mut f, 0, &mbr)?;
    }
    f.sync_all().map_err(|e| e.to_string())?;

    // Tell the kernel, without rereading the whole table (the root's partitions are in use).
    let new_size = (new_last - first + 1) * sector;
    let mut part_arg = vec![0u8; 8 + 8 + 4 + 64 + 64];
    part_arg[0..8].copy_from_slice(&((first * sector) as i64).to_ne_bytes());
    part_arg[8..16].copy_from_slice(&(new_size as i64).to_ne_bytes());
    part_arg[16..20].copy_from_slice(&(part.number as i32).to_ne_bytes());
    let mut arg = vec![0u8; 24];
    arg[0..4].copy_from_slice(&BLKPG_RESIZE_PARTITION.to_ne_bytes());
    arg[8..12].copy_from_slice(&(part_arg.len() as i32).to_ne_bytes());
    arg[16..24].copy_from_slice(&(part_arg.as_mut_ptr() as usize as u64).to_ne_bytes());
    sys::ioctl(f.as_raw_fd(), BLKPG, &mut arg)
        .map_err(|e| format!("telling the kernel the new size: {e}"))?;
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
    #[test]
    fn crc32_is_ieee() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
    }
}
