//! `[[snap]]` end to end: real snap files (squashfs with meta/snap.yaml, as snapcraft packs them) checked against
//! their pins and assertions, stored in the image in install order with what snapd needs on a read-only root, and
//! every bad input refused before any network work.

use std::path::{Path, PathBuf};

use cairn_e2e::cairn::{assert_ok, stderr};
use cairn_e2e::output::read_tar;
use cairn_e2e::snap::{BuiltSnap, SnapBuilder, profile_entry, write_assertion};
use cairn_e2e::{Compression, Image};
use cairn_e2e::{LayerBuilder, Pushed, push_image, run_cairn, write_profile};
use serde_json::Value;

/// A root with snapd where Debian's package puts it, so the builder accepts snaps.
fn snapd_rock(with_snapd: bool) -> Pushed {
    let mut layer =
        LayerBuilder::new()
            .dir("usr/lib", 0o755)
            .file("etc/os-release", 0o644, "ID=debian\n");
    if with_snapd {
        layer = layer
            .file("usr/lib/snapd/snapd", 0o755, "#!/bin/false\n")
            .dir("snap", 0o755);
    }
    let tag = if with_snapd { "snapd" } else { "plain" };
    push_image(
        cairn_e2e::registry::shared(),
        "e2e/snaps-base",
        tag,
        &Image::builder()
            .layer_from(&layer, Compression::Gzip)
            .build(),
    )
}

struct Set {
    dir: tempfile::TempDir,
    snapd: BuiltSnap,
    core: BuiltSnap,
    app: BuiltSnap,
}

/// snapd, a base and a classic app on it, in the profile's folder; the app listed first, to check the order.
fn snap_set() -> Set {
    let dir = tempfile::tempdir().expect("tempdir");
    let snaps = dir.path().join("snaps");
    let snapd = SnapBuilder::new("snapd")
        .kind("snapd")
        .file("usr/lib/snapd/info", "VERSION=2.66\n", 0o644)
        .build(&snaps);
    let core = SnapBuilder::new("core22")
        .kind("base")
        .file("etc/os-release", "ID=ubuntu\n", 0o644)
        .build(&snaps);
    let app = SnapBuilder::new("hello")
        .base("core22")
        .confinement("classic")
        .file("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
        .yaml("apps:\n  hello:\n    command: bin/hello\n")
        .build(&snaps);
    Set {
        dir,
        snapd,
        core,
        app,
    }
}

fn profile(set: &Set, base: &Pushed, entries: &str, name: &str) -> PathBuf {
    write_profile(
        set.dir.path(),
        name,
        &base.reference_by_digest,
        &[],
        entries,
    )
}

fn build(profile: &Path, work: &Path) -> std::process::Output {
    let (out, cache) = (work.join("out"), work.join("cache"));
    run_cairn(cairn_e2e::cairn::build_args(profile, &out, &cache), &[])
}

#[test]
fn snaps_are_verified_stored_in_install_order_and_reported() {
    let set = snap_set();
    let base = snapd_rock(true);
    let d = set.dir.path();
    let entries = [
        profile_entry(d, &set.app, None),
        profile_entry(d, &set.core, Some(&write_assertion(&set.core, 1748))),
        profile_entry(d, &set.snapd, Some(&write_assertion(&set.snapd, 23545))),
    ]
    .join("\n");
    let profile = profile(&set, &base, &entries, "snaps");
    let work = tempfile::tempdir().expect("tempdir");
    let first = build(&profile, work.path());
    assert_ok(&first, "build with snaps");

    let (_, items) = read_tar(&work.path().join("out/snaps.tar"));
    let item = |p: &str| {
        items
            .get(p)
            .unwrap_or_else(|| panic!("{p} is not in the image"))
    };
    for (snap, stored) in [
        (&set.snapd, "usr/lib/cairn/snaps/snapd_23545.snap"),
        (&set.core, "usr/lib/cairn/snaps/core22_1748.snap"),
        (&set.app, "usr/lib/cairn/snaps/hello_x1.snap"),
    ] {
        let i = item(stored);
        assert_eq!(i.data, std::fs::read(&snap.path).expect("read"), "{stored}");
        assert_eq!((i.mode, i.uid, i.gid), (0o644, 0, 0), "{stored}");
    }
    assert_eq!(
        item("usr/lib/cairn/snaps/core22_1748.assert").data,
        std::fs::read(set.core.path.with_extension("assert")).expect("read")
    );
    assert!(!items.contains_key("usr/lib/cairn/snaps/hello_x1.assert"));

    let plan: Value =
        serde_json::from_slice(&item("usr/lib/cairn/snaps/install.json").data).expect("json");
    let order: Vec<(&str, &str, bool, bool)> = plan
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name"),
                s["type"].as_str().expect("type"),
                s["classic"].as_bool().expect("classic"),
                s["assert"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("snapd", "snapd", false, true),
            ("core22", "base", false, true),
            ("hello", "app", true, false)
        ]
    );
    assert_eq!(
        plan[2]["file"].as_str(),
        Some("/usr/lib/cairn/snaps/hello_x1.snap")
    );

    // snapd mounts snaps under /snap: on a read-only root it is bound from the data partition.
    let unit =
        String::from_utf8(item("usr/lib/systemd/system/snap.mount").data.clone()).expect("text");
    assert!(
        unit.contains("What=/var/lib/snapd/snap") && unit.contains("Where=/snap"),
        "{unit}"
    );
    let wants = item("usr/lib/systemd/system/local-fs.target.wants/snap.mount");
    assert_eq!((wants.kind, wants.link.as_str()), ('l', "../snap.mount"));
    assert_eq!(item("var/lib/snapd/snap").kind, 'd');
    // The agent's snaps phase runs before the kubernetes phase.
    let unit = String::from_utf8(
        item("usr/lib/systemd/system/cairn-agent-snaps.service")
            .data
            .clone(),
    )
    .expect("text");
    assert!(
        unit.contains("ExecStart=/usr/lib/cairn/cairn-agent run snaps"),
        "{unit}"
    );
    assert!(unit.contains("Before=cairn-kubernetes.service"), "{unit}");
    assert_eq!(
        item("usr/lib/systemd/system/multi-user.target.wants/cairn-agent-snaps.service").link,
        "../cairn-agent-snaps.service"
    );

    let report: Value = serde_json::from_slice(
        &std::fs::read(work.path().join("out/snaps.manifest.json")).expect("report"),
    )
    .expect("json");
    let reported: Vec<(&str, &str, &str, bool)> = report["snaps"]
        .as_array()
        .expect("snaps in the report")
        .iter()
        .map(|s| {
            (
                s["key"].as_str().expect("key"),
                s["name"].as_str().expect("name"),
                s["revision"].as_str().expect("revision"),
                s["asserted"].as_bool().expect("asserted"),
            )
        })
        .collect();
    assert_eq!(
        reported,
        [
            ("snap[2]", "snapd", "23545", true),
            ("snap[1]", "core22", "1748", true),
            ("snap[0]", "hello", "x1", false)
        ]
    );
    assert_eq!(report["snaps"][2]["confinement"], "classic");
    assert_eq!(report["snaps"][1]["sha3_384"], set.core.sha3_384.as_str());

    // The same inputs give the same bytes.
    let again = tempfile::tempdir().expect("tempdir");
    assert_ok(&build(&profile, again.path()), "second build");
    assert_eq!(
        std::fs::read(work.path().join("out/snaps.tar")).expect("tar"),
        std::fs::read(again.path().join("out/snaps.tar")).expect("tar")
    );
}

