//! The operator surface over HTTP: the JSON API under `/api/`, the `/dashboard` page, and the
//! browser phone's media WebSocket (`/phone/media`).
//!
//! * **Auth.** Every `/api/` route needs `Authorization: Bearer <token>` with the token from
//!   env `CALLBRIDGE_OPERATOR_TOKEN` (compared in constant time, over SHA-256 digests so the
//!   length is not revealed either). No token configured → 503 saying so; a missing or wrong
//!   header → 401 with `WWW-Authenticate: Bearer`. Refusals are logged with the path and the
//!   reason, never the header.
//! * **Errors** are JSON, `{"error": "..."}`, with a 4xx/5xx status; bad input (malformed or
//!   oversized bodies, wrong types, unknown ids) never panics.
//! * **Live updates** (`GET /api/events`) are Server-Sent Events of the journal's
//!   [`Update`](super::journal::Update)s as JSON; a subscriber that falls behind gets
//!   `{"type":"resync"}` and refetches. The stream ends when the bridge shuts down, so it
//!   never holds graceful shutdown open.
//! * **Browser phone.** `POST /api/phone` issues a single-use ticket (30 s) plus a stream token
//!   for a fresh CallSid; the page opens `GET /phone/media?ticket=…` (a WebSocket; the ticket
//!   is consumed at the upgrade, 403 otherwise) and speaks the Twilio Media Streams protocol
//!   on it. The call runs through [`crate::server::accept_call`] exactly like a phone call,
//!   with [`CallSource::Browser`], no provider call control (hang-up closes the stream;
//!   transfers fail with an error) and the same `limits.max_calls`.
//! * **The dashboard** is static HTML/CSS/JS compiled into the binary (`web/`), served with a
//!   strict Content-Security-Policy (no inline script, same-origin everything). It holds no
//!   data: it asks for the token and calls the API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use dashmap::DashMap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;

use super::journal::CallRecord;
use super::{CallSource, CommandError};
use crate::call::event::OperatorCommand;
use crate::redact::redact_text;
use crate::server::{AppState, CallOrigin};
use crate::twilio::signature::constant_time_eq;

/// Largest request body the API reads (a transfer request is a few dozen bytes).
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// How long a browser-phone ticket may wait for its WebSocket.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most outstanding browser-phone tickets (then `POST /api/phone` answers 429).
pub const MAX_TICKETS: usize = 256;
/// Default and largest `limit` of `GET /api/records`.
pub const RECORDS_DEFAULT: usize = 50;
/// Largest `limit` of `GET /api/records`.
pub const RECORDS_MAX: usize = 500;
/// How long a hang-up may take to be acknowledged by the call.
const HANGUP_WAIT: Duration = Duration::from_secs(5);
/// How long a transfer may take (the provider's REST API, with its retries).
const TRANSFER_WAIT: Duration = Duration::from_secs(20);
/// How long a store read may take before the API answers from memory.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// How long a recording download waits for the recorder to finish writing.
const RECORDER_WAIT: Duration = Duration::from_secs(5);
/// Interval of SSE keep-alive comments (proxies close idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The `accountSid` browser-phone streams carry (there is no provider account).
pub const BROWSER_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// The Content-Security-Policy of the dashboard and its scripts: same-origin scripts, styles
/// and connections only; no inline script or style; recordings play from `blob:` URLs.
pub const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const DASHBOARD_HTML: &str = include_str!("../../web/dashboard.html");
const DASHBOARD_CSS: &str = include_str!("../../web/dashboard.css");
const DASHBOARD_JS: &str = include_str!("../../web/dashboard.js");
const PHONE_JS: &str = include_str!("../../web/phone.js");
const PHONE_WORKLET_JS: &str = include_str!("../../web/phone-worklet.js");

/// Single-use browser-phone tickets: ticket → (expiry, CallSid).
#[derive(Default)]
pub struct PhoneTickets {
    map: DashMap<String, (Instant, String)>,
}

