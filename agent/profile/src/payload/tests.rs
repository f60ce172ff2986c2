use proptest::prelude::*;

use super::*;

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn about() -> About {
    About {
        name: "node".into(),
        version: "2.0".into(),
        arch: Arch::Amd64,
        root_hash: HASH.into(),
    }
}

fn blobs() -> Vec<Blob> {
    Part::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| Blob {
            part: *p,
            digest: Digest::from_sha256(&[i as u8; 32]),
            size: 100 + i as u64,
        })
        .collect()
}

fn bytes(m: &Manifest) -> Vec<u8> {
    serde_json::to_vec(m).unwrap()
}

fn written() -> Manifest {
    manifest(&about(), &blobs(), "2026-12-02T00:00:00Z")
}

#[test]
fn what_push_writes_parses_back() {
    let p = Payload::parse(&bytes(&written())).unwrap();
    assert_eq!(p.about, about());
    assert_eq!(p.blobs, blobs());
    assert_eq!(p.blob(Part::Uki).size, 102);
}

#[test]
fn the_manifest_is_an_oci_artifact_with_the_empty_config() {
    let v: serde_json::Value = serde_json::from_slice(&bytes(&written())).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(v["artifactType"], ARTIFACT_TYPE);
    assert_eq!(v["config"]["digest"], EMPTY_CONFIG_DIGEST);
    assert_eq!(v["config"]["data"], "e30=");
    assert_eq!(
        v["layers"][0]["mediaType"],
        "application/vnd.cairn.update.root.v1"
    );
    assert_eq!(
        v["layers"][0]["annotations"][ANNOTATION_TITLE],
        "root.squashfs"
    );
    assert_eq!(v["annotations"][ANNOTATION_ROOT_HASH], HASH);
    // The empty config's digest is sha256 of `{}`.
    use sha2::Digest as _;
    assert_eq!(
        Digest::from_sha256(&sha2::Sha256::digest(EMPTY_CONFIG)).as_str(),
        EMPTY_CONFIG_DIGEST
    );
}

#[test]
fn the_order_of_the_layers_does_not_matter() {
    let mut m = written();
    m.layers.reverse();
    assert_eq!(Payload::parse(&bytes(&m)).unwrap().blobs, blobs());
}

fn refused(m: &Manifest) -> String {
    Payload::parse(&bytes(m)).unwrap_err().to_string()
}

#[test]
fn refusals_name_what_is_wrong() {
    let mut m = written();
    m.artifact_type = "application/vnd.example".into();
    assert!(refused(&m).contains("not a cairn update: artifactType `application/vnd.example`"));

    let mut m = written();
    m.media_type = EMPTY_CONFIG_MEDIA_TYPE.into();
    assert!(refused(&m).starts_with("not an OCI image manifest"));

    let mut m = written();
    m.layers.remove(2);
    assert_eq!(refused(&m), "no uki blob");

    let mut m = written();
    let extra = m.layers[1].clone();
    m.layers.push(extra);
    assert!(
        refused(&m).contains("a second verity blob"),
        "{}",
        refused(&m)
    );

    let mut m = written();
    m.layers[0].digest = "sha512:00".into();
    assert!(refused(&m).starts_with("blob 0 (application/vnd.cairn.update.root.v1)"));

    let mut m = written();
    m.layers[3].size = (16 << 20) + 1;
    assert!(refused(&m).contains("16777217 bytes, outside 1..=16777216"));

    let mut m = written();
    m.layers[2].size = 0;
    assert!(refused(&m).contains("0 bytes"));

    let mut m = written();
    m.layers[0].media_type = "application/vnd.oci.image.layer.v1.tar".into();
    assert!(refused(&m).contains("not a part of a cairn update"));

    let mut m = written();
    m.annotations
        .insert(ANNOTATION_ARCH.into(), "riscv64".into());
    assert_eq!(
        refused(&m),
        "annotation `io.cairn.update.arch`: `riscv64` is not amd64 or arm64"
    );

    let mut m = written();
    m.annotations
        .insert(ANNOTATION_ROOT_HASH.into(), HASH.to_uppercase());
    assert!(refused(&m).contains("not 64 lower-case hex digits"));

    let mut m = written();
    m.annotations.remove(ANNOTATION_VERSION);
    assert_eq!(refused(&m), "annotation `io.cairn.update.version`: missing");

    let mut m = written();
    m.annotations
        .insert(ANNOTATION_NAME.into(), "node\nroot".into());
    assert!(refused(&m).contains("control character"));

    let mut m = written();
    m.config.digest = Digest::from_sha256(&[0; 32]).to_string();
    assert!(refused(&m).contains("expected the empty config"));

    assert_eq!(
        Payload::parse(&vec![b' '; (MANIFEST_LIMIT + 1) as usize]).unwrap_err(),
        PayloadError::TooLarge
    );
}

