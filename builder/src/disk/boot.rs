//! What the EFI system partition boots: systemd-boot and the kernel, read from the assembled root, cairn's initrd,
//! and slot A's loader entry, whose command line carries the root hash (`cairn.verity=ROOTHASH`).

use std::path::PathBuf;

use cairn_profile::boot_entry::{self, Slot};
use cairn_profile::contract;
use cairn_profile::{Arch, Profile};

use super::esp::EspFile;
use super::verity::Verity;
use crate::assemble::tree::{Node, Tree};
use crate::filesystem::{FilesystemError, read_file};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no kernel in the root (/boot/vmlinuz-*)")]
    NoKernel,
    #[error("/{0} is missing: the base rock must carry systemd-boot (Debian's systemd-boot-efi)")]
    NoBootLoader(&'static str),
    #[error(transparent)]
    Read(#[from] FilesystemError),
}

/// The kernel and the boot loader, out of the root.
pub struct Boot {
    /// `boot/vmlinuz-VERSION`, relative.
    pub kernel_path: String,
    kernel: Vec<u8>,
    /// The root's systemd-boot, relative, and the name UEFI's removable-media path gives it.
    loader_path: &'static str,
    removable_name: &'static str,
    loader: Vec<u8>,
}

impl Boot {
    /// Reads them from the tree (before it is rearranged for a read-only root).
    pub fn read(tree: &Tree, layer_tars: &[PathBuf], arch: Arch) -> Result<Boot, BootError> {
        let kernel_path = find_kernel(tree).ok_or(BootError::NoKernel)?;
        let kernel = read_file(tree, layer_tars, &kernel_path)?.unwrap_or_default();
        let (loader_path, removable_name) = match arch {
            Arch::Amd64 => (
                "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                "BOOTX64.EFI",
            ),
            Arch::Arm64 => (
                "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
                "BOOTAA64.EFI",
            ),
        };
        let loader = read_file(tree, layer_tars, loader_path)?
            .ok_or(BootError::NoBootLoader(loader_path))?;
        Ok(Boot {
            kernel_path,
            kernel,
            loader_path,
            removable_name,
            loader,
        })
    }

    pub fn kernel(&self) -> &[u8] {
        &self.kernel
    }

    /// The ESP's files: the boot loader at the removable-media path and systemd-boot's own, its configuration,
    /// slot A's entry (generation 1, no counter: a new disk's first boot has nothing to fall back to), its kernel
    /// and initrd ([`cairn_profile::boot_entry`]).
    pub fn esp_files(self, profile: &Profile, cmdline: &str, initrd: Vec<u8>) -> Vec<EspFile> {
        let slot = Slot::A;
        let title = format!("{} {}", profile.name, profile.version);
        vec![
            EspFile {
                path: format!("EFI/BOOT/{}", self.removable_name),
                bytes: self.loader.clone(),
            },
            EspFile {
                path: format!(
                    "EFI/systemd/{}",
                    self.loader_path
                        .rsplit('/')
                        .next()
                        .unwrap_or(self.loader_path)
                ),
                bytes: self.loader,
            },
            EspFile {
                path: boot_entry::LOADER_CONF_PATH.into(),
                bytes: boot_entry::LOADER_CONF.as_bytes().to_vec(),
            },
            EspFile {
                path: format!("{}/{}", boot_entry::ENTRIES_DIR, slot.entry_file(None)),
                bytes: boot_entry::entry_text(slot, &title, 1, cmdline).into_bytes(),
            },
            EspFile {
                path: slot.kernel().trim_start_matches('/').into(),
                bytes: self.kernel,
            },
            EspFile {
                path: slot.initrd().trim_start_matches('/').into(),
                bytes: initrd,
            },
        ]
    }
}

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
