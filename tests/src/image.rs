//! Real OCI (and Docker v2) images, built in memory.
//!
//! - [`LayerBuilder`] writes a tar byte by byte (headers through the `tar`
//!   crate's [`tar::Header`], everything else by hand) so a test controls
//!   entry order, names that the `tar` crate's builder would refuse (`..`,
//!   absolute paths), GNU long-name records versus PAX `path` records, and
//!   PAX `SCHILY.xattr.*` records.
//! - [`Layer`] is a tar plus its compressed blob ([`Compression`]).
//! - [`ImageBuilder`] → [`Image`]: config + manifest bytes and digests.
//! - [`IndexBuilder`] → [`Index`]: an OCI index or Docker manifest list.
//!
//! All JSON is serialized once; the digests are of those exact bytes.

use std::io::Write;

use serde_json::{Map, Value, json};
use tar::{EntryType, Header};

use crate::sha256_digest;

/// The mtime of entries unless set otherwise (2023-11-14T22:13:20Z).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// `created` in image configs.
pub const CREATED: &str = "2024-01-01T00:00:00Z";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Every media type a manifest GET should accept.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

// ---------------------------------------------------------------- layers --

/// How long names (> 100 bytes) and long link targets are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LongNames {
    /// GNU `L`/`K` records before the entry (what `tar::Builder` writes).
    #[default]
    Gnu,
    /// A PAX `x` header with `path`/`linkpath` records.
    Pax,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    Fifo,
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

/// One tar entry, written as given (paths are not normalized, except that
/// directories get a trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid (0o4000), setgid (0o2000), sticky
    /// (0o1000).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Further PAX records, written as given.
    pub pax: Vec<(String, Vec<u8>)>,
    pub long_names: LongNames,
}

/// Builds an uncompressed tar layer; entries keep the order they are added.
///
/// The "modifier" methods ([`LayerBuilder::mtime`], [`LayerBuilder::owner`],
/// [`LayerBuilder::xattr`], [`LayerBuilder::pax_record`],
/// [`LayerBuilder::pax_names`]) change the entry added last.
#[derive(Clone, Debug)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    default_mtime: u64,
    long_names: LongNames,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            entries: Vec::new(),
            default_mtime: DEFAULT_MTIME,
            long_names: LongNames::Gnu,
        }
    }

    /// mtime of the entries added from now on.
    pub fn default_mtime(mut self, mtime: u64) -> Self {
        self.default_mtime = mtime;
        self
    }

    /// How long names of entries added from now on are written.
    pub fn long_names(mut self, style: LongNames) -> Self {
        self.long_names = style;
        self
    }

    /// Adds a fully specified entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    fn push(self, path: &str, kind: EntryKind, mode: u32) -> Self {
        let entry = Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: self.default_mtime,
            xattrs: Vec::new(),
            pax: Vec::new(),
            long_names: self.long_names,
        };
        self.entry(entry)
    }

    fn last(&mut self) -> &mut Entry {
        self.entries
            .last_mut()
            .expect("a LayerBuilder modifier needs an entry added before it")
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.push(path, EntryKind::Dir, mode)
    }

    pub fn file(self, path: &str, mode: u32, bytes: impl AsRef<[u8]>) -> Self {
        self.push(path, EntryKind::File(bytes.as_ref().to_vec()), mode)
    }

    pub fn file_owned(
        self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        bytes: impl AsRef<[u8]>,
    ) -> Self {
        self.file(path, mode, bytes).owner(uid, gid)
    }

    /// A file with extended attributes (PAX `SCHILY.xattr.NAME`), e.g.
    /// `security.capability`, `user.foo`, `system.posix_acl_access`.
    pub fn file_with_xattrs(
        self,
        path: &str,
        mode: u32,
        bytes: impl AsRef<[u8]>,
        xattrs: &[(&str, &[u8])],
    ) -> Self {
        let mut b = self.file(path, mode, bytes);
        for (name, value) in xattrs {
            b = b.xattr(name, value);
        }
        b
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    /// A hard link to `target` (a path in the archive, usually earlier).
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(path, EntryKind::Hardlink(target.to_string()), 0o644)
    }

    pub fn fifo(self, path: &str) -> Self {
        self.push(path, EntryKind::Fifo, 0o644)
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, EntryKind::BlockDevice { major, minor }, 0o660)
    }

    /// Deletes `path` from lower layers: writes `DIR/.wh.NAME`.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), path.trim_end_matches('/').to_string()),
        };
        self.push(
            &format!("{dir}.wh.{name}"),
            EntryKind::File(Vec::new()),
            0o644,
        )
    }

    /// Hides everything lower layers have in `dir`: writes
    /// `DIR/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.push(&path, EntryKind::File(Vec::new()), 0o644)
    }

    /// Sets the mtime of the last entry.
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.last().mtime = mtime;
        self
    }

    /// Sets the owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        let e = self.last();
        e.uid = uid;
        e.gid = gid;
        self
    }

    /// Sets the mode of the last entry.
    pub fn mode(mut self, mode: u32) -> Self {
        self.last().mode = mode;
        self
    }

    /// Adds an extended attribute to the last entry.
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.last().xattrs.push((name.to_string(), value.to_vec()));
        self
    }

    /// Adds a raw PAX record to the last entry.
    pub fn pax_record(mut self, key: &str, value: &[u8]) -> Self {
        self.last().pax.push((key.to_string(), value.to_vec()));
        self
    }

    /// Writes the last entry's long name/link with PAX records (the
    /// PAX-path variant); a no-op for names of 100 bytes or less.
    pub fn pax_names(mut self) -> Self {
        self.last().long_names = LongNames::Pax;
        self
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The tar bytes, ending with the two zero blocks.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            write_entry(&mut out, e);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The tar compressed as a [`Layer`].
    pub fn layer(&self, compression: Compression) -> Layer {
        Layer::new(self.build(), compression)
    }
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

/// One PAX record `LEN key=value\n`, LEN counting the whole record.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    debug_assert_eq!(rec.len(), len);
    rec
}

