//! Call records as they are built: one [`CallRecord`] per call, filled from the call's
//! events, visible while the call is live (dashboard, API), handed to the store when it ends,
//! and streamed to dashboard subscribers as [`Update`]s.
//!
//! Numbers are redacted before they enter a record; transcripts and tool arguments are kept
//! only when `records.transcripts` is on. Every list in a record is bounded, so a record's
//! memory stays small on the longest call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::{CallId, CallObserver, CallSource};
use crate::call::machine::{CallEnd, CallEvent};
use crate::config::{Config, PricingConfig};
use crate::gemini::wire::UsageMetadata;
use crate::redact::{redact_destination, redact_number, redact_text};

/// Most transcript entries kept per call (then `truncated` is set).
pub const MAX_TRANSCRIPT_ENTRIES: usize = 2_000;
/// Most transcript characters kept per call.
pub const MAX_TRANSCRIPT_CHARS: usize = 200_000;
/// Most tool calls, timeline events and handovers kept per call (each).
pub const MAX_LIST: usize = 1_000;

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One line of the conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TranscriptEntry {
    /// Milliseconds from the call's start to the first fragment of this line.
    pub at_ms: u64,
    /// `caller` or `agent`.
    pub speaker: String,
    /// The model's transcription, fragments joined.
    pub text: String,
}

/// One tool call by the model (or a transfer by an operator).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallEntry {
    /// Milliseconds from the call's start.
    pub at_ms: u64,
    /// The model's call id.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments (`null` when transcripts are not kept: they may carry the caller's words).
    pub args: serde_json::Value,
    /// `ok`, `error`, or `pending` while it runs (or when the call ended first).
    pub outcome: String,
    /// When the bridge answered it, ms from the call's start.
    pub done_at_ms: Option<u64>,
}

/// The conversation moved to a new model connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HandoverEntry {
    /// Milliseconds from the call's start.
    pub at_ms: u64,
    /// `go_away` (planned) or `fault` (recovery).
    pub reason: String,
    /// Whether the session was resumed (else: a fresh session seeded with the transcript).
    pub resumed: bool,
    /// From the old connection's end to the new one's `setupComplete`, ms.
    pub gap_ms: u64,
}

/// Something on the call's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineEntry {
    /// Milliseconds from the call's start.
    pub at_ms: u64,
    /// What happened (`started`, `model_ready`, `agent_speaking`, `turn_heard`, `barge_in`,
    /// `tool_call`, `tool_result`, `dtmf`, `continued`, `handover`, `wrap_up`, `go_away`,
    /// `operator`, `ended`).
    pub kind: String,
    /// Details (numbers only; never transcripts, digits or numbers).
    pub detail: serde_json::Value,
}

/// Model tokens by direction and modality, summed over the call's `usageMetadata` (which the
/// Live API reports per turn, not cumulatively).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenUsage {
    /// Prompt (input) tokens by modality (`AUDIO`, `TEXT`, …; `UNSPECIFIED` for counts the
    /// model gave without a modality split).
    pub prompt: BTreeMap<String, u64>,
    /// Response (output) tokens by modality.
    pub response: BTreeMap<String, u64>,
    /// Sum of `totalTokenCount`.
    pub total: u64,
}

impl TokenUsage {
    /// Adds one `usageMetadata`; returns the added tokens as `(direction, modality, count)`.
    pub fn add(&mut self, u: &UsageMetadata) -> Vec<(&'static str, String, u64)> {
        let mut added = Vec::new();
        for (direction, count, details, map) in [
            (
                "prompt",
                u.prompt_token_count,
                &u.prompt_details,
                &mut self.prompt,
            ),
            (
                "response",
                u.response_token_count,
                &u.response_details,
                &mut self.response,
            ),
        ] {
            let mut split = 0u64;
            for (modality, n) in details {
                let m = modality.to_ascii_uppercase();
                *map.entry(m.clone()).or_default() += n;
                split += n;
                added.push((direction, m, *n));
            }
            let rest = count.saturating_sub(split);
            if rest > 0 {
                *map.entry("UNSPECIFIED".into()).or_default() += rest;
                added.push((direction, "UNSPECIFIED".into(), rest));
            }
        }
        self.total += u.total_token_count;
        added
    }

