//! The data partition: an empty ext4 for /var, deterministic (fixed UUID, hash seed and times); the initrd fills
//! it from the factory /var at first boot and grows it to the disk.

use std::path::{Path, PathBuf};

use cairn_profile::command::CommandError;

use super::Ids;
use super::tools::Tool;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
}

pub fn make(out: &Path, size: u64, ids: &Ids, epoch: u64) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(io)?;
    file.set_len(size).map_err(io)?;
    drop(file);
    Tool::Mke2fs
        .command()
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "var",
            "-U",
            &ids.uuid_string("var-fs"),
        ])
        .arg("-E")
        .arg(format!(
            "hash_seed={},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
            ids.uuid_string("var-hash-seed")
        ))
        .arg(out)
        // e2fsprogs' own switch for reproducible images; 0 would mean "unset".
        .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
        .run()?;
    Ok(())
}
