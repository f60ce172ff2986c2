//! Report: `NAME.manifest.json`, what a build was made of and what it wrote. No timestamps: the same build gives
//! the same report.

use std::collections::BTreeMap;

use serde::Serialize;

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
    /// The profile's machine-independent `[system]` settings, as written into the root.
    pub system: crate::system::Baked,
    /// The disk formats' layout: root hash, partition table, what the root filesystem could not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::disk::DiskReport>,
    /// What the agent will hand the distribution, per role: present when the profile has `[kubernetes]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesReport>,
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