    /// Estimated cost in USD at these prices.
    pub fn cost_usd(&self, pricing: &PricingConfig) -> f64 {
        let side = |dir: &str, map: &BTreeMap<String, u64>| {
            map.iter()
                .map(|(m, n)| *n as f64 * pricing.per_token(dir, m))
                .sum::<f64>()
        };
        side("prompt", &self.prompt) + side("response", &self.response)
    }
}

/// Everything kept about one call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// The bridge's call id (16 hex digits).
    pub id: String,
    /// `phone` or `browser`.
    pub source: String,
    /// Twilio `CallSid` (`CA…`), once the stream started.
    pub call_sid: Option<String>,
    /// The latest Twilio `StreamSid` (`MZ…`).
    pub stream_sid: Option<String>,
    /// The caller's number, redacted (`+*******67`).
    pub from: Option<String>,
    /// The number called, redacted.
    pub to: Option<String>,
    /// Unix ms.
    pub started_at_ms: i64,
    /// Unix ms; `None` while live.
    pub ended_at_ms: Option<i64>,
    /// `CallEnd` name (`caller_hung_up`, `agent_hung_up`, …); `None` while live.
    pub end_reason: Option<String>,
    /// Detail of the end reason (model errors), redacted.
    pub end_detail: Option<String>,
    /// Agent turns that started playing.
    pub turns: u32,
    /// Times the caller barged in.
    pub barge_ins: u32,
    /// Model sessions opened (first session plus handovers).
    pub sessions: u32,
    /// Caller's end of speech → first agent audio, per reply, ms (bridge's view).
    pub response_ms: Vec<u64>,
    /// The conversation.
    pub transcript: Vec<TranscriptEntry>,
    /// Set when a bound was hit and later lines were dropped.
    pub transcript_truncated: bool,
    /// Tool calls with arguments and outcome.
    pub tool_calls: Vec<ToolCallEntry>,
    /// Model connection handovers.
    pub handovers: Vec<HandoverEntry>,
    /// The call's timeline.
    pub timeline: Vec<TimelineEntry>,
    /// Model tokens.
    pub usage: TokenUsage,
    /// Estimated model cost, USD (`[pricing]`).
    pub cost_usd: f64,
    /// Stereo WAV of the call, when recording is on.
    pub recording: Option<String>,
}

impl CallRecord {
    /// A new record for a call that just opened.
    pub fn new(id: &str, source: CallSource, started: SystemTime) -> CallRecord {
        CallRecord {
            id: id.to_string(),
            source: source.as_str().to_string(),
            call_sid: None,
            stream_sid: None,
            from: None,
            to: None,
            started_at_ms: unix_ms(started),
            ended_at_ms: None,
            end_reason: None,
            end_detail: None,
            turns: 0,
            barge_ins: 0,
            sessions: 0,
            response_ms: Vec::new(),
            transcript: Vec::new(),
            transcript_truncated: false,
            tool_calls: Vec::new(),
            handovers: Vec::new(),
            timeline: Vec::new(),
            usage: TokenUsage::default(),
            cost_usd: 0.0,
            recording: None,
        }
    }

