//! `cairn init`: a commented profile to start from, written into the current folder as `cairn.toml`. The text is
//! checked as a profile before it is written, and an existing file is never replaced unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_profile::Profile;

/// The file `cairn init` writes.
pub const FILE: &str = "cairn.toml";

const NODE: &str = include_str!("node.toml");
const KUBERNETES: &str = include_str!("kubernetes.toml");

/// What the profile describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    ControlPlane,
    Worker,
}

impl Kind {
    pub fn default_name(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::ControlPlane => "control-plane",
            Kind::Worker => "worker",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{}: already exists: pass --force to replace it", .0.display())]
    Exists(PathBuf),
    #[error(
        "`{0}` is not a profile name: 1 to 63 of a-z, 0-9 and -, not starting or ending with -"
    )]
    Name(String),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The profile text for `kind`, named `name`.
pub fn profile_text(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Node => NODE.replace("{name}", name),
        Kind::ControlPlane | Kind::Worker => {
            let (role, short, cluster) = if kind == Kind::ControlPlane {
                (
                    "control-plane",
                    "cp",
                    "pod-cidr = \"10.1.0.0/16\"\nservice-cidr = \"10.152.183.0/24\"\n\n\
                     [kubernetes.features]           # network, dns, ingress, load-balancer, local-storage, gateway, metrics-server\n\
                     network = true\ndns = true\n",
                )
            } else {
                // A worker takes the cluster's settings from the control plane it joins.
                ("worker", "worker", "")
            };
            KUBERNETES
                .replace("{name}", name)
                .replace("{role}", role)
                .replace("{short}", short)
                .replace("{cluster}", cluster)
        }
    }
}

/// Writes `dir/cairn.toml`; returns its path.
pub fn write(
    dir: &Path,
    kind: Kind,
    name: Option<&str>,
    force: bool,
) -> Result<PathBuf, InitError> {
    let name = name.unwrap_or(kind.default_name());
    let path = dir.join(FILE);
    let text = profile_text(kind, name);
    // The template is known good; a bad name is what can make it invalid.
    if Profile::parse(&path, text.clone()).is_err() {
        return Err(InitError::Name(name.to_string()));
    }
    if path.exists() && !force {
        return Err(InitError::Exists(path));
    }
    let write_err = |source| InitError::Write {
        path: path.clone(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-init-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(text.as_bytes()).map_err(write_err)?;
    let persisted = if force {
        tmp.persist(&path).map(drop)
    } else {
        // Never replaces a file that appeared meanwhile.
        tmp.persist_noclobber(&path).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(path.clone())
        } else {
            write_err(e.error)
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_a_valid_profile_of_its_kind() {
        for kind in [Kind::Node, Kind::ControlPlane, Kind::Worker] {
            let text = profile_text(kind, kind.default_name());
            let p = Profile::parse(Path::new("cairn.toml"), text).expect("valid");
            assert_eq!(p.name, kind.default_name());
            assert_eq!(
                p.base.reference.digest.as_ref().map(|d| d.is_placeholder()),
                Some(true)
            );
            match kind {
                Kind::Node => assert!(p.kubernetes.is_none()),
                Kind::ControlPlane => assert_eq!(
                    p.kubernetes.expect("kubernetes").role,
                    cairn_profile::Role::ControlPlane
                ),
                Kind::Worker => {
                    assert_eq!(
                        p.kubernetes.expect("kubernetes").role,
                        cairn_profile::Role::Worker
                    )
                }
            }
        }
    }
}
