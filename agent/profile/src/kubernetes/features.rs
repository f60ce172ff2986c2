//! The distribution's features as a checked profile holds them (`[kubernetes.features]`).

use std::net::IpAddr;

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
