//! SSH partyline server for micelio.
//!
//! Any plain `ssh` client reaches the partyline of a node:
//!
//! - [`SshServer`]: a russh server whose host key is the node identity.
//!   Public-key authentication only, against an OpenSSH `authorized_keys`
//!   file re-read when it changes ([`AuthorizedKeys`]), whose options fail
//!   closed (`from=` enforced, `restrict`/`no-pty` refuse a PTY, any other
//!   option refuses the key); passwords,
//!   keyboard-interactive, port, agent and X11 forwarding are all refused;
//!   modern algorithms only (curve25519 / ML-KEM key exchange, Ed25519 host
//!   key, ChaCha20-Poly1305 and AES-GCM). A semaphore bounds connections.
//! - Sessions with a PTY get the line [`editor`], with incoming lines printed
//!   above the input; sessions without a PTY read lines and print plain
//!   text; exec requests (`ssh host '/who'`) run one command and exit with
//!   its status.
//! - [`editor`]: the terminal line editor, a sans-IO state machine fed the
//!   raw bytes of the SSH channel ([`editor::Editor::feed`]) that returns
//!   [`editor::EditorEvent`]s and renders the exact bytes to write back.
//!
//! The crate knows nothing of gossip or the transport: it talks to a
//! [`micelio_partyline::Partyline`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod auth;
pub mod editor;
mod keyopts;
mod server;
mod session;

pub use auth::{AuthorizedKeys, KeyPermissions, KeyRefusal};
pub use server::{SshConfig, SshCounters, SshError, SshExit, SshServer, host_key};
