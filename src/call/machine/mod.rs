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

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::audio::transcode::{AudioError, Uplink};
use crate::gemini::profile::{NoteForm, ToolBehavior};
use crate::gemini::wire::{
    FunctionCall, FunctionResponse, InteractionStatus, ModelEvent, Role, Scheduling, Turn,
};
use crate::twilio::wire::{CallerEvent, StreamStart};

use super::event::{CallAction, CallEnd, CallEvent, Input, ModelOut, OperatorCommand, Output};
use super::inbound::{DtmfCollector, PreconnectRing};
use super::playout::Playout;
use super::settings::CallSettings;

mod session;
mod timers;
mod tools;

pub use session::HANDOVER_DRAIN_MAX;
use session::{SessionState, Transcript};
use timers::WrapUp;
use tools::{AfterHeard, PendingAction, ToolState};

/// One 20 ms μ-law frame at 8 kHz.
pub const FRAME_BYTES: usize = 160;

/// Duration of one frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// Most caller audio sent to the model in one message when flushing the pre-connect buffer.
const FLUSH_CHUNK_FRAMES: usize = 5;

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

/// The caller counts as mid-utterance for this long after the last voiced frame.
const QUIET_AFTER_VOICE: Duration = Duration::from_millis(600);

/// Mean square of a μ-law frame above which the caller counts as speaking (about -36 dBFS).
const VOICE_POWER: f64 = 500.0 * 500.0;

/// Where the model's current turn stands.
#[derive(Default)]
struct ModelTurn {
    /// The caller spoke and the model has not completed a reply since: a handover now would
    /// lose the reply being prepared.
    reply_due: bool,
    /// The model's current turn has started (audio, transcript or a tool call) and its
    /// `turnComplete` has not come yet.
    open: bool,
    /// `interactionStatus: IN_PROGRESS` (background reasoning): a `turnComplete` does not
    /// mean the model is done.
    in_progress: bool,
    /// The current turn said `waitingForInput` (deliberate silence).
    waiting_for_input: bool,
    /// `turnCompleteReason` of the current turn, when the server gave one.
    end_reason: Option<String>,
    /// The current model turn called a tool.
    had_tool_call: bool,
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
    tool_opened: Option<Instant>,
    /// A cut reply was asked to be finished and no audio of it has come yet: if the caller's
    /// queue runs dry first, the filler bridges the gap (once).
    awaiting_continuation: bool,
}

/// One call. See the module docs.
pub struct Call {
    settings: std::sync::Arc<CallSettings>,
    phase: Phase,
    created: Instant,
    outputs: VecDeque<Output>,

    start: Option<StreamStart>,

    // Uplink: caller μ-law → model PCM 16 kHz.
    uplink: Uplink,
    uplink_out: Vec<u8>,
    preconnect: PreconnectRing,

    // Downlink: model PCM 24 kHz → caller μ-law frames, paced, with marks.
    playout: Playout,

    wrap_up: Option<WrapUp>,
    /// Last time the caller spoke or the agent's audio was playing.
    last_activity: Instant,
    /// Last time the caller's audio carried voice.
    last_voice: Option<Instant>,
    /// Last media frame from the caller.
    last_media: Instant,
    /// The latest `now` seen (for timer hints in `poll_timeout`).
    last_now: Instant,
    /// The bridge is shutting down: end politely at this time.
    drain_at: Option<Instant>,

    dtmf: DtmfCollector,

    /// Unknown model message kinds seen (each logged once at info).
    unknown_kinds: HashSet<String>,

    /// Tool calls and call actions: answered ids, the action waiting to be heard, the one handed to the driver, webhook tools in flight.
    tools: ToolState,
    /// The model connection: handover, reconnection, the resumption handle and what waits for the next session.
    session: SessionState,
    /// The conversation so far (transcripts), bounded, to seed a fresh session.
    transcript: Transcript,
    /// Where the model's current turn stands.
    turn: ModelTurn,
}

/// After a cut reply's prompt, silence at the caller longer than this plays the filler.
const CONTINUATION_GAP: Duration = Duration::from_millis(600);

