//! A fake operator webhook server: what an operator runs behind `[[tools.webhooks]]` URLs.
//!
//! Serves `POST /tools/{tool}` on 127.0.0.1, checks the signature as an operator's receiver
//! must (`X-Callbridge-Signature: v1=<hex HMAC-SHA256 of "{X-Callbridge-Timestamp}.{raw
//! body}">`, the timestamp within 5 minutes of this host's clock; a bad, missing or stale one
//! gets 401 and a JSON error), records
//! every request, and answers per tool from a script: a JSON reply, a status and body, a body
//! that is not JSON, a delay, or no answer at all ("hang"). A request whose client goes away
//! before the answer is recorded in [`FakeOperatorHandle::cancelled`] (hyper drops the
//! handler future when the connection closes; a drop guard notices).
//!
//! Used by tests and the demo. Reads the body as plain JSON and computes the HMAC itself,
//! without the bridge's `call::webhook_tools` types, so a signing bug cannot agree with itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// Computes a reply from the request's `arguments`.
pub type ReplyFn = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// How a tool answers.
#[derive(Clone)]
enum Answer {
    Json(Value),
    With(ReplyFn),
    Status(u16, String),
    InvalidJson,
    Hang,
}

#[derive(Clone, Default)]
struct ToolScript {
    answer: Option<Answer>,
    delay: Duration,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorRequest {
    /// The tool, from the path.
    pub tool: String,
    /// `X-Callbridge-Tool`, if sent.
    pub tool_header: Option<String>,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// The body's `id` (empty when missing).
    pub id: String,
    /// The body's `arguments` (`null` when missing).
    pub arguments: Value,
    /// The body's `call` (`null` when missing).
    pub call: Value,
    /// The raw body.
    pub raw_body: String,
    /// `X-Callbridge-Timestamp`, if sent.
    pub timestamp: Option<String>,
    /// `X-Callbridge-Signature`, if sent.
    pub signature: Option<String>,
    /// Whether a `v1` signature matched the timestamp and body under the fake's secret and
    /// the timestamp was within 5 minutes of now.
    pub signature_valid: bool,
}

struct Inner {
    secret: String,
    scripts: HashMap<String, ToolScript>,
    requests: Mutex<Vec<OperatorRequest>>,
    cancelled: Mutex<Vec<String>>,
    answered: Mutex<Vec<String>>,
}

/// Builder for the fake; see [`FakeOperator::builder`].
#[derive(Default)]
pub struct FakeOperator {
    secret: String,
    scripts: HashMap<String, ToolScript>,
}

impl FakeOperator {
    /// A fake with no secret (every request must then be signed with the empty key) and no
    /// tools (every tool answers 404 with a JSON error).
    pub fn builder() -> FakeOperator {
        FakeOperator::default()
    }

    /// The shared signing secret (`CALLBRIDGE_TOOLS_SECRET`).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = secret.to_string();
        self
    }

    fn answer(mut self, tool: &str, answer: Answer) -> Self {
        self.scripts.entry(tool.to_string()).or_default().answer = Some(answer);
        self
    }

    /// `tool` answers 200 with this JSON.
    pub fn reply(self, tool: &str, value: Value) -> Self {
        self.answer(tool, Answer::Json(value))
    }

    /// `tool` answers 200 with JSON computed from the request's `arguments`.
    pub fn reply_with(
        self,
        tool: &str,
        f: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.answer(tool, Answer::With(Arc::new(f)))
    }

    /// `tool` answers with this status and body (sent as `text/plain`).
    pub fn status(self, tool: &str, status: u16, body: &str) -> Self {
        self.answer(tool, Answer::Status(status, body.to_string()))
    }

    /// `tool` answers 200, `application/json`, with a body that is not JSON.
    pub fn invalid_json(self, tool: &str) -> Self {
        self.answer(tool, Answer::InvalidJson)
    }

    /// `tool` never answers (the request is recorded as cancelled when the client leaves).
    pub fn hang(self, tool: &str) -> Self {
        self.answer(tool, Answer::Hang)
    }

    /// `tool` waits this long before its answer (a reply with no other script is
    /// `{"ok": true}`).
    pub fn delay(mut self, tool: &str, delay: Duration) -> Self {
        let s = self.scripts.entry(tool.to_string()).or_default();
        s.delay = delay;
        if s.answer.is_none() {
            s.answer = Some(Answer::Json(json!({ "ok": true })));
        }
        self
    }

