//! A minimal, synchronous client for containerd's gRPC API on its unix socket.
//!
//! The agent only needs two unary calls — `Version/Version` (is containerd up?) and `Images/List` (are the
//! preloaded images there, with their pinned digests?). A gRPC unary call is one HTTP/2 stream: a HEADERS frame and
//! a DATA frame out, then headers, data and trailers back. So instead of tonic/prost, or the `h2` crate on a tokio
//! runtime (which added about 0.9 MB to the static agent), this speaks just that much HTTP/2 itself ([`http2`],
//! with an HPACK decoder for containerd's headers) over a blocking `std` unix socket, with a hand-written protobuf
//! codec ([`proto`]) for the handful of messages involved. The rest of the agent stays synchronous.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The image service's List method.
const IMAGES_LIST: &str = "containerd.services.images.v1.Images/List";
/// The version service's Version method.
const VERSION: &str = "containerd.services.version.v1.Version/Version";
/// The largest response message accepted; gRPC's own default receive limit. A node's image list is a few
/// kilobytes.
const MAX_RESPONSE: usize = 4 << 20;
/// How long `wait_for` sleeps between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest single attempt of `wait_for`, so that a connection stuck while containerd starts is retried.
const MAX_ATTEMPT: Duration = Duration::from_secs(5);

/// A content descriptor: what an image name points at (usually a manifest or an index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `algorithm:hex`, e.g. `sha256:…`.
    pub digest: String,
    pub size: i64,
}

/// An image record of containerd's metadata store (labels and timestamps are not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// The full reference, e.g. `ghcr.io/canonical/k8s-snap/pause:3.10`.
    pub name: String,
    pub target: Descriptor,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd socket {} does not exist", path.display())]
    SocketMissing { path: PathBuf },
    #[error("containerd socket {} refused the connection (containerd is not running)", path.display())]
    Refused { path: PathBuf },
    #[error("cannot connect to containerd socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("containerd at {} did not answer {method} within {timeout:?}", path.display())]
    Timeout {
        path: PathBuf,
        method: &'static str,
        timeout: Duration,
    },
    #[error("containerd at {} was not ready within {timeout:?}: {last}", path.display())]
    NotReady {
        path: PathBuf,
        timeout: Duration,
        last: Box<ContainerdError>,
    },
    #[error("I/O error talking to containerd at {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("HTTP/2 error talking to containerd at {}: {reason}", path.display())]
    Http2 { path: PathBuf, reason: String },
    #[error("containerd {method} failed: gRPC status {code} ({}): {message}", code_name(*code))]
    Status {
        method: &'static str,
        code: u32,
        message: String,
    },
    #[error("malformed response to containerd {method}: {reason}")]
    Malformed {
        method: &'static str,
        reason: String,
    },
}

impl ContainerdError {
    /// Whether `wait_for` should try again: containerd may still be starting (no socket yet, a socket left over
    /// from a previous run, a server not serving yet).
    fn is_transient(&self) -> bool {
        match self {
            Self::SocketMissing { .. }
            | Self::Refused { .. }
            | Self::Timeout { .. }
            | Self::Io { .. }
            | Self::Http2 { .. } => true,
            Self::Status { code, .. } => *code == GRPC_UNAVAILABLE,
            _ => false,
        }
    }
}

const GRPC_UNAVAILABLE: u32 = 14;

/// gRPC's canonical status code names (google.rpc.Code).
fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "unknown code",
    }
}

/// Every image of `namespace` (e.g. `k8s.io`).
pub fn list_images(
    socket: &Path,
    namespace: &str,
    timeout: Duration,
) -> Result<Vec<Image>, ContainerdError> {
    list_images_matching(socket, namespace, &[], timeout)
}

/// The images of `namespace` that match any of `filters`, in containerd's filter syntax (e.g.
/// `name==docker.io/library/busybox:1.36`); no filters means every image.
pub fn list_images_matching(
    socket: &Path,
    namespace: &str,
    filters: &[&str],
    timeout: Duration,
) -> Result<Vec<Image>, ContainerdError> {
    let request = proto::encode_list_images_request(filters);
    let response = unary(socket, Some(namespace), IMAGES_LIST, &request, timeout)?;
    proto::decode_list_images_response(&response).map_err(|e| malformed(IMAGES_LIST, e))
}

/// Waits until containerd answers on `socket`, retrying while it is starting, and returns its version.
pub fn wait_for(socket: &Path, timeout: Duration) -> Result<String, ContainerdError> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match unary(socket, None, VERSION, &[], remaining.min(MAX_ATTEMPT)) {
            Ok(response) => {
                return proto::decode_version_response(&response)
                    .map_err(|e| malformed(VERSION, e));
            }
            Err(error) => error,
        };
        if !error.is_transient() {
            return Err(error);
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(ContainerdError::NotReady {
                path: socket.to_owned(),
                timeout,
                last: Box::new(error),
            });
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The image named exactly `name` (containerd keeps full references: `docker.io/library/x:1`, not `x:1`).
pub fn find_image<'a>(images: &'a [Image], name: &str) -> Option<&'a Image> {
    images.iter().find(|image| image.name == name)
}

fn malformed(method: &'static str, error: proto::DecodeError) -> ContainerdError {
    ContainerdError::Malformed {
        method,
        reason: error.to_string(),
    }
}

