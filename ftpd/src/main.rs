//! The `ftpd` binary: settings, logging, signals and systemd; the daemon is in the library.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use ftpd::logging::{self, LogLevel};
use ftpd::{Config, Server, Shared};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tracing::{error, info, warn};

/// Most threads for blocking work (disk reads and writes, commits, hashing) at once; more
/// wait their turn. Every such job is one short disk operation (a chunk, a commit with its
/// fsync, a batch of a listing) that never waits for the network, so a queue costs little;
/// tokio's default of 512 let one burst of 1,000 clients start 512 threads, whose stacks
/// keep about 80 KiB each resident (40 MiB), where peaks of 25 to 130 threads were usual.
/// 64 still lets the filesystem batch many commits' fsyncs into one journal commit.
const BLOCKING_THREADS: usize = 64;

fn main() -> ExitCode {
    tune_malloc();
    // One crypto provider for every TLS user in the process, chosen here rather than by
    // whichever dependency asks first.
    protocol::tls::install_provider();
    let args: Vec<OsString> = std::env::args_os().collect();
    if ftpd::admin::is_admin(&args) {
        let admin = match ftpd::admin::Admin::try_parse_from(&args) {
            Ok(admin) => admin,
            Err(e) => e.exit(),
        };
        ftpd::logging::init_admin();
        return match ftpd::admin::run(admin.command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ftpd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_error) => clap_error.exit(),
            Err(e) => {
                eprintln!("ftpd: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    if config.man || config.completions.is_some() {
        return print_docs(config.man, config.completions);
    }
    let log = match logging::init(&config) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("ftpd: bad --log-level: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ftpd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, args, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--man` and `--completions SHELL`: generated from the flag definitions themselves.
fn print_docs(man: bool, shell: Option<clap_complete::Shell>) -> ExitCode {
    let mut out = Vec::new();
    if man {
        if let Err(e) = clap_mangen::Man::new(Config::command()).render(&mut out) {
            eprintln!("ftpd: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(shell) = shell {
        clap_complete::generate(shell, &mut Config::command(), "ftpd", &mut out);
    }
    use std::io::Write;
    match std::io::stdout().write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, args: Vec<OsString>, log: LogLevel) -> anyhow::Result<()> {
    let check_only = config.check_config;
    let listen = config.listen;
    let location = config.location();
    // The database first: the object store registers its uploads there.
    let cluster = match &config.database {
        Some(url) => Some(ftpd::cluster::Cluster::connect(url).await?),
        None => None,
    };
    let remote = match config.storage {
        Some(_) => Some(ftpd::store::open_remote(&config, cluster.as_ref()).await?),
        None => None,
    };
    let summary = remote.as_ref().map(|r| r.summary.clone());
    let backend = remote.map(|r| r.backend);
    let server = match cluster {
        Some(cluster) => Server::clustered(config, backend, cluster).await?,
        None => Server::with_backend(config, backend)?,
    };
    // The settings as the server resolved them (the state directory's default filled in).
    let config = server.shared().config.clone();
    let fingerprint = server.shared().identity.as_ref().map(|id| id.fingerprint());
    if config.fingerprint {
        match fingerprint {
            Some(fp) => println!("{fp}"),
            None => anyhow::bail!("no TLS key: the daemon is set to --insecure-plaintext"),
        }
        return Ok(());
    }
    if check_only {
        // What the daemon would refuse once bound, refused here too (the address as given:
        // a socket systemd passes is not known until then).
        server.check_exposure(listen)?;
        print!("{}", config.effective());
        if let Some(summary) = &summary {
            println!("# storage: {summary}");
            for weaker in server.shared().store.backend().weaker() {
                println!("# weaker: {weaker}");
            }
        }
        if let Some(fp) = fingerprint {
            println!("# TLS key fingerprint: {fp}");
        }
        return Ok(());
    }
    if let Some(summary) = &summary {
        info!("storage {summary}");
        for weaker in server.shared().store.backend().weaker() {
            info!("storage: {weaker}");
        }
    }
    // Signal handlers exist before READY=1: a stop or reload right after start must be handled,
    // not kill the process with the default action.
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let hup = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
    let listener = listener(listen)?;
    let addr = listener.local_addr()?;
    server.check_exposure(addr)?;
    let state = config
        .state_dir
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    match fingerprint {
        Some(fp) => info!("TLS 1.3; clients pin the server key {fp}"),
        None => info!("plaintext: no TLS (--insecure-plaintext)"),
    }
    info!(root = %location, state = %state.display(), "listening on {addr}");
    // After the main listener's line, which tests and scripts read first.
    if let Some(at) = config.metrics_listen {
        let metrics =
            ftpd::bind(at).with_context(|| format!("cannot listen for metrics on {at}"))?;
        let bound = metrics.local_addr()?;
        if !bound.ip().is_loopback() {
            warn!(
                "metrics listening on {bound}, which is not a loopback address: anyone who can \
                 reach it sees how the server is used"
            );
        } else {
            info!("metrics listening on {bound}");
        }
        let handle = ftpd::metrics::install();
        tokio::spawn(ftpd::metrics::serve(metrics, server.observed(handle)));
    }
    // Only now is the service usable: the root is checked and the socket accepts.
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(period));
    }
    tokio::spawn(reload_on_hangup(hup, server.shared().clone(), args, log));
    server.run(listener, shutdown_signal(term, int)).await;
    info!("stopped");
    Ok(())
}

/// The socket systemd passed (socket activation), or one bound to `listen`.
fn listener(listen: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(std_listener) = fds
        .take_tcp_listener(0)
        .context("cannot use the socket passed by systemd")?
    {
        std_listener.set_nonblocking(true)?;
        info!("using the listening socket passed by systemd");
        return Ok(TcpListener::from_std(std_listener)?);
    }
    ftpd::bind(listen).with_context(|| format!("cannot listen on {listen}"))
}

/// Pings systemd's watchdog at half its period.
async fn watchdog(period: std::time::Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
    }
}

/// SIGHUP re-reads the settings: the log filter, the users file and the TLS certificate and
/// key take effect for new connections; connections already open are left alone.
async fn reload_on_hangup(mut hup: Signal, shared: Shared, args: Vec<OsString>, log: LogLevel) {
    while hup.recv().await.is_some() {
        let outcome = Config::load(&args).and_then(|config| {
            log.set(&config)?;
            Ok(config.users)
        });
        // The users of a service are the database's, which every change reaches anyway; a
        // SIGHUP reads them again all the same.
        let outcome = match (outcome, &shared.cluster) {
            (Ok(_), Some(cluster)) => ftpd::cluster::reload(cluster, &shared)
                .await
                .map(|(_, n)| Some(n)),
            (Ok(Some(path)), None) => shared.reload_users(&path).map(Some),
            (Ok(None), None) => Ok(None),
            (Err(e), _) => Err(e),
        };
        match outcome {
            Ok(Some(n)) => info!(users = n, "reloaded settings and users"),
            Ok(None) => info!("reloaded settings"),
            // One line, whatever the error's text holds: a collector reads one event a line.
            Err(e) => error!(
                "reload failed, keeping the settings in force: {}",
                format!("{e:#}").replace('\n', " ")
            ),
        }
        if let Some(identity) = &shared.identity {
            match identity.reload() {
                Ok(fp) => info!(fingerprint = %fp, "reloaded the TLS certificate and key"),
                Err(e) => error!("TLS reload failed, keeping the certificate in force: {e:#}"),
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM, telling systemd the service is stopping.
async fn shutdown_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// glibc's allocator, set for many connections at once. Each setting named in the environment
/// (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) is left as given.
///
/// One malloc arena per core instead of glibc's up to eight: every transfer borrows a blocking
/// thread, each thread would get an arena of its own, and memory freed in one arena is not
/// reused by the next transfer in another. Measured with 200 concurrent 1 MiB put+get
/// (`bench/run --only conc`): peak RSS 65 MiB before, 34 MiB with two arenas on two cores.
///
/// Blocks of 256 KiB and more (chunk bodies, each upload's 256 KiB write buffer) are mapped
/// each on its own and unmapped when freed, as glibc starts out doing before its dynamic
/// threshold climbs to the size of the first chunk freed (1 MiB). Above it, 1,000 uploads at
/// once placed their write buffers side by side in the heap, calloc zeroed (touched) those
/// that reused freed memory, and memory freed between live blocks stayed resident: peak RSS
/// anywhere from 145 to 353 MiB over runs of 1,000 clients with a 32 MiB budget, 129 to 139
/// MiB with this (mimalloc and jemalloc in glibc's place: 489-595 and 336-347). A fresh
/// mapping costs a page fault per page, so chunk buffers are reused rather than freed (the
/// budget keeps received ones, a download its own). Freed memory at the top of an arena is
/// kept up to 4 MiB (that threshold no longer adapts either), so the small buffers that come
/// and go with each connection do not make it shrink and grow.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        let settings = [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, arenas),
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 256 << 10),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 4 << 20),
        ];
        for (env, param, value) in settings {
            if std::env::var_os(env).is_none() {
                // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called first
                // thing in main, before any other thread exists. A refusal (0) leaves the
                // default.
                #[allow(unsafe_code)]
                unsafe {
                    libc::mallopt(param, value);
                }
            }
        }
    }
}
