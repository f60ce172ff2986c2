//! The `k8s` test double (tests/k8s-double) on the host: its command line, its strict reading of bootstrap and
//! join files, its console report and its cluster state. Console, state and side-load folders live in a tempdir
//! (`K8S_DOUBLE_CONSOLE`, `K8S_DOUBLE_STATE_DIR`, `K8S_DOUBLE_SIDELOAD_DIR`, `K8S_DOUBLE_CONTAINERD_DIR`), the
//! services are detached processes (`K8S_DOUBLE_SERVICES=process`) and the kubelet stand-in is off unless a test
//! gives it a port. Only the background import test runs a containerd (a throwaway one). Needs the static build:
//! `cargo build --release -p cairn-k8s-double --target x86_64-unknown-linux-musl`.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use cairn_e2e::cairn::run_with_timeout;
use cairn_e2e::cairn::stderr;
use cairn_e2e::image::EntryKind;
use cairn_e2e::k8s_double::{self, KERNEL_DEFAULTS, double_bin};
use sha2::{Digest, Sha256};

/// One node's worth of double state, in a tempdir.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("images")).expect("side-load dir");
        let node = Node { dir };
        for (key, value) in KERNEL_DEFAULTS {
            node.set_sysctl(key, value);
        }
        node
    }

    /// Sets a kernel setting in the folder standing for `/proc/sys` (`K8S_DOUBLE_PROC_SYS`).
    fn set_sysctl(&self, key: &str, value: &str) {
        let path = self.path("proc-sys").join(key.replace('.', "/"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("{value}\n")).expect("write sysctl");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn console_path(&self) -> PathBuf {
        self.path("console")
    }

    fn state_file(&self) -> PathBuf {
        self.path("state/state.json")
    }

    /// Writes a config file the way cairn's agent does: mode 0600.
    fn config(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create the config");
        f.write_all(text.as_bytes()).expect("write the config");
        path.to_str().expect("utf-8 tempdir").to_string()
    }

    /// The folder whose existence tells the double another containerd runs (`K8S_DOUBLE_CONTAINERD_DIR`).
    fn containerd_dir(&self) -> PathBuf {
        self.path("run-containerd")
    }

    /// Runs the double; returns its output and the console lines it wrote.
    fn run(&self, args: &[&str]) -> (Output, Vec<String>) {
        self.run_env(args, &[])
    }

    /// [`Node::run`] with more environment (which overrides the harness's).
    fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> (Output, Vec<String>) {
        let before = std::fs::read_to_string(self.console_path()).unwrap_or_default();
        let console = self.console_path();
        let state = self.path("state");
        let images = self.path("images");
        let proc_sys = self.path("proc-sys");
        let containerd = self.containerd_dir();
        let socket = self.path("no-containerd.sock");
        let mut env = vec![
            ("K8S_DOUBLE_PROC_SYS", proc_sys.to_str().expect("utf-8")),
            ("K8S_DOUBLE_CONSOLE", console.to_str().expect("utf-8")),
            ("K8S_DOUBLE_STATE_DIR", state.to_str().expect("utf-8")),
            ("K8S_DOUBLE_SIDELOAD_DIR", images.to_str().expect("utf-8")),
            (
                "K8S_DOUBLE_CONTAINERD_DIR",
                containerd.to_str().expect("utf-8"),
            ),
            (
                "K8S_DOUBLE_CONTAINERD_SOCKET",
                socket.to_str().expect("utf-8"),
            ),
            ("K8S_DOUBLE_SERVICES", "process"),
            ("K8S_DOUBLE_KUBELET_HEALTHZ", "none"),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, v));
        }
        let out = run_with_timeout(&double_bin(), args, &env, Duration::from_secs(30));
        let after = std::fs::read_to_string(self.console_path()).unwrap_or_default();
        let lines = after[before.len()..].lines().map(str::to_string).collect();
        (out, lines)
    }

    fn file_line(&self, file: &str) -> String {
        let m = std::fs::metadata(file).expect("stat the config");
        format!(
            "k8s-double: file {file} mode 0600 uid {} gid {}",
            m.uid(),
            m.gid()
        )
    }

    /// What a bootstrap or join prints once accepted, before its last line: the services (none on the host),
    /// then that no archive waits.
    fn started_lines(&self) -> [String; 2] {
        [
            "k8s-double: services: no containerd started (K8S_DOUBLE_SERVICES=process)".to_string(),
            self.sideload_line(),
        ]
    }

    fn sideload_line(&self) -> String {
        format!(
            "k8s-double: side-load {}: no archives",
            self.path("images").display()
        )
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

const BOOTSTRAP: &str = r#"{
  "cluster-config": {
    "network": {"enabled": true},
    "dns": {"enabled": true, "cluster-domain": "cluster.local", "upstream-nameservers": ["10.0.2.3"]},
    "local-storage": {"enabled": true, "reclaim-policy": "Delete"},
    "ingress": {"enabled": false},
    "annotations": {"k8sd/v1alpha/lifecycle/skip-cleanup-kubernetes-node-on-remove": "true"}
  },
  "pod-cidr": "10.1.0.0/16",
  "service-cidr": "10.152.183.0/24",
  "disable-rbac": false,
  "secure-port": 6443,
  "extra-sans": ["node-a.example"],
  "datastore-type": "etcd",
  "extra-node-config-files": {"admission.yaml": "apiVersion: apiserver.config.k8s.io/v1\n"},
  "extra-node-kube-apiserver-args": {"--admission-control-config-file": "/var/snap/k8s/common/args/conf.d/admission.yaml", "--profiling": null},
  "extra-node-kubelet-args": {"--protect-kernel-defaults": "true"}
}"#;

