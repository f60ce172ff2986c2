//! Phases: what `cairn-agent run system|network` and `apply --root` do, once, journaled.
//!
//! The `system` phase reads the local instance sources and applies everything; when the instance data comes
//! from a network source it applies the profile alone and leaves that source to the `network` phase, which
//! fetches it and applies what it adds. A phase that completed on an earlier boot does nothing: instance data
//! that changed since is reported (`instance changed since first boot, not applied`), never applied.

use std::path::PathBuf;
use std::time::Instant;

use cairn_profile::{Instance, Profile};
use sha2::{Digest, Sha256};

use crate::apply::{self, StepError};
use crate::datasources::{self, Detected, Found};
use crate::plan::{self, Action, Step};
use crate::report::{Console, Status, StepReport};
use crate::state::{InstanceRecord, State};
use crate::target::Target;

pub use cairn_profile::contract::BAKED_PROFILE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    System,
    Network,
    Kubernetes,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::System => "system",
            Phase::Network => "network",
            Phase::Kubernetes => "kubernetes",
        }
    }
}

pub struct Options {
    pub target: Target,
    /// Instance data from a file instead of the sources (`--instance`).
    pub instance_file: Option<PathBuf>,
    pub sources: datasources::Config,
    pub dry_run: bool,
    /// How the kubernetes phase reaches the distribution.
    pub kubernetes: crate::kubernetes::Settings,
}

/// How a run ended: its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Done = 0,
    StepFailed = 1,
    BadInput = 2,
}

/// The instance data a phase applies, and where it came from.
struct Loaded {
    record: InstanceRecord,
    instance: Option<Instance>,
}

fn load_instance(found: Option<&Found>) -> Result<Loaded, String> {
    match found {
        None => Ok(Loaded {
            record: InstanceRecord {
                source: "none".into(),
                sha256: String::new(),
            },
            instance: None,
        }),
        Some(f) => {
            let instance = Instance::parse(&f.name, &f.text).map_err(|e| e.to_string())?;
            Ok(Loaded {
                record: InstanceRecord {
                    source: f.source.as_str().into(),
                    sha256: hex::encode(Sha256::digest(f.text.as_bytes())),
                },
                instance: Some(instance),
            })
        }
    }
}

pub(crate) struct Runner<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) console: Console,
}

/// Runs one phase; `last` says whether it is the last phase this node needs (then the whole-node line follows).
pub fn run_phase(opts: &Options, phase: Phase) -> Exit {
    let r = Runner {
        opts,
        console: Console::new(opts.target.is_live()),
    };
    r.phase(phase)
}

/// `apply --root`: the system phase, then the network phase when the instance data comes from the network,
/// then the kubernetes phase when `with_kubernetes` (the profile must have `[kubernetes]`).
pub fn apply_root(opts: &Options, with_kubernetes: bool) -> Exit {
    let mut phases = vec![Phase::System, Phase::Network];
    if with_kubernetes {
        phases.push(Phase::Kubernetes);
    }
    for phase in phases {
        match run_phase(opts, phase) {
            Exit::Done => {}
            other => return other,
        }
    }
    Exit::Done
}

