//! The profile's keys (the contract) and their checks.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::diagnostic::{Diagnostic, Error};
use crate::kubernetes::{Kubernetes, Preload, RawKubernetes, RawPreload};
use crate::reference::Reference;
use crate::secrets;
use crate::snap::{RawSnap, Snap};
use crate::system::{RawSystem, RawUser, System, User};

/// The schema this crate reads.
pub const SCHEMA: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The OCI platform architecture name.
    pub fn oci(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// The assembled root as a tar.
    Tar,
    /// The bootable disk image.
    Raw,
    /// The same disk as qcow2.
    Qcow2,
}

impl Format {
    pub const ALL: &[(&str, Format)] = &[
        ("tar", Format::Tar),
        ("raw", Format::Raw),
        ("qcow2", Format::Qcow2),
    ];

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    pub fn names() -> String {
        Format::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A rock named by the profile, with the text it was written as.
#[derive(Debug, Clone)]
pub struct Rock {
    pub reference: Reference,
    /// The key path (`base.rock`, `layer[0].rock`), for messages.
    pub key: String,
    /// Where the reference is written: `FILE:LINE:COLUMN`.
    pub at: String,
}

impl Rock {
    /// `FILE:LINE:COLUMN: KEY`, how a failure about this rock starts.
    pub fn label(&self) -> String {
        format!("{}: {}", self.at, self.key)
    }
}

/// `image.slot-size`: the size of each root slot (A and B) on the disk, as the profile sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSize {
    pub bytes: u64,
    /// `FILE:LINE:COLUMN: image.slot-size`, how a failure about it starts.
    pub label: String,
}

impl SlotSize {
    /// The smallest slot: less would not hold a kernel's modules.
    pub const MIN: u64 = 64 << 20;
    /// The largest: 1 TiB.
    pub const MAX: u64 = 1 << 40;
}

/// `image.slot-size` as written: bytes, or a number with a binary unit (`"2G"`, `"1536MiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

/// Parses `"2G"`, `"2GiB"`, `"1536M"`, `"1536 MiB"` or a plain number of bytes; units are binary.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    Inline(String),
    /// An absolute path inside the profile's folder (checked when the profile was loaded).
    Source(PathBuf),
}

#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Absolute and normal: `/etc/motd`.
    pub path: String,
    pub content: FileContent,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A checked profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub file: PathBuf,
    /// The document as read: its sha256 goes into the build report, its bytes into the image.
    pub text: String,
    pub name: String,
    pub version: String,
    pub arch: Arch,
    pub base: Rock,
    pub layers: Vec<Rock>,
    pub files: Vec<FileEntry>,
    pub formats: Vec<Format>,
    /// Each root slot's size; None: the root's size and a quarter, in 16 MiB steps.
    pub slot_size: Option<SlotSize>,
    pub system: System,
    pub users: Vec<User>,
    pub kubernetes: Option<Kubernetes>,
    /// Workload rocks stored in the image for the distribution's containerd; not merged into the root.
    pub preloads: Vec<Preload>,
    /// Snap files stored in the image and installed offline at first boot.
    pub snaps: Vec<Snap>,
}

/// Whether `source` files are looked for on disk: on the build host they must exist inside the profile's folder;
/// in a built image (the baked profile) their content is already in place and only their form is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sources {
    OnDisk,
    Baked,
}

impl Profile {
    /// Reads and checks a profile file on the build host.
    pub fn load(file: &Path) -> Result<Profile, Error> {
        Profile::load_with(file, Sources::OnDisk)
    }

    /// Reads and checks the profile baked into an image, whose `source` files are not beside it.
    pub fn load_baked(file: &Path) -> Result<Profile, Error> {
        Profile::load_with(file, Sources::Baked)
    }

    fn load_with(file: &Path, sources: Sources) -> Result<Profile, Error> {
        let bytes = std::fs::read(file).map_err(|source| Error::Read {
            path: file.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            Diagnostic::at(
                file,
                &text,
                Some(offset..offset),
                "",
                "the profile is not UTF-8 text".into(),
            )
        })?;
        Profile::parse_with(file, text, sources)
    }

    /// Checks a profile held in memory; `file` names it in messages and anchors `source` paths.
    pub fn parse(file: &Path, text: String) -> Result<Profile, Error> {
        Profile::parse_with(file, text, Sources::OnDisk)
    }

