//! `k8s`: a strict test double of Canonical Kubernetes' `k8s` command, for cairn's end-to-end boot test. It
//! accepts only what cairn's contract documents, reports every call on the console (`k8s-double: ` lines),
//! starts stand-ins of the node's services, side-loads images into a real containerd in the background, and
//! remembers that the node is in a cluster. It runs no Kubernetes. Each rule names the upstream source it
//! follows (`repo path`); see README.md.

mod cli;
mod config;
mod console;
mod kubelet;
mod services;
mod sideload;

use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use cli::{Command, Format, NodeOpts};
use console::Console;

/// k8sd's default port: `k8s bootstrap --address IP` becomes `IP:6400`.
const K8SD_PORT: u16 = 6400;
const DEFAULT_STATE_DIR: &str = "/var/lib/k8s-double";

/// A failed command: the message for stderr (the real CLI's, without `Error: `) and what the console gets.
struct Failure {
    stderr: String,
    console: String,
    /// `stderr` is printed as it is, without `Error: ` (the real CLI prints some failures so).
    raw: bool,
}

impl Failure {
    fn new(stderr: impl Into<String>, console: impl Into<String>) -> Failure {
        Failure {
            stderr: stderr.into(),
            console: console.into(),
            raw: false,
        }
    }

    fn raw(stderr: impl Into<String>, console: impl Into<String>) -> Failure {
        Failure {
            raw: true,
            ..Failure::new(stderr, console)
        }
    }

    fn same(message: impl Into<String>) -> Failure {
        let m = message.into();
        Failure::new(m.clone(), m)
    }
}