#[test]
fn a_report_must_describe_the_manifest_s_build() {
    let a = about();
    let report = |name: &str, hash: &str| {
        serde_json::json!({
            "name": name, "version": a.version, "arch": a.arch.oci(), "cairn_version": "0.1.0",
            "disk": {"root_hash": hash, "partitions": []},
        })
        .to_string()
    };
    let facts = ReportFacts::check(report(&a.name, &a.root_hash).as_bytes(), &a).unwrap();
    assert_eq!(facts.disk.root_hash, a.root_hash);
    let e = ReportFacts::check(report(&a.name, &"1".repeat(64)).as_bytes(), &a).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the build report: its root hash is \"1111"),
        "{e}"
    );
    let e = ReportFacts::check(report("other", &a.root_hash).as_bytes(), &a).unwrap_err();
    assert!(
        e.to_string()
            .contains("its name is \"other\", the manifest's"),
        "{e}"
    );
    let e = ReportFacts::check(b"{\"name\": 1}", &a).unwrap_err();
    assert!(matches!(e, PayloadError::Report(_)), "{e}");
}

#[test]
fn a_uki_must_carry_the_root_hash_and_the_version() {
    let uki = |cmdline: &str, osrel: &str| crate::uki::About {
        cmdline: cmdline.into(),
        os_release: osrel.into(),
    };
    let osrel = "PRETTY_NAME=\"node 2.0\"\nIMAGE_VERSION=\"2.0\"\n";
    let ok = uki(&format!("console=ttyS0 cairn.verity={HASH}"), osrel);
    assert_eq!(check_uki(&ok, &about()).unwrap(), "node 2.0");
    let other = uki(&format!("cairn.verity={}", "f".repeat(64)), osrel);
    assert!(
        check_uki(&other, &about())
            .unwrap_err()
            .to_string()
            .contains("does not carry `cairn.verity=0123")
    );
    let prefix = uki(&format!("cairn.verity={HASH}0"), osrel);
    assert!(check_uki(&prefix, &about()).is_err());
    let old = uki(
        &format!("cairn.verity={HASH}"),
        "PRETTY_NAME=\"node 1.0\"\nIMAGE_VERSION=\"1.0\"\n",
    );
    assert!(
        check_uki(&old, &about())
            .unwrap_err()
            .to_string()
            .contains("version Some(\"1.0\"), the manifest \"2.0\"")
    );
    let untitled = uki(&format!("cairn.verity={HASH}"), "IMAGE_VERSION=2.0\n");
    assert!(check_uki(&untitled, &about()).is_err());
}

proptest! {
    #![proptest_config(crate::proptest_support::config(256))]

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Payload::parse(&b);
    }

    /// A real manifest with one byte changed either still parses to a payload that names every part, or is refused.
    #[test]
    fn a_damaged_manifest_is_refused_or_whole(at in any::<prop::sample::Index>(), byte: u8) {
        let mut b = bytes(&written());
        let i = at.index(b.len());
        b[i] = byte;
        if let Ok(p) = Payload::parse(&b) {
            prop_assert_eq!(p.blobs.len(), Part::ALL.len());
            for (blob, part) in p.blobs.iter().zip(Part::ALL) {
                prop_assert_eq!(blob.part, part);
                prop_assert!(blob.size >= 1 && blob.size <= part.limit());
            }
        }
    }
}
