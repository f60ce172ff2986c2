//! The kubernetes phase's steps, each applied to the [`Node`] the phase is making.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cairn_profile::Role;
use cairn_profile::command::{Command, CommandError};
use cairn_profile::hardening::{self, KUBERNETES_DIR};
use cairn_profile::kubernetes::{Hardening, JoinToken};

use super::{
    IMAGES_DIR, Membership, NAMESPACE, Node, OWNER_0600, OWNER_0700, SENTINEL, SIDELOAD_DIR,
    Sentinel, config, containerd, esp, probe,
};
use crate::apply::services;
use crate::datasources::SourceKind;
use crate::engine::{Done, StepError};
use crate::state::State;

impl Node<'_> {
    /// Copies every archive of [`IMAGES_DIR`] into the side-load folder (0600), unless the distribution already
    /// imported it (it renames an imported `X.tar` to `X.tar.loaded`).
    pub(super) fn preload(&self) -> Result<Done, StepError> {
        let t = self.target;
        let source = t.resolve(IMAGES_DIR, true)?;
        let mut names = Vec::new();
        match fs::read_dir(&source) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(|e| StepError::io(IMAGES_DIR, e))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".tar") {
                        names.push(name);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StepError::refused(format!("{IMAGES_DIR}: {e}"))),
        }
        names.sort();
        if names.len() < self.preloads.len() {
            return Err(StepError::refused(format!(
                "{IMAGES_DIR} holds {} archives, the profile preloads {}: the image is not the one built from this profile",
                names.len(),
                self.preloads.len()
            )));
        }
        if names.is_empty() {
            return Ok(Done::with_detail(false, "no preloaded images"));
        }
        let mut changed = t.ensure_dir(SIDELOAD_DIR, OWNER_0700)?;
        let mut bytes = 0u64;
        for name in &names {
            let to = format!("{SIDELOAD_DIR}/{name}");
            if t.exists(&format!("{to}.loaded")) {
                continue;
            }
            let from = source.join(name);
            let host = t.resolve(&to, false)?;
            let size = fs::metadata(&from)
                .map_err(|e| StepError::io(format!("{IMAGES_DIR}/{name}"), e))?
                .len();
            if fs::metadata(&host).is_ok_and(|m| m.len() == size) {
                continue;
            }
            t.copy_in(&from, &to, OWNER_0600)?;
            bytes += size;
            changed = true;
        }
        Ok(Done::with_detail(
            changed,
            format!(
                "{} archives in {SIDELOAD_DIR} ({:.1} MB copied)",
                names.len(),
                bytes as f64 / 1e6
            ),
        ))
    }

    /// The preset's sysctls (file and live), and on a control plane the files its API server arguments name:
    /// the admission configuration, the audit policy and the secrets encryption key, made here, on the node.
    pub(super) fn hardening(&self) -> Result<Done, StepError> {
        let t = self.target;
        let h = self.kubernetes.hardening;
        let mut changed = false;
        let sysctls = h.sysctls();
        if !sysctls.is_empty() {
            let mut text = format!(
                "# Written by cairn-agent: what the {} preset's --protect-kernel-defaults needs.\n",
                h.name()
            );
            for (k, v) in sysctls {
                text.push_str(&format!("{k} = {v}\n"));
            }
            changed |= t.write(
                "/etc/sysctl.d/80-cairn-kubernetes.conf",
                text.as_bytes(),
                OWNER_0600,
            )?;
            if t.changes_live() {
                for (k, v) in sysctls {
                    // The profile's own [system] sysctl is applied later in the boot order (90-cairn.conf) and
                    // wins: it is the platform team's explicit choice.
                    if self.profile.system.sysctl.contains_key(*k) {
                        continue;
                    }
                    let path = format!("/proc/sys/{}", k.replace('.', "/"));
                    fs::write(&path, v)
                        .map_err(|e| StepError::io(format!("sysctl {k} = {v}"), e))?;
                }
            }
        }
        let mut files = 0;
        if self.role == Role::ControlPlane
            && let (Some(admission), Some(audit)) =
                (hardening::admission_config(h), hardening::audit_policy(h))
        {
            changed |= t.ensure_dir(KUBERNETES_DIR, OWNER_0700)?;
            changed |= t.ensure_dir("/var/log/kubernetes", OWNER_0700)?;
            changed |= t.write(
                hardening::ADMISSION_CONFIG,
                admission.as_bytes(),
                OWNER_0600,
            )?;
            changed |= t.write(hardening::AUDIT_POLICY, audit.as_bytes(), OWNER_0600)?;
            // One key for the node's life: made once, kept across reruns of this step.
            let existing = t.read(hardening::ENCRYPTION_CONFIG)?;
            if existing.as_ref().is_none_or(|b| b.is_empty()) {
                let key = match self.encryption_key {
                    Some(k) => k.expose().to_string(),
                    None => random_key()?,
                };
                t.write(
                    hardening::ENCRYPTION_CONFIG,
                    hardening::encryption_config(&key).as_bytes(),
                    OWNER_0600,
                )?;
                changed = true;
            } else {
                changed |= t.write(
                    hardening::ENCRYPTION_CONFIG,
                    existing.as_deref().unwrap_or_default(),
                    OWNER_0600,
                )?;
            }
            files = 3;
        }
        let mut detail = format!(
            "preset {}: {} sysctls, {files} files in {KUBERNETES_DIR}",
            h.name(),
            sysctls.len()
        );
        // The STIG keeps remote shells off workers: sshd is masked, socket activation included.
        if h == Hardening::Stig && self.role == Role::Worker {
            let mut masked = Vec::new();
            for unit in ["ssh.service", "ssh.socket"] {
                let present = [
                    "/usr/lib/systemd/system",
                    "/lib/systemd/system",
                    "/etc/systemd/system",
                ]
                .iter()
                .any(|d| t.exists(&format!("{d}/{unit}")));
                if present {
                    changed |= t.symlink(&format!("/etc/systemd/system/{unit}"), "/dev/null")?;
                    masked.push(unit.to_string());
                }
            }
            if !masked.is_empty() {
                if changed && t.changes_live() {
                    services::reload_live(&[], &masked)?;
                }
                detail.push_str(&format!(", masked: {}", masked.join(" ")));
            }
        }
        Ok(Done::with_detail(changed, detail))
    }

    pub(super) fn config(&self) -> Result<Done, StepError> {
        let t = self.target;
        let mut changed = t.ensure_dir(KUBERNETES_DIR, OWNER_0700)?;
        let text = config::render(self.kubernetes, self.kind);
        changed |= t.write(self.kind.path(), text.as_bytes(), OWNER_0600)?;
        Ok(Done::with_detail(changed, self.kind.path()))
    }

    pub(super) fn membership(&self, state: &mut State) -> Result<Done, StepError> {
        let t = self.target;
        let (verb, token) = match self.membership {
            Membership::Member { .. } => {
                let mut detail = format!("done on an earlier boot ({SENTINEL})");
                // An earlier boot may have stopped between its join and cutting the token out of the ESP.
                detail.push_str(&self.forget_token(state)?);
                return Ok(Done::with_detail(false, detail));
            }
            Membership::Bootstrap => ("bootstrap", None),
            Membership::Join(token) => ("join-cluster", Some(token)),
        };
        let k8s = self.settings.k8s()?;
        // An earlier boot may have been cut off after the distribution accepted the command but before the
        // sentinel was written: the distribution refuses a second bootstrap, and a token is single-use. Asked with
        // `local-node-status`, which every role may call (`status` is refused on a worker); an answer other than
        // member or not-a-member stops the step rather than risk a second join.
        let already = probe::local_node(&k8s)?.is_some();
        if !already {
            let file = t.resolve(self.kind.path(), true)?;
            let mut cmd = Command::new(&k8s).arg(verb);
            if let Some(token) = token {
                cmd = cmd.arg(token.expose());
            }
            let cmd = cmd
                .arg("--name")
                .arg(&self.name)
                .arg("--address")
                .arg(&self.address)
                .arg("--file")
                .arg(&file)
                .arg("--timeout")
                .arg(format!("{}s", self.settings.ready_timeout.as_secs()));
            k8s_command(cmd, verb, token)?;
        }
        let sentinel = Sentinel {
            role: self.role.name().into(),
            command: verb.into(),
            name: self.name.clone(),
            address: self.address.clone(),
        };
        let json = serde_json::to_string(&sentinel)
            .map_err(|e| StepError::refused(format!("{SENTINEL}: {e}")))?;
        t.write(SENTINEL, format!("{json}\n").as_bytes(), OWNER_0600)?;
        let mut detail = if already {
            format!(
                "already a cluster member, the distribution says (an earlier boot stopped after `k8s {verb}`): not run again"
            )
        } else {
            format!("{verb} as {} at {}", self.name, self.address)
        };
        detail.push_str(&self.forget_token(state)?);
        Ok(Done::with_detail(true, detail))
    }

    /// Cuts the join token out of the ESP's instance file, when the instance data came from there and holds one.
    fn forget_token(&self, state: &mut State) -> Result<String, StepError> {
        match self.found {
            Some(f) if f.source == SourceKind::Esp && esp::without_secrets(&f.text).is_some() => {
                esp::forget_token(f, state, self.target)
            }
            _ => Ok(String::new()),
        }
    }

    /// Checks through containerd's socket that every preloaded image is in namespace `k8s.io` with its pinned
    /// digest. The distribution imports the side-loaded archives in the background after its containerd starts,
    /// and a join returns before that: the images are listed again every two seconds for up to
    /// [`super::Settings::images_wait`] (5 minutes), then the step names each image still missing. A wrong digest
    /// fails at once: a later import would not change it.
    pub(super) fn images(&self) -> Result<Done, StepError> {
        if self.preloads.is_empty() {
            return Ok(Done::with_detail(false, "no preloaded images"));
        }
        let socket = &self.settings.containerd_socket;
        containerd::wait_for(socket, self.settings.containerd_wait)?;
        let start = std::time::Instant::now();
        let deadline = start + self.settings.images_wait;
        loop {
            let images = containerd::list_images(socket, NAMESPACE, Duration::from_secs(30))?;
            let mut missing = Vec::new();
            for p in self.preloads {
                let pinned = p
                    .rock
                    .reference
                    .digest
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                match images.iter().find(|i| i.name == p.name) {
                    None => missing.push(format!("{} ({})", p.name, p.rock.key)),
                    Some(i) if i.target.digest != pinned => {
                        return Err(StepError::refused(format!(
                            "image {} ({}): containerd has {}, the profile pins {pinned}",
                            p.name, p.rock.key, i.target.digest
                        )));
                    }
                    Some(_) => {}
                }
            }
            if missing.is_empty() {
                let waited = start.elapsed().as_secs();
                let mut detail = format!(
                    "{} images with their pinned digests in namespace {NAMESPACE}",
                    self.preloads.len()
                );
                if waited > 0 {
                    detail.push_str(&format!(" (after {waited}s of the distribution's import)"));
                }
                return Ok(Done::with_detail(false, detail));
            }
            if std::time::Instant::now() >= deadline {
                return Err(StepError::refused(format!(
                    "not in containerd's {NAMESPACE} namespace after {}s of the distribution's background import: {}",
                    self.settings.images_wait.as_secs(),
                    missing.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_secs(2).min(self.settings.images_wait));
        }
    }

    /// Ready as far as this node can see: a member (`k8s local-node-status`) whose kubelet answers its health
    /// endpoint, within [`super::Settings::kubelet_wait`]. A control plane first runs
    /// `k8s status --wait-ready`, which waits for at least one ready node of the cluster (not this one: k8sd
    /// pkg/client/kubernetes/status.go HasReadyNodes); a worker never does, as k8sd refuses it there.
    pub(super) fn ready(&self) -> Result<Done, StepError> {
        let k8s = self.settings.k8s()?;
        let mut detail = Vec::new();
        if self.role == Role::ControlPlane {
            let cmd = Command::new(&k8s)
                .args(["status", "--wait-ready", "--timeout"])
                .arg(format!("{}s", self.settings.ready_timeout.as_secs()));
            let out = k8s_command(cmd, "status --wait-ready", None)?;
            detail.push(out.lines().next().unwrap_or("ready").trim().to_string());
        }
        let Some(node) = probe::local_node(&k8s)? else {
            return Err(StepError::refused(
                "`k8s local-node-status`: the node is not part of a Kubernetes cluster, though it bootstrapped or joined",
            ));
        };
        let took =
            probe::kubelet_healthy(&self.settings.kubelet_healthz, self.settings.kubelet_wait)?;
        detail.push(format!(
            "member as {} ({}); kubelet healthy{}",
            node.name,
            node.cluster_role,
            if took.as_secs() > 0 {
                format!(" after {}s", took.as_secs())
            } else {
                String::new()
            }
        ));
        Ok(Done::with_detail(false, detail.join("; ")))
    }
}

/// The folders whose files the distribution writes with keys, certificates, kubeconfigs, component arguments and
/// the CNI configuration (k8sd pkg/snap/snap.go: KubernetesConfigDir, ServiceArgumentsDir, CNIConfDir), and the
/// kubelet's unit, which snapd writes.
pub const DISTRIBUTION_FILES: &[&str] = &[
    "/etc/kubernetes",
    "/var/snap/k8s/common/args",
    "/etc/cni/net.d",
    "/etc/systemd/system/snap.k8s.kubelet.service",
];
/// etcd's folder and its data folder (pkg/snap/snap.go EtcdDir, pkg/k8sd/setup/etcd.go `--data-dir`): 0700.
pub const ETCD_DIRS: &[&str] = &[
    "/var/snap/k8s/common/var/lib/etcd",
    "/var/snap/k8s/common/var/lib/etcd/data",
];

impl Node<'_> {
    /// Under a hardening preset, once the node is ready: every file the distribution wrote under
    /// [`DISTRIBUTION_FILES`] is made owner-only (0600 for a 0644 file), and etcd's folders ([`ETCD_DIRS`]) 0700,
    /// as the CIS benchmark asks.
    pub(super) fn modes(&self) -> Result<Done, StepError> {
        if self.kubernetes.hardening == Hardening::None {
            return Ok(Done::with_detail(false, "hardening none: not checked"));
        }
        let mut checked = 0;
        let mut tightened = Vec::new();
        for dir in DISTRIBUTION_FILES {
            let host = self.target.resolve(dir, true)?;
            owner_only(&host, dir, &mut checked, &mut tightened)?;
        }
        for dir in ETCD_DIRS {
            let host = self.target.resolve(dir, true)?;
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => {
                    checked += 1;
                    let mode = meta.permissions().mode() & 0o7777;
                    if mode & 0o077 != 0 {
                        fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7700))
                            .map_err(|e| StepError::refused(format!("{dir}: {e}")))?;
                        tightened.push(dir.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StepError::refused(format!("{dir}: {e}"))),
            }
        }
        let mut detail = format!("{checked} files and folders of the distribution checked");
        if !tightened.is_empty() {
            detail.push_str(&format!(", made owner-only: {}", tightened.join(", ")));
        }
        Ok(Done::with_detail(!tightened.is_empty(), detail))
    }
}

