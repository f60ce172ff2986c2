//! A small blocking HTTP/1.1 client for instance data: ureq, with TLS from this client's own rustls setup, and
//! the policy the data sources rely on around it.
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
//! - GET and PUT (with an empty body), the caller's request headers (checked before anything is sent),
//!   `Connection: close`: one connection per attempt, no keep-alive, no proxy, no redirects followed (a `3xx` is
//!   returned as it is), no compression asked for (a `Content-Encoding` other than `identity` is refused).
//! - The response body is framed by `Transfer-Encoding: chunked` (no other transfer coding), else
//!   `Content-Length`, else the end of the connection, and bounded by [`Policy::max_body`]: a larger body is an
//!   error, not a truncated document; so is a connection that ends before the `Content-Length` or the last
//!   chunk (retried). Interim `1xx` responses are skipped. ureq keeps no reason phrase: [`Response::reason`]
//!   is the status code's standard one.
//! - Each attempt has one deadline ([`Policy::timeout`]) covering the name lookup, connect, the TLS handshake,
//!   send and the whole response.
//! - Bounded retries: a connection or I/O failure (refused, reset, timed out, closed early) and a `5xx` status
//!   are retried up to [`Policy::retries`] more times, waiting [`Policy::retry_delay`] before the first retry
//!   and doubling the wait each time (capped at 30 s, or at `retry_delay` if that is longer). A `4xx` or any
//!   other status is returned at once, and a malformed response fails at once.

#[cfg(test)]
mod proptests;
mod transport;
mod trust;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use ureq::unversioned::transport::{Connector, TcpConnector};

use transport::{Connect, Cut, Resolve, TlsTarget};
use trust::{Tls, describe_certificate_error};

/// The default bound on a response body: instance data is small.
pub const MAX_BODY: usize = 1 << 20;
/// The bound on a response's status line and headers together.
const MAX_HEAD: usize = 64 * 1024;
const USER_AGENT: &str = concat!("cairn-agent/", env!("CARGO_PKG_VERSION"));
/// The longest wait between two attempts (unless `retry_delay` itself is longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

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
    /// The status code's standard reason phrase (`Not Found`), empty for a code that has none: ureq does not
    /// keep the one the server sent.
    pub reason: String,
    /// The headers as received, names lowercased.
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

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No response: the connection failed or broke, on every attempt. `message` is the last attempt's.
    #[error("{message} {}", after(*.attempts))]
    Io {
        kind: io::ErrorKind,
        message: String,
        attempts: u32,
    },
    /// A `5xx` status on every attempt (the last one's).
    #[error("HTTP {} {}", status_text(*.status, .reason), after(*.attempts))]
    Status {
        status: u16,
        reason: String,
        attempts: u32,
    },
    /// The server answered something this client refuses (malformed, too large, an encoding it cannot read, a
    /// failed TLS handshake).
    #[error("{0}")]
    Protocol(String),
    /// HTTPS: the server's certificate was refused (the whole message: the host, why, what is trusted). Never
    /// retried.
    #[error("{0}")]
    Certificate(String),
    /// HTTPS: a CA bundle of [`Policy::ca_bundles`] exists but cannot be used (the message names it). No
    /// request was sent.
    #[error("{0}")]
    Trust(String),
    /// [`request_into`]'s sink refused the body (its own error: a digest that differs, a full disk).
    #[error("{0}")]
    Sink(io::Error),
}

fn after(attempts: u32) -> String {
    if attempts == 1 {
        "after 1 attempt".to_string()
    } else {
        format!("after {attempts} attempts")
    }
}

/// Where [`request_into`] streams a successful body: written as it arrives, so that a body far larger than memory
/// (an update's root) never sits in it.
pub trait Sink {
    /// Called before each attempt's body is written: the sink starts over (a retry sends the body again).
    fn restart(&mut self) -> io::Result<()>;
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
}

/// Sends one request, with the retries of `policy`. A status below 500 is returned as a response, whatever it
/// is; a `5xx` that persists through every attempt is [`HttpError::Status`].
pub fn request(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    policy: &Policy,
) -> Result<Response, HttpError> {
    send(method, url, headers, policy, None)
}

