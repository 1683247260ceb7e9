//! A byte budget shared by every connection of a process: memory for chunk bodies is taken
//! from it before the bytes are read (from the network or from disk) and given back once they
//! are written, so a thousand transfers cannot each hold their own buffers' worth.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits count this many bytes each: a `u32` of them (the most one acquire takes) then covers
/// any chunk, and a budget of terabytes still fits the semaphore.
const UNIT: u64 = 1024;

/// Most bytes of chunk buffers kept for reuse (see [`Budget::reuse`]): enough for an upload's
/// pipeline of 1 MiB chunks to go round without a fresh allocation, little beside the budget.
const REUSE_BYTES: usize = 8 << 20;

/// Bytes that chunk bodies in memory may take together. Cloning is cheap; clones share it.
#[derive(Debug, Clone)]
pub struct Budget {
    /// One permit per [`UNIT`] of bytes.
    sem: Arc<Semaphore>,
    /// Permits in all: a request for more is capped to this, so it waits for the whole
    /// budget instead of forever.
    units: u32,
    /// Buffers chunk bodies were received in, kept to receive later chunks in, each with the
    /// size of its memory.
    reuse: Arc<Mutex<Vec<(BytesMut, usize)>>>,
}

/// Bytes taken from a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    /// The permits held; released on drop.
    _held: OwnedSemaphorePermit,
}

impl Budget {
    /// A budget of `bytes` (at least one unit, at most what a semaphore can count).
    pub fn new(bytes: u64) -> Self {
        let units = bytes
            .div_ceil(UNIT)
            .clamp(1, u64::from(u32::MAX).min(Semaphore::MAX_PERMITS as u64))
            as u32;
        Budget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            reuse: Arc::default(),
        }
    }

    /// Keeps `buf`, the empty rest of a buffer of `size` bytes that a chunk body was split
    /// from, to receive a later chunk in once that body is gone; unless the buffers kept
    /// already come to [`REUSE_BYTES`].
    ///
    /// A fresh buffer per chunk costs a page fault per page: blocks of a chunk's size are
    /// mapped afresh for each (ftpd's malloc settings), which cost a 256 MiB put 65,000 faults
    /// and up to a sixth of its speed. A buffer whose body is still queued costs nothing more
    /// here (the body holds the memory anyway); one whose body is gone is memory outside the
    /// budget, [`REUSE_BYTES`] at most.
    pub(crate) fn keep(&self, mut buf: BytesMut, size: usize) {
        buf.clear();
        let mut kept = self.reuse.lock().expect("no panic while holding the lock");
        let held: usize = kept.iter().map(|(_, size)| size).sum();
        if held + size <= REUSE_BYTES {
            kept.push((buf, size));
        }
    }

    /// How many buffers are kept, for tests.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.reuse
            .lock()
            .expect("no panic while holding the lock")
            .len()
    }

    /// A buffer kept by [`Budget::keep`] whose body is gone, with room for `len` bytes, if
    /// there is one.
    pub(crate) fn reuse(&self, len: usize) -> Option<BytesMut> {
        let mut kept = self.reuse.lock().expect("no panic while holding the lock");
        // `try_reclaim` succeeds only once nothing else shares the memory: the body is gone.
        let at = kept.iter_mut().position(|(b, _)| b.try_reclaim(len))?;
        Some(kept.swap_remove(at).0)
    }

    fn units(&self, bytes: usize) -> u32 {
        (bytes as u64)
            .div_ceil(UNIT)
            .clamp(1, u64::from(self.units)) as u32
    }

    /// Waits until `bytes` are free and takes them. Waiters are served in turn, so a large
    /// request is not starved by small ones. Cancel-safe: dropping the future takes nothing.
    pub async fn take(&self, bytes: usize) -> Permit {
        let held = self
            .sem
            .clone()
            .acquire_many_owned(self.units(bytes))
            .await
            .expect("the budget's semaphore is never closed");
        Permit { _held: held }
    }

    /// Takes `bytes` if they are free now.
    pub fn try_take(&self, bytes: usize) -> Option<Permit> {
        let held = self
            .sem
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()?;
        Some(Permit { _held: held })
    }

    /// Bytes free right now (rounded down to the unit), for tests and logs.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_wait_for_what_others_give_back_and_huge_requests_are_capped() {
        let b = Budget::new(4 * UNIT);
        let a = b.take(3 * UNIT as usize).await;
        assert!(
            b.try_take(2 * UNIT as usize).is_none(),
            "only one unit is left"
        );
        let one = b.try_take(1).expect("one byte takes one unit");
        drop(a);
        assert_eq!(b.available(), 3 * UNIT);
        drop(one);
        // More than the whole budget waits for all of it, not forever.
        let all = b.take(usize::MAX).await;
        assert_eq!(b.available(), 0);
        drop(all);
        assert_eq!(b.available(), 4 * UNIT);
    }

    #[test]
    fn a_kept_buffer_is_reused_only_once_its_body_is_gone_and_few_are_kept() {
        let b = Budget::new(1 << 20);
        let mut buf = BytesMut::with_capacity(100_000);
        buf.extend_from_slice(&[1u8; 100_000]);
        let body = buf.split_to(90_000).freeze();
        b.keep(buf, 100_000);
        assert!(b.reuse(50_000).is_none(), "its body still uses the memory");
        drop(body);
        assert!(b.reuse(200_000).is_none(), "too small");
        let again = b.reuse(50_000).expect("the body is gone");
        assert!(again.is_empty() && again.capacity() >= 50_000);
        assert_eq!(b.kept(), 0);
        for _ in 0..20 {
            b.keep(BytesMut::with_capacity(1 << 20), 1 << 20);
        }
        assert_eq!(b.kept(), REUSE_BYTES >> 20, "capped in bytes");
    }
}
