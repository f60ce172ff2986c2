//! Apply: one module per kind of step. Every step is idempotent: it compares what is there with what should be
//! and writes only the difference, so a rerun after a crash completes the work and a second run changes nothing.

pub mod files;
pub mod services;
pub mod system;
pub mod users;

use crate::target::TargetError;

/// Why a step failed, naming the file, unit, user or setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl From<TargetError> for StepError {
    fn from(e: TargetError) -> StepError {
        StepError(e.to_string())
    }
}
