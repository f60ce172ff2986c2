//! The real node base rock (Debian bookworm from mmdebstrap), built by cairn and unpacked by the reference OCI
//! tool, `umoci unpack`: the two roots must agree on every path, type, mode, owner, size, content, link target,
//! device number and xattr, except for cairn's own files.
//!
//! Needs `CAIRN_NODE_BASE_LAYOUT`: the OCI layout `rocks/node-base/build` writes (tests/run.sh sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_e2e::cairn::output_text;
use cairn_e2e::output::read_tar;
use cairn_e2e::qemu::Vm;
use cairn_e2e::rocks::{build_profile, node_base, node_base_layout, run};
use cairn_e2e::{run_agent, run_cairn_with_timeout, write_profile};
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

/// The paths the build report's `system` section says the build wrote from the profile (or removed), relative.
fn baked_paths(report: &Path) -> BTreeSet<String> {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("report")).expect("report JSON");
    report["system"]["files"]
        .as_array()
        .expect("system.files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .map(|p| p.trim_start_matches('/').to_string())
        .collect()
}

/// What cairn adds or changes on purpose: its own files, and what its report lists as baked from the profile.
fn cairn_own(path: &str, baked: &BTreeSet<String>) -> bool {
    baked.contains(path)
        || path == "usr/lib/cairn"
        || path.starts_with("usr/lib/cairn/")
        || path.starts_with("usr/lib/systemd/system/cairn-")
        || (path.starts_with("usr/lib/systemd/system/") && path.contains(".target.wants/cairn-"))
        // The health links: boot-complete.target needs the agent's phases.
        || path.starts_with("usr/lib/systemd/system/boot-complete.target.requires")
        || path == "etc/machine-id"
}

