//! The layer assembler against a reference model of the OCI layer rules, on random stacks of layers.
//!
//! Each case is 1–4 layers of random entries over a three-name alphabet (so paths collide): directories, files,
//! symlinks, hardlinks, whiteouts and opaque whiteouts. The layers are written as real tars, unpacked through the
//! cache and merged as a build does; the model applies the rules to a map from path to node. Either both refuse
//! the stack or both give the same tree: paths, kinds, modes, file contents, symlink targets byte for byte, and
//! which paths share an inode. 256 cases a run (under a second; about 40% are stacks both refuse);
//! `PROPTEST_CASES=N` runs N.
//!
//! The model follows the rules `tree.rs` documents: a layer's whiteouts apply first, to the layers below (`.wh.X`
//! removes X and all below it, `.wh..wh..opq` empties its directory; through symlinks, and ignored below a
//! non-directory or nothing); then its entries apply in order: a directory onto a directory changes only its
//! mode, anything else replaces what was there with all below it; missing parents are made 0755; parents resolve
//! through symlinks inside the root (a component that is a file is an error, more than 40 symlinks an error); a
//! hardlink shares its target's inode (a symlink is copied), and one to nothing or to a directory is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_profile::Digest;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::layer::{self, Unpacked};
use super::tree::{Node, NodeId, Special, Tree};
use super::{Merged, merge};
use crate::cache::Cache;
use crate::resolve::{Compression, Layer};

/// One generated tar entry.
#[derive(Debug, Clone)]
enum Gen {
    Dir {
        path: Vec<u8>,
        mode: u32,
    },
    File {
        path: Vec<u8>,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    /// `pick` chooses the target among the files and symlinks before it (see [`stack`]).
    Hardlink {
        path: Vec<u8>,
        target: Vec<u8>,
        pick: usize,
    },
}

impl Gen {
    fn path(&self) -> &[u8] {
        match self {
            Gen::Dir { path, .. }
            | Gen::File { path, .. }
            | Gen::Symlink { path, .. }
            | Gen::Hardlink { path, .. } => path,
        }
    }
}

/// What a path holds, as both sides report it. Files carry their inode's number in that side's numbering; the
/// comparison only asks which paths share one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
        inode: usize,
    },
    Symlink {
        mode: u32,
        target: Vec<u8>,
    },
}

const SYMLINK_MODE: u32 = 0o777;
const MAX_HOPS: u32 = 40;

// ---------------------------------------------------------------------------------------------------------------
// The model: paths as lists of components.

type Components = Vec<Vec<u8>>;

#[derive(Debug, Clone)]
enum MNode {
    Dir { mode: u32 },
    File { inode: usize },
    Symlink { target: Vec<u8> },
}

#[derive(Default)]
struct Model {
    /// Every path but the root, which is always a directory.
    nodes: BTreeMap<Components, MNode>,
    /// `None` until a layer sets it: 0755.
    root_mode: Option<u32>,
    /// (mode, data) of each inode.
    inodes: Vec<(u32, Vec<u8>)>,
}

/// How a walk treats a component that is missing or not a directory.
#[derive(Clone, Copy, PartialEq)]
enum Walk {
    /// Placing an entry: missing directories are made, a file is an error.
    Create,
    /// A hardlink's target: missing is nothing, a file is an error.
    Lookup,
    /// A whiteout's directory: missing or a file is nothing.
    Find,
}

struct Refused;

