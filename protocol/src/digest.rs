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

/// A running MD5 over a whole file, fed chunk by chunk.
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

/// A whole-file MD5 computed on a thread of its own, fed the chunks a transfer moves. The thread
/// that checks each chunk's own MD5 and writes it then never waits for the second hash, so the
/// two hashes of every byte run on two cores where there are two.
pub struct BackgroundMd5 {
    /// Chunks to hash; dropping it tells the thread the file is complete.
    tx: Option<std::sync::mpsc::SyncSender<bytes::Bytes>>,
    /// The hashing thread; yields the digest.
    handle: Option<std::thread::JoinHandle<Md5Digest>>,
}

/// Chunks queued for the hashing thread before `update` waits for it.
const BACKGROUND_DEPTH: usize = 4;

impl BackgroundMd5 {
    /// Starts hashing, continuing from `start` (the MD5 state of bytes already accounted for).
    pub fn spawn(start: Md5Hasher) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(BACKGROUND_DEPTH);
        let handle = std::thread::Builder::new()
            .name("md5".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut h = start;
                for chunk in rx {
                    h.update(&chunk);
                }
                h.finish()
            })
            .expect("cannot start a hashing thread");
        BackgroundMd5 {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Hashes `data` next (a cheap clone of the chunk's bytes; nothing is copied).
    pub fn update(&mut self, data: bytes::Bytes) {
        if let Some(tx) = &self.tx {
            // The thread only stops when this value is dropped, so sending cannot fail.
            let _ = tx.send(data);
        }
    }

    /// The MD5 of everything, once the thread has hashed it all.
    pub fn finish(mut self) -> Md5Digest {
        drop(self.tx.take());
        self.handle
            .take()
            .expect("finish is called once")
            .join()
            .expect("the hashing thread does not panic")
    }
}

impl Drop for BackgroundMd5 {
    fn drop(&mut self) {
        // Closing the channel ends the thread; nobody needs its answer.
        drop(self.tx.take());
    }
}

impl fmt::Debug for BackgroundMd5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackgroundMd5")
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
    fn background_hash_continues_from_its_start() {
        let mut start = Md5Hasher::new();
        start.update(b"he");
        let mut bg = BackgroundMd5::spawn(start);
        bg.update(bytes::Bytes::from_static(b"ll"));
        bg.update(bytes::Bytes::from_static(b"o"));
        assert_eq!(bg.finish(), Md5Digest::of(b"hello"));
        drop(BackgroundMd5::spawn(Md5Hasher::new())); // dropped unfinished: no hang
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
