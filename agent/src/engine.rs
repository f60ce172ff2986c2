//! The step engine: every phase (init, system, network, kubernetes) is a list of steps, and this is the one
//! place that runs them in order, times them, journals them, skips what an earlier run completed, works out for
//! `--dry-run` what each step would change, and reports each outcome.
//!
//! A step is a value that knows its name, what it will do (`describe`), how a rerun treats it (`resume`) and how
//! to apply itself to its phase's context. The initrd has no journal yet (/var is not mounted): it records its
//! steps with a [`Recorder`] alone, the same reports without the journal.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::dry::Change;
use crate::report::StepReport;
use crate::state::State;
use crate::target::{Target, TargetError};

/// The phases of a node's first boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The initrd's /init: the verified root, /var, /etc.
    Init,
    System,
    Network,
    /// The image's `[[snap]]`s, installed by its snapd.
    Snaps,
    Kubernetes,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::System => "system",
            Phase::Network => "network",
            Phase::Snaps => "snaps",
            Phase::Kubernetes => "kubernetes",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Something changed.
    Applied,
    /// Everything was already as it should be.
    Unchanged,
    /// Completed by an earlier run (or an earlier boot): not applied again.
    Skipped,
    Failed,
    /// An earlier step failed.
    NotRun,
}

/// Why a step failed, naming the file, unit, user, command or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("containerd: {0}")]
    Containerd(#[from] crate::kubernetes::containerd::ContainerdError),
    #[error("saving the agent state: {0}")]
    State(#[source] TargetError),
    #[error(transparent)]
    Command(#[from] cairn_profile::command::CommandError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The node, its image or its input is not what the step needs; the message says what and why.
    #[error("{0}")]
    Refused(String),
}

impl StepError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> StepError {
        StepError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn refused(message: impl Into<String>) -> StepError {
        StepError::Refused(message.into())
    }
}

/// What an applied step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    pub changed: bool,
    /// What the step found or did, when that is worth reporting.
    pub detail: Option<String>,
}

impl Done {
    pub fn changed(changed: bool) -> Done {
        Done {
            changed,
            detail: None,
        }
    }

    pub fn with_detail(changed: bool, detail: impl Into<String>) -> Done {
        Done {
            changed,
            detail: Some(detail.into()),
        }
    }
}

/// How a rerun after a crash treats a step that the journal says completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Skipped when journaled with this digest of its inputs; applied again when they changed.
    Digest(String),
    /// Applied on every run (what it finds feeds later steps), journaled with this digest.
    Always(String),
    /// Applied again on every run: idempotent, and not all its inputs are known before it runs.
    Rerun,
}

impl Resume {
    fn journal_value(&self) -> String {
        match self {
            Resume::Digest(d) | Resume::Always(d) => d.clone(),
            Resume::Rerun => "done".into(),
        }
    }
}

/// One step of a phase; `C` is what the phase's steps share (the target, what earlier steps found).
pub trait Step<C> {
    fn name(&self) -> &'static str;
    /// What the step does, in one line.
    fn describe(&self) -> String;
    fn resume(&self) -> Resume;
    /// Applies the step; `state` is the phase's journal, for the rare step that records more than its completion.
    fn apply(&self, cx: &mut C, state: &mut State) -> Result<Done, StepError>;
    /// How `--dry-run` treats the step: `None` (the default) applies it to the phase's dry target, which records
    /// each write instead of making it; a step that runs commands or waits on the node says instead what it
    /// would do, given what `cx` knows.
    fn dry(&self, _cx: &C) -> Option<Intent> {
        None
    }
}

/// What a step that is not applied in a dry run says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// What it would do (run a command, wait): a dry run cannot know what that changes.
    Would(String),
    /// Why nothing would change.
    Nothing(String),
}

/// Why a phase stopped.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: StepError,
    },
    #[error("saving the agent state: {0}")]
    Journal(#[source] TargetError),
}

/// Times steps and collects their reports, for one phase.
pub struct Recorder {
    phase: Phase,
    reports: Vec<StepReport>,
}

impl Recorder {
    pub fn new(phase: Phase) -> Recorder {
        Recorder {
            phase,
            reports: Vec::new(),
        }
    }

