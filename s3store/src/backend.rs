//! `storage::Backend` on S3: a home is a key prefix, a file an object, a directory a common
//! prefix or a zero-byte marker `dir/`, an upload a [`ResumableUpload`]; what S3 cannot do as
//! the local root does is listed by [`S3Backend::weaker`] and refused rather than half done.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use checksum::{Digest, Hasher};
use storage::{
    Backend, ChunkDigests, FileInfo, FileKind, HomeLimits, HomeUsage, Reading, UploadRequest,
    VPath, Writing, MAX_SIZE, PRIVATE_DIR,
};

use crate::client::{listing_time, next_page, Client, ObjectMeta, Timeouts};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::mtime;
use crate::probe::{probe, Conditional, ProbeReport};
use crate::registry::{BucketRegistry, UploadRegistry};
use crate::upload::{
    bare_etag, digest_key, read_digest, sweep_in, write_digest, DigestRecord, Finished, PartBudget,
    PartSize, ResumableUpload, UploadSpec, RESERVED_PREFIX,
};
use crate::usage::{HomeCount, UsageLedger};

/// The memory all uploads' part buffers may take together unless told otherwise.
pub const DEFAULT_PART_BUDGET: u64 = 256 << 20;
/// CopyObject's limit: a larger file would need a copy in parts (UploadPartCopy), not built.
const MAX_COPY: u64 = 5 << 30;
/// The most objects a directory rename copies: one request per object (two with its digest
/// record), each a chance to stop half way.
const MAX_DIR_RENAME_OBJECTS: usize = 1000;
/// The most bytes a directory rename copies (server-side, but not instant).
const MAX_DIR_RENAME_BYTES: u64 = 10 << 30;
/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;

/// How the backend is set up, beside where the bucket is ([`Config`]).
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Memory for part buffers, shared by every upload (`ftpd --s3-part-memory`).
    pub part_budget: u64,
    /// The part size of uploads; doubled for a file that would need more than 10,000 parts.
    pub part_size: PartSize,
    /// Largest file an upload may create.
    pub max_file_size: Option<u64>,
    /// Most bytes all files under the configured prefix may take, uploads in flight included.
    pub quota: Option<u64>,
    /// Most files and directory markers under the configured prefix.
    pub max_files: Option<u64>,
    /// Who this daemon is (host/pid), in the leases of its upload records.
    pub holder: String,
    /// How long each kind of request may take.
    pub timeouts: Timeouts,
    /// Where upload-state records are kept: `None` for objects in the bucket
    /// ([`BucketRegistry`], one daemon); a registry that fences for several (`--database`).
    pub registry: Option<Arc<dyn UploadRegistry>>,
    /// Where homes' usage is kept for their quotas: `None` for this process's own counts
    /// (one daemon); a ledger every daemon reserves through for several (`--database`).
    pub usage: Option<Arc<dyn UsageLedger>>,
}

impl Default for S3Options {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ftpd".to_owned());
        S3Options {
            part_budget: DEFAULT_PART_BUDGET,
            part_size: PartSize::default(),
            max_file_size: None,
            quota: None,
            max_files: None,
            holder: format!("{host}/{}", std::process::id()),
            timeouts: Timeouts::default(),
            registry: None,
            usage: None,
        }
    }
}

/// What some keys hold, and what uploads in flight have been promised.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Bytes of the objects.
    bytes: u64,
    /// Objects (files and directory markers; a directory only implied by its files is not one).
    files: u64,
    /// Bytes promised to uploads in flight.
    reserved: u64,
    /// New files promised to uploads in flight.
    reserved_files: u64,
}

impl Tally {
    fn add(&mut self, bytes: i128, files: i128) {
        self.bytes = add_signed(self.bytes, bytes);
        self.files = add_signed(self.files, files);
    }

    fn promise(&mut self, bytes: i128, files: i128) {
        self.reserved = add_signed(self.reserved, bytes);
        self.reserved_files = add_signed(self.reserved_files, files);
    }

    fn usage(&self, quota: Option<u64>, max_files: Option<u64>) -> HomeUsage {
        HomeUsage {
            bytes: self.bytes.saturating_add(self.reserved),
            files: self.files.saturating_add(self.reserved_files),
            quota,
            max_files,
        }
    }

    /// Refuses `grow` more bytes or `new_files` more files over these limits; `whose` names
    /// them in the refusal ("the server's", "ann's").
    fn room(
        &self,
        quota: Option<u64>,
        max_files: Option<u64>,
        grow: u64,
        new_files: u64,
        whose: &str,
        shown: &str,
    ) -> storage::Result<()> {
        if let Some(quota) = quota {
            let total = self
                .bytes
                .checked_add(self.reserved)
                .and_then(|t| t.checked_add(grow));
            if grow > 0 && total.is_none_or(|t| t > quota) {
                return Err(storage::Error::TooLarge {
                    path: shown.to_owned(),
                    what: format!(
                        "storing {grow} more bytes would exceed {whose} quota of {quota} bytes"
                    ),
                });
            }
        }
        if let Some(max) = max_files {
            let total = self
                .files
                .saturating_add(self.reserved_files)
                .saturating_add(new_files);
            if new_files > 0 && total > max {
                return Err(storage::Error::TooLarge {
                    path: shown.to_owned(),
                    what: format!(
                        "{new_files} more files or directories would exceed {whose} limit of {max}"
                    ),
                });
            }
        }
        Ok(())
    }
}

