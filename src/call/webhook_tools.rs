//! Operator webhook tools: functions the operator declares in config (`[[tools.webhooks]]`)
//! and serves over HTTPS.
//!
//! When the model calls one, callbridge POSTs `{"tool", "id", "arguments", "call"}` (compact
//! JSON) to the tool's URL, signed (below), and hands the JSON reply back to the model as the
//! tool response. A timeout, a non-2xx status or a reply that is not JSON becomes a
//! [`ToolError`], which the model is told about in words it can pass on
//! ([`ToolError::for_model`]).
//!
//! # Signature (scheme `v1`)
//!
//! Every request carries two headers:
//!
//! ```text
//! X-Callbridge-Timestamp: 1767225600
//! X-Callbridge-Signature: v1=<lowercase hex HMAC-SHA256(secret, "1767225600." + raw body)>
//! ```
//!
//! The timestamp (Unix seconds when the request was signed) is inside the signed string, so
//! a captured request cannot be replayed later: a receiver recomputes the HMAC over
//! `"{timestamp}.{body}"` with the shared secret (`CALLBRIDGE_TOOLS_SECRET`), compares it in
//! constant time, and refuses a timestamp more than 5 minutes away from its own clock
//! ([`SIGNATURE_TOLERANCE`]). [`verify_webhook_signature`] does all of that. The signature
//! header is a comma-separated list of `version=hex` items; a receiver accepts when any `v1`
//! item matches and ignores versions it does not know (room for key rotation and later
//! schemes). This replaced the unversioned `sha256=<HMAC of the body>` scheme, which carried no
//! timestamp.
//!
//! Owns: the request and its signature ([`sign`], [`verify_webhook_signature`]), reading the
//! reply, the
//! function declarations for the setup message ([`declarations`]), and the effect trait
//! [`ToolExecutor`] with its real ([`HttpToolExecutor`]) and recording
//! ([`RecordingExecutor`]) implementations.
//!
//! Does not own: when tools run or are cancelled (the call driver runs each
//! [`ToolExecutor::execute`] future in a task and aborts it on `toolCallCancellation`;
//! dropping the future drops the HTTP request and closes its connection), nor the
//! `functionResponse` wire shape (`gemini::wire`). It does not import `call::machine`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::WebhookToolConfig;
use crate::gemini::setup::FunctionDeclaration;
use crate::secret::Secret;

/// Header carrying `v1=<lowercase hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>`.
pub const SIGNATURE_HEADER: &str = "X-Callbridge-Signature";
/// Header carrying the Unix time (seconds, decimal digits) the request was signed at; it is
/// part of the signed string.
pub const TIMESTAMP_HEADER: &str = "X-Callbridge-Timestamp";
/// The signature scheme's version label in [`SIGNATURE_HEADER`].
pub const SIGNATURE_VERSION: &str = "v1";
/// How far a request's timestamp may be from the receiver's clock, either way, for
/// [`verify_webhook_signature`] to accept it: 5 minutes.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);
/// Header carrying the tool's name (also in the body), for routing at the operator.
pub const TOOL_HEADER: &str = "X-Callbridge-Tool";
/// Largest reply read from an operator; a longer one is an [`ToolError::InvalidJson`]
/// (the model could not use it anyway).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Longest body excerpt kept in [`ToolError::Status`].
pub const STATUS_EXCERPT_CHARS: usize = 200;

/// Call context sent with every webhook request. `from`/`to` are sent only when known
/// (the driver takes them from the stream's `customParameters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ToolCallContext {
    /// Twilio call SID (`CA…`).
    pub call_sid: String,
    /// Twilio stream SID (`MZ…`).
    pub stream_sid: String,
    /// Twilio account SID (`AC…`).
    pub account_sid: String,
    /// Caller's number, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Called number, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Why a webhook tool produced no result. The `Display` text is for logs (it may carry the
/// operator's body excerpt, never the URL); [`ToolError::for_model`] is for the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No complete answer within the tool's `timeout_ms`.
    #[error("operator did not answer within {ms} ms")]
    Timeout {
        /// The configured timeout.
        ms: u64,
    },
    /// The operator answered with a non-2xx status.
    #[error("operator answered http {status}: {body:?}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The body's first [`STATUS_EXCERPT_CHARS`] characters.
        body: String,
    },
    /// A 2xx reply that is not JSON (or is larger than [`MAX_REPLY_BYTES`]).
    #[error("operator reply is not usable json: {0}")]
    InvalidJson(String),
    /// The request could not be made or the connection failed (the text never has the URL).
    #[error("request to operator failed: {0}")]
    Transport(String),
}

