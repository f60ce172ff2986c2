//! `cairn-agent update` on a disk image: v1's raw disk (its ESP copied out to a folder, as a node has it mounted
//! at /efi) takes v2's payload that `cairn push` put into the real registry or an OCI layout. What a node relies
//! on: slot B holds v2's bytes and verifies, its GPT entries carry v2's root GUIDs, the ESP has v2's unified
//! kernel image as a counted entry of the next generation, slot A is untouched byte for byte; and every refusal or
//! failure (a corrupt blob, another architecture, a process killed mid-write) leaves a disk that boots v1.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::cairn::{agent_bin, assert_ok, build_args, run_agent, run_cairn, stderr};
use cairn_e2e::fault_proxy::{Fault, FaultProxy};
use cairn_e2e::inspect::{bootable_base, json, report};
use cairn_e2e::registry::{self, Registry};
use cairn_e2e::secure_boot::{KeyPair, der, key_pair, sign_args};
use cairn_e2e::{Compression, Image, LayerBuilder, push_image, write_profile};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One build of the `edge` profile.
struct Built {
    profile: PathBuf,
    out: PathBuf,
    report: Value,
    raw: Vec<u8>,
}

impl Built {
    fn root_hash(&self) -> String {
        self.report["disk"]["root_hash"]
            .as_str()
            .expect("root hash")
            .to_string()
    }

    /// Slot A's root and hash bytes as the build wrote them.
    fn slot_a(&self) -> (Vec<u8>, Vec<u8>) {
        let disk = &self.report["disk"];
        let len = |k: &str| disk["slot"][k]["bytes"].as_u64().expect("bytes") as usize;
        let off = |name: &str| {
            partition(&self.report, name)["offset"]
                .as_u64()
                .expect("offset") as usize
        };
        let (r, v) = (off("root-a"), off("root-a-verity"));
        (
            self.raw[r..r + len("root")].to_vec(),
            self.raw[v..v + len("verity")].to_vec(),
        )
    }
}

fn partition(report: &Value, name: &str) -> Value {
    report["disk"]["partition_table"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .clone()
}

/// v1 and v2 of `edge`: the same base, an app file that differs, so the roots differ.
struct Versions {
    work: tempfile::TempDir,
    v1: Built,
    v2: Built,
}

fn versions(registry: &Registry, prefix: &str) -> Versions {
    versions_signed(registry, prefix, &[None, None])
}

/// v1 and v2 of `edge`, each signed with its key when one is given.
fn versions_signed(registry: &Registry, prefix: &str, keys: &[Option<&KeyPair>; 2]) -> Versions {
    let image = |l: &LayerBuilder| Image::builder().layer_from(l, Compression::Gzip).build();
    let base = push_image(
        registry,
        &format!("{prefix}/base"),
        "v1",
        &image(&bootable_base()),
    );
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let one = |version: &str, fill: u8, key: Option<&KeyPair>| {
        let app = push_image(
            registry,
            &format!("{prefix}/app"),
            version,
            &image(&LayerBuilder::new().file("opt/app", 0o755, vec![fill; 300_000])),
        );
        let dir = work.path().join(version);
        std::fs::create_dir_all(&dir).expect("dir");
        let profile = write_profile(
            &dir,
            "edge",
            &base.reference_by_digest,
            &[&app.reference_by_digest],
            "[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\"]\n",
        );
        let text = std::fs::read_to_string(&profile).expect("profile");
        std::fs::write(
            &profile,
            text.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
        )
        .expect("profile");
        let out = dir.join("out");
        build_signed(&profile, &out, &work.path().join("cache"), key);
        Built {
            report: report(&out, "edge"),
            raw: std::fs::read(out.join("edge.raw")).expect("raw"),
            profile,
            out,
        }
    };
    let v1 = one("1.0.0", 1, keys[0]);
    let v2 = one("2.0.0", 2, keys[1]);
    assert_ne!(v1.root_hash(), v2.root_hash());
    Versions { work, v1, v2 }
}

/// `cairn build`, signed with `key` when given.
fn build_signed(profile: &Path, out: &Path, cache: &Path, key: Option<&KeyPair>) {
    let mut args = build_args(profile, out, cache);
    if let Some(pair) = key {
        args.extend(sign_args(pair));
    }
    assert_ok(
        &run_cairn(args, &[]),
        &format!("build {}", profile.display()),
    );
}

/// `cairn push PROFILE TARGET --out OUT`: the pushed reference (`...@sha256:...`).
fn push(b: &Built, target: &str) -> String {
    let o = run_cairn(
        [
            OsStr::new("--message-format"),
            OsStr::new("json"),
            OsStr::new("push"),
            b.profile.as_os_str(),
            OsStr::new(target),
            OsStr::new("--out"),
            b.out.as_os_str(),
        ],
        &[],
    );
    assert_ok(&o, "push");
    let digest = json(&o, "push")["push"]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    format!("{target}@{digest}")
}

/// A node's disk: a copy of v1's raw, its ESP copied out with mtools, and a root folder for /var/lib/cairn.
struct Node {
    dir: PathBuf,
    disk: PathBuf,
    esp: PathBuf,
    root: PathBuf,
    cmdline: String,
}

fn node(v: &Versions, name: &str) -> Node {
    let dir = v.work.path().join(name);
    let (esp, root) = (dir.join("esp"), dir.join("root"));
    std::fs::create_dir_all(&esp).expect("esp");
    std::fs::create_dir_all(&root).expect("root");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, &v.v1.raw).expect("disk");
    let offset = partition(&v.v1.report, "esp")["offset"]
        .as_u64()
        .expect("offset");
    let o = Command::new("mcopy")
        .arg("-s")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", disk.display()))
        .arg("::*")
        .arg(&esp)
        .output()
        .expect("mcopy (apt-get install -y mtools)");
    assert!(
        o.status.success(),
        "mcopy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Node {
        cmdline: format!("console=ttyS0 cairn.verity={}", v.v1.root_hash()),
        dir,
        disk,
        esp,
        root,
    }
}