    fn parse_with(file: &Path, text: String, sources: Sources) -> Result<Profile, Error> {
        // Before any other check: a secret is refused with that message even where its key is unknown.
        secrets::refuse_secrets(file, &text)?;
        let raw: RawProfile = deserialize(file, &text)?;
        Checker {
            file,
            text: &text,
            sources,
        }
        .check(raw)
        .map(|mut p| {
            p.text = text.clone();
            p
        })
    }

    /// Every rock merged into the root: the base first, then the layers in order.
    pub fn rocks(&self) -> impl Iterator<Item = &Rock> {
        std::iter::once(&self.base).chain(self.layers.iter())
    }

    /// Every rock (merged or preloaded) still pinned to the all-zero placeholder digest.
    pub fn placeholder_rocks(&self) -> impl Iterator<Item = &Rock> {
        self.rocks().chain(self.preload_rocks()).filter(|r| {
            r.reference
                .digest
                .as_ref()
                .is_some_and(|d| d.is_placeholder())
        })
    }

    /// The `[[preload]]` rocks, in order: stored in the image as OCI archives, never merged into the root.
    pub fn preload_rocks(&self) -> impl Iterator<Item = &Rock> {
        self.preloads.iter().map(|p| &p.rock)
    }
}

/// Paths the builder writes itself: a `[[file]]` may not claim them.
pub fn reserved_path(path: &str) -> bool {
    path.strip_prefix(crate::contract::LIB_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        || (path.starts_with("/usr/lib/systemd/system/cairn-") && !path[24..].contains('/'))
        || path.starts_with("/usr/lib/systemd/system/multi-user.target.wants/cairn-")
        || path.starts_with("/usr/lib/systemd/system/sysinit.target.wants/cairn-")
        || path.starts_with("/usr/lib/systemd/system/network-online.target.wants/cairn-")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    schema: Spanned<i64>,
    name: Spanned<String>,
    version: Spanned<String>,
    arch: Spanned<String>,
    base: RawRock,
    #[serde(default)]
    layer: Vec<RawRock>,
    #[serde(default)]
    file: Vec<RawFile>,
    image: Option<RawImage>,
    system: Option<RawSystem>,
    #[serde(default)]
    user: Vec<RawUser>,
    kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    preload: Vec<RawPreload>,
    #[serde(default)]
    snap: Vec<RawSnap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRock {
    rock: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub(crate) path: Spanned<String>,
    content: Option<Spanned<String>>,
    pub(crate) source: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    formats: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(rename = "slot-size")]
    slot_size: Option<Spanned<RawSize>>,
}

pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, Diagnostic> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
        Diagnostic::at(
            file,
            text,
            e.span(),
            &key,
            e.message().trim_end().to_string(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        let inner = e.into_inner();
        // Inside arrays of tables the path can come back empty: read the key off the document instead.
        let key = if key.is_empty() {
            inner
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_default()
        } else if key.contains('?') {
            // A spanned map key (`sysctl`, `extra-args`) comes back as `?`: read the path off the document.
            inner
                .span()
                .and_then(|s| path_at(text, s.start))
                .unwrap_or(key)
        } else {
            key
        };
        let mut message = inner.message().trim_end().to_string();
        if key == "kubernetes.disable-rbac" && message.starts_with("unknown field") {
            message = "`disable-rbac` is not a key: turning RBAC off is not offered".to_string();
        }
        Diagnostic::at(file, text, inner.span(), &key, message)
    })
}

/// The key path (`kubernetes.extra-args.kubelet.--max-pods`, `file[0].path`) of the deepest key or value of the
/// document at `offset`.
fn path_at(text: &str, offset: usize) -> Option<String> {
    fn table(t: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
        t.iter().find_map(|(k, v)| {
            let name: &str = k.get_ref();
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            if k.span().contains(&offset) {
                return Some(path);
            }
            value(v, offset, path)
        })
    }
    fn value(v: &Spanned<toml::de::DeValue<'_>>, offset: usize, path: String) -> Option<String> {
        let deeper = match v.get_ref() {
            toml::de::DeValue::Table(t) => table(t, offset, &path),
            toml::de::DeValue::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| value(item, offset, format!("{path}[{i}]"))),
            _ => None,
        };
        let span = v.span();
        deeper.or_else(|| (span.contains(&offset) || span.start == offset).then_some(path))
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    table(doc.get_ref(), offset, "")
}

