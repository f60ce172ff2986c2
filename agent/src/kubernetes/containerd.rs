//! A small, synchronous client for containerd's gRPC API on its unix socket.
//!
//! The agent needs two unary calls: `Version/Version` (is containerd up?) and `Images/List` (are the preloaded
//! images there, with their pinned digests?). tonic's client does the gRPC part (framing, status trailers,
//! `grpc-timeout`, the response size limit) over one hyper HTTP/2 connection per call; the few messages are prost
//! structs declared in [`wire`], so no `protoc` is needed to build. Each call runs on a current-thread tokio
//! runtime of its own, so the rest of the agent stays synchronous.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{DecodeBuf, EncodeBuf};
use tonic::{Code, Status};

/// The image service's List method, as the HTTP/2 path of its calls.
const IMAGES_LIST: &str = "/containerd.services.images.v1.Images/List";
/// The version service's Version method.
const VERSION: &str = "/containerd.services.version.v1.Version/Version";
/// The largest response message accepted; gRPC's own default receive limit. A node's image list is a few
/// kilobytes.
const MAX_RESPONSE: usize = 4 << 20;
/// How long `wait_for` sleeps between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest single attempt of `wait_for`, so that a connection stuck while containerd starts is retried.
const MAX_ATTEMPT: Duration = Duration::from_secs(5);
/// The metadata header that selects containerd's namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

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
    #[error("containerd namespace {namespace:?} cannot be sent in a gRPC header")]
    Namespace { namespace: String },
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
            Self::Status { code, .. } => *code == Code::Unavailable as u32,
            _ => false,
        }
    }
}

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
    let request = wire::ListImagesRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let response: wire::ListImagesResponse =
        unary(socket, Some(namespace), IMAGES_LIST, request, timeout)?;
    Ok(response.images.into_iter().map(Image::from).collect())
}

/// Waits until containerd answers on `socket`, retrying while it is starting, and returns its version.
pub fn wait_for(socket: &Path, timeout: Duration) -> Result<String, ContainerdError> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match unary::<_, wire::VersionResponse>(
            socket,
            None,
            VERSION,
            (),
            remaining.min(MAX_ATTEMPT),
        ) {
            Ok(response) => return Ok(response.version),
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

/// One gRPC unary call of the method at `path` on a fresh connection, within `timeout`, on a runtime of its own.
fn unary<Req, Resp>(
    socket: &Path,
    namespace: Option<&str>,
    path: &'static str,
    request: Req,
    timeout: Duration,
) -> Result<Resp, ContainerdError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| ContainerdError::Io {
            path: socket.to_owned(),
            source,
        })?;
    // The method's name, for errors.
    let method = path.trim_start_matches('/');
    let call = call(socket, namespace, path, request, timeout);
    match runtime.block_on(async { tokio::time::timeout(timeout, call).await }) {
        Ok(result) => result,
        Err(_elapsed) => Err(ContainerdError::Timeout {
            path: socket.to_owned(),
            method,
            timeout,
        }),
    }
}

async fn call<Req, Resp>(
    socket: &Path,
    namespace: Option<&str>,
    path: &'static str,
    message: Req,
    timeout: Duration,
) -> Result<Resp, ContainerdError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let method = path.trim_start_matches('/');
    let mut request = tonic::Request::new(message);
    // Lets containerd give up too when the agent stops waiting.
    request.set_timeout(timeout);
    let metadata = request.metadata_mut();
    metadata.insert(
        "user-agent",
        tonic::metadata::MetadataValue::from_static(concat!(
            "cairn-agent/",
            env!("CARGO_PKG_VERSION")
        )),
    );
    if let Some(namespace) = namespace {
        let value = namespace.parse().map_err(|_| ContainerdError::Namespace {
            namespace: namespace.to_owned(),
        })?;
        metadata.insert(NAMESPACE_HEADER, value);
    }

    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| connect_error(socket, source))?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|error| transport_error(socket, &error))?;
    // The connection's own task; its errors reach the call through the sender.
    tokio::spawn(connection);

    // The authority is unused on a unix socket; gRPC clients send "localhost".
    let origin = http::Uri::from_static("http://localhost");
    let mut client = tonic::client::Grpc::with_origin(Connection(sender), origin)
        .max_decoding_message_size(MAX_RESPONSE);
    client
        .ready()
        .await
        .map_err(|error| transport_error(socket, &error))?;
    let response = client
        .unary(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::<Req, Resp>::default(),
        )
        .await
        .map_err(|status| status_error(socket, method, status))?;
    response
        .into_inner()
        .map_err(|error| ContainerdError::Malformed {
            method,
            reason: error.to_string(),
        })
}

