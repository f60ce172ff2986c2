//! The Kubernetes sections: the profile's `[kubernetes]` and `[[preload]]`, and the instance data's `[kubernetes]`.
//!
//! The keys follow Canonical Kubernetes' bootstrap configuration (`shared/notes/canonical-kubernetes.md`): a
//! feature is `true`/`false` or a table holding `enabled` and only the keys the distribution documents for it.
//! Nothing here is a secret: a join token arrives with the instance data, and certificate keys are generated on
//! the node (see `secrets.rs` for what a profile may never hold).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::model::{Checker, Rock};
use crate::reference::Reference;

/// The Kubernetes distribution whose contract the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Canonical Kubernetes: the `k8s` command and its daemons.
    K8s,
}

impl Distribution {
    pub fn name(self) -> &'static str {
        match self {
            Distribution::K8s => "k8s",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    ControlPlane,
    Worker,
}

impl Role {
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "control-plane" => Some(Role::ControlPlane),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hardening {
    /// The CIS benchmark's settings on top of the distribution's defaults.
    #[default]
    Cis,
    /// CIS plus the DISA STIG's (ingress and load-balancer off).
    Stig,
    /// The distribution's defaults only: an explicit opt-out.
    None,
}

impl Hardening {
    pub fn parse(name: &str) -> Option<Hardening> {
        match name {
            "cis" => Some(Hardening::Cis),
            "stig" => Some(Hardening::Stig),
            "none" => Some(Hardening::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hardening::Cis => "cis",
            Hardening::Stig => "stig",
            Hardening::None => "none",
        }
    }
}

/// A service whose arguments a profile may add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    KubeProxy,
    Kubelet,
    Containerd,
    Etcd,
    K8sApiserverProxy,
}

impl Component {
    pub const ALL: &[Component] = &[
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::KubeProxy,
        Component::Kubelet,
        Component::Containerd,
        Component::Etcd,
        Component::K8sApiserverProxy,
    ];

    pub fn parse(name: &str) -> Option<Component> {
        Component::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// The name as the distribution writes it (`extra-node-{name}-args`).
    pub fn name(self) -> &'static str {
        match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::KubeProxy => "kube-proxy",
            Component::Kubelet => "kubelet",
            Component::Containerd => "containerd",
            Component::Etcd => "etcd",
            Component::K8sApiserverProxy => "k8s-apiserver-proxy",
        }
    }

    fn names() -> String {
        Component::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimPolicy {
    Retain,
    Recycle,
    Delete,
}

impl ReclaimPolicy {
    pub fn name(self) -> &'static str {
        match self {
            ReclaimPolicy::Retain => "Retain",
            ReclaimPolicy::Recycle => "Recycle",
            ReclaimPolicy::Delete => "Delete",
        }
    }
}

/// `ADDRESS/PREFIX`, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.split_once('/')?;
        let address: IpAddr = address.parse().ok()?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The profile's `[kubernetes]`, checked, with the distribution's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    pub distribution: Distribution,
    /// The profile's role; instance data may override it (see [`crate::Merged`]).
    pub role: Role,
    /// One CIDR, or an IPv4 and an IPv6 one separated by a comma (dual-stack), as the distribution takes it.
    pub pod_cidr: String,
    pub service_cidr: String,
    /// DNS names and IP addresses.
    pub extra_sans: Vec<String>,
    pub hardening: Hardening,
    pub features: Features,
    /// Per component, flag (`--max-pods`) → value; applied after the hardening preset.
    pub extra_args: BTreeMap<Component, BTreeMap<String, String>>,
    /// Per component, flags to drop; applied after the preset.
    pub remove_args: BTreeMap<Component, Vec<String>>,
}

pub const DEFAULT_POD_CIDR: &str = "10.1.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.152.183.0/24";

/// The distribution's features. `enabled` carries the distribution's default when the profile does not say; every
/// `Option` left `None` is left to the distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub network: Network,
    pub dns: Dns,
    pub ingress: Ingress,
    pub load_balancer: LoadBalancer,
    pub local_storage: LocalStorage,
    pub gateway: Toggle,
    pub metrics_server: Toggle,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            network: Network {
                enabled: true,
                kube_proxy_enabled: None,
            },
            dns: Dns {
                enabled: true,
                cluster_domain: None,
                service_ip: None,
                upstream_nameservers: None,
            },
            ingress: Ingress {
                enabled: false,
                default_tls_secret: None,
                enable_proxy_protocol: None,
            },
            load_balancer: LoadBalancer {
                enabled: false,
                cidrs: Vec::new(),
                l2_mode: None,
                l2_interfaces: Vec::new(),
                bgp_mode: None,
                bgp_local_asn: None,
                bgp_peer_address: None,
                bgp_peer_asn: None,
                bgp_peer_port: None,
            },
            local_storage: LocalStorage {
                enabled: false,
                local_path: None,
                reclaim_policy: None,
                default: None,
            },
            gateway: Toggle { enabled: true },
            metrics_server: Toggle { enabled: true },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub enabled: bool,
    pub kube_proxy_enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub enabled: bool,
    pub cluster_domain: Option<String>,
    pub service_ip: Option<IpAddr>,
    /// IP addresses, `IP:PORT`s or a resolv.conf path.
    pub upstream_nameservers: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub enabled: bool,
    /// The name of a Kubernetes Secret (the name only: the secret itself lives in the cluster).
    pub default_tls_secret: Option<String>,
    pub enable_proxy_protocol: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub enabled: bool,
    /// CIDRs or `FIRST-LAST` address ranges.
    pub cidrs: Vec<String>,
    pub l2_mode: Option<bool>,
    pub l2_interfaces: Vec<String>,
    pub bgp_mode: Option<bool>,
    pub bgp_local_asn: Option<u32>,
    pub bgp_peer_address: Option<IpAddr>,
    pub bgp_peer_asn: Option<u32>,
    pub bgp_peer_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStorage {
    pub enabled: bool,
    pub local_path: Option<String>,
    pub reclaim_policy: Option<ReclaimPolicy>,
    pub default: Option<bool>,
}

/// A feature with no setting but `enabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toggle {
    pub enabled: bool,
}