/// The dotted key of the `key = value` line holding `offset`, under its nearest `[table]` or `[[array]]` header.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return String::new();
    };
    let key = key.trim();
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    match header {
        None => key.to_string(),
        Some(h) => {
            let array = h.starts_with("[[");
            let name = h.trim_matches(|c| c == '[' || c == ']').trim();
            if array {
                let index = text[..line_start]
                    .lines()
                    .filter(|l| {
                        l.trim()
                            .trim_start_matches("[[")
                            .trim_end_matches("]]")
                            .trim()
                            == name
                            && l.trim().starts_with("[[")
                    })
                    .count()
                    .saturating_sub(1);
                format!("{name}[{index}].{key}")
            } else {
                format!("{name}.{key}")
            }
        }
    }
}

pub(crate) struct Checker<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
    pub(crate) sources: Sources,
}

impl Checker<'_> {
    pub(crate) fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, Error> {
        Err(Diagnostic::at(self.file, self.text, Some(span), key, message.into()).into())
    }

    fn check(&self, raw: RawProfile) -> Result<Profile, Error> {
        if *raw.schema.get_ref() != SCHEMA {
            return self.err(
                raw.schema.span(),
                "schema",
                format!(
                    "unsupported schema {}: this cairn reads schema {SCHEMA}",
                    raw.schema.get_ref()
                ),
            );
        }
        let name = raw.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !name_ok {
            return self.err(
                raw.name.span(),
                "name",
                format!("`{name}` is not a valid name: 1 to 63 of a-z, 0-9 and -, not starting or ending with -"),
            );
        }
        let version = raw.version.get_ref();
        if version.is_empty() || version.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return self.err(
                raw.version.span(),
                "version",
                "the version must be a non-empty string without spaces",
            );
        }
        let arch = match raw.arch.get_ref().as_str() {
            "amd64" => Arch::Amd64,
            "arm64" => Arch::Arm64,
            other => {
                return self.err(
                    raw.arch.span(),
                    "arch",
                    format!("unknown arch `{other}`: expected amd64 or arm64"),
                );
            }
        };
        let base = self.rock(&raw.base.rock, "base.rock")?;
        let layers = raw
            .layer
            .iter()
            .enumerate()
            .map(|(i, l)| self.rock(&l.rock, &format!("layer[{i}].rock")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = BTreeSet::new();
        let mut files = Vec::with_capacity(raw.file.len());
        for (i, f) in raw.file.into_iter().enumerate() {
            let entry = self.file_entry(f, i)?;
            if !seen.insert(entry.path.clone()) {
                let span = self.text.find(&entry.path).unwrap_or(0);
                return self.err(
                    span..span,
                    &format!("file[{i}].path"),
                    format!("`{}` is written twice", entry.path),
                );
            }
            files.push(entry);
        }
        let (raw_formats, raw_slot) = match raw.image {
            Some(i) => (i.formats, i.slot_size),
            None => (None, None),
        };
        let slot_size = raw_slot.map(|v| self.slot_size(&v)).transpose()?;
        let formats = match raw_formats {
            None => vec![Format::Tar],
            Some(list) => {
                if list.get_ref().is_empty() {
                    return self.err(
                        list.span(),
                        "image.formats",
                        "at least one format is needed",
                    );
                }
                let mut formats = Vec::new();
                for (i, f) in list.get_ref().iter().enumerate() {
                    let Some(format) = Format::parse(f.get_ref()) else {
                        return self.err(
                            f.span(),
                            &format!("image.formats[{i}]"),
                            format!(
                                "unknown format `{}`: this cairn writes {}",
                                f.get_ref(),
                                Format::names()
                            ),
                        );
                    };
                    if !formats.contains(&format) {
                        formats.push(format);
                    }
                }
                formats
            }
        };
        let raw_system = raw.system.unwrap_or_default();
        let sysctl_values: Vec<(String, String, std::ops::Range<usize>)> = raw_system
            .sysctl
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone(), v.span()))
            .collect();
        let system = self.system(raw_system)?;
        let users = self.users(raw.user)?;
        let kubernetes = raw.kubernetes.map(|k| self.kubernetes(k)).transpose()?;
        if let Some(k) = &kubernetes {
            self.kernel_defaults_kept(k, &sysctl_values)?;
        }
        Ok(Profile {
            file: self.file.to_path_buf(),
            text: String::new(),
            name: name.clone(),
            version: version.clone(),
            arch,
            base,
            layers,
            files,
            formats,
            slot_size,
            system,
            users,
            kubernetes,
            preloads: self.preloads(raw.preload)?,
            snaps: self.snaps(raw.snap)?,
        })
    }

    /// A kubelet run with `--protect-kernel-defaults=true` (the cis and stig presets) refuses to start unless the
    /// kernel settings it checks have its values: a profile sysctl saying otherwise would make a node that never
    /// becomes ready, so it is refused here, at its position.
    fn kernel_defaults_kept(
        &self,
        k: &Kubernetes,
        sysctl: &[(String, String, std::ops::Range<usize>)],
    ) -> Result<(), Error> {
        let protects = [crate::Role::ControlPlane, crate::Role::Worker]
            .into_iter()
            .any(|role| {
                crate::hardening::arguments(k, role)
                    .get(&crate::kubernetes::Component::Kubelet)
                    .and_then(|a| a.get("--protect-kernel-defaults"))
                    .is_some_and(|v| v.as_deref() == Some("true"))
            });
        if !protects {
            return Ok(());
        }
        for (key, value, span) in sysctl {
            if let Some((_, want)) = k.hardening.sysctls().iter().find(|(k, _)| k == key)
                && value.trim() != *want
            {
                return self.err(
                    span.clone(),
                    &format!("system.sysctl.{key}"),
                    format!(
                        "the kubelet runs with --protect-kernel-defaults=true, which refuses to start unless {key} = {want}: \
                         leave it to the preset, or drop the flag with [kubernetes.remove-args] kubelet = [\"--protect-kernel-defaults\"]"
                    ),
                );
            }
        }
        Ok(())
    }

    fn slot_size(&self, v: &Spanned<RawSize>) -> Result<SlotSize, Error> {
        const KEY: &str = "image.slot-size";
        let bytes = match v.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).ok(),
            RawSize::Text(t) => parse_size(t),
        };
        let Some(bytes) = bytes else {
            return self.err(
                v.span(),
                KEY,
                "a size in bytes, or a number with K, M, G or T (binary units: \"2G\", \"1536MiB\")",
            );
        };
        if !(SlotSize::MIN..=SlotSize::MAX).contains(&bytes) {
            return self.err(
                v.span(),
                KEY,
                format!(
                    "{bytes} bytes: a slot is {} MiB to {} GiB",
                    SlotSize::MIN >> 20,
                    SlotSize::MAX >> 30
                ),
            );
        }
        if bytes % (1 << 20) != 0 {
            return self.err(
                v.span(),
                KEY,
                format!(
                    "{bytes} bytes is not a whole number of MiB (partitions are aligned to 1 MiB)"
                ),
            );
        }
        let d = Diagnostic::at(self.file, self.text, Some(v.span()), KEY, String::new());
        Ok(SlotSize {
            bytes,
            label: format!("{}:{}:{}: {KEY}", d.file.display(), d.line, d.column),
        })
    }

    pub(crate) fn rock(&self, text: &Spanned<String>, key: &str) -> Result<Rock, Error> {
        match Reference::parse(text.get_ref()) {
            Ok(reference) => {
                let d = Diagnostic::at(self.file, self.text, Some(text.span()), key, String::new());
                Ok(Rock {
                    reference,
                    key: key.to_string(),
                    at: format!("{}:{}:{}", d.file.display(), d.line, d.column),
                })
            }
            Err(e) => self.err(text.span(), key, e.to_string()),
        }
    }

    pub(crate) fn file_entry(&self, f: RawFile, i: usize) -> Result<FileEntry, Error> {
        let key = |k: &str| format!("file[{i}].{k}");
        self.path_line(&f.path, &key("path"))?;
        let path = f.path.get_ref();
        if let Err(why) = check_image_path(path) {
            return self.err(f.path.span(), &key("path"), format!("`{path}`: {why}"));
        }
        if reserved_path(path) {
            return self.err(
                f.path.span(),
                &key("path"),
                format!("`{path}` is written by cairn itself"),
            );
        }
        let content = match (f.content, f.source) {
            (Some(c), None) => {
                self.content_text(&c, &key("content"))?;
                FileContent::Inline(c.into_inner())
            }
            (None, Some(s)) => FileContent::Source(self.source(&s, &key("source"))?),
            (Some(_), Some(s)) => {
                return self.err(
                    s.span(),
                    &key("source"),
                    "give either content or source, not both",
                );
            }
            (None, None) => {
                return self.err(
                    f.path.span(),
                    &key("path"),
                    "the file needs content or source",
                );
            }
        };
        let mode = match &f.mode {
            None => 0o644,
            Some(m) => {
                match parse_mode(m.get_ref()) {
                    Some(mode) => mode,
                    None => {
                        return self.err(
                        m.span(),
                        &key("mode"),
                        format!("`{}` is not a file mode: octal digits such as \"0644\", at most 07777", m.get_ref()),
                    );
                    }
                }
            }
        };
        let (uid, gid) = match &f.owner {
            None => (0, 0),
            Some(o) => match o
                .get_ref()
                .split_once(':')
                .map(|(u, g)| (u.parse::<u32>(), g.parse::<u32>()))
            {
                Some((Ok(u), Ok(g))) => (u, g),
                _ => {
                    return self.err(
                        o.span(),
                        &key("owner"),
                        format!(
                            "`{}` is not an owner: numeric \"UID:GID\" such as \"0:0\"",
                            o.get_ref()
                        ),
                    );
                }
            },
        };
        Ok(FileEntry {
            path: path.clone(),
            content,
            mode,
            uid,
            gid,
        })
    }

    /// A `source` is relative to the profile's folder and must stay inside it, symlinks resolved; a text file that
    /// holds a PEM private key is refused.
    pub(crate) fn source(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, Error> {
        let real = self.binary_source(s, key)?;
        if self.sources == Sources::Baked {
            return Ok(real);
        }
        match secrets::pem_private_key_in_file(&real) {
            Ok(None) => Ok(real),
            Ok(Some((label, line))) => self.err(
                s.span(),
                key,
                format!(
                    "`{}` holds a PEM private key (`-----BEGIN {label}-----`, its line {line}), and a secret never goes into an image",
                    s.get_ref()
                ),
            ),
            Err(e) => self.err(s.span(), key, format!("cannot read `{}`: {e}", s.get_ref())),
        }
    }

    /// [`Checker::source`] without the look for secrets: for compressed files (snaps), whose bytes show nothing.
    pub(crate) fn binary_source(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, Error> {
        let rel = Path::new(s.get_ref());
        let lexical_ok = !rel.as_os_str().is_empty()
            && rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let dir = self
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !lexical_ok {
            return self.err(
                s.span(),
                key,
                format!(
                    "`{}` is outside the profile's folder: give a path relative to it, without ..",
                    s.get_ref()
                ),
            );
        }
        let joined = dir.join(rel);
        if self.sources == Sources::Baked {
            return Ok(joined);
        }
        let (Ok(real_dir), Ok(real)) = (dir.canonicalize(), joined.canonicalize()) else {
            return self.err(
                s.span(),
                key,
                format!("`{}` not found beside the profile", s.get_ref()),
            );
        };
        if !real.starts_with(&real_dir) {
            return self.err(
                s.span(),
                key,
                format!(
                    "`{}` is outside the profile's folder (it resolves to {})",
                    s.get_ref(),
                    real.display()
                ),
            );
        }
        if !real.is_file() {
            return self.err(
                s.span(),
                key,
                format!("`{}` is not a regular file", s.get_ref()),
            );
        }
        Ok(real)
    }
}

fn check_image_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("not an absolute path");
    }
    if path == "/" || path.ends_with('/') {
        return Err("a file path cannot end with /");
    }
    if path.contains('\0') {
        return Err("a path cannot hold a NUL byte");
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("not a normal path (empty, . or .. components)");
    }
    Ok(())
}

fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777)
}

#[cfg(test)]
mod kubernetes_tests;
#[cfg(test)]
mod tests;
