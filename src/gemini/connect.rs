//! Opening the Gemini Live WebSocket (the model leg's transport).
//!
//! Owns: where we connect (API-key URL, the ephemeral-token `…Constrained` URL, or the
//! regional Vertex AI URL), how the credential is presented (header or query), the WebSocket
//! limits, the TLS crypto provider, the connect timeout, and turning failures and close frames
//! into loggable, secret-free text.
//!
//! Vertex AI ([`Credential::Vertex`]): the access token comes from [`super::auth`] (cached,
//! shared by all calls) and goes in `Authorization: Bearer`; no API key is sent. The URL rule:
//! when the configured URL is still [`DEFAULT_URL`] (the config default), the regional Live
//! endpoint for the location is dialled ([`vertex_url`]); any other configured URL (a proxy,
//! a local simulator) is the operator's choice and is used as given.
//!
//! Does not own: any message content (see [`super::wire`] and [`super::setup`]), reading or
//! writing the socket after the upgrade (that is `call::driver`), or retry policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::auth::{AuthError, TokenSource};
pub use super::tls::ensure_crypto_provider;
pub(crate) use crate::redact::{scrub, truncate};

/// The production endpoint for API keys (v1beta, as documented; also what SDK ≤2.x use).
pub const DEFAULT_URL: &str = "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

/// Path of the Vertex AI Live method (v1; `v1beta1` serves the same protocol).
pub const VERTEX_PATH: &str = "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent";

/// The only method that accepts ephemeral tokens.
const CONSTRAINED_SEGMENT: &str =
    "google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";

/// Largest model message / frame we accept. Audio chunks are a few KiB of base64, but a
/// tool call with large arguments or grounding metadata can be big; 16 MiB bounds memory per
/// call without ever cutting a legitimate message.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The connected model socket.
pub type ModelSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How we authenticate to the Live API.
#[derive(Clone)]
pub enum Credential {
    /// A Gemini API key, sent as header `x-goog-api-key` (never in the URL).
    ApiKey(String),
    /// An ephemeral token (`auth_tokens/…`), sent as `?access_token=` on the v1alpha
    /// `BidiGenerateContentConstrained` method.
    EphemeralToken(String),
    /// Vertex AI: an OAuth2 access token from `tokens`, sent as `Authorization: Bearer`. With
    /// the default URL the regional endpoint for `location` is dialled (see the module docs).
    Vertex {
        /// Region of the Live endpoint, e.g. `us-central1` (or `global`).
        location: String,
        /// The process-wide token cache ([`TokenSource::shared`]).
        tokens: Arc<TokenSource>,
    },
}

impl Credential {
    /// Vertex AI credentials for `location`, with the process-wide token source for the
    /// process environment (`GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server).
    pub fn vertex_from_env(location: &str) -> Credential {
        Credential::Vertex {
            location: location.to_owned(),
            tokens: TokenSource::shared(super::auth::Source::from_process_env()),
        }
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Credential::ApiKey(a), Credential::ApiKey(b))
            | (Credential::EphemeralToken(a), Credential::EphemeralToken(b)) => a == b,
            (
                Credential::Vertex {
                    location: a,
                    tokens: ta,
                },
                Credential::Vertex {
                    location: b,
                    tokens: tb,
                },
            ) => a == b && Arc::ptr_eq(ta, tb),
            _ => false,
        }
    }
}

impl Eq for Credential {}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret; its length helps spot an empty or truncated env var.
        let (kind, s) = match self {
            Credential::ApiKey(s) => ("ApiKey", s),
            Credential::EphemeralToken(s) => ("EphemeralToken", s),
            Credential::Vertex { location, tokens } => {
                return write!(f, "Vertex({location}, tokens from {})", tokens.source())
            }
        };
        write!(f, "{kind}(<redacted, {} chars>)", s.len())
    }
}

