//! Report: `NAME.manifest.json`, what a build was made of and what it wrote. No timestamps: the same build gives
//! the same report.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_profile::Profile;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::disk::DiskReport;
use crate::output::{self, OutputError};
use crate::preload::{Archive, ResolvedPreload};
use crate::resolve::ResolvedRock;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the build report: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Output(#[from] OutputError),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub cairn_version: &'static str,
    pub name: String,
    pub version: String,
    pub arch: &'static str,
    pub profile: ProfileRef,
    pub source_date_epoch: u64,
    pub rocks: Vec<RockReport>,
    /// The `[[preload]]` rocks, stored in the root as OCI archives (not merged into it).
    pub preloads: Vec<PreloadReport>,
    pub outputs: Vec<Output>,
    /// The root's regular files by origin (each rock and layer, the `[[file]]`s, cairn's own) and the biggest.
    pub contents: crate::assemble::contents::Contents,
    /// The profile's machine-independent `[system]` settings, as written into the root.
    pub system: crate::system::Baked,
    /// The `[[snap]]` files stored in the image, in install order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snaps: Vec<crate::snaps::SnapReport>,
    /// The disk formats' layout: root hash, partition table, what the root filesystem could not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskReport>,
    /// What the agent will hand the distribution, per role: present when the profile has `[kubernetes]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesReport>,
}

/// What a build was made of and wrote.
pub struct Made<'a> {
    pub profile: &'a Profile,
    /// The profile file as given.
    pub profile_file: &'a Path,
    pub epoch: u64,
    pub rocks: &'a [ResolvedRock],
    pub preloads: &'a [ResolvedPreload],
    /// Each preload's archive, in the order of `preloads`.
    pub archives: &'a [Archive],
    pub outputs: Vec<Output>,
    pub contents: crate::assemble::contents::Contents,
    pub system: crate::system::Baked,
    pub snaps: Vec<crate::snaps::SnapReport>,
    pub disk: Option<DiskReport>,
}

/// The sha256 of the profile's text, as the report and the disk's identifiers take it.
pub fn profile_sha256(profile: &Profile) -> String {
    hex::encode(Sha256::digest(profile.text.as_bytes()))
}

impl Report {
    pub fn new(made: Made<'_>) -> Report {
        let Made {
            profile,
            profile_file,
            epoch,
            rocks,
            preloads,
            archives,
            outputs,
            contents,
            system,
            snaps,
            disk,
        } = made;
        Report {
            cairn_version: env!("CARGO_PKG_VERSION"),
            name: profile.name.clone(),
            version: profile.version.clone(),
            arch: profile.arch.oci(),
            profile: ProfileRef {
                file: profile_file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: profile_sha256(profile),
            },
            source_date_epoch: epoch,
            rocks: rocks.iter().map(RockReport::new).collect(),
            preloads: preloads
                .iter()
                .zip(archives)
                .map(|(p, a)| PreloadReport::new(p, a))
                .collect(),
            outputs,
            contents,
            system,
            snaps,
            disk,
            kubernetes: profile.kubernetes.as_ref().map(KubernetesReport::new),
        }
    }

    /// `NAME.manifest.json`.
    pub fn file_name(&self) -> String {
        format!("{}.manifest.json", self.name)
    }

    /// Stages the report with the outputs it describes: committed last, with them.
    pub fn stage(&self, stage: &mut output::Stage) -> Result<(), ReportError> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        stage.add_bytes(&self.file_name(), &json)?;
        Ok(())
    }
}

/// The hardening preset and the effective component arguments (preset, then `extra-args`, then `remove-args`;
/// `null` removes a flag) for each role a node of this image can take: the instance data may change the role.
#[derive(Debug, Serialize)]
pub struct KubernetesReport {
    pub distribution: &'static str,
    pub role: &'static str,
    pub hardening: &'static str,
    pub sysctls: BTreeMap<&'static str, &'static str>,
    pub arguments: BTreeMap<&'static str, BTreeMap<&'static str, BTreeMap<String, Option<String>>>>,
}

impl KubernetesReport {
    pub fn new(k: &cairn_profile::kubernetes::Kubernetes) -> KubernetesReport {
        use cairn_profile::Role;
        let arguments = [Role::ControlPlane, Role::Worker]
            .into_iter()
            .map(|role| {
                let args = cairn_profile::hardening::arguments(k, role)
                    .into_iter()
                    .map(|(component, flags)| (component.name(), flags))
                    .collect();
                (role.name(), args)
            })
            .collect();
        KubernetesReport {
            distribution: k.distribution.name(),
            role: k.role.name(),
            hardening: k.hardening.name(),
            sysctls: k.hardening.sysctls().iter().copied().collect(),
            arguments,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProfileRef {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct RockReport {
    pub key: String,
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<LayerReport>,
}

impl RockReport {
    fn new(r: &ResolvedRock) -> RockReport {
        RockReport {
            key: r.key.clone(),
            reference: r.reference.to_string(),
            index_digest: r.index_digest.as_ref().map(ToString::to_string),
            manifest_digest: r.manifest_digest.to_string(),
            config_digest: r.config_digest.to_string(),
            layers: r
                .layers
                .iter()
                .map(|l| LayerReport {
                    digest: l.digest.to_string(),
                    diff_id: l.diff_id.to_string(),
                    media_type: l.media_type.clone(),
                    size: l.size,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PreloadReport {
    /// The pinned reference (`preload[i].rock`).
    pub rock: String,
    /// The name containerd knows the image by.
    pub name: String,
    /// The pinned index, when the pin is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// The profile arch's manifest.
    pub manifest_digest: String,
    /// The archive's path in the root.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl PreloadReport {
    fn new(p: &ResolvedPreload, a: &Archive) -> PreloadReport {
        PreloadReport {
            rock: p.reference().to_string(),
            name: p.name.clone(),
            index_digest: p.rock.index_digest.as_ref().map(ToString::to_string),
            manifest_digest: p.rock.manifest_digest.to_string(),
            path: p.root_path(),
            size: a.size,
            sha256: a.sha256.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct Output {
    pub format: &'static str,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}
