//! `[[preload]]`: workload rocks stored in the root as OCI image-layout archives, end to end against a real
//! registry (and, where it is installed, a real containerd importing one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use cairn_e2e::cairn::{assert_ok, fake_elf, stderr};
use cairn_e2e::output::{Item, read_tar, sha256_file};
use cairn_e2e::{
    Auth, Compression, Image, IndexBuilder, LayerBuilder, MediaTypes, Pushed, Registry, push_image,
    push_index, registry, run_cairn, sha256_digest, write_profile,
};

const INDEX_NAME: &str = "ghcr.io/canonical/coredns:1.14.6-ck0";
const INDEX_FILE: &str = "usr/lib/cairn/images/ghcr.io_canonical_coredns_1.14.6-ck0.tar";
const SINGLE_NAME: &str = "registry.k8s.io/pause:3.10";
const SINGLE_FILE: &str = "usr/lib/cairn/images/registry.k8s.io_pause_3.10.tar";

/// A minimal static amd64 ELF header: enough for cairn's agent check, so these tests need no musl build.
fn fake_agent(dir: &Path) -> PathBuf {
    let path = dir.join("cairn-agent");
    std::fs::write(&path, fake_elf(62)).expect("write the agent");
    path
}

fn build(profile: &Path, out: &Path, cache: &Path, agent: &Path) -> Output {
    let mut args = cairn_e2e::cairn::build_args(profile, out, cache);
    args.extend([
        "--agent".as_ref(),
        agent.as_os_str(),
        "--format".as_ref(),
        "tar".as_ref(),
    ]);
    run_cairn(args, &[])
}

fn preload_toml(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(rock, name)| format!("[[preload]]\nrock = \"{rock}\"\nname = \"{name}\"\n\n"))
        .collect()
}

/// The preloads' images: an amd64 + arm64 OCI index (the amd64 image with a gzip and a zstd layer, plus a
/// buildx-style attestation) and a single Docker v2 manifest. Each has files the root must never get.
fn workload_images() -> (cairn_e2e::Index, Image) {
    let amd = Image::builder()
        .arch("amd64")
        .layer_from(
            &LayerBuilder::new().dir("coredns", 0o755).file(
                "coredns/amd64",
                0o755,
                "coredns amd64",
            ),
            Compression::Gzip,
        )
        .layer_from(
            &LayerBuilder::new().file("coredns/Corefile", 0o644, ".:53 {}\n"),
            Compression::Zstd,
        )
        .build();
    let arm = Image::builder()
        .arch("arm64")
        .layer_from(
            &LayerBuilder::new().dir("coredns", 0o755).file(
                "coredns/arm64",
                0o755,
                "coredns arm64",
            ),
            Compression::Gzip,
        )
        .build();
    let index = IndexBuilder::new(MediaTypes::Oci)
        .image(amd.clone())
        .image(arm)
        .attestation_for(&amd)
        .build();
    let pause = Image::builder()
        .arch("amd64")
        .media_types(MediaTypes::DockerV2)
        .layer_from(
            &LayerBuilder::new().file("pause", 0o755, "pause"),
            Compression::Gzip,
        )
        .build();
    (index, pause)
}

struct Pushes {
    base: Pushed,
    index: Pushed,
    single: Pushed,
}

fn push_all(registry: &Registry, prefix: &str) -> (Pushes, cairn_e2e::Index, Image) {
    let (index, pause) = workload_images();
    let base = push_image(
        registry,
        &format!("{prefix}/base"),
        "v1",
        &Image::simple("amd64", "base"),
    );
    let pushed_index = push_index(registry, &format!("{prefix}/coredns"), "1.14.6-ck0", &index);
    let single = push_image(registry, &format!("{prefix}/pause"), "3.10", &pause);
    (
        Pushes {
            base,
            index: pushed_index,
            single,
        },
        index,
        pause,
    )
}

fn profile_for(dir: &Path, name: &str, p: &Pushes) -> PathBuf {
    write_profile(
        dir,
        name,
        &p.base.reference_by_digest,
        &[],
        &preload_toml(&[
            (&p.index.reference_by_digest, INDEX_NAME),
            (&p.single.reference_by_digest, SINGLE_NAME),
        ]),
    )
}

