//! The update payload, the builder–agent contract for updates: one OCI artifact (an OCI image manifest with
//! cairn's `artifactType`, the empty config, one blob per [`Part`]) that `cairn push` writes and `cairn-agent
//! update` reads. The manifest is untrusted input on the node: [`Payload::parse`] checks every field before the
//! agent fetches anything it names, and each blob is then checked against its digest and size.
//!
//! Written by hand on serde rather than with oci-spec: the agent is a static binary on a size budget and needs
//! only this one manifest shape, checked more strictly than a general model would.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Arch;
use crate::reference::Digest;

/// The OCI image manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The manifest's `artifactType`: what marks a cairn update among a repository's artifacts.
/// v2: the boot part is one unified kernel image (v1 carried a kernel, an initrd and a Type #1 entry).
pub const ARTIFACT_TYPE: &str = "application/vnd.cairn.update.v2";
/// The empty config OCI artifacts carry (image-spec 1.1): the two bytes `{}`.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// `sha256({})`.
pub const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// The manifest's annotations cairn sets and reads.
pub const ANNOTATION_NAME: &str = "io.cairn.update.name";
pub const ANNOTATION_VERSION: &str = "io.cairn.update.version";
pub const ANNOTATION_ARCH: &str = "io.cairn.update.arch";
pub const ANNOTATION_ROOT_HASH: &str = "io.cairn.update.root-hash";
/// The OCI annotations a registry's UI shows.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_OCI_VERSION: &str = "org.opencontainers.image.version";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// An OCI image layout's tag annotation in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The largest manifest accepted.
pub const MANIFEST_LIMIT: u64 = 64 << 10;

/// One blob of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The root image (squashfs, whole 4 KiB blocks) written to the inactive root partition.
    Root,
    /// Its dm-verity hash device, written to the inactive verity partition.
    Verity,
    /// The slot's unified kernel image (kernel, initrd, the command line with the root hash, os-release), signed
    /// when the build was: it becomes the slot's boot entry.
    Uki,
    /// The build report (`NAME.manifest.json`).
    Report,
}

impl Part {
    /// In the manifest's order.
    pub const ALL: [Part; 4] = [Part::Root, Part::Verity, Part::Uki, Part::Report];

    pub fn media_type(self) -> &'static str {
        match self {
            Part::Root => "application/vnd.cairn.update.root.v1",
            Part::Verity => "application/vnd.cairn.update.verity.v1",
            Part::Uki => "application/vnd.cairn.update.uki.v1",
            Part::Report => "application/vnd.cairn.update.report.v1+json",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Part::Root => "root",
            Part::Verity => "verity",
            Part::Uki => "uki",
            Part::Report => "report",
        }
    }

    /// The blob's title annotation: a file name, for tools that save blobs as files (oras pull).
    pub fn file_name(self) -> &'static str {
        match self {
            Part::Root => "root.squashfs",
            Part::Verity => "root.verity",
            Part::Uki => "uki.efi",
            Part::Report => "report.json",
        }
    }

    /// The most bytes a part may have: the root is bounded by its slot, the rest by what such a file can be.
    pub fn limit(self) -> u64 {
        match self {
            Part::Root => 1 << 40,
            Part::Verity => 16 << 30,
            // Held in memory while it is checked, before anything is written.
            Part::Uki => 256 << 20,
            Part::Report => 16 << 20,
        }
    }

    fn from_media_type(t: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.media_type() == t)
    }
}

/// Checks what a payload's UKI says about itself against the manifest: its command line carries
/// `cairn.verity=ROOTHASH` (as one word), and its os-release the manifest's version. Returns its title.
pub fn check_uki(uki: &crate::uki::About, about: &About) -> Result<String, PayloadError> {
    let key = format!("{}={}", crate::contract::VERITY_KEY, about.root_hash);
    if !uki.cmdline.split(' ').any(|w| w == key) {
        return Err(PayloadError::Uki(format!(
            "its command line does not carry `{key}`"
        )));
    }
    let version = uki.os_release_value("IMAGE_VERSION");
    if version.as_deref() != Some(about.version.as_str()) {
        return Err(PayloadError::Uki(format!(
            "its os-release says version {version:?}, the manifest {:?}",
            about.version
        )));
    }
    let title = uki.os_release_value("PRETTY_NAME").unwrap_or_default();
    if title.is_empty() || title.chars().any(char::is_control) {
        return Err(PayloadError::Uki(
            "its PRETTY_NAME is empty or holds a control character".into(),
        ));
    }
    Ok(title)
}

