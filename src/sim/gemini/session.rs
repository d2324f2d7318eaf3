//! The per-connection Gemini Live session, sans-IO.
//!
//! Owns everything one simulated model connection decides: setup validation, the energy VAD,
//! turn detection, scripted replies and their pacing, barge-in, tool calls, resumption
//! handles, lifetime/goAway and fault timers — all as the model profile picked by `setup`
//! says (`proto`'s table). Tools: BLOCKING calls follow the reply and hold the turn until
//! answered (new input cancels them); NON_BLOCKING calls go out mid-reply and are tracked on
//! the session, not the turn, so their results (SILENT / WHEN_IDLE / INTERRUPT) can arrive
//! and be spoken as new turns after it. It is driven with `handle_frame(frame, now)` /
//! `handle_timeout(now)` and drained with `poll_output()`; `poll_timeout()` says when to call
//! back. It never reads the clock and owns no socket — `server.rs` is the async shell.
//!
//! It does not own transport concerns (routes, auth headers, frame opcodes) beyond being
//! told whether the credential was accepted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::proto::{self, field, path, Behavior, ModelProfile};
use super::record::{AudioChunk, CloseRecord, FrameKind, RecordedFrame, TurnTrigger, UserTurn};
use super::scenario::{Clip, FaultAction, Reply, Turn, MODEL_RATE};
use super::SimShared;

/// Input sample rate the model expects (and the VAD runs at).
const INPUT_RATE: u32 = 16_000;
/// VAD analysis frame: 10 ms at 16 kHz.
const VAD_FRAME: usize = 160;

/// A data frame from the client.
#[derive(Debug, Clone)]
pub(crate) enum ClientFrame {
    Text(String),
    Binary(Vec<u8>),
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    /// Send one server message.
    Send(Value),
    /// Send a close frame (reason already truncated) and finish.
    Close { code: u16, reason: String },
    /// Drop the socket without a close frame.
    Drop,
}

/// Where a conversation is in its script; what a resumption handle restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    /// A turn has been played (the greeting is only used for the very first turn).
    started: bool,
    /// Next index into `Scenario::turns`.
    next_turn: usize,
}

/// Resumption handles shared by every connection of one simulator.
pub(crate) struct ResumptionStore {
    ttl: Duration,
    /// handle -> (position, issuing connection, expiry). A mutex is enough: handles are
    /// issued a few times per turn.
    entries: Mutex<HashMap<String, (Position, usize, Instant)>>,
}

impl ResumptionStore {
    pub(crate) fn new(ttl: Duration) -> ResumptionStore {
        ResumptionStore {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn issue(&self, pos: Position, conn: usize, now: Instant) -> String {
        let bytes: [u8; 24] = rand::random();
        let handle = format!(
            "Cj{}",
            proto::encode_base64(&bytes).replace(['+', '/', '='], "x")
        );
        if let Ok(mut map) = self.entries.lock() {
            map.insert(handle.clone(), (pos, conn, now + self.ttl));
        }
        handle
    }

    fn lookup(&self, handle: &str, now: Instant) -> Option<Position> {
        let map = self.entries.lock().ok()?;
        map.get(handle)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(pos, _, _)| *pos)
    }

    /// Handles stay valid for the TTL after the session that issued them ended.
    fn connection_ended(&self, conn: usize, now: Instant) {
        if let Ok(mut map) = self.entries.lock() {
            for (_, c, expires) in map.values_mut() {
                if *c == conn {
                    *expires = now + self.ttl;
                }
            }
        }
    }
}

/// Energy voice activity detector over 16 kHz PCM, in 10 ms frames.
#[derive(Debug)]
struct Vad {
    threshold_sq: f64,
    start_frames: u32,
    end_frames: u32,
    frame: Vec<i16>,
    loud_run: u32,
    quiet_run: u32,
    speaking: bool,
    /// Samples analysed so far (audio time).
    samples: u64,
    run_start: u64,
    quiet_start: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VadEvent {
    /// Speech started at this audio sample.
    Start(u64),
    /// Speech ended at this audio sample (start of the trailing silence).
    End(u64),
}

impl Vad {
    fn new(threshold_rms: f64, start_ms: u32, silence_ms: u32) -> Vad {
        Vad {
            threshold_sq: threshold_rms * threshold_rms,
            start_frames: (start_ms / 10).max(1),
            end_frames: (silence_ms / 10).max(1),
            frame: Vec::with_capacity(VAD_FRAME),
            loud_run: 0,
            quiet_run: 0,
            speaking: false,
            samples: 0,
            run_start: 0,
            quiet_start: 0,
        }
    }

    fn push(&mut self, samples: &[i16], events: &mut Vec<VadEvent>) {
        for &s in samples {
            self.frame.push(s);
            if self.frame.len() == VAD_FRAME {
                self.analyse_frame(events);
                self.frame.clear();
            }
        }
    }

    fn analyse_frame(&mut self, events: &mut Vec<VadEvent>) {
        let energy = self
            .frame
            .iter()
            .map(|&s| f64::from(s) * f64::from(s))
            .sum::<f64>()
            / VAD_FRAME as f64;
        let frame_start = self.samples;
        self.samples += VAD_FRAME as u64;
        let loud = energy > self.threshold_sq;
        if !self.speaking {
            if loud {
                if self.loud_run == 0 {
                    self.run_start = frame_start;
                }
                self.loud_run += 1;
                if self.loud_run >= self.start_frames {
                    self.speaking = true;
                    self.quiet_run = 0;
                    events.push(VadEvent::Start(self.run_start));
                }
            } else {
                self.loud_run = 0;
            }
        } else if loud {
            self.quiet_run = 0;
        } else {
            if self.quiet_run == 0 {
                self.quiet_start = frame_start;
            }
            self.quiet_run += 1;
            if self.quiet_run >= self.end_frames {
                self.speaking = false;
                self.loud_run = 0;
                events.push(VadEvent::End(self.quiet_start));
            }
        }
    }

    /// End speech now (audioStreamEnd or the client stopped sending audio).
    fn force_end(&mut self) -> Option<u64> {
        if !self.speaking {
            return None;
        }
        self.speaking = false;
        self.loud_run = 0;
        let end = if self.quiet_run > 0 {
            self.quiet_start
        } else {
            self.samples
        };
        self.quiet_run = 0;
        Some(end)
    }
}

/// One scripted audio segment being streamed.
#[derive(Debug)]
struct Segment {
    clip: Option<Clip>,
    /// Transcript fragments grouped by the chunk they accompany.
    frags: Vec<Vec<String>>,
    chunk_samples: usize,
    chunks: usize,
    idx: usize,
    start: Instant,
    /// Wall time between chunks (chunk duration divided by the pace factor).
    interval: Duration,
}

impl Segment {
    fn new(reply: &Reply, chunk_ms: u32, pace: f64, start: Instant) -> Segment {
        let chunk_samples = (chunk_ms.max(1) * MODEL_RATE / 1000) as usize;
        let len = reply.clip.as_ref().map_or(0, |c| c.samples().len());
        let chunks = len.div_ceil(chunk_samples);
        let mut frags = vec![Vec::new(); chunks];
        if chunks > 0 {
            // Place each fragment at the chunk proportional to its character offset.
            let total = reply.text.len().max(1);
            let mut offset = 0;
            for (i, words) in reply
                .text
                .split_whitespace()
                .collect::<Vec<_>>()
                .chunks(3)
                .enumerate()
            {
                let text = words.join(" ");
                let at = (offset * chunks / total).min(chunks - 1);
                offset += text.len() + 1;
                frags[at].push(if i == 0 { text } else { format!(" {text}") });
            }
        }
        Segment {
            clip: reply.clip.clone(),
            frags,
            chunk_samples,
            chunks,
            idx: 0,
            start,
            interval: Duration::from_secs_f64(f64::from(chunk_ms.max(1)) / 1000.0 / pace.max(0.01)),
        }
    }

