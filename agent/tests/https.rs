//! `cairn.instance=https://...` against real TLS servers on loopback (rustls, in a test thread), with
//! certificates made here (rcgen): a CA that the target's `/etc/ssl/certs/ca-certificates.crt` holds, a CA that
//! nothing trusts, a certificate for another name, an expired one. Then the agent binary end to end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cairn_agent::datasources::{
    CA_BUNDLE, Config, DatasourceError, Detected, Found, NetworkSource, SourceKind, detect, fetch,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned, SupportedProtocolVersion};

const INSTANCE: &str = "[system]\nhostname = \"from-https\"\n";

/// A certificate authority made for the test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate and its key.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A server certificate for `names` (DNS names or IP addresses) issued by `ca`; `expired`: valid only in 2019.
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> Leaf {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// How the server ends its response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
    /// The end of the connection, announced by TLS's close_notify.
    Eof,
    /// The end of the connection without close_notify: a truncation the client must not accept.
    EofWithoutCloseNotify,
}

/// A loopback HTTPS server in a thread: every connection counted, every request head kept, each answered with
/// `body` (status 200).
struct TlsServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl TlsServer {
    fn start(
        leaf: &Leaf,
        versions: &[&'static SupportedProtocolVersion],
        body: &str,
        framing: Framing,
    ) -> TlsServer {
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
                .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, log, body) = (
            Arc::clone(&connections),
            Arc::clone(&heads),
            body.to_string(),
        );
        thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = tcp.set_write_timeout(Some(Duration::from_secs(5)));
                let conn = ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut tls = StreamOwned::new(conn, tcp);
                // A client that refuses the certificate ends the handshake here.
                let Some(head) = read_head(&mut tls) else {
                    continue;
                };
                log.lock().unwrap().push(head);
                let _ = tls.write_all(&response(&body, framing));
                if framing != Framing::EofWithoutCloseNotify {
                    tls.conn.send_close_notify();
                }
                let _ = tls.flush();
            }
        });
        TlsServer {
            port,
            connections,
            heads,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/instance.toml", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn read_head(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8(head).ok()
}

fn response(body: &str, framing: Framing) -> Vec<u8> {
    match framing {
        Framing::Length => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        Framing::Chunked => {
            let (a, b) = body.split_at(body.len() / 2);
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        }
        Framing::Eof | Framing::EofWithoutCloseNotify => {
            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}")
        }
    }
    .into_bytes()
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A machine standing for a root folder with the URL on its command line; fast bounded retries.
fn machine(root: &Path, url: &str) -> Config {
    let mut cfg = Config::for_root(root);
    cfg.cmdline = format!("console=ttyS0 cairn.instance={url} quiet");
    cfg.retries = 4;
    cfg.retry_delay = Duration::from_millis(2);
    cfg.timeout = Duration::from_secs(5);
    cfg
}

