//! Talking to registries: the reads of the OCI distribution protocol (manifests and blobs), with cairn's rules on
//! top.
//!
//! Loopback registries are reached over plain HTTP, every other one over TLS. Credentials come from
//! `~/.docker/config.json` (or `$DOCKER_CONFIG`) where present, else the pull is anonymous; `oci-client` answers the
//! registry's bearer-token or basic challenge. The GETs themselves go through reqwest: retrying well needs what
//! oci-client's errors drop (the status under an OCI error body, `Retry-After`) and resuming a blob needs the
//! response's `Content-Range`. Every request is retried as [`failure`] says; a blob that breaks midway resumes by
//! `Range` from the bytes already received. Nothing here trusts what it receives: callers verify every digest.

mod failure;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::time::{Duration, Instant};

use cairn_profile::{Digest, Reference};
use futures_util::StreamExt;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_RANGE, RANGE, RETRY_AFTER};
use tracing::warn;

pub use failure::{
    ATTEMPTS, FIRST_BACKOFF, Failure, JITTER_PERCENT, MAX_BACKOFF, MAX_RETRY_AFTER, RegistryError,
    Target,
};

/// Manifest media types cairn asks for: OCI and Docker v2, single-platform and multi-platform.
pub const MANIFEST_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A stall: no response headers for this long, or no body bytes for this long, fails the attempt.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Replaces [`STALL_TIMEOUT`], in milliseconds (tests make stalls short with it).
pub const STALL_TIMEOUT_ENV: &str = "CAIRN_REGISTRY_STALL_TIMEOUT_MS";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A registry's credential (a bearer token) is used this long, then asked for again: the token spec's shortest
/// lifetime, so a long pull never presents an expired token.
pub const TOKEN_REUSE: Duration = Duration::from_secs(60);
/// The largest manifest or index accepted.
pub const MANIFEST_LIMIT: u64 = 16 << 20;
/// How much of an error response's body is read for its OCI error codes.
const ERROR_BODY_LIMIT: usize = 64 << 10;

pub(crate) const USER_AGENT: &str = concat!("cairn/", env!("CARGO_PKG_VERSION"));

/// Where a blob's bytes go as they arrive.
pub trait Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Forgets everything written: the registry is sending the blob from its first byte again.
    fn restart(&mut self) -> io::Result<()>;
}

/// Why a blob download stopped.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry sent more than the caller accepts (a layer's size, a config's cap): never retried.
    #[error("the registry sent more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Sink(io::Error),
}

/// How one attempt of a download ended, when not done.
enum Attempt {
    Failed(Failure),
    Fatal(DownloadError),
}

#[derive(Clone)]
enum Credential {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

pub struct Registry {
    /// Negotiates credentials only (the `/v2/` challenge and the token request).
    oci: oci_client::Client,
    http: reqwest::Client,
    stall: Duration,
    /// By `registry/repository`, with when each was obtained.
    credentials: tokio::sync::Mutex<HashMap<String, (Credential, Instant)>>,
}

/// [`STALL_TIMEOUT`], or [`STALL_TIMEOUT_ENV`]'s milliseconds.
pub fn stall_timeout() -> Duration {
    match std::env::var(STALL_TIMEOUT_ENV) {
        Ok(v) if !v.is_empty() => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                warn!(
                    "{STALL_TIMEOUT_ENV}=`{v}` is not a number of milliseconds; using {STALL_TIMEOUT:?}"
                );
                STALL_TIMEOUT
            }
        },
        _ => STALL_TIMEOUT,
    }
}