fn item<'a>(items: &'a BTreeMap<String, Item>, path: &str) -> &'a Item {
    items.get(path).unwrap_or_else(|| {
        panic!(
            "{path} missing; there is {:?}",
            items.keys().collect::<Vec<_>>()
        )
    })
}

/// An archive's entries, names without a trailing `/`.
fn read_archive(bytes: &[u8], work: &Path) -> (Vec<String>, BTreeMap<String, Item>) {
    let path = work.join("archive.tar");
    std::fs::write(&path, bytes).expect("write the archive");
    let (order, items) = read_tar(&path);
    let strip = |s: &String| s.trim_end_matches('/').to_string();
    (
        order.iter().map(strip).collect(),
        items.into_iter().map(|(k, v)| (strip(&k), v)).collect(),
    )
}

fn blob<'a>(items: &'a BTreeMap<String, Item>, digest: &str) -> &'a [u8] {
    &item(
        items,
        &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
    )
    .data
}

/// Checks one archive: layout, index.json, every blob named by its digest, exactly `expected` blobs, the
/// determinism of its entries.
fn check_archive(
    bytes: &[u8],
    work: &Path,
    pinned: (&str, &str, usize),
    name: &str,
    tag: &str,
    expected: &[String],
) {
    let (order, items) = read_archive(bytes, work);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "archive entries are not sorted");
    assert_eq!(
        item(&items, "oci-layout").data,
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&item(&items, "index.json").data).expect("index.json is JSON");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let d = &manifests[0];
    assert_eq!(d["digest"], pinned.0, "index.json points at the pin");
    assert_eq!(d["mediaType"], pinned.1);
    assert_eq!(d["size"], pinned.2);
    assert_eq!(d["annotations"]["io.containerd.image.name"], name);
    assert_eq!(d["annotations"]["org.opencontainers.image.ref.name"], tag);

    let mut blobs = Vec::new();
    for (path, it) in &items {
        assert_eq!((it.uid, it.gid), (0, 0), "{path}");
        match it.kind {
            'd' => assert_eq!(it.mode, 0o755, "{path}"),
            'f' => assert_eq!(it.mode, 0o644, "{path}"),
            k => panic!("{path}: unexpected kind {k}"),
        }
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_digest(&it.data), format!("sha256:{hex}"), "{path}");
            blobs.push(format!("sha256:{hex}"));
        }
    }
    let mut expected = expected.to_vec();
    expected.sort();
    expected.dedup();
    assert_eq!(blobs, expected, "the archive's blobs");
    assert_eq!(
        blob(&items, pinned.0).len(),
        pinned.2,
        "the pinned document's size"
    );
}

