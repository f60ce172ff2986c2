//! Resolve: from a pinned reference to the platform manifest, config and layer list of the profile's arch.
//!
//! Every manifest and config is fetched by digest and checked against it before it is parsed or cached, so what
//! the cache holds is exactly what was pinned. A cached rock resolves with no network request at all.

use std::sync::Arc;

use cairn_profile::{Arch, Digest, Reference, ReferenceError, Rock};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::info;

use crate::cache::{Cache, CacheError};
use crate::registry::{DOCKER_LIST, DownloadError, OCI_INDEX, Registry, RegistryError, Sink};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A registry failure for the base's or a layer's rock, with its profile key.
    #[error("{key}: {source}")]
    Rock { key: String, source: RegistryError },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{what}: digest mismatch: the registry sent content with digest {actual}")]
    DigestMismatch { what: String, actual: Digest },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    /// A config that does not say its platform cannot be checked against the profile's arch.
    #[error(
        "{rock}: the image config {config} has no {missing}: cannot check it is linux and the profile's arch"
    )]
    PlatformMissing {
        /// The profile key and the reference, e.g. `layer[0].rock (registry/name@sha256:…)`.
        rock: String,
        config: Digest,
        missing: &'static str,
    },
    #[error("{what}: not a valid document: {source}")]
    Document {
        what: String,
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Digest {
        what: String,
        source: ReferenceError,
    },
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    /// The uncompressed tar's digest, from the image config; checked when the layer is unpacked.
    pub diff_id: Digest,
}

