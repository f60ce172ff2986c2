//! `cairn-agent update SOURCE`: writes a payload that `cairn push` made into the inactive slot and makes it the
//! next boot, with a boot counter.
//!
//! [`source`] (where the payload is, every byte checked against its digest) → [`slot`] (the disk's A/B
//! partitions) → [`esp`] (the slot's unified kernel image, its boot entry). The order is what makes a power cut
//! harmless:
//!
//! 1. Everything is checked before the disk is touched: the manifest (by digest, [`Payload::parse`]), its
//!    architecture, that it is not the running root nor one this node rolled back (unless allowed), the build
//!    report and the UKI (both must name the manifest's root hash; the UKI must be signed by the running image's
//!    Secure Boot certificate when it has one), and that the running entry is not itself still on trial.
//! 2. The inactive slot's boot entry is deleted and its partitions renamed [`slot::EMPTY_NAME`]: from here on,
//!    only the running slot can boot.
//! 3. The root and hash blobs stream into the slot's partitions, checked as they come; the slot is then read
//!    back from the disk and must verify against the payload's root hash, as the kernel will check it.
//! 4. The UKI is written to a temporary name on the ESP and synced.
//! 5. The partitions get the GUIDs the root hash gives, and names.
//! 6. The UKI is renamed `EFI/Linux/cairn-GENERATION-SLOT+3.efi`, the next generation: the commit. systemd-boot
//!    boots it (three tries), and falls back to the running entry once they are spent.
//!
//! The running slot's partitions and files are never written.

pub mod esp;
pub mod slot;
pub mod source;

use std::path::PathBuf;
use std::time::Instant;

use cairn_profile::authenticode;
use cairn_profile::boot_entry;
use cairn_profile::contract;
use cairn_profile::payload::{self, Part, Payload, PayloadError, ReportFacts};
use serde::{Deserialize, Serialize};

use crate::datasources::http::Sink;
use esp::{Esp, EspError};
use slot::{Disk, SlotError};
use source::{Fetcher, Memory, Source, SourceError};

/// This node's record of versions that were tried and rolled back (under the root given).
pub const ROLLBACKS_FILE: &str = "var/lib/cairn/rollbacks.json";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("the kernel command line has no {key}=ROOTHASH: this is not a running cairn image")]
    NotCairn { key: &'static str },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the payload {source_text}: {error}")]
    Payload {
        source_text: String,
        error: PayloadError,
    },
    /// The payload is fine but this node does not take it.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("the ESP: {0}")]
    Esp(#[from] EspError),
    #[error("{path}: {reason}")]
    State { path: String, reason: String },
    /// The payload's UKI is not signed by the running image's Secure Boot certificate.
    #[error("the payload's unified kernel image is refused: {0}")]
    Signature(String),
}

impl UpdateError {
    /// Bad input (exit 2) rather than a failure on the way (exit 1).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            UpdateError::Source(SourceError::Parse { .. })
                | UpdateError::Payload { .. }
                | UpdateError::Refused(_)
                | UpdateError::Signature(_)
                | UpdateError::Source(SourceError::Digest { .. })
                | UpdateError::Source(SourceError::Size { .. })
        )
    }
}

/// Where the update reads and writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// `HOST/REPO@sha256:...` or `oci-layout:DIR@sha256:...`.
    pub source: String,
    /// The disk; default: the one holding the running root.
    pub disk: Option<PathBuf>,
    /// The mounted ESP.
    pub esp: PathBuf,
    /// The running kernel's command line (its `cairn.verity=` says which root runs).
    pub cmdline: String,
    /// Where `/var/lib/cairn` and the CA bundle are: `/` on a node.
    pub root: PathBuf,
    /// Apply a version this node rolled back from.
    pub allow_rolled_back: bool,
    /// Progress lines (each on its own line, no newline).
    pub progress: fn(&str),
}

/// What an update did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub version: String,
    pub root_hash: String,
    /// `false`: the payload is the running root, nothing was written.
    pub written: bool,
    pub slot: &'static str,
    pub entry: String,
    pub generation: u64,
    /// Bytes fetched per part.
    pub parts: Vec<(String, u64)>,
    pub millis: u64,
}

/// A version this node booted and fell back from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub root_hash: String,
    /// Its entry's title.
    pub title: String,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Rollbacks {
    rolled_back: Vec<Rollback>,
}

