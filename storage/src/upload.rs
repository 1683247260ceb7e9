//! Staged uploads: verified bytes go to a private file and become visible whole, or not at all.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use checksum::{Digest, DigestKind, Hasher};
use fileio::DirectWriter;
use md5::{Digest as _, Md5};

use crate::digests::{self, Recorded};
use crate::{rename_noreplace, Error, Home, Kept, Result, Root, Usage, VPath, MAX_SIZE};

/// How the staging names of uploads without an id begin: they can never be resumed.
const ANON_PREFIX: &str = "anon-";

/// The home (its `Home::owner` tag) that staged an upload with an id, from its staging name
/// `<owner>-<key>.part`; `None` for any other name (an upload without an id, or one staged
/// before names carried their home), which no upload can ever resume.
pub(crate) fn owner_of(name: &str) -> Option<&str> {
    let (owner, rest) = name.split_once('-')?;
    let well_formed = owner.len() == 16
        && rest.len() == 32 + ".part".len()
        && rest.ends_with(".part")
        && owner.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then_some(owner)
}

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
    /// Bytes of quota held for this upload until it ends (or commits, which measures again).
    reserved: u64,
    /// New files held for this upload (1 when its target did not exist) until it ends.
    reserved_files: u64,
    /// Modification time to give the file when it is stored.
    mtime: Option<i64>,
    /// The chunks' running digests as verified, to record with the file; `None` once the chunks
    /// are not all of one length (but the last), or the upload resumed bytes hashed without them.
    chunks: Option<ChunkLog>,
    committed: bool,
}

static ANON: AtomicU64 = AtomicU64::new(0);

/// The chunks of an upload so far: their common length and running digests, by the rules every
/// backend records them with (so a download replays them the same way whatever stores the file).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLog {
    /// Length of every chunk but possibly the last; 0 before the first.
    pub len: u32,
    /// Each chunk's running digest (of the file from byte 0 through the chunk's end).
    pub digests: Vec<Digest>,
    /// A chunk shorter than `len` arrived: it must have been the last. (Never true in a
    /// saved log of a resumable upload: the last chunk ends the file.)
    #[serde(skip)]
    ended: bool,
}

