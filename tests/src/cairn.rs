//! Fixtures for the `cairn` CLI: profile files, finding and running the
//! binary.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::registry::Registry;

/// How long [`run_cairn`] lets cairn run before killing it
/// (`CAIRN_E2E_TIMEOUT_SECS` overrides).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A TOML basic string (JSON string escapes are valid TOML escapes).
pub fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("serialize a string")
}

/// Writes `DIR/NAME.toml`, a cairn profile:
///
/// ```toml
/// schema = 1
/// name = "NAME"
/// version = "1.0.0"
/// arch = "amd64"
/// [base]
/// rock = "BASE_REF"
/// [[layer]]
/// rock = "LAYER_REF"
/// ```
///
/// `extra_toml` is appended as is (put top-level keys in it only if it
/// starts with a table header of its own, e.g. `[output]`, since it comes
/// after the `[[layer]]` tables).
pub fn write_profile(
    dir: &Path,
    name: &str,
    base_ref: &str,
    layer_refs: &[&str],
    extra_toml: &str,
) -> PathBuf {
    let mut toml = format!(
        "schema = 1\nname = {}\nversion = \"1.0.0\"\narch = \"amd64\"\n\n[base]\nrock = {}\n",
        toml_string(name),
        toml_string(base_ref)
    );
    for layer in layer_refs {
        toml.push_str(&format!("\n[[layer]]\nrock = {}\n", toml_string(layer)));
    }
    if !extra_toml.is_empty() {
        toml.push('\n');
        toml.push_str(extra_toml);
        if !extra_toml.ends_with('\n') {
            toml.push('\n');
        }
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Writes `DIR/config.json` (Docker's credential file) with an `auths`
/// entry for each registry that has credentials; returns `DIR`, the value
/// for `DOCKER_CONFIG`.
pub fn write_docker_config(dir: &Path, registries: &[&Registry]) -> PathBuf {
    let entries: Vec<(String, &str, &str)> = registries
        .iter()
        .filter_map(|r| r.credentials().map(|(u, p)| (r.addr(), u, p)))
        .collect();
    let entries: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|(a, u, p)| (a.as_str(), *u, *p))
        .collect();
    write_docker_config_entries(dir, &entries)
}

/// [`write_docker_config`] from `(host:port, user, password)` triples (e.g.
/// wrong credentials on purpose).
pub fn write_docker_config_entries(dir: &Path, entries: &[(&str, &str, &str)]) -> PathBuf {
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(host, user, password)| {
            let auth = STANDARD.encode(format!("{user}:{password}"));
            (host.to_string(), serde_json::json!({ "auth": auth }))
        })
        .collect();
    let config = serde_json::json!({ "auths": auths });
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).expect("serialize the docker config"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    dir.to_path_buf()
}

/// The `cairn` binary of the same cargo profile (and target dir) as the
/// running test: `target/DIR/deps/test-xxxx` → `target/DIR/cairn`.
/// `CAIRN_BIN` overrides.
pub fn cairn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let mut dir = exe.parent().expect("the test binary has a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().expect("deps has a parent");
    }
    let bin = dir.join("cairn");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first: cargo build --workspace \
         (same CARGO_TARGET_DIR and profile as the tests)",
        bin.display()
    );
    bin
}

/// `build PROFILE --out OUT --cache CACHE`, the arguments most tests give `cairn`.
pub fn build_args<'a>(profile: &'a Path, out: &'a Path, cache: &'a Path) -> Vec<&'a OsStr> {
    vec![
        "build".as_ref(),
        profile.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--cache".as_ref(),
        cache.as_os_str(),
    ]
}

/// Runs `cairn ARGS` with `env` added, stdin closed, and waits (at most
/// [`DEFAULT_TIMEOUT`]) for it. Panics if it cannot start or times out.
pub fn run_cairn<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let timeout = std::env::var("CAIRN_E2E_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    run_cairn_with_timeout(args, env, timeout)
}

/// [`run_cairn`] with a chosen timeout.
pub fn run_cairn_with_timeout<I, S>(args: I, env: &[(&str, &str)], timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_timeout(&cairn_bin(), args, env, timeout)
}

/// The `cairn-agent` binary built beside `cairn` (a host build: what `apply --root` tests run).
pub fn agent_bin() -> PathBuf {
    let bin = cairn_bin().with_file_name("cairn-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first: cargo build --workspace",
        bin.display()
    );
    bin
}

/// Runs `cairn-agent ARGS` like [`run_cairn`].
pub fn run_agent<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_timeout(&agent_bin(), args, env, DEFAULT_TIMEOUT)
}

/// Runs a binary with `env` added and stdin closed; kills it and panics after `timeout`.
pub fn run_with_timeout<I, S>(
    bin: &Path,
    args: I,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().expect("poll cairn") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_thread.join().unwrap_or_default();
            panic!(
                "{shown} ran longer than {timeout:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().expect("stdout reader thread"),
        stderr: err_thread.join().expect("stderr reader thread"),
    }
}

/// A command's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's stdout then stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o))
}

/// Panics with the exit code and stderr unless the command succeeded.
pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}",
        o.status.code(),
        stderr(o)
    );
}

/// A minimal static ELF header for `machine` (62 amd64, 183 arm64): enough for cairn's architecture check.
pub fn fake_elf(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b
}

/// Writes `content` at `path` inside `root` with `mode`, making the folders on the way.
pub fn write_file(root: &Path, path: &str, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, content).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
