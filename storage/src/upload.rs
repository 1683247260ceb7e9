//! Staged uploads: verified bytes go to a private file and become visible whole, or not at all.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use checksum::{Digest, DigestKind, Hasher};
use fileio::DirectWriter;
use md5::{Digest as _, Md5};

use crate::digests::{self, Recorded};
use crate::{Error, Home, Result, Root, VPath};

/// What the client asked for when it started an upload.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// Exact size the finished file must have.
    pub size: u64,
    /// Replace an existing file.
    pub overwrite: bool,
    /// The client's stable name for this upload; required to resume it later.
    pub upload_id: Option<String>,
    /// Continue the staged bytes of an earlier attempt with the same `upload_id`.
    pub resume: bool,
    /// Modification time for the stored file, seconds since the Unix epoch.
    pub mtime: Option<i64>,
    /// The session's transfer digest, which the chunks carry.
    pub digest: DigestKind,
}

/// An upload in progress. Verified bytes are appended to a staging file; [`Upload::commit`]
/// syncs it and moves it into place. Dropping it without committing keeps the
/// staged bytes when the upload has an id (so it can be resumed) and removes them otherwise.
pub struct Upload {
    /// The home the upload lands in (and through it the root's private state).
    home: Home,
    /// Where the file goes, as the home sees it.
    target: VPath,
    /// File name inside the staging directory.
    staged: String,
    /// The staging file, written past the page cache where the filesystem allows.
    out: DirectWriter,
    /// Bytes staged so far.
    written: u64,
    size: u64,
    /// The running digest of the bytes an earlier attempt staged, read back on resume: where the
    /// transfer engine continues from.
    prefix: Hasher,
    /// Whether the staged bytes outlive this value (uploads with an id can be resumed).
    keep: bool,
    /// This attempt's claim on the staging file.
    lease: Arc<Lease>,
    /// Size of the file this upload will replace, for the quota's count.
    replaced: u64,
    /// Bytes of quota held for this upload until it ends.
    reserved: u64,
    /// Modification time to give the file when it is stored.
    mtime: Option<i64>,
    /// The chunks' running digests as verified, to record with the file; `None` once the chunks
    /// are not all of one length (but the last), or the upload resumed bytes hashed without them.
    chunks: Option<ChunkLog>,
    committed: bool,
}

static ANON: AtomicU64 = AtomicU64::new(0);

/// The chunks of an upload so far: their common length and running digests.
#[derive(Default)]
struct ChunkLog {
    /// Length of every chunk but possibly the last; 0 before the first.
    len: u32,
    digests: Vec<Digest>,
    /// A chunk shorter than `len` arrived: it must have been the last.
    ended: bool,
}

impl ChunkLog {
    /// Records a chunk; false when the chunks no longer follow one length.
    fn push(&mut self, len: u32, digest: Digest) -> bool {
        if self.ended || len == 0 {
            return false;
        }
        if self.len == 0 {
            self.len = len;
        } else if len > self.len {
            return false;
        } else if len < self.len {
            self.ended = true;
        }
        self.digests.push(digest);
        true
    }
}

/// One upload's claim on its staging file. A newer attempt at the same upload sets
/// `superseded` while holding the lock, so the older attempt never writes again after that.
#[derive(Default)]
pub(crate) struct Lease {
    superseded: Mutex<bool>,
}

