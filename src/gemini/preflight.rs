//! Preflight: open one Live session exactly as a call would and report whether the model
//! accepts our `setup` — so a retired model id or a bad key shows up at start-up (and in
//! `/healthz`, `/metrics` and `callbridge check-model`), not on the first caller.
//!
//! Owns: one check ([`check`]: connect, send `setup`, wait for `setupComplete` or a close
//! frame, close with 1000), its result ([`PreflightOutcome`], with a line a user can act on)
//! and the latest result shared by the bridge ([`ModelStatus`]).
//!
//! Does not own: what the setup contains or where to connect — the caller passes the URL,
//! the credential and the setup JSON the calls use ([`PreflightTarget`]), so `gemini` imports
//! neither `call` nor `config` — nor when checks run (that is `run`).
//!
//! Never shows the credential: connect errors are secret-free by construction, and text the
//! server sent (close reasons) is scrubbed of the secret, bounded and escaped.

use std::fmt::Write as _;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{self, describe_close, scrub, Credential, ModelSocket};

/// Longest close reason kept (characters); Google's are one sentence.
const MAX_REASON_CHARS: usize = 200;
/// How long an accepted check waits for the server's half of the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where and how to open the session: the same values a call's model connection uses.
#[derive(Clone)]
pub struct PreflightTarget {
    /// The configured model id (`gemini.model`), for the messages.
    pub model: String,
    /// The BidiGenerateContent URL (as given to [`connect::connect`]).
    pub url: String,
    /// The credential (as given to [`connect::connect`]).
    pub credential: Credential,
    /// The `{"setup": …}` message a call sends first.
    pub setup: String,
    /// Time allowed to open the WebSocket.
    pub connect_timeout: Duration,
    /// Time allowed after that for `setupComplete`.
    pub setup_timeout: Duration,
}

impl std::fmt::Debug for PreflightTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreflightTarget")
            .field("model", &self.model)
            .field("url", &connect::redact_url(&self.url))
            .field("credential", &self.credential)
            .field("connect_timeout", &self.connect_timeout)
            .field("setup_timeout", &self.setup_timeout)
            .finish_non_exhaustive()
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightOutcome {
    /// `setupComplete` arrived: calls will get a session.
    Accepted {
        /// The model id checked.
        model: String,
        /// Connect request to `setupComplete`, ms.
        setup_ms: u64,
    },
    /// The server closed the session before `setupComplete`: every call would be refused the
    /// same way (and get the fallback TwiML).
    Refused {
        /// The model id checked.
        model: String,
        /// Google's close code (1007 bad key or setup, 1008 model not found, …).
        code: u16,
        /// Google's close reason: secret removed, at most 200 characters.
        reason: String,
    },
    /// No verdict: the endpoint could not be reached, refused the upgrade with an HTTP status,
    /// dropped the connection or did not answer in time.
    Unreachable {
        /// The model id checked.
        model: String,
        /// Why (secret-free).
        why: String,
    },
}

impl PreflightOutcome {
    /// The model id the check was for.
    pub fn model(&self) -> &str {
        match self {
            PreflightOutcome::Accepted { model, .. }
            | PreflightOutcome::Refused { model, .. }
            | PreflightOutcome::Unreachable { model, .. } => model,
        }
    }

    /// What `/healthz` and `/metrics` report for it.
    pub fn health(&self) -> ModelHealth {
        match self {
            PreflightOutcome::Accepted { .. } => ModelHealth::Ok,
            PreflightOutcome::Refused { .. } => ModelHealth::Refused,
            PreflightOutcome::Unreachable { .. } => ModelHealth::Unchecked,
        }
    }

    /// `accepted`, `refused` or `unreachable` (the `result` label of the checks counter).
    pub fn result_str(&self) -> &'static str {
        match self {
            PreflightOutcome::Accepted { .. } => "accepted",
            PreflightOutcome::Refused { .. } => "refused",
            PreflightOutcome::Unreachable { .. } => "unreachable",
        }
    }

    /// One line for a person: what happened and which setting to look at. Never contains the
    /// credential.
    pub fn one_line(&self) -> String {
        match self {
            PreflightOutcome::Accepted { model, setup_ms } => format!(
                "model {model} accepted the setup (setupComplete in {setup_ms} ms); calls can connect"
            ),
            PreflightOutcome::Refused {
                model,
                code,
                reason,
            } => {
                let mut line = format!("model {model} refused: close {code} {reason:?}");
                let _ = write!(line, " — {}", advice(*code, reason));
                line
            }
            PreflightOutcome::Unreachable { model, why } => format!(
                "model {model} not checked: {why} — calls will fail the same way until the \
                 endpoint answers; check gemini.url, the network and gemini.connect_timeout_ms"
            ),
        }
    }
}

