//! The small language the tests are written in: a real daemon on a temp root, a command builder
//! for the real client, and file helpers that compare by size and MD5.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};
use tempfile::TempDir;

/// How long the daemon may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client run may take unless a test says otherwise. Generous: the 64 MiB transfer
/// runs on a debug build, possibly next to other tests doing the same.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// What the daemon prints, before its bound address, once it accepts connections.
const READY_MARKER: &str = "listening on ";

/// One mebibyte, the client's default chunk size.
pub const MIB: u64 = 1024 * 1024;

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
    tempfile::Builder::new()
        .prefix("e2e-work-")
        .tempdir()
        .expect("cannot create temp dir")
}

/// A running `ftpd` serving its own temporary root. Killed (and reaped) on drop.
pub struct Daemon {
    /// The daemon process; killed on drop so a failing test never leaks it.
    child: Child,
    /// The address it reported in its `listening on` line.
    addr: SocketAddr,
    /// The served directory; declared after `child` so it is removed after the daemon is gone.
    root: Root,
    /// Everything the daemon has written to stderr so far, for failure messages.
    log: Arc<Mutex<String>>,
    /// Keeps draining stderr so the daemon never blocks on a full pipe; ends at EOF.
    drain: Option<JoinHandle<()>>,
}

/// The directory a daemon serves: its own temp dir, or one the test owns (to restart a daemon on
/// the same files, or to serve a special file system).
enum Root {
    Temp(TempDir),
    Given(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(dir) => dir.path(),
            Root::Given(path) => path,
        }
    }
}

impl Daemon {
    /// Starts `ftpd` on a fresh temp root and port 0, and returns once it prints the address it
    /// listens on. Panics, with the daemon's output, if that takes longer than 30 s or the daemon
    /// exits first.
    pub fn start() -> Daemon {
        let root = tempfile::Builder::new()
            .prefix("e2e-root-")
            .tempdir()
            .expect("cannot create temp root");
        Daemon::spawn(Root::Temp(root))
    }

    /// Starts `ftpd` like [`Daemon::start`], serving `root`, an existing directory the caller
    /// keeps (and removes). A daemon restarted on the root of a killed one gets a new port.
    pub fn start_on(root: impl AsRef<Path>) -> Daemon {
        Daemon::spawn(Root::Given(root.as_ref().to_owned()))
    }

    fn spawn(root: Root) -> Daemon {
        let mut child = Command::new(bin("ftpd"))
            .arg("--root")
            .arg(root.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn ftpd");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let drain = {
            let log = Arc::clone(&log);
            thread::spawn(move || drain_daemon_log(stderr, &log, ready_tx))
        };
        let addr = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let status = match child.wait() {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("status unknown: {e}"),
                };
                let _ = drain.join();
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("printed no `{READY_MARKER}` line within {READY_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited ({status}) before printing `{READY_MARKER}`")
                    }
                };
                panic!("ftpd {why}; its stderr:\n{}", log.lock().unwrap());
            }
        };
        Daemon {
            child,
            addr,
            root,
            log,
            drain: Some(drain),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory the daemon serves.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and reaps it. Its root stays if the
    /// test owns it ([`Daemon::start_on`]).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Where the remote path `name` lives on disk.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// The daemon's private directory where uploads are staged.
    pub fn staging(&self) -> PathBuf {
        self.root().join(".ftpd").join("staging")
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Names of the files clients can see at the top of the root (everything but the private
    /// `.ftpd` directory), sorted.
    pub fn visible_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root())
            .expect("cannot list root")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".ftpd")
            .collect();
        names.sort();
        names
    }

    /// A client command aimed at this daemon.
    pub fn cli(&self) -> Cli {
        Cli::new(self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        if thread::panicking() {
            eprintln!("--- ftpd stderr ---\n{}--- end ftpd stderr ---", self.log());
        }
    }
}

/// Copies the daemon's stderr into `log` until EOF, sending the address from the first
/// `listening on` line through `ready`.
fn drain_daemon_log(stderr: ChildStderr, log: &Mutex<String>, ready: mpsc::Sender<SocketAddr>) {
    let mut ready = Some(ready);
    for line in BufReader::new(stderr).split(b'\n') {
        let Ok(line) = line else { break };
        let line = strip_ansi(&String::from_utf8_lossy(&line));
        {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
        if ready.is_some() {
            if let Some(addr) = parse_ready_line(&line) {
                let _ = ready.take().unwrap().send(addr);
            }
        }
    }
}

/// The address in a line like `2024-… INFO ftpd: listening on 127.0.0.1:4242`.
fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(READY_MARKER)?;
    let token = rest.split_whitespace().next()?;
    let token = token.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | ',' | ';' | '.'));
    let addr = token.parse().unwrap_or_else(|_| {
        panic!("ftpd's ready line has no address after `{READY_MARKER}`: {line:?}")
    });
    Some(addr)
}

/// Removes terminal colour codes (`ESC [ … letter`), in case the logger emits them anyway.
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
}

impl Cli {
    /// A client command aimed at `addr`, for a server that is not a [`Daemon`] (a proxy).
    pub fn new(addr: SocketAddr) -> Cli {
        Cli {
            args: vec![addr.to_string().into()],
            cwd: None,
            stdin: None,
            timeout: RUN_TIMEOUT,
        }
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

    /// Runs `commands` non-interactively: `-c "put a; get a b"`.
    pub fn cmds(self, commands: &str) -> Cli {
        self.arg("-c").arg(commands)
    }

    /// Runs the commands in a batch file, one per line: `-b FILE`.
    pub fn batch(self, file: impl AsRef<Path>) -> Cli {
        self.arg("-b").arg(file.as_ref())
    }

    /// Feeds `input` to the client's stdin.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Cli {
        self.stdin = Some(input.into());
        self
    }

    /// Overrides how long `run` waits for the client to finish.
    #[allow(dead_code)]
    pub fn timeout(mut self, timeout: Duration) -> Cli {
        self.timeout = timeout;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin("ftp-cli"));
        cmd.args(&self.args)
            .env("NO_COLOR", "1")
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
            child,
            cmdline: self.to_string(),
        }
    }

    /// Runs the client to completion and returns what it did. Panics, killing it, if it runs
    /// longer than the timeout.
    pub fn run(&self) -> Run {
        let deadline = Instant::now() + self.timeout;
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {self}: {e}"));
        if let Some(input) = self.stdin.clone() {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // A client that exits early closes the pipe; that shows up in its status instead.
            thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        // Both pipes reach EOF when the client exits; until then we wait, but not forever.
        let (done_tx, done_rx) = mpsc::channel();
        let stdout = read_to_end(child.stdout.take().expect("piped"), done_tx.clone());
        let stderr = read_to_end(child.stderr.take().expect("piped"), done_tx);
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{self} did not finish within {:?}\nstdout:\n{}\nstderr:\n{}",
                    self.timeout,
                    String::from_utf8_lossy(&stdout.join().unwrap()),
                    String::from_utf8_lossy(&stderr.join().unwrap()),
                );
            }
        }
        let status = child.wait().expect("cannot wait for ftp-cli");
        Run {
            cmdline: self.to_string(),
            status,
            stdout: String::from_utf8_lossy(&stdout.join().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
        }
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
    /// The client process.
    child: Child,
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The MD5 of a file's contents, as lowercase hex.
pub fn md5_file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut hasher = Md5::new();
    io::copy(&mut file, &mut hasher)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::encode(hasher.finalize())
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
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}
