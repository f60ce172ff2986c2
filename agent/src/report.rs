//! Report: the status JSON and the console lines.
//!
//! When a phase ends: `cairn-agent: PHASE ready {json}` or `cairn-agent: PHASE failed {json}`; when the last phase
//! the node needs ends: `cairn-agent: ready {json}` (or `failed` as soon as a phase fails), carrying every phase's
//! steps. The same JSON, the node's [`NodeStatus`], is kept in /var/lib/cairn/status.json and
//! /run/cairn/status.json: this boot's steps, whether the node is ready, the last run, the last good provisioning
//! (which no later failure erases), the agent's version and the image's.

use std::io::Write;

use cairn_profile::contract::CONSOLE_AGENT;
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
}

/// What the node runs: the baked profile's name and version, and the root hash the node booted
/// (`cairn.verity=` on the kernel command line; none for a root folder given no `--cmdline`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub root_hash: Option<String>,
    /// The firmware's SecureBoot variable: whether the firmware checked the boot chain's signatures. Absent when
    /// the node has no EFI variables (not booted through UEFI, or a root folder).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secure_boot: Option<bool>,
    /// The boot entry systemd-boot started (its LoaderEntrySelected variable): the UKI's file name as it was
    /// before the boot counter counted this boot.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub boot_entry: Option<String>,
}

/// The EFI variables' folder, and the vendor GUIDs of UEFI's global variables and of systemd-boot's.
const EFIVARS: &str = "sys/firmware/efi/efivars";
const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

impl Image {
    /// Adds what the firmware and systemd-boot say about this boot (efivarfs: four bytes of attributes, then
    /// the value).
    pub fn with_firmware(mut self, target: &Target) -> Image {
        let var = |name: &str, guid: &str| -> Option<Vec<u8>> {
            let bytes = target.read(&format!("{EFIVARS}/{name}-{guid}")).ok()??;
            bytes.get(4..).map(<[u8]>::to_vec)
        };
        self.secure_boot =
            var("SecureBoot", EFI_GLOBAL_GUID).and_then(|v| v.first().map(|b| *b == 1));
        self.boot_entry = var("LoaderEntrySelected", LOADER_GUID).and_then(|v| utf16_text(&v));
        self
    }
}

/// A NUL-terminated UTF-16LE EFI string, at most 256 characters of it.
fn utf16_text(bytes: &[u8]) -> Option<String> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .take(256)
        .collect();
    let text = String::from_utf16(&units).ok()?;
    (!text.is_empty() && !text.chars().any(char::is_control)).then_some(text)
}

/// How a phase's run ended, for the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// The node is ready after it.
    Ready,
    /// The phase completed; the node's later phases have yet to run.
    Done,
    Failed,
}

/// The last phase run, whatever its outcome. Times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub phase: Phase,
    pub outcome: RunOutcome,
    pub started: String,
    pub finished: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// The last run after which the node was ready: what it ran and found, kept whatever later runs do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    pub phase: Phase,
    pub instance: String,
    pub finished: String,
    pub agent_version: String,
    pub image: Image,
    pub steps: Vec<StepReport>,
}

/// The node's status: the last run's [`Status`] fields as they always were (`phase`, `instance`, `steps`,
/// `note`), and what a reader needs beside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub status: Status,
    /// The node was provisioned (its last phase completed, now or on an earlier run) and no run failed since.
    pub ready: bool,
    pub agent_version: String,
    pub image: Image,
    pub last_run: LastRun,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_good: Option<LastGood>,
    /// When the node was first ready.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provisioned: Option<String>,
}

/// One phase's run, as [`NodeStatus::after`] takes it: times in UNIX seconds.
pub struct Run {
    pub phase: Phase,
    pub ok: bool,
    /// The node's last phase: the node is ready once it completes.
    pub last: bool,
    pub started: u64,
    pub finished: u64,
    pub error: Option<String>,
}

