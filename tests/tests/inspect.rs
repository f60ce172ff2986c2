//! `cairn inspect` and `cairn diff` on builds made here: two small bootable-shaped profiles that differ in a file
//! and a layer (text and JSON, checked against the tar, `sfdisk --json` and the report), a damaged output and
//! wrong paths refused, a qcow2-only and a tar-only build. The real node base: `inspect_node_base.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_e2e::cairn::{assert_ok, build_args, stderr};
use cairn_e2e::inspect::{
    KERNEL_VERSION as VERSION, bootable_base, build, cairn, fake_kernel, inspect_json, json,
    report, status, strings,
};
use cairn_e2e::output::read_tar;
use cairn_e2e::{Compression, Image, LayerBuilder, Pushed, push_image, registry, write_profile};
use serde_json::Value;

/// 24 MiB that do not compress: the second build's root, and so its root partition, grows by a slot.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

const BIG: usize = 24 << 20;

struct Rocks {
    base: Pushed,
    one: Pushed,
    two: Pushed,
}

/// The base: a kernel, its module lists, systemd-boot, dpkg's status and a tool. Layer one: `/opt/x`. Layer two:
/// another `/opt/x`, a big file and a newer status (one version changed, one package added).
fn push_rocks(prefix: &str) -> Rocks {
    let registry = registry::shared();
    let base = bootable_base().file(
        "var/lib/dpkg/status",
        0o644,
        status(&[("base-files", "12.4"), ("libc6", "2.36-9")]),
    );
    let one = LayerBuilder::new().file("opt/x", 0o644, "one");
    let two = LayerBuilder::new()
        .file("opt/x", 0o644, "three")
        .file("opt/big", 0o644, incompressible(BIG))
        .file(
            "var/lib/dpkg/status",
            0o644,
            status(&[
                ("base-files", "12.5"),
                ("libc6", "2.36-9"),
                ("newpkg", "1.0"),
            ]),
        );
    let image = |l: &LayerBuilder| Image::builder().layer_from(l, Compression::Gzip).build();
    Rocks {
        base: push_image(registry, &format!("{prefix}/base"), "v1", &image(&base)),
        one: push_image(registry, &format!("{prefix}/one"), "v1", &image(&one)),
        two: push_image(registry, &format!("{prefix}/two"), "v1", &image(&two)),
    }
}

/// Profile `name` on the base with `layer` and its own `/etc/motd`, as a tar and a raw disk.
fn profile(dir: &Path, name: &str, rocks: &Rocks, layer: &Pushed, motd: &str) -> PathBuf {
    write_profile(
        dir,
        name,
        &rocks.base.reference_by_digest,
        &[&layer.reference_by_digest],
        &format!(
            "[[file]]\npath = \"/etc/motd\"\ncontent = \"{motd}\\n\"\n[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"tar\", \"raw\"]\n"
        ),
    )
}

