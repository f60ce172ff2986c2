//! A real `docker-registry` (CNCF distribution 2.8) on a free loopback port.
//!
//! Each [`Registry`] has its own tempdir (config, log, htpasswd or token key,
//! and the filesystem-driver storage) and is killed by its own pid and
//! cleaned on drop. [`shared`] gives one anonymous registry per test binary.
//!
//! ## Why the registry cannot outlive the test process
//!
//! Tests never drop statics, and a test binary may be killed, so the
//! registry processes are spawned with `prctl(PR_SET_PDEATHSIG, SIGKILL)`:
//! the kernel kills them when their parent goes away. That signal fires when
//! the *thread* that forked exits, and `cargo test` runs each test in its own
//! short-lived thread, so all registries are forked by one dedicated spawner
//! thread that lives as long as the process (it blocks on a channel whose
//! sender is in a static that is never dropped). This was chosen over a
//! shell watchdog polling the parent pid because it needs no extra process,
//! has no polling delay, and also holds when the test binary is SIGKILLed.
//! A race (parent gone between fork and prctl) is closed by checking
//! `getppid()` after the prctl. The shared registry's tempdir is also
//! removed by an `atexit` hook (a normal exit of the test binary).

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::token::{TokenIssuer, TokenRequest};

/// How long [`Registry::start`] waits for `/v2/` to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the registry authenticates clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No authentication.
    Anonymous,
    /// `auth: htpasswd:` with a bcrypt entry made by `htpasswd -Bbn`.
    Basic { user: String, password: String },
    /// `auth: token:` with a [`TokenIssuer`] in this process as the realm.
    Token { user: String, password: String },
}