fn gnu_long_record(out: &mut Vec<u8>, ty: EntryType, value: &str) {
    let mut h = Header::new_gnu();
    set_field(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    pad(out);
}

fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let mut path = e.path.clone();
    if e.kind == EntryKind::Dir && !path.ends_with('/') {
        path.push('/');
    }
    let link = match &e.kind {
        EntryKind::Symlink(t) | EntryKind::Hardlink(t) => Some(t.as_str()),
        _ => None,
    };
    let mut pax = Vec::new();
    match e.long_names {
        LongNames::Gnu => {
            if let Some(l) = link.filter(|l| l.len() > 100) {
                gnu_long_record(out, EntryType::GNULongLink, l);
            }
            if path.len() > 100 {
                gnu_long_record(out, EntryType::GNULongName, &path);
            }
        }
        LongNames::Pax => {
            if path.len() > 100 {
                pax.extend(pax_record("path", path.as_bytes()));
            }
            if let Some(l) = link.filter(|l| l.len() > 100) {
                pax.extend(pax_record("linkpath", l.as_bytes()));
            }
        }
    }
    for (name, value) in &e.xattrs {
        pax.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
    }
    for (key, value) in &e.pax {
        pax.extend(pax_record(key, value));
    }
    let use_pax = !pax.is_empty() || e.long_names == LongNames::Pax;
    if !pax.is_empty() {
        let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        let mut h = Header::new_ustar();
        set_field(
            &mut h.as_old_mut().name,
            format!("PaxHeaders.0/{base}").as_bytes(),
        );
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(e.mtime);
        h.set_size(pax.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&pax);
        pad(out);
    }

    let mut h = if use_pax {
        Header::new_ustar()
    } else {
        Header::new_gnu()
    };
    set_field(&mut h.as_old_mut().name, path.as_bytes());
    if let Some(l) = link {
        set_field(&mut h.as_old_mut().linkname, l.as_bytes());
    }
    let (ty, data): (EntryType, &[u8]) = match &e.kind {
        EntryKind::Dir => (EntryType::Directory, &[]),
        EntryKind::File(b) => (EntryType::Regular, b),
        EntryKind::Symlink(_) => (EntryType::Symlink, &[]),
        EntryKind::Hardlink(_) => (EntryType::Link, &[]),
        EntryKind::Fifo => (EntryType::Fifo, &[]),
        EntryKind::CharDevice { .. } => (EntryType::Char, &[]),
        EntryKind::BlockDevice { .. } => (EntryType::Block, &[]),
    };
    h.set_entry_type(ty);
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(data.len() as u64);
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } = e.kind
    {
        h.set_device_major(major)
            .expect("ustar/gnu headers have device fields");
        h.set_device_minor(minor)
            .expect("ustar/gnu headers have device fields");
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    pad(out);
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// The tar split (at 512-byte block boundaries) into 2 or 3 parts, each
    /// its own gzip member, concatenated (as pigz or eStargz write).
    GzipMultiMember,
    Zstd,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("finish gzip into memory")
}

