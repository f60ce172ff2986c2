//! What the assembled root is made of, by origin: after whiteouts and replacements, which rock (and layer) each
//! regular file's bytes came from, the profile's `[[file]]`s and cairn's own, and the biggest files. Only the
//! builder knows a file's origin cheaply, so this goes into the build report (`contents`), for `cairn inspect`.
//!
//! Counted over the root as the tar holds it (before the disk formats move `/var` into the factory archive), one
//! inode once: a hardlinked file counts at its first path in sorted order. Deterministic: the same tree gives the
//! same summary.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::tree::{Data, Node, Tree};
use crate::resolve::ResolvedRock;

/// A rock as the summary sees it: its profile key and its layers' digests, in order.
pub struct RockLayers {
    pub key: String,
    pub layers: Vec<String>,
}

impl RockLayers {
    pub fn of(rocks: &[ResolvedRock]) -> Vec<RockLayers> {
        rocks
            .iter()
            .map(|r| RockLayers {
                key: r.key.clone(),
                layers: r.layers.iter().map(|l| l.digest.to_string()).collect(),
            })
            .collect()
    }
}

/// How many of the biggest files the report keeps.
pub const BIGGEST: usize = 20;

/// The origin of bytes a build wrote itself that are not a `[[file]]`: the agent, its units, the system stage's
/// files, preload archives, snaps.
pub const CAIRN: &str = "cairn";
/// The origin of the profile's `[[file]]`s.
pub const FILES: &str = "files";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Regular files (inodes).
    pub files: u64,
    pub bytes: u64,
}

impl Amount {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerAmount {
    pub digest: String,
    #[serde(flatten)]
    pub amount: Amount,
}

/// One origin's share of the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// A rock's profile key (`base.rock`, `layer[0].rock`), [`FILES`] or [`CAIRN`].
    pub origin: String,
    #[serde(flatten)]
    pub amount: Amount,
    /// A rock's layers, in order; empty for the build's own origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerAmount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Big {
    /// Absolute: `/usr/lib/x86_64-linux-gnu/libLLVM.so.15`.
    pub path: String,
    pub size: u64,
    pub origin: String,
}

/// The report's `contents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// Every regular file of the root.
    pub total: Amount,
    /// Each rock in profile order, then [`FILES`] and [`CAIRN`] (each listed even when empty).
    pub origins: Vec<Origin>,
    /// The [`BIGGEST`] files, biggest first (then by path).
    pub biggest: Vec<Big>,
}

