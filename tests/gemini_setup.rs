//! `gemini::setup` golden tests against the JS SDK capture and the spec's canonical setup.
//!
//! JS_SDK_SETUP is the raw text of the first client frame of connection 4 in
//! `shared/specs/sdk-captures/js-genai-3.3.0_session-and-ephemeral.jsonl` (@google/genai 3.3.0
//! driven against a local capture server), copied verbatim so this test does not depend on a
//! path outside the repository; `embedded_capture_matches_shared_file` re-checks the copy when
//! the shared specs are present.

use callbridge::gemini::setup::{
    setup_message, ActivityDetection, ContextCompression, FunctionDeclaration, SetupParams,
};
use serde_json::{json, Value};

const JS_SDK_SETUP: &str = r#"{"setup":{"model":"models/gemini-2.5-flash-native-audio-preview-12-2025","generationConfig":{"responseModalities":["AUDIO"],"speechConfig":{"voiceConfig":{"prebuiltVoiceConfig":{"voiceName":"Kore"}},"languageCode":"en-US"}},"systemInstruction":{"parts":[{"text":"You are a helpful phone agent."}],"role":"user"},"tools":[{"functionDeclarations":[{"name":"get_weather","behavior":"NON_BLOCKING","parameters":{"type":"OBJECT","properties":{"city":{"type":"STRING"}}}}]}],"sessionResumption":{},"inputAudioTranscription":{},"outputAudioTranscription":{},"realtimeInputConfig":{"automaticActivityDetection":{"disabled":false,"silenceDurationMs":100}},"contextWindowCompression":{"slidingWindow":{}}}}"#;

/// The bridge config equivalent to what the JS SDK was given for the capture.
fn js_capture_equivalent() -> SetupParams {
    SetupParams {
        model: "gemini-2.5-flash-native-audio-preview-12-2025".into(),
        voice: Some("Kore".into()),
        language: Some("en-US".into()),
        system_instruction: Some("You are a helpful phone agent.".into()),
        tools: vec![FunctionDeclaration {
            name: "get_weather".into(),
            description: String::new(),
            parameters: Some(json!({"type": "OBJECT", "properties": {"city": {"type": "STRING"}}})),
            behavior: Some("NON_BLOCKING".into()),
        }],
        input_transcription: true,
        output_transcription: true,
        session_resumption: true,
        resume_handle: None,
        vad: ActivityDetection {
            silence_duration_ms: Some(100),
            ..Default::default()
        },
        context_compression: Some(ContextCompression::default()),
        ..Default::default()
    }
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("valid JSON")
}

fn has_key_anywhere(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k == key || has_key_anywhere(v, key)),
        Value::Array(a) => a.iter().any(|v| has_key_anywhere(v, key)),
        _ => false,
    }
}

#[test]
fn matches_js_sdk_capture_exactly() {
    let ours = parse(&setup_message(&js_capture_equivalent()));
    assert_eq!(ours, parse(JS_SDK_SETUP));
}

#[test]
fn embedded_capture_matches_shared_file() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/specs/sdk-captures/js-sdk-client-frames.pretty.json"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("skipping: {path} not present");
        return;
    };
    let capture = parse(&text);
    let frames = capture["js-genai-3.3.0 (@google/genai)"]
        .as_array()
        .expect("capture list");
    let setups: Vec<&Value> = frames
        .iter()
        .filter(|f| f["index"] == 0)
        .map(|f| &f["json"])
        .collect();
    assert_eq!(setups.len(), 2, "api-key and ephemeral connections");
    for s in setups {
        assert_eq!(*s, parse(JS_SDK_SETUP));
    }
}

#[test]
fn never_a_config_key_and_always_camel_case() {
    let mut p = js_capture_equivalent();
    p.vad = ActivityDetection {
        disabled: false,
        start_sensitivity: Some("START_SENSITIVITY_LOW".into()),
        end_sensitivity: Some("END_SENSITIVITY_LOW".into()),
        prefix_padding_ms: Some(20),
        silence_duration_ms: Some(100),
        activity_handling: Some("START_OF_ACTIVITY_INTERRUPTS".into()),
    };
    p.context_compression = Some(ContextCompression {
        trigger_tokens: Some(25600),
        target_tokens: Some(12800),
    });
    let text = setup_message(&p);
    let v = parse(&text);
    assert!(!has_key_anywhere(&v, "config"), "{text}");
    // Only our own keys are checked: tool parameter schemas are passed through as given.
    let mut ours = v.clone();
    ours["setup"]["tools"] = Value::Null;
    fn no_snake(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().all(|(k, v)| !k.contains('_') && no_snake(v)),
            Value::Array(a) => a.iter().all(no_snake),
            _ => true,
        }
    }
    assert!(no_snake(&ours), "{text}");
    assert_eq!(v.as_object().map(|m| m.len()), Some(1));
}

