//! The simulated Twilio caller: a WebSocket *client* that behaves like Twilio's side of a
//! bidirectional `<Connect><Stream>` (telephony spec §6), plus the voice-webhook step before it.
//!
//! Owns: the optional signed webhook POST and TwiML reading (§2.1, §2.3, §6.6), the signed
//! WebSocket upgrade (§6.1), `connected`/`start`/`media`/`dtmf`/`stop` on a non-drifting
//! 20 ms clock (§6.2, §6.4, §6.5), the playout queue with mark echo, `clear`, the 10-minute
//! cap and the 31950/31951 warnings (§6.3), a scripted "person" (say, wait, press keys, hang
//! up), and the [`CallReport`] of what the caller heard and when. Used by `callbridge call`,
//! `callbridge demo` and end-to-end tests.
//!
//! Does not own: anything of the bridge. It deliberately does not use `crate::twilio`: JSON is
//! built and read over `serde_json::Value` exactly as the spec describes, TwiML is read with a
//! private scanner, WAV/μ-law and HMAC are done locally, so a codec bug in the bridge cannot
//! hide by agreeing with itself.
//!
//! REST call updates (§3.4, §6.5 items 13-15): [`SimCallerHandle::update_trigger`] takes the
//! form fields of a Calls update, as a fake REST API receives them
//! ([`crate::sim::twilio_rest::FakeRestHandle::register_caller`] wires it up). `Status`
//! ends the call; `Twiml` or `Url` ends the current stream (`stop`, close 1000) and runs the
//! new TwiML: `<Play digits>`, `<Say>`, `<Pause>`, `<Dial>` (the call is transferred and
//! ends), `<Hangup>`, `<Redirect>`, and `<Connect><Stream>`, which opens a *new* WebSocket
//! (new StreamSid, counters from 1) on which the script carries on where it was. One
//! [`CallReport`] covers the whole call on one clock.
//!
//! Structure: [`CallerCore`] is sans-IO (time is an argument, messages in and out are
//! values); the async shell in this file only moves frames and time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use serde_json::{json, Map, Value};
use sha1::Sha1;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// 20 ms of 8 kHz μ-law.
pub const FRAME_BYTES: usize = 160;
/// Frame period.
pub const FRAME_MS: u64 = 20;
/// μ-law digital silence.
pub const ULAW_SILENCE: u8 = 0xFF;
/// Twilio's outbound queue limit: about 10 minutes of audio (§1.4), in bytes.
pub const DEFAULT_QUEUE_LIMIT_BYTES: usize = 600 * 8000;
/// Auth token used to sign when none is configured (a development value, not a secret).
pub const DEFAULT_AUTH_TOKEN: &str = "callbridge-dev-auth-token";
/// How long one key of a TwiML `<Play digits>` takes (tone and gap), ms; `w` takes 500 ms.
pub const PLAY_DIGIT_MS: u64 = 100;

/// Twilio warning/error codes the simulator records (§1.8).
pub mod codes {
    /// Non-101 answer to the upgrade (also: query string in the stream URL).
    pub const HANDSHAKE: u32 = 31920;
    /// The application closed the socket.
    pub const SERVER_CLOSED: u32 = 31921;
    /// Stream URL scheme is not `wss`.
    pub const BAD_SCHEME: u32 = 31922;
    /// Abrupt connection loss.
    pub const BROKEN_PIPE: u32 = 31903;
    /// More than ~10 minutes of outbound audio queued; excess discarded.
    pub const QUEUE_OVERFLOW: u32 = 31931;
    /// Bad `track` for `<Connect>`.
    pub const BAD_TRACK: u32 = 31941;
    /// Binary WebSocket frame.
    pub const BINARY_MESSAGE: u32 = 31950;
    /// Not JSON, unknown event, missing/extra fields, wrong streamSid.
    pub const INVALID_MESSAGE: u32 = 31951;
    /// TCP connect to a stream URL failed (used for any connect failure of a later stream).
    pub const CONNECTION_REFUSED: u32 = 31902;
    /// A TwiML URL could not be fetched or answered non-2xx (`Url` update, `<Redirect>`).
    pub const HTTP_RETRIEVAL: u32 = 11200;
    /// TwiML that is not a well-formed `<Response>` document (Twilio plays "an application
    /// error has occurred" and hangs up).
    pub const DOCUMENT_PARSE: u32 = 12100;
    /// A TwiML verb or attribute the simulator does not know (skipped, the document goes on).
    pub const SCHEMA_VALIDATION: u32 = 12200;
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a simulated call could not be placed (a call that ran and ended is a [`CallReport`],
/// whatever ended it).
#[derive(Debug, thiserror::Error)]
pub enum SimCallerError {
    /// Neither a stream URL nor a webhook was configured.
    #[error("sim caller needs a stream url or a webhook url")]
    NoTarget,
    /// The webhook request failed at the HTTP level.
    #[error("webhook request to {url} failed: {detail}")]
    Webhook {
        /// Webhook URL.
        url: String,
        /// Transport error text.
        detail: String,
    },
    /// The webhook answered with a non-2xx status.
    #[error("webhook {url} answered http {status}: {body}")]
    WebhookStatus {
        /// Webhook URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The TwiML has no `<Connect><Stream url>`.
    #[error("twiml has no <Connect><Stream url>: {twiml}")]
    NoStreamInTwiml {
        /// Start of the TwiML.
        twiml: String,
    },
    /// The stream URL has a query string (Twilio error 31920: use `<Parameter>`).
    #[error("stream url {url:?} has a query string (twilio 31920); use <Parameter> instead")]
    QueryStringInStreamUrl {
        /// The URL from the TwiML.
        url: String,
    },
    /// `<Stream track>` other than `inbound_track` inside `<Connect>` (Twilio 31941).
    #[error("<Stream track={track:?}> is not allowed with <Connect> (twilio 31941)")]
    BadTrack {
        /// The track attribute.
        track: String,
    },
    /// Stream URL is not `wss://` (Twilio 31922), or not a URL at all.
    #[error("stream url {url:?} is not a wss:// url (twilio 31922)")]
    BadStreamUrl {
        /// The URL.
        url: String,
    },
    /// Upgrade answered with something other than 101 (Twilio 31920).
    #[error("websocket handshake with {url} failed with http {status} (twilio 31920)")]
    Handshake {
        /// The URL connected to.
        url: String,
        /// HTTP status received.
        status: u16,
    },
    /// TCP/TLS connect failure (Twilio 31901/31902/31904/31910).
    #[error("could not connect to {url}: {detail}")]
    Connect {
        /// The URL connected to.
        url: String,
        /// Error text.
        detail: String,
    },
    /// A WAV file could not be used.
    #[error("wav {path}: {detail}")]
    Wav {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A script file could not be read or parsed.
    #[error("script {path}: {detail}")]
    Script {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Writing the heard audio failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The simulator task panicked or was cancelled.
    #[error("sim caller task failed: {0}")]
    Task(String),
}

// ---------------------------------------------------------------------------------------
// Script
// ---------------------------------------------------------------------------------------

/// One thing the simulated person does. Steps run in order on the 20 ms media clock.
#[derive(Debug, Clone)]
pub enum Step {
    /// Speak: send this μ-law audio (8 kHz) as inbound media, starting now — even if the agent
    /// is talking (that is how a barge-in is scripted).
    Say {
        /// Shown in the timeline (file name or label).
        label: String,
        /// μ-law bytes.
        audio: Arc<[u8]>,
    },
    /// Send silence for this long.
    Silence {
        /// Duration in ms.
        ms: u64,
    },
    /// Wait until some agent audio has been heard since this step began and then nothing has
    /// played for `quiet_ms` (the agent finished its turn); give up after `timeout_ms`.
    WaitForAgent {
        /// Required quiet after the agent's audio, ms.
        quiet_ms: u64,
        /// Give up (timeline warning) after this long, ms.
        timeout_ms: u64,
    },
    /// Wait until agent audio is playing right now (use before a `Say` to barge in).
    WaitForAgentAudio {
        /// Give up (timeline warning) after this long, ms.
        timeout_ms: u64,
    },
    /// Press keys, one `dtmf` message per key, [`StreamKnobs::dtmf_gap_ms`] apart.
    Dtmf {
        /// Keys: `0-9`, `*`, `#`.
        digits: String,
    },
    /// Hang up: `stop`, then close 1000.
    HangUp,
}

/// What the simulated person does, in order. When the steps run out the caller hangs up.
///
/// Built in code (`Script::new().wait_for_agent(800, 15_000).say_wav(p)?.hang_up()`) or
/// loaded with [`Script::from_file`] from TOML (or JSON with the same shape):
///
/// ```toml
/// steps = [
///   { wait_for_agent = { quiet_ms = 800, timeout_ms = 15000 } },  # hear the greeting
///   { say = "caller_hello.mulaw8k.wav" },                          # relative to this file
///   { wait_for_agent_audio = { timeout_ms = 10000 } },             # agent starts answering…
///   { silence_ms = 500 },
///   { say = "caller_bye.mulaw8k.wav" },                            # …and gets interrupted
///   { dtmf = "12#" },
///   "hang_up",
/// ]
/// ```
#[derive(Debug, Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
}

/// The on-disk script format (see [`Script`]). WAV paths are relative to the script file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    steps: Vec<StepSpec>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum StepSpec {
    Say(PathBuf),
    SilenceMs(u64),
    WaitForAgent { quiet_ms: u64, timeout_ms: u64 },
    WaitForAgentAudio { timeout_ms: u64 },
    Dtmf(String),
    HangUp,
}

impl Script {
    /// An empty script (the caller connects, stays silent and hangs up at once unless steps
    /// are added).
    pub fn new() -> Self {
        Self::default()
    }
    /// Append a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }
    /// Say μ-law audio.
    pub fn say_ulaw(self, label: impl Into<String>, audio: impl Into<Arc<[u8]>>) -> Self {
        self.step(Step::Say {
            label: label.into(),
            audio: audio.into(),
        })
    }
    /// Say a WAV file (μ-law or 16-bit PCM, 8 kHz mono).
    pub fn say_wav(self, path: impl AsRef<Path>) -> Result<Self, SimCallerError> {
        let path = path.as_ref();
        let audio = load_wav_ulaw(path)?;
        let label = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(self.say_ulaw(label, audio))
    }
    /// Stay silent for `ms`.
    pub fn silence(self, ms: u64) -> Self {
        self.step(Step::Silence { ms })
    }
    /// Wait for the agent to finish a turn.
    pub fn wait_for_agent(self, quiet_ms: u64, timeout_ms: u64) -> Self {
        self.step(Step::WaitForAgent {
            quiet_ms,
            timeout_ms,
        })
    }
    /// Wait until the agent is audibly talking.
    pub fn wait_for_agent_audio(self, timeout_ms: u64) -> Self {
        self.step(Step::WaitForAgentAudio { timeout_ms })
    }
    /// Press keys.
    pub fn dtmf(self, digits: impl Into<String>) -> Self {
        self.step(Step::Dtmf {
            digits: digits.into(),
        })
    }
    /// Hang up.
    pub fn hang_up(self) -> Self {
        self.step(Step::HangUp)
    }
    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
    /// Load a script from a `.toml` or `.json` file (format on [`Script`]).
    pub fn from_file(path: &Path) -> Result<Self, SimCallerError> {
        let err = |detail: String| SimCallerError::Script {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: ScriptFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut script = Script::new();
        for spec in file.steps {
            script = match spec {
                StepSpec::Say(p) => {
                    script.say_wav(if p.is_absolute() { p } else { base.join(p) })?
                }
                StepSpec::SilenceMs(ms) => script.silence(ms),
                StepSpec::WaitForAgent {
                    quiet_ms,
                    timeout_ms,
                } => script.wait_for_agent(quiet_ms, timeout_ms),
                StepSpec::WaitForAgentAudio { timeout_ms } => {
                    script.wait_for_agent_audio(timeout_ms)
                }
                StepSpec::Dtmf(d) => {
                    if let Some(bad) = d.chars().find(|c| !is_dtmf_key(*c)) {
                        return Err(err(format!("dtmf key {bad:?} is not one of 0-9 * #")));
                    }
                    script.dtmf(d)
                }
                StepSpec::HangUp => script.hang_up(),
            };
        }
        Ok(script)
    }
}

fn is_dtmf_key(c: char) -> bool {
    c.is_ascii_digit() || c == '*' || c == '#'
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

/// One thing that happened, `at_ms` after the WebSocket opened (when `connected` was sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Milliseconds since the stream opened.
    pub at_ms: u64,
    /// What happened.
    pub event: TimelineEvent,
}

/// Timeline events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineEvent {
    /// `connected` and `start` sent.
    StreamStarted {
        /// Our StreamSid.
        stream_sid: String,
    },
    /// First frame of a scripted utterance sent.
    UtteranceStart {
        /// Label (file name).
        label: String,
    },
    /// Last frame of a scripted utterance sent (time = end of its audio).
    UtteranceEnd {
        /// Label (file name).
        label: String,
    },
    /// The caller started hearing agent audio (a new agent turn).
    AgentAudioStart {
        /// Turn number, from 1.
        turn: u32,
    },
    /// The agent turn's audio ended (time = end of its last played byte).
    AgentAudioEnd {
        /// Turn number.
        turn: u32,
        /// Audio played in this turn, ms.
        played_ms: u64,
        /// Cut short by a `clear`.
        interrupted: bool,
    },
    /// A `mark` was echoed to the bridge.
    MarkEchoed {
        /// Mark name.
        name: String,
        /// `true` if playback reached it; `false` if it was returned by a `clear`.
        played: bool,
    },
    /// A `clear` arrived.
    ClearReceived {
        /// Queued audio dropped, ms.
        dropped_ms: u64,
        /// Marks returned.
        marks_returned: usize,
    },
    /// A DTMF key was sent.
    DtmfSent {
        /// The key.
        digit: char,
    },
    /// A Twilio warning/error was recorded (first occurrence per stream only).
    Warning {
        /// Twilio code, see [`codes`].
        code: u32,
        /// What triggered it.
        detail: String,
    },
    /// A scripted wait gave up.
    WaitTimedOut {
        /// Which wait.
        step: String,
    },
    /// We sent `stop` and closed.
    HungUp {
        /// Why.
        reason: CallEnding,
    },
    /// The bridge closed the socket first.
    BridgeClosed {
        /// Close code, if a close frame came.
        code: Option<u16>,
    },
    /// The call was updated over REST (new `Twiml`/`Url`): `stop` was sent on this stream and
    /// the socket closed with 1000; the call goes on with the new TwiML (§3.4).
    StreamStopped {
        /// The stream that ended.
        stream_sid: String,
    },
    /// `<Play digits>` ran (logged when it starts; `w` = 0.5 s, each key
    /// [`PLAY_DIGIT_MS`]).
    DigitsPlayed {
        /// The `digits` attribute as written.
        digits: String,
    },
    /// `<Say>` ran (logged when it starts; takes [`StreamKnobs::say_ms_per_char`] per char).
    Said {
        /// The text.
        text: String,
    },
    /// `<Dial>` ran: the call is transferred away and ends here.
    Dialed {
        /// The number, SIP URI or client name dialled (`<Number>`/`<Sip>`/`<Client>` text,
        /// or `<Dial>`'s own text).
        target: String,
        /// `<Dial callerId>`.
        caller_id: Option<String>,
        /// `<Dial timeout>` in seconds, if given (Twilio's default is 30).
        timeout: Option<u32>,
        /// `<Number url>` / `<Sip url>`: the whisper TwiML run for the callee before bridging.
        whisper_url: Option<String>,
    },
    /// The call ended while no stream was open (after a REST update): nothing was sent.
    CallEnded {
        /// Why.
        reason: CallEnding,
    },
}

/// Why the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnding {
    /// The script ran out or said `HangUp`.
    ScriptDone,
    /// [`SimCallerHandle::hang_up`] was called.
    HangUpRequested,
    /// The configured maximum duration elapsed.
    MaxDuration,
    /// The bridge closed the socket (Twilio would run the TwiML after `</Connect>`).
    BridgeClosed,
    /// The connection broke without a close handshake (31903).
    ConnectionLost,
    /// A REST update with `Status=completed` or `canceled` (distinct from
    /// [`SimCallerHandle::hang_up`], which stays [`CallEnding::HangUpRequested`]).
    CompletedByRest,
    /// A REST update's TwiML ran `<Dial>`: the call was transferred.
    Transferred,
    /// A REST update's TwiML ran `<Hangup>` or ran out of verbs.
    TwimlEnded,
    /// A REST update's TwiML was not usable (parse error 12100, fetch error 11200).
    ApplicationError,
    /// A REST update's `<Connect><Stream>` could not be opened (warning has the code).
    StreamFailed,
}

/// An echoed mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkEcho {
    /// Mark name.
    pub name: String,
    /// When it was echoed, ms since stream open.
    pub at_ms: u64,
    /// `true` if reached by playback, `false` if returned by `clear` (or at hang-up).
    pub played: bool,
}

/// What the webhook step exchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookExchange {
    /// The form fields POSTed (decoded, in wire order).
    pub form: Vec<(String, String)>,
    /// The `X-Twilio-Signature` sent.
    pub signature: String,
    /// The TwiML returned.
    pub twiml: String,
    /// `<Stream url>` from the TwiML.
    pub stream_url: String,
}

