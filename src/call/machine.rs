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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::audio::transcode::{AudioError, Downlink, Uplink};
use crate::config::{Config, TransferDestination};
use crate::gemini::profile::{ModelProfile, NoteForm, ProactivityRule, ThinkingRule, ToolBehavior};
use crate::gemini::setup::{
    ActivityDetection, ContextCompression, FunctionDeclaration, SetupParams, Thinking,
};
use crate::gemini::wire::{
    FunctionCall, FunctionResponse, InteractionStatus, ModelEvent, Role, Scheduling, Turn,
    UsageMetadata,
};
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
    /// What the configured model does and accepts.
    pub profile: &'static ModelProfile,
    /// The `setup` the model session is opened with (tools included).
    pub setup: SetupParams,
    /// Call-control tools (`end_call`, `transfer_call`, `send_dtmf`) are NON_BLOCKING: the model
    /// keeps talking around the call, successes are answered `SILENT`.
    pub call_control_async: bool,
    /// Operator webhook tools: the scheduling their results carry (None: declared BLOCKING).
    pub webhook_scheduling: HashMap<String, Option<Scheduling>>,
    /// Text sent as a user turn right after `setupComplete` to make the agent speak first.
    pub greeting: Option<String>,
    /// Most audio queued ahead of real time at the caller's side.
    pub playout_lead: Duration,
    /// How far the lead may fall below `playout_lead` before it is topped up.
    pub playout_refill: Duration,
    /// A mark every this many frames of a turn.
    pub mark_interval_frames: u32,
    /// Caller audio kept (in frames) until the model session is ready.
    pub preconnect_frames: usize,
    /// Time allowed for Twilio's `start` after the upgrade.
    pub start_timeout: Duration,
    /// Longest wait for one write to the caller's socket (the driver ends a call whose peer
    /// stopped reading as [`CallEnd::CallerUnresponsive`]).
    pub caller_write_timeout: Duration,
    /// Time allowed from asking for a model connection to `setupComplete`.
    pub setup_timeout: Duration,
    /// Longest call.
    pub max_call: Duration,
    /// Idle time after the last key press before digits go to the model.
    pub dtmf_idle: Duration,
    /// Longest wait for the agent's last words to be heard after `end_call`,
    /// `transfer_call` or `send_dtmf`.
    pub end_call_grace: Duration,
    /// Named transfer destinations.
    pub transfer_destinations: BTreeMap<String, TransferDestination>,
    /// Free-form numbers the model may transfer to.
    pub transfer_allow: Option<regex::Regex>,
    /// Whether `send_dtmf` is declared.
    pub send_dtmf: bool,
    /// Operator webhook tools by name.
    pub webhook_tools: HashSet<String>,
    /// Caller silence after which the agent is asked to check in and wrap up.
    pub silence_timeout: Option<Duration>,
    /// After a wrap-up request, the call ends at the latest this much later.
    pub wrap_up_grace: Duration,
    /// After a barge-in, tell the model what the caller actually heard.
    pub tell_model_what_was_heard: bool,
    /// Reconnection attempts after a lost model connection.
    pub max_reconnects: u32,
    /// First reconnection backoff (doubles per attempt).
    pub reconnect_backoff: Duration,
    /// Play the filler when a recovery takes longer than this.
    pub filler_after: Option<Duration>,
    /// The filler, 8 kHz μ-law.
    pub filler: std::sync::Arc<[u8]>,
    /// Transcript characters kept for seeding a fresh session.
    pub history_chars: usize,
    /// Most model sessions per call.
    pub max_sessions: u32,
    /// goAway handover opens the new connection while the old one closes (its `setup` still
    /// waits for the old connection's close, see [`HANDOVER_DRAIN_MAX`]).
    pub handover_overlap: bool,
    /// No caller media for this long ends the stream.
    pub idle_stream: Duration,
    /// On shutdown, live calls continue this long before ending politely.
    pub shutdown_grace: Duration,
}

/// "One moment, please." — played while a lost model connection is recovered.
fn bundled_filler() -> std::sync::Arc<[u8]> {
    crate::audio::wav::read_wav(include_bytes!("../../assets/filler_one_moment.mulaw8k.wav"))
        .ok()
        .and_then(|w| w.to_ulaw())
        .unwrap_or_default()
        .into()
}

impl CallSettings {
    /// Derives the settings (and the tool declarations) from the configuration.
    pub fn from_config(cfg: &Config) -> CallSettings {
        let g = &cfg.gemini;
        let profile = cfg.model_profile().0;
        let control_behavior = profile.async_tool_behavior();
        let call_control_async = control_behavior == ToolBehavior::NonBlocking;
        let control = Some(control_behavior.as_str().to_string());
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
            behavior: control.clone(),
        }];
        let destinations: Vec<String> = cfg.transfer.destinations.keys().cloned().collect();
        let transfer_allow = (!cfg.transfer.allow_pattern.is_empty())
            .then(|| crate::config::TransferConfig::compile_allow(&cfg.transfer.allow_pattern).ok())
            .flatten();
        if !destinations.is_empty() || transfer_allow.is_some() {
            let listing = cfg
                .transfer
                .destinations
                .iter()
                .map(|(name, d)| format!("'{name}': {}", d.description))
                .collect::<Vec<_>>()
                .join("; ");
            let mut destination = json!({
                "type": "STRING",
                "description": "Name of the destination."
            });
            let mut description = format!(
                "Transfer the caller to a person or department. First tell the caller you are \
                 transferring them; the transfer happens once they have heard you. \
                 Destinations: {listing}."
            );
            if transfer_allow.is_some() {
                description
                    .push_str(" You may also pass a phone number in E.164 form (+15551234567).");
                destination["description"] =
                    json!("Name of the destination, or an E.164 phone number.");
            } else {
                destination["enum"] = json!(destinations);
            }
            tools.push(FunctionDeclaration {
                name: "transfer_call".into(),
                description,
                parameters: Some(json!({
                    "type": "OBJECT",
                    "properties": {"destination": destination},
                    "required": ["destination"]
                })),
                behavior: control.clone(),
            });
        }
        if cfg.tools.send_dtmf {
            tools.push(FunctionDeclaration {
                name: "send_dtmf".into(),
                description: "Press keys on the phone keypad, e.g. to navigate a phone menu. \
                    Digits 0-9, * and #; w inserts a half-second pause. The conversation \
                    continues after the keys are sent."
                    .into(),
                parameters: Some(json!({
                    "type": "OBJECT",
                    "properties": {"digits": {
                        "type": "STRING",
                        "description": "Keys to press, e.g. \"1\" or \"ww123#\"."
                    }},
                    "required": ["digits"]
                })),
                behavior: control.clone(),
            });
        }
        let mut webhook_scheduling = HashMap::new();
        let mut webhook_tools = crate::call::webhook_tools::declarations(&cfg.tools.webhooks);
        for (decl, w) in webhook_tools.iter_mut().zip(&cfg.tools.webhooks) {
            use crate::config::ToolScheduling as S;
            let (behavior, scheduling) = match (w.scheduling, control_behavior) {
                (S::Blocking, _) | (_, ToolBehavior::Blocking) => (ToolBehavior::Blocking, None),
                (S::WhenIdle, _) => (ToolBehavior::NonBlocking, Some(Scheduling::WhenIdle)),
                (S::Interrupt, _) => (ToolBehavior::NonBlocking, Some(Scheduling::Interrupt)),
                (S::Silent, _) => (ToolBehavior::NonBlocking, Some(Scheduling::Silent)),
            };
            decl.behavior = Some(behavior.as_str().to_string());
            webhook_scheduling.insert(w.name.clone(), scheduling);
        }
        tools.extend(webhook_tools);
        let sensitivity = |v: &str, kind: &str| match v {
            "low" => Some(format!("{kind}_SENSITIVITY_LOW")),
            "high" => Some(format!("{kind}_SENSITIVITY_HIGH")),
            _ => None,
        };
        let non_zero = |v: u32| (v > 0).then_some(v);
        let model = match g.backend {
            crate::config::Backend::Vertex if !g.model.starts_with("projects/") => format!(
                "projects/{}/locations/{}/publishers/google/models/{}",
                g.project,
                g.location,
                crate::gemini::profile::bare_id(&g.model)
            ),
            _ => g.model.clone(),
        };
        let setup = SetupParams {
            model,
            thinking: thinking_config(profile, g),
            affective_dialog: (g.affective_dialog && profile.affective_dialog).then_some(true),
            proactive_audio: (g.proactive_audio
                && profile.proactivity == ProactivityRule::Optional)
                .then_some(true),
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
            context_compression: g.context_compression.then(|| ContextCompression {
                trigger_tokens: (g.compression_trigger_tokens > 0)
                    .then_some(g.compression_trigger_tokens),
                target_tokens: (g.compression_target_tokens > 0)
                    .then_some(g.compression_target_tokens),
            }),
        };
        CallSettings {
            profile,
            setup,
            call_control_async,
            webhook_scheduling,
            greeting: g.greeting.then(|| g.greeting_instruction.clone()),
            playout_lead: Duration::from_millis(cfg.playout.lead_ms.into()),
            playout_refill: Duration::from_millis(cfg.playout.refill_ms.into()),
            mark_interval_frames: (cfg.playout.mark_interval_ms / 20).max(1),
            preconnect_frames: (cfg.limits.preconnect_buffer_ms / 20) as usize,
            start_timeout: Duration::from_millis(cfg.limits.start_timeout_ms),
            caller_write_timeout: Duration::from_millis(cfg.limits.caller_write_timeout_ms),
            setup_timeout: Duration::from_millis(
                cfg.gemini.connect_timeout_ms + cfg.gemini.setup_timeout_ms,
            ),
            max_call: Duration::from_secs(cfg.limits.max_call_secs),
            dtmf_idle: Duration::from_millis(cfg.limits.dtmf_idle_ms),
            end_call_grace: Duration::from_millis(cfg.limits.end_call_grace_ms),
            transfer_destinations: cfg.transfer.destinations.clone(),
            transfer_allow,
            send_dtmf: cfg.tools.send_dtmf,
            webhook_tools: cfg.tools.webhooks.iter().map(|w| w.name.clone()).collect(),
            silence_timeout: (cfg.limits.silence_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.limits.silence_timeout_secs)),
            wrap_up_grace: Duration::from_millis(cfg.limits.wrap_up_grace_ms),
            tell_model_what_was_heard: g.tell_model_what_was_heard,
            max_reconnects: cfg.session.max_reconnects,
            reconnect_backoff: Duration::from_millis(cfg.session.reconnect_backoff_ms),
            filler_after: (cfg.session.filler_after_ms > 0)
                .then(|| Duration::from_millis(cfg.session.filler_after_ms)),
            filler: bundled_filler(),
            history_chars: cfg.session.history_chars,
            max_sessions: cfg.session.max_sessions_per_call,
            handover_overlap: cfg.session.handover == "overlap",
            idle_stream: Duration::from_secs(cfg.limits.idle_stream_secs),
            shutdown_grace: Duration::from_secs(cfg.limits.shutdown_grace_secs),
        }
    }
}

/// `thinkingConfig` for the configured thinking mode, as the profile takes it (config
/// validation has refused the combinations the profile forbids).
fn thinking_config(profile: &ModelProfile, g: &crate::config::GeminiConfig) -> Option<Thinking> {
    use crate::config::ThinkingMode as M;
    match (profile.thinking, g.thinking) {
        (ThinkingRule::Forbidden, _) => None,
        // Dynamic thinking adds latency to every turn of a phone call: off unless asked for.
        (ThinkingRule::Budget, M::Auto | M::Off | M::Level) => Some(Thinking::Budget(0)),
        (ThinkingRule::Budget, M::Budget) => Some(Thinking::Budget(g.thinking_budget)),
        // 3.1 defaults to MINIMAL already.
        (ThinkingRule::Level, M::Auto | M::Budget) => None,
        (ThinkingRule::Level, M::Off) => Some(Thinking::Level("MINIMAL")),
        (ThinkingRule::Level, M::Level) => Some(Thinking::Level(g.thinking_level.as_wire())),
        (ThinkingRule::LevelRequired, _) => Some(Thinking::Level(g.thinking_level.as_wire())),
    }
}

/// What happened, as told to the machine by the driver.
#[derive(Debug)]
pub enum Input {
    /// A parsed message from Twilio.
    Caller(CallerEvent),
    /// The caller's socket ended (closed or failed) without `stop`.
    CallerClosed,
    /// A write to the caller's socket did not complete within `caller_write_timeout`: the
    /// peer stopped reading.
    CallerUnresponsive,
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
    /// The provider's API carried out (or failed) a transfer or DTMF action.
    ActionDone {
        /// The tool call id that asked for it.
        id: String,
        /// `Err` with a reason the model can be told.
        result: Result<(), String>,
    },
    /// An operator webhook tool finished.
    ToolDone {
        /// The tool call id.
        id: String,
        /// The webhook's JSON answer, or what went wrong (for the model).
        result: Result<serde_json::Value, String>,
    },
    /// A continued stream (after `send_dtmf`) took over this parked call.
    Resumed(StreamStart),
    /// The standby model socket (overlapping handover) is open.
    StandbyConnected,
    /// One event from the standby model socket.
    Standby(ModelEvent),
    /// The standby socket closed or could not be opened (e.g. the server refused a resume
    /// while the old socket is open).
    StandbyFailed(String),
    /// A timer fired (the driver slept until [`Call::poll_timeout`]).
    Tick,
    /// The bridge is shutting down.
    Shutdown,
    /// An operator acted on the call (dashboard or operator API).
    Operator(OperatorCommand),
}

