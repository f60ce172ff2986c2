//! Assemble: every rock's layers, unpacked (once, into the cache) and merged in order into one tree.

pub mod contents;
pub mod layer;
pub mod tree;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_profile::Digest;
use layer::{LayerError, Unpacked};
use tree::{Tree, TreeError};

use crate::resolve::ResolvedRock;

/// Layers merged into one root, all rocks together: overlayfs stacks at most 128 lower layers on older kernels,
/// and no real image comes near (Docker refuses more than 127).
pub const MAX_LAYERS: usize = 128;
/// Entries of all layers together. Each unpacked layer's index stays in memory until the tree is built (about
/// 190 bytes an entry), so this bounds a build's memory whatever its layers claim: about 800 MB of indexes, plus
/// the layers being unpacked ([`UNPACK_AT_ONCE`], each bounded by `layer::limits::MAX_ENTRIES`). The node base has
/// 12,608.
pub const MAX_TOTAL_ENTRIES: usize = 4 << 20;
/// Layers decompressed and indexed at the same time (downloads are not limited by this).
pub const UNPACK_AT_ONCE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{rock}: layer {digest}: {source}")]
    Tree {
        rock: String,
        digest: String,
        source: TreeError,
    },
    #[error("{rock}: layer {digest} was not unpacked")]
    NotUnpacked { rock: String, digest: Digest },
}

/// Merges every layer of `rocks`, in order, from their unpacked forms.
pub fn rocks(
    rocks: &[ResolvedRock],
    unpacked: &BTreeMap<Digest, Arc<Unpacked>>,
) -> Result<(Tree, Vec<PathBuf>), AssembleError> {
    let mut layers = Vec::new();
    for r in rocks {
        for l in &r.layers {
            let u = unpacked
                .get(&l.digest)
                .ok_or_else(|| AssembleError::NotUnpacked {
                    rock: r.reference.to_string(),
                    digest: l.digest.clone(),
                })?;
            layers.push(Merged {
                rock: r.reference.to_string(),
                digest: l.digest.to_string(),
                unpacked: Arc::clone(u),
            });
        }
    }
    merge(layers)
}

/// One layer to merge, already unpacked.
pub struct Merged {
    pub rock: String,
    pub digest: String,
    pub unpacked: Arc<Unpacked>,
}

/// Merges unpacked layers in order; returns the tree and each layer's tar, indexed as the tree refers to them.
pub fn merge(layers: Vec<Merged>) -> Result<(Tree, Vec<PathBuf>), AssembleError> {
    let mut tree = Tree::new();
    let mut tars = Vec::with_capacity(layers.len());
    for (i, l) in layers.into_iter().enumerate() {
        tree.apply_layer(i, &l.unpacked.entries)
            .map_err(|source| AssembleError::Tree {
                rock: l.rock,
                digest: l.digest,
                source,
            })?;
        tars.push(l.unpacked.tar.clone());
    }
    Ok((tree, tars))
}

#[cfg(test)]
mod model_tests;
