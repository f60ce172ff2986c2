//! The distribution's bootstrap and join files, from the profile's `[kubernetes]` and the hardening preset.
//!
//! JSON, which Canonical Kubernetes reads (its parser takes YAML, a superset). Only the keys its documentation
//! lists for each file (`shared/notes/canonical-kubernetes.md`): the distribution refuses an unknown key, so a
//! key a role's file does not take is never written. `disable-rbac` is never written: turning RBAC off is not
//! offered. No certificate or key is written either: the distribution makes them on the node.

use cairn_profile::Role;
use cairn_profile::hardening::{self, Arguments};
use cairn_profile::kubernetes::{Component, Features, Kubernetes};
use serde_json::{Map, Value, json};

/// Which of the distribution's files a node gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `k8s bootstrap`: the first control plane, which makes the cluster.
    Bootstrap,
    /// `k8s join-cluster` on a control plane.
    ControlPlaneJoin,
    /// `k8s join-cluster` on a worker.
    WorkerJoin,
}

impl FileKind {
    pub fn new(role: Role, joining: bool) -> FileKind {
        match (role, joining) {
            (Role::ControlPlane, false) => FileKind::Bootstrap,
            (Role::ControlPlane, true) => FileKind::ControlPlaneJoin,
            (Role::Worker, _) => FileKind::WorkerJoin,
        }
    }

    /// The components whose `extra-node-*-args` this file takes.
    fn components(self) -> &'static [Component] {
        match self {
            FileKind::Bootstrap | FileKind::ControlPlaneJoin => Role::ControlPlane.components(),
            FileKind::WorkerJoin => Role::Worker.components(),
        }
    }

    /// Where the agent writes it (0600).
    pub fn path(self) -> &'static str {
        match self {
            FileKind::Bootstrap => "/var/lib/cairn/kubernetes/bootstrap.json",
            FileKind::ControlPlaneJoin | FileKind::WorkerJoin => {
                "/var/lib/cairn/kubernetes/join.json"
            }
        }
    }
}

/// The file's JSON document, pretty-printed, ending with a newline.
pub fn render(k: &Kubernetes, kind: FileKind) -> String {
    let role = match kind {
        FileKind::WorkerJoin => Role::Worker,
        _ => Role::ControlPlane,
    };
    let mut doc = Map::new();
    if kind == FileKind::Bootstrap {
        doc.insert("cluster-config".into(), cluster_config(&k.features));
        doc.insert("pod-cidr".into(), json!(k.pod_cidr));
        doc.insert("service-cidr".into(), json!(k.service_cidr));
    }
    if kind != FileKind::WorkerJoin && !k.extra_sans.is_empty() {
        doc.insert("extra-sans".into(), json!(k.extra_sans));
    }
    let args = hardening::arguments(k, role);
    extra_node_args(&mut doc, kind, &args);
    let mut text = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
    text.push('\n');
    text
}

fn extra_node_args(doc: &mut Map<String, Value>, kind: FileKind, args: &Arguments) {
    for component in kind.components() {
        let Some(flags) = args.get(component) else {
            continue;
        };
        let map: Map<String, Value> = flags
            .iter()
            .map(|(flag, value)| {
                let v = match value {
                    Some(v) => Value::String(v.clone()),
                    None => Value::Null,
                };
                (flag.clone(), v)
            })
            .collect();
        doc.insert(
            format!("extra-node-{}-args", component.name()),
            Value::Object(map),
        );
    }
}

/// `cluster-config`: every feature's `enabled`, and each documented setting the profile gave.
fn cluster_config(f: &Features) -> Value {
    let mut network = json!({ "enabled": f.network.enabled });
    set(
        &mut network,
        "kube-proxy-enabled",
        f.network.kube_proxy_enabled.map(Value::Bool),
    );

    let mut dns = json!({ "enabled": f.dns.enabled });
    set(
        &mut dns,
        "cluster-domain",
        f.dns.cluster_domain.as_ref().map(|d| json!(d)),
    );
    set(
        &mut dns,
        "service-ip",
        f.dns.service_ip.map(|ip| json!(ip.to_string())),
    );
    set(
        &mut dns,
        "upstream-nameservers",
        f.dns.upstream_nameservers.as_ref().map(|n| json!(n)),
    );

    let mut ingress = json!({ "enabled": f.ingress.enabled });
    set(
        &mut ingress,
        "default-tls-secret",
        f.ingress.default_tls_secret.as_ref().map(|s| json!(s)),
    );
    set(
        &mut ingress,
        "enable-proxy-protocol",
        f.ingress.enable_proxy_protocol.map(Value::Bool),
    );

    let lb = &f.load_balancer;
    let mut load_balancer = json!({ "enabled": lb.enabled });
    set(
        &mut load_balancer,
        "cidrs",
        (!lb.cidrs.is_empty()).then(|| json!(lb.cidrs)),
    );
    set(&mut load_balancer, "l2-mode", lb.l2_mode.map(Value::Bool));
    set(
        &mut load_balancer,
        "l2-interfaces",
        (!lb.l2_interfaces.is_empty()).then(|| json!(lb.l2_interfaces)),
    );
    set(&mut load_balancer, "bgp-mode", lb.bgp_mode.map(Value::Bool));
    set(
        &mut load_balancer,
        "bgp-local-asn",
        lb.bgp_local_asn.map(|n| json!(n)),
    );
    set(
        &mut load_balancer,
        "bgp-peer-address",
        lb.bgp_peer_address.map(|a| json!(a.to_string())),
    );
    set(
        &mut load_balancer,
        "bgp-peer-asn",
        lb.bgp_peer_asn.map(|n| json!(n)),
    );
    set(
        &mut load_balancer,
        "bgp-peer-port",
        lb.bgp_peer_port.map(|n| json!(n)),
    );

    let ls = &f.local_storage;
    let mut local_storage = json!({ "enabled": ls.enabled });
    set(
        &mut local_storage,
        "local-path",
        ls.local_path.as_ref().map(|p| json!(p)),
    );
    set(
        &mut local_storage,
        "reclaim-policy",
        ls.reclaim_policy.map(|r| json!(r.name())),
    );
    set(&mut local_storage, "default", ls.default.map(Value::Bool));

    json!({
        "network": network,
        "dns": dns,
        "ingress": ingress,
        "load-balancer": load_balancer,
        "local-storage": local_storage,
        "gateway": { "enabled": f.gateway.enabled },
        "metrics-server": { "enabled": f.metrics_server.enabled },
    })
}

