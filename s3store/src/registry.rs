//! Where upload-state records are kept: the [`UploadRegistry`] a [`crate::ResumableUpload`]
//! reads and writes its record through, and [`BucketRegistry`], the record as an object in
//! the bucket (one daemon). The fenced implementation over PostgreSQL, for several daemons
//! (`--database`), is the daemon's (`ftpd/src/store/registry.rs`): this crate does not depend
//! on the database's.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::client::Client;
use crate::error::{ErrorKind, Result};
use crate::upload::{read_record, record_key, write_record, Lease, RecordedPart, UploadRecord};

/// The store of upload-state records. A record is written by whoever holds its lease
/// (`record.lease`); a registry that can fence refuses every write of a lease that is no
/// longer current with [`ErrorKind::Fenced`], and the writer then stops.
#[async_trait]
pub trait UploadRegistry: Send + Sync + fmt::Debug {
    /// The upload registered for `key`, if any, without taking it.
    async fn load(&self, key: &str) -> Result<Option<UploadRecord>>;

    /// Registers `record` (no parts yet) as the upload of its key under a new lease, whose
    /// token it sets in `record.lease`. An earlier upload of the key is replaced (its writer
    /// fenced): its upload id comes back, for the caller to abort.
    async fn start(&self, record: &mut UploadRecord) -> Result<Option<String>>;

    /// Takes the upload `loaded` (as [`UploadRegistry::load`] gave it) over for `holder`: the
    /// upload as registered now, under a new lease; `None` when it is no longer registered.
    /// The earlier holder is fenced from then on.
    async fn take_over(&self, loaded: &UploadRecord, holder: &str) -> Result<Option<UploadRecord>>;

    /// Records the last of `record.parts`, stored and acknowledged, with `record.digest_state`
    /// and `record.chunks` as they are after it, while `record.lease` is current.
    async fn record_part(&self, record: &UploadRecord) -> Result<()>;

    /// The parts to complete `record`'s upload with, in order, while its lease is current:
    /// the registry's, not the writer's own list.
    async fn parts(&self, record: &UploadRecord) -> Result<Vec<RecordedPart>>;

    /// Forgets `record`'s upload (completed or given up) while its lease is current. When
    /// fenced, the upload is its new holder's: the caller must leave it alone on S3 too.
    async fn finish(&self, record: &UploadRecord) -> Result<()>;

    /// The sweeper's first step: forgets the uploads not written to for `max_age` and returns
    /// them (key, upload id) for the caller to abort.
    async fn abandoned(&self, max_age: Duration) -> Result<Vec<(String, String)>>;

    /// The sweeper's second step, at an S3 upload of `key` started more than `max_age` ago:
    /// whether to spare it (registered, and written to within `max_age`). When not, any
    /// registration of that upload is forgotten, and the caller aborts it.
    async fn spare(&self, key: &str, upload_id: &str, max_age: Duration) -> Result<bool>;
}

/// The record as a small object in the bucket (`.ftpd/uploads/`), rewritten after each part.
/// S3 offers no conditional overwrite here, so this registry cannot fence: a writer that lost
/// its lease could still overwrite the new holder's record. It serves one daemon; several
/// need a registry that fences (docs/S3.md).
#[derive(Debug, Clone)]
pub struct BucketRegistry {
    /// The bucket (and prefix) the records live in.
    client: Arc<Client>,
}

impl BucketRegistry {
    pub fn new(client: Arc<Client>) -> BucketRegistry {
        BucketRegistry { client }
    }
}

#[async_trait]
impl UploadRegistry for BucketRegistry {
    async fn load(&self, key: &str) -> Result<Option<UploadRecord>> {
        read_record(&self.client, key).await
    }

    async fn start(&self, record: &mut UploadRecord) -> Result<Option<String>> {
        let previous = match read_record(&self.client, &record.key).await {
            Ok(r) => r,
            // Unreadable: replaced below; its upload, if any, is left to the sweeper.
            Err(e) if e.kind() == ErrorKind::Protocol => None,
            Err(e) => return Err(e),
        };
        // A restart of the same key takes over: the next token.
        record.lease.token = previous
            .as_ref()
            .map_or(1, |old| old.lease.token.saturating_add(1));
        write_record(&self.client, record).await?;
        Ok(previous
            .map(|old| old.upload_id)
            .filter(|id| *id != record.upload_id))
    }

    async fn take_over(&self, loaded: &UploadRecord, holder: &str) -> Result<Option<UploadRecord>> {
        let mut record = loaded.clone();
        record.lease = Lease {
            holder: holder.to_owned(),
            token: loaded.lease.token.saturating_add(1),
        };
        write_record(&self.client, &record).await?;
        Ok(Some(record))
    }

    async fn record_part(&self, record: &UploadRecord) -> Result<()> {
        write_record(&self.client, record).await
    }

    async fn parts(&self, record: &UploadRecord) -> Result<Vec<RecordedPart>> {
        // What the writer recorded is what the bucket holds: nothing else to ask.
        Ok(record.parts.clone())
    }

    async fn finish(&self, record: &UploadRecord) -> Result<()> {
        self.client.delete(&record_key(&record.key)).await
    }

    async fn abandoned(&self, _max_age: Duration) -> Result<Vec<(String, String)>> {
        // A record is found through its upload in the sweeper's listing of S3.
        Ok(Vec::new())
    }

    async fn spare(&self, key: &str, upload_id: &str, max_age: Duration) -> Result<bool> {
        let cutoff = crate::upload::cutoff(max_age);
        let recorded = read_record(&self.client, key)
            .await?
            .is_some_and(|r| r.upload_id == upload_id);
        if !recorded {
            return Ok(false);
        }
        // Initiated says when an upload began, not when it was last written to (and some
        // servers, moto among them, report a fixed one): its record, rewritten at every part,
        // says that. An upload still being written, or resumable for its full age since its
        // last part, is spared.
        let touched = match self.client.head(&record_key(key)).await {
            Ok(meta) => meta.modified,
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if touched.is_some_and(|t| t > cutoff.as_second()) {
            return Ok(true);
        }
        self.client.delete(&record_key(key)).await?;
        Ok(false)
    }
}
