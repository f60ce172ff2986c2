//! Push: a build's update payload ([`cairn_profile::payload`]) as one OCI artifact, to a registry
//! (`REGISTRY/REPO[:TAG]`) or an OCI image layout folder (`oci-layout:DIR[:TAG]`). The tag defaults to the
//! profile's version. What is pushed is what `cairn build` wrote, checked against its report and the profile
//! first: a build of another profile, or a damaged output, is refused before anything is sent. The manifest is
//! deterministic, so the same build pushed twice, or to two places, has one digest.

pub mod layout;
pub mod parts;
pub mod upload;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_profile::payload::{self, Part};
use cairn_profile::reference::check_tag;
use cairn_profile::{Digest, Profile, Reference};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::inspect::esp::EspError;
use crate::inspect::image::ImageError;
use crate::inspect::outputs::{Build, OutputsError};
use crate::progress::step;

/// The prefix of an OCI image layout target.
pub const LAYOUT_PREFIX: &str = "oci-layout:";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Profile(#[from] cairn_profile::Error),
    #[error(
        "`{target}`: not a push target: {reason} (expected REGISTRY/REPO[:TAG] or {LAYOUT_PREFIX}DIR[:TAG])"
    )]
    Target { target: String, reason: String },
    #[error(transparent)]
    Outputs(#[from] OutputsError),
    #[error(
        "{}: built from another profile (sha256 {built}) than {} now is ({now}): build it again with `cairn build {}`",
        report.display(),
        profile.display(),
        profile.display()
    )]
    OtherProfile {
        report: PathBuf,
        profile: PathBuf,
        built: String,
        now: String,
    },
    #[error(
        "{}: the build wrote no disk: an update payload is read from the raw or qcow2 image (image.formats)",
        report.display()
    )]
    NoDisk { report: PathBuf },
    #[error(
        "{}: made by a cairn without A/B slots or unified kernel images (no disk.slot or disk.boot.uki in the report): build it again",
        report.display()
    )]
    OldReport { report: PathBuf },
    #[error("{}: {what}: the outputs are damaged or from another build", report.display())]
    Damaged { report: PathBuf, what: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error("extracting {what} from the EFI system partition: {source}")]
    Extract {
        what: String,
        source: Box<cairn_profile::command::CommandError>,
    },
    #[error("{}: not an OCI image layout: {reason}", dir.display())]
    NotALayout { dir: PathBuf, reason: String },
    #[error("{target}: {what}: {reason}")]
    Registry {
        target: String,
        what: String,
        reason: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl PushError {
    /// A wrong argument, profile or build folder (exit 2), rather than a failure on the way (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            PushError::Profile(_)
            | PushError::Target { .. }
            | PushError::OtherProfile { .. }
            | PushError::NoDisk { .. }
            | PushError::OldReport { .. }
            | PushError::NotALayout { .. } => true,
            PushError::Outputs(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

/// Where a payload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Registry { reference: Reference, tag: String },
    Layout { dir: PathBuf, tag: String },
}

impl Target {
    /// Parses `REGISTRY/REPO[:TAG]` or `oci-layout:DIR[:TAG]`; without a tag, `default_tag`.
    pub fn parse(text: &str, default_tag: &str) -> Result<Target, PushError> {
        let bad = |reason: String| PushError::Target {
            target: text.to_string(),
            reason,
        };
        let tag_or_default = |tag: Option<String>| -> Result<String, PushError> {
            let tag = tag.unwrap_or_else(|| default_tag.to_string());
            check_tag(&tag).map_err(|_| {
                bad(format!(
                    "`{tag}` is not a tag (letters, digits, _ . -, at most 128): name one with :TAG"
                ))
            })?;
            Ok(tag)
        };
        if let Some(rest) = text.strip_prefix(LAYOUT_PREFIX) {
            // The tag is after a ':' in the last path component.
            let last = rest.rfind('/').map_or(0, |i| i + 1);
            let (dir, tag) = match rest[last..].rfind(':') {
                Some(c) => (&rest[..last + c], Some(rest[last + c + 1..].to_string())),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad("no folder".into()));
            }
            return Ok(Target::Layout {
                dir: PathBuf::from(dir),
                tag: tag_or_default(tag)?,
            });
        }
        let reference = Reference::parse_unpinned(text).map_err(|e| bad(e.to_string()))?;
        if reference.digest.is_some() {
            return Err(bad(
                "a push names a tag, not a digest: the digest is what it prints".into(),
            ));
        }
        let tag = tag_or_default(reference.tag.clone())?;
        Ok(Target::Registry { reference, tag })
    }

    /// `REGISTRY/REPO` or `oci-layout:DIR`, without the tag.
    pub fn name(&self) -> String {
        match self {
            Target::Registry { reference, .. } => {
                format!("{}/{}", reference.registry, reference.repository)
            }
            Target::Layout { dir, .. } => format!("{LAYOUT_PREFIX}{}", dir.display()),
        }
    }

    pub fn tag(&self) -> &str {
        match self {
            Target::Registry { tag, .. } | Target::Layout { tag, .. } => tag,
        }
    }
}

/// One part as pushed.
#[derive(Debug, Clone, Serialize)]
pub struct PushedPart {
    pub part: &'static str,
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
    /// False when the target already held it.
    pub sent: bool,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    /// `REGISTRY/REPO@sha256:DIGEST` or `oci-layout:DIR@sha256:DIGEST`: what a node updates from.
    pub reference: String,
    pub tag: String,
    pub digest: String,
    pub name: String,
    pub version: String,
    pub root_hash: String,
    pub parts: Vec<PushedPart>,
    /// The payload's bytes, all parts.
    pub bytes: u64,
    /// The bytes sent (the target lacked them).
    pub sent: u64,
    pub seconds: f64,
}

/// Pushes the build of `profile` in `out` to `target`.
pub async fn push(profile_path: &Path, target: &str, out: &Path) -> Result<Pushed, PushError> {
    let start = Instant::now();
    let profile = Profile::load(profile_path)?;
    let target = Target::parse(target, &profile.version)?;
    let build = Build::open(&out.join(&profile.name))?;
    let gathered = step("payload", || parts::gather(&profile, &build))?;
    let blobs = gathered.blobs();
    let manifest = payload::manifest(&gathered.about, &blobs, &gathered.created);
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| PushError::Io {
        path: build.report_path.clone(),
        source: std::io::Error::other(e),
    })?;
    let digest = Digest::from_sha256(&Sha256::digest(&manifest_bytes));
    let mut sent = Vec::new();
    match &target {
        Target::Registry { reference, tag } => {
            let upload = upload::Upload::new(reference, tag).await?;
            upload.put_empty_config().await?;
            for source in &gathered.sources {
                sent.push(upload.put(source).await?);
            }
            upload.put_manifest(manifest_bytes.clone()).await?;
        }
        Target::Layout { dir, tag } => {
            let layout = layout::Layout::open(dir)?;
            layout.put_bytes(payload::EMPTY_CONFIG)?;
            for source in &gathered.sources {
                let have = layout.has(&source.digest, source.size);
                if !have {
                    step(source.part.name(), || layout.put(source))?;
                }
                sent.push(!have);
            }
            layout.put_bytes(&manifest_bytes)?;
            layout.tag(tag, &digest, manifest_bytes.len() as u64)?;
        }
    }
    let parts: Vec<PushedPart> = gathered
        .sources
        .iter()
        .zip(&sent)
        .map(|(s, sent)| PushedPart {
            part: s.part.name(),
            media_type: s.part.media_type(),
            digest: s.digest.to_string(),
            size: s.size,
            sent: *sent,
        })
        .collect();
    debug_assert_eq!(parts.len(), Part::ALL.len());
    Ok(Pushed {
        reference: format!("{}@{digest}", target.name()),
        tag: target.tag().to_string(),
        digest: digest.to_string(),
        name: gathered.about.name.clone(),
        version: gathered.about.version.clone(),
        root_hash: gathered.about.root_hash.clone(),
        bytes: gathered.bytes(),
        sent: parts.iter().filter(|p| p.sent).map(|p| p.size).sum(),
        parts,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Target, String> {
        Target::parse(t, "2.0").map_err(|e| e.to_string())
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse("127.0.0.1:5000/edge/node").unwrap(),
            Target::Registry {
                reference: Reference::parse_unpinned("127.0.0.1:5000/edge/node").unwrap(),
                tag: "2.0".into()
            }
        );
        assert_eq!(
            parse("registry.example/edge/node:stable").unwrap().tag(),
            "stable"
        );
        assert_eq!(
            parse("oci-layout:/media/usb/updates").unwrap(),
            Target::Layout {
                dir: "/media/usb/updates".into(),
                tag: "2.0".into()
            }
        );
        assert_eq!(
            parse("oci-layout:/media/usb:x/updates:v2").unwrap(),
            Target::Layout {
                dir: "/media/usb:x/updates".into(),
                tag: "v2".into()
            }
        );
        assert_eq!(
            parse("oci-layout:updates:v3").unwrap().name(),
            "oci-layout:updates"
        );
    }

    #[test]
    fn bad_targets_say_why() {
        let digest = format!("r.example/a@sha256:{}", "0".repeat(64));
        assert!(
            parse(&digest)
                .unwrap_err()
                .contains("names a tag, not a digest")
        );
        assert!(parse("oci-layout::v1").unwrap_err().contains("no folder"));
        assert!(
            parse("r.example/a:-x")
                .unwrap_err()
                .starts_with("`r.example/a:-x`: not a push target")
        );
        let e = Target::parse("r.example/a", "2.0 beta")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`2.0 beta` is not a tag"), "{e}");
        assert!(
            e.contains("REGISTRY/REPO[:TAG] or oci-layout:DIR[:TAG]"),
            "{e}"
        );
    }
}
