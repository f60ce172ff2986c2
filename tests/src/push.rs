//! Pushing (and reading back) with the registry HTTP API v2 itself.
//!
//! [`Client`] speaks plain HTTP to one registry and handles its auth:
//! on a 401 it reads `WWW-Authenticate`; `Basic` → retry with the
//! credentials; `Bearer realm=..,service=..` → GET the realm with basic
//! credentials and `scope=repository:NAME:pull,push`, cache the token per
//! scope, retry with it.
//!
//! Blobs go up by monolithic upload (`POST /v2/NAME/blobs/uploads/`, then
//! `PUT LOCATION?digest=`), skipped when a `HEAD` finds them; then the
//! manifests, then the index, under the tag.
//!
//! The free functions ([`push_image`], [`push_index`], ...) take a
//! [`Registry`] and panic with context on failure; the [`Client`] methods
//! return [`HttpError`] so a test can look at a refusal.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::image::{Image, Index, MANIFEST_ACCEPT, Platform};
use crate::registry::Registry;
use crate::sha256_digest;

/// A failed request, or an unexpected answer.
#[derive(Clone, Debug)]
pub struct HttpError {
    /// What was being done.
    pub context: String,
    /// The HTTP status, if the server answered.
    pub status: Option<u16>,
    /// The body (registry errors are JSON), or the transport error.
    pub body: String,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{}: HTTP {s}: {}", self.context, self.body),
            None => write!(f, "{}: {}", self.context, self.body),
        }
    }
}

impl std::error::Error for HttpError {}

/// An HTTP response, read whole.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn error(&self, context: String) -> HttpError {
        HttpError {
            context,
            status: Some(self.status),
            body: self.text(),
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lower case).
    pub scheme: String,
    /// Parameters (names in lower case): realm, service, scope, ...
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses `Scheme k="v", k2=v2` (one challenge; quoted values may hold
    /// commas).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if chars.next().is_none() {
                break; // no '='
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if scheme.is_empty() {
            return None;
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The repository name in a `/v2/NAME/{blobs,manifests,tags}/...` path.
pub fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.split('?').next().unwrap_or(rest);
    ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|m| rest.rfind(m))
        .max()
        .map(|i| &rest[..i])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Unknown,
    Basic,
    Bearer,
}

/// A small registry client (blocking, plain HTTP).
pub struct Client {
    agent: ureq::Agent,
    addr: String,
    credentials: Option<(String, String)>,
    scheme: Mutex<Scheme>,
    /// scope → token.
    tokens: Mutex<HashMap<String, String>>,
}

impl Client {
    /// A client for `addr` (`127.0.0.1:PORT`) with optional credentials.
    pub fn new(addr: &str, credentials: Option<(&str, &str)>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .user_agent("cairn-e2e")
            .build()
            .into();
        Client {
            agent,
            addr: addr.to_string(),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            scheme: Mutex::new(Scheme::Unknown),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A client with the registry's own credentials.
    pub fn for_registry(registry: &Registry) -> Client {
        Client::new(&registry.addr(), registry.credentials())
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("http://{}{path_or_url}", self.addr)
        }
    }

    /// One HTTP exchange, no auth handling.
    pub fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let send_body = !(body.is_empty() && (method == "GET" || method == "HEAD"));
        let result = if send_body {
            let req = req.body(body.to_vec()).map_err(|e| HttpError {
                context: format!("{method} {url}"),
                status: None,
                body: e.to_string(),
            })?;
            self.agent.run(req)
        } else {
            let req = req.body(()).map_err(|e| HttpError {
                context: format!("{method} {url}"),
                status: None,
                body: e.to_string(),
            })?;
            self.agent.run(req)
        };
        let mut resp = result.map_err(|e| HttpError {
            context: format!("{method} {url}"),
            status: None,
            body: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            resp.body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .map_err(|e| HttpError {
                    context: format!("read the body of {method} {url}"),
                    status: Some(status),
                    body: e.to_string(),
                })?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn basic_header(&self) -> Option<String> {
        self.credentials
            .as_ref()
            .map(|(u, p)| format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))))
    }