/// How long a turn opened only by a tool call may stay silent before it counts as over.
const TOOL_TURN_QUIET: Duration = Duration::from_millis(1_000);

impl Call {
    /// A new call, created when the caller's WebSocket is upgraded.
    pub fn new(settings: std::sync::Arc<CallSettings>, now: Instant) -> Result<Call, AudioError> {
        Ok(Call {
            phase: Phase::AwaitingStart,
            created: now,
            outputs: VecDeque::with_capacity(64),
            start: None,
            uplink: Uplink::new()?,
            uplink_out: Vec::with_capacity(4096),
            preconnect: PreconnectRing::new(settings.preconnect_frames),
            playout: Playout::new(&settings, now)?,
            wrap_up: None,
            last_activity: now,
            last_voice: None,
            last_media: now,
            last_now: now,
            drain_at: None,
            dtmf: DtmfCollector::new(settings.dtmf_idle),
            unknown_kinds: HashSet::new(),
            tools: ToolState::default(),
            session: SessionState::default(),
            transcript: Transcript::default(),
            turn: ModelTurn::default(),
            settings,
        })
    }

    /// The stream's `start`, once seen.
    pub fn stream(&self) -> Option<&StreamStart> {
        self.start.as_ref()
    }

    /// The newest resumable session handle from the model.
    pub fn resume_handle(&self) -> Option<&str> {
        self.session.resume_handle.as_deref()
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Model audio dropped because it belonged to an interrupted turn, in bytes of 24 kHz PCM.
    pub fn discarded_model_bytes(&self) -> u64 {
        self.playout.discarded_bytes()
    }

    /// Caller audio dropped from the pre-connect buffer because it was full, in bytes.
    pub fn preconnect_dropped_bytes(&self) -> u64 {
        self.preconnect.dropped()
    }

    /// Characters of transcript kept for seeding a fresh session (bounded by
    /// `session.history_chars`), and the number of buffered items that grow with a call:
    /// deferred model messages, pending marks, cleared marks. For footprint checks.
    pub fn footprint(&self) -> (usize, usize) {
        (
            self.transcript.len,
            self.session.deferred.len() + self.playout.footprint() + self.tools.answered.len(),
        )
    }

    /// Next queued effect, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must call back with [`Input::Tick`] at the latest: the earliest of
    /// the parts' own deadlines (each part says when it next has work; none may answer a
    /// time already past unless it acts on it, else the driver would spin).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Ended {
            return None;
        }
        [
            self.timers_deadline(),
            self.session_deadline(),
            self.tools_deadline(),
            self.dtmf.deadline(),
            // The playout wakes when its lead has fallen to the refill point.
            self.playout.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A hint (not a deadline a timer acts on): only a time still ahead of the latest `now`.
    fn ahead(&self, d: Option<Instant>) -> Option<Instant> {
        d.filter(|d| *d > self.last_now)
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
                    let resume = self.session.reconnect.as_ref().is_none_or(|r| r.resume);
                    setup.resume_handle = if resume {
                        self.session.resume_handle.clone()
                    } else {
                        None
                    };
                    self.session.tools.clear();
                    self.phase = Phase::SettingUp;
                    self.outputs
                        .push_back(Output::ToModel(ModelOut::Setup(Box::new(setup))));
                }
            }
            Input::ModelConnectFailed(why) => {
                if self.session.reconnect.is_some() {
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
                self.session.go_away_deadline = None;
                self.session.go_away_ends = None;
                if self.session.closing.is_some() {
                    // The handover's close handshake is complete (1000 echoed), or the old
                    // connection ended otherwise: every handle it sent has been seen.
                    tracing::debug!(code, "old model connection closed (handover)");
                    self.finish_closing(now);
                } else if self.session.reconnect.is_some() {
                    // The replacement failed before setupComplete; 1007/1008 on a resume
                    // means the handle was refused.
                    self.reconnect_failed(now, &why, matches!(code, 1007 | 1008));
                } else if self.phase == Phase::Live && self.session.standby.is_some() {
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
                if let Some(name) = self.tools.running.remove(&id) {
                    self.respond(id, name, result);
                } else {
                    tracing::debug!(id, "result of a cancelled tool call dropped");
                }
            }
            Input::Resumed(start) => self.on_resumed(start, now),
            Input::StandbyConnected => {
                if self.session.standby.is_some() {
                    if self.session.closing.is_some() {
                        // Connected in parallel; the setup waits for the newest handle.
                        self.session.standby_ready = true;
                    } else {
                        self.send_standby_setup();
                    }
                }
            }
            Input::Standby(ModelEvent::SetupComplete) => {
                if let Some(since) = self.session.standby.take() {
                    self.outputs.push_back(Output::PromoteStandby);
                    // A goAway from the old connection meanwhile is void on the new one.
                    self.session.go_away_deadline = None;
                    self.session.tools.clear();
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
                    for m in std::mem::take(&mut self.session.deferred) {
                        self.outputs.push_back(Output::ToModel(m));
                    }
                    if self.dtmf.is_held() {
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
                        self.session.resume_handle = Some(h);
                    }
                }
            }
            Input::Standby(ev) => {
                tracing::debug!(?ev, "standby event before setupComplete ignored")
            }
            Input::StandbyFailed(why) => {
                if self.session.standby.take().is_some() {
                    self.session.standby_ready = false;
                    tracing::warn!(
                        why,
                        "standby model connection failed; resuming on a new connection"
                    );
                    // The old connection is already closing (or closed): once its close is
                    // complete the conversation resumes close-first.
                    if self.session.closing.is_none() && self.phase == Phase::Live {
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
            self.playout.pump(now, self.last_voice, &mut self.outputs);
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
                    self.preconnect.push_connecting(&frame.payload);
                }
                Phase::Live if self.session.standby.is_some() || self.session.closing.is_some() => {
                    // Handover: hold caller audio for the new session.
                    self.note_caller_voice(&frame.payload, now);
                    self.preconnect.push_handover(&frame.payload);
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
                if self.dtmf.press(digit, now) {
                    self.flush_dtmf();
                }
            }
            CallerEvent::Mark { name } => self.playout.on_mark(&name, &mut self.outputs),
            CallerEvent::Stop => {
                if let Some(token) = self.awaiting_continuation() {
                    self.phase = Phase::Parked;
                    self.outputs.push_back(Output::Park { token });
                } else if self.tools.transferred {
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
                if let Some(r) = self.session.reconnect.take() {
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
                    let cut = self.turn.cut_reply.take();
                    self.turn.awaiting_continuation = cut.is_some();
                    if !r.resume {
                        let mut turns: Vec<Turn> =
                            self.transcript.history.iter().cloned().collect();
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
                    for m in std::mem::take(&mut self.session.deferred) {
                        self.outputs.push_back(Output::ToModel(m));
                    }
                    // Key presses held while no session was live.
                    if self.dtmf.is_held() {
                        self.flush_dtmf();
                    }
                    return;
                }
                let setup_ms = self
                    .session
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
                if self.dtmf.is_held() {
                    self.flush_dtmf();
                }
            }
            ModelEvent::Audio(pcm) => {
                if !self.playout.push_model_audio(&pcm) {
                    return;
                }
                self.turn.open = true;
                self.turn.tool_opened = None;
                self.turn.caller_spoke = false;
                self.turn.awaiting_continuation = false;
            }
            ModelEvent::Text(_) => {}
            ModelEvent::InputTranscription(t) => {
                self.last_activity = now;
                self.transcript.caller.push_str(&t);
                self.outputs
                    .push_back(Output::Event(CallEvent::CallerTranscript(t)));
            }
            ModelEvent::OutputTranscription(t) => {
                if !self.playout.is_discarding() {
                    self.turn.open = true;
                    self.transcript.agent.push_str(&t);
                    self.outputs
                        .push_back(Output::Event(CallEvent::AgentTranscript(t)));
                }
            }
            ModelEvent::Interrupted => self.on_interrupted(now),
            ModelEvent::GenerationComplete => {
                self.playout.finish_generation();
                self.turn.reply_due = false;
            }
            ModelEvent::TurnComplete => {
                self.playout.finish_generation();
                let odd = (!self.playout.is_discarding())
                    .then(|| self.odd_turn_end())
                    .flatten();
                if !self.playout.is_discarding() {
                    let agent = std::mem::take(&mut self.transcript.agent);
                    self.remember_turn(agent);
                }
                self.playout.take_turn_generated();
                self.playout.stop_discarding();
                self.turn.open = false;
                self.turn.tool_opened = None;
                self.turn.had_tool_call = false;
                self.turn.end_reason = None;
                self.turn.waiting_for_input = false;
                // With background reasoning (interactionStatus IN_PROGRESS) the model is not
                // done at turnComplete: a call action waits for the turn that ends IDLE.
                if !self.turn.in_progress {
                    if let Some(h) = self.tools.action.as_mut() {
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
                self.turn.end_reason = Some(reason);
            }
            ModelEvent::InteractionStatus(status) => {
                self.turn.in_progress = match status {
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
            ModelEvent::WaitingForInput => self.turn.waiting_for_input = true,
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
                if self.session.closing.is_some() || self.session.standby.is_some() {
                    tracing::debug!("goAway from the connection being replaced ignored");
                    return;
                }
                let left = time_left.unwrap_or(Duration::from_secs(30));
                self.session.go_away_ends = now
                    .checked_add(left)
                    .or_else(|| now.checked_add(Duration::from_secs(3_600)));
                // Switch at a quiet moment, and in any case before the end: keep a fifth of
                // the time left in hand (0.5 s to 5 s; ~5 s of the usual 50-60 s).
                let margin = (left / 5)
                    .clamp(Duration::from_millis(500), Duration::from_secs(5))
                    .min(left);
                // A nonsensical timeLeft (beyond what an Instant can hold) is capped.
                self.session.go_away_deadline = now
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
                        self.session.resume_handle = Some(h);
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

    /// A continued stream took over after `send_dtmf`: same model session, new Twilio stream.
    fn on_resumed(&mut self, start: StreamStart, now: Instant) {
        if self.phase != Phase::Parked {
            tracing::warn!("continued stream for a call that is not parked");
            return;
        }
        self.tools.awaiting = None;
        self.outputs.push_back(Output::Event(CallEvent::Continued {
            stream_sid: start.stream_sid.clone(),
        }));
        self.start = Some(start);
        self.phase = Phase::Live;
        // Nothing is queued at the new stream, and marks of the old one never come back.
        self.playout.new_stream();
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
            self.turn.reply_due = true;
            self.turn.caller_spoke = true;
            self.turn.retried = false;
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
        let super::playout::Cut {
            turn,
            heard_ms,
            sent_ms,
        } = self.playout.interrupt(now, &mut self.outputs);
        // The caller spoke over it: there is nothing left to finish.
        self.turn.awaiting_continuation = false;
        self.turn.cut_reply = None;
        self.outputs
            .push_back(Output::Event(CallEvent::Interrupted {
                turn,
                heard_ms,
                sent_ms,
            }));
        self.tell_what_was_heard(heard_ms);
        self.withdraw_action_on_barge_in(now);
    }

    fn flush_preconnect(&mut self) {
        let (uplink, out, outputs) = (&mut self.uplink, &mut self.uplink_out, &mut self.outputs);
        self.preconnect
            .drain_chunks(FLUSH_CHUNK_FRAMES * FRAME_BYTES, |bytes| {
                out.clear();
                uplink.process(bytes, out);
                if !out.is_empty() {
                    outputs.push_back(Output::ToModel(ModelOut::Audio(out.clone())));
                }
            });
    }

    fn flush_dtmf(&mut self) {
        let Some(digits) = self.dtmf.take(self.model_writable()) else {
            return;
        };
        self.outputs
            .push_back(Output::Event(CallEvent::Dtmf(digits.clone())));
        self.outputs
            .push_back(Output::ToModel(ModelOut::Text(format!(
                "[The caller pressed these keys on the phone keypad: {digits}]"
            ))));
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