/// One gRPC unary call on a fresh connection, within `timeout`: returns the response message's bytes.
fn unary(
    socket: &Path,
    namespace: Option<&str>,
    method: &'static str,
    message: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ContainerdError> {
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ContainerdError::SocketMissing {
            path: socket.to_owned(),
        },
        io::ErrorKind::ConnectionRefused => ContainerdError::Refused {
            path: socket.to_owned(),
        },
        _ => ContainerdError::Connect {
            path: socket.to_owned(),
            source,
        },
    })?;

    let path = format!("/{method}");
    let grpc_timeout = format!("{}m", timeout.as_millis().clamp(1, 99_999_999));
    let mut headers = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path.as_str()),
        // The authority is unused on a unix socket; gRPC clients send "localhost".
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        (
            "user-agent",
            concat!("cairn-agent/", env!("CARGO_PKG_VERSION")),
        ),
        // Lets containerd give up too when the agent stops waiting.
        ("grpc-timeout", grpc_timeout.as_str()),
    ];
    if let Some(namespace) = namespace {
        headers.push(("containerd-namespace", namespace));
    }

    let response = http2::exchange(
        stream,
        deadline,
        &headers,
        &proto::grpc_frame(message),
        MAX_RESPONSE + 5,
    )
    .map_err(|error| match error {
        http2::Error::Timeout => ContainerdError::Timeout {
            path: socket.to_owned(),
            method,
            timeout,
        },
        http2::Error::Io(source) => ContainerdError::Io {
            path: socket.to_owned(),
            source,
        },
        http2::Error::TooLarge => ContainerdError::Malformed {
            method,
            reason: format!("response larger than {MAX_RESPONSE} bytes"),
        },
        other => ContainerdError::Http2 {
            path: socket.to_owned(),
            reason: other.to_string(),
        },
    })?;

    let malformed = |reason: String| ContainerdError::Malformed { method, reason };
    let status = header(&response.headers, ":status").unwrap_or_default();
    if status != "200" {
        return Err(malformed(format!("HTTP status {status:?}")));
    }
    // A "trailers-only" response (an immediate error) carries grpc-status in the headers.
    let trailers = response.trailers.as_deref().unwrap_or(&response.headers);
    check_status(method, trailers)?;
    if response.trailers.is_none() {
        return Err(malformed("no response message".to_owned()));
    }
    proto::grpc_unframe(&response.body)
        .map(<[u8]>::to_vec)
        .map_err(|e| malformed(e.to_string()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Turns a non-zero `grpc-status` into [`ContainerdError::Status`] with its (percent-decoded) `grpc-message`.
fn check_status(method: &'static str, headers: &[(String, String)]) -> Result<(), ContainerdError> {
    let Some(status) = header(headers, "grpc-status") else {
        return Err(ContainerdError::Malformed {
            method,
            reason: "no grpc-status in the trailers".to_owned(),
        });
    };
    let code = status
        .parse::<u32>()
        .map_err(|_| ContainerdError::Malformed {
            method,
            reason: format!("grpc-status {status:?} is not a number"),
        })?;
    if code == 0 {
        return Ok(());
    }
    let message = header(headers, "grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Err(ContainerdError::Status {
        method,
        code,
        message,
    })
}

/// gRPC percent-encodes grpc-message (RFC 3986 style, UTF-8); anything undecodable is kept as it is.
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = match (
            raw[i],
            raw.get(i + 1).and_then(|&b| hex(b)),
            raw.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => Some((hi * 16 + lo) as u8),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Just enough HTTP/2 (RFC 9113) for one request/response exchange over cleartext with prior knowledge: the
/// client preface, SETTINGS (acknowledged), PING (answered), one stream's HEADERS/CONTINUATION/DATA, trailers,
/// RST_STREAM and GOAWAY. Flow control is settled up front: the client grants a window as large as the largest
/// response it accepts, so it never has to send WINDOW_UPDATE while reading, and its own request fits in the
/// peer's initial window.
mod http2 {
    use std::io::{self, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const PUSH_PROMISE: u8 = 5;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const WINDOW_UPDATE: u8 = 8;
    const CONTINUATION: u8 = 9;
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    const SETTINGS_ENABLE_PUSH: u16 = 0x2;
    const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// The frame size every peer accepts, and the largest this client accepts (it advertises no other).
    const MAX_FRAME: usize = 16_384;
    /// Every stream's and the connection's send window before any WINDOW_UPDATE.
    const DEFAULT_WINDOW: usize = 65_535;
    /// Bounds the header blocks (headers and trailers) a peer can make the client buffer.
    const MAX_HEADER_BLOCK: usize = 64 << 10;
    const STREAM: u32 = 1;

    #[derive(Debug, thiserror::Error)]
    pub enum Error {
        #[error("timed out")]
        Timeout,
        #[error("{0}")]
        Io(io::Error),
        #[error("response too large")]
        TooLarge,
        #[error("request of {0} bytes is larger than one flow-control window")]
        RequestTooLarge(usize),
        #[error("connection closed before the response ended")]
        Closed,
        #[error("stream reset by the server (error code {0})")]
        Reset(u32),
        #[error("connection closed by the server: GOAWAY error code {code} {debug:?}")]
        GoAway { code: u32, debug: String },
        #[error("protocol error: {0}")]
        Protocol(&'static str),
        #[error("header compression error: {0}")]
        Hpack(#[from] super::hpack::Error),
    }

    impl From<io::Error> for Error {
        fn from(error: io::Error) -> Self {
            match error.kind() {
                // What a read or write timeout of a std socket reports.
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
                io::ErrorKind::UnexpectedEof => Error::Closed,
                _ => Error::Io(error),
            }
        }
    }

    #[derive(Debug, Default)]
    pub struct Response {
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        /// None for a "trailers-only" response, whose headers end the stream.
        pub trailers: Option<Vec<(String, String)>>,
    }

    struct Conn {
        stream: UnixStream,
        deadline: Instant,
    }

    impl Conn {
        /// Arms the socket's timeouts with what is left until the deadline.
        fn arm(&self) -> Result<(), Error> {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            self.stream.set_read_timeout(Some(remaining))?;
            self.stream.set_write_timeout(Some(remaining))?;
            Ok(())
        }

        fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
            self.arm()?;
            self.stream.write_all(bytes)?;
            Ok(())
        }

        fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
            self.arm()?;
            self.stream.read_exact(buf)?;
            Ok(())
        }

        /// The next frame: type, flags, stream id, payload.
        fn read_frame(&mut self) -> Result<(u8, u8, u32, Vec<u8>), Error> {
            let mut head = [0u8; 9];
            self.read_exact(&mut head)?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            if len > MAX_FRAME {
                return Err(Error::Protocol("frame larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0; len];
            self.read_exact(&mut payload)?;
            Ok((head[3], head[4], stream, payload))
        }
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + payload.len());
        // Callers keep payloads within MAX_FRAME, so the length fits in 24 bits.
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The connection's opening: preface, SETTINGS (no push; a stream window of `window`), and a connection
    /// WINDOW_UPDATE raising that window to `window` too when it is above the default.
    pub fn opening(window: u32) -> Vec<u8> {
        let mut settings = Vec::new();
        settings.extend_from_slice(&SETTINGS_ENABLE_PUSH.to_be_bytes());
        settings.extend_from_slice(&0u32.to_be_bytes());
        settings.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        settings.extend_from_slice(&window.to_be_bytes());
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &settings));
        // The connection's window starts at the default whatever the settings say; only raising it needs a frame.
        let increment = window.saturating_sub(DEFAULT_WINDOW as u32);
        if increment > 0 {
            out.extend(frame(WINDOW_UPDATE, 0, 0, &increment.to_be_bytes()));
        }
        out
    }

    /// A header block for `headers`, each a literal without indexing with a literal name: the simplest encoding
    /// every decoder takes, and it leaves the peer's dynamic table alone.
    pub fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.push(0);
            for string in [name, value] {
                super::hpack::encode_int(&mut out, 0, 7, string.len());
                out.extend_from_slice(string.as_bytes());
            }
        }
        out
    }

    /// Sends one request (headers, then `body` ending the stream) on a new connection and reads the response, whose
    /// body may not exceed `max_body` bytes.
    pub fn exchange(
        stream: UnixStream,
        deadline: Instant,
        headers: &[(&str, &str)],
        body: &[u8],
        max_body: usize,
    ) -> Result<Response, Error> {
        // Headers and body each go in frames of at most MAX_FRAME; the body must fit in the peer's first window.
        let block = encode_headers(headers);
        if block.len() > MAX_FRAME {
            return Err(Error::Protocol("request headers larger than one frame"));
        }
        if body.len() > DEFAULT_WINDOW {
            return Err(Error::RequestTooLarge(body.len()));
        }
        let window =
            u32::try_from(max_body + MAX_FRAME).map_err(|_| Error::Protocol("window too large"))?;
        let mut out = opening(window);
        out.extend(frame(HEADERS, END_HEADERS, STREAM, &block));
        let mut chunks = body.chunks(MAX_FRAME).peekable();
        if chunks.peek().is_none() {
            out.extend(frame(DATA, END_STREAM, STREAM, &[]));
        }
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_STREAM
            } else {
                0
            };
            out.extend(frame(DATA, flags, STREAM, chunk));
        }
        let mut conn = Conn { stream, deadline };
        conn.write(&out)?;
        read_response(&mut conn, max_body)
    }

    fn read_response(conn: &mut Conn, max_body: usize) -> Result<Response, Error> {
        let mut decoder = super::hpack::Decoder::new(4096);
        let mut response = Response::default();
        let mut seen_headers = false;
        // A header block being assembled from HEADERS + CONTINUATION frames, and whether it ends the stream.
        let mut block: Option<(Vec<u8>, bool)> = None;
        loop {
            let (kind, flags, stream, payload) = conn.read_frame()?;
            if block.is_some() && kind != CONTINUATION {
                return Err(Error::Protocol("header block interrupted"));
            }
            match kind {
                DATA if stream == STREAM => {
                    if !seen_headers {
                        return Err(Error::Protocol("DATA before HEADERS"));
                    }
                    let data = unpad(flags, &payload)?;
                    if response.body.len() + data.len() > max_body {
                        return Err(Error::TooLarge);
                    }
                    response.body.extend_from_slice(data);
                    if flags & END_STREAM != 0 {
                        return Err(Error::Protocol("stream ended without trailers"));
                    }
                }
                HEADERS if stream == STREAM => {
                    let mut fragment = unpad(flags, &payload)?;
                    if flags & PRIORITY != 0 {
                        fragment = fragment
                            .get(5..)
                            .ok_or(Error::Protocol("short HEADERS frame"))?;
                    }
                    block = Some((fragment.to_vec(), flags & END_STREAM != 0));
                }
                CONTINUATION if stream == STREAM => {
                    let (pending, _) = block
                        .as_mut()
                        .ok_or(Error::Protocol("CONTINUATION without HEADERS"))?;
                    if pending.len() + payload.len() > MAX_HEADER_BLOCK {
                        return Err(Error::TooLarge);
                    }
                    pending.extend_from_slice(&payload);
                }
                DATA | HEADERS | CONTINUATION => {
                    return Err(Error::Protocol("frame on a stream never opened"));
                }
                RST_STREAM if stream == STREAM => return Err(Error::Reset(error_code(&payload)?)),
                SETTINGS if flags & ACK == 0 => {
                    if stream != 0 || payload.len() % 6 != 0 {
                        return Err(Error::Protocol("malformed SETTINGS"));
                    }
                    conn.write(&frame(SETTINGS, ACK, 0, &[]))?;
                }
                PING if flags & ACK == 0 => {
                    if payload.len() != 8 {
                        return Err(Error::Protocol("malformed PING"));
                    }
                    conn.write(&frame(PING, ACK, 0, &payload))?;
                }
                GOAWAY => {
                    let last_stream = error_code(&payload)? & 0x7fff_ffff;
                    let code = error_code(payload.get(4..).unwrap_or_default())?;
                    // A graceful shutdown that still serves this stream: read on.
                    if !(code == 0 && last_stream >= STREAM) {
                        let debug = String::from_utf8_lossy(payload.get(8..).unwrap_or_default())
                            .into_owned();
                        return Err(Error::GoAway { code, debug });
                    }
                }
                PUSH_PROMISE => {
                    return Err(Error::Protocol("PUSH_PROMISE though push is disabled"));
                }
                // WINDOW_UPDATE, PRIORITY, acknowledgements and unknown frame types need nothing here.
                _ => {}
            }
            if flags & END_HEADERS != 0 && matches!(kind, HEADERS | CONTINUATION) {
                let Some((pending, ends_stream)) = block.take() else {
                    continue;
                };
                // Every block is decoded, in order, so the dynamic table stays in step with the peer's.
                let fields = decoder.decode(&pending)?;
                if !seen_headers {
                    seen_headers = true;
                    response.headers = fields;
                    if ends_stream {
                        return Ok(response);
                    }
                } else if ends_stream {
                    response.trailers = Some(fields);
                    return Ok(response);
                } else {
                    return Err(Error::Protocol(
                        "a second header block that does not end the stream",
                    ));
                }
            }
        }
    }

    /// A frame's payload without its padding, when the PADDED flag is set.
    fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], Error> {
        if flags & PADDED == 0 {
            return Ok(payload);
        }
        let (&pad, rest) = payload
            .split_first()
            .ok_or(Error::Protocol("short padded frame"))?;
        rest.len()
            .checked_sub(usize::from(pad))
            .map(|len| &rest[..len])
            .ok_or(Error::Protocol("padding too long"))
    }

    fn error_code(payload: &[u8]) -> Result<u32, Error> {
        let bytes: [u8; 4] = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Protocol("short frame"))?;
        Ok(u32::from_be_bytes(bytes))
    }

    /// The client against a scripted peer: the frame sequences containerd does not happen to produce (padding,
    /// priority, CONTINUATION, PING, resets) as well as the common ones.
    #[cfg(test)]
    mod tests {
        use super::*;
        use std::time::Duration;

        /// Runs `exchange` against a peer that writes `script` and then reads all the client sent until it hangs
        /// up; returns the outcome and the client's bytes.
        fn against(script: Vec<u8>, max_body: usize) -> (Result<Response, Error>, Vec<u8>) {
            let (client, mut peer) = UnixStream::pair().unwrap();
            let peer = std::thread::spawn(move || {
                peer.write_all(&script).unwrap();
                peer.shutdown(std::net::Shutdown::Write).unwrap();
                let mut sent = Vec::new();
                peer.read_to_end(&mut sent).unwrap();
                sent
            });
            let deadline = Instant::now() + Duration::from_millis(500);
            let result = exchange(
                client,
                deadline,
                &[(":path", "/x")],
                b"\0\0\0\0\0",
                max_body,
            );
            (result, peer.join().unwrap())
        }

        fn block(fields: &[(&str, &str)]) -> Vec<u8> {
            encode_headers(fields)
        }

        fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        }

        #[test]
        fn a_response_in_every_framing() {
            let headers = block(&[(":status", "200"), ("content-type", "application/grpc")]);
            let (part1, part2) = headers.split_at(10);
            let mut script = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
            script.extend(frame(PING, 0, 0, b"cairnpng"));
            // HEADERS with padding and priority, then the rest of the block in a CONTINUATION.
            let mut first = vec![3, 0, 0, 0, 0, 16];
            first.extend_from_slice(part1);
            first.extend([0; 3]);
            script.extend(frame(HEADERS, PADDED | PRIORITY, STREAM, &first));
            script.extend(frame(CONTINUATION, END_HEADERS, STREAM, part2));
            script.extend(frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()));
            script.extend(frame(DATA, PADDED, STREAM, b"\x02\0\0\0\0\x03ab\0\0"));
            script.extend(frame(DATA, 0, STREAM, b"c"));
            script.extend(frame(0xfa, 0, 0, b"an unknown frame type"));
            script.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                STREAM,
                &block(&[("grpc-status", "0")]),
            ));

            let (result, sent) = against(script, 100);
            let response = result.unwrap();
            assert_eq!(
                response.headers,
                fields(&[(":status", "200"), ("content-type", "application/grpc")])
            );
            assert_eq!(response.body, b"\0\0\0\0\x03abc");
            assert_eq!(response.trailers, Some(fields(&[("grpc-status", "0")])));

            // The request: preface, settings, window, headers, then the body ending the stream.
            let mut request = opening(100 + MAX_FRAME as u32);
            request.extend(frame(
                HEADERS,
                END_HEADERS,
                STREAM,
                &block(&[(":path", "/x")]),
            ));
            request.extend(frame(DATA, END_STREAM, STREAM, b"\0\0\0\0\0"));
            assert_eq!(sent[..request.len()], request);
            // Then the SETTINGS and PING acknowledgements.
            let mut acks = frame(SETTINGS, ACK, 0, &[]);
            acks.extend(frame(PING, ACK, 0, b"cairnpng"));
            assert_eq!(sent[request.len()..], acks);
        }

        #[test]
        fn trailers_only_and_graceful_goaway() {
            let mut script = frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]);
            let fields_only = [
                (":status", "200"),
                ("grpc-status", "5"),
                ("grpc-message", "not found"),
            ];
            script.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                STREAM,
                &block(&fields_only),
            ));
            let response = against(script, 100).0.unwrap();
            assert_eq!(response.headers, fields(&fields_only));
            assert_eq!(response.trailers, None);
            assert!(response.body.is_empty());
        }

        #[test]
        fn failures() {
            let ok_headers = frame(HEADERS, END_HEADERS, STREAM, &block(&[(":status", "200")]));
            let cases: Vec<(Vec<u8>, &str)> = vec![
                (
                    frame(RST_STREAM, 0, STREAM, &8u32.to_be_bytes()),
                    "stream reset by the server (error code 8)",
                ),
                (
                    frame(GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\x02bye"),
                    "connection closed by the server: GOAWAY error code 2 \"bye\"",
                ),
                (
                    frame(SETTINGS, 0, 0, &[0; 4]),
                    "protocol error: malformed SETTINGS",
                ),
                (
                    frame(DATA, 0, STREAM, b"x"),
                    "protocol error: DATA before HEADERS",
                ),
                (
                    frame(HEADERS, END_HEADERS, 3, &[]),
                    "protocol error: frame on a stream never opened",
                ),
                (
                    frame(PUSH_PROMISE, END_HEADERS, STREAM, &[0; 4]),
                    "protocol error: PUSH_PROMISE though push is disabled",
                ),
                (
                    [ok_headers.clone(), frame(DATA, 0, STREAM, &[0; 101])].concat(),
                    "response too large",
                ),
                (
                    [ok_headers.clone(), frame(DATA, END_STREAM, STREAM, b"x")].concat(),
                    "protocol error: stream ended without trailers",
                ),
                (
                    [ok_headers.clone(), frame(DATA, PADDED, STREAM, &[9, 0])].concat(),
                    "protocol error: padding too long",
                ),
                (
                    frame(HEADERS, END_HEADERS, STREAM, &[0x80]),
                    "header compression error: index 0 out of range",
                ),
                (
                    [
                        frame(HEADERS, 0, STREAM, &[0x88]),
                        frame(PING, 0, 0, &[0; 8]),
                    ]
                    .concat(),
                    "protocol error: header block interrupted",
                ),
                // A frame header announcing more than the client's maximum frame size.
                (
                    vec![0x00, 0x40, 0x01, DATA, 0, 0, 0, 0, 1],
                    "protocol error: frame larger than SETTINGS_MAX_FRAME_SIZE",
                ),
                (ok_headers, "connection closed before the response ended"),
            ];
            for (script, expected) in cases {
                let error = against(script, 100).0.unwrap_err();
                assert_eq!(error.to_string(), expected);
            }
        }

        #[test]
        fn a_silent_peer_times_out() {
            let (client, _peer) = UnixStream::pair().unwrap();
            let started = Instant::now();
            let deadline = started + Duration::from_millis(200);
            let error = exchange(client, deadline, &[], b"", 10).unwrap_err();
            assert!(matches!(error, Error::Timeout), "{error}");
            assert!(started.elapsed() >= Duration::from_millis(190));
        }
    }
}

