//! `cairn inspect OUT/NAME` and `cairn diff A B`: what a build made, from its report and its outputs.
//!
//! The report comes first: it names the outputs and their sha256, and every output inspect reads is checked
//! against it before anything else reads it (a mismatch is an error naming the file). What only the builder knew
//! (which rock each file came from, the biggest files) is the report's `contents`; what is in the image is read
//! from the image: the partition table from the disk's GPT, the kernel and its command line from the EFI system
//! partition's loader entry, dpkg's status from the root (the disk's factory `/var`, or the tar), and for `diff`
//! the file listing. One module per concern: [`outputs`] (finding the build, the report, the checks), [`image`]
//! (the verified outputs, a qcow2 converted), [`gpt`], [`esp`], [`root`] (the squashfs), [`listing`], [`packages`],
//! [`diff`], and [`text`] (the human rendering; JSON is these structs serialised).

pub mod diff;
pub mod esp;
pub mod gpt;
pub mod image;
pub mod listing;
pub mod outputs;
pub mod packages;
pub mod root;
pub mod text;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::assemble::contents::Contents;
use esp::{Boot, EspError};
use gpt::Table;
use image::{Image, ImageError, ReadOutput};
use listing::ListingError;
use outputs::{Build, OutputRef, OutputsError, ProfileRef, Rock};
use packages::Package;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Outputs(#[from] OutputsError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InspectError {
    /// A wrong path or argument (exit 2), rather than a damaged or unreadable image (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            InspectError::Outputs(e) | InspectError::Image(ImageError::Outputs(e)) => {
                e.is_bad_input()
            }
            _ => false,
        }
    }
}

impl From<gpt::GptError> for InspectError {
    fn from(e: gpt::GptError) -> Self {
        InspectError::Image(e.into())
    }
}

impl From<root::RootError> for InspectError {
    fn from(e: root::RootError) -> Self {
        InspectError::Image(e.into())
    }
}

/// Where dpkg's status is: in the image's `/var`, and in the disk's factory archive of it.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
pub const DPKG_STATUS_IN_VAR: &str = "/lib/dpkg/status";

/// What `cairn inspect` shows.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub cairn_version: String,
    pub report: PathBuf,
    pub profile: ProfileRef,
    /// The outputs read, each checked against the report's sha256.
    pub read: Vec<ReadOutput>,
    pub outputs: Vec<OutputRef>,
    pub rocks: Vec<Rock>,
    /// From the report: the root's files by origin and the biggest ones (absent from older reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<Contents>,
    /// From dpkg's status in the image; absent when the image has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<Packages>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskInfo>,
    /// What could not be read or does not agree, in words.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Packages {
    /// The output the status was read from.
    pub from: PathBuf,
    pub list: Vec<Package>,
}

#[derive(Debug, Serialize)]
pub struct DiskInfo {
    /// The output the disk was read from.
    pub from: PathBuf,
    pub partition_table: Table,
    pub boot: Boot,
}

/// Inspects the build `target` names (see [`Build::open`]).
pub fn inspect(target: &Path) -> Result<Inspection, InspectError> {
    let build = Build::open(target)?;
    let has_disk = build.has("raw") || build.has("qcow2");
    let mut image = Image::open(&build, !has_disk, has_disk)?;
    let mut notes = Vec::new();
    let r = &build.report;
    if r.contents.is_none() {
        notes.push(format!(
            "{} records no contents by rock (cairn {} made it): rebuild to record them",
            build.report_path.display(),
            r.cairn_version
        ));
    }
    let mut disk_info = None;
    let packages;
    if let Some(disk) = &image.disk {
        if disk.converted {
            notes.push(format!(
                "{} was read through a temporary raw copy (qemu-img convert)",
                disk.output.display()
            ));
        }
        let boot = esp::read(&disk.raw, disk.esp()?.offset)?;
        if let Some(reported) = &r.disk {
            check_disk(&mut notes, &build, &disk.table, &boot, reported);
        }
        let from = disk.output.clone();
        disk_info = Some(DiskInfo {
            from: from.clone(),
            partition_table: disk.table.clone(),
            boot,
        });
        packages = match image.factory_var()? {
            Some(var) => status_in(&var, DPKG_STATUS_IN_VAR, "the factory /var")?
                .map(|list| Packages { from, list }),
            None => None,
        };
    } else if let Some(tar) = &image.tar {
        packages = status_in(tar, DPKG_STATUS, &tar.display().to_string())?.map(|list| Packages {
            from: tar.clone(),
            list,
        });
    } else {
        packages = None;
        notes.push(format!(
            "{} lists no tar, raw or qcow2 output: only the report was read",
            build.report_path.display()
        ));
    }
    if packages.is_none() && !image.read.is_empty() {
        notes.push(format!(
            "the image has no {DPKG_STATUS}: no Debian packages"
        ));
    }
    let r = build.report.clone();
    Ok(Inspection {
        name: r.name,
        version: r.version,
        arch: r.arch,
        cairn_version: r.cairn_version,
        report: build.report_path,
        profile: r.profile,
        read: std::mem::take(&mut image.read),
        outputs: r.outputs,
        rocks: r.rocks,
        contents: r.contents,
        packages,
        disk: disk_info,
        notes,
    })
}

/// dpkg's packages from the status file `status` (absolute) of the tar at `path`; `None` without one.
fn status_in(path: &Path, status: &str, what: &str) -> Result<Option<Vec<Package>>, InspectError> {
    let file = File::open(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let read = listing::read_tar(
        BufReader::with_capacity(1 << 20, file),
        what,
        false,
        &[status],
        crate::sbom::dpkg::MAX_STATUS,
    )?;
    Ok(read.files.get(status).map(|s| packages::from_status(s)))
}

/// The disk against its report: the same partitions and root hash (they can only differ when the report was
/// edited, since the disk's sha256 matched it).
fn check_disk(
    notes: &mut Vec<String>,
    build: &Build,
    table: &Table,
    boot: &Boot,
    reported: &outputs::DiskRef,
) {
    let report = build.report_path.display();
    if boot.root_hash.as_deref() != Some(reported.root_hash.as_str()) {
        notes.push(format!(
            "the loader entry's root hash {} is not the one {report} records ({})",
            boot.root_hash.as_deref().unwrap_or("(none)"),
            reported.root_hash
        ));
    }
    let same = |p: &gpt::Partition, q: &outputs::PartitionRef| {
        p.name == q.name
            && p.type_guid.eq_ignore_ascii_case(&q.type_guid)
            && p.uuid.eq_ignore_ascii_case(&q.uuid)
            && (p.offset, p.size) == (q.offset, q.size)
    };
    let t = &reported.partition_table;
    if t.partitions.len() != table.partitions.len()
        || !table
            .partitions
            .iter()
            .zip(&t.partitions)
            .all(|(p, q)| same(p, q))
        || !t.disk_guid.eq_ignore_ascii_case(&table.disk_guid)
    {
        notes.push(format!(
            "the disk's partition table differs from the one {report} records"
        ));
    }
}