#[test]
fn node_base_equals_umoci_unpack_plus_cairn_files() {
    let pinned = node_base();
    let layout = node_base_layout();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(work.path(), "node", &pinned, &[], "");
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    build_profile(&profile, &out, &cache);

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
    let baked = baked_paths(&out.join("node.manifest.json"));
    // The node base has systemd-networkd: even a profile with no [system] gets its DHCP file and links.
    assert!(
        baked.contains("etc/systemd/network/80-cairn-dhcp.network"),
        "{baked:?}"
    );
    assert!(
        reference_tree.len() > 10_000,
        "the node base looks too small: {} paths",
        reference_tree.len()
    );

    let mut problems = Vec::new();
    for (path, theirs) in &reference_tree {
        match ours.get(path) {
            None if !baked.contains(path) => {
                problems.push(format!("missing from cairn's output: {path}"))
            }
            None => {}
            Some(mine) if mine != theirs && !cairn_own(path, &baked) => problems.push(format!(
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
            .all(|p| cairn_own(p, &baked));
        let cairn_folder = ours[path].kind == 'd' && only_for_cairn;
        if !(cairn_own(path, &baked) || cairn_folder) {
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
    let pinned = node_base();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5vZGUtYmFzZS1hZ2VudC10ZXN0 ops@example";
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "node",
        &pinned,
        &[],
        &format!(
            "[system]\nhostname = \"node-{{machine-id:6}}\"\ntimezone = \"UTC\"\nsysctl = {{ \"net.ipv4.ip_forward\" = \"1\" }}\nmodules = [\"overlay\"]\nservices = {{ enable = [\"containerd\"], disable = [\"ssh\"] }}\n[[user]]\nname = \"ops\"\ngroups = [\"sudo\"]\nssh-keys = [\"{key}\"]\n"
        ),
    );
    let out = work.path().join("out");
    build_profile(&profile, &out, &work.path().join("cache"));

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
    assert!(
        size < 8 * 1024 * 1024,
        "the agent is {size} bytes, over its 8 MB budget"
    );

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

fn sha256_of(path: &Path) -> String {
    cairn_e2e::output::sha256_file(path)
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies `size` bytes at `offset` of `from` into a new file.
fn extract(from: &Path, offset: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(from).expect("open disk");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut out = std::fs::File::create(to).expect("create");
    std::io::copy(&mut f.take(size), &mut out).expect("copy");
}

/// The names in a newc cpio archive, with their data.
fn cpio_entries(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut at = 0;
    let field = |b: &[u8], i: usize| {
        usize::from_str_radix(
            std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).expect("hex"),
            16,
        )
        .expect("hex")
    };
    while at + 110 <= bytes.len() {
        let h = &bytes[at..at + 110];
        assert_eq!(&h[..6], b"070701", "newc magic at {at}");
        let (size, namesize) = (field(h, 6), field(h, 11));
        let name = String::from_utf8_lossy(&bytes[at + 110..at + 110 + namesize - 1]).into_owned();
        let data_at = (at + 110 + namesize).div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            break;
        }
        out.insert(name, bytes[data_at..data_at + size].to_vec());
        at = (data_at + size).div_ceil(4) * 4;
    }
    out
}

/// The bootable disk of the node base: partitions of the Discoverable Partitions Specification, a root that
/// `veritysetup verify` accepts with the hash from the loader entry (and refuses once a byte is flipped), each
/// filesystem passing its own check, the factory /var with its ACLs, the initrd's agent and modules, and the same
/// bytes from a second build with an empty cache.
#[test]
fn the_disk_image_is_verified_and_deterministic() {
    let pinned = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "disk",
        &pinned,
        &[],
        "[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\", \"qcow2\"]\n",
    );
    let build = |tag: &str| {
        let out = work.path().join(format!("out-{tag}"));
        build_profile(&profile, &out, &work.path().join(format!("cache-{tag}")));
        out
    };
    let out = build("a");
    let raw = out.join("disk.raw");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("disk.manifest.json")).expect("report"))
            .expect("json");
    let disk = &report["disk"];
    let root_hash = disk["root_hash"].as_str().expect("root hash").to_string();
    assert_eq!(report["outputs"][0]["format"], "qcow2");
    assert_eq!(report["outputs"][1]["sha256"], sha256_of(&raw));

    // The table, as sfdisk reads it.
    let table: serde_json::Value =
        serde_json::from_str(&output(Command::new("sfdisk").arg("--json").arg(&raw)))
            .expect("json");
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .clone();
    let kinds: Vec<(String, String)> = parts
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "esp".to_string(),
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".to_string()
            ),
            (
                "root-a".to_string(),
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709".to_string()
            ),
            (
                "root-a-verity".to_string(),
                "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5".to_string()
            ),
            // Slot B: the same types, named empty until an update writes it.
            (
                "_empty".to_string(),
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709".to_string()
            ),
            (
                "_empty".to_string(),
                "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5".to_string()
            ),
            (
                "var".to_string(),
                "4D21B016-B534-45C2-A9FB-5C16E091FD2D".to_string()
            ),
        ]
    );
    let part = |i: usize| -> (u64, u64) {
        let p = &disk["partition_table"]["partitions"][i];
        (
            p["offset"].as_u64().expect("offset"),
            p["size"].as_u64().expect("size"),
        )
    };
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(
            p["start"].as_u64().expect("start") * 512,
            part(i).0,
            "partition {i} offset"
        );
    }
    // The root partition's GUID is the first half of the root hash (the DPS convention).
    assert_eq!(
        parts[1]["uuid"]
            .as_str()
            .unwrap_or("")
            .replace('-', "")
            .to_lowercase(),
        root_hash[..32]
    );

    let dir = work.path();
    let (esp, root, hash, var) = (
        dir.join("esp"),
        dir.join("root"),
        dir.join("hash"),
        dir.join("var"),
    );
    for (i, p) in [(0, &esp), (1, &root), (2, &hash), (5, &var)] {
        extract(&raw, part(i).0, part(i).1, p);
    }
    // The report says what slot A holds, byte for byte from each partition's start (what an update carries).
    for (what, file) in [("root", &root), ("verity", &hash)] {
        use std::io::Read;
        let image = &disk["slot"][what];
        let bytes = image["bytes"].as_u64().expect("bytes");
        let mut head = Vec::new();
        std::fs::File::open(file)
            .expect("open")
            .take(bytes)
            .read_to_end(&mut head)
            .expect("read");
        assert_eq!(head.len() as u64, bytes, "{what}: the partition is smaller");
        assert_eq!(
            hex::encode(Sha256::digest(&head)),
            image["sha256"].as_str().expect("sha256"),
            "{what}"
        );
    }
    // Slot B is slot A's size, holds nothing yet, and is not the root the initrd looks for.
    assert_eq!((part(3).1, part(4).1), (part(1).1, part(2).1));
    for i in [3, 4] {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&raw).expect("open");
        f.seek(SeekFrom::Start(part(i).0)).expect("seek");
        let mut left = part(i).1;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n]).expect("read");
            assert!(
                buf[..n].iter().all(|b| *b == 0),
                "slot B partition {i} is not empty"
            );
            left -= n as u64;
        }
        let uuid = parts[i]["uuid"]
            .as_str()
            .unwrap_or("")
            .replace('-', "")
            .to_lowercase();
        assert!(
            !root_hash.contains(&uuid),
            "slot B partition {i} has a root hash's GUID"
        );
    }

    // Slot A's entry is a UKI whose command line carries the root hash; veritysetup accepts the pair with it.
    let uki_bytes = Command::new("mtype")
        .arg("-i")
        .arg(&esp)
        .arg("::/EFI/Linux/cairn-1-a.efi")
        .output()
        .expect("mtype")
        .stdout;
    let mut uki_file = std::io::Cursor::new(&uki_bytes);
    let uki_table = cairn_profile::uki::sections(&mut uki_file).expect("the UKI's sections");
    let about =
        cairn_profile::uki::About::read(&mut uki_file).expect("the UKI's .cmdline and .osrel");
    let entry = about.cmdline.clone();
    assert_eq!(entry, format!("console=ttyS0 cairn.verity={root_hash}"));
    assert_eq!(
        report["disk"]["boot"]["uki"]["sha256"],
        hex::encode(Sha256::digest(&uki_bytes)),
        "the report's UKI is the ESP's"
    );
    // Its os-release names the profile and has no sort key (systemd-boot ranks cairn's entries by file name);
    // its sections are the ones systemd-stub reads, the kernel last.
    assert_eq!(
        about.os_release_value("PRETTY_NAME").as_deref(),
        Some("disk 1.0.0")
    );
    assert_eq!(about.os_release_value("ID"), None);
    let names: Vec<&str> = uki_table.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        &names[names.len() - 5..],
        [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    );
    let loader = output(
        Command::new("mtype")
            .arg("-i")
            .arg(&esp)
            .arg("::/loader/loader.conf"),
    );
    assert_eq!(loader, "default cairn-*.efi\ntimeout 0\neditor no\n");
    assert!(
        !entry.contains("roothash="),
        "systemd's roothash= must not be used"
    );
    output(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&root)
            .arg(&hash)
            .arg(&root_hash),
    );
    // A byte flipped in the root's first block is caught.
    let flipped = dir.join("root-flipped");
    std::fs::copy(&root, &flipped).expect("copy");
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&flipped)
            .expect("open");
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(100)).expect("seek");
        f.read_exact(&mut b).expect("read");
        f.seek(SeekFrom::Start(100)).expect("seek");
        f.write_all(&[b[0] ^ 0xff]).expect("write");
    }
    let refused = Command::new("veritysetup")
        .arg("verify")
        .arg(&flipped)
        .arg(&hash)
        .arg(&root_hash)
        .output()
        .expect("veritysetup");
    assert!(!refused.status.success(), "a flipped byte verified");

    // Each filesystem passes its own check.
    output(Command::new("e2fsck").args(["-f", "-n"]).arg(&var));
    output(Command::new("fsck.vfat").arg("-n").arg(&esp));
    output(
        Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(out.join("disk.qcow2")),
    );
    output(
        Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(&raw)
            .arg(out.join("disk.qcow2")),
    );

    // The read-only root: /var empty, /home /root /srv into it, the factory /var with its ACLs.
    let listing = output(Command::new("unsquashfs").args(["-lln"]).arg(&root));
    for link in [
        "squashfs-root/home -> var/home",
        "squashfs-root/root -> var/root",
        "squashfs-root/srv -> var/srv",
    ] {
        assert!(listing.contains(link), "{link} missing");
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwxr-xr-x 0/0") && l.ends_with(" squashfs-root")),
        "root folder mode"
    );
    assert!(
        !listing.contains("squashfs-root/var/lib"),
        "/var is not empty in the root"
    );
    let factory = dir.join("var.tar");
    let factory_bytes = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(&root)
        .arg("usr/lib/cairn/factory/var.tar")
        .output()
        .expect("unsquashfs")
        .stdout;
    std::fs::write(&factory, &factory_bytes).expect("write");
    let (_, items) = read_tar(&factory);
    assert!(
        items.contains_key("lib/dpkg/status"),
        "the factory /var lacks the dpkg database"
    );
    assert!(
        items["log/journal"]
            .xattrs
            .iter()
            .any(|(k, _)| k == "system.posix_acl_default"),
        "ACLs lost"
    );
    assert_eq!(items["root"].mode & 0o7777, 0o700);

    // The initrd: the static agent as /init, dm-verity and its dependencies, the load order.
    let initrd = cairn_profile::uki::read_section(
        &mut uki_file,
        &uki_table,
        cairn_profile::uki::INITRD,
        1 << 30,
    )
    .expect("the UKI's .initrd");
    let entries = cpio_entries(&initrd);
    assert!(
        entries
            .get("init")
            .is_some_and(|b| b.starts_with(b"\x7fELF")),
        "no /init"
    );
    let order = String::from_utf8_lossy(&entries["etc/cairn/modules"]).into_owned();
    let position = |m: &str| {
        order
            .lines()
            .position(|l| l.ends_with(m))
            .unwrap_or_else(|| panic!("{m} not in {order}"))
    };
    assert!(position("/dm-mod.ko") < position("/dm-verity.ko"));
    for line in order.lines() {
        assert!(
            entries.contains_key(line.trim_start_matches('/')),
            "{line} listed but not in the initrd"
        );
    }

    // Deterministic: a second build, empty cache, same bytes.
    let again = build("b");
    assert_eq!(sha256_of(&again.join("disk.raw")), sha256_of(&raw));
    assert_eq!(
        sha256_of(&again.join("disk.qcow2")),
        sha256_of(&out.join("disk.qcow2"))
    );
}

