//! The `kubernetes` phase: preloaded images placed → hardening files → the distribution's file → bootstrap or
//! join → images checked in containerd → ready.
//!
//! Each step is journaled in the agent's state and shown in its status. Every step but bootstrap/join is
//! idempotent and simply runs again on the next boot after a failure; bootstrap/join is guarded by a sentinel
//! written right after the distribution accepted it, so a reboot never bootstraps twice. The join token is
//! passed on the one command line that needs it, never written to a file or a log by cairn; once the node has
//! joined, it is removed from the ESP's instance file when it came from there.

pub mod config;
pub mod containerd;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_profile::hardening::{self, KUBERNETES_DIR};
use cairn_profile::kubernetes::{EncryptionKey, Hardening, JoinToken, Kubernetes, Preload};
use cairn_profile::{Instance, Merged, Profile, Role};
use sha2::{Digest, Sha256};

use crate::apply::{StepError, services};
use crate::datasources::{Found, SourceKind};
use crate::report::StepReport;
use crate::run::{Exit, Runner};
use crate::state::{InstanceRecord, State};
use crate::target::{Owner, Target};

pub use config::FileKind;

pub const PHASE: &str = "kubernetes";
/// Where the builder stores the `[[preload]]` OCI archives, read-only.
pub use cairn_profile::contract::IMAGES_DIR;
/// The distribution's side-load folder: its containerd imports the archives it finds there when it starts.
pub const SIDELOAD_DIR: &str = "/var/snap/k8s/common/images";
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const NAMESPACE: &str = "k8s.io";
/// Written once the distribution accepted the bootstrap or join: its presence means "never again".
pub const SENTINEL: &str = "/var/lib/cairn/kubernetes/cluster-member";
/// Where the `k8s` command is looked for: the snap's, then a rock's.
pub const K8S_COMMANDS: &[&str] = &["/snap/bin/k8s", "/usr/local/bin/k8s", "/usr/bin/k8s"];

const OWNER_0600: Owner = Owner {
    mode: 0o600,
    uid: 0,
    gid: 0,
};
const OWNER_0700: Owner = Owner {
    mode: 0o700,
    uid: 0,
    gid: 0,
};

/// How the phase reaches the distribution.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `k8s` command; `None`: the first of [`K8S_COMMANDS`] that exists.
    pub k8s: Option<PathBuf>,
    pub containerd_socket: PathBuf,
    /// How long containerd may take to answer once the node has bootstrapped or joined.
    pub containerd_wait: Duration,
    /// `k8s status --wait-ready --timeout`.
    pub ready_timeout: Duration,
    /// How long a live node waits for DHCP to give the default route's link an address, when the instance
    /// data names none: the network may still be coming up when the phase starts.
    pub address_wait: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            k8s: None,
            containerd_socket: PathBuf::from(CONTAINERD_SOCKET),
            containerd_wait: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(600),
            address_wait: Duration::from_secs(120),
        }
    }
}

impl Settings {
    fn k8s(&self) -> Result<PathBuf, StepError> {
        if let Some(p) = &self.k8s {
            return Ok(p.clone());
        }
        K8S_COMMANDS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                StepError(format!(
                    "the distribution's `k8s` command is not on this node (looked for {}): the image needs a rock that carries Canonical Kubernetes",
                    K8S_COMMANDS.join(", ")
                ))
            })
    }
}

/// Bootstrap (a control plane with no token), join, or neither: an earlier boot already did it.
enum Membership<'a> {
    Bootstrap,
    Join(&'a JoinToken),
    /// The sentinel says the node bootstrapped (`joined: false`) or joined on an earlier boot: the token may be
    /// gone from the instance data by now, and is not needed.
    Member {
        joined: bool,
    },
}

/// What [`SENTINEL`] records.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sentinel {
    role: String,
    command: String,
    name: String,
    address: String,
}

/// The phase's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepName {
    Preload,
    Hardening,
    Config,
    Bootstrap,
    Join,
    Images,
    Ready,
    Modes,
}

impl StepName {
    const ALL: [StepName; 8] = [
        StepName::Preload,
        StepName::Hardening,
        StepName::Config,
        StepName::Bootstrap,
        StepName::Join,
        StepName::Images,
        StepName::Ready,
        StepName::Modes,
    ];

