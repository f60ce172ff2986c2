//! Enabling and disabling units the way `systemctl enable/disable` does, by symlinks in /etc/systemd/system,
//! so the same code serves a root folder and the running system; and DHCP on every ethernet link through
//! systemd-networkd (which Debian ships disabled).

use std::collections::BTreeSet;

use cairn_profile::system::unit_file_name;

use super::StepError;
use crate::target::{Owner, Target};

const ETC: &str = "/etc/systemd/system";
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// A unit's file and its `[Install]` section.
struct Unit {
    name: String,
    path: String,
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    also: Vec<String>,
    alias: Vec<String>,
}

fn find(target: &Target, name: &str) -> Result<Unit, StepError> {
    for dir in UNIT_DIRS {
        let path = format!("{dir}/{name}");
        if let Some(text) = target.read_string(&path)? {
            let mut unit = Unit {
                name: name.to_string(),
                path,
                wanted_by: vec![],
                required_by: vec![],
                also: vec![],
                alias: vec![],
            };
            let mut in_install = false;
            for line in text.lines().map(str::trim) {
                if line.starts_with('[') {
                    in_install = line == "[Install]";
                    continue;
                }
                if !in_install {
                    continue;
                }
                if let Some((k, v)) = line.split_once('=') {
                    let values = v.split_whitespace().map(str::to_string);
                    match k.trim() {
                        "WantedBy" => unit.wanted_by.extend(values),
                        "RequiredBy" => unit.required_by.extend(values),
                        "Also" => unit.also.extend(values),
                        "Alias" => unit.alias.extend(values),
                        _ => {}
                    }
                }
            }
            return Ok(unit);
        }
    }
    Err(StepError(format!(
        "unit {name} not found in {}",
        UNIT_DIRS.join(", ")
    )))
}

/// The links `systemctl enable` would make for a unit and the units its `Also=` names.
fn enable_one(
    target: &Target,
    name: &str,
    seen: &mut BTreeSet<String>,
    changed: &mut bool,
) -> Result<(), StepError> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let unit = find(target, name)?;
    // A masked unit cannot start: enabling it unmasks it.
    if target
        .resolve(&format!("{ETC}/{name}"), false)
        .ok()
        .and_then(|p| std::fs::read_link(p).ok())
        .is_some_and(|t| t.as_os_str() == "/dev/null")
    {
        *changed |= target.remove(&format!("{ETC}/{name}"))?;
    }
    if unit.wanted_by.is_empty() && unit.required_by.is_empty() && unit.also.is_empty() {
        return Err(StepError(format!(
            "{name} has no [Install] section: it cannot be enabled"
        )));
    }
    for (dir, targets) in [("wants", &unit.wanted_by), ("requires", &unit.required_by)] {
        for t in targets {
            *changed |= target.symlink(&format!("{ETC}/{t}.{dir}/{}", unit.name), &unit.path)?;
        }
    }
    for alias in &unit.alias {
        *changed |= target.symlink(&format!("{ETC}/{alias}"), &unit.path)?;
    }
    for also in &unit.also {
        enable_one(target, also, seen, changed)?;
    }
    Ok(())
}

pub fn enable(target: &Target, names: &[String]) -> Result<bool, StepError> {
    let mut changed = false;
    let mut seen = BTreeSet::new();
    for n in names {
        enable_one(target, &unit_file_name(n), &mut seen, &mut changed)?;
    }
    Ok(changed)
}

/// Removes a unit's links from /etc; one still wanted by the read-only image's own links is masked instead.
pub fn disable(target: &Target, names: &[String]) -> Result<bool, StepError> {
    let mut changed = false;
    for n in names {
        let name = unit_file_name(n);
        let unit = find(target, &name)?;
        for (dir, targets) in [("wants", &unit.wanted_by), ("requires", &unit.required_by)] {
            for t in targets {
                changed |= target.remove(&format!("{ETC}/{t}.{dir}/{name}"))?;
            }
        }
        for alias in &unit.alias {
            changed |= target.remove(&format!("{ETC}/{alias}"))?;
        }
        let vendor_enabled = ["/usr/lib/systemd/system", "/lib/systemd/system"]
            .iter()
            .any(|d| {
                unit.wanted_by
                    .iter()
                    .any(|t| target.exists(&format!("{d}/{t}.wants/{name}")))
                    || unit
                        .required_by
                        .iter()
                        .any(|t| target.exists(&format!("{d}/{t}.requires/{name}")))
            });
        if vendor_enabled {
            changed |= target.symlink(&format!("{ETC}/{name}"), "/dev/null")?;
        }
    }
    Ok(changed)
}

/// After links changed on the running system: reload, and start or stop what changed, without waiting.
pub fn reload_live(enabled: &[String], disabled: &[String]) -> Result<(), StepError> {
    let run = |args: &[&str]| -> Result<(), StepError> {
        let out = std::process::Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| StepError(format!("running systemctl {}: {e}", args.join(" "))))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(StepError(format!(
                "systemctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    run(&["daemon-reload"])?;
    for u in enabled {
        run(&["start", "--no-block", &unit_file_name(u)])?;
    }
    for u in disabled {
        run(&["stop", "--no-block", &unit_file_name(u)])?;
    }
    Ok(())
}

pub const NETWORK_FILE: &str = "/etc/systemd/network/80-cairn-dhcp.network";
pub const NETWORK_UNITS: &[&str] = &[
    "systemd-networkd.service",
    "systemd-networkd-wait-online.service",
];

/// DHCP on every ethernet link, and systemd-networkd with its wait-online service enabled.
pub fn network(target: &Target) -> Result<bool, StepError> {
    let config = "# Written by cairn-agent: DHCP on every ethernet link.\n[Match]\nType=ether\nKind=!*\n\n[Network]\nDHCP=yes\n";
    let mut changed = target.write(NETWORK_FILE, config.as_bytes(), Owner::ROOT_0644)?;
    let units: Vec<String> = NETWORK_UNITS.iter().map(|s| s.to_string()).collect();
    changed |= enable(target, &units)?;
    Ok(changed)
}