/// What an operator can do to a live call.
#[derive(Debug, Clone, PartialEq)]
pub enum OperatorCommand {
    /// Hang up now (through the provider's API when configured, else by closing the stream).
    HangUp,
    /// Transfer now to a configured destination name, an E.164 number or a `sip:` URI; the
    /// outcome comes back as [`CallEvent::Operator`] with this `id`.
    Transfer {
        /// Request id (echoed in the outcome).
        id: String,
        /// Destination name or address.
        destination: String,
    },
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
    /// Close the current model WebSocket (close frame 1000, handshake completed in the
    /// background) and stop reading it; feed nothing back for it.
    CloseModel,
    /// goAway handover: send the current model WebSocket a close frame (1000 Normal) but keep
    /// reading it. Its last messages (sent before the server saw our close) come back as
    /// [`Input::Model`], the end of its close handshake as [`Input::ModelClosed`]. Nothing more
    /// may be sent on it. The machine stops waiting at its drain deadline with
    /// [`Output::CloseModel`].
    DrainModel,
    /// Open a second model WebSocket while the current one closes (overlapping handover);
    /// feed [`Input::StandbyConnected`] / [`Input::Standby`] / [`Input::StandbyFailed`].
    ConnectStandby,
    /// Send to the standby socket.
    ToStandby(ModelOut),
    /// Make the standby socket the model socket and close the old one.
    PromoteStandby,
    /// An effect on the call through the telephony provider's API.
    Control(CallAction),
    /// Something worth recording on the call's timeline.
    Event(CallEvent),
    /// This stream ended as expected after `send_dtmf`: keep the call and its model session
    /// for the continued stream that will present `token`.
    Park {
        /// The continuation token put in the new stream's TwiML.
        token: String,
    },
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
    /// Ordered turns (`clientContent`) that make the model answer (`turnComplete: true`).
    ClientContent(Vec<Turn>),
    /// Turns added as context only (`turnComplete: false`): the model does not answer.
    Context(Vec<Turn>),
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
    /// Replace the call's TwiML with a `<Dial>`; answer with [`Input::ActionDone`].
    Transfer {
        /// Tool call id.
        id: String,
        /// The Twilio call.
        call_sid: String,
        /// Destination name (configured) or the number itself.
        destination: String,
        /// E.164 number or SIP URI.
        target: String,
        /// Whether the configured destination has a whisper.
        whisper: bool,
    },
    /// Play digits into the call, then reconnect a fresh stream that presents `token`;
    /// answer with [`Input::ActionDone`].
    SendDtmf {
        /// Tool call id.
        id: String,
        /// The Twilio call.
        call_sid: String,
        /// Digits (`0-9*#w`).
        digits: String,
        /// Continuation token.
        token: String,
    },
    /// Run an operator webhook tool; answer with [`Input::ToolDone`].
    RunTool {
        /// Tool call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments.
        args: serde_json::Value,
    },
    /// Abort an operator webhook tool still running (the model cancelled it).
    CancelTool {
        /// Tool call id.
        id: String,
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
    /// The caller stayed silent through the wrap-up.
    SilenceTimeout,
    /// The call was transferred (`transfer_call`).
    Transferred,
    /// A continued stream never came back after `send_dtmf`.
    ContinuationLost,
    /// The bridge is shutting down.
    Shutdown,
    /// No media arrived from the caller leg for `limits.idle_stream_secs`.
    IdleStream,
    /// An operator hung up the call (dashboard or operator API).
    OperatorHungUp,
    /// The caller's socket stopped taking writes (`limits.caller_write_timeout_ms`).
    CallerUnresponsive,
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
            CallEnd::SilenceTimeout => "silence_timeout",
            CallEnd::Transferred => "transferred",
            CallEnd::ContinuationLost => "continuation_lost",
            CallEnd::Shutdown => "shutdown",
            CallEnd::IdleStream => "idle_stream",
            CallEnd::OperatorHungUp => "operator_hung_up",
            CallEnd::CallerUnresponsive => "caller_unresponsive",
        }
    }

    /// Whether the caller leg is still there to be closed (so Twilio runs the fallback verbs).
    pub fn caller_still_connected(&self) -> bool {
        !matches!(
            self,
            CallEnd::CallerHungUp
                | CallEnd::CallerDisconnected
                | CallEnd::Transferred
                | CallEnd::ContinuationLost
                | CallEnd::CallerUnresponsive
        )
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
        /// The caller's number (from the webhook's `<Parameter name="from">`), unredacted:
        /// observers redact it before keeping or logging it.
        from: Option<String>,
        /// The number called.
        to: Option<String>,
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
        /// From the caller's last voiced frame to this first frame of the reply, when the
        /// caller spoke since the previous agent turn began (the bridge's view of response
        /// time: the model's end-of-speech detection plus generation plus both bridge legs).
        response_ms: Option<u64>,
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
    /// The stream was replaced (after `send_dtmf`) and the same model session continues.
    Continued {
        /// The new stream.
        stream_sid: String,
    },
    /// The conversation moved to a new model connection.
    Reconnected {
        /// `go_away` (planned handover) or `fault` (recovery).
        reason: &'static str,
        /// Whether the session was resumed (else: a fresh one seeded with the transcript).
        resumed: bool,
        /// From the old connection's end to `setupComplete` on the new one.
        gap_ms: u64,
    },
    /// The agent was asked to wrap up the call.
    WrapUp {
        /// Why: `silence` or `max_duration`.
        reason: &'static str,
    },
    /// The model announced the end of its connection.
    GoAway {
        /// Time left, if given.
        time_left_ms: Option<u64>,
    },
    /// Token usage for a model turn.
    Usage(UsageMetadata),
    /// An operator request finished (`id` as given in [`OperatorCommand::Transfer`]).
    Operator {
        /// Request id.
        id: String,
        /// `transfer`.
        action: &'static str,
        /// Destination name or address as requested (not logged above debug).
        destination: String,
        /// `Err` with why it did not happen.
        result: Result<(), String>,
    },
    /// A model turn ended oddly (refused, malformed, or no audio after the caller spoke):
    /// the caller heard the filler and the model was asked to answer again.
    OddTurnEnd {
        /// `malformed_function_call`, `response_rejected`, `other_reason` or `empty_reply`.
        reason: &'static str,
    },
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
    /// The stream ended after `send_dtmf`; waiting for the continued stream.
    Parked,
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

/// A call action waiting for the agent's last words to be heard.
#[derive(Debug)]
enum AfterHeard {
    /// `end_call`: answered already; hang up once the goodbye is heard.
    HangUp,
    /// `transfer_call`: answered after the provider's API acted.
    Transfer {
        id: String,
        destination: String,
        target: String,
        whisper: bool,
    },
    /// `send_dtmf`: answered after the provider's API acted.
    Dtmf { id: String, digits: String },
    /// Close the stream (Twilio then runs the fallback verbs) once the agent's sentence is
    /// heard: a polite end at shutdown.
    CloseStream(CallEnd),
}

#[derive(Debug)]
struct PendingAction {
    action: AfterHeard,
    deadline: Instant,
    /// Wait for the model's `turnComplete` too (`end_call`: the goodbye may follow the answer).
    wait_turn_complete: bool,
    /// The model finished its turn since the action was armed.
    model_done: bool,
}

/// A call action handed to the driver, waiting for [`Input::ActionDone`] (or, after a
/// successful `send_dtmf`, for the old stream's `stop`).
#[derive(Debug)]
struct AwaitingAction {
    id: String,
    name: &'static str,
    /// For `send_dtmf`: the continuation token the next stream will present.
    token: Option<String>,
}

/// The agent was asked to wrap up.
#[derive(Debug)]
struct WrapUp {
    deadline: Instant,
    reason: CallEnd,
    /// The deadline was pushed back once because the model was still IN_PROGRESS.
    extended: bool,
}

/// A replacement model connection in progress.
#[derive(Debug)]
struct Reconnect {
    /// `go_away` or `fault`.
    reason: &'static str,
    /// Failed attempts so far.
    failures: u32,
    /// When to open the next connection (`None`: one is being opened now).
    next_try: Option<Instant>,
    /// When the old connection ended.
    since: Instant,
    /// Resume with the handle (else a fresh session seeded with the transcript).
    resume: bool,
    filler_played: bool,
}

/// Longest wait for the old connection's close handshake in a goAway handover. The drain
/// deadline is `min(time left / 2, HANDOVER_DRAIN_MAX)` from the handover: half of what the
/// goAway left, so it always ends well before the server cuts the connection (the handover
/// itself keeps a fifth of `timeLeft` in hand), and at most a second, so a peer that never
/// answers our close frame costs the caller at most that much extra silence. On a healthy
/// connection the close reply comes after one round trip.
pub const HANDOVER_DRAIN_MAX: Duration = Duration::from_secs(1);

/// A goAway handover closing the old connection: our close frame (1000) is out and the
/// connection is still read, so a `sessionResumptionUpdate` that crossed our close frame is
/// taken (Gemini keeps sending until it sees the close, and everything it sent before comes
/// ahead of its close reply). The next `setup` waits for the end of the handshake, or `until`.
#[derive(Debug)]
struct Closing {
    /// When the handover started (caller audio is held from here).
    since: Instant,
    /// The drain deadline.
    until: Instant,
}

/// The caller counts as mid-utterance for this long after the last voiced frame.
const QUIET_AFTER_VOICE: Duration = Duration::from_millis(600);

/// Mean square of a μ-law frame above which the caller counts as speaking (about -36 dBFS).
const VOICE_POWER: f64 = 500.0 * 500.0;

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
    action: Option<PendingAction>,
    awaiting: Option<AwaitingAction>,
    /// Operator webhook tools in flight: id → name.
    running_tools: HashMap<String, String>,
    /// After a successful transfer, the coming `stop` ends the call as transferred.
    transferred: bool,
    wrap_up: Option<WrapUp>,
    /// Last time the caller spoke or the agent's audio was playing.
    last_activity: Instant,
    /// Continuation tokens issued by this call.
    tokens_issued: u32,
    /// Last time the caller's audio carried voice.
    last_voice: Option<Instant>,
    /// When the latest agent turn's first frame went out.
    last_agent_start: Option<Instant>,
    /// The caller spoke and the model has not completed a reply since: a handover now would
    /// lose the reply being prepared.
    reply_due: bool,
    /// A goAway arrived: hand over before this deadline, at a quiet moment.
    go_away_deadline: Option<Instant>,
    /// A replacement model connection is being opened.
    reconnect: Option<Reconnect>,
    /// Overlapping handover in progress: since when (caller audio is held meanwhile).
    standby: Option<Instant>,
    /// The standby socket is open; its `setup` waits for the old connection's close.
    standby_ready: bool,
    /// goAway handover: the old connection is closing (and still read).
    closing: Option<Closing>,
    /// When the server will cut the current connection (goAway's `timeLeft` from its arrival).
    go_away_ends: Option<Instant>,
    /// Last media frame from the caller.
    last_media: Instant,
    /// The latest `now` seen (for timer hints in `poll_timeout`).
    last_now: Instant,
    /// The bridge is shutting down: end politely at this time.
    drain_at: Option<Instant>,
    /// Model sessions opened for this call.
    sessions_opened: u32,
    /// Tool call ids issued by the current model session.
    session_tools: HashSet<String>,
    /// Messages for the model held while no session is live.
    deferred: Vec<ModelOut>,
    /// Conversation so far (transcripts), to seed a fresh session.
    history: VecDeque<Turn>,
    history_len: usize,
    caller_text: String,
    agent_text: String,
    /// 24 kHz PCM bytes generated for the current turn.
    turn_generated: u64,

    dtmf: String,
    dtmf_deadline: Option<Instant>,

    resume_handle: Option<String>,
    /// Unknown model message kinds seen (each logged once at info).
    unknown_kinds: HashSet<String>,

    /// The model's current turn has started (audio, transcript or a tool call) and its
    /// `turnComplete` has not come yet.
    model_turn_open: bool,
    /// `interactionStatus: IN_PROGRESS` (background reasoning): a `turnComplete` does not
    /// mean the model is done.
    model_in_progress: bool,
    /// The current turn said `waitingForInput` (deliberate silence).
    waiting_for_input: bool,
    /// `turnCompleteReason` of the current turn, when the server gave one.
    turn_end_reason: Option<String>,
    /// The current model turn called a tool.
    turn_had_tool_call: bool,
    /// The caller spoke since the model's last audio.
    caller_spoke: bool,
    /// A retry was already asked for since the caller last spoke (no loops).
    retried: bool,
    /// Transcript of a reply the model connection died in the middle of: the next session
    /// is asked to finish it.
    cut_reply: Option<String>,
    /// A tool call arrived while no model turn was open: if nothing follows it within
    /// [`TOOL_TURN_QUIET`], the model's turn counts as over (a NON_BLOCKING model may call a
    /// tool after its turn ended, with no `turnComplete` to follow).
    tool_opened_turn: Option<Instant>,
    /// A cut reply was asked to be finished and no audio of it has come yet: if the caller's
    /// queue runs dry first, the filler bridges the gap (once).
    awaiting_continuation: bool,
}

/// After a cut reply's prompt, silence at the caller longer than this plays the filler.
const CONTINUATION_GAP: Duration = Duration::from_millis(600);

