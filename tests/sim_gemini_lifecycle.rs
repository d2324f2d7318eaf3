//! Gemini simulator: tool calls, goAway/lifetime, resumption and fault injection
//! (spec §13 items 11, 16-19).

mod sim_gemini_support;

use std::time::{Duration, Instant};

use callbridge::sim::gemini::{
    CloseRecord, FaultAction, GeminiSim, Reply, Scenario, ToolCall, Turn, TurnFault,
};
use serde_json::{json, Value};
use sim_gemini_support::*;

fn said(text: &str) -> Reply {
    Reply {
        clip: Some(tone(200)),
        text: text.into(),
    }
}

fn is_sc(v: &Value, key: &str) -> bool {
    v["serverContent"].get(key).is_some()
}

fn tool_scenario() -> Scenario {
    Scenario {
        greeting: None,
        turns: vec![Turn {
            tool_calls: vec![ToolCall {
                name: "get_weather".into(),
                args: json!({"city": "Paris"}),
            }],
            after_tool: Some(said("It is sunny in Paris.")),
            ..Turn::reply(said("Let me check."))
        }],
        ..Scenario::default()
    }
}

/// Read up to the toolCall; returns the messages before it and the call.
async fn until_tool_call(c: &mut Client) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let m = c.json().await;
        if m.get("toolCall").is_some() {
            return (before, m);
        }
        before.push(m);
    }
}

#[tokio::test]
async fn tool_call_blocks_until_tool_response_then_continues() {
    let sim = fast()
        .scenario(tool_scenario())
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"text": "What's the weather?"}}))
        .await;
    let (before, call) = until_tool_call(&mut c).await;
    assert_eq!(output_text(&before), "Let me check.");
    assert!(!has(&before, |m| is_sc(m, "generationComplete")
        || is_sc(m, "turnComplete")));
    let calls = call["toolCall"]["functionCalls"]
        .as_array()
        .expect("calls")
        .clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["name"], "get_weather");
    assert_eq!(calls[0]["args"], json!({"city": "Paris"}));
    let id = calls[0]["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("function-call-"));
    // BLOCKING: nothing more until the response.
    assert_eq!(
        c.next_within(Duration::from_millis(500)).await,
        Event::Timeout
    );
    c.send(&json!({"tool_response": {"functionResponses": [
        {"id": id, "name": "get_weather", "response": {"result": "sunny, 21C"}}]}}))
        .await;
    let rest = c.turn().await;
    assert_eq!(output_text(&rest), "It is sunny in Paris.");
    assert!(has(&rest, |m| is_sc(m, "generationComplete")));
    let rec = sim.record();
    assert_eq!(rec.connections[0].tool_calls_sent, vec![id.clone()]);
    assert_eq!(
        rec.connections[0].tool_responses[0]["response"],
        json!({"result": "sunny, 21C"})
    );
    // The next call gets a fresh id.
    c.send(&json!({"realtimeInput": {"text": "And tomorrow?"}}))
        .await;
    let (_, call2) = until_tool_call(&mut c).await;
    assert_ne!(
        call2["toolCall"]["functionCalls"][0]["id"].as_str(),
        Some(id.as_str())
    );
}

#[tokio::test]
async fn tool_response_with_unknown_id_closes_1008_and_without_id_1007() {
    let sim = fast()
        .scenario(tool_scenario())
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"text": "weather"}})).await;
    until_tool_call(&mut c).await;
    c.send(&json!({"toolResponse": {"functionResponses": [{"id": "function-call-999999", "response": {}}]}}))
        .await;
    assert_eq!(
        c.expect_close().await,
        (Some(1008), "Requested entity was not found.".to_string())
    );

    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"text": "weather"}})).await;
    until_tool_call(&mut c).await;
    c.send(
        &json!({"toolResponse": {"functionResponses": [{"name": "get_weather", "response": {}}]}}),
    )
    .await;
    assert_eq!(
        c.expect_close().await,
        (
            Some(1007),
            "Request contains an invalid argument.".to_string()
        )
    );
}

#[tokio::test]
async fn interrupting_a_pending_tool_call_cancels_it() {
    let sim = fast()
        .scenario(tool_scenario())
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"text": "weather"}})).await;
    let (_, call) = until_tool_call(&mut c).await;
    let id = call["toolCall"]["functionCalls"][0]["id"].clone();
    c.send(&json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "never mind"}]}], "turnComplete": false}}))
        .await;
    let t = c.turn().await;
    assert_eq!(t[0], json!({"toolCallCancellation": {"ids": [id]}}));
    assert_eq!(t[1], json!({"serverContent": {"interrupted": true}}));
    assert!(is_sc(&t[2], "turnComplete"));
    // A late response for the cancelled call is tolerated.
    c.send(&json!({"toolResponse": {"functionResponses": [{"id": id, "response": {}}]}}))
        .await;
    assert_eq!(
        c.next_within(Duration::from_millis(300)).await,
        Event::Timeout
    );
}

#[tokio::test]
async fn go_away_then_close_when_the_lifetime_ends() {
    let sim = GeminiSim::builder()
        .lifetime(Duration::from_millis(1500))
        .go_away_lead(Duration::from_secs(1))
        .spawn()
        .await
        .expect("spawn");
    let start = Instant::now();
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    assert_eq!(c.json().await, json!({"goAway": {"timeLeft": "1s"}}));
    let go_away_at = start.elapsed();
    let (code, reason) = c.expect_close().await;
    let closed_at = start.elapsed();
    println!("goAway at {go_away_at:?}, close at {closed_at:?}");
    assert_eq!(
        (code, reason.as_str()),
        (
            Some(1011),
            "Deadline expired before operation could complete."
        )
    );
    assert!(go_away_at >= Duration::from_millis(400) && go_away_at < Duration::from_millis(1000));
    assert!(closed_at >= Duration::from_millis(1400) && closed_at < Duration::from_millis(2500));
}