impl Auth {
    pub fn basic(user: &str, password: &str) -> Auth {
        Auth::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    pub fn token(user: &str, password: &str) -> Auth {
        Auth::Token {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user and password, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::Anonymous => None,
            Auth::Basic { user, password } | Auth::Token { user, password } => {
                Some((user.as_str(), password.as_str()))
            }
        }
    }
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// The request URI (path and query).
    pub uri: String,
    pub status: u16,
}

/// A running registry. Killed and its directory removed on drop.
pub struct Registry {
    auth: Auth,
    port: u16,
    /// The `auth:` section of the config.
    auth_yaml: String,
    // Drop order matters: the process is killed in Drop::drop, then the
    // issuer stops, then the directory goes.
    child: Option<Child>,
    token: Option<TokenIssuer>,
    /// Another registry's storage this one serves, and the `tls:` section of its config: see
    /// [`Registry::serve_tls`].
    storage: Option<PathBuf>,
    tls_yaml: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry with `auth`, waiting (at most [`START_TIMEOUT`])
    /// until `/v2/` answers. Panics with the registry's log on failure.
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("cairn-e2e-registry-")
            .tempdir()
            .expect("create a tempdir for the registry");
        std::fs::create_dir_all(dir.path().join("storage")).expect("create the storage dir");
        let auth_yaml = match &auth {
            Auth::Anonymous => None,
            Auth::Basic { user, password } => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, user, password);
                Some(format!(
                    "auth:\n  htpasswd:\n    realm: cairn-e2e\n    path: {}\n",
                    htpasswd.display()
                ))
            }
            Auth::Token { .. } => None, // filled in below, once the issuer runs
        };
        let token = match &auth {
            Auth::Token { user, password } => Some(TokenIssuer::start(dir.path(), user, password)),
            _ => None,
        };
        let auth_yaml = auth_yaml.or_else(|| token.as_ref().map(token_auth_yaml));
        let mut reg = Registry {
            auth,
            port: 0,
            auth_yaml: auth_yaml.unwrap_or_default(),
            child: None,
            token,
            storage: None,
            tls_yaml: String::new(),
            dir,
        };
        reg.launch();
        reg
    }

    /// A second, anonymous registry process serving `storage` (another registry's) over HTTPS with the PEM
    /// certificate and key given: what a guest reaches as a site's registry, while the tests push to the first one
    /// over loopback HTTP.
    pub fn serve_tls(storage: &Path, cert: &Path, key: &Path) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("cairn-e2e-registry-tls-")
            .tempdir()
            .expect("create a tempdir for the registry");
        let mut reg = Registry {
            auth: Auth::Anonymous,
            port: 0,
            auth_yaml: String::new(),
            child: None,
            token: None,
            storage: Some(storage.to_path_buf()),
            tls_yaml: format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            dir,
        };
        reg.launch();
        reg
    }

    /// (Re)spawns the process, retrying on another port if the chosen one
    /// was taken in the meantime.
    fn launch(&mut self) {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            self.port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            self.write_config();
            let log = File::create(self.log_path()).expect("create the registry log");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(self.dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log file handle"))
                .stderr(log);
            let child = spawn_tied_to_process(cmd).unwrap_or_else(|e| {
                panic!(
                    "cannot start docker-registry ({e}); install it: apt-get install -y docker-registry"
                )
            });
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(StartError::PortInUse(log)) => {
                    self.kill();
                    last_log = log;
                    self.port = 0;
                }
                Err(StartError::Failed(msg)) => {
                    self.kill();
                    panic!("{msg}");
                }
            }
        }
        panic!("docker-registry could not bind a free port in 5 tries; last log:\n{last_log}");
    }

    fn write_config(&self) {
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: cairn-e2e-not-a-secret\n{tls_yaml}\
             {auth_yaml}",
            auth_yaml = self.auth_yaml,
            tls_yaml = self.tls_yaml,
            storage = self.storage_dir().display(),
            port = self.port,
        );
        std::fs::write(self.dir.path().join("config.yml"), config)
            .expect("write the registry config");
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!("http://{}/v2/", self.addr());
        let expected = if self.auth == Auth::Anonymous {
            200
        } else {
            401
        };
        loop {
            let child = self.child.as_mut().expect("registry child is set");
            if let Some(status) = child.try_wait().expect("poll the registry process") {
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(StartError::PortInUse(log));
                }
                return Err(StartError::Failed(format!(
                    "docker-registry exited during start ({status}); its log:\n{log}"
                )));
            }
            if !self.tls_yaml.is_empty() {
                if std::net::TcpStream::connect(self.addr()).is_ok() {
                    return Ok(());
                }
            } else if let Ok(resp) = agent.get(&url).call() {
                let got = resp.status().as_u16();
                if got == expected {
                    return Ok(());
                }
                return Err(StartError::Failed(format!(
                    "docker-registry answered GET /v2/ with {got}, expected {expected}; its log:\n{}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "docker-registry did not answer GET {url} within {START_TIMEOUT:?}; its log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the registry now (e.g. to prove a rebuild works offline). The
    /// storage stays until drop (see [`Registry::restart`]); a token
    /// issuer keeps running so its counts stay readable (nothing reaches
    /// it without a challenge from the registry).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the registry again on the same port and storage (after
    /// [`Registry::stop`], or to drop its in-memory caches). A token
    /// registry keeps its issuer.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// The registry process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The registry's own directory (config, log, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT/NAME:TAG`.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.addr())
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The user and password, if the registry has auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.credentials()
    }

    /// `Basic base64(user:password)` for the registry's credentials.
    pub fn basic_auth_header(&self) -> Option<String> {
        self.credentials()
            .map(|(u, p)| format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))))
    }

    /// The token issuer (token auth only).
    pub fn token_issuer(&self) -> Option<&TokenIssuer> {
        self.token.as_ref()
    }

    /// Requests the token issuer received, granted or not (0 without
    /// token auth).
    pub fn token_requests(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.requests().len())
    }

    /// Tokens the issuer handed out.
    pub fn tokens_issued(&self) -> usize {
        self.token_log().iter().filter(|r| r.granted).count()
    }

    /// Those requests in detail.
    pub fn token_log(&self) -> Vec<TokenRequest> {
        self.token.as_ref().map_or_else(Vec::new, |t| t.requests())
    }

    /// The filesystem driver's root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage
            .clone()
            .unwrap_or_else(|| self.dir.path().join("storage"))
    }

    /// Where the filesystem driver stores the blob `digest` (`sha256:HEX`
    /// or `HEX`): `docker/registry/v2/blobs/sha256/HE/HEX/data`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.storage_dir()
            .join("docker/registry/v2/blobs")
            .join(algo)
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Corrupts a stored blob in place, keeping its size (the registry
    /// serves `Content-Length` from its metadata, so a same-size change is
    /// served whole): flips every bit of the byte in the middle. Returns
    /// the blob's path.
    pub fn corrupt_blob(&self, digest: &str) -> PathBuf {
        let path = self.blob_path(digest);
        let mut bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("read stored blob {}: {e}", path.display()));
        assert!(!bytes.is_empty(), "blob {digest} is empty, cannot corrupt");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes)
            .unwrap_or_else(|e| panic!("write corrupted blob {}: {e}", path.display()));
        path
    }

    /// The registry's own log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The requests in the registry's access log so far (waits until the
    /// log stops growing for a moment: lines are written just after the
    /// response).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let mut last = parse_access_log(&self.log());
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(25));
            let now = parse_access_log(&self.log());
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    /// Number of HTTP requests the registry served so far.
    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    /// Kills the process and removes the directory through `&self` (for the
    /// static shared registry at process exit). Signal-safe enough for an
    /// atexit hook: no locks, no panics.
    fn kill_and_clean_at_exit(&self) {
        if let Some(child) = self.child.as_ref() {
            // The child is never reaped while we hold it, so its pid cannot
            // have been reused.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

enum StartError {
    PortInUse(String),
    Failed(String),
}

/// Parses Apache combined-format lines:
/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`.
pub fn parse_access_log(log: &str) -> Vec<LoggedRequest> {
    log.lines()
        .filter(|l| !l.starts_with("time="))
        .filter_map(|l| {
            let (_, rest) = l.split_once("] \"")?;
            let (request, rest) = rest.split_once("\" ")?;
            let mut req = request.split(' ');
            let method = req.next()?.to_string();
            let uri = req.next()?.to_string();
            let status = rest.split(' ').next()?.parse().ok()?;
            Some(LoggedRequest {
                method,
                uri,
                status,
            })
        })
        .collect()
}

/// A free loopback port (bound then released; `launch` retries if another
/// process grabs it before the registry binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

fn token_auth_yaml(t: &TokenIssuer) -> String {
    format!(
        "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
        t.realm(),
        t.service(),
        t.issuer(),
        t.cert_path().display()
    )
}

fn write_htpasswd(path: &Path, user: &str, password: &str) {
    // The registry accepts only bcrypt entries: -B.
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run htpasswd (apt-get install -y apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd -Bbn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).expect("write the htpasswd file");
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the process-lifetime spawner thread with
/// `PR_SET_PDEATHSIG = SIGKILL` (see the module docs).
pub fn spawn_tied_to_process(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("cairn-e2e-spawner".into())
            .spawn(move || {
                // Never ends: the sender lives in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
            })
            .expect("spawn the process spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .send((cmd, reply_tx))
        .expect("the spawner thread lives as long as the process");
    reply_rx
        .recv()
        .expect("the spawner thread answers every request")
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe prctl/getppid and builds errors without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before the prctl took effect.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

static SHARED: OnceLock<Registry> = OnceLock::new();

extern "C" fn clean_shared_at_exit() {
    if let Some(reg) = SHARED.get() {
        reg.kill_and_clean_at_exit();
    }
}

/// One anonymous registry shared by all tests of this test binary, for
/// tests that only read (use distinct repository names per test).
pub fn shared() -> &'static Registry {
    SHARED.get_or_init(|| {
        let reg = Registry::start(Auth::Anonymous);
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe {
            libc::atexit(clean_shared_at_exit);
        }
        reg
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines() {
        let log = "time=\"x\" level=info msg=\"response completed\"\n\
                   127.0.0.1 - - [28/Nov/2026:21:45:01 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl/7.88.1\"\n\
                   127.0.0.1 - - [28/Nov/2026:21:45:01 +0000] \"HEAD /v2/a/blobs/sha256:ab HTTP/1.1\" 404 157 \"\" \"x\"\n";
        let r = parse_access_log(log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].method, "HEAD");
        assert_eq!(r[1].uri, "/v2/a/blobs/sha256:ab");
        assert_eq!(r[1].status, 404);
    }
}
