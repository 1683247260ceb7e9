//! The metrics listener (`--metrics-listen`): counters that match the transfers made, the text
//! that `promtool check metrics` passes, health and readiness through a drain, and a real
//! Prometheus scraping the daemon.
//!
//! HTTP is spoken by hand over a `TcpStream` (HTTP/1.0, so neither side chunks or keeps the
//! connection): three GETs need no client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::raw::{self, Raw};
use crate::util::{free_port, tmpdir, write_random, KillOnDrop, Site, MIB};

/// How long a real Prometheus may take to start, scrape and answer with the counter.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP answer: status, content type, body.
pub(crate) struct Answer {
    status: u16,
    content_type: String,
    pub(crate) body: String,
}

/// One GET over a fresh connection.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8(raw).expect("an HTTP answer in UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// The value of one series (`name{labels}` exactly as rendered) in a scrape, if present.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[track_caller]
fn assert_series(text: &str, series: &str, expected: f64) {
    assert_eq!(
        value(text, series),
        Some(expected),
        "{series} in the scrape:\n{text}"
    );
}

/// Whether a tool of Prometheus the test needs is here; fails under CI, skips elsewhere.
fn have(tool: &str) -> bool {
    crate::util::have_tool(tool, "--version", "prometheus")
}

/// A put, a get and a refused get, counted; the text passes `promtool check metrics`; health
/// stays 200 and readiness turns 503 once SIGTERM starts the drain, while an upload holds the
/// daemon up.
#[test]
fn counters_match_the_transfers_and_readiness_follows_the_drain() {
    let site = Site::new();
    let ftpd = site
        .daemon()
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .start();
    let metrics = ftpd.metrics_addr();
    assert!(metrics.ip().is_loopback());
    let work = tmpdir();
    let size = 3 * MIB + 7;
    write_random(work.path().join("a.bin"), size, 18);
    ftpd.cli().cwd(work.path()).round_trip("a.bin", "back.bin");
    ftpd.cli()
        .cwd(work.path())
        .cmds("get missing.bin")
        .run()
        .fails();

    let scrape = get(metrics, "/metrics");
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        scrape.content_type
    );
    let text = &scrape.body;
    for (series, expected) in [
        (
            r#"ftpd_transfers_total{direction="upload",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"ftpd_transfers_total{direction="download",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"ftpd_transfers_total{direction="download",outcome="not_found"}"#,
            1.0,
        ),
        (r#"ftpd_commands_total{command="put",outcome="ok"}"#, 1.0),
        (
            r#"ftpd_commands_total{command="get",outcome="not_found"}"#,
            1.0,
        ),
        ("ftpd_bytes_received_total", size as f64),
        ("ftpd_bytes_sent_total", size as f64),
        (r#"ftpd_transfer_size_bytes_count{direction="upload"}"#, 1.0),
        (
            r#"ftpd_transfer_size_bytes_sum{direction="upload"}"#,
            size as f64,
        ),
        (
            r#"ftpd_transfer_duration_seconds_count{direction="download"}"#,
            2.0,
        ),
        (r#"ftpd_logins_total{result="ok",method="anonymous"}"#, 2.0),
        ("ftpd_connections_accepted_total", 2.0),
        // Every client has left (the clients waited for their answers, and their sessions
        // end when they close): nobody is counted open.
        ("ftpd_staged_bytes", 0.0),
    ] {
        assert_series(text, series, expected);
    }
    for name in ["ftpd_transfer_duration_seconds", "ftpd_transfer_size_bytes"] {
        assert!(
            text.contains(&format!("# TYPE {name} histogram")),
            "{name} is not a histogram:\n{text}"
        );
    }
    for forbidden in ["a.bin", "missing.bin", "127.0.0.1", "user=\""] {
        assert!(
            !text.contains(forbidden),
            "{forbidden:?} in a label:\n{text}"
        );
    }
    if have("promtool") {
        let mut lint = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run promtool");
        lint.stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let users = get(metrics, "/users");
    assert_eq!(users.status, 200);
    assert_eq!(users.content_type, "application/json");
    let users: Value = serde_json::from_str(&users.body).expect("/users is JSON");
    assert!(users.is_array(), "{users}");
    assert_eq!(get(metrics, "/healthz").status, 200);
    assert_eq!(get(metrics, "/readyz").status, 200);
    assert_eq!(get(metrics, "/nothing").status, 404);

    // An upload that has begun and sends nothing more holds the daemon in its drain.
    let mut held = Raw::connect(ftpd.addr()).hello();
    held.send(&raw::put("held.bin", MIB));
    held.expect_put_ready();
    ftpd.signal("TERM");
    ftpd.wait_for_log(&["shutting down"]);
    assert!(
        ftpd.exited().is_none(),
        "the held upload keeps ftpd running"
    );
    let ready = get(metrics, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(get(metrics, "/healthz").status, 200, "alive while draining");
    drop(held);
    let status = ftpd.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "ftpd exited with {status}");
}

/// A real Prometheus scrapes the daemon every second; its query API gives back the number of
/// uploads made.
#[test]
fn prometheus_scrapes_the_uploads_made() {
    if !have("prometheus") {
        return;
    }
    const UPLOADS: usize = 3;
    let site = Site::new();
    let ftpd = site
        .daemon()
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .start();
    let metrics = ftpd.metrics_addr();
    let work = tmpdir();
    let mut names = Vec::new();
    for i in 0..UPLOADS {
        let name = format!("f{i}.bin");
        write_random(work.path().join(&name), 100_000 + i as u64, i as u64);
        names.push(format!("put {name}"));
    }
    ftpd.cli()
        .cwd(work.path())
        .cmds(&names.join("; "))
        .run()
        .ok();

    let prom_dir = tmpdir();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ftpd\n    \
             static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(prom_dir.path().join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot start prometheus");
    let mut prometheus = KillOnDrop::new(child);

    let query = "/api/v1/query?query=ftpd_transfers_total%7Bdirection%3D%22upload%22%2Coutcome%3D%22ok%22%7D";
    let started = Instant::now();
    let mut last = String::new();
    let expected = Value::from(UPLOADS.to_string());
    let found = loop {
        // Until it listens, connections are refused; until it has scraped, the result is empty.
        if TcpStream::connect_timeout(&web, Duration::from_secs(1)).is_ok() {
            last = get(web, query).body;
            let json = serde_json::from_str::<Value>(&last).unwrap_or_default();
            if json["data"]["result"][0]["value"][1] == expected {
                break true;
            }
        }
        if started.elapsed() > PROMETHEUS_TIMEOUT {
            break false;
        }
        // The pace of the questions, not a wait for readiness: a scrape comes every second.
        std::thread::sleep(Duration::from_millis(250));
    };
    let prom_log = std::fs::read_to_string(prom_dir.path().join("prometheus.log")).unwrap();
    prometheus.kill();
    assert!(
        found,
        "Prometheus did not report {UPLOADS} uploads within {:?}; last answer: {last}\n\
         prometheus log:\n{prom_log}",
        started.elapsed()
    );
}

/// Logins by result and method: one that succeeds, a wrong password, the right one refused
/// unchecked while the user name serves its penalty, and the failed range's next connection
/// refused at the door; the session still open is counted active.
#[test]
fn logins_are_counted_by_result_and_method() {
    use protocol::{ErrorCode, Message};
    use std::net::{IpAddr, Ipv4Addr};
    let site = Site::new();
    let users = site.private_file(
        "etc/users.toml",
        "[[user]]\nname = \"alice\"\nsecret = \"right\"\nhome = \"alice\"\n",
    );
    let ftpd = site
        .daemon()
        .arg("--users")
        .arg(users)
        .args(["--login-penalty", "30s", "--login-penalty-max", "30s"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start();
    let metrics = ftpd.metrics_addr();
    let range = |n| IpAddr::V4(Ipv4Addr::new(127, 0, n, 1));
    let login = |n, secret| {
        let mut peer = Raw::connect_from(range(n), ftpd.addr()).within(Duration::from_secs(30));
        peer.hello_for_login();
        let answer = peer.scram("alice", secret);
        (peer, answer)
    };
    let (_open, answer) = login(1, "right");
    assert!(matches!(answer, Message::AuthOk(_)), "{answer:?}");
    let (_, answer) = login(2, "guess");
    assert!(matches!(answer, Message::Error(_)), "{answer:?}");
    let (_, answer) = login(3, "right");
    assert!(
        matches!(&answer, Message::Error(e) if e.code == ErrorCode::AuthFailed),
        "{answer:?}"
    );
    let mut door = Raw::connect_from(range(2), ftpd.addr()).within(Duration::from_secs(30));
    door.expect_error(ErrorCode::Busy);

    let text = get(metrics, "/metrics").body;
    for (series, expected) in [
        (r#"ftpd_logins_total{result="ok",method="password"}"#, 1.0),
        (
            r#"ftpd_logins_total{result="failed",method="password"}"#,
            1.0,
        ),
        (
            r#"ftpd_logins_total{result="throttled",method="password"}"#,
            1.0,
        ),
        (
            r#"ftpd_connections_refused_total{reason="range_penalty"}"#,
            1.0,
        ),
        ("ftpd_connections_accepted_total", 3.0),
        ("ftpd_sessions_active", 1.0),
    ] {
        assert_series(&text, series, expected);
    }
    assert!(!text.contains("alice"), "a user name in a label:\n{text}");
}

/// `GET /users`: one object per user of the users file, with what their sessions moved and
/// their quota against its limit (the accounts registry the limits keep), and no other user's.
#[test]
fn users_shows_each_users_bytes_and_quota() {
    let site = Site::new();
    let users = site.private_file(
        "etc/users.toml",
        "[[user]]\nname = \"alice\"\nsecret_file = \"alice.secret\"\nhome = \"alice\"\n\
         quota = \"1MiB\"\n\
         [[user]]\nname = \"bob\"\nsecret_file = \"alice.secret\"\nhome = \"bob\"\n",
    );
    let secret = site.private_file("etc/alice.secret", "alice's secret");
    let ftpd = site
        .daemon()
        .arg("--users")
        .arg(users)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start();
    let metrics = ftpd.metrics_addr();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 60 * 1024, 9);
    ftpd.cli()
        .user("alice", &secret)
        .cwd(work.path())
        .cmds("put a.bin; get a.bin back.bin")
        .run()
        .ok();
    let answer = get(metrics, "/users");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let list: Value = serde_json::from_str(&answer.body).expect("/users is JSON");
    let list = list.as_array().expect("/users is an array");
    let names: Vec<&str> = list.iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["alice", "bob"], "{list:?}");
    let alice = &list[0];
    // Bytes of her sessions' streams: the file's, and a little for the frames around them.
    for key in ["bytes_in", "bytes_out"] {
        let n = alice[key].as_u64().unwrap_or_default();
        assert!(
            (60 * 1024..64 * 1024).contains(&n),
            "{key} is not the file's 60 KiB and its frames: {alice}"
        );
    }
    assert_eq!(alice["quota_used"], 60 * 1024, "{alice}");
    assert_eq!(alice["quota_limit"], 1024 * 1024, "{alice}");
    let bob = &list[1];
    assert_eq!(bob["bytes_in"], 0, "{bob}");
    assert!(bob["quota_limit"].is_null(), "{bob}");
}