impl PhoneTickets {
    /// A fresh ticket (256 random bits, hex) for `call_sid`; `None` when too many are
    /// outstanding.
    pub fn issue(&self, call_sid: &str) -> Option<String> {
        let now = Instant::now();
        self.map.retain(|_, (expires, _)| *expires > now);
        if self.map.len() >= MAX_TICKETS {
            return None;
        }
        let ticket = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        self.map
            .insert(ticket.clone(), (now + TICKET_TTL, call_sid.to_string()));
        Some(ticket)
    }

    /// Uses up `ticket`; its CallSid when it was outstanding and unexpired.
    pub fn redeem(&self, ticket: &str) -> Option<String> {
        let (_, (expires, call_sid)) = self.map.remove(ticket)?;
        (expires > Instant::now()).then_some(call_sid)
    }

    /// Tickets outstanding (expired ones included until the next issue).
    pub fn outstanding(&self) -> usize {
        self.map.len()
    }
}

/// What the operator routes share.
#[derive(Clone)]
struct Api {
    app: Arc<AppState>,
    tickets: Arc<PhoneTickets>,
}

/// The operator routes (`/api/…`, `/dashboard…`, `/phone/media`), merged into the bridge's
/// router by [`crate::server::app`].
pub fn router(app: Arc<AppState>) -> Router {
    let api = Api {
        app,
        tickets: Arc::new(PhoneTickets::default()),
    };
    let authed = Router::new()
        .route("/api/calls", only(get(live_calls)))
        .route("/api/records", only(get(records)))
        .route("/api/calls/{id}", only(get(call_detail)))
        .route("/api/calls/{id}/hangup", only(post(hang_up)))
        .route("/api/calls/{id}/transfer", only(post(transfer)))
        .route("/api/calls/{id}/recording", only(get(recording)))
        .route("/api/events", only(get(events)))
        .route("/api/phone", only(post(phone_ticket)))
        .route("/api", any(unknown_endpoint))
        .route("/api/", any(unknown_endpoint))
        .route("/api/{*rest}", any(unknown_endpoint))
        .route_layer(middleware::from_fn_with_state(
            api.clone(),
            require_operator,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let public = Router::new()
        .route("/dashboard", get(dashboard_page))
        .route("/dashboard/", get(dashboard_page))
        .route("/dashboard/dashboard.css", get(dashboard_css))
        .route("/dashboard/dashboard.js", get(dashboard_js))
        .route("/dashboard/phone.js", get(phone_js))
        .route("/dashboard/phone-worklet.js", get(phone_worklet_js))
        .route("/phone/media", get(phone_media));
    authed.merge(public).with_state(api)
}

/// A route that answers a JSON 405 to other methods.
fn only(route: MethodRouter<Api>) -> MethodRouter<Api> {
    route.fallback(|| async {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint",
        )
    })
}

/// A JSON error: `{"error": msg}`.
fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": msg.into() }))).into_response()
}

fn ok_json(body: Value) -> Response {
    axum::Json(body).into_response()
}

async fn unknown_endpoint() -> Response {
    error(StatusCode::NOT_FOUND, "no such API endpoint")
}

/// The bearer token of an `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Constant-time token check over digests (same length whatever was sent).
fn token_matches(given: &str, expected: &str) -> bool {
    constant_time_eq(
        &Sha256::digest(given.as_bytes()),
        &Sha256::digest(expected.as_bytes()),
    )
}

