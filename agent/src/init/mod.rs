//! The initrd's `/init`: the static agent, run as process 1 by the kernel from cairn's initrd.
//!
//! It mounts the kernel's file systems, loads the modules the builder put in the initrd, finds the root slot whose
//! partition UUIDs derive from the root hash on `cairn.verity=` (never systemd's `roothash=`), sets up dm-verity,
//! mounts the verified root read-only, mounts /var (filling it from the factory /var at first boot), lays the
//! writable /etc overlay and /tmp, and switches to the real init. It reports `cairn-init: ready {json}` or
//! `cairn-init: failed {json}` on the console; on any failure it powers the machine off: it never boots a root
//! that did not verify. One exception: when this boot's entry still counts tries (an update on trial) and another
//! entry can boot, it reboots instead, so that the failure spends a try and the previous version comes back. A panic does the same (its hook reports and powers off): process 1 never just dies.

mod dm;
mod grow;
pub(crate) mod partitions;
mod sys;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_profile::contract;

use crate::datasources::cmdline_value;
use crate::engine::{Done, Phase, Recorder, StepError};
use crate::report::{RUN_STATUS_FILE, Status};

const SYSROOT: &str = "/sysroot";
const FACTORY_DONE: &str = "/sysroot/var/lib/cairn/factory-unpacked";

fn console(line: &str) {
    let text = format!("{}{line}\n", contract::CONSOLE_INIT);
    if let Ok(mut c) = std::fs::OpenOptions::new()
        .append(true)
        .open("/dev/console")
    {
        let _ = c.write_all(text.as_bytes());
    } else {
        print!("{text}");
    }
}

/// The initrd's steps, through the engine's recorder: no journal exists before /var is mounted, and every step
/// runs on every boot.
struct Steps {
    recorder: Recorder,
}

impl Steps {
    fn run<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        self.recorder
            .run(name, || {
                f().map(|v| (v, Done::changed(true)))
                    .map_err(StepError::Refused)
            })
            .map_err(|e| e.to_string())
    }

    /// Adds what the last step found to its report.
    fn detail(&mut self, text: String) {
        self.recorder.detail(text);
    }

    fn status(&self, note: Option<String>) -> Status {
        Status {
            phase: Phase::Init,
            instance: "none".into(),
            steps: self.recorder.reports().to_vec(),
            note,
        }
    }
}

/// The console line of a failure before any step report could be kept: a panic's.
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let status = Status {
        phase: Phase::Init,
        instance: "none".into(),
        steps: Vec::new(),
        note: Some(format!("panic: {info}")),
    };
    format!("failed {}", status.json())
}

/// Process 1 of the initrd. Never returns: it becomes the real init, or powers off.
pub fn main() -> ! {
    // The agent is built with panic=abort: the hook is the last code that runs, so it reports and powers off
    // itself (an aborted process 1 is a kernel panic, with nothing on the console saying why).
    std::panic::set_hook(Box::new(|info| {
        console(&panic_line(info));
        sys::power_off()
    }));
    let mut steps = Steps {
        recorder: Recorder::new(Phase::Init),
    };
    match boot(&mut steps) {
        Ok(()) => {
            let status = steps.status(None);
            if let Some(dir) = Path::new(RUN_STATUS_FILE).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(RUN_STATUS_FILE, status.json());
            console(&format!("ready {}", status.json()));
            let e = switch_root();
            console(&format!(
                "failed {}",
                steps
                    .status(Some(format!("switching to the real init: {e}")))
                    .json()
            ));
        }
        Err(e) => console(&format!("failed {}", steps.status(Some(e)).json())),
    }
    if counted_boot() {
        console("rebooting: this boot's entry is on trial and another can boot (a failed try)");
        sys::reboot()
    }
    sys::power_off()
}

/// Where the initrd reads the ESP when a boot failed.
const ESP_PEEK: &str = "/run/cairn-esp";

/// Whether this boot should reboot rather than power off: its entry (the one whose command line carries this
/// boot's root hash) has a boot counter, and another cairn entry is not out of tries.
fn counted_boot() -> bool {
    let Some(hash) = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| cmdline_value(&c, contract::VERITY_KEY))
    else {
        return false;
    };
    let scan = partitions::scan();
    for esp in scan
        .parts
        .iter()
        .filter(|p| p.type_guid.eq_ignore_ascii_case(contract::ESP_TYPE))
    {
        if std::fs::create_dir_all(ESP_PEEK).is_err() {
            return false;
        }
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if sys::mount(&esp.dev.display().to_string(), ESP_PEEK, "vfat", flags, "").is_err() {
            continue;
        }
        let counted = on_trial_with_fallback(Path::new(ESP_PEEK), &hash);
        let _ = sys::umount(ESP_PEEK);
        if counted {
            return true;
        }
    }
    false
}

