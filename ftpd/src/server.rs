//! The accept loop: a task per connection, a cap on how many, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::{Budget, Stream};
use storage::Root;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, mpsc};
use tracing::{error, info, warn};

use anyhow::Context;

use crate::admission::Gate;
use crate::auth::{Authenticator, Penalty};
use crate::cluster::Cluster;
use crate::hashing::Hashing;
use crate::logging::Wire;
use crate::session::Session;
use crate::shutdown::Shutdown;
use crate::store::{Files, LocalBackend, Store};
use crate::tls::{Identity, Source};
use crate::transport::{self, Channel, Security};
use crate::users::Users;
use crate::Config;

/// The key of the salts made up for names without a verifier, in the state directory.
const SALT_KEY: &str = "login-salt.key";

/// How often abandoned staged uploads are looked for, at most.
const STAGING_SWEEP_PERIOD: Duration = Duration::from_secs(3600);

/// A daemon ready to serve: its root is open and checked, its users loaded.
pub struct Server {
    shared: Shared,
    /// Whether the listener accepts or the daemon drains, for the metrics listener's /readyz.
    health: Arc<crate::metrics::Health>,
}

impl Shared {
    /// Loads the users file again and puts it in force for new connections.
    pub fn reload_users(&self, path: &std::path::Path) -> anyhow::Result<usize> {
        let users = Users::load(path, self.store.local(), self.auth.salt_key())?;
        warn_legacy(&users);
        Ok(self.apply_users(users))
    }

    /// Puts the users the database holds in force for new connections (`--database`).
    pub fn apply_rows(&self, rows: &pgstate::UsersSnapshot) -> anyhow::Result<usize> {
        let users = Users::from_rows(rows, self.store.local(), self.auth.salt_key())?;
        Ok(self.apply_users(users))
    }

    fn apply_users(&self, users: Users) -> usize {
        let n = users.len();
        self.accounts.apply(&users);
        self.auth.replace(users);
        n
    }
}

/// What every session shares.
#[derive(Clone)]
pub struct Shared {
    /// Where the files are.
    pub store: Store,
    /// The whole store as a home: what an anonymous session works in.
    pub files: Files,
    /// The daemon's settings.
    pub config: Arc<Config>,
    /// Who may log in.
    pub auth: Arc<Authenticator>,
    /// Memory that chunk bodies of all transfers share (`--memory-budget`).
    pub budget: Budget,
    /// Whole-file hashing: its slots and cache.
    pub hashing: Arc<Hashing>,
    /// The TLS identity (`None` with `--insecure-plaintext`), which SIGHUP reloads.
    pub identity: Option<Arc<Identity>>,
    /// How connections are secured.
    pub security: Security,
    /// Every user's sessions, rate caps and counters, and the daemon-wide cap.
    pub accounts: Arc<crate::accounts::Accounts>,
    /// The state shared with the service's other instances (`--database`).
    pub cluster: Option<Cluster>,
}

/// Opens the local root `config` names and its state directory (resolving the default).
fn open_root(config: &mut Config) -> anyhow::Result<Root> {
    let limits = storage::Limits {
        max_file_size: config.max_file_size,
        quota: config.quota,
        max_files: config.max_files,
        max_staged: Some(usize::try_from(config.max_staged_uploads).unwrap_or(usize::MAX)),
        no_fsync: config.no_fsync,
    };
    let state = match &config.state_dir {
        Some(dir) => dir.clone(),
        None => {
            storage::default_state_dir(config.root()).context("cannot serve the storage root")?
        }
    };
    let root = Root::open_with_limits(config.root(), &state, limits)
        .map_err(|e| with_remedy(e, config.root(), &state))
        .context("cannot serve the storage root")?;
    if root.migrated() {
        info!(
            root = %config.root().display(),
            state = %state.display(),
            "moved an older version's staged uploads and digests from ROOT/.ftpd into the \
             state directory"
        );
    }
    // What --check-config prints, and the log names: the directory in force.
    config.state_dir = Some(state);
    Ok(root)
}