/// What to do about a close code (gemini-live.md §10.1), naming the setting.
fn advice(code: u16, reason: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    let about_key = lower.contains("api key")
        || lower.contains("api_key")
        || lower.contains("permission")
        || lower.contains("unauthenticated")
        || lower.contains("credential");
    match code {
        _ if about_key => {
            "the credential was refused; set GEMINI_API_KEY to a valid key (Vertex AI: check \
             the service account and gemini.project)"
                .to_string()
        }
        1008 => "the model id may be retired or not available to this key; set gemini.model \
                 (see README \"Models\")"
            .to_string(),
        1007 => "the setup was refused for this model; check gemini.model and the gemini.* \
                 settings it refuses (voice, thinking, affective_dialog; see README \"Models\")"
            .to_string(),
        1011 | 1013 | 1014 => format!(
            "{}; the key's quota or the service may be the cause — calls will be refused \
             while it lasts (gemini.model)",
            describe_close(code)
        ),
        _ => format!(
            "{}; check gemini.model and GEMINI_API_KEY",
            describe_close(code)
        ),
    }
}

/// Opens one session like a call, sends the setup and waits for the verdict, within
/// `connect_timeout + setup_timeout` in all. An accepted session is closed at once with 1000.
pub async fn check(target: &PreflightTarget) -> PreflightOutcome {
    let start = Instant::now();
    let budget = target.connect_timeout + target.setup_timeout;
    let model = target.model.clone();
    let unreachable = |why: String| PreflightOutcome::Unreachable {
        model: model.clone(),
        why: scrub(&why, secret(&target.credential)),
    };
    let socket = match tokio::time::timeout(
        budget,
        connect::connect(&target.url, &target.credential, target.connect_timeout),
    )
    .await
    {
        Err(_) => return unreachable(format!("no websocket within {} ms", budget.as_millis())),
        Ok(Err(e)) => return unreachable(e.to_string()),
        Ok(Ok(s)) => s,
    };
    let remaining = budget.saturating_sub(start.elapsed());
    match tokio::time::timeout(remaining, session(socket, target, start)).await {
        Ok(outcome) => outcome,
        Err(_) => unreachable(format!(
            "the model did not answer the setup within {} ms (gemini.setup_timeout_ms)",
            budget.as_millis()
        )),
    }
}

/// After the upgrade: send `setup`, read until `setupComplete` or the close.
async fn session(
    mut socket: ModelSocket,
    target: &PreflightTarget,
    start: Instant,
) -> PreflightOutcome {
    let model = target.model.clone();
    let secret = secret(&target.credential);
    // A refused key is closed at once, maybe before our setup is written: a failed send is
    // not the verdict, the close frame still waiting to be read is.
    let sent = socket
        .send(Message::Text(target.setup.clone().into()))
        .await;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) => {
                if is_setup_complete(t.as_bytes()) {
                    return accepted(socket, model, start).await;
                }
            }
            Some(Ok(Message::Binary(b))) => {
                if is_setup_complete(&b) {
                    return accepted(socket, model, start).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = connect::close_code_and_reason(frame.as_ref());
                return PreflightOutcome::Refused {
                    model,
                    code,
                    reason: bound(&scrub(&reason, secret)),
                };
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let why = match &sent {
                    Err(s) => format!("sending the setup failed ({s}); then: {e}"),
                    Ok(()) => format!("connection lost before setupComplete: {e}"),
                };
                return PreflightOutcome::Unreachable {
                    model,
                    why: scrub(&why, secret),
                };
            }
            None => {
                return PreflightOutcome::Unreachable {
                    model,
                    why: "connection closed without a close frame before setupComplete".into(),
                }
            }
        }
    }
}

async fn accepted(mut socket: ModelSocket, model: String, start: Instant) -> PreflightOutcome {
    let setup_ms = start.elapsed().as_millis() as u64;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "preflight".into(),
    };
    // Finish the close handshake politely, but never wait long for it.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if socket.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
    PreflightOutcome::Accepted { model, setup_ms }
}

/// Whether a server message is `setupComplete` (camelCase, or snake_case as proto-JSON allows).
fn is_setup_complete(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => {
            map.contains_key("setupComplete") || map.contains_key("setup_complete")
        }
        _ => false,
    }
}

/// The secret to scrub from server text; Vertex access tokens are fetched inside `connect`
/// and never reach our messages.
fn secret(credential: &Credential) -> &str {
    match credential {
        Credential::ApiKey(s) | Credential::EphemeralToken(s) => s,
        _ => "",
    }
}

