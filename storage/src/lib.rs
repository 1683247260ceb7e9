//! ftpd's storage root: every client path is confined to a home inside it, uploads are staged
//! and renamed into place only once complete.
//!
//! A [`Root`] owns the daemon's private state (staging, recorded digests, usage); a [`Home`] is
//! one session's view, a directory handle that its paths resolve beneath, and every path an
//! error names is the one the session sees (its home is `/`), by construction. Bytes given to
//! an upload are taken as verified: checking them is the transfer engine's (`protocol`) job.
//!
//! Confinement is two layers. [`VPath`] normalizes what a client typed and refuses what can
//! never be valid (`..` above the root, NUL, backslashes, the private `.ftpd` directory). Then
//! every filesystem call goes through a [`cap_std::fs::Dir`] opened on the root, which resolves
//! each name beneath it and refuses to follow `..` or a symlink out of it, the same guarantee
//! `openat2(RESOLVE_BENEATH)` gives, so a symlink swapped in mid-transfer cannot lead outside.

mod digests;
mod error;
mod path;
mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

pub use digests::Recorded;
pub use error::{Error, Result};
// The client still imports it from here until it depends on `fileio` itself.
pub use path::{VPath, MAX_NAME, MAX_PATH, PRIVATE_DIR};
pub use upload::{Upload, UploadRequest};

/// Where staged uploads live, under [`PRIVATE_DIR`].
const STAGING_DIR: &str = ".ftpd/staging";

/// Size limits the root enforces on uploads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Largest file an upload may create.
    pub max_file_size: Option<u64>,
    /// Most bytes all files in the root may take together, uploads in progress included.
    pub quota: Option<u64>,
}

/// Bytes in the root, and bytes promised to uploads in progress.
#[derive(Debug, Default)]
struct Usage {
    used: u64,
    reserved: u64,
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
    /// Upload size limits.
    limits: Limits,
    /// What the files in the root take, for the quota (counted only when there is one).
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
    /// Opens `path` as a storage root, creating its private staging directory. Fails when the
    /// root is missing, not a directory, or not writable.
    pub fn open(path: &Path) -> Result<Root> {
        Self::open_with_limits(path, Limits::default())
    }

