//! systemd on the running system: after the agent changed unit links (the STIG preset masks sshd on a worker),
//! systemd reloads and stops or starts what changed. Enabling and disabling a profile's units is the builder's
//! work (builder/src/system.rs): it does not depend on the machine.

use cairn_profile::command::Command;
use cairn_profile::system::unit_file_name;

use super::StepError;

/// After links changed on the running system: reload, and start or stop what changed, without waiting.
pub fn reload_live(enabled: &[String], disabled: &[String]) -> Result<(), StepError> {
    let run = |args: &[&str]| -> Result<(), StepError> {
        Command::new("systemctl")
            .args(args)
            .package("systemd")
            .run()
            .map(drop)
            .map_err(StepError::from)
    };
    run(&["daemon-reload"])?;
    for u in enabled {
        run(&["start", "--no-block", &unit_file_name(u)])?;
    }
    for u in disabled {
        run(&["stop", "--no-block", &unit_file_name(u)])?;
    }
    Ok(())
}