impl Runner<'_> {
    /// Ends a phase that failed, with the steps reported so far.
    pub(crate) fn fail_phase(
        &self,
        phase: &str,
        instance: &str,
        steps: Vec<StepReport>,
        message: String,
        exit: Exit,
    ) -> Exit {
        let status = Status {
            phase: phase.into(),
            instance: instance.into(),
            steps,
            note: Some(message),
        };
        self.finish(&status, false, true);
        exit
    }

    /// Ends the node's last phase, done.
    pub(crate) fn finish_phase(
        &self,
        phase: &str,
        instance: &str,
        steps: Vec<StepReport>,
        note: Option<String>,
    ) -> Exit {
        let status = Status {
            phase: phase.into(),
            instance: instance.into(),
            steps,
            note,
        };
        self.finish(&status, true, true);
        Exit::Done
    }

    fn fail(
        &self,
        phase: Phase,
        instance: &str,
        steps: Vec<StepReport>,
        message: String,
        exit: Exit,
    ) -> Exit {
        self.fail_phase(phase.name(), instance, steps, message, exit)
    }

    /// Saves the status and prints the phase line (and the whole-node line when `last`).
    fn finish(&self, status: &Status, ok: bool, last: bool) {
        let word = if ok { "ready" } else { "failed" };
        if self.opts.dry_run {
            return;
        }
        let node = status.merged_with_boot(&self.opts.target);
        if let Err(e) = node.save(&self.opts.target) {
            self.console
                .line(&format!("warning: status not saved: {e}"));
        }
        self.console
            .line(&format!("{} {word} {}", status.phase, status.json()));
        if last || !ok {
            self.console.line(&format!("{word} {}", node.json()));
        }
    }

    fn phase(&self, phase: Phase) -> Exit {
        let target = &self.opts.target;
        let profile_path = match target.resolve(BAKED_PROFILE, true) {
            Ok(p) => p,
            Err(e) => return self.fail(phase, "none", vec![], e.to_string(), Exit::BadInput),
        };
        let profile = match Profile::load_baked(&profile_path) {
            Ok(p) => p,
            Err(e) => return self.fail(phase, "none", vec![], e.to_string(), Exit::BadInput),
        };

        // Which instance data this phase applies.
        let detected = match &self.opts.instance_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Detected::Local(Found {
                    source: datasources::SourceKind::File,
                    name: path.display().to_string(),
                    text,
                }),
                Err(e) => {
                    return self.fail(
                        phase,
                        "file",
                        vec![],
                        format!("{}: {e}", path.display()),
                        Exit::BadInput,
                    );
                }
            },
            None => match datasources::detect(&self.opts.sources) {
                Ok(d) => d,
                Err(e) => return self.fail(phase, "none", vec![], e.to_string(), Exit::BadInput),
            },
        };
        let network_source = matches!(detected, Detected::Network(_));
        let found = match (phase, detected) {
            (Phase::System, Detected::Local(f)) => Some(f),
            (Phase::System, _) => None,
            // The network phase has work only when the instance data is on the network.
            (Phase::Kubernetes, Detected::Local(f)) => Some(f),
            (Phase::Kubernetes, Detected::None) => None,
            (Phase::Network | Phase::Kubernetes, Detected::Network(src)) => {
                if self.opts.dry_run {
                    println!(
                        "{} phase: would fetch instance data from {}",
                        phase.name(),
                        src.describe()
                    );
                    return Exit::Done;
                }
                match datasources::fetch(&src, &self.opts.sources) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        return self.fail(
                            phase,
                            src.kind().as_str(),
                            vec![],
                            e.to_string(),
                            Exit::BadInput,
                        );
                    }
                }
            }
            (Phase::Network, _) => return Exit::Done,
        };
        let loaded = match load_instance(found.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                let source = found.as_ref().map(|f| f.source.as_str()).unwrap_or("none");
                return self.fail(phase, source, vec![], e, Exit::BadInput);
            }
        };
        let merged = profile.merge(loaded.instance.as_ref());
        if phase == Phase::Kubernetes {
            return crate::kubernetes::run(self, &profile, &merged, loaded.record, found.as_ref());
        }
        // With [kubernetes], the kubernetes phase is the node's last.
        let last = profile.kubernetes.is_none() && (phase == Phase::Network || !network_source);
        let steps = plan::plan(&profile, &merged);

        if self.opts.dry_run {
            println!("{} phase, instance: {}", phase.name(), loaded.record.source);
            for s in &steps {
                println!("  {:<10} {}", s.name, s.describe());
            }
            return Exit::Done;
        }

        let mut state = match State::load(target) {
            Ok(s) => s,
            Err(e) => {
                return self.fail(
                    phase,
                    &loaded.record.source,
                    vec![],
                    e.to_string(),
                    Exit::StepFailed,
                );
            }
        };
        // A node is reprovisioned, not mutated: a phase done on an earlier boot applies nothing.
        if state.is_done(phase.name()) {
            let note = match state.instance.get(phase.name()) {
                Some(first) if *first != loaded.record => {
                    Some("instance changed since first boot, not applied".to_string())
                }
                _ => None,
            };
            let reports = steps
                .iter()
                .map(|s| StepReport {
                    phase: phase.name().into(),
                    name: s.name.into(),
                    outcome: "skipped".into(),
                    ms: 0,
                    error: None,
                    detail: None,
                })
                .collect();
            let status = Status {
                phase: phase.name().into(),
                instance: loaded.record.source.clone(),
                steps: reports,
                note,
            };
            self.finish(&status, true, last);
            return Exit::Done;
        }
        state
            .instance
            .insert(phase.name().into(), loaded.record.clone());

        let mut reports = Vec::new();
        let mut machine_id = String::new();
        let mut failed = None;
        for step in &steps {
            let started = Instant::now();
            let digest = step.digest();
            // A step journaled with the same digest was completed by an earlier, interrupted run.
            let done_before = state.step_digest(phase.name(), step.name) == Some(digest.as_str());
            let result = if done_before && !matches!(step.action, Action::MachineId) {
                Ok(None)
            } else {
                self.apply(step, &mut machine_id).map(Some)
            };
            let ms = started.elapsed().as_millis() as u64;
            let (outcome, error) = match &result {
                Ok(None) => ("skipped", None),
                Ok(Some(true)) => ("applied", None),
                Ok(Some(false)) => ("unchanged", None),
                Err(e) => ("failed", Some(e.to_string())),
            };
            reports.push(StepReport {
                phase: phase.name().into(),
                name: step.name.into(),
                outcome: outcome.into(),
                ms,
                error: error.clone(),
                detail: None,
            });
            if let Some(e) = error {
                failed = Some(format!("{}: {e}", step.name));
                break;
            }
            if let Err(e) = state.journal_step(target, phase.name(), step.name, digest) {
                failed = Some(e);
                break;
            }
        }
        for step in steps.iter().skip(reports.len()) {
            reports.push(StepReport {
                phase: phase.name().into(),
                name: step.name.into(),
                outcome: "not-run".into(),
                ms: 0,
                error: None,
                detail: None,
            });
        }
        if let Some(message) = failed {
            let status = Status {
                phase: phase.name().into(),
                instance: loaded.record.source,
                steps: reports,
                note: Some(message),
            };
            self.finish(&status, false, true);
            return Exit::StepFailed;
        }
        if let Err(e) = state.complete(target, phase.name()) {
            return self.fail(phase, &loaded.record.source, reports, e, Exit::StepFailed);
        }
        let status = Status {
            phase: phase.name().into(),
            instance: loaded.record.source,
            steps: reports,
            note: None,
        };
        self.finish(&status, true, last);
        Exit::Done
    }

    /// Applies one step; true when something changed.
    fn apply(&self, step: &Step, machine_id: &mut String) -> Result<bool, StepError> {
        let t = &self.opts.target;
        match &step.action {
            Action::MachineId => {
                let (id, changed) = apply::system::machine_id(t)?;
                *machine_id = id;
                Ok(changed)
            }
            Action::Hostname(template) => apply::system::hostname(t, template, machine_id),
            Action::Timezone(z) => apply::system::timezone(t, z),
            Action::Sysctl(m) => apply::system::sysctl(t, m),
            Action::Modules(m) => apply::system::modules(t, m),
            Action::Users(u) => apply::users::apply(t, u).map_err(|e| StepError(e.to_string())),
            Action::Files(f) => apply::files::apply(t, f),
            Action::Services { enable, disable } => {
                let mut changed = apply::services::enable(t, enable)?;
                changed |= apply::services::disable(t, disable)?;
                if changed && t.is_live() {
                    apply::services::reload_live(enable, disable)?;
                }
                Ok(changed)
            }
            Action::Network => {
                let changed = apply::services::network(t)?;
                if changed && t.is_live() {
                    let units: Vec<String> = apply::services::NETWORK_UNITS
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    apply::services::reload_live(&units, &[])?;
                }
                Ok(changed)
            }
        }
    }
}
