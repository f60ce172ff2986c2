//! Updates booted under QEMU, on the real node base. v1 pulls v2 from a TLS registry (the image trusts the test's
//! CA) that the guest reaches only through an explicit user-network forward, 10.0.2.100:5000 to the host's
//! loopback; the source comes on a small second disk, as a site's own tooling would hand it over, and a unit of the
//! test's profile runs `cairn-agent update SOURCE --reboot`, which writes slot B and reboots. systemd-boot starts v2's counted entry, the initrd finds slot B by the GUIDs the update gave it,
//! the node's /var (its first-boot provisioning) is kept, and once the agent's phases are done
//! (boot-complete.target) systemd-bless-boot marks the entry good: its counter is gone. v3, whose own health check
//! fails, comes from an OCI layout on removable media; it is tried three times and the node boots v2 again by
//! itself, refusing v3 from then on. Before that, v3 with a corrupt root blob is refused and v2 keeps running, and a
//! power cut (QEMU killed) while v3 is being written leaves v2 booting. Last, a slot on trial whose root does not
//! verify makes the initrd reboot (a spent try) rather than power off.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_e2e::cairn::{assert_ok, run_cairn};
use cairn_e2e::qemu::Vm;
use cairn_e2e::rocks::{build_profile, node_base, run};
use cairn_e2e::write_profile;
use serde_json::Value;

/// The test's glue, as a site would write its own: at boot, a disk labelled CAIRNUPD holding a `source` file is
/// mounted (once udev shows it) and its update applied.
const UPDATE_UNIT: &str = "[Unit]\nDescription=apply the update on removable media\nAfter=cairn-agent.service local-fs.target network-online.target\nWants=network-online.target\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'for i in $(seq 60); do [ -e /dev/disk/by-label/CAIRNUPD ] && break; sleep 1; done; mkdir -p /run/upd && mount -o ro /dev/disk/by-label/CAIRNUPD /run/upd && exec /usr/lib/cairn/cairn-agent update \"$(cat /run/upd/source)\" --reboot'\nExecStopPost=/usr/lib/cairn/cairn-agent status\nStandardOutput=journal+console\nStandardError=journal+console\n\n[Install]\nWantedBy=multi-user.target\n";

/// v3's own health check, the way systemd documents one, and it fails.
const FAILING_HEALTH_UNIT: &str = "[Unit]\nDescription=edge health check\nBefore=boot-complete.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo edge health: failing; exit 1'\nStandardOutput=journal+console\n\n[Install]\nRequiredBy=boot-complete.target\n";

fn profile(dir: &Path, base: &str, version: &str, healthy: bool, ca: &str) -> std::path::PathBuf {
    let unit = serde_json::to_string(UPDATE_UNIT).expect("toml string");
    let ca = serde_json::to_string(ca).expect("toml string");
    let (enable, health) = if healthy {
        (String::new(), String::new())
    } else {
        (
            ", \"edge-health.service\"".to_string(),
            format!(
                "[[file]]\npath = \"/etc/systemd/system/edge-health.service\"\ncontent = {}\nmode = \"0644\"\n",
                serde_json::to_string(FAILING_HEALTH_UNIT).expect("toml string")
            ),
        )
    };
    let p = write_profile(
        dir,
        "edge",
        base,
        &[],
        &format!(
            "[system]\nhostname = \"edge-{{machine-id:6}}\"\nkernel-cmdline = [\"console=ttyS0\"]\nservices = {{ enable = [\"cairn-test-update.service\"{enable}] }}\n[image]\nformats = [\"raw\"]\n[[file]]\npath = \"/etc/systemd/system/cairn-test-update.service\"\ncontent = {unit}\nmode = \"0644\"\n[[file]]\npath = \"/etc/edge-release\"\ncontent = \"{version}\\n\"\n[[file]]\npath = \"/etc/ssl/certs/ca-certificates.crt\"\ncontent = {ca}\nmode = \"0644\"\n{health}"
        ),
    );
    let text = std::fs::read_to_string(&p).expect("profile");
    std::fs::write(
        &p,
        text.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
    )
    .expect("profile");
    p
}

