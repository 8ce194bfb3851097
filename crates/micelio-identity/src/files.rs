//! [`KeyFiles`]: the identity's on-disk layout.
//!
//! ```text
//! <data_dir>/identity/          mode 0700
//! <data_dir>/identity/node.key  PKCS#8 PEM "PRIVATE KEY", mode 0600
//! <data_dir>/identity/node.pub  "ssh-ed25519 <base64>\n", mode 0644
//! ```
//!
//! This is the layout the Go reference writes, so a data dir made by it loads
//! unchanged.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::error::{IdentityError, KeyError};
use crate::keys::{Identity, PublicKey};

/// Name of the identity directory inside a data dir.
const IDENTITY_DIR: &str = "identity";
/// Name of the private key file.
const KEY_FILE: &str = "node.key";
/// Name of the public key file.
const PUB_FILE: &str = "node.pub";

/// Whether [`KeyFiles::load_or_create`] found a key or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// An existing `node.key` was loaded.
    Loaded,
    /// No `node.key` existed; a new identity was generated and written.
    Created,
}

/// The identity files of one data dir.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use micelio_identity::{KeyFiles, Provenance};
///
/// let dir = tempfile::tempdir()?;
/// let files = KeyFiles::new(dir.path());
/// let (first, how) = files.load_or_create()?;
/// assert_eq!(how, Provenance::Created);
/// let (again, how) = files.load_or_create()?;
/// assert_eq!(how, Provenance::Loaded);
/// assert_eq!(first.node_id(), again.node_id());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    /// The identity files under `data_dir` (nothing is touched yet).
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        Self {
            dir: data_dir.as_ref().join(IDENTITY_DIR),
        }
    }

    /// `<data_dir>/identity`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<data_dir>/identity/node.key`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// `<data_dir>/identity/node.pub`.
    pub fn pub_path(&self) -> PathBuf {
        self.dir.join(PUB_FILE)
    }

    /// Loads the identity, creating and persisting a new one if `node.key`
    /// does not exist.
    ///
    /// An existing key that cannot be used is an error, never a reason to
    /// generate another: the node's identity must not change behind the
    /// operator's back.
    ///
    /// # Errors
    /// Every [`IdentityError`] of [`KeyFiles::load`] except `Missing`, and
    /// `Write`/`Random` when creating.
    pub fn load_or_create(&self) -> Result<(Identity, Provenance), IdentityError> {
        match self.load() {
            Ok(id) => Ok((id, Provenance::Loaded)),
            Err(IdentityError::Missing { .. }) => {
                let id = Identity::generate()?;
                self.create(&id)?;
                Ok((id, Provenance::Created))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing identity.
    ///
    /// Checks, in order: the key file exists, is not readable by group or
    /// others, can be read, and is an Ed25519 PKCS#8 PEM key. If `node.pub`
    /// is missing it is rewritten; if it holds another key, that is an error.
    ///
    /// # Errors
    /// `Missing`, `TooOpen`, `Read`, `Malformed`, `WrongAlgorithm`,
    /// `PublicKeyMismatch`, or `Write` when `node.pub` must be rewritten.
    pub fn load(&self) -> Result<Identity, IdentityError> {
        let key_path = self.key_path();
        let meta = match fs::metadata(&key_path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing { path: key_path });
            }
            Err(source) => {
                return Err(IdentityError::Read {
                    path: key_path,
                    source,
                });
            }
        };
        check_private_mode(&key_path, &meta)?;
        let bytes = fs::read(&key_path).map_err(|source| IdentityError::Read {
            path: key_path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| IdentityError::Malformed {
            path: key_path.clone(),
            source: KeyError::NotPem("the file is not text".into()),
        })?;
        let id = Identity::from_pkcs8_pem(&text).map_err(|e| match e {
            KeyError::WrongAlgorithm(found) => IdentityError::WrongAlgorithm {
                path: key_path.clone(),
                found,
            },
            source => IdentityError::Malformed {
                path: key_path.clone(),
                source,
            },
        })?;
        self.check_or_write_pub(&id)?;
        Ok(id)
    }

    /// Writes a new identity: creates the directory (0700), then `node.key`
    /// (0600, never overwriting an existing file) and `node.pub`.
    ///
    /// # Errors
    /// `Write` if the directory or a file cannot be created, including when
    /// `node.key` already exists.
    pub fn create(&self, id: &Identity) -> Result<(), IdentityError> {
        create_private_dir(&self.dir)?;
        let key_path = self.key_path();
        let pem = id.to_pkcs8_pem();
        write_new_file(&key_path, pem.as_bytes(), 0o600)?;
        write_replace(&self.pub_path(), id.openssh_public_line().as_bytes())
    }

    fn check_or_write_pub(&self, id: &Identity) -> Result<(), IdentityError> {
        let pub_path = self.pub_path();
        match fs::read_to_string(&pub_path) {
            Ok(line) => match PublicKey::from_openssh(&line) {
                Ok(pk) if pk == id.public_key() => Ok(()),
                _ => Err(IdentityError::PublicKeyMismatch {
                    path: pub_path,
                    key_path: self.key_path(),
                }),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_replace(&pub_path, id.openssh_public_line().as_bytes())
            }
            Err(source) => Err(IdentityError::Read {
                path: pub_path,
                source,
            }),
        }
    }
}

#[cfg(unix)]
fn check_private_mode(path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path, _meta: &fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let wrap = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = opts.open(path).map_err(wrap)?;
    file.write_all(data).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}

fn write_replace(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    fs::write(path, data).map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}
