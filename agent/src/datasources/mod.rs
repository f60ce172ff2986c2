//! Instance data sources: where a machine's own instance data (a TOML document) comes from.
//!
//! The sources, in this order; the **first one present wins**:
//!
//! 1. **cmdline** — the kernel command line `cairn.instance=URL`, fetched by the network phase. `https://` to
//!    any host, its certificate verified against the Mozilla root set and the target's CA bundle
//!    ([`Config::ca_bundles`]); `http://` to a loopback host only (`localhost`, 127.0.0.0/8, `[::1]`: tests);
//!    any other URL is refused. The URL is checked by [`detect`], so a URL this build cannot fetch fails the
//!    early (system) phase instead of waiting for the network.
//! 2. **fw_cfg** — QEMU's `opt/cairn/instance.toml`, i.e.
//!    `{fw_cfg_dir}/by_name/opt/cairn/instance.toml/raw`. The source is present when the entry's folder
//!    (`by_name/opt/cairn/instance.toml`) exists; a missing or unreadable `raw` inside it is an error. When
//!    `fw_cfg_dir` itself does not exist, [`Config::load_module`] (if set) is called with `qemu_fw_cfg` and the
//!    folder is looked at again; a failing hook means "no fw_cfg" (the hook is the caller's: it logs what it
//!    wants). This module never loads anything itself, and [`Config::for_root`] sets no hook.
//! 3. **esp** — `{esp_dir}/cairn/instance.toml` on the EFI system partition (skipped when `esp_dir` is `None`).
//! 4. **ec2** — the EC2 instance metadata service, IMDSv2 only. Considered only when `imds_endpoint` is set
//!    (tests: the EC2 source is then forced at that address), when the kernel command line says
//!    `cairn.datasource=ec2`, or when DMI says the machine is on EC2 (see [`on_ec2`]). Detection makes no
//!    request; the network phase PUTs `{endpoint}/latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds:
//!    300`), then GETs `{endpoint}/latest/user-data` with `X-aws-ec2-metadata-token`. A service that does not
//!    give a token (403/404/405 from an IMDSv1-only service, an empty body...) is an error: v1 is never used,
//!    no GET is sent. A 404 on user-data means the machine has no user data: the source is present with empty
//!    text (an empty TOML document: nothing to add).
//!
//! None present: [`Detected::None`]. A source that is present but broken (an unreadable file, a directory where
//! the file should be, more than [`MAX_SIZE`] bytes, text that is not UTF-8, an HTTP error after bounded
//! retries, an IMDSv1-only service) is a [`DatasourceError`] naming it; it never falls through to the next
//! source. The text is not parsed here: the caller parses the TOML and names [`Found::name`] in its errors.
//!
//! Decisions:
//! - [`detect`] reads local files but never touches the network; [`fetch`] is the network phase. Both check the
//!   command line URL and the metadata endpoint the same way.
//! - [`Config::live`] keeps the contract's `-> Config`; a `/proc/cmdline` it cannot read is remembered in
//!   [`Config::cmdline_error`] and makes [`detect`] fail (source `kernel command line`) instead of passing for
//!   an empty command line.
//! - The ESP's folder: [`Config::live`] takes the first of `/efi`, `/boot/efi`, `/boot` that is a mount point
//!   (a folder on another device than its parent; a systemd automount counts, reading the file mounts it);
//!   [`Config::for_root`] takes `ROOT/efi`, else `ROOT/boot/efi`, when it is a folder. Either can be overridden.
//! - [`SourceKind::File`] (`file`) is not a source [`detect`] returns: it lets the caller label instance data
//!   read from a file it was given (`apply --instance FILE`) the same way in the status.
//! - `cairn.datasource` accepts only `ec2`; any other value (or none: a bare `cairn.datasource`) is an error
//!   from [`detect`], whatever source would have won, so a typo never goes unnoticed.
//! - A file is "absent" only when its path does not exist (`ENOENT`, or `ENOTDIR`: a parent is not a folder).
//!   Anything else that exists there is the source, present: a directory, a FIFO, a dangling symlink, or a
//!   file that cannot be read is an error, not a reason to try the next source.
//! - Every source's text is bounded by [`MAX_SIZE`] (1 MiB) and must be UTF-8; a leading UTF-8 byte order mark
//!   is dropped (Windows editors write one, and the ESP file is often written from Windows); gzip-compressed
//!   data (cloud-init accepts compressed user data) is refused with a message saying so.
//! - Network behaviour is bounded by [`Config::retries`] (retries after the first attempt),
//!   [`Config::retry_delay`] (doubling per retry, capped at 30 s) and [`Config::timeout`] (per attempt); see
//!   [`http`]. The defaults: 4 retries (5 attempts), 1 s, 10 s. A refused TLS certificate is never retried.
//! - HTTPS trusts the Mozilla root set compiled into the agent (`webpki-roots`) and the CA bundle of the system
//!   being configured, [`CA_BUNDLE`] (Debian's `ca-certificates`, with any CA the image or its builder added):
//!   [`Config::live`] reads `/etc/ssl/certs/ca-certificates.crt`, [`Config::for_root`] the one inside the root.
//!   A bundle that is absent is skipped; one that is present but unreadable or unparsable fails the fetch,
//!   naming it. The bundle is read by [`fetch`], not by [`detect`].
//! - Names ([`Found::name`], [`DatasourceError::source`]): `cairn.instance=URL` (the URL as written),
//!   `fw_cfg opt/cairn/instance.toml`, the ESP file's path, `ec2 ENDPOINT`. Status JSON uses
//!   [`SourceKind::as_str`].

