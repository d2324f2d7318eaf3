//! Hardening from the outside review (issue 13), one regression test per finding fixed so
//! far: `transfer.allow_pattern` must match the whole number (no toll fraud through a longer,
//! prefixed or suffixed number), and timer settings are bounded so no `Instant` arithmetic can
//! overflow on a call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use callbridge::call::machine::{Call, CallSettings, Input, ModelOut, Output};
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
