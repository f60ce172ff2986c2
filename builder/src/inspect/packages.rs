//! The Debian packages in an image: what dpkg's status file says is installed (`install ok installed`), parsed as
//! the SBOM parses it ([`crate::sbom::dpkg`]).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// The installed packages, sorted by name and arch.
pub fn from_status(status: &[u8]) -> Vec<Package> {
    crate::sbom::dpkg::installed(status)
        .into_iter()
        .map(|p| Package {
            name: p.name,
            version: p.version,
            arch: p.arch,
        })
        .collect()
}
