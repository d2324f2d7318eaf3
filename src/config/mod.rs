//! Configuration: the TOML file (`configs/callbridge.toml` documents every key), environment
//! overrides, secrets, and validation.
//!
//! Owns: parsing, defaults, validation (before anything binds), and the redaction of secrets.
//! Does not own: what the settings mean at run time (see `call`, `server`, `gemini::setup`).
//!
//! Secrets (`GEMINI_API_KEY`, `TWILIO_AUTH_TOKEN`) come only from the environment; the file has
//! no key for them. They live in [`Secret`], whose `Debug` and `Display` print `[redacted]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Google's documented Live endpoint (API key in the `x-goog-api-key` header).
pub const DEFAULT_GEMINI_URL: &str =
    "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
/// Default Live model (the first row of the model profile table).
pub const DEFAULT_MODEL: &str = crate::gemini::profile::DEFAULT_MODEL;
/// Default Twilio REST base URL.
pub const DEFAULT_TWILIO_API_BASE: &str = "https://api.twilio.com";

pub use crate::secret::Secret;

pub mod tool_schema;

/// A configuration problem, naming the key and the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for {key}: {value:?}: {reason}")]
    Invalid {
        /// Dotted key, or the environment variable.
        key: String,
        /// The offending value (never a secret).
        value: String,
        /// What is expected.
        reason: String,
    },
}

/// `lo..=hi`, else an error naming the key and the value.
fn in_range(key: &str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, value, &format!("expected {lo}..={hi}")))
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener and public address.
    pub server: ServerConfig,
    /// The model leg.
    pub gemini: GeminiConfig,
    /// The caller leg (Twilio).
    pub twilio: TwilioConfig,
    /// Downlink pacing and marks.
    pub playout: PlayoutConfig,
    /// Bounds that protect callers and the process.
    pub limits: LimitsConfig,
    /// Named transfer destinations the model may choose from.
    pub transfer: TransferConfig,
    /// Tools the model may call besides end_call and transfer_call.
    pub tools: ToolsConfig,
    /// Model connection handover (goAway) and fault recovery.
    pub session: SessionConfig,
    /// `GET /metrics` (Prometheus).
    pub metrics: MetricsConfig,
    /// Model prices, for the estimated cost of each call.
    pub pricing: PricingConfig,
    /// One stored record per call (SQLite or PostgreSQL).
    pub records: RecordsConfig,
    /// Stereo WAV recordings of calls (off by default).
    pub recording: RecordingConfig,
    /// Operator JSON API, dashboard and browser phone.
    pub operator: OperatorConfig,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` in the Prometheus text format (aggregates only: no numbers, no
    /// transcripts, no call ids).
    pub enabled: bool,
    /// Serve `GET /metrics` only with `Authorization: Bearer <operator token>` (env
    /// `CALLBRIDGE_OPERATOR_TOKEN`, which must then be set); 401 otherwise. Off by default so
    /// a plain Prometheus scrape works: keep `/metrics` off the public listener (or turn this
    /// on and give the scraper the token) when the bridge is reachable from the internet.
    pub require_token: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            require_token: false,
        }
    }
}

/// `[pricing]` — model prices in USD per million tokens, by direction and modality, for the
/// estimated cost of a call (`usageMetadata` token counts × these). Modalities the model
/// reports without a price here (or tokens reported without a modality split) use the
/// `*_other` price.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Prompt (input) TEXT tokens.
    pub input_text: f64,
    /// Prompt (input) AUDIO tokens.
    pub input_audio: f64,
    /// Prompt tokens of any other modality, or with no modality split.
    pub input_other: f64,
    /// Response (output) TEXT tokens.
    pub output_text: f64,
    /// Response (output) AUDIO tokens.
    pub output_audio: f64,
    /// Response tokens of any other modality, or with no modality split.
    pub output_other: f64,
}

impl Default for PricingConfig {
    /// The default model's prices (`gemini::profile`, sources there). When the file has no
    /// `[pricing]` table, [`Config::load`] uses the configured model's profile instead.
    fn default() -> Self {
        PricingConfig::from_prices(&crate::gemini::profile::PROFILES[0].prices)
    }
}

impl PricingConfig {
    /// A model profile's prices (other modalities at the audio price).
    pub fn from_prices(p: &crate::gemini::profile::Prices) -> Self {
        PricingConfig {
            input_text: p.input_text,
            input_audio: p.input_audio,
            input_other: p.input_audio,
            output_text: p.output_text,
            output_audio: p.output_audio,
            output_other: p.output_audio,
        }
    }
}

impl PricingConfig {
    /// USD per token for `direction` (`prompt` or `response`) and a modality as the model
    /// names it (`TEXT`, `AUDIO`, …; any case).
    pub fn per_token(&self, direction: &str, modality: &str) -> f64 {
        let m = modality.to_ascii_uppercase();
        let per_million = match (direction, m.as_str()) {
            ("prompt", "TEXT") => self.input_text,
            ("prompt", "AUDIO") => self.input_audio,
            ("prompt", _) => self.input_other,
            // Thinking tokens are billed as output text.
            (_, "TEXT" | "THOUGHTS") => self.output_text,
            (_, "AUDIO") => self.output_audio,
            _ => self.output_other,
        };
        per_million / 1_000_000.0
    }
}

/// `[records]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    /// Store one record per call.
    pub enabled: bool,
    /// SQLite database file, created on first run (used when `database_url` is empty).
    pub sqlite_path: String,
    /// `postgres://user:pass@host/db` for several bridge instances sharing one store (or
    /// `sqlite://path`). Env `CALLBRIDGE_DATABASE_URL`; it may hold a password, so it is never
    /// logged.
    #[serde(skip)]
    pub database_url: Secret,
    /// Keep transcripts and tool arguments in records (they are the callers' words).
    pub transcripts: bool,
    /// Recent records kept in memory for the dashboard when the store is slow or down.
    pub recent_in_memory: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            sqlite_path: "callbridge.db".into(),
            database_url: Secret::default(),
            transcripts: true,
            recent_in_memory: 200,
        }
    }
}