impl ToolError {
    /// A short text for the model: what happened and that the caller should be told it did
    /// not work. Never contains the URL, the secret or the operator's body.
    pub fn for_model(&self) -> String {
        const TELL: &str = "Tell the caller it could not be done right now and that they \
                            can try again later.";
        match self {
            ToolError::Timeout { ms } => {
                let secs = (*ms as f64 / 1000.0).max(0.1);
                format!("The tool did not answer within {secs:.1} seconds. {TELL}")
            }
            ToolError::Status { status, .. } if *status >= 500 || matches!(status, 408 | 429) => {
                format!("The tool's service is having problems (HTTP {status}). {TELL}")
            }
            ToolError::Status { status, .. } => {
                format!("The tool's service refused the request (HTTP {status}). {TELL}")
            }
            ToolError::InvalidJson(_) => {
                format!("The tool's service sent a reply that could not be read. {TELL}")
            }
            ToolError::Transport(_) => {
                format!("The tool's service could not be reached. {TELL}")
            }
        }
    }

    /// The tool response object to send the model: `{"error": for_model()}`.
    pub fn response(&self) -> Value {
        json!({ "error": self.for_model() })
    }

    /// A stable one-word kind for logs and metrics: `timeout`, `status`, `invalid_json`,
    /// `transport`.
    pub fn kind(&self) -> &'static str {
        match self {
            ToolError::Timeout { .. } => "timeout",
            ToolError::Status { .. } => "status",
            ToolError::InvalidJson(_) => "invalid_json",
            ToolError::Transport(_) => "transport",
        }
    }
}

/// The boxed future [`ToolExecutor::execute`] returns.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, ToolError>> + Send + 'a>>;

/// Runs webhook tools. Dropping the returned future cancels the call (for HTTP, the request
/// is abandoned and its connection closed).
pub trait ToolExecutor: Send + Sync {
    /// Calls `tool` with the model's `args` for function call `id`. `Ok` is always a JSON
    /// object, ready to be the tool response.
    fn execute<'a>(
        &'a self,
        tool: &'a WebhookToolConfig,
        id: &'a str,
        args: &'a Value,
        ctx: &'a ToolCallContext,
    ) -> ToolFuture<'a>;
}

/// The request body, in this field order.
#[derive(Serialize)]
struct RequestBody<'a> {
    tool: &'a str,
    id: &'a str,
    arguments: &'a Value,
    call: &'a ToolCallContext,
}

/// The request body exactly as [`HttpToolExecutor`] sends (and signs) it.
pub fn request_body(tool: &str, id: &str, args: &Value, ctx: &ToolCallContext) -> Vec<u8> {
    // Cannot fail: string keys only, and `Value` holds no non-finite numbers.
    serde_json::to_vec(&RequestBody {
        tool,
        id,
        arguments: args,
        call: ctx,
    })
    .expect("tool request body always serialises")
}

/// Calls operator webhooks over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpToolExecutor {
    client: reqwest::Client,
    secret: Secret,
}

impl HttpToolExecutor {
    /// An executor signing with `secret` (`CALLBRIDGE_TOOLS_SECRET`).
    pub fn new(secret: Secret) -> Self {
        let client = reqwest::Client::builder()
            // A redirect would turn the signed POST into something else; treat 3xx as an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpToolExecutor { client, secret }
    }

    async fn call(
        &self,
        tool: &WebhookToolConfig,
        id: &str,
        args: &Value,
        ctx: &ToolCallContext,
    ) -> Result<Value, ToolError> {
        if tool.url.starts_with("http://") && !tool.allow_insecure {
            // Config validation refuses this; a config built in code gets the same answer.
            return Err(ToolError::Transport(format!(
                "plain http:// URL for tool {} without allow_insecure",
                tool.name
            )));
        }
        let body = request_body(&tool.name, id, args, ctx);
        let timestamp = unix_secs(SystemTime::now());
        let signature = sign(self.secret.expose().as_bytes(), timestamp, &body);
        let mut resp = self
            .client
            .post(&tool.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header(TOOL_HEADER, &tool.name)
            .body(body)
            .send()
            .await
            .map_err(|e| transport(e, &tool.url))?;
        let status = resp.status();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
            && status.is_success()
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(e, &tool.url))? {
            if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
                if status.is_success() {
                    return Err(too_large());
                }
                // Enough for the excerpt; the rest is not needed.
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(ToolError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(STATUS_EXCERPT_CHARS)
                    .collect(),
            });
        }
        parse_reply(&bytes)
    }
}

