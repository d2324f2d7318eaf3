//! The sans-IO call state machine: every per-call decision lives here.
//!
//! [`Call`] owns the phases of a call, both transcoders, the downlink playout queue with its
//! marks, pending tool calls and all timers. It owns no sockets, spawns no tasks and never
//! reads the clock: the driver passes `now` with every [`Input`], drains [`Call::poll_output`]
//! until it returns `None`, and sleeps until [`Call::poll_timeout`]. Tests drive it faster
//! than real time.
//!
//! Invariants:
//! - audio is perishable, control is not: `clear`, marks, tool responses and call actions are
//!   never dropped;
//! - every tool call id gets exactly one response (or is cancelled by the model);
//! - after [`Output::End`] nothing more is emitted.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::audio::transcode::{AudioError, Downlink, Uplink};
use crate::config::Config;
use crate::gemini::setup::{ActivityDetection, FunctionDeclaration, SetupParams};
use crate::gemini::wire::{FunctionCall, FunctionResponse, ModelEvent, Role, Turn, UsageMetadata};
use crate::twilio::wire::{CallerEvent, StreamStart};

/// One 20 ms μ-law frame at 8 kHz.
pub const FRAME_BYTES: usize = 160;
/// Duration of one frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// μ-law silence.
const ULAW_SILENCE: u8 = 0xFF;
/// Most caller audio sent to the model in one message when flushing the pre-connect buffer.
const FLUSH_CHUNK_FRAMES: usize = 5;

/// Per-call settings, derived once from [`Config`] and shared by all calls.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// The `setup` the model session is opened with (tools included).
    pub setup: SetupParams,
    /// Text sent as a user turn right after `setupComplete` to make the agent speak first.
    pub greeting: Option<String>,
    /// Most audio queued ahead of real time at the caller's side.
    pub playout_lead: Duration,
    /// A mark every this many frames of a turn.
    pub mark_interval_frames: u32,
    /// Caller audio kept (in frames) until the model session is ready.
    pub preconnect_frames: usize,
    /// Time allowed for Twilio's `start` after the upgrade.
    pub start_timeout: Duration,
    /// Time allowed from asking for a model connection to `setupComplete`.
    pub setup_timeout: Duration,
    /// Longest call.
    pub max_call: Duration,
    /// Idle time after the last key press before digits go to the model.
    pub dtmf_idle: Duration,
    /// Longest wait for the agent's goodbye to be heard after `end_call`.
    pub end_call_grace: Duration,
    /// Names of the configured transfer destinations.
    pub transfer_destinations: Vec<String>,
}

impl CallSettings {
    /// Derives the settings (and the tool declarations) from the configuration.
    pub fn from_config(cfg: &Config) -> CallSettings {
        let g = &cfg.gemini;
        let mut tools = vec![FunctionDeclaration {
            name: "end_call".into(),
            description:
                "Hang up the phone call. Call this after you have said goodbye to the caller; \
                the call ends once the caller has heard your last words."
                    .into(),
            parameters: Some(json!({
                "type": "OBJECT",
                "properties": {"reason": {"type": "STRING", "description": "Why the call is ending."}}
            })),
            behavior: None,
        }];
        let destinations: Vec<String> = cfg.transfer.destinations.keys().cloned().collect();
        if !destinations.is_empty() {
            let listing = cfg
                .transfer
                .destinations
                .iter()
                .map(|(name, d)| format!("'{name}': {}", d.description))
                .collect::<Vec<_>>()
                .join("; ");
            tools.push(FunctionDeclaration {
                name: "transfer_call".into(),
                description: format!(
                    "Transfer the caller to a person or department. Tell the caller you are transferring \
                     them before calling this. Destinations: {listing}."
                ),
                parameters: Some(json!({
                    "type": "OBJECT",
                    "properties": {"destination": {
                        "type": "STRING",
                        "enum": destinations,
                        "description": "Name of the destination."
                    }},
                    "required": ["destination"]
                })),
                behavior: None,
            });
        }
        let sensitivity = |v: &str, kind: &str| match v {
            "low" => Some(format!("{kind}_SENSITIVITY_LOW")),
            "high" => Some(format!("{kind}_SENSITIVITY_HIGH")),
            _ => None,
        };
        let non_zero = |v: u32| (v > 0).then_some(v);
        let setup = SetupParams {
            model: g.model.clone(),
            voice: Some(g.voice.clone()),
            language: (!g.language.is_empty()).then(|| g.language.clone()),
            system_instruction: (!g.system_instruction.is_empty())
                .then(|| g.system_instruction.clone()),
            tools,
            input_transcription: g.input_transcription,
            output_transcription: g.output_transcription,
            session_resumption: g.session_resumption,
            resume_handle: None,
            vad: ActivityDetection {
                disabled: g.vad.disabled,
                start_sensitivity: sensitivity(&g.vad.start_sensitivity, "START"),
                end_sensitivity: sensitivity(&g.vad.end_sensitivity, "END"),
                prefix_padding_ms: non_zero(g.vad.prefix_padding_ms),
                silence_duration_ms: non_zero(g.vad.silence_duration_ms),
                activity_handling: Some(
                    if g.vad.barge_in {
                        "START_OF_ACTIVITY_INTERRUPTS"
                    } else {
                        "NO_INTERRUPTION"
                    }
                    .into(),
                ),
            },
            context_compression: None,
        };
        CallSettings {
            setup,
            greeting: g.greeting.then(|| g.greeting_instruction.clone()),
            playout_lead: Duration::from_millis(cfg.playout.lead_ms.into()),
            mark_interval_frames: (cfg.playout.mark_interval_ms / 20).max(1),
            preconnect_frames: (cfg.limits.preconnect_buffer_ms / 20) as usize,
            start_timeout: Duration::from_millis(cfg.limits.start_timeout_ms),
            setup_timeout: Duration::from_millis(
                cfg.gemini.connect_timeout_ms + cfg.gemini.setup_timeout_ms,
            ),
            max_call: Duration::from_secs(cfg.limits.max_call_secs),
            dtmf_idle: Duration::from_millis(cfg.limits.dtmf_idle_ms),
            end_call_grace: Duration::from_secs(8),
            transfer_destinations: destinations,
        }
    }
}

