//! The cache and the output folder over many builds: what killed builds leave is swept, `cairn cache du` tells
//! what is there, `cairn cache prune` keeps exactly what the named profiles need.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::cairn::{assert_ok, build_args, cairn_bin, output_text, stderr};
use cairn_e2e::{Auth, Compression, LayerBuilder, Registry, push_layer, run_cairn, write_profile};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn du(cache: &Path) -> String {
    let o = run_cairn(
        [
            "cache".as_ref(),
            "du".as_ref(),
            "--cache".as_ref(),
            cache.as_os_str(),
        ],
        &[],
    );
    assert_ok(&o, "cairn cache du");
    output_text(&o)
}

/// The number in `cairn cache du`'s row `what`.
fn du_count(text: &str, what: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(what))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row `{what}` in:\n{text}"))
}

#[test]
fn what_a_killed_build_left_is_swept_by_the_next() {
    let registry = cairn_e2e::registry::shared();
    // Big enough that writing the tar takes a while, so the build can be killed while its outputs are staged.
    let big: Vec<u8> = (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let layer = LayerBuilder::new().file("big", 0o644, &big);
    let pushed = push_layer(registry, "e2e/killed", "v1", &layer, Compression::Gzip);
    let work = tempfile::tempdir().expect("tempdir");
    let (out, cache) = (work.path().join("out"), work.path().join("cache"));
    let profile = write_profile(work.path(), "killed", &pushed.reference_by_digest, &[], "");

    let mut child = Command::new(cairn_bin())
        .args(build_args(&profile, &out, &cache))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairn");
    let staged = |n: &String| n.starts_with(".cairn-stage-");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !names(&out).iter().any(staged) {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the build ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no staging folder appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let left_out: Vec<String> = names(&out).into_iter().filter(staged).collect();
    assert_eq!(left_out.len(), 1, "{:?}", names(&out));
    let left_tmp = names(&cache.join("tmp"));
    assert_eq!(left_tmp.len(), 1, "{left_tmp:?}");
    let before = du(&cache);
    assert_eq!(du_count(&before, "left by killed builds"), 1, "{before}");
    assert_eq!(du_count(&before, "running builds"), 0, "{before}");

    let again = run_cairn(build_args(&profile, &out, &cache), &[]);
    assert_ok(&again, "the build after the killed one");
    assert_eq!(
        names(&out),
        ["killed.manifest.json", "killed.spdx.json", "killed.tar"],
        "the killed build's staging folder stayed"
    );
    assert_eq!(names(&cache.join("tmp")), Vec::<String>::new());
    let text = stderr(&again);
    assert!(text.contains("swept what killed builds left"), "{text}");
    assert_eq!(du_count(&du(&cache), "left by killed builds"), 0);
}

#[test]
fn prune_keeps_what_the_named_profiles_need_and_nothing_else() {
    let mut registry = Registry::start(Auth::Anonymous);
    let push = |name: &str, content: &str| {
        let layer = LayerBuilder::new().file("etc/which", 0o644, content);
        push_layer(&registry, name, "v1", &layer, Compression::Zstd)
    };
    let (kept, dropped) = (push("e2e/kept", "kept\n"), push("e2e/dropped", "dropped\n"));
    let shared = LayerBuilder::new().file("etc/shared", 0o644, "both\n");
    let shared = push_layer(&registry, "e2e/shared", "v1", &shared, Compression::Gzip);
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let keep_profile: PathBuf = write_profile(
        &work.path().join("a"),
        "keep",
        &kept.reference_by_digest,
        &[&shared.reference_by_digest],
        "",
    );
    let drop_profile = write_profile(
        &work.path().join("b"),
        "drop",
        &dropped.reference_by_digest,
        &[&shared.reference_by_digest],
        "",
    );
    for (p, out) in [(&keep_profile, "out-a"), (&drop_profile, "out-b")] {
        let out = work.path().join(out);
        assert_ok(&run_cairn(build_args(p, &out, &cache), &[]), "build");
    }
    let full = du(&cache);
    // Three rocks of one layer each: a manifest, a config and a layer blob apiece.
    assert_eq!(du_count(&full, "blobs"), 9, "{full}");
    assert_eq!(du_count(&full, "unpacked layers"), 3, "{full}");

    let prune = |extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "cache".as_ref(),
            "prune".as_ref(),
            "--cache".as_ref(),
            cache.as_os_str(),
        ];
        args.extend_from_slice(extra);
        run_cairn(args, &[])
    };
    let dry = prune(&["--dry-run".as_ref(), keep_profile.as_os_str()]);
    assert_ok(&dry, "dry prune");
    assert!(
        output_text(&dry).contains("would remove blobs"),
        "{}",
        output_text(&dry)
    );
    assert_eq!(du(&cache), full, "a dry run changed the cache");

    let pruned = prune(&[keep_profile.as_os_str()]);
    assert_ok(&pruned, "prune");
    let after = du(&cache);
    assert_eq!(du_count(&after, "blobs"), 6, "{after}");
    assert_eq!(du_count(&after, "unpacked layers"), 2, "{after}");

    // What was kept is all the kept profile needs: it builds with the registry gone.
    registry.stop();
    let offline = work.path().join("out-offline");
    assert_ok(
        &run_cairn(build_args(&keep_profile, &offline, &cache), &[]),
        "a build of the kept profile with the registry stopped",
    );
    let gone = run_cairn(build_args(&drop_profile, &offline, &cache), &[]);
    assert_eq!(gone.status.code(), Some(1), "{}", stderr(&gone));

    let usage = prune(&[]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(stderr(&usage).contains("--all"), "{}", stderr(&usage));
    assert_ok(&prune(&["--all".as_ref()]), "prune --all");
    let empty = du(&cache);
    assert_eq!(du_count(&empty, "blobs"), 0, "{empty}");
    assert_eq!(du_count(&empty, "unpacked layers"), 0, "{empty}");
}
