//! Plan: the steps a phase applies, from the profile merged with the instance data. Pure: nothing is touched.

use std::collections::BTreeMap;

use cairn_profile::{FileEntry, Merged, Profile, User};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub enum Action {
    MachineId,
    Hostname(String),
    Timezone(String),
    Sysctl(BTreeMap<String, String>),
    Modules(Vec<String>),
    Users(Vec<User>),
    Files(Vec<FileEntry>),
    Services {
        enable: Vec<String>,
        disable: Vec<String>,
    },
    Network,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub action: Action,
}

impl Step {
    /// Identifies what the step applies: a step recorded with the same digest is done.
    pub fn digest(&self) -> String {
        let text = format!("{} {:?}", env!("CARGO_PKG_VERSION"), self.action);
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// One line for `--dry-run`.
    pub fn describe(&self) -> String {
        match &self.action {
            Action::MachineId => {
                "keep /etc/machine-id, or make one if it is empty (root folders only)".into()
            }
            Action::Hostname(t) => {
                format!("hostname from template `{t}`, /etc/hostname and /etc/hosts")
            }
            Action::Timezone(z) => format!("time zone {z}: /etc/localtime and /etc/timezone"),
            Action::Sysctl(m) => format!(
                "/etc/sysctl.d/90-cairn.conf: {}",
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Action::Modules(m) => format!("/etc/modules-load.d/cairn.conf: {}", m.join(" ")),
            Action::Users(u) => format!(
                "users: {}",
                u.iter()
                    .map(|u| format!(
                        "{} (groups {:?}, {} ssh keys)",
                        u.name,
                        u.groups,
                        u.ssh_keys.len()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::Files(f) => {
                format!(
                    "files: {}",
                    f.iter()
                        .map(|f| format!("{} {:o}", f.path, f.mode))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Action::Services { enable, disable } => {
                format!("services: enable {enable:?}, disable {disable:?}")
            }
            Action::Network => {
                "DHCP on every ethernet link; enable systemd-networkd and its wait-online service"
                    .into()
            }
        }
    }
}

pub fn plan(profile: &Profile, merged: &Merged) -> Vec<Step> {
    let mut steps = vec![Step {
        name: "machine-id",
        action: Action::MachineId,
    }];
    let s = &profile.system;
    if let Some(h) = &merged.hostname {
        steps.push(Step {
            name: "hostname",
            action: Action::Hostname(h.clone()),
        });
    }
    if let Some(z) = &s.timezone {
        steps.push(Step {
            name: "timezone",
            action: Action::Timezone(z.clone()),
        });
    }
    // Modules first: some settings exist only once their module is loaded (net.bridge.* needs br_netfilter).
    if !s.modules.is_empty() {
        steps.push(Step {
            name: "modules",
            action: Action::Modules(s.modules.clone()),
        });
    }
    if !s.sysctl.is_empty() {
        steps.push(Step {
            name: "sysctl",
            action: Action::Sysctl(s.sysctl.clone()),
        });
    }
    if !merged.users.is_empty() {
        steps.push(Step {
            name: "users",
            action: Action::Users(merged.users.clone()),
        });
    }
    if !merged.files.is_empty() {
        steps.push(Step {
            name: "files",
            action: Action::Files(merged.files.clone()),
        });
    }
    if !s.services.enable.is_empty() || !s.services.disable.is_empty() {
        steps.push(Step {
            name: "services",
            action: Action::Services {
                enable: s.services.enable.clone(),
                disable: s.services.disable.clone(),
            },
        });
    }
    steps.push(Step {
        name: "network",
        action: Action::Network,
    });
    steps
}