    fn name(self) -> &'static str {
        match self {
            StepName::Preload => "preload",
            StepName::Hardening => "hardening",
            StepName::Config => "config",
            StepName::Bootstrap => "bootstrap",
            StepName::Join => "join",
            StepName::Images => "images",
            StepName::Ready => "ready",
            StepName::Modes => "modes",
        }
    }
}

/// What a step did: whether anything changed, and what is worth reporting.
struct Done {
    changed: bool,
    detail: Option<String>,
}

impl Done {
    fn new(changed: bool, detail: impl Into<String>) -> Done {
        Done {
            changed,
            detail: Some(detail.into()),
        }
    }
}

/// Everything the steps read.
struct Node<'a> {
    target: &'a Target,
    settings: &'a Settings,
    kubernetes: &'a Kubernetes,
    role: Role,
    membership: Membership<'a>,
    kind: FileKind,
    name: String,
    address: String,
    preloads: &'a [Preload],
    profile: &'a Profile,
    found: Option<&'a Found>,
    /// The cluster's secrets encryption key from the instance data, for a joining control plane.
    encryption_key: Option<&'a EncryptionKey>,
}

impl<'a> Node<'a> {
    /// What the node is to become, from the sentinel of an earlier boot, else the profile and instance data;
    /// or why the phase cannot start (the message and the exit code).
    fn new(
        runner: &'a Runner,
        profile: &'a Profile,
        merged: &'a Merged,
        kubernetes: &'a Kubernetes,
        found: Option<&'a Found>,
    ) -> Result<Node<'a>, (String, Exit)> {
        let target = &runner.opts.target;
        let instance = &merged.kubernetes_instance;
        let failed = |message: String| (message, Exit::StepFailed);
        // A node that bootstrapped or joined on an earlier boot resumes as what it became.
        let sentinel = match target.read(SENTINEL).map_err(|e| failed(e.to_string()))? {
            None => None,
            Some(bytes) => Some(serde_json::from_slice::<Sentinel>(&bytes).map_err(|e| {
                failed(format!(
                    "{SENTINEL}: unreadable ({e}): the node's cluster membership is unknown"
                ))
            })?),
        };
        let role = sentinel
            .as_ref()
            .and_then(|s| Role::parse(&s.role))
            .unwrap_or(kubernetes.role);
        let membership = match (role, &instance.join_token, &sentinel) {
            (_, _, Some(s)) => Membership::Member {
                joined: s.command == "join-cluster",
            },
            (_, Some(token), None) => Membership::Join(token),
            (Role::ControlPlane, None, None) => Membership::Bootstrap,
            (Role::Worker, None, None) => {
                return Err((
                    "a worker joins a cluster: its instance data needs [kubernetes] join-token (made on a control plane by `k8s get-join-token NODE --worker`)".into(),
                    Exit::BadInput,
                ));
            }
        };
        let joining = matches!(
            membership,
            Membership::Join(_) | Membership::Member { joined: true }
        );
        let kind = FileKind::new(role, joining);
        // Every API server of a cluster must read what the others encrypted: a control plane joining a hardened
        // cluster takes the cluster's key from its instance data; only the first one makes a key.
        if kind == FileKind::ControlPlaneJoin
            && matches!(membership, Membership::Join(_))
            && kubernetes.hardening != Hardening::None
            && instance.encryption_key.is_none()
            && !target.exists(hardening::ENCRYPTION_CONFIG)
        {
            return Err((
                format!(
                    "a control plane joining a cluster hardened with {} shares its secrets encryption key: its instance data needs [kubernetes] encryption-key (the `secret:` of {} on the first control plane)",
                    kubernetes.hardening.name(),
                    hardening::ENCRYPTION_CONFIG
                ),
                Exit::BadInput,
            ));
        }
        let name = match sentinel
            .as_ref()
            .map(|s| s.name.clone())
            .or_else(|| instance.node_name.clone())
        {
            Some(n) => n,
            None => node_name(target).map_err(failed)?,
        };
        let address = match sentinel.as_ref().map(|s| s.address.clone()) {
            Some(a) => a,
            None => node_address(
                target,
                instance.address.as_deref(),
                joining,
                runner.opts.kubernetes.address_wait,
            )
            .map_err(failed)?,
        };
        Ok(Node {
            target,
            settings: &runner.opts.kubernetes,
            kubernetes,
            role,
            membership,
            kind,
            name,
            address,
            preloads: &profile.preloads,
            profile,
            found,
            encryption_key: instance.encryption_key.as_ref(),
        })
    }
}