/// What a payload's build report must agree with its manifest on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReportFacts {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub disk: ReportDisk,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReportDisk {
    pub root_hash: String,
}

impl ReportFacts {
    /// Reads the report's facts and checks them against the manifest's: the same build, the same root.
    pub fn check(bytes: &[u8], about: &About) -> Result<ReportFacts, PayloadError> {
        let facts: ReportFacts =
            serde_json::from_slice(bytes).map_err(|e| PayloadError::Report(e.to_string()))?;
        for (what, report, manifest) in [
            ("name", facts.name.as_str(), about.name.as_str()),
            ("version", facts.version.as_str(), about.version.as_str()),
            ("arch", facts.arch.as_str(), about.arch.oci()),
            (
                "root hash",
                facts.disk.root_hash.as_str(),
                about.root_hash.as_str(),
            ),
        ] {
            if report != manifest {
                return Err(PayloadError::Report(format!(
                    "its {what} is {report:?}, the manifest's {manifest:?}"
                )));
            }
        }
        Ok(facts)
    }
}

/// An OCI content descriptor, as much of it as cairn writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The OCI image manifest of a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    /// Absent from an image's manifest: read as empty, so that one is "not a cairn update".
    #[serde(default)]
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What the manifest says about the build it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    pub name: String,
    pub version: String,
    pub arch: Arch,
    /// 64 lower-case hex digits.
    pub root_hash: String,
}

/// One part's blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub part: Part,
    pub digest: Digest,
    pub size: u64,
}

