//! The containerd client against a real, throwaway containerd (as root, when `containerd` and `ctr` are
//! installed), and its errors against sockets where nothing answers.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_agent::kubernetes::containerd::{self, ContainerdError};
use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Why the real-containerd test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".to_owned());
    }
    for tool in ["containerd", "ctr"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install containerd)"
            ));
        }
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// A containerd of its own (root, state, sockets in a temporary directory), stopped by its pid when dropped —
/// also when a test panics.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let socket = base.join("containerd.sock");
        // CRI is off (it would set up CNI and a sandbox image); the opt plugin would install into /opt otherwise.
        let config = format!(
            r#"version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"#,
            base = base.display(),
            sock = socket.display(),
        );
        let config_path = base.join("config.toml");
        fs::write(&config_path, config).unwrap();
        let log = fs::File::create(base.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Containerd { child, dir, socket }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Imports an image archive as the side-load of Canonical Kubernetes does, without unpacking: the image
    /// records are what is checked, and unpacking would need a working snapshotter.
    fn import(&self, namespace: &str, archive: &[u8]) {
        let path = self.dir.path().join(format!("{namespace}.tar"));
        fs::File::create(&path).unwrap().write_all(archive).unwrap();
        self.ctr(&[
            "-n",
            namespace,
            "images",
            "import",
            "--no-unpack",
            path.to_str().unwrap(),
        ]);
    }

    fn ctr(&self, args: &[&str]) -> String {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "ctr {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM first so containerd closes its database cleanly; SIGKILL if it lingers.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: the pid is our own child's, not yet reaped (it is waited for below).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, path, bytes).unwrap();
}

/// An OCI image-layout archive of one single-layer image under each of `names`; returns it with the manifest's
/// bytes.
fn oci_archive(names: &[String]) -> (Vec<u8>, Vec<u8>) {
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "etc/cairn-probe", b"cairn containerd probe\n");
    let layer = layer.into_inner().unwrap();

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256(&layer),
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": names.iter().map(|name| serde_json::json!({
            "mediaType": MANIFEST_TYPE,
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
            },
        })).collect::<Vec<_>>(),
    }))
    .unwrap();

    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    append(&mut archive, "index.json", &index);
    for blob in [&layer, &config, &manifest] {
        let digest = sha256(blob);
        append(
            &mut archive,
            &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
            blob,
        );
    }
    (archive.into_inner().unwrap(), manifest)
}

