//! The root being assembled: an in-memory tree of metadata whose file data stays on disk.
//!
//! Layers apply in order with the OCI rules. A layer's whiteouts apply first, to what the lower layers made:
//! `.wh.NAME` removes NAME (and all below it), `.wh..wh..opq` empties its directory; then its other entries apply:
//! a directory onto a directory merges, anything else replaces what was there. Parent paths resolve through
//! symlinks the way the kernel would, but never above the root. Hardlinked paths share one inode.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::layer::{Entry, Kind};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TreeError {
    pub path: String,
    pub message: String,
}

fn err<T>(path: &[u8], message: impl Into<String>) -> Result<T, TreeError> {
    Err(TreeError {
        path: show(path),
        message: message.into(),
    })
}

pub fn show(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINK_HOPS: u32 = 40;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Sorted by name, as they are written.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Meta {
    pub fn new(mode: u32, uid: u64, gid: u64) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    fn of(e: &Entry) -> Meta {
        Meta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            xattrs: e.xattrs.iter().cloned().collect(),
        }
    }
}

/// Where a file's bytes are.
#[derive(Debug, Clone)]
pub enum Data {
    /// A range of a layer's unpacked tar.
    Layer {
        layer: usize,
        offset: u64,
        size: u64,
    },
    Bytes(Arc<[u8]>),
    /// A file on the build host (a profile's `source`, the agent binary).
    Host {
        path: PathBuf,
        size: u64,
    },
}

impl Data {
    pub fn size(&self) -> u64 {
        match self {
            Data::Layer { size, .. } | Data::Host { size, .. } => *size,
            Data::Bytes(b) => b.len() as u64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub meta: Meta,
    pub data: Data,
}

#[derive(Debug, Clone)]
pub enum Special {
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

pub type NodeId = usize;

#[derive(Debug, Clone)]
pub enum Node {
    Dir {
        meta: Meta,
        children: BTreeMap<Vec<u8>, NodeId>,
    },
    File(usize),
    Other {
        meta: Meta,
        special: Special,
    },
}

/// What to put at a path.
pub enum New {
    Dir(Meta),
    File(Meta, Data),
    /// A hardlink to another path of the tree (normalised).
    Hardlink(Vec<u8>),
    Other(Meta, Special),
}

pub struct Tree {
    nodes: Vec<Node>,
    inodes: Vec<Inode>,
}

const ROOT: NodeId = 0;

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node::Dir {
                meta: Meta::new(0o755, 0, 0),
                children: BTreeMap::new(),
            }],
            inodes: Vec::new(),
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn inode(&self, id: usize) -> &Inode {
        &self.inodes[id]
    }

    pub fn root(&self) -> NodeId {
        ROOT
    }

    /// How many inodes (regular files) the tree has made, detached ones included.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Takes the node at `path` out of the tree; it stays valid as a detached node.
    pub fn detach(&mut self, path: &[u8]) -> Option<NodeId> {
        let (parent, name) = split_last(path);
        let parent = if parent.is_empty() {
            Some(ROOT)
        } else {
            self.lookup(parent)
        };
        match parent.map(|p| &mut self.nodes[p]) {
            Some(Node::Dir { children, .. }) => children.remove(name),
            _ => None,
        }
    }

    /// A new directory outside the tree (to gather detached nodes, or to place with [`Tree::attach`]).
    pub fn new_dir(&mut self, meta: Meta) -> NodeId {
        self.nodes.push(Node::Dir {
            meta,
            children: BTreeMap::new(),
        });
        self.nodes.len() - 1
    }

    /// Makes `child` the entry `name` of the directory `dir`, replacing what was there; false if `dir` is not a
    /// directory.
    pub fn attach(&mut self, dir: NodeId, name: &[u8], child: NodeId) -> bool {
        match &mut self.nodes[dir] {
            Node::Dir { children, .. } => {
                children.insert(name.to_vec(), child);
                true
            }
            _ => false,
        }
    }

    /// The entries of a directory, emptied: returned to the caller.
    pub fn take_children(&mut self, dir: NodeId) -> BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[dir] {
            Node::Dir { children, .. } => std::mem::take(children),
            _ => BTreeMap::new(),
        }
    }

