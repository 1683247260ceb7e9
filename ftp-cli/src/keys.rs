//! The client's own key, for logins without a password (`ftp-cli keygen`, `-i FILE`): an
//! Ed25519 key in a PKCS#8 PEM file readable by its owner only, presented to the server as a
//! self-signed TLS client certificate made afresh at each start. Its identity is the SHA-256 of
//! its public key, `SHA256:<base64>`, the form server fingerprints take too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::tls::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{ClientError, Result};

/// A key the client logs in with.
pub struct ClientKey {
    /// A self-signed certificate for the key: what TLS carries.
    pub cert: CertificateDer<'static>,
    /// The private key, PKCS#8 DER.
    key: Vec<u8>,
    /// The public key's fingerprint: what the users file lists.
    pub fingerprint: Fingerprint,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({})", self.fingerprint)
    }
}

impl ClientKey {
    /// The private key, for the TLS configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// The default key file: `id_ed25519` in the client's data directory.
pub fn default_path() -> Option<PathBuf> {
    Some(dirs::data_dir()?.join("ftp-cli").join("id_ed25519"))
}

/// Loads the key in `path`; refuses one that others than its owner may read, as ssh does.
pub fn load(path: &Path) -> Result<Arc<ClientKey>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ClientError::local(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ClientError::Usage(format!(
            "{}: the key is open to group or others; run: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| ClientError::local(path, e))?;
    let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| {
        ClientError::Usage(format!(
            "{}: not a key ftp-cli can use: {e}",
            path.display()
        ))
    })?;
    from_pair(&pair)
}

fn from_pair(pair: &rcgen::KeyPair) -> Result<Arc<ClientKey>> {
    let bad =
        |e: rcgen::Error| ClientError::Internal(format!("cannot make the key's certificate: {e}"));
    let cert = rcgen::CertificateParams::new(vec!["ftp-cli".to_owned()])
        .map_err(bad)?
        .self_signed(pair)
        .map_err(bad)?;
    let cert = cert.der().clone();
    let fingerprint = Fingerprint::of_cert(&cert)
        .map_err(|e| ClientError::Internal(format!("the key's certificate: {e}")))?;
    Ok(Arc::new(ClientKey {
        cert,
        key: pair.serialize_der(),
        fingerprint,
    }))
}

/// Makes a new Ed25519 key in `path` (mode 0600, its directory made if missing); refuses to
/// replace a file that is there.
pub fn generate(path: &Path) -> Result<Arc<ClientKey>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| ClientError::Internal(format!("cannot generate a key: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ClientError::LocalExists(format!(
                "{} exists; not replacing a key (remove it first, or name another file)",
                path.display()
            )),
            _ => ClientError::local(path, e),
        })?;
    file.write_all(pair.serialize_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| ClientError::local(path, e))?;
    from_pair(&pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_back_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/id");
        let made = generate(&path).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(made.fingerprint, loaded.fingerprint);
        assert!(matches!(generate(&path), Err(ClientError::LocalExists(_))));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&path), Err(ClientError::Usage(_))));
    }
}
