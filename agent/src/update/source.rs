//! Where an update comes from: `HOST[:PORT]/REPOSITORY@sha256:DIGEST` (an OCI registry, the distribution API's
//! manifest and blob GETs) or `oci-layout:DIR@sha256:DIGEST` (an OCI image layout folder, e.g. on removable
//! media). Either way, only a digest is accepted and every byte is checked against it: the manifest here, each
//! blob by [`Checked`] as it streams to where it goes.
//!
//! The registry client is this module's own, over the agent's HTTP client ([`http`]): the static agent needs
//! only two anonymous GETs, and the registry crates of the field (oci-client and its kind) bring an async runtime
//! and a second TLS and HTTP stack into an 8 MB budget. It speaks what the distribution spec and every registry
//! need for a pull: HTTPS (plain HTTP only to the node's own loopback), the `Bearer` token challenge answered
//! anonymously (`realm?service=&scope=repository:REPO:pull`), and blob redirects to storage, followed without the
//! registry's token when they lead to another host.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use cairn_profile::payload::{Blob, MANIFEST_LIMIT, MANIFEST_MEDIA_TYPE};
use cairn_profile::{Digest, Reference};
use sha2::{Digest as _, Sha256};

use crate::datasources::http::{self, HttpError, Method, Policy, Response, Sink, Url};

/// The prefix of an OCI image layout source.
pub const LAYOUT_PREFIX: &str = "oci-layout:";
/// Redirects followed for one blob.
const MAX_REDIRECTS: usize = 5;
/// A token response's bound.
const TOKEN_LIMIT: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{text:?}: {reason} (expected HOST[:PORT]/REPOSITORY@sha256:DIGEST or oci-layout:DIR@sha256:DIGEST)"
    )]
    Parse { text: String, reason: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{url}: {source}")]
    Http { url: String, source: HttpError },
    #[error("{url}: HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        url: String,
        status: String,
        detail: String,
    },
    #[error("{what} has digest {found}, not {expected}: refused")]
    Digest {
        what: String,
        found: String,
        expected: String,
    },
    #[error("{what} is {found} bytes, the manifest says {expected}: refused")]
    Size {
        what: String,
        found: u64,
        expected: u64,
    },
    #[error("{0}")]
    Token(String),
}

/// A parsed source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Layout {
        dir: PathBuf,
        digest: Digest,
    },
    Registry {
        reference: Reference,
        digest: Digest,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Layout { dir, digest } => {
                write!(f, "{LAYOUT_PREFIX}{}@{}", dir.display(), digest.as_str())
            }
            Source::Registry { reference, digest } => write!(
                f,
                "{}/{}@{}",
                reference.registry,
                reference.repository,
                digest.as_str()
            ),
        }
    }
}

impl Source {
    pub fn parse(text: &str) -> Result<Source, SourceError> {
        let fail = |reason: String| SourceError::Parse {
            text: text.into(),
            reason,
        };
        if let Some(rest) = text.strip_prefix(LAYOUT_PREFIX) {
            let (dir, digest) = rest
                .rsplit_once('@')
                .ok_or_else(|| fail("no @sha256:DIGEST".into()))?;
            if dir.is_empty() {
                return Err(fail("no folder".into()));
            }
            let digest = Digest::parse(digest).map_err(|e| fail(e.to_string()))?;
            return Ok(Source::Layout {
                dir: dir.into(),
                digest,
            });
        }
        let r = Reference::parse_unpinned(text).map_err(|e| fail(e.to_string()))?;
        let digest = r
            .digest
            .clone()
            .ok_or_else(|| fail("no @sha256:DIGEST: an update is named by its digest".into()))?;
        if r.tag.is_some() {
            return Err(fail(
                "a tag names no particular build: give the digest alone".into(),
            ));
        }
        Ok(Source::Registry {
            reference: r,
            digest,
        })
    }

    pub fn digest(&self) -> &Digest {
        match self {
            Source::Layout { digest, .. } | Source::Registry { digest, .. } => digest,
        }
    }
}

/// A sink that checks what passes through it against a blob's size and digest, refusing more bytes than the
/// manifest says as soon as they come.
pub struct Checked<'a> {
    inner: &'a mut dyn Sink,
    what: String,
    expected: Digest,
    size: u64,
    seen: u64,
    hash: Sha256,
}