fn hash_bytes(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// The root this initrd's architecture boots.
const ARCH: cairn_profile::Arch = if cfg!(target_arch = "aarch64") {
    cairn_profile::Arch::Arm64
} else {
    cairn_profile::Arch::Amd64
};

impl Options {
    /// The disk given, or the running system's: the one holding the running root (`running` its hash).
    fn open_disk(&self, running: &[u8; 32], write: bool) -> Result<Disk, UpdateError> {
        let types = contract::root_types(ARCH);
        Ok(match &self.disk {
            Some(path) => Disk::open(path, None, running, types, write)?,
            None => Disk::find_live(running, types, write)?,
        })
    }

    fn rollbacks_path(&self) -> PathBuf {
        self.root.join(ROLLBACKS_FILE)
    }

    fn read_rollbacks(&self) -> Result<Rollbacks, UpdateError> {
        let path = self.rollbacks_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UpdateError::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rollbacks::default()),
            Err(e) => Err(UpdateError::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn write_rollbacks(&self, r: &Rollbacks) -> Result<(), UpdateError> {
        let path = self.rollbacks_path();
        let fail = |e: std::io::Error| UpdateError::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(fail)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        let text = serde_json::to_vec_pretty(r).unwrap_or_default();
        std::io::Write::write_all(&mut tmp, &text).map_err(fail)?;
        tmp.as_file().sync_all().map_err(fail)?;
        tmp.persist(&path).map_err(|e| fail(e.error))?;
        Ok(())
    }
}

/// A rollback, from the entry that ran out of tries.
fn rollback_of(e: &esp::Found) -> Rollback {
    Rollback {
        root_hash: e.root_hash().unwrap_or_default(),
        title: e.title(),
        reason: format!(
            "{} was not marked good in {} boots ({})",
            e.title(),
            e.ranked.name.tries_done.unwrap_or(boot_entry::TRIES),
            e.ranked.file
        ),
    }
}

/// The running root hash, from the kernel command line.
fn running(cmdline: &str) -> Result<(String, [u8; 32]), UpdateError> {
    let key = contract::VERITY_KEY;
    let hash = crate::datasources::cmdline_value(cmdline, key)
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| h.len() == 64)
        .ok_or(UpdateError::NotCairn { key })?;
    let bytes = hash_bytes(&hash).ok_or(UpdateError::NotCairn { key })?;
    Ok((hash, bytes))
}

/// One slot as `cairn-agent status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: &'static str,
    /// Its root partition's GPT name (`_empty` until an update wrote it).
    pub partition: String,
    pub running: bool,
    /// What its boot entry says, when it has one.
    pub title: Option<String>,
    pub root_hash: Option<String>,
    pub entry: Option<String>,
    /// `None`: no counter (marked good, or never counted).
    pub tries_left: Option<u32>,
    /// Its entry has no counter: it booted and was marked good (or is the image's first).
    pub good: bool,
    /// systemd-boot starts it next.
    pub next_boot: bool,
}

/// Both slots and the rollbacks this node saw.
#[derive(Debug, Clone, Serialize)]
pub struct SlotsStatus {
    pub slots: Vec<SlotStatus>,
    pub last_rollback: Option<Rollback>,
}

/// What `cairn-agent status` adds to the node's status: both slots and the last rollback, read from the disk's
/// GPT and the ESP's entries (nothing is written).
pub fn slots(opts: &Options) -> Result<SlotsStatus, UpdateError> {
    let (running_hash, running_bytes) = running(&opts.cmdline)?;
    let disk = opts.open_disk(&running_bytes, false)?;
    let esp = Esp {
        dir: opts.esp.clone(),
    };
    let entries = esp.entries()?;
    let mut slots = Vec::new();
    for parts in [&disk.running, &disk.inactive] {
        let entry = entries.iter().find(|e| e.ranked.name.slot == parts.slot);
        slots.push(SlotStatus {
            slot: parts.slot.letter(),
            partition: parts.root.name.clone(),
            running: std::ptr::eq(parts, &disk.running),
            title: entry.map(|e| e.title()),
            root_hash: entry.and_then(|e| e.root_hash()),
            entry: entry.map(|e| e.ranked.file.clone()),
            tries_left: entry.and_then(|e| e.ranked.name.tries_left),
            good: entry.is_some_and(|e| e.ranked.name.tries_left.is_none()),
            next_boot: entries
                .first()
                .is_some_and(|e| e.ranked.name.slot == parts.slot),
        });
    }
    slots.sort_by_key(|s| s.slot);
    // An entry out of tries is the latest rollback (its slot is not rewritten until the next update, which
    // records it); else the last one recorded.
    let live = entries
        .iter()
        .filter(|e| e.ranked.name.is_bad())
        .filter(|e| e.root_hash().as_deref() != Some(running_hash.as_str()))
        .max_by_key(|e| e.ranked.generation())
        .map(rollback_of);
    let last_rollback = live.or_else(|| {
        opts.read_rollbacks()
            .ok()
            .and_then(|r| r.rolled_back.last().cloned())
    });
    Ok(SlotsStatus {
        slots,
        last_rollback,
    })
}

