//! The outputs inspect reads, each checked against the report first: the tar, and the disk (the raw image, or the
//! qcow2 converted to a temporary raw one when the build wrote no raw), with its partition table.

use std::path::{Path, PathBuf};

use cairn_profile::command::CommandError;
use cairn_profile::contract;
use serde::Serialize;
use tempfile::TempDir;

use super::gpt::{self, GptError, Partition, Table};
use super::outputs::{Build, OutputsError};
use super::root::{Root, RootError};
use crate::disk::tools::Tool;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Outputs(#[from] OutputsError),
    #[error("a temporary folder: {0}")]
    Temp(std::io::Error),
    #[error("{}: converting it to a raw image: {source}", path.display())]
    Convert {
        path: PathBuf,
        source: Box<CommandError>,
    },
    #[error(transparent)]
    Gpt(#[from] GptError),
    #[error("{}: no {what} partition", path.display())]
    NoPartition { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Root(#[from] RootError),
}

/// An output that was read, after its sha256 matched the report's.
#[derive(Debug, Clone, Serialize)]
pub struct ReadOutput {
    pub format: String,
    pub file: PathBuf,
    pub sha256: String,
}

/// The disk, as a raw image to read.
pub struct Disk {
    /// The raw image: the output itself, or the qcow2's conversion in the temp folder.
    pub raw: PathBuf,
    /// The output it is: `OUT/NAME.raw` or `OUT/NAME.qcow2`.
    pub output: PathBuf,
    pub converted: bool,
    pub table: Table,
}

impl Disk {
    fn partition(&self, what: &'static str, types: &[&str]) -> Result<&Partition, ImageError> {
        self.table
            .partitions
            .iter()
            .find(|p| types.iter().any(|t| t.eq_ignore_ascii_case(&p.type_guid)))
            .ok_or_else(|| ImageError::NoPartition {
                path: self.output.clone(),
                what,
            })
    }

    pub fn esp(&self) -> Result<&Partition, ImageError> {
        self.partition("EFI system", &[contract::ESP_TYPE])
    }

    /// The first root partition (slot A) of either architecture.
    pub fn root(&self) -> Result<Root<'_>, ImageError> {
        let p = self.partition(
            "root",
            &[contract::ROOT_TYPE_AMD64, contract::ROOT_TYPE_ARM64],
        )?;
        Ok(Root {
            disk: &self.raw,
            offset: p.offset,
        })
    }
}

/// The outputs of one build that inspect reads, verified.
pub struct Image {
    pub read: Vec<ReadOutput>,
    pub tar: Option<PathBuf>,
    pub disk: Option<Disk>,
    /// Holds what is extracted or converted; removed on drop.
    temp: TempDir,
    factory_var: Option<PathBuf>,
}

impl Image {
    /// Verifies and opens the build's tar (with `tar`) and disk (with `disk`), those the build wrote.
    pub fn open(build: &Build, tar: bool, disk: bool) -> Result<Image, ImageError> {
        let temp = tempfile::Builder::new()
            .prefix("cairn-inspect-")
            .tempdir()
            .map_err(ImageError::Temp)?;
        let mut read = Vec::new();
        let mut verified = |format: &str| -> Result<Option<PathBuf>, ImageError> {
            let Some(o) = build.output(format) else {
                return Ok(None);
            };
            let path = build.verified(o)?;
            read.push(ReadOutput {
                format: format.into(),
                file: path.clone(),
                sha256: o.sha256.clone(),
            });
            Ok(Some(path))
        };
        let tar_path = if tar { verified("tar")? } else { None };
        let mut found = None;
        if disk {
            if let Some(raw) = verified("raw")? {
                found = Some((raw.clone(), raw, false));
            } else if let Some(qcow) = verified("qcow2")? {
                let raw = temp.path().join("disk.raw");
                Tool::QemuImg
                    .command()
                    .args(["convert", "-f", "qcow2", "-O", "raw"])
                    .arg(&qcow)
                    .arg(&raw)
                    .run()
                    .map_err(|source| ImageError::Convert {
                        path: qcow.clone(),
                        source: Box::new(source),
                    })?;
                found = Some((raw, qcow, true));
            }
        }
        let disk = match found {
            Some((raw, output, converted)) => {
                let mut table = gpt::read(&raw)?;
                // Its size is the disk's, not a file's: the same for the raw and the qcow2.
                table.size = std::fs::metadata(&raw)
                    .map(|m| m.len())
                    .unwrap_or(table.size);
                Some(Disk {
                    raw,
                    output,
                    converted,
                    table,
                })
            }
            None => None,
        };
        Ok(Image {
            read,
            tar: tar_path,
            disk,
            temp,
            factory_var: None,
        })
    }

    /// The factory `/var` archive out of the disk's root, extracted once into the temp folder.
    pub fn factory_var(&mut self) -> Result<Option<PathBuf>, ImageError> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        if let Some(p) = &self.factory_var {
            return Ok(Some(p.clone()));
        }
        let dest = self.temp.path().join("var.tar");
        disk.root()?.cat_to(contract::FACTORY_VAR_IN_ROOT, &dest)?;
        self.factory_var = Some(dest.clone());
        Ok(Some(dest))
    }

    pub fn temp(&self) -> &Path {
        self.temp.path()
    }
}
