//! Preloads: the profile's `[[preload]]` rocks, stored read-only in the root under `/usr/lib/cairn/images/` as OCI
//! image-layout archives (an uncompressed tar of `oci-layout`, `index.json` and `blobs/sha256/`) that containerd
//! imports as they are (`ctr -n k8s.io images import FILE`) on a node with no registry to pull from.
//!
//! A preload resolves and pulls through the same code as the base and the layers, so every manifest, config and
//! layer is verified against its digest and cached, but its layers are never decompressed or merged: the archive
//! holds the registry's exact bytes. When the pin is an index, the archive holds that index and only the profile's
//! platform (its manifest, config and layers), so that containerd knows the image by the pinned digest.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use cairn_profile::{Arch, Digest, Preload, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;
use tracing::info;

use crate::assemble::tree::{Data, Meta, New, Tree, TreeError};
use crate::cache::{Cache, CacheError};
use crate::filesystem::Hashing;
use crate::registry::{OCI_INDEX, OCI_MANIFEST};
use crate::resolve::{self, LazyRegistry, ResolveError, ResolvedRock};

/// Where the archives go in the root (relative, as the tree takes paths).
pub const IMAGES_DIR: &str = cairn_profile::contract::IMAGES_DIR_IN_ROOT;

/// containerd names an imported image after this annotation of the layout's `index.json`.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A file name longer than this is shortened (file systems allow 255 bytes; leave room).
const MAX_STEM: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error("{key}: {source}")]
    Resolve { key: String, source: ResolveError },
    #[error("{key}: {reference}: {source}")]
    Cache {
        key: String,
        reference: String,
        source: CacheError,
    },
    #[error("{key}: {reference}: {message}")]
    Invalid {
        key: String,
        reference: String,
        message: String,
    },
    #[error("{key}: {reference}: {digest}: not a valid document: {source}")]
    Document {
        key: String,
        reference: String,
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("{key}: {reference}: blob {digest}: {}: {source}", path.display())]
    Blob {
        key: String,
        reference: String,
        digest: Digest,
        path: PathBuf,
        source: io::Error,
    },
    #[error("/{IMAGES_DIR}: {0}")]
    ImagesDir(TreeError),
    #[error("{key}: {path}: {source}")]
    Place {
        key: String,
        path: String,
        source: TreeError,
    },
    #[error("{key}: {reference}: writing the archive {}: {source}", path.display())]
    Write {
        key: String,
        reference: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// A preload resolved for the profile's arch: what its archive holds and what the report says of it.
#[derive(Debug, Clone)]
pub struct ResolvedPreload {
    /// The name containerd will know the image by (`ghcr.io/canonical/coredns:1.14.6-ck0`).
    pub name: String,
    /// Its tag (`org.opencontainers.image.ref.name`).
    pub tag: String,
    pub rock: ResolvedRock,
    /// What `index.json` points at: the pinned index or manifest.
    pub pinned: Descriptor,
    /// The archive's file name in [`IMAGES_DIR`].
    pub file_name: String,
}

impl ResolvedPreload {
    pub fn key(&self) -> &str {
        &self.rock.key
    }

    pub fn reference(&self) -> &Reference {
        &self.rock.reference
    }

    /// The archive's absolute path in the root.
    pub fn root_path(&self) -> String {
        format!("/{IMAGES_DIR}/{}", self.file_name)
    }

    /// Every blob the archive holds, sorted and distinct: the pinned document, the platform manifest (for an
    /// index), the config and the layers.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut blobs = vec![
            self.pinned.digest.clone(),
            self.rock.manifest_digest.clone(),
            self.rock.config_digest.clone(),
        ];
        blobs.extend(self.rock.layers.iter().map(|l| l.digest.clone()));
        blobs.sort();
        blobs.dedup();
        blobs
    }

    fn invalid(&self, message: impl Into<String>) -> PreloadError {
        PreloadError::Invalid {
            key: self.key().to_string(),
            reference: self.reference().to_string(),
            message: message.into(),
        }
    }
}

/// An OCI descriptor, as `index.json` carries it.
#[derive(Debug, Clone, Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(serialize_with = "digest_string")]
    pub digest: Digest,
    pub size: u64,
}

fn digest_string<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

