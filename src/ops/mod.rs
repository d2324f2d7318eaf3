//! What operators see and steer: the per-call observer hook the call driver reports to, and
//! the pieces built on it — Prometheus metrics, call records and their store, stereo
//! recordings, the operator JSON API, the dashboard and its browser phone.
//!
//! The driver calls every [`CallObserver`] synchronously from the call task, so an observer
//! must be quick and never block: count, copy, or hand off to its own task.
//! Observers are keyed by the call's [`CallId`], which stays the same when a call moves to a
//! continued stream after `send_dtmf` (the connection id does not).

use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::call::event::{CallEvent, OperatorCommand};

pub mod api;
pub mod journal;
pub mod metrics;
pub mod recorder;
pub mod store;

/// A boxed future (the store trait is object-safe without an async-trait crate).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where finished call records are kept and read back (SQLite or PostgreSQL). Records are
/// written by the store's own writer task, fed through the channel given to the
/// [`journal::Journal`]; this trait is the read side the operator API uses.
pub trait RecordStore: Send + Sync {
    /// Ended calls, newest first: at most `limit`, started before `before_ms` (Unix ms) when
    /// given (paging).
    fn recent(
        &self,
        limit: usize,
        before_ms: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<journal::CallRecord>, String>>;
    /// One ended call's record.
    fn get<'a>(&'a self, id: &'a str)
        -> BoxFuture<'a, Result<Option<journal::CallRecord>, String>>;
}

/// A call's id: 16 random hex digits, unique across bridge instances sharing a store.
pub type CallId = Arc<str>;

/// A fresh call id.
pub fn new_call_id() -> CallId {
    format!("{:016x}", rand::random::<u64>()).into()
}

/// Whether `id` has the shape [`new_call_id`] gives: exactly 16 lowercase hex digits (so no
/// separators, no dots: safe to put in a file name).
pub fn is_call_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSource {
    /// A telephony provider's media stream (Twilio).
    Phone,
    /// The dashboard's browser phone.
    Browser,
}

impl CallSource {
    /// `phone` or `browser`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallSource::Phone => "phone",
            CallSource::Browser => "browser",
        }
    }
}

/// Receives what happens on every call. Called inline from the call task: return quickly.
pub trait CallObserver: Send + Sync {
    /// A call task started (the media WebSocket was accepted). Not called again when a parked
    /// call continues on a new stream.
    fn call_opened(&self, _id: &CallId, _conn: u64, _source: CallSource) {}
    /// A timeline event (the machine's [`CallEvent`]s, in order). `Ended` is the last one.
    fn event(&self, id: &CallId, at: SystemTime, event: &CallEvent);
    /// One caller media frame (8 kHz μ-law) with Twilio's per-track `timestamp` (ms since the
    /// stream started).
    fn caller_audio(&self, _id: &CallId, _timestamp_ms: u64, _ulaw: &[u8]) {}
    /// One agent frame (8 kHz μ-law, 20 ms) written to the caller leg. Twilio queues and
    /// plays these back to back; the bridge sends at most `playout.lead_ms` ahead.
    fn agent_audio(&self, _id: &CallId, _ulaw: &[u8]) {}
    /// A `clear` went to the caller leg: audio queued there and not yet played is dropped.
    fn agent_clear(&self, _id: &CallId) {}
    /// The call opened under `id` turned out to be a continued stream of a parked call (after
    /// `send_dtmf`); it carries on under the parked call's id. Forget `id`: no event follows.
    fn call_discarded(&self, _id: &CallId) {}
    /// The call task failed (panicked) without its `Ended` event.
    fn call_failed(&self, _id: &CallId) {}
}

/// The observers a call reports to.
#[derive(Clone, Default)]
pub struct Observers(Arc<[Arc<dyn CallObserver>]>);

impl Observers {
    /// A list of observers.
    pub fn new(list: Vec<Arc<dyn CallObserver>>) -> Observers {
        Observers(list.into())
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// See [`CallObserver::call_opened`].
    pub fn call_opened(&self, id: &CallId, conn: u64, source: CallSource) {
        for o in self.0.iter() {
            o.call_opened(id, conn, source);
        }
    }
    /// See [`CallObserver::event`].
    pub fn event(&self, id: &CallId, at: SystemTime, event: &CallEvent) {
        for o in self.0.iter() {
            o.event(id, at, event);
        }
    }
    /// See [`CallObserver::caller_audio`].
    pub fn caller_audio(&self, id: &CallId, timestamp_ms: u64, ulaw: &[u8]) {
        for o in self.0.iter() {
            o.caller_audio(id, timestamp_ms, ulaw);
        }
    }
    /// See [`CallObserver::agent_audio`].
    pub fn agent_audio(&self, id: &CallId, ulaw: &[u8]) {
        for o in self.0.iter() {
            o.agent_audio(id, ulaw);
        }
    }
    /// See [`CallObserver::call_discarded`].
    pub fn call_discarded(&self, id: &CallId) {
        for o in self.0.iter() {
            o.call_discarded(id);
        }
    }
    /// See [`CallObserver::call_failed`].
    pub fn call_failed(&self, id: &CallId) {
        for o in self.0.iter() {
            o.call_failed(id);
        }
    }
    /// See [`CallObserver::agent_clear`].
    pub fn agent_clear(&self, id: &CallId) {
        for o in self.0.iter() {
            o.agent_clear(id);
        }
    }
}

/// An operator's request to a live call, with where to send the outcome.
pub struct OperatorRequest {
    /// What to do.
    pub command: OperatorCommand,
    /// `Ok` once done (a hang-up: the call is ending; a transfer: the provider accepted it).
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Why an operator request could not be carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// No live call with that id on this bridge.
    #[error("no live call with that id on this bridge")]
    NotFound,
    /// The call refused or failed the request.
    #[error("{0}")]
    Failed(String),
    /// The call did not answer in time.
    #[error("the call did not answer in time")]
    Timeout,
}

/// Live calls' command inboxes, by call id (the operator API sends, call tasks receive).
#[derive(Clone, Default)]
pub struct CommandBoard(Arc<DashMap<CallId, mpsc::Sender<OperatorRequest>>>);

impl CommandBoard {
    /// Registers a call task's inbox; returns its receiving end.
    pub fn register(&self, id: &CallId) -> mpsc::Receiver<OperatorRequest> {
        let (tx, rx) = mpsc::channel(8);
        self.0.insert(id.clone(), tx);
        rx
    }
    /// Removes a call's inbox (the call ended or was parked).
    pub fn unregister(&self, id: &CallId) {
        self.0.remove(id);
    }
    /// Whether a call with this id is live here.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }
    /// Sends a command to a live call and waits (bounded) for the outcome.
    pub async fn send(
        &self,
        id: &str,
        command: OperatorCommand,
        wait: std::time::Duration,
    ) -> Result<(), CommandError> {
        let tx = self
            .0
            .get(id)
            .map(|e| e.value().clone())
            .ok_or(CommandError::NotFound)?;
        let (reply, rx) = oneshot::channel();
        tx.send(OperatorRequest { command, reply })
            .await
            .map_err(|_| CommandError::NotFound)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(CommandError::Failed(e)),
            Ok(Err(_)) => Err(CommandError::NotFound),
            Err(_) => Err(CommandError::Timeout),
        }
    }
}
