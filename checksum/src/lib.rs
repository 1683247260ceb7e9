//! Transfer digests as they appear on the wire: MD5 by default (16 bytes), or BLAKE3 (32 bytes)
//! when both peers agree to it in `hello`; always lowercase hex on the wire.
//!
//! A crate of its own, with no async runtime, so that code which only hashes files (the storage
//! root, tools) does not pull in the codec's tokio stack to do it.

use std::fmt;

use md5::digest::common::hazmat::SerializableState;
use md5::{Digest as _, Md5};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which hash a session's transfers use for their chunk and whole-file digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestKind {
    /// The default, understood by every tool (`md5sum`).
    #[default]
    Md5,
    /// Several times faster to compute: for links faster than MD5 (about 600 MB/s a core).
    Blake3,
}

impl DigestKind {
    /// The name people know it by.
    pub fn name(self) -> &'static str {
        match self {
            DigestKind::Md5 => "MD5",
            DigestKind::Blake3 => "BLAKE3",
        }
    }

    /// Its name as a key in JSON output and logs.
    pub fn key(self) -> &'static str {
        match self {
            DigestKind::Md5 => "md5",
            DigestKind::Blake3 => "blake3",
        }
    }

    fn len(self) -> usize {
        match self {
            DigestKind::Md5 => 16,
            DigestKind::Blake3 => 32,
        }
    }
}

impl std::str::FromStr for DigestKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Ok(DigestKind::Md5),
            "blake3" => Ok(DigestKind::Blake3),
            _ => Err(format!("unknown digest {s:?} (md5 or blake3)")),
        }
    }
}

/// A digest of either kind. On the wire it is a JSON string of lowercase hex digits: 32 for
/// MD5, 64 for BLAKE3.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    kind: DigestKind,
    bytes: [u8; 32],
}

impl Default for Digest {
    /// All zeros, of MD5's length: a placeholder that matches no data.
    fn default() -> Self {
        Digest {
            kind: DigestKind::Md5,
            bytes: [0; 32],
        }
    }
}

impl Digest {
    /// The MD5 of `data` in one call.
    pub fn md5(data: &[u8]) -> Self {
        Self::of(DigestKind::Md5, data)
    }

    /// The digest of `data` in one call.
    pub fn of(kind: DigestKind, data: &[u8]) -> Self {
        let mut h = Hasher::new(kind);
        h.update(data);
        h.finish()
    }

    /// The digest of nothing at all: what an empty file hashes to.
    pub fn empty(kind: DigestKind) -> Self {
        Self::of(kind, &[])
    }

    pub fn kind(&self) -> DigestKind {
        self.kind
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.kind.len()]
    }

    fn from_slice(kind: DigestKind, b: &[u8]) -> Self {
        let mut bytes = [0; 32];
        bytes[..b.len()].copy_from_slice(b);
        Digest { kind, bytes }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}:{self})", self.kind.key())
    }
}

/// Decodes `s`, exactly `2 * out.len()` lowercase hex digits, into `out`: the one rule for
/// hex on the wire, digests and the login's nonces and macs alike. Uppercase is refused, so
/// that every value has one spelling and a peer that compares strings agrees with one that
/// compares bytes.
pub fn decode_lower_hex(s: &str, out: &mut [u8]) -> Result<(), hex::FromHexError> {
    if let Some((index, c)) = s
        .char_indices()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(hex::FromHexError::InvalidHexCharacter { c, index });
    }
    hex::decode_to_slice(s, out)
}

impl std::str::FromStr for Digest {
    type Err = hex::FromHexError;

    /// 32 lowercase hex digits are an MD5, 64 a BLAKE3.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kind = match s.len() {
            32 => DigestKind::Md5,
            64 => DigestKind::Blake3,
            _ => return Err(hex::FromHexError::InvalidStringLength),
        };
        let mut out = [0u8; 32];
        decode_lower_hex(s, &mut out[..kind.len()])?;
        Ok(Digest::from_slice(kind, &out[..kind.len()]))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(
                "a digest must be 32 (MD5) or 64 (BLAKE3) lowercase hex digits",
            )
        })
    }
}

#[derive(Clone)]
enum State {
    Md5(Md5),
    Blake3(Box<blake3::Hasher>),
}

/// A running digest over a whole file, fed chunk by chunk. A chunk's header carries the running
/// digest at the chunk's end, so one pass over the bytes checks every chunk and the whole file.
#[derive(Clone)]
pub struct Hasher(State);