#[test]
fn preloads_are_stored_as_oci_archives_and_not_merged() {
    let registry = registry::shared();
    let (p, index, pause) = push_all(registry, "preload/main");
    let work = tempfile::tempdir().expect("tempdir");
    let agent = fake_agent(work.path());
    let profile = profile_for(work.path(), "preload", &p);
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    let o = build(&profile, &out, &cache, &agent);
    assert_ok(&o, "build");
    let (_, root) = read_tar(&out.join("preload.tar"));

    // The images folder and the archives: root-owned, 0755 and 0644.
    let dir = item(&root, "usr/lib/cairn/images");
    assert_eq!((dir.kind, dir.mode, dir.uid, dir.gid), ('d', 0o755, 0, 0));
    let images: Vec<&String> = root
        .keys()
        .filter(|k| k.starts_with("usr/lib/cairn/images/"))
        .collect();
    assert_eq!(images, [INDEX_FILE, SINGLE_FILE]);
    for f in [INDEX_FILE, SINGLE_FILE] {
        let it = item(&root, f);
        assert_eq!(
            (it.kind, it.mode, it.uid, it.gid),
            ('f', 0o644, 0, 0),
            "{f}"
        );
    }

    // The index pin: the index itself plus the amd64 manifest, config and layers; nothing of arm64 or the
    // attestation.
    let amd = index.image_for("amd64").expect("amd64");
    let arm = index.image_for("arm64").expect("arm64");
    let mut expected = vec![
        index.digest.clone(),
        amd.manifest_digest.clone(),
        amd.config_digest.clone(),
    ];
    expected.extend(amd.layer_digests());
    let index_archive = &item(&root, INDEX_FILE).data;
    check_archive(
        index_archive,
        work.path(),
        (&index.digest, &index.media_type, index.bytes.len()),
        INDEX_NAME,
        "1.14.6-ck0",
        &expected,
    );
    let (_, items) = read_archive(index_archive, work.path());
    assert_eq!(blob(&items, &index.digest), index.bytes.as_slice());
    for (i, l) in amd.layers.iter().enumerate() {
        // The layers as the registry serves them: compressed, byte for byte.
        assert_eq!(blob(&items, &l.digest), l.blob.as_slice(), "layer {i}");
    }
    for absent in [&arm.manifest_digest, &arm.config_digest]
        .into_iter()
        .chain(arm.layer_digests().iter())
    {
        let hex = absent.trim_start_matches("sha256:");
        assert!(
            !items.contains_key(&format!("blobs/sha256/{hex}")),
            "arm64 blob {absent} is in the archive"
        );
    }
    assert!(
        !index
            .manifests
            .iter()
            .filter(|m| m.platform.architecture == "unknown")
            .any(|m| items.contains_key(&format!(
                "blobs/sha256/{}",
                m.manifest_digest.trim_start_matches("sha256:")
            ))),
        "the attestation is in the archive"
    );

    // The single manifest pin: that manifest (Docker v2), its config and layer.
    let mut expected = vec![pause.manifest_digest.clone(), pause.config_digest.clone()];
    expected.extend(pause.layer_digests());
    check_archive(
        &item(&root, SINGLE_FILE).data,
        work.path(),
        (
            &pause.manifest_digest,
            "application/vnd.docker.distribution.manifest.v2+json",
            pause.manifest.len(),
        ),
        SINGLE_NAME,
        "3.10",
        &expected,
    );

    // Never merged into the root, never unpacked into the layer cache; their blobs are cached.
    for path in ["coredns", "coredns/amd64", "coredns/arm64", "pause"] {
        assert!(!root.contains_key(path), "{path} was merged into the root");
    }
    assert_eq!(item(&root, "etc/cairn-e2e").data, b"base");
    for l in amd.layers.iter().chain(&pause.layers) {
        let hex = l.digest.trim_start_matches("sha256:");
        assert!(
            !cache.join("layers/v1").join(hex).exists(),
            "preload layer {} was unpacked",
            l.digest
        );
        assert!(cache.join("blobs/sha256").join(hex).is_file());
    }

    // The report.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("preload.manifest.json")).expect("report"))
            .expect("json");
    let preloads = report["preloads"].as_array().expect("preloads");
    assert_eq!(preloads.len(), 2, "{report}");
    let sha = |data: &[u8]| {
        sha256_digest(data)
            .trim_start_matches("sha256:")
            .to_string()
    };
    assert_eq!(preloads[0]["rock"], p.index.reference_by_digest);
    assert_eq!(preloads[0]["name"], INDEX_NAME);
    assert_eq!(preloads[0]["index_digest"], index.digest);
    assert_eq!(preloads[0]["manifest_digest"], amd.manifest_digest);
    assert_eq!(preloads[0]["path"], format!("/{INDEX_FILE}"));
    assert_eq!(preloads[0]["size"], index_archive.len());
    assert_eq!(preloads[0]["sha256"], sha(index_archive));
    assert_eq!(preloads[1]["rock"], p.single.reference_by_digest);
    assert_eq!(preloads[1]["name"], SINGLE_NAME);
    assert!(preloads[1].get("index_digest").is_none(), "{report}");
    assert_eq!(preloads[1]["manifest_digest"], pause.manifest_digest);
    assert_eq!(preloads[1]["path"], format!("/{SINGLE_FILE}"));
    assert_eq!(preloads[1]["size"], item(&root, SINGLE_FILE).data.len());
    assert_eq!(preloads[1]["sha256"], sha(&item(&root, SINGLE_FILE).data));
    assert_eq!(report["rocks"].as_array().map(Vec::len), Some(1));

    // Deterministic: a second build with an empty cache gives the same bytes.
    let out2 = work.path().join("out2");
    let o = build(&profile, &out2, &work.path().join("cache2"), &agent);
    assert_ok(&o, "second build");
    assert_eq!(
        sha256_file(&out.join("preload.tar")),
        sha256_file(&out2.join("preload.tar"))
    );
    assert_eq!(
        std::fs::read(out.join("preload.manifest.json")).expect("report"),
        std::fs::read(out2.join("preload.manifest.json")).expect("report")
    );
}