/// [`BOOTSTRAP`] as one line of compact JSON with sorted keys.
const BOOTSTRAP_LINE: &str = concat!(
    r#"{"cluster-config":{"annotations":{"k8sd/v1alpha/lifecycle/skip-cleanup-kubernetes-node-on-remove":"true"},"#,
    r#""dns":{"cluster-domain":"cluster.local","enabled":true,"upstream-nameservers":["10.0.2.3"]},"#,
    r#""ingress":{"enabled":false},"local-storage":{"enabled":true,"reclaim-policy":"Delete"},"#,
    r#""network":{"enabled":true}},"datastore-type":"etcd","disable-rbac":false,"extra-node-config-files":"#,
    r#"{"admission.yaml":"apiVersion: apiserver.config.k8s.io/v1\n"},"extra-node-kube-apiserver-args":"#,
    r#"{"--admission-control-config-file":"/var/snap/k8s/common/args/conf.d/admission.yaml","--profiling":null},"#,
    r#""extra-node-kubelet-args":{"--protect-kernel-defaults":"true"},"extra-sans":["node-a.example"],"#,
    r#""pod-cidr":"10.1.0.0/16","secure-port":6443,"service-cidr":"10.152.183.0/24"}"#,
);

/// `k8s status` on a worker (k8sd pkg/k8sd/api/worker_access_handler.go, through cmd/k8s/k8s_status.go).
const WORKER_STATUS_REFUSED: &str = "Error: Failed to retrieve the cluster status.\n\nThe error was: wait check \
                                     failed: failed after potential retry: wait check failed: failed to GET \
                                     /k8sd/cluster: this action is restricted on workers\n";

const NOT_IN_CLUSTER: &str = "Error: The node is not part of a Kubernetes cluster. You can bootstrap a new \
                              cluster with:\n\n  sudo k8s bootstrap\n";

fn bootstrap(node: &Node, file: &str) -> (Output, Vec<String>) {
    node.run(&[
        "bootstrap",
        "--name",
        "node-a",
        "--address",
        "10.0.2.15",
        "--file",
        file,
    ])
}

