//! System settings that depend on the machine: its id and its hostname.

use std::io::Read;

use cairn_profile::system::render_hostname;

use super::StepError;
use crate::target::{Owner, Target};

const MACHINE_ID: &str = "/etc/machine-id";
/// A dry run's stand-in for the id a root folder would be given: a real run makes a random one.
pub const NEW_MACHINE_ID: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The machine's id. systemd makes it at first boot; on a root folder one is made when the file is empty.
pub fn machine_id(target: &Target) -> Result<(String, bool), StepError> {
    let current = target.read_string(MACHINE_ID)?.unwrap_or_default();
    let id = current.trim();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((id.to_ascii_lowercase(), false));
    }
    if target.is_live() {
        // On the running system /etc/machine-id may be systemd's own mount: never replace it.
        return Err(StepError::refused(format!(
            "{MACHINE_ID} holds no machine id: systemd should have made one at boot"
        )));
    }
    if target.is_dry() {
        let now = if id.is_empty() { "empty" } else { "not an id" };
        target.say(format!("write {MACHINE_ID}: a new random id (now: {now})"));
        return Ok((NEW_MACHINE_ID.into(), true));
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| StepError::io("reading /dev/urandom", e))?;
    // A version 4 UUID, as systemd makes them.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let id = hex::encode(bytes);
    target.write(
        MACHINE_ID,
        format!("{id}\n").as_bytes(),
        Owner {
            mode: 0o444,
            uid: 0,
            gid: 0,
        },
    )?;
    Ok((id, true))
}

pub fn hostname(target: &Target, template: &str, machine_id: &str) -> Result<bool, StepError> {
    let name = render_hostname(template, machine_id);
    let mut changed = target.write(
        "/etc/hostname",
        format!("{name}\n").as_bytes(),
        Owner::ROOT_0644,
    )?;
    // Debian's convention: the host's own name resolves to 127.0.1.1.
    let hosts = target
        .read_string("/etc/hosts")?
        .unwrap_or_else(|| "127.0.0.1\tlocalhost\n".into());
    let line = format!("127.0.1.1\t{name}");
    let mut lines: Vec<String> = hosts.lines().map(str::to_string).collect();
    match lines
        .iter_mut()
        .find(|l| l.split_whitespace().next() == Some("127.0.1.1"))
    {
        Some(l) => *l = line,
        None => lines.push(line),
    }
    let new_hosts = lines.join("\n") + "\n";
    changed |= target.write("/etc/hosts", new_hosts.as_bytes(), Owner::ROOT_0644)?;
    if target.is_live() {
        let current = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if current.trim() != name && target.is_dry() {
            target.say(format!(
                "set the running hostname: {name} (now: {})",
                current.trim()
            ));
            changed = true;
        } else if current.trim() != name {
            std::fs::write("/proc/sys/kernel/hostname", &name)
                .map_err(|e| StepError::io(format!("setting the hostname to {name}"), e))?;
            changed = true;
        }
    }
    if machine_id == NEW_MACHINE_ID && template.contains("{machine-id") {
        target.say(format!(
            "(the x's in {name} stand for the new machine id's digits)"
        ));
    }
    Ok(changed)
}
