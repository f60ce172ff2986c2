//! The bootstrap and join files, checked strictly against the key sets and types of cairn's contract
//! (`shared/notes/canonical-kubernetes.md`), the way the real parser (YAML `UnmarshalStrict` into k8s-snap-api's
//! types) refuses unknown keys, wrong types and duplicate keys. JSON only: it is what cairn writes.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value};

/// The type a key must have.
#[derive(Clone, Debug)]
enum Ty {
    Bool,
    /// A bool that may not be `true` (`disable-rbac`: cairn never disables RBAC).
    NotTrue,
    Str,
    Int,
    Port,
    StrList,
    OneOf(&'static [&'static str]),
    /// `map[string]string`.
    StrMap,
    /// `extra-node-config-files`: plain file name → content.
    FileMap,
    /// `extra-node-*-args`: `--flag` → value, or null to delete the flag.
    ArgMap,
    /// `extra-node-containerd-config`: any mapping (merged into containerd's config.toml).
    AnyObject,
    Object(Vec<(String, Ty)>),
}

/// What is wrong at a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    NotJson(String),
    NotAnObject,
    UnknownKey,
    DuplicateKey,
    Expected {
        want: &'static str,
        got: &'static str,
    },
    NotOneOf {
        value: String,
        allowed: &'static [&'static str],
    },
    NotAPort(String),
    NotAFlag,
    NotAFileName,
    RbacDisabled,
    /// A join file with a worker-only key and a control-plane-only key.
    MixedJoin {
        control_plane_key: String,
    },
}

/// A refused config: the key path (`cluster-config.dns.foo`, `extra-sans[1]`) and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        match &self.problem {
            Problem::NotJson(e) => write!(f, "not valid JSON (the double reads JSON only): {e}"),
            Problem::NotAnObject => write!(f, "the config must be a mapping"),
            Problem::UnknownKey => write!(f, "unknown key"),
            Problem::DuplicateKey => write!(f, "duplicate key"),
            Problem::Expected { want, got } => write!(f, "expected {want}, got {got}"),
            Problem::NotOneOf { value, allowed } => {
                write!(f, "{value:?} is not one of {}", allowed.join(", "))
            }
            Problem::NotAPort(v) => write!(f, "{v} is not a port (1-65535)"),
            Problem::NotAFlag => write!(f, "a flag must start with --"),
            Problem::NotAFileName => write!(f, "not a plain file name"),
            Problem::RbacDisabled => write!(f, "true is refused: cairn never disables RBAC"),
            Problem::MixedJoin { control_plane_key } => write!(
                f,
                "a worker-only key beside the control-plane-only key {control_plane_key}: neither join kind"
            ),
        }
    }
}

/// Which join a join file is, from its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Worker,
    ControlPlane,
}

impl JoinKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinKind::Worker => "worker",
            JoinKind::ControlPlane => "control-plane",
        }
    }
}

fn err(path: &str, problem: Problem) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        problem,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn expected(path: &str, want: &'static str, got: &Value) -> ConfigError {
    err(
        path,
        Problem::Expected {
            want,
            got: kind_of(got),
        },
    )
}

