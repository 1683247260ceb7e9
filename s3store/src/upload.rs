//! Resumable, verified uploads: a multipart upload whose running digest is recorded in a small
//! state object after each acknowledged part, completed create-only only when the whole-file
//! digest matches.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use checksum::{Digest, DigestKind, Hasher, SavedState};
use serde::{Deserialize, Serialize};
use storage::ChunkLog;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{next_page, Client};
use crate::error::{Error, ErrorKind, Result};
use crate::registry::{BucketRegistry, UploadRegistry};

/// Keys under this prefix (below the configured one) are the daemon's own records, never
/// shown to users.
pub const RESERVED_PREFIX: &str = ".ftpd/";
/// Where upload-state records live.
pub const UPLOADS_PREFIX: &str = ".ftpd/uploads/";
/// Where the digests recorded at upload live, one object per file, at this prefix + the key.
pub const DIGESTS_PREFIX: &str = ".ftpd/digests/";
/// S3's smallest part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The default part: a power of two, so that BLAKE3 subtrees align with parts.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// S3's largest part number.
const MAX_PARTS: u32 = 10_000;
/// A state record is a few hundred bytes plus 80 a part (10,000 parts: 800 KB) plus 35 a
/// chunk digest kept for a resume (at most [`MAX_RESUMED_CHUNKS`]: 150 KB).
const MAX_RECORD: u64 = 2 << 20;
/// The most chunk digests a state record keeps across a resume: 4 GiB in 1 MiB chunks. The
/// record is written again after every part, so longer lists would cost more than they save;
/// beyond it a resumed upload records only its whole digest.
const MAX_RESUMED_CHUNKS: usize = 4096;
/// A digest record holds up to 65,536 running digests of 32 bytes in hex: about 4.5 MB.
const MAX_DIGEST_RECORD: u64 = 6 << 20;

/// A part size S3 accepts: at least 5 MiB, at most 5 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSize(u64);