/// Everything the simulated caller observed.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// Events in time order.
    pub timeline: Vec<TimelineEntry>,
    /// What the caller heard: one 160-byte μ-law frame per 20 ms tick (played audio, padded
    /// with 0xFF), starting at `heard_offset_ms`.
    pub heard: Vec<u8>,
    /// Time (ms since stream open) of the first `heard` frame.
    pub heard_offset_ms: u64,
    /// What the caller said: every inbound media payload, concatenated.
    pub sent: Vec<u8>,
    /// `media` messages received from the bridge.
    pub media_messages_received: u64,
    /// Audio bytes received from the bridge (before any queue-cap discard).
    pub media_bytes_received: u64,
    /// `mark` messages received.
    pub marks_received: u64,
    /// `clear` messages received.
    pub clears_received: u64,
    /// Messages dropped as invalid (31950/31951), all of them, not once per stream.
    pub invalid_messages: u64,
    /// Inbound `media` frames sent.
    pub media_frames_sent: u64,
    /// Marks echoed, in order.
    pub marks: Vec<MarkEcho>,
    /// Twilio warning/error codes recorded (once per stream each).
    pub warnings: BTreeSet<u32>,
    /// Our StreamSid (`MZ…`): the latest stream's (see `stream_sids`).
    pub stream_sid: String,
    /// Every stream of the call in order: the first, then one per REST update whose TwiML
    /// had a `<Connect><Stream>` (§6.5 item 15).
    pub stream_sids: Vec<String>,
    /// Our CallSid (`CA…`).
    pub call_sid: String,
    /// Our AccountSid (`AC…`).
    pub account_sid: String,
    /// `start.customParameters` we sent (latest stream).
    pub custom_parameters: BTreeMap<String, String>,
    /// TwiML after `</Connect>` (what Twilio would run when the bridge closes the socket), of
    /// the latest stream's TwiML.
    pub fallback_twiml: Option<String>,
    /// The webhook exchange, if the call began with one.
    pub webhook: Option<WebhookExchange>,
    /// URL the upgrade signature was computed over (latest stream).
    pub signed_stream_url: String,
    /// Close code received from the bridge (if it closed first) or sent by us.
    pub close_code: Option<u16>,
    /// Why the call ended.
    pub ended_by: Option<CallEnding>,
    /// Stream status callbacks sent (`<Stream statusCallback>`, §1.6, §6.6 item 18).
    pub status_callbacks: Vec<StatusCallbackRecord>,
}

/// One stream status callback the simulator sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCallbackRecord {
    /// `stream-started` or `stream-stopped`.
    pub event: String,
    /// The URL requested (after any override).
    pub url: String,
    /// HTTP status, if a response came.
    pub status: Option<u16>,
    /// Transport error, if none came.
    pub error: Option<String>,
}

