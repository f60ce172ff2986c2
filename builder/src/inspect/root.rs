//! The disk's root partition, a squashfs read in place with `unsquashfs -o OFFSET` (nothing extracted but what is
//! asked for): its listing, and the factory `/var` archive the initrd unpacks at first boot, which holds dpkg's
//! status and the rest of the image's `/var`.

use std::path::{Path, PathBuf};

use cairn_profile::command::CommandError;

use super::listing::{self, Listing};
use crate::disk::tools::Tool;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{}: the root partition: {source}", disk.display())]
    Tool {
        disk: PathBuf,
        source: Box<CommandError>,
    },
}

/// The root squashfs at `offset` of a raw disk.
pub struct Root<'a> {
    pub disk: &'a Path,
    pub offset: u64,
}

impl Root<'_> {
    fn command(&self) -> cairn_profile::command::Command {
        Tool::Unsquashfs
            .command()
            .args(["-no-progress", "-o", &self.offset.to_string()])
    }

    fn tool(&self, source: CommandError) -> RootError {
        RootError::Tool {
            disk: self.disk.to_path_buf(),
            source: Box::new(source),
        }
    }

    /// Every path of the root (no content hashes: see [`listing`]).
    pub fn listing(&self) -> Result<Listing, RootError> {
        let out = self
            .command()
            .arg("-lln")
            .arg(self.disk)
            .capture_stdout()
            .run()
            .map_err(|e| self.tool(e))?;
        Ok(listing::parse_unsquashfs(&out.stdout))
    }

    /// Copies the root's file `path` (relative) to `dest`.
    pub fn cat_to(&self, path: &str, dest: &Path) -> Result<(), RootError> {
        self.command()
            .arg("-cat")
            .arg(self.disk)
            .arg(path)
            .stdout_file(dest)
            .run()
            .map_err(|e| self.tool(e))?;
        Ok(())
    }
}
