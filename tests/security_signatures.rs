//! Secure by default: `X-Twilio-Signature` on the voice webhook and the media WebSocket
//! upgrade (telephony spec §2.3, §1.2), and the webhook's single-use stream token that a new
//! media stream must present before any model session is opened.
//!
//! Vectors: tests/golden/twilio-signature-vectors.json, a copy of
//! shared/specs/twilio-signature-vectors.json (made with Twilio's own library).

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use callbridge::config::{Config, Secret};
use callbridge::server::{app, AppState};
use callbridge::sim::caller::{Script, SimCaller, SimCallerBuilder, SimCallerError};
use callbridge::twilio::signature::{
    body_sha256_hex, compute_signature, compute_signature_with, Algorithm, Rejection, SharedKey,
    SignedRequest, Verifier,
};
use callbridge::twilio::webhook::parse_form;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------------------

use common::LogBuf;

/// Installs (once) a subscriber capturing `callbridge` events at debug and above.
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

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

fn log_lines(needles: &[&str]) -> Vec<String> {
    log_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The vectors
// ---------------------------------------------------------------------------------------

fn vectors() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/twilio-signature-vectors.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["vectors"].as_array().unwrap().clone()
}

fn params_of(v: &Value) -> Vec<(String, String)> {
    if let Some(multi) = v.get("params_multi") {
        return multi
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
    }
    v["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn algorithm_of(v: &Value) -> Algorithm {
    Algorithm::parse(v["algorithm"].as_str().unwrap()).unwrap()
}

const SETTINGS: &str = "X-Twilio-Webhooks-Signature-Settings";

/// The verifier a vector should pass: its key as the auth token, or as the configured shared
/// key (with an unrelated auth token) for SharedKey vectors.
fn verifier_for(v: &Value) -> (Verifier, Option<String>) {
    let key = v["auth_token"].as_str().unwrap();
    match v["headers"].get(SETTINGS).and_then(Value::as_str) {
        Some(settings) => {
            let sid = settings
                .split(',')
                .find_map(|p| p.strip_prefix("key="))
                .unwrap()
                .to_string();
            (
                Verifier::new(
                    Secret::new("an-unrelated-auth-token"),
                    Some(SharedKey {
                        sid,
                        secret: Secret::new(key),
                    }),
                ),
                Some(settings.to_string()),
            )
        }
        None => (Verifier::new(Secret::new(key), None), None),
    }
}

#[test]
fn every_vector_computes_and_validates() {
    let vs = vectors();
    assert_eq!(vs.len(), 9);
    for v in &vs {
        let name = v["name"].as_str().unwrap();
        let key = v["auth_token"].as_str().unwrap();
        let url = v["url"].as_str().unwrap();
        let expected = v["expected_signature"].as_str().unwrap();
        let alg = algorithm_of(v);
        let params = params_of(v);
        // The documented string-to-sign, and our construction of it, give the signature.
        assert_eq!(
            compute_signature_with(alg, key, v["string_to_sign"].as_str().unwrap(), &[]),
            expected,
            "{name}: string_to_sign"
        );
        assert_eq!(
            compute_signature_with(alg, key, url, &params),
            expected,
            "{name}: computed"
        );
        // The wire body decodes to the same params (decoded values are what is signed).
        let form_body = v["form_body"].as_str().unwrap_or("");
        if v["content_type"] == "application/x-www-form-urlencoded" {
            let form = parse_form(form_body).unwrap();
            assert_eq!(
                compute_signature_with(alg, key, url, &form),
                expected,
                "{name}: from the wire body"
            );
        }
        let body = v["raw_body"].as_str().unwrap_or("").as_bytes();
        if let Some(h) = v["body_sha256_hex"].as_str() {
            assert_eq!(body_sha256_hex(body), h, "{name}: body hash");
        }
        let (verifier, settings) = verifier_for(v);
        let against = v["validate_against_url"].as_str().unwrap_or(url);
        for check_url in [url, against] {
            let req = SignedRequest {
                url: check_url,
                params: &params,
                signature: Some(expected),
                settings: settings.as_deref(),
                body,
            };
            assert_eq!(
                verifier.verify(&req),
                Ok(()),
                "{name}: validate {check_url}"
            );
        }
        if alg == Algorithm::HmacSha1 {
            assert!(
                compute_signature(key, url, &params) == expected,
                "{name}: default algorithm is HMAC-SHA1"
            );
        }
    }
}

#[test]
fn tampering_and_missing_pieces_are_refused_with_a_reason() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let url = v["url"].as_str().unwrap();
        let expected = v["expected_signature"].as_str().unwrap();
        let params = params_of(&v);
        let body = v["raw_body"].as_str().unwrap_or("").as_bytes();
        let (verifier, settings) = verifier_for(&v);
        let base = SignedRequest {
            url,
            params: &params,
            signature: Some(expected),
            settings: settings.as_deref(),
            body,
        };
        // Tampered URL.
        let other_url = url.replacen("://", "://evil.", 1);
        assert!(
            matches!(
                verifier.verify(&SignedRequest {
                    url: &other_url,
                    ..base
                }),
                Err(Rejection::Mismatch { .. })
            ),
            "{name}: tampered url"
        );
        // Tampered, added or removed parameter.
        let mut changed = params.clone();
        match changed.first_mut() {
            Some(p) => p.1.push('9'),
            None => changed.push(("Injected".into(), "1".into())),
        }
        assert!(
            verifier
                .verify(&SignedRequest {
                    params: &changed,
                    ..base
                })
                .is_err(),
            "{name}: tampered parameter"
        );
        if !params.is_empty() {
            assert!(
                verifier
                    .verify(&SignedRequest {
                        params: &params[1..],
                        ..base
                    })
                    .is_err(),
                "{name}: dropped parameter"
            );
        }
        // Missing header.
        assert_eq!(
            verifier.verify(&SignedRequest {
                signature: None,
                ..base
            }),
            Err(Rejection::MissingSignature),
            "{name}: missing header"
        );
        // Wrong token (for SharedKey vectors: right key, wrong secret).
        let wrong = match &settings {
            Some(_) => {
                verifier_for(&json!({
                    "auth_token": "wrong-secret",
                    "headers": {SETTINGS: settings.clone().unwrap()}
                }))
                .0
            }
            None => Verifier::new(Secret::new("wrong-token"), None),
        };
        assert!(wrong.verify(&base).is_err(), "{name}: wrong token");
        // A single flipped character of the signature.
        let mut flipped = expected.to_string();
        let c = if flipped.starts_with('A') { "B" } else { "A" };
        flipped.replace_range(0..1, c);
        assert!(
            verifier
                .verify(&SignedRequest {
                    signature: Some(&flipped),
                    ..base
                })
                .is_err(),
            "{name}: flipped signature"
        );
    }
}