/// Summarises `tree`, whose layer `i` is the `i`-th layer of `rocks` in order; `profile_files` are the
/// `[[file]]` paths (absolute).
pub fn summarize<'a>(
    tree: &Tree,
    rocks: &[RockLayers],
    profile_files: impl IntoIterator<Item = &'a str>,
) -> Contents {
    // Layer index → (origin index, layer within the rock).
    let mut origins: Vec<Origin> = Vec::new();
    let mut of_layer = Vec::new();
    for (r, rock) in rocks.iter().enumerate() {
        let layers = rock
            .layers
            .iter()
            .enumerate()
            .map(|(l, digest)| {
                of_layer.push((r, l));
                LayerAmount {
                    digest: digest.clone(),
                    amount: Amount::default(),
                }
            })
            .collect();
        origins.push(Origin {
            origin: rock.key.clone(),
            amount: Amount::default(),
            layers,
        });
    }
    let files_at = origins.len();
    for name in [FILES, CAIRN] {
        origins.push(Origin {
            origin: name.into(),
            amount: Amount::default(),
            layers: Vec::new(),
        });
    }
    let profile_files: BTreeSet<&[u8]> = profile_files
        .into_iter()
        .map(|p| p.trim_start_matches('/').as_bytes())
        .collect();

    let mut total = Amount::default();
    let mut seen = vec![false; tree.inode_count()];
    let mut all: Vec<(u64, Vec<u8>, usize)> = Vec::new();
    // Depth-first in sorted order, as the tar: a hardlinked inode's first path is its tar path.
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), tree.root())];
    while let Some((path, id)) = stack.pop() {
        match tree.node(id) {
            Node::Dir { children, .. } => {
                for (name, child) in children.iter().rev() {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    stack.push((p, *child));
                }
            }
            Node::File(inode) => {
                if std::mem::replace(&mut seen[*inode], true) {
                    continue;
                }
                let data = &tree.inode(*inode).data;
                let size = data.size();
                let origin = match data {
                    Data::Layer { layer, .. } => match of_layer.get(*layer) {
                        Some(&(r, l)) => {
                            origins[r].layers[l].amount.add(size);
                            r
                        }
                        // A layer no rock lists cannot happen; count it as the build's rather than lose it.
                        None => files_at + 1,
                    },
                    _ if profile_files.contains(path.as_slice()) => files_at,
                    _ => files_at + 1,
                };
                origins[origin].amount.add(size);
                total.add(size);
                all.push((size, path, origin));
            }
            Node::Other { .. } => {}
        }
    }
    all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let biggest = all
        .into_iter()
        .take(BIGGEST)
        .map(|(size, path, origin)| Big {
            path: format!("/{}", String::from_utf8_lossy(&path)),
            size,
            origin: origins[origin].origin.clone(),
        })
        .collect();
    Contents {
        total,
        origins,
        biggest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::{Meta, New};
    use std::sync::Arc;

    fn layer_file(t: &mut Tree, layer: usize, path: &str, size: u64) {
        t.put(
            path.as_bytes(),
            New::File(
                Meta::new(0o644, 0, 0),
                Data::Layer {
                    layer,
                    offset: 0,
                    size,
                },
            ),
        )
        .unwrap();
    }

    fn rock(key: &str, layers: usize) -> RockLayers {
        RockLayers {
            key: key.into(),
            layers: (0..layers).map(|i| format!("sha256:{i:064x}")).collect(),
        }
    }

    #[test]
    fn sums_by_origin_after_replacement_counting_hardlinks_once() {
        let mut t = Tree::new();
        // base.rock: two layers; layer 1 replaces a file of layer 0. layer[0].rock: layer 2.
        layer_file(&mut t, 0, "usr/bin/big", 1000);
        layer_file(&mut t, 0, "etc/replaced", 50);
        layer_file(&mut t, 1, "etc/replaced", 7);
        layer_file(&mut t, 2, "opt/app", 300);
        t.put(b"opt/app-link", New::Hardlink(b"opt/app".to_vec()))
            .unwrap();
        t.put(
            b"etc/motd",
            New::File(Meta::new(0o644, 0, 0), Data::Bytes(Arc::from(&b"hi\n"[..]))),
        )
        .unwrap();
        t.put(
            b"usr/lib/cairn/profile.toml",
            New::File(Meta::new(0o644, 0, 0), Data::Bytes(Arc::from(&b"x"[..]))),
        )
        .unwrap();
        let rocks = [rock("base.rock", 2), rock("layer[0].rock", 1)];
        let c = summarize(&t, &rocks, ["/etc/motd"]);
        let got: Vec<(&str, u64, u64)> = c
            .origins
            .iter()
            .map(|o| (o.origin.as_str(), o.amount.files, o.amount.bytes))
            .collect();
        assert_eq!(
            got,
            [
                ("base.rock", 2, 1007),
                ("layer[0].rock", 1, 300),
                ("files", 1, 3),
                ("cairn", 1, 1)
            ]
        );
        let base_layers: Vec<(u64, u64)> = c.origins[0]
            .layers
            .iter()
            .map(|l| (l.amount.files, l.amount.bytes))
            .collect();
        assert_eq!(base_layers, [(1, 1000), (1, 7)]);
        assert_eq!(
            c.total,
            Amount {
                files: 5,
                bytes: 1311
            }
        );
        let biggest: Vec<(&str, u64)> = c
            .biggest
            .iter()
            .map(|b| (b.path.as_str(), b.size))
            .collect();
        assert_eq!(
            biggest,
            [
                ("/usr/bin/big", 1000),
                ("/opt/app", 300),
                ("/etc/replaced", 7),
                ("/etc/motd", 3),
                ("/usr/lib/cairn/profile.toml", 1)
            ]
        );
        assert_eq!(summarize(&t, &rocks, ["/etc/motd"]), c, "deterministic");
    }
}