    fn due(&self) -> Instant {
        self.start + self.interval * self.idx as u32
    }

    /// Milliseconds of the clip sent so far.
    fn audio_ms_sent(&self) -> u64 {
        let len = self.clip.as_ref().map_or(0, |c| c.samples().len());
        (self.idx * self.chunk_samples).min(len) as u64 * 1000 / u64::from(MODEL_RATE)
    }

    fn duration(&self) -> Duration {
        let samples = self.clip.as_ref().map_or(0, |c| c.samples().len());
        Duration::from_secs_f64(samples as f64 / f64::from(MODEL_RATE))
    }
}

#[derive(Debug)]
enum Stage {
    Streaming,
    /// BLOCKING calls sent; waiting for every response.
    AwaitingTools,
    Finishing {
        turn_complete_at: Instant,
    },
}

/// The model turn in progress.
#[derive(Debug)]
struct Generation {
    turn: Turn,
    seg: Segment,
    stage: Stage,
    /// Every call of the turn is NON_BLOCKING: the toolCall goes out at `tool_call_at_ms` and
    /// the turn does not wait (else the turn is played BLOCKING).
    asynchronous: bool,
    /// The turn's toolCall has been sent.
    calls_sent: bool,
    /// BLOCKING calls still waiting for a response.
    pending_tools: Vec<String>,
    /// When the model believes the client finishes playing what was sent (real time).
    played_until: Instant,
    response_ms: u64,
    prompt_text_chars: usize,
    prompt_audio_ms: u64,
}

/// NON_BLOCKING calls of one turn still waiting for responses; they outlive the turn.
#[derive(Debug)]
struct AsyncCalls {
    ids: Vec<String>,
    /// Spoken as a new turn once every id is answered, per the last response's `scheduling`.
    after_tool: Option<Reply>,
}

/// `FunctionResponse.scheduling` (spec §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduling {
    Silent,
    WhenIdle,
    Interrupt,
}

#[derive(Debug)]
enum Phase {
    AwaitSetup,
    SetupPending { until: Instant },
    Live,
    Closed,
}

/// Settings taken from `setup`.
#[derive(Debug, Default)]
struct SessionSettings {
    multi_part: bool,
    interrupts: bool,
    input_transcription: bool,
    output_transcription: bool,
    resumption: bool,
    seeding_history: bool,
    system_chars: usize,
    /// Declared `behavior` per function name (functions declared without one are absent).
    tool_behaviors: HashMap<String, Behavior>,
}

/// One simulated Live connection.
pub(crate) struct Session {
    shared: Arc<SimShared>,
    index: usize,
    api_version: String,
    /// Vertex AI route: `setup.model` must be a full `projects/…/models/…` path.
    vertex: bool,
    opened: Instant,
    phase: Phase,
    out: VecDeque<Output>,
    settings: SessionSettings,
    vad: Option<Vad>,
    silence_ms: u32,
    last_audio_at: Option<Instant>,
    /// Audio time (ms) at which the current user speech started, if speaking.
    speech_start_ms: Option<u64>,
    speech_interrupted: bool,
    /// Activity signals mode (VAD disabled): inside activityStart..activityEnd.
    activity_open: bool,
    pos: Position,
    user_turns: u32,
    gen: Option<Generation>,
    queued_turn: Option<TurnTrigger>,
    cancelled_tools: HashSet<String>,
    /// The model's behaviour profile, once setup was accepted.
    profile: Option<ModelProfile>,
    /// 2.5: a `clientContent` without `turnComplete: true` stopped replies to caller turns.
    stalled: bool,
    /// NON_BLOCKING calls sent and not yet answered (per turn).
    async_calls: Vec<AsyncCalls>,
    /// Tool results to speak as new turns once the model is idle, in order.
    pending_results: VecDeque<Reply>,
    /// 3.8: INTERRUPT results that arrived while the caller was speaking.
    deferred_interrupts: Vec<Reply>,
    buffered: VecDeque<(String, Value)>,
    /// Audio samples received (16 kHz) in total, and at the start of the current prompt.
    audio_samples: u64,
    prompt_audio_mark: u64,
    prompt_text_chars: usize,
    faults_apply: bool,
    go_away_at: Option<Instant>,
    /// A fresh handle due after the goAway (`handle_after_go_away`).
    late_handle_at: Option<Instant>,
    close_at: Instant,
    fault_at: Option<(Instant, FaultAction)>,
    turn_fault_at: Option<(Instant, FaultAction)>,
}

impl Session {
    pub(crate) fn new(
        shared: Arc<SimShared>,
        index: usize,
        api_version: &str,
        credential_ok: bool,
        now: Instant,
    ) -> Session {
        let cfg = &shared.config;
        let faults_apply = index == 0 || cfg.scenario.faults.all_connections;
        let fault_at = if faults_apply {
            cfg.scenario
                .faults
                .after_ms
                .clone()
                .map(|(ms, a)| (now + Duration::from_millis(ms), a))
        } else {
            None
        };
        let close_at = now + cfg.lifetime;
        let go_away_at = Some(
            close_at
                .checked_sub(cfg.go_away_lead)
                .unwrap_or(now)
                .max(now),
        );
        let silence_ms = cfg.default_silence_ms;
        let mut s = Session {
            shared,
            index,
            api_version: api_version.to_string(),
            vertex: false,
            opened: now,
            phase: Phase::AwaitSetup,
            out: VecDeque::new(),
            settings: SessionSettings::default(),
            vad: None,
            silence_ms,
            last_audio_at: None,
            speech_start_ms: None,
            speech_interrupted: false,
            activity_open: false,
            pos: Position::default(),
            user_turns: 0,
            gen: None,
            queued_turn: None,
            cancelled_tools: HashSet::new(),
            profile: None,
            stalled: false,
            async_calls: Vec::new(),
            pending_results: VecDeque::new(),
            deferred_interrupts: Vec::new(),
            buffered: VecDeque::new(),
            audio_samples: 0,
            prompt_audio_mark: 0,
            prompt_text_chars: 0,
            faults_apply,
            go_away_at,
            late_handle_at: None,
            close_at,
            fault_at,
            turn_fault_at: None,
        };
        if !credential_ok {
            let code = s.shared.config.auth_close_code;
            s.close(code, proto::REASON_BAD_KEY, now);
        }
        s
    }

