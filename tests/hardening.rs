//! Hardening from the outside review (issue 13), one regression test per finding fixed so
//! far: `transfer.allow_pattern` must match the whole number (no toll fraud through a longer,
//! prefixed or suffixed number), and timer settings are bounded so no `Instant` arithmetic can
//! overflow on a call.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use callbridge::call::event::{Input, ModelOut, Output};
use callbridge::call::machine::Call;
use callbridge::call::settings::CallSettings;
use callbridge::config::{Config, ConfigError};
use callbridge::gemini::wire::{FunctionCall, ModelEvent};
use callbridge::twilio::wire::{CallerEvent, StreamStart};
use serde_json::json;

fn live(cfg: &Config, t0: Instant) -> Call {
    let mut call = Call::new(Arc::new(CallSettings::from_config(cfg)), t0).expect("pipeline");
    call.handle_input(
        Input::Caller(CallerEvent::Start(StreamStart {
            stream_sid: "MZ00112233445566778899aabbccddeeff".into(),
            call_sid: "CAfedcba9876543210fedcba9876543210".into(),
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            tracks: vec!["inbound".into()],
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
            custom_parameters: BTreeMap::new(),
        })),
        t0,
    );
    call.handle_input(Input::ModelConnected, t0);
    call.handle_input(Input::Model(ModelEvent::SetupComplete), t0);
    while call.poll_output().is_some() {}
    call
}

/// Whether the model's transfer to `number` is accepted (armed) rather than refused.
fn transfer_accepted(pattern: &str, number: &str) -> bool {
    let mut cfg = Config::default();
    cfg.transfer.allow_pattern = pattern.into();
    cfg.limits.idle_stream_secs = 3_600;
    cfg.validate().expect("valid pattern");
    let t0 = Instant::now();
    let mut call = live(&cfg, t0);
    call.handle_input(
        Input::Model(ModelEvent::ToolCall(vec![FunctionCall {
            id: "fc-1".into(),
            name: "transfer_call".into(),
            args: json!({"destination": number}),
        }])),
        t0,
    );
    let refused = std::iter::from_fn(|| call.poll_output()).any(|o| {
        matches!(&o, Output::ToModel(ModelOut::ToolResponse(r))
            if r[0].response.get("error").is_some())
    });
    !refused
}

#[test]
fn the_allow_pattern_matches_the_whole_number_only() {
    let pattern = r"\+1415555\d{4}";
    assert!(transfer_accepted(pattern, "+14155551234"));
    assert!(
        !transfer_accepted(pattern, "+14155551234999"),
        "a longer number that contains an allowed one"
    );
    assert!(
        !transfer_accepted(pattern, "+9914155551234"),
        "a prefixed number"
    );
    assert!(
        !transfer_accepted(pattern, "+141555512345"),
        "one digit more"
    );
    // Alternations are anchored as a whole too.
    let alt = r"\+1415555\d{4}|\+4420\d{8}";
    assert!(transfer_accepted(alt, "+442071838750"));
    assert!(!transfer_accepted(alt, "+4420718387501"));
    assert!(!transfer_accepted(alt, "+14155551234999"));
    // An operator's own anchors still work.
    assert!(transfer_accepted(r"^\+1415\d{7}$", "+14155550100"));
}

