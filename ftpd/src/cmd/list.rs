//! `list`: a directory's entries in frames of bounded size, however large the directory.

use protocol::{
    DigestKind, Entry, EntryKind, List, ListEnd, Listing, Message, LISTING_BATCH_BYTES,
};
use storage::{FileInfo, Home, VPath};

use crate::cmd::Handled;
use crate::error::{blocking, SessionError};
use crate::reply;
use crate::session::Session;
use crate::store::Files;

/// Most entries a listing of an object store holds (it is gathered before it is sent); the
/// rest are left off.
const MAX_REMOTE_ENTRIES: usize = 100_000;

/// The directory being read, handed to each blocking task and back.
struct Reader {
    /// Entries not read yet.
    entries: Box<dyn Iterator<Item = FileInfo> + Send>,
    /// An entry read that did not fit the last batch: the first of the next.
    carry: Option<Entry>,
    /// Where to look up recorded digests, when the client asked for them: the home, the
    /// directory listed, and the session's digest kind.
    digests: Option<(Home, VPath, DigestKind)>,
}

pub async fn run(s: &mut Session, req: List) -> Handled {
    let path = s.resolve(&req.path)?;
    let reader = match &s.files {
        Files::Local(view) => {
            let home = view.home().clone();
            let digests = req.digests.then(|| (home.clone(), path.clone(), s.digest));
            blocking(move || {
                home.list(&path).map(|entries| Reader {
                    entries: Box::new(entries),
                    carry: None,
                    digests,
                })
            })
            .await??
        }
        // Without digests: on an object store they are a request a file (`mirror --checksum`
        // asks `stat` for the ones it needs).
        Files::Remote(backend) => Reader {
            entries: Box::new(backend.list(&path, MAX_REMOTE_ENTRIES).await?.into_iter()),
            carry: None,
            digests: None,
        },
    };
    // One batch is read by a blocking task while the last one is sent; the task returns after
    // each batch, so no blocking thread waits for a slow client.
    let mut next = tokio::task::spawn_blocking(move || batch(reader));
    let mut count = 0u64;
    loop {
        let (reader, entries) = next
            .await
            .map_err(|e| SessionError::Internal(format!("disk task failed: {e}")))?;
        if entries.is_empty() {
            break;
        }
        next = tokio::task::spawn_blocking(move || batch(reader));
        count += entries.len() as u64;
        s.send(Message::Listing(Listing { entries })).await?;
    }
    Ok(Message::ListEnd(ListEnd { count }))
}

/// The next entries whose frame stays under the listing cap; none at the end.
fn batch(mut reader: Reader) -> (Reader, Vec<Entry>) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        let entry = match reader.carry.take() {
            Some(entry) => entry,
            None => match reader.entries.next() {
                Some(info) => {
                    let mut entry = reply::entry(info);
                    if let (Some((home, dir, kind)), EntryKind::File) =
                        (&reader.digests, entry.kind)
                    {
                        entry.digest = VPath::resolve(dir, &entry.name)
                            .ok()
                            .and_then(|file| home.recorded_digest(&file, *kind));
                    }
                    entry
                }
                None => break,
            },
        };
        // The entry's own JSON length bounds the frame exactly, escapes included.
        let len = serde_json::to_vec(&entry).map_or(0, |v| v.len()) + 1;
        if bytes + len > LISTING_BATCH_BYTES && !batch.is_empty() {
            reader.carry = Some(entry);
            break;
        }
        bytes += len;
        batch.push(entry);
    }
    (reader, batch)
}