    /// The short form listed by the API and the dashboard (no transcript, no timeline).
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "source": self.source,
            "call_sid": self.call_sid,
            "from": self.from,
            "to": self.to,
            "started_at_ms": self.started_at_ms,
            "ended_at_ms": self.ended_at_ms,
            "end_reason": self.end_reason,
            "turns": self.turns,
            "barge_ins": self.barge_ins,
            "sessions": self.sessions,
            "handovers": self.handovers.len(),
            "tool_calls": self.tool_calls.len(),
            "tokens": self.usage.total,
            "cost_usd": self.cost_usd,
            "response_ms_median": median(&self.response_ms),
            "recording": self.recording.is_some(),
            "live": self.ended_at_ms.is_none(),
        })
    }

    fn since_start(&self, at: SystemTime) -> u64 {
        (unix_ms(at) - self.started_at_ms).max(0) as u64
    }

    fn timeline(&mut self, at_ms: u64, kind: &str, detail: serde_json::Value) {
        if self.timeline.len() < MAX_LIST {
            self.timeline.push(TimelineEntry {
                at_ms,
                kind: kind.into(),
                detail,
            });
        }
    }

    /// Appends a transcript fragment: joined to the last line when the same speaker is still
    /// talking, else a new line. Returns the line it went to.
    fn transcribe(
        &mut self,
        at_ms: u64,
        speaker: &str,
        text: &str,
        new_line: bool,
    ) -> Option<&TranscriptEntry> {
        let chars: usize = self.transcript.iter().map(|e| e.text.len()).sum();
        if chars + text.len() > MAX_TRANSCRIPT_CHARS {
            self.transcript_truncated = true;
            return None;
        }
        let join = !new_line && self.transcript.last().is_some_and(|l| l.speaker == speaker);
        if join {
            let last = self.transcript.last_mut().expect("checked");
            last.text.push_str(text);
        } else if self.transcript.len() < MAX_TRANSCRIPT_ENTRIES {
            self.transcript.push(TranscriptEntry {
                at_ms,
                speaker: speaker.into(),
                text: text.to_string(),
            });
        } else {
            self.transcript_truncated = true;
            return None;
        }
        self.transcript.last()
    }
}

fn median(v: &[u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    Some(s[s.len() / 2])
}

/// A change for dashboard subscribers. `data` is what the dashboard renders.
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    /// `opened`, `changed` (summary), `transcript`, `timeline` or `ended`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The call.
    pub id: String,
    /// The new summary, transcript line or timeline entry.
    pub data: serde_json::Value,
}

struct Live {
    record: CallRecord,
    /// The next agent transcript fragment starts a new line (a new turn began).
    agent_new_line: bool,
}

/// Builds call records from call events. See the module docs.
pub struct Journal {
    live: DashMap<CallId, Mutex<Live>>,
    recent: Mutex<VecDeque<CallRecord>>,
    recent_cap: usize,
    updates: broadcast::Sender<Update>,
    sink: Option<mpsc::Sender<CallRecord>>,
    pricing: PricingConfig,
    transcripts: bool,
    recording_dir: Option<std::path::PathBuf>,
}

/// Records waiting for the store, at most (then records are dropped, with an error logged).
pub const SINK_CAPACITY: usize = 4_096;

impl Journal {
    /// A journal for this configuration; finished records go to `sink` (the store's writer).
    pub fn new(config: &Config, sink: Option<mpsc::Sender<CallRecord>>) -> Journal {
        let (updates, _) = broadcast::channel(1024);
        Journal {
            live: DashMap::new(),
            recent: Mutex::new(VecDeque::new()),
            recent_cap: config.records.recent_in_memory,
            updates,
            sink,
            pricing: config.pricing.clone(),
            transcripts: config.records.transcripts,
            recording_dir: config
                .recording
                .enabled
                .then(|| std::path::PathBuf::from(&config.recording.dir)),
        }
    }

    /// Subscribes to live changes (the dashboard's event stream).
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    /// Live calls, oldest first.
    pub fn live_calls(&self) -> Vec<CallRecord> {
        let mut v: Vec<CallRecord> = self
            .live
            .iter()
            .map(|e| lock(e.value()).record.clone())
            .collect();
        v.sort_by_key(|r| r.started_at_ms);
        v
    }

    /// One live call's record so far.
    pub fn live_call(&self, id: &str) -> Option<CallRecord> {
        self.live.get(id).map(|e| lock(e.value()).record.clone())
    }

    /// Recently ended calls kept in memory, newest first.
    pub fn recent(&self) -> Vec<CallRecord> {
        lock(&self.recent).iter().rev().cloned().collect()
    }

    /// One recently ended call kept in memory.
    pub fn recent_call(&self, id: &str) -> Option<CallRecord> {
        lock(&self.recent).iter().find(|r| r.id == id).cloned()
    }

    /// Where a call's recording goes, when recording is on.
    pub fn recording_path(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
        dir.join(format!("{id}.wav"))
    }

    fn publish(&self, kind: &'static str, id: &str, data: impl FnOnce() -> serde_json::Value) {
        if self.updates.receiver_count() > 0 {
            let _ = self.updates.send(Update {
                kind,
                id: id.to_string(),
                data: data(),
            });
        }
    }

