//! The registry of resumable uploads (docs/S3.md's upload-state record as rows) and its
//! fencing: a newer attempt takes an upload over with a new lease token, and a writer whose
//! token is no longer the upload's can record nothing more.

use tokio_postgres::Row;

use crate::{to_i64, Error, Result, State};

/// Text fields stored at most (a key, an upload id, a digest state, a holder): a state record
/// is a few hundred bytes.
const MAX_FIELD: usize = 4096;
/// S3's largest part number.
const MAX_PART: u32 = 10_000;
/// A part's chunk digests at most: 4,096 digests of 64 hex digits and their JSON (the
/// caller keeps at most that many across a resume).
const MAX_CHUNKS: usize = 300 << 10;

/// Who writes an upload now. Tokens come from one database sequence: each start or takeover
/// gets a larger one than any before, for any key, so a token names one lease ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The upload's target key (relative to the service root).
    pub key: String,
    /// The multipart upload this lease writes.
    pub upload_id: String,
    /// What every write of the holder presents.
    pub token: i64,
}

/// A new upload to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    /// The target key (relative to the service root): one upload per key at a time.
    pub key: String,
    /// The S3 multipart upload id.
    pub upload_id: String,
    /// Every part but the last is this long, so a part number gives its offset.
    pub part_size: u64,
    /// `md5`, `blake3`: as `checksum::DigestKind` names it.
    pub digest_kind: String,
    /// The digest state before any part (hex of the hasher's serialization).
    pub digest_state: String,
    /// Which instance and session writes it, for the logs.
    pub holder: String,
    /// The client's own name for the upload (with its user): a resume continues only the
    /// same client upload.
    pub client_id: Option<String>,
    /// The size the client declared: a resume of a different file starts anew.
    pub size: Option<u64>,
}

/// A part stored and acknowledged by S3, and the digest state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1 to 10,000, in file order.
    pub number: u32,
    /// S3's ETag for it: what CompleteMultipartUpload names the part by, and checks.
    pub etag: String,
    /// Its bytes.
    pub size: u64,
    /// The running digest state once this part is hashed: where a resume continues.
    pub digest_state: String,
    /// The running digests of the chunks that end within this part, in the caller's text
    /// form (opaque here); `None` when the part does not end on a chunk boundary.
    pub chunks: Option<String>,
}

/// An upload as registered, with the parts recorded (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The target key.
    pub key: String,
    /// The S3 multipart upload id.
    pub upload_id: String,
    /// As registered at the start.
    pub part_size: u64,
    /// As registered at the start.
    pub digest_kind: String,
    /// The digest state before any part.
    pub digest_state: String,
    /// Who holds the lease now.
    pub holder: String,
    /// As registered at the start.
    pub client_id: Option<String>,
    /// As registered at the start.
    pub size: Option<u64>,
    /// The current lease token.
    pub token: i64,
    /// Recorded, in order of number.
    pub parts: Vec<Part>,
}

impl Upload {
    /// The bytes stored under the recorded parts, while they run 1, 2, 3... without a gap:
    /// where a resumed upload continues. (Parts are recorded in order, so a gap means a
    /// part was lost; the bytes after it are sent again.)
    pub fn offset(&self) -> u64 {
        self.contiguous().map(|p| p.size).sum()
    }

    /// The digest state at [`Upload::offset`].
    pub fn resume_state(&self) -> &str {
        self.contiguous()
            .last()
            .map_or(&self.digest_state, |p| &p.digest_state)
    }

    fn contiguous(&self) -> impl Iterator<Item = &Part> {
        self.parts
            .iter()
            .enumerate()
            .take_while(|(i, p)| p.number as usize == i + 1)
            .map(|(_, p)| p)
    }

    pub fn lease(&self) -> Lease {
        Lease {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            token: self.token,
        }
    }
}

fn check(fields: &[&str]) -> Result<()> {
    if fields.iter().any(|f| f.len() > MAX_FIELD) {
        return Err(Error::Invalid("an upload record field is too long".into()));
    }
    Ok(())
}

/// An optional size as the bigint column holds it.
fn to_i64_opt(n: Option<u64>, what: &str) -> Result<Option<i64>> {
    n.map(|n| to_i64(n, what)).transpose()
}

const PART_COLUMNS: &str = "number, etag, size, digest_state, chunks";

fn row_to_part(row: &Row) -> Part {
    Part {
        number: row.get::<_, i32>(0).max(0) as u32,
        etag: row.get(1),
        size: row.get::<_, i64>(2).max(0) as u64,
        digest_state: row.get(3),
        chunks: row.get(4),
    }
}

const UPLOAD_COLUMNS: &str = "key, upload_id, part_size, digest_kind, digest_state, \
     lease_holder, lease_token, client_id, size";