fn clamp_i64(n: i128) -> i64 {
    n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn add_signed(n: u64, delta: i128) -> u64 {
    (i128::from(n) + delta).clamp(0, i128::from(u64::MAX)) as u64
}

/// One home's limits and counts.
#[derive(Debug)]
struct Ledger {
    /// Whose home it is, for refusals.
    user: String,
    /// Its quota and cap on files (none for a home only asked about by `df`).
    limits: HomeLimits,
    /// Counted by a listing the first time it is needed, then kept up to date by every change
    /// this process makes; `None` until then.
    tally: Option<Tally>,
}

/// The counts of the whole store and of the homes asked about.
#[derive(Debug, Default)]
struct Counts {
    /// Everything under the configured prefix but `.ftpd/`, counted at open.
    total: Tally,
    /// By home key prefix (`ann/`).
    homes: HashMap<String, Ledger>,
}

/// What every view of one store shares.
#[derive(Debug)]
struct Shared {
    /// The one client every view and upload sends through.
    client: Arc<Client>,
    /// The limits and sizes the backend was opened with.
    opts: S3Options,
    /// Memory for part buffers, for all uploads.
    budget: PartBudget,
    /// Where every upload's record is kept.
    registry: Arc<dyn UploadRegistry>,
    /// What the service honoured when opened, for [`S3Backend::weaker`] and no clobber.
    report: ProbeReport,
    /// Usage, for quotas and `df`.
    counts: Mutex<Counts>,
    /// Held while a home is first counted, so that with a shared ledger no upload of this
    /// instance reserves in it before its recount is written (which would forget that
    /// reservation).
    counting: tokio::sync::Mutex<()>,
}

impl Shared {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic elsewhere leaves plain numbers behind: still usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a change to `key` in the store and every counted home that holds it.
    fn charge(&self, key: &str, bytes: i128, files: i128) {
        let mut c = self.counts();
        c.total.add(bytes, files);
        for (prefix, l) in c.homes.iter_mut() {
            if key.starts_with(prefix.as_str()) {
                if let Some(t) = &mut l.tally {
                    t.add(bytes, files);
                }
            }
        }
    }

    /// Promises (or, negative, gives back) bytes and files to an upload to `key`.
    fn promise(&self, key: &str, bytes: i128, files: i128) {
        let mut c = self.counts();
        c.total.promise(bytes, files);
        for (prefix, l) in c.homes.iter_mut() {
            if key.starts_with(prefix.as_str()) {
                if let Some(t) = &mut l.tally {
                    t.promise(bytes, files);
                }
            }
        }
    }

    /// The homes holding `key`, by key prefix: those whose usage a change to `key` changes.
    fn homes_of(&self, key: &str) -> Vec<String> {
        self.counts()
            .homes
            .keys()
            .filter(|p| key.starts_with(p.as_str()))
            .cloned()
            .collect()
    }

    /// Counts a change to `key` here and in the shared ledger, if any. The change is made on
    /// the storage already: a ledger that does not answer misses it until the home is
    /// recounted (docs/CLUSTER.md).
    async fn charge_all(&self, key: &str, bytes: i128, files: i128) {
        self.charge(key, bytes, files);
        if let Some(ledger) = &self.opts.usage {
            let (bytes, files) = (clamp_i64(bytes), clamp_i64(files));
            for home in self.homes_of(key) {
                let _ = ledger.add(&home, bytes, files).await;
            }
        }
    }

    /// Bytes and objects under `prefix` (`.ftpd/` aside), by a full listing.
    async fn count(&self, prefix: &str) -> Result<Tally, Error> {
        let mut tally = Tally::default();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_page(prefix, None, token.as_deref())
                .await?;
            for o in page.objects {
                if !o.key.starts_with(RESERVED_PREFIX) {
                    tally.add(i128::from(o.size), 1);
                }
            }
            if !next_page(&mut token, page.next)? {
                return Ok(tally);
            }
        }
    }

    /// Counts the homes holding `key` that are not counted yet.
    async fn count_homes_of(&self, key: &str) -> Result<(), Error> {
        let uncounted = || -> Vec<String> {
            self.counts()
                .homes
                .iter()
                .filter(|(p, l)| key.starts_with(p.as_str()) && l.tally.is_none())
                .map(|(p, _)| p.clone())
                .collect()
        };
        if uncounted().is_empty() {
            return Ok(());
        }
        // Counted once; a home's tally is set only after its recount is written.
        let _counting = self.counting.lock().await;
        for prefix in uncounted() {
            let tally = self.count(&prefix).await?;
            if let Some(ledger) = &self.opts.usage {
                let to = HomeCount {
                    bytes: tally.bytes,
                    files: tally.files,
                };
                ledger.recount(&prefix, to).await?;
            }
            if let Some(l) = self.counts().homes.get_mut(&prefix) {
                l.tally.get_or_insert(tally);
            }
        }
        Ok(())
    }
}

/// The S3 implementation of [`storage::Backend`]: one bucket and prefix, or one home's view of
/// it. Cheap to clone; views share the client, the part budget and the counts.
#[derive(Debug, Clone)]
pub struct S3Backend {
    shared: Arc<Shared>,
    /// The view's home as a key prefix relative to the configured one: empty, or `ann/`.
    base: String,
    /// Who works in this view, in the client ids of its upload records, so that users who
    /// share a home never continue each other's uploads.
    user: Option<String>,
}

/// Where a path leads.
enum Found {
    /// An object, with what HEAD said of it.
    File(ObjectMeta),
    /// A marker, or objects below it.
    Dir,
    Nothing,
}

/// The one place an S3 error becomes a storage error, naming `shown` (the path as the view
/// sees it).
fn map(shown: &str, e: Error) -> storage::Error {
    let path = shown.to_owned();
    match e.kind() {
        ErrorKind::NotFound => storage::Error::NotFound(path),
        ErrorKind::AlreadyExists => storage::Error::Exists(path),
        ErrorKind::Denied => storage::Error::Denied {
            path,
            reason: "the storage service refused the request",
        },
        ErrorKind::Unreachable | ErrorKind::Transient => storage::Error::Unavailable {
            path,
            why: e.to_string(),
        },
        // The local root's word for it: the upload goes on elsewhere, this writer stops.
        ErrorKind::Fenced => storage::Error::Busy { path },
        ErrorKind::Registry => storage::Error::Unavailable {
            path,
            why: e.to_string(),
        },
        ErrorKind::Protocol | ErrorKind::Config => storage::Error::Io {
            path,
            op: "S3 request",
            source: io::Error::other(e.to_string()),
        },
    }
}

/// Refuses a key in the reserved `.ftpd/` prefix (where upload and digest records live).
fn refuse_reserved(key: &str, shown: &str) -> storage::Result<()> {
    if key.split('/').next() == Some(PRIVATE_DIR) {
        return Err(storage::Error::Denied {
            path: shown.to_owned(),
            reason: "reserved name",
        });
    }
    Ok(())
}

/// `/a/b` for the key names `a`, `b` as a client sees them.
fn shown_of(names: &[&str]) -> String {
    format!("/{}", names.join("/"))
}

/// Whether a digest record still describes the object HEAD found.
fn describes(rec: &DigestRecord, meta: &ObjectMeta) -> bool {
    rec.size == meta.size
        && rec
            .etag
            .as_deref()
            .is_none_or(|e| e == bare_etag(&meta.etag))
}

