//! `cairn push`: a build's update payload as one OCI artifact, into the real registry (anonymous and behind token
//! auth) and into an OCI image layout folder. Pulled back by digest, every part is the bytes the build wrote; the
//! same build has one digest wherever it goes; what is refused is refused before anything is sent.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use cairn_e2e::cairn::{assert_ok, stderr, write_docker_config};
use cairn_e2e::inspect::{bootable_base, build, cairn, json, report};
use cairn_e2e::push::Client;
use cairn_e2e::registry::{self, Auth, Registry};
use cairn_e2e::{Compression, Image, LayerBuilder, push_image, write_profile};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const ARTIFACT: &str = "application/vnd.cairn.update.v2";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct Built {
    _work: tempfile::TempDir,
    profile: PathBuf,
    out: PathBuf,
    report: Value,
    raw: Vec<u8>,
}

/// A disk build of a small profile (`edge` 1.0.0) whose rocks are in `registry`.
fn built(registry: &Registry, prefix: &str) -> Built {
    let image = |l: &LayerBuilder| Image::builder().layer_from(l, Compression::Gzip).build();
    let base = push_image(
        registry,
        &format!("{prefix}/base"),
        "v1",
        &image(&bootable_base()),
    );
    let app = push_image(
        registry,
        &format!("{prefix}/app"),
        "v1",
        &image(&LayerBuilder::new().file("opt/app", 0o755, vec![3u8; 50_000])),
    );
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "edge",
        &base.reference_by_digest,
        &[&app.reference_by_digest],
        "[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\"]\n",
    );
    let out = work.path().join("out");
    build(&profile, &out, &work.path().join("cache"), &[]);
    let report = report(&out, "edge");
    let raw = std::fs::read(out.join("edge.raw")).expect("raw");
    Built {
        _work: work,
        profile,
        out,
        report,
        raw,
    }
}

fn push(b: &Built, target: &str, env: &[(&str, &str)]) -> std::process::Output {
    cairn_e2e::cairn::run_cairn(
        [
            OsStr::new("--message-format"),
            OsStr::new("json"),
            OsStr::new("push"),
            b.profile.as_os_str(),
            OsStr::new(target),
            OsStr::new("--out"),
            b.out.as_os_str(),
        ],
        env,
    )
}

