//! `cairn build`: profile → resolve → pull → assemble → filesystem → report.
//!
//! Everything that can be checked before any work is checked first (profile, options, agent), so bad input
//! writes nothing. Outputs are written to temp files in the output folder and renamed into place at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cairn_profile::{Format, Profile};
use tracing::info;

use crate::agent::{self, AgentError};
use crate::assemble::{self, AssembleError};
use crate::cache::{Cache, CacheError};
use crate::disk::{self, DiskError};
use crate::files::{self, FilesError};
use crate::output::{self, OutputError};
use crate::preload::{self, PreloadError};
use crate::progress;
use crate::pull::{self, PullError};
use crate::report::{Made, Report, ReportError};
use crate::resolve::{self, LazyRegistry, ResolveError};
use crate::sbom::{self, SbomError};
use crate::snaps::{self, SnapError};
use crate::space::{self, SpaceError};
use crate::system::{self, SystemError};

/// The epoch used when `SOURCE_DATE_EPOCH` is not set: never the wall clock.
pub const DEFAULT_EPOCH: u64 = 0;

#[derive(Debug, Default, Clone)]
pub struct BuildOptions {
    pub profile: PathBuf,
    pub out: PathBuf,
    /// Replaces the profile's formats when given.
    pub formats: Vec<Format>,
    pub cache: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    /// The Secure Boot key and certificate; none for an unsigned image.
    pub secure_boot: disk::secure_boot::SecureBootOptions,
}