/// Why the Live WebSocket could not be opened. Messages never contain the credential; URLs in
/// them have `key` / `access_token` query values replaced by `REDACTED`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configured URL is not a usable ws:// or wss:// URL.
    #[error("invalid model url {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The credential cannot be put in an HTTP header (e.g. it contains a newline).
    #[error("model credential contains characters not allowed in an http header")]
    InvalidCredential,
    /// Vertex AI: no access token could be had (key file, token endpoint, metadata server).
    #[error("no Vertex AI access token: {0}")]
    Auth(#[from] AuthError),
    /// Vertex AI: the token source did not answer within the connect timeout.
    #[error("no Vertex AI access token from {from} within {after:?}")]
    AuthTimeout {
        /// Where the token was asked for (a file path or metadata host; no secret).
        from: String,
        /// The connect timeout that expired.
        after: Duration,
    },
    /// The server answered the upgrade with an HTTP status instead of 101.
    #[error("model endpoint {url} refused the websocket upgrade with http status {status}{}", body_suffix(.body))]
    HttpStatus {
        /// The URL, redacted.
        url: String,
        /// The HTTP status code, e.g. 429 or 404.
        status: u16,
        /// The start of the response body, if any (secret removed).
        body: Option<String>,
    },
    /// No upgrade completed within the timeout.
    #[error("model endpoint {url} did not complete the websocket upgrade within {after:?}")]
    Timeout {
        /// The URL, redacted.
        url: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// TCP connect or TLS failed.
    #[error("could not connect to model endpoint {url}: {source}")]
    Io {
        /// The URL, redacted.
        url: String,
        /// The underlying I/O or TLS error.
        source: std::io::Error,
    },
    /// The WebSocket handshake failed for another reason.
    #[error("websocket handshake with model endpoint {url} failed: {reason}")]
    Handshake {
        /// The URL, redacted.
        url: String,
        /// What went wrong (secret removed).
        reason: String,
    },
}

fn body_suffix(body: &Option<String>) -> String {
    match body {
        Some(b) if !b.is_empty() => format!(": {b}"),
        _ => String::new(),
    }
}

/// The URL actually dialled for a credential (see [`connect`]); exposed for logging and tests.
/// Contains the token for [`Credential::EphemeralToken`] — redact with [`redact_url`] before
/// logging.
pub fn endpoint_url(url: &str, credential: &Credential) -> String {
    match credential {
        Credential::ApiKey(_) => url.to_owned(),
        Credential::Vertex { location, .. } if url == DEFAULT_URL => vertex_url(location),
        Credential::Vertex { .. } => url.to_owned(),
        Credential::EphemeralToken(token) => {
            let (base, query) = match url.split_once('?') {
                Some((b, q)) => (b, Some(q)),
                None => (url, None),
            };
            let base = constrained_base(base);
            // Keep unrelated query parameters; drop credentials that would conflict.
            let mut params: Vec<&str> = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter(|p| !p.is_empty() && !is_secret_param(p))
                .collect();
            let token_param = format!("access_token={}", urlencoding::encode(token));
            params.push(&token_param);
            format!("{base}?{}", params.join("&"))
        }
    }
}

/// The regional Vertex AI Live endpoint: `wss://{location}-aiplatform.googleapis.com` + [`VERTEX_PATH`]
/// (`global` has no regional prefix: `wss://aiplatform.googleapis.com`).
pub fn vertex_url(location: &str) -> String {
    if location == "global" {
        format!("wss://aiplatform.googleapis.com{VERTEX_PATH}")
    } else {
        format!("wss://{location}-aiplatform.googleapis.com{VERTEX_PATH}")
    }
}

/// Rewrites `…/ws/google.ai.generativelanguage.<ver>.GenerativeService.BidiGenerateContent` to
/// the v1alpha `…BidiGenerateContentConstrained` method; other paths are used as given.
fn constrained_base(base: &str) -> String {
    let (prefix, last) = match base.rsplit_once('/') {
        Some((p, l)) => (p, l),
        None => return base.to_owned(),
    };
    let is_live_method = last.starts_with("google.ai.generativelanguage.")
        && last.ends_with(".GenerativeService.BidiGenerateContent");
    if is_live_method {
        format!("{prefix}/{CONSTRAINED_SEGMENT}")
    } else {
        base.to_owned()
    }
}

fn is_secret_param(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(n, _)| n);
    name.eq_ignore_ascii_case("key") || name.eq_ignore_ascii_case("access_token")
}

