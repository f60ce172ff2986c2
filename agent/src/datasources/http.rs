//! A minimal HTTP/1.1 client over `std::net::TcpStream`, with TLS from rustls: just enough to fetch instance data.
//!
//! - `http://` and `https://host[:port]/path?query` URLs (host: a name, an IPv4 address or a bracketed IPv6
//!   address such as `[::1]`); no credentials in URLs, the `#fragment` is dropped. Which hosts may be reached
//!   over plain HTTP is the caller's policy ([`Url::is_loopback`] helps).
//! - HTTPS: TLS 1.3 or 1.2 (rustls with its `ring` provider), no client certificate. The server's certificate
//!   chain is verified as rustls verifies it (chain to a trusted root, validity dates, server-auth usage) and
//!   must be valid for the URL's host: its DNS name, or its IP address for an IP literal (an IP SAN). Trusted:
//!   the Mozilla root set compiled in (`webpki-roots`), plus every PEM bundle of [`Policy::ca_bundles`] that
//!   exists (read for each request; a missing one is skipped, one that exists but cannot be read or holds no
//!   usable certificate is [`HttpError::Trust`], naming it). A refused certificate is
//!   [`HttpError::Certificate`], saying why (unknown issuer, name mismatch, expired, not valid yet...) and never
//!   retried; any other TLS failure of the server (a handshake alert, something that is not TLS) is a protocol
//!   error, not retried either. The server must end a body framed by the end of the connection with TLS's
//!   `close_notify`: a connection that just stops is a truncated response (retried).
//! - `localhost` is never looked up: it is 127.0.0.1, then ::1 (RFC 6761). An IP literal is used as is; any other
//!   name goes through the system resolver.
//! - GET and PUT (with an empty body), the caller's request headers, `Connection: close`: one connection per
//!   request, no keep-alive, no redirects followed, no compression asked for (a `Content-Encoding` other than
//!   `identity` is refused).
//! - The response body is framed by `Transfer-Encoding: chunked`, else `Content-Length`, else the end of the
//!   connection, and bounded by [`Policy::max_body`]: a larger body is an error, not a truncated document.
//!   Interim `1xx` responses are skipped.
//! - Each attempt has one deadline ([`Policy::timeout`]) covering connect, the TLS handshake, send and the
//!   whole response.
//! - Bounded retries: a connection or I/O failure (refused, reset, timed out, closed early) and a `5xx` status
//!   are retried up to [`Policy::retries`] more times, waiting [`Policy::retry_delay`] before the first retry
//!   and doubling the wait each time (capped at 30 s, or at `retry_delay` if that is longer). A `4xx` or any
//!   other status is returned at once, and a malformed response fails at once.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The default bound on a response body: instance data is small.
pub const MAX_BODY: usize = 1 << 20;
/// The bound on a response's status line and headers together.
const MAX_HEAD: usize = 64 * 1024;
/// The longest wait between two attempts (unless `retry_delay` itself is longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// The bound on a CA bundle file (Debian's is about 200 KiB).
const MAX_CA_BUNDLE: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// The host, lowercased, without brackets for IPv6 (`::1`).
    pub host: String,
    pub port: u16,
    /// The request target: the path (always starting with `/`) and the query, if any.
    pub target: String,
}

impl Url {
    /// Parses `http[s]://host[:port][/path][?query][#fragment]`. Any other scheme is an error.
    pub fn parse(text: &str) -> Result<Url, String> {
        let (scheme, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, "http://") {
            (Scheme::Http, rest)
        } else {
            return Err("not an http:// or https:// URL".to_string());
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        let rest = rest.split('#').next().unwrap_or("");
        let target = if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".to_string());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (inside, after) = bracketed
                .split_once(']')
                .ok_or_else(|| "unclosed [ in the host".to_string())?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| format!("[{inside}] is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("unexpected {p:?} after the IPv6 address"))?,
                ),
            };
            (ip.to_string(), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err("no host".to_string());
            }
            if !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            {
                return Err(format!("{host:?} is not a valid host"));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None | Some("") => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{p:?} is not a valid port")),
            },
        };
        Ok(Url {
            scheme,
            host,
            port,
            target,
        })
    }

    /// Whether the host is a loopback one: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The `Host` header value (`host`, `host:port`, `[::1]:port`; no port when it is the scheme's default).
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_header(),
            self.target
        )
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    /// A PUT with an empty body.
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// The bounded network behaviour of one request.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts after the first one (so `retries + 1` attempts in all).
    pub retries: u32,
    /// The wait before the first retry; it doubles for each further retry.
    pub retry_delay: Duration,
    /// The deadline of one attempt: connect, send and read the whole response.
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_body: usize,
    /// PEM files of CA certificates trusted for HTTPS besides the Mozilla root set, each read when it exists.
    pub ca_bundles: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// The headers as received (names as sent by the server).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `404 Not Found`, or just `404` when the server sent no reason.
    pub fn status_text(&self) -> String {
        status_text(self.status, &self.reason)
    }
}