/// The ESP at `esp` has a counted entry for `root_hash` and another cairn entry with tries left or none counted.
fn on_trial_with_fallback(esp: &Path, root_hash: &str) -> bool {
    // The ESP's entries as updates read them: an unreadable folder or entry is no reason to reboot.
    let esp = crate::update::esp::Esp { dir: esp.into() };
    let Ok(entries) = esp.entries() else {
        return false;
    };
    let hash = root_hash.to_ascii_lowercase();
    let (mut trial, mut fallback) = (false, false);
    for e in &entries {
        if e.root_hash().as_deref() == Some(hash.as_str()) {
            trial |= e.ranked.name.tries_left.is_some();
        } else {
            fallback |= !e.ranked.name.is_bad();
        }
    }
    trial && fallback
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn boot(steps: &mut Steps) -> Result<(), String> {
    steps.run("mounts", || {
        for d in ["/proc", "/sys", "/dev", "/run", SYSROOT] {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        sys::mount(
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )
        .map_err(io)?;
        sys::mount(
            "sysfs",
            "/sys",
            "sysfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )
        .map_err(io)?;
        sys::mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755").map_err(io)?;
        sys::mount(
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        )
        .map_err(io)
    })?;
    steps.run("modules", || {
        let list = std::fs::read_to_string(contract::INITRD_MODULES)
            .map_err(|e| format!("{}: {e}", contract::INITRD_MODULES))?;
        for m in list.lines().filter(|l| !l.is_empty()) {
            sys::load_module(Path::new(m)).map_err(io)?;
        }
        Ok(())
    })?;
    let root_hash = steps.run("cmdline", || {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(io)?;
        let key = contract::VERITY_KEY;
        let hash = cmdline_value(&cmdline, key)
            .ok_or_else(|| format!("no {key}= on the kernel command line"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{key}={hash} is not a sha256 root hash"));
        }
        Ok(hash.to_ascii_lowercase())
    })?;
    let partitions::Found {
        root,
        verity,
        var,
        esp,
    } = steps.run("partitions", || {
        partitions::wait(&root_hash, Duration::from_secs(30)).map_err(|e| e.to_string())
    })?;
    let root_dev = steps.run("verity", || {
        let (blocks, salt) =
            dm::superblock(&verity.dev).map_err(|e| format!("{}: {e}", verity.dev.display()))?;
        dm::create_verity(
            "root",
            &root.numbers,
            &verity.numbers,
            blocks,
            &root_hash,
            &salt,
        )
        .map_err(io)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(dev) = dm::device_of("root").filter(|d| d.exists()) {
                return Ok(dev);
            }
            if Instant::now() > deadline {
                return Err("the verity device did not appear".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })?;
    steps.run("root", || {
        sys::mount(
            &root_dev.display().to_string(),
            SYSROOT,
            "squashfs",
            libc::MS_RDONLY,
            "",
        )
        .map_err(|e| format!("the root did not verify (dm-verity refused its blocks): {e}"))
    })?;
    let var_size = steps.run("var", || {
        // A disk bigger than the image: the data partition takes the rest, then its ext4 follows once mounted.
        let grown = grow::grow_partition(&var)?;
        let dev = var.dev.display().to_string();
        sys::mount(
            &dev,
            "/sysroot/var",
            "ext4",
            libc::MS_NOSUID | libc::MS_NODEV,
            "",
        )
        .map_err(io)?;
        let name = dev.trim_start_matches("/dev/");
        // In 512-byte units whatever the disk's logical block size (the kernel's convention for sysfs sizes).
        let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let part_bytes = grown.unwrap_or(sectors * 512);
        grow::grow_ext4("/sysroot/var", part_bytes)?;
        if !Path::new(FACTORY_DONE).exists() {
            let factory = format!("{SYSROOT}{}", contract::FACTORY_VAR);
            let file = std::fs::File::open(&factory).map_err(|e| format!("{factory}: {e}"))?;
            let mut archive = tar::Archive::new(std::io::BufReader::new(file));
            archive.set_preserve_permissions(true);
            archive.set_preserve_ownerships(true);
            archive.set_unpack_xattrs(true);
            archive.set_preserve_mtime(true);
            archive.set_overwrite(true);
            archive
                .unpack("/sysroot/var")
                .map_err(|e| format!("unpacking the factory /var: {e}"))?;
            std::fs::create_dir_all("/sysroot/var/lib/cairn").map_err(io)?;
            let marker = std::fs::File::create(FACTORY_DONE).map_err(io)?;
            marker.sync_all().map_err(io)?;
        }
        Ok(part_bytes)
    })?;
    steps.detail(format!("/var partition of {var_size} bytes"));
    steps.run("etc", || {
        for d in ["/sysroot/var/lib/cairn/etc/upper", "/sysroot/var/lib/cairn/etc/work"] {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        sys::mount(
            "overlay",
            "/sysroot/etc",
            "overlay",
            0,
            "lowerdir=/sysroot/etc,upperdir=/sysroot/var/lib/cairn/etc/upper,workdir=/sysroot/var/lib/cairn/etc/work",
        )
        .map_err(io)?;
        sys::mount("tmpfs", "/sysroot/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777").map_err(io)
    })?;
    if let Some(esp) = esp {
        // Instance data can sit on the ESP (a device flashed with dd gets its identity there): mount it for the
        // agent, root-only, never executable.
        steps.run("esp", || {
            sys::mount(
                &esp.dev.display().to_string(),
                &format!("{SYSROOT}{}", contract::ESP_MOUNT),
                "vfat",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                "umask=0077,shortname=mixed",
            )
            .map_err(io)
        })?;
    }
    Ok(())
}

/// Moves the kernel file systems into the new root and becomes its init.
fn switch_root() -> std::io::Error {
    for d in ["/proc", "/sys", "/dev", "/run"] {
        if let Err(e) = sys::move_mount(d, &format!("{SYSROOT}{d}")) {
            return e;
        }
    }
    if let Err(e) = std::env::set_current_dir(SYSROOT) {
        return e;
    }
    if let Err(e) = sys::move_mount(".", "/") {
        return e;
    }
    sys::chroot_and_exec("/sbin/init")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A failed boot reboots only when its entry is on trial and another entry can boot.
    #[test]
    fn only_a_counted_boot_with_a_fallback_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let entries = dir.path().join("EFI/Linux");
        std::fs::create_dir_all(&entries).unwrap();
        let (new, old) = ("a".repeat(64), "b".repeat(64));
        let write = |file: &str, hash: &str| {
            std::fs::write(
                entries.join(file),
                crate::update::esp::tests::uki_bytes(
                    "x",
                    &format!("console=ttyS0 cairn.verity={hash}"),
                ),
            )
            .unwrap()
        };
        let check = || super::on_trial_with_fallback(dir.path(), &new);
        let mv =
            |from: &str, to: &str| std::fs::rename(entries.join(from), entries.join(to)).unwrap();
        write("cairn-2-b+2-1.efi", &new);
        assert!(!check(), "no other entry: powering off beats a reboot loop");
        write("cairn-1-a.efi", &old);
        assert!(check());
        mv("cairn-1-a.efi", "cairn-1-a+0-3.efi");
        assert!(!check(), "the other entry is out of tries");
        mv("cairn-1-a+0-3.efi", "cairn-1-a.efi");
        mv("cairn-2-b+2-1.efi", "cairn-2-b+0-3.efi");
        assert!(
            check(),
            "the last try spent: the next boot is the other entry's"
        );
        mv("cairn-2-b+0-3.efi", "cairn-2-b.efi");
        assert!(!check(), "a good entry that fails is not a try: power off");
    }

    /// The hook's line is one console line: `failed` and the status JSON, the panic's message as its note.
    #[test]
    fn a_panic_is_reported_as_a_failure() {
        let seen = Arc::new(Mutex::new(None));
        let me = std::thread::current().id();
        let previous = Arc::new(std::panic::take_hook());
        let (record, other) = (seen.clone(), previous.clone());
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == me {
                *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(super::panic_line(info));
            } else {
                other(info);
            }
        }));
        let _ = std::panic::catch_unwind(|| panic!("a GPT entry at {}", 7));
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
        let line = seen.lock().unwrap().clone().expect("the hook ran");
        assert!(!line.contains('\n'), "{line}");
        let json: serde_json::Value =
            serde_json::from_str(line.strip_prefix("failed ").expect("failed")).unwrap();
        assert_eq!(json["phase"], "init");
        let note = json["note"].as_str().unwrap();
        assert!(note.starts_with("panic: panicked at "), "{note}");
        assert!(note.ends_with("a GPT entry at 7"), "{note}");
    }
}
