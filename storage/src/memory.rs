//! A backend kept in memory, for tests of the daemon's remote path: the local root's promises
//! and refusals, with nothing on disk.
//!
//! Everything lives in one `Mutex`'d map from root-relative path to node (directory or file),
//! so every operation sees and changes one consistent state and needs no reasoning about
//! races. Uploads are staged apart, keyed by their target, user and id, and moved into the map
//! whole at commit. What is held against the limits is counted again on every check, not kept
//! in running totals: slower, and obviously right, which is what a test backend is for.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use checksum::{Digest, Hasher};

use crate::{
    Backend, ChunkDigests, ChunkLog, Error, FileInfo, FileKind, HomeLimits, HomeUsage, Reading,
    Result, UploadRequest, VPath, Writing,
};

/// Limits a memory backend enforces over everything it holds (a home's own limits come from
/// [`Backend::set_home_limits`], as on the local root).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryLimits {
    /// Largest file an upload may create.
    pub max_file_size: Option<u64>,
    /// Most bytes all files may take together, uploads in progress and the bytes kept of
    /// interrupted ones included.
    pub quota: Option<u64>,
}

/// A store of files in memory; see the module docs. [`Backend::home`] gives views that share
/// the same files.
pub struct MemoryBackend {
    /// The files, uploads, limits and clock every view of this store shares.
    shared: Arc<Shared>,
    /// Where this view lies in the store ("" for the whole store).
    base: String,
    /// Whose view it is: part of every resumable upload's key, as on the local root, so that
    /// users sharing a home never continue each other's uploads.
    user: String,
}

/// What all views of one store share.
struct Shared {
    /// The store's own limits.
    limits: MemoryLimits,
    /// Everything stored and staged, behind one lock so each operation is atomic.
    state: Mutex<State>,
    /// How far a test moved the clock ahead ([`MemoryBackend::advance`]), for the sweep.
    skew: Mutex<Duration>,
    /// The top directory's modification time (it is no node of its own).
    root_mtime: i64,
}

/// The store's contents.
#[derive(Default)]
struct State {
    /// Files and directories by root-relative path (`a/b`); the top directory is implicit.
    /// Ordered, so that a directory's entries come out sorted by name.
    nodes: BTreeMap<String, Node>,
    /// Uploads in progress and interrupted ones kept for a resume, by upload key.
    uploads: HashMap<String, Staged>,
    /// Homes with limits of their own: (root-relative prefix, user, limits).
    homes: Vec<(String, String, HomeLimits)>,
    /// The last attempt number given to an upload, so that a newer attempt at the same upload
    /// can tell the older one to stop.
    attempts: u64,
}

/// A directory or a file.
enum Node {
    Dir {
        /// Modification time, seconds since the Unix epoch.
        mtime: i64,
    },
    File(Stored),
}

/// A committed file.
#[derive(Clone)]
struct Stored {
    /// The bytes, as the chunks that were written (shared, never copied, by reads).
    pieces: Vec<Bytes>,
    /// Their total length.
    size: u64,
    /// Modification time, seconds since the Unix epoch.
    mtime: i64,
    /// What the upload's chunks were, replayed by reads.
    recorded: ChunkDigests,
}

/// An upload's bytes before they are visible.
struct Staged {
    /// Where it goes, root-relative.
    target: String,
    /// The bytes written so far, in the chunks they came in.
    pieces: Vec<Bytes>,
    /// Their total length.
    written: u64,
    /// The size the upload declared.
    size: u64,
    /// The chunks' running digests, to record; `None` when not worth recording (see
    /// [`ChunkLog::push`]) or when the upload resumed bytes (as on the local root).
    chunks: Option<ChunkLog>,
    /// The attempt writing it; `None` once interrupted (kept for a resume, or the sweep).
    attempt: Option<u64>,
    /// Bytes promised to it while an attempt writes (its size less what it replaces).
    reserved: u64,
    /// Whether it was promised a new file (its target did not exist).
    new_file: bool,
    /// When it was last written, on the store's clock: the sweep removes old interrupted ones.
    touched: Instant,
    /// Whether its bytes outlive its attempt (uploads with an id can be resumed).
    keep: bool,
}

/// Anonymous uploads' keys: never met again, so never resumed.
static ANON: AtomicU64 = AtomicU64::new(0);