    /// Applies one layer's entries; `layer` is its position, recorded in each file's data reference.
    pub fn apply_layer(&mut self, layer: usize, entries: &[Entry]) -> Result<(), TreeError> {
        for e in entries {
            let (parent, name) = split_last(&e.path);
            let hidden = if name == b".wh..wh..opq" {
                None
            } else if name.starts_with(b".wh..wh.") {
                // Other AUFS metadata: never part of the root.
                continue;
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                Some(hidden)
            } else {
                continue;
            };
            // Read-only: a whiteout below a file (or below nothing) hides nothing, as the OCI runtimes ignore it.
            if let Some(dir) = self.find_dir(parent)?
                && let Node::Dir { children, .. } = &mut self.nodes[dir]
            {
                match hidden {
                    Some(name) => drop(children.remove(name)),
                    None => children.clear(),
                }
            }
        }
        for e in entries {
            let (_, name) = split_last(&e.path);
            if name.starts_with(b".wh.") {
                continue;
            }
            let new = match e.kind {
                Kind::Dir => New::Dir(Meta::of(e)),
                Kind::File => New::File(
                    Meta::of(e),
                    Data::Layer {
                        layer,
                        offset: e.offset,
                        size: e.size,
                    },
                ),
                Kind::Hardlink => New::Hardlink(e.link.clone().unwrap_or_default()),
                Kind::Symlink => New::Other(
                    Meta::of(e),
                    Special::Symlink(e.link.clone().unwrap_or_default()),
                ),
                Kind::Char => New::Other(Meta::of(e), Special::Char(e.dev_major, e.dev_minor)),
                Kind::Block => New::Other(Meta::of(e), Special::Block(e.dev_major, e.dev_minor)),
                Kind::Fifo => New::Other(Meta::of(e), Special::Fifo),
            };
            self.put(&e.path, new)?;
        }
        Ok(())
    }

    /// Places `new` at `path` (normalised, relative to the root), creating missing parents as root-owned 0755
    /// directories.
    pub fn put(&mut self, path: &[u8], new: New) -> Result<(), TreeError> {
        if path.is_empty() {
            return match new {
                New::Dir(meta) => {
                    if let Node::Dir { meta: m, .. } = &mut self.nodes[ROOT] {
                        *m = meta;
                    }
                    Ok(())
                }
                _ => err(path, "only a directory can be the root"),
            };
        }
        let (parent_path, name) = split_last(path);
        let parent = match self.walk(parent_path, true, &mut 0)? {
            Some(p) => p,
            None => return err(path, "its parent could not be created"),
        };
        let existing = self.child(parent, name);
        let node = match new {
            New::Dir(meta) => {
                if let Some(id) = existing
                    && let Node::Dir { meta: m, .. } = &mut self.nodes[id]
                {
                    *m = meta;
                    return Ok(());
                }
                Node::Dir {
                    meta,
                    children: BTreeMap::new(),
                }
            }
            New::File(meta, data) => {
                self.inodes.push(Inode { meta, data });
                Node::File(self.inodes.len() - 1)
            }
            New::Other(meta, special) => Node::Other { meta, special },
            New::Hardlink(target) => {
                let (tparent, tname) = split_last(&target);
                let found = match self.walk(tparent, false, &mut 0)? {
                    Some(dir) => self.child(dir, tname),
                    None => None,
                };
                match found.map(|id| (id, &self.nodes[id])) {
                    None => {
                        return err(
                            path,
                            format!("hardlink to {}, which is not in the tree", show(&target)),
                        );
                    }
                    Some((_, Node::Dir { .. })) => {
                        return err(path, format!("hardlink to {}, a directory", show(&target)));
                    }
                    Some((id, _)) if Some(id) == existing => return Ok(()),
                    Some((_, node)) => node.clone(),
                }
            }
        };
        let id = self.nodes.len();
        self.nodes.push(node);
        if let Node::Dir { children, .. } = &mut self.nodes[parent] {
            children.insert(name.to_vec(), id);
        }
        Ok(())
    }

