//! Disk: the bootable, read-only, verified image.
//!
//! GPT with the Discoverable Partitions Specification's type GUIDs: an EFI system partition (systemd-boot and slot
//! A's unified kernel image, whose command line carries `cairn.verity=ROOTHASH`; both signed with a Secure Boot
//! key when one is given), the root (squashfs, read-only) and
//! its dm-verity hash partition, room for a second root and hash slot (A/B updates), and an ext4 data partition
//! for /var. Every GUID, the FAT volume id and the verity salt derive from the profile and its digests; every time
//! from the build epoch: the same inputs give the same image.

pub mod boot;
pub mod data;
pub mod enroll;
pub mod esp;
pub mod gpt;
pub mod initrd;
pub mod layout;
pub mod root;
pub mod secure_boot;
pub mod squashfs;
pub(crate) mod tools;
pub mod verity;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_profile::command::CommandError;
use cairn_profile::{Format, Profile};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::assemble::tree::Tree;
use crate::output::{self, OutputError};
use crate::progress::step;
use crate::report::Output;
use crate::resolve::ResolvedRock;
use boot::{Boot, BootError};
use data::DataError;
use esp::EspError;
use gpt::{GptError, Table};
use initrd::InitrdError;
use layout::Pieces;
use root::RootError;
use squashfs::SquashfsError;
use tools::Tool;
use verity::VerityError;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    #[error(transparent)]
    Root(#[from] RootError),
    #[error(transparent)]
    Squashfs(#[from] SquashfsError),
    #[error("verity: {0}")]
    Verity(#[from] VerityError),
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Gpt(#[from] GptError),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(transparent)]
    Qcow2(#[from] CommandError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Identifiers derived from the build's inputs (UUIDv5-style: version and variant bits set).
#[derive(Debug, Clone)]
pub struct Ids {
    seed: [u8; 32],
}

impl Ids {
    /// A build's: from its profile and rocks.
    pub fn of(profile: &Profile, rocks: &[ResolvedRock]) -> Ids {
        let digests: Vec<String> = rocks
            .iter()
            .map(|r| r.manifest_digest.to_string())
            .collect();
        Ids::new(&crate::report::profile_sha256(profile), &digests)
    }

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
    /// What slot A holds, byte for byte from each partition's start: the root image (whole 4 KiB blocks) and its
    /// hash device. An update payload carries these, and a written slot is checked against them.
    pub slot: SlotImages,
    /// Slot A's boot entry, as the ESP holds it: an update payload carries it.
    pub boot: BootImages,
    /// Whether the boot chain is signed, and with which certificate (never the key).
    pub secure_boot: SecureBootReport,
    /// xattrs the root filesystem cannot hold, left out of it: (path, name).
    pub xattrs_not_in_root: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotImages {
    pub root: Image,
    pub verity: Image,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootImages {
    /// `EFI/Linux/cairn-1-a.efi`.
    pub uki_path: String,
    pub uki: Image,
    /// What the UKI holds, before it is signed.
    pub kernel: Image,
    pub initrd: Image,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecureBootReport {
    pub signed: bool,
    /// sha256 of the signing certificate's DER: the one to enroll in the firmware's db.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_subject: Option<String>,
    /// The ESP's signed files.
    pub signed_files: Vec<String>,
    /// How systemd-boot offers the keys to a machine in setup mode (`off`, `manual`, `force`), and their files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enroll: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enroll_files: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub bytes: u64,
    pub sha256: String,
}

impl Image {
    pub fn of(bytes: &[u8]) -> Image {
        Image {
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

pub const ESP_SIZE: u64 = 64 << 20;
pub const DATA_SIZE: u64 = 256 << 20;

/// What a disk is made of besides the tree.
pub struct DiskInputs<'a> {
    pub profile: &'a Profile,
    pub ids: &'a Ids,
    /// The static agent: the initrd's `/init`.
    pub agent: &'a Path,
    pub epoch: u64,
    /// Signs the boot chain for Secure Boot.
    pub signer: Option<&'a secure_boot::Signer>,
}

/// Writes the disk formats among `formats` into `out_dir` (the raw image, and its qcow2 conversion) from the
/// assembled `tree`, which is rearranged for a read-only root.
pub fn write(
    tree: &mut Tree,
    tars: &[PathBuf],
    inputs: &DiskInputs<'_>,
    formats: &[Format],
    stage: &mut output::Stage,
) -> Result<(DiskReport, Vec<Output>), DiskError> {
    let t = Instant::now();
    let work = output::work_folder(stage.path())?;
    let raw = work.path().join("disk.raw");
    let report = build_raw(tree, tars, inputs, work.path(), &raw)?;
    info!(root_hash = %report.root_hash, ms = t.elapsed().as_millis() as u64, "disk");
    let name = &inputs.profile.name;
    let mut outputs = Vec::new();
    if formats.contains(&Format::Qcow2) {
        let qcow = work.path().join("disk.qcow2");
        step("qcow2", || qcow2(&raw, &qcow))?;
        outputs.push(stage.add(&qcow, "qcow2", format!("{name}.qcow2"))?);
    }
    if formats.contains(&Format::Raw) {
        outputs.push(stage.add(&raw, "raw", format!("{name}.raw"))?);
    }
    Ok((report, outputs))
}

/// Converts the raw image to qcow2.
pub fn qcow2(raw: &Path, qcow: &Path) -> Result<(), DiskError> {
    Tool::QemuImg
        .command()
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow)
        .run()?;
    Ok(())
}

/// Writes the raw disk image `out` from the assembled `tree` (rearranged here for a read-only root); its pieces go
/// to `work`.
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
        signer,
    } = *inputs;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };
    // What the boot needs, read before the tree is rearranged.
    let boot = Boot::read(tree, tars, profile.arch)?;
    let kernel = format!("/{}", boot.kernel_path);
    let agent_bytes = std::fs::read(agent).map_err(io(agent))?;
    let (initrd, initrd_modules) =
        step("initrd", || initrd::build(tree, tars, &agent_bytes, epoch))?;
    step("factory /var", || {
        root::with_factory_var(tree, tars, epoch, &work.join("var.tar"))
    })?;

    let pieces = Pieces::in_folder(work);
    let written = step("squashfs root", || {
        squashfs::make(tree, tars, epoch, &pieces.root)
    })?;
    let v = step("dm-verity tree", || {
        verity::write_file(
            &pieces.root,
            &pieces.verity,
            ids.salt(),
            ids.uuid("verity superblock"),
        )
    })?;
    let cmdline = boot::cmdline(profile, &v);
    let (kernel_image, initrd_image) = (Image::of(boot.kernel()), Image::of(&initrd));
    let esp_boot = step("unified kernel image", || {
        boot.esp_files(profile, &cmdline, &initrd, signer, epoch)
    })?;
    drop(initrd);
    let boot_images = BootImages {
        uki_path: esp_boot.uki_path.clone(),
        uki: Image::of(&esp_boot.uki),
        kernel: kernel_image,
        initrd: initrd_image,
    };
    let secure_boot = SecureBootReport {
        signed: signer.is_some(),
        certificate_sha256: signer.map(|s| s.certificate_sha256()),
        certificate_subject: signer.map(|s| s.subject()),
        signed_files: esp_boot.signed.clone(),
        enroll: signer.map(|s| s.enroll().word()),
        enroll_files: esp_boot.enroll.clone(),
    };
    let esp_files = esp_boot.files;
    let staging = work.join("esp");
    step("EFI system partition", || {
        esp::make(
            &pieces.esp,
            ESP_SIZE,
            ids.volume_id(),
            &esp_files,
            epoch,
            &staging,
        )
    })?;
    step("/var partition", || {
        data::make(&pieces.data, DATA_SIZE, ids, epoch)
    })?;

    let root_len = std::fs::metadata(&pieces.root)
        .map_err(io(&pieces.root))?
        .len();
    let table = layout::table(
        profile.arch,
        ids,
        &v,
        &pieces,
        root_len,
        profile.slot_size.as_ref(),
    )?;
    step("GPT disk", || gpt::write(out, &table))?;

    let mut dropped = written.dropped_xattrs;
    dropped.sort();
    Ok(DiskReport {
        root_filesystem: "squashfs (zstd level 3)",
        root_hash: v.root_hex(),
        verity_salt: hex::encode(v.salt),
        kernel,
        kernel_cmdline: cmdline,
        initrd_modules,
        partition_table: table,
        slot: SlotImages {
            root: Image {
                bytes: v.data_blocks * verity::BLOCK as u64,
                sha256: hex::encode(v.data_sha256),
            },
            verity: Image {
                bytes: v.hash_size,
                sha256: hex::encode(v.hash_sha256),
            },
        },
        boot: boot_images,
        secure_boot,
        xattrs_not_in_root: dropped,
    })
}
