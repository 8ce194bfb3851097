//! Noise XX handshake and encrypted transport framing (SPEC 4.1).
//!
//! Micelio peers talk over TCP encrypted and mutually authenticated with
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s` (empty prologue, no PSK, empty
//! handshake payloads). The TCP dialer is the [`Role::Initiator`]. The static
//! key is the node identity converted to X25519
//! ([`Identity::x25519_private`]); after the handshake,
//! [`NoiseStream::remote_static`] is the peer's X25519 static key, which the
//! hello layer compares with the Ed25519 key the peer claims.
//!
//! On the wire, byte for byte as the Go reference implementation:
//!
//! - handshake messages: a 2-byte big-endian length, then the message;
//! - transport messages: a 4-byte big-endian ciphertext length, then the
//!   ciphertext (plaintext followed by a 16-byte Poly1305 tag). The
//!   ChaCha20-Poly1305 nonce is 32 zero bits followed by the 64-bit
//!   little-endian message counter; the associated data is empty.
//!
//! The reference sends every application frame, however large, as a single
//! transport message, while `snow` refuses transport messages over 65 535
//! bytes. So once the handshake is done this module takes the raw split keys
//! from `snow` and runs ChaCha20-Poly1305 itself ([`CipherState`]). Receivers
//! accept messages up to [`MAX_NOISE_TRANSPORT_MSG`] bytes; senders split
//! their plaintext into messages of at most [`MAX_NOISE_SEND_MSG`] bytes by
//! default ([`NoiseWriter::set_max_message_len`] changes that).
//!
//! The decrypted messages form a byte stream: [`NoiseReader::read_into`]
//! appends each message's plaintext to a caller-supplied buffer, and the frame
//! codec above cuts frames out of it.
//!
//! ```
//! use bytes::BytesMut;
//! use micelio_identity::Identity;
//! use micelio_transport::noise::{Role, handshake};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), micelio_transport::noise::NoiseError> {
//! let (a, b) = tokio::io::duplex(64 * 1024);
//! let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
//! let (dialer, listener) = tokio::join!(
//!     handshake(a, Role::Initiator, &alice),
//!     handshake(b, Role::Responder, &bob),
//! );
//! let (dialer, listener) = (dialer?, listener?);
//! assert_eq!(dialer.remote_static(), bob.x25519_public());
//! assert_eq!(listener.remote_static(), alice.x25519_public());
//!
//! let (_dialer_rx, mut dialer_tx) = dialer.into_split();
//! let (mut listener_rx, _listener_tx) = listener.into_split();
//! dialer_tx.write_all(b"hello mesh").await?;
//! let mut received = BytesMut::new();
//! assert!(listener_rx.read_into(&mut received).await?);
//! assert_eq!(&received[..], b"hello mesh");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;

use bytes::BytesMut;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use micelio_identity::Identity;
use micelio_wire::limits::{
    MAX_NOISE_HANDSHAKE_MSG, MAX_NOISE_SEND_MSG, MAX_NOISE_TRANSPORT_MSG, NOISE_TAG_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// The Noise protocol name micelio speaks.
pub const NOISE_PROTOCOL_NAME: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Length of a ChaCha20-Poly1305 key, as returned by the raw split.
pub const CIPHER_KEY_LEN: usize = 32;

/// Length of the big-endian length prefix of a transport message.
const TRANSPORT_LEN_PREFIX: usize = 4;

/// Length of the big-endian length prefix of a handshake message.
const HANDSHAKE_LEN_PREFIX: usize = 2;

/// Room for one handshake message we write. With empty payloads the largest
/// XX message (`e, ee, s, es`) is 32 + 48 + 16 = 96 bytes.
const HANDSHAKE_WRITE_ROOM: usize = 256;

/// Smallest amount of free space the reader offers to one `read` call.
const READ_CHUNK: usize = 8 * 1024;

/// Above this capacity, an empty read buffer is shrunk back, so that one
/// large message does not pin a megabyte per connection for ever.
const READ_SHRINK_ABOVE: usize = 256 * 1024;

/// The writer hands encrypted messages to the transport in batches of about
/// this many bytes, so that a large write costs few system calls.
const WRITE_BATCH: usize = 256 * 1024;

/// Above this capacity the write buffer is released after a write.
const WRITE_SHRINK_ABOVE: usize = 2 * WRITE_BATCH;

/// Which side of the handshake this node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that dialled the TCP connection; sends the first message.
    Initiator,
    /// The side that accepted the TCP connection.
    Responder,
}

/// Errors of the Noise handshake and transport.
///
/// Every error is fatal for the connection: the caller closes it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// The underlying stream failed, or closed in the middle of a handshake
    /// message or a transport message ([`io::ErrorKind::UnexpectedEof`]).
    #[error("noise transport i/o: {0}")]
    Io(#[from] io::Error),
    /// The handshake failed: the peer sent a malformed message, a message
    /// that does not authenticate, or `snow` rejected a step.
    #[error("noise handshake failed: {0}")]
    Handshake(#[from] snow::Error),
    /// A handshake message we produced does not fit the 2-byte length prefix
    /// (cannot happen with the empty payloads micelio sends).
    #[error("noise handshake message of {0} bytes exceeds 65535")]
    HandshakeMessageTooLong(usize),
    /// The handshake completed without the peer's static key (cannot happen
    /// with the XX pattern; checked rather than assumed).
    #[error("noise handshake finished without a 32-byte remote static key")]
    MissingRemoteStatic,
    /// A transport message length prefix is above
    /// [`MAX_NOISE_TRANSPORT_MSG`]. Detected before any buffer is sized for it.
    #[error(
        "noise transport message of {len} bytes exceeds the limit of {MAX_NOISE_TRANSPORT_MSG}"
    )]
    MessageTooLong {
        /// The length announced by the peer.
        len: usize,
    },
    /// A transport message is shorter than the 16-byte authentication tag.
    #[error("noise transport message of {len} bytes is shorter than the 16-byte tag")]
    MessageTooShort {
        /// The length announced by the peer.
        len: usize,
    },
    /// A transport message failed authentication (tampered, reordered, or
    /// encrypted under another key).
    #[error("noise transport message failed to decrypt")]
    Decrypt,
    /// Encryption failed (the plaintext exceeds what ChaCha20 can encrypt
    /// under one nonce; cannot happen with micelio's message sizes).
    #[error("noise transport message failed to encrypt")]
    Encrypt,
    /// The 64-bit message counter of one direction is used up; Noise
    /// forbids reusing a nonce, so the connection must be replaced.
    #[error("noise nonce counter exhausted")]
    NonceExhausted,
    /// An earlier [`NoiseWriter::write_all`] was cancelled or failed part
    /// way, so the encrypted stream is torn and the writer refuses to go on.
    #[error("noise writer unusable after an interrupted write")]
    WriterBroken,
}

