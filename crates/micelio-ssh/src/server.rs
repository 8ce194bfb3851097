//! The SSH server: accept loop, per-connection handler, per-channel tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use micelio_identity::Identity;
use micelio_partyline::Partyline;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Algorithm, PrivateKey};
use russh::server::{
    Auth, ChannelOpenHandle, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred, cipher, kex};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::auth::{AuthorizedKeys, KeyPermissions};
use crate::session::{ChanInput, run_exec, run_interactive, run_plain};

/// Channels one connection may open at once.
const MAX_CHANNELS_PER_CONNECTION: usize = 4;
/// Input chunks buffered per channel before the connection is slowed down.
const CHANNEL_INPUT_QUEUE: usize = 64;

/// Configuration of the SSH server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The OpenSSH `authorized_keys` file.
    pub authorized_keys: std::path::PathBuf,
    /// Most connections at once; more are closed at accept.
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed.
    pub inactivity_timeout: Duration,
    /// Deadline of each write to a client; a client that stops reading is
    /// disconnected after it.
    pub write_timeout: Duration,
}

impl SshConfig {
    /// The partyline's default address, `0.0.0.0:2222` (SPEC §10).
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 2222);
    /// Default of [`SshConfig::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    /// Default of [`SshConfig::inactivity_timeout`]: 1 h.
    pub const DEFAULT_INACTIVITY_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Default of [`SshConfig::write_timeout`].
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Defaults for `listen` and `authorized_keys`: 64 connections, 1 h of
    /// inactivity, 10 s write deadline.
    pub fn new(listen: SocketAddr, authorized_keys: impl Into<std::path::PathBuf>) -> Self {
        Self {
            listen,
            authorized_keys: authorized_keys.into(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            inactivity_timeout: Self::DEFAULT_INACTIVITY_TIMEOUT,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A snapshot of the SSH server's counters, from [`SshServer::counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshCounters {
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused because `max_connections` was reached.
    pub refused: u64,
    /// Authentication attempts refused.
    pub auth_refused: u64,
    /// Logins accepted.
    pub logins: u64,
}

/// The live counters, shared by the server's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    auth_refused: AtomicU64,
    logins: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SshCounters {
        SshCounters {
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            auth_refused: self.auth_refused.load(Ordering::Relaxed),
            logins: self.logins.load(Ordering::Relaxed),
        }
    }
}

/// How the server's accept loop ended, as told by [`SshServer::closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SshExit {
    /// [`SshServer::shutdown`] stopped it.
    Stopped,
    /// It panicked (the panic message) or was aborted.
    Failed(String),
}

impl std::fmt::Display for SshExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// A running SSH partyline server.
#[derive(Debug)]
#[must_use = "dropping the handle does not stop the server; call shutdown()"]
pub struct SshServer {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    counters: Arc<Counters>,
    keys: Arc<AuthorizedKeys>,
    exit: watch::Receiver<Option<SshExit>>,
}

/// The node key as an SSH host key.
pub fn host_key(identity: &Identity) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&identity.seed()))
}

fn russh_config(identity: &Identity, config: &SshConfig) -> russh::server::Config {
    russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key(identity)],
        inactivity_timeout: Some(config.inactivity_timeout),
        keepalive_interval: Some(Duration::from_secs(30)),
        max_auth_attempts: 6,
        nodelay: true,
        preferred: Preferred {
            kex: std::borrow::Cow::Borrowed(&[
                kex::MLKEM768X25519_SHA256,
                kex::CURVE25519,
                kex::CURVE25519_PRE_RFC_8731,
                kex::EXTENSION_SUPPORT_AS_SERVER,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
            ]),
            key: std::borrow::Cow::Borrowed(&[Algorithm::Ed25519]),
            cipher: std::borrow::Cow::Borrowed(&[
                cipher::CHACHA20_POLY1305,
                cipher::AES_256_GCM,
                cipher::AES_128_GCM,
            ]),
            ..Preferred::default()
        },
        ..Default::default()
    }
}

