//! Disk: the bootable, read-only, verified image (GPT, EFI system partition, verity-protected root, data
//! partition for /var).

pub mod verity;
