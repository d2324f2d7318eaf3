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
use crate::call::event::{CallEnd, CallEvent};
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
            // The counts are the model's (any u64): sums saturate rather than overflow.
            let mut split = 0u64;
            for (modality, n) in details {
                let m = modality.to_ascii_uppercase();
                let sum = map.entry(m.clone()).or_default();
                *sum = sum.saturating_add(*n);
                split = split.saturating_add(*n);
                added.push((direction, m, *n));
            }
            let rest = count.saturating_sub(split);
            if rest > 0 {
                let sum = map.entry("UNSPECIFIED".into()).or_default();
                *sum = sum.saturating_add(rest);
                added.push((direction, "UNSPECIFIED".into(), rest));
            }
        }
        if u.thoughts_token_count > 0 {
            let sum = self.response.entry("THOUGHTS".into()).or_default();
            *sum = sum.saturating_add(u.thoughts_token_count);
            added.push(("response", "THOUGHTS".into(), u.thoughts_token_count));
        }
        self.total = self.total.saturating_add(u.total_token_count);
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

    /// Keeps recording paths in records only when `on` (a recorder is writing them).
    pub fn with_recordings(mut self, on: bool) -> Journal {
        if !on {
            self.recording_dir = None;
        }
        self
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
            CallEvent::OddTurnEnd { reason } => {
                r.timeline(at_ms, "odd_turn_end", json!({ "reason": reason }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn usage(prompt: u64, response: u64, details: bool) -> UsageMetadata {
        UsageMetadata {
            prompt_token_count: prompt,
            response_token_count: response,
            total_token_count: prompt + response,
            prompt_details: if details {
                vec![("AUDIO".into(), prompt - 10), ("TEXT".into(), 10)]
            } else {
                Vec::new()
            },
            response_details: if details {
                vec![("AUDIO".into(), response)]
            } else {
                Vec::new()
            },
            thoughts_token_count: 0,
        }
    }

    fn journal(tweak: impl FnOnce(&mut Config)) -> (Journal, mpsc::Receiver<CallRecord>) {
        let mut cfg = Config::default();
        tweak(&mut cfg);
        let (tx, rx) = mpsc::channel(8);
        (Journal::new(&cfg, Some(tx)), rx)
    }

    fn started() -> CallEvent {
        CallEvent::Started {
            call_sid: "CA0123".into(),
            stream_sid: "MZ0123".into(),
            from: Some("+14155550123".into()),
            to: Some("+14155550188".into()),
        }
    }

    #[test]
    fn a_call_builds_one_redacted_record_that_goes_to_the_store_when_it_ends() {
        let (j, mut rx) = journal(|_| {});
        let id: CallId = "00000000000000aa".into();
        let t0 = SystemTime::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        j.call_opened(&id, 1, CallSource::Phone);
        let mut updates = j.subscribe();
        j.event(&id, at(10), &started());
        j.event(&id, at(300), &CallEvent::ModelReady { setup_ms: 290 });
        j.event(
            &id,
            at(400),
            &CallEvent::AgentSpeaking {
                turn: 1,
                response_ms: None,
            },
        );
        j.event(&id, at(410), &CallEvent::AgentTranscript("Hello, ".into()));
        j.event(
            &id,
            at(420),
            &CallEvent::AgentTranscript("how can I help?".into()),
        );
        j.event(
            &id,
            at(2000),
            &CallEvent::CallerTranscript("My balance".into()),
        );
        j.event(
            &id,
            at(2100),
            &CallEvent::CallerTranscript(" please".into()),
        );
        j.event(
            &id,
            at(2600),
            &CallEvent::AgentSpeaking {
                turn: 2,
                response_ms: Some(640),
            },
        );
        j.event(&id, at(2610), &CallEvent::AgentTranscript("Sure.".into()));
        j.event(
            &id,
            at(2700),
            &CallEvent::Interrupted {
                turn: 2,
                heard_ms: 200,
                sent_ms: 400,
            },
        );
        j.event(
            &id,
            at(2800),
            &CallEvent::ToolCall {
                id: "fc-1".into(),
                name: "lookup".into(),
                args: serde_json::json!({"account": "42"}),
            },
        );
        j.event(
            &id,
            at(2900),
            &CallEvent::ToolResult {
                id: "fc-1".into(),
                name: "lookup".into(),
                ok: true,
            },
        );
        j.event(&id, at(3000), &CallEvent::Dtmf("1234".into()));
        j.event(
            &id,
            at(4000),
            &CallEvent::Reconnected {
                reason: "go_away",
                resumed: true,
                gap_ms: 120,
            },
        );
        j.event(&id, at(4100), &CallEvent::Usage(usage(1010, 500, true)));
        j.event(&id, at(4200), &CallEvent::Usage(usage(100, 50, false)));
        let live = j.live_call(&id).expect("live");
        assert_eq!(live.ended_at_ms, None);
        assert_eq!(j.live_calls().len(), 1);
        j.event(&id, at(5000), &CallEvent::Ended(CallEnd::AgentHungUp));
        assert!(j.live_call(&id).is_none());

        let r = rx.try_recv().expect("record sent to the store");
        assert_eq!(r, j.recent_call(&id).expect("kept in memory"));
        assert_eq!(
            r.from.as_deref(),
            Some(redact_number("+14155550123").as_str())
        );
        assert!(!serde_json::to_string(&r).unwrap().contains("4155550123"));
        assert!(
            !serde_json::to_string(&r).unwrap().contains("1234"),
            "digits are never kept"
        );
        assert_eq!(r.call_sid.as_deref(), Some("CA0123"));
        assert_eq!(r.end_reason.as_deref(), Some("agent_hung_up"));
        assert_eq!(r.ended_at_ms, Some(r.started_at_ms + 5000));
        assert_eq!((r.turns, r.barge_ins, r.sessions), (2, 1, 2));
        assert_eq!(r.response_ms, vec![640]);
        let lines: Vec<(&str, &str, u64)> = r
            .transcript
            .iter()
            .map(|l| (l.speaker.as_str(), l.text.as_str(), l.at_ms))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("agent", "Hello, how can I help?", 410),
                ("caller", "My balance please", 2000),
                ("agent", "Sure.", 2610),
            ]
        );
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].outcome, "ok");
        assert_eq!(r.tool_calls[0].args["account"], "42");
        assert_eq!(r.tool_calls[0].done_at_ms, Some(2900));
        assert_eq!(r.handovers.len(), 1);
        assert_eq!(r.usage.prompt["AUDIO"], 1000);
        assert_eq!(r.usage.prompt["TEXT"], 10);
        assert_eq!(r.usage.prompt["UNSPECIFIED"], 100);
        assert_eq!(r.usage.response["AUDIO"], 500);
        assert_eq!(r.usage.response["UNSPECIFIED"], 50);
        assert_eq!(r.usage.total, 1660);
        let p = PricingConfig::default();
        let want = (1000.0 * p.input_audio
            + 10.0 * p.input_text
            + 100.0 * p.input_other
            + 500.0 * p.output_audio
            + 50.0 * p.output_other)
            / 1e6;
        assert!(
            (r.cost_usd - want).abs() < 1e-12,
            "{} vs {want}",
            r.cost_usd
        );
        let kinds: Vec<&str> = r.timeline.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"started"));
        assert_eq!(kinds.last(), Some(&"ended"));
        assert!(kinds.contains(&"handover") && kinds.contains(&"barge_in"));
        // Subscribers saw the transcript stream in and the end.
        let mut seen = Vec::new();
        while let Ok(u) = updates.try_recv() {
            seen.push(u.kind);
        }
        assert!(
            seen.contains(&"transcript") && seen.last() == Some(&"ended"),
            "{seen:?}"
        );
    }

    #[test]
    fn without_transcripts_no_words_are_kept() {
        let (j, mut rx) = journal(|c| c.records.transcripts = false);
        let id: CallId = "00000000000000bb".into();
        j.call_opened(&id, 1, CallSource::Browser);
        let now = SystemTime::now();
        j.event(
            &id,
            now,
            &CallEvent::CallerTranscript("secret words".into()),
        );
        j.event(
            &id,
            now,
            &CallEvent::ToolCall {
                id: "a".into(),
                name: "t".into(),
                args: serde_json::json!({"x": "secret"}),
            },
        );
        j.event(&id, now, &CallEvent::Ended(CallEnd::CallerHungUp));
        let r = rx.try_recv().unwrap();
        assert_eq!(r.source, "browser");
        assert!(r.transcript.is_empty());
        assert_eq!(r.tool_calls[0].outcome, "unanswered");
        assert!(!serde_json::to_string(&r).unwrap().contains("secret"));
    }

    #[test]
    fn transcripts_are_bounded_on_the_longest_call() {
        let (j, _rx) = journal(|_| {});
        let id: CallId = "00000000000000cc".into();
        j.call_opened(&id, 1, CallSource::Phone);
        let now = SystemTime::now();
        let chunk = "x".repeat(1000);
        for i in 0..1000 {
            let ev = if i % 2 == 0 {
                CallEvent::CallerTranscript(chunk.clone())
            } else {
                CallEvent::AgentTranscript(chunk.clone())
            };
            j.event(&id, now, &ev);
        }
        let r = j.live_call(&id).unwrap();
        let chars: usize = r.transcript.iter().map(|l| l.text.len()).sum();
        assert!(chars <= MAX_TRANSCRIPT_CHARS);
        assert!(r.transcript_truncated);
    }

    #[test]
    fn discarded_and_failed_calls() {
        let (j, mut rx) = journal(|c| c.records.recent_in_memory = 1);
        let a: CallId = "00000000000000d1".into();
        let b: CallId = "00000000000000d2".into();
        let c: CallId = "00000000000000d3".into();
        for id in [&a, &b, &c] {
            j.call_opened(id, 1, CallSource::Phone);
        }
        j.call_discarded(&a);
        assert!(j.live_call(&a).is_none());
        j.call_failed(&b);
        let r = rx.try_recv().unwrap();
        assert_eq!(
            (r.id.as_str(), r.end_reason.as_deref()),
            ("00000000000000d2", Some("internal_error"))
        );
        j.event(
            &c,
            SystemTime::now(),
            &CallEvent::Ended(CallEnd::ModelLost("code 1011 call +14155550123".into())),
        );
        let r = rx.try_recv().unwrap();
        assert!(!r.end_detail.unwrap().contains("4155550123"));
        assert!(rx.try_recv().is_err(), "the discarded call is not a record");
        assert_eq!(j.recent().len(), 1, "bounded by records.recent_in_memory");
        assert_eq!(j.recent()[0].id, "00000000000000d3");
    }
}