/// A checked payload manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub about: About,
    /// One per part, in [`Part::ALL`]'s order.
    pub blobs: Vec<Blob>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the manifest is larger than {MANIFEST_LIMIT} bytes")]
    TooLarge,
    #[error("not an OCI image manifest: {0}")]
    NotAManifest(String),
    #[error("not a cairn update: {0}")]
    NotAnUpdate(String),
    #[error("annotation `{key}`: {reason}")]
    Annotation { key: &'static str, reason: String },
    #[error("blob {index} ({media_type}): {reason}")]
    Blob {
        index: usize,
        media_type: String,
        reason: String,
    },
    #[error("no {0} blob")]
    Missing(&'static str),
    #[error("the unified kernel image: {0}")]
    Uki(String),
    #[error("the build report: {0}")]
    Report(String),
}

impl Payload {
    /// Checks a manifest's bytes: an OCI image manifest of cairn's artifact type, the empty config, exactly one
    /// blob of each part with a sha256 digest and a size within the part's bound, and the annotations cairn reads.
    pub fn parse(bytes: &[u8]) -> Result<Payload, PayloadError> {
        if bytes.len() as u64 > MANIFEST_LIMIT {
            return Err(PayloadError::TooLarge);
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| PayloadError::NotAManifest(e.to_string()))?;
        if m.schema_version != 2 || m.media_type != MANIFEST_MEDIA_TYPE {
            return Err(PayloadError::NotAManifest(format!(
                "schemaVersion {} and mediaType `{}`",
                m.schema_version, m.media_type
            )));
        }
        if m.artifact_type != ARTIFACT_TYPE {
            return Err(PayloadError::NotAnUpdate(format!(
                "artifactType `{}`, expected `{ARTIFACT_TYPE}`",
                m.artifact_type
            )));
        }
        if m.config.media_type != EMPTY_CONFIG_MEDIA_TYPE || m.config.digest != EMPTY_CONFIG_DIGEST
        {
            return Err(PayloadError::NotAnUpdate(format!(
                "config `{}` {}, expected the empty config",
                m.config.media_type, m.config.digest
            )));
        }
        let mut blobs: Vec<Blob> = Vec::new();
        for (index, d) in m.layers.iter().enumerate() {
            let fail = |reason: String| PayloadError::Blob {
                index,
                media_type: d.media_type.clone(),
                reason,
            };
            let part = Part::from_media_type(&d.media_type)
                .ok_or_else(|| fail("not a part of a cairn update".into()))?;
            if blobs.iter().any(|b| b.part == part) {
                return Err(fail(format!("a second {} blob", part.name())));
            }
            let digest = Digest::parse(&d.digest).map_err(|e| fail(e.to_string()))?;
            if d.size == 0 || d.size > part.limit() {
                return Err(fail(format!(
                    "{} bytes, outside 1..={}",
                    d.size,
                    part.limit()
                )));
            }
            blobs.push(Blob {
                part,
                digest,
                size: d.size,
            });
        }
        blobs.sort_by_key(|b| b.part);
        if let Some(p) = Part::ALL
            .iter()
            .find(|p| !blobs.iter().any(|b| b.part == **p))
        {
            return Err(PayloadError::Missing(p.name()));
        }
        let text = |key: &'static str| -> Result<String, PayloadError> {
            let v = m
                .annotations
                .get(key)
                .ok_or_else(|| PayloadError::Annotation {
                    key,
                    reason: "missing".into(),
                })?;
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(PayloadError::Annotation {
                    key,
                    reason: "empty, longer than 256 bytes, or holding a control character".into(),
                });
            }
            Ok(v.clone())
        };
        let arch = match text(ANNOTATION_ARCH)?.as_str() {
            "amd64" => Arch::Amd64,
            "arm64" => Arch::Arm64,
            other => {
                return Err(PayloadError::Annotation {
                    key: ANNOTATION_ARCH,
                    reason: format!("`{other}` is not amd64 or arm64"),
                });
            }
        };
        let root_hash = text(ANNOTATION_ROOT_HASH)?;
        if root_hash.len() != 64
            || !root_hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(PayloadError::Annotation {
                key: ANNOTATION_ROOT_HASH,
                reason: "not 64 lower-case hex digits".into(),
            });
        }
        Ok(Payload {
            about: About {
                name: text(ANNOTATION_NAME)?,
                version: text(ANNOTATION_VERSION)?,
                arch,
                root_hash,
            },
            blobs,
        })
    }

    pub fn blob(&self, part: Part) -> &Blob {
        // parse() leaves exactly one blob per part, in Part::ALL's order.
        &self.blobs[Part::ALL.iter().position(|p| *p == part).unwrap_or(0)]
    }
}

/// The manifest `cairn push` writes for a build's parts (in [`Part::ALL`]'s order): deterministic, so the same
/// build pushed twice has the same digest.
pub fn manifest(about: &About, blobs: &[Blob], created: &str) -> Manifest {
    let annotations = BTreeMap::from([
        (ANNOTATION_NAME.to_string(), about.name.clone()),
        (ANNOTATION_VERSION.to_string(), about.version.clone()),
        (ANNOTATION_ARCH.to_string(), about.arch.oci().to_string()),
        (ANNOTATION_ROOT_HASH.to_string(), about.root_hash.clone()),
        (ANNOTATION_TITLE.to_string(), about.name.clone()),
        (ANNOTATION_OCI_VERSION.to_string(), about.version.clone()),
        (ANNOTATION_CREATED.to_string(), created.to_string()),
    ]);
    Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: Descriptor {
            media_type: EMPTY_CONFIG_MEDIA_TYPE.into(),
            digest: EMPTY_CONFIG_DIGEST.into(),
            size: EMPTY_CONFIG.len() as u64,
            data: Some("e30=".into()),
            annotations: BTreeMap::new(),
        },
        layers: blobs
            .iter()
            .map(|b| Descriptor {
                media_type: b.part.media_type().into(),
                digest: b.digest.to_string(),
                size: b.size,
                data: None,
                annotations: BTreeMap::from([(
                    ANNOTATION_TITLE.to_string(),
                    b.part.file_name().to_string(),
                )]),
            })
            .collect(),
        annotations,
    }
}

#[cfg(test)]
mod tests;
