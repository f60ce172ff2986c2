//! What the EFI system partition boots, read from the disk with mtools (`IMAGE@@OFFSET`, nothing extracted): the
//! unified kernel images in `EFI/Linux/`, each one's command line, os-release, kernel release and whether it is
//! signed, the default one's kernel (its version from the x86 boot protocol's header), and the root hash on its
//! command line.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use cairn_profile::boot_entry;
use cairn_profile::command::CommandError;
use cairn_profile::contract;
use cairn_profile::uki;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::disk::tools::Tool;

/// loader.conf bigger than this is not one.
const MAX_CONF: usize = 64 << 10;
/// Entries read: cairn writes one per slot.
const MAX_ENTRIES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{}: the EFI system partition: {source}", disk.display())]
    Tool {
        disk: PathBuf,
        source: Box<CommandError>,
    },
    #[error("{}: the EFI system partition has no boot entry (EFI/Linux/*.efi)", disk.display())]
    NoEntry { disk: PathBuf },
    #[error("{}: boot entry {entry}: {reason}", disk.display())]
    Entry {
        disk: PathBuf,
        entry: String,
        reason: String,
    },
}

/// One Type #2 entry: a unified kernel image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoaderEntry {
    /// `EFI/Linux/cairn-1-a.efi`.
    pub file: String,
    /// os-release's PRETTY_NAME, as systemd-boot shows it.
    pub title: String,
    /// os-release's IMAGE_VERSION: the profile's version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The generation in its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// `.cmdline`.
    pub options: String,
    /// `.uname`: the kernel's release.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uname: String,
    pub size: u64,
    pub sha256: String,
    /// Carries an Authenticode signature (which key, the firmware's db decides).
    pub signed: bool,
    #[serde(skip)]
    kernel: Option<Kernel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// The UKI and its section: `EFI/Linux/cairn-1-a.efi:.linux`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The version string an x86 kernel carries in its boot header (`6.1.0-28-amd64 (debian-kernel@...) #1 ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Boot {
    pub entries: Vec<LoaderEntry>,
    /// The entry systemd-boot starts: loader.conf's `default`, else the first.
    pub default: String,
    pub kernel: Kernel,
    pub kernel_cmdline: String,
    /// `cairn.verity=` on the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_hash: Option<String>,
}

