//! `authorized_keys`: who may log in, re-read whenever the file changes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use russh::keys::ssh_key::PublicKey;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::keyopts::{OptionError, Options, parse_options, split_options};

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
    entries: Vec<Entry>,
}

/// One key line of the file.
#[derive(Debug)]
struct Entry {
    /// 1-based line number.
    line: usize,
    key: PublicKey,
    /// What the line's options grant, or why they refuse the key.
    rule: Result<Options, OptionError>,
}

/// What a key that may log in is allowed to do, from its line's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPermissions {
    /// Whether the client may have a PTY (`no-pty` and `restrict` clear
    /// it; `pty` after `restrict` sets it again).
    pub pty: bool,
}

/// Why a key may not log in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRefusal {
    /// The key is on no line of the file.
    #[error("not in authorized_keys")]
    NotListed,
    /// Every line with the key has a `from=` list that does not allow the
    /// client's address (the last such line is named).
    #[error("{client} is not allowed by the from= option of line {line}")]
    From {
        /// The line.
        line: usize,
        /// The client's address.
        client: IpAddr,
    },
    /// The key's line carries an option micelio does not implement or
    /// cannot read, so it is refused rather than let in unrestricted.
    #[error("line {line}: {reason}")]
    Options {
        /// The line.
        line: usize,
        /// The option and what is wrong with it.
        reason: String,
    },
}

/// The keys allowed to log in, from an OpenSSH `authorized_keys` file.
///
/// The file is checked (one `stat`) at every authentication attempt and
/// parsed again when its size, inode or modification time changed, so keys
/// added or removed take effect without a restart. A missing file allows
/// nobody. Lines that do not parse are skipped with a warning.
///
/// Options fail closed: `from="pattern-list"` is enforced on the client's
/// IP address (host names are not resolved), `restrict` and `no-pty` refuse
/// a PTY, the forwarding restrictions are always in force anyway, and a
/// line with any other option (`command=`, `environment=`,
/// `cert-authority`, …) refuses its key. Each such line is logged once per
/// reload with the file, the line number and the option. As in sshd, the
/// first line with the key whose options allow the client is used.
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

    /// Whether `key` may log in from `client`, and with what permissions.
    ///
    /// Cancel safety: safe to cancel (the file is re-read at the next call).
    ///
    /// # Errors
    /// [`KeyRefusal`]: why not.
    pub async fn check(
        &self,
        key: &PublicKey,
        client: IpAddr,
    ) -> Result<KeyPermissions, KeyRefusal> {
        let mut cached = self.cached.lock().await;
        self.refresh(&mut cached).await;
        let mut refusal = KeyRefusal::NotListed;
        for entry in cached
            .entries
            .iter()
            .filter(|e| e.key.key_data() == key.key_data())
        {
            match &entry.rule {
                Ok(options) if options.from.iter().all(|f| f.allows(client)) => {
                    return Ok(KeyPermissions { pty: options.pty });
                }
                Ok(_) => {
                    refusal = KeyRefusal::From {
                        line: entry.line,
                        client: client.to_canonical(),
                    };
                }
                Err(e) => {
                    refusal = KeyRefusal::Options {
                        line: entry.line,
                        reason: e.to_string(),
                    };
                }
            }
        }
        Err(refusal)
    }

    /// How many lines allow a key now (from some address, at least).
    pub async fn len(&self) -> usize {
        let mut cached = self.cached.lock().await;
        self.refresh(&mut cached).await;
        cached.entries.iter().filter(|e| e.rule.is_ok()).count()
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
        let (entries, bad) = parse(&text);
        let path = self.path.display();
        for line in &bad {
            warn!(%path, line, "skipped a line of authorized keys that does not parse");
        }
        for entry in &entries {
            if let Err(e) = &entry.rule {
                warn!(%path, line = entry.line, "refusing the key of this authorized keys line: {e}");
            }
        }
        if stamp.is_some() || cached.stamp.is_some() {
            let usable = entries.iter().filter(|e| e.rule.is_ok()).count();
            info!(%path, keys = usable, refused = entries.len() - usable, "loaded authorized keys");
        }
        cached.stamp = stamp;
        cached.entries = entries;
    }
}