/// Compresses `tar` as `compression` says (deterministically).
pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => gzip(tar),
        Compression::GzipMultiMember => {
            let blocks = tar.len().div_ceil(512).max(2);
            let parts = if blocks >= 3 { 3 } else { 2 };
            let per = blocks.div_ceil(parts) * 512;
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = tar.chunks(per.max(1)).collect();
            assert!(
                chunks.len() >= 2 || tar.is_empty(),
                "multi-member gzip needs a tar of 2+ blocks"
            );
            for chunk in chunks {
                out.extend(gzip(chunk));
            }
            out
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd into memory"),
    }
}

/// A layer: its uncompressed content and the blob pushed for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Uncompressed content (normally a tar); `diff_id` is its digest.
    pub tar: Vec<u8>,
    /// The bytes pushed; `digest` is their digest.
    pub blob: Vec<u8>,
    pub compression: Compression,
    pub diff_id: String,
    pub digest: String,
    /// Media type in the manifest, instead of the one derived from the
    /// compression and [`MediaTypes`].
    pub media_type: Option<String>,
    /// Descriptor annotations.
    pub annotations: Vec<(String, String)>,
}

impl Layer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Layer {
        let blob = compress(&tar, compression);
        Layer {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&blob),
            tar,
            blob,
            compression,
            media_type: None,
            annotations: Vec::new(),
        }
    }

    /// A non-tar blob pushed as is with `media_type` (e.g. an in-toto
    /// statement); its diff_id is its digest.
    pub fn raw(bytes: Vec<u8>, media_type: &str) -> Layer {
        let mut l = Layer::new(bytes, Compression::None);
        l.media_type = Some(media_type.to_string());
        l
    }

    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.media_type = Some(media_type.to_string());
        self
    }

    pub fn with_annotation(mut self, key: &str, value: &str) -> Layer {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    pub fn size(&self) -> usize {
        self.blob.len()
    }

    /// The manifest media type under `media_types`.
    pub fn media_type(&self, media_types: MediaTypes) -> String {
        if let Some(mt) = &self.media_type {
            return mt.clone();
        }
        match (media_types, self.compression) {
            (MediaTypes::Oci, Compression::None) => OCI_LAYER_TAR,
            (MediaTypes::Oci, Compression::Gzip | Compression::GzipMultiMember) => OCI_LAYER_GZIP,
            (MediaTypes::DockerV2, Compression::None) => DOCKER_LAYER_TAR,
            (MediaTypes::DockerV2, Compression::Gzip | Compression::GzipMultiMember) => {
                DOCKER_LAYER_GZIP
            }
            // Docker has no zstd type of its own; Docker itself uses OCI's.
            (_, Compression::Zstd) => OCI_LAYER_ZSTD,
        }
        .to_string()
    }

    fn descriptor(&self, media_types: MediaTypes) -> Value {
        let mut d = json!({
            "mediaType": self.media_type(media_types),
            "digest": self.digest,
            "size": self.blob.len(),
        });
        if !self.annotations.is_empty() {
            d["annotations"] = annotations_json(&self.annotations);
        }
        d
    }
}

