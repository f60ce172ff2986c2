//! The payload's parts, out of a build's verified outputs: slot A's root image and hash device read in place from
//! the raw disk (by offset, never copied), its unified kernel image (out of the ESP, signed as the build signed
//! it, checked against the report) and the report itself.

use std::path::{Path, PathBuf};

use cairn_profile::contract;
use cairn_profile::payload::{About, Blob, Part};
use cairn_profile::{Arch, Digest, Profile};
use sha2::{Digest as _, Sha256};

use super::PushError;
use crate::disk::tools::Tool;
use crate::inspect::esp;
use crate::inspect::image::Image;
use crate::inspect::outputs::{Build, ImageRef};

/// Where one part's bytes are: `size` bytes of `path` from `offset`.
#[derive(Debug, Clone)]
pub struct Source {
    pub part: Part,
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
    pub digest: Digest,
}

/// A build's payload, ready to push.
pub struct Gathered {
    pub about: About,
    pub sources: Vec<Source>,
    /// The build's epoch, RFC 3339.
    pub created: String,
    /// Holds the extracted files (and a qcow2's raw conversion).
    _image: Image,
}

impl Gathered {
    pub fn blobs(&self) -> Vec<Blob> {
        self.sources
            .iter()
            .map(|s| Blob {
                part: s.part,
                digest: s.digest.clone(),
                size: s.size,
            })
            .collect()
    }

    pub fn bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.size).sum()
    }
}

/// Checks the build against the profile and reads its parts.
pub fn gather(profile: &Profile, build: &Build) -> Result<Gathered, PushError> {
    let report = &build.report;
    let expected = crate::report::profile_sha256(profile);
    if report.profile.sha256 != expected {
        return Err(PushError::OtherProfile {
            report: build.report_path.clone(),
            profile: profile.file.clone(),
            built: report.profile.sha256.clone(),
            now: expected,
        });
    }
    let disk = report.disk.as_ref().ok_or_else(|| PushError::NoDisk {
        report: build.report_path.clone(),
    })?;
    let (Some(slot), Some((uki_path, uki_image))) = (
        &disk.slot,
        disk.boot
            .as_ref()
            .and_then(|b| Some((b.uki_path.as_ref()?, b.uki.as_ref()?))),
    ) else {
        return Err(PushError::OldReport {
            report: build.report_path.clone(),
        });
    };
    let image = Image::open(build, false, true)?;
    let raw = image.disk.as_ref().ok_or_else(|| PushError::NoDisk {
        report: build.report_path.clone(),
    })?;
    let hash = hex_hash(&disk.root_hash).ok_or_else(|| PushError::Damaged {
        report: build.report_path.clone(),
        what: format!("root hash `{}`", disk.root_hash),
    })?;
    let uuids = contract::root_uuids(&hash);
    let partition = |uuid: &str, what: &'static str| {
        raw.table
            .partitions
            .iter()
            .find(|p| p.uuid.eq_ignore_ascii_case(uuid))
            .ok_or_else(|| PushError::Damaged {
                report: build.report_path.clone(),
                what: format!("no {what} partition with UUID {uuid}"),
            })
    };
    let root = partition(&uuids.root, "root")?;
    let verity = partition(&uuids.verity, "verity")?;
    let esp_part = image.disk.as_ref().map(|d| d.esp()).transpose()?;
    let esp_offset = esp_part.map(|p| p.offset).unwrap_or_default();
    let on_esp = esp::read(&raw.raw, esp_offset)?;
    let entry = on_esp
        .entries
        .iter()
        .find(|e| e.file == on_esp.default)
        .ok_or_else(|| PushError::Damaged {
            report: build.report_path.clone(),
            what: "no default boot entry".into(),
        })?;
    if esp::root_hash(&entry.options).as_deref() != Some(disk.root_hash.as_str()) {
        return Err(PushError::Damaged {
            report: build.report_path.clone(),
            what: format!(
                "the boot entry {} does not carry the report's root hash",
                entry.file
            ),
        });
    }
    if entry.file != *uki_path {
        return Err(PushError::Damaged {
            report: build.report_path.clone(),
            what: format!(
                "the default boot entry is {}, the report's {}",
                entry.file, uki_path
            ),
        });
    }
    let temp = image.temp().to_path_buf();
    let uki = {
        let on = &entry.file;
        let expected = uki_image;
        let dest = temp.join("uki.efi");
        Tool::Mcopy
            .command()
            .args(["-n", "-i", &format!("{}@@{esp_offset}", raw.raw.display())])
            .arg(format!("::/{}", on.trim_start_matches('/')))
            .arg(&dest)
            .run()
            .map_err(|source| PushError::Extract {
                what: on.to_string(),
                source: Box::new(source),
            })?;
        let (size, digest) = digest_of(&dest)?;
        if size != expected.bytes || digest.hex() != expected.sha256 {
            return Err(PushError::Damaged {
                report: build.report_path.clone(),
                what: format!(
                    "{on} on the ESP is {size} bytes with sha256 {}, the report says {} bytes with {}",
                    digest.hex(),
                    expected.bytes,
                    expected.sha256
                ),
            });
        }
        Source {
            part: Part::Uki,
            path: dest,
            offset: 0,
            size,
            digest,
        }
    };
    let in_disk = |part, offset, image: &ImageRef| -> Result<Source, PushError> {
        Ok(Source {
            part,
            path: raw.raw.clone(),
            offset,
            size: image.bytes,
            digest: Digest::parse(&format!("sha256:{}", image.sha256)).map_err(|_| {
                PushError::Damaged {
                    report: build.report_path.clone(),
                    what: format!("the {} sha256 `{}`", part.name(), image.sha256),
                }
            })?,
        })
    };
    let (report_size, report_digest) = digest_of(&build.report_path)?;
    let sources = vec![
        in_disk(Part::Root, root.offset, &slot.root)?,
        in_disk(Part::Verity, verity.offset, &slot.verity)?,
        uki,
        Source {
            part: Part::Report,
            path: build.report_path.clone(),
            offset: 0,
            size: report_size,
            digest: report_digest,
        },
    ];
    let arch = match report.arch.as_str() {
        "arm64" => Arch::Arm64,
        _ => Arch::Amd64,
    };
    Ok(Gathered {
        about: About {
            name: report.name.clone(),
            version: report.version.clone(),
            arch,
            root_hash: disk.root_hash.clone(),
        },
        sources,
        created: cairn_profile::time::rfc3339(report.source_date_epoch),
        _image: image,
    })
}

fn hex_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// A file's size and sha256.
fn digest_of(path: &Path) -> Result<(u64, Digest), PushError> {
    let io = |source| PushError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, Digest::from_sha256(&hash.finalize())))
}
