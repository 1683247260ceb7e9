//! Whom the client trusts and what TLS keeps from those in between: first contact at a terminal
//! and in scripts, `--fingerprint`, a changed key, CA certificates, a certificate reloaded on
//! SIGHUP, TLS and plaintext mismatched, a relay that terminates TLS, a forged login proof, a
//! recording of the wire, and a server with a copied certificate but not its key.
//!
//! Every test that pins keys has a known_hosts file of its own (`--known-hosts`): the data
//! directory the harness gives all clients is shared by the whole run.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use protocol::scram;
use protocol::tls::Fingerprint;
use protocol::{capability, AuthOk, Hello, Message, Scram};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rexpect::session::{spawn_with_options, Options, PtySession};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tempfile::TempDir;

use crate::raw::{self, Raw};
use crate::util::{
    assert_missing, assert_same_file, bin, clean_env, staged_bytes, tmpdir, write_file,
    write_private, write_random, Cli, Daemon, Keys, Site,
};

/// ftp-cli's exit status for a server not trusted (unknown, refused at the prompt, a CA that
/// does not vouch for it) or a login that failed either way.
const UNTRUSTED: i32 = 4;
/// ftp-cli's exit status when what answered is not ftpd over TLS.
const NOT_PROTOCOL: i32 = 9;
/// ftp-cli's exit status when the server's key is not the one pinned or named.
const KEY_CHANGED: i32 = 10;
/// How long a client run may take where the client must give up quickly, well before its own
/// 60 s timeout: a mismatch is told at once, never waited out.
const QUICK: Duration = Duration::from_secs(20);
/// How long a fake server waits for the client, and a shell for what a step waits for.
const STEP: Duration = Duration::from_secs(30);

/// One user, `marguerite-quintessa`, whose name the wire must never show.
const USER: &str = "marguerite-quintessa";
const SECRET: &str = "the quokka sings at dawn";
const USERS: &str = r#"
[[user]]
name = "marguerite-quintessa"
secret = "the quokka sings at dawn"
home = "home"
"#;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A known_hosts file of the test's own, in a temp dir; not there until something writes it.
struct KnownHosts {
    /// Holds the file; removed on drop.
    dir: TempDir,
}

impl KnownHosts {
    fn new() -> KnownHosts {
        KnownHosts { dir: tmpdir() }
    }

    /// A file that already pins other hosts: `contents`, as a person left it.
    fn with(contents: &str) -> KnownHosts {
        let hosts = KnownHosts::new();
        write_file(hosts.path(), contents);
        hosts
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// What the file holds; `None` while there is no file.
    fn read(&self) -> Option<String> {
        fs::read_to_string(self.path()).ok()
    }

    /// A client of `addr` that pins keys in this file.
    fn cli(&self, addr: SocketAddr) -> Cli {
        Cli::new(addr).arg("--known-hosts").arg(self.path())
    }
}

/// A file that pins two other servers, so a test sees that lines are appended after them and
/// that a refusal names the right line.
fn other_pins() -> String {
    format!(
        "# servers of the lab\nbackup.example:2121 {}\n",
        crate::tls::identity().fingerprint
    )
}

/// A key and a self-signed certificate for `localhost`, in PEM, and the key's fingerprint.
struct Identity {
    cert_pem: String,
    key_pem: String,
    fingerprint: String,
}

impl Identity {
    fn self_signed() -> Identity {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Identity {
            fingerprint: Fingerprint::of_cert(cert.der()).unwrap().to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the certificate and key (readable by its owner only, as ftpd requires) where
    /// `--tls-cert` and `--tls-key` will name them: each through a temporary file renamed over
    /// the old, as a certificate renewal does.
    fn install(&self, cert: &Path, key: &Path) {
        for (path, pem) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("new");
            write_private(&tmp, pem);
            fs::rename(&tmp, path).unwrap();
        }
    }
}

/// A daemon on `site` presenting `identity` from files (`--tls-cert server.pem --tls-key
/// server-key.pem` beside the root), as a CA-issued certificate is.
fn serving(site: &Site, identity: &Identity) -> Daemon {
    let (cert, key) = (site.path("server.pem"), site.path("server-key.pem"));
    identity.install(&cert, &key);
    site.daemon()
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .start()
}

/// A certificate authority made in the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Writes the CA's certificate to `path`, for `--ca-file`.
    fn write(&self, path: &Path) {
        write_file(path, self.issuer.pem());
    }

