//! A session's outbound queue: what the control plane has to tell one agent.
//!
//! A bounded queue with one reader (the session's response stream) and a few writers (the
//! control plane, under its lock, and an indirect probe's round). It is built for a server
//! holding tens of thousands of sessions whose queues are almost always empty or hold one
//! ack: the slots grow as messages wait (an empty queue holds no slot at all, a busy one a
//! handful of 24-byte slots) instead of reserving a block of slots per session up front, and
//! a send is one uncontended lock and at most one wake-up.
//!
//! Semantics are those of a bounded channel: [`Outbox::try_send`] fails when the queue is
//! full or its reader is gone, and the reader's stream ends once every [`Outbox`] is dropped
//! and the queue is drained.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio_stream::Stream;

use crate::control::Outgoing;

#[derive(Debug)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// Writers alive ([`Outbox`] handles).
    senders: usize,
    /// The reader is gone: sends fail.
    closed: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The lock is never held across anything that can panic but an allocation.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds its capacity: the agent is not reading.
    Full,
    /// The session's reader is gone.
    Closed,
}

/// The writing end of a session's queue (cloned for every writer).
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The reading end: a stream of the queued messages, in order.
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

/// A queue of at most `capacity` messages (at least 1).
pub fn channel(capacity: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            senders: 1,
            closed: false,
            waker: None,
        }),
        capacity: capacity.max(1),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl Outbox {
    /// Queue `msg` unless the queue is full or its reader is gone; never waits.
    pub fn try_send(&self, msg: Outgoing) -> Result<(), SendError> {
        let waker = {
            let mut q = self.shared.lock();
            if q.closed {
                return Err(SendError::Closed);
            }
            if q.items.len() >= self.shared.capacity {
                return Err(SendError::Full);
            }
            q.items.push_back(msg);
            q.waker.take()
        };
        // Woken outside the lock: the reader may run at once on another thread.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut q = self.shared.lock();
            q.senders -= 1;
            if q.senders == 0 { q.waker.take() } else { None }
        };
        // The last writer gone: the reader must see its stream end.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Inbox {
    /// The next message if one is queued (`None` when empty or ended).
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.shared.lock().items.pop_front()
    }
}

impl Stream for Inbox {
    type Item = Outgoing;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let mut q = self.shared.lock();
        if let Some(m) = q.items.pop_front() {
            // A queue that grew during a burst gives its slots back once drained.
            if q.items.is_empty() && q.items.capacity() > 8 {
                q.items = VecDeque::new();
            }
            return Poll::Ready(Some(m));
        }
        if q.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.closed = true;
        q.items.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn ack(seq: u64) -> Outgoing {
        Outgoing::Ack {
            seq,
            lease_ttl_ms: 1,
        }
    }

    fn seq(m: Outgoing) -> u64 {
        match m {
            Outgoing::Ack { seq, .. } => seq,
            Outgoing::Other(_) => panic!("not an ack"),
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_the_last_writer_goes() {
        let (tx, mut rx) = channel(4);
        let other = tx.clone();
        tx.try_send(ack(1)).unwrap();
        other.try_send(ack(2)).unwrap();
        drop(tx);
        assert_eq!(seq(rx.next().await.unwrap()), 1);
        other.try_send(ack(3)).unwrap();
        drop(other);
        // Queued messages are still delivered after the last writer is gone.
        assert_eq!(seq(rx.next().await.unwrap()), 2);
        assert_eq!(seq(rx.next().await.unwrap()), 3);
        assert!(rx.next().await.is_none());
    }

    #[test]
    fn a_full_queue_refuses_and_a_gone_reader_closes_it() {
        let (tx, mut rx) = channel(2);
        tx.try_send(ack(1)).unwrap();
        tx.try_send(ack(2)).unwrap();
        assert_eq!(tx.try_send(ack(3)), Err(SendError::Full));
        assert_eq!(rx.try_recv().map(seq), Some(1));
        tx.try_send(ack(3)).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(ack(4)), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel(8);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = rx.next().await {
                got.push(seq(m));
            }
            got
        });
        let writer = tokio::spawn(async move {
            for i in 1..=100 {
                while tx.try_send(ack(i)) == Err(SendError::Full) {
                    tokio::task::yield_now().await;
                }
            }
        });
        writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), (1..=100).collect::<Vec<_>>());
    }
}
