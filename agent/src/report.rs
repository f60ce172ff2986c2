//! Report: the status JSON and the console lines.
//!
//! When a phase ends: `cairn-agent: PHASE ready {json}` or `cairn-agent: PHASE failed {json}`; when the last phase
//! the node needs ends: `cairn-agent: ready {json}` (or `failed` as soon as a phase fails), carrying every phase's
//! steps. The same JSON is kept in /var/lib/cairn/status.json and /run/cairn/status.json.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::engine::{Outcome, Phase};
use crate::target::{Owner, Target, TargetError};

pub const STATUS_FILE: &str = "/var/lib/cairn/status.json";
pub const RUN_STATUS_FILE: &str = "/run/cairn/status.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub phase: Phase,
    pub name: String,
    pub outcome: Outcome,
    pub ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// What the step found or did, when that is worth reporting (the initrd's /var size).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// The instance data's source, or `none`.
    pub instance: String,
    pub steps: Vec<StepReport>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

impl Status {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// This boot's status so far (the initrd's phase and earlier phases included), with `self`'s steps replacing
    /// any earlier report of the same phase.
    pub fn merged_with_boot(&self, target: &Target) -> Status {
        let earlier: Option<Status> = target
            .read(RUN_STATUS_FILE)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut steps: Vec<StepReport> = earlier
            .map(|s| {
                s.steps
                    .into_iter()
                    .filter(|st| st.phase != self.phase)
                    .collect()
            })
            .unwrap_or_default();
        steps.extend(self.steps.iter().cloned());
        Status {
            steps,
            ..self.clone()
        }
    }

    pub fn save(&self, target: &Target) -> Result<(), TargetError> {
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| TargetError::new(STATUS_FILE, e.to_string()))?;
        json.push(b'\n');
        target.ensure_dir(
            "/var/lib/cairn",
            Owner {
                mode: 0o700,
                uid: 0,
                gid: 0,
            },
        )?;
        target.write(
            STATUS_FILE,
            &json,
            Owner {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        )?;
        target.ensure_dir(
            "/run/cairn",
            Owner {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )?;
        target.write(RUN_STATUS_FILE, &json, Owner::ROOT_0644)?;
        Ok(())
    }
}

/// Where the lines go: the console on the running system, stdout for a root folder.
pub struct Console {
    live: bool,
}

impl Console {
    pub fn new(live: bool) -> Console {
        Console { live }
    }

    pub fn line(&self, text: &str) {
        let line = format!("cairn-agent: {text}\n");
        if self.live
            && let Ok(mut console) = std::fs::OpenOptions::new()
                .append(true)
                .open("/dev/console")
            && console.write_all(line.as_bytes()).is_ok()
        {
            return;
        }
        print!("{line}");
        let _ = std::io::stdout().flush();
    }
}