impl S3Backend {
    /// Opens the store: probes it once (reachable, writable, which conditional writes the
    /// service honours) and counts what it holds. Fails with one line for a person: bad
    /// credentials, an endpoint that does not answer, a bucket that does not exist.
    pub async fn open(config: Config, opts: S3Options) -> Result<S3Backend, Error> {
        let bucket = config.bucket.clone();
        let client = Arc::new(Client::new(config, opts.timeouts)?);
        let budget = PartBudget::new(opts.part_budget);
        budget.check(opts.part_size).map_err(|_| {
            Error::with(
                ErrorKind::Config,
                format!(
                    "the part memory ({} bytes) is smaller than one part ({} bytes)",
                    opts.part_budget,
                    opts.part_size.get()
                ),
            )
        })?;
        let report = probe(&client).await.map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::with(
                ErrorKind::Config,
                format!("the bucket {bucket:?} does not exist"),
            ),
            _ => e,
        })?;
        let registry = opts
            .registry
            .clone()
            .unwrap_or_else(|| Arc::new(BucketRegistry::new(client.clone())));
        let shared = Arc::new(Shared {
            client,
            opts,
            budget,
            registry,
            report,
            counts: Mutex::default(),
            counting: tokio::sync::Mutex::default(),
        });
        let total = shared.count("").await?;
        shared.counts().total = total;
        Ok(S3Backend {
            shared,
            base: String::new(),
            user: None,
        })
    }

    /// What the service honoured when opened, for `--check-config`.
    pub fn probe_report(&self) -> ProbeReport {
        self.shared.report
    }

    /// Bytes of part memory no upload holds now (for metrics, and tests of the budget).
    pub fn part_memory_available(&self) -> usize {
        self.shared.budget.available()
    }

    /// The client, for tests and tools that look at the bucket itself.
    pub fn client(&self) -> &Arc<Client> {
        &self.shared.client
    }

    /// The key of `path` (relative to the configured prefix); the reserved `.ftpd/` is never
    /// one, whatever the path checks before did.
    fn key(&self, path: &VPath) -> storage::Result<String> {
        let rel = if path.is_root() { "" } else { path.rel() };
        let key = format!("{}{rel}", self.base);
        refuse_reserved(&key, &path.to_string())?;
        Ok(key)
    }

    /// The key prefix of the directory `path`: the view's base for its root (empty for the
    /// store's), else ending in `/`.
    fn dir_prefix(&self, path: &VPath) -> storage::Result<String> {
        if path.is_root() {
            return Ok(self.base.clone());
        }
        Ok(self.key(path)? + "/")
    }

    /// What `key` is: an object, a directory (a marker, or objects below it), or nothing. A
    /// file and a directory of the same name are the file.
    async fn find_key(&self, key: &str, shown: &str) -> storage::Result<Found> {
        match self.client().head(key).await {
            Ok(meta) => return Ok(Found::File(meta)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(map(shown, e)),
        }
        let page = self
            .client()
            .list_page_of(&format!("{key}/"), Some("/"), None, Some(1))
            .await
            .map_err(|e| map(shown, e))?;
        Ok(if page.objects.is_empty() && page.prefixes.is_empty() {
            Found::Nothing
        } else {
            Found::Dir
        })
    }

    async fn find(&self, path: &VPath) -> storage::Result<Found> {
        if path.is_root() {
            return Ok(Found::Dir);
        }
        let key = self.key(path)?;
        self.find_key(&key, &path.to_string()).await
    }

    /// The time the client sent with the upload of `key`, while the object is the one that
    /// upload stored; else its Last-Modified.
    async fn mtime_of(
        &self,
        key: &str,
        meta: &ObjectMeta,
        shown: &str,
    ) -> storage::Result<Option<i64>> {
        let kept = mtime::kept(self.client(), key, &meta.etag)
            .await
            .map_err(|e| map(shown, e))?;
        Ok(kept.or(meta.modified))
    }

    /// Refuses what an upload of `size` bytes to `key` (replacing `existing` bytes) would take
    /// over the store's or a home's limits, or promises it to the upload.
    async fn reserve(
        &self,
        key: &str,
        shown: &str,
        size: u64,
        existing: Option<u64>,
    ) -> storage::Result<Reservation> {
        self.shared
            .count_homes_of(key)
            .await
            .map_err(|e| map(shown, e))?;
        let grow = size.saturating_sub(existing.unwrap_or(0));
        let new_files = u64::from(existing.is_none());
        let mut reservation = Reservation {
            shared: self.shared.clone(),
            key: key.to_owned(),
            bytes: 0,
            files: 0,
            in_ledger: Vec::new(),
        };
        if let Some(ledger) = &self.shared.opts.usage {
            let homes: Vec<(String, String, HomeLimits)> = self
                .shared
                .counts()
                .homes
                .iter()
                .filter(|(p, _)| key.starts_with(p.as_str()))
                .map(|(p, l)| (p.clone(), l.user.clone(), l.limits))
                .collect();
            for (home, user, limits) in homes {
                // A ledger that does not answer cannot say there is room: the upload is
                // refused as worth a retry, never let over the quota.
                let reserved = ledger
                    .reserve(&home, grow, new_files, limits)
                    .await
                    .map_err(|e| map(shown, e))?;
                let Some(id) = reserved else {
                    // Refused with the words the local count uses, from the shared count.
                    let now = ledger.usage(&home).await.map_err(|e| map(shown, e))?;
                    let t = Tally {
                        bytes: now.bytes,
                        files: now.files,
                        ..Tally::default()
                    };
                    let whose = format!("{user}'s");
                    t.room(
                        limits.quota,
                        limits.max_files,
                        grow,
                        new_files,
                        &whose,
                        shown,
                    )?;
                    // Room again by now (a delete elsewhere): still refused, this once.
                    return Err(storage::Error::Unavailable {
                        path: shown.to_owned(),
                        why: "the quota changed while reserving".to_owned(),
                    });
                };
                reservation.in_ledger.push((home, id));
            }
        }
        {
            let c = self.shared.counts();
            let o = &self.shared.opts;
            c.total
                .room(o.quota, o.max_files, grow, new_files, "the server's", shown)?;
            for (prefix, l) in &c.homes {
                if self.shared.opts.usage.is_some() {
                    // The shared ledger checked the homes above.
                    break;
                }
                if let (true, Some(t)) = (key.starts_with(prefix.as_str()), &l.tally) {
                    let whose = format!("{}'s", l.user);
                    t.room(
                        l.limits.quota,
                        l.limits.max_files,
                        grow,
                        new_files,
                        &whose,
                        shown,
                    )?;
                }
            }
        }
        self.shared
            .promise(key, i128::from(grow), i128::from(new_files));
        reservation.bytes = grow;
        reservation.files = new_files;
        Ok(reservation)
    }

    /// Refuses `n` more directory markers over the limits.
    async fn room_for_dirs(&self, key: &str, shown: &str, n: u64) -> storage::Result<()> {
        self.shared
            .count_homes_of(key)
            .await
            .map_err(|e| map(shown, e))?;
        let c = self.shared.counts();
        let o = &self.shared.opts;
        c.total
            .room(None, o.max_files, 0, n, "the server's", shown)?;
        for (prefix, l) in &c.homes {
            if let (true, Some(t)) = (key.starts_with(prefix.as_str()), &l.tally) {
                t.room(
                    None,
                    l.limits.max_files,
                    0,
                    n,
                    &format!("{}'s", l.user),
                    shown,
                )?;
            }
        }
        Ok(())
    }

    /// The part size for a file of `size` bytes: the configured one, doubled until the file
    /// fits in S3's 10,000 parts.
    fn part_for(&self, size: u64, shown: &str) -> storage::Result<PartSize> {
        let mut part = self.shared.opts.part_size.get();
        while size.div_ceil(part) > MAX_PARTS {
            part = part.saturating_mul(2);
        }
        PartSize::new(part)
            .filter(|p| self.shared.budget.check(*p).is_ok())
            .ok_or_else(|| storage::Error::TooLarge {
                path: shown.to_owned(),
                what: format!("{size} bytes need larger parts than the server's S3 part memory"),
            })
    }

    /// Copies one object (and its digest record, when it still describes it) to `to`.
    async fn copy_object(
        &self,
        from: &str,
        meta: &ObjectMeta,
        to: &str,
        shown: &str,
    ) -> storage::Result<()> {
        let client = self.client();
        let record = read_digest(client, from).await.ok().flatten();
        let kept = if from.ends_with('/') {
            None // a directory marker has no time of its own
        } else {
            mtime::kept(client, from, &meta.etag)
                .await
                .map_err(|e| map(shown, e))?
        };
        let etag = client.copy(from, to).await.map_err(|e| map(shown, e))?;
        if !to.ends_with('/') {
            // Tied to the copy's own ETag; also clears what an earlier file there left.
            mtime::keep(client, to, kept, &etag)
                .await
                .map_err(|e| map(shown, e))?;
        }
        if let Some(mut rec) = record.filter(|r| describes(r, meta)) {
            // The copy has an ETag of its own (a copied multipart object's differs).
            rec.etag = (!etag.is_empty()).then(|| bare_etag(&etag).to_owned());
            write_digest(client, to, &rec)
                .await
                .map_err(|e| map(shown, e))?;
        }
        Ok(())
    }

    /// Deletes an object, its digest record and its kept time (those first: a failure between
    /// them leaves an object the daemon hashes and shows with its Last-Modified, never a record
    /// that outlives its object and could describe the next one of the same bytes).
    async fn delete_object(&self, key: &str, shown: &str) -> storage::Result<()> {
        let client = self.client();
        if !key.ends_with('/') {
            mtime::forget(client, key)
                .await
                .map_err(|e| map(shown, e))?;
        }
        client
            .delete(&digest_key(key))
            .await
            .map_err(|e| map(shown, e))?;
        client.delete(key).await.map_err(|e| map(shown, e))
    }

    /// Puts the kept times of the directory `prefix` on its listed files whose ETag is the
    /// one kept: one listing of the directory's index, a page per 1,000 entries.
    async fn kept_times(
        &self,
        prefix: &str,
        entries: &mut BTreeMap<String, (FileInfo, Option<String>)>,
        shown: &str,
    ) -> storage::Result<()> {
        let index = mtime::dir_index(prefix);
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client()
                .list_page(&index, Some("/"), token.as_deref())
                .await
                .map_err(|e| map(shown, e))?;
            for o in page.objects {
                let Some((name, t, etag)) =
                    o.key.strip_prefix(index.as_str()).and_then(mtime::parse)
                else {
                    continue;
                };
                if let Some((info, Some(current))) = entries.get_mut(name) {
                    if current == etag {
                        info.mtime = Some(t);
                    }
                }
            }
            if !next_page(&mut token, page.next).map_err(|e| map(shown, e))? {
                return Ok(());
            }
        }
    }

    async fn rename_dir(&self, from: &VPath, fk: &str, tk: &str) -> storage::Result<()> {
        let shown = from.to_string();
        let refuse = |what: String| storage::Error::Unsupported {
            path: shown.clone(),
            what,
        };
        let prefix = format!("{fk}/");
        let mut objects = Vec::new();
        let mut bytes = 0u64;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client()
                .list_page(&prefix, None, token.as_deref())
                .await
                .map_err(|e| map(&shown, e))?;
            for o in page.objects {
                bytes = bytes.saturating_add(o.size);
                objects.push((
                    o.key,
                    ObjectMeta {
                        size: o.size,
                        etag: o.etag,
                        modified: None,
                    },
                ));
            }
            if objects.len() > MAX_DIR_RENAME_OBJECTS {
                return Err(refuse(format!(
                    "not renamed: a directory of more than {MAX_DIR_RENAME_OBJECTS} files \
                     is copied one file at a time on S3, and could be left half moved"
                )));
            }
            if bytes > MAX_DIR_RENAME_BYTES {
                return Err(refuse(format!(
                    "not renamed: a directory of more than {} GiB is copied byte by byte on S3",
                    MAX_DIR_RENAME_BYTES >> 30
                )));
            }
            if !next_page(&mut token, page.next).map_err(|e| map(&shown, e))? {
                break;
            }
        }
        if let Some((k, _)) = objects.iter().find(|(_, meta)| meta.size > MAX_COPY) {
            return Err(refuse(format!(
                "not renamed: it holds a file over 5 GiB ({}), which S3 cannot copy in one request",
                &k[prefix.len()..]
            )));
        }
        let mut copied: Vec<String> = Vec::new();
        for (key, meta) in &objects {
            let to = format!("{tk}/{}", &key[prefix.len()..]);
            if let Err(e) = self.copy_object(key, meta, &to, &shown).await {
                // Refused whole rather than half done: take the copies back.
                for c in &copied {
                    let _ = self.delete_object(c, &shown).await;
                }
                return Err(e);
            }
            copied.push(to);
        }
        for (key, ObjectMeta { size, .. }) in &objects {
            self.delete_object(key, &shown).await?;
            let to = format!("{tk}/{}", &key[prefix.len()..]);
            self.shared.charge_all(key, -i128::from(*size), -1).await;
            self.shared.charge_all(&to, i128::from(*size), 1).await;
        }
        Ok(())
    }
}