/// Runs the phase for a profile with `[kubernetes]`.
pub(crate) fn run(
    runner: &Runner,
    profile: &Profile,
    merged: &Merged,
    record: InstanceRecord,
    found: Option<&Found>,
) -> Exit {
    let target = &runner.opts.target;
    let Some(kubernetes) = merged.kubernetes.as_ref() else {
        runner
            .console
            .line("kubernetes: the profile has no [kubernetes] section: nothing to do");
        return Exit::Done;
    };
    // A node is provisioned once: a phase done on an earlier boot reads nothing more (the join token, for one,
    // may be gone from the instance data by then).
    if !runner.opts.dry_run {
        match State::load(target) {
            Ok(state) if state.is_done(PHASE) => {
                let recorded = state.steps.get(PHASE);
                let reports = StepName::ALL
                    .iter()
                    .filter(|s| recorded.is_some_and(|r| r.contains_key(s.name())))
                    .map(|s| report(*s, "skipped", 0, None, None))
                    .collect();
                return runner.finish_phase(PHASE, &record.source, reports, None);
            }
            Ok(_) => {}
            Err(e) => {
                return runner.fail_phase(
                    PHASE,
                    &record.source,
                    vec![],
                    e.to_string(),
                    Exit::StepFailed,
                );
            }
        }
    }
    let node = match Node::new(runner, profile, merged, kubernetes, found) {
        Ok(n) => n,
        Err((message, exit)) => {
            return runner.fail_phase(PHASE, &record.source, vec![], message, exit);
        }
    };
    let joining = node.kind != FileKind::Bootstrap;
    let join_or_bootstrap = if joining {
        StepName::Join
    } else {
        StepName::Bootstrap
    };
    let steps = [
        StepName::Preload,
        StepName::Hardening,
        StepName::Config,
        join_or_bootstrap,
        StepName::Images,
        StepName::Ready,
        StepName::Modes,
    ];

    if runner.opts.dry_run {
        println!(
            "kubernetes phase, instance: {}, role {}, {} as {} at {}",
            record.source,
            node.role.name(),
            join_or_bootstrap.name(),
            node.name,
            node.address
        );
        for s in steps {
            println!("  {}", s.name());
        }
        return Exit::Done;
    }

    let mut state = match State::load(target) {
        Ok(s) => s,
        Err(e) => {
            return runner.fail_phase(
                PHASE,
                &record.source,
                vec![],
                e.to_string(),
                Exit::StepFailed,
            );
        }
    };
    state.instance.insert(PHASE.into(), record.clone());

    let mut reports = Vec::new();
    let mut failed = None;
    for step in steps {
        let started = Instant::now();
        let result = node.apply(step, &mut state);
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(done) => {
                let outcome = if done.changed { "applied" } else { "unchanged" };
                reports.push(report(step, outcome, ms, None, done.detail));
            }
            Err(e) => {
                reports.push(report(step, "failed", ms, Some(e.0.clone()), None));
                failed = Some(format!("{}: {}", step.name(), e.0));
                break;
            }
        }
        // The steps rerun whole on a resume (all but bootstrap/join are idempotent, that one has its
        // sentinel): the journal says which ran, not a digest to compare.
        if let Err(e) = state.journal_step(target, PHASE, step.name(), "done".into()) {
            failed = Some(e);
            break;
        }
    }
    for step in steps.iter().skip(reports.len()) {
        reports.push(report(*step, "not-run", 0, None, None));
    }
    if let Some(message) = failed {
        return runner.fail_phase(PHASE, &record.source, reports, message, Exit::StepFailed);
    }
    if let Err(e) = state.complete(target, PHASE) {
        return runner.fail_phase(PHASE, &record.source, reports, e, Exit::StepFailed);
    }
    runner.finish_phase(PHASE, &record.source, reports, None)
}

