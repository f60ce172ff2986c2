//! The Kubernetes sections: the profile's `[kubernetes]` and `[[preload]]`, and the instance data's `[kubernetes]`.
//!
//! The keys follow Canonical Kubernetes' bootstrap configuration (`shared/notes/canonical-kubernetes.md`): a
//! feature is `true`/`false` or a table holding `enabled` and only the keys the distribution documents for it.
//! Nothing here is a secret: a join token arrives with the instance data, and certificate keys are generated on
//! the node (see `secrets.rs` for what a profile may never hold).
//!
//! The model and parsing of `[kubernetes]` live here; the features in `features.rs` (model) and
//! `features_check.rs` (raw form and checks), the component arguments in `args.rs`, `[[preload]]` in
//! `preload.rs`, the instance data's section and its secrets in `instance.rs`, and the CIDR and name checks in
//! `net.rs`.

mod args;
mod features;
mod features_check;
mod instance;
mod net;
mod preload;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_spanned::Spanned;

pub use args::Component;
pub use features::{
    Dns, Features, Ingress, LoadBalancer, LocalStorage, Network, ReclaimPolicy, Toggle,
};
pub(crate) use instance::RawInstanceKubernetes;
pub use instance::{EncryptionKey, JoinToken, KubernetesInstance};
pub use net::{Cidr, dns_subdomain_ok};
pub use preload::Preload;
pub(crate) use preload::RawPreload;

use crate::diagnostic::Error;
use crate::model::Checker;
use features_check::RawFeatures;
use net::{cidrs_problem, san_name_ok};

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
        let extra_args = self.extra_args(raw.extra_args)?;
        let remove_args = self.remove_args(raw.remove_args, &extra_args)?;
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
}

#[cfg(test)]
mod tests {
    use super::args::flag_ok;
    use super::net::{cidrs_problem, interface_ok, nameserver_ok, pool_ok, san_name_ok};
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
