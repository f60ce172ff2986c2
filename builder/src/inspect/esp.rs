//! What the EFI system partition boots, read from the disk with mtools (`IMAGE@@OFFSET`, nothing extracted): the
//! loader entries, the default one's kernel (its version from the x86 boot protocol's header) and command line,
//! and the root hash on it.

use std::path::{Path, PathBuf};

use cairn_profile::boot_entry;
use cairn_profile::command::CommandError;
use cairn_profile::contract;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::disk::tools::Tool;

/// A loader entry or loader.conf bigger than this is not one.
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
    #[error("{}: the EFI system partition has no loader entry (loader/entries/*.conf)", disk.display())]
    NoEntry { disk: PathBuf },
    #[error("{}: loader entry {entry}: {reason}", disk.display())]
    Entry {
        disk: PathBuf,
        entry: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoaderEntry {
    /// `loader/entries/cairn-a.conf`.
    pub file: String,
    pub title: String,
    /// The `version` line: cairn's entries carry their generation there.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub linux: String,
    pub initrd: Vec<String>,
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// On the ESP: `/cairn/a/vmlinuz`.
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
        .args(["-b", "-i", &image, "::/loader/entries"])
        .capture_stdout()
        .run()
        .map_err(tool)?;
    let mut names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| n.to_ascii_lowercase().ends_with(".conf"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.truncate(MAX_ENTRIES);
    let mut entries = Vec::new();
    for name in &names {
        let file = format!("loader/entries/{name}");
        let text = cat(&file)?;
        entries.push(parse_entry(&file, &text).map_err(|reason| EspError::Entry {
            disk: disk.to_path_buf(),
            entry: file.clone(),
            reason,
        })?);
    }
    // loader.conf may be absent: systemd-boot then starts the first entry.
    let conf = cat("loader/loader.conf").unwrap_or_default();
    let entry = choose(&entries, default_entry(&conf).as_deref())
        .ok_or_else(|| EspError::NoEntry {
            disk: disk.to_path_buf(),
        })?
        .clone();
    let kernel_bytes = cat(entry.linux.trim_start_matches('/'))?;
    let kernel = Kernel {
        path: entry.linux.clone(),
        size: kernel_bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&kernel_bytes)),
        version: x86_version(&kernel_bytes),
    };
    Ok(Boot {
        root_hash: root_hash(&entry.options),
        kernel_cmdline: entry.options.clone(),
        default: entry.file.clone(),
        kernel,
        entries,
    })
}

/// A Boot Loader Specification entry's keys cairn writes; the rest are ignored.
pub fn parse_entry(file: &str, bytes: &[u8]) -> Result<LoaderEntry, String> {
    if bytes.len() > MAX_CONF {
        return Err(format!("larger than {MAX_CONF} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let mut e = LoaderEntry {
        file: file.into(),
        title: String::new(),
        version: String::new(),
        linux: String::new(),
        initrd: Vec::new(),
        options: String::new(),
    };
    for line in text.lines() {
        let line = line.trim();
        let (key, value) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        match key {
            "title" => e.title = value.into(),
            "version" => e.version = value.into(),
            "linux" => e.linux = value.into(),
            "initrd" => e.initrd.push(value.into()),
            // Several `options` lines are joined, as systemd-boot does.
            "options" if e.options.is_empty() => e.options = value.into(),
            "options" => {
                e.options.push(' ');
                e.options.push_str(value);
            }
            _ => {}
        }
    }
    if e.linux.is_empty() {
        return Err("no `linux` line".into());
    }
    Ok(e)
}

/// The entry systemd-boot starts: the first, in its order, whose id (the file name without the boot counter)
/// matches loader.conf's `default` glob; without a match or a `default`, the first in its order.
pub fn choose<'a>(entries: &'a [LoaderEntry], default: Option<&str>) -> Option<&'a LoaderEntry> {
    let mut ranked: Vec<(&LoaderEntry, boot_entry::Ranked)> = entries
        .iter()
        .map(|e| {
            let file = e.file.rsplit('/').next().unwrap_or(&e.file).to_string();
            let name = boot_entry::EntryName::parse(&file).unwrap_or(boot_entry::EntryName {
                slot: boot_entry::Slot::A,
                tries_left: None,
                tries_done: None,
            });
            let generation = e.version.parse().unwrap_or(0);
            (
                e,
                boot_entry::Ranked {
                    file,
                    name,
                    generation,
                },
            )
        })
        .collect();
    ranked.sort_by(|a, b| boot_entry::boot_order(&a.1, &b.1));
    let id = |file: &str| -> String {
        match file.strip_suffix(".conf").and_then(|s| s.split_once('+')) {
            Some((stem, _)) => format!("{stem}.conf"),
            None => file.to_string(),
        }
    };
    default
        .and_then(|pattern| {
            ranked
                .iter()
                .find(|(_, r)| glob(pattern, &id(&r.file)))
                .map(|(e, _)| *e)
        })
        .or_else(|| ranked.first().map(|(e, _)| *e))
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
    fn reads_an_entry_its_command_line_and_root_hash() {
        let e = parse_entry(
            "loader/entries/cairn.conf",
            b"title edge 1.0.0\nlinux /cairn/vmlinuz\ninitrd /cairn/initrd.img\noptions console=ttyS0 cairn.verity=ab12\noptions quiet\n",
        )
        .unwrap();
        assert_eq!(e.title, "edge 1.0.0");
        assert_eq!(e.linux, "/cairn/vmlinuz");
        assert_eq!(e.initrd, ["/cairn/initrd.img"]);
        assert_eq!(e.options, "console=ttyS0 cairn.verity=ab12 quiet");
        assert_eq!(root_hash(&e.options).as_deref(), Some("ab12"));
        assert_eq!(
            root_hash("cairn.verityx=1 cairn.verity=a cairn.verity=b").as_deref(),
            Some("b")
        );
        assert_eq!(root_hash("console=ttyS0"), None);
        assert_eq!(
            parse_entry("x.conf", b"title t\n"),
            Err("no `linux` line".to_string())
        );
        assert_eq!(
            default_entry(b"timeout 0\ndefault cairn.conf\n").as_deref(),
            Some("cairn.conf")
        );
    }

    #[test]
    fn chooses_as_systemd_boot_does() {
        let entry = |file: &str, version: &str| LoaderEntry {
            file: format!("loader/entries/{file}"),
            title: file.into(),
            version: version.into(),
            linux: "/k".into(),
            initrd: Vec::new(),
            options: String::new(),
        };
        let chosen = |entries: &[LoaderEntry], default| {
            choose(entries, default).map(|e| e.title.clone()).unwrap()
        };
        let glob_default = Some("cairn-*.conf");
        let updated = [entry("cairn-a.conf", "1"), entry("cairn-b+3.conf", "2")];
        assert_eq!(chosen(&updated, glob_default), "cairn-b+3.conf");
        let tried = [entry("cairn-a.conf", "1"), entry("cairn-b+0-3.conf", "2")];
        assert_eq!(chosen(&tried, glob_default), "cairn-a.conf");
        // An exact default boots even an entry out of tries, as systemd-boot does; its id has no counter.
        assert_eq!(chosen(&tried, Some("cairn-b.conf")), "cairn-b+0-3.conf");
        assert_eq!(chosen(&updated, Some("nothing-*.conf")), "cairn-b+3.conf");
        assert_eq!(chosen(&updated, None), "cairn-b+3.conf");
        assert!(glob("cairn-?.conf", "cairn-a.conf"));
        assert!(glob("*", ""));
        assert!(!glob("cairn-*.conf", "cairn-a.conff"));
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