impl PartSize {
    pub fn new(bytes: u64) -> Option<PartSize> {
        (MIN_PART_SIZE..=5 << 30)
            .contains(&bytes)
            .then_some(PartSize(bytes))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl Default for PartSize {
    fn default() -> Self {
        PartSize(DEFAULT_PART_SIZE)
    }
}

/// The memory all part buffers together may hold: an upload takes one part's worth before it
/// buffers anything, and waits when the budget is spent.
#[derive(Debug, Clone)]
pub struct PartBudget {
    /// One permit per byte, so uploads of different part sizes share it fairly.
    permits: Arc<Semaphore>,
    /// The budget in bytes, to refuse a part larger than the whole budget.
    total: u64,
}

impl PartBudget {
    pub fn new(total_bytes: u64) -> PartBudget {
        let total = total_bytes.min(Semaphore::MAX_PERMITS as u64);
        PartBudget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Refuses a part that could never fit, before an upload starts.
    pub fn check(&self, part: PartSize) -> Result<u32> {
        u32::try_from(part.get())
            .ok()
            .filter(|_| part.get() <= self.total)
            .ok_or_else(|| Error::with(ErrorKind::Config, "part size larger than the budget"))
    }

    /// Waits until one buffer of `part` fits in the budget.
    pub async fn reserve(&self, part: PartSize) -> Result<OwnedSemaphorePermit> {
        let n = self.check(part)?;
        self.permits
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|e| Error::with(ErrorKind::Config, e))
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// A part stored and acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedPart {
    pub number: u32,
    pub etag: String,
    pub size: u64,
}

/// Who writes the upload now. Each start or resume takes the next token; a writer whose token
/// is no longer the record's has lost the upload (see docs/S3.md on fencing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Which daemon instance (and session) holds it, for the logs.
    pub holder: String,
    /// Increases with every takeover.
    pub token: u64,
}

/// The upload-state record: everything needed to continue an upload after a restart. Plain
/// data, kept by an [`UploadRegistry`]: an object in the bucket, or rows of PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The record's format; a newer daemon reads older ones.
    pub version: u32,
    /// The target key, relative to the configured prefix.
    pub key: String,
    pub upload_id: String,
    pub part_size: u64,
    /// The parts stored and verified, in order, each `part_size` long.
    pub parts: Vec<RecordedPart>,
    pub digest_kind: DigestKind,
    /// The digest state after the recorded parts (hex of the hash crate's own serialization).
    pub digest_state: String,
    pub lease: Lease,
    /// The client's own name for the upload (with its user), so that a resume continues only
    /// the same client upload; `None` in records of uploads without one.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The size the client declared, so that a resume of a different file starts anew.
    #[serde(default)]
    pub size: Option<u64>,
    /// The running digests of the chunks in the recorded parts, when chunks and parts align,
    /// so that a resumed upload still records every chunk's digest for downloads.
    #[serde(default)]
    pub chunks: Option<ChunkLog>,
}

impl UploadRecord {
    /// The bytes stored under the record: where a resumed upload continues.
    pub fn offset(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// The record's key for a target key: a digest of it, so any key (long, odd characters) maps
/// to a short, safe name.
pub fn record_key(key: &str) -> String {
    format!(
        "{UPLOADS_PREFIX}{}.json",
        Digest::of(DigestKind::Blake3, key.as_bytes())
    )
}

/// What the digest record beside a stored object holds: enough for a download to send every
/// chunk's running digest again without hashing, while the object is the one recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRecord {
    /// The object's size when recorded: a record of another size describes another object.
    pub size: u64,
    /// The whole object's digest.
    pub digest: Digest,
    /// The object's ETag when recorded (quotes trimmed): an object replaced by another tool
    /// with the same size voids the record too. `None` in records that predate it.
    #[serde(default)]
    pub etag: Option<String>,
    /// Every chunk but the last has this length; 0 when no chunks are recorded.
    #[serde(default)]
    pub chunk: u32,
    /// Each chunk's running digest (of the object from byte 0 through the chunk's end); empty
    /// when the upload was resumed (the earlier chunks were never seen by this daemon).
    #[serde(default)]
    pub chunks: Vec<Digest>,
    /// The modification time the client sent with the upload (seconds since the epoch), so a
    /// download has it from the record it reads anyway, not from another request.
    #[serde(default)]
    pub mtime: Option<i64>,
}

/// An ETag as services quote it or not, for comparing.
pub fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// How an upload is started: the parts of [`ResumableUpload::start_with`] beyond its key.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    /// The session's digest, which the upload hashes its bytes with.
    pub kind: DigestKind,
    /// Every part but the last is this long.
    pub part_size: PartSize,
    /// Who writes it, for the lease.
    pub holder: String,
    /// The client's name for the upload, kept in the record for a resume to match.
    pub client_id: Option<String>,
    /// The size the client declared, kept in the record for a resume to match.
    pub size: Option<u64>,
    /// Whether the upload keeps a state record (to resume). An unrecorded upload needs no
    /// saved digest state (BLAKE3) and is found only by the sweeper when abandoned.
    pub recorded: bool,
}

/// How a finished upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Completed under the target name, which now has this ETag (as the service sent it).
    Stored {
        size: u64,
        digest: Digest,
        etag: String,
    },
    /// The bytes did not hash to the expected digest: the upload was aborted, nothing stored.
    Mismatch { actual: Digest },
}

/// An upload in progress. Dropping it leaves the upload open and its record in place, to be
/// resumed or swept.
///
/// Its part buffer comes from the [`PartBudget`] only while it holds bytes: the share is taken
/// when the first byte of a part arrives and given back as soon as the part is sent, so an
/// upload at a part boundary, or opened and idle, holds no memory. An upload waiting for its
/// client in the middle of a part does hold its (partly filled) buffer: those bytes cannot be
/// sent as a part until there are 5 MiB of them, and cannot be dropped.
#[derive(Debug)]
pub struct ResumableUpload {
    client: Arc<Client>,
    /// Where the record is kept, and whether this writer still holds its lease.
    registry: Arc<dyn UploadRegistry>,
    record: UploadRecord,
    hasher: Hasher,
    /// The bytes of the part being filled; empty, without capacity, between parts.
    buf: BytesMut,
    /// Where buffers come from.
    budget: PartBudget,
    /// This upload's share of the part budget while `buf` holds bytes.
    permit: Option<OwnedSemaphorePermit>,
    /// Whether a state record is kept (see [`UploadSpec::recorded`]).
    recorded: bool,
    /// The chunks written so far ([`ResumableUpload::write_chunk`]), for the digest record;
    /// `None` once they make no record worth keeping, or when a resume did not know them.
    chunks: Option<ChunkLog>,
    /// Parts this value sent, for tests and logs.
    sent: u32,
}

