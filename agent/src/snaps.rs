//! The `snaps` phase: the image's `[[snap]]` files installed offline by the node's own snapd, before the
//! kubernetes phase uses them. seeded → ack → install.
//!
//! The builder stored each snap read-only under [`SNAPS_DIR`] and the order to install them in [`SNAPS_PLAN`]
//! (snapd's own snap first, then the bases, then the rest). The agent waits for snapd to be seeded, acknowledges
//! every assertion (`snap ack`: snapd checks its signatures against its trusted keys, so a forged or altered
//! assertion fails here), and installs each snap from its file (`--classic` when the snap says so; `--dangerous`
//! only for a snap the profile allowed unasserted). A snap already installed at its revision is left alone, so a
//! run cut off halfway picks up where it stopped. Each step is journaled with the plan's digest: a later boot of
//! the same image installs nothing again.

use std::path::{Path, PathBuf};

use cairn_profile::command::Command;
use cairn_profile::contract::{SNAPS_DIR, SNAPS_PLAN};
use cairn_profile::{Profile, StoredSnap};

use crate::engine::{Done, Intent, Phase, Resume, Step, StepError};
use crate::run::{Ending, Journal, Loaded, Runner};
use crate::state::State;
use crate::target::Target;

pub const PHASE: &str = "snaps";
/// Debian's `snap` command.
pub const SNAP_COMMAND: &str = "/usr/bin/snap";

/// Everything the steps read.
pub(crate) struct Snaps<'a> {
    target: &'a Target,
    plan: Vec<StoredSnap>,
    snap: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepName {
    Seeded,
    Ack,
    Install,
}

impl StepName {
    const ALL: [StepName; 3] = [StepName::Seeded, StepName::Ack, StepName::Install];

    fn name(self) -> &'static str {
        match self {
            StepName::Seeded => "seeded",
            StepName::Ack => "ack",
            StepName::Install => "install",
        }
    }
}

/// Why the phase cannot read its plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error(
        "{SNAPS_PLAN}: missing, though the profile names [[snap]]s: the image was not built by this cairn"
    )]
    Missing,
    #[error("{SNAPS_PLAN}: {0}")]
    Unreadable(String),
}

impl Snaps<'_> {
    fn run(&self, args: &[&str]) -> Result<(), StepError> {
        Command::new(&self.snap)
            .args(args)
            .package("snapd")
            .capture_stdout()
            .run()?;
        Ok(())
    }

    fn seeded(&self) -> Result<Done, StepError> {
        // Nothing can be installed before snapd has seeded itself; offline, that is quick.
        self.run(&["wait", "system", "seed.loaded"])?;
        Ok(Done::changed(false))
    }

    fn ack(&self) -> Result<Done, StepError> {
        let mut acked = Vec::new();
        for s in &self.plan {
            let Some(assert) = &s.assert else { continue };
            self.file_present(assert)?;
            self.run(&["ack", assert])?;
            acked.push(s.name.as_str());
        }
        let detail = if acked.is_empty() {
            "no assertions".to_string()
        } else {
            format!("acknowledged {}", acked.join(", "))
        };
        Ok(Done::with_detail(!acked.is_empty(), detail))
    }

    fn install(&self) -> Result<Done, StepError> {
        let mut installed = Vec::new();
        for s in &self.plan {
            if self.installed_at(s)? {
                continue;
            }
            self.file_present(&s.file)?;
            let mut args = vec!["install", s.file.as_str()];
            if s.classic {
                args.push("--classic");
            }
            if s.assert.is_none() {
                // The profile allowed this snap unasserted, and the report names it.
                args.push("--dangerous");
            }
            self.run(&args)?;
            if !self.installed_at(s)? {
                return Err(StepError::refused(format!(
                    "snap install {} reported success, but `snap list {}` does not show revision {}",
                    s.name, s.name, s.revision
                )));
            }
            installed.push(format!("{} {}", s.name, s.revision));
        }
        let detail = if installed.is_empty() {
            "every snap already installed".to_string()
        } else {
            format!("installed {}", installed.join(", "))
        };
        Ok(Done::with_detail(!installed.is_empty(), detail))
    }

    /// Whether `snap list NAME` shows the snap at its revision (an unasserted snap: at any local `x` revision).
    fn installed_at(&self, s: &StoredSnap) -> Result<bool, StepError> {
        let out = Command::new(&self.snap)
            .args(["list", "--unicode=never", s.name.as_str()])
            .package("snapd")
            .capture_stdout()
            .run();
        // `snap list NAME` exits 1 when the snap is not installed.
        let Ok(out) = out else { return Ok(false) };
        Ok(
            listed_revision(&String::from_utf8_lossy(&out.stdout), &s.name).is_some_and(|rev| {
                rev == s.revision || (s.assert.is_none() && rev.starts_with('x'))
            }),
        )
    }

    fn file_present(&self, path: &str) -> Result<(), StepError> {
        if self.target.exists(path) {
            Ok(())
        } else {
            Err(StepError::refused(format!(
                "{path} is missing from the image's {SNAPS_DIR}"
            )))
        }
    }
}

