//! Unified kernel images (UAPI.5): one PE file per slot, systemd-stub with the kernel (`.linux`), cairn's initrd
//! (`.initrd`), the command line with the root hash (`.cmdline`), os-release (`.osrel`) and the kernel's release
//! (`.uname`) as sections. The builder makes them (and signs them for Secure Boot); the agent and the initrd read
//! a UKI's small sections here to learn which root it boots, seeking past the kernel and initrd rather than
//! reading tens of megabytes.
//!
//! The PE headers are parsed with the `object` crate; a UKI on the ESP is untrusted input (anything may have
//! written the ESP), so every size and offset is bounded.
//!
//! [`assemble`] makes one from the base rock's systemd-stub: the stub's PE with cairn's sections appended, laid
//! out as systemd's ukify lays them out (each section's data at the next FileAlignment boundary, its address at
//! the next SectionAlignment boundary after the last one, `.linux` last and marked code). Written here rather
//! than run through ukify: bookworm has no ukify, and the job is a few header fields on a PE that `object`
//! parses; the same sections give the same bytes.

use std::io::{self, Read, Seek, SeekFrom};

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_SCN_CNT_CODE, IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ, ImageDosHeader,
    ImageNtHeaders64,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};

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
        About::read_in(r, &table)
    }

    /// [`About::read`] with the section table already read.
    pub fn read_in<R: Read + Seek>(r: &mut R, table: &[Section]) -> Result<About, UkiError> {
        let text = |r: &mut R, name: &'static str| -> Result<String, UkiError> {
            let bytes = read_section(r, table, name, SMALL_SECTION_LIMIT)?;
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
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
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

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("systemd-stub ({path}) is not a PE32+ image: {reason}")]
    NotPe { path: String, reason: String },
    #[error("systemd-stub ({0}) is already signed: cairn signs the whole UKI")]
    SignedStub(String),
    #[error("systemd-stub ({path}) has room for {room} more section headers, {needed} are needed")]
    NoRoom {
        path: String,
        room: usize,
        needed: usize,
    },
    #[error("a UKI section is too big ({0} bytes)")]
    TooBig(usize),
}

/// One section to add.
pub struct NewSection<'a> {
    pub name: &'static str,
    pub data: &'a [u8],
}