impl SshServer {
    /// Binds `config.listen` and serves the partyline there, with the node
    /// identity as host key.
    ///
    /// # Errors
    /// [`SshError::Bind`].
    pub async fn spawn(
        identity: &Identity,
        config: SshConfig,
        party: Partyline,
    ) -> Result<Self, SshError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SshError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| SshError::Bind {
            addr: config.listen,
            source,
        })?;
        let keys = Arc::new(AuthorizedKeys::new(&config.authorized_keys));
        let shared = Arc::new(Shared {
            russh: Arc::new(russh_config(identity, &config)),
            party,
            keys: keys.clone(),
            counters: Arc::new(Counters::default()),
            write_timeout: config.write_timeout,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(config.max_connections.max(1))),
            next_conn: AtomicU64::new(1),
        });
        let span = info_span!("ssh", addr = %local_addr);
        let (exit_tx, exit) = watch::channel(None);
        let accept = tokio::spawn(accept_loop(shared.clone(), listener).instrument(span.clone()));
        // The accept loop is watched: how it ended is told to `closed`.
        shared.tracker.spawn(
            async move {
                let ended = match accept.await {
                    Ok(()) => SshExit::Stopped,
                    Err(e) => SshExit::Failed(join_error_reason(e)),
                };
                if let SshExit::Failed(reason) = &ended {
                    warn!("the ssh accept loop failed: {reason}");
                }
                let _ = exit_tx.send(Some(ended));
            }
            .instrument(span),
        );
        Ok(Self {
            local_addr,
            cancel: shared.cancel.clone(),
            tracker: shared.tracker.clone(),
            counters: shared.counters.clone(),
            keys,
            exit,
        })
    }

    /// Resolves once the accept loop has ended, saying how: after
    /// [`SshServer::shutdown`], or by itself (a panic), which a supervisor
    /// should treat as the server's death. The future owns what it needs,
    /// so it can be moved into a watching task.
    ///
    /// Cancel safety: safe to cancel.
    pub fn closed(&self) -> impl std::future::Future<Output = SshExit> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(ended) => ended.clone().unwrap_or(SshExit::Stopped),
                Err(_) => SshExit::Failed("the accept loop's watcher is gone".to_owned()),
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> SshCounters {
        self.counters.snapshot()
    }

    /// The authorized keys in force.
    pub fn authorized_keys(&self) -> &AuthorizedKeys {
        &self.keys
    }

    /// Stops accepting, tells sessions, closes connections and waits (at
    /// most a few seconds). Idempotent.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(3), self.tracker.wait())
            .await
            .is_err()
        {
            warn!("ssh sessions did not stop in time");
        }
    }
}

/// The panic message (or the cancellation) of a task that failed.
fn join_error_reason(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return format!("{e}");
    }
    let panic = e.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned());
    format!("panicked: {message}")
}

pub(crate) struct Shared {
    russh: Arc<russh::server::Config>,
    pub(crate) party: Partyline,
    keys: Arc<AuthorizedKeys>,
    counters: Arc<Counters>,
    pub(crate) write_timeout: Duration,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    permits: Arc<Semaphore>,
    next_conn: AtomicU64,
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            info!(%peer, "refused ssh connection: too many connections");
            continue;
        };
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            shared: shared.clone(),
            peer,
            user: None,
            key_fingerprint: String::new(),
            permissions: None,
            channels: HashMap::new(),
        };
        let s = shared.clone();
        let span = info_span!("conn", id, %peer);
        shared.tracker.spawn(
            async move {
                let _permit = permit;
                let running = match russh::server::run_stream(s.russh.clone(), stream, conn).await {
                    Ok(r) => r,
                    Err(e) => {
                        debug!("ssh handshake failed: {e}");
                        return;
                    }
                };
                let handle = running.handle();
                tokio::select! {
                    r = running => if let Err(e) = r { debug!("ssh connection ended: {e}") },
                    _ = s.cancel.cancelled() => {
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "the node is shutting down".into(), "en".into())
                            .await;
                    }
                }
            }
            .instrument(span),
        );
    }
}