/// Bearer auth for every `/api/` route; answers are never cached.
async fn require_operator(State(api): State<Api>, req: Request, next: Next) -> Response {
    let expected = api.app.config.operator.token.expose();
    let mut resp = if expected.is_empty() {
        tracing::warn!(
            path = %req.uri().path(),
            "operator API request refused: CALLBRIDGE_OPERATOR_TOKEN is not set"
        );
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the operator API is off: set CALLBRIDGE_OPERATOR_TOKEN (16+ characters) in the \
             bridge's environment and restart it",
        )
    } else {
        match bearer(req.headers()) {
            Some(given) if token_matches(given, expected) => next.run(req).await,
            given => {
                tracing::warn!(
                    path = %req.uri().path(),
                    reason = if given.is_some() { "wrong bearer token" } else { "no bearer token" },
                    "operator API request refused"
                );
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong operator token (Authorization: Bearer <token>)",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="callbridge operator API""#),
                );
                r
            }
        }
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The gate of `GET /metrics` when `metrics.require_token` is on: `None` lets the request
/// through (also when the setting is off); otherwise the 401 to answer. Same check as the
/// operator API (`Authorization: Bearer <CALLBRIDGE_OPERATOR_TOKEN>`, constant time); with
/// no token configured nothing is let through (start-up refuses that configuration anyway).
pub fn metrics_refusal(config: &crate::config::Config, headers: &HeaderMap) -> Option<Response> {
    if !config.metrics.require_token {
        return None;
    }
    let expected = config.operator.token.expose();
    let given = bearer(headers);
    if !expected.is_empty() && given.is_some_and(|g| token_matches(g, expected)) {
        return None;
    }
    tracing::warn!(
        reason = if given.is_some() {
            "wrong bearer token"
        } else {
            "no bearer token"
        },
        "metrics request refused"
    );
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "missing or wrong operator token (Authorization: Bearer <token>)\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Bearer realm="callbridge metrics""#),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(r)
}

/// The call id from the path, when it looks like one (16 hex digits; anything short and plain
/// is accepted and then simply not found).
fn check_id(id: Result<Path<String>, PathRejection>) -> Option<String> {
    let Path(id) = id.ok()?;
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (!id.is_empty() && id.len() <= 64 && plain).then_some(id)
}

fn malformed_id() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "malformed call id (expected 16 hex digits)",
    )
}

/// A live call's summary plus its latest transcript line (what the dashboard lists).
fn live_summary(r: &CallRecord) -> Value {
    let mut s = r.summary();
    s["last_line"] = match r.transcript.last() {
        Some(l) => json!({
            "index": r.transcript.len() - 1,
            "at_ms": l.at_ms,
            "speaker": l.speaker,
            "text": l.text,
        }),
        None => Value::Null,
    };
    s
}

/// `GET /api/calls`: live calls on this bridge, oldest first.
async fn live_calls(State(api): State<Api>) -> Response {
    let calls: Vec<Value> = api
        .app
        .journal
        .live_calls()
        .iter()
        .map(live_summary)
        .collect();
    ok_json(json!({ "calls": calls }))
}

/// `GET /api/records?limit=&before=`: ended calls, newest first.
async fn records(
    State(api): State<Api>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let limit = match q.get("limit").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => RECORDS_DEFAULT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=RECORDS_MAX).contains(&n) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be a whole number from 1 to {RECORDS_MAX}"),
                )
            }
        },
    };
    let before = match q.get("before").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "before must be a Unix time in milliseconds",
                )
            }
        },
    };
    let from_memory = || {
        let mut v: Vec<CallRecord> = api
            .app
            .journal
            .recent()
            .into_iter()
            .filter(|r| before.is_none_or(|b| r.started_at_ms < b))
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
        v.truncate(limit);
        v
    };
    let (list, source) = match &api.app.store {
        Some(store) => match tokio::time::timeout(STORE_WAIT, store.recent(limit, before)).await {
            Ok(Ok(list)) => (list, "store"),
            Ok(Err(e)) => {
                tracing::warn!(error = %redact_text(&e), "record store unreadable; answering from memory");
                (from_memory(), "memory")
            }
            Err(_) => {
                tracing::warn!("record store too slow; answering from memory");
                (from_memory(), "memory")
            }
        },
        None => (from_memory(), "memory"),
    };
    let next_before = if list.len() >= limit {
        list.last().map(|r| r.started_at_ms)
    } else {
        None
    };
    let records: Vec<Value> = list.iter().map(CallRecord::summary).collect();
    ok_json(json!({ "records": records, "source": source, "next_before": next_before }))
}