    fn finish(&self, id: &CallId, at: SystemTime, reason: &str, detail: Option<String>) {
        let Some((_, live)) = self.live.remove(id) else {
            return;
        };
        let mut record = live.into_inner().unwrap_or_else(|e| e.into_inner()).record;
        record.ended_at_ms = Some(unix_ms(at));
        record.end_reason = Some(reason.to_string());
        record.end_detail = detail;
        for t in &mut record.tool_calls {
            if t.outcome == "pending" {
                t.outcome = "unanswered".into();
            }
        }
        let at_ms = record.since_start(at);
        record.timeline(at_ms, "ended", json!({ "reason": reason }));
        self.publish("ended", &record.id, || record.summary());
        if self.recent_cap > 0 {
            let mut recent = lock(&self.recent);
            if recent.len() >= self.recent_cap {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        if let Some(sink) = &self.sink {
            match sink.try_send(record) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::error!("call record store is not keeping up; record dropped")
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::warn!("call record store already closed (shutdown); record not stored")
                }
            }
        }
    }

    /// Ends a call's record that never saw its `Ended` event (the call task failed).
    pub fn abandon(&self, id: &CallId) {
        self.finish(id, SystemTime::now(), "internal_error", None);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CallObserver for Journal {
    fn call_opened(&self, id: &CallId, _conn: u64, source: CallSource) {
        let mut record = CallRecord::new(id, source, SystemTime::now());
        if let Some(dir) = &self.recording_dir {
            record.recording = Some(Self::recording_path(dir, id).display().to_string());
        }
        self.publish("opened", id, || record.summary());
        self.live.insert(
            id.clone(),
            Mutex::new(Live {
                record,
                agent_new_line: true,
            }),
        );
    }

    fn call_discarded(&self, id: &CallId) {
        self.live.remove(id);
        self.publish("discarded", id, || serde_json::Value::Null);
    }

    fn call_failed(&self, id: &CallId) {
        self.abandon(id);
    }

    fn event(&self, id: &CallId, at: SystemTime, event: &CallEvent) {
        if let CallEvent::Ended(why) = event {
            let detail = match why {
                CallEnd::UnsupportedMedia(d)
                | CallEnd::ModelUnavailable(d)
                | CallEnd::ModelLost(d) => Some(redact_text(d)),
                _ => None,
            };
            return self.finish(id, at, why.as_str(), detail);
        }
        let Some(entry) = self.live.get(id) else {
            return;
        };
        let mut guard = lock(entry.value());
        let live: &mut Live = &mut guard;
        let at_ms = live.record.since_start(at);
        let r = &mut live.record;
        let mut changed = false;
        match event {
            CallEvent::Started {
                call_sid,
                stream_sid,
                from,
                to,
            } => {
                r.from = from.as_deref().map(redact_number);
                r.to = to.as_deref().map(redact_number);
                r.call_sid = Some(call_sid.clone());
                r.stream_sid = Some(stream_sid.clone());
                r.timeline(at_ms, "started", json!({}));
                changed = true;
            }
            CallEvent::ModelReady { setup_ms } => {
                r.sessions += 1;
                r.timeline(at_ms, "model_ready", json!({ "setup_ms": setup_ms }));
                changed = true;
            }
            CallEvent::CallerTranscript(text) | CallEvent::AgentTranscript(text) => {
                if !self.transcripts || text.is_empty() {
                    return;
                }
                let agent = matches!(event, CallEvent::AgentTranscript(_));
                let new_line = agent && std::mem::take(&mut live.agent_new_line);
                let speaker = if agent { "agent" } else { "caller" };
                if let Some(line) = live.record.transcribe(at_ms, speaker, text, new_line) {
                    let line = line.clone();
                    let index = live.record.transcript.len() - 1;
                    drop(guard);
                    self.publish("transcript", id, || {
                        json!({"index": index, "at_ms": line.at_ms, "speaker": line.speaker, "text": line.text})
                    });
                }
                return;
            }
            CallEvent::AgentSpeaking { turn, response_ms } => {
                r.turns += 1;
                if let Some(ms) = response_ms {
                    if r.response_ms.len() < MAX_LIST {
                        r.response_ms.push(*ms);
                    }
                }
                r.timeline(
                    at_ms,
                    "agent_speaking",
                    json!({ "turn": turn, "response_ms": response_ms }),
                );
                live.agent_new_line = true;
                changed = true;
            }
            CallEvent::AgentTurnHeard { turn, heard_ms } => {
                r.timeline(
                    at_ms,
                    "turn_heard",
                    json!({ "turn": turn, "heard_ms": heard_ms }),
                );
            }
            CallEvent::Interrupted {
                turn,
                heard_ms,
                sent_ms,
            } => {
                r.barge_ins += 1;
                r.timeline(
                    at_ms,
                    "barge_in",
                    json!({ "turn": turn, "heard_ms": heard_ms, "sent_ms": sent_ms }),
                );
                live.agent_new_line = true;
                changed = true;
            }
            CallEvent::ToolCall {
                id: call_id,
                name,
                args,
            } => {
                if r.tool_calls.len() < MAX_LIST {
                    r.tool_calls.push(ToolCallEntry {
                        at_ms,
                        id: call_id.clone(),
                        name: name.clone(),
                        args: if self.transcripts {
                            args.clone()
                        } else {
                            serde_json::Value::Null
                        },
                        outcome: "pending".into(),
                        done_at_ms: None,
                    });
                }
                r.timeline(at_ms, "tool_call", json!({ "id": call_id, "name": name }));
                changed = true;
            }
            CallEvent::ToolResult {
                id: call_id,
                name,
                ok,
            } => {
                if let Some(t) = r.tool_calls.iter_mut().rev().find(|t| &t.id == call_id) {
                    t.outcome = if *ok { "ok" } else { "error" }.into();
                    t.done_at_ms = Some(at_ms);
                }
                r.timeline(
                    at_ms,
                    "tool_result",
                    json!({ "id": call_id, "name": name, "ok": ok }),
                );
                changed = true;
            }
            CallEvent::Dtmf(digits) => {
                // The count only: digits may be a card or account number.
                r.timeline(at_ms, "dtmf", json!({ "count": digits.len() }));
            }
            CallEvent::Continued { stream_sid } => {
                r.stream_sid = Some(stream_sid.clone());
                r.timeline(at_ms, "continued", json!({}));
            }
            CallEvent::Reconnected {
                reason,
                resumed,
                gap_ms,
            } => {
                r.sessions += 1;
                if r.handovers.len() < MAX_LIST {
                    r.handovers.push(HandoverEntry {
                        at_ms,
                        reason: reason.to_string(),
                        resumed: *resumed,
                        gap_ms: *gap_ms,
                    });
                }
                r.timeline(
                    at_ms,
                    "handover",
                    json!({ "reason": reason, "resumed": resumed, "gap_ms": gap_ms }),
                );
                changed = true;
            }
            CallEvent::WrapUp { reason } => {
                r.timeline(at_ms, "wrap_up", json!({ "reason": reason }));
            }
            CallEvent::GoAway { time_left_ms } => {
                r.timeline(at_ms, "go_away", json!({ "time_left_ms": time_left_ms }));
            }
            CallEvent::Usage(u) => {
                r.usage.add(u);
                r.cost_usd = r.usage.cost_usd(&self.pricing);
                changed = true;
            }
            CallEvent::Operator {
                action,
                destination,
                result,
                ..
            } => {
                r.timeline(
                    at_ms,
                    "operator",
                    json!({
                        "action": action,
                        "destination": (!destination.is_empty()).then(|| redact_destination(destination)),
                        "ok": result.is_ok(),
                        "error": result.as_ref().err().map(|e| redact_text(e)),
                    }),
                );
                changed = true;
            }
            CallEvent::Ended(_) => unreachable!("handled above"),
        }
        let last = r.timeline.last().cloned();
        let summary = changed.then(|| r.summary());
        drop(guard);
        if let Some(s) = summary {
            self.publish("changed", id, || s);
        }
        if let Some(t) = last.filter(|t| t.at_ms == at_ms) {
            self.publish("timeline", id, || {
                serde_json::to_value(t).unwrap_or_default()
            });
        }
    }
}