#[test]
fn json_body_hash_is_checked_and_shared_key_needs_its_header() {
    let vs = vectors();
    let json_v = vs
        .iter()
        .find(|v| v["name"] == "json_body_bodySHA256_upstream")
        .unwrap();
    let (verifier, _) = verifier_for(json_v);
    let req = SignedRequest {
        url: json_v["url"].as_str().unwrap(),
        params: &[],
        signature: json_v["expected_signature"].as_str(),
        settings: None,
        body: br#"{"property": "value", "boolean": false}"#,
    };
    assert_eq!(verifier.verify(&req), Err(Rejection::BodyHashMismatch));

    let sk = vs
        .iter()
        .find(|v| v["name"] == "shared_key_hmac_sha256")
        .unwrap();
    let (verifier, settings) = verifier_for(sk);
    let params = params_of(sk);
    let base = SignedRequest {
        url: sk["url"].as_str().unwrap(),
        params: &params,
        signature: sk["expected_signature"].as_str(),
        settings: settings.as_deref(),
        body: b"",
    };
    assert_eq!(verifier.verify(&base), Ok(()));
    // Without the settings header the shared key is not used.
    assert!(verifier
        .verify(&SignedRequest {
            settings: None,
            ..base
        })
        .is_err());
    // A header naming a key we do not have.
    assert_eq!(
        verifier.verify(&SignedRequest {
            settings: Some("key=KSnotours,algorithm=HMAC_SHA256"),
            ..base
        }),
        Err(Rejection::UnknownSharedKey("KSnotours".into()))
    );
    assert!(matches!(
        verifier.verify(&SignedRequest {
            settings: Some("algorithm=HMAC_SHA256"),
            ..base
        }),
        Err(Rejection::BadSettings(_))
    ));
    // The same bytes as an auth-token (SHA-1) signature: the header's algorithm counts.
    assert!(verifier
        .verify(&SignedRequest {
            settings: Some(
                &settings
                    .clone()
                    .unwrap()
                    .replace("HMAC_SHA256", "HMAC_SHA1")
            ),
            ..base
        })
        .is_err());
}