/// [`request`], with a `2xx` response's body (bounded by [`Policy::max_body`]) written to `sink` instead of
/// [`Response::body`]; any other status's body is read as [`request`] reads it. A failure of the sink is
/// [`HttpError::Sink`], never retried; a connection that breaks mid-body is retried from the start.
pub fn request_into(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    policy: &Policy,
    sink: &mut dyn Sink,
) -> Result<Response, HttpError> {
    send(method, url, headers, policy, Some(sink))
}

fn send(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    policy: &Policy,
    mut sink: Option<&mut dyn Sink>,
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
        match exchange(
            method,
            url,
            headers,
            policy,
            tls.as_ref(),
            sink.as_deref_mut(),
        ) {
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
            Err(Failure::Sink(e)) => return Err(HttpError::Sink(e)),
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
    /// The body's sink failed.
    Sink(io::Error),
}

impl Failure {
    /// A failure reading a streamed body: ureq wraps its own errors in `io::Error`s.
    fn of_body(e: io::Error) -> Failure {
        if e.get_ref().is_some_and(|i| i.is::<ureq::Error>()) {
            if let Some(inner) = e.into_inner()
                && let Ok(u) = inner.downcast::<ureq::Error>()
            {
                return Failure::from(*u);
            }
            return Failure::Io(io::Error::other("reading the body"));
        }
        Failure::from(ureq::Error::Io(e))
    }
}

impl From<ureq::Error> for Failure {
    fn from(e: ureq::Error) -> Failure {
        match e {
            ureq::Error::Io(e) => {
                // rustls reports its own errors through `io::Error`s (of kind `InvalidData`).
                if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Failure::Tls(tls.clone());
                }
                if let Some(Cut(kind)) = e.get_ref().and_then(|i| i.downcast_ref::<Cut>()) {
                    return Failure::Io(io::Error::from(*kind));
                }
                Failure::Io(e)
            }
            ureq::Error::Timeout(_) => Failure::Io(io::ErrorKind::TimedOut.into()),
            ureq::Error::HostNotFound => Failure::Io(io::Error::new(
                io::ErrorKind::NotFound,
                "the host has no address",
            )),
            ureq::Error::ConnectionFailed => Failure::Io(io::Error::other("connection failed")),
            ureq::Error::BodyExceedsLimit(max) => {
                Failure::Protocol(format!("response body larger than {max} bytes"))
            }
            ureq::Error::LargeResponseHeader(..) => {
                Failure::Protocol(format!("response head larger than {MAX_HEAD} bytes"))
            }
            ureq::Error::Protocol(e) => Failure::Protocol(format!("malformed response: {e}")),
            other => Failure::Protocol(other.to_string()),
        }
    }
}