impl<'a> Checked<'a> {
    pub fn new(inner: &'a mut dyn Sink, what: String, blob: &Blob) -> Checked<'a> {
        Checked {
            inner,
            what,
            expected: blob.digest.clone(),
            size: blob.size,
            seen: 0,
            hash: Sha256::new(),
        }
    }

    /// Once the body has ended: all of it, and its digest.
    pub fn finish(self) -> Result<(), SourceError> {
        if self.seen != self.size {
            return Err(SourceError::Size {
                what: self.what,
                found: self.seen,
                expected: self.size,
            });
        }
        let found = Digest::from_sha256(&self.hash.finalize());
        if found != self.expected {
            return Err(SourceError::Digest {
                what: self.what,
                found: found.as_str().into(),
                expected: self.expected.as_str().into(),
            });
        }
        Ok(())
    }
}

impl Sink for Checked<'_> {
    fn restart(&mut self) -> io::Result<()> {
        self.seen = 0;
        self.hash = Sha256::new();
        self.inner.restart()
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.seen += data.len() as u64;
        if self.seen > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is more than the {} bytes the manifest says: refused",
                    self.what, self.size
                ),
            ));
        }
        self.hash.update(data);
        self.inner.write(data)
    }
}

/// A sink into memory, for the small parts.
#[derive(Default)]
pub struct Memory(pub Vec<u8>);

impl Sink for Memory {
    fn restart(&mut self) -> io::Result<()> {
        self.0.clear();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }
}

/// What fetches a source's manifest and blobs.
pub struct Fetcher {
    source: Source,
    ca_bundles: Vec<PathBuf>,
    /// The registry's bearer token, once a challenge asked for one.
    token: Option<String>,
}