#[test]
fn bootstrap_then_status_and_a_second_bootstrap_is_refused() {
    let node = Node::new();

    let (o, console) = node.run(&["status", "--wait-ready", "--timeout", "5m"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), NOT_IN_CLUSTER);
    assert_eq!(stdout(&o), "");
    assert_eq!(
        console,
        [
            "k8s-double: status --wait-ready --timeout 5m",
            "k8s-double: error: status: the node is not part of a cluster",
        ]
    );

    let file = node.config("bootstrap.json", BOOTSTRAP);
    let (o, console) = bootstrap(&node, &file);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "Bootstrapped a new Kubernetes cluster with node address \"10.0.2.15:6400\".\n\
         The node will be 'Ready' to host workloads after the CNI is deployed successfully.\n"
    );
    assert_eq!(
        stderr(&o),
        "Bootstrapping the cluster. This may take a few seconds, please wait.\n"
    );
    assert_eq!(
        console,
        [
            format!("k8s-double: bootstrap --name node-a --address 10.0.2.15 --file {file}"),
            node.file_line(&file),
            format!("k8s-double: config {BOOTSTRAP_LINE}"),
            node.started_lines()[0].clone(),
            node.started_lines()[1].clone(),
            "k8s-double: bootstrapped".to_string(),
        ]
    );
    assert!(node.state_file().is_file());

    let (o, console) = node.run(&["status", "--wait-ready", "--timeout=5m"]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "cluster status:           ready\n\
         control plane nodes:      10.0.2.15:6400 (voter)\n\
         high availability:        no\n\
         datastore:                etcd\n\
         network:                  enabled\n\
         dns:                      enabled\n\
         ingress:                  disabled\n\
         load-balancer:            disabled\n\
         local-storage:            enabled\n\
         gateway:                  enabled\n"
    );
    assert_eq!(stderr(&o), "");
    assert_eq!(
        console,
        [
            "k8s-double: status --wait-ready --timeout 5m",
            "k8s-double: kubelet kernel defaults ok: kernel.keys.root_maxbytes=25000000 \
             kernel.keys.root_maxkeys=1000000 kernel.panic=10 kernel.panic_on_oops=1 vm.overcommit_memory=1 \
             vm.panic_on_oom=0",
            "k8s-double: status ready (bootstrap)",
        ]
    );

    // A kubelet with --protect-kernel-defaults refuses to start on other kernel settings: never ready.
    node.set_sysctl("kernel.panic", "0");
    let (o, _) = node.run(&["status", "--wait-ready"]);
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o),
        "Error: The node is not ready: kubelet refuses to start: --protect-kernel-defaults: kernel.panic is 0, want 10\n"
    );
    node.set_sysctl("kernel.panic", "10");

    let state_before = std::fs::read(node.state_file()).expect("state");
    let (o, console) = bootstrap(&node, &file);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: The node is already part of a cluster\n");
    assert_eq!(stdout(&o), "");
    assert_eq!(
        console,
        [
            format!("k8s-double: bootstrap --name node-a --address 10.0.2.15 --file {file}"),
            "k8s-double: error: The node is already part of a cluster".to_string(),
        ]
    );
    assert_eq!(
        std::fs::read(node.state_file()).expect("state"),
        state_before
    );
    // A join after the bootstrap is refused alike.
    let (o, _) = node.run(&[
        "join-cluster",
        "tok",
        "--name",
        "node-a",
        "--address",
        "10.0.2.15",
        "--file",
        &file,
    ]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: The node is already part of a cluster\n");
}

fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[test]
fn worker_join_prints_the_token_digest_only() {
    let node = Node::new();
    let token =
        "eyJ0b2tlbiI6IndvcmtlcjpzM2NyZXQiLCJqb2luX2FkZHJlc3NlcyI6WyIxMC4wLjIuMTU6NjQwMCJdfQ==";
    let file = node.config(
        "join.json",
        r#"{"extra-node-kubelet-args": {"--protect-kernel-defaults": "true"}, "extra-node-k8s-apiserver-proxy-args": {}, "disable-system-tuning": false}"#,
    );
    let (o, console) = node.run(&[
        "join-cluster",
        token,
        "--name=node-w",
        "--address=10.0.2.16",
        "--file",
        &file,
        "--output-format",
        "json",
    ]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "{\"name\":\"node-w\"}\n");
    assert_eq!(
        stderr(&o),
        "Joining the cluster. This may take a few seconds, please wait.\n"
    );
    assert_eq!(
        console,
        [
            format!(
                "k8s-double: join-cluster token-sha256={} --name node-w --address 10.0.2.16 --file {file} \
                 --output-format json",
                token_sha256(token)
            ),
            node.file_line(&file),
            r#"k8s-double: config {"disable-system-tuning":false,"extra-node-k8s-apiserver-proxy-args":{},"extra-node-kubelet-args":{"--protect-kernel-defaults":"true"}}"#.to_string(),
            "k8s-double: join kind worker".to_string(),
            node.started_lines()[0].clone(),
            node.started_lines()[1].clone(),
            "k8s-double: joined worker".to_string(),
        ]
    );
    let all = std::fs::read_to_string(node.console_path()).expect("console");
    assert!(
        !all.contains(token),
        "the token reached the console:\n{all}"
    );
    // The cluster status is a control plane's: k8sd refuses it on a worker (restrictWorkers).
    let (o, console) = node.run(&["status", "--wait-ready"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), WORKER_STATUS_REFUSED);
    assert_eq!(stdout(&o), "");
    assert_eq!(
        console.last().map(String::as_str),
        Some("k8s-double: error: status: this action is restricted on workers")
    );
}

#[test]
fn control_plane_join_is_told_by_its_keys() {
    let node = Node::new();
    let file = node.config(
        "join.json",
        r#"{"extra-sans": ["node-b.example"], "extra-node-kube-apiserver-args": {"--profiling": "false"}, "extra-node-etcd-args": {"--client-cert-auth": "true"}}"#,
    );
    let (o, console) = node.run(&[
        "join-cluster",
        "cp-token",
        "--name",
        "node-b",
        "--address",
        "10.0.2.17",
        "--file",
        &file,
    ]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "Cluster services have started on \"node-b\".\n\
         Please allow some time for initial Kubernetes node registration.\n"
    );
    assert_eq!(
        console[3..],
        [
            "k8s-double: join kind control-plane".to_string(),
            node.started_lines()[0].clone(),
            node.started_lines()[1].clone(),
            "k8s-double: joined control-plane".to_string(),
        ]
    );
    let (o, _) = node.run(&["status", "--wait-ready", "--output-format=yaml"]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o)
            .starts_with("ready: true\nrole: \"control-plane\"\naddress: \"10.0.2.17:6400\"\n"),
        "{}",
        stdout(&o)
    );
}

/// A bootstrap file that must be refused with `problem` at its key path; nothing joins the cluster.
fn assert_bootstrap_refused(text: &str, problem: &str) {
    let node = Node::new();
    let file = node.config("bootstrap.json", text);
    let (o, console) = bootstrap(&node, &file);
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o),
        format!(
            "Error: Failed to read bootstrap configuration from \"{file}\".\n\nThe error was: {problem}\n"
        )
    );
    assert_eq!(stdout(&o), "");
    assert_eq!(
        console,
        [
            format!("k8s-double: bootstrap --name node-a --address 10.0.2.15 --file {file}"),
            node.file_line(&file),
            format!("k8s-double: error: config refused: {problem}"),
        ]
    );
    assert!(!node.state_file().exists());
    let (o, _) = node.run(&["status", "--wait-ready"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), NOT_IN_CLUSTER);
}

#[test]
fn unknown_top_level_key_is_refused() {
    assert_bootstrap_refused(
        r#"{"pod-cidr": "10.1.0.0/16", "compliance-profile": "default"}"#,
        "compliance-profile: unknown key",
    );
}

#[test]
fn unknown_nested_key_is_refused() {
    assert_bootstrap_refused(
        r#"{"cluster-config": {"dns": {"enabled": true, "foo": 1}}}"#,
        "cluster-config.dns.foo: unknown key",
    );
}

