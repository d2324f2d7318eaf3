//! The HTTP surface through the router (no sockets): the voice webhook's TwiML, health.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use callbridge::config::Config;
use callbridge::server::{app, AppState};
use http_body_util::BodyExt;
use tower::ServiceExt;

const FORM: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01\
&CallSid=CAfedcba9876543210fedcba9876543210&CallStatus=ringing&Called=%2B15005550006\
&Caller=%2B14155550123&Direction=inbound&From=%2B14155550123&To=%2B15005550006";

fn state(tweak: impl FnOnce(&mut Config)) -> std::sync::Arc<AppState> {
    let mut c = Config::default();
    c.server.public_url = "https://bridge.example.com".into();
    // These tests are about the TwiML and health answers; signatures and stream tokens are
    // covered in tests/security_signatures.rs.
    c.twilio.validate_signatures = false;
    tweak(&mut c);
    c.validate().unwrap();
    AppState::new(c, None)
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

fn voice(body: &str) -> Request<Body> {
    Request::post("/twilio/voice")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn voice_webhook_answers_connect_stream_with_parameters_and_fallback() {
    let resp = app(state(|_| {})).oneshot(voice(FORM)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/xml");
    let twiml = body_text(resp).await;
    assert!(twiml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://bridge.example.com/twilio/media">"#), "{twiml}");
    assert!(
        twiml.contains(r#"<Parameter name="from" value="+14155550123" />"#),
        "{twiml}"
    );
    assert!(
        twiml.contains(r#"<Parameter name="to" value="+15005550006" />"#),
        "{twiml}"
    );
    // The fallback verbs follow </Connect>: Twilio runs them if the stream ends without a hang-up.
    assert!(
        twiml.contains("</Connect><Say>Sorry, our assistant is unavailable"),
        "{twiml}"
    );
    assert!(twiml.ends_with("<Hangup/></Response>"), "{twiml}");
    // No query string on the stream URL (Twilio refuses it).
    let url = twiml
        .split("url=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(!url.contains('?'));
}

#[tokio::test]
async fn voice_webhook_without_fallback_and_with_a_public_url_path_suffix() {
    let resp = app(state(|c| {
        c.twilio.fallback_twiml.clear();
        c.server.public_url = "https://bridge.example.com:8443/".into();
    }))
    .oneshot(voice(FORM))
    .await
    .unwrap();
    let twiml = body_text(resp).await;
    assert!(
        twiml.contains(r#"url="wss://bridge.example.com:8443/twilio/media""#),
        "{twiml}"
    );
    assert!(twiml.ends_with("</Connect></Response>"), "{twiml}");
}

#[tokio::test]
async fn malformed_webhook_body_is_a_clear_400() {
    let resp = app(state(|_| {})).oneshot(voice("From=%ZZ")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn healthz_reports_live_calls_and_draining() {
    let st = state(|_| {});
    let resp = app(st.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    // `model` stays `unchecked` here: only `serve` runs the preflight (tests/preflight.rs).
    assert_eq!(
        v,
        serde_json::json!({"status": "ok", "live_calls": 0, "model": "unchecked"})
    );
    st.shutdown.cancel();
    let resp = app(st)
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn media_endpoint_requires_a_websocket_upgrade() {
    let resp = app(state(|_| {}))
        .oneshot(Request::get("/twilio/media").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
}

#[tokio::test]
async fn webhook_answers_the_fallback_when_draining() {
    let st = state(|c| c.twilio.validate_signatures = false);
    st.shutdown.cancel();
    let resp = app(st).oneshot(voice(FORM)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let twiml = body_text(resp).await;
    assert!(!twiml.contains("<Connect>"), "{twiml}");
    assert!(
        twiml.contains("<Say>Sorry, our assistant is unavailable"),
        "{twiml}"
    );
}

#[tokio::test]
async fn debug_stats_are_off_by_default_and_served_when_enabled() {
    let get = || Request::get("/debug/stats").body(Body::empty()).unwrap();
    let resp = app(state(|_| {})).oneshot(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let st = state(|c| c.server.debug_stats = true);
    st.stats
        .uplink
        .record(std::time::Duration::from_micros(150));
    let resp = app(st).oneshot(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(v["uplink"]["count"], 1);
    assert!(v["uplink"]["p99_us"].as_u64().unwrap() >= 150);
    assert_eq!(v["downlink"]["count"], 0);
    assert_eq!(v["live_calls"], 0);
    assert!(v["runtime_lag"]["buckets"].is_array());
}