    /// A server certificate for `names` signed by this CA, and its key (ECDSA P-256: not the
    /// Ed25519 ftpd makes itself).
    fn issue(&self, names: &[&str]) -> Identity {
        let key = KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &*self.issuer)
            .unwrap();
        Identity {
            fingerprint: Fingerprint::of_cert(cert.der()).unwrap().to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A server the test plays on a free port: `serve` runs for each of the next `conns`
/// connections, one after another, and what it returns is collected.
struct Fake<T> {
    addr: SocketAddr,
    served: mpsc::Receiver<T>,
}

impl<T: Send + 'static> Fake<T> {
    fn start(conns: usize, serve: impl Fn(TcpStream) -> T + Send + 'static) -> Fake<T> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, served) = mpsc::channel();
        thread::spawn(move || {
            for _ in 0..conns {
                let Ok((tcp, _)) = listener.accept() else {
                    return;
                };
                tcp.set_read_timeout(Some(STEP)).unwrap();
                tcp.set_write_timeout(Some(STEP)).unwrap();
                if tx.send(serve(tcp)).is_err() {
                    return;
                }
            }
        });
        Fake { addr, served }
    }

    /// What the next connection came to; panics if no client came in time.
    #[track_caller]
    fn served(&self) -> T {
        self.served
            .recv_timeout(STEP)
            .expect("the fake server was never reached, or its thread panicked")
    }
}

/// Reads what the peer sends until it closes (or errs, or goes quiet for [`STEP`]).
fn drain(mut from: impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// What a fake TLS server saw of one client.
struct TlsServed {
    /// Whether the handshake completed.
    handshook: bool,
    /// The application data received after it.
    received: Vec<u8>,
}

/// Plays a TLS server configured by `config` on `tcp` until the client goes.
fn serve_tls(tcp: TcpStream, config: Arc<ServerConfig>) -> TlsServed {
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    let mut sock = tcp;
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return TlsServed {
                handshook: false,
                received: Vec::new(),
            };
        }
    }
    TlsServed {
        handshook: true,
        received: drain(rustls::StreamOwned::new(conn, sock)),
    }
}

/// A TLS 1.3 server configuration with the tests' identity and these ALPN ids (none: the
/// server selects none, as a web server without ALPN would).
fn server_config_with_alpn(alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut config = (*crate::tls::server_config()).clone();
    config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
    Arc::new(config)
}

/// `ftp-cli ADDR --known-hosts FILE` on a pseudo-terminal, in `cwd`, with `home` as its home.
fn shell(addr: SocketAddr, known_hosts: &Path, cwd: &Path, home: &Path) -> PtySession {
    let mut cmd = Command::new(bin("ftp-cli"));
    cmd.arg(addr.to_string())
        .arg("--known-hosts")
        .arg(known_hosts)
        .current_dir(cwd)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("TERM", "xterm")
        .env("NO_COLOR", "1");
    let options = Options::new()
        .timeout_ms(Some(STEP.as_millis() as u64))
        .strip_ansi_escape_codes(true);
    spawn_with_options(cmd, options).expect("cannot start ftp-cli on a pseudo-terminal")
}

/// Waits until the shell has printed `needle`; returns what came before it.
#[track_caller]
fn expect(sh: &mut PtySession, needle: &str) -> String {
    sh.exp_string(needle)
        .unwrap_or_else(|e| panic!("the shell never printed {needle:?}: {e}"))
}

fn type_line(sh: &mut PtySession, line: &str) {
    sh.send(&format!("{line}\r"))
        .and_then(|_| sh.flush())
        .expect("cannot type into the terminal");
}

/// Presses Ctrl-D; panics unless the shell then exits with status 0.
#[track_caller]
fn leave(sh: &mut PtySession) {
    sh.send_control('d').unwrap();
    sh.exp_eof().expect("the shell did not exit on Ctrl-D");
    let status = format!("{:?}", sh.process().wait().unwrap());
    assert!(
        status.starts_with("Exited(") && status.ends_with(", 0)"),
        "the shell ended with {status}, expected exit status 0"
    );
}

/// How many connections the daemon has accepted so far.
fn connections(daemon: &Daemon) -> usize {
    daemon.log().matches("connection opened").count()
}

// ---------------------------------------------------------------------------------------------
// First contact

#[test]
fn first_contact_at_a_terminal_asks_and_pins_on_yes() {
    let daemon = Daemon::start();
    write_file(daemon.path("hello.txt"), "hi");
    let addr = daemon.addr();
    let fp = daemon.fingerprint();
    let hosts = KnownHosts::with(&other_pins());
    let (work, home) = (tmpdir(), tmpdir());
    let prompt = format!("ftp {addr}:/> ");

    let mut sh = shell(addr, &hosts.path(), work.path(), home.path());
    expect(
        &mut sh,
        &format!("The authenticity of server '{addr}' can't be established."),
    );
    expect(&mut sh, &format!("Its key fingerprint is {fp}."));
    expect(
        &mut sh,
        "Are you sure you want to continue connecting (yes/no)? ",
    );
    type_line(&mut sh, "yes");
    expect(&mut sh, &prompt);
    type_line(&mut sh, "ls");
    expect(&mut sh, "hello.txt\r\n");
    expect(&mut sh, &prompt);
    leave(&mut sh);
    assert_eq!(
        hosts.read().unwrap(),
        format!("{}{addr} {fp}\n", other_pins()),
        "the key was not pinned as one line after the others"
    );

    // The second session trusts the pin without asking.
    let mut sh = shell(addr, &hosts.path(), work.path(), home.path());
    let before = expect(&mut sh, &prompt);
    assert!(
        !before.contains("authenticity"),
        "asked again about a pinned server: {before:?}"
    );
    type_line(&mut sh, "ls");
    expect(&mut sh, "hello.txt\r\n");
    expect(&mut sh, &prompt);
    leave(&mut sh);
    assert_eq!(
        hosts.read().unwrap(),
        format!("{}{addr} {fp}\n", other_pins())
    );
}

#[test]
fn first_contact_at_a_terminal_answered_no_connects_to_nothing() {
    let daemon = Daemon::start();
    let addr = daemon.addr();
    let hosts = KnownHosts::new();
    let (work, home) = (tmpdir(), tmpdir());

    let mut sh = shell(addr, &hosts.path(), work.path(), home.path());
    expect(
        &mut sh,
        "Are you sure you want to continue connecting (yes/no)? ",
    );
    // Anything but yes or no is asked again.
    type_line(&mut sh, "maybe");
    expect(&mut sh, "Please type 'yes' or 'no': ");
    type_line(&mut sh, "no");
    expect(
        &mut sh,
        &format!("not connecting to {addr}: its key was not accepted"),
    );
    expect(&mut sh, &format!("ftp {addr}:/> "));
    leave(&mut sh);
    assert_eq!(hosts.read(), None, "a refused key was pinned");
    // The one connection that fetched the key to show; none after the answer.
    assert_eq!(connections(&daemon), 1, "log:\n{}", daemon.log());
}

#[test]
fn scripts_refuse_an_unknown_server_until_told_to_accept_it() {
    let daemon = Daemon::start();
    write_file(daemon.path("hello.txt"), "hi");
    let addr = daemon.addr();
    let fp = daemon.fingerprint();
    let hosts = KnownHosts::with(&other_pins());

    // `-c` and commands piped to stdin: nobody to ask, so one line that says how to go on.
    for cli in [hosts.cli(addr).cmds("ls"), hosts.cli(addr).stdin("ls\n")] {
        cli.run()
            .exits(UNTRUSTED)
            .one_line_error()
            .stderr_has(&format!("{addr} is not known yet"))
            .stderr_has(&fp)
            .stderr_has(&format!("--fingerprint {fp}"))
            .stderr_has("--accept-new-host");
        assert_eq!(hosts.read().unwrap(), other_pins(), "known_hosts changed");
    }

    let run = hosts
        .cli(addr)
        .arg("--accept-new-host")
        .cmds("ls")
        .run()
        .ok()
        .stderr_has(&format!("Pinned the key of {addr} ({fp})"));
    assert_eq!(run.stdout, "hello.txt\n");
    let pinned = format!("{}{addr} {fp}\n", other_pins());
    assert_eq!(hosts.read().unwrap(), pinned);

    // Pinned now: scripts work without the flag, and the file stays as it is.
    let run = hosts.cli(addr).cmds("ls").run().ok();
    assert_eq!(run.stdout, "hello.txt\n");
    let run = hosts.cli(addr).stdin("ls\n").run().ok();
    assert_eq!(run.stdout, "hello.txt\n");
    assert_eq!(hosts.read().unwrap(), pinned);
}

#[test]
fn fingerprint_flag_trusts_that_key_only_and_writes_no_pin() {
    let daemon = Daemon::start();
    write_file(daemon.path("hello.txt"), "hi");
    let addr = daemon.addr();
    let fp = daemon.fingerprint();
    let hosts = KnownHosts::new();

    let run = hosts
        .cli(addr)
        .arg("--fingerprint")
        .arg(&fp)
        .cmds("ls")
        .run()
        .ok();
    assert_eq!(run.stdout, "hello.txt\n");
    assert_eq!(hosts.read(), None, "--fingerprint wrote known_hosts");

    let wrong = crate::tls::identity().fingerprint.to_string();
    hosts
        .cli(addr)
        .arg("--fingerprint")
        .arg(&wrong)
        .cmds("ls")
        .run()
        .exits(KEY_CHANGED)
        .stderr_has(&format!("presented the key {fp}"))
        .stderr_has(&format!("--fingerprint names {wrong}"))
        .stderr_has("Nothing was sent");
    assert_eq!(hosts.read(), None);
}

/// The pin is keyed by host:port; a server there with another key is refused loudly, the pin
/// stays, and the client sends it nothing, not even its hello.
#[test]
fn a_changed_key_is_refused_and_the_pin_kept() {
    let site = Site::new();
    let (state_a, state_b) = (tmpdir(), tmpdir());
    // At debug level the daemon logs each hello: it shows what reached it.
    let first = site
        .daemon()
        .args(["--log-level", "debug", "--state-dir"])
        .arg(state_a.path())
        .start();
    let addr = first.addr();
    let old = first.fingerprint();
    let hosts = KnownHosts::with(&other_pins());
    hosts
        .cli(addr)
        .arg("--accept-new-host")
        .cmds("ls")
        .run()
        .ok();
    first.wait_for_log(&["hello", "agent="]);
    let pinned = hosts.read().unwrap();
    assert_eq!(pinned, format!("{}{addr} {old}\n", other_pins()));
    first.kill();

    // The same host and port, another key: a reinstall, or an impostor.
    let second = site
        .daemon()
        .listen(&addr.to_string())
        .args(["--log-level", "debug", "--state-dir"])
        .arg(state_b.path())
        .start();
    let new = second.fingerprint();
    assert_ne!(new, old);
    let file = hosts.path().display().to_string();
    for cli in [
        hosts.cli(addr),
        // Accepting new hosts is not accepting changed ones.
        hosts.cli(addr).arg("--accept-new-host"),
    ] {
        cli.cmds("ls")
            .run()
            .exits(KEY_CHANGED)
            .stderr_has("THE SERVER'S KEY HAS CHANGED")
            .stderr_has(&format!("presented the key {new}"))
            .stderr_has(&format!("The key pinned for {addr} is {old}"))
            .stderr_has(&format!("in {file}, line 3"))
            .stderr_has(&format!("sed -i '3d' {file}"))
            .stderr_has("Nothing was sent");
        assert_eq!(hosts.read().unwrap(), pinned, "the pin was changed");
    }
    // Each refused connection ended in the handshake, before any frame.
    second.wait_log("two connections closed", |log| {
        log.matches("connection closed").count() == 2
    });
    let log = second.log();
    assert!(
        !log.contains("agent=") && !log.contains("authenticated"),
        "the client sent something to a server with a changed key; log:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// CA certificates

#[test]
fn a_ca_certificate_is_checked_against_the_name_typed() {
    let site = Site::new();
    let ca = Ca::new("e2e test CA");
    ca.write(&site.path("ca.pem"));
    Ca::new("some other CA").write(&site.path("other-ca.pem"));
    let server = ca.issue(&["localhost"]);
    let daemon = serving(&site, &server);
    write_file(daemon.path("hello.txt"), "hi");
    assert_eq!(daemon.fingerprint(), server.fingerprint);
    let port = daemon.addr().port();
    let hosts = KnownHosts::new();
    let ca_cli = |host: String, ca: &str| {
        Cli::host(host)
            .arg("--known-hosts")
            .arg(hosts.path())
            .arg("--ca-file")
            .arg(site.path(ca))
            .cmds("ls")
            .timeout(QUICK)
    };

    let run = ca_cli(format!("localhost:{port}"), "ca.pem").run().ok();
    assert_eq!(run.stdout, "hello.txt\n");

    // The same server by an address its certificate does not name.
    ca_cli(format!("127.0.0.1:{port}"), "ca.pem")
        .run()
        .exits(UNTRUSTED)
        .one_line_error()
        .stderr_has(&format!(
            "the certificate of 127.0.0.1:{port} is not valid for it: certificate not valid \
             for name \"127.0.0.1\"; certificate is only valid for DnsName(\"localhost\")"
        ));
    // A CA that never signed it.
    ca_cli(format!("localhost:{port}"), "other-ca.pem")
        .run()
        .exits(UNTRUSTED)
        .one_line_error()
        .stderr_has(&format!(
            "the certificate of localhost:{port} is not valid for it: it is not issued by a CA \
             given"
        ));
    assert_eq!(hosts.read(), None, "CA mode wrote known_hosts");
}

// ---------------------------------------------------------------------------------------------
// Reload

#[test]
fn sighup_puts_a_new_certificate_in_force_and_keeps_open_sessions() {
    let site = Site::new();
    let (cert, key) = (site.path("server.pem"), site.path("server-key.pem"));
    let old = Identity::self_signed();
    let daemon = serving(&site, &old);
    write_file(daemon.path("hello.txt"), "hi");
    assert_eq!(daemon.fingerprint(), old.fingerprint);
    let addr = daemon.addr();
    let with_key = |fp: &str| {
        Cli::new(addr)
            .arg("--fingerprint")
            .arg(fp)
            .cmds("ls")
            .timeout(QUICK)
    };
    // A session open across the reload, over the old certificate's connection.
    let mut open = Raw::connect(addr).hello();
    open.expect_usable();

    let new = Identity::self_signed();
    new.install(&cert, &key);
    daemon.signal("HUP");
    daemon.wait_for_log(&["reloaded the TLS certificate", &new.fingerprint]);

    let run = with_key(&new.fingerprint).run().ok();
    assert_eq!(run.stdout, "hello.txt\n");
    with_key(&old.fingerprint)
        .run()
        .exits(KEY_CHANGED)
        .stderr_has(&format!("presented the key {}", new.fingerprint));
    open.expect_usable();

    // A renewal gone wrong (a key of another certificate) keeps the one in force.
    write_private(&key, Identity::self_signed().key_pem);
    daemon.signal("HUP");
    daemon.wait_for_log(&["TLS reload failed, keeping the certificate in force"]);
    with_key(&new.fingerprint).run().ok();
    open.expect_usable();
}

// ---------------------------------------------------------------------------------------------
// TLS, plaintext and other protocols mismatched: one clear line, exit 9, at once

#[test]
fn tls_client_to_a_plaintext_daemon_is_told_so() {
    let daemon = Daemon::with_args(["--insecure-plaintext"]);
    let hosts = KnownHosts::new();
    hosts
        .cli(daemon.addr())
        .arg("--accept-new-host")
        .cmds("ls")
        .timeout(QUICK)
        .run()
        .exits(NOT_PROTOCOL)
        .one_line_error()
        .stderr_has("speaks the ftpd protocol without TLS")
        .stderr_has("--insecure-plaintext");
    assert_eq!(hosts.read(), None);
    // What it does speak.
    Raw::plain(daemon.addr()).hello().expect_usable();
}

#[test]
fn plaintext_client_to_a_tls_daemon_is_told_tls_only() {
    let daemon = Daemon::start();
    Cli::new(daemon.addr())
        .arg("--insecure-plaintext")
        .cmds("ls")
        .timeout(QUICK)
        .run()
        .exits(NOT_PROTOCOL)
        .one_line_error()
        .stderr_has("speaks TLS only");
    daemon.wait_for_log(&["connection closed", "plaintext"]);
}

#[test]
fn a_server_that_is_not_ftpd_is_named_as_such() {
    // An SSH server: it speaks first, and keeps reading.
    let ssh = Fake::start(2, |mut tcp| {
        let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
        drain(tcp)
    });
    let hosts = KnownHosts::new();
    hosts
        .cli(ssh.addr)
        .arg("--accept-new-host")
        .cmds("ls")
        .timeout(QUICK)
        .run()
        .exits(NOT_PROTOCOL)
        .one_line_error()
        .stderr_has("is not an ftpd server: it does not speak TLS")
        .stderr_has("SSH-2.0-OpenSSH_9.2");
    ssh.served();
    Cli::new(ssh.addr)
        .arg("--insecure-plaintext")
        .cmds("ls")
        .timeout(QUICK)
        .run()
        .exits(NOT_PROTOCOL)
        .one_line_error()
        .stderr_has("is not an ftpd server");
    ssh.served();
    assert_eq!(hosts.read(), None);
}

#[test]
fn a_tls_server_without_the_ftpd_alpn_is_not_ftpd() {
    // One that picks no protocol (a server without ALPN), one that knows only another.
    for (alpn, said, handshook) in [
        (&[][..], "did not agree to ALPN \"ftpd\"", true),
        (&[&b"h2"[..]][..], "refused ALPN \"ftpd\"", false),
    ] {
        let config = server_config_with_alpn(alpn);
        let server = Fake::start(1, move |tcp| serve_tls(tcp, config.clone()));
        let hosts = KnownHosts::new();
        hosts
            .cli(server.addr)
            .arg("--accept-new-host")
            .cmds("ls")
            .timeout(QUICK)
            .run()
            .exits(NOT_PROTOCOL)
            .one_line_error()
            .stderr_has("speaks TLS but not the ftpd protocol")
            .stderr_has(said);
        let served = server.served();
        assert_eq!(served.handshook, handshook, "ALPN {alpn:?}");
        assert!(
            served.received.is_empty(),
            "the client sent {} bytes to a server that is not ftpd",
            served.received.len()
        );
        assert_eq!(hosts.read(), None, "a server that is not ftpd was pinned");
    }
}

#[test]
fn plaintext_daemon_refuses_to_listen_beyond_loopback() {
    let log = Daemon::builder()
        .listen("0.0.0.0:0")
        .arg("--insecure-plaintext")
        .refuses_to_start();
    assert!(
        log.contains("refusing --insecure-plaintext on 0.0.0.0:") && log.contains("loopback"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Men in the middle

/// A man in the middle that terminates TLS: it shows the client the tests' own certificate,
/// opens a TLS connection of its own to the daemon, and relays the plaintext both ways.
struct TlsRelay {
    addr: SocketAddr,
    /// Stops the relay when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsRelay {
    fn start(upstream: SocketAddr) -> TlsRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config());
                let connector = tokio_rustls::TlsConnector::from(crate::tls::any_server_config());
                loop {
                    let tcp = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => return,
                        },
                    };
                    let (acceptor, connector) = (acceptor.clone(), connector.clone());
                    tokio::spawn(async move {
                        let Ok(mut down) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        let name = ServerName::try_from("localhost").unwrap();
                        let Ok(mut up) = connector.connect(name, up).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    });
                }
            });
        });
        TlsRelay { addr, _stop: stop }
    }
}