fn report(
    step: StepName,
    outcome: &str,
    ms: u64,
    error: Option<String>,
    detail: Option<String>,
) -> StepReport {
    StepReport {
        phase: PHASE.into(),
        name: step.name().into(),
        outcome: outcome.into(),
        ms,
        error,
        detail,
    }
}

impl Node<'_> {
    fn apply(&self, step: StepName, state: &mut State) -> Result<Done, StepError> {
        match step {
            StepName::Preload => self.preload(),
            StepName::Hardening => self.hardening(),
            StepName::Config => self.config(),
            StepName::Bootstrap | StepName::Join => self.membership(state),
            StepName::Images => self.images(),
            StepName::Ready => self.ready(),
            StepName::Modes => self.modes(),
        }
    }

    /// Copies every archive of [`IMAGES_DIR`] into the side-load folder (0600), unless the distribution already
    /// imported it (it renames an imported `X.tar` to `X.tar.loaded`).
    fn preload(&self) -> Result<Done, StepError> {
        let t = self.target;
        let source = t.resolve(IMAGES_DIR, true)?;
        let mut names = Vec::new();
        match fs::read_dir(&source) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(|e| StepError(format!("{IMAGES_DIR}: {e}")))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".tar") {
                        names.push(name);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StepError(format!("{IMAGES_DIR}: {e}"))),
        }
        names.sort();
        if names.len() < self.preloads.len() {
            return Err(StepError(format!(
                "{IMAGES_DIR} holds {} archives, the profile preloads {}: the image is not the one built from this profile",
                names.len(),
                self.preloads.len()
            )));
        }
        if names.is_empty() {
            return Ok(Done::new(false, "no preloaded images"));
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
                .map_err(|e| StepError(format!("{IMAGES_DIR}/{name}: {e}")))?
                .len();
            if fs::metadata(&host).is_ok_and(|m| m.len() == size) {
                continue;
            }
            t.copy_in(&from, &to, OWNER_0600)?;
            bytes += size;
            changed = true;
        }
        Ok(Done::new(
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
    fn hardening(&self) -> Result<Done, StepError> {
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
            if t.is_live() {
                for (k, v) in sysctls {
                    // The profile's own [system] sysctl is applied later in the boot order (90-cairn.conf) and
                    // wins: it is the platform team's explicit choice.
                    if self.profile.system.sysctl.contains_key(*k) {
                        continue;
                    }
                    let path = format!("/proc/sys/{}", k.replace('.', "/"));
                    fs::write(&path, v).map_err(|e| StepError(format!("sysctl {k} = {v}: {e}")))?;
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
                if changed && t.is_live() {
                    services::reload_live(&[], &masked)?;
                }
                detail.push_str(&format!(", masked: {}", masked.join(" ")));
            }
        }
        Ok(Done::new(changed, detail))
    }

    fn config(&self) -> Result<Done, StepError> {
        let t = self.target;
        let mut changed = t.ensure_dir(KUBERNETES_DIR, OWNER_0700)?;
        let text = config::render(self.kubernetes, self.kind);
        changed |= t.write(self.kind.path(), text.as_bytes(), OWNER_0600)?;
        Ok(Done::new(changed, self.kind.path()))
    }

    fn membership(&self, state: &mut State) -> Result<Done, StepError> {
        let t = self.target;
        let (verb, token) = match self.membership {
            Membership::Member { .. } => {
                let mut detail = format!("done on an earlier boot ({SENTINEL})");
                // An earlier boot may have stopped between its join and cutting the token out of the ESP.
                detail.push_str(&self.forget_token(state)?);
                return Ok(Done::new(false, detail));
            }
            Membership::Bootstrap => ("bootstrap", None),
            Membership::Join(token) => ("join-cluster", Some(token)),
        };
        let k8s = self.settings.k8s()?;
        // An earlier boot may have been cut off after the distribution accepted the command but before the
        // sentinel was written: the distribution refuses a second bootstrap, and a token is single-use.
        let already = Command::new(&k8s)
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !already {
            let file = t.resolve(self.kind.path(), true)?;
            let mut cmd = Command::new(&k8s);
            cmd.arg(verb);
            if let Some(token) = token {
                cmd.arg(token.expose());
            }
            cmd.arg("--name")
                .arg(&self.name)
                .arg("--address")
                .arg(&self.address)
                .arg("--file")
                .arg(&file)
                .arg("--timeout")
                .arg(format!("{}s", self.settings.ready_timeout.as_secs()));
            k8s_command(cmd, &k8s, verb, token)?;
        }
        let sentinel = Sentinel {
            role: self.role.name().into(),
            command: verb.into(),
            name: self.name.clone(),
            address: self.address.clone(),
        };
        let json = serde_json::to_string(&sentinel).map_err(|e| StepError(e.to_string()))?;
        t.write(SENTINEL, format!("{json}\n").as_bytes(), OWNER_0600)?;
        let mut detail = if already {
            format!(
                "already a cluster member, the distribution says (an earlier boot stopped after `k8s {verb}`): not run again"
            )
        } else {
            format!("{verb} as {} at {}", self.name, self.address)
        };
        detail.push_str(&self.forget_token(state)?);
        Ok(Done::new(true, detail))
    }

    /// Cuts the join token out of the ESP's instance file, when the instance data came from there and holds one.
    fn forget_token(&self, state: &mut State) -> Result<String, StepError> {
        match self.found {
            Some(f) if f.source == SourceKind::Esp && without_secrets(&f.text).is_some() => {
                forget_esp_token(f, state, self.target)
            }
            _ => Ok(String::new()),
        }
    }

    /// Checks through containerd's socket that every preloaded image is in namespace `k8s.io` with its pinned
    /// digest.
    fn images(&self) -> Result<Done, StepError> {
        if self.preloads.is_empty() {
            return Ok(Done::new(false, "no preloaded images"));
        }
        let socket = &self.settings.containerd_socket;
        containerd::wait_for(socket, self.settings.containerd_wait)
            .map_err(|e| StepError(format!("containerd: {e}")))?;
        let images = containerd::list_images(socket, NAMESPACE, Duration::from_secs(30))
            .map_err(|e| StepError(format!("containerd: {e}")))?;
        for p in self.preloads {
            let pinned = p
                .rock
                .reference
                .digest
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            match images.iter().find(|i| i.name == p.name) {
                None => {
                    return Err(StepError(format!(
                        "image {} ({}): not in containerd's {NAMESPACE} namespace",
                        p.name, p.rock.key
                    )));
                }
                Some(i) if i.target.digest != pinned => {
                    return Err(StepError(format!(
                        "image {} ({}): containerd has {}, the profile pins {pinned}",
                        p.name, p.rock.key, i.target.digest
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Done::new(
            false,
            format!(
                "{} images with their pinned digests in namespace {NAMESPACE}",
                self.preloads.len()
            ),
        ))
    }

    fn ready(&self) -> Result<Done, StepError> {
        let k8s = self.settings.k8s()?;
        let mut cmd = Command::new(&k8s);
        cmd.args(["status", "--wait-ready", "--timeout"])
            .arg(format!("{}s", self.settings.ready_timeout.as_secs()));
        let out = k8s_command(cmd, &k8s, "status --wait-ready", None)?;
        let first = out.lines().next().unwrap_or("ready").trim().to_string();
        Ok(Done::new(false, first))
    }
}

/// The folders whose files the distribution writes with keys, certificates, kubeconfigs and component arguments.
pub const DISTRIBUTION_FILES: &[&str] = &["/etc/kubernetes", "/var/snap/k8s/common/args"];

impl Node<'_> {
    /// Under a hardening preset, once the node is ready: every file the distribution wrote under
    /// [`DISTRIBUTION_FILES`] is made owner-only (0600 for a 0644 file), as the CIS benchmark asks.
    fn modes(&self) -> Result<Done, StepError> {
        if self.kubernetes.hardening == Hardening::None {
            return Ok(Done::new(false, "hardening none: not checked"));
        }
        let mut checked = 0;
        let mut tightened = Vec::new();
        for dir in DISTRIBUTION_FILES {
            let host = self.target.resolve(dir, true)?;
            owner_only(&host, dir, &mut checked, &mut tightened)?;
        }
        let mut detail = format!("{checked} files of the distribution checked");
        if !tightened.is_empty() {
            detail.push_str(&format!(", made owner-only: {}", tightened.join(", ")));
        }
        Ok(Done::new(!tightened.is_empty(), detail))
    }
}

fn owner_only(
    host: &Path,
    shown: &str,
    checked: &mut usize,
    tightened: &mut Vec<String>,
) -> Result<(), StepError> {
    let entries = match fs::read_dir(host) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StepError(format!("{shown}: {e}"))),
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{shown}/{}", e.file_name().to_string_lossy());
        let meta =
            fs::symlink_metadata(e.path()).map_err(|err| StepError(format!("{name}: {err}")))?;
        if meta.is_dir() {
            owner_only(&e.path(), &name, checked, tightened)?;
        } else if meta.is_file() {
            *checked += 1;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                fs::set_permissions(e.path(), fs::Permissions::from_mode(mode & 0o7700))
                    .map_err(|err| StepError(format!("{name}: {err}")))?;
                tightened.push(name);
            }
        }
    }
    Ok(())
}

/// Runs a distribution command; its output goes to the journal (the unit's stdout), the token masked.
fn k8s_command(
    mut cmd: Command,
    k8s: &Path,
    verb: &str,
    token: Option<&JoinToken>,
) -> Result<String, StepError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StepError(format!("{} {verb}: {e}", k8s.display())))?;
    let mask = |s: &[u8]| {
        let text = String::from_utf8_lossy(s).into_owned();
        match token {
            Some(t) if !t.expose().is_empty() => text.replace(t.expose(), "<join-token>"),
            _ => text,
        }
    };
    let stdout = mask(&out.stdout);
    let stderr = mask(&out.stderr);
    for line in stdout.lines().chain(stderr.lines()) {
        println!("k8s {verb}: {line}");
    }
    if !out.status.success() {
        let why = stderr
            .lines()
            .chain(stdout.lines())
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .to_string();
        return Err(StepError(format!(
            "`k8s {verb}` failed ({}): {why}",
            out.status
        )));
    }
    Ok(stdout)
}