#[test]
fn inspect_shows_contents_packages_partitions_and_boot_and_diff_lists_exactly_what_changed() {
    let rocks = push_rocks("e2e/inspect");
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let cache = work.path().join("cache");
    let p_one = profile(work.path(), "one", &rocks, &rocks.one, "hello one");
    let p_two = profile(work.path(), "two", &rocks, &rocks.two, "hello, two");
    let (out_one, out_two) = (work.path().join("out-one"), work.path().join("out-two"));
    build(&p_one, &out_one, &cache, &[]);
    build(&p_two, &out_two, &cache, &[]);
    let two = out_two.join("two");
    let i = inspect_json(&two);
    let r = report(&out_two, "two");

    // What was read, checked against the report: the disk only (the tar is not needed for any of it).
    assert_eq!(strings(&i["read"], "format"), ["raw"]);
    assert_eq!(i["read"][0]["sha256"], r["outputs"][1]["sha256"]);

    // Contents by origin add up to the total, which is every regular file of the tar (a hardlink once).
    let (_, items) = read_tar(&out_two.join("two.tar"));
    let files: Vec<(&String, u64)> = items
        .iter()
        .filter(|(_, it)| it.kind == 'f')
        .map(|(p, it)| (p, it.data.len() as u64))
        .collect();
    let c = &i["contents"];
    assert_eq!(c, &r["contents"], "inspect shows the report's contents");
    let total = (
        c["total"]["files"].as_u64().unwrap(),
        c["total"]["bytes"].as_u64().unwrap(),
    );
    assert_eq!(
        total,
        (files.len() as u64, files.iter().map(|f| f.1).sum::<u64>())
    );
    let origins: BTreeMap<String, (u64, u64)> = c["origins"]
        .as_array()
        .expect("origins")
        .iter()
        .map(|o| {
            (
                o["origin"].as_str().unwrap().to_string(),
                (o["files"].as_u64().unwrap(), o["bytes"].as_u64().unwrap()),
            )
        })
        .collect();
    let sum = origins.values().fold((0, 0), |a, o| (a.0 + o.0, a.1 + o.1));
    assert_eq!(sum, total, "{origins:?}");
    assert_eq!(
        strings(&c["origins"], "origin"),
        ["base.rock", "layer[0].rock", "files", "cairn"]
    );
    // Layer two's three files, the status among them (it replaced the base's); the base's eight others.
    let two_status = status(&[
        ("base-files", "12.5"),
        ("libc6", "2.36-9"),
        ("newpkg", "1.0"),
    ]);
    assert_eq!(
        origins["layer[0].rock"],
        (3, (5 + BIG + two_status.len()) as u64)
    );
    assert_eq!(
        origins["base.rock"].0, 8,
        "the replaced status counts for the layer only"
    );
    assert_eq!(origins["files"], (1, "hello, two\n".len() as u64));
    let layer = &c["origins"][1]["layers"][0];
    assert_eq!(layer["digest"], r["rocks"][1]["layers"][0]["digest"]);
    // The biggest files, biggest first, each with its origin.
    let biggest = c["biggest"].as_array().expect("biggest");
    assert_eq!(biggest[0]["path"], "/opt/big");
    assert_eq!(biggest[0]["size"], BIG as u64);
    assert_eq!(biggest[0]["origin"], "layer[0].rock");
    let sizes: Vec<u64> = biggest
        .iter()
        .map(|b| b["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    let tool = biggest
        .iter()
        .find(|b| b["path"] == "/usr/bin/tool")
        .expect("tool");
    assert_eq!(
        (tool["size"].as_u64(), tool["origin"].as_str()),
        (Some(100_000), Some("base.rock"))
    );

    // Packages from the disk's dpkg status.
    let packages: Vec<(String, String)> = i["packages"]["list"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        packages,
        [
            ("base-files".to_string(), "12.5".to_string()),
            ("libc6".into(), "2.36-9".into()),
            ("newpkg".into(), "1.0".into())
        ]
    );
    assert_eq!(
        i["packages"]["from"],
        out_two.join("two.raw").display().to_string()
    );

    // Partitions: what sfdisk reads from the same disk, and what the report says.
    let sfdisk = Command::new("sfdisk")
        .arg("--json")
        .arg(out_two.join("two.raw"))
        .output()
        .expect("sfdisk");
    let table: Value = serde_json::from_slice(&sfdisk.stdout).expect("sfdisk json");
    let theirs: Vec<(String, String, String, u64, u64)> = table["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["type"].as_str().unwrap().into(),
                p["uuid"].as_str().unwrap().into(),
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect();
    let ours: Vec<(String, String, String, u64, u64)> = i["disk"]["partition_table"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["type_guid"].as_str().unwrap().into(),
                p["uuid"].as_str().unwrap().into(),
                p["offset"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(
        strings(&i["disk"]["partition_table"]["partitions"], "name"),
        strings(&r["disk"]["partition_table"]["partitions"], "name")
    );
    assert_eq!(
        i["disk"]["partition_table"]["disk_guid"]
            .as_str()
            .map(str::to_lowercase),
        r["disk"]["partition_table"]["disk_guid"]
            .as_str()
            .map(str::to_lowercase)
    );

    // Boot: the loader entry's command line carries the report's root hash; the kernel's version from its header.
    let boot = &i["disk"]["boot"];
    let root_hash = r["disk"]["root_hash"].as_str().expect("root hash");
    assert_eq!(
        boot["kernel_cmdline"],
        format!("console=ttyS0 cairn.verity={root_hash}")
    );
    assert_eq!(boot["kernel_cmdline"], r["disk"]["kernel_cmdline"]);
    assert_eq!(boot["root_hash"], root_hash);
    assert_eq!(boot["kernel"]["version"], VERSION);
    assert_eq!(boot["kernel"]["size"], fake_kernel().len() as u64);
    assert_eq!(boot["default"], "EFI/Linux/cairn-1-a.efi");
    assert_eq!(boot["entries"][0]["generation"], 1);
    assert_eq!(boot["entries"][0]["version"], "1.0.0");
    assert_eq!(boot["entries"][0]["uname"], "6.1.0-test");
    assert_eq!(boot["entries"][0]["signed"], false);
    assert_eq!(
        boot["entries"][0]["sha256"],
        r["disk"]["boot"]["uki"]["sha256"]
    );
    assert_eq!(boot["kernel"]["path"], "EFI/Linux/cairn-1-a.efi:.linux");
    assert!(
        i["notes"].as_array().expect("notes").is_empty(),
        "{}",
        i["notes"]
    );

    // The text: the same facts, sizes in binary units, digests short.
    let o = cairn(&["inspect".as_ref(), two.as_os_str()]);
    assert_ok(&o, "inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    let short_layer = &layer["digest"].as_str().unwrap()[..19];
    for want in [
        "two 1.0.0 (amd64)".to_string(),
        format!("read: {} (sha256 ", out_two.join("two.raw").display()),
        "contents by origin".into(),
        format!("layer {short_layer}"),
        "packages: 3, from dpkg's status".into(),
        "newpkg".into(),
        format!("cmdline:   console=ttyS0 cairn.verity={root_hash}"),
        format!("root hash: {}", &root_hash[..12]),
        "entry:     EFI/Linux/cairn-1-a.efi, two 1.0.0, ".into(),
        VERSION.into(),
    ] {
        assert!(text.contains(&want), "`{want}` missing from:\n{text}");
    }
    assert!(
        !text.contains(&layer["digest"].as_str().unwrap()[7..]),
        "a full digest in the text:\n{text}"
    );
    let big: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "biggest files")
        .nth(1)
        .expect("the biggest file")
        .split_whitespace()
        .collect();
    assert_eq!(big, ["24.0", "MiB", "/opt/big", "(layer[0].rock)"]);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("# "))
        .expect("partition header");
    for (n, name) in ["esp", "root-a", "root-a-verity", "_empty", "_empty", "var"]
        .iter()
        .enumerate()
    {
        let row: Vec<&str> = lines[header + 1 + n].split_whitespace().collect();
        assert_eq!(
            (row[0], row[1]),
            (&*(n + 1).to_string(), *name),
            "{}",
            lines[header + 1 + n]
        );
    }

    // diff: exactly the changed rock, files, packages and partition; exit 1 as diff(1).
    let one = out_one.join("one");
    let o = cairn(&[
        "diff".as_ref(),
        one.as_os_str(),
        two.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let d = json(&o, "diff --json");
    assert_eq!(strings(&d["rocks"], "key"), ["layer[0].rock"]);
    assert_eq!(
        d["rocks"][0]["a"]["manifest_digest"],
        rocks.one.manifest_digest
    );
    assert_eq!(
        d["rocks"][0]["b"]["manifest_digest"],
        rocks.two.manifest_digest
    );
    let f = &d["files"];
    assert_eq!(f["contents_compared"], true);
    assert_eq!(strings(&f["added"], "path"), ["/opt/big"]);
    assert!(
        f["removed"].as_array().unwrap().is_empty(),
        "{}",
        f["removed"]
    );
    // The profile's own copy in the image differs too: the profiles differ.
    assert_eq!(
        strings(&f["changed"], "path"),
        [
            "/etc/motd",
            "/opt/x",
            "/usr/lib/cairn/profile.toml",
            "/var/lib/dpkg/status"
        ]
    );
    assert_eq!(
        f["changed"][0]["what"],
        serde_json::json!(["size", "content"])
    );
    let p = &d["packages"];
    assert_eq!(strings(&p["added"], "name"), ["newpkg"]);
    assert!(p["removed"].as_array().unwrap().is_empty());
    assert_eq!(
        (
            &p["changed"][0]["name"],
            &p["changed"][0]["a"],
            &p["changed"][0]["b"]
        ),
        (
            &Value::from("base-files"),
            &Value::from("12.4"),
            &Value::from("12.5")
        )
    );
    assert_eq!(p["changed"].as_array().unwrap().len(), 1);
    // Slot B is sized as slot A is: the root partitions of both slots grew (their verity slots hold either tree).
    assert_eq!(strings(&d["partitions"], "name"), ["root-a", "_empty"]);
    assert_eq!(d["partitions"][0]["what"], serde_json::json!(["size"]));
    assert_eq!(d["partitions"][1]["what"], serde_json::json!(["size"]));

    let o = cairn(&["diff".as_ref(), one.as_os_str(), two.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "~ layer[0].rock".to_string(),
        "+  /opt/big".into(),
        "~  /etc/motd".into(),
        "size 10 B -> 11 B, content".into(),
        "~  base-files  amd64  12.4 -> 12.5".into(),
        "~ root-a  size 16.0 MiB -> 48.0 MiB".into(),
        "~ _empty  size 16.0 MiB -> 48.0 MiB".into(),
        "differ: 1 rock, 5 files, 2 packages, 2 partitions".into(),
    ] {
        assert!(text.contains(&want), "`{want}` missing from:\n{text}");
    }

    // A build against itself: nothing, exit 0.
    let o = cairn(&[
        "diff".as_ref(),
        two.as_os_str(),
        out_two.join("two.manifest.json").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("\nno differences\n"));

    // Disks only: files from the squashfs roots (with the factory /var under /var), contents not compared.
    let (raw_one, raw_two) = (work.path().join("raw-one"), work.path().join("raw-two"));
    build(&p_one, &raw_one, &cache, &["raw"]);
    build(&p_two, &raw_two, &cache, &["raw"]);
    let o = cairn(&[
        "diff".as_ref(),
        raw_one.join("one").as_os_str(),
        raw_two.join("two").as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let d = json(&o, "diff of disks");
    assert_eq!(d["files"]["contents_compared"], false);
    assert_eq!(strings(&d["files"]["added"], "path"), ["/opt/big"]);
    // Sizes differ for each (the files were made so). The factory archive holds the new status, but tar's
    // 512-byte blocks may keep its size: whether it is listed is not this test's point.
    let changed: Vec<String> = strings(&d["files"]["changed"], "path")
        .into_iter()
        .filter(|p| p != "/usr/lib/cairn/factory/var.tar")
        .collect();
    assert_eq!(
        changed,
        [
            "/etc/motd",
            "/opt/x",
            "/usr/lib/cairn/profile.toml",
            "/var/lib/dpkg/status"
        ]
    );
    assert_eq!(strings(&d["packages"]["added"], "name"), ["newpkg"]);
}

#[test]
fn inspect_refuses_a_damaged_output_and_wrong_paths_and_reads_a_qcow2() {
    let rocks = push_rocks("e2e/inspect-bad");
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let cache = work.path().join("cache");
    let p = profile(work.path(), "one", &rocks, &rocks.one, "hello one");
    let out = work.path().join("out");
    build(&p, &out, &cache, &[]);
    let target = out.join("one");

    // One byte of the disk changed: its sha256 no longer matches the report's. Exit 1, naming the file.
    let bad = work.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    for f in ["one.manifest.json", "one.raw", "one.tar", "one.spdx.json"] {
        std::fs::copy(out.join(f), bad.join(f)).expect("copy");
    }
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(bad.join("one.raw"))
            .expect("open");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 3 << 20).expect("read");
        b[0] ^= 0xff;
        f.write_all_at(&b, 3 << 20).expect("write");
    }
    let o = cairn(&["inspect".as_ref(), bad.join("one").as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = stderr(&o);
    assert!(
        e.contains(&format!("{}: sha256 ", bad.join("one.raw").display()))
            && e.contains("does not match the report's")
            && e.contains("damaged or from another build"),
        "{e}"
    );
    // diff says trouble as diff(1) does: 2.
    let o = cairn(&[
        "diff".as_ref(),
        target.as_os_str(),
        bad.join("one").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&bad.join("one.raw").display().to_string()));

    // No such build, a folder, another build's report: exit 2, naming the file, nothing on stdout.
    let o = cairn(&["inspect".as_ref(), out.join("nope").as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("{}: no build there", out.join("nope").display())),
        "{}",
        stderr(&o)
    );
    let o = cairn(&["inspect".as_ref(), out.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("this folder holds {}", target.display())),
        "{}",
        stderr(&o)
    );
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::copy(
        out.join("one.manifest.json"),
        other.join("two.manifest.json"),
    )
    .expect("copy");
    let o = cairn(&["inspect".as_ref(), other.join("two").as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!(
            "{}: the report of the build `one`, not of `two`",
            other.join("two.manifest.json").display()
        )),
        "{}",
        stderr(&o)
    );
    // An output the report lists, gone.
    std::fs::remove_file(bad.join("one.raw")).expect("rm");
    let o = cairn(&["inspect".as_ref(), bad.join("one.tar").as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("{}: missing", bad.join("one.raw").display())),
        "{}",
        stderr(&o)
    );

    // A qcow2-only build reads as its raw twin does, through a temporary conversion; a tar-only one gives packages.
    let qcow = work.path().join("qcow");
    build(&p, &qcow, &cache, &["qcow2"]);
    let q = inspect_json(&qcow.join("one"));
    let raw = inspect_json(&target);
    assert_eq!(q["disk"]["partition_table"], raw["disk"]["partition_table"]);
    assert_eq!(q["disk"]["boot"], raw["disk"]["boot"]);
    assert_eq!(q["packages"]["list"], raw["packages"]["list"]);
    assert_eq!(strings(&q["read"], "format"), ["qcow2"]);
    assert!(
        q["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("temporary raw copy"),
        "{}",
        q["notes"]
    );
    let tar = work.path().join("tar");
    build(&p, &tar, &cache, &["tar"]);
    let t = inspect_json(&tar.join("one"));
    assert_eq!(t["packages"]["list"], raw["packages"]["list"]);
    assert_eq!(strings(&t["read"], "format"), ["tar"]);
    assert!(t.get("disk").is_none());
}

/// `image.slot-size` sets both slots' root partitions (their verity partitions follow from it); a slot too small
/// for the root is refused, exit 2, at the key's position, with nothing written.
#[test]
fn a_slot_size_sets_both_slots_and_one_too_small_for_the_root_is_refused_at_its_place() {
    let rocks = push_rocks("e2e/slots");
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let cache = work.path().join("cache");
    let sized = |dir: &Path, extra: &str| {
        write_profile(
            dir,
            "slots",
            &rocks.base.reference_by_digest,
            &[&rocks.two.reference_by_digest],
            &format!(
                "{extra}[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\"]\nslot-size = \"64M\"\n"
            ),
        )
    };
    let p = sized(&work.path().join("fits"), "");
    let out = work.path().join("out");
    build(&p, &out, &cache, &[]);
    let i = inspect_json(&out.join("slots"));
    let parts: Vec<(String, u64)> = i["disk"]["partition_table"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        parts[1..5],
        [
            ("root-a".to_string(), 64 << 20),
            ("root-a-verity".to_string(), 1 << 20),
            ("_empty".to_string(), 64 << 20),
            ("_empty".to_string(), 1 << 20),
        ],
        "{i}"
    );

    // 70 MiB that squashfs cannot compress, in a 64 MiB slot.
    let dir = work.path().join("small");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("blob"), incompressible(70 << 20)).expect("write");
    let p = sized(&dir, "[[file]]\npath = \"/opt/blob\"\nsource = \"blob\"\n");
    let text = std::fs::read_to_string(&p).expect("profile");
    let line = text
        .lines()
        .position(|l| l.starts_with("slot-size"))
        .expect("slot-size line")
        + 1;
    let out = work.path().join("small-out");
    let o = cairn(&build_args(&p, &out, &cache));

    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}:{line}:13: image.slot-size: a slot of 67108864 bytes cannot hold this root of ",
            p.display()
        )),
        "{err}"
    );
    assert!(!out.join("slots.raw").exists(), "a raw was written");
    assert!(
        !out.join("slots.manifest.json").exists(),
        "a report was written"
    );
}