/// Makes `host` (a file, or every file under a folder) owner-only.
fn owner_only(
    host: &Path,
    shown: &str,
    checked: &mut usize,
    tightened: &mut Vec<String>,
) -> Result<(), StepError> {
    match fs::symlink_metadata(host) {
        Ok(meta) if meta.is_file() => return tighten(host, shown, &meta, checked, tightened),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StepError::refused(format!("{shown}: {e}"))),
    }
    let entries = match fs::read_dir(host) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StepError::refused(format!("{shown}: {e}"))),
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{shown}/{}", e.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(e.path())
            .map_err(|err| StepError::refused(format!("{name}: {err}")))?;
        if meta.is_dir() {
            owner_only(&e.path(), &name, checked, tightened)?;
        } else if meta.is_file() {
            tighten(&e.path(), &name, &meta, checked, tightened)?;
        }
    }
    Ok(())
}

fn tighten(
    path: &Path,
    name: &str,
    meta: &fs::Metadata,
    checked: &mut usize,
    tightened: &mut Vec<String>,
) -> Result<(), StepError> {
    *checked += 1;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7700))
            .map_err(|err| StepError::refused(format!("{name}: {err}")))?;
        tightened.push(name.to_string());
    }
    Ok(())
}

/// Runs a distribution command through the one command runner, with the node's environment; its output goes to
/// the journal (the unit's stdout) and into errors with the token masked. A failure never shows the command line:
/// it holds the token.
fn k8s_command(cmd: Command, verb: &str, token: Option<&JoinToken>) -> Result<String, StepError> {
    let mask = |text: &str| match token {
        Some(t) if !t.expose().is_empty() => text.replace(t.expose(), "<join-token>"),
        _ => text.to_string(),
    };
    let print = |text: &str| {
        for line in text.lines() {
            println!("k8s {verb}: {line}");
        }
    };
    match cmd.inherit_env().capture_stdout().run() {
        Ok(out) => {
            let stdout = mask(&String::from_utf8_lossy(&out.stdout));
            print(&stdout);
            print(&mask(&out.stderr));
            Ok(stdout)
        }
        Err(CommandError::Failed { status, stderr, .. }) => {
            let stderr = mask(&stderr);
            print(&stderr);
            let why = stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_string();
            Err(StepError::refused(format!(
                "`k8s {verb}` failed ({status}): {why}"
            )))
        }
        Err(e) => Err(StepError::refused(mask(&e.to_string()))),
    }
}

/// 32 random bytes from the kernel, base64: the secrets encryption key.
fn random_key() -> Result<String, StepError> {
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| StepError::io("/dev/urandom", e))?;
    Ok(base64(&key))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