fn status_text(status: u16, reason: &str) -> String {
    if reason.is_empty() {
        status.to_string()
    } else {
        format!("{status} {reason}")
    }
}

#[derive(Debug)]
pub enum HttpError {
    /// No response: the connection failed or broke, on every attempt. `message` is the last attempt's.
    Io {
        kind: io::ErrorKind,
        message: String,
        attempts: u32,
    },
    /// A `5xx` status on every attempt (the last one's).
    Status {
        status: u16,
        reason: String,
        attempts: u32,
    },
    /// The server answered something this client refuses (malformed, too large, an encoding it cannot read, a
    /// failed TLS handshake).
    Protocol(String),
    /// HTTPS: the server's certificate was refused (the whole message: the host, why, what is trusted). Never
    /// retried.
    Certificate(String),
    /// HTTPS: a CA bundle of [`Policy::ca_bundles`] exists but cannot be used (the message names it). No
    /// request was sent.
    Trust(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = |n: u32| {
            if n == 1 {
                "after 1 attempt".to_string()
            } else {
                format!("after {n} attempts")
            }
        };
        match self {
            HttpError::Io {
                message, attempts, ..
            } => write!(f, "{message} {}", after(*attempts)),
            HttpError::Status {
                status,
                reason,
                attempts,
            } => write!(
                f,
                "HTTP {} {}",
                status_text(*status, reason),
                after(*attempts)
            ),
            HttpError::Protocol(message)
            | HttpError::Certificate(message)
            | HttpError::Trust(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for HttpError {}

/// Sends one request, with the retries of `policy`. A status below 500 is returned as a response, whatever it
/// is; a `5xx` that persists through every attempt is [`HttpError::Status`].
pub fn request(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    policy: &Policy,
) -> Result<Response, HttpError> {
    for (name, value) in headers {
        if !is_token(name) || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Protocol(format!(
                "invalid request header {name:?}"
            )));
        }
    }
    let tls = match url.scheme {
        Scheme::Http => None,
        Scheme::Https => Some(Tls::new(&policy.ca_bundles).map_err(HttpError::Trust)?),
    };
    let attempts = policy.retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let last = attempt >= attempts;
        match exchange(method, url, headers, policy, tls.as_ref()) {
            Ok(response) if response.status >= 500 && !last => {}
            Ok(response) if response.status >= 500 => {
                return Err(HttpError::Status {
                    status: response.status,
                    reason: response.reason,
                    attempts: attempt,
                });
            }
            Ok(response) => return Ok(response),
            Err(Failure::Protocol(message)) => return Err(HttpError::Protocol(message)),
            Err(Failure::Tls(rustls::Error::InvalidCertificate(e))) => {
                let trusted = tls.as_ref().map_or("", |t| t.trusted.as_str());
                return Err(HttpError::Certificate(format!(
                    "the TLS certificate of {} was refused: {}; trusted: {trusted}",
                    url.host,
                    describe_certificate_error(&e)
                )));
            }
            Err(Failure::Tls(e)) => {
                return Err(HttpError::Protocol(format!(
                    "TLS with {} failed: {e}",
                    url.host
                )));
            }
            Err(Failure::Io(e)) if last => {
                return Err(HttpError::Io {
                    kind: e.kind(),
                    message: describe_io(&e),
                    attempts: attempt,
                });
            }
            Err(Failure::Io(_)) => {}
        }
        std::thread::sleep(retry_wait(policy.retry_delay, attempt));
        attempt += 1;
    }
}

/// The wait after failed attempt `attempt` (1-based): `delay`, `2 * delay`, `4 * delay`..., capped.
fn retry_wait(delay: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    delay.saturating_mul(factor).min(MAX_RETRY_DELAY.max(delay))
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::UnexpectedEof => "connection closed before the response ended".to_string(),
        _ => e.to_string(),
    }
}