/// How long a turn opened only by a tool call may stay silent before it counts as over.
const TOOL_TURN_QUIET: Duration = Duration::from_millis(1_000);

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
            action: None,
            awaiting: None,
            running_tools: HashMap::new(),
            transferred: false,
            wrap_up: None,
            last_activity: now,
            tokens_issued: 0,
            last_voice: None,
            last_agent_start: None,
            reply_due: false,
            go_away_deadline: None,
            reconnect: None,
            standby: None,
            standby_ready: false,
            closing: None,
            go_away_ends: None,
            last_media: now,
            last_now: now,
            drain_at: None,
            sessions_opened: 0,
            session_tools: HashSet::new(),
            deferred: Vec::new(),
            history: VecDeque::new(),
            history_len: 0,
            caller_text: String::new(),
            agent_text: String::new(),
            turn_generated: 0,
            dtmf: String::new(),
            dtmf_deadline: None,
            resume_handle: None,
            unknown_kinds: HashSet::new(),
            model_turn_open: false,
            model_in_progress: false,
            waiting_for_input: false,
            turn_end_reason: None,
            turn_had_tool_call: false,
            caller_spoke: false,
            retried: false,
            cut_reply: None,
            tool_opened_turn: None,
            awaiting_continuation: false,
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

    /// Characters of transcript kept for seeding a fresh session (bounded by
    /// `session.history_chars`), and the number of buffered items that grow with a call:
    /// deferred model messages, pending marks, cleared marks. For footprint checks.
    pub fn footprint(&self) -> (usize, usize) {
        (
            self.history_len,
            self.deferred.len()
                + self.marks.len()
                + self.cleared_marks.len()
                + self.answered_tools.len(),
        )
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
            // While a reconnection waits for its backoff, the setup deadline is not armed.
            Phase::Connecting | Phase::SettingUp
                if self.reconnect.as_ref().is_none_or(|r| r.next_try.is_none()) =>
            {
                consider(
                    self.connect_requested
                        .map(|c| c + self.settings.setup_timeout),
                )
            }
            _ => {}
        }
        if self.wrap_up.is_none() {
            consider(Some(self.created + self.settings.max_call));
        }
        consider(self.dtmf_deadline);
        consider(self.action.as_ref().map(|h| h.deadline));
        if self.action.is_some() && !self.model_in_progress {
            consider(self.tool_opened_turn.map(|t| t + TOOL_TURN_QUIET));
        }
        consider(self.wrap_up.as_ref().map(|w| w.deadline));
        // The goAway handover is acted on only while the session is live (`check_session`).
        let live = self.phase == Phase::Live;
        consider(self.go_away_deadline.filter(|_| live));
        consider(self.drain_at);
        if self.start.is_some() && self.phase != Phase::Parked {
            consider(Some(self.last_media + self.settings.idle_stream));
        }
        consider(self.standby.map(|s| s + self.settings.setup_timeout));
        consider(self.closing.as_ref().map(|c| c.until));
        // Hints (not deadlines the timers act on): only times still ahead, else the driver
        // would wake for nothing in a loop.
        let ahead = |d: Option<Instant>| d.filter(|d| *d > self.last_now);
        if live && self.go_away_deadline.is_some() {
            // Re-check for a quiet moment as playback drains and the caller falls silent.
            consider(ahead(self.queued_until));
            consider(ahead(self.last_voice.map(|v| v + QUIET_AFTER_VOICE)));
        }
        if self.awaiting_continuation
            && self.settings.filler_after.is_some()
            && self.pending.is_empty()
        {
            consider(ahead(self.queued_until.map(|q| q + CONTINUATION_GAP)));
        }
        if let Some(r) = &self.reconnect {
            consider(r.next_try);
            if let (Some(after), false) = (self.settings.filler_after, r.filler_played) {
                consider(Some(r.since + after));
            }
        }
        if self.phase == Phase::Live
            && self.wrap_up.is_none()
            && self.action.is_none()
            && self.awaiting.is_none()
        {
            if let Some(t) = self.settings.silence_timeout {
                let busy_until = self.queued_until.unwrap_or(self.last_activity);
                consider(ahead(Some(self.last_activity.max(busy_until) + t)));
            }
        }
        if self.pending.len() >= FRAME_BYTES || self.final_mark_due() {
            // Wake when the lead has fallen to the refill point.
            let due = match self.queued_until {
                Some(q) => q.checked_sub(self.refill_point()).unwrap_or(self.created),
                None => self.created,
            };
            consider(Some(due));
        }
        t
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.phase == Phase::Ended {
            return;
        }
        match input {
            Input::Caller(ev) => self.on_caller(ev, now),
            Input::CallerClosed => self.end(CallEnd::CallerDisconnected),
            Input::CallerUnresponsive => self.end(CallEnd::CallerUnresponsive),
            Input::ModelConnected => {
                if self.phase == Phase::Connecting {
                    let mut setup = self.settings.setup.clone();
                    let resume = self.reconnect.as_ref().is_none_or(|r| r.resume);
                    setup.resume_handle = if resume {
                        self.resume_handle.clone()
                    } else {
                        None
                    };
                    self.session_tools.clear();
                    self.phase = Phase::SettingUp;
                    self.outputs
                        .push_back(Output::ToModel(ModelOut::Setup(Box::new(setup))));
                }
            }
            Input::ModelConnectFailed(why) => {
                if self.reconnect.is_some() {
                    self.reconnect_failed(now, &format!("connect failed: {why}"), false);
                } else {
                    self.end(CallEnd::ModelUnavailable(format!("connect failed: {why}")))
                }
            }
            Input::Model(ev) => self.on_model(ev, now),
            Input::ModelClosed { code, reason } => {
                let why = format!("model closed the connection: code {code} {reason:?}");
                // A goAway announced the end of this connection; it has ended, so its
                // handover deadline is void (a recovery, if any, is the handover now).
                self.go_away_deadline = None;
                self.go_away_ends = None;
                if self.closing.is_some() {
                    // The handover's close handshake is complete (1000 echoed), or the old
                    // connection ended otherwise: every handle it sent has been seen.
                    tracing::debug!(code, "old model connection closed (handover)");
                    self.finish_closing(now);
                } else if self.reconnect.is_some() {
                    // The replacement failed before setupComplete; 1007/1008 on a resume
                    // means the handle was refused.
                    self.reconnect_failed(now, &why, matches!(code, 1007 | 1008));
                } else if self.phase == Phase::Live && self.standby.is_some() {
                    // The old connection ended during an overlapping handover: the standby
                    // will take over (or fail into a reconnect).
                    tracing::info!(code, "old model connection ended during the handover");
                } else if self.phase == Phase::Live && self.settings.max_reconnects > 0 {
                    tracing::warn!(code, reason = %reason, "model connection lost; recovering");
                    self.start_reconnect(now, "fault", true);
                } else if self.phase == Phase::Live {
                    self.end(CallEnd::ModelLost(why));
                } else if self.phase != Phase::Parked {
                    self.end(CallEnd::ModelUnavailable(why));
                } else {
                    self.end(CallEnd::ModelLost(why));
                }
            }
            Input::ActionDone { id, result } => self.on_action_done(id, result),
            Input::Operator(cmd) => self.on_operator(cmd),
            Input::ToolDone { id, result } => {
                if let Some(name) = self.running_tools.remove(&id) {
                    self.respond(id, name, result);
                } else {
                    tracing::debug!(id, "result of a cancelled tool call dropped");
                }
            }
            Input::Resumed(start) => self.on_resumed(start, now),
            Input::StandbyConnected => {
                if self.standby.is_some() {
                    if self.closing.is_some() {
                        // Connected in parallel; the setup waits for the newest handle.
                        self.standby_ready = true;
                    } else {
                        self.send_standby_setup();
                    }
                }
            }
            Input::Standby(ModelEvent::SetupComplete) => {
                if let Some(since) = self.standby.take() {
                    self.outputs.push_back(Output::PromoteStandby);
                    // A goAway from the old connection meanwhile is void on the new one.
                    self.go_away_deadline = None;
                    self.session_tools.clear();
                    let gap_ms = now.saturating_duration_since(since).as_millis() as u64;
                    tracing::info!(
                        gap_ms,
                        "model session continued on a new connection (overlap)"
                    );
                    self.outputs
                        .push_back(Output::Event(CallEvent::Reconnected {
                            reason: "go_away",
                            resumed: true,
                            gap_ms,
                        }));
                    self.flush_preconnect();
                    for m in std::mem::take(&mut self.deferred) {
                        self.outputs.push_back(Output::ToModel(m));
                    }
                    if !self.dtmf.is_empty() && self.dtmf_deadline.is_none() {
                        self.flush_dtmf();
                    }
                }
            }
            Input::Standby(ModelEvent::SessionResumptionUpdate {
                new_handle,
                resumable,
            }) => {
                if resumable {
                    if let Some(h) = new_handle.filter(|h| !h.is_empty()) {
                        self.resume_handle = Some(h);
                    }
                }
            }
            Input::Standby(ev) => {
                tracing::debug!(?ev, "standby event before setupComplete ignored")
            }
            Input::StandbyFailed(why) => {
                if self.standby.take().is_some() {
                    self.standby_ready = false;
                    tracing::warn!(
                        why,
                        "standby model connection failed; resuming on a new connection"
                    );
                    // The old connection is already closing (or closed): once its close is
                    // complete the conversation resumes close-first.
                    if self.closing.is_none() && self.phase == Phase::Live {
                        self.start_reconnect(now, "go_away", true);
                    }
                }
            }
            Input::Tick => {}
            Input::Shutdown => {
                if self.phase == Phase::Live && !self.settings.shutdown_grace.is_zero() {
                    self.drain_at = Some(now + self.settings.shutdown_grace);
                } else {
                    self.end(CallEnd::Shutdown);
                }
            }
        }
        if !matches!(self.phase, Phase::Ended | Phase::Parked) {
            self.check_timers(now);
        }
        if !matches!(self.phase, Phase::Ended | Phase::Parked) {
            self.pump(now);
            self.check_action(now);
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
                    from: start.custom_parameters.get("from").cloned(),
                    to: start.custom_parameters.get("to").cloned(),
                }));
                self.start = Some(start);
                self.open_session(now);
            }
            CallerEvent::Media(frame) => match self.phase {
                _ if {
                    self.last_media = now;
                    false
                } => {}
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
                Phase::Live if self.standby.is_some() || self.closing.is_some() => {
                    // Handover: hold caller audio for the new session.
                    self.note_caller_voice(&frame.payload, now);
                    let cap = self.settings.preconnect_frames.max(1) * FRAME_BYTES;
                    for &b in &frame.payload {
                        if self.preconnect.len() >= cap {
                            self.preconnect.pop_front();
                            self.preconnect_dropped += 1;
                        }
                        self.preconnect.push_back(b);
                    }
                }
                Phase::Live => {
                    self.note_caller_voice(&frame.payload, now);
                    self.uplink_out.clear();
                    self.uplink.process(&frame.payload, &mut self.uplink_out);
                    if !self.uplink_out.is_empty() {
                        self.outputs
                            .push_back(Output::ToModel(ModelOut::Audio(self.uplink_out.clone())));
                    }
                }
                Phase::Parked | Phase::Ended => {}
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
            CallerEvent::Stop => {
                if let Some(token) = self.awaiting_continuation() {
                    self.phase = Phase::Parked;
                    self.outputs.push_back(Output::Park { token });
                } else if self.transferred {
                    self.end(CallEnd::Transferred);
                } else {
                    self.end(CallEnd::CallerHungUp);
                }
            }
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
                if let Some(r) = self.reconnect.take() {
                    let gap_ms = now.saturating_duration_since(r.since).as_millis() as u64;
                    tracing::info!(
                        reason = r.reason,
                        resumed = r.resume,
                        gap_ms,
                        "model session continued on a new connection"
                    );
                    self.outputs
                        .push_back(Output::Event(CallEvent::Reconnected {
                            reason: r.reason,
                            resumed: r.resume,
                            gap_ms,
                        }));
                    let cut = self.cut_reply.take();
                    self.awaiting_continuation = cut.is_some();
                    if !r.resume {
                        let mut turns: Vec<Turn> = self.history.iter().cloned().collect();
                        let prompted =
                            cut.is_some() || self.settings.profile.notes == NoteForm::RealtimeText;
                        let text = match &cut {
                            Some(heard) => crate::call::prompts::finish_cut_reply(heard),
                            None if prompted => {
                                crate::call::prompts::FRESH_SESSION_PROMPTED.to_string()
                            }
                            None => crate::call::prompts::FRESH_SESSION.to_string(),
                        };
                        turns.push(Turn {
                            role: Role::User,
                            text,
                        });
                        // Context without an answer only where the model keeps answering
                        // audio after it (3.x); otherwise (2.5, or a reply to finish) the
                        // history ends with a turn the model answers.
                        self.outputs.push_back(Output::ToModel(if prompted {
                            ModelOut::ClientContent(turns)
                        } else {
                            ModelOut::Context(turns)
                        }));
                    } else if let Some(heard) = cut {
                        self.outputs
                            .push_back(Output::ToModel(ModelOut::ClientContent(vec![Turn {
                                role: Role::User,
                                text: crate::call::prompts::finish_cut_reply(&heard),
                            }])));
                    }
                    self.flush_preconnect();
                    for m in std::mem::take(&mut self.deferred) {
                        self.outputs.push_back(Output::ToModel(m));
                    }
                    // Key presses held while no session was live.
                    if !self.dtmf.is_empty() && self.dtmf_deadline.is_none() {
                        self.flush_dtmf();
                    }
                    return;
                }
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
                self.model_turn_open = true;
                self.tool_opened_turn = None;
                self.caller_spoke = false;
                self.awaiting_continuation = false;
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
                self.turn_generated += pcm.len() as u64;
                self.downlink_out.clear();
                self.downlink.process(&pcm, &mut self.downlink_out);
                self.pending.extend(self.downlink_out.iter().copied());
                self.pushed += self.downlink_out.len() as u64;
            }
            ModelEvent::Text(_) => {}
            ModelEvent::InputTranscription(t) => {
                self.last_activity = now;
                self.caller_text.push_str(&t);
                self.outputs
                    .push_back(Output::Event(CallEvent::CallerTranscript(t)));
            }
            ModelEvent::OutputTranscription(t) => {
                if !self.discarding {
                    self.model_turn_open = true;
                    self.agent_text.push_str(&t);
                    self.outputs
                        .push_back(Output::Event(CallEvent::AgentTranscript(t)));
                }
            }
            ModelEvent::Interrupted => self.on_interrupted(now),
            ModelEvent::GenerationComplete => {
                self.finish_generation();
                self.reply_due = false;
            }
            ModelEvent::TurnComplete => {
                self.finish_generation();
                let odd = (!self.discarding).then(|| self.odd_turn_end()).flatten();
                if !self.discarding {
                    let agent = std::mem::take(&mut self.agent_text);
                    self.remember_turn(agent);
                }
                self.turn_generated = 0;
                self.discarding = false;
                self.model_turn_open = false;
                self.tool_opened_turn = None;
                self.turn_had_tool_call = false;
                self.turn_end_reason = None;
                self.waiting_for_input = false;
                // With background reasoning (interactionStatus IN_PROGRESS) the model is not
                // done at turnComplete: a call action waits for the turn that ends IDLE.
                if !self.model_in_progress {
                    if let Some(h) = self.action.as_mut() {
                        h.model_done = true;
                    }
                }
                if let Some(reason) = odd {
                    self.recover_odd_turn(reason);
                }
            }
            ModelEvent::Usage(u) => self.outputs.push_back(Output::Event(CallEvent::Usage(u))),
            ModelEvent::TurnCompleteReason(reason) => {
                tracing::info!(
                    reason = %reason.escape_debug(),
                    "model turn ended with a reason"
                );
                self.turn_end_reason = Some(reason);
            }
            ModelEvent::InteractionStatus(status) => {
                self.model_in_progress = match status {
                    InteractionStatus::InProgress => true,
                    InteractionStatus::Idle => false,
                    InteractionStatus::Other(v) => {
                        if self.unknown_kinds.insert(format!("interactionStatus={v}")) {
                            tracing::warn!(
                                value = %v.escape_debug(),
                                "unknown interactionStatus from the model; treated as idle"
                            );
                        }
                        false
                    }
                };
            }
            ModelEvent::WaitingForInput => self.waiting_for_input = true,
            ModelEvent::ToolCall(calls) => {
                for call in calls {
                    self.on_tool_call(call, now);
                }
            }
            ModelEvent::ToolCallCancellation(ids) => {
                for id in ids {
                    self.on_tool_cancelled(id);
                }
            }
            ModelEvent::GoAway { time_left } => {
                if self.closing.is_some() || self.standby.is_some() {
                    tracing::debug!("goAway from the connection being replaced ignored");
                    return;
                }
                let left = time_left.unwrap_or(Duration::from_secs(30));
                self.go_away_ends = now
                    .checked_add(left)
                    .or_else(|| now.checked_add(Duration::from_secs(3_600)));
                // Switch at a quiet moment, and in any case before the end: keep a fifth of
                // the time left in hand (0.5 s to 5 s; ~5 s of the usual 50-60 s).
                let margin = (left / 5)
                    .clamp(Duration::from_millis(500), Duration::from_secs(5))
                    .min(left);
                // A nonsensical timeLeft (beyond what an Instant can hold) is capped.
                self.go_away_deadline = now
                    .checked_add(left.saturating_sub(margin))
                    .or_else(|| now.checked_add(Duration::from_secs(3_600)));
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
        self.session_tools.insert(call.id.clone());
        // BLOCKING models always go on after the answer; only a NON_BLOCKING one may have
        // nothing more to say.
        if !self.model_turn_open && self.settings.call_control_async {
            self.tool_opened_turn = Some(now);
        }
        self.model_turn_open = true;
        self.turn_had_tool_call = true;
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
        let busy = self.action.is_some() || self.awaiting.is_some();
        let arg = |k: &str| {
            call.args
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let transfers = !self.settings.transfer_destinations.is_empty()
            || self.settings.transfer_allow.is_some();
        match call.name.as_str() {
            "end_call" => {
                if self.awaiting.is_some() {
                    let e = "a transfer or key press is in progress; the call cannot be ended now";
                    return self.respond(call.id, call.name, Err(e.into()));
                }
                self.action = Some(PendingAction {
                    action: AfterHeard::HangUp,
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete: true,
                    model_done: self.model_already_done(),
                });
                let ok = json!({"result": "ok", "note": "The call ends once the caller has heard your goodbye."});
                self.respond(call.id, call.name, Ok(ok));
            }
            "transfer_call" if transfers => {
                if busy {
                    let e = "another call action is in progress";
                    return self.respond(call.id, call.name, Err(e.into()));
                }
                let dest = arg("destination");
                let target = match self.settings.transfer_destinations.get(&dest) {
                    Some(d) => Some((d.target.clone(), !d.whisper.is_empty())),
                    None => self
                        .settings
                        .transfer_allow
                        .as_ref()
                        .filter(|re| crate::config::is_e164(&dest) && re.is_match(&dest))
                        .map(|_| (dest.clone(), false)),
                };
                let Some((target, whisper)) = target else {
                    let names: Vec<&str> = self
                        .settings
                        .transfer_destinations
                        .keys()
                        .map(String::as_str)
                        .collect();
                    let e =
                        format!(
                        "cannot transfer to {dest:?}: not a configured destination or an allowed \
                         number; destinations: {}",
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    );
                    return self.respond(call.id, call.name, Err(e));
                };
                // BLOCKING: the hand-off sentence came before the call (the model now waits
                // for the answer), so play it out first. NON_BLOCKING: the model keeps talking
                // around the call; act once its turn is over and heard.
                let wait_turn_complete = self.settings.call_control_async;
                if !wait_turn_complete {
                    self.finish_generation();
                }
                self.action = Some(PendingAction {
                    action: AfterHeard::Transfer {
                        id: call.id,
                        destination: dest,
                        target,
                        whisper,
                    },
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete,
                    model_done: self.model_already_done(),
                });
            }
            "send_dtmf" if self.settings.send_dtmf => {
                if busy {
                    let e = "another call action is in progress";
                    return self.respond(call.id, call.name, Err(e.into()));
                }
                let digits = arg("digits");
                let valid = !digits.is_empty()
                    && digits.len() <= 32
                    && digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'w' | 'W'));
                if !valid {
                    let e = format!(
                        "invalid digits {digits:?}: use 0-9, *, # and w (pause), at most 32"
                    );
                    return self.respond(call.id, call.name, Err(e));
                }
                let wait_turn_complete = self.settings.call_control_async;
                if !wait_turn_complete {
                    self.finish_generation();
                }
                self.action = Some(PendingAction {
                    action: AfterHeard::Dtmf {
                        id: call.id,
                        digits: digits.to_ascii_lowercase(),
                    },
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete,
                    model_done: self.model_already_done(),
                });
            }
            name if self.settings.webhook_tools.contains(name) => {
                self.running_tools
                    .insert(call.id.clone(), call.name.clone());
                self.outputs.push_back(Output::Control(CallAction::RunTool {
                    id: call.id,
                    name: call.name,
                    args: call.args,
                }));
            }
            other => {
                tracing::warn!(
                    name = %crate::redact::bounded(other, 64),
                    "model called a tool that was never declared; answered with an error"
                );
                let e = format!("unknown tool {other:?}; no such function is available");
                self.respond(call.id, call.name, Err(e));
            }
        }
    }

    /// Sends the one response for a tool call id, with the scheduling its call needs.
    fn respond(&mut self, id: String, name: String, result: Result<serde_json::Value, String>) {
        let scheduling = self.scheduling_for(&name, result.is_ok());
        self.respond_with(id, name, result, scheduling);
    }

    /// `scheduling` for a response (None: the call was BLOCKING).
    /// - call control on NON_BLOCKING models: `SILENT` on success (the goodbye or hand-off was
    ///   said around the call; a second turn about the result would keep the caller on the
    ///   line), `WHEN_IDLE` on failure (the model must tell the caller);
    /// - operator webhook tools: as configured (`tools.webhooks[].scheduling`);
    /// - undeclared tools: the model's default behaviour (`WHEN_IDLE` where NON_BLOCKING).
    fn scheduling_for(&self, name: &str, ok: bool) -> Option<Scheduling> {
        match name {
            "end_call" | "transfer_call" | "send_dtmf" => {
                self.settings.call_control_async.then_some(if ok {
                    Scheduling::Silent
                } else {
                    Scheduling::WhenIdle
                })
            }
            _ => match self.settings.webhook_scheduling.get(name) {
                Some(s) => *s,
                None => (self.settings.profile.default_tool_behavior == ToolBehavior::NonBlocking)
                    .then_some(Scheduling::WhenIdle),
            },
        }
    }

    /// Whether the model's turn is already over when a NON_BLOCKING call action is armed (it
    /// called the tool after its turn ended). A BLOCKING model always goes on after the answer.
    fn model_already_done(&self) -> bool {
        self.settings.call_control_async && !self.model_turn_open && !self.model_in_progress
    }

    fn respond_with(
        &mut self,
        id: String,
        name: String,
        result: Result<serde_json::Value, String>,
        scheduling: Option<Scheduling>,
    ) {
        let ok = result.is_ok();
        let body = match result {
            Ok(v) => json!({ "output": v }),
            Err(e) => json!({ "error": e }),
        };
        // A handover is under way: the id belongs to the session being replaced, and the
        // next one resumes from a handle issued before the call (handles are not resumable
        // while tools run), so it would not know the id.
        let replacing =
            self.closing.is_some() || self.standby.is_some() || self.reconnect.is_some();
        if !self.session_tools.contains(&id) || replacing {
            // Issued by an earlier model session (before a handover): the new session does
            // not know the id, so the result goes in as context instead of being dropped.
            let note = format!("[Result of your earlier {name} call: {body}]");
            let note = self.note(note);
            self.send_to_model(note);
            self.outputs
                .push_back(Output::Event(CallEvent::ToolResult { id, name, ok }));
            return;
        }
        if !self.model_writable() {
            self.deferred
                .push(ModelOut::ToolResponse(vec![FunctionResponse {
                    id: id.clone(),
                    name: name.clone(),
                    response: body,
                    scheduling,
                }]));
            self.outputs
                .push_back(Output::Event(CallEvent::ToolResult { id, name, ok }));
            return;
        }
        self.outputs
            .push_back(Output::ToModel(ModelOut::ToolResponse(vec![
                FunctionResponse {
                    id: id.clone(),
                    name: name.clone(),
                    response: body,
                    scheduling,
                },
            ])));
        self.outputs
            .push_back(Output::Event(CallEvent::ToolResult { id, name, ok }));
    }

    /// A response the model need not speak about (`SILENT` where NON_BLOCKING): the caller is
    /// talking and the model answers them anyway.
    fn respond_silently(
        &mut self,
        id: String,
        name: String,
        result: Result<serde_json::Value, String>,
    ) {
        let scheduling = self.scheduling_for(&name, true);
        self.respond_with(id, name, result, scheduling);
    }

    /// Context the model must keep but not answer at once, in the form its profile accepts
    /// (`gemini::profile::NoteForm`).
    fn note(&self, text: String) -> ModelOut {
        match self.settings.profile.notes {
            NoteForm::IncompleteClientContent => ModelOut::Context(vec![Turn {
                role: Role::User,
                text,
            }]),
            NoteForm::RealtimeText => ModelOut::Text(text),
        }
    }

    /// Why the turn that just completed was odd, if it was: a refusal or malformed call, or
    /// no audio at all although the caller spoke (and the model did not say it was waiting).
    fn odd_turn_end(&self) -> Option<&'static str> {
        if self.waiting_for_input || self.model_in_progress {
            return None;
        }
        if let Some(r) = self.turn_end_reason.as_deref() {
            return match r {
                "NEED_MORE_INPUT" => None,
                "MALFORMED_FUNCTION_CALL" => Some("malformed_function_call"),
                "RESPONSE_REJECTED" => Some("response_rejected"),
                _ => Some("other_reason"),
            };
        }
        let empty = self.turn_generated == 0
            && self.caller_spoke
            && !self.turn_had_tool_call
            && self.action.is_none()
            && self.awaiting.is_none();
        empty.then_some("empty_reply")
    }

    /// An odd turn end: the caller hears the filler at once (no dead air) and the model is
    /// asked to answer again — once per caller utterance.
    fn recover_odd_turn(&mut self, reason: &'static str) {
        tracing::warn!(reason, "model turn ended without a usable reply; retrying");
        self.outputs
            .push_back(Output::Event(CallEvent::OddTurnEnd { reason }));
        if self.retried || !self.model_writable() {
            return;
        }
        self.retried = true;
        if self.pending.is_empty() && self.turns.is_empty() {
            let filler = self.settings.filler.clone();
            self.enqueue_ulaw_turn(&filler);
        }
        self.outputs.push_back(Output::ToModel(ModelOut::Text(
            crate::call::prompts::RETRY_REPLY.into(),
        )));
    }

    /// The model withdrew a tool call: no response is sent for it.
    fn on_tool_cancelled(&mut self, id: String) {
        if self.running_tools.remove(&id).is_some() {
            tracing::info!(id, "tool call cancelled by the model; request aborted");
            self.outputs
                .push_back(Output::Control(CallAction::CancelTool { id }));
            return;
        }
        let pending = self.action.as_ref().is_some_and(|a| match &a.action {
            AfterHeard::Transfer { id: x, .. } | AfterHeard::Dtmf { id: x, .. } => *x == id,
            AfterHeard::HangUp | AfterHeard::CloseStream(_) => false,
        });
        if pending {
            tracing::info!(id, "call action cancelled by the model before it ran");
            self.action = None;
        } else {
            tracing::debug!(id, "cancellation for a tool call already answered");
        }
    }

    /// The caller cut the agent off before a call action ran: do not act on it. The hand-off
    /// sentence (or goodbye) was not heard to its end, so the caller never confirmed it.
    fn withdraw_action_on_barge_in(&mut self, now: Instant) {
        match self.action.take().map(|a| a.action) {
            Some(AfterHeard::Transfer { id, .. }) => self.respond_silently(
                id,
                "transfer_call".into(),
                Err(
                    "not transferred: the caller interrupted before hearing the hand-off. Ask \
                     whether they still want to be transferred and call transfer_call again if so."
                        .into(),
                ),
            ),
            Some(AfterHeard::Dtmf { id, .. }) => self.respond_silently(
                id,
                "send_dtmf".into(),
                Err(
                    "keys not sent: the caller interrupted. Call send_dtmf again if still needed."
                        .into(),
                ),
            ),
            Some(AfterHeard::CloseStream(why)) => {
                // Shutting down regardless; wait for the agent's next sentence instead.
                self.action = Some(PendingAction {
                    action: AfterHeard::CloseStream(why),
                    deadline: now + self.settings.end_call_grace,
                    wait_turn_complete: false,
                    model_done: false,
                });
            }
            Some(AfterHeard::HangUp) => {
                self.send_to_model(ModelOut::Text(
                    "[The caller interrupted your goodbye, so the call is still connected. If they \
                     need more help, help them; otherwise say goodbye and call end_call again.]"
                        .into(),
                ));
            }
            None => {}
        }
    }

    /// An operator acts on the call: hang-up is immediate; a transfer goes to the provider
    /// at once (the operator chose the moment), cancelling any action the agent had armed.
    fn on_operator(&mut self, cmd: OperatorCommand) {
        if self.phase == Phase::Ended {
            if let OperatorCommand::Transfer { id, destination } = cmd {
                self.operator_result(id, destination, Err("the call has ended".into()));
            }
            return;
        }
        match cmd {
            OperatorCommand::HangUp => {
                tracing::info!("operator hung up the call");
                self.hang_up(CallEnd::OperatorHungUp);
            }
            OperatorCommand::Transfer { id, destination } => {
                let Some(call_sid) = self.start.as_ref().map(|s| s.call_sid.clone()) else {
                    let e = "the call's stream has not started".to_string();
                    return self.operator_result(id, destination, Err(e));
                };
                if self.phase == Phase::Parked || self.awaiting.is_some() {
                    let e = "another call action is in progress".to_string();
                    return self.operator_result(id, destination, Err(e));
                }
                let target = match self.settings.transfer_destinations.get(&destination) {
                    Some(d) => Some((d.target.clone(), !d.whisper.is_empty())),
                    None if crate::config::is_e164(&destination)
                        || destination.starts_with("sip:") =>
                    {
                        Some((destination.clone(), false))
                    }
                    None => None,
                };
                let Some((target, whisper)) = target else {
                    let e = "not a configured destination, an E.164 number or a sip: URI";
                    return self.operator_result(id, destination, Err(e.into()));
                };
                tracing::info!("operator transfer requested");
                self.action = None;
                self.awaiting = Some(AwaitingAction {
                    id: id.clone(),
                    name: "operator_transfer",
                    token: None,
                });
                self.outputs
                    .push_back(Output::Control(CallAction::Transfer {
                        id,
                        call_sid,
                        destination,
                        target,
                        whisper,
                    }));
            }
        }
    }

    fn operator_result(&mut self, id: String, destination: String, result: Result<(), String>) {
        self.outputs.push_back(Output::Event(CallEvent::Operator {
            id,
            action: "transfer",
            destination,
            result,
        }));
    }

    fn on_action_done(&mut self, id: String, result: Result<(), String>) {
        let Some(awaiting) = self.awaiting.take_if(|a| a.id == id) else {
            tracing::debug!(id, "result for an action no longer awaited");
            return;
        };
        if awaiting.name == "operator_transfer" {
            if result.is_ok() {
                self.transferred = true;
            }
            return self.operator_result(id, String::new(), result);
        }
        match (awaiting.name, result) {
            ("transfer_call", Ok(())) => {
                self.transferred = true;
                let ok = json!({"result": "transferring"});
                self.respond(id, "transfer_call".into(), Ok(ok));
            }
            ("send_dtmf", Ok(())) => {
                // The stream is being replaced; the model session stays. Keep the token
                // until the old stream's `stop` parks the call.
                self.awaiting = Some(AwaitingAction {
                    id: String::new(),
                    name: "continuation",
                    token: awaiting.token,
                });
                let ok = json!({"result": "keys sent; the line stays connected"});
                self.respond(id, "send_dtmf".into(), Ok(ok));
            }
            (name, Err(e)) => {
                let e = format!("the phone system refused: {e}. Tell the caller it did not work.");
                self.respond(id, name.into(), Err(e));
            }
            (name, Ok(())) => tracing::debug!(name, "unexpected action result"),
        }
    }

    fn awaiting_continuation(&self) -> Option<String> {
        self.awaiting.as_ref().and_then(|a| a.token.clone())
    }

    /// A continued stream took over after `send_dtmf`: same model session, new Twilio stream.
    fn on_resumed(&mut self, start: StreamStart, now: Instant) {
        if self.phase != Phase::Parked {
            tracing::warn!("continued stream for a call that is not parked");
            return;
        }
        self.awaiting = None;
        self.outputs.push_back(Output::Event(CallEvent::Continued {
            stream_sid: start.stream_sid.clone(),
        }));
        self.start = Some(start);
        self.phase = Phase::Live;
        // Nothing is queued at the new stream, and marks of the old one never come back.
        self.queued_until = None;
        self.marks.clear();
        self.cleared_marks.clear();
        self.uplink.reset();
        self.last_activity = now;
    }

    fn note_caller_voice(&mut self, ulaw: &[u8], now: Instant) {
        if ulaw.is_empty() {
            return;
        }
        let power = ulaw
            .iter()
            .map(|&b| {
                let v = f64::from(crate::audio::g711::ulaw_decode(b));
                v * v
            })
            .sum::<f64>()
            / ulaw.len() as f64;
        if power > VOICE_POWER {
            self.last_activity = now;
            self.last_voice = Some(now);
            self.reply_due = true;
            self.caller_spoke = true;
            self.retried = false;
            if self
                .wrap_up
                .as_ref()
                .is_some_and(|w| w.reason == CallEnd::SilenceTimeout)
            {
                tracing::info!("caller spoke again; silence wrap-up withdrawn");
                self.wrap_up = None;
            }
        }
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
        // The caller spoke over it: there is nothing left to finish.
        self.awaiting_continuation = false;
        self.cut_reply = None;
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
        self.tell_what_was_heard(heard_ms);
        self.withdraw_action_on_barge_in(now);
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

    /// The lead at which a refill starts: `playout_lead - playout_refill` (never below zero).
    fn refill_point(&self) -> Duration {
        self.settings
            .playout_lead
            .saturating_sub(self.settings.playout_refill.max(FRAME))
            .min(self.settings.playout_lead.saturating_sub(FRAME))
    }

    /// Sends whole frames while the lead at Twilio is below the target, with marks. Refills in
    /// batches: nothing is sent while more than the refill point is still queued.
    fn pump(&mut self, now: Instant) {
        let lead_now = self
            .queued_until
            .map_or(Duration::ZERO, |q| q.saturating_duration_since(now));
        let refilling = lead_now <= self.refill_point();
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
            if !refilling || lead + FRAME > self.settings.playout_lead {
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
                let response_ms = self
                    .last_voice
                    .filter(|v| self.last_agent_start.is_none_or(|a| *v > a))
                    .map(|v| now.saturating_duration_since(v).as_millis() as u64);
                self.last_agent_start = Some(now);
                self.outputs
                    .push_back(Output::Event(CallEvent::AgentSpeaking {
                        turn: id,
                        response_ms,
                    }));
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
        if self.dtmf.is_empty() || !self.model_writable() {
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
            Phase::Connecting | Phase::SettingUp
                if self
                    .reconnect
                    .as_ref()
                    .is_some_and(|r| r.next_try.is_none()) =>
            {
                if let Some(c) = self.connect_requested {
                    if now >= c + self.settings.setup_timeout {
                        self.outputs.push_back(Output::CloseModel);
                        self.reconnect_failed(now, "no setupComplete in time", false);
                        if self.phase == Phase::Ended {
                            return;
                        }
                        // Go on: with no backoff the retry is due now, and `check_session`
                        // makes it (returning left it as a past timer hint: the driver spun).
                    }
                }
            }
            Phase::Connecting | Phase::SettingUp if self.reconnect.is_some() => {}
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
        if self.start.is_some()
            && self.phase != Phase::Parked
            && now >= self.last_media + self.settings.idle_stream
        {
            tracing::warn!(
                secs = self.settings.idle_stream.as_secs(),
                "no media from the caller leg; closing the stream"
            );
            self.end(CallEnd::IdleStream);
            return;
        }
        if self.drain_at.is_some_and(|d| now >= d) {
            self.drain_at = None;
            tracing::info!(
                "shutdown grace over; ending the call once the agent's sentence is heard"
            );
            self.action = Some(PendingAction {
                action: AfterHeard::CloseStream(CallEnd::Shutdown),
                deadline: now + self.settings.end_call_grace,
                wait_turn_complete: false,
                model_done: false,
            });
        }
        self.check_session(now);
        if self.phase == Phase::Ended {
            return;
        }
        if self.awaiting_continuation
            && self.settings.filler_after.is_some()
            && self.phase == Phase::Live
            && self.pending.is_empty()
            && self.generating.is_none()
            && self
                .queued_until
                .is_none_or(|q| now >= q + CONTINUATION_GAP)
        {
            // The rest of the cut reply is late: no dead air meanwhile.
            self.awaiting_continuation = false;
            let filler = self.settings.filler.clone();
            self.enqueue_ulaw_turn(&filler);
        }
        if self.phase == Phase::Ended {
            return;
        }
        if let Some(w) = self.wrap_up.as_mut() {
            if now >= w.deadline && self.model_in_progress && !w.extended {
                // Background reasoning still running: give it one more grace, never more.
                w.extended = true;
                w.deadline = now + self.settings.end_call_grace;
            }
        }
        if let Some(w) = &self.wrap_up {
            if now >= w.deadline {
                let reason = w.reason.clone();
                tracing::info!(
                    reason = reason.as_str(),
                    "wrap-up grace over; ending the call"
                );
                self.wrap_up = None;
                self.hang_up(reason);
                return;
            }
        } else if now >= self.created + self.settings.max_call {
            self.start_wrap_up(
                now,
                CallEnd::MaxDuration,
                "[The call has reached its maximum length. Tell the caller politely, say goodbye \
                 and call end_call now.]"
                    .into(),
            );
        } else if let Some(t) = self.settings.silence_timeout {
            let agent_busy = self.queued_until.is_some_and(|q| q > now)
                || !self.pending.is_empty()
                || self.generating.is_some();
            if agent_busy {
                self.last_activity = now;
            } else if self.phase == Phase::Live
                && self.action.is_none()
                && self.awaiting.is_none()
                && now >= self.last_activity + t
            {
                self.start_wrap_up(
                    now,
                    CallEnd::SilenceTimeout,
                    format!(
                        "[The caller has said nothing for {} seconds. Ask whether they are still \
                         there; if they do not answer, say goodbye and call end_call.]",
                        t.as_secs()
                    ),
                );
            }
        }

        if self.dtmf_deadline.is_some_and(|d| now >= d) {
            self.flush_dtmf();
        }
    }

    /// Whether a message for the model can go out now: a session is live and not being
    /// replaced (nothing may follow our close frame on the old connection).
    fn model_writable(&self) -> bool {
        self.phase == Phase::Live && self.closing.is_none() && self.standby.is_none()
    }

    /// Sends to the model now, or after the next `setupComplete` while no session is live.
    fn send_to_model(&mut self, m: ModelOut) {
        if self.model_writable() {
            self.outputs.push_back(Output::ToModel(m));
        } else {
            self.deferred.push(m);
        }
    }

    /// Keeps the turn's transcripts for seeding a fresh session, bounded by `history_chars`.
    fn remember_turn(&mut self, agent: String) {
        let caller = std::mem::take(&mut self.caller_text);
        for (role, text) in [(Role::User, caller), (Role::Model, agent)] {
            let text = text.trim().to_string();
            if text.is_empty() {
                continue;
            }
            self.history_len += text.len();
            self.history.push_back(Turn { role, text });
        }
        while self.history_len > self.settings.history_chars {
            match self.history.pop_front() {
                Some(t) => self.history_len -= t.text.len(),
                None => break,
            }
        }
    }

    /// After a barge-in: Gemini believes the caller heard everything it generated. Tell it
    /// (as context, without making it answer) how much was actually played, from the marks
    /// and the output transcript.
    fn tell_what_was_heard(&mut self, heard_ms: u64) {
        let agent = std::mem::take(&mut self.agent_text);
        let generated_ms = self.turn_generated / 48; // 24 kHz s16le: 48 bytes per ms
        self.turn_generated = 0;
        let agent = agent.trim();
        if agent.is_empty() || generated_ms == 0 {
            self.remember_turn(String::new());
            return;
        }
        let fraction = (heard_ms as f64 / generated_ms as f64).clamp(0.0, 1.0);
        let mut cut = ((agent.len() as f64) * fraction) as usize;
        while cut < agent.len() && !agent.is_char_boundary(cut) {
            cut += 1;
        }
        // Whole words only.
        let heard = match agent[..cut].rfind(char::is_whitespace) {
            Some(i) if cut < agent.len() => agent[..i].trim_end(),
            _ => agent[..cut].trim_end(),
        };
        self.remember_turn(format!("{heard}…"));
        if !self.settings.tell_model_what_was_heard || fraction >= 0.98 {
            return;
        }
        let note = if heard.is_empty() {
            "[Note: the caller interrupted you before hearing any of your last answer.]".to_string()
        } else {
            format!(
                "[Note: the caller interrupted you. They heard only this much of your last answer: \
                 \"{heard}\". They did not hear the rest.]"
            )
        };
        let note = self.note(note);
        self.send_to_model(note);
    }

    /// goAway handover at a quiet moment, and reconnection timers.
    fn check_session(&mut self, now: Instant) {
        if let Some(c) = &self.closing {
            if now < c.until {
                return;
            }
            tracing::warn!(
                "old model connection did not finish its close in time; resuming with the newest handle seen"
            );
            self.outputs.push_back(Output::CloseModel);
            self.finish_closing(now);
            if self.phase == Phase::Ended {
                return;
            }
        }
        if let Some(since) = self.standby {
            if now >= since + self.settings.setup_timeout {
                self.standby = None;
                self.standby_ready = false;
                tracing::warn!(
                    "standby connection not ready in time; resuming on a new connection"
                );
                self.start_reconnect(now, "go_away", true);
                return;
            }
        }
        // Only a live session hands over; otherwise a pending reconnection below must still
        // run (returning here left its due retry as a past timer hint: the driver spun).
        if let Some(deadline) = self.go_away_deadline.filter(|_| self.phase == Phase::Live) {
            let quiet = !self.reply_due
                && self.generating.is_none()
                && self.pending.is_empty()
                && self.queued_until.is_none_or(|q| q <= now)
                && self.running_tools.is_empty()
                && self.action.is_none()
                && self.awaiting.is_none()
                && !self.model_in_progress
                && self.last_voice.is_none_or(|v| now >= v + QUIET_AFTER_VOICE);
            if quiet || now >= deadline {
                if !quiet {
                    tracing::info!("no quiet moment before the goAway deadline; handing over now");
                }
                self.go_away_deadline = None;
                if self.settings.handover_overlap && self.resume_handle.is_some() {
                    if self.sessions_opened >= self.settings.max_sessions {
                        self.end(CallEnd::ModelLost(
                            "model session cap reached for this call".into(),
                        ));
                        return;
                    }
                    // The new connection's TCP/TLS/WebSocket handshake runs in parallel
                    // with the old one's close; only its `setup` waits.
                    self.sessions_opened += 1;
                    self.standby = Some(now);
                    self.standby_ready = false;
                    self.outputs.push_back(Output::ConnectStandby);
                }
                self.begin_closing(now);
                return;
            }
        }
        let Some(r) = &mut self.reconnect else { return };
        if let (Some(after), false) = (self.settings.filler_after, r.filler_played) {
            if now >= r.since + after {
                r.filler_played = true;
                if self.pending.is_empty() && self.queued_until.is_none_or(|q| q <= now) {
                    let filler = self.settings.filler.clone();
                    self.enqueue_ulaw_turn(&filler);
                }
            }
        }
        let Some(r) = &mut self.reconnect else { return };
        if r.next_try.is_some_and(|t| now >= t) {
            r.next_try = None;
            self.open_session(now);
        }
    }

    /// goAway handover: close the old connection with 1000 but keep reading it until its
    /// close handshake completes or the drain deadline (see [`HANDOVER_DRAIN_MAX`]).
    /// Why: handles are opaque and each `sessionResumptionUpdate` supersedes the last
    /// (gemini-live.md §7.6, from the proto and the Python types); that an update can still
    /// arrive on the old connection after `goAway` is the measurement in issue 13 point 10,
    /// not a documented guarantee (unverified against Google's docs).
    fn begin_closing(&mut self, now: Instant) {
        let drain = self.go_away_ends.take().map_or(HANDOVER_DRAIN_MAX, |end| {
            (end.saturating_duration_since(now) / 2).min(HANDOVER_DRAIN_MAX)
        });
        self.closing = Some(Closing {
            since: now,
            until: now + drain,
        });
        self.outputs.push_back(Output::DrainModel);
    }

    /// The old connection's close is complete (or its drain deadline passed): the newest
    /// handle it sent is known, so the new connection may send its `setup`.
    fn finish_closing(&mut self, now: Instant) {
        let Some(c) = self.closing.take() else { return };
        if self.standby.is_some() {
            // Overlap: the old session's last turn ends here; the standby resumes it.
            self.finish_generation();
            if std::mem::take(&mut self.standby_ready) {
                self.send_standby_setup();
            }
        } else {
            self.start_reconnect(now, "go_away", true);
            if let Some(r) = &mut self.reconnect {
                r.since = c.since;
            }
        }
    }

    fn send_standby_setup(&mut self) {
        let mut setup = self.settings.setup.clone();
        setup.resume_handle = self.resume_handle.clone();
        self.outputs
            .push_back(Output::ToStandby(ModelOut::Setup(Box::new(setup))));
    }

    fn open_session(&mut self, now: Instant) {
        if self.sessions_opened >= self.settings.max_sessions {
            self.end(CallEnd::ModelLost(format!(
                "model session cap ({}) reached for this call",
                self.settings.max_sessions
            )));
            return;
        }
        self.sessions_opened += 1;
        self.phase = Phase::Connecting;
        self.connect_requested = Some(now);
        self.outputs.push_back(Output::ConnectModel);
    }

    /// Moves the conversation to a new model connection (the old one is closed or gone).
    fn start_reconnect(&mut self, now: Instant, reason: &'static str, resume: bool) {
        // The connection a goAway was about is gone: this reconnection replaces the handover.
        self.go_away_deadline = None;
        self.go_away_ends = None;
        self.reconnect = Some(Reconnect {
            reason,
            failures: 0,
            next_try: Some(now),
            since: now,
            resume: resume && self.resume_handle.is_some(),
            filler_played: false,
        });
        // The model's turn in flight ended with the connection; play what was generated, and
        // have the next session finish the reply (all of what was generated is played, so the
        // transcript so far is what the caller hears).
        if self.generating.is_some() && !self.discarding {
            let heard = std::mem::take(&mut self.agent_text).trim().to_string();
            self.remember_turn(format!("{heard}…"));
            self.cut_reply = Some(heard);
        }
        self.finish_generation();
        self.discarding = false;
        self.model_turn_open = false;
        self.model_in_progress = false;
        self.phase = Phase::Connecting;
        self.check_session(now);
    }

    fn reconnect_failed(&mut self, now: Instant, why: &str, refused: bool) {
        let max = self.settings.max_reconnects.max(1);
        let backoff = self.settings.reconnect_backoff;
        let Some(r) = &mut self.reconnect else { return };
        r.failures += 1;
        if refused && r.resume {
            tracing::warn!(
                why,
                "resume refused; starting a fresh session seeded with the transcript"
            );
            r.resume = false;
        } else if r.resume && r.failures >= 2 {
            // Twice in a row with the handle: it may be expired; try fresh next.
            r.resume = false;
        }
        if r.failures > max {
            let why = format!("model unreachable after {} attempts: {why}", r.failures);
            self.reconnect = None;
            self.end(CallEnd::ModelLost(why));
            return;
        }
        let wait = backoff * 2u32.saturating_pow(r.failures - 1);
        tracing::warn!(
            attempt = r.failures,
            wait_ms = wait.as_millis() as u64,
            why,
            "model reconnection failed; retrying"
        );
        r.next_try = Some(now + wait);
        self.phase = Phase::Connecting;
    }

    /// Queues ready-made μ-law audio (the filler) as its own turn, with marks.
    fn enqueue_ulaw_turn(&mut self, ulaw: &[u8]) {
        if ulaw.is_empty() {
            return;
        }
        let id = self.next_turn;
        self.next_turn += 1;
        self.pending.extend(ulaw.iter().copied());
        self.pushed += ulaw.len() as u64;
        let rem = (self.pushed % FRAME_BYTES as u64) as usize;
        if rem != 0 {
            let pad = FRAME_BYTES - rem;
            self.pending.extend(std::iter::repeat_n(ULAW_SILENCE, pad));
            self.pushed += pad as u64;
        }
        self.turns.push_back(QueuedTurn {
            id,
            end: Some(self.pushed),
            frames_sent: 0,
        });
    }

    fn start_wrap_up(&mut self, now: Instant, reason: CallEnd, text: String) {
        let why = if reason == CallEnd::MaxDuration {
            "max_duration"
        } else {
            "silence"
        };
        tracing::info!(reason = why, "asking the agent to wrap up");
        self.outputs
            .push_back(Output::Event(CallEvent::WrapUp { reason: why }));
        self.send_to_model(ModelOut::Text(text));
        self.wrap_up = Some(WrapUp {
            deadline: now + self.settings.wrap_up_grace,
            reason,
            extended: false,
        });
    }

    /// Hangs up through the provider (when the stream is known) and ends the call.
    fn hang_up(&mut self, why: CallEnd) {
        if let Some(start) = &self.start {
            self.outputs.push_back(Output::Control(CallAction::HangUp {
                call_sid: start.call_sid.clone(),
            }));
        }
        self.end(why);
    }

    /// Runs a pending call action once the caller heard everything queued before it (and,
    /// for `end_call`, the model finished its turn), or at the deadline.
    fn check_action(&mut self, now: Instant) {
        if let (Some(at), Some(a)) = (self.tool_opened_turn, self.action.as_mut()) {
            if now >= at + TOOL_TURN_QUIET && !self.model_in_progress {
                // Nothing came after the tool call: the model said what it had to say.
                self.tool_opened_turn = None;
                self.model_turn_open = false;
                a.model_done = true;
            }
        }
        let Some(a) = &self.action else { return };
        let heard_all = (!a.wait_turn_complete || a.model_done)
            && self.generating.is_none()
            && self.pending.is_empty()
            && self.turns.is_empty()
            && self.marks.is_empty();
        if !heard_all && now < a.deadline {
            return;
        }
        if !heard_all {
            tracing::info!("agent's last words not heard within the grace; acting anyway");
        }
        let Some(a) = self.action.take() else { return };
        let call_sid = self
            .start
            .as_ref()
            .map(|s| s.call_sid.clone())
            .unwrap_or_default();
        match a.action {
            AfterHeard::HangUp => self.hang_up(CallEnd::AgentHungUp),
            AfterHeard::CloseStream(why) => self.end(why),
            AfterHeard::Transfer {
                id,
                destination,
                target,
                whisper,
            } => {
                self.awaiting = Some(AwaitingAction {
                    id: id.clone(),
                    name: "transfer_call",
                    token: None,
                });
                self.outputs
                    .push_back(Output::Control(CallAction::Transfer {
                        id,
                        call_sid,
                        destination,
                        target,
                        whisper,
                    }));
            }
            AfterHeard::Dtmf { id, digits } => {
                self.tokens_issued += 1;
                let token = format!("{:016x}{:04x}", rand::random::<u64>(), self.tokens_issued);
                self.awaiting = Some(AwaitingAction {
                    id: id.clone(),
                    name: "send_dtmf",
                    token: Some(token.clone()),
                });
                self.outputs
                    .push_back(Output::Control(CallAction::SendDtmf {
                        id,
                        call_sid,
                        digits,
                        token,
                    }));
            }
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
    use crate::config::TransferDestination;
    use crate::twilio::wire::MediaFrame;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// These unit tests pin the BLOCKING tool semantics (Gemini 2.5); the NON_BLOCKING ones
    /// (3.8, the default) are in tests/model_profiles.rs.
    fn blocking_config() -> Config {
        let mut cfg = Config::default();
        cfg.gemini.model = "gemini-2.5-flash-native-audio-preview-12-2025".into();
        cfg
    }

    fn settings() -> Arc<CallSettings> {
        let mut s = CallSettings::from_config(&blocking_config());
        s.end_call_grace = Duration::from_secs(8);
        // These tests feed no media frames; the idle-stream limit has its own test.
        s.idle_stream = Duration::from_secs(3_600);
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

    /// A caller frame loud enough to count as voice.
    fn loud_media(chunk: u64) -> CallerEvent {
        CallerEvent::Media(MediaFrame {
            chunk,
            timestamp_ms: 155 + 20 * chunk,
            track: "inbound".into(),
            payload: (0..FRAME_BYTES)
                .map(|i| if i % 2 == 0 { 0x10 } else { 0x90 })
                .collect(),
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
        let mut s = CallSettings::from_config(&blocking_config());
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
            Output::Event(CallEvent::AgentSpeaking { turn: 1, .. })
        ));
        let next = call.poll_timeout().expect("a refill is due");
        assert_eq!(next, t0 + Duration::from_millis(100));
        // Refilled in batches (refill 100 ms): nothing while more than 100 ms is queued, then
        // five frames in one go, back up to the 200 ms lead.
        for k in 1..=20u64 {
            call.handle_input(Input::Tick, t0 + Duration::from_millis(20 * k));
            let want = if k % 5 == 0 { 5 } else { 0 };
            assert_eq!(media_count(&drain(&mut call)), want, "tick {k}");
        }
    }

    #[test]
    fn a_refill_of_one_frame_sends_a_frame_every_20_ms() {
        let t0 = Instant::now();
        let mut s = Arc::unwrap_or_clone(settings());
        s.playout_refill = Duration::from_millis(20);
        let mut call = Call::new(Arc::new(s), t0).expect("pipeline");
        call.handle_input(Input::Caller(start_event()), t0);
        call.handle_input(Input::ModelConnected, t0);
        call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
        drain(&mut call);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(1000))), t0);
        assert_eq!(media_count(&drain(&mut call)), 10);
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_millis(20)));
        for k in 1..=20u64 {
            call.handle_input(Input::Tick, t0 + Duration::from_millis(20 * k));
            assert_eq!(media_count(&drain(&mut call)), 1, "tick {k}");
        }
    }

    #[test]
    fn audio_arriving_while_the_lead_is_low_goes_out_at_once() {
        let t0 = Instant::now();
        let mut call = live_call(t0);
        // 100 ms arrives with nothing queued: every whole frame goes out (the resampler holds
        // back its ~2 ms delay, so 4 frames).
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t0);
        let first = media_count(&drain(&mut call));
        assert!(first >= 4, "{first}");
        // 20 ms before that has played out, the lead is under the refill point: the next
        // 100 ms goes out at once too, not at the next timer.
        let t1 = t0 + Duration::from_millis(20 * first as u64 - 20);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t1);
        assert_eq!(media_count(&drain(&mut call)), 5);
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
            .any(|o| matches!(o, Output::Event(CallEvent::AgentSpeaking { turn: 2, .. }))));
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

    fn settings_with(tweak: impl FnOnce(&mut Config)) -> Arc<CallSettings> {
        let mut cfg = blocking_config();
        cfg.transfer.destinations.insert(
            "billing".into(),
            TransferDestination {
                target: "+14155550100".into(),
                description: "Billing".into(),
                whisper: "A caller for billing".into(),
            },
        );
        cfg.limits.idle_stream_secs = 3_600;
        tweak(&mut cfg);
        Arc::new(CallSettings::from_config(&cfg))
    }

    fn live_with(settings: Arc<CallSettings>, t0: Instant) -> Call {
        let mut call = Call::new(settings, t0).expect("pipeline");
        call.handle_input(Input::Caller(start_event()), t0);
        call.handle_input(Input::ModelConnected, t0);
        call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
        drain(&mut call);
        call
    }

    fn tool_call_with(id: &str, name: &str, args: serde_json::Value) -> Input {
        Input::Model(ModelEvent::ToolCall(vec![FunctionCall {
            id: id.into(),
            name: name.into(),
            args,
        }]))
    }

    /// Plays everything queued and echoes every mark as played.
    fn play_out(call: &mut Call, mut t: Instant) -> (Instant, Vec<Output>) {
        let mut all = Vec::new();
        for _ in 0..600 {
            t += Duration::from_millis(20);
            call.handle_input(Input::Tick, t);
            let outs = drain(call);
            let ms = marks(&outs);
            all.extend(outs);
            for m in ms {
                call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
                all.extend(drain(call));
            }
        }
        (t, all)
    }

    #[test]
    fn declares_transfer_and_dtmf_tools_from_config() {
        let s = settings_with(|_| {});
        let names: Vec<&str> = s.setup.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["end_call", "transfer_call", "send_dtmf"]);
        let t = &s.setup.tools[1];
        assert!(t.description.contains("'billing': Billing"));
        assert_eq!(
            t.parameters.as_ref().unwrap()["properties"]["destination"]["enum"],
            json!(["billing"])
        );
        let none = Arc::new(CallSettings::from_config(&blocking_config()));
        assert!(!none.setup.tools.iter().any(|t| t.name == "transfer_call"));
    }

    #[test]
    fn transfer_waits_for_the_hand_off_to_be_heard_then_reports_the_outcome() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(400))), t0);
        call.handle_input(
            tool_call_with("fc-1", "transfer_call", json!({"destination": "billing"})),
            t0,
        );
        let outs = drain(&mut call);
        assert!(
            tool_responses(&outs).is_empty(),
            "answered only after the provider acted"
        );
        assert!(
            !outs.iter().any(|o| matches!(o, Output::Control(_))),
            "not before the hand-off is heard"
        );
        let (t, outs) = play_out(&mut call, t0);
        let action = outs.iter().find_map(|o| match o {
            Output::Control(CallAction::Transfer {
                id,
                target,
                whisper,
                destination,
                ..
            }) => Some((id.clone(), target.clone(), *whisper, destination.clone())),
            _ => None,
        });
        assert_eq!(
            action,
            Some(("fc-1".into(), "+14155550100".into(), true, "billing".into()))
        );
        call.handle_input(
            Input::ActionDone {
                id: "fc-1".into(),
                result: Ok(()),
            },
            t,
        );
        let r = tool_responses(&drain(&mut call));
        assert_eq!(r.len(), 1);
        assert!(r[0].response.get("output").is_some());
        call.handle_input(Input::Caller(CallerEvent::Stop), t);
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::Transferred))
        ));
    }

    #[test]
    fn operator_hang_up_ends_the_call_at_once_through_the_provider() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2_000))), t0);
        drain(&mut call);
        call.handle_input(Input::Operator(OperatorCommand::HangUp), t0);
        let outs = drain(&mut call);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::HangUp { call_sid }) if call_sid.starts_with("CA"))));
        assert!(matches!(
            outs.last(),
            Some(Output::End(CallEnd::OperatorHungUp))
        ));
        // A second request after the end does nothing.
        call.handle_input(Input::Operator(OperatorCommand::HangUp), t0);
        assert!(drain(&mut call).is_empty());
    }

    #[test]
    fn operator_transfer_goes_at_once_and_reports_its_outcome() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        // The agent is mid-sentence: the operator's transfer does not wait for it.
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2_000))), t0);
        drain(&mut call);
        call.handle_input(
            Input::Operator(OperatorCommand::Transfer {
                id: "operator-1".into(),
                destination: "billing".into(),
            }),
            t0,
        );
        let outs = drain(&mut call);
        let action = outs.iter().find_map(|o| match o {
            Output::Control(CallAction::Transfer { id, target, .. }) => {
                Some((id.clone(), target.clone()))
            }
            _ => None,
        });
        assert_eq!(action, Some(("operator-1".into(), "+14155550100".into())));
        // A second one while the first is with the provider is refused.
        call.handle_input(
            Input::Operator(OperatorCommand::Transfer {
                id: "operator-2".into(),
                destination: "+14155550199".into(),
            }),
            t0,
        );
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Operator { id, result: Err(_), .. }) if id == "operator-2")));
        call.handle_input(
            Input::ActionDone {
                id: "operator-1".into(),
                result: Ok(()),
            },
            t0,
        );
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Operator { id, result: Ok(()), .. }) if id == "operator-1")));
        assert!(
            tool_responses(&outs).is_empty(),
            "the model is not told about an operator's transfer"
        );
        call.handle_input(Input::Caller(CallerEvent::Stop), t0);
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::Transferred))
        ));
    }

    #[test]
    fn operator_transfer_refuses_unknown_destinations_and_reports_provider_errors() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        for bad in ["nowhere", "12345", "+1 415 555", ""] {
            call.handle_input(
                Input::Operator(OperatorCommand::Transfer {
                    id: "op".into(),
                    destination: bad.into(),
                }),
                t0,
            );
            let outs = drain(&mut call);
            assert!(
                outs.iter().any(|o| matches!(
                    o,
                    Output::Event(CallEvent::Operator { result: Err(_), .. })
                )),
                "{bad:?} refused"
            );
            assert!(!outs.iter().any(|o| matches!(o, Output::Control(_))));
        }
        // A free-form E.164 number is the operator's call (no allow_pattern needed).
        call.handle_input(
            Input::Operator(OperatorCommand::Transfer {
                id: "op-2".into(),
                destination: "+14155550199".into(),
            }),
            t0,
        );
        assert!(drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::Transfer { target, .. }) if target == "+14155550199")));
        call.handle_input(
            Input::ActionDone {
                id: "op-2".into(),
                result: Err("HTTP 400".into()),
            },
            t0,
        );
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Operator { result: Err(e), .. }) if e.contains("400"))));
        // The call goes on: a caller stop now is a hang-up, not a transfer.
        call.handle_input(Input::Caller(CallerEvent::Stop), t0);
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::CallerHungUp))
        ));
    }

    #[test]
    fn response_time_runs_from_the_callers_last_voice_to_the_reply() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        // The greeting: nobody spoke before it.
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t0);
        let first = drain(&mut call).into_iter().find_map(|o| match o {
            Output::Event(CallEvent::AgentSpeaking { response_ms, .. }) => Some(response_ms),
            _ => None,
        });
        assert_eq!(first, Some(None));
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
        let (t1, _) = play_out(&mut call, t0);
        // The caller speaks, then 700 ms later the reply's first frame goes out.
        let spoke = t1 + Duration::from_secs(1);
        call.handle_input(Input::Caller(loud_media(900)), spoke);
        drain(&mut call);
        let reply = spoke + Duration::from_millis(700);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), reply);
        let second = drain(&mut call).into_iter().find_map(|o| match o {
            Output::Event(CallEvent::AgentSpeaking { response_ms, .. }) => Some(response_ms),
            _ => None,
        });
        assert_eq!(second, Some(Some(700)));
    }

    #[test]
    fn transfer_failure_is_spoken_back_and_unknown_numbers_are_refused() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(
            tool_call_with(
                "fc-1",
                "transfer_call",
                json!({"destination": "+15551234567"}),
            ),
            t0,
        );
        let r = tool_responses(&drain(&mut call));
        assert!(
            r[0].response["error"].as_str().unwrap().contains("billing"),
            "{r:?}"
        );
        call.handle_input(
            tool_call_with("fc-2", "transfer_call", json!({"destination": "billing"})),
            t0,
        );
        let (t, outs) = play_out(&mut call, t0);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::Transfer { .. }))));
        call.handle_input(
            Input::ActionDone {
                id: "fc-2".into(),
                result: Err("twilio answered http 400 (code 21220)".into()),
            },
            t,
        );
        let r = tool_responses(&drain(&mut call));
        assert_eq!(r.len(), 1);
        assert!(r[0].response["error"].as_str().unwrap().contains("21220"));
        // The call goes on: a stop now is a normal hang-up.
        call.handle_input(Input::Caller(CallerEvent::Stop), t);
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::CallerHungUp))
        ));
    }

    #[test]
    fn free_form_numbers_need_the_allow_pattern() {
        let t0 = Instant::now();
        let mut call = live_with(
            settings_with(|c| c.transfer.allow_pattern = r"^\+1415\d{7}$".into()),
            t0,
        );
        call.handle_input(
            tool_call_with(
                "fc-1",
                "transfer_call",
                json!({"destination": "+14155559999"}),
            ),
            t0,
        );
        call.handle_input(
            tool_call_with(
                "fc-2",
                "transfer_call",
                json!({"destination": "+12125559999"}),
            ),
            t0,
        );
        let outs = drain(&mut call);
        let r = tool_responses(&outs);
        assert_eq!(
            r.len(),
            1,
            "the second is refused at once (another action is pending)"
        );
        // Nothing was playing, so the transfer runs at once.
        assert!(outs.iter().any(|o| matches!(o, Output::Control(CallAction::Transfer { target, .. }) if target == "+14155559999")));
    }

    #[test]
    fn barge_in_during_the_hand_off_cancels_the_transfer() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2000))), t0);
        call.handle_input(
            tool_call_with("fc-1", "transfer_call", json!({"destination": "billing"})),
            t0,
        );
        drain(&mut call);
        let t1 = t0 + Duration::from_millis(300);
        call.handle_input(Input::Tick, t1);
        call.handle_input(Input::Model(ModelEvent::Interrupted), t1);
        let outs = drain(&mut call);
        let r = tool_responses(&outs);
        assert_eq!(r.len(), 1);
        assert!(r[0].response["error"]
            .as_str()
            .unwrap()
            .contains("interrupted"));
        let (_, outs) = play_out(&mut call, t1);
        assert!(!outs
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::Transfer { .. }))));
        // A cancellation from the model instead withdraws it without a response.
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(2000))), t0);
        call.handle_input(
            tool_call_with("fc-2", "transfer_call", json!({"destination": "billing"})),
            t0,
        );
        call.handle_input(
            Input::Model(ModelEvent::ToolCallCancellation(vec!["fc-2".into()])),
            t1,
        );
        call.handle_input(Input::Model(ModelEvent::Interrupted), t1);
        let (_, outs) = play_out(&mut call, t1);
        let mut all = drain(&mut call);
        all.extend(outs);
        assert!(tool_responses(&all).is_empty());
    }

    #[test]
    fn send_dtmf_parks_the_call_and_the_continued_stream_resumes_it() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(
            tool_call_with("fc-1", "send_dtmf", json!({"digits": "bad!"})),
            t0,
        );
        assert!(tool_responses(&drain(&mut call))[0]
            .response
            .get("error")
            .is_some());
        call.handle_input(
            tool_call_with("fc-2", "send_dtmf", json!({"digits": "1W2#"})),
            t0,
        );
        let (t, outs) = play_out(&mut call, t0);
        let token = outs
            .iter()
            .find_map(|o| match o {
                Output::Control(CallAction::SendDtmf { digits, token, .. }) => {
                    assert_eq!(digits, "1w2#");
                    Some(token.clone())
                }
                _ => None,
            })
            .expect("dtmf action");
        call.handle_input(
            Input::ActionDone {
                id: "fc-2".into(),
                result: Ok(()),
            },
            t,
        );
        let r = tool_responses(&drain(&mut call));
        assert!(r[0].response.get("output").is_some());
        call.handle_input(Input::Caller(CallerEvent::Stop), t);
        let outs = drain(&mut call);
        assert!(matches!(outs.last(), Some(Output::Park { token: k }) if *k == token));
        assert!(!call.is_ended());
        // The continued stream.
        let mut start = match start_event() {
            CallerEvent::Start(s) => s,
            _ => unreachable!(),
        };
        start.stream_sid = "MZ99999999999999999999999999999999".into();
        call.handle_input(Input::Resumed(start), t);
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(o, Output::Event(CallEvent::Continued { stream_sid }) if stream_sid.starts_with("MZ9"))));
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t);
        assert!(
            media_count(&drain(&mut call)) > 0,
            "audio flows on the new stream"
        );
        call.handle_input(Input::Caller(media(1)), t);
        assert!(drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::ToModel(ModelOut::Audio(_)))));
    }

    #[test]
    fn webhook_tools_run_and_cancel() {
        let t0 = Instant::now();
        let mut call = live_with(
            settings_with(|c| {
                c.tools.webhooks.push(crate::config::WebhookToolConfig {
                    scheduling: Default::default(),
                    name: "lookup_order".into(),
                    description: "Look up an order".into(),
                    parameters: None,
                    url: "http://127.0.0.1:1/x".into(),
                    allow_insecure: true,
                    timeout_ms: 1000,
                })
            }),
            t0,
        );
        call.handle_input(tool_call_with("fc-1", "lookup_order", json!({"n": 1})), t0);
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(o, Output::Control(CallAction::RunTool { id, name, .. }) if id == "fc-1" && name == "lookup_order")));
        assert!(tool_responses(&outs).is_empty());
        call.handle_input(
            Input::ToolDone {
                id: "fc-1".into(),
                result: Ok(json!({"status": "shipped"})),
            },
            t0,
        );
        let r = tool_responses(&drain(&mut call));
        assert_eq!(r[0].response, json!({"output": {"status": "shipped"}}));
        call.handle_input(tool_call_with("fc-2", "lookup_order", json!({})), t0);
        drain(&mut call);
        call.handle_input(
            Input::Model(ModelEvent::ToolCallCancellation(vec!["fc-2".into()])),
            t0,
        );
        let outs = drain(&mut call);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::CancelTool { id }) if id == "fc-2")));
        call.handle_input(
            Input::ToolDone {
                id: "fc-2".into(),
                result: Ok(json!({})),
            },
            t0,
        );
        assert!(
            tool_responses(&drain(&mut call)).is_empty(),
            "no response after cancellation"
        );
    }

    #[test]
    fn max_duration_asks_for_a_goodbye_then_ends_after_the_grace() {
        let t0 = Instant::now();
        let s = settings_with(|c| {
            c.limits.max_call_secs = 60;
            c.limits.wrap_up_grace_ms = 10_000;
            c.limits.silence_timeout_secs = 0;
        });
        let mut call = live_with(s, t0);
        let due = call.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(60));
        call.handle_input(Input::Tick, due);
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::WrapUp {
                reason: "max_duration"
            })
        )));
        assert!(outs.iter().any(
            |o| matches!(o, Output::ToModel(ModelOut::Text(t)) if t.contains("maximum length"))
        ));
        let due = call.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(70));
        call.handle_input(Input::Tick, due);
        let outs = drain(&mut call);
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. }))));
        assert!(matches!(
            outs.last(),
            Some(Output::End(CallEnd::MaxDuration))
        ));
    }

    #[test]
    fn silence_timeout_wraps_up_unless_the_caller_speaks_again() {
        let t0 = Instant::now();
        let s = settings_with(|c| {
            c.limits.silence_timeout_secs = 10;
            c.limits.wrap_up_grace_ms = 5_000;
        });
        let mut call = live_with(s, t0);
        let due = call.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(10));
        call.handle_input(Input::Tick, due);
        assert!(drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::Event(CallEvent::WrapUp { reason: "silence" }))));
        // The caller speaks: the wrap-up is withdrawn.
        let loud: Vec<u8> = (0..160)
            .map(|i| if i % 2 == 0 { 0x10 } else { 0x90 })
            .collect();
        call.handle_input(
            Input::Caller(CallerEvent::Media(MediaFrame {
                chunk: 9,
                timestamp_ms: 0,
                track: "inbound".into(),
                payload: loud,
            })),
            due + Duration::from_secs(1),
        );
        call.handle_input(Input::Tick, due + Duration::from_secs(6));
        assert!(!drain(&mut call).iter().any(|o| matches!(o, Output::End(_))));
        // Silence again: wrap-up, then the end after the grace.
        let due = call.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(21));
        call.handle_input(Input::Tick, due);
        drain(&mut call);
        call.handle_input(Input::Tick, due + Duration::from_secs(5));
        assert!(matches!(
            drain(&mut call).last(),
            Some(Output::End(CallEnd::SilenceTimeout))
        ));
    }

    #[test]
    fn per_call_state_stays_bounded_over_a_long_call() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|c| c.session.history_chars = 1_000), t0);
        let mut t = t0;
        for i in 0..500u32 {
            call.handle_input(
                Input::Model(ModelEvent::InputTranscription(format!(
                    "caller says thing {i}"
                ))),
                t,
            );
            call.handle_input(Input::Model(ModelEvent::Audio(model_audio(60))), t);
            call.handle_input(
                Input::Model(ModelEvent::OutputTranscription(format!(
                    "agent answers {i}"
                ))),
                t,
            );
            call.handle_input(Input::Model(ModelEvent::GenerationComplete), t);
            call.handle_input(Input::Model(ModelEvent::TurnComplete), t);
            let (next, _) = play_out(&mut call, t);
            t = next;
            if i % 50 == 0 {
                call.handle_input(Input::Model(ModelEvent::Interrupted), t);
                call.handle_input(Input::Model(ModelEvent::TurnComplete), t);
                drain(&mut call);
            }
        }
        let (history, buffered) = call.footprint();
        assert!(history <= 1_000, "history {history}");
        assert!(buffered < 10, "buffered {buffered}");
    }

    fn handle(h: &str) -> Input {
        Input::Model(ModelEvent::SessionResumptionUpdate {
            new_handle: Some(h.into()),
            resumable: true,
        })
    }

    fn setup_handle(o: &Output) -> Option<Option<&str>> {
        match o {
            Output::ToModel(ModelOut::Setup(p)) | Output::ToStandby(ModelOut::Setup(p)) => {
                Some(p.resume_handle.as_deref())
            }
            _ => None,
        }
    }

    fn closed(code: u16) -> Input {
        Input::ModelClosed {
            code,
            reason: String::new(),
        }
    }

    #[test]
    fn close_first_handover_drains_the_old_connection_and_resumes_with_the_newest_handle() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(handle("h1"), t0);
        call.handle_input(
            Input::Model(ModelEvent::GoAway {
                time_left: Some(Duration::from_secs(50)),
            }),
            t0,
        );
        let outs = drain(&mut call);
        // Quiet: the handover starts at once, with a close frame on the old connection; the
        // new one is not opened before the old one's close is complete (close-first).
        assert!(
            outs.iter().any(|o| matches!(o, Output::DrainModel)),
            "{outs:?}"
        );
        assert!(!outs
            .iter()
            .any(|o| matches!(o, Output::ConnectModel | Output::CloseModel)));
        // The drain deadline: min(50 s / 2, 1 s).
        assert_eq!(call.poll_timeout(), Some(t0 + HANDOVER_DRAIN_MAX));
        // Caller audio meanwhile is held, not written after the close frame.
        call.handle_input(Input::Caller(media(5)), t0 + ms(1));
        assert!(!drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::ToModel(_))));
        // A handle that crossed our close frame, then a second goAway copy: the handle is
        // taken, the goAway ignored.
        call.handle_input(handle("h2"), t0 + ms(2));
        call.handle_input(
            Input::Model(ModelEvent::GoAway {
                time_left: Some(Duration::from_secs(49)),
            }),
            t0 + ms(2),
        );
        call.handle_input(
            Input::Model(ModelEvent::SessionResumptionUpdate {
                new_handle: None,
                resumable: false,
            }),
            t0 + ms(2),
        );
        assert_eq!(call.resume_handle(), Some("h2"));
        assert!(!drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::DrainModel | Output::ConnectModel)));
        // The close reply completes the handshake: now the new connection is opened.
        call.handle_input(closed(1000), t0 + ms(3));
        let outs = drain(&mut call);
        assert!(
            outs.iter().any(|o| matches!(o, Output::ConnectModel)),
            "{outs:?}"
        );
        call.handle_input(Input::ModelConnected, t0 + ms(10));
        let outs = drain(&mut call);
        assert_eq!(setup_handle(&outs[0]), Some(Some("h2")), "{outs:?}");
        call.handle_input(Input::Model(ModelEvent::SetupComplete), t0 + ms(40));
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::Reconnected {
                reason: "go_away",
                resumed: true,
                gap_ms: 40,
            })
        )));
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::ToModel(ModelOut::Audio(_)))),
            "held caller audio delivered to the new session"
        );
    }

    #[test]
    fn handover_drain_deadline_is_bounded_by_half_the_time_left() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(handle("h1"), t0);
        // 1 s left: the handover keeps 0.5 s in hand, so it starts at once (quiet) and the
        // drain may take at most half of the second left.
        call.handle_input(
            Input::Model(ModelEvent::GoAway {
                time_left: Some(Duration::from_secs(1)),
            }),
            t0,
        );
        assert!(drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::DrainModel)));
        let until = t0 + Duration::from_millis(500);
        assert_eq!(call.poll_timeout(), Some(until));
        call.handle_input(Input::Tick, until - Duration::from_millis(1));
        assert!(drain(&mut call).is_empty());
        // The server never answers our close frame: at the deadline the old socket is given
        // up and the newest handle seen is used.
        call.handle_input(handle("h2"), until - Duration::from_millis(1));
        call.handle_input(Input::Tick, until);
        let outs = drain(&mut call);
        let close = outs.iter().position(|o| matches!(o, Output::CloseModel));
        let connect = outs.iter().position(|o| matches!(o, Output::ConnectModel));
        assert!(
            matches!((close, connect), (Some(a), Some(b)) if a < b),
            "{outs:?}"
        );
        call.handle_input(Input::ModelConnected, until);
        assert_eq!(setup_handle(&drain(&mut call)[0]), Some(Some("h2")));
        // A late close of the old connection (already given up) does not count as a failure
        // of the new one: the driver no longer reads it, so nothing more arrives.
        assert!(call.poll_timeout().is_some());
    }

    #[test]
    fn handover_drain_plays_the_old_connections_last_audio_and_defers_tool_results() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut call = live_with(
            settings_with(|c| {
                c.tools.webhooks.push(crate::config::WebhookToolConfig {
                    scheduling: Default::default(),
                    name: "lookup".into(),
                    description: "Look something up".into(),
                    parameters: None,
                    url: "http://127.0.0.1:1/x".into(),
                    allow_insecure: true,
                    timeout_ms: 1000,
                })
            }),
            t0,
        );
        call.handle_input(handle("h1"), t0);
        call.handle_input(
            Input::Model(ModelEvent::GoAway {
                time_left: Some(Duration::from_secs(50)),
            }),
            t0,
        );
        drain(&mut call);
        // The old connection still delivers a turn (it had not seen our close yet): its audio
        // is played, nothing is sent back on it.
        call.handle_input(Input::Model(ModelEvent::Audio(vec![0; 4_800])), t0 + ms(1));
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t0 + ms(1));
        call.handle_input(Input::Tick, t0 + ms(2));
        let outs = drain(&mut call);
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::ToCaller(CallerOut::Media(_)))),
            "{outs:?}"
        );
        assert!(!outs.iter().any(|o| matches!(o, Output::ToModel(_))));
        // A tool result for a call of the old session goes to the new session as context.
        call.handle_input(tool_call_with("t-old", "lookup", json!({})), t0 + ms(2));
        call.handle_input(
            Input::ToolDone {
                id: "t-old".into(),
                result: Ok(json!({"balance": 42})),
            },
            t0 + ms(3),
        );
        assert!(!drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::ToModel(_))));
        call.handle_input(closed(1000), t0 + ms(4));
        call.handle_input(Input::ModelConnected, t0 + ms(5));
        call.handle_input(Input::Model(ModelEvent::SetupComplete), t0 + ms(6));
        let outs = drain(&mut call);
        assert!(!outs
            .iter()
            .any(|o| matches!(o, Output::ToModel(ModelOut::ToolResponse(_)))));
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::ToModel(m) if format!("{m:?}").contains("42"))),
            "{outs:?}"
        );
    }

    #[test]
    fn overlap_handover_connects_in_parallel_and_sends_setup_after_the_old_close() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut call = live_with(settings_with(|c| c.session.handover = "overlap".into()), t0);
        call.handle_input(handle("h1"), t0);
        call.handle_input(
            Input::Model(ModelEvent::GoAway {
                time_left: Some(Duration::from_secs(50)),
            }),
            t0,
        );
        let outs = drain(&mut call);
        assert!(
            outs.iter().any(|o| matches!(o, Output::ConnectStandby))
                && outs.iter().any(|o| matches!(o, Output::DrainModel)),
            "quiet: handover at once, connect and close in parallel: {outs:?}"
        );
        // Caller audio during the handover is held, not sent to the old session.
        call.handle_input(Input::Caller(media(5)), t0);
        assert!(!drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::ToModel(ModelOut::Audio(_)))));
        // The new socket is open first: its setup waits for the newest handle.
        call.handle_input(Input::StandbyConnected, t0 + ms(1));
        assert!(drain(&mut call).iter().all(|o| setup_handle(o).is_none()));
        call.handle_input(handle("h2"), t0 + ms(2));
        call.handle_input(closed(1000), t0 + ms(3));
        let outs = drain(&mut call);
        assert_eq!(
            outs.iter().find_map(setup_handle),
            Some(Some("h2")),
            "{outs:?}"
        );
        assert!(outs
            .iter()
            .any(|o| matches!(o, Output::ToStandby(ModelOut::Setup(_)))));
        call.handle_input(Input::Standby(ModelEvent::SetupComplete), t0 + ms(40));
        let outs = drain(&mut call);
        assert!(matches!(outs[0], Output::PromoteStandby), "{outs:?}");
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::Reconnected {
                reason: "go_away",
                resumed: true,
                ..
            })
        )));
        let audio: usize = outs
            .iter()
            .filter_map(|o| match o {
                Output::ToModel(ModelOut::Audio(a)) => Some(a.len()),
                _ => None,
            })
            .sum();
        assert!(
            audio >= 600,
            "held caller audio delivered to the new session: {audio}"
        );
    }

    #[test]
    fn overlap_handover_falls_back_to_a_new_connection_when_the_standby_fails() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|c| c.session.handover = "overlap".into()), t0);
        call.handle_input(handle("h1"), t0);
        call.handle_input(
            Input::Model(ModelEvent::GoAway {
                time_left: Some(Duration::from_secs(50)),
            }),
            t0,
        );
        drain(&mut call);
        // The standby fails while the old connection is still closing: nothing yet.
        call.handle_input(Input::StandbyFailed("closed: code 1007".into()), t0);
        assert!(!drain(&mut call)
            .iter()
            .any(|o| matches!(o, Output::ConnectModel)));
        // Once the old one is closed, resume close-first.
        call.handle_input(closed(1000), t0);
        let outs = drain(&mut call);
        assert!(
            outs.iter().any(|o| matches!(o, Output::ConnectModel)),
            "{outs:?}"
        );
        call.handle_input(Input::ModelConnected, t0);
        let outs = drain(&mut call);
        assert_eq!(setup_handle(&outs[0]), Some(Some("h1")));
        call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
        assert!(drain(&mut call).iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::Reconnected {
                reason: "go_away",
                resumed: true,
                ..
            })
        )));
    }

    #[test]
    fn a_stream_without_media_is_closed() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|c| c.limits.idle_stream_secs = 5), t0);
        call.handle_input(Input::Caller(media(1)), t0 + Duration::from_secs(3));
        let due = call.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(8));
        call.handle_input(Input::Tick, due);
        let outs = drain(&mut call);
        assert!(
            matches!(outs.last(), Some(Output::End(e @ CallEnd::IdleStream)) if e.caller_still_connected())
        );
    }

    #[test]
    fn shutdown_lets_the_call_continue_then_ends_after_the_sentence() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|c| c.limits.shutdown_grace_secs = 10), t0);
        call.handle_input(Input::Shutdown, t0);
        assert!(
            drain(&mut call).is_empty(),
            "the call goes on during the grace"
        );
        let t1 = t0 + Duration::from_secs(9);
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(1_500))), t1);
        call.handle_input(Input::Model(ModelEvent::GenerationComplete), t1);
        let mut t = t1;
        let mut ended_at = None;
        for _ in 0..200 {
            t += Duration::from_millis(20);
            call.handle_input(Input::Tick, t);
            let outs = drain(&mut call);
            for m in marks(&outs) {
                call.handle_input(Input::Caller(CallerEvent::Mark { name: m }), t);
            }
            let mut outs = outs;
            outs.extend(drain(&mut call));
            if outs
                .iter()
                .any(|o| matches!(o, Output::End(CallEnd::Shutdown)))
            {
                assert!(
                    !outs
                        .iter()
                        .any(|o| matches!(o, Output::Control(CallAction::HangUp { .. }))),
                    "the stream closes; Twilio runs the fallback"
                );
                ended_at = Some(t);
                break;
            }
        }
        let ended_at = ended_at.expect("ended");
        // (This test echoes each mark as soon as it is sent, up to the 200 ms lead early.)
        assert!(
            ended_at >= t1 + Duration::from_millis(1_500 - 220),
            "the sentence was sent and its marks came back first: ended {:?} after it began",
            ended_at - t1
        );
    }

    #[test]
    fn refused_resume_starts_a_fresh_session_with_history() {
        let t0 = Instant::now();
        let mut call = live_with(settings_with(|_| {}), t0);
        call.handle_input(
            Input::Model(ModelEvent::InputTranscription("where is my order".into())),
            t0,
        );
        call.handle_input(Input::Model(ModelEvent::Audio(model_audio(100))), t0);
        call.handle_input(
            Input::Model(ModelEvent::OutputTranscription("It ships Monday.".into())),
            t0,
        );
        call.handle_input(Input::Model(ModelEvent::GenerationComplete), t0);
        call.handle_input(Input::Model(ModelEvent::TurnComplete), t0);
        call.handle_input(
            Input::Model(ModelEvent::SessionResumptionUpdate {
                new_handle: Some("h1".into()),
                resumable: true,
            }),
            t0,
        );
        drain(&mut call);
        // The connection drops; the resume with the handle is refused (1007).
        call.handle_input(
            Input::ModelClosed {
                code: 1006,
                reason: String::new(),
            },
            t0,
        );
        call.handle_input(Input::ModelConnected, t0);
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(o, Output::ToModel(ModelOut::Setup(p)) if p.resume_handle.as_deref() == Some("h1"))));
        call.handle_input(
            Input::ModelClosed {
                code: 1007,
                reason: "Request contains an invalid argument.".into(),
            },
            t0,
        );
        let retry = call.poll_timeout().unwrap();
        call.handle_input(Input::Tick, retry);
        call.handle_input(Input::ModelConnected, retry);
        let outs = drain(&mut call);
        assert!(
            outs.iter().any(
                |o| matches!(o, Output::ToModel(ModelOut::Setup(p)) if p.resume_handle.is_none())
            ),
            "{outs:?}"
        );
        call.handle_input(Input::Model(ModelEvent::SetupComplete), retry);
        let outs = drain(&mut call);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Event(CallEvent::Reconnected {
                reason: "fault",
                resumed: false,
                ..
            })
        )));
        // 2.5 (these tests' model): clientContent without turnComplete was reported to stop
        // it answering later audio, so the history ends with a turn it answers briefly.
        let seeds: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::ToModel(ModelOut::ClientContent(turns)) => Some(turns.clone()),
                Output::ToModel(ModelOut::Context(_)) => {
                    panic!("no incomplete clientContent on 2.5")
                }
                _ => None,
            })
            .collect();
        assert_eq!(seeds.len(), 1, "one seed, no second greeting prompt");
        let history = &seeds[0];
        assert_eq!(history[0].text, "where is my order");
        assert_eq!(history[1].text, "It ships Monday.");
        assert!(history.last().unwrap().text.contains("Do not greet again"));
    }
}
