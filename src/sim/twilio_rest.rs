//! A fake Twilio REST API (telephony.md §3, §6.6 item 17): the Calls update endpoint, with
//! Basic auth, form validation, the documented Call JSON and error JSON.
//!
//! Used by `callbridge demo` (so the demo shows a real hang-up) and by tests. A call is
//! registered with a callback that plays Twilio's part on the media stream: any update of a
//! live call ends its stream (the simulated caller receives `stop`), as on the real service.
//! [`FakeRestHandle::register_caller`] wires a simulated caller completely: `Status` hangs it
//! up, `Twiml`/`Url` run on it (new stream, DTMF, transfer …), and once that call has ended
//! by itself further updates get 21220. Auth is Basic `AccountSid:AuthToken` or, for keys
//! added with [`FakeTwilioRest::api_key`], `SK…:secret` (§3.1); the AccountSid stays in the
//! path. Reads forms and writes JSON without the bridge's REST client types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;

use crate::sim::caller::SimCallerHandle;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Largest inline TwiML Twilio accepts (error 32018 beyond).
pub const MAX_TWIML_CHARS: usize = 4000;

/// Called when a registered call is updated; it must end the call's media stream.
pub type OnUpdate = Arc<dyn Fn(&CallUpdate) + Send + Sync>;

/// One accepted update of a call.
#[derive(Debug, Clone)]
pub struct CallUpdate {
    /// The call.
    pub call_sid: String,
    /// The form fields, decoded, in order.
    pub fields: Vec<(String, String)>,
}

impl CallUpdate {
    /// The value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every request the fake received, for assertions.
#[derive(Debug, Clone)]
pub struct RestRequest {
    /// Path as requested.
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// Twilio error code answered, if any.
    pub code: Option<u32>,
    /// Decoded form fields.
    pub fields: Vec<(String, String)>,
}

/// Says whether a registered call is still going on the caller's side.
type Liveness = Arc<dyn Fn() -> bool + Send + Sync>;

struct CallEntry {
    status: &'static str,
    on_update: OnUpdate,
    live: Option<Liveness>,
}

impl CallEntry {
    /// The status, noticing a call that ended on the caller's side.
    fn refresh(&mut self) -> &'static str {
        if self.status == "in-progress" && self.live.as_ref().is_some_and(|live| !live()) {
            self.status = "completed";
        }
        self.status
    }
}

struct Inner {
    account_sid: String,
    auth_token: String,
    /// API keys (`SK…` SID, secret) accepted as Basic credentials.
    api_keys: Vec<(String, String)>,
    calls: Mutex<HashMap<String, CallEntry>>,
    requests: Mutex<Vec<RestRequest>>,
    /// Fail this many upcoming requests with this status (transient-error knob).
    fail_next: Mutex<(u32, u16)>,
}

/// Builder for [`FakeTwilioRest`].
pub struct FakeTwilioRest {
    account_sid: String,
    auth_token: String,
    api_keys: Vec<(String, String)>,
}

impl FakeTwilioRest {
    /// A fake for one account with its auth token.
    pub fn new(account_sid: &str, auth_token: &str) -> FakeTwilioRest {
        FakeTwilioRest {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            api_keys: Vec::new(),
        }
    }

    /// Also accept Basic auth with this API key (`SK…` SID and its secret) in place of
    /// `AccountSid:AuthToken`; may be called more than once.
    pub fn api_key(mut self, sid: &str, secret: &str) -> FakeTwilioRest {
        self.api_keys.push((sid.into(), secret.into()));
        self
    }

    /// Serves on 127.0.0.1 (ephemeral port).
    pub async fn spawn(self) -> std::io::Result<FakeRestHandle> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            account_sid: self.account_sid,
            auth_token: self.auth_token,
            api_keys: self.api_keys,
            calls: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            fail_next: Mutex::new((0, 0)),
        });
        let router = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Calls/{call}",
                post(update_call),
            )
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(FakeRestHandle { addr, inner, stop })
    }
}

/// A running fake.
pub struct FakeRestHandle {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl FakeRestHandle {
    /// Base URL to use as `CALLBRIDGE_TWILIO_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers a live call; `on_update` ends its media stream when the call is updated.
    pub fn register_call(&self, call_sid: &str, on_update: OnUpdate) {
        lock(&self.inner.calls).insert(
            call_sid.to_string(),
            CallEntry {
                status: "in-progress",
                on_update,
                live: None,
            },
        );
    }

    /// Registers a simulated caller's call: every accepted update goes to
    /// [`SimCallerHandle::update_trigger`] (so `Status` hangs up, `Twiml`/`Url` run on the
    /// call as on Twilio), and once the call has ended on the caller's side (hang-up,
    /// transfer, the bridge closed …) it counts as `completed` (updates get 21220).
    pub fn register_caller(&self, call_sid: &str, caller: &SimCallerHandle) {
        let trigger = caller.update_trigger();
        lock(&self.inner.calls).insert(
            call_sid.to_string(),
            CallEntry {
                status: "in-progress",
                on_update: Arc::new(move |u: &CallUpdate| trigger(&u.fields)),
                live: Some(Arc::new(caller.liveness())),
            },
        );
    }

    /// Marks a call as ended by the caller (later updates get 21220).
    pub fn end_call(&self, call_sid: &str) {
        if let Some(c) = lock(&self.inner.calls).get_mut(call_sid) {
            c.status = "completed";
        }
    }

    /// The call's status (`in-progress`, `completed`), if registered.
    pub fn call_status(&self, call_sid: &str) -> Option<&'static str> {
        lock(&self.inner.calls)
            .get_mut(call_sid)
            .map(CallEntry::refresh)
    }

