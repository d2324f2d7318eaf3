//! Vertex AI (`gemini.backend = "vertex"`): OAuth2 access tokens and the Vertex Live route.
//!
//! A fake Google on 127.0.0.1 plays both token issuers: an OAuth token endpoint that verifies
//! the service-account JWT grant (RS256 signature against the public half of an RSA key made
//! for this test run, `iss`, `scope`, `aud` = the key file's `token_uri`) and a metadata server
//! that insists on `Metadata-Flavor: Google`. Against it: a token from a key file, a token from
//! the metadata server named by `GCE_METADATA_HOST`, reuse and refresh before expiry, one
//! refresh for concurrent callers, no token in `Debug` output, errors or logs, clear errors for
//! missing or bad credentials, the simulator's Vertex route (bearer check, full model path),
//! and one real bridge call in Vertex mode through the simulator, then its fallback when the
//! token endpoint refuses.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use callbridge::call::event::{CallEnd, CallEvent};
use callbridge::config::{Backend, Secret};
use callbridge::gemini::auth::{AuthError, Source, TokenSource, METADATA_TOKEN_PATH, SCOPE};
use callbridge::gemini::connect::{
    close_code_and_reason, connect, ConnectError, Credential, VERTEX_PATH,
};
use callbridge::gemini::wire::{decompose, ModelEvent};
use callbridge::sim::caller::{CallEnding, Script};
use callbridge::sim::gemini::{Clip, GeminiSim, Reply, Scenario, DEFAULT_PATH};
use common::{harness, LogBuf};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_EMAIL: &str = "bridge@test-project.iam.gserviceaccount.com";
const KEY_ID: &str = "test-key-id-1";
const FULL_MODEL: &str =
    "projects/test-project/locations/us-central1/publishers/google/models/gemini-3.8-live";

// ---------------------------------------------------------------------------------------
// Test key, logs, key files
// ---------------------------------------------------------------------------------------

/// An RSA key pair made once per test run (PKCS#8 private PEM, SPKI public PEM). Nothing is
/// kept on disk beyond the temporary key files below; the key protects nothing.
fn test_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        let public = private.to_public_key();
        (
            private
                .to_pkcs8_pem(LineEnding::LF)
                .expect("pem")
                .to_string(),
            public.to_public_key_pem(LineEnding::LF).expect("pem"),
        )
    })
}

/// Every `callbridge` log line of this test binary, at debug and above.
fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("callbridge=debug"))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        buf
    })
}

fn assert_no_token_logged() {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    assert!(
        !text.contains("ya29."),
        "an access token was logged:\n{text}"
    );
}

/// A key file in the temp directory, removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn write(content: &Value) -> KeyFile {
        let path = std::env::temp_dir().join(format!(
            "callbridge-vertex-{}-{:016x}.json",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, serde_json::to_vec_pretty(content).unwrap()).unwrap();
        KeyFile(path)
    }

    /// A service-account key for `google`'s token endpoint, with the test key.
    fn service_account(google: &FakeGoogle) -> KeyFile {
        KeyFile::write(&service_account_json(&google.token_uri(), &test_key().0))
    }

    fn source(&self) -> Source {
        Source::ServiceAccountFile(self.0.clone())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn service_account_json(token_uri: &str, private_key: &str) -> Value {
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": KEY_ID,
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
}

// ---------------------------------------------------------------------------------------
// Fake Google: OAuth token endpoint + metadata server
// ---------------------------------------------------------------------------------------

/// How the fake answers token requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Tokens as Google issues them.
    Normal,
    /// 400 invalid_grant, echoing the assertion in the body (to test scrubbing).
    RefuseEchoingAssertion,
    /// 200 with an access_token but no expires_in.
    NoExpiry,
}

struct GoogleState {
    prefix: String,
    token_uri: Mutex<String>,
    expires_in: AtomicU64,
    delay_ms: AtomicU64,
    mode: Mutex<Mode>,
    token_requests: AtomicU64,
    metadata_requests: AtomicU64,
    issued: AtomicU64,
    claims: Mutex<Option<Value>>,
    kid: Mutex<Option<String>>,
    assertion: Mutex<Option<String>>,
}

