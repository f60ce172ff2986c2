//! The read-only root: what must stay writable on a node leaves the verified root.
//!
//! `/var`'s content, and `/home`, `/root` and `/srv` (which live under `/var` on a node), move into a detached
//! "factory" folder that the image carries as `/usr/lib/cairn/factory/var.tar` — a tar, so every owner, mode and
//! xattr survives whatever the root filesystem can hold — and that the initrd unpacks into the data partition at
//! first boot. `/var` stays as an empty mount point, `/home`, `/root` and `/srv` become symlinks into it, and `/tmp`
//! is emptied (a tmpfs at boot). `/efi` is made as the EFI system partition's mount point.

use std::path::{Path, PathBuf};

use cairn_profile::contract;

use crate::assemble::tree::{Data, Meta, New, Node, NodeId, Special, Tree, TreeError};
use crate::filesystem::{self, FilesystemError, TarOptions};

/// Where the factory `/var` is kept in the root.
pub const FACTORY_VAR: &str = contract::FACTORY_VAR_IN_ROOT;

/// Folders that live under `/var` on a node, with the mode they get when the rock has none.
const UNDER_VAR: &[(&str, u32)] = &[("home", 0o755), ("root", 0o700), ("srv", 0o755)];

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("/var is not a directory in the assembled root")]
    VarNotDir,
    #[error("/var could not be made")]
    NoVar,
    #[error("both /{0} and /var/{0} exist: /{0} must live in /var")]
    Both(&'static str),
    #[error("/{0} vanished")]
    Vanished(&'static str),
    #[error("/{0} is not a directory: it cannot move to /var/{0}")]
    NotDir(&'static str),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    FactoryVar(#[from] FilesystemError),
}

/// Rearranges `tree` for a read-only root and stores the factory `/var` in it as [`FACTORY_VAR`], written to
/// `var_tar` on the host.
pub fn with_factory_var(
    tree: &mut Tree,
    layer_tars: &[PathBuf],
    epoch: u64,
    var_tar: &Path,
) -> Result<(), RootError> {
    let factory = split_writable(tree)?;
    let file = std::fs::File::create(var_tar).map_err(|source| RootError::Io {
        path: var_tar.to_path_buf(),
        source,
    })?;
    let opts = TarOptions {
        epoch,
        drop_xattrs: &[],
    };
    let (written, _) = filesystem::write_tar(tree, factory, layer_tars, opts, file, var_tar)?;
    tree.put(
        FACTORY_VAR.as_bytes(),
        New::File(
            Meta::new(0o644, 0, 0),
            Data::Host {
                path: var_tar.to_path_buf(),
                size: written.size,
            },
        ),
    )?;
    Ok(())
}

fn dir_meta(tree: &Tree, id: NodeId) -> Option<Meta> {
    match tree.node(id) {
        Node::Dir { meta, .. } => Some(meta.clone()),
        _ => None,
    }
}

/// Rearranges `tree` for a read-only root; returns the detached factory folder (the future `/var`).
pub fn split_writable(tree: &mut Tree) -> Result<NodeId, RootError> {
    let var = match tree.lookup(b"var") {
        Some(id) if dir_meta(tree, id).is_some() => id,
        Some(_) => return Err(RootError::VarNotDir),
        None => {
            tree.put(b"var", New::Dir(Meta::new(0o755, 0, 0)))?;
            tree.lookup(b"var").ok_or(RootError::NoVar)?
        }
    };
    let factory = tree.new_dir(dir_meta(tree, var).unwrap_or_else(|| Meta::new(0o755, 0, 0)));
    for (name, child) in tree.take_children(var) {
        tree.attach(factory, &name, child);
    }
    for (name, mode) in UNDER_VAR {
        let target = format!("var/{name}");
        match tree
            .lookup(name.as_bytes())
            .map(|id| (id, tree.node(id).clone()))
        {
            // Already a link into /var (a rock made for this layout): keep it.
            Some((
                _,
                Node::Other {
                    special: Special::Symlink(t),
                    ..
                },
            )) if t == target.as_bytes() => {}
            Some((_, Node::Dir { .. })) => {
                if has_child(tree, factory, name) {
                    return Err(RootError::Both(name));
                }
                let id = tree
                    .detach(name.as_bytes())
                    .ok_or(RootError::Vanished(name))?;
                tree.attach(factory, name.as_bytes(), id);
            }
            Some(_) => return Err(RootError::NotDir(name)),
            None => {
                if !has_child(tree, factory, name) {
                    let id = tree.new_dir(Meta::new(*mode, 0, 0));
                    tree.attach(factory, name.as_bytes(), id);
                }
            }
        }
        tree.put(
            name.as_bytes(),
            New::Other(
                Meta::new(0o777, 0, 0),
                Special::Symlink(target.into_bytes()),
            ),
        )?;
    }
    if let Some(tmp) = tree.lookup(b"tmp") {
        tree.take_children(tmp);
    }
    // Where the initrd mounts the EFI system partition: the agent reads instance data from it.
    let esp = contract::ESP_MOUNT_IN_ROOT.as_bytes();
    if tree.lookup(esp).is_none() {
        tree.put(esp, New::Dir(Meta::new(0o700, 0, 0)))?;
    }
    Ok(factory)
}

fn has_child(tree: &Tree, dir: NodeId, name: &str) -> bool {
    matches!(tree.node(dir), Node::Dir { children, .. } if children.contains_key(name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tree::Data;
    use std::sync::Arc;

    fn file(t: &mut Tree, p: &str) {
        t.put(
            p.as_bytes(),
            New::File(Meta::new(0o644, 0, 0), Data::Bytes(Arc::from(&b"x"[..]))),
        )
        .unwrap();
    }

    #[test]
    fn var_home_root_srv_move_to_the_factory() {
        let mut t = Tree::new();
        file(&mut t, "var/lib/dpkg/status");
        file(&mut t, "home/ops/.profile");
        t.put(b"root", New::Dir(Meta::new(0o700, 0, 0))).unwrap();
        file(&mut t, "tmp/junk");
        file(&mut t, "usr/bin/sh");
        let factory = split_writable(&mut t).unwrap();
        let Node::Dir { children, .. } = t.node(factory) else {
            panic!()
        };
        let names: Vec<&[u8]> = children.keys().map(Vec::as_slice).collect();
        assert_eq!(names, [&b"home"[..], b"lib", b"root", b"srv"]);
        let root_meta = dir_meta(&t, children[&b"root"[..]]).unwrap();
        assert_eq!(root_meta.mode, 0o700);
        for name in ["home", "root", "srv"] {
            match t.node(t.lookup(name.as_bytes()).unwrap()) {
                Node::Other {
                    special: Special::Symlink(s),
                    ..
                } => assert_eq!(s, format!("var/{name}").as_bytes()),
                other => panic!("{name}: {other:?}"),
            }
        }
        let Node::Dir { children, .. } = t.node(t.lookup(b"var").unwrap()) else {
            panic!()
        };
        assert!(children.is_empty());
        let Node::Dir { children, .. } = t.node(t.lookup(b"tmp").unwrap()) else {
            panic!()
        };
        assert!(children.is_empty());
        assert!(t.lookup(b"usr/bin/sh").is_some());
    }

    #[test]
    fn a_clash_is_an_error() {
        let mut t = Tree::new();
        file(&mut t, "var/home/a");
        file(&mut t, "home/b");
        let e = split_writable(&mut t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "both /home and /var/home exist: /home must live in /var"
        );
    }
}