fn annotations_json(a: &[(String, String)]) -> Value {
    Value::Object(
        a.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

// ---------------------------------------------------------------- images --

/// Which family of media types manifests, configs and layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MediaTypes {
    #[default]
    Oci,
    DockerV2,
}

impl MediaTypes {
    pub fn manifest(self) -> &'static str {
        match self {
            MediaTypes::Oci => OCI_MANIFEST,
            MediaTypes::DockerV2 => DOCKER_MANIFEST,
        }
    }

    pub fn config(self) -> &'static str {
        match self {
            MediaTypes::Oci => OCI_CONFIG,
            MediaTypes::DockerV2 => DOCKER_CONFIG,
        }
    }

    pub fn index(self) -> &'static str {
        match self {
            MediaTypes::Oci => OCI_INDEX,
            MediaTypes::DockerV2 => DOCKER_MANIFEST_LIST,
        }
    }
}

/// OS, architecture and variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(architecture: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: (architecture == "arm64").then(|| "v8".to_string()),
        }
    }

    /// `unknown/unknown`, as attestation manifests in an index use.
    pub fn unknown() -> Platform {
        Platform {
            os: "unknown".into(),
            architecture: "unknown".into(),
            variant: None,
        }
    }

    pub fn json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// Builds an [`Image`]. Defaults: linux/amd64, OCI media types, no layers,
/// `config.Env` with a PATH.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    platform: Platform,
    media_types: MediaTypes,
    layers: Vec<Layer>,
    config_section: Value,
    extra: Map<String, Value>,
    omitted: Vec<String>,
    annotations: Vec<(String, String)>,
    diff_ids: Option<Vec<String>>,
}

impl ImageBuilder {
    pub fn arch(mut self, architecture: &str) -> Self {
        self.platform = Platform::linux(architecture);
        self
    }

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    pub fn media_types(mut self, media_types: MediaTypes) -> Self {
        self.media_types = media_types;
        self
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Adds `layer.layer(compression)`.
    pub fn layer_from(self, layer: &LayerBuilder, compression: Compression) -> Self {
        self.layer(layer.layer(compression))
    }

    /// The config's `config` object (Env, Cmd, Labels, ...).
    pub fn config_section(mut self, section: Value) -> Self {
        self.config_section = section;
        self
    }

    /// A top-level config field (e.g. `"history"`, `"author"`).
    pub fn config_field(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Leaves a top-level config field out (e.g. `"architecture"`, `"os"`).
    pub fn omit_config_field(mut self, key: &str) -> Self {
        self.omitted.push(key.to_string());
        self
    }

    /// A manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    /// Overrides `rootfs.diff_ids` (e.g. to make a config that lies).
    pub fn diff_ids(mut self, diff_ids: Vec<String>) -> Self {
        self.diff_ids = Some(diff_ids);
        self
    }

    pub fn build(self) -> Image {
        let diff_ids = self
            .diff_ids
            .unwrap_or_else(|| self.layers.iter().map(|l| l.diff_id.clone()).collect());
        let history: Vec<Value> = (0..self.layers.len())
            .map(|i| json!({"created": CREATED, "created_by": format!("cairn-e2e layer {i}")}))
            .collect();
        let mut config = json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "created": CREATED,
            "config": self.config_section,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = json!(v);
        }
        for (k, v) in self.extra {
            config[k.as_str()] = v;
        }
        if let Some(fields) = config.as_object_mut() {
            for k in &self.omitted {
                fields.remove(k);
            }
        }
        let config = serde_json::to_vec(&config).expect("serialize the image config");
        let config_digest = sha256_digest(&config);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.media_types.manifest(),
            "config": {
                "mediaType": self.media_types.config(),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": self.layers.iter().map(|l| l.descriptor(self.media_types)).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = annotations_json(&self.annotations);
        }
        let manifest = serde_json::to_vec(&manifest).expect("serialize the manifest");
        Image {
            platform: self.platform,
            media_types: self.media_types,
            manifest_digest: sha256_digest(&manifest),
            manifest_media_type: self.media_types.manifest().to_string(),
            manifest,
            config_digest,
            config,
            layers: self.layers,
        }
    }
}

/// A built image: exact config and manifest bytes, and its layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub platform: Platform,
    pub media_types: MediaTypes,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Layer>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
}

