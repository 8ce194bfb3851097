//! Node identity for micelio.
//!
//! Every micelio node owns exactly one Ed25519 keypair. The same key is the
//! node's SSH host key, its Noise static key (after conversion to X25519) and
//! the signer of every message it originates. This crate holds that key and
//! everything derived from it:
//!
//! - [`Identity`]: the private keypair, signing, the OpenSSH public line and
//!   the X25519 keys used by Noise;
//! - [`PublicKey`]: a peer's Ed25519 public key, signature verification and
//!   its X25519 form;
//! - [`NodeId`]: lowercase hex of SHA-256 of the 32-byte public key;
//! - [`KeyFiles`]: the on-disk layout `<data_dir>/identity/node.key`
//!   (PKCS#8 PEM, mode 0600, directory 0700) and `node.pub` (one OpenSSH
//!   line), byte-compatible with the Go reference implementation.
//!
//! The crate does no network I/O and has no async runtime.
//!
//! ```
//! use micelio_identity::{Identity, NodeId};
//!
//! let id = Identity::from_seed([1u8; 32]);
//! let sig = id.sign(b"hello mesh");
//! id.public_key().verify(b"hello mesh", &sig).unwrap();
//! assert_eq!(*id.node_id(), NodeId::from_public_key(&id.public_key()));
//! assert_eq!(id.node_id().to_string().len(), 64);
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod files;
mod keys;
mod node_id;

pub use error::{IdentityError, KeyError};
pub use files::{KeyFiles, Provenance};
pub use keys::{Identity, PUBLIC_KEY_LEN, PublicKey, SEED_LEN, SIGNATURE_LEN};
pub use node_id::{NODE_ID_HEX_LEN, NodeId, ParseNodeIdError};