mod cmdline;
mod ec2;
mod esp;
mod fw_cfg;
pub mod http;
#[cfg(test)]
mod proptests;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_profile::contract;

pub use cmdline::cmdline_value;
pub use ec2::on_ec2;

use crate::target::Target;

/// Where the kernel exposes QEMU's fw_cfg entries.
pub const DEFAULT_FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg";
/// The kernel module that makes [`DEFAULT_FW_CFG_DIR`].
pub const FW_CFG_MODULE: &str = "qemu_fw_cfg";
/// The fw_cfg entry name (`-fw_cfg name=opt/cairn/instance.toml,file=...`).
pub const FW_CFG_NAME: &str = cairn_profile::contract::FW_CFG_INSTANCE;
/// The file's path on the EFI system partition.
pub const ESP_FILE: &str = "cairn/instance.toml";
/// Where the kernel exposes DMI (SMBIOS) strings.
pub const DEFAULT_DMI_DIR: &str = "/sys/class/dmi/id";
/// The EC2 instance metadata service.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The largest instance data accepted from any source.
pub const MAX_SIZE: usize = http::MAX_BODY;
/// The system's bundle of trusted CA certificates (PEM), trusted for HTTPS besides the Mozilla root set.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the live system's ESP may be mounted, in the order [`Config::live`] looks.
pub const ESP_MOUNT_POINTS: [&str; 3] = [contract::ESP_MOUNT, "/boot/efi", "/boot"];

pub const DEFAULT_RETRIES: u32 = 4;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A hook that loads a kernel module by name (e.g. by running `modprobe`).
pub type LoadModule = fn(&str) -> Result<(), String>;

/// Where to look for instance data, and how patiently to fetch it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The kernel command line text (`/proc/cmdline`, or `--cmdline TEXT`).
    pub cmdline: String,
    /// Why the command line could not be read ([`Config::live`]); [`detect`] then fails with it.
    pub cmdline_error: Option<String>,
    /// The fw_cfg sysfs folder; default [`DEFAULT_FW_CFG_DIR`].
    pub fw_cfg_dir: PathBuf,
    /// Where the ESP is mounted, if known.
    pub esp_dir: Option<PathBuf>,
    /// The DMI sysfs folder; default [`DEFAULT_DMI_DIR`].
    pub dmi_dir: PathBuf,
    /// Forces the EC2 source at this address (`--imds-endpoint URL`: tests), e.g. `http://127.0.0.1:8080`.
    pub imds_endpoint: Option<String>,
    /// Called with [`FW_CFG_MODULE`] when `fw_cfg_dir` does not exist; `None`: nothing is loaded.
    pub load_module: Option<LoadModule>,
    /// Network attempts after the first one.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each further retry (capped at 30 s).
    pub retry_delay: Duration,
    /// The deadline of one network attempt (connect, TLS handshake, send, whole response).
    pub timeout: Duration,
    /// PEM bundles of CA certificates trusted for HTTPS besides the Mozilla root set (each read when it
    /// exists); default: the target's [`CA_BUNDLE`].
    pub ca_bundles: Vec<PathBuf>,
}

