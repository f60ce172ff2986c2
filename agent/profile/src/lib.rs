//! The cairn node profile, schema 1.
//!
//! One TOML document describes a node. This crate turns it into a checked [`Profile`], or a [`Diagnostic`] that
//! names the file, line, column and key at fault. It has no async and no network dependencies: the builder and
//! the static agent share it, so a profile that `cairn validate` accepts is one the agent understands. Both run
//! external tools through its [`command`] runner.

pub mod authenticode;
pub mod boot_entry;
pub mod command;
pub mod contract;
mod control;
mod diagnostic;
pub mod gpt;
pub mod hardening;
mod instance;
pub mod kubernetes;
mod model;
pub mod payload;
#[cfg(test)]
mod proptest_support;
pub mod reference;
mod secrets;
pub mod snap;
pub mod system;
pub mod time;
pub mod uki;
pub mod verity;

pub use diagnostic::{Diagnostic, Error};
pub use instance::{INSTANCE_WRITABLE, Instance, Merged};
pub use kubernetes::{
    Component, Distribution, Features, Hardening, JoinToken, Kubernetes, KubernetesInstance,
    Preload, Role,
};
pub use model::{
    Arch, FileContent, FileEntry, Format, Profile, Rock, SCHEMA, SlotSize, reserved_path,
};
pub use reference::{Digest, Reference, ReferenceError};
pub use snap::{Snap, StoredSnap};
pub use system::{Services, System, User};
