//! The small language the tests are written in: a real daemon on a temp root, a command builder
//! for the real client, and file helpers that compare by size and MD5.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use tempfile::TempDir;

/// How long the daemon may take to print its `listening on` line, to log a line a test waits
/// for, or to refuse to start.
const LOG_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client run may take unless a test says otherwise. Generous: the 64 MiB transfer
/// runs on a debug build, possibly next to other tests doing the same.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// What the daemon prints, before its bound address, once it accepts connections.
const READY_MARKER: &str = "listening on ";
/// What the daemon prints before its key's fingerprint, before it listens.
const KEY_MARKER: &str = "clients pin the server key ";

/// One mebibyte, the client's default chunk size.
pub const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Binaries, temp dirs and child processes

/// Path of a binary built by this workspace. Cargo only sets `CARGO_BIN_EXE_*` for binaries of the
/// test's own package, so we look next to the test executable instead:
/// `target/debug/deps/e2e-xxxx` has the binaries in `target/debug`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    let deps = exe
        .parent()
        .expect("test executable has no parent directory");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("deps directory has no parent")
    } else {
        deps
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: build the workspace first (`cargo test --workspace`, or \
         `cargo build -p {name}` before `cargo test -p e2e`)",
        path.display()
    );
    path
}

/// A fresh, empty temporary directory, removed when dropped: one per client working directory.
pub fn tmpdir() -> TempDir {
    tmpdir_named("e2e-work-")
}

/// A fresh, empty temporary directory whose name starts with `prefix`, removed when dropped.
pub fn tmpdir_named(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("cannot create temp dir")
}

/// Clears the variables that would change what our binaries do (`FTPD_*` settings, systemd's
/// `LISTEN_*`, `WATCHDOG_*` and `NOTIFY_SOCKET`), turns colours off and pins the log filter.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("FTPD_")
            || key.starts_with("LISTEN_")
            || key.starts_with("WATCHDOG_")
            || key == "NOTIFY_SOCKET"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a failing test
/// never leaves it running.
pub struct KillOnDrop(
    /// The process.
    Child,
);

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(child)
    }

    /// Kills the process (no chance to clean up) and reaps it; nothing happens once it is reaped.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to `timeout` for `child` to exit; kills it and returns `None` if it does not.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("cannot poll a child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A running `ftpd` serving a directory on port 0. Killed (and reaped) on drop.
///
/// Its stderr goes to a file rather than a pipe: a line is in the file as soon as the daemon has
/// written it, so whatever a test observes (a reply, a notification, an exit) the file already
/// holds everything logged before it, with no reader thread lagging behind.
pub struct Daemon {
    /// The daemon process; in a mutex so that waiting for its exit works through `&self`, from
    /// any of the threads a test shares the daemon with.
    child: Mutex<KillOnDrop>,
    /// The address from its `listening on` line, once a test has waited for it.
    addr: OnceLock<SocketAddr>,
    /// Started with `--insecure-plaintext`: clients must be told too.
    plaintext: bool,
    /// The directory it serves.
    root: PathBuf,
    /// Its private state directory: `--state-dir`, or the default beside the root.
    state: PathBuf,
    /// The file its stderr goes to.
    log: PathBuf,
    /// Holds the log and, unless the test gave a root, the root; declared last so it is removed
    /// after the daemon is gone.
    _dir: TempDir,
}

/// How to start a [`Daemon`]: `Daemon::builder().arg("--quota").arg("3M").start()`.
pub struct DaemonBuilder {
    /// The directory to serve; a fresh temp dir when `None`.
    root: Option<PathBuf>,
    /// The bucket to serve instead of a directory, when set.
    s3: Option<S3Target>,
    /// The `--listen` address.
    listen: String,
    /// Flags after `--root` and `--listen`.
    args: Vec<OsString>,
    /// Variables to set (`Some`) or remove (`None`), after the environment is cleaned.
    env: Vec<(OsString, Option<OsString>)>,
    /// A listening socket handed over as systemd does, if any.
    socket: Option<TcpListener>,
}

impl Daemon {
    /// Starts `ftpd` on a fresh temp root and port 0, and returns once it prints the address it
    /// listens on. Panics, with the daemon's output, if that takes longer than 30 s or the daemon
    /// exits first.
    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    /// Starts `ftpd` like [`Daemon::start`], serving `root`, an existing directory the caller
    /// keeps (and removes). A daemon restarted on the root of a killed one gets a new port.
    pub fn start_on(root: impl AsRef<Path>) -> Daemon {
        Daemon::builder().root(root).start()
    }