fn connect_error(socket: &Path, source: io::Error) -> ContainerdError {
    let path = socket.to_owned();
    match source.kind() {
        io::ErrorKind::NotFound => ContainerdError::SocketMissing { path },
        io::ErrorKind::ConnectionRefused => ContainerdError::Refused { path },
        _ => ContainerdError::Connect { path, source },
    }
}

/// A failed connection (hyper's or h2's error, maybe over an I/O error), as opposed to a status of the call.
fn transport_error(socket: &Path, error: &(dyn std::error::Error + 'static)) -> ContainerdError {
    let mut reason = error.to_string();
    let mut io_kind = None;
    let mut cause = error.source();
    while let Some(inner) = cause {
        reason = format!("{reason}: {inner}");
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            io_kind = Some(io.kind());
        }
        cause = inner.source();
    }
    let path = socket.to_owned();
    match io_kind {
        Some(kind) => ContainerdError::Io {
            path,
            source: io::Error::new(kind, reason),
        },
        None => ContainerdError::Http2 { path, reason },
    }
}

/// What a failed call's status means. tonic turns a transport error into a status with that error as its
/// source, and refuses an oversized response with a status of its own; any other status is containerd's (or
/// tonic's reading of an HTTP status that came without one).
fn status_error(socket: &Path, method: &'static str, status: Status) -> ContainerdError {
    if let Some(source) = std::error::Error::source(&status) {
        return transport_error(socket, source);
    }
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        return ContainerdError::Malformed {
            method,
            reason: format!("response larger than {MAX_RESPONSE} bytes"),
        };
    }
    ContainerdError::Status {
        method,
        code: status.code() as u32,
        message: status.message().to_owned(),
    }
}

/// hyper's HTTP/2 sender as the service tonic's client calls.
struct Connection(SendRequest<tonic::body::Body>);

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.0.send_request(request))
    }
}

/// prost's encoding of the messages. A response decodes to a `Result`, so that a malformed message is told
/// apart from a status containerd sent (tonic's own prost codec turns both into an `Internal` status).
struct ProstCodec<Req, Resp>(PhantomData<fn(Req) -> Resp>);

impl<Req, Resp> Default for ProstCodec<Req, Resp> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req, Resp> tonic::codec::Codec for ProstCodec<Req, Resp>
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    type Encode = Req;
    type Decode = Result<Resp, prost::DecodeError>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self::default()
    }

    fn decoder(&mut self) -> Self {
        Self::default()
    }
}

impl<Req: prost::Message, Resp> tonic::codec::Encoder for ProstCodec<Req, Resp> {
    type Item = Req;
    type Error = Status;