impl Image {
    pub fn builder() -> ImageBuilder {
        ImageBuilder {
            platform: Platform::linux("amd64"),
            media_types: MediaTypes::Oci,
            layers: Vec::new(),
            config_section: json!({
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            }),
            extra: Map::new(),
            omitted: Vec::new(),
            annotations: Vec::new(),
            diff_ids: None,
        }
    }

    /// A linux image for `arch` with one gzip layer holding
    /// `/etc/cairn-e2e` = `content` (a quick fixture).
    pub fn simple(arch: &str, content: &str) -> Image {
        let layer = LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/cairn-e2e", 0o644, content);
        Image::builder()
            .arch(arch)
            .layer_from(&layer, Compression::Gzip)
            .build()
    }

    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config).expect("the config is JSON")
    }

    pub fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest).expect("the manifest is JSON")
    }

    /// Replaces the manifest with `manifest` serialized (e.g. tampered
    /// with); the digest follows.
    pub fn with_manifest(mut self, manifest: &Value) -> Image {
        self.manifest = serde_json::to_vec(manifest).expect("serialize the manifest");
        self.manifest_digest = sha256_digest(&self.manifest);
        self
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// This manifest's descriptor in an index, with its platform.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.manifest_media_type,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
            "platform": self.platform.json(),
        })
    }

    /// A buildx-style attestation manifest for this image: OCI, platform
    /// unknown/unknown, one `application/vnd.in-toto+json` layer (not a tar).
    pub fn attestation(&self) -> Image {
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{
                "name": "cairn-e2e",
                "digest": {"sha256": self.manifest_digest.trim_start_matches("sha256:")},
            }],
            "predicate": {"spdxVersion": "SPDX-2.3", "name": "cairn-e2e"},
        });
        let layer = Layer::raw(
            serde_json::to_vec(&statement).expect("serialize the statement"),
            IN_TOTO,
        )
        .with_annotation("in-toto.io/predicate-type", "https://spdx.dev/Document");
        Image::builder()
            .platform(Platform::unknown())
            .config_section(json!({}))
            .layer(layer)
            .build()
    }
}

// --------------------------------------------------------------- indexes --

/// Builds an [`Index`] (OCI index or Docker manifest list).
#[derive(Clone, Debug)]
pub struct IndexBuilder {
    media_types: MediaTypes,
    entries: Vec<(Image, Value)>,
    annotations: Vec<(String, String)>,
}