/// Runs an update.
pub fn update(opts: &Options) -> Result<Outcome, UpdateError> {
    let started = Instant::now();
    let say = opts.progress;
    let (running_hash, running_bytes) = running(&opts.cmdline)?;
    let source = Source::parse(&opts.source)?;
    let source_text = source.to_string();
    let mut disk = opts.open_disk(&running_bytes, true)?;
    let esp = Esp {
        dir: opts.esp.clone(),
    };
    let entries = esp.entries()?;
    let mut fetcher = Fetcher::new(
        source,
        vec![
            opts.root
                .join(crate::datasources::CA_BUNDLE.trim_start_matches('/')),
        ],
    );
    say(&format!("fetching {source_text}"));
    let manifest = fetcher.manifest()?;
    let payload = Payload::parse(&manifest).map_err(|error| UpdateError::Payload {
        source_text: source_text.clone(),
        error,
    })?;
    let about = &payload.about;
    let bad_payload = |error| UpdateError::Payload {
        source_text: source_text.clone(),
        error,
    };
    if about.arch != ARCH {
        return Err(UpdateError::Refused(format!(
            "the payload is {} {} for {}; this node is {}",
            about.name,
            about.version,
            about.arch.oci(),
            ARCH.oci()
        )));
    }
    let inactive = disk.inactive.slot;
    let mut outcome = Outcome {
        name: about.name.clone(),
        version: about.version.clone(),
        root_hash: about.root_hash.clone(),
        written: false,
        slot: inactive.letter(),
        entry: String::new(),
        generation: 0,
        parts: Vec::new(),
        millis: 0,
    };
    if about.root_hash == running_hash {
        outcome.slot = disk.running.slot.letter();
        say(&format!(
            "{} {} is already running",
            about.name, about.version
        ));
        return Ok(outcome);
    }
    if let Some(pending) = entries.iter().find(|e| {
        // Pending: counted and with tries left (an uncounted entry there is the fallback, not the next boot).
        e.ranked.name.slot == inactive
            && e.ranked.name.tries_left.is_some_and(|t| t > 0)
            && e.root_hash().as_deref() == Some(about.root_hash.as_str())
    }) {
        outcome.entry = esp.entry_path(&pending.ranked.file).display().to_string();
        outcome.generation = pending.ranked.generation();
        say(&format!(
            "{} {} is already the next boot ({})",
            about.name, about.version, pending.ranked.file
        ));
        return Ok(outcome);
    }
    if let Some(running_entry) = entries
        .iter()
        .find(|e| e.root_hash().as_deref() == Some(running_hash.as_str()))
        && running_entry.ranked.name.tries_left.is_some()
    {
        return Err(UpdateError::Refused(format!(
            "the running version ({}) is still on trial ({}): once it is marked good, update again",
            running_entry.title(),
            running_entry.ranked.file
        )));
    }

    let mut rollbacks = opts.read_rollbacks()?;
    // An entry out of tries is a version this node fell back from, recorded before its slot is reused.
    for e in entries.iter().filter(|e| e.ranked.name.is_bad()) {
        if let Some(hash) = e.root_hash()
            && hash != running_hash
            && !rollbacks.rolled_back.iter().any(|r| r.root_hash == hash)
        {
            rollbacks.rolled_back.push(rollback_of(e));
        }
    }
    if let Some(r) = rollbacks
        .rolled_back
        .iter()
        .find(|r| r.root_hash == about.root_hash)
        && !opts.allow_rolled_back
    {
        return Err(UpdateError::Refused(format!(
            "{} {} was rolled back on this node ({}): give --allow-rolled-back to try it again",
            about.name, about.version, r.reason
        )));
    }

    let small = |fetcher: &mut Fetcher, part: Part| -> Result<Vec<u8>, UpdateError> {
        let mut m = Memory::default();
        fetcher.blob(payload.blob(part), &mut m)?;
        Ok(m.0)
    };
    let report = small(&mut fetcher, Part::Report)?;
    ReportFacts::check(&report, about).map_err(bad_payload)?;
    // The UKI is checked whole before anything is written (it is tens of megabytes, bounded by its part).
    let uki = small(&mut fetcher, Part::Uki)?;
    let uki_about = cairn_profile::uki::About::read(&mut std::io::Cursor::new(&uki))
        .map_err(|e| bad_payload(PayloadError::Uki(e.to_string())))?;
    let title = payload::check_uki(&uki_about, about).map_err(bad_payload)?;
    let signed_by = check_signature(opts, &uki)?;
    let (root_blob, verity_blob) = (payload.blob(Part::Root), payload.blob(Part::Verity));
    // Checked before anything is written.
    disk.writer(false, "root", root_blob.size)?;
    disk.writer(true, "hash tree", verity_blob.size)?;
    opts.write_rollbacks(&rollbacks)?;

    esp.remove_slot(inactive)?;
    disk.mark_empty()?;
    say(&format!(
        "slot {} ({}): its entry removed, writing {} {}",
        inactive.letter(),
        disk.path.display(),
        about.name,
        about.version
    ));
    for (blob, verity, what) in [(root_blob, false, "root"), (verity_blob, true, "hash tree")] {
        let t = Instant::now();
        let mut w = disk.writer(verity, what, blob.size)?;
        fetcher.blob(blob, &mut w)?;
        say(&format!(
            "{what}: {} bytes written in {} ms",
            blob.size,
            t.elapsed().as_millis()
        ));
    }
    let t = Instant::now();
    let blocks = disk.verify_inactive(&about.root_hash)?;
    say(&format!(
        "slot {} verifies: {blocks} blocks give root hash {} ({} ms)",
        inactive.letter(),
        about.root_hash,
        t.elapsed().as_millis()
    ));
    let generation = entries
        .iter()
        .map(|e| e.ranked.generation())
        .max()
        .unwrap_or(0)
        + 1;
    let mut staged = esp.file(&inactive.entry_path(generation, Some(boot_entry::TRIES)))?;
    staged.write(&uki).map_err(|source| EspError {
        path: staged.staged().to_path_buf(),
        source,
    })?;
    drop(uki);
    disk.mark_written(&root_bytes(&about.root_hash)?)?;
    let written = staged.commit()?;
    outcome.written = true;
    outcome.entry = written.display().to_string();
    outcome.generation = generation;
    outcome.parts = payload
        .blobs
        .iter()
        .map(|b| (b.part.name().to_string(), b.size))
        .collect();
    outcome.millis = started.elapsed().as_millis() as u64;
    say(&format!(
        "{title} is the next boot: {} (generation {generation}, {} tries, {signed_by}); reboot to start it",
        written.display(),
        boot_entry::TRIES
    ));
    Ok(outcome)
}