/// The ESP at `offset` of the raw disk `disk`.
pub fn read(disk: &Path, offset: u64) -> Result<Boot, EspError> {
    let image = format!("{}@@{offset}", disk.display());
    let tool = |source| EspError::Tool {
        disk: disk.to_path_buf(),
        source: Box::new(source),
    };
    let cat = |path: &str| -> Result<Vec<u8>, EspError> {
        Ok(Tool::Mtype
            .command()
            .args(["-i", &image, &format!("::/{path}")])
            .capture_stdout()
            .run()
            .map_err(tool)?
            .stdout)
    };
    let listed = Tool::Mdir
        .command()
        .args([
            "-b",
            "-i",
            &image,
            &format!("::/{}", boot_entry::ENTRIES_DIR),
        ])
        .capture_stdout()
        .run()
        .map_err(tool)?;
    let mut names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| n.to_ascii_lowercase().ends_with(".efi"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.truncate(MAX_ENTRIES);
    let mut entries = Vec::new();
    for name in &names {
        let file = format!("{}/{name}", boot_entry::ENTRIES_DIR);
        let bytes = cat(&file)?;
        entries.push(
            parse_entry(&file, &bytes).map_err(|reason| EspError::Entry {
                disk: disk.to_path_buf(),
                entry: file.clone(),
                reason,
            })?,
        );
    }
    // loader.conf may be absent: systemd-boot then starts the first entry.
    let conf = cat(boot_entry::LOADER_CONF_PATH).unwrap_or_default();
    let entry = choose(&entries, default_entry(&conf).as_deref())
        .ok_or_else(|| EspError::NoEntry {
            disk: disk.to_path_buf(),
        })?
        .clone();
    let kernel = entry.kernel.clone().ok_or_else(|| EspError::Entry {
        disk: disk.to_path_buf(),
        entry: entry.file.clone(),
        reason: "no .linux section".into(),
    })?;
    Ok(Boot {
        root_hash: root_hash(&entry.options),
        kernel_cmdline: entry.options.clone(),
        default: entry.file.clone(),
        kernel,
        entries,
    })
}

/// What a UKI says about itself.
pub fn parse_entry(file: &str, bytes: &[u8]) -> Result<LoaderEntry, String> {
    let mut r = Cursor::new(bytes);
    let table = uki::sections(&mut r).map_err(|e| e.to_string())?;
    let about = uki::About::read_in(&mut r, &table).map_err(|e| e.to_string())?;
    let uname = uki::read_section(&mut r, &table, uki::UNAME, uki::SMALL_SECTION_LIMIT)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let kernel = uki::read_section(&mut r, &table, uki::LINUX, bytes.len() as u64)
        .ok()
        .map(|k| Kernel {
            path: format!("{file}:{}", uki::LINUX),
            size: k.len() as u64,
            sha256: hex::encode(Sha256::digest(&k)),
            version: x86_version(&k),
        });
    let name = file.rsplit('/').next().unwrap_or(file);
    Ok(LoaderEntry {
        file: file.into(),
        title: about.os_release_value("PRETTY_NAME").unwrap_or_default(),
        version: about.os_release_value("IMAGE_VERSION").unwrap_or_default(),
        generation: boot_entry::EntryName::parse(name).map(|n| n.generation),
        options: about.cmdline,
        uname,
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        signed: cairn_profile::authenticode::is_signed(bytes),
        kernel,
    })
}

/// The entry systemd-boot starts: the first, in its order, whose id (the lower-cased file name) matches
/// loader.conf's `default` glob; without a match or a `default`, the first in its order. Entries that are not
/// cairn's come after cairn's here (systemd-boot ranks them by name among the rest).
pub fn choose<'a>(entries: &'a [LoaderEntry], default: Option<&str>) -> Option<&'a LoaderEntry> {
    let mut ranked: Vec<(&LoaderEntry, Option<boot_entry::Ranked>, String)> = entries
        .iter()
        .map(|e| {
            let file = e.file.rsplit('/').next().unwrap_or(&e.file);
            (
                e,
                boot_entry::Ranked::parse(file),
                file.to_ascii_lowercase(),
            )
        })
        .collect();
    ranked.sort_by(|a, b| match (&a.1, &b.1) {
        (Some(x), Some(y)) => boot_entry::boot_order(x, y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.2.cmp(&a.2),
    });
    default
        .and_then(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            ranked
                .iter()
                .find(|(_, _, id)| glob(&pattern, id))
                .map(|(e, _, _)| *e)
        })
        .or_else(|| ranked.first().map(|(e, _, _)| *e))
}

/// `*` and `?` globbing, as loader.conf's `default` takes it.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Backtracking over the last `*`: linear enough for file names.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// loader.conf's `default` (a glob).
fn default_entry(conf: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&conf[..conf.len().min(MAX_CONF)]);
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k == "default").then(|| v.trim().to_string())
    })
}

/// The last `cairn.verity=` on a command line, as the kernel gives the last of a repeated key.
pub fn root_hash(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(contract::VERITY_KEY)?.strip_prefix('='))
        .next_back()
        .map(str::to_string)
}

