//! The HTTP surface: `POST /twilio/voice` (TwiML), `GET /twilio/media` (the Media Streams
//! WebSocket), `GET /healthz`, `GET /metrics`; the operator API, dashboard and browser phone
//! are merged in from [`crate::ops::api`].
//!
//! Owns the shared [`AppState`] (configuration, the registry of live calls, the call tasks) and
//! the listener, and authenticates Twilio before anything costs money: `X-Twilio-Signature` on
//! the webhook and on the upgrade (403 otherwise), and the webhook's single-use stream token,
//! checked through the call driver's stream guard before any model session opens.
//!
//! Each media WebSocket becomes one task running [`call::driver::run_call`]; the tasks are
//! tracked so shutdown can wait for them (axum's graceful shutdown does not wait for upgraded
//! WebSockets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::call::driver::{self, CallContext, CallControl, CallNote, ControlSettings, ParkedCalls};
use crate::call::settings::CallSettings;
use crate::call::webhook_tools::{HttpToolExecutor, ToolExecutor};
use crate::config::Config;
use crate::gemini::connect::Credential;
use crate::redact::redact_text;
use crate::stats::BridgeStats;
use crate::twilio::signature::{self, SharedKey, SignedRequest, StreamTokens, Verifier};
use crate::twilio::webhook;

pub use crate::call::admission::LiveCall;

/// State shared by every request and call.
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Per-call settings derived from it.
    pub settings: Arc<CallSettings>,
    /// The model credential.
    pub credential: Arc<Credential>,
    /// Pending media sockets and admitted calls (`limits.max_pending_streams`,
    /// `limits.max_calls`), and the registry of live calls by connection id.
    pub admission: Arc<crate::call::admission::Admission>,
    next_conn: AtomicU64,
    /// Timeline events of all calls (the demo and observers subscribe).
    pub notes: broadcast::Sender<CallNote>,
    /// Call control (Twilio REST), when credentials are configured.
    pub control: Option<Arc<dyn CallControl>>,
    /// TwiML inputs for call actions.
    pub control_settings: Arc<ControlSettings>,
    /// Calls parked between streams (after `send_dtmf`).
    pub parked: ParkedCalls,
    /// Runs operator webhook tools.
    pub tools: Option<Arc<dyn ToolExecutor>>,
    /// The call tasks.
    pub tracker: TaskTracker,
    /// Cancelled when the bridge shuts down.
    pub shutdown: CancellationToken,
    /// Checks `X-Twilio-Signature` (auth token, optional shared key).
    pub verifier: Verifier,
    /// Single-use stream tokens issued by the voice webhook, by CallSid.
    pub stream_tokens: Arc<StreamTokens>,
    /// Latency histograms and frame counters (`GET /debug/stats`).
    pub stats: Arc<BridgeStats>,
    /// Call records being built, live calls, recent records, dashboard updates.
    pub journal: Arc<crate::ops::journal::Journal>,
    /// Everything a call reports to (the journal first).
    pub observers: crate::ops::Observers,
    /// Operator commands to live calls.
    pub commands: crate::ops::CommandBoard,
    /// Finished call records (read side), when records are kept.
    pub store: Option<Arc<dyn crate::ops::RecordStore>>,
    /// Prometheus metrics (`GET /metrics`), when `metrics.enabled`.
    pub metrics: Option<Arc<crate::ops::metrics::Metrics>>,
    /// Stereo call recordings, when `recording.enabled` (and its directory could be made).
    pub recorder: Option<Arc<crate::ops::recorder::Recorder>>,
    /// The latest model preflight (`GET /healthz` `model`); `unchecked` until `serve`'s
    /// preflight reports (see [`crate::run::spawn_preflight`]).
    pub model_status: Arc<crate::gemini::preflight::ModelStatus>,
}

impl AppState {
    /// Builds the state from a validated configuration.
    pub fn new(config: Config, control: Option<Arc<dyn CallControl>>) -> Arc<AppState> {
        Self::with_store(config, control, None)
    }

