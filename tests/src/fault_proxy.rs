//! A fault-injecting HTTP proxy in front of a real registry, for the tests of cairn's registry retries.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every request to the registry, one upstream
//! connection per request (hyper on both sides). A test scripts faults with [`FaultProxy::inject`]: each rule
//! matches requests whose path contains a pattern (a digest, `/manifests/`) and applies its [`Fault`] to the next
//! `times` of them; rules are tried in the order given, and a request no rule takes is forwarded untouched. Every
//! request is recorded ([`FaultProxy::requests`]): method, path, `Range` header, when, and the fault applied, so a
//! test can assert retries, their spacing and the ranges asked for.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, RANGE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::registry::Registry;

/// How long a cut body waits after the last bytes it lets through before it ends or fails, so they reach the client
/// first (hyper drops what it has not written yet when a body breaks, and an RST discards the send queue).
const CUT_DELAY: Duration = Duration::from_millis(200);

/// What the proxy does to a request a rule takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers this status itself (with an OCI error body), without asking the registry.
    Status(u16),
    /// Answers 429 with `Retry-After: SECONDS`.
    TooManyRequests { retry_after: u64 },
    /// Forwards, then resets the connection (RST) after this many body bytes.
    ResetAfter(u64),
    /// Forwards, then closes the connection (FIN) after this many body bytes, short of its `Content-Length`.
    CloseAfter(u64),
    /// Waits this long before forwarding (no response headers meanwhile).
    StallHeaders(Duration),
    /// Forwards, then sends nothing more after this many body bytes (for a minute, then closes).
    StallAfter(u64),
    /// Forwards without the `Range` header: the registry answers 200 with the whole blob.
    IgnoreRange,
    /// Forwards the body at most this many bytes a second (a slow link, for watching a transfer's progress).
    Throttle { bytes_per_sec: u64 },
}

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Range` header, as sent by the client.
    pub range: Option<String>,
    pub at: Instant,
    pub fault: Option<Fault>,
}

struct Rule {
    pattern: String,
    fault: Fault,
    /// `None`: every matching request.
    left: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<SeenRequest>,
}

impl State {
    /// Records the request and takes the fault of the first rule that matches and has uses left.
    fn admit(&mut self, method: &str, path: &str, range: Option<String>) -> Option<Fault> {
        let fault = self
            .rules
            .iter_mut()
            .find(|r| path.contains(&r.pattern) && r.left != Some(0))
            .map(|r| {
                if let Some(n) = r.left.as_mut() {
                    *n -= 1;
                }
                r.fault.clone()
            });
        self.seen.push(SeenRequest {
            method: method.to_string(),
            path: path.to_string(),
            range,
            at: Instant::now(),
            fault: fault.clone(),
        });
        fault
    }
}

/// A running proxy; stops on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy in front of `registry`.
    pub fn start(registry: &Registry) -> FaultProxy {
        let upstream: SocketAddr = registry
            .addr()
            .parse()
            .expect("the registry's address is host:port");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-e2e-fault-proxy")
            .enable_all()
            .build()
            .expect("start the proxy's runtime");
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy to a free port");
        let addr = listener.local_addr().expect("the proxy's address");
        listener
            .set_nonblocking(true)
            .expect("make the proxy's listener non-blocking");
        let state = Arc::new(Mutex::new(State::default()));
        let serving = Arc::clone(&state);
        runtime.spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the proxy listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&serving);
                let fd = stream.as_raw_fd();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, Arc::clone(&state), upstream, fd)
                    });
                    // A connection the client drops, or one a fault breaks, just ends.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// `127.0.0.1:PORT`: the host part of references through the proxy.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `reference` (of the proxied registry) with the proxy as its host.
    pub fn reference(&self, registry: &Registry, reference: &str) -> String {
        reference.replacen(&registry.addr(), &self.addr(), 1)
    }

    /// Applies `fault` to the next `times` requests whose path contains `pattern`.
    pub fn inject(&self, pattern: &str, fault: Fault, times: usize) {
        self.add(pattern, fault, Some(times));
    }

    /// Applies `fault` to every request whose path contains `pattern`, from now on.
    pub fn inject_always(&self, pattern: &str, fault: Fault) {
        self.add(pattern, fault, None);
    }

    fn add(&self, pattern: &str, fault: Fault, left: Option<usize>) {
        self.lock().rules.push(Rule {
            pattern: pattern.to_string(),
            fault,
            left,
        });
    }

    /// Drops every rule (requests already seen stay recorded).
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Every request so far, in the order received.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    /// The requests whose path contains `pattern`.
    pub fn requests_to(&self, pattern: &str) -> Vec<SeenRequest> {
        self.lock()
            .seen
            .iter()
            .filter(|r| r.path.contains(pattern))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type ProxyBody = BoxBody<Bytes, io::Error>;

async fn handle(
    mut req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    upstream: SocketAddr,
    fd: RawFd,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let fault =
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(req.method().as_str(), &path, range);
    match fault {
        Some(Fault::Status(code)) => return Ok(error_response(code, None)),
        Some(Fault::TooManyRequests { retry_after }) => {
            return Ok(error_response(429, Some(retry_after)));
        }
        Some(Fault::StallHeaders(d)) => tokio::time::sleep(d).await,
        Some(Fault::IgnoreRange) => {
            req.headers_mut().remove(RANGE);
        }
        _ => {}
    }
    let resp = match forward(req, upstream).await {
        Ok(r) => r,
        Err(e) => {
            let body = Full::new(Bytes::from(format!("fault proxy: upstream: {e}")));
            let mut resp = Response::new(body.map_err(|never| match never {}).boxed());
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            return Ok(resp);
        }
    };
    let (parts, body) = resp.into_parts();
    let body = match fault {
        Some(Fault::ResetAfter(n)) => Cut::new(body, n, End::Reset, fd).boxed(),
        Some(Fault::CloseAfter(n)) => Cut::new(body, n, End::Close, fd).boxed(),
        Some(Fault::StallAfter(n)) => Cut::new(body, n, End::Stall, fd).boxed(),
        Some(Fault::Throttle { bytes_per_sec }) => Throttled {
            inner: body,
            bytes_per_sec: bytes_per_sec.max(1),
            held: None,
        }
        .boxed(),
        _ => body.map_err(io::Error::other).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}

/// Sends `req` to the registry on a connection of its own.
async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// A registry-style error answer made by the proxy.
fn error_response(code: u16, retry_after: Option<u64>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let oci_code = match code {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    let body = serde_json::json!({
        "errors": [{ "code": oci_code, "message": "injected by the fault proxy" }]
    })
    .to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// What a cut body does once its bytes are through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Ends early: hyper closes the connection, as the `Content-Length` is not met.
    Close,
    /// Fails with `SO_LINGER` 0 set on the connection, so its close is an RST.
    Reset,
    /// Sends nothing for [`STALL`], then ends early.
    Stall,
}

/// How long a stalled body sends nothing.
const STALL: Duration = Duration::from_secs(60);

/// A response body cut after `left` bytes and [`CUT_DELAY`], ending as its [`End`] says.
struct Cut {
    inner: Incoming,
    left: u64,
    end: End,
    fd: RawFd,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Cut {
    fn new(inner: Incoming, left: u64, end: End, fd: RawFd) -> Cut {
        Cut {
            inner,
            left,
            end,
            fd,
            delay: None,
        }
    }
}

impl Body for Cut {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.left == 0 {
            let wait = if this.end == End::Stall {
                STALL
            } else {
                CUT_DELAY
            };
            let delay = this
                .delay
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            ready!(delay.as_mut().poll(cx));
            if this.end != End::Reset {
                return Poll::Ready(None);
            }
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the fd is the connection's socket, open while hyper polls this body; the struct outlives
            // the call.
            unsafe {
                libc::setsockopt(
                    this.fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "reset by the fault proxy",
            ))));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() as u64 > this.left {
                        data = data.slice(..this.left as usize);
                    }
                    this.left -= data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(io::Error::other(e)))),
            None => Poll::Ready(None),
        }
    }
}

/// A response body let through at a bounded rate: each frame is held for as long as its bytes take at that rate.
struct Throttled {
    inner: Incoming,
    bytes_per_sec: u64,
    held: Option<(Frame<Bytes>, Pin<Box<tokio::time::Sleep>>)>,
}

impl Body for Throttled {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.held.is_none() {
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                None => return Poll::Ready(None),
            };
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            let wait = Duration::from_micros(len.saturating_mul(1_000_000) / this.bytes_per_sec);
            this.held = Some((frame, Box::pin(tokio::time::sleep(wait))));
        }
        if let Some((_, sleep)) = this.held.as_mut() {
            ready!(sleep.as_mut().poll(cx));
        }
        Poll::Ready(this.held.take().map(|(frame, _)| Ok(frame)))
    }
}