    /// Connected on the Vertex AI route (see `proto::vertex_model_id`).
    pub(crate) fn require_vertex_model(&mut self) {
        self.vertex = true;
    }

    /// Next thing the shell must do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Closed) {
            return None;
        }
        let mut t = Some(self.close_at);
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |cur: Instant| cur.min(x)));
            }
        };
        // goAway waits for setupComplete (it must not be the first server message).
        if matches!(self.phase, Phase::Live) {
            consider(self.go_away_at);
            consider(self.late_handle_at);
        }
        consider(self.fault_at.as_ref().map(|f| f.0));
        consider(self.turn_fault_at.as_ref().map(|f| f.0));
        if let Phase::SetupPending { until } = self.phase {
            consider(Some(until));
        }
        if let Some(g) = &self.gen {
            consider(match g.stage {
                Stage::Streaming => Some(g.seg.due()),
                Stage::AwaitingTools => None,
                Stage::Finishing { turn_complete_at } => Some(turn_complete_at),
            });
        }
        if self.vad.as_ref().is_some_and(|v| v.speaking) {
            consider(self.last_audio_at.map(|t| t + self.silence()));
        }
        t
    }

    /// Time passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if now >= self.close_at {
            let cfg = &self.shared.config;
            let (code, reason) = (cfg.go_away_close_code, cfg.go_away_close_reason.clone());
            self.close(code, &reason, now);
            return;
        }
        if self.go_away_at.is_some_and(|t| now >= t) && matches!(self.phase, Phase::Live) {
            self.go_away_at = None;
            // Report the scheduled lead, not the measured remainder: timers fire a little late
            // and the real service announces round figures ("60s").
            let lead = self
                .shared
                .config
                .go_away_lead
                .min(self.shared.config.lifetime);
            let left =
                lead.min(self.close_at.saturating_duration_since(now) + Duration::from_millis(50));
            self.send(json!({"goAway": {"timeLeft": duration_string(left)}}));
            // The connection stays fully alive after goAway (it ends when the client closes
            // it or at `close_at`); optionally with one more handle soon after.
            match self.shared.config.handle_after_go_away {
                Some(d) if d.is_zero() && self.settings.resumption => self.send_handle(now),
                Some(d) if self.settings.resumption => self.late_handle_at = Some(now + d),
                _ => {}
            }
        }
        if self.late_handle_at.is_some_and(|t| now >= t) && matches!(self.phase, Phase::Live) {
            self.late_handle_at = None;
            self.send_handle(now);
        }
        if self.fault_at.as_ref().is_some_and(|f| now >= f.0) {
            if let Some((_, action)) = self.fault_at.take() {
                self.fire(action, now);
                return;
            }
        }
        if self.turn_fault_at.as_ref().is_some_and(|f| now >= f.0) {
            if let Some((_, action)) = self.turn_fault_at.take() {
                self.fire(action, now);
                return;
            }
        }
        if let Phase::SetupPending { until } = self.phase {
            if now >= until {
                self.complete_setup(now);
            }
        }
        // The client stopped streaming mid-utterance: treat missing audio as silence.
        if self.vad.as_ref().is_some_and(|v| v.speaking)
            && self
                .last_audio_at
                .is_some_and(|t| now >= t + self.silence())
        {
            if let Some(end) = self.vad.as_mut().and_then(Vad::force_end) {
                self.speech_ended(samples_to_ms(end), TurnTrigger::Vad, now);
            }
        }
        self.advance(now);
    }

    /// The client sent a close frame.
    pub(crate) fn client_closed(&mut self, code: Option<u16>, reason: String, now: Instant) {
        self.ended(CloseRecord::ByClient { code, reason }, now);
    }

    /// The client's socket ended without a close frame.
    pub(crate) fn client_gone(&mut self, now: Instant) {
        self.ended(CloseRecord::ClientGone, now);
    }

    fn ended(&mut self, how: CloseRecord, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.phase = Phase::Closed;
        self.record(|r| r.close = Some(how));
        self.shared.store.connection_ended(self.index, now);
    }

    /// A data frame arrived.
    pub(crate) fn handle_frame(&mut self, frame: ClientFrame, now: Instant) {
        let at_ms = self.ms(now);
        let (kind, text) = match frame {
            ClientFrame::Text(t) => (FrameKind::Text, Ok(t)),
            ClientFrame::Binary(b) => (
                FrameKind::Binary,
                String::from_utf8(b)
                    .map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        };
        let raw = match &text {
            Ok(t) | Err(t) => t.clone(),
        };
        if self.shared.config.record_content {
            self.record(|r| r.frames.push(RecordedFrame { kind, raw, at_ms }));
        }
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let Ok(text) = text else {
            return self.invalid(now);
        };
        let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(&text) else {
            return self.invalid(now);
        };
        if obj.len() != 1 {
            return self.invalid(now);
        }
        let Some((key, body)) = obj
            .iter_mut()
            .next()
            .map(|(k, v)| (proto::camel(k), v.take()))
        else {
            return self.invalid(now);
        };
        match self.phase {
            Phase::AwaitSetup if key == "setup" => self.handle_setup(body, now),
            Phase::AwaitSetup => self.invalid(now),
            Phase::SetupPending { .. } => self.buffered.push_back((key, body)),
            Phase::Live => self.dispatch(&key, body, now),
            Phase::Closed => {}
        }
        self.advance(now);
    }

    fn dispatch(&mut self, key: &str, body: Value, now: Instant) {
        match key {
            "clientContent" => self.handle_client_content(&body, now),
            "realtimeInput" => self.handle_realtime_input(&body, now),
            "toolResponse" => self.handle_tool_response(&body, now),
            // Accepted and ignored (spec §6.5): the script does not depend on instructions.
            "contextUpdate" if body.is_object() => {}
            _ => self.invalid(now),
        }
    }

    // ---- setup ----------------------------------------------------------------------------

    fn handle_setup(&mut self, setup: Value, now: Instant) {
        self.record(|r| r.setup = Some(setup.clone()));
        if !setup.is_object() {
            return self.invalid(now);
        }
        let Some(model) = field(&setup, "model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
        else {
            return self.invalid(now);
        };
        let id = if self.vertex {
            match proto::vertex_model_id(model) {
                Some(id) => id,
                None => return self.invalid(now),
            }
        } else {
            model.strip_prefix("models/").unwrap_or(model)
        };
        let retired = self.shared.config.retired_models.iter().any(|r| r == id);
        if retired || proto::RETIRED_MODELS.contains(&id) {
            // Shut-down models are refused like this by the service (spec §10.1).
            return self.close(1008, proto::REASON_NOT_FOUND, now);
        }
        let Some(profile) = proto::model(id) else {
            let reason = format!(
                "models/{id} is not found for API version {}, or is not supported for bidiGenerateContent.",
                self.api_version
            );
            return self.close(1008, &reason, now);
        };
        let gc = field(&setup, "generationConfig")
            .cloned()
            .unwrap_or(Value::Null);
        let audio_only = field(&gc, "responseModalities")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty() && m.iter().all(|x| x.as_str() == Some("AUDIO")));
        if !audio_only {
            return self.close(1007, proto::REASON_NON_AUDIO, now);
        }
        // Thinking, affective dialog, proactivity and tool behaviours, as the profile says.
        if !profile.admits(&setup) {
            return self.invalid(now);
        }
        if let Some(voice) = path(
            &gc,
            &[
                "speechConfig",
                "voiceConfig",
                "prebuiltVoiceConfig",
                "voiceName",
            ],
        ) {
            if !voice.as_str().is_some_and(|v| proto::VOICES.contains(&v)) {
                return self.invalid(now);
            }
        }
        let ric = field(&setup, "realtimeInputConfig")
            .cloned()
            .unwrap_or(Value::Null);
        let aad = field(&ric, "automaticActivityDetection")
            .cloned()
            .unwrap_or(Value::Null);
        let enum_ok = |v: &Value, name: &str, allowed: &[&str]| {
            field(v, name).is_none_or(|x| x.as_str().is_some_and(|s| allowed.contains(&s)))
        };
        if !enum_ok(
            &ric,
            "activityHandling",
            &[
                "ACTIVITY_HANDLING_UNSPECIFIED",
                "START_OF_ACTIVITY_INTERRUPTS",
                "NO_INTERRUPTION",
            ],
        ) || !enum_ok(
            &aad,
            "startOfSpeechSensitivity",
            &[
                "START_SENSITIVITY_UNSPECIFIED",
                "START_SENSITIVITY_HIGH",
                "START_SENSITIVITY_LOW",
            ],
        ) || !enum_ok(
            &aad,
            "endOfSpeechSensitivity",
            &[
                "END_SENSITIVITY_UNSPECIFIED",
                "END_SENSITIVITY_HIGH",
                "END_SENSITIVITY_LOW",
            ],
        ) {
            return self.invalid(now);
        }
        let cfg = &self.shared.config;
        if let Some(ms) = proto::int_field(&aad, "silenceDurationMs") {
            self.silence_ms = u32::try_from(ms.max(0)).unwrap_or(u32::MAX);
        }
        if !proto::bool_field(&aad, "disabled") {
            // LOW start sensitivity needs a longer burst of energy before it commits.
            let low = field(&aad, "startOfSpeechSensitivity").and_then(Value::as_str)
                == Some("START_SENSITIVITY_LOW");
            let start_ms = if low {
                cfg.vad_start_ms * 3 / 2
            } else {
                cfg.vad_start_ms
            };
            self.vad = Some(Vad::new(cfg.vad_threshold, start_ms, self.silence_ms));
        }
        self.settings = SessionSettings {
            multi_part: profile.multi_part_events,
            interrupts: field(&ric, "activityHandling").and_then(Value::as_str)
                != Some("NO_INTERRUPTION"),
            input_transcription: field(&setup, "inputAudioTranscription").is_some(),
            output_transcription: field(&setup, "outputAudioTranscription").is_some(),
            resumption: field(&setup, "sessionResumption").is_some(),
            seeding_history: proto::bool_field(
                field(&setup, "historyConfig").unwrap_or(&Value::Null),
                "initialHistoryInClientContent",
            ),
            system_chars: content_chars(field(&setup, "systemInstruction")),
            tool_behaviors: proto::declared_behaviors(&setup)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(name, b)| Some((name, b?)))
                .collect(),
        };
        self.profile = Some(profile);
        if let Some(handle) =
            path(&setup, &["sessionResumption", "handle"]).filter(|h| !h.is_null())
        {
            let found = handle
                .as_str()
                .and_then(|h| self.shared.store.lookup(h, now));
            let Some(pos) = found else {
                return self.invalid(now);
            };
            self.pos = pos;
            let h = handle.as_str().map(str::to_string);
            self.record(|r| r.resumed_from = h);
        }
        let delay = if self.faults_apply {
            cfg.scenario.faults.setup_delay_ms
        } else {
            0
        };
        if delay > 0 {
            self.phase = Phase::SetupPending {
                until: now + Duration::from_millis(delay),
            };
        } else {
            self.complete_setup(now);
        }
    }

    fn complete_setup(&mut self, now: Instant) {
        self.phase = Phase::Live;
        self.send(json!({"setupComplete": {}}));
        if self.settings.resumption {
            self.send_handle(now);
        }
        if self.faults_apply {
            if let Some(action) = self.shared.config.scenario.faults.after_setup.clone() {
                return self.fire(action, now);
            }
        }
        while let Some((key, body)) = self.buffered.pop_front() {
            if !matches!(self.phase, Phase::Live) {
                break;
            }
            self.dispatch(&key, body, now);
        }
    }

    // ---- client input ---------------------------------------------------------------------

    fn handle_client_content(&mut self, body: &Value, now: Instant) {
        if !body.is_object() {
            return self.invalid(now);
        }
        let chars: usize = field(body, "turns")
            .and_then(Value::as_array)
            .map_or(0, |turns| {
                turns.iter().map(|t| content_chars(Some(t))).sum()
            });
        self.prompt_text_chars += chars;
        if self.settings.seeding_history {
            if proto::bool_field(body, "turnComplete") {
                self.settings.seeding_history = false;
            }
            return;
        }
        // Any clientContent interrupts the current generation (PROTO), whatever the handling mode.
        if self.gen.is_some() {
            self.interrupt(now);
        }
        if proto::bool_field(body, "turnComplete") {
            self.stalled = false;
            self.user_turn(0, 0, TurnTrigger::ClientContent, false, now);
        } else if self.profile.is_some_and(|p| p.incomplete_content_stalls) {
            // 2.5 (public reports): the model stops answering the caller's audio until a
            // clientContent with turnComplete:true; 3.x just waits for more input.
            self.stalled = true;
        }
    }

    fn handle_realtime_input(&mut self, body: &Value, now: Instant) {
        let Some(obj) = body.as_object().filter(|o| !o.is_empty()) else {
            return self.invalid(now);
        };
        for (k, v) in obj {
            if matches!(self.phase, Phase::Closed) {
                return;
            }
            match proto::camel(k).as_str() {
                "audio" => self.handle_audio(v, now),
                "mediaChunks" => match v.as_array().and_then(|a| a.first()) {
                    Some(blob) if blob_mime(blob).starts_with("audio/") => {
                        self.handle_audio(blob, now)
                    }
                    Some(_) => {}
                    None => self.invalid(now),
                },
                "video" => {}
                "text" => match v.as_str() {
                    Some(t) => {
                        self.prompt_text_chars += t.chars().count();
                        if self.caller_speaking()
                            && self.profile.is_some_and(|p| p.text_joins_speech)
                        {
                            // 2.5: text sent while the caller speaks joins their turn, which
                            // is answered when it ends.
                            continue;
                        }
                        let interrupting = self.gen.is_some() && self.settings.interrupts;
                        if interrupting {
                            self.interrupt(now);
                        }
                        self.user_turn(0, 0, TurnTrigger::Text, interrupting, now);
                    }
                    None => self.invalid(now),
                },
                "audioStreamEnd" => {
                    if v.as_bool() == Some(true) {
                        if let Some(end) = self.vad.as_mut().and_then(Vad::force_end) {
                            self.speech_ended(samples_to_ms(end), TurnTrigger::AudioStreamEnd, now);
                        }
                    }
                }
                "activityStart" => {
                    if self.vad.is_some() {
                        return self.invalid(now);
                    }
                    self.activity_open = true;
                    self.speech_started(samples_to_ms(self.audio_samples), now);
                }
                "activityEnd" => {
                    if self.vad.is_some() {
                        return self.invalid(now);
                    }
                    if std::mem::take(&mut self.activity_open) {
                        self.speech_ended(
                            samples_to_ms(self.audio_samples),
                            TurnTrigger::ActivityEnd,
                            now,
                        );
                    }
                }
                _ => return self.invalid(now),
            }
        }
    }

    fn handle_audio(&mut self, blob: &Value, now: Instant) {
        let mime = blob_mime(blob);
        let mut parts = mime.split(';').map(str::trim);
        if parts.next() != Some("audio/pcm") {
            return self.invalid(now);
        }
        let mut rate = INPUT_RATE;
        for p in parts {
            if let Some(r) = p.strip_prefix("rate=") {
                match r.parse::<u32>() {
                    Ok(r) if (1000..=192_000).contains(&r) => rate = r,
                    _ => return self.invalid(now),
                }
            }
        }
        let Some(Ok(bytes)) = field(blob, "data")
            .and_then(Value::as_str)
            .map(proto::decode_base64)
        else {
            return self.invalid(now);
        };
        let samples: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let samples = if rate == INPUT_RATE {
            samples
        } else {
            resample_linear(&samples, rate, INPUT_RATE)
        };
        let at_ms = self.ms(now);
        if self.shared.config.record_content {
            self.record(|r| {
                r.audio_chunks.push(AudioChunk {
                    at_ms,
                    offset: r.audio.len(),
                    len: samples.len(),
                    declared_rate: rate,
                });
                r.audio.extend_from_slice(&samples);
            });
        }
        let c = &self.shared.counters;
        c.audio_in_samples
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        c.audio_in_chunks.fetch_add(1, Ordering::Relaxed);
        if let Some(last) = self.last_audio_at {
            c.audio_in_gap.record(now.saturating_duration_since(last));
        }
        self.audio_samples += samples.len() as u64;
        self.last_audio_at = Some(now);
        let mut events = Vec::new();
        if let Some(vad) = self.vad.as_mut() {
            vad.push(&samples, &mut events);
        }
        for e in events {
            match e {
                VadEvent::Start(s) => self.speech_started(samples_to_ms(s), now),
                VadEvent::End(s) => self.speech_ended(samples_to_ms(s), TurnTrigger::Vad, now),
            }
            if matches!(self.phase, Phase::Closed) {
                return;
            }
        }
    }

    fn handle_tool_response(&mut self, body: &Value, now: Instant) {
        let Some(responses) = field(body, "functionResponses").and_then(Value::as_array) else {
            return self.invalid(now);
        };
        for r in responses {
            self.record(|rec| rec.tool_responses.push(r.clone()));
            let Some(id) = field(r, "id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            else {
                return self.invalid(now);
            };
            let scheduling = match field(r, "scheduling") {
                None | Some(Value::Null) => Scheduling::WhenIdle,
                Some(v) => match v.as_str() {
                    Some("SILENT") => Scheduling::Silent,
                    Some("WHEN_IDLE") => Scheduling::WhenIdle,
                    Some("INTERRUPT") => Scheduling::Interrupt,
                    _ => return self.invalid(now),
                },
            };
            let blocking = self.gen.as_mut().and_then(|g| {
                let i = g.pending_tools.iter().position(|p| p == id)?;
                Some(g.pending_tools.remove(i))
            });
            if blocking.is_some() {
                continue;
            }
            if let Some(i) = self
                .async_calls
                .iter()
                .position(|c| c.ids.iter().any(|x| x == id))
            {
                self.async_calls[i].ids.retain(|x| x != id);
                if self.async_calls[i].ids.is_empty() {
                    if let Some(reply) = self.async_calls.remove(i).after_tool {
                        self.schedule_result(reply, scheduling, now);
                    }
                }
                continue;
            }
            // A response racing the cancellation of its call is tolerated, not fatal.
            if !self.cancelled_tools.contains(id) {
                return self.close(1008, proto::REASON_NOT_FOUND, now);
            }
        }
        let latency = self.shared.config.response_latency;
        let (chunk_ms, pace) = (self.shared.config.chunk_ms, self.shared.config.pace);
        if let Some(g) = self.gen.as_mut() {
            if matches!(g.stage, Stage::AwaitingTools) && g.pending_tools.is_empty() {
                let reply = g.turn.after_tool.clone().unwrap_or(Reply {
                    clip: None,
                    text: String::new(),
                });
                g.seg = Segment::new(&reply, chunk_ms, pace, now + latency);
                g.stage = Stage::Streaming;
            }
        }
    }

    /// A NON_BLOCKING call's result is in: speak `reply` as its `scheduling` says.
    fn schedule_result(&mut self, reply: Reply, scheduling: Scheduling, now: Instant) {
        match scheduling {
            Scheduling::Silent => {}
            Scheduling::WhenIdle => {
                self.pending_results.push_back(reply);
                self.start_next(now);
            }
            Scheduling::Interrupt => {
                let wait = self.profile.is_some_and(|p| p.interrupt_waits_for_user);
                if wait && self.caller_speaking() {
                    // 3.8: wait until the caller's turn ends (Vertex 3.8 migration guide).
                    self.deferred_interrupts.push(reply);
                    return;
                }
                self.pending_results.push_front(reply);
                self.cut_for_result(now);
                self.start_next(now);
            }
        }
    }

    /// INTERRUPT: cut a turn that is still generating — `interrupted`, then `turnComplete`,
    /// like a barge-in but without cancelling anything. A turn that already completed its
    /// generation or waits for BLOCKING calls runs on; the result follows it.
    fn cut_for_result(&mut self, now: Instant) {
        if self
            .gen
            .as_ref()
            .is_some_and(|g| matches!(g.stage, Stage::Streaming))
        {
            self.send(json!({"serverContent": {"interrupted": true}}));
            self.finish_turn(now);
        }
    }

    /// The caller is mid-utterance (VAD speech, or inside activityStart..activityEnd).
    fn caller_speaking(&self) -> bool {
        self.activity_open || self.vad.as_ref().is_some_and(|v| v.speaking)
    }

    // ---- turns ----------------------------------------------------------------------------

    fn speech_started(&mut self, audio_ms: u64, now: Instant) {
        self.speech_start_ms = Some(audio_ms);
        self.speech_interrupted = false;
        if self.gen.is_some() && self.settings.interrupts {
            self.speech_interrupted = true;
            self.interrupt(now);
        }
    }

    fn speech_ended(&mut self, audio_end_ms: u64, trigger: TurnTrigger, now: Instant) {
        let start = self.speech_start_ms.take().unwrap_or(audio_end_ms);
        let interrupted = std::mem::take(&mut self.speech_interrupted);
        self.user_turn(start, audio_end_ms, trigger, interrupted, now);
    }

    fn user_turn(
        &mut self,
        start_ms: u64,
        end_ms: u64,
        trigger: TurnTrigger,
        interrupted: bool,
        now: Instant,
    ) {
        let at_ms = self.ms(now);
        self.record(|r| {
            r.user_turns.push(UserTurn {
                audio_start_ms: start_ms,
                audio_end_ms: end_ms,
                at_ms,
                trigger,
                interrupted_model: interrupted,
            })
        });
        self.user_turns += 1;
        if self.faults_apply {
            if let Some((n, action)) = self.shared.config.scenario.faults.after_user_turns.clone() {
                if self.user_turns == n {
                    return self.fire(action, now);
                }
            }
        }
        let text_trigger = matches!(trigger, TurnTrigger::Text | TurnTrigger::ClientContent);
        // 2.5 after an incomplete clientContent: a caller turn is heard, not answered.
        let answered = text_trigger || !self.stalled;
        if !self.deferred_interrupts.is_empty() {
            // 3.8: INTERRUPT results held while the caller spoke go first, then the answer.
            for reply in std::mem::take(&mut self.deferred_interrupts)
                .into_iter()
                .rev()
            {
                self.pending_results.push_front(reply);
            }
            if answered {
                self.queued_turn = Some(trigger);
            }
            self.cut_for_result(now);
            return self.start_next(now);
        }
        if !answered {
            return;
        }
        if self.gen.is_some() {
            // NO_INTERRUPTION: answer once the current turn is over.
            self.queued_turn = Some(trigger);
        } else {
            self.start_turn(trigger, now);
        }
    }

    /// Start what waits for an idle model: a tool result first, then a queued answer.
    fn start_next(&mut self, now: Instant) {
        if self.gen.is_some() || !matches!(self.phase, Phase::Live) {
            return;
        }
        if let Some(reply) = self.pending_results.pop_front() {
            self.begin_generation(Turn::reply(reply), false, now);
        } else if let Some(trigger) = self.queued_turn.take() {
            self.start_turn(trigger, now);
        }
    }

    /// How a function call behaves: as declared, else the model's default.
    fn behavior_of(&self, name: &str) -> Behavior {
        self.settings
            .tool_behaviors
            .get(name)
            .copied()
            .unwrap_or(match self.profile {
                Some(p) => p.default_tool_behavior,
                None => Behavior::Blocking,
            })
    }

    fn start_turn(&mut self, trigger: TurnTrigger, now: Instant) {
        let cfg = Arc::clone(&self.shared);
        let cfg = &cfg.config;
        let text_trigger = matches!(trigger, TurnTrigger::Text | TurnTrigger::ClientContent);
        let turn = match (&cfg.scenario.greeting, self.pos.started, text_trigger) {
            (Some(greeting), false, true) => Turn::reply(greeting.clone()),
            _ => {
                let t = cfg.scenario.turn(self.pos.next_turn);
                self.pos.next_turn += 1;
                t
            }
        };
        self.pos.started = true;
        self.begin_generation(turn, !text_trigger, now);
    }

    /// Start streaming `turn` (a scripted turn, or a tool result as a new turn).
    fn begin_generation(&mut self, turn: Turn, echo_caller: bool, now: Instant) {
        let cfg = Arc::clone(&self.shared);
        let cfg = &cfg.config;
        if self.settings.input_transcription && echo_caller {
            if let Some(caller) = &turn.caller {
                for frag in fragments(caller) {
                    self.send(json!({"serverContent": {"inputTranscription": {"text": frag}}}));
                }
            }
        }
        if self.settings.resumption {
            self.send(json!({"sessionResumptionUpdate": {"resumable": false}}));
        }
        if self.faults_apply {
            if let Some(f) = &turn.fault {
                self.turn_fault_at = Some((
                    now + cfg.response_latency + Duration::from_millis(f.after_ms),
                    f.action.clone(),
                ));
            }
        }
        let start = now + cfg.response_latency;
        let seg = Segment::new(&turn.reply, cfg.chunk_ms, cfg.pace, start);
        let prompt_audio_ms = samples_to_ms(self.audio_samples - self.prompt_audio_mark);
        self.prompt_audio_mark = self.audio_samples;
        let asynchronous = !turn.tool_calls.is_empty()
            && turn
                .tool_calls
                .iter()
                .all(|c| self.behavior_of(&c.name) == Behavior::NonBlocking);
        self.gen = Some(Generation {
            turn,
            seg,
            stage: Stage::Streaming,
            asynchronous,
            calls_sent: false,
            pending_tools: Vec::new(),
            played_until: start,
            response_ms: 0,
            prompt_text_chars: std::mem::take(&mut self.prompt_text_chars)
                + self.settings.system_chars,
            prompt_audio_ms,
        });
    }

    /// Run the model turn forward to `now`.
    fn advance(&mut self, now: Instant) {
        while matches!(self.phase, Phase::Live) {
            let Some(g) = self.gen.as_mut() else { return };
            match g.stage {
                Stage::Streaming => {
                    // NON_BLOCKING: the toolCall goes out once `tool_call_at_ms` of the reply
                    // audio has been sent, and the reply keeps streaming.
                    if g.asynchronous && !g.calls_sent {
                        let due = g.turn.tool_call_at_ms.is_some_and(|at| {
                            g.seg.audio_ms_sent() >= at && (g.seg.idx > 0 || now >= g.seg.start)
                        });
                        if due {
                            self.send_tool_calls();
                            continue;
                        }
                    }
                    if g.seg.idx < g.seg.chunks {
                        if now < g.seg.due() {
                            return;
                        }
                        if g.seg.idx == 0 {
                            g.played_until = g.played_until.max(g.seg.start) + g.seg.duration();
                        }
                        let clip_len = g.seg.clip.as_ref().map_or(0, |c| c.samples().len());
                        let sent_before = (g.seg.idx * g.seg.chunk_samples).min(clip_len);
                        let msgs = chunk_messages(
                            g,
                            self.settings.multi_part,
                            self.settings.output_transcription,
                        );
                        let sent = (g.seg.idx * g.seg.chunk_samples).min(clip_len) - sent_before;
                        self.shared
                            .counters
                            .audio_out_samples
                            .fetch_add(sent as u64, Ordering::Relaxed);
                        for m in msgs {
                            self.send(m);
                        }
                        continue;
                    }
                    if !g.calls_sent && !g.turn.tool_calls.is_empty() {
                        if now < g.seg.due() {
                            return;
                        }
                        // After the reply audio: BLOCKING calls wait here for their responses;
                        // NON_BLOCKING ones without `tool_call_at_ms` go out and the turn ends.
                        let blocking = !g.asynchronous;
                        self.send_tool_calls();
                        if blocking {
                            return;
                        }
                        continue;
                    }
                    if now < g.seg.due() {
                        return;
                    }
                    let hold = self.shared.config.realtime_playback;
                    g.stage = Stage::Finishing {
                        turn_complete_at: if hold { g.played_until.max(now) } else { now },
                    };
                    self.send(json!({"serverContent": {"generationComplete": true}}));
                }
                Stage::AwaitingTools => return,
                Stage::Finishing { turn_complete_at } => {
                    if now < turn_complete_at {
                        return;
                    }
                    self.finish_turn(now);
                }
            }
        }
    }

    /// Barge-in: cancel pending calls, `interrupted`, then `turnComplete` (no generationComplete).
    fn interrupt(&mut self, now: Instant) {
        let Some(g) = self.gen.as_ref() else { return };
        if !g.pending_tools.is_empty() {
            let ids = g.pending_tools.clone();
            self.cancelled_tools.extend(ids.iter().cloned());
            self.send(json!({"toolCallCancellation": {"ids": ids}}));
        }
        self.send(json!({"serverContent": {"interrupted": true}}));
        self.finish_turn(now);
    }

    fn finish_turn(&mut self, now: Instant) {
        let Some(g) = self.gen.take() else { return };
        let thoughts = self.profile.is_some_and(|p| p.thoughts_tokens);
        let mut content = json!({"turnComplete": true});
        if self.profile.is_some_and(|p| p.interaction_status) {
            // Extended thinking: still busy while a NON_BLOCKING call is outstanding or a
            // result is still to be spoken.
            let busy = !self.async_calls.is_empty()
                || !self.pending_results.is_empty()
                || !self.deferred_interrupts.is_empty();
            content["interactionStatus"] = json!(if busy { "IN_PROGRESS" } else { "IDLE" });
        }
        self.send(json!({
            "serverContent": content,
            "usageMetadata": usage(g.prompt_text_chars, g.prompt_audio_ms, g.response_ms, thoughts),
        }));
        if self.settings.resumption {
            self.send_handle(now);
        }
        self.start_next(now);
    }

    /// Send the current turn's calls as one `toolCall`: BLOCKING calls make the turn wait,
    /// NON_BLOCKING ones are tracked on the session (their responses may come after the turn).
    fn send_tool_calls(&mut self) {
        let Some(g) = self.gen.as_mut() else { return };
        let calls: Vec<Value> = g
            .turn
            .tool_calls
            .iter()
            .map(|c| {
                let n = self.shared.tool_seq.fetch_add(1, Ordering::Relaxed);
                json!({"id": format!("function-call-{n}"), "name": c.name, "args": c.args})
            })
            .collect();
        let ids: Vec<String> = calls
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect();
        g.calls_sent = true;
        if g.asynchronous {
            let after_tool = g.turn.after_tool.clone();
            self.async_calls.push(AsyncCalls {
                ids: ids.clone(),
                after_tool,
            });
        } else {
            g.pending_tools = ids.clone();
            g.stage = Stage::AwaitingTools;
        }
        self.record(|r| r.tool_calls_sent.extend(ids));
        self.send(json!({"toolCall": {"functionCalls": calls}}));
    }

    fn send_handle(&mut self, now: Instant) {
        let handle = self.shared.store.issue(self.pos, self.index, now);
        self.record(|r| r.handles_issued.push(handle.clone()));
        self.send(json!({"sessionResumptionUpdate": {"newHandle": handle, "resumable": true}}));
    }

    // ---- endings --------------------------------------------------------------------------

    fn fire(&mut self, action: FaultAction, now: Instant) {
        match action {
            FaultAction::Close { code, reason } => self.close(code, &reason, now),
            FaultAction::Drop => {
                self.out.push_back(Output::Drop);
                self.ended(CloseRecord::Dropped, now);
            }
        }
    }

    fn invalid(&mut self, now: Instant) {
        self.close(1007, proto::REASON_INVALID_ARGUMENT, now);
    }

    fn close(&mut self, code: u16, reason: &str, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let reason = proto::truncate_reason(reason).to_string();
        self.out.push_back(Output::Close {
            code,
            reason: reason.clone(),
        });
        self.ended(CloseRecord::ByServer { code, reason }, now);
    }

    fn send(&mut self, v: Value) {
        if !matches!(self.phase, Phase::Closed) {
            self.out.push_back(Output::Send(v));
        }
    }

    fn silence(&self) -> Duration {
        Duration::from_millis(u64::from(self.silence_ms))
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.opened).as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, f: impl FnOnce(&mut super::record::ConnectionRecord)) {
        if let Ok(mut rec) = self.shared.record.lock() {
            if let Some(c) = rec.connections.get_mut(self.index) {
                f(c);
            }
        }
    }
}