/// One direction of the transport cipher: ChaCha20-Poly1305 under a raw
/// split key, with the message counter as nonce (32 zero bits, then the
/// counter as 64-bit little-endian) and empty associated data.
///
/// This is the Noise `CipherState` of SPEC 4.1 without the 65 535-byte cap.
/// The key is wiped when the value is dropped.
///
/// ```
/// use micelio_transport::noise::CipherState;
///
/// let key = [7u8; 32];
/// let (mut tx, mut rx) = (CipherState::new(&key), CipherState::new(&key));
/// let mut message = Vec::new();
/// tx.encrypt(b"frame bytes", &mut message)?;
/// assert_eq!(message.len(), 11 + 16);
/// let n = rx.decrypt_in_place(&mut message)?;
/// assert_eq!(&message[..n], b"frame bytes");
/// # Ok::<(), micelio_transport::noise::NoiseError>(())
/// ```
pub struct CipherState {
    /// Holds the key; zeroes it on drop.
    aead: ChaCha20Poly1305,
    /// Counter of the next message.
    nonce: u64,
}

impl CipherState {
    /// A cipher state under `key`, starting at message counter 0.
    pub fn new(key: &[u8; CIPHER_KEY_LEN]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(key.into()),
            nonce: 0,
        }
    }

    /// The counter the next message will use.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Encrypts `plaintext` as the next message and appends the ciphertext
    /// followed by the 16-byte tag to `out` (which is not cleared).
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let nonce = self.next_nonce()?;
        let start = out.len();
        out.reserve(plaintext.len() + NOISE_TAG_LEN);
        out.extend_from_slice(plaintext);
        match self
            .aead
            .encrypt_in_place_detached(&nonce, &[], &mut out[start..])
        {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                self.nonce += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(NoiseError::Encrypt)
            }
        }
    }

    /// Decrypts one message (ciphertext followed by the tag) in place and
    /// returns the plaintext length `n`: the plaintext is `message[..n]`.
    ///
    /// On failure `message` is left unchanged and the counter does not move.
    pub fn decrypt_in_place(&mut self, message: &mut [u8]) -> Result<usize, NoiseError> {
        let Some(n) = message.len().checked_sub(NOISE_TAG_LEN) else {
            return Err(NoiseError::MessageTooShort { len: message.len() });
        };
        let nonce = self.next_nonce()?;
        let (body, tag) = message.split_at_mut(n);
        self.aead
            .decrypt_in_place_detached(&nonce, &[], body, Tag::from_slice(tag))
            .map_err(|_| NoiseError::Decrypt)?;
        self.nonce += 1;
        Ok(n)
    }

    /// Nonce for the current counter, or an error once the counter reaches
    /// 2^64 − 1, which Noise reserves.
    fn next_nonce(&self) -> Result<Nonce, NoiseError> {
        if self.nonce == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        Ok(nonce_for(self.nonce))
    }
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// The 96-bit ChaCha20-Poly1305 nonce of message `counter`: 32 zero bits,
/// then the counter as 64-bit little-endian.
fn nonce_for(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(nonce)
}

/// Overwrites a raw key copy. Best effort: without the `zeroize` crate,
/// `black_box` keeps the compiler from dropping the dead store.
fn wipe(key: &mut [u8; CIPHER_KEY_LEN]) {
    key.fill(0);
    std::hint::black_box(key);
}

/// Runs the Noise XX handshake on `stream` as `role`, with the X25519 form of
/// `identity` as static key, and returns the encrypted stream.
///
/// The handshake payloads are empty; a payload sent by the peer is ignored.
/// The peer is authenticated only in the Noise sense: the caller must still
/// bind [`NoiseStream::remote_static`] to the peer's claimed identity.
///
/// # Cancel safety
///
/// Not cancel safe: cancelling it leaves `stream` in the middle of a
/// handshake, and the stream must be dropped. It has no deadline of its own,
/// so callers wrap it in [`tokio::time::timeout`] (a peer that says nothing
/// would otherwise hold it for ever).
pub async fn handshake<S>(
    mut stream: S,
    role: Role,
    identity: &Identity,
) -> Result<NoiseStream<S>, NoiseError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut state = {
        let params: snow::params::NoiseParams = NOISE_PROTOCOL_NAME.parse()?;
        let private = identity.x25519_private();
        let builder = snow::Builder::new(params).local_private_key(&private[..])?;
        match role {
            Role::Initiator => builder.build_initiator()?,
            Role::Responder => builder.build_responder()?,
        }
    };

    // One buffer for the message in flight (either direction), one for the
    // (ignored) payload of messages we read.
    let mut message = Vec::with_capacity(HANDSHAKE_LEN_PREFIX + HANDSHAKE_WRITE_ROOM);
    let mut payload = Vec::new();
    while !state.is_handshake_finished() {
        if state.is_my_turn() {
            message.clear();
            message.resize(HANDSHAKE_LEN_PREFIX + HANDSHAKE_WRITE_ROOM, 0);
            let n = state.write_message(&[], &mut message[HANDSHAKE_LEN_PREFIX..])?;
            let len = u16::try_from(n).map_err(|_| NoiseError::HandshakeMessageTooLong(n))?;
            message[..HANDSHAKE_LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
            stream
                .write_all(&message[..HANDSHAKE_LEN_PREFIX + n])
                .await?;
            stream.flush().await?;
        } else {
            let mut prefix = [0u8; HANDSHAKE_LEN_PREFIX];
            stream.read_exact(&mut prefix).await?;
            let len = usize::from(u16::from_be_bytes(prefix));
            debug_assert!(len <= MAX_NOISE_HANDSHAKE_MSG);
            message.clear();
            message.resize(len, 0);
            stream.read_exact(&mut message).await?;
            // A payload is never longer than the message that carries it.
            payload.clear();
            payload.resize(len, 0);
            state.read_message(&message, &mut payload)?;
        }
    }

    let remote_static: [u8; 32] = state
        .get_remote_static()
        .and_then(|key| key.try_into().ok())
        .ok_or(NoiseError::MissingRemoteStatic)?;
    // Noise `Split()`: the first key encrypts initiator → responder, the
    // second responder → initiator (proved against snow's own transport
    // state in `tests::raw_split_interoperates_with_snow_transport`).
    let (mut initiator_to_responder, mut responder_to_initiator) =
        state.dangerously_get_raw_split();
    drop(state);
    let (send, recv) = match role {
        Role::Initiator => (&initiator_to_responder, &responder_to_initiator),
        Role::Responder => (&responder_to_initiator, &initiator_to_responder),
    };
    let (send, recv) = (CipherState::new(send), CipherState::new(recv));
    wipe(&mut initiator_to_responder);
    wipe(&mut responder_to_initiator);
    tracing::trace!(?role, "noise handshake complete");

    Ok(NoiseStream {
        stream,
        send,
        recv,
        remote_static,
    })
}