impl MemoryBackend {
    /// An empty store without limits.
    pub fn new() -> MemoryBackend {
        Self::with_limits(MemoryLimits::default())
    }

    /// An empty store enforcing `limits`.
    pub fn with_limits(limits: MemoryLimits) -> MemoryBackend {
        MemoryBackend {
            shared: Arc::new(Shared {
                limits,
                state: Mutex::new(State::default()),
                skew: Mutex::new(Duration::ZERO),
                root_mtime: unix(SystemTime::now()),
            }),
            base: String::new(),
            user: String::new(),
        }
    }

    /// Moves the store's clock ahead by `by`, for tests of the sweep without sleeping.
    pub fn advance(&self, by: Duration) {
        let mut skew = self
            .shared
            .skew
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *skew = skew.saturating_add(by);
    }

    /// `path` (as this view sees it) as the store knows it.
    fn key(&self, path: &VPath) -> String {
        join(&self.base, path)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing holding the lock panics midway through a change that matters to a test.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Now, on the store's clock.
    fn now(&self) -> Instant {
        Instant::now() + *self.skew.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Now, seconds since the Unix epoch, on the store's clock.
    fn unix_now(&self) -> i64 {
        unix(SystemTime::now() + *self.skew.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `path` inside the root-relative `base`.
fn join(base: &str, path: &VPath) -> String {
    let rel = if path.is_root() { "" } else { path.rel() };
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_owned(),
        (_, true) => base.to_owned(),
        _ => format!("{base}/{rel}"),
    }
}

/// Whether `key` lies beneath the directory `prefix` ("" holds everything but itself).
fn beneath(key: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return !key.is_empty();
    }
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether a home at `prefix` holds `key` (itself included), as the local root's ledgers do.
fn holds(prefix: &str, key: &str) -> bool {
    key == prefix || beneath(key, prefix)
}

impl State {
    fn is_dir(&self, key: &str) -> bool {
        key.is_empty() || matches!(self.nodes.get(key), Some(Node::Dir { .. }))
    }

    /// Refuses a directory that `key` (`shown` as the view names it) does not name.
    fn dir(&self, key: &str, shown: &VPath) -> Result<()> {
        match self.nodes.get(key) {
            _ if self.is_dir(key) => Ok(()),
            Some(_) => Err(Error::NotADirectory(shown.to_string())),
            None => Err(self.missing(key, shown)),
        }
    }

    /// Why nothing is at `key` (`shown` as the view names it): a path through a file is not
    /// a directory, as the local root's system calls say (ENOTDIR); else there is no such name.
    fn missing(&self, key: &str, shown: &VPath) -> Error {
        let mut above = key;
        while let Some((parent, _)) = above.rsplit_once('/') {
            if let Some(Node::File(_)) = self.nodes.get(parent) {
                return Error::NotADirectory(shown.to_string());
            }
            above = parent;
        }
        Error::NotFound(shown.to_string())
    }

    /// The entries of the directory `dir`, in name order.
    fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let start = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let skip = start.len();
        self.nodes
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .filter_map(move |(k, n)| {
                let name = &k[skip..];
                (!name.contains('/')).then_some((name, n))
            })
    }

    /// Bytes and files beneath `prefix`, uploads in progress counted at what they were
    /// promised and interrupted ones at what they keep, the upload `skip` left out (the one
    /// being measured for).
    fn held(&self, prefix: &str, skip: &str) -> (u64, u64) {
        let (mut bytes, mut files) = (0u64, 0u64);
        for (key, node) in &self.nodes {
            if beneath(key, prefix) {
                files += 1;
                if let Node::File(f) = node {
                    bytes = bytes.saturating_add(f.size);
                }
            }
        }
        for (key, s) in &self.uploads {
            if key == skip || !beneath(&s.target, prefix) {
                continue;
            }
            match s.attempt {
                Some(_) => {
                    bytes = bytes.saturating_add(s.reserved);
                    files += u64::from(s.new_file);
                }
                None => bytes = bytes.saturating_add(s.written),
            }
        }
        (bytes, files)
    }

    /// Refuses `grow` more bytes and `new_files` more files at `key` (`shown` as the view
    /// names it) where the store or a home that holds it has no room for them.
    fn room(
        &self,
        limits: &MemoryLimits,
        key: &str,
        shown: &VPath,
        skip: &str,
        grow: u64,
        new_files: u64,
    ) -> Result<()> {
        let refuse = |what: String| {
            Err(Error::TooLarge {
                path: shown.to_string(),
                what,
            })
        };
        if let Some(quota) = limits.quota {
            if self.held("", skip).0.saturating_add(grow) > quota {
                return refuse(format!(
                    "storing {grow} more bytes would exceed the server's quota of {quota} bytes"
                ));
            }
        }
        for (prefix, user, l) in self.homes.iter().filter(|(p, ..)| holds(p, key)) {
            let (bytes, files) = self.held(prefix, skip);
            if let Some(quota) = l.quota {
                if bytes.saturating_add(grow) > quota {
                    return refuse(format!(
                        "storing {grow} more bytes would exceed {user}'s quota of {quota} bytes"
                    ));
                }
            }
            if let Some(max) = l.max_files {
                if new_files > 0 && files.saturating_add(new_files) > max {
                    return refuse(format!(
                        "{new_files} more files or directories would exceed {user}'s limit of {max}"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn location(&self) -> String {
        format!("memory:/{}", self.base)
    }

    fn home(&self, home: &VPath, user: &str) -> Result<Arc<dyn Backend>> {
        let base = self.key(home);
        self.lock().dir(&base, home)?;
        Ok(Arc::new(MemoryBackend {
            shared: self.shared.clone(),
            base,
            user: user.to_owned(),
        }))
    }

    fn weaker(&self) -> Vec<String> {
        Vec::new()
    }

    async fn stat(&self, path: &VPath) -> Result<FileInfo> {
        let key = self.key(path);
        let st = self.lock();
        let (kind, size, mtime) = match st.nodes.get(&key) {
            _ if key.is_empty() => (FileKind::Dir, 0, self.shared.root_mtime),
            Some(Node::Dir { mtime }) => (FileKind::Dir, 0, *mtime),
            Some(Node::File(f)) => (FileKind::File, f.size, f.mtime),
            None => return Err(st.missing(&key, path)),
        };
        Ok(FileInfo {
            name: path.to_string(),
            kind,
            size,
            mtime: Some(mtime),
        })
    }

    async fn check_dir(&self, path: &VPath) -> Result<()> {
        self.lock().dir(&self.key(path), path)
    }

    async fn list(&self, dir: &VPath, max: usize) -> Result<Vec<FileInfo>> {
        let key = self.key(dir);
        let st = self.lock();
        st.dir(&key, dir)?;
        Ok(st
            .children(&key)
            .take(max)
            .map(|(name, node)| {
                let (kind, size, mtime) = match node {
                    Node::Dir { mtime } => (FileKind::Dir, 0, *mtime),
                    Node::File(f) => (FileKind::File, f.size, f.mtime),
                };
                FileInfo {
                    name: name.to_owned(),
                    kind,
                    size,
                    mtime: Some(mtime),
                }
            })
            .collect())
    }

    async fn mkdir(&self, path: &VPath, parents: bool) -> Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(Error::Exists(shown));
        }
        let key = self.key(path);
        let mtime = self.shared.unix_now();
        let mut st = self.lock();
        let mut missing = Vec::new();
        if parents {
            // Refused whole or made whole: find every missing directory first.
            st.dir(&self.base, &VPath::root())?;
            let mut at = self.base.clone();
            for name in path.components() {
                at = if at.is_empty() {
                    name.to_owned()
                } else {
                    format!("{at}/{name}")
                };
                match st.nodes.get(&at) {
                    Some(Node::Dir { .. }) => {}
                    Some(Node::File(_)) if at == key => return Err(Error::Exists(shown)),
                    Some(Node::File(_)) => return Err(Error::NotADirectory(shown)),
                    None => missing.push(at.clone()),
                }
            }
        } else {
            if st.nodes.contains_key(&key) {
                return Err(Error::Exists(shown));
            }
            let (parent, _) = path.split_last().expect("not the root");
            match st.dir(&self.key(&parent), &parent) {
                Ok(()) => {}
                // As the local root's mkdir(2) says it: about the path asked for.
                Err(Error::NotADirectory(_)) => return Err(Error::NotADirectory(shown)),
                Err(_) => return Err(Error::NotFound(shown)),
            }
            missing.push(key.clone());
        }
        let n = missing.len() as u64;
        st.room(&self.shared.limits, &key, path, "", 0, n)?;
        for at in missing {
            st.nodes.insert(at, Node::Dir { mtime });
        }
        Ok(())
    }

    async fn remove_file(&self, path: &VPath) -> Result<()> {
        let key = self.key(path);
        let mut st = self.lock();
        match st.nodes.get(&key) {
            _ if key.is_empty() => Err(Error::IsDirectory(path.to_string())),
            Some(Node::File(_)) => {
                st.nodes.remove(&key);
                Ok(())
            }
            Some(Node::Dir { .. }) => Err(Error::IsDirectory(path.to_string())),
            None => Err(st.missing(&key, path)),
        }
    }

    async fn remove_dir(&self, path: &VPath) -> Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(Error::Denied {
                path: shown,
                reason: "cannot remove the root",
            });
        }
        let key = self.key(path);
        let mut st = self.lock();
        match st.nodes.get(&key) {
            Some(Node::Dir { .. }) if st.children(&key).next().is_some() => {
                Err(Error::NotEmpty(shown))
            }
            Some(Node::Dir { .. }) => {
                st.nodes.remove(&key);
                Ok(())
            }
            Some(Node::File(_)) => Err(Error::NotADirectory(shown)),
            None => Err(st.missing(&key, path)),
        }
    }

    async fn rename(&self, from: &VPath, to: &VPath) -> Result<()> {
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
        let (from_dir, _) = from.split_last().expect("not the root");
        let (to_dir, _) = to.split_last().expect("not the root");
        let (src, dst) = (self.key(from), self.key(to));
        let mut st = self.lock();
        st.dir(&self.key(&from_dir), &from_dir)?;
        st.dir(&self.key(&to_dir), &to_dir)?;
        if !st.nodes.contains_key(&src) {
            return Err(Error::NotFound(from.to_string()));
        }
        if st.nodes.contains_key(&dst) {
            return Err(Error::Exists(to.to_string()));
        }
        // The node and, for a directory, everything beneath it, under the new name.
        let moved: Vec<String> = st
            .nodes
            .keys()
            .filter(|k| holds(&src, k))
            .cloned()
            .collect();
        for old in moved {
            if let Some(node) = st.nodes.remove(&old) {
                st.nodes.insert(format!("{dst}{}", &old[src.len()..]), node);
            }
        }
        Ok(())
    }

    async fn read(&self, path: &VPath, offset: u64) -> Result<Reading> {
        let key = self.key(path);
        let st = self.lock();
        let file = match st.nodes.get(&key) {
            _ if key.is_empty() => return Err(Error::IsDirectory(path.to_string())),
            Some(Node::File(f)) => f.clone(),
            Some(Node::Dir { .. }) => return Err(Error::IsDirectory(path.to_string())),
            None => return Err(st.missing(&key, path)),
        };
        drop(st);
        if offset > file.size {
            return Err(Error::PastEnd {
                path: path.to_string(),
                offset,
                size: file.size,
            });
        }
        // The pieces from `offset` on, the first cut where the offset falls.
        let mut skip = offset;
        let mut body = Vec::new();
        for piece in file.pieces {
            let len = piece.len() as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            body.push(Ok(piece.slice(skip as usize..)));
            skip = 0;
        }
        Ok(Reading {
            size: file.size,
            mtime: Some(file.mtime),
            recorded: Some(file.recorded),
            body: Box::pin(futures::stream::iter(body)),
        })
    }

    async fn begin_upload(&self, path: &VPath, req: &UploadRequest) -> Result<Box<dyn Writing>> {
        let parent = req.check(path)?;
        let shown = path.to_string();
        let limits = self.shared.limits;
        if let Some(max) = limits.max_file_size {
            if req.size > max {
                return Err(Error::TooLarge {
                    path: shown,
                    what: format!(
                        "{} bytes is over the server's largest file size of {max} bytes",
                        req.size
                    ),
                });
            }
        }
        let key = self.key(path);
        // The key binds the id to the target and the user, as on the local root.
        let upload = match &req.upload_id {
            Some(id) => format!("{key}\0{}\0{id}", self.user),
            None => format!("\0anon\0{}", ANON.fetch_add(1, Ordering::Relaxed)),
        };
        let now = self.shared.now();
        let mut st = self.lock();
        let replaced = match st.nodes.get(&key) {
            Some(Node::Dir { .. }) => return Err(Error::IsDirectory(shown)),
            Some(Node::File(_)) if !req.overwrite => return Err(Error::Exists(shown)),
            Some(Node::File(f)) => Some(f.size),
            None => match st.missing(&key, path) {
                e @ Error::NotADirectory(_) => return Err(e),
                _ => None,
            },
        };
        if !st.is_dir(&self.key(&parent)) {
            return Err(Error::NotFound(parent.to_string()));
        }
        let grow = req.size.saturating_sub(replaced.unwrap_or(0));
        let new_file = replaced.is_none();
        st.room(&limits, &key, path, &upload, grow, u64::from(new_file))?;
        // A resume takes over what an earlier attempt kept (stopping that attempt if it still
        // writes); anything else starts from nothing.
        let earlier = st.uploads.remove(&upload);
        let (mut pieces, mut held) = match earlier {
            Some(s) if req.resume => (s.pieces, s.written),
            _ => (Vec::new(), 0),
        };
        if held > req.size {
            // More kept than the file should have: the earlier attempt was another file.
            (pieces, held) = cut(pieces, req.size);
        }
        let mut prefix = Hasher::new(req.digest);
        for piece in &pieces {
            prefix.update(piece);
        }
        st.attempts += 1;
        let attempt = st.attempts;
        st.uploads.insert(
            upload.clone(),
            Staged {
                target: key,
                pieces,
                written: held,
                size: req.size,
                // Resumed bytes were hashed without their chunks: nothing to record.
                chunks: (held == 0).then(ChunkLog::default),
                attempt: Some(attempt),
                reserved: grow,
                new_file,
                touched: now,
                keep: req.upload_id.is_some(),
            },
        );
        Ok(Box::new(MemoryWriting {
            shared: self.shared.clone(),
            upload,
            attempt,
            target: path.clone(),
            offset: held,
            prefix,
            mtime: req.mtime,
            done: false,
        }))
    }

    async fn usage(&self) -> Result<HomeUsage> {
        let st = self.lock();
        let own = st.homes.iter().find(|(p, ..)| *p == self.base);
        Ok(match own {
            Some((prefix, _, l)) => {
                let (bytes, files) = st.held(prefix, "");
                HomeUsage {
                    bytes,
                    files,
                    quota: l.quota,
                    max_files: l.max_files,
                }
            }
            None => {
                let (bytes, files) = st.held("", "");
                HomeUsage {
                    bytes,
                    files,
                    quota: self.shared.limits.quota,
                    max_files: None,
                }
            }
        })
    }

    fn set_home_limits(&self, homes: Vec<(VPath, String, HomeLimits)>) {
        let homes = homes
            .into_iter()
            .filter(|(_, _, l)| *l != HomeLimits::default())
            .map(|(home, user, l)| (self.key(&home), user, l))
            .collect();
        self.lock().homes = homes;
    }

    async fn sweep(&self, max_age: Duration) -> Result<usize> {
        let now = self.shared.now();
        let mut st = self.lock();
        let before = st.uploads.len();
        st.uploads.retain(|_, s| {
            s.attempt.is_some() || now.saturating_duration_since(s.touched) <= max_age
        });
        Ok(before - st.uploads.len())
    }
}

/// The first `size` bytes of `pieces`, and their length.
fn cut(pieces: Vec<Bytes>, size: u64) -> (Vec<Bytes>, u64) {
    let mut left = size;
    let mut kept = Vec::new();
    for mut piece in pieces {
        if left == 0 {
            break;
        }
        piece.truncate(left.min(piece.len() as u64) as usize);
        left -= piece.len() as u64;
        kept.push(piece);
    }
    (kept, size - left)
}

/// An upload to a memory backend.
struct MemoryWriting {
    /// The store it lands in.
    shared: Arc<Shared>,
    /// Its key among the store's uploads.
    upload: String,
    /// This attempt's number: once a newer attempt took the upload over, it no longer matches.
    attempt: u64,
    /// Where the file goes, as the view sees it, for errors.
    target: VPath,
    /// Bytes stored so far.
    offset: u64,
    /// The running digest of the bytes an earlier attempt kept.
    prefix: Hasher,
    /// Modification time to give the file.
    mtime: Option<i64>,
    /// Committed or aborted: nothing left for `Drop` to do.
    done: bool,
}

impl MemoryWriting {
    fn busy(&self) -> Error {
        Error::Busy {
            path: self.target.to_string(),
        }
    }
}

#[async_trait]
impl Writing for MemoryWriting {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn prefix(&self) -> Hasher {
        self.prefix.clone()
    }

    async fn write(&mut self, data: Bytes, running: Digest) -> Result<()> {
        let now = self.shared.now();
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let Some(s) = st
            .uploads
            .get_mut(&self.upload)
            .filter(|s| s.attempt == Some(self.attempt))
        else {
            return Err(self.busy());
        };
        let len = data.len();
        let end = s.written.checked_add(len as u64);
        if end.is_none_or(|end| end > s.size) {
            return Err(Error::TooLarge {
                path: self.target.to_string(),
                what: format!("more bytes than the declared {}", s.size),
            });
        }
        s.written += len as u64;
        if len > 0 {
            s.pieces.push(data);
        }
        let last = s.written == s.size;
        if let Some(log) = &mut s.chunks {
            if !u32::try_from(len).is_ok_and(|len| log.push(len, running, last)) {
                s.chunks = None;
            }
        }
        s.touched = now;
        self.offset = s.written;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, digest: Digest, overwrite: bool) -> Result<()> {
        let mtime = self.mtime.unwrap_or_else(|| self.shared.unix_now());
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let Some(s) = st
            .uploads
            .get(&self.upload)
            .filter(|s| s.attempt == Some(self.attempt))
        else {
            return Err(self.busy());
        };
        let shown = self.target.to_string();
        if s.written != s.size {
            // Dropped on return: kept for a resume when it has an id.
            return Err(Error::Incomplete {
                path: shown,
                written: s.written,
                size: s.size,
            });
        }
        let (parent, _) = self
            .target
            .split_last()
            .expect("uploads never target the root");
        let key = s.target.clone();
        let parent_key = key.rsplit_once('/').map_or("", |(p, _)| p);
        if !st.is_dir(parent_key) {
            return Err(Error::NotFound(parent.to_string()));
        }
        let replaced = match st.nodes.get(&key) {
            Some(_) if !overwrite => return Err(Error::Exists(shown)),
            Some(Node::Dir { .. }) => return Err(Error::IsDirectory(shown)),
            Some(Node::File(f)) => Some(f.size),
            None => None,
        };
        let grow = s.size.saturating_sub(replaced.unwrap_or(0));
        let new_file = replaced.is_none();
        // Within what was promised, it fits; beyond it (what it replaces shrank or went away
        // meanwhile), it must fit what is left.
        if grow > s.reserved || (new_file && !s.new_file) {
            let limits = self.shared.limits;
            let files = u64::from(new_file && !s.new_file);
            st.room(&limits, &key, &self.target, &self.upload, grow, files)?;
        }
        let s = st.uploads.remove(&self.upload).expect("looked up above");
        let recorded = match s.chunks {
            Some(log) => ChunkDigests {
                chunk: log.len,
                chunks: log.digests,
                digest,
            },
            // Resumed, or in chunks too short to keep: the whole file's digest alone.
            None => ChunkDigests {
                chunk: 0,
                chunks: Vec::new(),
                digest,
            },
        };
        let stored = Stored {
            pieces: s.pieces,
            size: s.size,
            mtime,
            recorded,
        };
        st.nodes.insert(key, Node::File(stored));
        self.done = true;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if st
            .uploads
            .get(&self.upload)
            .is_some_and(|s| s.attempt == Some(self.attempt))
        {
            st.uploads.remove(&self.upload);
        }
        self.done = true;
    }
}

impl Drop for MemoryWriting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = self.shared.now();
        let mut st = self.shared.lock();
        let Some(s) = st.uploads.get_mut(&self.upload) else {
            return;
        };
        if s.attempt != Some(self.attempt) {
            // A newer attempt owns it now.
            return;
        }
        if s.keep {
            s.attempt = None;
            s.touched = now;
        } else {
            st.uploads.remove(&self.upload);
        }
    }
}