/// Why one attempt failed: I/O is retried, protocol and TLS errors are not.
#[derive(Debug)]
enum Failure {
    Io(io::Error),
    Protocol(String),
    /// What rustls refused (a certificate, an alert, a record that is not TLS...).
    Tls(rustls::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        // rustls reports its own errors through `io::Error`s of kind `InvalidData`.
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Failure::Tls(tls.clone()),
            None => Failure::Io(e),
        }
    }
}

/// What a refused certificate is, in words.
fn describe_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => {
            "unknown issuer (its chain does not lead to a trusted CA)".to_string()
        }
        CertificateError::NotValidForName => "name mismatch".to_string(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = if presented.is_empty() {
                "no name".to_string()
            } else {
                let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
                names.join(", ")
            };
            format!(
                "name mismatch (it is for {names}, not {})",
                expected.to_str()
            )
        }
        CertificateError::Expired => "expired".to_string(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired on {} (the clock says {})",
            utc(*not_after),
            utc(*time)
        ),
        CertificateError::NotValidYet => "not valid yet (is the clock right?)".to_string(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "not valid before {} (the clock says {}: is it right?)",
            utc(*not_before),
            utc(*time)
        ),
        CertificateError::BadSignature => "bad signature".to_string(),
        CertificateError::BadEncoding => "badly encoded".to_string(),
        CertificateError::Revoked => "revoked".to_string(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not a TLS server certificate".to_string()
        }
        other => other.to_string(),
    }
}

/// A name of a certificate as webpki presents it (`DnsName("a.example")`, `IpAddress(192.0.2.1)`), bare.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(name)
}

/// A UNIX time as `YYYY-MM-DD hh:mm:ss UTC`.
fn utc(time: UnixTime) -> String {
    let secs = time.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm, for days since 1970-01-01).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The TLS client setup of one request: the trusted roots, and how to say what they are.
struct Tls {
    config: Arc<ClientConfig>,
    /// `the Mozilla root set and /etc/ssl/certs/ca-certificates.crt`.
    trusted: String,
}

impl Tls {
    fn new(ca_bundles: &[PathBuf]) -> Result<Tls, String> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut trusted = vec!["the Mozilla root set".to_string()];
        for path in ca_bundles {
            if add_ca_bundle(&mut roots, path)? > 0 {
                trusted.push(path.display().to_string());
            }
        }
        // The provider is named: a build that also links another one (the workspace's other crates) must not
        // make this client pick by chance.
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Tls {
            config: Arc::new(config),
            trusted: trusted.join(" and "),
        })
    }
}

/// Adds the certificates of a PEM bundle to `roots`; `Ok(0)` when nothing is at `path` (or the file is blank),
/// else how many were added. Certificates that parse but cannot be trust anchors are skipped, as rustls's own
/// loaders do; a bundle with none that can is an error.
fn add_ca_bundle(roots: &mut RootCertStore, path: &Path) -> Result<usize, String> {
    let fail = |what: String| format!("CA bundle {}: {what}", path.display());
    // Checked before opening: opening a FIFO would block.
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) && fs::symlink_metadata(path).is_err() =>
        {
            return Ok(0);
        }
        Err(e) => return Err(fail(format!("cannot read: {e}"))),
    };
    if !meta.is_file() {
        return Err(fail("not a regular file".to_string()));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_BUNDLE + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CA_BUNDLE {
        return Err(fail(format!("larger than {MAX_CA_BUNDLE} bytes")));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(format!(
                "not a PEM certificate bundle: {}",
                describe_pem(&e)
            ))
        })?;
    if certs.is_empty() {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(0);
        }
        return Err(fail(
            "not a PEM certificate bundle: no BEGIN CERTIFICATE section".to_string(),
        ));
    }
    let count = certs.len();
    match roots.add_parsable_certificates(certs) {
        (0, _) => Err(fail(format!(
            "none of its {count} certificates can be a trust anchor"
        ))),
        (added, _) => Ok(added),
    }
}

fn describe_pem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("no END {} line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("bad section start {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(why) => format!("bad base64 ({why})"),
        other => other.to_string(),
    }
}