    /// Fetches a token from a bearer challenge's realm.
    pub fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: Option<&str>,
    ) -> Result<String, HttpError> {
        let realm = challenge.param("realm").ok_or_else(|| HttpError {
            context: "bearer challenge".into(),
            status: None,
            body: format!("no realm in {challenge:?}"),
        })?;
        let mut query = Vec::new();
        if let Some(s) = challenge.param("service") {
            query.push(format!("service={}", percent_encode(s)));
        }
        if let Some(s) = scope {
            query.push(format!("scope={}", percent_encode(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = if query.is_empty() {
            realm.to_string()
        } else {
            format!("{realm}{sep}{}", query.join("&"))
        };
        let basic = self.basic_header();
        let headers: Vec<(&str, &str)> = basic
            .as_deref()
            .map(|b| ("Authorization", b))
            .into_iter()
            .collect();
        let resp = self.raw("GET", &url, &headers, &[])?;
        if resp.status != 200 {
            return Err(resp.error(format!("token request GET {url}")));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| HttpError {
                context: format!("token response of {url}"),
                status: Some(200),
                body: e.to_string(),
            })?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| resp.error(format!("no token in the response of {url}")))
    }

    /// A request to the registry with auth handled (see the module docs).
    /// `path_or_url` is `/v2/...` or an absolute URL (e.g. an upload
    /// `Location`).
    pub fn request(
        &self,
        method: &str,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let url = self.url(path_or_url);
        let path = url
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        let scope = repository_of(&path).map(|n| format!("repository:{n}:pull,push"));
        let auth = |client: &Client| -> Option<String> {
            match *client.scheme.lock().expect("scheme lock") {
                Scheme::Basic => client.basic_header(),
                Scheme::Bearer => client
                    .tokens
                    .lock()
                    .expect("token lock")
                    .get(scope.as_deref().unwrap_or(""))
                    .map(|t| format!("Bearer {t}")),
                Scheme::Unknown => None,
            }
        };
        let send = |authorization: Option<String>| {
            let mut h: Vec<(&str, &str)> = headers.to_vec();
            if let Some(a) = authorization.as_deref() {
                h.push(("Authorization", a));
            }
            self.raw(method, &url, &h, body)
        };
        let first = send(auth(self))?;
        if first.status != 401 {
            return Ok(first);
        }
        let Some(challenge) = first.header("www-authenticate").and_then(Challenge::parse) else {
            return Ok(first);
        };
        match challenge.scheme.as_str() {
            "basic" => {
                if self.credentials.is_none() {
                    return Ok(first);
                }
                *self.scheme.lock().expect("scheme lock") = Scheme::Basic;
            }
            "bearer" => {
                let scope = scope
                    .clone()
                    .or_else(|| challenge.param("scope").map(str::to_string));
                let token = self.fetch_token(&challenge, scope.as_deref())?;
                self.tokens
                    .lock()
                    .expect("token lock")
                    .insert(scope.unwrap_or_default(), token);
                *self.scheme.lock().expect("scheme lock") = Scheme::Bearer;
            }
            _ => return Ok(first),
        }
        send(auth(self))
    }

    pub fn get(&self, path: &str) -> Result<Response, HttpError> {
        self.request("GET", path, &[], &[])
    }

    /// Whether the registry has blob `digest` in repository `name`.
    pub fn blob_exists(&self, name: &str, digest: &str) -> Result<bool, HttpError> {
        let path = format!("/v2/{name}/blobs/{digest}");
        let resp = self.request("HEAD", &path, &[], &[])?;
        match resp.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(resp.error(format!("HEAD {path}"))),
        }
    }

    /// Uploads `bytes` monolithically (even if present); returns the digest.
    pub fn upload_blob(&self, name: &str, bytes: &[u8]) -> Result<String, HttpError> {
        let digest = sha256_digest(bytes);
        self.upload_blob_as(name, &digest, bytes)?;
        Ok(digest)
    }

    /// Uploads `bytes` claiming `digest` (the registry checks it and
    /// refuses a mismatch with 400 DIGEST_INVALID).
    pub fn upload_blob_as(&self, name: &str, digest: &str, bytes: &[u8]) -> Result<(), HttpError> {
        let start = format!("/v2/{name}/blobs/uploads/");
        let resp = self.request("POST", &start, &[], &[])?;
        if resp.status != 202 {
            return Err(resp.error(format!("POST {start}")));
        }
        let location = resp
            .header("location")
            .ok_or_else(|| resp.error(format!("no Location from POST {start}")))?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", percent_encode(digest));
        let resp = self.request(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )?;
        if resp.status != 201 {
            return Err(resp.error(format!("PUT {put}")));
        }
        Ok(())
    }

    /// Uploads `bytes` unless the blob exists; returns the digest.
    pub fn push_blob(&self, name: &str, bytes: &[u8]) -> Result<String, HttpError> {
        let digest = sha256_digest(bytes);
        if !self.blob_exists(name, &digest)? {
            self.upload_blob_as(name, &digest, bytes)?;
        }
        Ok(digest)
    }

    /// PUTs a manifest (or index) under `reference` (a tag or digest);
    /// returns the digest of `bytes` after checking the registry agrees.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, HttpError> {
        let path = format!("/v2/{name}/manifests/{reference}");
        let resp = self.request("PUT", &path, &[("Content-Type", media_type)], bytes)?;
        if resp.status != 201 {
            return Err(resp.error(format!("PUT {path}")));
        }
        let digest = sha256_digest(bytes);
        if let Some(d) = resp.header("docker-content-digest")
            && d != digest
        {
            return Err(resp.error(format!(
                "PUT {path}: the registry says digest {d}, the bytes have {digest}"
            )));
        }
        Ok(digest)
    }

    /// GETs a manifest, accepting every manifest and index type.
    pub fn get_manifest(&self, name: &str, reference: &str) -> Result<Response, HttpError> {
        let path = format!("/v2/{name}/manifests/{reference}");
        let resp = self.request("GET", &path, &[("Accept", MANIFEST_ACCEPT)], &[])?;
        if resp.status != 200 {
            return Err(resp.error(format!("GET {path}")));
        }
        Ok(resp)
    }

    /// GETs a blob's bytes (as served; not verified).
    pub fn get_blob(&self, name: &str, digest: &str) -> Result<Vec<u8>, HttpError> {
        let path = format!("/v2/{name}/blobs/{digest}");
        let resp = self.get(&path)?;
        if resp.status != 200 {
            return Err(resp.error(format!("GET {path}")));
        }
        Ok(resp.body)
    }

    /// Pushes an image's blobs (config first, then layers) and its manifest
    /// under `reference` (a tag, or its digest).
    fn push_manifest_of(
        &self,
        name: &str,
        reference: &str,
        image: &Image,
    ) -> Result<PushedManifest, HttpError> {
        let config_digest = self.push_blob(name, &image.config)?;
        let mut layer_digests = Vec::new();
        for layer in &image.layers {
            layer_digests.push(self.push_blob(name, &layer.blob)?);
        }
        let manifest_digest =
            self.put_manifest(name, reference, &image.manifest_media_type, &image.manifest)?;
        Ok(PushedManifest {
            platform: image.platform.clone(),
            manifest_digest,
            config_digest,
            layer_digests,
        })
    }

    /// Pushes `image` under `name:tag`.
    pub fn push_image(&self, name: &str, tag: &str, image: &Image) -> Result<Pushed, HttpError> {
        let m = self.push_manifest_of(name, tag, image)?;
        Ok(Pushed::new(&self.addr, name, tag, None, vec![m]))
    }

    /// Pushes every manifest of `index` by digest, then the index under
    /// `name:tag`.
    pub fn push_index(&self, name: &str, tag: &str, index: &Index) -> Result<Pushed, HttpError> {
        let mut manifests = Vec::new();
        for image in &index.manifests {
            manifests.push(self.push_manifest_of(name, &image.manifest_digest, image)?);
        }
        let index_digest = self.put_manifest(name, tag, &index.media_type, &index.bytes)?;
        Ok(Pushed::new(
            &self.addr,
            name,
            tag,
            Some(index_digest),
            manifests,
        ))
    }
}

