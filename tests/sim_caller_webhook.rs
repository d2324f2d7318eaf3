//! The simulated caller's webhook step against a tiny axum app standing in for the bridge:
//! signed form POST, TwiML reading (parameters, fallback, query-string and track rules), the
//! connect override and the signed upgrade.

use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use callbridge::sim::caller::{codes, CallEnding, QueryStringPolicy, SimCaller, SimCallerError};
use callbridge::twilio::webhook::{parse_form, validate_signature};
use serde_json::Value;
use tokio::net::TcpListener;

const TOKEN: &str = "9f4c2a7e1b3d5f60718293a4b5c6d7e8";
const PUBLIC_VOICE: &str = "https://bridge.example.com/twilio/voice";

#[derive(Default)]
struct Seen {
    voice: Option<(HeaderMap, String)>,
    media: Option<(HeaderMap, Uri, Vec<Value>)>,
    status: Vec<(HeaderMap, String)>,
}

#[derive(Clone)]
struct App {
    twiml: String,
    status: u16,
    seen: Arc<Mutex<Seen>>,
}

async fn voice(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
    app.seen.lock().unwrap().voice = Some((headers, body));
    let status = axum::http::StatusCode::from_u16(app.status).unwrap();
    (status, [("content-type", "text/xml")], app.twiml.clone()).into_response()
}

async fn stream_status(State(app): State<App>, headers: HeaderMap, body: String) -> &'static str {
    app.seen.lock().unwrap().status.push((headers, body));
    "ok"
}

