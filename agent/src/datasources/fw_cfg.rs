//! QEMU fw_cfg (source 2): `{fw_cfg_dir}/by_name/opt/cairn/instance.toml/raw`.
//!
//! QEMU passes the file with `-fw_cfg name=opt/cairn/instance.toml,file=instance.toml`; the kernel's
//! `qemu_fw_cfg` driver shows each entry as a folder under `by_name/` holding `raw` (the bytes), `size`, `key`
//! and `name`. The source is present when the entry's folder exists; then `raw` must be readable.
//!
//! When `fw_cfg_dir` does not exist at all, the driver may simply not be loaded: [`Config::load_module`], if
//! set, is called once with [`FW_CFG_MODULE`] and the folder is looked at again. A failing hook (no such module,
//! no `modprobe`) means there is no fw_cfg to read; the hook reports its own failure if it wants to. Nothing is
//! loaded when the hook is `None` ([`Config::for_root`]).

use super::{
    Config, DatasourceError, FW_CFG_MODULE, FW_CFG_NAME, Found, SourceKind, read_required,
};

pub(super) fn name() -> String {
    format!("fw_cfg {FW_CFG_NAME}")
}

pub(super) fn detect(cfg: &Config) -> Result<Option<Found>, DatasourceError> {
    let name = name();
    if !exists(cfg, &name)? {
        let Some(load) = cfg.load_module else {
            return Ok(None);
        };
        if load(FW_CFG_MODULE).is_err() || !exists(cfg, &name)? {
            return Ok(None);
        }
    }
    let entry = cfg.fw_cfg_dir.join("by_name").join(FW_CFG_NAME);
    if super::absent(&entry, &name)? {
        return Ok(None);
    }
    let text = read_required(&entry.join("raw"), &name)?;
    Ok(Some(Found {
        source: SourceKind::FwCfg,
        name,
        text,
    }))
}

/// Whether the fw_cfg folder exists.
fn exists(cfg: &Config, name: &str) -> Result<bool, DatasourceError> {
    super::absent(&cfg.fw_cfg_dir, name).map(|absent| !absent)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::TempDir;
    use super::*;
    use std::cell::Cell;
    use std::fs;

    fn entry(root: &std::path::Path) -> std::path::PathBuf {
        root.join("by_name/opt/cairn/instance.toml")
    }

    fn config(dir: &std::path::Path) -> Config {
        Config {
            fw_cfg_dir: dir.join("fw_cfg"),
            ..Config::for_root(dir)
        }
    }

    #[test]
    fn present_absent_and_broken() {
        let tmp = TempDir::new();
        let cfg = config(tmp.path());
        // No fw_cfg at all, then fw_cfg without our entry.
        assert_eq!(detect(&cfg).unwrap(), None);
        fs::create_dir_all(cfg.fw_cfg_dir.join("by_name/etc")).unwrap();
        assert_eq!(detect(&cfg).unwrap(), None);

        let e = entry(&cfg.fw_cfg_dir);
        fs::create_dir_all(&e).unwrap();
        fs::write(e.join("raw"), "[system]\nhostname = \"vm\"\n").unwrap();
        let found = detect(&cfg).unwrap().unwrap();
        assert_eq!(found.source, SourceKind::FwCfg);
        assert_eq!(found.name, "fw_cfg opt/cairn/instance.toml");
        assert_eq!(found.text, "[system]\nhostname = \"vm\"\n");

        // Invalid UTF-8.
        fs::write(e.join("raw"), b"a = \"\xC3\x28\"").unwrap();
        let err = detect(&cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fw_cfg opt/cairn/instance.toml: not UTF-8 text (invalid byte at offset 5, line 1, column 6)"
        );

        // Unreadable: a directory where the file should be.
        fs::remove_file(e.join("raw")).unwrap();
        fs::create_dir(e.join("raw")).unwrap();
        let err = detect(&cfg).unwrap_err();
        assert_eq!(err.source, "fw_cfg opt/cairn/instance.toml");
        assert!(
            err.message.ends_with("/raw: a directory, not a file"),
            "{err}"
        );

        // The entry without its raw file.
        fs::remove_dir(e.join("raw")).unwrap();
        let err = detect(&cfg).unwrap_err();
        assert!(err.message.ends_with("/raw: missing"), "{err}");
    }

    #[test]
    fn loads_the_module_only_through_the_hook() {
        thread_local! {
            static CALLS: Cell<u32> = const { Cell::new(0) };
        }
        fn counting_fails(name: &str) -> Result<(), String> {
            assert_eq!(name, "qemu_fw_cfg");
            CALLS.with(|c| c.set(c.get() + 1));
            Err("modprobe: FATAL: Module qemu_fw_cfg not found".to_string())
        }
        fn counting_ok(_: &str) -> Result<(), String> {
            CALLS.with(|c| c.set(c.get() + 1));
            Ok(())
        }
        let tmp = TempDir::new();
        let mut cfg = config(tmp.path());
        assert_eq!(detect(&cfg).unwrap(), None);
        assert_eq!(CALLS.with(Cell::get), 0);

        cfg.load_module = Some(counting_fails);
        assert_eq!(detect(&cfg).unwrap(), None);
        assert_eq!(CALLS.with(Cell::get), 1);
        cfg.load_module = Some(counting_ok);
        assert_eq!(detect(&cfg).unwrap(), None);
        assert_eq!(CALLS.with(Cell::get), 2);

        // Present already: the hook is not called.
        let e = entry(&cfg.fw_cfg_dir);
        fs::create_dir_all(&e).unwrap();
        fs::write(e.join("raw"), "").unwrap();
        assert_eq!(detect(&cfg).unwrap().map(|f| f.text), Some(String::new()));
        assert_eq!(CALLS.with(Cell::get), 2);
    }
}
