//! [`Identity`] (the private keypair) and [`PublicKey`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::spki::ObjectIdentifier;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, KeypairBytes};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use pkcs8::der::pem::LineEnding;
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::node_id::NodeId;

/// Length of an Ed25519 seed (the private key proper).
pub const SEED_LEN: usize = 32;
/// Length of a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// OID of Ed25519 in PKCS#8 (RFC 8410).
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// The SSH key type name of Ed25519 keys.
const SSH_ED25519: &str = "ssh-ed25519";

/// A node's Ed25519 keypair.
///
/// Cloning copies the secret; the secret is zeroed when dropped. `Debug`
/// prints only the NodeId.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
    node_id: NodeId,
}

impl Identity {
    /// Generates a fresh keypair from the operating system's random source.
    ///
    /// # Errors
    /// [`crate::IdentityError::Random`] if the random source fails.
    pub fn generate() -> Result<Self, crate::IdentityError> {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        getrandom::fill(seed.as_mut()).map_err(|e| crate::IdentityError::Random(e.to_string()))?;
        Ok(Self::from_seed(*seed))
    }

    /// Builds the keypair of a 32-byte seed (deterministic; for tests and
    /// for loading).
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(&seed))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let public = PublicKey(signing.verifying_key());
        let node_id = NodeId::from_public_key(&public);
        Self {
            signing,
            public,
            node_id,
        }
    }

    /// Parses a PEM-encoded PKCS#8 Ed25519 private key (label `PRIVATE KEY`),
    /// in either the v1 form the reference writes or the v2 form that also
    /// carries the public key.
    ///
    /// # Errors
    /// [`KeyError::NotPem`], [`KeyError::WrongLabel`], [`KeyError::Malformed`]
    /// or [`KeyError::WrongAlgorithm`].
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, doc) =
            pkcs8::SecretDocument::from_pem(pem).map_err(|e| KeyError::NotPem(e.to_string()))?;
        if label != "PRIVATE KEY" {
            return Err(KeyError::WrongLabel(label.to_owned()));
        }
        let info = pkcs8::PrivateKeyInfoRef::try_from(doc.as_bytes())
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        if info.algorithm.oid != ED25519_OID {
            return Err(KeyError::WrongAlgorithm(info.algorithm.oid.to_string()));
        }
        let signing = SigningKey::from_pkcs8_der(doc.as_bytes())
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        Ok(Self::from_signing_key(signing))
    }

    /// Encodes the private key as PKCS#8 v1 PEM, exactly as the reference
    /// implementation writes `node.key` (64-column base64, LF line endings).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let bytes = KeypairBytes {
            secret_key: self.signing.to_bytes(),
            public_key: None,
        };
        match bytes.to_pkcs8_pem(LineEnding::LF) {
            Ok(pem) => pem,
            // Encoding 32 fixed bytes into a fixed structure cannot fail; the
            // arm exists only because the encoder's signature is fallible.
            Err(_) => Zeroizing::new(String::new()),
        }
    }

    /// The 32-byte seed. Handle with care: this is the node's secret.
    pub fn seed(&self) -> Zeroizing<[u8; SEED_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The NodeId of this keypair.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Signs `message` (deterministic Ed25519, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 private key used as the Noise static key: the first 32
    /// bytes of SHA-512(seed). X25519 clamps it when used.
    pub fn x25519_private(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }

    /// The X25519 public key matching [`Identity::x25519_private`].
    pub fn x25519_public(&self) -> [u8; 32] {
        self.public.to_x25519()
    }

    /// The public key as one OpenSSH `authorized_keys` line, with a trailing
    /// newline and no comment, as the reference writes `node.pub`.
    pub fn openssh_public_line(&self) -> String {
        self.public.to_openssh()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key, known to be a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 raw bytes.
    ///
    /// # Errors
    /// [`KeyError::PublicKeyLength`] or [`KeyError::InvalidPublicKey`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: &[u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::PublicKeyLength(bytes.len()))?;
        VerifyingKey::from_bytes(arr)
            .map(Self)
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.0.as_bytes()
    }

    /// The NodeId of this key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(self)
    }

    /// Verifies an Ed25519 signature over `message`.
    ///
    /// Uses the same cofactorless check as Go's `crypto/ed25519`, so that a
    /// signature accepted by reference nodes is accepted here and the other
    /// way round.
    ///
    /// # Errors
    /// [`KeyError::SignatureLength`] or [`KeyError::BadSignature`].
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| KeyError::SignatureLength(signature.len()))?;
        // `Verifier::verify` is RFC 8032 cofactorless verification that
        // requires a canonical `s`: the same acceptance rule as Go's.
        self.0
            .verify(message, &sig)
            .map_err(|_| KeyError::BadSignature)
    }

    /// The X25519 (Montgomery) form of this key, which Noise authenticates.
    pub fn to_x25519(&self) -> [u8; 32] {
        self.0.to_montgomery().to_bytes()
    }

    /// The OpenSSH line `ssh-ed25519 <base64>\n`.
    pub fn to_openssh(&self) -> String {
        let mut blob = Vec::with_capacity(4 + SSH_ED25519.len() + 4 + PUBLIC_KEY_LEN);
        push_ssh_string(&mut blob, SSH_ED25519.as_bytes());
        push_ssh_string(&mut blob, self.as_bytes());
        format!("{SSH_ED25519} {}\n", BASE64.encode(blob))
    }

    /// Parses an OpenSSH public key line (`ssh-ed25519 <base64> [comment]`).
    ///
    /// # Errors
    /// [`KeyError::OpenSsh`] when the line is not an `ssh-ed25519` key, or the
    /// errors of [`PublicKey::from_bytes`] for a bad key inside it.
    pub fn from_openssh(line: &str) -> Result<Self, KeyError> {
        let mut parts = line.split_ascii_whitespace();
        let kind = parts.next().ok_or(KeyError::OpenSsh("empty line"))?;
        if kind != SSH_ED25519 {
            return Err(KeyError::OpenSsh("key type is not ssh-ed25519"));
        }
        let b64 = parts.next().ok_or(KeyError::OpenSsh("no key data"))?;
        let blob = BASE64
            .decode(b64)
            .map_err(|_| KeyError::OpenSsh("key data is not base64"))?;
        let mut rest = blob.as_slice();
        let name = take_ssh_string(&mut rest).ok_or(KeyError::OpenSsh("truncated key data"))?;
        if name != SSH_ED25519.as_bytes() {
            return Err(KeyError::OpenSsh("embedded key type is not ssh-ed25519"));
        }
        let key = take_ssh_string(&mut rest).ok_or(KeyError::OpenSsh("truncated key data"))?;
        if !rest.is_empty() {
            return Err(KeyError::OpenSsh("trailing bytes in key data"));
        }
        Self::from_bytes(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.as_bytes()))
    }
}

