//! The ESP's side of an update: each slot's kernel and initrd (`/cairn/SLOT/`) and boot entry
//! (`loader/entries/cairn-SLOT[+TRIES].conf`, [`cairn_profile::boot_entry`]). Every file is written to a temporary
//! name, synced and renamed, and the folder synced: vfat has no journal, so a power cut leaves the old file or
//! the new one and, at worst, a stray temporary one that the next update removes.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use cairn_profile::boot_entry::{self, EntryName, Ranked, Slot};

use crate::datasources::http::Sink;

const TMP_SUFFIX: &str = ".cairn-tmp";

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct EspError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> EspError + '_ {
    move |source| EspError {
        path: path.into(),
        source,
    }
}

/// One boot entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub ranked: Ranked,
    pub text: String,
}

impl Found {
    /// The root hash its command line boots (`cairn.verity=`).
    pub fn root_hash(&self) -> Option<String> {
        self.text.lines().find_map(|l| {
            let options = l.trim().strip_prefix("options")?;
            crate::datasources::cmdline_value(options, cairn_profile::contract::VERITY_KEY)
                .map(|h| h.to_ascii_lowercase())
        })
    }

    /// The `title` line.
    pub fn title(&self) -> String {
        self.text
            .lines()
            .find_map(|l| l.trim().strip_prefix("title ").map(str::to_string))
            .unwrap_or_default()
    }
}

/// The mounted ESP.
pub struct Esp {
    pub dir: PathBuf,
}

impl Esp {
    fn entries_dir(&self) -> PathBuf {
        self.dir.join(boot_entry::ENTRIES_DIR)
    }

    /// An entry file's path.
    pub fn entry_path(&self, file: &str) -> PathBuf {
        self.entries_dir().join(file)
    }

    /// cairn's entries, in systemd-boot's order (the first boots).
    pub fn entries(&self) -> Result<Vec<Found>, EspError> {
        let dir = self.entries_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let e = e.map_err(at(&dir))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = EntryName::parse(&file) else {
                continue;
            };
            let path = e.path();
            let text = std::fs::read_to_string(&path).map_err(at(&path))?;
            out.push(Found {
                ranked: Ranked {
                    file,
                    name,
                    generation: boot_entry::generation(&text),
                },
                text,
            });
        }
        out.sort_by(|a, b| boot_entry::boot_order(&a.ranked, &b.ranked));
        Ok(out)
    }

    /// Removes every entry of `slot` (whatever its counter says) and any temporary file an interrupted update
    /// left, then syncs the folder: from here on nothing boots that slot.
    pub fn remove_slot(&self, slot: Slot) -> Result<(), EspError> {
        let dir = self.entries_dir();
        for e in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let e = e.map_err(at(&dir))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let ours = EntryName::parse(&file).is_some_and(|n| n.slot == slot);
            if ours || file.ends_with(TMP_SUFFIX) {
                std::fs::remove_file(e.path()).map_err(at(&e.path()))?;
            }
        }
        sync_dir(&dir)
    }

    /// A file of the ESP (`cairn/b/vmlinuz`) being written: a sink into its temporary name.
    pub fn file(&self, rel: &str) -> Result<EspFile, EspError> {
        let path = self.dir.join(rel.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(at(parent))?;
        }
        let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", path.display()));
        let file = File::create(&tmp).map_err(at(&tmp))?;
        Ok(EspFile { path, tmp, file })
    }

    /// Writes `slot`'s entry, with `tries` left on its counter: the commit point of an update.
    pub fn write_entry(
        &self,
        slot: Slot,
        tries: Option<u32>,
        title: &str,
        generation: u64,
        options: &str,
    ) -> Result<PathBuf, EspError> {
        let rel = format!("{}/{}", boot_entry::ENTRIES_DIR, slot.entry_file(tries));
        let mut f = self.file(&rel)?;
        let text = boot_entry::entry_text(slot, title, generation, options);
        f.write(text.as_bytes()).map_err(at(&f.tmp))?;
        f.commit()
    }
}

/// A file written to a temporary name, renamed over the real one by [`EspFile::commit`].
pub struct EspFile {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
}

impl EspFile {
    pub fn commit(self) -> Result<PathBuf, EspError> {
        self.file.sync_all().map_err(at(&self.tmp))?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.path).map_err(at(&self.path))?;
        if let Some(parent) = self.path.parent() {
            sync_dir(parent)?;
        }
        Ok(self.path)
    }
}

impl Sink for EspFile {
    fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }
}

fn sync_dir(dir: &Path) -> Result<(), EspError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_in_boot_order_and_a_slot_is_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp {
            dir: dir.path().into(),
        };
        std::fs::create_dir_all(esp.entries_dir()).unwrap();
        esp.write_entry(
            Slot::A,
            None,
            "edge 1.0",
            1,
            "cairn.verity=AA console=ttyS0",
        )
        .unwrap();
        esp.write_entry(Slot::B, Some(0), "edge 2.0", 2, "cairn.verity=bb")
            .unwrap();
        std::fs::write(esp.entries_dir().join("other.conf"), "title x\n").unwrap();
        std::fs::write(esp.entries_dir().join("cairn-b+3.conf.cairn-tmp"), "half").unwrap();
        let found = esp.entries().unwrap();
        let files: Vec<&str> = found.iter().map(|f| f.ranked.file.as_str()).collect();
        // The B entry has no tries left: A boots, though B is newer.
        assert_eq!(files, ["cairn-a.conf", "cairn-b+0.conf"]);
        assert_eq!(found[0].root_hash().as_deref(), Some("aa"));
        assert_eq!(found[0].title(), "edge 1.0");
        esp.remove_slot(Slot::B).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(esp.entries_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["cairn-a.conf", "other.conf"]);
    }
}