fn refused_key(f: impl FnOnce(&mut Config)) -> String {
    let mut cfg = Config::default();
    f(&mut cfg);
    match cfg.validate() {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn timer_settings_that_would_overflow_a_calls_clock_are_refused() {
    assert_eq!(
        refused_key(|c| c.limits.max_call_secs = u64::MAX),
        "limits.max_call_secs"
    );
    assert_eq!(
        refused_key(|c| c.limits.start_timeout_ms = u64::MAX),
        "limits.start_timeout_ms"
    );
    assert_eq!(
        refused_key(|c| c.limits.silence_timeout_secs = u64::MAX),
        "limits.silence_timeout_secs"
    );
    // The largest accepted values run a call without panicking.
    let mut cfg = Config::default();
    cfg.limits.max_call_secs = 86_400;
    cfg.limits.start_timeout_ms = 600_000;
    cfg.limits.silence_timeout_secs = 86_400;
    cfg.validate().expect("bounds are valid");
    let t0 = Instant::now();
    let mut call = live(&cfg, t0);
    call.handle_input(Input::Tick, t0);
    assert!(call.poll_timeout().is_some_and(|t| t > t0));
}

/// Runs `serve` until it logs that it listens, and returns its stdout up to that line.
fn serve_log(format: &str) -> String {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("cb-log-{format}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[gemini]\npreflight = false\n[records]\nenabled = false\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args(["--log-format", format, "serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("GEMINI_API_KEY", "k")
        .env_remove("CALLBRIDGE_LISTEN")
        .env_remove("CALLBRIDGE_LOG_FORMAT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut out = String::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines().take(50) {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.contains("callbridge listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn logs_to_a_pipe_carry_no_colour_and_json_logs_are_one_object_per_line() {
    let text = serve_log("text");
    assert!(text.contains("callbridge listening"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI escapes in a pipe: {text:?}"
    );
    let json = serve_log("json");
    assert!(json.contains("callbridge listening"), "{json}");
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

mod webhook_limits {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use callbridge::config::{Config, Secret};
    use callbridge::server::{app, AppState};
    use tower::ServiceExt;

    fn state() -> std::sync::Arc<AppState> {
        let mut c = Config::default();
        c.server.public_url = "https://bridge.example.com".into();
        c.twilio.auth_token = Secret::new("test-auth-token");
        c.validate().unwrap();
        AppState::new(c, None)
    }

    fn post(body: String, signature: Option<&str>) -> Request<Body> {
        let mut r = Request::post("/twilio/voice")
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(s) = signature {
            r = r.header("x-twilio-signature", s);
        }
        r.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn a_webhook_without_a_signature_is_refused_before_it_is_parsed() {
        // Not even a valid form: the refusal comes first.
        let resp = app(state())
            .oneshot(post("%%%not-a-form".into(), None))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn oversized_or_field_flooded_webhooks_are_refused() {
        let big = format!("CallSid=CA{}", "a".repeat(100 * 1024));
        let resp = app(state()).oneshot(post(big, Some("x"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let many = (0..300)
            .map(|i| format!("f{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        let resp = app(state()).oneshot(post(many, Some("x"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A normal-sized request with a wrong signature is still just refused.
        let form = "CallSid=CAfedcba9876543210fedcba9876543210&From=%2B14155550123".to_string();
        let resp = app(state()).oneshot(post(form, Some("bad"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
}

/// Point 1: sockets before `start` hold a pending-stream slot, not a call slot; they have their
/// own cap and a short deadline; the call cap is one atomic step (no overshoot on a burst).
/// Point 5 (write side): a caller that stops reading ends its call as `caller_unresponsive`.
mod admission {
    use std::time::Duration;

    use callbridge::call::event::{CallEnd, CallEvent};
    use callbridge::sim::caller::Script;
    use callbridge::sim::gemini::scenario::{Clip, Reply, Scenario};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio_tungstenite::tungstenite::handshake::client::Request;
    use tokio_tungstenite::tungstenite::Message as WsMsg;

    use crate::common::{harness, Harness, ACCOUNT_SID};

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    fn sid(prefix: &str) -> String {
        format!("{prefix}{:032x}", rand::random::<u128>())
    }

    fn start_json(call_sid: &str, token: &str) -> String {
        let stream_sid = sid("MZ");
        json!({
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"token": token}
            },
            "streamSid": stream_sid,
        })
        .to_string()
    }

    /// A signed upgrade request and a stream token for a fresh CallSid.
    async fn signed(h: &Harness) -> (Request, String, String) {
        let call_sid = sid("CA");
        let (req, token) = h.raw_stream(&call_sid).await;
        (req, token, call_sid)
    }

    /// Waits until the bridge closes `ws` (close frame, error or EOF), up to `limit`.
    async fn closed_within(ws: &mut Ws, limit: Duration) -> Option<Option<u16>> {
        tokio::time::timeout(limit, async {
            loop {
                match ws.next().await {
                    Some(Ok(WsMsg::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .ok()
    }

    /// A real call through the webhook that hears the greeting.
    async fn real_call_is_served(h: &Harness) {
        let report = h
            .caller()
            .script(Script::new().wait_for_agent(600, 15_000).hang_up())
            .spawn()
            .join()
            .await
            .expect("call runs");
        assert!(
            !report.stream_sids.is_empty() && report.media_messages_received > 0,
            "the real call got a stream and heard the agent: {}",
            report.timeline_text()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sockets_that_never_start_do_not_lock_real_callers_out() {
        let h = harness(|s| s, |c| c.limits.max_calls = 5).await;
        // The reviewer's lock-out: max_calls upgraded sockets with a valid (replayable)
        // upgrade signature that never send `start`.
        let (req, _, _) = signed(&h).await;
        let mut idle = Vec::new();
        for _ in 0..5 {
            let (ws, _) = tokio_tungstenite::connect_async(req.clone())
                .await
                .expect("upgrade");
            idle.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.state.admission.pending(), 5);
        assert_eq!(h.state.admission.live(), 0, "no call slot before `start`");
        real_call_is_served(&h).await;
        // The idle sockets are closed at the start deadline (2 s by default).
        for ws in &mut idle {
            assert!(
                closed_within(ws, Duration::from_secs(6)).await.is_some(),
                "an idle socket is closed at the start deadline"
            );
        }
        assert_eq!(h.state.admission.pending(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_sockets_have_their_own_small_cap() {
        let h = harness(
            |s| s,
            |c| {
                c.limits.max_pending_streams = 3;
                c.limits.start_timeout_ms = 500;
            },
        )
        .await;
        let (req, _, _) = signed(&h).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(
                tokio_tungstenite::connect_async(req.clone())
                    .await
                    .unwrap()
                    .0,
            );
        }
        match tokio_tungstenite::connect_async(req.clone()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503, "the fourth pending socket is refused")
            }
            other => panic!("expected 503, got {other:?}"),
        }
        for ws in &mut idle {
            assert!(closed_within(ws, Duration::from_secs(5)).await.is_some());
        }
        // Once they are gone (deadline), sockets are accepted again and real calls run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.state.admission.pending(), 0);
        real_call_is_served(&h).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_starts_never_overshoots_max_calls() {
        let h = harness(|s| s, |c| c.limits.max_calls = 3).await;
        let mut socks = Vec::new();
        for _ in 0..8 {
            let (req, token, call_sid) = signed(&h).await;
            let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            socks.push((ws, start_json(&call_sid, &token)));
        }
        // Every socket sends its `start` at once.
        let results = futures_util::future::join_all(socks.into_iter().map(|(mut ws, start)| {
            async move {
                ws.send(WsMsg::Text(start.into())).await.unwrap();
                // Refused streams are closed at once with 1013; admitted ones stay open.
                let code = closed_within(&mut ws, Duration::from_millis(1500)).await;
                (code, ws)
            }
        }))
        .await;
        let refused = results
            .iter()
            .filter(|(c, _)| *c == Some(Some(1013)))
            .count();
        let open = results.iter().filter(|(c, _)| c.is_none()).count();
        assert_eq!((open, refused), (3, 5), "exactly max_calls admitted");
        assert_eq!(h.state.admission.live(), 3);
        assert_eq!(h.state.admission.calls.len(), 3);
    }

    /// A 60 s greeting: the bridge keeps writing to the caller for the whole test.
    fn long_greeting() -> Scenario {
        let tone: Vec<i16> = (0..24_000 * 60)
            .map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16)
            .collect();
        Scenario {
            greeting: Some(Reply {
                clip: Some(Clip::from_samples(tone)),
                text: "hello".into(),
            }),
            ..Scenario::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_stops_reading_ends_as_caller_unresponsive() {
        let mut h = harness(
            |s| s.scenario(long_greeting()),
            |c| c.limits.caller_write_timeout_ms = 500,
        )
        .await;
        let (req, token, call_sid) = signed(&h).await;
        // A tiny receive window and a client that never reads: the bridge's writes stall.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(2048).unwrap();
        let tcp = sock.connect(h.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        ws.send(WsMsg::Text(
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.into(),
        ))
        .await
        .unwrap();
        ws.send(WsMsg::Text(start_json(&call_sid, &token).into()))
            .await
            .unwrap();
        let (mut tx, _rx_never_read) = ws.split();
        // Keep sending caller audio (so the idle-stream timer is not what ends it).
        let feeder = tokio::spawn(async move {
            let payload =
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xFFu8; 160]);
            for i in 0..1500u32 {
                let m = json!({"event":"media","sequenceNumber": (i + 2).to_string(),
                    "media": {"track":"inbound","chunk": i.to_string(),
                    "timestamp": (20 * i).to_string(), "payload": payload}});
                if tx.send(WsMsg::Text(m.to_string().into())).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let notes = h.notes_until_end(Duration::from_secs(30)).await;
        feeder.abort();
        let ended = notes.iter().find_map(|n| match &n.event {
            CallEvent::Ended(why) => Some(why.clone()),
            _ => None,
        });
        assert_eq!(
            ended,
            Some(CallEnd::CallerUnresponsive),
            "{:?}",
            crate::common::event_kinds(&notes)
        );
        // Its slot is released promptly, and the bridge is still serving.
        let t = std::time::Instant::now();
        while h.state.admission.live() > 0 && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(h.state.admission.live(), 0);
        real_call_is_served(&h).await;
    }
}

/// Point 5 (listener side): slow or idle clients cannot pin sockets: a header-read timeout,
/// a connection cap, and a deadline on each request (body included).
mod slow_clients {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::common::harness;

    /// Reads until EOF or error; how long the bridge took to close, if it did within `limit`.
    async fn closed_after(tcp: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(limit, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|_| (t0.elapsed(), String::from_utf8_lossy(&got).into_owned()))
    }

    async fn healthz_ok(addr: std::net::SocketAddr) -> bool {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn headers_sent_a_byte_at_a_time_are_cut_off() {
        let h = harness(|s| s, |c| c.server.header_timeout_ms = 500).await;
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // ...and never the blank line.
        let (after, _) = closed_after(&mut tcp, Duration::from_secs(5))
            .await
            .expect("the bridge closes a connection whose headers never finish");
        assert!(after < Duration::from_secs(3), "closed after {after:?}");
        // A connection that sends nothing at all is closed too.
        let mut idle = TcpStream::connect(h.addr).await.unwrap();
        assert!(closed_after(&mut idle, Duration::from_secs(5))
            .await
            .is_some());
        assert!(healthz_ok(h.addr).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_are_closed_at_once_and_the_cap_frees_up() {
        let h = harness(
            |s| s,
            |c| {
                c.server.max_connections = 4;
                c.server.header_timeout_ms = 800;
            },
        )
        .await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(h.addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(h.addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (after, reply) = closed_after(&mut extra, Duration::from_secs(2))
            .await
            .expect("the fifth connection is closed");
        assert!(reply.is_empty(), "not served: {reply}");
        assert!(after < Duration::from_millis(500), "closed after {after:?}");
        // The idle ones hit the header timeout; then the bridge serves again.
        for tcp in &mut idle {
            assert!(closed_after(tcp, Duration::from_secs(5)).await.is_some());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(healthz_ok(h.addr).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_never_finishes_gets_408() {
        let h = harness(|s| s, |c| c.server.request_timeout_ms = 500).await;
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(
            b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: abc\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nCallSid=CA",
        )
        .await
        .unwrap();
        let (after, reply) = closed_after(&mut tcp, Duration::from_secs(5))
            .await
            .expect("answered and closed");
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(after < Duration::from_secs(3), "answered after {after:?}");
    }
}

/// Point 9: deployment defaults. `/metrics` can require the operator token
/// (`metrics.require_token`; start-up refuses it without a token); the image runs as a
/// non-root user, compose publishes on loopback unless told otherwise and passes the operator
/// token and tools secret through, and secrets / local data stay out of the build context and
/// the repository.
mod deployment_defaults {
    use std::path::Path;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use callbridge::config::{Config, ConfigError, Secret};
    use callbridge::server::{app, AppState};
    use tower::ServiceExt;

    const TOKEN: &str = "metrics-test-token-0123456789abcdef";

    fn state(tweak: impl FnOnce(&mut Config)) -> std::sync::Arc<AppState> {
        let mut c = Config::default();
        c.server.public_url = "https://bridge.example.com".into();
        c.twilio.validate_signatures = false;
        tweak(&mut c);
        c.validate().expect("valid config");
        AppState::new(c, None)
    }

    async fn metrics_status(
        st: &std::sync::Arc<AppState>,
        auth: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap) {
        let mut req = Request::get("/metrics");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = app(st.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        (resp.status(), resp.headers().clone())
    }

    #[tokio::test]
    async fn metrics_need_the_operator_token_when_required() {
        // Off by default: a plain scrape works (with or without a token configured).
        assert!(!Config::default().metrics.require_token);
        let open = state(|c| c.operator.token = Secret::new(TOKEN));
        assert_eq!(metrics_status(&open, None).await.0, StatusCode::OK);

        let st = state(|c| {
            c.operator.token = Secret::new(TOKEN);
            c.metrics.require_token = true;
        });
        let wrong = format!("Bearer {TOKEN}X");
        for auth in [
            None,
            Some(wrong.as_str()),
            Some("Bearer "),
            Some("Basic bWV0cmljczpwYXNz"),
            Some(TOKEN),
        ] {
            let (status, headers) = metrics_status(&st, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert!(headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
        let ok = format!("Bearer {TOKEN}");
        let (status, headers) = metrics_status(&st, Some(&ok)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        let lower = format!("bearer {TOKEN}");
        assert_eq!(metrics_status(&st, Some(&lower)).await.0, StatusCode::OK);

        // Metrics off: still 404, token or not.
        let off = state(|c| {
            c.operator.token = Secret::new(TOKEN);
            c.metrics.enabled = false;
            c.metrics.require_token = true;
        });
        assert_eq!(metrics_status(&off, None).await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn requiring_the_metrics_token_without_one_is_refused_at_start_up() {
        let mut c = Config::default();
        c.metrics.require_token = true;
        match c.validate() {
            Err(ConfigError::Invalid { key, reason, .. }) => {
                assert_eq!(key, "metrics.require_token");
                assert!(reason.contains("CALLBRIDGE_OPERATOR_TOKEN"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Through the file and the environment, as `serve` loads it.
        let dir =
            std::env::temp_dir().join(format!("callbridge-metrics-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[metrics]\nrequire_token = true\n").unwrap();
        let none = |_: &str| None;
        let err = Config::load(Some(&file), &none).unwrap_err().to_string();
        assert!(
            err.contains("metrics.require_token") && err.contains("CALLBRIDGE_OPERATOR_TOKEN"),
            "{err}"
        );
        let env = |k: &str| (k == "CALLBRIDGE_OPERATOR_TOKEN").then(|| TOKEN.to_string());
        let c = Config::load(Some(&file), &env).expect("valid with the token");
        assert!(c.metrics.require_token);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn repo_file(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Non-comment, non-blank lines, trimmed.
    fn lines(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn deployment_files_default_to_loopback_non_root_and_no_secrets_in_the_context() {
        // docker-compose.yml: the published port is on loopback unless CALLBRIDGE_BIND says
        // otherwise; the operator token and the tools secret are passed through, under the
        // names the config reads.
        let compose = lines(&repo_file("docker-compose.yml"));
        let ports: Vec<&String> = compose
            .iter()
            .filter(|l| l.starts_with("- \"") && l.ends_with(":8080\""))
            .collect();
        assert_eq!(
            ports,
            [&"- \"${CALLBRIDGE_BIND:-127.0.0.1}:8080:8080\"".to_string()],
            "compose must publish 8080 on 127.0.0.1 by default"
        );
        for var in ["CALLBRIDGE_OPERATOR_TOKEN", "CALLBRIDGE_TOOLS_SECRET"] {
            let line = format!("{var}: \"${{{var}:-}}\"");
            assert!(compose.contains(&line), "compose must pass {var} through");
            // The name the configuration actually reads.
            let env = |k: &str| (k == var).then(|| "x".repeat(32));
            let mut c = Config::default();
            c.apply_env(&env);
            let set = match var {
                "CALLBRIDGE_OPERATOR_TOKEN" => c.operator.token.expose().to_string(),
                _ => c.tools.secret.expose().to_string(),
            };
            assert_eq!(set, "x".repeat(32), "{var} is read by the config");
        }

        // Dockerfile: the final stage runs as a named non-root user that owns its data dir.
        let docker = lines(&repo_file("Dockerfile"));
        let last_from = docker
            .iter()
            .rposition(|l| l.starts_with("FROM "))
            .expect("a FROM");
        let users: Vec<&str> = docker[last_from..]
            .iter()
            .filter_map(|l| l.strip_prefix("USER "))
            .collect();
        let user = users.last().expect("the runtime stage sets USER").trim();
        let name = user.split(':').next().unwrap();
        assert!(
            !name.is_empty() && name != "root" && name != "0",
            "USER {user} is root"
        );
        let runtime = docker[last_from..].join("\n");
        assert!(
            runtime.contains("useradd --system") && runtime.contains(name),
            "the runtime stage creates the system user {name}"
        );
        assert!(
            runtime.contains(&format!("-o {name}")) && runtime.contains("/var/lib/callbridge"),
            "{name} owns /var/lib/callbridge"
        );

        // .dockerignore: secrets, build output and local data stay out of the context.
        let ignore = lines(&repo_file(".dockerignore"));
        let strip = |l: &String| l.trim_end_matches('/').to_string();
        let ignore: Vec<String> = ignore.iter().map(strip).collect();
        for must in [".env", "target", ".git", "out", "*.db", "**/node_modules"] {
            assert!(
                ignore.iter().any(|l| l == must),
                ".dockerignore lacks {must}"
            );
        }

        // .gitignore: the default SQLite file and its siblings, and out/.
        let git = lines(&repo_file(".gitignore"));
        for must in [
            "callbridge.db",
            "*.db-wal",
            "*.db-shm",
            ".env",
            "/out",
            "/target",
        ] {
            assert!(git.iter().any(|l| l == must), ".gitignore lacks {must}");
        }
    }
}