impl Registry {
    /// A client for the registries of `references`: the loopback ones get plain HTTP.
    pub fn new<'a>(references: impl IntoIterator<Item = &'a Reference>) -> Registry {
        let plain: BTreeSet<String> = references
            .into_iter()
            .filter(|r| r.is_loopback())
            .map(|r| r.registry.clone())
            .collect();
        let stall = stall_timeout();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain.into_iter().collect()),
            // cairn resolves platforms itself, from the profile's arch, never from the host's.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(stall),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        // reqwest's read timeout covers both halves of a stall: the wait for the headers, and each body read.
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(stall)
            .user_agent(USER_AGENT)
            .build()
            .unwrap_or_else(|e| {
                // Only a TLS backend that cannot start gets here; oci-client falls back the same way.
                warn!("cannot configure the HTTP client ({e}); using the defaults");
                reqwest::Client::new()
            });
        Registry {
            oci: oci_client::Client::new(config),
            http,
            stall,
            credentials: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn oci_ref(r: &Reference, digest: Option<&Digest>) -> oci_client::Reference {
        match (digest, &r.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(
                r.registry.clone(),
                r.repository.clone(),
                d.to_string(),
            ),
            (None, Some(t)) => {
                oci_client::Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone())
            }
            (None, None) => oci_client::Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                "latest".to_string(),
            ),
        }
    }

    /// `SCHEME://REGISTRY/v2/REPOSITORY/KIND/NAME`.
    fn url(r: &Reference, kind: &str, name: &str) -> String {
        let oref = Self::oci_ref(r, None);
        let scheme = if r.is_loopback() { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/{kind}/{name}",
            oref.resolve_registry(),
            oref.repository()
        )
    }

    /// Fetches a manifest or index by digest (or, with `None`, by the reference's tag). Returns the exact bytes.
    pub async fn manifest(
        &self,
        r: &Reference,
        digest: Option<&Digest>,
    ) -> Result<Vec<u8>, RegistryError> {
        let oref = Self::oci_ref(r, digest);
        let (what, name) = match digest {
            Some(d) => (
                format!("{}/{}@{d}", r.registry, r.repository),
                d.to_string(),
            ),
            None => (oref.whole(), oref.tag().unwrap_or("latest").to_string()),
        };
        let url = Self::url(r, "manifests", &name);
        let accept = MANIFEST_TYPES.join(", ");
        let mut failures = Vec::new();
        loop {
            let attempt = async {
                let resp = self.get(r, &url, Some(&accept), None).await?;
                if resp.status() != StatusCode::OK {
                    return Err(Failure::BadRange(format!(
                        "{} to a request without a range",
                        resp.status()
                    )));
                }
                self.read_all(resp, MANIFEST_LIMIT).await
            };
            match attempt.await {
                Ok(bytes) => return Ok(bytes),
                Err(f) => {
                    after_failure(
                        &what,
                        Target::Manifest,
                        f,
                        Failure::retryable,
                        &mut failures,
                    )
                    .await?
                }
            }
        }
    }

    /// Downloads a blob into `sink`: `size` is the exact size when known (a layer), `limit` the most accepted.
    /// A transfer that breaks resumes from the bytes `sink` holds where the registry serves ranges, and starts
    /// over (`Sink::restart`) where it does not. Returns the bytes written. The caller checks the digest.
    pub async fn blob<S: Sink>(
        &self,
        r: &Reference,
        digest: &Digest,
        size: Option<u64>,
        limit: u64,
        sink: &mut S,
    ) -> Result<u64, DownloadError> {
        let what = format!("blob {digest} of {}/{}", r.registry, r.repository);
        let url = Self::url(r, "blobs", digest.as_str());
        let mut received = 0;
        let mut failures = Vec::new();
        loop {
            let failure = match self
                .blob_attempt(r, &url, size, limit, &mut received, sink)
                .await
            {
                Ok(()) => return Ok(received),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Failed(f)) => f,
            };
            // A registry that cannot serve the range asked for is asked for the whole blob.
            let unsatisfiable =
                matches!(failure, Failure::Status { code: 416, .. }) && received > 0;
            if unsatisfiable {
                sink.restart().map_err(DownloadError::Sink)?;
                received = 0;
            }
            let retryable = |f: &Failure| unsatisfiable || f.retryable();
            after_failure(&what, Target::Blob, failure, retryable, &mut failures).await?;
        }
    }

    async fn blob_attempt<S: Sink>(
        &self,
        r: &Reference,
        url: &str,
        size: Option<u64>,
        limit: u64,
        received: &mut u64,
        sink: &mut S,
    ) -> Result<(), Attempt> {
        let range = (*received > 0).then_some(*received);
        let resp = self
            .get(r, url, None, range)
            .await
            .map_err(Attempt::Failed)?;
        let sink_err = |e| Attempt::Fatal(DownloadError::Sink(e));
        match (resp.status(), range) {
            (StatusCode::PARTIAL_CONTENT, Some(from)) => {
                let content_range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if range_start(&content_range) != Some(from) {
                    sink.restart().map_err(sink_err)?;
                    *received = 0;
                    return Err(Attempt::Failed(Failure::BadRange(format!(
                        "asked for bytes {from}- and got `{content_range}`"
                    ))));
                }
            }
            (StatusCode::PARTIAL_CONTENT, None) => {
                return Err(Attempt::Failed(Failure::BadRange(
                    "206 to a request for the whole blob".into(),
                )));
            }
            // A 200 to a range request is the whole blob again.
            (_, Some(_)) => {
                sink.restart().map_err(sink_err)?;
                *received = 0;
            }
            (_, None) => {}
        }
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| Attempt::Failed(body_failure(&e, *received, size, self.stall)))?;
            if *received + chunk.len() as u64 > limit {
                return Err(Attempt::Fatal(DownloadError::TooLarge { limit }));
            }
            sink.write(&chunk).map_err(sink_err)?;
            *received += chunk.len() as u64;
        }
        if let Some(size) = size
            && *received < size
        {
            return Err(Attempt::Failed(Failure::Closed {
                received: *received,
                size: Some(size),
            }));
        }
        Ok(())
    }

    /// One GET with the registry's credential; a response other than 200 or 206 is a failure.
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<reqwest::Response, Failure> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if let Some(from) = range {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        req = match self.credential(r).await? {
            Credential::Anonymous => req,
            Credential::Basic(user, password) => req.basic_auth(user, Some(password)),
            Credential::Bearer(token) => req.bearer_auth(token),
        };
        let resp = req.send().await.map_err(|e| self.request_failure(&e))?;
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(resp),
            _ => Err(status_failure(resp).await),
        }
    }

    /// The credential for `r`'s repository: reused for [`TOKEN_REUSE`], then negotiated again.
    async fn credential(&self, r: &Reference) -> Result<Credential, Failure> {
        let oref = Self::oci_ref(r, None);
        let key = format!("{}/{}", oref.resolve_registry(), oref.repository());
        // Held across the negotiation: parallel pulls from one repository share one token request.
        let mut held = self.credentials.lock().await;
        if let Some((c, at)) = held.get(&key)
            && at.elapsed() < TOKEN_REUSE
        {
            return Ok(c.clone());
        }
        let auth = auth_for(r);
        let credential = match self.oci.auth(&oref, &auth, RegistryOperation::Pull).await {
            Ok(Some(token)) => Credential::Bearer(token),
            // No bearer challenge: basic credentials, if any, go with each request.
            Ok(None) => match auth {
                RegistryAuth::Basic(user, password) => Credential::Basic(user, password),
                _ => Credential::Anonymous,
            },
            Err(oci_client::errors::OciDistributionError::RequestError(e)) => {
                return Err(self.request_failure(&e));
            }
            Err(e) => return Err(Failure::Auth(e.to_string())),
        };
        held.insert(key, (credential.clone(), Instant::now()));
        Ok(credential)
    }

    /// A request that got no response.
    fn request_failure(&self, e: &reqwest::Error) -> Failure {
        if e.is_connect() {
            Failure::Connect(chain(e))
        } else if e.is_timeout() {
            Failure::NoResponse(self.stall)
        } else if e.is_builder() || e.is_redirect() {
            Failure::Request(chain(e))
        } else {
            Failure::Transport(chain(e))
        }
    }

    /// A whole (small) body, at most `limit` bytes.
    async fn read_all(&self, resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, Failure> {
        let size = resp.content_length();
        let mut bytes = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| body_failure(&e, bytes.len() as u64, size, self.stall))?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(Failure::TooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        match size {
            Some(size) if (bytes.len() as u64) < size => Err(Failure::Closed {
                received: bytes.len() as u64,
                size: Some(size),
            }),
            _ => Ok(bytes),
        }
    }
}