/// Binds `addr` with SO_REUSEADDR, so a restart right after a stop never finds the port taken.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Server {
    /// Opens the storage root named by `config`, and its state directory; fails when the root
    /// is missing or not writable, or the state directory cannot hold its private state.
    pub fn new(config: Config) -> anyhow::Result<Server> {
        Server::with_backend(config, None)
    }

    /// As [`Server::new`], with the files on `backend` instead of a root directory when given
    /// (opened by the caller: opening an object store is a few requests, see
    /// [`crate::store::open_remote`]).
    pub fn with_backend(
        config: Config,
        backend: Option<Arc<dyn storage::Backend>>,
    ) -> anyhow::Result<Server> {
        Server::build(config, backend, None)
    }

    /// As [`Server::with_backend`], one instance of a service whose users and limits are in
    /// the database `cluster` holds (`--database`): the users are read from it now.
    pub async fn clustered(
        config: Config,
        backend: Option<Arc<dyn storage::Backend>>,
        cluster: Cluster,
    ) -> anyhow::Result<Server> {
        let rows = cluster.users().await?;
        Server::build(config, backend, Some((cluster, rows)))
    }

    fn build(
        mut config: Config,
        backend: Option<Arc<dyn storage::Backend>>,
        cluster: Option<(Cluster, pgstate::UsersSnapshot)>,
    ) -> anyhow::Result<Server> {
        let store = match backend {
            Some(backend) => {
                let state = config
                    .state_dir
                    .clone()
                    .context("--storage needs --state-dir DIR")?;
                crate::private::create_dir(&state)?;
                Store::Remote(backend)
            }
            None => {
                let root = open_root(&mut config)?;
                let local = LocalBackend::new(root)
                    .context("cannot serve the storage root")?
                    .located(config.root().display().to_string());
                Store::Local(local)
            }
        };
        let state_dir = config.state_dir.as_ref().expect("resolved above");
        let salt_key = crate::private::secret_key(&state_dir.join(SALT_KEY))
            .context("cannot set up the key of login salts")?;
        let users = match (&cluster, &config.users) {
            (Some((_, rows)), _) => Some(Users::from_rows(rows, store.local(), &salt_key)?),
            (None, Some(path)) => Some(Users::load(path, store.local(), &salt_key)?),
            (None, None) => None,
        };
        let cluster = cluster.map(|(cluster, _)| cluster);
        if let Some(cluster) = &cluster {
            info!(
                database = %cluster.shown,
                instance = %cluster.instance(),
                "one instance of a service: users, throttle, caps and uploads in the database"
            );
        }
        if let Some(users) = &users {
            info!(users = users.len(), "authentication required");
            warn_legacy(users);
        }
        let identity = if config.insecure_plaintext {
            None
        } else {
            let source = Source::of(&config)?;
            Some(Arc::new(
                Identity::load(source).context("cannot set up the server's TLS identity")?,
            ))
        };
        let security = match &identity {
            Some(identity) => Security::Tls(identity.acceptor()),
            None => Security::Plaintext,
        };
        // An object store is swept by the sweeper's first round, which is a few requests.
        if let Some(root) = store.local() {
            sweep(root, config.staging_max_age);
        }
        let penalty = Penalty {
            first: config.login_penalty,
            max: config.login_penalty_max,
        };
        let files = store.whole();
        let accounts = Arc::new(crate::accounts::Accounts::new(
            store.clone(),
            users.as_ref(),
            config.max_rate,
            cluster.as_ref().map(|c| c.state.clone()),
        ));
        Ok(Server {
            shared: Shared {
                accounts,
                files,
                store,
                budget: Budget::new(config.memory_budget),
                hashing: Arc::new(Hashing::new(config.max_hashing)),
                config: Arc::new(config),
                auth: Arc::new(Authenticator::new(users, penalty, salt_key)),
                identity,
                security,
                cluster,
            },
            health: Arc::default(),
        })
    }

    /// Refuses to serve anonymously on an address others can reach, unless told to, and to
    /// serve without TLS anywhere but on loopback.
    pub fn check_exposure(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let config = &self.shared.config;
        if config.insecure_plaintext {
            if !addr.ip().is_loopback() {
                anyhow::bail!(
                    "refusing --insecure-plaintext on {addr}, which is not a loopback address: \
                     without TLS anyone on the path reads and changes every file"
                );
            }
            warn!("serving without TLS (--insecure-plaintext): for tests and debugging only");
        }
        if self.shared.auth.users().is_some() || addr.ip().is_loopback() {
            return Ok(());
        }
        if !config.allow_anonymous {
            anyhow::bail!(
                "refusing to serve anonymously on {addr}, which is not a loopback address: \
                 give --users FILE, or --allow-anonymous to let anyone who can connect in"
            );
        }
        warn!("serving anonymously on {addr}: anyone who can connect can read and write the root");
        Ok(())
    }

    /// What sessions share (tests and reload reach the users through it).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// What the metrics listener (`--metrics-listen`) reads from this server; `handle` renders
    /// the recorder [`crate::metrics::install`] put in place.
    pub fn observed(
        &self,
        handle: metrics_exporter_prometheus::PrometheusHandle,
    ) -> crate::metrics::Observed {
        crate::metrics::Observed {
            handle,
            health: self.health.clone(),
            store: self.shared.store.clone(),
            users: {
                let accounts = self.shared.accounts.clone();
                Arc::new(move || serde_json::json!(accounts.snapshot()))
            },
        }
    }

    /// Serves one connection that is already set up (an in-memory pipe in tests, say) to its
    /// end, as a session of this server; nothing stops it but the client.
    pub fn serve_stream(
        &self,
        stream: impl Stream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (never, notify) = broadcast::channel(1);
        let channel = Channel {
            stream: Box::new(stream),
            binding: None,
            peer_key: None,
        };
        info!(%peer, "connection opened");
        let session = Session::new(channel, peer, self.shared.clone(), Shutdown::new(notify));
        async move {
            session.run().await;
            drop(never);
        }
    }

    /// Serves `listener` until `shutdown` completes, then gives sessions in flight the grace
    /// period to finish before returning.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (notify, _) = broadcast::channel(1);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let config = self.shared.config.clone();
        let gate = Gate::new(&config, self.shared.auth.clone());
        let sweeper = tokio::spawn(sweep_every(
            self.shared.store.clone(),
            config.staging_max_age,
            // A quarter of the age: staged bytes outlive it by at most that much.
            STAGING_SWEEP_PERIOD.min((config.staging_max_age / 4).max(Duration::from_secs(1))),
        ));
        // Off unless asked for (on the local root only); stopped with the listener.
        let scrubber = config
            .scrub_every
            .zip(self.shared.store.local().cloned())
            .map(|(period, root)| {
                tokio::spawn(crate::scrub::every(
                    root,
                    self.shared.hashing.clone(),
                    period,
                ))
            });
        // One instance of a service: users follow the database, old rows are swept.
        let followers = self.shared.cluster.clone().map(|cluster| {
            let users = tokio::spawn(crate::cluster::follow_users(
                cluster.clone(),
                self.shared.clone(),
            ));
            let sweeper = tokio::spawn(crate::cluster::sweep_every(cluster));
            (users, sweeper)
        });
        // Connections from --proxy-protocol-from come out of it under the client's address.
        let mut listener = crate::proxy::Incoming::new(listener, &config);
        tokio::pin!(shutdown);
        self.health.serving();
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let admission = match gate.admit(peer.ip()) {
                Ok(admission) => admission,
                Err(why) => {
                    transport::refuse(stream, peer, &why);
                    continue;
                }
            };
            crate::metrics::connection_accepted();
            let active = crate::metrics::Active::connection();
            let shared = self.shared.clone();
            let shutdown = Shutdown::new(notify.subscribe());
            let done = done_tx.clone();
            info!(%peer, "connection opened");
            tokio::spawn(async move {
                // One limit for the TLS handshake, the hello and the login together.
                let deadline = std::time::Instant::now() + shared.config.handshake_timeout;
                // A connection evicted by a newcomer from a less crowded range gives up its
                // slot at once, in the TLS handshake too (there is no channel yet to say why).
                let established = tokio::select! {
                    established = async {
                        if let Err(e) = crate::proxy::screen(&stream, deadline).await {
                            return Err(("proxy_header_untrusted", e.to_string()));
                        }
                        transport::establish(stream, &shared.security, deadline)
                            .await
                            .map_err(|e| (refused_reason(&e), e.to_string()))
                    } => established,
                    () = admission.evicted() => Err((
                        "evicted",
                        "gave its place to a newcomer before the TLS handshake ended".into(),
                    )),
                };
                let channel = match established {
                    Ok(channel) => channel,
                    Err((label, e)) => {
                        crate::metrics::connection_refused(label);
                        info!(%peer, reason = %Wire(&e), "connection closed");
                        return;
                    }
                };
                // The session holds its admission (and gives it up early when a login
                // fails); a panic drops it with the rest of the session.
                let session = Session::new(channel, peer, shared, shutdown)
                    .admitted(admission)
                    .until(deadline);
                // A panic inside the session ends that connection alone.
                if let Err(e) = tokio::spawn(session.run()).await {
                    let e = e.to_string();
                    error!(%peer, error = %Wire(&e), "session task failed; connection closed");
                }
                drop(active);
                drop(done);
            });
        }
        self.health.draining();
        drop(listener);
        sweeper.abort();
        if let Some(scrubber) = scrubber {
            scrubber.abort();
        }
        if let Some((users, sweeper)) = followers {
            users.abort();
            sweeper.abort();
        }
        info!("shutting down: no new connections");
        let _ = notify.send(());
        drop(done_tx);
        if tokio::time::timeout(config.shutdown_grace, done_rx.recv())
            .await
            .is_err()
        {
            warn!("grace period over; closing the remaining connections");
        }
        // The sessions this instance held no longer count against their users' caps at once,
        // not a heartbeat's time to live later.
        if let Some(cluster) = &self.shared.cluster {
            let released =
                tokio::time::timeout(Duration::from_secs(5), cluster.state.release_instance());
            if let Ok(Err(e)) = released.await {
                warn!("cannot release this instance's sessions in the database: {e}");
            }
        }
    }
}