/// A stream on which the Noise handshake has completed: the transport keys
/// of both directions and the peer's authenticated static key.
///
/// Split it with [`NoiseStream::into_split`] to read and write concurrently.
pub struct NoiseStream<S> {
    stream: S,
    send: CipherState,
    recv: CipherState,
    remote_static: [u8; 32],
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> NoiseStream<S> {
    /// The peer's X25519 static public key, authenticated by the handshake.
    pub fn remote_static(&self) -> [u8; 32] {
        self.remote_static
    }

    /// Splits the stream into an independent reader and writer.
    pub fn into_split(self) -> (NoiseReader<ReadHalf<S>>, NoiseWriter<WriteHalf<S>>) {
        let (read, write) = tokio::io::split(self.stream);
        (
            NoiseReader::new(read, self.recv),
            NoiseWriter::new(write, self.send),
        )
    }
}

impl<S> fmt::Debug for NoiseStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseStream")
            .field("remote_static", &HexKey(&self.remote_static))
            .finish_non_exhaustive()
    }
}

/// Lowercase hex of a public key, for `Debug` output.
struct HexKey<'a>(&'a [u8; 32]);

impl fmt::Debug for HexKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The receiving half: reads transport messages, decrypts them and yields
/// their plaintext as a byte stream.
///
/// Ciphertext is read into one reused buffer (several messages per system
/// call when they are available) and decrypted in place.
pub struct NoiseReader<R> {
    inner: R,
    cipher: CipherState,
    /// Bytes read from `inner`; `buf[pos..]` are not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    bytes_received: u64,
}

impl<R: AsyncRead + Unpin + Send> NoiseReader<R> {
    /// A reader decrypting what `inner` yields with `cipher`. Normally built
    /// by [`NoiseStream::into_split`].
    pub fn new(inner: R, cipher: CipherState) -> Self {
        Self {
            inner,
            cipher,
            buf: Vec::new(),
            pos: 0,
            bytes_received: 0,
        }
    }

    /// Reads one transport message, decrypts it and appends the plaintext to
    /// `out`.
    ///
    /// Returns `Ok(true)` when a message was read (its plaintext may be
    /// empty), and `Ok(false)` on a clean end of stream before any byte of a
    /// new message. An end of stream inside a message is an
    /// [`NoiseError::Io`] error of kind [`io::ErrorKind::UnexpectedEof`]. A
    /// length prefix above [`MAX_NOISE_TRANSPORT_MSG`] or below 16 is refused
    /// before anything is allocated for it. After an error the connection
    /// must be closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes read so far stay in the reader, and `out` is only
    /// touched when a whole message has been decrypted, so it can be used in
    /// `tokio::select!` and called again.
    pub async fn read_into(&mut self, out: &mut BytesMut) -> Result<bool, NoiseError> {
        loop {
            let have = self.buf.len() - self.pos;
            let need = if have >= TRANSPORT_LEN_PREFIX {
                let len = self.pending_len()?;
                let total = TRANSPORT_LEN_PREFIX + len;
                if have >= total {
                    self.decrypt_pending(len, out)?;
                    return Ok(true);
                }
                total
            } else {
                TRANSPORT_LEN_PREFIX
            };
            self.make_room(need);
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.len() == self.pos {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream closed inside a noise transport message",
                )
                .into());
            }
            self.bytes_received += n as u64;
        }
    }

    /// Bytes read from the transport so far: ciphertext including the length
    /// prefixes (and any bytes already buffered for the next message).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The validated length of the message whose prefix starts at `pos`.
    fn pending_len(&self) -> Result<usize, NoiseError> {
        let mut prefix = [0u8; TRANSPORT_LEN_PREFIX];
        prefix.copy_from_slice(&self.buf[self.pos..self.pos + TRANSPORT_LEN_PREFIX]);
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        if len > MAX_NOISE_TRANSPORT_MSG {
            return Err(NoiseError::MessageTooLong { len });
        }
        if len < NOISE_TAG_LEN {
            return Err(NoiseError::MessageTooShort { len });
        }
        Ok(len)
    }

    /// Decrypts the complete message of `len` bytes at `pos` and consumes it.
    fn decrypt_pending(&mut self, len: usize, out: &mut BytesMut) -> Result<(), NoiseError> {
        let start = self.pos + TRANSPORT_LEN_PREFIX;
        let end = start + len;
        let n = self.cipher.decrypt_in_place(&mut self.buf[start..end])?;
        out.extend_from_slice(&self.buf[start..start + n]);
        self.pos = end;
        Ok(())
    }

    /// Makes sure the buffer can take the `need` bytes the current message
    /// requires from `pos`, and offers at least [`READ_CHUNK`] to the read.
    /// `need` was validated against the limit by the caller.
    fn make_room(&mut self, need: usize) {
        let have = self.buf.len() - self.pos;
        if have == 0 {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > READ_SHRINK_ABOVE {
                self.buf.shrink_to(READ_CHUNK);
            }
        }
        let wanted = need.saturating_sub(have).max(READ_CHUNK);
        if self.buf.capacity() - self.buf.len() < wanted {
            if self.pos > 0 {
                // Move the unconsumed tail (less than one message) to the front.
                self.buf.copy_within(self.pos.., 0);
                self.buf.truncate(have);
                self.pos = 0;
            }
            self.buf.reserve(wanted);
        }
    }
}

