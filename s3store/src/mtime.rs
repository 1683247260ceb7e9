//! The modification times clients send with uploads, kept beside the objects as an index of
//! empty objects `.ftpd/mtime/<key>@@<mtime>@@<etag>`: a directory's times are read by listing
//! its part of the index, one request per 1,000 files, never one request per file.
//!
//! S3 keeps no modification time but Last-Modified (when the object was stored), and a listing
//! returns no user metadata, so the time lives in the index key itself. An entry is trusted
//! only while its ETag is the object's current one: an object replaced by another tool shows
//! its Last-Modified, never a time that described another object.

use bytes::Bytes;

use crate::client::{next_page, Client};
use crate::error::Result;
use crate::upload::bare_etag;

/// Where the index lives (relative to the configured prefix), mirroring the keys it describes.
pub const MTIME_PREFIX: &str = ".ftpd/mtime/";
/// Between the name, the time and the ETag. A name may hold it too: an entry is read from the
/// right, where the time (digits) and the ETag (hex, `-`) never do.
const SEP: &str = "@@";

/// A kept time: the object's ETag when it was kept, and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The entry's own key, to delete it.
    pub entry: String,
    /// The seconds since the Unix epoch the client sent.
    pub mtime: i64,
    /// The ETag (unquoted) of the object it describes.
    pub etag: String,
}

/// The key of the entry keeping `mtime` for `key` while it has `etag`.
pub fn entry_key(key: &str, mtime: i64, etag: &str) -> String {
    format!("{MTIME_PREFIX}{key}{SEP}{mtime}{SEP}{}", bare_etag(etag))
}

/// Where the entries of the files directly in the directory `prefix` (empty, or ending in
/// `/`) are: list it with the delimiter `/`.
pub fn dir_index(prefix: &str) -> String {
    format!("{MTIME_PREFIX}{prefix}")
}

/// `<name>@@<mtime>@@<etag>` as (name, mtime, etag); `None` for anything else.
pub fn parse(rest: &str) -> Option<(&str, i64, &str)> {
    let mut it = rest.rsplitn(3, SEP);
    let etag = it.next()?;
    let mtime = it.next()?.parse().ok()?;
    let name = it.next()?;
    (!name.is_empty() && !etag.is_empty()).then_some((name, mtime, etag))
}

/// Every entry kept for `key`, whatever ETag it names (a few: old ones are removed when a new
/// one is written, but a crash in between may leave one).
pub async fn entries(client: &Client, key: &str) -> Result<Vec<Kept>> {
    let prefix = format!("{MTIME_PREFIX}{key}{SEP}");
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client.list_page(&prefix, None, token.as_deref()).await?;
        for o in page.objects {
            let Some(rest) = o.key.strip_prefix(MTIME_PREFIX) else {
                continue;
            };
            // `a@@1@@e` also lies under the prefix of a file named `a`: keep only `key`'s.
            if let Some((k, mtime, etag)) = parse(rest) {
                if k == key {
                    out.push(Kept {
                        mtime,
                        etag: etag.to_owned(),
                        entry: o.key.clone(),
                    });
                }
            }
        }
        if !next_page(&mut token, page.next)? {
            return Ok(out);
        }
    }
}

/// The time kept for `key` while its ETag is `etag`.
pub async fn kept(client: &Client, key: &str, etag: &str) -> Result<Option<i64>> {
    let etag = bare_etag(etag);
    Ok(entries(client, key)
        .await?
        .into_iter()
        .find(|k| k.etag == etag)
        .map(|k| k.mtime))
}

/// Keeps `mtime` for `key` (now with `etag`), or none when `mtime` is `None`; removes every
/// other entry of `key` (the new one first, so that no moment lacks it).
pub async fn keep(client: &Client, key: &str, mtime: Option<i64>, etag: &str) -> Result<()> {
    let old = entries(client, key).await?;
    let new = match mtime {
        Some(t) if !bare_etag(etag).is_empty() => {
            let entry = entry_key(key, t, etag);
            client.put(&entry, Bytes::new(), false).await?;
            Some(entry)
        }
        // No time sent, or no ETag to tie it to: the object shows its Last-Modified.
        _ => None,
    };
    for k in old {
        if Some(&k.entry) != new.as_ref() {
            client.delete(&k.entry).await?;
        }
    }
    Ok(())
}

/// Removes every entry of `key`.
pub async fn forget(client: &Client, key: &str) -> Result<()> {
    keep(client, key, None, "").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_from_the_right() {
        let cases = [
            ("a@@17@@abc", Some(("a", 17, "abc"))),
            ("a@@b@@-5@@abc-3", Some(("a@@b", -5, "abc-3"))),
            (
                "a b.txt@@1700000000@@0f",
                Some(("a b.txt", 1_700_000_000, "0f")),
            ),
            ("a@@x@@abc", None),
            ("@@1@@abc", None),
            ("a@@1@@", None),
            ("a@@1", None),
            ("a", None),
        ];
        for (rest, want) in cases {
            assert_eq!(parse(rest), want, "{rest}");
        }
        let k = entry_key("d/a@@b", 3, "\"e-2\"");
        assert_eq!(k, ".ftpd/mtime/d/a@@b@@3@@e-2");
        assert_eq!(
            parse(k.strip_prefix(MTIME_PREFIX).unwrap()),
            Some(("d/a@@b", 3, "e-2"))
        );
    }
}
