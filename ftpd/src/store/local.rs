//! The local root as a [`Backend`]: [`Root`] and [`Home`] behind the async trait, each of their
//! blocking calls on tokio's blocking threads (the daemon's runtime: `storage` itself has
//! none), so that the local root answers the same contract as every other backend and the
//! namespace commands take one path. Transfers, listings and scrub keep the daemon's own faster
//! paths to the root (zero-copy reads, batch commits, the hashing cache).

use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt as _};
use protocol::{Digest, Hasher};

use storage::{
    Backend, ChunkDigests, Error, FileInfo, Home, HomeLimits, HomeUsage, Reading, Result, Root,
    Upload, UploadRequest, VPath, Writing,
};

/// How much of a file one blocking read takes: large enough that the hop to a blocking thread
/// is a small part of it, small enough that a slow reader holds little.
const PIECE: usize = 1 << 20;

/// The local root, or one home in it, as a [`Backend`].
#[derive(Clone)]
pub struct LocalBackend {
    /// The root, for what is kept over all homes (usage, limits, staging).
    root: Root,
    /// This view's home: every path resolves beneath it.
    home: Home,
    /// Where the home lies in the root, for its limits and usage.
    prefix: VPath,
    /// The root's directory as the operator named it, for logs.
    location: String,
}

impl LocalBackend {
    /// The whole of `root`.
    pub fn new(root: Root) -> Result<LocalBackend> {
        let home = root.home(&VPath::root())?;
        Ok(LocalBackend {
            root,
            home,
            prefix: VPath::root(),
            location: "the local root".to_owned(),
        })
    }

    /// The view of `home` (beneath this view's) for `user`, as [`Backend::home`] gives it.
    pub fn view(&self, home: &VPath, user: &str) -> Result<LocalBackend> {
        // Checked from this view first, so that a refusal names the home as the caller sees
        // it, not where it lies in the root. (A stat and an open: the trait has this sync.)
        self.home.check_dir(home)?;
        let prefix = self.prefix.join(home);
        let opened = self.root.home(&prefix)?.for_user(user);
        Ok(LocalBackend {
            root: self.root.clone(),
            home: opened,
            prefix,
            location: self.location.clone(),
        })
    }

    /// The root, for the daemon's own paths to it.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// This view's home, for the daemon's own paths to it.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The same backend, saying in logs that it is at `location` (the root knows its
    /// directory only as a handle).
    pub fn located(mut self, location: impl Into<String>) -> LocalBackend {
        self.location = location.into();
        self
    }
}

impl fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBackend")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Runs `f` (blocking disk work) on a blocking thread; `shown` names the path for the error a
/// panic there becomes.
async fn blocking<T: Send + 'static>(
    shown: &VPath,
    op: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(lost(&shown.to_string(), op, e)))
}

/// What a blocking task that panicked (or was cancelled at shutdown) leaves of an operation.
fn lost(shown: &str, op: &'static str, e: tokio::task::JoinError) -> Error {
    Error::Io {
        path: shown.to_owned(),
        op,
        source: io::Error::other(e.to_string()),
    }
}

/// One listing entry, ordered by name alone (for the bounded heap in `list`).
struct ByName(FileInfo);

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn home(&self, home: &VPath, user: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.view(home, user)?))
    }

    fn weaker(&self) -> Vec<String> {
        Vec::new()
    }

    async fn stat(&self, path: &VPath) -> Result<FileInfo> {
        let (home, p) = (self.home.clone(), path.clone());
        blocking(path, "stat", move || home.stat(&p)).await
    }

    async fn check_dir(&self, path: &VPath) -> Result<()> {
        let (home, p) = (self.home.clone(), path.clone());
        blocking(path, "stat", move || home.check_dir(&p)).await
    }

    async fn list(&self, dir: &VPath, max: usize) -> Result<Vec<FileInfo>> {
        let (home, p) = (self.home.clone(), dir.clone());
        blocking(dir, "list", move || {
            // The first `max` by name, holding no more than `max + 1` however large the
            // directory: the largest is dropped whenever there is one too many.
            let mut first = BinaryHeap::new();
            for entry in home.list(&p)? {
                first.push(ByName(entry));
                if first.len() > max {
                    first.pop();
                }
            }
            Ok(first.into_sorted_vec().into_iter().map(|e| e.0).collect())
        })
        .await
    }

    async fn mkdir(&self, path: &VPath, parents: bool) -> Result<()> {
        let (home, p) = (self.home.clone(), path.clone());
        blocking(path, "create directory", move || home.mkdir(&p, parents)).await
    }

    async fn remove_file(&self, path: &VPath) -> Result<()> {
        let (home, p) = (self.home.clone(), path.clone());
        blocking(path, "remove", move || home.remove_file(&p)).await
    }

    async fn remove_dir(&self, path: &VPath) -> Result<()> {
        let (home, p) = (self.home.clone(), path.clone());
        blocking(path, "remove directory", move || home.remove_dir(&p)).await
    }

    async fn rename(&self, from: &VPath, to: &VPath) -> Result<()> {
        let (home, f, t) = (self.home.clone(), from.clone(), to.clone());
        blocking(from, "rename", move || home.rename(&f, &t)).await
    }

    async fn read(&self, path: &VPath, offset: u64) -> Result<Reading> {
        let (home, p) = (self.home.clone(), path.clone());
        let opened = blocking(path, "open", move || home.open_read(&p)).await?;
        if offset > opened.size {
            return Err(Error::PastEnd {
                path: path.to_string(),
                offset,
                size: opened.size,
            });
        }
        let recorded = opened.recorded.map(|r| ChunkDigests {
            chunk: r.chunk,
            chunks: r.chunks,
            digest: r.digest,
        });
        Ok(Reading {
            size: opened.size,
            mtime: opened.mtime,
            recorded,
            body: pieces(Arc::new(opened.file), path.to_string(), offset, opened.size),
        })
    }

    async fn begin_upload(&self, path: &VPath, req: &UploadRequest) -> Result<Box<dyn Writing>> {
        let (home, p, r) = (self.home.clone(), path.clone(), req.clone());
        let upload = blocking(path, "begin upload", move || home.begin_upload(&p, &r)).await?;
        Ok(Box::new(LocalWriting {
            shown: path.to_string(),
            offset: upload.offset(),
            prefix: upload.prefix(),
            upload: Some(upload),
        }))
    }

    async fn usage(&self) -> Result<HomeUsage> {
        let (root, prefix) = (self.root.clone(), self.prefix.clone());
        // Only a lock, but one that commits hold while they rename: not on the reactor.
        blocking(&VPath::root(), "measure", move || {
            Ok(root.home_usage(&prefix).unwrap_or_else(|| root.usage()))
        })
        .await
    }

    fn set_home_limits(&self, homes: Vec<(VPath, String, HomeLimits)>) {
        // The trait has this sync: it counts what newly limited homes hold, on the caller's
        // thread (the daemon calls it at start and on a reload, not per request).
        let homes = homes
            .into_iter()
            .map(|(home, user, limits)| (self.prefix.join(&home), user, limits))
            .collect();
        self.root.set_home_limits(homes);
    }

    async fn sweep(&self, max_age: Duration) -> Result<usize> {
        let root = self.root.clone();
        blocking(&VPath::root(), "sweep", move || root.sweep_staging(max_age)).await
    }
}

