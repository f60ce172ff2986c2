//! The sections the agent applies: `[system]` and `[[user]]`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::model::Checker;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct System {
    /// A template: `{machine-id}` or `{machine-id:N}` (its first N hex digits) stand for the machine's id.
    pub hostname: Option<String>,
    pub timezone: Option<String>,
    /// For the bootable image's loader entry.
    pub kernel_cmdline: Vec<String>,
    pub sysctl: BTreeMap<String, String>,
    pub modules: Vec<String>,
    pub services: Services,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    pub enable: Vec<String>,
    pub disable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub ssh_keys: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSystem {
    hostname: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    kernel_cmdline: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) sysctl: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
    services: Option<RawServices>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    #[serde(default)]
    enable: Vec<Spanned<String>>,
    #[serde(default)]
    disable: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUser {
    name: Spanned<String>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    ssh_keys: Vec<Spanned<String>>,
}

/// The hostname a template gives for a machine id (32 lowercase hex digits).
pub fn render_hostname(template: &str, machine_id: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let field = &rest[start + 1..start + end];
        match field.split_once(':') {
            Some(("machine-id", n)) => {
                let n = n
                    .parse::<usize>()
                    .unwrap_or(machine_id.len())
                    .min(machine_id.len());
                out.push_str(&machine_id[..n]);
            }
            _ if field == "machine-id" => out.push_str(machine_id),
            _ => out.push_str(&rest[start..=start + end]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Why a hostname template is not one, or None.
fn hostname_problem(template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            return Some("an unclosed {".into());
        };
        let field = &rest[start + 1..start + end];
        let ok = field == "machine-id"
            || field
                .strip_prefix("machine-id:")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| (1..=32).contains(&n));
        if !ok {
            return Some(format!(
                "unknown placeholder {{{field}}}: use {{machine-id}} or {{machine-id:N}}, N from 1 to 32"
            ));
        }
        rest = &rest[start + end + 1..];
    }
    let sample = render_hostname(template, "0123456789abcdef0123456789abcdef");
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if sample.len() > 64 || !sample.split('.').all(label_ok) {
        return Some(format!(
            "`{sample}` is not a valid hostname: dot-separated labels of letters, digits and -, at most 64 characters"
        ));
    }
    None
}

fn unit_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
        && !name.starts_with('.')
}