/// Records a failed attempt; returns once it is time for the next one, or the error when there is none.
async fn after_failure(
    what: &str,
    target: Target,
    failure: Failure,
    retryable: impl Fn(&Failure) -> bool,
    failures: &mut Vec<Failure>,
) -> Result<(), RegistryError> {
    let retry = retryable(&failure);
    failures.push(failure);
    let failed = failures.len() as u32;
    if !retry || failed >= ATTEMPTS {
        return Err(RegistryError::new(
            what.to_string(),
            target,
            std::mem::take(failures),
        ));
    }
    let last = &failures[failures.len() - 1];
    let wait = last.wait(failed);
    warn!(
        "{what}: {} (attempt {failed} of {ATTEMPTS}); retrying in {} ms",
        last.describe(),
        wait.as_millis()
    );
    tokio::time::sleep(wait).await;
    Ok(())
}

/// The first byte of `bytes FIRST-LAST/TOTAL`.
fn range_start(content_range: &str) -> Option<u64> {
    let spec = content_range.trim().strip_prefix("bytes ")?;
    spec.split_once('-')?.0.trim().parse().ok()
}

/// A body that stopped before its end.
fn body_failure(e: &reqwest::Error, received: u64, size: Option<u64>, stall: Duration) -> Failure {
    if e.is_timeout() {
        return Failure::Stalled {
            received,
            size,
            timeout: stall,
        };
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::ConnectionReset
        {
            return Failure::Reset { received, size };
        }
        source = s.source();
    }
    Failure::Closed { received, size }
}