impl IndexBuilder {
    pub fn new(media_types: MediaTypes) -> IndexBuilder {
        IndexBuilder {
            media_types,
            entries: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// Adds a platform manifest (platform taken from the image).
    pub fn image(mut self, image: Image) -> Self {
        let d = image.descriptor();
        self.entries.push((image, d));
        self
    }

    /// Adds an attestation manifest for `image` (see [`Image::attestation`])
    /// with buildx's `vnd.docker.reference.*` annotations.
    pub fn attestation_for(mut self, image: &Image) -> Self {
        let att = image.attestation();
        let mut d = att.descriptor();
        d["annotations"] = json!({
            "vnd.docker.reference.digest": image.manifest_digest,
            "vnd.docker.reference.type": "attestation-manifest",
        });
        self.entries.push((att, d));
        self
    }

    /// Adds a manifest with a hand-made descriptor.
    pub fn entry(mut self, image: Image, descriptor: Value) -> Self {
        self.entries.push((image, descriptor));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    pub fn build(self) -> Index {
        let media_type = self.media_types.index();
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": self.entries.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            index["annotations"] = annotations_json(&self.annotations);
        }
        let bytes = serde_json::to_vec(&index).expect("serialize the index");
        Index {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
            manifests: self.entries.into_iter().map(|(i, _)| i).collect(),
        }
    }
}

/// A built index and the manifests it lists (attestations included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
    pub manifests: Vec<Image>,
}

impl Index {
    /// An index of linux `amd64` and `arm64` images (each one gzip layer
    /// with `/etc/cairn-e2e` = `"<content> <arch>"`), plus an attestation for
    /// the amd64 one when `media_types` is OCI.
    pub fn multi_arch(media_types: MediaTypes, content: &str) -> Index {
        let image = |arch: &str| {
            let layer = LayerBuilder::new().dir("etc", 0o755).file(
                "etc/cairn-e2e",
                0o644,
                format!("{content} {arch}"),
            );
            Image::builder()
                .arch(arch)
                .media_types(media_types)
                .layer_from(&layer, Compression::Gzip)
                .build()
        };
        let amd64 = image("amd64");
        let mut b = IndexBuilder::new(media_types)
            .image(amd64.clone())
            .image(image("arm64"));
        if media_types == MediaTypes::Oci {
            b = b.attestation_for(&amd64);
        }
        b.build()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("the index is JSON")
    }

    /// The first manifest for linux/`architecture`.
    pub fn image_for(&self, architecture: &str) -> Option<&Image> {
        self.manifests
            .iter()
            .find(|i| i.platform.os == "linux" && i.platform.architecture == architecture)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    type PaxRecords = Vec<(String, Vec<u8>)>;

    fn read_entries(tar: &[u8]) -> Vec<(String, EntryType, PaxRecords)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .expect("tar entries")
            .map(|e| {
                let mut e = e.expect("tar entry");
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let ty = e.header().entry_type();
                let pax = match e.pax_extensions().expect("read PAX extensions") {
                    Some(exts) => exts
                        .map(|x| {
                            let x = x.expect("a PAX record");
                            let key = x.key().expect("a UTF-8 PAX key").to_string();
                            (key, x.value_bytes().to_vec())
                        })
                        .collect(),
                    None => Vec::new(),
                };
                (path, ty, pax)
            })
            .collect()
    }

    #[test]
    fn pax_record_lengths() {
        assert_eq!(pax_record("path", b"a"), b"9 path=a\n");
        // 98 bytes of record + 2 digits = 100, which has 3 digits: 101.
        let r = pax_record("k", &[b'x'; 94]);
        assert_eq!(r.len(), 101);
        assert!(r.starts_with(b"101 k="));
    }

    #[test]
    fn layer_entries_round_trip() {
        let long = format!("usr/{}/file", "d".repeat(120));
        let long_pax = format!("usr/{}/pax", "p".repeat(120));
        let tar = LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/a", 0o4755, b"hello")
            .mtime(42)
            .file_owned("etc/b", 0o600, 1000, 1001, b"b")
            .file_with_xattrs(
                "etc/c",
                0o644,
                b"c",
                &[("user.foo", b"bar"), ("security.capability", &[1, 0, 0, 2])],
            )
            .symlink("etc/l", "a")
            .hardlink("etc/h", "etc/a")
            .fifo("etc/fifo")
            .char_device("dev/null", 1, 3)
            .whiteout("etc/old")
            .opaque("var")
            .file(&long, 0o644, b"long")
            .file(&long_pax, 0o644, b"longpax")
            .pax_names()
            .build();
        let entries = read_entries(&tar);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/",
                "etc/a",
                "etc/b",
                "etc/c",
                "etc/l",
                "etc/h",
                "etc/fifo",
                "dev/null",
                "etc/.wh.old",
                "var/.wh..wh..opq",
                long.as_str(),
                long_pax.as_str()
            ]
        );
        assert_eq!(entries[4].1, EntryType::Symlink);
        assert_eq!(entries[5].1, EntryType::Link);
        assert_eq!(entries[6].1, EntryType::Fifo);
        assert_eq!(entries[7].1, EntryType::Char);
        assert!(
            entries[3]
                .2
                .contains(&("SCHILY.xattr.user.foo".into(), b"bar".to_vec()))
        );
        assert!(
            entries[11]
                .2
                .iter()
                .any(|(k, v)| k == "path" && v == long_pax.as_bytes())
        );

