//! What the EFI system partition boots: systemd-boot, read from the assembled root, and slot A's unified kernel
//! image, assembled from the root's systemd-stub, kernel and os-release with cairn's initrd and the command line
//! that carries the root hash (`cairn.verity=ROOTHASH`). With a Secure Boot key, systemd-boot (both copies) and the
//! UKI are signed; the firmware then checks systemd-boot, systemd-boot checks the UKI through the firmware, and
//! systemd-stub ignores any command line but the signed one.

use std::path::PathBuf;

use cairn_profile::boot_entry::{self, Slot};
use cairn_profile::uki::{self, AssembleError, NewSection};
use cairn_profile::{Arch, Profile, contract};

use super::esp::EspFile;
use super::secure_boot::{SecureBootError, Signer};
use super::verity::Verity;
use crate::assemble::tree::{Node, Tree};
use crate::filesystem::{FilesystemError, read_file};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no kernel in the root (/boot/vmlinuz-*)")]
    NoKernel,
    #[error(
        "/{0} is missing: the base rock must carry systemd-boot and systemd-stub (Debian's systemd-boot-efi)"
    )]
    NoBootLoader(&'static str),
    #[error("no os-release in the root (/usr/lib/os-release or /etc/os-release)")]
    NoOsRelease,
    #[error(transparent)]
    Read(#[from] FilesystemError),
    #[error(transparent)]
    Uki(#[from] AssembleError),
    #[error(transparent)]
    Sign(#[from] SecureBootError),
}

/// The kernel, the boot loader and the stub, out of the root.
pub struct Boot {
    /// `boot/vmlinuz-VERSION`, relative.
    pub kernel_path: String,
    kernel: Vec<u8>,
    /// The root's systemd-boot, relative, and the name UEFI's removable-media path gives it.
    loader_path: &'static str,
    removable_name: &'static str,
    loader: Vec<u8>,
    stub_path: &'static str,
    stub: Vec<u8>,
    os_release: String,
}

/// The ESP's boot files and what the report says of them.
pub struct EspBoot {
    pub files: Vec<EspFile>,
    /// Slot A's UKI, as the ESP holds it (an update payload carries it).
    pub uki: Vec<u8>,
    /// `EFI/Linux/cairn-1-a.efi`.
    pub uki_path: String,
    /// The ESP's files that are signed.
    pub signed: Vec<String>,
    /// The key enrollment files ([`super::enroll`]).
    pub enroll: Vec<String>,
}

impl Boot {
    /// Reads them from the tree (before it is rearranged for a read-only root).
    pub fn read(tree: &Tree, layer_tars: &[PathBuf], arch: Arch) -> Result<Boot, BootError> {
        let kernel_path = find_kernel(tree).ok_or(BootError::NoKernel)?;
        let kernel = read_file(tree, layer_tars, &kernel_path)?.unwrap_or_default();
        let (loader_path, removable_name, stub_path) = match arch {
            Arch::Amd64 => (
                "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                "BOOTX64.EFI",
                "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            ),
            Arch::Arm64 => (
                "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
                "BOOTAA64.EFI",
                "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
            ),
        };
        let loader = read_file(tree, layer_tars, loader_path)?
            .ok_or(BootError::NoBootLoader(loader_path))?;
        let stub =
            read_file(tree, layer_tars, stub_path)?.ok_or(BootError::NoBootLoader(stub_path))?;
        let mut os_release = None;
        for p in ["usr/lib/os-release", "etc/os-release"] {
            if let Some(b) = read_file(tree, layer_tars, p)? {
                os_release = Some(String::from_utf8_lossy(&b).into_owned());
                break;
            }
        }
        Ok(Boot {
            kernel_path,
            kernel,
            loader_path,
            removable_name,
            loader,
            stub_path,
            stub,
            os_release: os_release.ok_or(BootError::NoOsRelease)?,
        })
    }

    pub fn kernel(&self) -> &[u8] {
        &self.kernel
    }

    /// The kernel's release, from its file name (`vmlinuz-6.1.0-28-amd64`).
    pub fn uname(&self) -> &str {
        self.kernel_path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_prefix("vmlinuz-"))
            .unwrap_or("")
    }

    /// Slot A's UKI, unsigned: os-release, command line, uname, initrd and kernel, in ukify's order.
    pub fn uki(
        &self,
        profile: &Profile,
        cmdline: &str,
        initrd: &[u8],
    ) -> Result<Vec<u8>, BootError> {
        let os_release = boot_entry::os_release(&self.os_release, &profile.name, &profile.version);
        Ok(uki::assemble(
            self.stub_path,
            &self.stub,
            &[
                NewSection {
                    name: uki::OSREL,
                    data: os_release.as_bytes(),
                },
                NewSection {
                    name: uki::CMDLINE,
                    data: cmdline.as_bytes(),
                },
                NewSection {
                    name: uki::UNAME,
                    data: self.uname().as_bytes(),
                },
                NewSection {
                    name: uki::INITRD,
                    data: initrd,
                },
                NewSection {
                    name: uki::LINUX,
                    data: &self.kernel,
                },
            ],
        )?)
    }

    /// The ESP's files: the boot loader at the removable-media path and systemd-boot's own, its configuration,
    /// and slot A's UKI (generation 1, no counter: a new disk's first boot has nothing to fall back to), each
    /// PE signed when there is a `signer` ([`cairn_profile::boot_entry`]).
    pub fn esp_files(
        self,
        profile: &Profile,
        cmdline: &str,
        initrd: &[u8],
        signer: Option<&Signer>,
        epoch: u64,
    ) -> Result<EspBoot, BootError> {
        let mut uki = self.uki(profile, cmdline, initrd)?;
        let removable = format!("EFI/BOOT/{}", self.removable_name);
        let own = format!(
            "EFI/systemd/{}",
            self.loader_path
                .rsplit('/')
                .next()
                .unwrap_or(self.loader_path)
        );
        let uki_path = Slot::A.entry_path(boot_entry::FIRST_GENERATION, None);
        let mut loader = self.loader;
        let mut signed = Vec::new();
        let mut keys = Vec::new();
        let mut loader_conf = boot_entry::LOADER_CONF.to_string();
        if let Some(s) = signer {
            loader = s.sign_pe(self.loader_path, &loader)?;
            uki = s.sign_pe(&uki_path, &uki)?;
            signed = vec![removable.clone(), own.clone(), uki_path.clone()];
            keys = super::enroll::key_files(s, s.enroll(), epoch)?;
            loader_conf.push_str(&format!("secure-boot-enroll {}\n", s.enroll().word()));
        }
        let enroll = keys.iter().map(|f| f.path.clone()).collect();
        let mut files = vec![
            EspFile {
                path: removable,
                bytes: loader.clone(),
            },
            EspFile {
                path: own,
                bytes: loader,
            },
            EspFile {
                path: boot_entry::LOADER_CONF_PATH.into(),
                bytes: loader_conf.into_bytes(),
            },
            EspFile {
                path: uki_path.clone(),
                bytes: uki.clone(),
            },
            EspFile {
                path: ESP_README_PATH.into(),
                bytes: ESP_README.as_bytes().to_vec(),
            },
        ];
        files.extend(keys);
        Ok(EspBoot {
            files,
            uki,
            uki_path,
            signed,
            enroll,
        })
    }
}

/// The ESP's `cairn/` folder, where instance data may be put (`cairn/instance.toml`), with a note saying so.
const ESP_README_PATH: &str = "cairn/README.txt";
const ESP_README: &str = "Instance data for this node's first boot goes in this folder, as instance.toml.\r\n\
The unified kernel images in EFI/Linux are this node's boot entries: do not edit them (they are signed when the\r\n\
image was built with a Secure Boot key).\r\n";

/// The kernel command line: the profile's, then the root hash.
pub fn cmdline(profile: &Profile, verity: &Verity) -> String {
    let mut cmdline: Vec<String> = profile.system.kernel_cmdline.clone();
    cmdline.push(format!("{}={}", contract::VERITY_KEY, verity.root_hex()));
    cmdline.join(" ")
}

/// `/boot/vmlinuz-VERSION`, the highest version if there are several.
fn find_kernel(tree: &Tree) -> Option<String> {
    let boot = tree.lookup(b"boot")?;
    match tree.node(boot) {
        Node::Dir { children, .. } => children
            .keys()
            .filter(|k| k.starts_with(b"vmlinuz-"))
            .max()
            .map(|k| format!("boot/{}", String::from_utf8_lossy(k))),
        _ => None,
    }
}
