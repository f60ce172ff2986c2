//! `cairn inspect` and `cairn diff` on the real node base rock: the packages against `dpkg-query` on the image's
//! own status file, the contents against the tar, the disk's listing against the tar's.
//!
//! Needs `CAIRN_NODE_BASE_LAYOUT`, as `node_base.rs` (tests/run.sh sets it).

use std::ffi::OsStr;
use std::process::Command;
use std::time::Instant;

use cairn_e2e::cairn::{assert_ok, build_args, stderr};
use cairn_e2e::inspect::{cairn, inspect_json, json, report, strings};
use cairn_e2e::output::read_tar;
use cairn_e2e::rocks::{build_profile, node_base};
use cairn_e2e::{run_cairn, write_profile};

/// The real node base: inspect's packages are what dpkg-query lists from the image's own status file, the
/// contents add up, the kernel is the one the report names. Prints how long inspect took.
#[test]
fn inspect_lists_the_node_bases_packages_as_dpkg_does() {
    let pinned = node_base();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let profile = write_profile(
        work.path(),
        "inspected",
        &pinned,
        &[],
        "[system]\nkernel-cmdline = [\"console=ttyS0\"]\n[image]\nformats = [\"tar\", \"raw\"]\n",
    );
    let out = work.path().join("out");
    build_profile(&profile, &out, &work.path().join("cache"));
    let started = Instant::now();
    let i = inspect_json(&out.join("inspected"));
    eprintln!(
        "cairn inspect --json of the node base (raw): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let o = cairn(&["inspect".as_ref(), out.join("inspected").as_os_str()]);
    assert_ok(&o, "inspect");
    eprintln!(
        "cairn inspect of the node base (raw): {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let (_, items) = read_tar(&out.join("inspected.tar"));
    let admin = work.path().join("dpkg");
    std::fs::create_dir_all(&admin).expect("mkdir");
    std::fs::write(admin.join("status"), &items["var/lib/dpkg/status"].data).expect("status");
    let listed = Command::new("dpkg-query")
        .arg("--admindir")
        .arg(&admin)
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n",
        ])
        .output()
        .expect("dpkg-query");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let mut dpkg: Vec<(String, String, String)> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.starts_with("ii "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[2].to_string(), w[3].to_string())
        })
        .collect();
    dpkg.sort();
    assert!(dpkg.len() > 100, "{} packages", dpkg.len());
    let mut ours: Vec<(String, String, String)> = i["packages"]["list"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["version"].as_str().unwrap().into(),
                p["arch"].as_str().unwrap().into(),
            )
        })
        .collect();
    ours.sort();
    assert_eq!(ours, dpkg, "inspect's packages are not dpkg's");

    let c = &i["contents"];
    let sum: u64 = c["origins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, c["total"]["bytes"].as_u64().unwrap());
    let tar_bytes: u64 = items
        .values()
        .filter(|it| it.kind == 'f')
        .map(|it| it.data.len() as u64)
        .sum();
    assert_eq!(sum, tar_bytes);
    let r = report(&out, "inspected");
    let kernel = r["disk"]["kernel"].as_str().expect("kernel");
    let version = kernel
        .strip_prefix("/boot/vmlinuz-")
        .expect("vmlinuz-VERSION");
    let shown = i["disk"]["boot"]["kernel"]["version"]
        .as_str()
        .expect("the kernel's version");
    assert!(
        shown.starts_with(&format!("{version} ")),
        "{shown} is not {version}"
    );
    assert_eq!(i["disk"]["boot"]["root_hash"], r["disk"]["root_hash"]);

    // The disk's listing (unsquashfs's, with the factory /var under /var) against the tar's, for the same
    // profile: only what the read-only layout moves may differ. Checks the squashfs listing entry by entry.
    let (tar_out, raw_out) = (work.path().join("tar-only"), work.path().join("raw-only"));
    let cache = work.path().join("cache");
    for (dir, format) in [(&tar_out, "tar"), (&raw_out, "raw")] {
        let mut args = build_args(&profile, dir, &cache);
        args.extend(["--format".as_ref(), OsStr::new(format)]);
        assert_ok(&run_cairn(args, &[]), format);
    }
    let started = Instant::now();
    let o = cairn(&[
        "diff".as_ref(),
        tar_out.join("inspected").as_os_str(),
        raw_out.join("inspected").as_os_str(),
        "--json".as_ref(),
    ]);
    eprintln!(
        "cairn diff of the node base, tar against raw: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let d = json(&o, "diff tar raw");
    assert!(
        d["rocks"].as_array().unwrap().is_empty() && d["partitions"].as_array().unwrap().is_empty()
    );
    let p = &d["packages"];
    assert!(
        ["added", "removed", "changed"]
            .iter()
            .all(|k| p[k].as_array().unwrap().is_empty()),
        "{p}"
    );
    let moved = |path: &str| {
        ["/home/", "/root/", "/srv/"]
            .iter()
            .any(|d| path.starts_with(d))
    };
    let removed = strings(&d["files"]["removed"], "path");
    assert!(
        removed.iter().all(|p| moved(p) || p.starts_with("/tmp/")),
        "{removed:?}"
    );
    let mut expected_added: Vec<String> = [
        "/efi",
        "/usr/lib/cairn/factory",
        "/usr/lib/cairn/factory/var.tar",
        "/var/home",
        "/var/root",
        "/var/srv",
    ]
    .map(String::from)
    .into_iter()
    .chain(
        removed
            .iter()
            .filter(|p| moved(p))
            .map(|p| format!("/var{p}")),
    )
    .collect();
    expected_added.sort();
    assert_eq!(strings(&d["files"]["added"], "path"), expected_added);
    assert_eq!(
        strings(&d["files"]["changed"], "path"),
        ["/home", "/root", "/srv"]
    );
    for c in d["files"]["changed"].as_array().unwrap() {
        assert_eq!(
            (c["a"]["kind"].as_str(), c["b"]["kind"].as_str()),
            (Some("dir"), Some("symlink")),
            "{c}"
        );
    }

    // A build against itself, through both its tar and its disk: no differences, exit 0.
    let started = Instant::now();
    let same = out.join("inspected");
    let o = cairn(&["diff".as_ref(), same.as_os_str(), same.as_os_str()]);
    eprintln!(
        "cairn diff of the node base against itself (tar and raw): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
}
