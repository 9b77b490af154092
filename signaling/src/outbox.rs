//! A connection's outbound side, shared by whoever delivers to the device
//! (which queues frames and may ask for a close) and the connection's task
//! (which writes them): a bounded queue, the close code, and one wake-up.
//! One small allocation per connection; the queue holds memory only while
//! frames wait. Delivery never waits: a device whose queue is full is
//! disconnected (a slow reader must not grow the server's memory).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use courier_common::sync::lock;
use courier_protocol::event::error_frame;
use courier_protocol::{ErrorCode, close};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    len_max: usize,
    /// 0 while open; the first close code wins.
    code: AtomicU16,
    /// The device was signed out: it will not come back to resume.
    signed_out: AtomicBool,
    wake: Notify,
}

impl Outbox {
    pub fn new(len_max: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::new(VecDeque::new()),
            len_max,
            code: AtomicU16::new(0),
            signed_out: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Queues `frame`; a full queue disconnects the slow reader.
    pub fn push(&self, frame: impl Into<Utf8Bytes>) {
        let frame = frame.into();
        {
            let mut queue = lock(&self.queue);
            if queue.len() < self.len_max {
                queue.push_back(frame);
                drop(queue);
                self.wake.notify_one();
                return;
            }
        }
        if !self.is_closed() {
            metrics::counter!("signaling_slow_readers_total").increment(1);
        }
        self.close(close::SLOW_READER);
    }

    /// The next queued frame.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut queue = lock(&self.queue);
        let frame = queue.pop_front();
        if queue.is_empty() {
            // Most connections sit idle: an empty queue holds no memory.
            *queue = VecDeque::new();
        }
        frame
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// How many frames are queued.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Asks the connection to close with `code` (the first code asked wins).
    /// Queues a last `error` frame and closes with `close_code`; nothing when
    /// the connection is closing already (it was told why once).
    pub fn fail(&self, id: Option<&str>, error: ErrorCode, message: &str, close_code: u16) {
        if self.is_closed() {
            return;
        }
        self.push(error_frame(id, error, message));
        self.close(close_code);
    }

    /// The device was signed out (on any node): a last `unauthenticated`
    /// error, close 4401, and its calls end with the connection.
    pub fn sign_out(&self) {
        self.signed_out.store(true, Ordering::Release);
        self.fail(
            None,
            ErrorCode::Unauthenticated,
            "this device was signed out; sign in again",
            close::UNAUTHENTICATED,
        );
    }

    pub fn was_signed_out(&self) -> bool {
        self.signed_out.load(Ordering::Acquire)
    }

    pub fn close(&self, code: u16) {
        let _ = self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.code.load(Ordering::Acquire) != 0
    }

    /// The close code asked for, or a normal closure.
    pub fn code(&self) -> u16 {
        match self.code.load(Ordering::Acquire) {
            0 => close::NORMAL,
            code => code,
        }
    }

    /// Waits until a frame was queued or a close asked for since the last wait.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}