/// HPACK (RFC 7541) decoding of the server's header blocks: static and dynamic tables, Huffman strings.
mod hpack {
    use std::collections::VecDeque;

    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub enum Error {
        #[error("truncated header block")]
        Truncated,
        #[error("integer overflow")]
        Overflow,
        #[error("index {0} out of range")]
        Index(usize),
        #[error("table size update to {0} above the limit")]
        TableSize(usize),
        #[error("invalid Huffman string")]
        Huffman,
        #[error("header is not valid UTF-8")]
        Utf8,
    }

    /// RFC 7541 Appendix A.
    const STATIC: [(&str, &str); 61] = [
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    ];

    /// The bit length of each symbol's code (RFC 7541 Appendix B), 256 being EOS. The code is canonical — codes
    /// are consecutive within a length, in symbol order, lengths ascending — so the lengths alone define it.
    #[rustfmt::skip]
    const HUFFMAN_LENGTHS: [u8; 257] = [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28,
        28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15,
        6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22,
        20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23,
        23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22,
        22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26,
        27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
        26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
    ];
    const EOS: u16 = 256;

    /// Decodes a Huffman string by walking the canonical code one bit at a time: slow per bit, but header values
    /// are short and there is no table to ship.
    pub fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, Error> {
        // Symbols by (length, symbol) and the count per length: the canonical code's whole description.
        let mut counts = [0u16; 31];
        for &len in &HUFFMAN_LENGTHS {
            counts[usize::from(len)] += 1;
        }
        let mut sorted: Vec<u16> = (0..=EOS).collect();
        sorted.sort_by_key(|&s| HUFFMAN_LENGTHS[usize::from(s)]);

        let mut out = Vec::with_capacity(input.len() * 8 / 5);
        // The code read so far, its length, the first code of that length, and how many symbols come before it.
        let (mut code, mut len, mut first, mut index) = (0u32, 0usize, 0u32, 0usize);
        let mut all_ones = true;
        for &byte in input {
            for shift in (0..8).rev() {
                let bit = u32::from(byte >> shift & 1);
                code = code << 1 | bit;
                all_ones &= bit == 1;
                len += 1;
                let count = u32::from(*counts.get(len).ok_or(Error::Huffman)?);
                if code.wrapping_sub(first) < count {
                    let symbol = sorted[index + code.wrapping_sub(first) as usize];
                    if symbol == EOS {
                        return Err(Error::Huffman);
                    }
                    out.push(symbol as u8);
                    (code, len, first, index, all_ones) = (0, 0, 0, 0, true);
                } else {
                    index += count as usize;
                    first = (first + count) << 1;
                }
            }
        }
        // What is left must be padding: fewer than 8 bits, all ones (a prefix of EOS).
        if len >= 8 || !all_ones {
            return Err(Error::Huffman);
        }
        Ok(out)
    }

