use super::*;

fn e(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        offset: 0,
        link: None,
        dev_major: 0,
        dev_minor: 0,
        xattrs: Vec::new(),
    }
}

fn dir(p: &str) -> Entry {
    e(p, Kind::Dir)
}
fn file(p: &str, offset: u64) -> Entry {
    Entry {
        offset,
        size: 1,
        ..e(p, Kind::File)
    }
}
fn link(p: &str, kind: Kind, target: &str) -> Entry {
    Entry {
        link: Some(target.as_bytes().to_vec()),
        ..e(p, kind)
    }
}

/// Every path in the tree with a short description, in output order.
fn listing(t: &Tree) -> Vec<String> {
    fn walk(t: &Tree, id: NodeId, path: String, out: &mut Vec<String>) {
        match t.node(id) {
            Node::Dir { meta, children } => {
                out.push(format!("{path}/ {:o}", meta.mode));
                for (name, c) in children {
                    walk(
                        t,
                        *c,
                        format!("{path}/{}", String::from_utf8_lossy(name)),
                        out,
                    );
                }
            }
            Node::File(i) => match &t.inode(*i).data {
                Data::Layer { layer, offset, .. } => {
                    out.push(format!("{path} f{i} L{layer}@{offset}"))
                }
                _ => out.push(format!("{path} f{i}")),
            },
            Node::Other {
                special: Special::Symlink(s),
                ..
            } => out.push(format!("{path} -> {}", String::from_utf8_lossy(s))),
            Node::Other { .. } => out.push(format!("{path} special")),
        }
    }
    let mut out = Vec::new();
    walk(t, t.root(), String::new(), &mut out);
    out
}

#[test]
fn whiteout_removes_lower_recursively_and_never_appears() {
    let mut t = Tree::new();
    t.apply_layer(
        0,
        &[dir("a"), dir("a/b"), file("a/b/c", 1), file("a/keep", 2)],
    )
    .unwrap();
    t.apply_layer(1, &[file("a/.wh.b", 3)]).unwrap();
    assert_eq!(listing(&t), ["/ 755", "/a/ 755", "/a/keep f1 L0@2"]);
}

#[test]
fn whiteout_applies_to_lower_layers_only() {
    // The same layer re-adding the name it whites out keeps its own entry, whatever the order in the tar.
    let mut t = Tree::new();
    t.apply_layer(0, &[file("x", 1)]).unwrap();
    t.apply_layer(1, &[file("x", 5), file(".wh.x", 0)]).unwrap();
    assert_eq!(listing(&t), ["/ 755", "/x f1 L1@5"]);
}

#[test]
fn opaque_hides_lower_children_only() {
    let mut t = Tree::new();
    t.apply_layer(
        0,
        &[
            dir("d"),
            file("d/old", 1),
            dir("d/sub"),
            file("d/sub/deep", 2),
            file("other", 3),
        ],
    )
    .unwrap();
    // Marker after the new child, then before: both keep the layer's own children.
    t.apply_layer(1, &[dir("d"), file("d/new", 4), file("d/.wh..wh..opq", 0)])
        .unwrap();
    assert_eq!(
        listing(&t),
        ["/ 755", "/d/ 755", "/d/new f3 L1@4", "/other f2 L0@3"]
    );
    let mut t2 = Tree::new();
    t2.apply_layer(0, &[dir("d"), file("d/old", 1)]).unwrap();
    t2.apply_layer(1, &[file("d/.wh..wh..opq", 0), file("d/new", 4)])
        .unwrap();
    assert_eq!(listing(&t2), ["/ 755", "/d/ 755", "/d/new f1 L1@4"]);
}

#[test]
fn opaque_on_a_lower_subdir_hides_its_grandchildren() {
    let mut t = Tree::new();
    t.apply_layer(0, &[dir("d"), dir("d/sub"), file("d/sub/x", 1)])
        .unwrap();
    t.apply_layer(1, &[dir("d/sub"), file("d/sub/.wh..wh..opq", 0)])
        .unwrap();
    assert_eq!(listing(&t), ["/ 755", "/d/ 755", "/d/sub/ 755"]);
}

#[test]
fn non_directory_replaces_and_directory_merges() {
    let mut t = Tree::new();
    t.apply_layer(0, &[dir("a"), file("a/x", 1), file("b", 2)])
        .unwrap();
    let mut a = dir("a");
    a.mode = 0o700;
    t.apply_layer(1, &[a, file("a/y", 3), dir("b"), file("b/z", 4)])
        .unwrap();
    assert_eq!(
        listing(&t),
        [
            "/ 755",
            "/a/ 700",
            "/a/x f0 L0@1",
            "/a/y f2 L1@3",
            "/b/ 755",
            "/b/z f3 L1@4"
        ]
    );
    // A file replacing a directory removes the whole directory.
    t.apply_layer(2, &[file("a", 9)]).unwrap();
    assert_eq!(listing(&t)[1], "/a f4 L2@9");
    assert_eq!(listing(&t).len(), 4);
}