/// A connection dropped before its session, as a `reason` label of
/// `ftpd_connections_refused_total`.
fn refused_reason(e: &transport::Refused) -> &'static str {
    use transport::Refused;
    match e {
        Refused::Closed => "closed_early",
        Refused::Timeout => "handshake_timeout",
        Refused::PlaintextClient => "plaintext_client",
        Refused::Handshake(_) => "tls_failed",
        Refused::NoAlpn => "no_alpn",
        Refused::Io(_) => "io_error",
    }
}

/// One WARN for each user whose entry still holds the password itself.
fn warn_legacy(users: &Users) {
    for name in users.legacy() {
        warn!(
            user = %Wire(name),
            "the users file holds this user's password itself (secret or secret_file): run \
             `ftpd passwd --users FILE NAME` to store only a verifier; the old form goes in the \
             next version"
        );
    }
}

/// A refusal to open the root, with what the operator can do about it, as one line (the
/// storage error's text already holds its cause: it is not chained again).
fn with_remedy(
    e: storage::Error,
    root: &std::path::Path,
    state: &std::path::Path,
) -> anyhow::Error {
    let read_only = matches!(&e, storage::Error::Io { source, .. }
        if source.raw_os_error() == Some(libc::EROFS));
    if read_only {
        return anyhow::anyhow!(
            "{} (or its state directory {}) is on a read-only file system: ftpd writes uploads \
             there; mount it read-write (under systemd, list both in ReadWritePaths=)",
            root.display(),
            state.display()
        );
    }
    match e {
        storage::Error::Denied { path, .. } => {
            let (uid, name) = service_user();
            anyhow::anyhow!(
                "ftpd runs as user {name} (uid {uid}), which cannot write {path}: give that \
                 user the directory (chown {name} {path}) or run ftpd as its owner"
            )
        }
        storage::Error::State { .. } => anyhow::anyhow!(
            "{e}: give --state-dir a directory on the root's filesystem, outside the root"
        ),
        storage::Error::Migrate { .. } => anyhow::anyhow!(
            "{e}: move its staging/ and digests/ into the state directory by hand (or remove \
             them), remove it, and start again"
        ),
        e => anyhow::anyhow!("{e}"),
    }
}

