//! The EFI system partition: FAT32 made with mtools, systemd-boot, the kernel, cairn's initrd and one loader entry.
//! Deterministic: the volume id comes from the inputs, file times from the build epoch (mtools reads
//! SOURCE_DATE_EPOCH for what it creates itself).

use std::path::{Path, PathBuf};

use cairn_profile::command::CommandError;

use super::tools::Tool;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
}

/// 1980-01-02, a day after FAT's first date, so no time zone can push it out of range.
pub const FAT_EPOCH: u64 = 315_619_200;

pub struct EspFile {
    /// Path on the ESP, `/`-separated, without a leading `/`.
    pub path: String,
    pub bytes: Vec<u8>,
}

pub fn make(
    out: &Path,
    size: u64,
    volume_id: u32,
    files: &[EspFile],
    epoch: u64,
    staging: &Path,
) -> Result<(), EspError> {
    let io = |p: &Path, source| EspError::Io {
        path: p.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(|e| io(out, e))?;
    file.set_len(size).map_err(|e| io(out, e))?;
    drop(file);
    // FAT dates start in 1980: an earlier epoch (the default 0) would wrap to 2098.
    let epoch = epoch.max(FAT_EPOCH);
    let epoch_s = epoch.to_string();
    Tool::Mformat
        .command()
        .args(["-i"])
        .arg(out)
        .args(["-F", "-N", &format!("{volume_id:08x}"), "-v", "ESP", "::"])
        .env("SOURCE_DATE_EPOCH", &epoch_s)
        .env("TZ", "UTC")
        .run()?;
    // Stage the files with the epoch as their time, then copy the whole tree in one mcopy.
    for f in files {
        let dest = staging.join(&f.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&dest, &f.bytes).map_err(|e| io(&dest, e))?;
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let mut stack = vec![staging.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let p = entry.map_err(|e| io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            std::fs::File::options()
                .write(!p.is_dir())
                .read(true)
                .open(&p)
                .and_then(|f| {
                    f.set_times(
                        std::fs::FileTimes::new()
                            .set_modified(time)
                            .set_accessed(time),
                    )
                })
                .map_err(|e| io(&p, e))?;
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(staging)
        .map_err(|e| io(staging, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Tool::Mcopy
        .command()
        .args(["-s", "-m", "-i"])
        .arg(out)
        .args(&entries)
        .arg("::/")
        .env("SOURCE_DATE_EPOCH", &epoch_s)
        .env("TZ", "UTC")
        .run()?;
    Ok(())
}