/// What happened, as told to the machine by the driver.
#[derive(Debug)]
pub enum Input {
    /// A parsed message from Twilio.
    Caller(CallerEvent),
    /// The caller's socket ended (closed or failed) without `stop`.
    CallerClosed,
    /// The model socket is open; the machine answers with the `setup`.
    ModelConnected,
    /// The model socket could not be opened.
    ModelConnectFailed(String),
    /// One event decomposed from a model frame.
    Model(ModelEvent),
    /// The model socket closed (code 1005 when no close frame, 1006 when it dropped).
    ModelClosed {
        /// WebSocket close code.
        code: u16,
        /// Close reason (already truncated by the peer).
        reason: String,
    },
    /// A timer fired (the driver slept until [`Call::poll_timeout`]).
    Tick,
    /// The bridge is shutting down.
    Shutdown,
}

/// An effect for the driver to carry out, in order.
#[derive(Debug)]
pub enum Output {
    /// Send to the caller leg.
    ToCaller(CallerOut),
    /// Send to the model leg.
    ToModel(ModelOut),
    /// Open the model WebSocket (then feed [`Input::ModelConnected`] or
    /// [`Input::ModelConnectFailed`]).
    ConnectModel,
    /// An effect on the call through the telephony provider's API.
    Control(CallAction),
    /// Something worth recording on the call's timeline.
    Event(CallEvent),
    /// The call is over: close both legs. Nothing follows.
    End(CallEnd),
}

/// A message for Twilio.
#[derive(Debug, PartialEq)]
pub enum CallerOut {
    /// One 20 ms μ-law frame.
    Media([u8; FRAME_BYTES]),
    /// A playback mark.
    Mark(String),
    /// Drop everything queued at Twilio.
    Clear,
}

/// A message for the model.
#[derive(Debug)]
pub enum ModelOut {
    /// The `setup` message.
    Setup(Box<SetupParams>),
    /// Caller audio, 16 kHz s16le.
    Audio(Vec<u8>),
    /// Text input (`realtimeInput.text`).
    Text(String),
    /// Ordered turns (`clientContent`).
    ClientContent(Vec<Turn>),
    /// Answers to tool calls.
    ToolResponse(Vec<FunctionResponse>),
}

/// An effect on the call itself.
#[derive(Debug, Clone, PartialEq)]
pub enum CallAction {
    /// End the phone call.
    HangUp {
        /// The Twilio call.
        call_sid: String,
    },
}

/// Why a call ended — data, not an error.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEnd {
    /// Twilio sent `stop` (the caller hung up, or the call was updated).
    CallerHungUp,
    /// The caller's socket closed without `stop`.
    CallerDisconnected,
    /// No `start` arrived in time.
    StartTimeout,
    /// The stream's media format is not 8 kHz μ-law mono.
    UnsupportedMedia(String),
    /// The model could not be reached or refused the setup.
    ModelUnavailable(String),
    /// The model connection was lost mid-call.
    ModelLost(String),
    /// The agent ended the call with `end_call`.
    AgentHungUp,
    /// The call reached its maximum duration.
    MaxDuration,
    /// The bridge is shutting down.
    Shutdown,
}

impl CallEnd {
    /// Short machine-readable name (metrics, logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            CallEnd::CallerHungUp => "caller_hung_up",
            CallEnd::CallerDisconnected => "caller_disconnected",
            CallEnd::StartTimeout => "start_timeout",
            CallEnd::UnsupportedMedia(_) => "unsupported_media",
            CallEnd::ModelUnavailable(_) => "model_unavailable",
            CallEnd::ModelLost(_) => "model_lost",
            CallEnd::AgentHungUp => "agent_hung_up",
            CallEnd::MaxDuration => "max_duration",
            CallEnd::Shutdown => "shutdown",
        }
    }

    /// Whether the caller leg is still there to be closed (so Twilio runs the fallback verbs).
    pub fn caller_still_connected(&self) -> bool {
        !matches!(self, CallEnd::CallerHungUp | CallEnd::CallerDisconnected)
    }
}

/// Timeline events. Transcripts are included: the driver logs them at debug level only.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// Twilio's `start` arrived.
    Started {
        /// Twilio call SID.
        call_sid: String,
        /// Twilio stream SID.
        stream_sid: String,
    },
    /// `setupComplete` arrived.
    ModelReady {
        /// From the request to connect until `setupComplete`.
        setup_ms: u64,
    },
    /// A fragment of the caller's speech, transcribed by the model.
    CallerTranscript(String),
    /// A fragment of the agent's speech.
    AgentTranscript(String),
    /// The first frame of an agent turn went to the caller.
    AgentSpeaking {
        /// Turn number.
        turn: u32,
    },
    /// The caller heard the whole turn (its last mark came back after playback).
    AgentTurnHeard {
        /// Turn number.
        turn: u32,
        /// Audio played, ms.
        heard_ms: u64,
    },
    /// The caller barged in.
    Interrupted {
        /// Turn number (0 when no turn was playing).
        turn: u32,
        /// Audio of that turn confirmed heard by marks, ms.
        heard_ms: u64,
        /// Audio of that turn sent to the caller, ms.
        sent_ms: u64,
    },
    /// The model called a tool.
    ToolCall {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments.
        args: serde_json::Value,
    },
    /// The bridge answered a tool call.
    ToolResult {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// True for an `output`, false for an `error` response.
        ok: bool,
    },
    /// The caller pressed keys (sent to the model).
    Dtmf(String),
    /// The model announced the end of its connection.
    GoAway {
        /// Time left, if given.
        time_left_ms: Option<u64>,
    },
    /// Token usage for a model turn.
    Usage(UsageMetadata),
    /// The call ended.
    Ended(CallEnd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Upgrade done; waiting for `start`.
    AwaitingStart,
    /// `start` seen; waiting for the model socket.
    Connecting,
    /// `setup` sent; waiting for `setupComplete`.
    SettingUp,
    /// Conversation running.
    Live,
    /// `End` emitted.
    Ended,
}

