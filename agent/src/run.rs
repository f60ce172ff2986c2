//! Phases: what `cairn-agent run system|network|kubernetes` and `apply --root` do, once, journaled.
//!
//! Each phase reads the baked profile and its instance data, plans its steps and hands them to the
//! [`engine`](crate::engine). The `system` phase reads the local instance sources and applies everything; when
//! the instance data comes from a network source it applies the profile alone and leaves that source to the
//! `network` phase, which fetches it and applies what it adds. A phase that completed on an earlier boot does
//! nothing: instance data that changed since is reported (`instance changed since first boot, not applied`),
//! never applied.

use std::path::PathBuf;

use cairn_profile::{Instance, Merged, Profile};
use sha2::{Digest, Sha256};

use crate::datasources::{self, DatasourceError, Detected, Found};
use crate::engine::{self, PhaseError, Step};
use crate::plan::{self, SystemContext};
use crate::report::{Console, Status, StepReport};
use crate::state::{InstanceRecord, State};
use crate::target::{Target, TargetError};

pub use crate::engine::Phase;
pub use cairn_profile::contract::BAKED_PROFILE;

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

/// Why a phase failed or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    BakedProfilePath(TargetError),
    #[error(transparent)]
    Profile(cairn_profile::Error),
    #[error("{}: {source}", path.display())]
    InstanceFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Datasource(#[from] DatasourceError),
    #[error(transparent)]
    Instance(cairn_profile::Error),
    #[error(transparent)]
    State(TargetError),
    #[error(transparent)]
    Phase(#[from] PhaseError),
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::StartError),
    #[error(transparent)]
    SnapsPlan(#[from] crate::snaps::PlanError),
}

impl RunError {
    pub fn exit(&self) -> Exit {
        match self {
            RunError::BakedProfilePath(_)
            | RunError::Profile(_)
            | RunError::InstanceFile { .. }
            | RunError::Datasource(_)
            | RunError::Instance(_) => Exit::BadInput,
            RunError::State(_) | RunError::Phase(_) | RunError::SnapsPlan(_) => Exit::StepFailed,
            RunError::Kubernetes(e) => e.exit(),
        }
    }
}

/// The instance data a phase applies, and where it came from.
pub(crate) struct Loaded {
    pub(crate) record: InstanceRecord,
    pub(crate) found: Option<Found>,
    pub(crate) merged: Merged,
}

/// Runs one phase.
pub fn run_phase(opts: &Options, phase: Phase) -> Exit {
    Runner {
        opts,
        console: Console::new(opts.target.is_live()),
    }
    .phase(phase)
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

pub(crate) struct Runner<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) console: Console,
}

/// What a phase's run came to, before it is reported.
pub(crate) enum Ending {
    /// Done; `last`: the node's last phase (the whole-node line follows).
    Done {
        steps: Vec<StepReport>,
        note: Option<String>,
        last: bool,
    },
    Failed {
        steps: Vec<StepReport>,
        error: RunError,
    },
    /// A dry run, or a phase with nothing to do: nothing reported.
    Quiet,
}

/// A phase's journal, or why the phase has nothing to run.
pub(crate) enum Journal {
    Open(State),
    Ended(Ending),
}

