//! cairn-agent: applies a node's profile and its instance data at first boot, once.
//!
//! [`datasources`] (where instance data comes from) → [`plan`] (the steps, from profile and instance) →
//! [`apply`] (each step on a [`target::Target`]) → [`kubernetes`] (the distribution's phase) → [`report`] (status
//! JSON and console lines); [`update`] writes a new version into the inactive A/B slot. [`engine`] runs every phase's steps, journaled in [`state`] (or, for `--dry-run`,
//! recorded by [`dry`]); [`run`] drives the phases; [`init`] is the initrd's /init.

pub mod apply;
pub mod datasources;
pub mod dry;
pub mod engine;
pub mod init;
pub mod kubernetes;
pub mod plan;
#[cfg(test)]
mod proptest_support;
pub mod report;
pub mod run;
pub mod snaps;
pub mod state;
pub mod target;
pub mod update;
