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

/// The folder whose symlinks make boot-complete.target need a unit: an update's boot is good only once each of
/// the agent's phases is done.
const HEALTH_REQUIRES: &str = "boot-complete.target.requires";

/// Health on counted boots: reboot when boot-complete.target fails, or when it is not reached in time.
const HEALTH_UNITS: &[(&str, &str, Option<&str>)] = &[
    (
        "cairn-boot-check.service",
        include_str!("units/cairn-boot-check.service"),
        Some("multi-user.target.wants"),
    ),
    (
        "cairn-boot-deadline.timer",
        include_str!("units/cairn-boot-deadline.timer"),
        Some("timers.target.wants"),
    ),
    (
        "cairn-boot-deadline.service",
        include_str!("units/cairn-boot-deadline.service"),
        None,
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

/// Only in images with both: the distribution comes from the snaps, so a failed snaps phase stops the
/// Kubernetes phase (systemd's "dependency failed") instead of letting it fail at a missing `k8s`; both run again
/// on the next boot, in order.
const KUBERNETES_NEEDS_SNAPS: (&str, &str) = (
    "cairn-kubernetes.service.d/10-snaps.conf",
    "# Written by cairn: the profile's [[snap]]s carry the distribution; without them there is nothing to start.\n[Unit]\nRequires=cairn-agent-snaps.service\n",
);

/// The unit files an image gets, paths under `usr/lib/systemd/system`, with the `.wants` folder that enables
/// each (none for a drop-in).
fn units(snaps: bool, kubernetes: bool) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    let mut out: Vec<_> = UNITS.iter().map(|(n, t, w)| (*n, *t, Some(*w))).collect();
    if snaps {
        out.push((SNAPS_UNIT.0, SNAPS_UNIT.1, Some(SNAPS_UNIT.2)));
    }
    if kubernetes {
        out.push((
            KUBERNETES_UNIT.0,
            KUBERNETES_UNIT.1,
            Some(KUBERNETES_UNIT.2),
        ));
    }
    if snaps && kubernetes {
        out.push((KUBERNETES_NEEDS_SNAPS.0, KUBERNETES_NEEDS_SNAPS.1, None));
    }
    out.extend_from_slice(HEALTH_UNITS);
    out
}

/// The agent's phases: what boot-complete.target needs.
fn is_phase(name: &str) -> bool {
    name.starts_with("cairn-agent") || name == KUBERNETES_UNIT.0
}

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
    units(true, true)
        .into_iter()
        .map(|(name, _, _)| format!("usr/lib/systemd/system/{name}"))
}

pub fn add_cairn_files(
    tree: &mut Tree,
    profile: &Profile,
    agent: &Path,
    secure_boot_cert: Option<&[u8]>,
) -> Result<(), FilesError> {
    if let Some(cert) = secure_boot_cert {
        put(
            tree,
            contract::SECURE_BOOT_CERT_IN_ROOT,
            New::File(Meta::new(0o644, 0, 0), Data::Bytes(Arc::from(cert))),
        )?;
    }
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
    for (name, text, wants) in units(!profile.snaps.is_empty(), profile.kubernetes.is_some()) {
        let unit = format!("usr/lib/systemd/system/{name}");
        put(
            tree,
            &unit,
            New::File(
                Meta::new(0o644, 0, 0),
                Data::Bytes(Arc::from(text.as_bytes())),
            ),
        )?;
        let Some(wants) = wants else { continue };
        let links = [Some(wants), is_phase(name).then_some(HEALTH_REQUIRES)];
        for dir in links.into_iter().flatten() {
            put(
                tree,
                &format!("usr/lib/systemd/system/{dir}/{name}"),
                New::Other(
                    Meta::new(0o777, 0, 0),
                    Special::Symlink(format!("../{name}").into_bytes()),
                ),
            )?;
        }
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

    #[test]
    fn the_kubernetes_phase_requires_the_snaps_phase_only_when_both_exist() {
        let drop_in = |snaps, kubernetes| {
            units(snaps, kubernetes)
                .into_iter()
                .find(|(n, _, _)| n.starts_with("cairn-kubernetes.service.d/"))
        };
        let (name, text, wants) = drop_in(true, true).expect("the drop-in");
        assert_eq!(name, "cairn-kubernetes.service.d/10-snaps.conf");
        assert!(
            text.contains("[Unit]\nRequires=cairn-agent-snaps.service\n"),
            "{text}"
        );
        assert_eq!(wants, None);
        // Requires= on a unit the image lacks would stop the Kubernetes phase for good.
        assert!(drop_in(false, true).is_none());
        assert!(drop_in(true, false).is_none());
        let names: Vec<&str> = units(true, true).iter().map(|u| u.0).collect();
        assert!(names.contains(&"cairn-agent-snaps.service"), "{names:?}");
        // The snaps unit orders itself before the Kubernetes one, which the Requires= alone would not.
        assert!(SNAPS_UNIT.1.contains("Before=cairn-kubernetes.service"));
    }

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