    /// Builds the state with a record store: its read side, and the channel its writer task
    /// takes finished records from.
    pub fn with_store(
        config: Config,
        control: Option<Arc<dyn CallControl>>,
        store: Option<(
            Arc<dyn crate::ops::RecordStore>,
            tokio::sync::mpsc::Sender<crate::ops::journal::CallRecord>,
        )>,
    ) -> Arc<AppState> {
        let settings = Arc::new(CallSettings::from_config(&config));
        let config_limits = config.limits.clone();
        let credential = Arc::new(model_credential(&config));
        let (notes, _) = broadcast::channel(1024);
        let control_settings = Arc::new(ControlSettings {
            stream_url: config.stream_url(),
            public_url: (!config.server.public_url.is_empty())
                .then(|| config.server.public_url.trim_end_matches('/').to_string()),
            fallback: config.twilio.fallback_twiml.clone(),
            caller_id: config.transfer.caller_id.clone(),
            dial_timeout_secs: config.transfer.timeout_secs,
            continuation_ttl: Duration::from_millis(config.limits.continuation_ttl_ms),
        });
        let tools: Option<Arc<dyn ToolExecutor>> = (!config.tools.webhooks.is_empty()).then(|| {
            Arc::new(HttpToolExecutor::new(config.tools.secret.clone())) as Arc<dyn ToolExecutor>
        });
        let t = &config.twilio;
        let shared_key = (!t.shared_key_sid.is_empty()).then(|| SharedKey {
            sid: t.shared_key_sid.clone(),
            secret: t.shared_key_secret.clone(),
        });
        let verifier = Verifier::new(t.auth_token.clone(), shared_key);
        if !t.validate_signatures {
            tracing::warn!(
                "twilio.validate_signatures is false: X-Twilio-Signature and stream tokens are \
                 NOT checked; anyone who can reach this bridge can place calls on your model bill"
            );
        } else if !verifier.has_key() {
            tracing::error!(
                "twilio.validate_signatures is true but TWILIO_AUTH_TOKEN is not set (nor a \
                 shared key): every webhook and media stream will be refused with 403"
            );
        }
        let stream_tokens = Arc::new(StreamTokens::new(Duration::from_secs(
            t.stream_token_ttl_secs,
        )));
        let (store, sink) = match store {
            Some((s, tx)) => (Some(s), Some(tx)),
            None => (None, None),
        };
        let metrics = config
            .metrics
            .enabled
            .then(|| Arc::new(crate::ops::metrics::Metrics::new(&config)));
        let recorder = config
            .recording
            .enabled
            .then(|| match crate::ops::recorder::Recorder::new(&config) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    tracing::error!(error = %e, dir = %config.recording.dir, "cannot start call recording; calls are not recorded");
                    None
                }
            })
            .flatten();
        // Records name a recording only when a recorder is actually writing it.
        let journal = Arc::new(
            crate::ops::journal::Journal::new(&config, sink).with_recordings(recorder.is_some()),
        );
        let mut list = vec![journal.clone() as Arc<dyn crate::ops::CallObserver>];
        list.extend(
            metrics
                .clone()
                .map(|m| m as Arc<dyn crate::ops::CallObserver>),
        );
        list.extend(
            recorder
                .clone()
                .map(|r| r as Arc<dyn crate::ops::CallObserver>),
        );
        let observers = crate::ops::Observers::new(list);
        Arc::new(AppState {
            journal,
            observers,
            metrics,
            recorder,
            commands: crate::ops::CommandBoard::default(),
            store,
            config: Arc::new(config),
            settings,
            credential,
            admission: crate::call::admission::Admission::new(
                config_limits.max_calls,
                config_limits.max_pending_streams,
            ),
            next_conn: AtomicU64::new(1),
            notes,
            control,
            control_settings,
            parked: ParkedCalls::default(),
            tools,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            verifier,
            stream_tokens,
            stats: Arc::new(BridgeStats::default()),
            model_status: Arc::default(),
        })
    }
}

/// The credential every model connection presents (calls and preflight alike).
pub fn model_credential(config: &Config) -> Credential {
    if config.gemini.backend == crate::config::Backend::Vertex {
        // OAuth2 tokens (gemini::auth), one cache per process; no API key.
        return Credential::vertex_from_env(&config.gemini.location);
    }
    // `gemini.auth` is "api_key": validation refuses the former "ephemeral_token" mode.
    Credential::ApiKey(config.gemini.api_key.expose().to_string())
}

/// Bytes read from the caller's socket at a time (see `media_stream`).
const CALLER_READ_BUFFER: usize = 4 * 1024;
/// Outgoing frames are written once this much is buffered, or at the driver's flush.
const CALLER_WRITE_BUFFER: usize = 16 * 1024;

/// Largest voice-webhook body read (Twilio's are ~1 KiB); larger requests get 413 before
/// anything is parsed.
pub const MAX_WEBHOOK_BODY: usize = 64 * 1024;
/// Most form fields a voice webhook may carry (Twilio sends ~20).
pub const MAX_WEBHOOK_FIELDS: usize = 200;

