//! The simulator's network shell: axum listener, upgrade checks and the per-socket loop.
//!
//! Owns routing (404 for anything but the Live paths, after collapsing leading slashes),
//! credential extraction (`?key=`, `x-goog-api-key`, `?access_token=`, `Authorization: Token`,
//! and on the Vertex AI route only `Authorization: Bearer`), the 429 upgrade fault, the 401
//! for a Vertex upgrade without an accepted bearer token, frame opcodes and close handshakes.
//! Every protocol decision is delegated to the sans-IO [`Session`]; this file only moves
//! frames and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proto;
use super::record::{ConnectionRecord, RejectedUpgrade};
use super::session::{ClientFrame, Output, Session};
use super::SimShared;

/// How long to wait for the client's close reply after we closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct AppState {
    shared: Arc<SimShared>,
    /// Cancelled by `GeminiSimHandle::shutdown`; every socket loop watches it.
    cancel: CancellationToken,
    /// axum's graceful shutdown does not wait for upgraded sockets, so they are tracked here.
    tracker: TaskTracker,
}

/// The simulator's router: every path goes through the upgrade handler, which does its own
/// route matching because SDKs request `//ws/...`.
pub(crate) fn app(
    shared: Arc<SimShared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Router {
    Router::new().fallback(upgrade).with_state(AppState {
        shared,
        cancel,
        tracker,
    })
}

async fn upgrade(State(st): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some((version, method)) = proto::match_route(&path) else {
        return reject(&st.shared, path, StatusCode::NOT_FOUND);
    };
    let faults = &st.shared.config.scenario.faults;
    if let Some(status) = faults.reject_upgrade_status {
        let n = st
            .shared
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if faults.reject_upgrade_count == 0 || n < u64::from(faults.reject_upgrade_count) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            return reject(&st.shared, path, status);
        }
    }
    let vertex = method == proto::Method::Vertex;
    // Vertex AI takes only OAuth2 bearer tokens; the Gemini API routes never look at them.
    let credentials: Vec<_> = credentials(req.uri().query().unwrap_or(""), req.headers())
        .into_iter()
        .filter(|(source, _)| (*source == "bearer-header") == vertex)
        .collect();
    let config = &st.shared.config;
    let keys = if vertex && !config.bearer_tokens.is_empty() {
        &config.bearer_tokens
    } else {
        &config.keys
    };
    let accepted = credentials
        .iter()
        .find(|(_, c)| !c.is_empty() && (keys.is_empty() || keys.iter().any(|k| k == c)));
    if vertex && accepted.is_none() {
        // Refused on the upgrade with 401, not accepted-then-closed like a bad API key: Google's
        // front end checks OAuth2 credentials before a request reaches the service (REST calls
        // with a bad token get 401 UNAUTHENTICATED). Unverified for the Live socket itself
        // (spec §2.1 lists the route only); the bridge treats either as a failed connection.
        return reject_unauthenticated(&st.shared, path);
    }
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let source = accepted
        .or(credentials.first())
        .map(|(s, _)| s.to_string())
        .unwrap_or_default();
    let index = match st.shared.record.lock() {
        Ok(mut rec) => {
            let index = rec.connections.len();
            rec.connections.push(ConnectionRecord {
                index,
                path,
                api_version: version.to_string(),
                credential_source: source,
                ..ConnectionRecord::default()
            });
            index
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let ok = accepted.is_some();
    let AppState {
        shared,
        cancel,
        tracker,
    } = st;
    ws.on_upgrade(move |socket| {
        tracker.track_future(serve_socket(
            socket, shared, cancel, index, version, vertex, ok,
        ))
    })
}

/// HTTP 401 for a Vertex upgrade without an accepted bearer token, with Google's error body.
fn reject_unauthenticated(shared: &SimShared, path: String) -> Response {
    let _ = reject(shared, path, StatusCode::UNAUTHORIZED);
    let body = serde_json::json!({"error": {
        "code": 401,
        "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        "status": "UNAUTHENTICATED",
    }});
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn reject(shared: &SimShared, path: String, status: StatusCode) -> Response {
    if let Ok(mut rec) = shared.record.lock() {
        rec.rejected_upgrades.push(RejectedUpgrade {
            path,
            status: status.as_u16(),
        });
    }
    status.into_response()
}

/// Every credential the request carries, with where it came from.
fn credentials(query: &str, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = urlencoding::decode(v)
            .map(|c| c.into_owned())
            .unwrap_or_default();
        match k {
            "key" => out.push(("key-query", v)),
            "access_token" => out.push(("token-query", v)),
            _ => {}
        }
    }
    if let Some(v) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        out.push(("key-header", v.trim().to_string()));
    }
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(token) = v.trim().strip_prefix("Token ") {
            out.push(("token-header", token.trim().to_string()));
        } else if let Some(token) = v.trim().strip_prefix("Bearer ") {
            out.push(("bearer-header", token.trim().to_string()));
        }
    }
    out
}

/// Move frames between the socket and the session until either side ends.
async fn serve_socket(
    socket: WebSocket,
    shared: Arc<SimShared>,
    cancel: CancellationToken,
    index: usize,
    version: &'static str,
    vertex: bool,
    credential_ok: bool,
) {
    let binary = shared.config.binary_frames;
    let mut session = Session::new(shared, index, version, credential_ok, Instant::now());
    if vertex {
        session.require_vertex_model();
    }
    let (mut tx, mut rx) = socket.split();
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                Output::Send(v) => {
                    let text = v.to_string();
                    let msg = if binary {
                        Message::Binary(text.into_bytes().into())
                    } else {
                        Message::Text(text.into())
                    };
                    if tx.send(msg).await.is_err() {
                        session.client_gone(Instant::now());
                        return;
                    }
                }
                Output::Close { code, reason } => {
                    tracing::debug!(index, code, %reason, "gemini sim closing connection");
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = tx.send(Message::Close(Some(frame))).await;
                    // Wait for the client's close reply so it sees a clean handshake.
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        while let Some(Ok(_)) = rx.next().await {}
                    })
                    .await;
                    return;
                }
                // Dropping both halves closes the TCP stream without a close frame.
                Output::Drop => {
                    tracing::debug!(index, "gemini sim dropping connection (fault)");
                    return;
                }
            }
        }
        let deadline = session.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => {
                let frame = CloseFrame { code: 1001, reason: "Server shutting down.".into() };
                let _ = tx.send(Message::Close(Some(frame))).await;
                session.client_gone(Instant::now());
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = rx.next().await {}
                })
                .await;
                return;
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    session.handle_frame(ClientFrame::Text(t.as_str().to_string()), Instant::now());
                }
                Some(Ok(Message::Binary(b))) => {
                    session.handle_frame(ClientFrame::Binary(b.to_vec()), Instant::now());
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(f.code), f.reason.as_str().to_string()),
                        None => (None, String::new()),
                    };
                    session.client_closed(code, reason, Instant::now());
                    // Flush the automatic close reply.
                    let _ = tx.flush().await;
                    return;
                }
                Some(Err(_)) | None => {
                    session.client_gone(Instant::now());
                    return;
                }
            },
            _ = sleep => session.handle_timeout(Instant::now()),
        }
    }
}