impl Config {
    /// The running machine: `/proc/cmdline`, the real sysfs folders, the first of [`ESP_MOUNT_POINTS`] that is
    /// a mount point, default network bounds, [`CA_BUNDLE`]. No module-loading hook: the caller sets
    /// [`Config::load_module`] (and may override any field). A `/proc/cmdline` that cannot be read is kept in
    /// [`Config::cmdline_error`] and [`detect`] fails with it: an unread command line could hide
    /// `cairn.instance`, so it is never taken as an empty one.
    pub fn live() -> Config {
        let (cmdline, cmdline_error) = match fs::read_to_string("/proc/cmdline") {
            Ok(text) => (text, None),
            Err(e) => (
                String::new(),
                Some(format!("cannot read /proc/cmdline: {e}")),
            ),
        };
        let esp_dir = ESP_MOUNT_POINTS
            .iter()
            .map(Path::new)
            .find(|dir| is_mount_point(dir))
            .map(Path::to_path_buf);
        Config {
            cmdline,
            cmdline_error,
            fw_cfg_dir: PathBuf::from(DEFAULT_FW_CFG_DIR),
            esp_dir,
            dmi_dir: PathBuf::from(DEFAULT_DMI_DIR),
            imds_endpoint: None,
            load_module: None,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            timeout: DEFAULT_TIMEOUT,
            ca_bundles: vec![PathBuf::from(CA_BUNDLE)],
        }
    }

    /// A root folder standing for a machine (`apply --root`): nothing of the host is read. The command line is
    /// empty (set it from `--cmdline`), fw_cfg is `ROOT/sys/firmware/qemu_fw_cfg`, DMI is
    /// `ROOT/sys/class/dmi/id`, the ESP is the first of `ROOT/efi` and `ROOT/boot/efi` that is a folder (else
    /// none), no module is ever loaded, default network bounds, no metadata endpoint, the root's
    /// [`CA_BUNDLE`] (symlinks on its way resolved inside the root, as for every file the agent writes there).
    pub fn for_root(root: &Path) -> Config {
        let esp_dir = [contract::ESP_MOUNT_IN_ROOT, "boot/efi"]
            .iter()
            .map(|dir| root.join(dir))
            .find(|dir| dir.is_dir());
        // A symlink loop is left for the read to report, naming the path.
        let ca_bundle = Target::root_dir(root)
            .resolve(CA_BUNDLE, true)
            .unwrap_or_else(|_| root.join(CA_BUNDLE.trim_start_matches('/')));
        Config {
            cmdline: String::new(),
            cmdline_error: None,
            fw_cfg_dir: root.join(DEFAULT_FW_CFG_DIR.trim_start_matches('/')),
            esp_dir,
            dmi_dir: root.join(DEFAULT_DMI_DIR.trim_start_matches('/')),
            imds_endpoint: None,
            load_module: None,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            timeout: DEFAULT_TIMEOUT,
            ca_bundles: vec![ca_bundle],
        }
    }

    /// The HTTP client's bounds (and trusted CA bundles) for this configuration.
    pub fn http_policy(&self) -> http::Policy {
        http::Policy {
            retries: self.retries,
            retry_delay: self.retry_delay,
            timeout: self.timeout,
            max_body: MAX_SIZE,
            ca_bundles: self.ca_bundles.clone(),
        }
    }
}

/// A folder on another device than its parent (or `/`-like: its own parent).
fn is_mount_point(dir: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (fs::symlink_metadata(dir), dir.parent()) else {
        return false;
    };
    let Ok(parent_meta) = fs::metadata(parent) else {
        return false;
    };
    meta.is_dir() && meta.dev() != parent_meta.dev()
}

/// Which source [`detect`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// No source is present: the profile alone applies.
    None,
    /// A local source, already read.
    Local(Found),
    /// A network source, for the network phase to [`fetch`].
    Network(NetworkSource),
}

