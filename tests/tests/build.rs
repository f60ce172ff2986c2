//! `cairn build` and `cairn pin` end to end, against a real registry with images made here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use cairn_e2e::cairn::{assert_ok, build_args, fake_elf, stderr};
use cairn_e2e::image::LongNames;
use cairn_e2e::output::{Item, read_tar, sha256_file as sha256_hex};
use cairn_e2e::{
    Auth, Compression, Image, IndexBuilder, LayerBuilder, MediaTypes, Registry, push_image,
    push_index, push_layer, registry, run_cairn, write_docker_config, write_profile,
};

struct Build {
    out: PathBuf,
    cache: PathBuf,
    output: Output,
}

fn build(profile: &Path, work: &Path, tag: &str, env: &[(&str, &str)]) -> Build {
    let out = work.join(format!("out-{tag}"));
    let cache = work.join(format!("cache-{tag}"));
    build_with(profile, &out, &cache, env)
}

fn build_with(profile: &Path, out: &Path, cache: &Path, env: &[(&str, &str)]) -> Build {
    let output = run_cairn(build_args(profile, out, cache), env);
    Build {
        out: out.to_path_buf(),
        cache: cache.to_path_buf(),
        output,
    }
}

/// The layers that exercise every assembly rule: whiteouts of each kind, hardlinks across layers, long names,
/// xattrs, special files and modes, each layer in another compression.
fn tricky_image() -> Image {
    let l0 = LayerBuilder::new()
        .default_mtime(1_700_000_000)
        .dir("etc", 0o755)
        .file("etc/hostname", 0o644, "base\n")
        .file(
            "etc/machine-id",
            0o444,
            "0123456789abcdef0123456789abcdef\n",
        )
        .dir("gone", 0o755)
        .file("gone/deep", 0o644, "deep")
        .dir("opaque", 0o755)
        .file("opaque/lower", 0o644, "lower")
        .dir("opaque/lowerdir", 0o700)
        .file("opaque/lowerdir/x", 0o644, "x")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .symlink("bin", "usr/bin")
        .file_with_xattrs(
            "usr/bin/ping",
            0o4755,
            "PING",
            &[("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00")],
        )
        .file("usr/bin/replaced-by-dir", 0o644, "file")
        .dir("tmp", 0o1777)
        .file_owned("home-data", 0o2750, 1000, 1001, "owned")
        .fifo("run-fifo")
        .char_device("dev-null", 1, 3)
        .block_device("dev-sda", 8, 0)
        .file_with_xattrs(
            "acl",
            0o644,
            "acl",
            &[
                (
                    "system.posix_acl_access",
                    b"\x02\x00\x00\x00\x01\x00\x06\x00",
                ),
                ("user.note", b"v"),
            ],
        );
    let long_gnu = format!("long/{}", "g".repeat(150));
    let long_pax = format!("long/{}", "p".repeat(180));
    let l1 = LayerBuilder::new()
        .default_mtime(1_700_000_100)
        .whiteout("gone")
        .dir("opaque", 0o750)
        .file("opaque/upper", 0o644, "upper")
        .opaque("opaque")
        .hardlink("bin/ping-link", "usr/bin/ping")
        .dir("usr/bin/replaced-by-dir", 0o755)
        .file("usr/bin/replaced-by-dir/inside", 0o644, "inside")
        .long_names(LongNames::Gnu)
        .file(&long_gnu, 0o644, "gnu");
    let l2 = LayerBuilder::new()
        .default_mtime(1_700_000_200)
        .long_names(LongNames::Pax)
        .file(&long_pax, 0o644, "pax")
        .whiteout("etc/hostname")
        .file("etc/hostname", 0o644, "top\n")
        .file("usr/bin/ping", 0o755, "new ping");
    let l3 = LayerBuilder::new()
        .default_mtime(1_700_000_300)
        .file("zstd-was-here", 0o600, "z");
    Image::builder()
        .layer_from(&l0, Compression::Gzip)
        .layer_from(&l1, Compression::GzipMultiMember)
        .layer_from(&l2, Compression::None)
        .layer_from(&l3, Compression::Zstd)
        .build()
}

fn entry<'a>(items: &'a BTreeMap<String, Item>, path: &str) -> &'a Item {
    items.get(path).unwrap_or_else(|| {
        panic!(
            "{path} missing from the output; it has {:?}",
            items.keys().collect::<Vec<_>>()
        )
    })
}

