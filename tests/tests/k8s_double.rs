//! The `k8s` test double (tests/k8s-double) on the host: its command line, its strict reading of bootstrap and
//! join files, its console report and its cluster state. Console, state and side-load folders live in a tempdir
//! (`K8S_DOUBLE_CONSOLE`, `K8S_DOUBLE_STATE_DIR`, `K8S_DOUBLE_SIDELOAD_DIR`); the side-load folder holds no
//! archive, so no containerd is involved. Needs the static build:
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

    /// Runs the double; returns its output and the console lines it wrote.
    fn run(&self, args: &[&str]) -> (Output, Vec<String>) {
        let before = std::fs::read_to_string(self.console_path()).unwrap_or_default();
        let console = self.console_path();
        let state = self.path("state");
        let images = self.path("images");
        let proc_sys = self.path("proc-sys");
        let env = [
            ("K8S_DOUBLE_PROC_SYS", proc_sys.to_str().expect("utf-8")),
            ("K8S_DOUBLE_CONSOLE", console.to_str().expect("utf-8")),
            ("K8S_DOUBLE_STATE_DIR", state.to_str().expect("utf-8")),
            ("K8S_DOUBLE_SIDELOAD_DIR", images.to_str().expect("utf-8")),
        ];
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
            node.sideload_line(),
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
            node.sideload_line(),
            "k8s-double: joined worker".to_string(),
        ]
    );
    let all = std::fs::read_to_string(node.console_path()).expect("console");
    assert!(
        !all.contains(token),
        "the token reached the console:\n{all}"
    );
    let (o, console) = node.run(&["status", "--wait-ready"]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).starts_with("cluster status:           ready\ncontrol plane nodes:      none\n"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        console.last().map(String::as_str),
        Some("k8s-double: status ready (worker)")
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
            node.sideload_line(),
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
fn the_test_rock_carries_the_double_and_its_unit() {
    let layer = k8s_double::layer();
    let find = |path: &str| {
        layer
            .entries()
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} is not in the rock"))
    };
    let bin = find("usr/local/bin/k8s");
    assert_eq!(bin.mode, 0o755);
    assert_eq!(
        bin.kind,
        EntryKind::File(std::fs::read(double_bin()).expect("read the double"))
    );
    let unit = find("usr/lib/systemd/system/k8s-double-images.service");
    assert_eq!(unit.mode, 0o644);
    let EntryKind::File(text) = &unit.kind else {
        panic!("the unit is not a file");
    };
    let text = String::from_utf8(text.clone()).expect("utf-8 unit");
    for line in [
        "After=cairn-kubernetes.service",
        "Type=oneshot",
        "ExecStartPre=/bin/echo \"k8s-double: images\"",
        "ExecStart=/usr/bin/ctr -n k8s.io images ls",
        "StandardOutput=journal+console",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert_eq!(
        find("usr/lib/systemd/system/multi-user.target.wants/k8s-double-images.service").kind,
        EntryKind::Symlink("../k8s-double-images.service".into())
    );
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
