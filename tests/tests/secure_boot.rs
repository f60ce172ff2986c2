//! Secure Boot, end to end: the node base built with the tests' own key (made here with openssl, as a user would
//! make one), booted under Debian's Secure Boot OVMF (`OVMF_CODE_4M.secboot.fd`, SMM on) with a variable store
//! whose PK, KEK and db are that key's certificate (made here with virt-fw-vars). What users rely on:
//! - the signed image boots to ready, and the node reports Secure Boot on and the UKI it booted;
//! - a UKI with one byte changed is refused (by systemd-boot, through the firmware's check);
//! - an unsigned image, and one signed with another key, are refused by the firmware before anything runs;
//! - two builds with the same key are the same bytes, and the key is nowhere in the outputs;
//! - an update signed with the same key, written by the agent into slot B, boots with Secure Boot on;
//! - a machine in setup mode enrolls the image's own PK, KEK and db from its ESP (systemd-boot's
//!   `secure-boot-enroll force`), resets, and then boots the image with Secure Boot on.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_e2e::cairn::{assert_ok, build_args, run_agent, run_cairn};
use cairn_e2e::qemu::Vm;
use cairn_e2e::rocks::{node_base, run};
use cairn_e2e::secure_boot::{KeyPair, der, key_pair, sign_args};
use cairn_e2e::write_profile;
use sha2::{Digest as _, Sha256};

/// The tools venv rocks/setup-host makes (virt-firmware's virt-fw-vars in it).
const TOOLS_VENV: &str = "/opt/cairn-tools";
/// The owner GUID the variable store's entries carry.
const OWNER: &str = "a0b5f1a2-6f39-4c5f-9d1b-3c7e2d4a5b60";

/// `cairn build` of `profile` into `out`, signed with `key` when given.
fn build(profile: &Path, out: &Path, cache: &Path, key: Option<&KeyPair>) {
    build_enrolling(profile, out, cache, key, "manual")
}

