//! The profile's `[system]` settings that are the same on every machine, written into the image at build time:
//! the time zone, the sysctl and module files, unit enablement as the symlinks `systemctl enable` makes, and DHCP
//! on every ethernet link through systemd-networkd. They end up under dm-verity with the rest of the root and are
//! listed in the build report; systemd applies them at boot (systemd-sysctl, systemd-modules-load, the unit
//! links) before the agent runs. What depends on the machine (its id, hostname, users, instance files) stays
//! with the agent. On a Kubernetes node (a profile with `[kubernetes]`) the image's own `containerd.service` is
//! masked: the distribution runs its own containerd, and refuses to bootstrap or join while `/run/containerd`
//! exists (canonical/k8sd pkg/snap/snap.go PreInitChecks).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_profile::Profile;
use cairn_profile::system::unit_file_name;
use serde::Serialize;

use crate::assemble::tree::{Data, Meta, New, Node, Special, Tree, TreeError};
use crate::filesystem::{self, FilesystemError};

pub const SYSCTL_FILE: &str = "etc/sysctl.d/90-cairn.conf";
pub const MODULES_FILE: &str = "etc/modules-load.d/cairn.conf";
pub const NETWORK_FILE: &str = "etc/systemd/network/80-cairn-dhcp.network";
const NETWORK_CONFIG: &str = "# Written by cairn: DHCP on every ethernet link.\n[Match]\nType=ether\nKind=!*\n\n[Network]\nDHCP=yes\n";
/// What the network file needs running; enabled when the image has systemd-networkd.
pub const NETWORK_UNITS: &[&str] = &[
    "systemd-networkd.service",
    "systemd-networkd-wait-online.service",
];
const ETC_UNITS: &str = "etc/systemd/system";
/// The base's containerd (Debian's package enables it), masked on a Kubernetes node.
pub const HOST_CONTAINERD: &str = "containerd.service";
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "system.timezone {zone}: /usr/share/zoneinfo/{zone} does not exist in the image (is tzdata installed?)"
    )]
    Timezone { zone: String },
    #[error(
        "system.services: unit {unit} not found in /etc/systemd/system, /usr/lib/systemd/system or /lib/systemd/system"
    )]
    UnitMissing { unit: String },
    #[error("system.services: {unit} has no [Install] section: it cannot be enabled")]
    NotInstallable { unit: String },
    #[error("system.services: {unit}: not UTF-8")]
    UnitText { unit: String },
    #[error(
        "system.services enables {HOST_CONTAINERD} on a Kubernetes node: the distribution runs its own containerd and refuses to bootstrap or join while another one has made /run/containerd"
    )]
    ContainerdOnKubernetes,
    #[error(transparent)]
    Read(#[from] FilesystemError),
    #[error("{path}: {source}")]
    Tree { path: String, source: TreeError },
}

/// What was written, for the build report: each path with what it is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Baked {
    pub files: Vec<BakedPath>,
    /// Set when the image has no systemd-networkd, so its network is left as the rocks made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BakedPath {
    pub path: String,
    /// `timezone`, `sysctl`, `modules`, `network`, `enable`, `mask` or `disable` (a link removed).
    pub what: &'static str,
}

struct Baker<'a> {
    tree: &'a mut Tree,
    layer_tars: &'a [PathBuf],
    baked: Baked,
}

