//! The EFI system partition (source 3): `{esp_dir}/cairn/instance.toml`.
//!
//! An edge device flashed with `dd` gets its identity by copying one file onto its ESP. The ESP's mount folder
//! comes from the configuration ([`Config::live`] looks for a mount point at `/efi`, `/boot/efi`, `/boot`;
//! [`Config::for_root`] uses `ROOT/efi` or `ROOT/boot/efi`); without one, this source is absent. The file's
//! path is the source's name.

use super::{Config, DatasourceError, ESP_FILE, Found, SourceKind, read_local};

pub(super) fn detect(cfg: &Config) -> Result<Option<Found>, DatasourceError> {
    let Some(dir) = &cfg.esp_dir else {
        return Ok(None);
    };
    let path = dir.join(ESP_FILE);
    let name = path.display().to_string();
    Ok(read_local(&path, &name)?.map(|text| Found {
        source: SourceKind::Esp,
        name,
        text,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::TempDir;
    use super::*;
    use std::fs;

    #[test]
    fn present_absent_and_broken() {
        let tmp = TempDir::new();
        let esp = tmp.path().join("esp");
        let mut cfg = Config::for_root(tmp.path());
        assert_eq!(detect(&cfg).unwrap(), None);
        cfg.esp_dir = Some(esp.clone());
        // The mount folder missing, empty, with a `cairn` file instead of a folder.
        assert_eq!(detect(&cfg).unwrap(), None);
        fs::create_dir_all(&esp).unwrap();
        assert_eq!(detect(&cfg).unwrap(), None);
        fs::write(esp.join("cairn"), "").unwrap();
        assert_eq!(detect(&cfg).unwrap(), None);
        fs::remove_file(esp.join("cairn")).unwrap();

        fs::create_dir_all(esp.join("cairn")).unwrap();
        fs::write(
            esp.join("cairn/instance.toml"),
            "\u{feff}[system]\r\nhostname = \"edge-7\"\r\n",
        )
        .unwrap();
        let found = detect(&cfg).unwrap().unwrap();
        let path = esp.join("cairn/instance.toml").display().to_string();
        assert_eq!(
            found,
            Found {
                source: SourceKind::Esp,
                name: path.clone(),
                text: "[system]\r\nhostname = \"edge-7\"\r\n".to_string(),
            }
        );

        // Not UTF-8: the file's name and where the first invalid byte is.
        fs::write(
            esp.join("cairn/instance.toml"),
            b"[system]\r\nhostname = \"\xFFedge\"\r\n",
        )
        .unwrap();
        let err = detect(&cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{path}: not UTF-8 text (invalid byte at offset 22, line 2, column 13)")
        );

        fs::remove_file(esp.join("cairn/instance.toml")).unwrap();
        fs::create_dir(esp.join("cairn/instance.toml")).unwrap();
        let err = detect(&cfg).unwrap_err();
        assert_eq!(err.to_string(), format!("{path}: a directory, not a file"));
    }
}