/// `url` with the values of `key` and `access_token` query parameters replaced by `REDACTED`.
pub fn redact_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| {
            if is_secret_param(p) {
                let name = p.split_once('=').map_or(p, |(n, _)| n);
                format!("{name}=REDACTED")
            } else {
                p.to_owned()
            }
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// Opens the Live WebSocket.
///
/// [`Credential::ApiKey`] → header `x-goog-api-key` on `url` (usually [`DEFAULT_URL`]).
/// [`Credential::EphemeralToken`] → the v1alpha `…BidiGenerateContentConstrained` URL (derived
/// from `url` when it points at `BidiGenerateContent`) with `?access_token=<url-encoded>`;
/// no key header.
/// [`Credential::Vertex`] → an access token (cached or fetched now) as
/// `Authorization: Bearer`, no key header, on [`vertex_url`] when `url` is [`DEFAULT_URL`].
/// The whole attempt (token, DNS, TCP, TLS, upgrade) is bounded by `timeout`.
pub async fn connect(
    url: &str,
    credential: &Credential,
    timeout: Duration,
) -> Result<ModelSocket, ConnectError> {
    ensure_crypto_provider();
    let started = tokio::time::Instant::now();
    let target = endpoint_url(url, credential);
    let shown = redact_url(&target);
    let token;
    let secret: &str = match credential {
        Credential::ApiKey(s) | Credential::EphemeralToken(s) => s,
        Credential::Vertex { tokens, .. } => {
            token = match tokio::time::timeout(timeout, tokens.token()).await {
                Err(_elapsed) => {
                    return Err(ConnectError::AuthTimeout {
                        from: tokens.source().to_string(),
                        after: timeout,
                    })
                }
                Ok(Err(e)) => return Err(ConnectError::Auth(e)),
                Ok(Ok(t)) => t,
            };
            token.secret()
        }
    };
    let remaining = timeout.saturating_sub(started.elapsed());

    let mut request =
        target
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::InvalidUrl {
                url: shown.clone(),
                reason: scrub(&e.to_string(), secret),
            })?;
    match request.uri().scheme_str() {
        Some("ws") | Some("wss") => {}
        other => {
            return Err(ConnectError::InvalidUrl {
                url: shown,
                reason: format!("scheme {:?} is not ws or wss", other.unwrap_or("")),
            })
        }
    }
    let headers = request.headers_mut();
    match credential {
        Credential::ApiKey(key) => {
            let mut value =
                HeaderValue::from_str(key).map_err(|_| ConnectError::InvalidCredential)?;
            value.set_sensitive(true);
            headers.insert("x-goog-api-key", value);
        }
        Credential::Vertex { .. } => {
            let mut value = HeaderValue::from_str(&format!("Bearer {secret}"))
                .map_err(|_| ConnectError::InvalidCredential)?;
            value.set_sensitive(true);
            headers.insert("authorization", value);
        }
        Credential::EphemeralToken(_) => {}
    }
    headers.insert(
        "user-agent",
        HeaderValue::from_static(concat!("callbridge/", env!("CARGO_PKG_VERSION"))),
    );

    // tungstenite zero-fills its read buffer before every read (128 KiB by default): 16 KiB
    // holds a few 40 ms audio chunks and keeps that cost and the resident memory small.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024);
    // Nagle off: 20–40 ms audio frames must not wait for ACKs.
    let attempt = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(remaining, attempt).await {
        Err(_elapsed) => Err(ConnectError::Timeout {
            url: shown,
            after: timeout,
        }),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(e)) => Err(classify(e, shown, secret)),
    }
}

fn classify(e: WsError, url: String, secret: &str) -> ConnectError {
    match e {
        WsError::Http(response) => {
            let body = response.body().as_deref().and_then(|b| {
                let text = String::from_utf8_lossy(b);
                let text = text.trim();
                (!text.is_empty()).then(|| scrub(&truncate(text, 300), secret))
            });
            ConnectError::HttpStatus {
                url,
                status: response.status().as_u16(),
                body,
            }
        }
        WsError::Io(source) => ConnectError::Io { url, source },
        WsError::Url(reason) => ConnectError::InvalidUrl {
            url,
            reason: reason.to_string(),
        },
        other => ConnectError::Handshake {
            url,
            reason: scrub(&other.to_string(), secret),
        },
    }
}