fn valid_upload_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Upload {
    pub(crate) fn begin(home: Home, target: &VPath, req: &UploadRequest) -> Result<Upload> {
        let shown = target.to_string();
        let Some((parent, _)) = target.split_last() else {
            return Err(Error::IsDirectory(shown));
        };
        let root = home.root().clone();
        let dir = &*home.dir;
        match dir.metadata(target.rel()) {
            Ok(m) if m.is_dir() => return Err(Error::IsDirectory(shown)),
            Ok(_) if !req.overwrite => return Err(Error::Exists(shown)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&shown, "stat", e)),
        }
        match dir.metadata(parent.rel()) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::NotFound(parent.to_string())),
            Err(e) => return Err(Error::io(&parent.to_string(), "stat", e)),
        }
        let replaced = match dir.metadata(target.rel()) {
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        };
        let (staged, keep) = match &req.upload_id {
            Some(id) if valid_upload_id(id) => {
                // The key binds the id to the target, so one client's id never meets another path.
                let key = Md5::new()
                    .chain_update(home.in_root(target).rel())
                    .chain_update([0])
                    .chain_update(id);
                (format!("{}.part", hex::encode(key.finalize())), true)
            }
            Some(_) => {
                return Err(Error::BadPath {
                    path: shown,
                    reason: "upload_id must be 1 to 64 of [0-9A-Za-z_-]",
                })
            }
            None => (
                format!(
                    "anon-{}-{}.part",
                    std::process::id(),
                    ANON.fetch_add(1, Ordering::Relaxed)
                ),
                false,
            ),
        };
        // Replacing a file grows the root only by the difference.
        let reserved = req.size.saturating_sub(replaced);
        root.reserve(target, req.size, reserved)?;
        let lease = Arc::new(Lease::default());
        let older = root
            .inner
            .active
            .lock()
            .unwrap()
            .insert(staged.clone(), lease.clone());
        if let Some(older) = older {
            // Waits for a write in flight, then the older attempt stops for good.
            *older.superseded.lock().unwrap() = true;
        }
        let opened = open_staged(&root, &staged, req.resume)
            .map_err(|e| Error::io(&shown, "create staging file for", e))
            .and_then(|mut file| {
                let mut hasher = Hasher::new(req.digest);
                let held = if req.resume {
                    read_back(&mut file, req.size, &mut hasher)
                        .map_err(|e| Error::io(&shown, "read staged bytes of", e))?
                } else {
                    0
                };
                let out = DirectWriter::new(file, held, req.size.saturating_sub(held))
                    .map_err(|e| Error::io(&shown, "open staging file for", e))?;
                Ok((out, hasher, held))
            });
        let (out, prefix, held) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                release(&root, &staged, &lease);
                root.settle(reserved, None);
                return Err(e);
            }
        };
        Ok(Upload {
            out,
            lease,
            replaced,
            reserved,
            mtime: req.mtime,
            // Resumed bytes were hashed without their chunks: nothing to record.
            chunks: (held == 0).then(ChunkLog::default),
            home,
            target: target.clone(),
            staged,
            written: held,
            size: req.size,
            prefix,
            keep,
            committed: false,
        })
    }

    /// Bytes already staged; the client sends from here.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The running digest of the bytes already staged, for the transfer engine to continue.
    pub fn prefix(&self) -> Hasher {
        self.prefix.clone()
    }

    /// Appends one chunk the transfer engine verified, and remembers its running digest (of
    /// the file from byte 0 through the chunk's end) to record with the file. Refuses to grow
    /// past the declared size.
    pub fn write_chunk(&mut self, data: &[u8], digest: Digest) -> Result<()> {
        self.fits(data.len())?;
        self.append(data)?;
        if let Some(log) = &mut self.chunks {
            if !log.push(data.len() as u32, digest) {
                self.chunks = None;
            }
        }
        Ok(())
    }

    /// Refuses bytes past the declared size.
    fn fits(&self, len: usize) -> Result<()> {
        if self.written + len as u64 > self.size {
            return Err(Error::TooLarge {
                path: self.target.to_string(),
                what: format!("more bytes than the declared {}", self.size),
            });
        }
        Ok(())
    }

    /// Writes bytes (that fit) to the staging file.
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let lease = self.lease.clone();
        let superseded = lease.superseded.lock().unwrap();
        if *superseded {
            return Err(self.superseded());
        }
        if let Err(e) = self.out.write_all(data) {
            return Err(self.failed(Error::io(&self.target.to_string(), "write", e)));
        }
        drop(superseded);
        self.written += len;
        Ok(())
    }

    /// Makes the bytes durable and moves them into place, recording `digest` (the whole
    /// file's, as the transfer engine verified it) and the chunks' running digests. Without
    /// `overwrite`, a file that appeared at the target meanwhile is left alone.
    pub fn commit(mut self, digest: Digest, overwrite: bool) -> Result<()> {
        let shown = self.target.to_string();
        if self.written != self.size {
            return Err(Error::Incomplete {
                path: shown,
                written: self.written,
                size: self.size,
            });
        }
        let lease = self.lease.clone();
        let superseded = lease.superseded.lock().unwrap();
        if *superseded {
            return Err(self.superseded());
        }
        if let Err(e) = self.out.flush() {
            return Err(self.failed(Error::io(&shown, "write", e)));
        }
        let file = self.out.get_ref();
        if let Some(secs) = self.mtime {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
            let _ = file.set_modified(t);
        }
        if let Err(e) = file.sync_all() {
            return Err(self.failed(Error::io(&shown, "sync", e)));
        }
        let stored_meta = file.metadata().ok();
        let inner = &self.home.root().inner;
        let home = &*self.home.dir;
        let placed = if overwrite {
            inner.staging.rename(&self.staged, home, self.target.rel())
        } else {
            // A hard link fails if the target exists: an atomic "rename unless present".
            inner
                .staging
                .hard_link(&self.staged, home, self.target.rel())
                .and_then(|()| inner.staging.remove_file(&self.staged))
        };
        placed.map_err(|e| Error::io(&shown, "move into place", e))?;
        self.committed = true;
        drop(superseded);
        let key = self.home.in_root(&self.target);
        match (self.chunks.take(), stored_meta) {
            (Some(log), Some(meta)) => {
                let rec = Recorded::new(&key, &meta, log.len, log.digests, digest);
                digests::save(&inner.digests, &rec);
            }
            _ => digests::forget(&inner.digests, &key),
        }
        let (parent, _) = self
            .target
            .split_last()
            .expect("uploads never target the root");
        if let Ok(d) = home.open_dir(parent.rel()) {
            let _ = d.into_std_file().sync_all();
        }
        Ok(())
    }
}