    /// Runs `apply` as step `name` and reports it; a failure is returned as the phase's error.
    pub fn run<T, E: Into<StepError>>(
        &mut self,
        name: &'static str,
        apply: impl FnOnce() -> Result<(T, Done), E>,
    ) -> Result<T, PhaseError> {
        let started = Instant::now();
        let result = apply().map_err(Into::into);
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((value, done)) => {
                let outcome = if done.changed {
                    Outcome::Applied
                } else {
                    Outcome::Unchanged
                };
                self.push(name, outcome, ms, None, done.detail);
                Ok(value)
            }
            Err(source) => {
                self.push(name, Outcome::Failed, ms, Some(source.to_string()), None);
                Err(PhaseError::Step { step: name, source })
            }
        }
    }

    /// Reports a step that was not applied (`Skipped`, `NotRun`).
    pub fn mark(&mut self, name: &str, outcome: Outcome) {
        self.push(name, outcome, 0, None, None);
    }

    fn push(
        &mut self,
        name: &str,
        outcome: Outcome,
        ms: u64,
        error: Option<String>,
        detail: Option<String>,
    ) {
        self.reports.push(StepReport {
            phase: self.phase,
            name: name.into(),
            outcome,
            ms,
            error,
            detail,
        });
    }

    /// Adds what the last step found to its report.
    pub fn detail(&mut self, text: String) {
        if let Some(last) = self.reports.last_mut() {
            last.detail = Some(text);
        }
    }

    pub fn reports(&self) -> &[StepReport] {
        &self.reports
    }

    pub fn into_reports(self) -> Vec<StepReport> {
        self.reports
    }
}

/// The outcome of a phase's steps: every step reported, and the error that stopped them, if one did.
pub struct Ran {
    pub reports: Vec<StepReport>,
    pub error: Option<PhaseError>,
}

/// Runs `steps` in order on a target with a journal: a step journaled by an earlier, interrupted run is skipped
/// (per its [`Resume`]), each completed step is journaled at once, the first failure stops the phase and the
/// remaining steps are reported `not-run`. It does not mark the phase complete: the caller does, once its own
/// work after the steps is done.
pub fn run<C, S: Step<C>>(
    phase: Phase,
    steps: &[S],
    cx: &mut C,
    target: &Target,
    state: &mut State,
) -> Ran {
    let mut recorder = Recorder::new(phase);
    let mut error = None;
    for step in steps {
        let resume = step.resume();
        let journaled = state.step_digest(phase.name(), step.name());
        if let (Resume::Digest(d), Some(j)) = (&resume, journaled)
            && j == d
        {
            recorder.mark(step.name(), Outcome::Skipped);
            continue;
        }
        if let Err(e) = recorder.run(step.name(), || step.apply(cx, state).map(|done| ((), done))) {
            error = Some(e);
            break;
        }
        if let Err(e) =
            state.journal_step(target, phase.name(), step.name(), resume.journal_value())
        {
            error = Some(PhaseError::Journal(e));
            break;
        }
    }
    for step in steps.iter().skip(recorder.reports().len()) {
        recorder.mark(step.name(), Outcome::NotRun);
    }
    Ran {
        reports: recorder.into_reports(),
        error,
    }
}

/// The reports of a phase that completed on an earlier boot: each named step skipped.
pub fn skipped<'a>(phase: Phase, names: impl IntoIterator<Item = &'a str>) -> Vec<StepReport> {
    let mut recorder = Recorder::new(phase);
    for name in names {
        recorder.mark(name, Outcome::Skipped);
    }
    recorder.into_reports()
}

/// What a dry run found for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Journaled by an earlier, interrupted run with the same inputs: a run skips it.
    Journaled,
    /// Applied to the dry target: the changes it would make (none: nothing would change).
    Changes(Vec<Change>),
    /// A step that is not applied dry: what it says it would do.
    Said(Intent),
    /// It would fail, with this error.
    Fails(String),
    /// An earlier step would fail.
    NotRun,
}

/// The outcome of a dry run of a phase's steps.
pub struct DryRan {
    pub steps: Vec<(&'static str, Planned)>,
    /// The first step that would fail, and why.
    pub error: Option<PhaseError>,
}

/// `--dry-run` of a phase's `steps`, as [`run`] would take them: a step journaled with its digest is skipped, the
/// others are applied to `cx`, whose target must be dry ([`Target::dry`]), and each one's recorded changes
/// collected; after a step that would fail, the rest would not run. Nothing is journaled: `state` is only read.
pub fn dry_run<C, S: Step<C>>(
    phase: Phase,
    steps: &[S],
    cx: &mut C,
    target: &Target,
    state: &State,
) -> DryRan {
    let mut out = Vec::new();
    let mut error = None;
    // Steps get a copy of the journal: one that records more than its completion records it nowhere.
    let mut scratch = state.clone();
    for step in steps {
        if error.is_some() {
            out.push((step.name(), Planned::NotRun));
            continue;
        }
        let journaled = state.step_digest(phase.name(), step.name());
        let planned = match (step.resume(), step.dry(cx)) {
            (Resume::Digest(d), _) if journaled == Some(d.as_str()) => Planned::Journaled,
            (_, Some(intent)) => Planned::Said(intent),
            (_, None) => {
                let applied = step.apply(cx, &mut scratch);
                let changes = target.take_changes();
                match applied {
                    Ok(_) => Planned::Changes(changes),
                    Err(source) => {
                        let said = source.to_string();
                        error = Some(PhaseError::Step {
                            step: step.name(),
                            source,
                        });
                        Planned::Fails(said)
                    }
                }
            }
        };
        out.push((step.name(), planned));
    }
    DryRan { steps: out, error }
}