/// One pushed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedManifest {
    pub platform: Platform,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

/// What a push made. For an index, the single-manifest fields describe the
/// linux/amd64 manifest (else the first), and `manifests` lists all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub name: String,
    pub tag: String,
    /// `127.0.0.1:PORT/NAME:TAG`.
    pub reference: String,
    /// `127.0.0.1:PORT/NAME:TAG@sha256:...` (the index digest for an index).
    pub reference_by_digest: String,
    /// What the tag points at: the index digest, or the manifest digest.
    pub digest: String,
    pub manifest_digest: String,
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub manifests: Vec<PushedManifest>,
}

impl Pushed {
    fn new(
        addr: &str,
        name: &str,
        tag: &str,
        index_digest: Option<String>,
        manifests: Vec<PushedManifest>,
    ) -> Pushed {
        let main = manifests
            .iter()
            .find(|m| m.platform.os == "linux" && m.platform.architecture == "amd64")
            .or_else(|| manifests.first())
            .expect("a push has at least one manifest")
            .clone();
        let digest = index_digest
            .clone()
            .unwrap_or_else(|| main.manifest_digest.clone());
        let reference = format!("{addr}/{name}:{tag}");
        Pushed {
            name: name.to_string(),
            tag: tag.to_string(),
            reference_by_digest: format!("{reference}@{digest}"),
            reference,
            digest,
            manifest_digest: main.manifest_digest,
            index_digest,
            config_digest: main.config_digest,
            layer_digests: main.layer_digests,
            manifests,
        }
    }