    /// Starts `ftpd` like [`Daemon::start`], with these flags too.
    pub fn with_args<I, S>(args: I) -> Daemon
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Daemon::builder().args(args).start()
    }

    /// `ftpd --root ROOT --listen 127.0.0.1:0`, a temp root, a clean environment: change what
    /// the test needs, then [`DaemonBuilder::start`] it.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            root: None,
            s3: None,
            listen: "127.0.0.1:0".into(),
            args: Vec::new(),
            env: Vec::new(),
            socket: None,
        }
    }

    fn child(&self) -> MutexGuard<'_, KillOnDrop> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address clients connect to. Waits for the `listening on` line the first time; panics
    /// with the log if the daemon exits first or stays silent for 30 s.
    #[track_caller]
    pub fn addr(&self) -> SocketAddr {
        *self.addr.get_or_init(|| {
            let mut addr = None;
            self.wait_log(&format!("a `{}` line", READY_MARKER.trim()), |log| {
                addr = logged_addr(log);
                addr.is_some()
            });
            addr.unwrap()
        })
    }

    /// The address of the `listening on` line if the log has it now, without waiting.
    pub fn logged_addr(&self) -> Option<SocketAddr> {
        logged_addr(&self.log())
    }

    /// The directory the daemon serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the remote path `name` lives on disk.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The daemon's private state directory: staged uploads, recorded digests.
    pub fn state(&self) -> PathBuf {
        self.state.clone()
    }

    /// The daemon's private directory where uploads are staged.
    pub fn staging(&self) -> PathBuf {
        self.state().join("staging")
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// What the daemon has logged so far, byte for byte: escape sequences left in, and bytes
    /// that are not UTF-8 shown as U+FFFD.
    pub fn raw_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Panics unless the log, in either format, is free of what a peer could forge with a
    /// field it sent: a line starting with `forged_start` (a raw newline let one in), a raw
    /// control character (an ANSI escape, say) anywhere, or, in JSON lines, a string value that
    /// decodes to one.
    #[track_caller]
    pub fn assert_log_unforged(&self, forged_start: &str) {
        let log = self.raw_log();
        for line in log.lines() {
            let found = if line.starts_with(forged_start) {
                Some("a line a peer forged")
            } else if line.chars().any(char::is_control) {
                Some("a raw control character")
            } else if line.starts_with('{') {
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(value) if json_has_control(&value) => {
                        Some("a JSON string that decodes to a control character")
                    }
                    Ok(_) => None,
                    Err(_) => Some("a line that is not JSON"),
                }
            } else {
                None
            };
            if let Some(what) = found {
                panic!("the log has {what}: {line:?}\nwhole log:\n{log}");
            }
        }
    }

    /// Names of the files clients can see at the top of the root (everything but the private
    /// `.ftpd` directory), sorted.
    pub fn visible_files(&self) -> Vec<String> {
        self.visible("")
    }

    /// Names clients can see in `dir` under the root (the root itself for `""`), sorted.
    pub fn visible(&self, dir: &str) -> Vec<String> {
        let mut names = names(self.root.join(dir));
        names.retain(|n| n != ".ftpd");
        names
    }

    /// A client command aimed at this daemon, trusting its key (`--fingerprint`), or told to
    /// speak plaintext to a daemon that does.
    pub fn cli(&self) -> Cli {
        self.cli_via(self.addr())
    }

    /// A client command aimed at `addr` (a proxy in front of this daemon), trusting this
    /// daemon's key, or in plaintext like the daemon.
    pub fn cli_via(&self, addr: SocketAddr) -> Cli {
        let cli = Cli::new(addr);
        if self.plaintext {
            cli.arg("--insecure-plaintext")
        } else {
            cli.arg("--fingerprint").arg(self.fingerprint())
        }
    }

    /// The fingerprint of the daemon's TLS key, as its log states it.
    #[track_caller]
    pub fn fingerprint(&self) -> String {
        self.addr();
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains(KEY_MARKER))
            .unwrap_or_else(|| panic!("ftpd logged no key fingerprint; log:\n{log}"));
        let (_, rest) = line.split_once(KEY_MARKER).unwrap();
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap()
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Sends the daemon a signal, by name (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// The daemon's exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("cannot poll ftpd")
    }

    /// Waits for the daemon to exit; panics with its log if it does not within `timeout`.
    #[track_caller]
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let status = wait_child(&mut self.child(), timeout);
        status
            .unwrap_or_else(|| panic!("ftpd did not exit within {timeout:?}; log:\n{}", self.log()))
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and reaps it. Its root stays if the
    /// test owns it ([`Daemon::start_on`]).
    pub fn kill(self) {
        self.child().kill();
    }

    /// The metrics address (`--metrics`) the daemon logged it listens on, waiting for the line.
    #[track_caller]
    pub fn metrics_addr(&self) -> SocketAddr {
        const MARKER: &str = "metrics listening on ";
        self.wait_for_log(&[MARKER]);
        let log = self.log();
        let line = log.lines().find(|l| l.contains(MARKER)).unwrap();
        let (_, rest) = line.split_once(MARKER).unwrap();
        let token = rest
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .next()
            .unwrap_or_default();
        token
            .parse()
            .unwrap_or_else(|_| panic!("no address in {line:?}"))
    }

    /// Waits until one log line has all of `words`.
    #[track_caller]
    pub fn wait_for_log(&self, words: &[&str]) {
        self.wait_log(&format!("a line with all of {words:?}"), |log| {
            log.lines()
                .any(|line| words.iter().all(|w| line.contains(w)))
        });
    }

    /// Waits until `cond` holds for the log; panics with the log, saying it waited for `what`,
    /// after 30 s or as soon as the daemon has exited without it holding.
    #[track_caller]
    pub fn wait_log(&self, what: &str, mut cond: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            // Read the log only after seeing the daemon alive, so an exit is never missed.
            let gone = self.exited();
            let log = self.log();
            if cond(&log) {
                return;
            }
            if let Some(status) = gone {
                panic!("ftpd exited ({status}) before logging {what}; log:\n{log}");
            }
            if Instant::now() > deadline {
                panic!("ftpd did not log {what} within {LOG_TIMEOUT:?}; log:\n{log}");
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child().kill();
        if thread::panicking() {
            eprintln!("--- ftpd stderr ---\n{}--- end ftpd stderr ---", self.log());
        }
    }
}

impl DaemonBuilder {
    /// Serves `root`, an existing directory the caller keeps (and removes), instead of a temp dir.
    pub fn root(mut self, root: impl AsRef<Path>) -> DaemonBuilder {
        self.root = Some(root.as_ref().to_owned());
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: &str) -> DaemonBuilder {
        self.listen = addr.into();
        self
    }

