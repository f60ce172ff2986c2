//! The agent's kubernetes phase, against the `k8s` contract double (tests/k8s-double), which refuses any field or
//! flag outside Canonical Kubernetes' documented set.
//!
//! On the host: `cairn-agent apply --root DIR --kubernetes --k8s DOUBLE` on small hand-made roots (the double's
//! console, state, containerd folder and `/proc/sys` in a tempdir; its services as detached processes, the kubelet
//! stand-in on a free port): the bootstrap file and its mode, the hardening files, a crash between steps, the
//! sentinel, a worker without a token, a join whose token came from the ESP, a worker ready without `k8s status`,
//! a worker cut off between its join and the sentinel, a node named otherwise than its host, the images check
//! waiting for the distribution's background import (with a throwaway containerd).
//! Booted: the Kubernetes node base with the stand-in snaps (snapd, core22, the double as `k8s`) installed offline
//! by the image's real snapd at first boot, the test rock's console units layered on, a preloaded rock imported
//! into the node's real containerd, a control plane and a worker under QEMU.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cairn_e2e::agent_root::failed_status;
use cairn_e2e::cairn::{output_text as text, write_file as write};
use cairn_e2e::k8s_double::{self, KERNEL_DEFAULTS, double_bin};
use cairn_e2e::k8s_snaps;
use cairn_e2e::qemu::Vm;
use cairn_e2e::rocks::{build_profile, k8s_node_base, pause};
use cairn_e2e::{registry, run_agent, run_cairn, write_profile};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TOKEN: &str = "cairn-e2e-join-token-6f1d2a9c0b7e4d31a8c5f0e2b9d47a16";

fn kubernetes_profile(role: &str, extra: &str) -> String {
    format!(
        r#"schema = 1
name = "k8s-node"
version = "1.0.0"
arch = "amd64"
[base]
rock = "localhost:5000/cairn/node-base:bookworm@sha256:{zero}"
[kubernetes]
distribution = "k8s"
role = "{role}"
extra-sans = ["api.example.com"]
[kubernetes.features]
local-storage = {{ enabled = true, reclaim-policy = "Delete" }}
[kubernetes.extra-args]
kubelet = {{ "--max-pods" = "150" }}
[kubernetes.remove-args]
kube-apiserver = ["--profiling"]
{extra}"#,
        zero = "0".repeat(64)
    )
}

