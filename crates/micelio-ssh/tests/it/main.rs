//! The SSH server end to end in one process, with russh's own client: the
//! session glue (exec, plain and interactive sessions, PTY refusal), the
//! `authorized_keys` options as the server applies them, the counters and
//! the accept loop's watch. Everything on 127.0.0.1:0, fixed-seed keys,
//! every wait bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use micelio_gossip::GossipConfig;
use micelio_gossip::test_utils::GossipNode;
use micelio_partyline::{Partyline, PartylineConfig};
use micelio_ssh::{SshConfig, SshExit, SshServer, host_key};
use micelio_transport::memory::MemoryMesh;
use russh::client::{self, Handle};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, client::Msg};
use tokio::time::timeout;

/// Longest wait for any one step.
const WAIT: Duration = Duration::from_secs(20);

/// A node with only what the SSH server needs: an outbound-only in-memory
/// transport with no peers, gossip and the partyline over it.
struct Fixture {
    ssh: SshServer,
    party: Partyline,
    node: GossipNode,
    host: PublicKey,
    _dir: tempfile::TempDir,
    keys: std::path::PathBuf,
}

impl Fixture {
    async fn start(authorized: &str) -> Fixture {
        Self::start_with(authorized, |_| {}).await
    }

    /// A fixture whose `authorized_keys` holds one client key of `seed`,
    /// after `options` (empty, or options and a space); and that key.
    async fn with_key(seed: u8, options: &str) -> (Fixture, PrivateKey) {
        let (key, line) = client_key(seed);
        (Self::start(&format!("{options}{line}\n")).await, key)
    }

    async fn start_with(authorized: &str, tune: impl FnOnce(&mut SshConfig)) -> Fixture {
        let mut transport = MemoryMesh::config(42);
        transport.listen = None;
        let node = GossipNode::spawn_with(
            &MemoryMesh::new(),
            MemoryMesh::identity(42),
            transport,
            GossipConfig::default(),
        )
        .await
        .unwrap();
        let party = Partyline::spawn(
            PartylineConfig::new("box"),
            node.gossip.clone(),
            node.peers.clone(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("authorized_keys");
        std::fs::write(&keys, authorized).unwrap();
        let mut config = SshConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), &keys);
        tune(&mut config);
        let ssh = SshServer::spawn(&node.identity, config, party.clone())
            .await
            .unwrap();
        Fixture {
            ssh,
            party,
            host: host_key(&node.identity).public_key().clone(),
            node,
            _dir: dir,
            keys,
        }
    }

    async fn stop(self) {
        self.ssh.shutdown().await;
        self.party.shutdown().await;
        self.node.shutdown().await;
    }

    /// Connects and tries to log in as `user` with `key`.
    async fn login(&self, user: &str, key: &PrivateKey) -> (Handle<Pinned>, bool) {
        let config = Arc::new(client::Config::default());
        let mut handle = timeout(
            WAIT,
            client::connect(config, self.ssh.local_addr(), Pinned(self.host.clone())),
        )
        .await
        .unwrap()
        .unwrap();
        let auth = handle
            .authenticate_publickey(
                user,
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
            )
            .await
            .unwrap();
        let ok = auth.success();
        (handle, ok)
    }

    async fn session(&self, user: &str, key: &PrivateKey) -> (Handle<Pinned>, Chan) {
        let (handle, ok) = self.login(user, key).await;
        assert!(ok, "login refused");
        let channel = handle.channel_open_session().await.unwrap();
        (handle, Chan(channel))
    }
}

/// A client handler that accepts only the expected host key.
struct Pinned(PublicKey);

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()),
        )
    }
}

/// A client key from a fixed seed, and its `authorized_keys` line.
fn client_key(seed: u8) -> (PrivateKey, String) {
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
    let line = key.public_key().to_openssh().unwrap();
    (key, line)
}

/// One session channel and what the server sent on it.
struct Chan(russh::Channel<Msg>);

/// Everything a channel received until it closed.
#[derive(Debug, Default)]
struct Transcript {
    out: String,
    status: Option<u32>,
}