/// Writes the root's CA bundle and returns its path.
fn write_bundle(root: &Path, content: &str) -> PathBuf {
    let path = root.join(CA_BUNDLE.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    path
}

fn network_source(cfg: &Config) -> NetworkSource {
    match detect(cfg).unwrap() {
        Detected::Network(source) => source,
        other => panic!("expected a network source, got {other:?}"),
    }
}

fn fetch_url(root: &Path, url: &str) -> Result<Found, DatasourceError> {
    let cfg = machine(root, url);
    fetch(&network_source(&cfg), &cfg)
}

#[test]
fn a_ca_in_the_targets_bundle_is_trusted() {
    let trusted = ca("cairn test CA");
    let other = ca("another CA in the bundle");
    let cert = leaf(&trusted, &["localhost", "127.0.0.1"], false);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A bundle of several certificates, with text between them as Debian's has none but others do.
    write_bundle(
        root,
        &format!("# local CAs\n{}\n{}", other.pem, trusted.pem),
    );
    for (versions, framing) in [
        (BOTH, Framing::Length),
        (BOTH, Framing::Chunked),
        (BOTH, Framing::Eof),
        (&[&rustls::version::TLS12][..], Framing::Length),
        (&[&rustls::version::TLS13][..], Framing::Chunked),
    ] {
        let server = TlsServer::start(&cert, versions, INSTANCE, framing);
        // By name, and by IP address (the certificate's IP SAN).
        for host in ["localhost", "127.0.0.1"] {
            let url = server.url(host);
            let found = fetch_url(root, &url)
                .unwrap_or_else(|e| panic!("{versions:?} {framing:?} {host}: {e}"));
            assert_eq!(
                found,
                Found {
                    source: SourceKind::Cmdline,
                    name: format!("cairn.instance={url}"),
                    text: INSTANCE.to_string(),
                }
            );
        }
        assert_eq!(server.connections(), 2);
        let heads = server.heads.lock().unwrap();
        assert!(
            heads[0].starts_with("GET /instance.toml HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("Host: localhost:{}\r\n", server.port)),
            "{}",
            heads[0]
        );
    }
}

#[test]
fn the_hosts_own_bundle_parses_and_adds_to_it() {
    // The machine running the tests has a real bundle (Debian's ca-certificates): every certificate in it must
    // parse, and a CA appended to it is trusted.
    let Ok(system) = std::fs::read_to_string(CA_BUNDLE) else {
        eprintln!("no {CA_BUNDLE} on this machine: skipped");
        return;
    };
    let trusted = ca("cairn test CA");
    let server = TlsServer::start(
        &leaf(&trusted, &["localhost"], false),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), &format!("{system}{}", trusted.pem));
    let found = fetch_url(dir.path(), &server.url("localhost")).unwrap();
    assert_eq!(found.text, INSTANCE);
}

#[test]
fn an_unknown_ca_is_refused_without_retrying() {
    let trusted = ca("cairn test CA");
    let rogue = ca("nobody trusts this CA");
    let server = TlsServer::start(
        &leaf(&rogue, &["localhost", "127.0.0.1"], false),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let url = server.url("localhost");

    // With the target's bundle (which has another CA), then without any bundle: the Mozilla roots alone.
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), &trusted.pem);
    let e = fetch_url(dir.path(), &url).unwrap_err();
    assert_eq!(e.source, format!("cairn.instance={url}"));
    assert_eq!(
        e.message,
        format!(
            "the TLS certificate of localhost was refused: unknown issuer (its chain does not lead to a \
             trusted CA); trusted: the Mozilla root set and {}",
            bundle.display()
        )
    );
    assert_eq!(
        server.connections(),
        1,
        "a refused certificate is not retried"
    );

    let bare = tempfile::tempdir().unwrap();
    let e = fetch_url(bare.path(), &url).unwrap_err();
    assert!(
        e.to_string().ends_with(
            "refused: unknown issuer (its chain does not lead to a trusted CA); trusted: the Mozilla root set"
        ),
        "{e}"
    );
    assert_eq!(server.connections(), 2);
    assert!(
        server.heads.lock().unwrap().is_empty(),
        "no request was sent"
    );
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let trusted = ca("cairn test CA");
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), &trusted.pem);

    let server = TlsServer::start(
        &leaf(&trusted, &["config.example.com"], false),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let url = server.url("localhost");
    let e = fetch_url(dir.path(), &url).unwrap_err();
    assert_eq!(e.source, format!("cairn.instance={url}"));
    assert!(
        e.message.starts_with(
            "the TLS certificate of localhost was refused: name mismatch (it is for config.example.com, \
             not localhost); trusted: "
        ),
        "{e}"
    );
    assert_eq!(
        server.connections(),
        1,
        "a refused certificate is not retried"
    );

    // An IP address needs an IP SAN: a certificate for the name alone does not do.
    let server = TlsServer::start(
        &leaf(&trusted, &["localhost"], false),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let e = fetch_url(dir.path(), &server.url("127.0.0.1")).unwrap_err();
    assert!(
        e.message
            .contains("refused: name mismatch (it is for localhost, not 127.0.0.1)"),
        "{e}"
    );
    assert_eq!(server.connections(), 1);
}

#[test]
fn an_expired_certificate_is_refused() {
    let trusted = ca("cairn test CA");
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), &trusted.pem);
    let server = TlsServer::start(
        &leaf(&trusted, &["localhost"], true),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let e = fetch_url(dir.path(), &server.url("localhost")).unwrap_err();
    assert!(
        e.message.starts_with(
            "the TLS certificate of localhost was refused: expired on 2020-01-01 00:00:00 UTC (the clock says 2"
        ),
        "{e}"
    );
    assert_eq!(
        server.connections(),
        1,
        "a refused certificate is not retried"
    );
}

#[test]
fn an_unusable_bundle_is_an_error_naming_it() {
    let trusted = ca("cairn test CA");
    let server = TlsServer::start(
        &leaf(&trusted, &["localhost"], false),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let url = server.url("localhost");
    let half = &trusted.pem[..trusted.pem.len() / 2];
    let broken_base64 = trusted.pem.replacen("\n", "\n!!!!", 2);
    for (content, says) in [
        (
            "this is not a bundle\n",
            "not a PEM certificate bundle: no BEGIN CERTIFICATE section",
        ),
        (
            half,
            "not a PEM certificate bundle: no END CERTIFICATE line",
        ),
        (&broken_base64, "not a PEM certificate bundle: bad base64"),
        (
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            "none of its 1 certificates can be a trust anchor",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bundle = write_bundle(dir.path(), content);
        let e = fetch_url(dir.path(), &url).unwrap_err();
        let prefix = format!("cairn.instance={url}: CA bundle {}: ", bundle.display());
        let shown = e.to_string();
        assert!(
            shown.starts_with(&prefix) && shown[prefix.len()..].starts_with(says),
            "{shown}"
        );
    }
    // A folder where the bundle should be.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CA_BUNDLE.trim_start_matches('/'));
    std::fs::create_dir_all(&path).unwrap();
    let e = fetch_url(dir.path(), &url).unwrap_err();
    assert_eq!(
        e.message,
        format!("CA bundle {}: not a regular file", path.display())
    );
    // Nothing was even tried: the trust is settled before connecting.
    assert_eq!(server.connections(), 0);

    // An empty bundle is no CA, not an error.
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), "\n");
    let e = fetch_url(dir.path(), &url).unwrap_err();
    assert!(
        e.message
            .ends_with("unknown issuer (its chain does not lead to a trusted CA); trusted: the Mozilla root set"),
        "{e}"
    );
}

