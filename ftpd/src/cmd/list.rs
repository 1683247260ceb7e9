//! `list`: a directory's entries in frames of bounded size, however large the directory.

use protocol::{Entry, ListEnd, Listing, Message, PathArg, LISTING_BATCH_BYTES};
use tokio::sync::mpsc;

use crate::error::SessionError;
use crate::session::Session;

/// Batches read ahead of the socket.
const READ_AHEAD: usize = 2;

pub async fn run(s: &mut Session, req: PathArg) -> Result<(), SessionError> {
    let path = match s.resolve(&req.path) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    let root = s.root.clone();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let entries = match root.list(&path) {
            Ok(entries) => entries,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            // The entry's own JSON length bounds the frame exactly, escapes included.
            let len = serde_json::to_vec(&entry).map_or(0, |v| v.len()) + 1;
            if bytes + len > LISTING_BATCH_BYTES && !batch.is_empty() {
                if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
                bytes = 0;
            }
            bytes += len;
            batch.push(entry);
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
    let mut count = 0u64;
    while let Some(batch) = rx.recv().await {
        let entries: Vec<Entry> = match batch {
            Ok(entries) => entries,
            // Only the first message can be an error: listing never started.
            Err(e) => return s.send_error(s.user_reply(&e)).await,
        };
        count += entries.len() as u64;
        s.send(Message::Listing(Listing { entries })).await?;
    }
    s.send(Message::ListEnd(ListEnd { count })).await
}