/// The product is a machine that boots: the node base as a raw disk, booted under UEFI four times. First boot, on
/// a disk enlarged before it: cairn's initrd verifies the root, grows /var to fill the disk, and the agent applies
/// the profile with instance data from fw_cfg. Second boot: nothing is applied again and /var kept what the first
/// wrote. Third, a fresh copy with instance data on its ESP (a device flashed with dd). Fourth, with a byte of the
/// root flipped: the initrd refuses it and powers the machine off.
#[test]
fn the_node_boots_verified_once_and_refuses_a_tampered_root() {
    let pinned = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "node",
        &pinned,
        &[],
        "[system]\nhostname = \"node-{machine-id:6}\"\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\"]\n",
    );
    let out = work.path().join("out");
    build_profile(&profile, &out, &work.path().join("cache"));
    let disk = out.join("node.raw");
    let instance = work.path().join("instance.toml");
    std::fs::write(&instance, "[system]\nhostname = \"from-fw-cfg\"\n").expect("write");
    let json = |line: &str, prefix: &str| -> serde_json::Value {
        serde_json::from_str(line.trim_start_matches(prefix).trim())
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let bound = Duration::from_secs(420);

    // First boot, on a disk enlarged by 512 MiB before it: /var grows to fill it.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("node.manifest.json")).expect("report"))
            .expect("json");
    let var_size = report["disk"]["partition_table"]["partitions"][5]["size"]
        .as_u64()
        .expect("var size");
    let pristine = work.path().join("pristine.raw");
    std::fs::copy(&disk, &pristine).expect("copy");
    let grown = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open");
    grown
        .set_len(grown.metadata().expect("stat").len() + (512 << 20))
        .expect("enlarge");
    drop(grown);
    let mut vm = Vm::boot(&disk, Some(&instance));
    let (init, _) = vm.wait_for("cairn-init: ready ", bound);
    let init = json(&init, "cairn-init: ready ");
    let var_step = init["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "var")
        .expect("var step")
        .clone();
    assert_eq!(
        var_step["detail"],
        format!("/var partition of {} bytes", var_size + (512 << 20)),
        "{init}"
    );
    let names: Vec<&str> = init["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "mounts",
            "modules",
            "cmdline",
            "partitions",
            "verity",
            "root",
            "var",
            "etc",
            "esp"
        ]
    );
    let (ready, took) = vm.wait_for("cairn-agent: ready ", bound);
    eprintln!(
        "first boot: QEMU start to `cairn-agent: ready` in {:.1} s",
        took.as_secs_f64()
    );
    let ready = json(&ready, "cairn-agent: ready ");
    assert_eq!(ready["instance"], "fw_cfg", "{ready}");
    let steps = ready["steps"].as_array().expect("steps");
    // The first-boot timeline (`--nocapture` shows it): what the README's figures come from.
    for s in steps {
        eprintln!("first boot: {} {} {} ms", s["phase"], s["name"], s["ms"]);
    }
    assert!(
        steps.iter().any(|s| s["phase"] == "init"),
        "the node's line lacks the initrd's steps: {ready}"
    );
    let hostname = steps
        .iter()
        .find(|s| s["name"] == "hostname")
        .expect("a hostname step");
    assert_eq!(hostname["outcome"], "applied", "{ready}");
    assert!(
        vm.wait_for("Debian GNU/Linux 12 from-fw-cfg", bound)
            .0
            .contains("from-fw-cfg")
    );
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "the guest did not power down on ACPI"
    );
    assert!(
        !vm.serial().contains("cairn-agent: failed"),
        "{}",
        vm.serial()
    );

    // Second boot: first-boot work is not done again, and /var kept the agent's journal.
    let mut vm = Vm::boot(&disk, Some(&instance));
    let (ready, _) = vm.wait_for("cairn-agent: ready ", bound);
    let ready = json(&ready, "cairn-agent: ready ");
    for s in ready["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["phase"] == "system")
    {
        assert_eq!(
            s["outcome"], "skipped",
            "re-applied on the second boot: {ready}"
        );
    }
    assert!(ready.get("note").is_none(), "{ready}");
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "the guest did not power down on ACPI"
    );

    // An edge device flashed with dd gets its identity from a file copied onto the ESP.
    let esp_disk = work.path().join("esp.raw");
    std::fs::copy(&pristine, &esp_disk).expect("copy");
    let esp_offset = report["disk"]["partition_table"]["partitions"][0]["offset"]
        .as_u64()
        .expect("esp offset");
    let esp_image = format!("{}@@{esp_offset}", esp_disk.display());
    let esp_instance = work.path().join("esp-instance.toml");
    std::fs::write(&esp_instance, "[system]\nhostname = \"from-esp\"\n").expect("write");
    // The ESP's /cairn folder exists already, for this file.
    run(Command::new("mcopy")
        .args(["-i", &esp_image])
        .arg(&esp_instance)
        .arg("::/cairn/instance.toml"));
    let mut vm = Vm::boot(&esp_disk, None);
    let (ready, _) = vm.wait_for("cairn-agent: ready ", bound);
    let ready = json(&ready, "cairn-agent: ready ");
    assert_eq!(ready["instance"], "esp", "{ready}");
    assert!(
        vm.wait_for("Debian GNU/Linux 12 from-esp", bound)
            .0
            .contains("from-esp")
    );
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "the guest did not power down on ACPI"
    );

    // A byte flipped in the root's first block: the initrd refuses the root and powers off.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("node.manifest.json")).expect("report"))
            .expect("json");
    let root_offset = report["disk"]["partition_table"]["partitions"][1]["offset"]
        .as_u64()
        .expect("offset");
    let tampered = work.path().join("tampered.raw");
    std::fs::rename(&pristine, &tampered).expect("rename");
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tampered)
            .expect("open");
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(root_offset + 100)).expect("seek");
        f.read_exact(&mut b).expect("read");
        f.seek(SeekFrom::Start(root_offset + 100)).expect("seek");
        f.write_all(&[b[0] ^ 0x01]).expect("write");
    }
    // Booted as CI boots an image: `cairn boot` says failed (exit 1), naming why, and the disk stays as it was.
    let before = sha256_of(&tampered);
    let console = work.path().join("tampered.console.log");
    let o = run_cairn_with_timeout(
        [
            OsStr::new("--message-format"),
            OsStr::new("json"),
            OsStr::new("boot"),
            tampered.as_os_str(),
            OsStr::new("--console"),
            console.as_os_str(),
        ],
        &[],
        Duration::from_secs(900),
    );
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let message = |reason: &str| {
        messages
            .iter()
            .find(|m| m["reason"] == reason)
            .cloned()
            .unwrap_or_else(|| panic!("no {reason} message: {}", output_text(&o)))
    };
    let booted = message("booted");
    let boot = &booted["boot"];
    assert_eq!(booted["ok"], false, "{booted}");
    assert_eq!(boot["outcome"], "failed", "{booted}");
    assert!(
        boot["note"]
            .as_str()
            .unwrap_or("")
            .contains("did not verify"),
        "{booted}"
    );
    assert_eq!(boot["status"]["phase"], "init", "{booted}");
    assert_eq!(
        boot["powered_off"], true,
        "the initrd did not power the machine off: {booted}"
    );
    assert!(
        boot["lines"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l.as_str().unwrap_or("").starts_with("cairn-init: failed "))),
        "{booted}"
    );
    let error = message("error");
    assert_eq!(error["exit_code"], 1, "{error}");
    let console = std::fs::read_to_string(&console).expect("the console was kept");
    assert!(console.contains("cairn-init: failed "), "{console}");
    assert!(
        !console.contains("Welcome to"),
        "an unverified root was booted"
    );
    assert_eq!(sha256_of(&tampered), before, "cairn boot wrote to the disk");
}