impl Fetcher {
    pub fn new(source: Source, ca_bundles: Vec<PathBuf>) -> Fetcher {
        Fetcher {
            source,
            ca_bundles,
            token: None,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    fn policy(&self, max_body: u64, timeout: Duration) -> Policy {
        Policy {
            retries: 3,
            retry_delay: Duration::from_secs(1),
            timeout,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            ca_bundles: self.ca_bundles.clone(),
        }
    }

    /// The manifest's bytes, checked against the source's digest.
    pub fn manifest(&mut self) -> Result<Vec<u8>, SourceError> {
        let digest = self.source.digest().clone();
        let what = format!("the manifest {}", digest.as_str());
        let mut memory = Memory::default();
        match self.source.clone() {
            Source::Layout { dir, .. } => {
                let path = dir.join("blobs/sha256").join(digest.hex());
                copy_file(&path, MANIFEST_LIMIT, &mut memory)?;
            }
            Source::Registry { reference: r, .. } => {
                let url = base_url(&r, &format!("manifests/{}", digest.as_str()))?;
                let policy = self.policy(MANIFEST_LIMIT, Duration::from_secs(60));
                self.get(&url, Some(MANIFEST_MEDIA_TYPE), &policy, &mut memory, 0)?;
            }
        }
        let found = Digest::from_sha256(&Sha256::digest(&memory.0));
        if found != digest {
            return Err(SourceError::Digest {
                what,
                found: found.as_str().into(),
                expected: digest.as_str().into(),
            });
        }
        Ok(memory.0)
    }

    /// Streams `blob` into `sink`, checked against its digest and size.
    pub fn blob(&mut self, blob: &Blob, sink: &mut dyn Sink) -> Result<(), SourceError> {
        let what = format!("the {} blob {}", blob.part.name(), blob.digest.as_str());
        let mut checked = Checked::new(sink, what.clone(), blob);
        match self.source.clone() {
            Source::Layout { dir, .. } => {
                let path = dir.join("blobs/sha256").join(blob.digest.hex());
                copy_file(&path, blob.size, &mut checked)?;
            }
            Source::Registry { reference: r, .. } => {
                let url = base_url(&r, &format!("blobs/{}", blob.digest.as_str()))?;
                // A slow link still moves a root: the deadline is generous, a stalled connection still ends.
                let timeout = Duration::from_secs(120 + blob.size / (256 << 10));
                let policy = self.policy(blob.size, timeout);
                self.get(&url, None, &policy, &mut checked, 0)?;
            }
        }
        checked.finish()
    }

    /// One GET with the registry's auth: a `Bearer` challenge is answered once, a redirect followed (up to
    /// [`MAX_REDIRECTS`]).
    fn get(
        &mut self,
        url: &Url,
        accept: Option<&str>,
        policy: &Policy,
        sink: &mut dyn Sink,
        redirects: usize,
    ) -> Result<(), SourceError> {
        let Source::Registry { reference, .. } = self.source.clone() else {
            return Ok(());
        };
        let registry_host = url_authority(&reference);
        let same_host = format!("{}:{}", url.host, url.port) == registry_host;
        let mut challenged = false;
        loop {
            let auth = self
                .token
                .as_ref()
                .filter(|_| same_host)
                .map(|t| format!("Bearer {t}"));
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(a) = &auth {
                headers.push(("Authorization", a));
            }
            if let Some(a) = accept {
                headers.push(("Accept", a));
            }
            let response =
                http::request_into(Method::Get, url, &headers, policy, sink).map_err(|source| {
                    SourceError::Http {
                        url: url.to_string(),
                        source,
                    }
                })?;
            match response.status {
                200..=299 => return Ok(()),
                401 if same_host && !challenged => {
                    challenged = true;
                    self.token = Some(self.token_for(&reference, &response, url)?);
                }
                301 | 302 | 303 | 307 | 308 if redirects < MAX_REDIRECTS => {
                    let next = redirect(url, &response)?;
                    return self.get(&next, accept, policy, sink, redirects + 1);
                }
                _ => return Err(status_error(url, &response)),
            }
        }
    }

    /// Answers a `WWW-Authenticate: Bearer realm=...` challenge anonymously.
    fn token_for(
        &self,
        reference: &Reference,
        challenge: &Response,
        url: &Url,
    ) -> Result<String, SourceError> {
        let header = challenge.header("www-authenticate").unwrap_or("");
        let params = bearer_params(header).ok_or_else(|| {
            SourceError::Token(format!(
                "{url}: HTTP 401 without a Bearer challenge ({header:?}): this agent pulls anonymously"
            ))
        })?;
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let realm = param("realm").ok_or_else(|| {
            SourceError::Token(format!("{url}: a Bearer challenge without a realm"))
        })?;
        let mut query = Vec::new();
        if let Some(s) = param("service") {
            query.push(format!("service={}", query_escape(s)));
        }
        let scope = param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", reference.repository));
        query.push(format!("scope={}", query_escape(&scope)));
        let sep = if realm.contains('?') { '&' } else { '?' };
        let token_url = Url::parse(&format!("{realm}{sep}{}", query.join("&")))
            .map_err(|e| SourceError::Token(format!("the token realm {realm:?}: {e}")))?;
        if token_url.scheme == http::Scheme::Http && !token_url.is_loopback() {
            return Err(SourceError::Token(format!(
                "the token realm {realm:?} is plain HTTP off the node's loopback: refused"
            )));
        }
        let policy = self.policy(TOKEN_LIMIT as u64, Duration::from_secs(30));
        let response = http::request(Method::Get, &token_url, &[], &policy).map_err(|source| {
            SourceError::Http {
                url: token_url.to_string(),
                source,
            }
        })?;
        if response.status != 200 {
            return Err(status_error(&token_url, &response));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&response.body)
            .map_err(|e| SourceError::Token(format!("{token_url}: not a token response: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                SourceError::Token(format!("{token_url}: no usable token in the response"))
            })
    }
}

fn copy_file(path: &std::path::Path, limit: u64, sink: &mut dyn Sink) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        what: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    sink.restart().map_err(io)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if total > limit {
            return Err(SourceError::Size {
                what: path.display().to_string(),
                found: total,
                expected: limit,
            });
        }
        sink.write(&buf[..n]).map_err(io)?;
    }
}

/// `host:port` of the registry as its URLs have it.
fn url_authority(r: &Reference) -> String {
    let scheme = if r.is_loopback() {
        http::Scheme::Http
    } else {
        http::Scheme::Https
    };
    match Url::parse(&format!("{}://{}/", scheme.as_str(), r.registry)) {
        Ok(u) => format!("{}:{}", u.host, u.port),
        Err(_) => r.registry.clone(),
    }
}

/// `/v2/REPOSITORY/PATH` on the registry: HTTPS, or plain HTTP to the node's own loopback.
fn base_url(r: &Reference, path: &str) -> Result<Url, SourceError> {
    let scheme = if r.is_loopback() { "http" } else { "https" };
    let text = format!("{scheme}://{}/v2/{}/{path}", r.registry, r.repository);
    Url::parse(&text).map_err(|reason| SourceError::Parse { text, reason })
}

/// Where a redirect leads: an absolute URL (HTTPS, or HTTP to the loopback) or a path on the same server.
fn redirect(from: &Url, response: &Response) -> Result<Url, SourceError> {
    let location = response.header("location").unwrap_or("");
    let fail = |reason: &str| SourceError::Status {
        url: from.to_string(),
        status: response.status_text(),
        detail: format!("redirect to {location:?}: {reason}"),
    };
    let next = if location.starts_with('/') {
        let mut u = from.clone();
        u.target = location.to_string();
        u
    } else {
        Url::parse(location).map_err(|e| fail(&e))?
    };
    if next.scheme == http::Scheme::Http && !next.is_loopback() {
        return Err(fail("plain HTTP off the node's loopback is refused"));
    }
    Ok(next)
}

fn status_error(url: &Url, response: &Response) -> SourceError {
    // The distribution API's errors are JSON: `{"errors":[{"code":"MANIFEST_UNKNOWN","message":...}]}`.
    let detail = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some(format!(
                "{} {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_default();
    SourceError::Status {
        url: url.to_string(),
        status: response.status_text(),
        detail: detail
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect(),
    }
}

/// The parameters of a `Bearer k="v", k2="v2"` challenge; `None` for another scheme.
pub fn bearer_params(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim();
    let (scheme, rest) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = rest.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => {
                        escaped = false;
                        value.push(c);
                    }
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    Some(out)
}

/// A query value: RFC 3986's unreserved bytes kept.
fn query_escape(text: &str) -> String {
    http::percent_encode(text, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn sources_parse_or_say_why() {
        assert_eq!(
            Source::parse(&format!("oci-layout:/media/usb/cairn@{D}")).unwrap(),
            Source::Layout {
                dir: "/media/usb/cairn".into(),
                digest: Digest::parse(D).unwrap()
            }
        );
        let Source::Registry { reference: r, .. } =
            Source::parse(&format!("10.0.2.2:5000/fleet/edge@{D}")).unwrap()
        else {
            panic!("a registry");
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("10.0.2.2:5000", "fleet/edge")
        );
        let u = base_url(&r, "manifests/x").unwrap();
        assert_eq!(
            u.to_string(),
            "https://10.0.2.2:5000/v2/fleet/edge/manifests/x"
        );
        let Source::Registry { reference: l, .. } =
            Source::parse(&format!("127.0.0.1:5000/edge@{D}")).unwrap()
        else {
            panic!("a registry");
        };
        assert_eq!(base_url(&l, "x").unwrap().scheme, http::Scheme::Http);
        for (bad, why) in [
            (
                "registry.example/edge:v2".to_string(),
                "named by its digest",
            ),
            (format!("registry.example/edge:v2@{D}"), "a tag names"),
            ("oci-layout:/media/usb".to_string(), "no @sha256"),
            (format!("oci-layout:@{D}"), "no folder"),
            ("oci-layout:/m@sha256:12".to_string(), "sha256"),
        ] {
            let e = Source::parse(&bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{bad:?}: ")), "{e}");
            assert!(e.to_lowercase().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn bearer_challenges_are_read() {
        let p = bearer_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull".into())
            ]
        );
        assert_eq!(bearer_params(r#"Basic realm="x""#), None);
        assert_eq!(
            bearer_params(r#"bearer realm="a\"b", x=y"#).unwrap(),
            vec![("realm".into(), "a\"b".into()), ("x".into(), "y".into())]
        );
    }

    #[test]
    fn checked_refuses_other_bytes() {
        let bytes = b"root bytes".to_vec();
        let blob = Blob {
            part: cairn_profile::payload::Part::Root,
            digest: Digest::from_sha256(&Sha256::digest(&bytes)),
            size: bytes.len() as u64,
        };
        let mut m = Memory::default();
        let mut c = Checked::new(&mut m, "the root".into(), &blob);
        c.write(b"junk").unwrap();
        c.restart().unwrap();
        c.write(&bytes).unwrap();
        c.finish().unwrap();
        assert_eq!(m.0, bytes);

        let mut c = Checked::new(&mut m, "the root".into(), &blob);
        c.restart().unwrap();
        c.write(b"root bytez").unwrap();
        let e = c.finish().unwrap_err().to_string();
        assert!(e.starts_with("the root has digest sha256:"), "{e}");
        let mut c = Checked::new(&mut m, "the root".into(), &blob);
        c.restart().unwrap();
        c.write(b"root").unwrap();
        assert_eq!(
            c.finish().unwrap_err().to_string(),
            "the root is 4 bytes, the manifest says 10: refused"
        );
        let mut c = Checked::new(&mut m, "the root".into(), &blob);
        c.restart().unwrap();
        assert!(c.write(b"root bytes and more").is_err());
    }

    proptest! {
        #![proptest_config(crate::proptest_support::config(256))]
        /// A registry's challenge header is whatever it sends: read or refused, never a panic.
        #[test]
        fn any_challenge_parses_or_is_refused(header in ".{0,200}") {
            let _ = bearer_params(&header);
        }

        #[test]
        fn any_source_text_parses_or_is_refused(text in ".{0,120}") {
            if let Ok(Source::Registry { reference, digest }) = Source::parse(&text) {
                prop_assert_eq!(reference.digest, Some(digest));
            }
        }
    }
}