struct FakeGoogle {
    addr: SocketAddr,
    state: Arc<GoogleState>,
}

impl FakeGoogle {
    /// Issues `ya29.{prefix}-{n}`, valid for an hour unless told otherwise.
    async fn spawn(prefix: &str) -> FakeGoogle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(GoogleState {
            prefix: prefix.to_owned(),
            token_uri: Mutex::new(format!("http://{addr}/token")),
            expires_in: AtomicU64::new(3599),
            delay_ms: AtomicU64::new(0),
            mode: Mutex::new(Mode::Normal),
            token_requests: AtomicU64::new(0),
            metadata_requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            claims: Mutex::new(None),
            kid: Mutex::new(None),
            assertion: Mutex::new(None),
        });
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .route(METADATA_TOKEN_PATH, get(metadata_endpoint))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeGoogle { addr, state }
    }

    fn token_uri(&self) -> String {
        self.state.token_uri.lock().unwrap().clone()
    }

    fn metadata_host(&self) -> String {
        self.addr.to_string()
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    fn metadata_requests(&self) -> u64 {
        self.state.metadata_requests.load(Ordering::SeqCst)
    }
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn issue(st: &GoogleState) -> Response {
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("ya29.{}-{n}", st.prefix);
    let body = if *st.mode.lock().unwrap() == Mode::NoExpiry {
        json!({"access_token": token, "token_type": "Bearer"})
    } else {
        json!({
            "access_token": token,
            "expires_in": st.expires_in.load(Ordering::SeqCst),
            "token_type": "Bearer",
        })
    };
    Json(body).into_response()
}

/// RFC 7523 JWT-bearer grant, checked as Google's endpoint does: signature, iss, aud, scope.
async fn token_endpoint(
    State(st): State<Arc<GoogleState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    st.token_requests.fetch_add(1, Ordering::SeqCst);
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    *st.assertion.lock().unwrap() = Some(assertion.clone());
    if *st.mode.lock().unwrap() == Mode::RefuseEchoingAssertion {
        return oauth_error("invalid_grant", &format!("Invalid JWT: {assertion}"));
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error("unsupported_grant_type", "Invalid grant_type.");
    }
    let token_uri = st.token_uri.lock().unwrap().clone();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(test_key().1.as_bytes()).unwrap();
    let data = match jsonwebtoken::decode::<Value>(&assertion, &key, &validation) {
        Ok(d) => d,
        Err(e) => return oauth_error("invalid_grant", &format!("Invalid JWT Signature: {e}")),
    };
    if data.claims["scope"] != SCOPE {
        return oauth_error("invalid_scope", "Invalid OAuth scope.");
    }
    *st.kid.lock().unwrap() = data.header.kid.clone();
    *st.claims.lock().unwrap() = Some(data.claims);
    issue(&st)
}

async fn metadata_endpoint(State(st): State<Arc<GoogleState>>, headers: HeaderMap) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing required header: Metadata-Flavor",
        )
            .into_response();
    }
    st.metadata_requests.fetch_add(1, Ordering::SeqCst);
    issue(&st)
}

// ---------------------------------------------------------------------------------------
// Helpers for the simulator
// ---------------------------------------------------------------------------------------

fn vertex(tokens: Arc<TokenSource>) -> Credential {
    Credential::Vertex {
        location: "us-central1".into(),
        tokens,
    }
}

fn audio_setup(model: &str) -> String {
    json!({"setup": {
        "model": model,
        "generationConfig": {"responseModalities": ["AUDIO"]},
    }})
    .to_string()
}

