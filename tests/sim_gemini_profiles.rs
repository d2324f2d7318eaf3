//! Gemini simulator: per-model behaviour profiles (spec §5.2, §6.1, §6.3, §9.4, §10.1, §12.1).
//! Which `setup` fields each model refuses or requires (thinking config, affective dialog,
//! proactivity, tool `behavior`), retired model ids, NON_BLOCKING tool calls with SILENT /
//! WHEN_IDLE / INTERRUPT scheduling (and 3.8's wait for the caller to finish), declared
//! BLOCKING calls on 3.8, extended thinking's `interactionStatus` and `thoughtsTokenCount`,
//! and the 2.5 stall after a `clientContent` without `turnComplete` (with `realtimeInput.text`
//! joining a caller's turn). Everything runs over a real WebSocket with the raw test client.

mod sim_gemini_support;

use std::time::Duration;

use callbridge::sim::gemini::{
    CloseRecord, GeminiSim, GeminiSimBuilder, Reply, Scenario, ToolCall, Turn, TurnTrigger,
};
use serde_json::{json, Value};
use sim_gemini_support::*;

const MODEL_38: &str = "models/gemini-3.8-live";
const MODEL_38_EXT: &str = "models/gemini-3.8-live-extended-thinking";
const MODEL_31: &str = "models/gemini-3.1-flash-live-preview";
const REASON_INVALID: &str = "Request contains an invalid argument.";
const REASON_NOT_FOUND: &str = "Requested entity was not found.";
const CHECKING: &str = "Let me check that for you.";
const SUNNY: &str = "It is sunny in Paris.";

/// Caller audio: 16 kHz, loud enough for the simulator's VAD.
fn caller_tone(ms: u32) -> Vec<i16> {
    (0..ms * 16)
        .map(|i| if i % 8 < 4 { 3000 } else { -3000 })
        .collect()
}

fn silence(ms: u32) -> Vec<i16> {
    vec![0; ms as usize * 16]
}

/// Stream 16 kHz samples in 20 ms chunks, as fast as the socket takes them.
async fn stream(c: &mut Client, samples: &[i16]) {
    for chunk in samples.chunks(320) {
        c.send_audio(chunk).await;
    }
}

fn said(text: &str) -> Reply {
    Reply {
        clip: Some(tone(200)),
        text: text.into(),
    }
}

fn is_sc(v: &Value, key: &str) -> bool {
    v["serverContent"].get(key).is_some()
}

fn is_tool_call(v: &Value) -> bool {
    v.get("toolCall").is_some()
}

/// A setup for `model` with audio out and output transcription.
fn setup_for(model: &str) -> Value {
    json!({
        "model": model,
        "generationConfig": {"responseModalities": ["AUDIO"]},
        "outputAudioTranscription": {},
    })
}

/// The extended-thinking model's minimal valid setup (a `thinkingLevel` is required).
fn setup_ext() -> Value {
    let mut s = setup_for(MODEL_38_EXT);
    s["generationConfig"]["thinkingConfig"] = json!({"thinkingLevel": "LOW"});
    s
}

/// `setup` declaring `get_weather`, with `behavior` if given.
fn with_tool(mut setup: Value, behavior: Option<&str>) -> Value {
    let mut decl = json!({
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
    });
    if let Some(b) = behavior {
        decl["behavior"] = json!(b);
    }
    setup["tools"] = json!([{"functionDeclarations": [decl]}]);
    setup
}

/// Turn 1 says `CHECKING` over `reply_ms` of audio and calls get_weather (at `at_ms` of the
/// reply for NON_BLOCKING), then `SUNNY` once answered; turn 2 answers "Okay.".
fn weather_scenario(reply_ms: u32, at_ms: Option<u64>) -> Scenario {
    Scenario {
        greeting: None,
        turns: vec![
            Turn {
                tool_calls: vec![ToolCall {
                    name: "get_weather".into(),
                    args: json!({"city": "Paris"}),
                }],
                tool_call_at_ms: at_ms,
                after_tool: Some(said(SUNNY)),
                ..Turn::reply(Reply {
                    clip: Some(tone(reply_ms)),
                    text: CHECKING.into(),
                })
            },
            Turn::reply(said("Okay.")),
        ],
        ..Scenario::default()
    }
}