        let mut a = tar::Archive::new(&tar[..]);
        let mut it = a.entries().expect("entries");
        it.next().expect("dir").expect("dir");
        let mut file = it.next().expect("file").expect("file");
        assert_eq!(file.header().mode().expect("mode"), 0o4755);
        assert_eq!(file.header().mtime().expect("mtime"), 42);
        let mut s = String::new();
        file.read_to_string(&mut s).expect("read");
        assert_eq!(s, "hello");
        drop(file);
        let b = it.next().expect("b").expect("b");
        assert_eq!(b.header().uid().expect("uid"), 1000);
        assert_eq!(b.header().gid().expect("gid"), 1001);
        assert_eq!(b.header().mtime().expect("mtime"), DEFAULT_MTIME);
    }

    #[test]
    fn compressions_decode_to_the_tar() {
        let tar = LayerBuilder::new()
            .file("a", 0o644, vec![7u8; 5000])
            .file("b", 0o644, b"b")
            .build();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::GzipMultiMember,
            Compression::Zstd,
        ] {
            let blob = compress(&tar, c);
            let mut back = Vec::new();
            match c {
                Compression::None => back = blob.clone(),
                Compression::Gzip | Compression::GzipMultiMember => {
                    flate2::read::MultiGzDecoder::new(&blob[..])
                        .read_to_end(&mut back)
                        .expect("gunzip");
                }
                Compression::Zstd => back = zstd::decode_all(&blob[..]).expect("unzstd"),
            }
            assert_eq!(back, tar, "{c:?}");
        }
        // Really several members: a single-member decoder stops early.
        let multi = compress(&tar, Compression::GzipMultiMember);
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&multi[..])
            .read_to_end(&mut first)
            .expect("first member");
        assert!(first.len() < tar.len());
    }

    #[test]
    fn image_and_index_digests() {
        let img = Image::simple("amd64", "x");
        assert_eq!(img.manifest_digest, sha256_digest(&img.manifest));
        let m = img.manifest_json();
        assert_eq!(m["config"]["digest"], json!(img.config_digest));
        assert_eq!(m["layers"][0]["mediaType"], json!(OCI_LAYER_GZIP));
        let c = img.config_json();
        assert_eq!(c["rootfs"]["diff_ids"][0], json!(img.layers[0].diff_id));

        let idx = Index::multi_arch(MediaTypes::DockerV2, "y");
        let j = idx.json();
        assert_eq!(j["mediaType"], json!(DOCKER_MANIFEST_LIST));
        assert_eq!(j["manifests"].as_array().map(Vec::len), Some(2));
        let arm = idx.image_for("arm64").expect("arm64");
        assert_eq!(arm.manifest_json()["mediaType"], json!(DOCKER_MANIFEST));
        assert_eq!(j["manifests"][1]["platform"]["variant"], json!("v8"));

        let oci = Index::multi_arch(MediaTypes::Oci, "z");
        assert_eq!(oci.manifests.len(), 3);
        assert_eq!(
            oci.json()["manifests"][2]["platform"]["architecture"],
            json!("unknown")
        );
    }
}