    /// Serves on 127.0.0.1 (ephemeral port).
    pub async fn spawn(self) -> std::io::Result<FakeOperatorHandle> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            secret: self.secret,
            scripts: self.scripts,
            requests: Mutex::new(Vec::new()),
            cancelled: Mutex::new(Vec::new()),
            answered: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/tools/{tool}", post(handle))
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(FakeOperatorHandle { addr, inner, stop })
    }
}

/// A running fake; stops serving when dropped.
pub struct FakeOperatorHandle {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl FakeOperatorHandle {
    /// The URL to configure for `tool`.
    pub fn url(&self, tool: &str) -> String {
        format!("http://{}/tools/{}", self.addr, urlencoding::encode(tool))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<OperatorRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Ids of requests whose client went away before the answer was ready.
    pub fn cancelled(&self) -> Vec<String> {
        lock(&self.inner.cancelled).clone()
    }

    /// Ids of requests answered (any status), in order.
    pub fn answered(&self) -> Vec<String> {
        lock(&self.inner.answered).clone()
    }

    /// Polls until `cond` holds on the fake's state or `within` passes; returns whether it
    /// held.
    pub async fn wait_until(&self, within: Duration, cond: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for FakeOperatorHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Scheme v1, written out here rather than calling `call::webhook_tools`: the timestamp is decimal
/// seconds within 5 minutes of now, and a `v1=` item of the signature header is
/// HMAC-SHA256(secret, "{timestamp}.{body}").
fn signature_ok(secret: &str, body: &[u8], timestamp: Option<&str>, header: Option<&str>) -> bool {
    let (Some(ts), Some(header)) = (timestamp, header) else {
        return false;
    };
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(sent) = ts.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.abs_diff(sent) > 300 {
        return false;
    }
    header.split(',').any(|item| {
        let Some(hex_sig) = item.trim().strip_prefix("v1=") else {
            return false;
        };
        let Ok(sig) = hex::decode(hex_sig) else {
            return false;
        };
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// Records the request as cancelled unless disarmed: hyper dropped the handler future
/// because the client closed the connection.
struct DropGuard {
    inner: Arc<Inner>,
    id: Option<String>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.inner.cancelled).push(id);
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Path(tool): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    };
    let timestamp = header("x-callbridge-timestamp");
    let signature = header("x-callbridge-signature");
    let signature_valid = signature_ok(
        &inner.secret,
        &body,
        timestamp.as_deref(),
        signature.as_deref(),
    );
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = parsed
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let arguments = parsed.get("arguments").cloned().unwrap_or(Value::Null);
    lock(&inner.requests).push(OperatorRequest {
        tool: tool.clone(),
        tool_header: header("x-callbridge-tool"),
        content_type: header("content-type"),
        id: id.clone(),
        arguments: arguments.clone(),
        call: parsed.get("call").cloned().unwrap_or(Value::Null),
        raw_body: String::from_utf8_lossy(&body).into_owned(),
        timestamp,
        signature,
        signature_valid,
    });

    let response = if !signature_valid {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "invalid signature" })),
        )
            .into_response()
    } else {
        let mut guard = DropGuard {
            inner: inner.clone(),
            id: Some(id.clone()),
        };
        let script = inner.scripts.get(&tool).cloned().unwrap_or_default();
        if !script.delay.is_zero() {
            tokio::time::sleep(script.delay).await;
        }
        let response = match script.answer {
            None => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": format!("no such tool: {tool}") })),
            )
                .into_response(),
            Some(Answer::Json(v)) => axum::Json(v).into_response(),
            Some(Answer::With(f)) => axum::Json(f(&arguments)).into_response(),
            Some(Answer::Status(status, body)) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [("content-type", "text/plain")],
                body,
            )
                .into_response(),
            Some(Answer::InvalidJson) => (
                [("content-type", "application/json")],
                "{\"status\": shipped",
            )
                .into_response(),
            Some(Answer::Hang) => std::future::pending().await,
        };
        guard.id = None;
        response
    };
    lock(&inner.answered).push(id);
    response
}
