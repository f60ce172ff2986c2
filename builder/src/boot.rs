//! Boot check (`cairn boot`): boots a build's disk under QEMU the way a CI job would before the image ships, and
//! says whether the node came up.
//!
//! UEFI with OVMF, no way out (`-nic user,restrict=on`), the serial console to a file read as it grows. It waits,
//! bounded, for the agent's whole-node line (`cairn-agent: ready {status}`), the agent's or the initrd's
//! `failed` line, or QEMU's exit; then it presses the ACPI power button until the guest powers off, and kills
//! QEMU by its own pid only when that bound passes too. The disk is never written: the guest runs on a
//! copy-on-write overlay in a temporary folder, so what was booted is what ships. A build named as `OUT/NAME` is
//! checked against its report first, and the root hash the node reports booting must be the report's.
//!
//! QEMU is spawned with std's `Command` rather than the shared runner: a guest runs for minutes and must be
//! watched and stopped by its pid, while the runner runs a tool to its end.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_profile::command::CommandError;
use cairn_profile::contract;
use serde::Serialize;

use crate::disk::tools::Tool;
use crate::inspect::outputs::{Build, OutputsError};

/// OVMF as Debian's `ovmf` package installs it: the firmware, and the variable store each boot copies.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF's Secure Boot build: it needs SMM, and its variable store must be written through SMM only.
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const QEMU: &str = "qemu-system-x86_64";
/// How long the guest has to power off once asked, pressing the button again every [`PRESS_EVERY`]: systemd
/// may still be starting units when the first press comes, and ignores it then.
const POWER_OFF_BOUND: Duration = Duration::from_secs(180);
const PRESS_EVERY: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);
/// The initrd powers the machine off itself after `cairn-init: failed`.
const INIT_POWER_OFF_BOUND: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Outputs(#[from] OutputsError),
    #[error(
        "{}: the build wrote no disk to boot: add \"raw\" or \"qcow2\" to [image] formats",
        report.display()
    )]
    NoDisk { report: PathBuf },
    #[error("{}: an {arch} image: cairn boot boots amd64 images only", report.display())]
    Arch { report: PathBuf, arch: String },
    #[error("{}: {source}", path.display())]
    InstanceRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Instance(cairn_profile::Error),
    #[error("{path} is missing: install Debian's {package} package (rocks/setup-host does)")]
    Firmware {
        path: &'static str,
        package: &'static str,
    },
    #[error(transparent)]
    Tool(#[from] CommandError),
    #[error("starting {QEMU}: {source} (it comes with the qemu-system-x86 package)")]
    Spawn { source: std::io::Error },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl BootError {
    /// A wrong argument or a missing host tool (exit 2), rather than a boot that went wrong (exit 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            BootError::Outputs(e) => e.is_bad_input(),
            BootError::NoDisk { .. }
            | BootError::Arch { .. }
            | BootError::InstanceRead { .. }
            | BootError::Instance(_)
            | BootError::Firmware { .. }
            | BootError::Spawn { .. } => true,
            BootError::Tool(e) => matches!(e, CommandError::NotFound { .. }),
            BootError::Io { .. } => false,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let what = what.into();
    move |source| BootError::Io { what, source }
}

/// QEMU's accelerator: TCG works everywhere; KVM where the runner has a usable /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub machine: Machine,
    pub timeout: Duration,
    /// Where to keep the whole serial console.
    pub console: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            machine: Machine::default(),
            timeout: Duration::from_secs(600),
            console: None,
        }
    }
}

/// The serial console's file and the monitor's socket in a boot's folder.
pub const SERIAL_LOG: &str = "serial.log";
pub const MONITOR_SOCKET: &str = "monitor.sock";

/// The machine a boot runs.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Instance data, passed as QEMU's fw_cfg entry the agent reads.
    pub instance: Option<PathBuf>,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Explicit ways out of the restricted user network: a connection to the guest's `ADDR:PORT` reaches the host's
    /// loopback port (QEMU's `guestfwd`, each connection relayed by `socat`: a `tcp:` chardev would carry only
    /// one); nothing else leaves the machine.
    pub guest_forwards: Vec<(String, u16)>,
    /// Secure Boot: OVMF's Secure Boot build with this variable store (the keys enrolled in it, or none for
    /// setup mode), copied for each boot.
    pub secure_boot_vars: Option<PathBuf>,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine {
            instance: None,
            accel: Accel::Tcg,
            memory_mib: 1024,
            cpus: 2,
            guest_forwards: Vec::new(),
            secure_boot_vars: None,
        }
    }
}

