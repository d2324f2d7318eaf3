//! Admission: how many media streams the bridge holds, and when a stream starts to count as a
//! call.
//!
//! A media WebSocket is *pending* from its upgrade until its first `start` passes the stream
//! guard; pending sockets have their own small cap (`limits.max_pending_streams`) and a short
//! deadline (`limits.start_timeout_ms`). Only then does it take one of the `limits.max_calls`
//! slots, so idle sockets that never send `start` (Twilio signs the fixed stream URL, so one
//! observed upgrade signature can be replayed) cannot lock real callers out.
//!
//! Every reservation is one compare-and-swap on a counter: the capacity check and the
//! reservation are a single atomic step, so a burst cannot overshoot either cap. The registry
//! of live calls ([`Admission::calls`]) follows the counter: a [`CallSlot`] inserts its entry
//! when it is made and removes it when dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;

/// A call in progress, as listed in the registry.
#[derive(Debug, Clone)]
pub struct LiveCall {
    /// When the call was admitted (its first `start`).
    pub since: SystemTime,
}

/// The bridge's two caps and the registry of admitted calls.
#[derive(Debug)]
pub struct Admission {
    max_calls: usize,
    max_pending: usize,
    admitted: AtomicUsize,
    pending: AtomicUsize,
    /// Admitted calls by connection id.
    pub calls: DashMap<u64, LiveCall>,
}

/// Takes one unit of `counter` if it is below `max`, in one atomic step.
fn reserve(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Admission {
    /// An admission with `max_calls` call slots and `max_pending` pending-stream slots.
    pub fn new(max_calls: usize, max_pending: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_calls,
            max_pending,
            admitted: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            calls: DashMap::new(),
        })
    }

    /// Admitted calls now.
    pub fn live(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Sockets waiting for their first `start` now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Whether every call slot is taken (the voice webhook answers with the fallback then).
    pub fn full(&self) -> bool {
        self.live() >= self.max_calls
    }

    /// Reserves a pending-stream slot for a socket about to be upgraded, or `None` at
    /// `max_pending_streams`.
    pub fn try_pending(self: &Arc<Self>, conn: u64) -> Option<PendingSlot> {
        reserve(&self.pending, self.max_pending).then(|| PendingSlot {
            admission: self.clone(),
            conn,
        })
    }

    /// Takes a call slot directly (no pending stage), or `None` at `max_calls`.
    pub fn try_admit(self: &Arc<Self>, conn: u64) -> Option<CallSlot> {
        if !reserve(&self.admitted, self.max_calls) {
            return None;
        }
        self.calls.insert(
            conn,
            LiveCall {
                since: SystemTime::now(),
            },
        );
        Some(CallSlot {
            admission: self.clone(),
            conn,
        })
    }
}

/// A socket's pending-stream slot; released when dropped or turned into a call slot.
#[derive(Debug)]
pub struct PendingSlot {
    admission: Arc<Admission>,
    conn: u64,
}

impl PendingSlot {
    /// Turns this pending slot into a call slot, or `None` (the pending slot is released
    /// either way) at `max_calls`.
    pub fn admit(self) -> Option<CallSlot> {
        self.admission.try_admit(self.conn)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.admission.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted call's slot and registry entry; both released when dropped.
#[derive(Debug)]
pub struct CallSlot {
    admission: Arc<Admission>,
    conn: u64,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.admission.calls.remove(&self.conn);
        self.admission.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_and_admitted_are_separate_caps() {
        let a = Admission::new(2, 3);
        let p: Vec<_> = (0..3).map(|i| a.try_pending(i).expect("slot")).collect();
        assert!(a.try_pending(9).is_none(), "pending cap");
        assert_eq!(a.live(), 0, "pending sockets are not calls");
        let mut it = p.into_iter();
        let c1 = it.next().unwrap().admit().expect("call slot");
        let c2 = it.next().unwrap().admit().expect("call slot");
        assert!(a.full());
        assert!(it.next().unwrap().admit().is_none(), "call cap");
        assert_eq!(a.pending(), 0, "every pending slot released");
        assert_eq!(a.calls.len(), 2);
        drop(c1);
        assert_eq!((a.live(), a.calls.len()), (1, 1));
        drop(c2);
        assert_eq!((a.live(), a.calls.len()), (0, 0));
    }

    #[test]
    fn a_burst_never_overshoots() {
        let a = Admission::new(50, 1000);
        let taken: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let a = a.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter_map(|i| a.try_admit(t * 1000 + i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(taken.len(), 50);
        assert_eq!(a.calls.len(), 50);
    }
}
