//! Talking to registries: the OCI distribution protocol through `oci-client`, with cairn's rules on top.
//!
//! Loopback registries are reached over plain HTTP, every other one over TLS. Credentials come from
//! `~/.docker/config.json` (or `$DOCKER_CONFIG`) where present, else the pull is anonymous; bearer-token and basic
//! challenges are answered by the client. Nothing here trusts what it receives: callers verify every digest.

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_profile::{Digest, Reference};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

/// Manifest media types cairn asks for: OCI and Docker v2, single-platform and multi-platform.
pub const MANIFEST_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
#[error("{reference}: {message}")]
pub struct RegistryError {
    /// The reference (or blob) the request was about.
    pub reference: String,
    pub message: String,
}

/// Why a blob stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("digest mismatch: received content with digest {actual}")]
    Mismatch { actual: String },
    #[error(transparent)]
    Failed(RegistryError),
}

pub struct Registry {
    client: oci_client::Client,
}

impl Registry {
    /// A client for the registries of `references`: the loopback ones get plain HTTP.
    pub fn new<'a>(references: impl IntoIterator<Item = &'a Reference>) -> Registry {
        let plain: BTreeSet<String> = references
            .into_iter()
            .filter(|r| r.is_loopback())
            .map(|r| r.registry.clone())
            .collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain.into_iter().collect()),
            // cairn resolves platforms itself, from the profile's arch, never from the host's.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("cairn/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        Registry {
            client: oci_client::Client::new(config),
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

    /// Fetches a manifest or index by digest (or, with `None`, by the reference's tag). Returns the exact bytes.
    pub async fn manifest(
        &self,
        r: &Reference,
        digest: Option<&Digest>,
    ) -> Result<Vec<u8>, RegistryError> {
        let oref = Self::oci_ref(r, digest);
        let what = match digest {
            Some(d) => format!("{}/{}@{d}", r.registry, r.repository),
            None => oref.whole(),
        };
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&oref, &auth_for(r), MANIFEST_TYPES)
            .await
            .map_err(|e| RegistryError {
                reference: what,
                message: describe(&e),
            })?;
        Ok(bytes.to_vec())
    }

    /// Streams a blob. The stream is not trusted: the caller hashes what it receives too.
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<bytes::Bytes, StreamError>>, RegistryError> {
        let oref = Self::oci_ref(r, Some(digest));
        let what = format!("blob {digest} of {}/{}", r.registry, r.repository);
        self.client
            .store_auth_if_needed(oref.resolve_registry(), &auth_for(r))
            .await;
        let stream = self
            .client
            .pull_blob_stream(&oref, digest.as_str())
            .await
            .map_err(|e| RegistryError {
                reference: what.clone(),
                message: describe(&e),
            })?;
        Ok(stream
            .stream
            .map(move |chunk| {
                chunk.map_err(|e| {
                    // The client checks the digest too, at the end of the stream: keep its finding typed.
                    let inner = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>());
                    match inner {
                        Some(oci_client::errors::DigestError::VerificationError {
                            actual, ..
                        }) => StreamError::Mismatch {
                            actual: actual.clone(),
                        },
                        _ => StreamError::Failed(RegistryError {
                            reference: what.clone(),
                            message: e.to_string(),
                        }),
                    }
                })
            })
            .boxed())
    }
}

/// Credentials for a registry from the Docker config, or anonymous.
fn auth_for(r: &Reference) -> RegistryAuth {
    let server = if r.registry == cairn_profile::reference::DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        r.registry.clone()
    };
    match docker_credential::get_credential(&server) {
        Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
            RegistryAuth::Basic(u, p)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(t)) => RegistryAuth::Bearer(t),
        Err(_) => RegistryAuth::Anonymous,
    }
}

fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            format!("{e} (check the credentials in ~/.docker/config.json or $DOCKER_CONFIG)")
        }
        E::RequestError(r) => {
            let mut msg = r.to_string();
            let mut src = std::error::Error::source(r);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
        _ => e.to_string(),
    }
}
