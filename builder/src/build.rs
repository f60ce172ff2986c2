//! `cairn build`: profile → resolve → pull → assemble → filesystem → report.
//!
//! Everything that can be checked before any work is checked first (profile, options, agent), so bad input
//! writes nothing. Outputs are written to temp files in the output folder and renamed into place at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cairn_profile::{Digest, Format, Profile};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;
use tracing::info;

use crate::assemble::{self, Merged, layer::Unpacked};
use crate::cache::Cache;
use crate::preload::{self, ResolvedPreload};
use crate::registry::Registry;
use crate::report::{LayerReport, Output, PreloadReport, ProfileRef, Report, RockReport};
use crate::resolve::{self, Layer, LazyRegistry, ResolvedRock};
use crate::system;
use crate::{agent, disk, files, filesystem, pull};

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
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad input or usage: exit 2.
    #[error("{0}")]
    Input(String),
    /// The build failed: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl BuildError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Input(_) => 2,
            BuildError::Failed(_) => 1,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> BuildError {
    BuildError::Failed(e.to_string())
}

/// `SOURCE_DATE_EPOCH`, or the fixed default.
pub fn source_date_epoch() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse::<u64>().map_err(|_| {
            BuildError::Input(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
        }),
        _ => Ok(DEFAULT_EPOCH),
    }
}

pub struct Built {
    pub report: Report,
    pub report_path: PathBuf,
    /// Whether any request went to a registry (a fully cached build makes none).
    pub used_network: bool,
}

