//! A minimal, synchronous client for containerd's gRPC API on its unix socket.
//!
//! The agent only needs two unary calls — `Version/Version` (is containerd up?) and `Images/List` (are the
//! preloaded images there, with their pinned digests?) — so instead of tonic and prost this speaks gRPC directly:
//! HTTP/2 without TLS (h2c) through the `h2` crate, on a current-thread tokio runtime that lives only for the
//! duration of a call, with a hand-written protobuf codec for the handful of messages involved. That keeps the
//! static agent small and free of a code generator, and the rest of the agent synchronous.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::time::Instant;

/// The image service's List method.
const IMAGES_LIST: &str = "containerd.services.images.v1.Images/List";
/// The version service's Version method.
const VERSION: &str = "containerd.services.version.v1.Version/Version";
/// The largest response accepted; gRPC's own default receive limit. A node's image list is a few kilobytes.
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
    #[error("HTTP/2 error talking to containerd at {}: {source}", path.display())]
    Http2 { path: PathBuf, source: h2::Error },
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
    #[error("cannot start the I/O runtime for the containerd client: {0}")]
    Runtime(io::Error),
}

impl ContainerdError {
    /// Whether `wait_for` should try again: containerd may still be starting (no socket yet, a socket left over
    /// from a previous run, a server not serving yet).
    fn is_transient(&self) -> bool {
        match self {
            Self::SocketMissing { .. }
            | Self::Refused { .. }
            | Self::Timeout { .. }
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
    let response = block_on(unary_with_timeout(
        socket,
        Some(namespace),
        IMAGES_LIST,
        request,
        timeout,
    ))??;
    proto::decode_list_images_response(&response).map_err(|e| malformed(IMAGES_LIST, e))
}

/// Waits until containerd answers on `socket`, retrying while it is starting, and returns its version.
pub fn wait_for(socket: &Path, timeout: Duration) -> Result<String, ContainerdError> {
    block_on(async {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = unary_with_timeout(
                socket,
                None,
                VERSION,
                Vec::new(),
                remaining.min(MAX_ATTEMPT),
            )
            .await;
            let error = match attempt {
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
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    })?
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

/// Runs `future` to completion on a runtime made for this call: the agent is otherwise synchronous.
fn block_on<F: Future>(future: F) -> Result<F::Output, ContainerdError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ContainerdError::Runtime)?;
    Ok(runtime.block_on(future))
}

async fn unary_with_timeout(
    socket: &Path,
    namespace: Option<&str>,
    method: &'static str,
    message: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, ContainerdError> {
    match tokio::time::timeout(timeout, unary(socket, namespace, method, message, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(ContainerdError::Timeout {
            path: socket.to_owned(),
            method,
            timeout,
        }),
    }
}

/// One gRPC unary call on a fresh connection: returns the response message's bytes.
async fn unary(
    socket: &Path,
    namespace: Option<&str>,
    method: &'static str,
    message: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, ContainerdError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| match source.kind() {
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
    let http2 = |source| ContainerdError::Http2 {
        path: socket.to_owned(),
        source,
    };
    let malformed = |reason: String| ContainerdError::Malformed { method, reason };

    let (client, connection) = h2::client::Builder::new()
        // Bounds what a misbehaving peer can make the agent buffer in headers.
        .max_header_list_size(64 << 10)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(http2)?;
    // The connection task drives the socket; it ends with the runtime when the call returns.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(http2)?;

    let mut request = http::Request::builder()
        .method(http::Method::POST)
        // The authority is unused on a unix socket; gRPC clients send the socket's name or "localhost".
        .uri(format!("http://localhost/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "user-agent",
            concat!("cairn-agent/", env!("CARGO_PKG_VERSION")),
        )
        // Lets containerd give up too when the agent stops waiting.
        .header(
            "grpc-timeout",
            format!("{}m", timeout.as_millis().clamp(1, 99_999_999)),
        );
    if let Some(namespace) = namespace {
        request = request.header("containerd-namespace", namespace);
    }
    let request = request
        .body(())
        .map_err(|e| malformed(format!("cannot build the request: {e}")))?;

    let (response, mut send) = client.send_request(request, false).map_err(http2)?;
    send.send_data(Bytes::from(proto::grpc_frame(&message)), true)
        .map_err(http2)?;

    let response = response.await.map_err(http2)?;
    let (head, mut body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(malformed(format!("HTTP status {}", head.status)));
    }
    // A "trailers-only" response (an immediate error) carries grpc-status in the headers.
    if head.headers.contains_key("grpc-status") {
        check_status(method, &head.headers)?;
        return Err(malformed("no response message".to_owned()));
    }

    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(http2)?;
        // Gives the window back so containerd can send more than h2's initial 64 KiB.
        let _ = body.flow_control().release_capacity(chunk.len());
        if data.len() + chunk.len() > MAX_RESPONSE + 5 {
            return Err(malformed(format!(
                "response larger than {MAX_RESPONSE} bytes"
            )));
        }
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(http2)?.unwrap_or_default();
    check_status(method, &trailers)?;
    proto::grpc_unframe(&data)
        .map(Bytes::copy_from_slice)
        .map_err(|e| malformed(e.to_string()))
}

/// Turns a non-zero `grpc-status` into [`ContainerdError::Status`] with its (percent-decoded) `grpc-message`.
fn check_status(method: &'static str, headers: &http::HeaderMap) -> Result<(), ContainerdError> {
    let Some(status) = headers.get("grpc-status") else {
        return Err(ContainerdError::Malformed {
            method,
            reason: "no grpc-status in the trailers".to_owned(),
        });
    };
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| ContainerdError::Malformed {
            method,
            reason: format!(
                "grpc-status {:?} is not a number",
                String::from_utf8_lossy(status.as_bytes())
            ),
        })?;
    if code == 0 {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
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
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            check_status(IMAGES_LIST, &headers).unwrap_err().to_string(),
            "malformed response to containerd containerd.services.images.v1.Images/List: no grpc-status in the trailers"
        );
        headers.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert!(check_status(IMAGES_LIST, &headers).is_ok());
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("filter%3A bad"),
        );
        let error = check_status(IMAGES_LIST, &headers).unwrap_err();
        assert_eq!(
            error.to_string(),
            "containerd containerd.services.images.v1.Images/List failed: gRPC status 3 (InvalidArgument): filter: bad"
        );
        assert!(!error.is_transient());
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(check_status(VERSION, &headers).unwrap_err().is_transient());
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(
            check_status(VERSION, &headers).unwrap_err().to_string(),
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
