//! Pull: layer blobs into the cache, streamed to disk and verified against their digest as they arrive.

use std::io::Write;
use std::path::PathBuf;

use cairn_profile::{Digest, Reference};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::cache::{Cache, CacheError};
use crate::registry::{Registry, RegistryError, StreamError};
use crate::resolve::Layer;

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
}

/// Makes sure the layer's blob is in the cache; returns its path.
pub async fn ensure_layer(
    registry: Option<&Registry>,
    cache: &Cache,
    reference: &Reference,
    layer: &Layer,
) -> Result<PathBuf, PullError> {
    let path = cache.blob_path(&layer.digest);
    if path.is_file() {
        return Ok(path);
    }
    let registry = registry.expect("a registry client is made whenever a blob is missing");
    let mut tmp = cache.temp_file()?;
    let write_err = |source, tmp: &tempfile::NamedTempFile| PullError::Write {
        digest: layer.digest.clone(),
        path: tmp.path().to_path_buf(),
        source,
    };
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut stream = registry.blob(reference, &layer.digest).await?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(StreamError::Mismatch { actual }) => {
                return Err(PullError::DigestMismatch {
                    reference: reference.to_string(),
                    digest: layer.digest.clone(),
                    actual,
                });
            }
            Err(StreamError::Failed(e)) => return Err(e.into()),
        };
        received += chunk.len() as u64;
        if received > layer.size {
            return Err(PullError::Size {
                reference: reference.to_string(),
                digest: layer.digest.clone(),
                message: format!(
                    "the registry sent more than the {} bytes the manifest gives",
                    layer.size
                ),
            });
        }
        hasher.update(&chunk);
        if let Err(e) = out.write_all(&chunk) {
            drop(out);
            return Err(write_err(e, &tmp));
        }
    }
    if let Err(e) = out.flush() {
        drop(out);
        return Err(write_err(e, &tmp));
    }
    drop(out);
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
