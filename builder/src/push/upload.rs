//! Pushing to a registry with oci-client: its token and basic-auth handshake for the push scope, a `HEAD` per
//! blob so what the registry holds is not sent again, each missing blob streamed from its file in one monolithic
//! upload (the registry checks the digest it is given before it keeps the blob), then the manifest under the
//! tag. Loopback registries are reached over plain HTTP, every other one over TLS, as for pulls. A blob whose
//! upload fails is tried again from its first byte, [`ATTEMPTS`] times in all.

use std::time::Duration;

use bytes::Bytes;
use cairn_profile::Reference;
use cairn_profile::payload::{EMPTY_CONFIG, EMPTY_CONFIG_DIGEST, MANIFEST_MEDIA_TYPE};
use futures_util::Stream;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{info, warn};

use super::PushError;
use super::parts::Source;
use crate::registry::chain;

pub const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_secs(1);
const CHUNK: usize = 1 << 20;

pub struct Upload {
    client: oci_client::Client,
    image: oci_client::Reference,
    target: String,
}

impl Upload {
    /// Signs in to `r`'s repository for pushing.
    pub async fn new(r: &Reference, tag: &str) -> Result<Upload, PushError> {
        let plain = if r.is_loopback() {
            vec![r.registry.clone()]
        } else {
            Vec::new()
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            use_monolithic_push: true,
            connect_timeout: Some(crate::registry::CONNECT_TIMEOUT),
            read_timeout: Some(crate::registry::stall_timeout()),
            user_agent: crate::registry::USER_AGENT,
            ..Default::default()
        });
        let image = oci_client::Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            tag.to_string(),
        );
        let target = format!("{}/{}", r.registry, r.repository);
        let auth = crate::registry::auth_for(r);
        client
            .store_auth_if_needed(image.resolve_registry(), &auth)
            .await;
        client
            .auth(&image, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| PushError::Registry {
                target: target.clone(),
                what: "signing in to push".into(),
                reason: chain(&e),
            })?;
        Ok(Upload {
            client,
            image,
            target,
        })
    }

    fn failed(&self, what: String, e: &OciDistributionError) -> PushError {
        PushError::Registry {
            target: self.target.clone(),
            what,
            reason: chain(e),
        }
    }

    /// Whether the registry already holds the blob.
    pub async fn has(&self, digest: &str) -> Result<bool, PushError> {
        self.client
            .blob_exists(&self.image, digest)
            .await
            .map_err(|e| self.failed(format!("asking for blob {digest}"), &e))
    }

    /// Sends one part, unless the registry holds it.
    pub async fn put(&self, source: &Source) -> Result<bool, PushError> {
        let digest = source.digest.to_string();
        if self.has(&digest).await? {
            return Ok(false);
        }
        let mut attempt = 1;
        loop {
            let stream = file_stream(source.clone());
            match self
                .client
                .push_blob_stream(&self.image, stream, &digest, Some(source.size))
                .await
            {
                Ok(_) => {
                    info!(part = source.part.name(), bytes = source.size, "pushed");
                    return Ok(true);
                }
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    warn!(
                        "{}: the {} blob: {} (attempt {attempt} of {ATTEMPTS}); trying again",
                        self.target,
                        source.part.name(),
                        chain(&e)
                    );
                    tokio::time::sleep(BACKOFF * attempt).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(
                        self.failed(format!("uploading the {} blob", source.part.name()), &e)
                    );
                }
            }
        }
    }

    /// The empty config every OCI artifact names.
    pub async fn put_empty_config(&self) -> Result<(), PushError> {
        if !self.has(EMPTY_CONFIG_DIGEST).await? {
            self.client
                .push_blob(&self.image, EMPTY_CONFIG.to_vec(), EMPTY_CONFIG_DIGEST)
                .await
                .map_err(|e| self.failed("uploading the empty config".into(), &e))?;
        }
        Ok(())
    }

    /// The manifest, under the tag.
    pub async fn put_manifest(&self, bytes: Vec<u8>) -> Result<(), PushError> {
        let content_type = reqwest::header::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        self.client
            .push_manifest_raw(&self.image, bytes, content_type)
            .await
            .map_err(|e| self.failed("uploading the manifest".into(), &e))?;
        Ok(())
    }
}

/// A 4xx other than a rate limit will be the same next time.
fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::RegistryError { .. } => false,
        _ => true,
    }
}

/// `source`'s bytes, a MiB at a time.
fn file_stream(
    source: Source,
) -> impl Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold(
        (None::<tokio::fs::File>, source.size, source),
        |(file, left, source)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut file = match file {
                Some(f) => f,
                None => {
                    let mut f = tokio::fs::File::open(&source.path).await?;
                    f.seek(std::io::SeekFrom::Start(source.offset)).await?;
                    f
                }
            };
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(OciDistributionError::IoError(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} ends early", source.path.display()),
                )));
            }
            buf.truncate(n);
            Ok(Some((
                Bytes::from(buf),
                (Some(file), left - n as u64, source),
            )))
        },
    )
}