/// Bytes and files promised to an upload in flight, given back when it ends however it ends.
#[derive(Debug)]
struct Reservation {
    /// Whose counts hold the promise.
    shared: Arc<Shared>,
    /// Where the upload goes: the homes holding it hold the promise too.
    key: String,
    /// Bytes promised.
    bytes: u64,
    /// New files promised (0 or 1).
    files: u64,
    /// The homes the shared ledger holds the promise in, with its reservation there; emptied
    /// once settled.
    in_ledger: Vec<(String, i64)>,
}

impl Reservation {
    /// The upload stored a change of `bytes` and `files`: the ledger's reservations become
    /// that, before the upload's command is answered (so the next upload sees the room it
    /// left).
    async fn settle(&mut self, bytes: i128, files: i128) {
        let reserved = std::mem::take(&mut self.in_ledger);
        if let Some(ledger) = &self.shared.opts.usage {
            let (bytes, files) = (clamp_i64(bytes), clamp_i64(files));
            for (home, id) in reserved {
                // The file is stored: a ledger that does not answer keeps the reservation
                // standing for it instead (about its size) until the home is recounted.
                let _ = ledger.settle(id, &home, bytes, files).await;
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared
            .promise(&self.key, -i128::from(self.bytes), -i128::from(self.files));
        let reserved = std::mem::take(&mut self.in_ledger);
        if let (false, Some(ledger)) = (reserved.is_empty(), self.shared.opts.usage.clone()) {
            // An upload that ended without storing gives its reservations back; without a
            // runtime (shutting down), or if the ledger does not answer, they expire.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    for (_, id) in reserved {
                        let _ = ledger.release(id).await;
                    }
                });
            }
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        let c = self.shared.client.config();
        format!("s3://{}/{}{}", c.bucket, c.prefix, self.base)
    }

    fn home(&self, home: &VPath, user: &str) -> storage::Result<Arc<dyn Backend>> {
        let base = if home.is_root() {
            self.base.clone()
        } else {
            format!("{}{}/", self.base, home.rel())
        };
        refuse_reserved(&base, &home.to_string())?;
        Ok(Arc::new(S3Backend {
            shared: self.shared.clone(),
            base,
            user: Some(user.to_owned()),
        }))
    }

    fn weaker(&self) -> Vec<String> {
        let mut lines = vec![
            "rename is a copy then a delete, not atomic: a reader may see both names for a \
             moment, and a crash between the two leaves both"
                .to_owned(),
            format!(
                "renaming a directory of more than {MAX_DIR_RENAME_OBJECTS} files or {} GiB, \
                 or a file over 5 GiB, is refused",
                MAX_DIR_RENAME_BYTES >> 30
            ),
            "an empty directory is a zero-byte marker object (dir/); a directory also exists \
             as long as any file lies below it"
                .to_owned(),
            "a rename does not check the target again at the copy: a file created there \
             between the check and the copy is replaced"
                .to_owned(),
            "usage for quotas is counted once by a listing and then kept by this daemon: \
             changes made by other tools are not seen until a restart"
                .to_owned(),
            "uploads in a BLAKE3 session cannot be resumed (the hasher's state is not saved)"
                .to_owned(),
        ];
        if self.shared.report.complete_if_none_match == Conditional::Ignored {
            lines.push(
                "no clobber is a HEAD before completion: two racing uploads to one new name \
                 can both succeed, the last replacing the first"
                    .to_owned(),
            );
        }
        if self.shared.report.put_if_none_match == Conditional::Ignored {
            lines.push(
                "mkdir of a new directory races with another mkdir of it (both succeed)".to_owned(),
            );
        }
        lines
    }

    async fn stat(&self, path: &VPath) -> storage::Result<FileInfo> {
        let shown = path.to_string();
        match self.find(path).await? {
            Found::File(meta) => Ok(FileInfo {
                mtime: self.mtime_of(&self.key(path)?, &meta, &shown).await?,
                name: shown,
                kind: FileKind::File,
                size: meta.size,
            }),
            Found::Dir => Ok(FileInfo {
                name: shown,
                kind: FileKind::Dir,
                size: 0,
                mtime: None,
            }),
            Found::Nothing => Err(storage::Error::NotFound(shown)),
        }
    }

    async fn check_dir(&self, path: &VPath) -> storage::Result<()> {
        match self.find(path).await? {
            Found::Dir => Ok(()),
            Found::File(_) => Err(storage::Error::NotADirectory(path.to_string())),
            Found::Nothing => Err(storage::Error::NotFound(path.to_string())),
        }
    }

    async fn list(&self, dir: &VPath, max: usize) -> storage::Result<Vec<FileInfo>> {
        let shown = dir.to_string();
        let prefix = self.dir_prefix(dir)?;
        // The `max` first names, whatever order the pages come in (S3 sorts keys, and `a b`
        // comes before the prefix `a/` but after the name `a`): memory stays bounded by `max`.
        // Each with its object's ETag (files only), to match the kept times against.
        let mut entries: BTreeMap<String, (FileInfo, Option<String>)> = BTreeMap::new();
        let mut anything = false;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client()
                .list_page(&prefix, Some("/"), token.as_deref())
                .await
                .map_err(|e| map(&shown, e))?;
            for o in page.objects {
                anything = true;
                let Some(name) = o.key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if name.is_empty() || refuse_reserved(&o.key, "").is_err() {
                    continue; // the directory's own marker, or the daemon's
                }
                // A file and a directory of the same name: the file.
                entries.insert(
                    name.to_owned(),
                    (
                        FileInfo {
                            name: name.to_owned(),
                            kind: FileKind::File,
                            size: o.size,
                            mtime: listing_time(&o.last_modified),
                        },
                        Some(bare_etag(&o.etag).to_owned()),
                    ),
                );
            }
            for p in page.prefixes {
                anything = true;
                let Some(name) = p.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let name = name.trim_end_matches('/');
                if name.is_empty() || refuse_reserved(&p, "").is_err() {
                    continue;
                }
                entries.entry(name.to_owned()).or_insert_with(|| {
                    (
                        FileInfo {
                            name: name.to_owned(),
                            kind: FileKind::Dir,
                            size: 0,
                            mtime: None,
                        },
                        None,
                    )
                });
            }
            while entries.len() > max {
                entries.pop_last();
            }
            if !next_page(&mut token, page.next).map_err(|e| map(&shown, e))? {
                break;
            }
        }
        if !anything && !dir.is_root() {
            return match self.find(dir).await? {
                Found::File(_) => Err(storage::Error::NotADirectory(shown)),
                _ => Err(storage::Error::NotFound(shown)),
            };
        }
        if entries.values().any(|(_, etag)| etag.is_some()) {
            self.kept_times(&prefix, &mut entries, &shown).await?;
        }
        Ok(entries.into_values().map(|(info, _)| info).collect())
    }

    async fn mkdir(&self, path: &VPath, parents: bool) -> storage::Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(storage::Error::Exists(shown));
        }
        let names: Vec<&str> = path.components().collect();
        // The first name that does not exist yet; every one after it is missing too.
        let first_missing = if parents {
            let mut at = names.len();
            for i in 0..names.len() {
                let sub = shown_of(&names[..=i]);
                let key = format!("{}{}", self.base, names[..=i].join("/"));
                refuse_reserved(&key, &sub)?;
                match self.find_key(&key, &sub).await? {
                    Found::Dir => {}
                    Found::File(_) => return Err(storage::Error::NotADirectory(sub)),
                    Found::Nothing => {
                        at = i;
                        break;
                    }
                }
            }
            at
        } else {
            if let Some((parent, _)) = path.split_last() {
                match self.find(&parent).await? {
                    Found::Dir => {}
                    Found::File(_) => {
                        return Err(storage::Error::NotADirectory(parent.to_string()))
                    }
                    Found::Nothing => return Err(storage::Error::NotFound(shown)),
                }
            }
            match self.find(path).await? {
                Found::Nothing => names.len() - 1,
                _ => return Err(storage::Error::Exists(shown)),
            }
        };
        let key = self.key(path)?;
        let missing = (names.len() - first_missing) as u64;
        if missing == 0 {
            return Ok(());
        }
        self.room_for_dirs(&key, &shown, missing).await?;
        for i in first_missing..names.len() {
            let sub = shown_of(&names[..=i]);
            let marker = format!("{}{}/", self.base, names[..=i].join("/"));
            match self.client().put(&marker, Bytes::new(), true).await {
                Ok(_) => self.shared.charge_all(&marker, 0, 1).await,
                // Made meanwhile by someone else: there, as asked, unless it was the one asked
                // for without parents.
                Err(e)
                    if e.kind() == ErrorKind::AlreadyExists && (parents || i + 1 < names.len()) => {
                }
                Err(e) => return Err(map(&sub, e)),
            }
        }
        Ok(())
    }

    async fn remove_file(&self, path: &VPath) -> storage::Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(storage::Error::IsDirectory(shown));
        }
        let key = self.key(path)?;
        match self.find_key(&key, &shown).await? {
            Found::File(meta) => {
                self.delete_object(&key, &shown).await?;
                self.shared
                    .charge_all(&key, -i128::from(meta.size), -1)
                    .await;
                Ok(())
            }
            Found::Dir => Err(storage::Error::IsDirectory(shown)),
            Found::Nothing => Err(storage::Error::NotFound(shown)),
        }
    }

    async fn remove_dir(&self, path: &VPath) -> storage::Result<()> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(storage::Error::Denied {
                path: shown,
                reason: "cannot remove the root",
            });
        }
        let key = self.key(path)?;
        match self.client().head(&key).await {
            Ok(_) => return Err(storage::Error::NotADirectory(shown)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(map(&shown, e)),
        }
        let marker = format!("{key}/");
        // Two objects are enough to tell: the marker and one other.
        let page = self
            .client()
            .list_page_of(&marker, None, None, Some(2))
            .await
            .map_err(|e| map(&shown, e))?;
        if page.objects.iter().any(|o| o.key != marker) {
            return Err(storage::Error::NotEmpty(shown));
        }
        if page.objects.is_empty() {
            return Err(storage::Error::NotFound(shown));
        }
        self.client()
            .delete(&marker)
            .await
            .map_err(|e| map(&shown, e))?;
        self.shared.charge_all(&marker, 0, -1).await;
        Ok(())
    }

    async fn rename(&self, from: &VPath, to: &VPath) -> storage::Result<()> {
        if from.is_root() || to.is_root() {
            return Err(storage::Error::Denied {
                path: from.to_string(),
                reason: "cannot rename the root",
            });
        }
        if to.rel().starts_with(&format!("{}/", from.rel())) {
            return Err(storage::Error::Denied {
                path: to.to_string(),
                reason: "cannot move a directory inside itself",
            });
        }
        let (fk, tk) = (self.key(from)?, self.key(to)?);
        if let Some((parent, _)) = to.split_last() {
            match self.find(&parent).await? {
                Found::Dir => {}
                Found::File(_) => return Err(storage::Error::NotADirectory(parent.to_string())),
                Found::Nothing => return Err(storage::Error::NotFound(parent.to_string())),
            }
        }
        let found = self.find(from).await?;
        if !matches!(found, Found::Nothing) && !matches!(self.find(to).await?, Found::Nothing) {
            return Err(storage::Error::Exists(to.to_string()));
        }
        let shown = from.to_string();
        match found {
            Found::Nothing => Err(storage::Error::NotFound(shown)),
            Found::File(meta) => {
                if meta.size > MAX_COPY {
                    return Err(storage::Error::Unsupported {
                        path: shown,
                        what: "not renamed: a file over 5 GiB cannot be copied in one request \
                               on S3 (a copy in parts is not built)"
                            .to_owned(),
                    });
                }
                self.copy_object(&fk, &meta, &tk, &shown).await?;
                self.delete_object(&fk, &shown).await?;
                self.shared
                    .charge_all(&fk, -i128::from(meta.size), -1)
                    .await;
                self.shared.charge_all(&tk, i128::from(meta.size), 1).await;
                Ok(())
            }
            Found::Dir => self.rename_dir(from, &fk, &tk).await,
        }
    }

    async fn read(&self, path: &VPath, offset: u64) -> storage::Result<Reading> {
        let shown = path.to_string();
        if path.is_root() {
            return Err(storage::Error::IsDirectory(shown));
        }
        let key = self.key(path)?;
        let meta = match self.find_key(&key, &shown).await? {
            Found::File(meta) => meta,
            Found::Dir => return Err(storage::Error::IsDirectory(shown)),
            Found::Nothing => return Err(storage::Error::NotFound(shown)),
        };
        if offset > meta.size {
            return Err(storage::Error::PastEnd {
                path: shown,
                offset,
                size: meta.size,
            });
        }
        // No record, or one that cannot be read, is the same to a download: it hashes.
        let record = read_digest(self.client(), &key)
            .await
            .ok()
            .flatten()
            .filter(|r| describes(r, &meta));
        // The record holds the client's time too; only a file without one (put by another
        // tool) costs the index's listing.
        let mtime = match &record {
            Some(r) => r.mtime.or(meta.modified),
            None => self.mtime_of(&key, &meta, &shown).await?,
        };
        let recorded = record.map(|r| ChunkDigests {
            chunk: r.chunk,
            chunks: r.chunks,
            digest: r.digest,
        });
        let body: futures::stream::BoxStream<'static, storage::Result<Bytes>> =
            if offset == meta.size {
                Box::pin(futures::stream::empty())
            } else {
                let download = self
                    .client()
                    .get(&key, offset, None)
                    .await
                    .map_err(|e| map(&shown, e))?;
                if download.total != Some(meta.size) {
                    return Err(storage::Error::Unavailable {
                        path: shown,
                        why: "the file changed while it was opened".to_owned(),
                    });
                }
                let len = download.len;
                Box::pin(futures::stream::unfold(
                    Some((download, 0u64, shown)),
                    move |state| async move {
                        let (mut d, got, shown) = state?;
                        match d.chunk().await {
                            Ok(Some(bytes)) => {
                                let got = got + bytes.len() as u64;
                                Some((Ok(bytes), Some((d, got, shown))))
                            }
                            Ok(None) if got == len => None,
                            Ok(None) => Some((
                                Err(storage::Error::Incomplete {
                                    path: shown,
                                    written: offset + got,
                                    size: offset + len,
                                }),
                                None,
                            )),
                            Err(e) => Some((Err(map(&shown, e)), None)),
                        }
                    },
                ))
            };
        Ok(Reading {
            size: meta.size,
            mtime,
            recorded,
            body,
        })
    }

    async fn begin_upload(
        &self,
        path: &VPath,
        req: &UploadRequest,
    ) -> storage::Result<Box<dyn Writing>> {
        req.check(path)?;
        let shown = path.to_string();
        let key = self.key(path)?;
        let limit = self
            .shared
            .opts
            .max_file_size
            .unwrap_or(MAX_SIZE)
            .min(MAX_SIZE);
        if req.size > limit {
            return Err(storage::Error::TooLarge {
                path: shown,
                what: format!("{} bytes is over the limit of {limit} bytes", req.size),
            });
        }
        let existing = match self.find_key(&key, &shown).await? {
            Found::File(_) if !req.overwrite => return Err(storage::Error::Exists(shown)),
            Found::File(meta) => Some(meta.size),
            Found::Dir => return Err(storage::Error::IsDirectory(shown)),
            Found::Nothing => None,
        };
        let part_size = self.part_for(req.size, &shown)?;
        let reservation = self.reserve(&key, &shown, req.size, existing).await?;
        // Resumable needs an id to find the upload again and a hasher whose state can be kept.
        let resumable = req.upload_id.is_some() && Hasher::new(req.digest).save().is_some();
        let client_id = req
            .upload_id
            .as_ref()
            .map(|id| format!("{}:{id}", self.user.as_deref().unwrap_or("")));
        let holder = format!(
            "{}/{}",
            self.shared.opts.holder,
            self.user.as_deref().unwrap_or("-")
        );
        let client = self.shared.client.clone();
        let budget = &self.shared.budget;
        let mut up = None;
        if resumable && req.resume {
            let (id, size, kind) = (client_id.clone(), req.size, req.digest);
            let resumed = ResumableUpload::resume_in(
                self.shared.registry.clone(),
                client.clone(),
                &key,
                budget,
                &holder,
                move |r| r.client_id == id && r.size == Some(size) && r.digest_kind == kind,
            )
            .await;
            up = match resumed {
                Ok(up) => up,
                // An unreadable record, or parts the service no longer holds as recorded:
                // nothing to continue, so start anew (which aborts the old upload).
                Err(e) if e.kind() == ErrorKind::Protocol => None,
                Err(e) => return Err(map(&shown, e)),
            };
        }
        let up = match up {
            Some(up) => up,
            None => {
                let spec = UploadSpec {
                    kind: req.digest,
                    part_size,
                    holder,
                    client_id,
                    size: Some(req.size),
                    recorded: resumable,
                };
                ResumableUpload::start_in(self.shared.registry.clone(), client, &key, budget, spec)
                    .await
                    .map_err(|e| map(&shown, e))?
            }
        };
        let offset = up.offset();
        Ok(Box::new(S3Writing {
            prefix: up.hasher().clone(),
            up: Some(up),
            shared: self.shared.clone(),
            key,
            shown,
            size: req.size,
            mtime: req.mtime,
            written: offset,
            resumable,
            failed: false,
            _reservation: reservation,
        }))
    }

    async fn usage(&self) -> storage::Result<HomeUsage> {
        if self.base.is_empty() {
            let o = &self.shared.opts;
            return Ok(self.shared.counts().total.usage(o.quota, o.max_files));
        }
        {
            let mut c = self.shared.counts();
            c.homes.entry(self.base.clone()).or_insert_with(|| Ledger {
                user: self.user.clone().unwrap_or_default(),
                limits: HomeLimits::default(),
                tally: None,
            });
        }
        let shown = "/";
        self.shared
            .count_homes_of(&self.base)
            .await
            .map_err(|e| map(shown, e))?;
        if let Some(ledger) = &self.shared.opts.usage {
            // Every daemon's writes; when the ledger does not answer, this one's count.
            if let Ok(now) = ledger.usage(&self.base).await {
                let limits = self.shared.counts().homes[&self.base].limits;
                return Ok(HomeUsage {
                    bytes: now.bytes,
                    files: now.files,
                    quota: limits.quota,
                    max_files: limits.max_files,
                });
            }
        }
        let c = self.shared.counts();
        let l = &c.homes[&self.base];
        Ok(l.tally
            .unwrap_or_default()
            .usage(l.limits.quota, l.limits.max_files))
    }

    fn set_home_limits(&self, homes: Vec<(VPath, String, HomeLimits)>) {
        let mut c = self.shared.counts();
        for l in c.homes.values_mut() {
            l.limits = HomeLimits::default();
        }
        for (home, user, limits) in homes {
            let base = if home.is_root() {
                self.base.clone()
            } else {
                format!("{}{}/", self.base, home.rel())
            };
            let l = c.homes.entry(base).or_insert_with(|| Ledger {
                user: user.clone(),
                limits,
                tally: None,
            });
            l.user = user;
            l.limits = limits;
        }
    }

    async fn sweep(&self, max_age: Duration) -> storage::Result<usize> {
        sweep_in(self.shared.registry.as_ref(), &self.shared.client, max_age)
            .await
            .map(|v| v.len())
            .map_err(|e| map("/", e))
    }
}