#[test]
fn wrong_types_are_refused() {
    assert_bootstrap_refused(
        r#"{"secure-port": "6443"}"#,
        "secure-port: expected an integer, got a string",
    );
    assert_bootstrap_refused(
        r#"{"cluster-config": {"load-balancer": {"cidrs": "10.0.0.0/24"}}}"#,
        "cluster-config.load-balancer.cidrs: expected a list of strings, got a string",
    );
    assert_bootstrap_refused(
        r#"{"extra-node-kubelet-args": {"--v": 2}}"#,
        "extra-node-kubelet-args.--v: expected a string or null, got a number",
    );
    assert_bootstrap_refused(
        r#"{"extra-node-kubelet-args": {"v": "2"}}"#,
        "extra-node-kubelet-args.v: a flag must start with --",
    );
}

#[test]
fn disable_rbac_true_is_refused() {
    assert_bootstrap_refused(
        r#"{"disable-rbac": true}"#,
        "disable-rbac: true is refused: cairn never disables RBAC",
    );
}

#[test]
fn a_join_file_of_neither_kind_is_refused() {
    let node = Node::new();
    let file = node.config(
        "join.json",
        r#"{"extra-node-k8s-apiserver-proxy-args": {}, "extra-node-kube-apiserver-args": {}}"#,
    );
    let (o, console) = node.run(&[
        "join-cluster",
        "t",
        "--name",
        "node-c",
        "--address",
        "10.0.2.18",
        "--file",
        &file,
    ]);
    assert_exit(&o, 1);
    let problem = "extra-node-k8s-apiserver-proxy-args: a worker-only key beside the control-plane-only key \
                   extra-node-kube-apiserver-args: neither join kind";
    assert_eq!(
        stderr(&o),
        format!(
            "Error: Failed to join the cluster using the provided token.\n\nThe error was: {problem}\n"
        )
    );
    assert_eq!(
        console.last().cloned(),
        Some(format!("k8s-double: error: config refused: {problem}"))
    );
    assert!(!node.state_file().exists());
}