fn set(object: &mut Value, key: &str, value: Option<Value>) {
    if let (Value::Object(map), Some(v)) = (object, value) {
        map.insert(key.into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_profile::Profile;
    use std::path::Path;

    fn kubernetes(section: &str) -> Kubernetes {
        let text = format!(
            "schema = 1\nname = \"n\"\nversion = \"1\"\narch = \"amd64\"\n[base]\nrock = \"localhost:5000/b@sha256:{}\"\n\
             [kubernetes]\ndistribution = \"k8s\"\n{section}",
            "a".repeat(64)
        );
        Profile::parse(Path::new("p.toml"), text)
            .unwrap()
            .kubernetes
            .unwrap()
    }

    fn doc(k: &Kubernetes, kind: FileKind) -> Value {
        serde_json::from_str(&render(k, kind)).unwrap()
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn bootstrap_carries_the_cluster_and_the_control_plane_arguments() {
        let k = kubernetes(
            "pod-cidr = \"10.2.0.0/16\"\nextra-sans = [\"api.example.com\"]\n\
             [kubernetes.features]\nload-balancer = { enabled = true, cidrs = [\"10.0.0.240/28\"] }\n\
             local-storage = { enabled = true, reclaim-policy = \"Retain\" }\n\
             [kubernetes.extra-args]\nkubelet = { \"--max-pods\" = \"150\" }\n",
        );
        let d = doc(&k, FileKind::Bootstrap);
        assert_eq!(
            keys(&d),
            [
                "cluster-config",
                "extra-node-etcd-args",
                "extra-node-kube-apiserver-args",
                "extra-node-kube-controller-manager-args",
                "extra-node-kube-scheduler-args",
                "extra-node-kubelet-args",
                "extra-sans",
                "pod-cidr",
                "service-cidr"
            ]
        );
        assert_eq!(d["pod-cidr"], "10.2.0.0/16");
        assert_eq!(d["service-cidr"], "10.152.183.0/24");
        let cc = &d["cluster-config"];
        assert_eq!(
            cc["load-balancer"],
            json!({"enabled": true, "cidrs": ["10.0.0.240/28"]})
        );
        assert_eq!(
            cc["local-storage"],
            json!({"enabled": true, "reclaim-policy": "Retain"})
        );
        assert_eq!(cc["dns"], json!({"enabled": true}));
        assert_eq!(d["extra-node-kubelet-args"]["--max-pods"], "150");
        assert_eq!(
            d["extra-node-kubelet-args"]["--protect-kernel-defaults"],
            "true"
        );
        assert_eq!(d["extra-node-etcd-args"]["--auto-tls"], Value::Null);
        assert!(d.get("disable-rbac").is_none());
    }

    #[test]
    fn a_worker_join_file_has_only_worker_keys() {
        let k = kubernetes("extra-sans = [\"api.example.com\"]\n");
        let d = doc(&k, FileKind::WorkerJoin);
        assert_eq!(keys(&d), ["extra-node-kubelet-args"]);
        let d = doc(&k, FileKind::ControlPlaneJoin);
        assert!(d.get("cluster-config").is_none() && d.get("pod-cidr").is_none());
        assert_eq!(d["extra-sans"], json!(["api.example.com"]));
        assert!(d.get("extra-node-kube-apiserver-args").is_some());
    }

    #[test]
    fn no_hardening_no_extra_args_gives_an_empty_join_file() {
        let k = kubernetes("hardening = \"none\"\n");
        assert_eq!(render(&k, FileKind::WorkerJoin), "{}\n");
    }
}
