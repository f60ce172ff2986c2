//! Instance data: what differs per machine, in the profile's own shape, restricted to what may differ.
//!
//! Its scalars override the profile's; its lists add to them, and an entry with the same user name or file path
//! replaces the profile's. Files may only go where a node is writable.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::kubernetes::{Kubernetes, KubernetesInstance, RawInstanceKubernetes};
use crate::model::{Checker, FileEntry, Profile, RawFile, SCHEMA, Sources, deserialize};
use crate::system::{RawUser, User};

/// Where an instance `[[file]]` may be written: the image's root is read-only, only these live on writable storage.
pub const INSTANCE_WRITABLE: &[&str] = &["/etc/", "/var/", "/home/", "/root/", "/srv/"];

#[derive(Debug, Clone, Default)]
pub struct Instance {
    pub hostname: Option<String>,
    pub users: Vec<User>,
    pub files: Vec<FileEntry>,
    /// `[kubernetes]`: role, join token, node name, address. The join token belongs here, never in a profile.
    pub kubernetes: KubernetesInstance,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    schema: Option<Spanned<i64>>,
    system: Option<RawInstanceSystem>,
    #[serde(default)]
    user: Vec<RawUser>,
    #[serde(default)]
    file: Vec<RawFile>,
    kubernetes: Option<RawInstanceKubernetes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstanceSystem {
    hostname: Option<Spanned<String>>,
}

impl Instance {
    /// Parses instance data; `source` names where it came from in messages (`fw_cfg opt/cairn/instance.toml`).
    pub fn parse(source: &str, text: &str) -> Result<Instance, Error> {
        let file = Path::new(source);
        let raw: RawInstance = deserialize(file, text)?;
        let c = Checker {
            file,
            text,
            sources: Sources::Baked,
        };
        if let Some(s) = &raw.schema
            && *s.get_ref() != SCHEMA
        {
            return c.err(
                s.span(),
                "schema",
                format!(
                    "unsupported schema {}: this agent reads schema {SCHEMA}",
                    s.get_ref()
                ),
            );
        }
        let hostname = match raw.system.and_then(|s| s.hostname) {
            Some(h) => Some(c.hostname(h)?),
            None => None,
        };
        let users = c.users(raw.user)?;
        let mut files = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, f) in raw.file.into_iter().enumerate() {
            if let Some(s) = &f.source {
                return c.err(
                    s.span(),
                    &format!("file[{i}].source"),
                    "instance data has no folder beside it: give content",
                );
            }
            c.path_line(&f.path, &format!("file[{i}].path"))?;
            let path = f.path.get_ref();
            if !INSTANCE_WRITABLE.iter().any(|w| path.starts_with(w)) {
                return c.err(
                    f.path.span(),
                    &format!("file[{i}].path"),
                    format!("`{path}` is on the read-only part of the node: instance files go under /etc, /var, /home, /root or /srv"),
                );
            }
            let span = f.path.span();
            let entry = c.file_entry(f, i)?;
            if !seen.insert(entry.path.clone()) {
                return c.err(
                    span,
                    &format!("file[{i}].path"),
                    format!("`{}` is written twice", entry.path),
                );
            }
            files.push(entry);
        }
        let kubernetes = match raw.kubernetes {
            Some(k) => c.kubernetes_instance(k)?,
            None => KubernetesInstance::default(),
        };
        Ok(Instance {
            hostname,
            users,
            files,
            kubernetes,
        })
    }
}

/// What the agent applies: the profile with the instance data merged in.
#[derive(Debug, Clone)]
pub struct Merged {
    pub hostname: Option<String>,
    pub users: Vec<User>,
    /// Files from the instance data (the profile's own are in the image already).
    pub files: Vec<FileEntry>,
    /// The profile's `[kubernetes]` with the instance's role, when it gives one, in place of the profile's.
    pub kubernetes: Option<Kubernetes>,
    /// The instance's own `[kubernetes]` values: join token, node name, address (and the role it gave).
    pub kubernetes_instance: KubernetesInstance,
}

impl Profile {
    /// Merges instance data into the profile's settings.
    pub fn merge(&self, instance: Option<&Instance>) -> Merged {
        let mut users = self.users.clone();
        let mut hostname = self.system.hostname.clone();
        let mut files = Vec::new();
        let mut kubernetes = self.kubernetes.clone();
        let mut kubernetes_instance = KubernetesInstance::default();
        if let Some(i) = instance {
            if let (Some(k), Some(role)) = (kubernetes.as_mut(), i.kubernetes.role) {
                k.role = role;
            }
            kubernetes_instance = i.kubernetes.clone();
            if i.hostname.is_some() {
                hostname = i.hostname.clone();
            }
            for u in &i.users {
                match users.iter_mut().find(|p| p.name == u.name) {
                    Some(p) => *p = u.clone(),
                    None => users.push(u.clone()),
                }
            }
            files = i.files.clone();
        }
        Merged {
            hostname,
            users,
            files,
            kubernetes,
            kubernetes_instance,
        }
    }
}