/// The user-network NIC: restricted, with only the forwards given.
fn nic(forwards: &[(String, u16)]) -> String {
    let mut nic = String::from("user,restrict=on,model=virtio-net-pci");
    for (guest, port) in forwards {
        nic.push_str(&format!(
            ",guestfwd=tcp:{guest}-cmd:socat STDIO TCP4:127.0.0.1:{port}"
        ));
    }
    nic
}

/// QEMU for `disk` (of `format`, booted and written in place): UEFI with a fresh copy of OVMF's variables in
/// `dir`, the serial console to `dir`/[`SERIAL_LOG`], the monitor on `dir`/[`MONITOR_SOCKET`], no network out,
/// stdin and stdout closed; a missing firmware is an error naming its package. The boot tests run their guests
/// with it too.
pub fn qemu(
    disk: &Path,
    format: &str,
    dir: &Path,
    machine: &Machine,
) -> Result<std::process::Command, BootError> {
    let (code, vars_from) = match &machine.secure_boot_vars {
        Some(v) => (OVMF_CODE_SECURE_BOOT, v.display().to_string()),
        None => (OVMF_CODE, OVMF_VARS.to_string()),
    };
    for path in [code, OVMF_VARS] {
        if !Path::new(path).is_file() {
            return Err(BootError::Firmware {
                path,
                package: "ovmf",
            });
        }
    }
    let vars = dir.join("vars.fd");
    std::fs::copy(&vars_from, &vars).map_err(io(vars_from.clone()))?;
    let mut cmd = std::process::Command::new(QEMU);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-accel", machine.accel.name(), "-machine"]);
    if machine.secure_boot_vars.is_some() {
        cmd.args([
            "q35,smm=on",
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
        ]);
    } else {
        cmd.arg("q35");
    }
    cmd.args(["-m", &machine.memory_mib.to_string()])
        .args(["-smp", &machine.cpus.to_string()])
        .args(["-display", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,file={code},readonly=on"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format={format}", disk.display()))
        // A NIC, or systemd-networkd-wait-online stalls; restrict=on lets nothing leave the machine.
        .arg("-nic")
        .arg(nic(&machine.guest_forwards))
        .arg("-serial")
        .arg(format!("file:{}", dir.join(SERIAL_LOG).display()))
        .arg("-monitor")
        .arg(format!(
            "unix:{},server,nowait",
            dir.join(MONITOR_SOCKET).display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(path) = &machine.instance {
        cmd.arg("-fw_cfg").arg(format!(
            "name={},file={}",
            contract::FW_CFG_INSTANCE,
            std::path::absolute(path)
                .map_err(io(path.display().to_string()))?
                .display()
        ));
    }
    Ok(cmd)
}

/// Presses the ACPI power button on the monitor at `socket`, once.
pub fn press_power_button(socket: &Path) {
    if let Ok(mut s) = UnixStream::connect(socket) {
        let _ = s.write_all(b"system_powerdown\n");
        // Let the monitor read the command before the connection closes.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How the boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The agent said the node is ready (and, for a build, booted the build's root hash).
    Ready,
    /// The agent or the initrd said it failed, or the node booted another root than the build's.
    Failed,
    /// Neither line within the bound.
    Timeout,
    /// QEMU ended before either line.
    Exited,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ready => "ready",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Exited => "exited",
        }
    }
}

/// What a boot showed.
#[derive(Debug, Clone, Serialize)]
pub struct Booted {
    pub outcome: Outcome,
    pub disk: PathBuf,
    /// From QEMU's start to the line that decided, or to the bound.
    pub seconds: f64,
    /// The decisive line's JSON: the node's status from the agent, or the initrd's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// Why it is not ready, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The console's cairn lines, in order.
    pub lines: Vec<String>,
    /// The guest powered off when asked (or by itself); otherwise QEMU was killed.
    pub powered_off: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<PathBuf>,
}

/// The disk to boot and what it must boot.
struct Subject {
    disk: PathBuf,
    format: &'static str,
    root_hash: Option<String>,
}

/// A build (`OUT/NAME`, its report or an output), checked against its report; or a disk file of its own (a
/// copy someone changed, an image from elsewhere), booted as it is.
fn subject(target: &Path) -> Result<Subject, BootError> {
    let build = match Build::open(target) {
        Ok(b) => b,
        Err(OutputsError::NotFound { .. }) if target.is_file() => {
            let format = if target.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            return Ok(Subject {
                disk: target.to_path_buf(),
                format,
                root_hash: None,
            });
        }
        Err(e) => return Err(e.into()),
    };
    if build.report.arch != "amd64" {
        return Err(BootError::Arch {
            report: build.report_path,
            arch: build.report.arch,
        });
    }
    let (output, format) = match (build.output("raw"), build.output("qcow2")) {
        (Some(o), _) => (o, "raw"),
        (None, Some(o)) => (o, "qcow2"),
        (None, None) => {
            return Err(BootError::NoDisk {
                report: build.report_path,
            });
        }
    };
    let disk = build.verified(output)?;
    Ok(Subject {
        disk,
        format,
        root_hash: build.report.disk.as_ref().map(|d| d.root_hash.clone()),
    })
}

/// Boots `target` and waits for its verdict.
pub fn boot(target: &Path, options: &Options) -> Result<Booted, BootError> {
    let subject = subject(target)?;
    if let Some(path) = &options.machine.instance {
        let text = std::fs::read_to_string(path).map_err(|source| BootError::InstanceRead {
            path: path.clone(),
            source,
        })?;
        cairn_profile::Instance::parse(&path.display().to_string(), &text)
            .map_err(BootError::Instance)?;
    }
    let work = tempfile::Builder::new()
        .prefix("cairn-boot-")
        .tempdir()
        .map_err(io("a temporary folder"))?;
    let backing =
        std::path::absolute(&subject.disk).map_err(io(subject.disk.display().to_string()))?;
    let overlay = work.path().join("overlay.qcow2");
    Tool::QemuImg
        .command()
        .args(["create", "-q", "-f", "qcow2", "-F", subject.format, "-b"])
        .arg(&backing)
        .arg(&overlay)
        .run()?;
    let serial = work.path().join(SERIAL_LOG);
    let monitor = work.path().join(MONITOR_SOCKET);
    let qemu_log = work.path().join("qemu.log");
    let mut cmd = qemu(&overlay, "qcow2", work.path(), &options.machine)?;
    cmd.stderr(std::fs::File::create(&qemu_log).map_err(io("QEMU's log"))?);
    tracing::info!(
        "booting {} ({}, {} MiB, timeout {} s)",
        subject.disk.display(),
        options.machine.accel.name(),
        options.machine.memory_mib,
        options.timeout.as_secs()
    );
    let child = cmd.spawn().map_err(|source| BootError::Spawn { source })?;
    let mut guest = Guest {
        child,
        monitor,
        started: Instant::now(),
    };
    let mut console = Console::new(serial.clone());
    let (outcome, decisive) = guest.watch(&mut console, options.timeout);
    let seconds = guest.started.elapsed().as_secs_f64();
    let powered_off = match (outcome, &decisive) {
        (Outcome::Exited, _) => true,
        (Outcome::Timeout, _) => {
            guest.kill();
            false
        }
        (_, Some(line)) if line.starts_with(contract::CONSOLE_INIT) => {
            guest.wait_exit(INIT_POWER_OFF_BOUND) || {
                guest.kill();
                false
            }
        }
        _ => guest.power_off(),
    };
    console.read();
    let mut booted = Booted {
        outcome,
        disk: subject.disk,
        seconds,
        status: decisive
            .as_deref()
            .and_then(|l| l.split_once(['{']).map(|(_, rest)| format!("{{{rest}")))
            .and_then(|j| serde_json::from_str(&j).ok()),
        note: None,
        lines: console.lines,
        powered_off,
        console: None,
    };
    booted.note = verdict(&mut booted, subject.root_hash.as_deref(), &qemu_log);
    if let Some(keep) = &options.console {
        keep_console(&serial, keep)?;
        booted.console = Some(keep.clone());
    }
    Ok(booted)
}

/// Why the boot is not a success, settling a ready node that booted another root than the build's as failed.
fn verdict(booted: &mut Booted, root_hash: Option<&str>, qemu_log: &Path) -> Option<String> {
    let note = |b: &Booted| {
        b.status
            .as_ref()
            .and_then(|s| s["note"].as_str().or(s["last_run"]["error"].as_str()))
            .map(str::to_string)
    };
    match booted.outcome {
        Outcome::Ready => {
            let booted_hash = booted
                .status
                .as_ref()
                .and_then(|s| s["image"]["root_hash"].as_str())
                .map(str::to_string);
            match (root_hash, booted_hash) {
                (Some(want), Some(got)) if want != got => {
                    booted.outcome = Outcome::Failed;
                    Some(format!(
                        "the node booted root hash {got}, the build's is {want}"
                    ))
                }
                _ => None,
            }
        }
        Outcome::Failed => note(booted).or_else(|| Some("the node said it failed".into())),
        Outcome::Timeout => Some(format!(
            "no `{}ready` or `failed` line on the console within {:.0} s{}",
            contract::CONSOLE_AGENT,
            booted.seconds,
            booted
                .lines
                .last()
                .map(|l| format!("; the last cairn line: {l}"))
                .unwrap_or_else(|| {
                    "; no cairn line at all (the console must be the serial port: kernel-cmdline = [\"console=ttyS0\"])"
                        .into()
                })
        )),
        Outcome::Exited => {
            let mut log = String::new();
            let _ = std::fs::File::open(qemu_log).and_then(|mut f| f.read_to_string(&mut log));
            let log = log.trim();
            Some(if log.is_empty() {
                "QEMU ended before the node said ready or failed".into()
            } else {
                format!("QEMU ended before the node said ready or failed: {log}")
            })
        }
    }
}

fn keep_console(serial: &Path, keep: &Path) -> Result<(), BootError> {
    let dir = keep
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io(keep.display().to_string()))?;
    let mut from = std::fs::File::open(serial).map_err(io("the serial console"))?;
    std::io::copy(&mut from, &mut temp).map_err(io(keep.display().to_string()))?;
    temp.persist(keep)
        .map_err(|e| BootError::Io {
            what: keep.display().to_string(),
            source: e.error,
        })
        .map(drop)
}

