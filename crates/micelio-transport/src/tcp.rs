//! The real transport: TCP, then Noise XX keyed by the node identity.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use micelio_identity::Identity;
use micelio_wire::Envelope;
use micelio_wire::frame::FrameDecoder;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{LinkError, TransportError};
use crate::link::{
    BoxFuture, Direction, FrameSink, FrameSource, Incoming, Link, Listener, Transport,
    next_envelope,
};
use crate::noise::{self, NoiseReader, NoiseWriter, Role};

/// TCP + Noise XX (`Noise_XX_25519_ChaChaPoly_BLAKE2s`), wire-compatible with
/// the reference implementation.
#[derive(Clone)]
pub struct TcpTransport {
    identity: Arc<Identity>,
    dial_timeout: Duration,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node_id", self.identity.node_id())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// A transport authenticating as `identity`; `dial_timeout` bounds the TCP
    /// connect and `handshake_timeout` the Noise handshake.
    pub fn new(
        identity: Arc<Identity>,
        dial_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            identity,
            dial_timeout,
            handshake_timeout,
        }
    }
}

async fn upgrade(
    stream: TcpStream,
    role: Role,
    identity: Arc<Identity>,
    timeout: Duration,
) -> Result<Link, TransportError> {
    let remote_addr = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    // Frames are written whole; do not let Nagle hold back small ones.
    let _ = stream.set_nodelay(true);
    let noise = tokio::time::timeout(timeout, noise::handshake(stream, role, &identity))
        .await
        .map_err(|_| TransportError::HandshakeTimeout)??;
    let remote_static = noise.remote_static();
    let (reader, writer) = noise.into_split();
    Ok(Link {
        remote_static,
        remote_addr,
        direction: match role {
            Role::Initiator => Direction::Outbound,
            Role::Responder => Direction::Inbound,
        },
        sink: Box::new(TcpSink { writer }),
        source: Box::new(TcpSource {
            reader,
            buf: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::new(),
        }),
    })
}

impl Transport for TcpTransport {
    fn listen<'a>(
        &'a self,
        addr: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let listener = TcpListener::bind(addr).await?;
            Ok(Box::new(TcpListenerHandle {
                listener,
                identity: self.identity.clone(),
                handshake_timeout: self.handshake_timeout,
            }) as Box<dyn Listener>)
        })
    }

    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Link, TransportError>> {
        Box::pin(async move {
            let stream = tokio::time::timeout(self.dial_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| TransportError::DialTimeout)??;
            upgrade(
                stream,
                Role::Initiator,
                self.identity.clone(),
                self.handshake_timeout,
            )
            .await
        })
    }
}

struct TcpListenerHandle {
    listener: TcpListener,
    identity: Arc<Identity>,
    handshake_timeout: Duration,
}

impl Listener for TcpListenerHandle {
    fn local_addr(&self) -> String {
        self.listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    fn accept(&mut self) -> BoxFuture<'_, Result<Box<dyn Incoming>, TransportError>> {
        Box::pin(async move {
            let (stream, peer) = self.listener.accept().await?;
            Ok(Box::new(TcpIncoming {
                stream,
                peer: peer.to_string(),
                identity: self.identity.clone(),
                handshake_timeout: self.handshake_timeout,
            }) as Box<dyn Incoming>)
        })
    }
}

struct TcpIncoming {
    stream: TcpStream,
    peer: String,
    identity: Arc<Identity>,
    handshake_timeout: Duration,
}

impl Incoming for TcpIncoming {
    fn remote_addr(&self) -> String {
        self.peer.clone()
    }

    fn first_bytes(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut byte = [0u8; 1];
            let _ = self.stream.peek(&mut byte).await;
        })
    }

    fn upgrade(self: Box<Self>) -> BoxFuture<'static, Result<Link, TransportError>> {
        let this = *self;
        Box::pin(upgrade(
            this.stream,
            Role::Responder,
            this.identity,
            this.handshake_timeout,
        ))
    }
}

struct TcpSink {
    writer: NoiseWriter<WriteHalf<TcpStream>>,
}

impl FrameSink for TcpSink {
    fn send<'a>(&'a mut self, frame: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move { Ok(self.writer.write_all(frame).await?) })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.writer.shutdown().await;
        })
    }
}

struct TcpSource {
    reader: NoiseReader<ReadHalf<TcpStream>>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FrameSource for TcpSource {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Envelope>, LinkError>> {
        Box::pin(async move {
            loop {
                if let Some(env) = next_envelope(&self.decoder, &mut self.buf)? {
                    return Ok(Some(env));
                }
                if !self.reader.read_into(&mut self.buf).await? {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                    };
                }
            }
        })
    }
}
