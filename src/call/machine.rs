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
    preconnect: PreconnectRing,

    // Downlink: model PCM 24 kHz → caller μ-law frames, paced, with marks.
    playout: Playout,

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

    dtmf: DtmfCollector,

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
        Ok(Call {
            phase: Phase::AwaitingStart,
            created: now,
            outputs: VecDeque::with_capacity(64),
            start: None,
            connect_requested: None,
            uplink: Uplink::new()?,
            uplink_out: Vec::with_capacity(4096),
            preconnect: PreconnectRing::new(settings.preconnect_frames),
            playout: Playout::new(&settings, now)?,
            answered_tools: HashSet::new(),
            action: None,
            awaiting: None,
            running_tools: HashMap::new(),
            transferred: false,
            wrap_up: None,
            last_activity: now,
            tokens_issued: 0,
            last_voice: None,
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
            dtmf: DtmfCollector::new(settings.dtmf_idle),
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
            self.history_len,
            self.deferred.len() + self.playout.footprint() + self.answered_tools.len(),
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
        consider(self.dtmf.deadline());
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
            consider(ahead(self.playout.queued_until()));
            consider(ahead(self.last_voice.map(|v| v + QUIET_AFTER_VOICE)));
        }
        if self.awaiting_continuation
            && self.settings.filler_after.is_some()
            && !self.playout.has_pending()
        {
            consider(ahead(
                self.playout.queued_until().map(|q| q + CONTINUATION_GAP),
            ));
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
                let busy_until = self.playout.queued_until().unwrap_or(self.last_activity);
                consider(ahead(Some(self.last_activity.max(busy_until) + t)));
            }
        }
        // The playout wakes when its lead has fallen to the refill point.
        consider(self.playout.deadline());
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
                Phase::Live if self.standby.is_some() || self.closing.is_some() => {
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
                    if self.dtmf.is_held() {
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
                if self.dtmf.is_held() {
                    self.flush_dtmf();
                }
            }
            ModelEvent::Audio(pcm) => {
                if !self.playout.push_model_audio(&pcm) {
                    return;
                }
                self.model_turn_open = true;
                self.tool_opened_turn = None;
                self.caller_spoke = false;
                self.awaiting_continuation = false;
            }
            ModelEvent::Text(_) => {}
            ModelEvent::InputTranscription(t) => {
                self.last_activity = now;
                self.caller_text.push_str(&t);
                self.outputs
                    .push_back(Output::Event(CallEvent::CallerTranscript(t)));
            }
            ModelEvent::OutputTranscription(t) => {
                if !self.playout.is_discarding() {
                    self.model_turn_open = true;
                    self.agent_text.push_str(&t);
                    self.outputs
                        .push_back(Output::Event(CallEvent::AgentTranscript(t)));
                }
            }
            ModelEvent::Interrupted => self.on_interrupted(now),
            ModelEvent::GenerationComplete => {
                self.playout.finish_generation();
                self.reply_due = false;
            }
            ModelEvent::TurnComplete => {
                self.playout.finish_generation();
                let odd = (!self.playout.is_discarding())
                    .then(|| self.odd_turn_end())
                    .flatten();
                if !self.playout.is_discarding() {
                    let agent = std::mem::take(&mut self.agent_text);
                    self.remember_turn(agent);
                }
                self.playout.take_turn_generated();
                self.playout.stop_discarding();
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
                    self.playout.finish_generation();
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
                    self.playout.finish_generation();
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
        let empty = self.playout.turn_generated() == 0
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
        if self.playout.is_empty() {
            let filler = self.settings.filler.clone();
            self.playout.enqueue_ulaw_turn(&filler);
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
        let super::playout::Cut {
            turn,
            heard_ms,
            sent_ms,
        } = self.playout.interrupt(now, &mut self.outputs);
        // The caller spoke over it: there is nothing left to finish.
        self.awaiting_continuation = false;
        self.cut_reply = None;
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
            && !self.playout.has_pending()
            && !self.playout.is_generating()
            && self
                .playout
                .queued_until()
                .is_none_or(|q| now >= q + CONTINUATION_GAP)
        {
            // The rest of the cut reply is late: no dead air meanwhile.
            self.awaiting_continuation = false;
            let filler = self.settings.filler.clone();
            self.playout.enqueue_ulaw_turn(&filler);
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
            let agent_busy = self.playout.is_busy(now);
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

        if self.dtmf.is_due(now) {
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
        let generated_ms = self.playout.take_turn_generated() / 48; // 24 kHz s16le: 48 bytes per ms
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
                && !self.playout.is_generating()
                && self.playout.is_drained(now)
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
                if self.playout.is_drained(now) {
                    let filler = self.settings.filler.clone();
                    self.playout.enqueue_ulaw_turn(&filler);
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
            self.playout.finish_generation();
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
        if self.playout.is_generating() && !self.playout.is_discarding() {
            let heard = std::mem::take(&mut self.agent_text).trim().to_string();
            self.remember_turn(format!("{heard}…"));
            self.cut_reply = Some(heard);
        }
        self.playout.finish_generation();
        self.playout.stop_discarding();
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
        let heard_all = (!a.wait_turn_complete || a.model_done) && self.playout.all_heard();
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