fn check(path: &str, v: &Value, ty: &Ty) -> Result<(), ConfigError> {
    match ty {
        Ty::Bool => v
            .as_bool()
            .map(drop)
            .ok_or_else(|| expected(path, "a boolean", v)),
        Ty::NotTrue => match v {
            Value::Bool(true) => Err(err(path, Problem::RbacDisabled)),
            Value::Bool(false) => Ok(()),
            _ => Err(expected(path, "a boolean", v)),
        },
        Ty::Str => v
            .as_str()
            .map(drop)
            .ok_or_else(|| expected(path, "a string", v)),
        Ty::Int => v
            .as_i64()
            .map(drop)
            .ok_or_else(|| expected(path, "an integer", v)),
        Ty::Port => {
            let n = v.as_i64().ok_or_else(|| expected(path, "an integer", v))?;
            if (1..=65535).contains(&n) {
                Ok(())
            } else {
                Err(err(path, Problem::NotAPort(n.to_string())))
            }
        }
        Ty::StrList => {
            let items = v
                .as_array()
                .ok_or_else(|| expected(path, "a list of strings", v))?;
            for (i, item) in items.iter().enumerate() {
                check(&format!("{path}[{i}]"), item, &Ty::Str)?;
            }
            Ok(())
        }
        Ty::OneOf(allowed) => {
            let s = v.as_str().ok_or_else(|| expected(path, "a string", v))?;
            if allowed.contains(&s) {
                Ok(())
            } else {
                Err(err(
                    path,
                    Problem::NotOneOf {
                        value: s.to_string(),
                        allowed,
                    },
                ))
            }
        }
        Ty::StrMap | Ty::FileMap | Ty::ArgMap => {
            let map = v
                .as_object()
                .ok_or_else(|| expected(path, "a mapping", v))?;
            for (key, value) in map {
                let p = child(path, key);
                match ty {
                    Ty::FileMap if !is_file_name(key) => {
                        return Err(err(&p, Problem::NotAFileName));
                    }
                    Ty::ArgMap if !key.starts_with("--") || key.len() < 3 => {
                        return Err(err(&p, Problem::NotAFlag));
                    }
                    _ => {}
                }
                match (ty, value) {
                    (_, Value::String(_)) => {}
                    (Ty::ArgMap, Value::Null) => {}
                    (Ty::ArgMap, other) => return Err(expected(&p, "a string or null", other)),
                    (_, other) => return Err(expected(&p, "a string", other)),
                }
            }
            Ok(())
        }
        Ty::AnyObject => v
            .as_object()
            .map(drop)
            .ok_or_else(|| expected(path, "a mapping", v)),
        Ty::Object(fields) => {
            let map = v
                .as_object()
                .ok_or_else(|| expected(path, "a mapping", v))?;
            check_fields(path, map, fields)
        }
    }
}

fn check_fields(
    path: &str,
    map: &Map<String, Value>,
    fields: &[(String, Ty)],
) -> Result<(), ConfigError> {
    // Sorted, so the error named is the same whatever order the file has.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let p = child(path, key);
        let Some((_, ty)) = fields.iter().find(|(name, _)| name == key) else {
            return Err(err(&p, Problem::UnknownKey));
        };
        check(&p, &map[key.as_str()], ty)?;
    }
    Ok(())
}

/// A name that lands as one file in the distribution's `args/conf.d/`.
fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn obj(fields: &[(&str, Ty)]) -> Ty {
    Ty::Object(
        fields
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    )
}

fn cluster_config() -> Ty {
    let enabled = || obj(&[("enabled", Ty::Bool)]);
    obj(&[
        (
            "network",
            obj(&[("enabled", Ty::Bool), ("kube-proxy-enabled", Ty::Bool)]),
        ),
        (
            "dns",
            obj(&[
                ("enabled", Ty::Bool),
                ("cluster-domain", Ty::Str),
                ("service-ip", Ty::Str),
                ("upstream-nameservers", Ty::StrList),
            ]),
        ),
        (
            "ingress",
            obj(&[
                ("enabled", Ty::Bool),
                ("default-tls-secret", Ty::Str),
                ("enable-proxy-protocol", Ty::Bool),
            ]),
        ),
        (
            "load-balancer",
            obj(&[
                ("enabled", Ty::Bool),
                ("cidrs", Ty::StrList),
                ("l2-mode", Ty::Bool),
                ("l2-interfaces", Ty::StrList),
                ("bgp-mode", Ty::Bool),
                ("bgp-local-asn", Ty::Int),
                ("bgp-peer-address", Ty::Str),
                ("bgp-peer-asn", Ty::Int),
                ("bgp-peer-port", Ty::Port),
            ]),
        ),
        (
            "local-storage",
            obj(&[
                ("enabled", Ty::Bool),
                ("local-path", Ty::Str),
                (
                    "reclaim-policy",
                    Ty::OneOf(&["Retain", "Recycle", "Delete"]),
                ),
                ("default", Ty::Bool),
            ]),
        ),
        ("gateway", enabled()),
        ("metrics-server", enabled()),
        ("cloud-provider", Ty::OneOf(&["external"])),
        ("annotations", Ty::StrMap),
    ])
}