#[test]
fn assembles_every_layer_rule_deterministically() {
    let registry = registry::shared();
    let pushed = push_image(registry, "e2e/tricky", "v1", &tricky_image());
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(
        work.path(),
        "tricky",
        &pushed.reference_by_digest,
        &[],
        "[[file]]\npath = \"/etc/motd\"\ncontent = \"welcome\\n\"\nmode = \"0640\"\nowner = \"0:4\"\n",
    );
    let first = build(&profile, work.path(), "a", &[]);
    assert_ok(&first.output, "cold build");
    let tar = first.out.join("tricky.tar");
    let (order, items) = read_tar(&tar);

    // Sorted depth-first, the root first, nothing a whiteout names, no whiteout files.
    assert_eq!(order[0], "./");
    let mut sorted = order[1..].to_vec();
    sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    assert_eq!(order[1..], sorted[..], "entries are not in sorted order");
    assert!(
        order.iter().all(|p| !p.contains(".wh.")),
        "a whiteout leaked: {order:?}"
    );
    assert!(!items.contains_key("gone") && !items.contains_key("gone/deep"));

    // Opaque: only the upper layer's children, with the upper layer's directory mode.
    let opaque: Vec<&String> = order.iter().filter(|p| p.starts_with("opaque/")).collect();
    assert_eq!(opaque, ["opaque/upper"]);
    assert_eq!(entry(&items, "opaque").mode, 0o750);

    // A whiteout and a new file of the same name in one layer: the new one.
    assert_eq!(entry(&items, "etc/hostname").data, b"top\n");

    // A directory replacing a file; a file replacing a hardlinked file keeps the other name's old data.
    assert_eq!(entry(&items, "usr/bin/replaced-by-dir").kind, 'd');
    assert_eq!(
        entry(&items, "usr/bin/replaced-by-dir/inside").data,
        b"inside"
    );
    assert_eq!(entry(&items, "usr/bin/ping").data, b"new ping");
    assert_eq!(entry(&items, "usr/bin/ping").mode, 0o755);
    assert!(entry(&items, "usr/bin/ping").xattrs.is_empty());
    let link = entry(&items, "usr/bin/ping-link");
    assert_eq!(
        (link.kind, link.mode, link.data.as_slice()),
        ('f', 0o4755, &b"PING"[..])
    );
    assert_eq!(
        link.xattrs,
        [(
            "security.capability".to_string(),
            b"\x01\x00\x00\x02\x00\x20\x00\x00".to_vec()
        )]
    );

    // Special files, modes and owners.
    assert_eq!(entry(&items, "bin").kind, 'l');
    assert_eq!(entry(&items, "bin").link, "usr/bin");
    assert_eq!(entry(&items, "tmp").mode, 0o1777);
    let owned = entry(&items, "home-data");
    assert_eq!((owned.mode, owned.uid, owned.gid), (0o2750, 1000, 1001));
    assert_eq!(entry(&items, "run-fifo").kind, 'p');
    assert_eq!(entry(&items, "dev-null").kind, 'c');
    assert_eq!(entry(&items, "dev-sda").kind, 'b');
    let acl = entry(&items, "acl");
    assert_eq!(
        acl.xattrs,
        [
            (
                "system.posix_acl_access".to_string(),
                b"\x02\x00\x00\x00\x01\x00\x06\x00".to_vec()
            ),
            ("user.note".to_string(), b"v".to_vec())
        ],
        "xattrs kept, in sorted order"
    );

    // Long names of both styles, and every layer compression.
    assert_eq!(
        entry(&items, &format!("long/{}", "g".repeat(150))).data,
        b"gnu"
    );
    assert_eq!(
        entry(&items, &format!("long/{}", "p".repeat(180))).data,
        b"pax"
    );
    assert_eq!(entry(&items, "zstd-was-here").mode, 0o600);

    // The profile's file and cairn's own; the machine id emptied, its mode kept.
    let motd = entry(&items, "etc/motd");
    assert_eq!(
        (motd.data.as_slice(), motd.mode, motd.uid, motd.gid),
        (&b"welcome\n"[..], 0o640, 0, 4)
    );
    let machine_id = entry(&items, "etc/machine-id");
    assert_eq!((machine_id.data.len(), machine_id.mode), (0, 0o444));
    let agent = entry(&items, "usr/lib/cairn/cairn-agent");
    assert_eq!(agent.mode, 0o755);
    assert_eq!(&agent.data[..4], b"\x7fELF");
    assert_eq!(
        entry(&items, "usr/lib/cairn/profile.toml").data,
        std::fs::read(&profile).expect("profile")
    );
    assert_eq!(
        entry(
            &items,
            "usr/lib/systemd/system/sysinit.target.wants/cairn-agent.service"
        )
        .link,
        "../cairn-agent.service"
    );
    assert!(
        entry(&items, "usr/lib/systemd/system/cairn-agent.service")
            .data
            .starts_with(b"# Installed by cairn build")
    );
    // Health on an update's counted boots: the agent's phases are what boot-complete.target needs.
    for (link, to) in [
        (
            "boot-complete.target.requires/cairn-agent.service",
            "../cairn-agent.service",
        ),
        (
            "boot-complete.target.requires/cairn-agent-network.service",
            "../cairn-agent-network.service",
        ),
        (
            "multi-user.target.wants/cairn-boot-check.service",
            "../cairn-boot-check.service",
        ),
        (
            "timers.target.wants/cairn-boot-deadline.timer",
            "../cairn-boot-deadline.timer",
        ),
    ] {
        assert_eq!(
            entry(&items, &format!("usr/lib/systemd/system/{link}")).link,
            to,
            "{link}"
        );
    }
    assert!(
        String::from_utf8_lossy(&entry(&items, "usr/lib/systemd/system/cairn-agent.service").data)
            .contains(
                "Before=network-pre.target sysinit.target shutdown.target boot-complete.target\n"
            )
    );

    // No wall clock: every mtime is the fixed epoch when SOURCE_DATE_EPOCH is unset.
    assert!(items.values().all(|i| i.mtime == 0), "mtimes not clamped");

    // An empty cache gives the same bytes; so does a warm cache, written afresh.
    let second = build(&profile, work.path(), "b", &[]);
    assert_ok(&second.output, "second cold build");
    assert_eq!(sha256_hex(&tar), sha256_hex(&second.out.join("tricky.tar")));
    std::fs::remove_dir_all(&first.out).expect("remove out");
    let warm = build_with(&profile, &first.out, &first.cache, &[]);
    assert_ok(&warm.output, "warm build");
    assert_eq!(sha256_hex(&tar), sha256_hex(&second.out.join("tricky.tar")));

    // The report names the rock, its digests and the output's digest.
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(first.out.join("tricky.manifest.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["rocks"][0]["reference"], pushed.reference_by_digest);
    assert_eq!(
        report["rocks"][0]["manifest_digest"],
        pushed.manifest_digest
    );
    assert!(report["rocks"][0].get("index_digest").is_none());
    assert_eq!(
        report["rocks"][0]["layers"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(report["outputs"][0]["sha256"], sha256_hex(&tar));
    assert_eq!(
        report["outputs"][0]["size"],
        std::fs::metadata(&tar).expect("tar").len()
    );
    assert_eq!(report["profile"]["sha256"], sha256_hex(&profile));
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let registry = registry::shared();
    let layer = LayerBuilder::new()
        .file("old", 0o644, "o")
        .mtime(100)
        .file("new", 0o644, "n")
        .mtime(2_000_000_000);
    let pushed = push_layer(registry, "e2e/epoch", "v1", &layer, Compression::Gzip);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "epoch", &pushed.reference_by_digest, &[], "");
    let b = build(&profile, work.path(), "a", &[("SOURCE_DATE_EPOCH", "1000")]);
    assert_ok(&b.output, "build");
    let (_, items) = read_tar(&b.out.join("epoch.tar"));
    assert_eq!(entry(&items, "old").mtime, 100);
    assert_eq!(entry(&items, "new").mtime, 1000);
    let bad = build(
        &profile,
        work.path(),
        "c",
        &[("SOURCE_DATE_EPOCH", "yesterday")],
    );
    assert_eq!(bad.output.status.code(), Some(2));
    assert!(
        stderr(&bad.output).contains("SOURCE_DATE_EPOCH=`yesterday` is not a number"),
        "{}",
        stderr(&bad.output)
    );
}

/// The disk tools run with an environment of cairn's own: a `SOURCE_DATE_EPOCH` in the caller's (which mksquashfs
/// refuses beside its own time options) only sets the build's epoch. `SOURCE_DATE_EPOCH=0` gives the bytes of a
/// build without it (the default epoch), another value its own.
#[test]
fn a_raw_build_with_source_date_epoch_set_is_that_epochs_build() {
    let registry = registry::shared();
    // Enough of a bootable root for the disk format (a kernel, its module lists, systemd-boot and systemd-stub,
    // os-release) and something for the factory /var. None of it has to run.
    let layer = cairn_e2e::inspect::bootable_base()
        .file("var/lib/state", 0o644, "factory")
        .mtime(2_000_000_000);
    let pushed = push_layer(registry, "e2e/disk-epoch", "v1", &layer, Compression::Gzip);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(
        work.path(),
        "epochdisk",
        &pushed.reference_by_digest,
        &[],
        "[image]\nformats = [\"raw\"]\n",
    );
    let raw = |tag: &str, epoch: &str| {
        let b = build(&profile, work.path(), tag, &[("SOURCE_DATE_EPOCH", epoch)]);
        assert_ok(
            &b.output,
            &format!("raw build with SOURCE_DATE_EPOCH={epoch:?}"),
        );
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(b.out.join("epochdisk.manifest.json")).expect("report"),
        )
        .expect("json");
        let sha256 = sha256_hex(&b.out.join("epochdisk.raw"));
        assert_eq!(report["outputs"][0]["sha256"], sha256.as_str());
        (report["source_date_epoch"].as_u64().expect("epoch"), sha256)
    };
    // Empty is unset to cairn: the default epoch, 0.
    let (default_epoch, default_bytes) = raw("unset", "");
    assert_eq!(default_epoch, 0);
    let (zero_epoch, zero_bytes) = raw("zero", "0");
    assert_eq!(zero_epoch, 0);
    assert_eq!(
        zero_bytes, default_bytes,
        "SOURCE_DATE_EPOCH=0 is the default"
    );
    let (epoch, bytes) = raw("later", "1000000000");
    assert_eq!(epoch, 1_000_000_000);
    assert_ne!(bytes, default_bytes, "the epoch reaches the image");
}

#[test]
fn layers_from_several_rocks_merge_in_order() {
    let registry = registry::shared();
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/a", 0o644, "base")
        .file("etc/b", 0o644, "b");
    let top = LayerBuilder::new()
        .file("etc/a", 0o600, "top")
        .whiteout("etc/b");
    let base = push_layer(registry, "e2e/base", "v1", &base, Compression::Gzip);
    let top = push_image(
        registry,
        "e2e/top",
        "v1",
        &Image::builder()
            .media_types(MediaTypes::DockerV2)
            .layer_from(&top, Compression::Gzip)
            .build(),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(
        work.path(),
        "merged",
        &base.reference_by_digest,
        &[&top.reference_by_digest],
        "",
    );
    let b = build(&profile, work.path(), "a", &[]);
    assert_ok(&b.output, "build");
    let (_, items) = read_tar(&b.out.join("merged.tar"));
    assert_eq!(
        (
            entry(&items, "etc/a").data.as_slice(),
            entry(&items, "etc/a").mode
        ),
        (&b"top"[..], 0o600)
    );
    assert!(!items.contains_key("etc/b"));
}

#[test]
fn multi_arch_index_resolves_the_profile_arch() {
    let registry = registry::shared();
    for media in [MediaTypes::Oci, MediaTypes::DockerV2] {
        let amd = Image::builder()
            .arch("amd64")
            .media_types(media)
            .layer_from(
                &LayerBuilder::new().file("arch", 0o644, "amd64"),
                Compression::Gzip,
            )
            .build();
        let arm = Image::builder()
            .arch("arm64")
            .media_types(media)
            .layer_from(
                &LayerBuilder::new().file("arch", 0o644, "arm64"),
                Compression::Gzip,
            )
            .build();
        let mut index = IndexBuilder::new(media)
            .image(amd.clone())
            .image(arm.clone());
        if media == MediaTypes::Oci {
            index = index.attestation_for(&amd);
        }
        let pushed = push_index(
            registry,
            "e2e/multi",
            &format!("{media:?}").to_lowercase(),
            &index.build(),
        );
        let work = tempfile::tempdir().expect("tempdir");
        let profile = write_profile(work.path(), "multi", &pushed.reference_by_digest, &[], "");
        let b = build(&profile, work.path(), "amd", &[]);
        assert_ok(&b.output, "amd64 build");
        let (_, items) = read_tar(&b.out.join("multi.tar"));
        assert_eq!(entry(&items, "arch").data, b"amd64", "{media:?}");
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(b.out.join("multi.manifest.json")).expect("report"),
        )
        .expect("json");
        assert_eq!(
            report["rocks"][0]["index_digest"].as_str(),
            pushed.index_digest.as_deref()
        );
        assert_eq!(report["rocks"][0]["manifest_digest"], amd.manifest_digest);

        // arm64 picks the arm64 image (the agent given must then be an arm64 static ELF).
        let arm_agent = work.path().join("agent-arm64");
        std::fs::write(&arm_agent, fake_elf(183)).expect("write agent");
        let arm_profile = work.path().join("multi-arm.toml");
        std::fs::write(
            &arm_profile,
            std::fs::read_to_string(&profile)
                .expect("read")
                .replace("\"amd64\"", "\"arm64\""),
        )
        .expect("write");
        let out = work.path().join("out-arm");
        let o = run_cairn(
            [
                "build".as_ref(),
                arm_profile.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
                "--agent".as_ref(),
                arm_agent.as_os_str(),
                "--cache".as_ref(),
                b.cache.as_os_str(),
            ],
            &[],
        );
        assert_ok(&o, "arm64 build");
        let (_, items) = read_tar(&out.join("multi.tar"));
        assert_eq!(entry(&items, "arch").data, b"arm64");
        // The amd64 agent is refused for an arm64 profile, before anything is written.
        let out2 = work.path().join("out-arm-refused");
        let o = run_cairn(
            [
                "build".as_ref(),
                arm_profile.as_os_str(),
                "--out".as_ref(),
                out2.as_os_str(),
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("no usable cairn-agent found"),
            "{}",
            stderr(&o)
        );
        assert!(!out2.exists());
    }
}

#[test]
fn an_index_without_the_arch_is_a_clear_error() {
    let registry = registry::shared();
    let arm = Image::builder()
        .arch("arm64")
        .layer_from(
            &LayerBuilder::new().file("a", 0o644, "a"),
            Compression::Gzip,
        )
        .build();
    let pushed = push_index(
        registry,
        "e2e/armonly",
        "v1",
        &IndexBuilder::new(MediaTypes::Oci).image(arm).build(),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "armonly", &pushed.reference_by_digest, &[], "");
    let b = build(&profile, work.path(), "a", &[]);
    assert_eq!(b.output.status.code(), Some(1));
    assert!(
        stderr(&b.output).contains("the index has no linux/amd64 image (it has: linux/arm64/v8)"),
        "{}",
        stderr(&b.output)
    );
    assert!(!b.out.join("armonly.tar").exists());
}

#[test]
fn a_config_without_architecture_or_os_is_refused() {
    let registry = registry::shared();
    let base = push_image(
        registry,
        "e2e/platform-base",
        "v1",
        &Image::simple("amd64", "base"),
    );
    for (name, omitted, missing) in [
        ("noarch", &["architecture"][..], "has no architecture:"),
        ("noos", &["os"][..], "has no os:"),
        (
            "neither",
            &["architecture", "os"][..],
            "has no architecture and no os:",
        ),
    ] {
        let mut image = Image::builder().layer_from(
            &LayerBuilder::new().file("f", 0o644, name),
            Compression::Gzip,
        );
        for field in omitted {
            image = image.omit_config_field(field);
        }
        let image = image.build();
        let config: serde_json::Value = serde_json::from_slice(&image.config).expect("config");
        for field in omitted {
            assert!(
                config.get(field).is_none(),
                "{name}: {field} still in the config"
            );
        }
        let pushed = push_image(registry, &format!("e2e/platform-{name}"), "v1", &image);
        let work = tempfile::tempdir().expect("tempdir");
        let profile = write_profile(
            work.path(),
            "platform",
            &base.reference_by_digest,
            &[&pushed.reference_by_digest],
            "",
        );
        let b = build(&profile, work.path(), "a", &[]);
        let err = stderr(&b.output);
        assert_eq!(b.output.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("layer[0].rock"), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "the image config {} {missing}",
                image.config_digest
            )),
            "{name}: {err}"
        );
        assert!(!b.out.join("platform.tar").exists(), "{name}");
    }
}

#[test]
fn symlink_targets_are_written_as_the_layer_has_them() {
    let registry = registry::shared();
    let long = format!("a//{}/./b/", "t".repeat(120));
    let targets = [
        ("to-root", "/".to_string()),
        ("double-slash", "a//b".to_string()),
        ("dot", "a/./b".to_string()),
        ("up", "../x".to_string()),
        ("trailing", "usr/".to_string()),
        ("long", long),
        ("via", "phantom/../real".to_string()),
    ];
    let mut lower = LayerBuilder::new().dir("real", 0o755);
    for (path, target) in &targets {
        lower = lower.symlink(path, target);
    }
    // Its parent resolves through the symlink, and so through `phantom/..`: phantom is missing.
    let upper = LayerBuilder::new().file("via/inside", 0o644, "inside");
    let image = Image::builder()
        .layer_from(&lower, Compression::Gzip)
        .layer_from(&upper, Compression::Gzip)
        .build();
    let pushed = push_image(registry, "e2e/symlinks", "v1", &image);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(
        work.path(),
        "symlinks",
        &pushed.reference_by_digest,
        &[],
        "",
    );
    let b = build(&profile, work.path(), "a", &[]);
    assert_ok(&b.output, "build");
    let (_, items) = read_tar(&b.out.join("symlinks.tar"));
    for (path, target) in &targets {
        let item = entry(&items, path);
        assert_eq!(item.kind, 'l', "{path}");
        assert_eq!(&item.link, target, "{path}");
    }
    assert_eq!(entry(&items, "real/inside").data, b"inside");
    assert!(
        !items.keys().any(|k| k.contains("phantom")),
        "a phantom directory was made: {:?}",
        items.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_whiteout_below_a_file_is_ignored() {
    let registry = registry::shared();
    let lower = LayerBuilder::new()
        .file("f", 0o644, "kept")
        .file("x", 0o644, "x");
    let upper = LayerBuilder::new().whiteout("f/x").opaque("f/g");
    let image = Image::builder()
        .layer_from(&lower, Compression::Gzip)
        .layer_from(&upper, Compression::Gzip)
        .build();
    let pushed = push_image(registry, "e2e/whiteout-under-file", "v1", &image);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "wfile", &pushed.reference_by_digest, &[], "");
    let b = build(&profile, work.path(), "a", &[]);
    assert_ok(&b.output, "build");
    let (order, items) = read_tar(&b.out.join("wfile.tar"));
    assert_eq!(entry(&items, "f").kind, 'f');
    assert_eq!(entry(&items, "f").data, b"kept");
    assert_eq!(entry(&items, "x").data, b"x");
    assert!(
        order
            .iter()
            .all(|p| !p.contains(".wh.") && !p.starts_with("f/")),
        "{order:?}"
    );
}

#[test]
fn a_corrupted_blob_fails_and_leaves_the_cache_clean() {
    let mut registry = Registry::start(Auth::Anonymous);
    let layer = LayerBuilder::new().file("payload", 0o644, vec![7u8; 200_000]);
    let pushed = push_layer(&registry, "e2e/corrupt", "v1", &layer, Compression::Gzip);
    let layer_digest = pushed.layer_digests[0].clone();
    registry.corrupt_blob(&layer_digest);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "corrupt", &pushed.reference_by_digest, &[], "");
    let b = build(&profile, work.path(), "a", &[]);
    assert_eq!(b.output.status.code(), Some(1), "{}", stderr(&b.output));
    let err = stderr(&b.output);
    assert!(
        err.contains(&format!("blob {layer_digest}")) && err.contains("digest mismatch"),
        "{err}"
    );
    let hex = layer_digest.trim_start_matches("sha256:");
    assert!(
        !b.cache.join("blobs/sha256").join(hex).exists(),
        "the bad blob entered the cache"
    );
    assert_eq!(
        std::fs::read_dir(b.cache.join("tmp")).expect("tmp").count(),
        0,
        "temp files left behind"
    );
    assert!(!b.out.join("corrupt.tar").exists());
    assert!(!b.out.join("corrupt.manifest.json").exists());
    registry.stop();
}

#[test]
fn a_lying_config_is_caught_by_the_diff_id() {
    let registry = registry::shared();
    let layer = LayerBuilder::new().file("f", 0o644, "f");
    let image = Image::builder()
        .layer_from(&layer, Compression::Gzip)
        .diff_ids(vec![format!("sha256:{}", "ab".repeat(32))])
        .build();
    let pushed = push_image(registry, "e2e/liar", "v1", &image);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "liar", &pushed.reference_by_digest, &[], "");
    let b = build(&profile, work.path(), "a", &[]);
    assert_eq!(b.output.status.code(), Some(1));
    assert!(
        stderr(&b.output).contains("the image config says sha256:abab"),
        "{}",
        stderr(&b.output)
    );
    assert!(
        std::fs::read_dir(b.cache.join("layers/v1"))
            .expect("layers")
            .next()
            .is_none(),
        "an unverified layer was kept"
    );
}