/// The router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/twilio/voice",
            post(voice_webhook).layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        )
        .route("/twilio/media", get(media_stream))
        .route(
            "/twilio/whisper/{destination}",
            post(whisper)
                .get(whisper)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        )
        .route("/healthz", get(healthz))
        .route("/debug/stats", get(debug_stats))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(crate::ops::api::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state,
            request_deadline,
        ))
}

/// Every request is answered within `server.request_timeout_ms` (408 after): a body sent a
/// byte at a time cannot hold a handler. The deadline covers reading the body and running the
/// handler, not an upgraded WebSocket's life nor a streamed response body.
async fn request_deadline(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = Duration::from_millis(state.config.server.request_timeout_ms);
    let path = crate::redact::bounded(req.uri().path(), 80);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(path = %path, "request not completed in time; answered 408");
            (StatusCode::REQUEST_TIMEOUT, "request timeout\n").into_response()
        }
    }
}

/// Serves until `state.shutdown` fires, then waits for live calls to finish.
///
/// Our own accept loop rather than `axum::serve`, for two defences it lacks: a cap on open
/// connections (`server.max_connections`; one over it is closed at once) and hyper's
/// header-read timeout (`server.header_timeout_ms`, which needs a timer `axum::serve` does not
/// install), so slow or idle clients cannot pin sockets and tasks. HTTP/1.1 with upgrades, as
/// `axum::serve` serves by default.
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let lag = state.stats.clone().watch_runtime_lag();
    let stop_lag = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = lag => {}
            _ = stop_lag.cancelled() => {}
        }
    });
    let router = app(state.clone());
    let server = &state.config.server;
    let permits = Arc::new(tokio::sync::Semaphore::new(server.max_connections));
    let header_timeout = Duration::from_millis(server.header_timeout_ms);
    let send_buffer = server.socket_send_buffer_bytes;
    let connections = TaskTracker::new();
    let mut refused_logged: Option<Instant> = None;
    loop {
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                refused_logged = Some(Instant::now());
                tracing::warn!(
                    max = server.max_connections,
                    "connection refused: at server.max_connections"
                );
            }
            drop(tcp);
            continue;
        };
        // Nagle off: 20 ms media frames and marks must not wait for the previous write's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if send_buffer > 0 {
            if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(send_buffer) {
                tracing::debug!(error = %e, "cannot set SO_SNDBUF");
            }
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // Finish the request in flight, then close (idle keep-alive: at once).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            // An upgraded WebSocket has left hyper by now: it is bounded by admission.
            drop(permit);
        });
    }
    drop(listener);
    // In-flight requests finish (bounded by the request timeout and this).
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.wait()).await;
    // Upgraded WebSockets are not waited for by axum: wait for the call tasks ourselves, for
    // the grace plus the time the last sentences and the stream closes may take.
    state.tracker.close();
    let bound = Duration::from_secs(state.config.limits.shutdown_grace_secs)
        + Duration::from_millis(state.config.limits.end_call_grace_ms)
        + Duration::from_secs(5);
    if tokio::time::timeout(bound, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            live_calls = state.admission.live(),
            "calls still running after the shutdown bound"
        );
    }
    // Let the recorder finish the files of the calls that just ended.
    if let Some(r) = state.recorder.clone() {
        let _ = tokio::task::spawn_blocking(move || r.sync(Duration::from_secs(10))).await;
    }
    Ok(())
}

/// `GET /debug/stats`: latency histograms and counters, when `server.debug_stats` is on
/// (aggregate numbers only; off by default so call volume is not public).
async fn debug_stats(State(state): State<Arc<AppState>>) -> Response {
    if !state.config.server.debug_stats {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let mut body = state.stats.to_json();
    body["live_calls"] = state.admission.live().into();
    body["pending_streams"] = state.admission.pending().into();
    axum::Json(body).into_response()
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text), when `metrics.enabled` (404
/// otherwise). Aggregates only: no numbers, call ids or transcripts. With
/// `metrics.require_token`, only with the operator bearer token (401 otherwise).
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.metrics.is_some() {
        if let Some(refused) = crate::ops::api::metrics_refusal(&state.config, &headers) {
            return refused;
        }
    }
    match &state.metrics {
        Some(m) => (
            [(header::CONTENT_TYPE, crate::ops::metrics::CONTENT_TYPE)],
            m.render(&state.stats),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let draining = state.shutdown.is_cancelled();
    // `model` never changes the status code: a refused model still lets Twilio get the
    // fallback TwiML, so the bridge must stay in rotation.
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ok" },
        "live_calls": state.admission.live(),
        "model": state.model_status.health().as_str(),
    });
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(body)).into_response()
}

