//! `gemini::wire` against every server example of gemini-live.md §7 and exact client frames.
//!
//! Server frames below are copied from the spec (§7.1–§7.7, §7.2 3.x multi-part example);
//! where the spec elides base64 ("<base64>") a small known payload is substituted.

use std::time::Duration;

use callbridge::gemini::wire::{
    decompose, to_json, FunctionCall, FunctionResponse, ModelCommand, ModelEvent, Role, Scheduling,
    Turn, UsageMetadata, WireError,
};
use serde_json::json;

fn events(frame: &str) -> Vec<ModelEvent> {
    decompose(frame.as_bytes()).unwrap_or_else(|e| panic!("{frame} failed: {e}"))
}

// PCM bytes 00 01 00 01 ff 7f (the base64 "AAEAAQ==" from the JS capture plus 0x7fff).
const PCM: [u8; 6] = [0x00, 0x01, 0x00, 0x01, 0xff, 0x7f];
const PCM_B64: &str = "AAEAAf9/";

#[test]
fn setup_complete() {
    assert_eq!(
        events(r#"{"setupComplete": {}}"#),
        [ModelEvent::SetupComplete]
    );
    // Optional sessionId is tolerated.
    assert_eq!(
        events(r#"{"setupComplete": {"sessionId": "abc"}}"#),
        [ModelEvent::SetupComplete]
    );
}

#[test]
fn audio_chunk() {
    let f = format!(
        r#"{{"serverContent": {{"modelTurn": {{"parts": [{{"inlineData": {{"mimeType": "audio/pcm;rate=24000", "data": "{PCM_B64}"}}}}]}}}}}}"#
    );
    assert_eq!(events(&f), [ModelEvent::Audio(PCM.to_vec())]);
}

#[test]
fn audio_url_safe_and_unpadded_base64_accepted() {
    // 0xfb 0xff 0xbf encodes to "+/+/" standard, "-_-_" URL-safe.
    let bytes = vec![0xfb, 0xff, 0xbf];
    for data in ["+/+/", "-_-_"] {
        let f = format!(
            r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}}]}}}}}}"#
        );
        assert_eq!(events(&f), [ModelEvent::Audio(bytes.clone())], "{data}");
    }
    // Two bytes: padded and unpadded, both alphabets.
    for data in ["__8=", "__8", "//8=", "//8"] {
        let f = format!(
            r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm","data":"{data}"}}}}]}}}}}}"#
        );
        assert_eq!(events(&f), [ModelEvent::Audio(vec![0xff, 0xff])], "{data}");
    }
}

