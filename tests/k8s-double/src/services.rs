//! The node's services once the distribution accepted a bootstrap or join, and the paths they use.
//!
//! k8sd starts the snap's services (containerd among them) and the join returns as soon as they are up; the image
//! import runs later, in the background (k8sd pkg/k8sd/app/hooks_join.go, hooks_bootstrap.go; the side-load
//! plugin of k8s-snap build-scripts/components/containerd/patches). The double does the same with stand-ins:
//! - `K8S_DOUBLE_SERVICES=systemd` (the default, in the booted VM): `systemctl start k8s-double-containerd.service`
//!   (Debian's containerd binary under a unit of the test rock, standing for `snap.k8s.containerd`, on the snap's
//!   socket), then `systemctl start --no-block` of `k8s-double-kubelet.service` and, when archives wait,
//!   `k8s-double-sideload.service`;
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
pub const CONTAINERD_UNIT: &str = "k8s-double-containerd.service";
pub const KUBELET_UNIT: &str = "k8s-double-kubelet.service";
pub const SIDELOAD_UNIT: &str = "k8s-double-sideload.service";
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
    Systemd,
    Process,
}

fn services() -> Result<Services, String> {
    match std::env::var("K8S_DOUBLE_SERVICES").as_deref() {
        Err(_) | Ok("systemd") => Ok(Services::Systemd),
        Ok("process") => Ok(Services::Process),
        Ok(other) => Err(format!(
            "K8S_DOUBLE_SERVICES={other:?}: expected systemd or process"
        )),
    }
}

/// Starts the services of a node that just bootstrapped or joined, and queues the background import when the
/// side-load folder holds archives. Returns once containerd runs; the kubelet and the import are left running.
pub fn start(sideload_dir: &Path, console: &mut Console) -> Result<(), String> {
    let waiting = sideload::archives(sideload_dir).map_err(|e| e.to_string())?;
    let kubelet = crate::kubelet::enabled();
    match services()? {
        Services::Systemd => {
            // sd_booted(3): systemd is PID 1 when this folder exists.
            if !Path::new("/run/systemd/system").is_dir() {
                return Err(
                    "systemd is not PID 1 to start the services (K8S_DOUBLE_SERVICES=process on a host)"
                        .into(),
                );
            }
            systemctl(&["start", CONTAINERD_UNIT], console)?;
            let ctr = sideload::find_tool("ctr").map_err(|e| e.to_string())?;
            let socket = containerd_socket();
            sideload::wait_for_containerd(&ctr, &socket).map_err(|e| e.to_string())?;
            console.line(&format!("containerd answers on {}", socket.display()));
            let mut queued = Vec::new();
            if kubelet {
                queued.push(KUBELET_UNIT);
            }
            if !waiting.is_empty() {
                queued.push(SIDELOAD_UNIT);
            }
            if !queued.is_empty() {
                let mut args = vec!["start", "--no-block"];
                args.extend(&queued);
                systemctl(&args, console)?;
            }
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

/// Runs `systemctl ARGS`, at most a minute.
fn systemctl(args: &[&str], console: &mut Console) -> Result<(), String> {
    let systemctl = sideload::find_tool("systemctl").map_err(|e| e.to_string())?;
    console.line(&format!("systemctl {}", args.join(" ")));
    let mut cmd = Command::new(systemctl);
    cmd.args(args);
    sideload::run(cmd, Instant::now() + Duration::from_secs(60))
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