fn main() -> ExitCode {
    let mut console = Console::open();
    // The background stand-ins the double starts after a bootstrap or join (services.rs).
    match std::env::var(services::MODE_ENV).as_deref() {
        Ok("sideload") => {
            return match sideload::side_load(
                &sideload_dir(),
                &services::containerd_socket(),
                &mut console,
            ) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    console.line(&format!("error: side-load: {e}"));
                    ExitCode::FAILURE
                }
            };
        }
        Ok("kubelet") => {
            let state = state_path();
            let hardened = || {
                read_state(&state)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.get("protect-kernel-defaults") == Some(&Value::Bool(true)))
            };
            let code = kubelet::serve(
                &state,
                || hardened().then(kernel_refusal).flatten(),
                &mut console,
            );
            return ExitCode::from(code as u8);
        }
        _ => {}
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match cli::parse(&args) {
        Ok((command, shown)) => {
            console.line(&shown.to_string());
            run(command, &mut console)
        }
        Err(e) => {
            // The raw arguments could hold a token: show only the usage error.
            Err(Failure::same(e.to_string()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.raw => {
            eprint!("{}", f.stderr);
            console.line(&format!("error: {}", f.console));
            ExitCode::FAILURE
        }
        Err(f) => {
            eprintln!("Error: {}", f.stderr);
            console.line(&format!("error: {}", f.console));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, console: &mut Console) -> Result<(), Failure> {
    let state = state_path();
    match command {
        Command::Bootstrap(opts) => node(None, &opts, &state, console),
        Command::JoinCluster { token, opts } => node(Some(&token), &opts, &state, console),
        Command::Status {
            wait_ready: _,
            timeout: _,
            format,
        } => status(&state, format, console),
        Command::LocalNodeStatus { format } => local_node_status(&state, format, console),
    }
}

fn state_path() -> PathBuf {
    std::env::var_os("K8S_DOUBLE_STATE_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
        .join("state.json")
}

fn sideload_dir() -> PathBuf {
    std::env::var_os("K8S_DOUBLE_SIDELOAD_DIR")
        .map_or_else(|| PathBuf::from(sideload::DEFAULT_DIR), PathBuf::from)
}

/// `bootstrap` (no token) or `join-cluster TOKEN`.
fn node(
    token: Option<&str>,
    opts: &NodeOpts,
    state: &Path,
    console: &mut Console,
) -> Result<(), Failure> {
    let joining = token.is_some();
    check_name(&opts.name)?;
    let address = canonical_address(&opts.address, joining)?;
    if state.exists() {
        return Err(Failure::same("The node is already part of a cluster"));
    }
    let what = if joining { "join" } else { "bootstrap" };
    let text = read_config(&opts.file, console).map_err(|e| {
        Failure::new(
            format!(
                "Failed to read {what} configuration from {:?}.\n\nThe error was: {e}",
                opts.file
            ),
            format!("read {}: {e}", opts.file),
        )
    })?;
    let (config, role) = if let Some(token) = token {
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(Failure::same(
                "Failed to join the cluster using the provided token.\n\nThe error was: the token is empty or holds whitespace",
            ));
        }
        let (config, kind) = config::parse_join(&text).map_err(|e| {
            Failure::new(
                format!(
                    "Failed to join the cluster using the provided token.\n\nThe error was: {e}"
                ),
                format!("config refused: {e}"),
            )
        })?;
        console.line(&format!("config {}", config::console_line(&config)));
        console.line(&format!("join kind {}", kind.as_str()));
        (config, kind.as_str())
    } else {
        let config = config::parse_bootstrap(&text).map_err(|e| {
            Failure::new(
                format!(
                    "Failed to read bootstrap configuration from {:?}.\n\nThe error was: {e}",
                    opts.file
                ),
                format!("config refused: {e}"),
            )
        })?;
        console.line(&format!("config {}", config::console_line(&config)));
        (config, "bootstrap")
    };
    containerd_absent(joining)?;
    if joining {
        eprintln!("Joining the cluster. This may take a few seconds, please wait.");
    } else {
        eprintln!("Bootstrapping the cluster. This may take a few seconds, please wait.");
    }
    let record = json!({
        "role": role,
        "name": opts.name,
        "address": address,
        "cluster-config": config.get("cluster-config").cloned().unwrap_or(Value::Null),
        "protect-kernel-defaults": config
            .get("extra-node-kubelet-args")
            .and_then(|a| a.get("--protect-kernel-defaults"))
            .and_then(Value::as_str)
            == Some("true"),
    });
    write_state(state, &record)
        .map_err(|e| Failure::same(format!("write {}: {e}", state.display())))?;
    // The services start before the command returns; the image import does not wait for it.
    services::start(&sideload_dir(), console).map_err(|e| {
        let stderr = if joining {
            format!("Failed to join the cluster using the provided token.\n\nThe error was: {e}")
        } else {
            format!("Failed to bootstrap the cluster.\n\nThe error was: {e}")
        };
        Failure::new(stderr, format!("services: {e}"))
    })?;
    if joining {
        println!("{}", join_output(&opts.name, opts.format));
        console.line(&format!("joined {role}"));
    } else {
        println!("{}", bootstrap_output(&opts.name, &address, opts.format));
        console.line("bootstrapped");
    }
    Ok(())
}

/// k8sd's pre-init check (pkg/snap/snap.go PreInitChecks, through cmd/k8s/validate.go verifyConfig): the
/// containerd socket folder must not exist before a bootstrap or join, or another containerd runs on the node.
/// The CLI prints it as "Bootstrap config verification failed: ..." (cmd/k8s/k8s_bootstrap.go) or "Join cluster
/// config verification failed: ..." (cmd/k8s/k8s_join_cluster.go), with no `Error: `, and exits 1.
fn containerd_absent(joining: bool) -> Result<(), Failure> {
    let dir = services::containerd_dir();
    let d = dir.display();
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => {
            let why = match result {
                Ok(_) => format!(
                    "The path '{d}' required for the containerd socket already exists, meaning there is likely \
                     another service running containerd on this node, which will conflict with kubernetes. Please \
                     stop any other running containerd service and remove the existing directory at '{d}' before \
                     bootstrapping or joining a cluster.\nDev-only: You can change the k8s containerd install path \
                     using --containerd-base-dir. Note that you may have to update the containerd configs of any \
                     operators on this node as well.\n"
                ),
                Err(e) => format!("Encountered an error while checking '{d}': {e}"),
            };
            let what = if joining {
                "Join cluster config verification failed"
            } else {
                "Bootstrap config verification failed"
            };
            Err(Failure::raw(
                format!("{what}: pre-init checks failed for node: {why}"),
                format!("pre-init check: {d} exists: another containerd runs on this node"),
            ))
        }
    }
}

/// A Kubernetes node name: a lower-case RFC 1123 subdomain.
fn check_name(name: &str) -> Result<(), Failure> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(Failure::same(format!(
            "--name {name:?} is not a valid node name (a lower-case RFC 1123 subdomain)"
        )))
    }
}

/// `IP` → `IP:6400` (`[IP]:6400` for IPv6) as the real CLI canonicalizes it; a CIDR (bootstrap only) is kept.
fn canonical_address(address: &str, joining: bool) -> Result<String, Failure> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(v4) => format!("{v4}:{K8SD_PORT}"),
            IpAddr::V6(v6) => format!("[{v6}]:{K8SD_PORT}"),
        });
    }
    if !joining
        && let Some((ip, prefix)) = address.split_once('/')
        && let (Ok(ip), Ok(prefix)) = (ip.parse::<IpAddr>(), prefix.parse::<u8>())
        && prefix <= if ip.is_ipv4() { 32 } else { 128 }
    {
        return Ok(address.to_string());
    }
    let want = if joining {
        "an IP address"
    } else {
        "an IP address or CIDR"
    };
    Err(Failure::same(format!(
        "--address {address:?} is not {want}"
    )))
}