impl CallReport {
    /// Write `heard` as an 8 kHz μ-law WAV (format tag 7 with a `fact` chunk).
    pub fn write_heard_wav(&self, path: &Path) -> Result<(), SimCallerError> {
        std::fs::write(path, ulaw_wav_bytes(&self.heard)).map_err(|source| SimCallerError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Agent audio heard, ms (non-silent `heard` content is not inspected: this is played
    /// queue audio, including any silence the bridge sent).
    pub fn agent_audio_ms(&self) -> u64 {
        self.timeline
            .iter()
            .filter_map(|e| match e.event {
                TimelineEvent::AgentAudioEnd { played_ms, .. } => Some(played_ms),
                _ => None,
            })
            .sum()
    }

    /// A human-readable timeline, one line per event, then a summary.
    pub fn timeline_text(&self) -> String {
        let mut out = String::new();
        for e in &self.timeline {
            out.push_str(&format!("{:>7.3}s  {}\n", e.at_ms as f64 / 1000.0, e.event));
        }
        out.push_str(&format!(
            "stream {} call {}: sent {} frames; received {} media ({} bytes = {} ms), {} marks, {} clears; heard {} ms; warnings {:?}; ended by {:?}\n",
            self.stream_sid,
            self.call_sid,
            self.media_frames_sent,
            self.media_messages_received,
            self.media_bytes_received,
            self.media_bytes_received / 8,
            self.marks_received,
            self.clears_received,
            self.heard.len() / 8,
            self.warnings,
            self.ended_by,
        ));
        if self.stream_sids.len() > 1 {
            out.push_str(&format!("streams: {}\n", self.stream_sids.join(", ")));
        }
        if let Some(f) = &self.fallback_twiml {
            out.push_str(&format!("continue twiml after </Connect>: {f}\n"));
        }
        out
    }
}

impl fmt::Display for TimelineEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StreamStarted { stream_sid } => write!(f, "stream started {stream_sid}"),
            Self::UtteranceStart { label } => write!(f, "caller starts saying {label}"),
            Self::UtteranceEnd { label } => write!(f, "caller finished saying {label}"),
            Self::AgentAudioStart { turn } => write!(f, "agent audio starts (turn {turn})"),
            Self::AgentAudioEnd {
                turn,
                played_ms,
                interrupted,
            } => write!(
                f,
                "agent audio ends (turn {turn}, {played_ms} ms played{})",
                if *interrupted { ", interrupted" } else { "" }
            ),
            Self::MarkEchoed { name, played } => write!(
                f,
                "mark {name:?} echoed ({})",
                if *played {
                    "played"
                } else {
                    "returned unplayed"
                }
            ),
            Self::ClearReceived {
                dropped_ms,
                marks_returned,
            } => write!(
                f,
                "clear: dropped {dropped_ms} ms of queued audio, returned {marks_returned} marks"
            ),
            Self::DtmfSent { digit } => write!(f, "caller pressed {digit}"),
            Self::Warning { code, detail } => write!(f, "warning {code}: {detail}"),
            Self::WaitTimedOut { step } => write!(f, "gave up waiting ({step})"),
            Self::HungUp { reason } => write!(f, "caller hung up ({reason:?}): stop sent"),
            Self::BridgeClosed { code } => {
                write!(f, "bridge closed the socket (code {code:?}); twilio 31921")
            }
            Self::StreamStopped { stream_sid } => {
                write!(f, "call updated: stop sent on {stream_sid}, socket closed")
            }
            Self::DigitsPlayed { digits } => write!(f, "twiml <Play digits={digits:?}>"),
            Self::Said { text } => write!(f, "twiml <Say> {text:?}"),
            Self::Dialed {
                target,
                caller_id,
                timeout,
                whisper_url,
            } => write!(
                f,
                "twiml <Dial> {target} (callerId {caller_id:?}, timeout {timeout:?}, whisper {whisper_url:?}): transferred"
            ),
            Self::CallEnded { reason } => write!(f, "call ended ({reason:?})"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sans-IO core
// ---------------------------------------------------------------------------------------

/// Knobs of the stream behaviour (defaults follow Twilio, §6).
#[derive(Debug, Clone)]
pub struct StreamKnobs {
    /// `media.timestamp` of chunk 1, ms (Twilio: ≈150–170).
    pub start_offset_ms: u64,
    /// ± jitter on `media.timestamp`, ms (0 = exact).
    pub timestamp_jitter_ms: u64,
    /// Outbound queue cap, bytes (31931 beyond).
    pub queue_limit_bytes: usize,
    /// Echo pending marks (as unplayed) when the caller hangs up (unverified for Twilio); default false.
    pub echo_marks_on_hangup: bool,
    /// Silence that ends an agent turn in the timeline, ms.
    pub turn_gap_ms: u64,
    /// Gap between DTMF keys, ms.
    pub dtmf_gap_ms: u64,
    /// Network bunching (§6.2 item 5): hold the caller's frames from this time (ms since
    /// open) for `burst_frames` ticks, then deliver them all at once. Timestamps stay nominal.
    pub burst_at_ms: Option<u64>,
    /// How many frames a burst holds back.
    pub burst_frames: u32,
    /// Also play each DTMF key as its dual tone into the inbound audio for this long, ms
    /// (0 = off, the default: whether Twilio's `media` carries the tone is unverified).
    pub dtmf_inband_ms: u64,
    /// How long a TwiML `<Say>` from a REST update takes, per character, ms (default 60).
    pub say_ms_per_char: u64,
}

impl Default for StreamKnobs {
    fn default() -> Self {
        Self {
            start_offset_ms: 155,
            timestamp_jitter_ms: 0,
            queue_limit_bytes: DEFAULT_QUEUE_LIMIT_BYTES,
            echo_marks_on_hangup: false,
            turn_gap_ms: 300,
            dtmf_gap_ms: 100,
            burst_at_ms: None,
            burst_frames: 0,
            dtmf_inband_ms: 0,
            say_ms_per_char: 60,
        }
    }
}

enum Item {
    /// Audio with a read offset.
    Audio(Vec<u8>, usize),
    Mark(String),
}

/// Per-step progress.
#[derive(Default)]
struct StepState {
    started_at: Option<u64>,
    pos: usize,
    next_at: u64,
}

/// The simulated Twilio stream, sans-IO: feed it ticks and received frames with the time,
/// and it returns the JSON messages to send. Time is ms since the WebSocket opened.
pub struct CallerCore {
    knobs: StreamKnobs,
    report: CallReport,
    seq: u64,
    chunk: u64,
    queue: VecDeque<Item>,
    queued_audio: usize,
    /// Marks whose preceding audio finished during the last tick: echoed on the next tick.
    due_marks: Vec<String>,
    script: VecDeque<Step>,
    step: StepState,
    /// Agent-turn tracking for the timeline.
    turn: u32,
    in_turn: bool,
    turn_played_bytes: u64,
    last_audio_end_ms: Option<u64>,
    playing_now: bool,
    ended: bool,
    /// Caller frames held back by a burst knob.
    held: Vec<Value>,
    /// In-band DTMF tone being played: (key, samples done, samples total).
    tone: Option<(char, u64, u64)>,
    rng: rand::rngs::StdRng,
    /// A stream is open: media flows. False between a REST update's `stop` and the next
    /// `<Connect><Stream>` (the caller is still on the line, nothing is sent).
    streaming: bool,
    /// When the current stream opened (ms on the call's clock); its media starts
    /// `start_offset_ms` later.
    stream_open_ms: u64,
    /// Warning codes already recorded on the current stream (once per stream each).
    stream_warnings: BTreeSet<u32>,
    /// TwiML of a REST update being executed (verbs left), and until when the current verb
    /// takes.
    twiml_active: bool,
    verbs: VecDeque<Verb>,
    verb_wait_until: u64,
    /// URL the running TwiML came from (base of relative stream URLs); `None` for inline.
    doc_url: Option<String>,
    /// Something for the async shell to do (open a stream, fetch TwiML).
    action: Option<ShellAction>,
}

/// One TwiML verb of a REST update, as the simulator runs it.
#[derive(Debug, Clone)]
enum Verb {
    PlayDigits(String),
    Say(String),
    Pause(u64),
    Dial {
        target: String,
        caller_id: Option<String>,
        timeout: Option<u32>,
        whisper_url: Option<String>,
    },
    Connect(ConnectStream),
    Redirect {
        url: String,
        method: String,
    },
    Hangup,
    /// Skipped with a 12200 warning.
    Unknown(String),
}

/// What the core asks the async shell to do.
#[derive(Debug, Clone)]
enum ShellAction {
    /// Open a new stream; `base` resolves a relative URL.
    Connect {
        stream: ConnectStream,
        base: Option<String>,
    },
    /// Fetch TwiML (signed, like the voice webhook) and hand it to [`CallerCore::on_twiml`].
    Fetch { url: String, method: String },
}

impl CallerCore {
    /// A stream with these ids and parameters, about to send `connected`.
    pub fn new(
        knobs: StreamKnobs,
        script: Script,
        account_sid: String,
        call_sid: String,
        stream_sid: String,
        custom_parameters: BTreeMap<String, String>,
    ) -> Self {
        let report = CallReport {
            heard_offset_ms: knobs.start_offset_ms % FRAME_MS,
            stream_sids: vec![stream_sid.clone()],
            stream_sid,
            call_sid,
            account_sid,
            custom_parameters,
            ..CallReport::default()
        };
        Self {
            knobs,
            report,
            seq: 0,
            chunk: 0,
            queue: VecDeque::new(),
            queued_audio: 0,
            due_marks: Vec::new(),
            script: script.steps.into(),
            step: StepState::default(),
            turn: 0,
            in_turn: false,
            turn_played_bytes: 0,
            last_audio_end_ms: None,
            playing_now: false,
            ended: false,
            held: Vec::new(),
            tone: None,
            rng: rand::SeedableRng::from_rng(&mut rand::rng()),
            streaming: true,
            stream_open_ms: 0,
            stream_warnings: BTreeSet::new(),
            twiml_active: false,
            verbs: VecDeque::new(),
            verb_wait_until: 0,
            doc_url: None,
            action: None,
        }
    }

    /// Time of tick `k` (ms since open). Ticks are phase-aligned with the media clock so that
    /// chunk 1 falls exactly on `start_offset_ms`.
    pub fn tick_time(&self, k: u64) -> u64 {
        self.report.heard_offset_ms + FRAME_MS * k
    }

    /// Has the call ended (nothing more will be sent)?
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The report so far.
    pub fn report(&self) -> &CallReport {
        &self.report
    }

    /// Finish and take the report.
    pub fn into_report(mut self, now_ms: u64) -> CallReport {
        self.end_turn(now_ms, false);
        // Turn ends are logged when the gap is detected, with the earlier time of the audio's
        // end; a stable sort puts them in place without reordering same-time events.
        self.report.timeline.sort_by_key(|e| e.at_ms);
        self.report
    }

    /// Is a stream open (media flowing)? False between a REST update's `stop` and the next
    /// stream, and after the end.
    pub fn streaming(&self) -> bool {
        self.streaming && !self.ended
    }

    /// A new stream after a REST update's `<Connect><Stream>` opened at `now_ms`: fresh
    /// StreamSid and counters, these parameters; returns `connected` and `start`. The script
    /// continues where it was.
    pub fn begin_stream(
        &mut self,
        now_ms: u64,
        stream_sid: String,
        custom_parameters: BTreeMap<String, String>,
    ) -> Vec<Value> {
        self.chunk = 0;
        self.stream_warnings.clear();
        self.held.clear();
        self.tone = None;
        self.report.stream_sids.push(stream_sid.clone());
        self.report.stream_sid = stream_sid;
        self.report.custom_parameters = custom_parameters;
        self.report.close_code = None;
        self.streaming = true;
        self.stream_open_ms = now_ms;
        self.twiml_active = false;
        self.verbs.clear();
        self.opening_at(now_ms)
    }

    /// `connected` then `start` (§1.3, §6.1).
    pub fn opening(&mut self) -> Vec<Value> {
        let at = self.stream_open_ms;
        self.opening_at(at)
    }

    fn opening_at(&mut self, now_ms: u64) -> Vec<Value> {
        self.seq = 1;
        let r = &self.report;
        let out = vec![
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            json!({
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": r.account_sid,
                    "streamSid": r.stream_sid,
                    "callSid": r.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": r.custom_parameters,
                },
                "streamSid": r.stream_sid,
            }),
        ];
        let sid = self.report.stream_sid.clone();
        self.log(now_ms, TimelineEvent::StreamStarted { stream_sid: sid });
        out
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    fn log(&mut self, at_ms: u64, event: TimelineEvent) {
        tracing::debug!(at_ms, %event, "sim caller");
        self.report.timeline.push(TimelineEntry { at_ms, event });
    }

    fn warn_once(&mut self, at_ms: u64, code: u32, detail: impl Into<String>) {
        if self.stream_warnings.insert(code) {
            self.report.warnings.insert(code);
            self.log(
                at_ms,
                TimelineEvent::Warning {
                    code,
                    detail: detail.into(),
                },
            );
        }
    }

    fn mark_message(&mut self, name: &str, at_ms: u64, played: bool) -> Value {
        let seq = self.next_seq();
        self.report.marks.push(MarkEcho {
            name: name.to_string(),
            at_ms,
            played,
        });
        self.log(
            at_ms,
            TimelineEvent::MarkEchoed {
                name: name.to_string(),
                played,
            },
        );
        json!({
            "event": "mark",
            "sequenceNumber": seq,
            "streamSid": self.report.stream_sid,
            "mark": {"name": name},
        })
    }

    /// One 20 ms tick at `now_ms` (= `tick_time(k)`): play up to 160 bytes, echo reached
    /// marks, and (from `start_offset_ms` on) send one inbound `media` frame plus any
    /// scripted DTMF or hang-up.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        if !self.streaming {
            // Between streams: the caller hears nothing from the bridge and sends nothing;
            // the script waits (its timers keep running), the update's TwiML runs.
            self.playing_now = false;
            self.report
                .heard
                .extend_from_slice(&[ULAW_SILENCE; FRAME_BYTES]);
            self.step_verbs(now_ms);
            return out;
        }
        // Marks whose audio finished playing during the previous tick, then marks now at the
        // head of the queue (all audio before them was consumed on earlier ticks).
        for name in std::mem::take(&mut self.due_marks) {
            out.push(self.mark_message(&name, now_ms, true));
        }
        while let Some(Item::Mark(_)) = self.queue.front() {
            if let Some(Item::Mark(name)) = self.queue.pop_front() {
                out.push(self.mark_message(&name, now_ms, true));
            }
        }
        // Playout: up to 160 bytes, continuing across marks (they become due next tick).
        let mut frame = Vec::with_capacity(FRAME_BYTES);
        while frame.len() < FRAME_BYTES {
            match self.queue.front_mut() {
                Some(Item::Audio(bytes, off)) => {
                    let take = (FRAME_BYTES - frame.len()).min(bytes.len() - *off);
                    frame.extend_from_slice(&bytes[*off..*off + take]);
                    *off += take;
                    if *off == bytes.len() {
                        self.queue.pop_front();
                    }
                }
                Some(Item::Mark(_)) => {
                    if let Some(Item::Mark(name)) = self.queue.pop_front() {
                        self.due_marks.push(name);
                    }
                }
                None => break,
            }
        }
        let played = frame.len();
        self.queued_audio -= played;
        self.playing_now = played > 0;
        if played > 0 {
            if !self.in_turn {
                self.in_turn = true;
                self.turn += 1;
                self.turn_played_bytes = 0;
                let turn = self.turn;
                self.log(now_ms, TimelineEvent::AgentAudioStart { turn });
            }
            self.turn_played_bytes += played as u64;
            self.last_audio_end_ms = Some(now_ms + played as u64 / 8);
        } else if let Some(end) = self.last_audio_end_ms {
            if self.in_turn && now_ms.saturating_sub(end) >= self.knobs.turn_gap_ms {
                self.end_turn(now_ms, false);
            }
        }
        frame.resize(FRAME_BYTES, ULAW_SILENCE);
        self.report.heard.extend_from_slice(&frame);

        if now_ms >= self.stream_open_ms + self.knobs.start_offset_ms {
            let mut caller = Vec::new();
            self.caller_side(now_ms, &mut caller);
            let holding = self.knobs.burst_at_ms.is_some_and(|at| {
                now_ms >= at && now_ms < at + FRAME_MS * u64::from(self.knobs.burst_frames)
            });
            if holding && !self.ended {
                self.held.extend(caller);
            } else {
                // A hang-up ends the burst early: held frames still go out before `stop`.
                out.append(&mut self.held);
                out.extend(caller);
            }
        }
        out
    }

    fn end_turn(&mut self, _now_ms: u64, interrupted: bool) {
        if !self.in_turn {
            return;
        }
        self.in_turn = false;
        let at = self.last_audio_end_ms.unwrap_or(_now_ms);
        let (turn, played_ms) = (self.turn, self.turn_played_bytes / 8);
        self.log(
            at,
            TimelineEvent::AgentAudioEnd {
                turn,
                played_ms,
                interrupted,
            },
        );
    }

    /// Run the script for this media tick and send the frame.
    fn caller_side(&mut self, now_ms: u64, out: &mut Vec<Value>) {
        let mut audio: Option<Vec<u8>> = None;
        let mut dtmf: Option<char> = None;
        let mut hang_up = false;
        loop {
            let Some(step) = self.script.front().cloned() else {
                hang_up = true;
                break;
            };
            let started = *self.step.started_at.get_or_insert(now_ms);
            match step {
                Step::Say { label, audio: a } => {
                    if self.step.pos == 0 {
                        self.log(
                            now_ms,
                            TimelineEvent::UtteranceStart {
                                label: label.clone(),
                            },
                        );
                    }
                    let end = (self.step.pos + FRAME_BYTES).min(a.len());
                    let chunk = a[self.step.pos..end].to_vec();
                    let n = chunk.len() as u64;
                    self.step.pos = end;
                    audio = Some(chunk);
                    if end == a.len() {
                        self.log(now_ms + n / 8, TimelineEvent::UtteranceEnd { label });
                        self.advance();
                    }
                    break;
                }
                Step::Silence { ms } => {
                    if now_ms >= started + ms {
                        self.advance();
                        continue;
                    }
                    break;
                }
                Step::WaitForAgent {
                    quiet_ms,
                    timeout_ms,
                } => {
                    let heard_since = self.last_audio_end_ms.is_some_and(|e| e > started);
                    let quiet = !self.playing_now
                        && self.queued_audio == 0
                        && self
                            .last_audio_end_ms
                            .is_some_and(|e| now_ms.saturating_sub(e) >= quiet_ms);
                    if heard_since && quiet {
                        self.advance();
                        continue;
                    }
                    if now_ms >= started + timeout_ms {
                        self.log(
                            now_ms,
                            TimelineEvent::WaitTimedOut {
                                step: format!("wait_for_agent quiet {quiet_ms} ms"),
                            },
                        );
                        self.advance();
                        continue;
                    }
                    break;
                }
                Step::WaitForAgentAudio { timeout_ms } => {
                    if self.playing_now {
                        self.advance();
                        continue;
                    }
                    if now_ms >= started + timeout_ms {
                        self.log(
                            now_ms,
                            TimelineEvent::WaitTimedOut {
                                step: "wait_for_agent_audio".into(),
                            },
                        );
                        self.advance();
                        continue;
                    }
                    break;
                }
                Step::Dtmf { digits } => {
                    if now_ms < self.step.next_at {
                        break;
                    }
                    match digits.chars().nth(self.step.pos) {
                        Some(d) => {
                            dtmf = Some(d);
                            self.step.pos += 1;
                            self.step.next_at = now_ms + self.knobs.dtmf_gap_ms;
                            if self.step.pos >= digits.chars().count() {
                                self.advance();
                            }
                        }
                        None => {
                            self.advance();
                            continue;
                        }
                    }
                    break;
                }
                Step::HangUp => {
                    self.advance();
                    hang_up = true;
                    break;
                }
            }
        }
        if hang_up {
            out.extend(self.hang_up(now_ms, CallEnding::ScriptDone));
            return;
        }
        let mut payload = audio.unwrap_or_default();
        payload.resize(FRAME_BYTES, ULAW_SILENCE);
        if let (Some(d), true) = (dtmf, self.knobs.dtmf_inband_ms > 0) {
            self.tone = Some((d, 0, self.knobs.dtmf_inband_ms * 8));
        }
        if let Some((key, done, total)) = self.tone {
            for (i, b) in payload.iter_mut().enumerate() {
                let n = done + i as u64;
                if n < total {
                    *b = ulaw_encode(dtmf_tone_sample(key, n));
                }
            }
            let done = done + FRAME_BYTES as u64;
            self.tone = (done < total).then_some((key, done, total));
        }
        out.push(self.media_message(&payload));
        if let Some(digit) = dtmf {
            let seq = self.next_seq();
            self.log(now_ms, TimelineEvent::DtmfSent { digit });
            out.push(json!({
                "event": "dtmf",
                "streamSid": self.report.stream_sid,
                "sequenceNumber": seq,
                "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
            }));
        }
    }

    fn advance(&mut self) {
        self.script.pop_front();
        self.step = StepState::default();
    }

    fn media_message(&mut self, payload: &[u8]) -> Value {
        self.chunk += 1;
        let seq = self.next_seq();
        let mut ts = self.knobs.start_offset_ms + FRAME_MS * (self.chunk - 1);
        if self.knobs.timestamp_jitter_ms > 0 {
            let j = self.knobs.timestamp_jitter_ms as i64;
            ts = ts.saturating_add_signed(self.rng.random_range(-j..=j));
        }
        self.report.media_frames_sent += 1;
        self.report.sent.extend_from_slice(payload);
        json!({
            "event": "media",
            "sequenceNumber": seq,
            "media": {
                "track": "inbound",
                "chunk": self.chunk.to_string(),
                "timestamp": ts.to_string(),
                "payload": base64::engine::general_purpose::STANDARD.encode(payload),
            },
            "streamSid": self.report.stream_sid,
        })
    }

    /// Hang up now: (optionally pending marks), `stop` with the next sequence number (§6.5).
    /// The shell then closes with 1000. Between streams nothing is sent ([`TimelineEvent::CallEnded`]).
    pub fn hang_up(&mut self, now_ms: u64, reason: CallEnding) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        if !self.streaming {
            self.end_call(now_ms, reason);
            return out;
        }
        if self.knobs.echo_marks_on_hangup {
            for name in self.take_all_marks() {
                out.push(self.mark_message(&name, now_ms, false));
            }
        }
        self.end_turn(now_ms, false);
        let seq = self.next_seq();
        out.push(json!({
            "event": "stop",
            "sequenceNumber": seq,
            "streamSid": self.report.stream_sid,
            "stop": {"accountSid": self.report.account_sid, "callSid": self.report.call_sid},
        }));
        self.log(now_ms, TimelineEvent::HungUp { reason });
        self.report.ended_by = Some(reason);
        self.report.close_code = Some(1000);
        self.ended = true;
        self.streaming = false;
        out
    }

    /// End the call with no stream open (nothing to send).
    fn end_call(&mut self, now_ms: u64, reason: CallEnding) {
        if self.ended {
            return;
        }
        self.end_turn(now_ms, false);
        self.log(now_ms, TimelineEvent::CallEnded { reason });
        self.report.ended_by = Some(reason);
        self.ended = true;
        self.streaming = false;
        self.twiml_active = false;
        self.verbs.clear();
        self.action = None;
    }

    /// End the current stream because the call was updated (§3.4): frames held by a burst,
    /// then `stop` with the next sequence number. Queued agent audio is dropped (pending
    /// marks echoed unplayed only with [`StreamKnobs::echo_marks_on_hangup`]). The shell
    /// then closes the socket with 1000; the call goes on.
    fn stop_stream(&mut self, now_ms: u64) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended || !self.streaming {
            return out;
        }
        out.append(&mut self.held);
        let marks = self.take_all_marks();
        if self.knobs.echo_marks_on_hangup {
            for name in marks {
                out.push(self.mark_message(&name, now_ms, false));
            }
        }
        self.due_marks.clear();
        self.end_turn(now_ms, false);
        self.playing_now = false;
        self.tone = None;
        let seq = self.next_seq();
        out.push(json!({
            "event": "stop",
            "sequenceNumber": seq,
            "streamSid": self.report.stream_sid,
            "stop": {"accountSid": self.report.account_sid, "callSid": self.report.call_sid},
        }));
        let stream_sid = self.report.stream_sid.clone();
        self.log(now_ms, TimelineEvent::StreamStopped { stream_sid });
        self.report.close_code = Some(1000);
        self.streaming = false;
        out
    }

    /// A REST update of the call with these (decoded) form fields (§3.2, §3.4). `Status`
    /// (`completed`/`canceled`) hangs up ([`CallEnding::CompletedByRest`]); `Twiml` (or
    /// else `Url`) stops the current stream and runs the new TwiML. Returns what to send on
    /// the current stream (the `stop`). Anything left of an earlier update's TwiML is
    /// dropped, as on Twilio.
    pub fn on_update(&mut self, now_ms: u64, fields: &[(String, String)]) -> Vec<Value> {
        if self.ended {
            return Vec::new();
        }
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if let Some(status) = get("Status") {
            if status == "completed" || status == "canceled" {
                return self.hang_up(now_ms, CallEnding::CompletedByRest);
            }
            self.warn(
                now_ms,
                codes::SCHEMA_VALIDATION,
                format!("update with Status={status:?} ignored"),
            );
            return Vec::new();
        }
        let twiml = get("Twiml");
        let url = get("Url");
        if twiml.is_none() && url.is_none() {
            return Vec::new();
        }
        let out = self.stop_stream(now_ms);
        self.verbs.clear();
        self.action = None;
        self.twiml_active = false;
        match (twiml, url) {
            (Some(t), _) => {
                self.doc_url = None;
                self.run_twiml(now_ms, &t);
            }
            (None, Some(url)) => {
                let method = get("Method").unwrap_or_else(|| "POST".into());
                self.action = Some(ShellAction::Fetch { url, method });
            }
            (None, None) => {}
        }
        out
    }

    /// TwiML fetched for a `Url` update or `<Redirect>` (or why it could not be).
    fn on_twiml(&mut self, now_ms: u64, url: &str, fetched: Result<String, String>) {
        if self.ended {
            return;
        }
        match fetched {
            Ok(twiml) => {
                self.doc_url = Some(url.to_string());
                self.run_twiml(now_ms, &twiml);
            }
            Err(detail) => {
                self.warn(now_ms, codes::HTTP_RETRIEVAL, format!("{url}: {detail}"));
                self.end_call(now_ms, CallEnding::ApplicationError);
            }
        }
    }

    /// A later stream could not be opened: record why and end the call.
    fn stream_failed(&mut self, now_ms: u64, code: u32, detail: String) {
        self.warn(now_ms, code, detail);
        self.end_call(now_ms, CallEnding::StreamFailed);
    }

    fn run_twiml(&mut self, now_ms: u64, twiml: &str) {
        match parse_verbs(twiml) {
            Ok(verbs) => {
                self.verbs = verbs.into();
                self.twiml_active = true;
                self.verb_wait_until = now_ms;
                self.step_verbs(now_ms);
            }
            Err(detail) => {
                self.warn(
                    now_ms,
                    codes::DOCUMENT_PARSE,
                    format!("invalid twiml: {detail}"),
                );
                self.end_call(now_ms, CallEnding::ApplicationError);
            }
        }
    }