    /// Appends one flag or value.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> DaemonBuilder {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends flags and values.
    pub fn args<I, S>(self, args: I) -> DaemonBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, DaemonBuilder::arg)
    }

    /// Sets an environment variable, after the environment is cleaned.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> DaemonBuilder {
        let value = Some(value.as_ref().to_owned());
        self.env.push((key.as_ref().to_owned(), value));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> DaemonBuilder {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Hands `listener` over as systemd's socket activation does: as fd 3, with `LISTEN_FDS=1`
    /// and `LISTEN_PID` set to the daemon's own pid. `--listen` is then ignored.
    pub fn socket(mut self, listener: TcpListener) -> DaemonBuilder {
        self.socket = Some(listener);
        self
    }

    /// Starts the daemon and returns once it prints the address it listens on; panics with its
    /// log if it exits first or stays silent for 30 s.
    #[track_caller]
    pub fn start(self) -> Daemon {
        let daemon = self.spawn();
        daemon.addr();
        daemon
    }

    /// Starts the daemon and returns at once, for tests that watch it come up.
    pub fn spawn(self) -> Daemon {
        let dir = tmpdir_named("e2e-ftpd-");
        let mut cmd = match self.socket {
            // LISTEN_PID must be the daemon's own pid, unknown before it is spawned: the
            // shell's `$$` is the pid that `exec` hands on to ftpd.
            Some(_) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
                    .arg(bin("ftpd"));
                cmd
            }
            None => Command::new(bin("ftpd")),
        };
        let (root, state) = self.files(&mut cmd, dir.path());
        cmd.arg("--listen").arg(&self.listen).args(&self.args);
        self.environment(&mut cmd);
        if let Some(listener) = self.socket {
            cmd.env("LISTEN_FDS", "1");
            cmd.fd_mappings(vec![FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: 3,
            }])
            .expect("fd 3 is free in the child");
        }
        let plaintext = self.args.iter().any(|a| a == "--insecure-plaintext");
        let log = dir.path().join("ftpd.log");
        let file = File::create(&log).expect("cannot create the log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("cannot spawn ftpd");
        Daemon {
            child: Mutex::new(KillOnDrop::new(child)),
            addr: OnceLock::new(),
            plaintext,
            root,
            state,
            log,
            _dir: dir,
        }
    }

    /// Where the files are, on `cmd`'s command line: `--root` (a fresh root in `dir` unless
    /// one was given) or the S3 flags. Gives the root (on S3 a path that does not exist, so a
    /// test that looks there by mistake finds nothing) and the state directory.
    fn files(&self, cmd: &mut Command, dir: &Path) -> (PathBuf, PathBuf) {
        if let Some(s3) = &self.s3 {
            let state = s3.state.clone().unwrap_or_else(|| dir.join("state"));
            s3.flags(cmd, &state);
            return (dir.join("no-root-on-s3"), state);
        }
        let root = self.root.clone().unwrap_or_else(|| {
            let root = dir.join("root");
            fs::create_dir(&root).expect("cannot create the root");
            root
        });
        cmd.arg("--root").arg(&root);
        let state = state_dir(&root, &self.args);
        (root, state)
    }

    /// A clean environment, with the tests' S3 credentials for a daemon on S3, then the
    /// variables the test set or removed.
    fn environment(&self, cmd: &mut Command) {
        clean_env(cmd);
        if self.s3.is_some() {
            s3_env(cmd);
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
    }

    /// Runs the daemon, which must exit with a failure status within 30 s without listening;
    /// returns its log. A daemon that keeps running instead is killed and the test fails.
    #[track_caller]
    pub fn refuses_to_start(self) -> String {
        let args = self.args.clone();
        let daemon = self.spawn();
        let status = daemon.wait_exit(LOG_TIMEOUT);
        let log = daemon.log();
        assert!(
            !status.success() && status.code().is_some(),
            "ftpd {args:?} was expected to exit with a failure, got {status}; stderr:\n{log}"
        );
        assert!(
            !log.contains(READY_MARKER),
            "ftpd {args:?} listened before refusing; stderr:\n{log}"
        );
        log
    }
}

/// The state directory a daemon given `args` uses for `root`: the `--state-dir` among them,
/// else ftpd's default, beside the root and named after it (`DIR/.NAME.ftpd-state`).
pub fn state_dir(root: &Path, args: &[OsString]) -> PathBuf {
    let given = args
        .iter()
        .position(|a| a == "--state-dir")
        .and_then(|i| args.get(i + 1));
    if let Some(dir) = given {
        return PathBuf::from(dir);
    }
    let root = root.canonicalize().unwrap_or_else(|_| root.to_owned());
    let mut name = OsString::from(".");
    name.push(root.file_name().expect("the root is not /"));
    name.push(".ftpd-state");
    root.with_file_name(name)
}

/// A temp dir holding a root to serve (`root/`) and, beside it, whatever else a test needs there:
/// a users file and secrets, a settings file, a sentinel nothing from the daemon may touch, and
/// the daemon's state directory (`.root.ftpd-state`, its default). Anything that escaped the
/// root would land beside them too.
pub struct Site {
    /// Removed on drop; a daemon on the root is declared after its site, so it is gone first.
    dir: TempDir,
}

impl Site {
    pub fn new() -> Site {
        let dir = tmpdir_named("e2e-site-");
        fs::create_dir(dir.path().join("root")).expect("cannot create the root");
        Site { dir }
    }

    /// The directory holding the root and the files beside it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory to serve.
    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    /// Where `rel` goes beside the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `contents` to `rel` beside the root (creating its directory), readable by its owner
    /// only, as users files and secrets must be.
    pub fn private_file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).expect("cannot create a directory");
        write_private(&path, contents);
        path
    }

    /// `ftpd --root ROOT --listen 127.0.0.1:0` serving this site's root, not started yet.
    pub fn daemon(&self) -> DaemonBuilder {
        Daemon::builder().root(self.root())
    }
}

/// The address in the first complete `listening on ADDR` line of a log, human or JSON.
fn logged_addr(log: &str) -> Option<SocketAddr> {
    // A line still being written has no newline yet, and maybe half an address.
    let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
    let line = complete.lines().find(|l| l.contains(READY_MARKER))?;
    let (_, rest) = line.split_once(READY_MARKER)?;
    let token = rest
        .split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap_or_default();
    let token = token.trim_matches(|c: char| matches!(c, '\'' | '`' | ',' | ';' | '.'));
    let addr = token.parse().unwrap_or_else(|_| {
        panic!("ftpd's ready line has no address after `{READY_MARKER}`: {line:?}")
    });
    Some(addr)
}

/// The data directory every client of this test run uses (known_hosts, history), so that no
/// test touches the user's own. Removed when the run ends, if it ends normally.
pub fn client_data_dir() -> &'static Path {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| tmpdir_named("e2e-client-data-")).path()
}

