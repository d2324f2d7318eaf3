//! OAuth2 access tokens for Vertex AI (`gemini.backend = "vertex"`).
//!
//! Owns: where the token comes from, in the order Google's libraries look — a service-account
//! key file named by env `GOOGLE_APPLICATION_CREDENTIALS` (RS256 JWT-bearer grant, RFC 7523,
//! posted to the file's own `token_uri`), else the GCE / Cloud Run / GKE metadata server
//! (`http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token`
//! with `Metadata-Flavor: Google`; env `GCE_METADATA_HOST` replaces the host, as in Google's
//! libraries) — and the cache: one [`TokenSource`] per credential source per process, shared by
//! every call, refreshed when less than [`REFRESH_MARGIN`] is left; concurrent callers wait for
//! the one refresh in flight instead of starting their own.
//!
//! Does not own: the WebSocket (see [`super::connect`], which sends the token as
//! `Authorization: Bearer`), retries (a failed fetch fails that call's model connection, and
//! the call runs its fallback path; the next call tries again).
//!
//! Secrets: access tokens, the private key and the signed assertion are never logged and never
//! put in an error message or a `Debug` output; error messages name the file or endpoint and
//! the reason only. Server error bodies are included (truncated) with the assertion removed;
//! a successful response body (which holds the token) never is.
//!
//! Crate choice: `jsonwebtoken` 9 for the RS256 assertion. It signs with `ring`, which the
//! bridge already builds for rustls, so no new crypto code comes in (v10 and later make the
//! caller pick RustCrypto `rsa` — open advisory RUSTSEC-2023-0071 — or aws-lc-rs, a C/CMake
//! build). `gcp_auth` was considered and not taken: it does use the key file's `token_uri`,
//! but it hard-codes `metadata.google.internal` (no `GCE_METADATA_HOST`, so the metadata path
//! could not be pointed at a local fake) and brings its own hyper client, where the HTTP here
//! goes through reqwest, which the bridge already has.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::redact::truncate;

/// The OAuth2 scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The metadata server's host on Google Cloud (GCE, Cloud Run, GKE).
pub const METADATA_HOST: &str = "metadata.google.internal";
/// Path of the default service account's access token on the metadata server.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// A cached token with less than this left is refreshed before it is used.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Env var naming a service-account key file.
pub const ENV_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// Env var replacing the metadata server's host (`host` or `host:port`).
pub const ENV_METADATA_HOST: &str = "GCE_METADATA_HOST";

/// When a refresh fails, a cached token is still used if it has at least this long to live
/// (the token only has to last through the WebSocket handshake).
const STALE_OK: Duration = Duration::from_secs(30);
/// Bound on one token request (connect, send, response).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime asked for in the JWT assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Where access tokens come from. Holds no secret (a key file is read when a token is fetched,
/// so a rotated file is picked up at the next refresh).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A service-account key file (JSON with `client_email`, `private_key`, `token_uri`).
    ServiceAccountFile(PathBuf),
    /// The metadata server at `host` (`host` or `host:port`, plain HTTP).
    Metadata {
        /// [`METADATA_HOST`] unless `GCE_METADATA_HOST` says otherwise.
        host: String,
    },
}

impl Source {
    /// The source Google's libraries would use: `GOOGLE_APPLICATION_CREDENTIALS` if set and
    /// non-empty, else the metadata server (`GCE_METADATA_HOST` or [`METADATA_HOST`]).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Source {
        let set = |k: &str| {
            env(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        match set(ENV_CREDENTIALS) {
            Some(path) => Source::ServiceAccountFile(PathBuf::from(path)),
            None => Source::Metadata {
                host: set(ENV_METADATA_HOST).unwrap_or_else(|| METADATA_HOST.to_owned()),
            },
        }
    }

    /// [`Source::from_env`] on the process environment.
    pub fn from_process_env() -> Source {
        Source::from_env(|k| std::env::var(k).ok())
    }

    /// The metadata server's token URL for `host`.
    pub fn metadata_url(host: &str) -> String {
        format!("http://{host}{METADATA_TOKEN_PATH}")
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::ServiceAccountFile(p) => {
                write!(
                    f,
                    "service-account key file {} ({ENV_CREDENTIALS})",
                    p.display()
                )
            }
            Source::Metadata { host } => write!(f, "metadata server {host}"),
        }
    }
}