/// `[recording]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Write a stereo WAV per call (caller left, agent right, 8 kHz 16-bit, aligned in time).
    pub enabled: bool,
    /// Directory the files go to (created if missing).
    pub dir: String,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: "recordings".into(),
        }
    }
}

/// `[operator]` — the JSON API under `/api/`, the dashboard and the browser phone. All of
/// them need the bearer token from env `CALLBRIDGE_OPERATOR_TOKEN`; without it the API
/// answers 503 and the dashboard says so.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// Serve `/dashboard` (the page itself holds no data; it calls the API with the token).
    pub dashboard: bool,
    /// Let the dashboard place browser-phone calls (same Media Streams protocol as Twilio).
    pub browser_phone: bool,
    /// Bearer token, from env `CALLBRIDGE_OPERATOR_TOKEN` only (at least 16 characters).
    #[serde(skip)]
    pub token: Secret,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            dashboard: true,
            browser_phone: true,
            token: Secret::default(),
        }
    }
}

/// `[session]` — keeping one conversation alive across model connections.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// On goAway: `close_first` closes the old connection before resuming on a new one;
    /// `overlap` opens the new one first and falls back to `close_first` if the server
    /// refuses a resume while the old socket is open.
    pub handover: String,
    /// Reconnection attempts after a lost connection before the call ends (fallback verbs).
    pub max_reconnects: u32,
    /// First reconnection backoff, ms (doubles per attempt).
    pub reconnect_backoff_ms: u64,
    /// Play the filler ("One moment, please.") when a recovery takes longer than this, ms
    /// (0 = never).
    pub filler_after_ms: u64,
    /// Most transcript characters kept to seed a fresh session when resumption fails.
    pub history_chars: usize,
    /// Most model sessions opened for one call.
    pub max_sessions_per_call: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handover: "close_first".into(),
            max_reconnects: 4,
            reconnect_backoff_ms: 250,
            filler_after_ms: 1_000,
            history_chars: 8_000,
            max_sessions_per_call: 200,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address. Env `CALLBRIDGE_LISTEN`.
    pub listen: String,
    /// The public base URL Twilio reaches us at (`https://host[:port]`), used to build the
    /// `wss://host/twilio/media` stream URL. Env `CALLBRIDGE_PUBLIC_URL`. Empty: taken from the
    /// request's `Host` header (only sensible for local testing).
    pub public_url: String,
    /// Serve `GET /debug/stats` (latency histograms, frame counters; aggregate numbers only).
    /// Off by default: call volume is nobody's business. `callbridge loadtest` turns it on.
    pub debug_stats: bool,
    /// Open TCP connections served at once (HTTP requests in progress or idle keep-alive;
    /// upgraded media sockets are bounded by `limits.max_pending_streams` and
    /// `limits.max_calls` instead). A connection over the cap is closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this long of the connection opening (and of the
    /// previous response on a keep-alive connection), ms: slowloris defence.
    pub header_timeout_ms: u64,
    /// A request (body read and handler) must be answered within this long, ms (408 after).
    /// Not the life of an upgraded WebSocket nor a streamed response body.
    pub request_timeout_ms: u64,
    /// Kernel send buffer of each accepted socket, bytes (0: the OS default, which autotunes
    /// up to megabytes). Bounded so a peer that stops reading is noticed within seconds
    /// (`limits.caller_write_timeout_ms`) and holds little kernel memory.
    pub socket_send_buffer_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            public_url: String::new(),
            debug_stats: false,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            socket_send_buffer_bytes: 64 * 1024,
        }
    }
}

/// `[gemini]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeminiConfig {
    /// Full BidiGenerateContent WebSocket URL. Env `CALLBRIDGE_GEMINI_URL`.
    pub url: String,
    /// `api_key` (header `x-goog-api-key`; the secret comes from env `GEMINI_API_KEY`). The
    /// former `ephemeral_token` mode is refused: see `validate`.
    pub auth: String,
    /// Live model id (Vertex: the bare id; the resource path is built from project/location).
    pub model: String,
    /// Pin the behaviour profile by name for a model id the bridge does not know
    /// (`gemini::profile`); empty: the model id's own profile (unknown ids: the default's).
    pub profile: String,
    /// `gemini` (Gemini Developer API, `GEMINI_API_KEY`) or `vertex` (Vertex AI, OAuth2).
    pub backend: Backend,
    /// Vertex AI: Google Cloud project id.
    pub project: String,
    /// Vertex AI: region of the Live endpoint, e.g. `us-central1`.
    pub location: String,
    /// Thinking: `auto` (the profile's choice for phone latency: 2.5 gets budget 0, 3.x their
    /// minimum), `off`, `level` (`thinking_level`) or `budget` (`thinking_budget`).
    pub thinking: ThinkingMode,
    /// With `thinking = "level"`: `minimal`, `low`, `medium` or `high` (3.1, 3.8 extended).
    pub thinking_level: ThinkingLevel,
    /// With `thinking = "budget"`: thinking tokens per turn (2.5; 0 = none).
    pub thinking_budget: u32,
    /// Affective dialog (2.5 only; removed in 3.8).
    pub affective_dialog: bool,
    /// Proactive audio: the model may stay silent when not addressed (2.5; always on in 3.8).
    pub proactive_audio: bool,
    /// Open one model session at start-up (and every `preflight_interval_secs`) to check that
    /// the model accepts our setup; reported in `/healthz` and `/metrics`.
    pub preflight: bool,
    /// Seconds between preflight checks (0 = only at start-up).
    pub preflight_interval_secs: u64,
    /// Prebuilt voice name (case-sensitive).
    pub voice: String,
    /// BCP-47 language code; empty lets native-audio models detect it.
    pub language: String,
    /// The agent's system instruction.
    pub system_instruction: String,
    /// Make the agent speak first when the call connects.
    pub greeting: bool,
    /// What the model is told when the call connects, to make it greet the caller.
    pub greeting_instruction: String,
    /// Ask for transcripts of the caller's speech.
    pub input_transcription: bool,
    /// Ask for transcripts of the agent's speech.
    pub output_transcription: bool,
    /// Request session resumption handles (needed for handover and DTMF continuation).
    pub session_resumption: bool,
    /// Time allowed to open the WebSocket, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed from sending `setup` to `setupComplete`, in milliseconds.
    pub setup_timeout_ms: u64,
    /// Sliding-window context compression, so sessions can outlive the 15-minute audio limit.
    pub context_compression: bool,
    /// Tokens that trigger compression (0 = server default, 80% of the window).
    pub compression_trigger_tokens: u64,
    /// Tokens kept after compression (0 = server default, half the trigger).
    pub compression_target_tokens: u64,
    /// After a barge-in, tell the model how much of its answer the caller actually heard.
    pub tell_model_what_was_heard: bool,
    /// Server-side voice activity detection.
    pub vad: VadConfig,
    /// API key or ephemeral token, from env `GEMINI_API_KEY` only.
    #[serde(skip)]
    pub api_key: Secret,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        GeminiConfig {
            url: DEFAULT_GEMINI_URL.into(),
            auth: "api_key".into(),
            model: DEFAULT_MODEL.into(),
            profile: String::new(),
            backend: Backend::Gemini,
            project: String::new(),
            location: String::new(),
            thinking: ThinkingMode::Auto,
            thinking_level: ThinkingLevel::Minimal,
            thinking_budget: 0,
            affective_dialog: false,
            proactive_audio: false,
            preflight: true,
            preflight_interval_secs: 600,
            voice: "Kore".into(),
            language: "en-US".into(),
            system_instruction:
                "You are a friendly, concise phone agent. Speak in short sentences. \
                When the caller is done, say goodbye and call end_call."
                    .into(),
            greeting: true,
            greeting_instruction:
                "A caller has just connected. Greet them briefly and ask how you can help.".into(),
            input_transcription: true,
            output_transcription: true,
            session_resumption: true,
            connect_timeout_ms: 5_000,
            setup_timeout_ms: 10_000,
            context_compression: true,
            compression_trigger_tokens: 0,
            compression_target_tokens: 0,
            tell_model_what_was_heard: true,
            vad: VadConfig::default(),
            api_key: Secret::default(),
        }
    }
}