/// The kernel's version string from its x86 boot protocol header (`HdrS` at 0x202, the string's offset from
/// 0x200 at 0x20e); `None` for anything else (an arm64 Image carries none there).
pub fn x86_version(kernel: &[u8]) -> Option<String> {
    if kernel.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*kernel.get(0x20e)?, *kernel.get(0x20f)?]);
    if ptr == 0 {
        return None;
    }
    let s = kernel.get(0x200 + usize::from(ptr)..)?;
    let s = &s[..s.len().min(256)];
    let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
    let v = String::from_utf8_lossy(&s[..end]).trim().to_string();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_ukis_command_line_root_hash_and_kernel() {
        let mut k = vec![0u8; 0x1000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x0a00u16.to_le_bytes());
        k[0xc00..0xc05].copy_from_slice(b"6.1.0");
        use cairn_profile::uki::NewSection as S;
        let sec = |name: &'static str, data: &'static [u8]| S { name, data };
        let kernel: &'static [u8] = k.leak();
        let bytes = uki::assemble(
            "stub",
            &uki::fixture::tiny_pe(),
            &[
                sec(
                    uki::OSREL,
                    b"PRETTY_NAME=\"edge 1.0\"\nIMAGE_VERSION=\"1.0\"\n",
                ),
                sec(uki::CMDLINE, b"console=ttyS0 cairn.verity=ab12 quiet"),
                sec(uki::UNAME, b"6.1.0"),
                sec(uki::LINUX, kernel),
            ],
        )
        .unwrap();
        let e = parse_entry("EFI/Linux/cairn-1-a.efi", &bytes).unwrap();
        assert_eq!(e.title, "edge 1.0");
        assert_eq!(e.version, "1.0");
        assert_eq!(e.generation, Some(1));
        assert_eq!(e.uname, "6.1.0");
        assert!(!e.signed);
        assert_eq!(e.options, "console=ttyS0 cairn.verity=ab12 quiet");
        assert_eq!(root_hash(&e.options).as_deref(), Some("ab12"));
        let kernel = e.kernel.clone().unwrap();
        assert_eq!(kernel.path, "EFI/Linux/cairn-1-a.efi:.linux");
        assert_eq!(kernel.size, 0x1000);
        assert_eq!(kernel.version.as_deref(), Some("6.1.0"));
        assert_eq!(
            root_hash("cairn.verityx=1 cairn.verity=a cairn.verity=b").as_deref(),
            Some("b")
        );
        assert_eq!(root_hash("console=ttyS0"), None);
        assert!(parse_entry("x.efi", b"not a PE").is_err());
        assert_eq!(
            default_entry(b"timeout 0\ndefault cairn-*.efi\n").as_deref(),
            Some("cairn-*.efi")
        );
    }

    #[test]
    fn chooses_as_systemd_boot_does() {
        let entry = |file: &str| LoaderEntry {
            file: format!("EFI/Linux/{file}"),
            title: file.into(),
            version: String::new(),
            generation: None,
            options: String::new(),
            uname: String::new(),
            size: 0,
            sha256: String::new(),
            signed: false,
            kernel: None,
        };
        let chosen = |entries: &[LoaderEntry], default| {
            choose(entries, default).map(|e| e.title.clone()).unwrap()
        };
        let glob_default = Some("cairn-*.efi");
        let updated = [entry("cairn-1-a.efi"), entry("cairn-2-b+3.efi")];
        assert_eq!(chosen(&updated, glob_default), "cairn-2-b+3.efi");
        let tried = [entry("cairn-1-a.efi"), entry("cairn-2-b+0-3.efi")];
        assert_eq!(chosen(&tried, glob_default), "cairn-1-a.efi");
        // An exact default boots even an entry out of tries, as systemd-boot does; its id keeps the counter.
        assert_eq!(
            chosen(&tried, Some("cairn-2-b+0-3.efi")),
            "cairn-2-b+0-3.efi"
        );
        assert_eq!(chosen(&updated, Some("nothing-*.efi")), "cairn-2-b+3.efi");
        assert_eq!(chosen(&updated, None), "cairn-2-b+3.efi");
        let mixed = [entry("debian.efi"), entry("cairn-1-a.efi")];
        assert_eq!(chosen(&mixed, None), "cairn-1-a.efi");
        assert!(glob("cairn-?-a.efi", "cairn-1-a.efi"));
        assert!(glob("*", ""));
        assert!(!glob("cairn-*.efi", "cairn-1-a.efii"));
        assert!(glob("*a*b*", "xxaxxbxx"));
    }

    #[test]
    fn finds_an_x86_kernels_version() {
        let mut k = vec![0u8; 0x1000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x0a00u16.to_le_bytes());
        let v = b"6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP\0junk";
        k[0xc00..0xc00 + v.len()].copy_from_slice(v);
        assert_eq!(
            x86_version(&k).as_deref(),
            Some("6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP")
        );
        assert_eq!(x86_version(b"a kernel"), None);
        k[0x20e..0x210].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(x86_version(&k), None, "an offset past the end");
    }
}