/// Parses `authorized_keys` text: (key lines, numbers of the lines that do
/// not parse).
fn parse(text: &str) -> (Vec<Entry>, Vec<usize>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // As sshd: a key first, else options then a key.
        if let Ok(key) = PublicKey::from_openssh(line) {
            entries.push(Entry {
                line: number,
                key,
                rule: Ok(Options::default()),
            });
            continue;
        }
        let parsed = split_options(line)
            .and_then(|(opts, rest)| Some((opts, PublicKey::from_openssh(rest).ok()?)));
        match parsed {
            Some((opts, key)) => entries.push(Entry {
                line: number,
                key,
                rule: parse_options(opts),
            }),
            None => bad.push(number),
        }
    }
    (entries, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c alice@laptop";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    #[test]
    fn parsing_skips_junk_and_keeps_line_numbers() {
        let text = format!(
            "# comment\n\n{ALICE}\nnot a key\nfrom=\"10.0.0.1,10.0.0.2\",no-pty {BOB}\n\
             command=\"/bin/sh\" {BOB}\nfrom=\"unterminated {BOB}\n"
        );
        let (entries, bad) = parse(&text);
        assert_eq!(bad, vec![4, 7]);
        let lines: Vec<usize> = entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 5, 6]);
        assert!(entries[0].rule.as_ref().unwrap().pty);
        assert!(!entries[1].rule.as_ref().unwrap().pty);
        assert_eq!(
            entries[2].rule,
            Err(OptionError::Unsupported("command".into()))
        );
    }

    async fn keys_with(text: &str) -> (tempfile::TempDir, AuthorizedKeys) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, text).unwrap();
        (dir, AuthorizedKeys::new(&path))
    }

    #[tokio::test]
    async fn from_is_enforced_on_the_client_address() {
        let (_dir, keys) = keys_with(&format!(
            "from=\"127.0.0.1\" {ALICE}\nfrom=\"10.0.0.0/8\" {BOB}\n"
        ))
        .await;
        assert_eq!(
            keys.check(&key(ALICE), LOOPBACK).await,
            Ok(KeyPermissions { pty: true })
        );
        assert_eq!(
            keys.check(&key(ALICE), "127.0.0.2".parse().unwrap()).await,
            Err(KeyRefusal::From {
                line: 1,
                client: "127.0.0.2".parse().unwrap()
            })
        );
        assert!(matches!(
            keys.check(&key(BOB), LOOPBACK).await,
            Err(KeyRefusal::From { line: 2, .. })
        ));
        assert!(
            keys.check(&key(BOB), "10.1.2.3".parse().unwrap())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_first_line_that_allows_the_client_wins() {
        let (_dir, keys) = keys_with(&format!(
            "from=\"10.0.0.0/8\" {ALICE}\nno-pty,from=\"127.0.0.0/8\" {ALICE}\n{ALICE}\n"
        ))
        .await;
        assert_eq!(
            keys.check(&key(ALICE), LOOPBACK).await,
            Ok(KeyPermissions { pty: false })
        );
        assert_eq!(
            keys.check(&key(ALICE), "192.0.2.1".parse().unwrap()).await,
            Ok(KeyPermissions { pty: true })
        );
    }

    #[tokio::test]
    async fn unsupported_and_bad_options_refuse_the_key() {
        for (line, needle) in [
            (format!("command=\"/who\" {ALICE}"), "command"),
            (format!("environment=\"A=b\" {ALICE}"), "environment"),
            (format!("cert-authority {ALICE}"), "cert-authority"),
            (format!("from=\"10.0.0.1/8\" {ALICE}"), "from"),
            (format!("from=\"\" {ALICE}"), "from"),
        ] {
            let (_dir, keys) = keys_with(&line).await;
            match keys.check(&key(ALICE), LOOPBACK).await {
                Err(KeyRefusal::Options { line: 1, reason }) => {
                    assert!(reason.contains(needle), "{reason}")
                }
                other => panic!("{line}: {other:?}"),
            }
            assert!(keys.is_empty().await, "{line}");
        }
    }

    #[tokio::test]
    async fn restrict_refuses_a_pty() {
        let (_dir, keys) = keys_with(&format!("restrict {ALICE}\nrestrict,pty {BOB}\n")).await;
        assert_eq!(
            keys.check(&key(ALICE), LOOPBACK).await,
            Ok(KeyPermissions { pty: false })
        );
        assert_eq!(
            keys.check(&key(BOB), LOOPBACK).await,
            Ok(KeyPermissions { pty: true })
        );
    }

    #[tokio::test]
    async fn changes_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let keys = AuthorizedKeys::new(&path);
        let alice = key(ALICE);
        let bob = key(BOB);
        let allows = |k: &PublicKey| {
            let k = k.clone();
            let keys = &keys;
            async move { keys.check(&k, LOOPBACK).await.is_ok() }
        };
        assert!(!allows(&alice).await, "no file, nobody");
        std::fs::write(&path, format!("{ALICE}\n")).unwrap();
        assert!(allows(&alice).await);
        assert!(!allows(&bob).await);
        std::fs::write(&path, format!("{ALICE}\n{BOB}\n")).unwrap();
        assert!(allows(&bob).await, "appended key takes effect");
        std::fs::write(&path, format!("{BOB}\n")).unwrap();
        assert!(!allows(&alice).await, "removed key is refused");
        std::fs::remove_file(&path).unwrap();
        assert!(!allows(&bob).await);
    }
}