    /// Run the update's verbs whose time has come.
    fn step_verbs(&mut self, now_ms: u64) {
        while self.twiml_active && !self.ended && self.action.is_none() {
            if now_ms < self.verb_wait_until {
                return;
            }
            let Some(verb) = self.verbs.pop_front() else {
                // The document ran out: Twilio hangs up.
                self.end_call(now_ms, CallEnding::TwimlEnded);
                return;
            };
            match verb {
                Verb::PlayDigits(digits) => {
                    let mut ms = 0;
                    for c in digits.chars() {
                        match c {
                            'w' | 'W' => ms += 500,
                            c if is_dtmf_key(c) => ms += PLAY_DIGIT_MS,
                            c => self.warn(
                                now_ms,
                                codes::SCHEMA_VALIDATION,
                                format!("<Play digits> character {c:?} skipped"),
                            ),
                        }
                    }
                    self.log(now_ms, TimelineEvent::DigitsPlayed { digits });
                    self.verb_wait_until = now_ms + ms;
                }
                Verb::Say(text) => {
                    let ms = text.chars().count() as u64 * self.knobs.say_ms_per_char;
                    self.log(now_ms, TimelineEvent::Said { text });
                    self.verb_wait_until = now_ms + ms;
                }
                Verb::Pause(ms) => self.verb_wait_until = now_ms + ms,
                Verb::Dial {
                    target,
                    caller_id,
                    timeout,
                    whisper_url,
                } => {
                    self.log(
                        now_ms,
                        TimelineEvent::Dialed {
                            target,
                            caller_id,
                            timeout,
                            whisper_url,
                        },
                    );
                    self.end_call(now_ms, CallEnding::Transferred);
                }
                Verb::Connect(stream) => {
                    // Verbs after </Connect> wait for the bridge to close the new stream.
                    self.report.fallback_twiml = stream.fallback.clone();
                    self.twiml_active = false;
                    self.verbs.clear();
                    self.action = Some(ShellAction::Connect {
                        stream,
                        base: self.doc_url.clone(),
                    });
                }
                Verb::Redirect { url, method } => {
                    self.twiml_active = false;
                    self.verbs.clear();
                    self.action = Some(ShellAction::Fetch { url, method });
                }
                Verb::Hangup => self.end_call(now_ms, CallEnding::TwimlEnded),
                Verb::Unknown(what) => self.warn(
                    now_ms,
                    codes::SCHEMA_VALIDATION,
                    format!("{what} is not simulated; skipped"),
                ),
            }
        }
    }

    /// Record a call-level warning (every occurrence).
    fn warn(&mut self, at_ms: u64, code: u32, detail: impl Into<String>) {
        self.report.warnings.insert(code);
        self.log(
            at_ms,
            TimelineEvent::Warning {
                code,
                detail: detail.into(),
            },
        );
    }

    fn take_action(&mut self) -> Option<ShellAction> {
        self.action.take()
    }

    /// The bridge closed the socket: record 31921 and send nothing more (§6.5 item 14).
    pub fn bridge_closed(&mut self, now_ms: u64, code: Option<u16>) {
        if self.ended {
            return;
        }
        self.end_turn(now_ms, false);
        self.log(now_ms, TimelineEvent::BridgeClosed { code });
        self.warn_once(now_ms, codes::SERVER_CLOSED, "the bridge closed the stream");
        self.report.close_code = code;
        self.report.ended_by = Some(CallEnding::BridgeClosed);
        self.ended = true;
    }

    /// The connection broke (31903).
    pub fn connection_lost(&mut self, now_ms: u64, detail: &str) {
        if self.ended {
            return;
        }
        self.end_turn(now_ms, false);
        self.warn_once(now_ms, codes::BROKEN_PIPE, detail.to_string());
        self.report.ended_by = Some(CallEnding::ConnectionLost);
        self.ended = true;
    }

    /// A binary frame arrived: dropped, 31950 once.
    pub fn on_binary(&mut self, now_ms: u64, len: usize) {
        self.report.invalid_messages += 1;
        self.warn_once(
            now_ms,
            codes::BINARY_MESSAGE,
            format!("binary frame of {len} bytes dropped"),
        );
    }

    /// A text frame arrived from the bridge (§6.3). Returns messages to send (marks
    /// returned by a `clear`).
    pub fn on_text(&mut self, text: &str, now_ms: u64) -> Vec<Value> {
        if self.ended || !self.streaming {
            return Vec::new();
        }
        match self.check_message(text) {
            Ok(Accepted::Media(bytes)) => {
                self.report.media_messages_received += 1;
                self.report.media_bytes_received += bytes.len() as u64;
                let room = self
                    .knobs
                    .queue_limit_bytes
                    .saturating_sub(self.queued_audio);
                let mut bytes = bytes;
                if bytes.len() > room {
                    self.warn_once(
                        now_ms,
                        codes::QUEUE_OVERFLOW,
                        format!(
                            "more than {} s of audio queued; {} bytes discarded",
                            self.knobs.queue_limit_bytes / 8000,
                            bytes.len() - room
                        ),
                    );
                    bytes.truncate(room);
                }
                if !bytes.is_empty() {
                    self.queued_audio += bytes.len();
                    self.queue.push_back(Item::Audio(bytes, 0));
                }
                Vec::new()
            }
            Ok(Accepted::Mark(name)) => {
                self.report.marks_received += 1;
                self.queue.push_back(Item::Mark(name));
                Vec::new()
            }
            Ok(Accepted::Clear) => {
                self.report.clears_received += 1;
                let dropped_ms = self.queued_audio as u64 / 8;
                // Marks already reached (due) were played; the rest are returned unplayed.
                let due = std::mem::take(&mut self.due_marks);
                let pending = self.take_all_marks();
                self.queued_audio = 0;
                self.log(
                    now_ms,
                    TimelineEvent::ClearReceived {
                        dropped_ms,
                        marks_returned: due.len() + pending.len(),
                    },
                );
                if dropped_ms > 0 || self.playing_now {
                    self.last_audio_end_ms = Some(now_ms);
                    self.end_turn(now_ms, true);
                }
                let mut out = Vec::new();
                for name in due {
                    out.push(self.mark_message(&name, now_ms, true));
                }
                for name in pending {
                    out.push(self.mark_message(&name, now_ms, false));
                }
                out
            }
            Err(detail) => {
                self.report.invalid_messages += 1;
                tracing::debug!(%detail, "sim caller dropped an invalid message");
                self.warn_once(now_ms, codes::INVALID_MESSAGE, detail);
                Vec::new()
            }
        }
    }

    /// Empty the queue, returning the marks in it in order.
    fn take_all_marks(&mut self) -> Vec<String> {
        let marks = self
            .queue
            .drain(..)
            .filter_map(|i| match i {
                Item::Mark(n) => Some(n),
                Item::Audio(..) => None,
            })
            .collect();
        self.queued_audio = 0;
        marks
    }

    /// Validate one bridge→Twilio message with Twilio's strictness: exactly the documented
    /// keys, the right streamSid (§1.4 "What happens with bad messages").
    fn check_message(&self, text: &str) -> Result<Accepted, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not json: {e}"))?;
        let obj = v.as_object().ok_or("not a json object")?;
        let event = obj
            .get("event")
            .and_then(Value::as_str)
            .ok_or("missing string field event")?;
        let expect_keys = |o: &Map<String, Value>, keys: &[&str], what: &str| {
            let mut have: Vec<&str> = o.keys().map(String::as_str).collect();
            have.sort_unstable();
            let mut want = keys.to_vec();
            want.sort_unstable();
            if have == want {
                Ok(())
            } else {
                Err(format!(
                    "{what} has keys {have:?}, expected exactly {want:?}"
                ))
            }
        };
        match event {
            "media" => expect_keys(obj, &["event", "streamSid", "media"], "media message")?,
            "mark" => expect_keys(obj, &["event", "streamSid", "mark"], "mark message")?,
            "clear" => expect_keys(obj, &["event", "streamSid"], "clear message")?,
            other => return Err(format!("unknown event {:?}", short(other))),
        }
        match obj.get("streamSid").and_then(Value::as_str) {
            Some(s) if s == self.report.stream_sid => {}
            Some(s) => return Err(format!("{event} with wrong streamSid {:?}", short(s))),
            None => return Err(format!("{event} streamSid is not a string")),
        }
        match event {
            "media" => {
                let media = obj["media"]
                    .as_object()
                    .ok_or("media.media is not an object")?;
                expect_keys(media, &["payload"], "media.media")?;
                let payload = media["payload"]
                    .as_str()
                    .ok_or("media.payload is not a string")?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .map_err(|e| format!("media.payload is not base64: {e}"))?;
                Ok(Accepted::Media(bytes))
            }
            "mark" => {
                let mark = obj["mark"]
                    .as_object()
                    .ok_or("mark.mark is not an object")?;
                expect_keys(mark, &["name"], "mark.mark")?;
                let name = mark["name"].as_str().ok_or("mark.name is not a string")?;
                Ok(Accepted::Mark(name.to_string()))
            }
            _ => Ok(Accepted::Clear),
        }
    }
}

enum Accepted {
    Media(Vec<u8>),
    Mark(String),
    Clear,
}

fn short(s: &str) -> String {
    s.chars().take(48).collect()
}

// ---------------------------------------------------------------------------------------
// Builder, handle and the async shell
// ---------------------------------------------------------------------------------------

/// What to do with a query string in `<Stream url>` (§6.6 item 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryStringPolicy {
    /// Fail the call with 31920, as Twilio's docs say (default).
    #[default]
    Fail,
    /// Connect without it (observed once).
    Strip,
}

/// Entry point: `SimCaller::builder()`.
pub struct SimCaller;

impl SimCaller {
    /// Start configuring a simulated call.
    pub fn builder() -> SimCallerBuilder {
        SimCallerBuilder::default()
    }
}

/// Configures and spawns one simulated call.
#[derive(Debug, Clone)]
pub struct SimCallerBuilder {
    stream_url: Option<String>,
    signed_stream_url: Option<String>,
    webhook: Option<String>,
    public_webhook_url: Option<String>,
    connect_override: Option<String>,
    callback_override: Option<String>,
    auth_token: String,
    from: String,
    to: String,
    custom_parameters: BTreeMap<String, String>,
    script: Script,
    knobs: StreamKnobs,
    max_duration: Duration,
    query_string_policy: QueryStringPolicy,
    allow_ws_scheme: bool,
    account_sid: Option<String>,
    call_sid: Option<String>,
}

impl Default for SimCallerBuilder {
    fn default() -> Self {
        Self {
            stream_url: None,
            signed_stream_url: None,
            webhook: None,
            public_webhook_url: None,
            connect_override: None,
            callback_override: None,
            auth_token: DEFAULT_AUTH_TOKEN.to_string(),
            from: "+14155550123".to_string(),
            to: "+15005550006".to_string(),
            custom_parameters: BTreeMap::new(),
            script: Script::new(),
            knobs: StreamKnobs::default(),
            max_duration: Duration::from_secs(120),
            query_string_policy: QueryStringPolicy::Fail,
            allow_ws_scheme: false,
            account_sid: None,
            call_sid: None,
        }
    }
}

impl SimCallerBuilder {
    /// Use this AccountSid (`AC…`) instead of a random one.
    pub fn account_sid(mut self, sid: impl Into<String>) -> Self {
        self.account_sid = Some(sid.into());
        self
    }
    /// Use this CallSid (`CA…`) instead of a random one (e.g. to register the call with a
    /// fake REST API before it starts).
    pub fn call_sid(mut self, sid: impl Into<String>) -> Self {
        self.call_sid = Some(sid.into());
        self
    }

    /// Connect straight to this media-stream URL (no webhook). `ws://` is fine here.
    pub fn stream_url(mut self, url: impl Into<String>) -> Self {
        self.stream_url = Some(url.into());
        self
    }
    /// URL the upgrade signature is computed over (default: the stream URL with its scheme
    /// forced to `wss`, which is what Twilio signs). First stream only: streams opened by a
    /// REST update sign their TwiML URL.
    pub fn signed_stream_url(mut self, url: impl Into<String>) -> Self {
        self.signed_stream_url = Some(url.into());
        self
    }
    /// POST the voice webhook first and connect where its TwiML says.
    pub fn webhook(mut self, url: impl Into<String>) -> Self {
        self.webhook = Some(url.into());
        self
    }
    /// The public webhook URL the bridge believes it is served at (signature input); default
    /// the webhook URL itself.
    pub fn public_webhook_url(mut self, url: impl Into<String>) -> Self {
        self.public_webhook_url = Some(url.into());
        self
    }
    /// Replace scheme+host+port of the TwiML's stream URL (e.g. `ws://127.0.0.1:8080`),
    /// keeping its path; the signature still covers the TwiML URL. Applies to every stream
    /// of the call, including those opened by a REST update's `<Connect><Stream>`.
    pub fn connect_override(mut self, base: impl Into<String>) -> Self {
        self.connect_override = Some(base.into());
        self
    }
    /// Replace scheme+host+port of `<Stream statusCallback>` URLs and of TwiML URLs fetched
    /// after a REST update (`Url`, `<Redirect>`), keeping the path; by default such a URL on
    /// the public webhook's host goes to the real webhook's host.
    pub fn callback_override(mut self, base: impl Into<String>) -> Self {
        self.callback_override = Some(base.into());
        self
    }
    /// Auth token used for `X-Twilio-Signature`.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = token.into();
        self
    }
    /// Caller number (`From`/`Caller`).
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.from = from.into();
        self
    }
    /// Called number (`To`/`Called`).
    pub fn to(mut self, to: impl Into<String>) -> Self {
        self.to = to.into();
        self
    }
    /// `customParameters` when no webhook supplies `<Parameter>`s.
    pub fn custom_parameter(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.custom_parameters.insert(name.into(), value.into());
        self
    }
    /// What the person does.
    pub fn script(mut self, script: Script) -> Self {
        self.script = script;
        self
    }
    /// Stream knobs (offsets, jitter, queue cap, …).
    pub fn knobs(mut self, knobs: StreamKnobs) -> Self {
        self.knobs = knobs;
        self
    }
    /// Hang up after this long no matter what (default 120 s).
    pub fn max_duration(mut self, d: Duration) -> Self {
        self.max_duration = d;
        self
    }
    /// Query string in `<Stream url>`: fail (default) or strip.
    pub fn query_string_policy(mut self, p: QueryStringPolicy) -> Self {
        self.query_string_policy = p;
        self
    }
    /// Accept `ws://` in TwiML (Twilio refuses it with 31922; default false).
    pub fn allow_ws_scheme(mut self, allow: bool) -> Self {
        self.allow_ws_scheme = allow;
        self
    }

    /// Start the call in a background task.
    pub fn spawn(self) -> SimCallerHandle {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(self, control_rx));
        SimCallerHandle { task, control_tx }
    }
}

/// What the handle asks of the running call.
enum Control {
    HangUp,
    Update(Vec<(String, String)>),
}

/// A running simulated call.
pub struct SimCallerHandle {
    task: JoinHandle<Result<CallReport, SimCallerError>>,
    control_tx: mpsc::UnboundedSender<Control>,
}

impl SimCallerHandle {
    /// Ask the caller to hang up now (`stop`, close 1000; ended by
    /// [`CallEnding::HangUpRequested`]).
    pub fn hang_up(&self) {
        // If the call already ended the receiver is gone; nothing to do.
        let _ = self.control_tx.send(Control::HangUp);
    }

