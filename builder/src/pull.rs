//! Pull: layer blobs into the cache, streamed to disk and verified against their digest as they arrive, and each
//! distinct layer of the root unpacked once.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cairn_profile::{Digest, Reference};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::assemble::layer::{LayerError, Unpacked, unpack};
use crate::assemble::{MAX_LAYERS, MAX_TOTAL_ENTRIES, UNPACK_AT_ONCE};
use crate::cache::{Cache, CacheError};
use crate::preload::ResolvedPreload;
use crate::progress::{Bar, short};
use crate::registry::{DownloadError, Registry, RegistryError, Sink};
use crate::resolve::{Layer, LazyRegistry, ResolvedRock};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(
        "blob {digest} of {reference}: digest mismatch: received content with digest {actual}; nothing was cached"
    )]
    DigestMismatch {
        reference: String,
        digest: Digest,
        actual: String,
    },
    #[error("blob {digest} of {reference}: {message}; nothing was cached")]
    Size {
        reference: String,
        digest: Digest,
        message: String,
    },
    #[error("blob {digest}: writing {}: {source}", path.display())]
    Write {
        digest: Digest,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unpack(#[from] LayerError),
    /// A failure of the base's or a layer's rock, with its profile key.
    #[error("{key}: {source}")]
    Rock { key: String, source: Box<PullError> },
    #[error(
        "the profile's rocks have {count} layers together; cairn merges at most {limit} into one root"
    )]
    TooManyLayers { count: usize, limit: usize },
    #[error(
        "{key}: layer {digest}: the layers unpacked so far hold {count} entries together, over the limit of {limit} for one root"
    )]
    TooManyEntries {
        key: String,
        digest: Digest,
        count: usize,
        limit: usize,
    },
    #[error("a pull task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{key}: {reference}: {source}")]
    Preload {
        key: String,
        reference: String,
        source: Box<PullError>,
    },
}