/// The bytes each part must have, from the build's own outputs: slot A's partitions of the raw, the report's UKI
/// digest, the report file.
fn expected_parts(b: &Built) -> Vec<(&'static str, String, u64)> {
    let disk = &b.report["disk"];
    let part = |name: &str| {
        disk["partition_table"]["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let slice = |name: &str, len: u64| {
        let off = part(name)["offset"].as_u64().expect("offset") as usize;
        sha256(&b.raw[off..off + len as usize])
    };
    let root_len = disk["slot"]["root"]["bytes"].as_u64().expect("root bytes");
    let verity_len = disk["slot"]["verity"]["bytes"]
        .as_u64()
        .expect("verity bytes");
    let report_bytes = std::fs::read(b.out.join("edge.manifest.json")).expect("report");
    vec![
        ("root", slice("root-a", root_len), root_len),
        ("verity", slice("root-a-verity", verity_len), verity_len),
        (
            "uki",
            format!(
                "sha256:{}",
                disk["boot"]["uki"]["sha256"].as_str().expect("uki")
            ),
            disk["boot"]["uki"]["bytes"].as_u64().expect("uki bytes"),
        ),
        ("report", sha256(&report_bytes), report_bytes.len() as u64),
    ]
}

#[test]
fn a_pushed_payload_pulls_back_as_the_builds_bytes_and_a_second_push_sends_nothing() {
    let registry = registry::shared();
    let b = built(registry, "e2e/push");
    let repo = format!("{}/e2e/push/edge", registry.addr());

    let o = push(&b, &repo, &[]);
    assert_ok(&o, "push");
    let pushed = json(&o, "push");
    assert_eq!(pushed["reason"], "pushed");
    let p = &pushed["push"];
    let digest = p["digest"].as_str().expect("digest").to_string();
    assert_eq!(p["reference"], format!("{repo}@{digest}"));
    assert_eq!(
        p["tag"], "1.0.0",
        "the tag defaults to the profile's version"
    );
    let root_hash = b.report["disk"]["root_hash"].as_str().expect("root hash");
    assert_eq!(p["root_hash"], root_hash);
    assert!(
        p["parts"]
            .as_array()
            .expect("parts")
            .iter()
            .all(|x| x["sent"] == true)
    );

    // The manifest, by digest and by tag: the bytes whose sha256 is the digest, an artifact of cairn's type.
    let client = Client::for_registry(registry);
    let by_digest = client
        .get_manifest("e2e/push/edge", &digest)
        .expect("manifest");
    assert_eq!(sha256(&by_digest.body), digest);
    let by_tag = client.get_manifest("e2e/push/edge", "1.0.0").expect("tag");
    assert_eq!(by_tag.body, by_digest.body);
    let m: Value = serde_json::from_slice(&by_digest.body).expect("manifest json");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["artifactType"], ARTIFACT);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(m["annotations"]["io.cairn.update.name"], "edge");
    assert_eq!(m["annotations"]["io.cairn.update.version"], "1.0.0");
    assert_eq!(m["annotations"]["io.cairn.update.arch"], "amd64");
    assert_eq!(m["annotations"]["io.cairn.update.root-hash"], root_hash);
    let layers = m["layers"].as_array().expect("layers");
    let types: Vec<&str> = layers
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.cairn.update.root.v1",
            "application/vnd.cairn.update.verity.v1",
            "application/vnd.cairn.update.uki.v1",
            "application/vnd.cairn.update.report.v1+json",
        ]
    );

    // Each blob pulled back is the build's bytes.
    let blob = |i: usize| {
        let d = layers[i]["digest"].as_str().expect("digest");
        let bytes = client.get_blob("e2e/push/edge", d).expect("blob");
        assert_eq!(sha256(&bytes), d, "blob {i} does not match its digest");
        assert_eq!(bytes.len() as u64, layers[i]["size"].as_u64().unwrap());
        bytes
    };
    for (i, (name, want, size)) in expected_parts(&b).into_iter().enumerate() {
        let got = blob(i);
        assert_eq!(sha256(&got), want, "the {name} part");
        assert_eq!(got.len() as u64, size, "the {name} part's size");
    }
    // The UKI names the build and boots its root.
    let uki = cairn_profile::uki::About::read(&mut std::io::Cursor::new(blob(2))).expect("the UKI");
    assert_eq!(
        uki.os_release_value("PRETTY_NAME").as_deref(),
        Some("edge 1.0.0")
    );
    assert_eq!(
        uki.os_release_value("IMAGE_VERSION").as_deref(),
        Some("1.0.0")
    );
    assert_eq!(
        uki.cmdline,
        format!("console=ttyS0 cairn.verity={root_hash}")
    );

    // Again, under another tag: the same digest, nothing sent.
    let o = push(&b, &format!("{repo}:stable"), &[]);
    assert_ok(&o, "second push");
    let again = json(&o, "second push");
    assert_eq!(again["push"]["digest"], digest.as_str());
    assert_eq!(again["push"]["sent"], 0);
    assert!(
        again["push"]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["sent"] == false)
    );
    let stable = client
        .get_manifest("e2e/push/edge", "stable")
        .expect("stable");
    assert_eq!(stable.body, by_digest.body);

    // The same build into an OCI image layout: the same digest, the same blobs, the tag in index.json.
    let layout = b.out.parent().unwrap().join("usb/updates");
    let o = push(&b, &format!("oci-layout:{}:v1", layout.display()), &[]);
    assert_ok(&o, "push to a layout");
    let l = json(&o, "push to a layout");
    assert_eq!(l["push"]["digest"], digest.as_str());
    assert_eq!(
        l["push"]["reference"],
        format!("oci-layout:{}@{digest}", layout.display())
    );
    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let blob_file = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    assert_eq!(std::fs::read(blob_file(&digest)).unwrap(), by_digest.body);
    for layer in layers {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(sha256(&std::fs::read(blob_file(d)).unwrap()), d);
    }
    let empty = std::fs::read(blob_file(
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    ))
    .unwrap();
    assert_eq!(empty, b"{}");
    // A second tag adds an entry and keeps the first; the same tag again replaces its own.
    for tag in ["v2", "v1"] {
        let o = push(&b, &format!("oci-layout:{}:{tag}", layout.display()), &[]);
        assert_ok(&o, "another layout tag");
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().expect("manifests");
    let mut tags: Vec<&str> = manifests
        .iter()
        .map(|d| {
            d["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2"]);
    assert!(manifests.iter().all(|d| d["digest"] == digest.as_str()));
    let leftovers: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn push_signs_in_with_the_docker_config() {
    // The rocks come from the anonymous registry; the payload goes to one behind token auth.
    let b = built(registry::shared(), "e2e/push-auth");
    let registry = Registry::start(Auth::token("carol", "pu5h"));
    let repo = format!("{}/e2e/push-auth/edge", registry.addr());
    let anonymous = b.out.parent().unwrap().join("no-docker-config");
    std::fs::create_dir_all(&anonymous).unwrap();
    let o = push(&b, &repo, &[("DOCKER_CONFIG", anonymous.to_str().unwrap())]);
    let e = refused(&o, 1, &registry.addr());
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("signing in to push"),
        "{e}"
    );
    let config = write_docker_config(&b.out.parent().unwrap().join("docker"), &[&registry]);
    let o = push(&b, &repo, &[("DOCKER_CONFIG", config.to_str().unwrap())]);
    assert_ok(&o, "push with a token");
    let digest = json(&o, "push")["push"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let client = Client::for_registry(&registry);
    assert_eq!(
        sha256(
            &client
                .get_manifest("e2e/push-auth/edge", &digest)
                .unwrap()
                .body
        ),
        digest
    );
    assert!(registry.tokens_issued() >= 1, "no token was issued");
}

fn refused(o: &std::process::Output, code: i32, says: &str) -> Value {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    let v = json(o, "refusal");
    assert_eq!(v["reason"], "error");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{says:?} not in {message}");
    v
}

fn tags(registry: &Registry, repo: &str) -> Option<Value> {
    let r = Client::for_registry(registry)
        .get(&format!("/v2/{repo}/tags/list"))
        .ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

#[test]
fn push_refuses_another_profile_a_damaged_disk_and_bad_targets_before_sending_anything() {
    let registry = registry::shared();
    let b = built(registry, "e2e/push-refused");
    let repo = format!("{}/e2e/push-refused/edge", registry.addr());
    let layout = b.out.parent().unwrap().join("layout");
    let layout_target = format!("oci-layout:{}", layout.display());

    // The profile changed since the build (one comment): refused, exit 2, nothing pushed.
    let text = std::fs::read_to_string(&b.profile).unwrap();
    std::fs::write(&b.profile, format!("{text}# changed\n")).unwrap();
    for target in [repo.as_str(), layout_target.as_str()] {
        let e = refused(&push(&b, target, &[]), 2, "built from another profile");
        assert!(e["message"].as_str().unwrap().contains("edge.toml"), "{e}");
    }
    std::fs::write(&b.profile, &text).unwrap();
    assert_eq!(
        tags(registry, "e2e/push-refused/edge"),
        None,
        "something was pushed"
    );
    assert!(!layout.exists(), "the layout was made");

    // A damaged disk: exit 1, named, nothing pushed.
    let raw = b.out.join("edge.raw");
    let mut bytes = b.raw.clone();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&raw, &bytes).unwrap();
    refused(&push(&b, &repo, &[]), 1, "does not match the report");
    assert_eq!(tags(registry, "e2e/push-refused/edge"), None);
    std::fs::write(&raw, &b.raw).unwrap();

    // Bad targets: exit 2.
    let digest_ref = format!("{repo}@sha256:{}", "0".repeat(64));
    refused(&push(&b, &digest_ref, &[]), 2, "names a tag, not a digest");
    refused(&push(&b, "oci-layout:", &[]), 2, "no folder");
    refused(
        &push(&b, &format!("{repo}:-bad"), &[]),
        2,
        "not a push target",
    );
    // A folder that is not a layout is not made one.
    let notes = b.out.parent().unwrap().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("readme"), "mine").unwrap();
    refused(
        &push(&b, &format!("oci-layout:{}", notes.display()), &[]),
        2,
        "not an OCI image layout: it holds files but no oci-layout",
    );
    assert!(!notes.join("oci-layout").exists());

    // Nothing built in --out: the build is not there.
    let o = cairn(&[
        "push".as_ref(),
        b.profile.as_os_str(),
        repo.as_ref(),
        "--out".as_ref(),
        Path::new("/nonexistent").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no build there"), "{}", stderr(&o));

    // And the untouched build still pushes.
    assert_ok(&push(&b, &repo, &[]), "push after the refusals");
}