impl Model {
    fn remove_below(&mut self, path: &Components, inclusive: bool) {
        let doomed: Vec<Components> = self
            .nodes
            .keys()
            .filter(|k| k.starts_with(path) && (inclusive || k.len() > path.len()))
            .cloned()
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Resolves `path` from the directory `dir`, the kernel's way: `..` goes up (never above the root), a symlink
    /// is replaced by its target. A missing component under `Walk::Create` is remembered in `missing` (a later
    /// `..` takes it back).
    fn walk(
        &self,
        mut dir: Components,
        path: &[u8],
        how: Walk,
        hops: &mut u32,
        missing: &mut Components,
    ) -> Result<Option<Components>, Refused> {
        for c in path.split(|b| *b == b'/') {
            match c {
                b"" | b"." => continue,
                b".." => {
                    if missing.pop().is_none() {
                        dir.pop();
                    }
                    continue;
                }
                _ => {}
            }
            if !missing.is_empty() {
                missing.push(c.to_vec());
                continue;
            }
            let mut next = dir.clone();
            next.push(c.to_vec());
            match self.nodes.get(&next) {
                None if how == Walk::Create => missing.push(c.to_vec()),
                None => return Ok(None),
                Some(MNode::Dir { .. }) => dir = next,
                Some(MNode::Symlink { target }) => {
                    *hops += 1;
                    if *hops > MAX_HOPS {
                        return Err(Refused);
                    }
                    let base = if target.starts_with(b"/") {
                        Vec::new()
                    } else {
                        dir.clone()
                    };
                    match self.walk(base, target, how, hops, missing)? {
                        Some(d) => dir = d,
                        None => return Ok(None),
                    }
                }
                Some(MNode::File { .. }) if how == Walk::Find => return Ok(None),
                Some(MNode::File { .. }) => return Err(Refused),
            }
        }
        Ok(Some(dir))
    }

    fn dir_of(&mut self, parent: &[u8], how: Walk) -> Result<Option<Components>, Refused> {
        let mut missing = Vec::new();
        let Some(mut dir) = self.walk(Vec::new(), parent, how, &mut 0, &mut missing)? else {
            return Ok(None);
        };
        for name in missing {
            dir.push(name);
            self.nodes.insert(dir.clone(), MNode::Dir { mode: 0o755 });
        }
        Ok(Some(dir))
    }

    fn apply(&mut self, entries: &[Gen]) -> Result<(), Refused> {
        for e in entries {
            let (parent, name) = split_last(e.path());
            let opaque = name == b".wh..wh..opq";
            let Some(hidden) = name.strip_prefix(b".wh.") else {
                continue;
            };
            if !opaque && hidden.starts_with(b".wh.") {
                continue;
            }
            if let Some(mut dir) = self.dir_of(parent, Walk::Find)? {
                if opaque {
                    self.remove_below(&dir, false);
                } else if !hidden.is_empty() {
                    dir.push(hidden.to_vec());
                    self.remove_below(&dir, true);
                }
            }
        }
        for e in entries {
            let (parent, name) = split_last(e.path());
            if name.starts_with(b".wh.") {
                continue;
            }
            if e.path() == b"./" {
                if let Gen::Dir { mode, .. } = e {
                    self.root_mode = Some(*mode);
                }
                continue;
            }
            let Some(mut at) = self.dir_of(parent, Walk::Create)? else {
                return Err(Refused);
            };
            at.push(name.to_vec());
            let node = match e {
                Gen::Dir { mode, .. } => {
                    if let Some(MNode::Dir { mode: m }) = self.nodes.get_mut(&at) {
                        *m = *mode;
                        continue;
                    }
                    MNode::Dir { mode: *mode }
                }
                Gen::File { mode, data, .. } => {
                    self.inodes.push((*mode, data.clone()));
                    MNode::File {
                        inode: self.inodes.len() - 1,
                    }
                }
                Gen::Symlink { target, .. } => MNode::Symlink {
                    target: target.clone(),
                },
                Gen::Hardlink { target, .. } => {
                    let (tparent, tname) = split_last(target);
                    let Some(mut t) = self.dir_of(tparent, Walk::Lookup)? else {
                        return Err(Refused);
                    };
                    t.push(tname.to_vec());
                    match self.nodes.get(&t) {
                        None | Some(MNode::Dir { .. }) => return Err(Refused),
                        Some(_) if t == at => continue,
                        Some(node) => node.clone(),
                    }
                }
            };
            self.remove_below(&at, true);
            self.nodes.insert(at, node);
        }
        Ok(())
    }

    fn seen(&self) -> BTreeMap<Vec<u8>, Seen> {
        let mut out = BTreeMap::from([(
            Vec::new(),
            Seen::Dir {
                mode: self.root_mode.unwrap_or(0o755),
            },
        )]);
        for (path, node) in &self.nodes {
            let seen = match node {
                MNode::Dir { mode } => Seen::Dir { mode: *mode },
                MNode::File { inode } => Seen::File {
                    mode: self.inodes[*inode].0,
                    data: self.inodes[*inode].1.clone(),
                    inode: *inode,
                },
                MNode::Symlink { target } => Seen::Symlink {
                    mode: SYMLINK_MODE,
                    target: target.clone(),
                },
            };
            out.insert(path.join(&b'/'), seen);
        }
        out
    }
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The assembler: real tars, unpacked through the cache, merged as a build merges them.

fn tar_of(entries: &[Gen]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..e.path().len()].copy_from_slice(e.path());
        let (kind, mode, data, link): (u8, u32, &[u8], &[u8]) = match e {
            Gen::Dir { mode, .. } => (b'5', *mode, b"", b""),
            Gen::File { mode, data, .. } => (b'0', *mode, data, b""),
            Gen::Symlink { target, .. } => (b'2', SYMLINK_MODE, b"", target),
            Gen::Hardlink { target, .. } => (b'1', 0o644, b"", target),
        };
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// `None` when unpacking or merging refuses the stack.
fn assemble(layers: &[Vec<Gen>], scratch: &Path) -> Option<(Tree, Vec<PathBuf>)> {
    let cache = Cache::open(scratch.join("cache")).unwrap();
    let mut merged = Vec::new();
    for (i, entries) in layers.iter().enumerate() {
        let tar = tar_of(entries);
        let blob = scratch.join(format!("layer{i}.tar"));
        std::fs::write(&blob, &tar).unwrap();
        let digest = Digest::from_sha256(&Sha256::digest(&tar));
        let l = Layer {
            digest: digest.clone(),
            size: tar.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compression: Compression::None,
            diff_id: digest.clone(),
        };
        let unpacked: Unpacked = layer::unpack(&cache, &l, &blob).ok()?;
        merged.push(Merged {
            rock: "rock".into(),
            digest: digest.to_string(),
            unpacked: Arc::new(unpacked),
        });
    }
    merge(merged).ok()
}

fn seen_in_tree(tree: &Tree, tars: &[PathBuf]) -> BTreeMap<Vec<u8>, Seen> {
    fn walk(
        tree: &Tree,
        tars: &[PathBuf],
        id: NodeId,
        path: Vec<u8>,
        out: &mut BTreeMap<Vec<u8>, Seen>,
    ) {
        let seen = match tree.node(id) {
            Node::Dir { meta, children } => {
                for (name, child) in children {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    walk(tree, tars, *child, p, out);
                }
                Seen::Dir { mode: meta.mode }
            }
            Node::File(inode) => {
                let shown = String::from_utf8(path.clone()).unwrap();
                Seen::File {
                    mode: tree.inode(*inode).meta.mode,
                    data: crate::filesystem::read_file(tree, tars, &shown)
                        .unwrap()
                        .unwrap(),
                    inode: *inode,
                }
            }
            Node::Other {
                meta,
                special: Special::Symlink(target),
            } => Seen::Symlink {
                mode: meta.mode,
                target: target.clone(),
            },
            Node::Other { .. } => unreachable!("no devices are generated"),
        };
        out.insert(path, seen);
    }
    let mut out = BTreeMap::new();
    walk(tree, tars, tree.root(), Vec::new(), &mut out);
    out
}

/// Replaces each inode number by the first path holding that inode, so two sides numbering inodes differently
/// compare equal when the same paths share one.
fn by_first_holder(mut seen: BTreeMap<Vec<u8>, Seen>) -> BTreeMap<Vec<u8>, Seen> {
    let mut first: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, s) in seen.values_mut().enumerate() {
        if let Seen::File { inode, .. } = s {
            *inode = *first.entry(*inode).or_insert(i);
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------------------------
// The inputs.

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(name(), 1..=3).prop_map(|c| c.join(&b'/'))
}

fn parent() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(name(), 0..=2).prop_map(|c| c.join(&b'/'))
}

fn under(parent: Vec<u8>, name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    [parent, name.to_vec()].join(&b'/')
}

fn entry() -> impl Strategy<Value = Gen> {
    let targets: Vec<&[u8]> = vec![
        b"a",
        b"b",
        b"a/b",
        b"/c",
        b"../a",
        b".",
        b"/",
        b"b/../c",
        b"x",
        b"a/b/c",
        b"//a/./b",
        b"../../b",
        b"/../a/../c",
    ];
    let targets: Vec<Vec<u8>> = targets.into_iter().map(<[u8]>::to_vec).collect();
    prop_oneof![
        3 => (path(), prop::sample::select(vec![0o755u32, 0o700, 0o1777]))
            .prop_map(|(path, mode)| Gen::Dir { path, mode }),
        // The root itself, as `./`.
        1 => Just(Gen::Dir { path: b"./".to_vec(), mode: 0o700 }),
        4 => (
            path(),
            prop::sample::select(vec![0o644u32, 0o600, 0o4755]),
            prop::collection::vec(any::<u8>(), 0..6),
        )
            .prop_map(|(path, mode, data)| Gen::File { path, mode, data }),
        2 => (path(), prop::sample::select(targets))
            .prop_map(|(path, target)| Gen::Symlink { path, target }),
        1 => (path(), path(), any::<usize>())
            .prop_map(|(path, target, pick)| Gen::Hardlink { path, target, pick }),
        2 => (parent(), name()).prop_map(|(p, n)| Gen::File {
            path: under(p, &[b".wh.".as_slice(), &n].concat()),
            mode: 0o644,
            data: Vec::new(),
        }),
        1 => parent().prop_map(|p| Gen::File {
            path: under(p, b".wh..wh..opq"),
            mode: 0o644,
            data: Vec::new(),
        }),
    ]
}

/// 1–4 layers of up to 8 entries. Seven hardlinks in eight get a target that was written before them (it may be
/// gone by then), the others a random path, mostly missing.
fn stack() -> impl Strategy<Value = Vec<Vec<Gen>>> {
    prop::collection::vec(prop::collection::vec(entry(), 0..8), 1..=4).prop_map(|mut layers| {
        let mut written: Vec<Vec<u8>> = Vec::new();
        for e in layers.iter_mut().flatten() {
            match e {
                Gen::File { path, .. } | Gen::Symlink { path, .. } => written.push(path.clone()),
                Gen::Hardlink { target, pick, .. } if *pick % 8 != 0 && !written.is_empty() => {
                    *target = written[*pick / 8 % written.len()].clone();
                }
                _ => {}
            }
        }
        layers
    })
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_assembler_follows_the_layer_rules(
        layers in stack()
    ) {
        // On tmpfs where there is one: each unpack syncs its files.
        let scratch = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let assembled = assemble(&layers, scratch.path());
        let mut model = Model::default();
        let modelled = layers.iter().try_for_each(|l| model.apply(l));
        match (assembled, modelled) {
            (None, Err(Refused)) => {}
            (Some((tree, tars)), Ok(())) => prop_assert_eq!(
                by_first_holder(seen_in_tree(&tree, &tars)),
                by_first_holder(model.seen())
            ),
            (Some(_), Err(Refused)) => prop_assert!(false, "the model refuses, the assembler does not"),
            (None, Ok(())) => prop_assert!(false, "the assembler refuses, the model does not"),
        }
    }
}
