//! The daemon's TLS identity: its key and certificate (made at first start, or a CA's from
//! `--tls-cert`/`--tls-key`), reloaded on SIGHUP without dropping a connection, and the
//! rustls configuration every connection is accepted with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use protocol::tls::{self, Fingerprint};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::private;
use crate::Config;

/// Where the generated identity lives, in the state directory.
const DIR: &str = "tls";
const KEY_FILE: &str = "server-key.pem";
const CERT_FILE: &str = "server-cert.pem";

/// Where the daemon's key and certificate come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Made at first start in the state directory, reused after.
    Generated(PathBuf),
    /// A certificate chain and its key from files (`--tls-cert`, `--tls-key`): a CA's.
    Files { cert: PathBuf, key: PathBuf },
}

impl Source {
    /// The source `config` names; its state directory is resolved already.
    pub fn of(config: &Config) -> anyhow::Result<Source> {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Ok(Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => {
                let state = config
                    .state_dir
                    .as_ref()
                    .expect("the server resolves the state directory first");
                Ok(Source::Generated(state.join(DIR)))
            }
            _ => bail!("--tls-cert and --tls-key go together: give both, or neither"),
        }
    }
}

/// The identity in force, which SIGHUP replaces; every handshake asks it for the key.
pub struct Identity {
    source: Source,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({}, {:?})", self.fingerprint(), self.source)
    }
}

impl Identity {
    /// Loads the identity from `source`, making it first if it is a generated one not yet made.
    pub fn load(source: Source) -> anyhow::Result<Identity> {
        let key = read(&source, &tls::provider())?;
        Ok(Identity {
            source,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the key and certificate again (a renewed certificate, say) and puts them in force
    /// for new handshakes; connections already open keep theirs. On failure the old ones stay.
    pub fn reload(&self) -> anyhow::Result<Fingerprint> {
        let key = read(&self.source, &tls::provider())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(self.fingerprint())
    }

    /// The SHA-256 of the public key in force: what clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        let key = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Fingerprint::of_cert(&key.cert[0]).expect("checked when loaded")
    }

    /// The TLS configuration connections are accepted with: TLS 1.3 only, this protocol's
    /// ALPN id, no session resumption (every connection verifies the server's key afresh).
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(AnyClientKey(tls::Signatures::default())))
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![tls::ALPN.to_vec()];
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Asks every client for a certificate, optional: one that presents one must prove it holds
/// its key (the handshake signature is checked); which user the key belongs to is decided at
/// login, by the users file. Certificates are self-signed (`ftp-cli keygen`): no CA is checked.
#[derive(Debug)]
struct AnyClientKey(tls::Signatures);

impl rustls::server::danger::ClientCertVerifier for AnyClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Fingerprint::of_cert(end_entity)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.schemes()
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The key and certificate chain `source` holds, checked to belong together.
fn read(source: &Source, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let (cert_path, key_path) = match source {
        Source::Files { cert, key } => (cert.clone(), key.clone()),
        Source::Generated(dir) => {
            generate_if_missing(dir)?;
            (dir.join(CERT_FILE), dir.join(KEY_FILE))
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert_path.display());
    }
    crate::users::check_private(&key_path, "TLS key")?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read the TLS key {}", key_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "the TLS key {} does not belong to the certificate {}, or is of a kind not supported",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Fingerprint::of_cert(&certified.cert[0])
        .with_context(|| format!("cannot parse the certificate {}", cert_path.display()))?;
    Ok(certified)
}

/// Makes the daemon's own key (Ed25519) and a self-signed certificate for it in `dir`, unless
/// they are there. The key is written mode 0600, each file atomically (a crash leaves either
/// no file or a whole one); a certificate lost on its own is made again for the same key, so
/// the fingerprint clients pinned stays.
fn generate_if_missing(dir: &Path) -> anyhow::Result<()> {
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    if key_path.exists() && cert_path.exists() {
        return Ok(());
    }
    private::create_dir(dir)?;
    let key = if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a key ftpd can use", key_path.display()))?
    } else {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .context("cannot generate the server key")?;
        private::write_atomically(&key_path, key.serialize_pem().as_bytes())?;
        key
    };
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .context("cannot make the server certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ftpd self-signed");
    let cert = params
        .self_signed(&key)
        .context("cannot sign the server certificate")?;
    private::write_atomically(&cert_path, cert.pem().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_generated_identity_is_private_and_reused() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join(DIR);
        let first = Identity::load(Source::Generated(dir.clone())).unwrap();
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let again = Identity::load(Source::Generated(dir.clone())).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        // A certificate lost on its own is made again for the same key.
        std::fs::remove_file(dir.join(CERT_FILE)).unwrap();
        let remade = Identity::load(Source::Generated(dir)).unwrap();
        assert_eq!(first.fingerprint(), remade.fingerprint());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        Identity::load(Source::Generated(a.path().to_owned())).unwrap();
        Identity::load(Source::Generated(b.path().to_owned())).unwrap();
        let mixed = Source::Files {
            cert: a.path().join(CERT_FILE),
            key: b.path().join(KEY_FILE),
        };
        let err = format!("{:#}", Identity::load(mixed).unwrap_err());
        assert!(err.contains("does not belong"), "{err}");
    }
}