#[test]
fn full_setup_matches_spec_canonical_fields() {
    // The subset of gemini-live.md §5.1 that the bridge sets, with the spec's values.
    let p = SetupParams {
        model: "models/gemini-3.8-live".into(),
        voice: Some("Kore".into()),
        language: Some("en-US".into()),
        system_instruction: Some("You are a phone agent for ACME.".into()),
        tools: vec![FunctionDeclaration {
            name: "get_weather".into(),
            description: "Get the weather for a city".into(),
            parameters: Some(json!({
                "type": "OBJECT",
                "properties": {"city": {"type": "STRING"}},
                "required": ["city"]
            })),
            behavior: Some("NON_BLOCKING".into()),
        }],
        input_transcription: true,
        output_transcription: true,
        session_resumption: true,
        resume_handle: Some("Cj4KB-handle".into()),
        vad: ActivityDetection {
            disabled: false,
            start_sensitivity: Some("START_SENSITIVITY_LOW".into()),
            end_sensitivity: Some("END_SENSITIVITY_LOW".into()),
            prefix_padding_ms: Some(20),
            silence_duration_ms: Some(100),
            activity_handling: Some("START_OF_ACTIVITY_INTERRUPTS".into()),
        },
        context_compression: Some(ContextCompression {
            trigger_tokens: Some(25600),
            target_tokens: Some(12800),
        }),
        ..Default::default()
    };
    assert_eq!(
        parse(&setup_message(&p)),
        json!({"setup": {
            "model": "models/gemini-3.8-live",
            "generationConfig": {
                "responseModalities": ["AUDIO"],
                "speechConfig": {
                    "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}},
                    "languageCode": "en-US"
                }
            },
            "systemInstruction": {"role": "user", "parts": [{"text": "You are a phone agent for ACME."}]},
            "tools": [{"functionDeclarations": [{
                "name": "get_weather",
                "description": "Get the weather for a city",
                "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]},
                "behavior": "NON_BLOCKING"
            }]}],
            "realtimeInputConfig": {
                "automaticActivityDetection": {
                    "disabled": false,
                    "startOfSpeechSensitivity": "START_SENSITIVITY_LOW",
                    "endOfSpeechSensitivity": "END_SENSITIVITY_LOW",
                    "prefixPaddingMs": 20,
                    "silenceDurationMs": 100
                },
                "activityHandling": "START_OF_ACTIVITY_INTERRUPTS"
            },
            "sessionResumption": {"handle": "Cj4KB-handle"},
            "contextWindowCompression": {"triggerTokens": 25600, "slidingWindow": {"targetTokens": 12800}},
            "inputAudioTranscription": {},
            "outputAudioTranscription": {}
        }})
    );
}

#[test]
fn resume_handle_only_with_resumption_and_never_null() {
    let mut p = SetupParams {
        model: "gemini-3.8-live".into(),
        session_resumption: true,
        ..Default::default()
    };
    let v = parse(&setup_message(&p));
    assert_eq!(v["setup"]["sessionResumption"], json!({}));
    assert!(!setup_message(&p).contains("null"));

    p.session_resumption = false;
    p.resume_handle = Some("h".into());
    let v = parse(&setup_message(&p));
    assert!(v["setup"].get("sessionResumption").is_none());
}

#[test]
fn vad_disabled_and_no_interruption() {
    let p = SetupParams {
        model: "gemini-3.8-live".into(),
        vad: ActivityDetection {
            disabled: true,
            activity_handling: Some("NO_INTERRUPTION".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        parse(&setup_message(&p))["setup"]["realtimeInputConfig"],
        json!({"automaticActivityDetection": {"disabled": true}, "activityHandling": "NO_INTERRUPTION"})
    );
    // Only activity handling: no automaticActivityDetection member.
    let p = SetupParams {
        model: "m".into(),
        vad: ActivityDetection {
            activity_handling: Some("NO_INTERRUPTION".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        parse(&setup_message(&p))["setup"]["realtimeInputConfig"],
        json!({"activityHandling": "NO_INTERRUPTION"})
    );
}

#[test]
fn language_without_voice() {
    let p = SetupParams {
        model: "m".into(),
        language: Some("de-DE".into()),
        ..Default::default()
    };
    assert_eq!(
        parse(&setup_message(&p))["setup"]["generationConfig"],
        json!({"responseModalities": ["AUDIO"], "speechConfig": {"languageCode": "de-DE"}})
    );
}
