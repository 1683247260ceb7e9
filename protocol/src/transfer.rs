//! The transfer engine, without I/O: a sender that cuts a file into chunks carrying running
//! digests, and a receiver that checks every chunk and the whole file before anything of it
//! may be written.
//!
//! Both sides of both directions use these: the daemon's `get` and the client's `put` loop
//! over a [`ChunkSender`], the daemon's `put` and the client's `get` over a [`ChunkReceiver`].
//! The loops only move bytes between a file and a [`crate::Connection`]; every rule about what
//! a chunk must be lives here, once.

use bytes::Bytes;

use crate::{ChunkHeader, Digest, DigestKind, Eof, Frame, Hasher};

/// Why a chunk, or the end of a transfer, was refused. After any of these the receiver's state
/// is what it was before the refused frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk does not start where the last accepted one ended.
    #[error("chunk at offset {offset}, expected {expected}")]
    OutOfOrder { offset: u64, expected: u64 },
    /// The chunk would take the file past the size declared when the transfer started.
    #[error("chunk at offset {offset} of {len} bytes goes past the declared size of {size} bytes")]
    PastEnd { offset: u64, len: u32, size: u64 },
    /// The chunk is larger than the receiver said it accepts.
    #[error("chunk at offset {offset} is {len} bytes, more than the {max} agreed")]
    TooLong { offset: u64, len: u32, max: u32 },
    /// The header's length and the body's differ (a caller's bug: the codec never lets it).
    #[error("chunk at offset {offset} declares {declared} bytes but carries {actual}")]
    LengthMismatch {
        offset: u64,
        declared: u32,
        actual: usize,
    },
    /// The body does not bring the running digest to the one its header declares.
    #[error("chunk at offset {offset} failed its {} check", .kind.name())]
    BadDigest { offset: u64, kind: DigestKind },
    /// `eof` names another size than the one declared when the transfer started.
    #[error("the transfer ended at a size of {declared} bytes, {size} were declared")]
    EofSize { declared: u64, size: u64 },
    /// `eof` came before every byte did.
    #[error("the transfer ended after {received} of {size} bytes")]
    Short { received: u64, size: u64 },
    /// Every chunk passed, but the whole-file digest in `eof` is another.
    #[error("whole-file {} is {ours}, the sender's is {theirs}", .ours.kind().name())]
    WholeDigest { ours: Digest, theirs: Digest },
}

impl ChunkError {
    /// The file offset the refusal concerns, when it is about one chunk.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ChunkError::OutOfOrder { offset, .. }
            | ChunkError::PastEnd { offset, .. }
            | ChunkError::TooLong { offset, .. }
            | ChunkError::LengthMismatch { offset, .. }
            | ChunkError::BadDigest { offset, .. } => Some(*offset),
            ChunkError::EofSize { .. }
            | ChunkError::Short { .. }
            | ChunkError::WholeDigest { .. } => None,
        }
    }
}

/// Where the next chunk must start and how far the file may go: the part of a receiver's
/// checks that needs no body, so the task reading the network can refuse a chunk at once while
/// another thread checks digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// Offset the next chunk must start at.
    next: u64,
    /// Exact size of the whole file.
    size: u64,
    /// Largest chunk body accepted.
    max_chunk: u32,
}

impl Sequence {
    /// Chunks from `offset` on, of at most `max_chunk` bytes, for a file of `size` bytes.
    pub fn new(offset: u64, size: u64, max_chunk: u32) -> Self {
        Sequence {
            next: offset.min(size),
            size,
            max_chunk,
        }
    }

    /// Checks that `h` is the next chunk and fits, and moves past it.
    pub fn advance(&mut self, h: &ChunkHeader) -> Result<(), ChunkError> {
        self.check(h)?;
        self.next += u64::from(h.len);
        Ok(())
    }

