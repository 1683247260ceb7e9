//! Sequential writes of bulk data that bypass the page cache (`O_DIRECT`) where the filesystem
//! allows it, and fall back to ordinary writes where it does not.
//!
//! A transfer writes each byte once and nobody reads it back soon. Through the page cache, every
//! byte is copied into freshly allocated cache pages (on a virtual machine that hands free memory
//! back to its host, each fresh page also costs the host a fault): about 2.5 s of CPU per GiB on
//! the machines we measure on, more than hashing the file. Direct writes go from our buffer to
//! the disk and evict nothing another reader needs. `O_DIRECT` wants the buffer, the file offset
//! and the length aligned to the device's block size, so the bytes are gathered in an aligned
//! buffer and written in whole blocks; the partial block at the end is written through the page
//! cache. Whatever cannot be written directly (tmpfs on older kernels, some network and FUSE
//! filesystems, a block size over [`ALIGN`]) is written the ordinary way, with the same result.
//!
//! `O_DIRECT` is used on Linux and Android only (one kernel, one flag); on every other target the
//! same API writes through the page cache, so a program built for macOS or Windows works the
//! same, only without the bypass.

use std::fs::File;
use std::io;
#[cfg(unix)]
use std::os::unix::fs::FileExt;

#[cfg(not(unix))]
use positioned::FileExt;

/// Alignment of direct writes: the largest logical block size of common devices.
pub const ALIGN: usize = 4096;

/// Most bytes gathered before a direct write: large enough for the disk to stream, small
/// enough that many uploads at once cost little memory.
const BUFFER: usize = 256 << 10;

/// Below this many bytes expected, a file is written through the page cache: a direct write
/// waits for the device, and for a small file that wait is all its cost (a tree of 64 KiB
/// files went at the disk's latency, one file at a time), while the cache copy of so few
/// bytes costs next to nothing. A batch of small files is then made durable together.
pub const DIRECT_MIN: u64 = 1 << 20;

/// Appends to a file from a given offset on. Bytes are held until a whole buffer is full; call
/// [`DirectWriter::flush`] before relying on the file's contents (dropping the writer discards
/// what it holds, so that an owner who lost the right to write never writes).
pub struct DirectWriter {
    /// The file written to; owned, so that nothing else moves its offset or its flags.
    file: File,
    /// An allocation of `cap + ALIGN` bytes; the aligned `cap` bytes inside it start at
    /// `start`.
    mem: Vec<u8>,
    /// Where the aligned buffer starts in `mem`: a `Vec<u8>` promises no alignment of its own.
    start: usize,
    /// The buffer's size: a multiple of [`ALIGN`], at most [`BUFFER`].
    cap: usize,
    /// Bytes held, from the buffer's start.
    held: usize,
    /// File offset of the buffer's first byte: a multiple of [`ALIGN`] while writing directly.
    base: u64,
    /// Whether `O_DIRECT` is on: only then must writes be whole aligned blocks.
    direct: bool,
}