/// Removes terminal colour codes (`ESC [ … letter`), in case the logger emits them anyway.
/// Whether any string in `value` (keys included) holds a control character.
fn json_has_control(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.chars().any(char::is_control),
        Value::Array(items) => items.iter().any(json_has_control),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.chars().any(char::is_control) || json_has_control(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The client

/// An `ftp-cli` invocation being built: `daemon.cli().cwd(dir).cmds("put a; get a b").run()`.
#[derive(Clone)]
pub struct Cli {
    /// Arguments after the program name, starting with the daemon's address.
    args: Vec<OsString>,
    /// The client's working directory, which its relative local paths resolve against.
    cwd: Option<PathBuf>,
    /// Bytes fed to stdin; without them stdin is empty (`/dev/null`).
    stdin: Option<Vec<u8>>,
    /// How long `run` waits before killing the client and failing the test.
    timeout: Duration,
    /// Variables to set (`Some`) or remove (`None`) on top of the test run's environment.
    env: Vec<(OsString, Option<OsString>)>,
}

impl Cli {
    /// A client command aimed at `addr`, for a server that is not a [`Daemon`] (a proxy).
    pub fn new(addr: SocketAddr) -> Cli {
        Cli {
            args: vec![addr.to_string().into()],
            cwd: None,
            stdin: None,
            timeout: RUN_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// A client command aimed at `host`, as a user would type it (`localhost:2121`), for tests
    /// of what the name itself decides: CA certificates checked against it, pins keyed by it.
    pub fn host(host: impl Into<OsString>) -> Cli {
        Cli {
            args: vec![host.into()],
            cwd: None,
            stdin: None,
            timeout: RUN_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the client (`FTP_CLI_SECRET`, say).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cli {
        let value = Some(value.as_ref().to_owned());
        self.env.push((key.as_ref().to_owned(), value));
        self
    }

    /// Runs the client in `dir`.
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Cli {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cli {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Logs in as `user` with the secret in `secret_file`: `-u USER --secret-file FILE`.
    pub fn user(self, user: &str, secret_file: impl AsRef<Path>) -> Cli {
        self.arg("-u")
            .arg(user)
            .arg("--secret-file")
            .arg(secret_file.as_ref())
    }

    /// Runs `commands` non-interactively: `-c "put a; get a b"`.
    pub fn cmds(self, commands: &str) -> Cli {
        self.arg("-c").arg(commands)
    }

    /// Runs the commands in a batch file, one per line: `-b FILE`.
    pub fn batch(self, file: impl AsRef<Path>) -> Cli {
        self.arg("-b").arg(file.as_ref())
    }

    /// Puts `name` from the client's directory and gets it back as `back` (`put NAME; get NAME
    /// BACK`, plain names); panics unless both transfers are reported verified and `back` is
    /// identical to `name`. The copy on the server is the caller's to check: it knows where it is.
    #[track_caller]
    pub fn round_trip(self, name: &str, back: &str) -> Run {
        let dir = self
            .cwd
            .clone()
            .expect("a round trip needs the client's directory (`cwd`)");
        let src = dir.join(name);
        let run = self
            .cmds(&format!("put {name}; get {name} {back}"))
            .run()
            .ok()
            .verified(&src, 2);
        assert_same_file(&src, dir.join(back));
        run
    }

    /// Feeds `input` to the client's stdin.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Cli {
        self.stdin = Some(input.into());
        self
    }

    /// Overrides how long `run` waits for the client to finish.
    pub fn timeout(mut self, timeout: Duration) -> Cli {
        self.timeout = timeout;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin("ftp-cli"));
        client_env(&mut cmd);
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Starts the client without waiting for it, for tests that interrupt it. Its output is
    /// discarded so it cannot block on a full pipe.
    pub fn spawn(&self) -> Running {
        assert!(self.stdin.is_none(), "spawn does not feed stdin");
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {self}: {e}"));
        Running {
            child: KillOnDrop::new(child),
            cmdline: self.to_string(),
        }
    }

    /// Runs the client to completion and returns what it did. Panics, killing it, if it runs
    /// longer than the timeout.
    pub fn run(&self) -> Run {
        run_to_end(
            self.command(),
            self.stdin.clone(),
            self.timeout,
            self.to_string(),
        )
    }
}

/// The environment every client run gets: no colours, no password from the test runner's
/// environment, and known_hosts and the history in a directory of the test run's own (where
/// no test may make the default key: it would be every other client's key too).
fn client_env(cmd: &mut Command) {
    cmd.env("NO_COLOR", "1")
        .env("XDG_DATA_HOME", client_data_dir())
        .env_remove("FTP_CLI_SECRET");
}

/// Runs `cmd` (its stdout and stderr piped) to completion, feeding it `stdin`, and returns
/// what it did. Panics, killing it, if it runs longer than `timeout`.
fn run_to_end(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration, cmdline: String) -> Run {
    let deadline = Instant::now() + timeout;
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmdline}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A process that exits early closes the pipe; that shows up in its status instead.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    // Both pipes reach EOF when the process exits; until then we wait, but not forever.
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = read_to_end(child.stdout.take().expect("piped"), done_tx.clone());
    let stderr = read_to_end(child.stderr.take().expect("piped"), done_tx);
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmdline} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap()),
                String::from_utf8_lossy(&stderr.join().unwrap()),
            );
        }
    }
    let status = child.wait().expect("cannot wait for a child");
    Run {
        cmdline,
        status,
        stdout: String::from_utf8_lossy(&stdout.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
    }
}

impl fmt::Display for Cli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`ftp-cli")?;
        for arg in &self.args {
            write!(f, " {arg:?}")?;
        }
        write!(f, "`")?;
        if let Some(dir) = &self.cwd {
            write!(f, " in {}", dir.display())?;
        }
        Ok(())
    }
}

fn read_to_end(
    mut pipe: impl Read + Send + 'static,
    done: mpsc::Sender<()>,
) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = done.send(());
        buf
    })
}