/// Builds `entries` on `base` and expects exit 2 with `needles` in stderr and no output at all.
fn refused(set: &Set, base: &Pushed, entries: &str, needles: &[&str]) {
    let profile = profile(set, base, entries, "refused");
    let work = tempfile::tempdir().expect("tempdir");
    let o = build(&profile, work.path());
    let text = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    for n in needles {
        assert!(text.contains(n), "`{n}` not in: {text}");
    }
    let out = work.path().join("out");
    let left = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "a refused build wrote into {}", out.display());
}

#[test]
fn a_snap_whose_digest_does_not_match_its_pin_is_refused() {
    let set = snap_set();
    let base = snapd_rock(true);
    let d = set.dir.path();
    let wrong = BuiltSnap {
        sha3_384: set.core.sha3_384.clone(),
        ..set.snapd.clone()
    };
    let entries = profile_entry(d, &wrong, None);
    refused(
        &set,
        &base,
        &entries,
        &[
            "snap[0].file",
            "snaps/snapd.snap",
            &set.snapd.sha3_384,
            &format!("the profile pins {}", set.core.sha3_384),
        ],
    );
}

#[test]
fn an_unasserted_snap_is_refused_unless_the_profile_allows_it() {
    let set = snap_set();
    let base = snapd_rock(true);
    let entries = format!(
        "[[snap]]\nfile = \"snaps/snapd.snap\"\nsha3-384 = \"{}\"\n",
        set.snapd.sha3_384
    );
    refused(
        &set,
        &base,
        &entries,
        &["snap[0].assert", "unasserted = true"],
    );
}

#[test]
fn an_assertion_of_another_snap_is_refused() {
    let set = snap_set();
    let base = snapd_rock(true);
    let d = set.dir.path();
    let other = write_assertion(&set.core, 1748);
    let entries = profile_entry(d, &set.snapd, Some(&other));
    refused(
        &set,
        &base,
        &entries,
        &["snap[0].assert", "no snap-revision assertion for sha3-384"],
    );
}

#[test]
fn a_set_that_cannot_install_offline_is_refused() {
    let set = snap_set();
    let base = snapd_rock(true);
    let d = set.dir.path();
    // The app's base is missing.
    let entries = [
        profile_entry(d, &set.snapd, Some(&write_assertion(&set.snapd, 1))),
        profile_entry(d, &set.app, None),
    ]
    .join("\n");
    refused(
        &set,
        &base,
        &entries,
        &["snap[1]", "needs the base snap `core22`"],
    );
    // snapd's snap is missing.
    let entries = [
        profile_entry(d, &set.core, Some(&write_assertion(&set.core, 1))),
        profile_entry(d, &set.app, None),
    ]
    .join("\n");
    refused(&set, &base, &entries, &["snap[1]", "the snapd snap"]);
}

#[test]
fn snaps_need_an_image_with_snapd() {
    let set = snap_set();
    let base = snapd_rock(false);
    let entries = profile_entry(
        set.dir.path(),
        &set.snapd,
        Some(&write_assertion(&set.snapd, 1)),
    );
    refused(
        &set,
        &base,
        &entries,
        &["[[snap]]", "the image has no snapd"],
    );
}