#[derive(Deserialize)]
struct MediaTypeOnly {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

/// Resolves each preload for `arch` (manifests and configs verified into the cache; layers are pulled later).
pub async fn resolve_all(
    registry: &mut LazyRegistry<'_>,
    cache: &Cache,
    preloads: &[Preload],
    arch: Arch,
) -> Result<Vec<ResolvedPreload>, PreloadError> {
    let names = file_names(preloads);
    let mut out = Vec::with_capacity(preloads.len());
    for (p, file_name) in preloads.iter().zip(names) {
        let rock = resolve::resolve(registry, cache, &p.rock, arch)
            .await
            .map_err(|source| PreloadError::Resolve {
                key: p.rock.label(),
                source,
            })?;
        let pinned_digest = rock
            .index_digest
            .clone()
            .unwrap_or_else(|| rock.manifest_digest.clone());
        let cache_err = |source| PreloadError::Cache {
            key: p.rock.key.clone(),
            reference: p.rock.reference.to_string(),
            source,
        };
        // Resolving cached the pinned document: read it back for its media type and size.
        let bytes = cache
            .read_blob(&pinned_digest)
            .map_err(cache_err)?
            .ok_or_else(|| PreloadError::Invalid {
                key: p.rock.key.clone(),
                reference: p.rock.reference.to_string(),
                message: format!("{pinned_digest} is no longer in the cache"),
            })?;
        let doc: MediaTypeOnly =
            serde_json::from_slice(&bytes).map_err(|source| PreloadError::Document {
                key: p.rock.key.clone(),
                reference: p.rock.reference.to_string(),
                digest: pinned_digest.clone(),
                source,
            })?;
        // The media type is optional in an OCI document; resolving already told an index from a manifest.
        let media_type = doc.media_type.unwrap_or_else(|| {
            if rock.index_digest.is_some() || doc.manifests.is_some() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
        info!(rock = %p.rock.key, name = %p.name, pinned = %crate::progress::short(pinned_digest.as_str()), "resolved preload");
        out.push(ResolvedPreload {
            name: p.name.clone(),
            tag: p.tag().to_string(),
            pinned: Descriptor {
                media_type,
                digest: pinned_digest,
                size: bytes.len() as u64,
            },
            rock,
            file_name,
        });
    }
    Ok(out)
}

/// File names for the archives: the name with `/` and `:` made `_`, plus `.tar`. Names are distinct in a profile
/// but two could still map to one file (`a/b` and `a_b`), and a file name has a length limit: such a name gets a
/// short hash of the full name, so every preload keeps its own file, the same one on every build.
pub fn file_names(preloads: &[Preload]) -> Vec<String> {
    let stems: Vec<String> = preloads
        .iter()
        .map(|p| p.name.replace(['/', ':'], "_"))
        .collect();
    stems
        .iter()
        .zip(preloads)
        .map(|(stem, p)| {
            let clash = stems.iter().filter(|s| *s == stem).count() > 1;
            if clash || stem.len() > MAX_STEM {
                let hash = hex::encode(Sha256::digest(p.name.as_bytes()));
                // Stems are ASCII (the reference grammar), so any byte index is a char boundary.
                let cut = stem.len().min(MAX_STEM);
                format!("{}-{}.tar", &stem[..cut], &hash[..12])
            } else {
                format!("{stem}.tar")
            }
        })
        .collect()
}

/// A written archive, in the cache's temp folder until the build ends (removed on drop).
pub struct Archive {
    pub file: NamedTempFile,
    pub size: u64,
    pub sha256: String,
}

#[derive(Serialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    version: &'static str,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: [AnnotatedDescriptor<'a>; 1],
}

#[derive(Serialize)]
struct AnnotatedDescriptor<'a> {
    #[serde(flatten)]
    descriptor: &'a Descriptor,
    /// A BTreeMap so the keys come out sorted: the same bytes every build.
    annotations: std::collections::BTreeMap<&'static str, &'a str>,
}

/// The layout's `index.json`: one descriptor, the pin, named for containerd.
pub fn index_json(p: &ResolvedPreload) -> Vec<u8> {
    let index = IndexJson {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: [AnnotatedDescriptor {
            descriptor: &p.pinned,
            annotations: [(CONTAINERD_NAME, p.name.as_str()), (OCI_REF_NAME, &p.tag)]
                .into_iter()
                .collect(),
        }],
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&index).unwrap_or_default()
}

fn header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    epoch: u64,
) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h.set_size(size);
    // Paths here are at most `blobs/sha256/` plus 64 hex digits: they always fit a ustar name.
    h.set_path(path)?;
    h.set_cksum();
    Ok(h)
}