/// An OAuth2 access token. `Debug` shows only its length and how long it has left.
#[derive(Clone)]
pub struct AccessToken {
    value: Arc<str>,
    expires_at: Instant,
}

impl AccessToken {
    /// The token itself, for the `Authorization` header. Never log it.
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// When the issuer said it expires (measured from when it was requested).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    fn fresh_at(&self, now: Instant, margin: Duration) -> bool {
        self.expires_at
            .checked_duration_since(now)
            .unwrap_or_default()
            > margin
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let left = self
            .expires_at
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        write!(
            f,
            "AccessToken(<redacted, {} chars>, {}s left)",
            self.value.len(),
            left.as_secs()
        )
    }
}

/// Why no access token could be had. Messages name the source and the reason, never a token,
/// the private key or the signed assertion.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key file could not be read or is not a usable service-account key.
    #[error("service-account key file {} ({ENV_CREDENTIALS}) is not usable: {reason}", path.display())]
    KeyFile {
        /// The file named by `GOOGLE_APPLICATION_CREDENTIALS`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The token request failed (network, timeout) or was refused.
    #[error("access token request to {endpoint} failed: {reason}")]
    Request {
        /// The token endpoint (`token_uri` or the metadata URL).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The endpoint answered 200 but not with a usable token.
    #[error("access token response from {endpoint} is not usable: {reason}")]
    BadResponse {
        /// The token endpoint.
        endpoint: String,
        /// What is missing.
        reason: String,
    },
}

/// A process-wide, cached source of access tokens (see the module docs).
pub struct TokenSource {
    source: Source,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<AccessToken>>,
    fetches: AtomicU64,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("source", &self.source)
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A new source with its own, empty cache. The bridge uses [`TokenSource::shared`].
    pub fn new(source: Source) -> TokenSource {
        super::tls::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .user_agent(concat!("callbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        TokenSource {
            source,
            http,
            cache: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// The one source per [`Source`] in this process, so every call (and the preflight) shares
    /// one cached token and one refresh.
    pub fn shared(source: Source) -> Arc<TokenSource> {
        static SOURCES: OnceLock<Mutex<HashMap<Source, Arc<TokenSource>>>> = OnceLock::new();
        let map = SOURCES.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(source.clone())
            .or_insert_with(|| Arc::new(TokenSource::new(source)))
            .clone()
    }

    /// Where tokens come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// How many tokens were fetched (successful requests) so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A token with more than [`REFRESH_MARGIN`] left: the cached one, or a new one. Callers
    /// arriving during a refresh wait for it and share its result. If the refresh fails while
    /// the cached token still has a little while left, that one is returned (with a warning).
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache
            .as_ref()
            .filter(|t| t.fresh_at(Instant::now(), REFRESH_MARGIN))
        {
            return Ok(t.clone());
        }
        match self.fetch().await {
            Ok(t) => {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(source = %self.source, "vertex access token fetched");
                *cache = Some(t.clone());
                Ok(t)
            }
            Err(e) => match cache
                .as_ref()
                .filter(|t| t.fresh_at(Instant::now(), STALE_OK))
            {
                Some(t) => {
                    tracing::warn!(error = %e, "access token refresh failed; using the cached token until it expires");
                    Ok(t.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(&self) -> Result<AccessToken, AuthError> {
        let started = Instant::now();
        let (endpoint, request, assertion) = match &self.source {
            Source::ServiceAccountFile(path) => {
                let key = ServiceAccountKey::read(path)?;
                let assertion = key.assertion(path)?;
                let body = format!(
                    "grant_type={}&assertion={}",
                    urlencoding::encode(JWT_BEARER_GRANT),
                    urlencoding::encode(&assertion)
                );
                let request = self
                    .http
                    .post(&key.token_uri)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
                (key.token_uri, request, Some(assertion))
            }
            Source::Metadata { host } => {
                let url = Source::metadata_url(host);
                let request = self.http.get(&url).header("Metadata-Flavor", "Google");
                (url, request, None)
            }
        };
        let scrub = |text: &str| match &assertion {
            Some(a) => text.replace(a.as_str(), "REDACTED"),
            None => text.to_owned(),
        };
        let failed = |reason: String| AuthError::Request {
            endpoint: endpoint.clone(),
            reason,
        };
        let response = request
            .send()
            .await
            .map_err(|e| failed(scrub(&describe_reqwest(&e))))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| failed(scrub(&describe_reqwest(&e))))?;
        if !status.is_success() {
            // Scrubbed before it is cut, so no part of the assertion survives.
            let text = scrub(String::from_utf8_lossy(&body).trim());
            let text = truncate(&text, 300);
            return Err(failed(if text.is_empty() {
                format!("http status {}", status.as_u16())
            } else {
                format!("http status {}: {text}", status.as_u16())
            }));
        }
        // A 200 body holds the token: nothing of it goes into an error.
        let bad = |reason: &str| AuthError::BadResponse {
            endpoint: endpoint.clone(),
            reason: reason.to_owned(),
        };
        let json: Value = serde_json::from_slice(&body).map_err(|_| bad("not JSON"))?;
        let value = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(
                "access_token has characters not allowed in an http header",
            ));
        }
        if let Some(kind) = json.get("token_type").and_then(Value::as_str) {
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(bad("token_type is not Bearer"));
            }
        }
        let expires_in = json
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .ok_or_else(|| bad("no expires_in"))?;
        Ok(AccessToken {
            value: value.into(),
            expires_at: started + Duration::from_secs(expires_in),
        })
    }
}

/// The fields of a service-account key file that the grant needs.
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: String,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    fn read(path: &Path) -> Result<ServiceAccountKey, AuthError> {
        let bad = |reason: String| AuthError::KeyFile {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        // Parsed as a plain value so that no parser message can quote the key.
        let json: Value =
            serde_json::from_slice(&bytes).map_err(|_| bad("not a JSON document".into()))?;
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(kind) = field("type") {
            if kind != "service_account" {
                return Err(bad(format!(
                    "type is {kind:?}, expected \"service_account\" (user credentials from \
                     gcloud are not supported; use a service-account key or the metadata server)"
                )));
            }
        }
        let need = |name: &str| {
            field(name).ok_or_else(|| bad(format!("field {name} is missing or empty")))
        };
        let key = ServiceAccountKey {
            client_email: need("client_email")?,
            private_key: need("private_key")?,
            private_key_id: field("private_key_id"),
            token_uri: need("token_uri")?,
        };
        if !(key.token_uri.starts_with("https://") || key.token_uri.starts_with("http://")) {
            return Err(bad("token_uri is not an http(s) URL".into()));
        }
        Ok(key)
    }

    /// The signed RS256 JWT for the grant: iss = client_email, scope, aud = token_uri.
    fn assertion(&self, path: &Path) -> Result<String, AuthError> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid.clone_from(&self.private_key_id);
        let bad = |reason: String| AuthError::KeyFile {
            path: path.to_owned(),
            reason,
        };
        // jsonwebtoken's errors name the kind of problem, never the key material.
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(self.private_key.as_bytes())
            .map_err(|e| bad(format!("private_key is not an RSA private key in PEM: {e}")))?;
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| {
            bad(format!(
                "cannot sign the token request with private_key: {e}"
            ))
        })
    }
}

/// A reqwest error's chain as one line (reqwest's own Display omits the cause).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("timed out after {HTTP_TIMEOUT:?}")
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_follows_google_library_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            Source::from_env(env(&[
                (ENV_CREDENTIALS, "/k.json"),
                (ENV_METADATA_HOST, "h")
            ])),
            Source::ServiceAccountFile("/k.json".into())
        );
        assert_eq!(
            Source::from_env(env(&[(ENV_CREDENTIALS, " ")])),
            Source::Metadata {
                host: METADATA_HOST.into()
            }
        );
        assert_eq!(
            Source::from_env(env(&[(ENV_METADATA_HOST, "127.0.0.1:9")])),
            Source::Metadata {
                host: "127.0.0.1:9".into()
            }
        );
        assert_eq!(
            Source::metadata_url(METADATA_HOST),
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
        );
    }

    #[test]
    fn shared_sources_are_one_per_source() {
        let a = TokenSource::shared(Source::Metadata { host: "a".into() });
        let b = TokenSource::shared(Source::Metadata { host: "a".into() });
        let c = TokenSource::shared(Source::Metadata { host: "c".into() });
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = AccessToken {
            value: "ya29.secret".into(),
            expires_at: Instant::now() + Duration::from_secs(100),
        };
        let d = format!("{t:?}");
        assert!(!d.contains("ya29"), "{d}");
        assert!(d.contains("11 chars"), "{d}");
        assert!(t.fresh_at(Instant::now(), Duration::from_secs(10)));
        assert!(!t.fresh_at(Instant::now(), REFRESH_MARGIN));
    }
}
