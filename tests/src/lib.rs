//! Harness for the end-to-end tests of the `cairn` CLI.
//!
//! Everything here talks to a real `docker-registry` (the CNCF distribution
//! server) on loopback; nothing on the registry path is mocked.
//!
//! - [`registry`]: start a registry (anonymous, htpasswd basic auth, or token
//!   auth with [`token`]'s issuer), one shared per test binary, blob paths.
//! - [`image`]: build real OCI/Docker images and indexes in memory (tar layers
//!   with every entry kind cairn must handle, several compressions).
//! - [`fault_proxy`]: a proxy in front of a registry that injects faults
//!   (errors, resets, truncation, stalls) and records every request.
//! - [`push`]: push them with the registry HTTP API v2 (and read back).
//! - [`cairn`]: profile fixtures and running the `cairn` binary.
//! - [`output`]: reading cairn's tar outputs back.
//! - [`inspect`]: running `cairn inspect` and `cairn diff`, reading their JSON.
//! - [`agent_root`]: a small hand-made root for `cairn-agent apply --root`, and the agent's status read back.
//! - [`rocks`]: the rocks `rocks/` recipes build, pushed to the shared registry.
//! - [`snap`]: real snap files (squashfs with meta/snap.yaml) and assertion files in snapd's layout.
//! - [`k8s_double`], [`k8s_snaps`]: the k8s double as the `k8s` snap, the stand-in snapd and base snaps, the
//!   test rock that shows a booted node on its console.

pub mod agent_root;
pub mod cairn;
pub mod containerd;
pub mod fault_proxy;
pub mod image;
pub mod inspect;
pub mod k8s_double;
pub mod k8s_snaps;
pub mod output;
pub mod push;
pub mod qemu;
pub mod registry;
pub mod rocks;
pub mod secure_boot;
pub mod snap;
pub mod token;

pub use cairn::{
    agent_bin, cairn_bin, run_agent, run_cairn, run_cairn_with_timeout, write_docker_config,
    write_profile,
};
pub use image::{
    Compression, Image, ImageBuilder, Index, IndexBuilder, Layer, LayerBuilder, MediaTypes,
    Platform,
};
pub use push::{Client, Pushed, push_image, push_index, push_layer};
pub use registry::{Auth, Registry};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `bytes`, the form registries and OCI use.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