/// A client started with [`Cli::spawn`]; killed (and reaped) on drop if still running.
pub struct Running {
    /// The client process; killed on drop.
    child: KillOnDrop,
    /// The command, for failure messages.
    cmdline: String,
}

impl Running {
    /// Panics if the client has already exited: the test meant to catch it mid-way.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("cannot poll ftp-cli") {
            panic!(
                "{} exited ({status}) before the test could interrupt it",
                self.cmdline
            );
        }
    }

    /// Kills the client (SIGKILL: no chance to say goodbye) and reaps it.
    pub fn kill(mut self) {
        self.child.kill();
    }
}

/// What one client run did.
pub struct Run {
    /// The command, for failure messages.
    cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics unless the client exited with status 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        if !self.status.success() {
            panic!("expected success, got {self}");
        }
        self
    }

    /// Panics unless the client failed (non-zero exit, not killed by a signal).
    #[track_caller]
    pub fn fails(self) -> Run {
        if self.status.success() || self.status.code().is_none() {
            panic!("expected a non-zero exit, got {self}");
        }
        self
    }

    /// Panics unless the client failed with exit status `code`.
    #[track_caller]
    pub fn exits(self, code: i32) -> Run {
        let run = self.fails();
        assert_eq!(run.status.code(), Some(code), "wrong exit status: {run}");
        run
    }

    /// Panics unless stderr contains `needle`, ignoring case.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Run {
        self.stderr_has_any(&[needle])
    }

    /// Panics unless stderr contains one of `needles`, ignoring case.
    #[track_caller]
    pub fn stderr_has_any(self, needles: &[&str]) -> Run {
        let haystack = self.stderr.to_lowercase();
        if !needles.iter().any(|n| haystack.contains(&n.to_lowercase())) {
            panic!("expected stderr to mention one of {needles:?}, got {self}");
        }
        self
    }

    /// Panics if stderr shows internals a person should not read: a wire code in parentheses
    /// (`(not_found)`), an OS error number (`(os error 2)`), or a download's temp name
    /// (`x.jpg.ftp-part`).
    #[track_caller]
    pub fn no_internals(self) -> Run {
        const CODES: &[&str] = &[
            "not_found",
            "exists",
            "denied",
            "bad_request",
            "checksum_mismatch",
            "size_mismatch",
            "past_end",
            "cancelled",
            "prefix_mismatch",
            "is_directory",
            "not_a_directory",
            "not_empty",
            "io",
            "no_space",
            "too_large",
            "version_mismatch",
            "tls_required",
            "unsupported",
            "busy",
            "auth_required",
            "auth_failed",
            "bad_auth",
            "timeout",
            "internal",
            "unknown",
        ];
        let shown = |what: &str| self.stderr.contains(what);
        if let Some(code) = CODES.iter().find(|c| shown(&format!("({c})"))) {
            panic!("stderr shows the wire code {code:?}: {self}");
        }
        if shown("os error") || shown(".ftp-part") {
            panic!("stderr shows an OS error number or a temp name: {self}");
        }
        self
    }

    /// Panics unless the error went to stderr as exactly one non-empty line.
    #[track_caller]
    pub fn one_line_error(self) -> Run {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if lines.len() != 1 {
            panic!("expected a one-line error on stderr, got {self}");
        }
        self
    }

    /// Panics unless stdout has a summary line saying `verified` with the MD5 of `file`, once
    /// for each transfer of it (`times`).
    #[track_caller]
    pub fn verified(self, file: impl AsRef<Path>, times: usize) -> Run {
        let md5 = md5_file(file.as_ref());
        let found = self
            .stdout
            .lines()
            .filter(|l| l.contains("verified") && l.to_lowercase().contains(&md5))
            .count();
        if found != times {
            panic!(
                "expected {times} summary line(s) with `verified` and {md5} ({}), found {found}; \
                 got {self}",
                file.as_ref().display()
            );
        }
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands

/// A run of one of our binaries that is not a session: `ftpd adduser`, `ftpd passwd`, `ftp-cli
/// keygen`. `Tool::ftpd().args(["passwd", "--users"]).arg(&file).arg("bob").stdin("pw\n").run()`.
/// The environment is cleaned as for the daemon and the client, and stdin is empty (never a
/// terminal) unless given.
pub struct Tool {
    /// The binary, by its name in the workspace.
    name: &'static str,
    /// Its arguments.
    args: Vec<OsString>,
    /// Bytes fed to stdin; without them stdin is `/dev/null`.
    stdin: Option<Vec<u8>>,
}

impl Tool {
    /// `ftpd` with these arguments to come.
    pub fn ftpd() -> Tool {
        Tool::new("ftpd")
    }

    /// `ftp-cli` with these arguments to come.
    pub fn ftp_cli() -> Tool {
        Tool::new("ftp-cli")
    }

    fn new(name: &'static str) -> Tool {
        Tool {
            name,
            args: Vec::new(),
            stdin: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Tool {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Tool::arg)
    }

    /// Feeds `input` to stdin (a pipe: not a terminal).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Tool {
        self.stdin = Some(input.into());
        self
    }

    /// Runs it to completion within [`LOG_TIMEOUT`]; panics, killing it, if it takes longer.
    pub fn run(&self) -> Run {
        let mut cmd = Command::new(bin(self.name));
        clean_env(&mut cmd);
        client_env(&mut cmd);
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_to_end(cmd, self.stdin.clone(), LOG_TIMEOUT, self.to_string())
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}", self.name)?;
        for arg in &self.args {
            write!(f, " {arg:?}")?;
        }
        write!(f, "`")
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Writes `size` pseudo-random bytes to `path`; the same `seed` gives the same bytes, and
/// different seeds give files that differ from the first byte on.
pub fn write_random(path: impl AsRef<Path>, size: u64, seed: u64) {
    let path = path.as_ref();
    let mut out = BufWriter::with_capacity(
        MIB as usize,
        File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display())),
    );
    // xorshift64*: plenty for test data, and fast enough to write hundreds of MiB unoptimized.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).expect("cannot write test data");
        left -= n as u64;
    }
    out.flush().expect("cannot write test data");
}