#[tokio::test]
async fn resumption_handle_restores_the_script_position() {
    let scenario = Scenario {
        greeting: Some(said("Hello.")),
        turns: vec![
            Turn::reply(said("First.")),
            Turn::reply(said("Second.")),
            Turn::reply(said("Third.")),
        ],
        ..Scenario::default()
    };
    let sim = fast().scenario(scenario).spawn().await.expect("spawn");
    let mut setup = setup_25();
    setup["sessionResumption"] = json!({});
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup.clone()).await;
    let initial = c.json().await;
    assert_eq!(initial["sessionResumptionUpdate"]["resumable"], json!(true));
    c.send(&json!({"realtimeInput": {"text": "greet"}})).await;
    let t = c.turn().await;
    // Not resumable while generating.
    assert_eq!(
        t[0],
        json!({"sessionResumptionUpdate": {"resumable": false}})
    );
    assert_eq!(output_text(&t), "Hello.");
    let _after_greeting = c.json().await;
    c.send(&json!({"realtimeInput": {"text": "question"}}))
        .await;
    assert_eq!(output_text(&c.turn().await), "First.");
    let upd = c.json().await;
    assert_eq!(upd["sessionResumptionUpdate"]["resumable"], json!(true));
    let handle = upd["sessionResumptionUpdate"]["newHandle"]
        .as_str()
        .expect("handle")
        .to_string();
    c.close().await;

    // New connection with the handle: the script continues at "Second." (and no greeting).
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let mut resumed = setup.clone();
    resumed["sessionResumption"] = json!({"handle": handle});
    c.setup(resumed).await;
    let _fresh = c.json().await;
    c.send(&json!({"realtimeInput": {"text": "again"}})).await;
    assert_eq!(output_text(&c.turn().await), "Second.");
    assert_eq!(
        sim.record().connections[1].resumed_from.as_deref(),
        Some(handle.as_str())
    );

    // An unknown handle is refused.
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let mut bogus = setup;
    bogus["session_resumption"] = json!({"handle": "Cjnot-a-handle"});
    bogus
        .as_object_mut()
        .expect("obj")
        .remove("sessionResumption");
    c.send(&json!({"setup": bogus})).await;
    assert_eq!(
        c.expect_close().await,
        (
            Some(1007),
            "Request contains an invalid argument.".to_string()
        )
    );
}

#[tokio::test]
async fn dropped_socket_fault_hits_the_first_connection_only() {
    let mut scenario = Scenario {
        greeting: None,
        turns: vec![Turn::reply(said("Fine."))],
        ..Scenario::default()
    };
    scenario.faults.after_user_turns = Some((1, FaultAction::Drop));
    let sim = fast().scenario(scenario).spawn().await.expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"text": "hi"}})).await;
    match c.next().await {
        Event::Dropped(why) => println!("client saw: {why}"),
        other => panic!("expected a dropped socket, got {other:?}"),
    }
    assert_eq!(
        sim.record().connections[0].close,
        Some(CloseRecord::Dropped)
    );
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"realtimeInput": {"text": "hi"}})).await;
    assert_eq!(output_text(&c.turn().await), "Fine.");
}

#[tokio::test]
async fn turn_fault_closes_mid_reply_and_setup_delay_is_honoured() {
    let mut scenario = Scenario {
        greeting: None,
        turns: vec![Turn {
            fault: Some(TurnFault {
                after_ms: 100,
                action: FaultAction::Close {
                    code: 1011,
                    reason: "Internal error encountered.".into(),
                },
            }),
            ..Turn::reply(Reply::long())
        }],
        ..Scenario::default()
    };
    scenario.faults.setup_delay_ms = 300;
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .response_latency(Duration::from_millis(10))
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    let start = Instant::now();
    c.setup(setup_25()).await;
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );
    c.send(&json!({"realtimeInput": {"text": "hi"}})).await;
    let mut audio = 0;
    loop {
        match c.next().await {
            Event::Json { value, .. } => {
                assert!(!is_sc(&value, "turnComplete"));
                audio += usize::from(is_sc(&value, "modelTurn"));
            }
            Event::Closed { code, reason } => {
                assert_eq!(
                    (code, reason.as_str()),
                    (Some(1011), "Internal error encountered.")
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(audio > 0);
}

#[tokio::test]
async fn example_scenario_file_plays_greeting_reply_and_transfer_tool_call() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/example.toml");
    let scenario = Scenario::load(&path).expect("example scenario");
    let sim = GeminiSim::builder()
        .scenario(scenario)
        .pace(100.0)
        .response_latency(Duration::from_millis(5))
        .realtime_playback(false)
        .spawn()
        .await
        .expect("spawn");
    let mut c = Client::connect(&with_key(&sim.url())).await;
    c.setup(setup_25()).await;
    c.send(&json!({"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Greet the caller."}]}], "turnComplete": true}}))
        .await;
    assert_eq!(
        output_text(&c.turn().await),
        "Hi! Thanks for calling. How can I help you today?"
    );
    c.send(&json!({"realtimeInput": {"text": "Where is my order?"}}))
        .await;
    assert!(output_text(&c.turn().await).starts_with("Sure. Your order shipped on Monday"));
    c.send(&json!({"realtimeInput": {"text": "Billing please."}}))
        .await;
    let (before, call) = until_tool_call(&mut c).await;
    assert!(audio_bytes(&before).is_empty());
    assert_eq!(
        call["toolCall"]["functionCalls"][0]["name"],
        "transfer_call"
    );
    assert_eq!(
        call["toolCall"]["functionCalls"][0]["args"]["department"],
        "billing"
    );
}
