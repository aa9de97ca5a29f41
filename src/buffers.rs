//! Recycled piece buffers. A piece's buffer is allocated by the peer
//! thread that assembles it and freed by the writer thread once written;
//! with 1 MiB pieces the allocator hands such buffers back to the kernel
//! and faults fresh zeroed pages in for the next (48,000 page faults for
//! 1 GiB). The writer gives written buffers back here and peer threads
//! take them first. Bounded: at most `capacity` spare buffers are kept;
//! the rest are freed as before. Owns no thread and no I/O.

use crossbeam_channel::{bounded, Receiver, Sender};

/// A session's spare piece buffers (cheap to clone: one channel).
#[derive(Clone, Debug)]
pub(crate) struct Buffers {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl Buffers {
    /// A pool keeping at most `capacity` spare buffers.
    pub(crate) fn new(capacity: usize) -> Buffers {
        let (tx, rx) = bounded(capacity.max(1));
        Buffers { tx, rx }
    }

    /// An empty buffer with room for `len` bytes: a spare one if it fits
    /// (at least `len`, at most twice that, so one torrent's big pieces
    /// do not pin memory for another's small ones), else a new one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        match self.rx.try_recv() {
            Ok(mut b) if b.capacity() >= len && b.capacity() / 2 <= len => {
                b.clear();
                b
            }
            _ => Vec::with_capacity(len),
        }
    }

    /// Keeps `buf` for reuse, or frees it when enough are kept.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        let _ = self.tx.try_send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_only_when_they_fit() {
        let pool = Buffers::new(2);
        let mut b = pool.take(1000);
        assert!(b.capacity() >= 1000 && b.is_empty());
        b.extend_from_slice(&[7; 1000]);
        let at = b.as_ptr();
        pool.give(b);
        let again = pool.take(600);
        assert_eq!(again.as_ptr(), at, "reused");
        assert!(again.is_empty());
        // Too big for a small piece (more than twice): not reused.
        pool.give(again);
        let small = pool.take(100);
        assert!(small.capacity() < 1000);
        assert_eq!(pool.rx.len(), 0, "the misfit was freed, not kept");
        // At most `capacity` kept.
        for _ in 0..5 {
            pool.give(Vec::with_capacity(10));
        }
        assert_eq!(pool.rx.len(), 2);
    }
}
