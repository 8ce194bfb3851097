//! The transport abstraction: what the peer manager needs from a network.
//!
//! A [`Transport`] dials and listens; both produce a [`Link`]: an
//! authenticated, framed connection whose remote X25519 static key is known
//! (from the Noise handshake on TCP, from the simulated network in memory).
//! The hello exchange and everything above run on links and do not know
//! which transport made them, so one conformance suite covers both.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use micelio_wire::frame::FrameDecoder;
use micelio_wire::{Envelope, WireError};

use crate::error::{LinkError, TransportError};

/// A boxed, `Send` future: the traits here are object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The sending half of a link: takes whole encoded frames.
pub trait FrameSink: Send {
    /// Sends one encoded frame (header included).
    ///
    /// Not cancel safe: a cancelled send may have written part of the frame,
    /// after which the link must be dropped.
    fn send<'a>(&'a mut self, frame: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>>;

    /// Closes the sending direction; the peer's receiver sees end of stream.
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// The receiving half of a link: yields decoded envelopes.
pub trait FrameSource: Send {
    /// Receives the next envelope; `Ok(None)` at a clean end of stream.
    ///
    /// A frame whose envelope does not decode is reported as
    /// [`LinkError::BadEnvelope`] and consumed; the link stays usable. A bad
    /// frame header is fatal ([`LinkError::Frame`]).
    ///
    /// Cancel safety: not cancel safe on TCP (a cancelled read may lose part
    /// of a transport message); drop the link after cancelling.
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Envelope>, LinkError>>;
}

/// Whether we dialled the connection or accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialled (Noise initiator).
    Outbound,
    /// The peer dialled us (Noise responder).
    Inbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        })
    }
}

/// An authenticated, framed connection, before the hello.
pub struct Link {
    /// The peer's X25519 static key, as authenticated by the transport.
    pub remote_static: [u8; 32],
    /// The peer's socket address (for logs).
    pub remote_addr: String,
    /// Who dialled.
    pub direction: Direction,
    /// Sending half.
    pub sink: Box<dyn FrameSink>,
    /// Receiving half.
    pub source: Box<dyn FrameSource>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("remote_addr", &self.remote_addr)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// An accepted connection that has not been upgraded yet: the peer manager
/// may refuse it (over `max_peers`) before any handshake work.
pub trait Incoming: Send {
    /// The peer's socket address.
    fn remote_addr(&self) -> String;
    /// Waits until the peer has sent its first bytes (or closed), without
    /// consuming them: the manager tells silent connections from ones that
    /// make progress. Cancel safe. By default it returns at once.
    fn first_bytes(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Runs the responder side of the handshake.
    fn upgrade(self: Box<Self>) -> BoxFuture<'static, Result<Link, TransportError>>;
}

/// A bound listener.
pub trait Listener: Send {
    /// The address actually bound (port 0 resolved).
    fn local_addr(&self) -> String;
    /// Waits for the next connection. Cancel safe.
    fn accept(&mut self) -> BoxFuture<'_, Result<Box<dyn Incoming>, TransportError>>;
}

/// A way to reach peers: real TCP + Noise ([`crate::TcpTransport`]) or the
/// simulated network (`memory::MemoryNetwork`, cargo feature `memory`).
pub trait Transport: Send + Sync + 'static {
    /// Binds a listener on `addr` (`host:port`; port 0 picks one).
    fn listen<'a>(
        &'a self,
        addr: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Listener>, TransportError>>;
    /// Connects to `addr` and runs the initiator side of the handshake.
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Link, TransportError>>;
}

/// Takes the next whole envelope off a receive buffer, the step every
/// [`FrameSource`] shares: `Ok(None)` means "read more bytes".
pub(crate) fn next_envelope(
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Option<Envelope>, LinkError> {
    match decoder.decode_envelope(buf) {
        Ok(env) => Ok(env),
        Err(WireError::Frame(e)) => Err(LinkError::Frame(e)),
        Err(e) => Err(LinkError::BadEnvelope(e.to_string())),
    }
}