impl ToolExecutor for HttpToolExecutor {
    fn execute<'a>(
        &'a self,
        tool: &'a WebhookToolConfig,
        id: &'a str,
        args: &'a Value,
        ctx: &'a ToolCallContext,
    ) -> ToolFuture<'a> {
        Box::pin(async move {
            // One deadline for connect, send and the whole reply. Dropping `call` on expiry
            // drops the request, as a cancellation would.
            let ms = tool.timeout_ms;
            let started = tokio::time::Instant::now();
            let result = match tokio::time::timeout(
                Duration::from_millis(ms),
                self.call(tool, id, args, ctx),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(ToolError::Timeout { ms }),
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(_) => {
                    tracing::debug!(tool = %tool.name, id, elapsed_ms, "tool webhook answered")
                }
                Err(e) => {
                    tracing::warn!(tool = %tool.name, id, elapsed_ms, kind = e.kind(), error = %crate::redact::redact_text(&e.to_string()), "tool webhook failed")
                }
            }
            result
        })
    }
}

/// A 2xx body as the tool response: a JSON object as is, any other JSON value as
/// `{"result": v}` (the model's function response must be an object), an empty body as `{}`.
pub fn parse_reply(bytes: &[u8]) -> Result<Value, ToolError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(v) => Ok(json!({ "result": v })),
        Err(e) => Err(ToolError::InvalidJson(e.to_string())),
    }
}

fn too_large() -> ToolError {
    ToolError::InvalidJson(format!("reply larger than {MAX_REPLY_BYTES} bytes"))
}