/// The messages for the next audio chunk of `g` (and advance it).
fn chunk_messages(g: &mut Generation, multi_part: bool, transcription: bool) -> Vec<Value> {
    let seg = &mut g.seg;
    let Some(clip) = seg.clip.as_ref() else {
        seg.idx = seg.chunks;
        return Vec::new();
    };
    let samples = clip.samples();
    let from = seg.idx * seg.chunk_samples;
    let to = (from + seg.chunk_samples).min(samples.len());
    let bytes: Vec<u8> = samples[from..to]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    g.response_ms += ((to - from) as u64 * 1000) / u64::from(MODEL_RATE);
    let audio = json!({"modelTurn": {"parts": [{"inlineData": {
        "mimeType": "audio/pcm;rate=24000",
        "data": proto::encode_base64(&bytes),
    }}]}});
    let frags = if transcription {
        std::mem::take(&mut seg.frags[seg.idx])
    } else {
        Vec::new()
    };
    seg.idx += 1;
    let mut out = Vec::new();
    if multi_part {
        let mut content = audio;
        if !frags.is_empty() {
            content["outputTranscription"] = json!({"text": frags.concat()});
        }
        out.push(json!({"serverContent": content}));
    } else {
        out.push(json!({"serverContent": audio}));
        for f in frags {
            out.push(json!({"serverContent": {"outputTranscription": {"text": f}}}));
        }
    }
    out
}

