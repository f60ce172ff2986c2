//! Report: `NAME.manifest.json`, what a build was made of and what it wrote. No timestamps: the same build gives
//! the same report.

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
    pub outputs: Vec<Output>,
    /// The disk formats' layout: root hash, partition table, what the root filesystem could not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::disk::DiskReport>,
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