/// Read up to and including the toolCall; returns the messages before it and the call id.
async fn until_tool_call(c: &mut Client) -> (Vec<Value>, String) {
    let mut before = Vec::new();
    loop {
        let m = c.json().await;
        if is_tool_call(&m) {
            let id = m["toolCall"]["functionCalls"][0]["id"]
                .as_str()
                .expect("call id")
                .to_string();
            return (before, id);
        }
        before.push(m);
    }
}

fn call_id(turn: &[Value]) -> String {
    let call = turn.iter().find(|m| is_tool_call(m)).expect("a toolCall");
    call["toolCall"]["functionCalls"][0]["id"]
        .as_str()
        .expect("call id")
        .to_string()
}

fn response(id: &str, scheduling: Option<&str>) -> Value {
    let mut r = json!({"id": id, "name": "get_weather", "response": {"output": "sunny, 21C"}});
    if let Some(s) = scheduling {
        r["scheduling"] = json!(s);
    }
    json!({"toolResponse": {"functionResponses": [r]}})
}

fn turn_complete(turn: &[Value]) -> &Value {
    turn.last().expect("a turnComplete message")
}

async fn nothing_more(c: &mut Client, ms: u64) {
    assert_eq!(
        c.next_within(Duration::from_millis(ms)).await,
        Event::Timeout,
        "expected no further message"
    );
}

/// Send `setup` to a fresh simulator and return the close it answers with instead of
/// `setupComplete`; checks the close was recorded like any other server close.
async fn setup_refusal(setup: Value) -> (Option<u16>, String) {
    setup_refusal_on(GeminiSim::builder(), setup).await
}

async fn setup_refusal_on(builder: GeminiSimBuilder, setup: Value) -> (Option<u16>, String) {
    let sim = builder.spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.send(&json!({ "setup": setup })).await;
    let (code, reason) = match c.next().await {
        Event::Closed { code, reason } => (code, reason),
        other => panic!("expected a close instead of setupComplete, got {other:?}"),
    };
    let rec = sim.record();
    assert_eq!(
        rec.connections[0].close,
        Some(CloseRecord::ByServer {
            code: code.unwrap_or_default(),
            reason: reason.clone(),
        })
    );
    (code, reason)
}

fn invalid() -> (Option<u16>, String) {
    (Some(1007), REASON_INVALID.to_string())
}

// ---- setup refusals ---------------------------------------------------------------------

