//! The engine against itself: random sizes, chunk lengths, resume points and damage. A good
//! stream is always accepted whole; a damaged chunk is never absorbed.

use super::*;
use crate::Message;
use proptest::prelude::*;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn hasher_at(kind: DigestKind, file: &[u8], offset: usize) -> Hasher {
    let mut h = Hasher::new(kind);
    h.update(&file[..offset]);
    h
}

/// Every chunk a sender makes of `file` from `offset`, and its eof.
fn stream(kind: DigestKind, file: &[u8], offset: usize, chunk: u32) -> (Vec<Frame>, Eof) {
    let mut tx = ChunkSender::new(
        offset as u64,
        file.len() as u64,
        chunk,
        hasher_at(kind, file, offset),
    );
    let mut frames = Vec::new();
    while let Some(n) = tx.next_len() {
        let at = tx.position() as usize;
        frames.push(tx.seal(Bytes::copy_from_slice(&file[at..at + n])));
    }
    (frames, tx.finish())
}

fn header(f: &Frame) -> ChunkHeader {
    match f.message {
        Message::Chunk(h) => h,
        _ => panic!("not a chunk"),
    }
}

fn kinds() -> impl Strategy<Value = DigestKind> {
    prop_oneof![Just(DigestKind::Md5), Just(DigestKind::Blake3)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any size, chunk length and resume point: every chunk passes, and eof gives the whole
    /// file's digest.
    #[test]
    fn a_good_stream_is_always_accepted(
        kind in kinds(),
        len in 0usize..20_000,
        chunk in 1u32..5_000,
        at in 0.0f64..=1.0,
        seed in any::<u8>(),
    ) {
        let file = data(len, seed);
        let offset = (len as f64 * at) as usize;
        let (frames, eof) = stream(kind, &file, offset, chunk);
        let mut rx = ChunkReceiver::new(offset as u64, len as u64, chunk, hasher_at(kind, &file, offset));
        let mut got = file[..offset].to_vec();
        for f in &frames {
            rx.accept(&header(f), &f.body).unwrap();
            got.extend_from_slice(&f.body);
        }
        prop_assert_eq!(rx.finish(&eof).unwrap(), Digest::of(kind, &file));
        prop_assert_eq!(got, file);
    }

    /// One byte flipped anywhere in any chunk: that chunk is refused with its offset, the state
    /// stays, and the undamaged chunk sent again passes.
    #[test]
    fn a_corrupted_chunk_is_never_accepted(
        kind in kinds(),
        len in 1usize..20_000,
        chunk in 1u32..5_000,
        at in 0.0f64..1.0,
        which in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let file = data(len, 7);
        let offset = ((len as f64 * at) as usize).min(len - 1);
        let (frames, eof) = stream(kind, &file, offset, chunk);
        let bad = which.index(frames.len());
        let mut rx = ChunkReceiver::new(offset as u64, len as u64, chunk, hasher_at(kind, &file, offset));
        for (i, f) in frames.iter().enumerate() {
            if i == bad {
                let mut body = f.body.to_vec();
                let i = byte.index(body.len());
                body[i] ^= flip;
                let before = rx.checkpoint();
                let h = header(f);
                prop_assert_eq!(
                    rx.accept(&h, &body),
                    Err(ChunkError::BadDigest { offset: h.offset, kind })
                );
                prop_assert_eq!(rx.checkpoint().0, before.0);
                prop_assert_eq!(rx.digest_so_far(), before.1.digest());
            }
            rx.accept(&header(f), &f.body).unwrap();
        }
        prop_assert!(rx.finish(&eof).is_ok());
    }

    /// Whatever a hostile sender makes of a good stream (chunks dropped, repeated, reordered,
    /// offsets or lengths or digests changed, bodies cut), what the receiver accepts is always
    /// a prefix of the true file, and eof passes only when it is all of it.
    #[test]
    fn whatever_is_accepted_is_the_file(
        kind in kinds(),
        len in 0usize..6_000,
        chunk in 1u32..2_000,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..6, any::<u32>()), 0..12),
        bad_eof in any::<Option<u64>>(),
    ) {
        let file = data(len, 3);
        let (mut frames, mut eof) = stream(kind, &file, 0, chunk);
        for (i, op, n) in edits {
            if frames.is_empty() { break; }
            let i = i.index(frames.len());
            let mut h = header(&frames[i]);
            match op {
                0 => { frames.remove(i); }
                1 => { let f = frames[i].clone(); frames.insert(i, f); }
                2 => { let f = frames.remove(i); let j = n as usize % (frames.len() + 1); frames.insert(j, f); }
                3 => { h.offset = h.offset.wrapping_add(u64::from(n % 7) + 1); frames[i].message = Message::Chunk(h); }
                4 => { h.len = h.len.wrapping_add(n % 3 + 1); frames[i].message = Message::Chunk(h); }
                _ => { let keep = n as usize % (frames[i].body.len() + 1); frames[i].body.truncate(keep); }
            }
        }
        if let Some(size) = bad_eof { eof.size = size % (len as u64 + 2); }
        let mut rx = ChunkReceiver::new(0, len as u64, chunk, Hasher::new(kind));
        let mut got = Vec::new();
        for f in &frames {
            if rx.accept(&header(f), &f.body).is_ok() {
                got.extend_from_slice(&f.body);
            }
        }
        prop_assert_eq!(&got[..], &file[..got.len()]);
        prop_assert_eq!(rx.position(), got.len() as u64);
        if rx.finish(&eof).is_ok() {
            prop_assert_eq!(got, file);
        }
    }

    /// A receiver's state saved at any chunk boundary, stored as bytes and restored in a new
    /// receiver, goes on to accept the rest of the stream and the whole file's digest: what an
    /// upload to a store that cannot read its parts back needs for a resume.
    #[test]
    fn a_receiver_saved_at_a_boundary_resumes_from_bytes(
        len in 0usize..20_000,
        chunk in 1u32..5_000,
        at in any::<prop::sample::Index>(),
    ) {
        let kind = DigestKind::Md5;
        let file = data(len, 5);
        let (frames, eof) = stream(kind, &file, 0, chunk);
        let cut = at.index(frames.len() + 1);
        let mut rx = ChunkReceiver::new(0, len as u64, chunk, Hasher::new(kind));
        for f in &frames[..cut] {
            rx.accept(&header(f), &f.body).unwrap();
        }
        let (offset, hasher) = rx.checkpoint();
        let stored = hasher.save().expect("MD5 states can be saved").as_bytes().to_vec();
        drop(rx);
        let restored = Hasher::restore(&crate::SavedState::from_bytes(kind, stored)).unwrap();
        let mut rx = ChunkReceiver::new(offset, len as u64, chunk, restored);
        for f in &frames[cut..] {
            rx.accept(&header(f), &f.body).unwrap();
        }
        prop_assert_eq!(rx.finish(&eof).unwrap(), Digest::md5(&file));
    }

    /// A sender replaying recorded digests puts the same frames on the wire as one hashing.
    #[test]
    fn replayed_digests_are_the_hashed_ones(
        kind in kinds(),
        len in 0usize..20_000,
        chunk in 1u32..5_000,
        at in 0usize..10,
    ) {
        let file = data(len, 9);
        let (all, eof) = stream(kind, &file, 0, chunk);
        let running: Vec<Digest> = all.iter().map(|f| header(f).digest).collect();
        let offset = (at * chunk as usize).min(len / chunk as usize * chunk as usize);
        let (hashed, _) = stream(kind, &file, offset, chunk);
        let mut tx = ChunkSender::replaying(offset as u64, len as u64, chunk, running, eof.digest, chunk).unwrap();
        prop_assert_eq!(tx.digest_so_far(), Digest::of(kind, &file[..offset]));
        let mut replayed = Vec::new();
        while let Some(n) = tx.next_len() {
            let p = tx.position() as usize;
            replayed.push(tx.seal(Bytes::copy_from_slice(&file[p..p + n])));
        }
        prop_assert_eq!(replayed, hashed);
        prop_assert_eq!(tx.finish(), eof);
    }
}

