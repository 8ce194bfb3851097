//! `authorized_keys`: who may log in, re-read whenever the file changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use russh::keys::ssh_key::{AuthorizedKeys as Parser, PublicKey};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Debug, Default)]
struct Cached {
    stamp: Option<Stamp>,
    keys: Vec<PublicKey>,
}

/// The keys allowed to log in, from an OpenSSH `authorized_keys` file.
///
/// The file is checked (one `stat`) at every authentication attempt and
/// parsed again when its size, inode or modification time changed, so keys
/// added or removed take effect without a restart. A missing file allows
/// nobody. Lines that do not parse are skipped with a warning; options
/// (`from=`, `command=` …) are not enforced and are logged once.
#[derive(Debug)]
pub struct AuthorizedKeys {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl AuthorizedKeys {
    /// The keys of the file at `path` (not read until needed).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(Cached::default()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `key` may log in.
    pub async fn allows(&self, key: &PublicKey) -> bool {
        let mut cached = self.cached.lock().await;
        self.refresh(&mut cached).await;
        cached.keys.iter().any(|k| k.key_data() == key.key_data())
    }

    /// How many keys are allowed now.
    pub async fn len(&self) -> usize {
        let mut cached = self.cached.lock().await;
        self.refresh(&mut cached).await;
        cached.keys.len()
    }

    /// Whether nobody may log in now.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    async fn refresh(&self, cached: &mut Cached) {
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(m) => {
                #[cfg(unix)]
                let inode = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let inode = 0;
                Some(Stamp {
                    modified: m.modified().ok(),
                    len: m.len(),
                    inode,
                })
            }
            Err(_) => None,
        };
        if stamp == cached.stamp && cached.stamp.is_some() {
            return;
        }
        let text = match stamp {
            Some(_) => tokio::fs::read_to_string(&self.path)
                .await
                .unwrap_or_else(|e| {
                    warn!(path = %self.path.display(), "cannot read authorized keys: {e}");
                    String::new()
                }),
            None => String::new(),
        };
        let (keys, bad, with_options) = parse(&text);
        if bad > 0 {
            warn!(path = %self.path.display(), bad, "skipped lines of authorized keys that do not parse");
        }
        if with_options > 0 {
            warn!(path = %self.path.display(), with_options, "authorized key options are not enforced by micelio");
        }
        if stamp.is_some() || cached.stamp.is_some() {
            info!(path = %self.path.display(), keys = keys.len(), "loaded authorized keys");
        }
        cached.stamp = stamp;
        cached.keys = keys;
    }
}

/// Parses `authorized_keys` text: (keys, unparseable lines, lines with
/// options).
fn parse(text: &str) -> (Vec<PublicKey>, usize, usize) {
    let mut keys = Vec::new();
    let (mut bad, mut with_options) = (0, 0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match Parser::new(line).next() {
            Some(Ok(entry)) => {
                if entry.config_opts().iter().next().is_some() {
                    with_options += 1;
                }
                keys.push(entry.public_key().clone());
            }
            // Options the parser does not take (quoted values, say): the key
            // starts at the first key-type word.
            _ => match key_after_options(line) {
                Some(key) => {
                    with_options += 1;
                    keys.push(key);
                }
                None => bad += 1,
            },
        }
    }
    (keys, bad, with_options)
}

/// The key of a line whose options come first: parsed from the first word
/// that names a key type.
fn key_after_options(line: &str) -> Option<PublicKey> {
    const TYPES: [&str; 4] = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"];
    let start = line
        .match_indices(' ')
        .map(|(i, _)| i + 1)
        .find(|&i| TYPES.iter().any(|t| line[i..].starts_with(t)))?;
    PublicKey::from_openssh(&line[start..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c alice@laptop";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";

    #[test]
    fn parsing_skips_junk() {
        let text =
            format!("# comment\n\n{ALICE}\nnot a key\nfrom=\"10.0.0.1,10.0.0.2\",no-pty {BOB}\n");
        let (keys, bad, opts) = parse(&text);
        assert_eq!(keys.len(), 2);
        assert_eq!(bad, 1);
        assert_eq!(opts, 1);
    }

    #[tokio::test]
    async fn changes_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let keys = AuthorizedKeys::new(&path);
        let alice = PublicKey::from_openssh(ALICE).unwrap();
        let bob = PublicKey::from_openssh(BOB).unwrap();
        assert!(!keys.allows(&alice).await, "no file, nobody");
        std::fs::write(&path, format!("{ALICE}\n")).unwrap();
        assert!(keys.allows(&alice).await);
        assert!(!keys.allows(&bob).await);
        std::fs::write(&path, format!("{ALICE}\n{BOB}\n")).unwrap();
        assert!(keys.allows(&bob).await, "appended key takes effect");
        std::fs::write(&path, format!("{BOB}\n")).unwrap();
        assert!(!keys.allows(&alice).await, "removed key is refused");
        std::fs::remove_file(&path).unwrap();
        assert!(!keys.allows(&bob).await);
    }
}
