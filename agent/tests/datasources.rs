//! The instance data sources end to end: a loopback HTTP server plays the EC2 metadata service (IMDSv2, and an
//! IMDSv1-only one that must be refused) and the `cairn.instance=URL` server; temp folders play fw_cfg, the ESP
//! and DMI. Nothing is ever sent to 169.254.169.254: every fetch goes to a server on 127.0.0.1 that the test runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cairn_agent::datasources::{
    Config, DEFAULT_IMDS_ENDPOINT, Detected, Found, NetworkSource, SourceKind, detect, fetch,
};

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "cairn-agent-ds-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    chunked: bool,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.as_bytes().to_vec(),
        chunked: false,
    }
}

/// A loopback HTTP server in a thread: `handler` gets each request and its index (0-based), every request is
/// logged. One request per connection (the client sends `Connection: close`).
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&log);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                let index = {
                    let mut log = seen.lock().unwrap();
                    log.push(request.clone());
                    log.len() - 1
                };
                let r = handler(&request, index);
                let _ = write_reply(stream, &r);
            }
        });
        Server { port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let seen = Seen {
        method,
        target,
        headers,
    };
    let length: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(seen)
}

fn write_reply(mut stream: TcpStream, r: &Reply) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status)).into_bytes();
    if r.chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in r.body.chunks(7) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", r.body.len()).as_bytes());
        out.extend_from_slice(&r.body);
    }
    stream.write_all(&out)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A test machine: a temp root, no host path read, fast bounded retries.
fn machine() -> (TempDir, Config) {
    let tmp = TempDir::new();
    let mut cfg = Config::for_root(tmp.path());
    cfg.retries = 4;
    cfg.retry_delay = Duration::from_millis(2);
    cfg.timeout = Duration::from_secs(5);
    (tmp, cfg)
}

const TOKEN: &str = "AQAEAFake-Token_0123==";
const USER_DATA: &str = "[system]\nhostname = \"ip-10-0-0-7\"\n";

/// An IMDSv2 service: a token for a PUT with a TTL, user-data only with that token.
fn imds_v2(user_data: Option<&'static str>, chunked: bool) -> Server {
    Server::start(
        move |req, _| match (req.method.as_str(), req.target.as_str()) {
            ("PUT", "/latest/api/token") => {
                match req.header("X-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => reply(200, TOKEN),
                    None => reply(400, "missing ttl"),
                }
            }
            ("GET", "/latest/user-data")
                if req.header("X-aws-ec2-metadata-token") == Some(TOKEN) =>
            {
                match user_data {
                    Some(text) => Reply {
                        chunked,
                        ..reply(200, text)
                    },
                    None => reply(404, "<?xml version=\"1.0\"?><Error>Not Found</Error>"),
                }
            }
            ("GET", _) => reply(401, ""),
            _ => reply(405, ""),
        },
    )
}

fn ec2_config(server: &Server) -> (TempDir, Config) {
    let (tmp, mut cfg) = machine();
    cfg.imds_endpoint = Some(server.url(""));
    (tmp, cfg)
}

fn detect_network(cfg: &Config) -> NetworkSource {
    match detect(cfg).unwrap() {
        Detected::Network(source) => source,
        other => panic!("expected a network source, got {other:?}"),
    }
}

#[test]
fn imds_v2_token_then_user_data() {
    for chunked in [false, true] {
        let server = imds_v2(Some(USER_DATA), chunked);
        let (_tmp, cfg) = ec2_config(&server);
        let source = detect_network(&cfg);
        assert_eq!(
            source,
            NetworkSource::Ec2 {
                endpoint: server.url("")
            }
        );
        // Detection sends nothing.
        assert!(server.seen().is_empty());

        let found = fetch(&source, &cfg).unwrap();
        assert_eq!(
            found,
            Found {
                source: SourceKind::Ec2,
                name: format!("ec2 {}", server.url("")),
                text: USER_DATA.to_string(),
            }
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("PUT", "/latest/api/token")
        );
        assert_eq!(
            seen[0].header("X-aws-ec2-metadata-token-ttl-seconds"),
            Some("300")
        );
        assert_eq!(seen[0].header("Content-Length"), Some("0"));
        assert_eq!(
            (seen[1].method.as_str(), seen[1].target.as_str()),
            ("GET", "/latest/user-data")
        );
        assert_eq!(seen[1].header("X-aws-ec2-metadata-token"), Some(TOKEN));
        assert_eq!(seen[1].header("Connection"), Some("close"));
    }
}