/// The serial console file, read as it grows: complete lines only, cairn's logged as they come.
struct Console {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    lines: Vec<String>,
    /// A cairn line a kernel message broke, and the console lines after it so far
    /// ([`contract::rejoin_console_line`]).
    broken: Vec<String>,
}

impl Console {
    fn new(path: PathBuf) -> Console {
        Console {
            path,
            offset: 0,
            partial: Vec::new(),
            broken: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Reads what is new; returns the new cairn lines.
    fn read(&mut self) -> Vec<String> {
        let mut fresh = Vec::new();
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return fresh;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return fresh;
        }
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            return fresh;
        }
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            let line = if self.broken.is_empty() {
                // The kernel or systemd may share the line's start with escape sequences; cairn's text starts
                // later.
                let Some(at) = line
                    .find(contract::CONSOLE_AGENT)
                    .or_else(|| line.find(contract::CONSOLE_INIT))
                else {
                    continue;
                };
                line[at..].to_string()
            } else {
                line.to_string()
            };
            self.broken.push(line);
            let whole = contract::rejoin_console_line(
                &self.broken[0],
                self.broken[1..].iter().map(String::as_str),
            )
            .or_else(|| {
                (self.broken.len() >= contract::CONSOLE_PIECES).then(|| self.broken[0].clone())
            });
            if let Some(line) = whole {
                self.broken.clear();
                tracing::info!("console: {}", short(&line));
                fresh.push(line.clone());
                self.lines.push(line);
            }
        }
        fresh
    }
}