/// `POST /twilio/voice`: answers with `<Connect><Stream>` to our media endpoint.
async fn voice_webhook(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    // Unauthenticated requests cost nothing: no signature header, no parsing.
    if state.config.twilio.validate_signatures && !headers.contains_key("x-twilio-signature") {
        tracing::warn!("voice webhook refused: no X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "missing signature\n").into_response();
    }
    if body.bytes().filter(|b| *b == b'&').count() >= MAX_WEBHOOK_FIELDS {
        tracing::warn!("voice webhook refused: too many form fields");
        return (StatusCode::PAYLOAD_TOO_LARGE, "too many fields\n").into_response();
    }
    // Twilio signs JSON bodies over the URL alone, with `bodySHA256` in its query string.
    let json_body = uri.query().is_some_and(|q| {
        signature::query_value(&format!("?{q}"), signature::BODY_SHA256_PARAM).is_some()
    });
    let form = if json_body {
        json_fields(&body)
    } else {
        match webhook::parse_form(&body) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %redact_text(&e.to_string()), "voice webhook with a malformed form body");
                return (StatusCode::BAD_REQUEST, "malformed form body\n").into_response();
            }
        }
    };
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let call_sid = field("CallSid");
    if state.config.twilio.validate_signatures {
        let urls = signed_urls(&state.config, &uri, &headers);
        let signed_params: &[(String, String)] = if json_body { &[] } else { &form };
        if let Err(why) = check_signature(&state, &urls, signed_params, &headers, body.as_bytes()) {
            tracing::warn!(reason = %redact_text(&why.to_string()), "voice webhook refused: bad signature");
            return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
        }
    }
    // The span opens only once the request is verified (or verification is off), and the
    // peer's string in it is escaped and bounded: no newline or ANSI escape reaches the log.
    let span = tracing::info_span!(
        "webhook",
        call_sid = %crate::redact::bounded(&call_sid, 64)
    );
    let _enter = span.enter();
    if state.shutdown.is_cancelled() || state.admission.full() {
        // No stream now: answer with the fallback verbs so the caller is not left in silence.
        tracing::warn!(
            draining = state.shutdown.is_cancelled(),
            "voice webhook answered with the fallback: draining or at the call limit"
        );
        let twiml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response>{}</Response>"#,
            state.config.twilio.fallback_twiml.trim()
        );
        return ([(header::CONTENT_TYPE, "text/xml")], twiml).into_response();
    }
    let stream_url = match state.config.stream_url() {
        Some(u) => u,
        None => match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            Some(host) => format!("wss://{host}/twilio/media"),
            None => {
                tracing::warn!(
                    "no server.public_url and no Host header: cannot build the stream URL"
                );
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no public URL configured\n",
                )
                    .into_response();
            }
        },
    };
    let mut params: Vec<(String, String)> = Vec::new();
    for (key, name) in [("From", "from"), ("To", "to"), ("Direction", "direction")] {
        let v = field(key);
        if !v.is_empty() {
            params.push((name.to_string(), v));
        }
    }
    if state.config.twilio.validate_signatures {
        params.push((
            signature::STREAM_TOKEN_PARAM.to_string(),
            state.stream_tokens.issue(&call_sid),
        ));
    }
    let fallback = &state.config.twilio.fallback_twiml;
    let twiml = webhook::connect_stream_twiml(&webhook::StreamTwiml {
        stream_url: &stream_url,
        parameters: &params,
        status_callback: None,
        fallback: (!fallback.is_empty()).then_some(fallback.as_str()),
    });
    tracing::info!("voice webhook answered with a media stream");
    ([(header::CONTENT_TYPE, "text/xml")], twiml).into_response()
}