/// Split a transcript into incremental fragments of up to three words.
fn fragments(text: &str) -> Vec<String> {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .chunks(3)
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.join(" ")
            } else {
                format!(" {}", w.join(" "))
            }
        })
        .collect()
}

/// Plausible per-turn token counts: text ≈ 4 chars/token, audio 32 tokens/s in, 25 out;
/// with `thoughts`, `thoughtsTokenCount` grows with the prompt and is part of the total.
fn usage(text_chars: usize, audio_in_ms: u64, audio_out_ms: u64, thoughts: bool) -> Value {
    let text = text_chars.div_ceil(4) as u64;
    let audio_in = audio_in_ms * 32 / 1000;
    let audio_out = audio_out_ms * 25 / 1000;
    let mut prompt_details = vec![json!({"modality": "TEXT", "tokenCount": text})];
    if audio_in > 0 {
        prompt_details.push(json!({"modality": "AUDIO", "tokenCount": audio_in}));
    }
    let thought = if thoughts {
        16 + (text + audio_in) / 4
    } else {
        0
    };
    let mut v = json!({
        "promptTokenCount": text + audio_in,
        "responseTokenCount": audio_out,
        "totalTokenCount": text + audio_in + audio_out + thought,
        "promptTokensDetails": prompt_details,
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": audio_out}],
    });
    if thoughts {
        v["thoughtsTokenCount"] = json!(thought);
    }
    v
}