/// Reads the config (`-` is stdin) and reports its mode and owner on the console.
fn read_config(file: &str, console: &mut Console) -> Result<String, String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("failed to read stdin: {e}"))?;
        console.line("file - (stdin)");
        return Ok(text);
    }
    let meta = std::fs::metadata(file).map_err(|e| format!("failed to read file: {e}"))?;
    console.line(&format!(
        "file {file} mode {:04o} uid {} gid {}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    ));
    std::fs::read_to_string(file).map_err(|e| format!("failed to read file: {e}"))
}

fn write_state(state: &Path, record: &Value) -> std::io::Result<()> {
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = state.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, state)
}

fn read_state(state: &Path) -> Result<Option<Map<String, Value>>, Failure> {
    match std::fs::read(state) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            _ => Err(Failure::same(format!(
                "{} is not the double's state",
                state.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::same(format!("read {}: {e}", state.display()))),
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yq(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn bootstrap_output(name: &str, address: &str, format: Format) -> String {
    match format {
        Format::Plain => format!(
            "Bootstrapped a new Kubernetes cluster with node address {address:?}.\n\
             The node will be 'Ready' to host workloads after the CNI is deployed successfully."
        ),
        Format::Json => json!({"node": {
            "name": name, "address": address, "cluster-role": "control-plane", "datastore-role": "voter"
        }})
        .to_string(),
        Format::Yaml => format!(
            "node:\n  name: {}\n  address: {}\n  cluster-role: control-plane\n  datastore-role: voter",
            yq(name),
            yq(address)
        ),
    }
}

fn join_output(name: &str, format: Format) -> String {
    match format {
        Format::Plain => format!(
            "Cluster services have started on {name:?}.\n\
             Please allow some time for initial Kubernetes node registration."
        ),
        Format::Json => json!({ "name": name }).to_string(),
        Format::Yaml => format!("name: {}", yq(name)),
    }
}

/// The node's record, or the distribution's answer to `command` on a node that is no member.
fn member_record(state: &Path, command: &str) -> Result<Map<String, Value>, Failure> {
    read_state(state)?.ok_or_else(|| {
        Failure::new(
            "The node is not part of a Kubernetes cluster. You can bootstrap a new cluster with:\n\n  sudo k8s bootstrap",
            format!("{command}: the node is not part of a cluster"),
        )
    })
}

/// A text field of the node's record, empty when absent.
fn field(record: &Map<String, Value>, key: &str) -> String {
    record
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `status`: ready once the node bootstrapped or joined (the double has nothing to wait for).
fn status(state: &Path, format: Format, console: &mut Console) -> Result<(), Failure> {
    let record = member_record(state, "status")?;
    let text = |key: &str| field(&record, key);
    let role = text("role");
    // k8sd pkg/k8sd/api/endpoints.go: the cluster status endpoint's access handler is restrictWorkers
    // (pkg/k8sd/api/worker_access_handler.go), which answers 403 "this action is restricted on workers"; the CLI
    // wraps it (cmd/k8s/k8s_status.go, pkg/client/k8sd/status.go ClusterStatus, query.go, pkg/utils/control).
    if role == "worker" {
        return Err(Failure::new(
            "Failed to retrieve the cluster status.\n\nThe error was: wait check failed: failed after potential \
             retry: wait check failed: failed to GET /k8sd/cluster: this action is restricted on workers",
            "status: this action is restricted on workers",
        ));
    }
    // `--wait-ready` waits for at least one ready node (k8sd pkg/client/kubernetes/status.go HasReadyNodes): the
    // double's one node is this control plane, whose hardened kubelet must have started.
    if record.get("protect-kernel-defaults") == Some(&Value::Bool(true)) {
        kernel_defaults(console)?;
    }
    let address = text("address");
    let cluster = record.get("cluster-config").cloned().unwrap_or(Value::Null);
    // Feature defaults of the distribution, overridden by the bootstrap file.
    let feature = |name: &str, default: bool| {
        let on = cluster[name]["enabled"].as_bool().unwrap_or(default);
        if on { "enabled" } else { "disabled" }
    };
    let features = [
        ("network", feature("network", true)),
        ("dns", feature("dns", true)),
        ("ingress", feature("ingress", false)),
        ("load-balancer", feature("load-balancer", false)),
        ("local-storage", feature("local-storage", false)),
        ("gateway", feature("gateway", true)),
    ];
    let control_plane = if role == "worker" {
        "none".to_string()
    } else {
        format!("{address} (voter)")
    };
    let out = match format {
        Format::Plain => {
            let mut lines = vec![
                format!("{:<25} ready", "cluster status:"),
                format!("{:<25} {control_plane}", "control plane nodes:"),
                format!("{:<25} no", "high availability:"),
                format!("{:<25} etcd", "datastore:"),
            ];
            for (name, state) in features {
                lines.push(format!("{:<25} {state}", format!("{name}:")));
            }
            lines.join("\n")
        }
        Format::Json => {
            let mut v = json!({"ready": true, "role": role, "address": address, "datastore": {"type": "etcd"}});
            for (name, state) in features {
                v[name] = json!({ "enabled": state == "enabled" });
            }
            v.to_string()
        }
        Format::Yaml => {
            let mut lines = vec![
                "ready: true".to_string(),
                format!("role: {}", yq(&role)),
                format!("address: {}", yq(&address)),
                "datastore:\n  type: etcd".to_string(),
            ];
            for (name, state) in features {
                lines.push(format!("{name}:\n  enabled: {}", state == "enabled"));
            }
            lines.join("\n")
        }
    };
    println!("{out}");
    console.line(&format!("status ready ({role})"));
    Ok(())
}

/// What a kubelet started with `--protect-kernel-defaults=true` checks before it runs: these kernel settings, or
/// it refuses to start and the node never becomes ready. `K8S_DOUBLE_PROC_SYS` stands for `/proc/sys` (host tests).
const KERNEL_DEFAULTS: &[(&str, &str)] = &[
    ("kernel.keys.root_maxbytes", "25000000"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];

fn kernel_defaults(console: &mut Console) -> Result<(), Failure> {
    if let Some(why) = kernel_refusal() {
        return Err(Failure::same(format!(
            "The node is not ready: kubelet refuses to start: {why}"
        )));
    }
    let seen: Vec<String> = KERNEL_DEFAULTS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    console.line(&format!("kubelet kernel defaults ok: {}", seen.join(" ")));
    Ok(())
}

/// Why a kubelet with `--protect-kernel-defaults=true` would refuse to start: the first kernel setting that
/// differs; `None` when all hold.
fn kernel_refusal() -> Option<String> {
    let root = std::env::var_os("K8S_DOUBLE_PROC_SYS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/proc/sys".into());
    KERNEL_DEFAULTS.iter().find_map(|(key, want)| {
        let path = root.join(key.replace('.', "/"));
        let have = std::fs::read_to_string(&path)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unreadable ({e})"));
        (have != *want).then(|| format!("--protect-kernel-defaults: {key} is {have}, want {want}"))
    })
}

/// `local-node-status` (k8sd cmd/k8s/k8s_local_node_status.go): allowed on every role (its endpoint, NodeStatus
/// in pkg/k8sd/api/endpoints.go, has no access handler). A member prints its apiv2.NodeStatus (k8s-snap-api
/// api/type_node_status.go) through cmd/util/formatter.go: plain is Go's `%v` of the struct, json is indented by
/// two spaces, yaml is yaml.v2's. A worker's address is its host alone and it has no datastore role; a control
/// plane's is its cluster member address with the port, `voter` (pkg/k8sd/api/impl/k8sd.go GetLocalNodeStatus).
fn local_node_status(state: &Path, format: Format, console: &mut Console) -> Result<(), Failure> {
    let record = member_record(state, "local-node-status")?;
    let text = |key: &str| field(&record, key);
    let name = text("name");
    let address = text("address");
    let (address, role, datastore) = if text("role") == "worker" {
        let host = address
            .rsplit_once(':')
            .map_or(address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        (host, "worker", "")
    } else {
        (address, "control-plane", "voter")
    };
    let fields = [
        ("name", name.as_str()),
        ("address", address.as_str()),
        ("cluster-role", role),
        ("datastore-role", datastore),
    ];
    let out = match format {
        Format::Plain => format!("{{{name} {address} {role} {datastore}}}"),
        Format::Json => {
            let lines: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("  {}: {}", yq(k), yq(v)))
                .collect();
            format!("{{\n{}\n}}", lines.join(",\n"))
        }
        Format::Yaml => fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}: {}", yaml_scalar(v)))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    println!("{out}");
    console.line(&format!("local-node-status member ({role})"));
    Ok(())
}

/// A YAML scalar as yaml.v2 writes a plain string: bare when it cannot read back as anything else.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'_'))
        && s.parse::<f64>().is_err()
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain { s.to_string() } else { yq(s) }
}
