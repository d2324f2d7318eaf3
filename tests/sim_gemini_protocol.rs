//! Gemini simulator: transport, auth, parsing and setup validation (spec §13 items 2-11).

mod sim_gemini_support;

use std::time::Duration;

use callbridge::sim::gemini::{CloseRecord, FaultAction, FrameKind, GeminiSim, Scenario};
use serde_json::json;
use sim_gemini_support::*;

const REASON_INVALID: &str = "Request contains an invalid argument.";

#[tokio::test]
async fn setup_accepted_and_setup_complete_is_a_binary_frame() {
    let sim = GeminiSim::builder().spawn().await.expect("spawn");
    assert!(sim.url().starts_with("ws://127.0.0.1:"));
    assert!(sim.url().ends_with(
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    ));
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.send(&json!({"setup": setup_25()})).await;
    assert_eq!(
        c.next().await,
        Event::Json {
            value: json!({"setupComplete": {}}),
            binary: true
        }
    );
    // Nothing else unprompted (no resumption requested).
    assert_eq!(
        c.next_within(Duration::from_millis(300)).await,
        Event::Timeout
    );
    c.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = sim.record();
    let conn = &rec.connections[0];
    assert_eq!(conn.api_version, "v1beta");
    assert_eq!(conn.credential_source, "key-query");
    assert_eq!(conn.frames[0].kind, FrameKind::Text);
    assert_eq!(
        conn.setup.as_ref().map(|s| s["model"].clone()),
        Some(json!(MODEL_25))
    );
    assert!(matches!(
        conn.close,
        Some(CloseRecord::ByClient { code: None, .. })
    ));
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn text_frames_knob_double_slash_path_and_header_key() {
    let sim = GeminiSim::builder()
        .binary_frames(false)
        .keys(vec!["k1".into()])
        .spawn()
        .await
        .expect("spawn");
    // SDKs request `//ws/...` with the key in a header (Python) and v1 (SDK 3.x).
    let url = format!(
        "ws://{}//ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
        sim.addr()
    );
    let mut c = Client::connect_with(&url, &[("x-goog-api-key", "k1")])
        .await
        .expect("connect");
    // A binary client frame is read like a text one.
    c.send_binary(json!({"setup": setup_25()}).to_string().as_bytes())
        .await;
    assert_eq!(
        c.next().await,
        Event::Json {
            value: json!({"setupComplete": {}}),
            binary: false
        }
    );
    let rec = sim.record();
    assert_eq!(rec.connections[0].api_version, "v1");
    assert_eq!(rec.connections[0].credential_source, "key-header");
    assert_eq!(rec.connections[0].frames[0].kind, FrameKind::Binary);
    // Ephemeral token in `Authorization: Token` on the constrained method.
    let url = format!(
        "ws://{}/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
        sim.addr()
    );
    let mut c = Client::connect_with(&url, &[("authorization", "Token k1")])
        .await
        .expect("connect");
    c.setup(setup_25()).await;
}

#[tokio::test]
async fn wrong_path_is_404_and_quota_knob_is_429() {
    let mut scenario = Scenario::default();
    scenario.faults.reject_upgrade_status = Some(429);
    scenario.faults.reject_upgrade_count = 1;
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .spawn()
        .await
        .expect("spawn");
    let bad = format!(
        "ws://{}/ws/google.ai.generativelanguage.v1beta.Other?key=x",
        sim.addr()
    );
    match Client::connect_with(&bad, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        Err(e) => panic!("expected HTTP 404, got {e}"),
        Ok(_) => panic!("expected HTTP 404, got an upgrade"),
    }
    match Client::connect_with(&with_key(&sim.url()), &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        Err(e) => panic!("expected HTTP 429, got {e}"),
        Ok(_) => panic!("expected HTTP 429, got an upgrade"),
    }
    // Only the first upgrade was refused.
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    let statuses: Vec<u16> = sim
        .record()
        .rejected_upgrades
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![404, 429]);
}

#[tokio::test]
async fn bad_or_missing_key_closes_1007_after_upgrade() {
    let sim = GeminiSim::builder()
        .keys(vec!["good".into()])
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&format!("{}?key=bad", sim.url())).await;
    assert_eq!(
        c.expect_close().await,
        (
            Some(1007),
            "API key not valid. Please pass a valid API key.".to_string()
        )
    );
    let mut c = Client::connect(&sim.url()).await;
    assert_eq!(c.expect_close().await.0, Some(1007));
    let sim = GeminiSim::builder()
        .keys(vec!["good".into()])
        .auth_close_code(1008)
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&format!("{}?key=nope", sim.url())).await;
    assert_eq!(c.expect_close().await.0, Some(1008));
    let mut c = Client::connect(&format!("{}?key=good", sim.url())).await;
    c.setup(setup_25()).await;
}