fn pairs(fields: &mut Vec<(String, Ty)>, names: &[&str]) {
    for name in names {
        fields.push((format!("{name}-crt"), Ty::Str));
        fields.push((format!("{name}-key"), Ty::Str));
    }
}

fn extra_node_args(fields: &mut Vec<(String, Ty)>, components: &[&str]) {
    for c in components {
        fields.push((format!("extra-node-{c}-args"), Ty::ArgMap));
    }
}

/// Keys every node file (bootstrap and both joins) may carry.
fn node_common(fields: &mut Vec<(String, Ty)>) {
    fields.push(("disable-system-tuning".into(), Ty::Bool));
    fields.push(("extra-node-config-files".into(), Ty::FileMap));
    fields.push(("extra-node-containerd-config".into(), Ty::AnyObject));
    fields.push(("containerd-base-dir".into(), Ty::Str));
}

const CONTROL_PLANE_COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "containerd",
    "etcd",
];

fn bootstrap_fields() -> Vec<(String, Ty)> {
    let mut f: Vec<(String, Ty)> = vec![
        ("cluster-config".into(), cluster_config()),
        ("control-plane-taints".into(), Ty::StrList),
        ("pod-cidr".into(), Ty::Str),
        ("service-cidr".into(), Ty::Str),
        ("disable-rbac".into(), Ty::NotTrue),
        ("secure-port".into(), Ty::Port),
        ("extra-sans".into(), Ty::StrList),
        ("datastore-type".into(), Ty::OneOf(&["etcd", "external"])),
        ("datastore-servers".into(), Ty::StrList),
        ("datastore-ca-crt".into(), Ty::Str),
        ("datastore-client-crt".into(), Ty::Str),
        ("datastore-client-key".into(), Ty::Str),
        ("etcd-port".into(), Ty::Port),
        ("etcd-peer-port".into(), Ty::Port),
        ("service-account-key".into(), Ty::Str),
    ];
    pairs(
        &mut f,
        &[
            "etcd-ca",
            "etcd-server",
            "etcd-peer",
            "etcd-apiserver-client",
            "ca",
            "client-ca",
            "front-proxy-ca",
            "front-proxy-client",
            "apiserver-kubelet-client",
            "admin-client",
            "kube-scheduler-client",
            "kube-controller-manager-client",
            "apiserver",
            "kubelet",
            "kubelet-client",
        ],
    );
    node_common(&mut f);
    extra_node_args(&mut f, CONTROL_PLANE_COMPONENTS);
    f
}

fn control_plane_join_fields() -> Vec<(String, Ty)> {
    let mut f: Vec<(String, Ty)> = vec![("extra-sans".into(), Ty::StrList)];
    pairs(
        &mut f,
        &[
            "front-proxy-client",
            "admin-client",
            "kube-scheduler-client",
            "kube-controller-manager-client",
            "apiserver",
            "kubelet",
            "kubelet-client",
            "etcd-server",
            "etcd-peer",
        ],
    );
    node_common(&mut f);
    extra_node_args(&mut f, CONTROL_PLANE_COMPONENTS);
    f
}

fn worker_join_fields() -> Vec<(String, Ty)> {
    let mut f = Vec::new();
    pairs(&mut f, &["kubelet", "kubelet-client"]);
    node_common(&mut f);
    extra_node_args(
        &mut f,
        &["kube-proxy", "kubelet", "containerd", "k8s-apiserver-proxy"],
    );
    f
}