#[test]
fn imds_v2_without_user_data_is_an_empty_document() {
    let server = imds_v2(None, false);
    let (_tmp, cfg) = ec2_config(&server);
    let found = fetch(&detect_network(&cfg), &cfg).unwrap();
    assert_eq!((found.source, found.text.as_str()), (SourceKind::Ec2, ""));
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn imds_token_server_errors_are_retried() {
    let server = Server::start(|req, i| match (req.method.as_str(), i) {
        ("PUT", 0) => reply(503, ""),
        ("PUT", _) => reply(200, TOKEN),
        _ => reply(200, USER_DATA),
    });
    let (_tmp, cfg) = ec2_config(&server);
    let found = fetch(&detect_network(&cfg), &cfg).unwrap();
    assert_eq!(found.text, USER_DATA);
    let methods: Vec<String> = server.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["PUT", "PUT", "GET"]);
}

#[test]
fn imds_v1_only_is_refused_and_never_read() {
    for (status, body) in [
        (403, ""),
        (405, ""),
        (404, "not found"),
        (200, ""),
        (200, "  \n"),
    ] {
        // An IMDSv1 service: user-data for anyone, no tokens.
        let server = Server::start(move |req, _| match req.method.as_str() {
            "GET" => reply(200, USER_DATA),
            _ => reply(status, body),
        });
        let (_tmp, cfg) = ec2_config(&server);
        let e = fetch(&detect_network(&cfg), &cfg).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.source, format!("ec2 {}", server.url("")));
        assert!(
            text.contains("the metadata service did not give an IMDSv2 token"),
            "{text}"
        );
        assert!(text.ends_with("IMDSv1 is refused"), "{text}");
        if status != 200 {
            assert!(
                text.contains(&format!("PUT /latest/api/token: HTTP {status}")),
                "{text}"
            );
        }
        // The refused PUT, once (4xx is not retried), and no GET at all.
        let seen = server.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].method, "PUT");
    }
}

#[test]
fn imds_rejecting_the_token_fails() {
    let server = Server::start(|req, _| match req.method.as_str() {
        "PUT" => reply(200, TOKEN),
        _ => reply(401, ""),
    });
    let (_tmp, cfg) = ec2_config(&server);
    let e = fetch(&detect_network(&cfg), &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "ec2 {}: GET /latest/user-data: HTTP 401 Unauthorized (the session token was refused)",
            server.url("")
        )
    );
}

#[test]
fn imds_unreachable() {
    let (_tmp, mut cfg) = machine();
    cfg.imds_endpoint = Some(format!("http://127.0.0.1:{}", closed_port()));
    let source = detect_network(&cfg);
    let e = fetch(&source, &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: PUT /latest/api/token: connection refused after 5 attempts",
            source.name()
        )
    );
}

fn url_config(url: &str) -> (TempDir, Config) {
    let (tmp, mut cfg) = machine();
    cfg.cmdline = format!("console=ttyS0 cairn.instance=\"{url}\" quiet\n");
    (tmp, cfg)
}

#[test]
fn cmdline_url_is_fetched() {
    let server = Server::start(|req, _| match req.target.as_str() {
        "/a%20b" => reply(200, USER_DATA),
        _ => reply(404, ""),
    });
    let url = server.url("/a b");
    let (_tmp, cfg) = url_config(&url);
    let source = detect_network(&cfg);
    assert_eq!(source, NetworkSource::Url(url.clone()));
    assert!(server.seen().is_empty());
    let found = fetch(&source, &cfg).unwrap();
    assert_eq!(
        found,
        Found {
            source: SourceKind::Cmdline,
            name: format!("cairn.instance={url}"),
            text: USER_DATA.to_string(),
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].header("Host"),
        Some(format!("127.0.0.1:{}", server.port).as_str())
    );
}