#[test]
fn a_warm_build_with_preloads_needs_no_registry() {
    let mut registry = Registry::start(Auth::Anonymous);
    let (p, _, pause) = push_all(&registry, "preload/offline");
    let work = tempfile::tempdir().expect("tempdir");
    let agent = fake_agent(work.path());
    let profile = profile_for(work.path(), "offline", &p);
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    assert_ok(&build(&profile, &out, &cache, &agent), "cold build");
    let cold = sha256_file(&out.join("offline.tar"));
    registry.stop();
    std::fs::remove_dir_all(registry.storage_dir()).expect("remove the registry's storage");
    std::fs::remove_dir_all(&out).expect("remove out");
    assert_ok(
        &build(&profile, &out, &cache, &agent),
        "warm build with the registry gone",
    );
    assert_eq!(sha256_file(&out.join("offline.tar")), cold);

    // A cached preload blob damaged since it was verified is caught as it is copied, never put in an image.
    let layer = &pause.layers[0].digest;
    let cached = cache
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&cached).expect("read the cached blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cached, &bytes).expect("damage the cached blob");
    let out2 = work.path().join("out2");
    let o = build(&profile, &out2, &cache, &agent);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "preload[1].rock: {}: blob {layer} in the cache ({}) has digest sha256:",
            p.single.reference_by_digest,
            cached.display()
        )) && err.contains("remove it and build again"),
        "{err}"
    );
    assert!(!out2.join("offline.tar").exists());
    assert!(!out2.join("offline.manifest.json").exists());
    assert_eq!(
        std::fs::read_dir(cache.join("tmp")).expect("tmp").count(),
        0,
        "temp files left behind"
    );
}

#[test]
fn a_preload_index_without_the_arch_fails_naming_it() {
    let registry = registry::shared();
    let arm = Image::simple("arm64", "arm only");
    let pushed = push_index(
        registry,
        "preload/armonly",
        "v1",
        &IndexBuilder::new(MediaTypes::Oci).image(arm).build(),
    );
    let base = push_image(
        registry,
        "preload/armonly-base",
        "v1",
        &Image::simple("amd64", "base"),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let agent = fake_agent(work.path());
    let profile = write_profile(
        work.path(),
        "armonly",
        &base.reference_by_digest,
        &[],
        &preload_toml(&[(&pushed.reference_by_digest, "ghcr.io/e2e/armonly:v1")]),
    );
    let out = work.path().join("out");
    let o = build(&profile, &out, &work.path().join("cache"), &agent);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "preload[0].rock: {}: the index has no linux/amd64 image (it has: linux/arm64/v8)",
            pushed.reference_by_digest
        )),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("armonly.tar").exists());
    assert!(!out.join("armonly.manifest.json").exists());
}

#[test]
fn a_corrupted_preload_blob_fails_and_writes_nothing() {
    let registry = Registry::start(Auth::Anonymous);
    let (p, index, _) = push_all(&registry, "preload/corrupt");
    let layer = index.image_for("amd64").expect("amd64").layers[0]
        .digest
        .clone();
    registry.corrupt_blob(&layer);
    let work = tempfile::tempdir().expect("tempdir");
    let agent = fake_agent(work.path());
    let profile = profile_for(work.path(), "corrupt", &p);
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    let o = build(&profile, &out, &cache, &agent);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "preload[0].rock: {}: ",
            p.index.reference_by_digest
        )) && err.contains(&format!("blob {layer}"))
            && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(!out.join("corrupt.tar").exists());
    assert!(!out.join("corrupt.manifest.json").exists());
    let hex = layer.trim_start_matches("sha256:");
    assert!(!cache.join("blobs/sha256").join(hex).exists());
    assert_eq!(
        std::fs::read_dir(cache.join("tmp")).expect("tmp").count(),
        0,
        "temp files left behind"
    );
}

