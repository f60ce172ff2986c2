//! Apply: one module per kind of step. Every step is idempotent: it compares what is there with what should be
//! and writes only the difference, so a rerun after a crash completes the work and a second run changes nothing.

pub mod files;
pub mod services;
pub mod system;
pub mod users;

pub use crate::engine::StepError;
