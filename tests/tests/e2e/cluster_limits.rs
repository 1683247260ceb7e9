//! A user's limits across the instances of a service (issue 20): two daemons on one shared
//! root and one private PostgreSQL. A session cap of one held on instance A refuses a session
//! on instance B until A's ends; two sessions of one user on the two instances share one rate
//! cap: both instances lease it from the database, and together they stay within the stated
//! bound r × (T + (N + 1) × 250 ms) (docs/CLUSTER.md).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::limits::transfers;
use crate::metrics::{get, value};
use crate::util::{assert_same_file, tmpdir, write_random, Daemon, Site, Tool, MIB};
use e2e::postgres::{Database, Server};

const PASSWORD: &str = "a shared secret";
/// The fewest key-derivation iterations allowed: 600,000 take seconds in a debug build on a
/// busy machine, on both sides of each login.
const FAST: &str = "4096";

/// A service of two instances on one shared root, and the users' password file.
struct Service {
    site: Site,
    db: Database,
    url: String,
    a: Daemon,
    b: Daemon,
}

impl Service {
    /// Two instances of a service in a fresh database; `None` without PostgreSQL.
    fn start() -> Option<Service> {
        Some(Service::on(Database::fresh()?))
    }

    /// Two instances of a service in the database at `url`.
    fn on(db: Database) -> Service {
        let url = db.url();
        let site = Site::new();
        site.private_file("secret", PASSWORD);
        let instance = |name: &str| {
            site.daemon()
                .arg("--shared-root")
                .arg("--database")
                .arg(&url)
                .arg("--state-dir")
                .arg(site.path(name))
                .args(["--metrics-listen", "127.0.0.1:0"])
                .start()
        };
        let a = instance("state-a");
        let b = instance("state-b");
        Service {
            site,
            db,
            url,
            a,
            b,
        }
    }

    /// `ftpd adduser --database URL FLAGS... NAME`, the password on stdin, and the home made.
    fn adduser(&self, name: &str, flags: &[&str]) {
        Tool::ftpd()
            .args(["adduser", "--iterations", FAST, "--database", &self.url])
            .args(flags)
            .arg(name)
            .stdin(format!("{PASSWORD}\n"))
            .run()
            .ok();
        std::fs::create_dir_all(self.site.root().join(name)).unwrap();
    }

