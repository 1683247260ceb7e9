//! A moto S3 server (from PyPI: `pip install 'moto[server]'`) per test, on a free loopback
//! port, killed when dropped: what s3store's and ftpd's registry tests run against. Without
//! `moto_server` [`start`] prints a note and gives `None`, except under CI (`CI` set), where it
//! panics: CI installs it (.ci/run).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto server on its own port, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto and waits until it accepts connections; `None` when it is not installed and
/// this is not CI.
pub fn start() -> Option<Moto> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => panic!("moto_server is required in CI: {e}"),
        Err(_) => {
            eprintln!("note: moto_server not installed (pip install 'moto[server]'); skipped");
            return None;
        }
    };
    let moto = Moto { child, port };
    // Ready when it accepts a connection; moto prints no line to wait for.
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(moto)
}
