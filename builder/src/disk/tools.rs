//! The host tools the disk formats run (and `cairn inspect` reads them with), each with the Debian package that
//! provides it (rocks/setup-host installs them all), run through the shared [`cairn_profile::command`] runner.

use cairn_profile::command::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Mksquashfs,
    Mke2fs,
    Mformat,
    Mcopy,
    Mtype,
    Mdir,
    Unsquashfs,
    Sfdisk,
    QemuImg,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Mksquashfs => "mksquashfs",
            Tool::Mke2fs => "mke2fs",
            Tool::Mformat => "mformat",
            Tool::Mcopy => "mcopy",
            Tool::Mtype => "mtype",
            Tool::Mdir => "mdir",
            Tool::Unsquashfs => "unsquashfs",
            Tool::Sfdisk => "sfdisk",
            Tool::QemuImg => "qemu-img",
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            Tool::Mksquashfs | Tool::Unsquashfs => "squashfs-tools",
            Tool::Mke2fs => "e2fsprogs",
            Tool::Mformat | Tool::Mcopy | Tool::Mtype | Tool::Mdir => "mtools",
            Tool::Sfdisk => "fdisk",
            Tool::QemuImg => "qemu-utils",
        }
    }

    /// A command for the tool, naming its package should it be missing.
    pub fn command(self) -> Command {
        Command::new(self.name()).package(self.package())
    }
}