#[test]
fn pin_pins_preloads_and_keeps_the_layout() {
    let registry = registry::shared();
    let (p, index, pause) = push_all(registry, "preload/pin");
    let work = tempfile::tempdir().expect("tempdir");
    let path = work.path().join("pin.toml");
    let text = format!(
        "schema = 1\nname = \"pin\"\nversion = \"1\"\narch = \"amd64\"\n\n[base]\nrock = \"{}\"\n\n\
         # workloads for an air-gapped start\n[[preload]]\nrock = \"{}\"   # follows the tag\nname = \"{INDEX_NAME}\"\n\n\
         [[preload]]\nrock = \"{}\"\nname = \"{SINGLE_NAME}\"\n",
        p.base.reference_by_digest, p.index.reference, p.single.reference
    );
    std::fs::write(&path, &text).expect("write");
    let o = run_cairn(["validate".as_ref(), path.as_os_str()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(":11:8: `preload[0].rock`:")
            && stderr(&o).contains("pin it: cairn pin"),
        "{}",
        stderr(&o)
    );

    let o = run_cairn(["pin".as_ref(), path.as_os_str()], &[]);
    assert_ok(&o, "pin");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!(
            "preload[0].rock: {}\n  -> {}@{}",
            p.index.reference, p.index.reference, index.digest
        )),
        "{stdout}"
    );
    assert!(stdout.contains("base.rock: unchanged"), "{stdout}");
    let expected = text
        .replace(
            &format!("\"{}\"", p.index.reference),
            &format!("\"{}@{}\"", p.index.reference, index.digest),
        )
        .replace(
            &format!("\"{}\"", p.single.reference),
            &format!("\"{}@{}\"", p.single.reference, pause.manifest_digest),
        );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        expected,
        "only the digests change"
    );
    let o = run_cairn(["validate".as_ref(), path.as_os_str()], &[]);
    assert_ok(&o, "validate after pin");
}

#[test]
fn containerd_imports_the_archives() {
    if let Err(why) = cairn_e2e::containerd::available() {
        println!("skipped: {why}");
        return;
    }
    let registry = registry::shared();
    let (p, index, pause) = push_all(registry, "preload/ctr");
    let work = tempfile::tempdir().expect("tempdir");
    let agent = fake_agent(work.path());
    let profile = profile_for(work.path(), "ctr", &p);
    let out = work.path().join("out");
    assert_ok(
        &build(&profile, &out, &work.path().join("cache"), &agent),
        "build",
    );
    let (_, root) = read_tar(&out.join("ctr.tar"));
    let containerd = cairn_e2e::containerd::Containerd::start();
    for (file, name, digest) in [
        (INDEX_FILE, INDEX_NAME, &index.digest),
        (SINGLE_FILE, SINGLE_NAME, &pause.manifest_digest),
    ] {
        let archive = work.path().join("import.tar");
        std::fs::write(&archive, &item(&root, file).data).expect("write the archive");
        let o = containerd.ctr(&["images", "import", archive.to_str().expect("utf-8")]);
        assert_ok(&o, &format!("ctr images import {file}"));
        let o = containerd.ctr(&["images", "ls"]);
        assert_ok(&o, "ctr images ls");
        let listing = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not imported:\n{listing}"));
        assert!(
            line.split_whitespace().any(|w| w == digest.as_str()),
            "{name} is not known by {digest}: {line}"
        );
        // Every blob of the host's platform is there, and the layers unpacked (their diff_ids held).
        let o = containerd.ctr(&["images", "check"]);
        assert_ok(&o, "ctr images check");
        let checked = String::from_utf8_lossy(&o.stdout).into_owned();
        let words: Vec<&str> = checked
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not checked:\n{checked}"))
            .split_whitespace()
            .collect();
        assert!(
            words.contains(&"complete") && words.last() == Some(&"true"),
            "{name} is not complete and unpacked:\n{checked}"
        );
    }
}