// ---------------------------------------------------------------------------------------
// Through the router
// ---------------------------------------------------------------------------------------

const TOKEN: &str = "router-test-auth-token";
const PUBLIC: &str = "https://bridge.example.com";
const FORM: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01\
&CallSid=CAfedcba9876543210fedcba9876543210&CallStatus=ringing&Called=%2B15005550006\
&Caller=%2B14155550123&Direction=inbound&From=%2B14155550123&To=%2B15005550006";

fn state(tweak: impl FnOnce(&mut Config)) -> Arc<AppState> {
    let mut c = Config::default();
    c.server.public_url = PUBLIC.into();
    c.twilio.auth_token = Secret::new(TOKEN);
    tweak(&mut c);
    c.validate().unwrap();
    AppState::new(c, None)
}

fn voice(path_and_query: &str, body: &str, sig: Option<&str>) -> Request<Body> {
    let mut b = Request::post(path_and_query)
        .header("host", "10.0.0.7:8080")
        .header("x-forwarded-proto", "http")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(s) = sig {
        b = b.header("X-Twilio-Signature", s);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn form_sig(key: &str, url: &str, body: &str) -> String {
    compute_signature(key, url, &parse_form(body).unwrap())
}

async fn body_text(resp: axum::response::Response) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn webhook_refuses_unsigned_and_badly_signed_requests() {
    logs();
    let st = state(|_| {});
    let url = format!("{PUBLIC}/twilio/voice");
    let cases = [
        ("missing", None),
        ("garbage", Some("bm90LWEtc2lnbmF0dXJl".to_string())),
        ("wrong token", Some(form_sig("wrong", &url, FORM))),
        // Signed over the URL the proxy shows us rather than the public one.
        (
            "internal url",
            Some(form_sig(TOKEN, "http://10.0.0.7:8080/twilio/voice", FORM)),
        ),
        (
            "other body",
            Some(form_sig(TOKEN, &url, &FORM.replace("ringing", "queued"))),
        ),
    ];
    for (what, sig) in cases {
        let resp = app(st.clone())
            .oneshot(voice("/twilio/voice", FORM, sig.as_deref()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(!body_text(resp).await.contains("Connect"), "{what}");
    }
    assert_eq!(
        st.stream_tokens.outstanding(),
        0,
        "no tokens for refused requests"
    );
    let refused = log_lines(&["voice webhook refused"]);
    assert!(
        refused.iter().any(|l| l.contains("no X-Twilio-Signature")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("does not match https://bridge.example.com/twilio/voice")),
        "{refused:?}"
    );
    assert!(!log_text().contains(TOKEN), "the token is never logged");
}

#[tokio::test]
async fn webhook_accepts_signed_requests_and_issues_a_stream_token() {
    let st = state(|_| {});
    let url = format!("{PUBLIC}/twilio/voice");
    let resp = app(st.clone())
        .oneshot(voice(
            "/twilio/voice",
            FORM,
            Some(&form_sig(TOKEN, &url, FORM)),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let twiml = body_text(resp).await;
    assert!(
        twiml.contains(r#"<Stream url="wss://bridge.example.com/twilio/media">"#),
        "{twiml}"
    );
    let token = twiml
        .split(r#"<Parameter name="token" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("stream token parameter in {twiml}"));
    assert_eq!(token.len(), 64);
    assert_eq!(st.stream_tokens.outstanding(), 1);

    // Query strings stay in the signed URL; the explicit default port is accepted too.
    let with_query = format!("{PUBLIC}:443/twilio/voice?tenant=acme&x=%2F");
    let resp = app(st.clone())
        .oneshot(voice(
            "/twilio/voice?tenant=acme&x=%2F",
            FORM,
            Some(&form_sig(TOKEN, &with_query, FORM)),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // …but the query string is signed.
    let resp = app(st.clone())
        .oneshot(voice(
            "/twilio/voice?tenant=evil",
            FORM,
            Some(&form_sig(
                TOKEN,
                &format!("{PUBLIC}/twilio/voice?tenant=acme"),
                FORM,
            )),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn webhook_accepts_shared_key_and_json_bodies() {
    let st = state(|c| {
        c.twilio.shared_key_sid = "KS0123456789abcdef0123456789abcdef".into();
        c.twilio.shared_key_secret = Secret::new("shared-secret");
    });
    let url = format!("{PUBLIC}/twilio/voice");
    let sig = compute_signature_with(
        Algorithm::HmacSha256,
        "shared-secret",
        &url,
        &parse_form(FORM).unwrap(),
    );
    let signed = |settings: &str| {
        let mut r = voice("/twilio/voice", FORM, Some(&sig));
        r.headers_mut().insert(
            "X-Twilio-Webhooks-Signature-Settings",
            settings.parse().unwrap(),
        );
        r
    };
    let ok = app(st.clone())
        .oneshot(signed(
            "key=KS0123456789abcdef0123456789abcdef,algorithm=HMAC_SHA256",
        ))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let other = app(st.clone())
        .oneshot(signed(
            "key=KSffffffffffffffffffffffffffffffff,algorithm=HMAC_SHA256",
        ))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);

    // JSON: signed over the URL with bodySHA256, no params; the body must hash to it.
    let body = r#"{"CallSid":"CA1","From":"+14155550123"}"#;
    let query = format!("bodySHA256={}", body_sha256_hex(body.as_bytes()));
    let sig = compute_signature(TOKEN, &format!("{url}?{query}"), &[]);
    let json_req = |b: &str| {
        Request::post(format!("/twilio/voice?{query}"))
            .header("content-type", "application/json")
            .header("X-Twilio-Signature", &sig)
            .body(Body::from(b.to_string()))
            .unwrap()
    };
    let resp = app(st.clone()).oneshot(json_req(body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_text(resp)
        .await
        .contains(r#"name="from" value="+14155550123""#));
    let resp = app(st.clone())
        .oneshot(json_req(&body.replace("CA1", "CA2")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "tampered JSON body");
}

#[tokio::test]
async fn without_a_key_every_request_is_refused() {
    logs();
    let st = state(|c| c.twilio.auth_token = Secret::default());
    let resp = app(st.clone())
        .oneshot(voice("/twilio/voice", FORM, Some(&form_sig("", "x", FORM))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(
        !log_lines(&["validate_signatures is true but TWILIO_AUTH_TOKEN is not set"]).is_empty()
    );
    assert!(!log_lines(&["voice webhook refused", "neither TWILIO_AUTH_TOKEN"]).is_empty());
}

fn media_request(sig: Option<&str>) -> Request<Body> {
    let mut b = Request::get("/twilio/media")
        .header("host", "10.0.0.7:8080")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(s) = sig {
        b = b.header("X-Twilio-Signature", s);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn media_upgrade_is_refused_before_upgrading_when_unsigned() {
    logs();
    let st = state(|_| {});
    let media = "wss://bridge.example.com/twilio/media";
    for (what, sig) in [
        ("missing", None),
        ("wrong token", Some(compute_signature("wrong", media, &[]))),
        // A proxy shows us https/http: Twilio signed the wss:// URL.
        (
            "https scheme",
            Some(compute_signature(
                TOKEN,
                "https://bridge.example.com/twilio/media",
                &[],
            )),
        ),
        (
            "internal host",
            Some(compute_signature(
                TOKEN,
                "wss://10.0.0.7:8080/twilio/media",
                &[],
            )),
        ),
    ] {
        let resp = app(st.clone())
            .oneshot(media_request(sig.as_deref()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
    }
    assert!(!log_lines(&["media stream refused before the upgrade"]).is_empty());
    // Correctly signed (also with :443) gets past the check; without a real connection the
    // upgrade itself cannot happen here, which is not a 403.
    for sig in [
        compute_signature(TOKEN, media, &[]),
        compute_signature(TOKEN, "wss://bridge.example.com:443/twilio/media", &[]),
    ] {
        let resp = app(st.clone())
            .oneshot(media_request(Some(&sig)))
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn validation_off_needs_the_explicit_setting_and_warns() {
    logs();
    assert!(
        Config::default().twilio.validate_signatures,
        "on by default"
    );
    let st = state(|c| {
        c.twilio.validate_signatures = false;
        c.twilio.auth_token = Secret::default();
    });
    assert!(
        !log_lines(&["twilio.validate_signatures is false"]).is_empty(),
        "{}",
        log_text()
    );
    let resp = app(st.clone())
        .oneshot(voice("/twilio/voice", FORM, None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let twiml = body_text(resp).await;
    assert!(!twiml.contains(r#"name="token""#), "{twiml}");
    let resp = app(st).oneshot(media_request(None)).await.unwrap();
    assert_ne!(resp.status(), StatusCode::FORBIDDEN);
}

#[test]
fn config_keys_and_environment() {
    let c = Config::default();
    assert_eq!(c.twilio.stream_token_ttl_secs, 60);
    assert!(c.twilio.shared_key_sid.is_empty());
    let mut c = Config::default();
    c.twilio.stream_token_ttl_secs = 0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("twilio.stream_token_ttl_secs"));
    let env = |k: &str| match k {
        "TWILIO_SHARED_KEY_SID" => Some("KS0123456789abcdef0123456789abcdef".to_string()),
        "TWILIO_SHARED_KEY_SECRET" => Some("shh-secret".to_string()),
        _ => None,
    };
    let c = Config::load(None, &env).unwrap();
    assert_eq!(
        c.twilio.shared_key_sid,
        "KS0123456789abcdef0123456789abcdef"
    );
    assert_eq!(c.twilio.shared_key_secret.expose(), "shh-secret");
    assert!(!format!("{c:?}").contains("shh-secret"));
    // A key SID without its secret is a configuration error naming the key.
    let only_sid = |k: &str| (k == "TWILIO_SHARED_KEY_SID").then(|| "KS1".to_string());
    let err = Config::load(None, &only_sid).unwrap_err().to_string();
    assert!(err.contains("twilio.shared_key_sid"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Real sockets: the bridge on loopback with the Gemini simulator
// ---------------------------------------------------------------------------------------

const PUBLIC_MEDIA: &str = "wss://bridge.test.invalid/twilio/media";

fn short_call() -> Script {
    Script::new()
        .wait_for_agent(500, 10_000)
        .silence(200)
        .hang_up()
}

/// A simulated caller that skips the webhook and opens the media stream directly, signing
/// the public wss:// URL with the right auth token (so it has no stream token).
fn direct_caller(h: &Harness) -> SimCallerBuilder {
    SimCaller::builder()
        .stream_url(h.media_url())
        .signed_stream_url(PUBLIC_MEDIA)
        .account_sid(ACCOUNT_SID)
        .auth_token(AUTH_TOKEN)
        .max_duration(Duration::from_secs(20))
}

/// A media upgrade request signed like Twilio's.
fn signed_media_request(h: &Harness) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = h.media_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "X-Twilio-Signature",
        compute_signature(AUTH_TOKEN, PUBLIC_MEDIA, &[])
            .parse()
            .unwrap(),
    );
    req
}

fn sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

#[tokio::test]
async fn signed_simulated_caller_gets_through_and_presents_its_token() {
    let h = harness(|s| s, |_| {}).await;
    let report = h
        .caller()
        .script(short_call())
        .spawn()
        .join()
        .await
        .expect("signed call runs");
    assert!(report.agent_audio_ms() > 0, "the agent was heard");
    assert_eq!(report.custom_parameters["token"].len(), 64);
    assert_eq!(report.signed_stream_url, PUBLIC_MEDIA);
    assert_eq!(h.sim.record().connections.len(), 1);
    assert_eq!(
        h.state.stream_tokens.outstanding(),
        0,
        "the token was used up"
    );
}

#[tokio::test]
async fn caller_with_the_wrong_auth_token_is_refused_at_the_webhook() {
    let h = harness(|s| s, |_| {}).await;
    let err = h
        .caller()
        .auth_token("not-the-token")
        .script(short_call())
        .spawn()
        .join()
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SimCallerError::WebhookStatus { status: 403, .. }),
        "{err}"
    );
    assert!(h.sim.record().connections.is_empty());
}

#[tokio::test]
async fn media_upgrade_over_sockets_needs_the_signature() {
    let h = harness(|s| s, |_| {}).await;
    // Unsigned and wrongly signed upgrades are refused with 403.
    for sig in [None, Some(compute_signature("wrong", PUBLIC_MEDIA, &[]))] {
        let mut req = h.media_url().into_client_request().unwrap();
        if let Some(s) = sig {
            req.headers_mut()
                .insert("X-Twilio-Signature", s.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403)
            }
            other => panic!("expected 403, got {:?}", other.map(|_| ())),
        }
    }
    // The simulated caller, skipping the webhook, with the wrong token: handshake 403.
    let err = direct_caller(&h)
        .auth_token("not-the-token")
        .script(short_call())
        .spawn()
        .join()
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SimCallerError::Handshake { status: 403, .. }),
        "{err}"
    );
    assert!(h.sim.record().connections.is_empty());
}

/// A raw stream: signed upgrade, `connected`, `start` with these custom parameters; returns
/// how the bridge ended the socket (close code) within `timeout`.
async fn raw_stream(
    h: &Harness,
    call_sid: &str,
    params: Value,
    timeout: Duration,
) -> Option<Option<u16>> {
    let (ws, _) = tokio_tungstenite::connect_async(signed_media_request(h))
        .await
        .expect("signed upgrade");
    let (mut tx, mut rx) = ws.split();
    let stream_sid = sid("MZ");
    tx.send(WsMsg::Text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.into(),
    ))
    .await
    .unwrap();
    let start = json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT_SID,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params,
        },
        "streamSid": stream_sid,
    });
    tx.send(WsMsg::Text(start.to_string().into()))
        .await
        .unwrap();
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xFFu8; 160]);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = 0u64;
    loop {
        // Keep sending media like Twilio while waiting.
        chunk += 1;
        let media = json!({
            "event": "media",
            "sequenceNumber": (chunk + 1).to_string(),
            "media": {"track": "inbound", "chunk": chunk.to_string(),
                      "timestamp": (20 * chunk).to_string(), "payload": payload},
            "streamSid": stream_sid,
        });
        let _ = tx.send(WsMsg::Text(media.to_string().into())).await;
        let tick = tokio::time::sleep(Duration::from_millis(20));
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(WsMsg::Close(f))) => return Some(f.map(|f| u16::from(f.code))),
                None | Some(Err(_)) => return Some(None),
                Some(Ok(_)) => {}
            },
            _ = tick => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = tx.close().await;
            return None;
        }
    }
}

#[tokio::test]
async fn streams_without_a_valid_token_are_closed_before_any_model_session() {
    logs();
    let h = harness(|s| s, |_| {}).await;
    let wait = Duration::from_secs(3);

    // No token at all (the simulated caller, signed, skipping the webhook).
    let report = direct_caller(&h)
        .script(short_call())
        .spawn()
        .join()
        .await
        .expect("the upgrade itself is fine");
    assert_eq!(report.close_code, Some(1008), "{report:?}");
    assert_eq!(report.agent_audio_ms(), 0);

    // A token issued for another CallSid.
    let (other_sid, mine) = (sid("CA"), sid("CA"));
    let (_, token) = h.raw_stream(&other_sid).await;
    let end = raw_stream(&h, &mine, json!({"token": token}), wait).await;
    assert_eq!(end, Some(Some(1008)), "token of another call");

    // A made-up token, and an empty one.
    let (_, _) = h.raw_stream(&mine).await;
    for bogus in [
        json!({"token": "0".repeat(64)}),
        json!({"token": ""}),
        json!({}),
    ] {
        let end = raw_stream(&h, &mine, bogus.clone(), wait).await;
        assert_eq!(end, Some(Some(1008)), "{bogus}");
    }

    assert!(
        h.sim.record().connections.is_empty(),
        "no model session was opened (no model cost)"
    );
    assert!(h.sim.record().rejected_upgrades.is_empty());
    let refused = log_lines(&["stream token missing, reused or expired"]);
    assert!(refused.len() >= 5, "{refused:?}");
}

#[tokio::test]
async fn a_stream_token_works_once() {
    let h = harness(|s| s, |_| {}).await;
    let call_sid = sid("CA");
    let (_, token) = h.raw_stream(&call_sid).await;
    // First use: the call proceeds and opens a model session; the bridge keeps the stream
    // open, so the wait times out.
    let end = raw_stream(
        &h,
        &call_sid,
        json!({"token": token}),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(end, None, "the first stream is kept");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.sim.record().connections.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.sim.record().connections.len(), 1);
    // Reused: closed at once, and no second model session.
    let end = raw_stream(
        &h,
        &call_sid,
        json!({"token": token}),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(end, Some(Some(1008)), "reused token");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.sim.record().connections.len(),
        1,
        "no second model session"
    );
}

#[tokio::test]
async fn expired_stream_tokens_are_refused() {
    let h = harness(|s| s, |c| c.twilio.stream_token_ttl_secs = 1).await;
    let call_sid = sid("CA");
    let (_, token) = h.raw_stream(&call_sid).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let end = raw_stream(
        &h,
        &call_sid,
        json!({"token": token}),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(end, Some(Some(1008)), "expired token");
    assert!(h.sim.record().connections.is_empty());
}

#[tokio::test]
async fn with_validation_off_raw_streams_need_nothing() {
    let h = harness(|s| s, |c| c.twilio.validate_signatures = false).await;
    // Unsigned upgrade, no token.
    let (ws, _) = tokio_tungstenite::connect_async(h.media_url())
        .await
        .expect("unsigned upgrade accepted");
    drop(ws);
    let report = direct_caller(&h)
        .auth_token("anything")
        .script(short_call())
        .spawn()
        .join()
        .await
        .expect("call runs");
    assert!(report.agent_audio_ms() > 0);
    assert_eq!(h.sim.record().connections.len(), 1);
}
