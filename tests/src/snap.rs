//! Real snap files for the tests: a folder with `meta/snap.yaml` packed by `mksquashfs` as snapcraft packs one
//! (xz, no xattrs, root-owned), its sha3-384 in the form a snap-revision assertion records it, and an assertion
//! file in snapd's layout (account-key, snap-declaration, snap-revision). The assertions' signatures are not
//! real: nothing here can sign for the store, and the builder never claims to check signatures (snapd does).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sha3::{Digest as _, Sha3_384};

/// What goes into a snap's `meta/snap.yaml`, and a few files.
#[derive(Debug, Clone)]
pub struct SnapBuilder {
    pub name: String,
    pub version: String,
    /// `None` for an app (snap.yaml then says nothing).
    pub kind: Option<String>,
    pub base: Option<String>,
    pub confinement: Option<String>,
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Extra snap.yaml text (apps, daemons...), appended as is.
    pub extra_yaml: String,
}

/// A snap written to disk.
#[derive(Debug, Clone)]
pub struct BuiltSnap {
    pub name: String,
    pub path: PathBuf,
    pub sha3_384: String,
    pub size: u64,
}

impl SnapBuilder {
    pub fn new(name: &str) -> SnapBuilder {
        SnapBuilder {
            name: name.into(),
            version: "1.0".into(),
            kind: None,
            base: None,
            confinement: None,
            files: Vec::new(),
            extra_yaml: String::new(),
        }
    }

    pub fn kind(mut self, kind: &str) -> Self {
        self.kind = Some(kind.into());
        self
    }

    pub fn base(mut self, base: &str) -> Self {
        self.base = Some(base.into());
        self
    }

    pub fn confinement(mut self, c: &str) -> Self {
        self.confinement = Some(c.into());
        self
    }

    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((path.into(), bytes.into(), mode));
        self
    }

    pub fn yaml(mut self, text: &str) -> Self {
        self.extra_yaml.push_str(text);
        self
    }

    pub fn snap_yaml(&self) -> String {
        let mut y = format!("name: {}\nversion: '{}'\n", self.name, self.version);
        for (k, v) in [
            ("type", &self.kind),
            ("base", &self.base),
            ("confinement", &self.confinement),
        ] {
            if let Some(v) = v {
                y.push_str(&format!("{k}: {v}\n"));
            }
        }
        y.push_str(&self.extra_yaml);
        y
    }

    /// Packs the snap into `dir/NAME.snap`.
    pub fn build(&self, dir: &Path) -> BuiltSnap {
        let src = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, bytes: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = src.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, bytes).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("meta/snap.yaml", self.snap_yaml().as_bytes(), 0o644);
        for (path, bytes, mode) in &self.files {
            write(path, bytes, *mode);
        }
        std::fs::create_dir_all(dir).expect("mkdir");
        let path = dir.join(format!("{}.snap", self.name));
        let _ = std::fs::remove_file(&path);
        let out = Command::new("mksquashfs")
            .arg(src.path())
            .arg(&path)
            .args([
                "-noappend",
                "-comp",
                "xz",
                "-no-xattrs",
                "-all-root",
                "-no-fragments",
                "-quiet",
            ])
            .env("SOURCE_DATE_EPOCH", "0")
            .output()
            .expect("run mksquashfs (squashfs-tools)");
        assert!(
            out.status.success(),
            "mksquashfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&path).expect("read snap");
        BuiltSnap {
            name: self.name.clone(),
            sha3_384: sha3_384(&bytes),
            size: bytes.len() as u64,
            path,
        }
    }
}

/// A snap's digest as its snap-revision assertion records it: sha3-384, unpadded base64url.
pub fn sha3_384(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha3_384::digest(bytes))
}

/// An assertion file for `snap` at `revision`, in snapd's layout; signatures are placeholders.
pub fn assertion_file(snap: &BuiltSnap, revision: u32) -> String {
    let id = format!("{}IDxxxxxxxxxxxxxxxxxxxxxxxxxxxx", snap.name)
        .chars()
        .take(32)
        .collect::<String>();
    let key_body = "AcbBTQRWhcGAARAAtestpublickeybody";
    format!(
        "type: account-key\nauthority-id: canonical\nrevision: 2\npublic-key-sha3-384: {key}\naccount-id: canonical\n\
         name: store\nsince: 2016-04-01T00:00:00.0Z\nbody-length: {len}\nsign-key-sha3-384: {root}\n\n{key_body}\n\n\
         AcLDXAQAAQoABgUCV7UYzwAKCRDgT5vottzAEut9D/4u9lD+lJYAEOsigned\n\n\
         type: snap-declaration\nauthority-id: canonical\nrevision: 9\nseries: 16\nsnap-id: {id}\n\
         publisher-id: canonical\nsnap-name: {name}\naliases:\n  -\n    name: {name}-alias\n    target: {name}\n\
         timestamp: 2024-01-01T00:00:00.000000Z\nsign-key-sha3-384: {key}\n\n\
         AcLBUgQAAQoABgUCZZZZsigned\n\n\
         type: snap-revision\nauthority-id: canonical\nsnap-sha3-384: {digest}\ndeveloper-id: canonical\n\
         snap-id: {id}\nsnap-revision: {revision}\nsnap-size: {size}\ntimestamp: 2024-01-01T00:00:00.000000Z\n\
         sign-key-sha3-384: {key}\n\nAcLBUgQAAQoABgUCYYYYsigned\n",
        key = "BWDEoaqyr25nF5SNCvEv2v7QnM9QsfCc0PBMYD_i2NGSQ32EF2d4D0hqUel3m8ul",
        root = "-CvQKAwRQ5h3Ffn10FILJoEZUXOv6km9FwA80-Rcj-f-6jadQ89VRswHNiEB9Lxk",
        len = key_body.len(),
        name = snap.name,
        digest = snap.sha3_384,
        size = snap.size,
    )
}

/// The `[[snap]]` table for `snap`: asserted by `assert` (a file beside the profile), or `unasserted = true`.
pub fn profile_entry(profile_dir: &Path, snap: &BuiltSnap, assert: Option<&Path>) -> String {
    let rel = |p: &Path| {
        p.strip_prefix(profile_dir)
            .unwrap_or_else(|_| panic!("{} is not beside the profile", p.display()))
            .display()
            .to_string()
    };
    let mut t = format!(
        "[[snap]]\nfile = \"{}\"\nsha3-384 = \"{}\"\n",
        rel(&snap.path),
        snap.sha3_384
    );
    match assert {
        Some(a) => t.push_str(&format!("assert = \"{}\"\n", rel(a))),
        None => t.push_str("unasserted = true\n"),
    }
    t
}

/// Writes `assertion_file(snap, revision)` beside the snap; returns its path.
pub fn write_assertion(snap: &BuiltSnap, revision: u32) -> PathBuf {
    let path = snap.path.with_extension("assert");
    std::fs::write(&path, assertion_file(snap, revision)).expect("write assert");
    path
}