/// The `Rev` column of `snap list`'s row for `name`.
fn listed_revision(table: &str, name: &str) -> Option<String> {
    let mut lines = table.lines();
    let header = lines.next()?;
    let column = header.split_whitespace().position(|h| h == "Rev")?;
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .and_then(|cells| cells.get(column).map(|c| c.to_string()))
}

impl<'a> Step<Snaps<'a>> for StepName {
    fn name(&self) -> &'static str {
        StepName::name(*self)
    }

    fn describe(&self) -> String {
        match self {
            StepName::Seeded => "wait for snapd to be seeded".into(),
            StepName::Ack => format!("`snap ack` each assertion of {SNAPS_DIR}"),
            StepName::Install => format!("`snap install` each snap of {SNAPS_PLAN}, in order"),
        }
    }

    fn resume(&self) -> Resume {
        Resume::Rerun
    }

    /// Every step drives snapd: said, never run dry.
    fn dry(&self, _cx: &Snaps<'a>) -> Option<Intent> {
        Some(Intent::Would(match self {
            StepName::Seeded => "would wait for snapd to be seeded".into(),
            StepName::Ack => format!("would `snap ack` each assertion of {SNAPS_DIR}"),
            StepName::Install => format!(
                "would `snap install` each snap of {SNAPS_PLAN} not there at its revision, in order"
            ),
        }))
    }

    fn apply(&self, cx: &mut Snaps<'a>, _state: &mut State) -> Result<Done, StepError> {
        match self {
            StepName::Seeded => cx.seeded(),
            StepName::Ack => cx.ack(),
            StepName::Install => cx.install(),
        }
    }
}

fn read_plan(target: &Target) -> Result<Vec<StoredSnap>, PlanError> {
    let bytes = target.read(SNAPS_PLAN)?.ok_or(PlanError::Missing)?;
    let plan: Vec<StoredSnap> =
        serde_json::from_slice(&bytes).map_err(|e| PlanError::Unreadable(e.to_string()))?;
    for s in &plan {
        let inside = |p: &str| Path::new(p).starts_with(SNAPS_DIR) && !p.contains("/../");
        if !inside(&s.file) || s.assert.as_deref().is_some_and(|a| !inside(a)) {
            return Err(PlanError::Unreadable(format!(
                "{} names a file outside {SNAPS_DIR}",
                s.name
            )));
        }
    }
    Ok(plan)
}

/// Runs the phase for a profile with `[[snap]]`s; `last`: it is the node's last phase.
pub(crate) fn run(runner: &Runner, profile: &Profile, loaded: &Loaded, last: bool) -> Ending {
    if profile.snaps.is_empty() {
        return Ending::Quiet;
    }
    // Installed on an earlier boot: nothing to read or run (a dry run says so).
    let journal = match runner.journal(Phase::Snaps, &loaded.record, last, |_| {
        StepName::ALL.iter().map(|s| s.name()).collect()
    }) {
        Journal::Ended(ending) => return runner.ended(Phase::Snaps, ending),
        journal => journal,
    };
    let target = &runner.target;
    let plan = match read_plan(target) {
        Ok(p) => p,
        Err(e) => {
            return Ending::Failed {
                steps: vec![],
                error: e.into(),
            };
        }
    };
    let mut cx = Snaps {
        target,
        plan,
        snap: PathBuf::from(SNAP_COMMAND),
    };
    runner.steps(
        Phase::Snaps,
        &loaded.record,
        &StepName::ALL,
        &mut cx,
        journal,
        last,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_revision_off_snap_list() {
        let table = "Name    Version   Rev    Tracking       Publisher   Notes\n\
                     core22  20240111  1748   latest/stable  canonical✓  base\n\
                     k8s     v1.32.3   3456   -              canonical✓  classic\n\
                     hello   1.0       x1     -              -           classic\n";
        assert_eq!(listed_revision(table, "k8s").as_deref(), Some("3456"));
        assert_eq!(listed_revision(table, "hello").as_deref(), Some("x1"));
        assert_eq!(listed_revision(table, "snapd"), None);
        assert_eq!(listed_revision("", "k8s"), None);
        assert_eq!(listed_revision("garbage\nk8s 1", "k8s"), None);
    }
}