/// Pulls and unpacks every distinct layer of `rocks`, concurrently (decompression runs on blocking threads), then
/// the blobs of the preloads' layers, which stay compressed. Returns the unpacked layers by digest. The registry
/// client is made only if some blob is missing from the cache.
pub async fn all(
    registry: &mut LazyRegistry<'_>,
    cache: &Arc<Cache>,
    rocks: &[ResolvedRock],
    preloads: &[ResolvedPreload],
) -> Result<BTreeMap<Digest, Arc<Unpacked>>, PullError> {
    let count: usize = rocks.iter().map(|r| r.layers.len()).sum();
    if count > MAX_LAYERS {
        return Err(PullError::TooManyLayers {
            count,
            limit: MAX_LAYERS,
        });
    }
    // Each layer with where it comes from: the rock's reference, its label (`FILE:LINE:COL: key`) and key.
    let mut distinct: BTreeMap<Digest, (Layer, Reference, String, String)> = BTreeMap::new();
    for r in rocks {
        for l in &r.layers {
            distinct.entry(l.digest.clone()).or_insert_with(|| {
                (
                    l.clone(),
                    r.reference.clone(),
                    r.label.clone(),
                    r.key.clone(),
                )
            });
        }
    }
    // A preload's layers stay compressed: only their blobs are needed, never an unpacked form.
    let mut preload_layers: BTreeMap<Digest, (Layer, &ResolvedPreload)> = BTreeMap::new();
    for p in preloads {
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
    let client: Option<Arc<Registry>> = need_network.then(|| registry.get());
    let unpacking = Arc::new(Semaphore::new(UNPACK_AT_ONCE));
    let mut tasks = JoinSet::new();
    for (digest, (layer, reference, key, rock)) in distinct {
        let cache = Arc::clone(cache);
        let client = client.clone();
        let unpacking = Arc::clone(&unpacking);
        tasks.spawn(async move {
            let unpacked_index = cache.unpacked_dir(&layer.digest).join("index.json");
            let (blob, cached) = if unpacked_index.is_file() {
                debug!(rock = %rock, layer = %short(layer.digest.as_str()), "cached");
                (cache.blob_path(&layer.digest), true)
            } else {
                let t = Instant::now();
                let label = format!("{rock} {}", short(layer.digest.as_str()));
                let path = ensure_layer(client.as_deref(), &cache, &reference, &layer, &label)
                    .await
                    .map_err(|e| PullError::Rock {
                        key: key.clone(),
                        source: Box::new(e),
                    })?;
                info!(rock = %rock, layer = %short(layer.digest.as_str()), bytes = layer.size, ms = t.elapsed().as_millis() as u64, "pulled");
                (path, false)
            };
            // Bounds the indexes being built at once: each may grow to a layer's limit before it is checked.
            let _permit = unpacking.acquire_owned().await;
            let t = Instant::now();
            let bar = (!cached).then(|| {
                Bar::stage(&format!("unpacking {rock} {}", short(layer.digest.as_str())))
            });
            let unpacked =
                tokio::task::spawn_blocking(move || unpack(&cache, &layer, &blob)).await??;
            drop(bar);
            if !cached {
                info!(rock = %rock, layer = %short(digest.as_str()), entries = unpacked.entries.len(), ms = t.elapsed().as_millis() as u64, "unpacked");
            }
            Ok::<_, PullError>((digest, key, cached, Arc::new(unpacked)))
        });
    }
    let mut unpacked = BTreeMap::new();
    let mut entries = 0usize;
    let mut cached = 0usize;
    while let Some(joined) = tasks.join_next().await {
        let (digest, key, was_cached, u) = joined??;
        entries = within_total(entries, u.entries.len(), MAX_TOTAL_ENTRIES, &key, &digest)?;
        cached += usize::from(was_cached);
        unpacked.insert(digest, u);
    }
    if cached > 0 {
        info!(layers = cached, "cached: unpacked already, nothing to pull");
    }
    // After the root's layers, so a blob shared with them is never fetched twice at once.
    let mut tasks = JoinSet::new();
    for (layer, p) in preload_layers.into_values() {
        let cache = Arc::clone(cache);
        let client = client.clone();
        let reference = p.reference().clone();
        let key = p.rock.label.clone();
        let rock = p.rock.key.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let label = format!("{rock} {}", short(layer.digest.as_str()));
            ensure_layer(client.as_deref(), &cache, &reference, &layer, &label)
                .await
                .map_err(|e| PullError::Preload {
                    key,
                    reference: reference.to_string(),
                    source: Box::new(e),
                })?;
            info!(rock = %rock, layer = %short(layer.digest.as_str()), bytes = layer.size, ms = t.elapsed().as_millis() as u64, "preload blob");
            Ok::<_, PullError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(unpacked)
}

/// `total + more` entries, or the error once that passes `limit`.
fn within_total(
    total: usize,
    more: usize,
    limit: usize,
    key: &str,
    digest: &Digest,
) -> Result<usize, PullError> {
    let count = total.saturating_add(more);
    if count > limit {
        return Err(PullError::TooManyEntries {
            key: key.to_string(),
            digest: digest.clone(),
            count,
            limit,
        });
    }
    Ok(count)
}

/// Makes sure the layer's blob is in the cache; returns its path. `label` names the transfer on a terminal's bar.
pub async fn ensure_layer(
    registry: Option<&Registry>,
    cache: &Cache,
    reference: &Reference,
    layer: &Layer,
    label: &str,
) -> Result<PathBuf, PullError> {
    let path = cache.blob_path(&layer.digest);
    if path.is_file() {
        return Ok(path);
    }
    let registry = registry.expect("a registry client is made whenever a blob is missing");
    let mut tmp = cache.temp_file()?;
    let tmp_path = tmp.path().to_path_buf();
    let write_err = |source| PullError::Write {
        digest: layer.digest.clone(),
        path: tmp_path.clone(),
        source,
    };
    let (pulled, flushed, hasher) = {
        let mut sink = HashingFile {
            hasher: Sha256::new(),
            out: std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()),
            bar: Bar::bytes(label, layer.size),
        };
        let pulled = registry
            .blob(
                reference,
                &layer.digest,
                Some(layer.size),
                layer.size,
                &mut sink,
            )
            .await;
        let flushed = sink.out.flush();
        (pulled, flushed, sink.hasher)
    };
    let received = match pulled {
        Ok(n) => n,
        Err(DownloadError::Registry(e)) => return Err(e.into()),
        Err(DownloadError::TooLarge { .. }) => {
            return Err(PullError::Size {
                reference: reference.to_string(),
                digest: layer.digest.clone(),
                message: format!(
                    "the registry sent more than the {} bytes the manifest gives",
                    layer.size
                ),
            });
        }
        Err(DownloadError::Sink(e)) => return Err(write_err(e)),
    };
    if let Err(e) = flushed {
        return Err(write_err(e));
    }
    let actual = Digest::from_sha256(&hasher.finalize());
    if actual != layer.digest {
        return Err(PullError::DigestMismatch {
            reference: reference.to_string(),
            digest: layer.digest.clone(),
            actual: actual.to_string(),
        });
    }
    if received != layer.size {
        return Err(PullError::Size {
            reference: reference.to_string(),
            digest: layer.digest.clone(),
            message: format!(
                "received {received} bytes, the manifest gives {}",
                layer.size
            ),
        });
    }
    Ok(cache.commit_blob(tmp, &layer.digest)?)
}

/// A blob on its way into a temp file, hashed as it is written: the digest covers exactly the bytes the file holds,
/// across resumed transfers, and a restart empties both.
struct HashingFile<'a> {
    hasher: Sha256,
    out: std::io::BufWriter<&'a mut std::fs::File>,
    /// The transfer's line on a terminal.
    bar: Bar,
}

impl Sink for HashingFile<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.bar.inc(bytes.len() as u64);
        self.out.write_all(bytes)
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.bar.reset();
        self.hasher = Sha256::new();
        self.out.flush()?;
        let file = self.out.get_mut();
        file.set_len(0)?;
        file.rewind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entries_of_all_layers_are_bounded_together() {
        let d = Digest::from_sha256(&[0u8; 32]);
        assert_eq!(
            within_total(3, 4, 7, "base.rock", &d).expect("at the limit"),
            7
        );
        let e = within_total(3, 5, 7, "p.toml:7:8: layer[1].rock", &d).expect_err("over");
        assert_eq!(
            e.to_string(),
            format!(
                "p.toml:7:8: layer[1].rock: layer {d}: the layers unpacked so far hold 8 entries together, over the limit of 7 for one root"
            )
        );
        assert!(within_total(usize::MAX, 1, usize::MAX, "k", &d).is_ok());
    }
}