/// The user this process runs as (its effective uid, the owner of `/proc/self`), with its name
/// from `/etc/passwd` when it has one.
fn service_user() -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return ("?".into(), "?".into());
    };
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| uid.to_string());
    (uid.to_string(), name)
}

/// Counts the root again and removes staged uploads older than `max_age` or never resumable
/// (left by a crash), logging what it did.
fn sweep(root: &Root, max_age: Duration) {
    root.recount_usage();
    let stale = root.sweep_digests();
    if stale > 0 {
        info!(removed = stale, "removed digests of files changed or gone");
    }
    match root.sweep_staging(max_age) {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed abandoned staged uploads"),
        Err(e) => warn!("cannot sweep staged uploads: {e}"),
    }
}

async fn sweep_every(store: Store, max_age: Duration, period: Duration) {
    let mut tick = tokio::time::interval(period);
    // The first tick is immediate: startup already swept a local root, not an object store.
    if store.local().is_some() {
        tick.tick().await;
    }
    loop {
        tick.tick().await;
        match &store {
            Store::Local(local) => {
                let root = local.root().clone();
                let _ = tokio::task::spawn_blocking(move || sweep(&root, max_age)).await;
            }
            Store::Remote(backend) => match backend.sweep(max_age).await {
                Ok(0) => {}
                Ok(n) => info!(removed = n, "removed abandoned multipart uploads"),
                Err(e) => warn!("cannot sweep abandoned uploads: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a read-only root said "create staging directory in failed: Read-only file
    /// system (os error 30): Read-only file system (os error 30)".
    #[test]
    fn a_read_only_root_is_one_clear_line() {
        let e = storage::Error::io(
            "/srv/.files.ftpd-state",
            "create a directory in",
            std::io::Error::from_raw_os_error(libc::EROFS),
        );
        let root = std::path::Path::new("/srv/files");
        let state = std::path::Path::new("/srv/.files.ftpd-state");
        let text = format!("{:#}", with_remedy(e, root, state));
        assert!(
            text.contains("/srv/files") && text.contains("read-only file system"),
            "{text}"
        );
        assert_eq!(text.matches("os error").count(), 0, "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    /// A directory the service user may not write names the user and the directory.
    #[test]
    fn an_unwritable_directory_names_user_and_directory() {
        let e = storage::Error::io(
            "/var/lib/ftpd/state",
            "write to",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        let root = std::path::Path::new("/var/lib/ftpd/files");
        let text = format!("{:#}", with_remedy(e, root, root));
        let (uid, name) = service_user();
        for needle in [
            format!("user {name} (uid {uid})"),
            "/var/lib/ftpd/state".to_owned(),
        ] {
            assert!(text.contains(&needle), "no {needle:?} in {text}");
        }
    }
}
