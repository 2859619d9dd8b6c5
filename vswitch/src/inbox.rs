//! A vNIC's bounded inbox: frames waiting to be written into its RX virtqueue.
//!
//! Queue ownership: the inbox is drained by the vNIC's own worker (in poll mode, its poll
//! thread). Other ports' threads (another vNIC's TX worker, the uplink reader) copy a frame in
//! here when they cannot write it straight into the RX ring, and wake the worker through an
//! eventfd registered in its epoll set (not while an awake poll thread looks anyway). The same queue is the backlog for a
//! guest that has run out of RX buffers: frames wait until the guest posts buffers (RX kick),
//! and when `capacity` frames wait, new ones are dropped and counted (`backlog_full`).
//!
//! Frame buffers are allocated on first use (at most `capacity` of them) and then recycled
//! through a free list, so once warmed up the data path does not allocate: a buffer only grows
//! the first time it carries a larger frame. Memory is bounded by capacity x 64 KiB.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::offload::FrameMeta;

/// Default number of frames a vNIC may have waiting: one full 1024-entry ring's worth, so a
/// sender's TX burst is not dropped just because the receiver's worker has not run yet.
pub const DEFAULT_INBOX_CAPACITY: usize = 1024;
/// Initial size of each recycled buffer: a full-MTU frame.
const INITIAL_BUF: usize = 2048;

/// A frame waiting for delivery.
#[derive(Debug)]
pub struct InboxFrame {
    pub data: Vec<u8>,
    pub meta: FrameMeta,
}

struct Inner {
    queue: VecDeque<InboxFrame>,
    free: Vec<Vec<u8>>,
    /// Buffers in existence (queued, free, or popped by the consumer).
    allocated: usize,
}

/// Bounded multi-producer, single-consumer frame queue with an eventfd doorbell.
pub struct Inbox {
    inner: Mutex<Inner>,
    /// `inner.queue.len()`, updated under the lock: lets the per-frame "is anything waiting?"
    /// check of direct RX writes skip the lock (it was one lock round trip per frame).
    queued: AtomicUsize,
    wake: EventFd,
    /// The consumer is a poll thread that is awake and looks at the queue every round: the
    /// doorbell would only wake the vNIC's event worker for nothing (a context switch on the
    /// poll thread's core). See [`Inbox::set_polled`].
    polled: AtomicBool,
    capacity: usize,
}

/// The inbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxFull;

impl Inbox {
    pub fn new(capacity: usize) -> io::Result<Inbox> {
        let capacity = capacity.max(1);
        Ok(Inbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                free: Vec::new(),
                allocated: 0,
            }),
            queued: AtomicUsize::new(0),
            wake: EventFd::new(EFD_NONBLOCK)?,
            polled: AtomicBool::new(false),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock can only come from a bug in this module; the queue
        // is still structurally valid, so keep going rather than poisoning the port forever.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies a frame in. Wakes the consumer if the queue was empty.
    pub fn push(&self, frame: &[u8], meta: FrameMeta) -> Result<(), InboxFull> {
        self.push_with(|buf| {
            buf.extend_from_slice(frame);
            Some(meta)
        })
        .map(|_| ())
    }

    /// Lets `fill` write a frame directly into a recycled buffer (cleared first); `None` from
    /// `fill` means it produced nothing. Returns whether a frame was queued.
    pub fn push_with(
        &self,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<FrameMeta>,
    ) -> Result<bool, InboxFull> {
        let mut inner = self.lock();
        if inner.queue.len() >= self.capacity {
            return Err(InboxFull);
        }
        let mut data = match inner.free.pop() {
            Some(d) => d,
            None if inner.allocated < self.capacity => {
                inner.allocated += 1;
                Vec::with_capacity(INITIAL_BUF)
            }
            None => return Err(InboxFull),
        };
        data.clear();
        let Some(meta) = fill(&mut data) else {
            inner.free.push(data);
            return Ok(false);
        };
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(InboxFrame { data, meta });
        self.queued.store(inner.queue.len(), Ordering::Release);
        drop(inner);
        // Pairs with the fence in `set_polled(false)`: either the consumer sees this frame
        // when it looks after clearing the flag, or we see the flag cleared and ring.
        fence(Ordering::SeqCst);
        if was_empty && !self.polled.load(Ordering::Relaxed) {
            // EAGAIN only if the counter is saturated, in which case the consumer is awake.
            let _ = self.wake.write(1);
        }
        Ok(true)
    }