/// Writes `contents` to `path`.
pub fn write_file(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    let path = path.as_ref();
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Writes `contents` to `path` with mode 600, as users files and secrets must be.
pub fn write_private(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    let path = path.as_ref();
    write_file(path, contents);
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("cannot chmod 600 {}: {e}", path.display()));
}

/// A temp dir of the client's secret files, one per login: `keys.secret("alice", "…")`.
pub struct Keys {
    /// Holds the files; removed on drop.
    dir: TempDir,
    /// Numbers the files, so that no login overwrites another's.
    count: AtomicU32,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            dir: tmpdir_named("e2e-keys-"),
            count: AtomicU32::new(0),
        }
    }

    /// A new private file holding `user`'s `secret` and a newline, which the client ignores.
    pub fn secret(&self, user: &str, secret: &str) -> PathBuf {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.path().join(format!("{user}-{n}.secret"));
        write_private(&file, format!("{secret}\n"));
        file
    }
}

/// The names in `dir`, sorted.
pub fn names(dir: impl AsRef<Path>) -> Vec<String> {
    let dir = dir.as_ref();
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The size of the largest file under a staging directory, searched recursively: how far the
/// furthest upload got. 0 when there is none, or no such directory.
pub fn staged_bytes(staging: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(staging) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => staged_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// The MD5 of a file's contents, as lowercase hex.
pub fn md5_file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut hasher = protocol::Hasher::new(protocol::DigestKind::Md5);
    hasher
        .update_from(&mut file, u64::MAX)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hasher.finish().to_string()
}

/// Panics unless the two files have the same size and the same MD5. The message names the files
/// and their sizes and hashes, never their contents.
#[track_caller]
pub fn assert_same_file(expected: impl AsRef<Path>, actual: impl AsRef<Path>) {
    let (expected, actual) = (expected.as_ref(), actual.as_ref());
    let size = |p: &Path| {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", p.display()))
            .len()
    };
    let (want, got) = (size(expected), size(actual));
    assert_eq!(
        want,
        got,
        "{} has {got} bytes, expected {want} like {}",
        actual.display(),
        expected.display()
    );
    let (want, got) = (md5_file(expected), md5_file(actual));
    assert_eq!(
        want,
        got,
        "{} has MD5 {got}, expected {want} like {} (same size, different bytes)",
        actual.display(),
        expected.display()
    );
}

/// Panics if `path` exists.
#[track_caller]
pub fn assert_missing(path: impl AsRef<Path>) {
    let path = path.as_ref();
    assert!(
        fs::symlink_metadata(path).is_err(),
        "{} exists but should not",
        path.display()
    );
}

/// Polls `cond` every few milliseconds until it holds; panics after `timeout`. For conditions
/// that have no event to wait on, like a file appearing.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(
        holds_within(timeout, cond),
        "timed out after {timeout:?} waiting until {what}"
    );
}

/// Polls `cond` every few milliseconds until it holds (true) or `timeout` passes (false).
pub fn holds_within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Every file under `dir` with its MD5, by path relative to `dir` (`/`-joined): two trees are
/// the same when these are equal.
pub fn file_digests(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, md5_file(&path));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// S3: a moto server, a bucket on it, a daemon serving the bucket

/// The credentials and region every S3 daemon and bucket client of the tests uses against
/// moto, which accepts any.
const S3_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// Set to an S3 endpoint's URL, the S3 tests run against it instead of a moto of their own
/// (bench/garage does, for a Garage cluster), with the credentials and region of
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`, and a bucket of their own each
/// (the key must be allowed to create buckets).
const EXTERNAL_S3: &str = "E2E_S3_ENDPOINT";

/// How long moto may take to accept connections: it is a Python program that imports a lot.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The credentials and region of the S3 tests: [`S3_ENV`] for moto, the environment's own for
/// an [`EXTERNAL_S3`] server.
fn s3_credentials() -> [(&'static str, String); 3] {
    S3_ENV.map(|(key, moto)| {
        let value = match std::env::var_os(EXTERNAL_S3) {
            Some(_) => std::env::var(key)
                .unwrap_or_else(|_| panic!("{EXTERNAL_S3} is set but {key} is not")),
            None => moto.to_owned(),
        };
        (key, value)
    })
}

/// A port of 127.0.0.1 that was free a moment ago, and nothing listens on now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a free port");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// HAProxy (Debian's package) in TCP mode, so TLS passes through it, with one frontend on a free
/// loopback port in front of one backend; killed on drop.
pub struct Haproxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The process, in the foreground (`-db`).
    _child: KillOnDrop,
    /// Its configuration and log.
    dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy whose backend is `backend` (its `server` lines, and a `balance` line if
    /// any, each ending in a newline) and returns once it listens.
    pub fn start(backend: &str) -> Haproxy {
        let dir = tmpdir_named("e2e-haproxy-");
        let port = free_port();
        // Refuses every connection: once it takes one, the frontend above it is bound too
        // (HAProxy binds its listeners in order before it serves), and no probe reaches ftpd.
        let ready = free_port();
        let config = format!(
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
             timeout server 30s\n\
             frontend ftp\n    bind 127.0.0.1:{port}\n    default_backend ftpd\n\
             frontend ready\n    bind 127.0.0.1:{ready}\n    tcp-request connection reject\n\
             backend ftpd\n{backend}"
        );
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, config).expect("cannot write haproxy.cfg");
        let log = File::create(dir.path().join("haproxy.log")).expect("cannot make a log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone a file"))
            .stderr(log)
            .spawn()
            .expect("cannot start haproxy");
        let mut child = KillOnDrop::new(child);
        let ready = SocketAddr::from(([127, 0, 0, 1], ready));
        let haproxy_log = || fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
        wait_until("haproxy listens", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", haproxy_log());
            }
            std::net::TcpStream::connect_timeout(&ready, Duration::from_secs(5)).is_ok()
        });
        Haproxy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
            dir,
        }
    }

    /// What HAProxy has printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

/// A `moto_server` (a real S3 implementation) on a free loopback port, killed on drop; or the
/// server [`EXTERNAL_S3`] names, left alone.
pub struct Moto {
    /// The server process; `None` for an external server.
    _child: Option<KillOnDrop>,
    /// Its URL.
    endpoint: String,
    /// Whether bucket names must be made unique: an external server outlives the test run and
    /// is shared by its tests.
    external: bool,
}

impl Moto {
    /// Starts moto and returns once it accepts connections; `None`, with a note on stderr, when
    /// it is not installed, except under CI (`CI` set), which installs it: there it panics.
    pub fn start() -> Option<Moto> {
        if let Ok(endpoint) = std::env::var(EXTERNAL_S3) {
            return Some(Moto {
                _child: None,
                endpoint,
                external: true,
            });
        }
        let port = free_port();
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => KillOnDrop::new(child),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("moto_server is required in CI (pip install 'moto[server]'): {e}")
            }
            Err(_) => {
                eprintln!("note: moto_server not installed (pip install 'moto[server]'); skipped");
                return None;
            }
        };
        // moto prints no line to wait for: it is ready when it accepts a connection.
        let deadline = Instant::now() + MOTO_START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().expect("cannot poll moto_server") {
                panic!("moto_server exited ({status}) before listening on port {port}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within {MOTO_START_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Some(Moto {
            _child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            external: false,
        })
    }

    /// The URL daemons and clients reach it at: `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// `name` on moto; on an external server, `name` made unique to this test run and test.
    fn unique(&self, name: &str) -> String {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        if !self.external {
            return name.to_owned();
        }
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        format!("{name}-{}-{n}", std::process::id())
    }

    /// A client of bucket `name` on this server (made unique on an external one), the bucket
    /// not created.
    pub fn bucket_named(&self, name: &str) -> Bucket {
        Bucket::new(&self.endpoint(), &self.unique(name))
    }

    /// A new, empty bucket `name` on this server.
    pub fn bucket(&self, name: &str) -> Bucket {
        let bucket = self.bucket_named(name);
        bucket
            .block(bucket.client.create_bucket())
            .unwrap_or_else(|e| panic!("cannot create bucket {name}: {e}"));
        bucket
    }
}