/// Why a build stopped: bad input (found before any work) or a stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Profile(#[from] cairn_profile::Error),
    #[error("SOURCE_DATE_EPOCH=`{0}` is not a number of seconds")]
    Epoch(String),
    /// A rock still pinned to the example profiles' all-zero digest (its label).
    #[error(
        "{0}: the all-zero placeholder digest names no rock: run `cairn pin PROFILE` against a registry that serves it"
    )]
    Placeholder(String),
    /// `--out` cannot be made or written.
    #[error(transparent)]
    OutFolder(OutputError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    SecureBoot(#[from] disk::secure_boot::SecureBootError),
    /// No cache folder could be found (none given and no home).
    #[error(transparent)]
    CacheLocation(CacheError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Snaps(#[from] SnapError),
    /// Too little room for the build, found before any blob is pulled.
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error(transparent)]
    Sbom(#[from] SbomError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Preload(#[from] PreloadError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    System(#[from] SystemError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// `SOURCE_DATE_EPOCH`, or the fixed default.
pub fn source_date_epoch() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse::<u64>().map_err(|_| BuildError::Epoch(v)),
        _ => Ok(DEFAULT_EPOCH),
    }
}

pub struct Built {
    pub report: Report,
    pub report_path: PathBuf,
    /// Whether any request went to a registry (a fully cached build makes none).
    pub used_network: bool,
}

/// What a build starts from, all checked before any work.
struct Checked {
    profile: Profile,
    epoch: u64,
    agent: PathBuf,
    signer: Option<disk::secure_boot::Signer>,
    cache: Arc<Cache>,
    /// The `[[snap]]`s, verified and copied into the cache's work folder, in install order.
    snaps: Vec<snaps::Verified>,
}

fn check_inputs(opts: &BuildOptions) -> Result<Checked, BuildError> {
    let mut profile = Profile::load(&opts.profile)?;
    if !opts.formats.is_empty() {
        profile.formats = opts.formats.clone();
    }
    if let Some(r) = profile.placeholder_rocks().next() {
        return Err(BuildError::Placeholder(r.label()));
    }
    let epoch = source_date_epoch()?;
    let agent = agent::locate(opts.agent.as_deref(), profile.arch)?;
    let signer = disk::secure_boot::Signer::load(&opts.secure_boot)?;
    let cache_root = Cache::locate(opts.cache.as_deref()).map_err(BuildError::CacheLocation)?;
    let cache = Arc::new(Cache::open(cache_root)?);
    // Local files, checked before any network work: a wrong pin is bad input.
    let snaps = snaps::verify_all(&profile, &cache)?;
    // Last of the checks, as it makes the folder.
    output::check_folder(&opts.out).map_err(BuildError::OutFolder)?;
    Ok(Checked {
        profile,
        epoch,
        agent,
        signer,
        cache,
        snaps,
    })
}

pub async fn build(opts: &BuildOptions) -> Result<Built, BuildError> {
    let started = Instant::now();
    let Checked {
        profile,
        epoch,
        agent,
        signer,
        cache,
        snaps,
    } = check_inputs(opts)?;
    let rocks: Vec<_> = profile.rocks().cloned().collect();
    let mut registry = LazyRegistry::new(
        rocks
            .iter()
            .chain(profile.preload_rocks())
            .map(|r| &r.reference)
            .collect(),
    );
    let resolved = resolve::all(&mut registry, &cache, &rocks, profile.arch).await?;
    let preloads =
        preload::resolve_all(&mut registry, &cache, &profile.preloads, profile.arch).await?;
    let needs = space::needs(&cache, &resolved, &preloads, &profile.formats);
    space::check(&opts.out, cache.root(), &needs)?;
    let unpacked = pull::all(&mut registry, &cache, &resolved, &preloads).await?;

    let (mut tree, tars, baked, archives, snaps) = progress::step("root tree", || {
        let (mut tree, tars) = assemble::rocks(&resolved, &unpacked)?;
        files::add_profile_files(&mut tree, &profile)?;
        let baked = system::bake(&mut tree, &tars, &profile)?;
        files::add_cairn_files(
            &mut tree,
            &profile,
            &agent,
            signer.as_ref().map(|s| s.certificate_der()),
        )?;
        let archives = preload::add_archives(&mut tree, &cache, &preloads, epoch)?;
        let snaps = snaps::add_to_tree(&mut tree, &tars, &snaps, epoch)?;
        Ok::<_, BuildError>((tree, tars, baked, archives, snaps))
    })?;
    // From the root as assembled, before the disk formats move /var into the factory archive.
    let sbom = progress::step("SBOM", || {
        sbom::document(
            &tree,
            &tars,
            &sbom::Inputs {
                profile: &profile,
                rocks: &resolved,
                preloads: &preloads,
                snaps: &snaps,
                epoch,
            },
        )
    })?;
    let contents = assemble::contents::summarize(
        &tree,
        &assemble::contents::RockLayers::of(&resolved),
        profile.files.iter().map(|f| f.path.as_str()),
    );

    // The tar is the assembled root as it is; the disk formats rearrange the tree after it.
    // Every output is staged, and all of them are committed together at the end.
    let mut stage = output::Stage::new(&opts.out)?;
    let mut outputs = Vec::new();
    if profile.formats.contains(&Format::Tar) {
        let _bar = progress::Bar::stage("tar");
        outputs.push(output::tar(&tree, &tars, epoch, &mut stage, &profile.name)?);
    }
    let mut disk_report = None;
    if profile.formats.contains(&Format::Raw) || profile.formats.contains(&Format::Qcow2) {
        let ids = disk::Ids::of(&profile, &resolved);
        let inputs = disk::DiskInputs {
            profile: &profile,
            ids: &ids,
            agent: &agent,
            epoch,
            signer: signer.as_ref(),
        };
        let (report, written) =
            disk::write(&mut tree, &tars, &inputs, &profile.formats, &mut stage)?;
        outputs.extend(written);
        disk_report = Some(report);
    }
    outputs.push(stage.add_document(&format!("{}.spdx.json", profile.name), "spdx", &sbom)?);

    let report = Report::new(Made {
        profile: &profile,
        profile_file: &opts.profile,
        epoch,
        rocks: &resolved,
        preloads: &preloads,
        archives: &archives,
        outputs,
        contents,
        system: baked,
        snaps,
        disk: disk_report,
    });
    report.stage(&mut stage)?;
    stage.commit()?;
    let report_path = opts.out.join(report.file_name());
    info!(ms = started.elapsed().as_millis() as u64, "built");
    Ok(Built {
        report,
        report_path,
        used_network: registry.used(),
    })
}