impl Node {
    fn args(&self, source: &str) -> Vec<String> {
        vec![
            "update".into(),
            source.into(),
            "--disk".into(),
            self.disk.display().to_string(),
            "--esp".into(),
            self.esp.display().to_string(),
            "--cmdline".into(),
            self.cmdline.clone(),
            "--root".into(),
            self.root.display().to_string(),
        ]
    }

    fn update(&self, source: &str) -> Output {
        run_agent(self.args(source), &[])
    }

    /// `cairn-agent status` of this node, with its slots.
    fn status(&self) -> Value {
        let file = self.root.join("var/lib/cairn/status.json");
        if !file.exists() {
            std::fs::create_dir_all(file.parent().expect("dir")).expect("dir");
            std::fs::write(&file, "{\"ready\": true}\n").expect("status");
        }
        let o = run_agent(
            [
                "status",
                "--root",
                &self.root.display().to_string(),
                "--disk",
                &self.disk.display().to_string(),
                "--esp",
                &self.esp.display().to_string(),
                "--cmdline",
                &self.cmdline,
            ],
            &[],
        );
        ok_json(&o, "status")
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.esp.join("EFI/Linux"))
            .expect("entries")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The GPT as sfdisk reads it.
    fn table(&self) -> Vec<Value> {
        let o = Command::new("sfdisk")
            .arg("--json")
            .arg(&self.disk)
            .output()
            .expect("sfdisk");
        assert!(
            o.status.success(),
            "sfdisk: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).expect("sfdisk json");
        v["partitiontable"]["partitions"]
            .as_array()
            .expect("partitions")
            .clone()
    }

    fn bytes(&self, report: &Value, slot_of: &str, len: usize) -> Vec<u8> {
        let off = partition(report, slot_of)["offset"]
            .as_u64()
            .expect("offset") as usize;
        let disk = std::fs::read(&self.disk).expect("disk");
        disk[off..off + len].to_vec()
    }
}

/// What v1 boots: slot A's bytes as built, its entry alone, and the GPT as built but slot B's (the only part an
/// update may leave changed, named `_empty`).
fn assert_boots_v1(v: &Versions, n: &Node, what: &str) {
    let (root, verity) = v.v1.slot_a();
    assert!(
        n.bytes(&v.v1.report, "root-a", root.len()) == root,
        "{what}: slot A's root changed"
    );
    assert!(
        n.bytes(&v.v1.report, "root-a-verity", verity.len()) == verity,
        "{what}: slot A's hash tree changed"
    );
    assert_eq!(n.entries(), ["cairn-1-a.efi"], "{what}: the entries");
    let parts = n.table();
    assert_eq!(parts[1]["name"], "root-a", "{what}");
    for p in &parts[3..5] {
        assert_eq!(
            p["name"], "_empty",
            "{what}: slot B is not named empty: {p}"
        );
    }
}

fn digest_of(reference: &str) -> &str {
    reference.rsplit('@').next().expect("digest")
}

fn ok_json(o: &Output, what: &str) -> Value {
    assert_ok(o, what);
    json(o, what)
}

#[test]
fn a_node_updates_from_a_registry_and_an_oci_layout_and_refuses_what_does_not_fit() {
    let registry = registry::shared();
    let v = versions(registry, "e2e/update");
    let repo = format!("{}/e2e/update/edge", registry.addr());
    let pushed = push(&v.v2, &repo);
    let layout = v.work.path().join("layout");
    let from_layout = push(&v.v2, &format!("oci-layout:{}", layout.display()));
    assert_eq!(
        digest_of(&pushed),
        digest_of(&from_layout),
        "one payload, one digest"
    );

    // From the registry (plain HTTP: it is on the loopback).
    let n = node(&v, "registry");
    let t = Instant::now();
    let o = n.update(&pushed);
    let took = t.elapsed();
    let out = ok_json(&o, "update from the registry");
    assert_eq!(out["written"], true);
    assert_eq!(out["version"], "2.0.0");
    assert_eq!(out["slot"], "b");
    assert_eq!(out["generation"], 2);
    assert_eq!(out["root_hash"], v.v2.root_hash());
    let log = stderr(&o);
    assert!(log.contains("slot b verifies"), "{log}");
    eprintln!("update applied in {} ms", took.as_millis());

    // Slot B holds v2's bytes; slot A still v1's.
    let (root2, verity2) = v.v2.slot_a();
    let parts = n.table();
    let off = |i: usize| parts[i]["start"].as_u64().expect("start") as usize * 512;
    let disk = std::fs::read(&n.disk).expect("disk");
    assert!(
        disk[off(3)..off(3) + root2.len()] == root2[..],
        "slot B's root is v2's"
    );
    assert!(
        disk[off(4)..off(4) + verity2.len()] == verity2[..],
        "slot B's tree is v2's"
    );
    let (root1, verity1) = v.v1.slot_a();
    assert!(
        disk[off(1)..off(1) + root1.len()] == root1[..],
        "slot A untouched"
    );
    assert!(
        disk[off(2)..off(2) + verity1.len()] == verity1[..],
        "slot A's tree untouched"
    );
    // Its GPT entries: v2's root GUIDs (the root hash's halves), the slot's names.
    let hash2 = v.v2.root_hash();
    let guid = |h: &str| {
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
        .to_uppercase()
    };
    assert_eq!(parts[3]["name"], "root-b");
    assert_eq!(parts[3]["uuid"], guid(&hash2[..32]));
    assert_eq!(parts[4]["name"], "root-b-verity");
    assert_eq!(parts[4]["uuid"], guid(&hash2[32..]));
    assert_eq!(parts[1]["uuid"], guid(&v.v1.root_hash()[..32]));

    // The ESP: v2's UKI, byte for byte the one v2's build made, counted and of the next generation.
    assert_eq!(n.entries(), ["cairn-1-a.efi", "cairn-2-b+3.efi"]);
    let uki = std::fs::read(n.esp.join("EFI/Linux/cairn-2-b+3.efi")).expect("entry");
    assert_eq!(
        sha256(&uki),
        format!(
            "sha256:{}",
            v.v2.report["disk"]["boot"]["uki"]["sha256"]
                .as_str()
                .unwrap()
        )
    );
    let about = cairn_profile::uki::About::read(&mut std::io::Cursor::new(&uki)).expect("the UKI");
    assert_eq!(
        about.os_release_value("PRETTY_NAME").as_deref(),
        Some("edge 2.0.0")
    );
    assert!(
        about.cmdline.contains(&format!("cairn.verity={hash2}")),
        "{}",
        about.cmdline
    );
    let leftovers: Vec<_> = walk(&n.esp)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("cairn-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Again: it is already the next boot; nothing is written.
    let before = std::fs::read(&n.disk).expect("disk");
    let out = ok_json(&n.update(&pushed), "the same update again");
    assert_eq!(out["written"], false);
    assert_eq!(out["generation"], 2);
    assert!(
        std::fs::read(&n.disk).expect("disk") == before,
        "a second update wrote to the disk"
    );
    assert_eq!(n.entries(), ["cairn-1-a.efi", "cairn-2-b+3.efi"]);

    // Booted into v2 once (systemd-boot counted a try: `+2-1`), not yet good: no update until it is.
    let mut trial = Node {
        cmdline: format!("console=ttyS0 cairn.verity={hash2}"),
        ..node(&v, "trial")
    };
    trial.disk = n.disk.clone();
    let entries = trial.esp.join("EFI/Linux");
    std::fs::remove_dir_all(&trial.esp).expect("esp");
    copy_tree(&n.esp, &trial.esp);
    std::fs::rename(
        entries.join("cairn-2-b+3.efi"),
        entries.join("cairn-2-b+2-1.efi"),
    )
    .expect("count a try");
    let v1_ref = push(&v.v1, &repo);
    let o = trial.update(&v1_ref);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("the running version (edge 2.0.0) is still on trial (cairn-2-b+2-1.efi)"),
        "{e}"
    );
    assert!(
        std::fs::read(&n.disk).expect("disk") == before,
        "a refusal wrote to the disk"
    );

    // The running version itself: nothing to do.
    let mut same = node(&v, "same");
    same.cmdline = format!("cairn.verity={}", v.v1.root_hash());
    let out = ok_json(&same.update(&v1_ref), "update to the running version");
    assert_eq!(out["written"], false);
    assert_boots_v1(&v, &same, "the running version");

    // From the OCI layout: the same outcome.
    let l = node(&v, "layout");
    let out = ok_json(&l.update(&from_layout), "update from the layout");
    assert_eq!(out["slot"], "b");
    assert!(
        std::fs::read(&l.disk).expect("disk") == std::fs::read(&n.disk).expect("disk"),
        "the same disk"
    );
    assert_eq!(l.entries(), ["cairn-1-a.efi", "cairn-2-b+3.efi"]);

    // Status: both slots, what boots next, no rollback yet.
    let status = l.status();
    let slots = &status["slots"];
    assert_eq!(slots[0]["slot"], "a");
    assert_eq!(slots[0]["partition"], "root-a");
    assert_eq!(slots[0]["running"], true);
    assert_eq!(slots[0]["good"], true);
    assert_eq!(slots[0]["title"], "edge 1.0.0");
    assert_eq!(slots[0]["next_boot"], false);
    assert_eq!(slots[1]["partition"], "root-b");
    assert_eq!(slots[1]["root_hash"], hash2);
    assert_eq!(slots[1]["tries_left"], 3);
    assert_eq!(slots[1]["good"], false);
    assert_eq!(slots[1]["next_boot"], true);
    assert!(status["last_rollback"].is_null(), "{status}");

    // v2's tries spent (systemd-boot renamed its entry at each boot, none marked good): v1 boots again, status
    // names the rollback, and v2 is not applied again unless asked.
    let entries = l.esp.join("EFI/Linux");
    std::fs::rename(
        entries.join("cairn-2-b+3.efi"),
        entries.join("cairn-2-b+0-3.efi"),
    )
    .expect("spend the tries");
    let status = l.status();
    assert_eq!(status["slots"][0]["next_boot"], true, "{status}");
    let rollback = &status["last_rollback"];
    assert_eq!(rollback["title"], "edge 2.0.0");
    assert_eq!(rollback["root_hash"], hash2);
    assert_eq!(
        rollback["reason"],
        "edge 2.0.0 was not marked good in 3 boots (cairn-2-b+0-3.efi)"
    );
    let o = l.update(&from_layout);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("edge 2.0.0 was rolled back on this node (edge 2.0.0 was not marked good in 3 boots (cairn-2-b+0-3.efi)): give --allow-rolled-back"),
        "{e}"
    );
    let mut args = l.args(&from_layout);
    args.push("--allow-rolled-back".into());
    let out = ok_json(&run_agent(args, &[]), "update with --allow-rolled-back");
    assert_eq!(out["written"], true);
    assert_eq!(out["generation"], 3);
    assert_eq!(l.entries(), ["cairn-1-a.efi", "cairn-3-b+3.efi"]);
    // The rollback stays on record once its entry is gone.
    let recorded: Value = serde_json::from_slice(
        &std::fs::read(l.root.join("var/lib/cairn/rollbacks.json")).expect("rollbacks"),
    )
    .expect("json");
    assert_eq!(recorded["rolled_back"][0]["root_hash"], hash2);
    assert_eq!(l.status()["last_rollback"]["root_hash"], hash2);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("dir").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_corrupt_blob_a_broken_connection_and_a_killed_update_leave_v1_booting() {
    let registry = registry::shared();
    let v = versions(registry, "e2e/update-faults");
    let repo = format!("{}/e2e/update-faults/edge", registry.addr());
    let pushed = push(&v.v2, &repo);
    let manifest: Value = {
        let layout = v.work.path().join("layout");
        let r = push(&v.v2, &format!("oci-layout:{}", layout.display()));
        let d = digest_of(&r).trim_start_matches("sha256:").to_string();
        serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(d)).expect("manifest"),
        )
        .expect("json")
    };
    let layer = |kind: &str| {
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .find(|l| l["mediaType"] == format!("application/vnd.cairn.update.{kind}.v1"))
            .expect("layer")["digest"]
            .as_str()
            .expect("digest")
            .to_string()
    };
    let root_digest = layer("root");

    // A connection reset in the middle of the root: retried from the start, and the update goes through.
    let proxy = FaultProxy::start(registry);
    proxy.inject(&root_digest, Fault::ResetAfter(100_000), 1);
    let via_proxy = format!(
        "{}/e2e/update-faults/edge@{}",
        proxy.addr(),
        digest_of(&pushed)
    );
    let n = node(&v, "reset");
    let out = ok_json(&n.update(&via_proxy), "update through a reset");
    assert_eq!(out["written"], true);
    assert_eq!(
        proxy.requests_to(&root_digest).len(),
        2,
        "the root blob was asked for again"
    );

    // The process killed while the root streams in (a power cut): v1 still boots, the next update succeeds.
    proxy.clear();
    proxy.inject(&root_digest, Fault::StallAfter(200_000), 1);
    let k = node(&v, "killed");
    let mut child = Command::new(agent_bin())
        .args(k.args(&via_proxy))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.requests_to(&root_digest).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the root blob was never asked for"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The stall holds the body after 200 kB: give the agent time to write them.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("kill");
    let _ = child.wait();
    // It was killed mid-write: slot B starts with v2's first bytes, and nothing names it.
    let (root2, _) = v.v2.slot_a();
    let start = k.table()[3]["start"].as_u64().expect("start") as usize * 512;
    let disk = std::fs::read(&k.disk).expect("disk");
    assert!(
        disk[start..start + 100_000] == root2[..100_000],
        "the kill came before any write"
    );
    assert_boots_v1(&v, &k, "killed mid-write");
    proxy.clear();
    let out = ok_json(&k.update(&via_proxy), "the update after the kill");
    assert_eq!(out["written"], true);
    assert_eq!(k.entries(), ["cairn-1-a.efi", "cairn-2-b+3.efi"]);

    // A corrupt blob in the registry: refused by its digest, nothing boots it.
    let c = node(&v, "corrupt");
    registry.corrupt_blob(&root_digest);
    let o = c.update(&pushed);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains(&format!("the root blob {root_digest} has digest sha256:")),
        "{e}"
    );
    assert!(e.contains("refused"), "{e}");
    assert_boots_v1(&v, &c, "a corrupt blob");
}