/// `gemini.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The Gemini Developer API.
    Gemini,
    /// Vertex AI.
    Vertex,
}

/// `gemini.thinking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingMode {
    /// The profile's choice for low latency.
    Auto,
    /// No thinking (2.5: budget 0; 3.1: level minimal; 3.8: omitted).
    Off,
    /// `thinking_level`.
    Level,
    /// `thinking_budget`.
    Budget,
}

/// `gemini.thinking_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingLevel {
    /// `MINIMAL`.
    Minimal,
    /// `LOW`.
    Low,
    /// `MEDIUM`.
    Medium,
    /// `HIGH`.
    High,
}

impl ThinkingLevel {
    /// The wire value.
    pub fn as_wire(self) -> &'static str {
        match self {
            ThinkingLevel::Minimal => "MINIMAL",
            ThinkingLevel::Low => "LOW",
            ThinkingLevel::Medium => "MEDIUM",
            ThinkingLevel::High => "HIGH",
        }
    }
}

/// `tools.webhooks[].scheduling`: how the model hears a webhook tool's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolScheduling {
    /// Spoken about once the model's current turn is over (NON_BLOCKING models).
    #[default]
    WhenIdle,
    /// Cuts the model's current turn to speak about it.
    Interrupt,
    /// Added to the context; the model says nothing about it.
    Silent,
    /// Declared BLOCKING: the model waits for the result (not on 3.8 extended thinking).
    Blocking,
}

/// `[gemini.vad]` — maps to `realtimeInputConfig`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Turn server VAD off (then the bridge would have to send activity signals; not supported
    /// for phone calls, so this must stay false).
    pub disabled: bool,
    /// `low` or `high`; empty = server default.
    pub start_sensitivity: String,
    /// `low` or `high`; empty = server default.
    pub end_sensitivity: String,
    /// Audio kept before detected speech start, ms (0 = server default).
    pub prefix_padding_ms: u32,
    /// Silence that ends the caller's turn, ms (0 = server default).
    pub silence_duration_ms: u32,
    /// Whether caller speech interrupts the agent (barge-in).
    pub barge_in: bool,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            disabled: false,
            start_sensitivity: String::new(),
            end_sensitivity: String::new(),
            prefix_padding_ms: 0,
            silence_duration_ms: 0,
            barge_in: true,
        }
    }
}

/// `[twilio]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioConfig {
    /// Account SID (`AC…`). Env `TWILIO_ACCOUNT_SID`.
    pub account_sid: String,
    /// REST base URL. Env `CALLBRIDGE_TWILIO_API_BASE`.
    pub api_base: String,
    /// TwiML verbs placed after `</Connect>`: Twilio runs them if the stream ends without a
    /// hang-up (model unreachable, bridge draining…). Empty: the call simply ends.
    pub fallback_twiml: String,
    /// API key SID (`SK…`) to use for REST instead of the account SID + auth token; its
    /// secret comes from env `TWILIO_API_SECRET`. Env `TWILIO_API_KEY`.
    pub api_key_sid: String,
    /// Check `X-Twilio-Signature` on the voice webhook and the media WebSocket upgrade, and
    /// require the webhook's single-use stream token on every new media stream. Turning it off
    /// must be explicit and is logged as a warning at start-up.
    pub validate_signatures: bool,
    /// Lifetime of the stream token the voice webhook issues, seconds.
    pub stream_token_ttl_secs: u64,
    /// Webhooks SharedKey SID (`KS…`) Twilio may sign with instead of the auth token (header
    /// `X-Twilio-Webhooks-Signature-Settings`); its secret comes from env
    /// `TWILIO_SHARED_KEY_SECRET`. Env `TWILIO_SHARED_KEY_SID`.
    pub shared_key_sid: String,
    /// Auth token, from env `TWILIO_AUTH_TOKEN` only.
    #[serde(skip)]
    pub auth_token: Secret,
    /// API key secret, from env `TWILIO_API_SECRET` only.
    #[serde(skip)]
    pub api_secret: Secret,
    /// SharedKey secret, from env `TWILIO_SHARED_KEY_SECRET` only.
    #[serde(skip)]
    pub shared_key_secret: Secret,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            account_sid: String::new(),
            api_base: DEFAULT_TWILIO_API_BASE.into(),
            fallback_twiml: "<Say>Sorry, our assistant is unavailable right now. Please call again later.</Say><Hangup/>"
                .into(),
            api_key_sid: String::new(),
            validate_signatures: true,
            stream_token_ttl_secs: 60,
            shared_key_sid: String::new(),
            auth_token: Secret::default(),
            api_secret: Secret::default(),
            shared_key_secret: Secret::default(),
        }
    }
}