/// `/twilio/whisper/{destination}`: TwiML said to the person who answers a transfer. Twilio
/// fetches it (GET or POST) signed like any webhook, and it is checked the same way: no
/// signature header is refused before anything is read, the body is bounded, the signature is
/// checked over the public URL (query included) and the form fields.
async fn whisper(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(destination): axum::extract::Path<String>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    if state.config.twilio.validate_signatures {
        if !headers.contains_key("x-twilio-signature") {
            tracing::warn!("whisper request refused: no X-Twilio-Signature");
            return (StatusCode::FORBIDDEN, "missing signature\n").into_response();
        }
        if body.bytes().filter(|b| *b == b'&').count() >= MAX_WEBHOOK_FIELDS {
            return (StatusCode::PAYLOAD_TOO_LARGE, "too many fields\n").into_response();
        }
        let form = if method == axum::http::Method::POST && !body.is_empty() {
            match webhook::parse_form(&body) {
                Ok(f) => f,
                Err(_) => {
                    tracing::warn!("whisper request with a malformed form body");
                    return (StatusCode::BAD_REQUEST, "malformed form body\n").into_response();
                }
            }
        } else {
            Vec::new()
        };
        let urls = signed_urls(&state.config, &uri, &headers);
        if let Err(why) = check_signature(&state, &urls, &form, &headers, body.as_bytes()) {
            tracing::warn!(reason = %redact_text(&why.to_string()), "whisper request refused: bad signature");
            return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
        }
    }
    match state.config.transfer.destinations.get(&destination) {
        Some(d) if !d.whisper.is_empty() => (
            [(header::CONTENT_TYPE, "text/xml")],
            webhook::say_twiml(&d.whisper),
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no whisper for this destination\n").into_response(),
    }
}

/// `GET /twilio/media`: the Media Streams WebSocket; one call per connection.
async fn media_stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Authenticate before anything else, and before the upgrade: Twilio signs the wss:// URL
    // it was given in TwiML, with no params (§1.2).
    let validate = state.config.twilio.validate_signatures;
    if validate {
        let url = media_url(&state.config, &headers);
        if let Err(why) = check_signature(&state, std::slice::from_ref(&url), &[], &headers, b"") {
            tracing::warn!(reason = %redact_text(&why.to_string()), "media stream refused before the upgrade: bad signature");
            return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let origin = CallOrigin {
        source: crate::ops::CallSource::Phone,
        stream_guard: validate.then(|| stream_guard(state.stream_tokens.clone())),
        control: state.control.clone(),
    };
    accept_call(state, ws, origin)
}

/// A check on a new stream's first `start` (see [`CallContext::stream_guard`]).
pub type StreamGuard = Arc<dyn Fn(&crate::twilio::wire::StreamStart) -> bool + Send + Sync>;

/// Who placed a call and what the bridge may do to it: what differs between a phone call and
/// a browser-phone call. Everything else about running a call is shared ([`accept_call`]).
pub struct CallOrigin {
    /// Phone (provider stream) or browser phone.
    pub source: crate::ops::CallSource,
    /// Checked on the stream's first `start` (stream token); `None` skips the check.
    pub stream_guard: Option<StreamGuard>,
    /// Call control (provider REST); `None` ends the call by closing the stream, and
    /// transfers and DTMF fail with an error the model or the operator is told.
    pub control: Option<Arc<dyn CallControl>>,
}

/// Upgrades a media WebSocket (Media Streams protocol) and runs one call on it through
/// [`driver::run_call`], as a tracked task. Until its first `start` the socket holds a
/// pending-stream slot (`limits.max_pending_streams`; 503 when none is free, and closed after
/// `limits.start_timeout_ms`); the `start` that passes the stream guard takes a call slot
/// (`limits.max_calls`, listed in [`AppState::admission`]) or the stream is closed with 1013.
/// Refused with 503 while draining or when every call slot is taken. Used by
/// `/twilio/media` and the browser phone.
pub fn accept_call(state: Arc<AppState>, ws: WebSocketUpgrade, origin: CallOrigin) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if state.admission.full() {
        tracing::warn!(
            max = state.config.limits.max_calls,
            source = origin.source.as_str(),
            "call refused: at the concurrent call limit"
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "at capacity\n").into_response();
    }
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let Some(pending) = state.admission.try_pending(conn) else {
        tracing::warn!(
            max = state.config.limits.max_pending_streams,
            source = origin.source.as_str(),
            "media socket refused: too many sockets waiting for `start`"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pending streams\n",
        )
            .into_response();
    };
    let max = state.config.limits.max_message_bytes;
    let st = state.clone();
    // Telephony-sized buffers: tungstenite zero-fills its whole read buffer before every read
    // (128 KiB by default, a quarter of the per-frame CPU and most of a call's memory);
    // Twilio's messages are ~400 bytes, so 4 KiB reads take several at once.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(CALLER_READ_BUFFER)
        .write_buffer_size(CALLER_WRITE_BUFFER)
        .on_failed_upgrade(|e| tracing::warn!(error = %e, "media WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let state = st;
            state.stats.calls_started.fetch_add(1, Ordering::Relaxed);
            let call_id = crate::ops::new_call_id();
            let mut ctx = call_context(&state, conn, call_id.clone(), origin);
            ctx.pending = Some(pending);
            let span = tracing::info_span!(
                "call",
                conn,
                id = %call_id,
                call_sid = tracing::field::Empty,
                stream_sid = tracing::field::Empty
            );
            let started = Instant::now();
            let task = state.tracker.spawn(
                async move {
                    // A panic inside one call must end only that call.
                    let result =
                        tokio::spawn(driver::run_call(socket, ctx).in_current_span()).await;
                    match result {
                        Ok(Some(why)) => tracing::debug!(
                            reason = why.as_str(),
                            secs = started.elapsed().as_secs_f32(),
                            "call task done"
                        ),
                        Ok(None) => tracing::debug!(
                            secs = started.elapsed().as_secs_f32(),
                            "stream done; call parked for its continuation"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "call task panicked; only this call ended");
                        }
                    }
                }
                .instrument(span),
            );
            let _ = task.await;
        })
}

