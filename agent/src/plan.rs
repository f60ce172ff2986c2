//! Plan: the steps of the system and network phases, from the profile merged with the instance data, and how
//! each applies itself. Planning is pure: nothing is touched until the engine applies a step.
//!
//! Only what depends on the machine is here: its id, its hostname, users and files (the instance data may add
//! to both). The time zone, sysctl and module files, unit enablement and the network file are the same on every
//! machine: the builder writes them into the image (builder/src/system.rs).

use cairn_profile::{FileEntry, Merged, User};
use sha2::{Digest, Sha256};

use crate::apply;
use crate::engine::{self, Done, Resume, StepError};
use crate::state::State;
use crate::target::Target;

#[derive(Debug, Clone)]
pub enum Action {
    MachineId,
    Hostname(String),
    Users(Vec<User>),
    Files(Vec<FileEntry>),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub action: Action,
}

/// What the system phase's steps share.
pub struct SystemContext {
    pub target: Target,
    /// The node's machine id, once the `machine-id` step has read or made it (the hostname template uses it).
    pub machine_id: String,
}

impl SystemContext {
    pub fn new(target: &Target) -> SystemContext {
        SystemContext {
            target: target.clone(),
            machine_id: String::new(),
        }
    }
}

impl Step {
    /// Identifies what the step applies: a step recorded with the same digest is done.
    pub fn digest(&self) -> String {
        let text = format!("{} {:?}", env!("CARGO_PKG_VERSION"), self.action);
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

impl engine::Step<SystemContext> for Step {
    fn name(&self) -> &'static str {
        self.name
    }

    fn resume(&self) -> Resume {
        match self.action {
            // Later steps need the id it reads: it runs every time (and changes nothing the second time).
            Action::MachineId => Resume::Always(self.digest()),
            _ => Resume::Digest(self.digest()),
        }
    }

    fn apply(&self, cx: &mut SystemContext, _state: &mut State) -> Result<Done, StepError> {
        let t = &cx.target;
        let changed = match &self.action {
            Action::MachineId => {
                let (id, changed) = apply::system::machine_id(t)?;
                cx.machine_id = id;
                changed
            }
            Action::Hostname(template) => apply::system::hostname(t, template, &cx.machine_id)?,
            Action::Users(u) => apply::users::apply(t, u)?,
            Action::Files(f) => apply::files::apply(t, f)?,
        };
        Ok(Done::changed(changed))
    }

    /// One line for `--dry-run`.
    fn describe(&self) -> String {
        match &self.action {
            Action::MachineId => {
                "keep /etc/machine-id, or make one if it is empty (root folders only)".into()
            }
            Action::Hostname(t) => {
                format!("hostname from template `{t}`, /etc/hostname and /etc/hosts")
            }
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
        }
    }
}

/// The system phase's steps (the network phase applies the same plan with what the network source adds).
pub fn system(merged: &Merged) -> Vec<Step> {
    let mut steps = vec![Step {
        name: "machine-id",
        action: Action::MachineId,
    }];
    if let Some(h) = &merged.hostname {
        steps.push(Step {
            name: "hostname",
            action: Action::Hostname(h.clone()),
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
    steps
}
