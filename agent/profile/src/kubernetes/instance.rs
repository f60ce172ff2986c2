//! The instance data's `[kubernetes]`: what differs per machine, and the secrets it carries (the join token and
//! the secrets encryption key), kept out of `Debug` output.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::Role;
use super::net::{Cidr, dns_subdomain_ok};
use crate::diagnostic::Error;
use crate::model::Checker;

/// A join token: kept out of `Debug` output so that it never lands in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(pub(super) String);

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawInstanceKubernetes {
    role: Option<Spanned<String>>,
    join_token: Option<Spanned<String>>,
    node_name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    encryption_key: Option<Spanned<String>>,
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
            self.one_line(&n, "kubernetes.node-name")?;
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
            self.one_line(&a, "kubernetes.address")?;
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
