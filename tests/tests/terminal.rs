//! What `cairn` tells a person and a program: live progress on a pseudo-terminal (util-linux's `script` gives the
//! build a real pty), the plain lines off one, `--message-format json` results and errors, and the free-space check
//! that refuses a build before any blob is pulled.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_e2e::cairn::{assert_ok, build_args, cairn_bin, stderr};
use cairn_e2e::fault_proxy::{Fault, FaultProxy};
use cairn_e2e::output::sha256_file;
use cairn_e2e::{Compression, Image, LayerBuilder, Pushed, push_image, registry, run_cairn};

/// The layer's one file: incompressible, so the blob is about this size and takes a while at the proxy's rate.
const PAYLOAD: usize = 3 << 20;
/// The throttled link: the pull lasts about three seconds, long enough for several redraws of its bar.
const RATE: u64 = 1 << 20;

fn payload(seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Setup {
    proxy: FaultProxy,
    pushed: Pushed,
    profile: PathBuf,
    work: tempfile::TempDir,
}

fn setup(name: &str, seed: u64) -> Setup {
    let registry = registry::shared();
    let layer = LayerBuilder::new().file("payload", 0o644, payload(seed));
    let image = Image::builder()
        .layer_from(&layer, Compression::Gzip)
        .build();
    let pushed = push_image(registry, &format!("e2e/terminal-{name}"), "v1", &image);
    let proxy = FaultProxy::start(registry);
    let work = tempfile::tempdir().expect("tempdir");
    let reference = proxy.reference(registry, &pushed.reference_by_digest);
    let profile = cairn_e2e::write_profile(work.path(), name, &reference, &[], "");
    Setup {
        proxy,
        pushed,
        profile,
        work,
    }
}

/// Runs `cairn ARGS` on a pseudo-terminal of 120 columns (stdin, stdout and stderr all on it); returns the exit
/// status's success and everything the terminal received.
fn on_a_terminal(args: &[&Path], dir: &Path) -> (bool, String) {
    let mut line = String::from("stty cols 120 rows 40; exec");
    for a in std::iter::once(cairn_bin().as_path()).chain(args.iter().copied()) {
        line.push(' ');
        line.push_str(&shell_quote(&a.to_string_lossy()));
    }
    let typescript = dir.join("typescript");
    let o = Command::new("script")
        .args(["--quiet", "--return", "--flush", "--command", &line])
        .arg(&typescript)
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .output()
        .expect("run script(1) from util-linux");
    let text =
        String::from_utf8_lossy(&std::fs::read(&typescript).expect("the typescript")).into_owned();
    (o.status.success(), text)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn a_build_on_a_terminal_shows_each_pull_live_and_ends_with_a_table() {
    let s = setup("tty", 1);
    s.proxy.inject_always(
        &s.pushed.layer_digests[0],
        Fault::Throttle {
            bytes_per_sec: RATE,
        },
    );
    let out = s.work.path().join("out");
    let cache = s.work.path().join("cache");
    let args = [
        Path::new("build"),
        &s.profile,
        Path::new("--out"),
        &out,
        Path::new("--cache"),
        &cache,
    ];
    let (ok, screen) = on_a_terminal(&args, s.work.path());
    assert!(ok, "the build failed on a terminal:\n{screen}");
    let digest = &s.pushed.layer_digests[0];
    let short = &digest[..7 + 12];
    // The bar: the rock's key and the layer's short digest, a bar, bytes of the total, a rate.
    assert!(
        screen.contains(&format!("base.rock {short}")),
        "no bar names the rock and its layer:\n{screen}"
    );
    // A bar's filled part, drawn in colour: `=`s then the head.
    assert!(screen.contains("=>"), "no bar was drawn:\n{screen}");
    assert!(
        screen.contains("/3.1 MB") || screen.contains("/3.15 MB"),
        "no bar shows the transfer's total:\n{screen}"
    );
    assert!(
        screen.contains("MB/s") || screen.contains("kB/s"),
        "no rate:\n{screen}"
    );
    // Cursor movement: the bar is redrawn in place, not printed line after line.
    assert!(
        screen.contains("\x1b["),
        "no terminal control sequences:\n{screen}"
    );
    // The log lines name the layer by its short digest only.
    assert!(
        !screen.contains(&format!("layer={digest}")),
        "a log line carries the full digest:\n{screen}"
    );
    // The summary table: the output, its size and its real sha256; the report; what to run next.
    let tar = out.join("tty.tar");
    let sha = sha256_file(&tar);
    let row = screen
        .lines()
        .find(|l| l.starts_with(&tar.display().to_string()))
        .unwrap_or_else(|| panic!("no table row for {}:\n{screen}", tar.display()));
    assert!(row.contains(&sha) && row.contains(" MiB "), "{row}");
    assert!(
        screen.contains("output") && screen.contains("sha256"),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("cairn inspect {}", out.join("tty").display())),
        "no next step:\n{screen}"
    );

    // Warm: nothing to pull, said once.
    let (ok, warm) = on_a_terminal(&args, s.work.path());
    assert!(ok, "{warm}");
    assert!(warm.contains("cached: unpacked already"), "{warm}");
    assert!(
        !warm.contains("[="),
        "a warm build drew a transfer:\n{warm}"
    );
}

#[test]
fn off_a_terminal_the_lines_are_plain_and_stdout_is_sha256sum_s() {
    let s = setup("plain", 2);
    let out = s.work.path().join("out");
    let cache = s.work.path().join("cache");
    let o = run_cairn(build_args(&s.profile, &out, &cache), &[]);
    assert_ok(&o, "build");
    let err = stderr(&o);
    assert!(!err.contains('\x1b') && !err.contains("[="), "{err}");
    assert!(err.contains("pulled") && err.contains("base.rock"), "{err}");
    let tar = out.join("plain.tar");
    let sbom = out.join("plain.spdx.json");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "{}  {}\n{}  {}\nreport: {}\n",
            sha256_file(&tar),
            tar.display(),
            sha256_file(&sbom),
            sbom.display(),
            out.join("plain.manifest.json").display()
        )
    );
}

fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn json_messages_carry_results_and_errors_with_their_position() {
    let s = setup("json", 3);
    let out = s.work.path().join("out");
    let cache = s.work.path().join("cache");
    let mut args = build_args(&s.profile, &out, &cache);
    args.insert(0, "--message-format=json".as_ref());
    let o = run_cairn(&args, &[]);
    assert_ok(&o, "build");
    let messages = json_lines(&o.stdout);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let built = &messages[0];
    assert_eq!(built["reason"], "built");
    assert_eq!(built["name"], "json");
    let tar = &built["outputs"][0];
    assert_eq!(tar["format"], "tar");
    assert_eq!(tar["sha256"], sha256_file(&out.join("json.tar")).as_str());
    assert_eq!(
        tar["size"],
        std::fs::metadata(out.join("json.tar")).expect("tar").len()
    );
    // The log lines on stderr are JSON too: one object per line, with the level and the fields.
    let logs = json_lines(&o.stderr);
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "pulled" && l["fields"]["rock"] == "base.rock"),
        "{logs:?}"
    );

    // An error: the exit code, and where in the profile.
    let bad = s.work.path().join("bad.toml");
    std::fs::write(
        &bad,
        "schema = 1\nname = \"bad\"\nversion = \"1\"\narch = \"amd64\"\n\n[base]\nrock = \"nope\"\n",
    )
    .expect("write");
    let o = run_cairn(
        [
            "--message-format",
            "json",
            "validate",
            bad.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let messages = json_lines(&o.stdout);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let e = &messages[0];
    assert_eq!(e["reason"], "error");
    assert_eq!(e["exit_code"], 2);
    assert_eq!(e["bad_input"], true);
    assert_eq!(e["at"]["line"], 7, "{e}");
    assert_eq!(e["at"]["column"], 8, "{e}");
    assert_eq!(e["at"]["key"], "base.rock", "{e}");
    assert!(o.stderr.is_empty(), "{}", stderr(&o));

    // A warning is part of the result, not a line on stderr.
    let zero = format!("{}@sha256:{}", "127.0.0.1:1/x/y", "0".repeat(64));
    let placeholder = cairn_e2e::write_profile(s.work.path(), "zero", &zero, &[], "");
    let o = run_cairn(
        [
            "--message-format",
            "json",
            "validate",
            placeholder.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_ok(&o, "validate");
    let v = &json_lines(&o.stdout)[0];
    assert_eq!(v["reason"], "validated");
    let warnings = v["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{v}");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.contains("placeholder")),
        "{v}"
    );
}

/// A 1 MiB tmpfs: too small for the 3 MiB layer.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path) -> Option<SmallFs> {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "cairn-e2e-small"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_build_that_cannot_fit_is_refused_before_any_blob_is_pulled() {
    // SAFETY-free check for root: mounting a tmpfs needs it (CI runs the suite as root).
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
    {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let s = setup("full", 4);
    let small = SmallFs::mount(&s.work.path().join("small")).expect("mount a tmpfs");
    let cache = s.work.path().join("cache");
    let out = s.work.path().join("out");
    let small_out = small.0.join("out");
    let small_cache = small.0.join("cache");
    for (out, cache, full) in [
        (&small_out, &cache, &small_out),
        (&out, &small_cache, &small_cache),
    ] {
        let o: Output = run_cairn(build_args(&s.profile, out, cache), &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "cairn: error: not enough free space in {}: ",
                full.display()
            )),
            "{err}"
        );
        assert!(err.contains("free some (`cairn cache prune`)"), "{err}");
        assert!(!out.join("full.tar").exists());
    }
    assert!(
        s.proxy.requests_to(&s.pushed.layer_digests[0]).is_empty(),
        "a blob was requested: {:?}",
        s.proxy.requests()
    );
}