    /// A cloneable function that hangs the call up, for callbacks such as a fake REST API.
    pub fn hang_up_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let tx = self.control_tx.clone();
        move || {
            let _ = tx.send(Control::HangUp);
        }
    }

    /// A function that applies a REST update of the call (§3.2, §3.4), given the decoded form
    /// fields (what [`crate::sim::twilio_rest::CallUpdate::fields`] holds):
    ///
    /// * `Status=completed|canceled`: `stop`, close 1000, the call ends
    ///   ([`CallEnding::CompletedByRest`]).
    /// * `Twiml=<Response>…`: `stop` (next sequence number) and close 1000 on the current
    ///   stream, then the TwiML runs in order: `<Play digits>` ([`TimelineEvent::DigitsPlayed`],
    ///   `w` = 500 ms, a key [`PLAY_DIGIT_MS`]), `<Say>` ([`TimelineEvent::Said`]), `<Pause
    ///   length>`, `<Dial>` ([`TimelineEvent::Dialed`]; ends [`CallEnding::Transferred`]),
    ///   `<Hangup>` or the end of the document ([`CallEnding::TwimlEnded`]), `<Redirect>`
    ///   (fetched like `Url`), and `<Connect><Stream>`: a new WebSocket (same CallSid and
    ///   AccountSid, new StreamSid, counters from 1, its `<Parameter>`s, same connect
    ///   override and signing), on which the script continues where it was; verbs after
    ///   `</Connect>` become [`CallReport::fallback_twiml`]. Other verbs: warning 12200,
    ///   skipped. Unparsable TwiML: warning 12100, the call ends
    ///   ([`CallEnding::ApplicationError`]).
    /// * `Url` (+ `Method`, default POST): the TwiML is fetched like the voice webhook (signed
    ///   form with the call's fields, `CallStatus=in-progress`; sent to
    ///   [`SimCallerBuilder::callback_override`]'s host if set, else to the webhook's host when
    ///   the URL is on the public webhook's host) and run as above; a failed fetch is warning
    ///   11200 and ends the call ([`CallEnding::ApplicationError`]).
    ///
    /// Between streams nothing is sent, `heard` gets silence, and the script waits (its
    /// timers keep running on the call's one clock). An update replaces whatever an earlier
    /// update's TwiML was still doing. Updates after the call ended are ignored.
    pub fn update_trigger(&self) -> impl Fn(&[(String, String)]) + Send + Sync + 'static {
        let tx = self.control_tx.clone();
        move |fields: &[(String, String)]| {
            let _ = tx.send(Control::Update(fields.to_vec()));
        }
    }

    /// Is the call still going? False as soon as it ended (before [`Self::join`] returns).
    pub fn is_live(&self) -> bool {
        !self.control_tx.is_closed()
    }

    /// [`Self::is_live`] as a function that outlives the handle.
    pub(crate) fn liveness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let tx = self.control_tx.clone();
        move || !tx.is_closed()
    }

    /// Wait for the call to end.
    pub async fn join(self) -> Result<CallReport, SimCallerError> {
        self.task
            .await
            .map_err(|e| SimCallerError::Task(e.to_string()))?
    }
}

fn random_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::rng().random::<u128>())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// The open stream.
struct Live {
    sink: WsSink,
    stream: WsStream,
    status: Option<StatusPlan>,
}

/// A connect or fetch running for the core.
enum Pending {
    Connected {
        stream: ConnectStream,
        result: Result<(Box<Ws>, String), SimCallerError>,
    },
    Fetched {
        url: String,
        result: Result<String, String>,
    },
}

/// Validate a stream URL (scheme, query string) and work out where to connect and what to
/// sign: `(connect_url, signed_url)`.
fn prepare_stream(
    cfg: &SimCallerBuilder,
    public_url: &str,
    from_twiml: bool,
    signed_override: Option<&str>,
) -> Result<(String, String), SimCallerError> {
    let bad = || SimCallerError::BadStreamUrl {
        url: public_url.to_string(),
    };
    let (scheme, rest) = public_url.split_once("://").ok_or_else(bad)?;
    let scheme_ok = scheme == "wss" || (scheme == "ws" && (!from_twiml || cfg.allow_ws_scheme));
    if !scheme_ok {
        return Err(bad());
    }
    let mut url_no_query = format!("{scheme}://{rest}");
    if let Some(q) = url_no_query.find(['?', '#']) {
        match cfg.query_string_policy {
            QueryStringPolicy::Fail => {
                return Err(SimCallerError::QueryStringInStreamUrl {
                    url: public_url.to_string(),
                })
            }
            QueryStringPolicy::Strip => url_no_query.truncate(q),
        }
    }
    let after = &url_no_query[scheme.len() + 3..];
    let signed_url = signed_override.map_or_else(|| format!("wss://{after}"), str::to_string);
    let connect_url = match &cfg.connect_override {
        Some(base) => {
            let path = after.find('/').map_or("/", |i| &after[i..]);
            format!("{}{}", base.trim_end_matches('/'), path)
        }
        None => url_no_query.clone(),
    };
    Ok((connect_url, signed_url))
}

/// The signed WebSocket upgrade (§6.1).
async fn open_ws(
    cfg: &SimCallerBuilder,
    connect_url: &str,
    signed_url: &str,
) -> Result<Ws, SimCallerError> {
    let connect_err = |detail: String| SimCallerError::Connect {
        url: connect_url.to_string(),
        detail,
    };
    let mut request = connect_url
        .into_client_request()
        .map_err(|e| connect_err(e.to_string()))?;
    let signature = sign(&cfg.auth_token, signed_url, &[]);
    let headers = request.headers_mut();
    headers.insert("User-Agent", HeaderValue::from_static("Twilio.TmeWs/1.0"));
    headers.insert("Accept-Encoding", HeaderValue::from_static("gzip"));
    headers.insert(
        "X-Twilio-Signature",
        HeaderValue::from_str(&signature).map_err(|e| connect_err(e.to_string()))?,
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _resp)) => {
            tracing::debug!(url = %connect_url, "sim caller connected");
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(SimCallerError::Handshake {
            url: connect_url.to_string(),
            status: resp.status().as_u16(),
        }),
        Err(e) => Err(connect_err(e.to_string())),
    }
}

/// Host (authority) of a URL.
fn host_of(url: &str) -> &str {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("")
}

/// Open the stream of a REST update's `<Connect><Stream>`.
async fn connect_later_stream(
    cfg: &SimCallerBuilder,
    cs: &ConnectStream,
    base: Option<&str>,
) -> Result<(Ws, String), SimCallerError> {
    if let Some(track) = cs.track.clone().filter(|t| t != "inbound_track") {
        return Err(SimCallerError::BadTrack { track });
    }
    let public_url = if cs.url.starts_with('/') {
        let base = base
            .or(cfg.public_webhook_url.as_deref())
            .or(cfg.webhook.as_deref())
            .ok_or_else(|| SimCallerError::BadStreamUrl {
                url: cs.url.clone(),
            })?;
        format!("wss://{}{}", host_of(base), cs.url)
    } else {
        cs.url.clone()
    };
    let (connect_url, signed_url) = prepare_stream(cfg, &public_url, true, None)?;
    let ws = open_ws(cfg, &connect_url, &signed_url).await?;
    Ok((ws, signed_url))
}

/// The Twilio code a failed later stream is recorded with.
fn stream_error_code(e: &SimCallerError) -> u32 {
    match e {
        SimCallerError::BadTrack { .. } => codes::BAD_TRACK,
        SimCallerError::BadStreamUrl { .. } => codes::BAD_SCHEME,
        SimCallerError::Connect { .. } => codes::CONNECTION_REFUSED,
        _ => codes::HANDSHAKE,
    }
}