#[test]
fn escaping_paths_are_refused() {
    let registry = registry::shared();
    for (name, layer, expect) in [
        (
            "dotdot",
            LayerBuilder::new().file("../evil", 0o644, "x"),
            "`../evil` has a .. component: it could escape the root",
        ),
        (
            "hardlink",
            LayerBuilder::new()
                .file("ok", 0o644, "x")
                .hardlink("link", "../../etc/passwd"),
            "hardlink `link` → `../../etc/passwd` has a .. component",
        ),
    ] {
        let pushed = push_layer(
            registry,
            &format!("e2e/escape-{name}"),
            "v1",
            &layer,
            Compression::Gzip,
        );
        let work = tempfile::tempdir().expect("tempdir");
        let profile = write_profile(work.path(), "escape", &pushed.reference_by_digest, &[], "");
        let b = build(&profile, work.path(), "a", &[]);
        assert_eq!(b.output.status.code(), Some(1), "{name}");
        assert!(
            stderr(&b.output).contains(expect),
            "{name}: {}",
            stderr(&b.output)
        );
        assert!(!b.out.join("escape.tar").exists());
    }
}

#[test]
fn a_warm_build_needs_no_registry() {
    let mut registry = Registry::start(Auth::Anonymous);
    let layer = LayerBuilder::new().file("f", 0o644, "offline");
    let pushed = push_image(
        &registry,
        "e2e/offline",
        "v1",
        &Image::builder()
            .layer_from(&layer, Compression::Zstd)
            .build(),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "offline", &pushed.reference_by_digest, &[], "");
    let cold = build(&profile, work.path(), "a", &[]);
    assert_ok(&cold.output, "cold build");
    let cold_sha = sha256_hex(&cold.out.join("offline.tar"));
    let requests = registry.request_count();
    assert!(requests > 0);
    registry.stop();
    std::fs::remove_dir_all(&cold.out).expect("remove out");
    let warm = build_with(&profile, &cold.out, &cold.cache, &[]);
    assert_ok(&warm.output, "warm build with the registry stopped");
    assert_eq!(sha256_hex(&cold.out.join("offline.tar")), cold_sha);
    // And with the registry back, a warm build asks it nothing.
    registry.restart();
    let before = registry.request_count();
    let again = build_with(&profile, &cold.out, &cold.cache, &[]);
    assert_ok(&again.output, "warm build");
    assert_eq!(
        registry.request_count(),
        before,
        "a cached build made requests"
    );
}

