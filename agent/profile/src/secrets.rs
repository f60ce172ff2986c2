//! What a profile may never hold: a secret goes into an image's every copy, its build cache and its report.
//!
//! Refused anywhere in the document, before any other check so that the message is this one:
//! - a `join-token` key (a join token arrives with the instance data at boot);
//! - a key ending in `-key` (the distribution's certificate keys: `ca-key`, `apiserver-key`, `datastore-client-key`,
//!   `etcd-peer-key`...), whatever its value; flags (`--kubelet-client-key`, whose value is a path) excepted;
//! - a PEM private key (`-----BEGIN ... PRIVATE KEY-----`) in any string;
//!
//! and, on the build host, a PEM private key in the bytes of a `[[file]]`'s `source`.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;

const NEVER: &str = "a secret never goes into an image";

struct Finding {
    span: Range<usize>,
    key: String,
    message: String,
}

/// The first secret in the document (in document order), as a diagnostic. A document that does not parse is left
/// to the parser's own message.
pub(crate) fn refuse_secrets(file: &Path, text: &str) -> Result<(), Diagnostic> {
    let Ok(doc) = DeTable::parse(text) else {
        return Ok(());
    };
    let mut found = Vec::new();
    walk_table(doc.get_ref(), text, "", &mut found);
    match found.into_iter().min_by_key(|f| f.span.start) {
        None => Ok(()),
        Some(f) => Err(Diagnostic::at(file, text, Some(f.span), &f.key, f.message)),
    }
}

fn walk_table(table: &DeTable<'_>, text: &str, prefix: &str, out: &mut Vec<Finding>) {
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        let normal = name.to_ascii_lowercase().replace('_', "-");
        if normal == "join-token" {
            out.push(Finding {
                span: k.span(),
                key: path.clone(),
                message: format!(
                    "a join token is a secret, and {NEVER}: give it in the node's instance data ([kubernetes] join-token)"
                ),
            });
        } else if normal.ends_with("-key") && !normal.starts_with("--") {
            out.push(Finding {
                span: k.span(),
                key: path.clone(),
                message: format!(
                    "`{name}` is a private key field, and {NEVER}: Canonical Kubernetes generates its keys on the node"
                ),
            });
        }
        if let Some(label) = pem_private_key(name.as_bytes()) {
            out.push(Finding {
                span: k.span(),
                key: path.clone(),
                message: pem_message(&label),
            });
        }
        walk_value(v, text, &path, out);
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, text: &str, path: &str, out: &mut Vec<Finding>) {
    match value.get_ref() {
        DeValue::String(s) => {
            if let Some(label) = pem_private_key(s.as_bytes()) {
                // Point at the marker itself when the string holds it as written.
                let span = value.span();
                let start = text
                    .get(span.clone())
                    .and_then(|raw| raw.find("-----BEGIN"))
                    .map(|i| span.start + i)
                    .unwrap_or(span.start);
                out.push(Finding {
                    span: start..start,
                    key: path.to_string(),
                    message: pem_message(&label),
                });
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, text, &format!("{path}[{i}]"), out);
            }
        }
        DeValue::Table(t) => walk_table(t, text, path, out),
        _ => {}
    }
}

fn pem_message(label: &str) -> String {
    format!("a PEM private key (`-----BEGIN {label}-----`), and {NEVER}")
}

/// The label of the first PEM private key marker in `bytes`: `RSA PRIVATE KEY`, `OPENSSH PRIVATE KEY`,
/// `ENCRYPTED PRIVATE KEY`, `PGP PRIVATE KEY BLOCK`...
pub(crate) fn pem_private_key(bytes: &[u8]) -> Option<String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], BEGIN) {
        let label_start = at + i + BEGIN.len();
        let rest = &bytes[label_start..];
        let end = rest
            .iter()
            .take(64)
            .position(|b| !(b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b' '))
            .unwrap_or(rest.len().min(64));
        let label = &rest[..end];
        if rest[end..].starts_with(b"-----") && find(label, b"PRIVATE KEY").is_some() {
            return Some(String::from_utf8_lossy(label).into_owned());
        }
        at = label_start;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The label and 1-based line of the first PEM private key in a file, read in pieces.
pub(crate) fn pem_private_key_in_file(path: &Path) -> std::io::Result<Option<(String, usize)>> {
    const CHUNK: usize = 1 << 20;
    // A marker is at most 11 + 64 + 5 bytes: keep that much of each piece for the next.
    const KEEP: usize = 96;
    let mut f = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(CHUNK + KEEP);
    let mut lines_before = 0;
    loop {
        let old = buf.len();
        buf.resize(old + CHUNK, 0);
        let n = f.read(&mut buf[old..])?;
        buf.truncate(old + n);
        if let Some(label) = pem_private_key(&buf) {
            let i = find(&buf, format!("-----BEGIN {label}-----").as_bytes()).unwrap_or(0);
            let line = lines_before + buf[..i].iter().filter(|b| **b == b'\n').count() + 1;
            return Ok(Some((label, line)));
        }
        if n == 0 {
            return Ok(None);
        }
        let drop = buf.len().saturating_sub(KEEP);
        lines_before += buf[..drop].iter().filter(|b| **b == b'\n').count();
        buf.drain(..drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_markers() {
        for label in [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
        ] {
            let text = format!("x\n-----BEGIN {label}-----\nMIIE\n-----END {label}-----\n");
            assert_eq!(pem_private_key(text.as_bytes()).as_deref(), Some(label));
        }
        assert_eq!(
            pem_private_key(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
            None
        );
        assert_eq!(pem_private_key(b"-----BEGIN PUBLIC KEY-----"), None);
        assert_eq!(
            pem_private_key(b"-----BEGIN CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----")
                .as_deref(),
            Some("EC PRIVATE KEY")
        );
        assert_eq!(pem_private_key(b"BEGIN RSA PRIVATE KEY"), None);
    }

    #[test]
    fn pem_in_a_big_file_across_pieces() {
        let dir = std::env::temp_dir().join(format!("cairn-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big");
        let mut bytes = vec![b'a'; (1 << 20) - 20];
        bytes.extend_from_slice(b"\n\n-----BEGIN RSA PRIVATE KEY-----\n");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            pem_private_key_in_file(&path).unwrap(),
            Some(("RSA PRIVATE KEY".to_string(), 3))
        );
        std::fs::write(&path, vec![0u8; 3 << 20]).unwrap();
        assert_eq!(pem_private_key_in_file(&path).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