#[tokio::test]
async fn gemini_3_8_refuses_a_thinking_config() {
    let mut s = setup_for(MODEL_38);
    s["generationConfig"]["thinkingConfig"] = json!({"thinkingLevel": "LOW"});
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_3_8_refuses_enable_affective_dialog_even_when_false() {
    let mut s = setup_for(MODEL_38);
    s["generationConfig"]["enableAffectiveDialog"] = json!(false);
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_3_8_refuses_proactive_audio_false() {
    let mut s = setup_for(MODEL_38);
    s["proactivity"] = json!({"proactive_audio": false});
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn extended_thinking_refuses_a_setup_without_thinking_level() {
    assert_eq!(setup_refusal(setup_for(MODEL_38_EXT)).await, invalid());
    let mut s = setup_for(MODEL_38_EXT);
    s["generationConfig"]["thinkingConfig"] = json!({"includeThoughts": false});
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn extended_thinking_refuses_a_thinking_budget() {
    let mut s = setup_ext();
    s["generationConfig"]["thinkingConfig"]["thinkingBudget"] = json!(1024);
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn extended_thinking_refuses_a_blocking_declaration() {
    let s = with_tool(setup_ext(), Some("BLOCKING"));
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_3_1_refuses_a_non_blocking_declaration() {
    let s = with_tool(setup_for(MODEL_31), Some("NON_BLOCKING"));
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_3_1_refuses_a_thinking_budget() {
    let mut s = setup_for(MODEL_31);
    s["generationConfig"]["thinking_config"] = json!({"thinking_budget": 0});
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_3_1_refuses_enable_affective_dialog() {
    let mut s = setup_for(MODEL_31);
    s["generationConfig"]["enableAffectiveDialog"] = json!(true);
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_3_1_refuses_proactivity() {
    let mut s = setup_for(MODEL_31);
    s["proactivity"] = json!({"proactiveAudio": true});
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn gemini_2_5_refuses_a_thinking_level() {
    let mut s = setup_25();
    s["generationConfig"]["thinkingConfig"] = json!({"thinkingLevel": "LOW"});
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn an_unknown_tool_behavior_is_an_invalid_argument() {
    let s = with_tool(setup_for(MODEL_38), Some("SOMETIMES"));
    assert_eq!(setup_refusal(s).await, invalid());
}

#[tokio::test]
async fn each_model_accepts_the_fields_its_documentation_allows() {
    let sim = GeminiSim::builder().spawn().await.expect("spawn");
    let mut s38 = with_tool(setup_for(MODEL_38), Some("BLOCKING"));
    s38["proactivity"] = json!({"proactiveAudio": true});
    let s38_async = with_tool(setup_for(MODEL_38), Some("NON_BLOCKING"));
    let ext = with_tool(setup_ext(), Some("NON_BLOCKING"));
    let mut s31 = with_tool(setup_for(MODEL_31), Some("BLOCKING"));
    s31["generationConfig"]["thinkingConfig"] = json!({"thinkingLevel": "MINIMAL"});
    let mut s25 = with_tool(setup_25(), Some("NON_BLOCKING"));
    s25["generationConfig"]["thinkingConfig"] = json!({"thinkingBudget": 0});
    s25["generationConfig"]["enableAffectiveDialog"] = json!(true);
    s25["proactivity"] = json!({"proactiveAudio": false});
    let mut vertex = setup_25();
    vertex["model"] = json!("gemini-live-2.5-flash-native-audio");
    for setup in [s38, s38_async, ext, s31, s25, vertex] {
        let mut c = Client::connect(&with_key(&sim.url())).await;
        c.setup(setup).await;
        c.close().await;
    }
}

#[tokio::test]
async fn vertex_2_5_id_behaves_as_2_5_with_one_member_per_event() {
    let sim = fast().spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let mut s = setup_25();
    s["model"] = json!("models/gemini-live-2.5-flash-native-audio");
    c.setup(s).await;
    c.send(&json!({"realtimeInput": {"text": "Greet the caller."}}))
        .await;
    let turn = c.turn().await;
    assert!(!output_text(&turn).is_empty());
    for m in &turn {
        assert_eq!(
            m["serverContent"].as_object().map(|o| o.len()),
            Some(1),
            "{m}"
        );
    }
}

#[tokio::test]
async fn retired_models_are_closed_1008_requested_entity_was_not_found() {
    for id in [
        "models/gemini-live-2.5-flash-preview",
        "gemini-2.0-flash-live-001",
    ] {
        assert_eq!(
            setup_refusal(setup_for(id)).await,
            (Some(1008), REASON_NOT_FOUND.to_string()),
            "{id}"
        );
    }
    // The builder retires more ids, even ones in the model table.
    let builder =
        GeminiSim::builder().retired_models(vec!["models/gemini-3.1-flash-live-preview".into()]);
    assert_eq!(
        setup_refusal_on(builder, setup_for(MODEL_31)).await,
        (Some(1008), REASON_NOT_FOUND.to_string())
    );
    // Ids that never existed keep the "not found for API version" close.
    let (code, reason) = setup_refusal(setup_for("gemini-9.9-live")).await;
    assert_eq!(code, Some(1008));
    assert!(
        reason.starts_with("models/gemini-9.9-live is not found for API version v1beta"),
        "{reason}"
    );
}

// ---- NON_BLOCKING tools (3.8 default) -----------------------------------------------------

#[tokio::test]
async fn non_blocking_call_goes_out_mid_reply_and_silent_result_adds_no_turn() {
    let sim = fast()
        .pace(4.0)
        .scenario(weather_scenario(1000, Some(200)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    // Declared without `behavior`: NON_BLOCKING is 3.8's default.
    c.setup(with_tool(setup_for(MODEL_38), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let turn = c.turn().await;
    let call = turn.iter().position(is_tool_call).expect("toolCall");
    let gen = turn
        .iter()
        .position(|m| is_sc(m, "generationComplete"))
        .expect("the turn completes without waiting for the response");
    let last_audio = turn
        .iter()
        .rposition(|m| is_sc(m, "modelTurn"))
        .expect("audio");
    // 200 ms of 40 ms chunks, then the call, then the rest of the reply.
    let audio_before = audio_bytes(&turn[..call]);
    assert_eq!(audio_before.iter().map(Vec::len).sum::<usize>(), 200 * 48);
    assert!(call < last_audio && last_audio < gen, "{turn:?}");
    assert_eq!(output_text(&turn), CHECKING);
    assert!(!has(&turn, |m| is_sc(m, "interrupted")));
    let id = call_id(&turn);
    c.send(&response(&id, Some("SILENT"))).await;
    nothing_more(&mut c, 500).await;
    let rec = sim.record();
    assert_eq!(rec.connections[0].tool_calls_sent, vec![id]);
    assert_eq!(rec.connections[0].tool_responses.len(), 1);
}

#[tokio::test]
async fn non_blocking_when_idle_result_is_one_new_turn_after_the_first_turn_complete() {
    let sim = fast()
        .pace(2.0)
        .scenario(weather_scenario(2000, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), Some("NON_BLOCKING")))
        .await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let (before, id) = until_tool_call(&mut c).await;
    assert!(
        audio_bytes(&before).is_empty(),
        "called at 0 ms: {before:?}"
    );
    // Answered while the reply is still streaming: it finishes first.
    c.send(&response(&id, Some("WHEN_IDLE"))).await;
    let rest = c.turn().await;
    assert_eq!(output_text(&rest), CHECKING);
    assert!(has(&rest, |m| is_sc(m, "generationComplete")));
    assert!(!has(&rest, |m| is_sc(m, "interrupted")));
    let result = c.turn().await;
    assert_eq!(output_text(&result), SUNNY);
    assert_eq!(
        audio_bytes(&result).iter().map(Vec::len).sum::<usize>(),
        tone(200).samples().len() * 2
    );
    assert!(has(&result, |m| is_sc(m, "generationComplete")));
    // 3.x: transcription rides in the audio events.
    assert!(result
        .iter()
        .filter(|m| is_sc(m, "outputTranscription"))
        .all(|m| is_sc(m, "modelTurn")));
    nothing_more(&mut c, 400).await;
    // The result turn did not use up a scripted turn.
    c.send(&json!({"realtimeInput": {"text": "Thanks."}})).await;
    assert_eq!(output_text(&c.turn().await), "Okay.");
}

#[tokio::test]
async fn non_blocking_interrupt_result_cuts_the_reply_then_speaks_the_result() {
    let sim = fast()
        .pace(2.0)
        .scenario(weather_scenario(3000, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let (_, id) = until_tool_call(&mut c).await;
    c.send(&response(&id, Some("INTERRUPT"))).await;
    let cut = c.turn().await;
    let n = cut.len();
    assert!(n >= 2);
    assert_eq!(cut[n - 2], json!({"serverContent": {"interrupted": true}}));
    assert!(is_sc(&cut[n - 1], "turnComplete"));
    assert!(!has(&cut, |m| is_sc(m, "generationComplete")
        || m.get("toolCallCancellation").is_some()));
    assert!(
        audio_bytes(&cut).iter().map(Vec::len).sum::<usize>() < tone(3000).samples().len() * 2,
        "the reply was cut short"
    );
    let result = c.turn().await;
    assert_eq!(output_text(&result), SUNNY);
    assert!(has(&result, |m| is_sc(m, "generationComplete")));
    nothing_more(&mut c, 300).await;
}

#[tokio::test]
async fn gemini_3_8_holds_an_interrupt_result_until_the_caller_finishes_speaking() {
    let sim = fast()
        .scenario(weather_scenario(200, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let first = c.turn().await;
    let id = call_id(&first);
    stream(&mut c, &caller_tone(600)).await;
    c.send(&response(&id, Some("INTERRUPT"))).await;
    // The caller is still talking: the result waits.
    nothing_more(&mut c, 300).await;
    stream(&mut c, &silence(1000)).await;
    let result = c.turn().await;
    assert_eq!(output_text(&result), SUNNY);
    let answer = c.turn().await;
    assert_eq!(output_text(&answer), "Okay.");
    let rec = sim.record();
    assert_eq!(rec.connections[0].user_turns.len(), 2);
    assert_eq!(rec.connections[0].user_turns[1].trigger, TurnTrigger::Vad);
}

#[tokio::test]
async fn gemini_2_5_speaks_an_interrupt_result_at_once_while_the_caller_speaks() {
    let sim = fast()
        .scenario(weather_scenario(200, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_25(), Some("NON_BLOCKING"))).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let first = c.turn().await;
    let id = call_id(&first);
    stream(&mut c, &caller_tone(600)).await;
    c.send(&response(&id, Some("INTERRUPT"))).await;
    // Before the caller's turn has ended.
    let result = c.turn().await;
    assert_eq!(output_text(&result), SUNNY);
    stream(&mut c, &silence(1000)).await;
    assert_eq!(output_text(&c.turn().await), "Okay.");
}

#[tokio::test]
async fn barge_in_does_not_cancel_an_outstanding_non_blocking_call() {
    let sim = fast()
        .pace(2.0)
        .scenario(weather_scenario(3000, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let (_, id) = until_tool_call(&mut c).await;
    c.send(&json!({"realtimeInput": {"text": "And tomorrow?"}}))
        .await;
    let cut = c.turn().await;
    assert!(has(&cut, |m| is_sc(m, "interrupted")));
    assert!(!has(&cut, |m| m.get("toolCallCancellation").is_some()));
    assert_eq!(output_text(&c.turn().await), "Okay.");
    // The call kept running; its late result is spoken.
    c.send(&response(&id, None)).await;
    assert_eq!(output_text(&c.turn().await), SUNNY);
}

#[tokio::test]
async fn a_scheduling_other_than_silent_when_idle_or_interrupt_closes_1007() {
    let sim = fast()
        .scenario(weather_scenario(200, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let first = c.turn().await;
    c.send(&response(&call_id(&first), Some("LATER"))).await;
    assert_eq!(c.expect_close().await, invalid());
}

// ---- BLOCKING on 3.8 ----------------------------------------------------------------------

#[tokio::test]
async fn gemini_3_8_declared_blocking_call_still_waits_for_the_response() {
    // tool_call_at_ms only applies to NON_BLOCKING calls.
    let sim = fast()
        .scenario(weather_scenario(400, Some(0)))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), Some("BLOCKING")))
        .await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let (before, id) = until_tool_call(&mut c).await;
    assert_eq!(output_text(&before), CHECKING);
    assert!(!has(&before, |m| is_sc(m, "generationComplete")
        || is_sc(m, "turnComplete")));
    nothing_more(&mut c, 500).await;
    c.send(&response(&id, None)).await;
    let rest = c.turn().await;
    assert_eq!(output_text(&rest), SUNNY);
    assert!(has(&rest, |m| is_sc(m, "generationComplete")));
}

#[tokio::test]
async fn gemini_3_8_declared_blocking_call_is_cancelled_by_new_input() {
    let sim = fast()
        .scenario(weather_scenario(200, None))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), Some("BLOCKING")))
        .await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let (_, id) = until_tool_call(&mut c).await;
    c.send(&json!({"realtimeInput": {"text": "Never mind."}}))
        .await;
    let t = c.turn().await;
    assert_eq!(t[0], json!({"toolCallCancellation": {"ids": [id]}}));
    assert_eq!(t[1], json!({"serverContent": {"interrupted": true}}));
    assert!(is_sc(&t[2], "turnComplete"));
    assert_eq!(output_text(&c.turn().await), "Okay.");
}

// ---- extended thinking --------------------------------------------------------------------

#[tokio::test]
async fn extended_thinking_reports_in_progress_until_the_result_is_spoken_then_idle() {
    let sim = fast()
        .scenario(weather_scenario(200, None))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_ext(), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let first = c.turn().await;
    // Without tool_call_at_ms the call follows the reply audio; the turn does not wait.
    let call = first.iter().position(is_tool_call).expect("toolCall");
    let last_audio = first
        .iter()
        .rposition(|m| is_sc(m, "modelTurn"))
        .expect("audio");
    let gen = first
        .iter()
        .position(|m| is_sc(m, "generationComplete"))
        .expect("generationComplete");
    assert!(last_audio < call && call < gen, "{first:?}");
    let done = turn_complete(&first);
    assert_eq!(done["serverContent"]["interactionStatus"], "IN_PROGRESS");
    let usage = &done["usageMetadata"];
    let thoughts = usage["thoughtsTokenCount"].as_u64().expect("thoughts");
    assert!(thoughts > 0, "{usage}");
    assert_eq!(
        usage["totalTokenCount"].as_u64(),
        Some(
            usage["promptTokenCount"].as_u64().expect("prompt")
                + usage["responseTokenCount"].as_u64().expect("response")
                + thoughts
        )
    );
    // No scheduling: WHEN_IDLE, and the model is idle, so the result is spoken at once.
    c.send(&response(&call_id(&first), None)).await;
    let result = c.turn().await;
    assert_eq!(output_text(&result), SUNNY);
    let done = turn_complete(&result);
    assert_eq!(done["serverContent"]["interactionStatus"], "IDLE");
    assert!(done["usageMetadata"]["thoughtsTokenCount"].as_u64() > Some(0));
}

#[tokio::test]
async fn models_without_background_reasoning_send_no_interaction_status() {
    let sim = fast()
        .scenario(weather_scenario(200, None))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(with_tool(setup_for(MODEL_38), None)).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let first = c.turn().await;
    let done = turn_complete(&first);
    assert!(done["serverContent"].get("interactionStatus").is_none());
    assert!(done["usageMetadata"].get("thoughtsTokenCount").is_none());
}

// ---- clientContent without turnComplete ----------------------------------------------------

fn three_answers() -> Scenario {
    Scenario {
        greeting: Some(said("Hello.")),
        turns: vec![
            Turn::reply(said("Answer one.")),
            Turn::reply(said("Answer two.")),
        ],
        ..Scenario::default()
    }
}

/// Greet (clientContent turnComplete:true), then send a context note without turnComplete.
async fn greet_then_note(c: &mut Client) {
    c.send(&json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Greet."}]}], "turnComplete": true}}))
        .await;
    assert_eq!(output_text(&c.turn().await), "Hello.");
    c.send(&json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "The caller is a VIP."}]}], "turnComplete": false}}))
        .await;
}

async fn speak(c: &mut Client) {
    stream(c, &caller_tone(400)).await;
    stream(c, &silence(1000)).await;
}

#[tokio::test]
async fn gemini_2_5_stops_answering_audio_after_client_content_without_turn_complete() {
    let sim = fast()
        .scenario(three_answers())
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    greet_then_note(&mut c).await;
    speak(&mut c).await;
    nothing_more(&mut c, 600).await;
    // The caller's turn was heard, not answered.
    let rec = sim.record();
    let turns = &rec.connections[0].user_turns;
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[1].trigger, TurnTrigger::Vad);
    // turnComplete:true ends the stall with a reply, and later audio is answered again.
    c.send(&json!({"client_content": {"turn_complete": true}}))
        .await;
    assert_eq!(output_text(&c.turn().await), "Answer one.");
    speak(&mut c).await;
    assert_eq!(output_text(&c.turn().await), "Answer two.");
}

#[tokio::test]
async fn gemini_2_5_still_answers_realtime_text_while_stalled() {
    let sim = fast()
        .scenario(three_answers())
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    greet_then_note(&mut c).await;
    c.send(&json!({"realtimeInput": {"text": "Hello?"}})).await;
    assert_eq!(output_text(&c.turn().await), "Answer one.");
    // Only a clientContent with turnComplete:true ends the stall.
    speak(&mut c).await;
    nothing_more(&mut c, 600).await;
}

#[tokio::test]
async fn gemini_3_8_keeps_answering_audio_after_client_content_without_turn_complete() {
    let sim = fast()
        .scenario(three_answers())
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_for(MODEL_38)).await;
    greet_then_note(&mut c).await;
    speak(&mut c).await;
    assert_eq!(output_text(&c.turn().await), "Answer one.");
}

#[tokio::test]
async fn gemini_2_5_realtime_text_while_the_caller_speaks_joins_their_turn() {
    let sim = fast()
        .scenario(Scenario {
            greeting: None,
            turns: vec![Turn::reply(said("Okay."))],
            ..Scenario::default()
        })
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    stream(&mut c, &caller_tone(600)).await;
    c.send(&json!({"realtimeInput": {"text": "The caller pressed 3."}}))
        .await;
    nothing_more(&mut c, 300).await;
    stream(&mut c, &silence(1000)).await;
    assert_eq!(output_text(&c.turn().await), "Okay.");
    nothing_more(&mut c, 400).await;
    let rec = sim.record();
    let turns = &rec.connections[0].user_turns;
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].trigger, TurnTrigger::Vad);
}
