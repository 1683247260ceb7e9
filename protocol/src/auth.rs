//! HMAC-SHA256 challenge-response: what each side signs, so both compute the same bytes.
//!
//! The transcript binds everything the exchange depends on: a label naming who signs it (so a
//! server's proof can never be replayed as a client's), the protocol version, the TLS
//! connection (its channel binding), both nonces and the user name. The secret itself never
//! crosses the wire.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

/// 32 bytes sent as 64 lowercase hex digits: nonces and HMAC-SHA256 tags.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Bytes32(pub [u8; 32]);

impl fmt::Display for Bytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes32({self})")
    }
}

impl Serialize for Bytes32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        checksum::decode_lower_hex(&s, &mut out)
            .map_err(|_| serde::de::Error::custom("expected 64 lowercase hex digits"))?;
        Ok(Bytes32(out))
    }
}

/// Who signs a transcript.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Client,
    Server,
}

/// The bytes each side signs: `"ftpd-auth-v3 client" | "ftpd-auth-v3 server"`, a zero byte, the
/// protocol version as a big-endian u32, the connection's 32-byte channel binding (the TLS
/// exporter of RFC 9266; 32 zero bytes over `--insecure-plaintext`), the server's nonce, the
/// client's nonce, then the user name in UTF-8.
///
/// The binding makes a proof worthless on any other TLS connection: a man in the middle who
/// terminates TLS on both sides has two connections with two bindings, so the client's proof
/// fails at the server and no command runs.
pub fn transcript(
    role: Role,
    version: u32,
    binding: &[u8; 32],
    server_nonce: &Bytes32,
    client_nonce: &Bytes32,
    user: &str,
) -> Vec<u8> {
    let label: &[u8] = match role {
        Role::Client => b"ftpd-auth-v3 client",
        Role::Server => b"ftpd-auth-v3 server",
    };
    let mut t = Vec::with_capacity(label.len() + 1 + 4 + 32 + 64 + user.len());
    t.extend_from_slice(label);
    t.push(0);
    t.extend_from_slice(&version.to_be_bytes());
    t.extend_from_slice(binding);
    t.extend_from_slice(&server_nonce.0);
    t.extend_from_slice(&client_nonce.0);
    t.extend_from_slice(user.as_bytes());
    t
}

/// The channel binding over a connection without TLS (`--insecure-plaintext`).
pub const NO_CHANNEL_BINDING: [u8; 32] = [0; 32];

fn keyed(secret: &[u8], transcript: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(transcript);
    mac
}

/// HMAC-SHA256 of `transcript` under `secret`.
pub fn sign(secret: &[u8], transcript: &[u8]) -> Bytes32 {
    Bytes32(keyed(secret, transcript).finalize().into_bytes().into())
}

/// Checks `tag` against the HMAC of `transcript` in constant time.
pub fn verify(secret: &[u8], transcript: &[u8], tag: &Bytes32) -> bool {
    keyed(secret, transcript).verify_slice(&tag.0).is_ok()
}

/// A fresh nonce from the operating system's CSPRNG.
pub fn nonce() -> Bytes32 {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    Bytes32(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_are_bound_to_every_input() {
        let (s, c, b) = (Bytes32([1; 32]), Bytes32([2; 32]), [9; 32]);
        let t = transcript(Role::Client, 1, &b, &s, &c, "alice");
        let tag = sign(b"secret", &t);
        assert!(verify(b"secret", &t, &tag));
        assert!(!verify(b"Secret", &t, &tag));
        for other in [
            transcript(Role::Server, 1, &b, &s, &c, "alice"),
            transcript(Role::Client, 2, &b, &s, &c, "alice"),
            transcript(Role::Client, 1, &[8; 32], &s, &c, "alice"),
            transcript(Role::Client, 1, &b, &c, &s, "alice"),
            transcript(Role::Client, 1, &b, &s, &Bytes32([3; 32]), "alice"),
            transcript(Role::Client, 1, &b, &s, &c, "alicf"),
        ] {
            assert!(!verify(b"secret", &other, &tag));
        }
    }

    /// The worked example in docs/PROTOCOL.md, "Authentication": the same bytes, the same tags.
    #[test]
    fn the_documented_example() {
        let binding: [u8; 32] = std::array::from_fn(|i| i as u8);
        let (s, c) = (Bytes32([0x11; 32]), Bytes32([0x22; 32]));
        let client = transcript(Role::Client, 3, &binding, &s, &c, "alice");
        assert_eq!(client.len(), 125);
        assert_eq!(
            hex::encode(&client[..24]),
            "667470642d617574682d763320636c69656e740000000003"
        );
        assert_eq!(
            sign(b"correct horse", &client).to_string(),
            "21ba20a8367bd3927ad48a2213179db2a872cbdcf547967b39acef75d6b04af7"
        );
        let server = transcript(Role::Server, 3, &binding, &s, &c, "alice");
        assert_eq!(
            sign(b"correct horse", &server).to_string(),
            "305846c17e6ae85659fe716c4eff091a3b93eb0163a683e566abdb4501e7f178"
        );
    }

    #[test]
    fn rfc4231_case_2() {
        // HMAC-SHA256 test vector: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?").to_string(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }
}
