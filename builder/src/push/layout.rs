//! An OCI image layout folder as a push target (`oci-layout:DIR[:TAG]`), for removable media and air-gapped sites:
//! `oci-layout`, `blobs/sha256/HEX` and `index.json`, whose entry for the tag is replaced and every other kept.
//! Each blob is copied into a temp file beside its final name, hashed on the way, synced and renamed only once its
//! digest is right; index.json is replaced the same way, last. A push cut short leaves the layout as it was, with
//! at most whole blobs that nothing names yet.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_profile::Digest;
use cairn_profile::payload::{ANNOTATION_REF_NAME, Descriptor, MANIFEST_MEDIA_TYPE};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::PushError;
use super::parts::Source;

pub const LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// An index.json bigger than this is not one.
const MAX_INDEX: u64 = 16 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
    /// Kept as they were.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens the layout at `dir`, making it when absent or empty; a folder that holds something else is refused.
    pub fn open(dir: &Path) -> Result<Layout, PushError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PushError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let marker = dir.join(LAYOUT_FILE);
        match std::fs::read(&marker) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|_| PushError::NotALayout {
                        dir: dir.to_path_buf(),
                        reason: format!("{LAYOUT_FILE} is not JSON"),
                    })?;
                if v["imageLayoutVersion"] != "1.0.0" {
                    return Err(PushError::NotALayout {
                        dir: dir.to_path_buf(),
                        reason: format!("{LAYOUT_FILE} is not version 1.0.0"),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
                if !empty {
                    return Err(PushError::NotALayout {
                        dir: dir.to_path_buf(),
                        reason: format!("it holds files but no {LAYOUT_FILE}"),
                    });
                }
                replace(dir, LAYOUT_FILE, LAYOUT_VERSION.as_bytes())?;
            }
            Err(e) => return Err(io(&marker)(e)),
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// Whether the layout already holds `digest` at `size` bytes (its digest is checked by whoever reads it).
    pub fn has(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size)
    }

    /// Copies one part into the layout, checking its digest on the way.
    pub fn put(&self, source: &Source) -> Result<(), PushError> {
        let dest = self.blob_path(&source.digest);
        let dir = dest.parent().unwrap_or(&self.dir);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PushError::Io { path, source }
        };
        let mut input = std::fs::File::open(&source.path).map_err(io(&source.path))?;
        input
            .seek(SeekFrom::Start(source.offset))
            .map_err(io(&source.path))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".cairn-blob-")
            .tempfile_in(dir)
            .map_err(io(dir))?;
        let mut hash = Sha256::new();
        let mut left = source.size;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = input.read(&mut buf[..want]).map_err(io(&source.path))?;
            if n == 0 {
                return Err(PushError::Damaged {
                    report: source.path.clone(),
                    what: format!("the {} part ends early", source.part.name()),
                });
            }
            hash.update(&buf[..n]);
            temp.write_all(&buf[..n]).map_err(io(temp.path()))?;
            left -= n as u64;
        }
        let found = Digest::from_sha256(&hash.finalize());
        if found != source.digest {
            return Err(PushError::Damaged {
                report: source.path.clone(),
                what: format!(
                    "the {} part has {found}, not {}",
                    source.part.name(),
                    source.digest
                ),
            });
        }
        temp.as_file().sync_all().map_err(io(temp.path()))?;
        temp.persist(&dest).map_err(|e| io(&dest)(e.error))?;
        Ok(())
    }

    /// Writes small bytes as a blob.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, PushError> {
        let digest = Digest::from_sha256(&Sha256::digest(bytes));
        let dest = self.blob_path(&digest);
        let dir = dest.parent().unwrap_or(&self.dir).to_path_buf();
        replace(&dir, digest.hex(), bytes)?;
        Ok(digest)
    }

    /// Tags `manifest` in index.json: the entry whose ref name is `tag` is replaced, every other entry kept.
    pub fn tag(&self, tag: &str, manifest: &Digest, size: u64) -> Result<(), PushError> {
        let path = self.dir.join(INDEX_FILE);
        let mut index = match std::fs::File::open(&path) {
            Ok(f) => {
                let mut bytes = Vec::new();
                f.take(MAX_INDEX + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|source| PushError::Io {
                        path: path.clone(),
                        source,
                    })?;
                serde_json::from_slice::<Index>(&bytes).map_err(|e| PushError::NotALayout {
                    dir: self.dir.clone(),
                    reason: format!("{INDEX_FILE}: {e}"),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index {
                schema_version: 2,
                media_type: Some("application/vnd.oci.image.index.v1+json".into()),
                manifests: Vec::new(),
                other: BTreeMap::new(),
            },
            Err(source) => return Err(PushError::Io { path, source }),
        };
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(tag));
        let annotations = BTreeMap::from([(ANNOTATION_REF_NAME.to_string(), tag.to_string())]);
        index.manifests.push(Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.into(),
            digest: manifest.to_string(),
            size,
            data: None,
            annotations,
        });
        let mut bytes = serde_json::to_vec_pretty(&index).map_err(|e| PushError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        replace(&self.dir, INDEX_FILE, &bytes)
    }
}

/// Writes `dir/name` whole or not at all: a synced temp file renamed over it.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), PushError> {
    let dest = dir.join(name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PushError::Io { path, source }
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".cairn-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    temp.write_all(bytes).map_err(io(&dest))?;
    temp.as_file().sync_all().map_err(io(&dest))?;
    temp.persist(&dest).map_err(|e| io(&dest)(e.error))?;
    Ok(())
}
