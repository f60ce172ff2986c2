//! The real node base rock (Debian bookworm from mmdebstrap), built by cairn and unpacked by the reference OCI
//! tool, `umoci unpack`: the two roots must agree on every path, type, mode, owner, size, content, link target,
//! device number and xattr, except for cairn's own files.
//!
//! Needs `CAIRN_NODE_BASE_LAYOUT`: the OCI layout `rocks/node-base/build` writes (tests/run.sh sets it).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_e2e::output::read_tar;
use cairn_e2e::{registry, run_agent, run_cairn, write_profile};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Desc {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    sha256: String,
    link: String,
    dev: (u64, u64),
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn layout() -> PathBuf {
    let dir = std::env::var_os("CAIRN_NODE_BASE_LAYOUT")
        .map(PathBuf::from)
        .expect("CAIRN_NODE_BASE_LAYOUT must name the node base OCI layout: run the suite with tests/run.sh");
    assert!(
        dir.join("index.json").is_file(),
        "{} holds no OCI layout: run rocks/node-base/build",
        dir.display()
    );
    dir
}

/// The manifest digest tagged `bookworm` in the layout.
fn layout_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("json");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "bookworm")
        .and_then(|m| m["digest"].as_str())
        .expect("a manifest tagged bookworm")
        .to_string()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let mut names = vec![0u8; 65536];
    // SAFETY: c is a valid C string and names a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).expect("xattr name");
        let mut value = vec![0u8; 65536];
        // SAFETY: as above, for one attribute name.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            len >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        value.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

/// Describes an unpacked root folder.
fn describe_dir(root: &Path) -> BTreeMap<String, Desc> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let ft = meta.file_type();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let mut d = Desc {
                kind: '?',
                mode: meta.mode() & 0o7777,
                uid: u64::from(meta.uid()),
                gid: u64::from(meta.gid()),
                size: 0,
                sha256: String::new(),
                link: String::new(),
                dev: (0, 0),
                xattrs: xattrs(&path),
            };
            if ft.is_dir() {
                d.kind = 'd';
                stack.push(path.clone());
            } else if ft.is_file() {
                d.kind = 'f';
                let bytes = std::fs::read(&path).expect("read");
                d.size = bytes.len() as u64;
                d.sha256 = hex::encode(Sha256::digest(&bytes));
            } else if ft.is_symlink() {
                d.kind = 'l';
                d.mode = 0;
                d.link = std::fs::read_link(&path)
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned();
            } else if ft.is_char_device() || ft.is_block_device() {
                d.kind = if ft.is_char_device() { 'c' } else { 'b' };
                d.dev = (
                    u64::from(libc::major(meta.rdev())),
                    u64::from(libc::minor(meta.rdev())),
                );
            } else if ft.is_fifo() {
                d.kind = 'p';
            }
            out.insert(rel, d);
        }
    }
    out
}

/// Describes cairn's tar output the same way (hardlinks take their target's description).
fn describe_tar(path: &Path) -> BTreeMap<String, Desc> {
    let (order, items) = read_tar(path);
    let mut out: BTreeMap<String, Desc> = BTreeMap::new();
    for name in order {
        let item = &items[&name];
        let path = name.trim_end_matches('/').to_string();
        if path == "." || path.is_empty() {
            continue;
        }
        let desc = match item.kind {
            'h' => out
                .get(item.link.trim_end_matches('/'))
                .unwrap_or_else(|| panic!("{path}: hardlink to {}, not yet written", item.link))
                .clone(),
            kind => Desc {
                kind,
                mode: if kind == 'l' { 0 } else { item.mode & 0o7777 },
                uid: item.uid,
                gid: item.gid,
                size: if kind == 'f' {
                    item.data.len() as u64
                } else {
                    0
                },
                sha256: if kind == 'f' {
                    hex::encode(Sha256::digest(&item.data))
                } else {
                    String::new()
                },
                link: if kind == 'l' {
                    item.link.clone()
                } else {
                    String::new()
                },
                dev: (u64::from(item.dev.0), u64::from(item.dev.1)),
                xattrs: item.xattrs.iter().cloned().collect(),
            },
        };
        out.insert(path, desc);
    }
    out
}

/// What cairn adds or changes on purpose.
fn cairn_own(path: &str) -> bool {
    path == "usr/lib/cairn"
        || path.starts_with("usr/lib/cairn/")
        || path.starts_with("usr/lib/systemd/system/cairn-")
        || (path.starts_with("usr/lib/systemd/system/") && path.contains(".target.wants/cairn-"))
        || path == "etc/machine-id"
}