#[test]
fn hardlinks_share_an_inode_across_layers() {
    let mut t = Tree::new();
    t.apply_layer(0, &[file("bin/a", 1)]).unwrap();
    t.apply_layer(1, &[link("bin/b", Kind::Hardlink, "bin/a")])
        .unwrap();
    assert_eq!(
        listing(&t),
        ["/ 755", "/bin/ 755", "/bin/a f0 L0@1", "/bin/b f0 L0@1"]
    );
    // Replacing one name leaves the other with the old inode.
    t.apply_layer(2, &[file("bin/a", 7)]).unwrap();
    assert_eq!(
        listing(&t),
        ["/ 755", "/bin/ 755", "/bin/a f1 L2@7", "/bin/b f0 L0@1"]
    );
}

#[test]
fn hardlink_to_missing_or_directory_is_refused() {
    let mut t = Tree::new();
    let e1 = t
        .apply_layer(0, &[link("x", Kind::Hardlink, "nope")])
        .unwrap_err();
    assert_eq!(
        e1.to_string(),
        "/x: hardlink to /nope, which is not in the tree"
    );
    t.apply_layer(0, &[dir("d")]).unwrap();
    let e2 = t
        .apply_layer(1, &[link("y", Kind::Hardlink, "d")])
        .unwrap_err();
    assert_eq!(e2.to_string(), "/y: hardlink to /d, a directory");
}

#[test]
fn parents_resolve_through_symlinks_inside_the_root() {
    let mut t = Tree::new();
    // usrmerge: /bin -> usr/bin; an absolute symlink that climbs above the root stays in it.
    t.apply_layer(
        0,
        &[
            dir("usr"),
            dir("usr/bin"),
            link("bin", Kind::Symlink, "usr/bin"),
            link("up", Kind::Symlink, "/../../usr"),
        ],
    )
    .unwrap();
    t.apply_layer(1, &[file("bin/sh", 1), file("up/x", 2)])
        .unwrap();
    assert_eq!(
        listing(&t),
        [
            "/ 755",
            "/bin -> usr/bin",
            "/up -> /../../usr",
            "/usr/ 755",
            "/usr/bin/ 755",
            "/usr/bin/sh f0 L1@1",
            "/usr/x f1 L1@2"
        ]
    );
    // A whiteout through the same symlink reaches the real directory.
    t.apply_layer(2, &[file("bin/.wh.sh", 0)]).unwrap();
    assert!(!listing(&t).iter().any(|l| l.starts_with("/usr/bin/sh")));
}

#[test]
fn symlink_loops_are_an_error() {
    let mut t = Tree::new();
    t.apply_layer(
        0,
        &[link("a", Kind::Symlink, "b"), link("b", Kind::Symlink, "a")],
    )
    .unwrap();
    let e = t.apply_layer(1, &[file("a/x", 1)]).unwrap_err();
    assert!(
        e.to_string().contains("too many levels of symbolic links"),
        "{e}"
    );
}

#[test]
fn a_file_as_parent_is_an_error() {
    let mut t = Tree::new();
    t.apply_layer(0, &[file("f", 1)]).unwrap();
    let e = t.apply_layer(1, &[file("f/x", 1)]).unwrap_err();
    assert_eq!(e.to_string(), "/f: `f` is not a directory");
}

#[test]
fn whiteout_of_something_absent_is_harmless() {
    let mut t = Tree::new();
    t.apply_layer(
        0,
        &[
            file("missing/.wh.x", 0),
            file(".wh..wh..opq", 0),
            file(".wh..wh.plnk", 0),
        ],
    )
    .unwrap();
    assert_eq!(listing(&t), ["/ 755"]);
}

#[test]
fn set_file_data_keeps_metadata() {
    let mut t = Tree::new();
    let mut id = file("etc/machine-id", 1);
    id.mode = 0o444;
    t.apply_layer(0, &[id]).unwrap();
    assert!(t.set_file_data(b"etc/machine-id", Data::Bytes(Arc::from(&b""[..]))));
    let Some(Node::File(i)) = t.lookup(b"etc/machine-id").map(|n| t.node(n).clone()) else {
        panic!()
    };
    assert_eq!(t.inode(i).meta.mode, 0o444);
    assert_eq!(t.inode(i).data.size(), 0);
    assert!(!t.set_file_data(b"etc/nothing", Data::Bytes(Arc::from(&b""[..]))));
}

#[test]
fn a_missing_directory_a_dotdot_leaves_is_not_made() {
    let mut t = Tree::new();
    t.apply_layer(
        0,
        &[
            dir("real"),
            link("via", Kind::Symlink, "phantom/../real"),
            link("deep", Kind::Symlink, "/ghost/a/../../made"),
        ],
    )
    .unwrap();
    t.apply_layer(1, &[file("via/x", 1), file("deep/y", 2)])
        .unwrap();
    assert_eq!(
        listing(&t),
        [
            "/ 755",
            "/deep -> /ghost/a/../../made",
            "/made/ 755",
            "/made/y f1 L1@2",
            "/real/ 755",
            "/real/x f0 L1@1",
            "/via -> phantom/../real"
        ]
    );
}

#[test]
fn a_whiteout_below_a_file_is_ignored() {
    let mut t = Tree::new();
    t.apply_layer(0, &[file("f", 1)]).unwrap();
    t.apply_layer(1, &[file("f/.wh.x", 0), file("f/g/.wh..wh..opq", 0)])
        .unwrap();
    assert_eq!(listing(&t), ["/ 755", "/f f0 L0@1"]);
}
