//! dm-verity through the device-mapper ioctls on /dev/mapper/control (the kernel has no CONFIG_DM_INIT, and the
//! initrd no dmsetup): create the device, load a read-only verity table, resume it.

use std::io;
use std::os::fd::AsRawFd;

use super::sys;

const DM_VERSION: [u32; 3] = [4, 0, 0];
const HEADER: usize = 312;
const SPEC: usize = 40;
// _IOWR(0xfd, nr, struct dm_ioctl) with sizeof(struct dm_ioctl) = 312.
const DM_DEV_CREATE: libc::c_ulong = 0xC138_FD03;
const DM_DEV_SUSPEND: libc::c_ulong = 0xC138_FD06;
const DM_TABLE_LOAD: libc::c_ulong = 0xC138_FD09;
const DM_READONLY_FLAG: u32 = 1;

fn header(name: &str, data_size: usize, flags: u32, targets: u32) -> Vec<u8> {
    let mut b = vec![0u8; data_size];
    for (i, v) in DM_VERSION.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    b[12..16].copy_from_slice(&(data_size as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(HEADER as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&targets.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    let n = name.as_bytes();
    b[48..48 + n.len().min(127)].copy_from_slice(&n[..n.len().min(127)]);
    b
}

/// The verity superblock's data block count and salt, read from the hash device.
pub fn superblock(hash_dev: &std::path::Path) -> io::Result<(u64, Vec<u8>)> {
    use std::io::Read;
    let mut sb = [0u8; 512];
    std::fs::File::open(hash_dev)?.read_exact(&mut sb)?;
    if &sb[..8] != b"verity\0\0" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no verity superblock on the hash partition",
        ));
    }
    let blocks = u64::from_le_bytes(sb[72..80].try_into().unwrap_or([0; 8]));
    let salt_len = u16::from_le_bytes([sb[80], sb[81]]) as usize;
    Ok((blocks, sb[88..88 + salt_len.min(256)].to_vec()))
}

/// Creates `/dev/mapper`-less device `name` over data and hash devices (`MAJ:MIN`); returns its dm minor.
pub fn create_verity(
    name: &str,
    data: &str,
    hash: &str,
    blocks: u64,
    root_hash: &str,
    salt: &[u8],
) -> io::Result<()> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/device-mapper")
        })?;
    let fd = control.as_raw_fd();
    let mut create = header(name, HEADER + 16, 0, 0);
    sys::ioctl(fd, DM_DEV_CREATE, &mut create)?;
    let salt_hex: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    let params = format!("1 {data} {hash} 4096 4096 {blocks} 1 sha256 {root_hash} {salt_hex}\0");
    let size = (HEADER + SPEC + params.len()).div_ceil(8) * 8;
    let mut load = header(name, size, DM_READONLY_FLAG, 1);
    let spec = &mut load[HEADER..HEADER + SPEC];
    spec[0..8].copy_from_slice(&0u64.to_ne_bytes());
    spec[8..16].copy_from_slice(&(blocks * 8).to_ne_bytes());
    spec[24..30].copy_from_slice(b"verity");
    load[HEADER + SPEC..HEADER + SPEC + params.len()].copy_from_slice(params.as_bytes());
    sys::ioctl(fd, DM_TABLE_LOAD, &mut load)?;
    let mut resume = header(name, HEADER + 16, 0, 0);
    sys::ioctl(fd, DM_DEV_SUSPEND, &mut resume)?;
    Ok(())
}

/// `/dev/dm-N` of the device-mapper device called `name`.
pub fn device_of(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let dm = e.file_name().to_string_lossy().into_owned();
            let n = std::fs::read_to_string(e.path().join("dm/name")).ok()?;
            (n.trim() == name).then(|| std::path::PathBuf::from(format!("/dev/{dm}")))
        })
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    proptest! {
        #![proptest_config(config(32))]

        /// Whatever the hash partition starts with: the superblock's block count and at most 256 bytes of salt,
        /// or an error, never a panic or a read past the block.
        #[test]
        fn any_superblock_reads_or_fails(
            mut block in prop::collection::vec(any::<u8>(), 0..600),
            verity in any::<bool>(),
            salt_len in prop_oneof![0..=256u16, any::<u16>()],
        ) {
            if verity && block.len() >= 82 {
                block[..8].copy_from_slice(b"verity\0\0");
                block[80..82].copy_from_slice(&salt_len.to_le_bytes());
            }
            let dir = tempfile::tempdir().unwrap();
            let dev = dir.path().join("hash");
            std::fs::write(&dev, &block).unwrap();
            match superblock(&dev) {
                Ok((blocks, salt)) => {
                    prop_assert!(block.len() >= 512 && block.starts_with(b"verity\0\0"));
                    prop_assert_eq!(blocks, u64::from_le_bytes(block[72..80].try_into().unwrap()));
                    let len = usize::from(u16::from_le_bytes([block[80], block[81]])).min(256);
                    prop_assert_eq!(salt, block[88..88 + len].to_vec());
                }
                Err(_) => prop_assert!(block.len() < 512 || !block.starts_with(b"verity\0\0")),
            }
        }
    }
}
