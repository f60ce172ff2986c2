//! Running the filesystem makers cairn relies on (squashfs-tools, e2fsprogs, mtools, sfdisk from Debian's
//! packages; rocks/setup-host installs them), with their failures reported by name.

use std::process::{Command, Output};

use super::DiskError;

pub fn run(cmd: &mut Command) -> Result<Output, DiskError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        DiskError(if e.kind() == std::io::ErrorKind::NotFound {
            format!("{program} is not installed (rocks/setup-host installs it)")
        } else {
            format!("running {program}: {e}")
        })
    })?;
    if !out.status.success() {
        return Err(DiskError(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}
