//! Phases: what `cairn-agent run system|network|kubernetes` and `apply --root` do, once, journaled.
//!
//! Each phase reads the baked profile and its instance data, plans its steps and hands them to the
//! [`engine`](crate::engine). The `system` phase reads the local instance sources and applies everything; when
//! the instance data comes from a network source it applies the profile alone and leaves that source to the
//! `network` phase, which fetches it and applies what it adds. A phase that completed on an earlier boot does
//! nothing: instance data that changed since is reported (`instance changed since first boot, not applied`),
//! never applied.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_profile::{Instance, Merged, Profile};
use sha2::{Digest, Sha256};

use crate::datasources::{self, DatasourceError, Detected, Found};
use crate::engine::{self, Intent, PhaseError, Planned, Step};
use crate::plan::{self, SystemContext};
use crate::report::{Console, Image, NodeStatus, Run, Status, StepReport};
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

/// The note of a phase that completed on an earlier boot, given other instance data now.
pub const INSTANCE_CHANGED: &str = "instance changed since first boot, not applied";

/// Runs one phase.
pub fn run_phase(opts: &Options, phase: Phase) -> Exit {
    Runner::new(opts).phase(phase)
}

/// `apply --root`: the system phase, then the network phase when the instance data comes from the network,
/// then the kubernetes phase when `with_kubernetes` (the profile must have `[kubernetes]`). A dry run ends with
/// a line adding up what the phases would change.
pub fn apply_root(opts: &Options, with_kubernetes: bool) -> Exit {
    let mut phases = vec![Phase::System, Phase::Network];
    if with_kubernetes {
        phases.push(Phase::Kubernetes);
    }
    let runner = Runner::new(opts);
    for phase in phases {
        match runner.phase(phase) {
            Exit::Done => {}
            other => return other,
        }
    }
    if opts.dry_run {
        println!("{}", runner.dry.get().summary());
    }
    Exit::Done
}

pub(crate) struct Runner<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) console: Console,
    /// What the phases work on: the options' target, or in a dry run its dry twin, which writes nothing.
    pub(crate) target: Target,
    /// A dry run's count so far.
    dry: Cell<DryTally>,
}

/// What a dry run found, over its phases.
#[derive(Debug, Clone, Copy, Default)]
struct DryTally {
    changes: usize,
    /// Steps that would run commands or wait, whose changes a dry run cannot know.
    would: usize,
    /// Instance data to be fetched, whose changes are known only then.
    fetch: bool,
}

impl DryTally {
    fn summary(self) -> String {
        if self.changes == 0 && self.would == 0 && !self.fetch {
            return "dry run: nothing would change".into();
        }
        let mut parts = vec![format!("{} changes would be made", self.changes)];
        if self.would > 0 {
            parts.push(format!("{} steps would run commands or wait", self.would));
        }
        if self.fetch {
            parts.push("the instance data would be fetched".into());
        }
        format!("dry run: {}; nothing was written", parts.join(", "))
    }
}

