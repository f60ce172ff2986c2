//! dm-verity, format 1 with sha256 and 4096-byte blocks, as `veritysetup format` writes it: a superblock, then the
//! hash tree with its top level first and level 0 last. Each digest is sha256(salt ‖ block); a level's digests are
//! packed 128 to a block and zero-padded, and hashed again, until a single digest remains: the root hash.
//!
//! Shared because the builder writes trees and the agent checks the slots its updates write against them.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: usize = BLOCK / DIGEST;
const MAGIC: &[u8; 8] = b"verity\0\0";
/// The longest salt the superblock holds.
const MAX_SALT: usize = 256;

/// What the superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub salt: Vec<u8>,
    pub data_blocks: u64,
}

impl Superblock {
    /// The superblock block as `veritysetup` writes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut sb = vec![0u8; BLOCK];
        sb[0..8].copy_from_slice(MAGIC);
        sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
        sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: the normal (not Chrome OS) format
        sb[16..32].copy_from_slice(&self.uuid);
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = &self.salt[..self.salt.len().min(MAX_SALT)];
        sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        sb[88..88 + salt.len()].copy_from_slice(salt);
        sb
    }

    /// Reads a superblock of cairn's format (version 1, sha256, 4096-byte blocks); anything else is refused,
    /// saying what it is.
    pub fn parse(b: &[u8]) -> Result<Superblock, String> {
        if b.len() < 88 + MAX_SALT || &b[..8] != MAGIC {
            return Err("no verity superblock".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let algorithm = &b[32..64];
        let name_len = algorithm.iter().position(|c| *c == 0).unwrap_or(32);
        if u32_at(8) != 1
            || u32_at(12) != 1
            || &algorithm[..name_len] != b"sha256"
            || u32_at(64) != BLOCK as u32
            || u32_at(68) != BLOCK as u32
        {
            return Err(format!(
                "a verity superblock of another format (version {}, hash type {}, {}, blocks {}/{})",
                u32_at(8),
                u32_at(12),
                String::from_utf8_lossy(&algorithm[..name_len]),
                u32_at(64),
                u32_at(68)
            ));
        }
        let salt_len = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_len > MAX_SALT {
            return Err(format!("a salt of {salt_len} bytes"));
        }
        let mut data_blocks = [0u8; 8];
        data_blocks.copy_from_slice(&b[72..80]);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        Ok(Superblock {
            uuid,
            salt: b[88..88 + salt_len].to_vec(),
            data_blocks: u64::from_le_bytes(data_blocks),
        })
    }
}

/// A hash tree over some data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root_hash: [u8; 32],
    /// Level 0 first (the order they are computed in; the device holds them the other way round).
    pub levels: Vec<Vec<u8>>,
    /// The sha256 of the data blocks read.
    pub data_sha256: [u8; 32],
}

impl Tree {
    /// Hashes `data_blocks` blocks read from `data`.
    pub fn build(data: &mut impl Read, data_blocks: u64, salt: &[u8]) -> io::Result<Tree> {
        if data_blocks == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no data blocks to hash",
            ));
        }
        let mut block = vec![0u8; BLOCK];
        // The count may come from a superblock on disk: reserve only what a read proves.
        let mut digests =
            Vec::with_capacity(usize::try_from(data_blocks.min(1 << 20)).unwrap_or(0));
        let mut whole = Sha256::new();
        for _ in 0..data_blocks {
            data.read_exact(&mut block)?;
            whole.update(&block);
            digests.push(hash_block(salt, &block));
        }
        // Each next level hashes the blocks of the one below, until one digest is left: the root. (A single data
        // block has no hash levels at all: its digest is the root.)
        let mut levels = Vec::new();
        while digests.len() > 1 {
            let packed = pack(&digests);
            digests = packed.chunks(BLOCK).map(|b| hash_block(salt, b)).collect();
            levels.push(packed);
        }
        Ok(Tree {
            root_hash: digests[0],
            levels,
            data_sha256: whole.finalize().into(),
        })
    }

    /// The bytes of the hash device after its superblock: the top level first.
    pub fn device_levels(&self) -> impl Iterator<Item = &[u8]> {
        self.levels.iter().rev().map(Vec::as_slice)
    }

    /// Bytes of the hash device, superblock included.
    pub fn device_size(&self) -> u64 {
        BLOCK as u64 + self.levels.iter().map(|l| l.len() as u64).sum::<u64>()
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

/// Why a slot does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading it: {0}")]
    Io(#[from] io::Error),
    #[error("its hash partition: {0}")]
    Superblock(String),
    #[error(
        "its hash partition does not hold the tree of its data: level {level}'s digest of block {block} differs (hash partition byte {offset})"
    )]
    Tree {
        offset: u64,
        level: usize,
        block: u64,
    },
    #[error("its root hash is {found}, not {expected}")]
    RootHash { found: String, expected: String },
}

