//! The hardening presets (`cis`, `stig`, `none`) and the effective component arguments of a node.
//!
//! Both commands need this: the builder lists the effective arguments per role in its report, the agent writes them
//! into the distribution's bootstrap or join file. A preset's arguments come first, then the profile's
//! `extra-args`, then its `remove-args` (a removed flag is `None`: the distribution's files take `null` to delete
//! a flag). The figures are `shared/notes/canonical-kubernetes.md`'s; the distribution's own defaults are
//! restated under `cis` and `stig` so that a change of upstream default cannot weaken a hardened node silently.

use std::collections::BTreeMap;

use crate::kubernetes::{Component, Hardening, Kubernetes, Role};

/// Where the agent writes the files the presets point the API server at (0700; files 0600 root:root).
pub const KUBERNETES_DIR: &str = "/var/lib/cairn/kubernetes";
pub const ADMISSION_CONFIG: &str = "/var/lib/cairn/kubernetes/admission-control.yaml";
pub const AUDIT_POLICY: &str = "/var/lib/cairn/kubernetes/audit-policy.yaml";
/// Holds the secrets encryption key: generated on the control plane at first boot, never at build time.
pub const ENCRYPTION_CONFIG: &str = "/var/lib/cairn/kubernetes/encryption-config.yaml";
pub const AUDIT_LOG: &str = "/var/log/kubernetes/audit.log";

/// Per component, flag → value (`None`: the flag is removed).
pub type Arguments = BTreeMap<Component, BTreeMap<String, Option<String>>>;

const TLS_CIPHER_SUITES: &str = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,\
TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,\
TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305";

/// The kernel settings `--protect-kernel-defaults` checks: without them a kubelet so hardened refuses to start.
const KERNEL_DEFAULTS: &[(&str, &str)] = &[
    ("kernel.keys.root_maxbytes", "25000000"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];

impl Role {
    /// The services the distribution runs for this role, whose arguments its files can carry.
    pub fn components(self) -> &'static [Component] {
        match self {
            Role::ControlPlane => &[
                Component::KubeApiserver,
                Component::KubeControllerManager,
                Component::KubeScheduler,
                Component::KubeProxy,
                Component::Kubelet,
                Component::Containerd,
                Component::Etcd,
            ],
            Role::Worker => &[
                Component::KubeProxy,
                Component::Kubelet,
                Component::Containerd,
                Component::K8sApiserverProxy,
            ],
        }
    }
}

