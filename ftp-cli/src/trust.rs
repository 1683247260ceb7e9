//! Whom the client trusts to be the server, the way OpenSSH does it: a `known_hosts` file of
//! pinned key fingerprints (first contact asks, a changed key is refused loudly), one key named
//! on the command line, or a CA's certificate checked the usual way.
//!
//! Pinning checks more than the fingerprint: the TLS handshake's signature is verified against
//! the pinned key, so a server that copied the certificate without its private key is refused.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protocol::tls::{self, Fingerprint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{ClientError, Result};

/// How the client decides that the server is the one it means.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Fingerprints pinned in a known_hosts file; a host not there yet is asked about (or
    /// accepted and pinned with `--accept-new-host`).
    KnownHosts { file: PathBuf, accept_new: bool },
    /// Exactly this key and no other (`--fingerprint`).
    Key(Fingerprint),
    /// A certificate issued by one of these roots for the host name (`--ca-file`, `--ca-system`).
    Ca(Arc<RootCertStore>),
}

/// How connections are made: TLS with a way to trust the server, or plain TCP when told.
#[derive(Debug, Clone)]
pub enum Security {
    Tls(Trust),
    /// `--insecure-plaintext`: nothing is protected.
    Plaintext,
}

/// The default known_hosts file: in the client's data directory, beside the history.
pub fn default_known_hosts() -> Option<PathBuf> {
    Some(dirs::data_dir()?.join("ftp-cli").join("known_hosts"))
}

/// Loads the roots of `--ca-file FILE` (PEM).
pub fn ca_file(path: &Path) -> Result<RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Usage(format!("--ca-file {}: {e}", path.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ClientError::Usage(format!(
            "--ca-file {}: no usable CA certificate in it",
            path.display()
        )));
    }
    Ok(roots)
}

/// The operating system's trust roots (`--ca-system`).
pub fn ca_system() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ClientError::Usage(
            "--ca-system: found no trust roots on this system".into(),
        ));
    }
    Ok(roots)
}

// ---------------------------------------------------------------------------------------------
// known_hosts

/// One pinned key: `host:port SHA256:...`, one a line; `#` starts a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub fingerprint: Fingerprint,
    /// 1-based line in the file, for messages.
    pub line: usize,
}

/// Most bytes of a known_hosts file read: a file this large is not one people keep.
const MAX_KNOWN_HOSTS: u64 = 16 << 20;

/// How a server is named in known_hosts: `host:port` as typed, with the host's letters in
/// lower case, a trailing dot dropped and an IP address in its canonical form, so that one
/// server typed two ways has one pin.
pub fn pin_name(addr: &str) -> String {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (addr, None),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let host = match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(ip) => ip.to_string(),
        Err(_) => host.trim_end_matches('.').to_ascii_lowercase(),
    };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The key pinned for `host` in `file`, if any. A missing file pins nothing.
pub fn pinned(file: &Path, host: &str) -> Result<Option<Pin>> {
    let host = pin_name(host);
    let host = host.as_str();
    let text = match read_capped(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::local(file, e)),
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(key)) = (words.next(), words.next()) else {
            continue;
        };
        if pin_name(name) == host {
            let fingerprint = key.parse().map_err(|e| {
                ClientError::Usage(format!("{}, line {}: {e}", file.display(), i + 1))
            })?;
            return Ok(Some(Pin {
                fingerprint,
                line: i + 1,
            }));
        }
    }
    Ok(None)
}

/// The file's text; one over [`MAX_KNOWN_HOSTS`] is refused rather than read in part (a pin
/// past the cap would be silently ignored, and every connection a first contact).
fn read_capped(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_KNOWN_HOSTS + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_KNOWN_HOSTS {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB: not a known_hosts file ftp-cli reads",
            MAX_KNOWN_HOSTS >> 20
        )));
    }
    Ok(text)
}

/// Pins `fingerprint` for `host`: one line appended to `file` (made, with its directory, if
/// missing; readable by its owner only, like ssh's). Never rewrites a line already there.
pub fn pin(file: &Path, host: &str, fingerprint: &Fingerprint) -> Result<()> {
    let host = pin_name(host);
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| ClientError::local(file, e))?;
    writeln!(f, "{host} {fingerprint}").map_err(|e| ClientError::local(file, e))
}

// ---------------------------------------------------------------------------------------------
// The handshake's verifier

/// What the verifier saw of the server's key, for the message when it refused it.
#[derive(Debug, Default)]
pub struct Seen(Mutex<Option<Fingerprint>>);

impl Seen {
    /// The server's key, once its certificate was presented.
    pub fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, fp: Fingerprint) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
    }
}

/// Accepts the key `expected` names (any key when `None`: first contact with
/// `--accept-new-host`), and only a handshake signed by that key.
struct PinVerifier {
    expected: Option<Fingerprint>,
    seen: Arc<Seen>,
    signatures: tls::Signatures,
}

impl fmt::Debug for PinVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinVerifier({:?})", self.expected)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of_cert(end_entity)?;
        self.seen.set(fp);
        match self.expected {
            Some(expected) if expected != fp => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// A client TLS configuration for one connection, and what its verifier will have seen.
pub struct Setup {
    pub config: Arc<ClientConfig>,
    pub seen: Arc<Seen>,
}

/// The configuration for a connection that accepts `expected` (`None`: any key, to be pinned
/// or asked about after), or, with CA roots, what they vouch for; presenting `key`, if given,
/// as the client's certificate.
pub fn client_config(
    expected: Option<Fingerprint>,
    roots: Option<&Arc<RootCertStore>>,
    key: Option<&crate::keys::ClientKey>,
) -> Result<Setup> {
    let provider = tls::provider();
    let seen = Arc::new(Seen::default());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Internal(format!("TLS setup: {e}")))?;
    let builder = match roots {
        Some(roots) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| ClientError::Usage(format!("CA roots: {e}")))?;
            builder.with_webpki_verifier(verifier)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                expected,
                seen: seen.clone(),
                signatures: tls::Signatures::default(),
            })),
    };
    let mut config = match key {
        Some(key) => builder
            .with_client_auth_cert(vec![key.cert.clone()], key.private_key())
            .map_err(|e| ClientError::Usage(format!("the client key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    // Every connection verifies the server's key afresh.
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Setup {
        config: Arc::new(config),
        seen,
    })
}

/// The name the server is checked against (CA mode) or merely told (SNI): the host as the user
/// typed it, without the port.
pub fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| ClientError::Usage(format!("{host:?} is not a host name or address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_found_by_host_and_port_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        assert_eq!(pinned(&file, "h:1").unwrap(), None);
        let a = Fingerprint::of_spki(b"a");
        let b = Fingerprint::of_spki(b"b");
        pin(&file, "h:1", &a).unwrap();
        pin(&file, "h:2", &b).unwrap();
        assert_eq!(pinned(&file, "h:1").unwrap().unwrap().fingerprint, a);
        let second = pinned(&file, "h:2").unwrap().unwrap();
        assert_eq!((second.fingerprint, second.line), (b, 2));
        assert_eq!(pinned(&file, "h:3").unwrap(), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn one_server_typed_two_ways_has_one_pin_name() {
        assert_eq!(pin_name("Files.Example.:2121"), "files.example:2121");
        assert_eq!(pin_name("[0:0::1]:5"), "[::1]:5");
        assert_eq!(pin_name("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn server_names_drop_the_port() {
        assert!(matches!(
            server_name("localhost:2121").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:1").unwrap(),
            ServerName::IpAddress(_)
        ));
    }
}