const SECTION_HEADER: usize = 40;

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The stub at `stub_path` (for messages) with `sections` added, in order.
pub fn assemble(
    stub_path: &str,
    stub: &[u8],
    sections: &[NewSection<'_>],
) -> Result<Vec<u8>, AssembleError> {
    let not_pe = |reason: String| AssembleError::NotPe {
        path: stub_path.into(),
        reason,
    };
    let file = PeFile64::parse(stub).map_err(|e| not_pe(e.to_string()))?;
    let nt = file.nt_headers();
    let opt = nt.optional_header();
    if crate::authenticode::has_certificate_table(&file) {
        return Err(AssembleError::SignedStub(stub_path.into()));
    }
    let file_align = u64::from(opt.file_alignment());
    let section_align = u64::from(opt.section_alignment());
    if file_align == 0 || section_align == 0 {
        return Err(not_pe("zero alignment".into()));
    }
    let table = file.section_table();
    let existing: Vec<_> = table.iter().collect();
    // Where the header fields sit: the section table follows the optional header.
    let dos_lfanew = u64::from(file.dos_header().e_lfanew.get(LE));
    let coff = dos_lfanew + 4;
    let opt_start = coff + 20;
    let opt_size = u64::from(nt.file_header().size_of_optional_header.get(LE));
    let table_start = opt_start + opt_size;
    let table_end = table_start + (existing.len() * SECTION_HEADER) as u64;
    let first_data = existing
        .iter()
        .map(|s| u64::from(s.pointer_to_raw_data.get(LE)))
        .filter(|&p| p != 0)
        .min()
        .unwrap_or(u64::from(opt.size_of_headers()));
    let header_room = first_data.min(u64::from(opt.size_of_headers()));
    let room = (header_room.saturating_sub(table_end) / SECTION_HEADER as u64) as usize;
    if room < sections.len() {
        return Err(AssembleError::NoRoom {
            path: stub_path.into(),
            room,
            needed: sections.len(),
        });
    }
    // The stub up to the end of its last section's data (anything after, a symbol table, is left out).
    let data_end = existing
        .iter()
        .map(|s| u64::from(s.pointer_to_raw_data.get(LE)) + u64::from(s.size_of_raw_data.get(LE)))
        .max()
        .unwrap_or(header_room);
    let mut out = stub
        .get(..data_end as usize)
        .ok_or_else(|| not_pe("a section runs past the end of the file".into()))?
        .to_vec();
    let mut next_va = existing
        .iter()
        .map(|s| {
            u64::from(s.virtual_address.get(LE))
                + u64::from(s.virtual_size.get(LE).max(s.size_of_raw_data.get(LE)))
        })
        .max()
        .unwrap_or(0);
    let mut headers = Vec::with_capacity(sections.len() * SECTION_HEADER);
    let mut initialized = 0u64;
    for s in sections {
        let len = s.data.len() as u64;
        if len > u64::from(u32::MAX) / 2 {
            return Err(AssembleError::TooBig(s.data.len()));
        }
        let va = align(next_va, section_align);
        let raw_offset = align(out.len() as u64, file_align);
        let raw_size = align(len, file_align);
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(s.data);
        out.resize((raw_offset + raw_size) as usize, 0);
        next_va = va + len;
        initialized += len;
        let characteristics = if s.name == LINUX {
            IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ
        } else {
            IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
        };
        let mut h = [0u8; SECTION_HEADER];
        let name = s.name.as_bytes();
        h[..name.len().min(8)].copy_from_slice(&name[..name.len().min(8)]);
        h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(va as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(raw_size as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(raw_offset as u32).to_le_bytes());
        h[36..40].copy_from_slice(&characteristics.to_le_bytes());
        headers.extend_from_slice(&h);
    }
    let put = |out: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut out, table_end, &headers);
    let count = (existing.len() + sections.len()) as u16;
    put(&mut out, coff + 2, &count.to_le_bytes());
    // PE32+ optional header: SizeOfInitializedData at 8, SizeOfImage at 56, CheckSum at 64 (left 0, as ukify
    // leaves it: UEFI does not check it, and Authenticode skips it).
    let init = u64::from(opt.size_of_initialized_data()) + initialized;
    put(
        &mut out,
        opt_start + 8,
        &(init.min(u64::from(u32::MAX)) as u32).to_le_bytes(),
    );
    let image = align(next_va, section_align);
    if image > u64::from(u32::MAX) {
        return Err(AssembleError::TooBig(image as usize));
    }
    put(&mut out, opt_start + 56, &(image as u32).to_le_bytes());
    put(&mut out, opt_start + 64, &0u32.to_le_bytes());
    Ok(out)
}

/// PE files made in memory, for other crates' tests.
#[cfg(any(test, feature = "test-support"))]
pub mod fixture {
    /// A minimal PE32+ EFI application (x86-64): headers with room for more sections, one `.text` section of
    /// `ret`s at 0x1000. Enough for a UKI to be assembled from and signed, not to run.
    pub fn tiny_pe() -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        let mut put = |at: usize, bytes: &[u8]| f[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, b"MZ");
        put(0x3c, &0x80u32.to_le_bytes());
        put(0x80, b"PE\0\0");
        let coff = 0x84;
        put(coff, &0x8664u16.to_le_bytes()); // x86-64
        put(coff + 2, &1u16.to_le_bytes()); // one section
        put(coff + 16, &240u16.to_le_bytes()); // the PE32+ optional header's size
        put(coff + 18, &0x206u16.to_le_bytes());
        let opt = coff + 20;
        put(opt, &0x20bu16.to_le_bytes()); // PE32+
        put(opt + 16, &0x1000u32.to_le_bytes()); // entry point
        put(opt + 32, &0x1000u32.to_le_bytes()); // section alignment
        put(opt + 36, &0x200u32.to_le_bytes()); // file alignment
        put(opt + 56, &0x2000u32.to_le_bytes()); // size of image
        put(opt + 60, &0x400u32.to_le_bytes()); // size of headers
        put(opt + 68, &10u16.to_le_bytes()); // EFI application
        put(opt + 108, &16u32.to_le_bytes()); // data directories
        let sec = opt + 240;
        put(sec, b".text");
        put(sec + 8, &0x10u32.to_le_bytes());
        put(sec + 12, &0x1000u32.to_le_bytes());
        put(sec + 16, &0x200u32.to_le_bytes());
        put(sec + 20, &0x400u32.to_le_bytes());
        put(sec + 36, &0x60000020u32.to_le_bytes());
        f.resize(0x600, 0xc3);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let text =
            "NAME=\"Debian GNU/Linux\"\nID=debian\nPRETTY_NAME='x y'\nIMAGE_VERSION=\"a\\\"b\"\n";
        assert_eq!(
            os_release_value(text, "NAME").as_deref(),
            Some("Debian GNU/Linux")
        );
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("debian"));
        assert_eq!(
            os_release_value(text, "PRETTY_NAME").as_deref(),
            Some("x y")
        );
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

    #[test]
    fn sections_are_appended_aligned_and_read_back() {
        let stub = fixture::tiny_pe();
        let kernel = vec![7u8; 5000];
        let out = assemble(
            "stub",
            &stub,
            &[
                NewSection {
                    name: OSREL,
                    data: b"PRETTY_NAME=\"edge 1.0\"\n",
                },
                NewSection {
                    name: CMDLINE,
                    data: b"console=ttyS0 cairn.verity=ab",
                },
                NewSection {
                    name: LINUX,
                    data: &kernel,
                },
            ],
        )
        .unwrap();
        let mut r = std::io::Cursor::new(&out);
        let table = sections(&mut r).unwrap();
        let names: Vec<&str> = table.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".cmdline", ".linux"]);
        for w in table.windows(2) {
            assert!(w[1].virtual_address >= w[0].virtual_address + w[0].size);
            assert_eq!(w[1].virtual_address % 0x1000, 0);
            assert_eq!(w[1].raw_offset % 0x200, 0);
        }
        let about = About::read(&mut r).unwrap();
        assert_eq!(about.cmdline, "console=ttyS0 cairn.verity=ab");
        assert_eq!(
            about.os_release_value("PRETTY_NAME").as_deref(),
            Some("edge 1.0")
        );
        let linux = read_section(&mut r, &table, LINUX, 1 << 20).unwrap();
        assert_eq!(linux, kernel);
        // object agrees on the image's size.
        let pe = PeFile64::parse(&*out).unwrap();
        let opt = pe.nt_headers().optional_header();
        let last = table.last().unwrap();
        assert_eq!(
            opt.size_of_image(),
            (last.virtual_address + last.size).div_ceil(0x1000) * 0x1000
        );
        // The same inputs, the same bytes.
        assert_eq!(
            out,
            assemble(
                "stub",
                &stub,
                &[
                    NewSection {
                        name: OSREL,
                        data: b"PRETTY_NAME=\"edge 1.0\"\n"
                    },
                    NewSection {
                        name: CMDLINE,
                        data: b"console=ttyS0 cairn.verity=ab"
                    },
                    NewSection {
                        name: LINUX,
                        data: &kernel
                    },
                ]
            )
            .unwrap()
        );
    }

    #[test]
    fn a_stub_without_room_is_refused() {
        let stub = fixture::tiny_pe();
        let many: Vec<NewSection> = (0..20)
            .map(|_| NewSection {
                name: ".x",
                data: b"x",
            })
            .collect();
        assert!(matches!(
            assemble("stub", &stub, &many),
            Err(AssembleError::NoRoom { needed: 20, .. })
        ));
        assert!(matches!(
            assemble("stub", b"not a pe", &[]),
            Err(AssembleError::NotPe { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_support::config(256))]

        /// Whatever sits on the ESP, reading it never panics and never reads past its bound.
        #[test]
        fn arbitrary_bytes_never_panic(mut b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), pe: bool) {
            if pe && b.len() > 0x100 {
                // Often a plausible header, so the section table is reached.
                b[0..2].copy_from_slice(b"MZ");
                b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
                b[0x40..0x44].copy_from_slice(b"PE\0\0");
                b[0x58..0x5a].copy_from_slice(&0x20bu16.to_le_bytes());
            }
            let mut r = std::io::Cursor::new(&b);
            if let Ok(table) = sections(&mut r) {
                for s in &table {
                    let _ = read_section(&mut r, &table, CMDLINE, SMALL_SECTION_LIMIT);
                    proptest::prop_assert!(s.size <= s.raw_size);
                }
            }
            let _ = About::read(&mut r);
        }
    }
}
