//! Disk: the bootable, read-only, verified image.
//!
//! GPT with the Discoverable Partitions Specification's type GUIDs: an EFI system partition (systemd-boot, the
//! kernel, cairn's initrd, one loader entry carrying `cairn.verity=ROOTHASH`), the root (squashfs, read-only) and
//! its dm-verity hash partition, room for a second root and hash slot (A/B updates), and an ext4 data partition
//! for /var. Every GUID, the FAT volume id and the verity salt derive from the profile and its digests; every time
//! from the build epoch: the same inputs give the same image.

pub mod data;
pub mod esp;
pub mod gpt;
pub mod initrd;
pub mod root;
pub mod squashfs;
mod tools;
pub mod verity;

use std::path::{Path, PathBuf};

use cairn_profile::{Arch, Profile, contract};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::assemble::tree::{Data, Meta, New, Tree};
use crate::filesystem::{self, TarOptions, read_file};
use gpt::{ALIGN, Partition, Table, round_up};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiskError(pub String);

/// Identifiers derived from the build's inputs (UUIDv5-style: version and variant bits set).
#[derive(Debug, Clone)]
pub struct Ids {
    seed: [u8; 32],
}

impl Ids {
    /// From the profile's sha256 and every rock's manifest digest.
    pub fn new(profile_sha256: &str, digests: &[String]) -> Ids {
        let mut h = Sha256::new();
        h.update(b"cairn disk v1\0");
        h.update(profile_sha256.as_bytes());
        for d in digests {
            h.update(b"\0");
            h.update(d.as_bytes());
        }
        Ids {
            seed: h.finalize().into(),
        }
    }

    fn bytes(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(label.as_bytes());
        h.finalize().into()
    }

    pub fn uuid(&self, label: &str) -> [u8; 16] {
        let mut u = [0u8; 16];
        u.copy_from_slice(&self.bytes(label)[..16]);
        u[6] = (u[6] & 0x0f) | 0x50;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }

    pub fn uuid_string(&self, label: &str) -> String {
        format_uuid(&self.uuid(label))
    }

    pub fn salt(&self) -> [u8; 32] {
        self.bytes("verity salt")
    }

    pub fn volume_id(&self) -> u32 {
        let b = self.bytes("fat volume id");
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What a disk build reports.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub root_filesystem: &'static str,
    pub root_hash: String,
    pub verity_salt: String,
    pub kernel: String,
    pub kernel_cmdline: String,
    pub initrd_modules: Vec<String>,
    pub partition_table: Table,
    /// xattrs the root filesystem cannot hold, left out of it: (path, name).
    pub xattrs_not_in_root: Vec<(String, String)>,
}

pub const ESP_SIZE: u64 = 64 << 20;
pub const DATA_SIZE: u64 = 256 << 20;

/// Writes the raw disk image `out` from the assembled `tree` (rearranged here for a read-only root); temporary
/// pieces go to `work`.
/// What a disk is made of besides the tree.
pub struct DiskInputs<'a> {
    pub profile: &'a Profile,
    pub ids: &'a Ids,
    /// The static agent: the initrd's `/init`.
    pub agent: &'a Path,
    pub epoch: u64,
}