/// The context one call runs with: the bridge's shared pieces plus what `origin` decides.
fn call_context(
    state: &AppState,
    conn: u64,
    call_id: crate::ops::CallId,
    origin: CallOrigin,
) -> CallContext {
    CallContext {
        conn,
        settings: state.settings.clone(),
        gemini_url: state.config.gemini.url.as_str().into(),
        credential: state.credential.clone(),
        connect_timeout: Duration::from_millis(state.config.gemini.connect_timeout_ms),
        notes: Some(state.notes.clone()),
        control: origin.control,
        control_settings: state.control_settings.clone(),
        parked: state.parked.clone(),
        tools: state.tools.clone(),
        tool_configs: Arc::new(state.config.tools.webhooks.clone()),
        shutdown: state.shutdown.clone(),
        stream_guard: origin.stream_guard,
        stats: state.stats.clone(),
        call_id,
        source: origin.source,
        observers: state.observers.clone(),
        commands: state.commands.clone(),
        pending: None,
        slot: None,
    }
}

/// The guard a new (non-continuation) stream must pass: its `start` carries an unused,
/// unexpired stream token issued for the same CallSid (by the voice webhook, or by
/// `POST /api/phone` for the browser phone).
pub fn stream_guard(tokens: Arc<StreamTokens>) -> StreamGuard {
    Arc::new(move |start| {
        let token = start
            .custom_parameters
            .get(signature::STREAM_TOKEN_PARAM)
            .map(String::as_str);
        match tokens.redeem(&start.call_sid, token) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(reason = %why, call_sid = %start.call_sid, "media stream refused: stream token");
                false
            }
        }
    })
}

/// The URLs Twilio may have signed a webhook over: `{server.public_url}` plus the request's
/// path and query string (as received, percent-encoding included). Without a public URL
/// (local testing only) the `Host` header is used, with both schemes.
fn signed_urls(config: &Config, uri: &Uri, headers: &HeaderMap) -> Vec<String> {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let public = config.server.public_url.trim_end_matches('/');
    if !public.is_empty() {
        return vec![format!("{public}{path_and_query}")];
    }
    let host = host_header(headers);
    ["https", "http"]
        .iter()
        .map(|scheme| format!("{scheme}://{host}{path_and_query}"))
        .collect()
}

/// The URL Twilio signed the media upgrade over: the `wss://` stream URL we put in TwiML,
/// rebuilt from configuration (a TLS-terminating proxy shows us http/https and maybe another
/// host), never from the request unless no public URL is configured.
fn media_url(config: &Config, headers: &HeaderMap) -> String {
    config
        .stream_url()
        .unwrap_or_else(|| format!("wss://{}/twilio/media", host_header(headers)))
}

fn host_header(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

/// Verifies `X-Twilio-Signature` against any of `urls` (params sorted once); the error is the
/// reason for the first URL (never a key).
fn check_signature(
    state: &AppState,
    urls: &[String],
    params: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), signature::Rejection> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let req = SignedRequest {
        url: "",
        params,
        signature: header(signature::SIGNATURE_HEADER),
        settings: header(signature::SETTINGS_HEADER),
        body,
    };
    state.verifier.verify_any(urls, &req)
}

/// Top-level string (or scalar) fields of a JSON object body, as webhook fields.
fn json_fields(body: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                serde_json::Value::Number(n) => Some((k, n.to_string())),
                serde_json::Value::Bool(b) => Some((k, b.to_string())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