#[test]
fn unknown_flag_is_refused() {
    let node = Node::new();
    let file = node.config("bootstrap.json", BOOTSTRAP);
    let (o, console) = node.run(&[
        "bootstrap",
        "--name",
        "node-a",
        "--address",
        "10.0.2.15",
        "--file",
        &file,
        "--config",
        &file,
    ]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: unknown flag: --config\n");
    assert_eq!(stdout(&o), "");
    assert_eq!(console, ["k8s-double: error: unknown flag: --config"]);
    assert!(!node.state_file().exists());

    let (o, _) = node.run(&["get-join-token", "node-b"]);
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o),
        "Error: unknown command \"get-join-token\" for \"k8s\"\n"
    );
    let (o, _) = node.run(&["status", "--wait-ready", "now"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: accepts 0 arg(s), received 1\n");
}

#[test]
fn missing_file_flag_is_refused() {
    let node = Node::new();
    let (o, console) = node.run(&["bootstrap", "--name", "node-a", "--address", "10.0.2.15"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: required flag(s) \"file\" not set\n");
    assert_eq!(
        console,
        ["k8s-double: error: required flag(s) \"file\" not set"]
    );
    let (o, _) = node.run(&[
        "join-cluster",
        "t",
        "--name",
        "node-a",
        "--address",
        "10.0.2.15",
        "--file",
    ]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: flag needs an argument: --file\n");
    assert!(!node.state_file().exists());
}

#[test]
fn a_missing_config_file_is_reported_like_the_real_cli() {
    let node = Node::new();
    let file = node.path("absent.json");
    let file = file.to_str().expect("utf-8");
    let (o, _) = bootstrap(&node, file);
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o),
        format!(
            "Error: Failed to read bootstrap configuration from \"{file}\".\n\nThe error was: failed to read \
             file: No such file or directory (os error 2)\n"
        )
    );
}

#[test]
fn the_test_rock_carries_its_console_units() {
    let layer = k8s_double::layer();
    let find = |path: &str| {
        layer
            .entries()
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} is not in the rock"))
    };
    // The double is the k8s snap's now: the rock carries no k8s command.
    assert!(
        !layer.entries().iter().any(|e| e.path.ends_with("bin/k8s")),
        "the rock carries a k8s command"
    );
    let unit_text = |name: &str| {
        let unit = find(&format!("usr/lib/systemd/system/{name}"));
        assert_eq!(unit.mode, 0o644);
        let EntryKind::File(text) = &unit.kind else {
            panic!("{name} is not a file");
        };
        assert_eq!(
            find(&format!(
                "usr/lib/systemd/system/multi-user.target.wants/{name}"
            ))
            .kind,
            EntryKind::Symlink(format!("../{name}"))
        );
        String::from_utf8(text.clone()).expect("utf-8 unit")
    };
    let text = unit_text("k8s-double-images.service");
    for line in [
        "After=cairn-kubernetes.service",
        "Type=oneshot",
        "ExecStartPre=/bin/echo \"k8s-double: images\"",
        "ExecStart=/usr/bin/ctr -n k8s.io images ls",
        "StandardOutput=journal+console",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let text = unit_text("k8s-double-snaps.service");
    for line in [
        "After=cairn-kubernetes.service",
        "Type=oneshot",
        "ExecStartPre=/bin/echo \"k8s-double: snaps\"",
        "ExecStart=/usr/bin/snap list --unicode=never",
        "ExecStartPost=/bin/echo \"k8s-double: snaps end\"",
        "StandardOutput=journal+console",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

/// The double packaged as the k8s snap: a real squashfs whose snap.yaml follows the real snap's, the double at
/// bin/k8s (so /snap/bin/k8s runs it), and a command file for each app.
#[test]
fn the_k8s_snap_carries_the_double_as_its_k8s_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let built = k8s_double::snap().build(dir.path());
    let cat = |path: &str| {
        let o = std::process::Command::new("unsquashfs")
            .args(["-no-progress", "-cat"])
            .arg(&built.path)
            .arg(path)
            .output()
            .expect("unsquashfs");
        assert!(
            o.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    assert_eq!(
        cat("bin/k8s"),
        std::fs::read(double_bin()).expect("read the double")
    );
    let yaml = String::from_utf8(cat("meta/snap.yaml")).expect("utf-8");
    let meta = cairn::snaps::meta::parse(yaml.as_bytes()).expect("snap.yaml parses");
    assert_eq!(meta.name, "k8s");
    assert_eq!(meta.base.as_deref(), Some("core22"));
    assert_eq!(meta.confinement, cairn::snaps::meta::Confinement::Classic);
    for line in [
        "  k8s:\n    command: bin/k8s\n",
        "  containerd:\n    command: bin/containerd\n    daemon: notify\n    install-mode: disable\n",
        "  k8sd:\n    command: bin/k8sd\n    install-mode: enable\n    daemon: simple\n",
        "  kubelet:\n    install-mode: disable\n    command: bin/kubelet\n    daemon: simple\n    after: [containerd]\n",
    ] {
        assert!(yaml.contains(line), "{line:?} missing:\n{yaml}");
    }
    // Every app's command is in the snap, executable.
    let listing = std::process::Command::new("unsquashfs")
        .args(["-lls", "-no-progress"])
        .arg(&built.path)
        .output()
        .expect("unsquashfs -lls");
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    for command in yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("command: "))
    {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x")
                    && l.ends_with(&format!("squashfs-root/{command}"))),
            "{command} is not an executable of the snap:\n{listing}"
        );
    }
}

#[test]
fn the_test_rock_pushes_by_digest() {
    let registry = cairn_e2e::registry::shared();
    let reference = k8s_double::push(registry);
    let image = k8s_double::image();
    assert_eq!(
        reference,
        format!(
            "{}/e2e/k8s-double:v1@{}",
            registry.addr(),
            image.manifest_digest
        )
    );
    let client = cairn_e2e::Client::for_registry(registry);
    let blob = client
        .get_blob("e2e/k8s-double", &image.layers[0].digest)
        .expect("the layer is in the registry");
    assert_eq!(blob, image.layers[0].blob);
}

fn join_worker(node: &Node, extra: &[(&str, &str)]) -> (Output, Vec<String>) {
    let file = node.config(
        "join.json",
        r#"{"extra-node-kubelet-args": {"--protect-kernel-defaults": "true"}}"#,
    );
    node.run_env(
        &[
            "join-cluster",
            "tok",
            "--name",
            "node-w",
            "--address",
            "10.0.2.16",
            "--file",
            &file,
        ],
        extra,
    )
}

#[test]
fn local_node_status_answers_on_every_role_and_refuses_a_non_member() {
    let node = Node::new();
    let (o, console) = node.run(&["local-node-status"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), NOT_IN_CLUSTER);
    assert_eq!(
        console,
        [
            "k8s-double: local-node-status",
            "k8s-double: error: local-node-status: the node is not part of a cluster",
        ]
    );
    // The real command has no --timeout.
    let (o, _) = node.run(&["local-node-status", "--timeout", "5s"]);
    assert_exit(&o, 1);
    assert_eq!(stderr(&o), "Error: unknown flag: --timeout\n");

    let file = node.config("bootstrap.json", BOOTSTRAP);
    assert_exit(&bootstrap(&node, &file).0, 0);
    let (o, console) = node.run(&["local-node-status"]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "{node-a 10.0.2.15:6400 control-plane voter}\n");
    assert_eq!(
        console.last().map(String::as_str),
        Some("k8s-double: local-node-status member (control-plane)")
    );
    let (o, _) = node.run(&["local-node-status", "--output-format", "json"]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "{\n  \"name\": \"node-a\",\n  \"address\": \"10.0.2.15:6400\",\n  \"cluster-role\": \"control-plane\",\n  \
         \"datastore-role\": \"voter\"\n}\n"
    );

    let worker = Node::new();
    assert_exit(&join_worker(&worker, &[]).0, 0);
    let (o, _) = worker.run(&["local-node-status"]);
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "{node-w 10.0.2.16 worker }\n");
    let (o, _) = worker.run(&["local-node-status", "--output-format=json"]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "{\n  \"name\": \"node-w\",\n  \"address\": \"10.0.2.16\",\n  \"cluster-role\": \"worker\"\n}\n"
    );
    let (o, _) = worker.run(&["local-node-status", "--output-format=yaml"]);
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o),
        "name: node-w\naddress: 10.0.2.16\ncluster-role: worker\n"
    );
}

