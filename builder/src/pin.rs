//! `cairn pin`: resolve each rock's tag to the digest its registry serves now and rewrite the profile in place,
//! comments and layout kept. The rewritten profile is checked before it replaces the old one.

use std::path::{Path, PathBuf};

use cairn_profile::{Profile, Reference};
use toml_edit::{DocumentMut, Item, Value};

use crate::output::{OutputError, write_atomically};
use crate::registry::{Registry, RegistryError};
use crate::resolve::digest_for_tag;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read profile {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Profile(#[from] cairn_profile::Error),
    #[error("{}: not a profile cairn pin can rewrite", .0.display())]
    NotRewritable(PathBuf),
    #[error("{key}: {source}")]
    Registry { key: String, source: RegistryError },
    #[error(transparent)]
    Write(#[from] OutputError),
}

/// What `cairn pin` does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Rewrite the profile.
    Write,
    /// Only report (`--dry-run`, `--check`): the profile is left as it is.
    Report,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

/// The rock strings of a profile document, with their key paths: `base.rock`, `layer[i].rock` and
/// `preload[i].rock` (array entries as `[[tables]]` or inline tables alike).
fn rock_items(doc: &mut DocumentMut) -> Vec<(String, &mut Value)> {
    let mut out = Vec::new();
    for (k, v) in doc.as_table_mut().iter_mut() {
        let section = k.get().to_string();
        match (section.as_str(), v) {
            ("base", v) => {
                if let Some(v) = v.get_mut("rock").and_then(Item::as_value_mut) {
                    out.push(("base.rock".to_string(), v));
                }
            }
            ("layer" | "preload", Item::ArrayOfTables(tables)) => {
                for (i, t) in tables.iter_mut().enumerate() {
                    if let Some(v) = t.get_mut("rock").and_then(Item::as_value_mut) {
                        out.push((format!("{section}[{i}].rock"), v));
                    }
                }
            }
            ("layer" | "preload", Item::Value(Value::Array(entries))) => {
                for (i, e) in entries.iter_mut().enumerate() {
                    if let Some(v) = e.as_inline_table_mut().and_then(|t| t.get_mut("rock")) {
                        out.push((format!("{section}[{i}].rock"), v));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

pub async fn pin(path: &Path, mode: Mode) -> Result<Vec<Change>, PinError> {
    let text = std::fs::read_to_string(path).map_err(|source| PinError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Anything wrong besides missing or stale digests is reported the way `cairn validate` would.
    let positioned = |text: &str| match Profile::parse(path, text.to_string()) {
        Err(e) => PinError::Profile(e),
        Ok(_) => PinError::NotRewritable(path.to_path_buf()),
    };
    let mut doc: DocumentMut = text.parse().map_err(|_| positioned(&text))?;
    let mut refs = Vec::new();
    for (key, value) in rock_items(&mut doc) {
        let Some(s) = value.as_str() else {
            return Err(positioned(&text));
        };
        let r = Reference::parse_unpinned(s).map_err(|_| positioned(&text))?;
        refs.push((key, s.to_string(), r));
    }
    let registry = Registry::new(refs.iter().map(|(_, _, r)| r));
    let mut changes = Vec::new();
    let mut new_values = Vec::new();
    for (key, old, r) in &refs {
        let mut r = r.clone();
        if r.tag.is_none() {
            if r.digest.is_some() {
                // Pinned by digest alone: there is no tag to follow.
                new_values.push(old.clone());
                changes.push(Change {
                    key: key.clone(),
                    old: old.clone(),
                    new: old.clone(),
                });
                continue;
            }
            r.tag = Some("latest".into());
        }
        let digest = digest_for_tag(&registry, &r)
            .await
            .map_err(|source| PinError::Registry {
                key: key.clone(),
                source,
            })?;
        let new = r.with_digest(digest).to_string();
        changes.push(Change {
            key: key.clone(),
            old: old.clone(),
            new: new.clone(),
        });
        new_values.push(new);
    }
    for ((_, value), new) in rock_items(&mut doc).into_iter().zip(new_values) {
        let decor = value.decor().clone();
        *value = Value::from(new);
        *value.decor_mut() = decor;
    }
    let new_text = doc.to_string();
    Profile::parse(path, new_text.clone())?;
    if new_text != text && mode == Mode::Write {
        write_atomically(path, new_text.as_bytes())?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rock_items_finds_base_layers_and_preloads_in_either_array_form() {
        let mut doc: DocumentMut = "[base]\nrock = \"b\"\n[[layer]]\nrock = \"l0\"\n[[preload]]\nrock = \"p0\"\nname = \"n\"\n[[preload]]\nrock = \"p1\"\n"
            .parse()
            .expect("toml");
        let keys: Vec<(String, String)> = rock_items(&mut doc)
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            keys,
            pairs(&[
                ("base.rock", "b"),
                ("layer[0].rock", "l0"),
                ("preload[0].rock", "p0"),
                ("preload[1].rock", "p1")
            ])
        );
        let mut doc: DocumentMut =
            "preload = [{ rock = \"p0\", name = \"n\" }, { rock = \"p1\" }]\n"
                .parse()
                .expect("toml");
        let keys: Vec<String> = rock_items(&mut doc).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["preload[0].rock", "preload[1].rock"]);
    }
}