/// Removes `join-token` from the ESP's instance file once the node has joined, keeping every other byte; the
/// agent's record of that file follows, so the next boot does not see "instance changed".
fn forget_esp_token(
    found: &Found,
    state: &mut State,
    target: &Target,
) -> Result<String, StepError> {
    let path = Path::new(&found.name);
    let Some(text) = without_secrets(&found.text) else {
        return Ok(format!(
            "; the join token could not be cut out of {} by line: remove it by hand",
            path.display()
        ));
    };
    // Only a rewrite the agent can read back, with no token and nothing else lost, is written.
    match Instance::parse(&found.name, &text) {
        Ok(i) if i.kubernetes.join_token.is_none() && i.kubernetes.encryption_key.is_none() => {}
        _ => {
            return Ok(format!(
                "; the join token was left in {}: remove it by hand",
                path.display()
            ));
        }
    }
    let tmp = path.with_extension("toml.cairn-tmp");
    fs::write(&tmp, &text)
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StepError(format!(
                "removing the join token from {}: {e}",
                path.display()
            ))
        })?;
    let old = hex::encode(Sha256::digest(found.text.as_bytes()));
    let new = hex::encode(Sha256::digest(text.as_bytes()));
    for record in state.instance.values_mut() {
        if record.source == SourceKind::Esp.as_str() && record.sha256 == old {
            record.sha256 = new.clone();
        }
    }
    state
        .save(target)
        .map_err(|e| StepError(format!("saving the agent state: {e}")))?;
    Ok(format!("; join secrets removed from {}", path.display()))
}