/// A console line as logged: the JSON cut short, since the whole of it is in the result.
fn short(line: &str) -> String {
    const MAX: usize = 96;
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// What decides a boot, from one console line.
fn decides(line: &str) -> Option<Outcome> {
    let agent = line.strip_prefix(contract::CONSOLE_AGENT);
    let init = line.strip_prefix(contract::CONSOLE_INIT);
    if agent.is_some_and(|r| r.starts_with(contract::CONSOLE_READY)) {
        Some(Outcome::Ready)
    } else if agent
        .or(init)
        .is_some_and(|r| r.starts_with(contract::CONSOLE_FAILED))
    {
        Some(Outcome::Failed)
    } else {
        None
    }
}

struct Guest {
    child: Child,
    monitor: PathBuf,
    started: Instant,
}

impl Guest {
    /// Until a line decides, QEMU ends, or `timeout` passes.
    fn watch(&mut self, console: &mut Console, timeout: Duration) -> (Outcome, Option<String>) {
        loop {
            for line in console.read() {
                if let Some(outcome) = decides(&line) {
                    return (outcome, Some(line));
                }
            }
            if self.exited() {
                // The last bytes QEMU wrote may hold the verdict.
                for line in console.read() {
                    if let Some(outcome) = decides(&line) {
                        return (outcome, Some(line));
                    }
                }
                return (Outcome::Exited, None);
            }
            if self.started.elapsed() >= timeout {
                return (Outcome::Timeout, None);
            }
            std::thread::sleep(POLL);
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_exit(&mut self, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if self.exited() {
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }

    /// ACPI power button, pressed again until the guest listens; QEMU killed when the bound passes.
    fn power_off(&mut self) -> bool {
        let until = Instant::now() + POWER_OFF_BOUND;
        while Instant::now() < until {
            if self.exited() {
                return true;
            }
            press_power_button(&self.monitor);
            if self.wait_exit(PRESS_EVERY.min(until.saturating_duration_since(Instant::now()))) {
                return true;
            }
        }
        tracing::warn!(
            "the guest did not power off within {} s; killing QEMU (pid {})",
            POWER_OFF_BOUND.as_secs(),
            self.child.id()
        );
        self.kill();
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if !self.exited() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the forwards asked for leave the restricted network, each connection relayed to the host's loopback.
    #[test]
    fn the_nic_is_restricted_with_only_the_forwards_given() {
        assert_eq!(nic(&[]), "user,restrict=on,model=virtio-net-pci");
        assert_eq!(
            nic(&[("10.0.2.100:5000".into(), 41234)]),
            "user,restrict=on,model=virtio-net-pci,guestfwd=tcp:10.0.2.100:5000-cmd:socat STDIO TCP4:127.0.0.1:41234"
        );
    }

    #[test]
    fn the_whole_node_line_decides_and_a_phase_line_does_not() {
        assert_eq!(
            decides("cairn-agent: ready {\"phase\":\"system\"}"),
            Some(Outcome::Ready)
        );
        assert_eq!(decides("cairn-agent: system ready {}"), None);
        assert_eq!(decides("cairn-agent: failed {}"), Some(Outcome::Failed));
        assert_eq!(
            decides("cairn-init: failed {\"note\":\"did not verify\"}"),
            Some(Outcome::Failed)
        );
        assert_eq!(decides("cairn-init: ready {}"), None);
        assert_eq!(decides("cairn-agent: warning: status not saved"), None);
    }

    #[test]
    fn console_lines_are_cut_out_of_what_the_kernel_shares_them_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serial.log");
        std::fs::write(
            &path,
            b"\x1b[0mcairn-init: ready {}\r\nboot noise\nhalf cairn-agent: re",
        )
        .expect("w");
        let mut c = Console::new(path.clone());
        assert_eq!(c.read(), ["cairn-init: ready {}"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"ady {\"a\":1}\n").expect("w");
        assert_eq!(c.read(), ["cairn-agent: ready {\"a\":1}"]);
        assert_eq!(c.lines.len(), 2);
    }

    #[test]
    fn a_ready_node_on_another_root_is_a_failure() {
        let mut b = Booted {
            outcome: Outcome::Ready,
            disk: PathBuf::from("x.raw"),
            seconds: 1.0,
            status: Some(serde_json::json!({"image": {"root_hash": "aa"}})),
            note: None,
            lines: vec![],
            powered_off: true,
            console: None,
        };
        assert_eq!(verdict(&mut b, Some("aa"), Path::new("/nonexistent")), None);
        assert_eq!(b.outcome, Outcome::Ready);
        let note = verdict(&mut b, Some("bb"), Path::new("/nonexistent"));
        assert_eq!(b.outcome, Outcome::Failed);
        assert_eq!(
            note.as_deref(),
            Some("the node booted root hash aa, the build's is bb")
        );
    }
}
