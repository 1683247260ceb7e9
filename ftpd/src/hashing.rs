//! Whole-file hashing on request (`stat --md5`, the prefix of a resumed `get`): a few jobs at
//! a time, results cached by the file's identity, and a job stopped as soon as the client that
//! asked for it has gone.
//!
//! A 60-byte request can otherwise cost a second of a core per 256 MiB hashed, again and
//! again, and go on costing it after the client left.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use protocol::{DigestKind, Hasher, Message};
use storage::VPath;
use tokio::sync::Semaphore;

use crate::cmd::Failure;
use crate::error::SessionError;
use crate::reply::CmdError;
use crate::session::Session;

/// Hasher states kept: small (a few hundred bytes each), and enough for the files a few
/// clients keep asking about.
const CACHE_ENTRIES: usize = 256;

/// The file's content as far as the filesystem can tell, plus what was hashed of it: any write
/// changes the ctime (which no one can set back), so a stale entry is never served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Which file: device and inode.
    dev: u64,
    ino: u64,
    /// Its state: size, modification and change times with nanoseconds.
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// The digest asked for.
    kind: DigestKind,
    /// How many bytes from the start were hashed.
    len: u64,
}

impl Key {
    /// The key for the first `len` bytes of `meta`'s file, hashed with `kind`.
    pub fn of(meta: &std::fs::Metadata, kind: DigestKind, len: u64) -> Key {
        Key {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            kind,
            len,
        }
    }
}

/// The daemon's hashing: the slots jobs take, and what earlier jobs found.
pub struct Hashing {
    /// One permit per job allowed to run at once (`--max-hashing`).
    slots: Arc<Semaphore>,
    /// Hasher states by key, the oldest dropped first.
    cache: Mutex<Cache>,
}

/// Recent results, bounded.
#[derive(Default)]
struct Cache {
    /// The states, by key.
    map: HashMap<Key, Hasher>,
    /// Keys in the order they were added, for eviction.
    order: VecDeque<Key>,
}

impl Hashing {
    pub fn new(jobs: u32) -> Hashing {
        Hashing {
            slots: Arc::new(Semaphore::new(jobs.max(1) as usize)),
            cache: Mutex::default(),
        }
    }

    /// A slot for a whole-file job of the daemon's own (a damage report's re-check, a
    /// scheduled scrub's file), if one is free now: such jobs never wait ahead of clients.
    pub fn try_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// A slot for a whole-file job of the daemon's own, waiting for one to be free.
    pub async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed")
    }

    fn cached(&self, key: &Key) -> Option<Hasher> {
        self.cache.lock().unwrap().map.get(key).cloned()
    }

    fn remember(&self, key: Key, hasher: &Hasher) {
        let mut cache = self.cache.lock().unwrap();
        if cache.map.insert(key.clone(), hasher.clone()).is_none() {
            cache.order.push_back(key);
        }
        while cache.order.len() > CACHE_ENTRIES {
            if let Some(old) = cache.order.pop_front() {
                cache.map.remove(&old);
            }
        }
    }
}

/// The running digest of the first `key.len` bytes of `file`: from the cache, or hashed in a
/// slot of its own while the session watches its client. A client that leaves (or sends
/// anything: it must wait for the answer) stops the job within one block.
pub async fn prefix(
    s: &mut Session,
    file: Arc<File>,
    key: Key,
    path: &VPath,
) -> Result<Hasher, Failure> {
    let hashing = s.hashing.clone();
    if let Some(hasher) = hashing.cached(&key) {
        return Ok(hasher);
    }
    if key.len == 0 {
        return Ok(Hasher::new(key.kind));
    }
    let limit = s.config.stall_timeout;
    let slot = match tokio::time::timeout(limit, hashing.slots.clone().acquire_owned()).await {
        Ok(slot) => slot.expect("the hashing semaphore is never closed"),
        Err(_) => return Err(CmdError::Busy("hashing").into()),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let job = {
        let (cancel, kind, len) = (cancel.clone(), key.kind, key.len);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            hash(&file, kind, len, &cancel)
        })
    };
    // Stops the job however this function ends (an error, or the session's task dropped).
    let _stop = StopOnDrop(cancel);
    tokio::pin!(job);
    let hashed = loop {
        tokio::select! {
            biased;
            done = &mut job => break done,
            frame = s.next_in_transfer() => match frame {
                Err(SessionError::Timeout(_)) => continue, // still there, just quiet
                Err(e) => return Err(e.into()),
                Ok(f) if matches!(f.message, Message::Cancel) => {
                    return Err(CmdError::Cancelled { offset: 0 }.into());
                }
                Ok(f) => {
                    let msg = format!("{:?} before the answer to the last command", f.message);
                    return Err(SessionError::Protocol(msg).into());
                }
            },
        }
    };
    let hashed = hashed.map_err(|e| SessionError::Internal(format!("hashing failed: {e}")))?;
    match hashed {
        Ok(Some(hasher)) => {
            hashing.remember(key, &hasher);
            Ok(hasher)
        }
        Ok(None) => Err(SessionError::Internal("hashing stopped".into()).into()),
        Err(e) => Err(storage::Error::io(&path.to_string(), "read", e).into()),
    }
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Hashes the first `len` bytes of `file`, looking at `cancel` between blocks: `None` once
/// it is set. A file shorter than `len` is an `UnexpectedEof`. Reads are positional: other
/// holders of the same open file (a download sending from it) keep their place.
fn hash(
    file: &File,
    kind: DigestKind,
    len: u64,
    cancel: &AtomicBool,
) -> std::io::Result<Option<Hasher>> {
    let mut hasher = Hasher::new(kind);
    let mut from = At { file, pos: 0 };
    let done = hasher.update_from_each(&mut from, len, |_| !cancel.load(Ordering::Relaxed))?;
    if cancel.load(Ordering::Relaxed) {
        return Ok(None);
    }
    if done < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(hasher))
}

/// A reader over `file` from `pos` on, by positional reads.
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl std::io::Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hashing_stops_when_cancelled_and_matches_a_one_shot_digest() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * (1 << 20) + 7).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let never = AtomicBool::new(false);
        let h = hash(&f, DigestKind::Md5, data.len() as u64 - 5, &never)
            .unwrap()
            .unwrap();
        assert_eq!(h.digest(), protocol::Digest::md5(&data[..data.len() - 5]));
        let stopped = AtomicBool::new(true);
        assert!(hash(&f, DigestKind::Md5, data.len() as u64, &stopped)
            .unwrap()
            .is_none());
    }
}
