//! ftpd's storage root: every client path is confined to a home inside it, uploads are staged
//! and renamed into place only once complete.
//!
//! A [`Root`] owns the daemon's private state (staging, recorded digests, usage); a [`Home`] is
//! one session's view, a directory handle that its paths resolve beneath, and every path an
//! error names is the one the session sees (its home is `/`), by construction. Bytes given to
//! an upload are taken as verified: checking them is the transfer engine's (`protocol`) job.
//!
//! Confinement is two layers. [`VPath`] normalizes what a client typed and refuses what can
//! never be valid (`..` above the root, NUL, backslashes, `.ftpd` at the top). Then every
//! filesystem call goes through a [`cap_std::fs::Dir`] opened on the session's home, which
//! resolves each name beneath it and refuses to follow `..` or a symlink out of it, the same
//! guarantee `openat2(RESOLVE_BENEATH)` gives, so a symlink swapped in mid-transfer cannot lead
//! outside. The private state lies in a directory of its own outside the root (see `state`),
//! beneath no home, so no path and no link reaches it.

mod backend;
#[cfg(feature = "contract")]
pub mod contract;
mod digests;
mod error;
mod memory;
mod path;
mod scrub;
mod state;
mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

pub use backend::{Backend, ChunkDigests, Reading, Writing};
pub use digests::Recorded;
pub use error::{Error, Result};
pub use memory::{MemoryBackend, MemoryLimits};
// The client still imports it from here until it depends on `fileio` itself.
pub use path::{is_bidi_control, VPath, MAX_NAME, MAX_PATH, PRIVATE_DIR};
pub use scrub::{Marked, Scrubbed, Suspect, Verdict, MAX_SUSPECTS};
pub use state::{default_state_dir, StateProblem};
pub use upload::{
    commit_group, ChunkLog, Staged, Upload, UploadRequest, MAX_RECORDED_CHUNKS, MIN_RECORDED_CHUNK,
};

/// The largest size an upload may declare, whatever the limits: sizes cross the wire as JSON
/// numbers, exact only up to 2^53, and a cap this far below `u64::MAX` leaves every sum of a
/// few sizes room to be computed without wrapping.
pub const MAX_SIZE: u64 = 1 << 53;

/// Size limits the root enforces on uploads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Largest file an upload may create.
    pub max_file_size: Option<u64>,
    /// Most bytes all files in the root may take together, uploads in progress and staged
    /// bytes of interrupted ones included.
    pub quota: Option<u64>,
    /// Most files and directories the root may hold (its private directory aside).
    pub max_files: Option<u64>,
    /// Most interrupted uploads one home keeps staged for a resume; over it, its oldest goes.
    pub max_staged: Option<usize>,
    /// Not a limit but what `stored` promises: with this, uploads are moved into place
    /// without syncing them first, so a crash of the machine (not of the daemon) can lose
    /// files already reported stored, or leave them empty (`ftpd --no-fsync`).
    pub no_fsync: bool,
}

/// What the root holds and what is promised, for the limits. Every change to the names in the
/// root that the counts depend on (commit, remove, rename, mkdir) is made holding this lock, so
/// what a change is measured against is what it changes.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// Bytes of the files in the root (counted only when there is a quota).
    used: u64,
    /// Bytes promised to uploads in progress.
    reserved: u64,
    /// Files and directories in the root (counted only when there is a limit on them).
    files: u64,
    /// New files promised to uploads in progress.
    reserved_files: u64,
    /// Staged uploads no attempt is working on (interrupted, kept for a resume), by staging
    /// name: their bytes count against the quota, and their number against their home's cap.
    kept: HashMap<String, Kept>,
    /// The bytes of `kept`, together.
    kept_bytes: u64,
    /// Homes with limits of their own (a user's quota), each charged for every change to a
    /// path inside it: nested homes are each charged for what lies in both.
    ledgers: Vec<Ledger>,
}

/// A home's own limits: a user's quota and cap on files, over the root's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HomeLimits {
    /// Most bytes the home's files may take, its uploads in flight and its staged bytes
    /// included.
    pub quota: Option<u64>,
    /// Most files and directories the home may hold.
    pub max_files: Option<u64>,
}