/// A small root with a baked profile, the units the system phase enables, and a hostname.
fn small_root(dir: &Path, profile: &str) -> PathBuf {
    let root = dir.join("root");
    write(&root, "/etc/hostname", "node-a\n", 0o644);
    write(&root, "/etc/hosts", "127.0.0.1\tlocalhost\n", 0o644);
    write(
        &root,
        "/etc/machine-id",
        "0123456789abcdef0123456789abcdef\n",
        0o444,
    );
    for (name, text) in [
        (
            "systemd-networkd.service",
            "[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd-wait-online.service\n",
        ),
        (
            "systemd-networkd-wait-online.service",
            "[Install]\nWantedBy=network-online.target\n",
        ),
    ] {
        write(
            &root,
            &format!("/usr/lib/systemd/system/{name}"),
            text,
            0o644,
        );
    }
    write(&root, "/usr/lib/cairn/profile.toml", profile, 0o644);
    let proc_sys = dir.join("proc-sys");
    for (key, value) in KERNEL_DEFAULTS {
        let p = proc_sys.join(key.replace('.', "/"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, format!("{value}\n")).expect("write");
    }
    std::fs::create_dir_all(dir.join("images")).expect("mkdir");
    root
}

/// The loopback port of this root's kubelet stand-in: picked free once, then kept in `ROOT/../kubelet-port`, as
/// the stand-in started by a join keeps serving on it across the agent's runs.
fn kubelet_port(dir: &Path) -> u16 {
    let file = dir.join("kubelet-port");
    if let Some(port) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return port;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::write(&file, port.to_string()).expect("write the port");
    port
}

/// `apply --root ROOT --kubernetes --k8s DOUBLE`, the double's console, state, containerd folder and /proc/sys in
/// `ROOT/..`; the kubelet's health is waited for 10 s.
fn apply(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = root.parent().expect("parent");
    let path = |name: &str| dir.join(name).display().to_string();
    let port = kubelet_port(dir);
    let mut args: Vec<String> = [
        "apply",
        "--root",
        &root.display().to_string(),
        "--kubernetes",
        "--k8s",
        &double_bin().display().to_string(),
        "--containerd-socket",
        &path("no-containerd.sock"),
        "--fw-cfg",
        &path("no-fw-cfg"),
        "--dmi",
        &path("no-dmi"),
        "--kubelet-healthz",
        &format!("http://127.0.0.1:{port}/healthz"),
        "--kubelet-wait",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--esp") {
        args.extend(["--esp".to_string(), path("no-esp")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let (console, state, images, proc_sys, containerd) = (
        path("console"),
        path("double-state"),
        path("images"),
        path("proc-sys"),
        path("run-containerd"),
    );
    let healthz = format!("127.0.0.1:{port}");
    let mut all = vec![
        ("K8S_DOUBLE_CONSOLE", console.as_str()),
        ("K8S_DOUBLE_STATE_DIR", state.as_str()),
        ("K8S_DOUBLE_SIDELOAD_DIR", images.as_str()),
        ("K8S_DOUBLE_PROC_SYS", proc_sys.as_str()),
        ("K8S_DOUBLE_CONTAINERD_DIR", containerd.as_str()),
        ("K8S_DOUBLE_SERVICES", "process"),
        ("K8S_DOUBLE_KUBELET_HEALTHZ", healthz.as_str()),
    ];
    for (k, v) in env {
        all.retain(|(key, _)| key != k);
        all.push((k, v));
    }
    run_agent(args, &all)
}

fn console(root: &Path) -> String {
    std::fs::read_to_string(root.parent().expect("parent").join("console")).unwrap_or_default()
}

/// The JSON of the last console line `cairn-agent: PREFIX {json}`.
fn line_json(text: &str, prefix: &str) -> Value {
    let line = text
        .lines()
        .filter_map(|l| {
            l.split_once(&format!("cairn-agent: {prefix} "))
                .map(|(_, j)| j)
        })
        .next_back()
        .unwrap_or_else(|| panic!("no `cairn-agent: {prefix}` line in:\n{text}"));
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn steps(status: &Value, phase: &str) -> Vec<(String, String)> {
    status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["phase"] == phase)
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The report of step `name` in a status.
fn step<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {status}"))
}

fn mode(root: &Path, path: &str) -> u32 {
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .mode()
        & 0o7777
}

#[test]
fn a_control_plane_bootstraps_once_hardened_even_across_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), &kubernetes_profile("control-plane", ""));
    // Files the real distribution writes as it bootstraps, with a mode the CIS benchmark refuses.
    write(&root, "/etc/kubernetes/admin.conf", "kubeconfig", 0o644);
    write(&root, "/etc/kubernetes/pki/ca.crt", "certificate", 0o644);

    // A power cut right after the bootstrap file is written: nothing has run the distribution yet.
    let o = apply(
        &root,
        &["--instance", "/dev/null"],
        &[("CAIRN_AGENT_CRASH_AFTER", "config")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        !console(&root).contains("k8s-double: bootstrap"),
        "{}",
        console(&root)
    );

    let o = apply(&root, &["--instance", "/dev/null"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let node = line_json(&text(&o), "ready");
    assert_eq!(
        steps(&node, "kubernetes"),
        [
            ("preload".into(), "unchanged".into()),
            ("hardening".into(), "unchanged".into()),
            ("config".into(), "unchanged".into()),
            ("bootstrap".into(), "applied".into()),
            ("images".into(), "unchanged".into()),
            ("ready".into(), "unchanged".into()),
            ("modes".into(), "applied".into()),
        ],
        "{node}"
    );
    // The distribution's own files, made owner-only after ready (this double writes none: a stand-in).
    assert_eq!(mode(&root, "/etc/kubernetes/admin.conf"), 0o600);
    assert_eq!(mode(&root, "/etc/kubernetes/pki/ca.crt"), 0o600);
    let double = console(&root);
    let file = root.join("var/lib/cairn/kubernetes/bootstrap.json");
    assert!(
        double.contains(&format!(
            "k8s-double: bootstrap --name node-a --address {} --file {}",
            address(&double),
            file.display()
        )),
        "{double}"
    );
    assert!(
        double.contains(&format!(
            "k8s-double: file {} mode 0600 uid 0 gid 0",
            file.display()
        )),
        "{double}"
    );
    assert!(double.contains("k8s-double: bootstrapped"), "{double}");
    assert!(
        double.contains("k8s-double: kubelet kernel defaults ok"),
        "{double}"
    );

    // The file the distribution read: the profile's cluster, the CIS preset, then extra- and remove-args.
    let config: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("bootstrap file")).expect("json");
    assert_eq!(config["extra-sans"], serde_json::json!(["api.example.com"]));
    assert_eq!(
        config["cluster-config"]["local-storage"],
        serde_json::json!({"enabled": true, "reclaim-policy": "Delete"})
    );
    let apiserver = &config["extra-node-kube-apiserver-args"];
    assert_eq!(
        apiserver["--profiling"],
        Value::Null,
        "removed by the profile"
    );
    assert_eq!(
        apiserver["--enable-admission-plugins"],
        "NodeRestriction,EventRateLimit"
    );
    assert_eq!(
        apiserver["--encryption-provider-config"],
        "/var/lib/cairn/kubernetes/encryption-config.yaml"
    );
    assert_eq!(
        apiserver["--admission-control-config-file"],
        "/var/lib/cairn/kubernetes/admission-control.yaml"
    );
    assert_eq!(
        config["extra-node-kubelet-args"]["--protect-kernel-defaults"],
        "true"
    );
    assert_eq!(config["extra-node-kubelet-args"]["--max-pods"], "150");
    assert!(config.get("disable-rbac").is_none());

    // Every file cairn wrote for the distribution is 0600, its folder 0700; the key was made here.
    assert_eq!(mode(&root, "/var/lib/cairn/kubernetes"), 0o700);
    for f in [
        "bootstrap.json",
        "admission-control.yaml",
        "audit-policy.yaml",
        "encryption-config.yaml",
        "cluster-member",
    ] {
        assert_eq!(
            mode(&root, &format!("/var/lib/cairn/kubernetes/{f}")),
            0o600,
            "{f}"
        );
    }
    assert_eq!(mode(&root, "/etc/sysctl.d/80-cairn-kubernetes.conf"), 0o600);
    let sysctl = std::fs::read_to_string(root.join("etc/sysctl.d/80-cairn-kubernetes.conf"))
        .expect("sysctl file");
    for (k, v) in KERNEL_DEFAULTS {
        assert!(sysctl.contains(&format!("{k} = {v}\n")), "{sysctl}");
    }
    let encryption =
        std::fs::read_to_string(root.join("var/lib/cairn/kubernetes/encryption-config.yaml"))
            .expect("encryption config");
    let key = encryption
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .expect("a key");
    assert_eq!(key.len(), 44, "32 bytes in base64: {key}");
    let admission =
        std::fs::read_to_string(root.join("var/lib/cairn/kubernetes/admission-control.yaml"))
            .expect("admission");
    assert!(
        admission.contains("kind: AdmissionConfiguration") && admission.contains("EventRateLimit")
    );

    // A later boot: nothing runs again, the key is kept.
    let o = apply(&root, &["--instance", "/dev/null"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let node = line_json(&text(&o), "ready");
    assert!(
        steps(&node, "kubernetes")
            .iter()
            .all(|(_, o)| o == "skipped"),
        "{node}"
    );
    assert_eq!(console(&root).matches("k8s-double: bootstrap ").count(), 1);
    assert!(
        std::fs::read_to_string(root.join("var/lib/cairn/kubernetes/encryption-config.yaml"))
            .expect("encryption config")
            .contains(key)
    );

    // A boot cut off after the distribution accepted the bootstrap but before the sentinel was written (as if
    // the power went right after the command): the next boot asks the distribution, and does not run it again.
    std::fs::remove_file(root.join("var/lib/cairn/kubernetes/cluster-member")).expect("rm");
    let state_path = root.join("var/lib/cairn/state.json");
    let mut state: Value =
        serde_json::from_slice(&std::fs::read(&state_path).expect("state")).expect("json");
    state["done"] = serde_json::json!(["system"]);
    std::fs::write(&state_path, serde_json::to_vec(&state).expect("json")).expect("write");
    let o = apply(&root, &["--instance", "/dev/null"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let node = line_json(&text(&o), "ready");
    let bootstrap = step(&node, "bootstrap");
    assert_eq!(
        bootstrap["detail"],
        "already a cluster member, the distribution says (an earlier boot stopped after `k8s bootstrap`): not run again",
        "{node}"
    );
    assert_eq!(console(&root).matches("k8s-double: bootstrap ").count(), 1);
    assert_eq!(
        mode(&root, "/var/lib/cairn/kubernetes/cluster-member"),
        0o600
    );
}

/// The double's console shows no `k8s status` call: what a worker must never run (k8sd refuses it there).
fn assert_never_called_status(double: &str) {
    assert!(
        !double.lines().any(|l| l.starts_with("k8s-double: status")),
        "`k8s status` was called:\n{double}"
    );
    assert!(
        !double.contains("this action is restricted on workers"),
        "{double}"
    );
}

/// The address the agent chose, as the double printed it.
fn address(console: &str) -> String {
    console
        .lines()
        .find_map(|l| l.split_once(" --address "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_example_kubernetes_profiles_validate() {
    for name in ["control-plane", "worker"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../profiles")
            .join(format!("{name}.toml"));
        let o = run_cairn(["validate".as_ref(), path.as_os_str()], &[]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).ends_with(&format!(
                ": valid ({name} 0.1.0, 1 rock, 1 preloaded rock, kubernetes {name} hardened cis)\n"
            )),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn a_profile_holding_a_secret_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let build = |profile: &str| {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, profile).expect("write");
        run_cairn(
            [
                "build".as_ref(),
                path.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            &[],
        )
    };
    // A join token in the profile: it belongs to one machine's instance data.
    let o = build(&kubernetes_profile("worker", "").replace(
        "role = \"worker\"\n",
        &format!("role = \"worker\"\njoin-token = \"{TOKEN}\"\n"),
    ));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("p.toml:10:1: `kubernetes.join-token`: a join token is a secret, and a secret never goes into an image"),
        "{err}"
    );
    // A private key in a file's source, beside the profile.
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----\n",
    )
    .expect("write");
    let o = build(&kubernetes_profile(
        "worker",
        "[[file]]\npath = \"/etc/kubernetes/key.pem\"\nsource = \"key.pem\"\n",
    ));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`file[0].source`") && err.contains("PRIVATE KEY"),
        "{err}"
    );
    assert!(!out.exists(), "a refused build wrote {}", out.display());
}

#[test]
fn a_joining_control_plane_shares_the_clusters_encryption_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), &kubernetes_profile("control-plane", ""));
    let instance = dir.path().join("instance.toml");
    // Without the cluster's key it would encrypt with one no other API server can read: refused, saying why.
    std::fs::write(
        &instance,
        format!("[kubernetes]\njoin-token = \"{TOKEN}\"\naddress = \"10.0.2.16\"\n"),
    )
    .expect("write");
    let instance_arg = instance.display().to_string();
    let o = apply(&root, &["--instance", &instance_arg], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = failed_status(&root, &o);
    assert!(
        failed["note"].as_str().unwrap_or_default().contains(
            "a control plane joining a cluster hardened with cis shares its secrets encryption key: its instance data needs [kubernetes] encryption-key"
        ),
        "{failed}"
    );
    assert_eq!(console(&root), "", "the distribution was not called");

    // With it, the node's encryption configuration carries that key, and the control-plane join file is used.
    let key = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    std::fs::write(
        &instance,
        format!(
            "[kubernetes]\njoin-token = \"{TOKEN}\"\naddress = \"10.0.2.16\"\nencryption-key = \"{key}\"\n"
        ),
    )
    .expect("write");
    let o = apply(&root, &["--instance", &instance_arg], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(key), "the key was printed: {}", text(&o));
    let encryption =
        std::fs::read_to_string(root.join("var/lib/cairn/kubernetes/encryption-config.yaml"))
            .expect("encryption config");
    assert!(
        encryption.contains(&format!("secret: {key}\n")),
        "{encryption}"
    );
    let double = console(&root);
    assert!(
        double.contains("k8s-double: join kind control-plane"),
        "{double}"
    );
    assert!(
        double.contains("k8s-double: joined control-plane"),
        "{double}"
    );
    for f in ["var/lib/cairn/state.json", "var/lib/cairn/status.json"] {
        let t = std::fs::read_to_string(root.join(f)).expect("agent file");
        assert!(!t.contains(key), "{f}: {t}");
    }
}

#[test]
fn a_worker_without_a_join_token_fails_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), &kubernetes_profile("worker", ""));
    let o = apply(&root, &["--instance", "/dev/null"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = failed_status(&root, &o);
    assert_eq!(failed["phase"], "kubernetes", "{failed}");
    assert!(
        failed["note"]
            .as_str()
            .unwrap_or_default()
            .contains("a worker joins a cluster: its instance data needs [kubernetes] join-token"),
        "{failed}"
    );
    assert_eq!(console(&root), "", "the distribution was not called");
}

#[test]
fn a_worker_joins_with_the_token_from_the_esp_which_is_then_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), &kubernetes_profile("worker", ""));
    let esp = dir.path().join("esp");
    let instance = format!(
        "# node 7, flashed with dd\n[system]\nhostname = \"worker-7\"\n\n[kubernetes]\njoin-token = \"{TOKEN}\"\nnode-name = \"worker-7\"\naddress = \"10.0.2.15\"\n"
    );
    write(&esp, "/cairn/instance.toml", &instance, 0o644);
    let esp_arg = esp.display().to_string();
    // The first boot joins, then the kubelet refuses to start (a kernel setting its hardening needs is off):
    // the phase fails at `ready`, after the join and after the token left the ESP.
    let panic = dir.path().join("proc-sys/kernel/panic");
    std::fs::write(&panic, "0\n").expect("write");
    let o = apply(&root, &["--esp", &esp_arg], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let failed = failed_status(&root, &o);
    // A worker judges its readiness by what it can see: its kubelet's health, never `k8s status`.
    assert!(
        failed["note"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ready: the kubelet's health endpoint http://127.0.0.1:"),
        "{failed}"
    );
    assert!(
        console(&root).contains(
            "k8s-double: kubelet refuses to start: --protect-kernel-defaults: kernel.panic is 0, want 10"
        ),
        "{}",
        console(&root)
    );
    assert!(!text(&o).contains(TOKEN), "{}", text(&o));
    // The next boot resumes: no token is needed any more, the join is not run again.
    std::fs::write(&panic, "10\n").expect("write");
    let o = apply(&root, &["--esp", &esp_arg], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let all = text(&o);
    assert!(!all.contains(TOKEN), "the agent printed the token:\n{all}");
    let node = line_json(&all, "ready");
    assert_eq!(node["instance"], "esp");
    assert_eq!(
        steps(&node, "kubernetes")
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        [
            "preload",
            "hardening",
            "config",
            "join",
            "images",
            "ready",
            "modes"
        ]
    );
    let double = console(&root);
    let sha = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let file = root.join("var/lib/cairn/kubernetes/join.json");
    assert!(
        double.contains(&format!(
            "k8s-double: join-cluster token-sha256={sha} --name worker-7 --address 10.0.2.15 --file {}",
            file.display()
        )),
        "{double}"
    );
    assert!(double.contains("k8s-double: join kind worker"), "{double}");
    assert!(double.contains("k8s-double: joined worker"), "{double}");
    assert_never_called_status(&double);
    let config: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("join file")).expect("json");
    // The node is named worker-7 on a host named node-a: the distribution sets the kubelet's
    // --hostname-override to the name, and the join file leaves it alone.
    assert!(
        config["extra-node-kubelet-args"]
            .get("--hostname-override")
            .is_none(),
        "{config}"
    );
    assert_eq!(
        config
            .as_object()
            .expect("object")
            .keys()
            .collect::<Vec<_>>(),
        ["extra-node-kubelet-args"],
        "{config}"
    );
    // A worker runs no API server: no admission, audit or encryption files.
    assert!(
        !root
            .join("var/lib/cairn/kubernetes/encryption-config.yaml")
            .exists()
    );

    // The token left the ESP; every other byte stayed.
    let after = std::fs::read_to_string(esp.join("cairn/instance.toml")).expect("instance");
    assert_eq!(
        after,
        instance.replace(&format!("join-token = \"{TOKEN}\"\n"), "")
    );
    let join = step(&node, "join");
    assert_eq!(
        join["detail"], "done on an earlier boot (/var/lib/cairn/kubernetes/cluster-member)",
        "{join}"
    );
    assert!(
        failed["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .any(|s| s["name"] == "join"
                && s["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("join secrets removed from")),
        "{failed}"
    );
    // The agent's files hold no token either.
    for f in ["var/lib/cairn/state.json", "var/lib/cairn/status.json"] {
        let t = std::fs::read_to_string(root.join(f)).expect("agent file");
        assert!(!t.contains(TOKEN), "{f}: {t}");
    }

    // The next boot reads the changed file as the one it was provisioned with: no "instance changed".
    let o = apply(&root, &["--esp", &esp_arg], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let node = line_json(&text(&o), "ready");
    assert!(node.get("note").is_none(), "{node}");
    assert_eq!(
        console(&root).matches("k8s-double: join-cluster ").count(),
        1
    );
}

#[test]
fn a_stig_worker_masks_the_images_sshd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = kubernetes_profile("worker", "").replace(
        "role = \"worker\"\n",
        "role = \"worker\"\nhardening = \"stig\"\n",
    );
    let root = small_root(dir.path(), &profile);
    write(
        &root,
        "/usr/lib/systemd/system/ssh.service",
        "[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    write(
        &root,
        "/usr/lib/systemd/system/ssh.socket",
        "[Install]\nWantedBy=sockets.target\n",
        0o644,
    );
    std::fs::create_dir_all(root.join("usr/lib/systemd/system/multi-user.target.wants"))
        .expect("mkdir");
    std::os::unix::fs::symlink(
        "../ssh.service",
        root.join("usr/lib/systemd/system/multi-user.target.wants/ssh.service"),
    )
    .expect("symlink");
    let instance = dir.path().join("instance.toml");
    std::fs::write(
        &instance,
        format!("[kubernetes]\njoin-token = \"{TOKEN}\"\naddress = \"10.0.2.15\"\n"),
    )
    .expect("write");
    let o = apply(&root, &["--instance", &instance.display().to_string()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    for unit in ["ssh.service", "ssh.socket"] {
        assert_eq!(
            std::fs::read_link(root.join("etc/systemd/system").join(unit)).expect("masked"),
            Path::new("/dev/null")
        );
    }
    let node = line_json(&text(&o), "ready");
    let hardening = step(&node, "hardening");
    assert_eq!(
        hardening["detail"],
        "preset stig: 6 sysctls, 0 files in /var/lib/cairn/kubernetes, masked: ssh.service ssh.socket"
    );
    assert!(console(&root).contains("k8s-double: joined worker"));
}

fn worker_instance(dir: &Path, node_name: &str) -> String {
    let instance = dir.join("instance.toml");
    std::fs::write(
        &instance,
        format!(
            "[kubernetes]\njoin-token = \"{TOKEN}\"\nnode-name = \"{node_name}\"\naddress = \"10.0.2.16\"\n"
        ),
    )
    .expect("write");
    instance.display().to_string()
}

#[test]
fn a_worker_ends_ready_without_ever_calling_k8s_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), &kubernetes_profile("worker", ""));
    let instance = worker_instance(dir.path(), "worker-1");
    let o = apply(&root, &["--instance", &instance], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let node = line_json(&text(&o), "ready");
    let ready = step(&node, "ready");
    assert_eq!(
        ready["detail"], "member as worker-1 (worker); kubelet healthy",
        "{node}"
    );
    let double = console(&root);
    assert_never_called_status(&double);
    // Asked before the join (not a member yet) and at ready (a member).
    assert!(
        double.contains("k8s-double: error: local-node-status: the node is not part of a cluster"),
        "{double}"
    );
    assert!(
        double.contains("k8s-double: local-node-status member (worker)"),
        "{double}"
    );
    assert!(
        double.contains("k8s-double: kubelet healthz on 127.0.0.1:"),
        "{double}"
    );
}

#[test]
fn a_worker_cut_off_between_its_join_and_the_sentinel_ends_ready_without_a_second_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = small_root(dir.path(), &kubernetes_profile("worker", ""));
    let instance = worker_instance(dir.path(), "worker-1");
    // The power goes right after `k8s join-cluster` returned: the double's record says joined, and the agent
    // has neither its sentinel nor the rest of its journal.
    let o = apply(
        &root,
        &["--instance", &instance],
        &[("CAIRN_AGENT_CRASH_AFTER", "join")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(dir.path().join("double-state/state.json").is_file());
    std::fs::remove_file(root.join("var/lib/cairn/kubernetes/cluster-member")).expect("rm");
    let state_path = root.join("var/lib/cairn/state.json");
    let mut state: Value =
        serde_json::from_slice(&std::fs::read(&state_path).expect("state")).expect("json");
    state["done"] = serde_json::json!(["system"]);
    state["steps"]
        .as_object_mut()
        .expect("steps")
        .remove("kubernetes");
    std::fs::write(&state_path, serde_json::to_vec(&state).expect("json")).expect("write");

    let o = apply(&root, &["--instance", &instance], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let node = line_json(&text(&o), "ready");
    assert_eq!(
        step(&node, "join")["detail"],
        "already a cluster member, the distribution says (an earlier boot stopped after `k8s join-cluster`): not run again",
        "{node}"
    );
    assert_eq!(step(&node, "ready")["outcome"], "unchanged", "{node}");
    let double = console(&root);
    assert_eq!(
        double.matches("k8s-double: join-cluster ").count(),
        1,
        "{double}"
    );
    assert_never_called_status(&double);
    assert_eq!(
        mode(&root, "/var/lib/cairn/kubernetes/cluster-member"),
        0o600
    );
}

#[test]
fn a_node_named_otherwise_than_its_host_leaves_hostname_override_to_the_distribution() {
    for hardening in ["cis", "stig"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = kubernetes_profile("control-plane", "").replace(
            "role = \"control-plane\"\n",
            &format!("role = \"control-plane\"\nhardening = \"{hardening}\"\n"),
        );
        let root = small_root(dir.path(), &profile);
        let instance = dir.path().join("instance.toml");
        std::fs::write(
            &instance,
            "[kubernetes]\nnode-name = \"cp-1\"\naddress = \"10.0.2.15\"\n",
        )
        .expect("write");
        let o = apply(&root, &["--instance", &instance.display().to_string()], &[]);
        assert!(o.status.success(), "{hardening}: {}", text(&o));
        let double = console(&root);
        assert!(
            double.contains("k8s-double: bootstrap --name cp-1 --address 10.0.2.15 "),
            "{double}"
        );
        let config: Value = serde_json::from_slice(
            &std::fs::read(root.join("var/lib/cairn/kubernetes/bootstrap.json")).expect("file"),
        )
        .expect("json");
        let kubelet = config["extra-node-kubelet-args"]
            .as_object()
            .expect("kubelet args");
        assert!(
            !kubelet.contains_key("--hostname-override"),
            "{hardening}: {config}"
        );
        // The STIG audits request and response bodies; CIS only metadata.
        let audit =
            std::fs::read_to_string(root.join("var/lib/cairn/kubernetes/audit-policy.yaml"))
                .expect("audit policy");
        let level = if hardening == "stig" {
            "RequestResponse"
        } else {
            "Metadata"
        };
        assert!(audit.ends_with(&format!("- level: {level}\n")), "{audit}");
        let node = line_json(&text(&o), "ready");
        assert_eq!(
            step(&node, "ready")["detail"],
            "cluster status:           ready; member as cp-1 (control-plane); kubelet healthy",
            "{node}"
        );
    }
}

#[test]
fn the_images_check_waits_for_the_background_import_and_names_what_is_missing() {
    if let Err(why) = cairn_e2e::containerd::available() {
        println!("skipped: {why}");
        return;
    }
    let containerd = cairn_e2e::containerd::Containerd::start();
    let socket = containerd.socket().display().to_string();
    let layout = cairn_e2e::rocks::pause_layout();
    let digest = cairn_e2e::rocks::layout_digest(&layout, "3.10");
    let pause = "ghcr.io/canonical/k8s-snap/pause:3.10";
    let preload = |name: &str, digest: &str| {
        format!(
            "[[preload]]\nrock = \"localhost:5000/canonical/k8s-snap/pause:3.10@{digest}\"\nname = \"{name}\"\n"
        )
    };
    let node = |extra: &str, broken: bool, delay: &str, wait: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = small_root(dir.path(), &kubernetes_profile("control-plane", extra));
        let archive = cairn_e2e::containerd::named_archive(&layout, pause);
        write(&root, "/usr/lib/cairn/images/pause.tar", "", 0o644);
        std::fs::write(root.join("usr/lib/cairn/images/pause.tar"), archive).expect("write");
        if broken {
            // An archive the import fails on: the distribution logs it and leaves it; its image never comes.
            write(
                &root,
                "/usr/lib/cairn/images/coredns.tar",
                "not an archive",
                0o644,
            );
        }
        let sideload = root
            .join("var/snap/k8s/common/images")
            .display()
            .to_string();
        let o = apply(
            &root,
            &[
                "--instance",
                "/dev/null",
                "--containerd-socket",
                &socket,
                "--images-wait",
                wait,
            ],
            &[
                ("K8S_DOUBLE_CONTAINERD_SOCKET", &socket),
                ("K8S_DOUBLE_SIDELOAD_DIR", &sideload),
                ("K8S_DOUBLE_SIDELOAD_DELAY", delay),
            ],
        );
        (dir, root, o)
    };
    // The import lands 3 s after the bootstrap returned: the check waits for it.
    let (_dir, root, o) = node(&preload(pause, &digest), false, "3s", "60");
    assert!(o.status.success(), "{}\n{}", text(&o), console(&root));
    let ready = line_json(&text(&o), "ready");
    let images = step(&ready, "images")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        images.starts_with("1 images with their pinned digests in namespace k8s.io (after "),
        "{ready}"
    );
    assert!(
        root.join("var/snap/k8s/common/images/pause.tar.loaded")
            .is_file()
    );

    // An image whose archive does not import never comes: after the bound the step names it, and only it.
    let coredns = "ghcr.io/canonical/coredns:1.11.1-ck0";
    let (_dir, root, o) = node(
        &format!("{}{}", preload(pause, &digest), preload(coredns, &digest)),
        true,
        "1s",
        "4",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let failed = failed_status(&root, &o);
    assert_eq!(
        failed["note"],
        format!(
            "images: not in containerd's k8s.io namespace after 4s of the distribution's background import: \
             {coredns} (preload[1].rock)"
        ),
        "{failed}\n{}",
        console(&root)
    );
    assert!(
        console(&root).contains("k8s-double: side-load done: 1 of 2 imported"),
        "{}",
        console(&root)
    );
}

/// The test rock (the console units), pushed to the shared registry.
fn double_rock() -> String {
    static PINNED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PINNED
        .get_or_init(|| k8s_double::push(registry::shared()))
        .clone()
}

/// The control plane and the worker, built from the Kubernetes node base with the stand-in snaps (snapd, core22,
/// the double as k8s) and the sandbox rock preloaded, booted under QEMU: the snaps installed offline by the node's
/// real snapd before the kubernetes phase runs `/snap/bin/k8s`, the right command per role, the files it read, the
/// hardening, the preloaded image in the node's real containerd with its pinned digest, Debian's containerd never
/// started, no token in the image.
#[test]
fn booted_control_plane_and_worker_with_a_preloaded_rock() {
    let started = std::time::Instant::now();
    let base = k8s_node_base();
    let double = double_rock();
    let pause = pause();
    let pause_digest = pause.rsplit_once('@').expect("pinned").1.to_string();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let cache = work.path().join("cache");
    let t = std::time::Instant::now();
    let snaps = k8s_snaps::build_all(&work.path().join("snaps"));
    eprintln!(
        "stand-in snaps built in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        snaps
            .iter()
            .map(|s| format!("{} {} bytes", s.name, s.size))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let snap_entries = k8s_snaps::profile_entries(work.path(), &snaps);
    let body = |role: &str| {
        format!(
            "[system]\nhostname = \"{role}-{{machine-id:6}}\"\nkernel-cmdline = [\"console=ttyS0\"]\n\
             [kubernetes]\ndistribution = \"k8s\"\nrole = \"{role}\"\n\
             [kubernetes.extra-args]\nkubelet = {{ \"--max-pods\" = \"150\" }}\n\
             [[preload]]\nrock = \"{pause}\"\nname = \"ghcr.io/canonical/k8s-snap/pause:3.10\"\n\
             [image]\nformats = [\"raw\"]\n\
             {snap_entries}"
        )
    };
    let cp_profile = write_profile(work.path(), "cp", &base, &[&double], &body("control-plane"));
    let worker_profile = write_profile(work.path(), "worker", &base, &[&double], &body("worker"));
    let out = work.path().join("out");
    build_profile(&cp_profile, &out, &cache);
    build_profile(&worker_profile, &out, &cache);

    // The report lists the effective arguments per role.
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("cp.manifest.json")).expect("report"))
            .expect("json");
    assert_eq!(
        report["kubernetes"]["arguments"]["control-plane"]["kubelet"]["--max-pods"], "150",
        "{}",
        report["kubernetes"]
    );
    assert_eq!(
        report["kubernetes"]["arguments"]["worker"]["kubelet"]["--protect-kernel-defaults"],
        "true"
    );
    // The base's own containerd is masked: the distribution refuses to start beside another one.
    assert!(
        report["system"]["files"]
            .as_array()
            .expect("system.files")
            .iter()
            .any(|f| f["path"] == "/etc/systemd/system/containerd.service" && f["what"] == "mask"),
        "{}",
        report["system"]
    );
    // The three stand-in snaps, in install order, none vouched for by an assertion.
    let reported: Vec<(&str, &str, bool)> = report["snaps"]
        .as_array()
        .expect("snaps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or(""),
                s["revision"].as_str().unwrap_or(""),
                s["asserted"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(
        reported,
        [
            ("snapd", "x1", false),
            ("core22", "x1", false),
            ("k8s", "x1", false)
        ],
        "{}",
        report["snaps"]
    );

    // No token anywhere in the built disk images.
    let instance = work.path().join("worker-instance.toml");
    std::fs::write(
        &instance,
        format!("[kubernetes]\njoin-token = \"{TOKEN}\"\nnode-name = \"worker-1\"\n"),
    )
    .expect("write");
    for disk in ["cp.raw", "worker.raw"] {
        let status = Command::new("grep")
            .args(["-c", "-a", TOKEN])
            .arg(out.join(disk))
            .output()
            .expect("grep");
        assert_eq!(status.status.code(), Some(1), "{disk} holds the token");
    }

    let bound = Duration::from_secs(900);
    let json = |line: &str, prefix: &str| -> Value {
        serde_json::from_str(line.trim_start_matches(prefix).trim())
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };

    // The control plane bootstraps.
    let mut vm = Vm::boot(&out.join("cp.raw"), None);
    let (ready, took) = vm.wait_for("cairn-agent: ready ", bound);
    let ready = json(&ready, "cairn-agent: ready ");
    eprintln!(
        "control plane: QEMU start to `cairn-agent: ready` in {:.1} s; steps: {}",
        took.as_secs_f64(),
        timeline(&ready)
    );
    vm.wait_for_text("k8s-double: images end", bound);
    vm.wait_for_text("k8s-double: snaps end", bound);
    assert!(vm.powerdown(Duration::from_secs(180)), "no ACPI power-off");
    let serial = vm.serial();
    assert!(!serial.contains("cairn-agent: failed"), "{serial}");
    assert_snaps_installed(&serial, &ready);
    assert_eq!(
        steps(&ready, "kubernetes"),
        [
            ("preload".into(), "applied".into()),
            ("hardening".into(), "applied".into()),
            ("config".into(), "applied".into()),
            ("bootstrap".into(), "applied".into()),
            ("images".into(), "unchanged".into()),
            ("ready".into(), "unchanged".into()),
            ("modes".into(), "applied".into()),
        ],
        "{ready}"
    );
    // snapd wrote the kubelet's unit (0644) when it installed the k8s snap: the CIS preset makes it owner-only.
    assert_eq!(
        step(&ready, "modes")["detail"],
        "1 files and folders of the distribution checked, made owner-only: /etc/systemd/system/snap.k8s.kubelet.service",
        "{ready}"
    );
    assert!(
        serial.contains(
            "k8s-double: file /var/lib/cairn/kubernetes/bootstrap.json mode 0600 uid 0 gid 0"
        ),
        "{serial}"
    );
    assert!(
        serial.contains("k8s-double: bootstrap --name control-plane-"),
        "{serial}"
    );
    let config = serial
        .lines()
        .find_map(|l| l.split_once("k8s-double: config ").map(|(_, j)| j.trim()))
        .expect("the double's config line");
    let config: Value = serde_json::from_str(config).expect("config json");
    assert_eq!(
        config["extra-node-kube-apiserver-args"]["--enable-admission-plugins"],
        "NodeRestriction,EventRateLimit"
    );
    assert_eq!(config["extra-node-kubelet-args"]["--max-pods"], "150");
    // The real kernel carries the preset's settings: the double checks them as a hardened kubelet would.
    assert!(
        serial
            .contains("k8s-double: kubelet kernel defaults ok: kernel.keys.root_maxbytes=25000000"),
        "{serial}"
    );
    // The distribution's containerd (the k8s snap's own service, started as k8sd starts it; not the base's masked
    // one) imported the archive in the background: the name, the pinned index digest.
    assert!(
        serial.contains("k8s-double: the k8s snap, revision x1"),
        "{serial}"
    );
    assert!(
        serial.contains("k8s-double: snap start --enable k8s.containerd k8s.kubelet"),
        "{serial}"
    );
    assert!(
        serial.contains("k8s-double: containerd answers on /run/containerd/containerd.sock"),
        "{serial}"
    );
    assert!(
        serial.contains("k8s-double: side-load done: 1 of 1 imported"),
        "{serial}"
    );
    assert!(
        listed_by_containerd(&serial, &pause_digest),
        "containerd does not list the pinned image:\n{serial}"
    );
    assert!(
        serial.contains("k8s-double: local-node-status member (control-plane)"),
        "{serial}"
    );

    // The worker joins with the token from fw_cfg; the token never reaches the console from cairn.
    let mut vm = Vm::boot(&out.join("worker.raw"), Some(&instance));
    let (ready, took) = vm.wait_for("cairn-agent: ready ", bound);
    let ready = json(&ready, "cairn-agent: ready ");
    eprintln!(
        "worker: QEMU start to `cairn-agent: ready` in {:.1} s; steps: {}",
        took.as_secs_f64(),
        timeline(&ready)
    );
    vm.wait_for_text("k8s-double: images end", bound);
    vm.wait_for_text("k8s-double: snaps end", bound);
    assert!(vm.powerdown(Duration::from_secs(180)), "no ACPI power-off");
    let serial = vm.serial();
    assert!(!serial.contains("cairn-agent: failed"), "{serial}");
    assert_snaps_installed(&serial, &ready);
    assert!(!serial.contains(TOKEN), "the token reached the console");
    let sha = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    assert!(
        serial.contains(&format!(
            "k8s-double: join-cluster token-sha256={sha} --name worker-1 --address "
        )),
        "{serial}"
    );
    assert!(serial.contains("k8s-double: joined worker"), "{serial}");
    assert!(
        serial
            .contains("k8s-double: file /var/lib/cairn/kubernetes/join.json mode 0600 uid 0 gid 0"),
        "{serial}"
    );
    // Ready as a worker can see it: a member with a healthy kubelet, never `k8s status` (refused on a worker).
    assert_never_called_status(
        &serial
            .lines()
            .map(|l| {
                l.split_once("k8s-double: ")
                    .map_or(l.to_string(), |(_, r)| format!("k8s-double: {r}"))
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        serial.contains("k8s-double: local-node-status member (worker)"),
        "{serial}"
    );
    assert!(
        serial.contains("k8s-double: kubelet healthz on 127.0.0.1:10248"),
        "{serial}"
    );
    // Named worker-1 on a host named worker-<machine id>: --hostname-override is the distribution's to set.
    let worker_config = serial
        .lines()
        .find_map(|l| l.split_once("k8s-double: config ").map(|(_, j)| j.trim()))
        .expect("the double's config line");
    assert!(
        !worker_config.contains("--hostname-override"),
        "{worker_config}"
    );
    assert!(
        listed_by_containerd(&serial, &pause_digest),
        "containerd does not list the pinned image:\n{serial}"
    );
    // Nothing of the token reached the disk either: not the journal, not /var/lib/cairn.
    let found = Command::new("grep")
        .args(["-c", "-a", TOKEN])
        .arg(out.join("worker.raw"))
        .output()
        .expect("grep");
    assert_eq!(
        found.status.code(),
        Some(1),
        "the booted worker's disk holds the token"
    );
    eprintln!(
        "the boot test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The lines the test rock's snaps unit printed between its two marker lines, without their `ident[pid]: `.
fn snaps_block(serial: &str) -> Vec<String> {
    serial
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("k8s-double: snaps"))
        .skip(1)
        .take_while(|l| !l.trim_end().ends_with("k8s-double: snaps end"))
        .filter_map(|l| {
            ["snap[", "systemctl["]
                .iter()
                .find_map(|ident| l.split_once(ident))
                .and_then(|(_, rest)| rest.split_once("]: "))
                .map(|(_, text)| text.trim_end().to_string())
        })
        .collect()
}

/// The properties `systemctl show` printed for `unit` in the snaps unit's block.
fn unit_properties(block: &[String], unit: &str) -> Vec<(String, String)> {
    let mut props: Vec<Vec<(String, String)>> = Vec::new();
    for line in block {
        if let Some((k, v)) = line.split_once('=') {
            if k == "Id" || props.is_empty() {
                props.push(Vec::new());
            }
            if let Some(last) = props.last_mut() {
                last.push((k.to_string(), v.to_string()));
            }
        }
    }
    props
        .into_iter()
        .find(|p| p.iter().any(|(k, v)| k == "Id" && v == unit))
        .unwrap_or_else(|| panic!("systemctl show printed nothing for {unit}: {block:?}"))
}

/// What the snaps phase did at first boot, as the node's line, the phase's own console line and the test rock's
/// snaps unit show it: snapd seeded, nothing to acknowledge (unasserted stand-ins), the three snaps installed in
/// order by the real snapd; `snap list` shows them at their local revision; the k8s snap's containerd and kubelet
/// run, Debian's containerd is masked and never started.
fn assert_snaps_installed(serial: &str, ready: &Value) {
    assert_eq!(
        steps(ready, "snaps"),
        [
            ("seeded".into(), "unchanged".into()),
            ("ack".into(), "unchanged".into()),
            ("install".into(), "applied".into()),
        ],
        "{ready}"
    );
    assert_eq!(step(ready, "ack")["detail"], "no assertions", "{ready}");
    assert_eq!(
        step(ready, "install")["detail"],
        "installed snapd x1, core22 x1, k8s x1",
        "{ready}"
    );
    let phase = serial
        .lines()
        .find_map(|l| {
            l.split_once("cairn-agent: snaps ready ")
                .map(|(_, j)| j.trim())
        })
        .unwrap_or_else(|| panic!("no `cairn-agent: snaps ready` line:\n{serial}"));
    let phase: Value = serde_json::from_str(phase).expect("snaps phase json");
    assert_eq!(steps(&phase, "snaps"), steps(ready, "snaps"), "{phase}");
    let block = snaps_block(serial);
    let listed: Vec<Vec<&str>> = block
        .iter()
        .map(|l| l.split_whitespace().collect())
        .filter(|cells: &Vec<&str>| cells.len() >= 3 && !cells[0].contains('='))
        .collect();
    assert_eq!(
        listed.first().map(|h| h[..3].to_vec()),
        Some(vec!["Name", "Version", "Rev"]),
        "{block:?}"
    );
    for (name, version) in [
        ("core22", "stand-in"),
        ("k8s", k8s_double::SNAP_VERSION),
        ("snapd", ""),
    ] {
        let row = listed
            .iter()
            .find(|cells| cells[0] == name)
            .unwrap_or_else(|| panic!("`snap list` does not show {name}: {block:?}"));
        assert_eq!(row[2], "x1", "{name}: {block:?}");
        if !version.is_empty() {
            assert_eq!(row[1], version, "{name}: {block:?}");
        }
    }
    let debian = unit_properties(&block, "containerd.service");
    for (k, v) in [
        ("LoadState", "masked"),
        ("ActiveState", "inactive"),
        ("InvocationID", ""),
    ] {
        assert!(
            debian.contains(&(k.to_string(), v.to_string())),
            "Debian's containerd.service: {k} is not {v:?}: {debian:?}"
        );
    }
    for unit in ["snap.k8s.containerd.service", "snap.k8s.kubelet.service"] {
        let props = unit_properties(&block, unit);
        assert!(
            props.contains(&("ActiveState".to_string(), "active".to_string())),
            "{unit}: {props:?}"
        );
    }
}

/// Whether `ctr -n k8s.io images ls`, as the test rock's unit prints it between its two marker lines, lists the
/// preloaded image by its name with the pinned digest.
fn listed_by_containerd(serial: &str, digest: &str) -> bool {
    serial
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("k8s-double: images"))
        .take_while(|l| !l.trim_end().ends_with("k8s-double: images end"))
        .any(|l| {
            l.contains("ctr[")
                && l.contains(" ghcr.io/canonical/k8s-snap/pause:3.10 ")
                && l.contains(digest)
        })
}

/// `name ms, ...` of the node's steps, for the log and the README's timeline.
fn timeline(status: &Value) -> String {
    status["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    format!(
                        "{}/{} {} ms",
                        s["phase"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or(""),
                        s["ms"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