/// What a phase learnt about the node before it ended, for its report.
#[derive(Default)]
struct Seen {
    /// The instance data's source, or `none`.
    instance: String,
    image: Image,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

impl<'a> Runner<'a> {
    fn new(opts: &'a Options) -> Runner<'a> {
        Runner {
            opts,
            console: Console::new(opts.target.is_live()),
            target: if opts.dry_run {
                opts.target.dry()
            } else {
                opts.target.clone()
            },
            dry: Cell::default(),
        }
    }

    fn phase(&self, phase: Phase) -> Exit {
        let started = now();
        let mut seen = Seen {
            instance: "none".into(),
            image: Image {
                root_hash: datasources::cmdline_value(
                    &self.opts.sources.cmdline,
                    cairn_profile::contract::VERITY_KEY,
                ),
                ..Image::default()
            }
            .with_firmware(&self.target),
        };
        let ending = self.phase_ending(phase, &mut seen);
        self.report(phase, seen, ending, started)
    }

    fn phase_ending(&self, phase: Phase, seen: &mut Seen) -> Ending {
        let failed = |error: RunError| Ending::Failed {
            steps: vec![],
            error,
        };
        let profile = match self.profile() {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        seen.image.profile = Some(profile.name.clone());
        seen.image.version = Some(profile.version.clone());
        let instance = &mut seen.instance;
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
        let mut cx = SystemContext::new(&self.target);
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
                        "{phase} phase: would fetch instance data from {}; what it adds is known only then",
                        src.describe()
                    );
                    self.dry.set(DryTally {
                        fetch: true,
                        ..self.dry.get()
                    });
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
        let state = match State::load(&self.target) {
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

    /// A phase's steps through the engine, once: every step journaled in the phase's `journal` (see
    /// [`Runner::journal`]), then the phase marked complete; on a dry run, what each would change.
    pub(crate) fn steps<C, S: Step<C>>(
        &self,
        phase: Phase,
        record: &InstanceRecord,
        steps: &[S],
        cx: &mut C,
        journal: Journal,
        last: bool,
    ) -> Ending {
        let mut state = match journal {
            Journal::Open(s) => s,
            Journal::Ended(ending) => return self.ended(phase, ending),
        };
        if self.opts.dry_run {
            return self.dry_steps(phase, record, steps, cx, &state);
        }
        let target = &self.target;
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

    /// The ending of a phase that has nothing to run (see [`Runner::journal`]); a dry run says why instead.
    pub(crate) fn ended(&self, phase: Phase, ending: Ending) -> Ending {
        if !self.opts.dry_run {
            return ending;
        }
        match ending {
            Ending::Done { note, .. } if note.as_deref() == Some(INSTANCE_CHANGED) => {
                println!("{phase} phase: instance changed since first boot; would not apply");
                Ending::Quiet
            }
            Ending::Done { .. } => {
                println!("{phase} phase: done on an earlier boot; nothing would change");
                Ending::Quiet
            }
            other => other,
        }
    }

    /// `--dry-run` of a phase's steps: each one's changes against what the root holds and its journal, on
    /// stdout, one line a change; nothing is written.
    fn dry_steps<C, S: Step<C>>(
        &self,
        phase: Phase,
        record: &InstanceRecord,
        steps: &[S],
        cx: &mut C,
        state: &State,
    ) -> Ending {
        let ran = engine::dry_run(phase, steps, cx, &self.target, state);
        let mut tally = self.dry.get();
        println!("{phase} phase, instance: {}", record.source);
        for (name, planned) in &ran.steps {
            let lines = match planned {
                Planned::Journaled => {
                    vec!["nothing would change: applied by an earlier run (journaled)".into()]
                }
                Planned::Changes(c) if c.is_empty() => vec!["nothing would change".into()],
                Planned::Changes(c) => {
                    tally.changes += c.len();
                    c.iter().flat_map(|c| c.lines()).collect()
                }
                Planned::Said(Intent::Would(text)) => {
                    tally.would += 1;
                    vec![text.clone()]
                }
                Planned::Said(Intent::Nothing(why)) => vec![format!("nothing would change: {why}")],
                Planned::Fails(e) => vec![format!("would fail: {e}")],
                Planned::NotRun => vec!["would not run: an earlier step would fail".into()],
            };
            for (i, line) in lines.iter().enumerate() {
                let shown = if i == 0 { *name } else { "" };
                println!("  {shown:<10} {line}");
            }
        }
        self.dry.set(tally);
        match ran.error {
            Some(e) => Ending::Failed {
                steps: vec![],
                error: e.into(),
            },
            None => Ending::Quiet,
        }
    }

    /// Saves the status and prints the phase line, and the whole-node line when the phase failed or was the
    /// node's last. A failure is one line of text on stderr; on the running system the console gets its JSON
    /// lines too (the serial console's reader and the boot tests wait for them), for a root folder only the
    /// status file has it.
    fn report(&self, phase: Phase, seen: Seen, ending: Ending, started: u64) -> Exit {
        let (steps, note, ok, last, exit) = match ending {
            Ending::Quiet => return Exit::Done,
            Ending::Done { steps, note, last } => (steps, note, true, last, Exit::Done),
            Ending::Failed { steps, error } => {
                let exit = error.exit();
                let text = error.to_string();
                if self.opts.dry_run {
                    self.console
                        .error(&format!("dry run: {phase} phase would fail: {text}"));
                    return exit;
                }
                self.console.error(&format!("{phase} phase failed: {text}"));
                (steps, Some(text), false, true, exit)
            }
        };
        if self.opts.dry_run {
            return exit;
        }
        let status = Status {
            phase,
            instance: seen.instance,
            steps,
            note,
        };
        let run = Run {
            phase,
            ok,
            last,
            started,
            finished: now(),
            error: (!ok).then(|| status.note.clone()).flatten(),
        };
        let node = NodeStatus::after(
            &self.target,
            status.merged_with_boot(&self.target),
            run,
            seen.image,
        );
        if let Err(e) = node.save(&self.target) {
            let warning = format!("warning: status not saved: {e}");
            if self.console.is_live() {
                self.console.line(&warning);
            } else {
                self.console.error(&warning);
            }
        }
        if ok || self.console.is_live() {
            let word = if ok { "ready" } else { "failed" };
            self.console
                .line(&format!("{phase} {word} {}", status.json()));
            if last || !ok {
                self.console.line(&format!("{word} {}", node.json()));
            }
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
        Some(first) if first != record => Some(INSTANCE_CHANGED.to_string()),
        _ => None,
    };
    Some(Ending::Done {
        steps: engine::skipped(phase, names),
        note,
        last,
    })
}
