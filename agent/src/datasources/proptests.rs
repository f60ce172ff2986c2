//! Property tests of how every source's bytes become text: UTF-8 after an optional byte order mark, gzip
//! refused, and an error that points at exactly the first invalid byte; the same through the local files
//! (fw_cfg's `raw`, the ESP's file).

use std::fs;

use proptest::prelude::*;

use super::test_support::TempDir;
use super::*;
use crate::proptest_support::config;

/// Bytes that are mostly UTF-8 text (several lines, multi-byte characters) with invalid pieces now and then:
/// stray continuation bytes, cut or overlong sequences, surrogates, bytes that never appear in UTF-8.
fn mostly_text() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => "[a-z =\"\\n\\r\\t]{0,12}".prop_map(String::into_bytes),
        2 => ".{0,4}".prop_map(String::into_bytes),
        1 => prop_oneof![
            (0x80..=0xBFu8).prop_map(|b| vec![b]),
            (0xC2..=0xF4u8).prop_map(|b| vec![b]),
            Just(vec![0xE2, 0x82]),
            Just(vec![0xC0, 0xAF]),
            Just(vec![0xED, 0xA0, 0x80]),
            Just(vec![0xF8]),
            Just(vec![0xFF]),
        ],
    ];
    let bom = prop_oneof![Just(Vec::new()), Just(b"\xEF\xBB\xBF".to_vec())];
    let text = (bom, prop::collection::vec(piece, 0..10)).prop_map(|(bom, pieces)| {
        let mut out = bom;
        out.extend(pieces.concat());
        out
    });
    prop_oneof![4 => text, 1 => prop::collection::vec(any::<u8>(), 0..40)]
}

/// Where the first invalid byte of `bytes` is, found without `Utf8Error`: the longest valid prefix.
fn first_invalid(bytes: &[u8]) -> usize {
    (0..=bytes.len())
        .rev()
        .find(|&n| std::str::from_utf8(&bytes[..n]).is_ok())
        .unwrap_or(0)
}

/// What `to_text` must answer for `bytes`, from the rules alone.
fn expected(bytes: &[u8], source: &str) -> Result<String, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(format!(
            "{source}: gzip-compressed data: instance data must be plain TOML text"
        ));
    }
    let (skipped, rest) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (3, rest),
        None => (0, bytes),
    };
    match std::str::from_utf8(rest) {
        Ok(text) => Ok(text.to_string()),
        Err(_) => {
            let at = first_invalid(rest);
            let before = std::str::from_utf8(&rest[..at]).unwrap();
            let line = before.split('\n').count();
            let column = before.split('\n').next_back().unwrap_or("").chars().count() + 1;
            Err(format!(
                "{source}: not UTF-8 text (invalid byte at offset {}, line {line}, column {column})",
                at + skipped
            ))
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn text_is_utf8_and_errors_point_at_the_first_invalid_byte(bytes in mostly_text()) {
        let got = to_text(bytes.clone(), "src").map_err(|e| e.to_string());
        prop_assert_eq!(got, expected(&bytes, "src"));
    }

    #[test]
    fn gzip_is_refused(rest in prop::collection::vec(any::<u8>(), 0..20)) {
        let mut bytes = vec![0x1f, 0x8b];
        bytes.extend(rest);
        let e = to_text(bytes, "src").unwrap_err();
        prop_assert!(e.message.contains("gzip-compressed"), "{e}");
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// fw_cfg's `raw` and the ESP's file: whatever bytes they hold, the source's answer is that of `to_text`,
    /// under the source's name.
    #[test]
    fn local_files_read_as_to_text(bytes in mostly_text()) {
        let tmp = TempDir::new();
        let fw_cfg = tmp.path().join("fw_cfg");
        let entry = fw_cfg.join("by_name").join(FW_CFG_NAME);
        fs::create_dir_all(&entry).unwrap();
        fs::write(entry.join("raw"), &bytes).unwrap();
        let esp = tmp.path().join("esp");
        fs::create_dir_all(esp.join("cairn")).unwrap();
        fs::write(esp.join(ESP_FILE), &bytes).unwrap();
        let cfg = Config {
            fw_cfg_dir: fw_cfg,
            esp_dir: Some(esp.clone()),
            ..Config::for_root(tmp.path())
        };

        let name = fw_cfg::name();
        let got = fw_cfg::detect(&cfg).map(|f| f.unwrap().text).map_err(|e| e.to_string());
        prop_assert_eq!(got, expected(&bytes, &name));

        let path = esp.join(ESP_FILE).display().to_string();
        let got = esp::detect(&cfg).map(|f| f.unwrap().text).map_err(|e| e.to_string());
        prop_assert_eq!(got, expected(&bytes, &path));
    }
}
