//! Fuzzes `protocol::FrameCodec` as a `tokio_util` decoder fed a byte stream in arbitrary pieces.
//!
//! Input layout:
//! - byte 0: how the stream is cut. 0 = one piece; n > 0 = pieces of 1..=n bytes, the sizes
//!   drawn from a small PRNG seeded with n (so libFuzzer controls the cuts).
//! - byte 1: the codec's limits. < 0x80 = the protocol's defaults (64 KiB header, 8 MiB body);
//!   otherwise a small max_header (16..=512) and max_body (0, 1, 7 or 64), to reach the caps.
//! - the rest: the byte stream.
//!
//! Checked, besides "never panics":
//! - the stream is decoded the way `FramedRead` drives a decoder: `decode` until `Ok(None)` after
//!   every piece, then `decode_eof` until `Ok(None)`; an `Err` ends the stream;
//! - the outcome (every frame or rejection, then the closing error if any) is the same whatever
//!   the cuts: decoding the whole stream in one piece gives the same sequence;
//! - a chunk frame's body is exactly its header's `len` bytes, and within `max_body`; any other
//!   frame has an empty body; a rejection never names the `chunk` type;
//! - every decoded frame re-encodes (`Encoder<Frame>`) and decodes back, alone, to an equal frame
//!   with nothing left over.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{Frame, FrameCodec, Incoming, Message};
use tokio_util::codec::{Decoder, Encoder};

/// What one run over a stream produced: the items in order, then the error that ended it.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Incoming>,
    error: Option<String>,
}

fn codec(mode: u8) -> FrameCodec {
    if mode < 0x80 {
        FrameCodec::new()
    } else {
        let max_header = 16 * (1 + (mode & 0x1f) as usize);
        let max_body = [0, 1, 7, 64][((mode >> 5) & 3) as usize];
        FrameCodec::with_limits(max_header, max_body)
    }
}

/// Piece sizes for `len` bytes, from the seed byte.
fn cuts(seed: u8, len: usize) -> Vec<usize> {
    if seed == 0 {
        return vec![len];
    }
    let mut state: u32 = 0x9e37_79b9 ^ u32::from(seed);
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % seed as usize).min(left);
        out.push(n);
        left -= n;
    }
    out
}

fn run(mode: u8, stream: &[u8], pieces: &[usize]) -> Outcome {
    let mut codec = codec(mode);
    let max_body = codec.max_body();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let check = |item: Incoming, items: &mut Vec<Incoming>| {
        match &item {
            Ok(frame) => match &frame.message {
                Message::Chunk(h) => {
                    assert_eq!(h.len as usize, frame.body.len(), "chunk body length");
                    assert!(frame.body.len() <= max_body, "chunk body over max_body");
                }
                _ => assert!(frame.body.is_empty(), "non-chunk frame with a body"),
            },
            Err(rejected) => assert_ne!(rejected.kind, "chunk", "a chunk header was rejected"),
        }
        items.push(item);
    };
    let mut pos = 0;
    for &n in pieces {
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => check(item, &mut items),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        items,
                        error: Some(e.to_string()),
                    }
                }
            }
        }
    }
    assert_eq!(pos, stream.len());
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => check(item, &mut items),
            Ok(None) => {
                assert!(buf.is_empty(), "decode_eof ended cleanly with bytes left");
                return Outcome { items, error: None };
            }
            Err(e) => {
                return Outcome {
                    items,
                    error: Some(e.to_string()),
                }
            }
        }
    }
}

fn round_trip(frame: &Frame) {
    let mut wire = BytesMut::new();
    FrameCodec::new()
        .encode(frame.clone(), &mut wire)
        .unwrap_or_else(|e| panic!("decoded frame does not re-encode: {e}: {frame:?}"));
    let mut decoder = FrameCodec::new();
    match decoder.decode_eof(&mut wire) {
        Ok(Some(Ok(back))) => assert_eq!(&back, frame, "re-encoded frame decodes differently"),
        other => panic!("re-encoded frame does not decode: {other:?}: {frame:?}"),
    }
    assert!(wire.is_empty(), "re-encoded frame left bytes over");
}

fuzz_target!(|data: &[u8]| {
    let [seed, mode, stream @ ..] = data else {
        return;
    };
    let pieces = cuts(*seed, stream.len());
    let cut = run(*mode, stream, &pieces);
    for frame in cut.items.iter().flatten() {
        round_trip(frame);
    }
    if *seed != 0 {
        let whole = run(*mode, stream, &[stream.len()]);
        assert_eq!(cut, whole, "outcome depends on how the stream was cut");
    }
});