pub fn build_raw(
    tree: &mut Tree,
    tars: &[PathBuf],
    inputs: &DiskInputs<'_>,
    work: &Path,
    out: &Path,
) -> Result<DiskReport, DiskError> {
    let DiskInputs {
        profile,
        ids,
        agent,
        epoch,
    } = *inputs;
    let io = |p: &Path, e: std::io::Error| DiskError(format!("{}: {e}", p.display()));
    let fs_err = |e: filesystem::FilesystemError| DiskError(e.to_string());

    // What the boot needs, read before the tree is rearranged.
    let kernel_path = find_kernel(tree)
        .ok_or_else(|| DiskError("no kernel in the root (/boot/vmlinuz-*)".into()))?;
    let kernel = read_file(tree, tars, &kernel_path)
        .map_err(fs_err)?
        .unwrap_or_default();
    let (boot_efi, removable_name) = match profile.arch {
        Arch::Amd64 => (
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "BOOTX64.EFI",
        ),
        Arch::Arm64 => (
            "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
            "BOOTAA64.EFI",
        ),
    };
    let boot_loader = read_file(tree, tars, boot_efi).map_err(fs_err)?.ok_or_else(|| {
        DiskError(format!("/{boot_efi} is missing: the base rock must carry systemd-boot (Debian's systemd-boot-efi)"))
    })?;
    let agent_bytes = std::fs::read(agent).map_err(|e| io(agent, e))?;
    let (initrd, initrd_modules) = initrd::build(tree, tars, &agent_bytes, epoch)?;

    // The factory /var, as a tar inside the root.
    let factory = root::split_writable(tree).map_err(|e| DiskError(e.to_string()))?;
    let var_tar = work.join("var.tar");
    let file = std::fs::File::create(&var_tar).map_err(|e| io(&var_tar, e))?;
    let opts = TarOptions {
        epoch,
        drop_xattrs: &[],
    };
    let (written, _) =
        filesystem::write_tar(tree, factory, tars, opts, file, &var_tar).map_err(fs_err)?;
    tree.put(
        contract::FACTORY_VAR_IN_ROOT.as_bytes(),
        New::File(
            Meta::new(0o644, 0, 0),
            Data::Host {
                path: var_tar.clone(),
                size: written.size,
            },
        ),
    )
    .map_err(|e| DiskError(e.to_string()))?;

    // Root and its hash tree.
    let root_img = work.join("root.squashfs");
    let written = squashfs::make(tree, tars, epoch, &root_img)?;
    pad_to(&root_img, verity::BLOCK as u64)?;
    let verity_img = work.join("root.verity");
    let mut hash_out = std::io::BufWriter::new(
        std::fs::File::create(&verity_img).map_err(|e| io(&verity_img, e))?,
    );
    let v = verity::format(
        &root_img,
        &mut hash_out,
        ids.salt(),
        ids.uuid("verity superblock"),
    )
    .map_err(|e| DiskError(format!("verity: {e}")))?;
    std::io::Write::flush(&mut hash_out).map_err(|e| io(&verity_img, e))?;
    drop(hash_out);

    // The ESP.
    let mut cmdline: Vec<String> = profile.system.kernel_cmdline.clone();
    cmdline.push(format!("{}={}", contract::VERITY_KEY, v.root_hex()));
    let cmdline = cmdline.join(" ");
    let entry = format!(
        "title {} {}\nlinux /cairn/vmlinuz\ninitrd /cairn/initrd.img\noptions {cmdline}\n",
        profile.name, profile.version
    );
    let esp_files = vec![
        esp::EspFile {
            path: format!("EFI/BOOT/{removable_name}"),
            bytes: boot_loader.clone(),
        },
        esp::EspFile {
            path: format!(
                "EFI/systemd/{}",
                boot_efi.rsplit('/').next().unwrap_or(boot_efi)
            ),
            bytes: boot_loader,
        },
        esp::EspFile {
            path: "loader/loader.conf".into(),
            bytes: b"default cairn.conf\ntimeout 0\neditor no\n".to_vec(),
        },
        esp::EspFile {
            path: "loader/entries/cairn.conf".into(),
            bytes: entry.into_bytes(),
        },
        esp::EspFile {
            path: "cairn/vmlinuz".into(),
            bytes: kernel,
        },
        esp::EspFile {
            path: "cairn/initrd.img".into(),
            bytes: initrd,
        },
    ];
    let esp_img = work.join("esp.fat");
    let staging = work.join("esp");
    esp::make(
        &esp_img,
        ESP_SIZE,
        ids.volume_id(),
        &esp_files,
        epoch,
        &staging,
    )?;

    // /var.
    let data_img = work.join("var.ext4");
    data::make(&data_img, DATA_SIZE, ids, epoch)?;

    // The table. Root partition GUIDs derive from the root hash (the contract's DPS convention): the initrd finds
    // the slot by them. Slot B is left as free space the size of slot A.
    let types = contract::root_types(profile.arch);
    let root_len = std::fs::metadata(&root_img)
        .map_err(|e| io(&root_img, e))?
        .len();
    let root_slot = round_up(root_len + root_len / 4, 16 * ALIGN);
    let verity_slot = round_up(v.hash_size + v.hash_size / 4, ALIGN);
    let uuids = contract::root_uuids(&v.root_hash);
    let mut offset = ALIGN;
    let mut partitions = Vec::new();
    let mut add = |name: &str,
                   type_guid: &str,
                   uuid: String,
                   size: u64,
                   content: Option<PathBuf>,
                   offset: &mut u64| {
        partitions.push(Partition {
            name: name.into(),
            type_guid: type_guid.into(),
            uuid,
            offset: *offset,
            size,
            content,
        });
        *offset += size;
    };
    add(
        "esp",
        contract::ESP_TYPE,
        ids.uuid_string("esp"),
        ESP_SIZE,
        Some(esp_img),
        &mut offset,
    );
    add(
        "root-a",
        types.root,
        uuids.root,
        root_slot,
        Some(root_img),
        &mut offset,
    );
    add(
        "root-a-verity",
        types.verity,
        uuids.verity,
        verity_slot,
        Some(verity_img),
        &mut offset,
    );
    offset += root_slot + verity_slot;
    add(
        "var",
        contract::VAR_TYPE,
        ids.uuid_string("var"),
        DATA_SIZE,
        Some(data_img),
        &mut offset,
    );
    // The backup GPT takes the last 33 sectors: keep a whole MiB.
    let table = Table {
        disk_guid: ids.uuid_string("disk"),
        size: offset + ALIGN,
        partitions,
    };
    gpt::write(out, &table)?;

    let mut dropped = written.dropped_xattrs;
    dropped.sort();
    Ok(DiskReport {
        root_filesystem: "squashfs (zstd level 3)",
        root_hash: v.root_hex(),
        verity_salt: hex::encode(v.salt),
        kernel: format!("/{kernel_path}"),
        kernel_cmdline: cmdline,
        initrd_modules,
        partition_table: table,
        xattrs_not_in_root: dropped,
    })
}

/// `/boot/vmlinuz-VERSION`, the highest version if there are several.
fn find_kernel(tree: &Tree) -> Option<String> {
    let boot = tree.lookup(b"boot")?;
    match tree.node(boot) {
        crate::assemble::tree::Node::Dir { children, .. } => children
            .keys()
            .filter(|k| k.starts_with(b"vmlinuz-"))
            .max()
            .map(|k| format!("boot/{}", String::from_utf8_lossy(k))),
        _ => None,
    }
}

fn pad_to(path: &Path, block: u64) -> Result<(), DiskError> {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| DiskError(format!("{}: {e}", path.display())))?;
    let len = f
        .metadata()
        .map_err(|e| DiskError(format!("{}: {e}", path.display())))?
        .len();
    f.set_len(round_up(len, block))
        .map_err(|e| DiskError(format!("{}: {e}", path.display())))
}