/// Parses `text` as JSON and refuses duplicate keys and a top level that is not a mapping.
fn parse_object(text: &str) -> Result<Map<String, Value>, ConfigError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| err("", Problem::NotJson(e.to_string())))?;
    Scan {
        s: text.as_bytes(),
        i: 0,
    }
    .value("")?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(err("", Problem::NotAnObject)),
    }
}

/// Checks a bootstrap file.
pub fn parse_bootstrap(text: &str) -> Result<Map<String, Value>, ConfigError> {
    let map = parse_object(text)?;
    check_fields("", &map, &bootstrap_fields())?;
    Ok(map)
}

/// Checks a join file and tells which join it is: worker if its keys fit the worker set, else control plane if
/// they fit that set; else it is refused.
pub fn parse_join(text: &str) -> Result<(Map<String, Value>, JoinKind), ConfigError> {
    let map = parse_object(text)?;
    let worker = worker_join_fields();
    let control_plane = control_plane_join_fields();
    let worker_result = check_fields("", &map, &worker);
    if worker_result.is_ok() {
        return Ok((map, JoinKind::Worker));
    }
    let cp_result = check_fields("", &map, &control_plane);
    if cp_result.is_ok() {
        return Ok((map, JoinKind::ControlPlane));
    }
    let known = |fields: &[(String, Ty)], key: &str| fields.iter().any(|(n, _)| n == key);
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    if keys.iter().all(|k| known(&control_plane, k)) {
        return Err(cp_result
            .err()
            .unwrap_or_else(|| err("", Problem::NotAnObject)));
    }
    if keys.iter().all(|k| known(&worker, k)) {
        return Err(worker_result
            .err()
            .unwrap_or_else(|| err("", Problem::NotAnObject)));
    }
    if let Some(unknown) = keys
        .iter()
        .find(|k| !known(&worker, k) && !known(&control_plane, k))
    {
        return Err(err(unknown, Problem::UnknownKey));
    }
    // Every key is known to one kind, but no kind knows them all.
    let worker_only = keys.iter().find(|k| !known(&control_plane, k));
    let cp_only = keys.iter().find(|k| !known(&worker, k));
    match (worker_only, cp_only) {
        (Some(w), Some(c)) => Err(err(
            w,
            Problem::MixedJoin {
                control_plane_key: c.to_string(),
            },
        )),
        _ => Err(cp_result
            .err()
            .unwrap_or_else(|| err("", Problem::NotAnObject))),
    }
}