/// A user who accepts whatever key is shown (`--accept-new-host`) is still safe with a secret:
/// the login proofs are bound to the TLS connection, and a relay has two of them.
#[test]
fn a_relay_that_terminates_tls_cannot_log_in_for_the_client() {
    let site = Site::new();
    let users = site.private_file("users.toml", USERS);
    // No penalty for the relay's failed login: the client logs in directly right after.
    let daemon = site
        .daemon()
        .arg("--users")
        .arg(&users)
        .args(["--login-penalty", "0s"])
        .start();
    let relay = TlsRelay::start(daemon.addr());
    let keys = Keys::new();
    let work = tmpdir();
    write_random(work.path().join("a.txt"), 10_000, 71);
    let hosts = KnownHosts::new();

    hosts
        .cli(relay.addr)
        .arg("--accept-new-host")
        .user(USER, keys.secret(USER, SECRET))
        .cwd(&work)
        .cmds("put a.txt")
        .timeout(QUICK)
        .run()
        .exits(UNTRUSTED)
        .stderr_has(&format!("authentication failed for {USER}@"));
    daemon.wait_for_log(&["authentication failed", USER]);
    assert!(!daemon.log().contains("authenticated"), "{}", daemon.log());
    assert_missing(site.root().join("home/a.txt"));
    assert_eq!(
        staged_bytes(&daemon.staging()),
        0,
        "bytes of the put staged"
    );
    // The relay's key was pinned: the client did go through it.
    assert!(hosts
        .read()
        .unwrap()
        .contains(&crate::tls::identity().fingerprint.to_string()));

    // Without the relay, the same client and secret get in.
    daemon
        .cli()
        .user(USER, keys.secret(USER, SECRET))
        .cwd(&work)
        .cmds("put a.txt")
        .run()
        .ok();
    assert_same_file(work.path().join("a.txt"), site.root().join("home/a.txt"));
}

