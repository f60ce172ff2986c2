//! A throwaway containerd on the host (its own root, state and socket in a short /tmp folder, killed when dropped),
//! and OCI archives that carry an image name as the distribution's side-load folder wants them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Whether the host can run one: `containerd` and `ctr` installed, and root.
pub fn available() -> Result<(), &'static str> {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("containerd") && have("ctr")) {
        return Err("containerd and ctr are not installed (apt-get install containerd)");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("containerd needs root");
    }
    Ok(())
}

pub struct Containerd {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        // A short path: a unix socket's path is limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("cairn-ctrd-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/sock\"\n[ttrpc]\n  address = \"{d}/sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write the config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // Gone with the test process, even if it is killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start containerd");
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer:\n{}",
                std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// `ctr --address SOCKET -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// The names `ctr images ls -q` lists in namespace `k8s.io`.
    pub fn image_names(&self) -> Vec<String> {
        let o = self.ctr(&["images", "ls", "-q"]);
        assert!(o.status.success(), "ctr images ls: {o:?}");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unpacked snapshots may be mounted under the root: unmount before the tempdir goes.
        let root = self.dir.path().join("root");
        let _ = Command::new("umount").arg("-R").arg(&root).output();
    }
}

/// An OCI image-layout archive of `layout` (a folder with `oci-layout`, `index.json`, `blobs/`) whose one index
/// entry is named `name` (`io.containerd.image.name`), as `ctr images import` and the side-load plugin read it.
pub fn named_archive(layout: &Path, name: &str) -> Vec<u8> {
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("json");
    let entry = &mut index["manifests"][0];
    entry["annotations"]["io.containerd.image.name"] = name.into();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, bytes).expect("tar entry");
    };
    add(
        "oci-layout",
        &std::fs::read(layout.join("oci-layout")).expect("oci-layout"),
    );
    add(
        "index.json",
        &serde_json::to_vec(&index).expect("index json"),
    );
    let blobs = layout.join("blobs/sha256");
    let mut names: Vec<_> = std::fs::read_dir(&blobs)
        .expect("blobs")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for n in names {
        let bytes = std::fs::read(blobs.join(&n)).expect("blob");
        add(&format!("blobs/sha256/{}", n.to_string_lossy()), &bytes);
    }
    b.into_inner().expect("tar")
}
