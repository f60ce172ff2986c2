//! The `kubernetes` phase: preloaded images placed → hardening files → the distribution's file → bootstrap or
//! join → images checked in containerd (waiting for the distribution's background import) → ready, judged from
//! what each role can see → the distribution's files made owner-only.
//!
//! Each step is journaled in the agent's state and shown in its status. Every step but bootstrap/join is
//! idempotent and simply runs again on the next boot after a failure; bootstrap/join is guarded by a sentinel
//! written right after the distribution accepted it, so a reboot never bootstraps twice. The join token is
//! passed on the one command line that needs it, never written to a file or a log by cairn; once the node has
//! joined, it is removed from the ESP's instance file when it came from there.

mod address;
pub mod config;
pub mod containerd;
mod esp;
mod probe;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

use cairn_profile::hardening;
use cairn_profile::kubernetes::{EncryptionKey, Hardening, JoinToken, Kubernetes, Preload};
use cairn_profile::{Profile, Role};

use crate::datasources::Found;
use crate::engine::{Done, Intent, Phase, Resume, Step, StepError};
use crate::run::{Ending, Exit, Journal, Loaded, Runner};
use crate::state::State;
use crate::target::{Owner, Target, TargetError};

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
    /// How long the preloaded images may take to appear in containerd: the distribution imports them in the
    /// background after its containerd starts, and a join returns before that.
    pub images_wait: Duration,
    /// `k8s status --wait-ready --timeout` (a control plane), and the bootstrap's and join's `--timeout`.
    pub ready_timeout: Duration,
    /// The kubelet's health endpoint, and how long it may take to answer `ok` once the node is a member.
    pub kubelet_healthz: String,
    pub kubelet_wait: Duration,
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
            images_wait: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(600),
            kubelet_healthz: probe::KUBELET_HEALTHZ.to_string(),
            kubelet_wait: Duration::from_secs(300),
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
                StepError::refused(format!(
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
    pub(crate) const ALL: [StepName; 8] = [
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
        target: &'a Target,
        settings: &'a Settings,
        profile: &'a Profile,
        loaded: &'a Loaded,
        kubernetes: &'a Kubernetes,
    ) -> Result<Node<'a>, StartError> {
        let instance = &loaded.merged.kubernetes_instance;
        // A node that bootstrapped or joined on an earlier boot resumes as what it became.
        let sentinel = match target.read(SENTINEL).map_err(StartError::Sentinel)? {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice::<Sentinel>(&bytes)
                    .map_err(|e| StartError::SentinelUnreadable(e.to_string()))?,
            ),
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
            (Role::Worker, None, None) => return Err(StartError::WorkerWithoutToken),
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
            return Err(StartError::NoEncryptionKey(kubernetes.hardening));
        }
        let name = match sentinel
            .as_ref()
            .map(|s| s.name.clone())
            .or_else(|| instance.node_name.clone())
        {
            Some(n) => n,
            None => address::node_name(target).map_err(StartError::Node)?,
        };
        let address = match sentinel.as_ref().map(|s| s.address.clone()) {
            Some(a) => a,
            None => address::node_address(
                target,
                instance.address.as_deref(),
                joining,
                settings.address_wait,
            )
            .map_err(StartError::Node)?,
        };
        Ok(Node {
            target,
            settings,
            kubernetes,
            role,
            membership,
            kind,
            name,
            address,
            preloads: &profile.preloads,
            profile,
            found: loaded.found.as_ref(),
            encryption_key: instance.encryption_key.as_ref(),
        })
    }
}

/// Why the phase cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "a worker joins a cluster: its instance data needs [kubernetes] join-token (made on a control plane by `k8s get-join-token NODE --worker`)"
    )]
    WorkerWithoutToken,
    #[error(
        "a control plane joining a cluster hardened with {} shares its secrets encryption key: its instance data needs [kubernetes] encryption-key (the `secret:` of {} on the first control plane)",
        .0.name(),
        hardening::ENCRYPTION_CONFIG
    )]
    NoEncryptionKey(Hardening),
    #[error(transparent)]
    Sentinel(TargetError),
    #[error("{SENTINEL}: unreadable ({0}): the node's cluster membership is unknown")]
    SentinelUnreadable(String),
    /// The node's name or address.
    #[error("{0}")]
    Node(String),
}

impl StartError {
    pub fn exit(&self) -> Exit {
        match self {
            StartError::WorkerWithoutToken | StartError::NoEncryptionKey(_) => Exit::BadInput,
            StartError::Sentinel(_) | StartError::SentinelUnreadable(_) | StartError::Node(_) => {
                Exit::StepFailed
            }
        }
    }
}