impl ChunkLog {
    /// Records a chunk (`last` when it ends the file); false when the chunks no longer follow
    /// one length, or make a record not worth keeping.
    pub fn push(&mut self, len: u32, digest: Digest, last: bool) -> bool {
        if self.ended || len == 0 || self.digests.len() >= MAX_RECORDED_CHUNKS {
            return false;
        }
        if len < MIN_RECORDED_CHUNK && !last {
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

    /// The chunks that end within the first `offset` bytes, when one ends exactly there and
    /// they are at most `max`: what a resumed upload still knows of its chunks.
    pub fn up_to(&self, offset: u64, max: usize) -> Option<ChunkLog> {
        let len = u64::from(self.len);
        if offset == 0 || len == 0 || !offset.is_multiple_of(len) {
            return None;
        }
        let n = usize::try_from(offset / len).ok()?;
        (n <= self.digests.len() && n <= max).then(|| ChunkLog {
            len: self.len,
            digests: self.digests[..n].to_vec(),
            ended: false,
        })
    }
}

/// The shortest chunk worth recording, but for a file's last: an upload in 1-byte chunks made
/// a 1 MiB file's record 35 MiB, held 33 bytes of memory per chunk while it ran, and made every
/// later download replay 1-byte chunks. Such uploads are simply not recorded (downloads hash).
pub const MIN_RECORDED_CHUNK: u32 = 64 * 1024;

/// The most chunks a record holds (about 2.3 MB of JSON): 4 GiB in chunks of the shortest
/// length recorded, 64 GiB in the default 1 MiB chunks. Longer files are not recorded.
pub const MAX_RECORDED_CHUNKS: usize = 65_536;

/// One upload's claim on its staging file. A newer attempt at the same upload sets
/// `superseded` while holding the lock, so the older attempt never writes again after that.
pub(crate) struct Lease {
    /// Set once a newer attempt took over.
    superseded: Mutex<bool>,
    /// The home that started the upload, for its count of staged uploads.
    owner: String,
}

impl UploadRequest {
    /// Refuses what no store takes, before any work: an upload to the root itself, a size over
    /// [`MAX_SIZE`], an `upload_id` that is not 1 to 64 of `[0-9A-Za-z_-]`. Gives the target's
    /// parent. Every backend starts its uploads with this.
    pub fn check(&self, target: &VPath) -> Result<VPath> {
        let shown = target.to_string();
        let Some((parent, _)) = target.split_last() else {
            return Err(Error::IsDirectory(shown));
        };
        if self.size > MAX_SIZE {
            return Err(Error::TooLarge {
                path: shown,
                what: format!(
                    "{} bytes is over the largest size this server takes, 2^53 bytes",
                    self.size
                ),
            });
        }
        let valid = |id: &str| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if self.upload_id.as_deref().is_some_and(|id| !valid(id)) {
            return Err(Error::BadPath {
                path: shown,
                reason: "upload_id must be 1 to 64 of [0-9A-Za-z_-]",
            });
        }
        Ok(parent)
    }
}

impl Upload {
    pub(crate) fn begin(home: Home, target: &VPath, req: &UploadRequest) -> Result<Upload> {
        let parent = req.check(target)?;
        let shown = target.to_string();
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
        // An estimate, to refuse early: the commit measures again what it replaces.
        let (replaced, new_file) = match dir.symlink_metadata(target.rel()) {
            Ok(m) if m.is_file() => (m.len(), false),
            Ok(_) => (0, false),
            Err(_) => (0, true),
        };
        let owner = home.owner();
        let (staged, keep) = match &req.upload_id {
            Some(id) => {
                // The key binds the id to the target and the user, so one client's id never
                // meets another path, nor another user's upload to a shared home.
                let key = Md5::new()
                    .chain_update(home.in_root(target).rel())
                    .chain_update([0])
                    .chain_update(home.user().unwrap_or_default())
                    .chain_update([0])
                    .chain_update(id);
                let key = hex::encode(key.finalize());
                (format!("{owner}-{key}.part"), true)
            }
            None => (
                format!(
                    "{ANON_PREFIX}{}-{}.part",
                    std::process::id(),
                    ANON.fetch_add(1, Ordering::Relaxed)
                ),
                false,
            ),
        };
        // Replacing a file grows the root only by the difference.
        let reserved = req.size.saturating_sub(replaced);
        let reserved_files = u64::from(new_file);
        let lease = Arc::new(Lease {
            superseded: Mutex::new(false),
            owner,
        });
        let older = claim(
            &root,
            target,
            &home.in_root(target),
            &staged,
            &lease,
            req.size,
            reserved,
            reserved_files,
        )?;
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
                let at = home.in_root(target);
                release(&root, &at, &staged, &lease, None, reserved, reserved_files);
                return Err(e);
            }
        };
        Ok(Upload {
            out,
            lease,
            reserved,
            reserved_files,
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
        let last = self.written == self.size;
        if let Some(log) = &mut self.chunks {
            if !log.push(data.len() as u32, digest, last) {
                self.chunks = None;
            }
        }
        Ok(())
    }

    /// Refuses bytes past the declared size.
    fn fits(&self, len: usize) -> Result<()> {
        let end = self.written.checked_add(len as u64);
        if end.is_none_or(|end| end > self.size) {
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
    pub fn commit(self, digest: Digest, overwrite: bool) -> Result<()> {
        let durable = !self.home.root().inner.limits.no_fsync;
        let staged = self.stage(digest, overwrite, durable)?;
        let parent = staged.place()?;
        if durable {
            let _ = parent.into_std_file().sync_all();
        }
        Ok(())
    }

    /// Writes out every byte held and gives the file its time, checked complete, so that it
    /// can be placed later (see [`commit_group`]); `sync`: also made durable now, on its own.
    pub fn stage(mut self, digest: Digest, overwrite: bool, sync: bool) -> Result<Staged> {
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
        if let Err(e) = self.out.release() {
            return Err(self.failed(Error::io(&shown, "write", e)));
        }
        let file = self.out.get_ref();
        if let Some(secs) = self.mtime {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
            let _ = file.set_modified(t);
        }
        if sync {
            if let Err(e) = file.sync_all() {
                return Err(self.failed(Error::io(&shown, "sync", e)));
            }
        }
        drop(superseded);
        Ok(Staged {
            upload: self,
            digest,
            overwrite,
        })
    }
}

/// An upload whose bytes are all written and checked, waiting to be moved into place.
/// Dropped unplaced, it is an interrupted upload like any other (kept for a resume when it
/// has an id).
pub struct Staged {
    upload: Upload,
    /// The whole file's digest, to record.
    digest: Digest,
    /// Whether it may replace a file that is at the target when it is placed.
    overwrite: bool,
}

impl Staged {
    /// Moves the file into place (atomically), recording its digests; returns its directory,
    /// for the caller to sync.
    fn place(self) -> Result<cap_std::fs::Dir> {
        let Staged {
            upload: mut up,
            digest,
            overwrite,
        } = self;
        let shown = up.target.to_string();
        let lease = up.lease.clone();
        let superseded = lease.superseded.lock().unwrap();
        if *superseded {
            return Err(up.superseded());
        }
        let root = up.home.root().clone();
        let inner = &root.inner;
        let home = &*up.home.dir;
        let (parent, name) = up
            .target
            .split_last()
            .expect("uploads never target the root");
        let parent_dir = match home.open_dir(parent.rel()) {
            Ok(d) => d,
            Err(e) => return Err(Error::io(&parent.to_string(), "open directory", e)),
        };
        // What is replaced is measured, and the limits checked, under the lock that every
        // change to the names in the root takes: nothing moves between measuring and placing.
        let mut usage = root.lock_usage();
        let existing = match home.symlink_metadata(up.target.rel()) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&shown, "stat", e)),
        };
        if existing.is_some() && !overwrite {
            return Err(Error::Exists(shown));
        }
        let replaced = existing
            .as_ref()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.len());
        let grow = up.size.saturating_sub(replaced);
        let new_file = u64::from(existing.is_none());
        let limits = inner.limits;
        // Within what was reserved, it fits; beyond it (what it replaces shrank or went away
        // meanwhile), it must fit what is left.
        if let (Some(quota), true) = (limits.quota, grow > up.reserved) {
            let total = (usage.used)
                .checked_add(usage.reserved - up.reserved)
                .and_then(|t| t.checked_add(usage.kept_bytes))
                .and_then(|t| t.checked_add(grow));
            if total.is_none_or(|t| t > quota) {
                return Err(Error::TooLarge {
                    path: shown,
                    what: format!(
                        "storing {grow} more bytes would exceed the server's quota of {quota} bytes"
                    ),
                });
            }
        }
        if new_file > up.reserved_files {
            let others = usage.reserved_files - up.reserved_files;
            let files = usage.files.saturating_add(others);
            if limits.max_files.is_some_and(|max| files >= max) {
                let max = limits.max_files.unwrap_or_default();
                return Err(Error::TooLarge {
                    path: shown,
                    what: format!(
                        "1 more file or directory would exceed the server's limit of {max}"
                    ),
                });
            }
        }
        let placed = if overwrite {
            inner.staging.rename(&up.staged, home, up.target.rel())
        } else {
            rename_noreplace(&inner.staging, &up.staged, &parent_dir, name, || {
                // A hard link fails if the target exists: an atomic "rename unless present",
                // but a crash before the unlink leaves the staging name linked to the live file
                // (see `open_staged` and the sweep).
                inner
                    .staging
                    .hard_link(&up.staged, home, up.target.rel())
                    .and_then(|()| inner.staging.remove_file(&up.staged))
            })
        };
        placed.map_err(|e| Error::io(&shown, "move into place", e))?;
        usage.used = (usage.used - replaced.min(usage.used)).saturating_add(up.size);
        usage.files = usage.files.saturating_add(new_file);
        usage.reserved -= up.reserved;
        usage.reserved_files -= up.reserved_files;
        let at = up.home.in_root(&up.target);
        usage.reserve_in_homes(
            &at,
            -i128::from(up.reserved),
            -i128::from(up.reserved_files),
        );
        usage.store_in_homes(
            &at,
            i128::from(up.size) - i128::from(replaced),
            i128::from(new_file),
        );
        (up.reserved, up.reserved_files) = (0, 0);
        drop(usage);
        up.committed = true;
        drop(superseded);
        let key = up.home.in_root(&up.target);
        // Stamped as placed: the move changed the inode's change time.
        match home.symlink_metadata(up.target.rel()) {
            Ok(meta) => {
                let (chunk, running) = match up.chunks.take() {
                    Some(log) => (log.len, log.digests),
                    // Resumed, or in chunks too short to keep: the whole file's digest alone.
                    None => (0, Vec::new()),
                };
                let rec = Recorded::new(&key, &meta, chunk, running, digest);
                digests::save(&inner.digests, &rec);
            }
            Err(_) => digests::forget(&inner.digests, &key),
        }
        Ok(parent_dir)
    }
}