/// A transport failure as text: the error and its causes, without the URL (which may carry
/// credentials in its user info or query).
fn transport(e: reqwest::Error, url: &str) -> ToolError {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if !url.is_empty() {
        // Belt and braces: no cause is known to quote the URL, but none may leak it.
        text = text.replace(url, "<url>");
    }
    ToolError::Transport(text)
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac_over(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (Unix seconds, sent as
/// [`TIMESTAMP_HEADER`]): `v1=<lowercase hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mac = mac_over(secret, &timestamp.to_string(), body);
    format!(
        "{SIGNATURE_VERSION}={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Why [`verify_webhook_signature`] refused a request. The text names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No (or an empty) [`TIMESTAMP_HEADER`].
    #[error("missing X-Callbridge-Timestamp")]
    MissingTimestamp,
    /// The timestamp is not decimal Unix seconds.
    #[error("malformed X-Callbridge-Timestamp")]
    MalformedTimestamp,
    /// Signed longer ago than the tolerance: a late or replayed request.
    #[error("timestamp is {age_secs} s old (more than {tolerance_secs} s): stale or replayed")]
    Expired {
        /// How old the timestamp is.
        age_secs: u64,
        /// The tolerance applied.
        tolerance_secs: u64,
    },
    /// Signed further in the future than the tolerance (a clock far off, or a forgery
    /// made to stay valid).
    #[error("timestamp is {ahead_secs} s in the future (more than {tolerance_secs} s)")]
    FromTheFuture {
        /// How far ahead the timestamp is.
        ahead_secs: u64,
        /// The tolerance applied.
        tolerance_secs: u64,
    },
    /// No (or an empty) [`SIGNATURE_HEADER`], or one with no `v1=<hex>` item.
    #[error("missing or malformed X-Callbridge-Signature (expected v1=<hex>)")]
    MissingSignature,
    /// No `v1` item matches the timestamp and body under the secret.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a webhook tool request as an operator's receiver should: `timestamp` and
/// `signature` are the raw [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`] values (empty when
/// absent), `body` the raw request body (before any JSON parsing), `now` the receiver's
/// clock and `tolerance` how far the timestamp may be from it either way (use
/// [`SIGNATURE_TOLERANCE`], 5 minutes).
///
/// The timestamp must be decimal digits; the signature header is a comma-separated list of
/// `version=hex` items, and the request is accepted when a `v1` item equals
/// HMAC-SHA256(secret, `"{timestamp}.{body}"`). Comparison is constant-time.
///
/// Within the tolerance a captured request can still be sent again; a receiver whose tools
/// must not run twice should also remember the body's `id` (unique per function call) for
/// that long.
///
/// ```
/// use callbridge::call::webhook_tools::{sign, verify_webhook_signature, SIGNATURE_TOLERANCE};
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
///
/// let body = br#"{"tool":"lookup_order","id":"fc-1","arguments":{},"call":{}}"#;
/// let sent_at = 1_767_225_600;
/// let signature = sign(b"s3cret", sent_at, body);
/// let now = UNIX_EPOCH + Duration::from_secs(sent_at + 10);
/// let ts = sent_at.to_string();
/// assert!(verify_webhook_signature(b"s3cret", &ts, &signature, body, now, SIGNATURE_TOLERANCE).is_ok());
/// // The same request ten minutes later is refused.
/// let later = now + Duration::from_secs(600);
/// assert!(verify_webhook_signature(b"s3cret", &ts, &signature, body, later, SIGNATURE_TOLERANCE).is_err());
/// ```
pub fn verify_webhook_signature(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.trim();
    if timestamp.is_empty() {
        return Err(SignatureError::MissingTimestamp);
    }
    // Digits only (no sign, no spaces inside), so the string signed is the number read.
    if timestamp.len() > 20 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedTimestamp);
    }
    let sent = timestamp
        .parse::<u64>()
        .map_err(|_| SignatureError::MalformedTimestamp)?;
    let now = unix_secs(now);
    let tolerance_secs = tolerance.as_secs();
    if now > sent && now - sent > tolerance_secs {
        return Err(SignatureError::Expired {
            age_secs: now - sent,
            tolerance_secs,
        });
    }
    if sent > now && sent - now > tolerance_secs {
        return Err(SignatureError::FromTheFuture {
            ahead_secs: sent - now,
            tolerance_secs,
        });
    }
    let candidates: Vec<Vec<u8>> = signature
        .split(',')
        .filter_map(|item| {
            let (version, hex_sig) = item.trim().split_once('=')?;
            (version.trim() == SIGNATURE_VERSION)
                .then(|| hex::decode(hex_sig.trim()).ok())
                .flatten()
        })
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::MissingSignature);
    }
    let mac = mac_over(secret, timestamp, body);
    // `verify_slice` compares in constant time; every candidate is checked.
    let matched = candidates
        .iter()
        .fold(false, |ok, sig| mac.clone().verify_slice(sig).is_ok() | ok);
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Function declarations for the setup message, one per webhook tool, in config order.
/// `parameters` is the TOML table converted to JSON as written (use OpenAPI-style
/// upper-case types, `type = "OBJECT"`); check it first with [`crate::config::tool_schema::check_schemas`].
pub fn declarations(tools: &[WebhookToolConfig]) -> Vec<FunctionDeclaration> {
    tools
        .iter()
        .map(|t| FunctionDeclaration {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.as_ref().map(table_to_json),
            behavior: None,
        })
        .collect()
}

/// TOML to JSON, value for value. Datetimes become their TOML text; a non-finite float
/// (`inf`, `nan`), which JSON cannot hold, becomes `null`.
fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => table_to_json(t),
    }
}

fn table_to_json(t: &toml::Table) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect(),
    )
}

/// One call seen by a [`RecordingExecutor`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedToolCall {
    /// Tool name.
    pub tool: String,
    /// Function call id.
    pub id: String,
    /// The model's arguments.
    pub args: Value,
    /// The call context passed.
    pub ctx: ToolCallContext,
}

/// What a scripted tool does.
#[derive(Debug, Clone, Default)]
struct ToolScript {
    /// Replies in order; the last one repeats.
    replies: VecDeque<Result<Value, ToolError>>,
    /// Waited (on the tokio clock, so paused-time tests are instant) before replying.
    delay: Duration,
    /// Never answers (until cancelled).
    hang: bool,
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<RecordedToolCall>,
    finished: Vec<String>,
    cancelled: Vec<String>,
}

#[derive(Debug)]
struct RecordingInner {
    scripts: Mutex<HashMap<String, ToolScript>>,
    recorded: Mutex<Recorded>,
    /// Number of calls so far, for [`RecordingExecutor::wait_calls`].
    count: tokio::sync::watch::Sender<usize>,
}

