//! Assemble: every rock's layers, unpacked (once, into the cache) and merged in order into one tree.

pub mod layer;
pub mod tree;

use std::path::PathBuf;
use std::sync::Arc;

use layer::{LayerError, Unpacked};
use tree::{Tree, TreeError};

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