impl Detected {
    /// The source's kind, `None` when no source is present.
    pub fn kind(&self) -> Option<SourceKind> {
        match self {
            Detected::None => None,
            Detected::Local(found) => Some(found.source),
            Detected::Network(source) => Some(source.kind()),
        }
    }
}

/// A source that the network phase fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSource {
    /// `cairn.instance=URL`, the URL as written on the command line.
    Url(String),
    /// The EC2 metadata service at `endpoint` (`http://host[:port]`, no trailing slash).
    Ec2 { endpoint: String },
}

impl NetworkSource {
    pub fn kind(&self) -> SourceKind {
        match self {
            NetworkSource::Url(_) => SourceKind::Cmdline,
            NetworkSource::Ec2 { .. } => SourceKind::Ec2,
        }
    }

    /// Where the data will come from, in words (for plans and logs).
    pub fn describe(&self) -> String {
        match self {
            NetworkSource::Url(url) => format!("{url} (cairn.instance on the kernel command line)"),
            NetworkSource::Ec2 { endpoint } => {
                format!("the EC2 instance metadata service at {endpoint} (IMDSv2)")
            }
        }
    }

    /// The source's human name, as [`Found::name`] and [`DatasourceError::source`] will give it.
    pub fn name(&self) -> String {
        match self {
            NetworkSource::Url(url) => cmdline::name(url),
            NetworkSource::Ec2 { endpoint } => ec2::name(endpoint),
        }
    }
}

/// Instance data found, as text (not parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub source: SourceKind,
    /// The human name of the source: `cairn.instance=URL`, `fw_cfg opt/cairn/instance.toml`, the ESP file's
    /// path, `ec2 ENDPOINT`.
    pub name: String,
    /// The TOML document (possibly empty).
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Cmdline,
    FwCfg,
    Esp,
    Ec2,
    /// Not a source [`detect`] returns: instance data the caller read from a file it was given
    /// (`apply --instance FILE`).
    File,
}

impl SourceKind {
    /// The name used in the status JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Cmdline => "cmdline",
            SourceKind::FwCfg => "fw_cfg",
            SourceKind::Esp => "esp",
            SourceKind::Ec2 => "ec2",
            SourceKind::File => "file",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source that is present but cannot be used (or a command line that names a source badly).
///
/// Display: `{source}: {message}`. (`Display` and `Error` are written by hand: `thiserror` would take a field
/// named `source` for the error's cause.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasourceError {
    /// The source's human name (as in [`Found::name`]).
    pub source: String,
    pub message: String,
}