/// One bucket seen through the S3 API itself (s3store's client, not the daemon), whole: no
/// prefix, so tests see every key the daemon wrote, its private ones included.
pub struct Bucket {
    /// The async client's runtime: the tests are synchronous.
    rt: tokio::runtime::Runtime,
    /// A client of the whole bucket.
    client: s3store::Client,
    /// The bucket's name.
    name: String,
    /// The server's URL.
    endpoint: String,
}

impl Bucket {
    /// A client of bucket `name` at `endpoint`, with the tests' credentials.
    pub fn new(endpoint: &str, name: &str) -> Bucket {
        let [(_, key), (_, secret), (_, region)] = s3_credentials();
        let config = s3store::Config {
            bucket: name.to_owned(),
            prefix: String::new(),
            endpoint: Some(endpoint.parse().expect("the endpoint is a URL")),
            region,
            credentials: s3store::Credentials {
                key,
                secret,
                token: None,
            },
        };
        let client = s3store::Client::new(config, s3store::Timeouts::default())
            .expect("a valid S3 client config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot build a runtime");
        Bucket {
            rt,
            client,
            name: name.to_owned(),
            endpoint: endpoint.to_owned(),
        }
    }

    /// Runs one request of the client to completion.
    pub fn block<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(request)
    }

    /// The client, for requests the helpers below do not make.
    pub fn client(&self) -> &s3store::Client {
        &self.client
    }

    /// Every key in the bucket, sorted (S3 lists in key order).
    #[track_caller]
    pub fn keys(&self) -> Vec<String> {
        let listing = self
            .block(self.client.list_all("", None, 100_000))
            .unwrap_or_else(|e| panic!("cannot list bucket {}: {e}", self.name));
        listing.objects.into_iter().map(|o| o.key).collect()
    }

    /// The keys clients may see: everything outside the daemon's private `.ftpd/` under
    /// `prefix` (`""` or ending in `/`), relative to it.
    #[track_caller]
    pub fn visible_keys(&self, prefix: &str) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
            .filter(|k| !k.starts_with(".ftpd/"))
            .collect()
    }

    /// The size of the object `key`, `None` when there is none.
    #[track_caller]
    pub fn size(&self, key: &str) -> Option<u64> {
        match self.block(self.client.head(key)) {
            Ok(meta) => Some(meta.size),
            Err(e) if e.kind() == s3store::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot head {key} in bucket {}: {e}", self.name),
        }
    }

    /// The multipart uploads open in the bucket (the first page: tests open a few).
    #[track_caller]
    pub fn open_uploads(&self) -> Vec<s3store::OpenUpload> {
        self.block(self.client.list_uploads_page("", None))
            .unwrap_or_else(|e| panic!("cannot list uploads in bucket {}: {e}", self.name))
            .uploads
    }

    /// The upload-state records the daemon keeps under `.ftpd/uploads/` of `prefix`, parsed.
    #[track_caller]
    pub fn upload_records(&self, prefix: &str) -> Vec<s3store::UploadRecord> {
        let dir = format!("{prefix}{}", s3store::UPLOADS_PREFIX);
        let listing = self
            .block(self.client.list_all(&dir, None, 1000))
            .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"));
        listing
            .objects
            .iter()
            // A record being replaced may be gone between the listing and the read.
            .filter_map(|o| self.read(&o.key))
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }

    /// The parts recorded so far of the upload to `key` (relative to `prefix`): 0 without one.
    #[track_caller]
    pub fn recorded_parts(&self, prefix: &str, key: &str) -> usize {
        self.upload_records(prefix)
            .iter()
            .filter(|r| r.key == key || r.key == format!("{prefix}{key}"))
            .map(|r| r.parts.len())
            .max()
            .unwrap_or(0)
    }

    /// The bytes of object `key`, `None` when there is none. For small objects: records.
    #[track_caller]
    pub fn read(&self, key: &str) -> Option<Vec<u8>> {
        self.block(async {
            let mut download = match self.client.get(key, 0, None).await {
                Ok(d) => d,
                Err(e) if e.kind() == s3store::ErrorKind::NotFound => return None,
                Err(e) => panic!("cannot get {key}: {e}"),
            };
            let mut out = Vec::new();
            while let Some(chunk) = download.chunk().await.expect("cannot read an object") {
                out.extend_from_slice(&chunk);
            }
            Some(out)
        })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `s3://BUCKET` followed by `/PREFIX` unless `prefix` is empty: `--storage`.
    pub fn location(&self, prefix: &str) -> String {
        match prefix.trim_end_matches('/') {
            "" => format!("s3://{}", self.name),
            p => format!("s3://{}/{p}", self.name),
        }
    }

    /// `ftpd --storage s3://BUCKET --s3-endpoint URL --state-dir DIR --listen 127.0.0.1:0`,
    /// with the tests' credentials, not started yet.
    pub fn daemon(&self) -> DaemonBuilder {
        DaemonBuilder::s3(&self.location(""), &self.endpoint)
    }
}