#[tokio::test]
async fn config_instead_of_setup_closes_1007() {
    let sim = GeminiSim::builder().spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.send(&json!({"config": {"model": MODEL_25, "responseModalities": ["AUDIO"]}}))
        .await;
    assert_eq!(
        c.expect_close().await,
        (Some(1007), REASON_INVALID.to_string())
    );
    assert_eq!(
        sim.record().connections[0].close,
        Some(CloseRecord::ByServer {
            code: 1007,
            reason: REASON_INVALID.into()
        })
    );
}

#[tokio::test]
async fn unknown_model_closes_1008_with_version_from_path() {
    let sim = GeminiSim::builder().spawn().await.expect("spawn");
    // Ids that never existed. (The shut-down gemini-2.0-flash-live-001 and
    // gemini-live-2.5-flash-preview used to be the examples here; they now get the retired-model
    // close, "Requested entity was not found." — see sim_gemini_profiles.rs.)
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.send(
        &json!({"setup": {"model": "models/gemini-2.0-flash-live-999",
        "generationConfig": {"responseModalities": ["AUDIO"]}}}),
    )
    .await;
    assert_eq!(
        c.expect_close().await,
        (
            Some(1008),
            "models/gemini-2.0-flash-live-999 is not found for API version v1beta, or is not supported for bidiGenerateContent."
                .to_string()
        )
    );
    let url = format!(
        "ws://{}/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent?key=k",
        sim.addr()
    );
    let mut c = Client::connect(&url).await;
    c.send(&json!({"setup": {"model": "gemini-live-9.9-flash-preview"}}))
        .await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, Some(1008));
    assert!(
        reason
            .contains("models/gemini-live-9.9-flash-preview is not found for API version v1alpha"),
        "{reason}"
    );
}