/// A man in the middle that plays the server itself and, not knowing the secret, answers the
/// login with a made-up proof: the client finds out and sends nothing more.
#[test]
fn a_server_that_forges_its_login_proof_gets_no_command() {
    let mitm = Fake::start(1, |tcp| {
        let mut peer = Raw::tls_server(tcp).expect("TLS with the client");
        assert!(matches!(peer.recv(), Message::Hello(_)));
        let Message::Hello(ours) = raw::hello_message() else {
            unreachable!()
        };
        peer.send(&Message::Hello(Hello {
            capabilities: vec![capability::AUTH_SCRAM_SHA256.into()],
            agent: "ftpd/0.1.0".into(),
            ..ours
        }));
        let Message::Auth(login) = peer.recv() else {
            panic!("the client did not log in");
        };
        let first = scram::client_first(login.scram.as_deref().unwrap(), peer.binding().as_ref())
            .expect("a SCRAM client-first bound to the channel");
        let (server, server_first) = scram::Server::start(
            first,
            b"salt",
            scram::MIN_ITERATIONS,
            &scram::nonce(),
            peer.binding(),
        );
        peer.send(&Message::AuthContinue(Scram {
            scram: server_first,
        }));
        let Message::AuthFinal(last) = peer.recv() else {
            panic!("the client did not send its proof");
        };
        // The best it can do: sign with a verifier of a guess at the password.
        let guess = scram::Verifier::new(b"a guess", b"salt", scram::MIN_ITERATIONS);
        let forged = server
            .finish(&last.scram, &guess)
            .unwrap_or_else(|_| "v=bm90IHRoZSBzaWduYXR1cmU=".into());
        peer.send(&Message::AuthOk(AuthOk {
            scram: Some(forged),
        }));
        let after: Vec<Message> = std::iter::from_fn(|| peer.try_recv()).collect();
        (login.user, after)
    });
    let keys = Keys::new();
    let work = tmpdir();
    write_random(work.path().join("a.txt"), 10_000, 72);

    // The user was talked into trusting the impostor's key.
    Cli::new(mitm.addr)
        .arg("--fingerprint")
        .arg(crate::tls::identity().fingerprint.to_string())
        .user(USER, keys.secret(USER, SECRET))
        .cwd(&work)
        .cmds("put a.txt")
        .timeout(QUICK)
        .run()
        .exits(UNTRUSTED)
        .one_line_error()
        .stderr_has(&format!(
            "the server at {} could not prove it holds the password verifier of {USER}",
            mitm.addr
        ));
    let (user, after) = mitm.served();
    assert_eq!(user, USER);
    assert!(
        after.is_empty(),
        "after the forged proof the client sent {after:?}"
    );
}