impl DatasourceError {
    pub fn new(source: impl Into<String>, message: impl Into<String>) -> DatasourceError {
        DatasourceError {
            source: source.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DatasourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for DatasourceError {}

/// Decides which source applies, reading the local ones; makes no network request.
pub fn detect(cfg: &Config) -> Result<Detected, DatasourceError> {
    if let Some(problem) = &cfg.cmdline_error {
        return Err(DatasourceError::new("kernel command line", problem.clone()));
    }
    let ec2_asked = ec2::asked_on_cmdline(&cfg.cmdline)?;
    if let Some(source) = cmdline::detect(&cfg.cmdline)? {
        return Ok(Detected::Network(source));
    }
    if let Some(found) = fw_cfg::detect(cfg)? {
        return Ok(Detected::Local(found));
    }
    if let Some(found) = esp::detect(cfg)? {
        return Ok(Detected::Local(found));
    }
    if let Some(source) = ec2::detect(cfg, ec2_asked)? {
        return Ok(Detected::Network(source));
    }
    Ok(Detected::None)
}

/// The network phase: fetches a source [`detect`] chose.
pub fn fetch(source: &NetworkSource, cfg: &Config) -> Result<Found, DatasourceError> {
    match source {
        NetworkSource::Url(url) => cmdline::fetch(url, cfg),
        NetworkSource::Ec2 { endpoint } => ec2::fetch(endpoint, cfg),
    }
}

/// Reads a local source file: `Ok(None)` when nothing is at `path`, the text when a regular file is, an error
/// naming `source` for anything else.
fn read_local(path: &Path, source: &str) -> Result<Option<String>, DatasourceError> {
    if absent(path, source)? {
        return Ok(None);
    }
    read_required(path, source).map(Some)
}

/// Whether nothing at all is at `path` (not even a dangling symlink); an error when that cannot be told.
fn absent(path: &Path, source: &str) -> Result<bool, DatasourceError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(false),
        Err(e) if is_absent(&e) => Ok(true),
        Err(e) => Err(DatasourceError::new(
            source,
            format!("cannot look at {}: {e}", path.display()),
        )),
    }
}

/// Reads a file that must be there.
fn read_required(path: &Path, source: &str) -> Result<String, DatasourceError> {
    let shown = path.display().to_string();
    // The path is said unless it is the source's name already.
    let fail = |what: String| {
        if shown == source {
            DatasourceError::new(source, what)
        } else {
            DatasourceError::new(source, format!("{shown}: {what}"))
        }
    };
    // Checked before opening: opening a FIFO would block.
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound if fs::symlink_metadata(path).is_ok() => {
            fail("a symlink to nothing".to_string())
        }
        io::ErrorKind::NotFound => fail("missing".to_string()),
        _ => fail(format!("cannot read: {e}")),
    })?;
    if meta.is_dir() {
        return Err(fail("a directory, not a file".to_string()));
    }
    if !meta.is_file() {
        return Err(fail("not a regular file".to_string()));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_SIZE as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() > MAX_SIZE {
        return Err(fail(format!("larger than {MAX_SIZE} bytes")));
    }
    to_text(bytes, source)
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Instance data bytes as text: UTF-8, without a leading byte order mark.
fn to_text(mut bytes: Vec<u8>, source: &str) -> Result<String, DatasourceError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(DatasourceError::new(
            source,
            "gzip-compressed data: instance data must be plain TOML text",
        ));
    }
    let bom = if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
        3
    } else {
        0
    };
    utf8_text(bytes, source, bom)
}