/// An error status, with the body's OCI error codes when it has them and the `Retry-After` seconds.
async fn status_failure(resp: reqwest::Response) -> Failure {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<OciError>,
    }
    #[derive(serde::Deserialize)]
    struct OciError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    // The body only adds detail: a broken one still leaves the status.
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > ERROR_BODY_LIMIT {
            break;
        }
    }
    let detail = serde_json::from_slice::<Envelope>(&body)
        .ok()
        .filter(|e| !e.errors.is_empty())
        .map(|e| {
            e.errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        e.code.clone()
                    } else {
                        format!("{}: {}", e.code, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
    Failure::Status {
        code: status.as_u16(),
        reason: status.canonical_reason().unwrap_or_default().to_string(),
        detail,
        retry_after,
    }
}

/// An error and its sources, `: `-joined.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Credentials for a registry from the Docker config, or anonymous.
pub(crate) fn auth_for(r: &Reference) -> RegistryAuth {
    let server = if r.registry == cairn_profile::reference::DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        r.registry.clone()
    };
    // Where docker_credential looks: $DOCKER_CONFIG, else ~/.docker.
    let Some(config) = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"))
    else {
        return RegistryAuth::Anonymous;
    };
    let file = match std::fs::File::open(&config) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return RegistryAuth::Anonymous,
        Err(e) => {
            unusable_config(&config, &server, &e.to_string());
            return RegistryAuth::Anonymous;
        }
    };
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential_from_reader(io::BufReader::new(file), &server) {
        Ok(DockerCredential::UsernamePassword(u, p)) => RegistryAuth::Basic(u, p),
        Ok(DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
        Err(E::NoCredentialConfigured) => RegistryAuth::Anonymous,
        Err(e) => {
            unusable_config(&config, &server, &e.to_string());
            RegistryAuth::Anonymous
        }
    }
}

/// A credentials file that exists but cannot be used is said once per registry, not ignored: the pull goes on
/// anonymously, which a private registry then refuses.
fn unusable_config(config: &std::path::Path, server: &str, why: &str) {
    static SAID: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let first = SAID
        .lock()
        .map(|mut said| said.insert(server.to_string()))
        .unwrap_or(true);
    if first {
        warn!(
            "{}: cannot be used for {server} ({why}): pulling anonymously",
            config.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_range_gives_its_first_byte() {
        assert_eq!(range_start("bytes 1048576-5242879/5242880"), Some(1048576));
        assert_eq!(range_start("bytes 0-9/*"), Some(0));
        assert_eq!(range_start("bytes */100"), None);
        assert_eq!(range_start(""), None);
    }
}
