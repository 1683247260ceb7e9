//! `--check-config` for S3: can we reach and write the bucket, and which conditional writes
//! does this service honour.

use bytes::Bytes;

use crate::client::Client;
use crate::error::{ErrorKind, Result};
use crate::upload::RESERVED_PREFIX;

/// Whether the service refused a second create-only write of the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// It answered 412: no clobber holds.
    Honoured,
    /// It overwrote: no clobber is only as good as a HEAD before the write (a race window).
    Ignored,
}

/// What [`probe`] found. Reaching and writing the bucket are errors when they fail, so a
/// report means both worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReport {
    /// `If-None-Match: *` on PutObject.
    pub put_if_none_match: Conditional,
    /// `If-None-Match: *` on CompleteMultipartUpload.
    pub complete_if_none_match: Conditional,
}

fn verdict(r: Result<String>) -> Result<Conditional> {
    match r {
        Ok(_) => Ok(Conditional::Ignored),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Conditional::Honoured),
        Err(e) => Err(e),
    }
}

/// Puts a probe object, tries to create it again both ways, and deletes it.
pub async fn probe(client: &Client) -> Result<ProbeReport> {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| crate::Error::with(ErrorKind::Config, e.to_string()))?;
    let key = format!("{RESERVED_PREFIX}probe-{}", hex::encode(id));
    client.put(&key, Bytes::from_static(b"probe"), true).await?;
    let report = async {
        let put_if_none_match =
            verdict(client.put(&key, Bytes::from_static(b"again"), true).await)?;
        let upload_id = client.create_multipart(&key).await?;
        let outcome = async {
            let etag = client
                .upload_part(&key, &upload_id, 1, Bytes::from_static(b"part"))
                .await?;
            client.complete(&key, &upload_id, &[(1, etag)], true).await
        }
        .await;
        let complete_if_none_match = verdict(outcome);
        if !matches!(complete_if_none_match, Ok(Conditional::Ignored)) {
            // A refused or failed complete leaves the upload open.
            let _ = client.abort(&key, &upload_id).await;
        }
        Ok(ProbeReport {
            put_if_none_match,
            complete_if_none_match: complete_if_none_match?,
        })
    }
    .await;
    client.delete(&key).await?;
    report
}
