//! MD5 digests as they appear on the wire: 16 bytes, sent as 32 lowercase hex characters.

use std::fmt;

use md5::{Digest as _, Md5};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An MD5 digest. On the wire it is a JSON string of 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Md5Digest(pub [u8; 16]);

impl Md5Digest {
    /// The digest of `data` in one call.
    pub fn of(data: &[u8]) -> Self {
        Self(Md5::digest(data).into())
    }

    /// The digest of nothing at all: what an empty file hashes to.
    pub fn empty() -> Self {
        Self::of(&[])
    }
}

impl fmt::Display for Md5Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Md5Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5Digest({self})")
    }
}

impl std::str::FromStr for Md5Digest {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Self(out))
    }
}

impl Serialize for Md5Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Md5Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.len() != 32 {
            return Err(serde::de::Error::custom("md5 must be 32 hex digits"));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running MD5 over a whole file, fed chunk by chunk. A chunk's header carries the running
/// digest at the chunk's end, so one pass over the bytes checks every chunk and the whole file.
#[derive(Clone, Default)]
pub struct Md5Hasher(Md5);

impl Md5Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Md5Digest {
        Md5Digest(self.0.finalize().into())
    }

    /// The MD5 of everything hashed so far; hashing can go on.
    pub fn digest(&self) -> Md5Digest {
        self.clone().finish()
    }

    /// The sender's side of a chunk: hashes `data` and returns the digest its header carries,
    /// the MD5 of the file from byte 0 through the end of this chunk.
    pub fn seal(&mut self, data: &[u8]) -> Md5Digest {
        self.update(data);
        self.digest()
    }

    /// The receiver's side of a chunk: whether `data` brings the running MD5 to `declared`.
    /// Only a chunk that passes is absorbed, so after a bad one the state is as it was.
    pub fn check(&mut self, data: &[u8], declared: Md5Digest) -> bool {
        let mut next = self.clone();
        next.update(data);
        let ok = next.digest() == declared;
        if ok {
            *self = next;
        }
        ok
    }

    /// Hashes what `reader` yields, up to `limit` bytes or its end, whichever comes first;
    /// returns how many bytes that was.
    pub fn update_from(
        &mut self,
        reader: &mut impl std::io::Read,
        limit: u64,
    ) -> std::io::Result<u64> {
        let mut buf = vec![0u8; (1 << 20).min(limit) as usize];
        let mut done = 0;
        while done < limit {
            let want = (limit - done).min(buf.len() as u64) as usize;
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.update(&buf[..n]);
            done += n as u64;
        }
        Ok(done)
    }
}

impl fmt::Debug for Md5Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Md5Hasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            Md5Digest::empty().to_string(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            Md5Digest::of(b"abc").to_string(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = Md5Digest::of(b"hello");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Md5Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Md5Digest>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Md5Digest>(&format!("\"{}\"", "z".repeat(32))).is_err());
    }

    #[test]
    fn chunks_carry_the_running_md5_and_a_bad_one_is_not_absorbed() {
        let mut sender = Md5Hasher::new();
        let first = sender.seal(b"hel");
        let second = sender.seal(b"lo");
        assert_eq!(first, Md5Digest::of(b"hel"));
        assert_eq!(second, Md5Digest::of(b"hello"));

        let mut receiver = Md5Hasher::new();
        assert!(receiver.check(b"hel", first));
        assert!(!receiver.check(b"lO", second), "a damaged chunk fails");
        assert_eq!(receiver.digest(), first, "and leaves the state as it was");
        assert!(
            receiver.check(b"lo", second),
            "so the chunk sent again passes"
        );
        assert!(!receiver.check(b"", first), "a chunk cannot go back");
        assert_eq!(receiver.finish(), Md5Digest::of(b"hello"));
    }

    #[test]
    fn update_from_stops_at_the_limit_or_the_end() {
        let mut h = Md5Hasher::new();
        assert_eq!(h.update_from(&mut &b"hello world"[..], 5).unwrap(), 5);
        assert_eq!(h.finish(), Md5Digest::of(b"hello"));
        let mut h = Md5Hasher::new();
        assert_eq!(h.update_from(&mut &b"abc"[..], u64::MAX).unwrap(), 3);
        assert_eq!(h.finish(), Md5Digest::of(b"abc"));
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Md5Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), Md5Digest::of(b"hello"));
    }
}