    fn encode(&mut self, item: Req, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // An EncodeBuf grows as needed, so encoding cannot run out of room.
        item.encode(dst)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

impl<Req, Resp: prost::Message + Default> tonic::codec::Decoder for ProstCodec<Req, Resp> {
    type Item = Result<Resp, prost::DecodeError>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        Ok(Some(Resp::decode(src)))
    }
}

impl From<wire::Image> for Image {
    fn from(image: wire::Image) -> Self {
        let target = image.target.unwrap_or_default();
        Image {
            name: image.name,
            target: Descriptor {
                media_type: target.media_type,
                digest: target.digest,
                size: target.size,
            },
        }
    }
}

/// The fields of containerd's messages (api/services/images/v1/images.proto, api/types/descriptor.proto,
/// api/services/version/v1/version.proto) that the agent reads; prost skips the others (labels, timestamps,
/// annotations).
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesRequest {
        #[prost(string, repeated, tag = "1")]
        pub filters: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesResponse {
        #[prost(message, repeated, tag = "1")]
        pub images: Vec<Image>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub target: Option<Descriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Descriptor {
        #[prost(string, tag = "1")]
        pub media_type: String,
        #[prost(string, tag = "2")]
        pub digest: String,
        #[prost(int64, tag = "3")]
        pub size: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

    use bytes::Bytes;

    /// Test helpers that build messages field by field, independently of prost.
    const VARINT: u8 = 0;
    const I64: u8 = 1;
    const LEN: u8 = 2;
    const SGROUP: u8 = 3;
    const EGROUP: u8 = 4;
    const I32: u8 = 5;

    fn put_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn key(field: u64, wire_type: u8) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, (field << 3) | u64::from(wire_type));
        out
    }

    fn len_field(field: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = key(field, LEN);
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        out
    }

    fn varint_field(field: u64, value: u64) -> Vec<u8> {
        let mut out = key(field, VARINT);
        put_varint(&mut out, value);
        out
    }

    fn decode_list(bytes: &[u8]) -> Result<Vec<Image>, prost::DecodeError> {
        let response = <wire::ListImagesResponse as prost::Message>::decode(bytes)?;
        Ok(response.images.into_iter().map(Image::from).collect())
    }

    #[test]
    fn list_request_bytes_are_exact() {
        let encode = |filters: &[&str]| {
            prost::Message::encode_to_vec(&wire::ListImagesRequest {
                filters: filters.iter().map(|f| f.to_string()).collect(),
            })
        };
        assert_eq!(encode(&[]), b"");
        assert_eq!(
            encode(&["name==a", "labels.x"]),
            b"\x0a\x07name==a\x0a\x08labels.x".to_vec()
        );
    }

    /// A response as containerd sends it, plus unknown fields of every wire type, labels, timestamps, a negative
    /// size and a target split in two parts (merged).
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
        target_part1.extend(key(4, I32));
        target_part1.extend([1, 2, 3, 4]);
        let mut target_part2 = len_field(2, digest.as_bytes());
        target_part2.extend(varint_field(3, 1234));
        target_part2.extend(key(9, I64));
        target_part2.extend([0; 8]);

        let mut image1 = len_field(1, b"ghcr.io/canonical/k8s-snap/pause:3.10");
        image1.extend(len_field(2, &labels_entry));
        image1.extend(len_field(3, &target_part1));
        image1.extend(len_field(7, &timestamp));
        // An unknown group holding a nested group and a length field.
        image1.extend(key(15, SGROUP));
        image1.extend(varint_field(1, 7));
        image1.extend(key(2, SGROUP));
        image1.extend(len_field(3, b"xyz"));
        image1.extend(key(2, EGROUP));
        image1.extend(key(15, EGROUP));
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

        assert_eq!(
            decode_list(&response).unwrap(),
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
        assert_eq!(decode_list(b"").unwrap(), []);
    }

    #[test]
    fn rejects_malformed_messages() {
        let mut wrong_group_end = key(5, SGROUP);
        wrong_group_end.extend(key(6, EGROUP));
        let mut short_fixed64 = key(4, I64);
        short_fixed64.extend([0; 7]);
        let cases: [(&str, Vec<u8>); 9] = [
            ("an image length past the end", b"\x0a\x05ab".to_vec()),
            ("a name sent as a varint", len_field(1, &varint_field(1, 3))),
            (
                "invalid UTF-8 in the digest",
                len_field(1, &len_field(3, &len_field(2, b"\xff\xfe"))),
            ),
            ("wire type 6", key(1, 6)),
            ("field 0", b"\x02\x00".to_vec()),
            ("a stray group end", key(5, EGROUP)),
            ("a group that never ends", key(5, SGROUP)),
            ("a group closed by the wrong field", wrong_group_end),
            ("a fixed64 cut short", short_fixed64),
        ];
        for (what, bytes) in cases {
            assert!(decode_list(&bytes).is_err(), "{what} was accepted");
        }
        // Deep nesting is refused rather than recursing without bound.
        let deep: Vec<u8> = (0..200).flat_map(|_| key(5, SGROUP)).collect();
        assert!(decode_list(&deep).is_err());
    }

    #[test]
    fn decodes_a_version_response() {
        let mut response = len_field(1, b"1.7.27");
        response.extend(len_field(2, b"05044ec0a9a75232cad458027ca83437aae3f4da"));
        response.extend(varint_field(3, 1));
        let decode = |bytes: &[u8]| <wire::VersionResponse as prost::Message>::decode(bytes);
        assert_eq!(decode(&response).unwrap().version, "1.7.27");
        assert_eq!(decode(b"").unwrap().version, "");
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn status_trailers() {
        let socket = Path::new("/run/containerd/containerd.sock");
        let status = |pairs| Status::from_header_map(&trailers(pairs)).unwrap();
        let method = &IMAGES_LIST[1..];
        let error = status_error(
            socket,
            method,
            status(&[("grpc-status", "3"), ("grpc-message", "filter%3A bad")]),
        );
        assert_eq!(
            error.to_string(),
            "containerd containerd.services.images.v1.Images/List failed: gRPC status 3 (InvalidArgument): filter: bad"
        );
        assert!(!error.is_transient());
        let error = status_error(socket, method, status(&[("grpc-status", "14")]));
        assert!(error.is_transient(), "{error}");
        assert_eq!(
            status_error(socket, method, status(&[("grpc-status", "99")])).to_string(),
            "containerd containerd.services.images.v1.Images/List failed: gRPC status 2 (Unknown): "
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

    /// What the fake containerd answers on one connection.
    enum Reply {
        /// Headers that end the stream with a gRPC status (an immediate error).
        TrailersOnly(&'static str, &'static str),
        /// One message, then an OK status.
        Message(Vec<u8>),
        /// A message header declaring this many bytes, and no more.
        Declared(u32),
        /// The connection closed as soon as it is accepted.
        Close,
    }

    /// A fake containerd on a unix socket (an h2 server), answering one request per connection with the replies
    /// in turn; returns each request's path and namespace header.
    fn fake_containerd(
        socket: &Path,
        replies: Vec<Reply>,
    ) -> mpsc::Receiver<(String, Option<String>)> {
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (requests, received) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                for reply in replies {
                    let (stream, _) = listener.accept().await.unwrap();
                    if let Reply::Close = reply {
                        drop(stream);
                        continue;
                    }
                    let mut connection = h2::server::handshake(stream).await.unwrap();
                    let (request, mut respond) = connection.accept().await.unwrap().unwrap();
                    let namespace = request
                        .headers()
                        .get(NAMESPACE_HEADER)
                        .map(|v| v.to_str().unwrap().to_owned());
                    requests
                        .send((request.uri().path().to_owned(), namespace))
                        .unwrap();
                    let headers = |pairs: &[(&'static str, &'static str)]| {
                        let mut response = http::Response::new(());
                        *response.headers_mut() = trailers(&[("content-type", "application/grpc")]);
                        response.headers_mut().extend(trailers(pairs));
                        response
                    };
                    match reply {
                        Reply::TrailersOnly(code, message) => {
                            let response =
                                headers(&[("grpc-status", code), ("grpc-message", message)]);
                            respond.send_response(response, true).unwrap();
                        }
                        Reply::Message(message) => {
                            let mut send = respond.send_response(headers(&[]), false).unwrap();
                            let mut framed = vec![0];
                            framed.extend((message.len() as u32).to_be_bytes());
                            framed.extend(message);
                            send.send_data(Bytes::from(framed), false).unwrap();
                            send.send_trailers(trailers(&[("grpc-status", "0")]))
                                .unwrap();
                        }
                        Reply::Declared(len) => {
                            let mut send = respond.send_response(headers(&[]), false).unwrap();
                            let mut framed = vec![0];
                            framed.extend(len.to_be_bytes());
                            send.send_data(Bytes::from(framed), false).unwrap();
                        }
                        Reply::Close => unreachable!(),
                    }
                    // Serves the connection until the client is done with it.
                    let _ = std::future::poll_fn(|cx| connection.poll_closed(cx)).await;
                }
            });
        });
        received
    }