    /// Whether an awake poll thread consumes this inbox (no doorbell needed). A poll thread
    /// about to sleep clears it and then looks at the queue once more.
    pub fn set_polled(&self, polled: bool) {
        self.polled.store(polled, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Takes the oldest frame. Give its buffer back with [`Inbox::recycle`] or put it back
    /// with [`Inbox::unpop`].
    pub fn pop(&self) -> Option<InboxFrame> {
        let mut inner = self.lock();
        let f = inner.queue.pop_front();
        self.queued.store(inner.queue.len(), Ordering::Release);
        f
    }

    /// Returns a popped frame to the head of the queue (the guest had no RX buffer for it).
    pub fn unpop(&self, frame: InboxFrame) {
        let mut inner = self.lock();
        inner.queue.push_front(frame);
        self.queued.store(inner.queue.len(), Ordering::Release);
    }

    pub fn recycle(&self, data: Vec<u8>) {
        self.lock().free.push(data);
    }

    /// Drops every waiting frame (the frontend went away); returns how many were dropped.
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.queue.len();
        while let Some(f) = inner.queue.pop_front() {
            inner.free.push(f.data);
        }
        self.queued.store(0, Ordering::Release);
        n
    }

    /// Frames waiting (a snapshot: producers may add more right after).
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Resets the doorbell; call before draining so a push during the drain re-arms it.
    pub fn consume_wake(&self) {
        let _ = self.wake.read();
    }

    /// Rings the doorbell without a new frame (used after reconnect to flush the backlog).
    pub fn ring(&self) {
        let _ = self.wake.write(1);
    }
}

impl AsRawFd for Inbox {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_with_recycling() {
        let ib = Inbox::new(2).unwrap();
        ib.push(b"one", FrameMeta::plain(3)).unwrap();
        ib.push(b"two", FrameMeta::plain(3)).unwrap();
        assert_eq!(ib.push(b"three", FrameMeta::plain(5)), Err(InboxFull));
        let f = ib.pop().unwrap();
        assert_eq!(f.data, b"one");
        ib.unpop(f);
        let f = ib.pop().unwrap();
        assert_eq!(f.data, b"one");
        ib.recycle(f.data);
        ib.push(b"four", FrameMeta::plain(4)).unwrap();
        assert_eq!(ib.pop().unwrap().data, b"two");
        assert_eq!(ib.pop().unwrap().data, b"four");
        assert!(ib.pop().is_none());
    }

    #[test]
    fn doorbell_rings_on_empty_to_non_empty() {
        let ib = Inbox::new(4).unwrap();
        assert!(ib.wake.read().is_err(), "nothing pushed yet");
        ib.push(b"a", FrameMeta::plain(1)).unwrap();
        ib.push(b"b", FrameMeta::plain(1)).unwrap();
        assert_eq!(
            ib.wake.read().unwrap(),
            1,
            "one ring for the transition only"
        );
        assert_eq!(ib.clear(), 2);
        ib.push(b"c", FrameMeta::plain(1)).unwrap();
        assert_eq!(ib.wake.read().unwrap(), 1);
    }

    #[test]
    fn push_with_can_decline() {
        let ib = Inbox::new(1).unwrap();
        assert_eq!(ib.push_with(|_| None), Ok(false));
        assert!(ib.is_empty());
        assert_eq!(
            ib.push_with(|b| {
                b.extend_from_slice(b"x");
                Some(FrameMeta::plain(1))
            }),
            Ok(true)
        );
    }
}