fn short_greeting() -> Scenario {
    Scenario {
        greeting: Some(Reply {
            clip: Some(Clip::from_samples(
                Clip::greeting().samples()[..36_000].to_vec(),
            )),
            text: "Hi! Thanks for calling.".into(),
        }),
        turns: Vec::new(),
        ..Scenario::default()
    }
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_service_account_key_file_gets_a_token_from_its_token_uri_with_a_valid_jwt_grant() {
    logs();
    let google = FakeGoogle::spawn("sa").await;
    let file = KeyFile::service_account(&google);
    let tokens = TokenSource::new(file.source());

    let token = tokens.token().await.expect("token");
    assert_eq!(token.secret(), "ya29.sa-1");
    let claims = google.state.claims.lock().unwrap().clone().expect("claims");
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], SCOPE);
    assert_eq!(claims["aud"], google.token_uri());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert_eq!(google.state.kid.lock().unwrap().as_deref(), Some(KEY_ID));

    // Cached: a token with an hour left is used as it is.
    assert_eq!(tokens.token().await.unwrap().secret(), "ya29.sa-1");
    assert_eq!((google.token_requests(), tokens.fetches()), (1, 1));
    assert_no_token_logged();
}

#[tokio::test]
async fn the_metadata_server_named_by_gce_metadata_host_gets_a_token_with_the_metadata_flavor_header(
) {
    logs();
    let google = FakeGoogle::spawn("md").await;
    let host = google.metadata_host();
    // No key file: the metadata server, at the host the env names.
    let source = Source::from_env(|k| (k == "GCE_METADATA_HOST").then(|| host.clone()));
    assert_eq!(source, Source::Metadata { host: host.clone() });
    let tokens = TokenSource::new(source);
    assert_eq!(tokens.token().await.unwrap().secret(), "ya29.md-1");
    assert_eq!(google.metadata_requests(), 1);
    assert_eq!(google.token_requests(), 0);

    // The fake is as strict as the real one: without the header nothing is issued.
    let refused = reqwest::get(Source::metadata_url(&host)).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(google.metadata_requests(), 1);
}

#[tokio::test]
async fn a_token_close_to_expiry_is_fetched_again_and_a_fresh_one_is_reused() {
    let google = FakeGoogle::spawn("exp").await;
    let file = KeyFile::service_account(&google);
    let tokens = TokenSource::new(file.source());

    // 60 s left is inside the 5-minute refresh margin: every use fetches a new token.
    google.set_expires_in(60);
    let first = tokens.token().await.unwrap();
    let second = tokens.token().await.unwrap();
    assert_eq!(
        (first.secret(), second.secret()),
        ("ya29.exp-1", "ya29.exp-2")
    );

    // An hour: fetched once (the 60 s one is refreshed), then reused.
    google.set_expires_in(3600);
    let third = tokens.token().await.unwrap();
    let fourth = tokens.token().await.unwrap();
    assert_eq!(
        (third.secret(), fourth.secret()),
        ("ya29.exp-3", "ya29.exp-3")
    );
    assert_eq!((google.token_requests(), tokens.fetches()), (3, 3));
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let google = FakeGoogle::spawn("conc").await;
    google.state.delay_ms.store(300, Ordering::SeqCst);
    let tokens = Arc::new(TokenSource::new(Source::Metadata {
        host: google.metadata_host(),
    }));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let t = tokens.clone();
            tokio::spawn(async move { t.token().await.map(|t| t.secret().to_owned()) })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), "ya29.conc-1");
    }
    assert_eq!(google.metadata_requests(), 1);
}