/// Checks a slot as the kernel would: the hash device's superblock, a tree recomputed from the data equal to the
/// one on the hash device, and its root equal to `root_hash` (64 hex digits). Returns the data's block count.
pub fn verify(
    data: &mut impl Read,
    hash: &mut impl Read,
    root_hash: &str,
) -> Result<u64, VerifyError> {
    let mut sb = vec![0u8; BLOCK];
    hash.read_exact(&mut sb)?;
    let sb = Superblock::parse(&sb).map_err(VerifyError::Superblock)?;
    let tree = Tree::build(data, sb.data_blocks, &sb.salt)?;
    let mut on_disk = vec![0u8; usize::try_from(tree.device_size()).unwrap_or(0) - BLOCK];
    hash.read_exact(&mut on_disk)?;
    // The lowest level first, so that a difference names the data it covers. On the device the top level
    // comes first: level i starts after every level above it.
    for (i, level) in tree.levels.iter().enumerate() {
        let start: usize = tree.levels[i + 1..].iter().map(Vec::len).sum();
        let stored = &on_disk[start..start + level.len()];
        if let Some(at) = stored.iter().zip(level).position(|(a, b)| a != b) {
            return Err(VerifyError::Tree {
                offset: (BLOCK + start + at) as u64,
                level: i,
                block: (at / DIGEST) as u64,
            });
        }
    }
    let found = hex_of(&tree.root_hash);
    if !found.eq_ignore_ascii_case(root_hash) {
        return Err(VerifyError::RootHash {
            found,
            expected: root_hash.to_string(),
        });
    }
    Ok(sb.data_blocks)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(data: &[u8], salt: &[u8]) -> (Tree, Vec<u8>) {
        let blocks = (data.len() / BLOCK) as u64;
        let tree = Tree::build(&mut &data[..], blocks, salt).unwrap();
        let mut dev = Superblock {
            uuid: [7; 16],
            salt: salt.to_vec(),
            data_blocks: blocks,
        }
        .encode();
        for l in tree.device_levels() {
            dev.extend_from_slice(l);
        }
        (tree, dev)
    }

    #[test]
    fn a_slot_verifies_against_its_own_root_only() {
        let data: Vec<u8> = (0..300 * BLOCK).map(|i| (i * 7 % 251) as u8).collect();
        let (tree, dev) = device(&data, &[0x5a; 32]);
        assert_eq!(tree.device_size(), dev.len() as u64);
        let root = hex_of(&tree.root_hash);
        assert_eq!(verify(&mut &data[..], &mut &dev[..], &root).unwrap(), 300);

        let other = "0".repeat(64);
        let e = verify(&mut &data[..], &mut &dev[..], &other).unwrap_err();
        assert!(matches!(e, VerifyError::RootHash { .. }), "{e}");

        let mut bad = data.clone();
        bad[5 * BLOCK + 9] ^= 1;
        let e = verify(&mut &bad[..], &mut &dev[..], &root).unwrap_err();
        // The level-0 digest of block 5 differs: the last level on the device, 32 bytes per block.
        let level0_at = dev.len() as u64 - tree.levels[0].len() as u64;
        assert!(
            matches!(e, VerifyError::Tree { offset, level: 0, block: 5 } if offset == level0_at + 5 * 32),
            "{e}"
        );

        let e = verify(&mut &data[..], &mut &dev[..100], &root).unwrap_err();
        assert!(matches!(e, VerifyError::Io(_)), "{e}");
        let e = verify(&mut &data[..], &mut &[0u8; BLOCK][..], &root).unwrap_err();
        assert!(matches!(e, VerifyError::Superblock(_)), "{e}");
    }

    #[test]
    fn superblocks_round_trip_and_other_formats_are_named() {
        let sb = Superblock {
            uuid: [1; 16],
            salt: vec![2; 32],
            data_blocks: 12345,
        };
        let mut bytes = sb.encode();
        assert_eq!(Superblock::parse(&bytes).unwrap(), sb);
        bytes[64..68].copy_from_slice(&512u32.to_le_bytes());
        let e = Superblock::parse(&bytes).unwrap_err();
        assert!(e.contains("blocks 512/4096"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// A hash partition's first block is whatever the disk holds: it reads or is refused, never panics.
        #[test]
        fn any_superblock_parses_or_is_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            magic in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = bytes;
            if magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(MAGIC);
            }
            let _ = Superblock::parse(&bytes);
        }
    }
}