/// An upload through [`S3Backend`].
struct S3Writing {
    /// `None` once committed or aborted.
    up: Option<ResumableUpload>,
    /// The counts to charge once stored.
    shared: Arc<Shared>,
    /// The target's key.
    key: String,
    /// The path as the view sees it, for errors.
    shown: String,
    /// The size the client declared.
    size: u64,
    /// The modification time the client sent, kept once the file is stored.
    mtime: Option<i64>,
    /// Bytes stored and buffered, the resumed ones included.
    written: u64,
    /// The running digest at the resume offset.
    prefix: Hasher,
    /// Whether a dropped upload is kept to resume; otherwise it is aborted.
    resumable: bool,
    /// A write failed: what the upload buffered is no longer known to match what the client
    /// sent, so it takes no more bytes (a resume continues from the last recorded part).
    failed: bool,
    /// The quota this upload holds until it ends.
    _reservation: Reservation,
}

impl S3Writing {
    fn up(&mut self) -> storage::Result<&mut ResumableUpload> {
        let ended = || io::Error::other("the upload has ended after an earlier failure");
        match &mut self.up {
            Some(up) if !self.failed => Ok(up),
            _ => Err(storage::Error::Io {
                path: self.shown.clone(),
                op: "write",
                source: ended(),
            }),
        }
    }
}

