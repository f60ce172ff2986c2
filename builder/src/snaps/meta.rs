//! A snap's own description, `meta/snap.yaml` inside its squashfs: its name, type, base and confinement, which
//! decide the install order and flags. Read with `unsquashfs -cat` (squashfs-tools, which raw images need
//! anyway) and parsed with serde-saphyr, a YAML parser that is built not to panic on hostile input.

use std::path::Path;

use cairn_profile::command::{Command, CommandError};
use serde::Deserialize;

/// snap.yaml files are small; a bigger one is not read.
const MAX_SNAP_YAML: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapMeta {
    pub name: String,
    pub version: String,
    /// `app` when the file says nothing.
    pub kind: Kind,
    pub base: Option<String>,
    pub confinement: Confinement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// snapd itself, installed first.
    Snapd,
    /// A base (`base`, or the older `os` and `core`): installed before the snaps built on it.
    Base,
    App,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Snapd => "snapd",
            Kind::Base => "base",
            Kind::App => "app",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    Strict,
    Classic,
    Devmode,
}

impl Confinement {
    pub fn name(self) -> &'static str {
        match self {
            Confinement::Strict => "strict",
            Confinement::Classic => "classic",
            Confinement::Devmode => "devmode",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("meta/snap.yaml: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct RawMeta {
    name: Option<String>,
    version: Option<Scalar>,
    #[serde(rename = "type")]
    kind: Option<String>,
    base: Option<String>,
    confinement: Option<String>,
}

/// snap.yaml versions are strings, but YAML reads `1.0` or `20240111` unquoted as numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

/// Reads `meta/snap.yaml` out of a snap file.
pub fn read(snap: &Path) -> Result<SnapMeta, MetaError> {
    let out = Command::new("unsquashfs")
        .package("squashfs-tools")
        .args(["-no-progress", "-cat"])
        .arg(snap)
        .arg("meta/snap.yaml")
        .capture_stdout()
        .run()?;
    parse(&out.stdout)
}

/// snap.yaml's keys, checked as snapd checks the few cairn relies on.
pub fn parse(bytes: &[u8]) -> Result<SnapMeta, MetaError> {
    let bad = |m: String| MetaError::Invalid(m);
    if bytes.len() > MAX_SNAP_YAML {
        return Err(bad(format!("larger than {MAX_SNAP_YAML} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let raw: RawMeta = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
    let name = raw.name.ok_or_else(|| bad("no `name`".into()))?;
    // snapd: 1 to 40 of a-z, 0-9 and -, with a letter, no leading, trailing or double dash.
    let name_ok = (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !name_ok {
        return Err(bad(format!("`{}` is not a snap name", name.escape_debug())));
    }
    let version = match raw.version {
        Some(Scalar::Text(s)) => s,
        Some(Scalar::Int(n)) => n.to_string(),
        Some(Scalar::Float(n)) => n.to_string(),
        None => String::new(),
    };
    let kind = match raw.kind.as_deref() {
        None | Some("app") => Kind::App,
        Some("snapd") => Kind::Snapd,
        Some("base" | "os" | "core") => Kind::Base,
        Some(other) => {
            return Err(bad(format!(
                "type `{}`: cairn installs snapd, base and app snaps (gadget and kernel snaps belong to Ubuntu Core)",
                other.escape_debug()
            )));
        }
    };
    let confinement = match raw.confinement.as_deref() {
        None | Some("strict") => Confinement::Strict,
        Some("classic") => Confinement::Classic,
        Some("devmode") => Confinement::Devmode,
        Some(other) => return Err(bad(format!("confinement `{}`", other.escape_debug()))),
    };
    Ok(SnapMeta {
        name,
        version,
        kind,
        base: raw.base,
        confinement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_keys_that_decide_the_install() {
        let m = parse(b"name: k8s\nversion: '1.32.3'\nbase: core22\nconfinement: classic\napps:\n  k8s:\n    command: k8s\n")
            .expect("parse");
        assert_eq!(m.name, "k8s");
        assert_eq!(m.version, "1.32.3");
        assert_eq!(m.kind, Kind::App);
        assert_eq!(m.base.as_deref(), Some("core22"));
        assert_eq!(m.confinement, Confinement::Classic);
        let m = parse(b"name: core22\nversion: 20240111\ntype: base\n").expect("parse");
        assert_eq!((m.kind, m.version.as_str()), (Kind::Base, "20240111"));
        assert_eq!(
            parse(b"name: snapd\ntype: snapd\n").expect("snapd").kind,
            Kind::Snapd
        );
    }

    #[test]
    fn refuses_what_cairn_cannot_install() {
        for (yaml, needle) in [
            ("version: 1\n", "no `name`"),
            ("name: Bad_Name\n", "not a snap name"),
            ("name: pc\ntype: gadget\n", "gadget"),
            ("name: x\nconfinement: loose\n", "confinement"),
            ("name: [1, 2]\n", "snap.yaml"),
        ] {
            let e = parse(yaml.as_bytes()).expect_err(yaml);
            assert!(e.to_string().contains(needle), "{yaml}: {e}");
        }
        assert!(parse(b"\xff\xfe").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever a snap file carries as its snap.yaml, reading it answers without panicking.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_yaml_like_text(text in "([a-z]{1,6}: ?[-a-z0-9'\"\\[\\]{},:&*!|> ]{0,12}\n {0,4}){0,8}") {
            let _ = parse(text.as_bytes());
        }
    }
}