/// The bytes of `file` from `offset` to `size` (its size when opened), one blocking read of at
/// most [`PIECE`] at a time; a file that ends early ends the stream with
/// [`Error::Incomplete`].
fn pieces(
    file: Arc<File>,
    shown: String,
    offset: u64,
    size: u64,
) -> futures::stream::BoxStream<'static, Result<Bytes>> {
    let start = Some(offset);
    stream::unfold(start, move |at| {
        let (file, shown) = (file.clone(), shown.clone());
        async move {
            let at = at?;
            if at >= size {
                return None;
            }
            let want = (size - at).min(PIECE as u64) as usize;
            let read = tokio::task::spawn_blocking(move || read_at(&file, at, want))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            let piece = match read {
                Ok(buf) if buf.len() == want => buf,
                Ok(buf) => {
                    let written = at + buf.len() as u64;
                    let e = Error::Incomplete {
                        path: shown,
                        written,
                        size,
                    };
                    return Some((Err(e), None));
                }
                Err(e) => return Some((Err(Error::io(&shown, "read", e)), None)),
            };
            Some((Ok(Bytes::from(piece)), Some(at + want as u64)))
        }
    })
    .boxed()
}

/// Up to `want` bytes of `file` from `at`; fewer only at its end.
fn read_at(file: &File, at: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// A staged upload of the local root, moved to a blocking thread for each call.
struct LocalWriting {
    /// The upload; away on a blocking thread during a call, and gone only if one panicked.
    upload: Option<Upload>,
    /// Where the file goes, as the view sees it, for errors.
    shown: String,
    /// Bytes staged so far.
    offset: u64,
    /// The running digest of the bytes an earlier attempt staged.
    prefix: Hasher,
}

impl LocalWriting {
    /// What a call finds when an earlier call's blocking thread panicked with the upload.
    fn gone(&self) -> Error {
        Error::Io {
            path: self.shown.clone(),
            op: "write",
            source: io::Error::other("the upload was lost in an earlier failure"),
        }
    }
}

#[async_trait]
impl Writing for LocalWriting {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn prefix(&self) -> Hasher {
        self.prefix.clone()
    }

    async fn write(&mut self, data: Bytes, running: Digest) -> Result<()> {
        let Some(mut upload) = self.upload.take() else {
            return Err(self.gone());
        };
        let done = tokio::task::spawn_blocking(move || {
            let r = upload.write_chunk(&data, running);
            (upload, r)
        })
        .await;
        let (upload, r) = done.map_err(|e| lost(&self.shown, "write", e))?;
        self.offset = upload.offset();
        self.upload = Some(upload);
        r
    }

    async fn commit(mut self: Box<Self>, digest: Digest, overwrite: bool) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Err(self.gone());
        };
        tokio::task::spawn_blocking(move || upload.commit(digest, overwrite))
            .await
            .unwrap_or_else(|e| Err(lost(&self.shown, "commit", e)))
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(upload) = self.upload.take() {
            let _ = tokio::task::spawn_blocking(move || upload.discard()).await;
        }
    }
}

impl Drop for LocalWriting {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        // Dropping flushes the staged bytes it still buffers: disk work, off the reactor when
        // there is one. A resume that starts before it ends finds fewer bytes (those on disk),
        // never wrong ones: the staging lease orders the two.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(upload))),
            Err(_) => drop(upload),
        }
    }
}