/// The secrets a node needs once, to join: cut out of the ESP's instance file once it has joined.
const ONE_TIME_SECRETS: &[&str] = &["join-token", "encryption-key"];

/// The instance text without its `[kubernetes]` `join-token = ...` and `encryption-key = ...` lines; `None`
/// when there is no such line.
fn without_secrets(text: &str) -> Option<String> {
    let mut table = String::new();
    let mut out = String::with_capacity(text.len());
    let mut removed = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            table = t
                .trim_end()
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        } else if table == "kubernetes" {
            let key = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if ONE_TIME_SECRETS.contains(&key) && t.contains('=') {
                removed = true;
                continue;
            }
        }
        out.push_str(line);
    }
    removed.then_some(out)
}

/// The node's name when the instance data gives none: its hostname, lower-cased.
fn node_name(target: &Target) -> Result<String, String> {
    let name = if target.is_live() {
        fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| format!("hostname: {e}"))?
    } else {
        target
            .read_string("/etc/hostname")
            .map_err(|e| e.to_string())?
            .unwrap_or_default()
    };
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || !cairn_profile::kubernetes::dns_subdomain_ok(&name) {
        return Err(format!(
            "the hostname `{name}` is not a valid node name: give [kubernetes] node-name in the instance data"
        ));
    }
    Ok(name)
}