fn entries(disk: &Path, esp_offset: u64) -> Vec<String> {
    let o = Command::new("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg("::/EFI/Linux")
        .output()
        .expect("mdir (apt-get install -y mtools)");
    assert!(
        o.status.success(),
        "mdir: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(str::to_string))
        .filter(|n| n.ends_with(".efi"))
        .collect();
    names.sort();
    names
}

/// `cairn push` of a build to an OCI layout on a new ext4 disk image labelled CAIRNUPD, with the `source` file the
/// glue unit reads.
/// An ext4 disk image labelled CAIRNUPD holding the folder `media` (with the `source` file the glue unit reads).
fn media_disk(work: &Path, name: &str, media: &Path) -> std::path::PathBuf {
    let size: u64 = walk_size(media);
    let img = work.join(format!("{name}.img"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "CAIRNUPD", "-d"])
        .arg(media)
        .arg(&img)
        .arg(format!("{}k", size / 1024 + 65536)));
    img
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("stat");
            if m.is_dir() {
                walk_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// A test CA and a certificate for the guest's view of the registry, 10.0.2.100, signed by it (openssl).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.join("ca.key"),
        dir.join("ca.pem"),
        dir.join("registry.key"),
        dir.join("registry.csr"),
        dir.join("registry.pem"),
        dir.join("ext.cnf"),
    );
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=cairn e2e CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=10.0.2.100",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    std::fs::write(
        &ext,
        "subjectAltName=IP:10.0.2.100\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    let pem = std::fs::read_to_string(&ca).expect("ca");
    (cert, key, pem)
}

/// `cairn push` of a build: the JSON it prints.
fn push(profile: &Path, out: &Path, target: &str) -> Value {
    let o = run_cairn(
        [
            OsStr::new("--message-format"),
            OsStr::new("json"),
            OsStr::new("push"),
            profile.as_os_str(),
            OsStr::new(target),
            OsStr::new("--out"),
            out.as_os_str(),
        ],
        &[],
    );
    assert_ok(&o, "push");
    let pushed: Value = serde_json::from_slice(&o.stdout).expect("json");
    // The payload's parts (`--nocapture` shows them): the README's figures.
    for part in pushed["push"]["parts"].as_array().expect("parts") {
        eprintln!("payload: {} {} bytes", part["part"], part["size"]);
    }
    pushed
}

/// `cairn push` of a build to an OCI layout on a new CAIRNUPD disk, with the `source` naming it.
fn media(work: &Path, name: &str, profile: &Path, out: &Path) -> std::path::PathBuf {
    let media = work.join(name);
    let layout = media.join("layout");
    let pushed = push(profile, out, &format!("oci-layout:{}", layout.display()));
    let digest = pushed["push"]["digest"].as_str().expect("digest");
    std::fs::write(
        media.join("source"),
        format!("oci-layout:/run/upd/layout@{digest}"),
    )
    .expect("source");
    media_disk(work, name, &media)
}

#[test]
fn a_node_updates_from_a_tls_registry_keeps_a_good_version_and_falls_back_from_a_bad_one() {
    let base = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (cert, key, ca) = certificates(work.path());
    let build = |version: &str, healthy: bool| {
        let dir = work.path().join(version);
        std::fs::create_dir_all(&dir).expect("dir");
        let p = profile(&dir, &base, version, healthy, &ca);
        let out = dir.join("out");
        build_profile(&p, &out, &work.path().join("cache"));
        let report: Value =
            serde_json::from_slice(&std::fs::read(out.join("edge.manifest.json")).expect("report"))
                .expect("json");
        (p, out, report)
    };
    let (_, out1, report1) = build("1.0.0", true);
    let (p2, out2, report2) = build("2.0.0", true);
    let (p3, out3, _) = build("3.0.0", false);
    let hash2 = report2["disk"]["root_hash"]
        .as_str()
        .expect("hash")
        .to_string();
    // v2 in the registry, pushed over loopback HTTP; a second registry process serves the same storage over
    // TLS, the guest's only way out: 10.0.2.100:5000 forwarded to it.
    let registry = cairn_e2e::registry::shared();
    let repo = format!("{}/e2e/update-boot/edge", registry.addr());
    let pushed = push(&p2, &out2, &repo);
    let digest = pushed["push"]["digest"].as_str().expect("digest");
    let tls = cairn_e2e::registry::Registry::serve_tls(&registry.storage_dir(), &cert, &key);
    let machine = || cairn::boot::Machine {
        guest_forwards: vec![("10.0.2.100:5000".into(), tls.port())],
        ..cairn::boot::Machine::default()
    };
    let source2 = work.path().join("source2");
    std::fs::create_dir_all(&source2).expect("dir");
    std::fs::write(
        source2.join("source"),
        format!("10.0.2.100:5000/e2e/update-boot/edge@{digest}"),
    )
    .expect("source");
    let media2 = media_disk(work.path(), "media2", &source2);
    let media3 = media(work.path(), "media3", &p3, &out3);
    // The same media with one byte of v3's root flipped.
    let corrupt = work.path().join("corrupt");
    run(Command::new("cp")
        .arg("-a")
        .arg(work.path().join("media3"))
        .arg(&corrupt));
    let root_blob = {
        let source = std::fs::read_to_string(corrupt.join("source")).expect("source");
        let digest = source
            .rsplit("@sha256:")
            .next()
            .expect("digest")
            .to_string();
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(corrupt.join("layout/blobs/sha256").join(&digest)).expect("manifest"),
        )
        .expect("json");
        manifest["layers"][0]["digest"]
            .as_str()
            .expect("root digest")
            .to_string()
    };
    let blob = corrupt
        .join("layout/blobs/sha256")
        .join(root_blob.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).expect("blob");
    bytes[1 << 20] ^= 1;
    std::fs::write(&blob, bytes).expect("blob");
    let corrupt_media = media_disk(work.path(), "corrupt", &corrupt);

    let disk = out1.join("edge.raw");
    let esp_offset = report1["disk"]["partition_table"]["partitions"][0]["offset"]
        .as_u64()
        .expect("esp offset");
    let bound = Duration::from_secs(420);

    // v1: provisioned, then the update from the registry, then a reboot (QEMU runs with -no-reboot: it exits).
    let mut vm = Vm::boot_machine(&disk, machine(), Some(&media2));
    vm.wait_for("cairn-agent: ready ", bound);
    let (line, took) = vm.wait_for_text("is the next boot", bound);
    eprintln!(
        "v1: QEMU start to the update written in {:.1} s: {line}",
        took.as_secs_f64()
    );
    assert!(line.contains("edge 2.0.0 is the next boot"), "{line}");
    assert!(
        vm.wait_exit(Duration::from_secs(180)),
        "v1 did not reboot after the update"
    );
    let serial = vm.serial();
    assert!(serial.contains("slot b verifies"), "{serial}");
    assert!(
        serial.contains(&format!(
            "fetching 10.0.2.100:5000/e2e/update-boot/edge@{digest}"
        )),
        "{serial}"
    );
    // Every request came through the forward to the TLS registry: the manifest and each blob, once.
    let log = tls.requests();
    assert!(
        log.iter()
            .any(|r| r.method == "GET" && r.uri.ends_with(&format!("/manifests/{digest}"))),
        "{log:?}"
    );
    for line in serial
        .lines()
        .filter(|l| l.contains("cairn-agent: update: "))
    {
        eprintln!("v1: {}", line.trim());
    }
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-1-a.efi", "cairn-2-b+3.efi"]
    );

    // v2: booted from slot B by its counted entry, the update already running, provisioning kept, marked good.
    let mut vm = Vm::boot_machine(&disk, machine(), Some(&media2));
    let (init, _) = vm.wait_for("cairn-init: ready ", bound);
    assert!(!init.contains("failed"), "{init}");
    let (ready, took) = vm.wait_for_json("cairn-agent: ready ", bound);
    eprintln!(
        "v2: QEMU start to `cairn-agent: ready` in {:.1} s",
        took.as_secs_f64()
    );
    for s in ready["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["phase"] == "system")
    {
        assert_eq!(
            s["outcome"], "skipped",
            "provisioning repeated after the update: {ready}"
        );
    }
    vm.wait_for_text("edge 2.0.0 is already running", bound);
    vm.wait_for_text("cairn: this boot is good", bound);
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "v2 did not power down on ACPI"
    );
    let serial = vm.serial();
    assert!(
        serial.contains(&format!("cairn.verity={hash2}")),
        "v2's command line"
    );
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-1-a.efi", "cairn-2-b.efi"],
        "systemd-bless-boot did not mark v2 good:\n{serial}"
    );

    // v3 with a corrupt root blob: refused by its digest, v2 keeps running (no reboot).
    let mut vm = Vm::boot_with(&disk, None, Some(&corrupt_media));
    let (line, _) = vm.wait_for_text("has digest sha256:", bound);
    assert!(
        line.contains(&format!("the root blob {root_blob} has digest")),
        "{line}"
    );
    assert!(line.contains("refused"), "{line}");
    vm.wait_for_text("\"last_rollback\"", bound);
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "v2 did not power down on ACPI"
    );
    assert!(
        !vm.serial().contains("is the next boot"),
        "a corrupt update was committed"
    );
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-2-b.efi"],
        "after the corrupt blob"
    );

    // A power cut while v3's root is being written (QEMU killed): nothing names the half-written slot, and v2
    // boots as before (the update then starts over).
    let mut vm = Vm::boot_with(&disk, None, Some(&media3));
    vm.wait_for_text("its entry removed, writing edge 3.0.0", bound);
    std::thread::sleep(Duration::from_secs(2));
    vm.power_cut();
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-2-b.efi"],
        "after the power cut"
    );

    // v3, whose own health check fails: written into slot A, tried three times (each boot not good reboots at
    // once), then v2 boots again by itself and refuses v3 from then on.
    let mut vm = Vm::boot_with(&disk, None, Some(&media3));
    let (init, _) = vm.wait_for("cairn-init: ready ", bound);
    assert!(!init.contains("failed"), "v2 after the power cut: {init}");
    vm.wait_for_text("edge 3.0.0 is the next boot", bound);
    assert!(
        vm.wait_exit(Duration::from_secs(180)),
        "v2 did not reboot after the update"
    );
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-2-b.efi", "cairn-3-a+3.efi"]
    );
    for attempt in 1..=3 {
        let mut vm = Vm::boot_with(&disk, None, Some(&media3));
        let (line, took) = vm.wait_for_text("this boot is not good", bound);
        eprintln!(
            "v3 try {attempt}: not good {:.1} s after QEMU started: {line}",
            took.as_secs_f64()
        );
        assert!(
            vm.wait_exit(Duration::from_secs(180)),
            "v3 did not reboot (try {attempt})"
        );
        assert!(
            vm.serial().contains("edge health: failing"),
            "try {attempt}"
        );
    }
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-2-b.efi", "cairn-3-a+0-3.efi"]
    );
    let mut vm = Vm::boot_with(&disk, None, Some(&media3));
    vm.wait_for("cairn-agent: ready ", bound);
    let (line, _) = vm.wait_for_text("was rolled back on this node", bound);
    assert!(
        line.contains("edge 3.0.0 was rolled back on this node"),
        "{line}"
    );
    vm.wait_for_text("\"last_rollback\"", bound);
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "v2 did not power down on ACPI"
    );
    let serial = vm.serial();
    assert!(
        serial.contains(&format!("cairn.verity={hash2}")),
        "v2 again: {serial}"
    );
    assert!(
        serial.contains(
            "\"reason\": \"edge 3.0.0 was not marked good in 3 boots (cairn-3-a+0-3.efi)\""
        ),
        "status names the rollback: {serial}"
    );
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-2-b.efi", "cairn-3-a+0-3.efi"]
    );

    // A slot on trial whose root does not verify (a byte of v3's root flipped on the disk, its entry given its
    // tries back): the initrd refuses it and reboots instead of powering off, so the failure spends a try.
    let root_a = report1["disk"]["partition_table"]["partitions"][1]["offset"]
        .as_u64()
        .expect("offset");
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .expect("open");
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(root_a + 100)).expect("seek");
        f.read_exact(&mut b).expect("read");
        f.seek(SeekFrom::Start(root_a + 100)).expect("seek");
        f.write_all(&[b[0] ^ 1]).expect("write");
    }
    run(Command::new("mren")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg("::/EFI/Linux/cairn-3-a+0-3.efi")
        .arg("::/EFI/Linux/cairn-3-a+3.efi"));
    let mut vm = Vm::boot_with(&disk, None, None);
    let (failed, _) = vm.wait_for("cairn-init: failed ", bound);
    assert!(failed.contains("did not verify"), "{failed}");
    vm.wait_for("cairn-init: rebooting", bound);
    assert!(
        vm.wait_exit(Duration::from_secs(120)),
        "the initrd did not reboot"
    );
    assert_eq!(
        entries(&disk, esp_offset),
        ["cairn-2-b.efi", "cairn-3-a+2-1.efi"],
        "the failed boot did not spend a try"
    );
}