#[tokio::test]
async fn setup_validation_errors() {
    let sim = GeminiSim::builder().spawn().await.expect("spawn");
    let cases = [
        // No generationConfig at all (what the SDKs send with no config).
        (
            json!({"setup": {"model": MODEL_25}}),
            1007,
            "Cannot extract voices from a non-audio request.",
        ),
        (
            json!({"setup": {"model": MODEL_25, "generationConfig": {"responseModalities": ["TEXT"]}}}),
            1007,
            "Cannot extract voices from a non-audio request.",
        ),
        (
            json!({"setup": {"model": "models/gemini-3.8-live", "generationConfig": {"responseModalities": ["AUDIO"], "thinkingConfig": {"thinkingBudget": 0}}}}),
            1007,
            REASON_INVALID,
        ),
        (
            json!({"setup": {"model": "gemini-3.8-live", "generationConfig": {"responseModalities": ["AUDIO"]}, "proactivity": {"proactive_audio": false}}}),
            1007,
            REASON_INVALID,
        ),
        (
            json!({"setup": {"model": MODEL_25, "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {"voice_config": {"prebuilt_voice_config": {"voice_name": "kore"}}}}}}),
            1007,
            REASON_INVALID,
        ),
        (
            json!({"setup": {"generationConfig": {"responseModalities": ["AUDIO"]}}}),
            1007,
            REASON_INVALID,
        ),
        // Two members, or a non-setup first message.
        (
            json!({"setup": {"model": MODEL_25}, "clientContent": {}}),
            1007,
            REASON_INVALID,
        ),
        (
            json!({"realtimeInput": {"text": "hi"}}),
            1007,
            REASON_INVALID,
        ),
        (json!({}), 1007, REASON_INVALID),
    ];
    for (msg, code, reason) in cases {
        let mut c = Client::connect(&with_key(&sim.url())).await;
        c.send(&msg).await;
        assert_eq!(
            c.expect_close().await,
            (Some(code), reason.to_string()),
            "for {msg}"
        );
    }
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.send_raw("this is not json").await;
    assert_eq!(
        c.expect_close().await,
        (Some(1007), REASON_INVALID.to_string())
    );
    // 3.8 accepts its own valid setup.
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(json!({"model": "models/gemini-3.8-live", "generationConfig": {"responseModalities": ["AUDIO"]}, "proactivity": {"proactiveAudio": true}}))
        .await;
    // A second setup is refused.
    c.send(&json!({"setup": setup_25()})).await;
    assert_eq!(
        c.expect_close().await,
        (Some(1007), REASON_INVALID.to_string())
    );
}

#[tokio::test]
async fn python_sdk_snake_case_session_is_accepted() {
    let capture = std::fs::read_to_string(
        "/work/shared/specs/sdk-captures/python-genai-3.6.1_full-session.jsonl",
    )
    .ok()
    .or_else(|| {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/specs/sdk-captures/python-genai-3.6.1_full-session.jsonl"
        ))
        .ok()
    });
    // The verbatim capture (spec §5.3); embedded so the test also runs without the specs dir.
    let fallback = r#"{"setup": {"model": "models/gemini-2.5-flash-native-audio-preview-12-2025", "generationConfig": {"responseModalities": ["AUDIO"], "temperature": 0.7, "mediaResolution": "MEDIA_RESOLUTION_LOW", "speechConfig": {"voice_config": {"prebuilt_voice_config": {"voice_name": "Kore"}}, "language_code": "en-US"}, "thinkingConfig": {"thinking_budget": 0}, "enableAffectiveDialog": true}, "systemInstruction": {"parts": [{"text": "You are a helpful phone agent."}], "role": "user"}, "tools": [{"functionDeclarations": [{"description": "Get the weather for a city", "name": "get_weather", "parameters": {"properties": {"city": {"type": "STRING"}}, "required": ["city"], "type": "OBJECT"}, "behavior": "NON_BLOCKING"}]}], "sessionResumption": {}, "inputAudioTranscription": {}, "outputAudioTranscription": {}, "realtimeInputConfig": {"automatic_activity_detection": {"disabled": false, "start_of_speech_sensitivity": "START_SENSITIVITY_LOW", "end_of_speech_sensitivity": "END_SENSITIVITY_LOW", "prefix_padding_ms": 20, "silence_duration_ms": 100}, "activity_handling": "START_OF_ACTIVITY_INTERRUPTS", "turn_coverage": "TURN_INCLUDES_ONLY_ACTIVITY"}, "contextWindowCompression": {"trigger_tokens": 25600, "sliding_window": {"target_tokens": 12800}}, "proactivity": {"proactive_audio": true}}}"#;
    let frames: Vec<String> = match capture {
        Some(text) => text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "recv")
            .filter_map(|e| e["raw"].as_str().map(str::to_string))
            .collect(),
        None => vec![fallback.to_string()],
    };
    let sim = GeminiSim::builder()
        .pace(50.0)
        .response_latency(Duration::from_millis(10))
        .realtime_playback(false)
        .spawn()
        .await
        .expect("spawn");
    let url = format!(
        "ws://{}//ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
        sim.addr()
    );
    let mut c = Client::connect_with(&url, &[("x-goog-api-key", "FAKE_KEY_123")])
        .await
        .expect("connect");
    c.send_raw(&frames[0]).await;
    assert_eq!(c.json().await, json!({"setupComplete": {}}));
    // sessionResumption: {} => a handle right away.
    let upd = c.json().await;
    assert_eq!(
        upd["sessionResumptionUpdate"]["resumable"],
        json!(true),
        "{upd}"
    );
    assert!(upd["sessionResumptionUpdate"]["newHandle"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    if frames.len() > 1 {
        // {"client_content": {"turns": [...], "turnComplete": true}} prompts the greeting.
        assert!(frames[1].starts_with(r#"{"client_content""#));
        c.send_raw(&frames[1]).await;
        let turn = c.turn().await;
        assert_eq!(
            output_text(&turn),
            "Hi! Thanks for calling. How can I help you today?"
        );
        // Snake-case realtime_input audio with mime_type is consumed and recorded.
        c.send_raw(&frames[2]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rec = sim.record();
        assert_eq!(rec.connections[0].audio_chunks.len(), 1);
        assert_eq!(rec.connections[0].audio.len(), 8);
        assert_eq!(rec.connections[0].audio[0], 256);
    }
}

#[tokio::test]
async fn long_close_reasons_are_truncated_to_123_bytes() {
    let mut scenario = Scenario::default();
    let reason = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.";
    scenario.faults.after_setup = Some(FaultAction::Close {
        code: 1011,
        reason: reason.into(),
    });
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.send(&json!({"setup": setup_25()})).await;
    assert_eq!(c.json().await, json!({"setupComplete": {}}));
    let (code, got) = c.expect_close().await;
    assert_eq!(code, Some(1011));
    assert_eq!(got.len(), 123);
    assert!(got.ends_with("head to: h"), "{got}");
}

#[tokio::test]
async fn pings_are_answered() {
    let sim = GeminiSim::builder().spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    assert!(c.ping_pong().await);
}

#[test]
fn cli_arguments_parse() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: callbridge::sim::gemini::SimulateArgs,
    }
    let cli = Cli::parse_from([
        "simulate-gemini",
        "--listen",
        "127.0.0.1:0",
        "--keys",
        "a,b",
        "--lifetime-secs",
        "30",
        "--go-away-secs",
        "5",
        "--text-frames",
        "--scenario",
        "scenarios/example.toml",
    ]);
    assert_eq!(cli.args.keys, vec!["a".to_string(), "b".to_string()]);
    assert_eq!((cli.args.lifetime_secs, cli.args.go_away_secs), (30, 5));
    assert!(cli.args.text_frames);
    let defaults = Cli::parse_from(["simulate-gemini"]);
    assert!(defaults.args.keys.is_empty() && !defaults.args.text_frames);
    assert_eq!(defaults.args.lifetime_secs, 600);
}
