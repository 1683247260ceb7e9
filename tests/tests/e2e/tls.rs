//! TLS for the tests' own peers: a client that accepts any server key (the raw peer tests the
//! protocol, not trust), and a server identity for the fake servers the real client meets.

use std::sync::{Arc, OnceLock};

use protocol::tls::{self, Fingerprint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// A key and self-signed certificate made once per test run, for servers the tests play.
pub struct TestIdentity {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub fingerprint: Fingerprint,
}

/// The tests' server identity.
pub fn identity() -> &'static TestIdentity {
    static IDENTITY: OnceLock<TestIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert = cert.der().clone();
        TestIdentity {
            fingerprint: Fingerprint::of_cert(&cert).unwrap(),
            cert,
            key_der: key.serialize_der(),
        }
    })
}

/// The TLS configuration of a server the tests play: TLS 1.3, ALPN "ftpd", the test identity.
pub fn server_config() -> Arc<ServerConfig> {
    let id = identity();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()));
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    Arc::new(config)
}

/// A client configuration that accepts whatever key the server has (its handshake signature
/// still checked), with this protocol's ALPN id.
pub fn any_server_config() -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyKey(tls::Signatures::default())))
        .with_no_client_auth();
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AnyKey(tls::Signatures);

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
