//! `list`: a directory's entries in frames of bounded size, however large the directory.

use protocol::{Entry, ListEnd, Listing, Message, PathArg, LISTING_BATCH_BYTES};
use tokio::sync::mpsc;

use crate::cmd::Handled;
use crate::reply;
use crate::session::Session;

/// Batches read ahead of the socket.
const READ_AHEAD: usize = 2;

pub async fn run(s: &mut Session, req: PathArg) -> Handled {
    let path = s.resolve(&req.path)?;
    let home = s.home.clone();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let entries = match home.list(&path) {
            Ok(entries) => entries,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for entry in entries.map(reply::entry) {
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
        // Only the first message can be an error: listing never started.
        let entries: Vec<Entry> = batch?;
        count += entries.len() as u64;
        s.send(Message::Listing(Listing { entries })).await?;
    }
    Ok(Message::ListEnd(ListEnd { count }))
}