#[test]
fn cmdline_url_server_errors_are_retried() {
    let server = Server::start(|_, i| match i {
        0 => reply(500, "oops"),
        _ => Reply {
            chunked: true,
            ..reply(200, USER_DATA)
        },
    });
    let (_tmp, cfg) = url_config(&server.url("/i.toml"));
    let found = fetch(&detect_network(&cfg), &cfg).unwrap();
    assert_eq!(found.text, USER_DATA);
    assert_eq!(server.seen().len(), 2);

    let server = Server::start(|_, _| reply(500, "oops"));
    let url = server.url("/i.toml");
    let (_tmp, mut cfg) = url_config(&url);
    cfg.retries = 2;
    let e = fetch(&detect_network(&cfg), &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cairn.instance={url}: HTTP 500 Internal Server Error after 3 attempts")
    );
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn cmdline_url_not_found() {
    let server = Server::start(|_, _| reply(404, "no such thing"));
    let url = server.url("/missing.toml");
    let (_tmp, cfg) = url_config(&url);
    let e = fetch(&detect_network(&cfg), &cfg).unwrap_err();
    assert_eq!(e.source, format!("cairn.instance={url}"));
    assert_eq!(
        e.to_string(),
        format!("cairn.instance={url}: HTTP 404 Not Found")
    );
    // A 4xx is not retried.
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn cmdline_url_bad_bodies() {
    let server = Server::start(|_, i| match i {
        0 => reply(200, "a = \"\u{e9}\""),
        _ => Reply {
            status: 200,
            body: b"a = \"\xE9\"".to_vec(),
            chunked: false,
        },
    });
    let (_tmp, cfg) = url_config(&server.url("/i.toml"));
    let source = detect_network(&cfg);
    assert_eq!(fetch(&source, &cfg).unwrap().text, "a = \"\u{e9}\"");
    let e = fetch(&source, &cfg).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("/i.toml: not UTF-8 text (invalid byte at offset 5, line 1, column 6)"),
        "{e}"
    );

    let big = "#".repeat(1024 * 1024 + 1);
    let server = Server::start(move |_, _| reply(200, &big));
    let (_tmp, cfg) = url_config(&server.url("/big.toml"));
    let e = fetch(&detect_network(&cfg), &cfg).unwrap_err();
    assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    assert_eq!(server.seen().len(), 1);
}

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn cmdline_url_unreachable() {
    let url = format!("http://127.0.0.1:{}/x", closed_port());
    let (_tmp, cfg) = url_config(&url);
    let started = Instant::now();
    let e = fetch(&detect_network(&cfg), &cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cairn.instance={url}: connection refused after 5 attempts")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn cmdline_urls_that_are_refused() {
    for (url, says) in [
        ("https://user@config.example.com/i.toml", "not a valid URL"),
        ("http://192.0.2.1/i.toml", "plain http is refused"),
        ("http://example.com/i.toml", "plain http is refused"),
        ("file:///etc/i.toml", "not an https:// URL"),
    ] {
        let (_tmp, cfg) = url_config(url);
        let e = detect(&cfg).unwrap_err();
        assert_eq!(e.source, format!("cairn.instance={url}"));
        assert!(e.message.contains(says), "{e}");
        // fetch checks the same way (a source built by hand).
        let e = fetch(&NetworkSource::Url(url.to_string()), &cfg).unwrap_err();
        assert!(e.message.contains(says), "{e}");
    }
}

fn put_fw_cfg(cfg: &Config, text: &str) {
    let entry = cfg.fw_cfg_dir.join("by_name/opt/cairn/instance.toml");
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("raw"), text).unwrap();
}

fn with_esp(tmp: &TempDir, cfg: &mut Config, text: &str) -> PathBuf {
    let esp = tmp.path().join("efi");
    std::fs::create_dir_all(esp.join("cairn")).unwrap();
    std::fs::write(esp.join("cairn/instance.toml"), text).unwrap();
    cfg.esp_dir = Some(esp.clone());
    esp.join("cairn/instance.toml")
}

fn set_dmi(cfg: &Config, file: &str, value: &str) {
    std::fs::create_dir_all(&cfg.dmi_dir).unwrap();
    std::fs::write(cfg.dmi_dir.join(file), format!("{value}\n")).unwrap();
}

fn local(detected: Detected) -> Found {
    match detected {
        Detected::Local(found) => found,
        other => panic!("expected a local source, got {other:?}"),
    }
}

#[test]
fn nothing_present() {
    let (_tmp, cfg) = machine();
    assert_eq!(detect(&cfg).unwrap(), Detected::None);
    let (_tmp, mut cfg) = machine();
    cfg.cmdline = "console=ttyS0 quiet".into();
    set_dmi(&cfg, "sys_vendor", "QEMU");
    assert_eq!(detect(&cfg).unwrap(), Detected::None);
}

#[test]
fn the_first_source_present_wins() {
    let (tmp, mut cfg) = machine();
    // ESP alone.
    let esp_file = with_esp(&tmp, &mut cfg, "esp = 1\n");
    let found = local(detect(&cfg).unwrap());
    assert_eq!(
        (found.source, found.name.as_str(), found.text.as_str()),
        (SourceKind::Esp, esp_file.to_str().unwrap(), "esp = 1\n")
    );
    // fw_cfg and the ESP: fw_cfg.
    put_fw_cfg(&cfg, "fw_cfg = 1\n");
    let found = local(detect(&cfg).unwrap());
    assert_eq!(
        (found.source, found.name.as_str(), found.text.as_str()),
        (
            SourceKind::FwCfg,
            "fw_cfg opt/cairn/instance.toml",
            "fw_cfg = 1\n"
        )
    );
    // DMI saying EC2 and `cairn.datasource=ec2` come after them.
    set_dmi(&cfg, "sys_vendor", "Amazon EC2");
    cfg.cmdline = "cairn.datasource=ec2".into();
    assert_eq!(local(detect(&cfg).unwrap()).source, SourceKind::FwCfg);
    // A command line URL before everything (nothing fetched by detect).
    cfg.cmdline = "cairn.datasource=ec2 cairn.instance=http://127.0.0.1:9/i.toml".into();
    assert_eq!(
        detect(&cfg).unwrap(),
        Detected::Network(NetworkSource::Url("http://127.0.0.1:9/i.toml".into()))
    );
}

#[test]
fn ec2_is_detected_from_dmi_or_the_command_line() {
    // Only detect: the default endpoint is never contacted by a test.
    let on_ec2 = Detected::Network(NetworkSource::Ec2 {
        endpoint: DEFAULT_IMDS_ENDPOINT.to_string(),
    });
    for (file, value) in [
        ("sys_vendor", "Amazon EC2"),
        ("board_asset_tag", "i-0abc1234def567890"),
        ("product_name", "Amazon EC2"),
        ("bios_vendor", "Amazon EC2"),
    ] {
        let (_tmp, cfg) = machine();
        set_dmi(&cfg, file, value);
        assert_eq!(detect(&cfg).unwrap(), on_ec2, "{file}={value}");
    }
    let (_tmp, mut cfg) = machine();
    cfg.cmdline = "ro cairn.datasource=ec2".into();
    assert_eq!(detect(&cfg).unwrap(), on_ec2);
    // The endpoint given wins over the default one.
    cfg.imds_endpoint = Some("http://127.0.0.1:9".into());
    assert_eq!(
        detect(&cfg).unwrap(),
        Detected::Network(NetworkSource::Ec2 {
            endpoint: "http://127.0.0.1:9".into()
        })
    );
    // An unknown datasource is an error, not ignored.
    cfg.cmdline = "cairn.datasource=azure".into();
    assert_eq!(
        detect(&cfg).unwrap_err().source,
        "cairn.datasource=azure".to_string()
    );
}

#[test]
fn a_broken_source_never_falls_through() {
    // fw_cfg broken (a directory where `raw` should be), the ESP fine: an error naming fw_cfg.
    let (tmp, mut cfg) = machine();
    with_esp(&tmp, &mut cfg, "esp = 1\n");
    let entry = cfg.fw_cfg_dir.join("by_name/opt/cairn/instance.toml");
    std::fs::create_dir_all(entry.join("raw")).unwrap();
    let e = detect(&cfg).unwrap_err();
    assert_eq!(e.source, "fw_cfg opt/cairn/instance.toml");
    assert!(e.message.ends_with("raw: a directory, not a file"), "{e}");

    // The ESP broken, DMI saying EC2: an error naming the ESP file.
    let (tmp, mut cfg) = machine();
    let file = with_esp(&tmp, &mut cfg, "");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    set_dmi(&cfg, "sys_vendor", "Amazon EC2");
    let e = detect(&cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: a directory, not a file", file.display())
    );

    // fw_cfg with bytes that are not UTF-8.
    let (_tmp, cfg) = machine();
    put_fw_cfg(&cfg, "");
    std::fs::write(
        cfg.fw_cfg_dir.join("by_name/opt/cairn/instance.toml/raw"),
        b"\xFF",
    )
    .unwrap();
    assert_eq!(
        detect(&cfg).unwrap_err().to_string(),
        "fw_cfg opt/cairn/instance.toml: not UTF-8 text (invalid byte at offset 0, line 1, column 1)"
    );
}
