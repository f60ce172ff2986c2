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

#[cfg(test)]
mod proptests {
    use std::fs;

    use proptest::prelude::*;

    use super::*;
    use crate::datasources::test_support::TempDir;
    use crate::proptest_support::config;

    fn state() -> impl Strategy<Value = State> {
        let name = "[a-z-]{1,8}";
        (
            any::<u32>(),
            prop::collection::btree_map(
                name,
                (name, "[0-9a-f]{0,64}")
                    .prop_map(|(source, sha256)| InstanceRecord { source, sha256 }),
                0..3,
            ),
            prop::collection::btree_map(
                name,
                prop::collection::btree_map(name, any::<String>(), 0..3),
                0..3,
            ),
            prop::collection::vec(name, 0..3),
        )
            .prop_map(|(version, instance, steps, done)| State {
                version,
                instance,
                steps,
                done,
            })
    }

    /// A journal as it could be found after a crash, a bad disk or a hand edit: a real one cut short or with
    /// a byte changed, or anything at all.
    fn damaged() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                state(),
                any::<prop::sample::Index>(),
                any::<u8>(),
                any::<bool>()
            )
                .prop_map(|(s, at, byte, cut)| {
                    let mut json = serde_json::to_vec_pretty(&s).unwrap();
                    let at = at.index(json.len());
                    if cut {
                        json.truncate(at);
                    } else {
                        json[at] = byte;
                    }
                    json
                }),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    fn load(bytes: &[u8]) -> Result<State, TargetError> {
        let tmp = TempDir::new();
        let file = tmp.path().join(STATE_FILE.trim_start_matches('/'));
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, bytes).unwrap();
        State::load(&Target::root_dir(tmp.path()))
    }

    // Each case writes files (a save fsyncs): few cases by default.
    proptest! {
        #![proptest_config(config(32))]

        #[test]
        fn a_damaged_journal_is_a_typed_error(bytes in damaged()) {
            match load(&bytes) {
                Ok(state) => {
                    // Whatever was read is what the bytes say.
                    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(serde_json::to_value(&state).unwrap(), value);
                }
                Err(e) => {
                    prop_assert_eq!(e.path.as_str(), STATE_FILE);
                    prop_assert!(e.message.starts_with("unreadable agent state ("), "{e}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(config(16))]

        #[test]
        fn a_saved_journal_loads_back(s in state()) {
            let tmp = TempDir::new();
            let target = Target::root_dir(tmp.path());
            s.save(&target).unwrap();
            let loaded = State::load(&target).unwrap();
            prop_assert_eq!(serde_json::to_value(&loaded).unwrap(), serde_json::to_value(&s).unwrap());
        }
    }
}
