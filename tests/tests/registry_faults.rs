//! `cairn build` against a registry that fails: a fault proxy in front of the real registry answers errors, resets
//! or cuts bodies, stalls, or ignores ranges, and counts what cairn asked. Transient faults are retried (a blob
//! resumes by Range) and the build's output is a clean build's; lasting ones fail in bounded time, naming the rock's
//! key, the blob or manifest, what happened and what to try, and leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use cairn_e2e::cairn::{assert_ok, stderr};
use cairn_e2e::fault_proxy::{Fault, FaultProxy};
use cairn_e2e::output::sha256_file;
use cairn_e2e::{Compression, Image, LayerBuilder, Pushed, push_image, registry, run_cairn};

/// The stall timeout the stall test gives cairn (`CAIRN_REGISTRY_STALL_TIMEOUT_MS`).
const SHORT_STALL_MS: u64 = 300;
/// Size of the layer's one file: incompressible, so the gzip blob is about as large and a cut lands mid-blob.
const PAYLOAD: usize = 1 << 20;
/// Where the proxy cuts the blob.
const CUT: u64 = 256 << 10;

struct Setup {
    proxy: FaultProxy,
    pushed: Pushed,
    profile: PathBuf,
    work: tempfile::TempDir,
}

/// Pushes a one-layer image named `name` to the shared registry and writes a profile that pulls it through a new
/// proxy.
fn setup(name: &str) -> Setup {
    let registry = registry::shared();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ name.len() as u64;
    let payload: Vec<u8> = (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let layer = LayerBuilder::new().file("payload", 0o644, payload);
    let image = Image::builder()
        .layer_from(&layer, Compression::Gzip)
        .build();
    let pushed = push_image(registry, &format!("e2e/faults-{name}"), "v1", &image);
    let proxy = FaultProxy::start(registry);
    let work = tempfile::tempdir().expect("tempdir");
    let reference = proxy.reference(registry, &pushed.reference_by_digest);
    let profile = cairn_e2e::write_profile(work.path(), "faults", &reference, &[], "");
    Setup {
        proxy,
        pushed,
        profile,
        work,
    }
}

impl Setup {
    fn layer(&self) -> &str {
        &self.pushed.layer_digests[0]
    }

    /// `cairn build` into `out-TAG` with the cache `cache-TAG`, both fresh.
    fn build(&self, tag: &str, env: &[(&str, &str)]) -> (Output, PathBuf, PathBuf) {
        let out = self.work.path().join(format!("out-{tag}"));
        let cache = self.work.path().join(format!("cache-{tag}"));
        let output = run_cairn(
            cairn_e2e::cairn::build_args(&self.profile, &out, &cache),
            env,
        );
        (output, out, cache)
    }

    /// A build with no fault: the output the faulty builds must match.
    fn clean_tar_sha(&self) -> String {
        let (o, out, _) = self.build("clean", &[]);
        assert_ok(&o, "clean build");
        self.proxy.clear();
        sha256_file(&out.join("faults.tar"))
    }
}

/// The cached blob's bytes hash to its name.
fn assert_cached_blob_verified(cache: &Path, digest: &str) {
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(sha256_file(&cache.join("blobs/sha256").join(hex)), hex);
}

fn assert_nothing_left(out: &Path, cache: &Path) {
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp"))
        .expect("the cache's tmp")
        .collect();
    assert!(tmp.is_empty(), "temp files left in the cache: {tmp:?}");
    let written: Vec<_> = std::fs::read_dir(out)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "a failed build wrote {written:?}");
}