async fn media(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        // Read connected + start, then end the call from our side (the bridge closes first).
        let mut msgs = Vec::new();
        while msgs.len() < 2 {
            match socket.recv().await {
                Some(Ok(Message::Text(t))) => msgs.push(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        app.seen.lock().unwrap().media = Some((headers, uri, msgs));
        let _ = socket.send(Message::Close(None)).await;
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

async fn serve(twiml: &str, status: u16) -> (u16, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = App {
        twiml: twiml.to_string(),
        status,
        seen: seen.clone(),
    };
    let router = Router::new()
        .route("/twilio/voice", post(voice))
        .route("/twilio/media", any(media))
        .route("/twilio/stream-status", post(stream_status))
        .with_state(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (port, seen)
}

fn twiml(url: &str, extra_attr: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream{extra_attr} url="{url}"><Parameter name="tenant" value="acme &amp; co" /><Parameter name="callerId" value="+14155550123" /></Stream></Connect><Say>Goodbye</Say><Hangup /></Response>"#
    )
}

#[tokio::test]
async fn webhook_then_signed_stream_with_parameters_and_fallback() {
    let (port, seen) = serve(
        &twiml(
            "/twilio/media", // relative: resolved against the webhook's public host
            r#" statusCallback="https://bridge.example.com/twilio/stream-status""#,
        ),
        200,
    )
    .await;
    let report = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .public_webhook_url(PUBLIC_VOICE)
        .connect_override(format!("ws://127.0.0.1:{port}"))
        .auth_token(TOKEN)
        .from("+14155550100")
        .to("+15005550006")
        .spawn()
        .join()
        .await
        .unwrap();
    let seen = seen.lock().unwrap();

    // The webhook POST: §2.1 fields, alphabetical, signed over the public URL (§2.3).
    let (headers, body) = seen.voice.as_ref().expect("webhook was not called");
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert!(headers.contains_key("i-twilio-idempotency-token"));
    let form = parse_form(body).unwrap();
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    for want in [
        "AccountSid",
        "ApiVersion",
        "CallSid",
        "CallStatus",
        "Called",
        "CalledCity",
        "Caller",
        "Direction",
        "From",
        "To",
        "ToZip",
    ] {
        assert!(names.contains(&want), "missing {want}");
    }
    assert!(body.contains("From=%2B14155550100"), "{body}");
    assert!(body.contains("CallerCity=SAN+FRANCISCO"), "{body}");
    let get = |k: &str| form.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(get("CallStatus"), "ringing");
    assert_eq!(get("Direction"), "inbound");
    assert_eq!(get("CallSid"), report.call_sid);
    assert_eq!(get("AccountSid"), report.account_sid);
    let sig = headers["x-twilio-signature"].to_str().unwrap();
    assert!(validate_signature(TOKEN, PUBLIC_VOICE, &form, sig));
    assert!(!validate_signature("wrong", PUBLIC_VOICE, &form, sig));

    // The upgrade went to the override host, kept the path, and is signed over the wss URL.
    let (mheaders, uri, msgs) = seen.media.as_ref().expect("stream never connected");
    assert_eq!(uri.path(), "/twilio/media");
    assert_eq!(uri.query(), None);
    let usig = mheaders["x-twilio-signature"].to_str().unwrap();
    assert!(validate_signature(
        TOKEN,
        "wss://bridge.example.com/twilio/media",
        &[],
        usig
    ));
    assert_eq!(
        report.signed_stream_url,
        "wss://bridge.example.com/twilio/media"
    );

    // customParameters come from the TwiML's <Parameter>s.
    let params = &msgs[1]["start"]["customParameters"];
    assert_eq!(params["tenant"], "acme & co");
    assert_eq!(params["callerId"], "+14155550123");
    assert_eq!(msgs[1]["start"]["callSid"], report.call_sid.as_str());

    // The bridge closed first: 31921, and Twilio would continue with the fallback TwiML.
    assert_eq!(report.ended_by, Some(CallEnding::BridgeClosed));
    assert!(report.warnings.contains(&codes::SERVER_CLOSED));
    assert_eq!(
        report.fallback_twiml.as_deref(),
        Some("<Say>Goodbye</Say><Hangup />")
    );
    let ex = report.webhook.as_ref().unwrap();
    assert_eq!(ex.stream_url, "wss://bridge.example.com/twilio/media");
    assert!(report.timeline_text().contains("continue twiml"));

    // Stream status callbacks (§1.6): started then stopped, signed over the public URL.
    let events: Vec<&str> = report
        .status_callbacks
        .iter()
        .map(|c| c.event.as_str())
        .collect();
    assert_eq!(events, ["stream-started", "stream-stopped"]);
    assert!(report
        .status_callbacks
        .iter()
        .all(|c| c.status == Some(200)));
    assert_eq!(seen.status.len(), 2);
    for ((h, body), event) in seen.status.iter().zip(["stream-started", "stream-stopped"]) {
        let form = parse_form(body).unwrap();
        let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "AccountSid",
                "CallSid",
                "StreamEvent",
                "StreamName",
                "StreamSid",
                "Timestamp"
            ]
        );
        let get = |k: &str| form.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("StreamEvent"), event);
        assert_eq!(get("StreamSid"), report.stream_sid);
        assert_eq!(get("StreamName"), report.stream_sid);
        let ts = get("Timestamp");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        let sig = h["x-twilio-signature"].to_str().unwrap();
        assert!(validate_signature(
            TOKEN,
            "https://bridge.example.com/twilio/stream-status",
            &form,
            sig
        ));
    }
}

#[tokio::test]
async fn query_string_in_stream_url_fails_by_default_and_can_be_stripped() {
    let t = twiml("wss://bridge.example.com/twilio/media?token=abc", "");
    let (port, seen) = serve(&t, 200).await;
    let err = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .connect_override(format!("ws://127.0.0.1:{port}"))
        .spawn()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SimCallerError::QueryStringInStreamUrl { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("31920"));
    assert!(seen.lock().unwrap().media.is_none(), "must not connect");

    let report = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .connect_override(format!("ws://127.0.0.1:{port}"))
        .query_string_policy(QueryStringPolicy::Strip)
        .spawn()
        .join()
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let (_, uri, _) = seen.media.as_ref().expect("stripped url should connect");
    assert_eq!(uri.query(), None);
    assert_eq!(
        report.signed_stream_url,
        "wss://bridge.example.com/twilio/media"
    );
}

#[tokio::test]
async fn twiml_rules_tracks_schemes_and_errors() {
    // track other than inbound_track → 31941.
    let (port, _) = serve(
        &twiml("wss://b.example/twilio/media", r#" track="both_tracks""#),
        200,
    )
    .await;
    let err = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .spawn()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SimCallerError::BadTrack { track } if track == "both_tracks"),
        "{err}"
    );

    // ws:// in TwiML → 31922.
    let (port, _) = serve(&twiml("ws://b.example/twilio/media", ""), 200).await;
    let err = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .spawn()
        .join()
        .await
        .unwrap_err();
    assert!(matches!(err, SimCallerError::BadStreamUrl { .. }), "{err}");

    // No <Connect><Stream>.
    let (port, _) = serve("<Response><Say>hi</Say></Response>", 200).await;
    let err = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .spawn()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SimCallerError::NoStreamInTwiml { .. }),
        "{err}"
    );

    // HTTP error.
    let (port, _) = serve("boom", 500).await;
    let err = SimCaller::builder()
        .webhook(format!("http://127.0.0.1:{port}/twilio/voice"))
        .spawn()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SimCallerError::WebhookStatus { status: 500, .. }),
        "{err}"
    );
}