fn saved_hex(hasher: &Hasher) -> Result<String> {
    hasher
        .save()
        .map(|s| hex::encode(s.as_bytes()))
        .ok_or_else(|| {
            Error::with(
                ErrorKind::Config,
                "resumable uploads to S3 use MD5 (BLAKE3 state is not saved yet)",
            )
        })
}

impl ResumableUpload {
    /// Opens a new multipart upload for `key` and records it, replacing any record of an
    /// earlier attempt (whose upload the sweeper then finds without a record and aborts).
    pub async fn start(
        client: Arc<Client>,
        key: &str,
        kind: DigestKind,
        part_size: PartSize,
        budget: &PartBudget,
        holder: &str,
    ) -> Result<ResumableUpload> {
        let spec = UploadSpec {
            kind,
            part_size,
            holder: holder.to_owned(),
            client_id: None,
            size: None,
            recorded: true,
        };
        Self::start_with(client, key, budget, spec).await
    }

    /// [`ResumableUpload::start`] with everything said: the client's id and size to record,
    /// and whether to keep a record at all.
    pub async fn start_with(
        client: Arc<Client>,
        key: &str,
        budget: &PartBudget,
        spec: UploadSpec,
    ) -> Result<ResumableUpload> {
        let registry = Arc::new(BucketRegistry::new(client.clone()));
        Self::start_in(registry, client, key, budget, spec).await
    }

    /// [`ResumableUpload::start_with`] recording in `registry`.
    pub async fn start_in(
        registry: Arc<dyn UploadRegistry>,
        client: Arc<Client>,
        key: &str,
        budget: &PartBudget,
        spec: UploadSpec,
    ) -> Result<ResumableUpload> {
        let UploadSpec {
            kind,
            part_size,
            holder,
            client_id,
            size,
            recorded,
        } = spec;
        let hasher = Hasher::new(kind);
        let digest_state = if recorded {
            saved_hex(&hasher)?
        } else {
            String::new()
        };
        budget.check(part_size)?;
        let upload_id = client.create_multipart(key).await?;
        let mut record = UploadRecord {
            version: 1,
            key: key.to_owned(),
            upload_id,
            part_size: part_size.get(),
            parts: Vec::new(),
            digest_kind: kind,
            digest_state,
            lease: Lease { holder, token: 0 },
            client_id,
            size,
            chunks: None,
        };
        // An unrecorded upload leaves a resumable one of the same key alone (it may be
        // another client's); the first to complete wins, as between any two uploads.
        if recorded {
            // A restart of the same key takes over: the new lease fences the old writer.
            let replaced = match registry.start(&mut record).await {
                Ok(replaced) => replaced,
                Err(e) => {
                    // Nobody can resume what was never recorded.
                    let _ = client.abort(key, &record.upload_id).await;
                    return Err(e);
                }
            };
            if let Some(old) = replaced {
                // Best effort: a failure leaves it to the sweeper.
                let _ = client.abort(key, &old).await;
            }
        }
        Ok(Self::new(
            client,
            registry,
            record,
            hasher,
            budget,
            recorded,
            Some(ChunkLog::default()),
        ))
    }

    /// Continues the recorded upload of `key`, if there is one and the service still holds
    /// every recorded part; [`ResumableUpload::offset`] tells where the caller's bytes resume.
    pub async fn resume(
        client: Arc<Client>,
        key: &str,
        budget: &PartBudget,
        holder: &str,
    ) -> Result<Option<ResumableUpload>> {
        Self::resume_if(client, key, budget, holder, |_| true).await
    }

    /// [`ResumableUpload::resume`] of a record that `accept` takes (the same client upload, of
    /// the same size); a record it refuses is left alone, and `None` returned.
    pub async fn resume_if(
        client: Arc<Client>,
        key: &str,
        budget: &PartBudget,
        holder: &str,
        accept: impl Fn(&UploadRecord) -> bool + Send,
    ) -> Result<Option<ResumableUpload>> {
        let registry = Arc::new(BucketRegistry::new(client.clone()));
        Self::resume_in(registry, client, key, budget, holder, accept).await
    }

