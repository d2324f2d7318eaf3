//! Small holders for what comes from the caller before it can go to the model: the
//! pre-connect ring (caller audio while the model session is not ready) and the DTMF
//! collector (key presses gathered into one message). Sans-IO and clock-free like the
//! machine; neither decides when to flush — the machine does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::machine::FRAME_BYTES;

/// Caller μ-law kept while no model session can take it; the oldest bytes go first when full.
#[derive(Debug)]
pub struct PreconnectRing {
    buf: VecDeque<u8>,
    /// Capacity in frames while connecting (0: nothing is kept).
    frames: usize,
    dropped: u64,
}

impl PreconnectRing {
    /// A ring of `frames` 20 ms frames.
    pub fn new(frames: usize) -> PreconnectRing {
        PreconnectRing {
            buf: VecDeque::with_capacity((frames * FRAME_BYTES).min(64 * 1024)),
            frames,
            dropped: 0,
        }
    }

    /// Keeps caller audio while the first session connects (up to the configured size; with
    /// a size of zero nothing is kept).
    pub fn push_connecting(&mut self, ulaw: &[u8]) {
        let cap = self.frames * FRAME_BYTES;
        if cap == 0 {
            self.dropped += ulaw.len() as u64;
            return;
        }
        self.push(ulaw, cap);
    }

    /// Keeps caller audio during a handover (at least one frame, whatever the size).
    pub fn push_handover(&mut self, ulaw: &[u8]) {
        self.push(ulaw, self.frames.max(1) * FRAME_BYTES);
    }

    fn push(&mut self, ulaw: &[u8], cap: usize) {
        if ulaw.len() >= cap {
            self.dropped += (self.buf.len() + ulaw.len() - cap) as u64;
            self.buf.clear();
            self.buf.extend(&ulaw[ulaw.len() - cap..]);
            return;
        }
        let over = (self.buf.len() + ulaw.len()).saturating_sub(cap);
        self.buf.drain(..over);
        self.dropped += over as u64;
        self.buf.extend(ulaw);
    }

    /// Empties the ring front to back in chunks of at most `chunk` bytes.
    pub fn drain_chunks(&mut self, chunk: usize, mut each: impl FnMut(&[u8])) {
        for part in self.buf.make_contiguous().chunks(chunk.max(1)) {
            each(part);
        }
        self.buf.clear();
    }

    /// Bytes dropped because the ring was full (or kept nothing).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Key presses gathered until `#` or a pause, then sent to the model as one message.
#[derive(Debug)]
pub struct DtmfCollector {
    digits: String,
    deadline: Option<Instant>,
    idle: Duration,
}

impl DtmfCollector {
    /// A collector that sends after `idle` without a key press.
    pub fn new(idle: Duration) -> DtmfCollector {
        DtmfCollector {
            digits: String::new(),
            deadline: None,
            idle,
        }
    }

    /// A key press. Returns `true` when the digits are due at once (`#`).
    pub fn press(&mut self, digit: char, now: Instant) -> bool {
        self.digits.push(digit);
        if digit == '#' {
            true
        } else {
            self.deadline = Some(now + self.idle);
            false
        }
    }

    /// When the digits are due by the pause.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The pause has run out by `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Digits are held (were due while the model could not take them) and no pause runs.
    pub fn is_held(&self) -> bool {
        !self.digits.is_empty() && self.deadline.is_none()
    }

    /// Stops the pause timer and, when the model can take them, hands over the digits.
    pub fn take(&mut self, model_writable: bool) -> Option<String> {
        self.deadline = None;
        if self.digits.is_empty() || !model_writable {
            return None;
        }
        Some(std::mem::take(&mut self.digits))
    }
}