/// A call's record: live, else from the store, else from the recent calls in memory.
async fn find_record(api: &Api, id: &str) -> Option<CallRecord> {
    if let Some(r) = api.app.journal.live_call(id) {
        return Some(r);
    }
    if let Some(store) = &api.app.store {
        match tokio::time::timeout(STORE_WAIT, store.get(id)).await {
            Ok(Ok(Some(r))) => return Some(r),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %redact_text(&e), "record store unreadable; looking in memory")
            }
            Err(_) => tracing::warn!("record store too slow; looking in memory"),
        }
    }
    api.app.journal.recent_call(id)
}

/// `GET /api/calls/{id}`: the full record (`live` says whether the call is still going).
async fn call_detail(State(api): State<Api>, id: Result<Path<String>, PathRejection>) -> Response {
    let Some(id) = check_id(id) else {
        return malformed_id();
    };
    match find_record(&api, &id).await {
        Some(record) => {
            let live = record.ended_at_ms.is_none();
            let mut v = serde_json::to_value(&record).unwrap_or_else(|_| json!({}));
            v["live"] = live.into();
            ok_json(v)
        }
        None => error(StatusCode::NOT_FOUND, "no call with that id"),
    }
}

/// `POST /api/calls/{id}/hangup`.
async fn hang_up(State(api): State<Api>, id: Result<Path<String>, PathRejection>) -> Response {
    let Some(id) = check_id(id) else {
        return malformed_id();
    };
    command(&api, &id, OperatorCommand::HangUp, HANGUP_WAIT).await
}

/// The body of `POST /api/calls/{id}/transfer`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    /// A configured destination name, an E.164 number or a `sip:` URI.
    destination: String,
}

/// `POST /api/calls/{id}/transfer` with `{"destination": "..."}`.
async fn transfer(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(id) = check_id(id) else {
        return malformed_id();
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        Err(e) => return error(e.status(), "unreadable request body"),
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let json = ct
            .to_str()
            .map(|s| {
                s.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            })
            .unwrap_or(false);
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON (Content-Type: application/json)",
            );
        }
    }
    let expected = "expected a JSON object {\"destination\": \"...\"}";
    // Through a Value: derived structs would also accept a JSON array.
    let req: TransferRequest = match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => match serde_json::from_value(v) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("{expected}: {e}")),
        },
        Ok(_) => return error(StatusCode::BAD_REQUEST, expected),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{expected}: {e}")),
    };
    let destination = req.destination.trim().to_string();
    if destination.is_empty()
        || destination.chars().count() > 256
        || destination.chars().any(char::is_control)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "destination must be a destination name, an E.164 number or a sip: URI \
             (1 to 256 characters)",
        );
    }
    let cmd = OperatorCommand::Transfer {
        id: String::new(),
        destination,
    };
    command(&api, &id, cmd, TRANSFER_WAIT).await
}

/// Sends an operator command to a live call and maps the outcome to a response.
async fn command(api: &Api, id: &str, cmd: OperatorCommand, wait: Duration) -> Response {
    let action = match cmd {
        OperatorCommand::HangUp => "hang-up",
        OperatorCommand::Transfer { .. } => "transfer",
    };
    match api.app.commands.send(id, cmd, wait).await {
        Ok(()) => {
            tracing::info!(call_id = %id, action, "operator request carried out");
            ok_json(json!({ "ok": true }))
        }
        Err(CommandError::NotFound) => {
            if find_record(api, id).await.is_some() {
                error(StatusCode::CONFLICT, "the call has already ended")
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "no live call with that id on this bridge",
                )
            }
        }
        Err(CommandError::Failed(e)) => {
            let e = redact_text(&e);
            tracing::warn!(call_id = %id, action, error = %e, "operator request refused by the call");
            error(StatusCode::CONFLICT, e)
        }
        Err(CommandError::Timeout) => {
            tracing::warn!(call_id = %id, action, "operator request timed out");
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "the call did not answer in time",
            )
        }
    }
}

