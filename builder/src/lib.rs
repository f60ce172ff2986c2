//! cairn: builds immutable, verified node images from a TOML profile and rocks (OCI images) pinned by digest.
//!
//! The stages follow the data: [`resolve`] (pinned references to manifests) → [`pull`] (verified blobs into the
//! [`cache`]) → [`assemble`] (layers merged into a tree) → [`files`] (the profile's and cairn's own files) →
//! [`filesystem`] (the tree written out; [`output`] places it, [`disk`] makes the bootable image) → [`report`];
//! [`preload`] stores workload rocks in the root as OCI archives. [`build`] runs them in turn, each stage with an
//! error of its own that [`build::BuildError`] gathers; [`pin`] rewrites a profile's digests; [`inspect`] reads
//! a build back (`cairn inspect`, `cairn diff`); [`boot`] boots it under QEMU to the node's verdict (`cairn boot`).

pub mod agent;
pub mod assemble;
pub mod boot;
pub mod build;
pub mod cache;
pub mod disk;
pub mod files;
pub mod filesystem;
pub mod init;
pub mod inspect;
pub mod output;
pub mod pin;
pub mod preload;
pub mod progress;
pub mod pull;
pub mod push;
pub mod registry;
pub mod report;
pub mod resolve;
pub mod sbom;
pub mod snaps;
pub mod space;
pub mod system;
pub mod workdir;
