//! What the Gemini simulator saw, kept for tests to assert against.
//!
//! Owns the record data types. Sessions append to their [`ConnectionRecord`] behind a mutex;
//! [`super::GeminiSimHandle::record`] hands out a snapshot. Does not interpret anything.

use serde_json::Value;

/// Everything the simulator recorded, one entry per accepted WebSocket upgrade.
#[derive(Debug, Clone, Default)]
pub struct SimRecord {
    /// Connections in the order they were upgraded.
    pub connections: Vec<ConnectionRecord>,
    /// Upgrade attempts refused with an HTTP status (404 route, 429 fault).
    pub rejected_upgrades: Vec<RejectedUpgrade>,
}

/// An upgrade refused before the WebSocket existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedUpgrade {
    /// Request path as received.
    pub path: String,
    /// HTTP status returned.
    pub status: u16,
}

/// How a client frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Opcode 1.
    Text,
    /// Opcode 2.
    Binary,
}

/// One received data frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFrame {
    /// Text or binary.
    pub kind: FrameKind,
    /// Payload (lossy UTF-8 for binary frames).
    pub raw: String,
    /// Milliseconds since the connection opened.
    pub at_ms: u64,
}

/// One `realtimeInput.audio` chunk, as 16 kHz samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioChunk {
    /// Milliseconds since the connection opened when it arrived.
    pub at_ms: u64,
    /// Index of its first sample in [`ConnectionRecord::audio`].
    pub offset: usize,
    /// Number of 16 kHz samples.
    pub len: usize,
    /// Sample rate declared in the mime type (resampled to 16 kHz when different).
    pub declared_rate: u32,
}

/// What started a model turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnTrigger {
    /// Energy VAD detected the end of speech.
    Vad,
    /// `realtimeInput.audioStreamEnd` ended the speech.
    AudioStreamEnd,
    /// `realtimeInput.activityEnd` (VAD disabled).
    ActivityEnd,
    /// `realtimeInput.text`.
    Text,
    /// `clientContent` with `turnComplete: true`.
    ClientContent,
}

/// A user turn the simulator detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTurn {
    /// Start of speech, in ms of received audio (0 for text turns).
    pub audio_start_ms: u64,
    /// End of speech, in ms of received audio (0 for text turns).
    pub audio_end_ms: u64,
    /// Wall-clock ms since the connection opened when the turn was detected as ended.
    pub at_ms: u64,
    /// What ended it.
    pub trigger: TurnTrigger,
    /// Whether it interrupted a model turn (barge-in).
    pub interrupted_model: bool,
}

/// Who closed the connection and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseRecord {
    /// The simulator sent a close frame.
    ByServer {
        /// Close code.
        code: u16,
        /// Reason (already truncated).
        reason: String,
    },
    /// The simulator dropped the socket without a close frame (fault injection).
    Dropped,
    /// The client sent a close frame (`None` = no status code, seen as 1005).
    ByClient {
        /// Close code.
        code: Option<u16>,
        /// Reason.
        reason: String,
    },
    /// The socket ended without a close frame from the client.
    ClientGone,
}

/// Everything about one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRecord {
    /// 0-based connection index within this simulator.
    pub index: usize,
    /// Request path as received (before slash collapsing).
    pub path: String,
    /// API version from the path.
    pub api_version: String,
    /// Credential source used (`"key-query"`, `"key-header"`, `"token-query"`, `"token-header"`, or `""`).
    pub credential_source: String,
    /// Every data frame received, in order.
    pub frames: Vec<RecordedFrame>,
    /// The `setup` member of the first message (as sent, not normalised).
    pub setup: Option<Value>,
    /// All received audio, 16 kHz mono samples, concatenated.
    pub audio: Vec<i16>,
    /// Per-chunk arrival information for [`ConnectionRecord::audio`].
    pub audio_chunks: Vec<AudioChunk>,
    /// Each `functionResponses[]` element received.
    pub tool_responses: Vec<Value>,
    /// Tool call ids the simulator issued.
    pub tool_calls_sent: Vec<String>,
    /// User turns detected.
    pub user_turns: Vec<UserTurn>,
    /// Resumption handle the client presented in setup, if any.
    pub resumed_from: Option<String>,
    /// Resumable handles this connection sent (`sessionResumptionUpdate.newHandle`), in order:
    /// the last one is the newest the client can have seen.
    pub handles_issued: Vec<String>,
    /// How the connection ended (`None` while open).
    pub close: Option<CloseRecord>,
}

impl ConnectionRecord {
    /// The received frames' raw text.
    pub fn raw_frames(&self) -> Vec<&str> {
        self.frames.iter().map(|f| f.raw.as_str()).collect()
    }
}