/// What the status file kept of earlier runs; a file that does not parse keeps nothing.
#[derive(Debug, Default, Deserialize)]
struct Earlier {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    last_good: Option<LastGood>,
    #[serde(default)]
    provisioned: Option<String>,
}

impl NodeStatus {
    /// The node's status after `run`: `status` is this boot's so far, and the status file's last good
    /// provisioning is carried over unless this run is a newer one.
    pub fn after(target: &Target, status: Status, run: Run, image: Image) -> NodeStatus {
        let earlier: Earlier = target
            .read(STATUS_FILE)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let finished = cairn_profile::time::rfc3339(run.finished);
        let agent_version = env!("CARGO_PKG_VERSION").to_string();
        let now_ready = run.ok && run.last;
        let outcome = match (run.ok, now_ready) {
            (false, _) => RunOutcome::Failed,
            (true, true) => RunOutcome::Ready,
            (true, false) => RunOutcome::Done,
        };
        let last_good = if now_ready {
            Some(LastGood {
                phase: run.phase,
                instance: status.instance.clone(),
                finished: finished.clone(),
                agent_version: agent_version.clone(),
                image: image.clone(),
                steps: status.steps.clone(),
            })
        } else {
            earlier.last_good
        };
        let provisioned = earlier
            .provisioned
            .or_else(|| now_ready.then(|| finished.clone()));
        NodeStatus {
            status,
            ready: run.ok && (run.last || earlier.ready),
            agent_version,
            image,
            last_run: LastRun {
                phase: run.phase,
                outcome,
                started: cairn_profile::time::rfc3339(run.started),
                finished,
                error: run.error,
            },
            last_good,
            provisioned,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
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

/// Where the lines go: the console on the running system, stdout for a root folder. Errors and warnings are text
/// on stderr besides, once.
pub struct Console {
    live: bool,
}

impl Console {
    pub fn new(live: bool) -> Console {
        Console { live }
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// `cairn-agent: TEXT` on stderr: what a person at a terminal reads (on a node the unit's journal, too).
    pub fn error(&self, text: &str) {
        eprintln!("{CONSOLE_AGENT}{text}");
    }

    pub fn line(&self, text: &str) {
        let line = format!("{CONSOLE_AGENT}{text}\n");
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
mod tests {
    use super::*;
    use crate::datasources::test_support::TempDir;

    fn status(phase: Phase, outcome: Outcome) -> Status {
        Status {
            phase,
            instance: "file".into(),
            steps: vec![StepReport {
                phase,
                name: "hostname".into(),
                outcome,
                ms: 1,
                error: None,
                detail: None,
            }],
            note: None,
        }
    }

    fn run(phase: Phase, ok: bool, last: bool, at: u64) -> Run {
        Run {
            phase,
            ok,
            last,
            started: at,
            finished: at + 1,
            error: (!ok).then(|| "hostname: broken".to_string()),
        }
    }

    /// Secure Boot and the booted UKI, as efivarfs gives them: four bytes of attributes, then the value.
    #[test]
    fn the_firmware_says_secure_boot_and_the_entry() {
        let tmp = TempDir::new();
        let t = Target::root_dir(tmp.path());
        assert_eq!(Image::default().with_firmware(&t), Image::default());
        let vars = tmp.path().join(EFIVARS);
        std::fs::create_dir_all(&vars).unwrap();
        std::fs::write(
            vars.join(format!("SecureBoot-{EFI_GLOBAL_GUID}")),
            [6, 0, 0, 0, 1],
        )
        .unwrap();
        let mut entry = vec![6, 0, 0, 0];
        for u in "cairn-2-b+3.efi\0".encode_utf16() {
            entry.extend(u.to_le_bytes());
        }
        std::fs::write(
            vars.join(format!("LoaderEntrySelected-{LOADER_GUID}")),
            &entry,
        )
        .unwrap();
        let i = Image::default().with_firmware(&t);
        assert_eq!(i.secure_boot, Some(true));
        assert_eq!(i.boot_entry.as_deref(), Some("cairn-2-b+3.efi"));
        std::fs::write(
            vars.join(format!("SecureBoot-{EFI_GLOBAL_GUID}")),
            [6, 0, 0, 0, 0],
        )
        .unwrap();
        std::fs::write(
            vars.join(format!("LoaderEntrySelected-{LOADER_GUID}")),
            [6, 0, 0, 0, 0xff],
        )
        .unwrap();
        let i = Image::default().with_firmware(&t);
        assert_eq!(i.secure_boot, Some(false));
        assert_eq!(i.boot_entry, None, "half a UTF-16 unit is no name");
    }

    #[test]
    fn the_good_provisioning_outlives_later_failures() {
        let tmp = TempDir::new();
        let t = Target::root_dir(tmp.path());
        let image = Image {
            profile: Some("edge".into()),
            version: Some("1.0.0".into()),
            ..Image::default()
        };
        let after = |s, r| {
            let node = NodeStatus::after(&t, s, r, image.clone());
            node.save(&t).unwrap();
            node
        };
        // First boot, system then network: ready once the last phase is done.
        let first = after(
            status(Phase::System, Outcome::Applied),
            run(Phase::System, true, false, 0),
        );
        assert!(!first.ready);
        assert_eq!(first.last_run.outcome, RunOutcome::Done);
        assert_eq!(first.last_good, None);
        let good = after(
            status(Phase::Network, Outcome::Applied),
            run(Phase::Network, true, true, 100),
        );
        assert!(good.ready);
        assert_eq!(good.last_run.outcome, RunOutcome::Ready);
        assert_eq!(good.provisioned.as_deref(), Some("1970-01-01T00:01:41Z"));
        let kept = good.last_good.clone().unwrap();
        assert_eq!(kept.finished, "1970-01-01T00:01:41Z");
        assert_eq!(kept.steps, good.status.steps);

        // A later boot: a provisioned node's first phase keeps it ready; a failure does not, and keeps the record.
        let later = after(
            status(Phase::System, Outcome::Skipped),
            run(Phase::System, true, false, 200),
        );
        assert!(later.ready);
        assert_eq!(later.last_good.as_ref(), Some(&kept));
        let failed = after(
            status(Phase::Network, Outcome::Failed),
            run(Phase::Network, false, true, 300),
        );
        assert!(!failed.ready);
        assert_eq!(failed.last_run.outcome, RunOutcome::Failed);
        assert_eq!(failed.last_run.error.as_deref(), Some("hostname: broken"));
        assert_eq!(failed.last_run.started, "1970-01-01T00:05:00Z");
        assert_eq!(failed.last_good.as_ref(), Some(&kept));
        assert_eq!(failed.provisioned, good.provisioned);
        // Not ready again until the last phase completes again.
        let partial = after(
            status(Phase::System, Outcome::Skipped),
            run(Phase::System, true, false, 400),
        );
        assert!(!partial.ready);
        let again = after(
            status(Phase::Network, Outcome::Skipped),
            run(Phase::Network, true, true, 500),
        );
        assert!(again.ready);
        assert_eq!(again.provisioned, good.provisioned);
        assert_eq!(again.last_good.unwrap().finished, "1970-01-01T00:08:21Z");

        // What the file says reads back whole; a damaged file keeps nothing.
        let text = t.read_string(STATUS_FILE).unwrap().unwrap();
        let read: NodeStatus = serde_json::from_str(&text).unwrap();
        assert!(read.ready && read.status.phase == Phase::Network);
        t.write(STATUS_FILE, b"{\"ready\": tru", Owner::ROOT_0644)
            .unwrap();
        let fresh = NodeStatus::after(
            &t,
            status(Phase::System, Outcome::Failed),
            run(Phase::System, false, true, 600),
            image.clone(),
        );
        assert_eq!((fresh.last_good, fresh.provisioned), (None, None));
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
