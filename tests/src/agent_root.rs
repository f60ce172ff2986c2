//! A small hand-made root for `cairn-agent apply --root`, and reading what the agent says about it: the fixture
//! of `tests/agent.rs` and `tests/agent_cli.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::cairn::{output_text as text, write_file as write};
use crate::run_agent;

pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2Utb3BzLWtleS1mb3ItdGVzdHM ops@example";
pub const KEY2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNlY29uZC1rZXktZm9yLWluc3RhbmNl ops@instance";

pub const PROFILE: &str = r#"schema = 1
name = "edge"
version = "1.0.0"
arch = "amd64"
[base]
rock = "localhost:5000/cairn/node-base:bookworm@sha256:0000000000000000000000000000000000000000000000000000000000000000"
[system]
hostname = "edge-{machine-id:8}"
timezone = "Europe/Paris"
sysctl = { "net.ipv4.ip_forward" = "1", "vm.swappiness" = "10" }
modules = ["overlay", "br_netfilter"]
services = { enable = ["containerd"], disable = ["ssh"] }
[[user]]
name = "ops"
groups = ["sudo"]
ssh-keys = ["KEY"]
"#;

/// A small Debian-shaped root with a baked profile; `/home` links to `/var/home` as in cairn images.
pub fn small_root(dir: &Path, machine_id: &str) -> PathBuf {
    let root = dir.join("root");
    write(
        &root,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n",
        0o644,
    );
    write(
        &root,
        "/etc/group",
        "root:x:0:\nsudo:x:27:\nshadow:x:42:\n",
        0o644,
    );
    write(&root, "/etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640);
    write(
        &root,
        "/etc/gshadow",
        "root:*::\nsudo:*::\nshadow:*::\n",
        0o640,
    );
    write(&root, "/etc/hosts", "127.0.0.1\tlocalhost\n", 0o644);
    write(&root, "/etc/machine-id", machine_id, 0o444);
    write(&root, "/bin/bash", "", 0o755);
    write(&root, "/usr/share/zoneinfo/Europe/Paris", "TZif2", 0o644);
    let units = [
        (
            "containerd.service",
            "[Unit]\nDescription=containerd\n[Install]\nWantedBy=multi-user.target\n",
        ),
        (
            "ssh.service",
            "[Unit]\nDescription=ssh\n[Install]\nWantedBy=multi-user.target\n",
        ),
        (
            "systemd-networkd.service",
            "[Unit]\nDescription=networkd\n[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket systemd-networkd-wait-online.service\n",
        ),
        (
            "systemd-networkd.socket",
            "[Install]\nWantedBy=sockets.target\n",
        ),
        (
            "systemd-networkd-wait-online.service",
            "[Install]\nWantedBy=network-online.target\n",
        ),
    ];
    for (name, text) in units {
        write(
            &root,
            &format!("/usr/lib/systemd/system/{name}"),
            text,
            0o644,
        );
    }
    // ssh is enabled by the image itself, on the read-only part: disabling it must mask it.
    std::fs::create_dir_all(root.join("usr/lib/systemd/system/multi-user.target.wants"))
        .expect("mkdir");
    std::os::unix::fs::symlink(
        "../ssh.service",
        root.join("usr/lib/systemd/system/multi-user.target.wants/ssh.service"),
    )
    .expect("symlink");
    std::fs::create_dir_all(root.join("var/home")).expect("mkdir");
    std::os::unix::fs::symlink("/var/home", root.join("home")).expect("symlink");
    write(
        &root,
        "/usr/lib/cairn/profile.toml",
        &PROFILE.replace("KEY", KEY),
        0o644,
    );
    root
}

pub const ID: &str = "0123456789abcdef0123456789abcdef\n";

pub fn apply(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "apply".to_string(),
        "--root".to_string(),
        root.display().to_string(),
    ];
    // Point every source somewhere empty unless the test says otherwise.
    for (flag, default) in [
        ("--fw-cfg", "no-fw-cfg"),
        ("--esp", "no-esp"),
        ("--dmi", "no-dmi"),
    ] {
        if !extra.contains(&flag) {
            args.push(flag.into());
            args.push(
                root.parent()
                    .expect("parent")
                    .join(default)
                    .display()
                    .to_string(),
            );
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run_agent(args, env)
}

pub fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON of the console line `cairn-agent: PREFIX {json}`.
pub fn line_json(o: &Output, prefix: &str) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cairn-agent: {prefix} ")))
        .unwrap_or_else(|| panic!("no `cairn-agent: {prefix}` line in:\n{}", text(o)));
    serde_json::from_str(line).expect("the line carries JSON")
}

pub const STATUS_FILES: &[&str] = &["var/lib/cairn/status.json", "run/cairn/status.json"];

/// The status a failed apply left in the root. The failure itself is said once, as text on stderr
/// (`cairn-agent: PHASE phase failed: ERROR`, the status's `note`), with no failure JSON on stdout.
pub fn failed_status(root: &Path, o: &Output) -> Value {
    let status: Value =
        serde_json::from_str(&read(root, "/var/lib/cairn/status.json")).expect("status JSON");
    let note = status["note"].as_str().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        stderr.matches(" phase failed: ").count(),
        1,
        "one error: {}",
        text(o)
    );
    let phase = status["phase"].as_str().unwrap_or_default();
    assert!(
        stderr.contains(&format!("cairn-agent: {phase} phase failed: {note}\n")),
        "the error is the status's note: {}",
        text(o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        !stdout.contains(" failed {"),
        "failure JSON on stdout: {}",
        text(o)
    );
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(status["last_run"]["outcome"], "failed", "{status}");
    assert_eq!(status["last_run"]["error"], note, "{status}");
    status
}