impl Hasher {
    pub fn new(kind: DigestKind) -> Self {
        Hasher(match kind {
            DigestKind::Md5 => State::Md5(Md5::new()),
            DigestKind::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
        })
    }

    pub fn kind(&self) -> DigestKind {
        match self.0 {
            State::Md5(_) => DigestKind::Md5,
            State::Blake3(_) => DigestKind::Blake3,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            State::Md5(h) => h.update(data),
            State::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub fn finish(self) -> Digest {
        self.digest()
    }

    /// The digest of everything hashed so far; hashing can go on.
    pub fn digest(&self) -> Digest {
        match &self.0 {
            State::Md5(h) => Digest::from_slice(DigestKind::Md5, &h.clone().finalize()),
            State::Blake3(h) => Digest::from_slice(DigestKind::Blake3, h.finalize().as_bytes()),
        }
    }

    /// The sender's side of a chunk: hashes `data` and returns the digest its header carries,
    /// the digest of the file from byte 0 through the end of this chunk.
    pub fn seal(&mut self, data: &[u8]) -> Digest {
        self.update(data);
        self.digest()
    }

    /// The receiver's side of a chunk: whether `data` brings the running digest to `declared`.
    /// Only a chunk that passes is absorbed, so after a bad one the state is as it was.
    pub fn check(&mut self, data: &[u8], declared: Digest) -> bool {
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
        self.update_from_each(reader, limit, |_| true)
    }

    /// [`Hasher::update_from`], telling `on_block` how many bytes each read (at most 1 MiB, a
    /// few milliseconds of hashing) added; it stops
    /// early (returning what was hashed) as soon as `on_block` says false. One buffer serves
    /// the whole run, so callers that report progress or watch for a cancel need not hash in
    /// slices of their own, each with a fresh buffer to fault in.
    pub fn update_from_each(
        &mut self,
        reader: &mut impl std::io::Read,
        limit: u64,
        mut on_block: impl FnMut(u64) -> bool,
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
            if !on_block(n as u64) {
                break;
            }
        }
        Ok(done)
    }
}

/// A hasher's state at a chunk boundary, as bytes that can be stored and read back later: an
/// upload to a store that cannot read its parts back keeps one per part, so that a resume
/// continues the running digest without the bytes. Shown as `md5:HEX`.
#[derive(Clone, PartialEq, Eq)]
pub struct SavedState {
    /// The hash the state belongs to.
    kind: DigestKind,
    /// The hash crate's own serialization of its state.
    bytes: Vec<u8>,
}

/// A saved state that is not one this version can continue from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a saved {} state", .0.name())]
pub struct StateError(pub DigestKind);

impl SavedState {
    pub fn kind(&self) -> DigestKind {
        self.kind
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A state read back from storage.
    pub fn from_bytes(kind: DigestKind, bytes: Vec<u8>) -> Self {
        SavedState { kind, bytes }
    }
}

impl fmt::Debug for SavedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.key(), hex::encode(&self.bytes))
    }
}

impl Hasher {
    /// The state so far, to continue from later with [`Hasher::restore`]. `None` for BLAKE3:
    /// its crate exports no state; its `hazmat` subtree API could rebuild one, which the
    /// object-storage backend will need for BLAKE3 sessions.
    pub fn save(&self) -> Option<SavedState> {
        match &self.0 {
            State::Md5(h) => Some(SavedState {
                kind: DigestKind::Md5,
                bytes: h.serialize().to_vec(),
            }),
            State::Blake3(_) => None,
        }
    }

