//! Unified kernel images (UAPI.5): one PE file per slot, systemd-stub with the kernel (`.linux`), cairn's initrd
//! (`.initrd`), the command line with the root hash (`.cmdline`), os-release (`.osrel`) and the kernel's release
//! (`.uname`) as sections. The builder makes them (and signs them for Secure Boot); the agent and the initrd read
//! a UKI's small sections here to learn which root it boots, seeking past the kernel and initrd rather than
//! reading tens of megabytes.
//!
//! The PE headers are parsed with the `object` crate; a UKI on the ESP is untrusted input (anything may have
//! written the ESP), so every size and offset is bounded.

use std::io::{self, Read, Seek, SeekFrom};

use object::LittleEndian as LE;
use object::pe::{ImageDosHeader, ImageNtHeaders64};
use object::read::pe::ImageNtHeaders;

/// The sections cairn puts in a UKI, in the order it adds them (the order systemd's ukify uses).
pub const OSREL: &str = ".osrel";
pub const CMDLINE: &str = ".cmdline";
pub const UNAME: &str = ".uname";
pub const INITRD: &str = ".initrd";
pub const LINUX: &str = ".linux";

/// The most header bytes read: the DOS and NT headers and the section table.
const HEADER_LIMIT: usize = 64 << 10;
/// The most bytes a small section (`.cmdline`, `.osrel`, `.uname`) may have.
pub const SMALL_SECTION_LIMIT: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a PE32+ image: {0}")]
    NotPe(&'static str),
    #[error("section {name} is {size} bytes, more than {limit}")]
    TooBig { name: String, size: u64, limit: u64 },
    #[error("no {0} section")]
    Missing(&'static str),
    #[error("section {0} is not UTF-8 text")]
    NotText(&'static str),
}

/// One section as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_address: u32,
    /// The bytes that matter: `VirtualSize`, at most `SizeOfRawData` (the rest is file alignment).
    pub size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
}

/// The section table of the PE file `r`.
pub fn sections<R: Read + Seek>(r: &mut R) -> Result<Vec<Section>, UkiError> {
    r.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(HEADER_LIMIT);
    r.take(HEADER_LIMIT as u64).read_to_end(&mut head)?;
    parse_sections(&head)
}

/// The section table, from the file's first bytes.
pub fn parse_sections(head: &[u8]) -> Result<Vec<Section>, UkiError> {
    let dos = ImageDosHeader::parse(head).map_err(|_| UkiError::NotPe("no DOS header"))?;
    let mut offset = dos.nt_headers_offset().into();
    let (nt, _) = ImageNtHeaders64::parse(head, &mut offset)
        .map_err(|_| UkiError::NotPe("no PE32+ headers in its first 64 KiB"))?;
    let table = nt
        .sections(head, offset)
        .map_err(|_| UkiError::NotPe("its section table is cut short"))?;
    Ok(table
        .iter()
        .map(|s| {
            let raw_size = s.size_of_raw_data.get(LE);
            Section {
                name: String::from_utf8_lossy(s.raw_name()).into_owned(),
                virtual_address: s.virtual_address.get(LE),
                size: s.virtual_size.get(LE).min(raw_size),
                raw_offset: s.pointer_to_raw_data.get(LE),
                raw_size,
            }
        })
        .collect())
}

/// The bytes of the first section called `name`, if it is at most `limit` bytes.
pub fn read_section<R: Read + Seek>(
    r: &mut R,
    table: &[Section],
    name: &'static str,
    limit: u64,
) -> Result<Vec<u8>, UkiError> {
    let s = table
        .iter()
        .find(|s| s.name == name)
        .ok_or(UkiError::Missing(name))?;
    if u64::from(s.size) > limit {
        return Err(UkiError::TooBig {
            name: name.into(),
            size: s.size.into(),
            limit,
        });
    }
    r.seek(SeekFrom::Start(s.raw_offset.into()))?;
    let mut out = Vec::with_capacity(s.size as usize);
    r.take(s.size.into()).read_to_end(&mut out)?;
    if out.len() != s.size as usize {
        return Err(UkiError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("section {name} runs past the end of the file"),
        )));
    }
    Ok(out)
}

/// What a slot's UKI says about itself: its command line and os-release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    /// `.cmdline`, trailing NULs and white space trimmed.
    pub cmdline: String,
    /// `.osrel`.
    pub os_release: String,
}

impl About {
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<About, UkiError> {
        let table = sections(r)?;
        let text = |r: &mut R, name: &'static str| -> Result<String, UkiError> {
            let bytes = read_section(r, &table, name, SMALL_SECTION_LIMIT)?;
            let s = String::from_utf8(bytes).map_err(|_| UkiError::NotText(name))?;
            Ok(s.trim_end_matches(['\0', '\n', ' ']).to_string())
        };
        Ok(About {
            cmdline: text(r, CMDLINE)?,
            os_release: text(r, OSREL)?,
        })
    }

    /// os-release's `key`, unquoted.
    pub fn os_release_value(&self, key: &str) -> Option<String> {
        os_release_value(&self.os_release, key)
    }
}

/// An os-release file's `key` (`KEY=value`, `KEY="value"` or `KEY='value'`), its quotes removed.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            let mut out = String::with_capacity(unquoted.len());
            let mut chars = unquoted.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next().unwrap_or(c) } else { c });
            }
            out
        })
    })
}

/// os-release text: `KEY="value"` lines, with `"`, `\`, `$` and `` ` `` escaped as os-release(5) asks.
pub fn os_release_line(key: &str, value: &str) -> String {
    let mut v = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            v.push('\\');
        }
        v.push(c);
    }
    format!("{key}=\"{v}\"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nID=debian\nPRETTY_NAME='x y'\nIMAGE_VERSION=\"a\\\"b\"\n";
        assert_eq!(
            os_release_value(text, "NAME").as_deref(),
            Some("Debian GNU/Linux")
        );
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_value(text, "PRETTY_NAME").as_deref(), Some("x y"));
        assert_eq!(
            os_release_value(text, "IMAGE_VERSION").as_deref(),
            Some("a\"b")
        );
        assert_eq!(os_release_value(text, "VERSION"), None);
        let line = os_release_line("PRETTY_NAME", "edge \"1.0\" $x");
        assert_eq!(line, "PRETTY_NAME=\"edge \\\"1.0\\\" \\$x\"\n");
        assert_eq!(
            os_release_value(&line, "PRETTY_NAME").as_deref(),
            Some("edge \"1.0\" $x")
        );
    }

    #[test]
    fn garbage_is_not_a_pe() {
        for bytes in [&b""[..], b"MZ", &[0u8; 4096][..]] {
            assert!(parse_sections(bytes).is_err());
        }
    }
}
