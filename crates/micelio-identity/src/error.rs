//! Error types of the identity crate.

use std::io;
use std::path::PathBuf;

/// What is wrong with key material given in memory (PEM text, raw bytes,
/// an OpenSSH line or a signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text holds no PEM block, or the PEM block is broken.
    #[error("not a PEM document: {0}")]
    NotPem(String),
    /// The PEM block is labelled something other than `PRIVATE KEY`.
    #[error("PEM label is {0:?}, expected \"PRIVATE KEY\" (PKCS#8)")]
    WrongLabel(String),
    /// The DER inside the PEM block is not a PKCS#8 private key.
    #[error("not a PKCS#8 private key: {0}")]
    Malformed(String),
    /// The PKCS#8 key is for another algorithm (the OID is given).
    #[error("key algorithm is {0}, expected Ed25519 (1.3.101.112)")]
    WrongAlgorithm(String),
    /// A raw public key does not have 32 bytes.
    #[error("an Ed25519 public key is 32 bytes, got {0}")]
    PublicKeyLength(usize),
    /// 32 bytes that do not encode a point on the curve.
    #[error("the bytes are not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// A line that is not `ssh-ed25519 <base64> [comment]`.
    #[error("not an OpenSSH ssh-ed25519 public key line: {0}")]
    OpenSsh(&'static str),
    /// A signature that does not have 64 bytes.
    #[error("an Ed25519 signature is 64 bytes, got {0}")]
    SignatureLength(usize),
    /// A well-formed signature that does not verify.
    #[error("the signature does not verify")]
    BadSignature,
}

/// Why the node identity could not be loaded or created on disk.
///
/// Every variant names the file concerned; none of them is ever resolved by
/// silently replacing the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The private key file does not exist (only from [`crate::KeyFiles::load`]).
    #[error("identity key {} does not exist", path.display())]
    Missing {
        /// The expected key file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file is not a PEM-encoded PKCS#8 private key.
    #[error("{} is malformed: {source}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: KeyError,
    },
    /// The key file is a valid PKCS#8 key, but not an Ed25519 one.
    #[error("{} is not an Ed25519 key (algorithm {found})", path.display())]
    WrongAlgorithm {
        /// The key file.
        path: PathBuf,
        /// The algorithm OID found in the file.
        found: String,
    },
    /// The key file can be read by its group or by others.
    #[error(
        "{} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `node.pub` exists but holds another key than `node.key`.
    #[error(
        "{} does not hold the public key of {}; remove it to have it rewritten",
        path.display(),
        key_path.display()
    )]
    PublicKeyMismatch {
        /// The public key file.
        path: PathBuf,
        /// The private key file it disagrees with.
        key_path: PathBuf,
    },
    /// The operating system's random source failed while generating a key.
    #[error("cannot generate a key: the system random source failed: {0}")]
    Random(String),
}