pub async fn build(opts: &BuildOptions) -> Result<Built, BuildError> {
    let started = Instant::now();
    let mut profile = Profile::load(&opts.profile).map_err(|e| BuildError::Input(e.to_string()))?;
    if !opts.formats.is_empty() {
        profile.formats = opts.formats.clone();
    }
    let epoch = source_date_epoch()?;
    let agent = agent::locate(opts.agent.as_deref(), profile.arch)
        .map_err(|e| BuildError::Input(e.to_string()))?;
    let cache_root =
        Cache::locate(opts.cache.as_deref()).map_err(|e| BuildError::Input(e.to_string()))?;
    let cache = Arc::new(Cache::open(cache_root).map_err(failed)?);

    // Resolve.
    let rocks: Vec<_> = profile.rocks().cloned().collect();
    let mut registry = LazyRegistry::new(
        rocks
            .iter()
            .chain(profile.preload_rocks())
            .map(|r| &r.reference)
            .collect(),
    );
    let mut resolved = Vec::with_capacity(rocks.len());
    for rock in &rocks {
        let r = resolve::resolve(&mut registry, &cache, rock, profile.arch)
            .await
            .map_err(failed)?;
        info!(rock = %rock.key, manifest = %r.manifest_digest, layers = r.layers.len(), "resolved");
        resolved.push(r);
    }
    let preloads = preload::resolve_all(&mut registry, &cache, &profile.preloads, profile.arch)
        .await
        .map_err(failed)?;
    for p in &preloads {
        info!(rock = %p.key(), name = %p.name, pinned = %p.pinned.digest, "resolved preload");
    }

    // Pull and unpack every distinct layer, concurrently; decompression runs on blocking threads.
    let mut distinct: BTreeMap<Digest, (Layer, cairn_profile::Reference)> = BTreeMap::new();
    for r in &resolved {
        for l in &r.layers {
            distinct
                .entry(l.digest.clone())
                .or_insert_with(|| (l.clone(), r.reference.clone()));
        }
    }
    // A preload's layers stay compressed: only their blobs are needed, never an unpacked form.
    let mut preload_layers: BTreeMap<Digest, (Layer, &ResolvedPreload)> = BTreeMap::new();
    for p in &preloads {
        for l in &p.rock.layers {
            preload_layers
                .entry(l.digest.clone())
                .or_insert_with(|| (l.clone(), p));
        }
    }
    let need_network = distinct
        .keys()
        .any(|d| !cache.has_blob(d) && !cache.unpacked_dir(d).join("index.json").is_file())
        || preload_layers.keys().any(|d| !cache.has_blob(d));
    let client: Option<Arc<Registry>> = if need_network {
        Some(registry.get())
    } else {
        None
    };
    let mut tasks = JoinSet::new();
    for (digest, (layer, reference)) in distinct {
        let cache = Arc::clone(&cache);
        let client = client.clone();
        tasks.spawn(async move {
            let unpacked_index = cache.unpacked_dir(&layer.digest).join("index.json");
            let blob = if unpacked_index.is_file() {
                cache.blob_path(&layer.digest)
            } else {
                let t = Instant::now();
                let path = pull::ensure_layer(client.as_deref(), &cache, &reference, &layer).await.map_err(failed)?;
                info!(layer = %layer.digest, bytes = layer.size, ms = t.elapsed().as_millis() as u64, "pulled");
                path
            };
            let t = Instant::now();
            let unpacked = tokio::task::spawn_blocking(move || assemble::layer::unpack(&cache, &layer, &blob))
                .await
                .map_err(failed)?
                .map_err(failed)?;
            info!(layer = %digest, entries = unpacked.entries.len(), ms = t.elapsed().as_millis() as u64, "unpacked");
            Ok::<_, BuildError>((digest, Arc::new(unpacked)))
        });
    }
    let mut unpacked: BTreeMap<Digest, Arc<Unpacked>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (digest, u) = joined.map_err(failed)??;
        unpacked.insert(digest, u);
    }
    // After the root's layers, so a blob shared with them is never fetched twice at once.
    let mut tasks = JoinSet::new();
    for (layer, p) in preload_layers.into_values() {
        let cache = Arc::clone(&cache);
        let client = client.clone();
        let reference = p.reference().clone();
        let key = p.key().to_string();
        tasks.spawn(async move {
            let t = Instant::now();
            pull::ensure_layer(client.as_deref(), &cache, &reference, &layer)
                .await
                .map_err(|e| failed(format!("{key}: {reference}: {e}")))?;
            info!(layer = %layer.digest, bytes = layer.size, ms = t.elapsed().as_millis() as u64, "preload blob");
            Ok::<_, BuildError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(failed)??;
    }

    // Assemble.
    let t = Instant::now();
    let mut merged = Vec::new();
    for r in &resolved {
        for l in &r.layers {
            merged.push(Merged {
                rock: r.reference.to_string(),
                digest: l.digest.to_string(),
                unpacked: Arc::clone(&unpacked[&l.digest]),
            });
        }
    }
    let (mut tree, tars) = assemble::merge(merged).map_err(failed)?;
    files::add_profile_files(&mut tree, &profile).map_err(failed)?;
    let baked = system::bake(&mut tree, &tars, &profile).map_err(failed)?;
    files::add_cairn_files(&mut tree, &profile, &agent).map_err(failed)?;
    // The archives live in the cache's temp folder until the outputs are written (removed on drop).
    let archives = add_preloads(&mut tree, &cache, &preloads, epoch)?;
    info!(ms = t.elapsed().as_millis() as u64, "assembled");

    // Filesystem outputs.
    std::fs::create_dir_all(&opts.out).map_err(|e| {
        failed(format!(
            "creating output folder {}: {e}",
            opts.out.display()
        ))
    })?;
    let mut outputs = Vec::new();
    let mut formats = profile.formats.clone();
    // The tar is the assembled root as it is; the disk formats rearrange the tree after it.
    formats.sort();
    let profile_sha256 = hex::encode(Sha256::digest(profile.text.as_bytes()));
    let mut disk_report = None;
    if formats.contains(&Format::Tar) {
        let t = Instant::now();
        let name = format!("{}.tar", profile.name);
        let dest = opts.out.join(&name);
        let tmp = temp_in(&opts.out)?;
        let tar_opts = filesystem::TarOptions {
            epoch,
            drop_xattrs: &[],
        };
        let (written, file) =
            filesystem::write_tar(&tree, tree.root(), &tars, tar_opts, tmp.as_file(), &dest)
                .map_err(failed)?;
        file.sync_all()
            .map_err(|e| failed(format!("{}: {e}", dest.display())))?;
        persist(tmp, &dest)?;
        info!(file = %dest.display(), bytes = written.size, entries = written.entries, ms = t.elapsed().as_millis() as u64, "wrote");
        outputs.push(Output {
            format: "tar",
            file: name,
            size: written.size,
            sha256: written.sha256,
        });
    }
    if formats.contains(&Format::Raw) || formats.contains(&Format::Qcow2) {
        let t = Instant::now();
        let work = tempfile::TempDir::new_in(&opts.out).map_err(|e| {
            failed(format!(
                "creating a work folder in {}: {e}",
                opts.out.display()
            ))
        })?;
        let digests: Vec<String> = resolved
            .iter()
            .map(|r| r.manifest_digest.to_string())
            .collect();
        let ids = disk::Ids::new(&profile_sha256, &digests);
        let raw = work.path().join("disk.raw");
        let inputs = disk::DiskInputs {
            profile: &profile,
            ids: &ids,
            agent: &agent,
            epoch,
        };
        let report =
            disk::build_raw(&mut tree, &tars, &inputs, work.path(), &raw).map_err(failed)?;
        info!(root_hash = %report.root_hash, ms = t.elapsed().as_millis() as u64, "disk");
        if formats.contains(&Format::Qcow2) {
            let name = format!("{}.qcow2", profile.name);
            let qcow = work.path().join("disk.qcow2");
            let out = std::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&qcow)
                .output()
                .map_err(|e| {
                    failed(format!(
                        "running qemu-img (rocks/setup-host installs qemu-utils): {e}"
                    ))
                })?;
            if !out.status.success() {
                return Err(failed(format!(
                    "qemu-img convert: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            outputs.push(place(&qcow, &opts.out.join(&name), "qcow2", name)?);
        }
        if formats.contains(&Format::Raw) {
            let name = format!("{}.raw", profile.name);
            outputs.push(place(&raw, &opts.out.join(&name), "raw", name)?);
        }
        disk_report = Some(report);
    }

    // Report.
    let report = Report {
        cairn_version: env!("CARGO_PKG_VERSION"),
        name: profile.name.clone(),
        version: profile.version.clone(),
        arch: profile.arch.oci(),
        profile: ProfileRef {
            file: opts
                .profile
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: profile_sha256,
        },
        source_date_epoch: epoch,
        rocks: resolved.iter().map(rock_report).collect(),
        preloads: preloads
            .iter()
            .zip(&archives)
            .map(|(p, a)| PreloadReport {
                rock: p.reference().to_string(),
                name: p.name.clone(),
                index_digest: p.rock.index_digest.as_ref().map(ToString::to_string),
                manifest_digest: p.rock.manifest_digest.to_string(),
                path: p.root_path(),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect(),
        outputs,
        system: baked,
        disk: disk_report,
        kubernetes: profile
            .kubernetes
            .as_ref()
            .map(crate::report::KubernetesReport::new),
    };
    let report_path = opts.out.join(format!("{}.manifest.json", profile.name));
    let mut json = serde_json::to_vec_pretty(&report).map_err(failed)?;
    json.push(b'\n');
    write_atomically(&report_path, &json)?;
    info!(ms = started.elapsed().as_millis() as u64, "built");
    Ok(Built {
        report,
        report_path,
        used_network: registry.used(),
    })
}

/// Writes each preload's archive and places it, root-owned and 0644, in a 0755 `/usr/lib/cairn/images`.
fn add_preloads(
    tree: &mut assemble::tree::Tree,
    cache: &Cache,
    preloads: &[ResolvedPreload],
    epoch: u64,
) -> Result<Vec<preload::Archive>, BuildError> {
    use assemble::tree::{Data, Meta, New};
    let mut archives = Vec::with_capacity(preloads.len());
    if preloads.is_empty() {
        return Ok(archives);
    }
    let mut dir = Meta::new(0o755, 0, 0);
    dir.mtime = epoch;
    tree.put(preload::IMAGES_DIR.as_bytes(), New::Dir(dir))
        .map_err(|e| failed(format!("/{}: {e}", preload::IMAGES_DIR)))?;
    for p in preloads {
        let t = Instant::now();
        let archive = preload::write_archive(cache, p, epoch).map_err(failed)?;
        let mut meta = Meta::new(0o644, 0, 0);
        meta.mtime = epoch;
        let data = Data::Host {
            path: archive.file.path().to_path_buf(),
            size: archive.size,
        };
        let path = p.root_path();
        tree.put(
            path.trim_start_matches('/').as_bytes(),
            New::File(meta, data),
        )
        .map_err(|e| failed(format!("{}: {path}: {e}", p.key())))?;
        info!(rock = %p.key(), path = %path, bytes = archive.size, ms = t.elapsed().as_millis() as u64, "preload archive");
        archives.push(archive);
    }
    Ok(archives)
}

fn rock_report(r: &ResolvedRock) -> RockReport {
    RockReport {
        key: r.key.clone(),
        reference: r.reference.to_string(),
        index_digest: r.index_digest.as_ref().map(ToString::to_string),
        manifest_digest: r.manifest_digest.to_string(),
        config_digest: r.config_digest.to_string(),
        layers: r
            .layers
            .iter()
            .map(|l| LayerReport {
                digest: l.digest.to_string(),
                diff_id: l.diff_id.to_string(),
                media_type: l.media_type.clone(),
                size: l.size,
            })
            .collect(),
    }
}

fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile, BuildError> {
    tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| failed(format!("creating a temp file in {}: {e}", dir.display())))
}

/// Moves a finished output from the work folder into place (same file system) and describes it.
fn place(
    from: &Path,
    dest: &Path,
    format: &'static str,
    name: String,
) -> Result<Output, BuildError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut hash = Sha256::new();
    let mut file =
        std::fs::File::open(from).map_err(|e| failed(format!("{}: {e}", from.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| failed(format!("{}: {e}", from.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    file.sync_all()
        .map_err(|e| failed(format!("{}: {e}", from.display())))?;
    std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| failed(format!("{}: {e}", from.display())))?;
    std::fs::rename(from, dest)
        .map_err(|e| failed(format!("renaming into {}: {e}", dest.display())))?;
    Ok(Output {
        format,
        file: name,
        size,
        sha256: hex::encode(hash.finalize()),
    })
}

fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    // Temp files are 0600; an output is an ordinary file.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| failed(format!("{}: {e}", tmp.path().display())))?;
    tmp.persist(dest)
        .map_err(|e| failed(format!("renaming into {}: {}", dest.display(), e.error)))?;
    Ok(())
}

/// Writes a small file by temp file, fsync and rename.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| failed(format!("creating a temp file in {}: {e}", dir.display())))?;
    tmp.write_all(bytes)
        .map_err(|e| failed(format!("{}: {e}", tmp.path().display())))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| failed(format!("{}: {e}", tmp.path().display())))?;
    persist(tmp, dest)
}