    /// Waits until both instances know `name` (they load users at each change).
    fn wait_user(&self, name: &str) {
        for d in [&self.a, &self.b] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let run = self.cli(d, name).cmds("pwd").run();
                if run.status.success() {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} never logged in: {run}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn cli(&self, d: &Daemon, name: &str) -> crate::util::Cli {
        d.cli().user(name, self.site.path("secret"))
    }

    /// Sessions of `name` the database counts now.
    fn sessions(&self, name: &str) -> u64 {
        let query =
            format!("SELECT count(*) FROM sessions WHERE user_name = '{name}' AND expires > now()");
        self.db.query(&query).trim().parse().unwrap()
    }

    /// Waits (polling, for at most 30 s) until the database counts `n` sessions of `name`.
    #[track_caller]
    fn wait_sessions(&self, name: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.sessions(name) != n {
            assert!(
                Instant::now() < deadline,
                "{name} never had {n} sessions; logs:\n{}\n{}",
                self.a.log(),
                self.b.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of `series` (exactly as rendered, labels included) in a scrape of `d`.
fn metric(d: &Daemon, series: &str) -> Option<f64> {
    value(&get(d.metrics_addr(), "/metrics").body, series)
}

fn write_file(dir: &Path, name: &str, size: u64, seed: u64) {
    write_random(dir.join(name), size, seed);
}

/// max_sessions = 1 for the whole service: a session open on A (a download held back by the
/// rate cap) refuses a login on B with the local cap's reply; once A's session ends, B admits
/// one (polled with a deadline: the place is given back just after the session ends).
#[test]
fn a_session_on_one_instance_counts_against_the_cap_on_another() {
    let Some(service) = Service::start() else {
        return;
    };
    service.adduser("solo", &["--max-sessions", "1", "--max-rate", "256KiB"]);
    service.wait_user("solo");
    // The probes' places are given back just after their sessions end.
    service.wait_sessions("solo", 0);
    let home = service.site.root().join("solo");
    // 16 s at the cap: it holds the session while the test looks at B.
    write_file(&home, "big.bin", 4 * MIB, 1);
    let work = tmpdir();
    let mut held = service
        .cli(&service.a, "solo")
        .cwd(work.path())
        .cmds("get big.bin")
        .spawn();
    service.wait_sessions("solo", 1);
    let refused = service
        .cli(&service.b, "solo")
        .cmds("pwd")
        .run()
        .fails()
        .stderr_has("too many sessions")
        .one_line_error();
    assert!(refused.stderr.contains("solo"), "{refused}");
    held.assert_running();
    held.kill();
    service.wait_sessions("solo", 0);
    service.cli(&service.b, "solo").cmds("pwd").run().ok();
}

/// One user's two downloads, one through each instance, share a cap of 1 MiB/s: both
/// instances leased from the database, and the bytes both moved stay within the bound
/// r × (T + (N + 1) × 250 ms) plus what each session moves before it pays (one burst, at most
/// 64 KiB), T the clients' wall time, which is longer than the transfers took. (Without the
/// shared cap they would move 2 MiB a second; a loaded machine only moves fewer.)
#[test]
fn two_instances_share_one_users_rate_cap() {
    let Some(service) = Service::start() else {
        return;
    };
    service.adduser("pair", &["--max-sessions", "2", "--max-rate", "1MiB"]);
    service.wait_user("pair");
    let home = service.site.root().join("pair");
    write_file(&home, "a.bin", 3 * MIB, 2);
    write_file(&home, "b.bin", 3 * MIB, 3);
    let work = tmpdir();
    let one = service
        .cli(&service.a, "pair")
        .cwd(work.path())
        .cmds("get a.bin");
    let two = service
        .cli(&service.b, "pair")
        .cwd(work.path())
        .cmds("get b.bin");
    let started = Instant::now();
    let (one, two) = (
        thread::spawn(move || one.run()),
        thread::spawn(move || two.run()),
    );
    one.join().unwrap().ok();
    two.join().unwrap().ok();
    let wall = started.elapsed().as_secs_f64();
    assert_same_file(home.join("a.bin"), work.path().join("a.bin"));
    assert_same_file(home.join("b.bin"), work.path().join("b.bin"));
    for (name, d) in [("A", &service.a), ("B", &service.b)] {
        let leased = metric(d, "ftpd_rate_leased_bytes_total{direction=\"download\"}");
        assert!(
            leased.is_some_and(|b| b > 0.0),
            "instance {name} leased no rate from the database ({leased:?}); log:\n{}",
            d.log()
        );
    }
    let buckets = service
        .db
        .query("SELECT count(*) FROM rate_buckets WHERE user_name = 'pair' AND direction = 'down'");
    let buckets = buckets.trim();
    assert_eq!(buckets, "1", "one bucket for both instances");
    let done: Vec<(u64, f64)> = [&service.a, &service.b]
        .iter()
        .flat_map(|d| transfers(&d.log(), "get"))
        .collect();
    let moved: u64 = done.iter().map(|t| t.0).sum();
    assert_eq!(moved, 6 * MIB, "{done:?}");
    // The longer transfer ran while the other did for most of it: the daemon's own time.
    let secs = done.iter().map(|t| t.1).fold(0.0, f64::max);
    let rate = MIB as f64;
    let bound = rate * (wall + 3.0 * 0.25) + 2.0 * 64.0 * 1024.0;
    eprintln!(
        "two instances, one cap of 1 MiB/s: {moved} bytes in {wall:.2} s wall, the longer \
         transfer {secs:.2} s: {:.3} MiB/s over it (bound {:.2} MiB over the wall time); \
         each (bytes, s): {done:?}",
        moved as f64 / secs / rate,
        bound / rate
    );
    assert!(
        (moved as f64) <= bound,
        "{moved} bytes in {wall:.2} s: over the service-wide cap's bound of {bound:.0}"
    );
}

/// The database stops while a capped download runs (step 6 of docs/CLUSTER.md): the download
/// goes on at the instance's own cap and completes, the instance says so once (one WARN), and a
/// new login is refused with a one-line error rather than let in uncounted or left hanging.
#[test]
fn without_the_database_transfers_go_on_at_the_local_cap_and_logins_are_refused() {
    let Some(server) = Server::private() else {
        return;
    };
    let service = Service::on(server.database());
    service.adduser("solo", &["--max-sessions", "2", "--max-rate", "512KiB"]);
    service.wait_user("solo");
    service.wait_sessions("solo", 0);
    let home = service.site.root().join("solo");
    // 4 s at the cap.
    write_file(&home, "big.bin", 2 * MIB, 4);
    let work = tmpdir();
    let download = service
        .cli(&service.a, "solo")
        .cwd(work.path())
        .cmds("get big.bin");
    let download = thread::spawn(move || download.run());
    service.wait_sessions("solo", 1);
    server.stop();
    let refused = service
        .cli(&service.b, "solo")
        .cmds("pwd")
        .timeout(Duration::from_secs(120))
        .run()
        .fails()
        .one_line_error()
        .no_internals();
    eprintln!("a login without the database: {}", refused.stderr.trim());
    download.join().unwrap().ok();
    assert_same_file(home.join("big.bin"), work.path().join("big.bin"));
    let log = service.a.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("cannot lease rate from the database"))
        .count();
    assert_eq!(warned, 1, "one WARN for the lost leases; log:\n{log}");
    assert!(
        !log.contains("panicked"),
        "instance A panicked; log:\n{log}\n{refused}"
    );
}