fn push_ssh_string(out: &mut Vec<u8>, data: &[u8]) {
    // SSH wire strings: u32 BE length, then the bytes. Our inputs are tiny.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

fn take_ssh_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if tail.len() < len {
        return None;
    }
    let (s, tail) = tail.split_at(len);
    *rest = tail;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let id = Identity::from_seed([7; 32]);
        let sig = id.sign(b"m");
        id.public_key().verify(b"m", &sig).unwrap();
        assert_eq!(
            id.public_key().verify(b"n", &sig),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            id.public_key().verify(b"m", &sig[..63]),
            Err(KeyError::SignatureLength(63))
        );
    }

    #[test]
    fn pem_round_trip() {
        let id = Identity::from_seed([9; 32]);
        let pem = id.to_pkcs8_pem();
        let back = Identity::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.node_id(), id.node_id());
    }

    #[test]
    fn openssh_round_trip_and_errors() {
        let id = Identity::from_seed([3; 32]);
        let line = id.openssh_public_line();
        assert!(line.ends_with('\n'));
        let with_comment = format!("{} alice@example", line.trim_end());
        assert_eq!(PublicKey::from_openssh(&with_comment), Ok(id.public_key()));
        assert!(matches!(
            PublicKey::from_openssh("ssh-rsa AAAA"),
            Err(KeyError::OpenSsh(_))
        ));
        assert!(matches!(
            PublicKey::from_openssh("ssh-ed25519 !!!"),
            Err(KeyError::OpenSsh(_))
        ));
        assert!(matches!(
            PublicKey::from_openssh("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            Err(KeyError::OpenSsh(_))
        ));
        assert!(matches!(
            PublicKey::from_openssh(""),
            Err(KeyError::OpenSsh(_))
        ));
    }

    #[test]
    fn public_key_from_bad_bytes() {
        assert_eq!(
            PublicKey::from_bytes(&[1; 31]),
            Err(KeyError::PublicKeyLength(31))
        );
    }

    #[test]
    fn debug_hides_secret() {
        let id = Identity::from_seed([5; 32]);
        let dbg = format!("{id:?}");
        assert!(dbg.contains("node_id"));
        assert!(!dbg.contains("0505"));
    }
}
