//! Running `cairn inspect` and `cairn diff` and reading what they print, for the tests of both.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::cairn::{assert_ok, build_args, run_cairn};

/// `cairn build PROFILE --out OUT --cache CACHE [--format F]...`, which must succeed.
pub fn build(profile: &Path, out: &Path, cache: &Path, formats: &[&str]) {
    let mut args = build_args(profile, out, cache);
    for f in formats {
        args.extend(["--format".as_ref(), OsStr::new(f)]);
    }
    assert_ok(
        &run_cairn(args, &[]),
        &format!("build {}", profile.display()),
    );
}

/// `cairn ARGS`, with no environment added.
pub fn cairn(args: &[&OsStr]) -> Output {
    run_cairn(args, &[])
}

/// A command's stdout as JSON.
pub fn json(o: &Output, what: &str) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `cairn inspect TARGET --json`, which must succeed.
pub fn inspect_json(target: &Path) -> Value {
    let o = cairn(&["inspect".as_ref(), target.as_os_str(), "--json".as_ref()]);
    assert_ok(&o, "inspect --json");
    json(&o, "inspect --json")
}

/// The build report `OUT/NAME.manifest.json`.
pub fn report(out: &Path, name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(out.join(format!("{name}.manifest.json"))).expect("report"),
    )
    .expect("json")
}

/// The string `key` of each object of the array `v`.
pub fn strings(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x[key].as_str().unwrap_or_default().to_string())
        .collect()
}