#[test]
fn a_body_cut_without_close_notify_is_not_accepted() {
    let trusted = ca("cairn test CA");
    let dir = tempfile::tempdir().unwrap();
    write_bundle(dir.path(), &trusted.pem);
    let server = TlsServer::start(
        &leaf(&trusted, &["localhost"], false),
        BOTH,
        INSTANCE,
        Framing::EofWithoutCloseNotify,
    );
    let url = server.url("localhost");
    let e = fetch_url(dir.path(), &url).unwrap_err();
    // A truncated response is a broken connection: retried, then an error.
    assert_eq!(
        e.to_string(),
        format!(
            "cairn.instance={url}: connection closed before the response ended after 5 attempts"
        )
    );
    assert_eq!(server.connections(), 5);
}

#[test]
fn a_server_that_does_not_speak_tls_fails_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let mut hello = [0u8; 512];
            let _ = tcp.read(&mut hello);
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{port}/instance.toml");
    let e = fetch_url(dir.path(), &url).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "cairn.instance={url}: TLS with 127.0.0.1 failed: "
        )),
        "{e}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

// --- The binary, end to end ------------------------------------------------------------------------------

const PROFILE: &str = r#"schema = 1
name = "edge"
version = "1.0.0"
arch = "amd64"
[base]
rock = "localhost:5000/cairn/node-base:bookworm@sha256:0000000000000000000000000000000000000000000000000000000000000000"
[system]
hostname = "edge-{machine-id:8}"
"#;

fn write(root: &Path, path: &str, content: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
}

/// A small Debian-shaped root with a baked profile.
fn small_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    write(&root, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    write(&root, "/etc/group", "root:x:0:\n");
    write(&root, "/etc/shadow", "root:*:19000:0:99999:7:::\n");
    write(&root, "/etc/gshadow", "root:*::\n");
    write(&root, "/etc/hosts", "127.0.0.1\tlocalhost\n");
    write(
        &root,
        "/etc/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    write(
        &root,
        "/usr/lib/systemd/system/systemd-networkd.service",
        "[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd-wait-online.service\n",
    );
    write(
        &root,
        "/usr/lib/systemd/system/systemd-networkd-wait-online.service",
        "[Install]\nWantedBy=network-online.target\n",
    );
    write(&root, "/usr/lib/cairn/profile.toml", PROFILE);
    root
}

/// The agent binary: this build's, or the one `CAIRN_AGENT_BIN` names (e.g. the static musl release build).
fn agent_bin() -> PathBuf {
    std::env::var_os("CAIRN_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cairn-agent")))
}

fn apply(root: &Path, url: &str) -> Output {
    Command::new(agent_bin())
        .args(["apply", "--root"])
        .arg(root)
        .args([
            "--cmdline",
            &format!("console=ttyS0 cairn.instance={url} quiet"),
            "--fw-cfg",
            "/nonexistent",
            "--dmi",
            "/nonexistent",
        ])
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_agent_applies_instance_data_fetched_over_https() {
    let trusted = ca("cairn test CA");
    let server = TlsServer::start(
        &leaf(&trusted, &["localhost", "127.0.0.1"], false),
        BOTH,
        INSTANCE,
        Framing::Length,
    );
    let url = server.url("localhost");

    // A root whose CA bundle lacks the server's CA: refused (exit 2), nothing applied, no retry.
    let dir = tempfile::tempdir().unwrap();
    let root = small_root(dir.path());
    write_bundle(&root, &ca("some other CA").pem);
    let o = apply(&root, &url);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = text(&o);
    // The failure is one line of text on stderr; stdout carries no failure JSON.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches(" phase failed: ").count(), 1, "{out}");
    assert!(
        stderr.contains(&format!(
            "cairn-agent: network phase failed: cairn.instance={url}: the TLS certificate of localhost was refused: unknown issuer"
        )),
        "{out}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("failed {"),
        "{out}"
    );
    let hostname = std::fs::read_to_string(root.join("etc/hostname")).unwrap_or_default();
    assert_ne!(hostname, "from-https\n", "{out}");
    assert_eq!(server.connections(), 1);

    // A root whose bundle has the CA: applied.
    let dir = tempfile::tempdir().unwrap();
    let root = small_root(dir.path());
    write_bundle(&root, &trusted.pem);
    let o = apply(&root, &url);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "from-https\n"
    );
    let out = text(&o);
    assert!(
        out.lines().any(
            |l| l.starts_with("cairn-agent: ready {") && l.contains("\"instance\":\"cmdline\"")
        ),
        "{out}"
    );
    assert_eq!(server.connections(), 2);
}