/// The CI example as a CI job runs it on a profile of the node base: a stale pin stops it (exit 1) before
/// anything is built; a fresh one is built, its sums checked, inspected, and booted by `cairn boot` to ready,
/// with the node reporting the build's own root hash.
#[test]
fn the_ci_example_checks_the_pins_builds_and_boots() {
    let pinned = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/ci.sh");
    let extra = "[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\"]\n";
    let ci = |profile: &Path, out: &Path| {
        let o = Command::new("bash")
            .arg(&script)
            .arg(profile)
            .arg(out)
            .env("CAIRN", cairn_e2e::cairn_bin())
            .env("CAIRN_CACHE", work.path().join("cache"))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("CAIRN_BOOT_ARGS", "--timeout 600")
            .output()
            .expect("run profiles/ci.sh");
        (o.status.code(), output_text(&o))
    };

    // A rock's tag that now names another digest: the job stops at the pin check.
    let (repo, _) = pinned.split_once('@').expect("pinned");
    let stale = format!("{repo}@sha256:{}", "1".repeat(64));
    let profile = write_profile(&work.path().join("stale"), "node", &stale, &[], extra);
    let out = work.path().join("stale-out");
    let (code, text) = ci(&profile, &out);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("stale"), "{text}");
    assert!(
        !out.join("node.raw").exists(),
        "built despite a stale pin: {text}"
    );

    let profile = write_profile(&work.path().join("fresh"), "node", &pinned, &[], extra);
    let out = work.path().join("out");
    let (code, text) = ci(&profile, &out);
    assert_eq!(code, Some(0), "{text}");
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).expect("SHA256SUMS");
    assert!(
        sums.contains(&format!(
            "{}  {}",
            sha256_of(&out.join("node.raw")),
            out.join("node.raw").display()
        )),
        "{sums}"
    );
    let inspection = std::fs::read_to_string(out.join("node.inspect.txt")).expect("inspection");
    // inspect names the rock as the profile does, its digest cut to 12 digits.
    let at = pinned.find("@sha256:").expect("pinned") + "@sha256:".len() + 12;
    assert!(inspection.contains(&pinned[..at]), "{inspection}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("node.manifest.json")).expect("report"))
            .expect("json");
    let root_hash = report["disk"]["root_hash"].as_str().expect("root hash");
    assert!(
        text.contains(&format!("ready: {} after", out.join("node.raw").display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("root hash {}", &root_hash[..12])),
        "{text}"
    );
    let console = std::fs::read_to_string(out.join("node.console.log")).expect("console kept");
    let ready = console
        .lines()
        .find_map(|l| {
            l.split_once("cairn-agent: ready ")
                .map(|(_, j)| j.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no ready line: {console}"));
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("ready json");
    assert_eq!(ready["image"]["root_hash"], root_hash, "{ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    // The disk that shipped is the one that was built: booting wrote nothing to it.
    assert_eq!(
        sha256_of(&out.join("node.raw")),
        report["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["format"] == "raw"))
            .and_then(|o| o["sha256"].as_str())
            .expect("raw sha256")
    );
}

/// The SPDX tools' validator (rocks/setup-host installs it in its own venv).
fn spdx_validator() -> std::path::PathBuf {
    let path = std::env::var_os("CAIRN_SPDX_VALIDATOR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/cairn-tools/bin/pyspdxtools".into());
    assert!(
        path.is_file(),
        "{} is missing: run rocks/setup-host (it installs spdx-tools in a venv)",
        path.display()
    );
    path
}

/// The SBOM of a build of the real node base: valid for the SPDX tools, every package dpkg itself lists (read
/// with the host's dpkg-query from the image's own status file) with its purl, the rock with its digest, and
/// cairn's files with their checksums.
#[test]
fn the_sbom_lists_what_dpkg_lists_and_is_valid_spdx() {
    let pinned = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(work.path(), "sbom", &pinned, &[], "");
    let out = work.path().join("out");
    build_profile(&profile, &out, &work.path().join("cache"));
    let sbom_path = out.join("sbom.spdx.json");
    let validated = Command::new(spdx_validator())
        .arg("--infile")
        .arg(&sbom_path)
        .output()
        .expect("run pyspdxtools");
    assert!(
        validated.status.success(),
        "the SPDX validator refused the SBOM:\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_path).expect("sbom")).expect("json");
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");

    // dpkg's own view of the image's status file.
    let (_, items) = read_tar(&out.join("sbom.tar"));
    let admin = work.path().join("dpkg");
    std::fs::create_dir_all(&admin).expect("mkdir");
    std::fs::write(admin.join("status"), &items["var/lib/dpkg/status"].data).expect("status");
    let listed = output(
        Command::new("dpkg-query")
            .arg("--admindir")
            .arg(&admin)
            .args([
                "-W",
                "-f",
                "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n",
            ]),
    );
    let mut dpkg: Vec<(String, String, String)> = listed
        .lines()
        .filter(|l| l.starts_with("ii "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[2].to_string(), w[3].to_string())
        })
        .collect();
    dpkg.sort();
    assert!(dpkg.len() > 100, "{} packages", dpkg.len());
    let packages = sbom["packages"].as_array().expect("packages");
    let purl = |p: &serde_json::Value| {
        p["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut debs: Vec<(String, String, String)> = packages
        .iter()
        .filter(|p| purl(p).starts_with("pkg:deb/"))
        .map(|p| {
            let arch = purl(p)
                .rsplit_once("?arch=")
                .map(|(_, a)| a.to_string())
                .unwrap_or_default();
            (
                p["name"].as_str().expect("name").to_string(),
                p["versionInfo"].as_str().expect("version").to_string(),
                arch,
            )
        })
        .collect();
    debs.sort();
    assert_eq!(debs, dpkg, "the SBOM's Debian packages are not dpkg's");
    let bash = packages.iter().find(|p| p["name"] == "bash").expect("bash");
    let version = bash["versionInfo"]
        .as_str()
        .expect("version")
        .replace('+', "%2B");
    assert_eq!(
        purl(bash),
        format!("pkg:deb/debian/bash@{version}?arch=amd64")
    );
    assert_eq!(bash["licenseDeclared"], "GPL-3.0-or-later");

    let digest = pinned.rsplit_once('@').expect("pinned").1;
    let rock = packages
        .iter()
        .find(|p| purl(p).starts_with("pkg:oci/node-base@"))
        .expect("the rock");
    assert_eq!(
        rock["checksums"][0]["checksumValue"],
        digest.trim_start_matches("sha256:")
    );
    let files = sbom["files"].as_array().expect("files");
    let agent = files
        .iter()
        .find(|f| f["fileName"] == "./usr/lib/cairn/cairn-agent")
        .expect("the agent");
    assert_eq!(
        agent["checksums"][1]["checksumValue"],
        hex::encode(Sha256::digest(&items["usr/lib/cairn/cairn-agent"].data))
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sbom.manifest.json")).expect("report"))
            .expect("json");
    let named = report["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["format"] == "spdx")
        .expect("the SBOM in the report");
    assert_eq!(named["file"], "sbom.spdx.json");
    assert_eq!(
        named["sha256"],
        hex::encode(Sha256::digest(std::fs::read(&sbom_path).expect("sbom")))
    );
}
