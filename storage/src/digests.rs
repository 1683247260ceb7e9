//! Digests recorded at upload: every chunk's running digest and the whole file's, kept in the state
//! directory so that a download can send them as recorded instead of hashing the file again.
//! They also prove, end to end, that the bytes downloaded are the bytes that were uploaded: a
//! file changed or rotted on disk no longer matches them, and the client's check says so.
//!
//! A record is keyed by the file's path and trusted only while the file keeps the inode, size,
//! modification and change times it had when the record was made; anything else is treated as
//! no record. `scrub` reads files again against their records to find bytes rotted on disk.

use cap_std::fs::Dir;
use checksum::Digest;
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

use crate::VPath;

/// What an upload's chunks were, for a download to repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The file this describes, relative to the root.
    path: String,
    /// Every chunk but the last has this length.
    pub chunk: u32,
    /// Each chunk's running digest (of the file from byte 0 through the chunk's end), in order.
    /// Named apart from the per-chunk MD5s (`chunks`) that protocol version 1 recorded, so
    /// that records left by an older daemon fail to parse and count as no record.
    #[serde(rename = "running_digests")]
    pub chunks: Vec<Digest>,
    /// Digest of the whole file (its kind is the session's that uploaded it).
    pub digest: Digest,
    /// The file as it was when recorded; any change makes the record void. Last in the JSON,
    /// after the digests: a record rewritten in place and torn by a crash keeps an older tail,
    /// so its stamp is the older file's (or it does not parse), never the newer's beside the
    /// older digests.
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// The inode's change time, which no client can set: a file changed in place and given its
    /// old modification time back still voids its record. (Records made before it was kept
    /// read 0 here, and so describe no file.)
    #[serde(default)]
    ctime: i64,
    #[serde(default)]
    ctime_nsec: i64,
}

/// What a record must match of a file: inode, size, modification and change times (s, ns).
type Stamp = (u64, u64, i64, i64, i64, i64);

/// Metadata that gives a [`Stamp`]: std's, and cap-std's.
pub(crate) trait StampSource {
    fn stamp(&self) -> Stamp;
}

/// Both kinds of metadata spell these the same, through their own `MetadataExt`.
macro_rules! stamp_source {
    ($meta:ty, $ext:path) => {
        impl StampSource for $meta {
            fn stamp(&self) -> Stamp {
                use $ext as _;
                let m = self;
                (
                    m.ino(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            }
        }
    };
}

stamp_source!(std::fs::Metadata, std::os::unix::fs::MetadataExt);
stamp_source!(cap_std::fs::Metadata, cap_std::fs::MetadataExt);

impl Recorded {
    pub(crate) fn new(
        path: &VPath,
        meta: &impl StampSource,
        chunk: u32,
        chunks: Vec<Digest>,
        digest: Digest,
    ) -> Self {
        let (ino, size, mtime, mtime_nsec, ctime, ctime_nsec) = meta.stamp();
        Recorded {
            path: path.rel().to_owned(),
            ino,
            size,
            mtime,
            mtime_nsec,
            ctime,
            ctime_nsec,
            chunk,
            chunks,
            digest,
        }
    }

    fn describes(&self, path: &VPath, meta: &std::fs::Metadata) -> bool {
        self.describes_stamp(path, meta.stamp())
    }

    /// Like `describes`, from the file's [`Stamp`]. A record holds either every chunk's
    /// running digest, or (an upload resumed, or in chunks too short to keep) none: the whole
    /// file's digest alone.
    fn describes_stamp(&self, path: &VPath, stamp: Stamp) -> bool {
        let chunks_fit = match self.chunk {
            0 => self.chunks.is_empty(),
            chunk => self.chunks.len() as u64 == self.size.div_ceil(u64::from(chunk)),
        };
        let ours = (
            self.ino,
            self.size,
            self.mtime,
            self.mtime_nsec,
            self.ctime,
            self.ctime_nsec,
        );
        self.path == path.rel() && ours == stamp && chunks_fit
    }

    /// Whether the chunks' running digests are recorded (else only the whole file's).
    pub fn has_chunks(&self) -> bool {
        self.chunk > 0
    }
}

fn record_name(path: &VPath) -> String {
    format!("{}.json", hex::encode(Md5::digest(path.rel().as_bytes())))
}

/// Saves a record; failing to is harmless (downloads then hash as usual). Rewritten in place
/// and cut to its length afterwards: a rename in this directory of one record per file, or
/// truncating the old record to nothing (which frees its block: synchronous on a disk mounted
/// with `discard`), cost more than a small file's whole upload. A record torn by a crash (or
/// by two uploads of one path at once) does not parse or does not describe the file, which
/// counts as no record.
pub(crate) fn save(dir: &Dir, rec: &Recorded) {
    let _ = save_checked(dir, rec);
}

/// [`save`], saying whether the record was written (a scrub's `rerecord` must know).
pub(crate) fn save_checked(dir: &Dir, rec: &Recorded) -> std::io::Result<()> {
    let name = record_name(&VPath::from_rel(&rec.path));
    let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.write(true).create(true);
    let written = dir.open_with(&name, &opts).and_then(|file| {
        let file = file.into_std();
        std::os::unix::fs::FileExt::write_all_at(&file, &json, 0)?;
        file.set_len(json.len() as u64)
    });
    if written.is_err() {
        let _ = dir.remove_file(&name);
    }
    written
}

/// The record for `path`, if there is one and the file is still as it was recorded.
pub(crate) fn load(dir: &Dir, path: &VPath, meta: &std::fs::Metadata) -> Option<Recorded> {
    let json = dir.read(record_name(path)).ok()?;
    let rec: Recorded = serde_json::from_slice(&json).ok()?;
    rec.describes(path, meta).then_some(rec)
}

/// Like [`load`], for a file known by its cap-std metadata (a listing's stat).
pub(crate) fn load_stamped(
    dir: &Dir,
    path: &VPath,
    meta: &cap_std::fs::Metadata,
) -> Option<Recorded> {
    let json = dir.read(record_name(path)).ok()?;
    let rec: Recorded = serde_json::from_slice(&json).ok()?;
    rec.describes_stamp(path, meta.stamp()).then_some(rec)
}

/// Forgets the record of `path` (the file was removed or renamed).
pub(crate) fn forget(dir: &Dir, path: &VPath) {
    let _ = dir.remove_file(record_name(path));
}

/// Removes records whose file is gone or changed; returns how many.
pub(crate) fn sweep(digests: &Dir, root: &Dir) -> usize {
    let Ok(entries) = digests.entries() else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = match digests.read(&name) {
            Ok(json) => match serde_json::from_slice::<Recorded>(&json) {
                Ok(rec) => {
                    // A stat, not an open: opening a FIFO put in the file's place would wait
                    // for a writer, and hang the sweep (and startup) for good.
                    let path = VPath::from_rel(&rec.path);
                    let meta = root.metadata(path.rel());
                    !meta.is_ok_and(|m| m.is_file() && rec.describes_stamp(&path, m.stamp()))
                }
                Err(_) => true,
            },
            Err(_) => false,
        };
        if stale && digests.remove_file(&name).is_ok() {
            removed += 1;
        }
    }
    removed
}