#[test]
fn a_transient_500_is_retried_once_for_manifests_configs_and_blobs() {
    let s = setup("transient");
    let manifest = format!("/manifests/{}", s.pushed.manifest_digest);
    let targets = [
        ("manifest", manifest.as_str()),
        ("config", s.pushed.config_digest.as_str()),
        ("layer", s.layer()),
    ];
    for (what, pattern) in targets {
        s.proxy.inject(pattern, Fault::Status(500), 1);
        let before = s.proxy.requests_to(pattern).len();
        let (o, _, cache) = s.build(what, &[]);
        assert_ok(&o, &format!("build with a 500 on the {what}"));
        let seen = &s.proxy.requests_to(pattern)[before..];
        assert_eq!(seen.len(), 2, "{what}: one failure, one retry: {seen:?}");
        assert_eq!(seen[0].fault, Some(Fault::Status(500)));
        assert_eq!(seen[1].fault, None);
        let err = stderr(&o);
        assert!(
            err.contains("the registry answered 500 Internal Server Error")
                && err.contains("(attempt 1 of 4); retrying in"),
            "{what}: {err}"
        );
        assert_cached_blob_verified(&cache, s.layer());
        s.proxy.clear();
    }
}

#[test]
fn a_429_waits_for_retry_after() {
    let s = setup("throttled");
    s.proxy
        .inject(s.layer(), Fault::TooManyRequests { retry_after: 1 }, 1);
    let (o, _, _) = s.build("a", &[]);
    assert_ok(&o, "build with a 429");
    let seen = s.proxy.requests_to(s.layer());
    assert_eq!(seen.len(), 2, "{seen:?}");
    let waited = seen[1].at - seen[0].at;
    // The backoff alone would be 0.5 s and a little: only Retry-After makes it a second.
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
}

#[test]
fn a_blob_cut_midway_resumes_from_the_bytes_received() {
    let s = setup("resume");
    let clean = s.clean_tar_sha();
    for (name, fault) in [
        ("reset", Fault::ResetAfter(CUT)),
        ("truncated", Fault::CloseAfter(CUT)),
    ] {
        s.proxy.inject(s.layer(), fault.clone(), 1);
        let (o, out, cache) = s.build(name, &[]);
        assert_ok(&o, &format!("build with the blob {name}"));
        let seen = s.proxy.requests_to(s.layer());
        let seen = &seen[seen.len() - 2..];
        assert_eq!(seen[0].fault, Some(fault), "{seen:?}");
        assert_eq!(seen[0].range, None);
        assert_eq!(
            seen[1].range.as_deref(),
            Some(format!("bytes={CUT}-").as_str()),
            "{name}: {seen:?}"
        );
        assert_cached_blob_verified(&cache, s.layer());
        assert_eq!(sha256_file(&out.join("faults.tar")), clean, "{name}");
        s.proxy.clear();
    }
}

#[test]
fn a_body_that_stops_is_resumed_after_the_stall_timeout() {
    let s = setup("slow");
    s.proxy.inject(s.layer(), Fault::StallAfter(CUT), 1);
    let ms = SHORT_STALL_MS.to_string();
    let started = Instant::now();
    let (o, _, cache) = s.build("a", &[("CAIRN_REGISTRY_STALL_TIMEOUT_MS", &ms)]);
    assert_ok(&o, "build with a body that stops");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr(&o).contains(&format!("no data for 0.3 s after {CUT} of ")),
        "{}",
        stderr(&o)
    );
    let seen = s.proxy.requests_to(s.layer());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str())
    );
    assert_cached_blob_verified(&cache, s.layer());
}

#[test]
fn a_registry_that_ignores_range_is_read_again_from_the_start() {
    let s = setup("norange");
    let clean = s.clean_tar_sha();
    s.proxy.inject(s.layer(), Fault::ResetAfter(CUT), 1);
    s.proxy.inject_always(s.layer(), Fault::IgnoreRange);
    let (o, out, cache) = s.build("a", &[]);
    assert_ok(&o, "build from a registry that ignores Range");
    let seen = s.proxy.requests_to(s.layer());
    assert_eq!(
        seen.len(),
        3,
        "the clean build's, the reset, the whole again: {seen:?}"
    );
    assert_eq!(
        seen[2].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str())
    );
    assert_eq!(seen[2].fault, Some(Fault::IgnoreRange));
    assert_cached_blob_verified(&cache, s.layer());
    assert_eq!(sha256_file(&out.join("faults.tar")), clean);
}