/// The config as one line of compact JSON with sorted keys, for the console. Values of top-level `*-key` entries
/// (private keys) are replaced by `sha256:<hex>` of the value: a serial log must not carry key material.
pub fn console_line(map: &Map<String, Value>) -> String {
    let shown: Map<String, Value> = map
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if k.ends_with("-key") => {
                    Value::String(format!("sha256:{}", crate::cli::sha256_hex(s.as_bytes())))
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    sorted(&Value::Object(shown)).to_string()
}

/// `v` with every mapping rebuilt in key order (serde_json keeps insertion order when a crate in the build turns on
/// its `preserve_order` feature).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k.as_str()])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Walks JSON text that serde_json already accepted, to find duplicate keys (serde_json keeps the last one
/// silently; the real YAML parser refuses them).
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> u8 {
        self.s.get(self.i).copied().unwrap_or(0)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn value(&mut self, path: &str) -> Result<(), ConfigError> {
        self.ws();
        match self.peek() {
            b'{' => self.object(path),
            b'[' => self.array(path),
            b'"' => {
                self.string();
                Ok(())
            }
            _ => {
                while !matches!(
                    self.peek(),
                    b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n' | 0
                ) {
                    self.i += 1;
                }
                Ok(())
            }
        }
    }

    fn string(&mut self) {
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return;
                }
                _ => self.i += 1,
            }
        }
    }

    fn object(&mut self, path: &str) -> Result<(), ConfigError> {
        self.i += 1;
        let mut seen = HashSet::new();
        loop {
            self.ws();
            match self.peek() {
                b'}' | 0 => {
                    self.i += 1;
                    return Ok(());
                }
                b',' => {
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            let start = self.i;
            self.string();
            let key: String = self
                .s
                .get(start..self.i)
                .and_then(|raw| serde_json::from_slice(raw).ok())
                .unwrap_or_default();
            let p = child(path, &key);
            if !seen.insert(key) {
                return Err(err(&p, Problem::DuplicateKey));
            }
            self.ws();
            self.i += 1; // ':'
            self.value(&p)?;
        }
    }

    fn array(&mut self, path: &str) -> Result<(), ConfigError> {
        self.i += 1;
        let mut index = 0;
        loop {
            self.ws();
            match self.peek() {
                b']' | 0 => {
                    self.i += 1;
                    return Ok(());
                }
                b',' => {
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            self.value(&format!("{path}[{index}]"))?;
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_err(text: &str) -> String {
        parse_bootstrap(text)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn bootstrap_refusals_name_the_key_path() {
        assert_eq!(boot_err(r#"{"foo": 1}"#), "foo: unknown key");
        assert_eq!(
            boot_err(r#"{"cluster-config": {"dns": {"foo": true}}}"#),
            "cluster-config.dns.foo: unknown key"
        );
        assert_eq!(
            boot_err(r#"{"cluster-config": {"dns": {"enabled": "yes"}}}"#),
            "cluster-config.dns.enabled: expected a boolean, got a string"
        );
        assert_eq!(
            boot_err(r#"{"disable-rbac": true}"#),
            "disable-rbac: true is refused: cairn never disables RBAC"
        );
        assert_eq!(
            boot_err(r#"{"secure-port": 0}"#),
            "secure-port: 0 is not a port (1-65535)"
        );
        assert_eq!(
            boot_err(r#"{"secure-port": 6443.5}"#),
            "secure-port: expected an integer, got a fractional number"
        );
        assert_eq!(
            boot_err(r#"{"extra-sans": ["a", 2]}"#),
            "extra-sans[1]: expected a string, got a number"
        );
        assert_eq!(
            boot_err(r#"{"extra-node-kubelet-args": {"read-only-port": "0"}}"#),
            "extra-node-kubelet-args.read-only-port: a flag must start with --"
        );
        assert_eq!(
            boot_err(r#"{"extra-node-kubelet-args": {"--v": 2}}"#),
            "extra-node-kubelet-args.--v: expected a string or null, got a number"
        );
        assert_eq!(
            boot_err(r#"{"extra-node-config-files": {"../x": "y"}}"#),
            "extra-node-config-files.../x: not a plain file name"
        );
        assert_eq!(
            boot_err(r#"{"datastore-type": "k8s-dqlite"}"#),
            "datastore-type: \"k8s-dqlite\" is not one of etcd, external"
        );
        assert_eq!(
            boot_err(r#"{"pod-cidr": "a", "pod-cidr": "b"}"#),
            "pod-cidr: duplicate key"
        );
        assert_eq!(
            boot_err(r#"{"cluster-config": {"annotations": {"a": "1", "a": "2"}}}"#),
            "cluster-config.annotations.a: duplicate key"
        );
        assert_eq!(boot_err("[]"), "the config must be a mapping");
        assert!(
            boot_err("pod-cidr: x").starts_with("not valid JSON (the double reads JSON only): ")
        );
    }

    #[test]
    fn a_full_bootstrap_file_passes() {
        let text = r#"{
            "cluster-config": {
                "network": {"enabled": true, "kube-proxy-enabled": false},
                "dns": {"enabled": true, "cluster-domain": "cluster.local", "service-ip": "10.152.183.10",
                        "upstream-nameservers": ["1.1.1.1"]},
                "ingress": {"enabled": false, "default-tls-secret": "s", "enable-proxy-protocol": false},
                "load-balancer": {"enabled": false, "cidrs": [], "l2-mode": true, "l2-interfaces": ["eth0"],
                        "bgp-mode": false, "bgp-local-asn": 64512, "bgp-peer-address": "10.0.0.1",
                        "bgp-peer-asn": 64513, "bgp-peer-port": 179},
                "local-storage": {"enabled": true, "local-path": "/var/lib/ls", "reclaim-policy": "Retain",
                        "default": true},
                "gateway": {"enabled": true}, "metrics-server": {"enabled": false},
                "cloud-provider": "external", "annotations": {"k8sd/v1alpha/lifecycle/skip-cleanup-kubernetes-node-on-remove": "true"}
            },
            "control-plane-taints": ["node-role.kubernetes.io/control-plane:NoSchedule"],
            "pod-cidr": "10.1.0.0/16", "service-cidr": "10.152.183.0/24", "disable-rbac": false,
            "disable-system-tuning": false, "secure-port": 6443, "extra-sans": ["node.example"],
            "datastore-type": "etcd", "etcd-port": 2379, "etcd-peer-port": 2380,
            "extra-node-config-files": {"audit-policy.yaml": "apiVersion: audit.k8s.io/v1\n"},
            "extra-node-kube-apiserver-args": {"--profiling": "false", "--audit-log-path": null},
            "extra-node-kube-controller-manager-args": {}, "extra-node-kube-scheduler-args": {},
            "extra-node-kube-proxy-args": {}, "extra-node-kubelet-args": {"--read-only-port": "0"},
            "extra-node-containerd-args": {}, "extra-node-etcd-args": {"--client-cert-auth": "true"},
            "extra-node-containerd-config": {"plugins": {"x": {"y": 1}}}, "containerd-base-dir": "/"
        }"#;
        parse_bootstrap(text).expect("a full file is valid");
    }

    #[test]
    fn joins_are_classified_by_their_keys() {
        let kind = |t: &str| parse_join(t).map(|(_, k)| k);
        assert_eq!(kind("{}"), Ok(JoinKind::Worker));
        assert_eq!(
            kind(r#"{"extra-node-k8s-apiserver-proxy-args": {"--x": "1"}, "kubelet-crt": "c"}"#),
            Ok(JoinKind::Worker)
        );
        assert_eq!(
            kind(r#"{"extra-sans": ["a"], "extra-node-kube-apiserver-args": {}}"#),
            Ok(JoinKind::ControlPlane)
        );
        let msg = |t: &str| parse_join(t).expect_err("refused").to_string();
        assert_eq!(
            msg(r#"{"extra-node-k8s-apiserver-proxy-args": {}, "extra-sans": []}"#),
            "extra-node-k8s-apiserver-proxy-args: a worker-only key beside the control-plane-only key extra-sans: \
             neither join kind"
        );
        assert_eq!(msg(r#"{"pod-cidr": "x"}"#), "pod-cidr: unknown key");
        assert_eq!(
            msg(r#"{"extra-sans": "a"}"#),
            "extra-sans: expected a list of strings, got a string"
        );
        assert_eq!(
            msg(r#"{"kubelet-crt": 5}"#),
            "kubelet-crt: expected a string, got a number"
        );
    }

    #[test]
    fn the_console_line_is_sorted_and_hides_keys() {
        let map = parse_bootstrap(r#"{"pod-cidr": "p", "cluster-config": {"dns": {"enabled": true}, "annotations": {"b": "1", "a": "2"}}, "apiserver-key": "secret"}"#)
            .expect("valid");
        assert_eq!(
            console_line(&map),
            format!(
                r#"{{"apiserver-key":"sha256:{}","cluster-config":{{"annotations":{{"a":"2","b":"1"}},"dns":{{"enabled":true}}}},"pod-cidr":"p"}}"#,
                crate::cli::sha256_hex(b"secret")
            )
        );
    }
}