/// `GET /api/calls/{id}/recording`: the call's stereo WAV. The file is always
/// `<recording.dir>/<id>.wav`, rebuilt from the configuration and the (well-formed) call id:
/// never a path from the request, and never the path a stored record names (a record only
/// says *whether* the call was recorded; a tampered or foreign record cannot point the
/// download at another file). A symlink in place of the file is not followed.
async fn recording(State(api): State<Api>, id: Result<Path<String>, PathRejection>) -> Response {
    let Some(id) = check_id(id).filter(|id| super::is_call_id(id)) else {
        return malformed_id();
    };
    let Some(record) = find_record(&api, &id).await.filter(|r| r.id == id) else {
        return error(StatusCode::NOT_FOUND, "no call with that id");
    };
    if record.recording.is_none() {
        return error(StatusCode::NOT_FOUND, "this call was not recorded");
    }
    let dir = std::path::Path::new(&api.app.config.recording.dir);
    let Some(path) = super::recorder::recording_file(dir, &id) else {
        return malformed_id();
    };
    if record.ended_at_ms.is_none() {
        return error(
            StatusCode::CONFLICT,
            "the call is still live; its recording is available when it ends",
        );
    }
    // The recorder's writer thread finishes a call's file just after the call ends: let it
    // catch up (bounded) so the header is final.
    if let Some(recorder) = api.app.recorder.clone() {
        let _ = tokio::task::spawn_blocking(move || recorder.sync(RECORDER_WAIT)).await;
    }
    match tokio::fs::symlink_metadata(&path).await {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            tracing::warn!(call_id = %id, "a recording is not a plain file; not served");
            return error(StatusCode::NOT_FOUND, "the recording file is missing");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, "the recording file is missing")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a recording's metadata");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the recording",
            );
        }
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, "the recording file is missing")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a recording");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the recording",
            );
        }
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return error(StatusCode::NOT_FOUND, "the recording file is missing"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a recording's metadata");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the recording",
            );
        }
    };
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording read failed mid-way");
                Some((Err(e), None))
            }
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"call-{id}.wav\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// `GET /api/events`: Server-Sent Events. First `{"type":"hello"}` (subscribed: fetch the
/// lists now), then every journal update as `{"type","id","data"}`; `{"type":"resync",
/// "missed":N}` when this subscriber fell behind; a keep-alive comment every 15 s.
async fn events(State(api): State<Api>) -> Response {
    let rx = api.app.journal.subscribe();
    let shutdown = api.app.shutdown.clone();
    let stream = futures_util::stream::unfold(Some((rx, shutdown, true)), |state| async move {
        let (mut rx, shutdown, first) = state?;
        if first {
            let hello = Event::default().data(json!({ "type": "hello" }).to_string());
            return Some((
                Ok::<_, std::convert::Infallible>(hello),
                Some((rx, shutdown, false)),
            ));
        }
        let event = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = rx.recv() => match r {
                Ok(update) => Event::default()
                    .data(serde_json::to_string(&update).unwrap_or_else(|_| "{}".into())),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "dashboard event stream fell behind; asking it to refetch");
                    Event::default().data(json!({ "type": "resync", "missed": missed }).to_string())
                }
                Err(RecvError::Closed) => return None,
            },
        };
        Some((Ok(event), Some((rx, shutdown, false))))
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Reverse proxies (nginx) must not buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// `POST /api/phone`: a browser-phone ticket: `{ws_url, ws_path, call_sid, account_sid,
/// stream_token, expires_in_secs}`. The page opens `ws_path` on its own origin (or `ws_url`)
/// and sends `stream_token` as `customParameters.token` in `start`.
async fn phone_ticket(State(api): State<Api>, headers: HeaderMap) -> Response {
    let app = &api.app;
    if !app.config.operator.browser_phone {
        return error(
            StatusCode::NOT_FOUND,
            "the browser phone is off (operator.browser_phone = false)",
        );
    }
    if app.shutdown.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bridge is shutting down",
        );
    }
    if app.admission.full() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "at the concurrent call limit (limits.max_calls)",
        );
    }
    let call_sid = format!("CA{:032x}", rand::random::<u128>());
    let Some(ticket) = api.tickets.issue(&call_sid) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many browser-phone tickets outstanding; try again shortly",
        );
    };
    let stream_token = app.stream_tokens.issue(&call_sid);
    let ws_path = format!("/phone/media?ticket={ticket}");
    let base = app.config.server.public_url.trim_end_matches('/');
    let ws_url = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}{ws_path}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}{ws_path}")
    } else {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("ws://{host}{ws_path}")
    };
    tracing::info!("browser phone ticket issued");
    ok_json(json!({
        "ws_url": ws_url,
        "ws_path": ws_path,
        "call_sid": call_sid,
        "account_sid": BROWSER_ACCOUNT_SID,
        "stream_token": stream_token,
        "expires_in_secs": TICKET_TTL.as_secs(),
    }))
}

