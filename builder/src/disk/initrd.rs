//! cairn's initrd: a newc cpio holding the static agent as `/init` and exactly the kernel modules the boot needs,
//! resolved with their dependencies from the root's `modules.dep`, plus `/etc/cairn/modules` (the load order,
//! dependencies first). Deterministic: entries sorted, inode numbers in order, every time the build epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cairn_profile::contract;

use crate::assemble::tree::{Node, Tree};
use crate::filesystem::{FilesystemError, read_file};

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("no kernel modules in the root (/usr/lib/modules)")]
    NoModules,
    #[error("no modules.dep for kernel {0}")]
    NoModulesDep(String),
    #[error(
        "kernel module {0} is neither a module nor built in: the kernel cannot boot a verified root"
    )]
    Essential(String),
    #[error("module {0} is listed in modules.dep but missing")]
    Missing(String),
    #[error(transparent)]
    Read(#[from] FilesystemError),
}

/// What the initrd loads: block devices, device-mapper verity, the root and data filesystems, the ESP's FAT, the
/// /etc overlay and QEMU's fw_cfg (instance data). Built-in ones are simply not found as modules.
pub const WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "dm_mod",
    "dm_bufio",
    "dm_verity",
    "squashfs",
    "erofs",
    "overlay",
    "ext4",
    "crc32c_generic",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "qemu_fw_cfg",
];

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

/// The kernel version whose modules are in the tree (`lib/modules/VERSION/modules.dep`), the highest if several.
pub fn kernel_version(tree: &Tree) -> Option<String> {
    let dir = tree
        .lookup(b"usr/lib/modules")
        .or_else(|| tree.lookup(b"lib/modules"))?;
    match tree.node(dir) {
        Node::Dir { children, .. } => children
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .max(),
        _ => None,
    }
}

/// The module files to load, in order (dependencies first), as paths relative to `lib/modules/VERSION/`.
pub fn resolve(
    modules_dep: &str,
    builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>, InitrdError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            module_name(module),
            (
                module.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            ),
        );
    }
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        let name = module_name(path);
        if !seen.insert(name.clone()) {
            return;
        }
        if let Some((_, d)) = deps.get(&name) {
            for dep in d {
                visit(dep, deps, seen, order);
            }
        }
        order.push(
            deps.get(&name)
                .map(|(p, _)| p.clone())
                .unwrap_or_else(|| path.to_string()),
        );
    }
    for w in wanted {
        match deps.get(*w) {
            Some((path, _)) => {
                let path = path.clone();
                visit(&path, &deps, &mut seen, &mut order);
            }
            None if builtin.contains(*w) => {}
            // Not every kernel has every module (erofs, virtio_scsi...): absent and not built in is fine only for
            // those the boot can do without; the essential ones must be somewhere.
            None if ["dm_verity", "squashfs", "overlay"].contains(w) => {
                return Err(InitrdError::Essential(w.to_string()));
            }
            None => {}
        }
    }
    Ok(order)
}

/// A newc ("070701") cpio archive written deterministically.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    mtime: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            self.mtime,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// Builds the initrd from the assembled tree (modules) and the agent binary.
pub fn build(
    tree: &Tree,
    layer_tars: &[PathBuf],
    agent: &[u8],
    epoch: u64,
) -> Result<(Vec<u8>, Vec<String>), InitrdError> {
    let version = kernel_version(tree).ok_or(InitrdError::NoModules)?;
    let base = if tree.lookup(b"usr/lib/modules").is_some() {
        "usr/lib/modules"
    } else {
        "lib/modules"
    };
    let read = |rel: &str| read_file(tree, layer_tars, &format!("{base}/{version}/{rel}"));
    let dep = read("modules.dep")?.ok_or_else(|| InitrdError::NoModulesDep(version.clone()))?;
    let builtin = read("modules.builtin")?.unwrap_or_default();
    let order = resolve(
        &String::from_utf8_lossy(&dep),
        &String::from_utf8_lossy(&builtin),
        WANTED,
    )?;

    // Every file and the folders above it, sorted: a folder comes before what it holds.
    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    files.insert("init".into(), (0o100755, agent.to_vec()));
    let mut list = String::new();
    for m in &order {
        let bytes = read(m)?.ok_or_else(|| InitrdError::Missing(m.clone()))?;
        files.insert(format!("lib/modules/{version}/{m}"), (0o100644, bytes));
        list.push_str(&format!("/lib/modules/{version}/{m}\n"));
    }
    files.insert(
        contract::INITRD_MODULES_IN_ROOT.into(),
        (0o100644, list.into_bytes()),
    );
    let mut dirs = BTreeSet::new();
    for path in files.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(parent.to_string());
            p = parent;
        }
    }
    for d in ["dev", "proc", "sys", "run", "sysroot"] {
        dirs.insert(d.to_string());
    }
    let mut all: BTreeMap<String, (u32, Vec<u8>)> = dirs
        .into_iter()
        .map(|d| (d, (0o040755, Vec::new())))
        .collect();
    all.extend(files);
    let mut cpio = Cpio {
        out: Vec::new(),
        ino: 0,
        mtime: u32::try_from(epoch).unwrap_or(u32::MAX),
    };
    for (name, (mode, data)) in &all {
        cpio.entry(name, *mode, data);
    }
    cpio.entry("TRAILER!!!", 0, &[]);
    Ok((cpio.out, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dependencies_first_and_skips_builtins() {
        let dep = "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
                   kernel/drivers/md/dm-bufio.ko:\nkernel/drivers/md/dm-mod.ko:\nkernel/fs/squashfs/squashfs.ko:\n\
                   kernel/fs/overlayfs/overlay.ko:\nkernel/drivers/block/virtio_blk.ko:\n";
        let order = resolve(
            dep,
            "kernel/fs/ext4/ext4.ko\n",
            &[
                "virtio_blk",
                "dm_verity",
                "ext4",
                "squashfs",
                "overlay",
                "dm_mod",
            ],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-verity.ko",
                "kernel/fs/squashfs/squashfs.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
        let e = resolve("", "", &["dm_verity"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("dm_verity is neither a module nor built in")
        );
    }

    #[test]
    fn cpio_entries_are_aligned_newc() {
        let mut c = Cpio {
            out: Vec::new(),
            ino: 0,
            mtime: 7,
        };
        c.entry("init", 0o100755, b"abc");
        assert!(c.out.starts_with(b"070701"));
        assert_eq!(c.out.len() % 4, 0);
        assert_eq!(&c.out[110..115], b"init\0");
    }
}