#[tokio::test]
async fn tokens_never_appear_in_debug_output_error_messages_or_logs() {
    logs();
    let google = FakeGoogle::spawn("dbg").await;
    let file = KeyFile::service_account(&google);
    let tokens = Arc::new(TokenSource::new(file.source()));
    let token = tokens.token().await.unwrap();
    let secret = token.secret().to_owned();
    let credential = vertex(tokens.clone());
    for shown in [
        format!("{token:?}"),
        format!("{tokens:?}"),
        format!("{credential:?}"),
    ] {
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    // The simulator refuses this token: the 401 error names the status, not the token.
    let sim = GeminiSim::builder()
        .bearer_tokens(vec!["some-other-token".into()])
        .spawn()
        .await
        .unwrap();
    let err = connect(&sim.vertex_url(), &credential, TIMEOUT)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ConnectError::HttpStatus { status: 401, .. }),
        "{err:?}"
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(shown.contains("UNAUTHENTICATED"), "{shown}");
        assert!(!shown.contains(&secret), "{shown}");
    }

    // A token endpoint that echoes the signed assertion back: scrubbed from the error.
    google.set_mode(Mode::RefuseEchoingAssertion);
    let fresh = TokenSource::new(file.source());
    let err = fresh.token().await.expect_err("refused");
    let assertion = google.state.assertion.lock().unwrap().clone().unwrap();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("invalid_grant"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");
    let signature = assertion.rsplit('.').next().unwrap();
    assert!(!shown.contains(&assertion[..40]), "{shown}");
    assert!(!shown.contains(&signature[..20]), "{shown}");

    // A 200 answer that is not usable: the error never quotes the body (it holds the token).
    google.set_mode(Mode::NoExpiry);
    let err = TokenSource::new(file.source())
        .token()
        .await
        .expect_err("no expiry");
    assert!(matches!(err, AuthError::BadResponse { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("no expires_in"), "{shown}");
    assert!(!shown.contains("ya29."), "{shown}");
    assert_no_token_logged();
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_invalid_credential_fails_the_connection_with_a_clear_error() {
    logs();
    let google = FakeGoogle::spawn("bad").await;
    let sim = GeminiSim::builder().spawn().await.unwrap();
    let try_connect = |source: Source| {
        let url = sim.vertex_url();
        async move {
            let credential = vertex(Arc::new(TokenSource::new(source)));
            connect(&url, &credential, TIMEOUT)
                .await
                .expect_err("no token, no connection")
                .to_string()
        }
    };

    let missing = std::env::temp_dir().join("callbridge-vertex-no-such-key.json");
    let err = try_connect(Source::ServiceAccountFile(missing.clone())).await;
    assert!(err.starts_with("no Vertex AI access token: "), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{err}");
    assert!(err.contains("cannot read it"), "{err}");

    let user = KeyFile::write(&json!({"type": "authorized_user", "client_id": "x",
        "client_secret": "user-secret", "refresh_token": "1//user-refresh"}));
    let err = try_connect(user.source()).await;
    assert!(err.contains("expected \"service_account\""), "{err}");
    assert!(
        !err.contains("user-secret") && !err.contains("user-refresh"),
        "{err}"
    );

    let no_email = KeyFile::write(&json!({"type": "service_account",
        "private_key": test_key().0, "token_uri": google.token_uri()}));
    let err = try_connect(no_email.source()).await;
    assert!(err.contains("field client_email is missing"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    let not_pem = KeyFile::write(&service_account_json(
        &google.token_uri(),
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    ));
    let err = try_connect(not_pem.source()).await;
    assert!(
        err.contains("private_key is not an RSA private key"),
        "{err}"
    );
    assert!(!err.contains("bm90IGEga2V5"), "{err}");

    // A well-formed key the token endpoint does not know: its refusal is passed on.
    let other_key = {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        k.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    };
    let unknown = KeyFile::write(&service_account_json(&google.token_uri(), &other_key));
    let err = try_connect(unknown.source()).await;
    assert!(err.contains("http status 400"), "{err}");
    assert!(err.contains("invalid_grant"), "{err}");

    // No metadata server (nothing listens on that port).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = try_connect(Source::Metadata {
        host: closed.clone(),
    })
    .await;
    assert!(err.contains(&closed), "{err}");
    assert!(err.contains("could not connect"), "{err}");

    // None of these reached the model.
    assert!(sim.record().connections.is_empty());
    sim.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The Vertex route, through the simulator
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_vertex_connection_sends_the_bearer_token_and_gets_setup_complete_for_the_full_model_path(
) {
    logs();
    let google = FakeGoogle::spawn("sim").await;
    let sim = GeminiSim::builder()
        .keys(vec!["an-api-key".into()])
        .bearer_tokens(vec!["ya29.sim-1".into()])
        .spawn()
        .await
        .unwrap();
    assert!(sim.vertex_url().ends_with(VERTEX_PATH));
    let tokens = Arc::new(TokenSource::new(Source::Metadata {
        host: google.metadata_host(),
    }));
    let mut ws = connect(&sim.vertex_url(), &vertex(tokens.clone()), TIMEOUT)
        .await
        .expect("connects");
    ws.send(Message::text(audio_setup(FULL_MODEL)))
        .await
        .unwrap();
    let frame = ws.next().await.expect("a frame").expect("no error");
    let Message::Binary(payload) = frame else {
        panic!("expected a binary frame, got {frame:?}");
    };
    assert_eq!(decompose(&payload).unwrap(), [ModelEvent::SetupComplete]);
    ws.close(None).await.unwrap();

    // The v1beta1 method works the same way; the cached token is reused.
    let v1beta1 = sim
        .vertex_url()
        .replace("aiplatform.v1.", "aiplatform.v1beta1.");
    let mut ws = connect(&v1beta1, &vertex(tokens.clone()), TIMEOUT)
        .await
        .expect("connects");
    ws.send(Message::text(audio_setup(FULL_MODEL)))
        .await
        .unwrap();
    let frame = ws.next().await.expect("a frame").expect("no error");
    assert!(matches!(frame, Message::Binary(_)), "{frame:?}");
    ws.close(None).await.unwrap();
    assert_eq!(google.metadata_requests(), 1);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = sim.record();
    let versions: Vec<&str> = rec
        .connections
        .iter()
        .map(|c| c.api_version.as_str())
        .collect();
    assert_eq!(versions, ["v1", "v1beta1"]);
    for conn in &rec.connections {
        assert_eq!(conn.credential_source, "bearer-header");
        assert_eq!(
            conn.setup.as_ref().map(|s| s["model"].clone()),
            Some(json!(FULL_MODEL))
        );
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_vertex_route_closes_a_setup_without_a_full_model_path_with_1007() {
    let sim = GeminiSim::builder().spawn().await.unwrap();
    let google = FakeGoogle::spawn("path").await;
    let tokens = Arc::new(TokenSource::new(Source::Metadata {
        host: google.metadata_host(),
    }));
    for model in [
        "models/gemini-3.8-live",
        "gemini-3.8-live",
        "projects/test-project/locations/us-central1/models/gemini-3.8-live",
    ] {
        let mut ws = connect(&sim.vertex_url(), &vertex(tokens.clone()), TIMEOUT)
            .await
            .expect("connects");
        ws.send(Message::text(audio_setup(model))).await.unwrap();
        let frame = ws.next().await.expect("close frame").expect("no error");
        let Message::Close(close) = frame else {
            panic!("{model}: expected close, got {frame:?}");
        };
        assert_eq!(
            close_code_and_reason(close.as_ref()),
            (1007, "Request contains an invalid argument.".to_owned()),
            "{model}"
        );
    }
    // The model id of a full path is looked up like any id: an unknown one is 1008.
    let mut ws = connect(&sim.vertex_url(), &vertex(tokens), TIMEOUT)
        .await
        .expect("connects");
    ws.send(Message::text(audio_setup(
        "projects/p/locations/us-central1/publishers/google/models/gemini-9-nonexistent",
    )))
    .await
    .unwrap();
    let frame = ws.next().await.expect("close frame").expect("no error");
    let Message::Close(close) = frame else {
        panic!("expected close, got {frame:?}");
    };
    assert_eq!(close_code_and_reason(close.as_ref()).0, 1008);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_vertex_route_refuses_an_upgrade_without_an_accepted_bearer_token_with_401() {
    let sim = GeminiSim::builder()
        .keys(vec!["an-api-key".into()])
        .spawn()
        .await
        .unwrap();
    // An API key is not a Vertex credential, even one the simulator accepts elsewhere.
    let err = connect(
        &sim.vertex_url(),
        &Credential::ApiKey("an-api-key".into()),
        TIMEOUT,
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(err, ConnectError::HttpStatus { status: 401, .. }),
        "{err:?}"
    );
    // And a bearer token is no key on the Gemini API route: accepted, then closed 1007.
    let google = FakeGoogle::spawn("gem").await;
    let tokens = Arc::new(TokenSource::new(Source::Metadata {
        host: google.metadata_host(),
    }));
    let mut ws = connect(&sim.url(), &vertex(tokens), TIMEOUT)
        .await
        .expect("upgrade");
    let frame = ws.next().await.expect("close frame").expect("no error");
    let Message::Close(close) = frame else {
        panic!("expected close, got {frame:?}");
    };
    assert_eq!(close_code_and_reason(close.as_ref()).0, 1007);
    let rec = sim.record();
    assert_eq!(rec.rejected_upgrades.len(), 1);
    assert_eq!(rec.rejected_upgrades[0].status, 401);
    assert_eq!(rec.rejected_upgrades[0].path, VERTEX_PATH);
    sim.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// A bridge call in Vertex mode
// ---------------------------------------------------------------------------------------

/// The only test here that sets the process environment (the bridge reads
/// `GOOGLE_APPLICATION_CREDENTIALS` when its state is built); the others pass sources directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertex_bridge_call_gets_setup_complete_and_a_refused_token_gives_the_caller_the_fallback(
) {
    logs();
    let google = FakeGoogle::spawn("e2e").await;
    // Under STALE_OK (30 s): every call fetches, and a failed fetch has nothing to fall back on.
    google.set_expires_in(20);
    let file = KeyFile::service_account(&google);
    std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &file.0);
    let mut h = harness(
        |s| {
            s.scenario(short_greeting())
                .bearer_tokens((1..=4).map(|n| format!("ya29.e2e-{n}")).collect())
        },
        |c| {
            c.gemini.backend = Backend::Vertex;
            c.gemini.project = "test-project".into();
            c.gemini.location = "us-central1".into();
            // An operator URL (the simulator's Vertex route) is kept; no API key at all.
            c.gemini.url = c.gemini.url.replace(DEFAULT_PATH, VERTEX_PATH);
            c.gemini.api_key = Secret::default();
        },
    )
    .await;

    let report = h
        .caller()
        .script(Script::new().wait_for_agent(500, 8_000))
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert!(
        report.agent_audio_ms() > 500,
        "the caller heard the greeting: {}",
        report.timeline_text()
    );
    let _ = h.notes_until_end(Duration::from_secs(5)).await;
    let rec = h.sim.record();
    assert_eq!(rec.connections.len(), 1);
    let conn = &rec.connections[0];
    assert_eq!(conn.credential_source, "bearer-header");
    assert_eq!(conn.api_version, "v1");
    assert_eq!(
        conn.setup.as_ref().map(|s| s["model"].clone()),
        Some(json!(FULL_MODEL))
    );

    // The token endpoint now refuses: the call's model connection fails, the caller gets
    // the fallback, and the reason says why.
    google.set_mode(Mode::RefuseEchoingAssertion);
    let report = h
        .caller()
        .script(Script::new().wait_for_agent(500, 8_000))
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert_eq!(
        report.ended_by,
        Some(CallEnding::BridgeClosed),
        "{}",
        report.timeline_text()
    );
    assert!(report.fallback_twiml.is_some());
    assert_eq!(report.agent_audio_ms(), 0);
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let reason = notes
        .iter()
        .find_map(|n| match &n.event {
            CallEvent::Ended(CallEnd::ModelUnavailable(why)) => Some(why.clone()),
            _ => None,
        })
        .expect("ended: model unavailable");
    assert!(reason.contains("no Vertex AI access token"), "{reason}");
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert_eq!(h.sim.record().connections.len(), 1, "no model upgrade");
    assert_eq!(google.token_requests(), 2);
    assert_no_token_logged();
}