#[test]
fn bootstrap_and_join_are_refused_while_the_containerd_folder_exists() {
    let node = Node::new();
    std::fs::create_dir(node.containerd_dir()).expect("mkdir");
    let d = node.containerd_dir().display().to_string();
    let why = format!(
        "pre-init checks failed for node: The path '{d}' required for the containerd socket already exists, \
         meaning there is likely another service running containerd on this node, which will conflict with \
         kubernetes. Please stop any other running containerd service and remove the existing directory at '{d}' \
         before bootstrapping or joining a cluster.\nDev-only: You can change the k8s containerd install path using \
         --containerd-base-dir. Note that you may have to update the containerd configs of any operators on this \
         node as well.\n"
    );
    let file = node.config("bootstrap.json", BOOTSTRAP);
    let (o, console) = bootstrap(&node, &file);
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o),
        format!("Bootstrap config verification failed: {why}")
    );
    assert_eq!(stdout(&o), "");
    assert_eq!(
        console.last().cloned(),
        Some(format!(
            "k8s-double: error: pre-init check: {d} exists: another containerd runs on this node"
        ))
    );
    assert!(!node.state_file().exists());
    let (o, _) = join_worker(&node, &[]);
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o),
        format!("Join cluster config verification failed: {why}")
    );
    assert!(!node.state_file().exists());

    // Gone, the bootstrap goes through; the distribution's containerd then holds the folder.
    std::fs::remove_dir(node.containerd_dir()).expect("rmdir");
    assert_exit(&bootstrap(&node, &file).0, 0);
    assert!(node.containerd_dir().is_dir());
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn healthz(port: u16) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.body_mut().read_to_string().unwrap_or_default()))
}