/// A fake [`ToolExecutor`] for machine and driver tests: scripted replies per tool name,
/// and a record of every call, which finished and which were cancelled (future dropped).
///
/// Cloning shares the script and the record, so a test keeps one clone and hands the other
/// to the code under test (`Arc::new(exec.clone())`). A tool with no script fails with
/// `ToolError::Transport("no scripted reply for tool …")`.
///
/// ```
/// # use callbridge::call::webhook_tools::*; use serde_json::json; use std::time::Duration;
/// let exec = RecordingExecutor::new()
///     .reply("lookup_order", json!({"status": "shipped"}))
///     .error("broken", ToolError::Status { status: 500, body: "oops".into() })
///     .delay("lookup_order", Duration::from_millis(300))
///     .hang("stuck");
/// ```
#[derive(Debug, Clone)]
pub struct RecordingExecutor {
    inner: Arc<RecordingInner>,
}

impl Default for RecordingExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingExecutor {
    /// An executor with no scripts.
    pub fn new() -> Self {
        RecordingExecutor {
            inner: Arc::new(RecordingInner {
                scripts: Mutex::new(HashMap::new()),
                recorded: Mutex::new(Recorded::default()),
                count: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    fn script(self, tool: &str, f: impl FnOnce(&mut ToolScript)) -> Self {
        f(lock(&self.inner.scripts)
            .entry(tool.to_string())
            .or_default());
        self
    }

    /// Queues a successful reply for `tool` (a non-object value is wrapped as
    /// `{"result": v}`, as the HTTP executor does).
    pub fn reply(self, tool: &str, value: Value) -> Self {
        let value = match value {
            v @ Value::Object(_) => v,
            v => json!({ "result": v }),
        };
        self.script(tool, |s| s.replies.push_back(Ok(value)))
    }

    /// Queues a failure for `tool`.
    pub fn error(self, tool: &str, error: ToolError) -> Self {
        self.script(tool, |s| s.replies.push_back(Err(error)))
    }

    /// Waits `delay` (tokio time) before each reply of `tool`.
    pub fn delay(self, tool: &str, delay: Duration) -> Self {
        self.script(tool, |s| s.delay = delay)
    }

    /// Makes `tool` never answer; its futures end only by being dropped.
    pub fn hang(self, tool: &str) -> Self {
        self.script(tool, |s| s.hang = true)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<RecordedToolCall> {
        lock(&self.inner.recorded).calls.clone()
    }

    /// Ids of calls whose future ran to completion (success or error).
    pub fn finished(&self) -> Vec<String> {
        lock(&self.inner.recorded).finished.clone()
    }

    /// Ids of calls whose future was dropped before it completed.
    pub fn cancelled(&self) -> Vec<String> {
        lock(&self.inner.recorded).cancelled.clone()
    }

    /// Resolves once at least `n` calls were made (wrap it in a timeout).
    pub async fn wait_calls(&self, n: usize) {
        let mut rx = self.inner.count.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: this cannot fail.
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    fn next_reply(&self, tool: &str) -> (Duration, Option<Result<Value, ToolError>>) {
        let mut scripts = lock(&self.inner.scripts);
        let Some(s) = scripts.get_mut(tool) else {
            return (
                Duration::ZERO,
                Some(Err(ToolError::Transport(format!(
                    "no scripted reply for tool {tool}"
                )))),
            );
        };
        if s.hang {
            return (s.delay, None);
        }
        let reply = if s.replies.len() > 1 {
            s.replies.pop_front()
        } else {
            s.replies.front().cloned()
        };
        let reply = reply.unwrap_or_else(|| {
            Err(ToolError::Transport(format!(
                "no scripted reply for tool {tool}"
            )))
        });
        (s.delay, Some(reply))
    }
}

/// Records the call as cancelled unless disarmed: the future holding it was dropped early.
struct CancelGuard<'a> {
    inner: &'a RecordingInner,
    id: Option<String>,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.inner.recorded).cancelled.push(id);
        }
    }
}

impl ToolExecutor for RecordingExecutor {
    fn execute<'a>(
        &'a self,
        tool: &'a WebhookToolConfig,
        id: &'a str,
        args: &'a Value,
        ctx: &'a ToolCallContext,
    ) -> ToolFuture<'a> {
        Box::pin(async move {
            lock(&self.inner.recorded).calls.push(RecordedToolCall {
                tool: tool.name.clone(),
                id: id.to_string(),
                args: args.clone(),
                ctx: ctx.clone(),
            });
            self.inner.count.send_modify(|c| *c += 1);
            let mut guard = CancelGuard {
                inner: &self.inner,
                id: Some(id.to_string()),
            };
            let (delay, reply) = self.next_reply(&tool.name);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let Some(reply) = reply else {
                return std::future::pending().await;
            };
            guard.id = None;
            lock(&self.inner.recorded).finished.push(id.to_string());
            reply
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