#[test]
fn bad_base64_is_an_error_naming_the_field() {
    let f = r#"{"serverContent":{"modelTurn":{"parts":[{"text":"hi"},{"inlineData":{"mimeType":"audio/pcm;rate=24000","data":"@@@!"}}]}}}"#;
    let err = decompose(f.as_bytes()).unwrap_err();
    assert!(matches!(err, WireError::BadBase64 { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("serverContent.modelTurn.parts[1].inlineData.data"),
        "{msg}"
    );
}

#[test]
fn unsupported_audio_rate_is_an_error() {
    let f = r#"{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=16000","data":"AAAA"}}]}}}"#;
    let err = decompose(f.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("audio/pcm;rate=16000"), "{err}");
}

#[test]
fn transcripts() {
    assert_eq!(
        events(r#"{"serverContent": {"outputTranscription": {"text": "Sure, let me"}}}"#),
        [ModelEvent::OutputTranscription("Sure, let me".into())]
    );
    assert_eq!(
        events(r#"{"serverContent": {"inputTranscription": {"text": "what's my bal"}}}"#),
        [ModelEvent::InputTranscription("what's my bal".into())]
    );
    // `finished` without text yields nothing.
    assert!(events(r#"{"serverContent": {"inputTranscription": {"finished": true}}}"#).is_empty());
}

#[test]
fn generation_complete() {
    assert_eq!(
        events(r#"{"serverContent": {"generationComplete": true}}"#),
        [ModelEvent::GenerationComplete]
    );
}

#[test]
fn turn_complete_with_usage_in_one_frame() {
    let f = r#"{"serverContent": {"turnComplete": true}, "usageMetadata": {"promptTokenCount": 147, "responseTokenCount": 36, "totalTokenCount": 183}}"#;
    assert_eq!(
        events(f),
        [
            ModelEvent::TurnComplete,
            ModelEvent::Usage(UsageMetadata {
                prompt_token_count: 147,
                response_token_count: 36,
                total_token_count: 183,
                ..Default::default()
            })
        ]
    );
}

#[test]
fn usage_with_modality_details_and_string_int64() {
    let f = r#"{"usageMetadata": {"promptTokenCount": "373", "responseTokenCount": 23, "totalTokenCount": 396,
      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}, {"modality": "AUDIO", "tokenCount": 253}],
      "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 23}]}}"#;
    assert_eq!(
        events(f),
        [ModelEvent::Usage(UsageMetadata {
            prompt_token_count: 373,
            response_token_count: 23,
            total_token_count: 396,
            prompt_details: vec![("TEXT".into(), 120), ("AUDIO".into(), 253)],
            response_details: vec![("AUDIO".into(), 23)],
            thoughts_token_count: 0
        })]
    );
}

#[test]
fn usage_only_server_content_is_fine() {
    // 3.1 sends an empty serverContent with usage before the first modelTurn.
    let f =
        r#"{"serverContent": {}, "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}}"#;
    assert_eq!(
        events(f),
        [ModelEvent::Usage(UsageMetadata {
            prompt_token_count: 5,
            total_token_count: 5,
            ..Default::default()
        })]
    );
}

#[test]
fn interrupted() {
    assert_eq!(
        events(r#"{"serverContent": {"interrupted": true}}"#),
        [ModelEvent::Interrupted]
    );
}

#[test]
fn interrupted_and_turn_complete_share_a_frame_in_order() {
    let f = r#"{"serverContent": {"turnComplete": true, "interrupted": true}}"#;
    assert_eq!(
        events(f),
        [ModelEvent::Interrupted, ModelEvent::TurnComplete]
    );
}

#[test]
fn tool_call_with_several_calls() {
    let f = r#"{"toolCall": {"functionCalls": [
        {"id": "function-call-123", "name": "get_weather", "args": {"city": "Paris"}},
        {"id": "function-call-124", "name": "end_call"}]}}"#;
    assert_eq!(
        events(f),
        [ModelEvent::ToolCall(vec![
            FunctionCall {
                id: "function-call-123".into(),
                name: "get_weather".into(),
                args: json!({"city": "Paris"}),
            },
            FunctionCall {
                id: "function-call-124".into(),
                name: "end_call".into(),
                args: json!({}),
            },
        ])]
    );
}

#[test]
fn tool_call_without_id_is_an_error() {
    let f = r#"{"toolCall": {"functionCalls": [{"name": "get_weather"}]}}"#;
    let err = decompose(f.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("toolCall.functionCalls[0].id"),
        "{err}"
    );
}

#[test]
fn tool_call_cancellation() {
    assert_eq!(
        events(r#"{"toolCallCancellation": {"ids": ["function-call-123"]}}"#),
        [ModelEvent::ToolCallCancellation(vec![
            "function-call-123".into()
        ])]
    );
}

#[test]
fn go_away() {
    assert_eq!(
        events(r#"{"goAway": {"timeLeft": "50s"}}"#),
        [ModelEvent::GoAway {
            time_left: Some(Duration::from_secs(50))
        }]
    );
    assert_eq!(
        events(r#"{"goAway": {"timeLeft": "9.5s"}}"#),
        [ModelEvent::GoAway {
            time_left: Some(Duration::from_millis(9500))
        }]
    );
    assert_eq!(
        events(r#"{"goAway": {}}"#),
        [ModelEvent::GoAway { time_left: None }]
    );
    let err = decompose(br#"{"goAway": {"timeLeft": "soon"}}"#).unwrap_err();
    assert!(err.to_string().contains("\"soon\""), "{err}");
}

#[test]
fn session_resumption_update_both_forms() {
    assert_eq!(
        events(r#"{"sessionResumptionUpdate": {"newHandle": "Cj4KB-opaque", "resumable": true}}"#),
        [ModelEvent::SessionResumptionUpdate {
            new_handle: Some("Cj4KB-opaque".into()),
            resumable: true
        }]
    );
    assert_eq!(
        events(r#"{"sessionResumptionUpdate": {"resumable": false}}"#),
        [ModelEvent::SessionResumptionUpdate {
            new_handle: None,
            resumable: false
        }]
    );
    // Vertex-only index is ignored; an empty handle counts as none.
    assert_eq!(
        events(
            r#"{"sessionResumptionUpdate": {"newHandle": "", "resumable": false, "lastConsumedClientMessageIndex": "42"}}"#
        ),
        [ModelEvent::SessionResumptionUpdate {
            new_handle: None,
            resumable: false
        }]
    );
}

#[test]
fn multi_part_3x_frame_audio_and_transcription() {
    let f = format!(
        r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{PCM_B64}"}}}},{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"AAA="}}}}]}},"outputTranscription":{{"text":"Hello"}},"inputTranscription":{{"text":"hi"}}}}}}"#
    );
    assert_eq!(
        events(&f),
        [
            ModelEvent::InputTranscription("hi".into()),
            ModelEvent::Audio(PCM.to_vec()),
            ModelEvent::Audio(vec![0, 0]),
            ModelEvent::OutputTranscription("Hello".into()),
        ]
    );
}

#[test]
fn full_ordering_within_server_content() {
    let f = format!(
        r#"{{"usageMetadata":{{"totalTokenCount":1}},"serverContent":{{"turnComplete":true,"generationComplete":true,"interrupted":false,"outputTranscription":{{"text":"b"}},"modelTurn":{{"role":"model","parts":[{{"text":"a"}},{{"text":"secret","thought":true}},{{"inlineData":{{"mimeType":"audio/pcm","data":"{PCM_B64}"}}}}]}},"inputTranscription":{{"text":"q"}},"groundingMetadata":{{}},"turnCompleteReason":"NEED_MORE_INPUT","waitingForInput":true}}}}"#
    );
    assert_eq!(
        events(&f),
        [
            ModelEvent::InputTranscription("q".into()),
            ModelEvent::Text("a".into()),
            ModelEvent::Audio(PCM.to_vec()),
            ModelEvent::OutputTranscription("b".into()),
            ModelEvent::GenerationComplete,
            // Why the turn ended and the model's deliberate silence come just before it.
            ModelEvent::TurnCompleteReason("NEED_MORE_INPUT".into()),
            ModelEvent::WaitingForInput,
            ModelEvent::TurnComplete,
            ModelEvent::Usage(UsageMetadata {
                total_token_count: 1,
                ..Default::default()
            }),
        ]
    );
}

#[test]
fn snake_case_keys_accepted() {
    let f = format!(
        r#"{{"server_content":{{"model_turn":{{"parts":[{{"inline_data":{{"mime_type":"audio/pcm;rate=24000","data":"{PCM_B64}"}}}}]}},"turn_complete":true}},"usage_metadata":{{"prompt_token_count":2}}}}"#
    );
    assert_eq!(
        events(&f),
        [
            ModelEvent::Audio(PCM.to_vec()),
            ModelEvent::TurnComplete,
            ModelEvent::Usage(UsageMetadata {
                prompt_token_count: 2,
                ..Default::default()
            }),
        ]
    );
    assert_eq!(
        events(r#"{"tool_call_cancellation":{"ids":["x"]}}"#),
        [ModelEvent::ToolCallCancellation(vec!["x".into()])]
    );
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        events(r#"{"voiceActivity": {"type": "ACTIVITY_START", "audioOffset": "3.240s"}}"#),
        [ModelEvent::Unknown("voiceActivity".into())]
    );
}

#[test]
fn non_json_and_non_object_are_errors() {
    assert!(matches!(
        decompose(b"not json").unwrap_err(),
        WireError::NotJson(_)
    ));
    assert!(matches!(
        decompose(&[0xff, 0xfe]).unwrap_err(),
        WireError::NotUtf8(_)
    ));
    let err = decompose(b"[1,2]").unwrap_err();
    assert!(err.to_string().contains("array"), "{err}");
}

#[test]
fn wrong_type_names_the_field() {
    let err = decompose(br#"{"serverContent":{"turnComplete":"yes"}}"#).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("serverContent.turnComplete"), "{msg}");
    assert!(msg.contains("boolean"), "{msg}");
    let err = decompose(br#"{"serverContent":[]}"#).unwrap_err();
    assert!(err.to_string().contains("`serverContent`"), "{err}");
}

// ---- to_json ---------------------------------------------------------------------------

#[test]
fn audio_command_exact() {
    assert_eq!(
        to_json(&ModelCommand::Audio(&[0x00, 0x01, 0x00, 0x01])),
        r#"{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"AAEAAQ=="}}}"#
    );
    // Standard alphabet with padding, never URL-safe.
    assert_eq!(
        to_json(&ModelCommand::Audio(&[0xfb, 0xff])),
        r#"{"realtimeInput":{"audio":{"mimeType":"audio/pcm;rate=16000","data":"+/8="}}}"#
    );
}

#[test]
fn realtime_input_commands_exact() {
    assert_eq!(
        to_json(&ModelCommand::AudioStreamEnd),
        r#"{"realtimeInput":{"audioStreamEnd":true}}"#
    );
    assert_eq!(
        to_json(&ModelCommand::ActivityStart),
        r#"{"realtimeInput":{"activityStart":{}}}"#
    );
    assert_eq!(
        to_json(&ModelCommand::ActivityEnd),
        r#"{"realtimeInput":{"activityEnd":{}}}"#
    );
    assert_eq!(
        to_json(&ModelCommand::Text("The caller pressed \"3\"")),
        r#"{"realtimeInput":{"text":"The caller pressed \"3\""}}"#
    );
}

#[test]
fn client_content_exact() {
    let turns = [
        Turn {
            role: Role::User,
            text: "Hello there".into(),
        },
        Turn {
            role: Role::Model,
            text: "Hi!".into(),
        },
    ];
    assert_eq!(
        to_json(&ModelCommand::ClientContent {
            turns: &turns,
            turn_complete: true
        }),
        r#"{"clientContent":{"turns":[{"role":"user","parts":[{"text":"Hello there"}]},{"role":"model","parts":[{"text":"Hi!"}]}],"turnComplete":true}}"#
    );
    assert_eq!(
        to_json(&ModelCommand::ClientContent {
            turns: &[],
            turn_complete: true
        }),
        r#"{"clientContent":{"turnComplete":true}}"#
    );
}

#[test]
fn tool_response_exact() {
    let responses = [
        FunctionResponse {
            id: "function-call-123".into(),
            name: "get_weather".into(),
            response: json!({"output": "sunny"}),
            scheduling: None,
        },
        FunctionResponse {
            id: "function-call-124".into(),
            name: "transfer".into(),
            response: json!({"error": "no agent"}),
            scheduling: Some(Scheduling::WhenIdle),
        },
    ];
    // A BLOCKING call's response has no scheduling; a NON_BLOCKING one names it.
    assert_eq!(
        to_json(&ModelCommand::ToolResponse(&responses)),
        r#"{"toolResponse":{"functionResponses":[{"id":"function-call-123","name":"get_weather","response":{"output":"sunny"}},{"id":"function-call-124","name":"transfer","response":{"error":"no agent"},"scheduling":"WHEN_IDLE"}]}}"#
    );
}

#[test]
fn client_frames_match_js_sdk_capture_shapes() {
    // Raw frames from sdk-captures/js-genai-3.3.0_session-and-ephemeral.jsonl (conn 4), compared
    // as JSON values since key order differs.
    let cases: [(ModelCommand<'_>, &str); 3] = [
        (
            ModelCommand::Audio(&[0x00, 0x01, 0x00, 0x01]),
            r#"{"realtimeInput":{"audio":{"data":"AAEAAQ==","mimeType":"audio/pcm;rate=16000"}}}"#,
        ),
        (
            ModelCommand::AudioStreamEnd,
            r#"{"realtimeInput":{"audioStreamEnd":true}}"#,
        ),
        (
            ModelCommand::Text("call a tool"),
            r#"{"realtimeInput":{"text":"call a tool"}}"#,
        ),
    ];
    for (cmd, captured) in cases {
        let ours: serde_json::Value = serde_json::from_str(&to_json(&cmd)).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(captured).unwrap();
        assert_eq!(ours, theirs);
    }
    let turns = [Turn {
        role: Role::User,
        text: "Hello there".into(),
    }];
    let ours: serde_json::Value = serde_json::from_str(&to_json(&ModelCommand::ClientContent {
        turns: &turns,
        turn_complete: true,
    }))
    .unwrap();
    assert_eq!(
        ours,
        json!({"clientContent":{"turns":[{"parts":[{"text":"Hello there"}],"role":"user"}],"turnComplete":true}})
    );
}

#[test]
fn audio_round_trips_through_decoder_base64() {
    // What we send is decodable by our own lenient decoder (and odd byte counts survive).
    let pcm: Vec<u8> = (0..=255u8).chain(0..7).collect();
    let sent: serde_json::Value =
        serde_json::from_str(&to_json(&ModelCommand::Audio(&pcm))).unwrap();
    let data = sent["realtimeInput"]["audio"]["data"].as_str().unwrap();
    let frame = format!(
        r#"{{"serverContent":{{"modelTurn":{{"parts":[{{"inlineData":{{"mimeType":"audio/pcm;rate=24000","data":"{data}"}}}}]}}}}}}"#
    );
    assert_eq!(events(&frame), [ModelEvent::Audio(pcm)]);
}