impl<R> fmt::Debug for NoiseReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseReader")
            .field("cipher", &self.cipher)
            .field("buffered", &(self.buf.len() - self.pos))
            .field("bytes_received", &self.bytes_received)
            .finish_non_exhaustive()
    }
}

/// The sending half: encrypts plaintext into transport messages.
///
/// Messages are encrypted into one reused buffer and handed to the transport
/// in batches.
pub struct NoiseWriter<W> {
    inner: W,
    cipher: CipherState,
    buf: Vec<u8>,
    max_message_len: usize,
    bytes_sent: u64,
    /// Set while a write is in progress; still set afterwards if it was
    /// cancelled or failed.
    broken: bool,
}

impl<W: AsyncWrite + Unpin + Send> NoiseWriter<W> {
    /// A writer encrypting with `cipher` onto `inner`. Normally built by
    /// [`NoiseStream::into_split`].
    pub fn new(inner: W, cipher: CipherState) -> Self {
        Self {
            inner,
            cipher,
            buf: Vec::new(),
            max_message_len: MAX_NOISE_SEND_MSG,
            bytes_sent: 0,
            broken: false,
        }
    }

    /// Encrypts `plaintext` into as many transport messages as needed (each
    /// at most [`NoiseWriter::max_message_len`] bytes of ciphertext), writes
    /// them all, then flushes. An empty `plaintext` sends nothing.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled call may have written part of a message,
    /// so every later call fails with [`NoiseError::WriterBroken`] and the
    /// connection must be closed. The same holds after an error.
    pub async fn write_all(&mut self, plaintext: &[u8]) -> Result<(), NoiseError> {
        if self.broken {
            return Err(NoiseError::WriterBroken);
        }
        self.broken = true;
        let max_plaintext = self.max_message_len - NOISE_TAG_LEN;
        self.buf.clear();
        for chunk in plaintext.chunks(max_plaintext) {
            let len = chunk.len() + NOISE_TAG_LEN;
            // `len` ≤ MAX_NOISE_TRANSPORT_MSG, far below u32::MAX.
            let prefix = u32::try_from(len).map_err(|_| NoiseError::Encrypt)?;
            self.buf.extend_from_slice(&prefix.to_be_bytes());
            self.cipher.encrypt(chunk, &mut self.buf)?;
            if self.buf.len() >= WRITE_BATCH {
                self.send_batch().await?;
            }
        }
        if !self.buf.is_empty() {
            self.send_batch().await?;
        }
        self.inner.flush().await?;
        if self.buf.capacity() > WRITE_SHRINK_ABOVE {
            self.buf = Vec::new();
        }
        self.broken = false;
        Ok(())
    }

    /// Sets the largest ciphertext length per transport message this writer
    /// produces. The default is [`MAX_NOISE_SEND_MSG`] (65 535, what `snow`
    /// and the SPEC allow senders); raising it to [`MAX_NOISE_TRANSPORT_MSG`]
    /// sends each `write_all` of a frame as one message, like the reference.
    /// `len` is clamped to `17 ..= MAX_NOISE_TRANSPORT_MSG`.
    pub fn set_max_message_len(&mut self, len: usize) {
        self.max_message_len = len.clamp(NOISE_TAG_LEN + 1, MAX_NOISE_TRANSPORT_MSG);
    }

    /// The largest ciphertext length per transport message this writer
    /// produces.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Flushes and shuts down the write side of the transport (for TCP, a
    /// FIN), so that the peer's reader sees a clean end of stream.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense of [`AsyncWriteExt::shutdown`]: it can be
    /// called again.
    pub async fn shutdown(&mut self) -> Result<(), NoiseError> {
        self.inner.shutdown().await?;
        Ok(())
    }