impl Hardening {
    /// The sysctls the preset needs on the node, sorted by key.
    pub fn sysctls(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Hardening::Cis | Hardening::Stig => KERNEL_DEFAULTS,
            Hardening::None => &[],
        }
    }

    /// The admission plugins the API server enables under this preset (`None`: the distribution's default).
    fn admission_plugins(self) -> Option<&'static str> {
        match self {
            Hardening::Cis => Some("NodeRestriction,EventRateLimit"),
            Hardening::Stig => {
                Some("NodeRestriction,EventRateLimit,PodSecurity,ValidatingAdmissionPolicy")
            }
            Hardening::None => None,
        }
    }

    /// The preset's own arguments for one component.
    fn arguments(self, component: Component) -> Vec<(&'static str, Option<String>)> {
        if self == Hardening::None {
            return Vec::new();
        }
        let s = |v: &str| Some(v.to_string());
        let mut args = match component {
            Component::KubeApiserver => vec![
                ("--anonymous-auth", s("false")),
                ("--authorization-mode", s("Node,RBAC")),
                ("--profiling", s("false")),
                ("--audit-log-path", s(AUDIT_LOG)),
                ("--audit-log-maxage", s("30")),
                ("--audit-log-maxbackup", s("10")),
                ("--audit-log-maxsize", s("100")),
                ("--audit-policy-file", s(AUDIT_POLICY)),
                ("--encryption-provider-config", s(ENCRYPTION_CONFIG)),
                ("--admission-control-config-file", s(ADMISSION_CONFIG)),
                (
                    "--enable-admission-plugins",
                    self.admission_plugins().map(String::from),
                ),
                ("--tls-cipher-suites", s(TLS_CIPHER_SUITES)),
            ],
            Component::KubeControllerManager => vec![
                ("--profiling", s("false")),
                ("--bind-address", s("127.0.0.1")),
                ("--use-service-account-credentials", s("true")),
                ("--feature-gates", s("RotateKubeletServerCertificate=true")),
                ("--terminated-pod-gc-threshold", s("12500")),
            ],
            Component::KubeScheduler => {
                vec![
                    ("--profiling", s("false")),
                    ("--bind-address", s("127.0.0.1")),
                ]
            }
            Component::Kubelet => vec![
                ("--anonymous-auth", s("false")),
                ("--authorization-mode", s("Webhook")),
                ("--read-only-port", s("0")),
                ("--protect-kernel-defaults", s("true")),
                ("--streaming-connection-idle-timeout", s("5m")),
                ("--make-iptables-util-chains", s("true")),
                ("--tls-cipher-suites", s(TLS_CIPHER_SUITES)),
                // No `--hostname-override` here: k8sd sets it when the node's name differs from its hostname
                // (canonical/k8sd pkg/k8sd/setup/kubelet.go), and a kubelet without it registers under the
                // hostname, so a node named otherwise would never register under its name.
            ],
            Component::Etcd => vec![
                ("--client-cert-auth", s("true")),
                ("--peer-client-cert-auth", s("true")),
                ("--auto-tls", None),
                ("--peer-auto-tls", None),
            ],
            Component::KubeProxy | Component::Containerd | Component::K8sApiserverProxy => {
                Vec::new()
            }
        };
        if self == Hardening::Stig && component == Component::KubeApiserver {
            args.push(("--feature-gates", s("AllAlpha=false")));
        }
        args
    }
}

/// The effective arguments of every component a node of `role` runs: preset, then `extra-args`, then
/// `remove-args`. Components with none are left out.
pub fn arguments(k: &Kubernetes, role: Role) -> Arguments {
    let mut out = Arguments::new();
    for &component in role.components() {
        let mut args: BTreeMap<String, Option<String>> = k
            .hardening
            .arguments(component)
            .into_iter()
            .map(|(flag, value)| (flag.to_string(), value))
            .collect();
        if let Some(extra) = k.extra_args.get(&component) {
            for (flag, value) in extra {
                args.insert(flag.clone(), Some(value.clone()));
            }
        }
        if let Some(remove) = k.remove_args.get(&component) {
            for flag in remove {
                args.insert(flag.clone(), None);
            }
        }
        if !args.is_empty() {
            out.insert(component, args);
        }
    }
    out
}

/// The one AdmissionConfiguration file for every plugin the preset configures (`None` under `none`).
pub fn admission_config(h: Hardening) -> Option<String> {
    let event_rate_limit = "\
- name: EventRateLimit
  configuration:
    apiVersion: eventratelimit.admission.k8s.io/v1alpha1
    kind: Configuration
    limits:
    - type: Server
      qps: 5000
      burst: 20000
    - type: Namespace
      qps: 500
      burst: 2000
      cacheSize: 4096
";
    // Baseline everywhere but the namespaces whose system pods (the CNI, the load balancer's speakers) need
    // host access.
    let pod_security = "\
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: latest
      audit: restricted
      audit-version: latest
      warn: restricted
      warn-version: latest
    exemptions:
      usernames: []
      runtimeClasses: []
      namespaces: [kube-system, metallb-system]
";
    let head = "# Written by cairn-agent: the admission plugins' configuration of the hardening preset.\n\
apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n";
    match h {
        Hardening::Cis => Some(format!("{head}{event_rate_limit}")),
        Hardening::Stig => Some(format!("{head}{event_rate_limit}{pod_security}")),
        Hardening::None => None,
    }
}