    /// An integer with an `prefix_bits`-bit prefix, `flags` in the bits above it.
    pub fn encode_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, mut value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        value -= max;
        while value >= 0x80 {
            out.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    pub struct Decoder {
        dynamic: VecDeque<(String, String)>,
        size: usize,
        max_size: usize,
        /// The limit this side announced (SETTINGS_HEADER_TABLE_SIZE); size updates may not exceed it.
        limit: usize,
    }

    impl Decoder {
        pub fn new(limit: usize) -> Self {
            Decoder {
                dynamic: VecDeque::new(),
                size: 0,
                max_size: limit,
                limit,
            }
        }

        pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
            let mut fields = Vec::new();
            let mut pos = 0;
            while pos < block.len() {
                let first = block[pos];
                if first & 0x80 != 0 {
                    let index = int(block, &mut pos, 7)?;
                    fields.push(self.entry(index)?);
                } else if first & 0xc0 == 0x40 {
                    let field = self.literal(block, &mut pos, 6)?;
                    self.insert(field.clone());
                    fields.push(field);
                } else if first & 0xe0 == 0x20 {
                    let size = int(block, &mut pos, 5)?;
                    if size > self.limit {
                        return Err(Error::TableSize(size));
                    }
                    self.max_size = size;
                    self.evict(0);
                } else {
                    // Literal without indexing (0000) or never indexed (0001): both 4-bit prefixes.
                    fields.push(self.literal(block, &mut pos, 4)?);
                }
            }
            Ok(fields)
        }

        fn entry(&self, index: usize) -> Result<(String, String), Error> {
            match index {
                0 => Err(Error::Index(0)),
                1..=61 => {
                    let (name, value) = STATIC[index - 1];
                    Ok((name.to_owned(), value.to_owned()))
                }
                _ => self
                    .dynamic
                    .get(index - 62)
                    .cloned()
                    .ok_or(Error::Index(index)),
            }
        }

        fn literal(
            &self,
            block: &[u8],
            pos: &mut usize,
            prefix: u32,
        ) -> Result<(String, String), Error> {
            let index = int(block, pos, prefix)?;
            let name = if index == 0 {
                string(block, pos)?
            } else {
                self.entry(index)?.0
            };
            Ok((name, string(block, pos)?))
        }

        fn insert(&mut self, field: (String, String)) {
            let size = field.0.len() + field.1.len() + 32;
            self.evict(size);
            // An entry larger than the whole table empties it and is not kept (RFC 7541 §4.4).
            if size <= self.max_size {
                self.size += size;
                self.dynamic.push_front(field);
            }
        }

        /// Evicts the oldest entries until `room` more bytes fit.
        fn evict(&mut self, room: usize) {
            while self.size + room > self.max_size {
                let Some((name, value)) = self.dynamic.pop_back() else {
                    break;
                };
                self.size -= name.len() + value.len() + 32;
            }
        }
    }