    /// Bytes sent so far: ciphertext including the length prefixes.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Writes the encrypted batch in `buf` and empties it.
    async fn send_batch(&mut self) -> Result<(), NoiseError> {
        self.inner.write_all(&self.buf).await?;
        self.bytes_sent += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl<W> fmt::Debug for NoiseWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseWriter")
            .field("cipher", &self.cipher)
            .field("max_message_len", &self.max_message_len)
            .field("bytes_sent", &self.bytes_sent)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::{DuplexStream, duplex};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(20);
    const KEY: [u8; 32] = [0x42; 32];

    fn identity(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    /// Runs `fut` under the test deadline.
    async fn bounded<F: Future>(fut: F) -> F::Output {
        match timeout(LIMIT, fut).await {
            Ok(out) => out,
            Err(_) => panic!("test step exceeded {LIMIT:?}"),
        }
    }

    /// Handshakes a pair over a duplex pipe of `buffer` bytes.
    async fn pair(buffer: usize) -> (NoiseStream<DuplexStream>, NoiseStream<DuplexStream>) {
        let (a, b) = duplex(buffer);
        let (ida, idb) = (identity(1), identity(2));
        let (i, r) = bounded(async {
            tokio::join!(
                handshake(a, Role::Initiator, &ida),
                handshake(b, Role::Responder, &idb)
            )
        })
        .await;
        (i.unwrap(), r.unwrap())
    }

    /// Reads until `out` holds at least `n` bytes.
    async fn read_at_least<R: AsyncRead + Unpin + Send>(
        reader: &mut NoiseReader<R>,
        n: usize,
    ) -> BytesMut {
        let mut out = BytesMut::new();
        while out.len() < n {
            assert!(
                reader.read_into(&mut out).await.unwrap(),
                "eof after {} of {n} bytes",
                out.len()
            );
        }
        out
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A transport message (prefix + ciphertext) for `plaintext`.
    fn message(cipher: &mut CipherState, plaintext: &[u8]) -> Vec<u8> {
        let mut out = ((plaintext.len() + NOISE_TAG_LEN) as u32)
            .to_be_bytes()
            .to_vec();
        cipher.encrypt(plaintext, &mut out).unwrap();
        out
    }

    fn snow_state(id: &Identity, role: Role) -> snow::HandshakeState {
        let private = id.x25519_private();
        let builder = snow::Builder::new(NOISE_PROTOCOL_NAME.parse().unwrap())
            .local_private_key(&private[..])
            .unwrap();
        match role {
            Role::Initiator => builder.build_initiator().unwrap(),
            Role::Responder => builder.build_responder().unwrap(),
        }
    }

    #[tokio::test]
    async fn handshake_over_duplex_authenticates_both_sides() {
        let (i, r) = pair(64 * 1024).await;
        assert_eq!(i.remote_static(), identity(2).x25519_public());
        assert_eq!(r.remote_static(), identity(1).x25519_public());
        assert_eq!(
            identity(2).x25519_public(),
            identity(2).public_key().to_x25519()
        );
    }

    #[tokio::test]
    async fn handshake_and_transfer_over_tcp() {
        bounded(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (ida, idb) = (identity(3), identity(4));
            let dial = async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                handshake(tcp, Role::Initiator, &ida).await.unwrap()
            };
            let accept = async {
                let (tcp, _) = listener.accept().await.unwrap();
                handshake(tcp, Role::Responder, &idb).await.unwrap()
            };
            let (dialer, acceptor) = tokio::join!(dial, accept);
            assert_eq!(dialer.remote_static(), idb.x25519_public());
            assert_eq!(acceptor.remote_static(), ida.x25519_public());

            let (mut d_rx, mut d_tx) = dialer.into_split();
            let (mut a_rx, mut a_tx) = acceptor.into_split();
            let up = pattern(MAX_NOISE_TRANSPORT_MSG - NOISE_TAG_LEN, 1);
            let down = pattern(900 * 1024, 2);
            let ((), got_up, (), got_down) = tokio::join!(
                async {
                    d_tx.write_all(&up).await.unwrap();
                    d_tx.shutdown().await.unwrap();
                },
                async {
                    let got = read_at_least(&mut a_rx, up.len()).await;
                    let mut rest = BytesMut::new();
                    assert!(!a_rx.read_into(&mut rest).await.unwrap(), "clean eof");
                    got
                },
                async {
                    a_tx.write_all(&down).await.unwrap();
                    a_tx.shutdown().await.unwrap();
                },
                async {
                    let got = read_at_least(&mut d_rx, down.len()).await;
                    assert!(!d_rx.read_into(&mut BytesMut::new()).await.unwrap());
                    got
                },
            );
            assert_eq!(&got_up[..], &up[..]);
            assert_eq!(&got_down[..], &down[..]);
            assert_eq!(d_tx.bytes_sent(), a_rx.bytes_received());
            assert_eq!(a_tx.bytes_sent(), d_rx.bytes_received());
        })
        .await;
    }

    /// Completes an XX handshake between two plain snow states in memory.
    fn snow_handshake() -> (snow::HandshakeState, snow::HandshakeState) {
        let (mut i, mut r) = (
            snow_state(&identity(5), Role::Initiator),
            snow_state(&identity(6), Role::Responder),
        );
        let (mut msg, mut payload) = ([0u8; 256], [0u8; 256]);
        let mut turn = 0;
        while !(i.is_handshake_finished() && r.is_handshake_finished()) {
            let (from, to) = if turn % 2 == 0 {
                (&mut i, &mut r)
            } else {
                (&mut r, &mut i)
            };
            let n = from.write_message(&[], &mut msg).unwrap();
            to.read_message(&msg[..n], &mut payload).unwrap();
            turn += 1;
        }
        assert_eq!(turn, 3);
        (i, r)
    }

    /// Proves the key direction of the raw split and the nonce layout: what
    /// snow's own transport state encrypts, our `CipherState` decrypts, and
    /// the other way round, in both directions and over several counters.
    #[test]
    fn raw_split_interoperates_with_snow_transport() {
        let (mut i, mut r) = snow_handshake();
        let (i_k1, i_k2) = i.dangerously_get_raw_split();
        let (r_k1, r_k2) = r.dangerously_get_raw_split();
        assert_eq!(
            (i_k1, i_k2),
            (r_k1, r_k2),
            "both sides derive the same pair"
        );
        assert_ne!(i_k1, i_k2);
        let mut snow_i = i.into_transport_mode().unwrap();
        let mut snow_r = r.into_transport_mode().unwrap();

        // Our ciphers, assigned as `handshake` assigns them.
        let mut our_i_send = CipherState::new(&i_k1);
        let mut our_i_recv = CipherState::new(&i_k2);
        let mut our_r_send = CipherState::new(&r_k2);
        let mut our_r_recv = CipherState::new(&r_k1);

        let mut buf = vec![0u8; 70_000];
        for (round, size) in [0usize, 1, 100, 65_535 - 16].into_iter().enumerate() {
            let plain = pattern(size, round as u8);

            // snow initiator -> our responder (k1 is initiator -> responder).
            let n = snow_i.write_message(&plain, &mut buf).unwrap();
            let mut msg = buf[..n].to_vec();
            let m = our_r_recv.decrypt_in_place(&mut msg).unwrap();
            assert_eq!(&msg[..m], &plain[..]);

            // our initiator -> snow responder.
            let mut msg = Vec::new();
            our_i_send.encrypt(&plain, &mut msg).unwrap();
            let m = snow_r.read_message(&msg, &mut buf).unwrap();
            assert_eq!(&buf[..m], &plain[..]);

            // snow responder -> our initiator (k2 is responder -> initiator).
            let n = snow_r.write_message(&plain, &mut buf).unwrap();
            let mut msg = buf[..n].to_vec();
            let m = our_i_recv.decrypt_in_place(&mut msg).unwrap();
            assert_eq!(&msg[..m], &plain[..]);

            // our responder -> snow initiator.
            let mut msg = Vec::new();
            our_r_send.encrypt(&plain, &mut msg).unwrap();
            let m = snow_i.read_message(&msg, &mut buf).unwrap();
            assert_eq!(&buf[..m], &plain[..]);
        }
        assert_eq!(our_i_send.nonce(), 4);
        assert_eq!(snow_r.receiving_nonce(), 4);

        // The swapped assignment does not decrypt.
        let n = snow_i.write_message(b"x", &mut buf).unwrap();
        let mut wrong = CipherState::new(&i_k2);
        assert!(matches!(
            wrong.decrypt_in_place(&mut buf[..n].to_vec()),
            Err(NoiseError::Decrypt)
        ));
    }

    /// The nonce is 32 zero bits then the little-endian counter.
    #[test]
    fn nonce_layout_is_zero_prefix_then_le_counter() {
        let mut ours = CipherState::new(&KEY);
        let reference = ChaCha20Poly1305::new((&KEY).into());
        for counter in 0u64..3 {
            let mut ct = Vec::new();
            ours.encrypt(b"payload", &mut ct).unwrap();
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let mut expected = b"payload".to_vec();
            let tag = reference
                .encrypt_in_place_detached(&Nonce::from(nonce), &[], &mut expected)
                .unwrap();
            expected.extend_from_slice(&tag);
            assert_eq!(ct, expected);
        }
        assert_eq!(
            nonce_for(0x0102).as_slice(),
            &[0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    /// Our `handshake` and framing against a peer written with plain snow and
    /// the SPEC framing (2-byte handshake prefix, 4-byte transport prefix).
    #[tokio::test]
    async fn interoperates_with_a_plain_snow_peer() {
        let (ours, mut theirs) = duplex(64 * 1024);
        let id = identity(7);
        let peer = async {
            let mut hs = snow_state(&identity(8), Role::Responder);
            let (mut msg, mut payload) = (vec![0u8; 1024], vec![0u8; 1024]);
            while !hs.is_handshake_finished() {
                if hs.is_my_turn() {
                    let n = hs.write_message(&[], &mut msg).unwrap();
                    theirs.write_all(&(n as u16).to_be_bytes()).await.unwrap();
                    theirs.write_all(&msg[..n]).await.unwrap();
                } else {
                    let len = theirs.read_u16().await.unwrap() as usize;
                    theirs.read_exact(&mut msg[..len]).await.unwrap();
                    hs.read_message(&msg[..len], &mut payload).unwrap();
                }
            }
            let mut ts = hs.into_transport_mode().unwrap();
            let len = theirs.read_u32().await.unwrap() as usize;
            let mut ct = vec![0u8; len];
            theirs.read_exact(&mut ct).await.unwrap();
            let n = ts.read_message(&ct, &mut payload).unwrap();
            assert_eq!(&payload[..n], b"ping from micelio-rs");
            let n = ts.write_message(b"pong from snow", &mut msg).unwrap();
            theirs.write_all(&(n as u32).to_be_bytes()).await.unwrap();
            theirs.write_all(&msg[..n]).await.unwrap();
        };
        let me = async {
            let stream = handshake(ours, Role::Initiator, &id).await.unwrap();
            assert_eq!(stream.remote_static(), identity(8).x25519_public());
            let (mut rx, mut tx) = stream.into_split();
            tx.write_all(b"ping from micelio-rs").await.unwrap();
            let got = read_at_least(&mut rx, 14).await;
            assert_eq!(&got[..], b"pong from snow");
        };
        bounded(async { tokio::join!(peer, me) }).await;
    }

    /// 900 KiB and 1 MiB + 8 both ways at once, through a small pipe so that
    /// reads are partial; default splitting into ≤ 65 535-byte messages.
    #[tokio::test]
    async fn large_plaintexts_cross_in_both_directions() {
        let (i, r) = pair(16 * 1024).await;
        let (mut i_rx, mut i_tx) = i.into_split();
        let (mut r_rx, mut r_tx) = r.into_split();
        for size in [900 * 1024, (1 << 20) + 8] {
            let up = pattern(size, 3);
            let down = pattern(size, 4);
            let (_, got_up, _, got_down) = bounded(async {
                tokio::join!(
                    async { i_tx.write_all(&up).await.unwrap() },
                    read_at_least(&mut r_rx, size),
                    async { r_tx.write_all(&down).await.unwrap() },
                    read_at_least(&mut i_rx, size),
                )
            })
            .await;
            assert_eq!(got_up.len(), size, "no bytes beyond the write");
            assert_eq!(&got_up[..], &up[..]);
            assert_eq!(&got_down[..], &down[..]);
        }
        // 17 messages of ≤ 65 535 bytes for 1 MiB + 8, 15 for 900 KiB.
        let expected = (900 * 1024 + 15 * (4 + 16)) + ((1 << 20) + 8 + 17 * (4 + 16));
        assert_eq!(i_tx.bytes_sent(), expected as u64);
        assert_eq!(r_rx.bytes_received(), expected as u64);
    }

    /// A writer configured like the reference sends one 1 MiB + 8 message,
    /// and a single `read_into` returns all of it.
    #[tokio::test]
    async fn single_message_above_65535_is_accepted() {
        let (i, r) = pair(64 * 1024).await;
        let (_i_rx, mut i_tx) = i.into_split();
        let (mut r_rx, _r_tx) = r.into_split();
        i_tx.set_max_message_len(MAX_NOISE_TRANSPORT_MSG);
        assert_eq!(i_tx.max_message_len(), MAX_NOISE_TRANSPORT_MSG);
        let frame = pattern(MAX_NOISE_TRANSPORT_MSG - NOISE_TAG_LEN, 9);
        let mut out = BytesMut::new();
        let (_, read) = bounded(async {
            tokio::join!(
                async { i_tx.write_all(&frame).await.unwrap() },
                r_rx.read_into(&mut out)
            )
        })
        .await;
        assert!(read.unwrap());
        assert_eq!(out.len(), frame.len());
        assert_eq!(&out[..], &frame[..]);
        assert_eq!(i_tx.bytes_sent(), (4 + MAX_NOISE_TRANSPORT_MSG) as u64);
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_without_allocating() {
        for len in [MAX_NOISE_TRANSPORT_MSG as u32 + 1, u32::MAX] {
            let mut wire = len.to_be_bytes().to_vec();
            wire.extend_from_slice(&[0u8; 64]);
            let mut reader = NoiseReader::new(&wire[..], CipherState::new(&KEY));
            let mut out = BytesMut::new();
            let err = bounded(reader.read_into(&mut out)).await.unwrap_err();
            assert!(
                matches!(err, NoiseError::MessageTooLong { len: l } if l == len as usize),
                "{err:?}"
            );
            assert!(
                reader.buf.capacity() <= 2 * READ_CHUNK,
                "no buffer sized for it"
            );
            assert!(out.is_empty());
        }
        // The limit itself is fine (the message is then truncated here).
        let wire = (MAX_NOISE_TRANSPORT_MSG as u32).to_be_bytes();
        let mut reader = NoiseReader::new(&wire[..], CipherState::new(&KEY));
        let err = bounded(reader.read_into(&mut BytesMut::new()))
            .await
            .unwrap_err();
        assert!(matches!(&err, NoiseError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn short_and_empty_messages() {
        let wire = 15u32.to_be_bytes();
        let mut reader = NoiseReader::new(&wire[..], CipherState::new(&KEY));
        let err = bounded(reader.read_into(&mut BytesMut::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, NoiseError::MessageTooShort { len: 15 }));

        // A 16-byte message carries empty plaintext and is valid.
        let mut tx = CipherState::new(&KEY);
        let mut wire = message(&mut tx, b"");
        wire.extend(message(&mut tx, b"after"));
        let mut reader = NoiseReader::new(&wire[..], CipherState::new(&KEY));
        let mut out = BytesMut::new();
        assert!(bounded(reader.read_into(&mut out)).await.unwrap());
        assert!(out.is_empty());
        assert!(bounded(reader.read_into(&mut out)).await.unwrap());
        assert_eq!(&out[..], b"after");
        assert!(!bounded(reader.read_into(&mut out)).await.unwrap());
        assert_eq!(reader.bytes_received(), wire.len() as u64);
    }

    #[tokio::test]
    async fn tampered_ciphertext_fails_to_decrypt() {
        let mut tx = CipherState::new(&KEY);
        let mut wire = message(&mut tx, b"genuine frame bytes");
        wire[10] ^= 0x01;
        let mut reader = NoiseReader::new(&wire[..], CipherState::new(&KEY));
        let mut out = BytesMut::new();
        let err = bounded(reader.read_into(&mut out)).await.unwrap_err();
        assert!(matches!(err, NoiseError::Decrypt), "{err:?}");
        assert!(out.is_empty());

        // Replaying a message (counter mismatch) fails too.
        let mut tx = CipherState::new(&KEY);
        let first = message(&mut tx, b"once");
        let wire = [first.clone(), first].concat();
        let mut reader = NoiseReader::new(&wire[..], CipherState::new(&KEY));
        assert!(bounded(reader.read_into(&mut out)).await.unwrap());
        let err = bounded(reader.read_into(&mut out)).await.unwrap_err();
        assert!(matches!(err, NoiseError::Decrypt));
    }

    #[tokio::test]
    async fn truncated_message_is_unexpected_eof() {
        let mut tx = CipherState::new(&KEY);
        let wire = message(&mut tx, b"cut short");
        let mut reader = NoiseReader::new(&wire[..wire.len() - 3], CipherState::new(&KEY));
        let err = bounded(reader.read_into(&mut BytesMut::new()))
            .await
            .unwrap_err();
        assert!(matches!(&err, NoiseError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
        // A cut inside the length prefix too.
        let mut reader = NoiseReader::new(&wire[..2], CipherState::new(&KEY));
        assert!(
            bounded(reader.read_into(&mut BytesMut::new()))
                .await
                .is_err()
        );
    }

    /// Runs our handshake as `role` against a peer that writes `garbage` and
    /// closes, and returns our result.
    async fn against_garbage(role: Role, garbage: Vec<u8>) -> Result<(), NoiseError> {
        let (ours, mut theirs) = duplex(256 * 1024);
        let id = identity(10);
        // Write the garbage, half-close, then drain whatever we send until
        // our side drops the stream: only our handshake can end this.
        let peer = async move {
            let _ = theirs.write_all(&garbage).await;
            let _ = theirs.shutdown().await;
            let _ = theirs.read_to_end(&mut Vec::new()).await;
        };
        let (_, result) = bounded(async { tokio::join!(peer, handshake(ours, role, &id)) }).await;
        result.map(|_| ())
    }

    /// A 32-byte random message 1 (or 2), then a 65 535-byte random message.
    fn random_msgs_for_roles() -> Vec<u8> {
        let mut wire = vec![0, 32];
        wire.extend(pattern(32, 1));
        wire.extend([0xff, 0xff]);
        wire.extend(pattern(65_535, 2));
        wire
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_an_error() {
        let http = b"GET / HTTP/1.1\r\nHost: node\r\n\r\n".to_vec();
        let random_msgs = random_msgs_for_roles();
        let cases = [
            vec![],
            vec![0x00],
            vec![0, 0],
            vec![0, 5, 1, 2, 3, 4, 5],
            http,
            random_msgs,
            pattern(200_000, 3),
        ];
        for garbage in cases {
            for role in [Role::Initiator, Role::Responder] {
                let len = garbage.len();
                let result = against_garbage(role, garbage.clone()).await;
                assert!(result.is_err(), "{role:?} accepted {len} garbage bytes");
            }
        }
        // Well-formed prefixes around random bytes: the responder takes the
        // random message 1 (any 32 bytes are an ephemeral key) and then fails
        // to authenticate message 3; the initiator rejects message 2.
        for role in [Role::Initiator, Role::Responder] {
            let err = against_garbage(role, random_msgs_for_roles())
                .await
                .unwrap_err();
            assert!(matches!(err, NoiseError::Handshake(_)), "{role:?}: {err:?}");
        }
    }

    #[tokio::test]
    async fn handshake_cut_in_the_middle_is_an_error() {
        // The responder closes after half of message 2.
        let (ours, mut theirs) = duplex(64 * 1024);
        let id = identity(11);
        let peer = async move {
            let mut hs = snow_state(&identity(12), Role::Responder);
            let len = theirs.read_u16().await.unwrap() as usize;
            let mut msg = vec![0u8; len];
            theirs.read_exact(&mut msg).await.unwrap();
            hs.read_message(&msg, &mut [0u8; 64]).unwrap();
            let mut out = [0u8; 256];
            let n = hs.write_message(&[], &mut out).unwrap();
            theirs.write_all(&(n as u16).to_be_bytes()).await.unwrap();
            theirs.write_all(&out[..n / 2]).await.unwrap();
        };
        let (_, result) =
            bounded(async { tokio::join!(peer, handshake(ours, Role::Initiator, &id)) }).await;
        let err = result.unwrap_err();
        assert!(matches!(&err, NoiseError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));

        // The initiator closes after message 1.
        let (ours, mut theirs) = duplex(64 * 1024);
        let peer = async move {
            let hs = &mut snow_state(&identity(13), Role::Initiator);
            let mut out = [0u8; 256];
            let n = hs.write_message(&[], &mut out).unwrap();
            theirs.write_all(&(n as u16).to_be_bytes()).await.unwrap();
            theirs.write_all(&out[..n]).await.unwrap();
        };
        let (_, result) =
            bounded(async { tokio::join!(peer, handshake(ours, Role::Responder, &id)) }).await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn read_into_is_cancel_safe() {
        let (i, r) = pair(1024).await;
        let (_i_rx, mut i_tx) = i.into_split();
        let (mut r_rx, _r_tx) = r.into_split();
        let data = pattern(200_000, 5);
        let mut out = BytesMut::new();
        bounded(async {
            let write = async { i_tx.write_all(&data).await.unwrap() };
            let read = async {
                // Cancel `read_into` after each poll that makes no progress.
                while out.len() < data.len() {
                    tokio::select! {
                        biased;
                        res = r_rx.read_into(&mut out) => assert!(res.unwrap()),
                        () = tokio::task::yield_now() => {}
                    }
                }
            };
            tokio::join!(write, read)
        })
        .await;
        assert_eq!(&out[..], &data[..]);
    }

    #[tokio::test]
    async fn cancelled_write_breaks_the_writer() {
        let (i, _r) = pair(1024).await;
        let (_i_rx, mut i_tx) = i.into_split();
        let data = pattern(100_000, 6);
        tokio::select! {
            biased;
            _ = i_tx.write_all(&data) => panic!("a 1 KiB pipe cannot take 100 KB"),
            () = std::future::ready(()) => {}
        }
        let err = bounded(i_tx.write_all(b"more")).await.unwrap_err();
        assert!(matches!(err, NoiseError::WriterBroken));
    }

    #[test]
    fn nonce_exhaustion_is_an_error() {
        let mut c = CipherState::new(&KEY);
        c.nonce = u64::MAX - 1;
        let mut out = Vec::new();
        c.encrypt(b"last", &mut out).unwrap();
        assert!(matches!(
            c.encrypt(b"one too many", &mut out),
            Err(NoiseError::NonceExhausted)
        ));
        assert!(matches!(
            c.decrypt_in_place(&mut [0u8; 20]),
            Err(NoiseError::NonceExhausted)
        ));
    }

    #[test]
    fn max_message_len_is_clamped() {
        let mut w = NoiseWriter::new(tokio::io::sink(), CipherState::new(&KEY));
        assert_eq!(w.max_message_len(), MAX_NOISE_SEND_MSG);
        w.set_max_message_len(0);
        assert_eq!(w.max_message_len(), NOISE_TAG_LEN + 1);
        w.set_max_message_len(usize::MAX);
        assert_eq!(w.max_message_len(), MAX_NOISE_TRANSPORT_MSG);
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let id = identity(1);
        let (a, _b) = duplex(16);
        let fut = handshake(a, Role::Initiator, &id);
        assert_send(&fut);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn chunks_read_back_as_their_concatenation(
            chunks in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..3000), 0..12),
            max_len in 17usize..5000,
            pipe in 64usize..8192,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let expected = chunks.concat();
            let got = rt.block_on(async {
                let (i, r) = pair(pipe).await;
                let (_i_rx, mut tx) = i.into_split();
                let (mut rx, _r_tx) = r.into_split();
                tx.set_max_message_len(max_len);
                let write = async {
                    for chunk in &chunks {
                        tx.write_all(chunk).await.unwrap();
                    }
                    tx.shutdown().await.unwrap();
                };
                let read = async {
                    let mut out = BytesMut::new();
                    while rx.read_into(&mut out).await.unwrap() {}
                    out
                };
                let ((), out) = bounded(async { tokio::join!(write, read) }).await;
                assert_eq!(tx.bytes_sent(), rx.bytes_received());
                out
            });
            prop_assert_eq!(&got[..], &expected[..]);
        }
    }
}