/// Bytes as UTF-8 text, or where the first invalid byte is: its offset in the file (`skipped` bytes were
/// dropped before `bytes`), its line and column (in characters, as the profile's diagnostics count them).
pub(crate) fn utf8_text(
    bytes: Vec<u8>,
    source: &str,
    skipped: usize,
) -> Result<String, DatasourceError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&e.as_bytes()[..valid]);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        DatasourceError::new(
            source,
            format!(
                "not UTF-8 text (invalid byte at offset {}, line {line}, column {column})",
                valid + skipped
            ),
        )
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary folder, removed on drop (std only: no dev-dependency for the agent).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static COUNT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "cairn-agent-test-{}-{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            TempDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TempDir;
    use super::*;

    fn err_text(r: Result<String, DatasourceError>) -> String {
        match r {
            Ok(text) => panic!("expected an error, got {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn text_is_utf8_without_bom() {
        assert_eq!(to_text(b"a = 1\n".to_vec(), "s").unwrap(), "a = 1\n");
        assert_eq!(
            to_text(b"\xEF\xBB\xBFa = 1".to_vec(), "s").unwrap(),
            "a = 1"
        );
        assert_eq!(to_text(Vec::new(), "s").unwrap(), "");
        assert_eq!(
            err_text(to_text(b"ab\xFFcd".to_vec(), "src")),
            "src: not UTF-8 text (invalid byte at offset 2, line 1, column 3)"
        );
        // The offset counts a byte order mark, the column counts characters.
        assert_eq!(
            err_text(to_text(
                b"\xEF\xBB\xBFa = 1\nb = \"\xC3\xA9\xC3\x28\"".to_vec(),
                "src"
            )),
            "src: not UTF-8 text (invalid byte at offset 16, line 2, column 7)"
        );
        assert!(err_text(to_text(vec![0x1f, 0x8b, 8, 0], "src")).contains("gzip"));
    }

    #[test]
    fn local_files() {
        let dir = TempDir::new();
        let d = dir.path();
        assert_eq!(read_local(&d.join("missing"), "s").unwrap(), None);
        // A parent that is a file: still nothing there.
        fs::write(d.join("file"), "x").unwrap();
        assert_eq!(read_local(&d.join("file/child"), "s").unwrap(), None);
        assert_eq!(
            read_local(&d.join("file"), "s").unwrap().as_deref(),
            Some("x")
        );

        fs::create_dir(d.join("dir")).unwrap();
        let e = read_local(&d.join("dir"), "s").unwrap_err();
        assert_eq!(e.source, "s");
        assert!(e.message.ends_with("dir: a directory, not a file"), "{e}");

        std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling")).unwrap();
        let e = read_local(&d.join("dangling"), "s").unwrap_err();
        assert!(e.message.ends_with("a symlink to nothing"), "{e}");

        let fifo = d.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_local(&fifo, "s").unwrap_err();
            assert!(e.message.ends_with("not a regular file"), "{e}");
        }

        fs::write(d.join("big"), vec![b'#'; MAX_SIZE + 1]).unwrap();
        let e = read_local(&d.join("big"), "s").unwrap_err();
        assert!(e.message.contains("larger than 1048576 bytes"), "{e}");
        fs::write(d.join("max"), vec![b'#'; MAX_SIZE]).unwrap();
        assert_eq!(
            read_local(&d.join("max"), "s").unwrap().map(|t| t.len()),
            Some(MAX_SIZE)
        );
    }

    #[test]
    fn for_root_reads_nothing_of_the_host() {
        let dir = TempDir::new();
        let root = dir.path();
        let cfg = Config::for_root(root);
        assert_eq!(cfg.cmdline, "");
        assert_eq!(cfg.fw_cfg_dir, root.join("sys/firmware/qemu_fw_cfg"));
        assert_eq!(cfg.dmi_dir, root.join("sys/class/dmi/id"));
        assert_eq!(cfg.esp_dir, None);
        assert!(cfg.load_module.is_none());
        assert!(cfg.imds_endpoint.is_none());
        assert_eq!(
            cfg.ca_bundles,
            [root.join("etc/ssl/certs/ca-certificates.crt")]
        );
        // An absolute symlink on the way is followed inside the root, never on the host.
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/usr/share/ssl", root.join("etc/ssl")).unwrap();
        assert_eq!(
            Config::for_root(root).ca_bundles,
            [root.join("usr/share/ssl/certs/ca-certificates.crt")]
        );
        assert_eq!(
            Config::live().ca_bundles,
            [PathBuf::from("/etc/ssl/certs/ca-certificates.crt")]
        );
        fs::create_dir_all(root.join("boot/efi")).unwrap();
        assert_eq!(Config::for_root(root).esp_dir, Some(root.join("boot/efi")));
        fs::create_dir_all(root.join("efi")).unwrap();
        assert_eq!(Config::for_root(root).esp_dir, Some(root.join("efi")));
        assert_eq!(detect(&Config::for_root(root)).unwrap(), Detected::None);
    }

    #[test]
    fn an_unread_cmdline_fails_detection() {
        let dir = TempDir::new();
        let cfg = Config {
            cmdline_error: Some("cannot read /proc/cmdline: denied".into()),
            ..Config::for_root(dir.path())
        };
        assert_eq!(
            detect(&cfg).unwrap_err().to_string(),
            "kernel command line: cannot read /proc/cmdline: denied"
        );
    }

    #[test]
    fn source_kinds_and_errors_display() {
        let names: Vec<&str> = [
            SourceKind::Cmdline,
            SourceKind::FwCfg,
            SourceKind::Esp,
            SourceKind::Ec2,
            SourceKind::File,
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(names, ["cmdline", "fw_cfg", "esp", "ec2", "file"]);
        assert_eq!(
            DatasourceError::new("fw_cfg opt/cairn/instance.toml", "boom").to_string(),
            "fw_cfg opt/cairn/instance.toml: boom"
        );
        let url = NetworkSource::Url("http://127.0.0.1/x".into());
        assert_eq!(
            (url.kind(), url.name()),
            (
                SourceKind::Cmdline,
                "cairn.instance=http://127.0.0.1/x".into()
            )
        );
        let ec2 = NetworkSource::Ec2 {
            endpoint: DEFAULT_IMDS_ENDPOINT.into(),
        };
        assert_eq!(
            (ec2.kind(), ec2.name()),
            (SourceKind::Ec2, "ec2 http://169.254.169.254".into())
        );
        assert_eq!(Detected::Network(ec2).kind(), Some(SourceKind::Ec2));
        assert_eq!(Detected::None.kind(), None);
    }
}