    /// `127.0.0.1:PORT/NAME@sha256:...` (no tag).
    pub fn reference_digest_only(&self) -> String {
        let host = self
            .reference
            .rsplit_once(':')
            .map_or(self.reference.as_str(), |(h, _)| h);
        format!("{host}@{}", self.digest)
    }
}

/// Pushes `image` to `registry` as `name:tag` (with its credentials).
pub fn push_image(registry: &Registry, name: &str, tag: &str, image: &Image) -> Pushed {
    Client::for_registry(registry)
        .push_image(name, tag, image)
        .unwrap_or_else(|e| panic!("push image {name}:{tag} to {}: {e}", registry.addr()))
}

/// Pushes an image of one layer, in `compression`, to `registry` as `name:tag`.
pub fn push_layer(
    registry: &Registry,
    name: &str,
    tag: &str,
    layer: &crate::image::LayerBuilder,
    compression: crate::image::Compression,
) -> Pushed {
    push_image(
        registry,
        name,
        tag,
        &Image::builder().layer_from(layer, compression).build(),
    )
}

/// Pushes `index` and its manifests to `registry` as `name:tag`.
pub fn push_index(registry: &Registry, name: &str, tag: &str, index: &Index) -> Pushed {
    Client::for_registry(registry)
        .push_index(name, tag, index)
        .unwrap_or_else(|e| panic!("push index {name}:{tag} to {}: {e}", registry.addr()))
}

/// Uploads hand-made blob bytes (always, even if present); returns the
/// digest.
pub fn push_blob_raw(registry: &Registry, name: &str, bytes: &[u8]) -> Result<String, HttpError> {
    Client::for_registry(registry).upload_blob(name, bytes)
}

/// PUTs hand-made manifest bytes under `reference` with `media_type`;
/// returns their digest or the registry's refusal.
pub fn put_manifest_raw(
    registry: &Registry,
    name: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<String, HttpError> {
    Client::for_registry(registry).put_manifest(name, reference, media_type, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        )
        .expect("challenge");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:1/token"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let b = Challenge::parse(r#"Basic realm="cairn-e2e""#).expect("challenge");
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.param("realm"), Some("cairn-e2e"));
    }

    #[test]
    fn repository_names() {
        assert_eq!(repository_of("/v2/a/b/blobs/sha256:x"), Some("a/b"));
        assert_eq!(repository_of("/v2/a/manifests/v1"), Some("a"));
        assert_eq!(repository_of("/v2/a/blobs/uploads/u?x=1"), Some("a"));
        assert_eq!(repository_of("/v2/"), None);
    }
}