#[test]
fn a_lasting_500_fails_after_the_bounded_attempts() {
    let s = setup("down");
    s.proxy.inject_always(s.layer(), Fault::Status(500));
    let started = Instant::now();
    let (o, out, cache) = s.build("a", &[]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("cairn: error:"))
        .unwrap_or_default();
    // The rock's key, where the profile writes it (write_profile puts the base's reference on line 7).
    let at = format!("{}:7:8: base.rock: ", s.profile.display());
    assert!(
        line.contains(&at)
            && line.contains(&format!("blob {}", s.layer()))
            && line.contains("the registry answered 500 Internal Server Error 4 times")
            && line.contains("check the registry is reachable and retry"),
        "{err}"
    );
    assert_eq!(s.proxy.requests_to(s.layer()).len(), 4);
    // 0.5 + 1 + 2 s of backoff, each with at most 20% jitter.
    assert!(took >= Duration::from_millis(3500), "{took:?}");
    assert_nothing_left(&out, &cache);
}

#[test]
fn a_stalled_registry_fails_after_the_stall_timeout() {
    let s = setup("stall");
    s.proxy
        .inject_always(s.layer(), Fault::StallHeaders(Duration::from_secs(30)));
    let started = Instant::now();
    let ms = SHORT_STALL_MS.to_string();
    let (o, out, cache) = s.build("a", &[("CAIRN_REGISTRY_STALL_TIMEOUT_MS", &ms)]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("blob {}", s.layer()))
            && err.contains("no response for 0.3 s 4 times"),
        "{err}"
    );
    assert_eq!(s.proxy.requests_to(s.layer()).len(), 4);
    // Four stalls of 0.3 s and the backoff between them (at most 4.2 s): far from 4 × 30 s.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_nothing_left(&out, &cache);
}

#[test]
fn a_missing_manifest_or_a_refusal_fails_at_once_with_advice() {
    let s = setup("missing");
    // The registry's own 404 for a digest it has never seen.
    // Not the all-zero placeholder, which the build refuses before asking any registry.
    let absent = format!("sha256:{}", "e".repeat(64));
    let reference = s.proxy.reference(
        registry::shared(),
        &format!("{}@{absent}", s.pushed.reference),
    );
    let profile = cairn_e2e::write_profile(s.work.path(), "faults", &reference, &[], "");
    assert_eq!(profile, s.profile);
    let (o, out, cache) = s.build("missing", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("base.rock: {}", reference.replace(":v1@", "@")))
            && err.contains("the registry answered 404 Not Found (MANIFEST_UNKNOWN")
            && err.contains(&format!("run `cairn pin {}`", s.profile.display())),
        "{err}"
    );
    assert_eq!(
        s.proxy.requests_to(&absent).len(),
        1,
        "a 404 is not retried"
    );
    assert_nothing_left(&out, &cache);

    let manifest = format!("/manifests/{}", s.pushed.manifest_digest);
    let profile = cairn_e2e::write_profile(
        s.work.path(),
        "faults",
        &s.proxy
            .reference(registry::shared(), &s.pushed.reference_by_digest),
        &[],
        "",
    );
    assert_eq!(profile, s.profile);
    for code in [401, 403] {
        s.proxy.inject_always(&manifest, Fault::Status(code));
        let before = s.proxy.requests_to(&manifest).len();
        let (o, out, cache) = s.build(&format!("refused-{code}"), &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("the registry answered {code}"))
                && stderr(&o).contains("check the credentials"),
            "{}",
            stderr(&o)
        );
        assert_eq!(
            s.proxy.requests_to(&manifest).len() - before,
            1,
            "a {code} is not retried"
        );
        assert_nothing_left(&out, &cache);
        s.proxy.clear();
    }

    // Nothing listens where the profile points.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let nowhere = format!("127.0.0.1:{port}/e2e/none@{}", s.pushed.manifest_digest);
    let profile = cairn_e2e::write_profile(s.work.path(), "faults", &nowhere, &[], "");
    assert_eq!(profile, s.profile);
    let (o, out, cache) = s.build("refused", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("base.rock: ")
            && err.contains("cannot connect")
            && err.contains("check the registry's address and that it is running"),
        "{err}"
    );
    assert_nothing_left(&out, &cache);
}