impl Chan {
    /// The reply to the last request that wanted one.
    async fn reply(&mut self) -> bool {
        loop {
            match timeout(WAIT, self.0.wait()).await.unwrap() {
                Some(ChannelMsg::Success) => return true,
                Some(ChannelMsg::Failure) => return false,
                Some(_) => {}
                None => panic!("channel closed before replying"),
            }
        }
    }

    /// Reads until `needle` has been received; returns all text so far.
    async fn read_until(&mut self, text: &mut String, needle: &str) {
        while !text.contains(needle) {
            match timeout(WAIT, self.0.wait()).await.unwrap() {
                Some(ChannelMsg::Data { data }) => text.push_str(&String::from_utf8_lossy(&data)),
                Some(_) => {}
                None => panic!("channel closed before {needle:?}; got {text:?}"),
            }
        }
    }

    /// Reads until the channel closes.
    async fn finish(&mut self) -> Transcript {
        let mut t = Transcript::default();
        while let Some(msg) = timeout(WAIT, self.0.wait()).await.unwrap() {
            match msg {
                ChannelMsg::Data { data } => t.out.push_str(&String::from_utf8_lossy(&data)),
                ChannelMsg::ExitStatus { exit_status } => t.status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        t
    }

    /// Starts a shell; the server must accept.
    async fn shell(&mut self) {
        self.0.request_shell(true).await.unwrap();
        assert!(self.reply().await, "shell refused");
    }

    /// Reads until the channel closes, which must be with `status`.
    async fn exits(&mut self, status: u32) -> Transcript {
        let t = self.finish().await;
        assert_eq!(t.status, Some(status), "{t:?}");
        t
    }

    async fn send(&self, bytes: &[u8]) {
        self.0.data_bytes(bytes.to_vec()).await.unwrap();
    }

    async fn pty(&mut self) -> bool {
        self.0
            .request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        self.reply().await
    }
}

#[tokio::test]
async fn exec_runs_one_command_and_exits_with_its_status() {
    let (fx, key) = Fixture::with_key(1, "").await;

    let (_h, mut chan) = fx.session("alice", &key).await;
    chan.0.exec(true, "/who").await.unwrap();
    assert!(chan.reply().await);
    let t = chan.exits(0).await;
    assert!(t.out.contains("box"), "{t:?}");
    assert!(!t.out.contains('\r'), "exec output is plain text: {t:?}");

    let (_h, mut chan) = fx.session("alice", &key).await;
    chan.0.exec(true, "/nope").await.unwrap();
    let t = chan.exits(127).await;
    assert!(t.out.contains("unknown command"), "{t:?}");
    fx.stop().await;
}

#[tokio::test]
async fn a_plain_session_reads_lines_and_exits_with_the_last_status() {
    let (fx, key) = Fixture::with_key(2, "").await;

    let (_h, mut chan) = fx.session("carol", &key).await;
    chan.shell().await;
    // Lines split across packets, and a last line without a newline, run
    // when the client sends EOF.
    chan.send(b"/nick dav").await;
    chan.send(b"e\n/who\n/nope").await;
    chan.0.eof().await.unwrap();
    let t = chan.finish().await;
    assert!(t.out.contains("you are now dave"), "{t:?}");
    assert!(t.out.contains("dave"), "{t:?}");
    assert!(t.out.contains("unknown command"), "{t:?}");
    assert!(!t.out.contains("Welcome"), "no banner without a PTY: {t:?}");
    assert_eq!(t.status, Some(127), "the last command's status: {t:?}");
    fx.stop().await;
}

#[tokio::test]
async fn a_plain_line_over_the_limit_is_dropped_and_the_session_goes_on() {
    let (fx, key) = Fixture::with_key(3, "").await;
    let (_h, mut chan) = fx.session("erin", &key).await;
    chan.shell().await;
    chan.send(&vec![b'x'; 9000]).await;
    let mut text = String::new();
    chan.read_until(&mut text, "line too long, dropped").await;
    chan.send(b"/who\n").await;
    chan.read_until(&mut text, "erin").await;
    chan.send(b"/quit\n").await;
    chan.exits(0).await;
    fx.stop().await;
}

#[tokio::test]
async fn an_interactive_session_has_the_editor_and_quits_cleanly() {
    let (fx, key) = Fixture::with_key(4, "").await;
    let (_h, mut chan) = fx.session("frank", &key).await;
    assert!(chan.pty().await, "a PTY is granted");
    chan.shell().await;
    let mut text = String::new();
    chan.read_until(&mut text, "Welcome to the micelio partyline on box, frank")
        .await;
    chan.read_until(&mut text, "frank> ").await;
    assert!(
        text.contains("\r\n"),
        "CRLF line ends on a terminal: {text:?}"
    );
    chan.send(b"/nick grace\r").await;
    chan.read_until(&mut text, "you are now grace").await;
    chan.read_until(&mut text, "grace> ").await;
    chan.send(b"/quit\r").await;
    chan.exits(0).await;
    fx.stop().await;
}

#[tokio::test]
async fn no_pty_refuses_the_pty_and_the_shell_runs_plain() {
    let (fx, key) = Fixture::with_key(5, "no-pty ").await;
    let (_h, mut chan) = fx.session("heidi", &key).await;
    assert!(!chan.pty().await, "the PTY request is refused");
    chan.shell().await;
    chan.send(b"/who\n").await;
    chan.0.eof().await.unwrap();
    let t = chan.exits(0).await;
    assert!(t.out.contains("heidi"), "{t:?}");
    assert!(!t.out.contains("Welcome"), "no editor: {t:?}");
    assert!(!t.out.contains('\x1b'), "no terminal control: {t:?}");
    fx.stop().await;
}

#[tokio::test]
async fn key_options_are_enforced_at_login_and_counted() {
    let (local, local_line) = client_key(6);
    let (far, far_line) = client_key(7);
    let (forced, forced_line) = client_key(8);
    let (stranger, _) = client_key(9);
    let fx = Fixture::start(&format!(
        "from=\"127.0.0.0/8,!127.0.0.2\" {local_line}\nfrom=\"10.0.0.0/8\" {far_line}\n\
         command=\"/who\" {forced_line}\n"
    ))
    .await;
    assert!(fx.login("a", &local).await.1);
    assert!(!fx.login("b", &far).await.1);
    assert!(!fx.login("c", &forced).await.1);
    assert!(!fx.login("d", &stranger).await.1);
    let c = fx.ssh.counters();
    assert_eq!(c.logins, 1);
    assert_eq!(c.connections, 4);
    assert!(c.auth_refused >= 3, "{c:?}");
    assert_eq!(c.refused, 0);
    // The file is re-read: dropping the option lets the key in.
    std::fs::write(&fx.keys, format!("{far_line}\n")).unwrap();
    assert!(fx.login("b", &far).await.1);
    fx.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept() {
    let (key, line) = client_key(10);
    let fx = Fixture::start_with(&format!("{line}\n"), |c| c.max_connections = 1).await;
    let (held, ok) = fx.login("one", &key).await;
    assert!(ok);
    let config = Arc::new(client::Config::default());
    let second = timeout(
        WAIT,
        client::connect(config, fx.ssh.local_addr(), Pinned(fx.host.clone())),
    )
    .await
    .unwrap();
    assert!(second.is_err(), "the second connection is closed");
    assert_eq!(fx.ssh.counters().refused, 1);
    drop(held);
    fx.stop().await;
}

#[tokio::test]
async fn closed_tells_how_the_accept_loop_ended() {
    let fx = Fixture::start("").await;
    let closed = fx.ssh.closed();
    assert!(
        timeout(Duration::from_millis(50), fx.ssh.closed())
            .await
            .is_err(),
        "still running"
    );
    fx.ssh.shutdown().await;
    assert_eq!(timeout(WAIT, closed).await.unwrap(), SshExit::Stopped);
    assert_eq!(
        timeout(WAIT, fx.ssh.closed()).await.unwrap(),
        SshExit::Stopped
    );
    fx.stop().await;
}