    #[test]
    fn calls_send_the_path_and_namespace_and_read_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let requests = fake_containerd(
            &socket,
            vec![
                Reply::TrailersOnly("3", "filter%3A bad"),
                Reply::Message(b"\x0a\x05ab".to_vec()),
                Reply::Declared(MAX_RESPONSE as u32 + 1),
            ],
        );
        let timeout = Duration::from_secs(10);

        let error = list_images_matching(&socket, "k8s.io", &["name==x"], timeout).unwrap_err();
        assert_eq!(
            error.to_string(),
            "containerd containerd.services.images.v1.Images/List failed: gRPC status 3 (InvalidArgument): filter: bad"
        );
        assert_eq!(
            requests.recv().unwrap(),
            (IMAGES_LIST.to_owned(), Some("k8s.io".to_owned()))
        );

        let error = list_images(&socket, "k8s.io", timeout).unwrap_err();
        assert!(
            matches!(&error, ContainerdError::Malformed { method, .. } if *method == &IMAGES_LIST[1..]),
            "{error}"
        );

        let error = list_images(&socket, "k8s.io", timeout).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed response to containerd containerd.services.images.v1.Images/List: response larger than \
             4194304 bytes"
        );
    }

    /// wait_for retries a connection closed at once and an Unavailable status, and sends no namespace.
    #[test]
    fn wait_for_retries_until_containerd_serves() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let mut version = len_field(1, b"1.7.27");
        version.extend(len_field(2, b"05044ec0a9a75232cad458027ca83437aae3f4da"));
        let requests = fake_containerd(
            &socket,
            vec![
                Reply::Close,
                Reply::TrailersOnly("14", "starting"),
                Reply::Message(version),
            ],
        );
        assert_eq!(
            wait_for(&socket, Duration::from_secs(10)).unwrap(),
            "1.7.27"
        );
        let requests: Vec<_> = requests.iter().collect();
        assert_eq!(
            requests,
            [(VERSION.to_owned(), None), (VERSION.to_owned(), None)]
        );
    }

    #[test]
    fn a_connection_closed_at_once_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let _requests = fake_containerd(&socket, vec![Reply::Close]);
        let error = list_images(&socket, "k8s.io", Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(
                error,
                ContainerdError::Http2 { .. } | ContainerdError::Io { .. }
            ),
            "{error}"
        );
        assert!(error.is_transient(), "{error}");
    }

    #[test]
    fn a_namespace_that_cannot_be_a_header_is_refused() {
        let error = list_images(
            Path::new("/nonexistent.sock"),
            "bad\nnamespace",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "containerd namespace \"bad\\nnamespace\" cannot be sent in a gRPC header"
        );
    }
}