#[test]
fn basic_and_token_auth_use_the_docker_config() {
    for auth in [Auth::basic("alice", "s3cret"), Auth::token("bob", "t0ken")] {
        let registry = Registry::start(auth);
        let layer = LayerBuilder::new().file("f", 0o644, "private");
        let pushed = push_layer(&registry, "e2e/private", "v1", &layer, Compression::Gzip);
        let work = tempfile::tempdir().expect("tempdir");
        let profile = write_profile(work.path(), "private", &pushed.reference_by_digest, &[], "");

        // No credentials: refused, nothing written.
        let empty = work.path().join("no-docker-config");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let refused = build(
            &profile,
            work.path(),
            "anon",
            &[("DOCKER_CONFIG", empty.to_str().expect("utf-8"))],
        );
        assert_eq!(
            refused.output.status.code(),
            Some(1),
            "{:?}",
            registry.auth()
        );
        assert!(
            stderr(&refused.output).contains(&registry.addr()),
            "{}",
            stderr(&refused.output)
        );
        assert!(!refused.out.join("private.tar").exists());

        let config = write_docker_config(&work.path().join("docker"), &[&registry]);
        let ok = build(
            &profile,
            work.path(),
            "auth",
            &[("DOCKER_CONFIG", config.to_str().expect("utf-8"))],
        );
        assert_ok(&ok.output, &format!("{:?} build", registry.auth()));
        let (_, items) = read_tar(&ok.out.join("private.tar"));
        assert_eq!(entry(&items, "f").data, b"private");
        if registry.token_issuer().is_some() {
            assert!(registry.tokens_issued() >= 1, "no token was issued");
        }
    }
}

