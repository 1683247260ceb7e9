//! SCRAM-SHA-256 (RFC 5802, RFC 7677) with `tls-exporter` channel binding (RFC 9266): the
//! password login, in SCRAM's own message formats, so that the RFC's test vector applies.
//!
//! The server keeps only a [`Verifier`] (salt, iteration count, StoredKey, ServerKey), never
//! the password; the client proves it knows the password, and the server proves it holds the
//! verifier (the ServerSignature), over a transcript that includes the TLS connection's
//! exporter, so a relay between two TLS connections cannot complete the login.
//!
//! No SCRAM crate is used: the maintained ones either pull in another crypto stack or lack
//! channel binding by exporter; the protocol itself is a few string formats around
//! HMAC-SHA-256 and PBKDF2, which the RustCrypto crates provide.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The mechanism's name, as SASL spells it.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations of a new verifier (OWASP's figure for PBKDF2-HMAC-SHA256): each guess at a
/// stolen verifier costs this many HMACs.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// The fewest iterations RFC 7677 allows, and the most a server may ask a client to do (a
/// hostile server must not make the client spin for minutes).
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Longest SCRAM message either side accepts.
pub const MAX_MESSAGE: usize = 1024;
/// Bytes of randomness in each side's nonce.
const NONCE_BYTES: usize = 18;

/// Why a SCRAM exchange failed. Messages name the step, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("the SCRAM nonce does not continue the client's")]
    Nonce,
    #[error("the channel binding does not match this connection")]
    Binding,
    #[error("wrong proof")]
    Proof,
    #[error("the server's signature is wrong: it does not hold this user's verifier")]
    ServerSignature,
    #[error("iteration count {0} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
}

