//! ftpd's storage root: every client path is confined to it, uploads are staged and renamed
//! into place only once verified.
//!
//! Confinement is two layers. [`VPath`] normalizes what a client typed and refuses what can
//! never be valid (`..` above the root, NUL, backslashes, the private `.ftpd` directory). Then
//! every filesystem call goes through a [`cap_std::fs::Dir`] opened on the root, which resolves
//! each name beneath it and refuses to follow `..` or a symlink out of it, the same guarantee
//! `openat2(RESOLVE_BENEATH)` gives, so a symlink swapped in mid-transfer cannot lead outside.

mod error;
mod path;
mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

pub use error::{Error, Result};
pub use path::{VPath, MAX_NAME, MAX_PATH, PRIVATE_DIR};
pub use upload::{Upload, UploadRequest};

/// Where staged uploads live, under [`PRIVATE_DIR`].
const STAGING_DIR: &str = ".ftpd/staging";

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
    /// The root's host path, for log lines only.
    host_path: PathBuf,
    /// Staged uploads open right now, by staging name, so that a newer attempt at the same
    /// upload (a client that reconnected) takes over from the older one instead of mixing in.
    active: Mutex<HashMap<String, Arc<upload::Lease>>>,
}

/// A file opened for reading, with what a client is told about it.
#[derive(Debug)]
pub struct ReadFile {
    pub file: File,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub mtime: Option<i64>,
}

impl Root {
    /// Opens `path` as a storage root, creating its private staging directory. Fails when the
    /// root is missing, not a directory, or not writable.
    pub fn open(path: &Path) -> Result<Root> {
        let shown = path.display().to_string();
        let dir = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|e| Error::io(&shown, "open storage root", e))?;
        dir.create_dir_all(STAGING_DIR)
            .map_err(|e| Error::io(&shown, "create staging directory in", e))?;
        let staging = dir
            .open_dir(STAGING_DIR)
            .map_err(|e| Error::io(&shown, "open staging directory in", e))?;
        // Prove we can write, rather than find out at the first upload.
        let probe = format!("probe-{}", std::process::id());
        staging
            .create(&probe)
            .and_then(|_| staging.remove_file(&probe))
            .map_err(|e| Error::io(&shown, "write to", e))?;
        Ok(Root {
            inner: Arc::new(Inner {
                dir,
                staging,
                host_path: path.to_owned(),
                active: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn host_path(&self) -> &Path {
        &self.inner.host_path
    }

    /// Opens a regular file for reading.
    pub fn open_read(&self, path: &VPath) -> Result<ReadFile> {
        let shown = path.to_string();
        let file = self
            .inner
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
        Ok(ReadFile {
            file: file.into_std(),
            size: meta.len(),
            mtime,
        })
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

    /// Starts (or resumes) a staged upload to `path`; see [`Upload`].
    pub fn begin_upload(&self, path: &VPath, req: &UploadRequest) -> Result<Upload> {
        Upload::begin(self.clone(), path, req)
    }
}
