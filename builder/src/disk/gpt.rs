//! The partition table: GPT written by sfdisk with every GUID given (nothing random), then each partition's
//! content copied in place.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_profile::command::CommandError;
use serde::Serialize;

use super::tools::Tool;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub name: String,
    pub type_guid: String,
    pub uuid: String,
    /// Byte offset and size on the disk.
    pub offset: u64,
    pub size: u64,
    #[serde(skip)]
    pub content: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub disk_guid: String,
    pub size: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("partition {name}: {len} bytes do not fit in {size}")]
    TooBig { name: String, len: u64, size: u64 },
}

pub fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Writes the disk: a sparse file of `table.size`, the GPT, each partition's content.
pub fn write(disk: &Path, table: &Table) -> Result<(), GptError> {
    let io = |p: &Path, source| GptError::Io {
        path: p.to_path_buf(),
        source,
    };
    let file = File::create(disk).map_err(|e| io(disk, e))?;
    file.set_len(table.size).map_err(|e| io(disk, e))?;
    drop(file);
    let mut script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n\n",
        table.disk_guid
    );
    for p in &table.partitions {
        script.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.offset / SECTOR,
            p.size / SECTOR,
            p.type_guid,
            p.uuid,
            p.name
        ));
    }
    Tool::Sfdisk
        .command()
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "never",
        ])
        .arg(disk)
        .stdin_bytes(script)
        .run()?;
    let mut f = File::options()
        .write(true)
        .open(disk)
        .map_err(|e| io(disk, e))?;
    for p in &table.partitions {
        let Some(src) = &p.content else { continue };
        let len = std::fs::metadata(src).map_err(|e| io(src, e))?.len();
        if len > p.size {
            return Err(GptError::TooBig {
                name: p.name.clone(),
                len,
                size: p.size,
            });
        }
        f.seek(SeekFrom::Start(p.offset)).map_err(|e| io(disk, e))?;
        let mut from = File::open(src).map_err(|e| io(src, e))?;
        std::io::copy(&mut from, &mut f).map_err(|e| io(disk, e))?;
    }
    f.sync_all().map_err(|e| io(disk, e))?;
    Ok(())
}