#[test]
fn bad_sources_and_payloads_are_refused_before_the_disk_is_touched() {
    let registry = registry::shared();
    let v = versions(registry, "e2e/update-refusals");
    let n = node(&v, "refusals");
    let before = std::fs::read(&n.disk).expect("disk");
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for (source, code, says) in [
        (
            format!("{}/e2e/x:v2", registry.addr()),
            2,
            "named by its digest",
        ),
        (
            format!("{}/e2e/update-refusals/none@{d}", registry.addr()),
            1,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("oci-layout:{}@{d}", n.dir.join("nowhere").display()),
            1,
            "No such file",
        ),
        // A rock is not an update.
        (
            format!(
                "{}/e2e/update-refusals/base@{}",
                registry.addr(),
                v.v1.report["rocks"][0]["manifest_digest"]
                    .as_str()
                    .expect("digest")
            ),
            2,
            "not a cairn update",
        ),
    ] {
        let o = n.update(&source);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{source}: {e}");
        assert!(e.starts_with("cairn-agent: update: "), "{e}");
        assert!(e.contains(says), "{source}: {e}");
    }
    let o = run_agent(["update", "--disk"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--disk needs a value"),
        "{}",
        stderr(&o)
    );
    let mut other = node(&v, "not-cairn");
    other.cmdline = "console=ttyS0".into();
    let o = other.update(&format!("oci-layout:/x@{d}"));
    assert!(
        stderr(&o).contains("no cairn.verity=ROOTHASH"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read(&n.disk).expect("disk") == before,
        "a refusal wrote to the disk"
    );
    assert_boots_v1(&v, &n, "refusals");
}

/// A node built with a Secure Boot key takes only updates signed with that key: its root carries the certificate,
/// and an update whose UKI another key signed, or nobody, is refused before the disk is touched.
#[test]
fn an_update_must_be_signed_with_the_running_images_key() {
    let registry = registry::shared();
    let keys = tempfile::tempdir().expect("tempdir");
    let db = key_pair(keys.path(), "db");
    let other = key_pair(keys.path(), "other");
    let v = versions_signed(registry, "e2e/update-signed", &[Some(&db), Some(&db)]);
    // v2 as three builds: signed with v1's key, with another, and not at all.
    let variant = |name: &str, key: Option<&KeyPair>| {
        let out = v.work.path().join(name);
        build_signed(&v.v2.profile, &out, &v.work.path().join("cache"), key);
        let layout = v.work.path().join(format!("{name}-layout"));
        let built = Built {
            report: report(&out, "edge"),
            raw: Vec::new(),
            profile: v.v2.profile.clone(),
            out,
        };
        push(&built, &format!("oci-layout:{}", layout.display()))
    };
    let by_other = variant("by-other", Some(&other));
    let unsigned = variant("unsigned", None);
    let by_db = push(
        &v.v2,
        &format!("oci-layout:{}", v.work.path().join("db-layout").display()),
    );
    assert_eq!(v.v1.report["disk"]["secure_boot"]["signed"], true);
    // The running image's certificate, as its root has it.
    let n = node(&v, "signed");
    let cert_in_root = n.root.join("usr/lib/cairn/secure-boot/db.der");
    std::fs::create_dir_all(cert_in_root.parent().expect("parent")).expect("dir");
    let der = der(&db.1);
    std::fs::write(&cert_in_root, &der).expect("cert");
    for (source, why) in [
        (
            &by_other,
            "it is signed by another key (issuer CN=cairn test other",
        ),
        (&unsigned, "not signed"),
    ] {
        let o = n.update(source);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains("the payload's unified kernel image is refused: ") && e.contains(why),
            "{e}"
        );
        assert!(e.contains("usr/lib/cairn/secure-boot/db.der"), "{e}");
        assert_boots_v1(&v, &n, why);
    }
    let out = n.update(&by_db);
    assert_ok(&out, "the update signed with the running image's key");
    assert!(
        stderr(&out).contains("signed by the running image's key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(n.entries(), ["cairn-1-a.efi", "cairn-2-b+3.efi"]);
    let uki = std::fs::read(n.esp.join("EFI/Linux/cairn-2-b+3.efi")).expect("uki");
    cairn_profile::authenticode::verify(&uki, &der).expect("the UKI written verifies");
}
