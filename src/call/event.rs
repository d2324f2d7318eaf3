//! The call machine's vocabulary: what the driver tells it ([`Input`]), what it asks the
//! driver to do ([`Output`], [`CallAction`]), what it reports ([`CallEvent`]) and how a call
//! ends ([`CallEnd`]). Plain data shared by the machine, the driver and the observers.

use crate::gemini::setup::SetupParams;
use crate::gemini::wire::{FunctionResponse, ModelEvent, Turn, UsageMetadata};
use crate::twilio::wire::{CallerEvent, StreamStart};

use super::machine::FRAME_BYTES;

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
