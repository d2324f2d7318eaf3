//! `callbridge simulate-gemini`: a local Gemini Live (BidiGenerateContent) server.
//!
//! A product feature, not a test helper: the bridge's tests and the demo run against it, and a
//! developer can point a real phone number at a bridge configured with its URL. It follows
//! `shared/specs/gemini-live.md` §13 — routes, auth, proto-JSON leniency (camelCase and
//! snake_case, both base64 alphabets), setup validation with the real close codes and
//! reasons, an energy VAD, scripted replies paced faster than real time, barge-in, tool calls
//! (BLOCKING, and NON_BLOCKING with SILENT / WHEN_IDLE / INTERRUPT scheduling), session
//! resumption, goAway/lifetime and fault injection — and it records everything it received
//! for tests to assert on. The model id in `setup` selects a behaviour profile (`proto`'s
//! model table: event shape, which setup fields are refused or required, tool defaults,
//! `interactionStatus`, the 2.5 stall after an incomplete `clientContent`); retired ids are
//! refused like the real service refuses them.
//!
//! It deliberately does not use `crate::gemini`: it reads and writes `serde_json::Value`
//! exactly as the spec describes, so a bridge codec bug cannot hide by agreeing with itself.
//!
//! Layout: [`scenario`] (what the model says), `proto` (leniency helpers, model table),
//! `session` (sans-IO per-connection core), `server` (axum listener and socket shell),
//! [`record`] (what was received).
//!
//! Not implemented: `wss://` (the Python SDK needs TLS; the Rust bridge does not), the
//! constrained endpoint's token-locked fields and use counts, and `willContinue` (generator)
//! tool responses.

pub mod record;
pub mod scenario;

mod proto;
mod server;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use record::{
    AudioChunk, CloseRecord, ConnectionRecord, FrameKind, RecordedFrame, RejectedUpgrade,
    SimRecord, TurnTrigger, UserTurn,
};
pub use scenario::{Clip, FaultAction, Faults, Reply, Scenario, ToolCall, Turn, TurnFault};

/// The path every SDK-compatible client connects to (v1beta, API key method).
pub const DEFAULT_PATH: &str =
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

/// The Vertex AI Live path (v1; v1beta1 is accepted too). Needs `Authorization: Bearer` and a
/// full `projects/…/publishers/google/models/…` model in `setup`.
pub const VERTEX_PATH: &str = "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent";

/// Errors from building, loading or running the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A scenario or WAV file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The scenario file is malformed.
    #[error("bad scenario: {0}")]
    Scenario(String),
    /// A WAV clip is malformed or has the wrong format.
    #[error("bad wav: {0}")]
    Wav(String),
    /// A builder knob is out of range.
    #[error("bad simulator setting: {0}")]
    Config(String),
    /// The server task failed.
    #[error("simulator server failed: {0}")]
    Serve(std::io::Error),
}

/// Knobs of one simulator instance (immutable once spawned).
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub(crate) scenario: Scenario,
    pub(crate) keys: Vec<String>,
    pub(crate) bearer_tokens: Vec<String>,
    pub(crate) auth_close_code: u16,
    pub(crate) lifetime: Duration,
    pub(crate) go_away_lead: Duration,
    pub(crate) go_away_close_code: u16,
    pub(crate) go_away_close_reason: String,
    /// After goAway, one fresh resumable handle this much later on the same connection.
    pub(crate) handle_after_go_away: Option<Duration>,
    pub(crate) binary_frames: bool,
    pub(crate) chunk_ms: u32,
    pub(crate) pace: f64,
    pub(crate) response_latency: Duration,
    pub(crate) realtime_playback: bool,
    pub(crate) vad_threshold: f64,
    pub(crate) vad_start_ms: u32,
    pub(crate) default_silence_ms: u32,
    pub(crate) resumption_ttl: Duration,
    pub(crate) record_content: bool,
    /// Extra retired model ids (without `models/`), on top of `proto::RETIRED_MODELS`.
    pub(crate) retired_models: Vec<String>,
}

/// State shared by the listener and every connection of one simulator.
pub(crate) struct SimShared {
    pub(crate) config: SimConfig,
    /// Resumption handles survive across connections (that is their point).
    pub(crate) store: session::ResumptionStore,
    /// Tool call ids are unique across the simulator's connections.
    pub(crate) tool_seq: AtomicU64,
    /// Everything received; a std mutex because it is only held for short appends.
    pub(crate) record: Mutex<SimRecord>,
    /// Upgrades refused so far by the `reject_upgrade_status` fault.
    pub(crate) rejected: AtomicU64,
    /// Audio counters for load runs.
    pub(crate) counters: LoadCounters,
}

/// Audio the simulator received and sent, across connections, for load runs.
#[derive(Default)]
pub struct LoadCounters {
    /// 16 kHz samples received in `realtimeInput.audio`.
    pub audio_in_samples: AtomicU64,
    /// `realtimeInput.audio` messages received.
    pub audio_in_chunks: AtomicU64,
    /// 24 kHz samples sent in `modelTurn` inline data.
    pub audio_out_samples: AtomicU64,
    /// Time between consecutive audio messages of one connection (≈ 20 ms from a phone
    /// bridge; the excess is jitter added between the caller and here).
    pub audio_in_gap: crate::stats::Histogram,
}

