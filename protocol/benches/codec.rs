//! Micro-benchmarks of the wire format: chunk frames through the codec, control frames out of
//! it, and the per-chunk MD5. `cargo bench -p protocol --bench codec`; the whole-system suite is
//! `bench/run` (see bench/README.md).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protocol::{Digest, DigestKind, Eof, Frame, FrameCodec, Get, Message, Put, PutReady};
use tokio_util::codec::{Decoder, Encoder};

const CHUNK: usize = 1024 * 1024;

/// Incompressible-looking bytes without a random number generator: a simple LCG.
fn data(len: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let v: Vec<u8> = (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect();
    Bytes::from(v)
}

fn encode(frame: Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    FrameCodec::new()
        .encode(frame, &mut buf)
        .expect("frame encodes");
    buf
}

fn chunk_frames(c: &mut Criterion) {
    // The MD5 is computed once here: these measure framing alone.
    let body = data(CHUNK);
    let frame = Frame::chunk(7 * CHUNK as u64, body.clone(), Digest::md5(&body));
    let wire = encode(frame.clone()).freeze();

    let mut g = c.benchmark_group("chunk_1MiB");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("encode+decode", |b| {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::with_capacity(2 * CHUNK);
        b.iter(|| {
            codec
                .encode(black_box(frame.clone()), &mut buf)
                .expect("encodes");
            let got = codec
                .decode(&mut buf)
                .expect("decodes")
                .expect("whole frame");
            black_box(got.expect("known message"));
        })
    });
    g.bench_function("encode", |b| {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::with_capacity(2 * CHUNK);
        b.iter(|| {
            buf.clear();
            codec
                .encode(black_box(frame.clone()), &mut buf)
                .expect("encodes");
            black_box(buf.len());
        })
    });
    g.bench_function("decode", |b| {
        let mut codec = FrameCodec::new();
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| {
                let got = codec.decode(buf).expect("decodes").expect("whole frame");
                black_box(got.expect("known message"));
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn control_frames(c: &mut Criterion) {
    let digest = Digest::md5(b"benchmark");
    let messages = [
        (
            "put",
            Message::Put(Put {
                path: "some/dir/a-file-name.bin".into(),
                size: 4 << 30,
                overwrite: false,
                resume: false,
                upload_id: Some("u-0123456789abcdef".into()),
                mtime: Some(1_700_000_000),
                pipelined: false,
            }),
        ),
        (
            "put_ready",
            Message::PutReady(PutReady { offset: 0, digest }),
        ),
        (
            "get",
            Message::Get(Get {
                path: "some/dir/a-file-name.bin".into(),
                offset: 0,
                prefix_digest: None,
            }),
        ),
        (
            "eof",
            Message::Eof(Eof {
                size: 1 << 30,
                digest,
            }),
        ),
        ("ok", Message::Ok),
        (
            "chunk_header",
            Message::Chunk(protocol::ChunkHeader {
                offset: 1 << 30,
                len: 0,
                digest,
            }),
        ),
    ];
    let mut g = c.benchmark_group("decode_control");
    g.throughput(Throughput::Elements(1));
    for (name, message) in messages {
        let wire = encode(Frame::from(message)).freeze();
        g.bench_function(name, |b| {
            let mut codec = FrameCodec::new();
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let got = codec.decode(buf).expect("decodes").expect("whole frame");
                    black_box(got.expect("known message"));
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn digests(c: &mut Criterion) {
    let body = data(CHUNK);
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for kind in [DigestKind::Md5, DigestKind::Blake3] {
        g.bench_function(format!("{} of 1MiB", kind.key()), |b| {
            b.iter(|| black_box(Digest::of(kind, black_box(&body))))
        });
    }
    g.finish();
}

criterion_group!(benches, chunk_frames, control_frames, digests);
criterion_main!(benches);