    /// Like [`Root::open`], enforcing `limits` on uploads.
    pub fn open_with_limits(path: &Path, limits: Limits) -> Result<Root> {
        let shown = path.display().to_string();
        let dir = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|e| Error::io(&shown, "open storage root", e))?;
        dir.create_dir_all(STAGING_DIR)
            .map_err(|e| Error::io(&shown, "create staging directory in", e))?;
        let staging = dir
            .open_dir(STAGING_DIR)
            .map_err(|e| Error::io(&shown, "open staging directory in", e))?;
        dir.create_dir_all(digests::DIGESTS_DIR)
            .map_err(|e| Error::io(&shown, "create digests directory in", e))?;
        let digests = dir
            .open_dir(digests::DIGESTS_DIR)
            .map_err(|e| Error::io(&shown, "open digests directory in", e))?;
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
                limits,
                usage: Mutex::new(Usage::default()),
                active: Mutex::new(HashMap::new()),
            }),
        };
        root.recount_usage();
        Ok(root)
    }

    /// Counts what the files in the root take, when there is a quota to check against. Run at
    /// startup and with every sweep, so changes made outside the daemon are noticed.
    pub fn recount_usage(&self) {
        if self.inner.limits.quota.is_none() {
            return;
        }
        let used = tree_size(&self.inner.dir, true);
        self.inner.usage.lock().unwrap().used = used;
    }

    /// Checks an upload of `size` bytes against the limits and reserves `grow` bytes of quota.
    pub(crate) fn reserve(&self, path: &VPath, size: u64, grow: u64) -> Result<()> {
        let limits = self.inner.limits;
        let too_large = |what: String| Error::TooLarge {
            path: path.to_string(),
            what,
        };
        if let Some(max) = limits.max_file_size {
            if size > max {
                return Err(too_large(format!(
                    "{size} bytes is over the server's largest file size of {max} bytes"
                )));
            }
        }
        if let Some(quota) = limits.quota {
            let mut usage = self.inner.usage.lock().unwrap();
            if usage.used + usage.reserved + grow > quota {
                return Err(too_large(format!(
                    "storing {grow} more bytes would exceed the server's quota of {quota} bytes"
                )));
            }
            usage.reserved += grow;
        }
        Ok(())
    }

    /// Gives back a reservation; `stored` is what the root grew by, if the upload was committed.
    pub(crate) fn settle(&self, reserved: u64, stored: Option<i128>) {
        if self.inner.limits.quota.is_none() {
            return;
        }
        let mut usage = self.inner.usage.lock().unwrap();
        usage.reserved -= reserved;
        if let Some(delta) = stored {
            usage.used = (i128::from(usage.used) + delta).max(0) as u64;
        }
    }

    /// Removes staged uploads untouched for longer than `max_age` (abandoned, never resumed).
    /// Returns how many were removed.
    pub fn sweep_staging(&self, max_age: std::time::Duration) -> Result<usize> {
        let shown = "staging directory";
        let active = self.inner.active.lock().unwrap();
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
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.into_std().elapsed().unwrap_or_default() > max_age)
                .unwrap_or(false);
            if old && self.inner.staging.remove_file(&name).is_ok() {
                removed += 1;
            }
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

    /// Opens a regular file for reading.
    pub fn open_read(&self, path: &VPath) -> Result<ReadFile> {
        let shown = path.to_string();
        let file = self
            .dir
            .open(path.rel())
            .map_err(|e| Error::io(&shown, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(&shown, "stat", e))?;
        if meta.is_dir() {
            return Err(Error::IsDirectory(shown));
        }
        if !meta.is_file() {
            return Err(Error::NotAFile(shown));
        }
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

    /// The entries of the directory at `path`, symlinks reported as such, not followed. The
    /// private directory is never listed.
    pub fn list(&self, path: &VPath) -> Result<impl Iterator<Item = FileInfo>> {
        let shown = path.to_string();
        let dir = self.open_dir(path)?;
        // The private directory lies at the top of the root, so only the root's own top hides it.
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
        let r = if parents {
            self.dir.create_dir_all(path.rel())
        } else {
            self.dir.create_dir(path.rel())
        };
        r.map_err(|e| Error::io(&shown, "create directory", e))
    }

    /// Removes a file (not a directory).
    pub fn remove_file(&self, path: &VPath) -> Result<()> {
        let shown = path.to_string();
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
        digests::forget(&self.root.inner.digests, &self.in_root(path));
        self.root.settle(0, Some(-i128::from(size)));
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
        self.dir.remove_dir(path.rel()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                Error::NotEmpty(shown.clone())
            } else if e.kind() == std::io::ErrorKind::NotADirectory {
                Error::NotADirectory(shown.clone())
            } else {
                Error::io(&shown, "remove directory", e)
            }
        })
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
        let dir = &self.dir;
        match dir.symlink_metadata(to.rel()) {
            Ok(_) => return Err(Error::Exists(to.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&to.to_string(), "stat", e)),
        }
        dir.rename(from.rel(), dir, to.rel())
            .map_err(|e| Error::io(&from.to_string(), "rename", e))?;
        digests::forget(&self.root.inner.digests, &self.in_root(from));
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

/// Bytes taken by regular files under `dir`, symlinks not followed; the private directory is
/// skipped at the top.
fn tree_size(dir: &Dir, top: bool) -> u64 {
    let Ok(entries) = dir.entries() else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            if top && entry.file_name() == PRIVATE_DIR {
                continue;
            }
            if let Ok(sub) = entry.open_dir() {
                total += tree_size(&sub, false);
            }
        } else if ft.is_file() {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}