/// Writes the profile's machine-independent `[system]` settings into `tree`.
pub fn bake(
    tree: &mut Tree,
    layer_tars: &[PathBuf],
    profile: &Profile,
) -> Result<Baked, SystemError> {
    let s = &profile.system;
    let mut b = Baker {
        tree,
        layer_tars,
        baked: Baked::default(),
    };
    if let Some(zone) = &s.timezone {
        b.timezone(zone)?;
    }
    if !s.sysctl.is_empty() {
        let mut text = String::from("# Written by cairn from the node's profile.\n");
        for (k, v) in &s.sysctl {
            text.push_str(&format!("{k} = {v}\n"));
        }
        b.file(SYSCTL_FILE, &text, "sysctl")?;
    }
    if !s.modules.is_empty() {
        let mut text = String::from("# Written by cairn from the node's profile.\n");
        for m in &s.modules {
            text.push_str(m);
            text.push('\n');
        }
        b.file(MODULES_FILE, &text, "modules")?;
    }
    if b.find_unit(NETWORK_UNITS[0])?.is_some() {
        b.file(NETWORK_FILE, NETWORK_CONFIG, "network")?;
        let units: Vec<String> = NETWORK_UNITS.iter().map(|u| u.to_string()).collect();
        b.enable(&units)?;
    } else {
        b.baked.network_note = Some(format!(
            "no {} in the image: its network is left as its rocks made it",
            NETWORK_UNITS[0]
        ));
    }
    if profile.kubernetes.is_some()
        && s.services
            .enable
            .iter()
            .any(|n| unit_file_name(n) == HOST_CONTAINERD)
    {
        return Err(SystemError::ContainerdOnKubernetes);
    }
    b.enable(&s.services.enable)?;
    b.disable(&s.services.disable)?;
    if profile.kubernetes.is_some() {
        b.mask_host_containerd()?;
    }
    let mut baked = b.baked;
    baked.files.sort_by(|x, y| x.path.cmp(&y.path));
    baked.files.dedup_by(|x, y| x.path == y.path);
    Ok(baked)
}

/// A unit's file and its `[Install]` section.
struct Unit {
    name: String,
    /// Absolute, as `systemctl enable` links to it.
    path: String,
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    also: Vec<String>,
    alias: Vec<String>,
}

