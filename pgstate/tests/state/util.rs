//! A private PostgreSQL for the tests: one server per test binary (initdb into a temp dir,
//! postgres on a free loopback port, its socket in the same dir), a fresh database per test.
//! The server is stopped and its directory removed when the test binary exits, however it
//! exits: a shell waits for the binary's end of a pipe to close.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgstate::{Options, State};

/// Where the PostgreSQL binaries are (PG_BIN overrides).
fn bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Under CI a missing PostgreSQL fails the tests instead of skipping them.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The running server.
pub struct Server {
    /// Its loopback port.
    port: u16,
    /// The temp dir of data, socket and logs (for the message of a failed start).
    dir: PathBuf,
    /// Our end of the pipe the stopping shell reads; closed when this process exits.
    _stdin: Mutex<ChildStdin>,
    /// The shell that runs the server and stops it.
    _child: Mutex<Child>,
}

/// The script run as the server's owner: initdb, postgres in the background, then wait for
/// stdin to close (this process gone) to stop it and remove the directory.
const SCRIPT: &str = r#"
set -e
"$BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1
"$BIN/postgres" -D "$DIR/data" -p "$PORT" -k "$DIR" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c max_connections=200 >"$DIR/postgres.log" 2>&1 &
pid=$!
cat >/dev/null || true
kill -INT "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
rm -rf "$DIR"
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Server {
    fn start() -> Result<Server, String> {
        let bin = bin_dir();
        if !bin.join("initdb").exists() || !bin.join("postgres").exists() {
            return Err(format!("no PostgreSQL binaries in {}", bin.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("pgstate-test")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let port = free_port();
        let mut command = if is_root() {
            // initdb refuses to run as root: the server runs as the postgres user.
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .map_err(|e| e.to_string())?;
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
            .spawn()
            .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        Ok(Server {
            port,
            dir,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        })
    }

    fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
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

static SERVER: OnceLock<Option<Server>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty database of its own for one test; `None` (with a note) when PostgreSQL is
/// not installed, which fails instead under CI.
pub async fn fresh_db() -> Option<Db> {
    let server = SERVER
        .get_or_init(|| match Server::start() {
            Ok(s) => Some(s),
            Err(e) if in_ci() => panic!("PostgreSQL is needed under CI: {e}"),
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "skipping the PostgreSQL tests: {e}");
                None
            }
        })
        .as_ref()?;
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    // Readiness is the first successful connect (initdb and startup take a few seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = loop {
        match tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                break client;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("PostgreSQL did not start: {e}\n{}", server.logs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    Some(Db {
        url: server.url(&name),
    })
}

/// One test's database.
pub struct Db {
    pub url: String,
}

impl Db {
    /// An instance's state with the defaults, named `instance`.
    pub async fn state(&self, instance: &str) -> State {
        State::connect(&self.url, instance)
            .await
            .unwrap_or_else(|e| panic!("connect: {}", e.detail()))
    }

    pub async fn state_with(&self, options: Options) -> State {
        State::connect_with(&self.url, options)
            .await
            .unwrap_or_else(|e| panic!("connect: {}", e.detail()))
    }

    /// A plain connection, to look at the tables behind the crate's back.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

/// Waits for `what` to hold, checking every 20 ms, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut what: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if what().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `what` to give something, checking every 20 ms, for at most `limit`.
pub async fn until_some<T, F, Fut>(limit: Duration, mut what: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = what().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
