//! The parts of one attempt that ureq lets a caller supply (its `unversioned` transport API, hence the `~3.5`
//! pin): the name resolution (`localhost` is never looked up) and the connection, TLS with this client's own
//! rustls setup, and a connection that ends too early is an error rather than the end of the body.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::time::Duration as UreqDuration;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport, TransportAdapter,
};
use ureq::{Error, Timeout};

/// A connection that ended before the response did: a reset, or for TLS an end without `close_notify`. ureq
/// takes either for the end of a body framed by the end of the connection; this client takes it for a
/// truncated response (retried). The kind is the one reported to the caller.
#[derive(Debug, thiserror::Error)]
#[error("connection closed before the response ended")]
pub(super) struct Cut(pub io::ErrorKind);

fn cut(kind: io::ErrorKind) -> Error {
    Error::Io(io::Error::other(Cut(kind)))
}

/// Whether an I/O error is the connection ending (which ureq would take for the end of a body).
fn is_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// The addresses of the URL's host: `localhost` is 127.0.0.1 then ::1 (RFC 6761), an IP literal is itself,
/// any other name goes to the system resolver (ureq's, bounded by the attempt's deadline).
#[derive(Debug)]
pub(super) struct Resolve {
    pub host: String,
    pub port: u16,
}

impl Resolver for Resolve {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let ips = if let Ok(ip) = self.host.parse::<IpAddr>() {
            vec![ip]
        } else if self.host == "localhost" {
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        } else {
            return DefaultResolver::default().resolve(uri, config, timeout);
        };
        let mut addrs = self.empty();
        for ip in ips {
            addrs.push(SocketAddr::new(ip, self.port));
        }
        Ok(addrs)
    }
}

/// The TLS side of a connection: this client's rustls setup and the name the certificate must be valid for.
pub(super) struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// Wraps the TCP transport of an attempt: in TLS (the handshake done here, bounded by the attempt's
/// deadline, so a refused certificate fails before anything is sent) or as it is.
pub(super) struct Connect {
    pub tls: Option<TlsTarget>,
    pub deadline: Instant,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("tls", &self.tls.as_ref().map(|t| &t.name))
            .finish()
    }
}

impl<In: Transport> Connector<In> for Connect {
    type Out = Conn<In>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Conn<In>>, Error> {
        let Some(tcp) = chained else {
            return Ok(None);
        };
        let Some(tls) = &self.tls else {
            return Ok(Some(Conn::Plain(tcp)));
        };
        let mut conn = ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())
            .map_err(|e| Error::Io(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let mut socket = TransportAdapter::new(tcp, details.current_time.clone());
        socket.set_timeout(NextTimeout {
            after: UreqDuration::Exact(self.deadline.saturating_duration_since(Instant::now())),
            reason: Timeout::Connect,
            per_read: None,
            per_write: None,
        });
        while conn.is_handshaking() {
            conn.complete_io(&mut socket)?;
        }
        Ok(Some(Conn::Tls(Box::new(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned::new(conn, socket),
        }))))
    }
}

/// The connection of one attempt.
#[derive(Debug)]
pub(super) enum Conn<In: Transport> {
    Plain(In),
    Tls(Box<TlsTransport<In>>),
}

impl<In: Transport> Transport for Conn<In> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        match self {
            Conn::Plain(t) => t.buffers(),
            Conn::Tls(t) => &mut t.buffers,
        }
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        match self {
            Conn::Plain(t) => t.transmit_output(amount, timeout),
            Conn::Tls(t) => {
                t.stream.sock.set_timeout(timeout);
                let output = &t.buffers.output()[..amount];
                t.stream.write_all(output)?;
                Ok(())
            }
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        match self {
            Conn::Plain(t) => t.await_input(timeout).map_err(|e| match e {
                Error::Io(e) if is_end(&e) => cut(e.kind()),
                e => e,
            }),
            Conn::Tls(t) => {
                t.stream.sock.set_timeout(timeout);
                let input = t.buffers.input_append_buf();
                // rustls says UnexpectedEof for an end without close_notify.
                let n = match t.stream.read(input) {
                    Ok(n) => n,
                    Err(e) if is_end(&e) => return Err(cut(e.kind())),
                    Err(e) => return Err(e.into()),
                };
                t.buffers.input_appended(n);
                Ok(n > 0)
            }
        }
    }

    fn is_open(&mut self) -> bool {
        match self {
            Conn::Plain(t) => t.is_open(),
            Conn::Tls(t) => t.stream.sock.get_mut().is_open(),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

/// TLS over the attempt's TCP transport.
pub(super) struct TlsTransport<In: Transport> {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter<In>>,
}

impl<In: Transport> fmt::Debug for TlsTransport<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport")
            .field("tcp", self.stream.sock.inner())
            .finish()
    }
}