/// `GET /phone/media?ticket=…`: the browser phone's Media Streams WebSocket.
async fn phone_media(
    State(api): State<Api>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !api.app.config.operator.browser_phone {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let ticket = query.ok().and_then(|Query(q)| q.get("ticket").cloned());
    let Some(call_sid) = ticket.and_then(|t| api.tickets.redeem(&t)) else {
        tracing::warn!("browser phone stream refused: ticket missing, used or expired");
        return (StatusCode::FORBIDDEN, "ticket missing, used or expired\n").into_response();
    };
    // The stream's `start` must carry this ticket's CallSid and its stream token.
    let tokens = crate::server::stream_guard(api.app.stream_tokens.clone());
    let guard: crate::server::StreamGuard = Arc::new(move |start| {
        if start.call_sid != call_sid {
            tracing::warn!("browser phone stream refused: CallSid differs from the ticket's");
            return false;
        }
        tokens(start)
    });
    tracing::info!("browser phone stream accepted");
    crate::server::accept_call(
        api.app.clone(),
        ws,
        CallOrigin {
            source: CallSource::Browser,
            stream_guard: Some(guard),
            control: None,
        },
    )
}

/// A static file of the dashboard, with the security headers.
fn asset(app: &AppState, body: String, content_type: &'static str) -> Response {
    if !app.config.operator.dashboard {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("microphone=(self), camera=(), geolocation=()"),
    );
    resp
}

/// `GET /dashboard`.
async fn dashboard_page(State(api): State<Api>) -> Response {
    let phone = if api.app.config.operator.browser_phone {
        "on"
    } else {
        "off"
    };
    let html = DASHBOARD_HTML.replace("{{BROWSER_PHONE}}", phone);
    asset(&api.app, html, "text/html; charset=utf-8")
}

async fn dashboard_css(State(api): State<Api>) -> Response {
    asset(&api.app, DASHBOARD_CSS.into(), "text/css; charset=utf-8")
}

async fn dashboard_js(State(api): State<Api>) -> Response {
    asset(
        &api.app,
        DASHBOARD_JS.into(),
        "text/javascript; charset=utf-8",
    )
}

async fn phone_js(State(api): State<Api>) -> Response {
    asset(&api.app, PHONE_JS.into(), "text/javascript; charset=utf-8")
}

async fn phone_worklet_js(State(api): State<Api>) -> Response {
    if !api.app.config.operator.browser_phone {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    asset(
        &api.app,
        PHONE_WORKLET_JS.into(),
        "text/javascript; charset=utf-8",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer   abc  ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdef0", "0123456789abcdef"));
        assert!(!token_matches("", "0123456789abcdef"));
    }

    #[test]
    fn tickets_are_single_use() {
        let t = PhoneTickets::default();
        let a = t.issue("CA1").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(t.redeem(&a).as_deref(), Some("CA1"));
        assert_eq!(t.redeem(&a), None);
        assert_eq!(t.redeem("nope"), None);
        for _ in 0..MAX_TICKETS {
            t.issue("CA2").unwrap();
        }
        assert!(t.issue("CA3").is_none());
        assert_eq!(t.outstanding(), MAX_TICKETS);
    }
}