/// At most [`MAX_REASON_CHARS`] characters (then `…`); escaping is left to `{:?}` when shown.
fn bound(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The model's state as the latest check left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelHealth {
    /// The last check was accepted.
    Ok,
    /// The last check was refused by the model.
    Refused,
    /// Not checked yet, preflight off, or the last check got no verdict.
    Unchecked,
}

impl ModelHealth {
    /// Every value, in the order `/metrics` lists them.
    pub const ALL: [ModelHealth; 3] = [
        ModelHealth::Ok,
        ModelHealth::Refused,
        ModelHealth::Unchecked,
    ];

    /// `ok`, `refused` or `unchecked`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelHealth::Ok => "ok",
            ModelHealth::Refused => "refused",
            ModelHealth::Unchecked => "unchecked",
        }
    }
}

/// The latest check, as the bridge shares it.
#[derive(Debug, Clone)]
pub struct ModelSnapshot {
    /// `ok`, `refused` or `unchecked`.
    pub health: ModelHealth,
    /// The latest check's line ([`PreflightOutcome::one_line`]); `None` before the first.
    pub message: Option<String>,
    /// When it finished.
    pub checked_at: Option<SystemTime>,
}

/// The latest preflight result (starts `unchecked`); cheap to read from any handler.
#[derive(Debug)]
pub struct ModelStatus {
    inner: RwLock<ModelSnapshot>,
}

impl Default for ModelStatus {
    fn default() -> Self {
        ModelStatus {
            inner: RwLock::new(ModelSnapshot {
                health: ModelHealth::Unchecked,
                message: None,
                checked_at: None,
            }),
        }
    }
}

impl ModelStatus {
    /// Keeps `outcome` as the latest; returns the health it replaced.
    pub fn set(&self, outcome: &PreflightOutcome) -> ModelHealth {
        let mut s = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = s.health;
        *s = ModelSnapshot {
            health: outcome.health(),
            message: Some(outcome.one_line()),
            checked_at: Some(SystemTime::now()),
        };
        before
    }

    /// The current health.
    pub fn health(&self) -> ModelHealth {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).health
    }

    /// The whole latest result.
    pub fn snapshot(&self) -> ModelSnapshot {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, reason: &str) -> PreflightOutcome {
        PreflightOutcome::Refused {
            model: "gemini-x-live".into(),
            code,
            reason: reason.into(),
        }
    }

    #[test]
    fn refused_line_names_the_setting_and_quotes_the_reason() {
        let l = refused(1008, "Requested entity was not found.").one_line();
        assert!(
            l.starts_with(
                "model gemini-x-live refused: close 1008 \"Requested entity was not found.\" — "
            ),
            "{l}"
        );
        assert!(l.contains("set gemini.model"), "{l}");
        let k = refused(1007, "API key not valid. Please pass a valid API key.").one_line();
        assert!(k.contains("GEMINI_API_KEY"), "{k}");
    }

    #[test]
    fn server_text_is_escaped_bounded_and_scrubbed() {
        let l = refused(1011, "line\nbreak \"quoted\"").one_line();
        assert!(l.contains(r#""line\nbreak \"quoted\"""#), "{l}");
        assert!(!l.contains('\n'));
        let long = "x".repeat(500);
        assert_eq!(bound(&long).chars().count(), MAX_REASON_CHARS + 1);
        assert_eq!(bound("short"), "short");
        assert_eq!(
            scrub("key a/b and a%2Fb", "a/b"),
            "key REDACTED and REDACTED"
        );
    }

    #[test]
    fn setup_complete_is_recognised_in_both_spellings() {
        assert!(is_setup_complete(br#"{"setupComplete":{}}"#));
        assert!(is_setup_complete(br#"{"setup_complete":{}}"#));
        assert!(!is_setup_complete(br#"{"serverContent":{}}"#));
        assert!(!is_setup_complete(b"not json"));
    }

    #[test]
    fn status_starts_unchecked_and_keeps_the_latest() {
        let s = ModelStatus::default();
        assert_eq!(s.health(), ModelHealth::Unchecked);
        assert_eq!(s.set(&refused(1008, "gone")), ModelHealth::Unchecked);
        assert_eq!(s.health(), ModelHealth::Refused);
        let u = PreflightOutcome::Unreachable {
            model: "m".into(),
            why: "down".into(),
        };
        s.set(&u);
        assert_eq!(s.health(), ModelHealth::Unchecked);
        assert!(s.snapshot().message.unwrap().contains("down"));
    }
}
