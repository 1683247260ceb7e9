//! The services the registry tests need, private to this test binary: a fresh database per
//! test (on the e2e crate's private PostgreSQL), one that can be stopped and started again,
//! and a moto S3 server per test, on free loopback ports. Without their binaries the tests print a
//! note and pass, except under CI (env CI set), where they fail.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    l.local_addr().expect("its address").port()
}

/// Where the PostgreSQL binaries are (PG_BIN overrides).
fn bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The URL of a fresh, empty database for one test on the e2e crate's private PostgreSQL (one
/// server per test binary); `None` (with a note) without PostgreSQL, a failure under CI.
pub fn fresh_db() -> Option<String> {
    e2e::postgres::Database::fresh().map(|db| db.url())
}

pub use e2e::moto::{start as moto, Moto};

/// A PostgreSQL of one test's own, which the test stops and starts again (`pg_ctl`): a
/// restart of the database under an upload in flight. Stopped and removed when dropped.
pub struct Restartable {
    dir: PathBuf,
    port: u16,
}

impl Restartable {
    /// Initialised and started with a database `ftpd`; `None` (with a note) without the
    /// PostgreSQL binaries, which fails instead under CI.
    pub fn start() -> Option<Restartable> {
        let bin = bin_dir();
        if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
            assert!(!in_ci(), "PostgreSQL is needed under CI");
            eprintln!("skipping: no PostgreSQL binaries in {}", bin.display());
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ftpd-registry-restart")
            .tempdir()
            .expect("a temp dir")
            .keep();
        if is_root() {
            let chown = Command::new("chown").arg("postgres:").arg(&dir).status();
            assert!(chown.is_ok_and(|s| s.success()), "chown to postgres");
        }
        let pg = Restartable {
            dir,
            port: free_port(),
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A trust -U postgres -E UTF8 --no-sync".as_ref(),
            ],
        );
        pg.up();
        let created = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
            .args(["-U", "postgres", "ftpd"])
            .status();
        assert!(created.is_ok_and(|s| s.success()), "createdb");
        Some(pg)
    }

    /// Runs a PostgreSQL program as the server's owner, through a shell (so that `args`
    /// may hold several words), and checks that it succeeded.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let mut line = bin_dir().join(program).into_os_string();
        for a in args {
            line.push(" ");
            line.push(a);
        }
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c");
            c
        };
        let out = command
            .arg(&line)
            .current_dir(&self.dir)
            .output()
            .expect("a PostgreSQL program runs");
        assert!(
            out.status.success(),
            "{}: {}",
            line.to_string_lossy(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections (`pg_ctl -w`).
    pub fn up(&self) {
        let options = format!(
            "'-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off'",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w start".as_ref(),
            ],
        );
    }

    /// Stops the server (fast: open connections are cut) and waits until it is down.
    pub fn down(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &["-D".as_ref(), data.as_os_str(), "-w -m fast stop".as_ref()],
        );
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=ftpd",
            self.port
        )
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let stop = format!(
            "{} -D {} -m immediate stop",
            bin_dir().join("pg_ctl").display(),
            data.display()
        );
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &stop]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &stop]);
            c
        };
        let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
