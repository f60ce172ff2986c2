//! dm-verity, format 1 with sha256 and 4096-byte blocks, as `veritysetup format` writes it: a superblock, then the
//! hash tree with its top level first and level 0 last. Each digest is sha256(salt ‖ block); a level's digests are
//! packed 128 to a block and zero-padded, and hashed again, until a single digest remains: the root hash.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: usize = BLOCK / DIGEST;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("verity data of {len} bytes: not whole {BLOCK}-byte blocks")]
    PartialBlocks { len: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("writing the hash tree: {0}")]
    Write(io::Error),
}

/// What the kernel and the loader entry need to know of a hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    /// Bytes of the hash device (superblock included).
    pub hash_size: u64,
    /// The sha256 of the data (whole blocks) and of the hash device as written: what an update payload's parts
    /// and a written slot are checked against.
    pub data_sha256: [u8; 32],
    pub hash_sha256: [u8; 32],
}

impl Verity {
    pub fn root_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    /// The device-mapper table line (sectors of 512 bytes), data and hash devices given by the caller. The hash
    /// tree starts at block 1, after the superblock.
    pub fn table(&self, data_dev: &str, hash_dev: &str) -> String {
        format!(
            "0 {} verity 1 {data_dev} {hash_dev} {BLOCK} {BLOCK} {} 1 sha256 {} {}",
            self.data_blocks * (BLOCK as u64 / 512),
            self.data_blocks,
            self.root_hex(),
            hex::encode(self.salt)
        )
    }
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Packs digests into zero-padded hash blocks.
fn pack(digests: &[[u8; 32]]) -> Vec<u8> {
    let blocks = digests.len().div_ceil(PER_BLOCK);
    let mut out = vec![0u8; blocks * BLOCK];
    for (i, d) in digests.iter().enumerate() {
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
    }
    out
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VerityError + '_ {
    move |source| VerityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Pads `data` with zeros to whole blocks, then writes its hash device to the new file `hash`.
pub fn write_file(
    data: &Path,
    hash: &Path,
    salt: [u8; 32],
    uuid: [u8; 16],
) -> Result<Verity, VerityError> {
    let f = File::options()
        .write(true)
        .open(data)
        .map_err(io_err(data))?;
    let len = f.metadata().map_err(io_err(data))?.len();
    f.set_len(len.div_ceil(BLOCK as u64) * BLOCK as u64)
        .map_err(io_err(data))?;
    drop(f);
    let mut out = BufWriter::new(File::create(hash).map_err(io_err(hash))?);
    let v = format(data, &mut out, salt, uuid)?;
    out.flush().map_err(io_err(hash))?;
    Ok(v)
}

/// Hashes `data` (whose length must be a multiple of the block size) and writes the hash device to `hash_out`.
pub fn format(
    data: &Path,
    hash_out: &mut impl Write,
    salt: [u8; 32],
    uuid: [u8; 16],
) -> Result<Verity, VerityError> {
    let len = std::fs::metadata(data).map_err(io_err(data))?.len();
    if len == 0 || len % BLOCK as u64 != 0 {
        return Err(VerityError::PartialBlocks { len });
    }
    let data_blocks = len / BLOCK as u64;
    let mut reader = BufReader::with_capacity(1 << 20, File::open(data).map_err(io_err(data))?);
    let mut block = vec![0u8; BLOCK];
    let mut digests = Vec::with_capacity(data_blocks as usize);
    let mut whole = Sha256::new();
    for _ in 0..data_blocks {
        reader.read_exact(&mut block).map_err(io_err(data))?;
        whole.update(&block);
        digests.push(hash_block(&salt, &block));
    }
    let data_sha256: [u8; 32] = whole.finalize().into();
    // Level 0 first; each next level hashes the blocks of the one below, until one digest is left: the root. (A
    // single data block has no hash levels at all: its digest is the root.)
    let mut levels = Vec::new();
    while digests.len() > 1 {
        let packed = pack(&digests);
        digests = packed.chunks(BLOCK).map(|b| hash_block(&salt, b)).collect();
        levels.push(packed);
    }
    let root_hash = digests[0];

    let mut sb = vec![0u8; BLOCK];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: the normal (not Chrome OS) format
    sb[16..32].copy_from_slice(&uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(&salt);
    hash_out.write_all(&sb).map_err(VerityError::Write)?;
    let mut device = Sha256::new();
    device.update(&sb);
    let mut hash_size = BLOCK as u64;
    for level in levels.iter().rev() {
        hash_out.write_all(level).map_err(VerityError::Write)?;
        device.update(level);
        hash_size += level.len() as u64;
    }
    Ok(Verity {
        root_hash,
        salt,
        uuid,
        data_blocks,
        hash_size,
        data_sha256,
        hash_sha256: device.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use cairn_profile::command::Command;

    fn veritysetup() -> Command {
        Command::new("veritysetup").package("cryptsetup-bin")
    }

    /// Byte-identical with `veritysetup format` (rocks/setup-host installs it).
    #[test]
    fn matches_veritysetup() {
        if let Err(e) = veritysetup().arg("--version").run() {
            panic!("{e}: run rocks/setup-host");
        }
        let dir = tempfile::tempdir().unwrap();
        // One block (a single level) and 300 blocks (two levels, a partial hash block).
        for blocks in [1usize, 300, 128 * 128 + 5] {
            let data = dir.path().join(format!("data-{blocks}"));
            let bytes: Vec<u8> = (0..blocks * BLOCK).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&data, &bytes).unwrap();
            let salt = [0x5au8; 32];
            let uuid = *b"\x12\x34\x56\x78\x9a\xbc\x4d\xef\x81\x23\x45\x67\x89\xab\xcd\xef";
            let mut ours = Vec::new();
            let v = format(&data, &mut ours, salt, uuid).unwrap();
            let theirs_path = dir.path().join(format!("hash-{blocks}"));
            let out = veritysetup()
                .args([
                    "format",
                    "--hash=sha256",
                    "--data-block-size=4096",
                    "--hash-block-size=4096",
                ])
                .arg(format!("--salt={}", hex::encode(salt)))
                .arg("--uuid=12345678-9abc-4def-8123-456789abcdef")
                .arg(&data)
                .arg(&theirs_path)
                .capture_stdout()
                .run()
                .unwrap_or_else(|e| panic!("{e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("Root hash:      \t{}", v.root_hex())),
                "{blocks}: {stdout}"
            );
            let theirs = std::fs::read(&theirs_path).unwrap();
            assert_eq!(
                ours.len(),
                theirs.len(),
                "{blocks} blocks: hash device size"
            );
            assert!(ours == theirs, "{blocks} blocks: hash devices differ");
            assert_eq!(v.hash_size, ours.len() as u64);
            let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
            assert_eq!(
                v.data_sha256,
                sha(&bytes),
                "{blocks} blocks: the data's sha256"
            );
            assert_eq!(
                v.hash_sha256,
                sha(&ours),
                "{blocks} blocks: the hash device's sha256"
            );
        }
    }

    #[test]
    fn refuses_partial_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::write(&data, vec![0u8; 5000]).unwrap();
        assert!(format(&data, &mut Vec::new(), [0; 32], [0; 16]).is_err());
    }
}