/// A workload rock stored in the image for an air-gapped start.
#[derive(Debug, Clone)]
pub struct Preload {
    /// The pin (`preload[i].rock`).
    pub rock: Rock,
    /// The full reference containerd will know the image by, with its tag: `ghcr.io/canonical/coredns:1.14.6-ck0`.
    pub name: String,
}

impl Preload {
    /// The tag of [`Preload::name`] (`org.opencontainers.image.ref.name`).
    pub fn tag(&self) -> &str {
        self.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("")
    }
}

/// A join token: kept out of `Debug` output so that it never lands in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// The token itself, for the one command line that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The instance data's `[kubernetes]`: what differs per machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesInstance {
    /// Overrides the profile's role.
    pub role: Option<Role>,
    pub join_token: Option<JoinToken>,
    /// The node's name in the cluster (a DNS-1123 subdomain).
    pub node_name: Option<String>,
    /// An IP address, or a CIDR the node's address is picked from.
    pub address: Option<String>,
    /// The cluster's secrets encryption key (base64 of 32 bytes), which a control plane joining a hardened
    /// cluster must share with the first one; the first control plane makes its own when none is given.
    pub encryption_key: Option<EncryptionKey>,
}

/// A secrets encryption key: kept out of `Debug` output so that it never lands in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey(String);