impl Baker<'_> {
    fn put(&mut self, path: &str, new: New, what: &'static str) -> Result<(), SystemError> {
        self.tree
            .put(path.as_bytes(), new)
            .map_err(|source| SystemError::Tree {
                path: format!("/{path}"),
                source,
            })?;
        self.baked.files.push(BakedPath {
            path: format!("/{path}"),
            what,
        });
        Ok(())
    }

    fn file(&mut self, path: &str, text: &str, what: &'static str) -> Result<(), SystemError> {
        let data = Data::Bytes(Arc::from(text.as_bytes()));
        self.put(path, New::File(Meta::new(0o644, 0, 0), data), what)
    }

    fn symlink(&mut self, path: &str, to: &str, what: &'static str) -> Result<(), SystemError> {
        let link = Special::Symlink(to.as_bytes().to_vec());
        self.put(path, New::Other(Meta::new(0o777, 0, 0), link), what)
    }

    /// Takes `path` out of the tree, and reports it when it was there.
    fn remove(&mut self, path: &str) {
        if self.tree.detach(path.as_bytes()).is_some() {
            self.baked.files.push(BakedPath {
                path: format!("/{path}"),
                what: "disable",
            });
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.tree.lookup(path.as_bytes()).is_some()
    }

    fn timezone(&mut self, zone: &str) -> Result<(), SystemError> {
        self.file("etc/timezone", &format!("{zone}\n"), "timezone")?;
        let zoneinfo = format!("usr/share/zoneinfo/{zone}");
        if self.exists(&zoneinfo) {
            self.symlink("etc/localtime", &format!("/{zoneinfo}"), "timezone")
        } else if zone == "UTC" || zone == "Etc/UTC" {
            // Without tzdata, no /etc/localtime means UTC to the C library.
            self.remove("etc/localtime");
            Ok(())
        } else {
            Err(SystemError::Timezone { zone: zone.into() })
        }
    }

    fn find_unit(&self, name: &str) -> Result<Option<Unit>, SystemError> {
        for dir in UNIT_DIRS {
            let path = format!("{dir}/{name}");
            let Some(bytes) = filesystem::read_file(self.tree, self.layer_tars, &path)? else {
                continue;
            };
            let text = String::from_utf8(bytes)
                .map_err(|_| SystemError::UnitText { unit: name.into() })?;
            let mut unit = Unit {
                name: name.to_string(),
                path: format!("/{path}"),
                wanted_by: vec![],
                required_by: vec![],
                also: vec![],
                alias: vec![],
            };
            let mut in_install = false;
            for line in text.lines().map(str::trim) {
                if line.starts_with('[') {
                    in_install = line == "[Install]";
                    continue;
                }
                if let (true, Some((k, v))) = (in_install, line.split_once('=')) {
                    let values = v.split_whitespace().map(str::to_string);
                    match k.trim() {
                        "WantedBy" => unit.wanted_by.extend(values),
                        "RequiredBy" => unit.required_by.extend(values),
                        "Also" => unit.also.extend(values),
                        "Alias" => unit.alias.extend(values),
                        _ => {}
                    }
                }
            }
            return Ok(Some(unit));
        }
        Ok(None)
    }

    fn unit(&self, name: &str) -> Result<Unit, SystemError> {
        self.find_unit(name)?
            .ok_or_else(|| SystemError::UnitMissing { unit: name.into() })
    }

    fn enable(&mut self, names: &[String]) -> Result<(), SystemError> {
        let mut seen = BTreeSet::new();
        for n in names {
            self.enable_one(&unit_file_name(n), &mut seen)?;
        }
        Ok(())
    }

    /// The links `systemctl enable` makes for a unit and the units its `Also=` names.
    fn enable_one(&mut self, name: &str, seen: &mut BTreeSet<String>) -> Result<(), SystemError> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let unit = self.unit(name)?;
        // A masked unit cannot start: enabling it unmasks it.
        let etc = format!("{ETC_UNITS}/{name}");
        if self.is_mask(&etc) {
            self.tree.detach(etc.as_bytes());
        }
        if unit.wanted_by.is_empty() && unit.required_by.is_empty() && unit.also.is_empty() {
            return Err(SystemError::NotInstallable { unit: name.into() });
        }
        for (dir, targets) in [("wants", &unit.wanted_by), ("requires", &unit.required_by)] {
            for t in targets {
                let link = format!("{ETC_UNITS}/{t}.{dir}/{}", unit.name);
                self.symlink(&link, &unit.path, "enable")?;
            }
        }
        for alias in &unit.alias {
            self.symlink(&format!("{ETC_UNITS}/{alias}"), &unit.path, "enable")?;
        }
        for also in &unit.also {
            self.enable_one(also, seen)?;
        }
        Ok(())
    }

    fn is_mask(&self, path: &str) -> bool {
        self.tree.lookup(path.as_bytes()).is_some_and(|id| {
            matches!(self.tree.node(id), Node::Other { special: Special::Symlink(t), .. } if t == b"/dev/null")
        })
    }

    /// Masked rather than only disabled: any unit that wants or requires it, or a `systemctl start`, would still
    /// start a disabled one, make /run/containerd and so break every bootstrap and join. A unit of another name
    /// running the same binary (the distribution's, or a test double's) is not affected.
    fn mask_host_containerd(&mut self) -> Result<(), SystemError> {
        let Some(unit) = self.find_unit(HOST_CONTAINERD)? else {
            return Ok(());
        };
        for (dir, targets) in [("wants", &unit.wanted_by), ("requires", &unit.required_by)] {
            for t in targets {
                self.remove(&format!("{ETC_UNITS}/{t}.{dir}/{HOST_CONTAINERD}"));
            }
        }
        for alias in &unit.alias {
            self.remove(&format!("{ETC_UNITS}/{alias}"));
        }
        self.symlink(
            &format!("{ETC_UNITS}/{HOST_CONTAINERD}"),
            "/dev/null",
            "mask",
        )
    }

    /// Removes a unit's links from /etc; one still wanted by the vendor's own links is masked, as `systemctl
    /// disable` leaves it enabled otherwise.
    fn disable(&mut self, names: &[String]) -> Result<(), SystemError> {
        for n in names {
            let name = unit_file_name(n);
            let unit = self.unit(&name)?;
            let mut links = Vec::new();
            for (dir, targets) in [("wants", &unit.wanted_by), ("requires", &unit.required_by)] {
                for t in targets {
                    links.push(format!("{t}.{dir}/{name}"));
                }
            }
            for link in links.iter().chain(&unit.alias) {
                self.remove(&format!("{ETC_UNITS}/{link}"));
            }
            let vendor_enabled = ["usr/lib/systemd/system", "lib/systemd/system"]
                .iter()
                .any(|d| links.iter().any(|l| self.exists(&format!("{d}/{l}"))));
            if vendor_enabled {
                self.symlink(&format!("{ETC_UNITS}/{name}"), "/dev/null", "mask")?;
            }
        }
        Ok(())
    }
}
