//! cairn-agent: applies a node's profile and its instance data at first boot, once.
//!
//! [`datasources`] (where instance data comes from) → [`plan`] (the steps, from profile and instance) →
//! [`apply`] (each step on a [`target::Target`], journaled in [`state`]) → [`report`] (status JSON and console
//! lines); [`run`] drives the phases.

pub mod apply;
pub mod datasources;
pub mod init;
pub mod kubernetes;
pub mod plan;
pub mod report;
pub mod run;
pub mod state;
pub mod target;