/// Commits staged uploads together, with the syncs of one: their bytes are made durable with
/// one `syncfs` of the filesystem the root is on, then each is moved into place, then a second
/// `syncfs` makes the moves durable, before any result is returned. So every file is on disk
/// before it is visible, and visible on disk before its success is reported, at the cost of
/// two syncs for the group instead of two for each file. (`syncfs` writes out everything
/// waiting on that filesystem, not only these files; with the root's `no_fsync`, neither sync
/// is made.) Results come back in the order given; a file that failed to place fails alone.
pub fn commit_group(root: &Root, group: Vec<Staged>) -> Vec<Result<()>> {
    if group.is_empty() {
        return Vec::new();
    }
    let durable = !root.inner.limits.no_fsync;
    let shown: Vec<String> = group.iter().map(|s| s.upload.target.to_string()).collect();
    let failed = |e: &io::Error, path: &str| Err(Error::io(path, "sync", clone_io(e)));
    // Any open file on the root's filesystem names it for `syncfs`; the directory handles
    // cannot (they are opened for lookups only).
    let anchor = group[0].upload.out.get_ref().try_clone();
    let sync = || anchor.as_ref().map_err(clone_io).and_then(sync_fs);
    if durable {
        if let Err(e) = sync() {
            // Nothing was moved: each upload fails as its own sync would have.
            return shown.iter().map(|p| failed(&e, p)).collect();
        }
    }
    let mut results: Vec<Result<()>> = group.into_iter().map(|s| s.place().map(drop)).collect();
    if durable && results.iter().any(Result::is_ok) {
        if let Err(e) = sync() {
            for (r, path) in results.iter_mut().zip(&shown) {
                if r.is_ok() {
                    *r = failed(&e, path);
                }
            }
        }
    }
    results
}

