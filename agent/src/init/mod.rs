//! The initrd's `/init`: the static agent, run as process 1 by the kernel from cairn's initrd.
//!
//! It mounts the kernel's file systems, loads the modules the builder put in the initrd, finds the partitions by
//! their type GUID, sets up dm-verity with the root hash from `cairn.verity=` (never systemd's `roothash=`),
//! mounts the verified root read-only, mounts /var (filling it from the factory /var at first boot), lays the
//! writable /etc overlay and /tmp, and switches to the real init. It reports `cairn-init: ready {json}` or
//! `cairn-init: failed {json}` on the console; on any failure it powers the machine off: it never boots a root
//! that did not verify.

mod dm;
mod gpt;
mod grow;
mod sys;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::datasources::cmdline_value;
use crate::engine::{Done, Phase, Recorder, StepError};
use crate::report::Status;

pub const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const ROOT_VERITY_TYPE: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
pub const ROOT_TYPE_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
pub const ROOT_VERITY_TYPE_ARM64: &str = "DF3300CE-D69F-4C92-978C-9BFB0F38D820";
pub const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const SYSROOT: &str = "/sysroot";
const FACTORY: &str = "/sysroot/usr/lib/cairn/factory/var.tar";
const FACTORY_DONE: &str = "/sysroot/var/lib/cairn/factory-unpacked";

fn console(line: &str) {
    let text = format!("cairn-init: {line}\n");
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

/// Process 1 of the initrd. Never returns: it becomes the real init, or powers off.
pub fn main() -> ! {
    let mut steps = Steps {
        recorder: Recorder::new(Phase::Init),
    };
    match boot(&mut steps) {
        Ok(()) => {
            let status = steps.status(None);
            let _ = std::fs::create_dir_all("/run/cairn");
            let _ = std::fs::write("/run/cairn/status.json", status.json());
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
    sys::power_off()
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
        let list = std::fs::read_to_string("/etc/cairn/modules")
            .map_err(|e| format!("/etc/cairn/modules: {e}"))?;
        for m in list.lines().filter(|l| !l.is_empty()) {
            sys::load_module(Path::new(m)).map_err(io)?;
        }
        Ok(())
    })?;
    let root_hash = steps.run("cmdline", || {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(io)?;
        let hash = cmdline_value(&cmdline, "cairn.verity")
            .ok_or("no cairn.verity= on the kernel command line")?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("cairn.verity={hash} is not a sha256 root hash"));
        }
        Ok(hash.to_ascii_lowercase())
    })?;
    let (root, verity, var, esp) = steps.run("partitions", || {
        // Disks appear as their drivers probe them: wait, bounded.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let parts = gpt::scan();
            let find = |types: &[&str]| {
                parts
                    .iter()
                    .find(|p| types.contains(&p.type_guid.as_str()))
                    .cloned()
            };
            if let (Some(r), Some(v), Some(d)) = (
                find(&[ROOT_TYPE, ROOT_TYPE_ARM64]),
                find(&[ROOT_VERITY_TYPE, ROOT_VERITY_TYPE_ARM64]),
                find(&[VAR_TYPE]),
            ) {
                return Ok((r, v, d, find(&[ESP_TYPE])));
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = parts
                    .iter()
                    .map(|p| format!("{} {} {}", p.dev.display(), p.name, p.type_guid))
                    .collect();
                return Err(format!(
                    "no root, root verity and var partitions found after 30 s (seen: {seen:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
        let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let part_bytes = grown.unwrap_or(sectors * 512);
        grow::grow_ext4("/sysroot/var", part_bytes)?;
        if !Path::new(FACTORY_DONE).exists() {
            let file = std::fs::File::open(FACTORY).map_err(|e| format!("{FACTORY}: {e}"))?;
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
                "/sysroot/efi",
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
