//! `[[file]]`s from instance data (the profile's own are in the image already).

use cairn_profile::{FileContent, FileEntry};

use super::StepError;
use crate::target::{Owner, Target};

pub fn apply(target: &Target, files: &[FileEntry]) -> Result<bool, StepError> {
    let mut changed = false;
    for f in files {
        let content = match &f.content {
            FileContent::Inline(text) => text.as_bytes(),
            // Instance data has no folder: its files always carry their content (checked when it was parsed).
            FileContent::Source(p) => {
                return Err(StepError::refused(format!(
                    "{}: instance files need content, not source {}",
                    f.path,
                    p.display()
                )));
            }
        };
        changed |= target.write(
            &f.path,
            content,
            Owner {
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
            },
        )?;
    }
    Ok(changed)
}