#[test]
fn node_base_equals_umoci_unpack_plus_cairn_files() {
    let layout = layout();
    let digest = layout_digest(&layout);
    let registry = registry::shared();
    let reference = format!("{}/cairn/node-base:bookworm", registry.addr());
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:bookworm", layout.display()),
        &format!("docker://{reference}"),
    ]));

    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "node",
        &format!("{reference}@{digest}"),
        &[],
        "",
    );
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    let o = run_cairn(
        [
            "build".as_ref(),
            profile.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--cache".as_ref(),
            cache.as_os_str(),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:bookworm", layout.display()),
        ])
        .arg(&bundle));
    let reference_tree = describe_dir(&bundle.join("rootfs"));
    let ours = describe_tar(&out.join("node.tar"));
    assert!(
        reference_tree.len() > 10_000,
        "the node base looks too small: {} paths",
        reference_tree.len()
    );

    let mut problems = Vec::new();
    for (path, theirs) in &reference_tree {
        match ours.get(path) {
            None => problems.push(format!("missing from cairn's output: {path}")),
            Some(mine) if mine != theirs && !cairn_own(path) => problems.push(format!(
                "{path} differs:\n  umoci: {theirs:?}\n  cairn: {mine:?}"
            )),
            Some(_) => {}
        }
    }
    for path in ours.keys().filter(|p| !reference_tree.contains_key(*p)) {
        // New folders that only hold cairn's files are cairn's too.
        let only_for_cairn = ours
            .keys()
            .filter(|p| p.starts_with(&format!("{path}/")))
            .all(|p| cairn_own(p));
        let cairn_folder = ours[path].kind == 'd' && only_for_cairn;
        if !(cairn_own(path) || cairn_folder) {
            problems.push(format!("only in cairn's output: {path}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // The ACLs on the journal folder are the case the Debian base is known for.
    assert!(
        ours["var/log/journal"]
            .xattrs
            .contains_key("system.posix_acl_default")
    );
    assert_eq!(ours["etc/machine-id"].size, 0);
    assert_eq!(ours["usr/lib/cairn/cairn-agent"].mode, 0o755);
}

/// The promise for the agent: a root built by `cairn build` from the real node base, applied with
/// `cairn-agent apply --root`, has every profile and instance setting, and a second run changes nothing.
#[test]
fn the_agent_applies_to_a_root_cairn_built() {
    let layout = layout();
    let digest = layout_digest(&layout);
    let registry = registry::shared();
    let reference = format!("{}/cairn/node-base:bookworm", registry.addr());
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:bookworm", layout.display()),
        &format!("docker://{reference}"),
    ]));
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5vZGUtYmFzZS1hZ2VudC10ZXN0 ops@example";
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "node",
        &format!("{reference}@{digest}"),
        &[],
        &format!(
            "[system]\nhostname = \"node-{{machine-id:6}}\"\ntimezone = \"UTC\"\nsysctl = {{ \"net.ipv4.ip_forward\" = \"1\" }}\nmodules = [\"overlay\"]\nservices = {{ enable = [\"containerd\"], disable = [\"ssh\"] }}\n[[user]]\nname = \"ops\"\ngroups = [\"sudo\"]\nssh-keys = [\"{key}\"]\n"
        ),
    );
    let out = work.path().join("out");
    let o = run_cairn(
        [
            "build".as_ref(),
            profile.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--cache".as_ref(),
            work.path().join("cache").as_os_str(),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The agent inside the image is the static one, within its size.
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(out.join("node.tar"))
        .arg("-C")
        .arg(&root));
    let agent = root.join("usr/lib/cairn/cairn-agent");
    let file = Command::new("file").arg(&agent).output().expect("file");
    let described = String::from_utf8_lossy(&file.stdout);
    assert!(
        described.contains("statically linked") || described.contains("static-pie linked"),
        "{described}"
    );
    let size = std::fs::metadata(&agent).expect("agent").len();
    assert!(size < 5 * 1024 * 1024, "the agent is {size} bytes");

    let instance = work.path().join("instance.toml");
    std::fs::write(
        &instance,
        "[[file]]\npath = \"/etc/cairn-role\"\ncontent = \"worker\\n\"\n",
    )
    .expect("write");
    let apply = || {
        run_agent(
            [
                "apply",
                "--root",
                root.to_str().expect("utf-8"),
                "--instance",
                instance.to_str().expect("utf-8"),
                "--fw-cfg",
                "/nonexistent",
                "--dmi",
                "/nonexistent",
            ],
            &[],
        )
    };
    let o = apply();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{shown}");
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let id = read("etc/machine-id");
    assert_eq!(read("etc/hostname"), format!("node-{}\n", &id[..6]));
    assert!(
        read("etc/passwd").contains("ops:x:1000:1000::/home/ops:/bin/bash\n"),
        "{}",
        read("etc/passwd")
    );
    assert!(
        read("etc/group")
            .lines()
            .any(|l| l.starts_with("sudo:x:27:") && l.ends_with("ops"))
    );
    assert_eq!(read("home/ops/.ssh/authorized_keys"), format!("{key}\n"));
    assert_eq!(read("etc/cairn-role"), "worker\n");
    assert_eq!(read("etc/timezone"), "UTC\n");
    assert!(read("etc/sysctl.d/90-cairn.conf").contains("net.ipv4.ip_forward = 1\n"));
    let link = |p: &str| {
        std::fs::read_link(root.join(p))
            .map(|l| l.display().to_string())
            .unwrap_or_default()
    };
    assert_eq!(link("etc/localtime"), "/usr/share/zoneinfo/UTC");
    assert_eq!(
        link("etc/systemd/system/multi-user.target.wants/containerd.service"),
        "/usr/lib/systemd/system/containerd.service"
    );
    assert_eq!(
        link("etc/systemd/system/multi-user.target.wants/systemd-networkd.service"),
        "/usr/lib/systemd/system/systemd-networkd.service"
    );
    assert_eq!(
        link("etc/systemd/system/dbus-org.freedesktop.network1.service"),
        "/usr/lib/systemd/system/systemd-networkd.service"
    );
    assert_eq!(
        link("etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"),
        "/usr/lib/systemd/system/systemd-networkd-wait-online.service"
    );
    assert!(
        !root
            .join("etc/systemd/system/multi-user.target.wants/ssh.service")
            .exists(),
        "ssh still enabled"
    );
    assert!(
        !root.join("etc/systemd/system/sshd.service").exists(),
        "ssh's alias still there"
    );

    let skip = ["var/lib/cairn/status.json", "run/cairn/status.json"];
    let before = cairn_e2e::output::snapshot(&root, &skip);
    let o = apply();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        cairn_e2e::output::snapshot(&root, &skip),
        before,
        "the second run changed the root"
    );
}
