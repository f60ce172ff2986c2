//! The distribution's air-gapped image side-loading, done with the node's real containerd: every `*.tar` in the
//! side-load folder is imported into namespace `k8s.io` with `ctr` and renamed `*.tar.loaded`.
//!
//! As in the snap, this happens in the background, after the bootstrap or join has returned: the snap's containerd
//! carries a plugin that, once containerd is up, imports each archive once, logs a failure and goes on, and renames
//! only what it imported (k8s-snap build-scripts/components/containerd/patches/default/0001-side-load-images-plugin.patch).
//! The double runs it as `K8S_DOUBLE_MODE=sideload` after [`delay`]: started in the background by the `k8s` snap's
//! containerd service (its wrapper, beside containerd, as the plugin runs inside it) on a node, a detached process
//! on the host.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::Console;

pub const DEFAULT_DIR: &str = "/var/snap/k8s/common/images";
/// How long containerd gets to answer.
pub const CONTAINERD_WAIT: Duration = Duration::from_secs(60);
/// How long after the bootstrap or join the background import starts, unless `K8S_DOUBLE_SIDELOAD_DELAY` (a Go
/// duration) says otherwise: long enough that an images check made right after the join would miss it.
pub const DEFAULT_DELAY: Duration = Duration::from_secs(5);
/// How long one `ctr images import` may take. Not `--timeout`: the distribution imports in the background of
/// containerd's start, outside the bootstrap's time budget, and a big image under emulation is slow.
const IMPORT_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub enum SideLoadError {
    ReadDir(PathBuf, std::io::Error),
    ToolMissing(&'static str),
    Spawn(String, std::io::Error),
    Failed {
        command: String,
        status: String,
        output: String,
    },
    TimedOut(String),
    ContainerdSilent(PathBuf),
    Rename(PathBuf, std::io::Error),
}

impl fmt::Display for SideLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SideLoadError::ReadDir(p, e) => {
                write!(f, "read the side-load folder {}: {e}", p.display())
            }
            SideLoadError::ToolMissing(t) => {
                write!(f, "{t} not found (PATH, /usr/bin, /usr/sbin, /bin, /sbin)")
            }
            SideLoadError::Spawn(c, e) => write!(f, "start {c}: {e}"),
            SideLoadError::Failed {
                command,
                status,
                output,
            } => write!(f, "{command} failed ({status}): {}", output.trim()),
            SideLoadError::TimedOut(c) => write!(f, "{c} ran out of time; killed"),
            SideLoadError::ContainerdSilent(socket) => write!(
                f,
                "containerd did not answer on {} within {}s",
                socket.display(),
                CONTAINERD_WAIT.as_secs()
            ),
            SideLoadError::Rename(p, e) => write!(f, "rename {} to *.loaded: {e}", p.display()),
        }
    }
}

/// The `*.tar` archives waiting in `dir`, sorted; none when the folder does not exist.
pub fn archives(dir: &Path) -> Result<Vec<PathBuf>, SideLoadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SideLoadError::ReadDir(dir.to_path_buf(), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SideLoadError::ReadDir(dir.to_path_buf(), e))?;
        let path = entry.path();
        let is_tar = path.extension().is_some_and(|x| x == "tar");
        if is_tar && entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The background import: waits [`delay`], then imports every archive of `dir` through the containerd on
/// `socket`, renaming each `*.loaded`. An archive that fails is reported and left, as the plugin leaves it.
/// Returns how many were imported.
pub fn side_load(dir: &Path, socket: &Path, console: &mut Console) -> Result<usize, SideLoadError> {
    std::thread::sleep(delay());
    let archives = archives(dir)?;
    console.line(&format!(
        "side-load {}: importing {} archive(s)",
        dir.display(),
        archives.len()
    ));
    let ctr = find_tool("ctr")?;
    wait_for_containerd(&ctr, socket)?;
    let mut imported = 0;
    for archive in &archives {
        let mut cmd = Command::new(&ctr);
        cmd.arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive);
        console.line(&format!("import {}", archive.display()));
        let output = match run(cmd, Instant::now() + IMPORT_LIMIT) {
            Ok(o) => o,
            Err(e) => {
                console.line(&format!("error: import {}: {e}", archive.display()));
                continue;
            }
        };
        for line in output.lines() {
            console.line(&format!("ctr: {line}"));
        }
        let mut loaded = archive.clone().into_os_string();
        loaded.push(".loaded");
        std::fs::rename(archive, &loaded).map_err(|e| SideLoadError::Rename(archive.clone(), e))?;
        console.line(&format!("loaded {}", Path::new(&loaded).display()));
        imported += 1;
    }
    console.line(&format!(
        "side-load done: {imported} of {} imported",
        archives.len()
    ));
    Ok(imported)
}

/// `K8S_DOUBLE_SIDELOAD_DELAY` (a Go duration such as `500ms`), else [`DEFAULT_DELAY`].
pub fn delay() -> Duration {
    std::env::var("K8S_DOUBLE_SIDELOAD_DELAY")
        .ok()
        .and_then(|v| crate::cli::parse_duration(&v))
        .unwrap_or(DEFAULT_DELAY)
}

/// Waits up to [`CONTAINERD_WAIT`] for `ctr version` to succeed on `socket`.
pub fn wait_for_containerd(ctr: &Path, socket: &Path) -> Result<(), SideLoadError> {
    let until = Instant::now() + CONTAINERD_WAIT;
    loop {
        if containerd_answers(ctr, socket) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(SideLoadError::ContainerdSilent(socket.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn containerd_answers(ctr: &Path, socket: &Path) -> bool {
    let mut cmd = Command::new(ctr);
    cmd.arg("--address").arg(socket).arg("version");
    run(cmd, Instant::now() + Duration::from_secs(10)).is_ok()
}

/// `name` on PATH or in the usual system folders (a unit's or the agent's PATH can be minimal).
pub fn find_tool(name: &'static str) -> Result<PathBuf, SideLoadError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(SideLoadError::ToolMissing(name))
}

/// Runs `cmd` with stdin closed; its stdout and stderr together, or an error if it fails or outlives `deadline`.
pub fn run(mut cmd: Command, deadline: Instant) -> Result<String, SideLoadError> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SideLoadError::Spawn(shown.clone(), e))?;
    let readers = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .map(|r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SideLoadError::TimedOut(shown));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(SideLoadError::Spawn(shown, e)),
        }
    };
    let mut output = String::new();
    for reader in readers {
        output.push_str(&String::from_utf8_lossy(&reader.join().unwrap_or_default()));
    }
    if status.success() {
        Ok(output)
    } else {
        Err(SideLoadError::Failed {
            command: shown,
            status: status.to_string(),
            output,
        })
    }
}