/// Syncs the filesystem `file` is on (Linux's `syncfs`; elsewhere the file alone, which is
/// weaker, and said so in the docs).
fn sync_fs(file: &File) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::fs::syncfs(file)?;
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        file.sync_all()
    }
}

fn clone_io(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
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

/// Checks an upload against the limits and the cap on its home's staged uploads, reserves
/// what it may add, and makes `lease` the active attempt at `staged`; returns the attempt it
/// takes over from, if any. An interrupted upload of the same name (a resume) stops counting
/// as kept: its bytes are part of this upload's reservation from now on.
#[allow(clippy::too_many_arguments)]
fn claim(
    root: &Root,
    target: &VPath,
    at: &VPath,
    staged: &str,
    lease: &Arc<Lease>,
    size: u64,
    grow: u64,
    new_files: u64,
) -> Result<Option<Arc<Lease>>> {
    let limits = root.inner.limits;
    let too_large = |what: String| Error::TooLarge {
        path: target.to_string(),
        what,
    };
    if let Some(max) = limits.max_file_size {
        if size > max {
            return Err(too_large(format!(
                "{size} bytes is over the server's largest file size of {max} bytes"
            )));
        }
    }
    let mut active = root.inner.active.lock().unwrap();
    let mut usage = root.lock_usage();
    let held = usage.kept.get(staged).map_or(0, |k| k.bytes);
    if let Some(quota) = limits.quota {
        let total = (usage.used)
            .checked_add(usage.reserved)
            .and_then(|t| t.checked_add(usage.kept_bytes - held))
            .and_then(|t| t.checked_add(grow));
        if total.is_none_or(|t| t > quota) {
            return Err(too_large(format!(
                "storing {grow} more bytes would exceed the server's quota of {quota} bytes"
            )));
        }
    }
    usage.room_for_files(limits.max_files, new_files, target)?;
    usage.room_in_homes(at, target, staged, grow, new_files)?;
    usage.forget_kept(staged);
    usage.reserved += grow;
    usage.reserved_files += new_files;
    usage.reserve_in_homes(at, i128::from(grow), i128::from(new_files));
    Ok(active.insert(staged.to_owned(), lease.clone()))
}

/// Forgets `lease` as the active attempt, unless a newer attempt took its place, and gives back
/// what it reserved. `kept`: the bytes it leaves staged for a resume, which count from now on.
fn release(
    root: &Root,
    at: &VPath,
    staged: &str,
    lease: &Arc<Lease>,
    kept: Option<u64>,
    reserved: u64,
    reserved_files: u64,
) {
    let mut active = root.inner.active.lock().unwrap();
    let mut usage = root.lock_usage();
    if active.get(staged).is_some_and(|l| Arc::ptr_eq(l, lease)) {
        active.remove(staged);
        if let Some(bytes) = kept {
            let kept = Kept {
                owner: Some(lease.owner.clone()),
                bytes,
                modified: SystemTime::now(),
            };
            usage.keep(staged, kept);
            if let Some(max) = root.inner.limits.max_staged {
                evict_over(root, &mut usage, &lease.owner, max);
            }
        }
    }
    usage.reserved -= reserved;
    usage.reserved_files -= reserved_files;
    usage.reserve_in_homes(at, -i128::from(reserved), -i128::from(reserved_files));
}

/// Removes the oldest interrupted uploads of the home `owner` until it keeps at most `max`.
/// Only interrupted ones count: uploads in progress are bounded by the connections. Making
/// room rather than refusing new uploads: a refusal would let one client that abandons uploads
/// lock everyone sharing its home out of resumable uploads until the sweep.
fn evict_over(root: &Root, usage: &mut Usage, owner: &str, max: usize) {
    loop {
        let mut mine: Vec<(&String, &Kept)> = usage
            .kept
            .iter()
            .filter(|(_, k)| k.owner.as_deref() == Some(owner))
            .collect();
        if mine.len() <= max {
            return;
        }
        mine.sort_by_key(|(_, k)| k.modified);
        let oldest = mine[0].0.clone();
        let _ = root.inner.staging.remove_file(&oldest);
        usage.forget_kept(&oldest);
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

/// Opens the staging file `name`: the existing one to resume, else a new, empty one. A staging
/// name with more than one link is never written through: a crash between a commit's link and
/// unlink leaves it linked to the live file, which truncating or appending would change in
/// place. Such a name (or anything else not a plain file) is replaced by a new file.
fn open_staged(root: &Root, name: &str, resume: bool) -> io::Result<File> {
    use cap_std::fs::MetadataExt as _;
    let staging = &root.inner.staging;
    if resume {
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).write(true);
        match staging.open_with(name, &opts) {
            Ok(file) => {
                let meta = file.metadata()?;
                if meta.is_file() && meta.nlink() == 1 {
                    return Ok(file.into_std());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    // Nearly always there is nothing to replace: try first, remove only what is in the way.
    match staging.open_with(name, &opts) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        other => return Ok(other?.into_std()),
    }
    match staging.remove_file(name) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(staging.open_with(name, &opts)?.into_std())
}

impl Drop for Upload {
    fn drop(&mut self) {
        let lease = self.lease.clone();
        let superseded = lease.superseded.lock().unwrap();
        let mut kept = None;
        if !self.committed && !*superseded {
            if self.keep {
                // Verified bytes still held go to the staging file, for a resume to find.
                let _ = self.out.flush();
                let on_disk = self.out.get_ref().metadata().map(|m| m.len());
                kept = Some(on_disk.unwrap_or(self.written));
            } else {
                let _ = self.home.root().inner.staging.remove_file(&self.staged);
            }
        }
        drop(superseded);
        let (reserved, files) = (self.reserved, self.reserved_files);
        release(
            self.home.root(),
            &self.home.in_root(&self.target),
            &self.staged,
            &self.lease,
            kept,
            reserved,
            files,
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record stops growing at its cap: the upload then simply is not recorded.
    #[test]
    fn a_record_holds_at_most_the_capped_number_of_chunks() {
        let mut log = ChunkLog::default();
        let d = Digest::default();
        for _ in 0..MAX_RECORDED_CHUNKS {
            assert!(log.push(MIN_RECORDED_CHUNK, d, false));
        }
        assert!(!log.push(MIN_RECORDED_CHUNK, d, true));
        let mut short = ChunkLog::default();
        assert!(!short.push(MIN_RECORDED_CHUNK - 1, d, false));
        assert!(
            ChunkLog::default().push(1, d, true),
            "a file's only chunk may be short"
        );
    }
}