/// `[playout]` — how model audio is paced to the caller.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlayoutConfig {
    /// Most audio queued ahead at Twilio, ms (whole 20 ms frames). Small keeps barge-in tight.
    pub lead_ms: u32,
    /// A mark is placed every this many ms of audio (and at each turn's end), so the bridge
    /// knows how much of a turn the caller has heard.
    pub mark_interval_ms: u32,
    /// Audio is topped up in batches: once the lead has fallen this far below `lead_ms`, the
    /// bridge refills it in one write (20 = a frame per write). The first audio of a turn and
    /// audio that arrives while the lead is low always go out at once.
    pub refill_ms: u32,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            lead_ms: 200,
            mark_interval_ms: 100,
            refill_ms: 100,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent calls accepted.
    pub max_calls: usize,
    /// Largest WebSocket message accepted from the caller leg, bytes.
    pub max_message_bytes: usize,
    /// Caller audio kept while the model session is being set up, ms (older audio is dropped).
    pub preconnect_buffer_ms: u32,
    /// Time allowed between the WebSocket upgrade and Twilio's `start`, ms. Twilio sends
    /// `connected` and `start` together right after the upgrade; a socket that has not
    /// started by then is closed (it held a pending-stream slot, not a call slot).
    pub start_timeout_ms: u64,
    /// Media sockets that may wait for their first `start` at once (a separate, small cap:
    /// a socket takes one of `max_calls` only once its stream token is redeemed on `start`).
    pub max_pending_streams: usize,
    /// Longest wait for one write to the caller's socket, ms: a peer that stops reading ends
    /// its call as `caller_unresponsive` instead of freezing the call's timers.
    pub caller_write_timeout_ms: u64,
    /// Longest call, seconds.
    pub max_call_secs: u64,
    /// Idle time after the last key press before pressed digits are sent to the model, ms.
    pub dtmf_idle_ms: u64,
    /// After `end_call` / `transfer_call` / `send_dtmf`, longest wait for the agent's last
    /// words to be heard before acting anyway, ms.
    pub end_call_grace_ms: u64,
    /// The caller said nothing for this long: the agent is asked to check in and wrap up, s
    /// (0 = off).
    pub silence_timeout_secs: u64,
    /// After the agent was asked to wrap up (silence or maximum duration), the call ends this
    /// long later at the latest, ms.
    pub wrap_up_grace_ms: u64,
    /// A continued stream (after `send_dtmf`) must reconnect within this long, ms.
    pub continuation_ttl_ms: u64,
    /// The stream is closed when no media arrived from the caller for this long, s.
    pub idle_stream_secs: u64,
    /// On SIGTERM/SIGINT, live calls continue this long before they are ended politely, s.
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_calls: 500,
            max_message_bytes: 64 * 1024,
            preconnect_buffer_ms: 5_000,
            start_timeout_ms: 2_000,
            max_pending_streams: 64,
            caller_write_timeout_ms: 5_000,
            max_call_secs: 3_600,
            dtmf_idle_ms: 2_000,
            end_call_grace_ms: 8_000,
            silence_timeout_secs: 30,
            wrap_up_grace_ms: 15_000,
            continuation_ttl_ms: 30_000,
            idle_stream_secs: 10,
            shutdown_grace_secs: 30,
        }
    }
}

impl TransferConfig {
    /// `allow_pattern` anchored to the whole number: `^(?:pattern)$`. An unanchored
    /// `is_match` would accept any number that merely *contains* an allowed one
    /// (`+14155551234999` for `\+1415555\d{4}`): toll fraud a caller could talk the model into.
    pub fn compile_allow(pattern: &str) -> Result<regex::Regex, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
    }
}

/// `[transfer]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Regular expression a free-form number (E.164) must match — as a whole, the bridge
    /// compiles `^(?:pattern)$` — for the model to transfer to it; empty = only the named
    /// destinations.
    pub allow_pattern: String,
    /// Caller ID for the transferred leg (E.164); empty = Twilio's default (the caller's).
    pub caller_id: String,
    /// Seconds the transfer target may ring.
    pub timeout_secs: u32,
    /// Destinations by name.
    pub destinations: BTreeMap<String, TransferDestination>,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            allow_pattern: String::new(),
            caller_id: String::new(),
            timeout_secs: 30,
            destinations: BTreeMap::new(),
        }
    }
}

/// `[transfer.destinations.<name>]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransferDestination {
    /// E.164 number (`+14155550100`) or SIP URI (`sip:desk@example.com`).
    pub target: String,
    /// What the model is told about this destination.
    pub description: String,
    /// Said to the person who answers before the caller is connected; empty = none.
    #[serde(default)]
    pub whisper: String,
}

/// `[tools]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Declare `send_dtmf` so the agent can navigate phone menus.
    pub send_dtmf: bool,
    /// Operator webhook tools (`[[tools.webhooks]]`). Requests carry
    /// `X-Callbridge-Timestamp` and `X-Callbridge-Signature: v1=<hex HMAC-SHA256 of
    /// "{timestamp}.{body}">` (see `call::webhook_tools`), key from env `CALLBRIDGE_TOOLS_SECRET`.
    pub webhooks: Vec<WebhookToolConfig>,
    /// Signing key, from env `CALLBRIDGE_TOOLS_SECRET` only; required (non-empty) when
    /// `webhooks` are configured.
    #[serde(skip)]
    pub secret: Secret,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            send_dtmf: true,
            webhooks: Vec::new(),
            secret: Secret::default(),
        }
    }
}