/// What a home (or the root) holds against its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HomeUsage {
    /// Bytes of its files, uploads in flight and staged bytes of interrupted ones.
    pub bytes: u64,
    /// Files and directories it holds, uploads in flight to new files included.
    pub files: u64,
    /// Its quota, if it has one.
    pub quota: Option<u64>,
    /// Its cap on files, if it has one.
    pub max_files: Option<u64>,
}

/// The counts of one home with limits of its own.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// Where the home lies in the root.
    prefix: VPath,
    /// Its tag in staging names (see `Home::owner`): staged bytes count against the home
    /// that started the upload.
    owner: String,
    /// Whose home it is, for the refusal: "alice's quota".
    user: String,
    limits: HomeLimits,
    /// Bytes of its files.
    used: u64,
    /// Its files and directories.
    files: u64,
    /// Bytes promised to its uploads in progress.
    reserved: u64,
    /// New files promised to its uploads in progress.
    reserved_files: u64,
}

impl Ledger {
    /// Whether `path` (in the root) lies in this home.
    fn holds(&self, path: &VPath) -> bool {
        let prefix = self.prefix.rel();
        prefix.is_empty()
            || path.rel() == prefix
            || path
                .rel()
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// `path`'s way up from inside the root, for the ledgers that hold it.
fn ledgers_of<'a>(
    ledgers: &'a mut [Ledger],
    path: &'a VPath,
) -> impl Iterator<Item = &'a mut Ledger> {
    ledgers.iter_mut().filter(move |l| l.holds(path))
}

/// An interrupted upload's staged bytes, waiting for a resume or the sweep.
#[derive(Debug)]
pub(crate) struct Kept {
    /// The home that staged it (see `Home::owner`); `None` for a name the daemon cannot place.
    owner: Option<String>,
    /// Bytes it takes.
    bytes: u64,
    /// When it was last written: the oldest goes first when its home is over its cap.
    modified: SystemTime,
}

impl Usage {
    /// Records an interrupted upload's staged bytes.
    pub(crate) fn keep(&mut self, name: &str, kept: Kept) {
        self.forget_kept(name);
        self.kept_bytes = self.kept_bytes.saturating_add(kept.bytes);
        self.kept.insert(name.to_owned(), kept);
    }

    /// Stops counting a staged upload (resumed, replaced, or removed); returns its bytes.
    pub(crate) fn forget_kept(&mut self, name: &str) -> u64 {
        let bytes = self.kept.remove(name).map_or(0, |k| k.bytes);
        self.kept_bytes = self.kept_bytes.saturating_sub(bytes);
        bytes
    }

    /// Staged bytes of interrupted uploads that the home tagged `owner` started.
    fn kept_of(&self, owner: &str) -> u64 {
        self.kept
            .values()
            .filter(|k| k.owner.as_deref() == Some(owner))
            .fold(0u64, |sum, k| sum.saturating_add(k.bytes))
    }