/// A plain TCP relay that keeps a copy of every byte, both ways.
struct Recorder {
    addr: SocketAddr,
    capture: Arc<Mutex<Vec<u8>>>,
    /// Set on drop, to end the accept loop.
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(upstream: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let capture = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tape, stopped) = (capture.clone(), stop.clone());
        thread::spawn(move || {
            for down in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(down), Ok(up)) = (down, TcpStream::connect(upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let tape = tape.clone();
                    thread::spawn(move || pump(from, to, &tape));
                }
            }
        });
        Recorder {
            addr,
            capture,
            stop,
        }
    }

    fn capture(&self) -> Vec<u8> {
        self.capture.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop to see it.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to`, recording, until `from` ends; then ends `to`'s writing side too.
fn pump(mut from: TcpStream, mut to: TcpStream, tape: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tape.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What someone recording the wire learns: nothing of the file, its name or the user's name.
/// The same recording of a plaintext daemon has all three, so the search finds what is there.
#[test]
fn a_recording_of_the_wire_shows_no_file_name_user_or_contents() {
    let marker = format!("MARKER-{}", scram::nonce());
    let name = "ledger-of-the-quokka-4417.txt";
    let work = tmpdir();
    let file = work.path().join(name);
    write_random(&file, 100_000, 73);
    let mut contents = fs::read(&file).unwrap();
    contents.splice(50_000..50_000, marker.bytes());
    write_file(&file, &contents);
    let keys = Keys::new();

    for plaintext in [false, true] {
        let site = Site::new();
        let users = site.private_file("users.toml", USERS);
        let mut daemon = site.daemon().arg("--users").arg(&users);
        if plaintext {
            daemon = daemon.arg("--insecure-plaintext");
        }
        let daemon = daemon.start();
        let recorder = Recorder::start(daemon.addr());
        let back = format!("back-{plaintext}.txt");
        daemon
            .cli_via(recorder.addr)
            .user(USER, keys.secret(USER, SECRET))
            .cwd(&work)
            .round_trip(name, &back);
        assert_same_file(&file, site.root().join("home").join(name));
        let tape = recorder.capture();
        assert!(
            tape.len() > 2 * contents.len(),
            "the recording has {} bytes: not both transfers",
            tape.len()
        );
        for (what, needle) in [
            ("contents", &marker),
            ("file name", &name.to_owned()),
            ("user name", &USER.to_owned()),
        ] {
            assert_eq!(
                contains(&tape, needle.as_bytes()),
                plaintext,
                "the {what} {} in the recording of a {} daemon",
                if plaintext { "is not" } else { "is" },
                if plaintext { "plaintext" } else { "TLS" },
            );
        }
    }
}

/// Always presents this certificate and key: skips the check rustls makes that they belong
/// together, to play a server that copied a certificate without its private key.
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server with a copy of the pinned certificate but another private key: the fingerprint
/// matches, the handshake's signature cannot, and the client goes no further.
#[test]
fn a_copied_certificate_without_its_key_is_refused() {
    let daemon = Daemon::start();
    let fp = daemon.fingerprint();
    let pem = fs::read(daemon.state().join("tls/server-cert.pem")).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let provider = protocol::tls::provider();
    let other_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        crate::tls::identity().key_der.clone(),
    ));
    let signer = provider.key_provider.load_private_key(other_key).unwrap();
    let copied = Arc::new(CertifiedKey::new(chain, signer));
    assert!(copied.keys_match().is_err(), "the key is the daemon's own");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(copied)));
    config.alpn_protocols = vec![protocol::tls::ALPN.to_vec()];
    let config = Arc::new(config);
    let impostor = Fake::start(2, move |tcp| serve_tls(tcp, config.clone()));
    // The pin the impostor copies, for its own address.
    let hosts = KnownHosts::with(&format!("{} {fp}\n", impostor.addr));

    for cli in [
        Cli::new(impostor.addr).arg("--fingerprint").arg(&fp),
        hosts.cli(impostor.addr),
    ] {
        cli.cmds("ls")
            .timeout(QUICK)
            .run()
            .exits(KEY_CHANGED)
            .stderr_has("does not hold")
            .stderr_has("Nothing was sent");
        let served = impostor.served();
        assert!(
            !served.handshook && served.received.is_empty(),
            "the client completed the handshake with an impostor"
        );
    }
    assert_eq!(hosts.read().unwrap(), format!("{} {fp}\n", impostor.addr));
}

// ---------------------------------------------------------------------------------------------
// ftpd --fingerprint

/// `ftpd --fingerprint` with these flags: its stdout, which must be the fingerprint alone.
#[track_caller]
fn printed_fingerprint(args: &[&std::ffi::OsStr]) -> String {
    let mut cmd = Command::new(bin("ftpd"));
    cmd.args(args).arg("--fingerprint");
    clean_env(&mut cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("cannot run ftpd --fingerprint");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "ftpd --fingerprint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fp = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("not one line: {stdout:?}"));
    assert!(
        !fp.contains('\n') && fp.parse::<Fingerprint>().is_ok(),
        "not a fingerprint alone: {stdout:?}"
    );
    fp.to_owned()
}

#[test]
fn ftpd_fingerprint_prints_the_key_the_log_states() {
    // Before the first start it makes the key, which the daemon then uses.
    let site = Site::new();
    let root = site.root();
    let printed = printed_fingerprint(&["--root".as_ref(), root.as_ref()]);
    let daemon = site.daemon().start();
    assert_eq!(daemon.fingerprint(), printed);
    assert_eq!(
        printed_fingerprint(&["--root".as_ref(), root.as_ref()]),
        printed
    );

    // A certificate from files: its key's.
    let id = Identity::self_signed();
    let (cert, key) = (site.path("server.pem"), site.path("server-key.pem"));
    id.install(&cert, &key);
    let printed = printed_fingerprint(&[
        "--root".as_ref(),
        root.as_ref(),
        "--tls-cert".as_ref(),
        cert.as_ref(),
        "--tls-key".as_ref(),
        key.as_ref(),
    ]);
    assert_eq!(printed, id.fingerprint);
}
