//! The ESP's side of an update: each slot's unified kernel image (`EFI/Linux/cairn-GENERATION-SLOT[+TRIES].efi`,
//! [`cairn_profile::boot_entry`]), which is its boot entry. A UKI is written to a temporary name, checked,
//! synced and renamed, and the folder synced: vfat has no journal, so a power cut leaves the old file or the new
//! one and, at worst, a stray temporary one that the next update removes.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use cairn_profile::boot_entry::{self, Ranked, Slot};
use cairn_profile::uki;

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
    /// What its UKI says; `None` when it cannot be read (damaged, or not a UKI).
    pub about: Option<uki::About>,
}

impl Found {
    /// The root hash its command line boots (`cairn.verity=`).
    pub fn root_hash(&self) -> Option<String> {
        let about = self.about.as_ref()?;
        crate::datasources::cmdline_value(&about.cmdline, cairn_profile::contract::VERITY_KEY)
            .map(|h| h.to_ascii_lowercase())
    }

    /// Its os-release's PRETTY_NAME: the profile's name and version.
    pub fn title(&self) -> String {
        self.about
            .as_ref()
            .and_then(|a| a.os_release_value("PRETTY_NAME"))
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

    /// cairn's entries, in systemd-boot's order (the first boots). Only each UKI's headers and small sections
    /// are read.
    pub fn entries(&self) -> Result<Vec<Found>, EspError> {
        let dir = self.entries_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let e = e.map_err(at(&dir))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(ranked) = Ranked::parse(&file) else {
                continue;
            };
            let path = e.path();
            let about = File::open(&path)
                .map_err(at(&path))
                .map(|mut f| uki::About::read(&mut f).ok())?;
            out.push(Found { ranked, about });
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
            let ours = boot_entry::EntryName::parse(&file).is_some_and(|n| n.slot == slot);
            if ours || file.ends_with(TMP_SUFFIX) {
                std::fs::remove_file(e.path()).map_err(at(&e.path()))?;
            }
        }
        sync_dir(&dir)
    }

    /// A file of the ESP (`EFI/Linux/cairn-2-b+3.efi`) being written: a sink into its temporary name.
    pub fn file(&self, rel: &str) -> Result<EspFile, EspError> {
        let path = self.dir.join(rel.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(at(parent))?;
        }
        let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", path.display()));
        let file = File::create(&tmp).map_err(at(&tmp))?;
        Ok(EspFile { path, tmp, file })
    }
}

/// A file written to a temporary name, renamed over the real one by [`EspFile::commit`].
pub struct EspFile {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
}

impl EspFile {
    /// Where the bytes are until [`EspFile::commit`].
    pub fn staged(&self) -> &Path {
        &self.tmp
    }

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
pub(crate) mod tests {
    use super::*;
    use cairn_profile::uki::{self, NewSection};

    /// A UKI as far as the ESP's readers look: os-release and command line on a tiny PE.
    pub(crate) fn uki_bytes(title: &str, cmdline: &str) -> Vec<u8> {
        let osrel = format!("PRETTY_NAME=\"{title}\"\nIMAGE_VERSION=\"1\"\n");
        uki::assemble(
            "stub",
            &uki::fixture::tiny_pe(),
            &[
                NewSection {
                    name: uki::OSREL,
                    data: osrel.as_bytes(),
                },
                NewSection {
                    name: uki::CMDLINE,
                    data: cmdline.as_bytes(),
                },
                NewSection {
                    name: uki::LINUX,
                    data: b"a kernel",
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn entries_come_in_boot_order_and_a_slot_is_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp {
            dir: dir.path().into(),
        };
        let d = esp.entries_dir();
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("cairn-1-a.efi"),
            uki_bytes("edge 1.0", "cairn.verity=AA console=ttyS0"),
        )
        .unwrap();
        std::fs::write(
            d.join("cairn-2-b+0.efi"),
            uki_bytes("edge 2.0", "cairn.verity=bb"),
        )
        .unwrap();
        std::fs::write(d.join("cairn-3-a+3.efi"), b"damaged").unwrap();
        std::fs::write(d.join("other.efi"), b"x").unwrap();
        std::fs::write(d.join("cairn-2-b+3.efi.cairn-tmp"), "half").unwrap();
        let found = esp.entries().unwrap();
        let files: Vec<&str> = found.iter().map(|f| f.ranked.file.as_str()).collect();
        // The B entry has no tries left: A boots, though B is newer; the damaged one ranks by its name.
        assert_eq!(
            files,
            ["cairn-3-a+3.efi", "cairn-1-a.efi", "cairn-2-b+0.efi"]
        );
        assert_eq!(found[0].root_hash(), None);
        assert_eq!(found[1].root_hash().as_deref(), Some("aa"));
        assert_eq!(found[1].title(), "edge 1.0");
        esp.remove_slot(Slot::B).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["cairn-1-a.efi", "cairn-3-a+3.efi", "other.efi"]);
    }
}
