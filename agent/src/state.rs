//! The agent's journal in /var/lib/cairn/state.json: which instance data the node was provisioned with, each
//! step's digest once it is applied, and the phases that completed. Saved after every step, atomically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::target::{Owner, Target, TargetError};

pub const STATE_DIR: &str = "/var/lib/cairn";
pub const STATE_FILE: &str = "/var/lib/cairn/state.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// `cmdline`, `fw_cfg`, `esp`, `ec2`, `file` or `none`.
    pub source: String,
    /// sha256 of the instance data's bytes (empty for none).
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Per phase: the instance data it applied.
    #[serde(default)]
    pub instance: BTreeMap<String, InstanceRecord>,
    /// Per phase, per step: the digest of what was applied.
    #[serde(default)]
    pub steps: BTreeMap<String, BTreeMap<String, String>>,
    /// Phases that completed.
    #[serde(default)]
    pub done: Vec<String>,
}

impl State {
    pub fn load(target: &Target) -> Result<State, TargetError> {
        match target.read(STATE_FILE)? {
            None => Ok(State {
                version: 1,
                ..State::default()
            }),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                TargetError::new(
                    STATE_FILE,
                    format!("unreadable agent state ({e}); remove it to provision again"),
                )
            }),
        }
    }

    pub fn save(&self, target: &Target) -> Result<(), TargetError> {
        target.ensure_dir(
            STATE_DIR,
            Owner {
                mode: 0o700,
                uid: 0,
                gid: 0,
            },
        )?;
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| TargetError::new(STATE_FILE, e.to_string()))?;
        json.push(b'\n');
        target.write(
            STATE_FILE,
            &json,
            Owner {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(())
    }

    /// Records a step as applied with `digest` and saves at once, so a rerun after a crash skips it. With
    /// `CAIRN_AGENT_CRASH_AFTER=STEP` (the crash tests) the process then dies as a power cut would.
    pub fn journal_step(
        &mut self,
        target: &Target,
        phase: &str,
        step: &str,
        digest: String,
    ) -> Result<(), TargetError> {
        self.steps
            .entry(phase.into())
            .or_default()
            .insert(step.into(), digest);
        self.save(target)?;
        if std::env::var("CAIRN_AGENT_CRASH_AFTER").is_ok_and(|s| s == step) {
            std::process::abort();
        }
        Ok(())
    }

    /// Records a phase as complete and saves.
    pub fn complete(&mut self, target: &Target, phase: &str) -> Result<(), TargetError> {
        self.done.push(phase.into());
        self.save(target)
    }

    pub fn is_done(&self, phase: &str) -> bool {
        self.done.iter().any(|p| p == phase)
    }

    pub fn step_digest(&self, phase: &str, step: &str) -> Option<&str> {
        self.steps
            .get(phase)
            .and_then(|s| s.get(step))
            .map(String::as_str)
    }
}