impl Runner<'_> {
    fn phase(&self, phase: Phase) -> Exit {
        let mut instance = "none".to_string();
        let ending = self.phase_ending(phase, &mut instance);
        self.report(phase, &instance, ending)
    }

    fn phase_ending(&self, phase: Phase, instance: &mut String) -> Ending {
        let failed = |error: RunError| Ending::Failed {
            steps: vec![],
            error,
        };
        let profile = match self.profile() {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let (loaded, network_source) = match self.instance(phase, &profile, instance) {
            Ok(Some(l)) => l,
            Ok(None) => return Ending::Quiet,
            Err(e) => return failed(e),
        };
        *instance = loaded.record.source.clone();
        let last = phase == last_phase(&profile, network_source);
        match phase {
            Phase::Kubernetes => return crate::kubernetes::run(self, &profile, &loaded),
            Phase::Snaps => return crate::snaps::run(self, &profile, &loaded, last),
            _ => {}
        }
        let steps = plan::system(&loaded.merged);
        let mut cx = SystemContext::new(&self.opts.target);
        let journal = self.journal(phase, &loaded.record, last, |_| {
            steps
                .iter()
                .map(|s| Step::<SystemContext>::name(s))
                .collect()
        });
        self.steps(phase, &loaded.record, &steps, &mut cx, journal, last)
    }

    fn profile(&self) -> Result<Profile, RunError> {
        let path = self
            .opts
            .target
            .resolve(BAKED_PROFILE, true)
            .map_err(RunError::BakedProfilePath)?;
        Profile::load_baked(&path).map_err(RunError::Profile)
    }

    /// The instance data this phase applies (`None`: the phase has nothing to do), and whether it comes from
    /// the network. `instance` is set to the source's name as soon as it is known, for the report.
    fn instance(
        &self,
        phase: Phase,
        profile: &Profile,
        instance: &mut String,
    ) -> Result<Option<(Loaded, bool)>, RunError> {
        let detected = match &self.opts.instance_file {
            Some(path) => {
                *instance = "file".into();
                let bytes = std::fs::read(path).map_err(|source| RunError::InstanceFile {
                    path: path.clone(),
                    source,
                })?;
                let name = path.display().to_string();
                let text = datasources::utf8_text(bytes, &name, 0)?;
                Detected::Local(Found {
                    source: datasources::SourceKind::File,
                    name,
                    text,
                })
            }
            None => datasources::detect(&self.opts.sources)?,
        };
        let network_source = matches!(detected, Detected::Network(_));
        let found = match (phase, detected) {
            (Phase::System, Detected::Local(f)) => Some(f),
            (Phase::System, _) => None,
            (Phase::Kubernetes, Detected::Local(f)) => Some(f),
            (Phase::Kubernetes, Detected::None) => None,
            // The network phase has work only when the instance data is on the network.
            (Phase::Network | Phase::Kubernetes, Detected::Network(src)) => {
                if self.opts.dry_run {
                    println!(
                        "{phase} phase: would fetch instance data from {}",
                        src.describe()
                    );
                    return Ok(None);
                }
                *instance = src.kind().as_str().into();
                Some(datasources::fetch(&src, &self.opts.sources)?)
            }
            (Phase::Network, _) | (Phase::Init, _) => return Ok(None),
            // Snaps come with the image: no instance data is read for them.
            (Phase::Snaps, _) => None,
        };
        if let Some(f) = &found {
            *instance = f.source.as_str().into();
        }
        let (record, parsed) = match &found {
            None => (
                InstanceRecord {
                    source: "none".into(),
                    sha256: String::new(),
                },
                None,
            ),
            Some(f) => (
                InstanceRecord {
                    source: f.source.as_str().into(),
                    sha256: hex::encode(Sha256::digest(f.text.as_bytes())),
                },
                Some(Instance::parse(&f.name, &f.text).map_err(RunError::Instance)?),
            ),
        };
        let merged = profile.merge(parsed.as_ref());
        Ok(Some((
            Loaded {
                record,
                found,
                merged,
            },
            network_source,
        )))
    }

    /// The phase's journal; or, as the phase's ending, why there is nothing to run: it completed on an earlier
    /// boot (each of `done_names` reported skipped), or the journal cannot be read.
    pub(crate) fn journal(
        &self,
        phase: Phase,
        record: &InstanceRecord,
        last: bool,
        done_names: impl FnOnce(&State) -> Vec<&'static str>,
    ) -> Journal {
        let state = match State::load(&self.opts.target) {
            Ok(s) => s,
            Err(e) => {
                return Journal::Ended(Ending::Failed {
                    steps: vec![],
                    error: RunError::State(e),
                });
            }
        };
        match already_done(&state, phase, record, done_names(&state), last) {
            Some(ending) => Journal::Ended(ending),
            None => Journal::Open(state),
        }
    }

    /// A phase's steps through the engine, once: the plan on a dry run (whatever the journal says), else every
    /// step journaled in the phase's `journal` (see [`Runner::journal`]), then the phase marked complete.
    pub(crate) fn steps<C, S: Step<C>>(
        &self,
        phase: Phase,
        record: &InstanceRecord,
        steps: &[S],
        cx: &mut C,
        journal: Journal,
        last: bool,
    ) -> Ending {
        if self.opts.dry_run {
            engine::print_plan(
                &format!("{phase} phase, instance: {}", record.source),
                steps,
            );
            return Ending::Quiet;
        }
        let mut state = match journal {
            Journal::Open(s) => s,
            Journal::Ended(ending) => return ending,
        };
        let target = &self.opts.target;
        state.instance.insert(phase.name().into(), record.clone());
        let ran = engine::run(phase, steps, cx, target, &mut state);
        if let Some(e) = ran.error {
            return Ending::Failed {
                steps: ran.reports,
                error: e.into(),
            };
        }
        if let Err(e) = state.complete(target, phase.name()) {
            return Ending::Failed {
                steps: ran.reports,
                error: PhaseError::Journal(e).into(),
            };
        }
        Ending::Done {
            steps: ran.reports,
            note: None,
            last,
        }
    }

    /// Saves the status and prints the phase line, and the whole-node line when the phase failed or was the
    /// node's last.
    fn report(&self, phase: Phase, instance: &str, ending: Ending) -> Exit {
        let (steps, note, ok, last, exit) = match ending {
            Ending::Quiet => return Exit::Done,
            Ending::Done { steps, note, last } => (steps, note, true, last, Exit::Done),
            Ending::Failed { steps, error } => {
                let exit = error.exit();
                (steps, Some(error.to_string()), false, true, exit)
            }
        };
        let status = Status {
            phase,
            instance: instance.into(),
            steps,
            note,
        };
        if self.opts.dry_run {
            return exit;
        }
        let word = if ok { "ready" } else { "failed" };
        let node = status.merged_with_boot(&self.opts.target);
        if let Err(e) = node.save(&self.opts.target) {
            self.console
                .line(&format!("warning: status not saved: {e}"));
        }
        self.console
            .line(&format!("{phase} {word} {}", status.json()));
        if last || !ok {
            self.console.line(&format!("{word} {}", node.json()));
        }
        exit
    }
}

/// The node's last phase, after which the whole-node line is printed: kubernetes, else snaps, else network when
/// the instance data is on the network, else system.
fn last_phase(profile: &Profile, network_source: bool) -> Phase {
    if profile.kubernetes.is_some() {
        Phase::Kubernetes
    } else if !profile.snaps.is_empty() {
        Phase::Snaps
    } else if network_source {
        Phase::Network
    } else {
        Phase::System
    }
}

/// A node is reprovisioned, not mutated: a phase done on an earlier boot applies nothing.
fn already_done(
    state: &State,
    phase: Phase,
    record: &InstanceRecord,
    names: Vec<&str>,
    last: bool,
) -> Option<Ending> {
    if !state.is_done(phase.name()) {
        return None;
    }
    let note = match state.instance.get(phase.name()) {
        Some(first) if first != record => {
            Some("instance changed since first boot, not applied".to_string())
        }
        _ => None,
    };
    Some(Ending::Done {
        steps: engine::skipped(phase, names),
        note,
        last,
    })
}