#[derive(Debug, Clone)]
pub struct ResolvedRock {
    /// The profile key (`base.rock`, `layer[0].rock`).
    pub key: String,
    /// `FILE:LINE:COLUMN: KEY`, for messages.
    pub label: String,
    pub reference: Reference,
    /// The pinned digest when it names an index (a multi-arch rock).
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Config {
    architecture: Option<String>,
    os: Option<String>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Creates the registry client only when a request is really needed: a cached build makes none.
pub struct LazyRegistry<'a> {
    references: Vec<&'a Reference>,
    client: Option<Arc<Registry>>,
}

impl<'a> LazyRegistry<'a> {
    pub fn new(references: Vec<&'a Reference>) -> LazyRegistry<'a> {
        LazyRegistry {
            references,
            client: None,
        }
    }

    pub fn get(&mut self) -> Arc<Registry> {
        let references = &self.references;
        Arc::clone(
            self.client
                .get_or_insert_with(|| Arc::new(Registry::new(references.iter().copied()))),
        )
    }

    pub fn used(&self) -> bool {
        self.client.is_some()
    }
}

/// A config is small; a registry that streams on and on is not serving one.
const CONFIG_LIMIT: u64 = 64 << 20;

/// A config on its way into memory.
struct Bytes(Vec<u8>);

impl Sink for Bytes {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.0.clear();
        Ok(())
    }
}

/// Bytes of a manifest or config, from the cache or fetched and verified.
async fn fetch_verified(
    registry: &mut LazyRegistry<'_>,
    cache: &Cache,
    r: &Reference,
    digest: &Digest,
    manifest: bool,
) -> Result<Vec<u8>, ResolveError> {
    if let Some(bytes) = cache.read_blob(digest)? {
        return Ok(bytes);
    }
    let what = format!("{}/{}@{digest}", r.registry, r.repository);
    let bytes = if manifest {
        registry.get().manifest(r, Some(digest)).await?
    } else {
        let mut bytes = Bytes(Vec::new());
        match registry
            .get()
            .blob(r, digest, None, CONFIG_LIMIT, &mut bytes)
            .await
        {
            Ok(_) => bytes.0,
            Err(DownloadError::Registry(e)) => return Err(e.into()),
            Err(DownloadError::TooLarge { .. }) => {
                return Err(ResolveError::Invalid {
                    what,
                    message: "config blob larger than 64 MiB".into(),
                });
            }
            Err(DownloadError::Sink(e)) => {
                return Err(ResolveError::Invalid {
                    what,
                    message: e.to_string(),
                });
            }
        }
    };
    let actual = Digest::from_sha256(&Sha256::digest(&bytes));
    if &actual != digest {
        return Err(ResolveError::DigestMismatch { what, actual });
    }
    cache.put_blob(digest, &bytes)?;
    Ok(bytes)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ResolveError> {
    serde_json::from_slice(bytes).map_err(|source| ResolveError::Document {
        what: what.to_string(),
        source,
    })
}

fn digest_of(what: &str, text: &str) -> Result<Digest, ResolveError> {
    Digest::parse(text).map_err(|source| ResolveError::Digest {
        what: what.to_string(),
        source,
    })
}

/// Resolves the base and the layer rocks for `arch`, in order.
pub async fn all(
    registry: &mut LazyRegistry<'_>,
    cache: &Cache,
    rocks: &[Rock],
    arch: Arch,
) -> Result<Vec<ResolvedRock>, ResolveError> {
    let mut resolved = Vec::with_capacity(rocks.len());
    for rock in rocks {
        let r = resolve(registry, cache, rock, arch)
            .await
            .map_err(|e| match e {
                ResolveError::Registry(source) => ResolveError::Rock {
                    key: rock.label(),
                    source,
                },
                e => e,
            })?;
        info!(rock = %rock.key, manifest = %crate::progress::short(r.manifest_digest.as_str()), layers = r.layers.len(), "resolved");
        resolved.push(r);
    }
    Ok(resolved)
}

/// Resolves one rock for `arch`.
pub async fn resolve(
    registry: &mut LazyRegistry<'_>,
    cache: &Cache,
    rock: &Rock,
    arch: Arch,
) -> Result<ResolvedRock, ResolveError> {
    let r = &rock.reference;
    let what = r.to_string();
    let pinned = r.pinned().ok_or_else(|| ResolveError::Invalid {
        what: what.clone(),
        message: "no digest: pin it: cairn pin".into(),
    })?;
    let bytes = fetch_verified(registry, cache, r, pinned, true).await?;
    let doc: Document = parse(&what, &bytes)?;
    let is_index = doc.manifests.is_some()
        || matches!(
            doc.media_type.as_deref(),
            Some(OCI_INDEX) | Some(DOCKER_LIST)
        );
    let (index_digest, manifest_digest, doc) = if is_index {
        let entries = doc.manifests.unwrap_or_default();
        let chosen = choose_platform(&entries, arch).ok_or_else(|| {
            let available: Vec<String> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            ResolveError::Invalid {
                what: what.clone(),
                message: format!(
                    "the index has no linux/{} image (it has: {})",
                    arch.oci(),
                    if available.is_empty() {
                        "none".into()
                    } else {
                        available.join(", ")
                    }
                ),
            }
        })?;
        let digest = digest_of(&what, &chosen.digest)?;
        let bytes = fetch_verified(registry, cache, r, &digest, true).await?;
        let doc: Document = parse(&format!("{what} ({digest})"), &bytes)?;
        if doc.manifests.is_some() {
            return Err(ResolveError::Invalid {
                what,
                message: "an index inside an index is not supported".into(),
            });
        }
        (Some(pinned.clone()), digest, doc)
    } else {
        (None, pinned.clone(), doc)
    };
    let (Some(config), Some(layer_descs)) = (doc.config, doc.layers) else {
        return Err(ResolveError::Invalid {
            what,
            message: "the manifest has no config or no layers".into(),
        });
    };
    let config_digest = digest_of(&what, &config.digest)?;
    let config_bytes = fetch_verified(registry, cache, r, &config_digest, false).await?;
    let config: Config = parse(&format!("{what} config"), &config_bytes)?;
    // Empty counts as missing: neither says which platform the image is for.
    let os = config.os.as_deref().filter(|s| !s.is_empty());
    let architecture = config.architecture.as_deref().filter(|s| !s.is_empty());
    let (Some(os), Some(architecture)) = (os, architecture) else {
        return Err(ResolveError::PlatformMissing {
            rock: format!("{} ({what})", rock.key),
            config: config_digest.clone(),
            missing: match (architecture, os) {
                (None, None) => "architecture and no os",
                (None, Some(_)) => "architecture",
                _ => "os",
            },
        });
    };
    if os != "linux" {
        return Err(ResolveError::Invalid {
            what,
            message: format!("the image is for os {os}, not linux"),
        });
    }
    if architecture != arch.oci() {
        return Err(ResolveError::Invalid {
            what,
            message: format!(
                "the image is for {architecture}, the profile's arch is {}",
                arch.oci()
            ),
        });
    }
    if config.rootfs.diff_ids.len() != layer_descs.len() {
        return Err(ResolveError::Invalid {
            what,
            message: format!(
                "the manifest lists {} layers but the config {} diff_ids",
                layer_descs.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(layer_descs.len());
    for (desc, diff_id) in layer_descs.iter().zip(&config.rootfs.diff_ids) {
        let compression = Compression::from_media_type(&desc.media_type).ok_or_else(|| {
            ResolveError::Invalid {
                what: what.clone(),
                message: format!(
                    "layer {}: unsupported media type `{}`",
                    desc.digest, desc.media_type
                ),
            }
        })?;
        layers.push(Layer {
            digest: digest_of(&what, &desc.digest)?,
            size: u64::try_from(desc.size).map_err(|_| ResolveError::Invalid {
                what: what.clone(),
                message: format!("layer {}: negative size", desc.digest),
            })?,
            media_type: desc.media_type.clone(),
            compression,
            diff_id: digest_of(&what, diff_id)?,
        });
    }
    Ok(ResolvedRock {
        key: rock.key.clone(),
        label: rock.label(),
        reference: r.clone(),
        index_digest,
        manifest_digest,
        config_digest,
        layers,
    })
}

/// The index entry for linux/`arch`; for arm64 the v8 variant (or none) is preferred.
fn choose_platform(entries: &[Descriptor], arch: Arch) -> Option<&Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch.oci())
        })
        .collect();
    candidates
        .iter()
        .find(|e| {
            let variant = e.platform.as_ref().and_then(|p| p.variant.as_deref());
            match arch {
                Arch::Arm64 => matches!(variant, None | Some("v8")),
                Arch::Amd64 => matches!(variant, None | Some("v1")),
            }
        })
        .or(candidates.first())
        .copied()
}

/// The digest a registry serves for a reference's tag (an index digest for a multi-arch rock): what `cairn pin`
/// writes. The digest is computed from the bytes received, never taken from a header.
pub async fn digest_for_tag(registry: &Registry, r: &Reference) -> Result<Digest, RegistryError> {
    let bytes = registry.manifest(r, None).await?;
    Ok(Digest::from_sha256(&Sha256::digest(&bytes)))
}