/// The address given to the distribution: the instance's `address` (a CIDR is narrowed to this node's own
/// address in it when joining: `join-cluster` takes an IP), else [`default_address`], waited for.
fn node_address(
    target: &Target,
    given: Option<&str>,
    joining: bool,
    wait: Duration,
) -> Result<String, String> {
    let Some(given) = given else {
        return wait_for_address(target, wait).ok_or_else(|| {
            "no address for the node: none in the instance data ([kubernetes] address), and no link had an IPv4 address within the wait".to_string()
        });
    };
    match cairn_profile::kubernetes::Cidr::parse(given) {
        Some(cidr) if joining => {
            let deadline = Instant::now()
                + if target.is_live() {
                    wait
                } else {
                    Duration::ZERO
                };
            loop {
                if let Some((_, ip)) = ipv4_addresses()
                    .into_iter()
                    .find(|(_, ip)| cidr.contains(std::net::IpAddr::V4(*ip)))
                {
                    return Ok(ip.to_string());
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "[kubernetes] address {given}: no address of this node is in it, and a join takes the node's own address"
                    ));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        _ => Ok(given.to_string()),
    }
}

/// [`default_address`], polled on a live node until `wait` has passed.
fn wait_for_address(target: &Target, wait: Duration) -> Option<String> {
    let deadline = Instant::now()
        + if target.is_live() {
            wait
        } else {
            Duration::ZERO
        };
    loop {
        if let Some(a) = default_address() {
            return Some(a);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The node's address: the first IPv4 address of the link that carries the default route, else (an isolated
/// site may have no default route) the first one of any link but the loopback, links in name order.
fn default_address() -> Option<String> {
    let addresses = ipv4_addresses();
    let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_link = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    default_link
        .and_then(|link| addresses.iter().find(|(l, _)| *l == link))
        .or_else(|| addresses.first())
        .map(|(_, a)| a.to_string())
}

/// Every link's IPv4 addresses but loopback and link-local ones, sorted by link name.
fn ipv4_addresses() -> Vec<(String, std::net::Ipv4Addr)> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that freeifaddrs releases; it is only read in between.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_addr, when set, points at a sockaddr of the family it names.
        if ifa.ifa_addr.is_null()
            || ifa.ifa_name.is_null()
            || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET
        {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string; the family is AF_INET, so the address is a sockaddr_in.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() {
            found.push((name.to_string_lossy().into_owned(), ip));
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found.sort();
    found
}

/// 32 random bytes from the kernel, base64: the secrets encryption key.
fn random_key() -> Result<String, StepError> {
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| StepError(format!("/dev/urandom: {e}")))?;
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

    #[test]
    fn the_join_token_line_alone_is_cut() {
        let text = "# node 7\n[system]\nhostname = \"n7\"\n\n[kubernetes]\nrole = \"worker\"\njoin-token = \"abc\" # from cp\nnode-name = \"n7\"\n";
        assert_eq!(
            without_secrets(text).unwrap(),
            "# node 7\n[system]\nhostname = \"n7\"\n\n[kubernetes]\nrole = \"worker\"\nnode-name = \"n7\"\n"
        );
        // Not in [kubernetes]: not touched.
        assert!(without_secrets("[system]\njoin-token = \"x\"\n").is_none());
        assert!(without_secrets("[kubernetes]\nrole = \"worker\"\n").is_none());
    }
}