    /// The node at `path`, without following a final symlink.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let (parent, name) = split_last(path);
        if path.is_empty() {
            return Some(ROOT);
        }
        let mut hops = 0;
        let mut stack = vec![ROOT];
        for c in parent.split(|b| *b == b'/') {
            stack = self.step(stack, c, &mut hops).ok()??;
        }
        self.child(*stack.last()?, name)
    }

    /// The directory at `path`, following symlinks; `None` when a component is missing or not a directory.
    fn find_dir(&self, path: &[u8]) -> Result<Option<NodeId>, TreeError> {
        let mut hops = 0;
        let mut stack = vec![ROOT];
        for c in path.split(|b| *b == b'/') {
            match self.step(stack, c, &mut hops)? {
                Some(next) => stack = next,
                None => return Ok(None),
            }
        }
        Ok(stack.last().copied())
    }

    /// Replaces the data of the file at `path`, keeping its metadata; false when there is no such file.
    pub fn set_file_data(&mut self, path: &[u8], data: Data) -> bool {
        match self.lookup(path).map(|id| self.nodes[id].clone()) {
            Some(Node::File(inode)) => {
                self.inodes[inode].data = data;
                true
            }
            _ => false,
        }
    }

    fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.nodes[dir] {
            Node::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// Read-only step of a walk: one component from the directory at the top of `stack`.
    fn step(
        &self,
        mut stack: Vec<NodeId>,
        c: &[u8],
        hops: &mut u32,
    ) -> Result<Option<Vec<NodeId>>, TreeError> {
        match c {
            b"" | b"." => Ok(Some(stack)),
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                Ok(Some(stack))
            }
            _ => {
                let Some(id) = stack.last().and_then(|top| self.child(*top, c)) else {
                    return Ok(None);
                };
                match &self.nodes[id] {
                    Node::Dir { .. } => {
                        stack.push(id);
                        Ok(Some(stack))
                    }
                    Node::Other {
                        special: Special::Symlink(target),
                        ..
                    } => {
                        *hops += 1;
                        if *hops > MAX_SYMLINK_HOPS {
                            return err(c, "too many levels of symbolic links");
                        }
                        let mut s = if target.starts_with(b"/") {
                            vec![ROOT]
                        } else {
                            stack
                        };
                        for tc in target.split(|b| *b == b'/') {
                            match self.step(s, tc, hops)? {
                                Some(next) => s = next,
                                None => return Ok(None),
                            }
                        }
                        Ok(Some(s))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// Walks to the directory at `path`, following symlinks inside the tree. With `create`, missing directories
    /// are made (also where a symlink points at a missing one), as extracting onto a disk would.
    fn walk(
        &mut self,
        path: &[u8],
        create: bool,
        hops: &mut u32,
    ) -> Result<Option<NodeId>, TreeError> {
        let mut stack = vec![ROOT];
        if path.is_empty() {
            return Ok(Some(ROOT));
        }
        let mut missing = Vec::new();
        if !self.walk_into(&mut stack, &mut missing, path, create, hops)? {
            return Ok(None);
        }
        // Only the missing directories the walk ends inside are made: one a later `..` left (`phantom/..`) is
        // not, so no directory appears that neither a layer nor the path needs.
        for name in missing {
            let top = *stack.last().unwrap_or(&ROOT);
            let id = self.nodes.len();
            self.nodes.push(Node::Dir {
                meta: Meta::new(0o755, 0, 0),
                children: BTreeMap::new(),
            });
            if let Node::Dir { children, .. } = &mut self.nodes[top] {
                children.insert(name, id);
            }
            stack.push(id);
        }
        Ok(stack.last().copied())
    }

    /// One path's walk from the top of `stack`. With `create`, components that do not exist are gathered in
    /// `missing` (everything below one is missing too) rather than made, so that a `..` can take them back.
    fn walk_into(
        &mut self,
        stack: &mut Vec<NodeId>,
        missing: &mut Vec<Vec<u8>>,
        path: &[u8],
        create: bool,
        hops: &mut u32,
    ) -> Result<bool, TreeError> {
        for c in path.split(|b| *b == b'/') {
            match c {
                b"" | b"." => continue,
                b".." => {
                    if missing.pop().is_none() && stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            if !missing.is_empty() {
                missing.push(c.to_vec());
                continue;
            }
            let top = *stack.last().unwrap_or(&ROOT);
            match self.child(top, c) {
                None if create => missing.push(c.to_vec()),
                None => return Ok(false),
                Some(id) => match &self.nodes[id] {
                    Node::Dir { .. } => stack.push(id),
                    Node::Other {
                        special: Special::Symlink(target),
                        ..
                    } => {
                        *hops += 1;
                        if *hops > MAX_SYMLINK_HOPS {
                            return err(path, "too many levels of symbolic links");
                        }
                        let target = target.clone();
                        if target.starts_with(b"/") {
                            stack.truncate(1);
                        }
                        if !self.walk_into(stack, missing, &target, create, hops)? {
                            return Ok(false);
                        }
                    }
                    _ => {
                        return err(
                            path,
                            format!("`{}` is not a directory", String::from_utf8_lossy(c)),
                        );
                    }
                },
            }
        }
        Ok(true)
    }
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

#[cfg(test)]
mod tests;
