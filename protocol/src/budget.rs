//! A byte budget shared by every connection of a process: memory for chunk bodies is taken
//! from it before the bytes are read (from the network or from disk) and given back once they
//! are written, so a thousand transfers cannot each hold their own buffers' worth.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits count this many bytes each: a `u32` of them (the most one acquire takes) then covers
/// any chunk, and a budget of terabytes still fits the semaphore.
const UNIT: u64 = 1024;

/// Bytes that chunk bodies in memory may take together. Cloning is cheap; clones share it.
#[derive(Debug, Clone)]
pub struct Budget {
    /// One permit per [`UNIT`] of bytes.
    sem: Arc<Semaphore>,
    /// Permits in all: a request for more is capped to this, so it waits for the whole
    /// budget instead of forever.
    units: u32,
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
        }
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
}