#[test]
fn eof_checks_size_completeness_and_whole_digest() {
    let file = b"hello world";
    let kind = DigestKind::Md5;
    let (frames, eof) = stream(kind, file, 0, 4);
    let fresh = || ChunkReceiver::new(0, 11, 4, Hasher::new(kind));
    let mut rx = fresh();
    for f in &frames[..2] {
        rx.accept(&header(f), &f.body).unwrap();
    }
    assert_eq!(
        rx.clone().finish(&eof),
        Err(ChunkError::Short {
            received: 8,
            size: 11
        })
    );
    rx.accept(&header(&frames[2]), &frames[2].body).unwrap();
    let wrong_size = Eof { size: 12, ..eof };
    assert_eq!(
        rx.clone().finish(&wrong_size),
        Err(ChunkError::EofSize {
            declared: 12,
            size: 11
        })
    );
    let wrong_digest = Eof {
        digest: Digest::md5(b"other"),
        ..eof
    };
    assert!(matches!(
        rx.clone().finish(&wrong_digest),
        Err(ChunkError::WholeDigest { .. })
    ));
    assert_eq!(rx.finish(&eof), Ok(Digest::md5(file)));
}

#[test]
fn sequence_refuses_before_the_body_is_looked_at() {
    let mut seq = Sequence::new(0, 10, 4);
    let h = |offset, len| ChunkHeader {
        offset,
        len,
        digest: Digest::default(),
    };
    assert_eq!(
        seq.advance(&h(1, 4)),
        Err(ChunkError::OutOfOrder {
            offset: 1,
            expected: 0
        })
    );
    assert_eq!(
        seq.advance(&h(0, 5)),
        Err(ChunkError::TooLong {
            offset: 0,
            len: 5,
            max: 4
        })
    );
    seq.advance(&h(0, 4)).unwrap();
    seq.advance(&h(4, 4)).unwrap();
    assert_eq!(
        seq.advance(&h(8, 3)),
        Err(ChunkError::PastEnd {
            offset: 8,
            len: 3,
            size: 10
        })
    );
    // A length near u32::MAX at an offset near the end cannot wrap the arithmetic.
    let mut seq = Sequence::new(u64::MAX - 1, u64::MAX, u32::MAX);
    assert!(seq.advance(&h(u64::MAX - 1, u32::MAX)).is_err());
    assert_eq!(seq.position(), u64::MAX - 1);
}