/// The audit level of every request under a preset: `cis`, the metadata only (no request or response body, which
/// would carry secrets); `stig`, `RequestResponse`, the bodies too, as DISA's V-242403 asks and the distribution's
/// own STIG policy has it (canonical/k8s-snap k8s/resources/configurations/audit-policy.yaml, which its
/// disa-stig/*.yaml files name). `None` under `none`.
pub fn audit_level(h: Hardening) -> Option<&'static str> {
    match h {
        Hardening::Cis => Some("Metadata"),
        Hardening::Stig => Some("RequestResponse"),
        Hardening::None => None,
    }
}

/// The audit policy: every request at [`audit_level`], health probes left out.
pub fn audit_policy(h: Hardening) -> Option<String> {
    audit_level(h).map(|level| {
        format!(
            "# Written by cairn-agent: the audit policy of the hardening preset.\n\
apiVersion: audit.k8s.io/v1\n\
kind: Policy\n\
omitStages:\n\
- RequestReceived\n\
rules:\n\
- level: None\n\
  nonResourceURLs:\n\
  - /healthz*\n\
  - /livez*\n\
  - /readyz*\n\
  - /version\n\
- level: {level}\n"
        )
    })
}

/// The secrets encryption configuration around a base64 key of 32 random bytes made on the node.
pub fn encryption_config(key_base64: &str) -> String {
    format!(
        "# Written by cairn-agent at first boot: this node's own key; it never leaves the node.\n\
apiVersion: apiserver.config.k8s.io/v1\n\
kind: EncryptionConfiguration\n\
resources:\n\
- resources:\n\
  - secrets\n\
  providers:\n\
  - aesgcm:\n\
      keys:\n\
      - name: cairn-1\n\
        secret: {key_base64}\n\
  - identity: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Profile;
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

    fn arg<'a>(a: &'a Arguments, c: Component, flag: &str) -> Option<&'a Option<String>> {
        a.get(&c).and_then(|m| m.get(flag))
    }

    #[test]
    fn cis_is_the_default_and_covers_each_control_plane_component() {
        let k = kubernetes("");
        assert_eq!(k.hardening, Hardening::Cis);
        let a = arguments(&k, Role::ControlPlane);
        assert_eq!(
            a.keys().copied().collect::<Vec<_>>(),
            [
                Component::KubeApiserver,
                Component::KubeControllerManager,
                Component::KubeScheduler,
                Component::Kubelet,
                Component::Etcd
            ]
        );
        assert_eq!(
            arg(&a, Component::KubeApiserver, "--enable-admission-plugins"),
            Some(&Some("NodeRestriction,EventRateLimit".into()))
        );
        assert_eq!(
            arg(&a, Component::KubeApiserver, "--encryption-provider-config"),
            Some(&Some(ENCRYPTION_CONFIG.into()))
        );
        assert_eq!(
            arg(&a, Component::Kubelet, "--protect-kernel-defaults"),
            Some(&Some("true".into()))
        );
        assert_eq!(arg(&a, Component::Etcd, "--auto-tls"), Some(&None));
        // The kubelet's --hostname-override is left to the distribution, which sets it when the node's name is
        // not its hostname: deleting it would keep such a node from registering.
        for h in ["", "hardening = \"stig\"\n"] {
            for role in [Role::ControlPlane, Role::Worker] {
                let a = arguments(&kubernetes(h), role);
                assert_eq!(arg(&a, Component::Kubelet, "--hostname-override"), None);
            }
        }
        assert_eq!(Hardening::Cis.sysctls().len(), 6);
        assert!(
            admission_config(Hardening::Cis)
                .unwrap()
                .contains("EventRateLimit")
        );
        assert!(
            !admission_config(Hardening::Cis)
                .unwrap()
                .contains("PodSecurity")
        );
    }

    #[test]
    fn a_worker_gets_only_its_own_components() {
        let a = arguments(&kubernetes(""), Role::Worker);
        assert_eq!(a.keys().copied().collect::<Vec<_>>(), [Component::Kubelet]);
    }

    #[test]
    fn extra_and_remove_args_apply_after_the_preset() {
        let k = kubernetes(
            "[kubernetes.extra-args]\nkubelet = { \"--max-pods\" = \"150\", \"--read-only-port\" = \"10255\" }\n\
             [kubernetes.remove-args]\nkube-apiserver = [\"--profiling\"]\n",
        );
        let a = arguments(&k, Role::ControlPlane);
        assert_eq!(
            arg(&a, Component::Kubelet, "--max-pods"),
            Some(&Some("150".into()))
        );
        assert_eq!(
            arg(&a, Component::Kubelet, "--read-only-port"),
            Some(&Some("10255".into()))
        );
        assert_eq!(
            arg(&a, Component::KubeApiserver, "--profiling"),
            Some(&None)
        );
    }

    #[test]
    fn stig_adds_to_cis_and_none_adds_nothing() {
        let a = arguments(&kubernetes("hardening = \"stig\"\n"), Role::ControlPlane);
        assert_eq!(
            arg(&a, Component::KubeApiserver, "--feature-gates"),
            Some(&Some("AllAlpha=false".into()))
        );
        assert!(
            admission_config(Hardening::Stig)
                .unwrap()
                .contains("enforce: baseline")
        );
        // The STIG audits bodies too (V-242403, the snap's own STIG policy); CIS only metadata.
        let stig = audit_policy(Hardening::Stig).unwrap();
        assert!(stig.ends_with("- level: RequestResponse\n"), "{stig}");
        assert!(!stig.contains("level: Metadata"), "{stig}");
        let cis = audit_policy(Hardening::Cis).unwrap();
        assert!(cis.ends_with("- level: Metadata\n"), "{cis}");
        let k = kubernetes(
            "hardening = \"none\"\n[kubernetes.extra-args]\nkubelet = { \"--max-pods\" = \"150\" }\n",
        );
        let a = arguments(&k, Role::ControlPlane);
        assert_eq!(a.len(), 1);
        assert_eq!(a[&Component::Kubelet].len(), 1);
        assert!(Hardening::None.sysctls().is_empty());
        assert!(
            admission_config(Hardening::None).is_none() && audit_policy(Hardening::None).is_none()
        );
    }

    #[test]
    fn a_profile_sysctl_against_protect_kernel_defaults_is_refused() {
        let text = |extra: &str| {
            format!(
                "schema = 1\nname = \"n\"\nversion = \"1\"\narch = \"amd64\"\n[base]\nrock = \"localhost:5000/b@sha256:{}\"\n\
                 [system]\nsysctl = {{ \"vm.overcommit_memory\" = \"0\", \"vm.swappiness\" = \"10\" }}\n\
                 [kubernetes]\ndistribution = \"k8s\"\n{extra}",
                "a".repeat(64)
            )
        };
        let e = Profile::parse(Path::new("p.toml"), text(""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.toml:8:37: `system.sysctl.vm.overcommit_memory`: the kubelet runs with --protect-kernel-defaults=true"),
            "{e}"
        );
        // Dropping the flag, or the preset, makes it the platform team's choice.
        for extra in [
            "[kubernetes.remove-args]\nkubelet = [\"--protect-kernel-defaults\"]\n",
            "hardening = \"none\"\n",
        ] {
            assert!(
                Profile::parse(Path::new("p.toml"), text(extra)).is_ok(),
                "{extra}"
            );
        }
    }

    #[test]
    fn the_encryption_config_carries_the_key() {
        let c = encryption_config("S0VZ");
        assert!(c.contains("secret: S0VZ\n") && c.contains("- aesgcm:"));
    }
}
