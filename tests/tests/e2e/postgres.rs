//! A private PostgreSQL for the cluster tests: one server per test binary (initdb into a temp
//! dir, postgres on a free loopback port, its socket in the same dir), a fresh database per
//! test (`CREATE DATABASE`, through `createdb`), so tests stay independent.
//!
//! The server is stopped and its directory removed when the test binary exits, however it
//! exits: the shell that runs it waits for our end of a pipe to close, as pgstate's tests do
//! (pgstate/tests/state/util.rs). As root (CI runs as root, and initdb refuses it) the server
//! runs as the `postgres` user through `runuser`. The binaries are looked for in
//! /usr/lib/postgresql/N/bin, the newest N (`PG_BIN` overrides); without them
//! [`Database::fresh`] prints a note and gives `None`, and under CI (`CI` set) it panics
//! instead: CI installs them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::free_port;

/// How long initdb and the server's start may take before the test fails: a few seconds on
/// an idle machine, more on a shared one.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `createdb` or `psql` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The script run as the server's owner: initdb, postgres in the background, then wait for
/// stdin to close (the test binary gone) to stop it and remove the directory.
const SCRIPT: &str = r#"
set -e
"$BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1
"$BIN/postgres" -D "$DIR/data" -p "$PORT" -k "$DIR" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c max_connections=300 >"$DIR/postgres.log" 2>&1 &
pid=$!
cat >/dev/null || true
kill -INT "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
rm -rf "$DIR"
"#;

/// Where Debian's packages put each major version's binaries: `/usr/lib/postgresql/N/bin`.
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";

/// Where the PostgreSQL binaries are: `PG_BIN`, else the newest major version Debian's
/// packages installed (.ci/run installs whichever the release has), else version 15's place.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = fs::read_dir(DEBIAN_PREFIX)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|major| {
            Path::new(DEBIAN_PREFIX)
                .join(format!("{major}/bin/initdb"))
                .exists()
        })
        .max();
    Path::new(DEBIAN_PREFIX).join(format!("{}/bin", newest.unwrap_or(15)))
}

/// Under CI a missing PostgreSQL fails the tests instead of skipping them.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A running server: the one this test binary shares, or one a test has to itself (to stop or
/// freeze it), stopped when the last handle goes.
pub struct Server {
    /// Its loopback port.
    port: u16,
    /// The temp dir of data, socket and logs (for the message of a failed start).
    dir: PathBuf,
    /// Our end of the pipe the stopping shell reads; closed to stop the server (or when this
    /// process exits).
    stdin: Mutex<Option<ChildStdin>>,
    /// The shell that runs the server and stops it.
    child: Mutex<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Server {
    /// Starts the server and returns once it accepts connections.
    fn start() -> Result<Server, String> {
        let bin = bin_dir();
        for tool in ["initdb", "postgres", "pg_isready", "createdb", "psql"] {
            if !bin.join(tool).exists() {
                return Err(format!("no {tool} in {}", bin.display()));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("e2e-postgres-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp dir: {e}"))?
            .keep();
        let port = free_port();
        let mut command = if is_root() {
            // initdb refuses to run as root: the server runs as the postgres user.
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !chown.success() {
                return Err("running as root and there is no postgres user".into());
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", SCRIPT]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", SCRIPT]);
            c
        };
        let mut child = command
            .env("BIN", &bin)
            .env("DIR", &dir)
            .env("PORT", port.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let server = Server {
            port,
            dir,
            stdin: Mutex::new(Some(stdin)),
            child: Mutex::new(child),
        };
        server.wait_ready();
        Ok(server)
    }

    /// Waits for the first successful `pg_isready` (initdb and startup take a few seconds);
    /// panics with the logs if the shell exits first or the server is not up in time.
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = self
                .tool("pg_isready")
                .args(["-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            let exited = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
                .ok()
                .flatten();
            if let Some(status) = exited {
                panic!(
                    "PostgreSQL exited ({status}) before it was ready\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL was not ready within {START_TIMEOUT:?}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One of the server's client programs, aimed at it as the `postgres` user.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(bin_dir().join(name));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGDATABASE")
        .stdin(Stdio::null());
        cmd
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "initdb: {}\npostgres: {}",
            read(&self.dir.join("initdb.log")),
            read(&self.dir.join("postgres.log"))
        )
    }
}

/// Runs `cmd` (stdout and stderr piped) within [`CALL_TIMEOUT`]; panics, killing it, if it
/// takes longer.
fn output_within(mut cmd: Command, what: &str) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CALL_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot wait for {what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{what} did not finish within {CALL_TIMEOUT:?}")
        }
    }
}

/// The server of this test binary, started by the first test that asks; `None` (after a
/// note) when PostgreSQL is not installed, which panics instead under CI.
fn server() -> Option<Arc<Server>> {
    static SERVER: OnceLock<Option<Arc<Server>>> = OnceLock::new();
    SERVER.get_or_init(Server::available).clone()
}

impl Server {
    /// A server of the caller's own, which it may stop or freeze; `None` as for
    /// [`Database::fresh`].
    pub fn private() -> Option<Arc<Server>> {
        Server::available()
    }

    fn available() -> Option<Arc<Server>> {
        match Server::start() {
            Ok(s) => Some(Arc::new(s)),
            Err(e) if in_ci() => panic!("PostgreSQL is needed under CI (.ci/run installs it): {e}"),
            Err(e) => {
                eprintln!("note: skipped, PostgreSQL is not here: {e}");
                None
            }
        }
    }

    /// A fresh, empty database on this server.
    pub fn database(self: &Arc<Server>) -> Database {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("cluster_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut cmd = self.tool("createdb");
        cmd.arg(&name);
        let out = output_within(cmd, "createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Database {
            server: self.clone(),
            name,
        }
    }

    /// Stops the server (a fast shutdown) and waits for it to be gone.
    pub fn stop(&self) {
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let stopped = crate::util::wait_child(&mut child, Duration::from_secs(30));
        assert!(stopped.is_some(), "PostgreSQL did not stop");
    }

    /// Stops (SIGSTOP) the server and every backend it runs, so that connections stay open but
    /// nothing answers, until the guard is dropped.
    pub fn freeze(&self) -> Frozen {
        let pid_file = fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: the command may hold spaces, the part after `)` not.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        signal("-STOP", &pids);
        Frozen(pids)
    }
}

/// A frozen server's processes, continued when dropped.
pub struct Frozen(Vec<u32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pids: &[u32]) {
    let status = Command::new("kill")
        .arg(which)
        .args(pids.iter().map(u32::to_string))
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pids:?} failed");
}

/// One test's own database: what `--database` points at.
pub struct Database {
    /// The server it lives on.
    server: Arc<Server>,
    /// Its name: `cluster_<n>`, unique in the test binary.
    name: String,
}

impl Database {
    /// A fresh, empty database on the test binary's server, for one test; `None` (with a
    /// note) when PostgreSQL is not installed, except under CI, where that panics.
    pub fn fresh() -> Option<Database> {
        Some(server()?.database())
    }

    /// The URL instances and admin commands are given: `--database`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.server.port, self.name
        )
    }

    /// Runs one SQL statement with `psql` and returns its rows, one a line, fields joined by
    /// `|` (`-At`): for looking at the shared tables behind the daemons' backs.
    #[track_caller]
    pub fn query(&self, sql: &str) -> String {
        let mut cmd = self.server.tool("psql");
        cmd.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.name,
            "-c",
            sql,
        ]);
        let out = output_within(cmd, "psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