/// Writes `p`'s OCI layout archive from the cache into a temp file there: sorted entries, root-owned, the build's
/// epoch as every mtime. Each blob is hashed again as it is copied, so a damaged cache cannot slip into an image.
pub fn write_archive(
    cache: &Cache,
    p: &ResolvedPreload,
    epoch: u64,
) -> Result<Archive, PreloadError> {
    let tmp = cache.temp_file().map_err(|source| PreloadError::Cache {
        key: p.key().to_string(),
        reference: p.reference().to_string(),
        source,
    })?;
    let path = tmp.path().to_path_buf();
    let write_err = |source| PreloadError::Write {
        key: p.key().to_string(),
        reference: p.reference().to_string(),
        path: path.clone(),
        source,
    };
    // A handle of its own, so the temp file can be handed back once written.
    let file = tmp.as_file().try_clone().map_err(write_err)?;
    let out = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        size: 0,
    };
    let mut tar = tar::Builder::new(out);
    // Sorted: `blobs/` and its files, then `index.json`, then `oci-layout`.
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append(
            &header(dir, tar::EntryType::Directory, 0o755, 0, epoch).map_err(write_err)?,
            io::empty(),
        )
        .map_err(write_err)?;
    }
    for digest in p.blobs() {
        let blob = cache.blob_path(&digest);
        let blob_err = |source| PreloadError::Blob {
            key: p.key().to_string(),
            reference: p.reference().to_string(),
            digest: digest.clone(),
            path: blob.clone(),
            source,
        };
        let file = std::fs::File::open(&blob).map_err(blob_err)?;
        let size = file.metadata().map_err(blob_err)?.len();
        let mut reader = Hashing {
            inner: io::BufReader::with_capacity(1 << 20, file).take(size),
            hash: Sha256::new(),
            size: 0,
        };
        let h = header(
            &format!("blobs/sha256/{}", digest.hex()),
            tar::EntryType::Regular,
            0o644,
            size,
            epoch,
        )
        .map_err(write_err)?;
        tar.append(&h, &mut reader).map_err(write_err)?;
        let actual = Digest::from_sha256(&reader.hash.finalize());
        if actual != digest || reader.size != size {
            return Err(p.invalid(format!(
                "blob {digest} in the cache ({}) has digest {actual}: remove it and build again",
                blob.display()
            )));
        }
    }
    let index = index_json(p);
    let layout = serde_json::to_vec(&OciLayout { version: "1.0.0" }).unwrap_or_default();
    for (name, bytes) in [("index.json", &index), ("oci-layout", &layout)] {
        let h = header(
            name,
            tar::EntryType::Regular,
            0o644,
            bytes.len() as u64,
            epoch,
        )
        .map_err(write_err)?;
        tar.append(&h, bytes.as_slice()).map_err(write_err)?;
    }
    let mut out = tar.into_inner().map_err(write_err)?;
    out.flush().map_err(write_err)?;
    let Hashing { inner, hash, size } = out;
    let file = inner.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    let sha256 = hex::encode(hash.finalize());
    Ok(Archive {
        file: tmp,
        size,
        sha256,
    })
}

/// Writes each preload's archive and places it, root-owned and 0644, in a 0755 `/usr/lib/cairn/images`. The
/// archives live in the cache's temp folder until the outputs are written (removed on drop).
pub fn add_archives(
    tree: &mut Tree,
    cache: &Cache,
    preloads: &[ResolvedPreload],
    epoch: u64,
) -> Result<Vec<Archive>, PreloadError> {
    let mut archives = Vec::with_capacity(preloads.len());
    if preloads.is_empty() {
        return Ok(archives);
    }
    let mut dir = Meta::new(0o755, 0, 0);
    dir.mtime = epoch;
    tree.put(IMAGES_DIR.as_bytes(), New::Dir(dir))
        .map_err(PreloadError::ImagesDir)?;
    for p in preloads {
        let t = Instant::now();
        let archive = write_archive(cache, p, epoch)?;
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
        .map_err(|source| PreloadError::Place {
            key: p.key().to_string(),
            path: path.clone(),
            source,
        })?;
        info!(rock = %p.key(), path = %path, bytes = archive.size, ms = t.elapsed().as_millis() as u64, "preload archive");
        archives.push(archive);
    }
    Ok(archives)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_profile::Rock;

    fn preload(name: &str) -> Preload {
        let digest = format!("sha256:{}", "a".repeat(64));
        Preload {
            rock: Rock {
                reference: Reference::parse(&format!("localhost:5000/x:1@{digest}"))
                    .expect("a reference"),
                key: "preload[0].rock".into(),
                at: "p.toml:1:1".into(),
            },
            name: name.into(),
        }
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        let long = format!("ghcr.io/{}:1", "r".repeat(240));
        let names = file_names(&[
            preload("ghcr.io/canonical/coredns:1.14.6-ck0"),
            preload("ghcr.io/a/b:1"),
            preload("ghcr.io/a_b:1"),
            preload(&long),
        ]);
        assert_eq!(names[0], "ghcr.io_canonical_coredns_1.14.6-ck0.tar");
        // `a/b` and `a_b` would share a file: each gets a hash of its own name.
        let hash = |n: &str| hex::encode(Sha256::digest(n.as_bytes()))[..12].to_string();
        assert_eq!(
            names[1],
            format!("ghcr.io_a_b_1-{}.tar", hash("ghcr.io/a/b:1"))
        );
        assert_eq!(
            names[2],
            format!("ghcr.io_a_b_1-{}.tar", hash("ghcr.io/a_b:1"))
        );
        assert_eq!(names[3].len(), MAX_STEM + 1 + 12 + 4);
        assert!(names[3].ends_with(&format!("-{}.tar", hash(&long))));
        for n in &names {
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{n}"
            );
        }
    }
}