/// Builder for a [`GeminiSim`]; see [`GeminiSim::builder`].
#[derive(Debug, Clone)]
pub struct GeminiSimBuilder {
    config: SimConfig,
    addr: SocketAddr,
}

/// The Gemini Live simulator.
pub struct GeminiSim;

impl GeminiSim {
    /// A simulator on `127.0.0.1:0` with the built-in scenario and realistic defaults:
    /// any non-empty key, 600 s lifetime with a 60 s goAway lead, binary frames, 40 ms chunks
    /// paced at 3x real time after 300 ms of latency, turnComplete held until the reply would
    /// have finished playing in real time.
    pub fn builder() -> GeminiSimBuilder {
        GeminiSimBuilder {
            config: SimConfig {
                scenario: Scenario::default(),
                keys: Vec::new(),
                bearer_tokens: Vec::new(),
                auth_close_code: 1007,
                lifetime: Duration::from_secs(600),
                go_away_lead: Duration::from_secs(60),
                go_away_close_code: 1011,
                go_away_close_reason: proto::REASON_DEADLINE.to_string(),
                handle_after_go_away: None,
                binary_frames: true,
                chunk_ms: 40,
                pace: 3.0,
                response_latency: Duration::from_millis(300),
                realtime_playback: true,
                vad_threshold: 400.0,
                vad_start_ms: 80,
                default_silence_ms: 600,
                resumption_ttl: Duration::from_secs(2 * 3600),
                record_content: true,
                retired_models: Vec::new(),
            },
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl GeminiSimBuilder {
    /// The script the model follows.
    pub fn scenario(mut self, scenario: Scenario) -> Self {
        self.config.scenario = scenario;
        self
    }

    /// Accepted API keys / tokens; empty accepts any non-empty credential.
    pub fn keys(mut self, keys: Vec<String>) -> Self {
        self.config.keys = keys;
        self
    }

    /// Accepted Vertex AI bearer tokens (`Authorization: Bearer …` on [`VERTEX_PATH`]); empty:
    /// checked against [`GeminiSimBuilder::keys`] (so empty there too accepts any non-empty
    /// token). A Vertex upgrade without an accepted token is refused with HTTP 401.
    pub fn bearer_tokens(mut self, tokens: Vec<String>) -> Self {
        self.config.bearer_tokens = tokens;
        self
    }

    /// Close code for a bad or missing key (default 1007).
    pub fn auth_close_code(mut self, code: u16) -> Self {
        self.config.auth_close_code = code;
        self
    }

    /// Connection lifetime (default 600 s).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.config.lifetime = lifetime;
        self
    }

    /// How long before the end of the lifetime `goAway` is sent (default 60 s).
    pub fn go_away_lead(mut self, lead: Duration) -> Self {
        self.config.go_away_lead = lead;
        self
    }

    /// After `goAway`, send one more `sessionResumptionUpdate` (a fresh resumable handle)
    /// `delay` later on the same connection (default: none). The real service keeps sending
    /// on a connection after `goAway` until the client closes it or `timeLeft` runs out, so an
    /// update can cross the client's close frame; with `Duration::ZERO` it follows the goAway
    /// in the same burst, ahead of anything the client sends in reaction to the goAway.
    /// Needs `setup.sessionResumption`.
    pub fn handle_after_go_away(mut self, delay: Duration) -> Self {
        self.config.handle_after_go_away = Some(delay);
        self
    }

    /// Close code and reason used when the lifetime expires
    /// (default 1011 "Deadline expired before operation could complete.").
    pub fn expiry_close(mut self, code: u16, reason: &str) -> Self {
        self.config.go_away_close_code = code;
        self.config.go_away_close_reason = reason.to_string();
        self
    }

    /// Send server JSON in binary frames (default, like the real service) or text frames.
    pub fn binary_frames(mut self, binary: bool) -> Self {
        self.config.binary_frames = binary;
        self
    }

    /// Audio chunk length in ms (default 40 ms = 1920 bytes at 24 kHz).
    pub fn chunk_ms(mut self, ms: u32) -> Self {
        self.config.chunk_ms = ms;
        self
    }

    /// How many times faster than real time audio is sent (default 3.0).
    pub fn pace(mut self, pace: f64) -> Self {
        self.config.pace = pace;
        self
    }

    /// Delay between the end of a user turn and the first reply chunk (default 300 ms).
    pub fn response_latency(mut self, latency: Duration) -> Self {
        self.config.response_latency = latency;
        self
    }

    /// Hold `turnComplete` until the reply would have finished playing in real time (default
    /// true, like the real model). Tests may turn it off to run faster.
    pub fn realtime_playback(mut self, hold: bool) -> Self {
        self.config.realtime_playback = hold;
        self
    }

    /// VAD: RMS threshold (16-bit scale, default 400), ms of energy to start speech
    /// (default 80), and silence to end it when setup gives no `silenceDurationMs` (default 600).
    pub fn vad(mut self, threshold_rms: f64, start_ms: u32, default_silence_ms: u32) -> Self {
        self.config.vad_threshold = threshold_rms;
        self.config.vad_start_ms = start_ms;
        self.config.default_silence_ms = default_silence_ms;
        self
    }

    /// How long a resumption handle stays valid after its session ended (default 2 h).
    pub fn resumption_ttl(mut self, ttl: Duration) -> Self {
        self.config.resumption_ttl = ttl;
        self
    }

    /// Keep every frame's text and all received audio in the record (default true). Load
    /// runs turn it off: the record then keeps setup, turns and closes, and
    /// [`GeminiSimHandle::counters`] still counts audio.
    pub fn record_content(mut self, keep: bool) -> Self {
        self.config.record_content = keep;
        self
    }

    /// Model ids that are shut down, on top of the built-in retired ones
    /// (`gemini-live-2.5-flash-preview`, `gemini-2.0-flash-live-001`): a `setup` naming one is
    /// closed with 1008 "Requested entity was not found." instead of `setupComplete`, even if
    /// the id is in the model table (so a test can retire a preview model). With or without
    /// `models/`.
    pub fn retired_models(mut self, ids: Vec<String>) -> Self {
        self.config.retired_models = ids
            .into_iter()
            .map(|id| id.strip_prefix("models/").map(str::to_string).unwrap_or(id))
            .collect();
        self
    }

    /// Listen address (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Bind and start serving.
    pub async fn spawn(self) -> Result<GeminiSimHandle, SimError> {
        let c = &self.config;
        if !(c.pace.is_finite() && c.pace > 0.0) {
            return Err(SimError::Config(format!("pace {} must be > 0", c.pace)));
        }
        if c.chunk_ms == 0 {
            return Err(SimError::Config("chunk_ms 0 must be > 0".into()));
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: self.addr,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| SimError::Bind {
            addr: self.addr,
            source,
        })?;
        let shared = Arc::new(SimShared {
            store: session::ResumptionStore::new(self.config.resumption_ttl),
            config: self.config,
            tool_seq: AtomicU64::new(1),
            record: Mutex::new(SimRecord::default()),
            rejected: AtomicU64::new(0),
            counters: LoadCounters::default(),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let app = server::app(Arc::clone(&shared), cancel.clone(), tracker.clone());
        let shutdown = cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        tracing::debug!(%local, "gemini simulator listening");
        Ok(GeminiSimHandle {
            addr: local,
            shared,
            cancel,
            tracker,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it without [`GeminiSimHandle::shutdown`] stops accepting
/// and closes connections in the background.
pub struct GeminiSimHandle {
    addr: SocketAddr,
    shared: Arc<SimShared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl GeminiSimHandle {
    /// Bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Full URL of the v1beta Live endpoint, without credentials (add `?key=`).
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, DEFAULT_PATH)
    }

    /// Full URL of the Vertex AI Live endpoint (send `Authorization: Bearer`).
    pub fn vertex_url(&self) -> String {
        format!("ws://{}{}", self.addr, VERTEX_PATH)
    }

    /// Audio counters across all connections (kept even without [`GeminiSimBuilder::record_content`]).
    pub fn counters(&self) -> &LoadCounters {
        &self.shared.counters
    }

    /// Snapshot of everything received so far.
    pub fn record(&self) -> SimRecord {
        match self.shared.record.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Stop accepting, close open connections with 1001 and wait for them.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(SimError::Serve(e)),
                Err(e) => return Err(SimError::Serve(std::io::Error::other(e))),
            }
        }
        Ok(())
    }
}

impl Drop for GeminiSimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `callbridge simulate-gemini` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Scenario TOML file (see scenarios/); the built-in greeting/long/goodbye script if absent.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Accepted API keys, comma-separated; empty accepts any non-empty key.
    #[arg(long, value_delimiter = ',')]
    pub keys: Vec<String>,
    /// Connection lifetime in seconds.
    #[arg(long, default_value_t = 600)]
    pub lifetime_secs: u64,
    /// Seconds before the end of the lifetime that goAway is sent.
    #[arg(long, default_value_t = 60)]
    pub go_away_secs: u64,
    /// Send server JSON in text frames instead of binary frames.
    #[arg(long)]
    pub text_frames: bool,
    /// How many times faster than real time reply audio is sent.
    #[arg(long, default_value_t = 3.0)]
    pub pace: f64,
}

/// Run the simulator until Ctrl-C.
pub async fn run_cli(args: SimulateArgs) -> Result<(), SimError> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    let handle = GeminiSim::builder()
        .listen(args.listen)
        .scenario(scenario)
        .keys(args.keys)
        .lifetime(Duration::from_secs(args.lifetime_secs))
        .go_away_lead(Duration::from_secs(args.go_away_secs))
        .binary_frames(!args.text_frames)
        .pace(args.pace)
        .spawn()
        .await?;
    tracing::info!(url = %handle.url(), "gemini simulator ready");
    println!("gemini simulator listening on {}", handle.url());
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("gemini simulator shutting down");
    handle.shutdown().await
}