    /// Refuses an upload to `at` (in the root; `shown` as the client named it) that may add
    /// `grow` bytes and `new_files` files, when a home that holds it has no room: `held`
    /// bytes already staged under `staged` become this upload's, not more.
    pub(crate) fn room_in_homes(
        &self,
        at: &VPath,
        shown: &VPath,
        staged: &str,
        grow: u64,
        new_files: u64,
    ) -> Result<()> {
        for l in self.ledgers.iter().filter(|l| l.holds(at)) {
            if let Some(quota) = l.limits.quota {
                let mut kept = self.kept_of(&l.owner);
                if let Some(k) = self.kept.get(staged) {
                    if k.owner.as_deref() == Some(&l.owner) {
                        kept = kept.saturating_sub(k.bytes);
                    }
                }
                let total = l
                    .used
                    .checked_add(l.reserved)
                    .and_then(|t| t.checked_add(kept))
                    .and_then(|t| t.checked_add(grow));
                if total.is_none_or(|t| t > quota) {
                    return Err(Error::TooLarge {
                        path: shown.to_string(),
                        what: format!(
                            "storing {grow} more bytes would exceed {}'s quota of {quota} bytes",
                            l.user
                        ),
                    });
                }
            }
            if let Some(max) = l.limits.max_files {
                let total = l
                    .files
                    .saturating_add(l.reserved_files)
                    .saturating_add(new_files);
                if new_files > 0 && total > max {
                    return Err(Error::TooLarge {
                        path: shown.to_string(),
                        what: format!(
                            "{new_files} more files or directories would exceed {}'s limit of {max}",
                            l.user
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Promises (or, negative, gives back) bytes and files to an upload in the homes that
    /// hold `at`.
    pub(crate) fn reserve_in_homes(&mut self, at: &VPath, bytes: i128, files: i128) {
        for l in ledgers_of(&mut self.ledgers, at) {
            l.reserved = add_signed(l.reserved, bytes);
            l.reserved_files = add_signed(l.reserved_files, files);
        }
    }

    /// Counts a change to what is stored at `at` in the homes that hold it.
    pub(crate) fn store_in_homes(&mut self, at: &VPath, bytes: i128, files: i128) {
        for l in ledgers_of(&mut self.ledgers, at) {
            l.used = add_signed(l.used, bytes);
            l.files = add_signed(l.files, files);
        }
    }

    /// Refuses `n` more files or directories when they would go over `max`.
    fn room_for_files(&self, max: Option<u64>, n: u64, path: &VPath) -> Result<()> {
        let Some(max) = max else { return Ok(()) };
        let total = self
            .files
            .saturating_add(self.reserved_files)
            .saturating_add(n);
        if n > 0 && total > max {
            return Err(Error::TooLarge {
                path: path.to_string(),
                what: format!(
                    "{n} more files or directories would exceed the server's limit of {max}"
                ),
            });
        }
        Ok(())
    }
}

/// `n` plus `delta`, kept within `0..=u64::MAX`.
fn add_signed(n: u64, delta: i128) -> u64 {
    (i128::from(n) + delta).clamp(0, i128::from(u64::MAX)) as u64
}

/// An open storage root. Cloning is cheap; clones share the same directory handles.
#[derive(Clone)]
pub struct Root {
    inner: Arc<Inner>,
}

struct Inner {
    /// Capability handle on the root; all client-visible paths are resolved beneath it.
    dir: Dir,
    /// Capability handle on the staging directory.
    staging: Dir,
    /// Capability handle on the recorded digests.
    digests: Dir,
    /// Capability handle on the files reported damaged, for the next scrub.
    suspects: Dir,
    /// Upload size limits.
    limits: Limits,
    /// Whether opening moved an older version's `ROOT/.ftpd` into the state directory.
    migrated: bool,
    /// What the files in the root take, for the limits. Taken after `active` when both are.
    usage: Mutex<Usage>,
    /// Staged uploads open right now, by staging name, so that a newer attempt at the same
    /// upload (a client that reconnected) takes over from the older one instead of mixing in.
    active: Mutex<HashMap<String, Arc<upload::Lease>>>,
}

/// What kind of thing a path names. Symbolic links are reported, not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One directory entry, or what `stat` finds at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The entry's name (in a listing) or the path as the home sees it (from `stat`).
    pub name: String,
    pub kind: FileKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: Option<i64>,
}

/// A file opened for reading, with what a client is told about it.
#[derive(Debug)]
pub struct ReadFile {
    pub file: File,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub mtime: Option<i64>,
    /// The digests recorded when it was uploaded, if it is unchanged since.
    pub recorded: Option<Recorded>,
}

impl Root {
    /// Opens `path` as a storage root with its private state in `state` (created if missing;
    /// see [`default_state_dir`]). Fails when the root is missing, not a directory, or not
    /// writable, and when `state` is inside the root, holds it, or is on another filesystem.
    pub fn open(path: &Path, state: &Path) -> Result<Root> {
        Self::open_with_limits(path, state, Limits::default())
    }

    /// Like [`Root::open`], enforcing `limits` on uploads.
    pub fn open_with_limits(path: &Path, state: &Path, limits: Limits) -> Result<Root> {
        let shown = path.display().to_string();
        let dir = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|e| Error::io(&shown, "open storage root", e))?;
        let state::State {
            dir: state_dir,
            migrated,
        } = state::open(&dir, path, state)?;
        let shown = state.display().to_string();
        let sub = |name: &str| {
            state_dir
                .create_dir_all(name)
                .map_err(|e| Error::io(&shown, "create a directory in", e))?;
            state_dir
                .open_dir(name)
                .map_err(|e| Error::io(&shown, "open a directory in", e))
        };
        let staging = sub(state::STAGING)?;
        let digests = sub(state::DIGESTS)?;
        let suspects = sub(state::SUSPECTS)?;
        // Prove we can write, rather than find out at the first upload.
        let probe = format!("probe-{}", std::process::id());
        staging
            .create(&probe)
            .and_then(|_| staging.remove_file(&probe))
            .map_err(|e| Error::io(&shown, "write to", e))?;
        let root = Root {
            inner: Arc::new(Inner {
                dir,
                staging,
                digests,
                suspects,
                limits,
                migrated,
                usage: Mutex::new(Usage::default()),
                active: Mutex::new(HashMap::new()),
            }),
        };
        root.recount_usage();
        Ok(root)
    }

    /// Whether opening moved an older version's private directory (`ROOT/.ftpd`) into the
    /// state directory.
    pub fn migrated(&self) -> bool {
        self.inner.migrated
    }

    /// Counts what the files in the root take, when there is a limit to check against, and
    /// what interrupted uploads hold in staging. Run at startup and with every sweep, so
    /// changes made outside the daemon are noticed.
    pub fn recount_usage(&self) {
        let limits = self.inner.limits;
        if limits.quota.is_some() || limits.max_files.is_some() {
            let (used, files) = tree_count(&self.inner.dir, true);
            let mut usage = self.lock_usage();
            usage.used = used;
            usage.files = files;
        }
        self.recount_homes(|_| true);
        let _ = self.scan_staging(None);
    }

    /// Bytes held by interrupted uploads kept for a resume (for the daemon's metrics):
    /// cheap, no disk access.
    pub fn staged_bytes(&self) -> u64 {
        self.lock_usage().kept_bytes
    }

    /// Proves the staging directory still takes a new file (a readiness probe): creates one
    /// and removes it. Blocking: call it off the reactor.
    pub fn probe_writable(&self) -> Result<()> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!("probe-{}-{n}", std::process::id());
        let staging = &self.inner.staging;
        staging
            .create(&probe)
            .and_then(|_| staging.remove_file(&probe))
            .map_err(|e| Error::io("staging directory", "write to", e))
    }

    /// Counts again what the homes with limits of their own hold (those `which` picks).
    fn recount_homes(&self, which: impl Fn(&Ledger) -> bool) {
        let mut usage = self.lock_usage();
        for l in usage.ledgers.iter_mut().filter(|l| which(l)) {
            let counted = if l.prefix.is_root() {
                Some(tree_count(&self.inner.dir, true))
            } else {
                self.inner
                    .dir
                    .open_dir(l.prefix.rel())
                    .ok()
                    .map(|d| tree_count(&d, false))
            };
            (l.used, l.files) = counted.unwrap_or_default();
        }
    }

    /// Puts in force the limits of homes that have their own (users' quotas), `(home, user,
    /// limits)`; homes not given have none from now on. A home kept from before keeps its
    /// counts and the uploads it promised; a new one is counted.
    pub fn set_home_limits(&self, homes: Vec<(VPath, String, HomeLimits)>) {
        let mut fresh = Vec::new();
        {
            let mut usage = self.lock_usage();
            let mut old = std::mem::take(&mut usage.ledgers);
            for (prefix, user, limits) in homes {
                if limits == HomeLimits::default() {
                    continue;
                }
                let kept = old.iter().position(|l| l.prefix == prefix);
                let ledger = match kept {
                    Some(i) => {
                        let mut l = old.swap_remove(i);
                        (l.user, l.limits) = (user, limits);
                        l
                    }
                    None => {
                        fresh.push(prefix.clone());
                        let tag = <md5::Md5 as md5::Digest>::digest(prefix.rel().as_bytes());
                        Ledger {
                            owner: hex::encode(&tag[..8]),
                            prefix,
                            user,
                            limits,
                            used: 0,
                            files: 0,
                            reserved: 0,
                            reserved_files: 0,
                        }
                    }
                };
                usage.ledgers.push(ledger);
            }
        }
        // Uploads in progress to a newly limited home were promised nothing in it: they are
        // measured at their commit by the root's limits alone.
        self.recount_homes(|l| fresh.contains(&l.prefix));
    }

    /// What the home at `home` holds against its own limits, if it has any.
    pub fn home_usage(&self, home: &VPath) -> Option<HomeUsage> {
        let usage = self.lock_usage();
        let l = usage.ledgers.iter().find(|l| &l.prefix == home)?;
        Some(HomeUsage {
            bytes: l
                .used
                .saturating_add(l.reserved)
                .saturating_add(usage.kept_of(&l.owner)),
            files: l.files.saturating_add(l.reserved_files),
            quota: l.limits.quota,
            max_files: l.limits.max_files,
        })
    }

    /// What the whole root holds against the server's limits (bytes and files are counted
    /// only when the server has such a limit).
    pub fn usage(&self) -> HomeUsage {
        let limits = self.inner.limits;
        let usage = self.lock_usage();
        HomeUsage {
            bytes: usage
                .used
                .saturating_add(usage.reserved)
                .saturating_add(usage.kept_bytes),
            files: usage.files.saturating_add(usage.reserved_files),
            quota: limits.quota,
            max_files: limits.max_files,
        }
    }

    /// The counts behind the limits, locked.
    pub(crate) fn lock_usage(&self) -> MutexGuard<'_, Usage> {
        self.inner.usage.lock().unwrap()
    }

    /// Removes staged uploads no attempt is working on that can never be resumed, or that are
    /// untouched for longer than `max_age` (abandoned). Returns how many were removed. Run at
    /// startup, where everything staged is left from an earlier run, and then periodically.
    pub fn sweep_staging(&self, max_age: std::time::Duration) -> Result<usize> {
        self.scan_staging(Some(max_age))
    }

    /// Counts again what interrupted uploads hold in staging; with `max_age`, first removes
    /// those that are stale or can never be resumed: staged bytes of uploads without an id
    /// (a crash skipped their removal), files with more than one link (a crash between a
    /// commit's link and unlink: the bytes are the live file's), names no upload can resume,
    /// and anything not a file.
    fn scan_staging(&self, max_age: Option<std::time::Duration>) -> Result<usize> {
        let shown = "staging directory";
        let active = self.inner.active.lock().unwrap();
        let mut kept = Vec::new();
        let mut removed = 0;
        for entry in self
            .inner
            .staging
            .entries()
            .map_err(|e| Error::io(shown, "list", e))?
        {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if active.contains_key(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let modified = meta.modified().map_or(UNIX_EPOCH, |t| t.into_std());
            if let Some(max_age) = max_age {
                use cap_std::fs::MetadataExt as _;
                let stale = modified.elapsed().unwrap_or_default() > max_age
                    || upload::owner_of(&name).is_none()
                    || meta.nlink() > 1
                    || !meta.is_file();
                if stale && self.inner.staging.remove_file(&name).is_ok() {
                    removed += 1;
                    continue;
                }
            }
            let owner = upload::owner_of(&name).map(str::to_owned);
            let bytes = if meta.is_file() { meta.len() } else { 0 };
            kept.push((
                name,
                Kept {
                    owner,
                    bytes,
                    modified,
                },
            ));
        }
        let mut usage = self.lock_usage();
        usage.kept.clear();
        usage.kept_bytes = 0;
        for (name, k) in kept {
            usage.keep(&name, k);
        }
        Ok(removed)
    }

    /// Creates `path` and its missing parents as directories.
    pub fn create_dir_all(&self, path: &VPath) -> Result<()> {
        self.inner
            .dir
            .create_dir_all(path.rel())
            .map_err(|e| Error::io(&path.to_string(), "create directory", e))
    }

    /// Removes recorded digests of files that are gone or changed; returns how many.
    pub fn sweep_digests(&self) -> usize {
        digests::sweep(&self.inner.digests, &self.inner.dir)
    }

    /// One session's view of the root: the directory `home` (the root itself for `/`), which
    /// every path of the session resolves beneath.
    pub fn home(&self, home: &VPath) -> Result<Home> {
        let shown = home.to_string();
        let dir = self
            .inner
            .dir
            .open_dir(home.rel())
            .map_err(|e| Error::io(&shown, "open home", e))?;
        Ok(Home {
            root: self.clone(),
            dir: Arc::new(dir),
            prefix: home.clone(),
            user: None,
        })
    }
}

/// One session's part of the root. Paths given to it are relative to the home, and so are the
/// paths its errors name. Cloning is cheap.
#[derive(Clone)]
pub struct Home {
    /// The root it lies in, for the private state every home shares.
    root: Root,
    /// Capability handle on the home directory: names resolve beneath it, never above.
    dir: Arc<Dir>,
    /// Where the home lies in the root: only for keys of the private state (staging names,
    /// digest records), never shown.
    prefix: VPath,
    /// Who works in it, when the daemon has users: part of every resumable upload's key, so
    /// that users who share a home never continue (or take over) each other's uploads.
    user: Option<String>,
}

impl Home {
    /// The root this home lies in.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// `path` as the root knows it, for keys of the private state.
    pub(crate) fn in_root(&self, path: &VPath) -> VPath {
        self.prefix.join(path)
    }

    /// The same home, for `user`'s uploads.
    pub fn for_user(mut self, user: &str) -> Home {
        self.user = Some(user.to_owned());
        self
    }

    /// The user whose uploads these are, if the daemon has users.
    pub(crate) fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// A short stable name for this home, in the names of the uploads it stages, so that each
    /// home's staged uploads can be counted (also after a restart) without saying where it is.
    pub(crate) fn owner(&self) -> String {
        let tag = <md5::Md5 as md5::Digest>::digest(self.prefix.rel().as_bytes());
        hex::encode(&tag[..8])
    }

    /// Opens a regular file for reading. Anything else (a FIFO, a device) is refused before it
    /// is opened, and the open itself cannot block on one swapped in meanwhile.
    pub fn open_read(&self, path: &VPath) -> Result<ReadFile> {
        use cap_std::fs::OpenOptionsExt as _;
        let shown = path.to_string();
        let kind = |meta: &cap_std::fs::Metadata| {
            if meta.is_dir() {
                Err(Error::IsDirectory(shown.clone()))
            } else if !meta.is_file() {
                Err(Error::NotAFile(shown.clone()))
            } else {
                Ok(())
            }
        };
        let before = self
            .dir
            .metadata(path.rel())
            .map_err(|e| Error::io(&shown, "stat", e))?;
        kind(&before)?;
        // Opening a FIFO for reading waits for a writer, past every timeout: O_NONBLOCK returns
        // at once. O_NOCTTY: a terminal never becomes the daemon's.
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).custom_flags(
            (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32,
        );
        let file = self
            .dir
            .open_with(path.rel(), &opts)
            .map_err(|e| Error::io(&shown, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(&shown, "stat", e))?;
        kind(&meta)?;
        // A regular file: reads never block anyway; clear the flag so they behave as usual.
        let flags =
            rustix::fs::fcntl_getfl(&file).map_err(|e| Error::io(&shown, "open", e.into()))?;
        rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| Error::io(&shown, "open", e.into()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.into_std().duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        let file = file.into_std();
        let recorded = file
            .metadata()
            .ok()
            .and_then(|m| digests::load(&self.root.inner.digests, &self.in_root(path), &m));
        Ok(ReadFile {
            file,
            size: meta.len(),
            mtime,
            recorded,
        })
    }

    /// The entries of the directory at `path`, symlinks reported as such, not followed. An
    /// older version's private directory, until it is moved out, is never listed.
    pub fn list(&self, path: &VPath) -> Result<impl Iterator<Item = FileInfo>> {
        let shown = path.to_string();
        let dir = self.open_dir(path)?;
        // It lies at the top of the root, so only the root's own top hides it.
        let top = path.is_root() && self.prefix.is_root();
        let entries = dir.entries().map_err(|e| Error::io(&shown, "list", e))?;
        Ok(entries.filter_map(move |entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if top && name == PRIVATE_DIR {
                return None;
            }
            let meta = entry.metadata().ok()?;
            Some(entry_of(name, &meta))
        }))
    }

    /// The digest recorded at upload for the file at `path`, if it is of `kind` and the file
    /// is still as it was recorded; a stat and a small read, never a read of the file.
    pub fn recorded_digest(
        &self,
        path: &VPath,
        kind: checksum::DigestKind,
    ) -> Option<checksum::Digest> {
        let meta = self.dir.symlink_metadata(path.rel()).ok()?;
        if !meta.is_file() {
            return None;
        }
        let rec = digests::load_stamped(&self.root.inner.digests, &self.in_root(path), &meta)?;
        (rec.digest.kind() == kind).then_some(rec.digest)
    }

    /// Describes `path`, following a symlink that stays inside the root.
    pub fn stat(&self, path: &VPath) -> Result<FileInfo> {
        let shown = path.to_string();
        let meta = self
            .dir
            .metadata(path.rel())
            .map_err(|e| Error::io(&shown, "stat", e))?;
        Ok(entry_of(shown, &meta))
    }

    fn open_dir(&self, path: &VPath) -> Result<Dir> {
        let shown = path.to_string();
        match self.dir.open_dir(path.rel()) {
            Ok(d) => Ok(d),
            Err(e) if self.stat(path).is_ok_and(|m| m.kind != FileKind::Dir) => {
                let _ = e;
                Err(Error::NotADirectory(shown))
            }
            Err(e) => Err(Error::io(&shown, "open directory", e)),
        }
    }

    /// Checks that `path` is a directory (for `cd`).
    pub fn check_dir(&self, path: &VPath) -> Result<()> {
        self.open_dir(path).map(drop)
    }

    /// Creates a directory; with `parents`, missing parents too, and an existing one is fine.
    pub fn mkdir(&self, path: &VPath, parents: bool) -> Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(Error::Exists(shown));
        }
        let limits = self.root.inner.limits;
        let at = self.in_root(path);
        let mut usage = self.root.lock_usage();
        let r = if parents {
            // Refused whole or made whole: count the missing directories first.
            let names: Vec<&str> = path.components().collect();
            let mut have = 0;
            while have < names.len() {
                let at = names[..=have].join("/");
                match self.dir.symlink_metadata(&at) {
                    Ok(_) => have += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => return Err(Error::io(&shown, "stat", e)),
                }
            }
            let missing = (names.len() - have) as u64;
            usage.room_for_files(limits.max_files, missing, path)?;
            usage.room_in_homes(&at, path, "", 0, missing)?;
            self.dir.create_dir_all(path.rel()).map(|()| missing)
        } else {
            usage.room_for_files(limits.max_files, 1, path)?;
            usage.room_in_homes(&at, path, "", 0, 1)?;
            self.dir.create_dir(path.rel()).map(|()| 1)
        };
        let made = r.map_err(|e| Error::io(&shown, "create directory", e))?;
        usage.files = usage.files.saturating_add(made);
        usage.store_in_homes(&at, 0, i128::from(made));
        Ok(())
    }

    /// Removes a file (not a directory).
    pub fn remove_file(&self, path: &VPath) -> Result<()> {
        let shown = path.to_string();
        // Measured and removed under the lock, so the count loses what was removed.
        let mut usage = self.root.lock_usage();
        let meta = self
            .dir
            .symlink_metadata(path.rel())
            .map_err(|e| Error::io(&shown, "stat", e))?;
        if meta.is_dir() {
            return Err(Error::IsDirectory(shown));
        }
        let size = if meta.is_file() { meta.len() } else { 0 };
        self.dir
            .remove_file(path.rel())
            .map_err(|e| Error::io(&shown, "remove", e))?;
        usage.used = usage.used.saturating_sub(size);
        usage.files = usage.files.saturating_sub(1);
        usage.store_in_homes(&self.in_root(path), -i128::from(size), -1);
        drop(usage);
        digests::forget(&self.root.inner.digests, &self.in_root(path));
        Ok(())
    }

    /// Removes an empty directory; never the root.
    pub fn remove_dir(&self, path: &VPath) -> Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(Error::Denied {
                path: shown,
                reason: "cannot remove the root",
            });
        }
        let mut usage = self.root.lock_usage();
        self.dir.remove_dir(path.rel()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                Error::NotEmpty(shown.clone())
            } else if e.kind() == std::io::ErrorKind::NotADirectory {
                Error::NotADirectory(shown.clone())
            } else {
                Error::io(&shown, "remove directory", e)
            }
        })?;
        usage.files = usage.files.saturating_sub(1);
        usage.store_in_homes(&self.in_root(path), 0, -1);
        Ok(())
    }

    /// Renames `from` to `to`; refuses to replace anything at `to`.
    pub fn rename(&self, from: &VPath, to: &VPath) -> Result<()> {
        if from.is_root() || to.is_root() {
            return Err(Error::Denied {
                path: from.to_string(),
                reason: "cannot rename the root",
            });
        }
        if to.rel().starts_with(&format!("{}/", from.rel())) {
            return Err(Error::Denied {
                path: to.to_string(),
                reason: "cannot move a directory inside itself",
            });
        }
        let (Some((from_dir, from_name)), Some((to_dir, to_name))) =
            (from.split_last(), to.split_last())
        else {
            unreachable!("neither is the root");
        };
        // Under the lock, so a commit that measures what it replaces is not moved under.
        let usage = self.root.lock_usage();
        let dirs = self
            .open_dir(&from_dir)
            .and_then(|f| Ok((f, self.open_dir(&to_dir)?)));
        let (fd, td) = dirs?;
        let dir = &self.dir;
        rename_noreplace(&fd, from_name, &td, to_name, || {
            match dir.symlink_metadata(to.rel()) {
                Ok(_) => return Err(io::ErrorKind::AlreadyExists.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            dir.rename(from.rel(), dir, to.rel())
        })
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists(to.to_string()),
            _ => Error::io(&from.to_string(), "rename", e),
        })?;
        drop(usage);
        // Moved from one limited home to another (or out of one): count both again.
        let (f, t) = (self.in_root(from), self.in_root(to));
        self.root.recount_homes(|l| l.holds(&f) != l.holds(&t));
        digests::forget(&self.root.inner.digests, &f);
        Ok(())
    }

    /// Starts (or resumes) a staged upload to `path`; see [`Upload`].
    pub fn begin_upload(&self, path: &VPath, req: &UploadRequest) -> Result<Upload> {
        Upload::begin(self.clone(), path, req)
    }
}