#[test]
fn pin_rewrites_digests_and_keeps_the_layout() {
    let registry = registry::shared();
    let one = push_image(
        registry,
        "e2e/pin-one",
        "stable",
        &Image::simple("amd64", "one"),
    );
    let amd = Image::simple("amd64", "multi");
    let arm = Image::simple("arm64", "multi");
    let multi = push_index(
        registry,
        "e2e/pin-multi",
        "v2",
        &IndexBuilder::new(MediaTypes::Oci)
            .image(amd)
            .image(arm)
            .build(),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let path = work.path().join("pin.toml");
    let stale = format!("sha256:{}", "0".repeat(64));
    let text = format!(
        "# a comment that stays\nschema = 1\nname = \"pin\"\nversion = \"1\"\narch = \"amd64\"\n\n[base]\nrock = \"{}/e2e/pin-one:stable\"   # trailing comment\n\n[[layer]]\n# before the layer\nrock = '{}/e2e/pin-multi:v2@{stale}'\n",
        registry.addr(),
        registry.addr()
    );
    std::fs::write(&path, &text).expect("write");
    let o = run_cairn(["validate".as_ref(), path.as_os_str()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(":8:8: `base.rock`:") && stderr(&o).contains("pin it: cairn pin"),
        "{}",
        stderr(&o)
    );

    let o = run_cairn(["pin".as_ref(), path.as_os_str()], &[]);
    assert_ok(&o, "pin");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("-> {}", one.reference_by_digest)),
        "{stdout}"
    );
    let pinned = std::fs::read_to_string(&path).expect("read");
    let expected = text
        .replace(
            "e2e/pin-one:stable\"",
            &format!("e2e/pin-one:stable@{}\"", one.manifest_digest),
        )
        .replace(
            &format!("'{}/e2e/pin-multi:v2@{stale}'", registry.addr()),
            &format!(
                "\"{}/e2e/pin-multi:v2@{}\"",
                registry.addr(),
                multi.index_digest.clone().expect("index")
            ),
        );
    assert_eq!(pinned, expected, "only the digests change");
    let o = run_cairn(["validate".as_ref(), path.as_os_str()], &[]);
    assert_ok(&o, "validate after pin");
    // Pinning again changes nothing.
    let o = run_cairn(["pin".as_ref(), path.as_os_str()], &[]);
    assert_ok(&o, "pin again");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), expected);
    assert!(String::from_utf8_lossy(&o.stdout).contains("base.rock: unchanged"));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let registry = registry::shared();
    let pushed = push_image(registry, "e2e/bad", "v1", &Image::simple("amd64", "bad"));
    let work = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "unpinned",
            format!("{}/e2e/bad:v1", registry.addr()),
            "",
            ":7:8: `base.rock`: ",
            "pin it: cairn pin",
        ),
        (
            "unknown",
            pushed.reference_by_digest.clone(),
            "[image]\nformats = [\"tar\"]\ncompress = true\n",
            ":11:1: `image.compress`: ",
            "unknown field `compress`",
        ),
        (
            "relative",
            pushed.reference_by_digest.clone(),
            "[[file]]\npath = \"etc/x\"\ncontent = \"\"\n",
            ":10:8: `file[0].path`: ",
            "not an absolute path",
        ),
        (
            "source",
            pushed.reference_by_digest.clone(),
            "[[file]]\npath = \"/etc/x\"\nsource = \"../../etc/passwd\"\n",
            ":11:10: `file[0].source`: ",
            "outside the profile's folder",
        ),
    ];
    for (name, rock, extra, position, message) in cases {
        let profile = write_profile(work.path(), name, &rock, &[], extra);
        let b = build(&profile, work.path(), name, &[]);
        let err = stderr(&b.output);
        assert_eq!(b.output.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{}{position}", profile.display())),
            "{name}: {err}"
        );
        assert!(err.contains(message), "{name}: {err}");
        assert!(!b.out.exists(), "{name}: output folder created");
        let v = run_cairn(["validate".as_ref(), profile.as_os_str()], &[]);
        assert_eq!(v.status.code(), Some(2), "{name}");
    }
    let o = run_cairn(["build", "nothing.toml", "--format", "vhd"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown format `vhd`"),
        "{}",
        stderr(&o)
    );
}