    /// Answers the next `count` requests with `status` (e.g. 503 or 429) before handling them.
    pub fn fail_next(&self, count: u32, status: u16) {
        *lock(&self.inner.fail_next) = (count, status);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RestRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for FakeRestHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(status: StatusCode, code: u32, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        }),
    )
}

fn decode_form(body: &str) -> Option<Vec<(String, String)>> {
    let dec = |s: &str| {
        urlencoding::decode(&s.replace('+', " "))
            .ok()
            .map(|c| c.into_owned())
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

fn call_json(account: &str, call: &str, status: &str) -> Value {
    json!({
        "sid": call, "account_sid": account, "parent_call_sid": null,
        "to": "+15005550006", "to_formatted": "(500) 555-0006",
        "from": "+14155550123", "from_formatted": "(415) 555-0123",
        "phone_number_sid": "PN0123456789abcdef0123456789abcdef",
        "status": status, "start_time": "Tue, 01 Sep 2026 12:00:00 +0000", "end_time": null,
        "duration": null, "price": null, "price_unit": "USD", "direction": "inbound",
        "answered_by": null, "api_version": "2010-04-01", "forwarded_from": null,
        "group_sid": null, "caller_name": null, "queue_time": "0", "trunk_sid": null,
        "stir_verstat": null,
        "date_created": "Tue, 01 Sep 2026 12:00:00 +0000",
        "date_updated": "Tue, 01 Sep 2026 12:00:05 +0000",
        "uri": format!("/2010-04-01/Accounts/{account}/Calls/{call}.json"),
        "subresource_uris": {"streams": format!("/2010-04-01/Accounts/{account}/Calls/{call}/Streams.json")}
    })
}

async fn update_call(
    State(inner): State<Arc<Inner>>,
    Path((account, call)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = format!("/2010-04-01/Accounts/{account}/Calls/{call}");
    let fields = decode_form(&body);
    let (status, value, update) = handle(&inner, &account, &call, &headers, fields.as_deref());
    lock(&inner.requests).push(RestRequest {
        path,
        status: status.as_u16(),
        code: value.get("code").and_then(|c| c.as_u64()).map(|c| c as u32),
        fields: fields.unwrap_or_default(),
    });
    if let Some((cb, upd)) = update {
        cb(&upd);
    }
    (status, axum::Json(value)).into_response()
}

type Handled = (StatusCode, Value, Option<(OnUpdate, CallUpdate)>);

fn handle(
    inner: &Inner,
    account: &str,
    call: &str,
    headers: &HeaderMap,
    fields: Option<&[(String, String)]>,
) -> Handled {
    {
        let mut fail = lock(&inner.fail_next);
        if fail.0 > 0 {
            fail.0 -= 1;
            let status = StatusCode::from_u16(fail.1).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let (s, v) = error(status, 20500, "Internal Server Error (injected)");
            return (s, v, None);
        }
    }
    let authorized = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|cred| {
            cred == format!("{}:{}", inner.account_sid, inner.auth_token)
                || inner
                    .api_keys
                    .iter()
                    .any(|(sid, secret)| cred == format!("{sid}:{secret}"))
        });
    if !authorized {
        let (s, v) = error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        return (s, v, None);
    }
    let Some(call_sid) = call.strip_suffix(".json") else {
        let (s, v) = error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
        return (s, v, None);
    };
    if account != inner.account_sid {
        let (s, v) = error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
        return (s, v, None);
    }
    let is_form = headers
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let Some(fields) = fields.filter(|_| is_form) else {
        let (s, v) = error(
            StatusCode::BAD_REQUEST,
            20001,
            "Request body must be form-encoded",
        );
        return (s, v, None);
    };
    const KNOWN: [&str; 9] = [
        "Url",
        "Method",
        "Status",
        "FallbackUrl",
        "FallbackMethod",
        "StatusCallback",
        "StatusCallbackMethod",
        "Twiml",
        "TimeLimit",
    ];
    if let Some((k, _)) = fields.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
        let (s, v) = error(
            StatusCode::BAD_REQUEST,
            20001,
            &format!("Unknown parameter {k}"),
        );
        return (s, v, None);
    }
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if let Some(st) = get("Status") {
        if st != "completed" && st != "canceled" {
            let (s, v) = error(
                StatusCode::BAD_REQUEST,
                21218,
                &format!("Invalid Status {st}"),
            );
            return (s, v, None);
        }
    }
    if let Some(t) = get("Twiml") {
        if t.chars().count() > MAX_TWIML_CHARS {
            let (s, v) = error(
                StatusCode::BAD_REQUEST,
                32018,
                "TwiML exceeds 4000 characters",
            );
            return (s, v, None);
        }
    }
    if get("Status").is_none() && get("Twiml").is_none() && get("Url").is_none() {
        let (s, v) = error(StatusCode::BAD_REQUEST, 20001, "Nothing to update");
        return (s, v, None);
    }
    let mut calls = lock(&inner.calls);
    let Some(entry) = calls.get_mut(call_sid) else {
        let (s, v) = error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
        return (s, v, None);
    };
    if entry.refresh() != "in-progress" {
        let (s, v) = error(
            StatusCode::BAD_REQUEST,
            21220,
            "Call is not in-progress. Cannot redirect.",
        );
        return (s, v, None);
    }
    let ends = get("Status").is_some();
    if ends {
        entry.status = "completed";
    }
    let status = entry.status;
    let update = CallUpdate {
        call_sid: call_sid.to_string(),
        fields: fields.to_vec(),
    };
    (
        StatusCode::OK,
        call_json(account, call_sid, status),
        Some((entry.on_update.clone(), update)),
    )
}