type Result<T> = std::result::Result<T, ScramError>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `Hi(password, salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256. The password is SASLprep'd when
/// it can be (RFC 7677), else used as its UTF-8 bytes, as PostgreSQL does.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prepared = std::str::from_utf8(password)
        .ok()
        .and_then(|p| stringprep::saslprep(p).ok())
        .map(|p| p.into_owned().into_bytes());
    let password = prepared.as_deref().unwrap_or(password);
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// What the server stores for a password: never the password itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({} iterations)", self.iterations)
    }
}

impl Verifier {
    /// The verifier of `password` with `salt` and `iterations`.
    pub fn new(password: &[u8], salt: &[u8], iterations: u32) -> Verifier {
        Verifier::from_salted(
            &salted_password(password, salt, iterations),
            salt,
            iterations,
        )
    }

    /// A verifier with a fresh random salt of 16 bytes.
    pub fn generate(password: &[u8], iterations: u32) -> Verifier {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).expect("the OS random number generator failed");
        Verifier::new(password, &salt, iterations)
    }

    fn from_salted(salted: &[u8; 32], salt: &[u8], iterations: u32) -> Verifier {
        let client_key = hmac(salted, b"Client Key");
        Verifier {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(salted, b"Server Key"),
        }
    }
}

/// PostgreSQL's spelling, which tools already know:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, all base64.
impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl FromStr for Verifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<Verifier> {
        let bad = ScramError::Malformed(
            "a verifier is SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY",
        );
        let rest = s
            .strip_prefix(MECHANISM)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or(bad.clone())?;
        let (params, keys) = rest.split_once('$').ok_or(bad.clone())?;
        let (iterations, salt) = params.split_once(':').ok_or(bad.clone())?;
        let (stored, server) = keys.split_once(':').ok_or(bad.clone())?;
        let iterations: u32 = iterations.parse().map_err(|_| bad.clone())?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let key = |b64: &str| -> Result<[u8; 32]> {
            B64.decode(b64)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or(bad.clone())
        };
        Ok(Verifier {
            salt: B64.decode(salt).map_err(|_| bad.clone())?,
            iterations,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// A fresh printable nonce (base64 of random bytes: never a comma).
pub fn nonce() -> String {
    let mut b = [0u8; NONCE_BYTES];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    B64.encode(b)
}

/// The GS2 header: `p=tls-exporter,,` over TLS, `n,,` without a channel to bind to.
fn gs2_header(binding: Option<&[u8; 32]>) -> &'static str {
    match binding {
        Some(_) => "p=tls-exporter,,",
        None => "n,,",
    }
}

/// `c=` of the client's final message: the GS2 header and the channel binding data.
fn channel_attr(binding: Option<&[u8; 32]>) -> String {
    let mut data = gs2_header(binding).as_bytes().to_vec();
    if let Some(b) = binding {
        data.extend_from_slice(b);
    }
    B64.encode(data)
}

/// A user name as SCRAM writes it: `=` as `=3D`, `,` as `=2C`.
fn escape_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=3D") => out.push('='),
            Some("=2C") => out.push(','),
            _ => return Err(ScramError::Malformed("a bad escape in the user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of attribute `name` (one letter) at the start of `part`.
fn attr(part: Option<&str>, name: char) -> Result<&str> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed(
            "an attribute is missing or out of order",
        ))
}

fn check_len(message: &str) -> Result<()> {
    if message.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed("too long"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client's side

/// The client between its first message and its last.
pub struct Client {
    binding: Option<[u8; 32]>,
    nonce: String,
    first_bare: String,
}

impl Client {
    /// Starts a login as `user`: returns the state and the client-first-message. `binding` is
    /// the TLS exporter of the connection (`None` over `--insecure-plaintext`).
    pub fn start(user: &str, binding: Option<[u8; 32]>, nonce: String) -> (Client, String) {
        let first_bare = format!("n={},r={nonce}", escape_name(user));
        let message = format!("{}{first_bare}", gs2_header(binding.as_ref()));
        (
            Client {
                binding,
                nonce,
                first_bare,
            },
            message,
        )
    }

    /// Reads the server-first-message: the salt and iteration count to derive with, checked.
    pub fn salt(&self, server_first: &str) -> Result<(Vec<u8>, u32)> {
        let (_, salt, iterations) = self.parse_server_first(server_first)?;
        Ok((salt, iterations))
    }

    fn parse_server_first(&self, server_first: &str) -> Result<(String, Vec<u8>, u32)> {
        check_len(server_first)?;
        let mut parts = server_first.split(',');
        if server_first.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let nonce = attr(parts.next(), 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(attr(parts.next(), 's')?)
            .map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        let iterations: u32 = attr(parts.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("the iteration count is not a number"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        Ok((nonce.to_owned(), salt, iterations))
    }

    /// The client-final-message for `server_first`, given the salted password (from
    /// [`salted_password`] with the salt and count [`Client::salt`] read), and the
    /// ServerSignature the server must answer with.
    pub fn finish(&self, server_first: &str, salted: &[u8; 32]) -> Result<(String, Finished)> {
        let (nonce, _, _) = self.parse_server_first(server_first)?;
        let without_proof = format!("c={},r={nonce}", channel_attr(self.binding.as_ref()));
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let client_key = hmac(salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let message = format!("{without_proof},p={}", B64.encode(proof));
        Ok((
            message,
            Finished {
                server_key: hmac(salted, b"Server Key"),
                auth_message,
            },
        ))
    }
}

/// What the client expects of the server's last message.
pub struct Finished {
    server_key: [u8; 32],
    auth_message: String,
}

impl Finished {
    /// Checks the server-final-message (`v=...`), in constant time.
    pub fn verify(&self, server_final: &str) -> Result<()> {
        check_len(server_final)?;
        if server_final.starts_with("e=") {
            return Err(ScramError::Proof);
        }
        let v = attr(server_final.split(',').next(), 'v')?;
        let v = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("the server signature is not base64"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.server_key).expect("any key");
        mac.update(self.auth_message.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&v)
            .map_err(|_| ScramError::ServerSignature)
    }
}

// ---------------------------------------------------------------------------------------------
// The server's side

/// A client-first-message, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name, unescaped.
    pub user: String,
    gs2: String,
    nonce: String,
    bare: String,
}

/// Reads a client-first-message. `binding` is this connection's exporter (`None` in
/// plaintext): a client that binds to another kind of channel, or does not bind over TLS, is
/// refused (a client that could bind but says `n` or `y` has been tampered with).
pub fn client_first(message: &str, binding: Option<&[u8; 32]>) -> Result<ClientFirst> {
    check_len(message)?;
    let expected = gs2_header(binding);
    let Some(bare) = message.strip_prefix(expected) else {
        return Err(
            if message.starts_with("n,") || message.starts_with("y,") || message.starts_with("p=") {
                ScramError::Binding
            } else {
                ScramError::Malformed("the GS2 header")
            },
        );
    };
    let mut parts = bare.split(',');
    let user = unescape_name(attr(parts.next(), 'n')?)?;
    let nonce = attr(parts.next(), 'r')?;
    if nonce.is_empty() || !nonce.chars().all(|c| c.is_ascii_graphic() && c != ',') {
        return Err(ScramError::Malformed("the nonce"));
    }
    Ok(ClientFirst {
        user,
        gs2: expected.to_owned(),
        nonce: nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

/// The server between its first message and its last.
pub struct Server {
    first: ClientFirst,
    server_first: String,
    nonce: String,
    binding: Option<[u8; 32]>,
}

impl Server {
    /// The server-first-message for `first`, with the verifier's salt and count (for an
    /// unknown user, a made-up salt that is stable for the name). `suffix` is the server's
    /// nonce part.
    pub fn start(
        first: ClientFirst,
        salt: &[u8],
        iterations: u32,
        suffix: &str,
        binding: Option<[u8; 32]>,
    ) -> (Server, String) {
        let nonce = format!("{}{suffix}", first.nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        (
            Server {
                first,
                server_first: server_first.clone(),
                nonce,
                binding,
            },
            server_first,
        )
    }

    /// Checks the client-final-message against `verifier`; on success, the
    /// server-final-message (`v=ServerSignature`). The proof is checked in constant time,
    /// and the same work is done for a verifier that cannot match (an unknown user's).
    pub fn finish(&self, client_final: &str, verifier: &Verifier) -> Result<String> {
        check_len(client_final)?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("the proof is missing"))?;
        let mut parts = without_proof.split(',');
        let c = attr(parts.next(), 'c')?;
        let nonce = attr(parts.next(), 'r')?;
        if parts.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        let expected_c = {
            let mut data = self.first.gs2.as_bytes().to_vec();
            if let Some(b) = &self.binding {
                data.extend_from_slice(b);
            }
            B64.encode(data)
        };
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("the proof is not 32 bytes of base64"))?;
        let auth_message = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        // StoredKey == H(ClientKey), compared in constant time.
        let same: bool = sha256(&client_key).ct_eq(&verifier.stored_key).into();
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        if c != expected_c {
            return Err(ScramError::Binding);
        }
        if !same {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }

    /// The user name the client gave.
    pub fn user(&self) -> &str {
        &self.first.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil", no channel binding.
    #[test]
    fn rfc7677_test_vector() {
        let (client, first) = Client::start("user", None, "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(first, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (salt, iterations) = client.salt(server_first).unwrap();
        assert_eq!(iterations, 4096);
        let salted = salted_password(b"pencil", &salt, iterations);
        let (client_final, finished) = client.finish(server_first, &salted).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        finished
            .verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();

        // The server's side of the same exchange, from a verifier of the same password.
        let verifier = Verifier::new(b"pencil", &salt, 4096);
        let first = client_first(&first, None).unwrap();
        assert_eq!(first.user, "user");
        let (server, sent) =
            Server::start(first, &salt, 4096, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", None);
        assert_eq!(sent, server_first);
        assert_eq!(
            server.finish(&client_final, &verifier).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let wrong = Verifier::new(b"pencil!", &salt, 4096);
        assert_eq!(server.finish(&client_final, &wrong), Err(ScramError::Proof));
    }

    /// docs/PROTOCOL.md's worked example: RFC 7677's exchange, bound to a TLS exporter of
    /// the bytes 00..1f, and the verifier the server stores for it.
    #[test]
    fn the_documented_example_with_channel_binding() {
        let binding: [u8; 32] = std::array::from_fn(|i| i as u8);
        let (client, first) = Client::start("user", Some(binding), "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(first, "p=tls-exporter,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (salt, iterations) = client.salt(server_first).unwrap();
        let salted = salted_password(b"pencil", &salt, iterations);
        let (client_final, finished) = client.finish(server_first, &salted).unwrap();
        assert_eq!(
            client_final,
            "c=cD10bHMtZXhwb3J0ZXIsLAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f,\
             r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=QC6CS20quADQRb3mT99YUH+n3VJxUvzuK0K0E1Vrs2M="
        );
        finished
            .verify("v=2GiAgapEppLVlUXbxUDksL3VgYHzuqiK5tR4mhJGgvs=")
            .unwrap();
        assert_eq!(
            Verifier::new(b"pencil", &salt, 4096).to_string(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn verifiers_read_back_and_hold_no_password() {
        let v = Verifier::generate(b"correct horse", MIN_ITERATIONS);
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert!(!text.contains("correct"));
        assert_eq!(text.parse::<Verifier>().unwrap(), v);
        for bad in [
            "",
            "SCRAM-SHA-256$1:AA==$AA==:AA==",
            "MD5$4096:x$y:z",
            &text[..text.len() - 4],
        ] {
            assert!(bad.parse::<Verifier>().is_err(), "{bad}");
        }
    }

    /// Both sides bound to one exporter agree; bound to two (a relay between two TLS
    /// connections), the proof fails.
    #[test]
    fn the_channel_binding_is_checked() {
        let verifier = Verifier::new(b"pw", b"salt", MIN_ITERATIONS);
        let login = |client_binding: [u8; 32], server_binding: [u8; 32]| {
            let (client, first) = Client::start("a,b=c", Some(client_binding), nonce());
            let first = client_first(&first, Some(&server_binding))?;
            assert_eq!(first.user, "a,b=c");
            let (server, server_first) = Server::start(
                first,
                &verifier.salt,
                verifier.iterations,
                &nonce(),
                Some(server_binding),
            );
            let salted = salted_password(b"pw", b"salt", MIN_ITERATIONS);
            let (client_final, finished) = client.finish(&server_first, &salted)?;
            let server_final = server.finish(&client_final, &verifier)?;
            finished.verify(&server_final)
        };
        login([1; 32], [1; 32]).unwrap();
        assert_eq!(login([1; 32], [2; 32]), Err(ScramError::Binding));
        // A client that says it cannot bind, over TLS: stripped by someone, refused.
        assert_eq!(
            client_first("n,,n=a,r=x", Some(&[1; 32])),
            Err(ScramError::Binding)
        );
    }

    #[test]
    fn a_server_without_the_verifier_is_caught() {
        let (client, _) = Client::start("u", None, "abc".into());
        let server_first = "r=abcdef,s=c2FsdA==,i=4096";
        let salted = salted_password(b"pw", b"salt", 4096);
        let (_, finished) = client.finish(server_first, &salted).unwrap();
        assert_eq!(
            finished.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::ServerSignature)
        );
        // And one that does not extend the client's nonce, or asks for absurd work.
        assert_eq!(
            client.salt("r=zzz,s=c2FsdA==,i=4096"),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            client.salt("r=abcd,s=c2FsdA==,i=99999999"),
            Err(ScramError::Iterations(99999999))
        );
    }
}