/// Where a daemon on S3 keeps its files: `--storage`, `--s3-endpoint` and `--state-dir`.
struct S3Target {
    /// `--storage s3://BUCKET[/PREFIX]`.
    storage: String,
    /// `--s3-endpoint`.
    endpoint: String,
    /// `--state-dir`, a directory the caller keeps (to restart a daemon on it); a fresh one in
    /// the daemon's temp dir when `None`.
    state: Option<PathBuf>,
}

impl S3Target {
    fn flags(&self, cmd: &mut Command, state: &Path) {
        cmd.arg("--storage")
            .arg(&self.storage)
            .arg("--s3-endpoint")
            .arg(&self.endpoint)
            .arg("--state-dir")
            .arg(state);
    }
}

impl DaemonBuilder {
    /// A daemon on `storage` (`s3://BUCKET[/PREFIX]`) at `endpoint`, which need not be moto:
    /// a closed port, or a fake server. Only the tests' S3 credentials reach it.
    pub fn s3(storage: &str, endpoint: &str) -> DaemonBuilder {
        let mut builder = Daemon::builder();
        builder.s3 = Some(S3Target {
            storage: storage.to_owned(),
            endpoint: endpoint.to_owned(),
            state: None,
        });
        builder
    }

    fn s3_target(&mut self) -> &mut S3Target {
        self.s3
            .as_mut()
            .expect("an S3 setting on a daemon not on S3 (DaemonBuilder::s3)")
    }

    /// Serves `PREFIX/` of the bucket: `--storage s3://BUCKET/PREFIX`.
    pub fn prefix(mut self, prefix: &str) -> DaemonBuilder {
        let s3 = self.s3_target();
        let bucket = s3.storage.trim_start_matches("s3://");
        let bucket = bucket.split('/').next().unwrap_or_default().to_owned();
        s3.storage = format!("s3://{bucket}/{}", prefix.trim_end_matches('/'));
        self
    }

    /// Keeps the S3 daemon's private state in `dir`, which the caller keeps.
    pub fn state_dir(mut self, dir: impl AsRef<Path>) -> DaemonBuilder {
        self.s3_target().state = Some(dir.as_ref().to_owned());
        self
    }

    /// Runs `ftpd --check-config` with these settings to completion.
    pub fn check_config(self) -> Run {
        let daemon = self.arg("--check-config");
        let what = format!("`ftpd {:?}`", daemon.args);
        let dir = tmpdir_named("e2e-ftpd-check-");
        let mut cmd = Command::new(bin("ftpd"));
        daemon.files(&mut cmd, dir.path());
        cmd.args(&daemon.args);
        daemon.environment(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_to_end(cmd, None, LOG_TIMEOUT, what)
    }
}

/// The S3 part of a daemon's environment: only the tests' credentials and region, nothing else
/// of the test runner's (a profile, a session token, a shared credentials file).
fn s3_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/e2e-no-credentials",
    )
    .env("AWS_CONFIG_FILE", "/nonexistent/e2e-no-config");
    for (key, value) in s3_credentials() {
        cmd.env(key, value);
    }
}

/// An HTTP server on loopback that answers every request with one canned reply, as an S3
/// service that refuses our credentials does. Stops on drop.
pub struct CannedHttp {
    /// Where it listens.
    addr: SocketAddr,
    /// Tells the accept loop to stop at the next connection.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CannedHttp {
    /// Answers every request with `status` (`403 Forbidden`) and the XML `body`.
    pub fn start(status: &'static str, body: &'static str) -> CannedHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    // The request's head, up to the blank line, then its body (a put's), so
                    // the client has sent everything when the refusal comes.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    // Capped: the probe's body is a few bytes.
                    let mut request_body = (&mut conn).take(length.min(16 * MIB));
                    if std::io::copy(&mut request_body, &mut std::io::sink()).is_err() {
                        return;
                    }
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes());
                });
            }
        });
        CannedHttp { addr, stop }
    }

    /// Its URL: `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CannedHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

// ---------------------------------------------------------------------------------------------
// Outside tools

/// Whether `tool` (from the Debian package `package`) answers `flag`; fails under CI (which
/// installs it), skips elsewhere with a note.
pub fn have_tool(tool: &str, flag: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (Debian package {package}; .ci/run installs it)"
        );
        eprintln!("skipped: {tool} is missing (apt-get install {package})");
    }
    found
}

/// How much the client's summary says it sent this time, from a line like `put big.bin: 8.00 MiB
/// (8388613 bytes, 5.00 MiB of it sent this time) in ...`; `None` without such a line (a
/// transfer that sent the whole file says nothing of the kind).
pub fn sent_this_time(stdout: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .find(|l| l.contains(" of it sent this time"))?;
    let (before, _) = line.split_once(" of it sent this time")?;
    let amount = before.rsplit(", ").next()?;
    let (number, unit) = amount.split_once(' ')?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => MIB as f64,
        "GiB" => (1024 * MIB) as f64,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}
