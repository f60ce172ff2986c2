//! Assembling a unified kernel image from the base rock's systemd-stub: the stub's PE with cairn's sections
//! appended, laid out as systemd's ukify lays them out (each section's data at the next FileAlignment boundary,
//! its address at the next SectionAlignment boundary after the last one, `.linux` last and marked code). Written
//! here rather than run through ukify: bookworm has no ukify, and the job is a few header fields on a PE the
//! `object` crate parses; the result is deterministic, the same sections giving the same bytes.

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_DIRECTORY_ENTRY_SECURITY, IMAGE_SCN_CNT_CODE, IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("systemd-stub ({path}) is not a PE32+ image: {reason}")]
    NotPe { path: String, reason: String },
    #[error("systemd-stub ({0}) is already signed: cairn signs the whole UKI")]
    SignedStub(String),
    #[error(
        "systemd-stub ({path}) has room for {room} more section headers, {needed} are needed"
    )]
    NoRoom {
        path: String,
        room: usize,
        needed: usize,
    },
    #[error("a UKI section is too big ({0} bytes)")]
    TooBig(usize),
}

/// One section to add.
pub struct Section<'a> {
    pub name: &'static str,
    pub data: &'a [u8],
}

const SECTION_HEADER: usize = 40;

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The stub at `stub_path` (for messages) with `sections` added, in order.
pub fn assemble(stub_path: &str, stub: &[u8], sections: &[Section<'_>]) -> Result<Vec<u8>, UkiError> {
    let not_pe = |reason: String| UkiError::NotPe {
        path: stub_path.into(),
        reason,
    };
    let file = PeFile64::parse(stub).map_err(|e| not_pe(e.to_string()))?;
    let nt = file.nt_headers();
    let opt = nt.optional_header();
    if file
        .data_directory(IMAGE_DIRECTORY_ENTRY_SECURITY)
        .is_some_and(|d| d.size.get(LE) != 0)
    {
        return Err(UkiError::SignedStub(stub_path.into()));
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
        return Err(UkiError::NoRoom {
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
            return Err(UkiError::TooBig(s.data.len()));
        }
        let va = align(next_va, section_align);
        let raw_offset = align(out.len() as u64, file_align);
        let raw_size = align(len, file_align);
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(s.data);
        out.resize((raw_offset + raw_size) as usize, 0);
        next_va = va + len;
        initialized += len;
        let characteristics = if s.name == cairn_profile::uki::LINUX {
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
    put(&mut out, opt_start + 8, &(init.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    let image = align(next_va, section_align);
    if image > u64::from(u32::MAX) {
        return Err(UkiError::TooBig(image as usize));
    }
    put(&mut out, opt_start + 56, &(image as u32).to_le_bytes());
    put(&mut out, opt_start + 64, &0u32.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cairn_profile::uki;

    /// A minimal PE32+ EFI application, as a stub stands in for one: headers, one `.text` section.
    pub(crate) fn tiny_stub() -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        f[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        f[coff + 18..coff + 20].copy_from_slice(&0x206u16.to_le_bytes());
        let opt = coff + 20;
        f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        f[opt + 16..opt + 20].copy_from_slice(&0x1000u32.to_le_bytes());
        f[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        f[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes());
        f[opt + 56..opt + 60].copy_from_slice(&0x2000u32.to_le_bytes());
        f[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
        f[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes());
        f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let sec = opt + 240;
        f[sec..sec + 5].copy_from_slice(b".text");
        f[sec + 8..sec + 12].copy_from_slice(&0x10u32.to_le_bytes());
        f[sec + 12..sec + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        f[sec + 16..sec + 20].copy_from_slice(&0x200u32.to_le_bytes());
        f[sec + 20..sec + 24].copy_from_slice(&0x400u32.to_le_bytes());
        f[sec + 36..sec + 40].copy_from_slice(&0x60000020u32.to_le_bytes());
        f.resize(0x600, 0xc3);
        f
    }

    #[test]
    fn sections_are_appended_aligned_and_read_back() {
        let stub = tiny_stub();
        let kernel = vec![7u8; 5000];
        let out = assemble(
            "stub",
            &stub,
            &[
                Section {
                    name: uki::OSREL,
                    data: b"PRETTY_NAME=\"edge 1.0\"\n",
                },
                Section {
                    name: uki::CMDLINE,
                    data: b"console=ttyS0 cairn.verity=ab",
                },
                Section {
                    name: uki::LINUX,
                    data: &kernel,
                },
            ],
        )
        .unwrap();
        let mut r = std::io::Cursor::new(&out);
        let table = uki::sections(&mut r).unwrap();
        let names: Vec<&str> = table.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".cmdline", ".linux"]);
        for w in table.windows(2) {
            assert!(w[1].virtual_address >= w[0].virtual_address + w[0].size);
            assert_eq!(w[1].virtual_address % 0x1000, 0);
            assert_eq!(w[1].raw_offset % 0x200, 0);
        }
        let about = uki::About::read(&mut r).unwrap();
        assert_eq!(about.cmdline, "console=ttyS0 cairn.verity=ab");
        assert_eq!(
            about.os_release_value("PRETTY_NAME").as_deref(),
            Some("edge 1.0")
        );
        let linux = uki::read_section(&mut r, &table, uki::LINUX, 1 << 20).unwrap();
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
                    Section {
                        name: uki::OSREL,
                        data: b"PRETTY_NAME=\"edge 1.0\"\n"
                    },
                    Section {
                        name: uki::CMDLINE,
                        data: b"console=ttyS0 cairn.verity=ab"
                    },
                    Section {
                        name: uki::LINUX,
                        data: &kernel
                    },
                ]
            )
            .unwrap()
        );
    }

    #[test]
    fn a_stub_without_room_is_refused() {
        let stub = tiny_stub();
        let many: Vec<Section> = (0..20)
            .map(|_| Section {
                name: ".x",
                data: b"x",
            })
            .collect();
        assert!(matches!(
            assemble("stub", &stub, &many),
            Err(UkiError::NoRoom { needed: 20, .. })
        ));
        assert!(matches!(
            assemble("stub", b"not a pe", &[]),
            Err(UkiError::NotPe { .. })
        ));
    }
}