impl Upload {
    /// Gives up on bytes the transfer engine found wrong (the whole-file digest differs):
    /// resuming on top of them would only repeat it, so they are removed, not kept.
    pub fn discard(mut self) {
        self.keep = false;
    }

    /// The newer attempt owns the staged bytes now (see `Drop`, which leaves them alone).
    fn superseded(&self) -> Error {
        Error::Busy {
            path: self.target.to_string(),
        }
    }

    /// A full disk gives its space back: the staged bytes are removed, not kept for resume.
    fn failed(&mut self, e: Error) -> Error {
        if let Error::NoSpace { .. } = e {
            self.keep = false;
        }
        e
    }
}

/// Forgets `lease` as the active attempt, unless a newer attempt took its place.
fn release(root: &Root, staged: &str, lease: &Arc<Lease>) {
    let mut active = root.inner.active.lock().unwrap();
    if active.get(staged).is_some_and(|l| Arc::ptr_eq(l, lease)) {
        active.remove(staged);
    }
}

/// Reads back the bytes an earlier attempt staged (at most `size`) into `hasher`, cuts off any
/// excess, and returns how many there are.
fn read_back(file: &mut File, size: u64, hasher: &mut Hasher) -> std::io::Result<u64> {
    let held = hasher.update_from(file, size)?;
    if held < file.metadata()?.len() {
        // More staged than the file should have: the earlier attempt was another file.
        file.set_len(held)?;
    }
    Ok(held)
}

fn open_staged(root: &Root, name: &str, resume: bool) -> std::io::Result<File> {
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true);
    if !resume {
        opts.truncate(true);
    }
    Ok(root.inner.staging.open_with(name, &opts)?.into_std())
}

impl Drop for Upload {
    fn drop(&mut self) {
        let lease = self.lease.clone();
        let superseded = lease.superseded.lock().unwrap();
        if !self.committed && !*superseded {
            if self.keep {
                // Verified bytes still held go to the staging file, for a resume to find.
                let _ = self.out.flush();
            } else {
                let _ = self.home.root().inner.staging.remove_file(&self.staged);
            }
        }
        drop(superseded);
        let root = self.home.root();
        release(root, &self.staged, &self.lease);
        let grew = self
            .committed
            .then(|| i128::from(self.size) - i128::from(self.replaced));
        root.settle(self.reserved, grew);
    }
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("target", &self.target)
            .field("written", &self.written)
            .field("size", &self.size)
            .finish()
    }
}