    fn check(&self, h: &ChunkHeader) -> Result<(), ChunkError> {
        if h.offset != self.next {
            return Err(ChunkError::OutOfOrder {
                offset: h.offset,
                expected: self.next,
            });
        }
        if h.len > self.max_chunk {
            return Err(ChunkError::TooLong {
                offset: h.offset,
                len: h.len,
                max: self.max_chunk,
            });
        }
        // `next <= size` always holds, so this cannot underflow, whatever the wire says.
        if u64::from(h.len) > self.size - self.next {
            return Err(ChunkError::PastEnd {
                offset: h.offset,
                len: h.len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Offset of the next byte expected.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Size of the whole file.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The receiving side of one transfer: accepts a chunk only when it is the next one, fits,
/// and carries the running digest its bytes produce; at `eof`, checks size and whole digest.
#[derive(Debug, Clone)]
pub struct ChunkReceiver {
    /// Where the next chunk must start, and the file's size.
    seq: Sequence,
    /// The running digest of every byte accepted (and of the prefix held before them).
    hasher: Hasher,
}

impl ChunkReceiver {
    /// A receiver that continues at `offset`, `prefix` holding the running digest of the
    /// bytes before it (a fresh hasher for a transfer from the start).
    pub fn new(offset: u64, size: u64, max_chunk: u32, prefix: Hasher) -> Self {
        ChunkReceiver {
            seq: Sequence::new(offset, size, max_chunk),
            hasher: prefix,
        }
    }

    /// The body-free checks, for the task that reads the network (see [`Sequence`]).
    pub fn sequence(&self) -> Sequence {
        self.seq
    }

    /// Checks one chunk end to end; only a chunk that passes is absorbed, and its bytes may
    /// then be written. After a refusal the state is unchanged, so the same chunk sent again
    /// (undamaged) passes.
    pub fn accept(&mut self, h: &ChunkHeader, body: &[u8]) -> Result<(), ChunkError> {
        if body.len() != h.len as usize {
            return Err(ChunkError::LengthMismatch {
                offset: h.offset,
                declared: h.len,
                actual: body.len(),
            });
        }
        self.seq.check(h)?;
        if !self.hasher.check(body, h.digest) {
            return Err(ChunkError::BadDigest {
                offset: h.offset,
                kind: self.hasher.kind(),
            });
        }
        self.seq.next += u64::from(h.len);
        Ok(())
    }

    /// Offset of the next byte expected: every byte before it was verified.
    pub fn position(&self) -> u64 {
        self.seq.next
    }

    /// The running digest of everything verified so far.
    pub fn digest_so_far(&self) -> Digest {
        self.hasher.digest()
    }

    /// The state at the current chunk boundary: the offset, and the running hasher, from
    /// which [`ChunkReceiver::new`] continues later. [`Hasher::save`] turns the hasher into
    /// bytes to store (an upload to a store that cannot read its parts back keeps one per part).
    pub fn checkpoint(&self) -> (u64, Hasher) {
        (self.seq.next, self.hasher.clone())
    }

    /// The end of the stream: the file is whole and its digest is the sender's.
    pub fn finish(self, eof: &Eof) -> Result<Digest, ChunkError> {
        if eof.size != self.seq.size {
            return Err(ChunkError::EofSize {
                declared: eof.size,
                size: self.seq.size,
            });
        }
        if self.seq.next != self.seq.size {
            return Err(ChunkError::Short {
                received: self.seq.next,
                size: self.seq.size,
            });
        }
        let ours = self.hasher.finish();
        if ours != eof.digest {
            return Err(ChunkError::WholeDigest {
                ours,
                theirs: eof.digest,
            });
        }
        Ok(ours)
    }
}

/// Where a sender's running digests come from.
#[derive(Debug, Clone)]
enum Digests {
    /// Hashed here as the bytes are read.
    Hashing(Hasher),
    /// Recorded when the file was uploaded: sent as they are, so only the receiver hashes,
    /// and its check also proves the bytes unchanged since.
    Recorded {
        /// The running digest at the end of each recorded chunk.
        running: Vec<Digest>,
        /// The whole file's.
        whole: Digest,
    },
}

/// The sending side of one transfer: says how many bytes to read next, and frames them with
/// the running digest through their end.
#[derive(Debug, Clone)]
pub struct ChunkSender {
    /// Offset of the next byte to send.
    pos: u64,
    /// Size of the whole file.
    size: u64,
    /// Length of every chunk but the last.
    chunk: u32,
    digests: Digests,
}

impl ChunkSender {
    /// Sends from `offset` in chunks of `chunk` bytes (at least 1), hashing as it goes;
    /// `prefix` holds the running digest of the bytes before `offset`.
    pub fn new(offset: u64, size: u64, chunk: u32, prefix: Hasher) -> Self {
        ChunkSender {
            pos: offset.min(size),
            size,
            chunk: chunk.max(1),
            digests: Digests::Hashing(prefix),
        }
    }

    /// Sends from `offset` with digests recorded at upload, in the chunks they were recorded
    /// for. `None` when the record cannot serve: a chunk longer than `max_chunk`, an offset
    /// off the record's boundaries, or a record that does not cover `size`.
    pub fn replaying(
        offset: u64,
        size: u64,
        chunk: u32,
        running: Vec<Digest>,
        whole: Digest,
        max_chunk: u32,
    ) -> Option<Self> {
        let fits = chunk > 0
            && chunk <= max_chunk
            && offset <= size
            && offset.is_multiple_of(u64::from(chunk))
            && running.len() as u64 == size.div_ceil(u64::from(chunk));
        fits.then_some(ChunkSender {
            pos: offset,
            size,
            chunk,
            digests: Digests::Recorded { running, whole },
        })
    }

    /// The running digest of everything before the next chunk, as the receiver of a resumed
    /// transfer must hold it.
    pub fn digest_so_far(&self) -> Digest {
        match &self.digests {
            Digests::Hashing(h) => h.digest(),
            Digests::Recorded { running, whole } => {
                match (self.pos / u64::from(self.chunk)).checked_sub(1) {
                    Some(i) => running[i as usize],
                    None => Digest::empty(whole.kind()),
                }
            }
        }
    }

    /// How many bytes the next chunk takes; `None` once every byte was framed.
    pub fn next_len(&self) -> Option<usize> {
        (self.pos < self.size).then(|| (self.size - self.pos).min(u64::from(self.chunk)) as usize)
    }

    /// Offset of the next byte to send.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Frames the next chunk. `data` must be exactly [`Self::next_len`] bytes: the caller
    /// read that many, or failed the transfer.
    pub fn seal(&mut self, data: Bytes) -> Frame {
        assert_eq!(
            Some(data.len()),
            self.next_len(),
            "a chunk of the length asked for"
        );
        let digest = match &mut self.digests {
            Digests::Hashing(h) => h.seal(&data),
            Digests::Recorded { running, .. } => {
                running[(self.pos / u64::from(self.chunk)) as usize]
            }
        };
        let frame = Frame::chunk(self.pos, data, digest);
        self.pos += frame.body.len() as u64;
        frame
    }

    /// The `eof` that ends the stream, once every chunk was sealed.
    pub fn finish(self) -> Eof {
        assert!(self.next_len().is_none(), "every chunk sealed before eof");
        let digest = match self.digests {
            Digests::Hashing(h) => h.finish(),
            Digests::Recorded { whole, .. } => whole,
        };
        Eof {
            size: self.size,
            digest,
        }
    }
}

#[cfg(test)]
mod tests;
