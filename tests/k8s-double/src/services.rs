//! The node's services once the distribution accepted a bootstrap or join, and the paths they use.
//!
//! k8sd starts the snap's services (containerd among them) with `snap start --enable k8s.containerd k8s.kubelet
//! ...` (k8sd pkg/snap/snap.go StartServices, pkg/snap/util/services.go) and the join returns as soon as they are
//! up; the image import runs later, in the background (k8sd pkg/k8sd/app/hooks_join.go, hooks_bootstrap.go; the
//! side-load plugin of k8s-snap build-scripts/components/containerd/patches). The double does the same:
//! - `K8S_DOUBLE_SERVICES=snap` (the default, in the booted VM, where the double is the `k8s` snap): `snap start
//!   --enable k8s.containerd k8s.kubelet`, the snap's own daemons (`snap.k8s.containerd.service` runs Debian's
//!   containerd on the snap's socket, and starts the background import as the snap's containerd plugin does;
//!   `snap.k8s.kubelet.service` runs the kubelet stand-in), then waits for containerd to answer;
//! - `K8S_DOUBLE_SERVICES=process` (host tests): no containerd is started (the one on
//!   `K8S_DOUBLE_CONTAINERD_SOCKET`, if any, stands for it; the containerd folder is made as a started one would
//!   make it), and the kubelet stand-in and the import run as detached processes of the double itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::sideload::{self, SideLoadError};

/// The snap's containerd socket folder under classic confinement (k8sd pkg/snap/snap.go ContainerdSocketDir):
/// its existence before a bootstrap or join means another containerd runs on the node.
pub const DEFAULT_CONTAINERD_DIR: &str = "/run/containerd";
/// The snap's services the double has stand-ins for, as k8sd names them to `snap start` (pkg/snap/service.go).
pub const CONTAINERD_SERVICE: &str = "k8s.containerd";
pub const KUBELET_SERVICE: &str = "k8s.kubelet";
/// How long `snap start` may take: snapd runs `systemctl start` of a notify daemon, slow under emulation.
const SNAP_START_LIMIT: Duration = Duration::from_secs(300);
/// Selects what a run of the double is: unset, the `k8s` CLI; `sideload` or `kubelet`, a background stand-in.
pub const MODE_ENV: &str = "K8S_DOUBLE_MODE";

/// `K8S_DOUBLE_CONTAINERD_DIR`, else [`DEFAULT_CONTAINERD_DIR`].
pub fn containerd_dir() -> PathBuf {
    std::env::var_os("K8S_DOUBLE_CONTAINERD_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_DIR), PathBuf::from)
}

/// `K8S_DOUBLE_CONTAINERD_SOCKET`, else `containerd.sock` in [`containerd_dir`] (k8sd pkg/snap/snap.go
/// ContainerdSocketPath).
pub fn containerd_socket() -> PathBuf {
    std::env::var_os("K8S_DOUBLE_CONTAINERD_SOCKET")
        .map_or_else(|| containerd_dir().join("containerd.sock"), PathBuf::from)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Services {
    Snap,
    Process,
}

fn services() -> Result<Services, String> {
    match std::env::var("K8S_DOUBLE_SERVICES").as_deref() {
        Err(_) | Ok("snap") => Ok(Services::Snap),
        Ok("process") => Ok(Services::Process),
        Ok(other) => Err(format!(
            "K8S_DOUBLE_SERVICES={other:?}: expected snap or process"
        )),
    }
}

/// Starts the services of a node that just bootstrapped or joined, and queues the background import when the
/// side-load folder holds archives. Returns once containerd runs; the kubelet and the import are left running.
pub fn start(sideload_dir: &Path, console: &mut Console) -> Result<(), String> {
    let waiting = sideload::archives(sideload_dir).map_err(|e| e.to_string())?;
    let kubelet = crate::kubelet::enabled();
    match services()? {
        Services::Snap => {
            // snap run sets SNAP_NAME: outside the installed snap there are no snap.k8s.* services to start.
            if std::env::var("SNAP_NAME").as_deref() != Ok("k8s") {
                return Err(
                    "not run as the k8s snap (SNAP_NAME is not k8s): no snap services to start \
                     (K8S_DOUBLE_SERVICES=process on a host)"
                        .into(),
                );
            }
            console.line(&format!(
                "the k8s snap, revision {}",
                std::env::var("SNAP_REVISION").unwrap_or_default()
            ));
            // One call, as k8sd makes it; snapd orders the kubelet after containerd (its `after:`).
            let mut args = vec!["start", "--enable", CONTAINERD_SERVICE];
            if kubelet {
                args.push(KUBELET_SERVICE);
            }
            snap(&args, console)?;
            let ctr = sideload::find_tool("ctr").map_err(|e| e.to_string())?;
            let socket = containerd_socket();
            sideload::wait_for_containerd(&ctr, &socket).map_err(|e| e.to_string())?;
            console.line(&format!("containerd answers on {}", socket.display()));
        }
        Services::Process => {
            console.line("services: no containerd started (K8S_DOUBLE_SERVICES=process)");
            let dir = containerd_dir();
            std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            if kubelet {
                detach("kubelet")?;
                console.line(&format!(
                    "kubelet stand-in started in the background (healthz on {})",
                    crate::kubelet::address()
                ));
            }
            if !waiting.is_empty() {
                detach("sideload")?;
            }
        }
    }
    if waiting.is_empty() {
        console.line(&format!(
            "side-load {}: no archives",
            sideload_dir.display()
        ));
    } else {
        console.line(&format!(
            "side-load {}: {} archive(s), imported in the background in {:?}",
            sideload_dir.display(),
            waiting.len(),
            sideload::delay()
        ));
    }
    Ok(())
}

/// Runs `snap ARGS` (Debian's snap command, talking to snapd), at most [`SNAP_START_LIMIT`].
fn snap(args: &[&str], console: &mut Console) -> Result<(), String> {
    let snap = sideload::find_tool("snap").map_err(|e| e.to_string())?;
    console.line(&format!("snap {}", args.join(" ")));
    let mut cmd = Command::new(snap);
    cmd.args(args);
    sideload::run(cmd, Instant::now() + SNAP_START_LIMIT)
        .map(drop)
        .map_err(|e: SideLoadError| e.to_string())
}

/// Starts this same binary as a background stand-in (`K8S_DOUBLE_MODE=MODE`), in a process group of its own and
/// with no stdio, so it outlives the command and is not waited for.
fn detach(mode: &str) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("the double's own path: {e}"))?;
    Command::new(exe)
        .env(MODE_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("start the {mode} stand-in: {e}"))
}