fn build_enrolling(profile: &Path, out: &Path, cache: &Path, key: Option<&KeyPair>, enroll: &str) {
    let mut args = build_args(profile, out, cache);
    if let Some(pair) = key {
        args.extend(sign_args(pair));
        args.extend([OsStr::new("--secure-boot-enroll"), OsStr::new(enroll)]);
    }
    assert_ok(&run_cairn(args, &[]), &format!("build {}", out.display()));
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read")))
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The firmware (or systemd-boot through it) refused to start what the disk holds: OVMF gives up on the disk's
/// boot option with "Access Denied"; systemd-boot prints "Error loading ..." for a UKI it may not start.
fn wait_refused(vm: &mut Vm, what: &str) -> String {
    let bound = Duration::from_secs(240);
    let (line, took) = vm.wait_for_text(what, bound);
    eprintln!(
        "refused {:.1} s after QEMU started: {}",
        took.as_secs_f64(),
        line.trim()
    );
    let serial = vm.serial();
    assert!(
        !serial.contains("Linux version"),
        "a kernel started: {serial}"
    );
    line
}

#[test]
fn the_signed_chain_boots_and_every_break_in_it_is_refused() {
    let pinned = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let w = work.path();
    let db = key_pair(w, "db");
    let other = key_pair(w, "other");
    let (key, cert) = (&db.0, &db.1);
    let profile = write_profile(
        w,
        "secure",
        &pinned,
        &[],
        "[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"raw\"]\n",
    );
    let cache = w.join("cache");
    build(&profile, &w.join("signed"), &cache, Some(&db));
    build(&profile, &w.join("again"), &cache, Some(&db));
    build(&profile, &w.join("unsigned"), &cache, None);
    build(&profile, &w.join("other"), &cache, Some(&other));
    build_enrolling(&profile, &w.join("force"), &cache, Some(&db), "force");
    let disk = w.join("signed/secure.raw");

    // The same profile and key: the same bytes.
    assert_eq!(
        sha256_file(&disk),
        sha256_file(&w.join("again/secure.raw")),
        "two signed builds differ"
    );
    // The report names the certificate, never the key; the image stores the certificate for updates.
    let report_text =
        std::fs::read_to_string(w.join("signed/secure.manifest.json")).expect("report");
    let report: serde_json::Value = serde_json::from_str(&report_text).expect("json");
    let sb = &report["disk"]["secure_boot"];
    let cert_der = der(cert);
    assert_eq!(sb["signed"], true);
    assert_eq!(
        sb["certificate_sha256"],
        hex::encode(Sha256::digest(&cert_der))
    );
    assert_eq!(
        sb["signed_files"],
        serde_json::json!([
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/systemd/systemd-bootx64.efi",
            "EFI/Linux/cairn-1-a.efi"
        ])
    );
    assert_eq!(sb["enroll"], "manual");
    assert_eq!(
        sb["enroll_files"],
        serde_json::json!([
            "loader/keys/cairn/PK.auth",
            "loader/keys/cairn/KEK.auth",
            "loader/keys/cairn/db.auth"
        ])
    );
    assert!(!report_text.contains("PRIVATE KEY"));
    assert!(!report_text.contains(&key.display().to_string()));
    let raw = std::fs::read(&disk).expect("disk");
    let key_der = run(Command::new("openssl")
        .args(["pkey", "-outform", "der", "-in"])
        .arg(key));
    let esp = &report["disk"]["partition_table"]["partitions"][0];
    let (esp_off, esp_len) = (
        esp["offset"].as_u64().expect("offset") as usize,
        esp["size"].as_u64().expect("size") as usize,
    );
    // The key's last 64 bytes (inside its private exponent's CRT values) are nowhere on the ESP.
    assert!(!find(
        &raw[esp_off..esp_off + esp_len],
        &key_der[key_der.len() - 64..]
    ));
    assert!(
        find(&raw[esp_off..esp_off + esp_len], &cert_der),
        "the signatures carry the certificate"
    );
    drop(raw);
    assert_eq!(report["disk"]["secure_boot"]["signed"], true);
    let unsigned: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.join("unsigned/secure.manifest.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(unsigned["disk"]["secure_boot"]["signed"], false);
    // The signed image's root carries its certificate (an update's UKI is checked against it): another root.
    assert_ne!(unsigned["disk"]["root_hash"], report["disk"]["root_hash"]);

    // The variable store: PK, KEK and db are the certificate, Secure Boot on.
    let vars = w.join("vars.fd");
    run(Command::new(format!("{TOOLS_VENV}/bin/virt-fw-vars"))
        .args(["--input", cairn::boot::OVMF_VARS, "--output"])
        .arg(&vars)
        .args(["--secure-boot", "--set-pk", OWNER])
        .arg(cert)
        .args(["--add-kek", OWNER])
        .arg(cert)
        .args(["--add-db", OWNER])
        .arg(cert));
    let machine = || cairn::boot::Machine {
        secure_boot_vars: Some(vars.clone()),
        ..cairn::boot::Machine::default()
    };

    // The signed image boots, and says so.
    let mut vm = Vm::boot_machine(&disk, machine(), None);
    let (ready, took) = vm.wait_for_json("cairn-agent: ready ", Duration::from_secs(420));
    eprintln!(
        "signed, Secure Boot on: QEMU start to `cairn-agent: ready` in {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(ready["image"]["secure_boot"], true, "{ready}");
    assert_eq!(ready["image"]["boot_entry"], "cairn-1-a.efi", "{ready}");
    assert!(
        vm.serial().contains("Secure boot enabled"),
        "the kernel did not see Secure Boot"
    );
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "the guest did not power down on ACPI"
    );

    // An update under Secure Boot: v2, signed with the same key, written into slot B by the agent (on the host, on
    // a copy of the disk, as update.rs does; the node's root holds the certificate, as the image's does) boots
    // from its counted entry with Secure Boot on.
    let v2_profile = w.join("v2.toml");
    std::fs::write(
        &v2_profile,
        std::fs::read_to_string(&profile)
            .expect("profile")
            .replace("version = \"1.0.0\"", "version = \"2.0.0\""),
    )
    .expect("v2 profile");
    build(&v2_profile, &w.join("v2"), &cache, Some(&db));
    let layout = w.join("layout");
    let pushed = run_cairn(
        [
            OsStr::new("--message-format"),
            OsStr::new("json"),
            OsStr::new("push"),
            v2_profile.as_os_str(),
            OsStr::new(&format!("oci-layout:{}", layout.display())),
            OsStr::new("--out"),
            w.join("v2").as_os_str(),
        ],
        &[],
    );
    assert_ok(&pushed, "push v2");
    let digest = cairn_e2e::inspect::json(&pushed, "push")["push"]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let updated = w.join("updated.raw");
    std::fs::copy(w.join("again/secure.raw"), &updated).expect("copy");
    let (esp_dir, node_root) = (w.join("updated-esp"), w.join("updated-root"));
    std::fs::create_dir_all(&esp_dir).expect("esp");
    let image = format!("{}@@{esp_off}", updated.display());
    run(Command::new("mcopy")
        .args(["-s", "-n", "-i", &image, "::*"])
        .arg(&esp_dir));
    let cert_in_root = node_root.join("usr/lib/cairn/secure-boot/db.der");
    std::fs::create_dir_all(cert_in_root.parent().expect("parent")).expect("dir");
    std::fs::write(&cert_in_root, &cert_der).expect("cert");
    let root_hash = report["disk"]["root_hash"].as_str().expect("root hash");
    let o = run_agent(
        [
            "update".to_string(),
            format!("oci-layout:{}@{digest}", layout.display()),
            "--disk".into(),
            updated.display().to_string(),
            "--esp".into(),
            esp_dir.display().to_string(),
            "--cmdline".into(),
            format!("console=ttyS0 cairn.verity={root_hash}"),
            "--root".into(),
            node_root.display().to_string(),
        ],
        &[],
    );
    assert_ok(&o, "update to v2");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("signed by the running image's key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    run(Command::new("mcopy")
        .args(["-o", "-i", &image])
        .arg(esp_dir.join("EFI/Linux/cairn-2-b+3.efi"))
        .arg("::/EFI/Linux/cairn-2-b+3.efi"));
    let mut vm = Vm::boot_machine(&updated, machine(), None);
    let (ready, took) = vm.wait_for_json("cairn-agent: ready ", Duration::from_secs(420));
    eprintln!(
        "v2 from its counted entry, Secure Boot on: `cairn-agent: ready` {:.1} s after QEMU started",
        took.as_secs_f64()
    );
    assert_eq!(ready["image"]["secure_boot"], true, "{ready}");
    assert_eq!(ready["image"]["version"], "2.0.0", "{ready}");
    assert_eq!(ready["image"]["boot_entry"], "cairn-2-b+3.efi", "{ready}");
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "v2 did not power down on ACPI"
    );

    // One byte of the UKI changed (inside its initrd): systemd-boot may not start it.
    let tampered = w.join("tampered.raw");
    std::fs::copy(w.join("again/secure.raw"), &tampered).expect("copy");
    let image = format!("{}@@{esp_off}", tampered.display());
    let uki_path = w.join("uki.efi");
    run(Command::new("mcopy")
        .args(["-n", "-i", &image, "::/EFI/Linux/cairn-1-a.efi"])
        .arg(&uki_path));
    let mut uki = std::fs::read(&uki_path).expect("uki");
    let table = cairn_profile::uki::sections(&mut std::io::Cursor::new(&uki)).expect("sections");
    let initrd = table.iter().find(|s| s.name == ".initrd").expect(".initrd");
    uki[initrd.raw_offset as usize + 4096] ^= 1;
    std::fs::write(&uki_path, &uki).expect("write");
    run(Command::new("mcopy")
        .args(["-o", "-i", &image])
        .arg(&uki_path)
        .arg("::/EFI/Linux/cairn-1-a.efi"));
    let mut vm = Vm::boot_machine(&tampered, machine(), None);
    let line = wait_refused(&mut vm, "Error loading");
    assert!(line.contains("cairn-1-a.efi"), "{line}");
    drop(vm);

    // Unsigned, and signed by a key the firmware does not know: the firmware refuses systemd-boot itself.
    for name in ["unsigned", "other"] {
        let mut vm = Vm::boot_machine(&w.join(name).join("secure.raw"), machine(), None);
        wait_refused(&mut vm, "Access Denied");
        assert!(
            !vm.serial().contains("systemd-boot"),
            "{name}: systemd-boot started"
        );
    }

    // A machine in setup mode (no PK: OVMF's empty store) with the `force` image: systemd-boot enrolls the
    // image's keys from loader/keys/auto and resets; the store kept from that boot then has Secure Boot on.
    let mut vm = Vm::boot_machine(
        &w.join("force/secure.raw"),
        cairn::boot::Machine {
            secure_boot_vars: Some(PathBuf::from(cairn::boot::OVMF_VARS)),
            ..cairn::boot::Machine::default()
        },
        None,
    );
    assert!(
        vm.wait_exit(Duration::from_secs(240)),
        "no reset after enrolling: {}",
        vm.serial()
    );
    let enrolled = w.join("enrolled.fd");
    std::fs::copy(vm.dir().join("vars.fd"), &enrolled).expect("the enrolled store");
    let enrolling = format!("{}\nQEMU's stderr: {}", vm.serial(), vm.stderr());
    drop(vm);
    // virt-fw-vars prints the store on stderr.
    let printed = Command::new(format!("{TOOLS_VENV}/bin/virt-fw-vars"))
        .args(["--print", "--verbose", "--input"])
        .arg(&enrolled)
        .output()
        .expect("virt-fw-vars");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&printed.stdout),
        String::from_utf8_lossy(&printed.stderr)
    );
    for var in ["name=PK ", "name=KEK ", "name=db "] {
        let at = printed
            .find(var)
            .unwrap_or_else(|| panic!("no {var} in the store: {printed}\nconsole:\n{enrolling}"));
        assert!(
            printed[at..]
                .lines()
                .take(4)
                .any(|l| l.contains("subject CN=cairn test db")),
            "{var} is not the image's certificate: {printed}"
        );
    }
    let mut vm = Vm::boot_machine(
        &w.join("force/secure.raw"),
        cairn::boot::Machine {
            secure_boot_vars: Some(enrolled),
            ..cairn::boot::Machine::default()
        },
        None,
    );
    let (ready, _) = vm.wait_for_json("cairn-agent: ready ", Duration::from_secs(420));
    assert_eq!(ready["image"]["secure_boot"], true, "{ready}");
    assert!(
        vm.powerdown(Duration::from_secs(180)),
        "the guest did not power down on ACPI"
    );
}