/// A model turn whose audio is queued for (or being played to) the caller.
#[derive(Debug)]
struct QueuedTurn {
    id: u32,
    /// Absolute downlink byte position where this turn's audio ends, once generation is done.
    end: Option<u64>,
    frames_sent: u32,
}

/// A mark sent to Twilio and not yet returned.
#[derive(Debug)]
struct PendingMark {
    name: String,
    turn: u32,
    frames: u32,
    last_of_turn: bool,
}

/// `end_call` was answered; the hang-up waits for the goodbye to be heard.
#[derive(Debug)]
struct HangupPending {
    deadline: Instant,
    /// The model finished its turn after the tool response.
    model_done: bool,
}

/// One call. See the module docs.
pub struct Call {
    settings: std::sync::Arc<CallSettings>,
    phase: Phase,
    created: Instant,
    outputs: VecDeque<Output>,

    start: Option<StreamStart>,
    connect_requested: Option<Instant>,

    // Uplink: caller μ-law → model PCM 16 kHz.
    uplink: Uplink,
    uplink_out: Vec<u8>,
    preconnect: VecDeque<u8>,
    preconnect_dropped: u64,

    // Downlink: model PCM 24 kHz → caller μ-law frames.
    downlink: Downlink,
    downlink_out: Vec<u8>,
    pending: VecDeque<u8>,
    pushed: u64,
    sent: u64,
    turns: VecDeque<QueuedTurn>,
    generating: Option<u32>,
    next_turn: u32,
    /// After `interrupted`, model audio is dropped until that turn's `turnComplete`.
    discarding: bool,
    discarded_bytes: u64,
    /// When Twilio's queue runs dry, by the real-time playout estimate.
    queued_until: Option<Instant>,
    marks: VecDeque<PendingMark>,
    /// Marks returned by `clear` (not played) still to come back.
    cleared_marks: HashSet<String>,
    /// Frames of the most recent turn that the caller has been confirmed to hear.
    heard: (u32, u32),

    answered_tools: HashSet<String>,
    hangup: Option<HangupPending>,

    dtmf: String,
    dtmf_deadline: Option<Instant>,

    resume_handle: Option<String>,
    /// Unknown model message kinds seen (each logged once at info).
    unknown_kinds: HashSet<String>,
}

impl Call {
    /// A new call, created when the caller's WebSocket is upgraded.
    pub fn new(settings: std::sync::Arc<CallSettings>, now: Instant) -> Result<Call, AudioError> {
        let preconnect_bytes = settings.preconnect_frames * FRAME_BYTES;
        Ok(Call {
            phase: Phase::AwaitingStart,
            created: now,
            outputs: VecDeque::with_capacity(64),
            start: None,
            connect_requested: None,
            uplink: Uplink::new()?,
            uplink_out: Vec::with_capacity(4096),
            preconnect: VecDeque::with_capacity(preconnect_bytes.min(64 * 1024)),
            preconnect_dropped: 0,
            downlink: Downlink::new()?,
            downlink_out: Vec::with_capacity(8192),
            pending: VecDeque::with_capacity(16 * 1024),
            pushed: 0,
            sent: 0,
            turns: VecDeque::with_capacity(4),
            generating: None,
            next_turn: 1,
            discarding: false,
            discarded_bytes: 0,
            queued_until: None,
            marks: VecDeque::with_capacity(64),
            cleared_marks: HashSet::new(),
            heard: (0, 0),
            answered_tools: HashSet::new(),
            hangup: None,
            dtmf: String::new(),
            dtmf_deadline: None,
            resume_handle: None,
            unknown_kinds: HashSet::new(),
            settings,
        })
    }

    /// The stream's `start`, once seen.
    pub fn stream(&self) -> Option<&StreamStart> {
        self.start.as_ref()
    }