/// `[[tools.webhooks]]`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookToolConfig {
    /// Function name the model calls.
    pub name: String,
    /// What the model is told the tool does.
    pub description: String,
    /// Parameters as an OpenAPI-style schema object (`{type = "OBJECT", properties = …}`).
    #[serde(default)]
    pub parameters: Option<toml::Table>,
    /// URL callbridge POSTs the call to: `https://`, or `http://` with `allow_insecure`.
    pub url: String,
    /// Allow a plain `http://` URL (no TLS: the arguments, the call's numbers and the
    /// signature travel in the clear). Meant for a receiver on the same host or network, and
    /// for tests; there is no loopback exception.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Time allowed for the answer, ms.
    #[serde(default = "default_tool_timeout")]
    pub timeout_ms: u64,
    /// How the model hears the result: `when_idle`, `interrupt`, `silent` or `blocking`. On
    /// models whose tools are BLOCKING by default (2.5, 3.1) every tool is declared BLOCKING
    /// and this only matters as `blocking`.
    #[serde(default)]
    pub scheduling: ToolScheduling,
}

fn default_tool_timeout() -> u64 {
    5_000
}

/// Reads environment variables; a function so tests need not touch the process environment.
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Loads `path` (or the defaults when `None`), applies environment overrides and validates.
    pub fn load(path: Option<&Path>, env: EnvFn<'_>) -> Result<Config, ConfigError> {
        let (mut cfg, pricing_given) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                let cfg = Config::from_toml(&text, &p.display().to_string())?;
                let given = text
                    .parse::<toml::Table>()
                    .is_ok_and(|t| t.contains_key("pricing"));
                (cfg, given)
            }
            None => (Config::default(), false),
        };
        cfg.apply_env(env);
        if !pricing_given {
            // No [pricing] table: the configured model's own prices.
            cfg.pricing = PricingConfig::from_prices(&cfg.model_profile().0.prices);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no env, no validation).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim().to_string(),
        })
    }

    /// Applies the documented environment overrides.
    pub fn apply_env(&mut self, env: EnvFn<'_>) {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(v) = get("CALLBRIDGE_LISTEN") {
            self.server.listen = v;
        }
        if let Some(v) = get("CALLBRIDGE_PUBLIC_URL") {
            self.server.public_url = v;
        }
        if let Some(v) = get("CALLBRIDGE_GEMINI_URL") {
            self.gemini.url = v;
        }
        if let Some(v) = get("TWILIO_ACCOUNT_SID") {
            self.twilio.account_sid = v;
        }
        if let Some(v) = get("CALLBRIDGE_TWILIO_API_BASE") {
            self.twilio.api_base = v;
        }
        if let Some(v) = get("TWILIO_AUTH_TOKEN") {
            self.twilio.auth_token = Secret::new(v);
        }
        if let Some(v) = get("TWILIO_API_KEY") {
            self.twilio.api_key_sid = v;
        }
        if let Some(v) = get("TWILIO_API_SECRET") {
            self.twilio.api_secret = Secret::new(v);
        }
        if let Some(v) = get("TWILIO_SHARED_KEY_SID") {
            self.twilio.shared_key_sid = v;
        }
        if let Some(v) = get("TWILIO_SHARED_KEY_SECRET") {
            self.twilio.shared_key_secret = Secret::new(v);
        }
        if let Some(v) = get("CALLBRIDGE_TOOLS_SECRET") {
            self.tools.secret = Secret::new(v);
        }
        if let Some(v) = get("GEMINI_API_KEY") {
            self.gemini.api_key = Secret::new(v);
        }
        if let Some(v) = get("CALLBRIDGE_DATABASE_URL") {
            self.records.database_url = Secret::new(v);
        }
        if let Some(v) = get("CALLBRIDGE_OPERATOR_TOKEN") {
            self.operator.token = Secret::new(v);
        }
    }

    /// The behaviour profile of the configured model (`gemini.profile` pins one).
    pub fn model_profile(
        &self,
    ) -> (
        &'static crate::gemini::profile::ModelProfile,
        crate::gemini::profile::Match,
    ) {
        let pin = (!self.gemini.profile.is_empty()).then_some(self.gemini.profile.as_str());
        crate::gemini::profile::resolve(&self.gemini.model, pin)
    }

    /// The `gemini` keys the model's profile allows, requires or refuses.
    fn check_model_profile(&self) -> Result<(), ConfigError> {
        use crate::gemini::profile::{self as mp, ProactivityRule, ThinkingRule};
        let g = &self.gemini;
        if !g.profile.is_empty() && mp::by_name(&g.profile).is_none() {
            return Err(invalid(
                "gemini.profile",
                &g.profile,
                &format!("expected one of: {}", mp::names().join(", ")),
            ));
        }
        let (p, how) = self.model_profile();
        let name = p.name;
        match g.backend {
            Backend::Vertex => {
                for (key, v) in [
                    ("gemini.project", &g.project),
                    ("gemini.location", &g.location),
                ] {
                    let ok = !v.is_empty()
                        && v.len() <= 63
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                    if !ok {
                        return Err(invalid(
                            key,
                            v,
                            "gemini.backend = \"vertex\" needs a project id and a location such as us-central1",
                        ));
                    }
                }
                if how == mp::Match::Known
                    && p.backend == mp::Backend::GeminiApi
                    && p.status != mp::Status::Stable
                {
                    return Err(invalid(
                        "gemini.model",
                        &g.model,
                        "a Gemini Developer API preview id; Vertex AI serves e.g. gemini-live-2.5-flash-native-audio or gemini-3.8-live",
                    ));
                }
            }
            Backend::Gemini => {
                if how == mp::Match::Known && p.backend == mp::Backend::Vertex {
                    return Err(invalid(
                        "gemini.model",
                        &g.model,
                        "a Vertex AI model id; set gemini.backend = \"vertex\" (with project and location) or use gemini-3.8-live",
                    ));
                }
            }
        }
        let refuse = |key: &str, value: &str, why: &str| -> Result<(), ConfigError> {
            Err(invalid(key, value, &format!("{name} {why}")))
        };
        match (p.thinking, g.thinking) {
            (ThinkingRule::Forbidden, ThinkingMode::Level | ThinkingMode::Budget) => refuse(
                "gemini.thinking",
                "level/budget",
                "refuses thinkingConfig; use \"auto\" or \"off\"",
            )?,
            (ThinkingRule::Budget, ThinkingMode::Level) => refuse(
                "gemini.thinking",
                "level",
                "takes a thinking budget, not a level; use \"budget\" (0 = no thinking) or \"off\"",
            )?,
            (ThinkingRule::Level | ThinkingRule::LevelRequired, ThinkingMode::Budget) => refuse(
                "gemini.thinking",
                "budget",
                "takes a thinking level, not a budget; use \"level\"",
            )?,
            (ThinkingRule::LevelRequired, ThinkingMode::Off) => refuse(
                "gemini.thinking",
                "off",
                "requires a thinking level; use \"level\" or \"auto\" with thinking_level",
            )?,
            _ => {}
        }
        if g.thinking == ThinkingMode::Budget && g.thinking_budget > 24_576 {
            return Err(invalid(
                "gemini.thinking_budget",
                g.thinking_budget,
                "expected 0..=24576",
            ));
        }
        if g.affective_dialog && !p.affective_dialog {
            refuse(
                "gemini.affective_dialog",
                "true",
                "does not support affective dialog",
            )?;
        }
        if g.proactive_audio && p.proactivity == ProactivityRule::Forbidden {
            refuse(
                "gemini.proactive_audio",
                "true",
                "does not support proactive audio",
            )?;
        }
        if g.preflight_interval_secs > 86_400 {
            return Err(invalid(
                "gemini.preflight_interval_secs",
                g.preflight_interval_secs,
                "expected 0..=86400",
            ));
        }
        Ok(())
    }

    /// Checks every value; the error names the key and the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| invalid("server.listen", &self.server.listen, "expected ip:port"))?;
        let sv = &self.server;
        in_range(
            "server.max_connections",
            sv.max_connections as u64,
            1,
            1_000_000,
        )?;
        in_range(
            "server.header_timeout_ms",
            sv.header_timeout_ms,
            100,
            600_000,
        )?;
        in_range(
            "server.request_timeout_ms",
            sv.request_timeout_ms,
            100,
            3_600_000,
        )?;
        if sv.socket_send_buffer_bytes != 0 {
            in_range(
                "server.socket_send_buffer_bytes",
                sv.socket_send_buffer_bytes as u64,
                4096,
                64 * 1024 * 1024,
            )?;
        }
        if !self.server.public_url.is_empty() {
            let u = &self.server.public_url;
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"))
                .ok_or_else(|| invalid("server.public_url", u, "expected https://host[:port]"))?;
            if rest.is_empty() || rest.starts_with('/') || rest.contains('?') || rest.contains('#')
            {
                return Err(invalid(
                    "server.public_url",
                    u,
                    "expected https://host[:port] with no query",
                ));
            }
        }
        let g = &self.gemini;
        if !(g.url.starts_with("wss://") || g.url.starts_with("ws://")) {
            return Err(invalid(
                "gemini.url",
                &g.url,
                "expected a ws:// or wss:// URL",
            ));
        }
        if g.auth == "ephemeral_token" {
            // Removed: Google makes ephemeral tokens single-use by default, so one static
            // token fails on the second call and on the first fresh session after a fault.
            // Minting one per session from the API key would put the key on this server
            // anyway (the token would protect nothing) and add an HTTP round-trip before
            // every call and every reconnection. Ephemeral tokens are for browsers.
            return Err(invalid(
                "gemini.auth",
                &g.auth,
                "ephemeral tokens are single-use and only for client-side apps; use \"api_key\" \
                 (GEMINI_API_KEY) or gemini.backend = \"vertex\"",
            ));
        }
        if g.auth != "api_key" {
            return Err(invalid("gemini.auth", &g.auth, "expected \"api_key\""));
        }
        if g.model.trim().is_empty() || g.model.contains(char::is_whitespace) {
            return Err(invalid("gemini.model", &g.model, "expected a model id"));
        }
        self.check_model_profile()?;
        if !crate::gemini::setup::is_known_voice(&g.voice) {
            return Err(invalid(
                "gemini.voice",
                &g.voice,
                "expected one of the 30 prebuilt voices (case-sensitive), e.g. Kore, Puck, Charon",
            ));
        }
        if !g.language.is_empty()
            && !g
                .language
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                "gemini.language",
                &g.language,
                "expected a BCP-47 code such as en-US",
            ));
        }
        if g.greeting && g.greeting_instruction.trim().is_empty() {
            return Err(invalid(
                "gemini.greeting_instruction",
                "",
                "must not be empty when gemini.greeting is true",
            ));
        }
        if g.connect_timeout_ms == 0 || g.connect_timeout_ms > 120_000 {
            return Err(invalid(
                "gemini.connect_timeout_ms",
                g.connect_timeout_ms,
                "expected 1..=120000",
            ));
        }
        if g.setup_timeout_ms == 0 || g.setup_timeout_ms > 120_000 {
            return Err(invalid(
                "gemini.setup_timeout_ms",
                g.setup_timeout_ms,
                "expected 1..=120000",
            ));
        }
        if g.vad.disabled {
            return Err(invalid(
                "gemini.vad.disabled",
                true,
                "phone calls need the server's voice activity detection; keep it false",
            ));
        }
        for (key, v) in [
            ("gemini.vad.start_sensitivity", &g.vad.start_sensitivity),
            ("gemini.vad.end_sensitivity", &g.vad.end_sensitivity),
        ] {
            if !matches!(v.as_str(), "" | "low" | "high") {
                return Err(invalid(key, v, "expected \"low\", \"high\" or empty"));
            }
        }
        if g.vad.silence_duration_ms > 10_000 {
            return Err(invalid(
                "gemini.vad.silence_duration_ms",
                g.vad.silence_duration_ms,
                "expected 0..=10000",
            ));
        }
        if g.vad.prefix_padding_ms > 10_000 {
            return Err(invalid(
                "gemini.vad.prefix_padding_ms",
                g.vad.prefix_padding_ms,
                "expected 0..=10000",
            ));
        }
        let t = &self.twilio;
        if !t.account_sid.is_empty() && !is_sid(&t.account_sid, "AC") {
            return Err(invalid(
                "twilio.account_sid",
                &t.account_sid,
                "expected AC followed by 32 hex digits",
            ));
        }
        if !(t.api_base.starts_with("https://") || t.api_base.starts_with("http://")) {
            return Err(invalid(
                "twilio.api_base",
                &t.api_base,
                "expected an http(s):// URL",
            ));
        }
        if !t.fallback_twiml.is_empty() {
            crate::twilio::webhook::validate_fallback_fragment(&t.fallback_twiml)
                .map_err(|reason| invalid("twilio.fallback_twiml", &t.fallback_twiml, &reason))?;
        }
        if t.stream_token_ttl_secs == 0 || t.stream_token_ttl_secs > 3_600 {
            return Err(invalid(
                "twilio.stream_token_ttl_secs",
                t.stream_token_ttl_secs,
                "expected 1..=3600",
            ));
        }
        if !t.shared_key_sid.is_empty()
            && (t.shared_key_sid.len() > 64
                || !t.shared_key_sid.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(invalid(
                "twilio.shared_key_sid",
                &t.shared_key_sid,
                "expected a key SID such as KS followed by 32 hex digits",
            ));
        }
        if t.shared_key_sid.is_empty() != t.shared_key_secret.is_empty() {
            return Err(invalid(
                "twilio.shared_key_sid",
                &t.shared_key_sid,
                "TWILIO_SHARED_KEY_SID (or twilio.shared_key_sid) and TWILIO_SHARED_KEY_SECRET must be set together",
            ));
        }
        let pr = &self.pricing;
        for (key, v) in [
            ("pricing.input_text", pr.input_text),
            ("pricing.input_audio", pr.input_audio),
            ("pricing.input_other", pr.input_other),
            ("pricing.output_text", pr.output_text),
            ("pricing.output_audio", pr.output_audio),
            ("pricing.output_other", pr.output_other),
        ] {
            if !(v.is_finite() && (0.0..=1_000_000.0).contains(&v)) {
                return Err(invalid(
                    key,
                    v,
                    "expected USD per million tokens, 0..=1000000",
                ));
            }
        }
        let r = &self.records;
        if r.enabled && r.database_url.is_empty() && r.sqlite_path.trim().is_empty() {
            return Err(invalid(
                "records.sqlite_path",
                "",
                "set a file path, or CALLBRIDGE_DATABASE_URL, or records.enabled = false",
            ));
        }
        let url = r.database_url.expose();
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !url.is_empty() && !known.iter().any(|p| url.starts_with(p)) {
            // The URL may hold a password: name the scheme only.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(invalid(
                "CALLBRIDGE_DATABASE_URL",
                format!("{scheme}:…"),
                "expected postgres://, postgresql:// or sqlite:",
            ));
        }
        if r.recent_in_memory > 10_000 {
            return Err(invalid(
                "records.recent_in_memory",
                r.recent_in_memory,
                "expected 0..=10000",
            ));
        }
        if self.recording.enabled && self.recording.dir.trim().is_empty() {
            return Err(invalid("recording.dir", "", "expected a directory"));
        }
        let tok = self.operator.token.expose();
        if !tok.is_empty() && (tok.len() < 16 || tok.chars().any(|c| c.is_whitespace())) {
            return Err(invalid(
                "CALLBRIDGE_OPERATOR_TOKEN",
                "[redacted]",
                "expected at least 16 characters, no whitespace",
            ));
        }
        if self.metrics.enabled && self.metrics.require_token && tok.is_empty() {
            return Err(invalid(
                "metrics.require_token",
                true,
                "needs the operator token: set CALLBRIDGE_OPERATOR_TOKEN (16+ characters), or \
                 turn metrics.require_token off",
            ));
        }
        let p = &self.playout;
        if p.lead_ms < 20 || p.lead_ms > 5_000 || !p.lead_ms.is_multiple_of(20) {
            return Err(invalid(
                "playout.lead_ms",
                p.lead_ms,
                "expected a multiple of 20 in 20..=5000",
            ));
        }
        if p.refill_ms < 20 || p.refill_ms > p.lead_ms || !p.refill_ms.is_multiple_of(20) {
            return Err(invalid(
                "playout.refill_ms",
                p.refill_ms,
                "expected a multiple of 20 in 20..=playout.lead_ms",
            ));
        }
        if p.mark_interval_ms < 20
            || p.mark_interval_ms > 10_000
            || !p.mark_interval_ms.is_multiple_of(20)
        {
            return Err(invalid(
                "playout.mark_interval_ms",
                p.mark_interval_ms,
                "expected a multiple of 20 in 20..=10000",
            ));
        }
        let l = &self.limits;
        if l.max_calls == 0 {
            return Err(invalid(
                "limits.max_calls",
                l.max_calls,
                "expected at least 1",
            ));
        }
        if l.max_message_bytes < 4096 || l.max_message_bytes > 16 * 1024 * 1024 {
            return Err(invalid(
                "limits.max_message_bytes",
                l.max_message_bytes,
                "expected 4096..=16777216",
            ));
        }
        if l.preconnect_buffer_ms > 60_000 {
            return Err(invalid(
                "limits.preconnect_buffer_ms",
                l.preconnect_buffer_ms,
                "expected 0..=60000",
            ));
        }
        // Upper bounds too: a huge value would overflow `Instant` arithmetic on every call.
        in_range("limits.start_timeout_ms", l.start_timeout_ms, 1, 600_000)?;
        in_range(
            "limits.max_pending_streams",
            l.max_pending_streams as u64,
            1,
            100_000,
        )?;
        in_range(
            "limits.caller_write_timeout_ms",
            l.caller_write_timeout_ms,
            100,
            60_000,
        )?;
        in_range("limits.max_call_secs", l.max_call_secs, 1, 86_400)?;
        in_range(
            "limits.silence_timeout_secs",
            l.silence_timeout_secs,
            0,
            86_400,
        )?;
        in_range("limits.dtmf_idle_ms", l.dtmf_idle_ms, 1, 60_000)?;
        in_range("limits.end_call_grace_ms", l.end_call_grace_ms, 1, 60_000)?;
        in_range("limits.wrap_up_grace_ms", l.wrap_up_grace_ms, 1, 120_000)?;
        in_range("limits.idle_stream_secs", l.idle_stream_secs, 1, 3_600)?;
        if l.shutdown_grace_secs > 3_600 {
            return Err(invalid(
                "limits.shutdown_grace_secs",
                l.shutdown_grace_secs,
                "expected 0..=3600",
            ));
        }
        in_range(
            "limits.continuation_ttl_ms",
            l.continuation_ttl_ms,
            1,
            600_000,
        )?;
        if !t.api_key_sid.is_empty() && !is_sid(&t.api_key_sid, "SK") {
            return Err(invalid(
                "twilio.api_key_sid",
                &t.api_key_sid,
                "expected SK followed by 32 hex digits",
            ));
        }
        let se = &self.session;
        if !matches!(se.handover.as_str(), "close_first" | "overlap") {
            return Err(invalid(
                "session.handover",
                &se.handover,
                "expected \"close_first\" or \"overlap\"",
            ));
        }
        if se.max_reconnects > 20 {
            return Err(invalid(
                "session.max_reconnects",
                se.max_reconnects,
                "expected 0..=20",
            ));
        }
        if se.reconnect_backoff_ms == 0 || se.reconnect_backoff_ms > 10_000 {
            return Err(invalid(
                "session.reconnect_backoff_ms",
                se.reconnect_backoff_ms,
                "expected 1..=10000",
            ));
        }
        if se.max_sessions_per_call == 0 {
            return Err(invalid(
                "session.max_sessions_per_call",
                0,
                "expected at least 1",
            ));
        }
        let tr = &self.transfer;
        if !tr.allow_pattern.is_empty() {
            TransferConfig::compile_allow(&tr.allow_pattern).map_err(|e| {
                invalid(
                    "transfer.allow_pattern",
                    &tr.allow_pattern,
                    &format!("not a regular expression: {e}"),
                )
            })?;
        }
        if !tr.caller_id.is_empty() && !is_e164(&tr.caller_id) {
            return Err(invalid(
                "transfer.caller_id",
                &tr.caller_id,
                "expected an E.164 number",
            ));
        }
        if tr.timeout_secs < 5 || tr.timeout_secs > 600 {
            return Err(invalid(
                "transfer.timeout_secs",
                tr.timeout_secs,
                "expected 5..=600",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.tools.webhooks.iter().enumerate() {
            let key = format!("tools.webhooks[{i}]");
            if w.name.is_empty()
                || !w
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                || w.name.len() > 64
            {
                return Err(invalid(
                    &format!("{key}.name"),
                    &w.name,
                    "names use letters, digits, _ and - (at most 64)",
                ));
            }
            if matches!(w.name.as_str(), "end_call" | "transfer_call" | "send_dtmf")
                || !names.insert(w.name.clone())
            {
                return Err(invalid(
                    &format!("{key}.name"),
                    &w.name,
                    "already used by another tool",
                ));
            }
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                return Err(invalid(
                    &format!("{key}.url"),
                    &w.url,
                    "expected an http(s):// URL",
                ));
            }
            if w.url.starts_with("http://") && !w.allow_insecure {
                return Err(invalid(
                    &format!("{key}.url"),
                    &w.url,
                    &format!(
                        "tool {:?} uses plain http://; use https:// or set \
                         allow_insecure = true on this webhook",
                        w.name
                    ),
                ));
            }
            if w.timeout_ms == 0 || w.timeout_ms > 60_000 {
                return Err(invalid(
                    &format!("{key}.timeout_ms"),
                    w.timeout_ms,
                    "expected 1..=60000",
                ));
            }
            let profile = self.model_profile().0;
            if w.scheduling == ToolScheduling::Blocking
                && !profile.allows(crate::gemini::profile::ToolBehavior::Blocking)
            {
                return Err(invalid(
                    &format!("{key}.scheduling"),
                    "blocking",
                    &format!(
                        "{} takes asynchronous (NON_BLOCKING) tools only; use when_idle, interrupt or silent",
                        profile.name
                    ),
                ));
            }
        }
        // Parameter schemas of operator tools are checked here so a typo stops the bridge
        // before it binds rather than failing the model's setup on the first call.
        tool_schema::check_schemas(&self.tools.webhooks).map_err(|e| {
            invalid(
                &format!("tools.webhooks.{}.{}", e.tool, e.path),
                &e.tool,
                &e.reason,
            )
        })?;
        // Unsigned (empty-key) requests would let anyone who can reach the operator's URL
        // call its tools; refuse to start instead.
        if !self.tools.webhooks.is_empty() && self.tools.secret.expose().trim().is_empty() {
            return Err(invalid(
                "CALLBRIDGE_TOOLS_SECRET",
                "",
                "must be set (tools.secret, the key webhook tool requests are signed with) \
                 when [[tools.webhooks]] are configured",
            ));
        }
        for (name, d) in &self.transfer.destinations {
            let key = format!("transfer.destinations.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(&key, name, "names use letters, digits, _ and -"));
            }
            if !is_e164(&d.target) && !d.target.starts_with("sip:") {
                return Err(invalid(
                    &format!("{key}.target"),
                    &d.target,
                    "expected an E.164 number (+14155550100) or a sip: URI",
                ));
            }
        }
        Ok(())
    }

    /// The stream URL put in TwiML: `wss://{public host}/twilio/media`, or `None` when
    /// `server.public_url` is unset.
    pub fn stream_url(&self) -> Option<String> {
        let u = &self.server.public_url;
        let host = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"))?
            .trim_end_matches('/');
        (!host.is_empty()).then(|| format!("wss://{host}/twilio/media"))
    }

    /// Connect timeout as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.gemini.connect_timeout_ms)
    }
}

/// `PREFIX` followed by 32 hex digits.
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// `+` followed by 8 to 15 digits.
pub fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}