/// A rock with systemd's unit files and a time zone, for the `[system]` settings the builder bakes.
fn systemd_rock() -> LayerBuilder {
    let mut layer = LayerBuilder::new()
        .file("usr/share/zoneinfo/Europe/Paris", 0o644, "TZif2")
        .file("etc/localtime", 0o644, "TZif2 of the rock")
        .symlink("lib", "usr/lib");
    for (name, text) in [
        (
            "containerd.service",
            "[Unit]\nDescription=containerd\n[Install]\nWantedBy=multi-user.target\n",
        ),
        (
            "ssh.service",
            "[Unit]\nDescription=ssh\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
        ),
        (
            "systemd-networkd.service",
            "[Unit]\nDescription=networkd\n[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket systemd-networkd-wait-online.service\nAlias=dbus-org.freedesktop.network1.service\n",
        ),
        (
            "systemd-networkd.socket",
            "[Install]\nWantedBy=sockets.target\n",
        ),
        (
            "systemd-networkd-wait-online.service",
            "[Install]\nWantedBy=network-online.target\n",
        ),
        ("static.service", "[Service]\nExecStart=/bin/true\n"),
    ] {
        layer = layer.file(&format!("usr/lib/systemd/system/{name}"), 0o644, text);
    }
    // ssh is enabled by the rock itself (a vendor link) and by an /etc link: disabling removes one, masks it.
    layer
        .symlink(
            "usr/lib/systemd/system/multi-user.target.wants/ssh.service",
            "../ssh.service",
        )
        .symlink(
            "etc/systemd/system/multi-user.target.wants/ssh.service",
            "/lib/systemd/system/ssh.service",
        )
        .symlink(
            "etc/systemd/system/sshd.service",
            "/lib/systemd/system/ssh.service",
        )
}