#[test]
fn lists_images_imported_into_a_real_containerd() {
    if let Some(reason) = skip_reason() {
        println!("skipping the real containerd test: {reason}");
        return;
    }
    let containerd = Containerd::start();
    let socket = containerd.socket.clone();

    let version = containerd::wait_for(&socket, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    // `containerd --version` prints "containerd <package> <version> <revision>".
    let expected = Command::new("containerd")
        .arg("--version")
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    assert_eq!(
        Some(version.as_str()),
        expected.split_whitespace().nth(2),
        "{expected}"
    );

    let name = "registry.cairn.test/probe/hello:1.0";
    let (archive, manifest) = oci_archive(&[name.to_owned()]);
    containerd.import("k8s.io", &archive);

    let images = containerd::list_images(&socket, "k8s.io", Duration::from_secs(10)).unwrap();
    let names: Vec<&str> = images.iter().map(|image| image.name.as_str()).collect();
    assert_eq!(names, [name]);
    let image = containerd::find_image(&images, name).unwrap();
    assert_eq!(image.target.digest, sha256(&manifest));
    assert_eq!(image.target.media_type, MANIFEST_TYPE);
    assert_eq!(image.target.size, manifest.len() as i64);
    // ctr's own view agrees on the digest.
    assert!(
        containerd
            .ctr(&["-n", "k8s.io", "images", "ls", "-q"])
            .contains(name)
    );
    let listing = containerd.ctr(&["-n", "k8s.io", "images", "ls"]);
    assert!(listing.contains(&sha256(&manifest)), "{listing}");

    // Filters, in containerd's syntax.
    let filtered = containerd::list_images_matching(
        &socket,
        "k8s.io",
        &[&format!("name=={name}")],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(filtered, images);
    let none = containerd::list_images_matching(
        &socket,
        "k8s.io",
        &["name==registry.cairn.test/probe/other:1.0"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(none, []);

    // Another namespace sees nothing: the namespace header is honoured.
    assert_eq!(
        containerd::list_images(&socket, "cairn-empty", Duration::from_secs(10)).unwrap(),
        []
    );

    // A gRPC error status from containerd comes back with its code and message.
    let error =
        containerd::list_images(&socket, "not a namespace!", Duration::from_secs(10)).unwrap_err();
    let ContainerdError::Status { code, message, .. } = &error else {
        panic!("not a gRPC status: {error}")
    };
    assert_eq!(*code, 3, "{error}");
    assert!(message.contains("not a namespace!"), "{error}");
    assert!(
        error.to_string().starts_with(
            "containerd containerd.services.images.v1.Images/List failed: gRPC status 3 (InvalidArgument): "
        ),
        "{error}"
    );

    // A response larger than HTTP/2's initial 64 KiB window: the client must hand flow-control credit back.
    let many: Vec<String> = (0..600)
        .map(|i| format!("registry.cairn.test/probe/many-{i:03}:1.0"))
        .collect();
    let (archive, manifest) = oci_archive(&many);
    containerd.import("cairn-many", &archive);
    let images = containerd::list_images(&socket, "cairn-many", Duration::from_secs(20)).unwrap();
    let mut names: Vec<String> = images.iter().map(|image| image.name.clone()).collect();
    names.sort();
    assert_eq!(names, many);
    assert!(
        images
            .iter()
            .all(|image| image.target.digest == sha256(&manifest))
    );
}

#[test]
fn errors_name_the_socket_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.sock");
    let error = containerd::list_images(&missing, "k8s.io", Duration::from_secs(5)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("containerd socket {} does not exist", missing.display())
    );

    // A socket file left behind by a containerd that is gone.
    let dead = dir.path().join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    let error = containerd::list_images(&dead, "k8s.io", Duration::from_secs(5)).unwrap_err();
    let refused = format!(
        "containerd socket {} refused the connection (containerd is not running)",
        dead.display()
    );
    assert_eq!(error.to_string(), refused);

    // wait_for keeps trying for the whole timeout, then says what the last attempt met.
    let started = Instant::now();
    let error = containerd::wait_for(&dead, Duration::from_millis(800)).unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "containerd at {} was not ready within 800ms: {refused}",
            dead.display()
        )
    );
}

#[test]
fn a_socket_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent.sock");
    // Connections queue in the listener's backlog, but nothing ever reads them.
    let _listener = UnixListener::bind(&silent).unwrap();
    let started = Instant::now();
    let error = containerd::list_images(&silent, "k8s.io", Duration::from_millis(300)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        error.to_string(),
        format!(
            "containerd at {} did not answer containerd.services.images.v1.Images/List within 300ms",
            silent.display()
        )
    );
}

/// wait_for on a path where no socket ever appears keeps the cause, for the agent's report.
#[test]
fn wait_for_reports_a_missing_socket() {
    let path = Path::new("/nonexistent/cairn/containerd.sock");
    let error = containerd::wait_for(path, Duration::from_millis(250)).unwrap_err();
    assert!(
        matches!(&error, ContainerdError::NotReady { last, .. } if matches!(**last, ContainerdError::SocketMissing { .. }))
    );
    assert_eq!(
        error.to_string(),
        "containerd at /nonexistent/cairn/containerd.sock was not ready within 250ms: containerd socket \
         /nonexistent/cairn/containerd.sock does not exist"
    );
}
