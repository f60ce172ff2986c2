//! Booting a disk image under QEMU with UEFI (OVMF), software emulation (`-accel tcg`: KVM does not work on these
//! machines) and no way out: the only NIC is `-nic user,restrict=on`. The serial console goes to a file the test
//! reads; the guest is shut down with ACPI (`system_powerdown` on the monitor), and QEMU is killed by its own pid
//! only when a bound is reached.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Vm {
    /// Boots `disk` (raw); `fw_cfg` is instance data passed as `opt/cairn/instance.toml`.
    pub fn boot(disk: &Path, fw_cfg: Option<&Path>) -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = dir.path().join("vars.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .unwrap_or_else(|e| panic!("{OVMF_VARS}: {e} (rocks/setup-host installs ovmf)"));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "1024",
            "-smp",
            "2",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        // A NIC is needed or systemd-networkd-wait-online stalls; restrict=on lets nothing leave the machine.
        .args(["-nic", "user,restrict=on,model=virtio-net-pci"])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("serial.log").display()))
        .arg("-monitor")
        .arg(format!(
            "unix:{},server,nowait",
            dir.path().join("monitor.sock").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(f) = fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name=opt/cairn/instance.toml,file={}", f.display()));
        }
        let child = cmd
            .spawn()
            .expect("start qemu-system-x86_64 (rocks/setup-host installs it)");
        Vm {
            child,
            dir,
            started: Instant::now(),
        }
    }

    pub fn serial(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.path().join("serial.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Waits for a serial line starting with `prefix`; returns the line and the time since QEMU started. Panics
    /// with the console's end on timeout (after killing QEMU) or when QEMU exits first.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> (String, Duration) {
        self.wait_for_line(prefix, timeout, |l| l.starts_with(prefix))
    }

    /// Like [`Vm::wait_for`], for a line that holds `text` anywhere (a unit's output through the journal comes
    /// after the kernel's timestamp and the process name).
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> (String, Duration) {
        self.wait_for_line(text, timeout, |l| l.contains(text))
    }

    fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let serial = self.serial();
            if let Some(line) = serial.lines().find(|l| matches(l)) {
                return (line.to_string(), self.started.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) before `{prefix}`; console:\n{}",
                    tail(&serial)
                );
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "no `{prefix}` within {timeout:?}; console:\n{}",
                    tail(&serial)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for QEMU to exit on its own (a guest that powers off); false on timeout (QEMU is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.kill();
        false
    }

    /// Presses the ACPI power button and waits for the guest to stop. The press is repeated every 10 s: one that
    /// comes before the guest's logind listens is lost.
    pub fn powerdown(&mut self, timeout: Duration) -> bool {
        let sock = self.dir.path().join("monitor.sock");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(mut s) = UnixStream::connect(&sock) {
                let _ = s.write_all(b"system_powerdown\n");
                // Let the monitor read the command before the connection closes.
                std::thread::sleep(Duration::from_millis(500));
            }
            let wait =
                Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()));
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        self.kill();
        false
    }

    fn kill(&mut self) {
        // Our own child, by its own pid: never a pattern match on process names.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