/// Characters of text in a `Content` (`{parts:[{text}]}`) or a bare string.
fn content_chars(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(s)) => s.chars().count(),
        Some(v) => field(v, "parts")
            .and_then(Value::as_array)
            .map_or(0, |parts| {
                parts
                    .iter()
                    .filter_map(|p| field(p, "text").and_then(Value::as_str))
                    .map(|t| t.chars().count())
                    .sum()
            }),
        None => 0,
    }
}

fn blob_mime(blob: &Value) -> &str {
    field(blob, "mimeType")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn samples_to_ms(samples: u64) -> u64 {
    samples * 1000 / u64::from(INPUT_RATE)
}

/// Proto Duration JSON: whole seconds as "60s", otherwise with a fraction ("9.5s").
fn duration_string(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!(
            "{}s",
            format!("{:.3}", d.as_secs_f64()).trim_end_matches('0')
        )
    }
}

/// Linear-interpolation resampler for inputs declared at a rate other than 16 kHz.
fn resample_linear(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if input.is_empty() {
        return Vec::new();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * f64::from(from) / f64::from(to);
            let i0 = pos.floor() as usize;
            let frac = pos - i0 as f64;
            let a = f64::from(input[i0.min(input.len() - 1)]);
            let b = f64::from(input[(i0 + 1).min(input.len() - 1)]);
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::gemini::{GeminiSim, GeminiSimBuilder, SimRecord};
    use std::sync::atomic::AtomicU64;

    fn session(b: GeminiSimBuilder, now: Instant) -> Session {
        let shared = Arc::new(SimShared {
            store: ResumptionStore::new(b.config.resumption_ttl),
            config: b.config,
            tool_seq: AtomicU64::new(1),
            record: Mutex::new(SimRecord {
                connections: vec![Default::default()],
                ..Default::default()
            }),
            rejected: AtomicU64::new(0),
            counters: Default::default(),
        });
        Session::new(shared, 0, "v1beta", true, now)
    }

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn setup_frame() -> ClientFrame {
        ClientFrame::Text(
            json!({"setup": {"model": "gemini-2.5-flash-native-audio-latest",
                "generationConfig": {"responseModalities": ["AUDIO"]}, "outputAudioTranscription": {}}})
            .to_string(),
        )
    }

    #[test]
    fn go_away_waits_for_setup_and_never_spins() {
        let t0 = Instant::now();
        let b = GeminiSim::builder()
            .lifetime(Duration::from_secs(10))
            .go_away_lead(Duration::from_secs(60));
        let mut s = session(b, t0);
        // Before setup the goAway is not due, only the lifetime end.
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        s.handle_frame(setup_frame(), t0 + Duration::from_millis(5));
        assert_eq!(
            drain(&mut s),
            vec![Output::Send(json!({"setupComplete": {}}))]
        );
        let due = s.poll_timeout().expect("goAway due");
        assert!(due <= t0 + Duration::from_millis(5));
        s.handle_timeout(t0 + Duration::from_millis(5));
        assert_eq!(
            drain(&mut s),
            vec![Output::Send(json!({"goAway": {"timeLeft": "10s"}}))]
        );
        s.handle_timeout(t0 + Duration::from_secs(10));
        assert!(matches!(
            drain(&mut s).as_slice(),
            [Output::Close { code: 1011, .. }]
        ));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_turn_runs_on_synthetic_time_faster_than_real_time() {
        let t0 = Instant::now();
        let b = GeminiSim::builder()
            .pace(2.0)
            .response_latency(Duration::from_millis(300));
        let mut s = session(b, t0);
        s.handle_frame(setup_frame(), t0);
        s.handle_frame(
            ClientFrame::Text(json!({"realtime_input": {"text": "hi"}}).to_string()),
            t0,
        );
        drain(&mut s);
        let mut now = t0;
        let mut sent = Vec::new();
        while let Some(t) = s.poll_timeout() {
            if t >= t0 + Duration::from_secs(60) {
                break;
            }
            now = t;
            s.handle_timeout(now);
            for o in drain(&mut s) {
                if let Output::Send(v) = o {
                    sent.push((now - t0, v));
                }
            }
            if sent
                .last()
                .is_some_and(|(_, v)| v["serverContent"]["turnComplete"] == json!(true))
            {
                break;
            }
        }
        let first_audio = sent
            .iter()
            .find(|(_, v)| v["serverContent"].get("modelTurn").is_some());
        assert_eq!(
            first_audio.map(|(t, _)| *t),
            Some(Duration::from_millis(300))
        );
        let gen = sent
            .iter()
            .find(|(_, v)| v["serverContent"]["generationComplete"] == json!(true));
        let clip_ms = Clip::greeting().duration_ms();
        // Streaming takes about half the clip at pace 2; turnComplete waits for real-time playback.
        let gen_at = gen.map(|(t, _)| t.as_millis() as u64).unwrap_or(0);
        assert!(
            (300 + clip_ms / 2..=300 + clip_ms / 2 + 50).contains(&gen_at),
            "{gen_at} vs {clip_ms}"
        );
        let done_at = (now - t0).as_millis() as u64;
        assert!(
            (300 + clip_ms..=300 + clip_ms + 5).contains(&done_at),
            "{done_at}"
        );
    }

    #[test]
    fn vad_detects_burst_and_silence() {
        let mut vad = Vad::new(300.0, 80, 500);
        let mut ev = Vec::new();
        vad.push(&vec![0; 1600], &mut ev);
        assert!(ev.is_empty());
        let tone: Vec<i16> = (0..8000)
            .map(|i| if i % 2 == 0 { 3000 } else { -3000 })
            .collect();
        vad.push(&tone, &mut ev);
        assert_eq!(ev, vec![VadEvent::Start(1600)]);
        vad.push(&vec![0; 16000], &mut ev);
        assert_eq!(ev, vec![VadEvent::Start(1600), VadEvent::End(9600)]);
    }

    #[test]
    fn vad_ignores_short_click() {
        let mut vad = Vad::new(300.0, 80, 500);
        let mut ev = Vec::new();
        let click: Vec<i16> = vec![5000; 480]; // 30 ms
        vad.push(&click, &mut ev);
        vad.push(&vec![0; 3200], &mut ev);
        assert!(ev.is_empty());
    }

    #[test]
    fn durations_and_fragments() {
        assert_eq!(duration_string(Duration::from_secs(60)), "60s");
        assert_eq!(duration_string(Duration::from_millis(9500)), "9.5s");
        assert_eq!(fragments("a b c d").concat(), "a b c d");
        let r = resample_linear(&[0, 100, 200, 300], 8000, 16000);
        assert_eq!(r.len(), 8);
        assert_eq!(r[1], 50);
    }

    #[test]
    fn transcript_fragments_cover_text() {
        let reply = Reply::long();
        let seg = Segment::new(&reply, 40, 3.0, Instant::now());
        let joined: String = seg.frags.iter().flatten().cloned().collect();
        assert_eq!(joined, reply.text);
        assert!(seg.frags.last().is_some_and(|f| f.is_empty()) || seg.chunks > 0);
        assert!(seg.frags[0].len() == 1);
    }
}