/// Fetch TwiML for a `Url` update or `<Redirect>`: signed like the voice webhook (§2.3),
/// with the call's fields and `CallStatus=in-progress`.
async fn fetch_twiml(
    cfg: &SimCallerBuilder,
    url: &str,
    method: &str,
    account_sid: &str,
    call_sid: &str,
) -> Result<String, String> {
    let form = webhook_form(cfg, account_sid, call_sid, "in-progress");
    let target = local_target(cfg, url);
    let encoded = form
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let req = if method.eq_ignore_ascii_case("GET") {
        let sep = if url.contains('?') { '&' } else { '?' };
        let signed = format!("{url}{sep}{encoded}");
        client
            .get(format!("{target}{sep}{encoded}"))
            .header("X-Twilio-Signature", sign(&cfg.auth_token, &signed, &[]))
    } else {
        client
            .post(&target)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", sign(&cfg.auth_token, url, &form))
            .body(encoded)
    };
    let resp = req
        .header("User-Agent", "TwilioProxy/1.1")
        .header(
            "I-Twilio-Idempotency-Token",
            format!("{:032x}", rand::rng().random::<u128>()),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if !(200..300).contains(&status) {
        return Err(format!("http {status}: {}", short(&body)));
    }
    Ok(body)
}

fn spawn_action(
    cfg: Arc<SimCallerBuilder>,
    action: ShellAction,
    account_sid: String,
    call_sid: String,
) -> JoinHandle<Pending> {
    tokio::spawn(async move {
        match action {
            ShellAction::Connect { stream, base } => {
                let result = connect_later_stream(&cfg, &stream, base.as_deref()).await;
                let result = result.map(|(ws, signed)| (Box::new(ws), signed));
                Pending::Connected { stream, result }
            }
            ShellAction::Fetch { url, method } => {
                let result = fetch_twiml(&cfg, &url, &method, &account_sid, &call_sid).await;
                Pending::Fetched { url, result }
            }
        }
    })
}

async fn next_frame(
    live: &mut Option<Live>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match live {
        Some(l) => l.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn join_pending(
    pending: &mut Option<JoinHandle<Pending>>,
) -> Result<Pending, tokio::task::JoinError> {
    match pending {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Send on the open stream, if any; a failure ends the call as a lost connection.
async fn send_live(live: &mut Option<Live>, core: &mut CallerCore, msgs: Vec<Value>, t0: Instant) {
    if let Some(l) = live {
        if let Err(e) = send_all(&mut l.sink, msgs).await {
            core.connection_lost(t0.elapsed().as_millis() as u64, &e);
        }
    }
}

/// Close a stream ended by a REST update: close frame 1000 now, then (in the background) wait
/// briefly for the bridge's close reply so the handshake completes.
async fn close_stream(live: Live) -> JoinHandle<()> {
    let Live {
        mut sink,
        mut stream,
        ..
    } = live;
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        drop(sink);
    })
}

async fn run(
    cfg: SimCallerBuilder,
    mut control_rx: mpsc::UnboundedReceiver<Control>,
) -> Result<CallReport, SimCallerError> {
    let cfg = Arc::new(cfg);
    let account_sid = cfg.account_sid.clone().unwrap_or_else(|| random_sid("AC"));
    let call_sid = cfg.call_sid.clone().unwrap_or_else(|| random_sid("CA"));
    let stream_sid = random_sid("MZ");

    let (public_url, params, fallback, webhook, twiml_stream) =
        match (&cfg.webhook, &cfg.stream_url) {
            (Some(hook), _) => {
                let (ex, cs) = do_webhook(&cfg, hook, &account_sid, &call_sid).await?;
                let (params, fallback) = (cs.params.clone(), cs.fallback.clone());
                (ex.stream_url.clone(), params, fallback, Some(ex), Some(cs))
            }
            (None, Some(url)) => (url.clone(), cfg.custom_parameters.clone(), None, None, None),
            (None, None) => return Err(SimCallerError::NoTarget),
        };
    let (connect_url, signed_url) = prepare_stream(
        &cfg,
        &public_url,
        webhook.is_some(),
        cfg.signed_stream_url.as_deref(),
    )?;
    let ws = open_ws(&cfg, &connect_url, &signed_url).await?;

    let mut core = CallerCore::new(
        cfg.knobs.clone(),
        cfg.script.clone(),
        account_sid.clone(),
        call_sid.clone(),
        stream_sid,
        params,
    );
    core.report.fallback_twiml = fallback;
    core.report.webhook = webhook;
    core.report.signed_stream_url = signed_url;
    // Status callbacks in order (stream-started/-stopped per stream); Twilio sends them
    // asynchronously, the stream does not wait for them.
    let mut callbacks: Vec<JoinHandle<StatusCallbackRecord>> = Vec::new();
    let status_plan = twiml_stream
        .as_ref()
        .and_then(|cs| StatusPlan::new(&cfg, cs, &core.report));
    if let Some(plan) = status_plan.clone() {
        callbacks.push(tokio::spawn(
            async move { plan.send("stream-started").await },
        ));
    }

    let (sink, stream) = ws.split();
    let mut live = Some(Live {
        sink,
        stream,
        status: status_plan,
    });
    let t0 = Instant::now();
    let elapsed_ms = || t0.elapsed().as_millis() as u64;
    let opening = core.opening();
    send_live(&mut live, &mut core, opening, t0).await;
    let deadline_total = t0 + cfg.max_duration;
    let mut k: u64 = 0;
    let mut control_open = true;
    let mut pending: Option<JoinHandle<Pending>> = None;
    let mut closers: Vec<JoinHandle<()>> = Vec::new();
    while !core.ended() {
        // Deadlines come from the tick index, never from "last tick + 20 ms": no drift.
        let tick_at = t0 + Duration::from_millis(core.tick_time(k));
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(tick_at) => {
                let out = if tick_at >= deadline_total {
                    core.hang_up(core.tick_time(k), CallEnding::MaxDuration)
                } else {
                    core.on_tick(core.tick_time(k))
                };
                k += 1;
                send_live(&mut live, &mut core, out, t0).await;
            }
            c = control_rx.recv(), if control_open => {
                match c {
                    Some(Control::HangUp) => {
                        let out = core.hang_up(elapsed_ms(), CallEnding::HangUpRequested);
                        send_live(&mut live, &mut core, out, t0).await;
                    }
                    Some(Control::Update(fields)) => {
                        // The new TwiML replaces whatever the last update was still doing.
                        if let Some(p) = pending.take() {
                            p.abort();
                        }
                        let out = core.on_update(elapsed_ms(), &fields);
                        send_live(&mut live, &mut core, out, t0).await;
                    }
                    None => control_open = false,
                }
            }
            msg = next_frame(&mut live) => {
                let now = elapsed_ms();
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let out = core.on_text(t.as_str(), now);
                        send_live(&mut live, &mut core, out, t0).await;
                    }
                    Some(Ok(Message::Binary(b))) => core.on_binary(now, b.len()),
                    Some(Ok(Message::Close(frame))) => {
                        core.bridge_closed(now, frame.map(|f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {} // ping/pong are answered by tungstenite
                    Some(Err(e)) => core.connection_lost(now, &e.to_string()),
                    None => core.bridge_closed(now, None),
                }
            }
            done = join_pending(&mut pending) => {
                pending = None;
                let now = elapsed_ms();
                match done {
                    Ok(Pending::Fetched { url, result }) => core.on_twiml(now, &url, result),
                    Ok(Pending::Connected { stream: cs, result: Ok((ws, signed_url)) }) => {
                        let opening = core.begin_stream(now, random_sid("MZ"), cs.params.clone());
                        core.report.signed_stream_url = signed_url;
                        let plan = StatusPlan::new(&cfg, &cs, &core.report);
                        if let Some(plan) = plan.clone() {
                            callbacks.push(tokio::spawn(
                                async move { plan.send("stream-started").await },
                            ));
                        }
                        let (sink, stream) = (*ws).split();
                        live = Some(Live { sink, stream, status: plan });
                        send_live(&mut live, &mut core, opening, t0).await;
                    }
                    Ok(Pending::Connected { result: Err(e), .. }) => {
                        core.stream_failed(now, stream_error_code(&e), e.to_string());
                    }
                    Err(e) => core.stream_failed(now, codes::CONNECTION_REFUSED, e.to_string()),
                }
            }
        }
        // A REST update stopped the stream (its `stop` went out above): close the socket;
        // the call goes on with the update's TwiML.
        if !core.ended() && !core.streaming() {
            if let Some(l) = live.take() {
                let status = l.status.clone();
                closers.push(close_stream(l).await);
                if let Some(plan) = status {
                    callbacks.push(tokio::spawn(
                        async move { plan.send("stream-stopped").await },
                    ));
                }
            }
        }
        if pending.is_none() {
            if let Some(action) = core.take_action() {
                pending = Some(spawn_action(
                    cfg.clone(),
                    action,
                    account_sid.clone(),
                    call_sid.clone(),
                ));
            }
        }
    }
    // The call is over: a fake REST API asking `is_live` sees it from now on.
    drop(control_rx);
    if let Some(p) = pending.take() {
        p.abort();
    }

    let mut last_status = None;
    if let Some(Live {
        mut sink,
        mut stream,
        status,
    }) = live.take()
    {
        last_status = status;
        match core.report.ended_by {
            Some(CallEnding::BridgeClosed) => {
                // tungstenite queued the close reply; flush it and let the socket finish.
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            }
            Some(CallEnding::ConnectionLost) => {}
            _ => {
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
                // Wait briefly for the bridge's close reply so the handshake completes.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
    let end_ms = elapsed_ms();
    let mut report = core.into_report(end_ms);
    for h in closers {
        let _ = h.await;
    }
    for h in callbacks {
        if let Ok(rec) = h.await {
            report.status_callbacks.push(rec);
        }
    }
    if let Some(plan) = last_status {
        report
            .status_callbacks
            .push(plan.send("stream-stopped").await);
    }
    Ok(report)
}

/// Send a batch of messages and flush once; a bridge that stops reading for 5 s counts as a
/// broken connection rather than stalling the clock forever.
async fn send_all(sink: &mut WsSink, msgs: Vec<Value>) -> Result<(), String> {
    if msgs.is_empty() {
        return Ok(());
    }
    let fut = async {
        for m in msgs {
            sink.feed(Message::text(m.to_string())).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed: {e}")),
        Err(_) => Err("send stalled for 5 s".to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Webhook step (§2.1, §2.3, §6.6)
// ---------------------------------------------------------------------------------------

fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha1> as Mac>::new_from_slice(token.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("hmac keys may have any length"),
    };
    mac.update(url.as_bytes());
    for (n, v) in sorted {
        mac.update(n.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Python `urlencode` style: unreserved bytes kept, space as `+`, the rest `%XX`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The §2.1 inbound-call fields, alphabetical as on the wire (`CallStatus` `ringing` for the
/// voice webhook, `in-progress` for TwiML fetched after a REST update).
fn webhook_form(
    cfg: &SimCallerBuilder,
    account_sid: &str,
    call_sid: &str,
    call_status: &str,
) -> Vec<(String, String)> {
    let token = format!("{:032x}", rand::rng().random::<u128>());
    let f = [
        ("AccountSid", account_sid),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", call_status),
        ("CallToken", &token),
        ("Called", &cfg.to),
        ("CalledCity", ""),
        ("CalledCountry", "US"),
        ("CalledState", "CA"),
        ("CalledZip", ""),
        ("Caller", &cfg.from),
        ("CallerCity", "SAN FRANCISCO"),
        ("CallerCountry", "US"),
        ("CallerState", "CA"),
        ("CallerZip", "94103"),
        ("Direction", "inbound"),
        ("From", &cfg.from),
        ("FromCity", "SAN FRANCISCO"),
        ("FromCountry", "US"),
        ("FromState", "CA"),
        ("FromZip", "94103"),
        ("To", &cfg.to),
        ("ToCity", ""),
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("ToZip", ""),
    ];
    f.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

type WebhookOutcome = (WebhookExchange, ConnectStream);

/// The voice-webhook step on its own (for the load generator): POSTs the signed §2.1 form to
/// the builder's webhook and returns the `<Stream url>` and its `<Parameter>`s.
pub async fn webhook_stream(
    cfg: &SimCallerBuilder,
    call_sid: &str,
) -> Result<(String, BTreeMap<String, String>), SimCallerError> {
    let hook = cfg.webhook.clone().unwrap_or_default();
    let account_sid = cfg.account_sid.clone().unwrap_or_default();
    let (_, stream) = do_webhook(cfg, &hook, &account_sid, call_sid).await?;
    Ok((stream.url, stream.params))
}

/// `X-Twilio-Signature` over a URL and POST parameters (HMAC-SHA1, §2.3).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    sign(auth_token, url, params)
}

async fn do_webhook(
    cfg: &SimCallerBuilder,
    hook: &str,
    account_sid: &str,
    call_sid: &str,
) -> Result<WebhookOutcome, SimCallerError> {
    let form = webhook_form(cfg, account_sid, call_sid, "ringing");
    let signed_url = cfg.public_webhook_url.as_deref().unwrap_or(hook);
    let signature = sign(&cfg.auth_token, signed_url, &form);
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let err = |detail: String| SimCallerError::Webhook {
        url: hook.to_string(),
        detail,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let resp = client
        .post(hook)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("User-Agent", "TwilioProxy/1.1")
        .header("X-Twilio-Signature", &signature)
        .header(
            "I-Twilio-Idempotency-Token",
            format!("{:032x}", rand::rng().random::<u128>()),
        )
        .body(body)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = resp.status().as_u16();
    let twiml = resp.text().await.map_err(|e| err(e.to_string()))?;
    if !(200..300).contains(&status) {
        return Err(SimCallerError::WebhookStatus {
            url: hook.to_string(),
            status,
            body: short(&twiml),
        });
    }
    let mut parsed =
        read_connect_stream(&twiml).ok_or_else(|| SimCallerError::NoStreamInTwiml {
            twiml: twiml.chars().take(200).collect(),
        })?;
    if let Some(track) = parsed.track.clone().filter(|t| t != "inbound_track") {
        return Err(SimCallerError::BadTrack { track });
    }
    // A relative stream URL is resolved against the (public) webhook's host, as wss.
    if parsed.url.starts_with('/') {
        parsed.url = format!("wss://{}{}", host_of(signed_url), parsed.url);
    }
    let exchange = WebhookExchange {
        form,
        signature,
        twiml,
        stream_url: parsed.url.clone(),
    };
    Ok((exchange, parsed))
}

/// Where and how to send `<Stream statusCallback>` requests.
#[derive(Clone)]
struct StatusPlan {
    public_url: String,
    target: String,
    method: String,
    token: String,
    fields: Vec<(String, String)>,
}

impl StatusPlan {
    fn new(cfg: &SimCallerBuilder, cs: &ConnectStream, r: &CallReport) -> Option<Self> {
        let public_url = cs.status_callback.clone()?;
        let target = local_target(cfg, &public_url);
        let name = cs.name.clone().unwrap_or_else(|| r.stream_sid.clone());
        let fields = vec![
            ("AccountSid".to_string(), r.account_sid.clone()),
            ("CallSid".to_string(), r.call_sid.clone()),
            ("StreamEvent".to_string(), String::new()),
            ("StreamName".to_string(), name),
            ("StreamSid".to_string(), r.stream_sid.clone()),
            ("Timestamp".to_string(), String::new()),
        ];
        Some(Self {
            public_url,
            target,
            method: cs
                .status_callback_method
                .clone()
                .unwrap_or_else(|| "POST".into())
                .to_ascii_uppercase(),
            token: cfg.auth_token.clone(),
            fields,
        })
    }

    async fn send(&self, event: &str) -> StatusCallbackRecord {
        let mut fields = self.fields.clone();
        for (k, v) in fields.iter_mut() {
            match k.as_str() {
                "StreamEvent" => *v = event.to_string(),
                "Timestamp" => *v = iso8601_utc(std::time::SystemTime::now()),
                _ => {}
            }
        }
        let encoded = fields
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build();
        let result = match client {
            Err(e) => Err(e.to_string()),
            Ok(client) => {
                let req = if self.method == "GET" {
                    // GET: the fields travel in the query string, which is then signed as URL.
                    let sep = if self.public_url.contains('?') {
                        '&'
                    } else {
                        '?'
                    };
                    let signed = format!("{}{sep}{encoded}", self.public_url);
                    client
                        .get(format!("{}{sep}{encoded}", self.target))
                        .header("X-Twilio-Signature", sign(&self.token, &signed, &[]))
                } else {
                    client
                        .post(&self.target)
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .header(
                            "X-Twilio-Signature",
                            sign(&self.token, &self.public_url, &fields),
                        )
                        .body(encoded)
                };
                req.header("User-Agent", "TwilioProxy/1.1")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            }
        };
        StatusCallbackRecord {
            event: event.to_string(),
            url: self.target.clone(),
            status: result.as_ref().ok().copied(),
            error: result.err(),
        }
    }
}

/// Where a request for a public URL really goes: [`SimCallerBuilder::callback_override`]'s
/// origin if set; else the real webhook's origin when the URL is on the public webhook's
/// host; else the URL itself.
fn local_target(cfg: &SimCallerBuilder, public_url: &str) -> String {
    match (
        &cfg.callback_override,
        &cfg.public_webhook_url,
        &cfg.webhook,
    ) {
        (Some(base), _, _) => replace_origin(public_url, base),
        (None, Some(public_hook), Some(hook))
            if origin(public_hook).is_some() && origin(public_hook) == origin(public_url) =>
        {
            replace_origin(public_url, origin(hook).unwrap_or(hook))
        }
        _ => public_url.to_string(),
    }
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let auth_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&url[..scheme.len() + 3 + auth_len])
}

/// `url` with its scheme+authority replaced by `base`'s.
fn replace_origin(url: &str, base: &str) -> String {
    let tail = origin(url).map_or(url, |o| &url[o.len()..]);
    format!("{}{tail}", base.trim_end_matches('/'))
}

/// ISO 8601 UTC with milliseconds, e.g. `2026-09-01T12:00:01.123Z` (§1.6).
fn iso8601_utc(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_millis()
    )
}

#[derive(Debug, Clone)]
struct ConnectStream {
    url: String,
    track: Option<String>,
    name: Option<String>,
    status_callback: Option<String>,
    status_callback_method: Option<String>,
    params: BTreeMap<String, String>,
    fallback: Option<String>,
}

/// One XML tag: name, attributes, and where it sits in the text.
struct Tag {
    name: String,
    attrs: BTreeMap<String, String>,
    closing: bool,
    self_closing: bool,
    start: usize,
    end: usize,
}

/// A deliberately small tag scanner (no DTD, no CDATA): enough for TwiML documents.
fn scan_tags(xml: &str) -> Vec<Tag> {
    let bytes = xml.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while let Some(off) = xml[i..].find('<') {
        let start = i + off;
        let mut j = start + 1;
        let mut quote = None;
        while j < bytes.len() {
            match (quote, bytes[j]) {
                (Some(q), b) if b == q => quote = None,
                (None, b'"' | b'\'') => quote = Some(bytes[j]),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        if j >= bytes.len() {
            break;
        }
        let inner = xml[start + 1..j].trim();
        i = j + 1;
        if inner.starts_with('?') || inner.starts_with('!') {
            continue;
        }
        let (closing, inner) = match inner.strip_prefix('/') {
            Some(r) => (true, r),
            None => (false, inner),
        };
        let self_closing = !closing && inner.ends_with('/');
        let inner = inner.strip_suffix('/').unwrap_or(inner);
        let name_end = inner.find(char::is_whitespace).unwrap_or(inner.len());
        let name = inner[..name_end].to_string();
        let mut attrs = BTreeMap::new();
        let mut rest = &inner[name_end..];
        while let Some(eq) = rest.find('=') {
            let key = rest[..eq].trim().to_string();
            let after = rest[eq + 1..].trim_start();
            let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                break;
            };
            let Some(close) = after[1..].find(q) else {
                break;
            };
            attrs.insert(key, xml_unescape(&after[1..1 + close]));
            rest = &after[close + 2..];
        }
        tags.push(Tag {
            name,
            attrs,
            closing,
            self_closing,
            start,
            end: j + 1,
        });
    }
    tags
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let ent = &tail[1..semi];
        let decoded = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=semi]),
        }
        rest = &tail[semi + 1..];
    }
    out.push_str(rest);
    out
}

/// Find `<Connect><Stream url>` with its `<Parameter>`s and the TwiML after `</Connect>`.
fn read_connect_stream(twiml: &str) -> Option<ConnectStream> {
    let tags = scan_tags(twiml);
    let connect = tags
        .iter()
        .position(|t| t.name == "Connect" && !t.closing)?;
    let connect_end = tags[connect..]
        .iter()
        .position(|t| t.name == "Connect" && t.closing)
        .map(|p| connect + p)?;
    let stream = tags[connect..connect_end]
        .iter()
        .find(|t| t.name == "Stream" && !t.closing)?;
    let url = stream.attrs.get("url")?.clone();
    let params = tags[connect..connect_end]
        .iter()
        .filter(|t| t.name == "Parameter" && !t.closing)
        .filter_map(|t| Some((t.attrs.get("name")?.clone(), t.attrs.get("value")?.clone())))
        .collect();
    let after = tags[connect_end].end;
    let response_end = tags
        .iter()
        .rfind(|t| t.name == "Response" && t.closing)
        .map_or(twiml.len(), |t| t.start);
    let fallback = twiml
        .get(after..response_end.max(after))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Some(ConnectStream {
        url,
        track: stream.attrs.get("track").cloned(),
        name: stream.attrs.get("name").cloned(),
        status_callback: stream.attrs.get("statusCallback").cloned(),
        status_callback_method: stream.attrs.get("statusCallbackMethod").cloned(),
        params,
        fallback,
    })
}

/// An element of a TwiML document.
#[derive(Debug)]
struct Node {
    name: String,
    attrs: BTreeMap<String, String>,
    /// Direct text content, unescaped and trimmed.
    text: String,
    children: Vec<Node>,
    /// Offset of the opening tag.
    start: usize,
}

/// `text` with any `<…>` spans (processing instructions and comments the tag scanner
/// skipped) removed.
fn strip_skipped(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        match rest[open..].find('>') {
            Some(close) => rest = &rest[open + close + 1..],
            None => {
                out.push_str(&rest[open..]);
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parse a TwiML document into its `<Response>` element; errors for anything that is not a
/// single well-nested `<Response>` (Twilio error 12100).
fn parse_twiml_tree(xml: &str) -> Result<Node, String> {
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut pos = 0;
    let attach = |stack: &mut Vec<Node>, root: &mut Option<Node>, node: Node| {
        match stack.last_mut() {
            Some(parent) => parent.children.push(node),
            None if root.is_none() => *root = Some(node),
            None => return Err(format!("second root element <{}>", node.name)),
        }
        Ok(())
    };
    for t in scan_tags(xml) {
        let text = strip_skipped(&xml[pos..t.start]);
        match stack.last_mut() {
            Some(top) => top.text.push_str(&xml_unescape(&text)),
            None if text.trim().is_empty() => {}
            None => return Err(format!("text outside the root element: {:?}", short(&text))),
        }
        pos = t.end;
        if t.name.is_empty() || t.name.contains(['<', '"', '\'', '=']) {
            return Err(format!("malformed tag at offset {}", t.start));
        }
        if t.closing {
            let mut node = stack
                .pop()
                .ok_or_else(|| format!("</{}> without an opening tag", t.name))?;
            if node.name != t.name {
                return Err(format!("<{}> closed by </{}>", node.name, t.name));
            }
            node.text = node.text.trim().to_string();
            attach(&mut stack, &mut root, node)?;
        } else {
            let node = Node {
                name: t.name,
                attrs: t.attrs,
                text: String::new(),
                children: Vec::new(),
                start: t.start,
            };
            if t.self_closing {
                attach(&mut stack, &mut root, node)?;
            } else {
                stack.push(node);
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{}> is never closed", open.name));
    }
    if !strip_skipped(&xml[pos..]).trim().is_empty() {
        return Err("text after the root element".into());
    }
    let root = root.ok_or("no elements")?;
    if root.name != "Response" {
        return Err(format!("root element is <{}>, not <Response>", root.name));
    }
    Ok(root)
}

/// The verbs of a REST update's TwiML, in order (§1.1, §3.2).
fn parse_verbs(xml: &str) -> Result<Vec<Verb>, String> {
    let root = parse_twiml_tree(xml)?;
    let mut verbs = Vec::new();
    for node in root.children {
        let verb = match node.name.as_str() {
            "Play" => match node.attrs.get("digits") {
                Some(d) => Verb::PlayDigits(d.clone()),
                None => Verb::Unknown("<Play> of an audio URL".into()),
            },
            "Say" => Verb::Say(node.text.clone()),
            "Pause" => {
                let length = node.attrs.get("length").map_or(Ok(1), |l| l.parse::<u64>());
                Verb::Pause(length.map_err(|_| "<Pause length> is not a number")? * 1000)
            }
            "Dial" => {
                const NOUNS: [&str; 7] = [
                    "Number",
                    "Sip",
                    "Client",
                    "Conference",
                    "Queue",
                    "Application",
                    "WhatsApp",
                ];
                let noun = node
                    .children
                    .iter()
                    .find(|c| NOUNS.contains(&c.name.as_str()));
                let target = noun.map_or(node.text.as_str(), |n| n.text.as_str());
                if target.is_empty() {
                    return Err("<Dial> without a number".into());
                }
                let timeout = match node.attrs.get("timeout") {
                    Some(t) => Some(
                        t.parse::<u32>()
                            .map_err(|_| format!("<Dial timeout={t:?}> is not a number"))?,
                    ),
                    None => None,
                };
                Verb::Dial {
                    target: target.to_string(),
                    caller_id: node.attrs.get("callerId").cloned(),
                    timeout,
                    whisper_url: noun.and_then(|n| n.attrs.get("url").cloned()),
                }
            }
            "Connect" => match node.children.iter().find(|c| c.name == "Stream") {
                Some(stream) => {
                    if !stream.attrs.contains_key("url") {
                        return Err("<Stream> without url".into());
                    }
                    let cs = read_connect_stream(&xml[node.start..])
                        .ok_or("<Connect><Stream> unreadable")?;
                    Verb::Connect(cs)
                }
                None => Verb::Unknown("<Connect> without <Stream>".into()),
            },
            "Redirect" => {
                if node.text.is_empty() {
                    return Err("<Redirect> without a url".into());
                }
                Verb::Redirect {
                    url: node.text.clone(),
                    method: node
                        .attrs
                        .get("method")
                        .cloned()
                        .unwrap_or_else(|| "POST".into()),
                }
            }
            "Hangup" => Verb::Hangup,
            other => Verb::Unknown(format!("<{other}>")),
        };
        verbs.push(verb);
    }
    Ok(verbs)
}

// ---------------------------------------------------------------------------------------
// WAV and μ-law (local on purpose: independent of crate::audio)
// ---------------------------------------------------------------------------------------

/// Sample `n` (at 8 kHz) of the dual tone for a DTMF key, each tone at -9 dBFS peak.
fn dtmf_tone_sample(key: char, n: u64) -> i16 {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let (r, c) = match key {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return 0,
    };
    let t = n as f64 / 8000.0;
    let tau = std::f64::consts::TAU;
    let v = 0.35 * ((tau * ROWS[r] * t).sin() + (tau * COLS[c] * t).sin());
    (v * 32767.0) as i16
}

/// G.711 μ-law encode of one 16-bit sample (Sun/ITU style: bias 0x84, clip 32635).
pub fn ulaw_encode(sample: i16) -> u8 {
    let x = i32::from(sample);
    let (sign, mag) = if x < 0 { (0x80u8, -x) } else { (0, x) };
    let mag = (mag.min(32635) + 0x84) as u16;
    let top = 15 - mag.leading_zeros() as u16; // 7..=14
    let exp = top - 7;
    let mant = (mag >> (exp + 3)) & 0x0F;
    !(sign | ((exp as u8) << 4) | mant as u8)
}

/// G.711 μ-law decode (§1.9).
pub fn ulaw_decode(code: u8) -> i16 {
    let u = !code;
    let e = (u >> 4) & 7;
    let m = i32::from(u & 0x0F);
    let t = ((m << 3) + 0x84) << e;
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// Read an 8 kHz mono WAV (μ-law, format tag 7; or 16-bit PCM, tag 1) as μ-law bytes.
pub fn read_wav_ulaw(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(bytes, pos + 4) as usize;
        let body_start = pos + 8;
        let body_end = body_start.saturating_add(len).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(format!("fmt chunk is {} bytes, need 16", body.len()));
                }
                fmt = Some((
                    u16_at(body, 0),
                    u16_at(body, 2),
                    u32_at(body, 4),
                    u16_at(body, 14),
                ));
            }
            b"data" => {
                let (tag, channels, rate, bits) = fmt.ok_or("data chunk before fmt chunk")?;
                if channels != 1 || rate != 8000 {
                    return Err(format!("need 8000 Hz mono, got {rate} Hz x{channels}"));
                }
                return match (tag, bits) {
                    (7, 8) => Ok(body.to_vec()),
                    (1, 16) => Ok(body
                        .chunks_exact(2)
                        .map(|c| ulaw_encode(i16::from_le_bytes([c[0], c[1]])))
                        .collect()),
                    _ => Err(format!(
                        "unsupported format tag {tag} with {bits} bits (need mu-law 7/8 or pcm 1/16)"
                    )),
                };
            }
            _ => {}
        }
        pos = body_start.saturating_add(len).saturating_add(len & 1);
    }
    Err("no data chunk".into())
}

/// Load a WAV file as μ-law.
pub fn load_wav_ulaw(path: &Path) -> Result<Vec<u8>, SimCallerError> {
    let err = |detail: String| SimCallerError::Wav {
        path: path.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    read_wav_ulaw(&bytes).map_err(err)
}

/// An 8 kHz mono μ-law WAV (format tag 7 + `fact`), like the project's fixtures.
pub fn ulaw_wav_bytes(data: &[u8]) -> Vec<u8> {
    let mut fmt = Vec::with_capacity(18);
    fmt.extend_from_slice(&7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    fmt.extend_from_slice(&1u16.to_le_bytes());
    fmt.extend_from_slice(&8000u32.to_le_bytes());
    fmt.extend_from_slice(&8000u32.to_le_bytes());
    fmt.extend_from_slice(&1u16.to_le_bytes());
    fmt.extend_from_slice(&8u16.to_le_bytes());
    fmt.extend_from_slice(&0u16.to_le_bytes()); // cbSize
    let mut body = Vec::with_capacity(data.len() + 64);
    body.extend_from_slice(b"WAVE");
    for (id, chunk) in [
        (b"fmt ", fmt.as_slice()),
        (b"fact", &(data.len() as u32).to_le_bytes()[..]),
        (b"data", data),
    ] {
        body.extend_from_slice(id);
        body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        body.extend_from_slice(chunk);
        if chunk.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------
// CLI: `callbridge call`
// ---------------------------------------------------------------------------------------

/// `callbridge call`: place one simulated Twilio call against a running bridge.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// Media-stream URL to connect to directly (skips the webhook), e.g.
    /// ws://127.0.0.1:8080/twilio/media.
    #[arg(long, conflicts_with = "webhook")]
    pub url: Option<String>,
    /// Voice webhook to POST first, e.g. http://127.0.0.1:8080/twilio/voice.
    #[arg(long)]
    pub webhook: Option<String>,
    /// Public webhook URL the bridge signs against (default: --webhook).
    #[arg(long)]
    pub public_webhook_url: Option<String>,
    /// Connect to this base (e.g. ws://127.0.0.1:8080) instead of the TwiML's wss:// host.
    #[arg(long)]
    pub connect_override: Option<String>,
    /// Say these WAVs (8 kHz mono μ-law or PCM16) in turn, waiting for the agent before each.
    #[arg(long = "wav", conflicts_with = "script")]
    pub wavs: Vec<PathBuf>,
    /// Script file (.toml or .json).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Write what the caller heard to this μ-law WAV.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Auth token for X-Twilio-Signature.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Hang up after this many seconds regardless.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// Caller number.
    #[arg(long, default_value = "+14155550123")]
    pub from: String,
    /// Called number.
    #[arg(long, default_value = "+15005550006")]
    pub to: String,
    /// customParameters as NAME=VALUE (only with --url; the webhook's TwiML supplies them otherwise).
    #[arg(long = "param", value_parser = parse_kv)]
    pub params: Vec<(String, String)>,
    /// With --wav: quiet that ends an agent turn, ms.
    #[arg(long, default_value_t = 800)]
    pub quiet_ms: u64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// Run `callbridge call`: place the call, print the timeline, optionally write heard audio.
pub async fn run_cli(args: CallArgs) -> Result<(), SimCallerError> {
    let script = match (&args.script, args.wavs.is_empty()) {
        (Some(path), _) => Script::from_file(path)?,
        (None, false) => {
            let mut s = Script::new().wait_for_agent(args.quiet_ms, 15_000);
            for wav in &args.wavs {
                s = s.say_wav(wav)?.wait_for_agent(args.quiet_ms, 30_000);
            }
            s.hang_up()
        }
        // No audio: listen to the greeting, then hang up.
        (None, true) => Script::new()
            .wait_for_agent(args.quiet_ms, 15_000)
            .hang_up(),
    };
    let mut b = SimCaller::builder()
        .script(script)
        .from(args.from.clone())
        .to(args.to.clone())
        .max_duration(Duration::from_secs(args.max_seconds));
    if let Some(t) = &args.auth_token {
        b = b.auth_token(t.clone());
    }
    if let Some(u) = &args.url {
        b = b.stream_url(u.clone());
    }
    if let Some(w) = &args.webhook {
        b = b.webhook(w.clone());
    }
    if let Some(p) = &args.public_webhook_url {
        b = b.public_webhook_url(p.clone());
    }
    if let Some(c) = &args.connect_override {
        b = b.connect_override(c.clone());
    }
    for (k, v) in &args.params {
        b = b.custom_parameter(k.clone(), v.clone());
    }
    let report = b.spawn().join().await?;
    print!("{}", report.timeline_text());
    if let Some(out) = &args.out {
        report.write_heard_wav(out)?;
        println!("wrote what the caller heard to {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(script: Script) -> CallerCore {
        CallerCore::new(
            StreamKnobs::default(),
            script,
            "AC1".into(),
            "CA1".into(),
            "MZ1".into(),
            BTreeMap::new(),
        )
    }

    fn media(bytes: &[u8]) -> String {
        json!({"event":"media","streamSid":"MZ1","media":{"payload": base64::engine::general_purpose::STANDARD.encode(bytes)}}).to_string()
    }
    fn mark(name: &str) -> String {
        json!({"event":"mark","streamSid":"MZ1","mark":{"name":name}}).to_string()
    }
    fn marks_in(out: &[Value]) -> Vec<String> {
        out.iter()
            .filter(|m| m["event"] == "mark")
            .map(|m| m["mark"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn ulaw_matches_spec_anchors_and_round_trips() {
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(32124), 0x80);
        assert_eq!(ulaw_encode(-32124), 0x00);
        for code in 0..=255u8 {
            let s = ulaw_decode(code);
            let back = ulaw_encode(s);
            // 0x7F (-0) and 0xFF (+0) both decode to 0.
            assert!(
                back == code || (s == 0 && back == 0xFF),
                "{code:#x} -> {s} -> {back:#x}"
            );
        }
    }

    #[test]
    fn wav_round_trip_and_pcm_input() {
        let data: Vec<u8> = (0..=255u8).collect();
        assert_eq!(read_wav_ulaw(&ulaw_wav_bytes(&data)).unwrap(), data);
        // Odd length gets a pad byte but reads back exactly.
        assert_eq!(
            read_wav_ulaw(&ulaw_wav_bytes(&data[..3])).unwrap(),
            &data[..3]
        );
        let mut pcm = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0data\x04\0\0\0".to_vec();
        pcm.extend_from_slice(&0i16.to_le_bytes());
        pcm.extend_from_slice(&32124i16.to_le_bytes());
        assert_eq!(read_wav_ulaw(&pcm).unwrap(), vec![0xFF, 0x80]);
        assert!(read_wav_ulaw(b"RIFF").is_err());
        let mut wrong_rate = ulaw_wav_bytes(&data);
        wrong_rate[24..28].copy_from_slice(&16000u32.to_le_bytes());
        assert!(read_wav_ulaw(&wrong_rate).unwrap_err().contains("16000"));
    }

    #[test]
    fn opening_messages_follow_spec() {
        let mut c = core(Script::new());
        let out = c.opening();
        assert_eq!(
            out[0],
            json!({"event":"connected","protocol":"Call","version":"1.0.0"})
        );
        assert_eq!(out[1]["sequenceNumber"], "1");
        assert_eq!(out[1]["streamSid"], "MZ1");
        assert_eq!(out[1]["start"]["streamSid"], "MZ1");
        assert_eq!(out[1]["start"]["tracks"], json!(["inbound"]));
        assert_eq!(
            out[1]["start"]["mediaFormat"],
            json!({"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1})
        );
        assert_eq!(out[1]["start"]["customParameters"], json!({}));
    }

    #[test]
    fn mark_is_echoed_on_the_tick_after_its_audio_played() {
        let mut c = core(Script::new().silence(10_000));
        c.opening();
        c.on_text(&media(&[1u8; 200]), 0);
        c.on_text(&mark("m"), 0);
        // tick 0 plays 160, tick 1 plays 40 (mark becomes due), tick 2 echoes.
        assert!(marks_in(&c.on_tick(c.tick_time(0))).is_empty());
        assert!(marks_in(&c.on_tick(c.tick_time(1))).is_empty());
        assert_eq!(marks_in(&c.on_tick(c.tick_time(2))), ["m"]);
        assert_eq!(c.report().heard[..200], [1u8; 200]);
        assert!(c.report().heard[200..].iter().all(|&b| b == 0xFF));
        // Exactly 160 bytes then a mark: echoed on the next tick as well.
        c.on_text(&media(&[2u8; 160]), 60);
        c.on_text(&mark("n"), 60);
        assert!(marks_in(&c.on_tick(c.tick_time(3))).is_empty());
        assert_eq!(marks_in(&c.on_tick(c.tick_time(4))), ["n"]);
        // Nothing queued: echoed on the next tick.
        c.on_text(&mark("idle"), 95);
        assert_eq!(marks_in(&c.on_tick(c.tick_time(5))), ["idle"]);
        assert!(c.report().marks.iter().all(|m| m.played));
    }

    #[test]
    fn clear_drops_audio_and_returns_marks_in_order() {
        let mut c = core(Script::new().silence(10_000));
        c.opening();
        c.on_text(&media(&[3u8; 8000]), 0);
        c.on_text(&mark("a"), 0);
        c.on_text(&media(&[4u8; 800]), 0);
        c.on_text(&mark("b"), 0);
        c.on_tick(c.tick_time(0));
        let out = c.on_text(r#"{"event":"clear","streamSid":"MZ1"}"#, 20);
        assert_eq!(marks_in(&out), ["a", "b"]);
        assert!(c.report().marks.iter().all(|m| !m.played));
        let seqs: Vec<u64> = out
            .iter()
            .map(|m| m["sequenceNumber"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs[1], seqs[0] + 1);
        let before = c.report().heard.len();
        c.on_tick(c.tick_time(1));
        assert!(c.report().heard[before..].iter().all(|&b| b == 0xFF));
        assert_eq!(c.report().clears_received, 1);
    }

    #[test]
    fn invalid_messages_warn_once_per_code() {
        let mut c = core(Script::new());
        c.opening();
        for bad in [
            "nope",
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"/w==","track":"outbound"}}"#,
            r#"{"event":"mark","streamSid":"MZ1"}"#,
            r#"{"event":"clear","streamSid":"MZ2"}"#,
            r#"{"event":"clear","streamSid":"MZ1","extra":1}"#,
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"***"}}"#,
            r#"{"event":"dtmf","streamSid":"MZ1"}"#,
        ] {
            c.on_text(bad, 5);
        }
        c.on_binary(6, 3);
        c.on_binary(7, 3);
        assert_eq!(c.report().invalid_messages, 9);
        assert_eq!(
            c.report().warnings,
            BTreeSet::from([codes::INVALID_MESSAGE, codes::BINARY_MESSAGE])
        );
        let warnings = c
            .report()
            .timeline
            .iter()
            .filter(|e| matches!(e.event, TimelineEvent::Warning { .. }))
            .count();
        assert_eq!(warnings, 2);
    }

    #[test]
    fn queue_cap_discards_excess_and_warns() {
        let knobs = StreamKnobs {
            queue_limit_bytes: 1000,
            ..StreamKnobs::default()
        };
        let mut c = CallerCore::new(
            knobs,
            Script::new().silence(1000),
            "AC1".into(),
            "CA1".into(),
            "MZ1".into(),
            BTreeMap::new(),
        );
        c.opening();
        c.on_text(&media(&[5u8; 600]), 0);
        c.on_text(&media(&[6u8; 600]), 0);
        assert!(c.report().warnings.contains(&codes::QUEUE_OVERFLOW));
        for k in 0..10 {
            c.on_tick(c.tick_time(k));
        }
        let played = c.report().heard.iter().filter(|&&b| b != 0xFF).count();
        assert_eq!(played, 1000);
    }

    #[test]
    fn inband_dtmf_tone_has_both_frequencies() {
        let knobs = StreamKnobs {
            dtmf_inband_ms: 100,
            ..StreamKnobs::default()
        };
        let mut c = CallerCore::new(
            knobs,
            Script::new().dtmf("5").silence(1000),
            "AC1".into(),
            "CA1".into(),
            "MZ1".into(),
            BTreeMap::new(),
        );
        c.opening();
        for k in 0..20 {
            c.on_tick(c.tick_time(k));
        }
        let sent = &c.report().sent;
        let tone: Vec<f64> = sent[..800]
            .iter()
            .map(|&b| f64::from(ulaw_decode(b)))
            .collect();
        assert!(
            sent[800..].iter().all(|&b| b == ULAW_SILENCE),
            "tone lasts 100 ms"
        );
        // Goertzel-style correlation: strong at 770 and 1336 Hz ('5'), weak at 697/1209.
        let power = |f: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (n, x) in tone.iter().enumerate() {
                let w = std::f64::consts::TAU * f * n as f64 / 8000.0;
                re += x * w.cos();
                im += x * w.sin();
            }
            (re * re + im * im).sqrt()
        };
        assert!(power(770.0) > 10.0 * power(697.0));
        assert!(power(1336.0) > 10.0 * power(1209.0));
    }

    #[test]
    fn iso_timestamps_and_origins() {
        let at = |days: u64, secs: u64, ms: u64| {
            std::time::UNIX_EPOCH + Duration::from_millis((days * 86_400 + secs) * 1000 + ms)
        };
        assert_eq!(iso8601_utc(at(0, 0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601_utc(at(20_697, 43_201, 123)),
            "2026-09-01T12:00:01.123Z"
        );
        assert_eq!(
            iso8601_utc(at(11_016, 86_399, 999)),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            origin("https://h.example:8443/a?b"),
            Some("https://h.example:8443")
        );
        assert_eq!(
            replace_origin(
                "https://bridge.example.com/twilio/stream-status",
                "http://127.0.0.1:9/"
            ),
            "http://127.0.0.1:9/twilio/stream-status"
        );
    }

    #[test]
    fn burst_knob_holds_then_delivers_frames_at_once() {
        let knobs = StreamKnobs {
            burst_at_ms: Some(215),
            burst_frames: 5,
            ..StreamKnobs::default()
        };
        let mut c = CallerCore::new(
            knobs,
            Script::new().silence(10_000),
            "AC1".into(),
            "CA1".into(),
            "MZ1".into(),
            BTreeMap::new(),
        );
        c.opening();
        let per_tick: Vec<Vec<Value>> = (0..14).map(|k| c.on_tick(c.tick_time(k))).collect();
        let counts: Vec<usize> = per_tick.iter().map(Vec::len).collect();
        // Ticks 0..7 are before the first frame (155 ms); chunks 1-3 flow, 4-8 are held,
        // tick 15 (315 ms) delivers 4-9 together.
        assert_eq!(counts, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]);
        let more = c.on_tick(c.tick_time(14));
        assert_eq!(more.len(), 0, "{more:?}");
        let flush = c.on_tick(c.tick_time(15));
        let chunks: Vec<&str> = flush
            .iter()
            .map(|m| m["media"]["chunk"].as_str().unwrap())
            .collect();
        assert_eq!(chunks, ["4", "5", "6", "7", "8", "9"]);
        assert_eq!(flush[0]["media"]["timestamp"], "215");
    }

    #[test]
    fn script_frames_dtmf_and_stop() {
        let audio: Vec<u8> = (0..400).map(|i| (i % 200) as u8).collect();
        let mut c = core(
            Script::new()
                .say_ulaw("hi", audio.clone())
                .dtmf("5#")
                .hang_up(),
        );
        let mut all = c.opening();
        let mut k = 0;
        while !c.ended() {
            all.extend(c.on_tick(c.tick_time(k)));
            k += 1;
        }
        let media: Vec<&Value> = all.iter().filter(|m| m["event"] == "media").collect();
        assert_eq!(media[0]["media"]["chunk"], "1");
        assert_eq!(media[0]["media"]["timestamp"], "155");
        assert_eq!(media[1]["media"]["timestamp"], "175");
        assert_eq!(media[0]["sequenceNumber"], "2");
        assert_eq!(&c.report().sent[..400], &audio[..]);
        assert!(c.report().sent[400..480].iter().all(|&b| b == 0xFF));
        let dtmf: Vec<&Value> = all.iter().filter(|m| m["event"] == "dtmf").collect();
        assert_eq!(dtmf.len(), 2);
        assert_eq!(
            dtmf[0]["dtmf"],
            json!({"track":"inbound_track","digit":"5"})
        );
        assert_eq!(dtmf[1]["dtmf"]["digit"], "#");
        // Sequence numbers are contiguous across start, media, dtmf and stop.
        let seqs: Vec<u64> = all[1..]
            .iter()
            .map(|m| m["sequenceNumber"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let stop = all.last().unwrap();
        assert_eq!(stop["event"], "stop");
        assert_eq!(stop["stop"], json!({"accountSid":"AC1","callSid":"CA1"}));
    }

    #[test]
    fn wait_for_agent_waits_for_audio_then_quiet() {
        let mut c = core(
            Script::new()
                .wait_for_agent(200, 10_000)
                .say_ulaw("reply", vec![9u8; 160]),
        );
        c.opening();
        let mut k = 0;
        let mut said_at = None;
        while said_at.is_none() && k < 200 {
            let now = c.tick_time(k);
            if k == 10 {
                c.on_text(&media(&[1u8; 1600]), now); // 200 ms of agent audio
            }
            c.on_tick(now);
            said_at = c.report().timeline.iter().find_map(|e| match e.event {
                TimelineEvent::UtteranceStart { .. } => Some(e.at_ms),
                _ => None,
            });
            k += 1;
        }
        // Audio plays during ticks 10..20 (ends at 415 ms); quiet 200 ms → speaks at ≥ 615 ms.
        let said_at = said_at.expect("caller never spoke");
        assert!((615..=655).contains(&said_at), "{said_at}");
    }

    #[test]
    fn twiml_reader_finds_stream_params_and_fallback() {
        let t = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h.example/twilio/media" track="inbound_track"><Parameter name="tenant" value="a&amp;b" /><Parameter name="x" value="1"/></Stream></Connect><Say>Bye</Say><Hangup /></Response>"#;
        let cs = read_connect_stream(t).unwrap();
        assert_eq!(cs.url, "wss://h.example/twilio/media");
        assert_eq!(cs.track.as_deref(), Some("inbound_track"));
        assert_eq!(cs.params["tenant"], "a&b");
        assert_eq!(cs.fallback.as_deref(), Some("<Say>Bye</Say><Hangup />"));
        let t = r#"<Response><Connect><Stream url="wss://h/m" /></Connect></Response>"#;
        let cs = read_connect_stream(t).unwrap();
        assert!(cs.params.is_empty() && cs.fallback.is_none());
        assert!(read_connect_stream("<Response><Say>x</Say></Response>").is_none());
    }

    #[test]
    fn update_stops_the_stream_runs_twiml_and_a_new_stream_starts_afresh() {
        let mut c = core(Script::new().silence(1000).say_ulaw("x", vec![7u8; 160]));
        c.opening();
        let mut k = 0;
        let mut last_seq = 1;
        while c.report().media_frames_sent < 3 {
            for m in c.on_tick(c.tick_time(k)) {
                last_seq = m["sequenceNumber"].as_str().unwrap().parse().unwrap();
            }
            k += 1;
        }
        let now = c.tick_time(k);
        let twiml = r#"<Response><Play digits="w1"/><Connect><Stream url="wss://h/m"><Parameter name="p" value="v"/></Stream></Connect><Hangup/></Response>"#;
        let out = c.on_update(now, &[("Twiml".into(), twiml.into())]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["event"], "stop");
        assert_eq!(out[0]["sequenceNumber"], (last_seq + 1).to_string());
        assert!(!c.streaming() && !c.ended());
        // The gap: silence heard, nothing sent, the connect comes after 600 ms of digits.
        let heard_before = c.report().heard.len();
        let mut action = None;
        while action.is_none() {
            k += 1;
            assert!(c.on_tick(c.tick_time(k)).is_empty());
            action = c.take_action();
        }
        assert!(c.tick_time(k) >= now + 600);
        assert!(c.report().heard[heard_before..].iter().all(|&b| b == 0xFF));
        let Some(ShellAction::Connect { stream, base: None }) = action else {
            panic!("{action:?}");
        };
        assert_eq!(stream.url, "wss://h/m");
        assert_eq!(c.report().fallback_twiml.as_deref(), Some("<Hangup/>"));
        let at = c.tick_time(k) + 7;
        let opening = c.begin_stream(at, "MZ2".into(), stream.params);
        assert_eq!(opening[1]["sequenceNumber"], "1");
        assert_eq!(opening[1]["start"]["customParameters"], json!({"p": "v"}));
        let mut media = Vec::new();
        while media.len() < 2 {
            k += 1;
            media.extend(c.on_tick(c.tick_time(k)));
        }
        assert!(c.tick_time(k) >= at + 155);
        assert_eq!(media[0]["streamSid"], "MZ2");
        assert_eq!(media[0]["sequenceNumber"], "2");
        assert_eq!(media[0]["media"]["chunk"], "1");
        assert_eq!(media[0]["media"]["timestamp"], "155");
        assert_eq!(c.report().stream_sids, ["MZ1", "MZ2"]);
        // Messages for the old stream are now invalid; the new one's are accepted.
        c.on_text(&media_for("MZ1", &[1u8; 160]), c.tick_time(k));
        assert_eq!(c.report().media_messages_received, 0);
        c.on_text(&media_for("MZ2", &[1u8; 160]), c.tick_time(k));
        assert_eq!(c.report().media_messages_received, 1);
    }

    fn media_for(sid: &str, bytes: &[u8]) -> String {
        json!({"event":"media","streamSid":sid,"media":{"payload": base64::engine::general_purpose::STANDARD.encode(bytes)}}).to_string()
    }

    #[test]
    fn status_update_hangs_up_and_between_streams_ends_quietly() {
        let mut c = core(Script::new().silence(10_000));
        c.opening();
        let out = c.on_update(100, &[("Status".into(), "completed".into())]);
        assert_eq!(out[0]["event"], "stop");
        assert_eq!(c.report().ended_by, Some(CallEnding::CompletedByRest));

        let mut c = core(Script::new().silence(10_000));
        c.opening();
        let out = c.on_update(100, &[("Url".into(), "https://h/next".into())]);
        assert_eq!(out[0]["event"], "stop");
        assert!(
            matches!(c.take_action(), Some(ShellAction::Fetch { method, .. }) if method == "POST")
        );
        assert!(c.hang_up(200, CallEnding::HangUpRequested).is_empty());
        assert_eq!(
            c.report().timeline.last().unwrap().event,
            TimelineEvent::CallEnded {
                reason: CallEnding::HangUpRequested
            }
        );
    }

    #[test]
    fn twiml_verbs_parse_and_bad_documents_fail() {
        let v = parse_verbs(
            r#"<?xml version="1.0"?><!-- c --><Response><Say voice="alice">Hi &amp; bye</Say><Pause/><Pause length="2"/><Play>https://x/a.mp3</Play><Redirect method="GET">https://h/r</Redirect><Dial>+1555</Dial></Response>"#,
        )
        .unwrap();
        let names: Vec<String> = v.iter().map(|v| format!("{v:?}")).collect();
        assert!(
            matches!(&v[0], Verb::Say(t) if t == "Hi & bye"),
            "{names:?}"
        );
        assert!(matches!(v[1], Verb::Pause(1000)));
        assert!(matches!(v[2], Verb::Pause(2000)));
        assert!(matches!(&v[3], Verb::Unknown(_)));
        assert!(
            matches!(&v[4], Verb::Redirect { url, method } if url == "https://h/r" && method == "GET")
        );
        assert!(matches!(&v[5], Verb::Dial { target, timeout: None, .. } if target == "+1555"));
        assert!(parse_verbs("<Response/>").unwrap().is_empty());
        for bad in [
            "",
            "hello",
            "<Response><Say>x</Response>",
            "<Response></Response><Response></Response>",
            "<Speak>x</Speak>",
            "<Response><Dial></Dial></Response>",
            "<Response><Connect><Stream/></Connect></Response>",
            r#"<Response><Pause length="soon"/></Response>"#,
            "<Response></Response>trailing",
            "<Response></Response><Foo",
        ] {
            assert!(parse_verbs(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn signing_matches_twilio_vectors() {
        assert_eq!(
            sign(
                "9f4c2a7e1b3d5f60718293a4b5c6d7e8",
                "wss://bridge.example.com/twilio/media",
                &[]
            ),
            "XIza+A9LrYq4Excvu2Bv3Rmc6RE="
        );
        let cfg = SimCallerBuilder::default();
        let mut form = webhook_form(
            &cfg,
            "AC0123456789abcdef0123456789abcdef",
            "CAfedcba9876543210fedcba9876543210",
            "ringing",
        );
        for (k, v) in form.iter_mut() {
            if k == "CallToken" {
                *v = "opaque-call-token-value".into();
            }
        }
        let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "webhook fields must be alphabetical");
        assert_eq!(
            sign(
                "9f4c2a7e1b3d5f60718293a4b5c6d7e8",
                "https://bridge.example.com/twilio/voice",
                &form
            ),
            "WtO2sXojwFSMFkMsXLZbHfsF0s0="
        );
        assert_eq!(form_encode("+1 415:a,b"), "%2B1+415%3Aa%2Cb");
    }

    #[test]
    fn script_file_toml_and_json() {
        let dir = std::env::temp_dir().join(format!("simcaller-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.wav"), ulaw_wav_bytes(&[1, 2, 3])).unwrap();
        std::fs::write(
            dir.join("s.toml"),
            "steps = [{ wait_for_agent = { quiet_ms = 800, timeout_ms = 15000 } }, { say = \"a.wav\" }, { silence_ms = 500 }, { dtmf = \"12#\" }, { wait_for_agent_audio = { timeout_ms = 100 } }, \"hang_up\"]",
        )
        .unwrap();
        let s = Script::from_file(&dir.join("s.toml")).unwrap();
        assert_eq!(s.steps().len(), 6);
        assert!(matches!(&s.steps()[1], Step::Say { audio, .. } if audio[..] == [1, 2, 3]));
        // The example from Script's docs.
        std::fs::write(
            dir.join("doc.toml"),
            r#"steps = [
  { wait_for_agent = { quiet_ms = 800, timeout_ms = 15000 } },  # hear the greeting
  { say = "a.wav" },                          # relative to this file
  { wait_for_agent_audio = { timeout_ms = 10000 } },             # agent starts answering…
  { silence_ms = 500 },
  { say = "a.wav" },                            # …and gets interrupted
  { dtmf = "12#" },
  "hang_up",
]"#,
        )
        .unwrap();
        assert_eq!(
            Script::from_file(&dir.join("doc.toml"))
                .unwrap()
                .steps()
                .len(),
            7
        );
        std::fs::write(dir.join("s.json"), r#"{"steps":[{"dtmf":"9"},"hang_up"]}"#).unwrap();
        assert_eq!(
            Script::from_file(&dir.join("s.json"))
                .unwrap()
                .steps()
                .len(),
            2
        );
        std::fs::write(dir.join("bad.json"), r#"{"steps":[{"dtmf":"x"}]}"#).unwrap();
        assert!(Script::from_file(&dir.join("bad.json")).is_err());
        std::fs::write(dir.join("bad2.json"), r#"{"steps":[{"shout":"x"}]}"#).unwrap();
        assert!(Script::from_file(&dir.join("bad2.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