    /// [`ResumableUpload::resume_if`] of an upload recorded in `registry`: the lease is taken
    /// only of a record `accept` takes (so another client's upload of the same key is never
    /// fenced), and checked again as taken, since another start may have come in between.
    pub async fn resume_in(
        registry: Arc<dyn UploadRegistry>,
        client: Arc<Client>,
        key: &str,
        budget: &PartBudget,
        holder: &str,
        accept: impl Fn(&UploadRecord) -> bool + Send,
    ) -> Result<Option<ResumableUpload>> {
        let Some(loaded) = registry.load(key).await? else {
            return Ok(None);
        };
        if !accept(&loaded) {
            return Ok(None);
        }
        let Some(record) = registry.take_over(&loaded, holder).await? else {
            return Ok(None);
        };
        if !accept(&record) {
            // Another client's upload, started since: it goes on once its writer resumes.
            return Ok(None);
        }
        let bad = || Error::with(ErrorKind::Protocol, "unreadable upload record");
        let part_size = PartSize::new(record.part_size).ok_or_else(bad)?;
        let state = hex::decode(&record.digest_state).map_err(|_| bad())?;
        let hasher = Hasher::restore(&SavedState::from_bytes(record.digest_kind, state))
            .map_err(|_| bad())?;
        let stored = match client.list_parts(key, &record.upload_id).await {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                registry.finish(&record).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // Every recorded part must be there as recorded; a part stored after the last record
        // (a crash between the two) is simply sent again under the same number.
        let intact = record.parts.iter().all(|r| {
            stored
                .iter()
                .any(|s| s.number == r.number && s.etag == r.etag && s.size == r.size)
        });
        if !intact {
            return Err(Error::with(
                ErrorKind::Protocol,
                "the service lost recorded parts",
            ));
        }
        budget.check(part_size)?;
        // The chunk digests recorded with the parts, if they cover exactly the parts.
        let offset = record.offset();
        let chunks = record
            .chunks
            .as_ref()
            .filter(|c| {
                c.up_to(offset, MAX_RESUMED_CHUNKS)
                    .is_some_and(|u| u.digests.len() == c.digests.len())
            })
            .cloned();
        Ok(Some(Self::new(
            client, registry, record, hasher, budget, true, chunks,
        )))
    }

    /// An upload writing under `record`'s lease.
    fn new(
        client: Arc<Client>,
        registry: Arc<dyn UploadRegistry>,
        record: UploadRecord,
        hasher: Hasher,
        budget: &PartBudget,
        recorded: bool,
        chunks: Option<ChunkLog>,
    ) -> ResumableUpload {
        ResumableUpload {
            client,
            registry,
            buf: BytesMut::new(),
            record,
            hasher,
            budget: budget.clone(),
            permit: None,
            recorded,
            chunks,
            sent: 0,
        }
    }

    /// The running digest of the recorded parts, where the caller's hashing continues.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Bytes stored and recorded before this value buffered anything.
    pub fn offset(&self) -> u64 {
        self.record.offset()
    }

    /// Parts this value has sent.
    pub fn parts_sent(&self) -> u32 {
        self.sent
    }

    pub fn record(&self) -> &UploadRecord {
        &self.record
    }

    /// Takes the next chunk the transfer engine verified, with its running digest (of the
    /// file from byte 0 through the chunk's end; `last` when it ends the file), to record with
    /// the object and, across a resume, in the state record.
    pub async fn write_chunk(&mut self, data: &[u8], running: Digest, last: bool) -> Result<()> {
        if let Some(log) = &mut self.chunks {
            // Noted before the bytes, so that a part that this chunk completes records it.
            if !log.push(data.len() as u32, running, last) {
                self.chunks = None;
            }
        }
        self.write(data).await
    }

    /// Takes the next bytes; a part is uploaded, and recorded, whenever one fills. Bytes
    /// given here, not through [`ResumableUpload::write_chunk`], leave no chunk digests.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        let part = self.record.part_size as usize;
        while !data.is_empty() {
            self.take_buffer().await?;
            let n = (part - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.hasher.update(&data[..n]);
            data = &data[n..];
            if self.buf.len() == part {
                let (body, share) = self.take_part();
                self.send_part(body).await?;
                drop(share);
                self.record_part().await?;
            }
        }
        Ok(())
    }

    /// Records the part just sent, with the digest state and chunks after it, under this
    /// writer's lease: a fenced writer learns here that it must stop.
    async fn record_part(&mut self) -> Result<()> {
        if !self.recorded {
            return Ok(());
        }
        self.record.digest_state = saved_hex(&self.hasher)?;
        let offset = self.record.offset();
        self.record.chunks = self
            .chunks
            .as_ref()
            .and_then(|c| c.up_to(offset, MAX_RESUMED_CHUNKS));
        self.registry.record_part(&self.record).await
    }

    /// Waits for this upload's share of the budget, when it holds none, and sizes the buffer.
    async fn take_buffer(&mut self) -> Result<()> {
        if self.permit.is_none() {
            let part = PartSize(self.record.part_size);
            self.permit = Some(self.budget.reserve(part).await?);
            self.buf.reserve(part.get() as usize);
        }
        Ok(())
    }

    /// The buffered bytes as a part's body, with their share of the budget: it goes back
    /// only once the part is sent, since the memory is the body's until then.
    fn take_part(&mut self) -> (Bytes, Option<OwnedSemaphorePermit>) {
        (std::mem::take(&mut self.buf).freeze(), self.permit.take())
    }

    async fn send_part(&mut self, body: Bytes) -> Result<()> {
        let number = u32::try_from(self.record.parts.len())
            .ok()
            .and_then(|n| n.checked_add(1))
            .filter(|n| *n <= MAX_PARTS)
            .ok_or_else(|| Error::with(ErrorKind::Config, "file too large for the S3 part size"))?;
        let size = body.len() as u64;
        let etag = self
            .client
            .upload_part(&self.record.key, &self.record.upload_id, number, body)
            .await?;
        self.sent += 1;
        self.record.parts.push(RecordedPart { number, etag, size });
        Ok(())
    }

    /// Sends the last bytes and completes the upload if the whole file hashes to `expected`
    /// (only if the name is free unless `overwrite`); aborts it otherwise. Either way the
    /// upload and its record are gone afterwards, except on a transient failure, after which
    /// the record still allows a resume. Only the parts the registry holds under this
    /// writer's lease are completed: a fenced writer gets [`ErrorKind::Fenced`] and leaves
    /// the upload to its new holder.
    /// The digest record holds every chunk's running digest given through
    /// [`ResumableUpload::write_chunk`], when they follow the rules of [`ChunkLog::push`] and
    /// (after a resume) were kept in the state record.
    /// `mtime` is the client's time for the file, kept in the digest record.
    pub async fn finish(
        mut self,
        expected: Digest,
        overwrite: bool,
        mtime: Option<i64>,
    ) -> Result<Finished> {
        let empty = self.buf.is_empty() && self.record.parts.is_empty();
        if !self.buf.is_empty() {
            // The last part may be short; it is recorded like the others, since completion
            // lists the registry's parts.
            let (body, share) = self.take_part();
            self.send_part(body).await?;
            drop(share);
            self.record_part().await?;
        }
        let actual = self.hasher.digest();
        if actual != expected {
            self.discard().await?;
            return Ok(Finished::Mismatch { actual });
        }
        // Only the parts recorded under the current lease count: a writer fenced since its
        // last part is refused here and never completes. The ETags are the registry's, so a
        // part a fenced writer stored over a recorded one under the same number makes S3
        // refuse the completion (InvalidPart) rather than take those bytes.
        let recorded = match self.recorded {
            true => self.registry.parts(&self.record).await?,
            false => self.record.parts.clone(),
        };
        if recorded.len() != self.record.parts.len()
            || recorded.iter().map(|p| p.size).sum::<u64>() != self.record.offset()
        {
            return Err(Error::with(
                ErrorKind::Protocol,
                "the registry's parts are not the ones this upload sent",
            ));
        }
        let parts: Vec<(u32, String)> = recorded
            .iter()
            .map(|p| (p.number, p.etag.clone()))
            .collect();
        let key = self.record.key.clone();
        let stored = match empty {
            // An empty file is one create-only PutObject: Garage refuses an empty part
            // ("Empty body"). The multipart upload opened for it is given up after.
            true => {
                let put = self.client.put(&key, Bytes::new(), !overwrite).await;
                let _ = self
                    .client
                    .abort(&self.record.key, &self.record.upload_id)
                    .await;
                put
            }
            false => {
                self.client
                    .complete(&key, &self.record.upload_id, &parts, !overwrite)
                    .await
            }
        };
        let etag = match stored {
            Ok(etag) => etag,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.discard().await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let size = self.record.offset();
        let (chunk, chunks) = match self.chunks.take() {
            Some(log) if !log.digests.is_empty() => (log.len, log.digests),
            _ => (0, Vec::new()),
        };
        let digest = DigestRecord {
            size,
            digest: actual,
            etag: (!etag.is_empty()).then(|| bare_etag(&etag).to_owned()),
            chunk,
            chunks,
            mtime,
        };
        if let Err(e) = write_digest(&self.client, &key, &digest).await {
            // The object is stored and complete: that is the upload's outcome. Without its
            // record a download hashes the object as it reads (as for an object another tool
            // stored), and its time is the store's Last-Modified.
            tracing::warn!(key = ?key, error = ?e.detail(), "stored, but its digests could not be recorded");
        }
        if self.recorded {
            // The object and its digests are stored: that is the upload's outcome, whether
            // or not its record can be forgotten now (fenced, if taken over after completion;
            // the registry not answering). A record left behind is harmless: a resume of it
            // finds its upload gone (NoSuchUpload) and forgets it, the sweeper too.
            let _ = self.registry.finish(&self.record).await;
        }
        Ok(Finished::Stored {
            size,
            digest: actual,
            etag,
        })
    }

    /// Gives the upload up: aborts it and removes its record.
    pub async fn abort(self) -> Result<()> {
        self.discard().await
    }

    async fn discard(&self) -> Result<()> {
        // Forgotten first, under this writer's lease: a fenced writer leaves the upload to
        // its new holder, on S3 too. (A failure to abort after leaves an unregistered upload,
        // which the sweeper aborts.)
        if self.recorded {
            self.registry.finish(&self.record).await?;
        }
        match self
            .client
            .abort(&self.record.key, &self.record.upload_id)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Where the digests recorded with `key` are kept.
pub fn digest_key(key: &str) -> String {
    format!("{DIGESTS_PREFIX}{key}")
}

/// The digests recorded when `key` was uploaded, if any.
pub async fn read_digest(client: &Client, key: &str) -> Result<Option<DigestRecord>> {
    read_json(client, &digest_key(key), MAX_DIGEST_RECORD).await
}

/// Records `record` as the digests of `key`.
pub async fn write_digest(client: &Client, key: &str, record: &DigestRecord) -> Result<()> {
    let body = serde_json::to_vec(record).map_err(|e| Error::with(ErrorKind::Protocol, e))?;
    client
        .put(&digest_key(key), Bytes::from(body), false)
        .await?;
    Ok(())
}

pub(crate) async fn read_record(client: &Client, key: &str) -> Result<Option<UploadRecord>> {
    let record: Option<UploadRecord> = read_json(client, &record_key(key), MAX_RECORD).await?;
    Ok(record.filter(|r| r.key == key))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    key: &str,
    cap: u64,
) -> Result<Option<T>> {
    let mut download = match client.get(key, 0, None).await {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if download.len > cap {
        return Err(Error::with(ErrorKind::Protocol, "record too long"));
    }
    let mut body = Vec::with_capacity(download.len as usize);
    while let Some(chunk) = download.chunk().await? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(Error::with(ErrorKind::Protocol, "record too long"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::with(ErrorKind::Protocol, e))
}

pub(crate) async fn write_record(client: &Client, record: &UploadRecord) -> Result<()> {
    let body = serde_json::to_vec(record).map_err(|e| Error::with(ErrorKind::Protocol, e))?;
    client
        .put(&record_key(&record.key), Bytes::from(body), false)
        .await?;
    Ok(())
}

/// The time `max_age` ago, by this machine's clock.
pub(crate) fn cutoff(max_age: Duration) -> jiff::Timestamp {
    jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MIN)
}

/// Aborts every open multipart upload under the configured prefix started more than `max_age`
/// ago (by the service's clock in `Initiated`) and not written to since (its record's
/// Last-Modified), with its record; returns the keys it aborted.
/// Run periodically, so that no upload leaks forever, whatever crashed when.
pub async fn sweep(client: &Arc<Client>, max_age: Duration) -> Result<Vec<String>> {
    let registry = BucketRegistry::new(client.clone());
    sweep_in(&registry, client, max_age).await
}

/// [`sweep`] of the uploads recorded in `registry`: first those it holds abandoned (not
/// written to for `max_age`), then every S3 upload older than `max_age` it does not spare
/// (never registered, or registered and abandoned).
pub async fn sweep_in(
    registry: &dyn UploadRegistry,
    client: &Client,
    max_age: Duration,
) -> Result<Vec<String>> {
    let mut aborted = Vec::new();
    for (key, upload_id) in registry.abandoned(max_age).await? {
        match client.abort(&key, &upload_id).await {
            Ok(()) => aborted.push(key),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Unregistered now: the listing below, or the next sweep, finds it.
            Err(_) => {}
        }
    }
    let cutoff = cutoff(max_age);
    let mut marker: Option<(String, String)> = None;
    loop {
        let page = client
            .list_uploads_page("", marker.as_ref().map(|(k, u)| (k.as_str(), u.as_str())))
            .await?;
        for u in page.uploads {
            // An unreadable time is taken as old: better swept than leaked.
            let old = u
                .initiated
                .parse::<jiff::Timestamp>()
                .map_or(true, |t| t <= cutoff);
            if !old || registry.spare(&u.key, &u.upload_id, max_age).await? {
                continue;
            }
            match client.abort(&u.key, &u.upload_id).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            aborted.push(u.key);
        }
        if !next_page(&mut marker, page.next)? {
            return Ok(aborted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_logs_follow_the_local_roots_rules() {
        let d = Digest::md5(b"");
        let min = storage::MIN_RECORDED_CHUNK;
        let mut log = ChunkLog::default();
        assert!(log.push(min, d, false));
        assert!(log.push(min, d, false));
        assert!(log.push(10, d, true), "the last may be short");
        assert!(!log.push(10, d, true), "nothing after the last");
        assert!(!ChunkLog::default().push(min - 1, d, false));
        // Kept across a resume only when a chunk ends at the part boundary.
        assert_eq!(
            log.up_to(u64::from(min), MAX_RESUMED_CHUNKS)
                .unwrap()
                .digests
                .len(),
            1
        );
        assert!(log.up_to(u64::from(min) + 1, MAX_RESUMED_CHUNKS).is_none());
        assert!(log.up_to(0, MAX_RESUMED_CHUNKS).is_none());
    }
    use futures::FutureExt as _;

    #[tokio::test]
    async fn uploads_beyond_the_budget_wait_for_a_buffer() {
        let part = PartSize::default();
        let budget = PartBudget::new(2 * DEFAULT_PART_SIZE + 1);
        let first = budget.reserve(part).await.unwrap();
        let _second = budget.reserve(part).await.unwrap();
        let mut third = Box::pin(budget.reserve(part));
        assert!(
            (&mut third).now_or_never().is_none(),
            "a third buffer fits nowhere"
        );
        drop(first);
        assert!(
            third.now_or_never().is_some(),
            "it gets the buffer given back"
        );
        let too_big = PartBudget::new(DEFAULT_PART_SIZE - 1).reserve(part).await;
        assert_eq!(too_big.unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn part_sizes_s3_accepts() {
        assert!(PartSize::new(MIN_PART_SIZE - 1).is_none());
        assert!(PartSize::new(MIN_PART_SIZE).is_some());
        assert!(PartSize::new((5 << 30) + 1).is_none());
        assert_eq!(PartSize::default().get(), 8 << 20);
    }

    #[test]
    fn record_keys_are_short_and_safe_for_any_key() {
        let k = record_key("a b/../\u{fc}".repeat(200).as_str());
        assert!(k.starts_with(UPLOADS_PREFIX) && k.len() < 100, "{k}");
        assert_ne!(record_key("a"), record_key("b"));
    }
}
