//! `[kubernetes.features]` as the document holds it, and its checks into [`Features`].

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use serde_spanned::Spanned;

use super::Hardening;
use super::features::{Features, ReclaimPolicy};
use super::net::{dns_subdomain_ok, interface_ok, nameserver_ok, parse_cidrs, pool_ok};
use crate::diagnostic::Error;
use crate::model::Checker;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawFeatures {
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

impl Checker<'_> {
    pub(super) fn features(
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
