//! Booting a disk image under QEMU with UEFI (OVMF), software emulation (`-accel tcg`: KVM does not work on these
//! machines) and no way out: the only NIC is `-nic user,restrict=on`. The serial console goes to a file the test
//! reads; the guest is shut down with ACPI (`system_powerdown` on the monitor), and QEMU is killed by its own pid
//! only when a bound is reached. The machine is `cairn boot`'s own (`cairn::boot::qemu`), on the disk itself
//! rather than an overlay: a test's second boot sees what the first wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Vm {
    /// Boots `disk` (raw); `fw_cfg` is instance data passed as `opt/cairn/instance.toml`.
    pub fn boot(disk: &Path, fw_cfg: Option<&Path>) -> Vm {
        Vm::boot_with(disk, fw_cfg, None)
    }

    /// [`Vm::boot`] with a second disk (raw, read-only): removable media.
    pub fn boot_with(disk: &Path, fw_cfg: Option<&Path>, second: Option<&Path>) -> Vm {
        let machine = cairn::boot::Machine {
            instance: fw_cfg.map(Path::to_path_buf),
            ..cairn::boot::Machine::default()
        };
        Vm::boot_machine(disk, machine, second)
    }

    /// Boots `disk` on `machine` (its instance data, its guest forwards), with an optional second disk.
    pub fn boot_machine(disk: &Path, machine: cairn::boot::Machine, second: Option<&Path>) -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd =
            cairn::boot::qemu(disk, "raw", dir.path(), &machine).unwrap_or_else(|e| panic!("{e}"));
        cmd.stderr(Stdio::piped());
        if let Some(d) = second {
            cmd.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                d.display()
            ));
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
            &std::fs::read(self.dir.path().join(cairn::boot::SERIAL_LOG)).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Waits for a serial line starting with `prefix`; returns the line and the time since QEMU started. Panics
    /// with the console's end on timeout (after killing QEMU) or when QEMU exits first.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> (String, Duration) {
        self.wait_for_line(prefix, timeout, |l| l.starts_with(prefix))
    }

    /// [`Vm::wait_for`] for one of cairn's JSON lines (`cairn-agent: ready {...}`): its JSON, and the time since
    /// QEMU started. Panics with the line when it is not JSON.
    pub fn wait_for_json(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> (serde_json::Value, Duration) {
        let (line, took) = self.wait_for(prefix, timeout);
        let json = serde_json::from_str(line.trim_start_matches(prefix).trim())
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        (json, took)
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
            // Complete lines only: the agent's line is some 2 KB, and QEMU may have written half of it; a kernel
            // message may have broken it in two (`rejoin_console_line`), the rest to come.
            let complete = &serial[..serial.rfind('\n').map_or(0, |i| i + 1)];
            let lines: Vec<&str> = complete.lines().collect();
            if let Some(i) = lines.iter().position(|l| matches(l)) {
                let joined = if is_cairn_line(lines[i]) {
                    cairn_profile::contract::rejoin_console_line(
                        lines[i],
                        lines[i + 1..].iter().copied(),
                    )
                    .or_else(|| {
                        (lines.len() - i >= cairn_profile::contract::CONSOLE_PIECES)
                            .then(|| lines[i].to_string())
                    })
                } else {
                    Some(lines[i].to_string())
                };
                if let Some(line) = joined {
                    return (line, self.started.elapsed());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) before `{prefix}`; its stderr: {}; console:\n{}",
                    self.stderr(),
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
        let sock = self.dir.path().join(cairn::boot::MONITOR_SOCKET);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            cairn::boot::press_power_button(&sock);
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

    /// Pulls the plug: QEMU killed by its own pid, the guest given no chance to sync (a power cut).
    pub fn power_cut(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // Our own child, by its own pid: never a pattern match on process names.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What QEMU wrote on stderr, once it has exited (empty before).
    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return String::new();
        }
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        text
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

/// A line of cairn's own (the agent's or the initrd's), whose JSON may have been broken by a kernel message.
fn is_cairn_line(line: &str) -> bool {
    let c = cairn_profile::contract::CONSOLE_AGENT;
    let i = cairn_profile::contract::CONSOLE_INIT;
    line.contains(c) || line.contains(i)
}
