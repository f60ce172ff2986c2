//! dm-verity, format 1 with sha256 and 4096-byte blocks, as `veritysetup format` writes it: a superblock, then the
//! hash tree with its top level first and level 0 last (the tree itself is cairn_profile::verity's, which the
//! agent checks updated slots with).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use cairn_profile::verity::BLOCK;
use cairn_profile::verity::{Superblock, Tree};

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
    let tree = Tree::build(&mut reader, data_blocks, &salt).map_err(io_err(data))?;
    let sb = Superblock {
        uuid,
        salt: salt.to_vec(),
        data_blocks,
    }
    .encode();
    hash_out.write_all(&sb).map_err(VerityError::Write)?;
    let mut device = Sha256::new();
    device.update(&sb);
    for level in tree.device_levels() {
        hash_out.write_all(level).map_err(VerityError::Write)?;
        device.update(level);
    }
    let (root_hash, data_sha256, hash_size) =
        (tree.root_hash, tree.data_sha256, tree.device_size());
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