    fn int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<usize, Error> {
        let max = (1usize << prefix_bits) - 1;
        let mut value = usize::from(*block.get(*pos).ok_or(Error::Truncated)?) & max;
        *pos += 1;
        if value < max {
            return Ok(value);
        }
        let mut shift = 0;
        loop {
            let byte = *block.get(*pos).ok_or(Error::Truncated)?;
            *pos += 1;
            // Header sizes here are small: anything past 28 bits is an attack or garbage.
            if shift > 21 {
                return Err(Error::Overflow);
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    fn string(block: &[u8], pos: &mut usize) -> Result<String, Error> {
        let huffman = block.get(*pos).ok_or(Error::Truncated)? & 0x80 != 0;
        let len = int(block, pos, 7)?;
        let end = pos
            .checked_add(len)
            .filter(|&end| end <= block.len())
            .ok_or(Error::Truncated)?;
        let raw = &block[*pos..end];
        *pos = end;
        let bytes = if huffman {
            huffman_decode(raw)?
        } else {
            raw.to_vec()
        };
        String::from_utf8(bytes).map_err(|_| Error::Utf8)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn unhex(s: &str) -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        }

        fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
            fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        }

        #[test]
        fn huffman_strings_of_rfc7541() {
            assert_eq!(
                huffman_decode(&unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")).unwrap(),
                b"www.example.com"
            );
            assert_eq!(
                huffman_decode(&unhex("a8eb 1064 9cbf")).unwrap(),
                b"no-cache"
            );
            assert_eq!(
                huffman_decode(&unhex("25a8 49e9 5ba9 7d7f")).unwrap(),
                b"custom-key"
            );
            assert_eq!(huffman_decode(&[]).unwrap(), b"");
            // Padding of 8 bits or more, padding that is not all ones, and an encoded EOS are all refused.
            assert_eq!(
                huffman_decode(&unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff")),
                Err(Error::Huffman)
            );
            assert_eq!(
                huffman_decode(&unhex("f1e3 c2e5 f23a 6ba0 ab90 f4fe")),
                Err(Error::Huffman)
            );
            assert_eq!(huffman_decode(&unhex("ffff fffc")), Err(Error::Huffman));
        }

        /// RFC 7541 C.4: three requests on one connection, Huffman-coded, sharing the dynamic table.
        #[test]
        fn requests_of_rfc7541_c4() {
            let mut decoder = Decoder::new(4096);
            let first = decoder
                .decode(&unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
                .unwrap();
            assert_eq!(
                first,
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com")
                ])
            );
            assert_eq!(decoder.size, 57);
            let second = decoder
                .decode(&unhex("8286 84be 5886 a8eb 1064 9cbf"))
                .unwrap();
            assert_eq!(
                second[3..],
                pairs(&[
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache")
                ])
            );
            assert_eq!(decoder.size, 110);
            let third = decoder
                .decode(&unhex(
                    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                ))
                .unwrap();
            assert_eq!(
                third,
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(decoder.size, 164);
            assert_eq!(decoder.dynamic.len(), 3);
        }

        #[test]
        fn eviction_size_updates_and_errors() {
            // A 100-byte table holds two 40-byte entries (4 + 4 + 32); a third evicts the oldest.
            let mut decoder = Decoder::new(100);
            let literal = |name: &str, value: &str| {
                let mut out = vec![0x40];
                encode_int(&mut out, 0, 7, name.len());
                out.extend_from_slice(name.as_bytes());
                encode_int(&mut out, 0, 7, value.len());
                out.extend_from_slice(value.as_bytes());
                out
            };
            decoder.decode(&literal("aaaa", "1111")).unwrap();
            decoder.decode(&literal("bbbb", "2222")).unwrap();
            assert_eq!(decoder.dynamic.len(), 2);
            decoder.decode(&literal("cccc", "3333")).unwrap();
            // The oldest went; index 62 is the newest.
            assert_eq!(
                decoder.decode(&[0x80 | 62, 0x80 | 63]).unwrap(),
                pairs(&[("cccc", "3333"), ("bbbb", "2222")])
            );
            assert_eq!(decoder.decode(&[0x80 | 64]), Err(Error::Index(64)));
            // Size update to 40 keeps one entry; above the announced limit is an error.
            decoder.decode(&[0x20 | 0x1f, 40 - 31]).unwrap();
            assert_eq!(decoder.dynamic.len(), 1);
            assert_eq!(
                decoder.decode(&[0x3f, 0xff, 0x01]),
                Err(Error::TableSize(31 + 127 + 128))
            );
            // Index 0, truncation, and never-indexed literals (not added to the table).
            assert_eq!(decoder.decode(&[0x80]), Err(Error::Index(0)));
            assert_eq!(decoder.decode(&[0x00, 0x03, b'a']), Err(Error::Truncated));
            assert_eq!(
                decoder.decode(&[0x10, 0x01, b'x', 0x01, b'y']).unwrap(),
                pairs(&[("x", "y")])
            );
            assert_eq!(decoder.dynamic.len(), 1);
            assert_eq!(
                decoder.decode(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f]),
                Err(Error::Overflow)
            );
        }

        #[test]
        fn integers_with_prefixes() {
            // RFC 7541 C.1: 10 and 1337 with a 5-bit prefix.
            let mut out = Vec::new();
            encode_int(&mut out, 0, 5, 10);
            encode_int(&mut out, 0, 5, 1337);
            assert_eq!(out, [0x0a, 0x1f, 0x9a, 0x0a]);
            let mut pos = 0;
            assert_eq!(int(&out, &mut pos, 5), Ok(10));
            assert_eq!(int(&out, &mut pos, 5), Ok(1337));
            assert_eq!(pos, 4);
        }
    }
}

/// Just enough protobuf (proto3 wire format) and gRPC message framing for the calls above.
mod proto {
    use super::{Descriptor, Image};

    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub enum DecodeError {
        #[error("truncated message")]
        Truncated,
        #[error("varint longer than 10 bytes")]
        VarintOverflow,
        #[error("invalid wire type {wire_type} for field {field}")]
        WireType { field: u64, wire_type: u8 },
        #[error("field number 0")]
        FieldZero,
        #[error("unmatched group end for field {0}")]
        GroupEnd(u64),
        #[error("groups nested too deeply")]
        TooDeep,
        #[error("field {0} is not valid UTF-8")]
        Utf8(u64),
        #[error("compressed gRPC message (none was asked for)")]
        Compressed,
        #[error("expected one gRPC message, found {0} trailing bytes after it")]
        Trailing(usize),
    }

    /// Wraps a message in gRPC's length-prefixed framing: uncompressed flag, big-endian u32 length, bytes.
    pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + message.len());
        out.push(0);
        // Requests here are a few bytes; u32 cannot overflow.
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// The single message of a unary response body.
    pub fn grpc_unframe(body: &[u8]) -> Result<&[u8], DecodeError> {
        let (header, rest) = body.split_at_checked(5).ok_or(DecodeError::Truncated)?;
        if header[0] != 0 {
            return Err(DecodeError::Compressed);
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let message = rest.get(..len).ok_or(DecodeError::Truncated)?;
        if rest.len() > len {
            return Err(DecodeError::Trailing(rest.len() - len));
        }
        Ok(message)
    }

    fn put_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_varint(out, (field << 3) | WIRE_LEN as u64);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// ListImagesRequest { repeated string filters = 1; }
    pub fn encode_list_images_request(filters: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for filter in filters {
            put_bytes(&mut out, 1, filter.as_bytes());
        }
        out
    }

    /// ListImagesResponse { repeated Image images = 1; }
    pub fn decode_list_images_response(buf: &[u8]) -> Result<Vec<super::Image>, DecodeError> {
        let mut images = Vec::new();
        let mut reader = Reader::new(buf);
        while let Some((field, value)) = reader.next_field()? {
            if field == 1 {
                let mut image = Image::default();
                decode_image_into(&mut image, value.bytes(field)?)?;
                images.push(image);
            }
        }
        Ok(images)
    }

    /// Image { string name = 1; map<string,string> labels = 2; Descriptor target = 3; Timestamp created_at = 7;
    /// Timestamp updated_at = 8; } — only name and target are kept.
    fn decode_image_into(image: &mut Image, buf: &[u8]) -> Result<(), DecodeError> {
        let mut reader = Reader::new(buf);
        while let Some((field, value)) = reader.next_field()? {
            match field {
                1 => image.name = value.string(field)?,
                // A message field seen twice is merged, as protobuf specifies.
                3 => decode_descriptor_into(&mut image.target, value.bytes(field)?)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Descriptor { string media_type = 1; string digest = 2; int64 size = 3; map<string,string> annotations = 5; }
    fn decode_descriptor_into(descriptor: &mut Descriptor, buf: &[u8]) -> Result<(), DecodeError> {
        let mut reader = Reader::new(buf);
        while let Some((field, value)) = reader.next_field()? {
            match field {
                1 => descriptor.media_type = value.string(field)?,
                2 => descriptor.digest = value.string(field)?,
                // int64 is a two's complement varint: the cast is the protobuf conversion.
                3 => descriptor.size = value.varint(field)? as i64,
                _ => {}
            }
        }
        Ok(())
    }

    /// VersionResponse { string version = 1; string revision = 2; }
    pub fn decode_version_response(buf: &[u8]) -> Result<String, DecodeError> {
        let mut version = String::new();
        let mut reader = Reader::new(buf);
        while let Some((field, value)) = reader.next_field()? {
            if field == 1 {
                version = value.string(field)?;
            }
        }
        Ok(version)
    }

    const WIRE_VARINT: u8 = 0;
    const WIRE_I64: u8 = 1;
    const WIRE_LEN: u8 = 2;
    const WIRE_SGROUP: u8 = 3;
    const WIRE_EGROUP: u8 = 4;
    const WIRE_I32: u8 = 5;
    /// Deprecated groups can only appear in unknown fields; bound their nesting.
    const MAX_GROUP_DEPTH: usize = 32;

    #[derive(Debug)]
    pub enum Value<'a> {
        Varint(u64),
        Fixed(u8),
        Bytes(&'a [u8]),
        Group,
    }

    impl<'a> Value<'a> {
        fn wire_type(&self) -> u8 {
            match self {
                Value::Varint(_) => WIRE_VARINT,
                Value::Fixed(wire_type) => *wire_type,
                Value::Bytes(_) => WIRE_LEN,
                Value::Group => WIRE_SGROUP,
            }
        }

        fn bytes(&self, field: u64) -> Result<&'a [u8], DecodeError> {
            match self {
                Value::Bytes(bytes) => Ok(bytes),
                other => Err(DecodeError::WireType {
                    field,
                    wire_type: other.wire_type(),
                }),
            }
        }

        fn string(&self, field: u64) -> Result<String, DecodeError> {
            let bytes = self.bytes(field)?;
            String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(field))
        }

        fn varint(&self, field: u64) -> Result<u64, DecodeError> {
            match self {
                Value::Varint(value) => Ok(*value),
                other => Err(DecodeError::WireType {
                    field,
                    wire_type: other.wire_type(),
                }),
            }
        }
    }

    /// Reads the fields of one message in order; unknown ones are skipped by their wire type.
    pub struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Self {
            Reader { buf, pos: 0 }
        }

        fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
            let end = self
                .pos
                .checked_add(len)
                .filter(|&end| end <= self.buf.len())
                .ok_or(DecodeError::Truncated)?;
            let bytes = &self.buf[self.pos..end];
            self.pos = end;
            Ok(bytes)
        }

        fn varint(&mut self) -> Result<u64, DecodeError> {
            let mut value = 0u64;
            for i in 0..10 {
                let byte = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
                self.pos += 1;
                value |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err(DecodeError::VarintOverflow)
        }

        fn key(&mut self) -> Result<(u64, u8), DecodeError> {
            let key = self.varint()?;
            let field = key >> 3;
            if field == 0 {
                return Err(DecodeError::FieldZero);
            }
            Ok((field, (key & 7) as u8))
        }

        /// The next field and its value, or `None` at the end of the message.
        pub fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
            if self.pos == self.buf.len() {
                return Ok(None);
            }
            let (field, wire_type) = self.key()?;
            let value = match wire_type {
                WIRE_VARINT => Value::Varint(self.varint()?),
                WIRE_I64 => {
                    self.take(8)?;
                    Value::Fixed(WIRE_I64)
                }
                WIRE_LEN => {
                    let len =
                        usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                    Value::Bytes(self.take(len)?)
                }
                WIRE_SGROUP => {
                    self.skip_group(field, 1)?;
                    Value::Group
                }
                WIRE_EGROUP => return Err(DecodeError::GroupEnd(field)),
                WIRE_I32 => {
                    self.take(4)?;
                    Value::Fixed(WIRE_I32)
                }
                wire_type => return Err(DecodeError::WireType { field, wire_type }),
            };
            Ok(Some((field, value)))
        }

        /// Skips up to and including the end-group key that closes the group `field`.
        fn skip_group(&mut self, field: u64, depth: usize) -> Result<(), DecodeError> {
            if depth > MAX_GROUP_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            loop {
                if self.pos == self.buf.len() {
                    return Err(DecodeError::Truncated);
                }
                let (inner, wire_type) = self.key()?;
                match wire_type {
                    WIRE_VARINT => {
                        self.varint()?;
                    }
                    WIRE_I64 => {
                        self.take(8)?;
                    }
                    WIRE_LEN => {
                        let len =
                            usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                        self.take(len)?;
                    }
                    WIRE_SGROUP => self.skip_group(inner, depth + 1)?,
                    WIRE_EGROUP if inner == field => return Ok(()),
                    WIRE_EGROUP => return Err(DecodeError::GroupEnd(inner)),
                    WIRE_I32 => {
                        self.take(4)?;
                    }
                    wire_type => {
                        return Err(DecodeError::WireType {
                            field: inner,
                            wire_type,
                        });
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Test helpers that build messages field by field, independently of the decoder.
        fn key(field: u64, wire_type: u8) -> Vec<u8> {
            let mut out = Vec::new();
            put_varint(&mut out, (field << 3) | u64::from(wire_type));
            out
        }

        fn len_field(field: u64, bytes: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            put_bytes(&mut out, field, bytes);
            out
        }

        fn varint_field(field: u64, value: u64) -> Vec<u8> {
            let mut out = key(field, WIRE_VARINT);
            put_varint(&mut out, value);
            out
        }

        #[test]
        fn list_request_bytes_are_exact() {
            assert_eq!(encode_list_images_request(&[]), b"");
            assert_eq!(
                encode_list_images_request(&["name==a", "labels.x"]),
                b"\x0a\x07name==a\x0a\x08labels.x".to_vec()
            );
            // A 200-byte filter needs a two-byte length varint: 200 = 0xc8 0x01.
            let long = "f".repeat(200);
            let encoded = encode_list_images_request(&[&long]);
            assert_eq!(&encoded[..3], b"\x0a\xc8\x01");
            assert_eq!(&encoded[3..], long.as_bytes());
        }

        #[test]
        fn grpc_framing() {
            assert_eq!(grpc_frame(b""), b"\0\0\0\0\0");
            assert_eq!(grpc_frame(b"\x0a\x01x"), b"\0\0\0\0\x03\x0a\x01x");
            assert_eq!(grpc_unframe(b"\0\0\0\0\x02ab"), Ok(&b"ab"[..]));
            assert_eq!(grpc_unframe(b"\0\0\0\0\x03ab"), Err(DecodeError::Truncated));
            assert_eq!(grpc_unframe(b"\0\0\0"), Err(DecodeError::Truncated));
            assert_eq!(
                grpc_unframe(b"\x01\0\0\0\x02ab"),
                Err(DecodeError::Compressed)
            );
            assert_eq!(
                grpc_unframe(b"\0\0\0\0\x01abc"),
                Err(DecodeError::Trailing(2))
            );
        }

        #[test]
        fn varints_round_trip_and_overflow() {
            for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
                let mut out = Vec::new();
                put_varint(&mut out, value);
                assert_eq!(Reader::new(&out).varint(), Ok(value));
            }
            let mut out = Vec::new();
            put_varint(&mut out, 300);
            assert_eq!(out, [0xac, 0x02]);
            assert_eq!(
                Reader::new(&[0xff; 11]).varint(),
                Err(DecodeError::VarintOverflow)
            );
            assert_eq!(Reader::new(&[0x80]).varint(), Err(DecodeError::Truncated));
        }

        /// A response as containerd sends it, plus unknown fields of every wire type, labels, timestamps, a
        /// negative size and a target split in two parts (merged).
        #[test]
        fn decodes_a_list_response_with_unknown_fields() {
            let digest = format!("sha256:{}", "ab".repeat(32));
            let mut labels_entry = len_field(1, b"io.cri-containerd.image");
            labels_entry.extend(len_field(2, b"managed"));
            let mut timestamp = varint_field(1, 1_700_000_000);
            timestamp.extend(varint_field(2, 5));

            let mut annotation = len_field(1, b"org.opencontainers.image.ref.name");
            annotation.extend(len_field(2, b"3.10"));
            let mut target_part1 = len_field(1, b"application/vnd.oci.image.manifest.v1+json");
            target_part1.extend(len_field(5, &annotation));
            target_part1.extend(key(4, WIRE_I32));
            target_part1.extend([1, 2, 3, 4]);
            let mut target_part2 = len_field(2, digest.as_bytes());
            target_part2.extend(varint_field(3, 1234));
            target_part2.extend(key(9, WIRE_I64));
            target_part2.extend([0; 8]);

            let mut image1 = len_field(1, b"ghcr.io/canonical/k8s-snap/pause:3.10");
            image1.extend(len_field(2, &labels_entry));
            image1.extend(len_field(3, &target_part1));
            image1.extend(len_field(7, &timestamp));
            // An unknown group holding a nested group and a length field.
            image1.extend(key(15, WIRE_SGROUP));
            image1.extend(varint_field(1, 7));
            image1.extend(key(2, WIRE_SGROUP));
            image1.extend(len_field(3, b"xyz"));
            image1.extend(key(2, WIRE_EGROUP));
            image1.extend(key(15, WIRE_EGROUP));
            image1.extend(len_field(3, &target_part2));
            image1.extend(len_field(8, &timestamp));
            image1.extend(varint_field(100, 1));

            let mut image2 = len_field(1, b"docker.io/library/busybox:1.36");
            let mut target2 = len_field(2, b"sha256:00");
            target2.extend(varint_field(3, (-1i64) as u64));
            image2.extend(len_field(3, &target2));

            let mut response = varint_field(99, 42);
            response.extend(len_field(1, &image1));
            response.extend(len_field(2, b"unknown sibling"));
            response.extend(len_field(1, &image2));

            let images = decode_list_images_response(&response).unwrap();
            assert_eq!(
                images,
                [
                    Image {
                        name: "ghcr.io/canonical/k8s-snap/pause:3.10".into(),
                        target: Descriptor {
                            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                            digest,
                            size: 1234,
                        },
                    },
                    Image {
                        name: "docker.io/library/busybox:1.36".into(),
                        target: Descriptor {
                            media_type: String::new(),
                            digest: "sha256:00".into(),
                            size: -1
                        },
                    },
                ]
            );
            assert_eq!(decode_list_images_response(b""), Ok(vec![]));
        }

        #[test]
        fn rejects_malformed_messages() {
            // Image length runs past the end.
            assert_eq!(
                decode_list_images_response(b"\x0a\x05ab"),
                Err(DecodeError::Truncated)
            );
            // name sent as a varint.
            let image = varint_field(1, 3);
            assert_eq!(
                decode_list_images_response(&len_field(1, &image)),
                Err(DecodeError::WireType {
                    field: 1,
                    wire_type: WIRE_VARINT
                })
            );
            // Invalid UTF-8 in the digest.
            let target = len_field(2, b"\xff\xfe");
            let image = len_field(3, &target);
            assert_eq!(
                decode_list_images_response(&len_field(1, &image)),
                Err(DecodeError::Utf8(2))
            );
            // Wire types 6 and 7 do not exist; field 0 is invalid; a stray group end.
            assert_eq!(
                decode_list_images_response(&key(1, 6)),
                Err(DecodeError::WireType {
                    field: 1,
                    wire_type: 6
                })
            );
            assert_eq!(
                decode_list_images_response(b"\x02\x00"),
                Err(DecodeError::FieldZero)
            );
            assert_eq!(
                decode_list_images_response(&key(5, WIRE_EGROUP)),
                Err(DecodeError::GroupEnd(5))
            );
            // A group that never ends, and one closed by the wrong field.
            assert_eq!(
                decode_list_images_response(&key(5, WIRE_SGROUP)),
                Err(DecodeError::Truncated)
            );
            let mut wrong = key(5, WIRE_SGROUP);
            wrong.extend(key(6, WIRE_EGROUP));
            assert_eq!(
                decode_list_images_response(&wrong),
                Err(DecodeError::GroupEnd(6))
            );
            // Deep nesting is refused rather than recursing without bound.
            let deep: Vec<u8> = (0..100).flat_map(|_| key(5, WIRE_SGROUP)).collect();
            assert_eq!(
                decode_list_images_response(&deep),
                Err(DecodeError::TooDeep)
            );
            // A fixed64 cut short.
            let mut short = key(4, WIRE_I64);
            short.extend([0; 7]);
            assert_eq!(
                decode_list_images_response(&short),
                Err(DecodeError::Truncated)
            );
        }

        #[test]
        fn decodes_a_version_response() {
            let mut response = len_field(1, b"1.7.27");
            response.extend(len_field(2, b"05044ec0a9a75232cad458027ca83437aae3f4da"));
            response.extend(varint_field(3, 1));
            assert_eq!(decode_version_response(&response), Ok("1.7.27".to_owned()));
            assert_eq!(decode_version_response(b""), Ok(String::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(
            percent_decode(b"namespace %22bad ns%22: invalid"),
            "namespace \"bad ns\": invalid"
        );
        assert_eq!(percent_decode(b"caf%C3%A9 100%"), "café 100%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
    }

    #[test]
    fn status_trailers() {
        assert_eq!(
            check_status(IMAGES_LIST, &[]).unwrap_err().to_string(),
            "malformed response to containerd containerd.services.images.v1.Images/List: no grpc-status in the trailers"
        );
        assert!(check_status(IMAGES_LIST, &fields(&[("grpc-status", "0")])).is_ok());
        let error = check_status(
            IMAGES_LIST,
            &fields(&[("grpc-status", "3"), ("grpc-message", "filter%3A bad")]),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "containerd containerd.services.images.v1.Images/List failed: gRPC status 3 (InvalidArgument): filter: bad"
        );
        assert!(!error.is_transient());
        assert!(
            check_status(VERSION, &fields(&[("grpc-status", "14")]))
                .unwrap_err()
                .is_transient()
        );
        assert_eq!(
            check_status(VERSION, &fields(&[("grpc-status", "x")]))
                .unwrap_err()
                .to_string(),
            "malformed response to containerd containerd.services.version.v1.Version/Version: grpc-status \"x\" is \
             not a number"
        );
    }

    #[test]
    fn find_image_matches_the_full_name() {
        let images = vec![
            Image {
                name: "docker.io/library/busybox:1.36".into(),
                target: Descriptor::default(),
            },
            Image {
                name: "ghcr.io/canonical/k8s-snap/pause:3.10".into(),
                target: Descriptor::default(),
            },
        ];
        assert_eq!(
            find_image(&images, "ghcr.io/canonical/k8s-snap/pause:3.10"),
            Some(&images[1])
        );
        assert_eq!(find_image(&images, "busybox:1.36"), None);
    }
}
