//! Rock references: `HOST[:PORT]/REPO[:TAG]@sha256:HEX`.
//!
//! The grammar follows the distribution project's reference rules: the first path component is a registry host
//! when it holds a `.` or a `:` or is `localhost`; otherwise the reference is on Docker Hub (and a single-component
//! repository lives under `library/`).

use std::fmt;

/// The registry Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";

/// A `sha256:` content digest (64 lowercase hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:HEX`. Other algorithms are refused: cairn verifies with sha256 only.
    pub fn parse(text: &str) -> Result<Digest, ReferenceError> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| ReferenceError::MalformedDigest(text.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::MalformedDigest(text.to_string()));
        }
        Ok(Digest(text.to_string()))
    }

    /// Builds a digest from raw sha256 output.
    pub fn from_sha256(bytes: &[u8]) -> Digest {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The all-zero digest the example profiles carry until `cairn pin` replaces it: no content has it.
    pub fn is_placeholder(&self) -> bool {
        self.hex().bytes().all(|b| b == b'0')
    }

    /// The hex part, used as a file name in content-addressed stores.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty rock reference")]
    Empty,
    #[error("`{0}` has no digest (a tag alone is not a pin): pin it: cairn pin")]
    Unpinned(String),
    #[error("malformed digest `{0}`: expected sha256: and 64 lowercase hex digits")]
    MalformedDigest(String),
    #[error("malformed registry host `{0}`")]
    MalformedHost(String),
    #[error(
        "malformed repository `{0}`: components are lowercase letters, digits and . _ - separators"
    )]
    MalformedRepository(String),
    #[error("malformed tag `{0}`: letters, digits, _ . - and at most 128 characters")]
    MalformedTag(String),
}

/// A parsed rock reference. The digest, when present, is what is used; the tag only says where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written, or `docker.io`.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference that may lack a digest (what `cairn pin` accepts).
    pub fn parse_unpinned(text: &str) -> Result<Reference, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match text.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d)?)),
            None => (text, None),
        };
        // The tag is after the last ':' that follows the last '/'; a ':' before it is a port.
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&name_tag[..colon], Some(name_tag[colon + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if !name.contains('/') => (DOCKER_HUB.to_string(), format!("library/{name}")),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        check_host(&registry)?;
        check_repository(&repository)?;
        if let Some(t) = &tag {
            check_tag(t)?;
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Parses a reference that must carry a digest (what a profile holds).
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let r = Reference::parse_unpinned(text)?;
        if r.digest.is_none() {
            return Err(ReferenceError::Unpinned(text.to_string()));
        }
        Ok(r)
    }

    /// The pinned digest. Only references made by [`Reference::parse`] are guaranteed to have one.
    pub fn pinned(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The host without its port, brackets kept off IPv6 literals.
    pub fn host(&self) -> &str {
        let r = self.registry.as_str();
        if let Some(rest) = r.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        r.split(':').next().unwrap_or(r)
    }

    /// Loopback registries (localhost, 127.0.0.0/8, ::1) are spoken to over plain HTTP; anything else needs TLS.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        if host == "localhost" || host == "::1" {
            return true;
        }
        match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => false,
        }
    }

    /// The same reference with another digest (the tag is kept): what `cairn pin` writes back.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_host(host: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::MalformedHost(host.to_string());
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => return Ok(()),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(n) = name {
        let ok = !n.is_empty()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(bad());
        }
    }
    if let Some(p) = port
        && (p.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), ReferenceError> {
    let ok = !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|component| {
            let b = component.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
                && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
                && !component.contains("..")
        });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::MalformedRepository(repo.to_string()))
    }
}

/// A tag: letters, digits, `_ . -`, at most 128 characters, not starting with `.` or `-`.
pub fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::MalformedTag(tag.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn full_reference() {
        let r = Reference::parse(&format!("localhost:5000/cairn/node-base:bookworm@{D}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "cairn/node-base");
        assert_eq!(r.tag.as_deref(), Some("bookworm"));
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert!(r.is_loopback());
        assert_eq!(
            r.to_string(),
            format!("localhost:5000/cairn/node-base:bookworm@{D}")
        );
    }

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, None);
        assert!(!r.is_loopback());
        let r = Reference::parse(&format!("canonical/thing:1@{D}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "canonical/thing")
        );
    }

    #[test]
    fn hosts_and_loopback() {
        for (text, loopback) in [
            ("127.0.0.1:5000/a", true),
            ("127.1.2.3/a", true),
            ("[::1]:5000/a", true),
            ("ghcr.io/canonical/coredns", false),
            ("10.0.0.1:5000/a", false),
        ] {
            let r = Reference::parse_unpinned(text).unwrap();
            assert_eq!(r.is_loopback(), loopback, "{text}");
        }
        assert_eq!(
            Reference::parse_unpinned("[::1]:5000/a").unwrap().host(),
            "::1"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Reference::parse("ghcr.io/canonical/coredns:1.0"),
            Err(ReferenceError::Unpinned(
                "ghcr.io/canonical/coredns:1.0".into()
            ))
        );
        assert!(matches!(
            Reference::parse("ghcr.io/a@sha256:abc"),
            Err(ReferenceError::MalformedDigest(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("ghcr.io/a@md5:{}", &D[7..])),
            Err(ReferenceError::MalformedDigest(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("ghcr.io/A@{D}")),
            Err(ReferenceError::MalformedRepository(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("ghcr.io/a:-x@{D}")),
            Err(ReferenceError::MalformedTag(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("bad_host.io:99999/a@{D}")),
            Err(ReferenceError::MalformedHost(_))
        ));
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
    }
}
