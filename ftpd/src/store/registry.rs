//! The registry of resumable S3 uploads in PostgreSQL (`--database`): s3store's
//! [`UploadRegistry`] over pgstate's fenced rows, so that an upload interrupted on one
//! instance continues on another and a writer that lost its lease can record nothing more.
//!
//! It lives here, not in s3store or pgstate, because it is the one place that knows both:
//! s3store stays free of the database driver (a daemon without `--database` needs none of
//! it), pgstate of S3's record format.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use protocol::{Digest, DigestKind};
use s3store::{ErrorKind, Lease, RecordedPart, UploadRecord, UploadRegistry};
use serde::{Deserialize, Serialize};
use storage::ChunkLog;

/// The most abandoned uploads one sweep forgets; the next sweep (a minute later) takes more.
const SWEEP_BATCH: i64 = 1000;
/// How long a call keeps trying while the database does not answer (a restart, a fail-over),
/// so that an upload in flight rides over it: each try is itself bounded
/// ([`pgstate::within`], 16 s), so a call gives up within this plus that.
const PATIENCE: Duration = Duration::from_secs(15);
/// The longest pause between two tries.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// `call` until it succeeds, fails for good, or [`PATIENCE`] runs out; only an error that
/// says the database did not answer is tried again. Every call of the registry may be: a
/// part recorded twice under one lease is the same row, and a start or takeover repeated
/// takes a newer lease.
async fn patiently<T, F, Fut>(mut call: F) -> pgstate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = pgstate::Result<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match pgstate::within(call()).await {
            Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                tracing::debug!(error = %e.detail(), "the upload registry did not answer; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
            }
            other => return other,
        }
    }
}

/// The registry of uploads in the shared database.
#[derive(Clone)]
pub struct PgRegistry {
    /// This instance's handle on the shared state.
    state: pgstate::State,
}

impl std::fmt::Debug for PgRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRegistry")
            .field("instance", &self.state.options().instance)
            .finish()
    }
}

impl PgRegistry {
    pub fn new(state: pgstate::State) -> PgRegistry {
        PgRegistry { state }
    }
}

/// The chunk digests kept with one part: those of the chunks that end within it.
#[derive(Debug, Serialize, Deserialize)]
struct PartChunks {
    /// Every chunk's length (the upload's chunks all have one, see [`ChunkLog::push`]).
    len: u32,
    /// Running digests, in order.
    digests: Vec<Digest>,
}

fn fail(e: pgstate::Error) -> s3store::Error {
    match e {
        pgstate::Error::Fenced => s3store::Error::fenced(),
        // One line, the database's own message left for pgstate's detail.
        e => s3store::Error::registry(format!("upload registry: {e}")),
    }
}

/// A row that cannot be an upload record: the caller starts the upload anew.
fn unreadable(what: &'static str) -> s3store::Error {
    s3store::Error::new(ErrorKind::Protocol, what)
}

fn lease_of(record: &UploadRecord) -> s3store::Result<pgstate::Lease> {
    Ok(pgstate::Lease {
        key: record.key.clone(),
        upload_id: record.upload_id.clone(),
        token: i64::try_from(record.lease.token).map_err(|_| s3store::Error::fenced())?,
    })
}

/// The upload as s3store records it: the parts recorded without a gap (a part after a gap is
/// sent again), the digest state after the last of them, and their chunk digests when every
/// one of them kept its own.
fn to_record(upload: pgstate::Upload) -> s3store::Result<UploadRecord> {
    let digest_kind: DigestKind = upload
        .digest_kind
        .parse()
        .map_err(|_| unreadable("an upload of an unknown digest"))?;
    let digest_state = upload.resume_state().to_owned();
    let contiguous: Vec<pgstate::Part> = upload
        .parts
        .into_iter()
        .enumerate()
        .take_while(|(i, p)| usize::try_from(p.number).is_ok_and(|n| n == i + 1))
        .map(|(_, p)| p)
        .collect();
    let chunks = chunks_of(&contiguous);
    Ok(UploadRecord {
        version: 1,
        key: upload.key,
        upload_id: upload.upload_id,
        part_size: upload.part_size,
        parts: contiguous
            .into_iter()
            .map(|p| RecordedPart {
                number: p.number,
                etag: p.etag,
                size: p.size,
            })
            .collect(),
        digest_kind,
        digest_state,
        lease: Lease {
            holder: upload.holder,
            token: u64::try_from(upload.token).map_err(|_| unreadable("a negative lease"))?,
        },
        client_id: upload.client_id,
        size: upload.size,
        chunks,
    })
}

/// The chunk log of `parts` put together, when each part kept its chunks and they agree.
fn chunks_of(parts: &[pgstate::Part]) -> Option<ChunkLog> {
    let mut log = ChunkLog::default();
    for part in parts {
        let kept: PartChunks = serde_json::from_str(part.chunks.as_deref()?).ok()?;
        for digest in kept.digests {
            // Every recorded chunk was pushed with this length once; refused now means the
            // rows do not describe one upload's chunks.
            if !log.push(kept.len, digest, false) {
                return None;
            }
        }
    }
    (!parts.is_empty()).then_some(log)
}

/// The chunk digests that end within the last part of `record`, from the record's log (kept
/// up to the part's end when a chunk ends there).
fn last_part_chunks(record: &UploadRecord) -> s3store::Result<Option<String>> {
    let (Some(log), Some(part)) = (&record.chunks, record.parts.last()) else {
        return Ok(None);
    };
    if log.len == 0 {
        return Ok(None);
    }
    let start = record.offset().saturating_sub(part.size);
    let first = usize::try_from(start / u64::from(log.len))
        .unwrap_or(usize::MAX)
        .min(log.digests.len());
    let kept = PartChunks {
        len: log.len,
        digests: log.digests[first..].to_vec(),
    };
    serde_json::to_string(&kept)
        .map(Some)
        .map_err(|_| unreadable("chunk digests that cannot be written"))
}

