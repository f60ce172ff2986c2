//! `[kubernetes]`, `[[preload]]`, the instance's `[kubernetes]` and the secrets a profile may not hold.

use std::net::IpAddr;

use super::*;
use crate::Instance;
use crate::kubernetes::{
    Component, Distribution, Features, Hardening, JoinToken, KubernetesInstance, LocalStorage,
    Network, ReclaimPolicy, Role,
};

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Six lines: schema, name, version, arch, `[base]`, its rock.
fn head() -> String {
    format!(
        "schema = 1\nname = \"n\"\nversion = \"1\"\narch = \"amd64\"\n[base]\nrock = \"r.io/a@{D}\"\n"
    )
}

/// `[kubernetes]` on line 7, `distribution` on line 8: `extra` starts on line 9.
fn k8s(extra: &str) -> String {
    format!("{}[kubernetes]\ndistribution = \"k8s\"\n{extra}", head())
}

fn parse(text: &str) -> Result<Profile, Error> {
    Profile::parse(Path::new("p.toml"), text.to_string())
}

/// Expects a diagnostic; returns (line, column, key, message).
fn fail(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(Error::Invalid(d)) => (d.line, d.column, d.key.clone(), d.message.clone()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn check_all(cases: &[(String, usize, usize, &str, &str)]) {
    for (text, line, col, key, msg) in cases {
        let (l, c, k, m) = fail(text);
        assert_eq!((l, c, k.as_str()), (*line, *col, *key), "{text}\n=> {m}");
        assert!(m.contains(msg), "{text}\n=> {m}");
    }
}

/// Issue 5's example, every feature spelled out, and two preloads.
fn full() -> String {
    format!(
        r#"{}
[[layer]]
rock = "localhost:5000/canonical/k8s@{D}"

[kubernetes]
distribution = "k8s"                # Canonical Kubernetes' CLI contract
role = "worker"
pod-cidr = "10.1.0.0/16,fd01::/108"
service-cidr = "10.152.183.0/24"
extra-sans = ["api.example.com", "192.0.2.10", "2001:db8::10"]
hardening = "cis"

[kubernetes.features]
network = {{ enabled = true, kube-proxy-enabled = false }}
dns = {{ cluster-domain = "cluster.local", service-ip = "10.152.183.10", upstream-nameservers = ["192.0.2.53", "[2001:db8::53]:53", "/etc/resolv.conf"] }}
ingress = {{ enabled = true, default-tls-secret = "edge-tls", enable-proxy-protocol = true }}
load-balancer = {{ enabled = true, cidrs = ["10.0.0.240/28", "10.0.1.1-10.0.1.9"], l2-mode = true, l2-interfaces = ["eth0"], bgp-mode = true, bgp-local-asn = 64512, bgp-peer-address = "10.0.0.1", bgp-peer-asn = 64513, bgp-peer-port = 179 }}
local-storage = {{ enabled = true, local-path = "/var/lib/storage", reclaim-policy = "Retain", default = false }}
gateway = false
metrics-server = {{ enabled = false }}

[kubernetes.extra-args]
kubelet = {{ "--max-pods" = "150" }}
kube-apiserver = {{ "--authorization-mode" = "Node,RBAC", "--kubelet-client-key" = "/etc/kubernetes/pki/x.key" }}

[kubernetes.remove-args]
kube-apiserver = ["--profiling"]
etcd = ["--auto-tls"]

[[preload]]                         # workload rocks stored in the image
rock = "localhost:5000/canonical/coredns:1.14.6-ck0@{D}"
name = "ghcr.io/canonical/coredns:1.14.6-ck0"   # the reference containerd will know it by

[[preload]]
rock = "localhost:5000/canonical/pause:3.10@{D}"
name = "ghcr.io/canonical/k8s-snap/pause:3.10"
"#,
        head()
    )
}

#[test]
fn accepts_the_full_contract() {
    let p = parse(&full()).unwrap();
    let k = p.kubernetes.as_ref().unwrap();
    assert_eq!(k.distribution, Distribution::K8s);
    assert_eq!(k.role, Role::Worker);
    assert_eq!(k.pod_cidr, "10.1.0.0/16,fd01::/108");
    assert_eq!(k.service_cidr, "10.152.183.0/24");
    assert_eq!(
        k.extra_sans,
        ["api.example.com", "192.0.2.10", "2001:db8::10"]
    );
    assert_eq!(k.hardening, Hardening::Cis);
    let f = &k.features;
    assert_eq!(
        f.network,
        Network {
            enabled: true,
            kube_proxy_enabled: Some(false)
        }
    );
    assert!(f.dns.enabled, "a table without enabled keeps the default");
    assert_eq!(f.dns.cluster_domain.as_deref(), Some("cluster.local"));
    assert_eq!(
        f.dns.service_ip,
        Some("10.152.183.10".parse::<IpAddr>().unwrap())
    );
    assert_eq!(
        f.dns.upstream_nameservers.as_deref().unwrap(),
        ["192.0.2.53", "[2001:db8::53]:53", "/etc/resolv.conf"]
    );
    assert!(f.ingress.enabled);
    assert_eq!(f.ingress.default_tls_secret.as_deref(), Some("edge-tls"));
    assert_eq!(f.ingress.enable_proxy_protocol, Some(true));
    let lb = &f.load_balancer;
    assert!(lb.enabled);
    assert_eq!(lb.cidrs, ["10.0.0.240/28", "10.0.1.1-10.0.1.9"]);
    assert_eq!(
        (lb.l2_mode, lb.l2_interfaces.as_slice()),
        (Some(true), &["eth0".to_string()][..])
    );
    assert_eq!(lb.bgp_mode, Some(true));
    assert_eq!(
        (lb.bgp_local_asn, lb.bgp_peer_asn),
        (Some(64512), Some(64513))
    );
    assert_eq!(lb.bgp_peer_address, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(lb.bgp_peer_port, Some(179));
    assert_eq!(
        f.local_storage,
        LocalStorage {
            enabled: true,
            local_path: Some("/var/lib/storage".into()),
            reclaim_policy: Some(ReclaimPolicy::Retain),
            default: Some(false),
        }
    );
    assert!(!f.gateway.enabled);
    assert!(!f.metrics_server.enabled);
    assert_eq!(k.extra_args[&Component::Kubelet]["--max-pods"], "150");
    assert_eq!(
        k.extra_args[&Component::KubeApiserver]["--kubelet-client-key"],
        "/etc/kubernetes/pki/x.key",
        "a flag's value is a path, not a key"
    );
    assert_eq!(k.remove_args[&Component::KubeApiserver], ["--profiling"]);
    assert_eq!(k.remove_args[&Component::Etcd], ["--auto-tls"]);

    assert_eq!(p.preloads.len(), 2);
    assert_eq!(p.preloads[0].name, "ghcr.io/canonical/coredns:1.14.6-ck0");
    assert_eq!(p.preloads[0].tag(), "1.14.6-ck0");
    assert_eq!(p.preloads[0].rock.key, "preload[0].rock");
    assert_eq!(p.preloads[0].rock.reference.repository, "canonical/coredns");
    assert_eq!(p.preloads[1].tag(), "3.10");
    // `rocks()` is what is merged into the root: the preloads are not in it.
    let merged: Vec<&str> = p.rocks().map(|r| r.key.as_str()).collect();
    assert_eq!(merged, ["base.rock", "layer[0].rock"]);
    let preloaded: Vec<&str> = p.preload_rocks().map(|r| r.key.as_str()).collect();
    assert_eq!(preloaded, ["preload[0].rock", "preload[1].rock"]);
}

#[test]
fn kubernetes_defaults() {
    let p = parse(&head()).unwrap();
    assert!(p.kubernetes.is_none());
    assert!(p.preloads.is_empty());

    let k = parse(&k8s("")).unwrap().kubernetes.unwrap();
    assert_eq!(k.role, Role::ControlPlane);
    assert_eq!(k.pod_cidr, "10.1.0.0/16");
    assert_eq!(k.service_cidr, "10.152.183.0/24");
    assert_eq!(k.hardening, Hardening::Cis);
    assert_eq!(k.features, Features::default());
    let f = &k.features;
    assert_eq!(
        (
            f.network.enabled,
            f.dns.enabled,
            f.ingress.enabled,
            f.load_balancer.enabled,
            f.local_storage.enabled,
            f.gateway.enabled,
            f.metrics_server.enabled
        ),
        (true, true, false, false, false, true, true)
    );
    assert!(k.extra_sans.is_empty() && k.extra_args.is_empty() && k.remove_args.is_empty());

    let k = parse(&k8s(
        "hardening = \"none\"\n[kubernetes.features]\ndns = false\ningress = true\n",
    ))
    .unwrap()
    .kubernetes
    .unwrap();
    assert_eq!(k.hardening, Hardening::None);
    assert!(!k.features.dns.enabled && k.features.ingress.enabled);
    // stig with the features it turns off left off is fine.
    let k = parse(&k8s(
        "hardening = \"stig\"\n[kubernetes.features]\ningress = false\n",
    ))
    .unwrap()
    .kubernetes
    .unwrap();
    assert_eq!(k.hardening, Hardening::Stig);
}

#[test]
fn kubernetes_section_errors_have_positions() {
    let lb = "[kubernetes.features.load-balancer]\n";
    let dns = "[kubernetes.features.dns]\n";
    let feat = "[kubernetes.features]\n";
    let cases: Vec<(String, usize, usize, &str, &str)> = vec![
        (
            format!("{}[kubernetes]\ndistribution = \"rke2\"\n", head()),
            8,
            16,
            "kubernetes.distribution",
            "unknown distribution `rke2`: this cairn drives \"k8s\"",
        ),
        (
            k8s("role = \"master\"\n"),
            9,
            8,
            "kubernetes.role",
            "unknown role `master`: expected control-plane or worker",
        ),
        (
            k8s("pod-cidr = \"10.1.0.0\"\n"),
            9,
            12,
            "kubernetes.pod-cidr",
            "`10.1.0.0` is not a CIDR",
        ),
        (
            k8s("pod-cidr = \"10.1.0.0/16,10.2.0.0/16\"\n"),
            9,
            12,
            "kubernetes.pod-cidr",
            "two CIDRs must be one IPv4 and one IPv6",
        ),
        (
            k8s("service-cidr = \"10.0.0.0/8\"\n"),
            9,
            16,
            "kubernetes.service-cidr",
            "the prefix must be at least /12",
        ),
        (
            k8s("extra-sans = [\"api.example.com\", \"10.0.0.1\", \"bad_name\"]\n"),
            9,
            46,
            "kubernetes.extra-sans[2]",
            "`bad_name` is neither a DNS name nor an IP address",
        ),
        (
            k8s("hardening = \"max\"\n"),
            9,
            13,
            "kubernetes.hardening",
            "unknown hardening `max`: expected cis (the default), stig or none",
        ),
        (
            k8s("disable-rbac = false\n"),
            9,
            1,
            "kubernetes.disable-rbac",
            "`disable-rbac` is not a key: turning RBAC off is not offered",
        ),
        (
            k8s(&format!("{feat}dashboard = true\n")),
            10,
            1,
            "kubernetes.features.dashboard",
            "unknown field `dashboard`, expected one of `network`, `dns`, `ingress`, `load-balancer`, `local-storage`, `gateway`, `metrics-server`",
        ),
        (
            k8s(&format!(
                "{feat}load-balancer = {{ enabled = true, colour = \"red\" }}\n"
            )),
            10,
            35,
            "kubernetes.features.load-balancer.colour",
            "unknown field `colour`, expected one of `enabled`, `cidrs`",
        ),
        (
            k8s(&format!(
                "{feat}load-balancer = {{ enabled = true, cidrs = [1] }}\n"
            )),
            10,
            44,
            "kubernetes.features.load-balancer.cidrs[0]",
            "invalid type: integer `1`, expected a string",
        ),
        (
            k8s(&format!(
                "{lb}cidrs = [\"10.0.0.240/28\", \"10.0.0.0/33\"]\n"
            )),
            10,
            27,
            "kubernetes.features.load-balancer.cidrs[1]",
            "`10.0.0.0/33` is neither a CIDR nor an address range FIRST-LAST",
        ),
        (
            k8s(&format!("{lb}bgp-peer-port = 70000\n")),
            10,
            17,
            "kubernetes.features.load-balancer.bgp-peer-port",
            "70000 is not a port (1 to 65535)",
        ),
        (
            k8s(&format!("{lb}bgp-local-asn = 0\n")),
            10,
            17,
            "kubernetes.features.load-balancer.bgp-local-asn",
            "0 is not an AS number",
        ),
        (
            k8s(&format!("{lb}bgp-peer-address = \"peer\"\n")),
            10,
            20,
            "kubernetes.features.load-balancer.bgp-peer-address",
            "`peer` is not an IP address",
        ),
        (
            k8s(&format!("{lb}bgp-mode = true\nbgp-local-asn = 64512\n")),
            10,
            12,
            "kubernetes.features.load-balancer.bgp-mode",
            "BGP mode needs bgp-peer-address, bgp-peer-asn, bgp-peer-port",
        ),
        (
            k8s(&format!("{lb}l2-mode = \"yes\"\n")),
            10,
            11,
            "kubernetes.features.load-balancer.l2-mode",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            k8s(&format!("{lb}l2-interfaces = [\"eth0\", \"a/b\"]\n")),
            10,
            26,
            "kubernetes.features.load-balancer.l2-interfaces[1]",
            "`a/b` is not a network interface name",
        ),
        (
            k8s(&format!("{dns}service-ip = \"10.0.0.10\"\n")),
            10,
            14,
            "kubernetes.features.dns.service-ip",
            "`10.0.0.10` is outside the service CIDR 10.152.183.0/24",
        ),
        (
            k8s(&format!("{dns}cluster-domain = \"Cluster_Local\"\n")),
            10,
            18,
            "kubernetes.features.dns.cluster-domain",
            "`Cluster_Local` is not a DNS domain",
        ),
        (
            k8s(&format!(
                "{dns}upstream-nameservers = [\"dns.example.com\"]\n"
            )),
            10,
            25,
            "kubernetes.features.dns.upstream-nameservers[0]",
            "`dns.example.com` is not a nameserver",
        ),
        (
            k8s(&format!("{dns}enabled = \"yes\"\n")),
            10,
            11,
            "kubernetes.features.dns.enabled",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            k8s(&format!("{feat}dns = 1\n")),
            10,
            7,
            "kubernetes.features.dns",
            "invalid type: integer `1`, expected true, false or a table of the feature's settings",
        ),
        (
            k8s(&format!(
                "{feat}network = {{ kube-proxy-enabled = \"no\" }}\n"
            )),
            10,
            34,
            "kubernetes.features.network.kube-proxy-enabled",
            "expected a boolean",
        ),
        (
            k8s("[kubernetes.features.ingress]\ndefault-tls-secret = \"My Secret\"\n"),
            10,
            22,
            "kubernetes.features.ingress.default-tls-secret",
            "`My Secret` is not a Secret's name",
        ),
        (
            k8s("[kubernetes.features.local-storage]\nreclaim-policy = \"Keep\"\n"),
            10,
            18,
            "kubernetes.features.local-storage.reclaim-policy",
            "unknown reclaim policy `Keep`: expected Retain, Recycle or Delete",
        ),
        (
            k8s("[kubernetes.features.local-storage]\nlocal-path = \"data\"\n"),
            10,
            14,
            "kubernetes.features.local-storage.local-path",
            "`data` is not an absolute, normal path",
        ),
        (
            k8s(&format!(
                "{feat}gateway = {{ enabled = true, class = \"x\" }}\n"
            )),
            10,
            29,
            "kubernetes.features.gateway.class",
            "unknown field `class`, expected `enabled`",
        ),
        (
            k8s(&format!("{feat}metrics-server = \"on\"\n")),
            10,
            18,
            "kubernetes.features.metrics-server",
            "expected true, false or a table",
        ),
        (
            k8s(&format!("hardening = \"stig\"\n{feat}ingress = true\n")),
            11,
            11,
            "kubernetes.features.ingress",
            "the stig hardening turns ingress off",
        ),
        (
            k8s(&format!(
                "hardening = \"stig\"\n{feat}load-balancer = {{ enabled = true }}\n"
            )),
            11,
            17,
            "kubernetes.features.load-balancer",
            "the stig hardening turns load-balancer off",
        ),
        (
            k8s("[kubernetes.extra-args]\nkube-apiservr = { \"--v\" = \"2\" }\n"),
            10,
            1,
            "kubernetes.extra-args.kube-apiservr",
            "unknown component `kube-apiservr`: expected one of kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet, containerd, etcd, k8s-apiserver-proxy",
        ),
        (
            k8s("[kubernetes.extra-args]\nkubelet = { \"max-pods\" = \"150\" }\n"),
            10,
            13,
            "kubernetes.extra-args.kubelet.max-pods",
            "`max-pods` is not a flag: a flag starts with --",
        ),
        (
            k8s("[kubernetes.extra-args]\nkubelet = { \"--max-pods\" = 150 }\n"),
            10,
            28,
            "kubernetes.extra-args.kubelet.--max-pods",
            "invalid type: integer `150`, expected a string",
        ),
        (
            k8s(
                "[kubernetes.extra-args]\nkube-apiserver = { \"--authorization-mode\" = \"AlwaysAllow\" }\n",
            ),
            10,
            45,
            "kubernetes.extra-args.kube-apiserver.--authorization-mode",
            "`AlwaysAllow` leaves RBAC out: turning RBAC off is not offered",
        ),
        (
            k8s("[kubernetes.remove-args]\nkubelet = [\"--a\", \"b\"]\n"),
            10,
            19,
            "kubernetes.remove-args.kubelet[1]",
            "`b` is not a flag",
        ),
        (
            k8s("[kubernetes.remove-args]\nkubelet = [\"--a\", \"--a\"]\n"),
            10,
            19,
            "kubernetes.remove-args.kubelet[1]",
            "`--a` is removed twice",
        ),
        (
            k8s(
                "[kubernetes.extra-args]\nkubelet = { \"--max-pods\" = \"150\" }\n[kubernetes.remove-args]\nkubelet = [\"--max-pods\"]\n",
            ),
            12,
            12,
            "kubernetes.remove-args.kubelet[0]",
            "`--max-pods` is both set in kubernetes.extra-args.kubelet and removed",
        ),
        (
            k8s("[kubernetes.remove-args]\nkube-apiserver = [\"--authorization-mode\"]\n"),
            10,
            19,
            "kubernetes.remove-args.kube-apiserver[0]",
            "turning RBAC off is not offered",
        ),
        (
            k8s("[kubernetes.remove-args]\nkube-api = [\"--x\"]\n"),
            10,
            1,
            "kubernetes.remove-args.kube-api",
            "unknown component `kube-api`",
        ),
        (
            k8s("version = \"1.32\"\n"),
            9,
            1,
            "kubernetes.version",
            "unknown field `version`",
        ),
    ];
    check_all(&cases);

    // A [kubernetes] without its distribution.
    let (line, _, _, msg) = fail(&format!("{}[kubernetes]\nrole = \"worker\"\n", head()));
    assert_eq!(line, 7);
    assert!(msg.contains("missing field `distribution`"), "{msg}");
}

#[test]
fn preload_errors_have_positions() {
    let pre = |rock: &str, name: &str| {
        format!(
            "{}[[preload]]\nrock = \"{rock}\"\nname = \"{name}\"\n",
            head()
        )
    };
    let pinned = format!("localhost:5000/canonical/coredns:1.0@{D}");
    let cases: Vec<(String, usize, usize, &str, &str)> = vec![
        (
            pre(
                "localhost:5000/canonical/coredns:1.0",
                "ghcr.io/canonical/coredns:1.0",
            ),
            8,
            8,
            "preload[0].rock",
            "pin it: cairn pin",
        ),
        (
            pre(
                "localhost:5000/canonical/coredns@sha256:12",
                "ghcr.io/canonical/coredns:1.0",
            ),
            8,
            8,
            "preload[0].rock",
            "malformed digest `sha256:12`",
        ),
        (
            pre(&pinned, &format!("ghcr.io/canonical/coredns:1.0@{D}")),
            9,
            8,
            "preload[0].name",
            "carries a digest: `name` is the name containerd will know the image by, with its tag; the pin is `rock`",
        ),
        (
            pre(&pinned, "ghcr.io/canonical/coredns"),
            9,
            8,
            "preload[0].name",
            "`ghcr.io/canonical/coredns` has no tag",
        ),
        (
            pre(&pinned, "coredns:1.0"),
            9,
            8,
            "preload[0].name",
            "`coredns:1.0` is not a full name: give it as containerd knows it, with its registry: docker.io/library/coredns:1.0",
        ),
        (
            pre(&pinned, "docker.io/coredns:1.0"),
            9,
            8,
            "preload[0].name",
            "with its registry: docker.io/library/coredns:1.0",
        ),
        (
            pre(&pinned, "ghcr.io/Canonical/coredns:1.0"),
            9,
            8,
            "preload[0].name",
            "is not an image name: malformed repository",
        ),
        (
            format!(
                "{}[[preload]]\nrock = \"{pinned}\"\nname = \"ghcr.io/x:1\"\n",
                pre(&pinned, "ghcr.io/x:1")
            ),
            12,
            8,
            "preload[1].name",
            "`ghcr.io/x:1` is preloaded twice",
        ),
        (
            format!("{}[[preload]]\nrock = \"{pinned}\"\n", head()),
            7,
            1,
            "preload[0]",
            "missing field `name`",
        ),
        (
            format!("{}tag = \"1.0\"\n", pre(&pinned, "ghcr.io/x:1")),
            10,
            1,
            "preload[0].tag",
            "unknown field `tag`, expected `rock` or `name`",
        ),
    ];
    check_all(&cases);
}

#[test]
fn secrets_are_refused_with_their_position() {
    let pem = "-----BEGIN OPENSSH PRIVATE KEY-----";
    let cases: Vec<(String, usize, usize, &str, &str)> = vec![
        // A join token, at the top level and in any table, at any depth.
        (
            format!("join-token = \"K8SD-abc\"\n{}", head()),
            1,
            1,
            "join-token",
            "a join token is a secret, and a secret never goes into an image: give it in the node's instance data ([kubernetes] join-token)",
        ),
        (
            k8s("join-token = \"K8SD-abc\"\n"),
            9,
            1,
            "kubernetes.join-token",
            "a secret never goes into an image",
        ),
        (
            k8s("[kubernetes.extra-args]\nkubelet = { join-token = \"x\" }\n"),
            10,
            13,
            "kubernetes.extra-args.kubelet.join-token",
            "a join token is a secret",
        ),
        (
            format!("{}[system]\nservices.join_token = \"x\"\n", head()),
            8,
            10,
            "system.services.join_token",
            "a join token is a secret",
        ),
        // Before any unknown-key error, even one earlier in the document.
        (
            format!("{}colour = 1\n[kubernetes]\njoin-token = \"x\"\n", head()),
            9,
            1,
            "kubernetes.join-token",
            "a join token is a secret",
        ),
        // The distribution's certificate key fields, in any table.
        (
            k8s("ca-key = \"x\"\n"),
            9,
            1,
            "kubernetes.ca-key",
            "`ca-key` is a private key field, and a secret never goes into an image",
        ),
        (
            format!("{}[system]\nca-key = \"\"\n", head()),
            8,
            1,
            "system.ca-key",
            "`ca-key` is a private key field",
        ),
        (
            format!("datastore-client-key = 1\n{}", head()),
            1,
            1,
            "datastore-client-key",
            "`datastore-client-key` is a private key field",
        ),
        (
            k8s("[kubernetes.features.dns]\ncerts = [{ etcd-peer-key = \"x\" }]\n"),
            10,
            12,
            "kubernetes.features.dns.certs[0].etcd-peer-key",
            "`etcd-peer-key` is a private key field",
        ),
        (
            format!(
                "{}[[file]]\npath = \"/etc/x\"\nservice-account-key = \"x\"\n",
                head()
            ),
            9,
            1,
            "file[0].service-account-key",
            "`service-account-key` is a private key field",
        ),
        // A PEM private key in any string: the marker's own line and column.
        (
            format!(
                "{}[[file]]\npath = \"/etc/ssh/k\"\ncontent = \"\"\"\nhello\n{pem}\nb3Blbn\n\"\"\"\n",
                head()
            ),
            11,
            1,
            "file[0].content",
            "a PEM private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), and a secret never goes into an image",
        ),
        (
            format!(
                "{}[[file]]\npath = \"/etc/k\"\ncontent = \"x\\n-----BEGIN RSA PRIVATE KEY-----\\nMII\"\n",
                head()
            ),
            9,
            15,
            "file[0].content",
            "a PEM private key (`-----BEGIN RSA PRIVATE KEY-----`)",
        ),
        (
            // Escaped out of the text: the value itself is named.
            format!(
                "{}[[file]]\npath = \"/etc/k\"\ncontent = \"\\u002d----BEGIN EC PRIVATE KEY-----\"\n",
                head()
            ),
            9,
            11,
            "file[0].content",
            "`-----BEGIN EC PRIVATE KEY-----`",
        ),
        (
            format!(
                "{}[system]\nkernel-cmdline = [\"a\", \"-----BEGIN ENCRYPTED PRIVATE KEY-----\"]\n",
                head()
            ),
            8,
            25,
            "system.kernel-cmdline[1]",
            "`-----BEGIN ENCRYPTED PRIVATE KEY-----`",
        ),
        (
            k8s(
                "[kubernetes.extra-args]\nkubelet = { \"--tls-private-key\" = \"-----BEGIN PRIVATE KEY-----\" }\n",
            ),
            10,
            36,
            "kubernetes.extra-args.kubelet.--tls-private-key",
            "a PEM private key (`-----BEGIN PRIVATE KEY-----`)",
        ),
    ];
    check_all(&cases);

    // The secret message wins over the others a document may also deserve.
    let (_, _, _, msg) = fail(&format!("{}[kubernetes]\njoin-token = \"x\"\n", head()));
    assert!(msg.contains("join token is a secret"), "{msg}");
    // A certificate, a public key, and a flag naming a key file are not secrets.
    let ok = format!(
        "{}[[file]]\npath = \"/etc/ca.crt\"\ncontent = \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"\n[[file]]\npath = \"/etc/pub\"\ncontent = \"-----BEGIN PUBLIC KEY-----\"\n",
        head()
    );
    parse(&ok).unwrap();
    // The baked profile is held to the same rule.
    let dir = std::env::temp_dir().join(format!("cairn-k8s-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let baked = dir.join("profile.toml");
    std::fs::write(&baked, k8s("join-token = \"x\"\n")).unwrap();
    let e = Profile::load_baked(&baked).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:9:1: `kubernetes.join-token`: a join token is a secret, and a secret never goes into an image: give it in the node's instance data ([kubernetes] join-token)",
            baked.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_private_key_in_a_source_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("cairn-k8s-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("id_ed25519"),
        "# node key\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let file = dir.join("p.toml");
    let with = |source: &str| {
        format!(
            "{}[[file]]\npath = \"/etc/x\"\nsource = \"{source}\"\n",
            head()
        )
    };
    match Profile::parse(&file, with("id_ed25519")) {
        Err(Error::Invalid(d)) => {
            assert_eq!(
                (d.line, d.column, d.key.as_str()),
                (9, 10, "file[0].source")
            );
            assert_eq!(
                d.message,
                "`id_ed25519` holds a PEM private key (`-----BEGIN OPENSSH PRIVATE KEY-----`, its line 2), and a secret never goes into an image"
            );
        }
        other => panic!("{other:?}"),
    }
    Profile::parse(&file, with("ca.crt")).unwrap();
    // The baked profile's sources are not beside it: only the document is checked there.
    std::fs::write(&file, with("id_ed25519")).unwrap();
    assert!(Profile::load(&file).is_err());
    Profile::load_baked(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn instance_kubernetes_and_its_token() {
    let profile = parse(&full()).unwrap();
    let token = "K8SD-eyJ0b2tlbiI6ImFiYyJ9";
    let i = Instance::parse(
        "fw_cfg opt/cairn/instance.toml",
        &format!(
            "[kubernetes]\nrole = \"control-plane\"\njoin-token = \"{token}\"\nnode-name = \"edge-7.site-a\"\naddress = \"192.0.2.7\"\n"
        ),
    )
    .unwrap();
    assert_eq!(i.kubernetes.role, Some(Role::ControlPlane));
    assert_eq!(i.kubernetes.join_token.as_ref().unwrap().expose(), token);
    assert_eq!(i.kubernetes.node_name.as_deref(), Some("edge-7.site-a"));
    assert_eq!(i.kubernetes.address.as_deref(), Some("192.0.2.7"));
    let debug = format!("{i:?}");
    assert!(!debug.contains(token), "{debug}");
    assert!(debug.contains("join_token: Some(<redacted>)"), "{debug}");

    // The instance's role overrides the profile's.
    assert_eq!(profile.kubernetes.as_ref().unwrap().role, Role::Worker);
    let m = profile.merge(Some(&i));
    assert_eq!(m.kubernetes.as_ref().unwrap().role, Role::ControlPlane);
    assert_eq!(
        m.kubernetes_instance
            .join_token
            .as_ref()
            .map(JoinToken::expose),
        Some(token)
    );
    assert_eq!(
        m.kubernetes_instance.node_name.as_deref(),
        Some("edge-7.site-a")
    );
    assert!(!format!("{m:?}").contains(token));
    // Without a role of its own the profile's stays; without instance data, everything is the profile's.
    let i = Instance::parse("esp", "[kubernetes]\naddress = \"10.0.0.0/24\"\n").unwrap();
    assert_eq!(
        profile.merge(Some(&i)).kubernetes.unwrap().role,
        Role::Worker
    );
    let m = profile.merge(None);
    assert_eq!(m.kubernetes.unwrap().role, Role::Worker);
    assert_eq!(m.kubernetes_instance, KubernetesInstance::default());
    // A profile without [kubernetes] keeps none, the instance's values are still there.
    let plain = parse(&head()).unwrap();
    let i = Instance::parse(
        "esp",
        "[kubernetes]\nrole = \"worker\"\njoin-token = \"t\"\n",
    )
    .unwrap();
    let m = plain.merge(Some(&i));
    assert!(m.kubernetes.is_none());
    assert_eq!(m.kubernetes_instance.role, Some(Role::Worker));

    for (text, line, col, key, msg) in [
        (
            "[kubernetes]\nrole = \"master\"\n",
            2,
            8,
            "kubernetes.role",
            "unknown role `master`",
        ),
        (
            "[kubernetes]\nnode-name = \"Edge_7\"\n",
            2,
            13,
            "kubernetes.node-name",
            "`Edge_7` is not a node name",
        ),
        (
            "[kubernetes]\naddress = \"192.0.2.300\"\n",
            2,
            11,
            "kubernetes.address",
            "`192.0.2.300` is neither an IP address nor a CIDR",
        ),
        (
            "[kubernetes]\njoin-token = \"two words\"\n",
            2,
            14,
            "kubernetes.join-token",
            "the join token must be one word of printable ASCII",
        ),
        (
            "[kubernetes]\njoin-token = 12\n",
            2,
            14,
            "kubernetes.join-token",
            "invalid type: integer `12`, expected a string",
        ),
        (
            "[kubernetes]\npod-cidr = \"10.1.0.0/16\"\n",
            2,
            1,
            "kubernetes.pod-cidr",
            "unknown field `pod-cidr`, expected one of `role`, `join-token`, `node-name`, `address`",
        ),
    ] {
        match Instance::parse("esp cairn/instance.toml", text) {
            Err(Error::Invalid(d)) => {
                assert_eq!(
                    (d.line, d.column, d.key.as_str()),
                    (line, col, key),
                    "{text}: {}",
                    d.message
                );
                assert!(d.message.contains(msg), "{text}: {}", d.message);
                assert!(
                    !d.message.contains("two words"),
                    "the token is repeated: {d}"
                );
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn instance_encryption_key_is_32_bytes_of_base64_and_never_shown() {
    let i = crate::Instance::parse(
        "i.toml",
        "[kubernetes]\nencryption-key = \"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\"\n",
    )
    .unwrap();
    assert_eq!(
        format!("{:?}", i.kubernetes.encryption_key),
        "Some(<redacted>)"
    );
    let e = crate::Instance::parse("i.toml", "[kubernetes]\nencryption-key = \"c2hvcnQ=\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "i.toml:2:18: `kubernetes.encryption-key`: the secrets encryption key is 32 bytes in base64"
        ),
        "{e}"
    );
    assert!(!e.contains("c2hvcnQ="), "{e}");
}