/// Whom the UKI is signed by, as the update reports it: when the running image was built with a Secure Boot
/// certificate, an update's UKI must be signed with that same certificate's key; otherwise any UKI is taken, as
/// nothing on the node says which key is right (and the firmware, if Secure Boot is on, still checks it).
fn check_signature(opts: &Options, uki: &[u8]) -> Result<String, UpdateError> {
    let path = opts
        .root
        .join(contract::SECURE_BOOT_CERT.trim_start_matches('/'));
    match std::fs::read(&path) {
        Ok(cert) => {
            authenticode::verify(uki, &cert).map_err(|e| {
                UpdateError::Signature(format!(
                    "{e}; the running image is signed with the certificate {} (sha256 {})",
                    contract::SECURE_BOOT_CERT,
                    authenticode::certificate_sha256(&cert)
                ))
            })?;
            Ok(format!(
                "signed by the running image's key, certificate sha256 {}",
                authenticode::certificate_sha256(&cert)
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(if authenticode::is_signed(uki) {
            "signed; the running image has no Secure Boot certificate to check it against".into()
        } else {
            "unsigned".into()
        }),
        Err(e) => Err(UpdateError::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

fn root_bytes(hash: &str) -> Result<[u8; 32], UpdateError> {
    // Payload::parse checked it is 64 lower-case hex digits.
    hash_bytes(hash).ok_or_else(|| UpdateError::Refused(format!("{hash:?} is not a root hash")))
}
