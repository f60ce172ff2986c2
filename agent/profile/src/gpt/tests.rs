use std::io::Cursor;

use proptest::prelude::*;

use super::fixture::*;
use super::*;

const ROOT: [u8; 16] = [1; 16];
const DATA: [u8; 16] = [2; 16];

#[test]
fn mixed_endian_guids() {
    // The ESP type as GPT stores it on disk.
    let b = [
        0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9,
        0x3B,
    ];
    assert_eq!(guid_text(&b), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
}

#[test]
fn crc32_is_ieee() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn reads_a_valid_table_at_both_block_sizes() {
    for block in [512u64, 4096] {
        let d = disk(
            block,
            100,
            &[
                (ROOT, [9; 16], 10, 20, "root-a"),
                (DATA, [8; 16], 21, 40, "var"),
            ],
        );
        let t = Table::read(&mut Cursor::new(d), block).unwrap();
        assert_eq!(t.parts.len(), 2);
        assert_eq!(t.parts[0].name, "root-a");
        assert_eq!(t.parts[1].number, 2);
        assert_eq!(
            (t.parts[1].first_lba, t.parts[1].last_lba),
            (21, 40),
            "{block}"
        );
        assert_eq!(t.parts[1].unique_guid, [8; 16]);
    }
}

#[test]
fn a_table_read_with_the_wrong_block_size_is_refused() {
    let d = disk(4096, 100, &[(ROOT, [9; 16], 10, 20, "root-a")]);
    assert!(matches!(
        Table::read(&mut Cursor::new(d), 512),
        Err(GptError::NoSignature)
    ));
}

/// A valid header's block with `change` applied to its fields, re-encoded (so its CRC32 is right).
fn changed(change: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut h = header(512, 128, 128, 100);
    change(&mut h);
    h.encode()
}

#[test]
fn each_header_fault_is_its_own_error() {
    let e = |b: &[u8]| Header::parse(b).unwrap_err();
    assert!(matches!(e(&[0u8; 91]), GptError::Short(91)));
    let mut b = changed(|_| {});
    b[0] = b'X';
    assert!(matches!(e(&b), GptError::NoSignature));
    let mut b = changed(|_| {});
    b[12..16].copy_from_slice(&91u32.to_le_bytes());
    assert!(matches!(e(&b), GptError::HeaderSize { size: 91, .. }));
    let mut b = changed(|_| {});
    b[12..16].copy_from_slice(&513u32.to_le_bytes());
    assert!(matches!(
        e(&b),
        GptError::HeaderSize {
            size: 513,
            block: 512
        }
    ));
    let mut b = changed(|_| {});
    b[40] ^= 1;
    assert!(matches!(e(&b), GptError::HeaderCrc { .. }));
    // Bytes past the header size are not covered by the CRC32.
    let mut b = changed(|_| {});
    b[100] ^= 1;
    assert!(Header::parse(&b).is_ok());
    assert!(matches!(
        e(&changed(|h| h.current_lba = 99)),
        GptError::NotPrimary(99)
    ));
    for size in [0, 64, 200, 384, 8192] {
        assert!(
            matches!(e(&changed(|h| h.entry_size = size)), GptError::EntrySize(s) if s == size),
            "{size}"
        );
    }
    for count in [0, 1025, u32::MAX] {
        assert!(
            matches!(e(&changed(|h| h.entry_count = count)), GptError::EntryCount(c) if c == count),
            "{count}"
        );
    }
    assert!(matches!(
        e(&changed(|h| {
            h.entry_count = 1024;
            h.entry_size = 4096;
        })),
        GptError::EntriesTooBig(_)
    ));
    for lba in [0, 1] {
        assert!(matches!(
            e(&changed(|h| h.entries_lba = lba)),
            GptError::EntriesLba(l) if l == lba
        ));
    }
}

#[test]
fn each_entries_fault_is_its_own_error() {
    let mut h = header(512, 4, 128, 100);
    let good = entries(&[(ROOT, [9; 16], 10, 20, "a")], 4, 128);
    h.entries_crc = crc32(&good);
    assert_eq!(h.parse_entries(&good).unwrap().len(), 1);
    assert!(matches!(
        h.parse_entries(&good[..511]),
        Err(GptError::EntriesLength {
            got: 511,
            want: 512
        })
    ));
    let mut bad = good.clone();
    bad[40] ^= 1;
    assert!(matches!(
        h.parse_entries(&bad),
        Err(GptError::EntriesCrc { .. })
    ));
    let backwards = entries(&[(ROOT, [9; 16], 30, 20, "a")], 4, 128);
    h.entries_crc = crc32(&backwards);
    assert!(matches!(
        h.parse_entries(&backwards),
        Err(GptError::Extent {
            number: 1,
            first: 30,
            last: 20
        })
    ));
}

#[test]
fn block_sizes_are_checked() {
    for bad in [0u64, 511, 513, 1000, 131072, u64::MAX] {
        assert!(matches!(check_block_size(bad), Err(GptError::BlockSize(b)) if b == bad));
        assert!(Table::read(&mut Cursor::new(vec![0u8; 4096]), bad).is_err());
    }
    assert_eq!(check_block_size(4096).unwrap(), 4096);
}

#[test]
fn entries_past_the_disk_are_a_read_error() {
    let mut d = disk(512, 100, &[]);
    d.truncate(2 * 512 + 100);
    assert!(matches!(
        Table::read(&mut Cursor::new(d), 512),
        Err(GptError::Io(_))
    ));
}

#[test]
fn moving_a_last_lba_keeps_the_table_valid() {
    let d = disk(
        512,
        100,
        &[(ROOT, [9; 16], 10, 20, "a"), (DATA, [8; 16], 21, 40, "b")],
    );
    let mut t = Table::read(&mut Cursor::new(d), 512).unwrap();
    t.set_last_lba(2, 60).unwrap();
    let parts = t.header.parse_entries(&t.entries).unwrap();
    assert_eq!(parts[1].last_lba, 60);
    assert_eq!(parts, t.parts);
    assert!(matches!(
        t.set_last_lba(3, 60),
        Err(GptError::NoPartition(3))
    ));
    assert!(matches!(t.part(0), Err(GptError::NoPartition(0))));
}

#[test]
fn guid_text_and_bytes_are_inverse() {
    let text = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    let b = guid_bytes(text).unwrap();
    assert_eq!(guid_text(&b), text);
    assert_eq!(guid_bytes(&text.to_lowercase()), Some(b));
    for bad in [
        "",
        "C12A7328F81F11D2BA4B00A0C93EC93B",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
        "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    ] {
        assert_eq!(guid_bytes(bad), None, "{bad}");
    }
}

/// A slot renamed and given its new root's GUID: both copies rewritten, the primary reads back as changed and the
/// backup (at the disk's last block, its entries before it) holds the same array with a valid CRC.
#[test]
fn a_new_identity_is_written_to_both_copies() {
    for block in [512u64, 4096] {
        let blocks = 200;
        let d = disk(
            block,
            blocks,
            &[
                (ROOT, [9; 16], 40, 60, "root-a"),
                (ROOT, [8; 16], 61, 80, "_empty"),
            ],
        );
        let mut t = Table::read(&mut Cursor::new(d.clone()), block).unwrap();
        t.set_identity(2, [5; 16], "root-b").unwrap();
        assert!(matches!(
            t.set_identity(2, [5; 16], &"x".repeat(37)),
            Err(GptError::Name(_))
        ));
        assert!(matches!(
            t.set_identity(2, [5; 16], "a\0b"),
            Err(GptError::Name(_))
        ));
        assert!(matches!(
            t.set_identity(3, [5; 16], "x"),
            Err(GptError::NoPartition(3))
        ));
        let mut disk_bytes = Cursor::new(d);
        t.write(&mut disk_bytes, block).unwrap();
        let d = disk_bytes.into_inner();
        assert_eq!(
            d.len() as u64,
            block * blocks,
            "nothing written past the disk"
        );
        let back = Table::read(&mut Cursor::new(d.clone()), block).unwrap();
        assert_eq!(back.parts[1].name, "root-b");
        assert_eq!(back.parts[1].unique_guid, [5; 16]);
        assert_eq!(back.parts[0], t.parts[0]);
        let b = block as usize;
        let backup = &d[(blocks as usize - 1) * b..];
        assert_eq!(&backup[..8], SIGNATURE);
        assert_eq!(u64_at(backup, 24), blocks - 1, "the backup's own LBA");
        assert_eq!(u64_at(backup, 32), 1, "the backup points at the primary");
        let entries_lba = u64_at(backup, 72) as usize;
        assert_eq!(
            entries_lba,
            blocks as usize - 1 - t.header.entries_blocks(block) as usize
        );
        let entries = &d[entries_lba * b..entries_lba * b + t.entries.len()];
        assert_eq!(entries, &t.entries[..]);
        assert_eq!(u32_at(backup, 88), crc32(entries));
        assert_eq!(u32_at(backup, 16), header_crc(&backup[..92]));
    }
}

prop_compose! {
    fn valid_header()(
        block in prop::sample::select(vec![512u64, 4096]),
        header_size in 92u32..=512,
        backup_lba: u64,
        first_usable: u64,
        last_usable: u64,
        disk_guid: [u8; 16],
        entries_lba in 2u64..u64::MAX,
        size_shift in 0u32..4,
        entry_count in 1u32..=256,
        entries_crc: u32,
        reserved: Vec<u8>,
    ) -> Header {
        let mut block = vec![0u8; block as usize];
        // Reserved bytes past the header survive as they are.
        for (b, r) in block[header_size as usize..].iter_mut().zip(reserved) {
            *b = r;
        }
        Header {
            header_size,
            current_lba: 1,
            backup_lba,
            first_usable,
            last_usable,
            disk_guid,
            entries_lba,
            entry_count,
            entry_size: 128 << size_shift,
            entries_crc,
            block,
        }
    }
}

proptest! {
    #![proptest_config(crate::proptest_support::config(256))]

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200),
                                            entries in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(h) = Header::parse(&bytes) {
            let _ = h.parse_entries(&entries);
        }
    }

    #[test]
    fn reading_an_arbitrary_disk_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..20000),
                                              block in prop::sample::select(vec![0u64, 512, 4096, 3, u64::MAX])) {
        let _ = Table::read(&mut Cursor::new(bytes), block);
    }

    /// Headers whose CRC32 is right but whose fields are anything: the deeper checks never panic either.
    #[test]
    fn arbitrary_fields_never_panic(header_size: u32, current_lba in prop::sample::select(vec![1u64, 0, u64::MAX]),
                                    entries_lba: u64, entry_count: u32, entry_size: u32, entries_crc: u32,
                                    tail in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut h = header(512, 128, 128, 100);
        h.header_size = header_size.min(512);
        h.current_lba = current_lba;
        h.entries_lba = entries_lba;
        h.entry_count = entry_count;
        h.entry_size = entry_size;
        h.entries_crc = entries_crc;
        let mut d = vec![0u8; 512];
        d.extend(h.encode());
        d.extend(tail);
        let _ = Table::read(&mut Cursor::new(d), 512);
    }

    #[test]
    fn a_valid_header_round_trips(h in valid_header()) {
        let block = h.encode();
        let parsed = Header::parse(&block).unwrap();
        prop_assert_eq!(parsed.encode(), block.clone());
        prop_assert_eq!(Header { block, ..h }, parsed);
    }
}
