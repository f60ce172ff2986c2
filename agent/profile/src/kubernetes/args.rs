//! The component arguments: which services a profile may pass flags to, and the checks of
//! `[kubernetes.extra-args]` and `[kubernetes.remove-args]`.

use std::collections::{BTreeMap, BTreeSet};

use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::model::Checker;

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

/// A command line flag: `--name`, without a value.
pub(super) fn flag_ok(flag: &str) -> bool {
    flag.strip_prefix("--").is_some_and(|name| {
        !name.is_empty()
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    })
}

impl Checker<'_> {
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

    /// `[kubernetes.extra-args]`: per component, flag → value.
    pub(super) fn extra_args(
        &self,
        raw: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<String>>>,
    ) -> Result<BTreeMap<Component, BTreeMap<String, String>>, Error> {
        let mut extra_args = BTreeMap::new();
        for (component, flags) in raw {
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
        Ok(extra_args)
    }

    /// `[kubernetes.remove-args]`: per component, flags to drop; none of them also set in `extra_args`.
    pub(super) fn remove_args(
        &self,
        raw: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
        extra_args: &BTreeMap<Component, BTreeMap<String, String>>,
    ) -> Result<BTreeMap<Component, Vec<String>>, Error> {
        let mut remove_args = BTreeMap::new();
        for (component, flags) in raw {
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
        Ok(remove_args)
    }
}
