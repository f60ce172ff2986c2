//! The files a build adds on top of the rocks: the profile's `[[file]]`s, then cairn's own (the agent, the baked
//! profile, its units), and an emptied `/etc/machine-id`.

use std::path::Path;
use std::sync::Arc;

use cairn_profile::{FileContent, Profile, contract};

use crate::assemble::tree::{Data, Meta, New, Special, Tree, TreeError};

/// Unit files and the `.wants` folder that enables each.
const UNITS: &[(&str, &str, &str)] = &[
    (
        "cairn-agent.service",
        include_str!("units/cairn-agent.service"),
        "sysinit.target.wants",
    ),
    (
        "cairn-agent-network.service",
        include_str!("units/cairn-agent-network.service"),
        "multi-user.target.wants",
    ),
];

/// Only in images whose profile has `[[snap]]`s.
const SNAPS_UNIT: (&str, &str, &str) = (
    "cairn-agent-snaps.service",
    include_str!("units/cairn-agent-snaps.service"),
    "multi-user.target.wants",
);

/// Only in images whose profile has `[kubernetes]`.
const KUBERNETES_UNIT: (&str, &str, &str) = (
    "cairn-kubernetes.service",
    include_str!("units/cairn-kubernetes.service"),
    "multi-user.target.wants",
);

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("file {path}: {source}")]
    Tree { path: String, source: TreeError },
    #[error("file {path}: source {}: {source}", from.display())]
    Source {
        path: String,
        from: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn put(tree: &mut Tree, path: &str, new: New) -> Result<(), FilesError> {
    tree.put(path.trim_start_matches('/').as_bytes(), new)
        .map_err(|source| FilesError::Tree {
            path: path.to_string(),
            source,
        })
}

/// Writes the profile's `[[file]]`s, in order.
pub fn add_profile_files(tree: &mut Tree, profile: &Profile) -> Result<(), FilesError> {
    for f in &profile.files {
        let meta = Meta::new(f.mode, u64::from(f.uid), u64::from(f.gid));
        let data = match &f.content {
            FileContent::Inline(text) => Data::Bytes(Arc::from(text.as_bytes())),
            FileContent::Source(p) => {
                let size = std::fs::metadata(p)
                    .map_err(|source| FilesError::Source {
                        path: f.path.clone(),
                        from: p.clone(),
                        source,
                    })?
                    .len();
                Data::Host {
                    path: p.clone(),
                    size,
                }
            }
        };
        put(tree, &f.path, New::File(meta, data))?;
    }
    Ok(())
}

/// Adds cairn's own files, last, so nothing from a rock or the profile can shadow them.
/// Every unit file cairn may install, as a path in the root (the SBOM lists those an image has).
pub fn unit_paths() -> impl Iterator<Item = String> {
    UNITS
        .iter()
        .chain([&SNAPS_UNIT, &KUBERNETES_UNIT])
        .map(|(name, _, _)| format!("usr/lib/systemd/system/{name}"))
}

pub fn add_cairn_files(tree: &mut Tree, profile: &Profile, agent: &Path) -> Result<(), FilesError> {
    let agent_size = std::fs::metadata(agent)
        .map_err(|source| FilesError::Source {
            path: contract::AGENT_IN_ROOT.into(),
            from: agent.to_path_buf(),
            source,
        })?
        .len();
    put(
        tree,
        contract::AGENT_IN_ROOT,
        New::File(
            Meta::new(0o755, 0, 0),
            Data::Host {
                path: agent.to_path_buf(),
                size: agent_size,
            },
        ),
    )?;
    put(
        tree,
        contract::BAKED_PROFILE_IN_ROOT,
        New::File(
            Meta::new(0o644, 0, 0),
            Data::Bytes(Arc::from(profile.text.as_bytes())),
        ),
    )?;
    let snaps = (!profile.snaps.is_empty()).then_some(SNAPS_UNIT);
    let kubernetes = profile.kubernetes.is_some().then_some(KUBERNETES_UNIT);
    for (name, text, wants) in UNITS.iter().chain(snaps.iter()).chain(kubernetes.iter()) {
        let unit = format!("usr/lib/systemd/system/{name}");
        put(
            tree,
            &unit,
            New::File(
                Meta::new(0o644, 0, 0),
                Data::Bytes(Arc::from(text.as_bytes())),
            ),
        )?;
        put(
            tree,
            &format!("usr/lib/systemd/system/{wants}/{name}"),
            New::Other(
                Meta::new(0o777, 0, 0),
                Special::Symlink(format!("../{name}").into_bytes()),
            ),
        )?;
    }
    // A golden image must not carry one machine's identity: systemd makes a new one at first boot.
    if !tree.set_file_data(b"etc/machine-id", Data::Bytes(Arc::from(&b""[..]))) {
        put(
            tree,
            "etc/machine-id",
            New::File(Meta::new(0o444, 0, 0), Data::Bytes(Arc::from(&b""[..]))),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit files are plain text: they must run the agent and wait for the profile where the contract puts them.
    #[test]
    fn units_name_the_contract_paths() {
        for (name, text, _) in UNITS.iter().chain([&KUBERNETES_UNIT]) {
            let line = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or_else(|| panic!("{name}: no {key}"))
            };
            assert!(
                line("ExecStart=").starts_with(&format!("{} run ", contract::AGENT)),
                "{name}"
            );
            assert_eq!(
                line("ConditionPathExists="),
                contract::BAKED_PROFILE,
                "{name}"
            );
        }
    }
}