/// Close code and reason of a received close frame, for logging. No frame (the peer closed
/// without a status) is reported as 1005, as RFC 6455 prescribes.
pub fn close_code_and_reason(frame: Option<&CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
        None => (1005, String::new()),
    }
}

/// A short explanation of a close code as the Live API uses it (gemini-live.md §10.1).
pub fn describe_close(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "closed without a status code",
        1006 => "connection dropped without a close frame",
        1007 => "invalid argument (bad setup, message or api key)",
        1008 => "policy violation (model not found, not permitted or not supported)",
        1009 => "message too big",
        1010 => "missing websocket extension",
        1011 => "server error (internal, unavailable, deadline or quota exceeded)",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        1015 => "tls handshake failure",
        _ => "unrecognised close code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secret() {
        let k = Credential::ApiKey("AIzaSecret".into());
        let t = Credential::EphemeralToken("auth_tokens/abc".into());
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted, 10 chars>)");
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn vertex_url_rule() {
        use crate::gemini::auth::{Source, TokenSource};
        // The rule compares against the config's default; they must stay one URL.
        assert_eq!(DEFAULT_URL, crate::config::DEFAULT_GEMINI_URL);
        let v = Credential::Vertex {
            location: "europe-west4".into(),
            tokens: TokenSource::shared(Source::Metadata { host: "m".into() }),
        };
        assert_eq!(
            endpoint_url(DEFAULT_URL, &v),
            "wss://europe-west4-aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"
        );
        assert_eq!(
            vertex_url("global"),
            "wss://aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"
        );
        // An operator's URL (a proxy, the simulator) is kept.
        let sim = format!("ws://127.0.0.1:9{VERTEX_PATH}");
        assert_eq!(endpoint_url(&sim, &v), sim);
        assert_eq!(
            format!("{v:?}"),
            "Vertex(europe-west4, tokens from metadata server m)"
        );
        assert_eq!(v, v.clone());
        assert_ne!(v, Credential::ApiKey("k".into()));
    }

    #[test]
    fn ephemeral_url_from_default() {
        let u = endpoint_url(
            DEFAULT_URL,
            &Credential::EphemeralToken("auth_tokens/a b".into()),
        );
        assert_eq!(
            u,
            "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained?access_token=auth_tokens%2Fa%20b"
        );
    }

    #[test]
    fn ephemeral_url_keeps_other_params_and_drops_key() {
        let u = endpoint_url(
            "ws://127.0.0.1:9/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent?key=K&x=1",
            &Credential::EphemeralToken("t".into()),
        );
        assert_eq!(
            u,
            "ws://127.0.0.1:9/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained?x=1&access_token=t"
        );
        // Already constrained, or a custom path: used as given.
        let c = format!("ws://h/ws/{CONSTRAINED_SEGMENT}");
        assert_eq!(
            endpoint_url(&c, &Credential::EphemeralToken("t".into())),
            format!("{c}?access_token=t")
        );
        assert_eq!(
            endpoint_url("ws://h/live", &Credential::EphemeralToken("t".into())),
            "ws://h/live?access_token=t"
        );
    }

    #[test]
    fn api_key_url_unchanged() {
        assert_eq!(
            endpoint_url(DEFAULT_URL, &Credential::ApiKey("k".into())),
            DEFAULT_URL
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("ws://h/p?a=1&key=SECRET&access_token=TOK"),
            "ws://h/p?a=1&key=REDACTED&access_token=REDACTED"
        );
        assert_eq!(redact_url("ws://h/p"), "ws://h/p");
        assert_eq!(
            scrub("bad token auth_tokens%2Fx here", "auth_tokens/x"),
            "bad token REDACTED here"
        );
    }

    #[test]
    fn close_descriptions() {
        assert_eq!(close_code_and_reason(None), (1005, String::new()));
        let f = CloseFrame {
            code: 1008u16.into(),
            reason: "models/x is not found".into(),
        };
        assert_eq!(
            close_code_and_reason(Some(&f)),
            (1008, "models/x is not found".to_owned())
        );
        assert!(describe_close(1011).contains("server error"));
        assert!(describe_close(1007).contains("invalid argument"));
        assert_eq!(describe_close(4321), "unrecognised close code");
    }
}
