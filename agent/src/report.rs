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

#[cfg(test)]
mod proptests {
    use std::fs;

    use proptest::prelude::*;

    use super::*;
    use crate::datasources::test_support::TempDir;
    use crate::proptest_support::config;

    fn phase() -> impl Strategy<Value = Phase> {
        prop::sample::select(vec![
            Phase::Init,
            Phase::System,
            Phase::Network,
            Phase::Kubernetes,
        ])
    }

    fn status() -> impl Strategy<Value = Status> {
        let step = (
            phase(),
            "[a-z-]{1,8}",
            any::<u64>(),
            prop::option::of(any::<String>()),
        )
            .prop_map(|(phase, name, ms, error)| StepReport {
                phase,
                name,
                outcome: Outcome::Applied,
                ms,
                error,
                detail: None,
            });
        (phase(), "[a-z]{0,8}", prop::collection::vec(step, 0..4)).prop_map(
            |(phase, instance, steps)| Status {
                phase,
                instance,
                steps,
                note: None,
            },
        )
    }

    proptest! {
        #![proptest_config(config(32))]

        /// The boot's earlier status is read back from /run: a damaged one is ignored, a good one keeps the
        /// other phases' steps before this phase's.
        #[test]
        fn an_earlier_status_is_merged_or_ignored(
            now in status(),
            earlier in status(),
            damage in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let mut bytes = serde_json::to_vec(&earlier).unwrap();
            if let Some((at, byte)) = damage {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            let tmp = TempDir::new();
            let file = tmp.path().join(RUN_STATUS_FILE.trim_start_matches('/'));
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, &bytes).unwrap();
            let merged = now.merged_with_boot(&Target::root_dir(tmp.path()));
            let mut want: Vec<StepReport> = match serde_json::from_slice::<Status>(&bytes) {
                Ok(read) => read.steps.into_iter().filter(|s| s.phase != now.phase).collect(),
                Err(_) => Vec::new(),
            };
            want.extend(now.steps.iter().cloned());
            prop_assert_eq!(merged, Status { steps: want, ..now });
        }
    }
}