#[test]
fn a_record_that_cannot_serve_is_refused() {
    let d = Digest::default();
    assert!(ChunkSender::replaying(0, 10, 4, vec![d; 3], d, 4).is_some());
    assert!(
        ChunkSender::replaying(2, 10, 4, vec![d; 3], d, 4).is_none(),
        "off a boundary"
    );
    assert!(
        ChunkSender::replaying(0, 10, 4, vec![d; 2], d, 4).is_none(),
        "short record"
    );
    assert!(
        ChunkSender::replaying(0, 10, 8, vec![d; 2], d, 4).is_none(),
        "chunks too long"
    );
    assert!(
        ChunkSender::replaying(0, 10, 0, vec![], d, 4).is_none(),
        "no chunk length"
    );
}

/// The examples in docs/PROTOCOL.md are real: 3,000,000 bytes of `a` (0x61) sent in 1 MiB
/// chunks with MD5 carry exactly these running digests, and the last is the `eof`'s.
#[test]
fn the_documented_example_digests_are_real() {
    let data = vec![b'a'; 3_000_000];
    let mut sender = ChunkSender::new(0, data.len() as u64, 1 << 20, Hasher::new(DigestKind::Md5));
    let mut seen = Vec::new();
    while let Some(n) = sender.next_len() {
        let at = sender.position() as usize;
        let frame = sender.seal(Bytes::copy_from_slice(&data[at..at + n]));
        let Message::Chunk(h) = frame.message else {
            unreachable!("seal makes chunks")
        };
        seen.push((h.offset, h.len, h.digest.to_string()));
    }
    let want = [
        (0, 1_048_576, "7202826a7791073fe2787f0c94603278"),
        (1_048_576, 1_048_576, "de89461b64701958984c95d1bfb0065a"),
        (2_097_152, 902_848, "99ddc9a3a46ea62c95652bdf937a1fb8"),
    ];
    let want: Vec<_> = want.iter().map(|&(o, l, d)| (o, l, d.to_owned())).collect();
    assert_eq!(seen, want);
    let eof = sender.finish();
    assert_eq!(eof.size, 3_000_000);
    assert_eq!(eof.digest.to_string(), "99ddc9a3a46ea62c95652bdf937a1fb8");
    assert_eq!(
        Digest::empty(DigestKind::Md5).to_string(),
        "d41d8cd98f00b204e9800998ecf8427e",
        "the put_ready digest of an upload from offset 0"
    );
}