impl DirectWriter {
    /// A writer that continues `file` at `offset` (normally its length), for about `expected`
    /// more bytes: a small file gets a small buffer, and under [`DIRECT_MIN`] no direct writes
    /// at all. Bytes of a partial block before `offset`
    /// are read back so that writes stay aligned.
    pub fn new(file: File, offset: u64, expected: u64) -> io::Result<Self> {
        let head = (offset % ALIGN as u64) as usize;
        let want = (head as u64).saturating_add(expected).min(BUFFER as u64) as usize;
        let cap = want.div_ceil(ALIGN).max(1) * ALIGN;
        let mem = vec![0u8; cap + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        let mut w = DirectWriter {
            file,
            mem,
            start,
            cap,
            held: head,
            base: offset - head as u64,
            direct: false,
        };
        if head > 0 {
            let base = w.base;
            let (file, buf) = (&w.file, &mut w.mem[start..start + head]);
            file.read_exact_at(buf, base)?;
        }
        w.direct = expected >= DIRECT_MIN && odirect::set(&w.file, true).is_ok();
        Ok(w)
    }

    /// Appends `data`.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.cap == 0 && !data.is_empty() {
            return Err(io::Error::other(
                "write after the writer's buffer was released",
            ));
        }
        while !data.is_empty() {
            let n = (self.cap - self.held).min(data.len());
            let at = self.start + self.held;
            self.mem[at..at + n].copy_from_slice(&data[..n]);
            self.held += n;
            data = &data[n..];
            if self.held == self.cap {
                self.write_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes everything held, the last partial block included; the file then has every byte
    /// given. Later writes, if any, go through the page cache.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_blocks()?;
        if self.held > 0 {
            self.go_buffered();
            let at = self.start;
            self.file
                .write_all_at(&self.mem[at..at + self.held], self.base)?;
            self.base += self.held as u64;
            self.held = 0;
        }
        Ok(())
    }

    /// Gives the buffer back once everything is flushed, for a writer kept only for its file
    /// (an upload waiting for its group commit). Writing afterwards is an error.
    pub fn release(&mut self) -> io::Result<()> {
        self.flush()?;
        (self.mem, self.cap, self.start) = (Vec::new(), 0, 0);
        Ok(())
    }

    /// The file, for syncing and metadata; what is held is not in it until [`Self::flush`].
    pub fn get_ref(&self) -> &File {
        &self.file
    }

    /// The file back; what is held is discarded, so [`Self::flush`] first.
    pub fn into_inner(self) -> File {
        self.file
    }

    /// Whether writes currently bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes the whole blocks held and keeps the rest (less than a block) at the front.
    fn write_blocks(&mut self) -> io::Result<()> {
        let whole = if self.direct {
            self.held / ALIGN * ALIGN
        } else {
            self.held
        };
        if whole == 0 {
            return Ok(());
        }
        let at = self.start;
        match self.file.write_all_at(&self.mem[at..at + whole], self.base) {
            // The device wants a larger alignment than ours: write this the ordinary way.
            Err(e) if self.direct && odirect::is_misaligned(&e) => {
                self.go_buffered();
                self.file
                    .write_all_at(&self.mem[at..at + whole], self.base)?;
            }
            other => other?,
        }
        self.base += whole as u64;
        self.mem.copy_within(at + whole..at + self.held, at);
        self.held -= whole;
        Ok(())
    }

    fn go_buffered(&mut self) {
        if self.direct {
            // Clearing the flag cannot fail where setting it worked; if it did, the next write
            // would report the error.
            let _ = odirect::set(&self.file, false);
            self.direct = false;
        }
    }
}

/// `O_DIRECT` switched with rustix's safe fcntl.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod odirect {
    use std::fs::File;
    use std::io;

    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

    /// Turns `O_DIRECT` on or off for an open file.
    pub(crate) fn set(file: &File, on: bool) -> io::Result<()> {
        let flags = fcntl_getfl(file)?;
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        Ok(fcntl_setfl(file, flags)?)
    }

    /// Whether a direct write failed on alignment (`EINVAL`), so that the same bytes written
    /// through the page cache would succeed.
    pub(crate) fn is_misaligned(e: &io::Error) -> bool {
        e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
    }
}

/// Elsewhere direct writes are never turned on, so every write takes the ordinary path.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod odirect {
    use std::fs::File;
    use std::io;

    pub(crate) fn set(_file: &File, _on: bool) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn is_misaligned(_e: &io::Error) -> bool {
        false
    }
}

/// Positioned reads and writes without Unix's `pread`/`pwrite`: a seek, then the read or write.
/// That is the same here because the writer owns the file and seeks before every access.
#[cfg(not(unix))]
mod positioned {
    use std::fs::File;
    use std::io::{self, Read, Seek, SeekFrom, Write};

    /// The two methods of `std::os::unix::fs::FileExt` the writer uses, by the same names.
    pub(crate) trait FileExt {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    }

    impl FileExt for File {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let mut file = self;
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(buf)
        }

        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut file = self;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Whatever the offsets, piece sizes and buffer size, the file ends up with exactly the
    /// bytes given.
    #[test]
    fn writes_every_byte_at_any_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let all = data(3 * BUFFER + 12_345);
        for (start, piece) in [(0, 1 << 20), (0, 1000), (5, 4096), (4096 * 3 + 17, 333_333)] {
            // A buffer for the rest of the file (capped), and one far smaller than it.
            for expected in [(all.len() - start) as u64, 5000] {
                let path = dir.path().join(format!("f{start}-{piece}-{expected}"));
                std::fs::write(&path, &all[..start]).unwrap();
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let mut w = DirectWriter::new(file, start as u64, expected).unwrap();
                for part in all[start..].chunks(piece) {
                    w.write_all(part).unwrap();
                }
                w.flush().unwrap();
                let got = std::fs::read(&path).unwrap();
                assert!(
                    got == all,
                    "start {start}, piece {piece}, expected {expected}"
                );
            }
        }
    }

    /// Dropped without a flush, a writer leaves the file with whole buffers only: an owner that
    /// lost the right to write writes nothing more.
    #[test]
    fn dropping_discards_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut w = DirectWriter::new(file, 0, u64::MAX).unwrap();
        w.write_all(&data(BUFFER + 10)).unwrap();
        drop(w);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), BUFFER as u64);
    }
}