/// The unit a `services` entry names: a bare name means its `.service`.
pub fn unit_file_name(name: &str) -> String {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".timer", ".path", ".target", ".mount",
    ];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn ssh_key_problem(key: &str) -> Option<String> {
    if key.contains('\n') || key.contains('\r') {
        return Some("one key per string: no line breaks".into());
    }
    if let Some(c) = crate::control::in_line(key) {
        return Some(crate::control::line_message(c));
    }
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    if !SSH_KEY_TYPES.contains(&kind) {
        return Some(format!(
            "`{kind}` is not an SSH public key type ({})",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let body = parts.next().unwrap_or("");
    let base64_ok = body.len() >= 16
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if !base64_ok {
        return Some("the key's base64 body is missing or malformed".into());
    }
    None
}

/// A user name useradd would accept.
pub fn user_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-".contains(c))
}

impl Checker<'_> {
    pub(crate) fn hostname(&self, h: Spanned<String>) -> Result<String, Error> {
        self.one_line(&h, "system.hostname")?;
        if let Some(problem) = hostname_problem(h.get_ref()) {
            return self.err(h.span(), "system.hostname", problem);
        }
        Ok(h.into_inner())
    }

    pub(crate) fn system(&self, raw: RawSystem) -> Result<System, Error> {
        let mut system = System::default();
        if let Some(h) = raw.hostname {
            system.hostname = Some(self.hostname(h)?);
        }
        if let Some(tz) = raw.timezone {
            let t = tz.get_ref();
            let ok = !t.is_empty()
                && !t.starts_with('/')
                && t.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
            if !ok {
                return self.err(
                    tz.span(),
                    "system.timezone",
                    format!("`{t}` is not a time zone name such as \"UTC\" or \"Europe/Paris\""),
                );
            }
            system.timezone = Some(tz.into_inner());
        }
        for (i, arg) in raw.kernel_cmdline.into_iter().enumerate() {
            if arg.get_ref().is_empty()
                || arg
                    .get_ref()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                return self.err(
                    arg.span(),
                    &format!("system.kernel-cmdline[{i}]"),
                    "one argument per string, without spaces",
                );
            }
            if arg.get_ref().starts_with(crate::contract::CMDLINE_PREFIX)
                || arg.get_ref().starts_with("roothash=")
            {
                return self.err(
                    arg.span(),
                    &format!("system.kernel-cmdline[{i}]"),
                    format!("`{}` is set by cairn itself", arg.get_ref()),
                );
            }
            system.kernel_cmdline.push(arg.into_inner());
        }
        for (key, value) in raw.sysctl {
            let k = key.get_ref();
            let key_ok = !k.is_empty()
                && !k.starts_with(['.', '/'])
                && !k.contains("..")
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/*".contains(&b));
            if !key_ok {
                return self.err(
                    key.span(),
                    &format!("system.sysctl.{k}"),
                    format!("`{k}` is not a sysctl name"),
                );
            }
            if value.get_ref().contains('\n') {
                return self.err(
                    value.span(),
                    &format!("system.sysctl.{k}"),
                    "a sysctl value is one line",
                );
            }
            system.sysctl.insert(key.into_inner(), value.into_inner());
        }
        for (i, m) in raw.modules.into_iter().enumerate() {
            if m.get_ref().is_empty()
                || !m
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return self.err(
                    m.span(),
                    &format!("system.modules[{i}]"),
                    format!("`{}` is not a kernel module name", m.get_ref()),
                );
            }
            system.modules.push(m.into_inner());
        }
        if let Some(services) = raw.services {
            let mut seen = BTreeSet::new();
            for (list, names, out) in [
                ("enable", services.enable, &mut system.services.enable),
                ("disable", services.disable, &mut system.services.disable),
            ] {
                for (i, s) in names.into_iter().enumerate() {
                    let key = format!("system.services.{list}[{i}]");
                    if !unit_name_ok(s.get_ref()) {
                        return self.err(
                            s.span(),
                            &key,
                            format!("`{}` is not a unit name", s.get_ref()),
                        );
                    }
                    if !seen.insert(unit_file_name(s.get_ref())) {
                        return self.err(
                            s.span(),
                            &key,
                            format!("`{}` is named twice in services", s.get_ref()),
                        );
                    }
                    out.push(s.into_inner());
                }
            }
        }
        Ok(system)
    }

    pub(crate) fn users(&self, raw: Vec<RawUser>) -> Result<Vec<User>, Error> {
        let mut seen = BTreeSet::new();
        let mut users = Vec::with_capacity(raw.len());
        for (i, u) in raw.into_iter().enumerate() {
            self.one_line(&u.name, &format!("user[{i}].name"))?;
            let name = u.name.get_ref();
            if !user_name_ok(name) {
                return self.err(u.name.span(), &format!("user[{i}].name"), format!("`{name}` is not a user name: a-z, 0-9, _ and -, starting with a letter or _, at most 32"));
            }
            if !seen.insert(name.clone()) {
                return self.err(
                    u.name.span(),
                    &format!("user[{i}].name"),
                    format!("user `{name}` is defined twice"),
                );
            }
            let mut groups = Vec::new();
            for (j, g) in u.groups.into_iter().enumerate() {
                self.one_line(&g, &format!("user[{i}].groups[{j}]"))?;
                if !user_name_ok(g.get_ref()) {
                    return self.err(
                        g.span(),
                        &format!("user[{i}].groups[{j}]"),
                        format!("`{}` is not a group name", g.get_ref()),
                    );
                }
                groups.push(g.into_inner());
            }
            let mut ssh_keys = Vec::new();
            for (j, k) in u.ssh_keys.into_iter().enumerate() {
                if let Some(problem) = ssh_key_problem(k.get_ref()) {
                    return self.err(k.span(), &format!("user[{i}].ssh-keys[{j}]"), problem);
                }
                ssh_keys.push(k.into_inner());
            }
            users.push(User {
                name: u.name.into_inner(),
                groups,
                ssh_keys,
            });
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_templates() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(render_hostname("edge-{machine-id:8}", id), "edge-01234567");
        assert_eq!(render_hostname("n{machine-id}", id), format!("n{id}"));
        assert_eq!(render_hostname("plain", id), "plain");
        assert_eq!(hostname_problem("edge-{machine-id:8}"), None);
        assert!(
            hostname_problem("edge-{serial}")
                .unwrap()
                .contains("unknown placeholder {serial}")
        );
        assert!(
            hostname_problem("bad_name")
                .unwrap()
                .contains("not a valid hostname")
        );
        assert!(hostname_problem("x{machine-id:40}").is_some());
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_file_name("containerd"), "containerd.service");
        assert_eq!(unit_file_name("fstrim.timer"), "fstrim.timer");
    }

    #[test]
    fn ssh_keys() {
        assert_eq!(
            ssh_key_problem("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc ops@x"),
            None
        );
        assert!(
            ssh_key_problem("ssh-dss AAAAB3NzaC1kc3MAAACBAP")
                .unwrap()
                .contains("not an SSH public key type")
        );
        assert!(
            ssh_key_problem("ssh-ed25519")
                .unwrap()
                .contains("base64 body")
        );
    }
}