impl EncryptionKey {
    /// The key as base64, for the one file that holds it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---- raw forms, as the document holds them ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKubernetes {
    distribution: Spanned<String>,
    role: Option<Spanned<String>>,
    pod_cidr: Option<Spanned<String>>,
    service_cidr: Option<Spanned<String>>,
    #[serde(default)]
    extra_sans: Vec<Spanned<String>>,
    hardening: Option<Spanned<String>>,
    features: Option<RawFeatures>,
    #[serde(default)]
    extra_args: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<String>>>,
    #[serde(default)]
    remove_args: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFeatures {
    network: Option<Spanned<RawFeature<RawNetwork>>>,
    dns: Option<Spanned<RawFeature<RawDns>>>,
    ingress: Option<Spanned<RawFeature<RawIngress>>>,
    load_balancer: Option<Spanned<RawFeature<RawLoadBalancer>>>,
    local_storage: Option<Spanned<RawFeature<RawLocalStorage>>>,
    gateway: Option<Spanned<RawFeature<RawToggle>>>,
    metrics_server: Option<Spanned<RawFeature<RawToggle>>>,
}

/// `feature = true` or `feature = { enabled = true, ... }`.
enum RawFeature<T> {
    Switch(bool),
    Table(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for RawFeature<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = RawFeature<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a table of the feature's settings")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(RawFeature::Switch(b))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(RawFeature::Table)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNetwork {
    enabled: Option<bool>,
    kube_proxy_enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDns {
    enabled: Option<bool>,
    cluster_domain: Option<Spanned<String>>,
    service_ip: Option<Spanned<String>>,
    upstream_nameservers: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawIngress {
    enabled: Option<bool>,
    default_tls_secret: Option<Spanned<String>>,
    enable_proxy_protocol: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLoadBalancer {
    enabled: Option<bool>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    l2_mode: Option<bool>,
    #[serde(default)]
    l2_interfaces: Vec<Spanned<String>>,
    bgp_mode: Option<Spanned<bool>>,
    bgp_local_asn: Option<Spanned<i64>>,
    bgp_peer_address: Option<Spanned<String>>,
    bgp_peer_asn: Option<Spanned<i64>>,
    bgp_peer_port: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLocalStorage {
    enabled: Option<bool>,
    local_path: Option<Spanned<String>>,
    reclaim_policy: Option<Spanned<String>>,
    default: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToggle {
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreload {
    rock: Spanned<String>,
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawInstanceKubernetes {
    role: Option<Spanned<String>>,
    join_token: Option<Spanned<String>>,
    node_name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    encryption_key: Option<Spanned<String>>,
}

// ---- value checks ----

/// A DNS-1123 subdomain: dot-separated labels of a-z, 0-9 and -, at most 253 characters.
pub fn dns_subdomain_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A DNS name for a certificate (letters of either case allowed: names compare without case).
fn san_name_ok(name: &str) -> bool {
    dns_subdomain_ok(&name.to_ascii_lowercase())
}

/// One CIDR, or an IPv4 and an IPv6 CIDR separated by a comma.
fn cidrs_problem(text: &str, service: bool) -> Option<String> {
    let parts: Vec<&str> = text.split(',').collect();
    if parts.len() > 2 {
        return Some(format!(
            "`{text}`: at most two CIDRs, an IPv4 and an IPv6 one (dual-stack)"
        ));
    }
    let mut cidrs = Vec::new();
    for part in &parts {
        let Some(c) = Cidr::parse(part) else {
            return Some(format!(
                "`{part}` is not a CIDR such as 10.1.0.0/16 or fd01::/108"
            ));
        };
        cidrs.push(c);
    }
    if cidrs.len() == 2 && cidrs[0].address.is_ipv4() == cidrs[1].address.is_ipv4() {
        return Some(format!(
            "`{text}`: two CIDRs must be one IPv4 and one IPv6 (dual-stack)"
        ));
    }
    if service {
        // kube-apiserver refuses bigger service ranges.
        for c in &cidrs {
            let min = if c.address.is_ipv4() { 12 } else { 108 };
            if c.prefix < min {
                return Some(format!(
                    "`{c}` is too large a service range: the prefix must be at least /{min}"
                ));
            }
        }
    }
    None
}

fn parse_cidrs(text: &str) -> Vec<Cidr> {
    text.split(',').filter_map(Cidr::parse).collect()
}

/// A load-balancer pool entry: a CIDR or `FIRST-LAST` of one family, FIRST not after LAST.
fn pool_ok(text: &str) -> bool {
    if Cidr::parse(text).is_some() {
        return true;
    }
    match text.split_once('-') {
        Some((a, b)) => match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
            (Ok(IpAddr::V4(a)), Ok(IpAddr::V4(b))) => a <= b,
            (Ok(IpAddr::V6(a)), Ok(IpAddr::V6(b))) => a <= b,
            _ => false,
        },
        None => false,
    }
}

/// A network interface name as Linux takes it.
fn interface_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// An upstream DNS server as CoreDNS' `forward` takes it: an IP, `IP:PORT`, `[IPv6]:PORT` or a resolv.conf path.
fn nameserver_ok(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() || text.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    text.starts_with('/')
        && text.len() > 1
        && !text.contains('\0')
        && !text.chars().any(char::is_whitespace)
}

/// A command line flag: `--name`, without a value.
fn flag_ok(flag: &str) -> bool {
    flag.strip_prefix("--").is_some_and(|name| {
        !name.is_empty()
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    })
}

/// How many bytes a padded standard base64 text holds, or `None` when it is not one.
fn base64_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    let body = &b[..b.len() - pad];
    let ok = pad <= 2
        && body
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/');
    ok.then(|| b.len() / 4 * 3 - pad)
}

fn join_token_ok(token: &str) -> bool {
    !token.is_empty() && token.len() <= 8192 && token.bytes().all(|b| b.is_ascii_graphic())
}

impl Checker<'_> {
    pub(crate) fn kubernetes(&self, raw: RawKubernetes) -> Result<Kubernetes, Error> {
        let distribution = match raw.distribution.get_ref().as_str() {
            "k8s" => Distribution::K8s,
            other => {
                return self.err(
                    raw.distribution.span(),
                    "kubernetes.distribution",
                    format!(
                        "unknown distribution `{other}`: this cairn drives \"k8s\" (Canonical Kubernetes)"
                    ),
                );
            }
        };
        let role = match &raw.role {
            None => Role::default(),
            Some(r) => self.role(r, "kubernetes.role")?,
        };
        let pod_cidr = self.cidrs(raw.pod_cidr, "kubernetes.pod-cidr", DEFAULT_POD_CIDR, false)?;
        let service_cidr = self.cidrs(
            raw.service_cidr,
            "kubernetes.service-cidr",
            DEFAULT_SERVICE_CIDR,
            true,
        )?;
        let mut extra_sans = Vec::new();
        for (i, san) in raw.extra_sans.into_iter().enumerate() {
            let s = san.get_ref();
            if s.parse::<IpAddr>().is_err() && !san_name_ok(s) {
                return self.err(
                    san.span(),
                    &format!("kubernetes.extra-sans[{i}]"),
                    format!("`{s}` is neither a DNS name nor an IP address"),
                );
            }
            extra_sans.push(san.into_inner());
        }
        let hardening = match &raw.hardening {
            None => Hardening::default(),
            Some(h) => Hardening::parse(h.get_ref()).map_or_else(
                || {
                    self.err(
                        h.span(),
                        "kubernetes.hardening",
                        format!(
                            "unknown hardening `{}`: expected cis (the default), stig or none",
                            h.get_ref()
                        ),
                    )
                },
                Ok,
            )?,
        };
        let features = match raw.features {
            None => Features::default(),
            Some(f) => self.features(f, hardening, &service_cidr)?,
        };
        let mut extra_args = BTreeMap::new();
        for (component, flags) in raw.extra_args {
            let c = self.component(&component, "kubernetes.extra-args")?;
            let mut args = BTreeMap::new();
            for (flag, value) in flags {
                let key = format!("kubernetes.extra-args.{}.{}", c.name(), flag.get_ref());
                if !flag_ok(flag.get_ref()) {
                    return self.err(
                        flag.span(),
                        &key,
                        format!(
                            "`{}` is not a flag: a flag starts with -- and holds no value (\"--max-pods\" = \"150\")",
                            flag.get_ref()
                        ),
                    );
                }
                let v = value.get_ref();
                if v.contains(['\n', '\r', '\0']) {
                    return self.err(value.span(), &key, "a flag's value is one line");
                }
                if c == Component::KubeApiserver
                    && flag.get_ref() == "--authorization-mode"
                    && !v.split(',').any(|m| m.trim() == "RBAC")
                {
                    return self.err(
                        value.span(),
                        &key,
                        format!(
                            "`{v}` leaves RBAC out: turning RBAC off is not offered (Node,RBAC is the default)"
                        ),
                    );
                }
                args.insert(flag.into_inner(), value.into_inner());
            }
            extra_args.insert(c, args);
        }
        let mut remove_args = BTreeMap::new();
        for (component, flags) in raw.remove_args {
            let c = self.component(&component, "kubernetes.remove-args")?;
            let mut seen = BTreeSet::new();
            let mut list = Vec::new();
            for (i, flag) in flags.into_iter().enumerate() {
                let key = format!("kubernetes.remove-args.{}[{i}]", c.name());
                let f = flag.get_ref();
                if !flag_ok(f) {
                    return self.err(
                        flag.span(),
                        &key,
                        format!("`{f}` is not a flag: a flag starts with -- and holds no value"),
                    );
                }
                if !seen.insert(f.clone()) {
                    return self.err(flag.span(), &key, format!("`{f}` is removed twice"));
                }
                if extra_args
                    .get(&c)
                    .is_some_and(|a: &BTreeMap<String, String>| a.contains_key(f))
                {
                    return self.err(
                        flag.span(),
                        &key,
                        format!(
                            "`{f}` is both set in kubernetes.extra-args.{} and removed",
                            c.name()
                        ),
                    );
                }
                if c == Component::KubeApiserver && f == "--authorization-mode" {
                    return self.err(
                        flag.span(),
                        &key,
                        "turning RBAC off is not offered: --authorization-mode stays",
                    );
                }
                list.push(flag.into_inner());
            }
            remove_args.insert(c, list);
        }
        Ok(Kubernetes {
            distribution,
            role,
            pod_cidr,
            service_cidr,
            extra_sans,
            hardening,
            features,
            extra_args,
            remove_args,
        })
    }

    fn role(&self, r: &Spanned<String>, key: &str) -> Result<Role, Error> {
        match Role::parse(r.get_ref()) {
            Some(role) => Ok(role),
            None => self.err(
                r.span(),
                key,
                format!(
                    "unknown role `{}`: expected control-plane or worker",
                    r.get_ref()
                ),
            ),
        }
    }

    fn cidrs(
        &self,
        raw: Option<Spanned<String>>,
        key: &str,
        default: &str,
        service: bool,
    ) -> Result<String, Error> {
        let Some(text) = raw else {
            return Ok(default.to_string());
        };
        if let Some(problem) = cidrs_problem(text.get_ref(), service) {
            return self.err(text.span(), key, problem);
        }
        Ok(text.into_inner())
    }

    fn component(&self, name: &Spanned<String>, table: &str) -> Result<Component, Error> {
        match Component::parse(name.get_ref()) {
            Some(c) => Ok(c),
            None => self.err(
                name.span(),
                &format!("{table}.{}", name.get_ref()),
                format!(
                    "unknown component `{}`: expected one of {}",
                    name.get_ref(),
                    Component::names()
                ),
            ),
        }
    }

    fn features(
        &self,
        raw: RawFeatures,
        hardening: Hardening,
        service_cidr: &str,
    ) -> Result<Features, Error> {
        let mut f = Features::default();
        const K: &str = "kubernetes.features";
        // A table without `enabled` leaves the distribution's default.
        fn split<T>(feature: RawFeature<T>, enabled: &mut bool) -> Option<T>
        where
            T: HasEnabled,
        {
            match feature {
                RawFeature::Switch(b) => {
                    *enabled = b;
                    None
                }
                RawFeature::Table(t) => {
                    if let Some(b) = t.enabled() {
                        *enabled = b;
                    }
                    Some(t)
                }
            }
        }
        let mut stig_off = Vec::new();
        if let Some(n) = raw.network
            && let Some(t) = split(n.into_inner(), &mut f.network.enabled)
        {
            f.network.kube_proxy_enabled = t.kube_proxy_enabled;
        }
        if let Some(d) = raw.dns
            && let Some(t) = split(d.into_inner(), &mut f.dns.enabled)
        {
            if let Some(domain) = t.cluster_domain {
                if !dns_subdomain_ok(domain.get_ref()) {
                    return self.err(
                        domain.span(),
                        &format!("{K}.dns.cluster-domain"),
                        format!("`{}` is not a DNS domain", domain.get_ref()),
                    );
                }
                f.dns.cluster_domain = Some(domain.into_inner());
            }
            if let Some(ip) = t.service_ip {
                let key = format!("{K}.dns.service-ip");
                let Ok(addr) = ip.get_ref().parse::<IpAddr>() else {
                    return self.err(
                        ip.span(),
                        &key,
                        format!("`{}` is not an IP address", ip.get_ref()),
                    );
                };
                if f.dns.enabled && !parse_cidrs(service_cidr).iter().any(|c| c.contains(addr)) {
                    return self.err(
                        ip.span(),
                        &key,
                        format!("`{addr}` is outside the service CIDR {service_cidr}"),
                    );
                }
                f.dns.service_ip = Some(addr);
            }
            if let Some(list) = t.upstream_nameservers {
                let mut out = Vec::new();
                for (i, s) in list.into_iter().enumerate() {
                    if !nameserver_ok(s.get_ref()) {
                        return self.err(
                            s.span(),
                            &format!("{K}.dns.upstream-nameservers[{i}]"),
                            format!(
                                "`{}` is not a nameserver: an IP address, IP:PORT or a resolv.conf path",
                                s.get_ref()
                            ),
                        );
                    }
                    out.push(s.into_inner());
                }
                f.dns.upstream_nameservers = Some(out);
            }
        }
        if let Some(ing) = raw.ingress {
            let span = ing.span();
            if let Some(t) = split(ing.into_inner(), &mut f.ingress.enabled) {
                if let Some(s) = t.default_tls_secret {
                    if !dns_subdomain_ok(s.get_ref()) {
                        return self.err(
                            s.span(),
                            &format!("{K}.ingress.default-tls-secret"),
                            format!(
                                "`{}` is not a Secret's name (a-z, 0-9, - and .): name the Kubernetes Secret, never put its content here",
                                s.get_ref()
                            ),
                        );
                    }
                    f.ingress.default_tls_secret = Some(s.into_inner());
                }
                f.ingress.enable_proxy_protocol = t.enable_proxy_protocol;
            }
            if f.ingress.enabled {
                stig_off.push((span, "ingress"));
            }
        }
        if let Some(lb) = raw.load_balancer {
            let span = lb.span();
            if let Some(t) = split(lb.into_inner(), &mut f.load_balancer.enabled) {
                let k = |name: &str| format!("{K}.load-balancer.{name}");
                let l = &mut f.load_balancer;
                for (i, c) in t.cidrs.into_iter().enumerate() {
                    if !pool_ok(c.get_ref()) {
                        return self.err(
                            c.span(),
                            &format!("{K}.load-balancer.cidrs[{i}]"),
                            format!(
                                "`{}` is neither a CIDR nor an address range FIRST-LAST",
                                c.get_ref()
                            ),
                        );
                    }
                    l.cidrs.push(c.into_inner());
                }
                l.l2_mode = t.l2_mode;
                for (i, name) in t.l2_interfaces.into_iter().enumerate() {
                    if !interface_ok(name.get_ref()) {
                        return self.err(
                            name.span(),
                            &format!("{K}.load-balancer.l2-interfaces[{i}]"),
                            format!("`{}` is not a network interface name", name.get_ref()),
                        );
                    }
                    l.l2_interfaces.push(name.into_inner());
                }
                let asn = |v: Option<Spanned<i64>>, name: &str| -> Result<Option<u32>, Error> {
                    match v {
                        None => Ok(None),
                        Some(v) => match u32::try_from(*v.get_ref()) {
                            Ok(n) if n > 0 => Ok(Some(n)),
                            _ => self.err(
                                v.span(),
                                &k(name),
                                format!("{} is not an AS number (1 to 4294967295)", v.get_ref()),
                            ),
                        },
                    }
                };
                l.bgp_local_asn = asn(t.bgp_local_asn, "bgp-local-asn")?;
                l.bgp_peer_asn = asn(t.bgp_peer_asn, "bgp-peer-asn")?;
                if let Some(a) = t.bgp_peer_address {
                    match a.get_ref().parse::<IpAddr>() {
                        Ok(ip) => l.bgp_peer_address = Some(ip),
                        Err(_) => {
                            return self.err(
                                a.span(),
                                &k("bgp-peer-address"),
                                format!("`{}` is not an IP address", a.get_ref()),
                            );
                        }
                    }
                }
                if let Some(p) = t.bgp_peer_port {
                    match u16::try_from(*p.get_ref()) {
                        Ok(port) if port > 0 => l.bgp_peer_port = Some(port),
                        _ => {
                            return self.err(
                                p.span(),
                                &k("bgp-peer-port"),
                                format!("{} is not a port (1 to 65535)", p.get_ref()),
                            );
                        }
                    }
                }
                if let Some(mode) = t.bgp_mode {
                    l.bgp_mode = Some(*mode.get_ref());
                    if *mode.get_ref() {
                        let missing: Vec<&str> = [
                            ("bgp-local-asn", l.bgp_local_asn.is_none()),
                            ("bgp-peer-address", l.bgp_peer_address.is_none()),
                            ("bgp-peer-asn", l.bgp_peer_asn.is_none()),
                            ("bgp-peer-port", l.bgp_peer_port.is_none()),
                        ]
                        .into_iter()
                        .filter(|(_, m)| *m)
                        .map(|(n, _)| n)
                        .collect();
                        if !missing.is_empty() {
                            return self.err(
                                mode.span(),
                                &k("bgp-mode"),
                                format!("BGP mode needs {}", missing.join(", ")),
                            );
                        }
                    }
                }
            }
            if f.load_balancer.enabled {
                stig_off.push((span, "load-balancer"));
            }
        }
        if let Some(ls) = raw.local_storage
            && let Some(t) = split(ls.into_inner(), &mut f.local_storage.enabled)
        {
            if let Some(p) = t.local_path {
                let path = p.get_ref();
                let ok = path.starts_with('/')
                    && path.len() > 1
                    && !path.contains('\0')
                    && path[1..]
                        .trim_end_matches('/')
                        .split('/')
                        .all(|c| !c.is_empty() && c != "." && c != "..");
                if !ok {
                    return self.err(
                        p.span(),
                        &format!("{K}.local-storage.local-path"),
                        format!("`{path}` is not an absolute, normal path"),
                    );
                }
                f.local_storage.local_path = Some(p.into_inner());
            }
            if let Some(r) = t.reclaim_policy {
                let policy = match r.get_ref().as_str() {
                    "Retain" => ReclaimPolicy::Retain,
                    "Recycle" => ReclaimPolicy::Recycle,
                    "Delete" => ReclaimPolicy::Delete,
                    other => {
                        return self.err(
                            r.span(),
                            &format!("{K}.local-storage.reclaim-policy"),
                            format!(
                                "unknown reclaim policy `{other}`: expected Retain, Recycle or Delete"
                            ),
                        );
                    }
                };
                f.local_storage.reclaim_policy = Some(policy);
            }
            f.local_storage.default = t.default;
        }
        if let Some(g) = raw.gateway {
            split(g.into_inner(), &mut f.gateway.enabled);
        }
        if let Some(m) = raw.metrics_server {
            split(m.into_inner(), &mut f.metrics_server.enabled);
        }
        if hardening == Hardening::Stig
            && let Some((span, name)) = stig_off.into_iter().next()
        {
            return self.err(
                span,
                &format!("{K}.{name}"),
                format!(
                    "the stig hardening turns {name} off: leave it off or choose hardening = \"cis\""
                ),
            );
        }
        Ok(f)
    }

    pub(crate) fn preloads(&self, raw: Vec<RawPreload>) -> Result<Vec<Preload>, Error> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, p) in raw.into_iter().enumerate() {
            let rock = self.rock(&p.rock, &format!("preload[{i}].rock"))?;
            let key = format!("preload[{i}].name");
            let name = p.name.get_ref();
            let r = match Reference::parse_unpinned(name) {
                Ok(r) => r,
                Err(e) => {
                    return self.err(
                        p.name.span(),
                        &key,
                        format!("`{name}` is not an image name: {e}"),
                    );
                }
            };
            let problem = if r.digest.is_some() {
                Some(format!(
                    "`{name}` carries a digest: `name` is the name containerd will know the image by, with its tag; the pin is `rock`"
                ))
            } else if r.tag.is_none() {
                Some(format!(
                    "`{name}` has no tag: give the full name with its tag, such as ghcr.io/canonical/coredns:1.14.6-ck0"
                ))
            } else if !name.starts_with(&format!("{}/", r.registry))
                || (r.registry == crate::reference::DOCKER_HUB && !r.repository.contains('/'))
            {
                let repository = if r.repository.contains('/') {
                    r.repository.clone()
                } else {
                    format!("library/{}", r.repository)
                };
                Some(format!(
                    "`{name}` is not a full name: give it as containerd knows it, with its registry: {}/{repository}:{}",
                    r.registry,
                    r.tag.as_deref().unwrap_or("")
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return self.err(p.name.span(), &key, problem);
            }
            if !seen.insert(name.clone()) {
                return self.err(p.name.span(), &key, format!("`{name}` is preloaded twice"));
            }
            out.push(Preload {
                rock,
                name: p.name.into_inner(),
            });
        }
        Ok(out)
    }

    pub(crate) fn kubernetes_instance(
        &self,
        raw: RawInstanceKubernetes,
    ) -> Result<KubernetesInstance, Error> {
        let mut k = KubernetesInstance::default();
        if let Some(r) = &raw.role {
            k.role = Some(self.role(r, "kubernetes.role")?);
        }
        if let Some(t) = raw.join_token {
            // The message never repeats the token.
            if !join_token_ok(t.get_ref()) {
                return self.err(
                    t.span(),
                    "kubernetes.join-token",
                    "the join token must be one word of printable ASCII, as `k8s get-join-token` prints it",
                );
            }
            k.join_token = Some(JoinToken(t.into_inner()));
        }
        if let Some(n) = raw.node_name {
            if !dns_subdomain_ok(n.get_ref()) {
                return self.err(
                    n.span(),
                    "kubernetes.node-name",
                    format!(
                        "`{}` is not a node name: dot-separated labels of a-z, 0-9 and -, at most 253 characters",
                        n.get_ref()
                    ),
                );
            }
            k.node_name = Some(n.into_inner());
        }
        if let Some(a) = raw.address {
            let text = a.get_ref();
            if text.parse::<IpAddr>().is_err() && Cidr::parse(text).is_none() {
                return self.err(
                    a.span(),
                    "kubernetes.address",
                    format!("`{text}` is neither an IP address nor a CIDR"),
                );
            }
            k.address = Some(a.into_inner());
        }
        if let Some(key) = raw.encryption_key {
            // The message never repeats the key.
            if base64_len(key.get_ref().trim()) != Some(32) {
                return self.err(
                    key.span(),
                    "kubernetes.encryption-key",
                    "the secrets encryption key is 32 bytes in base64 (the `secret:` of the first control plane's /var/lib/cairn/kubernetes/encryption-config.yaml)",
                );
            }
            k.encryption_key = Some(EncryptionKey(key.into_inner().trim().to_string()));
        }
        Ok(k)
    }
}

/// Lets [`Checker::features`] read `enabled` off any feature's table.
trait HasEnabled {
    fn enabled(&self) -> Option<bool>;
}

macro_rules! has_enabled {
    ($($t:ty),*) => {
        $(impl HasEnabled for $t {
            fn enabled(&self) -> Option<bool> {
                self.enabled
            }
        })*
    };
}
has_enabled!(
    RawNetwork,
    RawDns,
    RawIngress,
    RawLoadBalancer,
    RawLocalStorage,
    RawToggle
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(cidrs_problem("10.1.0.0/16", false), None);
        assert_eq!(cidrs_problem("10.1.0.0/16,fd01::/108", false), None);
        assert!(cidrs_problem("10.1.0.0/16,10.2.0.0/16", false).is_some());
        assert!(cidrs_problem("10.1.0.0/33", false).is_some());
        assert!(cidrs_problem("10.1.0.0", false).is_some());
        assert!(cidrs_problem("10.0.0.0/8", true).unwrap().contains("/12"));
        assert!(cidrs_problem("fd98::/64", true).unwrap().contains("/108"));
        let c = Cidr::parse("10.152.183.0/24").unwrap();
        assert!(c.contains("10.152.183.10".parse().unwrap()));
        assert!(!c.contains("10.152.184.10".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd98::/108")
                .unwrap()
                .contains("fd98::a".parse().unwrap())
        );
    }

    #[test]
    fn pools_flags_names() {
        assert!(pool_ok("10.0.0.240/28"));
        assert!(pool_ok("10.0.0.1-10.0.0.9"));
        assert!(!pool_ok("10.0.0.9-10.0.0.1"));
        assert!(!pool_ok("10.0.0.1-fd00::1"));
        assert!(flag_ok("--max-pods"));
        assert!(!flag_ok("-v"));
        assert!(!flag_ok("--max-pods=1"));
        assert!(!flag_ok("--"));
        assert!(dns_subdomain_ok("node-1.example.com"));
        assert!(!dns_subdomain_ok("Node_1"));
        assert!(san_name_ok("API.Example.com"));
        assert!(nameserver_ok("1.1.1.1"));
        assert!(nameserver_ok("[fd00::53]:53"));
        assert!(nameserver_ok("/etc/resolv.conf"));
        assert!(!nameserver_ok("dns.example.com"));
        assert!(interface_ok("eth0"));
        assert!(!interface_ok("a-very-long-interface-name"));
    }

    #[test]
    fn join_token_debug_is_redacted() {
        let t = JoinToken("secret-token".into());
        assert_eq!(format!("{t:?}"), "<redacted>");
        assert_eq!(t.expose(), "secret-token");
    }
}