    /// A hasher that continues from a saved state exactly as the saved one would have.
    pub fn restore(saved: &SavedState) -> Result<Hasher, StateError> {
        let bad = || StateError(saved.kind);
        match saved.kind {
            DigestKind::Md5 => {
                let state = saved.bytes.as_slice().try_into().map_err(|_| bad())?;
                let h = Md5::deserialize(state).map_err(|_| bad())?;
                Ok(Hasher(State::Md5(h)))
            }
            DigestKind::Blake3 => Err(bad()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.kind().key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            Digest::empty(DigestKind::Md5).to_string(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            Digest::md5(b"abc").to_string(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = Digest::md5(b"hello");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Digest>(&format!("\"{}\"", "z".repeat(32))).is_err());
    }

    /// Hex on the wire is lowercase only: the same digest in capitals, or with one capital
    /// digit, is refused, for either kind.
    #[test]
    fn uppercase_hex_is_refused() {
        for d in [Digest::md5(b"abc"), Digest::of(DigestKind::Blake3, b"abc")] {
            let lower = d.to_string();
            assert_eq!(lower.parse::<Digest>().unwrap(), d);
            let upper = lower.to_ascii_uppercase();
            assert!(upper.parse::<Digest>().is_err(), "{upper}");
            let at = lower
                .find(|c: char| c.is_ascii_lowercase())
                .expect("a letter");
            let one = format!("{}{}", &lower[..at], lower[at..].to_ascii_uppercase());
            let one = format!("{}{}", &one[..=at], &lower[at + 1..]);
            assert!(serde_json::from_str::<Digest>(&format!("\"{one}\"")).is_err());
        }
        let mut out = [0u8; 2];
        assert!(decode_lower_hex("0aff", &mut out).is_ok());
        assert_eq!(out, [0x0a, 0xff]);
        assert!(decode_lower_hex("0aFf", &mut out).is_err());
        assert!(decode_lower_hex("0a+f", &mut out).is_err());
    }

    #[test]
    fn chunks_carry_the_running_md5_and_a_bad_one_is_not_absorbed() {
        let mut sender = Hasher::new(DigestKind::Md5);
        let first = sender.seal(b"hel");
        let second = sender.seal(b"lo");
        assert_eq!(first, Digest::md5(b"hel"));
        assert_eq!(second, Digest::md5(b"hello"));

        let mut receiver = Hasher::new(DigestKind::Md5);
        assert!(receiver.check(b"hel", first));
        assert!(!receiver.check(b"lO", second), "a damaged chunk fails");
        assert_eq!(receiver.digest(), first, "and leaves the state as it was");
        assert!(
            receiver.check(b"lo", second),
            "so the chunk sent again passes"
        );
        assert!(!receiver.check(b"", first), "a chunk cannot go back");
        assert_eq!(receiver.finish(), Digest::md5(b"hello"));
    }

    #[test]
    fn update_from_stops_at_the_limit_or_the_end() {
        let mut h = Hasher::new(DigestKind::Md5);
        assert_eq!(h.update_from(&mut &b"hello world"[..], 5).unwrap(), 5);
        assert_eq!(h.finish(), Digest::md5(b"hello"));
        let mut h = Hasher::new(DigestKind::Md5);
        assert_eq!(h.update_from(&mut &b"abc"[..], u64::MAX).unwrap(), 3);
        assert_eq!(h.finish(), Digest::md5(b"abc"));
    }

    #[test]
    fn update_from_each_reports_every_read_and_stops_when_told() {
        let data = vec![7u8; 3 << 20];
        let mut seen = 0;
        let mut h = Hasher::new(DigestKind::Md5);
        let n = h
            .update_from_each(&mut &data[..], u64::MAX, |n| {
                seen += n;
                seen < 1 << 20
            })
            .unwrap();
        assert_eq!((n, seen), (1 << 20, 1 << 20), "stopped after the first MiB");
        assert_eq!(h.finish(), Digest::md5(&data[..1 << 20]));
    }

    #[test]
    fn blake3_known_vector_and_hex() {
        let d = Digest::of(DigestKind::Blake3, b"");
        assert_eq!(
            d.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let json = serde_json::to_string(&d).unwrap();
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.kind(), DigestKind::Blake3);
        assert_ne!(Digest::md5(b""), d);
        let mut h = Hasher::new(DigestKind::Blake3);
        let first = h.seal(b"hel");
        assert!(Hasher::new(DigestKind::Blake3).check(b"hel", first));
        assert_eq!(h.seal(b"lo"), Digest::of(DigestKind::Blake3, b"hello"));
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Hasher::new(DigestKind::Md5);
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), Digest::md5(b"hello"));
    }

    /// A state saved at any point, restored, and fed the rest gives the digest of the whole;
    /// a damaged state is refused, not silently wrong.
    #[test]
    fn a_saved_md5_state_continues_where_it_stopped() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [0, 1, 63, 64, 65, 4096, 99_999, 100_000] {
            let mut h = Hasher::new(DigestKind::Md5);
            h.update(&data[..cut]);
            let saved = h.save().expect("MD5 states can be saved");
            let stored = saved.as_bytes().to_vec();
            let mut back = Hasher::restore(&SavedState::from_bytes(DigestKind::Md5, stored))
                .expect("restored");
            back.update(&data[cut..]);
            assert_eq!(back.finish(), Digest::md5(&data), "cut at {cut}");
        }
        let short = SavedState::from_bytes(DigestKind::Md5, vec![0; 3]);
        assert_eq!(
            Hasher::restore(&short).unwrap_err(),
            StateError(DigestKind::Md5)
        );
        assert!(Hasher::new(DigestKind::Blake3).save().is_none());
    }
}