    /// The newest resumable session handle from the model.
    pub fn resume_handle(&self) -> Option<&str> {
        self.resume_handle.as_deref()
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Model audio dropped because it belonged to an interrupted turn, in bytes of 24 kHz PCM.
    pub fn discarded_model_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    /// Caller audio dropped from the pre-connect buffer because it was full, in bytes.
    pub fn preconnect_dropped_bytes(&self) -> u64 {
        self.preconnect_dropped
    }

    /// Next queued effect, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must call back with [`Input::Tick`] at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Ended {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        match self.phase {
            Phase::AwaitingStart => consider(Some(self.created + self.settings.start_timeout)),
            Phase::Connecting | Phase::SettingUp => consider(
                self.connect_requested
                    .map(|c| c + self.settings.setup_timeout),
            ),
            _ => {}
        }
        consider(Some(self.created + self.settings.max_call));
        consider(self.dtmf_deadline);
        consider(self.hangup.as_ref().map(|h| h.deadline));
        if self.pending.len() >= FRAME_BYTES || self.final_mark_due() {
            // Wake when one more frame fits under the lead target.
            let due = match self.queued_until {
                Some(q) => q
                    .checked_sub(self.settings.playout_lead.saturating_sub(FRAME))
                    .unwrap_or(self.created),
                None => self.created,
            };
            consider(Some(due));
        }
        t
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        match input {
            Input::Caller(ev) => self.on_caller(ev, now),
            Input::CallerClosed => self.end(CallEnd::CallerDisconnected),
            Input::ModelConnected => {
                if self.phase == Phase::Connecting {
                    let mut setup = self.settings.setup.clone();
                    setup.resume_handle = self.resume_handle.clone();
                    self.phase = Phase::SettingUp;
                    self.outputs
                        .push_back(Output::ToModel(ModelOut::Setup(Box::new(setup))));
                }
            }
            Input::ModelConnectFailed(why) => {
                self.end(CallEnd::ModelUnavailable(format!("connect failed: {why}")))
            }
            Input::Model(ev) => self.on_model(ev, now),
            Input::ModelClosed { code, reason } => {
                let why = format!("model closed the connection: code {code} {reason:?}");
                if self.phase == Phase::Live {
                    self.end(CallEnd::ModelLost(why));
                } else {
                    self.end(CallEnd::ModelUnavailable(why));
                }
            }
            Input::Tick => {}
            Input::Shutdown => self.end(CallEnd::Shutdown),
        }
        if self.phase != Phase::Ended {
            self.check_timers(now);
        }
        if self.phase != Phase::Ended {
            self.pump(now);
            self.check_hangup(now);
        }
    }

    fn on_caller(&mut self, ev: CallerEvent, now: Instant) {
        match ev {
            CallerEvent::Connected { .. } => {}
            CallerEvent::Start(start) => {
                if self.phase != Phase::AwaitingStart {
                    tracing::warn!("second start message on one stream ignored");
                    return;
                }
                if start.encoding != "audio/x-mulaw"
                    || start.sample_rate != 8000
                    || start.channels != 1
                {
                    let what = format!(
                        "{} at {} Hz, {} channel(s)",
                        start.encoding, start.sample_rate, start.channels
                    );
                    self.start = Some(start);
                    self.end(CallEnd::UnsupportedMedia(what));
                    return;
                }
                self.outputs.push_back(Output::Event(CallEvent::Started {
                    call_sid: start.call_sid.clone(),
                    stream_sid: start.stream_sid.clone(),
                }));
                self.start = Some(start);
                self.phase = Phase::Connecting;
                self.connect_requested = Some(now);
                self.outputs.push_back(Output::ConnectModel);
            }
            CallerEvent::Media(frame) => match self.phase {
                Phase::AwaitingStart => {
                    tracing::warn!("media before start ignored ({} bytes)", frame.payload.len());
                }
                Phase::Connecting | Phase::SettingUp => {
                    let cap = self.settings.preconnect_frames * FRAME_BYTES;
                    if cap == 0 {
                        self.preconnect_dropped += frame.payload.len() as u64;
                        return;
                    }
                    for &b in &frame.payload {
                        if self.preconnect.len() >= cap {
                            self.preconnect.pop_front();
                            self.preconnect_dropped += 1;
                        }
                        self.preconnect.push_back(b);
                    }
                }
                Phase::Live => {
                    self.uplink_out.clear();
                    self.uplink.process(&frame.payload, &mut self.uplink_out);
                    if !self.uplink_out.is_empty() {
                        self.outputs
                            .push_back(Output::ToModel(ModelOut::Audio(self.uplink_out.clone())));
                    }
                }
                Phase::Ended => {}
            },
            CallerEvent::Dtmf { digit } => {
                self.dtmf.push(digit);
                if digit == '#' {
                    self.flush_dtmf();
                } else {
                    self.dtmf_deadline = Some(now + self.settings.dtmf_idle);
                }
            }
            CallerEvent::Mark { name } => self.on_mark(&name),
            CallerEvent::Stop => self.end(CallEnd::CallerHungUp),
        }
    }

    fn on_model(&mut self, ev: ModelEvent, now: Instant) {
        match ev {
            ModelEvent::SetupComplete => {
                if self.phase != Phase::SettingUp {
                    tracing::warn!("unexpected setupComplete ignored");
                    return;
                }
                self.phase = Phase::Live;
                let setup_ms = self
                    .connect_requested
                    .map_or(0, |c| now.saturating_duration_since(c).as_millis() as u64);
                self.outputs
                    .push_back(Output::Event(CallEvent::ModelReady { setup_ms }));
                if let Some(greeting) = self.settings.greeting.clone() {
                    self.outputs
                        .push_back(Output::ToModel(ModelOut::ClientContent(vec![Turn {
                            role: Role::User,
                            text: greeting,
                        }])));
                }
                self.flush_preconnect();
                if !self.dtmf.is_empty() && self.dtmf_deadline.is_none() {
                    self.flush_dtmf();
                }
            }
            ModelEvent::Audio(pcm) => {
                if self.discarding {
                    self.discarded_bytes += pcm.len() as u64;
                    return;
                }
                if self.generating.is_none() {
                    let id = self.next_turn;
                    self.next_turn += 1;
                    self.generating = Some(id);
                    self.turns.push_back(QueuedTurn {
                        id,
                        end: None,
                        frames_sent: 0,
                    });
                }
                self.downlink_out.clear();
                self.downlink.process(&pcm, &mut self.downlink_out);
                self.pending.extend(self.downlink_out.iter().copied());
                self.pushed += self.downlink_out.len() as u64;
            }
            ModelEvent::Text(_) => {}
            ModelEvent::InputTranscription(t) => {
                self.outputs
                    .push_back(Output::Event(CallEvent::CallerTranscript(t)));
            }
            ModelEvent::OutputTranscription(t) => {
                if !self.discarding {
                    self.outputs
                        .push_back(Output::Event(CallEvent::AgentTranscript(t)));
                }
            }
            ModelEvent::Interrupted => self.on_interrupted(now),
            ModelEvent::GenerationComplete => self.finish_generation(),
            ModelEvent::TurnComplete => {
                self.finish_generation();
                self.discarding = false;
                if let Some(h) = self.hangup.as_mut() {
                    h.model_done = true;
                }
            }
            ModelEvent::Usage(u) => self.outputs.push_back(Output::Event(CallEvent::Usage(u))),
            ModelEvent::ToolCall(calls) => {
                for call in calls {
                    self.on_tool_call(call, now);
                }
            }
            ModelEvent::ToolCallCancellation(ids) => {
                // Tools are answered synchronously, so nothing is in flight to cancel; a
                // cancelled end_call is withdrawn.
                tracing::debug!(?ids, "tool calls cancelled by the model");
            }
            ModelEvent::GoAway { time_left } => {
                self.outputs.push_back(Output::Event(CallEvent::GoAway {
                    time_left_ms: time_left.map(|d| d.as_millis() as u64),
                }));
            }
            ModelEvent::SessionResumptionUpdate {
                new_handle,
                resumable,
            } => {
                if resumable {
                    if let Some(h) = new_handle.filter(|h| !h.is_empty()) {
                        self.resume_handle = Some(h);
                    }
                }
            }
            ModelEvent::Unknown(kind) => {
                if self.unknown_kinds.insert(kind.clone()) {
                    tracing::info!(
                        kind,
                        "unknown model message ignored (further ones at debug)"
                    );
                } else {
                    tracing::debug!(kind, "unknown model message ignored");
                }
            }
        }
    }

    fn on_tool_call(&mut self, call: FunctionCall, now: Instant) {
        if !self.answered_tools.insert(call.id.clone()) {
            tracing::warn!(
                id = call.id,
                "duplicate tool call id ignored (already answered)"
            );
            return;
        }
        self.outputs.push_back(Output::Event(CallEvent::ToolCall {
            id: call.id.clone(),
            name: call.name.clone(),
            args: call.args.clone(),
        }));
        let response = match call.name.as_str() {
            "end_call" => {
                self.hangup = Some(HangupPending {
                    deadline: now + self.settings.end_call_grace,
                    model_done: false,
                });
                Ok(
                    json!({"result": "ok", "note": "The call ends once the caller has heard your goodbye."}),
                )
            }
            "transfer_call" => {
                let dest = call
                    .args
                    .get("destination")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                if self.settings.transfer_destinations.is_empty() {
                    Err("transfers are not configured on this line".to_string())
                } else if !self
                    .settings
                    .transfer_destinations
                    .iter()
                    .any(|d| d == dest)
                {
                    Err(format!(
                        "unknown destination {dest:?}; choose one of: {}",
                        self.settings.transfer_destinations.join(", ")
                    ))
                } else {
                    Err(
                        "transfers are not available yet; offer to help the caller yourself"
                            .to_string(),
                    )
                }
            }
            other => Err(format!(
                "unknown tool {other:?}; no such function is available"
            )),
        };
        let ok = response.is_ok();
        let body = match response {
            Ok(v) => json!({ "output": v }),
            Err(e) => json!({ "error": e }),
        };
        self.outputs
            .push_back(Output::ToModel(ModelOut::ToolResponse(vec![
                FunctionResponse {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    response: body,
                },
            ])));
        self.outputs.push_back(Output::Event(CallEvent::ToolResult {
            id: call.id,
            name: call.name,
            ok,
        }));
    }

    fn on_interrupted(&mut self, now: Instant) {
        let (turn, heard_ms, sent_ms) = match self.turns.front() {
            Some(t) => {
                let heard = if self.heard.0 == t.id {
                    self.heard.1
                } else {
                    0
                };
                (t.id, u64::from(heard) * 20, u64::from(t.frames_sent) * 20)
            }
            None => (0, 0, 0),
        };
        self.pending.clear();
        self.pushed = self.sent;
        self.turns.clear();
        self.generating = None;
        self.discarding = true;
        self.downlink.reset();
        self.outputs.push_back(Output::ToCaller(CallerOut::Clear));
        self.queued_until = Some(now);
        for m in self.marks.drain(..) {
            self.cleared_marks.insert(m.name);
        }
        self.outputs
            .push_back(Output::Event(CallEvent::Interrupted {
                turn,
                heard_ms,
                sent_ms,
            }));
    }

    /// The model finished generating the current turn: flush the resampler's tail and pad the
    /// turn to whole frames so its last words are played, not held back.
    fn finish_generation(&mut self) {
        if self.generating.take().is_none() {
            return;
        }
        self.downlink_out.clear();
        self.downlink.finish(&mut self.downlink_out);
        self.pending.extend(self.downlink_out.iter().copied());
        self.pushed += self.downlink_out.len() as u64;
        let rem = (self.pushed % FRAME_BYTES as u64) as usize;
        if rem != 0 {
            let pad = FRAME_BYTES - rem;
            self.pending.extend(std::iter::repeat_n(ULAW_SILENCE, pad));
            self.pushed += pad as u64;
        }
        if let Some(t) = self.turns.back_mut() {
            t.end = Some(self.pushed);
        }
    }

    fn final_mark_due(&self) -> bool {
        self.turns.front().is_some_and(|t| t.end == Some(self.sent))
    }

    /// Sends whole frames while the lead at Twilio is below the target, with marks.
    fn pump(&mut self, now: Instant) {
        loop {
            if self.final_mark_due() {
                let Some(t) = self.turns.pop_front() else {
                    break;
                };
                self.send_mark(t.id, t.frames_sent, true);
                continue;
            }
            if self.pending.len() < FRAME_BYTES {
                break;
            }
            let lead = self
                .queued_until
                .map_or(Duration::ZERO, |q| q.saturating_duration_since(now));
            if lead + FRAME > self.settings.playout_lead {
                break;
            }
            let Some(turn) = self.turns.front_mut() else {
                // Audio without a turn cannot happen; drop it rather than play it unaccounted.
                self.pending.clear();
                self.pushed = self.sent;
                break;
            };
            let mut frame = [ULAW_SILENCE; FRAME_BYTES];
            for (dst, src) in frame.iter_mut().zip(self.pending.drain(..FRAME_BYTES)) {
                *dst = src;
            }
            self.sent += FRAME_BYTES as u64;
            turn.frames_sent += 1;
            let (id, frames) = (turn.id, turn.frames_sent);
            let base = self.queued_until.map_or(now, |q| q.max(now));
            self.queued_until = Some(base + FRAME);
            if frames == 1 {
                self.outputs
                    .push_back(Output::Event(CallEvent::AgentSpeaking { turn: id }));
            }
            self.outputs
                .push_back(Output::ToCaller(CallerOut::Media(frame)));
            let at_end = self.turns.front().is_some_and(|t| t.end == Some(self.sent));
            if frames % self.settings.mark_interval_frames == 0 && !at_end {
                self.send_mark(id, frames, false);
            }
        }
    }

    fn send_mark(&mut self, turn: u32, frames: u32, last_of_turn: bool) {
        let name = if last_of_turn {
            format!("t{turn}-{frames}-end")
        } else {
            format!("t{turn}-{frames}")
        };
        self.outputs
            .push_back(Output::ToCaller(CallerOut::Mark(name.clone())));
        self.marks.push_back(PendingMark {
            name,
            turn,
            frames,
            last_of_turn,
        });
    }

    fn on_mark(&mut self, name: &str) {
        if self.cleared_marks.remove(name) {
            // Returned by `clear`: that audio was never played.
            return;
        }
        let Some(pos) = self.marks.iter().position(|m| m.name == name) else {
            tracing::debug!(name, "mark not sent by this call ignored");
            return;
        };
        // Marks come back in order; earlier ones still pending were played too.
        for m in self.marks.drain(..=pos) {
            self.heard = (m.turn, m.frames);
            if m.last_of_turn {
                self.outputs
                    .push_back(Output::Event(CallEvent::AgentTurnHeard {
                        turn: m.turn,
                        heard_ms: u64::from(m.frames) * 20,
                    }));
            }
        }
    }

    fn flush_preconnect(&mut self) {
        let chunk = FLUSH_CHUNK_FRAMES * FRAME_BYTES;
        while !self.preconnect.is_empty() {
            let n = chunk.min(self.preconnect.len());
            let bytes: Vec<u8> = self.preconnect.drain(..n).collect();
            self.uplink_out.clear();
            self.uplink.process(&bytes, &mut self.uplink_out);
            if !self.uplink_out.is_empty() {
                self.outputs
                    .push_back(Output::ToModel(ModelOut::Audio(self.uplink_out.clone())));
            }
        }
    }

    fn flush_dtmf(&mut self) {
        self.dtmf_deadline = None;
        if self.dtmf.is_empty() || self.phase != Phase::Live {
            return;
        }
        let digits = std::mem::take(&mut self.dtmf);
        self.outputs
            .push_back(Output::Event(CallEvent::Dtmf(digits.clone())));
        self.outputs
            .push_back(Output::ToModel(ModelOut::Text(format!(
                "[The caller pressed these keys on the phone keypad: {digits}]"
            ))));
    }

    fn check_timers(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingStart if now >= self.created + self.settings.start_timeout => {
                self.end(CallEnd::StartTimeout);
                return;
            }
            Phase::Connecting | Phase::SettingUp => {
                if let Some(c) = self.connect_requested {
                    if now >= c + self.settings.setup_timeout {
                        self.end(CallEnd::ModelUnavailable(format!(
                            "no setupComplete within {} ms",
                            self.settings.setup_timeout.as_millis()
                        )));
                        return;
                    }
                }
            }
            _ => {}
        }
        if now >= self.created + self.settings.max_call {
            self.end(CallEnd::MaxDuration);
            return;
        }
        if self.dtmf_deadline.is_some_and(|d| now >= d) {
            self.flush_dtmf();
        }
    }

    /// After `end_call`: hang up once the model is done and the caller heard everything, or at
    /// the deadline.
    fn check_hangup(&mut self, now: Instant) {
        let Some(h) = &self.hangup else { return };
        let heard_all = h.model_done
            && self.generating.is_none()
            && self.pending.is_empty()
            && self.turns.is_empty()
            && self.marks.is_empty();
        if heard_all || now >= h.deadline {
            if !heard_all {
                tracing::info!("goodbye not finished within the end_call grace; hanging up");
            }
            self.hangup = None;
            if let Some(start) = &self.start {
                self.outputs.push_back(Output::Control(CallAction::HangUp {
                    call_sid: start.call_sid.clone(),
                }));
            }
            self.end(CallEnd::AgentHungUp);
        }
    }

    fn end(&mut self, why: CallEnd) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.outputs
            .push_back(Output::Event(CallEvent::Ended(why.clone())));
        self.outputs.push_back(Output::End(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::wire::MediaFrame;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn settings() -> Arc<CallSettings> {
        let mut s = CallSettings::from_config(&Config::default());
        s.end_call_grace = Duration::from_secs(8);
        Arc::new(s)
    }

    fn start_event() -> CallerEvent {
        CallerEvent::Start(StreamStart {
            stream_sid: "MZ00112233445566778899aabbccddeeff".into(),
            call_sid: "CAfedcba9876543210fedcba9876543210".into(),
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            tracks: vec!["inbound".into()],
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
            custom_parameters: BTreeMap::new(),
        })
    }

    fn media(chunk: u64) -> CallerEvent {
        CallerEvent::Media(MediaFrame {
            chunk,
            timestamp_ms: 155 + 20 * chunk,
            track: "inbound".into(),
            payload: vec![0xFF; FRAME_BYTES],
        })
    }

    fn drain(call: &mut Call) -> Vec<Output> {
        std::iter::from_fn(|| call.poll_output()).collect()
    }

    /// A call that is live (setupComplete seen), with outputs drained.
    fn live_call(t0: Instant) -> Call {
        let mut call = Call::new(settings(), t0).expect("pipeline");
        call.handle_input(Input::Caller(start_event()), t0);
        call.handle_input(Input::ModelConnected, t0);
        call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
        drain(&mut call);
        call
    }

    /// 24 kHz PCM of a 440 Hz tone, `ms` long.
    fn model_audio(ms: usize) -> Vec<u8> {
        let n = 24 * ms;
        (0..n)
            .flat_map(|i| {
                let s =
                    (8000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 24000.0).sin()) as i16;
                s.to_le_bytes()
            })
            .collect()
    }

    fn media_count(outs: &[Output]) -> usize {
        outs.iter()
            .filter(|o| matches!(o, Output::ToCaller(CallerOut::Media(_))))
            .count()
    }

    fn marks(outs: &[Output]) -> Vec<String> {
        outs.iter()
            .filter_map(|o| match o {
                Output::ToCaller(CallerOut::Mark(m)) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn start_connects_then_sends_setup_greeting_and_buffered_audio() {
        let t0 = Instant::now();
        let mut call = Call::new(settings(), t0).unwrap();
        call.handle_input(Input::Caller(media(1)), t0);
        assert!(drain(&mut call).is_empty(), "media before start is ignored");
        call.handle_input(Input::Caller(start_event()), t0);
        let outs = drain(&mut call);
        assert!(matches!(outs[0], Output::Event(CallEvent::Started { .. })));
        assert!(matches!(outs[1], Output::ConnectModel));
        for i in 0..10 {
            call.handle_input(Input::Caller(media(i + 2)), t0);
        }
        assert!(
            drain(&mut call).is_empty(),
            "caller audio is held until setupComplete"
        );
        call.handle_input(Input::ModelConnected, t0);
        let outs = drain(&mut call);
        assert!(
            matches!(&outs[0], Output::ToModel(ModelOut::Setup(p)) if p.tools.iter().any(|t| t.name == "end_call"))
        );
        call.handle_input(
            Input::Model(ModelEvent::SetupComplete),
            t0 + Duration::from_millis(300),
        );
        let outs = drain(&mut call);
        assert!(matches!(
            outs[0],
            Output::Event(CallEvent::ModelReady { setup_ms: 300 })
        ));
        assert!(matches!(&outs[1], Output::ToModel(ModelOut::ClientContent(t)) if t.len() == 1));
        let audio: usize = outs
            .iter()
            .filter_map(|o| match o {
                Output::ToModel(ModelOut::Audio(a)) => Some(a.len()),
                _ => None,
            })
            .sum();
        // 10 frames of 8 kHz μ-law = 200 ms = 6400 bytes of 16 kHz PCM, less what the
        // resampler still holds (its delay, at most 2 ms = 64 bytes).
        assert!((6400 - 64..=6400).contains(&audio), "flushed {audio} bytes");
        // Live: each frame goes straight through.
        call.handle_input(Input::Caller(media(20)), t0);
        let outs = drain(&mut call);
        assert!(matches!(&outs[0], Output::ToModel(ModelOut::Audio(a)) if a.len() == 640));
    }

    #[test]
    fn preconnect_buffer_is_bounded() {
        let t0 = Instant::now();
        let mut s = CallSettings::from_config(&Config::default());
        s.preconnect_frames = 5;
        let mut call = Call::new(Arc::new(s), t0).unwrap();
        call.handle_input(Input::Caller(start_event()), t0);
        for i in 0..12 {
            call.handle_input(Input::Caller(media(i)), t0);
        }
        assert_eq!(call.preconnect_dropped_bytes(), 7 * 160);
    }

    #[test]
    fn downlink_is_paced_with_a_bounded_lead_and_marks() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(1000))), t0);
        let outs = drain(&mut call);
        // 200 ms lead = 10 frames at once, marks every 100 ms.
        assert_eq!(media_count(&outs), 10);
        assert_eq!(marks(&outs), vec!["t1-5", "t1-10"]);
        assert!(matches!(
            outs[0],
            Output::Event(CallEvent::AgentSpeaking { turn: 1 })
        ));
        let next = call.poll_timeout().expect("a frame is due");
        assert_eq!(next, t0 + Duration::from_millis(20));
        // One frame per 20 ms after that.
        for k in 1..=20u64 {
            call.handle_input(Input::Tick, t0 + Duration::from_millis(20 * k));
            assert_eq!(media_count(&drain(&mut call)), 1, "tick {k}");
        }
    }

    #[test]
    fn end_of_turn_flushes_tail_and_final_mark_reports_heard() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(110))), t0);
        call.handle_input(Input::Model(ModelEvent::GenerationComplete), t0);
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
        let outs = drain(&mut call);
        // 110 ms of audio plus the filter tail, padded to whole frames = 6 frames.
        assert_eq!(media_count(&outs), 6);
        assert_eq!(marks(&outs), vec!["t1-5", "t1-6-end"]);
        call.handle_input(
            Input::Caller(CallerEvent::Mark {
                name: "t1-5".into(),
            }),
            t0,
        );
        call.handle_input(
            Input::Caller(CallerEvent::Mark {
                name: "t1-6-end".into(),
            }),
            t0,
        );
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::AgentTurnHeard {
                turn: 1,
                heard_ms: 120
            })
        )));
    }

    #[test]
    fn barge_in_clears_and_never_plays_the_interrupted_turn() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2000))), t0);
        drain(&mut call);
        let t1 = t0 + Duration::from_millis(100);
        call.handle_input(Input::Tick, t1);
        drain(&mut call);
        call.handle_input(
            Input::Caller(CallerEvent::Mark {
                name: "t1-5".into(),
            }),
            t1,
        );
        call.handle_input(Input::Model(ModelEvent::Interrupted), t1);
        let outs = drain(&mut call);
        assert!(
            matches!(outs[0], Output::ToCaller(CallerOut::Clear)),
            "clear first: {outs:?}"
        );
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::Interrupted {
                turn: 1,
                heard_ms: 100,
                sent_ms: 300
            })
        )));
        assert_eq!(media_count(&outs), 0);
        // Late audio of the interrupted turn and marks returned by clear change nothing.
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(500))), t1);
        call.handle_input(
            Input::Caller(CallerEvent::Mark {
                name: "t1-10".into(),
            }),
            t1,
        );
        call.handle_input(
            Input::Caller(CallerEvent::Mark {
                name: "t1-15".into(),
            }),
            t1,
        );
        for k in 1..20u64 {
            call.handle_input(Input::Tick, t1 + Duration::from_millis(20 * k));
        }
        let outs = drain(&mut call);
        assert_eq!(media_count(&outs), 0, "{outs:?}");
        assert!(call.discarded_model_bytes() >= 24_000);
        // After turnComplete a new turn plays.
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t1);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t1);
        let outs = drain(&mut call);
        assert!(media_count(&outs) > 0);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Event(CallEvent::AgentSpeaking { turn: 2 }))));
    }

    fn tool_call(id: &str, name: &str) -> Input {
        Input::Model(ModelEvent::ToolCall(vec![FunctionCall {
            id: id.into(),
            name: name.into(),
            args: json!({}),
        }]))
    }

    fn tool_responses(outs: &[Output]) -> Vec<FunctionResponse> {
        outs.iter()
            .filter_map(|o| match o {
                Output::ToModel(ModelOut::ToolResponse(r)) => Some(r.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn end_call_hangs_up_only_after_the_goodbye_is_heard() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(tool_call("fc-1", "end_call"), t0);
        let outs = drain(&mut call);
        let r = tool_responses(&outs);
        assert_eq!(r.len(), 1);
        assert!(r[0].response.get("output").is_some());
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(300))), t0);
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
        let mut t = t0;
        let mut sent_marks = Vec::new();
        for _ in 0..30 {
            t += Duration::from_millis(20);
            call.handle_input(Input::Tick, t);
            let outs = drain(&mut call);
            assert!(
                !outs.iter().any(|o| matches!(o, Output::Control(_))),
                "no hang-up before the goodbye is heard"
            );
            sent_marks.extend(marks(&outs));
        }
        // Marks returned by clear would not count; echo the played ones in order.
        let last = sent_marks.last().cloned().expect("final mark");
        assert!(last.ends_with("-end"));
        for m in &sent_marks[..sent_marks.len() - 1] {
            call.handle_input(Input::Caller(CallerEvent::Mark { name: m.clone() }), t);
        }
        assert!(!drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::Control(_))));
        call.handle_input(Input::Caller(CallerEvent::Mark { name: last }), t);
        let outs = drain(&mut call);
        assert!(
            matches!(&outs[outs.len() - 3], Output::Control(CallAction::HangUp { call_sid }) if call_sid.starts_with("CA"))
        );
        assert!(matches!(
            outs.last(),
            Some(Output::End(CallEnd::AgentHungUp))
        ));
        call.handle_input(Input::Caller(CallerEvent::Stop), t);
        assert!(drain(&mut call).is_empty(), "nothing after End");
    }

    #[test]
    fn end_call_wait_is_bounded_when_the_model_keeps_talking() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(tool_call("fc-1", "end_call"), t0);
        let mut t = t0;
        let mut hung_up_at = None;
        while t < t0 + Duration::from_secs(12) {
            call.handle_input(Input::Model(ModelEvent::Audio(model_audio(20))), t);
            t += Duration::from_millis(20);
            call.handle_input(Input::Tick, t);
            if drain(&mut call)
                .iter()
                .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. })))
            {
                hung_up_at = Some(t);
                break;
            }
        }
        let at = hung_up_at.expect("hung up");
        assert_eq!(at.duration_since(t0).as_millis() / 20 * 20, 8000);
    }

    #[test]
    fn every_tool_call_gets_exactly_one_response() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(tool_call("fc-9", "lookup_order"), t0);
        call.handle_input(tool_call("fc-9", "lookup_order"), t0);
        call.handle_input(tool_call("fc-10", "transfer_call"), t0);
        let r = tool_responses(&drain(&mut call));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].id, "fc-9");
        assert!(r[0].response["error"]
            .as_str()
            .unwrap()
            .contains("lookup_order"));
        assert_eq!(r[1].id, "fc-10");
        assert!(r[1].response.get("error").is_some());
    }

    #[test]
    fn model_refusal_before_setup_ends_the_stream() {
        let t0 = Instant::now();
        let mut call = Call::new(settings(), t0).unwrap();
        call.handle_input(Input::Caller(start_event()), t0);
        call.handle_input(Input::ModelConnected, t0);
        call.handle_input(
            Input::ModelClosed {
                code: 1008,
                reason: "models/x is not found".into(),
            },
            t0,
        );
        let outs = drain(&mut call);
        match outs.last() {
            Some(Output::End(e @ CallEnd::ModelUnavailable(why))) => {
                assert!(why.contains("1008"));
                assert!(e.caller_still_connected());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn setup_and_start_timeouts() {
        let t0 = Instant::now();
        let mut call = Call::new(settings(), t0).unwrap();
        let deadline = call.poll_timeout().unwrap();
        call.handle_input(Input::Tick, deadline);
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::StartTimeout))
        ));

        let mut call = Call::new(settings(), t0).unwrap();
        call.handle_input(Input::Caller(start_event()), t0);
        call.handle_input(Input::ModelConnected, t0);
        let deadline = call.poll_timeout().unwrap();
        call.handle_input(Input::Tick, deadline);
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::ModelUnavailable(_)))
        ));
    }

    #[test]
    fn dtmf_is_aggregated_until_hash_or_idle() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        for d in ['1', '2', '#'] {
            call.handle_input(Input::Caller(CallerEvent::Dtmf { digit: d }), t0);
        }
        let texts: Vec<String> = drain(&mut call)
            .into_iter()
            .filter_map(|o| match o {
                Output::ToModel(ModelOut::Text(t)) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(texts.len(), 1);
        assert!(texts[0].contains("12#"));
        call.handle_input(Input::Caller(CallerEvent::Dtmf { digit: '4' }), t0);
        call.handle_input(
            Input::Caller(CallerEvent::Dtmf { digit: '2' }),
            t0 + Duration::from_millis(500),
        );
        assert!(drain(&mut call).is_empty());
        let due = call.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_millis(2500));
        call.handle_input(Input::Tick, due);
        assert!(drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::ToModel(ModelOut::Text(t)) if t.contains("42"))));
    }

    #[test]
    fn resumption_handle_tracks_only_resumable_updates() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        call.handle_input(
            Input::Model(ModelEvent::SessionResumptionUpdate {
                new_handle: Some("h1".into()),
                resumable: true,
            }),
            t0,
        );
        call.handle_input(
            Input::Model(ModelEvent::SessionResumptionUpdate {
                new_handle: None,
                resumable: false,
            }),
            t0,
        );
        call.handle_input(
            Input::Model(ModelEvent::SessionResumptionUpdate {
                new_handle: Some("h2".into()),
                resumable: false,
            }),
            t0,
        );
        assert_eq!(call.resume_handle(), Some("h1"));
    }
}