fn row_to_upload(row: &Row, parts: Vec<Part>) -> Upload {
    Upload {
        key: row.get(0),
        upload_id: row.get(1),
        part_size: row.get::<_, i64>(2).max(0) as u64,
        digest_kind: row.get(3),
        digest_state: row.get(4),
        holder: row.get(5),
        token: row.get(6),
        client_id: row.get(7),
        size: row.get::<_, Option<i64>>(8).map(|n| n.max(0) as u64),
        parts,
    }
}

impl State {
    /// Registers a new upload of `upload.key` and gives its lease. An earlier upload of the
    /// same key is replaced (its parts forgotten, its writer fenced); its upload id comes back
    /// so that the caller aborts it on S3 (the sweeper would, later).
    pub async fn start_upload(&self, upload: &NewUpload) -> Result<(Lease, Option<String>)> {
        check(&[
            &upload.key,
            &upload.upload_id,
            &upload.digest_kind,
            &upload.digest_state,
            &upload.holder,
            upload.client_id.as_deref().unwrap_or_default(),
        ])?;
        let part_size = to_i64(upload.part_size, "the part size")?;
        let size = to_i64_opt(upload.size, "the upload size")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let previous = tx
            .query_opt(
                "SELECT upload_id FROM uploads WHERE key = $1 FOR UPDATE",
                &[&upload.key],
            )
            .await?
            .map(|r| r.get::<_, String>(0));
        tx.execute("DELETE FROM upload_parts WHERE key = $1", &[&upload.key])
            .await?;
        // An upsert: two starts of a new key at once both succeed, the later one winning
        // (the earlier one's upload is then found by the sweeper).
        let row = tx
            .query_one(
                "INSERT INTO uploads (key, upload_id, part_size, digest_kind, digest_state,
                   lease_holder, lease_token, client_id, size)
                 VALUES ($1, $2, $3, $4, $5, $6, nextval('upload_lease_token'), $7, $8)
                 ON CONFLICT (key) DO UPDATE SET upload_id = excluded.upload_id,
                   part_size = excluded.part_size, digest_kind = excluded.digest_kind,
                   digest_state = excluded.digest_state, lease_holder = excluded.lease_holder,
                   lease_token = excluded.lease_token, client_id = excluded.client_id,
                   size = excluded.size, created = now(), updated = now()
                 RETURNING lease_token",
                &[
                    &upload.key,
                    &upload.upload_id,
                    &part_size,
                    &upload.digest_kind,
                    &upload.digest_state,
                    &upload.holder,
                    &upload.client_id,
                    &size,
                ],
            )
            .await?;
        tx.commit().await?;
        let lease = Lease {
            key: upload.key.clone(),
            upload_id: upload.upload_id.clone(),
            token: row.get(0),
        };
        Ok((lease, previous.filter(|id| *id != upload.upload_id)))
    }

    /// Takes the upload of `key` over for `holder` (a resume, on this instance or another):
    /// a new token in one statement, so of two attempts at once each gets its own and the
    /// later one wins; the earlier holder is fenced from then on. The parts recorded so far
    /// come back with it: they were verified, and the new holder continues after them.
    /// `None` when no upload of `key` is registered.
    pub async fn take_lease(&self, key: &str, holder: &str) -> Result<Option<Upload>> {
        check(&[key, holder])?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                &format!(
                    "UPDATE uploads SET lease_token = nextval('upload_lease_token'),
                       lease_holder = $2, updated = now()
                     WHERE key = $1 RETURNING {UPLOAD_COLUMNS}"
                ),
                &[&key, &holder],
            )
            .await?
        else {
            return Ok(None);
        };
        // The row is locked by the update until commit: no part can be recorded in between,
        // so these are all the parts there are under the new token.
        let parts = tx
            .query(
                &format!("SELECT {PART_COLUMNS} FROM upload_parts WHERE key = $1 ORDER BY number"),
                &[&key],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(row_to_upload(
            &row,
            parts.iter().map(row_to_part).collect(),
        )))
    }

    /// The upload of `key` as registered, without taking it (for listings and the sweeper).
    pub async fn upload(&self, key: &str) -> Result<Option<Upload>> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE key = $1"),
                &[&key],
            )
            .await?
        else {
            return Ok(None);
        };
        let parts = client
            .query(
                &format!("SELECT {PART_COLUMNS} FROM upload_parts WHERE key = $1 ORDER BY number"),
                &[&key],
            )
            .await?;
        Ok(Some(row_to_upload(
            &row,
            parts.iter().map(row_to_part).collect(),
        )))
    }

    /// Records a part S3 acknowledged, with the digest state after it, only while `lease` is
    /// the upload's current one: one statement, whose update of the upload row waits for (and
    /// then re-checks against) a takeover in progress. [`Error::Fenced`] otherwise: the
    /// holder must stop; its part is not counted.
    pub async fn record_part(&self, lease: &Lease, part: &Part) -> Result<()> {
        check(&[&part.etag, &part.digest_state])?;
        if part.chunks.as_ref().is_some_and(|c| c.len() > MAX_CHUNKS) {
            return Err(Error::Invalid("a part's chunk digests are too long".into()));
        }
        if !(1..=MAX_PART).contains(&part.number) {
            return Err(Error::Invalid("a part number is 1 to 10000".into()));
        }
        let number = part.number as i32;
        let size = to_i64(part.size, "a part size")?;
        let client = self.client().await?;
        let n = client
            .execute(
                "WITH current AS (
                   UPDATE uploads SET updated = now()
                   WHERE key = $1 AND upload_id = $2 AND lease_token = $3
                   RETURNING key)
                 INSERT INTO upload_parts (key, number, etag, size, digest_state, lease_token,
                   chunks)
                 SELECT key, $4, $5, $6, $7, $3, $8 FROM current
                 ON CONFLICT (key, number) DO UPDATE SET etag = excluded.etag,
                   size = excluded.size, digest_state = excluded.digest_state,
                   lease_token = excluded.lease_token, chunks = excluded.chunks",
                &[
                    &lease.key,
                    &lease.upload_id,
                    &lease.token,
                    &number,
                    &part.etag,
                    &size,
                    &part.digest_state,
                    &part.chunks,
                ],
            )
            .await?;
        if n == 0 {
            return Err(Error::Fenced);
        }
        Ok(())
    }

    /// The parts to complete the upload with, in order, while `lease` is current (else
    /// [`Error::Fenced`]): every row was recorded under a token current at the time, and the
    /// rows of a taken-over upload are what the new holder was handed with its lease.
    /// Completion still compares each part's ETag with S3's ListParts (docs/CLUSTER.md).
    pub async fn parts(&self, lease: &Lease) -> Result<Vec<Part>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let current = tx
            .query_opt(
                "SELECT 1 FROM uploads WHERE key = $1 AND upload_id = $2 AND lease_token = $3",
                &[&lease.key, &lease.upload_id, &lease.token],
            )
            .await?;
        if current.is_none() {
            return Err(Error::Fenced);
        }
        let rows = tx
            .query(
                &format!("SELECT {PART_COLUMNS} FROM upload_parts WHERE key = $1 ORDER BY number"),
                &[&lease.key],
            )
            .await?;
        tx.commit().await?;
        Ok(rows.iter().map(row_to_part).collect())
    }

    /// Forgets a completed (or aborted) upload, while `lease` is current; [`Error::Fenced`]
    /// otherwise, and then the upload belongs to its new holder.
    pub async fn finish_upload(&self, lease: &Lease) -> Result<()> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM uploads WHERE key = $1 AND upload_id = $2 AND lease_token = $3",
                &[&lease.key, &lease.upload_id, &lease.token],
            )
            .await?;
        if n == 0 {
            return Err(Error::Fenced);
        }
        Ok(())
    }

    /// Forgets the upload of `key` whoever holds it (the sweeper, after aborting it on S3);
    /// whether there was one.
    pub async fn remove_upload(&self, key: &str) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .execute("DELETE FROM uploads WHERE key = $1", &[&key])
            .await?
            > 0)
    }

    /// Forgets the uploads not written to for `age`, oldest first, at most `limit`, and
    /// returns them (key, upload id) for the caller to abort on S3. One statement: an upload
    /// resumed (its lease taken, so `updated` set) at the same moment is either taken before
    /// and not stale, or taken after and finds no upload (and starts anew); a sweeper on
    /// another instance at once skips the rows this one holds. If the abort then fails, the
    /// S3 upload is unregistered, and the sweeper's listing of S3 finds it next time.
    pub async fn sweep_uploads(
        &self,
        age: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "DELETE FROM uploads WHERE key IN (
                   SELECT key FROM uploads
                   WHERE updated < now() - make_interval(secs => $1::float8)
                   ORDER BY updated LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING key, upload_id",
                &[&crate::secs(age), &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(numbers: &[u32]) -> Upload {
        Upload {
            key: "k".into(),
            upload_id: "u".into(),
            part_size: 10,
            digest_kind: "md5".into(),
            digest_state: "s0".into(),
            holder: "h".into(),
            client_id: None,
            size: None,
            token: 1,
            parts: numbers
                .iter()
                .map(|&number| Part {
                    number,
                    etag: format!("e{number}"),
                    size: 10,
                    digest_state: format!("s{number}"),
                    chunks: None,
                })
                .collect(),
        }
    }

    /// A resume continues after the parts without a gap, from the state recorded with the
    /// last of them: a part after a gap is sent again, not trusted.
    #[test]
    fn a_resume_continues_after_the_parts_without_a_gap() {
        let cases: [(&[u32], u64, &str); 4] = [
            (&[], 0, "s0"),
            (&[1, 2, 3], 30, "s3"),
            (&[1, 2, 4], 20, "s2"),
            (&[2, 3], 0, "s0"),
        ];
        for (numbers, offset, state) in cases {
            let u = upload(numbers);
            assert_eq!(
                (u.offset(), u.resume_state()),
                (offset, state),
                "{numbers:?}"
            );
        }
    }
}