fn protocol<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Protocol(message.into()))
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Percent-encodes what may not appear raw in a request target (spaces, controls, non-ASCII...); `%` is kept,
/// so an already encoded target is sent unchanged.
fn encode_target(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b > 0x20 && b < 0x7f && !b"\"<>\\^`{|}".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}

fn addresses(url: &Url) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, url.port)]);
    }
    if url.host == "localhost" {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), url.port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), url.port),
        ]);
    }
    let found: Vec<SocketAddr> = (url.host.as_str(), url.port).to_socket_addrs()?.collect();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no address", url.host),
        ));
    }
    Ok(found)
}

fn connect(url: &Url, deadline: Instant) -> io::Result<Socket> {
    let mut last = None;
    for addr in addresses(url)? {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(tcp) => return Ok(Socket { tcp, deadline }),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// The TCP connection of one attempt: every read and write is bounded by the attempt's deadline.
struct Socket {
    tcp: TcpStream,
    deadline: Instant,
}

/// A socket timeout, as `TimedOut` (Linux says `WouldBlock`, which rustls would take for a non-blocking socket).
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    } else {
        e
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(remaining(self.deadline)?))?;
        self.tcp.read(buf).map_err(timed_out)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp
            .set_write_timeout(Some(remaining(self.deadline)?))?;
        self.tcp.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection: plain, or TLS over the socket.
enum Conn {
    Plain(Socket),
    Tls(Box<StreamOwned<ClientConnection, Socket>>),
}

impl Conn {
    /// TLS over `socket`, the handshake done (so a refused certificate fails here, before anything is sent).
    fn tls(tls: &Tls, url: &Url, mut socket: Socket) -> Result<Conn, Failure> {
        let name = ServerName::try_from(url.host.clone()).map_err(|_| {
            Failure::Protocol(format!("{:?} is not a valid TLS server name", url.host))
        })?;
        let mut conn =
            ClientConnection::new(Arc::clone(&tls.config), name).map_err(Failure::Tls)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut socket)?;
        }
        Ok(Conn::Tls(Box::new(StreamOwned::new(conn, socket))))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// One attempt: connect (and the TLS handshake), send, read the whole response.
fn exchange(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    policy: &Policy,
    tls: Option<&Tls>,
) -> Result<Response, Failure> {
    let deadline = Instant::now() + policy.timeout;
    let socket = connect(url, deadline)?;
    let mut stream = match tls {
        None => Conn::Plain(socket),
        Some(tls) => Conn::tls(tls, url, socket)?,
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cairn-agent/{}\r\nAccept: */*\r\nConnection: close\r\n",
        method.as_str(),
        encode_target(&url.target),
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == Method::Put {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut reader = Reader {
        stream,
        buf: Vec::new(),
        pos: 0,
    };
    read_response(&mut reader, policy.max_body)
}

/// A buffered reader over the connection (whose socket enforces the attempt's deadline on every read).
struct Reader {
    stream: Conn,
    buf: Vec<u8>,
    pos: usize,
}

impl Reader {
    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 8192 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// One line without its CRLF (or bare LF), counted against `budget`.
    fn line(&mut self, budget: &mut usize, what: &str) -> Result<String, Failure> {
        loop {
            if let Some(i) = self.available().iter().position(|&b| b == b'\n') {
                if i + 1 > *budget {
                    return protocol(format!("{what} too long"));
                }
                *budget -= i + 1;
                let raw = &self.buf[self.pos..self.pos + i];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                let line = String::from_utf8_lossy(raw).into_owned();
                self.pos += i + 1;
                return Ok(line);
            }
            if self.available().len() > *budget {
                return protocol(format!("{what} too long"));
            }
            if self.fill()? == 0 {
                return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Exactly `n` bytes appended to `out`.
    fn exact(&mut self, mut n: usize, out: &mut Vec<u8>) -> Result<(), Failure> {
        while n > 0 {
            if self.available().is_empty() && self.fill()? == 0 {
                return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let take = n.min(self.available().len());
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take;
        }
        Ok(())
    }

    /// Everything up to the end of the stream, at most `max` bytes in `out`.
    fn read_to_eof(&mut self, out: &mut Vec<u8>, max: usize) -> Result<(), Failure> {
        loop {
            let take = self.available().len();
            if out.len() + take > max {
                return protocol(format!("response body larger than {max} bytes"));
            }
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos += take;
            if self.fill()? == 0 {
                return Ok(());
            }
        }
    }
}

fn read_response(r: &mut Reader, max_body: usize) -> Result<Response, Failure> {
    let mut budget = MAX_HEAD;
    let (status, reason, headers) = loop {
        let line = r.line(&mut budget, "response head")?;
        let (status, reason) = parse_status_line(&line)?;
        let headers = read_headers(r, &mut budget)?;
        // Interim responses (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, reason, headers);
    };
    let mut response = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    if let Some(coding) = response.header("content-encoding")
        && !coding.trim().eq_ignore_ascii_case("identity")
    {
        return protocol(format!("content-encoding {coding:?} is not supported"));
    }
    if status == 101 {
        return protocol("the server switched protocols");
    }
    if status == 204 || status == 304 {
        return Ok(response);
    }
    let mut body = Vec::new();
    if let Some(te) = response.header("transfer-encoding") {
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return protocol(format!("transfer-encoding {te:?} is not supported"));
        }
        read_chunked(r, &mut body, max_body)?;
    } else if let Some(length) = content_length(&response.headers)? {
        if length > max_body as u64 {
            return protocol(format!(
                "response body of {length} bytes is larger than {max_body} bytes"
            ));
        }
        // The bound above makes the cast lossless.
        r.exact(length as usize, &mut body)?;
    } else {
        r.read_to_eof(&mut body, max_body)?;
    }
    response.body = body;
    Ok(response)
}

fn parse_status_line(line: &str) -> Result<(u16, String), Failure> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    let reason = parts.next().unwrap_or("").trim();
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return protocol(format!("not an HTTP/1.x status line: {:?}", truncate(line)));
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| Failure::Protocol(format!("bad status code {code:?}")))?;
    if status < 100 {
        return protocol(format!("bad status code {code:?}"));
    }
    Ok((status, reason.to_string()))
}

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

fn read_headers(r: &mut Reader, budget: &mut usize) -> Result<Vec<(String, String)>, Failure> {
    let mut headers = Vec::new();
    loop {
        let line = r.line(budget, "response head")?;
        if line.is_empty() {
            return Ok(headers);
        }
        if line.starts_with([' ', '\t']) {
            return protocol("folded response header");
        }
        let Some((name, value)) = line.split_once(':') else {
            return protocol(format!("malformed response header {:?}", truncate(&line)));
        };
        if !is_token(name) {
            return protocol(format!("malformed response header {:?}", truncate(&line)));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, Failure> {
    let mut found: Option<u64> = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        // "Content-Length: 12, 12" is allowed when the values agree.
        for part in value.split(',') {
            let part = part.trim();
            let n = if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse::<u64>().ok()
            } else {
                None
            };
            let Some(n) = n else {
                return protocol(format!("bad content-length {value:?}"));
            };
            if found.is_some_and(|f| f != n) {
                return protocol("conflicting content-length headers");
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn read_chunked(r: &mut Reader, body: &mut Vec<u8>, max: usize) -> Result<(), Failure> {
    loop {
        let mut budget = 1024;
        let line = r.line(&mut budget, "chunk size line")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = if !hex.is_empty() && hex.len() <= 16 {
            u64::from_str_radix(hex, 16).ok()
        } else {
            None
        };
        let Some(size) = size else {
            return protocol(format!("bad chunk size {:?}", truncate(&line)));
        };
        if size == 0 {
            // Trailers, then the empty line that ends the message.
            let mut budget = MAX_HEAD;
            while !r.line(&mut budget, "chunked trailer")?.is_empty() {}
            return Ok(());
        }
        if size > (max - body.len()) as u64 {
            return protocol(format!("response body larger than {max} bytes"));
        }
        r.exact(size as usize, body)?;
        let mut budget = 2;
        if !r.line(&mut budget, "chunk end")?.is_empty() {
            return protocol("chunk not followed by CRLF");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/a/b?x=1#frag").unwrap();
        assert_eq!(
            u,
            Url {
                scheme: Scheme::Http,
                host: "127.0.0.1".into(),
                port: 8080,
                target: "/a/b?x=1".into()
            }
        );
        assert!(u.is_loopback());
        let u = Url::parse("http://[::1]:9/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 9, "/x")
        );
        assert!(u.is_loopback());
        assert_eq!(u.to_string(), "http://[::1]:9/x");
        let u = Url::parse("HTTP://LocalHost").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("localhost", 80, "/")
        );
        assert!(u.is_loopback());
        let u = Url::parse("http://127.8.9.10?q").unwrap();
        assert_eq!(u.target, "/?q");
        assert!(u.is_loopback());
        let u = Url::parse("http://169.254.169.254").unwrap();
        assert!(!u.is_loopback());
        assert!(!Url::parse("http://example.com:81/").unwrap().is_loopback());
        assert!(!Url::parse("http://[::2]/").unwrap().is_loopback());
        assert!(
            !Url::parse("http://localhost.example/")
                .unwrap()
                .is_loopback()
        );
        assert_eq!(Url::parse("http://[::1]/").unwrap().host_header(), "[::1]");

        let u = Url::parse("HTTPS://Config.Example.COM/i.toml").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.target.as_str()),
            (Scheme::Https, "config.example.com", 443, "/i.toml")
        );
        assert_eq!(u.to_string(), "https://config.example.com/i.toml");
        let u = Url::parse("https://[::1]:8443").unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Https, 8443));
        assert_eq!(u.to_string(), "https://[::1]:8443/");
        assert_eq!(
            Url::parse("https://h:80/").unwrap().to_string(),
            "https://h:80/"
        );
        assert_eq!(
            Url::parse("http://h:443/").unwrap().to_string(),
            "http://h:443/"
        );
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "ftp://x/",
            "https//x/",
            "https://",
            "https://user@x/",
            "127.0.0.1/x",
            "http://",
            "http:///x",
            "http://user:pw@127.0.0.1/",
            "http://[::1/",
            "http://[zz]/",
            "http://[::1]x/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:+80/",
            "http://::1/",
            "http://a b/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn encodes_targets() {
        assert_eq!(encode_target("/a b/%20\"é"), "/a%20b/%20%22%C3%A9");
        assert_eq!(encode_target("/x?a=1&b=2"), "/x?a=1&b=2");
    }

    #[test]
    fn says_times_and_names_plainly() {
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::ZERO)),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::from_secs(
                951_782_400 + 3661
            ))),
            "2000-02-29 01:01:01 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(Duration::from_secs(
                1_577_836_799
            ))),
            "2019-12-31 23:59:59 UTC"
        );
        assert_eq!(presented_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(presented_name("IpAddress(192.0.2.1)"), "192.0.2.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn ca_bundles_absent_blank_or_not_files() {
        let tmp = super::super::test_support::TempDir::new();
        let mut roots = RootCertStore::empty();
        let missing = tmp.path().join("missing.crt");
        assert_eq!(add_ca_bundle(&mut roots, &missing), Ok(0));
        // A parent that is a file: nothing there either.
        let blank = tmp.path().join("blank.crt");
        std::fs::write(&blank, " \n\n").unwrap();
        assert_eq!(add_ca_bundle(&mut roots, &blank.join("x")), Ok(0));
        assert_eq!(add_ca_bundle(&mut roots, &blank), Ok(0));
        assert!(roots.is_empty());
        let dangling = tmp.path().join("dangling.crt");
        std::os::unix::fs::symlink("/nonexistent/cairn.crt", &dangling).unwrap();
        let e = add_ca_bundle(&mut roots, &dangling).unwrap_err();
        assert!(
            e.starts_with(&format!("CA bundle {}: cannot read: ", dangling.display())),
            "{e}"
        );
        // Missing bundles leave the Mozilla roots.
        let tls = Tls::new(&[missing]).unwrap();
        assert_eq!(tls.trusted, "the Mozilla root set");
    }

    #[test]
    fn retry_waits_double_and_are_capped() {
        let d = Duration::from_millis(100);
        assert_eq!(retry_wait(d, 1), d);
        assert_eq!(retry_wait(d, 2), d * 2);
        assert_eq!(retry_wait(d, 3), d * 4);
        assert_eq!(retry_wait(d, 40), MAX_RETRY_DELAY);
        let long = Duration::from_secs(60);
        assert_eq!(retry_wait(long, 3), long);
    }

    /// A server that answers each connection with the next canned reply (raw bytes, the connection then
    /// closed) and records each request head.
    fn canned(replies: Vec<Vec<u8>>) -> (Url, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = io::BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                log.lock().unwrap().push(head);
                let mut stream = reader.into_inner();
                let _ = stream.write_all(&reply);
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/p a?q=1")).unwrap();
        (url, seen)
    }

    fn policy() -> Policy {
        Policy {
            retries: 2,
            retry_delay: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
            max_body: 64,
            ca_bundles: Vec::new(),
        }
    }

    fn get(url: &Url) -> Result<Response, HttpError> {
        request(Method::Get, url, &[("X-Test", "yes")], &policy())
    }

    #[test]
    fn sends_a_well_formed_request() {
        let (url, seen) = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
        ]);
        let r = request(Method::Put, &url, &[("X-Test", "yes")], &policy()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("PUT /p%20a?q=1 HTTP/1.1\r\n"), "{head}");
        let port = url.port;
        assert!(
            head.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(head.contains("X-Test: yes\r\n"), "{head}");
        assert!(head.contains("Content-Length: 0\r\n"), "{head}");
    }

    #[test]
    fn reads_bodies_by_length_chunks_and_eof() {
        let (url, _) = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello and more ignored".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
            b"HTTP/1.0 200 OK\r\n\r\nto the end".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        assert_eq!(get(&url).unwrap().body, b"hello");
        assert_eq!(get(&url).unwrap().body, b"hello world");
        assert_eq!(get(&url).unwrap().body, b"to the end");
        assert_eq!(get(&url).unwrap().body, b"ok");
        assert_eq!(get(&url).unwrap().status, 204);
        let r = get(&url).unwrap();
        assert_eq!((r.status, r.status_text()), (404, "404".to_string()));
    }

    #[test]
    fn bounds_the_body() {
        let big = vec![b'x'; 65];
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n".to_vec();
        chunked.extend_from_slice(&big);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut eof = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        eof.extend_from_slice(&big);
        let (url, seen) = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n".to_vec(),
            chunked,
            eof,
        ]);
        for _ in 0..3 {
            let e = get(&url).unwrap_err();
            assert!(matches!(e, HttpError::Protocol(_)), "{e}");
            assert!(e.to_string().contains("larger than 64 bytes"), "{e}");
        }
        // Not retried: one request each.
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn refuses_malformed_responses_without_retrying() {
        let (url, seen) = canned(vec![
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n".to_vec(),
        ]);
        for _ in 0..6 {
            assert!(matches!(get(&url), Err(HttpError::Protocol(_))));
        }
        assert_eq!(seen.lock().unwrap().len(), 6);
    }

    #[test]
    fn retries_server_errors_and_broken_connections() {
        let (url, seen) = canned(vec![
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ]);
        assert_eq!(get(&url).unwrap().body, b"ok");
        assert_eq!(seen.lock().unwrap().len(), 3);

        let (url, seen) = canned(vec![
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec();
            3
        ]);
        let e = get(&url).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HTTP 500 Internal Server Error after 3 attempts"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn reaches_localhost_and_ipv6_loopback() {
        let (url, seen) = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n4".to_vec(),
        ]);
        let localhost = Url {
            host: "localhost".into(),
            ..url
        };
        assert_eq!(get(&localhost).unwrap().body, b"4");
        let head = seen.lock().unwrap()[0].clone();
        assert!(
            head.contains(&format!("Host: localhost:{}\r\n", localhost.port)),
            "{head}"
        );

        // Only where the machine has IPv6 loopback.
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return;
        };
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                let mut reader = io::BufReader::new(stream);
                let mut head = String::new();
                while reader.read_line(&mut head).unwrap_or(0) > 2 {
                    head.clear();
                }
                let _ = reader
                    .into_inner()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n6");
            }
        });
        let url = Url::parse(&format!("http://[::1]:{port}/")).unwrap();
        assert_eq!(get(&url).unwrap().body, b"6");
    }

    #[test]
    fn times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let p = Policy {
            retries: 1,
            retry_delay: Duration::from_millis(1),
            timeout: Duration::from_millis(100),
            max_body: 64,
            ca_bundles: Vec::new(),
        };
        // The listener's backlog accepts the connection; nothing ever answers.
        let start = Instant::now();
        let e = request(Method::Get, &url, &[], &p).unwrap_err();
        assert_eq!(e.to_string(), "timed out after 2 attempts");
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[test]
    fn refuses_header_injection() {
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        let e = request(Method::Get, &url, &[("X", "a\r\nB: c")], &policy()).unwrap_err();
        assert!(matches!(e, HttpError::Protocol(_)));
        let e = request(Method::Get, &url, &[("X Y", "a")], &policy()).unwrap_err();
        assert!(matches!(e, HttpError::Protocol(_)));
    }
}