#[async_trait]
impl Writing for S3Writing {
    fn offset(&self) -> u64 {
        // Where this writing's client continues: every byte it took, the part still in the
        // buffer included (only a new attempt falls back to the last recorded part).
        self.written
    }

    fn prefix(&self) -> Hasher {
        self.prefix.clone()
    }

    async fn write(&mut self, data: Bytes, running: Digest) -> storage::Result<()> {
        let end = self.written.checked_add(data.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(storage::Error::TooLarge {
                path: self.shown.clone(),
                what: format!("more bytes than the declared {}", self.size),
            });
        }
        let shown = self.shown.clone();
        let last = end == Some(self.size);
        if let Err(e) = self.up()?.write_chunk(&data, running, last).await {
            self.failed = true;
            return Err(map(&shown, e));
        }
        self.written += data.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, digest: Digest, overwrite: bool) -> storage::Result<()> {
        let shown = self.shown.clone();
        if self.written != self.size {
            return Err(storage::Error::Incomplete {
                path: shown,
                written: self.written,
                size: self.size,
            });
        }
        // After a failed write, dropping `self` keeps (or aborts) the upload as a drop does.
        self.up()?;
        let up = self.up.take().ok_or_else(|| storage::Error::Io {
            path: shown.clone(),
            op: "commit",
            source: io::Error::other("the upload has ended"),
        })?;
        // What is there now: for the counts, and for no clobber where the service ignores
        // If-None-Match on completion (elsewhere the completion itself refuses).
        let now = match self.shared.client.head(&self.key).await {
            Ok(meta) => Some(meta.size),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                self.up = Some(up);
                return Err(map(&shown, e));
            }
        };
        if now.is_some() && !overwrite {
            let _ = up.abort().await;
            return Err(storage::Error::Exists(shown));
        }
        match up.finish(digest, overwrite, self.mtime).await {
            Ok(Finished::Stored { size, etag, .. }) => {
                let replaced = now.unwrap_or(0);
                let (bytes, files) = (
                    i128::from(size) - i128::from(replaced),
                    i128::from(now.is_none()),
                );
                self.shared.charge(&self.key, bytes, files);
                self._reservation.settle(bytes, files).await;
                // The file is stored and visible: a time that cannot be kept is not a failed
                // upload (the file shows its Last-Modified, and a mirror sends it again).
                let _ = mtime::keep(&self.shared.client, &self.key, self.mtime, &etag).await;
                Ok(())
            }
            // The transfer engine verified these bytes: a difference here is bytes lost on
            // the way to S3, or a bug, never the client's doing.
            Ok(Finished::Mismatch { .. }) => Err(storage::Error::Io {
                path: shown,
                op: "store",
                source: io::Error::other(
                    "the bytes sent to S3 do not hash to the verified digest; nothing was stored",
                ),
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(storage::Error::Exists(shown)),
            Err(e) => Err(map(&shown, e)),
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(up) = self.up.take() {
            // Best effort: what is left, the sweeper removes.
            let _ = up.abort().await;
        }
    }
}

impl Drop for S3Writing {
    fn drop(&mut self) {
        // A dropped upload without an id can never be resumed: abort it now rather than
        // leave it to the sweeper (which still catches it if this cannot run).
        if let (false, Some(up)) = (self.resumable, self.up.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = up.abort().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_storage_kinds_naming_the_path_as_seen() {
        let cases = [
            (ErrorKind::NotFound, "/a: no such file or directory"),
            (ErrorKind::AlreadyExists, "/a: already exists"),
            (
                ErrorKind::Unreachable,
                "/a: the storage service is unavailable (the S3 endpoint did not answer)",
            ),
        ];
        for (kind, text) in cases {
            assert_eq!(map("/a", Error::with(kind, "x")).to_string(), text);
        }
        assert!(matches!(
            map("/a", Error::with(ErrorKind::Transient, "x")),
            storage::Error::Unavailable { .. }
        ));
        assert!(matches!(
            map("/a", Error::with(ErrorKind::Protocol, "x")),
            storage::Error::Io { .. }
        ));
    }

    #[test]
    fn the_reserved_prefix_is_never_a_key() {
        assert!(refuse_reserved(".ftpd", "/.ftpd").is_err());
        assert!(refuse_reserved(".ftpd/digests/x", "/x").is_err());
        assert!(refuse_reserved(".ftpd/", "/").is_err());
        assert!(refuse_reserved("ann/.ftpd/x", "/.ftpd/x").is_ok());
        assert!(refuse_reserved(".ftpdx", "/.ftpdx").is_ok());
    }
}