/// One attempt: connect (and the TLS handshake), send, read the whole response, all before one deadline.
fn exchange(
    method: Method,
    url: &Url,
    headers: &[(&str, &str)],
    policy: &Policy,
    tls: Option<&Tls>,
    sink: Option<&mut (dyn Sink + '_)>,
) -> Result<Response, Failure> {
    let deadline = Instant::now() + policy.timeout;
    let tls = match tls {
        None => None,
        Some(tls) => Some(TlsTarget {
            config: tls.config.clone(),
            name: ServerName::try_from(url.host.clone()).map_err(|_| {
                Failure::Protocol(format!("{:?} is not a valid TLS server name", url.host))
            })?,
        }),
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .proxy(None)
        .max_idle_connections(0)
        .max_response_header_size(MAX_HEAD)
        .timeout_global(Some(policy.timeout))
        .build();
    let connector = ().chain(TcpConnector::default()).chain(Connect { tls, deadline });
    let resolver = Resolve {
        host: url.host.clone(),
        port: url.port,
    };
    let agent = ureq::Agent::with_parts(config, connector, resolver);

    let host = url.host_header();
    let uri = format!(
        "{}://{host}{}",
        url.scheme.as_str(),
        encode_target(&url.target)
    );
    let mut all: Vec<(&str, &str)> = vec![
        ("Host", &host),
        ("User-Agent", USER_AGENT),
        ("Connection", "close"),
    ];
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("accept"))
    {
        all.push(("Accept", "*/*"));
    }
    all.extend_from_slice(headers);
    if method == Method::Put {
        all.push(("Content-Length", "0"));
    }
    let mut response = match method {
        Method::Get => with_headers(agent.get(&uri), &all).call(),
        Method::Put => with_headers(agent.put(&uri), &all).send_empty(),
    }?;

    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).trim().to_string(),
            )
        })
        .collect();
    let mut head = Response {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
        headers,
        body: Vec::new(),
    };
    if head.status == 101 {
        return Err(Failure::Protocol("the server switched protocols".into()));
    }
    if let Some(coding) = head.header("content-encoding")
        && !coding.eq_ignore_ascii_case("identity")
    {
        return Err(Failure::Protocol(format!(
            "content-encoding {coding:?} is not supported"
        )));
    }
    if let Some(te) = head.header("transfer-encoding")
        && !te.eq_ignore_ascii_case("chunked")
    {
        return Err(Failure::Protocol(format!(
            "transfer-encoding {te:?} is not supported"
        )));
    }
    if let Some(length) = response.body().content_length()
        && length > policy.max_body as u64
    {
        return Err(Failure::Protocol(format!(
            "response body of {length} bytes is larger than {} bytes",
            policy.max_body
        )));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(policy.max_body as u64);
    match sink {
        Some(sink) if (200..300).contains(&head.status) => {
            use std::io::Read as _;
            sink.restart().map_err(Failure::Sink)?;
            let mut reader = body.reader();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Failure::of_body(e)),
                };
                sink.write(&buf[..n]).map_err(Failure::Sink)?;
            }
        }
        _ => head.body = body.read_to_vec()?,
    }
    Ok(head)
}

/// The request with `headers` as they are written: raw headers keep their case, as some servers (and the
/// tests) read them case-sensitively.
fn with_headers<B>(
    mut request: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    for (name, value) in headers {
        request = request.header_raw(name, value.as_bytes());
    }
    request
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
    percent_encode(target, |b| {
        b > 0x20 && b < 0x7f && !b"\"<>\\^`{|}".contains(&b)
    })
}

/// `text` with every byte `keep` refuses written `%XX`.
pub fn percent_encode(text: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
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
            b"HTTP/1.1 299 Custom\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]);
        assert_eq!(get(&url).unwrap().body, b"hello");
        assert_eq!(get(&url).unwrap().body, b"hello world");
        assert_eq!(get(&url).unwrap().body, b"to the end");
        assert_eq!(get(&url).unwrap().body, b"ok");
        assert_eq!(get(&url).unwrap().status, 204);
        let r = get(&url).unwrap();
        // The reason is the code's standard one, whatever the server sent (ureq keeps none), or none at all.
        assert_eq!(
            (r.status, r.status_text()),
            (404, "404 Not Found".to_string())
        );
        let r = get(&url).unwrap();
        assert_eq!((r.status, r.status_text()), (299, "299".to_string()));
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
    fn returns_redirects_without_following_them() {
        let (url, seen) = canned(vec![
            b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno".to_vec(),
        ]);
        let r = get(&url).unwrap();
        assert_eq!((r.status, r.header("location")), (302, Some("/elsewhere")));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_body_cut_by_a_reset_is_not_accepted() {
        // The body is framed by the end of the connection, which ends with a reset (RST) instead of a close.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Mutex::new(0));
        let count = Arc::clone(&served);
        thread::spawn(move || {
            while let Ok((stream, _)) = listener.accept() {
                let mut reader = io::BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\npartial");
                thread::sleep(Duration::from_millis(50));
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket, and a `linger` of the size given.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&stream),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                *count.lock().unwrap() += 1;
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let e = get(&url).unwrap_err();
        assert_eq!(e.to_string(), "connection reset after 3 attempts");
        assert_eq!(*served.lock().unwrap(), 3);
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