impl<'a> Step<Node<'a>> for StepName {
    fn name(&self) -> &'static str {
        StepName::name(*self)
    }

    fn describe(&self) -> String {
        match self {
            StepName::Preload => format!("copy the preloaded archives of {IMAGES_DIR} into {SIDELOAD_DIR}"),
            StepName::Hardening => "the preset's sysctls and, on a control plane, its admission, audit and encryption files".into(),
            StepName::Config => "the distribution's bootstrap or join file".into(),
            StepName::Bootstrap => "`k8s bootstrap`, once (asking `k8s local-node-status` first whether the node is a member)".into(),
            StepName::Join => "`k8s join-cluster` with the instance's token, once (asking `k8s local-node-status` first)".into(),
            StepName::Images => format!("wait for each preloaded image in containerd's {NAMESPACE} namespace with its pinned digest"),
            StepName::Ready => "a member (`k8s local-node-status`) whose kubelet is healthy; on a control plane also `k8s status --wait-ready`".into(),
            StepName::Modes => "make the distribution's files owner-only and etcd's folder 0700 under a hardening preset".into(),
        }
    }

    /// The steps rerun whole on a resume: all but bootstrap/join are idempotent, and that one has its sentinel.
    fn resume(&self) -> Resume {
        Resume::Rerun
    }

    /// Files are written dry; the distribution's commands, the waits and the modes pass are said instead.
    fn dry(&self, node: &Node<'a>) -> Option<Intent> {
        Some(match self {
            StepName::Preload | StepName::Hardening | StepName::Config => return None,
            StepName::Bootstrap | StepName::Join => match node.membership {
                Membership::Member { .. } => Intent::Nothing(format!(
                    "the node is a member already ({SENTINEL}), it never bootstraps or joins twice"
                )),
                Membership::Bootstrap => Intent::Would(format!(
                    "would run `k8s bootstrap` as {} at {}, unless `k8s local-node-status` says the node is a member",
                    node.name, node.address
                )),
                Membership::Join(_) => Intent::Would(format!(
                    "would run `k8s join-cluster` as {} at {} with the instance's token, unless `k8s local-node-status` says the node is a member",
                    node.name, node.address
                )),
            },
            StepName::Images if node.preloads.is_empty() => {
                Intent::Nothing("no preloaded images".into())
            }
            StepName::Images => Intent::Would(format!(
                "would wait for each of the {} preloaded images in containerd's {NAMESPACE} namespace (not tried in a dry run)",
                node.preloads.len()
            )),
            StepName::Ready => {
                Intent::Would("would wait for the node to be ready (not tried in a dry run)".into())
            }
            StepName::Modes if node.kubernetes.hardening == Hardening::None => {
                Intent::Nothing("hardening none".into())
            }
            StepName::Modes => Intent::Would(
                "would make the distribution's files owner-only and etcd's folders 0700, where they are not".into(),
            ),
        })
    }

    fn apply(&self, node: &mut Node<'a>, state: &mut State) -> Result<Done, StepError> {
        match self {
            StepName::Preload => node.preload(),
            StepName::Hardening => node.hardening(),
            StepName::Config => node.config(),
            StepName::Bootstrap | StepName::Join => node.membership(state),
            StepName::Images => node.images(),
            StepName::Ready => node.ready(),
            StepName::Modes => node.modes(),
        }
    }
}

/// Runs the phase for a profile with `[kubernetes]`.
pub(crate) fn run(runner: &Runner, profile: &Profile, loaded: &Loaded) -> Ending {
    let target = &runner.target;
    let Some(kubernetes) = loaded.merged.kubernetes.as_ref() else {
        runner
            .console
            .line("kubernetes: the profile has no [kubernetes] section: nothing to do");
        return Ending::Quiet;
    };
    // A node is provisioned once: a phase done on an earlier boot reads nothing more (the join token, for one,
    // may be gone from the instance data by then); a dry run says so.
    let journal = match runner.journal(Phase::Kubernetes, &loaded.record, true, |state| {
        let recorded = state.steps.get(PHASE);
        StepName::ALL
            .iter()
            .filter(|s| recorded.is_some_and(|r| r.contains_key(s.name())))
            .map(|s| s.name())
            .collect()
    }) {
        Journal::Ended(ending) => return runner.ended(Phase::Kubernetes, ending),
        journal => journal,
    };
    let mut node = match Node::new(target, &runner.opts.kubernetes, profile, loaded, kubernetes) {
        Ok(n) => n,
        Err(e) => {
            return Ending::Failed {
                steps: vec![],
                error: e.into(),
            };
        }
    };
    let join_or_bootstrap = if node.kind != FileKind::Bootstrap {
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
            "kubernetes: role {}, {} as {} at {}",
            node.role.name(),
            join_or_bootstrap.name(),
            node.name,
            node.address
        );
    }
    runner.steps(
        Phase::Kubernetes,
        &loaded.record,
        &steps,
        &mut node,
        journal,
        true,
    )
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::config;

    proptest! {
        #![proptest_config(config(256))]

        /// The sentinel of an earlier boot, whatever its bytes: a sentinel, or an error for
        /// [`StartError::SentinelUnreadable`]; a role it does not know leaves the profile's.
        #[test]
        fn a_sentinel_reads_back_or_fails(
            role in prop_oneof![Just("worker".to_string()), Just("control-plane".to_string()), any::<String>()],
            command in any::<String>(),
            name in any::<String>(),
            address in any::<String>(),
            damage in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let sentinel = Sentinel { role: role.clone(), command, name, address };
            let mut bytes = serde_json::to_vec(&sentinel).unwrap();
            if let Some((at, byte)) = damage {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            match serde_json::from_slice::<Sentinel>(&bytes) {
                Ok(read) => {
                    if damage.is_none() {
                        prop_assert_eq!(&read.role, &sentinel.role);
                        prop_assert_eq!(&read.command, &sentinel.command);
                        prop_assert_eq!(&read.name, &sentinel.name);
                        prop_assert_eq!(&read.address, &sentinel.address);
                    }
                    let _ = Role::parse(&read.role);
                }
                Err(e) => {
                    let error = StartError::SentinelUnreadable(e.to_string());
                    prop_assert!(!error.to_string().is_empty());
                }
            }
        }
    }
}