#[test]
fn the_kubelet_stand_in_answers_once_its_kernel_settings_hold_and_stops_with_the_node() {
    let node = Node::new();
    node.set_sysctl("vm.panic_on_oom", "1");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (o, console) = join_worker(&node, &[("K8S_DOUBLE_KUBELET_HEALTHZ", &addr)]);
    assert_exit(&o, 0);
    assert!(
        console.contains(&format!(
            "k8s-double: kubelet stand-in started in the background (healthz on {addr})"
        )),
        "{console:?}"
    );
    // A hardened kubelet refuses to start on other kernel settings: nothing listens.
    let wait_console = |text: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all = std::fs::read_to_string(node.console_path()).unwrap_or_default();
            if all.contains(text) {
                return;
            }
            assert!(std::time::Instant::now() < until, "no {text:?} in:\n{all}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_console(
        "k8s-double: kubelet refuses to start: --protect-kernel-defaults: vm.panic_on_oom is 1, want 0",
    );
    assert_eq!(healthz(port), None);
    node.set_sysctl("vm.panic_on_oom", "0");
    wait_console(&format!("k8s-double: kubelet healthz on {addr}"));
    assert_eq!(healthz(port), Some((200, "ok".to_string())));
    // The node's state gone, the stand-in stops.
    std::fs::remove_file(node.state_file()).expect("rm state");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while healthz(port).is_some() {
        assert!(
            std::time::Instant::now() < until,
            "the stand-in still answers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_background_import_lands_after_the_join_returns() {
    if let Err(why) = cairn_e2e::containerd::available() {
        println!("skipped: {why}");
        return;
    }
    let containerd = cairn_e2e::containerd::Containerd::start();
    let node = Node::new();
    let name = "ghcr.io/canonical/k8s-snap/pause:3.10";
    let archive = node.path("images/pause.tar");
    std::fs::write(
        &archive,
        cairn_e2e::containerd::named_archive(&cairn_e2e::rocks::pause_layout(), name),
    )
    .expect("write the archive");
    let socket = containerd.socket();
    let env = [
        (
            "K8S_DOUBLE_CONTAINERD_SOCKET",
            socket.to_str().expect("utf-8"),
        ),
        ("K8S_DOUBLE_SIDELOAD_DELAY", "2s"),
    ];
    let started = std::time::Instant::now();
    let (o, console) = join_worker(&node, &env);
    assert_exit(&o, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the join waited"
    );
    assert_eq!(
        console[console.len() - 2..],
        [
            format!(
                "k8s-double: side-load {}: 1 archive(s), imported in the background in 2s",
                node.path("images").display()
            ),
            "k8s-double: joined worker".to_string(),
        ]
    );
    // Right after the join: not imported yet.
    assert!(archive.is_file());
    assert!(!containerd.image_names().iter().any(|n| n == name));
    let loaded = node.path("images/pause.tar.loaded");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !loaded.is_file() {
        assert!(
            std::time::Instant::now() < until,
            "not imported:\n{}",
            std::fs::read_to_string(node.console_path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(containerd.image_names().iter().any(|n| n == name));
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = std::fs::read_to_string(node.console_path()).unwrap_or_default();
        let after: Vec<&str> = all
            .lines()
            .skip_while(|l| *l != "k8s-double: joined worker")
            .collect();
        if after.contains(&"k8s-double: side-load done: 1 of 1 imported") {
            assert_eq!(
                after[1],
                format!(
                    "k8s-double: side-load {}: importing 1 archive(s)",
                    node.path("images").display()
                ),
                "{all}"
            );
            assert!(
                after.contains(&format!("k8s-double: loaded {}", loaded.display()).as_str()),
                "{all}"
            );
            break;
        }
        assert!(std::time::Instant::now() < until, "{all}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