#[async_trait]
impl UploadRegistry for PgRegistry {
    async fn load(&self, key: &str) -> s3store::Result<Option<UploadRecord>> {
        patiently(|| self.state.upload(key))
            .await
            .map_err(fail)?
            .map(to_record)
            .transpose()
    }

    async fn start(&self, record: &mut UploadRecord) -> s3store::Result<Option<String>> {
        let new = pgstate::NewUpload {
            key: record.key.clone(),
            upload_id: record.upload_id.clone(),
            part_size: record.part_size,
            digest_kind: record.digest_kind.name().to_ascii_lowercase(),
            digest_state: record.digest_state.clone(),
            holder: record.lease.holder.clone(),
            client_id: record.client_id.clone(),
            size: record.size,
        };
        let (lease, replaced) = patiently(|| self.state.start_upload(&new))
            .await
            .map_err(fail)?;
        record.lease.token =
            u64::try_from(lease.token).map_err(|_| unreadable("a negative lease"))?;
        Ok(replaced)
    }

    async fn take_over(
        &self,
        loaded: &UploadRecord,
        holder: &str,
    ) -> s3store::Result<Option<UploadRecord>> {
        patiently(|| self.state.take_lease(&loaded.key, holder))
            .await
            .map_err(fail)?
            .map(to_record)
            .transpose()
    }

    async fn record_part(&self, record: &UploadRecord) -> s3store::Result<()> {
        let Some(last) = record.parts.last() else {
            return Ok(());
        };
        let part = pgstate::Part {
            number: last.number,
            etag: last.etag.clone(),
            size: last.size,
            digest_state: record.digest_state.clone(),
            chunks: last_part_chunks(record)?,
        };
        let lease = lease_of(record)?;
        patiently(|| self.state.record_part(&lease, &part))
            .await
            .map_err(fail)
    }

    async fn parts(&self, record: &UploadRecord) -> s3store::Result<Vec<RecordedPart>> {
        let lease = lease_of(record)?;
        let parts = patiently(|| self.state.parts(&lease)).await.map_err(fail)?;
        Ok(parts
            .into_iter()
            .map(|p| RecordedPart {
                number: p.number,
                etag: p.etag,
                size: p.size,
            })
            .collect())
    }

    async fn finish(&self, record: &UploadRecord) -> s3store::Result<()> {
        let lease = lease_of(record)?;
        patiently(|| self.state.finish_upload(&lease))
            .await
            .map_err(fail)
    }

    async fn abandoned(&self, max_age: Duration) -> s3store::Result<Vec<(String, String)>> {
        // Not patient: the sweeper tries again at its next round anyway.
        self.state
            .sweep_uploads(max_age, SWEEP_BATCH)
            .await
            .map_err(fail)
    }

    async fn spare(&self, key: &str, upload_id: &str, _max_age: Duration) -> s3store::Result<bool> {
        // The sweep forgot the registered uploads not written to for `max_age` just before
        // (abandoned): one still registered is written to, or resumable. Any other upload
        // (never registered, or replaced by a newer start) is nobody's.
        Ok(self
            .state
            .upload(key)
            .await
            .map_err(fail)?
            .is_some_and(|u| u.upload_id == upload_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, chunks: Option<&PartChunks>) -> pgstate::Part {
        pgstate::Part {
            number,
            etag: format!("e{number}"),
            size: 4 << 20,
            digest_state: format!("s{number}"),
            chunks: chunks.map(|c| serde_json::to_string(c).unwrap()),
        }
    }

    /// The chunks kept with each part put back together are the log the upload had; a part
    /// without its own (it did not end on a chunk boundary) leaves the resume without any.
    #[test]
    fn chunk_digests_kept_by_part_come_back_whole() {
        let len = storage::MIN_RECORDED_CHUNK;
        let digests: Vec<Digest> = (0..8u8).map(|i| Digest::md5(&[i])).collect();
        let mut log = ChunkLog::default();
        for d in &digests {
            assert!(log.push(len, *d, false));
        }
        let chunk = u64::from(len);
        let mut record = UploadRecord {
            version: 1,
            key: "k".into(),
            upload_id: "u".into(),
            part_size: 4 * chunk,
            parts: vec![RecordedPart {
                number: 1,
                etag: "e1".into(),
                size: 4 * chunk,
            }],
            digest_kind: DigestKind::Md5,
            digest_state: "s1".into(),
            lease: Lease {
                holder: "h".into(),
                token: 1,
            },
            client_id: None,
            size: None,
            chunks: log.up_to(4 * chunk, 4096),
        };
        let first: PartChunks =
            serde_json::from_str(&last_part_chunks(&record).unwrap().unwrap()).unwrap();
        assert_eq!(first.digests, digests[..4]);
        record.parts.push(RecordedPart {
            number: 2,
            etag: "e2".into(),
            size: 4 * chunk,
        });
        record.chunks = log.up_to(8 * chunk, 4096);
        let second: PartChunks =
            serde_json::from_str(&last_part_chunks(&record).unwrap().unwrap()).unwrap();
        assert_eq!(second.digests, digests[4..]);

        let whole = chunks_of(&[part(1, Some(&first)), part(2, Some(&second))]).unwrap();
        assert_eq!((whole.len, whole.digests), (len, digests.clone()));
        assert!(chunks_of(&[part(1, Some(&first)), part(2, None)]).is_none());
        assert!(chunks_of(&[]).is_none());
        record.chunks = None;
        assert_eq!(last_part_chunks(&record).unwrap(), None);
    }
}