#[test]
fn system_settings_are_baked_into_the_image() {
    let registry = registry::shared();
    let rock = push_layer(
        registry,
        "e2e/systemd",
        "v1",
        &systemd_rock(),
        Compression::Gzip,
    );
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(
        work.path(),
        "baked",
        &rock.reference_by_digest,
        &[],
        "[system]\ntimezone = \"Europe/Paris\"\nsysctl = { \"net.ipv4.ip_forward\" = \"1\", \"vm.swappiness\" = \"10\" }\nmodules = [\"overlay\", \"br_netfilter\"]\nservices = { enable = [\"containerd\"], disable = [\"ssh\"] }\n",
    );
    let b = build(&profile, work.path(), "a", &[]);
    assert_ok(&b.output, "build");
    let (_, items) = read_tar(&b.out.join("baked.tar"));
    let link = |p: &str| {
        let e = entry(&items, p);
        assert_eq!(e.kind, 'l', "{p} is not a symlink");
        e.link.clone()
    };
    let text = |p: &str| String::from_utf8(entry(&items, p).data.clone()).expect("utf-8");
    assert_eq!(link("etc/localtime"), "/usr/share/zoneinfo/Europe/Paris");
    assert_eq!(text("etc/timezone"), "Europe/Paris\n");
    assert!(
        text("etc/sysctl.d/90-cairn.conf")
            .ends_with("net.ipv4.ip_forward = 1\nvm.swappiness = 10\n"),
        "{}",
        text("etc/sysctl.d/90-cairn.conf")
    );
    assert!(text("etc/modules-load.d/cairn.conf").ends_with("overlay\nbr_netfilter\n"));
    for p in [
        "etc/sysctl.d/90-cairn.conf",
        "etc/modules-load.d/cairn.conf",
        "etc/timezone",
    ] {
        let e = entry(&items, p);
        assert_eq!((e.mode, e.uid, e.gid), (0o644, 0, 0), "{p}");
    }
    // Links as `systemctl enable` makes them, Also= and Alias= followed.
    for (path, to) in [
        (
            "etc/systemd/system/multi-user.target.wants/containerd.service",
            "/usr/lib/systemd/system/containerd.service",
        ),
        (
            "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            "/usr/lib/systemd/system/systemd-networkd.service",
        ),
        (
            "etc/systemd/system/dbus-org.freedesktop.network1.service",
            "/usr/lib/systemd/system/systemd-networkd.service",
        ),
        (
            "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
            "/usr/lib/systemd/system/systemd-networkd.socket",
        ),
        (
            "etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
            "/usr/lib/systemd/system/systemd-networkd-wait-online.service",
        ),
        // Still wanted by the rock's own link: disabling masks it.
        ("etc/systemd/system/ssh.service", "/dev/null"),
    ] {
        assert_eq!(link(path), to, "{path}");
    }
    assert!(!items.contains_key("etc/systemd/system/multi-user.target.wants/ssh.service"));
    assert!(!items.contains_key("etc/systemd/system/sshd.service"));
    assert!(text("etc/systemd/network/80-cairn-dhcp.network").contains("[Match]\nType=ether\n"));

    // The report lists each baked path with what it is for.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.out.join("baked.manifest.json")).expect("report"))
            .expect("json");
    let baked: BTreeMap<String, String> = report["system"]["files"]
        .as_array()
        .expect("system.files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or("").to_string(),
                f["what"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (path, what) in [
        ("/etc/localtime", "timezone"),
        ("/etc/sysctl.d/90-cairn.conf", "sysctl"),
        ("/etc/modules-load.d/cairn.conf", "modules"),
        ("/etc/systemd/network/80-cairn-dhcp.network", "network"),
        (
            "/etc/systemd/system/multi-user.target.wants/containerd.service",
            "enable",
        ),
        ("/etc/systemd/system/ssh.service", "mask"),
        (
            "/etc/systemd/system/multi-user.target.wants/ssh.service",
            "disable",
        ),
    ] {
        assert_eq!(
            baked.get(path).map(String::as_str),
            Some(what),
            "{path}: {baked:?}"
        );
    }
    assert!(report["system"].get("network_note").is_none());

    // What the image cannot honour fails the build, naming the key, and writes nothing.
    for (extra, message) in [
        (
            "[system]\ntimezone = \"Mars/Olympus\"\n",
            "system.timezone Mars/Olympus: /usr/share/zoneinfo/Mars/Olympus does not exist in the image",
        ),
        (
            "[system]\nservices = { enable = [\"nope\"] }\n",
            "system.services: unit nope.service not found",
        ),
        (
            "[system]\nservices = { enable = [\"static\"] }\n",
            "system.services: static.service has no [Install] section",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = write_profile(dir.path(), "bad", &rock.reference_by_digest, &[], extra);
        let b = build(&profile, dir.path(), "bad", &[]);
        assert_eq!(b.output.status.code(), Some(1), "{}", stderr(&b.output));
        assert!(stderr(&b.output).contains(message), "{}", stderr(&b.output));
        assert!(!b.out.join("bad.tar").exists());
    }
}

#[test]
fn a_failed_build_leaves_every_previous_output_and_its_report() {
    let registry = registry::shared();
    let rock = |tag: &str, content: &str| {
        let layer = LayerBuilder::new().file("etc/version", 0o644, content);
        push_layer(
            registry,
            "e2e/outputs-as-a-set",
            tag,
            &layer,
            Compression::Gzip,
        )
    };
    let first = rock("v1", "1\n");
    // Another root, and no kernel: its tar can be written, its raw disk cannot.
    let second = rock("v2", "2\n");
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    let profile = write_profile(work.path(), "set", &first.reference_by_digest, &[], "");
    assert_ok(
        &build_with(&profile, &out, &cache, &[]).output,
        "first build",
    );
    let listing = |dir: &Path| {
        let mut names: Vec<(String, String)> = std::fs::read_dir(dir)
            .expect("out")
            .map(|e| {
                let p = e.expect("entry").path();
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, sha256_hex(&p))
            })
            .collect();
        names.sort();
        names
    };
    let before = listing(&out);
    assert_eq!(
        before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["set.manifest.json", "set.spdx.json", "set.tar"]
    );

    let profile = write_profile(work.path(), "set", &second.reference_by_digest, &[], "");
    let mut args = build_args(&profile, &out, &cache);
    args.extend(["--format", "tar", "--format", "raw"].map(std::ffi::OsStr::new));
    let failed = run_cairn(args, &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    // The new tar was written before the raw step failed: it must not have replaced the old one, nor the report,
    // and nothing of the failed build is left in the folder.
    assert_eq!(listing(&out), before, "{}", stderr(&failed));
}

#[test]
fn more_layers_than_one_root_takes_are_refused_before_any_is_pulled() {
    let registry = registry::shared();
    let mut image = Image::builder();
    for i in 0..129 {
        let layer = LayerBuilder::new().file(&format!("f{i}"), 0o644, format!("{i}\n"));
        image = image.layer_from(&layer, Compression::Gzip);
    }
    let pushed = push_image(registry, "e2e/many-layers", "v1", &image.build());
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "many", &pushed.reference_by_digest, &[], "");
    let b = build(&profile, work.path(), "a", &[]);
    assert_eq!(b.output.status.code(), Some(1), "{}", stderr(&b.output));
    let err = stderr(&b.output);
    assert!(
        err.contains("the profile's rocks have 129 layers together; cairn merges at most 128"),
        "{err}"
    );
    // Refused before any layer was fetched: the cache holds the manifest and the config only.
    let blobs = std::fs::read_dir(b.cache.join("blobs/sha256"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 2, "{err}");
}

#[test]
fn pin_check_and_dry_run_change_nothing_and_check_fails_when_stale() {
    let registry = registry::shared();
    let one = push_image(
        registry,
        "e2e/pin-check",
        "stable",
        &Image::simple("amd64", "check"),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let path = work.path().join("check.toml");
    let stale = format!(
        "{}/e2e/pin-check:stable@sha256:{}",
        registry.addr(),
        "1".repeat(64)
    );
    let text = format!(
        "schema = 1\nname = \"check\"\nversion = \"1\"\narch = \"amd64\"\n\n[base]\nrock = \"{stale}\"\n"
    );
    std::fs::write(&path, &text).expect("write");
    for flag in ["--dry-run", "--check"] {
        let o = run_cairn(["pin".as_ref(), path.as_os_str(), flag.as_ref()], &[]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            out.contains(&format!("base.rock: would change {stale}"))
                && out.contains(&format!("-> {}", one.reference_by_digest)),
            "{flag}: {out}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            text,
            "{flag} wrote"
        );
        let want = if flag == "--check" { 1 } else { 0 };
        assert_eq!(o.status.code(), Some(want), "{flag}: {}", stderr(&o));
    }
    assert!(
        stderr(&run_cairn(
            ["pin".as_ref(), path.as_os_str(), "--check".as_ref()],
            &[]
        ))
        .contains("1 pin(s) stale: run `cairn pin")
    );
    assert_ok(&run_cairn(["pin".as_ref(), path.as_os_str()], &[]), "pin");
    let o = run_cairn(["pin".as_ref(), path.as_os_str(), "--check".as_ref()], &[]);
    assert_ok(&o, "check after pin");
}

#[test]
fn a_placeholder_digest_is_a_warning_to_validate_and_bad_input_to_build() {
    let work = tempfile::tempdir().expect("tempdir");
    // Nothing listens there: a build that reached the network would fail with exit 1, not 2.
    let rock = format!(
        "127.0.0.1:9/cairn/node-base:bookworm@sha256:{}",
        "0".repeat(64)
    );
    let profile = write_profile(work.path(), "placeholder", &rock, &[], "");
    let v = run_cairn(["validate".as_ref(), profile.as_os_str()], &[]);
    assert_ok(&v, "validate");
    assert!(
        stderr(&v).contains(&format!(
            "warning: {}:7:8: base.rock: the all-zero placeholder digest: run `cairn pin",
            profile.display()
        )),
        "{}",
        stderr(&v)
    );
    let b = build(&profile, work.path(), "placeholder", &[]);
    assert_eq!(b.output.status.code(), Some(2), "{}", stderr(&b.output));
    assert!(
        stderr(&b.output).contains("base.rock: the all-zero placeholder digest names no rock"),
        "{}",
        stderr(&b.output)
    );
    assert!(!b.out.exists(), "output folder created");
}

#[test]
fn an_unusable_out_folder_is_bad_input_found_before_the_network() {
    let work = tempfile::tempdir().expect("tempdir");
    let rock = format!(
        "127.0.0.1:9/cairn/node-base:bookworm@sha256:{}",
        "1".repeat(64)
    );
    let profile = write_profile(work.path(), "out", &rock, &[], "");
    let file = work.path().join("a-file");
    std::fs::write(&file, "not a folder").expect("write");
    let b = build_with(&profile, &file, &work.path().join("cache"), &[]);
    assert_eq!(b.output.status.code(), Some(2), "{}", stderr(&b.output));
    assert!(
        stderr(&b.output).contains(&format!("creating output folder {}", file.display())),
        "{}",
        stderr(&b.output)
    );
}

#[test]
fn a_docker_config_that_cannot_be_used_is_a_warning_naming_it() {
    let registry = registry::shared();
    let layer = LayerBuilder::new().file("f", 0o644, "anonymous");
    let pushed = push_layer(
        registry,
        "e2e/broken-config",
        "v1",
        &layer,
        Compression::Gzip,
    );
    let work = tempfile::tempdir().expect("tempdir");
    let docker = work.path().join("docker");
    std::fs::create_dir_all(&docker).expect("mkdir");
    std::fs::write(docker.join("config.json"), "{ \"auths\": ").expect("write");
    let profile = write_profile(work.path(), "broken", &pushed.reference_by_digest, &[], "");
    let docker = docker.to_str().expect("utf-8");
    let b = build(&profile, work.path(), "a", &[("DOCKER_CONFIG", docker)]);
    assert_ok(&b.output, "an anonymous registry still serves the build");
    let err = stderr(&b.output);
    let warning = format!(
        "{docker}/config.json: cannot be used for {}",
        registry.addr()
    );
    assert_eq!(err.matches(&warning).count(), 1, "{err}");
    assert!(err.contains("pulling anonymously"), "{err}");
}

#[test]
fn quiet_verbose_and_color_shape_what_goes_to_stderr() {
    let registry = registry::shared();
    let layer = LayerBuilder::new().file("f", 0o644, "loud");
    let pushed = push_layer(registry, "e2e/verbosity", "v1", &layer, Compression::Gzip);
    let work = tempfile::tempdir().expect("tempdir");
    let profile = write_profile(work.path(), "v", &pushed.reference_by_digest, &[], "");
    let run = |flags: &[&str], env: &[(&str, &str)]| {
        let out = work.path().join("out");
        let cache = work.path().join("cache");
        let mut args = build_args(&profile, &out, &cache);
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        let o = run_cairn(args, env);
        assert_ok(&o, &format!("{flags:?}"));
        stderr(&o)
    };
    let normal = run(&[], &[]);
    assert!(
        normal.contains("INFO") && !normal.contains("DEBUG"),
        "{normal}"
    );
    assert!(
        !normal.contains('\u{1b}'),
        "colour off a terminal: {normal}"
    );
    let quiet = run(&["-q"], &[]);
    assert!(!quiet.contains("INFO"), "{quiet}");
    let verbose = run(&["-v"], &[]);
    assert!(verbose.contains("DEBUG"), "{verbose}");
    let always = run(&["--color", "always"], &[("NO_COLOR", "1")]);
    assert!(always.contains("\u{1b}["), "asked for colour: {always}");
    let never = run(&["--color", "never"], &[]);
    assert!(!never.contains('\u{1b}'), "{never}");
}

/// The Secure Boot key three ways give one image: a PEM file, the same key in a PKCS#11 token (SoftHSM, through
/// OpenSSL's pkcs11 engine, as an HSM is used) and a signing command (as a KMS is). A wrong key, a token that
/// refuses (a wrong PIN) and a half-given option are bad input: exit 2, naming it, nothing written.
#[test]
fn a_pkcs11_key_and_a_signing_command_sign_as_the_pem_key_does() {
    let registry = registry::shared();
    let layer = cairn_e2e::inspect::bootable_base();
    let pushed = push_layer(registry, "e2e/signed", "v1", &layer, Compression::Gzip);
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let profile = write_profile(
        w,
        "signed",
        &pushed.reference_by_digest,
        &[],
        "[image]\nformats = [\"raw\"]\n",
    );
    let run = cairn_e2e::rocks::run;
    let (key, cert) = cairn_e2e::secure_boot::key_pair(w, "db");
    let (other_key, _) = cairn_e2e::secure_boot::key_pair(w, "other");
    // A SoftHSM token holding the same key.
    let tokens = w.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens");
    let conf = w.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let conf_s = conf.display().to_string();
    let pk8 = w.join("db.pk8");
    run(std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pk8));
    run(std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "cairn",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ]));
    run(std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--import"])
        .arg(&pk8)
        .args([
            "--token", "cairn", "--label", "db", "--id", "01", "--pin", "1234",
        ]));
    let env = [("SOFTHSM2_CONF", conf_s.as_str())];
    let cache = w.join("cache");
    let signed = |tag: &str, extra: &[&str]| {
        let out = w.join(tag);
        let mut args: Vec<&std::ffi::OsStr> = build_args(&profile, &out, &cache);
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        (run_cairn(args, &env), out)
    };
    let key_s = key.display().to_string();
    let cert_s = cert.display().to_string();
    let (o, pem) = signed(
        "pem",
        &["--secure-boot-key", &key_s, "--secure-boot-cert", &cert_s],
    );
    assert_ok(&o, "signed with the PEM key");
    let (o, hsm) = signed(
        "pkcs11",
        &[
            "--secure-boot-key",
            "pkcs11:token=cairn;object=db;type=private?pin-value=1234",
            "--secure-boot-cert",
            &cert_s,
        ],
    );
    assert_ok(&o, "signed through PKCS#11");
    let command = format!("openssl dgst -sha256 -sign {key_s}");
    let (o, cmd) = signed(
        "command",
        &[
            "--secure-boot-sign-command",
            &command,
            "--secure-boot-cert",
            &cert_s,
        ],
    );
    assert_ok(&o, "signed by a command");
    let raw = |dir: &Path| sha256_hex(&dir.join("signed.raw"));
    assert_eq!(raw(&pem), raw(&hsm), "PKCS#11 and PEM differ");
    assert_eq!(raw(&pem), raw(&cmd), "the command and PEM differ");

    let other_s = other_key.display().to_string();
    for (tag, extra, says) in [
        (
            "wrong-key",
            vec![
                "--secure-boot-key",
                other_s.as_str(),
                "--secure-boot-cert",
                cert_s.as_str(),
            ],
            format!("the key does not match {cert_s}"),
        ),
        (
            "wrong-pin",
            vec![
                "--secure-boot-key",
                "pkcs11:token=cairn;object=db;type=private?pin-value=0000",
                "--secure-boot-cert",
                cert_s.as_str(),
            ],
            "the signing command `openssl dgst -sha256 -engine pkcs11".to_string(),
        ),
        (
            "no-cert",
            vec!["--secure-boot-sign-command", command.as_str()],
            "--secure-boot-cert".to_string(),
        ),
    ] {
        let (o, out) = signed(tag, &extra);
        assert_eq!(o.status.code(), Some(2), "{tag}: {}", stderr(&o));
        assert!(stderr(&o).contains(&says), "{tag}: {}", stderr(&o));
        assert!(
            !out.join("signed.raw").exists(),
            "{tag}: an image was written"
        );
    }
}