struct ChannelState {
    pty_width: Option<u16>,
    input: Option<mpsc::Sender<ChanInput>>,
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    user: Option<String>,
    /// The fingerprint of the key the client logged in with.
    key_fingerprint: String,
    /// What the key the client logged in with allows.
    permissions: Option<KeyPermissions>,
    channels: HashMap<ChannelId, ChannelState>,
}

impl Conn {
    async fn check_key(
        &self,
        user: &str,
        key: &russh::keys::PublicKey,
    ) -> Result<KeyPermissions, Auth> {
        match self.shared.keys.check(key, self.peer.ip()).await {
            Ok(permissions) => Ok(permissions),
            Err(refusal) => {
                self.shared
                    .counters
                    .auth_refused
                    .fetch_add(1, Ordering::Relaxed);
                info!(peer = %self.peer, user, fingerprint = %key.fingerprint(Default::default()), "refused ssh key: {refusal}");
                Err(Auth::reject())
            }
        }
    }

    fn start(&mut self, channel: ChannelId, handle: Handle, kind: Start) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        if state.input.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(CHANNEL_INPUT_QUEUE);
        state.input = Some(tx);
        let user = micelio_partyline::Login {
            user: self.user.clone().unwrap_or_else(|| "user".into()),
            key_fingerprint: self.key_fingerprint.clone(),
        };
        let shared = self.shared.clone();
        let width = state.pty_width;
        let task = async move {
            match (kind, width) {
                (Start::Exec(cmd), _) => run_exec(&shared, handle, channel, &user, &cmd).await,
                (Start::Shell, Some(w)) => {
                    run_interactive(&shared, handle, channel, &user, w, rx).await
                }
                (Start::Shell, None) => run_plain(&shared, handle, channel, &user, rx).await,
            }
        };
        self.shared.tracker.spawn(task.in_current_span());
    }
}

enum Start {
    Shell,
    Exec(String),
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.check_key(user, offer.public_key).await {
            Ok(_) => Auth::Accept,
            Err(reject) => reject,
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.check_key(user, key.public_key).await {
            Ok(permissions) => {
                self.shared.counters.logins.fetch_add(1, Ordering::Relaxed);
                info!(peer = %self.peer, user, pty_allowed = permissions.pty, "ssh login");
                self.user = Some(user.to_owned());
                self.key_fingerprint = key.public_key.fingerprint(Default::default()).to_string();
                self.permissions = Some(permissions);
                Ok(Auth::Accept)
            }
            Err(reject) => Ok(reject),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_CHANNELS_PER_CONNECTION {
            debug!("refused a session channel: too many on this connection");
            return Ok(());
        }
        // Only the id is kept: input arrives through `data`, output goes
        // through the session handle.
        self.channels.insert(
            channel.id(),
            ChannelState {
                pty_width: None,
                input: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let pty_allowed = self.permissions.is_some_and(|p| p.pty);
        if !pty_allowed {
            info!(peer = %self.peer, "refused a pty: no-pty or restrict in authorized_keys");
            session.channel_failure(channel)?;
        } else if let Some(state) = self.channels.get_mut(&channel) {
            state.pty_width = Some(u16::try_from(col_width).unwrap_or(u16::MAX).max(20));
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        self.start(channel, session.handle(), Start::Shell);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let cmd = String::from_utf8_lossy(data).into_owned();
        self.start(channel, session.handle(), Start::Exec(cmd));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            // Waiting here slows this connection down, and only it.
            let _ = tx.send(ChanInput::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            let w = u16::try_from(col_width).unwrap_or(u16::MAX).max(20);
            let _ = tx.try_send(ChanInput::Resize(w));
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            let _ = tx.send(ChanInput::Eof).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the sender ends the channel's task.
        self.channels.remove(&channel);
        Ok(())
    }
}