fn entry_of(name: String, meta: &cap_std::fs::Metadata) -> FileInfo {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    FileInfo {
        name,
        kind,
        size: if kind == FileKind::Dir { 0 } else { meta.len() },
        mtime: meta
            .modified()
            .ok()
            .and_then(|t| t.into_std().duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64),
    }
}

/// Bytes taken by regular files under `dir`, and how many entries (files, directories and
/// anything else) it holds, symlinks not followed; an older version's private directory is
/// skipped at the top.
fn tree_count(dir: &Dir, top: bool) -> (u64, u64) {
    let Ok(entries) = dir.entries() else {
        return (0, 0);
    };
    let (mut bytes, mut files) = (0u64, 0u64);
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            if top && entry.file_name() == PRIVATE_DIR {
                continue;
            }
            if let Ok(sub) = entry.open_dir() {
                let (b, f) = tree_count(&sub, false);
                bytes = bytes.saturating_add(b);
                files = files.saturating_add(f);
            }
        } else if ft.is_file() {
            bytes = bytes.saturating_add(entry.metadata().map(|m| m.len()).unwrap_or(0));
        }
        files = files.saturating_add(1);
    }
    (bytes, files)
}

/// Moves the name `from` in `from_dir` to the name `to` in `to_dir`, failing with
/// `AlreadyExists` if anything is at `to`, atomically: `renameat2(RENAME_NOREPLACE)`. Where the
/// kernel or the filesystem does not have it (EINVAL, ENOSYS), `fallback` does the move,
/// usually with a check before it, which a name created between the two can still race.
/// Both are single names inside directory handles cap-std opened, so nothing is resolved here.
fn rename_noreplace(
    from_dir: &Dir,
    from: &str,
    to_dir: &Dir,
    to: &str,
    fallback: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{renameat_with, RenameFlags};
        use rustix::io::Errno;
        match renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(e) if e == Errno::INVAL || e == Errno::NOSYS => fallback(),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (from_dir, from, to_dir, to);
        fallback()
    }
}
